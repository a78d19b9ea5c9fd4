//! The build queue: what a server accepts, what its replicas claim and run, and every
//! build's event log.
//!
//! One queue may be shared by several server replicas (a database). A build is claimed
//! by one replica at a time under a [`Lease`]: the holder renews it on the queue's clock,
//! and every write the holder makes (events, start, end) names the lease, so a replica
//! that lost its build to a takeover is refused (`Conflict`) instead of writing over the
//! new holder. When a lease lapses, [`BuildQueue::reap_lapsed`] puts a build none of
//! whose steps had started back in the queue, and ends any other `errored`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::Result;

/// A build's number: unique in its queue, increasing in order of submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BuildId(pub u64);

impl std::fmt::Display for BuildId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for BuildId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        s.parse().map(BuildId)
    }
}

/// Where a build is in its life. `Queued` and `Running` are live; the rest are final
/// and never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BuildState {
    /// Waiting for a replica to claim it.
    Queued,
    /// Claimed by a replica under a lease.
    Running,
    /// Every step succeeded.
    Succeeded,
    /// A step failed (the plan's own failure).
    Failed,
    /// The build could not be run to its end (infrastructure, a lost worker).
    Errored,
    /// Aborted on request, or by a server shutting down.
    Aborted,
}

impl BuildState {
    /// Every state, in life order.
    pub const ALL: [BuildState; 6] = [
        BuildState::Queued,
        BuildState::Running,
        BuildState::Succeeded,
        BuildState::Failed,
        BuildState::Errored,
        BuildState::Aborted,
    ];

    /// The lowercase name used in the API, the database and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Queued => "queued",
            BuildState::Running => "running",
            BuildState::Succeeded => "succeeded",
            BuildState::Failed => "failed",
            BuildState::Errored => "errored",
            BuildState::Aborted => "aborted",
        }
    }

    /// The state named `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the state never changes again.
    pub fn is_final(self) -> bool {
        !matches!(self, BuildState::Queued | BuildState::Running)
    }
}

impl std::fmt::Display for BuildState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cap on how many builds sharing a key run at once: a job's `max_in_flight` (or
/// `serial: true`, a cap of 1) or one of its `serial_groups` (always 1).
///
/// A queued build is claimed only when, for each of its limits, no queued build with
/// the same key is ahead of it and fewer than `max_running` builds with the key are
/// running. So the cap holds, and builds sharing a key start in the order they were
/// submitted: a later build never overtakes an earlier one it shares a key with, even
/// when the earlier one waits on another of its keys (as Concourse starts a job's
/// pending builds in order). The oldest queued build waits only for running builds, so
/// the queue always moves once they end.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InFlightLimit {
    /// What the builds share, compared as an opaque string: [`Self::job`] and
    /// [`Self::serial_group`] encode the pipeline so that names from different pipelines
    /// (or a job and a group of the same name) never collide.
    pub key: String,
    /// How many builds with this key may run at once (at least 1).
    pub max_running: u32,
}

impl InFlightLimit {
    /// At most `max_running` builds of `job` of `pipeline` at once.
    pub fn job(pipeline: &str, job: &str, max_running: u32) -> Self {
        InFlightLimit {
            key: Self::encode("job", pipeline, job),
            max_running,
        }
    }

    /// One build at a time among the jobs of `pipeline` in `group`.
    pub fn serial_group(pipeline: &str, group: &str) -> Self {
        InFlightLimit {
            key: Self::encode("group", pipeline, group),
            max_running: 1,
        }
    }

    /// `KIND:LEN:PIPELINE:NAME`: the pipeline's length makes the split unambiguous
    /// whatever characters the names hold, and the text stays readable in a database.
    fn encode(kind: &str, pipeline: &str, name: &str) -> String {
        format!("{kind}:{}:{pipeline}:{name}", pipeline.len())
    }
}

/// A submission. `Debug` shows the spec's size only (it may hold secrets).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewBuild {
    /// The pipeline's name, for listing and filters.
    pub pipeline: String,
    /// The job to run, for listing and filters.
    pub job: String,
    /// What the replica that claims the build needs to run it, opaque to the queue (the
    /// server's own encoding). It is stored as given, so it must hold no secret in clear.
    pub spec: Vec<u8>,
    /// Submissions beyond this many queued builds are refused with `Busy`; `None`: no
    /// limit.
    pub max_queued: Option<u64>,
    /// Caps on how many builds sharing a key run at once (empty: none). A limit whose
    /// `max_running` is 0 is `Invalid`: the build could never run.
    pub limits: Vec<InFlightLimit>,
}

impl NewBuild {
    /// A submission with no queue limit.
    pub fn new(pipeline: impl Into<String>, job: impl Into<String>, spec: Vec<u8>) -> Self {
        NewBuild {
            pipeline: pipeline.into(),
            job: job.into(),
            spec,
            max_queued: None,
            limits: Vec::new(),
        }
    }

    /// Refuse the submission (`Busy`) when `max` builds are queued already.
    pub fn with_max_queued(mut self, max: Option<u64>) -> Self {
        self.max_queued = max;
        self
    }

    /// Hold the build while claiming it would break one of `limits`.
    pub fn with_limits(mut self, limits: impl IntoIterator<Item = InFlightLimit>) -> Self {
        self.limits = limits.into_iter().collect();
        self
    }

    /// `Invalid` when a limit could never be met (0 builds at once).
    pub fn check_limits(&self) -> Result<()> {
        match self.limits.iter().find(|l| l.max_running == 0) {
            Some(l) => Err(crate::Error::invalid(format!(
                "in-flight limit {:?}: at most 0 builds at once would never run one",
                l.key
            ))),
            None => Ok(()),
        }
    }
}

/// A build as the queue knows it. `Debug` shows the spec's size only.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueuedBuild {
    /// Its number.
    pub id: BuildId,
    /// Pipeline name.
    pub pipeline: String,
    /// Job name.
    pub job: String,
    /// The submission's spec, as given.
    pub spec: Vec<u8>,
    /// Where it is in its life.
    pub state: BuildState,
    /// While queued: how many queued builds are ahead of it (0: none). A build at 0 may
    /// still wait for one of its [`Self::limits`].
    pub position: Option<u64>,
    /// The worker holding (or that last held) its lease.
    pub worker: Option<String>,
    /// How many times it has been claimed; the current lease's token.
    pub attempt: u64,
    /// Whether a step of the current attempt has started (a lapse then ends the build
    /// instead of re-queueing it).
    pub steps_started: bool,
    /// Why an abort was asked for, once one was.
    pub abort_requested: Option<String>,
    /// Why a build that did not succeed ended the way it did.
    pub reason: Option<String>,
    /// The holder's final report (steps, artifacts, timings), opaque to the queue.
    pub outcome: Option<Vec<u8>>,
    /// When it was submitted, on the queue's clock.
    pub submitted_at: SystemTime,
    /// When its current attempt was claimed.
    pub started_at: Option<SystemTime>,
    /// When it ended.
    pub finished_at: Option<SystemTime>,
    /// Its in-flight limits, as submitted.
    pub limits: Vec<InFlightLimit>,
}

impl std::fmt::Debug for NewBuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewBuild")
            .field("pipeline", &self.pipeline)
            .field("job", &self.job)
            .field("spec_bytes", &self.spec.len())
            .field("max_queued", &self.max_queued)
            .field("limits", &self.limits)
            .finish()
    }
}

impl std::fmt::Debug for QueuedBuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuedBuild")
            .field("id", &self.id)
            .field("pipeline", &self.pipeline)
            .field("job", &self.job)
            .field("spec_bytes", &self.spec.len())
            .field("state", &self.state)
            .field("position", &self.position)
            .field("worker", &self.worker)
            .field("attempt", &self.attempt)
            .field("steps_started", &self.steps_started)
            .field("abort_requested", &self.abort_requested)
            .field("reason", &self.reason)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl QueuedBuild {
    /// A build just submitted: queued, never claimed. Adapters set the other fields
    /// from what they store.
    pub fn new(
        id: BuildId,
        pipeline: impl Into<String>,
        job: impl Into<String>,
        spec: Vec<u8>,
        submitted_at: SystemTime,
    ) -> Self {
        QueuedBuild {
            id,
            pipeline: pipeline.into(),
            job: job.into(),
            spec,
            state: BuildState::Queued,
            position: None,
            worker: None,
            attempt: 0,
            steps_started: false,
            abort_requested: None,
            reason: None,
            outcome: None,
            submitted_at,
            started_at: None,
            finished_at: None,
            limits: Vec::new(),
        }
    }
}

/// The right to run one attempt of one build. Every write of the holder names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The build.
    pub build: BuildId,
    /// Who holds it.
    pub worker: String,
    /// The attempt it was granted for ([`QueuedBuild::attempt`]): a later claim of the
    /// same build has a higher one, which fences this lease off.
    pub token: u64,
}

/// A successful claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The lease to renew and to name in every write.
    pub lease: Lease,
    /// The build, now `Running`.
    pub build: QueuedBuild,
}

/// What a renewal tells the holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseStatus {
    /// Set once someone asked for the build to be aborted: the holder should abort it.
    pub abort_requested: Option<String>,
}

/// The end of a build, as its holder reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BuildEnd {
    /// A final state.
    pub state: BuildState,
    /// Why it did not succeed.
    pub reason: Option<String>,
    /// The final report, opaque to the queue.
    pub outcome: Option<Vec<u8>>,
}

impl BuildEnd {
    /// An end in `state` (which must be final).
    pub fn new(state: BuildState) -> Self {
        BuildEnd {
            state,
            reason: None,
            outcome: None,
        }
    }
    /// With a reason.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
    /// With a final report.
    pub fn with_outcome(mut self, outcome: Vec<u8>) -> Self {
        self.outcome = Some(outcome);
        self
    }
}

/// One entry of a build's event log, to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// What kind of event (the server's vocabulary: `step-started`, `output`, ...).
    pub kind: String,
    /// Its payload, opaque to the queue.
    pub data: String,
}

impl NewEvent {
    /// An event.
    pub fn new(kind: impl Into<String>, data: impl Into<String>) -> Self {
        NewEvent {
            kind: kind.into(),
            data: data.into(),
        }
    }
}

/// One stored entry of a build's event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildEvent {
    /// The build.
    pub build: BuildId,
    /// Its place in the build's log: 1, 2, 3, ... with no gaps.
    pub seq: u64,
    /// Kind, as appended.
    pub kind: String,
    /// Payload, as appended.
    pub data: String,
}

/// A pipeline a build's `set_pipeline` step records. Pipelines are keyed by
/// (`team`, `name`, `instance_vars`): setting the same key again replaces it.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewPipeline {
    /// The team (Concourse's; `main` unless the step names one).
    pub team: String,
    /// The pipeline's name.
    pub name: String,
    /// `instance_vars` as canonical JSON ([`canonical_json`]; `{}` for none): what
    /// makes this an instance of a pipeline group.
    pub instance_vars: String,
    /// The pipeline file's text, as read (its `((vars))` not filled in).
    pub config: String,
    /// The step's `vars` and `var_files`, opaque to the queue: the server seals them,
    /// as values may be secrets.
    pub vars: Vec<u8>,
    /// Where the file came from (`artifact/path`).
    pub file: String,
}

impl NewPipeline {
    /// A pipeline `team`/`name` with no instance vars and no vars.
    pub fn new(
        team: impl Into<String>,
        name: impl Into<String>,
        config: impl Into<String>,
        file: impl Into<String>,
    ) -> Self {
        NewPipeline {
            team: team.into(),
            name: name.into(),
            instance_vars: "{}".to_owned(),
            config: config.into(),
            vars: Vec::new(),
            file: file.into(),
        }
    }

    /// With instance vars (stored in canonical form).
    pub fn with_instance_vars(mut self, v: &serde_json::Value) -> Self {
        self.instance_vars = canonical_json(v);
        self
    }

    /// With the sealed vars.
    pub fn with_vars(mut self, vars: Vec<u8>) -> Self {
        self.vars = vars;
        self
    }
}

impl std::fmt::Debug for NewPipeline {
    // The vars are sealed, but their size is all anyone debugging needs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewPipeline")
            .field("team", &self.team)
            .field("name", &self.name)
            .field("instance_vars", &self.instance_vars)
            .field("config_bytes", &self.config.len())
            .field("vars_bytes", &self.vars.len())
            .field("file", &self.file)
            .finish()
    }
}

/// A recorded pipeline.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredPipeline {
    /// Team, name, instance vars, config, sealed vars and file, as last set.
    pub pipeline: NewPipeline,
    /// 1 when first set; one more each time a set changed its config or vars.
    pub version: u64,
    /// The build whose step last changed it.
    pub set_by: BuildId,
    /// When it was first set (the queue's clock).
    pub created_at: SystemTime,
    /// When it last changed (the queue's clock).
    pub updated_at: SystemTime,
}

impl StoredPipeline {
    /// A stored pipeline (for adapters).
    pub fn new(
        pipeline: NewPipeline,
        version: u64,
        set_by: BuildId,
        created_at: SystemTime,
        updated_at: SystemTime,
    ) -> Self {
        StoredPipeline {
            pipeline,
            version,
            set_by,
            created_at,
            updated_at,
        }
    }
}

impl std::fmt::Debug for StoredPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredPipeline")
            .field("pipeline", &self.pipeline)
            .field("version", &self.version)
            .field("set_by", &self.set_by)
            .finish_non_exhaustive()
    }
}

/// What [`BuildQueue::set_pipeline`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineSet {
    /// The pipeline as stored now.
    pub stored: StoredPipeline,
    /// Whether this set changed anything (a first set, or a new config or vars).
    pub changed: bool,
}

/// `v` as JSON with every object's keys in order, so that equal values have one text
/// (instance vars are part of a pipeline's key).
pub fn canonical_json(v: &serde_json::Value) -> String {
    fn sorted(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                serde_json::Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&m[k])))
                        .collect(),
                )
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    match v {
        serde_json::Value::Null => "{}".to_owned(),
        v => sorted(v).to_string(),
    }
}

/// Which builds [`BuildQueue::list`] returns: newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BuildFilter {
    /// Only builds in one of these states (empty: any).
    pub states: Vec<BuildState>,
    /// Only builds of this pipeline.
    pub pipeline: Option<String>,
    /// Only builds of this job.
    pub job: Option<String>,
    /// The cursor: only builds older than this one (a page's [`BuildPage::next`]).
    pub before: Option<BuildId>,
    /// At most this many (at least 1).
    pub limit: usize,
}

impl Default for BuildFilter {
    fn default() -> Self {
        BuildFilter {
            states: Vec::new(),
            pipeline: None,
            job: None,
            before: None,
            limit: 50,
        }
    }
}

impl BuildFilter {
    /// Only these states.
    pub fn with_states(mut self, states: impl IntoIterator<Item = BuildState>) -> Self {
        self.states = states.into_iter().collect();
        self
    }
    /// Only this pipeline.
    pub fn with_pipeline(mut self, p: impl Into<String>) -> Self {
        self.pipeline = Some(p.into());
        self
    }
    /// Only this job.
    pub fn with_job(mut self, j: impl Into<String>) -> Self {
        self.job = Some(j.into());
        self
    }
    /// Only builds older than `id`.
    pub fn with_before(mut self, id: Option<BuildId>) -> Self {
        self.before = id;
        self
    }
    /// Page size.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Whether `b` passes the filter's conditions (not the cursor or limit).
    pub fn matches(&self, b: &QueuedBuild) -> bool {
        (self.states.is_empty() || self.states.contains(&b.state))
            && self.pipeline.as_ref().is_none_or(|p| *p == b.pipeline)
            && self.job.as_ref().is_none_or(|j| *j == b.job)
    }
}

/// One page of [`BuildQueue::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPage {
    /// Newest first.
    pub builds: Vec<QueuedBuild>,
    /// The cursor of the next page (`BuildFilter::before`), when there may be one.
    pub next: Option<BuildId>,
}

/// A build whose lease lapsed, as [`BuildQueue::reap_lapsed`] dealt with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LapsedBuild {
    /// The build.
    pub id: BuildId,
    /// The worker whose lease lapsed.
    pub worker: String,
    /// `true`: no step had started and it is queued again; `false`: it ended `errored`.
    pub requeued: bool,
}

/// How many builds are queued and running, for metrics and readiness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Waiting.
    pub queued: u64,
    /// Claimed.
    pub running: u64,
}

/// What a [`BuildQueue`] can do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueCapabilities {
    /// Builds and their events outlive the process.
    pub persistent: bool,
    /// Several processes can share it (claims are exclusive across processes).
    pub shared: bool,
}

impl QueueCapabilities {
    /// All off.
    pub fn none() -> Self {
        Self::default()
    }
    /// Set [`Self::persistent`].
    pub fn with_persistent(mut self, v: bool) -> Self {
        self.persistent = v;
        self
    }
    /// Set [`Self::shared`].
    pub fn with_shared(mut self, v: bool) -> Self {
        self.shared = v;
        self
    }
}

/// The build queue.
///
/// Claims are FIFO by [`BuildId`] (a build put back by [`Self::reap_lapsed`] keeps its
/// place) and exclusive: two concurrent claims never return the same build. A build
/// that one of its [`InFlightLimit`]s holds is passed over for the next one; concurrent
/// claims, on any replica, never run more builds of a key than its limit. A running
/// build counts against its limits until it ends or a reap puts it back in the queue
/// (a lapsed lease frees its slots only through [`Self::reap_lapsed`]). Lease times
/// are judged on the queue's own clock (the database's `now()`). A lease is held while
/// its build is `Running` with the lease's token, whether or not its time has passed;
/// only a reap takes it away. Writes naming a lease that is no longer held fail with
/// `Conflict`.
#[async_trait]
pub trait BuildQueue: Send + Sync {
    /// What this queue can do.
    fn capabilities(&self) -> QueueCapabilities;

    /// Queue a build. `Busy` when `new.max_queued` builds are queued already; `Invalid`
    /// for a limit of 0 ([`NewBuild::check_limits`]).
    async fn submit(&self, new: &NewBuild) -> Result<QueuedBuild>;

    /// Claim the oldest queued build that no in-flight limit holds for `worker`, with a
    /// lease of `ttl`; `None` when there is none.
    async fn claim(&self, worker: &str, ttl: Duration) -> Result<Option<Claimed>>;

    /// Extend a held lease to `ttl` from now and learn whether an abort was asked for.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<LeaseStatus>;

    /// Record that a step of this attempt has started: from now on a lapse ends the
    /// build instead of running it again. Idempotent.
    async fn mark_started(&self, lease: &Lease) -> Result<()>;

    /// Append events to the build's log, in order; returns the last one's `seq`.
    async fn append(&self, lease: &Lease, events: &[NewEvent]) -> Result<u64>;

    /// End the build. `Invalid` when `end.state` is not final.
    async fn finish(&self, lease: &Lease, end: &BuildEnd) -> Result<QueuedBuild>;

    /// One build; `NotFound` when there is none with that id.
    async fn get(&self, id: BuildId) -> Result<QueuedBuild>;

    /// Builds matching `filter`, newest first, one page at a time.
    async fn list(&self, filter: &BuildFilter) -> Result<BuildPage>;

    /// Up to `limit` events of a build with `seq > after`, in order; `NotFound` for an
    /// unknown build.
    async fn events(&self, id: BuildId, after: u64, limit: usize) -> Result<Vec<BuildEvent>>;

    /// Ask for a build to be aborted. A queued build ends `Aborted` at once with
    /// `reason`; a running one keeps running with [`QueuedBuild::abort_requested`] set
    /// (its holder learns it at its next renewal; asking again is a no-op). `Conflict`
    /// for a build that has ended.
    async fn request_abort(&self, id: BuildId, reason: &str) -> Result<QueuedBuild>;

    /// Deal with every build whose lease has lapsed: one none of whose steps had
    /// started goes back to the queue; any other ends `Errored` with `reason`.
    async fn reap_lapsed(&self, reason: &str) -> Result<Vec<LapsedBuild>>;

    /// How many builds are queued and running.
    async fn depth(&self) -> Result<QueueDepth>;

    /// Record `pipeline` for the build `lease` holds, replacing the one with the same
    /// (team, name, instance vars): the version goes up when the config or the vars
    /// differ, and nothing changes when they are the same. `Conflict` when the lease
    /// is no longer held (a replica that lost its build sets nothing).
    async fn set_pipeline(&self, lease: &Lease, pipeline: &NewPipeline) -> Result<PipelineSet>;

    /// The recorded pipelines, ordered by team, name and instance vars; only those of
    /// `team` and `name` when given. At most 1,000.
    async fn pipelines(
        &self,
        team: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<StoredPipeline>>;
}

macro_rules! forward_queue {
    ($ty:ty) => {
        #[async_trait]
        impl<T: BuildQueue + ?Sized> BuildQueue for $ty {
            fn capabilities(&self) -> QueueCapabilities {
                (**self).capabilities()
            }
            async fn submit(&self, new: &NewBuild) -> Result<QueuedBuild> {
                (**self).submit(new).await
            }
            async fn claim(&self, worker: &str, ttl: Duration) -> Result<Option<Claimed>> {
                (**self).claim(worker, ttl).await
            }
            async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<LeaseStatus> {
                (**self).renew(lease, ttl).await
            }
            async fn mark_started(&self, lease: &Lease) -> Result<()> {
                (**self).mark_started(lease).await
            }
            async fn append(&self, lease: &Lease, events: &[NewEvent]) -> Result<u64> {
                (**self).append(lease, events).await
            }
            async fn finish(&self, lease: &Lease, end: &BuildEnd) -> Result<QueuedBuild> {
                (**self).finish(lease, end).await
            }
            async fn get(&self, id: BuildId) -> Result<QueuedBuild> {
                (**self).get(id).await
            }
            async fn list(&self, filter: &BuildFilter) -> Result<BuildPage> {
                (**self).list(filter).await
            }
            async fn events(
                &self,
                id: BuildId,
                after: u64,
                limit: usize,
            ) -> Result<Vec<BuildEvent>> {
                (**self).events(id, after, limit).await
            }
            async fn request_abort(&self, id: BuildId, reason: &str) -> Result<QueuedBuild> {
                (**self).request_abort(id, reason).await
            }
            async fn reap_lapsed(&self, reason: &str) -> Result<Vec<LapsedBuild>> {
                (**self).reap_lapsed(reason).await
            }
            async fn depth(&self) -> Result<QueueDepth> {
                (**self).depth().await
            }
            async fn set_pipeline(
                &self,
                lease: &Lease,
                pipeline: &NewPipeline,
            ) -> Result<PipelineSet> {
                (**self).set_pipeline(lease, pipeline).await
            }
            async fn pipelines(
                &self,
                team: Option<&str>,
                name: Option<&str>,
            ) -> Result<Vec<StoredPipeline>> {
                (**self).pipelines(team, name).await
            }
        }
    };
}

forward_queue!(Arc<T>);
forward_queue!(Box<T>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_only_live_ones_are_not_final() {
        for s in BuildState::ALL {
            assert_eq!(BuildState::parse(s.as_str()), Some(s));
        }
        assert_eq!(BuildState::parse("done"), None);
        let live: Vec<_> = BuildState::ALL
            .into_iter()
            .filter(|s| !s.is_final())
            .collect();
        assert_eq!(live, [BuildState::Queued, BuildState::Running]);
    }

    #[test]
    fn canonical_json_orders_keys_at_every_depth() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": [{"q": 1, "p": 2}], "x": null}}"#).unwrap();
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":null,"y":[{"p":2,"q":1}]},"b":1}"#
        );
        assert_eq!(canonical_json(&serde_json::Value::Null), "{}");
    }

    #[test]
    fn limit_keys_never_collide_across_kinds_pipelines_or_names() {
        let keys = [
            InFlightLimit::job("a:1", "b", 1).key,
            InFlightLimit::job("a", "1:b", 1).key,
            InFlightLimit::serial_group("a:1", "b").key,
            InFlightLimit::job("p", "x", 1).key,
            InFlightLimit::serial_group("p", "x").key,
        ];
        let distinct: std::collections::BTreeSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:?}");
        assert_eq!(InFlightLimit::serial_group("p", "g").max_running, 1);
    }

    #[test]
    fn a_limit_of_zero_is_invalid() {
        let ok = NewBuild::new("p", "j", vec![]).with_limits([InFlightLimit::job("p", "j", 1)]);
        assert!(ok.check_limits().is_ok());
        let zero = NewBuild::new("p", "j", vec![]).with_limits([InFlightLimit::job("p", "j", 0)]);
        let e = zero.check_limits().unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Invalid);
    }

    #[test]
    fn build_ids_parse_and_order() {
        assert_eq!("42".parse::<BuildId>(), Ok(BuildId(42)));
        assert!("x".parse::<BuildId>().is_err());
        assert!(BuildId(2) > BuildId(1));
    }
}
