use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::Result;
use crate::digest::Digest;
use crate::names::{ArtifactId, VolumeHandle};

/// What an [`ArtifactRegistry`] can do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistryCapabilities {
    /// Records outlive the process (a database), unlike the memory registry.
    pub persistent: bool,
    /// Several processes can share it safely (claims are exclusive across processes).
    pub shared: bool,
}

impl RegistryCapabilities {
    /// All off.
    pub fn none() -> Self {
        Self::default()
    }
    /// Set [`Self::persistent`].
    pub fn with_persistent(mut self, v: bool) -> Self {
        self.persistent = v;
        self
    }
    /// Set [`Self::shared`].
    pub fn with_shared(mut self, v: bool) -> Self {
        self.shared = v;
        self
    }
}

/// The life of an artifact record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArtifactState {
    /// Registered, volume being filled.
    Creating,
    /// Volume sealed; size and digest recorded.
    Ready,
    /// Claimed by a reaper; about to be deleted.
    Destroying,
}

impl ArtifactState {
    /// Stable lowercase name (also the database value).
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactState::Creating => "creating",
            ArtifactState::Ready => "ready",
            ArtifactState::Destroying => "destroying",
        }
    }
    /// Inverse of [`Self::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "creating" => Some(ArtifactState::Creating),
            "ready" => Some(ArtifactState::Ready),
            "destroying" => Some(ArtifactState::Destroying),
            _ => None,
        }
    }
}

/// Who holds a reference: a build running on a worker. References of a worker whose
/// heartbeat expired no longer protect anything.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Holder {
    /// Worker name.
    pub worker: String,
    /// Build id (unique across pipelines).
    pub build: String,
}

impl Holder {
    /// A holder.
    pub fn new(worker: impl Into<String>, build: impl Into<String>) -> Self {
        Holder {
            worker: worker.into(),
            build: build.into(),
        }
    }
}

/// An artifact to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewArtifact {
    /// Id chosen by the caller, so a retried registration is idempotent.
    pub id: ArtifactId,
    /// Build id that produced it.
    pub build: String,
    /// Step that produced it.
    pub step: String,
    /// Artifact name (output or resource name).
    pub name: String,
    /// Its volume.
    pub volume: VolumeHandle,
    /// Registered with a reference held by this holder.
    pub holder: Holder,
    /// Keep it (unreferenced) until then; `None`: collectable once unreferenced.
    pub retain_until: Option<SystemTime>,
}

/// An artifact record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Id.
    pub id: ArtifactId,
    /// Build id.
    pub build: String,
    /// Step.
    pub step: String,
    /// Name.
    pub name: String,
    /// Volume.
    pub volume: VolumeHandle,
    /// State.
    pub state: ArtifactState,
    /// Size once ready.
    pub size: Option<u64>,
    /// Digest once ready.
    pub digest: Option<Digest>,
    /// Worker that registered it.
    pub worker: String,
    /// Kept until then.
    pub retain_until: Option<SystemTime>,
    /// Registration time.
    pub created_at: SystemTime,
}

/// Which artifacts [`ArtifactRegistry::find`] returns; `None` fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArtifactFilter {
    /// Build id.
    pub build: Option<String>,
    /// Step.
    pub step: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// Volume.
    pub volume: Option<VolumeHandle>,
    /// State.
    pub state: Option<ArtifactState>,
}

/// A worker's registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// Name.
    pub name: String,
    /// Last heartbeat.
    pub last_heartbeat: SystemTime,
    /// Heartbeat expiry; after it the worker is dead.
    pub expires_at: SystemTime,
}

impl Worker {
    /// Whether the worker is alive at `now`.
    pub fn alive_at(&self, now: SystemTime) -> bool {
        self.expires_at > now
    }
}

/// Knows every artifact, who holds it, and what is safe to delete.
///
/// All writes are idempotent; a reaper claim never returns an artifact that is
/// referenced by a live worker's build, and two concurrent claims never return the same
/// artifact.
#[async_trait]
pub trait ArtifactRegistry: Send + Sync {
    /// What this registry can do.
    fn capabilities(&self) -> RegistryCapabilities;

    /// Register an artifact in state `Creating` with a reference from `new.holder`.
    /// Registering the same id again with the same fields returns the existing record;
    /// with different fields, `Conflict`. Registering a volume another artifact already
    /// has is `AlreadyExists`.
    async fn register(&self, new: &NewArtifact) -> Result<Artifact>;

    /// Record size and digest and move `Creating` to `Ready`. Repeating with the same
    /// values succeeds; `Conflict` if `Destroying` or different values.
    async fn mark_ready(&self, id: &ArtifactId, size: u64, digest: &Digest) -> Result<Artifact>;

    /// One artifact; `NotFound` if unknown.
    async fn get(&self, id: &ArtifactId) -> Result<Artifact>;

    /// Artifacts matching `filter`, oldest first.
    async fn find(&self, filter: &ArtifactFilter) -> Result<Vec<Artifact>>;

    /// Add a reference (idempotent). `NotFound` if unknown, `Conflict` if `Destroying`.
    async fn acquire(&self, id: &ArtifactId, holder: &Holder) -> Result<()>;

    /// Drop one reference (idempotent).
    async fn release(&self, id: &ArtifactId, holder: &Holder) -> Result<()>;

    /// Drop every reference `holder` has; returns how many there were.
    async fn release_all(&self, holder: &Holder) -> Result<u64>;

    /// Claim up to `limit` artifacts nothing live references and nothing retains (as of
    /// `now`), moving them to `Destroying`, and return them. Artifacts already
    /// `Destroying` whose claim is older than `stale_after` (a reaper that crashed) are
    /// claimed again.
    async fn claim_reapable(
        &self,
        claimer: &str,
        limit: usize,
        now: SystemTime,
        stale_after: Duration,
    ) -> Result<Vec<Artifact>>;

    /// Remove a `Destroying` record after its volume is gone. Forgetting an unknown id
    /// succeeds; `Conflict` if the record is not `Destroying`.
    async fn forget(&self, id: &ArtifactId) -> Result<()>;

    /// Which of `volumes` some record names (any state).
    async fn known_volumes(&self, volumes: &[VolumeHandle]) -> Result<Vec<VolumeHandle>>;

    /// Record that `worker` is alive for `ttl` from `now`.
    async fn heartbeat(&self, worker: &str, now: SystemTime, ttl: Duration) -> Result<()>;

    /// Every registered worker, alive or not.
    async fn workers(&self) -> Result<Vec<Worker>>;
}

macro_rules! forward_registry {
    ($ty:ty) => {
        #[async_trait]
        impl<T: ArtifactRegistry + ?Sized> ArtifactRegistry for $ty {
            fn capabilities(&self) -> RegistryCapabilities {
                (**self).capabilities()
            }
            async fn register(&self, new: &NewArtifact) -> Result<Artifact> {
                (**self).register(new).await
            }
            async fn mark_ready(
                &self,
                id: &ArtifactId,
                size: u64,
                digest: &Digest,
            ) -> Result<Artifact> {
                (**self).mark_ready(id, size, digest).await
            }
            async fn get(&self, id: &ArtifactId) -> Result<Artifact> {
                (**self).get(id).await
            }
            async fn find(&self, filter: &ArtifactFilter) -> Result<Vec<Artifact>> {
                (**self).find(filter).await
            }
            async fn acquire(&self, id: &ArtifactId, holder: &Holder) -> Result<()> {
                (**self).acquire(id, holder).await
            }
            async fn release(&self, id: &ArtifactId, holder: &Holder) -> Result<()> {
                (**self).release(id, holder).await
            }
            async fn release_all(&self, holder: &Holder) -> Result<u64> {
                (**self).release_all(holder).await
            }
            async fn claim_reapable(
                &self,
                claimer: &str,
                limit: usize,
                now: SystemTime,
                stale_after: Duration,
            ) -> Result<Vec<Artifact>> {
                (**self)
                    .claim_reapable(claimer, limit, now, stale_after)
                    .await
            }
            async fn forget(&self, id: &ArtifactId) -> Result<()> {
                (**self).forget(id).await
            }
            async fn known_volumes(&self, volumes: &[VolumeHandle]) -> Result<Vec<VolumeHandle>> {
                (**self).known_volumes(volumes).await
            }
            async fn heartbeat(&self, worker: &str, now: SystemTime, ttl: Duration) -> Result<()> {
                (**self).heartbeat(worker, now, ttl).await
            }
            async fn workers(&self) -> Result<Vec<Worker>> {
                (**self).workers().await
            }
        }
    };
}
forward_registry!(Arc<T>);
forward_registry!(Box<T>);
