//! The runtime suite on the Kubernetes adapter against the API simulator: with the
//! filesystem store on a (simulated) ReadWriteMany claim, mounted by subPath (outputs
//! written in place, inputs copied by an init container), and with a store that pods
//! cannot mount (artifacts streamed as tar through the helper container).

use std::sync::Arc;

use jetbridge_conformance::RuntimeSubject;
use jetbridge_conformance::runtime::{flip_a_byte_under, write_mock_resource};
use jetbridge_core::images::ImageResolver;
use jetbridge_core::ports::{ArtifactRegistry, Runtime, VolumeStore};
use jetbridge_fs::FsVolumeStore;
use jetbridge_kube::{KubeBackend, KubeConfig};
use jetbridge_kube_sim::{ExecProtocols, SimConfig, Simulator};
use jetbridge_memory::{MemoryRegistry, MemoryVolumeStore};

mod sim_images;
use sim_images::{MOCK_IMAGE, MOCK_TYPE, image_files};

async fn subject(pvc: bool) -> Option<RuntimeSubject> {
    subject_on(pvc, ExecProtocols::default(), false).await
}

/// `step_helper`: step pods get the static step-pod helper from the jetbridge image
/// (`--step-helper-image`), run for real from its build.
async fn subject_on(
    pvc: bool,
    exec_protocols: ExecProtocols,
    step_helper: bool,
) -> Option<RuntimeSubject> {
    let dir = tempfile::tempdir().expect("tempdir");
    let pvc_root = dir.path().join("pvc");
    let sim = Simulator::start(SimConfig {
        work_root: Some(dir.path().join("sim")),
        pvc_root: Some(pvc_root.clone()),
        exec_protocols,
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, "jb-runtime")
        .expect("kubeconfig");
    let fs_store = pvc.then(|| {
        FsVolumeStore::new(pvc_root.join("artifacts"))
            .expect("store")
            .with_shared_volume("artifacts", "")
    });
    let volumes: Arc<dyn VolumeStore> = match &fs_store {
        Some(s) => Arc::new(s.clone()),
        None => Arc::new(MemoryVolumeStore::new()),
    };
    let backend = Arc::new(
        KubeBackend::new(KubeConfig {
            kubeconfig: Some(kubeconfig),
            namespace: Some("jb-runtime".into()),
            artifact_claim: pvc.then(|| "artifacts".to_owned()),
            cache_claim: Some("caches".into()),
            step_helper_image: step_helper.then(|| MOCK_IMAGE.to_owned()),
            ..KubeConfig::default()
        })
        .await
        .expect("kube backend"),
    );
    let mock = dir.path().join("mock-resource");
    write_mock_resource(&mock).expect("mock resource");
    image_files(&sim, &mock);
    let registry: Arc<dyn ArtifactRegistry> = Arc::new(MemoryRegistry::new());
    let rt = Runtime {
        pods: backend.clone(),
        exec: backend,
        volumes: Some(volumes),
        registry,
    };
    let images = ImageResolver::new().with_mock_image(MOCK_IMAGE);
    let mut s = RuntimeSubject::new(rt, MOCK_TYPE, images)
        .with_guard(sim)
        .with_guard(dir);
    if let Some(store) = fs_store {
        s = s.with_tamper(move |h| flip_a_byte_under(&store.volume_data_path(h), ""));
    }
    Some(s)
}

async fn kube_with_claim() -> Option<RuntimeSubject> {
    subject(true).await
}

async fn kube_streamed() -> Option<RuntimeSubject> {
    subject(false).await
}

mod claim {
    use super::*;
    jetbridge_conformance::runtime_suite!(kube_with_claim);
    jetbridge_conformance::lifecycle_suite!(kube_with_claim);
}

mod streamed {
    use super::*;
    jetbridge_conformance::runtime_suite!(kube_streamed);
    jetbridge_conformance::lifecycle_suite!(kube_streamed);
}

/// Streamed artifacts on an API server that offers only `v4.channel.k8s.io` exec
/// (1.29 at its defaults, or a v4-only proxy), where stdin cannot end on its own.
async fn kube_streamed_v4() -> Option<RuntimeSubject> {
    subject_on(false, ExecProtocols::V4Only, false).await
}

mod streamed_v4 {
    use super::*;
    jetbridge_conformance::runtime_suite!(kube_streamed_v4);
}

/// Artifacts in a bucket (the object store over a local directory): streamed through
/// the helper container.
async fn kube_with_object_store() -> Option<RuntimeSubject> {
    let mut s = subject(false).await?;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().display());
    s.runtime.volumes = Some(Arc::new(
        jetbridge_object_store::ObjectStoreVolumes::from_url(&url, Default::default())
            .expect("store"),
    ));
    let volumes = dir.path().join("volumes");
    Some(
        s.with_tamper(move |h| flip_a_byte_under(&volumes.join(h.as_str()), "data-"))
            .with_guard(dir),
    )
}

mod object_store {
    use super::*;
    jetbridge_conformance::runtime_suite!(kube_with_object_store);
}

/// A task whose `image_resource` is the built-in `mock` runs in the mock image (the
/// jetbridge image) and so can run that image's own program, which no other image here
/// holds: the binary at `/usr/local/bin/jetbridge`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_in_the_mock_image_runs_that_images_program() {
    use jetbridge_conformance::runtime::RecordedEvents;
    use jetbridge_core::plan::{Vars, parse_pipeline};
    use jetbridge_core::services::{BuildRequest, BuildRunner, BuildStatus, StepConfig};
    let s = kube_streamed().await.expect("subject");
    let yaml = "jobs:\n- name: main\n  plan:\n  - task: smoke\n    config:\n      platform: linux\n      image_resource: {type: mock, source: {mirror_self: true}}\n      run: {path: /usr/local/bin/jetbridge, args: [--version]}\n";
    let pipeline = parse_pipeline(yaml, "mock-image.yml", &Vars::new()).expect("pipeline");
    let events = Arc::new(RecordedEvents::default());
    let runner = BuildRunner::new(
        s.runtime.clone(),
        StepConfig::default(),
        s.images.clone(),
        "mock-image-worker",
        events.clone(),
    );
    let o = runner
        .run(BuildRequest::new(
            Arc::new(pipeline),
            "main".to_owned(),
            1,
            "mock-image-1".to_owned(),
        ))
        .await
        .expect("the build runs");
    assert_eq!(o.status, BuildStatus::Succeeded, "{:?}", o.failure);
    let printed = events.output_of("task: smoke");
    assert!(
        printed.contains(&format!("jetbridge {}", env!("CARGO_PKG_VERSION"))),
        "{printed}"
    );
}

/// The suites again with the step-pod helper as every step pod's PID 1 and the runner of
/// every command: on the claim, streamed, and streamed on a v4-only server (where the
/// helper, not `sh` and `head`, bounds stdin).
mod step_helper {
    use super::*;

    async fn claim() -> Option<RuntimeSubject> {
        subject_on(true, ExecProtocols::default(), true).await
    }

    async fn streamed() -> Option<RuntimeSubject> {
        subject_on(false, ExecProtocols::default(), true).await
    }

    async fn streamed_v4() -> Option<RuntimeSubject> {
        subject_on(false, ExecProtocols::V4Only, true).await
    }

    mod on_claim {
        use super::*;
        jetbridge_conformance::runtime_suite!(claim);
        jetbridge_conformance::lifecycle_suite!(claim);
    }

    mod streamed {
        use super::*;
        jetbridge_conformance::runtime_suite!(streamed);
    }

    mod streamed_v4 {
        use super::*;
        jetbridge_conformance::runtime_suite!(streamed_v4);
    }
}
