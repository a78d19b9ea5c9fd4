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
    BuildOutcome, BuildRequest, BuildRunner, BuildStatus, NoEvents, Reaper, ReaperConfig,
    StepConfig, StepFailure,
};
use jetbridge_kube::KubeConfig;
use jetbridge_kube_sim::SimControls;
use jetbridge_kube_sim::{SimConfig, Simulator};
use jetbridge_memory::{MemoryRegistry, MemoryVolumeStore};

mod common;

const NS: &str = "jb-fail";

async fn setup(dir: &std::path::Path) -> (Simulator, Runtime) {
    setup_with(dir, Duration::ZERO).await
}

/// `reclaim`: how long the kubelet takes to confirm a graceful deletion, during which
/// the pod is seen terminating in its terminal phase, as in a cluster.
async fn setup_with(dir: &std::path::Path, reclaim: Duration) -> (Simulator, Runtime) {
    let (sim, backend) = common::kube_on_sim(
        dir,
        NS,
        SimConfig {
            reclaim_delay: reclaim,
            ..SimConfig::default()
        },
        KubeConfig::default(),
    )
    .await;
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
    BuildRequest::new(
        Arc::new(parse_pipeline(yaml, "f.yml", &Vars::new()).expect("parses")),
        "j",
        1,
        "f",
    )
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

const HOOKED: &str = "jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      run: {path: sh, args: [-c, 'echo started; sleep 20']}\n    on_failure:\n      task: failure-hook\n      config: {platform: linux, run: {path: 'true'}}\n    on_error:\n      task: error-hook\n      config: {platform: linux, run: {path: 'true'}}\n";

/// A drain, the eviction API or someone's `kubectl delete` mid-step: the pause
/// program exits 0 on TERM, so the kubelet may write `Succeeded`, while the command
/// dies with 137. None of that is the step's failure: it errors, and `on_error` runs,
/// never `on_failure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disruption_mid_step_errors_and_never_runs_on_failure() {
    for how in ["drain", "eviction", "delete"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (sim, rt) = setup_with(dir.path(), Duration::from_secs(2)).await;
        let runner = BuildRunner::new(
            rt,
            StepConfig::default(),
            ImageResolver::new(),
            "w",
            Arc::new(NoEvents),
        );
        let build = tokio::spawn(async move { runner.run(request(HOOKED)).await });
        wait_for_pod(&sim).await;
        let pod = sim.pods(NS)[0]["metadata"]["name"]
            .as_str()
            .expect("a name")
            .to_owned();
        match how {
            "drain" => {
                sim.drain_node();
                // Hooks need a node.
                sim.uncordon();
            }
            "eviction" => sim.evict_with_api(NS, &pod),
            _ => sim.delete_pod(NS, &pod, None),
        }
        let out: BuildOutcome = tokio::time::timeout(Duration::from_secs(60), build)
            .await
            .expect("ends well before the command would")
            .expect("joins")
            .expect("runs");
        assert_eq!(out.status, BuildStatus::Errored, "{how}: {:?}", out.failure);
        match (how, &out.failure) {
            ("drain" | "eviction", Some((_, StepFailure::Evicted(_)))) => {}
            ("delete", Some((_, StepFailure::PodDeleted(_)))) => {}
            other => panic!("{how}: expected a disruption, got {other:?}"),
        }
        let ran: Vec<&str> = out.steps.iter().map(|s| s.name.as_str()).collect();
        assert!(
            ran.iter().any(|n| n.contains("error-hook")),
            "{how}: {ran:?}"
        );
        assert!(
            !ran.iter().any(|n| n.contains("failure-hook")),
            "{how}: {ran:?}"
        );
        sim.shutdown().await;
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

/// A worker that dies after a step's env Secret was made but before its pod was: the
/// next reaper pass (once the grace is over) leaves no Secret holding the params.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_between_secret_and_pod_leaves_no_secret_after_a_reaper_pass() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, rt) = setup(dir.path()).await;
    // The pod's create hangs: the worker dies in between.
    sim.inject(jetbridge_kube_sim::Fault::on(
        "POST",
        "/pods",
        1,
        jetbridge_kube_sim::FaultAction::Delay(Duration::from_secs(60)),
    ));
    let runner = BuildRunner::new(
        rt.clone(),
        StepConfig::default(),
        ImageResolver::new(),
        "w1",
        Arc::new(NoEvents),
    );
    const PARAMS: &str = "jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      params: {TOKEN: s3cr3t}\n      run: {path: 'true'}\n";
    let build = tokio::spawn(async move { runner.run(request(PARAMS)).await });
    for _ in 0..200 {
        if !sim.secrets(NS).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(sim.secrets(NS).len(), 1, "the step's env Secret was made");
    build.abort();
    let _ = build.await;
    assert!(sim.pods(NS).is_empty());
    let mut cfg = ReaperConfig::new("w1");
    cfg.pod_garbage_grace = Duration::from_secs(60);
    let reaper = Reaper::new(
        Some(rt.pods.clone()),
        rt.volumes.clone(),
        rt.registry.clone(),
        cfg,
    );
    // Within the grace the Secret stays: its pod may be on the way.
    let report = reaper
        .run_once(&HashSet::new(), SystemTime::now())
        .await
        .expect("pass");
    assert!(report.pod_garbage_deleted.is_empty(), "{report:?}");
    let report = reaper
        .run_once(
            &HashSet::new(),
            SystemTime::now() + Duration::from_secs(120),
        )
        .await
        .expect("pass");
    assert_eq!(report.pod_garbage_deleted.len(), 1, "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(sim.secrets(NS).is_empty(), "{:?}", sim.secrets(NS));
}
