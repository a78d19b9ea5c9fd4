//! The listener: plain HTTP/1.1, every connection killable (for dropped-connection
//! faults and restarts).

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Put into every request's extensions so a fault can drop the connection.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    /// Cancelling it ends the connection at once, without a response.
    pub kill: CancellationToken,
}

/// Bind 127.0.0.1:port with SO_REUSEADDR, so a stopped or restarted simulator's
/// port can be taken again at once.
pub fn bind(port: u16) -> std::io::Result<TcpListener> {
    let sock = TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    sock.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    sock.listen(1024)
}

/// Serve `router` on `listener` until `token` is cancelled; cancelling also ends
/// every connection accepted under it. Each request carries a [`ConnHandle`]
/// whose `kill` is a child of `token`. With `upgrades`, connections may be
/// upgraded (WebSocket).
pub fn serve(
    router: Router,
    listener: TcpListener,
    token: CancellationToken,
    upgrades: bool,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                },
                () = token.cancelled() => break,
            };
            let _ = stream.set_nodelay(true);
            let conn = ConnHandle {
                kill: token.child_token(),
            };
            let svc = TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                let handle = conn.clone();
                let service =
                    hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                        req.extensions_mut().insert(handle.clone());
                        hyper::service::Service::call(&svc, req)
                    });
                let http = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                // The two futures differ in type, hence two selects.
                if upgrades {
                    tokio::select! {
                        _ = http.with_upgrades() => {}
                        () = conn.kill.cancelled() => {}
                    }
                } else {
                    tokio::select! {
                        _ = http => {}
                        () = conn.kill.cancelled() => {}
                    }
                }
            });
        }
    })
}
