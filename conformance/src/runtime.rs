//! The runtime suite: whole plans (get -> task -> put) over a bundle of the four ports.
//!
//! Pipelines here use one resource type, `jb-mock`, which the subject declares in a way
//! its backend can run (a `type: local` directory of shell scripts on the local backend,
//! the mock-resource image elsewhere). Its protocol: `check` answers
//! `[{"version": source.initial_version or "1"}]`; `in DEST` writes the version string
//! to `DEST/version`; `out` answers `{"version": {"version": params.version}}`.
//! Task scripts stay within the `sh -c` subset every backend supports.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use jetbridge_core::images::ImageResolver;
use jetbridge_core::names::{VolumeHandle, label};
use jetbridge_core::plan::{Vars, parse_pipeline};
use jetbridge_core::ports::{OutputSink, OutputStream, Runtime, collect_stream};
use jetbridge_core::services::{
    ArtifactRef, BuildEvents, BuildOutcome, BuildRequest, BuildRunner, BuildStatus, Reaper,
    ReaperConfig, StepConfig, StepFailure, StepSummary,
};

use crate::{CaseError, CaseOutcome, CaseResult, ensure, ensure_eq, fail};

type Guard = Box<dyn std::any::Any + Send + Sync>;

/// A runtime under test: the four ports plus how this backend runs the `jb-mock`
/// resource type.
pub struct RuntimeSubject {
    /// The ports.
    pub runtime: Runtime,
    /// A YAML flow mapping declaring the `jb-mock` resource type, e.g.
    /// `{name: jb-mock, type: local, source: {path: /abs/dir}}`.
    pub mock_type: String,
    /// Image resolution for this backend.
    pub images: ImageResolver,
    /// Changes a byte of a sealed volume behind the store's back (see
    /// [`RuntimeSubject::with_tamper`]); cases that need it skip without it.
    pub tamper: Option<Tamper>,
    guards: Vec<Guard>,
}

/// Changes the content of a sealed volume without going through its store, as a disk
/// fault or a rogue process would. [`flip_a_byte_under`] does it for stores that keep
/// volumes as files.
pub type Tamper = Arc<dyn Fn(&VolumeHandle) -> Result<(), String> + Send + Sync>;

impl std::fmt::Debug for RuntimeSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeSubject")
            .field("runtime", &self.runtime)
            .field("mock_type", &self.mock_type)
            .finish_non_exhaustive()
    }
}

impl RuntimeSubject {
    /// A subject.
    pub fn new(runtime: Runtime, mock_type: impl Into<String>, images: ImageResolver) -> Self {
        RuntimeSubject {
            runtime,
            mock_type: mock_type.into(),
            images,
            tamper: None,
            guards: Vec::new(),
        }
    }

    /// How to change a sealed volume behind the store's back, for the case that proves
    /// a changed input fails its step as `Corrupt`.
    pub fn with_tamper(
        mut self,
        tamper: impl Fn(&VolumeHandle) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.tamper = Some(Arc::new(tamper));
        self
    }

    /// Keep `guard` alive as long as the subject.
    pub fn with_guard(mut self, guard: impl std::any::Any + Send + Sync) -> Self {
        self.guards.push(Box::new(guard));
        self
    }
}

/// The `jb-mock` resource as POSIX shell scripts (`check`, `in`, `out`), for backends
/// that run resource types from a directory.
pub const MOCK_RESOURCE_SCRIPTS: &[(&str, &str)] = &[
    (
        "check",
        r#"#!/bin/sh
set -e
payload=$(cat)
v=$(printf '%s' "$payload" | sed -n 's/.*"initial_version":"\([^"]*\)".*/\1/p')
[ -n "$v" ] || v=1
printf '[{"version":"%s"}]\n' "$v"
"#,
    ),
    (
        "in",
        r#"#!/bin/sh
set -e
dest=$1
payload=$(cat)
v=$(printf '%s' "$payload" | sed -n 's/.*"version":{"version":"\([^"]*\)"}.*/\1/p')
mkdir -p "$dest"
printf '%s' "$v" > "$dest/version"
printf '{"version":{"version":"%s"},"metadata":[]}\n' "$v"
"#,
    ),
    (
        "out",
        r#"#!/bin/sh
set -e
payload=$(cat)
v=$(printf '%s' "$payload" | sed -n 's/.*"params":{[^}]*"version":"\([^"]*\)".*/\1/p')
[ -n "$v" ] || { echo "out: params.version is required" >&2; exit 1; }
printf '{"version":{"version":"%s"},"metadata":[]}\n' "$v"
"#,
    ),
];

/// Flip one bit of the middle byte of the first non-empty regular file under `dir`
/// whose name starts with `prefix` (names sorted, symlinks not followed), whatever its
/// mode: a [`Tamper`] for stores that keep a volume as files under one directory.
pub fn flip_a_byte_under(dir: &Path, prefix: &str) -> Result<(), String> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .map_err(|e| format!("reading {}: {e}", d.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries.iter().rev() {
            let Ok(md) = std::fs::symlink_metadata(p) else {
                continue;
            };
            if md.is_dir() {
                stack.push(p.clone());
            }
        }
        for p in &entries {
            let named = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix));
            if named && std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file() && m.len() > 0) {
                return flip_a_byte_in(p);
            }
        }
    }
    Err(format!(
        "no non-empty file {prefix}* under {}",
        dir.display()
    ))
}

/// Flip one bit of the middle byte of the file `p`, whatever its mode.
pub fn flip_a_byte_in(p: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::symlink_metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
    let mut data = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
    if data.is_empty() {
        return Err(format!("{} is empty", p.display()));
    }
    let mid = data.len() / 2;
    data[mid] ^= 0x01;
    let mode = md.permissions().mode();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o200))
        .and_then(|()| std::fs::write(p, &data))
        .and_then(|()| std::fs::set_permissions(p, md.permissions()))
        .map_err(|e| format!("{}: {e}", p.display()))
}

/// Write [`MOCK_RESOURCE_SCRIPTS`] into `dir` as executables.
pub fn write_mock_resource(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    for (name, body) in MOCK_RESOURCE_SCRIPTS {
        let p = dir.join(name);
        std::fs::write(&p, body)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Output chunks by step name, in arrival order.
type SharedOutput = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Events kept for assertions.
#[derive(Debug, Default)]
pub struct RecordedEvents {
    started: Mutex<Vec<String>>,
    output: SharedOutput,
}

struct StepSink {
    step: String,
    all: SharedOutput,
}

impl OutputSink for StepSink {
    fn write(&self, _: OutputStream, data: &[u8]) {
        if let Ok(mut a) = self.all.lock() {
            a.push((self.step.clone(), data.to_vec()));
        }
    }
}

impl BuildEvents for RecordedEvents {
    fn step_started(&self, name: &str, _: &str) {
        if let Ok(mut s) = self.started.lock() {
            s.push(name.to_owned());
        }
    }
    fn step_output(&self, name: &str) -> Arc<dyn OutputSink> {
        Arc::new(StepSink {
            step: name.to_owned(),
            all: self.output.clone(),
        })
    }
    fn step_finished(&self, _: &StepSummary) {}
    fn notice(&self, _: &str) {}
}

impl RecordedEvents {
    /// Everything a step printed.
    pub fn output_of(&self, step: &str) -> String {
        let all = self.output.lock().map(|a| a.clone()).unwrap_or_default();
        let mut s = String::new();
        for (name, data) in all.iter().filter(|(n, _)| n == step) {
            let _ = name;
            s.push_str(&String::from_utf8_lossy(data));
        }
        s
    }
}

pub(crate) const WORKER: &str = "conformance-worker";

pub(crate) fn pipeline_yaml(subject: &RuntimeSubject, jobs: &str) -> String {
    format!(
        "resource_types:\n- {}\nresources:\n- name: repo\n  type: jb-mock\n  source: {{initial_version: v1}}\n- name: sink\n  type: jb-mock\n  source: {{}}\njobs:\n{jobs}",
        subject.mock_type
    )
}

/// Run `job` of a pipeline made of the subject's resource types and `jobs` YAML.
pub async fn run_jobs(
    subject: &RuntimeSubject,
    jobs: &str,
    job: &str,
    config: StepConfig,
) -> Result<(BuildOutcome, BuildRunner, String), CaseError> {
    let events = Arc::new(RecordedEvents::default());
    run_jobs_with(subject, jobs, job, config, events).await
}

/// [`run_jobs`] reporting to `events`.
pub async fn run_jobs_with(
    subject: &RuntimeSubject,
    jobs: &str,
    job: &str,
    config: StepConfig,
    events: Arc<dyn BuildEvents>,
) -> Result<(BuildOutcome, BuildRunner, String), CaseError> {
    let yaml = pipeline_yaml(subject, jobs);
    run_pipeline(subject, &yaml, &Vars::new(), job, config, events, None).await
}

/// Parse `yaml` with `vars` and run `job` of it on the subject, its `set_pipeline`
/// steps recorded in `pipelines` when given: the one place every case's build runs.
async fn run_pipeline(
    subject: &RuntimeSubject,
    yaml: &str,
    vars: &Vars,
    job: &str,
    config: StepConfig,
    events: Arc<dyn BuildEvents>,
    pipelines: Option<Arc<dyn jetbridge_core::services::PipelineSink>>,
) -> Result<(BuildOutcome, BuildRunner, String), CaseError> {
    let pipeline = parse_pipeline(yaml, "conformance.yml", vars)
        .map_err(|e| CaseError::here(format!("pipeline did not parse: {e}\n{yaml}")))?;
    let runner = BuildRunner::new(
        subject.runtime.clone(),
        config,
        subject.images.clone(),
        WORKER,
        events,
    );
    let build_id = format!("conf-{}", uuid_like());
    let mut req = BuildRequest::new(Arc::new(pipeline), job.to_owned(), 1, build_id.clone());
    if let Some(sink) = pipelines {
        req = req.with_pipelines(sink);
    }
    let outcome = runner
        .run(req)
        .await
        .map_err(|e| CaseError::here(format!("build did not run: {e}")))?;
    Ok((outcome, runner, build_id))
}

fn uuid_like() -> String {
    jetbridge_core::names::StepHandle::random().as_str()[..12].to_owned()
}

pub(crate) fn quick() -> StepConfig {
    StepConfig {
        scheduling_timeout: Duration::from_secs(60),
        startup_timeout: Duration::from_secs(120),
        delete_grace: Duration::from_secs(1),
        keep_pods: false,
        create_retries: 4,
    }
}

/// Read one file of an artifact.
pub async fn read_artifact_file(
    rt: &Runtime,
    a: &ArtifactRef,
    path: &str,
) -> Result<Vec<u8>, CaseError> {
    let store = rt
        .volumes
        .as_ref()
        .ok_or_else(|| CaseError::here("no volume store"))?;
    let tar = store
        .read_tar(&a.volume)
        .await
        .map_err(|e| CaseError::here(format!("read_tar {}: {e}", a.name)))?;
    let data = collect_stream(tar)
        .await
        .map_err(|e| CaseError::here(format!("reading {}: {e}", a.name)))?;
    let mut ar = tar::Archive::new(std::io::Cursor::new(data));
    let entries = ar.entries().map_err(|e| CaseError::here(e.to_string()))?;
    for e in entries {
        let mut e = e.map_err(|e| CaseError::here(e.to_string()))?;
        let p = e
            .path()
            .map_err(|e| CaseError::here(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        if p.trim_start_matches("./") == path {
            let mut v = Vec::new();
            e.read_to_end(&mut v)
                .map_err(|e| CaseError::here(e.to_string()))?;
            return Ok(v);
        }
    }
    Err(CaseError::here(format!("no {path} in artifact {}", a.name)))
}

fn artifact<'a>(o: &'a BuildOutcome, name: &str) -> Result<&'a ArtifactRef, CaseError> {
    o.artifacts.get(name).ok_or_else(|| {
        CaseError::here(format!(
            "no artifact {name:?}; have {:?}",
            o.artifacts.keys().collect::<Vec<_>>()
        ))
    })
}

pub(crate) fn task(name: &str, inputs: &[&str], outputs: &[&str], script: &str) -> String {
    let ins: String = inputs.iter().map(|i| format!("{{name: {i}}}, ")).collect();
    let outs: String = outputs.iter().map(|o| format!("{{name: {o}}}, ")).collect();
    format!(
        "task: {name}\n    config:\n      platform: linux\n      inputs: [{}]\n      outputs: [{}]\n      run: {{path: sh, args: [-c, {}]}}",
        ins.trim_end_matches(", "),
        outs.trim_end_matches(", "),
        serde_json::to_string(script).unwrap_or_default()
    )
}

pub(crate) async fn leftovers(subject: &RuntimeSubject, build_id: &str) -> Result<(), CaseError> {
    let rt = &subject.runtime;
    let mut sel = BTreeMap::new();
    sel.insert(label::WORKER.to_owned(), WORKER.to_owned());
    // A graceful delete takes a moment on a cluster: pods on their way out may still be
    // listed for a while, but every one must be gone within the deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let pods = rt
            .pods
            .list(&sel)
            .await
            .map_err(|e| CaseError::here(e.to_string()))?;
        if pods.is_empty() {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline && pods.iter().all(|p| p.deleting),
            "pods left behind: {:?}",
            pods.iter()
                .map(|p| (&p.name, p.deleting))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let filter = jetbridge_core::ports::ArtifactFilter {
        build: Some(build_id.to_owned()),
        ..Default::default()
    };
    let left = rt
        .registry
        .find(&filter)
        .await
        .map_err(|e| CaseError::here(e.to_string()))?;
    ensure!(left.is_empty(), "artifact records left: {left:?}");
    Ok(())
}

async fn reap(subject: &RuntimeSubject, runner: &BuildRunner) -> Result<(), CaseError> {
    let mut cfg = ReaperConfig::new(WORKER);
    cfg.orphan_volume_grace = Duration::from_secs(3600);
    let reaper = Reaper::new(
        Some(subject.runtime.pods.clone()),
        subject.runtime.volumes.clone(),
        subject.runtime.registry.clone(),
        cfg,
    );
    let active: HashSet<String> = runner.active_steps();
    let report = reaper
        .run_once(&active, SystemTime::now())
        .await
        .map_err(|e| CaseError::here(format!("reaper: {e}")))?;
    ensure!(
        report.errors.is_empty(),
        "reaper errors: {:?}",
        report.errors
    );
    Ok(())
}

/// get -> task -> put: artifacts pass by name; the put sees the task's output.
pub async fn get_task_put(subject: &RuntimeSubject) -> CaseResult {
    let jobs = format!(
        "- name: main\n  plan:\n  - get: repo\n  - {}\n  - put: sink\n    inputs: [built]\n    params: {{version: v2}}\n",
        task(
            "build",
            &["repo"],
            &["built"],
            "cp repo/version built/result.txt && echo done > built/marker"
        )
    );
    let (o, runner, build) = run_jobs(subject, &jobs, "main", quick()).await?;
    ensure_eq!(o.status, BuildStatus::Succeeded, "failure: {:?}", o.failure);
    let rt = &subject.runtime;
    let version = read_artifact_file(rt, artifact(&o, "repo")?, "version").await?;
    ensure_eq!(String::from_utf8_lossy(&version).trim(), "v1");
    let built = read_artifact_file(rt, artifact(&o, "built")?, "result.txt").await?;
    ensure_eq!(built, version, "the task's output carries the get's file");
    let sink = read_artifact_file(rt, artifact(&o, "sink")?, "version").await?;
    ensure_eq!(
        String::from_utf8_lossy(&sink).trim(),
        "v2",
        "implicit get after put fetched the pushed version"
    );
    let names: Vec<&str> = o.steps.iter().map(|s| s.name.as_str()).collect();
    ensure_eq!(
        names,
        vec!["get: repo", "task: build", "put: sink", "get: sink"]
    );
    for s in &o.steps {
        ensure!(s.result.is_ok(), "{} failed: {:?}", s.name, s.result);
    }
    reap(subject, &runner).await?;
    leftovers(subject, &build).await
}

/// A step's changes to its inputs never reach another step or the artifact.
pub async fn inputs_are_private_copies(subject: &RuntimeSubject) -> CaseResult {
    let jobs = format!(
        "- name: main\n  plan:\n  - get: repo\n  - {}\n  - {}\n",
        task(
            "vandal",
            &["repo"],
            &[],
            "echo changed > repo/version && rm -f repo/missing && echo new > repo/added"
        ),
        task(
            "reader",
            &["repo"],
            &["seen"],
            "test -e repo/added && exit 9; cp repo/version seen/version"
        )
    );
    let (o, _runner, _) = run_jobs(subject, &jobs, "main", quick()).await?;
    ensure_eq!(o.status, BuildStatus::Succeeded, "failure: {:?}", o.failure);
    let rt = &subject.runtime;
    let seen = read_artifact_file(rt, artifact(&o, "seen")?, "version").await?;
    ensure_eq!(String::from_utf8_lossy(&seen).trim(), "v1");
    let orig = read_artifact_file(rt, artifact(&o, "repo")?, "version").await?;
    ensure_eq!(String::from_utf8_lossy(&orig).trim(), "v1");
    Ok(())
}

/// A non-zero exit fails the build, names the step and the status.
pub async fn failing_step_fails_build(subject: &RuntimeSubject) -> CaseResult {
    let jobs = format!(
        "- name: main\n  plan:\n  - {}\n  - {}\n",
        task("boom", &[], &[], "echo about to fail && exit 3"),
        task("never", &[], &[], "true")
    );
    let (o, _r, _) = run_jobs(subject, &jobs, "main", quick()).await?;
    ensure_eq!(o.status, BuildStatus::Failed);
    match &o.failure {
        Some((name, StepFailure::Exited(3))) => ensure_eq!(name.as_str(), "task: boom"),
        other => fail!("expected task: boom to exit 3, got {other:?}"),
    }
    ensure!(
        !o.steps.iter().any(|s| s.name == "task: never"),
        "a step after the failure ran"
    );
    Ok(())
}

/// `try`: a failing step under it does not fail the build, and the steps after it run;
/// a step under `try` that succeeds hands its outputs on as any step does.
pub async fn try_masks_a_failure(subject: &RuntimeSubject) -> CaseResult {
    let under_try = |t: String| format!("try:\n      {}", t.replace('\n', "\n  "));
    let jobs = format!(
        "- name: main\n  plan:\n  - {}\n  - {}\n  - {}\n",
        under_try(task("boom", &[], &[], "echo about to fail && exit 3")),
        under_try(task("fine", &[], &["made"], "echo made > made/f")),
        task("after", &["made"], &["out"], "cp made/f out/f")
    );
    let (o, runner, build) = run_jobs(subject, &jobs, "main", quick()).await?;
    ensure_eq!(o.status, BuildStatus::Succeeded, "failure: {:?}", o.failure);
    ensure!(
        o.failure.is_none(),
        "a masked failure is reported: {:?}",
        o.failure
    );
    let Some(boom) = o.steps.iter().find(|s| s.name == "task: boom") else {
        fail!("task: boom did not run: {:?}", o.steps);
    };
    ensure!(
        matches!(boom.result, Err(StepFailure::Exited(3))),
        "task: boom is still reported as it ended: {:?}",
        boom.result
    );
    ensure_eq!(
        String::from_utf8_lossy(
            &read_artifact_file(&subject.runtime, artifact(&o, "out")?, "f").await?
        )
        .trim(),
        "made"
    );
    reap(subject, &runner).await?;
    leftovers(subject, &build).await
}

/// `load_var`: a file of an artifact becomes a local var that later steps read as
/// `((.:name))` (whole values keep their type, fields are read with `.field`), filled
/// in when each step starts.
pub async fn load_var_fills_later_steps(subject: &RuntimeSubject) -> CaseResult {
    let jobs = format!(
        "- name: main\n  plan:\n  - {}\n  - load_var: version\n    file: meta/version\n  - load_var: meta\n    file: meta/info.json\n  - {}\n",
        task(
            "describe",
            &[],
            &["meta"],
            "echo ' 1.2.3 ' > meta/version && echo '{\"tag\": \"v1\", \"n\": 2}' > meta/info.json"
        ),
        task(
            "use",
            &[],
            &["out"],
            "echo \"((.:version)) ((.:meta.tag)) ((.:meta.n))\" > out/line"
        )
    );
    let (o, runner, build) = run_jobs(subject, &jobs, "main", quick()).await?;
    ensure_eq!(o.status, BuildStatus::Succeeded, "failure: {:?}", o.failure);
    ensure_eq!(
        String::from_utf8_lossy(
            &read_artifact_file(&subject.runtime, artifact(&o, "out")?, "line").await?
        )
        .trim(),
        "1.2.3 v1 2"
    );
    ensure!(
        o.steps
            .iter()
            .any(|s| s.name == "load_var: version" && s.result.is_ok()),
        "the load_var steps are reported: {:?}",
        o.steps.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    reap(subject, &runner).await?;
    leftovers(subject, &build).await
}

/// `across`: the step runs once per combination (the last var fastest), each with its
/// values as local vars and its outputs its own; values may come from a `load_var`.
pub async fn across_runs_each_combination(subject: &RuntimeSubject) -> CaseResult {
    let combo = task(
        "combo",
        &[],
        &["out"],
        "echo ((.:os))-((.:go)) > out/f && cat out/f",
    );
    let jobs = format!(
        "- name: main\n  plan:\n  - {}\n  - load_var: gos\n    file: list/gos.json\n  - {combo}\n    across:\n    - var: os\n      values: [linux, darwin]\n    - var: go\n      values: ((.:gos))\n      max_in_flight: all\n",
        task(
            "list",
            &[],
            &["list"],
            "echo '[\"1.21\", \"1.22\"]' > list/gos.json"
        )
    );
    let (o, runner, build) = run_jobs(subject, &jobs, "main", quick()).await?;
    ensure_eq!(o.status, BuildStatus::Succeeded, "failure: {:?}", o.failure);
    let mut ran: Vec<&str> = o
        .steps
        .iter()
        .filter(|s| s.name.starts_with("task: combo"))
        .map(|s| s.name.as_str())
        .collect();
    ran.sort_unstable();
    ensure_eq!(
        ran,
        vec![
            "task: combo (os=darwin, go=1.21)",
            "task: combo (os=darwin, go=1.22)",
            "task: combo (os=linux, go=1.21)",
            "task: combo (os=linux, go=1.22)",
        ]
    );
    ensure!(
        !o.artifacts.contains_key("out"),
        "an iteration's output escaped its iteration"
    );
    reap(subject, &runner).await?;
    leftovers(subject, &build).await
}

/// A task's `image:` names an artifact an earlier step fetched (as a `registry-image`
/// get writes it: `repository` and `digest`): a backend with images runs the task in
/// `repository@digest`, one without runs it on the host; the task runs either way.
pub async fn task_image_from_an_artifact(subject: &RuntimeSubject) -> CaseResult {
    let fetch = task(
        "fetch",
        &[],
        &["tools"],
        &format!(
            "echo busybox > tools/repository && echo sha256:{} > tools/digest",
            "0".repeat(64)
        ),
    );
    let jobs = format!(
        "- name: main\n  plan:\n  - {fetch}\n  - {}\n    image: tools\n",
        task("use", &[], &["out"], "echo ran > out/f")
    );
    let (o, runner, build) = run_jobs(subject, &jobs, "main", quick()).await?;
    ensure_eq!(o.status, BuildStatus::Succeeded, "failure: {:?}", o.failure);
    ensure_eq!(
        String::from_utf8_lossy(
            &read_artifact_file(&subject.runtime, artifact(&o, "out")?, "f").await?
        )
        .trim(),
        "ran"
    );
    reap(subject, &runner).await?;
    leftovers(subject, &build).await
}

/// The built-in `mock` resource, with no resource type declared: a get with
/// `create_files` hands the files to a task, a put with `params.version` creates that
/// version and its implicit get fetches it. Every backend runs it: on the host where
/// steps are host processes, in the subject's mock image (the jetbridge image) where
/// they run in images.
pub async fn builtin_mock_round_trip(subject: &RuntimeSubject) -> CaseResult {
    let yaml = "resources:\n- name: config\n  type: mock\n  source: {initial_version: v1, create_files: {greeting.txt: hello}}\n- name: release\n  type: mock\n  source: {no_initial_version: true}\njobs:\n- name: main\n  plan:\n  - get: config\n  - task: read\n    config:\n      platform: linux\n      inputs: [{name: config}]\n      outputs: [{name: out}]\n      run: {path: sh, args: [-c, \"cp config/greeting.txt out/g && cp config/version out/v\"]}\n  - put: release\n    params: {version: v7}\n";
    let (o, runner, build) = run_yaml(subject, yaml, "main").await?;
    ensure_eq!(o.status, BuildStatus::Succeeded, "failure: {:?}", o.failure);
    let out = artifact(&o, "out")?;
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).trim().to_owned();
    ensure_eq!(
        text(read_artifact_file(&subject.runtime, out, "g").await?),
        "hello"
    );
    ensure_eq!(
        text(read_artifact_file(&subject.runtime, out, "v").await?),
        "v1"
    );
    ensure_eq!(
        String::from_utf8_lossy(
            &read_artifact_file(&subject.runtime, artifact(&o, "release")?, "version").await?
        )
        .trim(),
        "v7"
    );
    reap(subject, &runner).await?;
    leftovers(subject, &build).await
}

/// Records the pipelines a build's `set_pipeline` steps hand it.
#[derive(Default)]
struct RecordedPipelines(std::sync::Mutex<Vec<jetbridge_core::services::PipelineToSet>>);

#[async_trait::async_trait]
impl jetbridge_core::services::PipelineSink for RecordedPipelines {
    async fn set_pipeline(
        &self,
        p: jetbridge_core::services::PipelineToSet,
    ) -> jetbridge_core::Result<jetbridge_core::services::PipelineRecorded> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.push(p);
        Ok(jetbridge_core::services::PipelineRecorded {
            version: all.len() as u64,
            changed: true,
        })
    }
}

/// `set_pipeline` reads its file and var files out of an earlier step's output, wherever
/// that step ran, and hands the checked pipeline to the build's sink.
pub async fn set_pipeline_reads_its_files_from_artifacts(subject: &RuntimeSubject) -> CaseResult {
    let write = task(
        "write",
        &[],
        &["ci"],
        "echo 'jobs: [{name: child, plan: [{task: t, config: {platform: linux, run: {path: x}}}]}]' > ci/p.yml && echo 'region: eu' > ci/vars.yml",
    );
    let yaml = format!(
        "jobs:\n- name: main\n  plan:\n  - {write}\n  - set_pipeline: child\n    file: ci/p.yml\n    var_files: [ci/vars.yml]\n    vars: {{tier: gold}}\n"
    );
    let sink = Arc::new(RecordedPipelines::default());
    let events = Arc::new(RecordedEvents::default());
    let (o, runner, build) = run_pipeline(
        subject,
        &yaml,
        &Vars::new(),
        "main",
        quick(),
        events,
        Some(sink.clone()),
    )
    .await?;
    ensure_eq!(o.status, BuildStatus::Succeeded, "failure: {:?}", o.failure);
    let set = sink.0.lock().map(|s| s.clone()).unwrap_or_default();
    ensure_eq!(set.len(), 1, "pipelines recorded: {set:?}");
    ensure_eq!(set[0].name, "child");
    ensure!(
        set[0].config.contains("name: child"),
        "config: {:?}",
        set[0].config
    );
    ensure_eq!(
        serde_json::Value::Object(set[0].vars.clone()),
        serde_json::json!({"region": "eu", "tier": "gold"})
    );
    reap(subject, &runner).await?;
    leftovers(subject, &build).await
}

/// What `get`'s `version:` gives the resource's `in`, as Concourse passes it: a pinned
/// version as is (no check), `latest` and `every` the last version `check` lists (a
/// one-off build has no history to walk), and without one the resource's own pin.
pub async fn get_versions_reach_in(subject: &RuntimeSubject) -> CaseResult {
    let jobs = format!(
        "- name: main\n  plan:\n  - get: repo\n  - get: pinned\n  - get: at\n    resource: repo\n    version: {{version: v5}}\n  - get: each\n    resource: repo\n    version: every\n  - get: newest\n    resource: repo\n    version: latest\n  - {}\n",
        task(
            "read",
            &["repo", "pinned", "at", "each", "newest"],
            &["out"],
            "cp repo/version out/repo && cp pinned/version out/pinned && cp at/version out/at && cp each/version out/each && cp newest/version out/newest"
        )
    );
    let yaml = format!(
        "resource_types:\n- {}\nresources:\n- name: repo\n  type: jb-mock\n  source: {{initial_version: v1}}\n- name: pinned\n  type: jb-mock\n  source: {{initial_version: v1}}\n  version: {{version: p9}}\njobs:\n{jobs}",
        subject.mock_type
    );
    let (o, runner, build) = run_yaml(subject, &yaml, "main").await?;
    ensure_eq!(o.status, BuildStatus::Succeeded, "failure: {:?}", o.failure);
    let out = artifact(&o, "out")?;
    let mut got = Vec::new();
    for name in ["repo", "pinned", "at", "each", "newest"] {
        let v = read_artifact_file(&subject.runtime, out, name).await?;
        got.push(String::from_utf8_lossy(&v).trim().to_owned());
    }
    ensure_eq!(got, ["v1", "p9", "v5", "v1", "v1"]);
    reap(subject, &runner).await?;
    leftovers(subject, &build).await
}

/// `load_var`'s formats: `raw` keeps the file as it is, `.yml` reads as YAML by its
/// extension, an explicit `format: json` reads a file with no extension; a file that is
/// not what its format says fails the step, and nothing after it runs.
pub async fn load_var_formats(subject: &RuntimeSubject) -> CaseResult {
    let write = task(
        "write",
        &[],
        &["meta"],
        "echo '  padded  ' > meta/raw.txt && echo 'zone: b' > meta/conf.yml && echo '{\"n\": 7}' > meta/data && echo '{not json' > meta/bad.json",
    );
    let jobs = format!(
        "- name: main\n  plan:\n  - {write}\n  - load_var: raw\n    file: meta/raw.txt\n    format: raw\n  - load_var: conf\n    file: meta/conf.yml\n  - load_var: data\n    file: meta/data\n    format: json\n  - {}\n- name: bad\n  plan:\n  - {write}\n  - load_var: bad\n    file: meta/bad.json\n  - {}\n",
        task_with_params(
            "use",
            "{RAW: ((.:raw)), ZONE: ((.:conf.zone)), N: ((.:data.n))}",
            "echo \"[$RAW]|$ZONE|$N\" > out/line"
        ),
        task("never", &[], &[], "echo ran")
    );
    let (o, runner, build) = run_jobs(subject, &jobs, "main", quick()).await?;
    ensure_eq!(o.status, BuildStatus::Succeeded, "failure: {:?}", o.failure);
    ensure_eq!(
        String::from_utf8_lossy(
            &read_artifact_file(&subject.runtime, artifact(&o, "out")?, "line").await?
        )
        .trim_end(),
        // `raw` keeps the spaces and the newline `trim` would drop.
        "[  padded  \n]|b|7"
    );
    reap(subject, &runner).await?;
    leftovers(subject, &build).await?;
    let (o, runner, build) = run_jobs(subject, &jobs, "bad", quick()).await?;
    ensure_eq!(o.status, BuildStatus::Failed, "failure: {:?}", o.failure);
    let (step, failure) = o
        .failure
        .as_ref()
        .ok_or_else(|| CaseError::here("no failure reported"))?;
    ensure_eq!(step.as_str(), "load_var: bad");
    ensure!(
        failure.to_string().contains("is not JSON"),
        "failure: {failure}"
    );
    ensure!(
        !o.steps.iter().any(|s| s.name == "task: never"),
        "a step ran after the failed load_var"
    );
    reap(subject, &runner).await?;
    leftovers(subject, &build).await
}

/// Run `job` of `yaml` (which declares its own resource types) on the subject.
async fn run_yaml(
    subject: &RuntimeSubject,
    yaml: &str,
    job: &str,
) -> Result<(BuildOutcome, BuildRunner, String), CaseError> {
    run_yaml_with(subject, yaml, job, &Vars::new()).await
}

/// [`run_yaml`] with pipeline vars.
async fn run_yaml_with(
    subject: &RuntimeSubject,
    yaml: &str,
    job: &str,
    vars: &Vars,
) -> Result<(BuildOutcome, BuildRunner, String), CaseError> {
    let events = Arc::new(RecordedEvents::default());
    run_pipeline(subject, yaml, vars, job, quick(), events, None).await
}

/// [`task`] with `params` (a YAML flow mapping) and one output, `out`.
fn task_with_params(name: &str, params: &str, script: &str) -> String {
    task(name, &[], &["out"], script).replacen(
        "    config:\n",
        &format!("    params: {params}\n    config:\n"),
        1,
    )
}

/// `across` with `fail_fast` and values from a pipeline `((var))`: one value at a time
/// (the default `max_in_flight` of 1), in order; once one fails no more start, and the
/// build fails with it.
pub async fn across_fail_fast_starts_no_more(subject: &RuntimeSubject) -> CaseResult {
    let shard = task(
        "shard",
        &[],
        &[],
        "echo shard ((.:n)) && test ((.:n)) != two",
    );
    let yaml = pipeline_yaml(
        subject,
        &format!(
            "- name: main\n  plan:\n  - {shard}\n    across:\n    - var: n\n      values: ((shards))\n    fail_fast: true\n"
        ),
    );
    let mut vars = Vars::new();
    vars.insert("shards", serde_json::json!(["one", "two", "three"]));
    let (o, runner, build) = run_yaml_with(subject, &yaml, "main", &vars).await?;
    ensure_eq!(o.status, BuildStatus::Failed, "failure: {:?}", o.failure);
    ensure_eq!(
        o.failure.as_ref().map(|(s, _)| s.as_str()),
        Some("task: shard (n=two)")
    );
    let ran: Vec<&str> = o
        .steps
        .iter()
        .filter(|s| s.name.starts_with("task: shard"))
        .map(|s| s.name.as_str())
        .collect();
    ensure_eq!(ran, vec!["task: shard (n=one)", "task: shard (n=two)"]);
    reap(subject, &runner).await?;
    leftovers(subject, &build).await
}

/// A `dummy` var source's values, `((source:name))` and `((source:name.field))`, reach
/// a task's params wherever it runs.
pub async fn var_sources_fill_a_task_s_params(subject: &RuntimeSubject) -> CaseResult {
    let jobs = format!(
        "- name: main\n  plan:\n  - {}\n",
        task_with_params(
            "show",
            "{REGION: ((env:region)), HOST: ((env:db.host))}",
            "echo \"$REGION $HOST\" > out/line"
        )
    );
    let yaml = format!(
        "var_sources:\n- name: env\n  type: dummy\n  config:\n    vars:\n      region: eu-west-1\n      db: {{host: db.internal}}\n{}",
        pipeline_yaml(subject, &jobs)
    );
    let (o, runner, build) = run_yaml(subject, &yaml, "main").await?;
    ensure_eq!(o.status, BuildStatus::Succeeded, "failure: {:?}", o.failure);
    ensure_eq!(
        String::from_utf8_lossy(
            &read_artifact_file(&subject.runtime, artifact(&o, "out")?, "line").await?
        )
        .trim(),
        "eu-west-1 db.internal"
    );
    reap(subject, &runner).await?;
    leftovers(subject, &build).await
}

/// on_failure sees the outputs of the step that failed; ensure always runs.
pub async fn hooks_see_outputs_of_failed_step(subject: &RuntimeSubject) -> CaseResult {
    let jobs = format!(
        "- name: main\n  plan:\n  - {}\n    on_failure:\n      {}\n    ensure:\n      {}\n",
        task(
            "tests",
            &[],
            &["report"],
            "echo 2-failures > report/junit.txt && exit 1"
        ),
        task(
            "upload",
            &["report"],
            &["uploaded"],
            "cp report/junit.txt uploaded/junit.txt"
        )
        .replace('\n', "\n  "),
        task("cleanup", &[], &["cleaned"], "echo yes > cleaned/flag").replace('\n', "\n  ")
    );
    let (o, _r, _) = run_jobs(subject, &jobs, "main", quick()).await?;
    ensure_eq!(o.status, BuildStatus::Failed);
    let rt = &subject.runtime;
    let up = read_artifact_file(rt, artifact(&o, "uploaded")?, "junit.txt").await?;
    ensure_eq!(String::from_utf8_lossy(&up).trim(), "2-failures");
    let flag = read_artifact_file(rt, artifact(&o, "cleaned")?, "flag").await?;
    ensure_eq!(String::from_utf8_lossy(&flag).trim(), "yes");
    Ok(())
}

/// `attempts` retries a failed step in a new pod; the retry sees the same inputs.
pub async fn attempts_retry_with_same_inputs(subject: &RuntimeSubject) -> CaseResult {
    // Every attempt runs in a fresh pod and copies its input to its output, then
    // fails: both attempts run, the last one's output is bound (hooks could read it),
    // and it carries the same input. Nothing here relies on caches persisting, which a
    // cluster without a cache claim does not offer.
    let jobs = "- name: main\n  plan:\n  - get: repo\n  - task: flaky\n    attempts: 2\n    config:\n      platform: linux\n      inputs: [{name: repo}]\n      outputs: [{name: out}]\n      run: {path: sh, args: [-c, \"cp repo/version out/version && echo attempt-done && exit 1\"]}\n";
    let (o, _r, _) = run_jobs(subject, jobs, "main", quick()).await?;
    ensure_eq!(o.status, BuildStatus::Failed, "failure: {:?}", o.failure);
    let flaky: Vec<&StepSummary> = o.steps.iter().filter(|s| s.name == "task: flaky").collect();
    ensure_eq!(flaky.len(), 2, "both attempts ran");
    for (i, s) in flaky.iter().enumerate() {
        ensure!(
            matches!(s.result, Err(StepFailure::Exited(1))),
            "attempt {i}: {:?}",
            s.result
        );
        ensure_eq!(s.attempts, (i + 1) as u32);
    }
    ensure!(
        flaky[0].artifacts[0].volume != flaky[1].artifacts[0].volume,
        "each attempt writes a fresh output"
    );
    let rt = &subject.runtime;
    let v = read_artifact_file(rt, artifact(&o, "out")?, "version").await?;
    ensure_eq!(String::from_utf8_lossy(&v).trim(), "v1");
    Ok(())
}

/// `timeout` ends a step that runs too long; its pod is gone afterwards.
pub async fn timeout_fails_step(subject: &RuntimeSubject) -> CaseResult {
    let jobs = "- name: main\n  plan:\n  - task: slow\n    timeout: 2s\n    config:\n      platform: linux\n      run: {path: sh, args: [-c, \"sleep 60\"]}\n";
    let (o, runner, build) = run_jobs(subject, jobs, "main", quick()).await?;
    ensure_eq!(o.status, BuildStatus::Failed);
    match &o.failure {
        Some((_, StepFailure::TimedOut(d))) => ensure_eq!(*d, Duration::from_secs(2)),
        other => fail!("expected a timeout, got {other:?}"),
    }
    reap(subject, &runner).await?;
    leftovers(subject, &build).await
}

/// `in_parallel` runs steps at once; a later step sees all their outputs.
pub async fn in_parallel_outputs_meet(subject: &RuntimeSubject) -> CaseResult {
    let jobs = format!(
        "- name: main\n  plan:\n  - in_parallel:\n    - {}\n    - {}\n  - {}\n",
        task("left", &[], &["a"], "echo left > a/f").replace('\n', "\n  "),
        task("right", &[], &["b"], "echo right > b/f").replace('\n', "\n  "),
        task("join", &["a", "b"], &["ab"], "cp a/f ab/a && cp b/f ab/b")
    );
    let (o, _r, _) = run_jobs(subject, &jobs, "main", quick()).await?;
    ensure_eq!(o.status, BuildStatus::Succeeded, "failure: {:?}", o.failure);
    let rt = &subject.runtime;
    ensure_eq!(
        String::from_utf8_lossy(&read_artifact_file(rt, artifact(&o, "ab")?, "a").await?).trim(),
        "left"
    );
    ensure_eq!(
        String::from_utf8_lossy(&read_artifact_file(rt, artifact(&o, "ab")?, "b").await?).trim(),
        "right"
    );
    Ok(())
}

/// A task config loaded from a file inside an artifact.
pub async fn task_file_from_artifact(subject: &RuntimeSubject) -> CaseResult {
    let writer = task(
        "write-config",
        &[],
        &["ci"],
        "echo 'platform: linux' > ci/task.yml && echo 'outputs: [{name: result}]' >> ci/task.yml && echo 'run: {path: sh, args: [-c, \"echo from-file > result/r\"]}' >> ci/task.yml",
    );
    let jobs = format!(
        "- name: main\n  plan:\n  - {writer}\n  - task: from-file\n    file: ci/task.yml\n"
    );
    let (o, _r, _) = run_jobs(subject, &jobs, "main", quick()).await?;
    ensure_eq!(o.status, BuildStatus::Succeeded, "failure: {:?}", o.failure);
    let r = read_artifact_file(&subject.runtime, artifact(&o, "result")?, "r").await?;
    ensure_eq!(String::from_utf8_lossy(&r).trim(), "from-file");
    Ok(())
}

/// After a build and a reaper pass nothing is left: no pod, no record, no volume.
pub async fn nothing_left_after_build(subject: &RuntimeSubject) -> CaseResult {
    let rt = &subject.runtime;
    let before: HashSet<_> = match &rt.volumes {
        Some(v) => v
            .list()
            .await
            .map_err(|e| CaseError::here(e.to_string()))?
            .into_iter()
            .map(|i| i.handle)
            .collect(),
        None => HashSet::new(),
    };
    let jobs = format!(
        "- name: main\n  plan:\n  - get: repo\n  - {}\n",
        task("build", &["repo"], &["built"], "cp repo/version built/v")
    );
    let (o, runner, build) = run_jobs(subject, &jobs, "main", quick()).await?;
    ensure_eq!(o.status, BuildStatus::Succeeded, "failure: {:?}", o.failure);
    reap(subject, &runner).await?;
    leftovers(subject, &build).await?;
    if let Some(v) = &rt.volumes {
        for a in o.artifacts.values() {
            ensure!(!before.contains(&a.volume));
            ensure!(
                matches!(v.stat(&a.volume).await, Err(e) if e.kind() == jetbridge_core::ErrorKind::NotFound),
                "volume of {} still exists",
                a.name
            );
        }
    }
    Ok(())
}

/// Tampers with the artifact `artifact` as soon as the step that made it has ended.
struct TamperAfter {
    step: String,
    artifact: String,
    tamper: Tamper,
    done: Mutex<Option<Result<(), String>>>,
}

impl BuildEvents for TamperAfter {
    fn step_started(&self, _: &str, _: &str) {}
    fn step_output(&self, _: &str) -> Arc<dyn OutputSink> {
        Arc::new(jetbridge_core::ports::DiscardOutput)
    }
    fn step_finished(&self, s: &StepSummary) {
        if s.name != self.step {
            return;
        }
        let r = match s.artifacts.iter().find(|a| a.name == self.artifact) {
            Some(a) => (self.tamper)(&a.volume),
            None => Err(format!("{} made no artifact {:?}", s.name, self.artifact)),
        };
        if let Ok(mut d) = self.done.lock() {
            *d = Some(r);
        }
    }
    fn notice(&self, _: &str) {}
}

/// An input changed after it was sealed fails the consuming step as `Corrupt`, naming
/// the artifact and the build, before its command runs: mounted copies, in-cluster
/// copies and streamed inputs alike.
pub async fn changed_input_fails_corrupt(subject: &RuntimeSubject) -> CaseResult {
    let Some(tamper) = subject.tamper.clone() else {
        crate::skip!("the subject cannot change a sealed volume behind its store's back");
    };
    let events = Arc::new(TamperAfter {
        step: "get: repo".into(),
        artifact: "repo".into(),
        tamper,
        done: Mutex::new(None),
    });
    // The command would leave a marker in its output: an output is sealed (and bound)
    // only after the command ran.
    let jobs = format!(
        "- name: main\n  plan:\n  - get: repo\n  - {}\n",
        task(
            "consume",
            &["repo"],
            &["ran"],
            "echo yes > ran/marker && cat repo/version"
        )
    );
    let (o, runner, build) = run_jobs_with(subject, &jobs, "main", quick(), events.clone()).await?;
    match events.done.lock().ok().and_then(|d| d.clone()) {
        Some(Ok(())) => {}
        Some(Err(e)) => fail!("could not tamper with the input: {e}"),
        None => fail!("get: repo never finished"),
    }
    ensure_eq!(o.status, BuildStatus::Errored, "failure: {:?}", o.failure);
    match &o.failure {
        Some((name, StepFailure::Infrastructure(e))) => {
            ensure_eq!(name.as_str(), "task: consume");
            ensure_eq!(e.kind(), jetbridge_core::ErrorKind::Corrupt, "{e}");
            let msg = e.to_string();
            ensure!(
                msg.contains("\"repo\"") && msg.contains(&build),
                "the message names neither the artifact nor the build: {msg}"
            );
        }
        other => fail!("expected task: consume to fail Corrupt, got {other:?}"),
    }
    ensure!(
        !o.artifacts.contains_key("ran"),
        "the command ran on a changed input"
    );
    reap(subject, &runner).await?;
    leftovers(subject, &build).await
}

/// A task's inputs are real directories, as a cluster's volume mounts are: a command
/// that walks a tree without following a symbolic link given on its command line (`cp
/// -r`, `find`, `tar`) sees every file of the input, nested ones included. A backend
/// that put an input in place as a link to its volume would have the copy come out a
/// link. `cp -r` stands for the walkers because every backend's shell has it.
pub async fn inputs_are_real_directories(subject: &RuntimeSubject) -> CaseResult {
    let jobs = format!(
        "- name: main\n  plan:\n  - {}\n  - {}\n",
        task(
            "write-tree",
            &[],
            &["tree"],
            "mkdir -p tree/a/b && echo deep > tree/a/b/c.txt && echo top > tree/top.txt"
        ),
        task("walk", &["tree"], &["seen"], "cp -r tree seen/copy")
    );
    let (o, _r, _) = run_jobs(subject, &jobs, "main", quick()).await?;
    ensure_eq!(o.status, BuildStatus::Succeeded, "failure: {:?}", o.failure);
    let entries = artifact_entries(&subject.runtime, artifact(&o, "seen")?).await?;
    let under_copy: Vec<(String, char)> = entries
        .iter()
        .cloned()
        .filter_map(|(p, kind)| {
            let rel = p.strip_prefix("copy")?;
            let rel = rel.trim_start_matches('/').trim_end_matches('/');
            (!rel.is_empty()).then(|| (rel.to_owned(), kind))
        })
        .collect();
    ensure_eq!(
        under_copy,
        vec![
            ("a".to_owned(), 'd'),
            ("a/b".to_owned(), 'd'),
            ("a/b/c.txt".to_owned(), 'f'),
            ("top.txt".to_owned(), 'f'),
        ],
        "the walk of the input saw every file, as files, under real directories; the \
         output holds {entries:?}"
    );
    let seen = artifact(&o, "seen")?;
    let deep = read_artifact_file(&subject.runtime, seen, "copy/a/b/c.txt").await?;
    ensure_eq!(String::from_utf8_lossy(&deep).trim(), "deep");
    let top = read_artifact_file(&subject.runtime, seen, "copy/top.txt").await?;
    ensure_eq!(String::from_utf8_lossy(&top).trim(), "top");
    Ok(())
}

/// Every entry of an artifact: its path (without a leading `./`) and kind (`f` regular
/// file, `d` directory, `l` symbolic link, `?` anything else), sorted by path.
async fn artifact_entries(rt: &Runtime, a: &ArtifactRef) -> Result<Vec<(String, char)>, CaseError> {
    let store = rt
        .volumes
        .as_ref()
        .ok_or_else(|| CaseError::here("no volume store"))?;
    let tar = store
        .read_tar(&a.volume)
        .await
        .map_err(|e| CaseError::here(format!("read_tar {}: {e}", a.name)))?;
    let data = collect_stream(tar)
        .await
        .map_err(|e| CaseError::here(format!("reading {}: {e}", a.name)))?;
    let mut ar = tar::Archive::new(std::io::Cursor::new(data));
    let entries = ar.entries().map_err(|e| CaseError::here(e.to_string()))?;
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|e| CaseError::here(e.to_string()))?;
        let p = e
            .path()
            .map_err(|e| CaseError::here(e.to_string()))?
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        let kind = match e.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => 'f',
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            _ => '?',
        };
        out.push((p, kind));
    }
    out.sort();
    Ok(out)
}

/// Every case of the runtime suite, by name.
pub const CASES: &[&str] = &[
    "get_task_put",
    "inputs_are_private_copies",
    "failing_step_fails_build",
    "hooks_see_outputs_of_failed_step",
    "attempts_retry_with_same_inputs",
    "timeout_fails_step",
    "in_parallel_outputs_meet",
    "task_file_from_artifact",
    "nothing_left_after_build",
    "changed_input_fails_corrupt",
    "try_masks_a_failure",
    "load_var_fills_later_steps",
    "across_runs_each_combination",
    "task_image_from_an_artifact",
    "builtin_mock_round_trip",
    "set_pipeline_reads_its_files_from_artifacts",
    "get_versions_reach_in",
    "load_var_formats",
    "across_fail_fast_starts_no_more",
    "var_sources_fill_a_task_s_params",
    "inputs_are_real_directories",
];

/// Run the case called `name` against `subject`; `None` if there is no such case.
pub async fn run_case(subject: &RuntimeSubject, name: &str) -> Option<CaseResult> {
    Some(match name {
        "get_task_put" => Box::pin(get_task_put(subject)).await,
        "inputs_are_private_copies" => Box::pin(inputs_are_private_copies(subject)).await,
        "failing_step_fails_build" => Box::pin(failing_step_fails_build(subject)).await,
        "hooks_see_outputs_of_failed_step" => {
            Box::pin(hooks_see_outputs_of_failed_step(subject)).await
        }
        "attempts_retry_with_same_inputs" => {
            Box::pin(attempts_retry_with_same_inputs(subject)).await
        }
        "timeout_fails_step" => Box::pin(timeout_fails_step(subject)).await,
        "in_parallel_outputs_meet" => Box::pin(in_parallel_outputs_meet(subject)).await,
        "task_file_from_artifact" => Box::pin(task_file_from_artifact(subject)).await,
        "nothing_left_after_build" => Box::pin(nothing_left_after_build(subject)).await,
        "changed_input_fails_corrupt" => Box::pin(changed_input_fails_corrupt(subject)).await,
        "try_masks_a_failure" => Box::pin(try_masks_a_failure(subject)).await,
        "load_var_fills_later_steps" => Box::pin(load_var_fills_later_steps(subject)).await,
        "across_runs_each_combination" => Box::pin(across_runs_each_combination(subject)).await,
        "task_image_from_an_artifact" => Box::pin(task_image_from_an_artifact(subject)).await,
        "builtin_mock_round_trip" => Box::pin(builtin_mock_round_trip(subject)).await,
        "set_pipeline_reads_its_files_from_artifacts" => {
            Box::pin(set_pipeline_reads_its_files_from_artifacts(subject)).await
        }
        "get_versions_reach_in" => Box::pin(get_versions_reach_in(subject)).await,
        "load_var_formats" => Box::pin(load_var_formats(subject)).await,
        "across_fail_fast_starts_no_more" => {
            Box::pin(across_fail_fast_starts_no_more(subject)).await
        }
        "var_sources_fill_a_task_s_params" => {
            Box::pin(var_sources_fill_a_task_s_params(subject)).await
        }
        "inputs_are_real_directories" => Box::pin(inputs_are_real_directories(subject)).await,
        _ => return None,
    })
}

/// Run every runtime case against one subject (for `jetbridge conformance`).
pub async fn run_all(subject: &RuntimeSubject) -> Vec<CaseOutcome> {
    let mut out = Vec::with_capacity(CASES.len());
    for name in CASES {
        out.push(crate::support::outcome(name, run_case(subject, name)).await);
    }
    out
}

/// Register every case of the runtime suite as a test in a module
/// `runtime_conformance`. `$factory`: an `async fn() -> Option<RuntimeSubject>`.
#[macro_export]
macro_rules! runtime_suite {
    (@ignored $reason:literal, $factory:expr $(,)?) => {
        $crate::runtime_suite!(@attr [ignore = $reason] $factory);
    };
    (@attr [$attr:meta] $factory:expr) => {
        $crate::__suite_module!(
            [$attr]
            runtime_conformance,
            runtime,
            "runtime",
            $factory,
            [
                get_task_put,
                inputs_are_private_copies,
                failing_step_fails_build,
                hooks_see_outputs_of_failed_step,
                attempts_retry_with_same_inputs,
                timeout_fails_step,
                in_parallel_outputs_meet,
                task_file_from_artifact,
                nothing_left_after_build,
                changed_input_fails_corrupt,
                try_masks_a_failure,
                load_var_fills_later_steps,
                across_runs_each_combination,
                task_image_from_an_artifact,
                builtin_mock_round_trip,
                set_pipeline_reads_its_files_from_artifacts,
                get_versions_reach_in,
                load_var_formats,
                across_fail_fast_starts_no_more,
                var_sources_fill_a_task_s_params,
                inputs_are_real_directories,
            ]
        );
    };
    ($factory:expr $(,)?) => {
        $crate::runtime_suite!(@attr [allow(clippy::large_futures)] $factory);
    };
}
