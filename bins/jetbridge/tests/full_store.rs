//! A store that fills up while a step writes its output in place: the step fails
//! `StorageFull` (errored, the platform's failure, not the command's), nothing of its
//! partial output is ever sealed, the artifacts made before it are intact, and a reaper
//! pass leaves nothing. On a real small filesystem (a 4 MiB tmpfs), on the embedded
//! default (local processes, the directory store) and on Kubernetes (the simulator)
//! with the store on a claim.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jetbridge_core::images::ImageResolver;
use jetbridge_core::plan::{Vars, parse_pipeline};
use jetbridge_core::ports::{
    ArtifactFilter, ArtifactRegistry, ArtifactState, Runtime, VolumeStore, collect_stream,
};
use jetbridge_core::services::{
    BuildRequest, BuildRunner, BuildStatus, NoEvents, Reaper, ReaperConfig, StepConfig, StepFailure,
};
use jetbridge_fs::FsVolumeStore;
use jetbridge_memory::MemoryRegistry;

mod common;

const WORKER: &str = "w-full";

/// A tmpfs of `size`, unmounted on drop; `None` where mounting is refused (said loudly,
/// and a failure where CI requires it with `JETBRIDGE_REQUIRE_MOUNT=1`).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        let why = match out {
            Ok(o) if o.status.success() => return Some(Tmpfs(dir.to_path_buf())),
            Ok(o) => format!(
                "mounting a tmpfs was refused: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => format!("cannot run mount: {e}"),
        };
        jetbridge_conformance::live::unavailable("MOUNT", &why);
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The first task's small output, then a second task that writes more than the store
/// holds into its output.
const PIPELINE: &str = "jobs:\n- name: j\n  plan:\n  - task: small\n    config:\n      platform: linux\n      outputs: [{name: first}]\n      run: {path: sh, args: [-c, 'echo kept > first/f']}\n  - task: big\n    config:\n      platform: linux\n      inputs: [{name: first}]\n      outputs: [{name: second}]\n      run: {path: sh, args: [-c, 'dd if=/dev/zero of=second/big bs=64k count=256 2>&1']}\n";

async fn a_full_store_fails_the_step_storage_full(rt: Runtime) {
    let pipeline = parse_pipeline(PIPELINE, "full.yml", &Vars::new()).expect("pipeline");
    let runner = BuildRunner::new(
        rt.clone(),
        StepConfig {
            delete_grace: Duration::from_secs(1),
            ..StepConfig::default()
        },
        ImageResolver::new(),
        WORKER,
        Arc::new(NoEvents),
    );
    let o = runner
        .run(BuildRequest::new(Arc::new(pipeline), "j", 1, "full-1"))
        .await
        .expect("build runs");
    assert_eq!(o.status, BuildStatus::Errored, "{:?}", o.failure);
    let (step, failure) = o.failure.as_ref().expect("a failure");
    assert_eq!(step, "task: big");
    let StepFailure::StorageFull(why) = failure else {
        panic!("not StorageFull: {failure:?}");
    };
    assert!(why.contains("\"second\""), "{why}");
    // The first task's output is intact and reads back verified.
    let first = o.artifacts.get("first").expect("the first output");
    let store = rt.volumes.clone().expect("store");
    let tar = collect_stream(store.read_tar(&first.volume).await.expect("read"))
        .await
        .expect("verified");
    assert!(tar.windows(5).any(|w| w == b"kept\n"));
    // Nothing of the partial output was sealed, and it is not bound for later steps.
    assert!(!o.artifacts.contains_key("second"), "{:?}", o.artifacts);
    let sealed = rt
        .registry
        .find(&ArtifactFilter {
            build: Some("full-1".to_owned()),
            ..Default::default()
        })
        .await
        .expect("find");
    assert!(
        sealed
            .iter()
            .all(|a| a.name != "second" || a.state != ArtifactState::Ready),
        "a partial output was sealed: {sealed:?}"
    );
    // A reaper pass leaves no pod, record or volume of the build.
    let mut cfg = ReaperConfig::new(WORKER);
    cfg.orphan_volume_grace = Duration::ZERO;
    let reaper = Reaper::new(
        Some(rt.pods.clone()),
        rt.volumes.clone(),
        rt.registry.clone(),
        cfg,
    );
    let report = reaper
        .run_once(
            &runner.active_steps(),
            SystemTime::now() + Duration::from_secs(1),
        )
        .await
        .expect("reap");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let left = rt
        .registry
        .find(&ArtifactFilter {
            build: Some("full-1".to_owned()),
            ..Default::default()
        })
        .await
        .expect("find");
    assert!(left.is_empty(), "records left: {left:?}");
    assert!(
        store.list().await.expect("list").is_empty(),
        "volumes left after the reaper pass"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_local_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(_fs) = Tmpfs::mount(&dir.path().join("volumes"), "4m") else {
        return;
    };
    let backend = Arc::new(
        jetbridge_local::LocalBackend::new(jetbridge_local::LocalConfig::new(
            dir.path().join("local"),
        ))
        .expect("local backend"),
    );
    let store = FsVolumeStore::new(dir.path().join("volumes")).expect("store");
    let registry: Arc<dyn ArtifactRegistry> = Arc::new(MemoryRegistry::new());
    let rt = Runtime {
        pods: backend.clone(),
        exec: backend,
        volumes: Some(Arc::new(store) as Arc<dyn VolumeStore>),
        registry,
    };
    a_full_store_fails_the_step_storage_full(rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kubernetes_with_a_claim() {
    use jetbridge_kube::KubeConfig;
    use jetbridge_kube_sim::SimConfig;
    let dir = tempfile::tempdir().expect("tempdir");
    let pvc_root = dir.path().join("pvc");
    let Some(_fs) = Tmpfs::mount(&pvc_root.join("artifacts"), "4m") else {
        return;
    };
    let (sim, backend) = common::kube_on_sim(
        dir.path(),
        "jb-full",
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
    let registry: Arc<dyn ArtifactRegistry> = Arc::new(MemoryRegistry::new());
    let rt = Runtime {
        pods: backend.clone(),
        exec: backend,
        volumes: Some(Arc::new(store) as Arc<dyn VolumeStore>),
        registry,
    };
    a_full_store_fails_the_step_storage_full(rt).await;
    drop(sim);
}
