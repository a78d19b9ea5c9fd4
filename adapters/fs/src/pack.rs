//! Producing a tar of a sealed tree on a blocking thread, fed to a bounded channel.

use std::cell::Cell;
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use bytes::Bytes;
use jetbridge_core::{Error, Result};
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};
use tokio::sync::mpsc;

use crate::walk::{FileHash, Node, NodeKind};

/// Bytes gathered before a chunk is handed to the consumer.
const OUT_CHUNK: usize = 256 * 1024;

/// A [`Write`] that sends full chunks over a bounded channel (blocking when the
/// consumer is behind) and fails with `BrokenPipe` once the consumer is gone.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(OUT_CHUNK));
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "tar reader went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = OUT_CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= OUT_CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Reads exactly `expected.size` bytes of a file while hashing them, and fails with
/// a `Corrupt` marker if the file is shorter, longer or hashes differently than when
/// it was verified: the last line of defence against a change after verification.
struct CheckedFile<'a> {
    changed: &'a Cell<Option<String>>,
    file: fs::File,
    left: u64,
    hasher: Sha256,
    expected: FileHash,
    rel: String,
}

impl CheckedFile<'_> {
    fn changed(&self) -> io::Error {
        self.changed.set(Some(self.rel.clone()));
        io::Error::other("file changed after it was verified")
    }
}

impl Read for CheckedFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // Also catches growth: one more byte means the file is not what was hashed.
            let mut one = [0u8; 1];
            let extra = self.file.read(&mut one)?;
            let got: [u8; 32] = self.hasher.clone().finalize().into();
            if extra != 0 || got != self.expected.sha256 {
                return Err(self.changed());
            }
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(self.changed());
        }
        self.hasher.update(&buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

/// Write the tree as a tar to `tx`. Errors are sent as the stream's last item.
pub(crate) fn produce(
    root: &Path,
    nodes: Vec<Node>,
    hashes: Vec<Option<FileHash>>,
    tx: mpsc::Sender<Result<Bytes>>,
) {
    let mut builder = tar::Builder::new(ChannelWriter {
        tx: tx.clone(),
        buf: Vec::with_capacity(OUT_CHUNK),
    });
    let changed: Cell<Option<String>> = Cell::new(None);
    let r = (|| -> io::Result<()> {
        for (n, h) in nodes.iter().zip(hashes) {
            let mut header = Header::new_gnu();
            header.set_mode(n.mode);
            header.set_uid(0);
            header.set_gid(0);
            let mtime = n
                .mtime
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            header.set_mtime(mtime);
            match &n.kind {
                NodeKind::Dir => {
                    header.set_entry_type(EntryType::Directory);
                    header.set_size(0);
                    builder.append_data(&mut header, format!("{}/", n.rel), io::empty())?;
                }
                NodeKind::File { .. } => {
                    let Some(h) = h else {
                        changed.set(Some(n.rel.clone()));
                        return Err(io::Error::other("file was not hashed"));
                    };
                    header.set_entry_type(EntryType::Regular);
                    header.set_size(h.size);
                    let file = crate::walk::open_file(&root.join(&n.rel))?;
                    let data = CheckedFile {
                        changed: &changed,
                        file,
                        left: h.size,
                        hasher: Sha256::new(),
                        expected: h,
                        rel: n.rel.clone(),
                    };
                    builder.append_data(&mut header, &n.rel, data)?;
                }
                NodeKind::Symlink { target } => {
                    // Byte for byte: the link the task made is the link the reader gets.
                    jetbridge_core::archive::append_symlink(&mut builder, &n.rel, target, mtime)?;
                }
            }
        }
        builder.finish()?;
        builder.get_mut().flush()
    })();
    if let Err(e) = r {
        let err = if let Some(rel) = changed.take() {
            Error::corrupt(format!("{rel:?} changed after the volume was verified"))
        } else if e.kind() == io::ErrorKind::BrokenPipe {
            return; // Nobody is listening any more.
        } else {
            crate::error::io_err(e, "producing the volume tar")
        };
        let _ = tx.blocking_send(Err(err));
    }
}
