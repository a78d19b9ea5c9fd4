//! Settings into adapters: the one place that chooses and opens the backend, the volume
//! store and the registry. `run` and `server` use it: nothing here knows of a pipeline
//! or a build. In two halves: [`plan`] parses and checks with no network and no file
//! written (all that `server --check-config` runs), [`open`] opens and reaches.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use jetbridge_core::images::ImageResolver;
use jetbridge_core::ports::{ArtifactRegistry, Exec, Pods, Runtime, VolumeStore};
use jetbridge_core::services::ReaperConfig;

use crate::settings::{Backend, ImageSettings, KubeSettings, Settings, VolumeSettings};
use crate::user;

/// What the settings wired: the ports and what a worker needs around them.
// No Debug: the ports are trait objects without one.
#[allow(missing_debug_implementations)]
pub struct Wired {
    /// Pods, exec, volumes (always `Some`) and registry.
    pub runtime: Runtime,
    /// This process's worker name (`--worker`, else `<hostname>-<pid>`).
    pub worker: String,
    /// This machine's name, as in default worker names.
    pub host: String,
    /// Images from the settings; the caller adds what depends on its pipeline.
    pub images: ImageResolver,
    /// Whether the registry is shared with other processes (not the memory one).
    pub shared_registry: bool,
    /// Whether the volumes are this process's own (`DATA_DIR/runs/<worker>`), to be
    /// removed when it ends.
    pub own_volumes: bool,
    runs_dir: PathBuf,
    /// The Postgres registry, when that is the registry: the queue shares its pool.
    pg: Option<jetbridge_postgres::PgRegistry>,
    /// The kube backend itself, when it is the backend (its request counts, its Secrets).
    pub kube: Option<Arc<jetbridge_kube::KubeBackend>>,
    // One live process per worker name on this data directory, whatever the registry
    // (a memory registry cannot see other processes); held while this value lives.
    _name_lock: nix::fcntl::Flock<std::fs::File>,
}

impl Wired {
    /// The reaper's configuration for this worker: the leftovers of earlier workers
    /// whose process is gone (same host), or whose heartbeat expired.
    pub fn reaper_config(&self) -> ReaperConfig {
        let mut cfg = ReaperConfig::new(self.worker.clone());
        // In a store others may use, "orphans" are only safe to collect when the
        // registry sees every process that references them.
        cfg.collect_orphan_volumes = self.shared_registry || self.own_volumes;
        let host = self.host.clone();
        cfg.dead_worker = Some(Arc::new(move |owner: &str| worker_is_dead(owner, &host)));
        cfg
    }

    /// The directory of this worker's own volumes, when it has some.
    pub fn own_volumes_dir(&self) -> Option<PathBuf> {
        self.own_volumes.then(|| {
            self.runs_dir
                .join(jetbridge_core::names::label_value(&self.worker))
        })
    }
}

/// What the settings name, parsed and checked without touching the network or the
/// disk: the first half of [`wire`]. `server --check-config` stops after it, so every
/// check here is one the real start makes too, by the same code.
#[derive(Debug)]
pub struct Plan {
    pub registry: RegistryPlan,
    pub volumes: VolumesPlan,
    pub backend: BackendPlan,
    data_dir: PathBuf,
    host: String,
    /// This process's worker name (`--worker`, else `<hostname>-<pid>`).
    worker: String,
    /// Whether the volumes are this process's own (see [`Wired::own_volumes`]).
    own_volumes: bool,
    images: ImageResolver,
    runs_dir: PathBuf,
}

/// The registry a URL names, its options checked; nothing connected yet.
#[derive(Debug)]
pub enum RegistryPlan {
    Memory,
    Postgres {
        url: String,
        options: jetbridge_postgres::PgOptions,
    },
}

/// The volume store, parsed; nothing created or reached yet.
#[derive(Debug)]
pub enum VolumesPlan {
    /// A directory (created when opened), and the artifact claim that holds it.
    Dir {
        dir: PathBuf,
        claim: Option<(String, String)>,
    },
    /// A bucket: its client is built (the URL and options are valid), not yet used.
    Bucket {
        url: String,
        store: jetbridge_object_store::ObjectStoreVolumes,
    },
}

/// Where steps run; for Kubernetes, the configuration built from the settings.
#[derive(Debug)]
pub enum BackendPlan {
    Local,
    Kube(Box<jetbridge_kube::KubeConfig>),
}

/// Parse and check what `settings` name, with no network, no file written: a
/// mistake found here is reported before anything is opened.
pub fn plan(settings: &Settings) -> anyhow::Result<Plan> {
    let data_dir = settings.data_dir.clone().unwrap_or_else(default_data_dir);
    let host = hostname();
    let worker = settings
        .worker
        .clone()
        .unwrap_or_else(|| format!("{host}-{}", std::process::id()));
    let registry = plan_registry(settings.registry.url(), settings.registry.schema.as_deref())?;
    // A memory registry sees only this process: give it volumes of its own (unless the
    // user named a store), and never collect "orphans" in a store others may use.
    let runs_dir = data_dir.join("runs");
    let own_volumes =
        settings.volumes.path_or_url.is_none() && matches!(registry, RegistryPlan::Memory);
    let volumes_dir = if own_volumes {
        runs_dir
            .join(jetbridge_core::names::label_value(&worker))
            .join("volumes")
    } else {
        data_dir.clone()
    };
    let volumes = plan_volumes(
        settings.volumes.path_or_url.as_deref(),
        &volumes_dir,
        &settings.kube,
        &settings.volumes,
    )?;
    let backend = match settings.backend() {
        Backend::Local => BackendPlan::Local,
        Backend::Kube => BackendPlan::Kube(Box::new(kube_config(&settings.kube, &worker)?)),
    };
    let images = image_resolver(&settings.images, settings.backend())?;
    Ok(Plan {
        data_dir,
        host,
        worker,
        registry,
        own_volumes,
        volumes,
        backend,
        images,
        runs_dir,
    })
}

/// Open everything `settings` name, checking at once what can be checked (a bucket, a
/// Postgres registry, the Kubernetes API) so that a mistake is a configuration error
/// (exit 2) before any step, not a step that errors half-way through.
pub async fn wire(settings: &Settings) -> anyhow::Result<Wired> {
    open(plan(settings)?).await
}

/// The second half of [`wire`]: create the working directories, take the worker name,
/// and open (and reach) the volumes, the registry and the backend of `plan`.
pub async fn open(plan: Plan) -> anyhow::Result<Wired> {
    let Plan {
        data_dir,
        host,
        worker,
        registry,
        own_volumes,
        volumes,
        backend,
        images,
        runs_dir,
    } = plan;
    std::fs::create_dir_all(&data_dir).map_err(|e| {
        user(format!(
            "cannot create the data directory {}: {e}",
            data_dir.display()
        ))
    })?;
    let name_lock = lock_worker_name(&data_dir, &worker)?;
    remove_dead_runs(&runs_dir, &host);
    let images = match backend {
        BackendPlan::Local => images.with_local_type(
            jetbridge_core::images::MOCK_TYPE,
            local_mock_dir(&data_dir)?.to_string_lossy().into_owned(),
        ),
        BackendPlan::Kube(_) => images,
    };
    // Own volumes die with the process (and a crashed one's are removed by the next):
    // flushing them to disk on every seal would buy nothing.
    let volumes = open_planned_volumes(volumes, !own_volumes).await?;
    let shared_registry = !matches!(registry, RegistryPlan::Memory);
    let (registry, pg) = open_planned_registry(registry).await?;
    let (pods, exec, kube) = open_backend(backend, &data_dir).await?;
    Ok(Wired {
        runtime: Runtime {
            pods,
            exec,
            volumes: Some(volumes),
            registry,
        },
        worker,
        host,
        images,
        shared_registry,
        own_volumes,
        runs_dir,
        pg,
        kube,
        _name_lock: name_lock,
    })
}

/// The pods and exec ports of the chosen backend.
async fn open_backend(
    backend: BackendPlan,
    data_dir: &Path,
) -> anyhow::Result<(
    Arc<dyn Pods>,
    Arc<dyn Exec>,
    Option<Arc<jetbridge_kube::KubeBackend>>,
)> {
    match backend {
        BackendPlan::Local => {
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
            Ok((backend.clone(), backend, None))
        }
        BackendPlan::Kube(cfg) => {
            let backend = Arc::new(connect_kube(*cfg).await?);
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
            Ok((backend.clone(), backend.clone(), Some(backend)))
        }
    }
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

/// The registry `url` names, its options checked (`schema`: Postgres only); nothing
/// connected.
pub fn plan_registry(url: &str, schema: Option<&str>) -> anyhow::Result<RegistryPlan> {
    if url == "memory" || url == "memory://" {
        return Ok(RegistryPlan::Memory);
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let options = jetbridge_postgres::PgOptions {
            schema: schema.map(str::to_owned),
            ..jetbridge_postgres::PgOptions::default()
        };
        // `connect` checks them too; here, so that a bad schema needs no database.
        options.validate().map_err(pg_error)?;
        return Ok(RegistryPlan::Postgres {
            url: url.to_owned(),
            options,
        });
    }
    Err(user(format!(
        "--registry {:?} is not supported: use `memory` or a postgres:// URL",
        without_password(url)
    )))
}

/// `url` with the password of its user info replaced by `***`: messages end up in logs.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((name, _)) => format!("{scheme}://{name}:***@{hosts}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

fn pg_error(e: jetbridge_core::Error) -> anyhow::Error {
    user(format!(
        "cannot use the Postgres registry (check --registry / JETBRIDGE_REGISTRY): {e}"
    ))
}

async fn open_planned_registry(
    plan: RegistryPlan,
) -> anyhow::Result<(
    Arc<dyn ArtifactRegistry>,
    Option<jetbridge_postgres::PgRegistry>,
)> {
    match plan {
        RegistryPlan::Memory => Ok((
            Arc::new(jetbridge_memory_registry::MemoryRegistry::new()),
            None,
        )),
        RegistryPlan::Postgres { url, options } => {
            let reg = jetbridge_postgres::PgRegistry::connect(&url, options)
                .await
                .map_err(pg_error)?;
            Ok((Arc::new(reg.clone()), Some(reg)))
        }
    }
}

impl RegistryPlan {
    /// For people: the kind, and for Postgres the host and database. Never the
    /// password, nor the query (where libpq options, a password among them, go).
    pub fn summary(&self) -> String {
        let url = match self {
            RegistryPlan::Memory => return "memory".to_owned(),
            RegistryPlan::Postgres { url, .. } => url,
        };
        let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let rest = rest.split('#').next().unwrap_or_default();
        let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
        // The user info ends at the last `@`; a password in it is never shown.
        let (userinfo, hosts) = authority
            .rsplit_once('@')
            .map_or(("", authority), |(u, h)| (u, h));
        let params: Vec<(&str, &str)> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let param = |k: &str| params.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        let host = if !hosts.is_empty() {
            hosts
        } else {
            param("host").unwrap_or("localhost")
        };
        let mut out = format!("postgres (host {host}");
        if !database.is_empty() {
            out.push_str(&format!(", database {database}"));
        }
        if let RegistryPlan::Postgres { options, .. } = self
            && let Some(schema) = &options.schema
        {
            out.push_str(&format!(", schema {schema}"));
        }
        if userinfo.contains(':') || param("password").is_some() {
            out.push_str(", password not shown");
        }
        out.push(')');
        out
    }
}

impl Wired {
    /// The build queue beside the registry: in memory with the memory registry (this
    /// process's alone), else in the same Postgres database, on the registry's pool
    /// (shared by replicas).
    pub fn queue(&self) -> Arc<dyn jetbridge_core::ports::BuildQueue> {
        match &self.pg {
            Some(pg) => Arc::new(pg.build_queue()),
            None => Arc::new(jetbridge_memory_registry::MemoryBuildQueue::new()),
        }
    }

    /// The registry pool's (busy, idle) connections, when the registry is Postgres.
    pub fn pool_probe(&self) -> Option<jetbridge_server::metrics::PoolProbe> {
        let pg = self.pg.clone()?;
        Some(Box::new(move || {
            let (open, idle) = pg.pool_state();
            Some((u64::from(open.saturating_sub(idle)), u64::from(idle)))
        }))
    }
}

/// The volume store `spec` names (a directory or a bucket URL); none: `data_dir/volumes`.
/// `bucket` holds the options of a bucket; `durable`: flush directories on every seal.
pub async fn open_volumes(
    spec: Option<&str>,
    data_dir: &Path,
    kube: &KubeSettings,
    bucket: &VolumeSettings,
    durable: bool,
) -> anyhow::Result<Arc<dyn VolumeStore>> {
    open_planned_volumes(plan_volumes(spec, data_dir, kube, bucket)?, durable).await
}

/// The first half of [`open_volumes`]: parse `spec` and build a bucket's client, with
/// no request sent and no directory created.
pub fn plan_volumes(
    spec: Option<&str>,
    data_dir: &Path,
    kube: &KubeSettings,
    bucket: &VolumeSettings,
) -> anyhow::Result<VolumesPlan> {
    let dir = match spec {
        None => data_dir.join("volumes"),
        Some(s) if s.contains("://") && !s.starts_with("file://") => {
            if kube.artifact_claim.is_some() {
                return Err(user(format!(
                    "--volumes {s:?} is a bucket; --artifact-claim only goes with a directory on that claim"
                )));
            }
            let mut opts = jetbridge_object_store::ObjectStoreOptions {
                endpoint: bucket.endpoint.clone(),
                allow_http: bucket.allow_http.unwrap_or(false),
                anonymous: bucket.anonymous.unwrap_or(false),
                region: bucket.region.clone(),
                ..jetbridge_object_store::ObjectStoreOptions::default()
            };
            if bucket.no_compression.unwrap_or(false) {
                opts.compression = jetbridge_object_store::Compression::None;
            }
            let store = jetbridge_object_store::ObjectStoreVolumes::from_url(s, opts)
                .map_err(|e| user(format!("--volumes {s:?}: {e}")))?;
            return Ok(VolumesPlan::Bucket {
                url: s.to_owned(),
                store,
            });
        }
        Some(s) => PathBuf::from(s.trim_start_matches("file://")),
    };
    let claim = kube
        .artifact_claim
        .clone()
        .map(|c| (c, kube.artifact_claim_prefix().to_owned()));
    Ok(VolumesPlan::Dir { dir, claim })
}

async fn open_planned_volumes(
    plan: VolumesPlan,
    durable: bool,
) -> anyhow::Result<Arc<dyn VolumeStore>> {
    match plan {
        VolumesPlan::Bucket { url: s, store } => {
            // One request before any step runs: a missing credential or bucket is a
            // configuration error to fix, not a step that errors half-way through.
            if let Err(e) = store.check().await {
                return Err(user(format!(
                    "--volumes {s:?}: cannot use the bucket: {e}\n  Credentials come from the provider's usual chain (docs/storage.md): GOOGLE_APPLICATION_CREDENTIALS or Workload Identity for gs://, AWS_* variables or an instance role for s3://, AZURE_* variables for az://. For an emulator or a public bucket add --volumes-anonymous."
                )));
            }
            Ok(Arc::new(store))
        }
        VolumesPlan::Dir { dir, claim } => {
            let mut store = jetbridge_fs::FsVolumeStore::new(dir.clone())
                .map_err(|e| user(format!("--volumes {}: {e}", dir.display())))?;
            if let Some((claim, prefix)) = claim {
                store = store.with_shared_volume(claim, prefix);
            }
            Ok(Arc::new(store.with_flush(durable)))
        }
    }
}

impl VolumesPlan {
    /// For people: the directory, or the bucket URL without its query.
    pub fn summary(&self) -> String {
        match self {
            VolumesPlan::Dir { dir, .. } => dir.display().to_string(),
            VolumesPlan::Bucket { url, .. } => {
                url.split(['?', '#']).next().unwrap_or_default().to_owned()
            }
        }
    }
}

/// The links `check`, `in` and `out` to this binary (the built-in `mock`, see
/// [`crate::mock`]) for the local backend, in a directory of `data_dir` per binary, so
/// that processes of different builds sharing the data directory each run their own.
fn local_mock_dir(data_dir: &Path) -> anyhow::Result<PathBuf> {
    use std::hash::{Hash, Hasher};
    let exe = std::env::current_exe().map_err(|e| {
        user(format!(
            "cannot find this binary for the mock resource: {e}"
        ))
    })?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    exe.hash(&mut h);
    let dir = data_dir.join("mock").join(format!("{:016x}", h.finish()));
    crate::mock::install_scripts(&dir, &exe).map_err(|e| {
        user(format!(
            "cannot set up the mock resource in {}: {e}",
            dir.display()
        ))
    })?;
    Ok(dir)
}

/// What the built-in `mock` needs when none is configured on Kubernetes.
const MOCK_IMAGE_HINT: &str = "on Kubernetes the built-in mock runs in the image that \
     --mock-image IMAGE names (config `images.mock-image`, JETBRIDGE_MOCK_IMAGE), and none \
     is set: use the jetbridge image, whose /opt/resource/{check,in,out} are jetbridge's \
     mock (the Helm chart sets it to its own image)";

/// The images `images` name. On Kubernetes the built-in `mock` runs in
/// `--mock-image`; without it (and without `--resource-type-image mock=...`) a pipeline
/// using it is refused, naming the setting. Locally [`open`] adds the host's mock.
pub fn image_resolver(images: &ImageSettings, backend: Backend) -> anyhow::Result<ImageResolver> {
    let mut r = ImageResolver::new();
    // An empty value (a chart or environment left blank) is no image.
    match (
        images.mock_image.as_deref().filter(|i| !i.is_empty()),
        backend,
    ) {
        (Some(i), _) => r = r.with_mock_image(i),
        (None, Backend::Kube) => r = r.with_missing_mock_image(MOCK_IMAGE_HINT),
        (None, Backend::Local) => {}
    }
    for o in images.resource_type_images.iter().flatten() {
        let (t, image) = o
            .split_once('=')
            .filter(|(t, i)| !t.is_empty() && !i.is_empty())
            .ok_or_else(|| user(format!("--resource-type-image {o:?}: write TYPE=IMAGE")))?;
        r = r.with_override(t, image);
    }
    if let Some(p) = &images.registry_prefix {
        r = r.with_registry_prefix(p.clone());
    }
    if let Some(i) = &images.default_task_image {
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

fn kube_config(kube: &KubeSettings, worker: &str) -> anyhow::Result<jetbridge_kube::KubeConfig> {
    use k8s_openapi::api::core::v1::Toleration;
    let mut cfg = jetbridge_kube::KubeConfig {
        kubeconfig: kube.kubeconfig.clone(),
        context: kube.context.clone(),
        namespace: kube.namespace.clone(),
        image_pull_secrets: kube.image_pull_secrets.clone().unwrap_or_default(),
        service_account: kube.service_account.clone(),
        restricted: kube.restricted.unwrap_or(false),
        allow_privileged: kube.allow_privileged.unwrap_or(false),
        artifact_claim: kube.artifact_claim.clone(),
        cache_claim: kube.cache_claim.clone(),
        worker: Some(worker.to_owned()),
        ..jetbridge_kube::KubeConfig::default()
    };
    if let Some(h) = &kube.helper_image {
        cfg.helper_image = h.clone();
    }
    // Blank is none, so a chart or config can switch the helper off.
    cfg.step_helper_image = kube
        .step_helper_image
        .as_deref()
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(str::to_owned);
    for kv in kube.node_selector.iter().flatten() {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| user(format!("--node-selector {kv:?}: write KEY=VALUE")))?;
        cfg.node_selector.insert(k.to_owned(), v.to_owned());
    }
    for kv in kube.pod_annotations.iter().flatten() {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| user(format!("--pod-annotation {kv:?}: write KEY=VALUE")))?;
        cfg.pod_annotations.insert(k.to_owned(), v.to_owned());
    }
    for t in kube.tolerations.iter().flatten() {
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
    if let Some(c) = &kube.default_cpu {
        let millis = parse_cpu(c)
            .ok_or_else(|| user(format!("--default-cpu {c:?}: write e.g. 500m or 2")))?;
        cfg.default_resources.cpu_millis = Some(millis);
    }
    if let Some(m) = &kube.default_memory {
        let bytes = parse_memory(m)
            .ok_or_else(|| user(format!("--default-memory {m:?}: write e.g. 512Mi or 2Gi")))?;
        cfg.default_resources.memory_bytes = Some(bytes);
    }
    Ok(cfg)
}

/// The Kubernetes backend of `kube`, its pods labelled with `worker`.
pub async fn kube_backend(
    kube: &KubeSettings,
    worker: &str,
) -> anyhow::Result<jetbridge_kube::KubeBackend> {
    connect_kube(kube_config(kube, worker)?).await
}

async fn connect_kube(
    cfg: jetbridge_kube::KubeConfig,
) -> anyhow::Result<jetbridge_kube::KubeBackend> {
    jetbridge_kube::KubeBackend::new(cfg)
        .await
        .map_err(|e| user(format!("cannot reach Kubernetes: {e}")))
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

/// Whether `worker` (a label value) names a process on this host that is gone.
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
    fn the_mock_image_is_required_on_kubernetes_only_and_blank_is_none() {
        let text = "resources: [{name: m, type: mock}]\njobs:\n- name: j\n  plan:\n  - get: m\n";
        let p = jetbridge_core::plan::parse_pipeline(text, "p.yml", &Default::default()).unwrap();
        let with = |mock: Option<&str>, extra: Option<&str>, backend| {
            let images = ImageSettings {
                mock_image: mock.map(str::to_owned),
                resource_type_images: extra.map(|e| vec![e.to_owned()]),
                ..ImageSettings::default()
            };
            image_resolver(&images, backend)
                .unwrap()
                .resolve_type(&p, "mock")
        };
        let err = with(None, None, Backend::Kube).unwrap_err();
        assert!(err.message().contains("--mock-image"), "{err}");
        let err = with(Some(""), None, Backend::Kube).unwrap_err();
        assert!(err.message().contains("--mock-image"), "{err}");
        let image = |i: &str| jetbridge_core::images::ResolvedImage::Image {
            image: i.into(),
            scripts_dir: "/opt/resource".into(),
        };
        assert_eq!(
            with(Some("jb:1"), None, Backend::Kube).unwrap(),
            image("jb:1")
        );
        // An explicit override of the type serves too.
        assert_eq!(
            with(None, Some("mock=my/mock"), Backend::Kube).unwrap(),
            image("my/mock")
        );
        // Locally nothing is required: `open` adds the host's mock.
        assert!(with(None, None, Backend::Local).is_ok());
    }

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

    #[test]
    fn registry_summaries_show_no_password() {
        let summary =
            |url: &str, schema: Option<&str>| plan_registry(url, schema).expect("valid").summary();
        assert_eq!(summary("memory", None), "memory");
        assert_eq!(
            summary("postgres://ci:s3cret@db:5432/ci", Some("jetbridge")),
            "postgres (host db:5432, database ci, schema jetbridge, password not shown)"
        );
        assert_eq!(
            summary(
                "postgresql://ci@db/ci?password=s3cret&sslmode=disable",
                None
            ),
            "postgres (host db, database ci, password not shown)"
        );
        // A user name with `@` in it, percent-encoded or not: the host is after the last.
        assert_eq!(
            summary("postgres://a@b:p@ss@db:5432/ci", None),
            "postgres (host db:5432, database ci, password not shown)"
        );
        assert_eq!(
            summary("postgres:///ci?host=/run/postgresql", None),
            "postgres (host /run/postgresql, database ci)"
        );
        assert_eq!(summary("postgres://db", None), "postgres (host db)");
    }

    #[test]
    fn registry_errors_show_no_password() {
        let err = plan_registry("mysql://ci:s3cret@db:3306/ci", None)
            .expect_err("not supported")
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(err.contains("\"mysql://ci:***@db:3306/ci\""), "{err}");
        let err = plan_registry("postgres://ci@db/ci", Some("Bad-Schema"))
            .expect_err("bad schema")
            .to_string();
        assert!(
            err.starts_with("cannot use the Postgres registry (check --registry"),
            "{err}"
        );
        assert!(err.contains("Bad-Schema"), "{err}");
    }

    #[test]
    fn kube_settings_from_a_file_reach_the_kube_config() {
        let s = crate::settings::parse_file(
            "kube:\n  namespace: ci\n  restricted: true\n  node-selector: [pool=ci]\n  tolerations: [gpu:NoSchedule]\n  default-cpu: 500m\n",
            "f.yml",
        )
        .expect("parses");
        let cfg = kube_config(&s.kube, "w").expect("valid");
        assert_eq!(cfg.namespace.as_deref(), Some("ci"));
        assert!(cfg.restricted);
        assert!(!cfg.allow_privileged);
        assert_eq!(
            cfg.node_selector.get("pool").map(String::as_str),
            Some("ci")
        );
        assert_eq!(cfg.tolerations[0].operator.as_deref(), Some("Exists"));
        assert_eq!(cfg.default_resources.cpu_millis, Some(500));
        assert_eq!(cfg.worker.as_deref(), Some("w"));
    }
}
