//! Outputs written in place are sealed only once nothing of the step can still write:
//! a task that leaves a process behind, writing into its output after it exits, never
//! changes a sealed artifact. On the embedded default (local processes, the directory
//! store) and on Kubernetes (the simulator) with the store on a claim.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jetbridge_core::images::ImageResolver;
use jetbridge_core::plan::{Vars, parse_pipeline};
use jetbridge_core::ports::{ArtifactRegistry, Runtime, VolumeStore};
use jetbridge_core::services::{BuildRequest, BuildRunner, BuildStatus, NoEvents, StepConfig};
use jetbridge_fs::FsVolumeStore;
use jetbridge_memory::MemoryRegistry;

mod common;

/// The task leaves a writer behind that appends to its output every 20 ms and shrugs
/// off SIGTERM, so it writes until it is killed; it records its pid so the test can
/// wait for it to be gone. (Detached from the step's output, as a daemon would be, so
/// the command's exit is the end of its exec.)
fn pipeline(mark: &Path) -> String {
    let script = "(trap '' TERM; while :; do echo more >> out/late; sleep 0.02; done) </dev/null >/dev/null 2>&1 & echo $! > \"$MARK/pid\"; echo early > out/early";
    format!(
        "jobs:\n- name: main\n  plan:\n  - task: leaves-a-writer\n    params: {{MARK: {mark}}}\n    config:\n      platform: linux\n      image_resource: {{type: registry-image, source: {{repository: busybox}}}}\n      outputs: [{{name: out}}]\n      run: {{path: sh, args: [-c, {script}]}}\n",
        mark = serde_json::to_string(&mark.to_string_lossy()).expect("json"),
        script = serde_json::to_string(script).expect("json"),
    )
}

fn pid_alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie of the simulator's or backend's reaping
    // counts as gone once /proc says so.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
}

async fn late_writer_cannot_change_a_sealed_output(rt: Runtime, store: FsVolumeStore, mark: &Path) {
    let text = pipeline(mark);
    let p = parse_pipeline(&text, "sealing.yml", &Vars::new()).expect("parses");
    let runner = BuildRunner::new(
        rt,
        StepConfig {
            delete_grace: Duration::from_secs(1),
            ..StepConfig::default()
        },
        ImageResolver::new(),
        "sealing-worker",
        Arc::new(NoEvents),
    );
    let o = runner
        .run(BuildRequest::new(Arc::new(p), "main", 1, "sealing-1"))
        .await
        .expect("runs");
    assert_eq!(o.status, BuildStatus::Succeeded, "{:?}", o.failure);
    let out = o.artifacts.get("out").expect("output bound");

    // Wait (bounded) for the background writer to be gone: it goes with the pod.
    let pid: i32 = std::fs::read_to_string(mark.join("pid"))
        .expect("the task recorded its writer")
        .trim()
        .parse()
        .expect("a pid");
    let deadline = Instant::now() + Duration::from_secs(20);
    while pid_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the writer {pid} is still running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let data = store.volume_data_path(&out.volume);
    assert!(
        data.join("early").is_file(),
        "the output has what the task wrote"
    );
    // Whatever the writer managed before the step ended is part of the artifact;
    // nothing after the seal is.
    match store.verify(&out.volume).await {
        Ok(v) => assert_eq!(v.digest, out.digest),
        Err(e) => panic!("a process of the step wrote into its output after it was sealed: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_local_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Arc::new(
        jetbridge_local::LocalBackend::new(jetbridge_local::LocalConfig::new(
            dir.path().join("local"),
        ))
        .expect("local backend"),
    );
    let store = FsVolumeStore::new(dir.path().join("volumes")).expect("store");
    let mark = dir.path().join("mark");
    std::fs::create_dir_all(&mark).expect("mark dir");
    let volumes: Arc<dyn VolumeStore> = Arc::new(store.clone());
    let registry: Arc<dyn ArtifactRegistry> = Arc::new(MemoryRegistry::new());
    let rt = Runtime {
        pods: backend.clone(),
        exec: backend,
        volumes: Some(volumes),
        registry,
    };
    late_writer_cannot_change_a_sealed_output(rt, store, &mark).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kubernetes_with_a_claim() {
    use jetbridge_kube::KubeConfig;
    use jetbridge_kube_sim::SimConfig;
    let dir = tempfile::tempdir().expect("tempdir");
    let pvc_root = dir.path().join("pvc");
    let (sim, backend) = common::kube_on_sim(
        dir.path(),
        "jb-sealing",
        SimConfig {
            pvc_root: Some(pvc_root.clone()),
            ..SimConfig::default()
        },
        KubeConfig {
            artifact_claim: Some("artifacts".to_owned()),
            ..KubeConfig::default()
        },
    )
    .await;
    let store = FsVolumeStore::new(pvc_root.join("artifacts"))
        .expect("store")
        .with_shared_volume("artifacts", "");
    let mark = dir.path().join("mark");
    std::fs::create_dir_all(&mark).expect("mark dir");
    let volumes: Arc<dyn VolumeStore> = Arc::new(store.clone());
    let registry: Arc<dyn ArtifactRegistry> = Arc::new(MemoryRegistry::new());
    let rt = Runtime {
        pods: backend.clone(),
        exec: backend,
        volumes: Some(volumes),
        registry,
    };
    late_writer_cannot_change_a_sealed_output(rt, store, &mark).await;
    drop(sim);
}
