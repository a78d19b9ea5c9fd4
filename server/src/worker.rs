//! The replica's side of the queue: claim builds while there is room, run each in the
//! worker session under a renewed lease, write its events to the queue's log, end it;
//! reap lapsed leases of other replicas; drain on request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use jetbridge_core::ErrorKind;
use jetbridge_core::images::ImageResolver;
use jetbridge_core::names::VolumeHandle;
use jetbridge_core::plan::Vars;
use jetbridge_core::ports::{
    BuildEnd, BuildId, BuildQueue, BuildState, Claimed, Holder, Lease, NewEvent, OutputSink,
    OutputStream, VolumeStore, bytes_stream,
};
use jetbridge_core::services::{
    AbortHandle, AbortReason, AbortSignal, ArtifactRef, ArtifactRequest, ArtifactService,
    BuildEvents, BuildOutcome, BuildRequest, BuildStatus, StepSummary, WorkerSession, abort_pair,
};
use tokio::sync::{Notify, mpsc, watch};
use tracing::Instrument as _;

use crate::api::{self, OutcomeView, StepView, kinds};
use crate::metrics::Metrics;
use crate::spec::BuildSpec;

/// How a replica runs the queue. `Debug` leaves out the tokens and the key.
#[derive(Clone)]
pub struct ServerConfig {
    /// Builds this replica runs at once.
    pub max_builds: usize,
    /// Queued builds beyond which submissions are refused; `None`: no limit.
    pub max_queued: Option<u64>,
    /// A claimed build's lease; renewed every third of it.
    pub lease_ttl: Duration,
    /// How often an idle replica looks for queued builds (a submission to this replica
    /// wakes it at once).
    pub poll_every: Duration,
    /// How often lapsed leases (of dead replicas) are looked for.
    pub reap_lapsed_every: Duration,
    /// How long a drain lets running builds finish before aborting them.
    pub drain_timeout: Duration,
    /// How long aborted builds' `on_abort` and `ensure` hooks may run.
    pub abort_grace: Duration,
    /// Bearer tokens; empty: no auth (loopback only, which the binary enforces).
    pub tokens: Vec<String>,
    /// The largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Whether `type: local` resource types may run.
    pub allow_local_resources: bool,
    /// The version shown by `/api/v1/info` and `jetbridge_build_info`.
    pub version: String,
    /// Seals submitted variables before they are stored; without it, a queue that
    /// stores builds (a database) refuses submissions with variables.
    pub vars_key: Option<Arc<crate::secret::VarsKey>>,
    /// The metrics to count into (the caller may have wired them into the store, the
    /// session and the tracing layer already); `None`: new ones.
    pub metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("max_builds", &self.max_builds)
            .field("max_queued", &self.max_queued)
            .field("lease_ttl", &self.lease_ttl)
            .field("drain_timeout", &self.drain_timeout)
            .field("tokens", &self.tokens.len())
            .field("vars_key", &self.vars_key.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_builds: 4,
            max_queued: Some(100),
            lease_ttl: Duration::from_secs(30),
            poll_every: Duration::from_millis(500),
            reap_lapsed_every: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(600),
            abort_grace: jetbridge_core::services::DEFAULT_ABORT_GRACE,
            tokens: Vec::new(),
            max_body_bytes: 32 << 20,
            allow_local_resources: false,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            vars_key: None,
            metrics: None,
        }
    }
}

/// The reason a build aborted by a drain ends with.
pub const SHUTDOWN_REASON: &str = "server shutting down";
/// The reason a build whose replica died ends with.
pub const WORKER_LOST_REASON: &str = "worker lost";
/// The reason an API abort gives.
pub const ABORT_REASON: &str = "aborted by request";

/// A build running here: how to stop it and why it was stopped.
struct Running {
    /// The attempt (lease token) this entry is for.
    token: u64,
    abort: Arc<AbortHandle>,
    reason: Arc<Mutex<Option<String>>>,
}

/// What the handlers and the loops share.
pub(crate) struct Shared {
    pub(crate) queue: Arc<dyn BuildQueue>,
    pub(crate) session: WorkerSession,
    pub(crate) images: ImageResolver,
    pub(crate) config: ServerConfig,
    pub(crate) metrics: Arc<Metrics>,
    /// Whether the backend runs steps on this host.
    pub(crate) local_backend: bool,
    /// True once a drain began: readiness turns 503 and the claim loop's waits end.
    drain_signal: watch::Sender<bool>,
    /// Wakes the claim loop (a submission here, a build ended, a drain).
    wake: Notify,
    /// Wakes event streams: something was appended or a build ended here.
    pub(crate) events_tick: Notify,
    running: Mutex<HashMap<BuildId, Running>>,
    /// How many builds run here.
    count: watch::Sender<usize>,
    /// Where uploaded bundles are unpacked, one directory per build.
    scratch: tempfile::TempDir,
    stop: watch::Sender<bool>,
    loops: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The claim loop, awaited first by a drain so that no claim is in flight.
    claims: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Shared {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<BuildId, Running>> {
        // Entries are inserted and removed whole.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many builds run here now.
    pub(crate) fn running_count(&self) -> usize {
        *self.count.borrow()
    }

    pub(crate) fn is_draining(&self) -> bool {
        *self.drain_signal.borrow()
    }

    pub(crate) fn submitted(&self) {
        self.wake.notify_one();
    }

    /// Abort a build running here at once (its holder would learn of the request at
    /// its next renewal anyway); `false` when it does not run here.
    pub(crate) fn abort_here(&self, id: BuildId, reason: &str) -> bool {
        match self.running().get(&id) {
            Some(r) => {
                r.reason
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(|| reason.to_owned());
                r.abort.abort();
                true
            }
            None => false,
        }
    }
}

/// A running server replica: the loops and the state the API serves.
#[derive(Clone)]
pub struct Server {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("worker", &self.shared.session.worker())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Start claiming from `queue` into `session` (whose runner runs the builds),
    /// resolving images with `images`. `local_backend`: the backend runs steps on this
    /// host (`type: local` resource types can run only then).
    pub fn start(
        queue: Arc<dyn BuildQueue>,
        session: WorkerSession,
        images: ImageResolver,
        local_backend: bool,
        config: ServerConfig,
    ) -> std::io::Result<Self> {
        let scratch = tempfile::Builder::new()
            .prefix("jetbridge-server-")
            .tempdir()?;
        let (count, _) = watch::channel(0);
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            metrics: config
                .metrics
                .clone()
                .unwrap_or_else(|| Arc::new(Metrics::new(&config.version))),
            queue,
            session,
            images,
            config,
            local_backend,
            drain_signal: watch::channel(false).0,
            wake: Notify::new(),
            events_tick: Notify::new(),
            running: Mutex::new(HashMap::new()),
            count,
            scratch,
            stop,
            loops: Mutex::new(Vec::new()),
            claims: Mutex::new(None),
        });
        let claims = tokio::spawn(claim_loop(shared.clone()));
        let reaps = tokio::spawn(reap_loop(shared.clone()));
        shared
            .loops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(reaps);
        *shared.claims.lock().unwrap_or_else(|e| e.into_inner()) = Some(claims);
        Ok(Server { shared })
    }

    /// The worker name of this replica.
    pub fn worker(&self) -> &str {
        self.shared.session.worker()
    }

    /// The metrics, as Prometheus text.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.encode()
    }

    /// Resolves once the worker's registration is lost (the session has stopped every
    /// build): the replica can run nothing more and should drain and exit.
    pub async fn wait_lost(&self) -> String {
        self.shared.session.wait_lost().await
    }

    /// How long a drain waits before aborting builds.
    pub fn shared_drain_timeout(&self) -> Duration {
        self.shared.config.drain_timeout
    }

    /// How many builds run here now.
    pub fn running(&self) -> usize {
        self.shared.running_count()
    }

    /// Stop claiming (readiness turns 503), let running builds finish for the drain
    /// timeout, then abort the rest ("server shutting down") and give their hooks the
    /// abort grace; then end the worker session (its pods and Secrets are removed and
    /// the registration released).
    pub async fn drain(self) -> jetbridge_core::Result<()> {
        let s = &self.shared;
        s.drain_signal.send_replace(true);
        s.wake.notify_one();
        // A claim in flight ends first (its build counted), then no more start.
        let claims = s.claims.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(c) = claims {
            let _ = c.await;
        }
        let mut count = s.count.subscribe();
        let idle = |n: &usize| *n == 0;
        if tokio::time::timeout(s.config.drain_timeout, count.wait_for(idle))
            .await
            .is_err()
        {
            let ids: Vec<BuildId> = s.running().keys().copied().collect();
            tracing::warn!(builds = ?ids, "drain timeout: aborting the builds still running");
            for id in ids {
                s.abort_here(id, SHUTDOWN_REASON);
            }
            // The hooks' own grace ends them; a little more for the pods to go.
            let margin = Duration::from_secs(10);
            if tokio::time::timeout(s.config.abort_grace + margin, count.wait_for(idle))
                .await
                .is_err()
            {
                for r in s.running().values() {
                    r.abort.force();
                }
                let _ = tokio::time::timeout(margin, count.wait_for(idle)).await;
            }
        }
        s.stop.send_replace(true);
        let loops = std::mem::take(&mut *s.loops.lock().unwrap_or_else(|e| e.into_inner()));
        for l in loops {
            let _ = l.await;
        }
        s.session.clone().shutdown().await.map(|_| ())
    }
}

async fn claim_loop(s: Arc<Shared>) {
    let mut stop = s.stop.subscribe();
    let mut count = s.count.subscribe();
    let mut drain = s.drain_signal.subscribe();
    let worker = s.session.worker().to_owned();
    loop {
        if s.is_draining() || *stop.borrow() {
            return;
        }
        let max = s.config.max_builds.max(1);
        // Room first: a claim is a promise to start the build now.
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = drain.wait_for(|d| *d) => return,
            r = count.wait_for(|n| *n < max) => if r.is_err() { return },
        }
        if s.is_draining() || s.session.lost().is_some() {
            return;
        }
        match s.queue.claim(&worker, s.config.lease_ttl).await {
            Ok(Some(c)) => {
                s.count.send_modify(|n| *n += 1);
                tokio::spawn(run_claimed(s.clone(), c));
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "claiming a build failed; retrying"),
        }
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = drain.wait_for(|d| *d) => return,
            _ = s.wake.notified() => {}
            _ = tokio::time::sleep(s.config.poll_every) => {}
        }
    }
}

async fn reap_loop(s: Arc<Shared>) {
    let mut stop = s.stop.subscribe();
    loop {
        match s.queue.reap_lapsed(WORKER_LOST_REASON).await {
            Ok(lapsed) => {
                for l in &lapsed {
                    tracing::warn!(build = %l.id, worker = %l.worker, requeued = l.requeued,
                        "a build's lease lapsed");
                    s.metrics.lapsed(l.requeued);
                }
                if lapsed.iter().any(|l| l.requeued) {
                    s.wake.notify_one();
                }
                if !lapsed.is_empty() {
                    s.events_tick.notify_waiters();
                }
            }
            Err(e) => tracing::warn!(error = %e, "looking for lapsed builds failed"),
        }
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = tokio::time::sleep(s.config.reap_lapsed_every) => {}
        }
    }
}

/// Removes a build from the running set however its task ends.
struct Slot<'a> {
    s: &'a Shared,
    id: BuildId,
    token: u64,
    /// The lease renewals and the event writer: they end with the build, also when
    /// its task panics (a renewal left running would keep the build `running`).
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let mut running = self.s.running();
        // Only this attempt's entry: a later attempt of the same build may have its own.
        if running.get(&self.id).is_some_and(|r| r.token == self.token) {
            running.remove(&self.id);
        }
        drop(running);
        self.s.count.send_modify(|n| *n = n.saturating_sub(1));
        self.s.wake.notify_one();
        self.s.events_tick.notify_waiters();
    }
}

async fn run_claimed(s: Arc<Shared>, claimed: Claimed) {
    let span = tracing::info_span!(
        "build",
        build = %claimed.build.id,
        pipeline = %claimed.build.pipeline,
        job = %claimed.build.job,
        attempt = claimed.lease.token,
        trace_id = tracing::field::Empty,
    );
    // With traces exported, every log line of the build names its trace.
    {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let trace = span.context().span().span_context().trace_id();
        if trace != opentelemetry::trace::TraceId::INVALID {
            span.record("trace_id", tracing::field::display(trace));
        }
    }
    run_claimed_in_span(s, claimed).instrument(span).await
}

async fn run_claimed_in_span(s: Arc<Shared>, claimed: Claimed) {
    let Claimed { lease, build } = claimed;
    let id = build.id;
    tracing::info!(worker = %lease.worker, "build claimed");
    let mut slot = Slot {
        s: &s,
        id,
        token: lease.token,
        tasks: Vec::new(),
    };
    if let Ok(wait) = build
        .started_at
        .unwrap_or_else(SystemTime::now)
        .duration_since(build.submitted_at)
    {
        s.metrics.queue_wait.observe(wait.as_secs_f64());
    }
    let (abort, signal) = abort_pair();
    let abort = Arc::new(abort);
    let reason = Arc::new(Mutex::new(build.abort_requested.clone()));
    if build.abort_requested.is_some() {
        abort.abort();
    }
    s.running().insert(
        id,
        Running {
            token: lease.token,
            abort: abort.clone(),
            reason: reason.clone(),
        },
    );
    let lost = Arc::new(AtomicBool::new(false));
    let renewals = tokio::spawn(renew_loop(
        s.clone(),
        lease.clone(),
        abort.clone(),
        reason.clone(),
        lost.clone(),
    ));
    let (tx, rx) = mpsc::unbounded_channel();
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let unwritten = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_events(
        s.clone(),
        lease.clone(),
        rx,
        Writer {
            abort: abort.clone(),
            lost: lost.clone(),
            in_flight: in_flight.clone(),
            dropped: dropped.clone(),
            unwritten: unwritten.clone(),
        },
    ));
    slot.tasks.push(renewals);
    let started = Instant::now();
    let events = Arc::new(QueueEvents {
        tx,
        in_flight: in_flight.clone(),
        dropped: dropped.clone(),
    });
    let result = run_build(&s, &lease, &build.spec, events, abort.clone(), signal).await;
    // Every event is written before the end, so a stream that sees the end has them all.
    let _ = writer.await;
    for t in slot.tasks.drain(..) {
        t.abort();
    }
    let result = match result {
        Ok(_) if unwritten.load(Ordering::SeqCst) => {
            Err("some of the build's events could not be written to the queue".to_owned())
        }
        r => r,
    };
    if lost.load(Ordering::SeqCst) {
        tracing::warn!(build = %id, "the build's lease was taken over; not ending it here");
        return;
    }
    let took = started.elapsed();
    let end = match result {
        Ok(outcome) => {
            let view = OutcomeView::of(&outcome, took);
            let state = match outcome.status {
                BuildStatus::Succeeded => BuildState::Succeeded,
                BuildStatus::Failed => BuildState::Failed,
                BuildStatus::Errored => BuildState::Errored,
                BuildStatus::Aborted => BuildState::Aborted,
            };
            let why = match outcome.status {
                BuildStatus::Succeeded => None,
                BuildStatus::Aborted => Some(
                    reason
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone()
                        .unwrap_or_else(|| ABORT_REASON.to_owned()),
                ),
                _ => view
                    .failed_step
                    .as_ref()
                    .map(|step| format!("{step}: {}", view.reason.clone().unwrap_or_default())),
            };
            let mut end =
                BuildEnd::new(state).with_outcome(serde_json::to_vec(&view).unwrap_or_default());
            if let Some(why) = why {
                end = end.with_reason(why);
            }
            s.metrics
                .build_ended(api::status_text(outcome.status), took);
            end
        }
        Err(why) => {
            s.metrics.build_ended("errored", took);
            BuildEnd::new(BuildState::Errored).with_reason(why)
        }
    };
    finish(&s, &lease, &end).await;
}

/// End the build, retrying what may pass; a refusal means another replica holds it.
async fn finish(s: &Shared, lease: &Lease, end: &BuildEnd) {
    for attempt in 0..5u32 {
        match s.queue.finish(lease, end).await {
            Ok(_) => return,
            Err(e) if e.kind() == ErrorKind::Conflict => {
                tracing::warn!(build = %lease.build, error = %e, "the build is no longer ours to end");
                return;
            }
            Err(e) => {
                tracing::warn!(build = %lease.build, error = %e, attempt, "ending the build failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
    // Left running: its lease lapses and a reaper ends it ("worker lost").
    tracing::error!(build = %lease.build, "could not end the build; its lease will lapse");
}

async fn renew_loop(
    s: Arc<Shared>,
    lease: Lease,
    abort: Arc<AbortHandle>,
    reason: Arc<Mutex<Option<String>>>,
    lost: Arc<AtomicBool>,
) {
    let every = (s.config.lease_ttl / 3).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        match s.queue.renew(&lease, s.config.lease_ttl).await {
            Ok(status) => {
                if let Some(why) = status.abort_requested {
                    reason
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(why);
                    abort.abort();
                }
            }
            Err(e) if e.kind() == ErrorKind::Conflict => {
                taken_over(&lost, &abort);
                return;
            }
            Err(e) => {
                s.metrics.renewals_failed.inc();
                tracing::warn!(build = %lease.build, error = %e, "renewing the build's lease failed");
            }
        }
    }
}

/// Prepare the build (uploads) and run it in the session; `Err`: why it could not run.
async fn run_build(
    s: &Shared,
    lease: &Lease,
    spec: &[u8],
    events: Arc<QueueEvents>,
    abort: Arc<AbortHandle>,
    signal: AbortSignal,
) -> Result<BuildOutcome, String> {
    let mut spec: BuildSpec = serde_json::from_slice(spec)
        .map_err(|e| format!("the build's stored submission cannot be read: {e}"))?;
    spec.open_vars(s.config.vars_key.as_deref())?;
    let pipeline = spec.parse().map_err(|e| e.message)?;
    let build_id = format!(
        "{}/{}/{}.{}",
        pipeline.name, spec.job, lease.build, lease.token
    );
    let mut images = s.images.clone();
    let bundle_dir = s
        .scratch
        .path()
        .join(format!("{}.{}", lease.build, lease.token));
    if let Some(bundle) = &spec.bundle {
        images = images.with_base_dir(unpack_bundle(&bundle_dir, bundle).await?);
    }
    let mut vars = Vars::new();
    for (k, v) in &spec.vars {
        vars.insert(k.clone(), v.clone());
    }
    let result = async {
        let mut req = BuildRequest::new(
            Arc::new(pipeline),
            spec.job.clone(),
            lease.build.0,
            build_id.clone(),
        )
        .with_vars(vars)
        .with_abort(signal)
        .with_events(events)
        .with_images(images)
        .with_pipelines(Arc::new(crate::pipelines::QueuePipelines {
            queue: s.queue.clone(),
            lease: lease.clone(),
            key: s.config.vars_key.clone(),
        }));
        let holder = Holder::new(s.session.worker(), build_id.clone());
        for (name, tar) in &spec.inputs {
            let artifact = upload_input(s, &holder, &build_id, name, tar).await?;
            req = req.with_input(name.clone(), artifact);
        }
        s.session
            .run(req, abort.clone())
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    if spec.bundle.is_some() {
        let _ = tokio::fs::remove_dir_all(&bundle_dir).await;
    }
    result
}

async fn unpack_bundle(dir: &std::path::Path, bundle: &[u8]) -> Result<String, String> {
    // The directory store's extraction refuses entries that would leave the volume.
    let store = jetbridge_fs::FsVolumeStore::new(dir)
        .map_err(|e| format!("preparing the uploaded bundle: {e}"))?;
    let handle = VolumeHandle::random();
    store
        .create(&handle)
        .await
        .map_err(|e| format!("preparing the uploaded bundle: {e}"))?;
    store
        .write_tar(&handle, bytes_stream(bundle.to_vec()))
        .await
        .map_err(|e| format!("the uploaded bundle cannot be unpacked: {e}"))?;
    store
        .seal(&handle)
        .await
        .map_err(|e| format!("the uploaded bundle cannot be unpacked: {e}"))?;
    Ok(store
        .volume_data_path(&handle)
        .to_string_lossy()
        .into_owned())
}

async fn upload_input(
    s: &Shared,
    holder: &Holder,
    build_id: &str,
    name: &str,
    tar: &[u8],
) -> Result<ArtifactRef, String> {
    let rt = s.session.runtime();
    let service = ArtifactService::new(rt.volumes.clone(), rt.registry.clone());
    let volume = service
        .create_volume_for_artifact(&ArtifactRequest {
            build: build_id.to_owned(),
            step: format!("input: {name}"),
            name: name.to_owned(),
            holder: holder.clone(),
            retain_until: None,
        })
        .await
        .map_err(|e| format!("input {name:?}: {e}"))?;
    volume
        .write_tar(bytes_stream(tar.to_vec()))
        .await
        .map_err(|e| format!("input {name:?} cannot be unpacked: {e}"))?;
    let (artifact, info) = volume
        .seal()
        .await
        .map_err(|e| format!("input {name:?}: {e}"))?;
    Ok(ArtifactRef {
        id: artifact.id,
        name: name.to_owned(),
        volume: artifact.volume,
        size: info.size,
        digest: info.digest,
    })
}

/// An event on its way to the queue's log.
#[derive(Debug)]
enum Ev {
    Started(api::StepStarted),
    Output {
        step: String,
        stream: OutputStream,
        text: String,
    },
    Finished(StepView, Duration),
    Notice(String),
}

/// Output bytes of one build waiting for the writer beyond which output is dropped
/// (and the drop said in a notice), so a step that writes faster than the queue takes
/// cannot exhaust the server's memory.
const MAX_IN_FLIGHT: usize = 16 << 20;

/// The build's sink: events go to the writer task, in order.
struct QueueEvents {
    tx: mpsc::UnboundedSender<Ev>,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl BuildEvents for QueueEvents {
    fn step_started(&self, name: &str, kind: &str) {
        let _ = self.tx.send(Ev::Started(api::StepStarted {
            step: name.to_owned(),
            kind: kind.to_owned(),
        }));
    }

    fn step_output(&self, name: &str) -> Arc<dyn OutputSink> {
        Arc::new(QueueOutput {
            tx: self.tx.clone(),
            in_flight: self.in_flight.clone(),
            dropped: self.dropped.clone(),
            step: name.to_owned(),
            pending: Mutex::new((Vec::new(), Vec::new())),
        })
    }

    fn step_finished(&self, summary: &StepSummary) {
        let _ = self
            .tx
            .send(Ev::Finished(StepView::of(summary), summary.duration));
    }

    fn notice(&self, message: &str) {
        let _ = self.tx.send(Ev::Notice(message.to_owned()));
    }
}

/// A step's output: text, with a multi-byte character split across chunks held back
/// until it is whole.
struct QueueOutput {
    tx: mpsc::UnboundedSender<Ev>,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    step: String,
    /// Incomplete UTF-8 tails of stdout and stderr.
    pending: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl OutputSink for QueueOutput {
    fn write(&self, stream: OutputStream, data: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let buf = match stream {
            OutputStream::Stdout => &mut pending.0,
            OutputStream::Stderr => &mut pending.1,
        };
        if self.in_flight.load(Ordering::SeqCst) + data.len() > MAX_IN_FLIGHT {
            self.dropped.fetch_add(data.len() as u64, Ordering::SeqCst);
            return;
        }
        buf.extend_from_slice(data);
        let text = take_text(buf);
        if !text.is_empty() {
            self.in_flight.fetch_add(text.len(), Ordering::SeqCst);
            let _ = self.tx.send(Ev::Output {
                step: self.step.clone(),
                stream,
                text,
            });
        }
    }
}

impl Drop for QueueOutput {
    fn drop(&mut self) {
        let pending = self.pending.get_mut().unwrap_or_else(|e| e.into_inner());
        for (stream, buf) in [
            (OutputStream::Stdout, &mut pending.0),
            (OutputStream::Stderr, &mut pending.1),
        ] {
            if !buf.is_empty() {
                let text = String::from_utf8_lossy(buf).into_owned();
                self.in_flight.fetch_add(text.len(), Ordering::SeqCst);
                let _ = self.tx.send(Ev::Output {
                    step: self.step.clone(),
                    stream,
                    text,
                });
            }
        }
    }
}

/// The text of `buf`, leaving in it only an incomplete character at its end.
fn take_text(buf: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut rest: &[u8] = buf;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                match e.error_len() {
                    // Invalid bytes: replaced, as a lossy conversion would.
                    Some(n) => {
                        out.push('\u{FFFD}');
                        rest = &bad[n..];
                    }
                    // An incomplete character at the end: keep it for the next chunk.
                    None => {
                        rest = bad;
                        break;
                    }
                }
            }
        }
    }
    let keep = rest.to_vec();
    *buf = keep;
    out
}

fn stream_name(s: OutputStream) -> &'static str {
    match s {
        OutputStream::Stdout => "stdout",
        OutputStream::Stderr => "stderr",
    }
}

/// Output chunks of one step and stream are merged up to this size per event.
const MAX_CHUNK: usize = 64 << 10;

/// What the event writer shares with its build.
struct Writer {
    abort: Arc<AbortHandle>,
    lost: Arc<AtomicBool>,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    /// Set when a batch could not be written: the build then ends `errored`.
    unwritten: Arc<AtomicBool>,
}

async fn write_events(
    s: Arc<Shared>,
    lease: Lease,
    mut rx: mpsc::UnboundedReceiver<Ev>,
    w: Writer,
) {
    let Writer {
        abort,
        lost,
        in_flight,
        dropped,
        unwritten,
    } = w;
    let mut marked = false;
    let mut told_dropped = 0u64;
    let mut batch: Vec<Ev> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        if lost.load(Ordering::SeqCst) {
            batch.clear();
            continue;
        }
        let starts = batch.iter().any(|e| matches!(e, Ev::Started(_)));
        if starts && !marked {
            // Before the step-started event: from here a lapse ends the build instead of
            // running it twice. Unrecorded, a lapse could run the step again: stop.
            marked = thrice("marking the build started", &lease, &lost, &abort, || {
                s.queue.mark_started(&lease)
            })
            .await;
            if !marked && !lost.load(Ordering::SeqCst) {
                abort.abort_because(AbortReason::WorkerLost(
                    "the queue could not record that the build started".into(),
                ));
            }
        }
        let bytes: usize = batch
            .iter()
            .map(|e| match e {
                Ev::Output { text, .. } => text.len(),
                _ => 0,
            })
            .sum();
        let now_dropped = dropped.load(Ordering::SeqCst);
        if now_dropped > told_dropped {
            batch.push(Ev::Notice(format!(
                "{} bytes of output were dropped: the step wrote faster than the queue could take",
                now_dropped - told_dropped
            )));
            told_dropped = now_dropped;
        }
        let events = encode(&s, std::mem::take(&mut batch));
        let written = thrice("writing build events", &lease, &lost, &abort, || async {
            s.queue.append(&lease, &events).await.map(|_| ())
        })
        .await;
        // Every output byte sent was counted in, so this never goes below zero.
        in_flight.fetch_sub(bytes, Ordering::SeqCst);
        if !written && !lost.load(Ordering::SeqCst) {
            unwritten.store(true, Ordering::SeqCst);
        }
        s.events_tick.notify_waiters();
    }
}

/// The lease went to another replica: stop the build and write nothing more.
fn taken_over(lost: &AtomicBool, abort: &AbortHandle) {
    lost.store(true, Ordering::SeqCst);
    abort.abort_because(AbortReason::WorkerLost(
        "another replica took the build over".into(),
    ));
}

/// `op` tried up to three times with backoff; whether it succeeded. A refusal of the
/// lease is final: the build was taken over.
async fn thrice<F, Fut>(
    what: &str,
    lease: &Lease,
    lost: &AtomicBool,
    abort: &AbortHandle,
    mut op: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = jetbridge_core::Result<()>>,
{
    for attempt in 0..3u32 {
        match op().await {
            Ok(()) => return true,
            Err(e) if e.kind() == ErrorKind::Conflict => {
                taken_over(lost, abort);
                return false;
            }
            Err(e) => {
                tracing::warn!(build = %lease.build, error = %e, attempt, "{what} failed");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
    }
    false
}

/// The log entries of a batch, adjacent output of one step and stream merged.
fn encode(s: &Shared, batch: Vec<Ev>) -> Vec<NewEvent> {
    let mut out: Vec<NewEvent> = Vec::new();
    let mut open: Option<(String, OutputStream, String)> = None;
    let flush = |out: &mut Vec<NewEvent>, open: &mut Option<(String, OutputStream, String)>| {
        if let Some((step, stream, text)) = open.take() {
            out.push(json_event(
                kinds::OUTPUT,
                &api::OutputChunk {
                    step,
                    stream: stream_name(stream).to_owned(),
                    text,
                },
            ));
        }
    };
    for ev in batch {
        match ev {
            Ev::Output { step, stream, text } => {
                if let Some((st, sm, t)) = &mut open
                    && *st == step
                    && *sm == stream
                    && t.len() + text.len() <= MAX_CHUNK
                {
                    t.push_str(&text);
                    continue;
                }
                flush(&mut out, &mut open);
                open = Some((step, stream, text));
            }
            Ev::Started(e) => {
                flush(&mut out, &mut open);
                out.push(json_event(kinds::STEP_STARTED, &e));
            }
            Ev::Finished(v, took) => {
                flush(&mut out, &mut open);
                s.metrics
                    .step_finished(&v.kind, took, v.failure_class.as_deref());
                out.push(json_event(kinds::STEP_FINISHED, &v));
            }
            Ev::Notice(message) => {
                flush(&mut out, &mut open);
                out.push(json_event(kinds::NOTICE, &api::Notice { message }));
            }
        }
    }
    flush(&mut out, &mut open);
    out
}

fn json_event(kind: &str, data: &impl serde::Serialize) -> NewEvent {
    NewEvent::new(kind, serde_json::to_string(data).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_across_chunks_is_held_back_until_whole() {
        let bytes = "héllo".as_bytes();
        let mut buf = bytes[..2].to_vec(); // "h" and the first byte of "é"
        assert_eq!(take_text(&mut buf), "h");
        assert_eq!(buf, &bytes[1..2]);
        buf.extend_from_slice(&bytes[2..]);
        assert_eq!(take_text(&mut buf), "éllo");
        assert!(buf.is_empty());
    }

    #[test]
    fn invalid_bytes_are_replaced_not_held() {
        let mut buf = b"a\xffb".to_vec();
        assert_eq!(take_text(&mut buf), "a\u{FFFD}b");
        assert!(buf.is_empty());
    }
}
