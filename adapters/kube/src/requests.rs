//! Every request this adapter sends to the API server, counted by verb and status code
//! (for the server's metrics), by a layer under kube's client.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::future::BoxFuture;

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

#[cfg(test)]
mod tests {
    use super::*;

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
