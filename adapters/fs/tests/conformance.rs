//! The shared VolumeStore conformance suite against `FsVolumeStore` in a temp dir.

use std::sync::Arc;

use jetbridge_conformance::Subject;
use jetbridge_core::ports::VolumeStore;
use jetbridge_fs::FsVolumeStore;

async fn make_store() -> Option<Subject<dyn VolumeStore>> {
    let dir = tempfile::tempdir().ok()?;
    let store = FsVolumeStore::new(dir.path()).ok()?;
    Some(Subject::new(Arc::new(store) as Arc<dyn VolumeStore>).with_guard(dir))
}

/// The Kubernetes mapping changes only what `mount` reports.
async fn make_pvc_store() -> Option<Subject<dyn VolumeStore>> {
    let dir = tempfile::tempdir().ok()?;
    let store = FsVolumeStore::new(dir.path())
        .ok()?
        .with_shared_volume("jetbridge-artifacts", "jetbridge");
    Some(Subject::new(Arc::new(store) as Arc<dyn VolumeStore>).with_guard(dir))
}

jetbridge_conformance::volume_store_suite!(make_store);

mod pvc {
    use super::*;
    jetbridge_conformance::volume_store_suite!(make_pvc_store);
}
