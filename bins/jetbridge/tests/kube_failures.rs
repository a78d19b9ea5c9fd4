//! Failure scenarios of whole steps on the Kubernetes adapter against the simulator: a
//! node drained mid-step, and a worker that dies mid-build.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jetbridge_core::images::ImageResolver;
use jetbridge_core::names::label;
use jetbridge_core::plan::{Vars, parse_pipeline};
use jetbridge_core::ports::{ArtifactRegistry, Runtime};
use jetbridge_core::services::{
    AbortSignal, BuildOutcome, BuildRequest, BuildRunner, BuildStatus, NoEvents, Reaper,
    ReaperConfig, StepConfig, StepFailure,
};
use jetbridge_kube::{KubeBackend, KubeConfig};
use jetbridge_kube_sim::{SimConfig, Simulator};
use jetbridge_memory::{MemoryRegistry, MemoryVolumeStore};

const NS: &str = "jb-fail";

async fn setup(dir: &std::path::Path) -> (Simulator, Runtime) {
    let sim = Simulator::start(SimConfig {
        work_root: Some(dir.join("sim")),
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let kubeconfig = dir.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, NS).expect("kubeconfig");
    let backend = Arc::new(
        KubeBackend::new(KubeConfig {
            kubeconfig: Some(kubeconfig),
            namespace: Some(NS.into()),
            ..KubeConfig::default()
        })
        .await
        .expect("backend"),
    );
    let registry: Arc<dyn ArtifactRegistry> = Arc::new(MemoryRegistry::new());
    let rt = Runtime {
        pods: backend.clone(),
        exec: backend,
        volumes: Some(Arc::new(MemoryVolumeStore::new())),
        registry,
    };
    (sim, rt)
}

fn request(yaml: &str) -> BuildRequest {
    BuildRequest {
        pipeline: Arc::new(parse_pipeline(yaml, "f.yml", &Vars::new()).expect("parses")),
        job: "j".into(),
        build_number: 1,
        build_id: "f".into(),
        vars: Vars::new(),
        abort: AbortSignal::never(),
    }
}

const SLOW: &str = "jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      run: {path: sh, args: [-c, 'echo started; sleep 20']}\n";

async fn wait_for_pod(sim: &Simulator) {
    for _ in 0..200 {
        let running = sim
            .pods(NS)
            .iter()
            .any(|p| p["status"]["phase"].as_str() == Some("Running"));
        if running {
            // Let the exec start.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the step pod never ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_drained_mid_step_fails_the_step_as_evicted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, rt) = setup(dir.path()).await;
    let runner = BuildRunner::new(
        rt,
        StepConfig::default(),
        ImageResolver::new(),
        "w",
        Arc::new(NoEvents),
    );
    let build = tokio::spawn(async move { runner.run(request(SLOW)).await });
    wait_for_pod(&sim).await;
    sim.drain_node();
    let out: BuildOutcome = tokio::time::timeout(Duration::from_secs(60), build)
        .await
        .expect("ends well before the command would")
        .expect("joins")
        .expect("runs");
    assert_ne!(out.status, BuildStatus::Succeeded);
    match &out.failure {
        Some((_, StepFailure::Evicted(_) | StepFailure::PodDeleted(_))) => {}
        other => panic!("expected an eviction, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_mid_build_leaves_no_pod_after_the_next_reaper_pass() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, rt) = setup(dir.path()).await;
    let runner = BuildRunner::new(
        rt.clone(),
        StepConfig::default(),
        ImageResolver::new(),
        "w1",
        Arc::new(NoEvents),
    );
    let build = tokio::spawn(async move { runner.run(request(SLOW)).await });
    wait_for_pod(&sim).await;
    // The worker dies: its build stops without any cleanup.
    build.abort();
    let _ = build.await;
    assert_eq!(
        sim.pods(NS).len(),
        1,
        "the dead worker's pod is still there"
    );
    // The restarted worker (same name, nothing running) reaps it.
    let reaper = Reaper::new(
        Some(rt.pods.clone()),
        rt.volumes.clone(),
        rt.registry.clone(),
        ReaperConfig::new("w1"),
    );
    let report = reaper
        .run_once(&HashSet::new(), SystemTime::now())
        .await
        .expect("pass");
    assert_eq!(report.pods_deleted.len(), 1, "{report:?}");
    let mut sel = std::collections::BTreeMap::new();
    sel.insert(label::WORKER.to_owned(), "w1".to_owned());
    for _ in 0..100 {
        if rt.pods.list(&sel).await.expect("list").is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the orphaned pod is still there: {:?}", sim.pods(NS));
}
