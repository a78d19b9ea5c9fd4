//! `jetbridge`: run CI build plans one pod per step.
//!
//! Exit status: 0 success, 1 build failed, 2 invalid input or configuration, 130 aborted.

mod cli;
mod client;
mod load;
mod mock;
mod output;
mod settings;
mod wiring;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::ArgMatches;
use jetbridge_core::plan::{Pipeline, StepKind, Vars, parse_pipeline};
use jetbridge_core::ports::{Runtime, VolumeStore};
use jetbridge_core::services::{
    BuildRequest, BuildRunner, BuildStatus, HeartbeatConfig, SessionConfig, StepConfig,
    WorkerSession, abort_pair,
};

use crate::cli::{
    Cli, Color, Command, ConformanceArgs, LogFormat, MigrateArgs, PipelineArgs, RunArgs,
};
use crate::output::Printer;
use crate::settings::{Backend, Settings, VolumeSettings};

/// An error the user can fix: printed plainly, exit status 2.
#[derive(Debug)]
pub(crate) struct UserError(String);

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserError {}

fn user(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UserError(msg.into()))
}

fn main() -> ExitCode {
    // Started through a `check`, `in` or `out` link: this process is the mock resource.
    if let Some(code) = mock::run_if_invoked_as_script() {
        return code;
    }
    let (cli, matches) = cli::parse();
    let ansi = cli.color == Color::Always
        || (cli.color == Color::Auto
            && std::io::stderr().is_terminal()
            && std::env::var_os("NO_COLOR").is_none());
    // Made before the tracing layers, which time the server's step phases into them.
    let metrics = Arc::new(jetbridge_server::metrics::Metrics::new(env!(
        "CARGO_PKG_VERSION"
    )));
    let phases = matches!(cli.command, Command::Server(_))
        .then(|| jetbridge_server::metrics::PhaseLayer::new(metrics.clone()));
    let traces = init_tracing(cli.log_format, ansi, phases);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(dispatch(&cli, &matches, &metrics));
    drop(runtime);
    // Send what is still batched before leaving.
    if let Some(p) = traces
        && let Err(e) = p.shutdown()
    {
        eprintln!("warning: not every trace was exported: {e}");
    }
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if let Some(u) = e.downcast_ref::<UserError>() {
                eprintln!("error: {u}");
                ExitCode::from(2)
            } else {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        }
    }
}

/// Logs to stderr, filtered by `JETBRIDGE_LOG`; and, when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// is set, traces over OTLP/HTTP (protobuf, or JSON with
/// `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`): a span per build, per step and per phase.
/// Called before the async runtime exists: the exporter's blocking client makes its own.
fn init_tracing(
    format: LogFormat,
    ansi: bool,
    phases: Option<jetbridge_server::metrics::PhaseLayer>,
) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("JETBRIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
        LogFormat::Text => fmt.without_time().with_filter(filter).boxed(),
    };
    let (provider, traces) = match otlp_provider() {
        Ok(Some(p)) => {
            use opentelemetry::trace::TracerProvider as _;
            // The build, step and phase spans, whatever the log filter says.
            let targets = tracing_subscriber::filter::Targets::new()
                .with_target("jetbridge_server", tracing::Level::INFO)
                .with_target("jetbridge_core", tracing::Level::INFO);
            let layer = tracing_opentelemetry::layer()
                .with_tracer(p.tracer("jetbridge"))
                .with_filter(targets)
                .boxed();
            (Some(p), Some(layer))
        }
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("warning: traces are not exported: {e}");
            (None, None)
        }
    };
    let phases = phases.map(|p| {
        p.with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("jetbridge_core", tracing::Level::INFO),
        )
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .with(phases)
        .init();
    provider
}

fn otlp_provider() -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>, String> {
    use opentelemetry_otlp::WithExportConfig as _;
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        && std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
    {
        return Ok(None);
    }
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
        Ok("http/json") => opentelemetry_otlp::Protocol::HttpJson,
        Ok("http/protobuf") | Err(_) => opentelemetry_otlp::Protocol::HttpBinary,
        Ok(other) => {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported (http/protobuf or http/json)"
            ));
        }
    };
    // The endpoint and headers come from the standard OTEL_EXPORTER_OTLP_* variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
        .map_err(|e| e.to_string())?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("jetbridge")
        .build();
    Ok(Some(
        opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}

/// The settings of the config file, if one is given; none set otherwise.
fn file_settings(cli: &Cli) -> anyhow::Result<Settings> {
    match &cli.config {
        Some(path) => settings::load_file(path).map_err(user),
        None => Ok(Settings::default()),
    }
}

async fn dispatch(
    cli: &Cli,
    matches: &ArgMatches,
    metrics: &Arc<jetbridge_server::metrics::Metrics>,
) -> anyhow::Result<u8> {
    let color = match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let printer = Printer::new(cli.log_format == LogFormat::Json, color);
    // Read for every command, so a broken file is reported whatever the command.
    let file = file_settings(cli)?;
    // The matches of the subcommand: they tell a switch given from one left unset.
    let sub = matches
        .subcommand()
        .map(|(_, m)| m)
        .context("no subcommand")?;
    match &cli.command {
        Command::Run(args) => run(args, file.overlay(args.worker.settings(sub)), printer).await,
        Command::Server(args) => {
            let settings = file.overlay(args.settings(sub));
            if args.check_config {
                check_config(&settings, &printer)
            } else {
                server(settings, printer, metrics.clone()).await
            }
        }
        Command::Submit(args) => client::submit(args, printer).await,
        Command::Builds(args) => client::builds(args, cli.log_format == LogFormat::Json).await,
        Command::Logs(args) => client::logs(args, printer).await,
        Command::Abort(args) => client::abort(args, printer).await,
        Command::Load(args) => load::run(args).await,
        Command::Validate(args) => {
            // As `fly validate-pipeline`: the shape is checked without the values; a
            // variable with none is a warning here (`run` still requires it).
            let path = &args.pipeline.pipeline;
            let text = std::fs::read_to_string(path)
                .map_err(|e| user(format!("cannot read the pipeline {}: {e}", path.display())))?;
            let vars = Vars::from_assignments(args.pipeline.vars.iter())
                .map_err(|e| user(format!("--var: {e}")))?;
            let file = path.display().to_string();
            let missing = jetbridge_core::plan::missing_vars(&text, &file, &vars)
                .map_err(|e| user(e.to_string()))?;
            let pipeline = parse_pipeline(&text, &file, &vars.lenient())
                .map_err(|e| user(with_var_hint(e)))?;
            for (name, at) in &missing {
                printer.warning(&if name.contains(':') {
                    format!(
                        "{at}: `(({name}))` reads a var source that cannot fill it (not declared, not `dummy`, or without that var); `run` refuses it"
                    )
                } else {
                    format!(
                        "{at}: variable `{name}` has no value here; `run` needs one (--var {name}=VALUE)"
                    )
                });
            }
            let steps: usize = pipeline.jobs.iter().map(|j| j.plan.len()).sum();
            printer.info(&format!(
                "{}: valid ({} job(s), {} resource(s), {} top-level step(s))",
                args.pipeline.pipeline.display(),
                pipeline.jobs.len(),
                pipeline.resources.len(),
                steps
            ));
            Ok(0)
        }
        Command::Migrate(args) => migrate(args, file).await,
        Command::Conformance(args) => conformance(args, sub, file).await,
    }
}

pub(crate) fn load_pipeline(args: &PipelineArgs) -> anyhow::Result<(Pipeline, Vars)> {
    let path = &args.pipeline;
    let text = std::fs::read_to_string(path)
        .map_err(|e| user(format!("cannot read the pipeline {}: {e}", path.display())))?;
    let vars = Vars::from_assignments(args.vars.iter()).map_err(|e| user(format!("--var: {e}")))?;
    let file = path.display().to_string();
    let pipeline = parse_pipeline(&text, &file, &vars).map_err(|e| user(with_var_hint(e)))?;
    Ok((pipeline, vars))
}

/// A plan error, with the hint in this interface's terms when a variable has no value.
fn with_var_hint(mut e: jetbridge_core::plan::PlanError) -> String {
    if let Some(name) = e.unfilled.clone() {
        e.hint = Some(format!(
            "pass `--var {name}=...` (or set it in the task step's `vars` for a task file)"
        ));
    }
    e.to_string()
}

async fn run(args: &RunArgs, settings: Settings, printer: Printer) -> anyhow::Result<u8> {
    let (pipeline, vars) = load_pipeline(&args.pipeline)?;
    let job = match &args.job {
        Some(j) => {
            if pipeline.job(j).is_none() {
                let names: Vec<_> = pipeline.jobs.iter().map(|j| j.name.as_str()).collect();
                return Err(user(format!(
                    "the pipeline has no job {j:?}; its jobs: {}",
                    names.join(", ")
                )));
            }
            j.clone()
        }
        None => match pipeline.jobs.as_slice() {
            [only] => only.name.clone(),
            jobs => {
                let names: Vec<_> = jobs.iter().map(|j| j.name.as_str()).collect();
                return Err(user(format!(
                    "the pipeline has {} jobs; choose one with --job NAME ({})",
                    jobs.len(),
                    names.join(", ")
                )));
            }
        },
    };

    // A one-off run stores no pipeline: say so before anything runs.
    if let Some(sp) = pipeline.job(&job).and_then(|j| j.set_pipeline_step()) {
        return Err(user(format!(
            "{}: `set_pipeline` stores a pipeline, and `jetbridge run` runs one job once and \
             stores none (nor does a server yet); leave the step out to run the rest of the job",
            sp.location
        )));
    }
    if settings.backend() == Backend::Kube
        && let Some(rt) = pipeline.resource_types.iter().find(|t| t.type_ == "local")
    {
        return Err(user(format!(
            "{}: resource type {:?} is `type: local`, which runs only on the local backend; \
             give it a `registry-image` type with the image of the resource to run it on Kubernetes",
            rt.location, rt.name
        )));
    }
    // Before reaching the cluster: an image only the settings can give (the built-in
    // `mock`'s) is a configuration error, not a step that errors half-way through.
    if settings.backend() == Backend::Kube
        && let Some(j) = pipeline.job(&job)
        && let Some(e) = wiring::image_resolver(&settings.images, Backend::Kube)?
            .unresolvable_image(&pipeline, j)
    {
        return Err(user(e.message()));
    }
    check_worker_ttl(&settings)?;
    let wired = wiring::wire(&settings).await?;
    if settings.backend() == Backend::Local
        && let Some(job) = pipeline.job(&job)
        && let Some((r, image)) =
            wired
                .images
                .unrunnable_image_resource(&pipeline, job, scripts_on_this_host)
    {
        return Err(user(format!(
            "{}: resource {:?} has type {:?}, whose scripts run in the image {image}; \
             the local backend runs steps as processes on this machine and cannot run a \
             resource image: run it with --backend kube, or give it a resource type of \
             `type: local` whose source.path holds its check, in and out scripts",
            r.location, r.name, r.type_
        )));
    }
    // Concourse honours `hermetic` only on some runtimes; here it is never ignored.
    if !wired.runtime.pods.capabilities().hermetic
        && let Some(step) = pipeline.job(&job).and_then(|j| j.hermetic_step())
        && let StepKind::Task(t) = &step.kind
    {
        return Err(user(format!(
            "{}: task {:?} asks for `hermetic: true` (no network), and the local backend runs \
             steps as processes on this machine, which it cannot cut off the network: run it \
             with --backend kube (each hermetic task's pod gets a NetworkPolicy that denies it \
             all traffic), or set `hermetic: false`",
            step.location, t.name
        )));
    }
    let rt = wired.runtime.clone();
    let worker = wired.worker.clone();
    let keep_pods = settings.keep_pods();
    let abort_grace = settings.abort_grace();

    let base_dir = args
        .pipeline
        .pipeline
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let base_dir = std::fs::canonicalize(if base_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        &base_dir
    })
    .unwrap_or(base_dir);
    let images = wired
        .images
        .clone()
        .with_base_dir(base_dir.to_string_lossy().into_owned());
    let config = StepConfig {
        keep_pods,
        ..StepConfig::default()
    };
    let printer = Arc::new(printer);
    let runner = BuildRunner::new(rt.clone(), config, images, worker.clone(), printer.clone())
        .with_abort_grace(abort_grace);
    // The session registers the worker (other workers see it alive; its references
    // protect what it runs), stops the build if the registration cannot be renewed,
    // and at the end makes the last reaper pass and signs off. Kept pods stay for
    // debugging: the next run reaps them once this process is gone.
    let session = WorkerSession::start(
        rt,
        runner,
        SessionConfig::new(worker.clone())
            .with_heartbeat(HeartbeatConfig::with_ttl(
                worker.clone(),
                settings.worker_ttl(),
            ))
            .with_reaper(wired.reaper_config())
            .with_reap_every(None)
            .with_reap_pods_at_end(!keep_pods),
    )
    .await
    .map_err(|e| match e.kind() {
        jetbridge_core::ErrorKind::AlreadyExists => user(format!("--worker {worker:?}: {e}")),
        _ => user(format!("--registry: {e}")),
    })?;
    // Leftovers of earlier runs whose process is gone (same host), or whose heartbeat
    // expired: their pods, and what nothing references any more.
    if let Ok(report) = session.reap_now().await
        && !report.pods_deleted.is_empty()
    {
        tracing::info!(pods = ?report.pods_deleted, "removed pods left by an earlier run");
    }
    let result = session_run(
        &session,
        args,
        pipeline,
        vars,
        job,
        printer.clone(),
        abort_grace,
    )
    .await;
    // On every path: the last pass, then the name is free at once and what this run
    // still references stops protecting.
    match session.shutdown().await {
        Ok(r) if !r.errors.is_empty() => {
            tracing::warn!(errors = ?r.errors, "cleanup was incomplete")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cleanup failed; the next run retries it"),
    }
    if let Some(dir) = wired.own_volumes_dir()
        && !keep_pods
    {
        let _ = std::fs::remove_dir_all(dir);
    }
    let (outcome, took) = match result? {
        Ran::Finished(outcome, took) => (outcome, took),
        Ran::Left => return Ok(130),
    };
    printer.summary(&outcome, took);
    Ok(match outcome.status {
        BuildStatus::Succeeded => 0,
        BuildStatus::Aborted => 130,
        BuildStatus::Failed | BuildStatus::Errored => 1,
    })
}

/// How the build of `run` ended.
enum Ran {
    Finished(jetbridge_core::services::BuildOutcome, std::time::Duration),
    /// A third Ctrl-C: leave without cleaning up.
    Left,
}

/// The build of `run`, in its session, with Ctrl-C and SIGTERM handled in two stages.
async fn session_run(
    session: &WorkerSession,
    args: &RunArgs,
    pipeline: Pipeline,
    vars: Vars,
    job: String,
    printer: Arc<Printer>,
    abort_grace: std::time::Duration,
) -> anyhow::Result<Ran> {
    let build_id = format!(
        "{}/{}/{}-{}",
        pipeline.name,
        job,
        args.build_number,
        jetbridge_core::names::StepHandle::random().short()
    );
    printer.info(&format!(
        "running job {job} of pipeline {} (build {})",
        pipeline.name, args.build_number
    ));
    // Listen before the build starts: a signal that came before the first poll of a
    // lazily created listener would take the default action and kill us, leaving pods
    // and no hooks run. A `Signal` stream also keeps a signal that arrives between two
    // `recv` calls, so a quick second Ctrl-C is never lost.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| anyhow::anyhow!("cannot listen for SIGINT: {e}"))?;
    // SIGTERM (a container runtime stopping us) counts as Ctrl-C.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| anyhow::anyhow!("cannot listen for SIGTERM: {e}"))?;
    let (abort, signal) = abort_pair();
    let abort = Arc::new(abort);
    let started = Instant::now();
    let build = session.run(
        BuildRequest::new(Arc::new(pipeline), job, args.build_number, build_id)
            .with_vars(vars)
            .with_abort(signal)
            .with_events(printer.clone()),
        abort.clone(),
    );
    tokio::pin!(build);
    let mut interrupts = 0u8;
    let outcome = loop {
        tokio::select! {
            r = &mut build => break r,
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
        interrupts += 1;
        match interrupts {
            1 => {
                printer.info(&format!(
                    "interrupted: aborting the build; on_abort and ensure hooks run for up to {} \
                     (press Ctrl-C again to skip them)",
                    jetbridge_core::services::fmt_duration(abort_grace)
                ));
                abort.abort();
            }
            2 => {
                printer.info(
                    "interrupted again: skipping the hooks, removing this run's pods \
                     (press Ctrl-C once more to leave at once)",
                );
                abort.force();
            }
            _ => {
                eprintln!("error: left without cleaning up; the next run removes what is left");
                return Ok(Ran::Left);
            }
        }
    };
    let outcome = outcome.map_err(|e| user(e.to_string()))?;
    Ok(Ran::Finished(outcome, started.elapsed()))
}

/// A registration renewed every third of its life needs a few seconds of it.
fn check_worker_ttl(settings: &Settings) -> anyhow::Result<()> {
    if settings.worker_ttl() < std::time::Duration::from_secs(3) {
        return Err(user(
            "--worker-ttl must be at least 3s (the registration is renewed every third of it)",
        ));
    }
    Ok(())
}

/// The tokens of a token file: one per line, `#` comments and blank lines ignored.
/// The tokens of a token file's text: one per line, `#` comments and blank lines
/// ignored (the server's file and the client's read alike).
pub(crate) fn token_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

fn read_tokens(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        user(format!(
            "--api-token-file: cannot read {}: {e}",
            path.display()
        ))
    })?;
    let tokens: Vec<String> = token_lines(&text).map(str::to_owned).collect();
    if tokens.is_empty() {
        return Err(user(format!(
            "--api-token-file {}: the file holds no token (one per line)",
            path.display()
        )));
    }
    if let Some(short) = tokens.iter().find(|t| t.len() < 16) {
        return Err(user(format!(
            "--api-token-file {}: a token of {} characters is too easy to guess; use at least 16 \
             (e.g. `openssl rand -hex 32`)",
            path.display(),
            short.len()
        )));
    }
    Ok(tokens)
}

fn parse_addr(flag: &str, text: &str) -> anyhow::Result<std::net::SocketAddr> {
    text.parse().map_err(|_| {
        user(format!(
            "{flag} {text:?}: give an address as IP:PORT (e.g. 127.0.0.1:8080 or 0.0.0.0:8080)"
        ))
    })
}

/// What `server` makes of its settings before it binds or connects anything: every
/// check that needs no network. `server` and `server --check-config` both start with
/// [`plan_server`], so the check cannot pass what the start would refuse.
#[derive(Debug)]
struct ServerPlan {
    listen: std::net::SocketAddr,
    metrics_listen: std::net::SocketAddr,
    /// Without its metrics, which the caller adds.
    config: jetbridge_server::ServerConfig,
    wiring: wiring::Plan,
}

fn plan_server(settings: &Settings) -> anyhow::Result<ServerPlan> {
    use jetbridge_server::ServerConfig;
    let srv = &settings.server;
    let listen = parse_addr(
        "--listen",
        srv.listen.as_deref().unwrap_or(settings::DEFAULT_LISTEN),
    )?;
    let metrics_listen = parse_addr(
        "--metrics-listen",
        srv.metrics_listen
            .as_deref()
            .unwrap_or(settings::DEFAULT_METRICS_LISTEN),
    )?;
    let tokens = match &srv.api_token_file {
        Some(path) => read_tokens(path)?,
        None => Vec::new(),
    };
    if tokens.is_empty() && !listen.ip().is_loopback() {
        return Err(user(format!(
            "--listen {listen} is reachable from other machines, and the API has no token: \
             give --api-token-file FILE (one token per line), or listen on 127.0.0.1"
        )));
    }
    let vars_key = match &srv.vars_key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                user(format!(
                    "--vars-key-file: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            let key = jetbridge_server::secret::VarsKey::from_text(&text).ok_or_else(|| {
                user(format!(
                    "--vars-key-file {}: the key must be at least 32 characters \
                     (e.g. `openssl rand -hex 32`)",
                    path.display()
                ))
            })?;
            Some(Arc::new(key))
        }
        None => None,
    };
    let max_builds = srv.max_builds.unwrap_or(4);
    if max_builds == 0 {
        return Err(user("--max-builds must be at least 1"));
    }
    let defaults = ServerConfig::default();
    let config = ServerConfig {
        max_builds,
        max_queued: match srv.max_queued {
            Some(0) => None,
            Some(n) => Some(n),
            None => defaults.max_queued,
        },
        lease_ttl: srv.lease_ttl.map_or(defaults.lease_ttl, |d| d.0),
        drain_timeout: srv.drain_timeout.map_or(defaults.drain_timeout, |d| d.0),
        abort_grace: settings.abort_grace(),
        tokens,
        max_body_bytes: srv.max_body_bytes.unwrap_or(defaults.max_body_bytes),
        allow_local_resources: srv.allow_local_resources.unwrap_or(false),
        vars_key,
        ..defaults
    };
    // A dead replica's builds are taken over about one lease after it died.
    let config = ServerConfig {
        reap_lapsed_every: config.reap_lapsed_every.min(config.lease_ttl),
        ..config
    };
    if config.lease_ttl < std::time::Duration::from_secs(1) {
        return Err(user("--lease-ttl must be at least 1s"));
    }
    check_worker_ttl(settings)?;
    let wiring = wiring::plan(settings)?;
    Ok(ServerPlan {
        listen,
        metrics_listen,
        config,
        wiring,
    })
}

/// `jetbridge server --check-config`: the checks of [`plan_server`] alone, then one
/// line of what the server would run with. Secrets (tokens, the vars key, a password
/// in the registry URL) are counted or named, never printed.
fn check_config(settings: &Settings, printer: &Printer) -> anyhow::Result<u8> {
    let plan = plan_server(settings)?;
    let backend = match &plan.wiring.backend {
        wiring::BackendPlan::Local => "local".to_owned(),
        wiring::BackendPlan::Kube(cfg) => match &cfg.namespace {
            Some(ns) => format!("kube (namespace {ns})"),
            None => "kube".to_owned(),
        },
    };
    let tokens = match plan.config.tokens.len() {
        0 => "no API token (loopback only)".to_owned(),
        1 => "1 API token".to_owned(),
        n => format!("{n} API tokens"),
    };
    let vars_key = if plan.config.vars_key.is_some() {
        ", vars key set"
    } else {
        ""
    };
    printer.info(&format!(
        "config OK: backend {backend}, registry {}, volumes {}, listen {}, metrics {}, {tokens}{vars_key}",
        plan.wiring.registry.summary(),
        plan.wiring.volumes.summary(),
        plan.listen,
        plan.metrics_listen,
    ));
    Ok(0)
}

/// Whether a resource image's scripts directory exists on this machine, so the local
/// backend can run them (a simulator's mock scripts, an image's files copied here).
pub(crate) fn scripts_on_this_host(dir: &str) -> bool {
    Path::new(dir).join("check").is_file()
}

/// `jetbridge server`: serve until SIGTERM or Ctrl-C, then drain.
async fn server(
    settings: Settings,
    printer: Printer,
    metrics: Arc<jetbridge_server::metrics::Metrics>,
) -> anyhow::Result<u8> {
    use jetbridge_core::services::NoEvents;
    use jetbridge_server::{Server, ServerConfig};
    let ServerPlan {
        listen,
        metrics_listen,
        config,
        wiring: plan,
    } = plan_server(&settings)?;
    let config = ServerConfig {
        metrics: Some(metrics.clone()),
        ..config
    };
    let api = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| user(format!("--listen {listen}: cannot listen: {e}")))?;
    let metrics_socket = tokio::net::TcpListener::bind(metrics_listen)
        .await
        .map_err(|e| {
            user(format!(
                "--metrics-listen {metrics_listen}: cannot listen: {e}"
            ))
        })?;
    // The bound addresses (a port of 0 is chosen by the system).
    let listen = api.local_addr().unwrap_or(listen);
    let metrics_listen = metrics_socket.local_addr().unwrap_or(metrics_listen);

    let wired = wiring::open(plan).await?;
    let queue = wired.queue();
    if let Some(probe) = wired.pool_probe() {
        metrics.set_pool_probe(probe);
    }
    if let Some(kube) = wired.kube.clone() {
        let requests = kube.requests().clone();
        metrics.set_request_probe(Box::new(move || {
            requests
                .snapshot()
                .into_iter()
                .map(|(verb, code, n)| (verb.to_owned(), code, n))
                .collect()
        }));
        let selector = jetbridge_core::names::worker_selector(&wired.worker);
        metrics.set_secrets_probe(Box::new(move || {
            let kube = kube.clone();
            let selector = selector.clone();
            Box::pin(async move { kube.count_secrets(&selector).await.ok().map(|n| n as u64) })
        }));
    }
    let mut rt = wired.runtime.clone();
    // Artifact bytes and refused reads are counted on their way through the store.
    rt.volumes = rt.volumes.take().map(|v| {
        Arc::new(jetbridge_server::metrics::CountingVolumes::new(
            v,
            metrics.clone(),
        )) as Arc<dyn jetbridge_core::ports::VolumeStore>
    });
    let worker = wired.worker.clone();
    let keep_pods = settings.keep_pods();
    let runner = BuildRunner::new(
        rt.clone(),
        StepConfig {
            keep_pods,
            ..StepConfig::default()
        },
        wired.images.clone(),
        worker.clone(),
        Arc::new(NoEvents),
    )
    .with_abort_grace(settings.abort_grace());
    let session = WorkerSession::start(
        rt,
        runner,
        SessionConfig::new(worker.clone())
            .with_heartbeat(HeartbeatConfig::with_ttl(
                worker.clone(),
                settings.worker_ttl(),
            ))
            // A dead worker's pods are reaped within about one registration lifetime.
            .with_reap_every(Some(
                settings
                    .worker_ttl()
                    .min(std::time::Duration::from_secs(60)),
            ))
            .with_reaper(wired.reaper_config())
            .with_reap_pods_at_end(!keep_pods)
            .with_on_reap({
                let metrics = metrics.clone();
                Arc::new(move |r| metrics.reaped(r))
            }),
    )
    .await
    .map_err(|e| match e.kind() {
        jetbridge_core::ErrorKind::AlreadyExists => user(format!("--worker {worker:?}: {e}")),
        _ => user(format!("--registry: {e}")),
    })?;
    // Leftovers of earlier processes whose worker is gone.
    if let Err(e) = session.reap_now().await {
        tracing::warn!(error = %e, "the first reaper pass failed; the next retries");
    }
    let local_backend = settings.backend() == Backend::Local;
    let server = Server::start(queue, session, wired.images.clone(), local_backend, config)
        .context("starting the server")?;

    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| anyhow::anyhow!("cannot listen for SIGINT: {e}"))?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| anyhow::anyhow!("cannot listen for SIGTERM: {e}"))?;
    let (stop_http, http_stopped) = tokio::sync::watch::channel(false);
    let serve = |listener: tokio::net::TcpListener, router: axum::Router| {
        let mut rx = http_stopped.clone();
        tokio::spawn(async move {
            use axum::serve::ListenerExt as _;
            // Without it, an event written after a quiet moment waits for the client's
            // delayed ACK (40 ms on Linux): Nagle's algorithm holds small writes.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        })
    };
    let api_task = serve(api, server.router());
    let metrics_task = serve(metrics_socket, server.metrics_router());
    printer.info(&format!(
        "jetbridge server {} (worker {worker}): API on http://{listen}, metrics on http://{metrics_listen}/metrics",
        env!("CARGO_PKG_VERSION")
    ));
    let lost = tokio::select! {
        _ = sigint.recv() => None,
        _ = sigterm.recv() => None,
        // Unregistered, the replica can run nothing: drain what is left and exit, so
        // that the platform starts a fresh one.
        why = server.wait_lost() => Some(why),
    };
    if let Some(why) = &lost {
        eprintln!("error: the worker's registration was lost ({why}); draining and exiting");
    }
    printer.info(&format!(
        "draining: no new claims; running builds have {} to finish",
        jetbridge_core::services::fmt_duration(server.shared_drain_timeout())
    ));
    let drain = server.clone().drain();
    tokio::pin!(drain);
    let drained = tokio::select! {
        r = &mut drain => r,
        _ = sigint.recv() => {
            eprintln!("error: interrupted again: leaving without draining; another replica takes the builds over");
            return Ok(130);
        }
    };
    // The API stays up during the drain (readiness 503, event streams); open streams
    // of builds queued elsewhere get a moment to close.
    stop_http.send_replace(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = api_task.await;
        let _ = metrics_task.await;
    })
    .await;
    if let Some(dir) = wired.own_volumes_dir()
        && !keep_pods
    {
        let _ = std::fs::remove_dir_all(dir);
    }
    match drained {
        Ok(()) if lost.is_some() => Ok(1),
        Ok(()) => {
            printer.info("drained; bye");
            Ok(0)
        }
        Err(e) => Err(anyhow::anyhow!("the drain was incomplete: {e}")),
    }
}

async fn migrate(args: &MigrateArgs, file: Settings) -> anyhow::Result<u8> {
    let registry = file.registry.overlay(args.settings());
    let Some(url) = registry.url.as_deref() else {
        return Err(user(
            "migrate needs the registry database: give --registry postgres://USER@HOST:PORT/DB \
             (or JETBRIDGE_REGISTRY, or registry.url in the config file)",
        ));
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(user(
            "--registry must be a postgres:// URL; the memory registry has nothing to migrate",
        ));
    }
    let opts = jetbridge_postgres::PgOptions {
        schema: registry.schema.clone(),
        ..jetbridge_postgres::PgOptions::default()
    };
    let applied = jetbridge_postgres::migrate_with(url, &opts)
        .await
        .context("applying migrations")?;
    println!("applied {applied} migration(s)");
    Ok(0)
}

/// `conformance`: the Kubernetes settings come from flags, variables and the config
/// file as for `run`; its other flags are its own.
async fn conformance(
    args: &ConformanceArgs,
    matches: &ArgMatches,
    file: Settings,
) -> anyhow::Result<u8> {
    use jetbridge_conformance::{BackendSubject, CaseOutcome, RuntimeSubject, Status};
    let kube = file.kube.overlay(args.kube.settings(matches));
    // Its volumes are a directory of its own (not the file's store), with no bucket.
    let no_bucket = VolumeSettings::default();
    let worker = format!(
        "conformance-{}",
        jetbridge_core::names::StepHandle::random().short()
    );
    let backend = Arc::new(wiring::kube_backend(&kube, &worker).await?);
    let mut all: Vec<CaseOutcome> = Vec::new();
    for suite in &args.suites {
        let outcomes = match suite.as_str() {
            "pods" | "exec" => {
                let subject =
                    BackendSubject::new(backend.clone(), backend.clone(), args.image.clone());
                if suite == "pods" {
                    jetbridge_conformance::pods::run_all(&subject).await
                } else {
                    jetbridge_conformance::exec::run_all(&subject).await
                }
            }
            "runtime" => {
                // Without --volumes, a directory store in a temporary directory here: the
                // cluster cannot mount it, so artifacts stream through the pods.
                let scratch;
                let volumes: Arc<dyn VolumeStore> = match &args.volumes {
                    Some(dir) => {
                        wiring::open_volumes(
                            Some(&dir.to_string_lossy()),
                            dir,
                            &kube,
                            &no_bucket,
                            true,
                        )
                        .await?
                    }
                    None => {
                        scratch = tempfile::Builder::new()
                            .prefix("jetbridge-conformance-")
                            .tempdir()
                            .context("creating a temporary directory for the artifacts")?;
                        let dir = scratch.path().to_string_lossy().into_owned();
                        wiring::open_volumes(Some(&dir), scratch.path(), &kube, &no_bucket, false)
                            .await?
                    }
                };
                // The built-in `mock` runs in the image the settings name
                // (`images.mock-image`: the chart sets its own), as `run` runs it;
                // without one its case fails, naming the setting.
                let images = wiring::image_resolver(&file.images, Backend::Kube)?;
                if let Some(dir) = &args.mock_resource_dir {
                    // The suite's `jb-mock` scripts, for a simulator that serves them as
                    // the `/opt/resource` of Concourse's mock image
                    // (`Simulator::image_file`).
                    jetbridge_conformance::runtime::write_mock_resource(dir).with_context(
                        || format!("writing the mock resource to {}", dir.display()),
                    )?;
                }
                let rt = Runtime {
                    pods: backend.clone(),
                    exec: backend.clone(),
                    volumes: Some(volumes),
                    registry: Arc::new(jetbridge_memory_registry::MemoryRegistry::new()),
                };
                let subject = RuntimeSubject::new(
                    rt,
                    "{name: jb-mock, type: registry-image, source: {repository: concourse/mock-resource}}",
                    images,
                );
                // Whole plans, then how they end when stopped.
                let mut outcomes = jetbridge_conformance::runtime::run_all(&subject).await;
                outcomes.extend(jetbridge_conformance::lifecycle::run_all(&subject).await);
                outcomes
            }
            other => {
                return Err(user(format!(
                    "--suites: no suite {other:?} (pods, exec, runtime)"
                )));
            }
        };
        for o in &outcomes {
            println!("{suite:8} {o}");
        }
        all.extend(outcomes);
    }
    let count = |s: Status| all.iter().filter(|o| o.status() == s).count();
    let (passed, failed, skipped) = (
        count(Status::Passed),
        count(Status::Failed),
        count(Status::Skipped),
    );
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    Ok(if failed == 0 { 0 } else { 1 })
}
