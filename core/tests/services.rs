//! The services on the in-memory fakes: the seed's `create_volume_for_artifact` tests,
//! the reaper, and every failure class of the step runner, each scripted with faults.

use jetbridge_core::ports::{DeleteOpts, WaitOpts};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jetbridge_core::ErrorKind;
use jetbridge_core::images::ImageResolver;
use jetbridge_core::plan::{Vars, parse_pipeline};
use jetbridge_core::ports::{
    ArtifactFilter, ArtifactRegistry, ArtifactState, Holder, Runtime, VolumeStore, bytes_stream,
    collect_stream,
};
use jetbridge_core::services::{
    ArtifactRequest, ArtifactService, BuildOutcome, BuildRequest, BuildRunner, BuildStatus,
    NoEvents, Reaper, ReaperConfig, StepConfig, StepFailure,
};
use jetbridge_memory::{MemoryRuntime, RegistryOp, VolumeOp};

const WORKER: &str = "w1";

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *data).expect("tar entry");
    }
    b.into_inner().expect("tar")
}

fn request(name: &str) -> ArtifactRequest {
    ArtifactRequest {
        build: "b1".into(),
        step: "s1".into(),
        name: name.into(),
        holder: Holder::new(WORKER, "b1"),
        retain_until: None,
    }
}

fn reaper(rt: &Runtime) -> Reaper {
    let mut cfg = ReaperConfig::new(WORKER);
    cfg.orphan_volume_grace = Duration::ZERO;
    Reaper::new(
        Some(rt.pods.clone()),
        rt.volumes.clone(),
        rt.registry.clone(),
        cfg,
    )
}

// ---- create_volume_for_artifact (the seed's tests) ---------------------------------

#[tokio::test]
async fn create_volume_for_artifact_happy_path() {
    let m = MemoryRuntime::new();
    let rt = m.runtime();
    let svc = ArtifactService::new(rt.volumes.clone(), rt.registry.clone());
    let v = svc
        .create_volume_for_artifact(&request("repo"))
        .await
        .expect("created");
    assert_eq!(v.artifact().state, ArtifactState::Creating);
    assert_eq!(v.artifact().name, "repo");
    // Registered and referenced by the build from the start.
    let rec = rt.registry.get(&v.artifact().id).await.expect("registered");
    assert_eq!(rec.volume, *v.handle());
    v.write_tar(bytes_stream(tar_of(&[("a.txt", b"hello")])))
        .await
        .expect("streamed in");
    let (ready, info) = v.seal().await.expect("sealed");
    assert_eq!(ready.state, ArtifactState::Ready);
    assert_eq!(ready.size, Some(5));
    assert_eq!(ready.digest, info.digest);
    let back = collect_stream(v.read_tar().await.expect("readable"))
        .await
        .expect("read");
    let mut ar = tar::Archive::new(std::io::Cursor::new(back));
    let names: Vec<String> = ar
        .entries()
        .expect("entries")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .to_string_lossy()
                .trim_start_matches("./")
                .to_owned()
        })
        .filter(|p| !p.is_empty())
        .collect();
    assert!(names.contains(&"a.txt".to_owned()), "{names:?}");
}

#[tokio::test]
async fn create_volume_for_artifact_without_store_is_a_clear_error() {
    let m = MemoryRuntime::new();
    let svc = ArtifactService::new(None, m.registry.clone());
    let err = svc
        .create_volume_for_artifact(&request("repo"))
        .await
        .expect_err("no store");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.message().contains("no volume store"), "{err}");
    assert!(m.registry.is_empty(), "nothing registered");
}

#[tokio::test]
async fn create_volume_for_artifact_registration_failure_leaves_nothing_behind() {
    let m = MemoryRuntime::new();
    let rt = m.runtime();
    let svc = ArtifactService::new(rt.volumes.clone(), rt.registry.clone());
    m.registry
        .fail_next(RegistryOp::Register, 1, ErrorKind::Transient);
    let err = svc
        .create_volume_for_artifact(&request("repo"))
        .await
        .expect_err("registration fails");
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert!(err.is_retryable());
    // The service deleted the volume it had created.
    assert!(m.volumes.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn registration_failure_with_failed_cleanup_leaves_a_collectable_volume() {
    let m = MemoryRuntime::new();
    let rt = m.runtime();
    let svc = ArtifactService::new(rt.volumes.clone(), rt.registry.clone());
    m.registry
        .fail_next(RegistryOp::Register, 1, ErrorKind::Transient);
    m.volumes
        .fail_next(VolumeOp::Delete, 1, ErrorKind::Transient);
    svc.create_volume_for_artifact(&request("repo"))
        .await
        .expect_err("registration fails");
    let left = m.volumes.list().await.expect("list");
    assert_eq!(left.len(), 1, "the volume stays: its delete failed");
    let report = reaper(&rt)
        .run_once(&HashSet::new(), SystemTime::now() + Duration::from_secs(1))
        .await
        .expect("pass");
    assert_eq!(report.orphan_volumes_deleted, 1, "{report:?}");
    assert!(m.volumes.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn reaper_removes_orphaned_artifacts_and_keeps_referenced_ones() {
    let m = MemoryRuntime::new();
    let rt = m.runtime();
    let svc = ArtifactService::new(rt.volumes.clone(), rt.registry.clone());
    let kept = svc
        .create_volume_for_artifact(&request("kept"))
        .await
        .expect("kept");
    let mut other = request("orphan");
    other.holder = Holder::new(WORKER, "b2");
    other.build = "b2".into();
    let orphan = svc
        .create_volume_for_artifact(&other)
        .await
        .expect("orphan");
    for v in [&kept, &orphan] {
        v.write_tar(bytes_stream(tar_of(&[("f", b"x")])))
            .await
            .expect("write");
        v.seal().await.expect("seal");
    }
    // Build b2 ended: its references are gone.
    rt.registry
        .release_all(&Holder::new(WORKER, "b2"))
        .await
        .expect("release");
    let report = reaper(&rt)
        .run_once(&HashSet::new(), SystemTime::now())
        .await
        .expect("pass");
    assert_eq!(report.artifacts_deleted, 1, "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(
        rt.registry.get(&kept.artifact().id).await.is_ok(),
        "referenced artifact kept"
    );
    assert_eq!(
        m.volumes
            .stat(kept.handle())
            .await
            .expect("kept volume")
            .handle,
        *kept.handle()
    );
    assert_eq!(
        rt.registry
            .get(&orphan.artifact().id)
            .await
            .expect_err("gone")
            .kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        m.volumes
            .stat(orphan.handle())
            .await
            .expect_err("gone")
            .kind(),
        ErrorKind::NotFound
    );
}

// ---- the step runner's failure taxonomy -----------------------------------------

fn quick() -> StepConfig {
    StepConfig {
        scheduling_timeout: Duration::from_millis(500),
        startup_timeout: Duration::from_secs(5),
        delete_grace: Duration::ZERO,
        keep_pods: false,
        create_retries: 3,
    }
}

async fn run(m: &MemoryRuntime, yaml: &str) -> BuildOutcome {
    run_with(m, yaml, quick()).await
}

async fn run_with(m: &MemoryRuntime, yaml: &str, config: StepConfig) -> BuildOutcome {
    let pipeline = parse_pipeline(yaml, "test.yml", &Vars::new()).expect("pipeline parses");
    let runner = BuildRunner::new(
        m.runtime(),
        config,
        ImageResolver::new(),
        WORKER,
        Arc::new(NoEvents),
    );
    runner
        .run(BuildRequest::new(Arc::new(pipeline), "j", 7, "build-7"))
        .await
        .expect("build runs")
}

fn one_task(script: &str, extra: &str) -> String {
    format!(
        "jobs:\n- name: j\n  plan:\n  - task: t\n{extra}    config:\n      platform: linux\n      outputs: [{{name: out}}]\n      run: {{path: sh, args: [-c, {}]}}\n",
        serde_json::to_string(script).expect("json")
    )
}

fn failure(o: &BuildOutcome) -> &StepFailure {
    &o.failure.as_ref().expect("a failure is reported").1
}

/// Run `body` against the only pod once it exists.
fn on_pod(
    m: &MemoryRuntime,
    act: impl Fn(&jetbridge_memory::MemoryBackend, &str) + Send + 'static,
) {
    let backend = m.backend.clone();
    tokio::spawn(async move {
        for _ in 0..200 {
            if let Some(p) = backend.pod_names().first() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                act(&backend, p);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

async fn assert_no_pods(m: &MemoryRuntime) {
    assert_eq!(
        m.backend.live_pods(),
        0,
        "pods left: {:?}",
        m.backend.pod_names()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_mid_step_is_never_success() {
    let m = MemoryRuntime::new();
    on_pod(&m, |b, p| b.evict(p).expect("evict"));
    let o = run(&m, &one_task("echo working; sleep 5", "")).await;
    assert_eq!(o.status, BuildStatus::Errored);
    assert!(
        matches!(failure(&o), StepFailure::Evicted(_)),
        "{:?}",
        o.failure
    );
    assert_no_pods(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_after_a_zero_exit_still_fails_the_step() {
    let m = MemoryRuntime::new();
    let backend = m.backend.clone();
    m.backend
        .register_sync_program("finish-and-get-evicted", move |_ctx| {
            for p in backend.pod_names() {
                let _ = backend.evict(&p);
            }
            0
        });
    let yaml = "jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      run: {path: finish-and-get-evicted}\n";
    let o = run(&m, yaml).await;
    assert_ne!(o.status, BuildStatus::Succeeded);
    assert!(
        matches!(failure(&o), StepFailure::Evicted(_)),
        "{:?}",
        o.failure
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_step_is_retried_when_attempts_allow() {
    let m = MemoryRuntime::new();
    on_pod(&m, |b, p| b.evict(p).expect("evict"));
    let o = run(
        &m,
        &one_task("sleep 1; echo ok > out/f", "    attempts: 2\n"),
    )
    .await;
    assert_eq!(o.status, BuildStatus::Succeeded, "{:?}", o.failure);
    let attempts: Vec<_> = o.steps.iter().filter(|s| s.name == "task: t").collect();
    assert_eq!(attempts.len(), 2);
    assert!(matches!(attempts[0].result, Err(StepFailure::Evicted(_))));
    assert_no_pods(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kill_is_classified() {
    let m = MemoryRuntime::new();
    on_pod(&m, |b, p| b.oom_kill(p).expect("oom"));
    let o = run(&m, &one_task("sleep 5", "")).await;
    assert_eq!(o.status, BuildStatus::Errored);
    assert!(
        matches!(failure(&o), StepFailure::OomKilled(_)),
        "{:?}",
        o.failure
    );
    assert!(failure(&o).to_string().contains("137"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_exec_stream_is_lost_not_success_and_not_rerun() {
    let m = MemoryRuntime::new();
    m.backend.drop_next_exec_streams(1);
    let yaml = "jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      run: {path: sh, args: [-c, 'echo hi']}\n";
    let o = run(&m, yaml).await;
    assert_eq!(o.status, BuildStatus::Errored);
    assert!(
        matches!(failure(&o), StepFailure::ExecLost(_)),
        "{:?}",
        o.failure
    );
    assert_eq!(
        m.backend.exec_count(),
        1,
        "the command ran once, never silently again"
    );
    assert_no_pods(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_fails_at_the_scheduling_deadline_with_the_reason() {
    let m = MemoryRuntime::new();
    m.backend.set_unschedulable(true);
    let o = run(&m, &one_task("true", "")).await;
    assert_eq!(o.status, BuildStatus::Errored);
    match failure(&o) {
        StepFailure::Unschedulable(msg) => assert!(!msg.is_empty()),
        other => panic!("expected unschedulable, got {other:?}"),
    }
    assert_no_pods(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pull_failure_fails_fast_with_the_registry_message() {
    let m = MemoryRuntime::new();
    m.backend
        .set_unpullable("busybox:1.36", "manifest for busybox:1.36 not found");
    let started = std::time::Instant::now();
    let o = run_with(
        &m,
        &one_task("true", ""),
        StepConfig {
            startup_timeout: Duration::from_secs(120),
            ..quick()
        },
    )
    .await;
    assert_eq!(o.status, BuildStatus::Errored);
    match failure(&o) {
        StepFailure::ImagePull(msg) => {
            assert!(msg.contains("manifest for busybox:1.36 not found"), "{msg}")
        }
        other => panic!("expected an image pull failure, got {other:?}"),
    }
    // It does not wait for the startup deadline (2 minutes here).
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_store_fails_the_step_cleanly() {
    let m = MemoryRuntime::new();
    m.volumes.set_capacity(Some(64));
    let o = run(
        &m,
        &one_task(
            "echo 0123456789012345678901234567890123456789012345678901234567890123456789 > out/big",
            "",
        ),
    )
    .await;
    assert_ne!(o.status, BuildStatus::Succeeded);
    assert!(
        matches!(failure(&o), StepFailure::StorageFull(_)),
        "{:?}",
        o.failure
    );
    assert_no_pods(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_down_at_registration_is_transient_and_never_success() {
    let m = MemoryRuntime::new();
    m.registry
        .fail_next(RegistryOp::MarkReady, 1, ErrorKind::Transient);
    let o = run(&m, &one_task("echo data > out/f", "")).await;
    assert_eq!(o.status, BuildStatus::Errored);
    match failure(&o) {
        StepFailure::Infrastructure(e) => {
            assert_eq!(e.kind(), ErrorKind::Transient);
            assert!(e.is_retryable());
        }
        other => panic!("expected a transient registry error, got {other:?}"),
    }
    assert!(
        !o.artifacts.contains_key("out"),
        "an unregistered output is never bound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_pod_create_errors_are_retried_without_duplicates() {
    let m = MemoryRuntime::new();
    // The first create succeeds on the server but its answer is lost.
    m.backend
        .fail_next_after(jetbridge_memory::BackendOp::Create, 1, ErrorKind::Transient);
    let o = run(&m, &one_task("echo ok > out/f", "")).await;
    assert_eq!(o.status, BuildStatus::Succeeded, "{:?}", o.failure);
    assert_eq!(m.backend.created_pods(), 1, "adopted, not duplicated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_releases_references_and_reaper_leaves_nothing() {
    let m = MemoryRuntime::new();
    let rt = m.runtime();
    let o = run(&m, &one_task("echo ok > out/f", "")).await;
    assert_eq!(o.status, BuildStatus::Succeeded, "{:?}", o.failure);
    let out = o.artifacts.get("out").expect("bound");
    assert_eq!(
        m.registry.reference_count(&out.id),
        0,
        "released at build end"
    );
    let report = reaper(&rt)
        .run_once(&HashSet::new(), SystemTime::now())
        .await
        .expect("pass");
    assert!(report.errors.is_empty(), "{report:?}");
    let left = rt
        .registry
        .find(&ArtifactFilter::default())
        .await
        .expect("find");
    assert!(left.is_empty(), "{left:?}");
    assert!(m.volumes.list().await.expect("list").is_empty());
    assert_no_pods(&m).await;
}

/// Start `yaml`'s job `j` in the background with an abort handle.
fn start_abortable(
    m: &MemoryRuntime,
    yaml: &str,
    config: StepConfig,
) -> (
    jetbridge_core::services::AbortHandle,
    tokio::task::JoinHandle<jetbridge_core::Result<BuildOutcome>>,
) {
    let pipeline = parse_pipeline(yaml, "test.yml", &Vars::new()).expect("parses");
    let runner = BuildRunner::new(
        m.runtime(),
        config,
        ImageResolver::new(),
        WORKER,
        Arc::new(NoEvents),
    );
    let (handle, signal) = jetbridge_core::services::abort_pair();
    let build = tokio::spawn(async move {
        runner
            .run(BuildRequest::new(Arc::new(pipeline), "j", 1, "b").with_abort(signal))
            .await
    });
    (handle, build)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_kills_the_running_command_and_deletes_its_pod() {
    let m = MemoryRuntime::new();
    // The command tells the test it runs, then blocks until killed.
    let running = Arc::new(tokio::sync::Notify::new());
    let told = running.clone();
    m.backend.register_program("block", move |_ctx| {
        let told = told.clone();
        async move {
            told.notify_one();
            futures::future::pending::<i32>().await
        }
    });
    let (handle, build) = start_abortable(&m, &one_task("block", ""), quick());
    tokio::time::timeout(Duration::from_secs(30), running.notified())
        .await
        .expect("the command started");
    assert_eq!(m.backend.live_pods(), 1, "the step's pod exists");
    handle.abort();
    let o = tokio::time::timeout(Duration::from_secs(60), build)
        .await
        .expect("ends promptly")
        .expect("joins")
        .expect("runs");
    assert_eq!(o.status, BuildStatus::Aborted);
    assert!(matches!(failure(&o), StepFailure::Aborted), "{o:?}");
    assert_no_pods(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_interrupts_a_pod_waiting_to_be_scheduled() {
    let m = MemoryRuntime::new();
    m.backend.set_unschedulable(true);
    // A scheduling deadline far beyond the test's: only the abort can end the wait.
    let config = StepConfig {
        scheduling_timeout: Duration::from_secs(3600),
        ..quick()
    };
    let (handle, build) = start_abortable(&m, &one_task("true", ""), config);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while m.backend.created_pods() == 0 {
        assert!(std::time::Instant::now() < deadline, "no pod was created");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(m.backend.live_pods(), 1, "the pod waits to be scheduled");
    handle.abort();
    let o = tokio::time::timeout(Duration::from_secs(60), build)
        .await
        .expect("the abort ends the wait")
        .expect("joins")
        .expect("runs");
    assert_eq!(o.status, BuildStatus::Aborted);
    assert_no_pods(&m).await;
}

// ---- the reaper and a pod adapter's garbage ------------------------------------------

/// A pod port whose adapter keeps garbage beside pods: reports what it was asked.
struct GarbagePods {
    inner: Arc<dyn jetbridge_core::ports::Pods>,
    asked: std::sync::Mutex<Vec<jetbridge_core::ports::GarbageOpts>>,
    fail: bool,
}

#[async_trait::async_trait]
impl jetbridge_core::ports::Pods for GarbagePods {
    fn capabilities(&self) -> jetbridge_core::ports::PodCapabilities {
        self.inner.capabilities()
    }
    async fn create(
        &self,
        spec: &jetbridge_core::ports::PodSpec,
    ) -> jetbridge_core::Result<jetbridge_core::ports::PodStatus> {
        self.inner.create(spec).await
    }
    async fn get(&self, name: &str) -> jetbridge_core::Result<jetbridge_core::ports::PodStatus> {
        self.inner.get(name).await
    }
    async fn wait(
        &self,
        name: &str,
        opts: &WaitOpts,
    ) -> jetbridge_core::Result<jetbridge_core::ports::PodStatus> {
        self.inner.wait(name, opts).await
    }
    async fn list(
        &self,
        selector: &jetbridge_core::ports::LabelSelector,
    ) -> jetbridge_core::Result<Vec<jetbridge_core::ports::PodStatus>> {
        self.inner.list(selector).await
    }
    async fn delete(&self, name: &str, opts: &DeleteOpts) -> jetbridge_core::Result<()> {
        self.inner.delete(name, opts).await
    }
    async fn collect_garbage(
        &self,
        opts: &jetbridge_core::ports::GarbageOpts,
    ) -> jetbridge_core::Result<jetbridge_core::ports::GarbageReport> {
        self.asked.lock().unwrap().push(*opts);
        if self.fail {
            return Err(jetbridge_core::Error::permission_denied(
                "cannot list resource \"secrets\"",
            ));
        }
        Ok(jetbridge_core::ports::GarbageReport {
            deleted: vec!["secret ns/p-env".into()],
            errors: vec!["deleting secret q-env: transient".into()],
        })
    }
}

#[tokio::test]
async fn each_reaper_pass_collects_the_pod_adapters_garbage_after_its_grace() {
    for fail in [false, true] {
        let m = MemoryRuntime::new();
        let rt = m.runtime();
        let pods = Arc::new(GarbagePods {
            inner: rt.pods.clone(),
            asked: std::sync::Mutex::new(Vec::new()),
            fail,
        });
        let mut cfg = ReaperConfig::new(WORKER);
        cfg.pod_garbage_grace = Duration::from_secs(42);
        let reaper = Reaper::new(
            Some(pods.clone()),
            rt.volumes.clone(),
            rt.registry.clone(),
            cfg,
        );
        let now = SystemTime::now();
        let report = reaper.run_once(&HashSet::new(), now).await.expect("pass");
        let asked = pods.asked.lock().unwrap().clone();
        assert_eq!(asked.len(), 1);
        assert_eq!(
            (asked[0].grace, asked[0].now),
            (Duration::from_secs(42), now)
        );
        if fail {
            // The pass goes on; the failure is reported.
            assert!(report.pod_garbage_deleted.is_empty());
            assert!(
                report.errors[0].contains("collecting pod garbage"),
                "{report:?}"
            );
        } else {
            assert_eq!(
                report.pod_garbage_deleted,
                vec!["secret ns/p-env".to_owned()]
            );
            assert_eq!(
                report.errors,
                vec!["deleting secret q-env: transient".to_owned()]
            );
        }
    }
}

// ---- an abort during pod creation ----------------------------------------------------

/// A pod port whose `create` stops half-way (after `entered`, until `release`), as a
/// Kubernetes create does between making the env Secret and the pod owning it.
struct GatedCreate {
    inner: Arc<dyn jetbridge_core::ports::Pods>,
    entered: tokio::sync::Notify,
    release: tokio::sync::Notify,
    finished: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl jetbridge_core::ports::Pods for GatedCreate {
    fn capabilities(&self) -> jetbridge_core::ports::PodCapabilities {
        self.inner.capabilities()
    }
    async fn create(
        &self,
        spec: &jetbridge_core::ports::PodSpec,
    ) -> jetbridge_core::Result<jetbridge_core::ports::PodStatus> {
        self.entered.notify_one();
        self.release.notified().await;
        let r = self.inner.create(spec).await;
        self.finished
            .store(true, std::sync::atomic::Ordering::SeqCst);
        r
    }
    async fn get(&self, name: &str) -> jetbridge_core::Result<jetbridge_core::ports::PodStatus> {
        self.inner.get(name).await
    }
    async fn wait(
        &self,
        name: &str,
        opts: &WaitOpts,
    ) -> jetbridge_core::Result<jetbridge_core::ports::PodStatus> {
        self.inner.wait(name, opts).await
    }
    async fn list(
        &self,
        selector: &jetbridge_core::ports::LabelSelector,
    ) -> jetbridge_core::Result<Vec<jetbridge_core::ports::PodStatus>> {
        self.inner.list(selector).await
    }
    async fn delete(&self, name: &str, opts: &DeleteOpts) -> jetbridge_core::Result<()> {
        self.inner.delete(name, opts).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_during_pod_creation_lets_the_create_finish_then_removes_the_pod() {
    let m = MemoryRuntime::new();
    let mut rt = m.runtime();
    let gated = Arc::new(GatedCreate {
        inner: rt.pods.clone(),
        entered: tokio::sync::Notify::new(),
        release: tokio::sync::Notify::new(),
        finished: std::sync::atomic::AtomicBool::new(false),
    });
    rt.pods = gated.clone();
    let pipeline = parse_pipeline(&one_task("true", ""), "test.yml", &Vars::new()).expect("parses");
    let runner = BuildRunner::new(
        rt,
        quick(),
        ImageResolver::new(),
        WORKER,
        Arc::new(NoEvents),
    );
    let (handle, signal) = jetbridge_core::services::abort_pair();
    let build = tokio::spawn(async move {
        runner
            .run(BuildRequest::new(Arc::new(pipeline), "j", 1, "b").with_abort(signal))
            .await
    });
    tokio::time::timeout(Duration::from_secs(30), gated.entered.notified())
        .await
        .expect("creation started");
    handle.abort();
    gated.release.notify_one();
    let o = tokio::time::timeout(Duration::from_secs(60), build)
        .await
        .expect("the abort ends the build")
        .expect("joins")
        .expect("runs");
    assert_eq!(o.status, BuildStatus::Aborted);
    assert!(
        gated.finished.load(std::sync::atomic::Ordering::SeqCst),
        "the create call was dropped half-way"
    );
    assert_no_pods(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_a_masked_one_is_the_build_s_first() {
    // `try` hides its step's failure from the build: the one reported is the later,
    // unmasked failure, not the first that happened.
    let m = MemoryRuntime::new();
    let yaml = "jobs:\n- name: j\n  plan:\n  - try:\n      task: masked\n      config:\n        platform: linux\n        run: {path: sh, args: [-c, 'exit 4']}\n  - task: real\n    config:\n      platform: linux\n      run: {path: sh, args: [-c, 'exit 5']}\n";
    let o = run(&m, yaml).await;
    assert_eq!(o.status, BuildStatus::Failed);
    let (name, f) = o.failure.as_ref().expect("a failure");
    assert_eq!(name, "task: real");
    assert!(matches!(f, StepFailure::Exited(5)), "{f:?}");
    assert_no_pods(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_under_try_runs_its_on_error_and_the_build_goes_on() {
    // An infrastructure error under `try` still runs the inner step's on_error, and
    // the build goes on.
    let m = MemoryRuntime::new();
    on_pod(&m, |b, p| b.evict(p).expect("evict"));
    let yaml = "jobs:\n- name: j\n  plan:\n  - try:\n      task: evicted\n      config:\n        platform: linux\n        run: {path: sh, args: [-c, 'echo working; sleep 5']}\n      on_error:\n        task: noticed\n        config:\n          platform: linux\n          run: {path: sh, args: [-c, 'true']}\n  - task: after\n    config:\n      platform: linux\n      run: {path: sh, args: [-c, 'true']}\n";
    let o = run(&m, yaml).await;
    assert_eq!(o.status, BuildStatus::Succeeded, "{:?}", o.failure);
    let names: Vec<&str> = o.steps.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"task: noticed"), "{names:?}");
    assert!(names.contains(&"task: after"), "{names:?}");
    let evicted = o
        .steps
        .iter()
        .find(|s| s.name == "task: evicted")
        .expect("ran");
    assert!(
        matches!(evicted.result, Err(StepFailure::Evicted(_))),
        "{:?}",
        evicted.result
    );
    assert_no_pods(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_runs_one_value_at_a_time_by_default_and_fail_fast_starts_no_more() {
    // Sequential by default (Concourse's max_in_flight 1): with fail_fast, the failing
    // first value stops the second from starting; without it, both run and the build
    // fails with the first failure.
    let m = MemoryRuntime::new();
    let yaml = |fail_fast: bool| {
        format!(
            "jobs:\n- name: j\n  plan:\n  - task: t\n    across:\n    - var: n\n      values: [bad, good]\n    fail_fast: {fail_fast}\n    config:\n      platform: linux\n      run: {{path: sh, args: [-c, 'test ((.:n)) = good']}}\n"
        )
    };
    let o = run(&m, &yaml(true)).await;
    assert_eq!(o.status, BuildStatus::Failed);
    let names: Vec<&str> = o.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["task: t (n=bad)"], "fail_fast started no more");
    let (name, _) = o.failure.as_ref().expect("a failure");
    assert_eq!(name, "task: t (n=bad)");
    let o = run(&m, &yaml(false)).await;
    assert_eq!(o.status, BuildStatus::Failed);
    let names: Vec<&str> = o.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["task: t (n=bad)", "task: t (n=good)"]);
    assert_no_pods(&m).await;
}
