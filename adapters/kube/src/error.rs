//! The mapping of Kubernetes API failures onto [`jetbridge_core::ErrorKind`], and the
//! classification the retry loop ([`crate::retry`]) acts on.

use jetbridge_core::{Error, ErrorKind};

/// How a failed API call should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Retrying may help, and the request may have reached the server.
    Transient,
    /// Retrying may help, and the request surely did not take effect (refused
    /// connection, or an error status before anything was done).
    NotSent,
    /// Permanent; this kind.
    Permanent(ErrorKind),
}

/// The HTTP status of an API error, if the failure is one.
pub(crate) fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

fn io_kind_in_chain(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = err.source();
    }
    None
}

/// Classify a kube error.
pub(crate) fn classify(e: &kube::Error) -> Class {
    use kube::Error as K;
    // The server (or a proxy in front of it) chose an exec subprotocol without an exit
    // status, or refused every one offered: no retry changes that.
    if no_exec_subprotocol(e) {
        return Class::Permanent(ErrorKind::Unsupported);
    }
    match e {
        // The kubelet refusing an exec into a container that is not running, as a
        // 1.29 API server passes it on (a plain-text 500): resending cannot help.
        K::Api(s) if s.code == 500 && container_not_found(&s.message) => {
            Class::Permanent(ErrorKind::Conflict)
        }
        K::Api(s) => match s.code {
            // Answered with an error before acting: safe to resend anything.
            429 | 500 | 502 | 503 | 504 => Class::NotSent,
            404 => Class::Permanent(ErrorKind::NotFound),
            409 if s.reason == "AlreadyExists" => Class::Permanent(ErrorKind::AlreadyExists),
            409 => Class::Permanent(ErrorKind::Conflict),
            400 | 422 => Class::Permanent(ErrorKind::Invalid),
            403 => Class::Permanent(forbidden_kind(&s.message)),
            410 => Class::Transient,
            _ => Class::Permanent(ErrorKind::Other),
        },
        K::HyperError(_) | K::Service(_) | K::ReadEvents(_) => match io_kind_in_chain(e) {
            Some(std::io::ErrorKind::ConnectionRefused) => Class::NotSent,
            _ => Class::Transient,
        },
        #[allow(unreachable_patterns)]
        K::UpgradeConnection(_) => Class::Transient,
        K::Auth(_) => Class::Permanent(ErrorKind::Other),
        K::BuildRequest(_) => Class::Permanent(ErrorKind::Invalid),
        _ => Class::Permanent(ErrorKind::Other),
    }
}

/// The kubelet's words for an exec into a container that is not running (not started,
/// or exited): `container not found ("NAME")`, in a 500 through 1.29 and in an
/// `InternalError` status frame from 1.30 (kubelet pkg/kubelet/server/server.go, via
/// the API server's stream translator).
pub(crate) fn container_not_found(message: &str) -> bool {
    message.contains("container not found")
}

/// wsstream's words when no offered exec subprotocol is allowed (answered 403).
const PROTOCOLS_REFUSED: &str = "requested protocol(s) are not supported";

/// Whether an exec upgrade ended without v4 or v5: the server chose another
/// subprotocol (or none), or refused every one offered (wsstream's handshake, 403).
fn no_exec_subprotocol(e: &kube::Error) -> bool {
    match e {
        kube::Error::UpgradeConnection(
            kube::client::UpgradeConnectionError::SecWebSocketProtocolMismatch,
        ) => true,
        kube::Error::Api(s) => s.code == 403 && s.message.contains(PROTOCOLS_REFUSED),
        _ => false,
    }
}

/// The NamespaceLifecycle admission plugin's words for a namespace being deleted
/// (plugin/pkg/admission/namespace/lifecycle/admission.go).
const NAMESPACE_TERMINATING: &str = "because it is being terminated";

/// A create refused because the namespace is missing (404 `namespaces "NS" not found`)
/// or being deleted (403 `... because it is being terminated`), said plainly: both need
/// the operator, not a retry.
fn namespace_problem(e: &kube::Error) -> Option<String> {
    let kube::Error::Api(s) = e else {
        return None;
    };
    let quoted = |m: &str| m.split('"').nth(1).map(str::to_owned);
    if s.code == 404 && s.message.starts_with("namespaces \"") {
        let ns = quoted(&s.message).unwrap_or_default();
        return Some(format!(
            "namespace {ns} does not exist: create it, or run in another namespace ({})",
            s.message
        ));
    }
    if s.code == 403 && s.message.contains(NAMESPACE_TERMINATING) {
        let ns = s
            .message
            .split("in namespace ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_default();
        return Some(format!(
            "namespace {ns} is being deleted: wait until it is gone and create it again, or run in another namespace ({})",
            s.message
        ));
    }
    None
}

/// The kind of a 403. RBAC denials and admission rejections all answer 403 `Forbidden`
/// with the same details; only the message tells them apart. Admission that rejects the
/// object itself (Pod Security, a service account that does not exist) is `Invalid`:
/// the pod spec or the configuration must change. RBAC denials and exhausted quotas are
/// `PermissionDenied`: an operator must grant more.
///
/// Formats: k8s.io/pod-security-admission/admission/admission.go (`violates PodSecurity
/// "restricted:latest": ...`), plugin/pkg/admission/serviceaccount/admission.go (`error
/// looking up service account NS/NAME: ...`).
fn forbidden_kind(message: &str) -> ErrorKind {
    if message.contains("violates PodSecurity")
        || message.contains("error looking up service account")
        || message.contains(NAMESPACE_TERMINATING)
    {
        ErrorKind::Invalid
    } else {
        ErrorKind::PermissionDenied
    }
}

/// The permission an RBAC denial names: `VERB RESOURCE` (with the API group when there
/// is one), from the authorizer's message, k8s.io/apiserver/pkg/endpoints/handlers/
/// responsewriters/errors.go `forbiddenMessage`: `User "U" cannot VERB resource "R" in
/// API group "G" in the namespace "N"`. `None` for other 403s (quota, admission).
pub(crate) fn rbac_permission(message: &str) -> Option<String> {
    let rest = &message[message.find(" cannot ")? + " cannot ".len()..];
    let (verb, rest) = rest.split_once(" resource \"")?;
    let (resource, rest) = rest.split_once('"')?;
    let quoted_after = |key: &str| {
        let r = &rest[rest.find(key)? + key.len()..];
        r.split_once('"').map(|(v, _)| v.to_owned())
    };
    let mut need = format!("{verb} {resource}");
    if let Some(g) = quoted_after(" in API group \"").filter(|g| !g.is_empty()) {
        need.push_str(&format!(" (API group {g})"));
    }
    if let Some(ns) = quoted_after(" in the namespace \"") {
        need.push_str(&format!(" in namespace {ns}"));
    }
    Some(need)
}

/// The domain error for a kube error, with `what` as context.
pub(crate) fn to_error(e: kube::Error, what: &str) -> Error {
    let kind = match classify(&e) {
        Class::Transient | Class::NotSent => ErrorKind::Transient,
        Class::Permanent(k) => k,
    };
    if let Some(plain) = namespace_problem(&e) {
        return Error::invalid(format!("{what}: {plain}")).with_source(e);
    }
    if no_exec_subprotocol(&e) {
        return Error::unsupported(format!(
            "{what}: the API server, or a proxy in front of it, did not agree on \
             v5.channel.k8s.io or v4.channel.k8s.io for exec ({e}); those are the \
             subprotocols that carry a command's exit status. A proxy that drops the \
             Sec-WebSocket-Protocol header makes the server fall back to the unversioned \
             channel.k8s.io: let the header through"
        ))
        .with_source(e);
    }
    let msg = match &e {
        kube::Error::Api(s) if s.code == 403 => match rbac_permission(&s.message) {
            Some(need) => format!(
                "{what}: permission denied: the Role lacks `{need}`: {} ({} {})",
                s.message, s.code, s.reason
            ),
            None => format!("{what}: {} ({} {})", s.message, s.code, s.reason),
        },
        kube::Error::Api(s) if !s.message.is_empty() => {
            format!("{what}: {} ({} {})", s.message, s.code, s.reason)
        }
        _ => format!("{what}: {e}"),
    };
    Error::new(kind, msg).with_source(e)
}

/// A local I/O failure while spooling exec stdin (v4 sessions): a full disk is
/// `StorageFull`, anything else `Other`, with the cause kept.
pub(crate) fn spool(e: std::io::Error) -> Error {
    let kind = if e.kind() == std::io::ErrorKind::StorageFull {
        ErrorKind::StorageFull
    } else {
        ErrorKind::Other
    };
    Error::new(
        kind,
        format!("spooling exec stdin to a temporary file: {e}"),
    )
    .with_source(e)
}
