//! The runtime suite on the embedded default: local processes, with artifacts in the
//! filesystem store (mounted in place: no copy for outputs, private copies for inputs)
//! and in the memory store (not mountable: streamed as tar through exec).

use std::sync::Arc;

use jetbridge_conformance::RuntimeSubject;
use jetbridge_conformance::runtime::write_mock_resource;
use jetbridge_core::images::ImageResolver;
use jetbridge_core::ports::{ArtifactRegistry, Runtime, VolumeStore};
use jetbridge_fs::FsVolumeStore;
use jetbridge_local::{LocalBackend, LocalConfig};
use jetbridge_memory::{MemoryRegistry, MemoryVolumeStore};

fn subject(store: impl FnOnce(&std::path::Path) -> Arc<dyn VolumeStore>) -> Option<RuntimeSubject> {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Arc::new(
        LocalBackend::new(LocalConfig::new(dir.path().join("local"))).expect("local backend"),
    );
    let mock = dir.path().join("mock-resource");
    write_mock_resource(&mock).expect("mock resource scripts");
    let registry: Arc<dyn ArtifactRegistry> = Arc::new(MemoryRegistry::new());
    let rt = Runtime {
        pods: backend.clone(),
        exec: backend,
        volumes: Some(store(dir.path())),
        registry,
    };
    let mock_type = format!(
        "{{name: jb-mock, type: local, source: {{path: {}}}}}",
        serde_json::to_string(&mock.to_string_lossy()).expect("json")
    );
    Some(RuntimeSubject::new(rt, mock_type, ImageResolver::new()).with_guard(dir))
}

async fn local_with_fs_store() -> Option<RuntimeSubject> {
    subject(|d| Arc::new(FsVolumeStore::new(d.join("volumes")).expect("fs store")))
}

async fn local_with_streamed_store() -> Option<RuntimeSubject> {
    subject(|_| Arc::new(MemoryVolumeStore::new()))
}

mod fs_store {
    use super::*;
    jetbridge_conformance::runtime_suite!(local_with_fs_store);
}

mod streamed_store {
    use super::*;
    jetbridge_conformance::runtime_suite!(local_with_streamed_store);
}
