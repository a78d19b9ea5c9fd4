//! The runtime suite on the embedded default: local processes, with artifacts in the
//! filesystem store (mounted in place: no copy for outputs, private copies for inputs)
//! and in the memory store (not mountable: streamed as tar through exec); and in
//! object stores: a local directory, S3 (an emulator) and GCS (the in-process
//! simulator).

use std::sync::Arc;

use jetbridge_conformance::RuntimeSubject;
use jetbridge_conformance::runtime::{flip_a_byte_under, write_mock_resource};
use jetbridge_core::images::ImageResolver;
use jetbridge_core::ports::{ArtifactRegistry, Runtime, VolumeStore};
use jetbridge_fs::FsVolumeStore;
use jetbridge_local::{LocalBackend, LocalConfig};
use jetbridge_memory::{MemoryRegistry, MemoryVolumeStore};

fn subject(store: impl FnOnce(&std::path::Path) -> Arc<dyn VolumeStore>) -> Option<RuntimeSubject> {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Arc::new(
        LocalBackend::new(LocalConfig::new(dir.path().join("local"))).expect("local backend"),
    );
    let mock = dir.path().join("mock-resource");
    write_mock_resource(&mock).expect("mock resource scripts");
    let registry: Arc<dyn ArtifactRegistry> = Arc::new(MemoryRegistry::new());
    let rt = Runtime {
        pods: backend.clone(),
        exec: backend,
        volumes: Some(store(dir.path())),
        registry,
    };
    let mock_type = format!(
        "{{name: jb-mock, type: local, source: {{path: {}}}}}",
        serde_json::to_string(&mock.to_string_lossy()).expect("json")
    );
    // The built-in `mock`, as `run` wires it: links named check, in and out to the
    // binary, which answers the resource protocol under those names.
    let builtin = dir.path().join("builtin-mock");
    std::fs::create_dir_all(&builtin).expect("mkdir");
    for name in ["check", "in", "out"] {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_jetbridge"), builtin.join(name))
            .expect("link");
    }
    let images = ImageResolver::new().with_local_type("mock", builtin.to_string_lossy());
    Some(RuntimeSubject::new(rt, mock_type, images).with_guard(dir))
}

async fn local_with_fs_store() -> Option<RuntimeSubject> {
    let mut kept = None;
    let s = subject(|d| {
        let store = FsVolumeStore::new(d.join("volumes")).expect("fs store");
        kept = Some(store.clone());
        Arc::new(store)
    })?;
    let store = kept?;
    Some(s.with_tamper(move |h| flip_a_byte_under(&store.volume_data_path(h), "")))
}

async fn local_with_streamed_store() -> Option<RuntimeSubject> {
    subject(|_| Arc::new(MemoryVolumeStore::new()))
}

mod fs_store {
    use super::*;
    jetbridge_conformance::runtime_suite!(local_with_fs_store);
    jetbridge_conformance::lifecycle_suite!(local_with_fs_store);
}

mod streamed_store {
    use super::*;
    jetbridge_conformance::runtime_suite!(local_with_streamed_store);
    jetbridge_conformance::lifecycle_suite!(local_with_streamed_store);
}

async fn local_with_object_store() -> Option<RuntimeSubject> {
    let mut bucket = None;
    let s = subject(|d| {
        std::fs::create_dir_all(d.join("bucket")).expect("bucket dir");
        bucket = Some(d.join("bucket"));
        let url = format!("file://{}", d.join("bucket").display());
        Arc::new(
            jetbridge_object_store::ObjectStoreVolumes::from_url(&url, Default::default())
                .expect("object store"),
        )
    })?;
    let bucket = bucket?;
    // A volume's objects live under `volumes/<handle>/` of the bucket.
    Some(
        s.with_tamper(move |h| {
            flip_a_byte_under(&bucket.join("volumes").join(h.as_str()), "data-")
        }),
    )
}

/// S3 through the emulator `.ci/emulators.sh` starts (`JETBRIDGE_S3_ENDPOINT`).
async fn local_with_s3() -> Option<RuntimeSubject> {
    let Ok(endpoint) = std::env::var("JETBRIDGE_S3_ENDPOINT") else {
        jetbridge_conformance::live::unavailable("S3", "JETBRIDGE_S3_ENDPOINT is not set");
        return None;
    };
    let bucket = std::env::var("JETBRIDGE_S3_BUCKET").unwrap_or_else(|_| "jetbridge-test".into());
    let prefix = jetbridge_core::names::StepHandle::random()
        .short()
        .to_owned();
    subject(move |_| {
        let opts = jetbridge_object_store::ObjectStoreOptions::default()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_config("aws_access_key_id", "testing")
            .with_config("aws_secret_access_key", "testing");
        Arc::new(
            jetbridge_object_store::ObjectStoreVolumes::from_url(
                &format!("s3://{bucket}/runtime-{prefix}"),
                opts,
            )
            .expect("s3 store"),
        )
    })
}

/// GCS through object_store's XML API client against the in-process Cloud Storage
/// simulator, used anonymously as an emulator is.
async fn local_with_gcs() -> Option<RuntimeSubject> {
    let sim = jetbridge_gcs_sim::Simulator::start(
        jetbridge_gcs_sim::SimConfig::default().with_bucket("jb-runtime"),
    )
    .await
    .expect("gcs simulator");
    let endpoint = sim.url();
    let prefix = jetbridge_core::names::StepHandle::random()
        .short()
        .to_owned();
    subject(move |_| {
        let opts = jetbridge_object_store::ObjectStoreOptions::default()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_anonymous(true);
        Arc::new(
            jetbridge_object_store::ObjectStoreVolumes::from_url(
                &format!("gs://jb-runtime/runtime-{prefix}"),
                opts,
            )
            .expect("gcs store"),
        )
    })
    .map(|s| s.with_guard(sim))
}

mod object_store_local_dir {
    use super::*;
    jetbridge_conformance::runtime_suite!(local_with_object_store);
}

mod object_store_s3 {
    use super::*;
    jetbridge_conformance::runtime_suite!(local_with_s3);
}

mod object_store_gcs {
    use super::*;
    jetbridge_conformance::runtime_suite!(local_with_gcs);
}
