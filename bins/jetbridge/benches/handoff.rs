//! Artifact hand-off and orchestration overhead on the embedded default (local
//! processes + filesystem volume store), each beside its baseline in the same run:
//!
//! - hand-off of a large-file artifact and of a many-small-files artifact from one step
//!   to the next (seal the producer's output in place: size + digest; give the consumer
//!   a private writable copy, verified against the seal) against `tar -c | tar -x`
//!   between two directories;
//! - the copy alone, verified (core's `copy_verified`, what the consumer's pod creation
//!   runs) and unverified (`cp -a`, what a copy that trusts the disk costs), against the
//!   same pipe;
//! - a 20-step plan of `true` through the build runner against running `true` 20 times.
//!
//! `cargo bench -p jetbridge --bench handoff`. `JB_BENCH_LARGE_MIB` (default 1024) and
//! `JB_BENCH_SMALL_FILES` (default 10000) scale the data sets; `JB_BENCH_RUNS` (default 3)
//! sets repetitions (the median is reported). `JB_BENCH_ONLY=copy` runs nothing but
//! verified copies of the small-file set (`JB_BENCH_RUNS` times), for counting syscalls
//! with `strace -c -f` (see `docs/benchmarks.md`).

use jetbridge_core::ports::DeleteOpts;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jetbridge_core::copy::{CopyOptions, copy_verified};
use jetbridge_core::digest::Digest;
use jetbridge_core::images::ImageResolver;
use jetbridge_core::names::VolumeHandle;
use jetbridge_core::plan::{Vars, parse_pipeline};
use jetbridge_core::ports::{
    ArtifactRegistry, CopySource, MountAccess, MountInfo, MountSource, PodSpec, Pods, Runtime,
    VolumeStore,
};
use jetbridge_core::services::{BuildRequest, BuildRunner, NoEvents, StepConfig};
use jetbridge_fs::FsVolumeStore;
use jetbridge_local::{LocalBackend, LocalConfig};
use jetbridge_memory::MemoryRegistry;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Deterministic pseudo-random bytes (xorshift), so the data does not compress away.
fn fill(buf: &mut [u8], seed: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let b = seed.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

fn make_large(dir: &Path, mib: u64) -> u64 {
    std::fs::create_dir_all(dir).expect("dir");
    let files = 8u64;
    let per = mib * 1024 * 1024 / files;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..files {
        let mut f = std::fs::File::create(dir.join(format!("blob-{i}.bin"))).expect("file");
        let mut left = per;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            fill(&mut buf[..n], &mut seed);
            f.write_all(&buf[..n]).expect("write");
            left -= n as u64;
        }
    }
    per * files
}

fn make_small(dir: &Path, count: u64) -> u64 {
    let mut seed = 42u64;
    let mut total = 0;
    for i in 0..count {
        let sub = dir.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&sub).expect("dir");
        }
        let size = 512 + (i * 7919 % 7680) as usize; // 0.5 to 8 KiB
        let mut buf = vec![0u8; size];
        fill(&mut buf, &mut seed);
        std::fs::write(sub.join(format!("f{i}.txt")), &buf).expect("write");
        total += size as u64;
    }
    total
}

fn copy_tree(src: &Path, dst: &Path) {
    // Not measured: puts the data set into a producer's output volume.
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(dst)
        .status()
        .expect("cp");
    assert!(st.success());
}

fn tar_pipe(src: &Path, dst: &Path) -> Duration {
    std::fs::create_dir_all(dst).expect("dst");
    let t = Instant::now();
    let st = Command::new("sh")
        .arg("-c")
        .arg("tar -C \"$1\" -cf - . | tar -C \"$2\" -xf -")
        .arg("sh")
        .arg(src)
        .arg(dst)
        .status()
        .expect("tar pipe");
    let d = t.elapsed();
    assert!(st.success());
    d
}

/// The copy a consumer's pod creation makes, alone: read, write, hash, check.
fn verified_copy(src: &Path, dst: &Path, digest: &Digest) -> Duration {
    let t = Instant::now();
    copy_verified(
        src,
        dst,
        digest,
        CopyOptions::new().with_writable_dirs(true),
    )
    .expect("verified copy");
    t.elapsed()
}

/// A copy that trusts the disk: `cp -a`.
fn unverified_copy(src: &Path, dst: &Path) -> Duration {
    let t = Instant::now();
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .expect("cp");
    let d = t.elapsed();
    assert!(st.success());
    d
}

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: Arc<FsVolumeStore>,
    backend: Arc<LocalBackend>,
}

fn env(flush: bool) -> Env {
    let dir = tempfile::tempdir_in(
        std::env::var("JB_BENCH_DIR")
            .unwrap_or_else(|_| std::env::temp_dir().display().to_string()),
    )
    .expect("tempdir");
    let root = dir.path().to_path_buf();
    let store = Arc::new(
        FsVolumeStore::new(root.join("volumes"))
            .expect("store")
            .with_flush(flush),
    );
    let backend =
        Arc::new(LocalBackend::new(LocalConfig::new(root.join("local"))).expect("backend"));
    Env {
        _dir: dir,
        root,
        store,
        backend,
    }
}

/// One hand-off: seal the producer's output, create the consumer pod with a private
/// copy of it. Returns the measured time.
async fn handoff(e: &Env, src: &Path, i: usize) -> Duration {
    let h = VolumeHandle::parse(&format!("v-bench-{i}")).expect("handle");
    e.store.create(&h).await.expect("create");
    copy_tree(src, &e.store.volume_data_path(&h));
    let pod = format!("bench-consumer-{i}");
    let t = Instant::now();
    let sealed = e.store.seal(&h).await.expect("seal");
    let m = e.store.mount(&h, MountAccess::Read).await.expect("mount");
    assert!(matches!(m, MountInfo::HostPath { .. }));
    let mut spec = PodSpec::new(pod.clone(), "host");
    spec.mounts.push(jetbridge_core::ports::Mount::new(
        "input",
        MountSource::CopyOf(CopySource::new(m, sealed.digest.expect("digest"))),
    ));
    e.backend.create(&spec).await.expect("consumer pod");
    let d = t.elapsed();
    e.backend
        .delete(&pod, &DeleteOpts::grace(Duration::ZERO))
        .await
        .expect("delete");
    e.store.delete(&h).await.expect("delete volume");
    d
}

async fn bench_handoff(label: &str, flush: bool, make: impl Fn(&Path) -> u64, runs: usize) {
    let e = env(flush);
    let label = format!(
        "{label}, {}",
        if flush {
            "durable seal"
        } else {
            "seal without flush"
        }
    );
    let src = e.root.join("source");
    let bytes = make(&src);
    // Warm the page cache once, like a step that just wrote its output.
    let _ = tar_pipe(&src, &e.root.join("warm"));
    let _ = std::fs::remove_dir_all(e.root.join("warm"));
    // A sealed copy of the source for the copy-only rows.
    let (sealed_dir, digest) = sealed_source(&e, &src).await;
    let mut ours = Vec::new();
    let mut pipe = Vec::new();
    let mut verified = Vec::new();
    let mut unverified = Vec::new();
    for i in 0..runs {
        // Interleaved, so a slow phase of the disk hits every variant alike.
        ours.push(handoff(&e, &src, i).await);
        let dst = e.root.join(format!("pipe-{i}"));
        pipe.push(tar_pipe(&src, &dst));
        let _ = std::fs::remove_dir_all(&dst);
        let dst = e.root.join(format!("verified-{i}"));
        verified.push(verified_copy(&sealed_dir, &dst, &digest));
        let _ = std::fs::remove_dir_all(&dst);
        let dst = e.root.join(format!("unverified-{i}"));
        unverified.push(unverified_copy(&sealed_dir, &dst));
        let _ = std::fs::remove_dir_all(&dst);
    }
    let p = median(pipe);
    let mbps = |d: Duration| bytes as f64 / d.as_secs_f64() / (1024.0 * 1024.0);
    let row = |what: &str, o: Duration| {
        println!(
            "| {what}, {label} ({:.0} MiB) | {:.3} s ({:.0} MiB/s) | {:.3} s ({:.0} MiB/s) | {:.2} |",
            bytes as f64 / (1024.0 * 1024.0),
            o.as_secs_f64(),
            mbps(o),
            p.as_secs_f64(),
            mbps(p),
            p.as_secs_f64() / o.as_secs_f64()
        );
    };
    row("hand-off (seal + verified copy)", median(ours));
    if flush {
        // The copies do not depend on how the seal flushes: shown once.
        row("verified copy alone", median(verified));
        row("unverified copy alone (`cp -a`)", median(unverified));
    }
}

/// `src` put into a sealed volume: its data directory and digest.
async fn sealed_source(e: &Env, src: &Path) -> (PathBuf, Digest) {
    let h = VolumeHandle::parse("v-bench-source").expect("handle");
    e.store.create(&h).await.expect("create");
    copy_tree(src, &e.store.volume_data_path(&h));
    let info = e.store.seal(&h).await.expect("seal");
    (e.store.volume_data_path(&h), info.digest.expect("digest"))
}

/// `JB_BENCH_ONLY=copy`: verified copies of the small-file set and nothing else.
async fn only_copies(small: u64, runs: usize) {
    let e = env(false);
    let src = e.root.join("source");
    make_small(&src, small);
    let (sealed_dir, digest) = sealed_source(&e, &src).await;
    let mut times = Vec::new();
    for i in 0..runs {
        let dst = e.root.join(format!("verified-{i}"));
        times.push(verified_copy(&sealed_dir, &dst, &digest));
    }
    println!(
        "verified copy of {small} small files: {:.3} s (median of {runs})",
        median(times).as_secs_f64()
    );
}

async fn bench_overhead(runs: usize) {
    let steps = 20;
    let mut plan = String::from("jobs:\n- name: j\n  plan:\n");
    for i in 0..steps {
        plan.push_str(&format!(
            "  - task: t{i}\n    config:\n      platform: linux\n      run: {{path: 'true'}}\n"
        ));
    }
    let pipeline = Arc::new(parse_pipeline(&plan, "bench.yml", &Vars::new()).expect("plan"));
    let mut ours = Vec::new();
    let mut direct = Vec::new();
    for r in 0..runs + 1 {
        let e = env(true);
        let registry: Arc<dyn ArtifactRegistry> = Arc::new(MemoryRegistry::new());
        let rt = Runtime {
            pods: e.backend.clone(),
            exec: e.backend.clone(),
            volumes: Some(e.store.clone()),
            registry,
        };
        let runner = BuildRunner::new(
            rt,
            StepConfig::default(),
            ImageResolver::new(),
            "bench",
            Arc::new(NoEvents),
        );
        let t = Instant::now();
        let out = runner
            .run(BuildRequest::new(
                pipeline.clone(),
                "j",
                1,
                format!("bench-{r}"),
            ))
            .await
            .expect("build");
        let d = t.elapsed();
        assert_eq!(out.status, jetbridge_core::services::BuildStatus::Succeeded);
        let t = Instant::now();
        for _ in 0..steps {
            let st = Command::new("true")
                .env_clear()
                .envs(BTreeMap::<String, String>::new())
                .status()
                .expect("true");
            assert!(st.success());
        }
        let dd = t.elapsed();
        if r > 0 {
            // The first round warms caches.
            ours.push(d);
            direct.push(dd);
        }
    }
    let (o, d) = (median(ours), median(direct));
    println!(
        "| 20-step plan of `true` | {:.1} ms ({:.2} ms/step) | {:.1} ms ({:.2} ms/step) | overhead {:.2} ms/step |",
        o.as_secs_f64() * 1e3,
        o.as_secs_f64() * 1e3 / steps as f64,
        d.as_secs_f64() * 1e3,
        d.as_secs_f64() * 1e3 / steps as f64,
        (o.as_secs_f64() - d.as_secs_f64()) * 1e3 / steps as f64
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: then run a
    // tiny smoke version so the bench stays compiled and working.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let runs = if smoke {
        1
    } else {
        env_num("JB_BENCH_RUNS", 3) as usize
    };
    let large = if smoke {
        4
    } else {
        env_num("JB_BENCH_LARGE_MIB", 1024)
    };
    let small = if smoke {
        200
    } else {
        env_num("JB_BENCH_SMALL_FILES", 10_000)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::var("JB_BENCH_ONLY").as_deref() == Ok("copy") {
        rt.block_on(only_copies(small, runs));
        return;
    }
    println!("| case | jetbridge | baseline | ratio (baseline time / ours) |");
    println!("|---|---|---|---|");
    rt.block_on(async {
        for flush in [true, false] {
            bench_handoff("large files", flush, |d| make_large(d, large), runs).await;
            let label = format!("{small} small files");
            bench_handoff(&label, flush, |d| make_small(d, small), runs).await;
        }
        bench_overhead(runs).await;
    });
}
