//! Small helpers: `Status` bodies, timestamps, query strings.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jetbridge_sim_http::civil_from_days;
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

/// An API error: rendered as a `Status` body with the given code.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    pub fn not_found(name: &str) -> Self {
        Self::not_found_of("pods", name)
    }
    /// 404 for an object of `resource` (plural, e.g. "secrets").
    pub fn not_found_of(resource: &str, name: &str) -> Self {
        let mut e = Self::new(404, "NotFound", format!("{resource} \"{name}\" not found"));
        e.details = Some(json!({"name": name, "kind": resource}));
        e
    }
    /// 409 AlreadyExists for an object of `resource`.
    pub fn already_exists(resource: &str, name: &str) -> Self {
        let mut e = Self::new(
            409,
            "AlreadyExists",
            format!("{resource} \"{name}\" already exists"),
        );
        e.details = Some(json!({"name": name, "kind": resource}));
        e
    }
    /// 409 Conflict for a stale resourceVersion.
    pub fn stale(resource: &str, name: &str) -> Self {
        let mut e = Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
        e.details = Some(json!({"name": name, "kind": resource}));
        e
    }
    /// 429 TooManyRequests as a handler returns it, a JSON `Status`:
    /// `errors.NewTooManyRequests(message, retryAfterSeconds)`
    /// (k8s.io/apimachinery/pkg/api/errors/errors.go), whose `details` are always
    /// present and carry `retryAfterSeconds` when it is positive. The eviction
    /// subresource refuses an eviction a PodDisruptionBudget forbids this way, with 0
    /// (pkg/registry/core/pod/storage/eviction.go, "Cannot evict pod as it would
    /// violate the pod's disruption budget."), so with no `Retry-After`.
    pub fn too_many_requests(message: impl Into<String>, retry_after_secs: u32) -> Self {
        let mut e = Self::new(429, "TooManyRequests", message);
        e.details = Some(if retry_after_secs > 0 {
            json!({"retryAfterSeconds": retry_after_secs})
        } else {
            json!({})
        });
        e
    }
    /// 422 Invalid with one cause per field error, worded as the API server does.
    pub fn invalid_fields(kind: &str, name: &str, errs: &[FieldError]) -> Self {
        let all: Vec<String> = errs.iter().map(FieldError::to_string).collect();
        let summary = match all.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {summary}"),
        );
        let causes: Vec<Value> = errs
            .iter()
            .map(|f| json!({"reason": f.reason, "message": f.body, "field": f.field}))
            .collect();
        e.details = Some(json!({"name": name, "kind": kind, "causes": causes}));
        e
    }
    pub fn invalid(name: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut e = Self::new(
            422,
            "Invalid",
            format!("Pod \"{name}\" is invalid: {message}"),
        );
        e.details = Some(
            json!({"name": name, "kind": "Pod", "causes": [{"reason": "FieldValueInvalid", "message": message}]}),
        );
        e
    }
    /// The `Status` object for this error.
    pub fn status(&self) -> Value {
        status_value(self.code, self.reason, &self.message, self.details.clone())
    }
}

impl IntoResponse for ApiError {
    fn into_response(mut self) -> Response {
        if self.code == 429 && self.details.is_none() {
            // A bare 429 (an injected `FaultAction::Status(429)`) is a handler's
            // `NewTooManyRequests(message, 1)` (k8s.io/apimachinery/pkg/api/errors).
            // API Priority and Fairness answers differently, in plain text: that is
            // `FaultAction::Throttled` (jetbridge-sim-http).
            self = Self::too_many_requests(self.message, 1);
        }
        let retry_after = self
            .details
            .as_ref()
            .and_then(|d| d["retryAfterSeconds"].as_u64())
            .filter(|&s| s > 0);
        let mut resp = json_response(self.code, &self.status());
        // As `responsewriters.ErrorNegotiated` does for every `Status` it writes
        // (k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/writers.go): the
        // header only when `details.retryAfterSeconds` is positive.
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// One field validation error (`field.Error` of the API server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    /// The cause reason, e.g. `FieldValueInvalid`.
    pub reason: &'static str,
    /// The field path, e.g. `metadata.name` or `data[a b]`.
    pub field: String,
    /// What is wrong, e.g. `Invalid value: "x": ...`.
    pub body: String,
}

impl FieldError {
    pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Self {
        FieldError {
            reason: "FieldValueInvalid",
            field: field.into(),
            body: format!("Invalid value: {}: {detail}", Value::from(value)),
        }
    }
    pub fn required(field: impl Into<String>) -> Self {
        FieldError {
            reason: "FieldValueRequired",
            field: field.into(),
            body: "Required value".into(),
        }
    }
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        FieldError {
            reason: "FieldValueForbidden",
            field: field.into(),
            body: format!("Forbidden: {detail}"),
        }
    }
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        FieldError {
            reason: "FieldValueTooLong",
            field: field.into(),
            body: format!("Too long: may not be more than {max} bytes"),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body)
    }
}

/// A failure `Status` object.
pub(crate) fn status_value(
    code: u16,
    reason: &str,
    message: &str,
    details: Option<Value>,
) -> Value {
    let mut v = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        v["details"] = d;
    }
    v
}

/// The conventional reason for an HTTP error code.
pub(crate) fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

/// A JSON response with the given status code.
pub(crate) fn json_response(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

/// Current time as RFC 3339 with second precision, like Kubernetes timestamps.
pub(crate) fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// Format a time as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Parse a raw query string into decoded pairs, keeping order and repeats.
pub(crate) fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(pair), String::new()),
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query parameters with lookup helpers.
#[derive(Debug, Default)]
pub(crate) struct Query(pub Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        Query(raw.map(parse_query).unwrap_or_default())
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1" | "True" | "TRUE"))
    }
}

/// A DNS-1123 subdomain, as required for pod names.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// Why a name is not a DNS-1123 subdomain, in the API server's words (empty
/// when it is one).
pub(crate) fn dns_subdomain_errors(s: &str) -> Vec<&'static str> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push("must be no more than 253 characters");
    }
    let shape_ok = !s.is_empty()
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if !shape_ok {
        errs.push(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        );
    }
    errs
}

/// Why a string is not a valid ConfigMap/Secret key (empty when it is one).
pub(crate) fn config_key_errors(k: &str) -> Vec<&'static str> {
    let mut errs = Vec::new();
    if k.len() > 253 {
        errs.push("must be no more than 253 characters");
    }
    if k.is_empty()
        || !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        errs.push(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
        );
    }
    if k == "." {
        errs.push("must not be '.'");
    } else if k == ".." {
        errs.push("must not be '..'");
    } else if k.starts_with("..") {
        errs.push("must not start with '..'");
    }
    errs
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as Go encodes `[]byte` fields in JSON.
pub(crate) fn b64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn b64_value(c: u8) -> Option<u32> {
    B64.iter().position(|&x| x == c).map(|p| p as u32)
}

/// Decode standard base64 the way Go's `base64.StdEncoding` does when the API
/// server reads a `[]byte` field: padding required, `\r` and `\n` ignored,
/// anything else illegal. The error is the offset of the offending byte.
pub(crate) fn b64_decode(s: &str) -> Result<Vec<u8>, usize> {
    let src = s.as_bytes();
    let skip_newlines = |mut i: usize| {
        while i < src.len() && matches!(src[i], b'\n' | b'\r') {
            i += 1;
        }
        i
    };
    let mut out = Vec::with_capacity(src.len() / 4 * 3);
    let mut si = 0;
    loop {
        let mut quad = [0u32; 4];
        let mut j = 0;
        while j < 4 {
            if si == src.len() {
                return if j == 0 { Ok(out) } else { Err(si - j) };
            }
            let c = src[si];
            si += 1;
            if matches!(c, b'\n' | b'\r') {
                continue;
            }
            if let Some(v) = b64_value(c) {
                quad[j] = v;
                j += 1;
                continue;
            }
            if c != b'=' || j < 2 {
                return Err(si - 1);
            }
            if j == 2 {
                si = skip_newlines(si);
                if si == src.len() {
                    return Err(src.len());
                }
                if src[si] != b'=' {
                    return Err(si - 1);
                }
                si += 1;
            }
            si = skip_newlines(si);
            if si < src.len() {
                return Err(si);
            }
            let n = (quad[0] << 18) | (quad[1] << 12) | (quad[2] << 6);
            out.push((n >> 16) as u8);
            if j == 3 {
                out.push((n >> 8) as u8);
            }
            return Ok(out);
        }
        let n = (quad[0] << 18) | (quad[1] << 12) | (quad[2] << 6) | quad[3];
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_429_carries_retry_after_only_when_positive() {
        let retry_after = |e: ApiError| {
            let r = e.into_response();
            assert_eq!(r.status(), 429);
            assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
            r.headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        // An injected Status(429): NewTooManyRequests(message, 1).
        let bare = ApiError::new(429, "TooManyRequests", "injected fault: 429");
        assert_eq!(retry_after(bare), Some("1".into()));
        let five = ApiError::too_many_requests("slow down", 5);
        assert_eq!(five.status()["details"]["retryAfterSeconds"], 5);
        assert_eq!(retry_after(five), Some("5".into()));
        // The PDB refusal of an eviction: details present, no wait asked for.
        let pdb = ApiError::too_many_requests(
            "Cannot evict pod as it would violate the pod's disruption budget.",
            0,
        );
        assert_eq!(pdb.status()["details"], json!({}));
        assert_eq!(retry_after(pdb), None);
    }

    #[test]
    fn base64_round_trips_and_rejects_like_go() {
        for data in [
            &b""[..],
            b"f",
            b"fo",
            b"foo",
            b"foob",
            b"fooba",
            b"foobar",
            &[0, 255, 128],
        ] {
            let enc = b64_encode(data);
            assert_eq!(b64_decode(&enc).unwrap(), data, "{enc}");
        }
        assert_eq!(b64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64_encode(b"fo"), "Zm8=");
        assert_eq!(b64_decode("Zm9v\nYmFy\r\n").unwrap(), b"foobar");
        // Missing padding, illegal characters and trailing data are errors, with
        // the offset Go reports.
        assert_eq!(b64_decode("Zm8"), Err(0));
        assert_eq!(b64_decode("Zm9v!"), Err(4));
        assert_eq!(b64_decode("Zm8=Zm8="), Err(4));
        assert_eq!(b64_decode("Z==="), Err(1));
        assert_eq!(b64_decode("Zm=x"), Err(2));
    }

    #[test]
    fn config_keys_and_subdomains() {
        assert!(config_key_errors("a-b_c.D9").is_empty());
        assert!(!config_key_errors("a b").is_empty());
        assert!(!config_key_errors("..x").is_empty());
        assert!(!config_key_errors("").is_empty());
        assert!(dns_subdomain_errors("a.b-c").is_empty());
        assert_eq!(dns_subdomain_errors(&"a".repeat(254)).len(), 1);
        assert_eq!(dns_subdomain_errors("Bad_").len(), 1);
    }

    #[test]
    fn formats_epoch_and_leap_day() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400 + 3661);
        assert_eq!(rfc3339(t), "2000-02-29T01:01:01Z");
    }

    #[test]
    fn decodes_queries() {
        let q = Query::parse(Some("command=echo&command=a%20b+c&x=%zz&stdin=true&e"));
        assert_eq!(q.all("command"), vec!["echo", "a b c"]);
        assert_eq!(q.get("x"), Some("%zz"));
        assert!(q.flag("stdin"));
        assert_eq!(q.get("e"), Some(""));
    }

    #[test]
    fn names() {
        assert!(is_dns_subdomain("jb-step.a1"));
        assert!(!is_dns_subdomain("Upper"));
        assert!(!is_dns_subdomain("-x"));
        assert!(!is_dns_subdomain(""));
    }
}
