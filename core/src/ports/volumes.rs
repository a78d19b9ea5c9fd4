use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

use super::ByteStream;
use crate::Result;
use crate::digest::Digest;
use crate::names::VolumeHandle;

/// What a [`VolumeStore`] can do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VolumeCapabilities {
    /// [`VolumeStore::mount`] works: pods can use volumes in place, no tar streaming.
    pub mount: bool,
    /// Volumes outlive the process (a directory, a bucket), unlike the memory store.
    pub persistent: bool,
}

impl VolumeCapabilities {
    /// All off.
    pub fn none() -> Self {
        Self::default()
    }
    /// Set [`Self::mount`].
    pub fn with_mount(mut self, v: bool) -> Self {
        self.mount = v;
        self
    }
    /// Set [`Self::persistent`].
    pub fn with_persistent(mut self, v: bool) -> Self {
        self.persistent = v;
        self
    }
}

/// How a pod reaches a volume without copying it through the orchestrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountInfo {
    /// A directory on the host the pod runs on (the local backend).
    HostPath {
        /// Absolute path.
        path: String,
    },
    /// A sub-directory of a named volume that every pod can mount, wherever it runs
    /// (the Kubernetes adapter maps it to a ReadWriteMany claim: GCS FUSE, Filestore, NFS).
    SharedVolume {
        /// The volume's name.
        volume: String,
        /// Path inside the volume.
        sub_path: String,
    },
}

/// Whether a mount is for filling a new volume or reading a sealed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountAccess {
    /// Write into a volume that is still being created.
    Write,
    /// Read a sealed volume (callers copy it; they never change it).
    Read,
}

/// Whether a volume can be read yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeState {
    /// Created, being filled; not readable.
    Creating,
    /// Sealed: content fixed, size and digest recorded, readable.
    Sealed,
}

/// A volume's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Handle.
    pub handle: VolumeHandle,
    /// State.
    pub state: VolumeState,
    /// Total bytes of regular files (0 while creating).
    pub size: u64,
    /// Tree digest ([`crate::digest::TreeDigest`]); `None` while creating.
    pub digest: Option<Digest>,
    /// When it was created, where known.
    pub created_at: Option<SystemTime>,
}

/// Stores artifact volumes: trees of files written once, sealed, then read many times.
///
/// Tar streams in and out are plain (uncompressed) POSIX/GNU tar. Writes are atomic: a
/// volume is readable only after [`seal`](VolumeStore::seal), and a failed write or
/// seal leaves nothing readable. Extraction never writes outside the volume.
#[async_trait]
pub trait VolumeStore: Send + Sync {
    /// What this store can do.
    fn capabilities(&self) -> VolumeCapabilities;

    /// Create an empty volume in state `Creating`. `AlreadyExists` if the handle is taken.
    async fn create(&self, handle: &VolumeHandle) -> Result<VolumeInfo>;

    /// Extract a tar stream into a `Creating` volume. Hostile entries (`..`, absolute
    /// paths, links leading out, devices) fail with `Invalid`; a full store fails with
    /// `StorageFull`. `Conflict` if the volume is sealed.
    async fn write_tar(&self, handle: &VolumeHandle, tar: ByteStream) -> Result<()>;

    /// Seal a `Creating` volume: compute size and digest, make it readable. Sealing a
    /// sealed volume returns its info.
    async fn seal(&self, handle: &VolumeHandle) -> Result<VolumeInfo>;

    /// A tar stream of a sealed volume. Content is checked against the digest; a
    /// mismatch is `Corrupt`, reported before or instead of any bad data where the
    /// store can tell. `NotFound` for a missing or unsealed volume.
    async fn read_tar(&self, handle: &VolumeHandle) -> Result<ByteStream>;

    /// The volume's metadata; `NotFound` if there is none.
    async fn stat(&self, handle: &VolumeHandle) -> Result<VolumeInfo>;

    /// Delete a volume in any state. Deleting a missing volume succeeds.
    async fn delete(&self, handle: &VolumeHandle) -> Result<()>;

    /// Every volume, in any state.
    async fn list(&self) -> Result<Vec<VolumeInfo>>;

    /// How a pod can use the volume in place. `Unsupported` unless
    /// [`VolumeCapabilities::mount`]; `Write` needs a `Creating` volume, `Read` a
    /// sealed one (`Conflict` otherwise).
    async fn mount(&self, handle: &VolumeHandle, access: MountAccess) -> Result<MountInfo>;

    /// Bytes still free where `handle`'s data is written, where the store can tell (a
    /// filesystem); `None` where it cannot (a bucket). The step runner asks when a
    /// command that wrote outputs in place failed, so that a full store is reported as
    /// `StorageFull` rather than as the command's own failure.
    async fn free_bytes(&self, handle: &VolumeHandle) -> Result<Option<u64>> {
        let _ = handle;
        Ok(None)
    }
}

macro_rules! forward_volumes {
    ($ty:ty) => {
        #[async_trait]
        impl<T: VolumeStore + ?Sized> VolumeStore for $ty {
            fn capabilities(&self) -> VolumeCapabilities {
                (**self).capabilities()
            }
            async fn create(&self, handle: &VolumeHandle) -> Result<VolumeInfo> {
                (**self).create(handle).await
            }
            async fn write_tar(&self, handle: &VolumeHandle, tar: ByteStream) -> Result<()> {
                (**self).write_tar(handle, tar).await
            }
            async fn seal(&self, handle: &VolumeHandle) -> Result<VolumeInfo> {
                (**self).seal(handle).await
            }
            async fn read_tar(&self, handle: &VolumeHandle) -> Result<ByteStream> {
                (**self).read_tar(handle).await
            }
            async fn stat(&self, handle: &VolumeHandle) -> Result<VolumeInfo> {
                (**self).stat(handle).await
            }
            async fn delete(&self, handle: &VolumeHandle) -> Result<()> {
                (**self).delete(handle).await
            }
            async fn list(&self) -> Result<Vec<VolumeInfo>> {
                (**self).list().await
            }
            async fn free_bytes(&self, handle: &VolumeHandle) -> Result<Option<u64>> {
                (**self).free_bytes(handle).await
            }
            async fn mount(&self, handle: &VolumeHandle, access: MountAccess) -> Result<MountInfo> {
                (**self).mount(handle, access).await
            }
        }
    };
}
forward_volumes!(Arc<T>);
forward_volumes!(Box<T>);
