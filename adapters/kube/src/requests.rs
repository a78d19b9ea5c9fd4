//! The layers under kube's client: every request this adapter sends to the API server,
//! counted by verb and status code (for the server's metrics), and a server's
//! `Retry-After` carried into the error the retry loop reads ([`RetryAfterLayer`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Body;

/// Requests sent, by (verb, status code); code 0: no answer (a transport error).
#[derive(Debug, Clone, Default)]
pub struct RequestCounts(Arc<Mutex<BTreeMap<(&'static str, u16), u64>>>);

impl RequestCounts {
    /// Every (verb, code, count) so far.
    pub fn snapshot(&self) -> Vec<(&'static str, u16, u64)> {
        self.0
            .lock()
            .map(|m| m.iter().map(|(&(v, c), &n)| (v, c, n)).collect())
            .unwrap_or_default()
    }

    fn add(&self, verb: &'static str, code: u16) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry((verb, code)).or_default() += 1;
        }
    }
}

/// The Kubernetes verb of a request, from its method and path.
pub(crate) fn verb_of(method: &http::Method, uri: &http::Uri) -> &'static str {
    let path = uri.path();
    let query = uri.query().unwrap_or("");
    let collection =
        path.ends_with("/pods") || path.ends_with("/secrets") || path.ends_with("/events");
    if path.ends_with("/exec") || path.ends_with("/attach") {
        return "exec";
    }
    match *method {
        http::Method::GET
            if query
                .split('&')
                .any(|p| p == "watch=true" || p == "watch=1") =>
        {
            "watch"
        }
        http::Method::GET if collection => "list",
        http::Method::GET => "get",
        http::Method::POST if path.ends_with("/eviction") => "evict",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE if collection => "deletecollection",
        http::Method::DELETE => "delete",
        _ => "other",
    }
}

/// The layer that counts into [`RequestCounts`].
#[derive(Debug, Clone)]
pub(crate) struct CountLayer(pub(crate) RequestCounts);

impl<S> tower::Layer<S> for CountLayer {
    type Service = Counting<S>;
    fn layer(&self, inner: S) -> Counting<S> {
        Counting {
            inner,
            counts: self.0.clone(),
        }
    }
}

/// A service that counts each request once its answer (or failure) is known.
#[derive(Debug, Clone)]
pub(crate) struct Counting<S> {
    inner: S,
    counts: RequestCounts,
}

impl<S, B, R> tower::Service<http::Request<B>> for Counting<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let verb = verb_of(req.method(), req.uri());
        let counts = self.counts.clone();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let r = answer.await;
            counts.add(verb, r.as_ref().map_or(0, |res| res.status().as_u16()));
            r
        })
    }
}

/// A kube client on `config` with this adapter's layers under it, and the counts its
/// [`CountLayer`] keeps. [`KubeBackend::new`](crate::KubeBackend::new) builds its
/// client so; a caller of [`KubeBackend::from_client`](crate::KubeBackend::from_client)
/// should too, or a server's `Retry-After` outside a JSON `Status` is lost (see
/// [`RetryAfterLayer`]). `config.default_retry` is left as given.
pub fn build_client(config: kube::Config) -> kube::Result<(kube::Client, RequestCounts)> {
    let counts = RequestCounts::default();
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&CountLayer(counts.clone()))
        .with_layer(&RetryAfterLayer)
        .build();
    Ok((client, counts))
}

/// The most of an error body [`RetryAfterLayer`] reads to rewrite it; APF's is 43
/// bytes; a longer one (an HTML page from a proxy) is not kept as the message.
const MAX_ERROR_BODY: usize = 4096;

/// Makes a `Retry-After` header reach [`crate::retry`], which only sees what kube-rs
/// makes of a response: `kube::Error::Api` with the `Status` parsed from the body, and
/// no headers. API Priority and Fairness refuses a request with 429, `Retry-After: N` and
/// a plain-text body (k8s.io/apiserver/pkg/server/filters/priority-and-fairness.go,
/// `tooManyRequests`), of which kube-rs keeps only the text and code. So, on a 429 or
/// any 5xx with `Retry-After` in whole seconds, this rewrites the body into the
/// `Status` client-go would have built from the same response (k8s.io/client-go/rest
/// request.go `transformUnstructuredResponseError`, then
/// k8s.io/apimachinery/pkg/api/errors `NewGenericServerResponse`: the code's reason and
/// message, the text as an `UnexpectedServerResponse` cause, `details.retryAfterSeconds`
/// from the header), or, for a JSON
/// `Status` without `details.retryAfterSeconds`, adds it. The codes and the
/// seconds-only form are client-go's `checkWait` and `retryAfterSeconds`
/// (k8s.io/client-go/rest/with_retry.go): an HTTP-date is ignored there too. Every
/// other response passes untouched, upgrades (exec) included.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryAfterLayer;

impl<S> tower::Layer<S> for RetryAfterLayer {
    type Service = RetryAfter<S>;
    fn layer(&self, inner: S) -> RetryAfter<S> {
        RetryAfter { inner }
    }
}

/// The service of [`RetryAfterLayer`].
#[derive(Debug, Clone)]
pub(crate) struct RetryAfter<S> {
    inner: S,
}

/// The wait a response asks for, as client-go reads it: a 429 or 5xx with a
/// `Retry-After` of whole seconds.
pub(crate) fn retry_after_secs(status: http::StatusCode, headers: &http::HeaderMap) -> Option<u32> {
    if status != http::StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
        return None;
    }
    headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The reason and message `NewGenericServerResponse` gives a code this layer rewrites
/// for (k8s.io/apimachinery/pkg/api/errors/errors.go); the server's own text goes
/// into an `UnexpectedServerResponse` cause.
fn generic_reason_and_message(code: u16, server_message: &str) -> (&'static str, String) {
    match code {
        429 => (
            "TooManyRequests",
            "the server has received too many requests and has asked us to try again later"
                .into(),
        ),
        503 => (
            "ServiceUnavailable",
            "the server is currently unable to handle the request".into(),
        ),
        504 => (
            "Timeout",
            "the server was unable to return a response in the time allotted, but may still be processing the request".into(),
        ),
        _ => (
            "InternalError",
            format!(
                "an error on the server ({}) has prevented the request from succeeding",
                serde_json::Value::from(server_message)
            ),
        ),
    }
}

/// The `Status` body kube-rs should see for an error answered with `body` and a wait
/// of `secs`: `body` itself when it is a `Status` that already names a wait.
pub(crate) fn status_with_retry_after(code: u16, body: &[u8], secs: u32) -> Vec<u8> {
    if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body)
        && v["kind"] == "Status"
    {
        if v["details"]["retryAfterSeconds"].as_u64().unwrap_or(0) == 0 {
            if !v["details"].is_object() {
                v["details"] = serde_json::json!({});
            }
            v["details"]["retryAfterSeconds"] = secs.into();
        }
        return serde_json::to_vec(&v).unwrap_or_else(|_| body.to_vec());
    }
    // client-go keeps a text body, trimmed, as the server's message
    // (k8s.io/client-go/rest/request.go `transformUnstructuredResponseError`).
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let (reason, message) = generic_reason_and_message(code, text);
    let status = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
        "details": {
            "causes": [{"reason": "UnexpectedServerResponse", "message": text}],
            "retryAfterSeconds": secs,
        },
    });
    serde_json::to_vec(&status).unwrap_or_default()
}

impl<S, B, R> tower::Service<http::Request<B>> for RetryAfter<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Body<Data = Bytes> + Send + 'static,
    R::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<Either<R, Full<Bytes>>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let answer = self.inner.call(req);
        Box::pin(async move {
            let res = answer.await?;
            let Some(secs) = retry_after_secs(res.status(), res.headers()) else {
                return Ok(res.map(Either::Left));
            };
            let (mut parts, body) = res.into_parts();
            // A body that cannot be read is answered as an empty one: the code and the
            // wait are what matter.
            let read = Limited::new(body, MAX_ERROR_BODY)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let rewritten = status_with_retry_after(parts.status.as_u16(), &read, secs);
            parts.headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            parts.headers.remove(http::header::CONTENT_LENGTH);
            Ok(http::Response::from_parts(
                parts,
                Either::Right(Full::new(Bytes::from(rewritten))),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn headers(retry_after: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, retry_after.parse().unwrap());
        h
    }

    #[test]
    fn retry_after_is_read_as_client_go_reads_it() {
        let code = |c| http::StatusCode::from_u16(c).unwrap();
        assert_eq!(retry_after_secs(code(429), &headers("3")), Some(3));
        assert_eq!(retry_after_secs(code(503), &headers("2")), Some(2));
        assert_eq!(retry_after_secs(code(500), &headers("1")), Some(1));
        // Only 429 and 5xx ask for a wait.
        assert_eq!(retry_after_secs(code(404), &headers("3")), None);
        assert_eq!(retry_after_secs(code(200), &headers("3")), None);
        // Whole seconds only: an HTTP-date or a negative count is ignored.
        let date = headers("Wed, 21 Oct 2015 07:28:00 GMT");
        assert_eq!(retry_after_secs(code(429), &date), None);
        assert_eq!(retry_after_secs(code(429), &headers("-1")), None);
        assert_eq!(retry_after_secs(code(429), &headers("1.5")), None);
        assert_eq!(retry_after_secs(code(429), &http::HeaderMap::new()), None);
    }

    fn status(code: u16, body: &[u8], secs: u32) -> Status {
        serde_json::from_slice(&status_with_retry_after(code, body, secs)).expect("a Status")
    }

    #[test]
    fn a_plain_text_refusal_becomes_a_status_with_the_wait() {
        // API Priority and Fairness's answer, as Go's http.Error writes it.
        let s = status(429, b"Too many requests, please try again later.\n", 4);
        assert_eq!(s.code, 429);
        assert_eq!(s.reason, "TooManyRequests");
        assert!(s.is_failure());
        let d = s.details.expect("details");
        assert_eq!(d.retry_after_seconds, 4);
        assert_eq!(d.causes[0].reason, "UnexpectedServerResponse");
        assert_eq!(
            d.causes[0].message,
            "Too many requests, please try again later."
        );
        let s = status(503, b"", 2);
        assert_eq!(
            (s.reason.as_str(), s.details.unwrap().retry_after_seconds),
            ("ServiceUnavailable", 2)
        );
        // The kubelet's words stay in the message of a 500 (see error.rs).
        let s = status(500, br#"container not found ("main")"#, 1);
        assert!(
            crate::error::container_not_found(&s.message),
            "{}",
            s.message
        );
    }

    #[test]
    fn a_json_status_keeps_its_own_wait_or_takes_the_header() {
        let own = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"m","reason":"TooManyRequests","code":429,"details":{"retryAfterSeconds":5}}"#;
        let s = status(429, own, 1);
        assert_eq!(s.message, "m");
        assert_eq!(s.details.unwrap().retry_after_seconds, 5);
        let bare = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"m","reason":"ServiceUnavailable","code":503}"#;
        let s = status(503, bare, 3);
        assert_eq!(s.reason, "ServiceUnavailable");
        assert_eq!(s.details.unwrap().retry_after_seconds, 3);
    }

    /// A service answering every request with `res`.
    #[derive(Clone)]
    struct Answer(u16, Vec<(&'static str, &'static str)>, &'static str);

    impl tower::Service<http::Request<()>> for Answer {
        type Response = http::Response<Full<Bytes>>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let mut b = http::Response::builder().status(self.0);
            for (k, v) in &self.1 {
                b = b.header(*k, *v);
            }
            std::future::ready(Ok(b.body(Full::new(Bytes::from(self.2))).unwrap()))
        }
    }

    async fn through_layer(a: Answer) -> (http::response::Parts, Bytes) {
        use tower::{Layer, Service};
        let mut svc = RetryAfterLayer.layer(a);
        let res = svc.call(http::Request::new(())).await.unwrap();
        let (parts, body) = res.into_parts();
        (parts, body.collect().await.unwrap().to_bytes())
    }

    #[tokio::test]
    async fn the_layer_rewrites_only_answers_that_ask_for_a_wait() {
        let apf = Answer(
            429,
            vec![
                ("content-type", "text/plain; charset=utf-8"),
                ("x-content-type-options", "nosniff"),
                ("retry-after", "2"),
            ],
            "Too many requests, please try again later.\n",
        );
        let (parts, body) = through_layer(apf).await;
        assert_eq!(parts.status, 429);
        assert_eq!(parts.headers["content-type"], "application/json");
        assert_eq!(parts.headers["retry-after"], "2");
        let s: Status = serde_json::from_slice(&body).unwrap();
        assert_eq!(s.details.unwrap().retry_after_seconds, 2);
        // No Retry-After, or not an error that may ask for one: byte for byte.
        for a in [
            Answer(429, vec![("content-type", "text/plain")], "slow down\n"),
            Answer(404, vec![("retry-after", "2")], "gone"),
            Answer(200, vec![("retry-after", "2")], "{}"),
        ] {
            let want = a.2;
            let (_, body) = through_layer(a).await;
            assert_eq!(body, want.as_bytes());
        }
    }

    #[test]
    fn verbs_follow_kubernetes_names() {
        let v = |m: http::Method, u: &str| verb_of(&m, &u.parse().unwrap());
        let ns = "/api/v1/namespaces/ci";
        assert_eq!(
            v(http::Method::GET, &format!("{ns}/pods?labelSelector=a")),
            "list"
        );
        assert_eq!(
            v(http::Method::GET, &format!("{ns}/pods?watch=true&x=1")),
            "watch"
        );
        assert_eq!(v(http::Method::GET, &format!("{ns}/pods/p1")), "get");
        assert_eq!(v(http::Method::POST, &format!("{ns}/pods")), "create");
        assert_eq!(v(http::Method::DELETE, &format!("{ns}/pods/p1")), "delete");
        assert_eq!(
            v(http::Method::GET, &format!("{ns}/pods/p1/exec?command=sh")),
            "exec"
        );
        assert_eq!(
            v(http::Method::POST, &format!("{ns}/pods/p1/eviction")),
            "evict"
        );
        assert_eq!(v(http::Method::PATCH, &format!("{ns}/secrets/s")), "patch");
    }
}
