//! Pods, exec and their fault injection.

use jetbridge_core::ports::{DeleteOpts, WaitOpts};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jetbridge_core::ErrorKind;
use jetbridge_core::names::label;
use jetbridge_core::ports::{
    CaptureOutput, Exec, ExecRequest, Mount, MountInfo, MountSource, PendingReason, PodFailure,
    PodSpec, PodState, Pods, WaitFor, bytes_stream, collect_stream,
};
use jetbridge_memory::{BackendOp, MemoryBackend, Program, ResourceScripts};

fn spec(name: &str, handle: &str) -> PodSpec {
    let mut s = PodSpec::new(name, "busybox:1.36");
    s.labels = BTreeMap::from([
        (label::HANDLE.to_owned(), handle.to_owned()),
        ("team".to_owned(), "a".to_owned()),
    ]);
    s
}

fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

async fn run(b: &MemoryBackend, pod: &str, a: &[&str]) -> (jetbridge_core::Result<i32>, String) {
    let cap = Arc::new(CaptureOutput::new());
    let r = b.exec(ExecRequest::new(pod, argv(a)), cap.clone()).await;
    (r, String::from_utf8_lossy(&cap.stdout()).into_owned())
}

#[tokio::test]
async fn create_is_idempotent_per_handle() {
    let b = MemoryBackend::new();
    let s = b.create(&spec("p1", "h1")).await.unwrap();
    assert_eq!(s.state, PodState::Running);
    let again = b.create(&spec("p1", "h1")).await.unwrap();
    assert_eq!(again.created_at, s.created_at);
    let e = b.create(&spec("p1", "h2")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    assert_eq!(b.created_pods(), 1);
    b.create(&spec("p2", "h2")).await.unwrap();
    let mut sel = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
    assert_eq!(b.list(&sel).await.unwrap().len(), 2);
    sel.insert(label::HANDLE.into(), "h2".into());
    let l = b.list(&sel).await.unwrap();
    assert_eq!(
        l.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["p2"]
    );
    b.delete("p1", &DeleteOpts::grace(Duration::ZERO))
        .await
        .unwrap();
    b.delete("p1", &DeleteOpts::grace(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(b.get("p1").await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(b.live_pods(), 1);
}

#[tokio::test]
async fn unsupported_mounts_and_helper() {
    let b = MemoryBackend::new();
    let mut s = spec("p", "h");
    s.mounts.push(Mount::new(
        "in",
        MountSource::CopyOf(jetbridge_core::ports::CopySource::new(
            MountInfo::HostPath { path: "/x".into() },
            jetbridge_core::digest::TreeDigest::new().finish(),
        )),
    ));
    assert_eq!(
        b.create(&s).await.unwrap_err().kind(),
        ErrorKind::Unsupported
    );
    let mut s = spec("p", "h");
    s.transfer = true;
    assert_eq!(
        b.create(&s).await.unwrap_err().kind(),
        ErrorKind::Unsupported
    );
    let mut s = spec("p", "h");
    s.mounts.push(Mount::new("../x", MountSource::Empty));
    assert_eq!(b.create(&s).await.unwrap_err().kind(), ErrorKind::Invalid);
    assert_eq!(b.created_pods(), 0);
}

#[tokio::test(start_paused = true)]
async fn scheduling_delay_walks_through_pending_states() {
    let b = MemoryBackend::new();
    b.set_scheduling_delay(Duration::from_secs(2));
    let s = b.create(&spec("p", "h")).await.unwrap();
    assert_eq!(s.state, PodState::Pending(PendingReason::Scheduling));
    let s = b
        .wait(
            "p",
            &WaitOpts::new(WaitFor::Scheduled, Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(s.state, PodState::Pending(PendingReason::ContainerCreating));
    // Too short a timeout returns the status at that time.
    let s = b
        .wait(
            "p",
            &WaitOpts::new(WaitFor::Running, Duration::from_millis(500)),
        )
        .await
        .unwrap();
    assert_eq!(s.state, PodState::Pending(PendingReason::ContainerCreating));
    let s = b
        .wait(
            "p",
            &WaitOpts::new(WaitFor::Running, Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(s.state, PodState::Running);
}

#[tokio::test(start_paused = true)]
async fn unschedulable_and_unpullable() {
    let b = MemoryBackend::new();
    b.set_unschedulable(true);
    b.create(&spec("p", "h")).await.unwrap();
    let s = b
        .wait(
            "p",
            &WaitOpts::new(WaitFor::Running, Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert_eq!(s.state, PodState::Pending(PendingReason::Unschedulable));
    assert!(s.message.unwrap().contains("nodes are available"));
    b.set_unschedulable(false);
    let s = b
        .wait(
            "p",
            &WaitOpts::new(WaitFor::Running, Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert_eq!(s.state, PodState::Running);

    b.set_unpullable("example.com/nope", "Back-off pulling image");
    let mut bad = spec("q", "h2");
    bad.image = "example.com/nope:1".into();
    b.create(&bad).await.unwrap();
    let s = b
        .wait(
            "q",
            &WaitOpts::new(WaitFor::Running, Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert_eq!(s.state, PodState::Pending(PendingReason::ImagePullFailed));
    assert!(s.hopeless(WaitFor::Running));
    assert_eq!(s.message.as_deref(), Some("Back-off pulling image"));
    b.clear_unpullable("example.com/nope");
    assert_eq!(b.get("q").await.unwrap().state, PodState::Running);
}

#[tokio::test]
async fn wait_sees_deletion_and_eviction() {
    let b = MemoryBackend::new();
    b.set_unschedulable(true);
    b.create(&spec("p", "h")).await.unwrap();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            b.wait(
                "p",
                &WaitOpts::new(WaitFor::Running, Duration::from_secs(60)),
            )
            .await
        })
    };
    tokio::task::yield_now().await;
    b.delete_externally("p").unwrap();
    let s = waiter.await.unwrap().unwrap();
    assert_eq!(s.state, PodState::Failed(PodFailure::Deleted));
    assert_eq!(
        b.wait("p", &WaitOpts::new(WaitFor::Running, Duration::ZERO))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );

    b.set_unschedulable(false);
    b.create(&spec("e", "h")).await.unwrap();
    b.evict("e").unwrap();
    let s = b
        .wait(
            "e",
            &WaitOpts::new(WaitFor::Terminated, Duration::from_secs(1)),
        )
        .await
        .unwrap();
    assert_eq!(s.state, PodState::Failed(PodFailure::Evicted));
    assert_eq!(
        s.message.as_deref(),
        Some(jetbridge_memory::EVICTED_MESSAGE)
    );
    assert_eq!(
        run(&b, "e", &["true"]).await.0.unwrap_err().kind(),
        ErrorKind::Conflict
    );
    assert_eq!(
        run(&b, "nope", &["true"]).await.0.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

// Paused time: the clock moves only once every task is idle, so the short sleep below
// returns only after the three programs have printed and are sleeping.
#[tokio::test(start_paused = true)]
async fn running_execs_end_with_the_pod() {
    let b = MemoryBackend::new();
    for (name, h) in [("a", "1"), ("b", "2"), ("c", "3")] {
        b.create(&spec(name, h)).await.unwrap();
    }
    let start = |pod: &'static str| {
        let b = b.clone();
        tokio::spawn(async move { run(&b, pod, &["sh", "-c", "echo started; sleep 3600"]).await })
    };
    let (ta, tb, tc) = (start("a"), start("b"), start("c"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    b.evict("a").unwrap();
    b.oom_kill("b").unwrap();
    b.delete("c", &DeleteOpts::grace(Duration::from_secs(30)))
        .await
        .unwrap();
    let (ra, out) = ta.await.unwrap();
    assert_eq!(ra.unwrap_err().kind(), ErrorKind::Lost);
    assert_eq!(out, "started\n");
    assert_eq!(tb.await.unwrap().0.unwrap(), 137);
    assert_eq!(
        b.get("b").await.unwrap().state,
        PodState::Failed(PodFailure::OomKilled)
    );
    assert_eq!(tc.await.unwrap().0.unwrap_err().kind(), ErrorKind::Lost);
}

#[tokio::test]
async fn injected_failures() {
    let b = MemoryBackend::new();
    b.fail_next(BackendOp::Create, 2, ErrorKind::Transient);
    for _ in 0..2 {
        let e = b.create(&spec("p", "h")).await.unwrap_err();
        assert!(e.is_retryable());
    }
    assert_eq!(b.created_pods(), 0);
    // A lost response: the pod exists, the caller sees an error, a retry adopts it.
    b.fail_next_after(BackendOp::Create, 1, ErrorKind::Transient);
    assert!(b.create(&spec("p", "h")).await.is_err());
    assert_eq!(
        b.create(&spec("p", "h")).await.unwrap().state,
        PodState::Running
    );
    assert_eq!((b.created_pods(), b.live_pods()), (1, 1));
    for op in [
        BackendOp::Get,
        BackendOp::Wait,
        BackendOp::List,
        BackendOp::Delete,
        BackendOp::Exec,
    ] {
        b.fail_next(op, 1, ErrorKind::Other);
    }
    assert!(b.get("p").await.is_err());
    assert!(
        b.wait("p", &WaitOpts::new(WaitFor::Running, Duration::ZERO))
            .await
            .is_err()
    );
    assert!(b.list(&BTreeMap::new()).await.is_err());
    assert!(
        b.delete("p", &DeleteOpts::grace(Duration::ZERO))
            .await
            .is_err()
    );
    assert!(run(&b, "p", &["true"]).await.0.is_err());
    assert_eq!(run(&b, "p", &["true"]).await.0.unwrap(), 0);
    assert_eq!(b.exec_count(), 2);
}

#[tokio::test]
async fn dropped_streams_are_lost_after_some_output() {
    let b = MemoryBackend::new();
    b.create(&spec("p", "h")).await.unwrap();
    b.drop_next_exec_streams(1);
    let (r, out) = run(
        &b,
        "p",
        &["sh", "-c", "echo first; echo second; sleep 3600"],
    )
    .await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Lost);
    assert_eq!(out, "first\n");
    let (r, _) = run(&b, "p", &["true"]).await;
    assert_eq!(r.unwrap(), 0);
}

// Paused time: the program's `sleep 1` and the test's wait run on one virtual clock,
// so "a second later" is exact and costs no wall time.
#[tokio::test(start_paused = true)]
async fn dropping_the_future_stops_the_program() {
    let b = MemoryBackend::new();
    b.create(&spec("p", "h")).await.unwrap();
    let r = tokio::time::timeout(
        Duration::from_millis(50),
        run(&b, "p", &["sh", "-c", "sleep 1; echo late > marker"]),
    )
    .await;
    assert!(
        r.is_err(),
        "the program was still sleeping when the future was dropped"
    );
    // Well past the program's sleep: had it gone on, the marker would be there.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!b.pod_fs("p").unwrap().exists("marker"));
    // The same program left alone does write it (the check above can fail).
    let (r, _) = run(&b, "p", &["sh", "-c", "sleep 1; echo late > marker"]).await;
    assert_eq!(r.unwrap(), 0);
    assert!(b.pod_fs("p").unwrap().exists("marker"));
}

#[tokio::test]
async fn caches_persist_between_pods_by_key() {
    let b = MemoryBackend::new();
    let mut s = spec("p1", "h1");
    s.mounts = vec![
        Mount::new("cache/deps", MountSource::Cache { key: "k".into() }),
        Mount::new("out", MountSource::Empty),
    ];
    b.create(&s).await.unwrap();
    let (r, _) = run(
        &b,
        "p1",
        &["sh", "-c", "echo 1 >> cache/deps/n; echo x > out/f"],
    )
    .await;
    assert_eq!(r.unwrap(), 0);
    b.delete("p1", &DeleteOpts::grace(Duration::ZERO))
        .await
        .unwrap();
    s.name = "p2".into();
    b.create(&s).await.unwrap();
    let (r, out) = run(&b, "p2", &["sh", "-c", "cat cache/deps/n; ls out"]).await;
    assert_eq!((r.unwrap(), out.as_str()), (0, "1\n"));
    assert_eq!(b.cache_keys(), ["k"]);
}

#[tokio::test]
async fn tar_streams_in_and_out() {
    let b = MemoryBackend::new();
    let mut s = spec("p", "h");
    s.mounts = vec![
        Mount::new("src", MountSource::Empty),
        Mount::new("dst", MountSource::Empty),
    ];
    b.create(&s).await.unwrap();
    let fs = b.pod_fs("p").unwrap();
    fs.write("src/a/run.sh", "#!/bin/sh\n").unwrap();
    fs.set_mode("src/a/run.sh", 0o755).unwrap();
    fs.symlink("a/run.sh", "src/link").unwrap();
    let cap = Arc::new(CaptureOutput::new());
    let code = b
        .exec(
            ExecRequest::new("p", argv(&["tar", "-c", "-f", "-", "."])).dir("src"),
            cap.clone(),
        )
        .await
        .unwrap();
    assert_eq!(code, 0);
    let tar = cap.stdout();
    let code = b
        .exec(
            ExecRequest::new("p", argv(&["tar", "-x", "-f", "-"]))
                .dir("dst")
                .stdin(bytes_stream(tar)),
            Arc::new(CaptureOutput::new()),
        )
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(fs.digest("src").unwrap(), fs.digest("dst").unwrap());
    assert_eq!(fs.mode("dst/a/run.sh").unwrap(), 0o755);
    assert_eq!(fs.read_link("dst/link").unwrap(), "a/run.sh");

    // A hostile archive is rejected and leaves nothing behind.
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..6].copy_from_slice(b"../evi");
    h.set_size(1);
    h.set_mode(0o644);
    h.set_cksum();
    let mut evil = h.as_bytes().to_vec();
    evil.push(b'x');
    evil.resize(evil.len() + 511 + 1024, 0);
    let e = b
        .exec(
            ExecRequest::new("p", argv(&["tar", "-x", "-f", "-"]))
                .dir("dst")
                .stdin(bytes_stream(evil)),
            Arc::new(CaptureOutput::new()),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert!(!fs.exists("evi"));
}

#[tokio::test]
async fn registered_programs_and_resources() {
    let b = MemoryBackend::new();
    b.register_program("make", |ctx| async move {
        let target = ctx.argv.get(1).cloned().unwrap_or_default();
        ctx.write("build/out.txt", format!("built {target}")).ok();
        ctx.print("done\n");
        0
    });
    b.register_resource(
        "example/git-resource",
        ResourceScripts {
            check: Some(Program::sync(|ctx| {
                ctx.print("[{\"ref\":\"abc\"}]");
                0
            })),
            ..Default::default()
        },
    );
    b.create(&spec("p", "h")).await.unwrap();
    let (r, out) = run(
        &b,
        "p",
        &["sh", "-c", "/usr/bin/make all && cat build/out.txt"],
    )
    .await;
    assert_eq!((r.unwrap(), out.as_str()), (0, "done\nbuilt all"));
    // Resource programs belong to their image only.
    let (r, _) = run(&b, "p", &["/opt/resource/check"]).await;
    assert_eq!(r.unwrap(), 127);
    let mut g = spec("g", "hg");
    g.image = "example/git-resource:2".into();
    b.create(&g).await.unwrap();
    let (r, out) = run(&b, "g", &["/opt/resource/check"]).await;
    assert_eq!((r.unwrap(), out.as_str()), (0, "[{\"ref\":\"abc\"}]"));
}

#[tokio::test]
async fn mock_resource_speaks_the_protocol() {
    let b = MemoryBackend::new();
    let mut s = spec("m", "h");
    s.image = "concourse/mock-resource:0.13".into();
    s.mounts = vec![Mount::new("out", MountSource::Empty)];
    b.create(&s).await.unwrap();
    let call = |a: &[&str], stdin: &str, dir: Option<&str>| {
        let b = b.clone();
        let mut req = ExecRequest::new("m", argv(a)).stdin(bytes_stream(stdin.to_owned()));
        req.dir = dir.map(str::to_owned);
        async move {
            let cap = Arc::new(CaptureOutput::new());
            let code = b.exec(req, cap.clone()).await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&cap.stdout()).unwrap_or_default();
            (code, v)
        }
    };
    let (code, v) = call(
        &["/opt/resource/check"],
        r#"{"source":{"initial_version":"7"}}"#,
        None,
    )
    .await;
    assert_eq!((code, v), (0, serde_json::json!([{"version": "7"}])));
    let (_, v) = call(
        &["/opt/resource/check"],
        r#"{"source":{"no_initial_version":true}}"#,
        None,
    )
    .await;
    assert_eq!(v, serde_json::json!([]));
    let (code, v) = call(
        &["/opt/resource/in", "."],
        r#"{"source":{"create_files":{"a.txt":"A"}},"version":{"version":"3"},"params":{"create_files":{"d/b.txt":"B"}}}"#,
        Some("out"),
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(v["version"], serde_json::json!({"version": "3"}));
    let fs = b.pod_fs("m").unwrap();
    assert_eq!(fs.read_to_string("out/version").unwrap(), "3");
    assert_eq!(fs.read_to_string("out/a.txt").unwrap(), "A");
    assert_eq!(fs.read_to_string("out/d/b.txt").unwrap(), "B");
    let (_, v) = call(
        &["/opt/resource/out", "out"],
        r#"{"params":{"version":"9"}}"#,
        None,
    )
    .await;
    assert_eq!(v["version"], serde_json::json!({"version": "9"}));
    let (_, v) = call(
        &["/opt/resource/out", "out"],
        r#"{"params":{"file":"a.txt"}}"#,
        None,
    )
    .await;
    assert_eq!(v["version"], serde_json::json!({"version": "A"}));
    let (_, v1) = call(&["/opt/resource/out", "out"], "{}", None).await;
    let (_, v2) = call(&["/opt/resource/out", "out"], "{}", None).await;
    assert_ne!(v1["version"], v2["version"]);
    let (code, _) = call(
        &["/opt/resource/check"],
        r#"{"source":{"check_failure":"boom"}}"#,
        None,
    )
    .await;
    assert_eq!(code, 1);
    let _ = collect_stream(bytes_stream("")).await;
}
