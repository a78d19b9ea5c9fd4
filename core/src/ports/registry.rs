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

/// An artifact to register. Built with [`NewArtifact::new`], so a field can be added
/// without breaking callers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Keep it (unreferenced) until then, compared with the registry's clock; `None`:
    /// collectable once unreferenced.
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

/// A worker's registration, as the registry saw it when listing (its own clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// Name.
    pub name: String,
    /// Last heartbeat, on the registry's clock.
    pub last_heartbeat: SystemTime,
    /// Heartbeat expiry, on the registry's clock; after it the worker is dead.
    pub expires_at: SystemTime,
    /// Whether the registration had not expired when it was listed. Decide liveness by
    /// this, never by comparing `expires_at` with a host's clock.
    pub alive: bool,
}

/// What a [`ArtifactRegistry::heartbeat`] may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatMode {
    /// Take the name: it is free, its registration expired (its references are then
    /// dropped: they belonged to a process that is gone), or it is already this
    /// session's. `AlreadyExists` while another session holds it alive.
    Register,
    /// Extend this session's live registration. `Conflict` once it lapsed or another
    /// session took the name: the caller's references may have stopped protecting
    /// anything, so it must stop what it runs.
    Renew,
}

/// How a worker registers or renews (see [`ArtifactRegistry::heartbeat`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeartbeatOpts {
    /// Identifies the process holding the name (random per process), so that the same
    /// process renews and a second one is refused.
    pub session: String,
    /// How long the registration lasts from this heartbeat, on the registry's clock.
    pub ttl: Duration,
    /// Register or renew.
    pub mode: HeartbeatMode,
}

/// How [`ArtifactRegistry::claim_reapable`] claims: `ClaimOpts::default()` and the
/// `with_*` builders.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClaimOpts {
    /// Most artifacts returned (default 500).
    pub limit: usize,
    /// `Destroying` claims at least this old (on the registry's clock) are taken again:
    /// their reaper crashed (default 10 min). Zero takes every claim again.
    pub stale_after: Duration,
}

impl Default for ClaimOpts {
    fn default() -> Self {
        ClaimOpts {
            limit: 500,
            stale_after: Duration::from_secs(600),
        }
    }
}

impl ClaimOpts {
    /// At most `limit` artifacts.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Take `Destroying` claims at least `d` old again.
    pub fn with_stale_after(mut self, d: Duration) -> Self {
        self.stale_after = d;
        self
    }
}

impl HeartbeatOpts {
    /// A heartbeat of `session` lasting `ttl`.
    pub fn new(session: impl Into<String>, ttl: Duration, mode: HeartbeatMode) -> Self {
        HeartbeatOpts {
            session: session.into(),
            ttl,
            mode,
        }
    }
}

impl NewArtifact {
    /// Artifact `name` of `build`'s `step`, in `volume`, referenced by `holder`;
    /// collectable once unreferenced (see [`NewArtifact::with_retain_until`]).
    pub fn new(
        id: ArtifactId,
        build: impl Into<String>,
        step: impl Into<String>,
        name: impl Into<String>,
        volume: VolumeHandle,
        holder: Holder,
    ) -> Self {
        NewArtifact {
            id,
            build: build.into(),
            step: step.into(),
            name: name.into(),
            volume,
            holder,
            retain_until: None,
        }
    }

    /// Keep it, unreferenced, until `t` on the registry's clock (`None`: not at all).
    pub fn with_retain_until(mut self, t: Option<SystemTime>) -> Self {
        self.retain_until = t;
        self
    }
}

/// Knows every artifact, who holds it, which workers are alive, and what is safe to
/// delete.
///
/// All writes are idempotent; a reaper claim never returns an artifact that is
/// referenced by a live worker's build, and two concurrent claims never return the same
/// artifact. Every time comparison (heartbeat expiry, retention, stale claims) uses the
/// registry's own clock (the database's `now()`), never a caller's: a reaper whose host
/// clock runs ahead cannot expire a live worker.
///
/// Worker membership lives here, not in a port of its own, because a claim's safety is
/// one atomic check of references against their workers' registrations.
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

    /// Claim up to `opts.limit` artifacts nothing live references and nothing retains
    /// (both judged on the registry's clock), moving them to `Destroying`, and return
    /// them. Artifacts already `Destroying` whose claim is at least `opts.stale_after`
    /// old (a reaper that crashed) are claimed again.
    async fn claim_reapable(&self, claimer: &str, opts: &ClaimOpts) -> Result<Vec<Artifact>>;

    /// Remove a `Destroying` record after its volume is gone. Forgetting an unknown id
    /// succeeds; `Conflict` if the record is not `Destroying`.
    async fn forget(&self, id: &ArtifactId) -> Result<()>;

    /// Which of `volumes` some record names (any state).
    async fn known_volumes(&self, volumes: &[VolumeHandle]) -> Result<Vec<VolumeHandle>>;

    /// Register or renew `worker` for `opts.session`, alive for `opts.ttl` from now on
    /// the registry's clock; returns the registration. A name is held by one live
    /// session at a time (see [`HeartbeatMode`] for the errors).
    async fn heartbeat(&self, worker: &str, opts: &HeartbeatOpts) -> Result<Worker>;

    /// End `session`'s registration of `worker` now: its references stop protecting at
    /// once and the name is free. Idempotent; does nothing when `session` does not hold
    /// the name.
    async fn sign_off(&self, worker: &str, session: &str) -> Result<()>;

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
                opts: &ClaimOpts,
            ) -> Result<Vec<Artifact>> {
                (**self).claim_reapable(claimer, opts).await
            }
            async fn forget(&self, id: &ArtifactId) -> Result<()> {
                (**self).forget(id).await
            }
            async fn known_volumes(&self, volumes: &[VolumeHandle]) -> Result<Vec<VolumeHandle>> {
                (**self).known_volumes(volumes).await
            }
            async fn heartbeat(&self, worker: &str, opts: &HeartbeatOpts) -> Result<Worker> {
                (**self).heartbeat(worker, opts).await
            }
            async fn sign_off(&self, worker: &str, session: &str) -> Result<()> {
                (**self).sign_off(worker, session).await
            }
            async fn workers(&self) -> Result<Vec<Worker>> {
                (**self).workers().await
            }
        }
    };
}
forward_registry!(Arc<T>);
forward_registry!(Box<T>);
