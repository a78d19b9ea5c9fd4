//! The lifecycle suite: how builds end when they are stopped, and how steps bind their
//! outputs, over the same [`RuntimeSubject`] as the runtime suite.
//!
//! - An abort interrupts the running step; its `on_abort` and `ensure` hooks (and the
//!   job's) still run, as in Concourse, and the build ends `aborted`.
//! - A second abort interrupts the hooks; the grace period bounds them too.
//! - A worker that lost its registration runs no hook and ends the build `errored`.
//! - Steps of the same name each bind their own outputs.
//! - Symlinks in outputs are kept as the task made them, wherever they point.
//!
//! Every case also checks that no pod of the build is left. Cases synchronise on what
//! the steps print, never on sleeps.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jetbridge_core::plan::{Vars, parse_pipeline};
use jetbridge_core::ports::{OutputSink, OutputStream};
use jetbridge_core::services::{
    AbortHandle, AbortReason, BuildEvents, BuildOutcome, BuildRequest, BuildRunner, BuildStatus,
    StepFailure, StepSummary, abort_pair,
};
use tokio::sync::watch;

use crate::runtime::{RuntimeSubject, leftovers, pipeline_yaml, quick, read_artifact_file, task};
use crate::{CaseError, CaseResult, ensure, ensure_eq, fail};

/// What steps print, with a counter that moves on every write, so a case can wait for
/// a line without polling on a timer.
#[derive(Debug)]
struct Watched {
    output: Mutex<Vec<(String, Vec<u8>)>>,
    writes: watch::Sender<u64>,
}

impl Watched {
    fn new() -> Arc<Self> {
        Arc::new(Watched {
            output: Mutex::new(Vec::new()),
            writes: watch::channel(0).0,
        })
    }

    fn output_of(&self, step: &str) -> String {
        let all = self.output.lock().map(|a| a.clone()).unwrap_or_default();
        all.iter()
            .filter(|(n, _)| n == step)
            .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
            .collect()
    }

    /// Wait until `step` has printed `needle`.
    async fn wait_for(&self, step: &str, needle: &str, limit: Duration) -> CaseResult {
        let mut rx = self.writes.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.output_of(step).contains(needle) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => fail!(
                    "{step} did not print {needle:?} within {limit:?}; it printed {:?}",
                    self.output_of(step)
                ),
            }
        }
    }
}

struct Sink {
    step: String,
    to: Arc<Watched>,
}

impl OutputSink for Sink {
    fn write(&self, _: OutputStream, data: &[u8]) {
        if let Ok(mut o) = self.to.output.lock() {
            o.push((self.step.clone(), data.to_vec()));
        }
        self.to.writes.send_modify(|n| *n += 1);
    }
}

struct Events(Arc<Watched>);

impl BuildEvents for Events {
    fn step_started(&self, _: &str, _: &str) {}
    fn step_output(&self, name: &str) -> Arc<dyn OutputSink> {
        Arc::new(Sink {
            step: name.to_owned(),
            to: self.0.clone(),
        })
    }
    fn step_finished(&self, _: &StepSummary) {}
    fn notice(&self, _: &str) {}
}

/// A build of `jobs` running in the background, with its abort handle.
struct Running {
    abort: AbortHandle,
    watched: Arc<Watched>,
    build: tokio::task::JoinHandle<jetbridge_core::Result<BuildOutcome>>,
    build_id: String,
    started: Instant,
}

fn start(subject: &RuntimeSubject, jobs: &str, grace: Duration) -> Result<Running, CaseError> {
    let yaml = pipeline_yaml(subject, jobs);
    let pipeline = parse_pipeline(&yaml, "conformance.yml", &Vars::new())
        .map_err(|e| CaseError::here(format!("pipeline did not parse: {e}\n{yaml}")))?;
    let watched = Watched::new();
    let runner = BuildRunner::new(
        subject.runtime.clone(),
        quick(),
        subject.images.clone(),
        crate::runtime::WORKER,
        Arc::new(Events(watched.clone())),
    )
    .with_abort_grace(grace);
    let (abort, signal) = abort_pair();
    let build_id = format!("life-{}", crate::support::unique_hex(12));
    let req = BuildRequest::new(Arc::new(pipeline), "main".to_owned(), 1, build_id.clone())
        .with_abort(signal);
    let build = tokio::spawn(async move { runner.run(req).await });
    Ok(Running {
        abort,
        watched,
        build,
        build_id,
        started: Instant::now(),
    })
}

impl Running {
    async fn finish(self, limit: Duration) -> Result<(BuildOutcome, Duration, String), CaseError> {
        let o = tokio::time::timeout(limit, self.build)
            .await
            .map_err(|_| CaseError::here(format!("the build did not end within {limit:?}")))?
            .map_err(|e| CaseError::here(format!("the build task failed: {e}")))?
            .map_err(|e| CaseError::here(format!("the build did not run: {e}")))?;
        Ok((o, self.started.elapsed(), self.build_id))
    }
}

fn summary<'a>(o: &'a BuildOutcome, name: &str) -> Option<&'a StepSummary> {
    o.steps.iter().find(|s| s.name == name)
}

fn ran_ok(o: &BuildOutcome, name: &str) -> CaseResult {
    match summary(o, name) {
        Some(s) if s.result.is_ok() => Ok(()),
        Some(s) => fail!("{name} did not succeed: {:?}", s.result),
        None => fail!(
            "{name} did not run; steps: {:?}",
            o.steps.iter().map(|s| &s.name).collect::<Vec<_>>()
        ),
    }
}

fn did_not_run(o: &BuildOutcome, name: &str) -> CaseResult {
    ensure!(
        summary(o, name).is_none(),
        "{name} ran: {:?}",
        summary(o, name)
    );
    Ok(())
}

/// A step that says it is running, then waits far longer than any case.
const BLOCK: &str = "echo ready && sleep 120";

/// The longest a case waits for a step to say it runs (a cold pod start included).
const START: Duration = Duration::from_secs(90);

/// An abort interrupts the running step; the step's `on_abort` and `ensure` hooks and
/// the job's `ensure` run; later steps do not; the build ends `aborted`, no pod left.
pub async fn abort_runs_on_abort_and_ensure(subject: &RuntimeSubject) -> CaseResult {
    let jobs = format!(
        "- name: main\n  plan:\n  - {}\n    on_abort:\n      {}\n    on_failure:\n      {}\n    ensure:\n      {}\n  - {}\n  ensure:\n    {}\n",
        task("block", &[], &[], BLOCK),
        task("on-abort", &[], &[], "echo hooked").replace('\n', "\n  "),
        task("on-failure", &[], &[], "true").replace('\n', "\n  "),
        task("ensure", &[], &[], "echo ensured").replace('\n', "\n  "),
        task("never", &[], &[], "true"),
        task("job-ensure", &[], &[], "echo job ensured"),
    );
    let run = start(subject, &jobs, Duration::from_secs(60))?;
    run.watched.wait_for("task: block", "ready", START).await?;
    run.abort.abort();
    let watched = run.watched.clone();
    let (o, took, build) = run.finish(Duration::from_secs(100)).await?;
    ensure_eq!(o.status, BuildStatus::Aborted, "steps: {:?}", o.steps);
    match summary(&o, "task: block").map(|s| &s.result) {
        Some(Err(StepFailure::Aborted)) => {}
        other => fail!("the blocked step should end aborted, got {other:?}"),
    }
    ensure!(
        took < Duration::from_secs(100),
        "the abort did not interrupt the step"
    );
    ran_ok(&o, "task: on-abort")?;
    ran_ok(&o, "task: ensure")?;
    ran_ok(&o, "task: job-ensure")?;
    ensure!(watched.output_of("task: on-abort").contains("hooked"));
    did_not_run(&o, "task: on-failure")?;
    did_not_run(&o, "task: never")?;
    leftovers(subject, &build).await
}

/// A second abort interrupts the hooks too; every pod still goes.
pub async fn second_abort_skips_hooks(subject: &RuntimeSubject) -> CaseResult {
    let jobs = format!(
        "- name: main\n  plan:\n  - {}\n    on_abort:\n      {}\n    ensure:\n      {}\n",
        task("block", &[], &[], BLOCK),
        task("slow-hook", &[], &[], BLOCK).replace('\n', "\n  "),
        task("ensure", &[], &[], "true").replace('\n', "\n  "),
    );
    let run = start(subject, &jobs, Duration::from_secs(600))?;
    run.watched.wait_for("task: block", "ready", START).await?;
    run.abort.abort();
    run.watched
        .wait_for("task: slow-hook", "ready", START)
        .await?;
    run.abort.force();
    let (o, _, build) = run.finish(Duration::from_secs(100)).await?;
    ensure_eq!(o.status, BuildStatus::Aborted);
    match summary(&o, "task: slow-hook").map(|s| &s.result) {
        Some(Err(StepFailure::Aborted)) => {}
        other => fail!("the hook should end aborted, got {other:?}"),
    }
    did_not_run(&o, "task: ensure")?;
    leftovers(subject, &build).await
}

/// Hooks run after an abort only for the grace period.
pub async fn abort_grace_bounds_hooks(subject: &RuntimeSubject) -> CaseResult {
    let jobs = format!(
        "- name: main\n  plan:\n  - {}\n    on_abort:\n      {}\n",
        task("block", &[], &[], BLOCK),
        task("slow-hook", &[], &[], BLOCK).replace('\n', "\n  "),
    );
    let grace = Duration::from_secs(2);
    let run = start(subject, &jobs, grace)?;
    run.watched.wait_for("task: block", "ready", START).await?;
    let aborted_at = Instant::now();
    run.abort.abort();
    let (o, _, build) = run.finish(Duration::from_secs(200)).await?;
    ensure!(
        aborted_at.elapsed() >= grace,
        "the hook was cut before its grace period"
    );
    ensure_eq!(o.status, BuildStatus::Aborted);
    match summary(&o, "task: slow-hook").map(|s| &s.result) {
        Some(Err(StepFailure::Aborted)) => {}
        other => fail!("the hook should be cut at the end of the grace, got {other:?}"),
    }
    leftovers(subject, &build).await
}

/// A worker that lost its registration stops at once: no hook runs, the build ends
/// `errored` and says why.
pub async fn worker_lost_runs_no_hooks(subject: &RuntimeSubject) -> CaseResult {
    let jobs = format!(
        "- name: main\n  plan:\n  - {}\n    on_abort:\n      {}\n    on_error:\n      {}\n    ensure:\n      {}\n",
        task("block", &[], &[], BLOCK),
        task("on-abort", &[], &[], "true").replace('\n', "\n  "),
        task("on-error", &[], &[], "true").replace('\n', "\n  "),
        task("ensure", &[], &[], "true").replace('\n', "\n  "),
    );
    let run = start(subject, &jobs, Duration::from_secs(60))?;
    run.watched.wait_for("task: block", "ready", START).await?;
    run.abort
        .abort_because(AbortReason::WorkerLost("lost its registration".to_owned()));
    let (o, _, build) = run.finish(Duration::from_secs(100)).await?;
    ensure_eq!(o.status, BuildStatus::Errored);
    match &o.failure {
        Some((name, f @ StepFailure::WorkerLost(_))) => {
            ensure_eq!(name.as_str(), "task: block");
            ensure!(f.to_string().contains("lost its registration"), "{f}");
        }
        other => fail!("expected the step to end worker-lost, got {other:?}"),
    }
    for hook in ["task: on-abort", "task: on-error", "task: ensure"] {
        did_not_run(&o, hook)?;
    }
    leftovers(subject, &build).await
}

/// Tasks of the same name, side by side and one after another, each bind their own
/// outputs.
pub async fn same_named_tasks_bind_their_own_outputs(subject: &RuntimeSubject) -> CaseResult {
    let par = |s: String| s.replace('\n', "\n  ");
    let jobs = format!(
        "- name: main\n  plan:\n  - in_parallel:\n    - {}\n    - {}\n  - {}\n",
        par(task("t", &[], &["a"], "echo one > a/f")),
        par(task("t", &[], &["b"], "echo two > b/f")),
        task("t", &["a", "b"], &["c"], "cat a/f b/f > c/f"),
    );
    let run = start(subject, &jobs, Duration::from_secs(60))?;
    let (o, _, _) = run.finish(Duration::from_secs(300)).await?;
    ensure_eq!(o.status, BuildStatus::Succeeded, "failure: {:?}", o.failure);
    ensure_eq!(
        o.steps.iter().filter(|s| s.name == "task: t").count(),
        3,
        "steps: {:?}",
        o.steps
    );
    let rt = &subject.runtime;
    for (name, want) in [("a", "one\n"), ("b", "two\n"), ("c", "one\ntwo\n")] {
        let a = o
            .artifacts
            .get(name)
            .ok_or_else(|| CaseError::here(format!("no artifact {name}")))?;
        let got = read_artifact_file(rt, a, "f").await?;
        ensure_eq!(String::from_utf8_lossy(&got), want, "artifact {name}");
    }
    // Each `task: t` summary lists exactly its own output.
    let mut bound: Vec<String> = o
        .steps
        .iter()
        .filter(|s| s.name == "task: t")
        .map(|s| {
            s.artifacts
                .iter()
                .map(|a| a.name.clone())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    bound.sort();
    ensure_eq!(bound, vec!["a", "b", "c"]);
    Ok(())
}

/// Symlinks a task makes in an output are kept exactly as made, wherever they point,
/// and the next step sees the same links (never what they point at).
pub async fn symlinks_in_outputs_are_kept(subject: &RuntimeSubject) -> CaseResult {
    let jobs = format!(
        "- name: main\n  plan:\n  - {}\n  - {}\n",
        task(
            "make-links",
            &[],
            &["out"],
            "echo data > out/f && ln -s /etc/passwd out/abs && ln -s ../../outside out/up && ln -s f out/rel"
        ),
        task(
            "sees-links",
            &["out"],
            &[],
            "test -L out/abs && test -L out/up && test -L out/rel && echo links seen"
        ),
    );
    let run = start(subject, &jobs, Duration::from_secs(60))?;
    let watched = run.watched.clone();
    let (o, _, _) = run.finish(Duration::from_secs(300)).await?;
    ensure_eq!(o.status, BuildStatus::Succeeded, "failure: {:?}", o.failure);
    ensure!(
        watched.output_of("task: sees-links").contains("links seen"),
        "the next step did not see the links"
    );
    let a = o
        .artifacts
        .get("out")
        .ok_or_else(|| CaseError::here("no artifact out"))?;
    let store = subject
        .runtime
        .volumes
        .as_ref()
        .ok_or_else(|| CaseError::here("no volume store"))?;
    let tar = store
        .read_tar(&a.volume)
        .await
        .map_err(|e| CaseError::here(format!("read_tar: {e}")))?;
    let data = jetbridge_core::ports::collect_stream(tar)
        .await
        .map_err(|e| CaseError::here(format!("reading: {e}")))?;
    let mut links = std::collections::BTreeMap::new();
    let mut ar = tar::Archive::new(std::io::Cursor::new(data));
    for e in ar.entries().map_err(|e| CaseError::here(e.to_string()))? {
        let e = e.map_err(|e| CaseError::here(e.to_string()))?;
        if e.header().entry_type() == tar::EntryType::Symlink {
            let path = e
                .path()
                .map_err(|e| CaseError::here(e.to_string()))?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_owned();
            let target = e
                .link_name()
                .map_err(|e| CaseError::here(e.to_string()))?
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            links.insert(path, target);
        }
    }
    let want: std::collections::BTreeMap<String, String> = [
        ("abs", "/etc/passwd"),
        ("up", "../../outside"),
        ("rel", "f"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect();
    ensure_eq!(
        links,
        want,
        "the artifact keeps each link as the task made it"
    );
    Ok(())
}

/// The cases, in order.
pub const CASES: &[&str] = &[
    "abort_runs_on_abort_and_ensure",
    "second_abort_skips_hooks",
    "abort_grace_bounds_hooks",
    "worker_lost_runs_no_hooks",
    "same_named_tasks_bind_their_own_outputs",
    "symlinks_in_outputs_are_kept",
];

/// Run the case called `name`.
pub async fn run_case(subject: &RuntimeSubject, name: &str) -> Option<CaseResult> {
    Some(match name {
        "abort_runs_on_abort_and_ensure" => Box::pin(abort_runs_on_abort_and_ensure(subject)).await,
        "second_abort_skips_hooks" => Box::pin(second_abort_skips_hooks(subject)).await,
        "abort_grace_bounds_hooks" => Box::pin(abort_grace_bounds_hooks(subject)).await,
        "worker_lost_runs_no_hooks" => Box::pin(worker_lost_runs_no_hooks(subject)).await,
        "same_named_tasks_bind_their_own_outputs" => {
            Box::pin(same_named_tasks_bind_their_own_outputs(subject)).await
        }
        "symlinks_in_outputs_are_kept" => Box::pin(symlinks_in_outputs_are_kept(subject)).await,
        _ => return None,
    })
}

/// Run every lifecycle case against one subject (for `jetbridge conformance`).
pub async fn run_all(subject: &RuntimeSubject) -> Vec<crate::CaseOutcome> {
    let mut out = Vec::with_capacity(CASES.len());
    for name in CASES {
        out.push(crate::support::outcome(name, run_case(subject, name)).await);
    }
    out
}

/// Register every case of the lifecycle suite as a test in a module
/// `lifecycle_conformance`. `$factory`: an `async fn() -> Option<RuntimeSubject>`.
#[macro_export]
macro_rules! lifecycle_suite {
    ($factory:expr $(,)?) => {
        $crate::__suite_module!(
            [allow(clippy::large_futures)]
            lifecycle_conformance,
            lifecycle,
            "lifecycle",
            $factory,
            [
                abort_runs_on_abort_and_ensure,
                second_abort_skips_hooks,
                abort_grace_bounds_hooks,
                worker_lost_runs_no_hooks,
                same_named_tasks_bind_their_own_outputs,
                symlinks_in_outputs_are_kept,
            ]
        );
    };
}
