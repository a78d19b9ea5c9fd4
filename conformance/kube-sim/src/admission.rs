//! Authorization and admission, in the order the API server applies them to a pod
//! create: RBAC (before the handler runs), the ServiceAccount plugin (mutating), field
//! validation (422), then the validating plugins Pod Security and ResourceQuota, and
//! only then the storage layer's `AlreadyExists`. So a create resent after a lost answer
//! meets quota's 403, not 409, once the first attempt used the quota up.
//!
//! Order: k8s.io/apiserver/pkg/endpoints/handlers/create.go (`admit.Admit` before
//! `r.Create`), k8s.io/apiserver/pkg/registry/generic/registry/store.go `Create`
//! (`rest.BeforeCreate` validation, then `createValidation`, then the storage `Create`
//! that answers `AlreadyExists`).

use crate::state::{Shared, lock};
use crate::util::ApiError;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// The user every request is made as (the kubeconfig's user).
pub(crate) const USER: &str = "kube-sim";

/// Label of a namespace that enforces a Pod Security level.
pub(crate) const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// Authorization and admission settings, set from the control handle.
#[derive(Debug, Default)]
pub(crate) struct Policy {
    /// `(verb, resource)` pairs RBAC denies, e.g. `("create", "pods/exec")`.
    pub forbidden: BTreeSet<(String, String)>,
    /// `(verb, resource)` pairs RBAC let through so far: what a Role must grant for the
    /// requests made (see `Simulator::authorized`).
    pub authorized: BTreeSet<(String, String)>,
    /// Labels of namespaces (every namespace exists; these are the ones with labels).
    pub namespace_labels: HashMap<String, BTreeMap<String, String>>,
    /// Per namespace: (quota name, most pods).
    pub pod_quota: HashMap<String, (String, usize)>,
    /// Service accounts besides `default`, per namespace.
    pub service_accounts: HashMap<String, BTreeSet<String>>,
    /// Namespaces that are not there (`false`) or are being deleted (`true`); every
    /// other namespace exists.
    pub namespace_gone: HashMap<String, bool>,
}

/// The NamespaceLifecycle admission plugin (plugin/pkg/admission/namespace/lifecycle/
/// admission.go) for a create of `resource` (`pods`, `secrets`) named `name` in `ns`:
/// 404 `namespaces "NS" not found` when it does not exist, 403 `unable to create new
/// content in namespace NS because it is being terminated` (cause
/// `NamespaceTerminating`) while it is being deleted.
pub(crate) fn namespace_lifecycle(
    sh: &Shared,
    ns: &str,
    resource: &'static str,
    name: &str,
) -> Result<(), ApiError> {
    match lock(&sh.policy).namespace_gone.get(ns) {
        None => Ok(()),
        Some(false) => {
            let mut e = ApiError::new(404, "NotFound", format!("namespaces \"{ns}\" not found"));
            e.details = Some(json!({"name": ns, "kind": "namespaces"}));
            Err(e)
        }
        Some(true) => {
            let why = format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            );
            let mut e = ApiError::new(
                403,
                "Forbidden",
                format!("{resource} \"{name}\" is forbidden: {why}"),
            );
            e.details = Some(json!({
                "name": name,
                "kind": resource,
                "causes": [{"reason": "NamespaceTerminating", "message": why, "field": "metadata.namespace"}],
            }));
            Err(e)
        }
    }
}

/// The RBAC verbs a request needs, its API group, resource, namespace and name, as the
/// request info resolver derives them (k8s.io/apiserver/pkg/endpoints/request/
/// requestinfo.go): the group from the path (`/api/v1/...` is the core group `""`,
/// `/apis/GROUP/VERSION/...` a named one), the verb from the method and whether a name
/// is given, the resource with its subresource (`pods/exec`).
fn request_info(method: &str, path: &str, query: &str) -> Option<RequestInfo> {
    let (group, rest) = match path.strip_prefix("/api/v1/") {
        Some(rest) => ("", rest),
        None => {
            let rest = path.strip_prefix("/apis/")?;
            let mut parts = rest.splitn(3, '/');
            let group = parts.next()?;
            let _version = parts.next()?;
            (group, parts.next()?)
        }
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let (ns, tail) = match parts.as_slice() {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => ((*ns).to_owned(), tail),
        ["namespaces", ..] => return None,
        tail => (String::new(), tail),
    };
    let (resource, name, sub) = match tail {
        [r] => (*r, "", None),
        [r, n] => (*r, *n, None),
        [r, n, s] => (*r, *n, Some(*s)),
        _ => return None,
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verbs = match (method, name.is_empty()) {
        // WebSocket exec is a GET, authorised as `get`; from Kubernetes 1.35
        // (AuthorizePodWebsocketUpgradeCreatePermission, on by default) `create` is
        // checked as well.
        ("GET", false) if sub == Some("exec") => vec!["get", "create"],
        ("GET", _) if watch => vec!["watch"],
        ("GET", true) => vec!["list"],
        ("GET", false) => vec!["get"],
        ("POST", _) => vec!["create"],
        ("PUT", _) => vec!["update"],
        ("PATCH", _) => vec!["patch"],
        ("DELETE", true) => vec!["deletecollection"],
        ("DELETE", false) => vec!["delete"],
        _ => return None,
    };
    let full = match sub {
        Some(s) => format!("{resource}/{s}"),
        None => resource.to_owned(),
    };
    Some(RequestInfo {
        verbs,
        group: group.to_owned(),
        resource: full,
        ns,
        name: name.to_owned(),
    })
}

/// What RBAC decides on (see [`request_info`]).
#[derive(Debug, PartialEq, Eq)]
struct RequestInfo {
    verbs: Vec<&'static str>,
    group: String,
    resource: String,
    ns: String,
    name: String,
}

impl RequestInfo {
    /// The resource as `forbid` and `authorized` name it: `pods/exec` in the core
    /// group, `resource.group` in a named one (`networkpolicies.networking.k8s.io`, as
    /// `kubectl auth can-i` writes it).
    fn rbac_resource(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

/// The authorizer's denial, worded as k8s.io/apiserver/pkg/endpoints/handlers/
/// responsewriters/errors.go `forbiddenMessage` and answered as `NewForbidden` (whose
/// qualified resource is `resource.group` outside the core group).
fn rbac_denial(verb: &str, info: &RequestInfo) -> ApiError {
    let (resource, ns, name) = (&info.resource, &info.ns, &info.name);
    let base = resource.split('/').next().unwrap_or(resource);
    let qualified = if info.group.is_empty() {
        base.to_owned()
    } else {
        format!("{base}.{}", info.group)
    };
    let subject = if name.is_empty() {
        qualified
    } else {
        format!("{qualified} \"{name}\"")
    };
    let scope = if ns.is_empty() {
        " at the cluster scope".to_owned()
    } else {
        format!(" in the namespace \"{ns}\"")
    };
    let mut e = ApiError::new(
        403,
        "Forbidden",
        format!(
            "{subject} is forbidden: User \"{USER}\" cannot {verb} resource \"{resource}\" in API group \"{}\"{scope}",
            info.group
        ),
    );
    let mut details = json!({"name": name, "kind": base});
    if !info.group.is_empty() {
        details["group"] = json!(info.group);
    }
    e.details = Some(details);
    e
}

/// Middleware: deny what RBAC is told to deny, before any handler runs, and record
/// what it lets through.
pub(crate) async fn authorize(State(sh): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let info = request_info(
        req.method().as_str(),
        req.uri().path(),
        req.uri().query().unwrap_or(""),
    );
    if let Some(info) = info {
        let resource = info.rbac_resource();
        let denied = {
            let mut p = lock(&sh.policy);
            let denied = info
                .verbs
                .iter()
                .find(|v| p.forbidden.contains(&((**v).to_owned(), resource.clone())));
            if denied.is_none() {
                // Every verb checked was needed (both of an exec's), so all are recorded.
                for v in &info.verbs {
                    p.authorized.insert(((*v).to_owned(), resource.clone()));
                }
            }
            denied.copied()
        };
        if let Some(verb) = denied {
            return rbac_denial(verb, &info).into_response();
        }
    }
    next.run(req).await
}

/// `admission.NewForbidden` for a pod.
fn pod_forbidden(name: &str, why: String) -> ApiError {
    let mut e = ApiError::new(
        403,
        "Forbidden",
        format!("pods \"{name}\" is forbidden: {why}"),
    );
    e.details = Some(json!({"name": name, "kind": "pods"}));
    e
}

/// The ServiceAccount admission plugin (plugin/pkg/admission/serviceaccount/
/// admission.go): a pod naming a service account that does not exist is forbidden.
pub(crate) fn service_account(
    sh: &Shared,
    ns: &str,
    name: &str,
    pod: &Value,
) -> Result<(), ApiError> {
    let sa = pod["spec"]["serviceAccountName"]
        .as_str()
        .or_else(|| pod["spec"]["serviceAccount"].as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    let exists = sa == "default"
        || lock(&sh.policy)
            .service_accounts
            .get(ns)
            .is_some_and(|s| s.contains(sa));
    if exists {
        Ok(())
    } else {
        Err(pod_forbidden(
            name,
            format!(
                "error looking up service account {ns}/{sa}: serviceaccount \"{sa}\" not found"
            ),
        ))
    }
}

/// Pod Security admission and ResourceQuota, the validating plugins, for a pod about
/// to be stored in `ns` next to `existing` pods.
pub(crate) fn validate_pod(
    sh: &Shared,
    ns: &str,
    name: &str,
    pod: &Value,
    existing: &[&Value],
) -> Result<(), ApiError> {
    let (enforce, quota) = {
        let p = lock(&sh.policy);
        let enforce = p
            .namespace_labels
            .get(ns)
            .and_then(|l| l.get(ENFORCE_LABEL))
            .cloned();
        (enforce, p.pod_quota.get(ns).cloned())
    };
    if enforce.as_deref() == Some("restricted") {
        let violations = restricted_violations(pod);
        if !violations.is_empty() {
            return Err(pod_forbidden(
                name,
                format!(
                    "violates PodSecurity \"restricted:latest\": {}",
                    violations.join(", ")
                ),
            ));
        }
    }
    if let Some((qname, limit)) = quota {
        // The pod quota counts pods that are not terminal (pkg/quota/v1/evaluator/core/
        // pods.go `QuotaV1Pod`): running, pending and terminating ones.
        let used = existing
            .iter()
            .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
            .count();
        if used + 1 > limit {
            // plugin/pkg/admission/resourcequota/controller.go.
            return Err(pod_forbidden(
                name,
                format!(
                    "exceeded quota: {qname}, requested: pods=1, used: pods={used}, limited: pods={limit}"
                ),
            ));
        }
    }
    Ok(())
}

/// `containers "a", "b"` or `container "a"`, as the policy checks name them.
fn containers_phrase(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    if names.len() == 1 {
        format!("container {}", quoted[0])
    } else {
        format!("containers {}", quoted.join(", "))
    }
}

/// The "restricted" profile's checks that fail for `pod`, as
/// k8s.io/pod-security-admission/policy words them, in the order of their check ids
/// (allowPrivilegeEscalation, capabilities_restricted, hostNamespaces,
/// hostPathVolumes, privileged, restrictedVolumes, runAsNonRoot, runAsUser,
/// seccompProfile_restricted). A subset of the profile: sysctls, AppArmor, SELinux,
/// procMount and host ports are not checked.
pub(crate) fn restricted_violations(pod: &Value) -> Vec<String> {
    let spec = &pod["spec"];
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .collect();
    let name = |c: &Value| c["name"].as_str().unwrap_or("").to_owned();
    let sc = |c: &Value| c["securityContext"].clone();
    let psc = &spec["securityContext"];
    let mut out = Vec::new();

    let bad: Vec<String> = containers
        .iter()
        .filter(|c| sc(c)["allowPrivilegeEscalation"] != json!(false))
        .map(|c| name(c))
        .collect();
    if !bad.is_empty() {
        out.push(format!(
            "allowPrivilegeEscalation != false ({} must set securityContext.allowPrivilegeEscalation=false)",
            containers_phrase(&bad)
        ));
    }

    let no_drop: Vec<String> = containers
        .iter()
        .filter(|c| {
            !sc(c)["capabilities"]["drop"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x == "ALL"))
        })
        .map(|c| name(c))
        .collect();
    let added: Vec<String> = containers
        .iter()
        .flat_map(|c| {
            sc(c)["capabilities"]["add"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|a| a.as_str().map(str::to_owned))
        .filter(|a| a != "NET_BIND_SERVICE")
        .collect();
    if !no_drop.is_empty() || !added.is_empty() {
        let mut parts = Vec::new();
        if !no_drop.is_empty() {
            parts.push(format!(
                "{} must set securityContext.capabilities.drop=[\"ALL\"]",
                containers_phrase(&no_drop)
            ));
        }
        if !added.is_empty() {
            parts.push(format!(
                "must not include {} in securityContext.capabilities.add",
                added
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out.push(format!("unrestricted capabilities ({})", parts.join("; ")));
    }

    let host: Vec<&str> = ["hostNetwork", "hostPID", "hostIPC"]
        .into_iter()
        .filter(|k| spec[*k] == json!(true))
        .collect();
    if !host.is_empty() {
        out.push(format!(
            "host namespaces ({})",
            host.iter()
                .map(|k| format!("{k}=true"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    let volumes: Vec<&Value> = spec["volumes"].as_array().into_iter().flatten().collect();
    let host_paths: Vec<String> = volumes
        .iter()
        .filter(|v| v.get("hostPath").is_some_and(|h| !h.is_null()))
        .map(|v| format!("\"{}\"", v["name"].as_str().unwrap_or("")))
        .collect();
    if !host_paths.is_empty() {
        let noun = if host_paths.len() == 1 {
            "volume"
        } else {
            "volumes"
        };
        out.push(format!(
            "hostPath volumes ({noun} {})",
            host_paths.join(", ")
        ));
    }

    let privileged: Vec<String> = containers
        .iter()
        .filter(|c| sc(c)["privileged"] == json!(true))
        .map(|c| name(c))
        .collect();
    if !privileged.is_empty() {
        out.push(format!(
            "privileged ({} must not set securityContext.privileged=true)",
            containers_phrase(&privileged)
        ));
    }

    const ALLOWED_VOLUMES: &[&str] = &[
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    let restricted: Vec<String> = volumes
        .iter()
        .filter_map(|v| {
            let ty = v
                .as_object()?
                .iter()
                .find(|(k, val)| *k != "name" && !val.is_null())
                .map(|(k, _)| k.clone())?;
            (!ALLOWED_VOLUMES.contains(&ty.as_str())).then(|| {
                format!(
                    "volume \"{}\" uses restricted volume type \"{ty}\"",
                    v["name"].as_str().unwrap_or("")
                )
            })
        })
        .collect();
    if !restricted.is_empty() {
        out.push(format!(
            "restricted volume types ({})",
            restricted.join(", ")
        ));
    }

    // runAsNonRoot: set on the pod, or on every container (a container's false wins).
    let pod_non_root = psc["runAsNonRoot"] == json!(true);
    let not_non_root: Vec<String> = containers
        .iter()
        .filter(|c| match sc(c)["runAsNonRoot"].as_bool() {
            Some(v) => !v,
            None => !pod_non_root,
        })
        .map(|c| name(c))
        .collect();
    if !not_non_root.is_empty() {
        out.push(format!(
            "runAsNonRoot != true (pod or {} must set securityContext.runAsNonRoot=true)",
            containers_phrase(&not_non_root)
        ));
    }

    let root: Vec<String> = containers
        .iter()
        .filter(|c| sc(c)["runAsUser"] == json!(0))
        .map(|c| name(c))
        .collect();
    if psc["runAsUser"] == json!(0) || !root.is_empty() {
        out.push(if root.is_empty() {
            "runAsUser=0 (pod must not set runAsUser=0)".to_owned()
        } else {
            format!(
                "runAsUser=0 ({} must not set runAsUser=0)",
                containers_phrase(&root)
            )
        });
    }

    let ok_seccomp = |v: &Value| matches!(v["type"].as_str(), Some("RuntimeDefault" | "Localhost"));
    let pod_seccomp = ok_seccomp(&psc["seccompProfile"]);
    let no_seccomp: Vec<String> = containers
        .iter()
        .filter(|c| {
            let own = &sc(c)["seccompProfile"];
            if own.is_null() {
                !pod_seccomp
            } else {
                !ok_seccomp(own)
            }
        })
        .map(|c| name(c))
        .collect();
    if !no_seccomp.is_empty() {
        out.push(format!(
            "seccompProfile (pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
            containers_phrase(&no_seccomp)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_info_matches_the_resolver() {
        let i = request_info;
        let info = |verbs: Vec<&'static str>, group: &str, resource: &str, ns: &str, name: &str| {
            Some(RequestInfo {
                verbs,
                group: group.into(),
                resource: resource.into(),
                ns: ns.into(),
                name: name.into(),
            })
        };
        assert_eq!(
            i("POST", "/api/v1/namespaces/ci/pods", ""),
            info(vec!["create"], "", "pods", "ci", "")
        );
        let verbs = |m, p, q| i(m, p, q).unwrap().verbs;
        assert_eq!(
            verbs("GET", "/api/v1/namespaces/ci/pods", "watch=true&x=1"),
            ["watch"]
        );
        assert_eq!(verbs("GET", "/api/v1/namespaces/ci/pods", ""), ["list"]);
        assert_eq!(verbs("GET", "/api/v1/namespaces/ci/pods/p", ""), ["get"]);
        assert_eq!(
            i("GET", "/api/v1/namespaces/ci/pods/p/exec", "command=ls"),
            info(vec!["get", "create"], "", "pods/exec", "ci", "p")
        );
        assert_eq!(
            verbs("POST", "/api/v1/namespaces/ci/pods/p/exec", ""),
            ["create"]
        );
        assert_eq!(
            verbs("DELETE", "/api/v1/namespaces/ci/secrets", ""),
            ["deletecollection"]
        );
        let np = i(
            "DELETE",
            "/apis/networking.k8s.io/v1/namespaces/ci/networkpolicies/p-hermetic",
            "",
        );
        assert_eq!(
            np,
            info(
                vec!["delete"],
                "networking.k8s.io",
                "networkpolicies",
                "ci",
                "p-hermetic"
            )
        );
        assert_eq!(
            np.unwrap().rbac_resource(),
            "networkpolicies.networking.k8s.io"
        );
        assert_eq!(i("GET", "/version", ""), None);
        assert_eq!(i("GET", "/apis/networking.k8s.io/v1", ""), None);
        assert_eq!(i("GET", "/api/v1/namespaces/ci", ""), None);
    }

    #[test]
    fn a_denial_names_the_api_group() {
        let core = request_info("POST", "/api/v1/namespaces/ci/pods", "").unwrap();
        assert_eq!(
            rbac_denial("create", &core).message,
            "pods is forbidden: User \"kube-sim\" cannot create resource \"pods\" in API group \"\" in the namespace \"ci\""
        );
        let np = request_info(
            "POST",
            "/apis/networking.k8s.io/v1/namespaces/ci/networkpolicies",
            "",
        )
        .unwrap();
        assert_eq!(
            rbac_denial("create", &np).message,
            "networkpolicies.networking.k8s.io is forbidden: User \"kube-sim\" cannot create resource \"networkpolicies\" in API group \"networking.k8s.io\" in the namespace \"ci\""
        );
    }

    #[test]
    fn a_baseline_pod_violates_restricted_in_the_documented_words() {
        let pod = json!({"spec": {"containers": [{"name": "nginx", "image": "nginx"}]}});
        let v = restricted_violations(&pod);
        // The example of https://kubernetes.io/docs/tutorials/security/ns-level-pss/.
        assert_eq!(
            v.join(", "),
            "allowPrivilegeEscalation != false (container \"nginx\" must set securityContext.allowPrivilegeEscalation=false), \
             unrestricted capabilities (container \"nginx\" must set securityContext.capabilities.drop=[\"ALL\"]), \
             runAsNonRoot != true (pod or container \"nginx\" must set securityContext.runAsNonRoot=true), \
             seccompProfile (pod or container \"nginx\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
        let ok = json!({"spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [{"name": "w", "emptyDir": {}}],
            "containers": [{"name": "c", "image": "x", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}});
        assert!(restricted_violations(&ok).is_empty());
        let privileged = json!({"spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
            "containers": [{"name": "c", "image": "x", "securityContext": {"privileged": true,
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}});
        let v = restricted_violations(&privileged);
        assert!(
            v.contains(
                &"privileged (container \"c\" must not set securityContext.privileged=true)"
                    .to_owned()
            ),
            "{v:?}"
        );
        assert!(
            v.contains(&"hostPath volumes (volume \"h\")".to_owned()),
            "{v:?}"
        );
        assert!(
            v.iter()
                .any(|s| s.contains("uses restricted volume type \"hostPath\"")),
            "{v:?}"
        );
    }
}
