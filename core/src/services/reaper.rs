//! The reaper: one pass deletes pods of finished or unknown steps, and volumes and
//! registry records nothing references.
//!
//! Safe to crash at any point and to run on several replicas at once: claims are
//! exclusive in the registry, volume deletes and forgets are idempotent, and a claim
//! left by a crashed reaper is taken again after `stale_claim`.

use crate::ports::DeleteOpts;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::Result;
use crate::names::label;
use crate::ports::{ArtifactRegistry, ClaimOpts, GarbageOpts, Pods, VolumeStore};

/// Tells the reaper that a worker is known to be dead without asking the registry (e.g.
/// a local worker whose process is gone).
pub type DeadWorkerCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// How the reaper behaves.
#[derive(Clone)]
pub struct ReaperConfig {
    /// This worker's name: its own pods are reaped when their step is not active.
    pub worker: String,
    /// Unregistered volumes younger than this are left alone (being created).
    pub orphan_volume_grace: Duration,
    /// `Destroying` claims at least this old (on the registry's clock) are taken again.
    pub stale_claim: Duration,
    /// Artifacts claimed per registry round trip.
    pub batch: usize,
    /// Grace period for pod deletion.
    pub pod_grace: Duration,
    /// What a pod adapter keeps beside pods (env Secrets) is left alone this long
    /// after it was made, while its pod may still be being created.
    pub pod_garbage_grace: Duration,
    /// Delete volumes no registry record names. Off when the registry cannot see every
    /// user of the store (e.g. a per-process memory registry over a shared directory).
    pub collect_orphan_volumes: bool,
    /// Workers known to be dead besides those whose heartbeat expired; their pods are
    /// reaped. Receives the worker label value.
    pub dead_worker: Option<DeadWorkerCheck>,
}

impl std::fmt::Debug for ReaperConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaperConfig")
            .field("worker", &self.worker)
            .field("orphan_volume_grace", &self.orphan_volume_grace)
            .field("stale_claim", &self.stale_claim)
            .field("batch", &self.batch)
            .field("pod_grace", &self.pod_grace)
            .field("pod_garbage_grace", &self.pod_garbage_grace)
            .field("collect_orphan_volumes", &self.collect_orphan_volumes)
            .field("dead_worker", &self.dead_worker.is_some())
            .finish()
    }
}

impl ReaperConfig {
    /// Defaults for `worker`.
    pub fn new(worker: impl Into<String>) -> Self {
        ReaperConfig {
            worker: worker.into(),
            orphan_volume_grace: Duration::from_secs(600),
            stale_claim: Duration::from_secs(600),
            batch: 500,
            pod_grace: Duration::from_secs(5),
            pod_garbage_grace: Duration::from_secs(300),
            collect_orphan_volumes: true,
            dead_worker: None,
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Pods deleted.
    pub pods_deleted: Vec<String>,
    /// What the pod adapter kept beside gone pods and deleted (env Secrets).
    pub pod_garbage_deleted: Vec<String>,
    /// Artifacts (and their volumes) deleted.
    pub artifacts_deleted: usize,
    /// Unregistered volumes deleted.
    pub orphan_volumes_deleted: usize,
    /// Errors met (the pass goes on after each).
    pub errors: Vec<String>,
}

/// Collects what is no longer needed.
#[derive(Clone)]
pub struct Reaper {
    pods: Option<Arc<dyn Pods>>,
    volumes: Option<Arc<dyn VolumeStore>>,
    registry: Arc<dyn ArtifactRegistry>,
    config: ReaperConfig,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper")
            .field("config", &self.config)
            .finish()
    }
}

impl Reaper {
    /// A reaper over the given ports; `pods` or `volumes` may be absent.
    pub fn new(
        pods: Option<Arc<dyn Pods>>,
        volumes: Option<Arc<dyn VolumeStore>>,
        registry: Arc<dyn ArtifactRegistry>,
        config: ReaperConfig,
    ) -> Self {
        Reaper {
            pods,
            volumes,
            registry,
            config,
        }
    }

    /// One pass over a fixed set of running steps: `active` holds the step handles this
    /// worker runs, and none may start during the pass (a one-off run after its build).
    /// A worker whose steps go on starting uses [`Reaper::run_once_live`]. `now` (the
    /// host's clock) only ages unregistered volumes; whether a worker is alive and what
    /// is reapable the registry decides on its own clock.
    pub async fn run_once(&self, active: &HashSet<String>, now: SystemTime) -> Result<ReapReport> {
        self.run_once_live(&|| active.clone(), now).await
    }

    /// One pass while steps go on starting: `active` gives the step handles running
    /// now, and is asked after the worker's pods are listed. A step's handle is active
    /// before its pod is created, so every pod the listing saw whose step runs is in
    /// the set read after it; a set read before the listing would miss a step that
    /// started in between, and its new pod would be deleted under it.
    pub async fn run_once_live(
        &self,
        active: &(dyn Fn() -> HashSet<String> + Sync),
        now: SystemTime,
    ) -> Result<ReapReport> {
        let mut report = ReapReport::default();
        if let Some(pods) = &self.pods {
            self.reap_pods(pods.as_ref(), active, &mut report).await?;
            let opts = GarbageOpts::new(self.config.pod_garbage_grace, now);
            match pods.collect_garbage(&opts).await {
                Ok(g) => {
                    report.pod_garbage_deleted.extend(g.deleted);
                    report.errors.extend(g.errors);
                }
                Err(e) => report.errors.push(format!("collecting pod garbage: {e}")),
            }
        }
        self.reap_artifacts(&mut report).await?;
        if let Some(volumes) = &self.volumes {
            self.reap_orphan_volumes(volumes.as_ref(), now, &mut report)
                .await?;
        }
        Ok(report)
    }

    async fn reap_pods(
        &self,
        pods: &dyn Pods,
        active: &(dyn Fn() -> HashSet<String> + Sync),
        report: &mut ReapReport,
    ) -> Result<()> {
        let mut selector = BTreeMap::new();
        selector.insert(
            label::MANAGED_BY.to_owned(),
            label::MANAGED_BY_VALUE.to_owned(),
        );
        let listed = pods.list(&selector).await?;
        // After the listing, never before (see `run_once_live`).
        let active = active();
        let workers = self.registry.workers().await?;
        for pod in listed {
            let owner = pod
                .labels
                .get(label::WORKER)
                .map(String::as_str)
                .unwrap_or("");
            let handle = pod
                .labels
                .get(label::HANDLE)
                .map(String::as_str)
                .unwrap_or("");
            let reap = if owner == crate::names::label_value(&self.config.worker) {
                !active.contains(handle)
            } else {
                // Another worker's pod: only once that worker is known to be dead.
                self.config
                    .dead_worker
                    .as_ref()
                    .is_some_and(|dead| dead(owner))
                    || workers
                        .iter()
                        .find(|w| crate::names::label_value(&w.name) == owner)
                        .is_some_and(|w| !w.alive)
            };
            if reap {
                match pods
                    .delete(&pod.name, &DeleteOpts::grace(self.config.pod_grace))
                    .await
                {
                    Ok(()) => report.pods_deleted.push(pod.name),
                    Err(e) => report
                        .errors
                        .push(format!("deleting pod {}: {e}", pod.name)),
                }
            }
        }
        Ok(())
    }

    async fn reap_artifacts(&self, report: &mut ReapReport) -> Result<()> {
        let opts = ClaimOpts {
            limit: self.config.batch,
            stale_after: self.config.stale_claim,
        };
        loop {
            let claimed = self
                .registry
                .claim_reapable(&self.config.worker, &opts)
                .await?;
            if claimed.is_empty() {
                return Ok(());
            }
            let mut progressed = false;
            for a in &claimed {
                if let Some(volumes) = &self.volumes
                    && let Err(e) = volumes.delete(&a.volume).await
                {
                    // Left Destroying: taken again once the claim is stale.
                    report
                        .errors
                        .push(format!("deleting volume {}: {e}", a.volume));
                    continue;
                }
                match self.registry.forget(&a.id).await {
                    Ok(()) => {
                        report.artifacts_deleted += 1;
                        progressed = true;
                    }
                    Err(e) => report
                        .errors
                        .push(format!("forgetting artifact {}: {e}", a.id)),
                }
            }
            if !progressed || claimed.len() < self.config.batch {
                return Ok(());
            }
        }
    }

    async fn reap_orphan_volumes(
        &self,
        volumes: &dyn VolumeStore,
        now: SystemTime,
        report: &mut ReapReport,
    ) -> Result<()> {
        let all = volumes.list().await?;
        let old: Vec<_> = all
            .into_iter()
            .filter(|v| match v.created_at {
                // Made after `now` (the pass started before the listing, and a step's
                // volume exists a moment before its registration commits): young, not
                // of unknown age.
                Some(c) => {
                    now.duration_since(c).unwrap_or_default() >= self.config.orphan_volume_grace
                }
                // A store that cannot tell a volume's age: only the registry decides.
                None => true,
            })
            .map(|v| v.handle)
            .collect();
        if old.is_empty() {
            return Ok(());
        }
        let known: HashSet<_> = self
            .registry
            .known_volumes(&old)
            .await?
            .into_iter()
            .collect();
        for h in old.into_iter().filter(|h| !known.contains(h)) {
            match volumes.delete(&h).await {
                Ok(()) => report.orphan_volumes_deleted += 1,
                Err(e) => report
                    .errors
                    .push(format!("deleting orphan volume {h}: {e}")),
            }
        }
        Ok(())
    }
}
