//! VolumeStore over a directory: a PVC, a GCS FUSE mount or any local directory.
//!
//! [`FsVolumeStore`] keeps each volume as a directory tree under a root directory. In a
//! cluster the root is a ReadWriteMany PersistentVolumeClaim (GCS FUSE CSI, Filestore,
//! NFS) mounted into the orchestrator, and step pods mount single volumes by subPath;
//! on a laptop it is any directory and pods (local processes) use host paths.
//!
//! Layout under the root (see the README for the full argument):
//!
//! ```text
//! volumes/<handle>/CREATING        {"created_at_unix_ms": ..}   written by create
//! volumes/<handle>/data/           the tree
//! volumes/<handle>/MANIFEST.json   sealed marker: digest, size, files, times
//! trash/<handle>-<uuid>/           deleted volumes on their way out
//! ```
//!
//! A volume is sealed exactly when `MANIFEST.json` exists and parses for that handle;
//! the manifest is written last, through a temporary file, fsync and a rename of that
//! one file. Nothing depends on renaming a directory, so the rule holds on GCS FUSE,
//! where a rename copies objects.

mod config;
mod copy;
mod error;
mod extract;
mod fsutil;
mod pack;
mod walk;

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use jetbridge_core::names::VolumeHandle;
use jetbridge_core::ports::volume_support::{
    BusyGuard, BusyVolumes, SealRecord, creating_info, from_unix_ms, unix_ms,
};
use jetbridge_core::ports::{
    ByteStream, MountAccess, MountInfo, VolumeCapabilities, VolumeInfo, VolumeStore,
};
use jetbridge_core::{Error, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::MountMapping;
use crate::error::{ctx, io_err};
use crate::extract::{ChannelReader, Chunk};
use crate::fsutil::{remove_tree, sync_fs, write_durable};

const VOLUMES: &str = "volumes";
const TRASH: &str = "trash";
const DATA: &str = "data";
const MANIFEST: &str = "MANIFEST.json";
const CREATING: &str = "CREATING";
/// Manifest format written by this version.
const FORMAT: u32 = 1;
/// Mode of a fresh volume's data directory.
const DATA_DIR_MODE: u32 = 0o755;
/// Tar chunks in flight between the async side and the blocking extractor or producer.
const CHANNEL_DEPTH: usize = 8;

/// The sealed marker of a volume: exactly what every store's seal records.
type Manifest = SealRecord;

/// Contents of the `CREATING` marker.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CreatingMarker {
    created_at_unix_ms: u64,
}

/// Where a volume stands on disk.
#[derive(Debug)]
enum OnDisk {
    Creating { created_at: Option<SystemTime> },
    Sealed(Manifest),
}

/// State shared by clones of a store.
#[derive(Debug, Default)]
struct Shared {
    /// Volumes a write or seal is working on in this process.
    busy: BusyVolumes,
}

/// A [`VolumeStore`] over a directory. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct FsVolumeStore {
    root: PathBuf,
    mapping: MountMapping,
    write_limit: Option<u64>,
    flush: bool,
    shared: Arc<Shared>,
}

/// Run blocking filesystem work off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::other(format!("filesystem task failed: {e}")))?
}

impl FsVolumeStore {
    /// A store rooted at `root`, created if missing. `mount` reports host paths until
    /// [`with_shared_volume`](Self::with_shared_volume) says otherwise.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(root.join(VOLUMES)).map_err(ctx("creating the store root"))?;
        fs::create_dir_all(root.join(TRASH)).map_err(ctx("creating the store root"))?;
        // Absolute, so host paths handed to pods work from any working directory.
        let root = fs::canonicalize(&root).map_err(ctx("resolving the store root"))?;
        Ok(FsVolumeStore {
            root,
            mapping: MountMapping::HostPath,
            write_limit: None,
            flush: true,
            shared: Arc::new(Shared {
                busy: BusyVolumes::default(),
            }),
        })
    }

    /// The store's root directory (absolute).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory that holds a volume's tree (whether or not the volume exists).
    pub fn volume_data_path(&self, handle: &VolumeHandle) -> PathBuf {
        self.volume_dir(handle).join(DATA)
    }

    fn volume_dir(&self, handle: &VolumeHandle) -> PathBuf {
        // Handles are `[a-z0-9-]` by construction: always one safe path segment.
        self.root.join(VOLUMES).join(handle.as_str())
    }

    /// Re-hash a sealed volume and compare it with its manifest: `Corrupt` on any
    /// difference, `NotFound` unless sealed. Costs one read of every file.
    pub async fn verify(&self, handle: &VolumeHandle) -> Result<VolumeInfo> {
        let this = self.clone();
        let h = handle.clone();
        blocking(move || {
            let m = this.sealed(&h)?;
            let data = this.volume_data_path(&h);
            let (_, _, summary) = walk::digest_tree(&data).map_err(copy::as_corrupt)?;
            check_summary(&h, &m, &summary)?;
            Ok(m.info(&h))
        })
        .await
    }

    /// Make a private, writable copy of a sealed volume's tree at `dest` (missing or
    /// an empty directory; its parent is created): modes, mtimes, symlinks (never
    /// followed) and empty directories are kept. Each file is read once, written and
    /// hashed; the tree digest is checked against the seal before the copy is moved into
    /// place, so on `Corrupt` (or any error) `dest` is untouched. The local backend's
    /// input copies are this same code (`jetbridge_core::copy`).
    pub async fn copy_to(
        &self,
        handle: &VolumeHandle,
        dest: impl AsRef<Path>,
    ) -> Result<VolumeInfo> {
        let this = self.clone();
        let h = handle.clone();
        let dest = dest.as_ref().to_path_buf();
        blocking(move || {
            let m = this.sealed(&h)?;
            let data = this.volume_data_path(&h);
            let summary = copy::copy_tree(&data, &dest, &m.digest)?;
            check_summary(&h, &m, &summary)?;
            Ok(m.info(&h))
        })
        .await
    }

    fn try_busy(&self, handle: &VolumeHandle) -> Result<BusyGuard> {
        self.shared.busy.claim(handle)
    }

    /// Where a volume stands; `None` if it does not exist.
    fn on_disk(&self, handle: &VolumeHandle) -> Result<Option<OnDisk>> {
        let dir = self.volume_dir(handle);
        match fs::symlink_metadata(&dir) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e, format_args!("stat volume {handle}"))),
        }
        if let Some(m) = read_manifest(&dir, handle)? {
            return Ok(Some(OnDisk::Sealed(m)));
        }
        let created_at = match fs::read(dir.join(CREATING)) {
            Ok(b) => serde_json::from_slice::<CreatingMarker>(&b)
                .ok()
                .map(|c| from_unix_ms(c.created_at_unix_ms)),
            Err(_) => None,
        }
        .or_else(|| fs::metadata(&dir).and_then(|m| m.modified()).ok());
        Ok(Some(OnDisk::Creating { created_at }))
    }

    /// The manifest of a sealed volume; `NotFound` if missing or not sealed.
    fn sealed(&self, handle: &VolumeHandle) -> Result<Manifest> {
        match self.on_disk(handle)? {
            Some(OnDisk::Sealed(m)) => Ok(m),
            Some(OnDisk::Creating { .. }) => {
                Err(Error::not_found(format!("volume {handle} is not sealed")))
            }
            None => Err(Error::not_found(format!("volume {handle} does not exist"))),
        }
    }

    fn stat_blocking(&self, handle: &VolumeHandle) -> Result<VolumeInfo> {
        match self.on_disk(handle)? {
            Some(OnDisk::Sealed(m)) => Ok(m.info(handle)),
            Some(OnDisk::Creating { created_at }) => Ok(creating_info(handle, created_at)),
            None => Err(Error::not_found(format!("volume {handle} does not exist"))),
        }
    }

    fn create_blocking(&self, handle: &VolumeHandle) -> Result<VolumeInfo> {
        let dir = self.volume_dir(handle);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::already_exists(format!("volume {handle} exists")));
            }
            Err(e) => return Err(io_err(e, format_args!("creating volume {handle}"))),
        }
        let created_ms = unix_ms(SystemTime::now());
        let r = (|| {
            let marker = serde_json::to_vec(&CreatingMarker {
                created_at_unix_ms: created_ms,
            })
            .map_err(|e| Error::other(format!("encoding the creating marker: {e}")))?;
            fs::write(dir.join(CREATING), marker).map_err(ctx("writing the creating marker"))?;
            let data = dir.join(DATA);
            fs::create_dir(&data).map_err(ctx("creating the data directory"))?;
            fs::set_permissions(&data, fs::Permissions::from_mode(DATA_DIR_MODE))
                .map_err(ctx("setting the data directory mode"))
        })();
        if let Err(e) = r {
            // Nothing half-made stays behind (e.g. on ENOSPC).
            let _ = remove_tree(&dir);
            return Err(e.context(format_args!("creating volume {handle}")));
        }
        Ok(creating_info(handle, Some(from_unix_ms(created_ms))))
    }

    fn write_blocking(
        &self,
        handle: &VolumeHandle,
        rx: mpsc::Receiver<Chunk>,
        failed: &Arc<Mutex<Option<Error>>>,
    ) -> Result<()> {
        match self.on_disk(handle)? {
            None => return Err(Error::not_found(format!("volume {handle} does not exist"))),
            Some(OnDisk::Sealed(_)) => {
                return Err(Error::conflict(format!("volume {handle} is sealed")));
            }
            Some(OnDisk::Creating { .. }) => {}
        }
        let data = self.volume_data_path(handle);
        if let Err(e) = fs::create_dir(&data)
            && e.kind() != io::ErrorKind::AlreadyExists
        {
            return Err(io_err(e, "creating the data directory"));
        }
        let reader = ChannelReader::new(rx, failed.clone());
        let r = extract::extract(reader, &data, self.write_limit, failed);
        if let Err(e) = r {
            // Leave the volume Creating and empty: nothing partial can be sealed or read.
            let cleanup = remove_tree(&data).and_then(|()| {
                fs::create_dir(&data)?;
                fs::set_permissions(&data, fs::Permissions::from_mode(DATA_DIR_MODE))
            });
            if let Err(ce) = cleanup {
                tracing::warn!(volume = %handle, error = %ce, "could not clear a failed write");
            }
            return Err(e.context(format_args!("writing volume {handle}")));
        }
        Ok(())
    }

    fn seal_blocking(&self, handle: &VolumeHandle) -> Result<VolumeInfo> {
        let created_at = match self.on_disk(handle)? {
            None => return Err(Error::not_found(format!("volume {handle} does not exist"))),
            Some(OnDisk::Sealed(m)) => return Ok(m.info(handle)),
            Some(OnDisk::Creating { created_at }) => created_at,
        };
        let dir = self.volume_dir(handle);
        let data = dir.join(DATA);
        if let Err(e) = fs::create_dir(&data)
            && e.kind() != io::ErrorKind::AlreadyExists
        {
            return Err(io_err(e, "creating the data directory"));
        }
        let (nodes, _, summary) =
            walk::digest_tree(&data).map_err(|e| e.context(format_args!("sealing {handle}")))?;
        // A pod writing in place may have set them; a volume never keeps them.
        walk::drop_special_bits(&data, &nodes)
            .map_err(|e| e.context(format_args!("sealing {handle}")))?;
        // The data must be on disk before the manifest that vouches for it.
        if self.flush {
            sync_fs(&data);
        }
        let m = Manifest::new(
            FORMAT,
            handle,
            summary.digest,
            summary.size,
            summary.files,
            created_at,
        );
        let body = serde_json::to_vec_pretty(&m)
            .map_err(|e| Error::other(format!("encoding the manifest: {e}")))?;
        write_durable(&dir.join(MANIFEST), &body)
            .map_err(ctx(format_args!("writing the manifest of {handle}")))?;
        // Informational only; the manifest alone decides the state.
        let _ = fs::remove_file(dir.join(CREATING));
        Ok(m.info(handle))
    }

    fn delete_blocking(&self, handle: &VolumeHandle) -> Result<()> {
        let dir = self.volume_dir(handle);
        let trash = self
            .root
            .join(TRASH)
            .join(format!("{handle}-{}", uuid::Uuid::new_v4().simple()));
        match fs::rename(&dir, &trash) {
            Ok(()) => {
                // The volume is gone from the store's view; a removal that fails here
                // only leaves garbage in trash/, swept by later deletes.
                if let Err(e) = remove_tree(&trash) {
                    tracing::warn!(volume = %handle, error = %e, "could not empty trash");
                }
                self.sweep_trash();
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => {
                // Directory rename is unsupported or not atomic here (GCS FUSE on a
                // flat bucket): unseal first so readers stop seeing it, then remove.
                tracing::debug!(volume = %handle, error = %e, "rename to trash failed; removing in place");
                match fs::remove_file(dir.join(MANIFEST)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(e, format_args!("deleting volume {handle}"))),
                }
                remove_tree(&dir).map_err(ctx(format_args!("deleting volume {handle}")))
            }
        }
    }

    /// Best-effort removal of trash left by interrupted deletes.
    fn sweep_trash(&self) {
        let Ok(rd) = fs::read_dir(self.root.join(TRASH)) else {
            return;
        };
        for ent in rd.flatten() {
            let _ = remove_tree(&ent.path());
        }
    }

    fn list_blocking(&self) -> Result<Vec<VolumeInfo>> {
        let mut out = Vec::new();
        let rd = fs::read_dir(self.root.join(VOLUMES)).map_err(ctx("listing volumes"))?;
        for ent in rd {
            let ent = ent.map_err(ctx("listing volumes"))?;
            let Some(name) = ent.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(handle) = VolumeHandle::parse(&name) else {
                continue;
            };
            match self.stat_blocking(&handle) {
                Ok(info) => out.push(info),
                // Deleted between the listing and the stat.
                Err(e) if e.kind() == jetbridge_core::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.handle.cmp(&b.handle));
        Ok(out)
    }

    fn mount_blocking(&self, handle: &VolumeHandle, access: MountAccess) -> Result<MountInfo> {
        match (self.on_disk(handle)?, access) {
            (None, _) => return Err(Error::not_found(format!("volume {handle} does not exist"))),
            (Some(OnDisk::Sealed(_)), MountAccess::Write) => {
                return Err(Error::conflict(format!(
                    "volume {handle} is sealed and cannot be written"
                )));
            }
            (Some(OnDisk::Creating { .. }), MountAccess::Read) => {
                return Err(Error::conflict(format!(
                    "volume {handle} is not sealed yet and cannot be read"
                )));
            }
            _ => {}
        }
        let data = self.volume_data_path(handle);
        if access == MountAccess::Write
            && let Err(e) = fs::create_dir(&data)
            && e.kind() != io::ErrorKind::AlreadyExists
        {
            return Err(io_err(e, "creating the data directory"));
        }
        Ok(match &self.mapping {
            MountMapping::HostPath => MountInfo::HostPath {
                path: data.to_string_lossy().into_owned(),
            },
            MountMapping::Pvc { claim, prefix } => {
                let rel = format!("{VOLUMES}/{handle}/{DATA}");
                MountInfo::SharedVolume {
                    volume: claim.clone(),
                    sub_path: if prefix.is_empty() {
                        rel
                    } else {
                        format!("{prefix}/{rel}")
                    },
                }
            }
        })
    }

    /// Verify a sealed volume and list what `read_tar` will send.
    fn prepare_read(
        &self,
        handle: &VolumeHandle,
    ) -> Result<(PathBuf, Vec<walk::Node>, Vec<Option<walk::FileHash>>)> {
        let m = self.sealed(handle)?;
        let data = self.volume_data_path(handle);
        let (nodes, hashes, summary) = walk::digest_tree(&data).map_err(copy::as_corrupt)?;
        check_summary(handle, &m, &summary)?;
        Ok((data, nodes, hashes))
    }
}

/// Read and check a manifest; anything unreadable as one counts as "not sealed".
fn read_manifest(dir: &Path, handle: &VolumeHandle) -> Result<Option<Manifest>> {
    let body = match fs::read(dir.join(MANIFEST)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e, format_args!("reading the manifest of {handle}"))),
    };
    match serde_json::from_slice::<Manifest>(&body) {
        Ok(m) if m.seals(FORMAT, handle) => Ok(Some(m)),
        Ok(_) => {
            tracing::warn!(volume = %handle, "manifest is for another volume or format; treating the volume as unsealed");
            Ok(None)
        }
        Err(e) => {
            tracing::warn!(volume = %handle, error = %e, "manifest does not parse; treating the volume as unsealed");
            Ok(None)
        }
    }
}

fn check_summary(handle: &VolumeHandle, m: &Manifest, s: &walk::Summary) -> Result<()> {
    if s.digest != m.digest || s.size != m.size || s.files != m.files {
        return Err(Error::corrupt(format!(
            "volume {handle}: content digest {} does not match the sealed digest {}",
            s.digest, m.digest
        )));
    }
    Ok(())
}

#[async_trait]
impl VolumeStore for FsVolumeStore {
    fn capabilities(&self) -> VolumeCapabilities {
        VolumeCapabilities::none()
            .with_mount(true)
            .with_persistent(true)
    }

    async fn create(&self, handle: &VolumeHandle) -> Result<VolumeInfo> {
        let this = self.clone();
        let h = handle.clone();
        blocking(move || this.create_blocking(&h)).await
    }

    async fn write_tar(&self, handle: &VolumeHandle, tar: ByteStream) -> Result<()> {
        let guard = self.try_busy(handle)?;
        let (tx, rx) = mpsc::channel::<Chunk>(CHANNEL_DEPTH);
        let failed: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
        let this = self.clone();
        let h = handle.clone();
        let f2 = failed.clone();
        let mut job = tokio::task::spawn_blocking(move || {
            // Held until the blocking work (including cleanup) is over, even if the
            // caller stops waiting.
            let _guard = guard;
            this.write_blocking(&h, rx, &f2)
        });
        let forward = jetbridge_core::ports::bridge::forward(tar, tx);
        tokio::pin!(forward);
        let mut forwarded = false;
        // Stop pulling the input as soon as extraction is over (done or failed).
        let joined = loop {
            tokio::select! {
                r = &mut job => break r,
                () = &mut forward, if !forwarded => forwarded = true,
            }
        };
        joined.map_err(|e| Error::other(format!("filesystem task failed: {e}")))?
    }

    async fn seal(&self, handle: &VolumeHandle) -> Result<VolumeInfo> {
        let this = self.clone();
        let h = handle.clone();
        blocking(move || {
            if let Some(OnDisk::Sealed(m)) = this.on_disk(&h)? {
                return Ok(m.info(&h));
            }
            let _guard = this.try_busy(&h)?;
            this.seal_blocking(&h)
        })
        .await
    }

    async fn read_tar(&self, handle: &VolumeHandle) -> Result<ByteStream> {
        let this = self.clone();
        let h = handle.clone();
        // Verify the whole tree before sending a byte, so a consumer never extracts
        // corrupt data; the producer checks each file again as it streams it.
        let (data, nodes, hashes) = blocking(move || this.prepare_read(&h)).await?;
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        tokio::task::spawn_blocking(move || pack::produce(&data, nodes, hashes, tx));
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })))
    }

    async fn stat(&self, handle: &VolumeHandle) -> Result<VolumeInfo> {
        let this = self.clone();
        let h = handle.clone();
        blocking(move || this.stat_blocking(&h)).await
    }

    async fn delete(&self, handle: &VolumeHandle) -> Result<()> {
        let this = self.clone();
        let h = handle.clone();
        blocking(move || this.delete_blocking(&h)).await
    }

    async fn list(&self) -> Result<Vec<VolumeInfo>> {
        let this = self.clone();
        blocking(move || this.list_blocking()).await
    }

    async fn mount(&self, handle: &VolumeHandle, access: MountAccess) -> Result<MountInfo> {
        let this = self.clone();
        let h = handle.clone();
        blocking(move || this.mount_blocking(&h, access)).await
    }

    async fn free_bytes(&self, handle: &VolumeHandle) -> Result<Option<u64>> {
        // The volume's own directory, else the store's root (what holds it): both are
        // on the filesystem the step wrote to.
        let data = self.volume_data_path(handle);
        let root = self.root().to_path_buf();
        blocking(move || {
            let at = if data.exists() { data } else { root };
            let st = nix::sys::statvfs::statvfs(&at).map_err(|e| {
                crate::error::io_err(std::io::Error::from(e), format!("statvfs {}", at.display()))
            })?;
            // Available to an unprivileged writer; a root writer may use the reserved
            // blocks too, but once those are gone this is 0 as well.
            Ok(Some(
                st.blocks_available().saturating_mul(st.fragment_size()),
            ))
        })
        .await
    }
}
