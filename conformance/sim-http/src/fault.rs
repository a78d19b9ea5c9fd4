//! Injected faults: what one does to a matched request, and applying it. Which
//! requests a fault matches is each simulator's own business.

use crate::server::ConnHandle;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// What an injected fault does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// Answer with this status code and the simulator's own error body for it
    /// (see the simulator's docs). The request is not performed.
    Status(u16),
    /// Close the TCP connection without a response; the request is not performed
    /// (its body may be partly sent).
    DropConnection,
    /// Perform the request (e.g. create the pod, complete the upload), then close
    /// the connection before responding.
    DropAfterCommit,
    /// Wait, then handle the request normally.
    Delay(Duration),
    /// Refuse the request as Kubernetes API Priority and Fairness refuses one it has
    /// no seat or queue room for: 429, `Retry-After: N` and a plain-text body, not a
    /// `Status` (k8s.io/apiserver/pkg/server/filters/priority-and-fairness.go,
    /// `tooManyRequests`, which calls Go's `http.Error`; see [`throttled`]). The
    /// request is not performed. The simulator's own error format is not used: this
    /// answer comes from a filter in front of every handler.
    Throttled {
        /// The `Retry-After` seconds. APF starts each priority level at 1 and doubles
        /// it, up to 32, while the level keeps dropping requests
        /// (k8s.io/apiserver/pkg/util/flowcontrol/dropped_requests_tracker.go).
        retry_after_secs: u32,
    },
}

/// The body APF's `tooManyRequests` writes: Go's `http.Error` ends it with a newline.
pub const THROTTLED_BODY: &str = "Too many requests, please try again later.\n";

/// The answer of [`FaultAction::Throttled`], as Go's `http.Error` writes it for APF:
/// `Content-Type: text/plain; charset=utf-8`, `X-Content-Type-Options: nosniff`, the
/// `Retry-After` header set just before, and [`THROTTLED_BODY`]. APF also sends the
/// UIDs of the FlowSchema and priority level it matched
/// (`X-Kubernetes-PF-FlowSchema-UID`, `X-Kubernetes-PF-PriorityLevel-UID`); a
/// simulator has none, and clients only log them.
pub fn throttled(retry_after_secs: u32) -> Response {
    let mut resp = (StatusCode::TOO_MANY_REQUESTS, THROTTLED_BODY).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    resp
}

/// An answer [`apply`] asks the simulator to build in its own error format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultReply {
    /// [`FaultAction::Status`] with this code.
    Status(u16),
    /// The connection was to be dropped but the request carries no
    /// [`ConnHandle`] (it was not served by [`crate::serve`]): answer a 500.
    CannotDrop,
}

/// Handle `req` as `action` says (`None`: normally, through `next`). `reply`
/// builds the simulator's error responses.
pub async fn apply<F>(action: Option<FaultAction>, req: Request, next: Next, reply: F) -> Response
where
    F: FnOnce(FaultReply) -> Response + Send,
{
    let conn = req.extensions().get::<ConnHandle>().cloned();
    match action {
        None => next.run(req).await,
        Some(FaultAction::Status(code)) => reply(FaultReply::Status(code)),
        Some(FaultAction::Throttled { retry_after_secs }) => throttled(retry_after_secs),
        Some(FaultAction::Delay(d)) => {
            tokio::time::sleep(d).await;
            next.run(req).await
        }
        Some(FaultAction::DropConnection) => drop_connection(conn, reply).await,
        Some(FaultAction::DropAfterCommit) => {
            let resp = next.run(req).await;
            drop(resp);
            drop_connection(conn, reply).await
        }
    }
}

async fn drop_connection<F>(conn: Option<ConnHandle>, reply: F) -> Response
where
    F: FnOnce(FaultReply) -> Response,
{
    match conn {
        Some(c) => {
            c.kill.cancel();
            // The connection task drops the socket; this response is never sent.
            std::future::pending::<Response>().await
        }
        None => reply(FaultReply::CannotDrop),
    }
}
