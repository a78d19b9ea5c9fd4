//! A task's `hermetic` reaches the pod the step runner asks for, and only that task's
//! pod (on the memory fakes, which record it).

use std::sync::Arc;
use std::time::Duration;

use jetbridge_core::images::ImageResolver;
use jetbridge_core::plan::{Vars, parse_pipeline};
use jetbridge_core::services::{BuildRequest, BuildRunner, BuildStatus, NoEvents, StepConfig};
use jetbridge_memory::MemoryRuntime;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hermetic_reaches_the_pod_of_that_task_alone() {
    let yaml = "jobs:\n- name: j\n  plan:\n  - task: open\n    config: {platform: linux, run: {path: 'true'}}\n  - task: sealed\n    hermetic: true\n    config: {platform: linux, run: {path: 'true'}}\n";
    let pipeline = parse_pipeline(yaml, "test.yml", &Vars::new()).expect("pipeline parses");
    let m = MemoryRuntime::new();
    let runner = BuildRunner::new(
        m.runtime(),
        StepConfig {
            scheduling_timeout: Duration::from_millis(500),
            startup_timeout: Duration::from_secs(5),
            ..StepConfig::default()
        },
        ImageResolver::new(),
        "w1",
        Arc::new(NoEvents),
    );
    let outcome = runner
        .run(BuildRequest::new(Arc::new(pipeline), "j", 7, "build-7"))
        .await
        .expect("build runs");
    assert_eq!(outcome.status, BuildStatus::Succeeded, "{outcome:?}");
    assert_eq!(m.backend.created_pods(), 2);
    let hermetic = m.backend.hermetic_pods();
    assert_eq!(
        hermetic.len(),
        1,
        "only the second task's pod: {hermetic:?}"
    );
}
