//! Injected request faults, request recording and server restarts.

mod common;

use common::*;
use futures::StreamExt;
use jetbridge_kube_sim::SimControls;
use jetbridge_kube_sim::{Fault, FaultAction};
use kube::api::{ListParams, PostParams, WatchParams};
use std::time::{Duration, Instant};

fn api_code(r: Result<impl std::fmt::Debug, kube::Error>) -> Option<u16> {
    match r {
        Err(kube::Error::Api(s)) => Some(s.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_status_codes_have_status_bodies() {
    let (sim, _) = start().await;
    let pods = api(&client(&sim, false));
    sim.inject(Fault::on("POST", "/pods", 1, FaultAction::Status(409)));
    assert_eq!(
        api_code(
            pods.create(&PostParams::default(), &pod("a", &["true"]))
                .await
        ),
        Some(409)
    );
    sim.inject(Fault::on("GET", "/pods", 1, FaultAction::Status(500)));
    assert_eq!(api_code(pods.list(&ListParams::default()).await), Some(500));
    sim.inject(Fault::any(1, FaultAction::Status(503)));
    assert_eq!(api_code(pods.list(&ListParams::default()).await), Some(503));
    // The fault is used up: the next call succeeds, and the pod was never created.
    assert!(
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_retries_503_and_429_itself_by_default() {
    let (sim, client) = start().await;
    let pods = api(&client);
    sim.inject(Fault::on("GET", "/pods", 2, FaultAction::Status(503)));
    sim.inject(Fault::on("GET", "/pods", 1, FaultAction::Status(429)));
    sim.reset_requests();
    pods.list(&ListParams::default())
        .await
        .expect("retried to success");
    let gets = sim.requests().iter().filter(|r| r.method == "GET").count();
    assert_eq!(gets, 4, "two 503s, one 429, then success");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_and_commit_then_drop() {
    let (sim, _) = start().await;
    let pods = api(&client(&sim, false));
    sim.inject(Fault::on("GET", "/pods", 1, FaultAction::DropConnection));
    let err = pods.list(&ListParams::default()).await.unwrap_err();
    assert!(
        !matches!(err, kube::Error::Api(_)),
        "no response at all: {err:?}"
    );
    pods.list(&ListParams::default())
        .await
        .expect("next request works");

    sim.inject(Fault::on("POST", "/pods", 1, FaultAction::DropAfterCommit));
    let err = pods
        .create(&PostParams::default(), &pod("c", &["sleep", "infinity"]))
        .await
        .unwrap_err();
    assert!(!matches!(err, kube::Error::Api(_)), "{err:?}");
    assert!(
        pods.get_opt("c").await.unwrap().is_some(),
        "the create was committed"
    );
    assert_eq!(sim.pods(NS).len(), 1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_and_request_records() {
    let (sim, client) = start().await;
    let pods = api(&client);
    sim.inject(Fault::on(
        "GET",
        "/pods",
        1,
        FaultAction::Delay(Duration::from_millis(300)),
    ));
    sim.reset_requests();
    let t = Instant::now();
    pods.list(&ListParams::default().labels("app=jb"))
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    let reqs = sim.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path, format!("/api/v1/namespaces/{NS}/pods"));
    assert!(
        reqs[0].query.contains("labelSelector=app%3Djb"),
        "{:?}",
        reqs[0].query
    );
    sim.reset_requests();
    assert!(sim.requests().is_empty());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_pods_and_the_version_counter() {
    let (sim, client) = start().await;
    let pods = api(&client);
    let a = create(&pods, &pod("a", &["sleep", "infinity"])).await;
    wait_phase(&pods, "a", "Running").await;
    let before = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut watch = pods
        .watch(&WatchParams::default().timeout(30), &before)
        .await
        .unwrap()
        .boxed();
    let port = sim.port();
    sim.restart().await;
    assert_eq!(sim.port(), port);
    // The open watch ends (an error or end of stream), it never hangs.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match watch.next().await {
                None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "watch ends on restart");
    let after = pods.get("a").await.expect("pods survive restart");
    assert_eq!(after.metadata.uid, a.metadata.uid);
    assert_eq!(phase(&after), "Running");
    let b = create(&pods, &pod("b", &["true"])).await;
    assert!(
        rv(&b) > before.parse::<u64>().unwrap(),
        "counter keeps increasing"
    );
    // Watching from before the restart replays what happened since.
    let mut watch = pods
        .watch(&WatchParams::default().timeout(5), &before)
        .await
        .unwrap()
        .boxed();
    match watch.next().await.unwrap().unwrap() {
        kube::api::WatchEvent::Added(p) => assert_eq!(p.metadata.name.as_deref(), Some("b")),
        e => panic!("unexpected {e:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_points_at_the_simulator() {
    let (sim, _) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&path, "ns-from-config").unwrap();
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    cfg.proxy_url = None;
    assert_eq!(cfg.default_namespace, "ns-from-config");
    let client = kube::Client::try_from(cfg).unwrap();
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::default_namespaced(client);
    assert!(
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    sim.shutdown().await;
}
