//! An abort interrupts a step on Kubernetes wherever it is — waiting for a node, or
//! running — and leaves no pod or Secret behind. (Against the API simulator; the
//! lifecycle conformance suite covers hooks after an abort on every backend.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use jetbridge_core::images::ImageResolver;
use jetbridge_core::plan::{Vars, parse_pipeline};
use jetbridge_core::ports::{ArtifactRegistry, Runtime};
use jetbridge_core::services::{
    AbortHandle, BuildOutcome, BuildRequest, BuildRunner, BuildStatus, NoEvents, StepConfig,
    abort_pair,
};
use jetbridge_kube::KubeConfig;
use jetbridge_kube_sim::{SimConfig, Simulator};
use jetbridge_memory::MemoryRegistry;

mod common;

const NS: &str = "jb-aborts";

async fn setup(dir: &std::path::Path) -> (Simulator, Runtime) {
    let (sim, backend) =
        common::kube_on_sim(dir, NS, SimConfig::default(), KubeConfig::default()).await;
    let registry: Arc<dyn ArtifactRegistry> = Arc::new(MemoryRegistry::new());
    let rt = Runtime {
        pods: backend.clone(),
        exec: backend,
        volumes: None,
        registry,
    };
    (sim, rt)
}

/// A task with a param (so its pod has an env Secret) running `script`.
fn start(
    rt: Runtime,
    script: &str,
) -> (
    AbortHandle,
    tokio::task::JoinHandle<jetbridge_core::Result<BuildOutcome>>,
) {
    let yaml = format!(
        "jobs:\n- name: j\n  plan:\n  - task: t\n    params: {{TOKEN: s3cr3t}}\n    config:\n      platform: linux\n      image_resource: {{type: registry-image, source: {{repository: busybox}}}}\n      run: {{path: sh, args: [-c, {}]}}\n",
        serde_json::to_string(script).expect("json")
    );
    let pipeline = parse_pipeline(&yaml, "aborts.yml", &Vars::new()).expect("parses");
    let runner = BuildRunner::new(
        rt,
        StepConfig {
            // Far beyond the test's bounds: only the abort can end these waits.
            scheduling_timeout: Duration::from_secs(3600),
            startup_timeout: Duration::from_secs(3600),
            delete_grace: Duration::from_secs(1),
            ..StepConfig::default()
        },
        ImageResolver::new(),
        "abort-worker",
        Arc::new(NoEvents),
    );
    let (handle, signal) = abort_pair();
    let build = tokio::spawn(async move {
        runner
            .run(BuildRequest::new(Arc::new(pipeline), "j", 1, "abort-1").with_abort(signal))
            .await
    });
    (handle, build)
}

/// Wait (bounded) until the simulator holds a pod in `phase`.
async fn wait_for_phase(sim: &Simulator, phase: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if sim
            .pods(NS)
            .iter()
            .any(|p| p["status"]["phase"].as_str() == Some(phase))
        {
            return;
        }
        assert!(Instant::now() < deadline, "no pod reached {phase}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ends_aborted_with_nothing_left(
    sim: &Simulator,
    build: tokio::task::JoinHandle<jetbridge_core::Result<BuildOutcome>>,
) {
    let o = tokio::time::timeout(Duration::from_secs(60), build)
        .await
        .expect("the abort ends the build")
        .expect("joins")
        .expect("runs");
    assert_eq!(o.status, BuildStatus::Aborted, "{:?}", o.failure);
    // Deletion is graceful: what is left must be on its way out, and then gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(sim.pods(NS).is_empty() && sim.secrets(NS).is_empty()) {
        assert!(
            Instant::now() < deadline,
            "left behind: pods {:?}, secrets {:?}",
            sim.pods(NS),
            sim.secrets(NS)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_ends_the_wait_for_a_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, rt) = setup(dir.path()).await;
    sim.set_unschedulable(true);
    let (abort, build) = start(rt, "true");
    wait_for_phase(&sim, "Pending").await;
    assert_eq!(sim.secrets(NS).len(), 1, "the pod's env Secret exists");
    abort.abort();
    ends_aborted_with_nothing_left(&sim, build).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_ends_a_running_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, rt) = setup(dir.path()).await;
    let (abort, build) = start(rt, "sleep 300");
    wait_for_phase(&sim, "Running").await;
    abort.abort();
    ends_aborted_with_nothing_left(&sim, build).await;
}
