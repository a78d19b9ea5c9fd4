//! The build-plan model: what a parsed, validated pipeline looks like.
//!
//! Produced by [`super::parse_pipeline`]; consumed by the build runner. Every step
//! carries the [`Location`] it came from so runtime errors can point at the file.
//!
//! `source`, `params`, `get_params` and `vars` often hold credentials, so the `Debug`
//! output of the types holding them shows their keys only, never their values.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

/// A place in a pipeline or task file (1-based line and column).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// File name as given by the user.
    pub file: String,
    /// Line, from 1 (0: unknown).
    pub line: usize,
    /// Column, from 1 (0: unknown).
    pub column: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.column)
        }
    }
}

/// A whole pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// Name (from the file name unless given).
    pub name: String,
    /// Declared resources.
    pub resources: Vec<Resource>,
    /// Declared resource types (beyond the base types).
    pub resource_types: Vec<ResourceType>,
    /// Jobs.
    pub jobs: Vec<Job>,
}

impl Pipeline {
    /// The resource named `name`.
    pub fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.name == name)
    }
    /// The resource type named `name`.
    pub fn resource_type(&self, name: &str) -> Option<&ResourceType> {
        self.resource_types.iter().find(|r| r.name == name)
    }
    /// The job named `name`.
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name == name)
    }
}

/// A resource: a versioned thing `get` fetches and `put` pushes.
#[derive(Clone, PartialEq)]
pub struct Resource {
    /// Name.
    pub name: String,
    /// Type name (a base type or a declared resource type).
    pub type_: String,
    /// `source`, passed to the resource scripts.
    pub source: Value,
    /// `version`: a pinned version every `get` of it fetches, unless the `get` names its
    /// own; `None`: the latest.
    pub version: Option<Value>,
    /// Where it was declared.
    pub location: Location,
}

/// A resource type: an image implementing check/in/out.
#[derive(Clone, PartialEq)]
pub struct ResourceType {
    /// Name.
    pub name: String,
    /// Type of the type (`registry-image`, `docker-image`, or `local`).
    pub type_: String,
    /// `source` of the type (e.g. `repository`, `tag`; for `local`, `path`).
    pub source: Value,
    /// Where it was declared.
    pub location: Location,
}

/// A job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Name.
    pub name: String,
    /// Steps, in order.
    pub plan: Vec<Step>,
    /// Job-level hooks.
    pub hooks: Hooks,
    /// How many of its builds may run at once: `max_in_flight`, or 1 for `serial: true`
    /// (`None`: no limit). Honoured by a server's queue; a one-off `run` has one build.
    pub max_in_flight: Option<u32>,
    /// `serial_groups`: builds of jobs that share a group run one at a time.
    pub serial_groups: Vec<String>,
    /// Where it was declared.
    pub location: Location,
}

impl Job {
    /// Every step of the job, hooks and nested steps included, in plan order.
    pub fn steps(&self) -> Vec<&Step> {
        fn walk<'s>(step: &'s Step, out: &mut Vec<&'s Step>) {
            out.push(step);
            match &step.kind {
                StepKind::InParallel(p) => p.steps.iter().for_each(|s| walk(s, out)),
                StepKind::Do(steps) => steps.iter().for_each(|s| walk(s, out)),
                StepKind::Try(s) => walk(s, out),
                _ => {}
            }
            step.hooks.iter().for_each(|h| walk(h, out));
        }
        let mut out = Vec::new();
        self.plan.iter().for_each(|s| walk(s, &mut out));
        self.hooks.iter().for_each(|h| walk(h, &mut out));
        out
    }

    /// The job's first `set_pipeline` step, which runners that store no pipelines
    /// refuse before the job starts.
    pub fn set_pipeline_step(&self) -> Option<&Step> {
        self.steps()
            .into_iter()
            .find(|s| matches!(s.kind, StepKind::SetPipeline(_)))
    }

    /// The job's first task that asks for `hermetic: true`, which a runner whose
    /// backend cannot cut a pod off the network refuses before the job starts
    /// (Concourse too honours `hermetic` only on some runtimes; here it is never
    /// silently ignored).
    pub fn hermetic_step(&self) -> Option<&Step> {
        self.steps()
            .into_iter()
            .find(|s| matches!(&s.kind, StepKind::Task(t) if t.hermetic))
    }
}

/// A step with its modifiers.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// What it does.
    pub kind: StepKind,
    /// Hooks that run after it.
    pub hooks: Hooks,
    /// Total attempts (1: no retry).
    pub attempts: u32,
    /// Deadline of each attempt.
    pub timeout: Option<Duration>,
    /// `across`: run the step once for each combination of these values.
    pub across: Option<Across>,
    /// Where it was declared.
    pub location: Location,
}

/// The `across` modifier: the step (with its hooks, attempts and timeout) runs once per
/// combination of the vars' values, each with the values as local vars (`((.:var))`)
/// and its outputs its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Across {
    /// The vars, outermost first: combinations are expanded as Concourse does, the
    /// last var varying fastest.
    pub vars: Vec<AcrossVar>,
    /// `fail_fast`: once an iteration fails, start no more.
    pub fail_fast: bool,
}

/// One var of [`Across`].
#[derive(Debug, Clone, PartialEq)]
pub struct AcrossVar {
    /// The local var's name.
    pub var: String,
    /// Its values.
    pub values: AcrossValues,
    /// How many of its values run at once (`None`: all); Concourse's default is 1.
    pub max_in_flight: Option<u32>,
}

/// Where an [`AcrossVar`]'s values come from.
#[derive(Debug, Clone, PartialEq)]
pub enum AcrossValues {
    /// Given in the pipeline (or by a `((var))`, filled in when it is parsed).
    List(Vec<Value>),
    /// A local var (`((.:name))`, set by a `load_var`), read when the step starts.
    Local(String),
}

/// Steps run after a step, depending on how it ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hooks {
    /// After success.
    pub on_success: Option<Box<Step>>,
    /// After failure (including the step's own non-zero exit).
    pub on_failure: Option<Box<Step>>,
    /// After an infrastructure error (pod evicted, exec lost, ...).
    pub on_error: Option<Box<Step>>,
    /// After an abort.
    pub on_abort: Option<Box<Step>>,
    /// Always.
    pub ensure: Option<Box<Step>>,
}

impl Hooks {
    /// The hooks that are set, in the order they are declared above.
    pub fn iter(&self) -> impl Iterator<Item = &Step> {
        [
            &self.on_success,
            &self.on_failure,
            &self.on_error,
            &self.on_abort,
            &self.ensure,
        ]
        .into_iter()
        .flatten()
        .map(|b| &**b)
    }
}

/// The kinds of step.
// Plans are small and built once per build; boxing would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// Fetch a resource version into an artifact.
    Get(GetStep),
    /// Push with a resource, then fetch what was pushed.
    Put(PutStep),
    /// Run a command.
    Task(TaskStep),
    /// Run steps at once.
    InParallel(InParallel),
    /// Run steps in order, as one step.
    Do(Vec<Step>),
    /// Run a step; its failure or error does not fail the build (an abort still aborts).
    Try(Box<Step>),
    /// Read a file of an artifact into a local var (`((.:name))`).
    LoadVar(LoadVarStep),
    /// Set (store) a pipeline from a file of an artifact: checked when read, refused
    /// where pipelines are not stored.
    SetPipeline(SetPipelineStep),
}

/// `set_pipeline`.
#[derive(Clone, PartialEq)]
pub struct SetPipelineStep {
    /// The pipeline's name (`self`: this one).
    pub name: String,
    /// The artifact holding the pipeline file.
    pub artifact: String,
    /// The file's path inside it.
    pub path: String,
    /// `vars` for the pipeline's `((vars))` (values may be secrets).
    pub vars: Value,
    /// `var_files`: files of artifacts with more vars.
    pub var_files: Vec<String>,
    /// `instance_vars`: what makes this an instance of a pipeline group.
    pub instance_vars: Value,
    /// `team` (Concourse's; recorded only).
    pub team: Option<String>,
}

impl std::fmt::Debug for SetPipelineStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetPipelineStep")
            .field("name", &self.name)
            .field("artifact", &self.artifact)
            .field("path", &self.path)
            .field("vars", &RedactedJson(&self.vars))
            .field("var_files", &self.var_files)
            .field("instance_vars", &self.instance_vars)
            .field("team", &self.team)
            .finish()
    }
}

/// `load_var`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadVarStep {
    /// The local var's name (the `load_var:` value).
    pub name: String,
    /// The artifact holding the file.
    pub artifact: String,
    /// The file's path inside it.
    pub path: String,
    /// How to read it; `None`: by the file's extension (`.json`, `.yml`/`.yaml`, else
    /// `trim`), as Concourse does.
    pub format: Option<VarFormat>,
    /// Whether the value may be shown (the step's line names it; off, only its name).
    pub reveal: bool,
}

/// How `load_var` reads a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarFormat {
    /// The bytes as text, unchanged.
    Raw,
    /// The text without leading and trailing whitespace.
    Trim,
    /// A JSON value.
    Json,
    /// A YAML value.
    Yaml,
}

/// `get`.
#[derive(Clone, PartialEq)]
pub struct GetStep {
    /// Artifact name (the `get:` value).
    pub name: String,
    /// Resource name (`resource:`, default `name`).
    pub resource: String,
    /// `version`: `latest` (None), `every` (treated as latest in a one-off run), or pinned.
    pub version: Option<Value>,
    /// `params`.
    pub params: Value,
    /// `passed` (recorded; meaningful only with a scheduler).
    pub passed: Vec<String>,
    /// `trigger`.
    pub trigger: bool,
}

/// `put`.
#[derive(Clone, PartialEq)]
pub struct PutStep {
    /// Step name (the `put:` value); also the name of the implicit get's artifact.
    pub name: String,
    /// Resource name (`resource:`, default `name`).
    pub resource: String,
    /// `params`.
    pub params: Value,
    /// `get_params` for the implicit get.
    pub get_params: Value,
    /// Which artifacts to mount: `None` means all produced so far (`inputs: all`),
    /// `detect` is resolved to all as well.
    pub inputs: Option<Vec<String>>,
    /// `no_get`: skip the implicit get.
    pub no_get: bool,
}

/// `task`.
#[derive(Clone, PartialEq)]
pub struct TaskStep {
    /// Step name (the `task:` value).
    pub name: String,
    /// The task config, inline or to be loaded from an artifact.
    pub config: TaskSource,
    /// `params` overriding the config's.
    pub params: BTreeMap<String, String>,
    /// `input_mapping`: task input name -> artifact name.
    pub input_mapping: BTreeMap<String, String>,
    /// `output_mapping`: task output name -> artifact name.
    pub output_mapping: BTreeMap<String, String>,
    /// `privileged`.
    pub privileged: bool,
    /// `vars` for `((var))` in a task file.
    pub vars: BTreeMap<String, Value>,
    /// `image`: an artifact of the build (a `registry-image` get) to run the task in,
    /// overriding the config's `image_resource`.
    pub image: Option<String>,
    /// `hermetic`: run the task without network. Only a backend that can cut a pod off
    /// the network runs it (Kubernetes, with a NetworkPolicy); the others refuse the
    /// job before it starts ([`Job::hermetic_step`]).
    pub hermetic: bool,
}

/// Where a task's config comes from.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum TaskSource {
    /// Inline `config:`.
    Inline(TaskConfig),
    /// `file: artifact/path/to/task.yml`: loaded when the step runs.
    File {
        /// Artifact name (first path segment).
        artifact: String,
        /// Path inside the artifact.
        path: String,
    },
}

/// `in_parallel`.
#[derive(Debug, Clone, PartialEq)]
pub struct InParallel {
    /// Steps.
    pub steps: Vec<Step>,
    /// Most at once (`None`: all).
    pub limit: Option<usize>,
    /// Stop starting new steps after the first failure.
    pub fail_fast: bool,
}

/// A task config (Concourse task file).
#[derive(Clone, PartialEq)]
pub struct TaskConfig {
    /// `platform` (`linux`).
    pub platform: String,
    /// `image_resource`, if any.
    pub image_resource: Option<ImageResource>,
    /// `inputs`.
    pub inputs: Vec<TaskInput>,
    /// `outputs`.
    pub outputs: Vec<TaskOutput>,
    /// `caches` (paths).
    pub caches: Vec<String>,
    /// `params`: environment.
    pub params: BTreeMap<String, String>,
    /// `run`.
    pub run: RunConfig,
    /// `container_limits`.
    pub container_limits: ContainerLimits,
    /// Where it was declared.
    pub location: Location,
}

/// `image_resource`.
#[derive(Clone, PartialEq)]
pub struct ImageResource {
    /// Type (`registry-image`, `docker-image`).
    pub type_: String,
    /// `source` (`repository`, `tag`).
    pub source: Value,
}

impl ImageResource {
    /// `repository[:tag]` from the source, if it names one.
    pub fn image_ref(&self) -> Option<String> {
        let repo = self.source.get("repository")?.as_str()?;
        match self.source.get("tag").and_then(Value::as_str) {
            Some(tag) => Some(format!("{repo}:{tag}")),
            None => Some(repo.to_owned()),
        }
    }
}

/// A task input.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskInput {
    /// Name.
    pub name: String,
    /// Path in the working directory (default: name).
    pub path: String,
    /// Absent inputs are allowed.
    pub optional: bool,
}

/// A task output.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOutput {
    /// Name.
    pub name: String,
    /// Path in the working directory (default: name).
    pub path: String,
}

/// `run`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    /// Program.
    pub path: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Working directory, relative to the task's working directory.
    pub dir: Option<String>,
    /// User.
    pub user: Option<String>,
}

/// `container_limits`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerLimits {
    /// CPU shares (Concourse) as millicores.
    pub cpu_millis: Option<u64>,
    /// Memory in bytes.
    pub memory_bytes: Option<u64>,
}

/// Shows the keys of a free-form value, never its values.
struct RedactedJson<'a>(&'a Value);

impl std::fmt::Debug for RedactedJson<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Value::Object(map) => f
                .debug_map()
                .entries(map.keys().map(|k| (k, Hidden)))
                .finish(),
            Value::Null => f.write_str("null"),
            _ => Hidden.fmt(f),
        }
    }
}

/// Shows the keys of a map, never its values.
struct RedactedMap<'a, V>(&'a BTreeMap<String, V>);

impl<V> std::fmt::Debug for RedactedMap<'_, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, Hidden)))
            .finish()
    }
}

/// Stands in for a value that may be secret.
struct Hidden;

impl std::fmt::Debug for Hidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resource")
            .field("name", &self.name)
            .field("type_", &self.type_)
            .field("source", &RedactedJson(&self.source))
            .field("version", &self.version)
            .field("location", &self.location)
            .finish()
    }
}

impl std::fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceType")
            .field("name", &self.name)
            .field("type_", &self.type_)
            .field("source", &RedactedJson(&self.source))
            .field("location", &self.location)
            .finish()
    }
}

impl std::fmt::Debug for GetStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetStep")
            .field("name", &self.name)
            .field("resource", &self.resource)
            .field("version", &self.version)
            .field("params", &RedactedJson(&self.params))
            .field("passed", &self.passed)
            .field("trigger", &self.trigger)
            .finish()
    }
}

impl std::fmt::Debug for PutStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutStep")
            .field("name", &self.name)
            .field("resource", &self.resource)
            .field("params", &RedactedJson(&self.params))
            .field("get_params", &RedactedJson(&self.get_params))
            .field("inputs", &self.inputs)
            .field("no_get", &self.no_get)
            .finish()
    }
}

impl std::fmt::Debug for TaskStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskStep")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("params", &RedactedMap(&self.params))
            .field("input_mapping", &self.input_mapping)
            .field("output_mapping", &self.output_mapping)
            .field("privileged", &self.privileged)
            .field("vars", &RedactedMap(&self.vars))
            .field("image", &self.image)
            .field("hermetic", &self.hermetic)
            .finish()
    }
}

impl std::fmt::Debug for TaskConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskConfig")
            .field("platform", &self.platform)
            .field("image_resource", &self.image_resource)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("caches", &self.caches)
            .field("params", &RedactedMap(&self.params))
            .field("run", &self.run)
            .field("container_limits", &self.container_limits)
            .field("location", &self.location)
            .finish()
    }
}

impl std::fmt::Debug for ImageResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The image reference is not secret and is what a reader needs; registry
        // credentials in the source are.
        f.debug_struct("ImageResource")
            .field("type_", &self.type_)
            .field("image", &self.image_ref())
            .field("source", &RedactedJson(&self.source))
            .finish()
    }
}
