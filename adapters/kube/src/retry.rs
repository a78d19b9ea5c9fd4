//! The bounded retry loop every API call goes through (what is retried is decided in
//! [`crate::error`]).

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use jetbridge_core::{Error, Result};

use crate::config::RequestBudget;
use crate::error::{Class, classify, to_error};

/// The longest `Retry-After` honoured: a server asking for more is asked again sooner.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The requests one port operation may still send.
#[derive(Debug)]
pub(crate) struct Budget<'a> {
    cfg: &'a RequestBudget,
    used: AtomicU32,
    failures: AtomicU32,
}

impl<'a> Budget<'a> {
    pub(crate) fn new(cfg: &'a RequestBudget) -> Self {
        Budget {
            cfg,
            used: AtomicU32::new(0),
            failures: AtomicU32::new(0),
        }
    }

    /// Take one request from the budget, or fail with a retryable `Transient` error.
    pub(crate) fn take(&self, what: &str) -> Result<()> {
        let used = self.used.fetch_add(1, Ordering::Relaxed);
        if used >= self.cfg.max_requests {
            return Err(Error::transient(format!(
                "{what}: request budget of {} API requests for this operation is spent",
                self.cfg.max_requests
            )));
        }
        Ok(())
    }

    /// Requests taken so far.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn used(&self) -> u32 {
        self.used.load(Ordering::Relaxed)
    }

    /// Sleep before the next retry: exponential from the initial backoff up to the cap,
    /// with up to 25% jitter so that many workers do not retry in lockstep.
    pub(crate) async fn backoff(&self) {
        tokio::time::sleep(self.next_delay(None)).await;
    }

    /// The wait before the next retry after `e`: the exponential backoff, but never less
    /// than what the server asked for, `details.retryAfterSeconds`. API Priority and
    /// Fairness answers a rejected request 429 with only a `Retry-After` header and a
    /// plain-text body (k8s.io/apiserver/pkg/server/filters/priority-and-fairness.go,
    /// `tooManyRequests`); [`crate::requests::RetryAfterLayer`] puts the header's
    /// seconds there, as client-go does. A handler's JSON `Status` carries them itself
    /// (k8s.io/apimachinery/pkg/api/errors `NewTooManyRequests`). Retrying sooner only
    /// spends the budget while the server is still saturated. The server's wish is
    /// capped at [`MAX_RETRY_AFTER`].
    pub(crate) fn next_delay(&self, e: Option<&kube::Error>) -> Duration {
        let asked = e
            .and_then(|e| match e {
                kube::Error::Api(s) => s.details.as_ref().map(|d| d.retry_after_seconds),
                _ => None,
            })
            .map(|secs| Duration::from_secs(u64::from(secs)).min(MAX_RETRY_AFTER))
            .unwrap_or_default();
        self.exponential().max(asked)
    }

    fn exponential(&self) -> Duration {
        let n = self.failures.fetch_add(1, Ordering::Relaxed).min(16);
        let base = self
            .cfg
            .initial_backoff
            .saturating_mul(1u32 << n)
            .min(self.cfg.max_backoff);
        let jitter_range = base.as_millis() as u64 / 4;
        let jitter = if jitter_range == 0 {
            0
        } else {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| u64::from(d.subsec_nanos()))
                .unwrap_or(0);
            nanos % jitter_range
        };
        base + Duration::from_millis(jitter)
    }

    /// Run `call` until it succeeds, fails permanently, or the budget is spent.
    /// `resend_after_send` says whether a request that may have reached the server may be
    /// sent again (idempotent calls); otherwise only failures that prove nothing was done
    /// are retried.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        what: &str,
        resend_after_send: bool,
        mut call: F,
    ) -> std::result::Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, kube::Error>>,
    {
        loop {
            self.take(what).map_err(CallError::Budget)?;
            match call().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let retry = match classify(&e) {
                        Class::NotSent => true,
                        Class::Transient => resend_after_send,
                        Class::Permanent(_) => false,
                    };
                    if !retry {
                        return Err(CallError::Kube(e));
                    }
                    tracing::debug!(operation = what, error = %e, "transient API failure; retrying");
                    if self.used.load(Ordering::Relaxed) >= self.cfg.max_requests {
                        return Err(CallError::Kube(e));
                    }
                    tokio::time::sleep(self.next_delay(Some(&e))).await;
                }
            }
        }
    }
}

/// Why [`Budget::run`] gave up.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The last API error.
    Kube(kube::Error),
    /// The budget was spent before a request could be sent.
    Budget(Error),
}

impl CallError {
    /// The domain error, with `what` as context.
    pub(crate) fn into_error(self, what: &str) -> Error {
        match self {
            CallError::Kube(e) => to_error(e, what),
            CallError::Budget(e) => e,
        }
    }

    /// The kube error, if the failure was one.
    pub(crate) fn kube(&self) -> Option<&kube::Error> {
        match self {
            CallError::Kube(e) => Some(e),
            CallError::Budget(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::*;
    use jetbridge_core::ErrorKind;
    use kube::core::Status;

    fn api(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Status::failure("m", reason).with_code(code).boxed())
    }

    fn fast(max: u32) -> RequestBudget {
        RequestBudget {
            max_requests: max,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
        }
    }

    #[test]
    fn retry_after_is_a_floor_on_the_wait_and_capped() {
        let cfg = fast(8);
        let b = Budget::new(&cfg);
        let throttled = |secs: u32| {
            let mut st = Status::failure(
                "Too many requests, please try again later.",
                "TooManyRequests",
            )
            .with_code(429);
            st.details = Some(
                serde_json::from_value(serde_json::json!({"retryAfterSeconds": secs}))
                    .expect("StatusDetails"),
            );
            kube::Error::Api(st.boxed())
        };
        assert_eq!(b.next_delay(Some(&throttled(2))), Duration::from_secs(2));
        assert_eq!(b.next_delay(Some(&throttled(3600))), MAX_RETRY_AFTER);
        // Without the server's wish, the (here tiny) exponential backoff.
        assert!(b.next_delay(Some(&api(503, "x"))) < Duration::from_millis(10));
        assert!(b.next_delay(None) < Duration::from_millis(10));
    }

    #[test]
    fn kinds_of_api_errors() {
        for code in [429, 500, 502, 503, 504] {
            assert_eq!(classify(&api(code, "x")), Class::NotSent, "{code}");
            assert_eq!(to_error(api(code, "x"), "op").kind(), ErrorKind::Transient);
            assert!(to_error(api(code, "x"), "op").is_retryable());
        }
        let kind = |code, reason| to_error(api(code, reason), "op").kind();
        assert_eq!(kind(404, "NotFound"), ErrorKind::NotFound);
        assert_eq!(kind(409, "AlreadyExists"), ErrorKind::AlreadyExists);
        assert_eq!(kind(409, "Conflict"), ErrorKind::Conflict);
        assert_eq!(kind(400, "BadRequest"), ErrorKind::Invalid);
        assert_eq!(kind(422, "Invalid"), ErrorKind::Invalid);
        assert_eq!(kind(403, "Forbidden"), ErrorKind::PermissionDenied);
        assert!(!to_error(api(403, "Forbidden"), "op").is_retryable());
        let refused = kube::Error::Service(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(classify(&refused), Class::NotSent);
        let reset = kube::Error::Service(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(classify(&reset), Class::Transient);
    }

    fn forbidden(message: &str) -> kube::Error {
        kube::Error::Api(Status::failure(message, "Forbidden").with_code(403).boxed())
    }

    #[test]
    fn an_rbac_denial_names_the_missing_permission() {
        let e = to_error(
            forbidden(
                "pods \"p\" is forbidden: User \"system:serviceaccount:ci:jb\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"ci\"",
            ),
            "exec in pod p",
        );
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(!e.is_retryable());
        assert!(
            e.message()
                .contains("lacks `create pods/exec in namespace ci`"),
            "{e}"
        );
        let e = to_error(
            forbidden(
                "pods \"p\" is forbidden: User \"u\" cannot create resource \"pods/eviction\" in API group \"policy\" in the namespace \"ci\"",
            ),
            "op",
        );
        assert!(
            e.message()
                .contains("`create pods/eviction (API group policy) in namespace ci`"),
            "{e}"
        );
    }

    #[test]
    fn admission_rejections_keep_the_api_message() {
        let quota = to_error(
            forbidden(
                "pods \"p\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2",
            ),
            "creating pod p",
        );
        assert_eq!(quota.kind(), ErrorKind::PermissionDenied);
        assert!(quota.message().contains("exceeded quota: q"), "{quota}");
        let pss = to_error(
            forbidden(
                "pods \"p\" is forbidden: violates PodSecurity \"restricted:latest\": privileged (container \"main\" must not set securityContext.privileged=true)",
            ),
            "creating pod p",
        );
        assert_eq!(pss.kind(), ErrorKind::Invalid);
        assert!(pss.message().contains("violates PodSecurity"), "{pss}");
        let sa = to_error(
            forbidden(
                "pods \"p\" is forbidden: error looking up service account ci/builder: serviceaccount \"builder\" not found",
            ),
            "creating pod p",
        );
        assert_eq!(sa.kind(), ErrorKind::Invalid);
    }

    #[tokio::test]
    async fn retries_transient_failures_then_succeeds() {
        let cfg = fast(5);
        let b = Budget::new(&cfg);
        let mut calls = 0;
        let r = b
            .run("op", true, || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 3 {
                        Err(api(503, "ServiceUnavailable"))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!(r.unwrap(), 3);
        assert_eq!(b.used(), 3);
    }

    #[tokio::test]
    async fn the_budget_bounds_retries() {
        let cfg = fast(4);
        let b = Budget::new(&cfg);
        let mut calls = 0;
        let r: std::result::Result<(), _> = b
            .run("op", true, || {
                calls += 1;
                async { Err(api(500, "InternalError")) }
            })
            .await;
        let e = r.unwrap_err().into_error("op");
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert_eq!(calls, 4);
        // Spent: the next request is refused without being sent.
        assert_eq!(b.take("op").unwrap_err().kind(), ErrorKind::Transient);
    }

    #[tokio::test]
    async fn permanent_and_unsafe_failures_are_not_retried() {
        let cfg = fast(5);
        let b = Budget::new(&cfg);
        let mut calls = 0;
        let r: std::result::Result<(), _> = b
            .run("op", true, || {
                calls += 1;
                async { Err(api(404, "NotFound")) }
            })
            .await;
        assert_eq!(r.unwrap_err().into_error("op").kind(), ErrorKind::NotFound);
        assert_eq!(calls, 1);
        // A reset connection may have delivered the request: not resent unless allowed.
        let b = Budget::new(&cfg);
        let mut calls = 0;
        let r: std::result::Result<(), _> = b
            .run("op", false, || {
                calls += 1;
                async {
                    Err(kube::Error::Service(Box::new(std::io::Error::from(
                        std::io::ErrorKind::ConnectionReset,
                    ))))
                }
            })
            .await;
        assert_eq!(r.unwrap_err().into_error("op").kind(), ErrorKind::Transient);
        assert_eq!(calls, 1);
    }
}
