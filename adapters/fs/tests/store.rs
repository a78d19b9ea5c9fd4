//! Behaviour of `FsVolumeStore`: life cycle, layout, atomic publication, failures,
//! corruption detection, copies.

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Model, chunked, is_empty_dir, make_writable, pseudo_random, sample};
use jetbridge_core::ErrorKind;
use jetbridge_core::names::VolumeHandle;
use jetbridge_core::ports::{
    ByteStream, MountAccess, MountInfo, VolumeState, VolumeStore, collect_stream,
};
use jetbridge_fs::FsVolumeStore;

fn store() -> (tempfile::TempDir, FsVolumeStore) {
    let t = tempfile::tempdir().unwrap();
    let s = FsVolumeStore::new(t.path().join("store")).unwrap();
    (t, s)
}

async fn sealed(s: &FsVolumeStore, m: &Model) -> VolumeHandle {
    let h = VolumeHandle::random();
    s.create(&h).await.unwrap();
    s.write_tar(&h, chunked(&m.to_tar(), 10_000)).await.unwrap();
    s.seal(&h).await.unwrap();
    h
}

async fn read_model(s: &FsVolumeStore, h: &VolumeHandle) -> Model {
    Model::from_tar(&collect_stream(s.read_tar(h).await.unwrap()).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn life_cycle_and_layout() {
    let (_t, s) = store();
    assert!(s.capabilities().mount && s.capabilities().persistent);
    let h = VolumeHandle::random();
    let created = s.create(&h).await.unwrap();
    assert_eq!(created.state, VolumeState::Creating);
    assert!(created.created_at.is_some());
    assert_eq!(s.stat(&h).await.unwrap(), created);
    assert_eq!(
        s.create(&h).await.unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );

    let m = sample();
    s.write_tar(&h, chunked(&m.to_tar(), 777)).await.unwrap();
    assert_eq!(s.stat(&h).await.unwrap().state, VolumeState::Creating);
    assert_eq!(
        s.read_tar(&h).await.err().unwrap().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        s.mount(&h, MountAccess::Read).await.unwrap_err().kind(),
        ErrorKind::Conflict
    );

    let info = s.seal(&h).await.unwrap();
    assert_eq!(info.state, VolumeState::Sealed);
    assert_eq!(info.digest, Some(m.digest()));
    assert_eq!(info.size, m.size());
    assert_eq!(info.created_at, created.created_at);
    assert_eq!(s.stat(&h).await.unwrap(), info);
    assert_eq!(s.seal(&h).await.unwrap(), info);
    assert_eq!(s.verify(&h).await.unwrap(), info);

    // The documented layout.
    let vol = s.root().join("volumes").join(h.as_str());
    assert!(vol.join("MANIFEST.json").is_file());
    assert!(!vol.join("CREATING").exists());
    assert_eq!(s.volume_data_path(&h), vol.join("data"));
    assert_eq!(Model::from_dir(&s.volume_data_path(&h)), m);

    assert_eq!(read_model(&s, &h).await, m);
    assert_eq!(
        s.write_tar(&h, chunked(&sample().to_tar(), 512))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Conflict
    );
    assert_eq!(
        s.mount(&h, MountAccess::Write).await.unwrap_err().kind(),
        ErrorKind::Conflict
    );
    assert_eq!(
        s.mount(&h, MountAccess::Read).await.unwrap(),
        MountInfo::HostPath {
            path: vol.join("data").to_string_lossy().into_owned()
        }
    );

    let other = VolumeHandle::random();
    s.create(&other).await.unwrap();
    let list = s.list().await.unwrap();
    assert_eq!(list.len(), 2);
    assert!(
        list.iter()
            .any(|i| i.handle == h && i.state == VolumeState::Sealed)
    );
    assert!(
        list.iter().any(|i| i.handle == other
            && i.state == VolumeState::Creating
            && i.created_at.is_some())
    );

    s.delete(&h).await.unwrap();
    s.delete(&h).await.unwrap();
    assert_eq!(s.stat(&h).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(
        s.read_tar(&h).await.err().unwrap().kind(),
        ErrorKind::NotFound
    );
    assert!(!vol.exists());
    assert!(is_empty_dir(&s.root().join("trash")));
    s.create(&h).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pvc_mapping_gives_sub_paths() {
    let t = tempfile::tempdir().unwrap();
    let s = FsVolumeStore::new(t.path())
        .unwrap()
        .with_shared_volume("artifacts", "/jetbridge/");
    let h = VolumeHandle::random();
    s.create(&h).await.unwrap();
    assert_eq!(
        s.mount(&h, MountAccess::Write).await.unwrap(),
        MountInfo::SharedVolume {
            volume: "artifacts".into(),
            sub_path: format!("jetbridge/volumes/{h}/data"),
        }
    );
    let bare = FsVolumeStore::new(t.path())
        .unwrap()
        .with_shared_volume("c", "");
    assert_eq!(
        bare.mount(&h, MountAccess::Write).await.unwrap(),
        MountInfo::SharedVolume {
            volume: "c".into(),
            sub_path: format!("volumes/{h}/data"),
        }
    );
    assert_eq!(
        s.mount(&VolumeHandle::random(), MountAccess::Read)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
}

/// A pod fills a volume through its mount; sealing digests what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_write_then_seal() {
    let (_t, s) = store();
    let h = VolumeHandle::random();
    s.create(&h).await.unwrap();
    let MountInfo::HostPath { path } = s.mount(&h, MountAccess::Write).await.unwrap() else {
        panic!("host path expected");
    };
    let p = Path::new(&path);
    fs::create_dir(p.join("out")).unwrap();
    fs::set_permissions(p.join("out"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(p.join("out/a.txt"), "a").unwrap();
    fs::set_permissions(p.join("out/a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    symlink("out/a.txt", p.join("link")).unwrap();
    let info = s.seal(&h).await.unwrap();
    let want = Model::default()
        .dir("out", 0o755)
        .file("out/a.txt", 0o640, "a")
        .link("link", "out/a.txt");
    assert_eq!(info.digest, Some(want.digest()));
    assert_eq!(read_model(&s, &h).await, want);
}

/// Things an artifact cannot hold make `seal` fail with `Invalid`; nothing is sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_rejects_what_artifacts_cannot_hold() {
    let (_t, s) = store();
    type Plant = fn(&Path);
    let cases: [(&str, Plant); 2] = [
        ("fifo", |p| {
            nix::unistd::mkfifo(
                &p.join("pipe"),
                nix::sys::stat::Mode::from_bits_truncate(0o644),
            )
            .unwrap()
        }),
        ("socket", |p| {
            std::os::unix::net::UnixListener::bind(p.join("sock")).unwrap();
        }),
    ];
    for (what, plant) in cases {
        let h = VolumeHandle::random();
        s.create(&h).await.unwrap();
        plant(&s.volume_data_path(&h));
        let e = s.seal(&h).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{what}: {e}");
        assert_eq!(
            s.stat(&h).await.unwrap().state,
            VolumeState::Creating,
            "{what}"
        );
        assert!(
            !s.root()
                .join("volumes")
                .join(h.as_str())
                .join("MANIFEST.json")
                .exists()
        );
    }
}

/// A tree written in place (as a pod writes a mounted output) keeps its symlinks as
/// they are, wherever they point, and loses setuid and setgid on disk when sealed; the
/// digest, `read_tar` and `copy_to` all see the same links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_keeps_links_in_place_and_drops_setuid() {
    let (t, s) = store();
    let h = VolumeHandle::random();
    s.create(&h).await.unwrap();
    let p = s.volume_data_path(&h);
    fs::create_dir(p.join("d")).unwrap();
    fs::set_permissions(p.join("d"), fs::Permissions::from_mode(0o2775)).unwrap();
    fs::write(p.join("d/tool"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(p.join("d/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    symlink("/etc/passwd", p.join("pw")).unwrap();
    symlink("../../x", p.join("d/up")).unwrap();
    symlink("missing/./target/", p.join("dangling")).unwrap();
    symlink("pw", p.join("chain")).unwrap();
    let want = Model::default()
        .dir("d", 0o775)
        .file("d/tool", 0o755, "#!/bin/sh\n")
        .link("pw", "/etc/passwd")
        .link("d/up", "../../x")
        .link("dangling", "missing/./target/")
        .link("chain", "pw");
    let info = s.seal(&h).await.unwrap();
    assert_eq!(info.digest, Some(want.digest()));
    assert_eq!(Model::from_dir(&p), want, "modes on disk follow the digest");
    let data = collect_stream(s.read_tar(&h).await.unwrap()).await.unwrap();
    assert_eq!(Model::from_tar(&data), want);
    let dest = t.path().join("copy");
    s.copy_to(&h, &dest).await.unwrap();
    assert_eq!(Model::from_dir(&dest), want);
    s.verify(&h).await.unwrap();
}

/// Visibility hinges on the manifest file alone: without it, or with one that does not
/// parse or names another volume, the volume is not readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_decides_visibility() {
    let (t, s) = store();
    let h = sealed(&s, &sample()).await;
    let manifest = s
        .root()
        .join("volumes")
        .join(h.as_str())
        .join("MANIFEST.json");
    let good = fs::read(&manifest).unwrap();

    fs::remove_file(&manifest).unwrap();
    assert_eq!(s.stat(&h).await.unwrap().state, VolumeState::Creating);
    assert_eq!(
        s.read_tar(&h).await.err().unwrap().kind(),
        ErrorKind::NotFound
    );

    // A half-copied manifest (as a torn write would leave) is not a seal.
    fs::write(&manifest, &good[..good.len() / 2]).unwrap();
    assert_eq!(s.stat(&h).await.unwrap().state, VolumeState::Creating);
    assert_eq!(
        s.mount(&h, MountAccess::Read).await.unwrap_err().kind(),
        ErrorKind::Conflict
    );

    // A manifest copied from another volume does not seal this one.
    let other = VolumeHandle::random();
    s.create(&other).await.unwrap();
    let other_manifest = s
        .root()
        .join("volumes")
        .join(other.as_str())
        .join("MANIFEST.json");
    fs::write(&other_manifest, &good).unwrap();
    assert_eq!(s.stat(&other).await.unwrap().state, VolumeState::Creating);

    fs::write(&manifest, &good).unwrap();
    assert_eq!(s.stat(&h).await.unwrap().state, VolumeState::Sealed);
    // Persistent: a new store over the same root sees the same volume.
    let again = FsVolumeStore::new(t.path().join("store")).unwrap();
    assert_eq!(again.stat(&h).await.unwrap(), s.stat(&h).await.unwrap());
    assert_eq!(read_model(&again, &h).await, sample());
    // No temporary manifest files are left behind.
    let leftovers: Vec<_> = fs::read_dir(manifest.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Tar details: hard links, last entry wins, setuid dropped, implied parents, `./`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extraction_details() {
    let (_t, s) = store();
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        match link {
            Some(l) => b.append_link(&mut h, path, l).unwrap(),
            None => b.append_data(&mut h, path, data).unwrap(),
        }
    };
    add("./", tar::EntryType::Directory, 0o700, b"", None);
    add("x/y/f", tar::EntryType::Regular, 0o4755, b"setuid", None);
    add("dup", tar::EntryType::Regular, 0o644, b"first", None);
    add("dup", tar::EntryType::Regular, 0o600, b"second", None);
    add("hard", tar::EntryType::Link, 0o644, b"", Some("x/y/f"));
    add("x", tar::EntryType::Directory, 0o750, b"", None);
    let data = b.into_inner().unwrap();
    let h = VolumeHandle::random();
    s.create(&h).await.unwrap();
    s.write_tar(&h, chunked(&data, 100)).await.unwrap();
    let info = s.seal(&h).await.unwrap();
    let want = Model::default()
        .dir("x", 0o750)
        .dir("x/y", 0o755)
        .file("x/y/f", 0o755, "setuid")
        .file("dup", 0o600, "second")
        .file("hard", 0o755, "setuid");
    assert_eq!(read_model(&s, &h).await, want);
    assert_eq!(info.digest, Some(want.digest()));
    assert_eq!(info.size, 6 + 6 + 6);
}

/// Flipping one byte of a sealed volume: `read_tar`, `verify` and `copy_to` say
/// `Corrupt`, and nothing reaches the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_is_detected_before_any_data() {
    let (t, s) = store();
    let h = sealed(&s, &sample()).await;
    let f = s.volume_data_path(&h).join("a/b/c/deep.bin");
    let mut data = fs::read(&f).unwrap();
    data[12_345] ^= 0x01;
    make_writable(&f);
    fs::write(&f, &data).unwrap();

    assert_eq!(
        s.read_tar(&h).await.err().unwrap().kind(),
        ErrorKind::Corrupt
    );
    assert_eq!(s.verify(&h).await.unwrap_err().kind(), ErrorKind::Corrupt);
    let dest = t.path().join("copies/input");
    assert_eq!(
        s.copy_to(&h, &dest).await.unwrap_err().kind(),
        ErrorKind::Corrupt
    );
    assert!(!dest.exists());
    assert!(
        is_empty_dir(&t.path().join("copies")),
        "staging left behind"
    );
    // An existing empty destination stays empty.
    fs::create_dir_all(&dest).unwrap();
    assert_eq!(
        s.copy_to(&h, &dest).await.unwrap_err().kind(),
        ErrorKind::Corrupt
    );
    assert!(is_empty_dir(&dest));

    // A changed mode or an extra file is corruption too.
    let h2 = sealed(&s, &sample()).await;
    fs::set_permissions(
        s.volume_data_path(&h2).join("README.md"),
        fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    assert_eq!(s.verify(&h2).await.unwrap_err().kind(), ErrorKind::Corrupt);
    let h3 = sealed(&s, &sample()).await;
    fs::write(s.volume_data_path(&h3).join("extra"), "x").unwrap();
    assert_eq!(
        s.read_tar(&h3).await.err().unwrap().kind(),
        ErrorKind::Corrupt
    );
    // A device planted in a sealed volume is corruption, not bad input.
    let h4 = sealed(&s, &sample()).await;
    nix::unistd::mkfifo(
        &s.volume_data_path(&h4).join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    assert_eq!(s.verify(&h4).await.unwrap_err().kind(), ErrorKind::Corrupt);
}

/// A file changed after the pre-read check but while streaming: the stream ends
/// with `Corrupt` instead of handing out the changed data as good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_during_streaming_ends_with_corrupt() {
    use futures::StreamExt;
    let (_t, s) = store();
    // Large enough that the producer blocks on the channel before reaching `z`.
    let m = Model::default()
        .file("a.bin", 0o644, pseudo_random(8 << 20, 1))
        .file("z.txt", 0o644, "original");
    let h = sealed(&s, &m).await;
    let mut stream = s.read_tar(&h).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    let z = s.volume_data_path(&h).join("z.txt");
    make_writable(&z);
    fs::write(&z, "tampered").unwrap();
    let mut last = None;
    while let Some(item) = stream.next().await {
        if let Err(e) = item {
            last = Some(e.kind());
            break;
        }
    }
    assert_eq!(last, Some(ErrorKind::Corrupt));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_makes_a_private_faithful_copy() {
    let (t, s) = store();
    let m = sample();
    let h = sealed(&s, &m).await;
    let dest = t.path().join("sandbox/inputs/repo");
    let info = s.copy_to(&h, &dest).await.unwrap();
    assert_eq!(info.digest, Some(m.digest()));
    assert_eq!(Model::from_dir(&dest), m);
    // Private: changing the copy leaves the volume as sealed.
    make_writable(&dest.join("README.md"));
    fs::write(dest.join("README.md"), "changed").unwrap();
    fs::write(dest.join("empty-dir/new"), "new").unwrap();
    s.verify(&h).await.unwrap();
    // A non-empty destination is refused and left alone.
    assert_eq!(
        s.copy_to(&h, &dest).await.unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        fs::read_to_string(dest.join("README.md")).unwrap(),
        "changed"
    );
    let unsealed = VolumeHandle::random();
    s.create(&unsealed).await.unwrap();
    assert_eq!(
        s.copy_to(&unsealed, t.path().join("x"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
}

/// The write-limit hook fails like a full disk: `StorageFull`, nothing visible, the
/// volume left empty, other volumes intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_limit_is_storage_full() {
    let t = tempfile::tempdir().unwrap();
    let s = FsVolumeStore::new(t.path())
        .unwrap()
        .with_write_limit(200_000);
    let before = sealed(&s, &sample()).await;
    let big = Model::default()
        .dir("d", 0o755)
        .file("d/small", 0o644, "x")
        .file("d/big", 0o644, pseudo_random(1 << 20, 3));
    let h = VolumeHandle::random();
    s.create(&h).await.unwrap();
    let e = s
        .write_tar(&h, chunked(&big.to_tar(), 64 * 1024))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StorageFull, "{e}");
    assert_eq!(s.stat(&h).await.unwrap().state, VolumeState::Creating);
    assert!(is_empty_dir(&s.volume_data_path(&h)));
    assert_eq!(
        s.read_tar(&h).await.err().unwrap().kind(),
        ErrorKind::NotFound
    );
    s.verify(&before).await.unwrap();
    assert_eq!(read_model(&s, &before).await, sample());
}

/// Mounts a 1 MiB tmpfs; `None` where mounting is not allowed, said loudly, and a
/// failure where CI requires it (`JETBRIDGE_REQUIRE_MOUNT=1`, set by `.ci/test.sh`).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Option<Tmpfs> {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
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
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A real full filesystem (1 MiB tmpfs): `StorageFull`, nothing visible, the earlier
/// volume intact and verifying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_enospc_on_small_tmpfs() {
    let t = tempfile::tempdir().unwrap();
    let Some(_mnt) = Tmpfs::mount(t.path()) else {
        return;
    };
    let s = FsVolumeStore::new(t.path().join("store")).unwrap();
    let small = Model::default()
        .dir("d", 0o755)
        .file("d/f", 0o644, pseudo_random(100_000, 8));
    let before = sealed(&s, &small).await;
    let big = Model::default().file("big", 0o644, pseudo_random(3 << 20, 9));
    let h = VolumeHandle::random();
    s.create(&h).await.unwrap();
    let e = s
        .write_tar(&h, chunked(&big.to_tar(), 64 * 1024))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StorageFull, "{e}");
    assert!(!e.is_retryable());
    assert_eq!(s.stat(&h).await.unwrap().state, VolumeState::Creating);
    assert!(is_empty_dir(&s.volume_data_path(&h)));
    assert_eq!(
        s.read_tar(&h).await.err().unwrap().kind(),
        ErrorKind::NotFound
    );
    let listed = s.list().await.unwrap();
    assert_eq!(
        listed
            .iter()
            .filter(|i| i.state == VolumeState::Sealed)
            .count(),
        1
    );
    s.verify(&before).await.unwrap();
    assert_eq!(read_model(&s, &before).await, small);
    // The space came back: the same volume can now take a small tree and seal.
    s.write_tar(&h, chunked(&small.to_tar(), 4096))
        .await
        .unwrap();
    assert_eq!(s.seal(&h).await.unwrap().digest, Some(small.digest()));
}

/// The input stream's own error reaches the caller; the volume is left empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_and_truncated_streams_leave_nothing() {
    let (_t, s) = store();
    let data = sample().to_tar();
    let h = VolumeHandle::random();
    s.create(&h).await.unwrap();
    let parts: Vec<jetbridge_core::Result<Bytes>> = vec![
        Ok(Bytes::copy_from_slice(&data[..data.len() / 2])),
        Err(jetbridge_core::Error::transient("connection dropped")),
    ];
    let e = s
        .write_tar(&h, Box::pin(futures::stream::iter(parts)))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    assert!(is_empty_dir(&s.volume_data_path(&h)));

    let big = Model::default().file("big.bin", 0o644, pseudo_random(100_000, 5));
    let data = big.to_tar();
    let e = s
        .write_tar(&h, chunked(&data[..50_000], 4096))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert!(is_empty_dir(&s.volume_data_path(&h)));
    assert_eq!(
        s.read_tar(&h).await.err().unwrap().kind(),
        ErrorKind::NotFound
    );
}

/// A stream that never ends, after some data; `reached` fires once the reader has taken
/// the data and asked for more (so the write is under way).
fn stalled(data: Vec<u8>, reached: Arc<tokio::sync::Notify>) -> ByteStream {
    let stall = futures::stream::once(async move {
        reached.notify_one();
        futures::future::pending::<jetbridge_core::Result<Bytes>>().await
    });
    Box::pin(futures::stream::iter([Ok(Bytes::from(data))]).chain(stall))
}
use futures::StreamExt as _;

/// A writer that gives up mid-stream never leaves a partial tree behind, and a
/// concurrent write or seal of the same volume is refused while one is running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_and_concurrent_writes() {
    let (_t, s) = store();
    let h = VolumeHandle::random();
    s.create(&h).await.unwrap();
    // Whole entries, no end-of-archive marker: only the abandonment tells it apart
    // from a complete archive.
    let data = sample().to_tar();
    let cut = data.len() - 1024;
    let s2 = s.clone();
    let h2 = h.clone();
    let reached = Arc::new(tokio::sync::Notify::new());
    let stream = stalled(data[..cut].to_vec(), reached.clone());
    let first = tokio::spawn(async move { s2.write_tar(&h2, stream).await });
    tokio::time::timeout(Duration::from_secs(30), reached.notified())
        .await
        .expect("the first write reads its stream");
    assert_eq!(
        s.write_tar(&h, chunked(&sample().to_tar(), 512))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Conflict
    );
    assert_eq!(s.seal(&h).await.unwrap_err().kind(), ErrorKind::Conflict);
    first.abort();
    let _ = first.await;
    // Cleanup runs on the blocking thread after the caller went away.
    let mut tries = 0;
    loop {
        match s.seal(&h).await {
            Err(e) if e.kind() == ErrorKind::Conflict && tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => {
                let info = r.unwrap();
                assert_eq!(info.size, 0, "an abandoned write left data");
                assert_eq!(info.digest, Some(Model::default().digest()));
                break;
            }
        }
    }
}

/// Deleting a volume while it is being read does not break the store, and the
/// volume is gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_while_reading() {
    let (_t, s) = store();
    let m = Model::default().file("big", 0o644, pseudo_random(4 << 20, 2));
    let h = sealed(&s, &m).await;
    let mut stream = s.read_tar(&h).await.unwrap();
    let _ = stream.next().await.unwrap().unwrap();
    s.delete(&h).await.unwrap();
    // The reader either finishes (open file survives the unlink) or fails cleanly.
    while let Some(item) = stream.next().await {
        if item.is_err() {
            break;
        }
    }
    assert_eq!(s.stat(&h).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert!(s.list().await.unwrap().is_empty());
}

/// An empty volume (no write at all) seals to the empty tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_volume_seals() {
    let (_t, s) = store();
    let h = VolumeHandle::random();
    s.create(&h).await.unwrap();
    let info = s.seal(&h).await.unwrap();
    assert_eq!(info.digest, Some(Model::default().digest()));
    assert_eq!(info.size, 0);
    assert!(read_model(&s, &h).await.0.is_empty());
}
