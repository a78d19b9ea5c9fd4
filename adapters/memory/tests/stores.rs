//! The volume store and the registry, with their faults.

use std::time::{Duration, SystemTime};

use jetbridge_core::ErrorKind;
use jetbridge_core::digest::{TreeDigest, TreeEntry, sha256};
use jetbridge_core::names::{ArtifactId, VolumeHandle};
use jetbridge_core::ports::{
    ArtifactFilter, ArtifactRegistry, ArtifactState, ClaimOpts, HeartbeatMode, HeartbeatOpts,
    Holder, MountAccess, NewArtifact, VolumeState, VolumeStore, bytes_stream, collect_stream,
};
use jetbridge_memory::{MemoryRegistry, MemoryVolumeStore, RegistryClock, RegistryOp, VolumeOp};

fn vh(s: &str) -> VolumeHandle {
    VolumeHandle::parse(s).unwrap()
}

fn tar_of(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[tokio::test]
async fn volume_life_and_digest() {
    let s = MemoryVolumeStore::new();
    let v = vh("v1");
    assert_eq!(s.create(&v).await.unwrap().state, VolumeState::Creating);
    assert_eq!(
        s.create(&v).await.unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        s.read_tar(&v).await.err().unwrap().kind(),
        ErrorKind::NotFound
    );
    s.write_tar(&v, bytes_stream(tar_of(&[("d/f", b"hello", 0o100640)])))
        .await
        .unwrap();
    let info = s.seal(&v).await.unwrap();
    assert_eq!(info.size, 5);
    // The digest a directory store computes for the same tree.
    let h = sha256(b"hello");
    let mut d = TreeDigest::new();
    d.add("d", TreeEntry::Dir { mode: 0o755 });
    d.add(
        "d/f",
        TreeEntry::File {
            mode: 0o640,
            size: 5,
            sha256: &h,
        },
    );
    assert_eq!(info.digest, Some(d.finish()));
    assert_eq!(s.seal(&v).await.unwrap(), info);
    let e = s.write_tar(&v, bytes_stream(Vec::new())).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    // Round trip into another volume gives the same digest.
    let data = collect_stream(s.read_tar(&v).await.unwrap()).await.unwrap();
    s.create(&vh("v2")).await.unwrap();
    s.write_tar(&vh("v2"), bytes_stream(data)).await.unwrap();
    assert_eq!(s.seal(&vh("v2")).await.unwrap().digest, info.digest);
    assert_eq!(
        s.mount(&v, MountAccess::Read).await.unwrap_err().kind(),
        ErrorKind::Unsupported
    );
    assert_eq!(s.list().await.unwrap().len(), 2);
    s.delete(&v).await.unwrap();
    s.delete(&v).await.unwrap();
    assert_eq!(s.stat(&v).await.unwrap_err().kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn hostile_tar_leaves_nothing() {
    let s = MemoryVolumeStore::new();
    let v = vh("v");
    s.create(&v).await.unwrap();
    s.write_tar(&v, bytes_stream(tar_of(&[("keep", b"k", 0o644)])))
        .await
        .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1);
    h.set_mode(0o644);
    b.append_data(&mut h, "fine", &b"x"[..]).unwrap();
    let mut l = tar::Header::new_gnu();
    l.set_entry_type(tar::EntryType::Symlink);
    l.set_size(0);
    b.append_link(&mut l, "out", "/etc").unwrap();
    let e = s
        .write_tar(&v, bytes_stream(b.into_inner().unwrap()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    let info = s.seal(&v).await.unwrap();
    assert_eq!(info.size, 1, "only the earlier write is there");
}

#[tokio::test]
async fn capacity_and_corruption() {
    let s = MemoryVolumeStore::new();
    s.create(&vh("a")).await.unwrap();
    s.write_tar(&vh("a"), bytes_stream(tar_of(&[("f", &[1; 60], 0o644)])))
        .await
        .unwrap();
    s.seal(&vh("a")).await.unwrap();
    s.set_capacity(Some(100));
    s.create(&vh("b")).await.unwrap();
    s.write_tar(
        &vh("b"),
        bytes_stream(tar_of(&[("small", &[2; 10], 0o644)])),
    )
    .await
    .unwrap();
    let e = s
        .write_tar(&vh("b"), bytes_stream(tar_of(&[("big", &[3; 50], 0o644)])))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StorageFull);
    let b = s.stat(&vh("b")).await.unwrap();
    assert_eq!(b.state, VolumeState::Creating);
    assert_eq!(s.seal(&vh("b")).await.unwrap().size, 0, "content discarded");
    assert_eq!(s.stat(&vh("a")).await.unwrap().size, 60);
    assert!(
        collect_stream(s.read_tar(&vh("a")).await.unwrap())
            .await
            .is_ok()
    );
    s.corrupt(&vh("a")).unwrap();
    assert_eq!(
        s.read_tar(&vh("a")).await.err().unwrap().kind(),
        ErrorKind::Corrupt
    );
    s.corrupt(&vh("b")).unwrap();
    assert_eq!(
        s.read_tar(&vh("b")).await.err().unwrap().kind(),
        ErrorKind::Corrupt
    );
}

#[tokio::test]
async fn volume_faults() {
    let s = MemoryVolumeStore::new();
    s.fail_next(VolumeOp::Create, 1, ErrorKind::Transient);
    assert_eq!(
        s.create(&vh("a")).await.unwrap_err().kind(),
        ErrorKind::Transient
    );
    assert!(s.list().await.unwrap().is_empty());
    s.fail_next_after(VolumeOp::Create, 1, ErrorKind::Transient);
    assert!(s.create(&vh("a")).await.is_err());
    assert_eq!(s.list().await.unwrap().len(), 1);
    s.fail_next(VolumeOp::WriteTar, 1, ErrorKind::StorageFull);
    let e = s
        .write_tar(&vh("a"), bytes_stream(tar_of(&[])))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StorageFull);
    s.fail_next(VolumeOp::Seal, 1, ErrorKind::Other);
    assert!(s.seal(&vh("a")).await.is_err());
    assert!(s.seal(&vh("a")).await.is_ok());
}

fn new_artifact(id: &str, vol: &str, worker: &str) -> NewArtifact {
    NewArtifact::new(
        ArtifactId::parse(id).unwrap(),
        "b1",
        "s",
        id,
        vh(vol),
        Holder::new(worker, "b1"),
    )
}

#[tokio::test]
async fn registry_idempotence_and_conflicts() {
    let r = MemoryRegistry::new();
    let a = new_artifact("a", "va", "w");
    let rec = r.register(&a).await.unwrap();
    assert_eq!(rec.state, ArtifactState::Creating);
    assert_eq!(r.register(&a).await.unwrap(), rec);
    let mut other = a.clone();
    other.name = "changed".into();
    assert_eq!(
        r.register(&other).await.unwrap_err().kind(),
        ErrorKind::Conflict
    );
    let b = new_artifact("b", "va", "w");
    assert_eq!(
        r.register(&b).await.unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    let d = jetbridge_core::digest::Digest::from_sha256(&sha256(b"x"));
    let d2 = jetbridge_core::digest::Digest::from_sha256(&sha256(b"y"));
    r.mark_ready(&a.id, 3, &d).await.unwrap();
    r.mark_ready(&a.id, 3, &d).await.unwrap();
    assert_eq!(
        r.mark_ready(&a.id, 3, &d2).await.unwrap_err().kind(),
        ErrorKind::Conflict
    );
    r.register(&new_artifact("c", "vc", "w")).await.unwrap();
    let found = r
        .find(&ArtifactFilter {
            build: Some("b1".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        found.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["a", "c"]
    );
    let ready = r
        .find(&ArtifactFilter {
            state: Some(ArtifactState::Ready),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ready.len(), 1);
    assert_eq!(
        r.known_volumes(&[vh("vc"), vh("zz"), vh("va")])
            .await
            .unwrap(),
        [vh("vc"), vh("va")]
    );
}

fn claim(stale: Duration) -> ClaimOpts {
    ClaimOpts::default().with_limit(10).with_stale_after(stale)
}

fn register(ttl: Duration) -> HeartbeatOpts {
    HeartbeatOpts::new("s1", ttl, HeartbeatMode::Register)
}

#[tokio::test]
async fn registry_reaping_rules() {
    let now = SystemTime::now();
    let clock = RegistryClock::manual(now);
    let r = MemoryRegistry::with_clock(clock.clone());
    let stale = claim(Duration::from_secs(60));
    // Held by a worker that never registered: protected.
    r.register(&new_artifact("unregistered", "v1", "ghost"))
        .await
        .unwrap();
    // Held by a worker whose registration expired: not protected.
    r.heartbeat("dead", &register(Duration::from_secs(30)))
        .await
        .unwrap();
    r.register(&new_artifact("dead-ref", "v3", "dead"))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(100));
    // Held by a live worker: protected.
    r.heartbeat("alive", &register(Duration::from_secs(30)))
        .await
        .unwrap();
    r.register(&new_artifact("live", "v2", "alive"))
        .await
        .unwrap();
    // Unreferenced but retained: protected until the retention passes.
    let mut kept = new_artifact("kept", "v4", "alive");
    kept.retain_until = Some(clock.now() + Duration::from_secs(10));
    r.register(&kept).await.unwrap();
    r.release(&kept.id, &kept.holder).await.unwrap();

    let claimed = r.claim_reapable("reaper", &stale).await.unwrap();
    assert_eq!(
        claimed.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["dead-ref"]
    );
    assert_eq!(claimed[0].state, ArtifactState::Destroying);
    assert!(r.claim_reapable("reaper", &stale).await.unwrap().is_empty());
    assert_eq!(
        r.acquire(&claimed[0].id, &Holder::new("alive", "b2"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Conflict
    );
    // A crashed reaper's claim goes stale and is handed out again.
    clock.advance(Duration::from_secs(61));
    let again = r.claim_reapable("other", &stale).await.unwrap();
    assert!(again.iter().any(|a| a.id.as_str() == "dead-ref"));
    assert!(again.iter().any(|a| a.id.as_str() == "kept"));
    assert!(
        again.iter().any(|a| a.id.as_str() == "live"),
        "the live worker expired by then"
    );
    assert!(!again.iter().any(|a| a.id.as_str() == "unregistered"));
    let id = ArtifactId::parse("unregistered").unwrap();
    assert_eq!(r.forget(&id).await.unwrap_err().kind(), ErrorKind::Conflict);
    assert_eq!(r.release_all(&Holder::new("ghost", "b1")).await.unwrap(), 1);
    let one = stale.clone().with_limit(1);
    assert_eq!(r.claim_reapable("x", &one).await.unwrap().len(), 1);
    r.forget(&id).await.unwrap();
    r.forget(&id).await.unwrap();
    assert_eq!(r.get(&id).await.unwrap_err().kind(), ErrorKind::NotFound);
    let workers = r.workers().await.unwrap();
    assert_eq!(workers.len(), 2);
    assert!(
        workers.iter().all(|w| !w.alive),
        "both expired: {workers:?}"
    );
}

/// Expiry is judged on the registry's clock: a registration lives `ttl` from the
/// heartbeat as the registry timed it.
#[tokio::test]
async fn registry_clock_decides_expiry() {
    let clock = RegistryClock::manual(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
    let r = MemoryRegistry::with_clock(clock.clone());
    let w = r
        .heartbeat("w", &register(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(w.last_heartbeat, clock.now());
    assert_eq!(w.expires_at, clock.now() + Duration::from_secs(30));
    clock.advance(Duration::from_secs(29));
    assert!(r.workers().await.unwrap()[0].alive);
    clock.advance(Duration::from_secs(1));
    assert!(!r.workers().await.unwrap()[0].alive);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_never_overlap() {
    let r = std::sync::Arc::new(MemoryRegistry::new());
    for i in 0..200 {
        let mut a = new_artifact(&format!("a{i}"), &format!("v{i}"), "w");
        a.holder = Holder::new("w", "b");
        r.register(&a).await.unwrap();
        r.release(&a.id, &a.holder).await.unwrap();
    }
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let opts = ClaimOpts::default()
                        .with_limit(7)
                        .with_stale_after(Duration::from_secs(60));
                    let c = r.claim_reapable(&format!("c{i}"), &opts).await.unwrap();
                    if c.is_empty() {
                        return got;
                    }
                    got.extend(c.into_iter().map(|a| a.id));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!((n, all.len()), (200, 200));
}

#[tokio::test]
async fn registry_faults() {
    let r = MemoryRegistry::new();
    let a = new_artifact("a", "va", "w");
    r.fail_next(RegistryOp::Register, 1, ErrorKind::Transient);
    assert!(r.register(&a).await.unwrap_err().is_retryable());
    assert!(r.is_empty());
    r.fail_next_after(RegistryOp::Register, 1, ErrorKind::Transient);
    assert!(r.register(&a).await.is_err());
    assert_eq!(r.register(&a).await.unwrap().id, a.id);
    assert_eq!(r.reference_count(&a.id), 1);
    r.fail_next(RegistryOp::ClaimReapable, 1, ErrorKind::Other);
    assert!(r.claim_reapable("x", &ClaimOpts::default()).await.is_err());
}
