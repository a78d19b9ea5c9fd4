//! API-server bytes per step on the Kubernetes simulator, which counts every payload
//! byte of every exec session (`Simulator::exec_bytes`): a two-task build whose first
//! task writes an output of `JB_BENCH_MIB` MiB (default 1024) of incompressible data and
//! whose second takes it as an input and writes an output of the same size, with
//! artifacts streamed through exec (a store pods cannot mount) and on a claim (pods mount
//! them by subPath), through the step-pod helper, in the same run.
//!
//! `cargo bench -p jetbridge --bench api_bytes`. Without `--bench` (`cargo test
//! --benches`) it moves 1 MiB, as a smoke test.

use std::sync::Arc;
use std::time::Instant;

use jetbridge_core::images::ImageResolver;
use jetbridge_core::plan::{Vars, parse_pipeline};
use jetbridge_core::ports::{ArtifactRegistry, Runtime, VolumeStore};
use jetbridge_core::services::{BuildRequest, BuildRunner, BuildStatus, NoEvents, StepConfig};
use jetbridge_fs::FsVolumeStore;
use jetbridge_kube::{KubeBackend, KubeConfig};
use jetbridge_kube_sim::{SimConfig, Simulator};
use jetbridge_memory::{MemoryRegistry, MemoryVolumeStore};

const HELPER_IMAGE: &str = "ghcr.io/jetbridge/jetbridge:bench";

fn pipeline(mib: u64) -> String {
    // `head -c` of /dev/urandom: incompressible, so no transport can shrink it.
    format!(
        "jobs:\n- name: j\n  plan:\n  - task: make\n    config:\n      platform: linux\n      \
         outputs: [{{name: a}}]\n      run: {{path: sh, args: [-c, 'head -c {mib}M /dev/urandom > a/blob']}}\n  \
         - task: use\n    config:\n      platform: linux\n      inputs: [{{name: a}}]\n      \
         outputs: [{{name: b}}]\n      run: {{path: sh, args: [-c, 'test -s a/blob && head -c {mib}M /dev/urandom > b/blob']}}\n"
    )
}

async fn one(claim: bool, mib: u64) -> (u64, u64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pvc_root = dir.path().join("pvc");
    let sim = Simulator::start(SimConfig {
        work_root: Some(dir.path().join("sim")),
        pvc_root: Some(pvc_root.clone()),
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    sim.image_file(
        HELPER_IMAGE,
        jetbridge_kube::STEP_HELPER_PATH,
        jetbridge_kube_sim::built_step_helper(),
    )
    .expect("the helper image's file");
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, "bench")
        .expect("kubeconfig");
    let backend = Arc::new(
        KubeBackend::new(KubeConfig {
            kubeconfig: Some(kubeconfig),
            namespace: Some("bench".into()),
            artifact_claim: claim.then(|| "artifacts".to_owned()),
            step_helper_image: Some(HELPER_IMAGE.into()),
            ..KubeConfig::default()
        })
        .await
        .expect("backend"),
    );
    let volumes: Arc<dyn VolumeStore> = if claim {
        Arc::new(
            FsVolumeStore::new(pvc_root.join("artifacts"))
                .expect("store")
                .with_shared_volume("artifacts", ""),
        )
    } else {
        Arc::new(MemoryVolumeStore::new())
    };
    let registry: Arc<dyn ArtifactRegistry> = Arc::new(MemoryRegistry::new());
    let rt = Runtime {
        pods: backend.clone(),
        exec: backend,
        volumes: Some(volumes),
        registry,
    };
    let runner = BuildRunner::new(
        rt,
        StepConfig::default(),
        ImageResolver::new(),
        "bench",
        Arc::new(NoEvents),
    );
    let plan = Arc::new(parse_pipeline(&pipeline(mib), "bytes.yml", &Vars::new()).expect("parses"));
    sim.reset_exec_bytes();
    let t = Instant::now();
    let out = runner
        .run(BuildRequest::new(plan, "j", 1, "b1"))
        .await
        .expect("build");
    let took = t.elapsed().as_secs_f64();
    assert_eq!(out.status, BuildStatus::Succeeded, "{out:?}");
    let bytes = sim.exec_bytes();
    sim.shutdown().await;
    (bytes.stdin, bytes.output, took)
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let mib: u64 = if smoke {
        1
    } else {
        std::env::var("JB_BENCH_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!("two tasks, each writing a {mib} MiB output; the second reads the first's");
        println!("| artifacts | stdin through the API server | output through the API server | per step | build time |");
        println!("|---|---|---|---|---|");
        for claim in [false, true] {
            let (stdin, output, took) = one(claim, mib).await;
            let mib_of = |b: u64| b as f64 / (1 << 20) as f64;
            println!(
                "| {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {took:.1} s |",
                if claim { "on a claim (subPath mounts)" } else { "streamed through exec" },
                mib_of(stdin),
                mib_of(output),
                mib_of(stdin + output) / 2.0,
            );
        }
    });
}
