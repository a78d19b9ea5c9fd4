//! The shared registry conformance suite, run against the production in-memory registry.

use std::sync::Arc;

use jetbridge_conformance::Subject;
use jetbridge_core::ports::ArtifactRegistry;
use jetbridge_memory_registry::MemoryRegistry;

async fn make_registry() -> Option<Subject<dyn ArtifactRegistry>> {
    Some(Subject::new(
        Arc::new(MemoryRegistry::new()) as Arc<dyn ArtifactRegistry>
    ))
}

jetbridge_conformance::registry_suite!(make_registry);
