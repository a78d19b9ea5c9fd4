//! The artifact service: volumes for artifacts, created, registered and sealed.

use std::sync::Arc;
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::names::{ArtifactId, VolumeHandle};
use crate::ports::{
    Artifact, ArtifactRegistry, ByteStream, Holder, MountAccess, MountInfo, NewArtifact,
    VolumeInfo, VolumeStore,
};

/// What a new artifact volume is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRequest {
    /// Build id.
    pub build: String,
    /// Step name.
    pub step: String,
    /// Artifact name.
    pub name: String,
    /// The reference the build holds on it from the start.
    pub holder: Holder,
    /// Keep it after the build until then.
    pub retain_until: Option<SystemTime>,
}

/// Creates artifact volumes and keeps the store and the registry in step.
#[derive(Clone)]
pub struct ArtifactService {
    volumes: Option<Arc<dyn VolumeStore>>,
    registry: Arc<dyn ArtifactRegistry>,
}

impl std::fmt::Debug for ArtifactService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactService")
            .field("volumes", &self.volumes.is_some())
            .finish()
    }
}

/// A volume registered as an artifact, not sealed yet.
#[derive(Clone)]
pub struct ArtifactVolume {
    artifact: Artifact,
    store: Arc<dyn VolumeStore>,
    registry: Arc<dyn ArtifactRegistry>,
}

impl std::fmt::Debug for ArtifactVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactVolume")
            .field("artifact", &self.artifact)
            .finish()
    }
}

impl ArtifactService {
    /// A service over `volumes` (none when no store is configured) and `registry`.
    pub fn new(volumes: Option<Arc<dyn VolumeStore>>, registry: Arc<dyn ArtifactRegistry>) -> Self {
        ArtifactService { volumes, registry }
    }

    /// The store, or the error that says none is configured.
    pub fn store(&self) -> Result<&Arc<dyn VolumeStore>> {
        self.volumes.as_ref().ok_or_else(|| {
            Error::invalid(
                "no volume store is configured: artifacts need one (a directory, a claim or a bucket)",
            )
        })
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<dyn ArtifactRegistry> {
        &self.registry
    }

    /// Allocate a unique volume, create it in the store, register it (state
    /// `Creating`, referenced by `req.holder`) and return it.
    ///
    /// If registration fails the volume is deleted; if that fails too, the volume is an
    /// orphan the reaper collects (it is unknown to the registry). Nothing is left that
    /// the reaper cannot collect.
    pub async fn create_volume_for_artifact(
        &self,
        req: &ArtifactRequest,
    ) -> Result<ArtifactVolume> {
        let store = self.store()?.clone();
        let handle = VolumeHandle::random();
        store
            .create(&handle)
            .await
            .map_err(|e| e.context(format!("creating a volume for artifact {:?}", req.name)))?;
        let new = NewArtifact {
            id: ArtifactId::random(),
            build: req.build.clone(),
            step: req.step.clone(),
            name: req.name.clone(),
            volume: handle.clone(),
            holder: req.holder.clone(),
            retain_until: req.retain_until,
        };
        let artifact = match self.registry.register(&new).await {
            Ok(a) => a,
            Err(e) => {
                if let Err(del) = store.delete(&handle).await {
                    tracing::warn!(volume = %handle, error = %del, "could not delete the volume of a failed registration; the reaper will collect it");
                }
                return Err(e.context(format!("registering artifact {:?}", req.name)));
            }
        };
        Ok(ArtifactVolume {
            artifact,
            store,
            registry: self.registry.clone(),
        })
    }
}

impl ArtifactVolume {
    /// The registry record (as registered; state `Creating`).
    pub fn artifact(&self) -> &Artifact {
        &self.artifact
    }

    /// The volume handle.
    pub fn handle(&self) -> &VolumeHandle {
        &self.artifact.volume
    }

    /// Stream a tar into the volume.
    pub async fn write_tar(&self, tar: ByteStream) -> Result<()> {
        self.store.write_tar(&self.artifact.volume, tar).await
    }

    /// How a pod can write into the volume in place, when the store allows it.
    pub async fn mount_for_write(&self) -> Result<MountInfo> {
        self.store
            .mount(&self.artifact.volume, MountAccess::Write)
            .await
    }

    /// Seal the volume and mark the artifact ready; returns the ready record.
    pub async fn seal(&self) -> Result<(Artifact, VolumeInfo)> {
        let info = self.store.seal(&self.artifact.volume).await?;
        let digest = info
            .digest
            .clone()
            .ok_or_else(|| Error::other("the volume store sealed a volume without a digest"))?;
        let ready = self
            .registry
            .mark_ready(&self.artifact.id, info.size, &digest)
            .await?;
        Ok((ready, info))
    }

    /// A tar stream of the sealed volume.
    pub async fn read_tar(&self) -> Result<ByteStream> {
        self.store.read_tar(&self.artifact.volume).await
    }
}
