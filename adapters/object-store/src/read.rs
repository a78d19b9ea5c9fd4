//! `read_tar`: fetch a data object, verify all of it against the manifest, and only
//! then stream it out.
//!
//! Pass 1 downloads the object into an anonymous temporary file while a blocking
//! thread decompresses, parses and hashes it (a local object is read in place,
//! without a copy). Nothing reaches the caller unless the tree digest, size, file
//! count and object size all match the manifest. Pass 2 decompresses the verified
//! local copy into the caller's stream. Cost: local disk for one compressed copy, two
//! decompressions and one sha256 of the content per read.
//!
//! A stored archive that has replaced paths or hard links (rare: only when the writer
//! sent them) is rebuilt into one entry per path from a decompressed local copy.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use jetbridge_core::ports::ByteStream;
use jetbridge_core::{Error, ErrorKind, Result};
use object_store::path::Path;
use object_store::{GetResultPayload, ObjectStore, ObjectStoreExt};
use tar::{EntryType, Header};
use tokio::sync::mpsc;

use crate::error::{Backend, io_err, store_err};
use crate::pipe::{CHANNEL_DEPTH, ChannelReader, ChannelWriter, Chunk, receiver_stream};
use crate::tar_tree::{FailSlot, HashOnly, Hashing, VNode, VTree, ingest, take_failed};

/// Read size of the output stream.
const READ_CHUNK: usize = 256 * 1024;

/// What a read checks the object against.
#[derive(Debug, Clone)]
pub(crate) struct Expect {
    pub volume: String,
    pub zstd: bool,
    pub object_size: u64,
    /// CRC32C of the whole stored object, hex.
    pub object_crc32c: String,
    pub digest: jetbridge_core::digest::Digest,
    pub size: u64,
    pub files: u64,
}

/// Copies everything read through it into a file, counting and hashing.
struct Tee<R> {
    inner: R,
    copy: Option<File>,
    count: u64,
    crc: crc_fast::Digest,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        if let Some(f) = &mut self.copy {
            f.write_all(&buf[..n])?;
        }
        self.count += n as u64;
        Ok(n)
    }
}

/// Decompress everything `src` yields into `tx`, in chunks. A decompression error is
/// sent on as well, so the parser reports it where it meets it.
fn decompress_into<R: Read>(
    src: &mut R,
    tx: &std::sync::mpsc::SyncSender<io::Result<Bytes>>,
) -> io::Result<()> {
    let mut dec = zstd::stream::read::Decoder::new(src)?;
    loop {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut filled = 0;
        while filled < buf.len() {
            match dec.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let again = io::Error::new(e.kind(), e.to_string());
                    let _ = tx.send(Err(e));
                    return Err(again);
                }
            }
        }
        if filled == 0 {
            break;
        }
        buf.truncate(filled);
        if tx.send(Ok(Bytes::from(buf))).is_err() {
            // The parser stopped (it has an error of its own to report).
            return Ok(());
        }
    }
    Ok(())
}

/// A blocking [`Read`] over decompressed chunks; the end of the channel is the end.
struct Chunks {
    rx: std::sync::mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.recv() {
                Ok(Ok(b)) => self.cur = b,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

fn corrupt(volume: &str, what: impl std::fmt::Display) -> Error {
    Error::corrupt(format!("volume {volume}: {what}"))
}

/// Decompress (or not), parse and hash everything `reader` yields; check it against
/// `want`. Returns the modelled tree.
fn verify<R: Read + Send>(
    reader: R,
    copy: Option<File>,
    want: &Expect,
    failed: &FailSlot,
) -> Result<VTree> {
    let mut tee = Tee {
        inner: reader,
        copy,
        count: 0,
        crc: crate::checksum::crc32c(),
    };
    let as_corrupt = |e: Error| {
        if e.kind() == ErrorKind::Invalid {
            // The object was checked when it was written: not parsing now means it
            // changed since.
            corrupt(
                &want.volume,
                format_args!("stored data is damaged: {}", e.message()),
            )
        } else {
            e
        }
    };
    let tree = if want.zstd {
        // Decompression on its own thread, parsing and hashing on this one: the two
        // costs overlap instead of adding up.
        std::thread::scope(|s| -> Result<VTree> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Bytes>>(CHANNEL_DEPTH);
            let tee = &mut tee;
            let decoder = s.spawn(move || decompress_into(tee, &tx));
            let mut archive = tar::Archive::new(Chunks {
                rx,
                cur: Bytes::new(),
            });
            let parsed = ingest(
                &mut archive,
                &mut HashOnly::default(),
                failed,
                Hashing::Inline,
            )
            .and_then(|tree| {
                // The rest of the frame: its checksum is checked at the end.
                io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(|e| {
                    crate::tar_tree::read_err(failed, e, "reading the end of the data")
                })?;
                Ok(tree)
            });
            // Dropping the receiver (on error) stops the decompressor.
            let done = decoder.join();
            let tree = parsed.map_err(as_corrupt)?;
            match done {
                Ok(r) => r
                    .map_err(|e| crate::tar_tree::read_err(failed, e, "decompressing the data"))
                    .map_err(as_corrupt)?,
                Err(_) => return Err(Error::other("the decompressor thread panicked")),
            }
            Ok(tree)
        })?
    } else {
        let mut archive = tar::Archive::new(&mut tee);
        ingest(
            &mut archive,
            &mut HashOnly::default(),
            failed,
            Hashing::Inline,
        )
        .map_err(as_corrupt)?
    };
    // Anything after the archive still counts towards the object size.
    io::copy(&mut tee, &mut io::sink())
        .map_err(|e| crate::tar_tree::read_err(failed, e, "reading the end of the data"))
        .map_err(as_corrupt)?;
    if let Some(f) = &mut tee.copy {
        f.flush()
            .map_err(|e| io_err(e, "writing the temporary copy"))?;
    }
    if tee.count != want.object_size {
        return Err(corrupt(
            &want.volume,
            format_args!(
                "the data object has {} bytes, the manifest says {}",
                tee.count, want.object_size
            ),
        ));
    }
    let object_crc32c = crate::checksum::to_hex(crate::checksum::value(&tee.crc));
    if object_crc32c != want.object_crc32c {
        return Err(corrupt(
            &want.volume,
            "the data object's CRC32C does not match the manifest",
        ));
    }
    let s = tree.summary();
    if s.digest != want.digest || s.size != want.size || s.files != want.files {
        return Err(corrupt(
            &want.volume,
            format_args!(
                "content digest {} does not match the sealed digest {}",
                s.digest, want.digest
            ),
        ));
    }
    Ok(tree)
}

/// Fetch, verify and stream the data object at `path`.
pub(crate) async fn read_verified(
    store: Arc<dyn ObjectStore>,
    path: &Path,
    want: Expect,
    backend: Backend,
    temp_dir: Option<PathBuf>,
) -> Result<ByteStream> {
    let got = store.get(path).await.map_err(|e| {
        let e = store_err(e, backend, format_args!("reading {path}"));
        if e.kind() == ErrorKind::NotFound {
            corrupt(
                &want.volume,
                "the data object of a sealed volume is missing",
            )
        } else {
            e
        }
    })?;
    let failed = FailSlot::default();
    let want2 = want.clone();
    let (file, tree) = match got.payload {
        GetResultPayload::File(file, _) => {
            // A local object: verify it in place and stream from the same open file,
            // which keeps its content even if the object is replaced or deleted.
            let f2 = failed.clone();
            tokio::task::spawn_blocking(move || -> Result<(File, VTree)> {
                let mut file = file;
                let tree = verify(BufReader::new(&mut file), None, &want2, &f2)?;
                Ok((file, tree))
            })
            .await
            .map_err(|e| Error::other(format!("the verify worker failed: {e}")))??
        }
        GetResultPayload::Stream(stream) => {
            let copy = match &temp_dir {
                Some(d) => tempfile::tempfile_in(d),
                None => tempfile::tempfile(),
            }
            .map_err(|e| io_err(e, "creating a temporary file for the download"))?;
            let (tx, rx) = mpsc::channel::<Chunk>(CHANNEL_DEPTH);
            let f2 = failed.clone();
            let mut job = tokio::task::spawn_blocking(move || -> Result<(File, VTree)> {
                let mut copy = copy;
                let writer = copy
                    .try_clone()
                    .map_err(|e| io_err(e, "opening the temporary file"))?;
                let tree = verify(
                    BufReader::with_capacity(READ_CHUNK, ChannelReader::new(rx, f2.clone())),
                    Some(writer),
                    &want2,
                    &f2,
                )?;
                copy.rewind()
                    .map_err(|e| io_err(e, "rewinding the temporary file"))?;
                Ok((copy, tree))
            });
            let p = path.clone();
            let input: ByteStream = Box::pin(stream.map(move |r| {
                r.map_err(|e| store_err(e, backend, format_args!("downloading {p}")))
            }));
            let fwd = crate::pipe::forward(input, tx);
            tokio::pin!(fwd);
            let mut forwarded = false;
            loop {
                tokio::select! {
                    r = &mut job => break r
                        .map_err(|e| Error::other(format!("the verify worker failed: {e}")))??,
                    () = &mut fwd, if !forwarded => forwarded = true,
                }
            }
        }
    };
    drop(take_failed(&failed));
    let (tx, rx) = mpsc::channel::<Result<Bytes>>(CHANNEL_DEPTH);
    let zstd = want.zstd;
    tokio::task::spawn_blocking(move || {
        let r = if tree.simple {
            stream_out(file, zstd, &tx)
        } else {
            rebuild(file, zstd, &tree, temp_dir.as_deref(), &tx)
        };
        if let Err(e) = r {
            let _ = tx.blocking_send(Err(e));
        }
    });
    Ok(receiver_stream(rx))
}

/// Send the (decompressed) content of `file` as it is.
fn stream_out(mut file: File, zstd: bool, tx: &mpsc::Sender<Result<Bytes>>) -> Result<()> {
    file.rewind()
        .map_err(|e| io_err(e, "rewinding the verified copy"))?;
    let reader = BufReader::with_capacity(READ_CHUNK, file);
    let mut src: Box<dyn Read> = if zstd {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(reader)
                .map_err(|e| io_err(e, "starting the decompressor"))?,
        )
    } else {
        Box::new(reader)
    };
    loop {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut filled = 0;
        // Fill whole chunks: fewer, larger items for the consumer.
        while filled < buf.len() {
            match src.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e, "reading the verified copy")),
            }
        }
        if filled == 0 {
            return Ok(());
        }
        buf.truncate(filled);
        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
            return Ok(()); // Nobody is listening any more.
        }
    }
}

/// Write one entry per path of `tree`, parents first, reading file data from an
/// uncompressed copy of the archive at the positions the verify pass recorded.
fn rebuild(
    mut file: File,
    zstd: bool,
    tree: &VTree,
    temp_dir: Option<&std::path::Path>,
    tx: &mpsc::Sender<Result<Bytes>>,
) -> Result<()> {
    file.rewind()
        .map_err(|e| io_err(e, "rewinding the verified copy"))?;
    let mut plain = if zstd {
        let mut out = match temp_dir {
            Some(d) => tempfile::tempfile_in(d),
            None => tempfile::tempfile(),
        }
        .map_err(|e| io_err(e, "creating a temporary file"))?;
        let mut dec = zstd::stream::read::Decoder::new(BufReader::new(file))
            .map_err(|e| io_err(e, "starting the decompressor"))?;
        io::copy(&mut dec, &mut out).map_err(|e| io_err(e, "decompressing the verified copy"))?;
        out
    } else {
        file
    };
    let writer = ChannelWriter::new(tx.clone(), Ok, READ_CHUNK);
    let mut b = tar::Builder::new(writer);
    let r = (|| -> io::Result<()> {
        for (path, node) in tree.ordered() {
            let mut h = Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match node {
                VNode::Dir { mode } => {
                    h.set_entry_type(EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{path}/"), io::empty())?;
                }
                VNode::File {
                    mode, size, pos, ..
                } => {
                    h.set_entry_type(EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(*size);
                    plain.seek(SeekFrom::Start(*pos))?;
                    let data = (&mut plain).take(*size);
                    b.append_data(&mut h, path, data)?;
                }
                VNode::Symlink { target } => {
                    jetbridge_core::archive::append_symlink(&mut b, path, target, 0)?;
                }
            }
        }
        b.into_inner()?.finish().map(|_| ())
    })();
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(io_err(e, "rebuilding the volume tar")),
    }
}
