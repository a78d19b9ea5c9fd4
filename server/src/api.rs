//! The API's wire types: what clients send and receive. The OpenAPI document is
//! generated from these and from the handlers.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jetbridge_core::ports::{BuildState, QueuedBuild};
use jetbridge_core::services::{BuildOutcome, BuildStatus, StepSummary};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A build to queue. `Debug` shows the names of the variables, never their values.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The pipeline's YAML text.
    pub pipeline: String,
    /// The name the pipeline's file goes by in messages (`file:line:column`).
    #[serde(default)]
    pub file: Option<String>,
    /// The job to run; may be left out when the pipeline has one job.
    #[serde(default)]
    pub job: Option<String>,
    /// Values for `((var))` references.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub vars: BTreeMap<String, serde_json::Value>,
    /// A plain tar (base64) of the directories that `type: local` resource types name,
    /// laid out relative to the pipeline file.
    #[serde(default)]
    pub bundle: Option<String>,
    /// Input directories, each a plain tar (base64), bound to artifact names before the
    /// first step (as `fly execute -i`).
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
}

impl std::fmt::Debug for SubmitRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubmitRequest")
            .field("file", &self.file)
            .field("job", &self.job)
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("inputs", &self.inputs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// An artifact a step produced or a build bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactView {
    /// The artifact's name.
    pub name: String,
    /// Bytes of regular files.
    pub size: u64,
    /// The tree digest, `sha256:...`.
    pub digest: Option<String>,
}

/// One step as it ended (after all attempts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    /// Display name (`get: repo`, `task: build`).
    pub name: String,
    /// `get`, `put`, `task`.
    pub kind: String,
    /// Whether the last attempt succeeded.
    pub ok: bool,
    /// `succeeded`, or why it did not.
    pub result: String,
    /// Wall time of all attempts.
    pub duration_ms: u64,
    /// Attempts made.
    pub attempts: u32,
    /// Artifacts produced.
    pub artifacts: Vec<ArtifactView>,
    /// The failure's class (`failed`, `evicted`, `oom-killed`...) when it failed.
    pub failure_class: Option<String>,
}

impl StepView {
    /// The view of a step summary.
    pub fn of(s: &StepSummary) -> Self {
        StepView {
            name: s.name.clone(),
            kind: s.kind.to_owned(),
            ok: s.result.is_ok(),
            result: match &s.result {
                Ok(()) => "succeeded".to_owned(),
                Err(f) => f.to_string(),
            },
            duration_ms: millis(s.duration),
            attempts: s.attempts,
            artifacts: s
                .artifacts
                .iter()
                .map(|a| ArtifactView {
                    name: a.name.clone(),
                    size: a.size,
                    digest: a.digest.as_ref().map(|d| d.as_str().to_owned()),
                })
                .collect(),
            failure_class: s.result.as_ref().err().map(|f| f.label().to_owned()),
        }
    }
}

/// How a build ended, as its holder reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OutcomeView {
    /// `succeeded`, `failed`, `errored` or `aborted`.
    pub status: String,
    /// From the claim to the end.
    pub duration_ms: u64,
    /// The first step that failed.
    pub failed_step: Option<String>,
    /// Why it failed.
    pub reason: Option<String>,
    /// Every executed step, in the order they finished.
    pub steps: Vec<StepView>,
    /// The artifacts bound at the end.
    pub artifacts: Vec<ArtifactView>,
}

impl OutcomeView {
    /// The view of an outcome.
    pub fn of(o: &BuildOutcome, duration: Duration) -> Self {
        OutcomeView {
            status: status_text(o.status).to_owned(),
            duration_ms: millis(duration),
            failed_step: o.failure.as_ref().map(|(n, _)| n.clone()),
            reason: o.failure.as_ref().map(|(_, f)| f.to_string()),
            steps: o.steps.iter().map(StepView::of).collect(),
            artifacts: o
                .artifacts
                .values()
                .map(|a| ArtifactView {
                    name: a.name.clone(),
                    size: a.size,
                    digest: a.digest.as_ref().map(|d| d.as_str().to_owned()),
                })
                .collect(),
        }
    }
}

/// The lowercase name of a build status.
pub fn status_text(s: BuildStatus) -> &'static str {
    match s {
        BuildStatus::Succeeded => "succeeded",
        BuildStatus::Failed => "failed",
        BuildStatus::Errored => "errored",
        BuildStatus::Aborted => "aborted",
    }
}

/// A build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BuildView {
    /// Its number.
    pub id: u64,
    /// Pipeline name.
    pub pipeline: String,
    /// Job name.
    pub job: String,
    /// `queued`, `running`, `succeeded`, `failed`, `errored` or `aborted`.
    pub state: String,
    /// While queued: how many queued builds are ahead of it.
    pub position: Option<u64>,
    /// The worker running it (or that last ran it).
    pub worker: Option<String>,
    /// How many times it has been claimed.
    pub attempt: u64,
    /// Why an abort was asked for, once one was.
    pub abort_requested: Option<String>,
    /// Why a build that did not succeed ended that way.
    pub reason: Option<String>,
    /// When it was submitted (milliseconds since the Unix epoch).
    pub submitted_at_ms: u64,
    /// When its current attempt started.
    pub started_at_ms: Option<u64>,
    /// When it ended.
    pub finished_at_ms: Option<u64>,
    /// Steps, artifacts and timings, once it has ended.
    pub outcome: Option<OutcomeView>,
}

impl BuildView {
    /// The view of a queued build.
    pub fn of(b: &QueuedBuild) -> Self {
        BuildView {
            id: b.id.0,
            pipeline: b.pipeline.clone(),
            job: b.job.clone(),
            state: b.state.as_str().to_owned(),
            position: b.position,
            worker: b.worker.clone(),
            attempt: b.attempt,
            abort_requested: b.abort_requested.clone(),
            reason: b.reason.clone(),
            submitted_at_ms: epoch_ms(b.submitted_at),
            started_at_ms: b.started_at.map(epoch_ms),
            finished_at_ms: b.finished_at.map(epoch_ms),
            outcome: b
                .outcome
                .as_deref()
                .and_then(|o| serde_json::from_slice(o).ok()),
        }
    }

    /// Whether the build has ended.
    pub fn is_final(&self) -> bool {
        BuildState::parse(&self.state).is_some_and(BuildState::is_final)
    }
}

/// A pipeline a build's `set_pipeline` step recorded. Its vars' values are never
/// shown: they may be secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PipelineView {
    /// The team (`main` unless the step named one).
    pub team: String,
    /// The pipeline's name.
    pub name: String,
    /// What makes this an instance of a pipeline group (`{}` for none).
    #[schema(value_type = Object)]
    pub instance_vars: serde_json::Value,
    /// The pipeline file's text, its `((vars))` not filled in.
    pub config: String,
    /// Where the file came from: `artifact/path`.
    pub file: String,
    /// 1 when first set; one more each time a set changed its config or vars.
    pub version: u64,
    /// The build whose step last changed it.
    pub set_by_build: u64,
    /// The names of the vars it was set with (`vars` and `var_files`); `null` when this
    /// replica cannot open them (no vars key, or another one).
    pub var_names: Option<Vec<String>>,
    /// When it was first set (milliseconds since the Unix epoch).
    pub created_at_ms: u64,
    /// When it last changed.
    pub updated_at_ms: u64,
}

/// Recorded pipelines, by team, name and instance vars.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PipelineList {
    /// The pipelines.
    pub pipelines: Vec<PipelineView>,
}

/// One page of builds, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BuildList {
    /// The builds.
    pub builds: Vec<BuildView>,
    /// The `before` of the next page, when there may be one.
    pub next: Option<u64>,
}

/// Where in a submitted file a problem is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LocationView {
    /// The file's name as submitted.
    pub file: String,
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
}

/// Every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What kind of error: `invalid`, `not-found`, `conflict`, `busy`, `unauthorized`,
    /// `too-large`, `unavailable`, `internal`.
    pub error: String,
    /// What is wrong and what to do, for a person.
    pub message: String,
    /// Where in the pipeline, for a plan that does not validate.
    pub location: Option<LocationView>,
}

/// What this server is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InfoView {
    /// The jetbridge version.
    pub version: String,
    /// This replica's worker name.
    pub worker: String,
    /// Builds this replica runs at once.
    pub max_builds: u64,
    /// Queued builds beyond which submissions are refused (429).
    pub max_queued: Option<u64>,
    /// Whether the queue is shared by several replicas (a database).
    pub shared_queue: bool,
    /// Whether this replica is draining (stopped claiming).
    pub draining: bool,
    /// Whether `type: local` resource types may run.
    pub local_resources: bool,
}

/// Readiness.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, `draining`, or what is unreachable.
    pub status: String,
}

/// The payload of a `step-started` event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StepStarted {
    /// Display name.
    pub step: String,
    /// `get`, `put`, `task`.
    pub kind: String,
}

/// The payload of an `output` event: a chunk of a step's output.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OutputChunk {
    /// Display name of the step.
    pub step: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The text (invalid UTF-8 replaced).
    pub text: String,
}

/// The payload of a `notice` event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Notice {
    /// What to say.
    pub message: String,
}

/// The payload of the `end` event, the last of every event stream.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EndEvent {
    /// The build as it ended.
    pub build: BuildView,
}

/// Event kinds, as they appear in the log and as SSE `event:` names.
pub mod kinds {
    /// [`super::StepStarted`].
    pub const STEP_STARTED: &str = "step-started";
    /// [`super::OutputChunk`].
    pub const OUTPUT: &str = "output";
    /// [`super::StepView`].
    pub const STEP_FINISHED: &str = "step-finished";
    /// [`super::Notice`].
    pub const NOTICE: &str = "notice";
    /// [`super::EndEvent`]: never stored; the stream sends it once the build has ended.
    pub const END: &str = "end";
}

/// Milliseconds of a duration, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(millis).unwrap_or(0)
}
