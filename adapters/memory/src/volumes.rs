//! [`MemoryVolumeStore`]: volumes as in-memory trees.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use jetbridge_core::digest::Digest;
use jetbridge_core::names::VolumeHandle;
use jetbridge_core::ports::{
    ByteStream, MountAccess, MountInfo, VolumeCapabilities, VolumeInfo, VolumeState, VolumeStore,
    collect_stream,
};
use jetbridge_core::{Error, ErrorKind, Result};

use crate::faults::{FaultTiming, Faults, after};
use crate::fs::MemFs;
use crate::tar::{create, extract};

/// Chunk size of tar streams handed out by [`MemoryVolumeStore::read_tar`].
const CHUNK: usize = 64 * 1024;

/// An operation of [`MemoryVolumeStore`], for fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VolumeOp {
    /// [`VolumeStore::create`].
    Create,
    /// [`VolumeStore::write_tar`].
    WriteTar,
    /// [`VolumeStore::seal`].
    Seal,
    /// [`VolumeStore::read_tar`].
    ReadTar,
    /// [`VolumeStore::stat`].
    Stat,
    /// [`VolumeStore::delete`].
    Delete,
    /// [`VolumeStore::list`].
    List,
    /// [`VolumeStore::mount`].
    Mount,
}

#[derive(Debug)]
struct Volume {
    state: VolumeState,
    tree: MemFs,
    size: u64,
    digest: Option<Digest>,
    created_at: SystemTime,
}

impl Volume {
    fn info(&self, handle: &VolumeHandle) -> VolumeInfo {
        VolumeInfo {
            handle: handle.clone(),
            state: self.state,
            size: self.size,
            digest: self.digest.clone(),
            created_at: Some(self.created_at),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    volumes: BTreeMap<VolumeHandle, Volume>,
    capacity: Option<u64>,
}

impl State {
    fn used_except(&self, handle: &VolumeHandle) -> u64 {
        self.volumes
            .iter()
            .filter(|(h, _)| *h != handle)
            .map(|(_, v)| v.tree.file_bytes())
            .sum()
    }
}

/// An in-memory [`VolumeStore`]: nothing persists and nothing can be mounted, so pods
/// get artifacts by tar streaming.
#[derive(Debug, Default)]
pub struct MemoryVolumeStore {
    state: Mutex<State>,
    faults: Faults<VolumeOp>,
}

fn not_found(handle: &VolumeHandle) -> Error {
    Error::not_found(format!("volume {handle}"))
}

impl MemoryVolumeStore {
    /// An empty store without a capacity limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Limit the bytes of regular files across all volumes; a write that would go
    /// beyond fails with `StorageFull`, discarding that volume's content (it stays
    /// `Creating`) and leaving other volumes intact. `None` removes the limit.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().capacity = bytes;
    }

    /// Bytes left under the capacity (`None` without one).
    fn free(&self) -> Option<u64> {
        let cap = self.lock().capacity?;
        Some(cap.saturating_sub(self.used_bytes()))
    }

    /// Bytes of regular files stored across all volumes.
    pub fn used_bytes(&self) -> u64 {
        self.lock()
            .volumes
            .values()
            .map(|v| v.tree.file_bytes())
            .sum()
    }

    /// Flip a byte of a volume's stored content so that `read_tar` reports `Corrupt`.
    /// `NotFound` if the volume does not exist.
    pub fn corrupt(&self, handle: &VolumeHandle) -> Result<()> {
        let mut s = self.lock();
        let v = s.volumes.get_mut(handle).ok_or_else(|| not_found(handle))?;
        match v.tree.first_file_mut() {
            Some(data) if !data.is_empty() => {
                let mut d = data.to_vec();
                d[0] ^= 0xff;
                *data = Bytes::from(d);
            }
            Some(data) => *data = Bytes::from_static(b"\0"),
            None => v
                .tree
                .write_file("/.corrupted", b"\0", false, 0o644)
                .map_err(|e| e.into_error(".corrupted"))?,
        }
        Ok(())
    }

    /// Make the next `n` calls of `op` fail with an error of `kind`, doing nothing.
    pub fn fail_next(&self, op: VolumeOp, n: usize, kind: ErrorKind) {
        self.faults.plan_kind(op, n, kind, FaultTiming::Before);
    }

    /// Make the next `n` calls of `op` take effect and then fail with `kind`.
    pub fn fail_next_after(&self, op: VolumeOp, n: usize, kind: ErrorKind) {
        self.faults.plan_kind(op, n, kind, FaultTiming::After);
    }

    /// Make the next `n` calls of `op` fail with exactly `error`.
    pub fn fail_next_with(&self, op: VolumeOp, n: usize, error: Error) {
        self.faults.plan(op, n, error, FaultTiming::Before);
    }

    /// Forget all planned failures.
    pub fn clear_faults(&self) {
        self.faults.clear();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Mutations are whole-value replacements, so a poisoned state is consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn guarded<T>(&self, op: VolumeOp, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let late = self.faults.before(op)?;
        let r = f(&mut self.lock());
        after(late, r)
    }
}

#[async_trait]
impl VolumeStore for MemoryVolumeStore {
    fn capabilities(&self) -> VolumeCapabilities {
        VolumeCapabilities::none()
    }

    async fn create(&self, handle: &VolumeHandle) -> Result<VolumeInfo> {
        self.guarded(VolumeOp::Create, |s| {
            if s.volumes.contains_key(handle) {
                return Err(Error::already_exists(format!("volume {handle}")));
            }
            let v = Volume {
                state: VolumeState::Creating,
                tree: MemFs::new(),
                size: 0,
                digest: None,
                created_at: SystemTime::now(),
            };
            let info = v.info(handle);
            s.volumes.insert(handle.clone(), v);
            Ok(info)
        })
    }

    async fn write_tar(&self, handle: &VolumeHandle, tar: ByteStream) -> Result<()> {
        let late = self.faults.before(VolumeOp::WriteTar)?;
        // Check the state first so a sealed volume fails without reading the stream.
        {
            let s = self.lock();
            let v = s.volumes.get(handle).ok_or_else(|| not_found(handle))?;
            if v.state == VolumeState::Sealed {
                return Err(Error::conflict(format!("volume {handle} is sealed")));
            }
        }
        let data = collect_stream(tar).await?;
        let r = (|| {
            let mut s = self.lock();
            let used = s.used_except(handle);
            let capacity = s.capacity;
            let v = s.volumes.get_mut(handle).ok_or_else(|| not_found(handle))?;
            if v.state == VolumeState::Sealed {
                return Err(Error::conflict(format!("volume {handle} is sealed")));
            }
            // Extract into a copy: a failure leaves the volume as it was.
            let mut staged = v.tree.clone();
            extract(&mut staged, "", &data)?;
            if let Some(cap) = capacity
                && used + staged.file_bytes() > cap
            {
                v.tree = MemFs::new();
                return Err(Error::storage_full(format!(
                    "volume {handle}: store capacity of {cap} bytes exceeded"
                )));
            }
            v.tree = staged;
            Ok(())
        })();
        after(late, r)
    }

    async fn seal(&self, handle: &VolumeHandle) -> Result<VolumeInfo> {
        self.guarded(VolumeOp::Seal, |s| {
            let v = s.volumes.get_mut(handle).ok_or_else(|| not_found(handle))?;
            if v.state == VolumeState::Creating {
                let (size, digest) = v.tree.digest("/").map_err(|e| e.into_error("/"))?;
                v.size = size;
                v.digest = Some(digest);
                v.state = VolumeState::Sealed;
            }
            Ok(v.info(handle))
        })
    }

    async fn read_tar(&self, handle: &VolumeHandle) -> Result<ByteStream> {
        let data = self.guarded(VolumeOp::ReadTar, |s| {
            let v = s.volumes.get(handle).ok_or_else(|| not_found(handle))?;
            if v.state != VolumeState::Sealed {
                return Err(Error::not_found(format!("volume {handle} is not sealed")));
            }
            let (_, digest) = v.tree.digest("/").map_err(|e| e.into_error("/"))?;
            if Some(&digest) != v.digest.as_ref() {
                return Err(Error::corrupt(format!(
                    "volume {handle}: content does not match its digest"
                )));
            }
            create(&v.tree, "/", false)
        })?;
        let data = Bytes::from(data);
        let chunks: Vec<Result<Bytes>> = (0..data.len())
            .step_by(CHUNK)
            .map(|i| Ok(data.slice(i..(i + CHUNK).min(data.len()))))
            .collect();
        Ok(Box::pin(futures::stream::iter(chunks)))
    }

    async fn stat(&self, handle: &VolumeHandle) -> Result<VolumeInfo> {
        self.guarded(VolumeOp::Stat, |s| {
            s.volumes
                .get(handle)
                .map(|v| v.info(handle))
                .ok_or_else(|| not_found(handle))
        })
    }

    async fn delete(&self, handle: &VolumeHandle) -> Result<()> {
        self.guarded(VolumeOp::Delete, |s| {
            s.volumes.remove(handle);
            Ok(())
        })
    }

    async fn list(&self) -> Result<Vec<VolumeInfo>> {
        self.guarded(VolumeOp::List, |s| {
            Ok(s.volumes.iter().map(|(h, v)| v.info(h)).collect())
        })
    }

    async fn free_bytes(&self, _handle: &VolumeHandle) -> Result<Option<u64>> {
        Ok(self.free())
    }

    async fn mount(&self, handle: &VolumeHandle, access: MountAccess) -> Result<MountInfo> {
        self.guarded(VolumeOp::Mount, |_| {
            Err(Error::unsupported(format!(
                "the memory store cannot mount volume {handle} ({access:?}) into pods"
            )))
        })
    }
}
