//! What the server's end-to-end tests share: the embedded default's ports (the local
//! backend, an on-disk store under `dir`, the in-memory registry).

use std::path::Path;
use std::sync::Arc;

use jetbridge_core::ports::{ArtifactRegistry, Runtime, VolumeStore};
use jetbridge_memory_registry::MemoryRegistry;

/// The ports under `dir`, the store passed through `store` (to count it, say).
pub fn local_runtime(
    dir: &Path,
    store: impl FnOnce(Arc<dyn VolumeStore>) -> Arc<dyn VolumeStore>,
) -> Runtime {
    let backend = Arc::new(
        jetbridge_local::LocalBackend::new(jetbridge_local::LocalConfig::new(dir.join("local")))
            .expect("local backend"),
    );
    let volumes: Arc<dyn VolumeStore> =
        Arc::new(jetbridge_fs::FsVolumeStore::new(dir.join("volumes")).expect("store"));
    let registry: Arc<dyn ArtifactRegistry> = Arc::new(MemoryRegistry::new());
    Runtime {
        pods: backend.clone(),
        exec: backend,
        volumes: Some(store(volumes)),
        registry,
    }
}
