//! Command-line interface. Every flag has a `JETBRIDGE_*` variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Run CI build plans one pod per step: on this machine with no cluster, or on
/// Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "jetbridge", version, about, propagate_version = true)]
pub struct Cli {
    /// How to print logs and events: `text` for people, `json` for machines.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "JETBRIDGE_LOG_FORMAT"
    )]
    pub log_format: LogFormat,

    /// Colour: `auto` (only on a terminal), `always` or `never`.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        env = "JETBRIDGE_COLOR"
    )]
    pub color: Color,

    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// Colour policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    /// Colour when stdout is a terminal.
    Auto,
    /// Always colour.
    Always,
    /// Never colour.
    Never,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job of a pipeline and print a summary. Exit status: 0 success, 1 failure,
    /// 2 invalid input or configuration, 130 aborted (Ctrl-C).
    Run(RunArgs),
    /// Check a pipeline without running it.
    Validate(ValidateArgs),
    /// Apply the registry's database migrations.
    Migrate(MigrateArgs),
}

/// Pipeline and variables, shared by `run` and `validate`.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// The pipeline file (Concourse YAML).
    #[arg(value_name = "PIPELINE.yml", env = "JETBRIDGE_PIPELINE")]
    pub pipeline: PathBuf,

    /// Fill `((KEY))` placeholders; repeatable. The value is taken as a string.
    #[arg(
        long = "var",
        value_name = "KEY=VALUE",
        env = "JETBRIDGE_VARS",
        value_delimiter = ','
    )]
    pub vars: Vec<String>,
}

/// `jetbridge run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,

    /// The job to run; may be left out when the pipeline has one job.
    #[arg(long, env = "JETBRIDGE_JOB")]
    pub job: Option<String>,

    /// Where artifacts live: a directory (a mounted PVC, GCS FUSE, or any local
    /// directory). Default: `volumes/` under the data directory.
    #[arg(long, value_name = "PATH_OR_URL", env = "JETBRIDGE_VOLUMES")]
    pub volumes: Option<String>,

    /// The artifact registry: `memory` (default) or `postgres://USER@HOST:PORT/DB`.
    #[arg(
        long,
        value_name = "URL",
        default_value = "memory",
        env = "JETBRIDGE_REGISTRY"
    )]
    pub registry: String,

    /// Where steps run. Only `local` (processes on this machine) is available in this
    /// build.
    #[arg(long, value_enum, default_value = "local", env = "JETBRIDGE_BACKEND")]
    pub backend: Backend,

    /// Working data: sandboxes, caches and (by default) volumes. Default:
    /// `$XDG_DATA_HOME/jetbridge` or `~/.local/share/jetbridge`.
    #[arg(long, value_name = "DIR", env = "JETBRIDGE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// The name this worker gives its pods and registry references.
    #[arg(long, default_value = "local", env = "JETBRIDGE_WORKER")]
    pub worker: String,

    /// The build number shown in pod names.
    #[arg(long, default_value_t = 1, env = "JETBRIDGE_BUILD_NUMBER")]
    pub build_number: u64,

    /// Keep step pods (sandboxes) after each step, for debugging; a later run's reaper
    /// removes them.
    #[arg(long, env = "JETBRIDGE_KEEP_PODS")]
    pub keep_pods: bool,
}

/// `jetbridge validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

/// `jetbridge migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The registry database: `postgres://USER@HOST:PORT/DB`.
    #[arg(long, value_name = "URL", env = "JETBRIDGE_REGISTRY")]
    pub registry: String,
}

/// Backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Local processes in sandbox directories.
    Local,
}
