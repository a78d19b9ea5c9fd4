//! The shared build-queue conformance suite, run against the production in-memory queue.

use std::sync::Arc;

use jetbridge_conformance::Subject;
use jetbridge_core::ports::BuildQueue;
use jetbridge_memory_registry::MemoryBuildQueue;

async fn make_queue() -> Option<Subject<dyn BuildQueue>> {
    Some(Subject::new(
        Arc::new(MemoryBuildQueue::new()) as Arc<dyn BuildQueue>
    ))
}

jetbridge_conformance::queue_suite!(make_queue);
