//! From a located YAML tree to the model, checking everything on the way.
//!
//! One pass over each job: steps are converted in order while a [`Flow`] records which
//! artifacts earlier steps produce, so a missing input is reported at the exact node
//! that names it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value as Json;

use super::duration::parse_duration;
use super::error::PlanError;
use super::model::*;
use super::node::{Node, Pos, Value};

/// Resource types every pipeline can use without declaring them.
pub const BASE_RESOURCE_TYPES: &[&str] = &[
    "time",
    "git",
    "registry-image",
    "s3",
    "docker-image",
    "pool",
    "semver",
    "mock",
];

/// What a declared resource type may be built from.
const RESOURCE_TYPE_KINDS: &[&str] = &["registry-image", "docker-image", "local"];

const NAME_RULE: &str =
    "names use lowercase letters, digits, `-`, `_` and `.`, and start with a letter";

/// Concourse keys accepted and ignored, by place (they only matter to a scheduler or UI).
const IGNORED_TOP: &[&str] = &["groups", "display"];
const IGNORED_RESOURCE: &[&str] = &[
    "public",
    "icon",
    "check_every",
    "check_timeout",
    "tags",
    "webhook_token",
    "expose_build_created_by",
    "old_name",
];
const IGNORED_RESOURCE_TYPE: &[&str] = &["check_every", "tags", "privileged", "params"];
const IGNORED_JOB: &[&str] = &[
    "public",
    "build_log_retention",
    "build_logs_to_retain",
    "interruptible",
    "disable_manual_trigger",
    "old_name",
];
const IGNORED_STEP: &[&str] = &["tags"];
const IGNORED_IMAGE_RESOURCE: &[&str] = &["name", "params"];

const STEP_KINDS: &[&str] = &[
    "get",
    "put",
    "task",
    "in_parallel",
    "do",
    "try",
    "load_var",
    "set_pipeline",
];
const UNSUPPORTED_STEP_KINDS: &[&str] = &["aggregate"];
const HOOKS: &[&str] = &["on_success", "on_failure", "on_error", "on_abort", "ensure"];
const MODIFIERS: &[&str] = &["attempts", "timeout", "across", "fail_fast"];

/// Is `name` a valid Concourse identifier?
pub(crate) fn valid_name(name: &str) -> bool {
    let letter = |c: char| c.is_alphabetic() && !c.is_uppercase();
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if letter(c) => {}
        _ => return false,
    }
    chars.all(|c| letter(c) || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// The closest of `options` to `word`, if close enough to be a likely typo.
fn suggest<'a>(word: &str, options: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1; b.len() + 1];
            for (j, cb) in b.iter().enumerate() {
                let cost = usize::from(ca != *cb);
                cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
            }
            prev = cur;
        }
        prev[b.len()]
    }
    options
        .into_iter()
        .map(|o| (distance(word, o), o))
        .filter(|(d, o)| *d <= (o.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, o)| o)
}

fn backticked<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let list: Vec<String> = items.into_iter().map(|i| format!("`{i}`")).collect();
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}

/// A mapping node whose keys have been checked.
struct Obj<'n> {
    pos: Pos,
    entries: Vec<(String, &'n Node, &'n Node)>,
}

impl<'n> Obj<'n> {
    /// The value of `key`; an explicit null counts as absent.
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, v)| *v)
            .filter(|v| v.value != Value::Null)
    }

    fn key_pos(&self, key: &str) -> Pos {
        self.entries
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, k, _)| k.pos)
            .unwrap_or(self.pos)
    }
}

/// Whether `name` is an environment variable name every supported Kubernetes version
/// accepts: apimachinery's `IsEnvVarName`, which also refuses `.`, `..` and a leading
/// `..` (its `hasChDirPrefix`).
fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '-' | '.' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && name != "."
        && !name.starts_with("..")
}

/// Which artifacts exist at a point in a job's plan.
#[derive(Debug, Clone, Default)]
struct Flow {
    available: BTreeSet<String>,
    /// An earlier step may have produced artifacts nobody can know before it runs (a
    /// task loaded from a file): missing inputs are not reported from then on.
    open: bool,
}

impl Flow {
    fn has(&self, name: &str) -> bool {
        self.open || self.available.contains(name)
    }

    fn list(&self) -> String {
        backticked(self.available.iter().map(String::as_str))
    }
}

/// Per-job state.
#[derive(Default)]
struct JobState {
    /// `get` names seen in this job: Concourse refuses a repeated one.
    get_names: HashMap<String, Pos>,
}

/// Where a task config's inputs and outputs were written.
pub(crate) struct TaskMeta {
    inputs: Vec<Pos>,
    outputs: Vec<Pos>,
}

/// The converter for one file.
pub(crate) struct Cx<'f> {
    file: &'f str,
    resource_types: Vec<ResourceType>,
    resources: Vec<Resource>,
    /// `passed:` entries, checked once every job is known.
    passed: Vec<(String, Pos)>,
    /// Job names seen so far, with where.
    job_names: HashMap<String, Pos>,
    /// Artifacts bound before every job's first step (uploaded inputs).
    bound: BTreeSet<String>,
}

impl<'f> Cx<'f> {
    pub(crate) fn new(file: &'f str) -> Self {
        Cx {
            file,
            resource_types: Vec::new(),
            resources: Vec::new(),
            passed: Vec::new(),
            job_names: HashMap::new(),
            bound: BTreeSet::new(),
        }
    }

    /// Treat these artifacts as available before each job's first step.
    pub(crate) fn with_bound(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.bound = names.into_iter().collect();
        self
    }

    fn loc(&self, pos: Pos) -> Location {
        pos.at(self.file)
    }

    fn err(&self, pos: Pos, message: impl Into<String>) -> PlanError {
        PlanError::new(self.loc(pos), message)
    }

    // ---- generic accessors -------------------------------------------------------

    /// Check that `node` is a mapping with string keys out of `known` (or `ignored`).
    fn obj<'n>(
        &self,
        node: &'n Node,
        what: &str,
        known: &[&str],
        ignored: &[&str],
    ) -> Result<Obj<'n>, PlanError> {
        let Value::Map(entries) = &node.value else {
            return Err(self
                .err(
                    node.pos,
                    format!("{what} must be a mapping, found {}", node.value.kind()),
                )
                .with_hint(format!(
                    "write it as `key: value` lines; allowed keys: {}",
                    backticked(known.iter().copied())
                )));
        };
        let mut out = Obj {
            pos: node.pos,
            entries: Vec::with_capacity(entries.len()),
        };
        for (k, v) in entries {
            let Value::Str(key) = &k.value else {
                return Err(self.err(
                    k.pos,
                    format!("keys of {what} must be strings, found {}", k.value.kind()),
                ));
            };
            if !known.contains(&key.as_str()) && !ignored.contains(&key.as_str()) {
                let hint = match suggest(key, known.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("allowed keys: {}", backticked(known.iter().copied())),
                };
                return Err(self
                    .err(k.pos, format!("unknown key `{key}` in {what}"))
                    .with_hint(hint));
            }
            out.entries.push((key.clone(), k, v));
        }
        Ok(out)
    }

    fn required<'n>(&self, obj: &Obj<'n>, key: &str, what: &str) -> Result<&'n Node, PlanError> {
        obj.get(key).ok_or_else(|| {
            self.err(obj.pos, format!("{what} has no `{key}`"))
                .with_hint(format!("add `{key}:` to {what}"))
        })
    }

    /// A scalar as text (numbers and booleans printed).
    fn text(&self, node: &Node, what: &str) -> Result<String, PlanError> {
        node.scalar_text().ok_or_else(|| {
            self.err(
                node.pos,
                format!("{what} must be a string, found {}", node.value.kind()),
            )
        })
    }

    /// A non-empty string.
    fn nonempty(&self, node: &Node, what: &str) -> Result<String, PlanError> {
        let s = self.text(node, what)?;
        if s.trim().is_empty() {
            return Err(self.err(node.pos, format!("{what} is empty")));
        }
        Ok(s)
    }

    /// A valid identifier.
    fn name(&self, node: &Node, what: &str) -> Result<String, PlanError> {
        let s = self.text(node, what)?;
        if !valid_name(&s) {
            return Err(self
                .err(node.pos, format!("{what} `{s}` is not a valid name"))
                .with_hint(NAME_RULE));
        }
        Ok(s)
    }

    fn boolean(&self, node: &Node, what: &str) -> Result<bool, PlanError> {
        match &node.value {
            Value::Bool(b) => Ok(*b),
            // Strings arrive from `--var` placeholders.
            Value::Str(s) if s == "true" => Ok(true),
            Value::Str(s) if s == "false" => Ok(false),
            other => Err(self
                .err(
                    node.pos,
                    format!("{what} must be true or false, found {}", other.kind()),
                )
                .with_hint("write `true` or `false`")),
        }
    }

    fn uint(&self, node: &Node, what: &str) -> Result<u64, PlanError> {
        let parsed = match &node.value {
            Value::UInt(u) => Some(*u),
            Value::Int(i) => u64::try_from(*i).ok(),
            // Strings arrive from `--var` placeholders.
            Value::Str(s) => s.trim().parse().ok(),
            _ => None,
        };
        parsed.ok_or_else(|| {
            self.err(
                node.pos,
                format!(
                    "{what} must be a whole number, found {}",
                    node.scalar_text()
                        .map_or_else(|| node.value.kind().to_owned(), |t| format!("`{t}`"))
                ),
            )
        })
    }

    fn seq<'n>(&self, node: &'n Node, what: &str) -> Result<&'n [Node], PlanError> {
        match &node.value {
            Value::Seq(items) => Ok(items),
            other => Err(self
                .err(
                    node.pos,
                    format!("{what} must be a list, found {}", other.kind()),
                )
                .with_hint("write it as `- item` lines or `[a, b]`")),
        }
    }

    fn mapping<'n>(&self, node: &'n Node, what: &str) -> Result<&'n [(Node, Node)], PlanError> {
        match &node.value {
            Value::Map(entries) => Ok(entries),
            other => Err(self.err(
                node.pos,
                format!("{what} must be a mapping, found {}", other.kind()),
            )),
        }
    }

    /// A free-form value (`source`, `params`, ...) that must be a mapping.
    fn json_map(&self, node: Option<&Node>, what: &str) -> Result<Json, PlanError> {
        match node {
            None => Ok(Json::Object(Default::default())),
            Some(n) => {
                self.mapping(n, what)?;
                Ok(n.to_json())
            }
        }
    }

    /// An image `source`: like [`Cx::json_map`], but a numeric `tag` (`tag: 1.10`)
    /// keeps its source text, since an image tag is text.
    fn image_source(&self, node: Option<&Node>) -> Result<Json, PlanError> {
        let mut json = self.json_map(node, "`source`")?;
        if let (
            Some(Node {
                value: Value::Map(entries),
                ..
            }),
            Json::Object(map),
        ) = (node, &mut json)
        {
            for (k, v) in entries {
                if k.value == Value::Str("tag".to_owned())
                    && matches!(v.value, Value::Int(_) | Value::UInt(_) | Value::Float(_))
                    && let Some(text) = v.scalar_text()
                {
                    map.insert("tag".to_owned(), Json::String(text));
                }
            }
        }
        Ok(json)
    }

    /// `params`-style values: every value as text (lists and mappings as JSON, null
    /// as empty), the way Concourse puts them into the environment.
    fn string_map(
        &self,
        node: Option<&Node>,
        what: &str,
    ) -> Result<BTreeMap<String, String>, PlanError> {
        let mut out = BTreeMap::new();
        let Some(node) = node else { return Ok(out) };
        for (k, v) in self.mapping(node, what)? {
            let key = self.nonempty(k, &format!("a key of {what}"))?;
            let value = match &v.value {
                Value::Null => String::new(),
                Value::Seq(_) | Value::Map(_) => v.to_json().to_string(),
                _ => v.scalar_text().unwrap_or_default(),
            };
            out.insert(key, value);
        }
        Ok(out)
    }

    /// Task `params`: they become environment variables, so their names must be ones
    /// every supported Kubernetes version accepts. 1.29 to 1.31 allow only
    /// `[-._a-zA-Z][-._a-zA-Z0-9]*` (apimachinery `IsEnvVarName`; the relaxed rule is
    /// beta only from 1.32): refusing others here turns a failed pod create into a plan
    /// error with a position.
    fn env_map(
        &self,
        node: Option<&Node>,
        what: &str,
    ) -> Result<BTreeMap<String, String>, PlanError> {
        let out = self.string_map(node, what)?;
        if let Some(node) = node {
            for (k, _) in self.mapping(node, what)? {
                let name = k.scalar_text().unwrap_or_default();
                if !is_env_var_name(&name) {
                    return Err(self
                        .err(
                            k.pos,
                            format!("{what} name `{name}` is not a valid environment variable name"),
                        )
                        .with_hint(
                            "use letters, digits, `_`, `-` and `.`, not starting with a digit or `..` (e.g. `API_TOKEN`)",
                        ));
                }
            }
        }
        Ok(out)
    }

    /// A relative path inside a step's working directory.
    fn rel_path(&self, node: &Node, what: &str) -> Result<String, PlanError> {
        let p = self.nonempty(node, what)?;
        if p.starts_with('/') || p.split('/').any(|part| part == "..") {
            return Err(self
                .err(
                    node.pos,
                    format!("{what} `{p}` leaves the working directory"),
                )
                .with_hint("use a relative path without `..` segments"));
        }
        Ok(p)
    }

    // ---- pipeline ----------------------------------------------------------------

    /// The top-level `var_sources`: each `name`, `type` and `config` (a `dummy`
    /// source's `config.vars` are its values).
    pub(crate) fn var_sources(
        &self,
        node: &Node,
    ) -> Result<BTreeMap<String, super::vars::VarSource>, PlanError> {
        let mut out: BTreeMap<String, super::vars::VarSource> = BTreeMap::new();
        for item in self.seq(node, "`var_sources`")? {
            let o = self.obj(item, "a var source", &["name", "type", "config"], &[])?;
            let name_node = self.required(&o, "name", "a var source")?;
            let name = self.name(name_node, "var source name")?;
            if let Some(prev) = out.get(&name) {
                return Err(self
                    .err(
                        name_node.pos,
                        format!(
                            "var source `{name}` is declared twice (first at line {})",
                            prev.location.line
                        ),
                    )
                    .with_hint("give every var source its own name"));
            }
            let type_node = self.required(&o, "type", &format!("var source `{name}`"))?;
            let type_ = self.nonempty(type_node, "`type`")?;
            let config = self.json_map(o.get("config"), "`config`")?;
            let vars = match config.get("vars") {
                None => Json::Object(Default::default()),
                Some(v @ Json::Object(_)) => v.clone(),
                Some(_) => {
                    return Err(self
                        .err(
                            o.get("config").map_or(item.pos, |c| c.pos),
                            format!("var source `{name}`: `config.vars` must be a mapping"),
                        )
                        .with_hint("e.g. `config: {vars: {region: eu-west-1}}`"));
                }
            };
            out.insert(
                name,
                super::vars::VarSource {
                    type_,
                    vars,
                    location: self.loc(item.pos),
                },
            );
        }
        Ok(out)
    }

    pub(crate) fn pipeline(mut self, root: &Node) -> Result<Pipeline, PlanError> {
        let top = self.obj(
            root,
            "the pipeline",
            // `var_sources` were read (and checked) before the placeholders were filled.
            &["resources", "resource_types", "jobs", "var_sources"],
            IGNORED_TOP,
        )?;
        let mut defaults: HashMap<String, Json> = HashMap::new();
        if let Some(types) = top.get("resource_types") {
            for node in self.seq(types, "`resource_types`")? {
                let (rt, default) = self.resource_type(node)?;
                if let Some(d) = default {
                    defaults.insert(rt.name.clone(), d);
                }
                self.resource_types.push(rt);
            }
        }
        if let Some(resources) = top.get("resources") {
            for node in self.seq(resources, "`resources`")? {
                let r = self.resource(node, &defaults)?;
                self.resources.push(r);
            }
        }
        let jobs_node = self.required(&top, "jobs", "the pipeline")?;
        let job_nodes = self.seq(jobs_node, "`jobs`")?;
        if job_nodes.is_empty() {
            return Err(self
                .err(jobs_node.pos, "the pipeline has no jobs")
                .with_hint("add a job: `- name: build` with a `plan:`"));
        }
        let mut jobs: Vec<Job> = Vec::new();
        for node in job_nodes {
            jobs.push(self.job(node)?);
        }
        for (name, pos) in &self.passed {
            if !jobs.iter().any(|j| &j.name == name) {
                let mut e = self.err(
                    *pos,
                    format!("`passed` names job `{name}`, which is not declared"),
                );
                e = match suggest(name, jobs.iter().map(|j| j.name.as_str())) {
                    Some(s) => e.with_hint(format!("did you mean `{s}`?")),
                    None => e.with_hint(format!(
                        "declared jobs: {}",
                        backticked(jobs.iter().map(|j| j.name.as_str()))
                    )),
                };
                return Err(e);
            }
        }
        Ok(Pipeline {
            name: pipeline_name(self.file),
            resources: self.resources,
            resource_types: self.resource_types,
            jobs,
        })
    }

    fn resource_type(&self, node: &Node) -> Result<(ResourceType, Option<Json>), PlanError> {
        let obj = self.obj(
            node,
            "a resource type",
            &["name", "type", "source", "defaults"],
            IGNORED_RESOURCE_TYPE,
        )?;
        let name_node = self.required(&obj, "name", "a resource type")?;
        let name = self.name(name_node, "resource type name")?;
        if let Some(prev) = self.resource_types.iter().find(|t| t.name == name) {
            return Err(self
                .err(
                    name_node.pos,
                    format!(
                        "resource type `{name}` is declared twice (first at line {})",
                        prev.location.line
                    ),
                )
                .with_hint("give every resource type its own name"));
        }
        let type_node = self.required(&obj, "type", &format!("resource type `{name}`"))?;
        let type_ = self.text(type_node, "`type`")?;
        if !RESOURCE_TYPE_KINDS.contains(&type_.as_str()) {
            return Err(self
                .err(
                    type_node.pos,
                    format!("resource type `{name}` has type `{type_}`, which cannot provide a resource type"),
                )
                .with_hint(
                    "use `registry-image` or `docker-image` (with `source.repository`) or `local` (with `source.path`)",
                ));
        }
        let source = self.image_source(obj.get("source"))?;
        let (field, what) = if type_ == "local" {
            ("path", "the directory holding `check`, `in` and `out`")
        } else {
            ("repository", "the image")
        };
        let present = source
            .get(field)
            .and_then(Json::as_str)
            .is_some_and(|s| !s.is_empty());
        if !present {
            let pos = obj.get("source").map_or(type_node.pos, |s| s.pos);
            return Err(self
                .err(
                    pos,
                    format!("resource type `{name}` has no `source.{field}`"),
                )
                .with_hint(format!("set `source: {{{field}: ...}}` to {what}")));
        }
        let defaults = match obj.get("defaults") {
            Some(d) => Some(self.json_map(Some(d), "`defaults`")?),
            None => None,
        };
        Ok((
            ResourceType {
                name,
                type_,
                source,
                location: self.loc(node.pos),
            },
            defaults,
        ))
    }

    fn resource(
        &self,
        node: &Node,
        defaults: &HashMap<String, Json>,
    ) -> Result<Resource, PlanError> {
        let obj = self.obj(
            node,
            "a resource",
            &["name", "type", "source", "version"],
            IGNORED_RESOURCE,
        )?;
        let name_node = self.required(&obj, "name", "a resource")?;
        let name = self.name(name_node, "resource name")?;
        if let Some(prev) = self.resources.iter().find(|r| r.name == name) {
            return Err(self
                .err(
                    name_node.pos,
                    format!(
                        "resource `{name}` is declared twice (first at line {})",
                        prev.location.line
                    ),
                )
                .with_hint("give every resource its own name"));
        }
        let type_node = self.required(&obj, "type", &format!("resource `{name}`"))?;
        let type_ = self.text(type_node, "`type`")?;
        let known = BASE_RESOURCE_TYPES.contains(&type_.as_str())
            || self.resource_types.iter().any(|t| t.name == type_);
        if !known {
            let all: Vec<&str> = BASE_RESOURCE_TYPES
                .iter()
                .copied()
                .chain(self.resource_types.iter().map(|t| t.name.as_str()))
                .collect();
            let hint = match suggest(&type_, all.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!(
                    "known types: {}; declare others under `resource_types`",
                    backticked(all.iter().copied())
                ),
            };
            return Err(self
                .err(
                    type_node.pos,
                    format!("resource `{name}` has unknown type `{type_}`"),
                )
                .with_hint(hint));
        }
        let mut source = self.json_map(obj.get("source"), "`source`")?;
        if let (Some(Json::Object(d)), Json::Object(s)) = (defaults.get(&type_), &mut source) {
            for (k, v) in d {
                s.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        // Concourse pins a resource with a version mapping (string values, as a
        // resource's `check` reports them); `every`/`latest` belong on a `get`.
        let version = match obj.get("version") {
            None => None,
            Some(n) => match &n.value {
                Value::Map(m) if !m.is_empty() => Some(self.json_map(Some(n), "`version`")?),
                _ => {
                    return Err(self
                        .err(n.pos, format!("resource `{name}`: `version` must be a version mapping"))
                        .with_hint("pin it with e.g. `version: {ref: abc123}`; `every` and `latest` go on a `get`"));
                }
            },
        };
        Ok(Resource {
            name,
            type_,
            source,
            version,
            location: self.loc(node.pos),
        })
    }

    fn job(&mut self, node: &Node) -> Result<Job, PlanError> {
        let known: Vec<&str> = ["name", "plan", "serial", "serial_groups", "max_in_flight"]
            .iter()
            .chain(HOOKS)
            .copied()
            .collect();
        let obj = self.obj(node, "a job", &known, IGNORED_JOB)?;
        let name_node = self.required(&obj, "name", "a job")?;
        let name = self.name(name_node, "job name")?;
        if let Some(prev) = self.job_names.insert(name.clone(), name_node.pos) {
            return Err(self
                .err(
                    name_node.pos,
                    format!(
                        "job `{name}` is declared twice (first at line {})",
                        prev.line
                    ),
                )
                .with_hint("give every job its own name"));
        }
        let what = format!("job `{name}`");
        let plan_node = self.required(&obj, "plan", &what)?;
        let plan_nodes = self.seq(plan_node, "`plan`")?;
        if plan_nodes.is_empty() {
            return Err(self
                .err(plan_node.pos, format!("{what} has an empty plan"))
                .with_hint("add at least one step, e.g. `- get: repo`"));
        }
        let mut state = JobState::default();
        let mut flow = Flow {
            available: self.bound.clone(),
            open: false,
        };
        let mut plan = Vec::with_capacity(plan_nodes.len());
        for node in plan_nodes {
            plan.push(self.step(&mut state, node, &mut flow)?);
        }
        let hooks = self.hooks(&obj, &mut state, &mut flow)?;
        let serial = match obj.get("serial") {
            None => false,
            Some(n) => self.boolean(n, "`serial`")?,
        };
        let max_in_flight =
            match obj.get("max_in_flight") {
                None => None,
                Some(n) => {
                    let m = self.uint(n, "`max_in_flight`")?;
                    if m < 1 {
                        return Err(self
                            .err(n.pos, "`max_in_flight` must be at least 1")
                            .with_hint("leave it out for no limit"));
                    }
                    Some(u32::try_from(m).map_err(|_| {
                        self.err(n.pos, format!("`max_in_flight` of {m} is too many"))
                    })?)
                }
            };
        // As Concourse: `serial: true` is `max_in_flight: 1`; both set must agree.
        let max_in_flight = match (serial, max_in_flight) {
            (true, Some(m)) if m != 1 => {
                let pos = obj.key_pos("max_in_flight");
                return Err(self
                    .err(
                        pos,
                        format!(
                            "`serial: true` runs one build at a time, but `max_in_flight` is {m}"
                        ),
                    )
                    .with_hint("keep one of the two"));
            }
            (true, _) => Some(1),
            (false, m) => m,
        };
        let mut serial_groups = Vec::new();
        if let Some(n) = obj.get("serial_groups") {
            for g in self.seq(n, "`serial_groups`")? {
                serial_groups.push(self.nonempty(g, "a serial group")?);
            }
        }
        Ok(Job {
            name,
            plan,
            hooks,
            max_in_flight,
            serial_groups,
            location: self.loc(node.pos),
        })
    }

    /// Hooks of a step or job: each sees `flow` (what exists after the step); what any
    /// of them produces exists afterwards.
    fn hooks(
        &mut self,
        obj: &Obj<'_>,
        state: &mut JobState,
        flow: &mut Flow,
    ) -> Result<Hooks, PlanError> {
        let mut hooks = Hooks::default();
        let mut after = flow.clone();
        for hook in HOOKS {
            let Some(node) = obj.get(hook) else { continue };
            let mut f = flow.clone();
            let step = Box::new(self.step(state, node, &mut f)?);
            after.available.extend(f.available);
            after.open |= f.open;
            let slot = match *hook {
                "on_success" => &mut hooks.on_success,
                "on_failure" => &mut hooks.on_failure,
                "on_error" => &mut hooks.on_error,
                "on_abort" => &mut hooks.on_abort,
                _ => &mut hooks.ensure,
            };
            *slot = Some(step);
        }
        *flow = after;
        Ok(hooks)
    }

    fn step(
        &mut self,
        state: &mut JobState,
        node: &Node,
        flow: &mut Flow,
    ) -> Result<Step, PlanError> {
        let Value::Map(entries) = &node.value else {
            return Err(self
                .err(
                    node.pos,
                    format!("a step must be a mapping, found {}", node.value.kind()),
                )
                .with_hint(
                    "start a step with `get:`, `put:`, `task:`, `in_parallel:`, `do:`, `try:`, `load_var:` or `set_pipeline:`",
                ));
        };
        let keys: Vec<(&str, Pos)> = entries
            .iter()
            .filter_map(|(k, _)| match &k.value {
                Value::Str(s) => Some((s.as_str(), k.pos)),
                _ => None,
            })
            .collect();
        let mut kinds = keys.iter().filter(|(k, _)| STEP_KINDS.contains(k));
        let Some(&(kind, _)) = kinds.next() else {
            if let Some((k, pos)) = keys
                .iter()
                .find(|(k, _)| UNSUPPORTED_STEP_KINDS.contains(k))
            {
                return Err(self
                    .err(*pos, format!("`{k}` steps are not supported"))
                    .with_hint(
                        "use `get`, `put`, `task`, `in_parallel`, `do`, `try`, `load_var` or `set_pipeline`",
                    ));
            }
            return Err(self
                .err(
                    node.pos,
                    "this step has no `get`, `put`, `task`, `in_parallel`, `do`, `try`, `load_var` or `set_pipeline`",
                )
                .with_hint(format!(
                    "keys found: {}",
                    backticked(keys.iter().map(|(k, _)| *k))
                )));
        };
        if let Some(&(other, pos)) = kinds.next() {
            return Err(self
                .err(pos, format!("a step can be only one of `get`, `put`, `task`, `in_parallel`, `do`, `try`, `load_var` and `set_pipeline`, but this one is `{kind}` and `{other}`"))
                .with_hint("split it into two steps"));
        }
        let specific: &[&str] = match kind {
            "get" => &["get", "resource", "version", "params", "passed", "trigger"],
            "put" => &[
                "put",
                "resource",
                "params",
                "get_params",
                "inputs",
                "no_get",
            ],
            "load_var" => &["load_var", "file", "format", "reveal"],
            "set_pipeline" => &[
                "set_pipeline",
                "file",
                "vars",
                "var_files",
                "instance_vars",
                "team",
            ],
            "task" => &[
                "task",
                "config",
                "file",
                "params",
                "input_mapping",
                "output_mapping",
                "privileged",
                "vars",
                "image",
                "hermetic",
            ],
            _ => &[kind],
        };
        let known: Vec<&str> = specific
            .iter()
            .chain(HOOKS)
            .chain(MODIFIERS)
            .copied()
            .collect();
        let obj = self.obj(node, &format!("a `{kind}` step"), &known, IGNORED_STEP)?;
        let across = self.across(&obj)?;
        // What a step under `across` produces stays in its iteration (its hooks see
        // it); later steps do not.
        let before_across = across.as_ref().map(|_| flow.available.clone());
        let kind = match kind {
            "get" => StepKind::Get(self.get_step(&obj, state, flow)?),
            "put" => StepKind::Put(self.put_step(&obj, flow)?),
            "task" => StepKind::Task(self.task_step(&obj, flow)?),
            "in_parallel" => StepKind::InParallel(self.in_parallel(&obj, state, flow)?),
            "load_var" => StepKind::LoadVar(self.load_var_step(&obj, flow)?),
            "set_pipeline" => StepKind::SetPipeline(self.set_pipeline_step(&obj, flow)?),
            "try" => {
                let inner = obj.get("try").ok_or_else(|| {
                    self.err(obj.key_pos("try"), "`try` has no step")
                        .with_hint("put one step under `try:`, e.g. `try: {task: ...}`")
                })?;
                StepKind::Try(Box::new(self.step(state, inner, flow)?))
            }
            _ => {
                let list = obj.get("do").ok_or_else(|| {
                    self.err(obj.key_pos("do"), "`do` has no steps")
                        .with_hint("list the steps under `do:`")
                })?;
                let mut steps = Vec::new();
                for n in self.seq(list, "`do`")? {
                    steps.push(self.step(state, n, flow)?);
                }
                if steps.is_empty() {
                    return Err(self
                        .err(list.pos, "`do` has no steps")
                        .with_hint("list the steps under `do:`"));
                }
                StepKind::Do(steps)
            }
        };
        let attempts = match obj.get("attempts") {
            None => 1,
            Some(n) => {
                let a = self.uint(n, "`attempts`")?;
                if a < 1 {
                    return Err(self
                        .err(n.pos, "`attempts` must be at least 1")
                        .with_hint("`attempts` counts the first run too: 1 means no retry"));
                }
                u32::try_from(a)
                    .map_err(|_| self.err(n.pos, format!("`attempts` of {a} is too many")))?
            }
        };
        let timeout = match obj.get("timeout") {
            None => None,
            Some(n) => {
                let text = self.text(n, "`timeout`")?;
                Some(parse_duration(&text).map_err(|e| {
                    self.err(n.pos, format!("bad `timeout`: {e}"))
                        .with_hint("Go duration syntax, e.g. `90s`, `1h30m`, `500ms`")
                })?)
            }
        };
        let hooks = self.hooks(&obj, state, flow)?;
        if let Some(available) = before_across {
            flow.available = available;
        }
        Ok(Step {
            kind,
            hooks,
            attempts,
            timeout,
            across,
            location: self.loc(node.pos),
        })
    }

    fn across(&self, obj: &Obj<'_>) -> Result<Option<Across>, PlanError> {
        let fail_fast = match obj.get("fail_fast") {
            None => false,
            Some(n) => self.boolean(n, "`fail_fast`")?,
        };
        let Some(list) = obj.get("across") else {
            if obj.get("fail_fast").is_some() {
                return Err(self
                    .err(
                        obj.key_pos("fail_fast"),
                        "`fail_fast` belongs with `across`",
                    )
                    .with_hint("add `across:`, or remove `fail_fast`"));
            }
            return Ok(None);
        };
        let items = self.seq(list, "`across`")?;
        if items.is_empty() {
            return Err(self
                .err(list.pos, "`across` has no vars")
                .with_hint("list vars, e.g. `across: [{var: os, values: [linux, darwin]}]`"));
        }
        let mut vars: Vec<AcrossVar> = Vec::new();
        for item in items {
            let o = self.obj(
                item,
                "an `across` var",
                &["var", "values", "max_in_flight"],
                &[],
            )?;
            let var_node = self.required(&o, "var", "an `across` var")?;
            let var = self.name(var_node, "`across` var")?;
            if vars.iter().any(|v| v.var == var) {
                return Err(self
                    .err(
                        var_node.pos,
                        format!("`across` names the var `{var}` twice"),
                    )
                    .with_hint("give each var its own name"));
            }
            let values_node = self.required(&o, "values", &format!("`across` var `{var}`"))?;
            let values = match &values_node.value {
                Value::Seq(_) => match values_node.to_json() {
                    Json::Array(a) if !a.is_empty() => AcrossValues::List(a),
                    _ => {
                        return Err(self
                            .err(
                                values_node.pos,
                                format!("`across` var `{var}` has no values"),
                            )
                            .with_hint("list at least one value"));
                    }
                },
                Value::Str(s) if s.trim().starts_with("((.:") && s.trim().ends_with("))") => {
                    AcrossValues::Local(s.trim().to_owned())
                }
                _ => {
                    return Err(self
                        .err(values_node.pos, format!("`values` of `across` var `{var}` must be a list"))
                        .with_hint("a list, a `((var))` holding one, or a local var `((.:name))` a `load_var` set"));
                }
            };
            let max_in_flight = match o.get("max_in_flight") {
                None => Some(1),
                Some(n) => match &n.value {
                    Value::Str(s) if s == "all" => None,
                    _ => {
                        let m = self.uint(n, "`max_in_flight`")?;
                        if m < 1 {
                            return Err(self
                                .err(n.pos, "`max_in_flight` must be at least 1")
                                .with_hint("or `all`"));
                        }
                        Some(u32::try_from(m).unwrap_or(u32::MAX))
                    }
                },
            };
            vars.push(AcrossVar {
                var,
                values,
                max_in_flight,
            });
        }
        Ok(Some(Across { vars, fail_fast }))
    }

    /// The resource of a `get`/`put`: `resource:` or else the step name; must exist.
    fn step_resource(
        &self,
        obj: &Obj<'_>,
        step: &str,
        name: &str,
        name_pos: Pos,
    ) -> Result<String, PlanError> {
        let (resource, pos) = match obj.get("resource") {
            Some(n) => (self.name(n, "`resource`")?, n.pos),
            None => (name.to_owned(), name_pos),
        };
        if self.resources.iter().any(|r| r.name == resource) {
            return Ok(resource);
        }
        let hint = match suggest(&resource, self.resources.iter().map(|r| r.name.as_str())) {
            Some(s) => format!("did you mean `{s}`? (or declare `{resource}` under `resources`)"),
            None => format!(
                "declare it under `resources` (declared: {}), or name one with `resource:`",
                backticked(self.resources.iter().map(|r| r.name.as_str()))
            ),
        };
        Err(self
            .err(
                pos,
                format!("`{step}` of resource `{resource}`, which is not declared"),
            )
            .with_hint(hint))
    }

    /// `ARTIFACT/path` of a file an earlier step produced. Its errors quote it as
    /// `key: text` (or bare, for an item of a list), show `usage` as the way to write
    /// one, and say what `reads` it.
    fn artifact_file(
        &self,
        f: &Node,
        key: Option<&str>,
        usage: &str,
        reads: &str,
        flow: &Flow,
    ) -> Result<(String, String), PlanError> {
        let text = self.nonempty(f, "`file`")?;
        let shown = match key {
            Some(k) => format!("`{k}: {text}`"),
            None => format!("`{text}`"),
        };
        let (artifact, path) = text.split_once('/').unwrap_or((&text, ""));
        if path.is_empty() || !valid_name(artifact) {
            return Err(self
                .err(
                    f.pos,
                    format!("{shown} does not name an artifact and a path"),
                )
                .with_hint(usage));
        }
        if path.starts_with('/') || path.split('/').any(|p| p == "..") {
            return Err(self
                .err(f.pos, format!("{shown} leaves the artifact"))
                .with_hint("use a path inside the artifact without `..` segments"));
        }
        if !flow.has(artifact) {
            let fix = match key {
                Some(k) => format!("fix the artifact name at the start of `{k}`"),
                None => "fix the artifact name at the start of the path".to_owned(),
            };
            return Err(self.missing_input(
                f.pos,
                format!("{reads} `{text}`"),
                artifact,
                flow,
                &fix,
            ));
        }
        Ok((artifact.to_owned(), path.to_owned()))
    }

    fn set_pipeline_step(&self, obj: &Obj<'_>, flow: &Flow) -> Result<SetPipelineStep, PlanError> {
        let name_node = self.required(obj, "set_pipeline", "a `set_pipeline` step")?;
        let name = self.text(name_node, "`set_pipeline` name")?;
        if name != "self" && !valid_name(&name) {
            return Err(self
                .err(
                    name_node.pos,
                    format!("pipeline name `{name}` is not a valid name"),
                )
                .with_hint(NAME_RULE));
        }
        let what = format!("`set_pipeline: {name}`");
        let f = self.required(obj, "file", &what)?;
        let usage = "write `ARTIFACT/path`, e.g. `repo/ci/pipeline.yml`";
        let reads = format!("{what} reads");
        let (artifact, path) = self.artifact_file(f, None, usage, &reads, flow)?;
        let mut var_files = Vec::new();
        if let Some(n) = obj.get("var_files") {
            for v in self.seq(n, "`var_files`")? {
                let (a, p) = self.artifact_file(v, None, usage, &reads, flow)?;
                var_files.push(format!("{a}/{p}"));
            }
        }
        let team = obj
            .get("team")
            .map(|n| self.nonempty(n, "`team`"))
            .transpose()?;
        Ok(SetPipelineStep {
            name,
            artifact,
            path,
            vars: self.json_map(obj.get("vars"), "`vars`")?,
            var_files,
            instance_vars: self.json_map(obj.get("instance_vars"), "`instance_vars`")?,
            team,
        })
    }

    fn load_var_step(&self, obj: &Obj<'_>, flow: &Flow) -> Result<LoadVarStep, PlanError> {
        let name_node = self.required(obj, "load_var", "a `load_var` step")?;
        let name = self.name(name_node, "`load_var` name")?;
        let f = self.required(obj, "file", &format!("`load_var: {name}`"))?;
        let (artifact, path) = self.artifact_file(
            f,
            Some("file"),
            "write `file: ARTIFACT/path`, e.g. `file: version/number`",
            &format!("`load_var: {name}` reads"),
            flow,
        )?;
        let format = match obj.get("format") {
            None => None,
            Some(n) => Some(match self.text(n, "`format`")?.as_str() {
                "raw" => VarFormat::Raw,
                "trim" => VarFormat::Trim,
                "json" => VarFormat::Json,
                "yaml" | "yml" => VarFormat::Yaml,
                other => {
                    return Err(self
                        .err(n.pos, format!("`format: {other}` is not a format"))
                        .with_hint("use `raw`, `trim`, `json` or `yaml`, or leave it out to go by the file's extension"));
                }
            }),
        };
        let reveal = match obj.get("reveal") {
            None => false,
            Some(n) => self.boolean(n, "`reveal`")?,
        };
        Ok(LoadVarStep {
            name,
            artifact,
            path,
            format,
            reveal,
        })
    }

    fn get_step(
        &mut self,
        obj: &Obj<'_>,
        state: &mut JobState,
        flow: &mut Flow,
    ) -> Result<GetStep, PlanError> {
        let name_node = self.required(obj, "get", "a `get` step")?;
        let name = self.name(name_node, "`get` name")?;
        if let Some(prev) = state.get_names.insert(name.clone(), name_node.pos) {
            return Err(self
                .err(
                    name_node.pos,
                    format!(
                        "repeated name: this job has two `get` steps named `{name}` (the other at line {})",
                        prev.line
                    ),
                )
                .with_hint(
                    "give one another name with `get: OTHER` and `resource:`; a get's name is the artifact later steps see",
                ));
        }
        let resource = self.step_resource(obj, "get", &name, name_node.pos)?;
        let version = match obj.get("version") {
            None => None,
            Some(n) => match &n.value {
                Value::Str(s) if s == "latest" || s == "every" => None,
                Value::Map(_) => Some(n.to_json()),
                _ => {
                    return Err(self
                        .err(
                            n.pos,
                            "`version` must be `latest`, `every` or a version mapping",
                        )
                        .with_hint("pin a version with e.g. `version: {ref: abc123}`"));
                }
            },
        };
        let params = self.json_map(obj.get("params"), "`params`")?;
        let mut passed = Vec::new();
        if let Some(n) = obj.get("passed") {
            for j in self.seq(n, "`passed`")? {
                let job = self.name(j, "a `passed` job")?;
                self.passed.push((job.clone(), j.pos));
                passed.push(job);
            }
        }
        let trigger = match obj.get("trigger") {
            Some(n) => self.boolean(n, "`trigger`")?,
            None => false,
        };
        flow.available.insert(name.clone());
        Ok(GetStep {
            name,
            resource,
            version,
            params,
            passed,
            trigger,
        })
    }

    fn put_step(&mut self, obj: &Obj<'_>, flow: &mut Flow) -> Result<PutStep, PlanError> {
        let name_node = self.required(obj, "put", "a `put` step")?;
        let name = self.name(name_node, "`put` name")?;
        let resource = self.step_resource(obj, "put", &name, name_node.pos)?;
        let params = self.json_map(obj.get("params"), "`params`")?;
        let get_params = self.json_map(obj.get("get_params"), "`get_params`")?;
        let inputs = match obj.get("inputs") {
            None => None,
            Some(n) => match &n.value {
                Value::Str(s) if s == "all" || s == "detect" => None,
                Value::Seq(items) => {
                    let mut names = Vec::with_capacity(items.len());
                    for item in items {
                        let input = self.name(item, "a `put` input")?;
                        if !flow.has(&input) {
                            return Err(self.missing_input(
                                item.pos,
                                format!("`put: {name}` lists input `{input}`"),
                                &input,
                                flow,
                                "remove it from `inputs`",
                            ));
                        }
                        names.push(input);
                    }
                    Some(names)
                }
                _ => {
                    return Err(self
                        .err(
                            n.pos,
                            "`inputs` must be `all`, `detect` or a list of artifact names",
                        )
                        .with_hint("e.g. `inputs: [repo, built]`"));
                }
            },
        };
        let no_get = match obj.get("no_get") {
            Some(n) => self.boolean(n, "`no_get`")?,
            None => false,
        };
        if !no_get {
            flow.available.insert(name.clone());
        }
        Ok(PutStep {
            name,
            resource,
            params,
            get_params,
            inputs,
            no_get,
        })
    }

    fn missing_input(
        &self,
        pos: Pos,
        what: String,
        artifact: &str,
        flow: &Flow,
        fix: &str,
    ) -> PlanError {
        self.err(
            pos,
            format!("{what}, but no earlier step produces artifact `{artifact}`"),
        )
        .with_hint(format!(
            "add a step that produces it before this one (a `get`, or a task output), or {fix}; \
             available here: {} (steps of one `in_parallel` do not see each other's outputs)",
            flow.list()
        ))
    }

    /// A mapping of names to artifact names (`input_mapping`, `output_mapping`), with
    /// the position of each value.
    fn name_map(
        &self,
        node: Option<&Node>,
        what: &str,
    ) -> Result<BTreeMap<String, (String, Pos)>, PlanError> {
        let mut out = BTreeMap::new();
        let Some(node) = node else { return Ok(out) };
        for (k, v) in self.mapping(node, what)? {
            let from = self.name(k, &format!("a key of {what}"))?;
            let to = self.name(v, &format!("an artifact in {what}"))?;
            out.insert(from, (to, v.pos));
        }
        Ok(out)
    }

    fn task_step(&mut self, obj: &Obj<'_>, flow: &mut Flow) -> Result<TaskStep, PlanError> {
        let name_node = self.required(obj, "task", "a `task` step")?;
        // Task names may repeat within a job, as in Concourse (a shared `on_failure:
        // {task: notify}`, say): each step binds its own outputs, whatever its name.
        let name = self.name(name_node, "task name")?;
        let input_mapping = self.name_map(obj.get("input_mapping"), "`input_mapping`")?;
        let output_mapping = self.name_map(obj.get("output_mapping"), "`output_mapping`")?;
        let params = self.env_map(obj.get("params"), "`params`")?;
        let privileged = match obj.get("privileged") {
            Some(n) => self.boolean(n, "`privileged`")?,
            None => false,
        };
        let hermetic = match obj.get("hermetic") {
            Some(n) => self.boolean(n, "`hermetic`")?,
            None => false,
        };
        // Concourse honours `hermetic` only on its containerd runtime; here a backend
        // that cannot cut a pod off the network refuses the job up front
        // (`Job::hermetic_step`), and its pods (`PodSpec::hermetic`) as the last line.
        let image = match obj.get("image") {
            None => None,
            Some(n) => {
                let artifact = self.name(n, "`image` artifact")?;
                if !flow.has(&artifact) {
                    return Err(self.missing_input(
                        n.pos,
                        format!("task `{name}` runs in the image `{artifact}`"),
                        &artifact,
                        flow,
                        "fetch the image earlier in the plan (e.g. `get: {artifact}` of a registry-image resource)",
                    ));
                }
                Some(artifact)
            }
        };
        let mut vars = BTreeMap::new();
        if let Some(n) = obj.get("vars") {
            for (k, v) in self.mapping(n, "`vars`")? {
                vars.insert(self.nonempty(k, "a key of `vars`")?, v.to_json());
            }
        }
        let config = match (obj.get("config"), obj.get("file")) {
            (Some(_), Some(_)) => {
                return Err(self
                    .err(
                        obj.key_pos("file"),
                        format!("task `{name}` has both `config` and `file`"),
                    )
                    .with_hint(
                        "keep one: an inline `config`, or a `file` to load from an artifact",
                    ));
            }
            (None, None) => {
                return Err(self
                    .err(
                        obj.pos,
                        format!("task `{name}` has neither `config` nor `file`"),
                    )
                    .with_hint("add an inline `config:` or `file: artifact/path/to/task.yml`"));
            }
            (Some(c), None) => {
                let (config, meta) = self.task_config(c)?;
                for (input, pos) in config.inputs.iter().zip(&meta.inputs) {
                    let (artifact, at) = match input_mapping.get(&input.name) {
                        Some((a, p)) => (a.as_str(), *p),
                        None => (input.name.as_str(), *pos),
                    };
                    if !input.optional && !flow.has(artifact) {
                        return Err(self.missing_input(
                            at,
                            format!("task `{name}` needs input `{}`", input.name),
                            artifact,
                            flow,
                            "map the input to an existing artifact with `input_mapping`, or mark it `optional: true`",
                        ));
                    }
                }
                let mut bound: BTreeMap<&str, &str> = BTreeMap::new();
                for (output, pos) in config.outputs.iter().zip(&meta.outputs) {
                    let (artifact, at) = match output_mapping.get(&output.name) {
                        Some((a, p)) => (a.as_str(), *p),
                        None => (output.name.as_str(), *pos),
                    };
                    if let Some(other) = bound.insert(artifact, &output.name) {
                        return Err(self
                            .err(at, format!("task `{name}` binds outputs `{other}` and `{}` to the same artifact `{artifact}`", output.name))
                            .with_hint("map them to different names in `output_mapping`"));
                    }
                }
                flow.available.extend(bound.keys().map(|a| (*a).to_owned()));
                TaskSource::Inline(config)
            }
            (None, Some(f)) => {
                let (artifact, path) = self.artifact_file(
                    f,
                    Some("file"),
                    "write `file: ARTIFACT/path/to/task.yml`, e.g. `file: repo/ci/test.yml`",
                    &format!("task `{name}` loads its config from"),
                    flow,
                )?;
                // The outputs are only known once the file is loaded.
                let mut bound: BTreeMap<&str, &str> = BTreeMap::new();
                for (output, (artifact, at)) in &output_mapping {
                    if let Some(other) = bound.insert(artifact, output) {
                        return Err(self
                            .err(*at, format!("task `{name}` binds outputs `{other}` and `{output}` to the same artifact `{artifact}`"))
                            .with_hint("map them to different names in `output_mapping`"));
                    }
                }
                flow.available.extend(bound.keys().map(|a| (*a).to_owned()));
                flow.open = true;
                TaskSource::File { artifact, path }
            }
        };
        Ok(TaskStep {
            name,
            config,
            params,
            input_mapping: input_mapping
                .into_iter()
                .map(|(k, (v, _))| (k, v))
                .collect(),
            output_mapping: output_mapping
                .into_iter()
                .map(|(k, (v, _))| (k, v))
                .collect(),
            privileged,
            vars,
            image,
            hermetic,
        })
    }

    fn in_parallel(
        &mut self,
        obj: &Obj<'_>,
        state: &mut JobState,
        flow: &mut Flow,
    ) -> Result<InParallel, PlanError> {
        let node = obj.get("in_parallel").ok_or_else(|| {
            self.err(obj.key_pos("in_parallel"), "`in_parallel` has no steps")
                .with_hint("list the steps under `in_parallel:`")
        })?;
        let (steps_node, limit, fail_fast) = match &node.value {
            Value::Seq(_) => (node, None, false),
            _ => {
                let o = self.obj(node, "`in_parallel`", &["steps", "limit", "fail_fast"], &[])?;
                let steps = self.required(&o, "steps", "`in_parallel`")?;
                let limit = match o.get("limit") {
                    None => None,
                    Some(n) => {
                        let l = self.uint(n, "`limit`")?;
                        if l < 1 {
                            return Err(self
                                .err(n.pos, "`limit` must be at least 1")
                                .with_hint("leave `limit` out to run every step at once"));
                        }
                        Some(usize::try_from(l).unwrap_or(usize::MAX))
                    }
                };
                let fail_fast = match o.get("fail_fast") {
                    Some(n) => self.boolean(n, "`fail_fast`")?,
                    None => false,
                };
                (steps, limit, fail_fast)
            }
        };
        let nodes = self.seq(steps_node, "the steps of `in_parallel`")?;
        if nodes.is_empty() {
            return Err(self
                .err(steps_node.pos, "`in_parallel` has no steps")
                .with_hint("list the steps under `in_parallel:`"));
        }
        let before = flow.clone();
        let mut produced: BTreeMap<String, Pos> = BTreeMap::new();
        let mut steps = Vec::with_capacity(nodes.len());
        for n in nodes {
            let mut f = before.clone();
            steps.push(self.step(state, n, &mut f)?);
            for name in f.available.difference(&before.available) {
                if let Some(other) = produced.get(name) {
                    return Err(self
                        .err(n.pos, format!("two steps of this `in_parallel` produce artifact `{name}` (the other at line {})", other.line))
                        .with_hint("rename one (for a task, with `output_mapping`) so neither overwrites the other"));
                }
                produced.insert(name.clone(), n.pos);
            }
            flow.open |= f.open;
        }
        flow.available.extend(produced.into_keys());
        Ok(InParallel {
            steps,
            limit,
            fail_fast,
        })
    }

    // ---- task config -------------------------------------------------------------

    pub(crate) fn task_config(&self, node: &Node) -> Result<(TaskConfig, TaskMeta), PlanError> {
        let what = "the task config";
        let obj = self.obj(
            node,
            what,
            &[
                "platform",
                "image_resource",
                "inputs",
                "outputs",
                "caches",
                "params",
                "run",
                "container_limits",
            ],
            &[],
        )?;
        let platform_node = self.required(&obj, "platform", what)?;
        let platform = self.text(platform_node, "`platform`")?;
        if platform != "linux" {
            return Err(self
                .err(
                    platform_node.pos,
                    format!("platform `{platform}` is not supported"),
                )
                .with_hint("tasks run in Linux containers: write `platform: linux`"));
        }
        let image_resource = match obj.get("image_resource") {
            None => None,
            Some(n) => Some(self.image_resource(n)?),
        };
        let mut meta = TaskMeta {
            inputs: Vec::new(),
            outputs: Vec::new(),
        };
        let mut inputs: Vec<TaskInput> = Vec::new();
        if let Some(list) = obj.get("inputs") {
            for n in self.seq(list, "`inputs`")? {
                let o = self.obj(n, "a task input", &["name", "path", "optional"], &[])?;
                let name_node = self.required(&o, "name", "a task input")?;
                let name = self.name(name_node, "input name")?;
                if inputs.iter().any(|i| i.name == name) {
                    return Err(self
                        .err(name_node.pos, format!("input `{name}` is listed twice"))
                        .with_hint("list every input once"));
                }
                let path = match o.get("path") {
                    Some(p) => self.rel_path(p, "input `path`")?,
                    None => name.clone(),
                };
                let optional = match o.get("optional") {
                    Some(b) => self.boolean(b, "`optional`")?,
                    None => false,
                };
                meta.inputs.push(name_node.pos);
                inputs.push(TaskInput {
                    name,
                    path,
                    optional,
                });
            }
        }
        let mut outputs: Vec<TaskOutput> = Vec::new();
        if let Some(list) = obj.get("outputs") {
            for n in self.seq(list, "`outputs`")? {
                let o = self.obj(n, "a task output", &["name", "path"], &[])?;
                let name_node = self.required(&o, "name", "a task output")?;
                let name = self.name(name_node, "output name")?;
                if outputs.iter().any(|i| i.name == name) {
                    return Err(self
                        .err(name_node.pos, format!("output `{name}` is listed twice"))
                        .with_hint("list every output once"));
                }
                let path = match o.get("path") {
                    Some(p) => self.rel_path(p, "output `path`")?,
                    None => name.clone(),
                };
                meta.outputs.push(name_node.pos);
                outputs.push(TaskOutput { name, path });
            }
        }
        let mut caches = Vec::new();
        if let Some(list) = obj.get("caches") {
            for n in self.seq(list, "`caches`")? {
                let o = self.obj(n, "a cache", &["path"], &[])?;
                let p = self.required(&o, "path", "a cache")?;
                caches.push(self.rel_path(p, "cache `path`")?);
            }
        }
        let params = self.env_map(obj.get("params"), "`params`")?;
        let run_node = self.required(&obj, "run", what)?;
        let run = self.run(run_node)?;
        let container_limits = match obj.get("container_limits") {
            None => ContainerLimits::default(),
            Some(n) => self.limits(n)?,
        };
        Ok((
            TaskConfig {
                platform,
                image_resource,
                inputs,
                outputs,
                caches,
                params,
                run,
                container_limits,
                location: self.loc(node.pos),
            },
            meta,
        ))
    }

    fn image_resource(&self, node: &Node) -> Result<ImageResource, PlanError> {
        let o = self.obj(
            node,
            "`image_resource`",
            &["type", "source"],
            IGNORED_IMAGE_RESOURCE,
        )?;
        let type_node = self.required(&o, "type", "`image_resource`")?;
        let type_ = self.text(type_node, "`type`")?;
        // The built-in mock is an image too (Concourse's tests run tasks in it): any
        // `source` (`mirror_self`, ...), no repository.
        if type_ == "mock" {
            let source = self.json_map(o.get("source"), "`source`")?;
            return Ok(ImageResource { type_, source });
        }
        if type_ != "registry-image" && type_ != "docker-image" {
            return Err(self
                .err(
                    type_node.pos,
                    format!("`image_resource` of type `{type_}` is not supported"),
                )
                .with_hint(
                    "use `type: registry-image` with `source: {repository: ..., tag: ...}`, or `type: mock`",
                ));
        }
        let source_node = self.required(&o, "source", "`image_resource`")?;
        let source = self.image_source(Some(source_node))?;
        let image = ImageResource { type_, source };
        if image.image_ref().is_none_or(|r| r.is_empty()) {
            return Err(self
                .err(
                    source_node.pos,
                    "`image_resource` has no `source.repository`",
                )
                .with_hint("e.g. `source: {repository: busybox, tag: \"1.36\"}`"));
        }
        Ok(image)
    }

    fn run(&self, node: &Node) -> Result<RunConfig, PlanError> {
        let o = self.obj(node, "`run`", &["path", "args", "dir", "user"], &[])?;
        let path_node = self.required(&o, "path", "`run`")?;
        let path = self.nonempty(path_node, "`run.path`")?;
        let mut args = Vec::new();
        if let Some(list) = o.get("args") {
            for a in self.seq(list, "`run.args`")? {
                args.push(match &a.value {
                    Value::Null => String::new(),
                    _ => self.text(a, "an argument")?,
                });
            }
        }
        let dir = match o.get("dir") {
            Some(d) => Some(self.rel_path(d, "`run.dir`")?),
            None => None,
        };
        let user = match o.get("user") {
            Some(u) => Some(self.nonempty(u, "`run.user`")?),
            None => None,
        };
        Ok(RunConfig {
            path,
            args,
            dir,
            user,
        })
    }

    fn limits(&self, node: &Node) -> Result<ContainerLimits, PlanError> {
        let o = self.obj(node, "`container_limits`", &["cpu", "memory"], &[])?;
        let cpu_millis = match o.get("cpu") {
            None => None,
            Some(n) => Some(self.cpu(n)?),
        };
        let memory_bytes = match o.get("memory") {
            None => None,
            Some(n) => Some(self.memory(n)?),
        };
        Ok(ContainerLimits {
            cpu_millis,
            memory_bytes,
        })
    }

    /// `cpu`: Concourse CPU shares (1024 = one CPU) as a number, or millicores as a
    /// string ending in `m` (`"500m"`).
    fn cpu(&self, node: &Node) -> Result<u64, PlanError> {
        let bad = || {
            self.err(
                node.pos,
                "`cpu` must be CPU shares (1024 = one CPU) or millicores like `\"500m\"`",
            )
        };
        if let Value::Str(s) = &node.value
            && let Some(m) = s.trim().strip_suffix('m')
        {
            return m.trim().parse::<u64>().map_err(|_| bad());
        }
        let shares = self.uint(node, "`cpu`").map_err(|_| bad())?;
        // Round up so a small share never becomes "no limit" (0).
        Ok(shares.saturating_mul(1000).div_ceil(1024))
    }

    /// `memory`: bytes as a number, or a string with a unit (`512MB`, `1Gi`, `1G`;
    /// binary multiples, as Concourse reads them).
    fn memory(&self, node: &Node) -> Result<u64, PlanError> {
        let bad = || {
            self.err(
                node.pos,
                "`memory` must be a number of bytes or a size like `512MB` or `1GB`",
            )
        };
        if let Value::Str(s) = &node.value {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let num: u64 = num.parse().map_err(|_| bad())?;
            let shift = match unit.trim().to_ascii_lowercase().as_str() {
                "" | "b" => 0,
                "k" | "kb" | "ki" | "kib" => 10,
                "m" | "mb" | "mi" | "mib" => 20,
                "g" | "gb" | "gi" | "gib" => 30,
                "t" | "tb" | "ti" | "tib" => 40,
                _ => return Err(bad()),
            };
            return num.checked_mul(1u64 << shift).ok_or_else(bad);
        }
        self.uint(node, "`memory`").map_err(|_| bad())
    }
}

/// The pipeline's name from its file name: the last path segment without extension.
fn pipeline_name(file: &str) -> String {
    let base = file.rsplit(['/', '\\']).next().unwrap_or(file);
    let stem = match base.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => base,
    };
    if stem.is_empty() {
        "pipeline".to_owned()
    } else {
        stem.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "build", "unit-tests_2.x", "é"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "Build", "1st", "-x", "a b", "a/b", "_x", "a:b"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("resorces", ["resources", "jobs"]),
            Some("resources")
        );
        assert_eq!(suggest("zzz", ["resources", "jobs"]), None);
    }

    #[test]
    fn pipeline_names() {
        assert_eq!(pipeline_name("ci/pipeline.yml"), "pipeline");
        assert_eq!(pipeline_name("deploy"), "deploy");
        assert_eq!(pipeline_name("a\\b\\x.y.yaml"), "x.y");
        assert_eq!(pipeline_name(".hidden"), ".hidden");
        assert_eq!(pipeline_name(""), "pipeline");
    }
}
