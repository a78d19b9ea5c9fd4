//! Worker membership on the in-memory fakes: the heartbeat service keeps a registration
//! alive and fences the worker when it cannot; the reaper judges liveness on the
//! registry's clock, never its host's.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jetbridge_core::digest::Digest;
use jetbridge_core::names::{ArtifactId, VolumeHandle, label, label_value};
use jetbridge_core::ports::{
    Artifact, ArtifactFilter, ArtifactRegistry, ClaimOpts, HeartbeatMode, HeartbeatOpts, Holder,
    NewArtifact, PodSpec, Pods, RegistryCapabilities, Worker,
};
use jetbridge_core::services::{Heartbeat, HeartbeatConfig, Reaper, ReaperConfig};
use jetbridge_core::{ErrorKind, Result};
use jetbridge_memory::{MemoryRegistry, MemoryRuntime, RegistryClock, RegistryOp};
use tokio::sync::oneshot;
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(60);

/// When, and why, the callback of `hb`'s loop fired; `None` if it did not within two
/// ttls (a loop that carries on unprotected).
async fn fenced_within_two_ttls(hb: &Heartbeat) -> Option<(Instant, String)> {
    tokio::time::timeout(2 * TTL, fenced(hb))
        .await
        .ok()
        .and_then(Result::ok)
}

/// A heartbeat loop whose callback reports when, and why, it fired.
fn fenced(hb: &Heartbeat) -> oneshot::Receiver<(Instant, String)> {
    let (tx, rx) = oneshot::channel();
    let hb = hb.clone();
    tokio::spawn(async move {
        hb.keep_alive(move |why| {
            let _ = tx.send((Instant::now(), why));
        })
        .await;
    });
    rx
}

#[tokio::test(start_paused = true)]
async fn renewals_keep_the_registration_alive_as_the_registry_clock_moves() {
    let clock = RegistryClock::manual(SystemTime::now());
    let registry = Arc::new(MemoryRegistry::with_clock(clock.clone()));
    let (hb, _) = Heartbeat::register(registry.clone(), HeartbeatConfig::with_ttl("w1", TTL))
        .await
        .expect("register");
    let mut lost = fenced(&hb);
    // Ten minutes on both clocks, a second at a time: without renewals the registration
    // would lapse after one minute and the next renewal would be refused.
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        clock.advance(Duration::from_secs(1));
    }
    assert!(lost.try_recv().is_err(), "fenced while renewals succeed");
    let workers = registry.workers().await.expect("workers");
    assert!(workers[0].alive, "{workers:?}");
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_that_stops_renewing_fences_the_worker_before_expiry() {
    let registry = Arc::new(MemoryRegistry::new());
    let cfg = HeartbeatConfig::with_ttl("w1", TTL);
    let margin = cfg.margin;
    let start = Instant::now();
    let (hb, _) = Heartbeat::register(registry.clone(), cfg)
        .await
        .expect("register");
    // From now on every renewal fails as if the registry were unreachable.
    registry.fail_next(RegistryOp::Heartbeat, usize::MAX, ErrorKind::Transient);
    let (at, why) = fenced_within_two_ttls(&hb)
        .await
        .expect("the callback fires");
    let elapsed = at - start;
    assert!(
        elapsed >= TTL - margin && elapsed < TTL,
        "fenced after {elapsed:?}: must be before the registration may expire ({TTL:?}) \
         and not before its margin"
    );
    assert!(why.starts_with("lost its registration: "), "{why}");
    assert!(why.contains("transient"), "says why: {why}");
}

/// A registry whose renewals never answer (a partition that drops packets): every other
/// call goes to the memory registry.
struct Unanswering(MemoryRegistry);

#[async_trait::async_trait]
impl ArtifactRegistry for Unanswering {
    fn capabilities(&self) -> RegistryCapabilities {
        self.0.capabilities()
    }
    async fn register(&self, new: &NewArtifact) -> Result<Artifact> {
        self.0.register(new).await
    }
    async fn mark_ready(&self, id: &ArtifactId, size: u64, digest: &Digest) -> Result<Artifact> {
        self.0.mark_ready(id, size, digest).await
    }
    async fn get(&self, id: &ArtifactId) -> Result<Artifact> {
        self.0.get(id).await
    }
    async fn find(&self, filter: &ArtifactFilter) -> Result<Vec<Artifact>> {
        self.0.find(filter).await
    }
    async fn acquire(&self, id: &ArtifactId, holder: &Holder) -> Result<()> {
        self.0.acquire(id, holder).await
    }
    async fn release(&self, id: &ArtifactId, holder: &Holder) -> Result<()> {
        self.0.release(id, holder).await
    }
    async fn release_all(&self, holder: &Holder) -> Result<u64> {
        self.0.release_all(holder).await
    }
    async fn claim_reapable(&self, claimer: &str, opts: &ClaimOpts) -> Result<Vec<Artifact>> {
        self.0.claim_reapable(claimer, opts).await
    }
    async fn forget(&self, id: &ArtifactId) -> Result<()> {
        self.0.forget(id).await
    }
    async fn known_volumes(&self, volumes: &[VolumeHandle]) -> Result<Vec<VolumeHandle>> {
        self.0.known_volumes(volumes).await
    }
    async fn heartbeat(&self, worker: &str, opts: &HeartbeatOpts) -> Result<Worker> {
        if opts.mode == HeartbeatMode::Renew {
            std::future::pending::<()>().await;
        }
        self.0.heartbeat(worker, opts).await
    }
    async fn sign_off(&self, worker: &str, session: &str) -> Result<()> {
        self.0.sign_off(worker, session).await
    }
    async fn workers(&self) -> Result<Vec<Worker>> {
        self.0.workers().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_registry_that_stops_answering_fences_the_worker_before_expiry() {
    let cfg = HeartbeatConfig::with_ttl("w1", TTL);
    let margin = cfg.margin;
    let start = Instant::now();
    let (hb, _) = Heartbeat::register(Arc::new(Unanswering(MemoryRegistry::new())), cfg)
        .await
        .expect("register");
    let (at, why) = fenced_within_two_ttls(&hb)
        .await
        .expect("the callback fires");
    assert_eq!(
        at - start,
        TTL - margin,
        "fenced as soon as the registration may lapse"
    );
    assert!(why.contains("did not answer"), "{why}");
}

#[tokio::test(start_paused = true)]
async fn a_refused_renewal_fences_at_once() {
    let registry = Arc::new(MemoryRegistry::new());
    let cfg = HeartbeatConfig::with_ttl("w1", TTL);
    let interval = cfg.interval;
    let start = Instant::now();
    let (hb, _) = Heartbeat::register(registry.clone(), cfg)
        .await
        .expect("register");
    // The registration ended behind the worker's back (another process took over, say).
    registry
        .sign_off("w1", &hb.config().session)
        .await
        .expect("sign off");
    let (at, why) = fenced_within_two_ttls(&hb)
        .await
        .expect("the callback fires");
    assert_eq!(at - start, interval, "fenced at the first renewal");
    assert!(why.contains("lapsed or was taken over"), "{why}");
}

#[tokio::test(start_paused = true)]
async fn a_second_process_cannot_take_a_live_name_until_the_first_signs_off() {
    let registry: Arc<dyn ArtifactRegistry> = Arc::new(MemoryRegistry::new());
    let (first, _) = Heartbeat::register(registry.clone(), HeartbeatConfig::new("w1"))
        .await
        .expect("register");
    let err = Heartbeat::register(registry.clone(), HeartbeatConfig::new("w1"))
        .await
        .expect_err("the name is taken");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    first.sign_off().await.expect("sign off");
    Heartbeat::register(registry, HeartbeatConfig::new("w1"))
        .await
        .expect("free once signed off");
}

#[tokio::test]
async fn a_config_whose_renewals_cannot_come_in_time_is_invalid() {
    let mut cfg = HeartbeatConfig::with_ttl("w1", TTL);
    cfg.interval = TTL;
    let err = Heartbeat::register(Arc::new(MemoryRegistry::new()), cfg)
        .await
        .expect_err("invalid");
    assert_eq!(err.kind(), ErrorKind::Invalid);
}

/// The reaper runs on a host whose clock is five minutes ahead of the registry's; the
/// other worker registered for one minute is alive, so its pod and its artifact stay.
/// Once the registry's own clock passes the expiry, both go.
#[tokio::test]
async fn a_reaper_clock_ahead_spares_a_live_worker() {
    let clock = RegistryClock::manual(SystemTime::now());
    let m = MemoryRuntime {
        registry: Arc::new(MemoryRegistry::with_clock(clock.clone())),
        ..MemoryRuntime::new()
    };
    let rt = m.runtime();
    let (_other, _) = Heartbeat::register(
        rt.registry.clone(),
        HeartbeatConfig::with_ttl("w-other", TTL),
    )
    .await
    .expect("register");
    let mut spec = PodSpec::new("p-other", "busybox");
    for (k, v) in [
        (label::MANAGED_BY, label::MANAGED_BY_VALUE),
        (label::WORKER, &label_value("w-other")),
        (label::HANDLE, "h-other"),
    ] {
        spec.labels.insert(k.to_owned(), v.to_owned());
    }
    rt.pods.create(&spec).await.expect("pod");
    let held = rt
        .registry
        .register(&NewArtifact::new(
            ArtifactId::random(),
            "b",
            "s",
            "out",
            VolumeHandle::random(),
            Holder::new("w-other", "b"),
        ))
        .await
        .expect("artifact");
    let reaper = Reaper::new(
        Some(rt.pods.clone()),
        None,
        rt.registry.clone(),
        ReaperConfig::new("w-reaper"),
    );
    let ahead = SystemTime::now() + Duration::from_secs(300);
    let report = reaper.run_once(&HashSet::new(), ahead).await.expect("pass");
    assert!(report.pods_deleted.is_empty(), "{report:?}");
    assert_eq!(report.artifacts_deleted, 0, "{report:?}");
    assert!(rt.registry.get(&held.id).await.is_ok());

    clock.advance(TTL);
    let report = reaper
        .run_once(&HashSet::new(), SystemTime::now())
        .await
        .expect("pass");
    assert_eq!(
        report.pods_deleted,
        vec!["p-other".to_owned()],
        "{report:?}"
    );
    assert_eq!(report.artifacts_deleted, 1, "{report:?}");
}

/// A heartbeat that stops renewing mid-build stops the build: it ends `errored`, says
/// the worker lost its registration, runs no hook, and leaves no pod.
#[tokio::test(start_paused = true)]
async fn a_build_whose_heartbeat_stops_renewing_ends_errored() {
    use jetbridge_core::images::ImageResolver;
    use jetbridge_core::plan::{Vars, parse_pipeline};
    use jetbridge_core::services::{
        AbortReason, BuildRequest, BuildRunner, BuildStatus, NoEvents, StepConfig, StepFailure,
        abort_pair,
    };
    let m = MemoryRuntime::new();
    m.backend
        .register_program("block", |_ctx| futures::future::pending::<i32>());
    let yaml = "jobs:\n- name: j\n  plan:\n  - task: t\n    config: {platform: linux, run: {path: block}}\n    on_error: {task: hook, config: {platform: linux, run: {path: 'true'}}}\n    ensure: {task: ensure, config: {platform: linux, run: {path: 'true'}}}\n";
    let pipeline = parse_pipeline(yaml, "w.yml", &Vars::new()).expect("parses");
    let (hb, _) = Heartbeat::register(m.registry.clone(), HeartbeatConfig::with_ttl("w1", TTL))
        .await
        .expect("register");
    let (abort, signal) = abort_pair();
    let keep_alive = {
        let hb = hb.clone();
        tokio::spawn(async move {
            hb.keep_alive(move |why| abort.abort_because(AbortReason::WorkerLost(why)))
                .await
        })
    };
    m.registry
        .fail_next(RegistryOp::Heartbeat, usize::MAX, ErrorKind::Transient);
    let runner = BuildRunner::new(
        m.runtime(),
        StepConfig::default(),
        ImageResolver::new(),
        "w1",
        Arc::new(NoEvents),
    );
    let o = tokio::time::timeout(
        2 * TTL,
        runner.run(BuildRequest::new(Arc::new(pipeline), "j", 1, "b1").with_abort(signal)),
    )
    .await
    .expect("the build ends once the registration may have lapsed")
    .expect("runs");
    keep_alive.abort();
    assert_eq!(o.status, BuildStatus::Errored);
    match &o.failure {
        Some((step, f @ StepFailure::WorkerLost(_))) => {
            assert_eq!(step, "task: t");
            assert!(f.to_string().contains("lost its registration"), "{f}");
        }
        other => panic!("expected worker-lost, got {other:?}"),
    }
    let names: Vec<&str> = o.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["task: t"], "no hook runs");
    assert_eq!(m.backend.live_pods(), 0, "{:?}", m.backend.pod_names());
}
