//! `jetbridge`: run CI build plans one pod per step.
//!
//! Exit status: 0 success, 1 build failed, 2 invalid input or configuration, 130 aborted.

mod cli;
mod output;

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::Context;
use clap::Parser;
use jetbridge_core::images::ImageResolver;
use jetbridge_core::plan::{Pipeline, Vars, parse_pipeline};
use jetbridge_core::ports::{ArtifactRegistry, Exec, Pods, Runtime, VolumeStore};
use jetbridge_core::services::{
    AbortReason, BuildRequest, BuildRunner, BuildStatus, Heartbeat, HeartbeatConfig, Reaper,
    ReaperConfig, StepConfig, abort_pair,
};

use crate::cli::{
    Backend, BucketArgs, Cli, Color, Command, ConformanceArgs, ImageArgs, KubeArgs, LogFormat,
    MigrateArgs, PipelineArgs, RunArgs,
};
use crate::output::Printer;

/// An error the user can fix: printed plainly, exit status 2.
#[derive(Debug)]
struct UserError(String);

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
    let cli = Cli::parse();
    let ansi = cli.color == Color::Always
        || (cli.color == Color::Auto
            && std::io::stderr().is_terminal()
            && std::env::var_os("NO_COLOR").is_none());
    init_tracing(cli.log_format, ansi);
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
    let result = runtime.block_on(dispatch(&cli));
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

fn init_tracing(format: LogFormat, ansi: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("JETBRIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.without_time().init(),
    }
}

async fn dispatch(cli: &Cli) -> anyhow::Result<u8> {
    let color = match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let printer = Printer::new(cli.log_format == LogFormat::Json, color);
    match &cli.command {
        Command::Run(args) => run(args, printer).await,
        Command::Validate(args) => {
            let (pipeline, _) = load_pipeline(&args.pipeline)?;
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
        Command::Migrate(args) => migrate(args).await,
        Command::Conformance(args) => conformance(args).await,
    }
}

fn load_pipeline(args: &PipelineArgs) -> anyhow::Result<(Pipeline, Vars)> {
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

fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("jetbridge");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".local/share/jetbridge");
    }
    PathBuf::from(".jetbridge")
}

async fn open_registry(
    url: &str,
    schema: Option<&str>,
) -> anyhow::Result<Arc<dyn ArtifactRegistry>> {
    if url == "memory" || url == "memory://" {
        return Ok(Arc::new(jetbridge_memory_registry::MemoryRegistry::new()));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let opts = jetbridge_postgres::PgOptions {
            schema: schema.map(str::to_owned),
            ..jetbridge_postgres::PgOptions::default()
        };
        let reg = jetbridge_postgres::PgRegistry::connect(url, opts)
            .await
            .map_err(|e| {
                user(format!(
                    "cannot use the Postgres registry (check --registry / JETBRIDGE_REGISTRY): {e}"
                ))
            })?;
        return Ok(Arc::new(reg));
    }
    Err(user(format!(
        "--registry {url:?} is not supported: use `memory` or a postgres:// URL"
    )))
}

async fn open_volumes(
    spec: Option<&str>,
    data_dir: &Path,
    kube: &KubeArgs,
    bucket: Option<&BucketArgs>,
    durable: bool,
) -> anyhow::Result<Arc<dyn VolumeStore>> {
    let dir = match spec {
        None => data_dir.join("volumes"),
        Some(s) if s.contains("://") && !s.starts_with("file://") => {
            if kube.artifact_claim.is_some() {
                return Err(user(format!(
                    "--volumes {s:?} is a bucket; --artifact-claim only goes with a directory on that claim"
                )));
            }
            let mut opts = jetbridge_object_store::ObjectStoreOptions::default();
            if let Some(b) = bucket {
                opts.endpoint = b.volumes_endpoint.clone();
                opts.allow_http = b.volumes_allow_http;
                opts.anonymous = b.volumes_anonymous;
                opts.region = b.volumes_region.clone();
                if b.volumes_no_compression {
                    opts.compression = jetbridge_object_store::Compression::None;
                }
            }
            let store = jetbridge_object_store::ObjectStoreVolumes::from_url(s, opts)
                .map_err(|e| user(format!("--volumes {s:?}: {e}")))?;
            // One request before any step runs: a missing credential or bucket is a
            // configuration error to fix, not a step that errors half-way through.
            if let Err(e) = store.check().await {
                return Err(user(format!(
                    "--volumes {s:?}: cannot use the bucket: {e}\n  Credentials come from the provider's usual chain (docs/storage.md): GOOGLE_APPLICATION_CREDENTIALS or Workload Identity for gs://, AWS_* variables or an instance role for s3://, AZURE_* variables for az://. For an emulator or a public bucket add --volumes-anonymous."
                )));
            }
            return Ok(Arc::new(store));
        }
        Some(s) => PathBuf::from(s.trim_start_matches("file://")),
    };
    let mut store = jetbridge_fs::FsVolumeStore::new(dir.clone())
        .map_err(|e| user(format!("--volumes {}: {e}", dir.display())))?;
    if let Some(claim) = &kube.artifact_claim {
        store = store.with_shared_volume(claim.clone(), kube.artifact_claim_prefix.clone());
    }
    Ok(Arc::new(store.with_flush(durable)))
}

async fn run(args: &RunArgs, printer: Printer) -> anyhow::Result<u8> {
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

    if args.backend == Backend::Kube
        && let Some(rt) = pipeline.resource_types.iter().find(|t| t.type_ == "local")
    {
        return Err(user(format!(
            "{}: resource type {:?} is `type: local`, which runs only on the local backend; \
             give it a `registry-image` type with the image of the resource to run it on Kubernetes",
            rt.location, rt.name
        )));
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir).map_err(|e| {
        user(format!(
            "cannot create the data directory {}: {e}",
            data_dir.display()
        ))
    })?;
    let host = hostname();
    let worker = args
        .worker
        .clone()
        .unwrap_or_else(|| format!("{host}-{}", std::process::id()));
    // One live process per worker name on this data directory, whatever the registry
    // (a memory registry cannot see other processes); held until this process exits.
    let _name_lock = lock_worker_name(&data_dir, &worker)?;
    let shared_registry = args.registry != "memory" && args.registry != "memory://";
    // A memory registry sees only this run: give the run volumes of its own (unless the
    // user named a store), and never collect "orphans" in a store others may use.
    let runs_dir = data_dir.join("runs");
    remove_dead_runs(&runs_dir, &host);
    let own_volumes = args.volumes.is_none() && !shared_registry;
    let volumes_dir = if own_volumes {
        runs_dir
            .join(jetbridge_core::names::label_value(&worker))
            .join("volumes")
    } else {
        data_dir.clone()
    };
    let volumes = open_volumes(
        args.volumes.as_deref(),
        &volumes_dir,
        &args.kube,
        Some(&args.bucket),
        // A run's own volumes die with the run (and a crashed run's are removed by the
        // next): flushing them to disk on every seal would buy nothing.
        !own_volumes,
    )
    .await?;
    let registry = open_registry(&args.registry, args.registry_schema.as_deref()).await?;
    // Other workers see this one alive while it runs; refs of a dead one stop protecting.
    // The name is this process's alone until it signs off or its registration expires.
    let (heartbeat, _) = Heartbeat::register(registry.clone(), HeartbeatConfig::new(&worker))
        .await
        .map_err(|e| match e.kind() {
            jetbridge_core::ErrorKind::AlreadyExists => user(format!("--worker {worker:?}: {e}")),
            _ => user(format!("--registry: {e}")),
        })?;
    let (abort, signal) = abort_pair();
    let abort = Arc::new(abort);
    // A registration that cannot be renewed stops the build: what it references would
    // soon be unprotected.
    let keep_alive = {
        let heartbeat = heartbeat.clone();
        let abort = abort.clone();
        tokio::spawn(async move {
            heartbeat
                .keep_alive(move |why| abort.abort_because(AbortReason::WorkerLost(why)))
                .await
        })
    };
    let result = registered_run(RegisteredRun {
        args,
        printer,
        pipeline,
        vars,
        job,
        host,
        data_dir,
        worker: worker.clone(),
        shared_registry,
        own_volumes,
        runs_dir,
        volumes,
        registry,
        abort,
        signal,
        keep_alive: &keep_alive,
    })
    .await;
    keep_alive.abort();
    // Explicitly, on every path: the name is free at once and what this run still
    // references stops protecting.
    if let Err(e) = heartbeat.sign_off().await {
        tracing::warn!(error = %e, "could not sign off the worker");
    }
    result
}

/// What [`registered_run`] needs from `run`.
struct RegisteredRun<'a> {
    args: &'a RunArgs,
    printer: Printer,
    pipeline: Pipeline,
    vars: Vars,
    job: String,
    host: String,
    data_dir: PathBuf,
    worker: String,
    shared_registry: bool,
    own_volumes: bool,
    runs_dir: PathBuf,
    volumes: Arc<dyn VolumeStore>,
    registry: Arc<dyn ArtifactRegistry>,
    abort: Arc<jetbridge_core::services::AbortHandle>,
    signal: jetbridge_core::services::AbortSignal,
    keep_alive: &'a tokio::task::JoinHandle<()>,
}

/// The run once the worker is registered; `run` signs off after it, on every path.
async fn registered_run(r: RegisteredRun<'_>) -> anyhow::Result<u8> {
    let RegisteredRun {
        args,
        printer,
        pipeline,
        vars,
        job,
        host,
        data_dir,
        worker,
        shared_registry,
        own_volumes,
        runs_dir,
        volumes,
        registry,
        abort,
        signal,
        keep_alive,
    } = r;
    let (pods, exec): (Arc<dyn Pods>, Arc<dyn Exec>) = match args.backend {
        Backend::Local => {
            let backend = jetbridge_local::LocalBackend::new(jetbridge_local::LocalConfig::new(
                data_dir.join("local"),
            ))
            .map_err(|e| {
                user(format!(
                    "cannot set up the local backend in {}: {e}",
                    data_dir.display()
                ))
            })?;
            let backend = Arc::new(backend);
            (backend.clone(), backend)
        }
        Backend::Kube => {
            let backend = Arc::new(kube_backend(&args.kube, &worker).await?);
            // Fail now, plainly, rather than at the first step after retries.
            let mut sel = std::collections::BTreeMap::new();
            sel.insert(
                jetbridge_core::names::label::MANAGED_BY.to_owned(),
                jetbridge_core::names::label::MANAGED_BY_VALUE.to_owned(),
            );
            match tokio::time::timeout(std::time::Duration::from_secs(20), backend.list(&sel)).await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(user(format!("cannot reach Kubernetes: {e}"))),
                Err(_) => {
                    return Err(user(
                        "cannot reach Kubernetes: the API server did not answer within 20 s",
                    ));
                }
            }
            (backend.clone(), backend)
        }
    };
    let rt = Runtime {
        pods,
        exec,
        volumes: Some(volumes.clone()),
        registry: registry.clone(),
    };

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
    let images =
        image_resolver(&args.images)?.with_base_dir(base_dir.to_string_lossy().into_owned());

    let config = StepConfig {
        keep_pods: args.keep_pods,
        ..StepConfig::default()
    };
    let printer = Arc::new(printer);
    let runner = BuildRunner::new(rt.clone(), config, images, worker.clone(), printer.clone())
        .with_abort_grace(args.abort_grace);

    // Leftovers of earlier runs whose process is gone (same host), or whose heartbeat
    // expired: their pods, and what nothing references any more.
    let mut reaper_config = ReaperConfig::new(worker.clone());
    reaper_config.collect_orphan_volumes = shared_registry || own_volumes;
    reaper_config.dead_worker = Some(Arc::new(move |owner: &str| worker_is_dead(owner, &host)));
    let reaper = Reaper::new(
        Some(rt.pods.clone()),
        Some(volumes),
        registry.clone(),
        reaper_config.clone(),
    );
    if let Ok(report) = reaper.run_once(&HashSet::new(), SystemTime::now()).await
        && !report.pods_deleted.is_empty()
    {
        tracing::info!(pods = ?report.pods_deleted, "removed pods left by an earlier run");
    }

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
    let started = Instant::now();
    let build = runner.run(
        BuildRequest::new(Arc::new(pipeline), job, args.build_number, build_id)
            .with_vars(vars)
            .with_abort(signal),
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
                    jetbridge_core::services::fmt_duration(args.abort_grace)
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
                return Ok(130);
            }
        }
    };
    let outcome = outcome.map_err(|e| user(e.to_string()))?;

    // The build released its references; collect what nothing else holds. Kept pods
    // stay for debugging: the next run reaps them once this process is gone.
    let end_reaper = Reaper::new(
        (!args.keep_pods).then(|| rt.pods.clone()),
        rt.volumes.clone(),
        registry.clone(),
        reaper_config,
    );
    keep_alive.abort();
    match end_reaper
        .run_once(&runner.active_steps(), SystemTime::now())
        .await
    {
        Ok(r) if !r.errors.is_empty() => {
            tracing::warn!(errors = ?r.errors, "cleanup was incomplete")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cleanup failed; the next run retries it"),
    }
    if own_volumes && !args.keep_pods {
        let _ = std::fs::remove_dir_all(runs_dir.join(jetbridge_core::names::label_value(&worker)));
    }
    printer.summary(&outcome, started.elapsed());
    Ok(match outcome.status {
        BuildStatus::Succeeded => 0,
        BuildStatus::Aborted => 130,
        BuildStatus::Failed | BuildStatus::Errored => 1,
    })
}

async fn migrate(args: &MigrateArgs) -> anyhow::Result<u8> {
    if !(args.registry.starts_with("postgres://") || args.registry.starts_with("postgresql://")) {
        return Err(user(
            "--registry must be a postgres:// URL; the memory registry has nothing to migrate",
        ));
    }
    let opts = jetbridge_postgres::PgOptions {
        schema: args.registry_schema.clone(),
        ..jetbridge_postgres::PgOptions::default()
    };
    let applied = jetbridge_postgres::migrate_with(&args.registry, &opts)
        .await
        .context("applying migrations")?;
    println!("applied {applied} migration(s)");
    Ok(0)
}

fn image_resolver(args: &ImageArgs) -> anyhow::Result<ImageResolver> {
    let mut r = ImageResolver::new();
    for o in &args.resource_type_images {
        let (t, image) = o
            .split_once('=')
            .filter(|(t, i)| !t.is_empty() && !i.is_empty())
            .ok_or_else(|| user(format!("--resource-type-image {o:?}: write TYPE=IMAGE")))?;
        r = r.with_override(t, image);
    }
    if let Some(p) = &args.registry_prefix {
        r = r.with_registry_prefix(p.clone());
    }
    if let Some(i) = &args.default_task_image {
        r = r.with_default_task_image(i.clone());
    }
    Ok(r)
}

/// `500m` -> 500, `2` -> 2000, `0.5` -> 500 millicores.
fn parse_cpu(s: &str) -> Option<u64> {
    match s.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => s
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|v| (v * 1000.0).ceil() as u64),
    }
}

/// `512Mi`, `2Gi`, `1G`, `1000` -> bytes.
fn parse_memory(s: &str) -> Option<u64> {
    const UNITS: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("K", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, mult) in UNITS {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<u64>().ok().and_then(|n| n.checked_mul(mult));
        }
    }
    s.parse().ok()
}

fn kube_config(args: &KubeArgs, worker: &str) -> anyhow::Result<jetbridge_kube::KubeConfig> {
    use k8s_openapi::api::core::v1::Toleration;
    let mut cfg = jetbridge_kube::KubeConfig {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
        namespace: args.namespace.clone(),
        image_pull_secrets: args.image_pull_secrets.clone(),
        service_account: args.service_account.clone(),
        restricted: args.restricted,
        allow_privileged: args.allow_privileged,
        artifact_claim: args.artifact_claim.clone(),
        cache_claim: args.cache_claim.clone(),
        worker: Some(worker.to_owned()),
        ..jetbridge_kube::KubeConfig::default()
    };
    if let Some(h) = &args.helper_image {
        cfg.helper_image = h.clone();
    }
    for kv in &args.node_selector {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| user(format!("--node-selector {kv:?}: write KEY=VALUE")))?;
        cfg.node_selector.insert(k.to_owned(), v.to_owned());
    }
    for kv in &args.pod_annotations {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| user(format!("--pod-annotation {kv:?}: write KEY=VALUE")))?;
        cfg.pod_annotations.insert(k.to_owned(), v.to_owned());
    }
    for t in &args.tolerations {
        let (kv, effect) = t
            .rsplit_once(':')
            .ok_or_else(|| user(format!("--toleration {t:?}: write KEY[=VALUE]:EFFECT")))?;
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v.to_owned())),
            None => (kv, None),
        };
        cfg.tolerations.push(Toleration {
            key: Some(key.to_owned()),
            operator: Some(if value.is_some() { "Equal" } else { "Exists" }.to_owned()),
            value,
            effect: Some(effect.to_owned()),
            ..Toleration::default()
        });
    }
    if let Some(c) = &args.default_cpu {
        let millis = parse_cpu(c)
            .ok_or_else(|| user(format!("--default-cpu {c:?}: write e.g. 500m or 2")))?;
        cfg.default_resources.cpu_millis = Some(millis);
    }
    if let Some(m) = &args.default_memory {
        let bytes = parse_memory(m)
            .ok_or_else(|| user(format!("--default-memory {m:?}: write e.g. 512Mi or 2Gi")))?;
        cfg.default_resources.memory_bytes = Some(bytes);
    }
    Ok(cfg)
}

async fn kube_backend(
    args: &KubeArgs,
    worker: &str,
) -> anyhow::Result<jetbridge_kube::KubeBackend> {
    let cfg = kube_config(args, worker)?;
    jetbridge_kube::KubeBackend::new(cfg)
        .await
        .map_err(|e| user(format!("cannot reach Kubernetes: {e}")))
}

async fn conformance(args: &ConformanceArgs) -> anyhow::Result<u8> {
    use jetbridge_conformance::{BackendSubject, CaseOutcome, RuntimeSubject, Status};
    let worker = format!(
        "conformance-{}",
        jetbridge_core::names::StepHandle::random().short()
    );
    let backend = Arc::new(kube_backend(&args.kube, &worker).await?);
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
                        open_volumes(Some(&dir.to_string_lossy()), dir, &args.kube, None, true)
                            .await?
                    }
                    None => {
                        scratch = tempfile::Builder::new()
                            .prefix("jetbridge-conformance-")
                            .tempdir()
                            .context("creating a temporary directory for the artifacts")?;
                        let dir = scratch.path().to_string_lossy().into_owned();
                        open_volumes(Some(&dir), scratch.path(), &args.kube, None, false).await?
                    }
                };
                let mut images = ImageResolver::new();
                if let Some(dir) = &args.mock_resource_dir {
                    jetbridge_conformance::runtime::write_mock_resource(dir).with_context(
                        || format!("writing the mock resource to {}", dir.display()),
                    )?;
                    images = images.with_scripts_dir(dir.to_string_lossy().into_owned());
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

/// This machine's name, for worker names (`<hostname>-<pid>`).
fn hostname() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let h = jetbridge_core::names::dns_fragment(h.trim());
    if h.is_empty() { "local".to_owned() } else { h }
}

/// Whether `worker` (a label value) names a run on this host whose process is gone.
fn worker_is_dead(worker: &str, host: &str) -> bool {
    let Some((h, pid)) = worker.rsplit_once('-') else {
        return false;
    };
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    if h != jetbridge_core::names::label_value(host) || pid <= 0 || pid as u32 == std::process::id()
    {
        return false;
    }
    // Signal 0 only checks that the process exists.
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Hold `DATA_DIR/workers/<worker>.lock` for the life of this process: a second run
/// with the same worker name on this data directory is refused at once.
fn lock_worker_name(
    data_dir: &Path,
    worker: &str,
) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let dir = data_dir.join("workers");
    std::fs::create_dir_all(&dir)
        .map_err(|e| user(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join(format!(
        "{}.lock",
        jetbridge_core::names::label_value(worker)
    ));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| user(format!("cannot open {}: {e}", path.display())))?;
    // The kernel drops the lock when the process exits, however it exits.
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| match errno {
            nix::errno::Errno::EWOULDBLOCK => user(format!(
                "--worker {worker:?}: another run on this data directory uses this worker name; \
                 give this one another name, or let the other finish"
            )),
            e => user(format!("cannot lock {}: {e}", path.display())),
        },
    )
}

/// Remove the per-run volume directories of runs on this host that are gone.
fn remove_dead_runs(runs: &Path, host: &str) {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if worker_is_dead(&name, host)
            && let Err(err) = std::fs::remove_dir_all(e.path())
        {
            tracing::warn!(dir = %e.path().display(), error = %err, "could not remove a dead run's volumes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_cpu("500m"), Some(500));
        assert_eq!(parse_cpu("2"), Some(2000));
        assert_eq!(parse_cpu("0.25"), Some(250));
        assert_eq!(parse_cpu("x"), None);
        assert_eq!(parse_memory("512Mi"), Some(512 << 20));
        assert_eq!(parse_memory("1G"), Some(1_000_000_000));
        assert_eq!(parse_memory("1000"), Some(1000));
        assert_eq!(parse_memory("lots"), None);
    }
}
