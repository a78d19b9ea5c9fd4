//! Pipelines and task configs: parsing, variables, durations and validation.
//!
//! [`parse_pipeline`] reads a Concourse-compatible pipeline subset;
//! [`parse_task_config`] reads a task config (a task file loaded at run time). Both
//! fill `((var))` placeholders from [`Vars`] first, then convert and check the YAML
//! into the [`model`]. Every problem is a [`PlanError`] naming file, line and column.
//!
//! # The subset
//!
//! - Top level: `resources`, `resource_types`, `jobs`.
//! - `resources[]`: `name`, `type` (a base type — `time`, `git`, `registry-image`, `s3`,
//!   `docker-image`, `pool`, `semver`, `mock` — or a declared resource type), `source`.
//! - `resource_types[]`: `name`, `type` (`registry-image` or `docker-image` with
//!   `source.repository`, or `local` with `source.path`), `source`, `defaults` (merged
//!   under the `source` of every resource of the type).
//! - `jobs[]`: `name`, `plan`, and the hooks `on_success`, `on_failure`, `on_error`,
//!   `on_abort`, `ensure`.
//! - Steps: `get` (`resource`, `version`, `params`, `passed`, `trigger`), `put`
//!   (`resource`, `params`, `get_params`, `inputs`: `all` | `detect` | list, `no_get`),
//!   `task` (`config` or `file`, `params`, `input_mapping`, `output_mapping`,
//!   `privileged`, `vars`), `in_parallel` (a list, or `steps`, `limit`, `fail_fast`),
//!   `do`; on any step the modifiers `attempts`, `timeout` and the hooks above.
//! - Task config: `platform` (`linux`), `image_resource` (`type`, `source`), `inputs`
//!   (`name`, `path`, `optional`), `outputs` (`name`, `path`), `caches` (`path`),
//!   `params`, `run` (`path`, `args`, `dir`, `user`), `container_limits` (`cpu`,
//!   `memory`).
//!
//! Any other key is an error, except these Concourse keys, which only matter to a
//! scheduler or a UI and are accepted and ignored:
//!
//! - top level: `groups`, `display`;
//! - resources: `public`, `icon`, `check_every`, `check_timeout`, `tags`,
//!   `webhook_token`, `expose_build_created_by`, `old_name`;
//! - resource types: `check_every`, `tags`, `privileged`, `params`;
//! - jobs: `public`, `serial`, `serial_groups`, `max_in_flight`, `build_log_retention`,
//!   `build_logs_to_retain`, `interruptible`, `disable_manual_trigger`, `old_name`;
//! - steps: `tags`;
//! - `image_resource`: `name`, `params`.
//!
//! # Checks
//!
//! Names (jobs, resources, resource types, steps, artifacts) follow the Concourse rule:
//! lowercase letters, digits, `-`, `_` and `.`, starting with a letter. Names must be
//! unique where they would clash (jobs, resources, resource types, tasks within a job,
//! the artifacts one task's outputs bind, the artifacts sibling `in_parallel` steps
//! produce). `get`/`put` must name a declared resource, a resource a known type, and
//! `passed` a declared job. Every input (task inputs after `input_mapping`, `put`
//! `inputs`, the artifact of a task `file`) must be produced by an earlier step:
//! `in_parallel` siblings do not see each other's outputs, `do` runs in order, and a
//! hook sees what its step produced plus everything before. Optional task inputs may be
//! missing. After a task loaded from a `file`, whose outputs are unknown until it runs,
//! missing inputs are no longer reported. `attempts` and `limit` are at least 1;
//! `timeout` is a Go duration ([`parse_duration`]).
//!
//! # Units
//!
//! `container_limits.cpu` is Concourse CPU shares (1024 = one CPU, stored as
//! millicores, rounded up) or a string of millicores (`"500m"`); `memory` is bytes or a
//! string with a binary unit (`512MB`, `1Gi`). Task `params` values may be strings,
//! numbers or booleans (kept as their text); lists and mappings become JSON, null
//! becomes empty.

mod duration;
mod error;
pub mod model;
mod node;
mod parse;
mod vars;

pub use duration::parse_duration;
pub use error::PlanError;
pub use model::*;
pub use parse::BASE_RESOURCE_TYPES;
pub use vars::{LocalVars, Vars, fill_locals, fill_locals_json, missing_vars};

/// Whether `name` is a valid name for a job, resource, resource type, step or artifact
/// (Concourse rule: lowercase letters, digits, `-`, `_` and `.`, starting with a letter).
pub fn is_valid_name(name: &str) -> bool {
    parse::valid_name(name)
}

/// Parse and check a pipeline.
///
/// `file` is the name errors are reported against (and the pipeline's name comes
/// from: its last segment without extension). `vars` fill `((var))` placeholders
/// anywhere in the file; one without a value is an error.
pub fn parse_pipeline(text: &str, file: &str, vars: &Vars) -> Result<Pipeline, PlanError> {
    let root = node::load(text, file)?;
    let vars = with_var_sources(&root, vars, file)?;
    let root = vars::interpolate(&root, &vars, file)?;
    parse::Cx::new(file).pipeline(&root)
}

/// `vars` with the pipeline's `var_sources`, read first (their own `((vars))` filled
/// from `vars`), so `((source:name))` placeholders can be filled from them.
pub(crate) fn with_var_sources(
    root: &node::Node,
    vars: &Vars,
    file: &str,
) -> Result<Vars, PlanError> {
    let node::Value::Map(entries) = &root.value else {
        return Ok(vars.clone());
    };
    let Some((_, sources)) = entries
        .iter()
        .find(|(k, _)| matches!(&k.value, node::Value::Str(s) if s == "var_sources"))
    else {
        return Ok(vars.clone());
    };
    let sources = vars::interpolate(sources, vars, file)?;
    let sources = parse::Cx::new(file).var_sources(&sources)?;
    Ok(vars.clone().with_sources(sources))
}

/// [`parse_pipeline`] for a build whose artifacts `bound` exist before its first step
/// (inputs uploaded with the submission): steps may take them as inputs.
pub fn parse_pipeline_with_inputs(
    text: &str,
    file: &str,
    vars: &Vars,
    bound: impl IntoIterator<Item = String>,
) -> Result<Pipeline, PlanError> {
    let root = node::load(text, file)?;
    let vars = with_var_sources(&root, vars, file)?;
    let root = vars::interpolate(&root, &vars, file)?;
    parse::Cx::new(file).with_bound(bound).pipeline(&root)
}

/// Parse and check a task config, e.g. a task file loaded from an artifact when its
/// step runs.
///
/// `file` is the name errors are reported against (for a task file, e.g.
/// `repo/ci/test.yml`). `vars` fill `((var))` placeholders; for a task file pass the
/// pipeline's vars overlaid with the step's `vars` ([`Vars::overlay`]).
pub fn parse_task_config(text: &str, file: &str, vars: &Vars) -> Result<TaskConfig, PlanError> {
    let root = node::load(text, file)?;
    let root = vars::interpolate(&root, vars, file)?;
    parse::Cx::new(file)
        .task_config(&root)
        .map(|(config, _)| config)
}
