//! [`MemoryRegistry`]: the production in-memory registry of `jetbridge-memory-registry`
//! with scriptable faults layered on, so the faults never ship in the binary.

use std::ops::Deref;

use async_trait::async_trait;
use jetbridge_core::digest::Digest;
use jetbridge_core::names::{ArtifactId, VolumeHandle};
use jetbridge_core::ports::{
    Artifact, ArtifactFilter, ArtifactRegistry, ClaimOpts, HeartbeatOpts, Holder, NewArtifact,
    RegistryCapabilities, Worker,
};
use jetbridge_core::{Error, ErrorKind, Result};
pub use jetbridge_memory_registry::RegistryClock;

use crate::faults::{FaultTiming, Faults, after};

/// An operation of [`MemoryRegistry`], for fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegistryOp {
    /// [`ArtifactRegistry::register`].
    Register,
    /// [`ArtifactRegistry::mark_ready`].
    MarkReady,
    /// [`ArtifactRegistry::get`].
    Get,
    /// [`ArtifactRegistry::find`].
    Find,
    /// [`ArtifactRegistry::acquire`].
    Acquire,
    /// [`ArtifactRegistry::release`].
    Release,
    /// [`ArtifactRegistry::release_all`].
    ReleaseAll,
    /// [`ArtifactRegistry::claim_reapable`].
    ClaimReapable,
    /// [`ArtifactRegistry::forget`].
    Forget,
    /// [`ArtifactRegistry::known_volumes`].
    KnownVolumes,
    /// [`ArtifactRegistry::heartbeat`].
    Heartbeat,
    /// [`ArtifactRegistry::sign_off`].
    SignOff,
    /// [`ArtifactRegistry::workers`].
    Workers,
}

/// An in-memory [`ArtifactRegistry`] with fault injection; everything else (the clock,
/// `reference_count`, `len`) is the production registry's, reached through `Deref`.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    inner: jetbridge_memory_registry::MemoryRegistry,
    faults: Faults<RegistryOp>,
}

impl MemoryRegistry {
    /// An empty registry on the system clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry on `clock`.
    pub fn with_clock(clock: RegistryClock) -> Self {
        MemoryRegistry {
            inner: jetbridge_memory_registry::MemoryRegistry::with_clock(clock),
            faults: Faults::default(),
        }
    }

    /// Make the next `n` calls of `op` fail with an error of `kind`, doing nothing.
    pub fn fail_next(&self, op: RegistryOp, n: usize, kind: ErrorKind) {
        self.faults.plan_kind(op, n, kind, FaultTiming::Before);
    }

    /// Make the next `n` calls of `op` take effect and then fail with `kind`, as when a
    /// response is lost.
    pub fn fail_next_after(&self, op: RegistryOp, n: usize, kind: ErrorKind) {
        self.faults.plan_kind(op, n, kind, FaultTiming::After);
    }

    /// Make the next `n` calls of `op` fail with exactly `error`.
    pub fn fail_next_with(&self, op: RegistryOp, n: usize, error: Error) {
        self.faults.plan(op, n, error, FaultTiming::Before);
    }

    /// Forget all planned failures.
    pub fn clear_faults(&self) {
        self.faults.clear();
    }
}

impl Deref for MemoryRegistry {
    type Target = jetbridge_memory_registry::MemoryRegistry;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

#[async_trait]
impl ArtifactRegistry for MemoryRegistry {
    fn capabilities(&self) -> RegistryCapabilities {
        self.inner.capabilities()
    }

    async fn register(&self, new: &NewArtifact) -> Result<Artifact> {
        let late = self.faults.before(RegistryOp::Register)?;
        after(late, self.inner.register(new).await)
    }

    async fn mark_ready(&self, id: &ArtifactId, size: u64, digest: &Digest) -> Result<Artifact> {
        let late = self.faults.before(RegistryOp::MarkReady)?;
        after(late, self.inner.mark_ready(id, size, digest).await)
    }

    async fn get(&self, id: &ArtifactId) -> Result<Artifact> {
        let late = self.faults.before(RegistryOp::Get)?;
        after(late, self.inner.get(id).await)
    }

    async fn find(&self, filter: &ArtifactFilter) -> Result<Vec<Artifact>> {
        let late = self.faults.before(RegistryOp::Find)?;
        after(late, self.inner.find(filter).await)
    }

    async fn acquire(&self, id: &ArtifactId, holder: &Holder) -> Result<()> {
        let late = self.faults.before(RegistryOp::Acquire)?;
        after(late, self.inner.acquire(id, holder).await)
    }

    async fn release(&self, id: &ArtifactId, holder: &Holder) -> Result<()> {
        let late = self.faults.before(RegistryOp::Release)?;
        after(late, self.inner.release(id, holder).await)
    }

    async fn release_all(&self, holder: &Holder) -> Result<u64> {
        let late = self.faults.before(RegistryOp::ReleaseAll)?;
        after(late, self.inner.release_all(holder).await)
    }

    async fn claim_reapable(&self, claimer: &str, opts: &ClaimOpts) -> Result<Vec<Artifact>> {
        let late = self.faults.before(RegistryOp::ClaimReapable)?;
        after(late, self.inner.claim_reapable(claimer, opts).await)
    }

    async fn forget(&self, id: &ArtifactId) -> Result<()> {
        let late = self.faults.before(RegistryOp::Forget)?;
        after(late, self.inner.forget(id).await)
    }

    async fn known_volumes(&self, volumes: &[VolumeHandle]) -> Result<Vec<VolumeHandle>> {
        let late = self.faults.before(RegistryOp::KnownVolumes)?;
        after(late, self.inner.known_volumes(volumes).await)
    }

    async fn heartbeat(&self, worker: &str, opts: &HeartbeatOpts) -> Result<Worker> {
        let late = self.faults.before(RegistryOp::Heartbeat)?;
        after(late, self.inner.heartbeat(worker, opts).await)
    }

    async fn sign_off(&self, worker: &str, session: &str) -> Result<()> {
        let late = self.faults.before(RegistryOp::SignOff)?;
        after(late, self.inner.sign_off(worker, session).await)
    }

    async fn workers(&self) -> Result<Vec<Worker>> {
        let late = self.faults.before(RegistryOp::Workers)?;
        after(late, self.inner.workers().await)
    }
}
