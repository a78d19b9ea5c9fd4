//! The shared conformance suites (pods, exec, volume store, registry, runtime), run
//! against the in-memory fakes.

use std::sync::Arc;

use jetbridge_conformance::{BackendSubject, Subject};
use jetbridge_core::images::ImageResolver;
use jetbridge_core::ports::{ArtifactRegistry, VolumeStore};
use jetbridge_memory::{MemoryBackend, MemoryRegistry, MemoryRuntime, MemoryVolumeStore};

async fn make_backend() -> Option<BackendSubject> {
    let b = MemoryBackend::new();
    Some(BackendSubject::new(
        Arc::new(b.clone()),
        Arc::new(b),
        "busybox:1.36",
    ))
}

async fn make_store() -> Option<Subject<dyn VolumeStore>> {
    Some(Subject::new(
        Arc::new(MemoryVolumeStore::new()) as Arc<dyn VolumeStore>
    ))
}

async fn make_registry() -> Option<Subject<dyn ArtifactRegistry>> {
    Some(Subject::new(
        Arc::new(MemoryRegistry::new()) as Arc<dyn ArtifactRegistry>
    ))
}

jetbridge_conformance::pods_suite!(make_backend);
jetbridge_conformance::exec_suite!(make_backend);
jetbridge_conformance::volume_store_suite!(make_store);
jetbridge_conformance::registry_suite!(make_registry);

jetbridge_conformance::runtime_suite!(make_runtime);
jetbridge_conformance::lifecycle_suite!(make_runtime);

/// The mock resource type runs in the built-in `concourse/mock-resource` image.
const MOCK_TYPE: &str =
    "{name: jb-mock, type: registry-image, source: {repository: concourse/mock-resource}}";

async fn make_runtime() -> Option<jetbridge_conformance::RuntimeSubject> {
    Some(jetbridge_conformance::RuntimeSubject::new(
        MemoryRuntime::new().runtime(),
        MOCK_TYPE,
        ImageResolver::new(),
    ))
}
