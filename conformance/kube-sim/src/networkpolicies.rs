//! NetworkPolicies (networking.k8s.io/v1, namespaced): create, get, list by label,
//! merge patch, delete and delete-collection, defaulted and validated as the API
//! server does, with the group's discovery documents.
//!
//! They are stored, served and collected with their owner pod like Secrets; they are
//! not enforced: the kubelet here runs commands as host processes, which share the
//! host's network. Tests read what a policy says ([`crate::Simulator::network_policies`]).
//!
//! Defaulting: pkg/apis/networking/v1/defaults.go `SetDefaults_NetworkPolicy` (no
//! `policyTypes`: `Ingress`, plus `Egress` when egress rules are given). Validation:
//! pkg/apis/networking/validation/validation.go `ValidateNetworkPolicy` (name, policy
//! types; selectors are taken as given).

use crate::api::{ok, parse_body, result, selectors};
use crate::secrets::{delete_options, merge_patch, validate_owner_refs};
use crate::state::{Shared, lock};
use crate::store::{Kind, Store};
use crate::util::{ApiError, FieldError, Query, dns_subdomain_errors, json_response, now_rfc3339};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

type Sh = State<Arc<Shared>>;

const GROUP: &str = "networking.k8s.io";
const API_VERSION: &str = "networking.k8s.io/v1";
const RESOURCE: &str = "networkpolicies";

/// The group in `/apis` discovery.
pub(crate) fn group() -> Value {
    let v = json!({"groupVersion": API_VERSION, "version": "v1"});
    json!({"name": GROUP, "versions": [v.clone()], "preferredVersion": v})
}

pub(crate) async fn api_group() -> Response {
    let mut g = group();
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    ok(&g)
}

pub(crate) async fn api_resources() -> Response {
    ok(&json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": API_VERSION,
        "resources": [{
            "name": RESOURCE, "singularName": "networkpolicy", "namespaced": true,
            "kind": "NetworkPolicy", "shortNames": ["netpol"],
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch"],
        }],
    }))
}

fn not_found(name: &str) -> ApiError {
    let mut e = ApiError::not_found_of(RESOURCE, name);
    e.message = format!("{RESOURCE}.{GROUP} \"{name}\" not found");
    e
}

/// `SetDefaults_NetworkPolicy`.
fn default_policy_types(obj: &mut Value) {
    let spec = &mut obj["spec"];
    if spec["policyTypes"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
    {
        return;
    }
    let mut types = vec![json!("Ingress")];
    if spec["egress"].as_array().is_some_and(|a| !a.is_empty()) {
        types.push(json!("Egress"));
    }
    spec["policyTypes"] = Value::Array(types);
}

/// `ValidateNetworkPolicy`, the parts checked here: the name, the owner references,
/// `spec.podSelector` present, and at most `Ingress` and `Egress` once each.
fn validate(name: &str, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for msg in dns_subdomain_errors(name) {
        errs.push(FieldError::invalid("metadata.name", name, msg));
    }
    errs.extend(validate_owner_refs(obj));
    if !obj["spec"]["podSelector"].is_object() {
        errs.push(FieldError::required("spec.podSelector"));
    }
    let types: Vec<&Value> = obj["spec"]["policyTypes"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    for (i, t) in types.iter().enumerate() {
        let t = t.as_str().unwrap_or("");
        if !matches!(t, "Ingress" | "Egress") {
            errs.push(FieldError {
                reason: "FieldValueNotSupported",
                field: format!("spec.policyTypes[{i}]"),
                body: format!(
                    "Unsupported value: {}: supported values: \"Ingress\", \"Egress\"",
                    Value::from(t)
                ),
            });
        }
    }
    if types.len() > 2 {
        errs.push(FieldError::invalid(
            "spec.policyTypes",
            "",
            "may not specify more than two policyTypes",
        ));
    }
    errs
}

fn policy_body(body: &[u8], ns: &str) -> Result<Value, ApiError> {
    let mut obj = parse_body(body)?;
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the body must be a NetworkPolicy object",
        ));
    }
    if let Some(k) = obj.get("kind").filter(|k| !k.is_null())
        && k != "NetworkPolicy"
    {
        return Err(ApiError::bad_request(format!(
            "expected kind NetworkPolicy, got {k}"
        )));
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if let Some(bns) = obj["metadata"]["namespace"].as_str()
        && !bns.is_empty()
        && bns != ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    obj["kind"] = json!("NetworkPolicy");
    obj["apiVersion"] = json!(API_VERSION);
    Ok(obj)
}

pub(crate) async fn create(
    State(sh): Sh,
    Path(ns): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let q = Query::parse(q.as_deref());
    let r = (|| {
        let mut obj = policy_body(&body, &ns)?;
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
        if name.is_empty() {
            return Err(ApiError::invalid_fields(
                "NetworkPolicy",
                "",
                &[FieldError::required("metadata.name")],
            ));
        }
        if !obj["spec"].is_object() {
            obj["spec"] = json!({});
        }
        default_policy_types(&mut obj);
        let errs = validate(&name, &obj);
        if !errs.is_empty() {
            return Err(ApiError::invalid_fields("NetworkPolicy", &name, &errs));
        }
        crate::admission::namespace_lifecycle(&sh, &ns, RESOURCE, &name)?;
        let m = &mut obj["metadata"];
        m["namespace"] = json!(ns);
        m["uid"] = json!(uuid::Uuid::new_v4().to_string());
        m["creationTimestamp"] = json!(now_rfc3339());
        m["generation"] = json!(1);
        if let Some(o) = m.as_object_mut() {
            for k in ["resourceVersion", "deletionTimestamp", "selfLink"] {
                o.remove(k);
            }
        }
        if q.get("dryRun").is_some() {
            return Ok(obj);
        }
        sh.mutate(|s| {
            if s.get_kind(Kind::NetworkPolicy, &ns, &name).is_some() {
                let mut e = ApiError::already_exists(RESOURCE, &name);
                e.message = format!("{RESOURCE}.{GROUP} \"{name}\" already exists");
                return Err(e);
            }
            let created = s.insert_kind(Kind::NetworkPolicy, &ns, &name, obj);
            // Owners that are already gone make it garbage at once.
            s.sweep(Kind::NetworkPolicy, &ns, &name);
            Ok(created)
        })
    })();
    match r {
        Ok(obj) => json_response(201, &obj),
        Err(e) => e.into_response(),
    }
}

pub(crate) async fn get(State(sh): Sh, Path((ns, name)): Path<(String, String)>) -> Response {
    match lock(&sh.store).get_kind(Kind::NetworkPolicy, &ns, &name) {
        Some(p) => ok(p),
        None => not_found(&name).into_response(),
    }
}

pub(crate) async fn list(State(sh): Sh, Path(ns): Path<String>, RawQuery(q): RawQuery) -> Response {
    let q = Query::parse(q.as_deref());
    if q.flag("watch") {
        return ApiError::new(
            405,
            "MethodNotAllowed",
            "the simulator does not watch networkpolicies",
        )
        .into_response();
    }
    result(selectors(&q, Kind::NetworkPolicy).map(|sel| {
        let s = lock(&sh.store);
        list_value(&s, &ns, &sel)
    }))
}

fn list_value(s: &Store, ns: &str, sel: &crate::selector::Selectors) -> Value {
    json!({
        "kind": "NetworkPolicyList", "apiVersion": API_VERSION,
        "metadata": {"resourceVersion": s.rv.to_string()},
        "items": s.list_kind(Kind::NetworkPolicy, Some(ns), sel),
    })
}

/// A JSON merge patch (what the adapter sends to add its owner reference); the name,
/// namespace, uid and creation time stay the server's.
pub(crate) async fn patch(
    State(sh): Sh,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/merge-patch+json") {
        return ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the simulator does not support patch type {ct:?} for networkpolicies"),
        )
        .into_response();
    }
    result(parse_body(&body).and_then(|p| {
        if !p.is_object() {
            return Err(ApiError::bad_request("the patch must be a JSON object"));
        }
        sh.mutate(|s| {
            let cur = s
                .get_kind(Kind::NetworkPolicy, &ns, &name)
                .cloned()
                .ok_or_else(|| not_found(&name))?;
            let mut new = cur.clone();
            merge_patch(&mut new, &p);
            for k in ["name", "namespace", "uid", "creationTimestamp"] {
                new["metadata"][k] = cur["metadata"][k].clone();
            }
            new["kind"] = json!("NetworkPolicy");
            new["apiVersion"] = json!(API_VERSION);
            default_policy_types(&mut new);
            let errs = validate(&name, &new);
            if !errs.is_empty() {
                return Err(ApiError::invalid_fields("NetworkPolicy", &name, &errs));
            }
            if new["spec"] != cur["spec"] {
                let g = cur["metadata"]["generation"].as_u64().unwrap_or(1);
                new["metadata"]["generation"] = json!(g + 1);
            }
            let updated = s
                .update_kind(Kind::NetworkPolicy, &ns, &name, |o| *o = new)
                .ok_or_else(|| not_found(&name))?;
            s.sweep(Kind::NetworkPolicy, &ns, &name);
            Ok(updated)
        })
    }))
}

/// Remove one policy after the uid precondition; the answer is a `Status`.
fn remove(s: &mut Store, ns: &str, name: &str, opts: &Value, dry: bool) -> Result<Value, ApiError> {
    let cur = s
        .get_kind(Kind::NetworkPolicy, ns, name)
        .ok_or_else(|| not_found(name))?;
    let uid = cur["metadata"]["uid"].as_str().unwrap_or("").to_owned();
    if let Some(want) = opts.pointer("/preconditions/uid").and_then(Value::as_str)
        && want != uid
    {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!("Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"),
        ));
    }
    if !dry {
        s.remove_kind(Kind::NetworkPolicy, ns, name);
    }
    Ok(json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": name, "group": GROUP, "kind": RESOURCE, "uid": uid},
    }))
}

pub(crate) async fn delete(
    State(sh): Sh,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let q = Query::parse(q.as_deref());
    result(
        delete_options(&q, &body)
            .and_then(|(opts, dry)| sh.mutate(|s| remove(s, &ns, &name, &opts, dry))),
    )
}

pub(crate) async fn delete_collection(
    State(sh): Sh,
    Path(ns): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let q = Query::parse(q.as_deref());
    result((|| {
        let (opts, dry) = delete_options(&q, &body)?;
        let sel = selectors(&q, Kind::NetworkPolicy)?;
        sh.mutate(|s| {
            let listed = list_value(s, &ns, &sel);
            for item in listed["items"].as_array().into_iter().flatten() {
                if let Some(n) = item["metadata"]["name"].as_str() {
                    remove(s, &ns, n, &opts, dry)?;
                }
            }
            Ok(listed)
        })
    })())
}

/// NetworkPolicies of a namespace, as the API would list them.
pub(crate) fn list_in(sh: &Shared, ns: &str) -> Vec<Value> {
    lock(&sh.store).list_kind(
        Kind::NetworkPolicy,
        Some(ns),
        &crate::selector::Selectors::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_types_default_as_the_api_server_does() {
        let mut ingress_only = json!({"spec": {"podSelector": {}}});
        default_policy_types(&mut ingress_only);
        assert_eq!(ingress_only["spec"]["policyTypes"], json!(["Ingress"]));
        let mut with_egress = json!({"spec": {"podSelector": {}, "egress": [{}]}});
        default_policy_types(&mut with_egress);
        assert_eq!(
            with_egress["spec"]["policyTypes"],
            json!(["Ingress", "Egress"])
        );
        let mut given = json!({"spec": {"podSelector": {}, "policyTypes": ["Egress"]}});
        default_policy_types(&mut given);
        assert_eq!(given["spec"]["policyTypes"], json!(["Egress"]));
    }

    #[test]
    fn validation_names_the_fields() {
        let bad = json!({"spec": {"policyTypes": ["Egress", "Sideways"]}});
        let fields: Vec<String> = validate("Bad_Name", &bad)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            ["metadata.name", "spec.podSelector", "spec.policyTypes[1]"]
        );
        let good = json!({"spec": {"podSelector": {"matchLabels": {"a": "b"}}, "policyTypes": ["Ingress", "Egress"]}});
        assert!(validate("p-hermetic", &good).is_empty());
    }
}
