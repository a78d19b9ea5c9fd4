//! Failure scenarios against the Kubernetes API simulator: restarts, evictions, OOM,
//! scheduling and image failures, lost exec streams, injected API errors, compacted
//! watch history, and the number of API requests one step costs.

mod common;

use jetbridge_core::ports::{DeleteOpts, WaitOpts};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{NS, argv, eventually, marked_processes, running, sim_backend, sim_config};
use jetbridge_core::ErrorKind;
use jetbridge_core::names::{StepHandle, label};
use jetbridge_core::ports::{
    CaptureOutput, DiscardOutput, Exec, ExecRequest, PendingReason, PodFailure, PodSpec, PodState,
    Pods, WaitFor,
};
use jetbridge_kube::{KubeBackend, KubeConfig};
use jetbridge_kube_sim::SimControls;
use jetbridge_kube_sim::{Fault, FaultAction, SimConfig, Simulator};

const IMAGE: &str = "busybox:1.36";

fn spec() -> PodSpec {
    let handle = StepHandle::random();
    let mut s = PodSpec::new(format!("scn-{}", handle.short()), IMAGE);
    s.labels
        .insert(label::HANDLE.into(), handle.as_str().into());
    s
}

async fn start() -> (Simulator, Arc<KubeBackend>) {
    sim_backend(SimConfig::default(), sim_config()).await
}

/// The object called `name` among `objects` (as the simulator lists them).
fn named(objects: Vec<serde_json::Value>, name: &str) -> Option<serde_json::Value> {
    objects
        .into_iter()
        .find(|o| o["metadata"]["name"].as_str() == Some(name))
}

fn pods_named(sim: &Simulator, name: &str) -> usize {
    sim.pods(NS)
        .iter()
        .filter(|p| p["metadata"]["name"].as_str() == Some(name))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_restart_during_create_leaves_exactly_one_pod() {
    let (sim, b) = start().await;
    let s = spec();
    sim.inject(Fault::on("POST", "/pods", 1, FaultAction::DropAfterCommit));
    let restart = {
        let sim = sim.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            sim.restart().await;
        }
    };
    let (created, ()) = tokio::join!(b.create(&s), restart);
    match created {
        Ok(st) => assert_eq!(st.name, s.name, "adopted"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Transient, "{e}"),
    }
    assert_eq!(pods_named(&sim, &s.name), 1, "exactly one pod");
    // Creating again (the caller's retry) adopts the same pod.
    let again = b.create(&s).await.expect("adopt after restart");
    assert_eq!(again.name, s.name);
    assert_eq!(pods_named(&sim, &s.name), 1);
    let posts = sim.requests().iter().filter(|r| r.method == "POST").count();
    assert!(posts >= 2, "the lost create was resent ({posts} POSTs)");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_mid_exec_is_lost_and_reported() {
    let (sim, b) = start().await;
    let s = spec();
    running(&b, &s).await;
    let exec = b.exec(
        ExecRequest::new(&s.name, argv(&["sh", "-c", "sleep 20; echo done"])),
        Arc::new(DiscardOutput),
    );
    let evict = {
        let sim = sim.clone();
        let name = s.name.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            sim.evict(NS, &name);
        }
    };
    let began = Instant::now();
    let (r, ()) = tokio::join!(exec, evict);
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "exec ended with the pod"
    );
    match r {
        Ok(code) => assert_ne!(code, 0, "an evicted command never succeeds"),
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::Lost | ErrorKind::Transient),
            "{e}"
        ),
    }
    let st = b
        .wait(
            &s.name,
            &WaitOpts::new(WaitFor::Terminated, Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(st.state, PodState::Failed(PodFailure::Evicted), "{st:?}");
    assert!(
        st.message.as_deref().is_some_and(|m| !m.is_empty()),
        "{st:?}"
    );
    let got = b.get(&s.name).await.unwrap();
    assert_eq!(got.state, PodState::Failed(PodFailure::Evicted));
    sim.shutdown().await;
}

/// The whole container OOM-killed (cgroup v2's `memory.oom.group`) under a running
/// command: the exec is `OutOfMemory`, not exit status 137, and the pod reads OOM-killed
/// (`tests/oom.rs` has the pod running on and the status coming late).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kill_during_an_exec_is_out_of_memory() {
    let (sim, b) = start().await;
    let s = spec();
    running(&b, &s).await;
    let exec = b.exec(
        ExecRequest::new(&s.name, argv(&["sh", "-c", "sleep 20"])),
        Arc::new(DiscardOutput),
    );
    let oom = {
        let sim = sim.clone();
        let name = s.name.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            sim.oom_kill(NS, &name);
        }
    };
    let (r, ()) = tokio::join!(exec, oom);
    let e = r.expect_err("an OOM kill is not an exit status");
    assert_eq!(e.kind(), ErrorKind::OutOfMemory, "{e}");
    let st = b
        .wait(
            &s.name,
            &WaitOpts::new(WaitFor::Terminated, Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(st.state, PodState::Failed(PodFailure::OomKilled), "{st:?}");
    assert!(
        st.message.as_deref().is_some_and(|m| m.contains("137")),
        "exit code 137 in {:?}",
        st.message
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_pod_reports_the_scheduler() {
    let (sim, b) = start().await;
    sim.set_unschedulable(true);
    let s = spec();
    b.create(&s).await.unwrap();
    let began = Instant::now();
    let st = b
        .wait(
            &s.name,
            &WaitOpts::new(WaitFor::Scheduled, Duration::from_secs(2)),
        )
        .await
        .unwrap();
    let took = began.elapsed();
    assert_eq!(
        st.state,
        PodState::Pending(PendingReason::Unschedulable),
        "{st:?}"
    );
    assert!(
        st.message.as_deref().is_some_and(|m| !m.is_empty()),
        "{st:?}"
    );
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(6),
        "the wait honours its timeout: {took:?}"
    );
    // Once a node is free the same pod runs.
    sim.set_unschedulable(false);
    let st = b
        .wait(
            &s.name,
            &WaitOpts::new(WaitFor::Running, Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(st.state, PodState::Running);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pull_failure_ends_the_wait_early() {
    let (sim, b) = start().await;
    sim.fail_image(
        "no-such-image",
        "manifest unknown: no-such-image:1 not found",
    );
    let mut s = spec();
    s.image = "registry.example/no-such-image:1".into();
    b.create(&s).await.unwrap();
    let began = Instant::now();
    let st = b
        .wait(
            &s.name,
            &WaitOpts::new(WaitFor::Running, Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(
        st.state,
        PodState::Pending(PendingReason::ImagePullFailed),
        "{st:?}"
    );
    assert!(
        st.message
            .as_deref()
            .is_some_and(|m| m.contains("manifest unknown")),
        "{st:?}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_exec_stream_is_lost_and_not_rerun() {
    let (sim, b) = start().await;
    let s = spec();
    running(&b, &s).await;
    sim.reset_requests();
    sim.drop_exec_streams(1);
    let out = Arc::new(CaptureOutput::new());
    let r = b
        .exec(
            ExecRequest::new(
                &s.name,
                argv(&["sh", "-c", "echo run >> runs.txt; echo started"]),
            ),
            out.clone(),
        )
        .await;
    let e = r.expect_err("a dropped stream is never a success");
    assert_eq!(e.kind(), ErrorKind::Lost, "{e}");
    let execs = sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/exec") && r.query.contains("runs.txt"))
        .count();
    assert_eq!(execs, 1, "the command was sent once");
    // Let a possibly still running command finish, then count its runs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cap = Arc::new(CaptureOutput::new());
    let code = b
        .exec(
            ExecRequest::new(
                &s.name,
                argv(&["sh", "-c", "cat runs.txt 2>/dev/null; true"]),
            ),
            cap.clone(),
        )
        .await
        .unwrap();
    assert_eq!(code, 0);
    let runs = String::from_utf8_lossy(&cap.stdout())
        .matches("run")
        .count();
    assert!(runs <= 1, "the command ran {runs} times");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_errors_on_create_and_get_are_retried() {
    for code in [409u16, 429, 500, 503] {
        let (sim, b) = start().await;
        let s = spec();
        sim.inject(Fault::on("POST", "/pods", 1, FaultAction::Status(code)));
        let st = b
            .create(&s)
            .await
            .unwrap_or_else(|e| panic!("create after an injected {code}: {e}"));
        assert_eq!(st.name, s.name);
        assert_eq!(pods_named(&sim, &s.name), 1);
        if code != 409 {
            sim.inject(Fault::on(
                "GET",
                &format!("/pods/{}", s.name),
                1,
                FaultAction::Status(code),
            ));
            let got = b
                .get(&s.name)
                .await
                .unwrap_or_else(|e| panic!("get after an injected {code}: {e}"));
            assert_eq!(got.name, s.name);
        }
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_errors_spend_the_budget_and_fail_transient() {
    let (sim, b) = start().await;
    sim.inject(Fault::on("GET", "/pods/", 100, FaultAction::Status(503)));
    sim.reset_requests();
    let e = b.get("scn-00000000").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    assert!(e.is_retryable());
    let sent = sim.requests().len();
    assert_eq!(sent, 8, "exactly the budget of requests was sent");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_watch_history_still_completes_the_wait() {
    let cfg = SimConfig {
        start_delay: Duration::from_millis(3000),
        ..SimConfig::default()
    };
    // Short watches: the renewal after the compaction starts from a forgotten version.
    let kube = KubeConfig {
        watch_timeout: Duration::from_secs(1),
        ..sim_config()
    };
    let (sim, b) = sim_backend(cfg, kube).await;
    let s = spec();
    b.create(&s).await.unwrap();
    sim.reset_requests();
    let compact = {
        let sim = sim.clone();
        let b = b.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            // Another pod moves the version on past the one the wait watches from...
            b.create(&spec()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            // ...the history in between is forgotten, and the server restarts, breaking
            // the open watch.
            sim.compact();
            sim.restart().await;
        }
    };
    let until_running = WaitOpts::new(WaitFor::Running, Duration::from_secs(20));
    let (st, ()) = tokio::join!(b.wait(&s.name, &until_running), compact);
    let st = st.unwrap();
    assert_eq!(st.state, PodState::Running, "{st:?}");
    let watches = sim
        .requests()
        .iter()
        .filter(|r| r.query.contains("watch=true"))
        .count();
    let gets = sim
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && !r.query.contains("watch=true"))
        .count();
    assert!(watches >= 1, "the wait watched");
    assert!(
        gets >= 2,
        "the broken watch was resynchronised ({gets} snapshots)"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_step_costs_few_requests() {
    let (sim, b) = start().await;
    let s = spec();
    sim.reset_requests();
    b.create(&s).await.unwrap();
    let st = b
        .wait(
            &s.name,
            &WaitOpts::new(WaitFor::Running, Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert_eq!(st.state, PodState::Running);
    let code = b
        .exec(
            ExecRequest::new(&s.name, argv(&["true"])),
            Arc::new(DiscardOutput),
        )
        .await
        .unwrap();
    assert_eq!(code, 0);
    b.delete(&s.name, &DeleteOpts::grace(Duration::ZERO))
        .await
        .unwrap();
    let reqs = sim.requests();
    for r in &reqs {
        eprintln!("request: {} {}?{}", r.method, r.path, r.query);
    }
    eprintln!("API requests for create+wait+exec+delete: {}", reqs.len());
    assert!(reqs.len() <= 5, "{} requests: {reqs:?}", reqs.len());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_reads_a_kubeconfig_file() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&path, "from-file").unwrap();
    let b = KubeBackend::new(KubeConfig {
        kubeconfig: Some(path),
        pause_command: sim_config().pause_command,
        ..KubeConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(b.namespace(), "from-file");
    let s = spec();
    running(&b, &s).await;
    assert_eq!(sim.pods("from-file").len(), 1);
    sim.shutdown().await;
}

/// The sealed digest of the sample input `v-in` (`sub/` 0755, `sub/f.txt` 0644
/// holding `content`), computed as every store does.
fn sample_input(pvc: &std::path::Path, content: &str) -> jetbridge_core::digest::Digest {
    use jetbridge_core::digest::{TreeDigest, TreeEntry, sha256};
    use std::os::unix::fs::PermissionsExt;
    let dir = pvc.join("artifacts/v-in/sub");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f.txt"), content).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.join("f.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut t = TreeDigest::new();
    t.add("sub", TreeEntry::Dir { mode: 0o755 });
    let h = sha256(content.as_bytes());
    t.add(
        "sub/f.txt",
        TreeEntry::File {
            mode: 0o644,
            size: content.len() as u64,
            sha256: &h,
        },
    );
    t.finish()
}

fn copy_of(
    sub: &str,
    digest: jetbridge_core::digest::Digest,
) -> jetbridge_core::ports::MountSource {
    jetbridge_core::ports::MountSource::CopyOf(
        jetbridge_core::ports::CopySource::new(
            jetbridge_core::ports::MountInfo::SharedVolume {
                volume: "artifacts".into(),
                sub_path: sub.into(),
            },
            digest,
        )
        .with_artifact("repo", "b-9"),
    )
}

/// A claim volume changed after sealing: the copy init container finds it out, the
/// wait for Running fails `Corrupt` naming the artifact and the build, and the step's
/// container never starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_claim_input_fails_corrupt_in_the_simulator() {
    let pvc = tempfile::tempdir().unwrap();
    let sealed = sample_input(pvc.path(), "input\n");
    std::fs::write(pvc.path().join("artifacts/v-in/sub/f.txt"), "inpuT\n").unwrap();
    let cfg = SimConfig {
        pvc_root: Some(pvc.path().to_owned()),
        ..SimConfig::default()
    };
    let (sim, b) = sim_backend(cfg, sim_config()).await;
    let mut s = spec();
    s.mounts = vec![jetbridge_core::ports::Mount::new(
        "in",
        copy_of("v-in", sealed),
    )];
    b.create(&s).await.unwrap();
    let e = b
        .wait(
            &s.name,
            &WaitOpts::new(WaitFor::Running, Duration::from_secs(30)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("\"repo\"") && msg.contains("\"b-9\""), "{msg}");
    let st = b.get(&s.name).await.unwrap();
    assert!(matches!(st.state, PodState::Failed(_)), "{st:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helper_and_mounts_in_the_simulator() {
    let pvc = tempfile::tempdir().unwrap();
    let sealed = sample_input(pvc.path(), "input\n");
    let cfg = SimConfig {
        pvc_root: Some(pvc.path().to_owned()),
        ..SimConfig::default()
    };
    let (sim, b) = sim_backend(cfg, sim_config()).await;
    let mut s = spec();
    s.transfer = true;
    let info = |sub: &str| jetbridge_core::ports::MountInfo::SharedVolume {
        volume: "artifacts".into(),
        sub_path: sub.into(),
    };
    use jetbridge_core::ports::{Container, Mount, MountSource};
    s.mounts = vec![
        Mount::new("in", copy_of("v-in", sealed)),
        Mount::new("out", MountSource::WriteInto(info("v-out"))),
        Mount::new("scratch", MountSource::Empty),
    ];
    running(&b, &s).await;
    let run = |c: Container, script: &str| {
        let out = Arc::new(CaptureOutput::new());
        let req = ExecRequest::new(&s.name, argv(&["sh", "-c", script])).container(c);
        let b = b.clone();
        async move {
            let code = b.exec(req, out.clone()).await.unwrap();
            (code, String::from_utf8_lossy(&out.stdout()).into_owned())
        }
    };
    // The copy is private: changing it leaves the volume alone.
    assert_eq!(
        run(Container::Main, "cat in/sub/f.txt").await,
        (0, "input\n".into())
    );
    assert_eq!(
        run(Container::Main, "echo changed > in/sub/f.txt").await.0,
        0
    );
    let orig = std::fs::read_to_string(pvc.path().join("artifacts/v-in/sub/f.txt")).unwrap();
    assert_eq!(orig, "input\n");
    // Outputs land in the volume itself.
    assert_eq!(run(Container::Main, "echo built > out/o.txt").await.0, 0);
    let o = std::fs::read_to_string(pvc.path().join("artifacts/v-out/o.txt")).unwrap();
    assert_eq!(o, "built\n");
    // The helper sees the main container's scratch directory.
    assert_eq!(
        run(Container::Main, "echo shared > scratch/s.txt").await.0,
        0
    );
    assert_eq!(
        run(Container::Transfer, "cat scratch/s.txt").await,
        (0, "shared\n".into())
    );
    sim.shutdown().await;
}

/// An exec into a container that is not running is answered as the kubelet's `container
/// not found`: a plain 500 on 1.29, an `InternalError` status frame from 1.30. Either way
/// it is the container's state, reported at once as `Conflict` (the step runner then
/// asks the pod why), never resent as if the request had not arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_into_a_container_not_running_is_a_conflict_sent_once() {
    use jetbridge_kube_sim::ExecProtocols;
    for protocols in [ExecProtocols::V4Only, ExecProtocols::V5AndV4] {
        let config = SimConfig {
            exec_protocols: protocols,
            start_delay: Duration::from_secs(30),
            ..SimConfig::default()
        };
        let (sim, b) = sim_backend(config, sim_config()).await;
        let s = spec();
        b.create(&s).await.expect("create");
        b.wait(
            &s.name,
            &WaitOpts::new(WaitFor::Scheduled, Duration::from_secs(30)),
        )
        .await
        .expect("scheduled");
        sim.reset_requests();
        let out = Arc::new(CaptureOutput::new());
        let err = b
            .exec(ExecRequest::new(&s.name, argv(&["true"])), out)
            .await
            .expect_err("the container has not started");
        assert_eq!(err.kind(), ErrorKind::Conflict, "{protocols:?}: {err}");
        assert!(err.message().contains("container not found"), "{err}");
        let execs = sim
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/exec"))
            .count();
        assert_eq!(execs, 1, "{protocols:?}: sent once, not retried");
        sim.shutdown().await;
    }
}

/// A registry's 429 or 5xx is retried by the kubelet, so the pod is waited for: it
/// starts once a pull succeeds, and a start deadline that passes says what the pull
/// last met. Only permanent answers end the wait early (see
/// `image_pull_failure_ends_the_wait_early`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_image_pull_failures_are_waited_out() {
    let (sim, b) = start().await;
    let rate_limited = "429 Too Many Requests - Server message: toomanyrequests: You have reached your pull rate limit";
    sim.fail_image_times("flaky-registry", rate_limited, 2);
    let mut s = spec();
    s.image = "flaky-registry.example/busybox:1.36".into();
    b.create(&s).await.unwrap();
    let st = b
        .wait(
            &s.name,
            &WaitOpts::new(WaitFor::Running, Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(st.state, PodState::Running, "{st:?}");

    // A pull that keeps failing transiently: still starting when the deadline passes,
    // with the registry's words.
    sim.fail_image("always-429", rate_limited);
    let mut s = spec();
    s.image = "always-429.example/busybox:1.36".into();
    b.create(&s).await.unwrap();
    let st = b
        .wait(
            &s.name,
            &WaitOpts::new(WaitFor::Running, Duration::from_secs(2)),
        )
        .await
        .unwrap();
    assert_eq!(
        st.state,
        PodState::Pending(PendingReason::ContainerCreating),
        "{st:?}"
    );
    assert!(
        st.message
            .as_deref()
            .is_some_and(|m| m.contains("toomanyrequests")),
        "{st:?}"
    );
    sim.shutdown().await;
}

/// A zero grace period is sent as one second: `gracePeriodSeconds: 0` would be a force
/// deletion, gone from the API before the kubelet has stopped anything, and a pod that
/// is gone must mean its processes have stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_grace_delete_is_still_graceful() {
    let (sim, b) = start().await;
    let s = spec();
    running(&b, &s).await;
    // With the kubelet frozen nothing confirms the deletion, so what the API made of
    // it stays visible.
    sim.freeze_kubelet(true);
    b.delete(&s.name, &DeleteOpts::grace(Duration::ZERO))
        .await
        .expect("delete");
    let pod = named(sim.pods(NS), &s.name)
        .expect("still there: a graceful deletion waits for the kubelet");
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 1, "{pod}");
    sim.freeze_kubelet(false);
    sim.shutdown().await;
}

/// A namespace that does not exist, or is being deleted, is said plainly (`Invalid`: the
/// operator must act), and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_terminating_namespace_is_said_plainly() {
    let (sim, b) = start().await;
    sim.remove_namespace(NS);
    let err = b.create(&spec()).await.expect_err("no namespace");
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(
        err.message()
            .contains(&format!("namespace {NS} does not exist")),
        "{err}"
    );
    sim.terminate_namespace(NS);
    let err = b.create(&spec()).await.expect_err("namespace going");
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(
        err.message()
            .contains(&format!("namespace {NS} is being deleted")),
        "{err}"
    );
    assert!(sim.pods(NS).is_empty() && sim.secrets(NS).is_empty());
    sim.shutdown().await;
}

/// The garbage collector deletes a removed pod's Secret asynchronously. A create of a
/// pod by the same name (a retried create) that meets the old env Secret replaces it
/// rather than adopting a Secret the collector is about to delete: here the collector
/// runs while the ownership patch is delayed, and the new pod keeps its Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_meets_a_secret_being_collected_replaces_it() {
    let config = SimConfig {
        gc_delay: Duration::from_millis(300),
        ..SimConfig::default()
    };
    let (sim, b) = sim_backend(config, sim_config()).await;
    let mut s = spec();
    s.env.insert("TOKEN".into(), "s3cret".into());
    running(&b, &s).await;
    b.delete(&s.name, &DeleteOpts::grace(Duration::from_secs(1)))
        .await
        .expect("delete");
    let gone = b
        .wait(
            &s.name,
            &WaitOpts::new(WaitFor::Terminated, Duration::from_secs(30)),
        )
        .await;
    assert!(
        gone.as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::NotFound),
        "{gone:?}"
    );
    let secret = format!("{}-env", s.name);
    assert!(
        named(sim.secrets(NS), &secret).is_some(),
        "not collected yet"
    );
    // The collector runs while the new pod's ownership patch is on its way.
    sim.inject(Fault::on(
        "PATCH",
        "/secrets/",
        1,
        FaultAction::Delay(Duration::from_secs(1)),
    ));
    let st = b.create(&s).await.expect("the create succeeds");
    assert_eq!(st.name, s.name);
    let pod = named(sim.pods(NS), &s.name).expect("the new pod");
    let owner = named(sim.secrets(NS), &secret)
        .map(|x| x["metadata"]["ownerReferences"][0]["uid"].clone())
        .expect("the env secret is there, after the collector ran");
    assert_eq!(owner, pod["metadata"]["uid"], "owned by the new pod");
    sim.shutdown().await;
}

/// A node that vanishes: the exec goes silent without closing, and no `NodeLost` or
/// phase `Unknown` is ever written. The node lifecycle controller's `Ready=False`,
/// beyond `node_lost_after`, ends the exec as lost and the pod reads `NodeLost`; the
/// command never hangs until the step's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_ends_a_silent_exec_and_reads_node_lost() {
    let kube = KubeConfig {
        node_lost_after: Duration::from_millis(400),
        exec_pod_watch_after: Duration::from_millis(100),
        ..sim_config()
    };
    let (sim, b) = sim_backend(SimConfig::default(), kube).await;
    let s = spec();
    running(&b, &s).await;
    let out = Arc::new(CaptureOutput::new());
    let exec = {
        let b = b.clone();
        let name = s.name.clone();
        let out = out.clone();
        tokio::spawn(async move {
            let argv = argv(&["sh", "-c", "echo started; sleep 3600"]);
            b.exec(ExecRequest::new(&name, argv), out).await
        })
    };
    eventually("the command runs", || out.stdout() == b"started\n").await;
    // The taint manager would act only after five minutes: the verdict must come
    // from the not-ready mark alone.
    sim.lose_node(Duration::from_millis(200), Duration::from_secs(300));
    // A guard against a hang, not a measurement.
    let r = tokio::time::timeout(Duration::from_secs(60), exec)
        .await
        .expect("the exec does not hang on a lost node")
        .expect("joins");
    let err = r.expect_err("the command cannot have succeeded");
    assert_eq!(err.kind(), ErrorKind::Lost, "{err}");
    let st = b.get(&s.name).await.expect("the pod is still in the API");
    assert_eq!(st.state, PodState::Failed(PodFailure::NodeLost), "{st:?}");
    assert!(
        st.message
            .as_deref()
            .is_some_and(|m| m.contains("stopped reporting")),
        "{st:?}"
    );
    sim.shutdown().await;
}

/// The later stages of a node loss: the taint-eviction controller's
/// `DeletionByTaintManager` leaves the pod `Running` and terminating (no kubelet
/// confirms), which reads `NodeLost`; deleting the node object lets pod GC remove it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taint_eviction_and_pod_gc_of_a_lost_node() {
    let kube = KubeConfig {
        node_lost_after: Duration::from_secs(3600),
        ..sim_config()
    };
    let (sim, b) = sim_backend(SimConfig::default(), kube).await;
    let s = spec();
    running(&b, &s).await;
    sim.lose_node(Duration::from_millis(50), Duration::from_millis(100));
    let st = b
        .wait(
            &s.name,
            &WaitOpts::new(WaitFor::Terminated, Duration::from_secs(30)),
        )
        .await
        .expect("wait");
    assert_eq!(st.state, PodState::Failed(PodFailure::NodeLost), "{st:?}");
    eventually("the taint manager deletes it", || {
        named(sim.pods(NS), &s.name).is_some_and(|p| p["metadata"]["deletionTimestamp"].is_string())
    })
    .await;
    let pod = named(sim.pods(NS), &s.name).expect("still there: no kubelet confirms the deletion");
    assert_eq!(pod["status"]["phase"], "Running");
    sim.delete_node();
    assert_eq!(pods_named(&sim, &s.name), 0, "pod GC removed it");
    sim.shutdown().await;
}

/// Kubernetes lets an exec'd command run on when its client goes away, and so does the
/// simulator now. A command whose exec is abandoned (the future dropped: a timeout or
/// an abort) or whose stream broke is really stopped by the adapter's kill script, not
/// merely forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_or_broken_exec_is_really_killed() {
    let (sim, b) = start().await;
    let s = spec();
    running(&b, &s).await;
    let req = |mark: &str| {
        let env = std::collections::BTreeMap::from([("MARK".to_owned(), mark.to_owned())]);
        ExecRequest::new(&s.name, argv(&["sh", "-c", "echo started; sleep 3600"])).env(env)
    };

    // Abandoned: the caller stops waiting (the future is dropped).
    let mark = StepHandle::random().short().to_owned();
    let out = Arc::new(CaptureOutput::new());
    let task = {
        let (b, r, out) = (b.clone(), req(&mark), out.clone());
        tokio::spawn(async move { b.exec(r, out).await })
    };
    eventually("the command runs", || out.stdout() == b"started\n").await;
    assert!(marked_processes(&mark) > 0, "the command is seen running");
    task.abort();
    assert!(task.await.is_err_and(|e| e.is_cancelled()));
    eventually("the abandoned command is killed", || {
        marked_processes(&mark) == 0
    })
    .await;

    // Broken: the stream ends without a status after the first output.
    let mark = StepHandle::random().short().to_owned();
    sim.drop_exec_streams(1);
    let err = b
        .exec(req(&mark), Arc::new(CaptureOutput::new()))
        .await
        .expect_err("a broken stream is never a success");
    assert_eq!(err.kind(), ErrorKind::Lost, "{err}");
    // The simulator leaves it running, as a node does
    // (kube-sim `a_dropped_streams_command_runs_on`).
    eventually("the command of a broken stream is killed", || {
        marked_processes(&mark) == 0
    })
    .await;
    sim.shutdown().await;
}

/// With cgroup v1 or `singleProcessOOMKill` the OOM killer takes only the command: it
/// exits 137 and the pod shows nothing. The container's `oom_kill` count tells, and the
/// exec says `OutOfMemory` (the step is reported OOM-killed, not "exited with status
/// 137"). A SIGKILL that is not the OOM killer's stays an exit status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_alone_killed_for_memory_is_out_of_memory() {
    let kube = KubeConfig {
        // The simulator keeps the counter in the container's working directory.
        oom_counter_files: vec!["memory.events".into()],
        ..sim_config()
    };
    let (sim, b) = sim_backend(SimConfig::default(), kube).await;
    let s = spec();
    running(&b, &s).await;
    let out = Arc::new(CaptureOutput::new());
    let exec = {
        let (b, name, out) = (b.clone(), s.name.clone(), out.clone());
        tokio::spawn(async move {
            let argv = argv(&["sh", "-c", "echo started; exec sleep 3600"]);
            b.exec(ExecRequest::new(&name, argv), out).await
        })
    };
    eventually("the command runs", || out.stdout() == b"started\n").await;
    sim.oom_kill_exec(NS, &s.name);
    let err = exec
        .await
        .expect("joins")
        .expect_err("an OOM kill is not an exit status");
    assert_eq!(err.kind(), ErrorKind::OutOfMemory, "{err}");
    assert!(err.message().contains("out-of-memory killer"), "{err}");
    let st = b.get(&s.name).await.unwrap();
    assert_eq!(st.state, PodState::Running, "the pod shows nothing: {st:?}");

    // Killed, but not for memory: the count did not rise.
    let code = b
        .exec(
            ExecRequest::new(&s.name, argv(&["sh", "-c", "kill -9 $$"])),
            Arc::new(CaptureOutput::new()),
        )
        .await
        .expect("an exit status");
    assert_eq!(code, 137);
    sim.shutdown().await;
}

/// A proxy that drops `Sec-WebSocket-Protocol` makes the server fall back to the
/// unversioned `channel.k8s.io`, which carries no exit status: the exec is refused as
/// `Unsupported`, saying what to fix, never taken for a passing failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_subprotocol_without_status_is_unsupported_and_said_plainly() {
    let config = SimConfig {
        exec_protocols: jetbridge_kube_sim::ExecProtocols::HeaderStripped,
        ..SimConfig::default()
    };
    let (sim, b) = sim_backend(config, sim_config()).await;
    let s = spec();
    running(&b, &s).await;
    let err = b
        .exec(
            ExecRequest::new(&s.name, argv(&["true"])),
            Arc::new(CaptureOutput::new()),
        )
        .await
        .expect_err("no exit status can come back");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.message().contains("Sec-WebSocket-Protocol"), "{err}");
    sim.shutdown().await;
}

/// An image without the programs jetbridge execs commands through (`env`, `sh`) fails
/// as a container runtime fails it, an `InternalError` status, not exit 127; the
/// adapter says which program is missing, as `Invalid` (the image must change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_without_env_is_said_plainly() {
    let (sim, b) = start().await;
    sim.image_lacks("distroless", &["env", "sh"]);
    let mut s = spec();
    s.image = "gcr.io/distroless/static:nonroot".into();
    running(&b, &s).await;
    let err = b
        .exec(
            ExecRequest::new(&s.name, argv(&["/app/server", "--version"])),
            Arc::new(CaptureOutput::new()),
        )
        .await
        .expect_err("no env in the image");
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(
        err.message().contains("\"env\": executable file not found")
            && err.message().contains("distroless"),
        "{err}"
    );
    sim.shutdown().await;
}

// --- Retry-After under API Priority and Fairness (issue 17, point 11) ---

/// A budget whose own backoff is a few milliseconds, so that any longer wait is the
/// server's `Retry-After`.
fn tiny_backoff() -> jetbridge_kube::RequestBudget {
    jetbridge_kube::RequestBudget {
        max_requests: 8,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
    }
}

fn pod_posts(sim: &Simulator) -> usize {
    let path = format!("/api/v1/namespaces/{NS}/pods");
    sim.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == path)
        .count()
}

/// API Priority and Fairness refuses a request with 429, `Retry-After` and a plain-text
/// body, not a `Status` (k8s.io/apiserver/pkg/server/filters/priority-and-fairness.go,
/// `tooManyRequests`). The create waits what the server asks each time, however small
/// its own backoff, instead of spending its requests at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_and_fairness_retry_after_is_honoured() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&path, NS).unwrap();
    let b = KubeBackend::new(KubeConfig {
        kubeconfig: Some(path),
        request_budget: tiny_backoff(),
        ..sim_config()
    })
    .await
    .unwrap();
    sim.inject(Fault::on(
        "POST",
        &format!("/api/v1/namespaces/{NS}/pods"),
        2,
        FaultAction::Throttled {
            retry_after_secs: 1,
        },
    ));
    sim.reset_requests();
    let s = spec();
    let t0 = Instant::now();
    b.create(&s).await.expect("created on the third request");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "two waits of the server's 1 s Retry-After, took {took:?}"
    );
    assert_eq!(pod_posts(&sim), 3);
    let counts = b.requests().snapshot();
    assert!(counts.contains(&("create", 429, 2)), "{counts:?}");
    assert!(counts.contains(&("create", 201, 1)), "{counts:?}");
    assert_eq!(pods_named(&sim, &s.name), 1);
    sim.shutdown().await;
}

/// The same through a client the tests build for `KubeBackend::from_client`, with
/// `jetbridge_kube::build_client` (tests/common).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_through_from_client() {
    let (sim, b) = sim_backend(
        SimConfig::default(),
        KubeConfig {
            request_budget: tiny_backoff(),
            ..sim_config()
        },
    )
    .await;
    sim.inject(Fault::on(
        "POST",
        "/pods",
        1,
        FaultAction::Throttled {
            retry_after_secs: 1,
        },
    ));
    sim.reset_requests();
    let t0 = Instant::now();
    b.create(&spec())
        .await
        .expect("created on the second request");
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(1), "took {took:?}");
    assert_eq!(pod_posts(&sim), 2);
    sim.shutdown().await;
}

// --- end of Retry-After under API Priority and Fairness ---

/// A step's `timeout` drops its exec (core `StepRunner::exec_step` wraps it in
/// `tokio::time::timeout`): the command and what it started in the background are
/// really killed, where a cluster would let them run on. Deleting the pod then stops a
/// command still running in it as a cluster does: the pause program exits 0 on TERM at
/// once (no wait for the grace period), the kernel SIGKILLs what was exec'd beside it,
/// and its exit, where one is reported, is 137, never 143.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_command_is_really_killed_and_a_deleted_pods_command_ends_137() {
    let (sim, b) = start().await;
    let s = spec();
    running(&b, &s).await;
    let req = |mark: &str, script: &str| {
        let env = std::collections::BTreeMap::from([("MARK".to_owned(), mark.to_owned())]);
        ExecRequest::new(&s.name, argv(&["sh", "-c", script])).env(env)
    };

    let mark = StepHandle::random().short().to_owned();
    let out = Arc::new(CaptureOutput::new());
    let timed = {
        let (b, r, out) = (
            b.clone(),
            req(&mark, "sleep 3600 & echo started; sleep 3600"),
            out.clone(),
        );
        tokio::spawn(
            async move { tokio::time::timeout(Duration::from_secs(5), b.exec(r, out)).await },
        )
    };
    eventually("the command runs", || out.stdout() == b"started\n").await;
    assert!(
        marked_processes(&mark) >= 2,
        "the command and its background child are seen running"
    );
    assert!(
        timed.await.expect("joins").is_err(),
        "the exec outlived its timeout"
    );
    eventually("the timed-out command and its child are killed", || {
        marked_processes(&mark) == 0
    })
    .await;

    let mark = StepHandle::random().short().to_owned();
    let out = Arc::new(CaptureOutput::new());
    let running_cmd = {
        let (b, r, out) = (
            b.clone(),
            req(&mark, "echo started; sleep 3600"),
            out.clone(),
        );
        tokio::spawn(async move { b.exec(r, out).await })
    };
    eventually("the second command runs", || out.stdout() == b"started\n").await;
    let asked = Instant::now();
    b.delete(&s.name, &DeleteOpts::grace(Duration::from_secs(30)))
        .await
        .expect("delete");
    // Lost, when the adapter's watch of the pod sees it end before the status frame.
    match running_cmd.await.expect("joins") {
        Ok(code) => assert_eq!(code, 137, "SIGKILLed with its container"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Lost, "{e}"),
    }
    eventually("the pod is removed", || pods_named(&sim, &s.name) == 0).await;
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "the pause program ended on TERM, not at the end of the 30 s grace period"
    );
    assert_eq!(marked_processes(&mark), 0, "nothing of the command is left");
    sim.shutdown().await;
}
