//! Injected faults: what one does to a matched request, and applying it. Which
//! requests a fault matches is each simulator's own business.

use crate::server::ConnHandle;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
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
