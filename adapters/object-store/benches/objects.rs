//! Throughput of `ObjectStoreVolumes` on the local-directory form, beside raw
//! `object_store` put/get of the same bytes in the same run, and the zstd ratio and
//! CPU cost on this repository's sources.
//!
//! `cargo bench -p jetbridge-object-store --bench objects`
//!
//! Environment: `JB_BENCH_BYTES` (size of the large-file artifact, default 1 GiB),
//! `JB_BENCH_FILES` (files of the small-file artifact, default 10000),
//! `JB_BENCH_DIR` (where the store lives, default the system temporary directory),
//! `JB_BENCH_SOURCES` (the source tree to compress, default the workspace root),
//! `JB_BENCH_ONLY` (run only the configurations whose name contains it),
//! `JB_BENCH_RUNS` (rounds per case, default 3; each figure is the best round, since
//! a local put's speed swings with the kernel's write-back).

use std::io;
use std::path::{Path as FsPath, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use jetbridge_core::names::VolumeHandle;
use jetbridge_core::ports::{ByteStream, VolumeStore};
use jetbridge_object_store::{Compression, ObjectStoreOptions, ObjectStoreVolumes};
use object_store::path::Path;
use object_store::{ObjectStoreExt, WriteMultipart};

const CHUNK: usize = 1 << 20;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Pseudo-random bytes, three quarters of them from a 16-letter alphabet: hard to
/// compress (zstd keeps about 85-90%), so the numbers show the cost of the pipeline
/// rather than a compression win.
fn artifact_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        if (x >> 60) < 6 {
            out.extend(b.iter().map(|v| b'a' + (v % 16)));
        } else {
            out.extend_from_slice(&b);
        }
    }
    out.truncate(len);
    out
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h
}

fn large_files_tar(total: usize) -> Vec<u8> {
    let file = (64 << 20).min(total.max(1));
    let mut b = tar::Builder::new(Vec::with_capacity(total + (1 << 20)));
    b.append_data(
        &mut header(tar::EntryType::Directory, 0o755, 0),
        "out/",
        io::empty(),
    )
    .unwrap();
    let mut left = total;
    let mut i = 0u64;
    while left > 0 {
        let n = left.min(file);
        let data = artifact_bytes(n, i + 1);
        b.append_data(
            &mut header(tar::EntryType::Regular, 0o644, n as u64),
            format!("out/part-{i:03}.bin"),
            &data[..],
        )
        .unwrap();
        left -= n;
        i += 1;
    }
    b.into_inner().unwrap()
}

fn many_files_tar(files: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let dirs = files.div_ceil(100);
    for d in 0..dirs {
        b.append_data(
            &mut header(tar::EntryType::Directory, 0o755, 0),
            format!("d{d:03}/"),
            io::empty(),
        )
        .unwrap();
        for f in 0..100.min(files - d * 100) {
            let n = 1024 + ((d * 100 + f) * 7919) % 15_000;
            let data = artifact_bytes(n, (d * 100 + f) as u64);
            b.append_data(
                &mut header(tar::EntryType::Regular, 0o644, n as u64),
                format!("d{d:03}/f{f:03}.txt"),
                &data[..],
            )
            .unwrap();
        }
    }
    b.into_inner().unwrap()
}

fn stream_of(data: &Bytes) -> ByteStream {
    let data = data.clone();
    let chunks: Vec<jetbridge_core::Result<Bytes>> = (0..data.len())
        .step_by(CHUNK)
        .map(|i| Ok(data.slice(i..(i + CHUNK).min(data.len()))))
        .collect();
    Box::pin(futures::stream::iter(chunks))
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

struct Row {
    what: String,
    store: Duration,
    fetch: Duration,
    raw_put: Duration,
    raw_get: Duration,
    /// sha256 of the same bytes on one core: every store that checks content pays it.
    sha256: Duration,
    stored: u64,
    bytes: usize,
}

/// Best of `runs` rounds of [`measure_once`], raw and store alternating.
async fn measure(
    dir: &FsPath,
    label: &str,
    tar: &Bytes,
    opts: ObjectStoreOptions,
    runs: usize,
) -> Row {
    let mut best = measure_once(dir, label, tar, opts.clone()).await;
    for _ in 1..runs {
        let r = measure_once(dir, label, tar, opts.clone()).await;
        best.store = best.store.min(r.store);
        best.fetch = best.fetch.min(r.fetch);
        best.raw_put = best.raw_put.min(r.raw_put);
        best.raw_get = best.raw_get.min(r.raw_get);
        best.sha256 = best.sha256.min(r.sha256);
    }
    best
}

async fn measure_once(dir: &FsPath, label: &str, tar: &Bytes, opts: ObjectStoreOptions) -> Row {
    let url = format!("file://{}", dir.display());
    let store = ObjectStoreVolumes::from_url(&url, opts.clone()).unwrap();
    let raw = store.object_store();

    // Raw object_store: multipart put and streaming get of the same bytes.
    let raw_path = Path::from(format!("raw/{}", uuid::Uuid::new_v4().simple()));
    let t = Instant::now();
    let mut w = WriteMultipart::new_with_chunk_size(
        raw.put_multipart(&raw_path).await.unwrap(),
        opts.part_size,
    );
    for i in (0..tar.len()).step_by(CHUNK) {
        w.put(tar.slice(i..(i + CHUNK).min(tar.len())));
        w.wait_for_capacity(opts.parts_in_flight).await.unwrap();
    }
    w.finish().await.unwrap();
    let raw_put = t.elapsed();
    let t = Instant::now();
    let mut s = raw.get(&raw_path).await.unwrap().into_stream();
    let mut n = 0usize;
    while let Some(c) = s.next().await {
        n += c.unwrap().len();
    }
    assert_eq!(n, tar.len());
    let raw_get = t.elapsed();
    raw.delete(&raw_path).await.unwrap();
    let t = Instant::now();
    let digest = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&tar[..])
    };
    std::hint::black_box(digest);
    let sha256 = t.elapsed();

    let h = VolumeHandle::random();
    let t = Instant::now();
    store.create(&h).await.unwrap();
    store.write_tar(&h, stream_of(tar)).await.unwrap();
    store.seal(&h).await.unwrap();
    let put = t.elapsed();
    let stored: u64 = {
        let mut s = raw.list(Some(&store.volume_prefix(&h)));
        let mut total = 0;
        while let Some(m) = s.next().await {
            let m = m.unwrap();
            if m.location.as_ref().contains("/data-") {
                total += m.size;
            }
        }
        total
    };
    let t = Instant::now();
    let mut s = store.read_tar(&h).await.unwrap();
    let mut n = 0usize;
    while let Some(c) = s.next().await {
        n += c.unwrap().len();
    }
    let fetch = t.elapsed();
    assert!(n >= tar.len() / 2, "read back {n} bytes");
    store.delete(&h).await.unwrap();
    Row {
        what: label.to_owned(),
        store: put,
        fetch,
        raw_put,
        raw_get,
        sha256,
        stored,
        bytes: tar.len(),
    }
}

fn print_row(r: &Row) {
    println!(
        "{:<44} store {:>7.1} MiB/s (raw put {:>7.1}, ratio {:.2})   fetch {:>7.1} MiB/s (raw get {:>7.1}, ratio {:.2})   sha256 alone {:>7.1} MiB/s   stored {:.1}% of the tar",
        r.what,
        mbps(r.bytes, r.store),
        mbps(r.bytes, r.raw_put),
        r.raw_put.as_secs_f64() / r.store.as_secs_f64(),
        mbps(r.bytes, r.fetch),
        mbps(r.bytes, r.raw_get),
        r.raw_get.as_secs_f64() / r.fetch.as_secs_f64(),
        mbps(r.bytes, r.sha256),
        100.0 * r.stored as f64 / r.bytes as f64,
    );
}

fn source_files(root: &FsPath) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name == "target" || name.starts_with('.') {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

fn compression_report(root: &FsPath) {
    let mut b = tar::Builder::new(Vec::new());
    for f in source_files(root) {
        let rel = f.strip_prefix(root).unwrap_or(&f);
        let _ = b.append_path_with_name(&f, rel);
    }
    let tar = b.into_inner().unwrap();
    println!(
        "\nzstd on this repository's sources ({}: {:.1} MiB of tar)",
        root.display(),
        tar.len() as f64 / (1 << 20) as f64
    );
    for level in [1, 3, 9, 19] {
        let t = Instant::now();
        let out = zstd::bulk::compress(&tar, level).unwrap();
        let c = t.elapsed();
        let t = Instant::now();
        let back = zstd::bulk::decompress(&out, tar.len()).unwrap();
        let d = t.elapsed();
        assert_eq!(back.len(), tar.len());
        println!(
            "  level {level:>2}: ratio {:>5.2}x  compress {:>7.1} MiB/s ({:.1} ms CPU)  decompress {:>7.1} MiB/s",
            tar.len() as f64 / out.len() as f64,
            mbps(tar.len(), c),
            c.as_secs_f64() * 1000.0,
            mbps(tar.len(), d),
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not run this harness.
    let total = env_usize("JB_BENCH_BYTES", 1 << 30);
    let files = env_usize("JB_BENCH_FILES", 10_000);
    let base = std::env::var_os("JB_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let sources = std::env::var_os("JB_BENCH_SOURCES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    println!(
        "object store volumes on a local directory ({}), {} CPUs",
        dir.path().display(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let large = Bytes::from(large_files_tar(total));
    let many = Bytes::from(many_files_tar(files));
    let configs: Vec<(&str, ObjectStoreOptions)> = vec![
        ("zstd-1 (default)", ObjectStoreOptions::default()),
        (
            "zstd-3",
            ObjectStoreOptions::default().with_compression(Compression::Zstd { level: 3 }),
        ),
        (
            "zstd-3, 2 workers",
            ObjectStoreOptions::default()
                .with_compression(Compression::Zstd { level: 3 })
                .with_zstd_workers(2),
        ),
        (
            "none",
            ObjectStoreOptions::default().with_compression(Compression::None),
        ),
    ];
    let only = std::env::var("JB_BENCH_ONLY").unwrap_or_default();
    let runs = env_usize("JB_BENCH_RUNS", 3).max(1);
    let configs: Vec<_> = configs
        .into_iter()
        .filter(|(name, _)| name.contains(only.as_str()))
        .collect();
    rt.block_on(async {
        for (name, opts) in &configs {
            let r = measure(
                dir.path(),
                &format!(
                    "{:.0} MiB large files, {name}",
                    total as f64 / (1 << 20) as f64
                ),
                &large,
                opts.clone(),
                runs,
            )
            .await;
            print_row(&r);
        }
        for (name, opts) in &configs {
            let r = measure(
                dir.path(),
                &format!(
                    "{files} small files ({:.0} MiB), {name}",
                    many.len() as f64 / (1 << 20) as f64
                ),
                &many,
                opts.clone(),
                runs,
            )
            .await;
            print_row(&r);
        }
    });
    compression_report(&sources);
}
