//! Where a build's `set_pipeline` steps record pipelines.
//!
//! The build runner reads and checks the pipeline; a [`PipelineSink`] (a server's
//! queue) stores it. A runner with no sink refuses the step: pipelines are only
//! recorded where something keeps them.

use async_trait::async_trait;
use serde_json::Value;

use crate::Result;

/// A pipeline read and checked by a `set_pipeline` step, to record.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct PipelineToSet {
    /// The team: the step's `team`, else `main`.
    pub team: String,
    /// The pipeline's name (`self` already resolved to the build's own).
    pub name: String,
    /// `instance_vars` (an object, or `Null` for none), local vars filled in.
    pub instance_vars: Value,
    /// The file's text, as read: its `((vars))` are the pipeline's, filled in when it
    /// runs, not now.
    pub config: String,
    /// `var_files` merged in order, then `vars` over them (an object; values may be
    /// secrets).
    pub vars: serde_json::Map<String, Value>,
    /// Where the file came from: `artifact/path`.
    pub file: String,
}

impl PipelineToSet {
    /// `team`/`name` from `file`, with no instance vars and no vars.
    pub fn new(
        team: impl Into<String>,
        name: impl Into<String>,
        config: impl Into<String>,
        file: impl Into<String>,
    ) -> Self {
        PipelineToSet {
            team: team.into(),
            name: name.into(),
            instance_vars: Value::Null,
            config: config.into(),
            vars: serde_json::Map::new(),
            file: file.into(),
        }
    }
}

impl std::fmt::Debug for PipelineToSet {
    // Vars may be secrets: only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineToSet")
            .field("team", &self.team)
            .field("name", &self.name)
            .field("instance_vars", &self.instance_vars)
            .field("config_bytes", &self.config.len())
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("file", &self.file)
            .finish()
    }
}

/// What recording did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineRecorded {
    /// The version stored now (1 for a first set).
    pub version: u64,
    /// Whether this set changed the config or the vars.
    pub changed: bool,
}

/// Records pipelines for one build.
#[async_trait]
pub trait PipelineSink: Send + Sync {
    /// Record `p`. A `Conflict` means the build is no longer this runner's to run.
    async fn set_pipeline(&self, p: PipelineToSet) -> Result<PipelineRecorded>;
}
