//! The server's Prometheus metrics, every name prefixed `jetbridge_`. [`METRICS`] lists
//! them for the docs, which a test checks against what is exported.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Every metric: its exported name, type and help, as `docs/server.md` lists them.
pub const METRICS: &[(&str, &str, &str)] = &[
    ("jetbridge_build_info", "info", "The jetbridge version."),
    (
        "jetbridge_builds_total",
        "counter",
        "Builds this replica ended, by final status.",
    ),
    (
        "jetbridge_build_duration_seconds",
        "histogram",
        "Build time from claim to end.",
    ),
    (
        "jetbridge_queue_depth",
        "gauge",
        "Builds in the queue, by state (queued, running), across replicas.",
    ),
    (
        "jetbridge_queue_wait_seconds",
        "histogram",
        "Time from submission to claim.",
    ),
    (
        "jetbridge_submissions_total",
        "counter",
        "Submissions, by result (accepted, invalid, busy).",
    ),
    (
        "jetbridge_builds_running",
        "gauge",
        "Builds running on this replica.",
    ),
    (
        "jetbridge_steps_running",
        "gauge",
        "Steps running on this replica.",
    ),
    (
        "jetbridge_step_duration_seconds",
        "histogram",
        "Step time over all attempts, by step type.",
    ),
    (
        "jetbridge_step_failures_total",
        "counter",
        "Steps that did not succeed, by class (failed, evicted, oom-killed, ...).",
    ),
    (
        "jetbridge_lease_renewals_failed_total",
        "counter",
        "Build lease renewals that failed.",
    ),
    (
        "jetbridge_lapsed_builds_total",
        "counter",
        "Builds whose lease lapsed, by what became of them (requeued, errored).",
    ),
    (
        "jetbridge_step_phase_duration_seconds",
        "histogram",
        "Step time by phase (schedule, start, inputs, command, outputs, seal).",
    ),
    (
        "jetbridge_pods_owned",
        "gauge",
        "Step pods this replica's worker owns now.",
    ),
    (
        "jetbridge_secrets_owned",
        "gauge",
        "Env Secrets of this replica's step pods that exist now (Kubernetes).",
    ),
    (
        "jetbridge_artifact_bytes_total",
        "counter",
        "Artifact bytes through the volume store, by direction (in: written, out: read).",
    ),
    (
        "jetbridge_artifact_verification_failures_total",
        "counter",
        "Artifact reads refused because the content did not match its digest.",
    ),
    (
        "jetbridge_reaper_removals_total",
        "counter",
        "What the reaper removed, by kind (pods, pod-garbage, artifacts, orphan-volumes).",
    ),
    (
        "jetbridge_reaper_passes_total",
        "counter",
        "Reaper passes, by result (clean; with-errors: it went on past some; failed: it could not run).",
    ),
    (
        "jetbridge_reaper_last_clean_pass_timestamp_seconds",
        "gauge",
        "When the last reaper pass without an error ended (Unix time; 0: none yet).",
    ),
    (
        "jetbridge_heartbeat_age_seconds",
        "gauge",
        "Time since the worker's registration was last renewed.",
    ),
    (
        "jetbridge_registry_pool_connections",
        "gauge",
        "Connections of the registry's database pool, by state (busy, idle).",
    ),
    (
        "jetbridge_kube_requests_total",
        "counter",
        "Kubernetes API requests, by verb and status code (0: no answer).",
    ),
    (
        "jetbridge_process_resident_memory_bytes",
        "gauge",
        "Resident memory of the process.",
    ),
    (
        "jetbridge_process_open_fds",
        "gauge",
        "Open file descriptors of the process.",
    ),
    (
        "jetbridge_process_cpu_seconds",
        "gauge",
        "User and system CPU time of the process.",
    ),
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Status {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct State {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Result {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StepType {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Class {
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Outcome {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Phase {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Direction {
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Kind {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Request {
    pub verb: String,
    pub code: String,
}

/// Reads the Kubernetes API requests sent so far, as (verb, code, total), at scrape
/// time.
pub type RequestProbe = Box<dyn Fn() -> Vec<(String, u16, u64)> + Send + Sync>;

/// Counts, at scrape time, what a backend keeps beside its pods (env Secrets).
pub type SecretsProbe =
    Box<dyn Fn() -> futures::future::BoxFuture<'static, Option<u64>> + Send + Sync>;

/// Reads the registry pool's (busy, idle) connections at scrape time.
pub type PoolProbe = Box<dyn Fn() -> Option<(u64, u64)> + Send + Sync>;

fn seconds_histogram() -> Histogram {
    // 10 ms to about 3 h.
    Histogram::new(exponential_buckets(0.01, 2.5, 15))
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    pub(crate) builds: Family<Status, Counter>,
    pub(crate) build_duration: Histogram,
    pub(crate) queue_depth: Family<State, Gauge>,
    pub(crate) queue_wait: Histogram,
    pub(crate) submissions: Family<Result, Counter>,
    pub(crate) builds_running: Gauge,
    pub(crate) steps_running: Gauge,
    pub(crate) step_duration: Family<StepType, Histogram, fn() -> Histogram>,
    pub(crate) step_failures: Family<Class, Counter>,
    pub(crate) renewals_failed: Counter,
    pub(crate) lapsed: Family<Outcome, Counter>,
    phases: Family<Phase, Histogram, fn() -> Histogram>,
    pub(crate) pods_owned: Gauge,
    secrets_owned: Gauge,
    secrets_probe: std::sync::Mutex<Option<std::sync::Arc<SecretsProbe>>>,
    artifact_bytes: Family<Direction, Counter>,
    verification_failures: Counter,
    reaper_removals: Family<Kind, Counter>,
    reaper_passes: Family<Result, Counter>,
    reaper_last_clean: Gauge,
    pub(crate) heartbeat_age: Gauge<f64, AtomicU64>,
    pool: Family<State, Gauge>,
    pool_probe: std::sync::Mutex<Option<PoolProbe>>,
    kube_requests: Family<Request, Counter>,
    kube_probe: std::sync::Mutex<Option<RequestProbe>>,
    rss: Gauge,
    fds: Gauge,
    cpu: Gauge<f64, AtomicU64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The metrics of a server of `version`.
    pub fn new(version: &str) -> Self {
        let mut registry = Registry::default();
        let help = |name: &str| {
            METRICS
                .iter()
                .find(|(n, _, _)| *n == name)
                .map(|(_, _, h)| *h)
                .unwrap_or("")
        };
        registry.register(
            "jetbridge_build",
            help("jetbridge_build_info"),
            Info::new(vec![("version".to_owned(), version.to_owned())]),
        );
        let m = Metrics {
            builds: Family::default(),
            build_duration: seconds_histogram(),
            queue_depth: Family::default(),
            queue_wait: seconds_histogram(),
            submissions: Family::default(),
            builds_running: Gauge::default(),
            steps_running: Gauge::default(),
            step_duration: Family::new_with_constructor(seconds_histogram),
            step_failures: Family::default(),
            renewals_failed: Counter::default(),
            lapsed: Family::default(),
            phases: Family::new_with_constructor(seconds_histogram),
            pods_owned: Gauge::default(),
            secrets_owned: Gauge::default(),
            secrets_probe: std::sync::Mutex::new(None),
            artifact_bytes: Family::default(),
            verification_failures: Counter::default(),
            reaper_removals: Family::default(),
            reaper_passes: Family::default(),
            reaper_last_clean: Gauge::default(),
            heartbeat_age: Gauge::default(),
            pool: Family::default(),
            pool_probe: std::sync::Mutex::new(None),
            kube_requests: Family::default(),
            kube_probe: std::sync::Mutex::new(None),
            rss: Gauge::default(),
            fds: Gauge::default(),
            cpu: Gauge::default(),
            registry,
        };
        let mut m = m;
        // Counters are registered without `_total`: the encoder adds it.
        let r = &mut m.registry;
        r.register(
            "jetbridge_builds",
            help("jetbridge_builds_total"),
            m.builds.clone(),
        );
        r.register(
            "jetbridge_build_duration_seconds",
            help("jetbridge_build_duration_seconds"),
            m.build_duration.clone(),
        );
        r.register(
            "jetbridge_queue_depth",
            help("jetbridge_queue_depth"),
            m.queue_depth.clone(),
        );
        r.register(
            "jetbridge_queue_wait_seconds",
            help("jetbridge_queue_wait_seconds"),
            m.queue_wait.clone(),
        );
        r.register(
            "jetbridge_submissions",
            help("jetbridge_submissions_total"),
            m.submissions.clone(),
        );
        r.register(
            "jetbridge_builds_running",
            help("jetbridge_builds_running"),
            m.builds_running.clone(),
        );
        r.register(
            "jetbridge_steps_running",
            help("jetbridge_steps_running"),
            m.steps_running.clone(),
        );
        r.register(
            "jetbridge_step_duration_seconds",
            help("jetbridge_step_duration_seconds"),
            m.step_duration.clone(),
        );
        r.register(
            "jetbridge_step_failures",
            help("jetbridge_step_failures_total"),
            m.step_failures.clone(),
        );
        r.register(
            "jetbridge_lease_renewals_failed",
            help("jetbridge_lease_renewals_failed_total"),
            m.renewals_failed.clone(),
        );
        r.register(
            "jetbridge_lapsed_builds",
            help("jetbridge_lapsed_builds_total"),
            m.lapsed.clone(),
        );
        r.register(
            "jetbridge_step_phase_duration_seconds",
            help("jetbridge_step_phase_duration_seconds"),
            m.phases.clone(),
        );
        r.register(
            "jetbridge_pods_owned",
            help("jetbridge_pods_owned"),
            m.pods_owned.clone(),
        );
        r.register(
            "jetbridge_secrets_owned",
            help("jetbridge_secrets_owned"),
            m.secrets_owned.clone(),
        );
        r.register(
            "jetbridge_artifact_bytes",
            help("jetbridge_artifact_bytes_total"),
            m.artifact_bytes.clone(),
        );
        r.register(
            "jetbridge_artifact_verification_failures",
            help("jetbridge_artifact_verification_failures_total"),
            m.verification_failures.clone(),
        );
        r.register(
            "jetbridge_reaper_removals",
            help("jetbridge_reaper_removals_total"),
            m.reaper_removals.clone(),
        );
        r.register(
            "jetbridge_reaper_passes",
            help("jetbridge_reaper_passes_total"),
            m.reaper_passes.clone(),
        );
        r.register(
            "jetbridge_reaper_last_clean_pass_timestamp_seconds",
            help("jetbridge_reaper_last_clean_pass_timestamp_seconds"),
            m.reaper_last_clean.clone(),
        );
        // Every result from the start, so an alert sees a zero before the first failure.
        for result in ["clean", "with-errors", "failed"] {
            drop(m.reaper_passes.get_or_create(&Result {
                result: result.to_owned(),
            }));
        }
        r.register(
            "jetbridge_heartbeat_age_seconds",
            help("jetbridge_heartbeat_age_seconds"),
            m.heartbeat_age.clone(),
        );
        r.register(
            "jetbridge_registry_pool_connections",
            help("jetbridge_registry_pool_connections"),
            m.pool.clone(),
        );
        r.register(
            "jetbridge_kube_requests",
            help("jetbridge_kube_requests_total"),
            m.kube_requests.clone(),
        );
        r.register(
            "jetbridge_process_resident_memory_bytes",
            help("jetbridge_process_resident_memory_bytes"),
            m.rss.clone(),
        );
        r.register(
            "jetbridge_process_open_fds",
            help("jetbridge_process_open_fds"),
            m.fds.clone(),
        );
        r.register(
            "jetbridge_process_cpu_seconds",
            help("jetbridge_process_cpu_seconds"),
            m.cpu.clone(),
        );
        m
    }

    pub(crate) fn build_ended(&self, status: &str, took: Duration) {
        self.builds
            .get_or_create(&Status {
                status: status.to_owned(),
            })
            .inc();
        self.build_duration.observe(took.as_secs_f64());
    }

    pub(crate) fn submission(&self, result: &str) {
        self.submissions
            .get_or_create(&Result {
                result: result.to_owned(),
            })
            .inc();
    }

    pub(crate) fn step_finished(&self, kind: &str, took: Duration, failure: Option<&str>) {
        self.step_duration
            .get_or_create(&StepType {
                r#type: kind.to_owned(),
            })
            .observe(took.as_secs_f64());
        if let Some(class) = failure {
            self.step_failures
                .get_or_create(&Class {
                    class: class.to_owned(),
                })
                .inc();
        }
    }

    pub(crate) fn lapsed(&self, requeued: bool) {
        let outcome = if requeued { "requeued" } else { "errored" };
        self.lapsed
            .get_or_create(&Outcome {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub(crate) fn set_depth(&self, queued: u64, running: u64) {
        for (state, n) in [("queued", queued), ("running", running)] {
            self.queue_depth
                .get_or_create(&State {
                    state: state.to_owned(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// A step phase that took `took`.
    pub fn phase(&self, phase: &str, took: Duration) {
        self.phases
            .get_or_create(&Phase {
                phase: phase.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Artifact bytes written to (`in`) or read from (`out`) the volume store.
    pub fn artifact_bytes(&self, direction: &str, n: u64) {
        self.artifact_bytes
            .get_or_create(&Direction {
                direction: direction.to_owned(),
            })
            .inc_by(n);
    }

    /// A read refused because the content did not match its digest.
    pub fn verification_failed(&self) {
        self.verification_failures.inc();
    }

    /// One reaper pass: what it removed, or that it could not run.
    pub fn reaped(
        &self,
        pass: std::result::Result<&jetbridge_core::services::ReapReport, &jetbridge_core::Error>,
    ) {
        let r = match pass {
            Ok(r) => r,
            Err(_) => {
                self.reaper_pass("failed");
                return;
            }
        };
        if r.errors.is_empty() {
            self.reaper_pass("clean");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.reaper_last_clean
                .set(i64::try_from(now).unwrap_or(i64::MAX));
        } else {
            self.reaper_pass("with-errors");
        }
        for (kind, n) in [
            ("pods", r.pods_deleted.len()),
            ("pod-garbage", r.pod_garbage_deleted.len()),
            ("artifacts", r.artifacts_deleted),
            ("orphan-volumes", r.orphan_volumes_deleted),
        ] {
            self.reaper_removals
                .get_or_create(&Kind {
                    kind: kind.to_owned(),
                })
                .inc_by(n as u64);
        }
    }

    fn reaper_pass(&self, result: &str) {
        self.reaper_passes
            .get_or_create(&Result {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Where the registry pool's connections are read from at scrape time.
    pub fn set_pool_probe(&self, probe: PoolProbe) {
        *self.pool_probe.lock().unwrap_or_else(|e| e.into_inner()) = Some(probe);
    }

    /// Where the Secrets a replica owns are counted at scrape time.
    pub fn set_secrets_probe(&self, probe: SecretsProbe) {
        *self.secrets_probe.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(std::sync::Arc::new(probe));
    }

    /// Read the Secrets probe now (the scrape awaits it before encoding).
    pub(crate) async fn read_secrets(&self) {
        let probe = self
            .secrets_probe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(p) = probe
            && let Some(n) = p().await
        {
            self.secrets_owned.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Where the Kubernetes API request counts are read from at scrape time.
    pub fn set_request_probe(&self, probe: RequestProbe) {
        *self.kube_probe.lock().unwrap_or_else(|e| e.into_inner()) = Some(probe);
    }

    /// The text exposition, with the process figures read now.
    pub fn encode(&self) -> String {
        self.read_process();
        if let Some(counts) = self
            .kube_probe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|p| p())
        {
            for (verb, code, total) in counts {
                let c = self.kube_requests.get_or_create(&Request {
                    verb,
                    code: code.to_string(),
                });
                // The probe reports totals; the counter catches up to them.
                c.inc_by(total.saturating_sub(c.get()));
            }
        }
        if let Some((busy, idle)) = self
            .pool_probe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|p| p())
        {
            for (state, n) in [("busy", busy), ("idle", idle)] {
                self.pool
                    .get_or_create(&State {
                        state: state.to_owned(),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn read_process(&self) {
        // statm's second field is resident pages.
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
            && let Some(pages) = statm
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<i64>().ok())
        {
            self.rss.set(pages * page_size());
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.fds.set(i64::try_from(dir.count()).unwrap_or(i64::MAX));
        }
        if let Ok(usage) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        {
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            self.cpu
                .set(secs(usage.user_time()) + secs(usage.system_time()));
        }
    }
}

fn page_size() -> i64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096)
}

/// A volume store that counts the artifact bytes through it and the reads refused as
/// corrupt, for [`Metrics`]. Wrap the session's store with it.
pub struct CountingVolumes {
    inner: std::sync::Arc<dyn jetbridge_core::ports::VolumeStore>,
    metrics: std::sync::Arc<Metrics>,
}

impl std::fmt::Debug for CountingVolumes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingVolumes").finish_non_exhaustive()
    }
}

impl CountingVolumes {
    /// `inner`, counted into `metrics`.
    pub fn new(
        inner: std::sync::Arc<dyn jetbridge_core::ports::VolumeStore>,
        metrics: std::sync::Arc<Metrics>,
    ) -> Self {
        CountingVolumes { inner, metrics }
    }

    fn counted(
        &self,
        s: jetbridge_core::ports::ByteStream,
        direction: &'static str,
    ) -> jetbridge_core::ports::ByteStream {
        use futures::StreamExt as _;
        let metrics = self.metrics.clone();
        Box::pin(s.map(move |item| {
            match &item {
                Ok(b) => metrics.artifact_bytes(direction, b.len() as u64),
                Err(e) if e.kind() == jetbridge_core::ErrorKind::Corrupt => {
                    metrics.verification_failed()
                }
                Err(_) => {}
            }
            item
        }))
    }

    fn check<T>(&self, r: jetbridge_core::Result<T>) -> jetbridge_core::Result<T> {
        if let Err(e) = &r
            && e.kind() == jetbridge_core::ErrorKind::Corrupt
        {
            self.metrics.verification_failed();
        }
        r
    }
}

#[async_trait::async_trait]
impl jetbridge_core::ports::VolumeStore for CountingVolumes {
    fn capabilities(&self) -> jetbridge_core::ports::VolumeCapabilities {
        self.inner.capabilities()
    }
    async fn create(
        &self,
        handle: &jetbridge_core::names::VolumeHandle,
    ) -> jetbridge_core::Result<jetbridge_core::ports::VolumeInfo> {
        self.inner.create(handle).await
    }
    async fn write_tar(
        &self,
        handle: &jetbridge_core::names::VolumeHandle,
        tar: jetbridge_core::ports::ByteStream,
    ) -> jetbridge_core::Result<()> {
        self.inner.write_tar(handle, self.counted(tar, "in")).await
    }
    async fn seal(
        &self,
        handle: &jetbridge_core::names::VolumeHandle,
    ) -> jetbridge_core::Result<jetbridge_core::ports::VolumeInfo> {
        self.inner.seal(handle).await
    }
    async fn read_tar(
        &self,
        handle: &jetbridge_core::names::VolumeHandle,
    ) -> jetbridge_core::Result<jetbridge_core::ports::ByteStream> {
        let s = self.check(self.inner.read_tar(handle).await)?;
        Ok(self.counted(s, "out"))
    }
    async fn stat(
        &self,
        handle: &jetbridge_core::names::VolumeHandle,
    ) -> jetbridge_core::Result<jetbridge_core::ports::VolumeInfo> {
        self.check(self.inner.stat(handle).await)
    }
    async fn delete(
        &self,
        handle: &jetbridge_core::names::VolumeHandle,
    ) -> jetbridge_core::Result<()> {
        self.inner.delete(handle).await
    }
    async fn list(&self) -> jetbridge_core::Result<Vec<jetbridge_core::ports::VolumeInfo>> {
        self.inner.list().await
    }
    async fn mount(
        &self,
        handle: &jetbridge_core::names::VolumeHandle,
        access: jetbridge_core::ports::MountAccess,
    ) -> jetbridge_core::Result<jetbridge_core::ports::MountInfo> {
        self.inner.mount(handle, access).await
    }
    async fn free_bytes(
        &self,
        handle: &jetbridge_core::names::VolumeHandle,
    ) -> jetbridge_core::Result<Option<u64>> {
        self.inner.free_bytes(handle).await
    }
}

/// A tracing layer that times every `phase` span of a step into
/// `jetbridge_step_phase_duration_seconds`.
pub struct PhaseLayer {
    metrics: std::sync::Arc<Metrics>,
}

impl std::fmt::Debug for PhaseLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhaseLayer").finish_non_exhaustive()
    }
}

impl PhaseLayer {
    /// Phases timed into `metrics`.
    pub fn new(metrics: std::sync::Arc<Metrics>) -> Self {
        PhaseLayer { metrics }
    }
}

/// The `phase` field of a phase span, and when it began.
struct PhaseStart {
    phase: String,
    at: std::time::Instant,
}

struct PhaseField(Option<String>);

impl tracing::field::Visit for PhaseField {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "phase" {
            self.0 = Some(value.to_owned());
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "phase" {
            self.0 = Some(format!("{value:?}").trim_matches('"').to_owned());
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for PhaseLayer
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() != "phase" {
            return;
        }
        let mut field = PhaseField(None);
        attrs.record(&mut field);
        if let (Some(phase), Some(span)) = (field.0, ctx.span(id)) {
            span.extensions_mut().insert(PhaseStart {
                phase,
                at: std::time::Instant::now(),
            });
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if let Some(span) = ctx.span(&id)
            && let Some(start) = span.extensions().get::<PhaseStart>()
        {
            self.metrics.phase(&start.phase, start.at.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reaper_passes_are_counted_by_result_and_a_clean_one_is_timed() {
        let m = Metrics::new("0.0.0");
        let text = m.encode();
        assert!(
            text.contains("jetbridge_reaper_passes_total{result=\"failed\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("jetbridge_reaper_last_clean_pass_timestamp_seconds 0"),
            "{text}"
        );
        m.reaped(Err(&jetbridge_core::Error::new(
            jetbridge_core::ErrorKind::Transient,
            "registry down",
        )));
        let with_errors = jetbridge_core::services::ReapReport {
            errors: vec!["delete pod p: forbidden".to_owned()],
            ..Default::default()
        };
        m.reaped(Ok(&with_errors));
        m.reaped(Ok(&with_errors));
        let text = m.encode();
        assert!(
            text.contains("jetbridge_reaper_passes_total{result=\"failed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("jetbridge_reaper_passes_total{result=\"with-errors\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("jetbridge_reaper_last_clean_pass_timestamp_seconds 0"),
            "{text}"
        );
        m.reaped(Ok(&jetbridge_core::services::ReapReport::default()));
        let text = m.encode();
        assert!(
            text.contains("jetbridge_reaper_passes_total{result=\"clean\"} 1"),
            "{text}"
        );
        let stamp: i64 = text
            .lines()
            .find_map(|l| l.strip_prefix("jetbridge_reaper_last_clean_pass_timestamp_seconds "))
            .and_then(|v| v.trim().parse().ok())
            .expect("a timestamp");
        // After 2020: a real clock reading, not a count.
        assert!(stamp > 1_577_836_800, "{stamp}");
    }

    #[test]
    fn every_listed_metric_is_exported_and_every_exported_one_is_listed() {
        let m = Metrics::new("9.9.9");
        // Touch the families so they appear.
        m.build_ended("succeeded", Duration::from_secs(1));
        m.submission("accepted");
        m.step_finished("task", Duration::from_millis(5), Some("failed"));
        m.lapsed(true);
        m.set_depth(1, 2);
        m.renewals_failed.inc();
        m.phase("command", Duration::from_millis(3));
        m.artifact_bytes("in", 10);
        m.reaped(Ok(&jetbridge_core::services::ReapReport::default()));
        m.set_pool_probe(Box::new(|| Some((1, 2))));
        m.set_request_probe(Box::new(|| vec![("create".to_owned(), 201, 3)]));
        let text = m.encode();
        let exported: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let names = |n: &str| match n.strip_suffix("_total") {
            Some(base) => base.to_owned(),
            None => n.strip_suffix("_info").unwrap_or(n).to_owned(),
        };
        let listed: std::collections::BTreeSet<String> =
            METRICS.iter().map(|(n, _, _)| names(n)).collect();
        let exported: std::collections::BTreeSet<String> =
            exported.into_iter().map(names).collect();
        assert_eq!(listed, exported);
        assert!(
            text.contains("jetbridge_build_info{version=\"9.9.9\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("jetbridge_builds_total{status=\"succeeded\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("jetbridge_queue_depth{state=\"running\"} 2"),
            "{text}"
        );
        for want in [
            "jetbridge_registry_pool_connections{state=\"idle\"} 2",
            "jetbridge_artifact_bytes_total{direction=\"in\"} 10",
            "jetbridge_kube_requests_total{verb=\"create\",code=\"201\"} 3",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
        // A probe reports totals: a second scrape does not count them again.
        assert!(
            m.encode()
                .contains("jetbridge_kube_requests_total{verb=\"create\",code=\"201\"} 3")
        );
        assert!(
            text.lines().any(
                |l| l.starts_with("jetbridge_process_resident_memory_bytes ") && !l.ends_with(" 0")
            ),
            "{text}"
        );
    }
}
