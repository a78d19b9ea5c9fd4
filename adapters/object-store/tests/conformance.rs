//! The shared VolumeStore conformance suite against `ObjectStoreVolumes`: in memory and
//! over a local directory always; against S3 and GCS when `.ci/emulators.sh` has
//! started moto and the Cloud Storage simulator (`JETBRIDGE_S3_ENDPOINT`,
//! `JETBRIDGE_GCS_ENDPOINT`), or against a real GCS bucket (`JETBRIDGE_GCS_URL`).

use std::sync::Arc;

use futures::TryStreamExt;
use jetbridge_conformance::Subject;
use jetbridge_core::ports::VolumeStore;
use jetbridge_object_store::{Compression, ObjectStoreOptions, ObjectStoreVolumes};
use object_store::{ObjectStore, ObjectStoreExt};

fn subject(store: ObjectStoreVolumes) -> Subject<dyn VolumeStore> {
    Subject::new(Arc::new(store) as Arc<dyn VolumeStore>)
}

async fn make_memory() -> Option<Subject<dyn VolumeStore>> {
    let store = ObjectStoreVolumes::from_url("memory://", ObjectStoreOptions::default()).ok()?;
    Some(subject(store))
}

async fn make_local() -> Option<Subject<dyn VolumeStore>> {
    let dir = tempfile::tempdir().ok()?;
    let url = format!("file://{}", dir.path().display());
    let store = ObjectStoreVolumes::from_url(&url, ObjectStoreOptions::default()).ok()?;
    Some(subject(store).with_guard(dir))
}

async fn make_local_uncompressed() -> Option<Subject<dyn VolumeStore>> {
    let dir = tempfile::tempdir().ok()?;
    let url = format!("file://{}", dir.path().display());
    let opts = ObjectStoreOptions::default().with_compression(Compression::None);
    let store = ObjectStoreVolumes::from_url(&url, opts).ok()?;
    Some(subject(store).with_guard(dir))
}

/// Deletes everything under a store's prefix when dropped (each case also deletes its
/// own volumes; this catches what a failed case left).
struct PrefixCleanup {
    store: Arc<dyn ObjectStore>,
    prefix: object_store::path::Path,
}

impl Drop for PrefixCleanup {
    fn drop(&mut self) {
        let store = self.store.clone();
        let prefix = self.prefix.clone();
        // Drop cannot await; a small runtime on its own thread does the deletes.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(paths) = store
                    .list(Some(&prefix))
                    .map_ok(|m| m.location)
                    .try_collect::<Vec<_>>()
                    .await
                else {
                    return;
                };
                for p in paths {
                    let _ = store.delete(&p).await;
                }
            });
        })
        .join();
    }
}

/// A store on a live bucket under a fresh random prefix, cleaned up afterwards.
fn live(url_base: &str, opts: ObjectStoreOptions) -> Option<Subject<dyn VolumeStore>> {
    let prefix = format!("conformance-{}", uuid::Uuid::new_v4().simple());
    let url = format!("{url_base}/{prefix}");
    let store = match ObjectStoreVolumes::from_url(&url, opts) {
        Ok(s) => s,
        Err(e) => panic!("cannot open {url}: {e}"),
    };
    let cleanup = PrefixCleanup {
        store: store.object_store(),
        prefix: object_store::path::Path::from(prefix),
    };
    Some(subject(store).with_guard(cleanup))
}

/// S3 through `moto_server` (or any S3 endpoint) named by `JETBRIDGE_S3_ENDPOINT`.
async fn make_s3() -> Option<Subject<dyn VolumeStore>> {
    let Ok(endpoint) = std::env::var("JETBRIDGE_S3_ENDPOINT") else {
        jetbridge_conformance::live::unavailable("S3", "JETBRIDGE_S3_ENDPOINT is not set");
        return None;
    };
    let bucket = std::env::var("JETBRIDGE_S3_BUCKET").unwrap_or_else(|_| "jetbridge-test".into());
    let opts = ObjectStoreOptions::default()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        // Emulators take any key; real credentials come from the environment.
        .with_config("aws_access_key_id", "testing")
        .with_config("aws_secret_access_key", "testing")
        .with_parts(5 << 20, 2);
    live(&format!("s3://{bucket}"), opts)
}

/// GCS: a real bucket named by `JETBRIDGE_GCS_URL` (`gs://bucket/prefix`, credentials
/// from the usual chain), or a server that speaks the GCS XML API at
/// `JETBRIDGE_GCS_ENDPOINT` (bucket `JETBRIDGE_GCS_BUCKET`), used anonymously: the
/// `gcs-sim` that `.ci/emulators.sh` starts (gcp-storage-emulator does not speak it: it
/// answers 501 to HEAD, DELETE, XML listings and multipart uploads).
async fn make_gcs() -> Option<Subject<dyn VolumeStore>> {
    if let Ok(url) = std::env::var("JETBRIDGE_GCS_URL") {
        return live(url.trim_end_matches('/'), ObjectStoreOptions::default());
    }
    let Ok(endpoint) = std::env::var("JETBRIDGE_GCS_ENDPOINT") else {
        jetbridge_conformance::live::unavailable(
            "GCS",
            "neither JETBRIDGE_GCS_URL nor JETBRIDGE_GCS_ENDPOINT is set",
        );
        return None;
    };
    let bucket = std::env::var("JETBRIDGE_GCS_BUCKET").unwrap_or_else(|_| "jetbridge-test".into());
    let opts = ObjectStoreOptions::default()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_anonymous(true)
        .with_parts(5 << 20, 2);
    live(&format!("gs://{bucket}"), opts)
}

mod memory {
    use super::*;
    jetbridge_conformance::volume_store_suite!(make_memory);
}

mod local {
    use super::*;
    jetbridge_conformance::volume_store_suite!(make_local);
}

mod local_uncompressed {
    use super::*;
    jetbridge_conformance::volume_store_suite!(make_local_uncompressed);
}

mod s3 {
    use super::*;
    jetbridge_conformance::volume_store_suite!(make_s3);
}

mod gcs {
    use super::*;
    jetbridge_conformance::volume_store_suite!(make_gcs);
}
