//! Options of a directory store: how its mounts are described to pods, whether seals
//! flush, and how much one write may hold. Set with the `with_*` methods.

use crate::FsVolumeStore;

/// How `mount` describes a volume to a pod.
#[derive(Debug, Clone)]
pub(crate) enum MountMapping {
    HostPath,
    Pvc { claim: String, prefix: String },
}

impl FsVolumeStore {
    /// Report mounts as sub-paths of the shared volume `volume` (on Kubernetes a
    /// ReadWriteMany claim of that name) instead of host paths: the root of this store
    /// is the directory `sub_path_prefix` of the volume (empty when the volume's root is
    /// the store's root).
    pub fn with_shared_volume(
        mut self,
        claim: impl Into<String>,
        sub_path_prefix: impl Into<String>,
    ) -> Self {
        let prefix: String = sub_path_prefix.into();
        self.mapping = MountMapping::Pvc {
            claim: claim.into(),
            prefix: prefix.trim_matches('/').to_owned(),
        };
        self
    }

    /// Whether `seal` flushes the filesystem before writing the manifest (default
    /// true). Without the flush, a machine crash right after a seal can leave a manifest
    /// whose data never reached the disk: readers then fail with `Corrupt` (the digest
    /// check), never read wrong data. Turning it off trades that for speed on
    /// throw-away local stores.
    pub fn with_flush(mut self, flush: bool) -> Self {
        self.flush = flush;
        self
    }

    /// Fail [`write_tar`](VolumeStore::write_tar) with `StorageFull` once one call has
    /// written more than `bytes` of file content, exactly as a full filesystem would
    /// (partial content removed). For tests of the full-store path.
    pub fn with_write_limit(mut self, bytes: u64) -> Self {
        self.write_limit = Some(bytes);
        self
    }
}
