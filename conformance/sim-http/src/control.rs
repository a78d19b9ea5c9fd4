//! What a test steers and reads on a simulator: the injected faults, checked in the
//! order they were added, and the log of requests. One type and one trait serve both
//! simulators, so `inject`, `clear_faults`, `requests` and `reset_requests` mean the
//! same on each.

use std::sync::{Mutex, MutexGuard};

use crate::FaultAction;

/// A per-request fault: applies to the next `times` requests that match.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Only requests with this method (case-insensitive); any when `None`.
    pub method: Option<String>,
    /// Only requests whose path contains this, as sent or percent-decoded (so
    /// object names can be given as they are stored); any when `None`.
    pub path_contains: Option<String>,
    /// Only requests whose query string contains this, as sent or decoded
    /// (e.g. `watch=true`, `partNumber=2`); any when `None`.
    pub query_contains: Option<String>,
    /// How many matching requests the fault applies to.
    pub times: usize,
    /// What happens to them.
    pub action: FaultAction,
}

impl Fault {
    /// A fault on any request.
    pub fn any(times: usize, action: FaultAction) -> Self {
        Fault {
            method: None,
            path_contains: None,
            query_contains: None,
            times,
            action,
        }
    }

    /// A fault on requests with `method` whose path contains `path_contains`.
    pub fn on(method: &str, path_contains: &str, times: usize, action: FaultAction) -> Self {
        Fault {
            method: Some(method.to_string()),
            path_contains: Some(path_contains.to_string()),
            query_contains: None,
            times,
            action,
        }
    }

    /// Also require the query string to contain `q`.
    pub fn with_query(mut self, q: &str) -> Self {
        self.query_contains = Some(q.to_string());
        self
    }

    fn matches(&self, req: &RequestLine<'_>) -> bool {
        let has = |hay: &str, alt: Option<&str>, needle: &str| {
            hay.contains(needle) || alt.is_some_and(|a| a.contains(needle))
        };
        self.times > 0
            && self
                .method
                .as_ref()
                .is_none_or(|m| m.eq_ignore_ascii_case(req.method))
            && self
                .path_contains
                .as_ref()
                .is_none_or(|p| has(req.path, req.decoded_path, p))
            && self
                .query_contains
                .as_ref()
                .is_none_or(|q| has(req.query, req.decoded_query, q))
    }
}

/// A request as faults see it. The decoded forms are optional: a simulator whose
/// names are never percent-encoded leaves them out.
#[derive(Debug, Clone, Copy)]
pub struct RequestLine<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Path as sent.
    pub path: &'a str,
    /// Path percent-decoded.
    pub decoded_path: Option<&'a str>,
    /// Query string as sent (empty when none).
    pub query: &'a str,
    /// Query string decoded.
    pub decoded_query: Option<&'a str>,
}

/// A simulator's faults and request log. `R` is its request record.
#[derive(Debug)]
pub struct Controls<R> {
    faults: Mutex<Vec<Fault>>,
    requests: Mutex<Vec<R>>,
}

impl<R> Default for Controls<R> {
    fn default() -> Self {
        Controls {
            faults: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
        }
    }
}

/// A test that panicked while holding a lock leaves whole values behind (every update
/// is one push, one remove or one decrement), so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<R: Clone> Controls<R> {
    /// For a request about to be served: the action of the first pending fault that
    /// matches it, used up by one, and the request recorded as `record`.
    pub fn on_request(&self, line: &RequestLine<'_>, record: R) -> Option<FaultAction> {
        let action = {
            let mut faults = lock(&self.faults);
            faults.iter().position(|f| f.matches(line)).map(|i| {
                faults[i].times -= 1;
                let action = faults[i].action.clone();
                if faults[i].times == 0 {
                    faults.remove(i);
                }
                action
            })
        };
        lock(&self.requests).push(record);
        action
    }
}

/// The test-facing controls every simulator has. Bring it into scope
/// (`use jetbridge_kube_sim::SimControls;`) to call them.
pub trait SimControls {
    /// The simulator's request record.
    type Request: Clone;

    /// Its controls.
    fn controls(&self) -> &Controls<Self::Request>;

    /// Add a per-request fault. Faults are checked in the order they were added.
    fn inject(&self, fault: Fault) {
        lock(&self.controls().faults).push(fault);
    }

    /// Remove every pending fault.
    fn clear_faults(&self) {
        lock(&self.controls().faults).clear();
    }

    /// Every request since start or the last [`SimControls::reset_requests`].
    fn requests(&self) -> Vec<Self::Request> {
        lock(&self.controls().requests).clone()
    }

    /// Forget recorded requests.
    fn reset_requests(&self) {
        lock(&self.controls().requests).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(method: &'a str, path: &'a str, query: &'a str) -> RequestLine<'a> {
        RequestLine {
            method,
            path,
            decoded_path: None,
            query,
            decoded_query: None,
        }
    }

    #[test]
    fn a_fault_applies_to_its_matches_in_order_then_is_gone() {
        let c: Controls<&str> = Controls::default();
        {
            let mut f = lock(&c.faults);
            f.push(Fault::on("post", "/pods", 2, FaultAction::Status(500)));
            f.push(Fault::any(1, FaultAction::DropConnection));
        }
        let get = line("GET", "/api/v1/pods", "");
        let post = line("POST", "/api/v1/namespaces/n/pods", "");
        assert_eq!(c.on_request(&get, "g1"), Some(FaultAction::DropConnection));
        assert_eq!(c.on_request(&get, "g2"), None);
        assert_eq!(c.on_request(&post, "p1"), Some(FaultAction::Status(500)));
        assert_eq!(c.on_request(&post, "p2"), Some(FaultAction::Status(500)));
        assert_eq!(c.on_request(&post, "p3"), None);
        assert_eq!(*lock(&c.requests), ["g1", "g2", "p1", "p2", "p3"]);
    }

    #[test]
    fn query_and_decoded_forms_match() {
        let c: Controls<()> = Controls::default();
        lock(&c.faults)
            .push(Fault::on("PUT", "a/b", 1, FaultAction::Status(503)).with_query("partNumber=2"));
        let mut l = line("PUT", "/bucket/a%2Fb", "partNumber=1&uploadId=x");
        l.decoded_path = Some("/bucket/a/b");
        assert_eq!(c.on_request(&l, ()), None, "another part");
        l.query = "partNumber=2&uploadId=x";
        assert_eq!(c.on_request(&l, ()), Some(FaultAction::Status(503)));
    }
}
