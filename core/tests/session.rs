//! The worker session on the in-memory fakes: many builds on one runner, each with its
//! own event sink; a lost registration stops every build; the reaper spares every
//! active step of the process; shutdown signs off.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jetbridge_core::ErrorKind;
use jetbridge_core::images::ImageResolver;
use jetbridge_core::names::label;
use jetbridge_core::plan::{Vars, parse_pipeline};
use jetbridge_core::ports::{ArtifactRegistry, DiscardOutput, OutputSink, PodSpec, Pods};
use jetbridge_core::services::{
    AbortHandle, BuildEvents, BuildOutcome, BuildRequest, BuildRunner, BuildStatus,
    HeartbeatConfig, NoEvents, SessionConfig, StepConfig, StepFailure, StepSummary, WorkerSession,
    abort_pair,
};
use jetbridge_memory::{MemoryRuntime, RegistryOp};
use tokio::sync::Semaphore;

const WORKER: &str = "session-worker";

fn quick() -> StepConfig {
    StepConfig {
        scheduling_timeout: Duration::from_millis(500),
        startup_timeout: Duration::from_secs(5),
        delete_grace: Duration::ZERO,
        keep_pods: false,
        create_retries: 3,
    }
}

/// Records the step names it is told about.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl BuildEvents for Recorder {
    fn step_started(&self, name: &str, _: &str) {
        self.0.lock().unwrap().push(format!("started {name}"));
    }
    fn step_output(&self, _: &str) -> Arc<dyn OutputSink> {
        Arc::new(DiscardOutput)
    }
    fn step_finished(&self, s: &StepSummary) {
        self.0.lock().unwrap().push(format!("finished {}", s.name));
    }
    fn notice(&self, _: &str) {}
}

fn pipeline(task: &str, script: &str) -> Arc<jetbridge_core::plan::Pipeline> {
    let yaml = format!(
        "jobs:\n- name: j\n  plan:\n  - task: {task}\n    config:\n      platform: linux\n      run: {{path: sh, args: [-c, {}]}}\n",
        serde_json::to_string(script).unwrap()
    );
    Arc::new(parse_pipeline(&yaml, "test.yml", &Vars::new()).expect("parses"))
}

async fn session(m: &MemoryRuntime, config: SessionConfig) -> WorkerSession {
    let runner = BuildRunner::new(
        m.runtime(),
        quick(),
        ImageResolver::new(),
        WORKER,
        Arc::new(NoEvents),
    );
    WorkerSession::start(m.runtime(), runner, config)
        .await
        .expect("the session starts")
}

/// A program `name` that says it started, then blocks until killed. One permit per
/// start: starts that come before anyone waits are all counted (a `Notify` would keep
/// only one of them).
fn blocking_program(m: &MemoryRuntime, name: &str) -> Arc<Semaphore> {
    let started = Arc::new(Semaphore::new(0));
    let told = started.clone();
    m.backend.register_program(name, move |_ctx| {
        let told = told.clone();
        async move {
            told.add_permits(1);
            futures::future::pending::<i32>().await
        }
    });
    started
}

/// Wait (bounded) for one more start of a blocking program.
async fn one_started(started: &Semaphore) {
    tokio::time::timeout(Duration::from_secs(30), started.acquire())
        .await
        .expect("a command started")
        .expect("the count stays open")
        .forget();
}

fn spawn_build(
    s: &WorkerSession,
    req: BuildRequest,
) -> (
    Arc<AbortHandle>,
    tokio::task::JoinHandle<jetbridge_core::Result<BuildOutcome>>,
) {
    let (handle, signal) = abort_pair();
    let handle = Arc::new(handle);
    let s = s.clone();
    let h = handle.clone();
    let task = tokio::spawn(async move { s.run(req.with_abort(signal), h).await });
    (handle, task)
}

async fn joined(
    t: tokio::task::JoinHandle<jetbridge_core::Result<BuildOutcome>>,
) -> jetbridge_core::Result<BuildOutcome> {
    tokio::time::timeout(Duration::from_secs(60), t)
        .await
        .expect("the build ends")
        .expect("the build task joins")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_runner_serves_builds_each_with_its_own_events() {
    let m = MemoryRuntime::new();
    let s = session(&m, SessionConfig::new(WORKER).with_reap_every(None)).await;
    let (a_events, b_events) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let a = BuildRequest::new(pipeline("alpha", "true"), "j", 1, "build-a")
        .with_events(a_events.clone());
    let b = BuildRequest::new(pipeline("beta", "exit 3"), "j", 2, "build-b")
        .with_events(b_events.clone());
    let (_, ta) = spawn_build(&s, a);
    let (_, tb) = spawn_build(&s, b);
    let (oa, ob) = (joined(ta).await.unwrap(), joined(tb).await.unwrap());
    assert_eq!(oa.status, BuildStatus::Succeeded);
    assert_eq!(ob.status, BuildStatus::Failed);
    assert_eq!(
        *a_events.0.lock().unwrap(),
        ["started task: alpha", "finished task: alpha"]
    );
    assert_eq!(
        *b_events.0.lock().unwrap(),
        ["started task: beta", "finished task: beta"]
    );
    assert!(s.running().is_empty(), "ended builds leave the running set");
    s.shutdown().await.expect("shuts down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_build_of_the_same_id_is_refused_and_abort_picks_one_build() {
    let m = MemoryRuntime::new();
    let started = blocking_program(&m, "block");
    let s = session(&m, SessionConfig::new(WORKER).with_reap_every(None)).await;
    let (_, t1) = spawn_build(
        &s,
        BuildRequest::new(pipeline("one", "block"), "j", 1, "same"),
    );
    one_started(&started).await;
    let (_, t2) = spawn_build(
        &s,
        BuildRequest::new(pipeline("two", "true"), "j", 2, "same"),
    );
    let err = joined(t2).await.expect_err("a duplicate id is refused");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert_eq!(s.running(), ["same"]);
    assert!(!s.abort("other"), "no such build runs here");
    assert!(s.abort("same"));
    let o = joined(t1).await.unwrap();
    assert_eq!(o.status, BuildStatus::Aborted);
    assert!(s.running().is_empty());
    s.shutdown().await.expect("shuts down");
    assert_eq!(m.backend.live_pods(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_registration_stops_every_build_and_refuses_new_ones() {
    let m = MemoryRuntime::new();
    let started = blocking_program(&m, "block");
    // Renewals every 50 ms against a 300 ms registration, and every renewal fails.
    let mut hb = HeartbeatConfig::with_ttl(WORKER, Duration::from_millis(300));
    hb.interval = Duration::from_millis(50);
    hb.margin = Duration::from_millis(50);
    let s = session(
        &m,
        SessionConfig::new(WORKER)
            .with_heartbeat(hb)
            .with_reap_every(None),
    )
    .await;
    let (_, t1) = spawn_build(
        &s,
        BuildRequest::new(pipeline("one", "block"), "j", 1, "b1"),
    );
    one_started(&started).await;
    m.registry
        .fail_next(RegistryOp::Heartbeat, usize::MAX, ErrorKind::Transient);
    let why = tokio::time::timeout(Duration::from_secs(30), s.wait_lost())
        .await
        .expect("the loss is noticed");
    assert!(why.contains("lost its registration"), "{why}");
    let o = joined(t1).await.unwrap();
    assert_eq!(o.status, BuildStatus::Errored, "{o:?}");
    assert!(
        matches!(
            &o.failure,
            Some((_, StepFailure::Infrastructure(_))) | Some((_, StepFailure::WorkerLost(_)))
        ),
        "{:?}",
        o.failure
    );
    // A build started after the loss ends at once, without running anything.
    let (_, t2) = spawn_build(&s, BuildRequest::new(pipeline("two", "true"), "j", 2, "b2"));
    let o2 = joined(t2).await.unwrap();
    assert_eq!(o2.status, BuildStatus::Errored, "{o2:?}");
    assert!(o2.steps.is_empty(), "nothing ran: {:?}", o2.steps);
    assert_eq!(m.backend.live_pods(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_reaper_spares_every_running_step_and_takes_a_stray_pod() {
    let m = MemoryRuntime::new();
    let started = blocking_program(&m, "block");
    let s = session(
        &m,
        SessionConfig::new(WORKER).with_reap_every(Some(Duration::from_millis(50))),
    )
    .await;
    // A pod of this worker whose step runs nowhere: what a crashed build leaves.
    let stray = PodSpec::new("stray-pod", "busybox")
        .with_label(label::MANAGED_BY, label::MANAGED_BY_VALUE)
        .with_label(label::WORKER, WORKER)
        .with_label(label::HANDLE, "stray");
    m.backend.create(&stray).await.expect("stray pod");
    let (h1, t1) = spawn_build(
        &s,
        BuildRequest::new(pipeline("one", "block"), "j", 1, "b1"),
    );
    let (h2, t2) = spawn_build(
        &s,
        BuildRequest::new(pipeline("two", "block"), "j", 2, "b2"),
    );
    for _ in 0..2 {
        one_started(&started).await;
    }
    // Only the periodic pass can take the stray pod: nothing else here reaps.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while m.backend.pod_names().iter().any(|p| p == "stray-pod") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the periodic reaper never took the stray pod"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both running steps' pods are spared, by the periodic passes and by one asked for.
    assert_eq!(m.backend.live_pods(), 2, "{:?}", m.backend.pod_names());
    let report = s.reap_now().await.expect("a pass");
    assert!(report.pods_deleted.is_empty(), "{report:?}");
    assert_eq!(m.backend.live_pods(), 2, "{:?}", m.backend.pod_names());
    h1.abort();
    h2.abort();
    assert_eq!(joined(t1).await.unwrap().status, BuildStatus::Aborted);
    assert_eq!(joined(t2).await.unwrap().status, BuildStatus::Aborted);
    s.shutdown().await.expect("shuts down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_signs_off_so_the_name_is_free_at_once() {
    let m = MemoryRuntime::new();
    let s = session(&m, SessionConfig::new(WORKER)).await;
    let err = WorkerSession::start(
        m.runtime(),
        BuildRunner::new(
            m.runtime(),
            quick(),
            ImageResolver::new(),
            WORKER,
            Arc::new(NoEvents),
        ),
        SessionConfig::new(WORKER),
    )
    .await
    .expect_err("the name is held");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    s.shutdown().await.expect("shuts down");
    assert!(
        m.registry
            .workers()
            .await
            .unwrap()
            .iter()
            .all(|w| w.name != WORKER || !w.alive),
        "signed off"
    );
    let again = session(&m, SessionConfig::new(WORKER)).await;
    again.shutdown().await.expect("shuts down");
}

#[tokio::test]
async fn a_reaper_of_another_worker_is_refused() {
    let m = MemoryRuntime::new();
    let runner = BuildRunner::new(
        m.runtime(),
        quick(),
        ImageResolver::new(),
        WORKER,
        Arc::new(NoEvents),
    );
    let config = SessionConfig::new(WORKER)
        .with_reaper(jetbridge_core::services::ReaperConfig::new("someone-else"));
    let err = WorkerSession::start(m.runtime(), runner, config)
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Invalid);
}
