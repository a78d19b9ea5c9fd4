//! `write_tar`: check a tar stream as it arrives, re-emit it in canonical form,
//! compress it and upload it as one multipart object.
//!
//! Three stages run at once: the async side forwards the caller's stream to a blocking
//! thread (bounded channel); the thread parses, checks and hashes every entry and
//! writes canonical entries through the compressor into another bounded channel; the
//! async side puts those chunks into a multipart upload with a few parts in flight.
//! The object becomes visible only when the upload completes; on any failure, or when
//! the caller drops the future, the upload is aborted.

use std::io::{self, Seek, Write};
use std::sync::Arc;

use bytes::Bytes;
use jetbridge_core::ports::ByteStream;
use jetbridge_core::{Error, Result};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use tar::{EntryType, Header};
use tokio::sync::mpsc;

use crate::config::Compression;
use crate::errors::{Backend, store_err};
use crate::pipe::{CHANNEL_DEPTH, ChannelReader, ChannelWriter, Chunk, OUT_CHUNK, forward};
use crate::tree::{EntrySink, FailSlot, HashingReader, Summary, ingest};

/// What a successful upload produced.
#[derive(Debug, Clone)]
pub(crate) struct Uploaded {
    pub summary: Summary,
    /// Bytes of the stored object.
    pub object_size: u64,
    /// sha256 of the stored object.
    pub object_sha256: [u8; 32],
}

/// How to upload.
#[derive(Debug, Clone)]
pub(crate) struct UploadParams {
    pub compression: Compression,
    pub zstd_workers: u32,
    pub part_size: usize,
    pub parts_in_flight: usize,
    pub backend: Backend,
    pub spool_dir: Option<std::path::PathBuf>,
}

/// The compressor (or not) in front of the upload channel.
enum Out {
    Plain(ChannelWriter<Bytes>),
    Zstd(Box<zstd::stream::write::Encoder<'static, ChannelWriter<Bytes>>>),
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Out::Plain(w) => w.write(buf),
            Out::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Out::Plain(w) => w.flush(),
            Out::Zstd(w) => w.flush(),
        }
    }
}

impl Out {
    fn finish(self) -> io::Result<(u64, [u8; 32])> {
        match self {
            Out::Plain(w) => w.finish(),
            Out::Zstd(w) => w.finish()?.finish(),
        }
    }
}

/// Re-emits accepted entries as a canonical tar: GNU headers, owners 0, masked modes,
/// normalized paths, implied directories listed.
struct Canonical<'a> {
    builder: tar::Builder<Out>,
    spool_dir: Option<&'a std::path::Path>,
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

impl EntrySink for Canonical<'_> {
    fn implied_dir(&mut self, path: &str) -> Result<()> {
        let mut h = header(EntryType::Directory, crate::tree::IMPLIED_DIR_MODE, 0);
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
        size_hint: Option<u64>,
        data: &mut HashingReader<'_>,
    ) -> Result<()> {
        let mut h = header(EntryType::Regular, mode, mtime);
        match size_hint {
            Some(size) => {
                h.set_size(size);
                self.builder
                    .append_data(&mut h, path, data)
                    .map_err(|e| out_err(e, "writing a file entry"))
            }
            None => {
                // A sparse file: its expanded size is known only once it is read, and
                // a tar header needs it first. Spool it to a temporary file.
                let mut tmp = match self.spool_dir {
                    Some(d) => tempfile::tempfile_in(d),
                    None => tempfile::tempfile(),
                }
                .map_err(|e| crate::errors::io_err(e, "spooling a sparse file"))?;
                let size =
                    io::copy(data, &mut tmp).map_err(|e| out_err(e, "spooling a sparse file"))?;
                tmp.rewind()
                    .map_err(|e| crate::errors::io_err(e, "spooling a sparse file"))?;
                h.set_size(size);
                self.builder
                    .append_data(&mut h, path, tmp)
                    .map_err(|e| out_err(e, "writing a file entry"))
            }
        }
    }

    fn symlink(&mut self, path: &str, target: &str, mtime: u64) -> Result<()> {
        let mut h = header(EntryType::Symlink, 0o777, mtime);
        self.builder
            .append_link(&mut h, path, target)
            .map_err(|e| out_err(e, "writing a symlink entry"))
    }

    fn hard_link(&mut self, path: &str, target: &str, mtime: u64) -> Result<()> {
        let mut h = header(EntryType::Link, 0o644, mtime);
        self.builder
            .append_link(&mut h, path, target)
            .map_err(|e| out_err(e, "writing a hard link entry"))
    }
}

/// The blocking stage: parse, check, hash, re-emit, compress.
fn process(
    rx: mpsc::Receiver<Chunk>,
    failed: FailSlot,
    out_tx: mpsc::Sender<Bytes>,
    p: &UploadParams,
) -> Result<Uploaded> {
    let writer = ChannelWriter::new(out_tx, |b| b, OUT_CHUNK).hashed();
    let out = match p.compression {
        Compression::None => Out::Plain(writer),
        Compression::Zstd { level } => {
            let mut enc = zstd::stream::write::Encoder::new(writer, level)
                .map_err(|e| out_err(e, "starting the compressor"))?;
            enc.include_checksum(true)
                .map_err(|e| out_err(e, "configuring the compressor"))?;
            if p.zstd_workers > 0 {
                enc.multithread(p.zstd_workers)
                    .map_err(|e| out_err(e, "configuring the compressor"))?;
            }
            Out::Zstd(Box::new(enc))
        }
    };
    let mut sink = Canonical {
        builder: tar::Builder::new(out),
        spool_dir: p.spool_dir.as_deref(),
    };
    let mut archive = tar::Archive::new(ChannelReader::new(rx, failed.clone()));
    let tree = ingest(&mut archive, &mut sink, &failed)?;
    let out = sink
        .builder
        .into_inner()
        .map_err(|e| out_err(e, "finishing the archive"))?;
    let (object_size, object_sha256) = out
        .finish()
        .map_err(|e| out_err(e, "finishing the compressed stream"))?;
    Ok(Uploaded {
        summary: tree.summary(),
        object_size,
        object_sha256,
    })
}

/// A multipart upload that is aborted in the background if it is dropped unfinished
/// (the caller gave up on `write_tar`).
struct UploadGuard(Option<WriteMultipart>);

impl UploadGuard {
    fn get(&mut self) -> Result<&mut WriteMultipart> {
        self.0
            .as_mut()
            .ok_or_else(|| Error::other("the upload is already finished"))
    }
    async fn abort(&mut self) {
        if let Some(w) = self.0.take()
            && let Err(e) = w.abort().await
        {
            tracing::warn!(error = %e, "could not abort a multipart upload; the bucket's lifecycle rule has to");
        }
    }
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        if let Some(w) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                if let Err(e) = w.abort().await {
                    tracing::warn!(error = %e, "could not abort an abandoned multipart upload");
                }
            });
        }
    }
}

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
    let mut up = UploadGuard(Some(WriteMultipart::new_with_chunk_size(mp, p.part_size)));
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
                    let w = up.get()?;
                    w.put(b);
                    if let Err(e) = w.wait_for_capacity(in_flight).await {
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
            let w =
                up.0.take()
                    .ok_or_else(|| Error::other("the upload is already finished"))?;
            // A failed completion leaves at most an incomplete upload, never an object.
            w.finish().await.map_err(|e| {
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
