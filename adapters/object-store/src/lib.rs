//! VolumeStore over an object store: GCS, S3, Azure Blob, a local directory or memory.
//!
//! [`ObjectStoreVolumes`] keeps each volume as one tar object (zstd-compressed by
//! default) plus a few small JSON objects, under a prefix of a bucket:
//!
//! ```text
//! <prefix>/volumes/<handle>/creating.json        {"created_at_unix_ms": ..}    create
//! <prefix>/volumes/<handle>/data-<id>.tar.zst    the tree, canonical tar       write_tar
//! <prefix>/volumes/<handle>/written.json         digest, size, object name    write_tar
//! <prefix>/volumes/<handle>/manifest.json        the seal: written last       seal
//! ```
//!
//! A volume is sealed exactly when `manifest.json` exists, parses and names this
//! handle. Data objects are multipart uploads, visible only once complete; each write
//! uses a fresh object name, so a slow or repeated write can never change what a
//! manifest points at. `read_tar` verifies the whole object against the manifest
//! before it yields a byte. See the README for the full argument.

mod checksum;
mod config;
mod error;
mod multipart;
mod pipe;
mod read;
mod tar_tree;
mod write;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use jetbridge_core::digest::{Digest, TreeDigest};
use jetbridge_core::names::VolumeHandle;
use jetbridge_core::ports::volume_support::{
    BusyGuard, BusyVolumes, SealRecord, creating_info, from_unix_ms, unix_ms,
};
use jetbridge_core::ports::{
    ByteStream, MountAccess, MountInfo, VolumeCapabilities, VolumeInfo, VolumeStore, bytes_stream,
};
use jetbridge_core::{Error, ErrorKind, Result};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use config::{Compression, ObjectStoreOptions, RetryPolicy};

use crate::error::{Backend, store_err};

const VOLUMES: &str = "volumes";
const MANIFEST: &str = "manifest.json";
const CREATING: &str = "creating.json";
const WRITTEN: &str = "written.json";
/// Object format written by this version.
const FORMAT: u32 = 2;
/// Metadata reads at once in `list`.
const LIST_CONCURRENCY: usize = 8;

/// Contents of `creating.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CreatingMarker {
    format: u32,
    handle: String,
    created_at_unix_ms: u64,
    /// Random, per `create` call: tells a retried conditional put whose first answer
    /// was lost (the marker is ours) from a real race (it is someone else's).
    #[serde(default)]
    nonce: String,
}

/// Contents of `written.json`: what one successful `write_tar` stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Written {
    format: u32,
    handle: String,
    /// Name of the data object inside the volume's directory.
    data: String,
    compression: String,
    object_size: u64,
    /// CRC32C of the data object, 8 hex digits.
    object_crc32c: String,
    digest: Digest,
    size: u64,
    files: u64,
}

/// Contents of `manifest.json`: the seal every store records, and where the data is.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    #[serde(flatten)]
    seal: SealRecord,
    /// The data object (`None` for a volume sealed without a write: empty).
    data: Option<String>,
    compression: String,
    object_size: u64,
    /// CRC32C of the data object, 8 hex digits (empty without one).
    object_crc32c: String,
}

/// State shared by clones of a store.
#[derive(Debug)]
struct Inner {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    backend: Backend,
    persistent: bool,
    options: ObjectStoreOptions,
    display: String,
    /// Volumes a write or seal of this process is working on.
    busy: BusyVolumes,
}

/// A [`VolumeStore`] over an object store. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct ObjectStoreVolumes {
    inner: Arc<Inner>,
}

fn not_found(handle: &VolumeHandle) -> Error {
    Error::not_found(format!("volume {handle} does not exist"))
}

fn empty_digest() -> Digest {
    TreeDigest::new().finish()
}

impl ObjectStoreVolumes {
    /// A store at `url`:
    ///
    /// - `gs://bucket/prefix`, `s3://bucket/prefix`, `az://container/prefix`: a bucket,
    ///   with credentials from the provider's usual chain;
    /// - `file:///abs/dir`: a local directory (created if missing);
    /// - `memory://`: in memory, for tests (not persistent).
    ///
    /// `Invalid` for a URL of another form.
    pub fn from_url(url: &str, options: ObjectStoreOptions) -> Result<Self> {
        let b = config::build(url, &options)?;
        Ok(Self::assemble(
            b.store,
            b.prefix,
            b.backend,
            b.persistent,
            options,
            b.display,
        ))
    }

    /// A store over an `object_store` built elsewhere (a wrapper, a custom client),
    /// keeping volumes under `prefix`. Errors the store does not classify count as
    /// `Transient`, as for a bucket.
    pub fn from_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        options: ObjectStoreOptions,
    ) -> Result<Self> {
        let p = prefix.trim_matches('/');
        let prefix = Path::parse(p)
            .map_err(|e| Error::invalid(format!("bad object store prefix {p:?}: {e}")))?;
        let display = format!("{store}/{prefix}");
        Ok(Self::assemble(
            store,
            prefix,
            Backend::Http,
            true,
            options,
            display,
        ))
    }

    fn assemble(
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        backend: Backend,
        persistent: bool,
        options: ObjectStoreOptions,
        display: String,
    ) -> Self {
        ObjectStoreVolumes {
            inner: Arc::new(Inner {
                store,
                prefix,
                backend,
                persistent,
                options,
                display,
                busy: BusyVolumes::default(),
            }),
        }
    }

    /// The object store underneath (for tools and tests).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.inner.store.clone()
    }

    /// One cheap request that tells whether the store can be reached with the
    /// credentials in use: a one-level listing of the prefix (a HEAD could not tell a
    /// missing bucket from a missing object). Anything but an answer (refused or no
    /// credentials, a missing bucket, no route) is returned as the error it is.
    pub async fn check(&self) -> Result<()> {
        self.inner
            .store
            .list_with_delimiter(Some(&self.inner.prefix))
            .await
            .map(drop)
            .map_err(|e| self.err(e, format_args!("reaching {}", self.inner.display)))
    }

    /// Where the store lives, without credentials.
    pub fn location(&self) -> &str {
        &self.inner.display
    }

    /// The key prefix under which a volume's objects live.
    pub fn volume_prefix(&self, handle: &VolumeHandle) -> Path {
        // Handles are `[a-z0-9-]` by construction: always one safe path segment.
        self.inner
            .prefix
            .clone()
            .join(VOLUMES)
            .join(handle.as_str())
    }

    fn volumes_root(&self) -> Path {
        self.inner.prefix.clone().join(VOLUMES)
    }

    fn object(&self, handle: &VolumeHandle, name: &str) -> Path {
        self.volume_prefix(handle).join(name)
    }

    fn err(&self, e: object_store::Error, what: impl std::fmt::Display) -> Error {
        store_err(e, self.inner.backend, what)
    }

    fn try_busy(&self, handle: &VolumeHandle) -> Result<BusyGuard> {
        self.inner.busy.claim(handle)
    }

    /// The bytes of a small object; `None` if it does not exist.
    async fn get_small(&self, path: &Path) -> Result<Option<Bytes>> {
        let got = match self.inner.store.get(path).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.err(e, format_args!("reading {path}"))),
        };
        match got.bytes().await {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(e, format_args!("reading {path}"))),
        }
    }

    /// A small JSON object that must belong to `handle`; `None` if it is missing, or
    /// does not parse (a torn or foreign object never counts).
    async fn get_json<T: DeserializeOwned + Owns>(
        &self,
        handle: &VolumeHandle,
        name: &str,
    ) -> Result<Option<T>> {
        let path = self.object(handle, name);
        let Some(body) = self.get_small(&path).await? else {
            return Ok(None);
        };
        match serde_json::from_slice::<T>(&body) {
            Ok(v) if v.owned_by(handle) => Ok(Some(v)),
            Ok(_) => {
                tracing::warn!(volume = %handle, object = %path, "object is for another volume or format; ignoring it");
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(volume = %handle, object = %path, error = %e, "object does not parse; ignoring it");
                Ok(None)
            }
        }
    }

    /// Put a small JSON object; with `create_only`, `AlreadyExists` if it exists
    /// (where the store can tell atomically; otherwise it is overwritten).
    async fn put_json<T: Serialize>(
        &self,
        path: &Path,
        value: &T,
        create_only: bool,
    ) -> Result<()> {
        let body = serde_json::to_vec_pretty(value)
            .map_err(|e| Error::other(format!("encoding {path}: {e}")))?;
        let payload = PutPayload::from(body);
        if create_only {
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match self.inner.store.put_opts(path, payload.clone(), opts).await {
                Ok(_) => return Ok(()),
                Err(
                    object_store::Error::NotImplemented { .. }
                    | object_store::Error::NotSupported { .. },
                ) => {
                    tracing::debug!(object = %path, "conditional put unsupported; overwriting");
                }
                Err(e) => return Err(self.err(e, format_args!("writing {path}"))),
            }
        }
        self.inner
            .store
            .put(path, payload)
            .await
            .map(|_| ())
            .map_err(|e| self.err(e, format_args!("writing {path}")))
    }

    /// Delete one object; missing is fine.
    async fn delete_object(&self, path: &Path) -> Result<()> {
        match self.inner.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(e, format_args!("deleting {path}"))),
        }
    }

    async fn manifest(&self, handle: &VolumeHandle) -> Result<Option<Manifest>> {
        self.get_json::<Manifest>(handle, MANIFEST).await
    }

    async fn marker(&self, handle: &VolumeHandle) -> Result<Option<CreatingMarker>> {
        self.get_json::<CreatingMarker>(handle, CREATING).await
    }

    async fn stat_inner(&self, handle: &VolumeHandle) -> Result<VolumeInfo> {
        if let Some(m) = self.manifest(handle).await? {
            return Ok(m.seal.info(handle));
        }
        match self.marker(handle).await? {
            Some(c) => Ok(creating_info(
                handle,
                Some(from_unix_ms(c.created_at_unix_ms)),
            )),
            None => Err(not_found(handle)),
        }
    }

    /// Delete every object of a volume (what a failed write left, too).
    async fn remove_all(&self, handle: &VolumeHandle) -> Result<()> {
        let dir = self.volume_prefix(handle);
        let objects: Vec<Path> = self
            .inner
            .store
            .list(Some(&dir))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| self.err(e, format_args!("listing {dir}")))?;
        // Unseal first so readers stop at once; the marker goes last so an
        // interrupted delete leaves a `Creating` volume that can be deleted again.
        let manifest = self.object(handle, MANIFEST);
        let marker = self.object(handle, CREATING);
        self.delete_object(&manifest).await?;
        for p in objects.iter().filter(|p| **p != manifest && **p != marker) {
            self.delete_object(p).await?;
        }
        self.delete_object(&marker).await
    }

    async fn write_inner(&self, handle: &VolumeHandle, tar: ByteStream) -> Result<()> {
        if self.manifest(handle).await?.is_some() {
            return Err(Error::conflict(format!("volume {handle} is sealed")));
        }
        if self.marker(handle).await?.is_none() {
            return Err(not_found(handle));
        }
        let written_path = self.object(handle, WRITTEN);
        if self.get_small(&written_path).await?.is_some() {
            return Err(Error::conflict(format!(
                "volume {handle} already holds a tar stream; an object store volume takes one write"
            )));
        }
        let o = &self.inner.options;
        let name = format!(
            "data-{}.{}",
            uuid::Uuid::new_v4().simple(),
            o.compression.suffix()
        );
        let data_path = self.object(handle, &name);
        let params = write::UploadParams {
            compression: o.compression,
            zstd_workers: o.zstd_workers,
            part_size: o.part_size,
            parts_in_flight: o.parts_in_flight,
            backend: self.inner.backend,
        };
        let up = write::upload(self.inner.store.clone(), &data_path, tar, params).await?;
        let w = Written {
            format: FORMAT,
            handle: handle.as_str().to_owned(),
            data: name,
            compression: o.compression.name().to_owned(),
            object_size: up.object_size,
            object_crc32c: checksum::to_hex(up.object_crc32c),
            digest: up.summary.digest,
            size: up.summary.size,
            files: up.summary.files,
        };
        if let Err(e) = self.put_json(&written_path, &w, true).await {
            // A retried put whose first answer was lost finds its own record: the
            // data object's name is unique to this call.
            let ours = e.kind() == ErrorKind::AlreadyExists
                && matches!(
                    self.get_json::<Written>(handle, WRITTEN).await,
                    Ok(Some(ref got)) if got.data == w.data
                );
            if ours {
                return self.after_written(handle, &written_path, &data_path).await;
            }
            let _ = self.delete_object(&data_path).await;
            return Err(if e.kind() == ErrorKind::AlreadyExists {
                Error::conflict(format!(
                    "volume {handle} was written by another call at the same time"
                ))
            } else {
                e.context(format_args!("writing volume {handle}"))
            });
        }
        self.after_written(handle, &written_path, &data_path).await
    }

    /// The end of a write: if the volume was deleted while the upload ran, leave
    /// nothing behind.
    async fn after_written(
        &self,
        handle: &VolumeHandle,
        written_path: &Path,
        data_path: &Path,
    ) -> Result<()> {
        if self.marker(handle).await?.is_none() {
            let _ = self.delete_object(written_path).await;
            let _ = self.delete_object(data_path).await;
            return Err(not_found(handle));
        }
        Ok(())
    }

    async fn seal_inner(&self, handle: &VolumeHandle) -> Result<VolumeInfo> {
        let Some(marker) = self.marker(handle).await? else {
            return Err(not_found(handle));
        };
        let written = self.get_json::<Written>(handle, WRITTEN).await?;
        let created = Some(from_unix_ms(marker.created_at_unix_ms));
        let m = match written {
            None => Manifest {
                seal: SealRecord::new(FORMAT, handle, empty_digest(), 0, 0, created),
                data: None,
                compression: Compression::None.name().to_owned(),
                object_size: 0,
                object_crc32c: String::new(),
            },
            Some(w) => {
                let data = self.object(handle, &w.data);
                let meta = self.inner.store.head(&data).await.map_err(|e| {
                    let e = self.err(e, format_args!("checking {data}"));
                    if e.kind() == ErrorKind::NotFound {
                        Error::corrupt(format!("volume {handle}: its data object is missing"))
                    } else {
                        e
                    }
                })?;
                if meta.size != w.object_size {
                    return Err(Error::corrupt(format!(
                        "volume {handle}: the data object has {} bytes, {} were written",
                        meta.size, w.object_size
                    )));
                }
                Manifest {
                    seal: SealRecord::new(FORMAT, handle, w.digest, w.size, w.files, created),
                    data: Some(w.data),
                    compression: w.compression,
                    object_size: w.object_size,
                    object_crc32c: w.object_crc32c,
                }
            }
        };
        self.put_json(&self.object(handle, MANIFEST), &m, false)
            .await
            .map_err(|e| e.context(format_args!("sealing volume {handle}")))?;
        Ok(m.seal.info(handle))
    }
}

/// JSON objects that name the volume they belong to.
trait Owns {
    fn owned_by(&self, handle: &VolumeHandle) -> bool;
}

impl Owns for Manifest {
    fn owned_by(&self, handle: &VolumeHandle) -> bool {
        self.seal.seals(FORMAT, handle)
    }
}

impl Owns for CreatingMarker {
    fn owned_by(&self, handle: &VolumeHandle) -> bool {
        self.format == FORMAT && self.handle == handle.as_str()
    }
}

impl Owns for Written {
    fn owned_by(&self, handle: &VolumeHandle) -> bool {
        self.format == FORMAT && self.handle == handle.as_str()
    }
}

/// An empty tar (the end-of-archive marker only).
fn empty_tar() -> Vec<u8> {
    vec![0u8; 1024]
}

#[async_trait]
impl VolumeStore for ObjectStoreVolumes {
    fn capabilities(&self) -> VolumeCapabilities {
        VolumeCapabilities::none()
            .with_mount(false)
            .with_persistent(self.inner.persistent)
    }

    async fn create(&self, handle: &VolumeHandle) -> Result<VolumeInfo> {
        let marker_path = self.object(handle, CREATING);
        // The conditional put below decides races; this check also covers stores
        // (some emulators) that accept a conditional put without checking it.
        if self.get_small(&marker_path).await?.is_some() || self.manifest(handle).await?.is_some() {
            return Err(Error::already_exists(format!("volume {handle} exists")));
        }
        let created_ms = unix_ms(SystemTime::now());
        let marker = CreatingMarker {
            format: FORMAT,
            handle: handle.as_str().to_owned(),
            created_at_unix_ms: created_ms,
            nonce: uuid::Uuid::new_v4().simple().to_string(),
        };
        match self.put_json(&marker_path, &marker, true).await {
            Ok(()) => Ok(creating_info(handle, Some(from_unix_ms(created_ms)))),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                // The client retries a put whose answer was lost; the retry then finds
                // the marker its first attempt wrote. That one is ours.
                match self.get_json::<CreatingMarker>(handle, CREATING).await {
                    Ok(Some(m)) if m.nonce == marker.nonce => {
                        Ok(creating_info(handle, Some(from_unix_ms(created_ms))))
                    }
                    _ => Err(Error::already_exists(format!("volume {handle} exists"))),
                }
            }
            Err(e) => Err(e.context(format_args!("creating volume {handle}"))),
        }
    }

    async fn write_tar(&self, handle: &VolumeHandle, tar: ByteStream) -> Result<()> {
        let _guard = self.try_busy(handle)?;
        self.write_inner(handle, tar).await
    }

    async fn seal(&self, handle: &VolumeHandle) -> Result<VolumeInfo> {
        if let Some(m) = self.manifest(handle).await? {
            return Ok(m.seal.info(handle));
        }
        let _guard = self.try_busy(handle)?;
        self.seal_inner(handle).await
    }

    async fn read_tar(&self, handle: &VolumeHandle) -> Result<ByteStream> {
        let Some(m) = self.manifest(handle).await? else {
            return Err(match self.marker(handle).await? {
                Some(_) => Error::not_found(format!("volume {handle} is not sealed")),
                None => not_found(handle),
            });
        };
        let Some(data) = &m.data else {
            if m.seal.digest != empty_digest() || m.seal.size != 0 || m.seal.files != 0 {
                return Err(Error::corrupt(format!(
                    "volume {handle}: the manifest has content but no data object"
                )));
            }
            return Ok(bytes_stream(empty_tar()));
        };
        let zstd = match m.compression.as_str() {
            "zstd" => true,
            "none" => false,
            other => {
                return Err(Error::other(format!(
                    "volume {handle}: unknown compression {other:?}"
                )));
            }
        };
        let want = read::Expect {
            volume: handle.as_str().to_owned(),
            zstd,
            object_size: m.object_size,
            object_crc32c: m.object_crc32c.clone(),
            digest: m.seal.digest.clone(),
            size: m.seal.size,
            files: m.seal.files,
        };
        read::read_verified(
            self.inner.store.clone(),
            &self.object(handle, data),
            want,
            self.inner.backend,
            self.inner.options.temp_dir.clone(),
        )
        .await
    }

    async fn stat(&self, handle: &VolumeHandle) -> Result<VolumeInfo> {
        self.stat_inner(handle).await
    }

    async fn delete(&self, handle: &VolumeHandle) -> Result<()> {
        self.remove_all(handle).await
    }

    async fn list(&self) -> Result<Vec<VolumeInfo>> {
        let root = self.volumes_root();
        let metas: Vec<object_store::ObjectMeta> = self
            .inner
            .store
            .list(Some(&root))
            .try_collect()
            .await
            .map_err(|e| self.err(e, format_args!("listing {root}")))?;
        // handle -> (has manifest, has marker)
        let mut seen: BTreeMap<VolumeHandle, (bool, bool)> = BTreeMap::new();
        for m in metas {
            let Some(mut parts) = m.location.prefix_match(&root) else {
                continue;
            };
            let (Some(h), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let Ok(handle) = VolumeHandle::parse(h.as_ref()) else {
                continue;
            };
            let e = seen.entry(handle).or_default();
            match name.as_ref() {
                MANIFEST => e.0 = true,
                CREATING => e.1 = true,
                _ => {}
            }
        }
        let infos: Vec<Option<VolumeInfo>> = futures::stream::iter(seen)
            .filter(|(_, (sealed, creating))| futures::future::ready(*sealed || *creating))
            .map(|(h, _)| async move {
                match self.stat_inner(&h).await {
                    Ok(i) => Ok(Some(i)),
                    // Deleted between the listing and the read.
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .buffered(LIST_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(infos.into_iter().flatten().collect())
    }

    async fn mount(&self, handle: &VolumeHandle, access: MountAccess) -> Result<MountInfo> {
        Err(Error::unsupported(format!(
            "object store volumes cannot be mounted into pods (volume {handle}, {access:?}); stream them as tar"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Manifests written before the shared seal record still read, and new ones keep
    /// the same flat keys.
    #[test]
    fn a_manifest_keeps_its_flat_keys() {
        let digest = serde_json::to_value(empty_digest()).unwrap();
        let old = serde_json::json!({
            "format": FORMAT, "handle": "v-1", "digest": digest, "size": 0, "files": 0,
            "data": null, "compression": "none", "object_size": 0, "object_crc32c": "",
            "created_at_unix_ms": 1_700_000_000_000u64, "sealed_at_unix_ms": 1_700_000_000_001u64,
        });
        let m: Manifest = serde_json::from_value(old.clone()).unwrap();
        let h = VolumeHandle::parse("v-1").unwrap();
        assert!(m.owned_by(&h));
        assert_eq!(m.seal.created_at_unix_ms, Some(1_700_000_000_000));
        assert_eq!(serde_json::to_value(&m).unwrap(), old);
    }

    #[test]
    fn empty_tar_is_a_valid_empty_archive() {
        let data = empty_tar();
        let mut ar = tar::Archive::new(&data[..]);
        assert_eq!(ar.entries().unwrap().count(), 0);
        let reference = tar::Builder::new(Vec::new()).into_inner().unwrap();
        assert_eq!(reference, empty_tar());
    }
}
