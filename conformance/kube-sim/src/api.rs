//! The HTTP API: routes, handlers, watches and fault injection.

use crate::kubelet::{self, set_cond};
use crate::selector::{
    FieldSelector, LabelSelector, NETWORK_POLICY_FIELDS, POD_FIELDS, SECRET_FIELDS, Selectors,
};
use crate::state::{Kill, Shared, lock};
use crate::store::Kind;
use crate::util::{
    ApiError, Query, config_key_errors, dns_subdomain_errors, is_dns_subdomain, json_response,
    now_rfc3339, reason_for,
};
use crate::{EnvVarNames, RequestRecord, exec, networkpolicies, secrets};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use jetbridge_sim_http::{FaultReply, RequestLine};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

type Sh = State<Arc<Shared>>;

/// Build the router.
pub(crate) fn router(sh: Arc<Shared>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/api", get(api_versions))
        .route("/api/v1", get(api_resources))
        .route("/apis", get(api_groups))
        .route("/api/v1/pods", get(list_all))
        .route("/api/v1/namespaces/{ns}", get(get_namespace))
        .route(
            "/api/v1/namespaces/{ns}/pods",
            get(list_ns).post(create).delete(delete_collection),
        )
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}",
            get(get_pod)
                .delete(delete_pod)
                .patch(patch_pod)
                .put(put_pod),
        )
        .route("/api/v1/namespaces/{ns}/pods/{name}/status", get(get_pod))
        .route("/api/v1/namespaces/{ns}/pods/{name}/eviction", post(evict))
        .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(logs))
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/exec",
            get(exec::handler).post(exec::handler),
        )
        .route("/api/v1/secrets", get(secrets::list_all))
        .route("/api/v1/namespaces/{ns}/secrets", secret_collection())
        .route("/api/v1/namespaces/{ns}/secrets/{name}", secret_object())
        .route("/apis/networking.k8s.io", get(networkpolicies::api_group))
        .route(
            "/apis/networking.k8s.io/v1",
            get(networkpolicies::api_resources),
        )
        .route(
            "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
            get(networkpolicies::list)
                .post(networkpolicies::create)
                .delete(networkpolicies::delete_collection),
        )
        .route(
            "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/{name}",
            get(networkpolicies::get)
                .delete(networkpolicies::delete)
                .patch(networkpolicies::patch),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Inner: RBAC runs after faults are recorded and applied, before any handler.
        .layer(middleware::from_fn_with_state(
            sh.clone(),
            crate::admission::authorize,
        ))
        .layer(middleware::from_fn_with_state(sh.clone(), faults))
        .with_state(sh)
}

fn secret_collection() -> MethodRouter<Arc<Shared>> {
    get(secrets::list_ns)
        .post(secrets::create)
        .delete(secrets::delete_collection)
}

fn secret_object() -> MethodRouter<Arc<Shared>> {
    get(secrets::get)
        .delete(secrets::delete)
        .patch(secrets::patch)
        .put(secrets::replace)
}

/// Records every request and applies injected faults.
async fn faults(State(sh): Sh, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let line = RequestLine {
        method: &method,
        path: &path,
        decoded_path: None,
        query: &query,
        decoded_query: None,
    };
    let record = RequestRecord {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
    };
    let action = sh.controls.on_request(&line, record);
    jetbridge_sim_http::apply(action, req, next, |reply| match reply {
        FaultReply::Status(code) => {
            ApiError::new(code, reason_for(code), format!("injected fault: {code}")).into_response()
        }
        FaultReply::CannotDrop => {
            ApiError::new(500, "InternalError", "connection cannot be dropped").into_response()
        }
    })
    .await
}

async fn not_found(req: Request) -> Response {
    ApiError::new(
        404,
        "NotFound",
        format!(
            "the server could not find the requested resource ({})",
            req.uri().path()
        ),
    )
    .into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    ApiError::new(
        405,
        "MethodNotAllowed",
        format!(
            "the server does not allow this method on the requested resource ({} {})",
            req.method(),
            req.uri().path()
        ),
    )
    .into_response()
}

pub(crate) fn ok(v: &Value) -> Response {
    json_response(200, v)
}

pub(crate) fn result(r: Result<Value, ApiError>) -> Response {
    match r {
        Ok(v) => ok(&v),
        Err(e) => e.into_response(),
    }
}

async fn version() -> Response {
    ok(&json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-jetbridge-sim",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
        "platform": "linux/amd64",
    }))
}

async fn api_versions(State(sh): Sh) -> Response {
    ok(&json!({
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": format!("127.0.0.1:{}", sh.port)}],
    }))
}

async fn api_groups() -> Response {
    ok(&json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [networkpolicies::group()]}))
}

async fn api_resources() -> Response {
    let pod_verbs = json!([
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch"
    ]);
    ok(&json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
        "resources": [
            {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace", "verbs": ["get"], "shortNames": ["ns"]},
            {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod", "verbs": pod_verbs, "shortNames": ["po"], "categories": ["all"]},
            {"name": "pods/eviction", "singularName": "", "namespaced": true, "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]},
            {"name": "pods/exec", "singularName": "", "namespaced": true, "kind": "PodExecOptions", "verbs": ["create", "get"]},
            {"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]},
            {"name": "pods/status", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]},
            {"name": "secrets", "singularName": "secret", "namespaced": true, "kind": "Secret", "verbs": [
                "create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"
            ]},
        ],
    }))
}

async fn get_namespace(State(sh): Sh, Path(ns): Path<String>) -> Response {
    let (mut labels, gone) = {
        let policy = lock(&sh.policy);
        (
            policy
                .namespace_labels
                .get(&ns)
                .cloned()
                .unwrap_or_default(),
            policy.namespace_gone.get(&ns).copied(),
        )
    };
    // As `Simulator::remove_namespace` / `terminate_namespace` left it: reads agree
    // with what NamespaceLifecycle admission answers creates.
    let terminating = match gone {
        Some(false) => {
            let mut e = ApiError::new(404, "NotFound", format!("namespaces \"{ns}\" not found"));
            e.details = Some(json!({"name": ns, "kind": "namespaces"}));
            return e.into_response();
        }
        Some(true) => true,
        None => false,
    };
    labels.insert("kubernetes.io/metadata.name".into(), ns.clone());
    let mut obj = json!({
        "kind": "Namespace", "apiVersion": "v1",
        "metadata": {"name": ns, "resourceVersion": "1", "creationTimestamp": "2025-01-01T00:00:00Z", "labels": labels},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": if terminating { "Terminating" } else { "Active" }},
    });
    if terminating {
        obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
    }
    ok(&obj)
}

/// The label and field selectors of a request on `kind`.
pub(crate) fn selectors(q: &Query, kind: Kind) -> Result<Selectors, ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let supported = match kind {
        Kind::Pod => POD_FIELDS,
        Kind::Secret => SECRET_FIELDS,
        Kind::NetworkPolicy => NETWORK_POLICY_FIELDS,
    };
    let fields = FieldSelector::parse_for(q.get("fieldSelector").unwrap_or(""), supported)
        .map_err(|e| ApiError::bad_request(format!("invalid field selector: {e}")))?;
    Ok(Selectors { labels, fields })
}

async fn list_all(State(sh): Sh, RawQuery(q): RawQuery) -> Response {
    list_or_watch(sh, Kind::Pod, None, q)
}

async fn list_ns(State(sh): Sh, Path(ns): Path<String>, RawQuery(q): RawQuery) -> Response {
    list_or_watch(sh, Kind::Pod, Some(ns), q)
}

/// List objects of `kind` (a `<Kind>List`), or watch them with `watch=true`.
pub(crate) fn list_or_watch(
    sh: Arc<Shared>,
    kind: Kind,
    ns: Option<String>,
    raw: Option<String>,
) -> Response {
    let q = Query::parse(raw.as_deref());
    let sel = match selectors(&q, kind) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    if q.flag("watch") {
        return watch(sh, kind, ns, sel, &q);
    }
    let (items, rv) = {
        let s = lock(&sh.store);
        (s.list_kind(kind, ns.as_deref(), &sel), s.rv)
    };
    ok(&json!({
        "kind": format!("{}List", kind.as_str()), "apiVersion": "v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    }))
}

fn event_line(ty: &str, obj: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn bookmark(kind: Kind, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": kind.as_str(), "apiVersion": "v1", "metadata": meta}),
    )
}

fn watch(sh: Arc<Shared>, kind: Kind, ns: Option<String>, sel: Selectors, q: &Query) -> Response {
    let rv_param = q.get("resourceVersion").unwrap_or("");
    let start = match rv_param {
        "" | "0" => None,
        s => match s.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => {
                return ApiError::bad_request(format!("invalid resource version {s:?}"))
                    .into_response();
            }
        },
    };
    let opts = WatchOpts {
        kind,
        start,
        send_initial: q.flag("sendInitialEvents"),
        bookmarks: q.flag("allowWatchBookmarks"),
        timeout: q
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .map(Duration::from_secs),
    };
    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(watch_task(sh, ns, sel, opts, tx));
    let stream =
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|o| o.map(Ok::<_, Infallible>)));
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

struct WatchOpts {
    kind: Kind,
    start: Option<u64>,
    send_initial: bool,
    bookmarks: bool,
    timeout: Option<Duration>,
}

async fn watch_task(
    sh: Arc<Shared>,
    ns: Option<String>,
    sel: Selectors,
    o: WatchOpts,
    tx: mpsc::Sender<Bytes>,
) {
    let wanted = |obj: &Value| {
        obj["kind"] == o.kind.as_str()
            && ns.as_deref().is_none_or(|n| {
                obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(n)
            })
    };
    let mut rv_rx = sh.rv_tx.subscribe();
    let mut cursor = match o.start {
        Some(rv) if !o.send_initial => rv,
        _ => {
            rv_rx.borrow_and_update();
            let (items, rv) = {
                let s = lock(&sh.store);
                (s.list_kind(o.kind, ns.as_deref(), &sel), s.rv)
            };
            for item in &items {
                if tx.send(event_line("ADDED", item)).await.is_err() {
                    return;
                }
            }
            if o.send_initial && tx.send(bookmark(o.kind, rv, true)).await.is_err() {
                return;
            }
            rv
        }
    };
    let deadline = o.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    loop {
        rv_rx.borrow_and_update();
        let read = {
            let s = lock(&sh.store);
            s.events_after(cursor)
                .map(|evs| (evs, s.rv))
                .map_err(|()| s.floor)
        };
        match read {
            Err(floor) => {
                let status = crate::util::status_value(
                    410,
                    "Expired",
                    &format!("too old resource version: {cursor} ({floor})"),
                    None,
                );
                let _ = tx.send(event_line("ERROR", &status)).await;
                return;
            }
            Ok((evs, rv)) => {
                for ev in &evs {
                    if !wanted(&ev.obj) {
                        continue;
                    }
                    if let Some((ty, obj)) = ev.for_selector(&sel)
                        && tx.send(event_line(ty.as_str(), obj)).await.is_err()
                    {
                        return;
                    }
                }
                cursor = cursor.max(rv);
            }
        }
        let until = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = rv_rx.changed() => if r.is_err() { return },
            _ = tick.tick(), if o.bookmarks => {
                if tx.send(bookmark(o.kind, cursor, false)).await.is_err() {
                    return;
                }
            }
            () = until => return,
            () = tx.closed() => return,
        }
    }
}

async fn get_pod(State(sh): Sh, Path((ns, name)): Path<(String, String)>) -> Response {
    match sh.get_pod(&ns, &name) {
        Some(p) => ok(&p),
        None => ApiError::not_found(&name).into_response(),
    }
}

pub(crate) fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the body of the request could not be decoded: {e}"))
    })
}

pub(crate) fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

async fn create(
    State(sh): Sh,
    Path(ns): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let q = Query::parse(q.as_deref());
    let mut pod = match parse_body(&body) {
        Ok(v) if v.is_object() => v,
        Ok(_) => return ApiError::bad_request("the body must be a Pod object").into_response(),
        Err(e) => return e.into_response(),
    };
    if pod.get("kind").is_some_and(|k| k != "Pod") {
        return ApiError::bad_request(format!("expected kind Pod, got {}", pod["kind"]))
            .into_response();
    }
    if !pod["metadata"].is_object() {
        pod["metadata"] = json!({});
    }
    if let Some(bns) = pod["metadata"]["namespace"].as_str()
        && !bns.is_empty()
        && bns != ns
    {
        return ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )
        .into_response();
    }
    let name = match (
        pod["metadata"]["name"].as_str(),
        pod["metadata"]["generateName"].as_str(),
    ) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(g)) if !g.is_empty() => format!("{g}{}", random_suffix()),
        _ => {
            return ApiError::invalid(
                "",
                "metadata.name: Required value: name or generateName is required",
            )
            .into_response();
        }
    };
    // Admission in the API server's order (see `admission`): the ServiceAccount
    // plugin, field validation, then Pod Security and quota, then the name.
    if let Err(e) = crate::admission::namespace_lifecycle(&sh, &ns, "pods", &name) {
        return e.into_response();
    }
    if let Err(e) = crate::admission::service_account(&sh, &ns, &name, &pod) {
        return e.into_response();
    }
    if let Err(msg) = validate(&name, &pod, sh.config.env_var_names) {
        return ApiError::invalid(&name, msg).into_response();
    }
    default_pod(&mut pod, &ns, &name);
    if q.get("dryRun").is_some() {
        return json_response(201, &pod);
    }
    let created = sh.mutate(|s| {
        let existing = s.list_kind(Kind::Pod, Some(&ns), &Selectors::default());
        let existing: Vec<&Value> = existing.iter().collect();
        crate::admission::validate_pod(&sh, &ns, &name, &pod, &existing)?;
        if s.get(&ns, &name).is_some() {
            let mut e = ApiError::new(
                409,
                "AlreadyExists",
                format!("pods \"{name}\" already exists"),
            );
            e.details = Some(json!({"name": name, "kind": "pods"}));
            return Err(e);
        }
        let rt = kubelet::register(&sh, &pod);
        let kill_rx = rt.kill_tx.subscribe();
        Ok((s.insert(&ns, &name, pod), rt, kill_rx))
    });
    match created {
        Err(e) => e.into_response(),
        Ok((obj, rt, kill_rx)) => {
            kubelet::start(sh.clone(), rt, kill_rx);
            json_response(201, &obj)
        }
    }
}

fn validate(name: &str, pod: &Value, rule: EnvVarNames) -> Result<(), String> {
    if !is_dns_subdomain(name) {
        return Err(format!(
            "metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
        ));
    }
    let spec = &pod["spec"];
    let mains = spec["containers"].as_array().filter(|c| !c.is_empty());
    let Some(mains) = mains else {
        return Err("spec.containers: Required value".into());
    };
    if let Some(rp) = spec["restartPolicy"].as_str()
        && !["Always", "OnFailure", "Never"].contains(&rp)
    {
        return Err(format!("spec.restartPolicy: Unsupported value: \"{rp}\""));
    }
    let mut volumes = Vec::new();
    for v in spec["volumes"].as_array().into_iter().flatten() {
        let vname = v["name"].as_str().unwrap_or("");
        if !is_dns_subdomain(vname) || volumes.contains(&vname) {
            return Err(format!("spec.volumes.name: Invalid value: \"{vname}\""));
        }
        if let Some(claim) = v.get("persistentVolumeClaim") {
            let c = claim["claimName"].as_str().unwrap_or("");
            if !is_dns_subdomain(c) {
                return Err(format!(
                    "spec.volumes.persistentVolumeClaim.claimName: Invalid value: \"{c}\""
                ));
            }
        }
        volumes.push(vname);
    }
    let inits = spec["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut names = Vec::new();
    for c in inits.iter().chain(mains.iter()) {
        let cname = c["name"].as_str().unwrap_or("");
        if !is_dns_subdomain(cname) || cname.contains('.') || names.contains(&cname.to_string()) {
            return Err(format!("spec.containers.name: Invalid value: \"{cname}\""));
        }
        names.push(cname.to_string());
        if c["image"].as_str().is_none_or(str::is_empty) {
            return Err(format!("spec.containers[{cname}].image: Required value"));
        }
        if c["workingDir"]
            .as_str()
            .is_some_and(crate::process::has_dotdot)
        {
            return Err(format!(
                "spec.containers[{cname}].workingDir: Invalid value"
            ));
        }
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let mname = m["name"].as_str().unwrap_or("");
            if !volumes.contains(&mname) {
                return Err(format!(
                    "spec.containers[{cname}].volumeMounts.name: Not found: \"{mname}\""
                ));
            }
            let path = m["mountPath"].as_str().unwrap_or("");
            if path.is_empty() || crate::process::has_dotdot(path) {
                return Err(format!(
                    "spec.containers[{cname}].volumeMounts.mountPath: Invalid value: \"{path}\""
                ));
            }
            if let Some(sub) = m["subPath"].as_str()
                && (sub.starts_with('/') || crate::process::has_dotdot(sub))
            {
                return Err(format!(
                    "spec.containers[{cname}].volumeMounts.subPath: Invalid value: \"{sub}\""
                ));
            }
        }
        validate_env(cname, c, rule)?;
    }
    Ok(())
}

/// Why `n` is not an environment variable name under `rule`, in the words of
/// apimachinery's `IsEnvVarName` (strict) or `IsRelaxedEnvVarName` (relaxed), which
/// validation.go `validateEnvVarName` picks by the gate
/// `RelaxedEnvironmentVariableValidation`; `None` when it is one.
fn env_name_error(rule: EnvVarNames, n: &str) -> Option<&'static str> {
    match rule {
        EnvVarNames::Relaxed => (n.is_empty()
            || !n.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'='))
        .then_some(
            "a valid environment variable name must consist only of printable ASCII characters other than '='",
        ),
        EnvVarNames::Strict => {
            let mut bytes = n.bytes();
            let ok = bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b"-._".contains(&b))
                && bytes.all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !ok {
                // `RegexError` joins its examples with "', " then " or ", hence the
                // doubled spaces.
                Some(
                    "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or 'MyEnvName1', regex used for validation is '[-._a-zA-Z][-._a-zA-Z0-9]*')",
                )
            } else if n == "." {
                Some("must not be '.'")
            } else if n == ".." {
                Some("must not be '..'")
            } else if n.starts_with("..") {
                Some("must not start with '..'")
            } else {
                None
            }
        }
    }
}

/// The API server's checks on a container's `env` and `envFrom`.
fn validate_env(cname: &str, c: &Value, rule: EnvVarNames) -> Result<(), String> {
    let secret_name = |field: &str, n: &str| match dns_subdomain_errors(n).first() {
        Some(msg) => Err(format!(
            "spec.containers[{cname}].{field}: Invalid value: \"{n}\": {msg}"
        )),
        None => Ok(()),
    };
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or("");
        // validation.go `ValidateEnv` checks presence before the rule.
        if name.is_empty() {
            return Err(format!(
                "spec.containers[{cname}].env[].name: Required value"
            ));
        }
        if let Some(msg) = env_name_error(rule, name) {
            return Err(format!(
                "spec.containers[{cname}].env[].name: Invalid value: \"{name}\": {msg}"
            ));
        }
        if let Some(r) = e.pointer("/valueFrom/secretKeyRef") {
            secret_name(
                "env[].valueFrom.secretKeyRef.name",
                r["name"].as_str().unwrap_or(""),
            )?;
            let key = r["key"].as_str().unwrap_or("");
            if key.is_empty() {
                return Err(format!(
                    "spec.containers[{cname}].env[].valueFrom.secretKeyRef.key: Required value"
                ));
            }
            if let Some(msg) = config_key_errors(key).first() {
                return Err(format!(
                    "spec.containers[{cname}].env[].valueFrom.secretKeyRef.key: Invalid value: \"{key}\": {msg}"
                ));
            }
        }
    }
    for f in c["envFrom"].as_array().into_iter().flatten() {
        let prefix = f["prefix"].as_str().unwrap_or("");
        if let Some(msg) = env_name_error(rule, prefix).filter(|_| !prefix.is_empty()) {
            return Err(format!(
                "spec.containers[{cname}].envFrom[].prefix: Invalid value: \"{prefix}\": {msg}"
            ));
        }
        let sources = ["configMapRef", "secretRef"]
            .iter()
            .filter(|k| f.get(**k).is_some_and(|v| !v.is_null()))
            .count();
        if sources != 1 {
            return Err(format!(
                "spec.containers[{cname}].envFrom[]: Invalid value: \"\": must specify one of: `configMapRef` or `secretRef`"
            ));
        }
        if let Some(r) = f.get("secretRef").filter(|r| !r.is_null()) {
            secret_name("envFrom[].secretRef.name", r["name"].as_str().unwrap_or(""))?;
        }
    }
    Ok(())
}

fn default_pod(pod: &mut Value, ns: &str, name: &str) {
    let m = &mut pod["metadata"];
    m["name"] = json!(name);
    m["namespace"] = json!(ns);
    m["uid"] = json!(uuid::Uuid::new_v4().to_string());
    m["creationTimestamp"] = json!(now_rfc3339());
    if let Some(o) = m.as_object_mut() {
        o.remove("deletionTimestamp");
        o.remove("deletionGracePeriodSeconds");
        o.remove("resourceVersion");
    }
    pod["kind"] = json!("Pod");
    pod["apiVersion"] = json!("v1");
    let spec = &mut pod["spec"];
    let defaults = [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("serviceAccountName", json!("default")),
        ("enableServiceLinks", json!(true)),
        ("priority", json!(0)),
    ];
    for (k, v) in defaults {
        if spec.get(k).is_none_or(Value::is_null) {
            spec[k] = v;
        }
    }
    for key in ["initContainers", "containers"] {
        for c in spec[key].as_array_mut().into_iter().flatten() {
            if c.get("terminationMessagePath").is_none() {
                c["terminationMessagePath"] = json!("/dev/termination-log");
                c["terminationMessagePolicy"] = json!("File");
            }
            if c.get("imagePullPolicy").is_none() {
                let image = c["image"].as_str().unwrap_or("");
                let tagged = image.contains('@')
                    || image
                        .rsplit('/')
                        .next()
                        .is_some_and(|last| last.contains(':') && !last.ends_with(":latest"));
                c["imagePullPolicy"] = json!(if tagged { "IfNotPresent" } else { "Always" });
            }
            if c.get("resources").is_none() {
                c["resources"] = json!({});
            }
        }
    }
    pod["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
}

/// Delete a pod as the API server does; `extra` is applied to the object first
/// (the eviction subresource adds its DisruptionTarget condition that way).
pub(crate) fn do_delete(
    sh: &Shared,
    ns: &str,
    name: &str,
    grace: Option<i64>,
    opts: &Value,
    extra: Option<&dyn Fn(&mut Value)>,
) -> Result<Value, ApiError> {
    let (obj, uid, grace) = sh.mutate(|s| {
        let pod = s.get(ns, name).cloned().ok_or_else(|| ApiError::not_found(name))?;
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
        if let Some(want) = opts.pointer("/preconditions/uid").and_then(Value::as_str)
            && want != uid
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!("Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"),
            ));
        }
        if let Some(want) = opts.pointer("/preconditions/resourceVersion").and_then(Value::as_str)
            && Some(want) != pod["metadata"]["resourceVersion"].as_str()
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {}",
                    pod["metadata"]["resourceVersion"]
                ),
            ));
        }
        let default_grace = pod["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
        // "Negative values will be treated as the value `1s` on the delete path"
        // (apiserver pkg/registry/rest/delete.go `BeforeDelete`): never an immediate
        // deletion.
        let mut grace = match grace {
            Some(g) if g < 0 => 1,
            Some(g) => g,
            None => default_grace.max(0),
        };
        let unscheduled = !crate::store::is_bound(&pod);
        let terminal = matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
        if unscheduled || terminal {
            grace = 0;
        }
        if let Some(current) = pod["metadata"]["deletionGracePeriodSeconds"].as_i64()
            && grace >= current
        {
            // Already terminating with an equal or shorter grace period.
            return Ok((pod, uid, None));
        }
        if let Some(f) = extra {
            s.update(ns, name, f);
        }
        if orphans(opts) {
            // The garbage collector's orphan finalizer: dependents lose their
            // reference to the pod and stay.
            s.orphan_dependents(ns, &uid);
        }
        if grace == 0 {
            let obj = s.remove(ns, name).unwrap_or(pod);
            return Ok((obj, uid, Some(0)));
        }
        let when = crate::util::rfc3339(SystemTime::now() + Duration::from_secs(grace as u64));
        let obj = s
            .update(ns, name, |p| {
                p["metadata"]["deletionTimestamp"] = json!(when);
                p["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            })
            .unwrap_or(pod);
        Ok((obj, uid, Some(grace)))
    })?;
    // An unreachable node's kubelet never hears of the deletion: the pod stays
    // terminating until the node object goes (see `Simulator::delete_node`).
    let node_down = lock(&sh.flags).node_down;
    if let (Some(grace), Some(rt), false) = (grace, sh.runtime(&uid), node_down) {
        rt.request_kill(Kill::Delete {
            grace: grace as u64,
        });
    }
    Ok(obj)
}

/// Whether delete options ask for dependents to be orphaned.
fn orphans(opts: &Value) -> bool {
    opts["propagationPolicy"] == "Orphan" || opts["orphanDependents"] == true
}

/// Delete options from the body, with `propagationPolicy` and
/// `orphanDependents` also taken from the query as the API server does.
fn delete_options(q: &Query, body: &[u8]) -> Result<Value, ApiError> {
    let mut opts = parse_body(body)?;
    if !opts.is_object() {
        return Err(ApiError::bad_request(
            "the delete options must be an object",
        ));
    }
    if let Some(p) = q.get("propagationPolicy")
        && opts.get("propagationPolicy").is_none_or(Value::is_null)
    {
        opts["propagationPolicy"] = json!(p);
    }
    if q.flag("orphanDependents") && opts.get("orphanDependents").is_none_or(Value::is_null) {
        opts["orphanDependents"] = json!(true);
    }
    Ok(opts)
}

fn grace_of(q: &Query, opts: &Value) -> Result<Option<i64>, ApiError> {
    if let Some(g) = opts.get("gracePeriodSeconds").filter(|g| !g.is_null()) {
        return g
            .as_i64()
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("gracePeriodSeconds must be an integer"));
    }
    match q.get("gracePeriodSeconds") {
        Some(g) => g
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request("gracePeriodSeconds must be an integer")),
        None => Ok(None),
    }
}

async fn delete_pod(
    State(sh): Sh,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let q = Query::parse(q.as_deref());
    result((|| {
        let opts = delete_options(&q, &body)?;
        let grace = grace_of(&q, &opts)?;
        if q.get("dryRun").is_some()
            || opts
                .get("dryRun")
                .is_some_and(|d| d.as_array().is_some_and(|a| !a.is_empty()))
        {
            return sh
                .get_pod(&ns, &name)
                .ok_or_else(|| ApiError::not_found(&name));
        }
        do_delete(&sh, &ns, &name, grace, &opts, None)
    })())
}

async fn delete_collection(
    State(sh): Sh,
    Path(ns): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let q = Query::parse(q.as_deref());
    result((|| {
        let opts = delete_options(&q, &body)?;
        let grace = grace_of(&q, &opts)?;
        let sel = selectors(&q, Kind::Pod)?;
        let names: Vec<String> = lock(&sh.store)
            .list(Some(&ns), &sel)
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        let mut items = Vec::new();
        for n in names {
            if let Ok(p) = do_delete(&sh, &ns, &n, grace, &opts, None) {
                items.push(p);
            }
        }
        let rv = lock(&sh.store).rv;
        Ok(
            json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
        )
    })())
}

/// The eviction API's DisruptionTarget condition. pkg/registry/core/pod/storage/
/// eviction.go `addConditionAndDeletePod` writes it with a status update (reason
/// `EvictionByEvictionAPI`, message "Eviction API: evicting"), then deletes the pod
/// gracefully with the Eviction's `deleteOptions`; the kubelet writes the phase later.
pub(crate) fn eviction_condition(p: &mut Value) {
    set_cond(
        p,
        "DisruptionTarget",
        true,
        Some("EvictionByEvictionAPI"),
        Some("Eviction API: evicting"),
    );
}

async fn evict(State(sh): Sh, Path((ns, name)): Path<(String, String)>, body: Bytes) -> Response {
    let r = parse_body(&body).and_then(|ev| {
        let opts = ev.get("deleteOptions").cloned().unwrap_or(json!({}));
        let grace = grace_of(&Query::default(), &opts)?;
        do_delete(&sh, &ns, &name, grace, &opts, Some(&eviction_condition))
    });
    match r {
        Ok(_) => json_response(
            201,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ),
        Err(e) => e.into_response(),
    }
}

fn merge_maps(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else { return };
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in p {
        if v.is_null() {
            if let Some(o) = target.as_object_mut() {
                o.remove(k);
            }
        } else {
            target[k] = v.clone();
        }
    }
}

async fn patch_pod(
    State(sh): Sh,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !(ct.starts_with("application/merge-patch+json")
        || ct.starts_with("application/strategic-merge-patch+json"))
    {
        return ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the simulator does not support patch type {ct:?}"),
        )
        .into_response();
    }
    result(parse_body(&body).and_then(|patch| {
        apply_metadata(
            &sh,
            &ns,
            &name,
            patch.pointer("/metadata/resourceVersion"),
            |p| {
                for key in ["labels", "annotations"] {
                    if let Some(m) = patch["metadata"].get(key) {
                        merge_maps(&mut p["metadata"][key], m);
                    }
                }
            },
        )
    }))
}

async fn put_pod(State(sh): Sh, Path((ns, name)): Path<(String, String)>, body: Bytes) -> Response {
    result(parse_body(&body).and_then(|new| {
        apply_metadata(
            &sh,
            &ns,
            &name,
            new.pointer("/metadata/resourceVersion"),
            |p| {
                for key in ["labels", "annotations"] {
                    p["metadata"][key] = new["metadata"].get(key).cloned().unwrap_or(json!({}));
                }
            },
        )
    }))
}

/// Change labels/annotations (the only mutable fields here), with an
/// optimistic-concurrency check on resourceVersion.
fn apply_metadata(
    sh: &Shared,
    ns: &str,
    name: &str,
    rv: Option<&Value>,
    f: impl FnOnce(&mut Value),
) -> Result<Value, ApiError> {
    sh.mutate(|s| {
        let cur = s.get(ns, name).ok_or_else(|| ApiError::not_found(name))?;
        if let Some(rv) = rv.and_then(Value::as_str)
            && Some(rv) != cur["metadata"]["resourceVersion"].as_str()
        {
            return Err(ApiError::stale("pods", name));
        }
        s.update(ns, name, f)
            .ok_or_else(|| ApiError::not_found(name))
    })
}

/// Resolve the container a request targets (the only one when unspecified).
pub(crate) fn pick_container(
    pod: &Value,
    name: &str,
    requested: Option<&str>,
) -> Result<String, ApiError> {
    let all: Vec<String> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod["spec"][*k].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    let mains: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    match requested.filter(|r| !r.is_empty()) {
        Some(c) if all.iter().any(|x| x == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if mains.len() == 1 => Ok(mains[0].clone()),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            mains.join(" ")
        ))),
    }
}

async fn logs(
    State(sh): Sh,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    let q = Query::parse(q.as_deref());
    let Some(pod) = sh.get_pod(&ns, &name) else {
        return ApiError::not_found(&name).into_response();
    };
    let container = match pick_container(&pod, &name, q.get("container")) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let log = sh
        .runtime_of(&ns, &name)
        .and_then(|rt| lock(&rt.logs).get(&container).cloned());
    let Some(log) = log else {
        return ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
        ))
        .into_response();
    };
    let text_plain = |body: Body| {
        let mut r = body.into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r
    };
    if !q.flag("follow") {
        let mut data = log.slice_from(0);
        if let Some(n) = q.get("tailLines").and_then(|t| t.parse::<usize>().ok()) {
            data = tail_lines(&data, n);
        }
        return text_plain(Body::from(data));
    }
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut state = log.tx.subscribe();
        let mut offset = 0;
        loop {
            let (len, done) = *state.borrow_and_update();
            if len > offset {
                let chunk = log.slice_from(offset);
                offset += chunk.len();
                if tx.send(Bytes::from(chunk)).await.is_err() {
                    return;
                }
            }
            if done && offset >= len {
                return;
            }
            tokio::select! {
                r = state.changed() => if r.is_err() { return },
                () = tx.closed() => return,
            }
        }
    });
    let stream =
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|o| o.map(Ok::<_, Infallible>)));
    text_plain(Body::from_stream(stream))
}

fn tail_lines(data: &[u8], n: usize) -> Vec<u8> {
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut count = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            count += 1;
            if count == n {
                return data[i + 1..].to_vec();
            }
        }
    }
    if n == 0 { Vec::new() } else { data.to_vec() }
}

#[cfg(test)]
mod tests {
    use super::tail_lines;

    #[test]
    fn tails() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc", 1), b"c");
        assert_eq!(tail_lines(b"a\n", 5), b"a\n");
        assert_eq!(tail_lines(b"a\n", 0), b"");
    }
}
