//! The listener and fault actions over real connections.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use jetbridge_sim_http::{FaultAction, FaultReply, apply, bind, serve};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Sim {
    /// The action applied to the next request.
    next: Mutex<Option<FaultAction>>,
    /// How many requests reached the handler.
    handled: AtomicUsize,
}

fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route(
            "/",
            get(|State(s): State<Arc<Sim>>| async move {
                s.handled.fetch_add(1, Ordering::SeqCst);
                "ok"
            }),
        )
        .layer(middleware::from_fn_with_state(sim.clone(), faults))
        .with_state(sim)
}

async fn faults(State(s): State<Arc<Sim>>, req: Request, next: Next) -> Response {
    let action = s.next.lock().unwrap().take();
    apply(action, req, next, |r| match r {
        FaultReply::Status(code) => (
            StatusCode::from_u16(code).unwrap(),
            format!("injected {code}"),
        )
            .into_response(),
        FaultReply::CannotDrop => {
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot drop").into_response()
        }
    })
    .await
}

/// Send one GET / and read until the server closes: the raw response, empty when
/// the connection was dropped without one.
async fn get_root(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    // A reset counts as a close.
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the server neither answered nor closed");
    String::from_utf8_lossy(&out).into_owned()
}

async fn start() -> (
    Arc<Sim>,
    u16,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let sim = Arc::new(Sim::default());
    let listener = bind(0).unwrap();
    let port = listener.local_addr().unwrap().port();
    let token = CancellationToken::new();
    let task = serve(router(sim.clone()), listener, token.clone(), false);
    (sim, port, token, task)
}

fn set(sim: &Sim, a: FaultAction) {
    *sim.next.lock().unwrap() = Some(a);
}

#[tokio::test]
async fn actions_do_what_they_say() {
    let (sim, port, token, task) = start().await;

    assert!(get_root(port).await.starts_with("HTTP/1.1 200"));
    assert_eq!(sim.handled.load(Ordering::SeqCst), 1);

    set(&sim, FaultAction::Status(503));
    let r = get_root(port).await;
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(r.ends_with("injected 503"), "{r}");
    assert_eq!(sim.handled.load(Ordering::SeqCst), 1, "not performed");

    set(&sim, FaultAction::DropConnection);
    assert_eq!(get_root(port).await, "");
    assert_eq!(sim.handled.load(Ordering::SeqCst), 1, "not performed");

    set(&sim, FaultAction::DropAfterCommit);
    assert_eq!(get_root(port).await, "");
    assert_eq!(sim.handled.load(Ordering::SeqCst), 2, "performed");

    set(&sim, FaultAction::Delay(Duration::from_millis(300)));
    let t0 = Instant::now();
    assert!(get_root(port).await.starts_with("HTTP/1.1 200"));
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(sim.handled.load(Ordering::SeqCst), 3);

    // Other connections are untouched by a dropped one.
    assert!(get_root(port).await.starts_with("HTTP/1.1 200"));

    token.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn cancelling_ends_listener_and_connections_and_the_port_is_reusable() {
    let (sim, port, token, task) = start().await;
    // An idle keep-alive connection, open when the token is cancelled.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    token.cancel();
    task.await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("the connection outlived its token")
        .unwrap_or(0);
    assert_eq!(n, 0);

    // The same port at once, as a restart does.
    let token = CancellationToken::new();
    let task = serve(router(sim), bind(port).unwrap(), token.clone(), true);
    assert!(get_root(port).await.starts_with("HTTP/1.1 200"));
    token.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_connection_served_elsewhere_cannot_be_dropped() {
    // Served without `serve`, so requests carry no ConnHandle.
    let sim = Arc::new(Sim::default());
    set(&sim, FaultAction::DropConnection);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let svc = TowerToHyperService::new(router(sim.clone()));
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(s), svc)
            .await;
    });
    let r = get_root(port).await;
    assert!(r.starts_with("HTTP/1.1 500"), "{r}");
    assert!(r.ends_with("cannot drop"), "{r}");
    assert_eq!(sim.handled.load(Ordering::SeqCst), 0);
    server.await.unwrap();
}

/// `Throttled` answers byte for byte as API Priority and Fairness does (Go's
/// `http.Error` after `Retry-After` is set), whatever the simulator's own error
/// format, and the request is not performed.
#[tokio::test]
async fn throttled_answers_as_priority_and_fairness_does() {
    let (sim, port, token, task) = start().await;
    set(
        &sim,
        FaultAction::Throttled {
            retry_after_secs: 7,
        },
    );
    let r = get_root(port).await;
    let (head, body) = r.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.lines();
    assert_eq!(lines.next(), Some("HTTP/1.1 429 Too Many Requests"), "{r}");
    let headers: Vec<String> = lines.map(str::to_ascii_lowercase).collect();
    for h in [
        "content-type: text/plain; charset=utf-8",
        "x-content-type-options: nosniff",
        "retry-after: 7",
    ] {
        assert!(headers.iter().any(|l| l == h), "{h} in {headers:?}");
    }
    assert_eq!(body, "Too many requests, please try again later.\n");
    assert_eq!(body, jetbridge_sim_http::THROTTLED_BODY);
    assert_eq!(sim.handled.load(Ordering::SeqCst), 0, "not performed");
    token.cancel();
    task.await.unwrap();
}
