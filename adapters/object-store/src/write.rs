//! `write_tar`: check a tar stream as it arrives, re-emit it in canonical form,
//! compress it and upload it as one multipart object.
//!
//! Stages run at once, joined by bounded channels: the async side forwards the
//! caller's stream to a blocking thread, which parses and checks every entry and
//! writes canonical entries (stage A); a second thread hashes the files of that
//! canonical stream for the tree digest (B); with zstd a third compresses (C); the
//! async side puts the result into a multipart upload with a few parts in flight.
//! The object becomes visible only when the upload completes; on any failure, or when
//! the caller drops the future, the upload is aborted.

use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use jetbridge_core::ports::ByteStream;
use jetbridge_core::{Error, Result};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tar::{EntryType, Header};
use tokio::sync::mpsc;

use crate::config::Compression;
use crate::error::{Backend, store_err};
use crate::multipart::Parts;
use crate::pipe::{CHANNEL_DEPTH, ChannelReader, ChannelWriter, Chunk, OUT_CHUNK, forward};
use crate::tar_tree::{EntrySink, FailSlot, Hashing, HashingReader, Summary, VTree, ingest};
use sha2::{Digest as _, Sha256};

/// What a successful upload produced.
#[derive(Debug, Clone)]
pub(crate) struct Uploaded {
    pub summary: Summary,
    /// Bytes of the stored object.
    pub object_size: u64,
    /// CRC32C of the stored object.
    pub object_crc32c: u32,
}

/// How to upload.
#[derive(Debug, Clone)]
pub(crate) struct UploadParams {
    pub compression: Compression,
    pub zstd_workers: u32,
    pub part_size: usize,
    pub parts_in_flight: usize,
    pub backend: Backend,
}

/// Read size when copying file data into the canonical archive.
const COPY_BUF: usize = 256 * 1024;

/// Re-emits accepted entries as a canonical tar: GNU headers, owners 0, masked modes,
/// normalized paths, implied directories listed.
struct Canonical {
    builder: tar::Builder<ChannelWriter<Bytes>>,
}

fn header(kind: EntryType, mode: u32, mtime: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(0);
    h
}

fn out_err(e: io::Error, what: &str) -> Error {
    Error::other(format!("{what}: {e}")).with_source(e)
}

impl EntrySink for Canonical {
    fn implied_dir(&mut self, path: &str) -> Result<()> {
        let mut h = header(
            EntryType::Directory,
            jetbridge_core::archive::IMPLIED_DIR_MODE,
            0,
        );
        self.builder
            .append_data(&mut h, format!("{path}/"), io::empty())
            .map_err(|e| out_err(e, "writing a directory entry"))
    }

    fn dir(&mut self, path: &str, mode: u32, mtime: u64) -> Result<()> {
        let mut h = header(EntryType::Directory, mode, mtime);
        self.builder
            .append_data(&mut h, format!("{path}/"), io::empty())
            .map_err(|e| out_err(e, "writing a directory entry"))
    }

    fn file(
        &mut self,
        path: &str,
        mode: u32,
        mtime: u64,
        size: u64,
        data: &mut HashingReader<'_>,
    ) -> Result<()> {
        // The size is known up front, a GNU sparse file's expanded size too.
        let mut h = header(EntryType::Regular, mode, mtime);
        h.set_size(size);
        // `io::copy` inside `append_data` moves 8 KiB per call unless the reader is
        // buffered; large reads keep the per-call cost out of it.
        let cap = usize::try_from(size)
            .unwrap_or(COPY_BUF)
            .clamp(512, COPY_BUF);
        let data = io::BufReader::with_capacity(cap, data);
        self.builder
            .append_data(&mut h, path, data)
            .map_err(|e| out_err(e, "writing a file entry"))
    }

    fn symlink(&mut self, path: &str, target: &str, mtime: u64) -> Result<()> {
        // Byte for byte: the link the task made is the link the reader gets.
        jetbridge_core::archive::append_symlink(&mut self.builder, path, target, mtime)
            .map_err(|e| out_err(e, "writing a symlink entry"))
    }

    fn hard_link(&mut self, path: &str, target: &str, mtime: u64) -> Result<()> {
        let mut h = header(EntryType::Link, 0o644, mtime);
        self.builder
            .append_link(&mut h, path, target)
            .map_err(|e| out_err(e, "writing a hard link entry"))
    }
}

/// A blocking [`Read`] over a channel of chunks that hands every chunk on (`next`)
/// as it arrives, before its bytes are read.
struct Forwarding<'a, F> {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
    next: &'a mut F,
}

impl<F: FnMut(Bytes) -> io::Result<()>> Read for Forwarding<'_, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => {
                    (self.next)(b.clone())?;
                    self.cur = b;
                }
                // Stage A is done (or failed, in which case its error is reported).
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

/// Stage B: parse the canonical tar stage A writes (well formed: A made it), hash
/// every regular file's data in entry order, and hand each chunk on unchanged.
fn hash_entries(
    rx: mpsc::Receiver<Bytes>,
    mut next: impl FnMut(Bytes) -> io::Result<()>,
) -> io::Result<Vec<[u8; 32]>> {
    let reader = Forwarding {
        rx,
        cur: Bytes::new(),
        next: &mut next,
    };
    let mut archive = tar::Archive::new(reader);
    let mut hashes = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != EntryType::Regular {
            continue;
        }
        let mut h = Sha256::new();
        loop {
            match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => h.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        hashes.push(h.finalize().into());
    }
    // The end-of-archive blocks still go on.
    io::copy(&mut archive.into_inner(), &mut io::sink())?;
    Ok(hashes)
}

/// Stage C (zstd only): compress what stage B hands on into the upload channel.
/// Returns the compressed size and its CRC32C.
fn compress(
    rx: std::sync::mpsc::Receiver<Bytes>,
    out_tx: mpsc::Sender<Bytes>,
    level: i32,
    workers: u32,
) -> io::Result<(u64, u32)> {
    let writer = ChannelWriter::new(out_tx, |b| b, OUT_CHUNK).checksummed();
    let mut enc = zstd::stream::write::Encoder::new(writer, level)?;
    enc.include_checksum(true)?;
    if workers > 0 {
        enc.multithread(workers)?;
    }
    for b in rx {
        enc.write_all(&b)?;
    }
    enc.finish()?.finish()
}

fn joined<T>(r: std::thread::Result<io::Result<T>>, what: &str) -> Result<T> {
    match r {
        Ok(r) => r.map_err(|e| out_err(e, what)),
        Err(_) => Err(Error::other(format!("{what}: the worker thread panicked"))),
    }
}

/// The blocking side, three stages on their own threads so they use every core:
/// A parses and checks the input and re-emits it in canonical form; B hashes each
/// file of that canonical stream (the tree digest) and checksums it; C compresses.
/// Chunks pass between them by reference, never copied.
fn process(
    rx: mpsc::Receiver<Chunk>,
    failed: FailSlot,
    out_tx: mpsc::Sender<Bytes>,
    p: &UploadParams,
) -> Result<Uploaded> {
    let (mid_tx, mid_rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    std::thread::scope(|s| {
        let (stage_b, stage_c) = match p.compression {
            Compression::None => {
                let b = s.spawn(move || {
                    let mut crc = crate::checksum::crc32c();
                    let mut size = 0u64;
                    let hashes = hash_entries(mid_rx, |b| {
                        crc.update(&b);
                        size += b.len() as u64;
                        out_tx.blocking_send(b).map_err(|_| {
                            io::Error::new(io::ErrorKind::BrokenPipe, "the upload went away")
                        })
                    })?;
                    Ok((hashes, Some((size, crate::checksum::value(&crc)))))
                });
                (b, None)
            }
            Compression::Zstd { level } => {
                let (c_tx, c_rx) = std::sync::mpsc::sync_channel::<Bytes>(CHANNEL_DEPTH);
                let workers = p.zstd_workers;
                let c = s.spawn(move || compress(c_rx, out_tx, level, workers));
                let b = s.spawn(move || {
                    let hashes = hash_entries(mid_rx, |b| {
                        c_tx.send(b).map_err(|_| {
                            io::Error::new(io::ErrorKind::BrokenPipe, "the compressor went away")
                        })
                    })?;
                    Ok((hashes, None))
                });
                (b, Some(c))
            }
        };
        // Stage A, on this thread. Its writer is dropped when it returns, which ends
        // stage B's input either way.
        let a = (|| -> Result<VTree> {
            let mut sink = Canonical {
                builder: tar::Builder::new(ChannelWriter::new(mid_tx, |b| b, OUT_CHUNK)),
            };
            let mut archive = tar::Archive::new(ChannelReader::new(rx, failed.clone()));
            let tree = ingest(&mut archive, &mut sink, &failed, Hashing::Deferred)?;
            let w = sink
                .builder
                .into_inner()
                .map_err(|e| out_err(e, "finishing the archive"))?;
            w.finish()
                .map_err(|e| out_err(e, "finishing the archive"))?;
            Ok(tree)
        })();
        let b = joined(stage_b.join(), "hashing the archive");
        let c = stage_c.map(|c| joined(c.join(), "compressing the archive"));
        // A's error is the cause; B and C only see their input end early.
        let mut tree = a?;
        let (hashes, plain) = b?;
        let (object_size, object_crc32c) = match (plain, c) {
            (Some(sc), _) => sc,
            (None, Some(c)) => c?,
            (None, None) => return Err(Error::other("no stage produced the object")),
        };
        tree.fill_hashes(&hashes)?;
        Ok(Uploaded {
            summary: tree.summary(),
            object_size,
            object_crc32c,
        })
    })
}

/// A multipart upload that is aborted in the background if it is dropped unfinished
/// (the caller gave up on `write_tar`).
/// Upload `input` (a plain tar) to `path`. On error nothing is visible at `path`.
pub(crate) async fn upload(
    store: Arc<dyn ObjectStore>,
    path: &Path,
    input: ByteStream,
    p: UploadParams,
) -> Result<Uploaded> {
    let backend = p.backend;
    let in_flight = p.parts_in_flight.max(1);
    let mp = store
        .put_multipart(path)
        .await
        .map_err(|e| store_err(e, backend, format_args!("starting the upload of {path}")))?;
    // Aborted (the abort retried) on every failure, and on drop if cut short.
    let mut up = Parts::new(mp, p.part_size);
    let (in_tx, in_rx) = mpsc::channel::<Chunk>(CHANNEL_DEPTH);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let failed = FailSlot::default();
    let mut job = tokio::task::spawn_blocking(move || process(in_rx, failed, out_tx, &p));
    let fwd = forward(input, in_tx);
    tokio::pin!(fwd);
    let mut forwarded = false;
    let mut out_open = true;
    let part_err = |e| store_err(e, backend, format_args!("uploading {path}"));
    let result: Result<Uploaded> = loop {
        tokio::select! {
            r = &mut job, if !out_open => {
                break r.map_err(|e| Error::other(format!("the tar worker failed: {e}")))
                    .and_then(|r| r);
            }
            () = &mut fwd, if !forwarded => forwarded = true,
            chunk = out_rx.recv(), if out_open => match chunk {
                Some(b) => {
                    up.put(b);
                    if let Err(e) = up.wait_for_capacity(in_flight).await {
                        // Stops the worker: its next send fails.
                        drop(out_rx);
                        up.abort().await;
                        return Err(part_err(e));
                    }
                }
                // The worker is done (either way) and everything it wrote is queued.
                None => out_open = false,
            },
        }
    };
    match result {
        Ok(done) => {
            // The last part's failure is an upload's, not the completion's.
            if let Err(e) = up.flush().await {
                up.abort().await;
                return Err(part_err(e));
            }
            // A failed completion leaves at most an incomplete upload, never an object.
            up.finish().await.map_err(|e| {
                store_err(e, backend, format_args!("completing the upload of {path}"))
            })?;
            Ok(done)
        }
        Err(e) => {
            up.abort().await;
            Err(e)
        }
    }
}
