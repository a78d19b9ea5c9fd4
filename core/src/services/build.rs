//! The build runner: a job's plan, in order, with artifacts bound by name.
//!
//! Runs `in_parallel`, `do`, the hooks (`on_success`, `on_failure`, `on_error`,
//! `on_abort`, `ensure`), `attempts` and `timeout`; binds each output to later inputs
//! by name; releases the build's artifact references when it ends. A step's outputs
//! are bound even when it failed, so hooks can read them (test reports).

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};

use super::abort::{AbortReason, AbortSignal};
use super::failure::StepFailure;
use super::pipelines::PipelineToSet;
use super::step::{
    ArtifactRef, StepCommand, StepConfig, StepInput, StepOutput, StepRequest, StepRunner,
};
use crate::error::{Error, Result};
use crate::images::{ImageResolver, ResolvedImage};
use crate::names::{StepHandle, StepIdentity};
use crate::plan::{
    Across, AcrossValues, GetStep, Hooks, LoadVarStep, Pipeline, PutStep, SetPipelineStep, Step,
    StepKind, TaskConfig, TaskSource, TaskStep, VarFormat, Vars,
};
use crate::ports::{Holder, OutputSink, Resources, Runtime};

/// How a build ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStatus {
    /// Every step succeeded.
    Succeeded,
    /// A step failed (its command exited non-zero, or timed out).
    Failed,
    /// The platform failed to run a step (evicted, lost, unschedulable...).
    Errored,
    /// Aborted.
    Aborted,
}

/// One step as the summary shows it.
#[derive(Debug, Clone)]
pub struct StepSummary {
    /// Display name (`get: repo`, `task: build`).
    pub name: String,
    /// `get`, `put`, `task`.
    pub kind: &'static str,
    /// Result of the last attempt.
    pub result: std::result::Result<(), StepFailure>,
    /// Wall time of all attempts.
    pub duration: Duration,
    /// Artifacts produced.
    pub artifacts: Vec<ArtifactRef>,
    /// Attempts made.
    pub attempts: u32,
}

/// The end of a build.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    /// Status.
    pub status: BuildStatus,
    /// Every executed step, in the order they finished.
    pub steps: Vec<StepSummary>,
    /// The first step that failed, and why.
    pub failure: Option<(String, StepFailure)>,
    /// The artifacts bound at the end, by name.
    pub artifacts: BTreeMap<String, ArtifactRef>,
}

/// What the build tells whoever watches it.
pub trait BuildEvents: Send + Sync {
    /// A step started.
    fn step_started(&self, name: &str, kind: &str);
    /// Where a step's output goes.
    fn step_output(&self, name: &str) -> Arc<dyn OutputSink>;
    /// A step ended (after all attempts).
    fn step_finished(&self, summary: &StepSummary);
    /// Something worth saying once (e.g. images not honoured locally).
    fn notice(&self, message: &str);
}

/// Events nobody watches.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl BuildEvents for NoEvents {
    fn step_started(&self, _: &str, _: &str) {}
    fn step_output(&self, _: &str) -> Arc<dyn OutputSink> {
        Arc::new(crate::ports::DiscardOutput)
    }
    fn step_finished(&self, _: &StepSummary) {}
    fn notice(&self, _: &str) {}
}

/// A build to run.
///
/// `#[non_exhaustive]`: build it with [`BuildRequest::new`] and the `with_*` methods.
#[derive(Clone)]
#[non_exhaustive]
pub struct BuildRequest {
    /// The pipeline.
    pub pipeline: Arc<Pipeline>,
    /// Job name.
    pub job: String,
    /// Build number.
    pub build_number: u64,
    /// Build id, unique across pipelines (artifact records, references).
    pub build_id: String,
    /// Variables for task files loaded at run time.
    pub vars: Vars,
    /// Ends the build early.
    pub abort: AbortSignal,
    /// Who watches this build; `None`: nobody.
    pub events: Option<Arc<dyn BuildEvents>>,
    /// Artifacts bound to names before the first step (uploaded inputs), as a `get`
    /// of that name would bind them.
    pub inputs: BTreeMap<String, ArtifactRef>,
    /// How this build's images and resource types resolve; `None`: the runner's. A
    /// server gives each build its own, so `type: local` paths resolve inside what
    /// that build's submitter uploaded.
    pub images: Option<ImageResolver>,
    /// Where `set_pipeline` steps record pipelines; `None`: nowhere, and the step
    /// fails saying so.
    pub pipelines: Option<Arc<dyn super::pipelines::PipelineSink>>,
}

impl BuildRequest {
    /// Build `build_number` of `job`, with no variables and no abort.
    pub fn new(
        pipeline: Arc<Pipeline>,
        job: impl Into<String>,
        build_number: u64,
        build_id: impl Into<String>,
    ) -> Self {
        BuildRequest {
            pipeline,
            job: job.into(),
            build_number,
            build_id: build_id.into(),
            vars: Vars::new(),
            abort: AbortSignal::never(),
            events: None,
            inputs: BTreeMap::new(),
            images: None,
            pipelines: None,
        }
    }

    /// Record this build's `set_pipeline` steps in `sink`.
    pub fn with_pipelines(mut self, sink: Arc<dyn super::pipelines::PipelineSink>) -> Self {
        self.pipelines = Some(sink);
        self
    }

    /// Resolve this build's images with `images` instead of the runner's resolver.
    pub fn with_images(mut self, images: ImageResolver) -> Self {
        self.images = Some(images);
        self
    }

    /// Who watches this build: one runner serves many builds, each with its own sink.
    pub fn with_events(mut self, events: Arc<dyn BuildEvents>) -> Self {
        self.events = Some(events);
        self
    }

    /// Bind `artifact` to `name` before the first step runs.
    pub fn with_input(mut self, name: impl Into<String>, artifact: ArtifactRef) -> Self {
        self.inputs.insert(name.into(), artifact);
        self
    }

    /// Variables for task files loaded at run time.
    pub fn with_vars(mut self, vars: Vars) -> Self {
        self.vars = vars;
        self
    }

    /// What ends the build early.
    pub fn with_abort(mut self, abort: AbortSignal) -> Self {
        self.abort = abort;
        self
    }
}

impl std::fmt::Debug for BuildRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildRequest")
            .field("pipeline", &self.pipeline.name)
            .field("job", &self.job)
            .field("build_number", &self.build_number)
            .field("build_id", &self.build_id)
            .field("inputs", &self.inputs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Runs builds.
#[derive(Clone)]
pub struct BuildRunner {
    steps: StepRunner,
    images: ImageResolver,
    worker: String,
    events: Arc<dyn BuildEvents>,
    active: Arc<Mutex<HashSet<String>>>,
    abort_grace: Duration,
}

/// How long `on_abort` and `ensure` hooks may run after an abort, by default.
pub const DEFAULT_ABORT_GRACE: Duration = Duration::from_secs(60);

impl std::fmt::Debug for BuildRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildRunner")
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

struct Ctx {
    req: BuildRequest,
    events: Arc<dyn BuildEvents>,
    holder: Holder,
    summaries: Mutex<Vec<StepSummary>>,
    first_failure: Mutex<Option<(String, StepFailure)>>,
    noticed_images: std::sync::atomic::AtomicBool,
    /// Local vars (`((.:name))`) set by the build's `load_var` steps so far.
    locals: Mutex<crate::plan::LocalVars>,
}

impl Ctx {
    /// The build's own resolver, or the runner's.
    fn images<'a>(&'a self, runner: &'a BuildRunner) -> &'a ImageResolver {
        self.req.images.as_ref().unwrap_or(&runner.images)
    }

    /// The local vars a step sees now: the build's `load_var`s, then the values of the
    /// `across` iteration it runs in.
    fn locals(&self) -> crate::plan::LocalVars {
        let mut locals = self.locals.lock().map(|l| l.clone()).unwrap_or_default();
        if let Some(it) = current_iteration() {
            locals.extend(it.vars);
        }
        locals
    }

    /// `s` with the local vars filled in, as the step that uses them starts.
    fn fill(&self, s: &str) -> std::result::Result<String, StepFailure> {
        crate::plan::fill_locals(s, &self.locals()).map_err(StepFailure::Invalid)
    }

    /// [`Ctx::fill`] through a JSON value (params, a resource's source).
    fn fill_json(&self, v: &Value) -> std::result::Result<Value, StepFailure> {
        crate::plan::fill_locals_json(v, &self.locals()).map_err(StepFailure::Invalid)
    }
}

type Scope = BTreeMap<String, ArtifactRef>;

/// The `across` iteration a step runs in: its vars' values, and the label its step
/// lines carry.
#[derive(Clone, Default)]
struct Iteration {
    vars: crate::plan::LocalVars,
    label: String,
}

tokio::task_local! {
    // Set around each `across` iteration's future, so the steps it runs (nested
    // ones too) read its values, while parallel iterations each read their own.
    static ITERATION: Iteration;
}

fn current_iteration() -> Option<Iteration> {
    ITERATION.try_with(Clone::clone).ok()
}

/// How one step (with its hooks) ended.
type Status = std::result::Result<(), StepFailure>;

impl BuildRunner {
    /// A runner for `worker` over `rt`.
    pub fn new(
        rt: Runtime,
        config: StepConfig,
        images: ImageResolver,
        worker: impl Into<String>,
        events: Arc<dyn BuildEvents>,
    ) -> Self {
        BuildRunner {
            steps: StepRunner::new(rt, config),
            images,
            worker: worker.into(),
            events,
            active: Arc::new(Mutex::new(HashSet::new())),
            abort_grace: DEFAULT_ABORT_GRACE,
        }
    }

    /// How long the `on_abort` and `ensure` hooks of an aborted build may run before
    /// they are interrupted too ([`DEFAULT_ABORT_GRACE`] unless set).
    pub fn with_abort_grace(mut self, grace: Duration) -> Self {
        self.abort_grace = grace;
        self
    }

    /// Step handles running now (for the reaper of this worker).
    pub fn active_steps(&self) -> HashSet<String> {
        self.active.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// The step runner.
    pub fn step_runner(&self) -> &StepRunner {
        &self.steps
    }

    /// Run a job's plan to the end, then release the build's references.
    pub async fn run(&self, req: BuildRequest) -> Result<BuildOutcome> {
        let job = req
            .pipeline
            .job(&req.job)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "pipeline {:?} has no job {:?}",
                    req.pipeline.name, req.job
                ))
            })?
            .clone();
        let ctx = Ctx {
            holder: Holder::new(self.worker.clone(), req.build_id.clone()),
            events: req.events.clone().unwrap_or_else(|| self.events.clone()),
            req,
            summaries: Mutex::new(Vec::new()),
            first_failure: Mutex::new(None),
            noticed_images: std::sync::atomic::AtomicBool::new(false),
            locals: Mutex::new(Default::default()),
        };
        let mut scope: Scope = ctx.req.inputs.clone();
        let plan = Step {
            kind: StepKind::Do(job.plan.clone()),
            hooks: job.hooks.clone(),
            attempts: 1,
            timeout: None,
            across: None,
            location: job.location.clone(),
        };
        let abort = ctx.req.abort.clone();
        let status = self.run_step(&ctx, &plan, &mut scope, None, &abort).await;
        // The build's references go whatever happened; the reaper takes the rest.
        let released = self.steps.runtime().registry.release_all(&ctx.holder).await;
        let status = match (status, released) {
            (Err(f), _) => Err(f),
            (Ok(()), Err(e)) => Err(StepFailure::Infrastructure(
                e.context("releasing the build's artifacts"),
            )),
            (Ok(()), Ok(_)) => Ok(()),
        };
        let build_status = match &status {
            Ok(()) => BuildStatus::Succeeded,
            Err(f) if f.is_abort() => BuildStatus::Aborted,
            Err(f) if f.is_step_failure() => BuildStatus::Failed,
            Err(_) => BuildStatus::Errored,
        };
        let steps = ctx.summaries.lock().map(|s| s.clone()).unwrap_or_default();
        let mut failure = ctx.first_failure.lock().ok().and_then(|f| f.clone());
        if failure.is_none()
            && let Err(f) = &status
        {
            failure = Some((job.name.clone(), f.clone()));
        }
        Ok(BuildOutcome {
            status: build_status,
            steps,
            failure,
            artifacts: scope,
        })
    }

    fn run_step<'a>(
        &'a self,
        ctx: &'a Ctx,
        step: &'a Step,
        scope: &'a mut Scope,
        outer_deadline: Option<Instant>,
        abort: &'a AbortSignal,
    ) -> BoxFuture<'a, Status> {
        async move {
            if abort.is_aborted() {
                return Err(StepFailure::from_abort(abort.reason().as_ref()));
            }
            if let Some(across) = &step.across {
                return self
                    .run_across(ctx, step, across, scope, outer_deadline, abort)
                    .await;
            }
            let mut status: Status = Ok(());
            for attempt in 1..=step.attempts.max(1) {
                let deadline = match (step.timeout.map(|t| Instant::now() + t), outer_deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                status = self
                    .run_kind(ctx, step, scope, deadline, attempt, abort)
                    .await;
                match &status {
                    Ok(()) => break,
                    Err(f) if f.is_abort() || matches!(f, StepFailure::WorkerLost(_)) => break,
                    Err(_) if attempt < step.attempts => {
                        tracing::info!(attempt, of = step.attempts, "retrying step");
                    }
                    Err(_) => {}
                }
            }
            self.run_hooks(ctx, &step.hooks, status, scope, outer_deadline, abort)
                .await
        }
        .boxed()
    }

    /// `across`: the step once per combination, each in its own [`Iteration`] and with
    /// its own copy of the scope, so its outputs stay its own.
    async fn run_across(
        &self,
        ctx: &Ctx,
        step: &Step,
        across: &Across,
        scope: &Scope,
        deadline: Option<Instant>,
        abort: &AbortSignal,
    ) -> Status {
        let mut lists = Vec::with_capacity(across.vars.len());
        for v in &across.vars {
            let values = match &v.values {
                AcrossValues::List(l) => l.clone(),
                AcrossValues::Local(placeholder) => {
                    match ctx.fill_json(&Value::String(placeholder.clone()))? {
                        Value::Array(a) => a,
                        other => {
                            return Err(StepFailure::Invalid(format!(
                                "`across` var {:?}: {placeholder} is not a list but {other}",
                                v.var
                            )));
                        }
                    }
                }
            };
            lists.push(values);
        }
        let inner = Step {
            across: None,
            ..step.clone()
        };
        let failed = std::sync::atomic::AtomicBool::new(false);
        let base = current_iteration().unwrap_or_default();
        self.across_level(
            ctx, &inner, across, &lists, 0, base, scope, deadline, abort, &failed,
        )
        .await
    }

    /// The iterations of var `level` and, within each, those of the vars after it.
    #[allow(clippy::too_many_arguments)]
    fn across_level<'a>(
        &'a self,
        ctx: &'a Ctx,
        step: &'a Step,
        across: &'a Across,
        lists: &'a [Vec<Value>],
        level: usize,
        outer: Iteration,
        scope: &'a Scope,
        deadline: Option<Instant>,
        abort: &'a AbortSignal,
        failed: &'a std::sync::atomic::AtomicBool,
    ) -> BoxFuture<'a, Status> {
        async move {
            let Some(var) = across.vars.get(level) else {
                let mut local = scope.clone();
                let r = ITERATION
                    .scope(outer, self.run_step(ctx, step, &mut local, deadline, abort))
                    .await;
                if r.is_err() {
                    failed.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                return r;
            };
            let values = &lists[level];
            let limit = var
                .max_in_flight
                .map_or(values.len(), |m| m as usize)
                .max(1);
            let futs: Vec<BoxFuture<'_, Status>> = values
                .iter()
                .map(|value| {
                    let mut it = outer.clone();
                    it.vars.insert(var.var.clone(), value.clone());
                    let shown = match value {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    it.label = if it.label.is_empty() {
                        format!("{}={shown}", var.var)
                    } else {
                        format!("{}, {}={shown}", it.label, var.var)
                    };
                    async move {
                        if across.fail_fast && failed.load(std::sync::atomic::Ordering::SeqCst) {
                            return Ok(());
                        }
                        self.across_level(
                            ctx,
                            step,
                            across,
                            lists,
                            level + 1,
                            it,
                            scope,
                            deadline,
                            abort,
                            failed,
                        )
                        .await
                    }
                    .boxed()
                })
                .collect();
            let results: Vec<Status> = futures::stream::iter(futs).buffered(limit).collect().await;
            // The first failure in the order of the combinations; an abort wins.
            let mut status = Ok(());
            for r in results {
                match (&status, r) {
                    (_, Err(f)) if f.is_abort() => return Err(f),
                    (Ok(()), Err(f)) => status = Err(f),
                    _ => {}
                }
            }
            status
        }
        .boxed()
    }

    async fn run_hooks(
        &self,
        ctx: &Ctx,
        hooks: &Hooks,
        status: Status,
        scope: &mut Scope,
        deadline: Option<Instant>,
        abort: &AbortSignal,
    ) -> Status {
        // A worker that lost its registration runs nothing more, hooks included.
        if matches!(abort.reason(), Some(AbortReason::WorkerLost(_))) {
            return status;
        }
        // After an abort, `on_abort` and `ensure` still run, as in Concourse, but only
        // until a second abort or the grace period ends; the other hooks do not start.
        let hook_abort = match &status {
            Err(f) if f.is_abort() => abort.for_hooks(self.abort_grace),
            _ => abort.clone(),
        };
        let hook = match &status {
            Ok(()) => hooks.on_success.as_deref(),
            Err(f) if f.is_abort() => hooks.on_abort.as_deref(),
            Err(f) if f.is_step_failure() => hooks.on_failure.as_deref(),
            Err(_) => hooks.on_error.as_deref(),
        };
        let mut status = status;
        if let Some(h) = hook {
            let r = self.run_step(ctx, h, scope, deadline, &hook_abort).await;
            // A failing on_success hook fails the step; other hooks keep the original
            // failure.
            if status.is_ok() {
                status = r;
            }
        }
        if let Some(h) = hooks.ensure.as_deref() {
            // An abort during the first hook must not stop `ensure` from running.
            let ensure_abort = if abort.build_aborted() {
                abort.for_hooks(self.abort_grace)
            } else {
                abort.clone()
            };
            let r = self.run_step(ctx, h, scope, deadline, &ensure_abort).await;
            if status.is_ok() {
                status = r;
            }
        }
        status
    }

    async fn run_kind(
        &self,
        ctx: &Ctx,
        step: &Step,
        scope: &mut Scope,
        deadline: Option<Instant>,
        attempt: u32,
        abort: &AbortSignal,
    ) -> Status {
        match &step.kind {
            StepKind::Do(steps) => {
                for s in steps {
                    self.run_step(ctx, s, scope, deadline, abort).await?;
                }
                Ok(())
            }
            StepKind::InParallel(par) => {
                let limit = par.limit.unwrap_or(par.steps.len()).max(1);
                let failed = std::sync::atomic::AtomicBool::new(false);
                let base = scope.clone();
                let futs: Vec<BoxFuture<'_, (Status, Scope)>> = par
                    .steps
                    .iter()
                    .map(|s| {
                        let mut local = base.clone();
                        let failed = &failed;
                        async move {
                            if par.fail_fast && failed.load(std::sync::atomic::Ordering::SeqCst) {
                                return (Ok(()), local);
                            }
                            let r = self.run_step(ctx, s, &mut local, deadline, abort).await;
                            if r.is_err() {
                                failed.store(true, std::sync::atomic::Ordering::SeqCst);
                            }
                            (r, local)
                        }
                        .boxed()
                    })
                    .collect();
                let results: Vec<(Status, Scope)> =
                    futures::stream::iter(futs).buffered(limit).collect().await;
                let mut status = Ok(());
                for (r, local) in results {
                    scope.extend(local);
                    if status.is_ok() {
                        status = r;
                    }
                }
                status
            }
            StepKind::Task(t) => {
                self.run_task(ctx, step, t, scope, deadline, attempt, abort)
                    .await
            }
            StepKind::Get(g) => {
                let name = format!("get: {}", g.name);
                self.summarised(ctx, &name, "get", attempt, step, async {
                    self.run_get(ctx, g, None, scope, deadline, abort).await
                })
                .await
                .0
            }
            StepKind::Put(p) => {
                self.run_put(ctx, step, p, scope, deadline, attempt, abort)
                    .await
            }
            StepKind::SetPipeline(sp) => {
                let name = format!("set_pipeline: {}", sp.name);
                self.summarised(ctx, &name, "set_pipeline", attempt, step, async {
                    (self.set_pipeline(ctx, sp, scope).await, Vec::new())
                })
                .await
                .0
            }
            StepKind::LoadVar(l) => {
                let name = format!("load_var: {}", l.name);
                self.summarised(ctx, &name, "load_var", attempt, step, async {
                    (self.load_var(ctx, l, scope).await, Vec::new())
                })
                .await
                .0
            }
            StepKind::Try(inner) => {
                let failure_before = ctx.first_failure.lock().ok().and_then(|f| f.clone());
                match self.run_step(ctx, inner, scope, deadline, abort).await {
                    // An abort, or a worker that lost its registration, stops the build
                    // whatever `try` says.
                    Err(f) if f.is_abort() || matches!(f, StepFailure::WorkerLost(_)) => Err(f),
                    Err(f) => {
                        tracing::info!(failure = %f, "a step under `try` failed; the build goes on");
                        // Masked: a later failure, not this one, is the build's first.
                        if let Ok(mut ff) = ctx.first_failure.lock() {
                            *ff = failure_before;
                        }
                        Ok(())
                    }
                    Ok(()) => Ok(()),
                }
            }
        }
    }

    /// Run `body`, report it as one step, record the first failure.
    async fn summarised(
        &self,
        ctx: &Ctx,
        name: &str,
        kind: &'static str,
        attempt: u32,
        step: &Step,
        body: impl std::future::Future<Output = (Status, Vec<ArtifactRef>)>,
    ) -> (Status, Vec<ArtifactRef>) {
        // Each `across` iteration's lines say which values it ran with.
        let labelled;
        let name = match current_iteration().filter(|it| !it.label.is_empty()) {
            Some(it) => {
                labelled = format!("{name} ({})", it.label);
                labelled.as_str()
            }
            None => name,
        };
        ctx.events.step_started(name, kind);
        let started = Instant::now();
        let (result, artifacts) = body.await;
        let summary = StepSummary {
            name: name.to_owned(),
            kind,
            result: result.clone(),
            duration: started.elapsed(),
            artifacts: artifacts.clone(),
            attempts: attempt,
        };
        ctx.events.step_finished(&summary);
        if let Ok(mut s) = ctx.summaries.lock() {
            s.push(summary);
        }
        if let Err(f) = &result
            && attempt >= step.attempts
            && let Ok(mut ff) = ctx.first_failure.lock()
            && ff.is_none()
        {
            *ff = Some((name.to_owned(), f.clone()));
        }
        (result, artifacts)
    }

    fn identity(&self, ctx: &Ctx, step: &str, step_type: &str) -> StepIdentity {
        StepIdentity {
            pipeline: ctx.req.pipeline.name.clone(),
            job: ctx.req.job.clone(),
            build: ctx.req.build_number,
            step: step.to_owned(),
            step_type: step_type.to_owned(),
            handle: StepHandle::random(),
            worker: self.worker.clone(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        ctx: &Ctx,
        identity: StepIdentity,
        display: &str,
        image: String,
        command: StepCommand,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
        abort: &AbortSignal,
    ) -> StepRequest {
        StepRequest {
            identity,
            build_id: ctx.req.build_id.clone(),
            holder: ctx.holder.clone(),
            image,
            privileged: false,
            hermetic: false,
            resources: Resources::default(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            caches: Vec::new(),
            command,
            deadline,
            timeout,
            output: ctx.events.step_output(display),
            abort: abort.clone(),
        }
    }

    /// Run a step request with its handle marked active for the reaper.
    async fn execute(&self, req: StepRequest) -> super::step::StepResult {
        let handle = req.identity.handle.as_str().to_owned();
        if let Ok(mut a) = self.active.lock() {
            a.insert(handle.clone());
        }
        let r = self.steps.run(req).await;
        if let Ok(mut a) = self.active.lock() {
            a.remove(&handle);
        }
        r
    }

    fn resource_scripts(
        &self,
        ctx: &Ctx,
        resource: &str,
    ) -> std::result::Result<(Value, String, String), StepFailure> {
        let pipeline = &ctx.req.pipeline;
        let r = pipeline.resource(resource).ok_or_else(|| {
            StepFailure::Invalid(format!("resource {resource:?} is not declared"))
        })?;
        let resolved = ctx
            .images(self)
            .resolve_type(pipeline, &r.type_)
            .map_err(|e| StepFailure::Invalid(e.to_string()))?;
        match resolved {
            ResolvedImage::Image { image, scripts_dir } => {
                Ok((r.source.clone(), image, scripts_dir))
            }
            ResolvedImage::Local { dir } => {
                if self.steps.runtime().pods.capabilities().images {
                    return Err(StepFailure::Invalid(format!(
                        "resource {resource:?} has a `type: local` resource type, which runs only on the local backend; \
                         give it a registry-image resource type to run on this backend"
                    )));
                }
                Ok((r.source.clone(), "local".to_owned(), dir))
            }
        }
    }

    async fn run_get(
        &self,
        ctx: &Ctx,
        g: &GetStep,
        pinned: Option<Value>,
        scope: &mut Scope,
        deadline: Option<Instant>,
        abort: &AbortSignal,
    ) -> (Status, Vec<ArtifactRef>) {
        let display = format!("get: {}", g.name);
        let (source, image, scripts) = match self.resource_scripts(ctx, &g.resource) {
            Ok(x) => x,
            Err(f) => return (Err(f), Vec::new()),
        };
        let (source, params) = match (ctx.fill_json(&source), ctx.fill_json(&g.params)) {
            (Ok(s), Ok(p)) => (s, p),
            (Err(f), _) | (_, Err(f)) => return (Err(f), Vec::new()),
        };
        // A put's own version, else the get's pin, else the resource's, else the latest.
        let resource_pin = ctx
            .req
            .pipeline
            .resource(&g.resource)
            .and_then(|r| r.version.clone());
        let version = match pinned
            .or_else(|| g.version.clone().filter(Value::is_object))
            .or(resource_pin)
        {
            Some(v) => v,
            None => {
                // Check for the latest version in a check pod.
                let stdin = json!({ "source": source, "version": Value::Null });
                let cmd = StepCommand {
                    argv: vec![format!("{scripts}/check")],
                    env: BTreeMap::new(),
                    dir: None,
                    user: None,
                    stdin: Some(Bytes::from(stdin.to_string())),
                    capture_stdout: true,
                };
                let id = self.identity(ctx, &g.resource, "check");
                let req =
                    self.request(ctx, id, &display, image.clone(), cmd, deadline, None, abort);
                let r = self.execute(req).await;
                if let Err(f) = r.result {
                    return (Err(f), Vec::new());
                }
                match serde_json::from_slice::<Vec<Value>>(&r.stdout) {
                    Ok(vs) => match vs.last() {
                        Some(v) => v.clone(),
                        None => {
                            return (
                                Err(StepFailure::Invalid(format!(
                                    "resource {:?} has no versions",
                                    g.resource
                                ))),
                                Vec::new(),
                            );
                        }
                    },
                    Err(e) => {
                        return (
                            Err(StepFailure::Invalid(format!(
                                "the check script of resource {:?} printed invalid JSON: {e}",
                                g.resource
                            ))),
                            Vec::new(),
                        );
                    }
                }
            }
        };
        let stdin = json!({ "source": source, "version": version, "params": params });
        let cmd = StepCommand {
            argv: vec![format!("{scripts}/in"), g.name.clone()],
            env: BTreeMap::new(),
            dir: None,
            user: None,
            stdin: Some(Bytes::from(stdin.to_string())),
            capture_stdout: true,
        };
        let id = self.identity(ctx, &g.name, "get");
        let mut req = self.request(ctx, id, &display, image, cmd, deadline, None, abort);
        req.outputs.push(StepOutput {
            name: g.name.clone(),
            path: g.name.clone(),
        });
        let r = self.execute(req).await;
        for a in &r.outputs {
            scope.insert(a.name.clone(), a.clone());
        }
        if r.result.is_ok()
            && let Err(e) = serde_json::from_slice::<Value>(&r.stdout)
        {
            return (
                Err(StepFailure::Invalid(format!(
                    "the in script of resource {:?} printed invalid JSON: {e}",
                    g.resource
                ))),
                r.outputs,
            );
        }
        (r.result, r.outputs)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_put(
        &self,
        ctx: &Ctx,
        step: &Step,
        p: &PutStep,
        scope: &mut Scope,
        deadline: Option<Instant>,
        attempt: u32,
        abort: &AbortSignal,
    ) -> Status {
        let display = format!("put: {}", p.name);
        let mut version = None;
        let result = self
            .summarised(ctx, &display, "put", attempt, step, async {
                let (source, image, scripts) = match self.resource_scripts(ctx, &p.resource) {
                    Ok(x) => x,
                    Err(f) => return (Err(f), Vec::new()),
                };
                let (source, params) = match (ctx.fill_json(&source), ctx.fill_json(&p.params)) {
                    (Ok(s), Ok(p)) => (s, p),
                    (Err(f), _) | (_, Err(f)) => return (Err(f), Vec::new()),
                };
                let stdin = json!({ "source": source, "params": params });
                let cmd = StepCommand {
                    argv: vec![format!("{scripts}/out"), ".".to_owned()],
                    env: BTreeMap::new(),
                    dir: None,
                    user: None,
                    stdin: Some(Bytes::from(stdin.to_string())),
                    capture_stdout: true,
                };
                let id = self.identity(ctx, &p.name, "put");
                let mut req =
                    self.request(ctx, id, &display, image, cmd, deadline, step.timeout, abort);
                let names: Vec<String> = match &p.inputs {
                    Some(list) => list.clone(),
                    None => scope.keys().cloned().collect(),
                };
                for n in names {
                    match scope.get(&n) {
                        Some(a) => req.inputs.push(StepInput {
                            path: n.clone(),
                            artifact: a.clone(),
                        }),
                        None => {
                            return (
                                Err(StepFailure::Invalid(format!(
                                    "put {:?}: input {n:?} is not available",
                                    p.name
                                ))),
                                Vec::new(),
                            );
                        }
                    }
                }
                let r = self.execute(req).await;
                if r.result.is_ok() {
                    match serde_json::from_slice::<Value>(&r.stdout) {
                        Ok(v) => version = v.get("version").cloned(),
                        Err(e) => {
                            return (
                                Err(StepFailure::Invalid(format!(
                                    "the out script of resource {:?} printed invalid JSON: {e}",
                                    p.resource
                                ))),
                                Vec::new(),
                            );
                        }
                    }
                }
                (r.result, r.outputs)
            })
            .await
            .0;
        result?;
        if p.no_get {
            return Ok(());
        }
        let g = GetStep {
            name: p.name.clone(),
            resource: p.resource.clone(),
            version: None,
            params: p.get_params.clone(),
            passed: Vec::new(),
            trigger: false,
        };
        let name = format!("get: {}", g.name);
        let pinned = version.clone();
        self.summarised(ctx, &name, "get", attempt, step, async {
            self.run_get(ctx, &g, pinned, scope, deadline, abort).await
        })
        .await
        .0
    }

    async fn load_task_config(
        &self,
        ctx: &Ctx,
        t: &TaskStep,
        scope: &Scope,
    ) -> std::result::Result<TaskConfig, StepFailure> {
        match &t.config {
            TaskSource::Inline(c) => Ok(c.clone()),
            TaskSource::File { artifact, path } => {
                let a = scope.get(artifact).ok_or_else(|| {
                    StepFailure::Invalid(format!(
                        "task {:?}: the artifact {artifact:?} of its file is not available",
                        t.name
                    ))
                })?;
                let text = self.read_file_from_artifact(a, path).await.map_err(|e| {
                    StepFailure::Invalid(format!(
                        "task {:?}: reading {artifact}/{path}: {e}",
                        t.name
                    ))
                })?;
                let mut vars = ctx.req.vars.clone();
                for (k, v) in &t.vars {
                    vars.insert(k.clone(), v.clone());
                }
                crate::plan::parse_task_config(&text, &format!("{artifact}/{path}"), &vars)
                    .map_err(|e| StepFailure::Invalid(e.to_string()))
            }
        }
    }

    /// The image a `registry-image` get fetched: `repository@digest` from the files it
    /// writes, so the pod runs exactly what the build fetched.
    async fn image_of_artifact(
        &self,
        t: &TaskStep,
        artifact: &str,
        scope: &Scope,
    ) -> std::result::Result<String, StepFailure> {
        let a = scope.get(artifact).ok_or_else(|| {
            StepFailure::Invalid(format!(
                "task {:?}: its image {artifact:?} is not available",
                t.name
            ))
        })?;
        let not_an_image = |why: String| {
            StepFailure::Invalid(format!(
                "task {:?}: the artifact {artifact:?} is not an image this backend can run ({why}); \
                 a task's `image:` must name a `registry-image` get, whose `repository` and \
                 `digest` files say what to pull",
                t.name
            ))
        };
        let read = |file: &'static str| {
            let a = a.clone();
            async move {
                self.read_file_from_artifact(&a, file)
                    .await
                    .map(|s| s.trim().to_owned())
            }
        };
        let repository = read("repository")
            .await
            .map_err(|e| not_an_image(format!("no `repository` file: {e}")))?;
        let digest = read("digest")
            .await
            .map_err(|e| not_an_image(format!("no `digest` file: {e}")))?;
        let valid_digest = digest.split_once(':').is_some_and(|(alg, hex)| {
            !alg.is_empty() && !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if repository.is_empty() || repository.contains(char::is_whitespace) || !valid_digest {
            return Err(not_an_image(format!(
                "`repository` {repository:?} and `digest` {digest:?} do not name an image"
            )));
        }
        Ok(format!("{repository}@{digest}"))
    }

    /// `load_var`: read the file, parse it as its format says, set the local var.
    async fn load_var(&self, ctx: &Ctx, l: &LoadVarStep, scope: &Scope) -> Status {
        let a = scope.get(&l.artifact).ok_or_else(|| {
            StepFailure::Invalid(format!(
                "load_var {:?}: the artifact {:?} is not available",
                l.name, l.artifact
            ))
        })?;
        let text = self
            .read_file_from_artifact(a, &l.path)
            .await
            .map_err(|e| {
                StepFailure::Invalid(format!(
                    "load_var {:?}: reading {}/{}: {e}",
                    l.name, l.artifact, l.path
                ))
            })?;
        let format = l.format.unwrap_or_else(|| {
            let ext = l.path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
            match ext {
                "json" => VarFormat::Json,
                "yml" | "yaml" => VarFormat::Yaml,
                _ => VarFormat::Trim,
            }
        });
        let where_ = format!("load_var {:?}: {}/{}", l.name, l.artifact, l.path);
        let value = match format {
            VarFormat::Raw => Value::String(text),
            VarFormat::Trim => Value::String(text.trim().to_owned()),
            VarFormat::Json => serde_json::from_str(&text)
                .map_err(|e| StepFailure::Invalid(format!("{where_} is not JSON: {e}")))?,
            VarFormat::Yaml => serde_saphyr::from_str(&text)
                .map_err(|e| StepFailure::Invalid(format!("{where_} is not YAML: {e}")))?,
        };
        // The value may be a secret: only a revealed one is shown.
        if l.reveal {
            ctx.events
                .notice(&format!("local var {:?} = {}", l.name, value));
        }
        if let Ok(mut locals) = ctx.locals.lock() {
            locals.insert(l.name.clone(), value);
        }
        Ok(())
    }

    /// `set_pipeline`: read the file and its var files, check the pipeline as
    /// `fly set-pipeline` would (vars not given are left for when it runs), and record
    /// it. Where nothing records pipelines (refused before such a build starts; should
    /// one reach the runner all the same) the step says so rather than doing nothing.
    async fn set_pipeline(&self, ctx: &Ctx, sp: &SetPipelineStep, scope: &Scope) -> Status {
        let Some(sink) = ctx.req.pipelines.clone() else {
            return Err(StepFailure::Invalid(
                "set_pipeline: this runner does not store pipelines".to_owned(),
            ));
        };
        let name = match sp.name.as_str() {
            "self" => ctx.req.pipeline.name.clone(),
            n => ctx.fill(n)?,
        };
        let invalid = |what: String| StepFailure::Invalid(format!("set_pipeline {name:?}: {what}"));
        let read = async |artifact: &str, path: &str| {
            let a = scope
                .get(artifact)
                .ok_or_else(|| invalid(format!("the artifact {artifact:?} is not available")))?;
            self.read_file_from_artifact(a, path)
                .await
                .map_err(|e| invalid(format!("reading {artifact}/{path}: {e}")))
        };
        let config = read(&sp.artifact, &sp.path).await?;
        let mut vars = serde_json::Map::new();
        // Later var files win over earlier ones, and `vars` over them all, as Concourse
        // merges them.
        for vf in &sp.var_files {
            let (artifact, path) = vf.split_once('/').unwrap_or((vf.as_str(), ""));
            let text = read(artifact, path).await?;
            match serde_saphyr::from_str::<Value>(&text) {
                Ok(Value::Object(m)) => vars.extend(m),
                Ok(Value::Null) => {}
                Ok(_) => return Err(invalid(format!("{vf} is not a map of vars"))),
                Err(e) => return Err(invalid(format!("{vf} is not YAML: {e}"))),
            }
        }
        match ctx.fill_json(&sp.vars)? {
            Value::Object(m) => vars.extend(m),
            Value::Null => {}
            _ => return Err(invalid("`vars` is not a map".to_owned())),
        }
        let instance_vars = match ctx.fill_json(&sp.instance_vars)? {
            v @ (Value::Object(_) | Value::Null) => v,
            _ => return Err(invalid("`instance_vars` is not a map".to_owned())),
        };
        let file = format!("{}/{}", sp.artifact, sp.path);
        let mut given = Vars::new();
        for (k, v) in &vars {
            given.insert(k.clone(), v.clone());
        }
        crate::plan::parse_pipeline(&config, &file, &given.lenient())
            .map_err(|e| invalid(format!("the pipeline is not valid: {e}")))?;
        let team = sp.team.clone().unwrap_or_else(|| "main".to_owned());
        let recorded = sink
            .set_pipeline(PipelineToSet {
                team: team.clone(),
                name: name.clone(),
                instance_vars,
                config,
                vars,
                file,
            })
            .await
            .map_err(|e| match e.kind() {
                // The build was taken over: this runner must stop, whatever `try` says.
                crate::error::ErrorKind::Conflict => {
                    StepFailure::WorkerLost(e.message().to_owned())
                }
                _ => StepFailure::from_error(e),
            })?;
        ctx.events.notice(&if recorded.changed {
            format!("pipeline {team}/{name} set: version {}", recorded.version)
        } else {
            format!(
                "pipeline {team}/{name} unchanged: version {}",
                recorded.version
            )
        });
        Ok(())
    }

    /// Read one file (a task config) out of an artifact's tar stream.
    async fn read_file_from_artifact(&self, a: &ArtifactRef, path: &str) -> Result<String> {
        const LIMIT: usize = 1 << 20;
        let store = self.steps.artifacts().store()?;
        let stream = store.read_tar(&a.volume).await?;
        let data = crate::ports::collect_stream(stream).await?;
        let want = path.trim_start_matches("./");
        let mut archive = tar::Archive::new(std::io::Cursor::new(data));
        let entries = archive
            .entries()
            .map_err(|e| Error::corrupt(format!("reading artifact: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| Error::corrupt(format!("reading artifact: {e}")))?;
            let p = entry
                .path()
                .map_err(|e| Error::corrupt(e.to_string()))?
                .to_string_lossy()
                .into_owned();
            if p.trim_start_matches("./") == want && entry.header().entry_type().is_file() {
                if entry.size() as usize > LIMIT {
                    return Err(Error::invalid(format!("{path} is larger than 1 MiB")));
                }
                let mut s = String::new();
                entry
                    .read_to_string(&mut s)
                    .map_err(|e| Error::invalid(format!("{path} is not UTF-8 text: {e}")))?;
                return Ok(s);
            }
        }
        Err(Error::not_found(format!(
            "no file {path} in artifact {:?}",
            a.name
        )))
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_task(
        &self,
        ctx: &Ctx,
        step: &Step,
        t: &TaskStep,
        scope: &mut Scope,
        deadline: Option<Instant>,
        attempt: u32,
        abort: &AbortSignal,
    ) -> Status {
        let display = format!("task: {}", t.name);
        let snapshot = scope.clone();
        let (result, produced) = self
            .summarised(ctx, &display, "task", attempt, step, async {
                let config = match self.load_task_config(ctx, t, &snapshot).await {
                    Ok(c) => c,
                    Err(f) => return (Err(f), Vec::new()),
                };
                let caps = self.steps.runtime().pods.capabilities();
                if !caps.images
                    && (config.image_resource.is_some() || t.image.is_some())
                    && !ctx.noticed_images.swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    ctx.events.notice(if config.image_resource.is_some() {
                        "this backend runs tasks on the host: image_resource is not honoured, \
                         so tasks use the host's tools"
                    } else {
                        "this backend runs tasks on the host: a task's image is not honoured, \
                         so tasks use the host's tools"
                    });
                }
                let image = match (&t.image, caps.images) {
                    (Some(artifact), true) => match self.image_of_artifact(t, artifact, &snapshot).await {
                        Ok(i) => i,
                        Err(f) => return (Err(f), Vec::new()),
                    },
                    _ => match ctx.images(self).task_image(&config) {
                        Ok(i) => i,
                        Err(e) => return (Err(StepFailure::Invalid(e.to_string())), Vec::new()),
                    },
                };
                // Local vars are filled in now, as the step starts.
                let filled = (|| -> std::result::Result<_, StepFailure> {
                    let mut env = BTreeMap::new();
                    for (k, v) in config.params.iter().chain(t.params.iter()) {
                        env.insert(k.clone(), ctx.fill(v)?);
                    }
                    let mut argv = vec![ctx.fill(&config.run.path)?];
                    for a in &config.run.args {
                        argv.push(ctx.fill(a)?);
                    }
                    let dir = config.run.dir.as_deref().map(|d| ctx.fill(d)).transpose()?;
                    Ok((env, argv, dir))
                })();
                let (env, argv, dir) = match filled {
                    Ok(x) => x,
                    Err(f) => return (Err(f), Vec::new()),
                };
                let cmd = StepCommand {
                    argv,
                    env,
                    dir,
                    user: config.run.user.clone(),
                    stdin: None,
                    capture_stdout: false,
                };
                let id = self.identity(ctx, &t.name, "task");
                let mut req =
                    self.request(ctx, id, &display, image, cmd, deadline, step.timeout, abort);
                req.privileged = t.privileged;
                req.hermetic = t.hermetic;
                req.resources = Resources::new(config.container_limits.cpu_millis, config.container_limits.memory_bytes);
                for input in &config.inputs {
                    let name = t.input_mapping.get(&input.name).unwrap_or(&input.name);
                    match snapshot.get(name) {
                        Some(a) => req.inputs.push(StepInput { path: input.path.clone(), artifact: a.clone() }),
                        None if input.optional => {}
                        None => {
                            return (
                                Err(StepFailure::Invalid(format!(
                                    "task {:?}: input {:?} is not available (no earlier step produced {name:?})",
                                    t.name, input.name
                                ))),
                                Vec::new(),
                            );
                        }
                    }
                }
                for o in &config.outputs {
                    let name = t.output_mapping.get(&o.name).unwrap_or(&o.name);
                    req.outputs.push(StepOutput { name: name.clone(), path: o.path.clone() });
                }
                for c in &config.caches {
                    let key = format!("{}/{}/{}/{}", ctx.req.pipeline.name, ctx.req.job, t.name, c);
                    req.caches.push((c.clone(), key));
                }
                let r = self.execute(req).await;
                (r.result, r.outputs)
            })
            .await;
        // This step's own outputs, never another's of the same name (task names may
        // repeat, as in Concourse).
        for a in produced {
            scope.insert(a.name.clone(), a);
        }
        result
    }
}
