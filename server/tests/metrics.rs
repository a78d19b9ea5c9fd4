//! The counting store counts what passes through it and what it refuses.

use std::sync::Arc;

use jetbridge_core::names::VolumeHandle;
use jetbridge_core::ports::{VolumeStore, bytes_stream, collect_stream};
use jetbridge_server::metrics::{CountingVolumes, Metrics};

fn tar_of(path: &str, text: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(text.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, path, text.as_bytes()).unwrap();
    b.into_inner().unwrap()
}

#[tokio::test]
async fn bytes_in_and_out_and_refused_reads_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(jetbridge_fs::FsVolumeStore::new(dir.path()).unwrap());
    let metrics = Arc::new(Metrics::new("t"));
    let store = CountingVolumes::new(fs.clone(), metrics.clone());
    let h = VolumeHandle::random();
    store.create(&h).await.unwrap();
    let tar = tar_of("a.txt", "hello artifact\n");
    store
        .write_tar(&h, bytes_stream(tar.clone()))
        .await
        .unwrap();
    store.seal(&h).await.unwrap();
    let out = collect_stream(store.read_tar(&h).await.unwrap())
        .await
        .unwrap();
    let text = metrics.encode();
    let line = |dir: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "jetbridge_artifact_bytes_total{{direction=\"{dir}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {dir} line: {text}"))
    };
    assert_eq!(line("in"), tar.len() as u64);
    assert_eq!(line("out"), out.len() as u64);

    // A sealed volume changed on disk: the read is refused and counted.
    std::fs::write(fs.volume_data_path(&h).join("a.txt"), "tampered!!!!!!\n").unwrap();
    let refused = match store.read_tar(&h).await {
        Err(e) => e,
        Ok(s) => collect_stream(s)
            .await
            .expect_err("a tampered volume is refused"),
    };
    assert_eq!(
        refused.kind(),
        jetbridge_core::ErrorKind::Corrupt,
        "{refused}"
    );
    assert!(
        metrics
            .encode()
            .contains("jetbridge_artifact_verification_failures_total 1"),
        "{}",
        metrics.encode()
    );
}
