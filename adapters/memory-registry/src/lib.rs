//! # jetbridge-memory-registry
//!
//! [`MemoryRegistry`]: the artifact registry in a map behind one mutex, on a clock of
//! its own ([`RegistryClock`]) as a database has; and [`MemoryBuildQueue`], the build
//! queue of a server on the embedded default. This is production code (the
//! binary's default `--registry memory`); the fault-injecting fake built on it lives in
//! `jetbridge-memory`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use jetbridge_core::digest::Digest;
use jetbridge_core::names::{ArtifactId, VolumeHandle};
use jetbridge_core::ports::{
    Artifact, ArtifactFilter, ArtifactRegistry, ArtifactState, ClaimOpts, HeartbeatMode,
    HeartbeatOpts, Holder, NewArtifact, RegistryCapabilities, Worker,
};
use jetbridge_core::{Error, Result};

mod config;
mod error;
mod queue;

pub use config::RegistryClock;
use error::{destroying, not_found};
pub use queue::MemoryBuildQueue;

#[derive(Debug)]
struct Record {
    artifact: Artifact,
    /// The registration as first made, to tell a retry from a conflicting one.
    origin: NewArtifact,
    seq: u64,
    holders: BTreeSet<Holder>,
    claimed_at: Option<SystemTime>,
}

#[derive(Debug)]
struct Registration {
    session: String,
    last_heartbeat: SystemTime,
    expires_at: SystemTime,
}

impl Registration {
    fn alive_at(&self, now: SystemTime) -> bool {
        self.expires_at > now
    }
}

#[derive(Debug, Default)]
struct State {
    records: BTreeMap<ArtifactId, Record>,
    /// Which artifact owns each volume: `register` checks uniqueness without a scan.
    by_volume: HashMap<VolumeHandle, ArtifactId>,
    workers: BTreeMap<String, Registration>,
    seq: u64,
}

/// An in-memory [`ArtifactRegistry`]; every operation is atomic under one mutex, so two
/// concurrent claimers never get the same artifact.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    state: Mutex<State>,
    clock: RegistryClock,
}

impl MemoryRegistry {
    /// An empty registry on the system clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry on `clock`.
    pub fn with_clock(clock: RegistryClock) -> Self {
        MemoryRegistry {
            clock,
            ..Self::default()
        }
    }

    /// The clock every expiry, retention and claim age is judged by.
    pub fn clock(&self) -> &RegistryClock {
        &self.clock
    }

    /// How many references an artifact has (0 when unknown).
    pub fn reference_count(&self, id: &ArtifactId) -> usize {
        self.lock().records.get(id).map_or(0, |r| r.holders.len())
    }

    /// How many records exist, in any state.
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation below is complete before it can panic, so a poisoned state is
        // still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `f` on the state with the registry's time.
    fn guarded<T>(&self, f: impl FnOnce(&mut State, SystemTime) -> Result<T>) -> Result<T> {
        let now = self.clock.now();
        f(&mut self.lock(), now)
    }
}

fn matches(a: &Artifact, f: &ArtifactFilter) -> bool {
    f.build.as_ref().is_none_or(|b| *b == a.build)
        && f.step.as_ref().is_none_or(|s| *s == a.step)
        && f.name.as_ref().is_none_or(|n| *n == a.name)
        && f.volume.as_ref().is_none_or(|v| *v == a.volume)
        && f.state.is_none_or(|s| s == a.state)
}

impl State {
    /// Whether a reference from `h` protects its artifact at `now`: its worker is alive,
    /// or has never registered (so nothing says it is dead).
    fn protects(&self, h: &Holder, now: SystemTime) -> bool {
        self.workers.get(&h.worker).is_none_or(|w| w.alive_at(now))
    }

    /// Drop every reference of `worker`'s builds (its registration lapsed).
    fn drop_refs_of(&mut self, worker: &str) {
        for r in self.records.values_mut() {
            r.holders.retain(|h| h.worker != worker);
        }
    }

    fn reapable(&self, r: &Record, now: SystemTime, stale_after: Duration) -> bool {
        match r.artifact.state {
            ArtifactState::Destroying => r
                .claimed_at
                .is_some_and(|at| now.duration_since(at).is_ok_and(|age| age >= stale_after)),
            ArtifactState::Creating | ArtifactState::Ready => {
                !r.holders.iter().any(|h| self.protects(h, now))
                    && r.artifact.retain_until.is_none_or(|t| t <= now)
            }
        }
    }
}

#[async_trait]
impl ArtifactRegistry for MemoryRegistry {
    fn capabilities(&self) -> RegistryCapabilities {
        RegistryCapabilities::none()
    }

    async fn register(&self, new: &NewArtifact) -> Result<Artifact> {
        self.guarded(|s, now| {
            if let Some(r) = s.records.get(&new.id) {
                return if r.origin == *new {
                    Ok(r.artifact.clone())
                } else {
                    Err(Error::conflict(format!(
                        "artifact {} is registered with other fields",
                        new.id
                    )))
                };
            }
            if let Some(other) = s.by_volume.get(&new.volume) {
                return Err(Error::already_exists(format!(
                    "volume {} belongs to artifact {other}",
                    new.volume
                )));
            }
            let artifact = Artifact {
                id: new.id.clone(),
                build: new.build.clone(),
                step: new.step.clone(),
                name: new.name.clone(),
                volume: new.volume.clone(),
                state: ArtifactState::Creating,
                size: None,
                digest: None,
                worker: new.holder.worker.clone(),
                retain_until: new.retain_until,
                created_at: now,
            };
            s.seq += 1;
            let rec = Record {
                artifact: artifact.clone(),
                origin: new.clone(),
                seq: s.seq,
                holders: BTreeSet::from([new.holder.clone()]),
                claimed_at: None,
            };
            s.records.insert(new.id.clone(), rec);
            s.by_volume.insert(new.volume.clone(), new.id.clone());
            Ok(artifact)
        })
    }

    async fn mark_ready(&self, id: &ArtifactId, size: u64, digest: &Digest) -> Result<Artifact> {
        self.guarded(|s, _| {
            let r = s.records.get_mut(id).ok_or_else(|| not_found(id))?;
            let a = &mut r.artifact;
            match a.state {
                ArtifactState::Destroying => Err(destroying(id)),
                ArtifactState::Ready => {
                    if a.size == Some(size) && a.digest.as_ref() == Some(digest) {
                        Ok(a.clone())
                    } else {
                        Err(Error::conflict(format!(
                            "artifact {id} is ready with another size or digest"
                        )))
                    }
                }
                ArtifactState::Creating => {
                    a.state = ArtifactState::Ready;
                    a.size = Some(size);
                    a.digest = Some(digest.clone());
                    Ok(a.clone())
                }
            }
        })
    }

    async fn get(&self, id: &ArtifactId) -> Result<Artifact> {
        self.guarded(|s, _| {
            s.records
                .get(id)
                .map(|r| r.artifact.clone())
                .ok_or_else(|| not_found(id))
        })
    }

    async fn find(&self, filter: &ArtifactFilter) -> Result<Vec<Artifact>> {
        self.guarded(|s, _| {
            let mut found: Vec<&Record> = s
                .records
                .values()
                .filter(|r| matches(&r.artifact, filter))
                .collect();
            found.sort_by_key(|r| (r.artifact.created_at, r.seq));
            Ok(found.into_iter().map(|r| r.artifact.clone()).collect())
        })
    }

    async fn acquire(&self, id: &ArtifactId, holder: &Holder) -> Result<()> {
        self.guarded(|s, _| {
            let r = s.records.get_mut(id).ok_or_else(|| not_found(id))?;
            if r.artifact.state == ArtifactState::Destroying {
                return Err(destroying(id));
            }
            r.holders.insert(holder.clone());
            Ok(())
        })
    }

    async fn release(&self, id: &ArtifactId, holder: &Holder) -> Result<()> {
        self.guarded(|s, _| {
            if let Some(r) = s.records.get_mut(id) {
                r.holders.remove(holder);
            }
            Ok(())
        })
    }

    async fn release_all(&self, holder: &Holder) -> Result<u64> {
        self.guarded(|s, _| {
            let mut n = 0;
            for r in s.records.values_mut() {
                if r.holders.remove(holder) {
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    async fn claim_reapable(&self, claimer: &str, opts: &ClaimOpts) -> Result<Vec<Artifact>> {
        let _ = claimer;
        let (limit, stale_after) = (opts.limit, opts.stale_after);
        self.guarded(|s, now| {
            let mut ids: Vec<(SystemTime, u64, ArtifactId)> = s
                .records
                .values()
                .filter(|r| s.reapable(r, now, stale_after))
                .map(|r| (r.artifact.created_at, r.seq, r.artifact.id.clone()))
                .collect();
            ids.sort();
            ids.truncate(limit);
            let mut out = Vec::with_capacity(ids.len());
            for (_, _, id) in ids {
                if let Some(r) = s.records.get_mut(&id) {
                    r.artifact.state = ArtifactState::Destroying;
                    r.claimed_at = Some(now);
                    out.push(r.artifact.clone());
                }
            }
            Ok(out)
        })
    }

    async fn forget(&self, id: &ArtifactId) -> Result<()> {
        self.guarded(|s, _| match s.records.get(id) {
            None => Ok(()),
            Some(r) if r.artifact.state == ArtifactState::Destroying => {
                let volume = r.artifact.volume.clone();
                s.records.remove(id);
                s.by_volume.remove(&volume);
                Ok(())
            }
            Some(_) => Err(Error::conflict(format!(
                "artifact {id} is not being destroyed"
            ))),
        })
    }

    async fn known_volumes(&self, volumes: &[VolumeHandle]) -> Result<Vec<VolumeHandle>> {
        self.guarded(|s, _| {
            let known: BTreeSet<&VolumeHandle> =
                s.records.values().map(|r| &r.artifact.volume).collect();
            let mut seen = BTreeSet::new();
            Ok(volumes
                .iter()
                .filter(|v| known.contains(v) && seen.insert(*v))
                .cloned()
                .collect())
        })
    }

    async fn heartbeat(&self, worker: &str, opts: &HeartbeatOpts) -> Result<Worker> {
        self.guarded(|s, now| {
            let expires_at = now.checked_add(opts.ttl).ok_or_else(|| {
                Error::invalid(format!("heartbeat ttl {:?} is too large", opts.ttl))
            })?;
            let current = s.workers.get(worker);
            let ours = current.is_some_and(|w| w.session == opts.session);
            let alive = current.is_some_and(|w| w.alive_at(now));
            let lapsed = current.is_some() && !alive;
            match opts.mode {
                HeartbeatMode::Register if alive && !ours => {
                    return Err(Error::already_exists(format!(
                        "worker name {worker:?} is held by another live process; give this \
                         one another name, or stop the other"
                    )));
                }
                // The lapsed registration's references protect nothing; they must not come
                // back to life under the new one.
                HeartbeatMode::Register if lapsed => s.drop_refs_of(worker),
                HeartbeatMode::Renew if !(alive && ours) => {
                    return Err(Error::conflict(format!(
                        "the registration of worker {worker:?} lapsed or was taken over"
                    )));
                }
                _ => {}
            }
            s.workers.insert(
                worker.to_owned(),
                Registration {
                    session: opts.session.clone(),
                    last_heartbeat: now,
                    expires_at,
                },
            );
            Ok(Worker {
                name: worker.to_owned(),
                last_heartbeat: now,
                expires_at,
                alive: expires_at > now,
            })
        })
    }

    async fn sign_off(&self, worker: &str, session: &str) -> Result<()> {
        self.guarded(|s, now| {
            if let Some(w) = s.workers.get_mut(worker)
                && w.session == session
                && w.alive_at(now)
            {
                w.expires_at = now;
            }
            Ok(())
        })
    }

    async fn workers(&self) -> Result<Vec<Worker>> {
        self.guarded(|s, now| {
            Ok(s.workers
                .iter()
                .map(|(name, w)| Worker {
                    name: name.clone(),
                    last_heartbeat: w.last_heartbeat,
                    expires_at: w.expires_at,
                    alive: w.alive_at(now),
                })
                .collect())
        })
    }
}
