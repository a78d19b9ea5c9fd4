//! Corruption and faults: damaged objects, uploads cut off, server errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use jetbridge_conformance::volumes::{Tree, sample_tree};
use jetbridge_core::ErrorKind;
use jetbridge_core::names::VolumeHandle;
use jetbridge_core::ports::{ByteStream, VolumeState, VolumeStore, collect_stream};
use jetbridge_gcs_sim::SimControls;
use jetbridge_gcs_sim::{Fault, FaultAction, SimConfig, Simulator};
use jetbridge_object_store::{Compression, ObjectStoreOptions, ObjectStoreVolumes, RetryPolicy};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn local(dir: &tempfile::TempDir, o: ObjectStoreOptions) -> ObjectStoreVolumes {
    let url = format!("file://{}", dir.path().display());
    ObjectStoreVolumes::from_url(&url, o).unwrap()
}

fn stream_of(data: Vec<u8>, chunk: usize) -> ByteStream {
    let data = Bytes::from(data);
    let chunks: Vec<jetbridge_core::Result<Bytes>> = (0..data.len())
        .step_by(chunk)
        .map(|i| Ok(data.slice(i..(i + chunk).min(data.len()))))
        .collect();
    Box::pin(futures::stream::iter(chunks))
}

/// Names of the objects stored for a volume.
async fn objects(store: &ObjectStoreVolumes, h: &VolumeHandle) -> Vec<String> {
    let mut v: Vec<String> = store
        .object_store()
        .list(Some(&store.volume_prefix(h)))
        .map_ok(|m| m.location.filename().unwrap_or_default().to_owned())
        .try_collect()
        .await
        .unwrap();
    v.sort();
    v
}

async fn data_object(store: &ObjectStoreVolumes, h: &VolumeHandle) -> Path {
    let names = objects(store, h).await;
    let name = names
        .iter()
        .find(|n| n.starts_with("data-"))
        .unwrap_or_else(|| panic!("no data object in {names:?}"));
    store.volume_prefix(h).join(name.as_str())
}

async fn sealed(store: &ObjectStoreVolumes, tree: &Tree) -> VolumeHandle {
    let h = VolumeHandle::random();
    store.create(&h).await.unwrap();
    store
        .write_tar(&h, stream_of(tree.to_tar().unwrap(), 10_000))
        .await
        .unwrap();
    store.seal(&h).await.unwrap();
    h
}

fn corruption_tree() -> Tree {
    sample_tree()
        .dir("data", 0o755)
        .file("data/blob.bin", 0o644, pseudo_random(300_000, 3))
}

/// One flipped byte anywhere in the stored object makes `read_tar` fail with
/// `Corrupt` before it hands out anything; the untouched object reads fine.
async fn flipped_byte_is_corrupt(compression: Compression) {
    let dir = tempfile::tempdir().unwrap();
    let store = local(
        &dir,
        ObjectStoreOptions::default().with_compression(compression),
    );
    let tree = corruption_tree();
    let h = sealed(&store, &tree).await;
    let back = collect_stream(store.read_tar(&h).await.unwrap())
        .await
        .unwrap();
    assert_eq!(Tree::from_tar(&back).unwrap().diff(&tree), None);

    let path = data_object(&store, &h).await;
    let raw = store.object_store();
    let original = raw.get(&path).await.unwrap().bytes().await.unwrap();
    let len = original.len();
    // Header, file data, padding and the end-of-archive area: each must be noticed.
    for at in [0, 100, len / 3, len / 2, len - 700, len - 1] {
        let mut bad = original.to_vec();
        bad[at] ^= 0x01;
        raw.put(&path, PutPayload::from(bad)).await.unwrap();
        match store.read_tar(&h).await {
            Err(e) => assert_eq!(e.kind(), ErrorKind::Corrupt, "byte {at}: {e}"),
            Ok(_) => panic!("byte {at} of {len} flipped and read_tar handed out a stream"),
        }
    }
    raw.put(&path, PutPayload::from(original)).await.unwrap();
    assert!(store.read_tar(&h).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_zstd_object_is_corrupt() {
    flipped_byte_is_corrupt(Compression::DEFAULT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_plain_object_is_corrupt() {
    flipped_byte_is_corrupt(Compression::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_truncated_data_object_is_corrupt() {
    let store = ObjectStoreVolumes::from_url("memory://", ObjectStoreOptions::default()).unwrap();
    let h = sealed(&store, &corruption_tree()).await;
    let path = data_object(&store, &h).await;
    let raw = store.object_store();
    let original = raw.get(&path).await.unwrap().bytes().await.unwrap();
    raw.put(
        &path,
        PutPayload::from(original.slice(..original.len() / 2)),
    )
    .await
    .unwrap();
    assert_eq!(
        store.read_tar(&h).await.err().map(|e| e.kind()),
        Some(ErrorKind::Corrupt)
    );
    raw.delete(&path).await.unwrap();
    assert_eq!(
        store.read_tar(&h).await.err().map(|e| e.kind()),
        Some(ErrorKind::Corrupt)
    );
}

/// After a failed or abandoned write: stat says Creating, read says NotFound, and
/// no data object (complete or staged) exists.
async fn nothing_visible(
    store: &ObjectStoreVolumes,
    h: &VolumeHandle,
    dir: Option<&std::path::Path>,
) {
    assert_eq!(store.stat(h).await.unwrap().state, VolumeState::Creating);
    assert_eq!(
        store.read_tar(h).await.err().map(|e| e.kind()),
        Some(ErrorKind::NotFound)
    );
    let listed = store.list().await.unwrap();
    let mine = listed.iter().find(|i| &i.handle == h).unwrap();
    assert_eq!(mine.state, VolumeState::Creating);
    assert_eq!(objects(store, h).await, ["creating.json"]);
    if let Some(dir) = dir {
        // The local store stages multipart uploads as `<name>#<n>` files.
        let staged: Vec<_> = walk(dir)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains('#'))
            .collect();
        assert!(staged.is_empty(), "staged upload files left: {staged:?}");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn big_tar() -> Vec<u8> {
    Tree::new()
        .file("a.bin", 0o644, pseudo_random(3 << 20, 1))
        .file("b.bin", 0o644, pseudo_random(3 << 20, 2))
        .to_tar()
        .unwrap()
}

fn small_parts() -> ObjectStoreOptions {
    // Many small parts, so parts are uploaded before the input fails.
    ObjectStoreOptions::default()
        .with_compression(Compression::None)
        .with_parts(256 << 10, 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_failing_midway_leaves_no_data_object() {
    let dir = tempfile::tempdir().unwrap();
    let store = local(&dir, small_parts());
    let h = VolumeHandle::random();
    store.create(&h).await.unwrap();
    let data = big_tar();
    let half = data.len() / 2;
    let head = stream_of(data[..half].to_vec(), 64 << 10);
    let fail = futures::stream::once(async {
        Err(jetbridge_core::Error::transient("the connection dropped"))
    });
    let err = store
        .write_tar(&h, Box::pin(head.chain(fail)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    nothing_visible(&store, &h, Some(dir.path())).await;
    // The volume can still be written and sealed afterwards.
    store
        .write_tar(&h, stream_of(data.clone(), 1 << 20))
        .await
        .unwrap();
    let info = store.seal(&h).await.unwrap();
    assert_eq!(info.size, 6 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_write_leaves_no_data_object() {
    for url_kind in ["file", "memory"] {
        let dir = tempfile::tempdir().unwrap();
        let store = if url_kind == "file" {
            local(&dir, small_parts())
        } else {
            ObjectStoreVolumes::from_url("memory://", small_parts()).unwrap()
        };
        let h = VolumeHandle::random();
        store.create(&h).await.unwrap();
        let data = big_tar();
        let half = data.len() / 2;
        // Half the archive, then an input that never ends: the caller gives up.
        let s = stream_of(data[..half].to_vec(), 64 << 10).chain(futures::stream::pending());
        let r = tokio::time::timeout(Duration::from_millis(500), store.write_tar(&h, Box::pin(s)))
            .await;
        assert!(r.is_err(), "the write finished without its input");
        // The abort runs in the background once the future is dropped.
        tokio::time::sleep(Duration::from_millis(300)).await;
        nothing_visible(&store, &h, (url_kind == "file").then_some(dir.path())).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_write_is_a_conflict() {
    let store = ObjectStoreVolumes::from_url("memory://", ObjectStoreOptions::default()).unwrap();
    let h = VolumeHandle::random();
    store.create(&h).await.unwrap();
    let tar = sample_tree().to_tar().unwrap();
    store
        .write_tar(&h, stream_of(tar.clone(), 4096))
        .await
        .unwrap();
    let e = store.write_tar(&h, stream_of(tar, 4096)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    let info = store.seal(&h).await.unwrap();
    assert_eq!(info.digest, Some(sample_tree().digest()));
}

/// A tar with replaced paths and hard links reads back as one entry per path, with
/// the digest the directory store computes for the same archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_paths_and_hard_links_read_back_canonical() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(3);
    b.append_data(&mut h.clone(), "d/f", &b"old"[..]).unwrap();
    h.set_size(5);
    b.append_data(&mut h.clone(), "d/f", &b"newer"[..]).unwrap();
    let mut l = tar::Header::new_gnu();
    l.set_entry_type(tar::EntryType::Link);
    l.set_mode(0o644);
    l.set_size(0);
    b.append_link(&mut l, "g", "d/f").unwrap();
    let tar = b.into_inner().unwrap();
    let want = Tree::new()
        .dir("d", 0o755)
        .file("d/f", 0o644, "newer")
        .file("g", 0o644, "newer");
    for compression in [Compression::DEFAULT, Compression::None] {
        let store = ObjectStoreVolumes::from_url(
            "memory://",
            ObjectStoreOptions::default().with_compression(compression),
        )
        .unwrap();
        let v = VolumeHandle::random();
        store.create(&v).await.unwrap();
        store
            .write_tar(&v, stream_of(tar.clone(), 100))
            .await
            .unwrap();
        let info = store.seal(&v).await.unwrap();
        assert_eq!(info.digest, Some(want.digest()));
        let back = collect_stream(store.read_tar(&v).await.unwrap())
            .await
            .unwrap();
        assert_eq!(Tree::from_tar(&back).unwrap().diff(&want), None);
    }
}

// ---------------------------------------------------------------------------------
// Server errors, through the real HTTP client against a tiny local server.

/// An HTTP server on 127.0.0.1 that answers each request with the next status of
/// `script` (then `fallback`), with an empty body, and counts requests.
struct FaultServer {
    url: String,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fault_server(script: Vec<u16>, fallback: u16) -> FaultServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let script = Arc::new(script);
    let task = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let counter = counter.clone();
            let script = script.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 8192];
                loop {
                    // One request: headers, then a Content-Length body.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let body_len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + body_len {
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    buf.drain(..head_end + body_len);
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    let status = script.get(n).copied().unwrap_or(fallback);
                    let resp = format!(
                        "HTTP/1.1 {status} Injected\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n"
                    );
                    if sock.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    FaultServer {
        url,
        requests,
        task,
    }
}

fn s3_against(server: &FaultServer, retries: usize) -> ObjectStoreVolumes {
    let opts = ObjectStoreOptions::default()
        .with_endpoint(server.url.clone())
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_config("aws_access_key_id", "testing")
        .with_config("aws_secret_access_key", "testing")
        .with_retry(RetryPolicy {
            max_retries: retries,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            timeout: Duration::from_secs(20),
        });
    ObjectStoreVolumes::from_url("s3://bucket/prefix", opts).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_then_transient() {
    for status in [500, 503] {
        let server = fault_server(Vec::new(), status).await;
        let store = s3_against(&server, 3);
        let e = store.stat(&VolumeHandle::random()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Transient, "{status}: {e}");
        assert!(e.is_retryable());
        // One request and three retries, then the error.
        assert_eq!(server.requests.load(Ordering::SeqCst), 4, "{status}");
        let e = store.create(&VolumeHandle::random()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Transient, "{status}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_server_errors_are_absorbed_by_retries() {
    // Two 503s, then the server answers 404 to everything: the retried request
    // succeeds (as "missing"), so the volume is simply not found.
    let server = fault_server(vec![503, 503], 404).await;
    let store = s3_against(&server, 3);
    let e = store.stat(&VolumeHandle::random()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // manifest: 503, 503, 404; marker: 404.
    assert_eq!(server.requests.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_is_permission_denied_and_not_retried() {
    let server = fault_server(Vec::new(), 403).await;
    let store = s3_against(&server, 3);
    let e = store.stat(&VolumeHandle::random()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(e.message().contains("permission denied"), "{e}");
    assert!(!e.is_retryable());
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------
// GCS, through object_store's GCS client against the in-process Cloud Storage
// simulator, with injected faults.

const GCS_BUCKET: &str = "jb-faults";

async fn gcs_sim() -> Simulator {
    Simulator::start(SimConfig::default().with_bucket(GCS_BUCKET))
        .await
        .unwrap()
}

fn gcs_against(sim: &Simulator, retries: usize, o: ObjectStoreOptions) -> ObjectStoreVolumes {
    let opts = o
        .with_endpoint(sim.url())
        .with_allow_http(true)
        .with_anonymous(true)
        .with_retry(RetryPolicy {
            max_retries: retries,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            timeout: Duration::from_secs(20),
        });
    ObjectStoreVolumes::from_url(&format!("gs://{GCS_BUCKET}/prefix"), opts).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_server_errors_are_retried_then_transient() {
    for status in [500, 503] {
        let sim = gcs_sim().await;
        let store = gcs_against(&sim, 3, ObjectStoreOptions::default());
        sim.inject(Fault::any(usize::MAX, FaultAction::Status(status)));
        let e = store.stat(&VolumeHandle::random()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Transient, "{status}: {e}");
        assert!(e.is_retryable());
        // One request and three retries, then the error.
        assert_eq!(sim.requests().len(), 4, "{status}");
        let e = store.create(&VolumeHandle::random()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Transient, "{status}: {e}");
        // Its first request (the existence check) was tried four times too.
        assert_eq!(sim.requests().len(), 8, "{status}");
        // Once the server recovers, the same store works: nothing was left broken.
        sim.clear_faults();
        let h = VolumeHandle::random();
        store.create(&h).await.unwrap();
        assert_eq!(store.stat(&h).await.unwrap().state, VolumeState::Creating);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_passing_server_errors_are_absorbed_by_retries() {
    let sim = gcs_sim().await;
    let store = gcs_against(&sim, 3, ObjectStoreOptions::default());
    let h = VolumeHandle::random();
    // Two 503s on the conditional put of the marker, one on a read: retried away.
    sim.inject(Fault::on(
        "PUT",
        "creating.json",
        2,
        FaultAction::Status(503),
    ));
    sim.inject(Fault::on(
        "GET",
        "creating.json",
        1,
        FaultAction::Status(503),
    ));
    store.create(&h).await.unwrap();
    let puts = sim
        .requests()
        .iter()
        .filter(|r| {
            // Paths are recorded as sent (object_store encodes `.`); names decoded.
            r.method == "PUT"
                && r.object
                    .as_deref()
                    .is_some_and(|o| o.ends_with("creating.json"))
        })
        .count();
    assert_eq!(puts, 3, "two 503s, then the put");
    let gets = count(&sim, "GET", |r| {
        r.object
            .as_deref()
            .is_some_and(|o| o.ends_with("creating.json"))
    });
    assert_eq!(gets, 2, "one 503, then the existence check");
    assert_eq!(store.stat(&h).await.unwrap().state, VolumeState::Creating);
    // A passing 503 on a part upload does not fail the write.
    sim.inject(Fault::on("PUT", "data-", 1, FaultAction::Status(503)).with_query("partNumber=1"));
    store
        .write_tar(&h, stream_of(sample_tree().to_tar().unwrap(), 4096))
        .await
        .unwrap();
    let info = store.seal(&h).await.unwrap();
    assert_eq!(info.digest, Some(sample_tree().digest()));
    assert!(sim.in_progress_uploads().is_empty());
    let part1 = count(&sim, "PUT", |r| r.query.contains("partNumber=1"));
    assert_eq!(part1, 2, "one 503, then the part");
}

/// Requests of `method` that `pick` selects.
fn count(
    sim: &Simulator,
    method: &str,
    pick: impl Fn(&jetbridge_gcs_sim::RequestRecord) -> bool,
) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.method == method && pick(r))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_upload_cut_off_halfway_leaves_no_object() {
    let sim = gcs_sim().await;
    // Parts of 5 MiB (the GCS minimum): the 6 MiB archive is two parts, and the
    // second never arrives, however often it is retried.
    let opts = ObjectStoreOptions::default()
        .with_compression(Compression::None)
        .with_parts(5 << 20, 2);
    let store = gcs_against(&sim, 2, opts);
    let h = VolumeHandle::random();
    store.create(&h).await.unwrap();
    sim.inject(
        Fault::on("PUT", "data-", usize::MAX, FaultAction::DropConnection)
            .with_query("partNumber=2"),
    );
    let data = big_tar();
    let e = store
        .write_tar(&h, stream_of(data.clone(), 64 << 10))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    sim.clear_faults();
    let cut = sim
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.query.contains("partNumber=2"))
        .count();
    assert_eq!(cut, 3, "the cut part was tried once and retried twice");
    // The first part arrived, yet nothing is visible: no object, no listed volume
    // data, no upload left behind.
    nothing_visible(&store, &h, None).await;
    assert!(
        sim.objects(GCS_BUCKET)
            .iter()
            .all(|o| !o.name.contains("data-")),
        "{:?}",
        sim.objects(GCS_BUCKET)
            .iter()
            .map(|o| &o.name)
            .collect::<Vec<_>>()
    );
    assert_eq!(sim.in_progress_uploads(), []);
    // The volume can still be written and sealed afterwards.
    store.write_tar(&h, stream_of(data, 1 << 20)).await.unwrap();
    let info = store.seal(&h).await.unwrap();
    assert_eq!(info.size, 6 << 20);
    let data_objects: Vec<_> = sim
        .objects(GCS_BUCKET)
        .into_iter()
        .filter(|o| o.name.contains("data-"))
        .collect();
    assert_eq!(data_objects.len(), 1);
    assert_eq!(data_objects[0].components, Some(2));
}

/// The answers to a write's requests are lost after the server acted on them; the
/// client retries, and the store must recognise its own earlier attempt instead of
/// calling its own volume a rival's (`AlreadyExists`, `Conflict`) or throwing the data
/// away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_lost_answers_are_recognised_as_our_own_work() {
    let sim = gcs_sim().await;
    let store = gcs_against(&sim, 3, ObjectStoreOptions::default());
    let h = VolumeHandle::random();
    for (method, object, query) in [
        ("PUT", "creating.json", ""),
        ("POST", "data-", "uploadId"),
        ("PUT", "written.json", ""),
        ("PUT", "manifest.json", ""),
    ] {
        sim.inject(Fault::on(method, object, 1, FaultAction::DropAfterCommit).with_query(query));
    }
    store.create(&h).await.unwrap();
    store
        .write_tar(&h, stream_of(sample_tree().to_tar().unwrap(), 4096))
        .await
        .unwrap();
    let info = store.seal(&h).await.unwrap();
    assert_eq!(info.digest, Some(sample_tree().digest()));
    let back = collect_stream(store.read_tar(&h).await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        Tree::from_tar(&back).unwrap().digest(),
        sample_tree().digest()
    );
    // Every fault fired: each of those requests was sent twice.
    for (method, object, query) in [
        ("PUT", "creating.json", ""),
        ("POST", "data-", "uploadId"),
        ("PUT", "written.json", ""),
        ("PUT", "manifest.json", ""),
    ] {
        let sent = count(&sim, method, |r| {
            r.object.as_deref().is_some_and(|o| o.contains(object))
                && r.query.starts_with(query)
                && !(method == "POST" && r.query.starts_with("uploads"))
        });
        assert_eq!(sent, 2, "{method} {object}?{query}");
    }
    // A real rival is still refused.
    assert_eq!(
        store.create(&h).await.unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
}
