//! Pod CRUD, selectors, watches and discovery through kube-rs.

mod common;

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, wait::await_condition, wait::conditions, watcher};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_conflict_and_not_found() {
    let (sim, client) = start().await;
    let pods = api(&client);
    let created = create(&pods, &pod("a", &["sleep", "infinity"])).await;
    let meta = &created.metadata;
    assert!(meta.uid.as_deref().is_some_and(|u| !u.is_empty()));
    assert_eq!(meta.namespace.as_deref(), Some(NS));
    assert!(meta.creation_timestamp.is_some());
    assert_eq!(phase(&created), "Pending");
    let first_rv = rv(&created);

    let err = pods
        .create(&Default::default(), &pod("a", &["true"]))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert_eq!(s.reason, "AlreadyExists");
        }
        e => panic!("unexpected {e:?}"),
    }
    let err = pods.get("missing").await.unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
        }
        e => panic!("unexpected {e:?}"),
    }
    let got = pods.get("a").await.unwrap();
    assert_eq!(got.metadata.uid, created.metadata.uid);
    let b = create(&pods, &pod("b", &["sleep", "infinity"])).await;
    assert!(rv(&b) > first_rv, "one global increasing counter");

    // Invalid names are 422.
    let err = pods
        .create(&Default::default(), &pod("Bad_Name", &["true"]))
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 422 && s.reason == "Invalid"));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_with_label_and_field_selectors() {
    let (sim, client) = start().await;
    let pods = api(&client);
    for (name, tier) in [("p1", "web"), ("p2", "db"), ("p3", "cache")] {
        let mut p = pod(name, &["sleep", "infinity"]);
        p.metadata
            .labels
            .get_or_insert_default()
            .insert("tier".into(), tier.into());
        create(&pods, &p).await;
    }
    let mut other = pod("x", &["sleep", "infinity"]);
    other.metadata.labels = None;
    create(&pods, &other).await;
    let names = |l: kube::core::ObjectList<Pod>| {
        let mut v: Vec<String> = l
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        v.sort();
        v
    };
    let list = |s: &'static str| {
        let pods = pods.clone();
        async move { pods.list(&ListParams::default().labels(s)).await.unwrap() }
    };
    assert_eq!(names(list("tier=web").await), ["p1"]);
    assert_eq!(names(list("tier==web").await), ["p1"]);
    assert_eq!(names(list("tier!=web").await), ["p2", "p3", "x"]);
    assert_eq!(names(list("tier in (web,db)").await), ["p1", "p2"]);
    assert_eq!(names(list("tier notin (web,db)").await), ["p3", "x"]);
    assert_eq!(names(list("tier").await), ["p1", "p2", "p3"]);
    assert_eq!(names(list("!tier").await), ["x"]);
    assert_eq!(names(list("app=jb,tier=db").await), ["p2"]);
    let l = pods
        .list(&ListParams::default().fields("metadata.name=p3"))
        .await
        .unwrap();
    assert!(
        l.metadata
            .resource_version
            .as_deref()
            .is_some_and(|r| !r.is_empty())
    );
    assert_eq!(names(l), ["p3"]);
    let l = pods
        .list(
            &ListParams::default()
                .fields("metadata.namespace=jb-test,metadata.name!=p3")
                .limit(2),
        )
        .await
        .unwrap();
    assert_eq!(names(l), ["p1", "p2", "x"], "limit may be ignored");
    let all: Api<Pod> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        4
    );
    wait_phase(&pods, "p1", "Running").await;
    let l = pods
        .list(&ListParams::default().fields("status.phase=Running,spec.nodeName=sim-node"))
        .await
        .unwrap();
    assert!(names(l).contains(&"p1".to_string()));
    let err = pods
        .list(&ListParams::default().fields("spec.bogus=1"))
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 400));
    let err = pods
        .list(&ListParams::default().labels("a in b"))
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 400));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_added_modified_deleted_and_bookmarks() {
    let (sim, client) = start().await;
    let pods = api(&client);
    let start_rv = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let wp = WatchParams::default().labels("app=jb").timeout(20);
    let mut stream = pods.watch(&wp, &start_rv).await.unwrap().boxed();
    create(&pods, &pod("w", &["sh", "-c", "sleep 0.3"])).await;
    let mut seen = Vec::new();
    let mut bookmarks = 0;
    // 0: until Succeeded, 1: until a bookmark (then delete), 2: until DELETED.
    let mut stage = 0;
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .unwrap();
        match ev {
            WatchEvent::Added(p) => seen.push(("ADDED", phase(&p).to_string())),
            WatchEvent::Modified(p) => {
                if stage == 0 && phase(&p) == "Succeeded" {
                    stage = 1;
                }
                seen.push(("MODIFIED", phase(&p).to_string()));
            }
            WatchEvent::Deleted(_) => {
                seen.push(("DELETED", String::new()));
                break;
            }
            WatchEvent::Bookmark(b) => {
                assert!(!b.metadata.resource_version.is_empty());
                bookmarks += 1;
                if stage == 1 {
                    pods.delete("w", &DeleteParams::default()).await.unwrap();
                    stage = 2;
                }
            }
            WatchEvent::Error(e) => panic!("error event {e:?}"),
        }
    }
    assert_eq!(seen.first().map(|s| s.0), Some("ADDED"));
    assert!(
        seen.iter()
            .any(|s| s == &("MODIFIED", "Running".to_string())),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s == &("MODIFIED", "Succeeded".to_string())),
        "{seen:?}"
    );
    assert_eq!(seen.last().map(|s| s.0), Some("DELETED"), "{seen:?}");
    assert!(bookmarks >= 1, "idle watch gets bookmarks");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_without_version_replays_current_state_and_honours_selectors() {
    let (sim, client) = start().await;
    let pods = api(&client);
    create(&pods, &pod("one", &["sleep", "infinity"])).await;
    create(&pods, &pod("two", &["sleep", "infinity"])).await;
    let wp = WatchParams::default()
        .fields("metadata.name=two")
        .timeout(5);
    let mut stream = pods.watch(&wp, "0").await.unwrap().boxed();
    match stream.next().await.unwrap().unwrap() {
        WatchEvent::Added(p) => assert_eq!(p.metadata.name.as_deref(), Some("two")),
        e => panic!("unexpected {e:?}"),
    }
    // Label transitions: a pod leaving the selector is seen as DELETED.
    let wp = WatchParams::default().labels("keep=yes").timeout(5);
    let rv = pods
        .get("one")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = pods.watch(&wp, &rv).await.unwrap().boxed();
    let patch = |v: Option<&str>| Patch::Merge(json!({"metadata": {"labels": {"keep": v}}}));
    pods.patch("one", &PatchParams::default(), &patch(Some("yes")))
        .await
        .unwrap();
    pods.patch("one", &PatchParams::default(), &patch(None))
        .await
        .unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        match stream.next().await.unwrap().unwrap() {
            WatchEvent::Added(_) => kinds.push("ADDED"),
            WatchEvent::Deleted(_) => kinds.push("DELETED"),
            WatchEvent::Modified(p) => {
                // Kubelet progress of the selected pod may interleave.
                assert_eq!(p.labels().get("keep").map(String::as_str), Some("yes"));
            }
            _ => {}
        }
    }
    assert_eq!(kinds, ["ADDED", "DELETED"]);
    sim.shutdown().await;
}

use kube::ResourceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_history_gives_410_error_event_in_a_200_stream() {
    let (sim, client) = start().await;
    let pods = api(&client);
    let old = create(&pods, &pod("c", &["sleep", "infinity"])).await;
    wait_phase(&pods, "c", "Running").await;
    sim.compact();
    let mut stream = pods
        .watch(
            &WatchParams::default().timeout(5),
            old.metadata.resource_version.as_deref().unwrap(),
        )
        .await
        .expect("the watch itself is a 200")
        .boxed();
    match stream.next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        e => panic!("expected 410 ERROR event, got {e:?}"),
    }
    // A watch from the current version is fine.
    let now = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = pods
        .watch(&WatchParams::default().timeout(2), &now)
        .await
        .unwrap()
        .boxed();
    match stream.next().await.unwrap().unwrap() {
        WatchEvent::Bookmark(_) | WatchEvent::Modified(_) => {}
        e => panic!("unexpected {e:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_delete_sets_deletion_timestamp_then_removes() {
    let (sim, client) = start().await;
    let pods = api(&client);
    create(&pods, &pod("d", &["sleep", "infinity"])).await;
    wait_phase(&pods, "d", "Running").await;
    let rv0 = pods
        .get("d")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = pods
        .watch(&WatchParams::default().timeout(10), &rv0)
        .await
        .unwrap()
        .boxed();
    let res = pods
        .delete(
            "d",
            &DeleteParams {
                grace_period_seconds: Some(5),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let deleted = res.left().expect("200 with the pod");
    assert!(deleted.metadata.deletion_timestamp.is_some());
    assert_eq!(deleted.metadata.deletion_grace_period_seconds, Some(5));
    let mut saw_modified_with_ts = false;
    loop {
        match stream.next().await.unwrap().unwrap() {
            WatchEvent::Modified(p) => {
                saw_modified_with_ts |= p.metadata.deletion_timestamp.is_some()
            }
            WatchEvent::Deleted(_) => break,
            _ => {}
        }
    }
    assert!(saw_modified_with_ts);
    assert!(pods.get("d").await.is_err());
    // Deleting a missing pod is 404; grace 0 removes at once.
    assert!(
        matches!(pods.delete("d", &DeleteParams::default()).await, Err(kube::Error::Api(s)) if s.code == 404)
    );
    create(&pods, &pod("e", &["sleep", "infinity"])).await;
    wait_phase(&pods, "e", "Running").await;
    pods.delete("e", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert!(pods.get("e").await.is_err());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_watcher_and_await_condition_work() {
    let (sim, client) = start().await;
    let pods = api(&client);
    let w = watcher(pods.clone(), watcher::Config::default().labels("app=jb")).applied_objects();
    let mut w = Box::pin(w);
    create(&pods, &pod("r", &["sleep", "infinity"])).await;
    let running = tokio::time::timeout(
        Duration::from_secs(10),
        await_condition(pods.clone(), "r", conditions::is_pod_running()),
    )
    .await
    .expect("in time")
    .unwrap();
    assert_eq!(
        running.map(|p| phase(&p).to_string()).as_deref(),
        Some("Running")
    );
    let first = tokio::time::timeout(Duration::from_secs(5), w.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.metadata.name.as_deref(), Some("r"));
    pods.delete("r", &DeleteParams::default()).await.unwrap();
    let gone = tokio::time::timeout(
        Duration::from_secs(10),
        await_condition(pods.clone(), "r", conditions::is_deleted("")),
    )
    .await
    .expect("deleted in time");
    assert!(gone.is_ok());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_unknown_paths() {
    let (sim, client) = start().await;
    let v = client.apiserver_version().await.unwrap();
    assert_eq!(v.major, "1");
    let req = axum::http::Request::get("/api/v1/nodes")
        .body(Vec::new())
        .unwrap();
    let err = client.request::<serde_json::Value>(req).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 404));
    let req = axum::http::Request::get("/api/v1")
        .body(Vec::new())
        .unwrap();
    let res: serde_json::Value = client.request(req).await.unwrap();
    assert!(
        res["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "pods")
    );
    sim.shutdown().await;
}

/// A negative grace period is one second, never an immediate deletion (apiserver
/// pkg/registry/rest/delete.go `BeforeDelete`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_grace_period_is_one_second() {
    let (sim, client) = start().await;
    let pods = api(&client);
    create(&pods, &pod("g", &["sleep", "infinity"])).await;
    wait_phase(&pods, "g", "Running").await;
    // kube-rs's DeleteParams cannot say -5; the API can.
    let mut req = kube::core::Request::new(format!("/api/v1/namespaces/{NS}/pods"))
        .delete("g", &DeleteParams::default())
        .unwrap();
    *req.body_mut() = serde_json::to_vec(
        &json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": -5}),
    )
    .unwrap();
    let deleted: Pod = client.request(req).await.unwrap();
    assert!(deleted.metadata.deletion_timestamp.is_some(), "graceful");
    assert_eq!(deleted.metadata.deletion_grace_period_seconds, Some(1));
    sim.shutdown().await;
}
