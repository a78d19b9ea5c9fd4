//! API requests per step on Kubernetes, counted by the simulator: a step with one input
//! and one output, volumes mounted from the claim, stays within 10 requests: 8 to run
//! it, and a list (plus a watch while it terminates) to see the pod gone before its
//! in-place output is sealed.

use std::sync::Arc;

use jetbridge_core::images::ImageResolver;
use jetbridge_core::plan::{Vars, parse_pipeline};
use jetbridge_core::ports::{ArtifactRegistry, Runtime};
use jetbridge_core::services::{BuildRequest, BuildRunner, BuildStatus, NoEvents, StepConfig};
use jetbridge_fs::FsVolumeStore;
use jetbridge_kube::{KubeBackend, KubeConfig};
use jetbridge_kube_sim::SimControls;
use jetbridge_kube_sim::{SimConfig, Simulator};
use jetbridge_memory::MemoryRegistry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_with_one_input_and_one_output_costs_at_most_8_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pvc = dir.path().join("pvc");
    let sim = Simulator::start(SimConfig {
        work_root: Some(dir.path().join("sim")),
        pvc_root: Some(pvc.clone()),
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, "jb-req")
        .expect("kubeconfig");
    let backend = Arc::new(
        KubeBackend::new(KubeConfig {
            kubeconfig: Some(kubeconfig),
            namespace: Some("jb-req".into()),
            artifact_claim: Some("artifacts".into()),
            ..KubeConfig::default()
        })
        .await
        .expect("backend"),
    );
    let store = Arc::new(
        FsVolumeStore::new(pvc.join("artifacts"))
            .expect("store")
            .with_shared_volume("artifacts", ""),
    );
    let registry: Arc<dyn ArtifactRegistry> = Arc::new(MemoryRegistry::new());
    let rt = Runtime {
        pods: backend.clone(),
        exec: backend,
        volumes: Some(store),
        registry,
    };
    let runner = BuildRunner::new(
        rt,
        StepConfig::default(),
        ImageResolver::new(),
        "w",
        Arc::new(NoEvents),
    );

    let yaml = "jobs:\n- name: j\n  plan:\n  - task: make\n    config:\n      platform: linux\n      outputs: [{name: a}]\n      run: {path: sh, args: [-c, 'echo x > a/f']}\n  - task: use\n    config:\n      platform: linux\n      inputs: [{name: a}]\n      outputs: [{name: b}]\n      run: {path: sh, args: [-c, 'cp a/f b/f']}\n";
    let pipeline = Arc::new(parse_pipeline(yaml, "req.yml", &Vars::new()).expect("parses"));
    sim.reset_requests();
    let out = runner
        .run(BuildRequest::new(pipeline, "j", 1, "req"))
        .await
        .expect("runs");
    assert_eq!(out.status, BuildStatus::Succeeded, "{:?}", out.failure);
    let requests = sim.requests();
    let per_step = requests.len() as f64 / 2.0;
    println!(
        "API requests for 2 steps: {} ({per_step} per step)",
        requests.len()
    );
    for r in &requests {
        println!("  {} {}?{}", r.method, r.path, r.query);
    }
    assert!(
        requests.len() <= 20,
        "more than 10 requests per step: {requests:#?}"
    );
}
