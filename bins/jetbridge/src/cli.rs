//! Command-line interface. Every flag has a `JETBRIDGE_*` variable.
//!
//! Flags that a config file can also set have no clap default: an absent flag (and
//! variable) is `None`, so the file's value or the default in [`crate::settings`]
//! applies. Boolean flags stay plain `bool` switches (their variables take exactly
//! `true`/`false`); whether one was given is read from the [`ArgMatches`].

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Parser, Subcommand, ValueEnum};

use crate::settings::{
    GraceDuration, ImageSettings, KubeSettings, RegistrySettings, ServerSettings, Settings,
    VolumeSettings,
};

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

    /// Read settings from this YAML file (keys in docs/configuration.md, "Config file");
    /// a flag or its variable wins over the file.
    #[arg(long, global = true, value_name = "FILE", env = "JETBRIDGE_CONFIG")]
    pub config: Option<PathBuf>,

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
// Parsed once per process: boxing the large variants would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job of a pipeline and print a summary. Exit status: 0 success, 1 failure,
    /// 2 invalid input or configuration, 130 aborted (Ctrl-C).
    Run(RunArgs),
    /// Check a pipeline without running it.
    Validate(ValidateArgs),
    /// Apply the registry's database migrations.
    Migrate(MigrateArgs),
    /// Run the port and runtime conformance suites against a live Kubernetes cluster
    /// (or the simulator); prints a report, exits 1 if any case failed.
    Conformance(ConformanceArgs),
    /// Serve an HTTP API that queues builds and runs them (a long-running worker);
    /// SIGTERM drains it.
    Server(ServerArgs),
    /// Queue a job of a pipeline on a server; with --watch, follow it as `run` would.
    /// Exit status with --watch: as `run`'s.
    Submit(SubmitArgs),
    /// List a server's builds, newest first.
    Builds(BuildsArgs),
    /// Print a build's events (`-f`: follow them until it ends).
    Logs(LogsArgs),
    /// Abort a build on a server.
    Abort(AbortArgs),
    /// Load-test a server: submit builds (a pipeline, or a built-in mix) at a
    /// concurrency or a rate, sample the server while they run, then give latencies and
    /// a leak verdict. Exit status: 0 when every build ended as expected and nothing
    /// leaked, 1 otherwise (naming what failed), 2 for bad input.
    Load(LoadArgs),
}

/// `jetbridge server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,

    /// Address of the API (JSON over HTTP). Off loopback it needs --api-token-file.
    /// Default: `127.0.0.1:8080`.
    #[arg(long, value_name = "ADDR", env = "JETBRIDGE_LISTEN")]
    pub listen: Option<String>,

    /// Address of the Prometheus endpoint (`/metrics`), apart from the API. Default:
    /// `127.0.0.1:9391`.
    #[arg(long, value_name = "ADDR", env = "JETBRIDGE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,

    /// File of API bearer tokens, one per line (`#` comments and blank lines ignored).
    /// Without it the API serves loopback only.
    #[arg(long, value_name = "FILE", env = "JETBRIDGE_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,

    /// Builds this replica runs at once. Default: 4.
    #[arg(long, value_name = "N", env = "JETBRIDGE_MAX_BUILDS")]
    pub max_builds: Option<usize>,

    /// Queued builds beyond which submissions get 429; 0: no limit. Default: 100.
    #[arg(long, value_name = "M", env = "JETBRIDGE_MAX_QUEUED")]
    pub max_queued: Option<u64>,

    /// On SIGTERM, how long running builds may go on before they are aborted. A
    /// duration: `10m` (the default), `90s`.
    #[arg(long, value_name = "DURATION", value_parser = parse_grace, env = "JETBRIDGE_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<GraceDuration>,

    /// A claimed build's lease: another replica takes the build over once it lapses
    /// (renewed every third of it). Default: `30s`.
    #[arg(long, value_name = "DURATION", value_parser = parse_grace, env = "JETBRIDGE_LEASE_TTL")]
    pub lease_ttl: Option<GraceDuration>,

    /// The largest request body accepted, in bytes (413 beyond). Default: 33554432
    /// (32 MiB).
    #[arg(long, value_name = "BYTES", env = "JETBRIDGE_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,

    /// File whose text is the key that seals submitted `vars` before they are stored
    /// (every replica needs the same; e.g. `openssl rand -hex 32`). Without it, a server
    /// on a Postgres queue refuses submissions with `vars`.
    #[arg(long, value_name = "FILE", env = "JETBRIDGE_VARS_KEY_FILE")]
    pub vars_key_file: Option<PathBuf>,

    /// Run `type: local` resource types of submitted pipelines (their scripts run on
    /// this host, from the directories the submission uploads).
    #[arg(long, env = "JETBRIDGE_ALLOW_LOCAL_RESOURCES")]
    pub allow_local_resources: bool,

    /// Check the settings (flags, variables, config file) as the server does at start,
    /// with no database, cluster or bucket reached and no port bound; print a summary
    /// and exit 0, or the error the server would give and exit 2.
    #[arg(long, env = "JETBRIDGE_CHECK_CONFIG")]
    pub check_config: bool,
}

impl ServerArgs {
    /// The settings given by flags and variables; `m`: the matches of `server`.
    pub fn settings(&self, m: &ArgMatches) -> Settings {
        let ServerArgs {
            worker,
            listen,
            metrics_listen,
            api_token_file,
            max_builds,
            max_queued,
            drain_timeout,
            lease_ttl,
            max_body_bytes,
            vars_key_file,
            allow_local_resources,
            // What to do with the settings, not one of them.
            check_config: _,
        } = self;
        let mut s = worker.settings(m);
        s.server = ServerSettings {
            listen: listen.clone(),
            metrics_listen: metrics_listen.clone(),
            api_token_file: api_token_file.clone(),
            max_builds: *max_builds,
            max_queued: *max_queued,
            drain_timeout: *drain_timeout,
            lease_ttl: *lease_ttl,
            max_body_bytes: *max_body_bytes,
            vars_key_file: vars_key_file.clone(),
            allow_local_resources: switch(m, "allow_local_resources", *allow_local_resources),
        };
        s
    }
}

/// Where the server is, for the client commands.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The server's URL.
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:8080",
        env = "JETBRIDGE_SERVER"
    )]
    pub server: String,

    /// File holding the API token (its first non-comment line).
    #[arg(long, value_name = "FILE", env = "JETBRIDGE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// `jetbridge submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,

    /// The job to run; may be left out when the pipeline has one job.
    #[arg(long, env = "JETBRIDGE_JOB")]
    pub job: Option<String>,

    /// Upload DIR as the artifact NAME, bound before the first step; repeatable.
    #[arg(long = "input", short = 'i', value_name = "NAME=DIR")]
    pub inputs: Vec<String>,

    /// Follow the build and print it as `run` does; exit with its status (Ctrl-C
    /// aborts it).
    #[arg(long, short = 'w')]
    pub watch: bool,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// `jetbridge builds`.
#[derive(Debug, Args)]
pub struct BuildsArgs {
    /// Only builds in these states (comma-separated: queued, running, succeeded,
    /// failed, errored, aborted).
    #[arg(long)]
    pub state: Option<String>,

    /// Only builds of this pipeline.
    #[arg(long)]
    pub pipeline: Option<String>,

    /// Only builds of this job.
    #[arg(long)]
    pub job: Option<String>,

    /// How many.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// `jetbridge logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The build's number.
    pub id: u64,

    /// Follow the build until it ends.
    #[arg(long, short = 'f')]
    pub follow: bool,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// `jetbridge abort`.
#[derive(Debug, Args)]
pub struct AbortArgs {
    /// The build's number.
    pub id: u64,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// `jetbridge load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// A replica's API URL; repeatable (submissions go round-robin). Every replica must
    /// share one queue.
    #[arg(
        long = "server",
        value_name = "URL",
        default_value = "http://127.0.0.1:8080",
        value_delimiter = ',',
        env = "JETBRIDGE_SERVER"
    )]
    pub servers: Vec<String>,

    /// File holding the API token (its first non-comment line).
    #[arg(long, value_name = "FILE", env = "JETBRIDGE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// A replica's metrics URL (`http://HOST:9391/metrics`); repeatable, one per
    /// replica. Sampled during the run; the leak verdict waits for each one's reaper.
    #[arg(
        long = "metrics",
        value_name = "URL",
        value_delimiter = ',',
        env = "JETBRIDGE_LOAD_METRICS"
    )]
    pub metrics: Vec<String>,

    /// Builds to submit in all. Default: 20, or no limit with --duration.
    #[arg(long, value_name = "N", env = "JETBRIDGE_LOAD_BUILDS")]
    pub builds: Option<u64>,

    /// Builds in flight at once (submitted and not ended). Default: 10.
    #[arg(long, value_name = "C", env = "JETBRIDGE_LOAD_CONCURRENCY")]
    pub concurrency: Option<usize>,

    /// Submit at this rate (`5`, `5/s`, `0.5/s`), whatever is in flight; --concurrency,
    /// if given, still caps the builds in flight.
    #[arg(long, value_name = "R/s", env = "JETBRIDGE_LOAD_RATE")]
    pub rate: Option<String>,

    /// A soak: keep submitting for this long (`2m`, `24h`), then wait for the builds in
    /// flight to end.
    #[arg(long, value_name = "DURATION", value_parser = parse_grace, env = "JETBRIDGE_LOAD_DURATION")]
    pub duration: Option<GraceDuration>,

    /// Submit this pipeline (every build the same); its builds must end --expect.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "mix",
        env = "JETBRIDGE_LOAD_PIPELINE"
    )]
    pub pipeline: Option<PathBuf>,

    /// The job of --pipeline; may be left out when it has one job.
    #[arg(long, requires = "pipeline", env = "JETBRIDGE_JOB")]
    pub job: Option<String>,

    /// Fill `((KEY))` placeholders of --pipeline; repeatable.
    #[arg(long = "var", value_name = "KEY=VALUE", requires = "pipeline")]
    pub vars: Vec<String>,

    /// How --pipeline's builds are expected to end: succeeded, failed, errored or
    /// aborted. Default: succeeded.
    #[arg(
        long,
        value_name = "STATE",
        requires = "pipeline",
        env = "JETBRIDGE_LOAD_EXPECT"
    )]
    pub expect: Option<String>,

    /// Submit the built-in mix (the default without --pipeline): get -> task -> put,
    /// in_parallel fan-out, a large artifact, many small files, a cache, and builds that
    /// fail, time out, are aborted or retry on purpose, each with the end it expects.
    #[arg(long)]
    pub mix: bool,

    /// Image of the mix's tasks (it needs `sh`, `head`, `find`, `wc`, `cmp`).
    #[arg(
        long,
        value_name = "IMAGE",
        default_value = "busybox:1.36",
        env = "JETBRIDGE_LOAD_MIX_IMAGE"
    )]
    pub mix_image: String,

    /// Size of the mix's large artifact, in MiB.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 16,
        env = "JETBRIDGE_LOAD_LARGE_MIB"
    )]
    pub large_artifact_mib: u64,

    /// Write report.json, report.md and PNG plots into this directory.
    #[arg(long, value_name = "DIR", env = "JETBRIDGE_LOAD_REPORT")]
    pub report: Option<PathBuf>,

    /// How often to sample the metrics, the pods, the store and the registry.
    #[arg(long, value_name = "DURATION", value_parser = parse_grace, default_value = "2s", env = "JETBRIDGE_LOAD_SAMPLE_EVERY")]
    pub sample_every: GraceDuration,

    /// A build not ended this long after its submission is aborted and counted as an
    /// unexpected outcome.
    #[arg(long, value_name = "DURATION", value_parser = parse_grace, default_value = "10m", env = "JETBRIDGE_LOAD_BUILD_TIMEOUT")]
    pub build_timeout: GraceDuration,

    /// After the last build, how long to wait for every replica's reaper to make a
    /// whole pass before the leak verdict.
    #[arg(long, value_name = "DURATION", value_parser = parse_grace, default_value = "5m", env = "JETBRIDGE_LOAD_REAP_TIMEOUT")]
    pub reap_timeout: GraceDuration,

    /// How long after the first submission a soak's steady state begins (where the RSS
    /// and fd slopes are judged): the allocator and the thread pools grow to their
    /// working size first. Default: a quarter of the submitting.
    #[arg(long, value_name = "DURATION", value_parser = parse_grace, env = "JETBRIDGE_LOAD_WARM_UP")]
    pub warm_up: Option<GraceDuration>,

    /// Over a soak's steady state, the most the fitted RSS of a replica may grow, in
    /// percent of its fitted start.
    #[arg(
        long,
        value_name = "PERCENT",
        default_value_t = 10.0,
        env = "JETBRIDGE_LOAD_MAX_RSS_GROWTH"
    )]
    pub max_rss_growth: f64,

    /// Over a soak's steady state, the most the fitted open fds of a replica may grow.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 16.0,
        env = "JETBRIDGE_LOAD_MAX_FD_GROWTH"
    )]
    pub max_fd_growth: f64,

    /// Kubeconfig of the cluster the servers run steps on: its pods and env Secrets are
    /// counted (those labelled `app.kubernetes.io/managed-by=jetbridge`).
    #[arg(long, value_name = "PATH", env = "JETBRIDGE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context; default: the current one.
    #[arg(long, requires = "kubeconfig", env = "JETBRIDGE_CONTEXT")]
    pub context: Option<String>,

    /// Namespace of the step pods; default: the kubeconfig's.
    #[arg(long, requires = "kubeconfig", env = "JETBRIDGE_NAMESPACE")]
    pub namespace: Option<String>,

    /// The servers' volume store (their --volumes: a directory or a bucket URL), read
    /// to sample its usage (bytes, volumes) and to find volumes left at the end.
    #[arg(long, value_name = "PATH_OR_URL", env = "JETBRIDGE_VOLUMES")]
    pub volumes: Option<String>,

    #[command(flatten)]
    pub bucket: BucketArgs,

    /// The servers' Postgres registry (their --registry), read (never migrated) to
    /// count its artifact and worker rows and find references left at the end.
    #[arg(long, value_name = "URL", env = "JETBRIDGE_REGISTRY")]
    pub registry: Option<String>,

    /// Postgres schema of the registry's tables.
    #[arg(
        long,
        value_name = "SCHEMA",
        requires = "registry",
        env = "JETBRIDGE_REGISTRY_SCHEMA"
    )]
    pub registry_schema: Option<String>,
}

/// Pipeline and variables, shared by `run` and `validate`.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// The pipeline file (Concourse YAML).
    #[arg(value_name = "PIPELINE.yml", env = "JETBRIDGE_PIPELINE")]
    pub pipeline: PathBuf,

    /// Fill `((KEY))` placeholders; repeatable. The value is taken as a string.
    #[arg(long = "var", value_name = "KEY=VALUE", env = "JETBRIDGE_VARS")]
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

    /// The build number shown in pod names.
    #[arg(long, default_value_t = 1, env = "JETBRIDGE_BUILD_NUMBER")]
    pub build_number: u64,

    #[command(flatten)]
    pub worker: WorkerArgs,
}

/// What `run` and `server` share: the backend, the volumes, the registry and the
/// worker's options (every one a setting with a config-file key).
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Where artifacts live: a directory (a mounted PVC, GCS FUSE, or any local
    /// directory), or a bucket: `gs://BUCKET/PREFIX`, `s3://BUCKET/PREFIX`,
    /// `az://CONTAINER/PREFIX`, `memory://`. Default: `volumes/` under the data directory.
    #[arg(long, value_name = "PATH_OR_URL", env = "JETBRIDGE_VOLUMES")]
    pub volumes: Option<String>,

    #[command(flatten)]
    pub bucket: BucketArgs,

    /// The artifact registry: `memory` (default) or `postgres://USER@HOST:PORT/DB`.
    #[arg(long, value_name = "URL", env = "JETBRIDGE_REGISTRY")]
    pub registry: Option<String>,

    /// Postgres schema of the registry's tables (created by the migrations); default:
    /// the server's `search_path` (usually `public`).
    #[arg(long, value_name = "SCHEMA", env = "JETBRIDGE_REGISTRY_SCHEMA")]
    pub registry_schema: Option<String>,

    /// Where steps run: `local` (processes on this machine, the default) or `kube` (a pod
    /// per step).
    #[arg(long, value_enum, env = "JETBRIDGE_BACKEND")]
    pub backend: Option<Backend>,

    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(flatten)]
    pub images: ImageArgs,

    /// Working data: sandboxes, caches and (by default) volumes. Default:
    /// `$XDG_DATA_HOME/jetbridge` or `~/.local/share/jetbridge`.
    #[arg(long, value_name = "DIR", env = "JETBRIDGE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// The name this worker gives its pods and registry references; default:
    /// `<hostname>-<pid>`, unique per run, so concurrent runs never reap each other and
    /// the leftovers of a run whose process is gone are collected by the next one.
    #[arg(long, env = "JETBRIDGE_WORKER")]
    pub worker: Option<String>,

    /// How long the worker's registration lives without a renewal (renewed every third
    /// of it). After a crash, other workers reap its pods once it has lapsed. A
    /// duration: `60s` (the default).
    #[arg(long, value_name = "DURATION", value_parser = parse_grace, env = "JETBRIDGE_WORKER_TTL")]
    pub worker_ttl: Option<GraceDuration>,

    /// Keep step pods (sandboxes) after each step, for debugging; the next run's
    /// reaper removes them once this run's process is gone.
    #[arg(long, env = "JETBRIDGE_KEEP_PODS")]
    pub keep_pods: bool,

    /// After an abort (Ctrl-C, SIGTERM), how long the `on_abort` and `ensure` hooks of
    /// the interrupted steps may run before they are cut short too (a second Ctrl-C
    /// cuts them at once). A duration: `60s` (the default), `2m`.
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = parse_grace,
        env = "JETBRIDGE_ABORT_GRACE"
    )]
    pub abort_grace: Option<GraceDuration>,
}

fn parse_grace(s: &str) -> Result<GraceDuration, String> {
    s.parse()
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
    /// The registry database: `postgres://USER@HOST:PORT/DB` (required, here or in the
    /// config file).
    #[arg(long, value_name = "URL", env = "JETBRIDGE_REGISTRY")]
    pub registry: Option<String>,

    /// Postgres schema of the registry's tables; default: the server's `search_path`.
    #[arg(long, value_name = "SCHEMA", env = "JETBRIDGE_REGISTRY_SCHEMA")]
    pub registry_schema: Option<String>,
}

/// Backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Local processes in sandbox directories.
    Local,
    /// A pod per step on Kubernetes.
    Kube,
}

/// Bucket settings for `--volumes` URLs. Credentials come from the provider's usual
/// chain (GCS application default credentials and Workload Identity; AWS environment
/// and instance roles; Azure environment).
#[derive(Debug, Args)]
pub struct BucketArgs {
    /// Another endpoint than the provider's (MinIO, an emulator, a private endpoint).
    #[arg(long, value_name = "URL", env = "JETBRIDGE_VOLUMES_ENDPOINT")]
    pub volumes_endpoint: Option<String>,

    /// Allow a plain `http://` endpoint.
    #[arg(long, env = "JETBRIDGE_VOLUMES_ALLOW_HTTP")]
    pub volumes_allow_http: bool,

    /// Send no credentials (public buckets, emulators).
    #[arg(long, env = "JETBRIDGE_VOLUMES_ANONYMOUS")]
    pub volumes_anonymous: bool,

    /// Bucket region (S3).
    #[arg(long, value_name = "REGION", env = "JETBRIDGE_VOLUMES_REGION")]
    pub volumes_region: Option<String>,

    /// Store artifacts uncompressed instead of zstd.
    #[arg(long, env = "JETBRIDGE_VOLUMES_NO_COMPRESSION")]
    pub volumes_no_compression: bool,
}

/// Images of resource types and tasks.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// Run resource type TYPE from IMAGE (overrides the built-in `concourse/<type>-resource`);
    /// repeatable.
    #[arg(
        long = "resource-type-image",
        value_name = "TYPE=IMAGE",
        env = "JETBRIDGE_RESOURCE_TYPE_IMAGES",
        value_delimiter = ','
    )]
    pub resource_type_images: Option<Vec<String>>,

    /// Registry prefix put in front of derived images (e.g. `registry.example.com/mirror/`).
    #[arg(long, value_name = "PREFIX", env = "JETBRIDGE_REGISTRY_PREFIX")]
    pub registry_prefix: Option<String>,

    /// Image of tasks that name none.
    #[arg(long, value_name = "IMAGE", env = "JETBRIDGE_DEFAULT_TASK_IMAGE")]
    pub default_task_image: Option<String>,

    /// Image of the built-in `mock` resource type and `mock` task images on Kubernetes:
    /// the jetbridge image (its `/opt/resource` links to the binary). Locally the mock
    /// runs on the host and this is not used.
    #[arg(long, value_name = "IMAGE", env = "JETBRIDGE_MOCK_IMAGE")]
    pub mock_image: Option<String>,
}

/// Kubernetes settings (used with `--backend kube` and by `conformance`).
#[derive(Debug, Args)]
pub struct KubeArgs {
    /// Kubeconfig file; default: `KUBECONFIG`, `~/.kube/config`, else in-cluster.
    #[arg(long, value_name = "PATH", env = "JETBRIDGE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context; default: the current one.
    #[arg(long, env = "JETBRIDGE_CONTEXT")]
    pub context: Option<String>,

    /// Namespace of step pods; default: the kubeconfig's.
    #[arg(long, env = "JETBRIDGE_NAMESPACE")]
    pub namespace: Option<String>,

    /// Image pull secret for step pods; repeatable.
    #[arg(
        long = "image-pull-secret",
        value_name = "NAME",
        env = "JETBRIDGE_IMAGE_PULL_SECRETS",
        value_delimiter = ','
    )]
    pub image_pull_secrets: Option<Vec<String>>,

    /// Service account of step pods (its token is never mounted).
    #[arg(long, env = "JETBRIDGE_SERVICE_ACCOUNT")]
    pub service_account: Option<String>,

    /// Node selector of step pods; repeatable.
    #[arg(
        long = "node-selector",
        value_name = "KEY=VALUE",
        env = "JETBRIDGE_NODE_SELECTOR",
        value_delimiter = ','
    )]
    pub node_selector: Option<Vec<String>>,

    /// Annotation of step pods, e.g. `gke-gcsfuse/volumes=true` for a GCS FUSE artifact
    /// claim on GKE; repeatable.
    #[arg(
        long = "pod-annotation",
        value_name = "KEY=VALUE",
        env = "JETBRIDGE_POD_ANNOTATIONS",
        value_delimiter = ','
    )]
    pub pod_annotations: Option<Vec<String>>,

    /// Toleration of step pods, `KEY[=VALUE]:EFFECT` (no value: operator Exists); repeatable.
    #[arg(
        long = "toleration",
        value_name = "KEY[=VALUE]:EFFECT",
        env = "JETBRIDGE_TOLERATIONS",
        value_delimiter = ','
    )]
    pub tolerations: Option<Vec<String>>,

    /// CPU of steps that ask for none (`500m`, `2`).
    #[arg(long, value_name = "CPU", env = "JETBRIDGE_DEFAULT_CPU")]
    pub default_cpu: Option<String>,

    /// Memory of steps that ask for none (`512Mi`, `2Gi`, bytes).
    #[arg(long, value_name = "MEMORY", env = "JETBRIDGE_DEFAULT_MEMORY")]
    pub default_memory: Option<String>,

    /// Image of the helper containers (a digest-pinned static busybox by default).
    #[arg(long, value_name = "IMAGE", env = "JETBRIDGE_HELPER_IMAGE")]
    pub helper_image: Option<String>,

    /// Image holding the static step-pod helper at `/usr/local/bin/jetbridge-helper`
    /// (the jetbridge image; the chart sets its own). With it, the helper is each step
    /// pod's PID 1 and runs every command, so step images need no shell or `env`.
    #[arg(long, value_name = "IMAGE", env = "JETBRIDGE_STEP_HELPER_IMAGE")]
    pub step_helper_image: Option<String>,

    /// Apply the Pod Security "restricted" profile to step containers.
    #[arg(long, env = "JETBRIDGE_RESTRICTED")]
    pub restricted: bool,

    /// Let steps that ask for it run privileged.
    #[arg(long, env = "JETBRIDGE_ALLOW_PRIVILEGED")]
    pub allow_privileged: bool,

    /// The ReadWriteMany PersistentVolumeClaim that holds `--volumes` (so pods mount
    /// artifacts by subPath instead of streaming them).
    #[arg(long, value_name = "CLAIM", env = "JETBRIDGE_ARTIFACT_CLAIM")]
    pub artifact_claim: Option<String>,

    /// Directory of `--volumes` inside the artifact claim (default empty: its root).
    #[arg(long, value_name = "PATH", env = "JETBRIDGE_ARTIFACT_CLAIM_PREFIX")]
    pub artifact_claim_prefix: Option<String>,

    /// PersistentVolumeClaim for step caches; default: caches start empty every run.
    #[arg(long, value_name = "CLAIM", env = "JETBRIDGE_CACHE_CLAIM")]
    pub cache_claim: Option<String>,
}

/// `jetbridge conformance`.
#[derive(Debug, Args)]
pub struct ConformanceArgs {
    #[command(flatten)]
    pub kube: KubeArgs,

    /// Where artifacts live for the runtime suite: a directory on the artifact claim
    /// (with `--artifact-claim`); default: a temporary directory here, streamed through
    /// pods.
    #[arg(long, value_name = "DIR", env = "JETBRIDGE_VOLUMES")]
    pub volumes: Option<PathBuf>,

    /// Image of the test pods; it needs `sh`, `cat`, `sleep` and `tar`.
    #[arg(long, default_value = "busybox:1.36", env = "JETBRIDGE_TEST_IMAGE")]
    pub image: String,

    /// Suites to run (comma-separated): `pods`, `exec`, `runtime`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "pods,exec,runtime",
        env = "JETBRIDGE_SUITES"
    )]
    pub suites: Vec<String>,

    /// Run the runtime suite's resource scripts from this directory instead of the
    /// `concourse/mock-resource` image (for the simulator, which runs commands on the host).
    #[arg(
        long,
        value_name = "DIR",
        env = "JETBRIDGE_MOCK_RESOURCE_DIR",
        hide = true
    )]
    pub mock_resource_dir: Option<PathBuf>,
}

impl From<Backend> for crate::settings::Backend {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Local => Self::Local,
            Backend::Kube => Self::Kube,
        }
    }
}

/// A boolean switch as a setting: `Some` only when the flag or its variable was given
/// (a variable set to `false` is an explicit `false`), so that a config file's value
/// applies otherwise. `m` holds the matches of the subcommand that has the flag.
fn switch(m: &ArgMatches, id: &str, value: bool) -> Option<bool> {
    matches!(
        m.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
    .then_some(value)
}

impl WorkerArgs {
    /// The settings given by flags and variables; `m`: the matches of `run` or
    /// `server`.
    pub fn settings(&self, m: &ArgMatches) -> Settings {
        // Destructured so that a new flag has to be placed.
        let WorkerArgs {
            volumes,
            bucket,
            registry,
            registry_schema,
            backend,
            kube,
            images,
            data_dir,
            worker,
            worker_ttl,
            keep_pods,
            abort_grace,
        } = self;
        let BucketArgs {
            volumes_endpoint,
            volumes_allow_http,
            volumes_anonymous,
            volumes_region,
            volumes_no_compression,
        } = bucket;
        let ImageArgs {
            resource_type_images,
            registry_prefix,
            default_task_image,
            mock_image,
        } = images;
        Settings {
            backend: backend.map(Into::into),
            volumes: VolumeSettings {
                path_or_url: volumes.clone(),
                endpoint: volumes_endpoint.clone(),
                allow_http: switch(m, "volumes_allow_http", *volumes_allow_http),
                anonymous: switch(m, "volumes_anonymous", *volumes_anonymous),
                region: volumes_region.clone(),
                no_compression: switch(m, "volumes_no_compression", *volumes_no_compression),
            },
            registry: RegistrySettings {
                url: registry.clone(),
                schema: registry_schema.clone(),
            },
            kube: kube.settings(m),
            images: ImageSettings {
                resource_type_images: resource_type_images.clone(),
                registry_prefix: registry_prefix.clone(),
                default_task_image: default_task_image.clone(),
                mock_image: mock_image.clone(),
            },
            data_dir: data_dir.clone(),
            worker: worker.clone(),
            worker_ttl: *worker_ttl,
            keep_pods: switch(m, "keep_pods", *keep_pods),
            abort_grace: *abort_grace,
            server: ServerSettings::default(),
        }
    }
}

impl KubeArgs {
    /// The Kubernetes settings given by flags and variables; `m`: the matches of the
    /// subcommand (`run` or `conformance`).
    pub fn settings(&self, m: &ArgMatches) -> KubeSettings {
        let KubeArgs {
            kubeconfig,
            context,
            namespace,
            image_pull_secrets,
            service_account,
            node_selector,
            pod_annotations,
            tolerations,
            default_cpu,
            default_memory,
            helper_image,
            step_helper_image,
            restricted,
            allow_privileged,
            artifact_claim,
            artifact_claim_prefix,
            cache_claim,
        } = self;
        KubeSettings {
            kubeconfig: kubeconfig.clone(),
            context: context.clone(),
            namespace: namespace.clone(),
            image_pull_secrets: image_pull_secrets.clone(),
            service_account: service_account.clone(),
            node_selector: node_selector.clone(),
            pod_annotations: pod_annotations.clone(),
            tolerations: tolerations.clone(),
            default_cpu: default_cpu.clone(),
            default_memory: default_memory.clone(),
            helper_image: helper_image.clone(),
            step_helper_image: step_helper_image.clone(),
            restricted: switch(m, "restricted", *restricted),
            allow_privileged: switch(m, "allow_privileged", *allow_privileged),
            artifact_claim: artifact_claim.clone(),
            artifact_claim_prefix: artifact_claim_prefix.clone(),
            cache_claim: cache_claim.clone(),
        }
    }
}

impl MigrateArgs {
    /// The registry given by flags and variables.
    pub fn settings(&self) -> RegistrySettings {
        RegistrySettings {
            url: self.registry.clone(),
            schema: self.registry_schema.clone(),
        }
    }
}

/// Parse the command line: the typed arguments and the matches they came from (which
/// know whether a switch was given). Exits on `--help`, `--version` and usage errors,
/// as `Cli::parse` does.
pub fn parse() -> (Cli, ArgMatches) {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    match Cli::from_arg_matches(&matches) {
        Ok(cli) => (cli, matches),
        Err(e) => e.format(&mut Cli::command()).exit(),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;
    use crate::settings::CONFIG_KEYS;

    /// `jetbridge run p.yml ARGS...` as settings (variables of the test process apply).
    fn run_settings(args: &[&str]) -> Settings {
        let m = Cli::command()
            .try_get_matches_from(["jetbridge", "run", "p.yml"].iter().chain(args))
            .expect("parses");
        let cli = Cli::from_arg_matches(&m).expect("typed");
        let Command::Run(run) = &cli.command else {
            panic!("not run")
        };
        run.worker
            .settings(m.subcommand_matches("run").expect("run matches"))
    }

    /// `jetbridge server ARGS...` as settings.
    fn server_settings(args: &[&str]) -> Settings {
        let m = Cli::command()
            .try_get_matches_from(["jetbridge", "server"].iter().chain(args))
            .expect("parses");
        let cli = Cli::from_arg_matches(&m).expect("typed");
        let Command::Server(server) = &cli.command else {
            panic!("not server")
        };
        server.settings(m.subcommand_matches("server").expect("server matches"))
    }

    /// Whether this process has a variable of a `run` argument, which clap would read
    /// (the tests that parse in-process cannot remove it: no `set_var` without unsafe).
    fn caller_sets_run_variables() -> bool {
        let run = crate::settings::docs::server_command();
        let set = run
            .get_arguments()
            .filter_map(|a| a.get_env())
            .any(|e| std::env::var_os(e).is_some());
        if set {
            eprintln!("skipped: a JETBRIDGE_* variable of `run` is set");
        }
        set
    }

    /// The dotted keys a settings value sets (non-null leaves).
    fn set_keys(s: &Settings) -> Vec<String> {
        fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        let key = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&key, v, out);
                    }
                }
                serde_json::Value::Null => {}
                _ => out.push(prefix.to_owned()),
            }
        }
        let mut out = Vec::new();
        walk("", &serde_json::to_value(s).expect("serializes"), &mut out);
        out
    }

    #[test]
    fn no_flag_sets_nothing() {
        if caller_sets_run_variables() {
            return;
        }
        assert_eq!(run_settings(&[]), Settings::default());
    }

    /// Each flag of CONFIG_KEYS, given alone, sets exactly its key: the table and the
    /// conversion agree.
    #[test]
    fn each_flag_sets_its_config_key() {
        if caller_sets_run_variables() {
            return;
        }
        let run = crate::settings::docs::run_command();
        let server = crate::settings::docs::server_command();
        for (key, id) in CONFIG_KEYS {
            let arg = server
                .get_arguments()
                .find(|a| a.get_id() == *id)
                .expect("an argument");
            let in_run = run.get_arguments().any(|a| a.get_id() == *id);
            let flag = format!("--{}", arg.get_long().expect("long"));
            let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
            let value = match *id {
                "backend" => "kube",
                "abort_grace" | "drain_timeout" | "lease_ttl" | "worker_ttl" => "5s",
                "max_builds" | "max_queued" | "max_body_bytes" => "7",
                _ => "a=b",
            };
            let args: Vec<&str> = if takes_value {
                vec![&flag, value]
            } else {
                vec![&flag]
            };
            if in_run {
                let s = run_settings(&args);
                assert_eq!(set_keys(&s), vec![key.to_string()], "run {flag}");
            }
            let s = server_settings(&args);
            assert_eq!(set_keys(&s), vec![key.to_string()], "server {flag}");
        }
    }

    #[test]
    fn switches_are_set_only_when_given() {
        if caller_sets_run_variables() {
            return;
        }
        let s = run_settings(&["--keep-pods", "--restricted"]);
        assert_eq!(s.keep_pods, Some(true));
        assert_eq!(s.kube.restricted, Some(true));
        assert_eq!(s.kube.allow_privileged, None);
        assert_eq!(s.volumes.allow_http, None);
    }
}
