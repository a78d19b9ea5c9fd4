//! Secrets (core/v1, namespaced): create, get, list/watch, replace, patch,
//! delete and delete-collection, validated and defaulted as the API server does.

use crate::api::{ok, parse_body, random_suffix, result, selectors};
use crate::state::{Shared, lock};
use crate::store::{Kind, Store};
use crate::util::{
    ApiError, FieldError, Query, b64_decode, b64_encode, config_key_errors, dns_subdomain_errors,
    json_response, now_rfc3339,
};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::sync::Arc;

type Sh = State<Arc<Shared>>;

/// The most data a secret may hold (sum of the decoded values).
const MAX_SECRET_SIZE: usize = 1024 * 1024;
/// The base of a generated name is cut to this length (63 minus the suffix).
const MAX_GENERATE_BASE: usize = 58;

pub(crate) async fn list_all(State(sh): Sh, RawQuery(q): RawQuery) -> Response {
    crate::api::list_or_watch(sh, Kind::Secret, None, q)
}

pub(crate) async fn list_ns(
    State(sh): Sh,
    Path(ns): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    crate::api::list_or_watch(sh, Kind::Secret, Some(ns), q)
}

pub(crate) async fn get(State(sh): Sh, Path((ns, name)): Path<(String, String)>) -> Response {
    match lock(&sh.store).get_kind(Kind::Secret, &ns, &name) {
        Some(s) => ok(s),
        None => not_found(&name).into_response(),
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found_of("secrets", name)
}

/// A body that does not decode into a Secret (the API server's 400).
fn undecodable(why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "Secret in version \"v1\" cannot be handled as a Secret: {why}"
    ))
}

/// Parse a request body that must be a Secret, checking its kind and namespace.
fn secret_body(body: &[u8], ns: &str) -> Result<Value, ApiError> {
    let mut obj = parse_body(body)?;
    if !obj.is_object() {
        return Err(undecodable("the body must be a JSON object"));
    }
    if let Some(k) = obj.get("kind").filter(|k| !k.is_null())
        && k != "Secret"
    {
        return Err(ApiError::bad_request(format!(
            "expected kind Secret, got {k}"
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
    Ok(obj)
}

/// What decoding and defaulting do: `data` values must be base64 (Go's
/// `[]byte` in JSON), `stringData` is merged into `data` (winning over it) and
/// dropped, an empty `data` is omitted, `type` defaults to `Opaque`.
fn normalize(obj: &mut Value) -> Result<(), ApiError> {
    let mut data = Map::new();
    match obj.get("data") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let text = match v {
                    Value::String(t) => t.as_str(),
                    Value::Null => "",
                    other => {
                        return Err(undecodable(&format!(
                            "json: cannot unmarshal {} into Go struct field Secret.data of type []uint8",
                            json_type(other)
                        )));
                    }
                };
                let bytes = b64_decode(text).map_err(|at| {
                    undecodable(&format!("illegal base64 data at input byte {at}"))
                })?;
                // Re-encoded: Go writes back the canonical form (no line breaks).
                data.insert(k.clone(), json!(b64_encode(&bytes)));
            }
        }
        Some(other) => {
            return Err(undecodable(&format!(
                "json: cannot unmarshal {} into Go struct field Secret.data of type map[string][]uint8",
                json_type(other)
            )));
        }
    }
    match obj.get("stringData") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let Some(text) = v.as_str() else {
                    return Err(undecodable(&format!(
                        "json: cannot unmarshal {} into Go struct field Secret.stringData of type string",
                        json_type(v)
                    )));
                };
                data.insert(k.clone(), json!(b64_encode(text.as_bytes())));
            }
        }
        Some(other) => {
            return Err(undecodable(&format!(
                "json: cannot unmarshal {} into Go struct field Secret.stringData of type map[string]string",
                json_type(other)
            )));
        }
    }
    let Some(o) = obj.as_object_mut() else {
        return Err(undecodable("the body must be a JSON object"));
    };
    o.remove("stringData");
    if data.is_empty() {
        o.remove("data");
    } else {
        o.insert("data".into(), Value::Object(data));
    }
    match o.get("type") {
        None | Some(Value::Null) => {
            o.insert("type".into(), json!("Opaque"));
        }
        Some(Value::String(t)) if t.is_empty() => {
            o.insert("type".into(), json!("Opaque"));
        }
        Some(Value::String(_)) => {}
        Some(other) => {
            return Err(undecodable(&format!(
                "json: cannot unmarshal {} into Go struct field Secret.type of type v1.SecretType",
                json_type(other)
            )));
        }
    }
    match o.get("immutable") {
        None | Some(Value::Bool(_)) => {}
        Some(Value::Null) => {
            o.remove("immutable");
        }
        Some(other) => {
            return Err(undecodable(&format!(
                "json: cannot unmarshal {} into Go struct field Secret.immutable of type bool",
                json_type(other)
            )));
        }
    }
    o.insert("kind".into(), json!("Secret"));
    o.insert("apiVersion".into(), json!("v1"));
    Ok(())
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The decoded length of every data value (they are canonical base64 here).
fn data_size(obj: &Value) -> usize {
    obj["data"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| v.as_str())
        .map(|v| b64_decode(v).map(|b| b.len()).unwrap_or(0))
        .sum()
}

fn has_key(obj: &Value, key: &str) -> bool {
    obj["data"].get(key).is_some()
}

/// `ValidateSecret`: name, owner references, data keys and size, and the keys
/// the well-known types require.
fn validate(name: &str, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for msg in dns_subdomain_errors(name) {
        errs.push(FieldError::invalid("metadata.name", name, msg));
    }
    errs.extend(validate_owner_refs(obj));
    for (k, _) in obj["data"].as_object().into_iter().flatten() {
        for msg in config_key_errors(k) {
            errs.push(FieldError::invalid(format!("data[{k}]"), k, msg));
        }
    }
    if data_size(obj) > MAX_SECRET_SIZE {
        errs.push(FieldError::too_long("data", MAX_SECRET_SIZE));
    }
    let required = |errs: &mut Vec<FieldError>, key: &str| {
        if !has_key(obj, key) {
            errs.push(FieldError::required(format!("data[{key}]")));
        }
    };
    match obj["type"].as_str().unwrap_or("Opaque") {
        "kubernetes.io/service-account-token" => {
            let sa = obj
                .pointer("/metadata/annotations/kubernetes.io~1service-account.name")
                .and_then(Value::as_str)
                .unwrap_or("");
            if sa.is_empty() {
                errs.push(FieldError::required(
                    "metadata.annotations[kubernetes.io/service-account.name]",
                ));
            }
        }
        "kubernetes.io/dockercfg" => required(&mut errs, ".dockercfg"),
        "kubernetes.io/dockerconfigjson" => required(&mut errs, ".dockerconfigjson"),
        "kubernetes.io/basic-auth" if !has_key(obj, "username") && !has_key(obj, "password") => {
            required(&mut errs, "username");
            required(&mut errs, "password");
        }
        "kubernetes.io/ssh-auth" => {
            let key = obj["data"]["ssh-privatekey"].as_str().unwrap_or("");
            if key.is_empty() {
                errs.push(FieldError::required("data[ssh-privatekey]"));
            }
        }
        "kubernetes.io/tls" => {
            required(&mut errs, "tls.crt");
            required(&mut errs, "tls.key");
        }
        _ => {}
    }
    errs
}

/// `ValidateOwnerReferences`: every reference names an apiVersion, kind,
/// name and uid; at most one is the controller.
pub(crate) fn validate_owner_refs(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let refs = match obj.pointer("/metadata/ownerReferences") {
        None | Some(Value::Null) => return errs,
        Some(Value::Array(a)) => a,
        Some(_) => {
            errs.push(FieldError::invalid(
                "metadata.ownerReferences",
                "",
                "must be a list",
            ));
            return errs;
        }
    };
    let mut controller: Option<String> = None;
    for r in refs {
        let field = |f: &str| r[f].as_str().unwrap_or("").to_string();
        let version = field("apiVersion")
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        let checks = [
            ("apiVersion", version, "version must not be empty"),
            ("kind", field("kind"), "kind must not be empty"),
            ("name", field("name"), "name must not be empty"),
            ("uid", field("uid"), "uid must not be empty"),
        ];
        for (f, v, msg) in checks {
            if v.is_empty() {
                errs.push(FieldError::invalid(
                    format!("metadata.ownerReferences.{f}"),
                    &field(f),
                    msg,
                ));
            }
        }
        if r["controller"] == true {
            let this = format!("{}/{}", field("kind"), field("name"));
            match &controller {
                Some(first) => errs.push(FieldError::invalid(
                    "metadata.ownerReferences",
                    "",
                    &format!("Only one reference can have Controller set to true. Found \"true\" in references for {first} and {this}"),
                )),
                None => controller = Some(this),
            }
        }
    }
    errs
}

/// `ValidateSecretUpdate` beyond [`validate`]: the uid, the type, and, once
/// `immutable` is set, `immutable` itself and the data cannot change.
fn validate_update(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let (ou, nu) = (&old["metadata"]["uid"], &new["metadata"]["uid"]);
    if ou != nu {
        errs.push(FieldError::invalid(
            "metadata.uid",
            nu.as_str().unwrap_or(""),
            "field is immutable",
        ));
    }
    if old["type"] != new["type"] {
        errs.push(FieldError::invalid(
            "type",
            new["type"].as_str().unwrap_or(""),
            "field is immutable",
        ));
    }
    if old["immutable"] == true {
        if new["immutable"] != true {
            errs.push(FieldError::forbidden(
                "immutable",
                "field is immutable when `immutable` is set",
            ));
        }
        if old.get("data") != new.get("data") {
            errs.push(FieldError::forbidden(
                "data",
                "field is immutable when `immutable` is set",
            ));
        }
    }
    errs
}

pub(crate) async fn create(
    State(sh): Sh,
    Path(ns): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let q = Query::parse(q.as_deref());
    let r = (|| {
        let mut obj = secret_body(&body, &ns)?;
        let name = match (
            obj["metadata"]["name"].as_str(),
            obj["metadata"]["generateName"].as_str(),
        ) {
            (Some(n), _) if !n.is_empty() => n.to_string(),
            (_, Some(g)) if !g.is_empty() => {
                let base: String = g.chars().take(MAX_GENERATE_BASE).collect();
                format!("{base}{}", random_suffix())
            }
            _ => {
                return Err(ApiError::invalid_fields(
                    "Secret",
                    "",
                    &[FieldError {
                        reason: "FieldValueRequired",
                        field: "metadata.name".into(),
                        body: "Required value: name or generateName is required".into(),
                    }],
                ));
            }
        };
        normalize(&mut obj)?;
        let errs = validate(&name, &obj);
        if !errs.is_empty() {
            return Err(ApiError::invalid_fields("Secret", &name, &errs));
        }
        crate::admission::namespace_lifecycle(&sh, &ns, "secrets", &name)?;
        let m = &mut obj["metadata"];
        m["name"] = json!(name);
        m["namespace"] = json!(ns);
        m["uid"] = json!(uuid::Uuid::new_v4().to_string());
        m["creationTimestamp"] = json!(now_rfc3339());
        if let Some(o) = m.as_object_mut() {
            for k in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
                o.remove(k);
            }
        }
        if q.get("dryRun").is_some() {
            return Ok(obj);
        }
        sh.mutate(|s| {
            if s.get_kind(Kind::Secret, &ns, &name).is_some() {
                return Err(ApiError::already_exists("secrets", &name));
            }
            let created = s.insert_kind(Kind::Secret, &ns, &name, obj);
            // The garbage collector deletes a secret whose owners are all gone.
            s.sweep_secret(&ns, &name);
            Ok(created)
        })
    })();
    match r {
        Ok(obj) => json_response(201, &obj),
        Err(e) => e.into_response(),
    }
}

/// Store `new` in place of the current secret after the update checks:
/// resourceVersion precondition, server-owned metadata kept, validation.
fn update(s: &mut Store, ns: &str, name: &str, mut new: Value) -> Result<Value, ApiError> {
    let cur = s
        .get_kind(Kind::Secret, ns, name)
        .cloned()
        .ok_or_else(|| not_found(name))?;
    if new["metadata"]["name"].as_str() != Some(name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            new["metadata"]["name"].as_str().unwrap_or("")
        )));
    }
    let rv = new["metadata"]["resourceVersion"].as_str().unwrap_or("");
    if !rv.is_empty() && Some(rv) != cur["metadata"]["resourceVersion"].as_str() {
        return Err(ApiError::stale("secrets", name));
    }
    let m = &mut new["metadata"];
    m["namespace"] = json!(ns);
    if m["uid"].as_str().is_none_or(str::is_empty) {
        m["uid"] = cur["metadata"]["uid"].clone();
    }
    m["creationTimestamp"] = cur["metadata"]["creationTimestamp"].clone();
    let mut errs = validate_update(&cur, &new);
    errs.extend(validate(name, &new));
    if !errs.is_empty() {
        return Err(ApiError::invalid_fields("Secret", name, &errs));
    }
    let updated = s
        .update_kind(Kind::Secret, ns, name, |o| *o = new)
        .ok_or_else(|| not_found(name))?;
    s.sweep_secret(ns, name);
    Ok(updated)
}

pub(crate) async fn replace(
    State(sh): Sh,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    result(secret_body(&body, &ns).and_then(|mut new| {
        normalize(&mut new)?;
        sh.mutate(|s| update(s, &ns, &name, new))
    }))
}

#[derive(Clone, Copy)]
enum PatchType {
    Merge,
    Strategic,
}

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
    let ty = if ct.starts_with("application/merge-patch+json") {
        PatchType::Merge
    } else if ct.starts_with("application/strategic-merge-patch+json") {
        PatchType::Strategic
    } else {
        return ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the simulator does not support patch type {ct:?}"),
        )
        .into_response();
    };
    result(parse_body(&body).and_then(|p| {
        if !p.is_object() {
            return Err(ApiError::bad_request("the patch must be a JSON object"));
        }
        sh.mutate(|s| {
            let mut new = s
                .get_kind(Kind::Secret, &ns, &name)
                .cloned()
                .ok_or_else(|| not_found(&name))?;
            match ty {
                PatchType::Merge => merge_patch(&mut new, &p),
                PatchType::Strategic => strategic_patch(&mut new, &p, ""),
            }
            if !new.is_object() || !new["metadata"].is_object() {
                return Err(undecodable("the patched object is not a Secret"));
            }
            if let Some(pns) = new["metadata"]["namespace"].as_str()
                && pns != ns
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            normalize(&mut new)?;
            update(s, &ns, &name, new)
        })
    }))
}

/// RFC 7386 JSON merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in p {
        if v.is_null() {
            if let Some(o) = target.as_object_mut() {
                o.remove(k);
            }
        } else {
            merge_patch(&mut target[k], v);
        }
    }
}

/// Strategic merge patch for a Secret: a merge patch in which
/// `metadata.ownerReferences` merge by `uid` (an item with `"$patch": "delete"`
/// removes the reference) and `metadata.finalizers` merge as a set
/// (`$deleteFromPrimitiveList/finalizers` removes values). `"$patch": "replace"`
/// and `"$patch": "delete"` apply to maps; `$setElementOrder` and `$retainKeys`
/// are accepted and ignored.
fn strategic_patch(target: &mut Value, patch: &Value, path: &str) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut m = p.clone();
            m.remove("$patch");
            *target = Value::Object(m);
            return;
        }
        Some("delete") => {
            *target = Value::Null;
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let Some(list) = target[field].as_array_mut() {
                let drop: Vec<&Value> = v.as_array().into_iter().flatten().collect();
                list.retain(|x| !drop.contains(&x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        let here = format!("{path}/{k}");
        match (here.as_str(), v) {
            (_, Value::Null) => {
                if let Some(o) = target.as_object_mut() {
                    o.remove(k);
                }
            }
            ("/metadata/ownerReferences", Value::Array(items)) => {
                merge_list_by(&mut target[k], items, "uid");
            }
            ("/metadata/finalizers", Value::Array(items)) => {
                if !target[k].is_array() {
                    target[k] = json!([]);
                }
                if let Some(list) = target[k].as_array_mut() {
                    for item in items {
                        if !list.contains(item) {
                            list.push(item.clone());
                        }
                    }
                }
            }
            (_, Value::Object(_)) => {
                strategic_patch(&mut target[k], v, &here);
                if target[k].is_null()
                    && let Some(o) = target.as_object_mut()
                {
                    o.remove(k);
                }
            }
            _ => target[k] = v.clone(),
        }
    }
}

/// Merge a list of maps keyed by `key`: matching items are patched, new items
/// appended, items marked `"$patch": "delete"` removed.
fn merge_list_by(target: &mut Value, items: &[Value], key: &str) {
    if !target.is_array() {
        *target = json!([]);
    }
    let Some(list) = target.as_array_mut() else {
        return;
    };
    for item in items {
        let id = &item[key];
        let pos = list.iter().position(|x| &x[key] == id);
        if item["$patch"] == "delete" {
            list.retain(|x| &x[key] != id);
            continue;
        }
        match pos {
            Some(i) => strategic_patch(&mut list[i], item, ""),
            None => {
                let mut fresh = Value::Null;
                strategic_patch(&mut fresh, item, "");
                list.push(fresh);
            }
        }
    }
}

/// Delete options of a request (body, then `dryRun` from the query).
pub(crate) fn delete_options(q: &Query, body: &[u8]) -> Result<(Value, bool), ApiError> {
    let opts = parse_body(body)?;
    if !opts.is_object() {
        return Err(ApiError::bad_request(
            "the delete options must be an object",
        ));
    }
    let dry = q.get("dryRun").is_some() || opts["dryRun"].as_array().is_some_and(|a| !a.is_empty());
    Ok((opts, dry))
}

/// Remove one secret after the preconditions, as the registry does; the answer
/// is a `Status` (secrets do not return the deleted object).
fn remove(s: &mut Store, ns: &str, name: &str, opts: &Value, dry: bool) -> Result<Value, ApiError> {
    let cur = s
        .get_kind(Kind::Secret, ns, name)
        .ok_or_else(|| not_found(name))?;
    let uid = cur["metadata"]["uid"].as_str().unwrap_or("").to_string();
    if let Some(want) = opts.pointer("/preconditions/uid").and_then(Value::as_str)
        && want != uid
    {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!("Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"),
        ));
    }
    let rv = cur["metadata"]["resourceVersion"].as_str().unwrap_or("");
    if let Some(want) = opts
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
        && want != rv
    {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!(
                "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rv}"
            ),
        ));
    }
    if !dry {
        s.remove_kind(Kind::Secret, ns, name);
    }
    Ok(json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": name, "kind": "secrets", "uid": uid},
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
        let sel = selectors(&q, Kind::Secret)?;
        sh.mutate(|s| {
            let items = s.list_kind(Kind::Secret, Some(&ns), &sel);
            for item in &items {
                if let Some(n) = item["metadata"]["name"].as_str() {
                    remove(s, &ns, n, &opts, dry)?;
                }
            }
            Ok(json!({
                "kind": "SecretList", "apiVersion": "v1",
                "metadata": {"resourceVersion": s.rv.to_string()},
                "items": items,
            }))
        })
    })())
}

/// Secrets of a namespace, as the API would list them.
pub(crate) fn list(sh: &Shared, ns: &str) -> Vec<Value> {
    lock(&sh.store).list_kind(
        Kind::Secret,
        Some(ns),
        &crate::selector::Selectors::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_data_merges_into_base64_data_and_type_defaults() {
        let mut s = json!({"data": {"a": "eA==", "b": "eQ=="}, "stringData": {"b": "z", "c": "w"}});
        normalize(&mut s).unwrap();
        assert_eq!(s["data"], json!({"a": "eA==", "b": "eg==", "c": "dw=="}));
        assert!(s.get("stringData").is_none());
        assert_eq!(s["type"], "Opaque");
        let mut empty = json!({"data": {}});
        normalize(&mut empty).unwrap();
        assert!(empty.get("data").is_none(), "an empty map is omitted");
        let err = normalize(&mut json!({"data": {"a": "not base64!"}})).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message.contains("illegal base64 data at input byte 3"),
            "{}",
            err.message
        );
    }

    #[test]
    fn validation_names_the_fields() {
        let mut s = json!({"metadata": {}, "data": {"bad key": ""}, "type": "kubernetes.io/tls"});
        normalize(&mut s).unwrap();
        let fields: Vec<String> = validate("Bad", &s).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "data[bad key]",
                "data[tls.crt]",
                "data[tls.key]"
            ]
        );
        let refs = json!({"metadata": {"ownerReferences": [
            {"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "", "controller": true},
            {"apiVersion": "v1", "kind": "Pod", "name": "q", "uid": "u", "controller": true},
        ]}});
        let errs = validate_owner_refs(&refs);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].field, "metadata.ownerReferences.uid");
        assert!(
            errs[1]
                .body
                .contains("Only one reference can have Controller")
        );
    }

    #[test]
    fn immutable_secrets_keep_their_data() {
        let old = json!({"metadata": {"uid": "u"}, "type": "Opaque", "immutable": true, "data": {"a": "eA=="}});
        let mut labels_only = old.clone();
        labels_only["metadata"]["labels"] = json!({"x": "y"});
        assert!(validate_update(&old, &labels_only).is_empty());
        let mut changed = old.clone();
        changed["data"]["a"] = json!("eQ==");
        changed["immutable"] = json!(false);
        let fields: Vec<String> = validate_update(&old, &changed)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["immutable", "data"]);
    }

    #[test]
    fn strategic_patch_merges_owner_references_by_uid() {
        let mut s = json!({"metadata": {
            "ownerReferences": [{"uid": "a", "name": "x"}, {"uid": "b", "name": "y"}],
            "finalizers": ["f1"],
            "labels": {"k": "v", "gone": "1"},
        }});
        let patch = json!({"metadata": {
            "ownerReferences": [{"uid": "c", "name": "z"}, {"uid": "a", "$patch": "delete"}, {"uid": "b", "name": "y2"}],
            "$setElementOrder/ownerReferences": [{"uid": "b"}, {"uid": "c"}],
            "finalizers": ["f2", "f1"],
            "labels": {"gone": null, "new": "n"},
        }});
        strategic_patch(&mut s, &patch, "");
        assert_eq!(
            s["metadata"]["ownerReferences"],
            json!([{"uid": "b", "name": "y2"}, {"uid": "c", "name": "z"}])
        );
        assert_eq!(s["metadata"]["finalizers"], json!(["f1", "f2"]));
        assert_eq!(s["metadata"]["labels"], json!({"k": "v", "new": "n"}));

        // A JSON merge patch replaces lists wholesale.
        merge_patch(
            &mut s,
            &json!({"metadata": {"ownerReferences": [{"uid": "d"}]}}),
        );
        assert_eq!(s["metadata"]["ownerReferences"], json!([{"uid": "d"}]));
    }
}
