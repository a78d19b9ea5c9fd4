//! What the harness reads beside the servers' metrics, when told where it is: the
//! cluster's pods and env Secrets, the volume store, the registry. Read only: nothing
//! here creates, changes or migrates anything.

use std::sync::Arc;
use std::time::Duration;

use jetbridge_core::names::label;
use jetbridge_core::ports::{ArtifactFilter, ArtifactRegistry, Pods, VolumeState, VolumeStore};

use crate::cli::LoadArgs;
use crate::settings::{KubeSettings, VolumeSettings};
use crate::user;

/// The observers the arguments name.
pub(crate) struct Observers {
    kube: Option<Arc<jetbridge_kube::KubeBackend>>,
    volumes: Option<Arc<dyn VolumeStore>>,
    registry: Option<jetbridge_postgres::PgRegistry>,
}

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observers")
            .field("kube", &self.kube.is_some())
            .field("volumes", &self.volumes.is_some())
            .field("registry", &self.registry.is_some())
            .finish()
    }
}

/// Which observers there are.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Observed {
    /// Pods and Secrets through the Kubernetes API.
    pub kube: bool,
    /// The volume store.
    pub volumes: bool,
    /// The registry's rows.
    pub registry: bool,
}

/// One reading; `None` for what is not observed or could not be read.
#[derive(Debug, Clone, Default)]
pub(crate) struct Observation {
    pub pods: Option<u64>,
    pub secrets: Option<u64>,
    pub volumes: Option<u64>,
    pub volume_bytes: Option<u64>,
    pub artifacts: Option<u64>,
    pub workers: Option<u64>,
}

/// Each read gives up after this long (a sample is taken again at the next tick).
const READ_TIMEOUT: Duration = Duration::from_secs(20);

impl Observers {
    /// Connect what the arguments name; a wrong one is the caller's to fix (exit 2).
    pub async fn open(args: &LoadArgs) -> anyhow::Result<Observers> {
        let kube = match &args.kubeconfig {
            Some(path) => {
                if !path.is_file() {
                    return Err(user(format!(
                        "--kubeconfig {}: no such file",
                        path.display()
                    )));
                }
                let settings = KubeSettings {
                    kubeconfig: Some(path.clone()),
                    context: args.context.clone(),
                    namespace: args.namespace.clone(),
                    ..KubeSettings::default()
                };
                let k = crate::wiring::kube_backend(&settings, "jetbridge-load").await?;
                // One read now: a cluster that cannot be read is found before the run.
                k.list(&managed_by())
                    .await
                    .map_err(|e| user(format!("--kubeconfig: cannot list pods: {e}")))?;
                Some(Arc::new(k))
            }
            None => None,
        };
        let volumes = match &args.volumes {
            Some(spec) => {
                let is_url = spec.contains("://") && !spec.starts_with("file://");
                if !is_url && !std::path::Path::new(spec.trim_start_matches("file://")).is_dir() {
                    return Err(user(format!(
                        "--volumes {spec}: no such directory (give the servers' --volumes)"
                    )));
                }
                let b = &args.bucket;
                let bucket = VolumeSettings {
                    path_or_url: Some(spec.clone()),
                    endpoint: b.volumes_endpoint.clone(),
                    allow_http: Some(b.volumes_allow_http),
                    anonymous: Some(b.volumes_anonymous),
                    region: b.volumes_region.clone(),
                    no_compression: Some(b.volumes_no_compression),
                };
                let store = crate::wiring::open_volumes(
                    Some(spec),
                    std::path::Path::new("."),
                    &KubeSettings::default(),
                    &bucket,
                    false,
                )
                .await?;
                Some(store)
            }
            None => None,
        };
        let registry = match &args.registry {
            Some(url) => {
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(user(
                        "--registry: give the servers' postgres:// URL (a memory registry lives inside its server and cannot be read)",
                    ));
                }
                let opts = jetbridge_postgres::PgOptions {
                    schema: args.registry_schema.clone(),
                    pool_size: 2,
                    migrate: false,
                    application_name: "jetbridge-load".to_owned(),
                    ..jetbridge_postgres::PgOptions::default()
                };
                let reg = jetbridge_postgres::PgRegistry::connect(url, opts)
                    .await
                    .map_err(|e| user(format!("--registry: {e}")))?;
                reg.workers()
                    .await
                    .map_err(|e| user(format!("--registry: cannot read its workers: {e}")))?;
                Some(reg)
            }
            None => None,
        };
        Ok(Observers {
            kube,
            volumes,
            registry,
        })
    }

    /// Which observers there are.
    pub fn what(&self) -> Observed {
        Observed {
            kube: self.kube.is_some(),
            volumes: self.volumes.is_some(),
            registry: self.registry.is_some(),
        }
    }

    /// Read every observer once.
    pub async fn observe(&self) -> Observation {
        async fn timed<T>(f: impl Future<Output = Option<T>>) -> Option<T> {
            tokio::time::timeout(READ_TIMEOUT, f).await.ok().flatten()
        }
        let mut o = Observation::default();
        if let Some(k) = &self.kube {
            o.pods =
                timed(async { k.list(&managed_by()).await.ok().map(|p| p.len() as u64) }).await;
            o.secrets =
                timed(async { k.count_secrets(&managed_by()).await.ok().map(|n| n as u64) }).await;
        }
        if let Some(v) = &self.volumes
            && let Some(list) = timed(async { v.list().await.ok() }).await
        {
            o.volumes = Some(list.len() as u64);
            o.volume_bytes = Some(
                list.iter()
                    .filter(|i| i.state == VolumeState::Sealed)
                    .map(|i| i.size)
                    .sum(),
            );
        }
        if let Some(r) = &self.registry {
            o.artifacts = timed(async {
                r.find(&ArtifactFilter::default())
                    .await
                    .ok()
                    .map(|a| a.len() as u64)
            })
            .await;
            o.workers = timed(async {
                r.workers()
                    .await
                    .ok()
                    .map(|w| w.iter().filter(|w| w.alive).count() as u64)
            })
            .await;
        }
        o
    }
}

/// Every jetbridge step pod (and env Secret), whoever's worker made it.
fn managed_by() -> std::collections::BTreeMap<String, String> {
    [(
        label::MANAGED_BY.to_owned(),
        label::MANAGED_BY_VALUE.to_owned(),
    )]
    .into()
}
