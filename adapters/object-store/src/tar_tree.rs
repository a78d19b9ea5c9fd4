//! Reading a tar stream as the tree it describes, with core's entry rules.
//!
//! [`ingest`] walks a tar archive once, keeps a model of the tree an extraction would
//! leave behind ([`VTree`]) and hands every entry to an [`EntrySink`] (the writer
//! re-emits canonical entries; the reader only hashes). The rules are
//! [`jetbridge_core::archive`]'s, the same the directory store applies on disk, so the
//! model gives the same [`TreeDigest`] a real extraction does: symlinks are kept as
//! they are wherever they point, nothing is written through one, hard links become a
//! copy of an earlier file, setuid and setgid are dropped, GNU sparse files are
//! expanded. Every violation is `Invalid`.

use std::collections::BTreeMap;
use std::io::{self, Read};

use jetbridge_core::archive::{self, EntryKind, Existing, IMPLIED_DIR_MODE, Kind};
use jetbridge_core::digest::{Digest, TreeDigest, TreeEntry};
use jetbridge_core::{Error, Result};
use sha2::{Digest as _, Sha256};

/// One node of the modelled tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VNode {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        size: u64,
        sha256: [u8; 32],
        /// Where the data starts in the archive being read (as `tar` reports it).
        pos: u64,
        /// Which file of the archive (0, 1, ...) holds the data; a hard link shares it.
        id: usize,
    },
    Symlink {
        target: String,
    },
}

/// Digest, total size and file count of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub digest: Digest,
    pub size: u64,
    pub files: u64,
}

/// The tree an extraction of the archive would leave, path by path.
#[derive(Debug, Default, Clone)]
pub(crate) struct VTree {
    pub nodes: BTreeMap<String, VNode>,
    /// Whether the archive is its own canonical form: no path written twice (other
    /// than a directory listed again) and no hard links. A simple archive can be
    /// handed out as it is; another one has to be rebuilt from [`Self::nodes`].
    pub simple: bool,
    /// Regular file entries seen so far (the next file's id).
    pub file_entries: usize,
}

impl VTree {
    fn new() -> Self {
        VTree {
            nodes: BTreeMap::new(),
            simple: true,
            file_entries: 0,
        }
    }

    /// Set the sha256 of every file from `hashes`, the digests of the archive's file
    /// entries in order (when [`ingest`] was told not to hash).
    pub(crate) fn fill_hashes(&mut self, hashes: &[[u8; 32]]) -> Result<()> {
        if hashes.len() != self.file_entries {
            return Err(Error::other(format!(
                "{} file digests for {} files",
                hashes.len(),
                self.file_entries
            )));
        }
        for node in self.nodes.values_mut() {
            if let VNode::File { sha256, id, .. } = node {
                *sha256 = hashes[*id];
            }
        }
        Ok(())
    }

    /// The [`TreeDigest`] of the tree.
    pub(crate) fn summary(&self) -> Summary {
        let mut td = TreeDigest::new();
        for (path, node) in &self.nodes {
            match node {
                VNode::Dir { mode } => td.add(path, TreeEntry::Dir { mode: *mode }),
                VNode::File {
                    mode, size, sha256, ..
                } => td.add(
                    path,
                    TreeEntry::File {
                        mode: *mode,
                        size: *size,
                        sha256,
                    },
                ),
                VNode::Symlink { target } => td.add(path, TreeEntry::Symlink { target }),
            }
        }
        let size = td.size();
        let files = td.files();
        Summary {
            digest: td.finish(),
            size,
            files,
        }
    }

    /// Nodes in depth-first order with sorted siblings (`a`, `a/b`, `a-c`): parents
    /// always come before their children.
    pub(crate) fn ordered(&self) -> Vec<(&String, &VNode)> {
        let mut v: Vec<_> = self.nodes.iter().collect();
        v.sort_by(|a, b| a.0.split('/').cmp(b.0.split('/')));
        v
    }
}

/// What [`ingest`] reports for each entry it accepts.
pub(crate) trait EntrySink {
    /// A directory the archive implies (a parent it never listed).
    fn implied_dir(&mut self, path: &str) -> Result<()>;
    /// A directory entry.
    fn dir(&mut self, path: &str, mode: u32, mtime: u64) -> Result<()>;
    /// A regular file of `size` bytes (a GNU sparse file already expanded): the sink
    /// must read `data` to its end (hashing and counting what it reads through it).
    fn file(
        &mut self,
        path: &str,
        mode: u32,
        mtime: u64,
        size: u64,
        data: &mut HashingReader<'_>,
    ) -> Result<()>;
    /// A symbolic link.
    fn symlink(&mut self, path: &str, target: &str, mtime: u64) -> Result<()>;
    /// A hard link to the regular file at `target`.
    fn hard_link(&mut self, path: &str, target: &str, mtime: u64) -> Result<()>;
}

/// A reader that counts and (unless told not to) hashes what passes through it.
pub(crate) struct HashingReader<'a> {
    inner: &'a mut dyn Read,
    hasher: Option<Sha256>,
    read: u64,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.read += n as u64;
        Ok(n)
    }
}

/// Where an input error is kept so that it wins over the tar parser's view of it.
pub(crate) use jetbridge_core::ports::bridge::FailSlot;

/// Turn a read-side error into the input's own error when there is one, otherwise
/// into `Invalid` (a malformed or truncated archive).
pub(crate) fn read_err(failed: &FailSlot, e: io::Error, what: &str) -> Error {
    if let Some(err) = take_failed(failed) {
        return err;
    }
    Error::invalid(format!("{what}: {e}")).with_source(e)
}

/// The input's own error, if it failed.
pub(crate) fn take_failed(failed: &FailSlot) -> Option<Error> {
    failed.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Whether [`ingest`] hashes file data itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hashing {
    /// Hash every file as it is read.
    Inline,
    /// Leave the digests zero; the caller hashes the file entries elsewhere (another
    /// thread) and calls [`VTree::fill_hashes`].
    Deferred,
}

/// Read `archive` to its end-of-archive marker, checking every entry, feeding `sink`
/// and modelling the resulting tree.
pub(crate) fn ingest<R: Read>(
    archive: &mut tar::Archive<R>,
    sink: &mut dyn EntrySink,
    failed: &FailSlot,
    hashing: Hashing,
) -> Result<VTree> {
    let mut tree = VTree::new();
    let entries = archive
        .entries()
        .map_err(|e| read_err(failed, e, "reading the archive"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| read_err(failed, e, "reading an archive entry"))?;
        one_entry(&mut tree, &mut entry, sink, failed, hashing)?;
    }
    Ok(tree)
}

fn one_entry<R: Read>(
    tree: &mut VTree,
    entry: &mut tar::Entry<'_, R>,
    sink: &mut dyn EntrySink,
    failed: &FailSlot,
    hashing: Hashing,
) -> Result<()> {
    let Some(e) = archive::read_entry(entry).map_err(|e| take_failed(failed).unwrap_or(e))? else {
        return Ok(());
    };
    if e.path.is_empty() {
        // The archive root (`./`): its mode belongs to the volume, not the archive.
        return Ok(());
    }
    let plan = archive::plan(tree, &e)?;
    for d in plan.implied_dirs {
        sink.implied_dir(&d)?;
        tree.nodes.insert(
            d,
            VNode::Dir {
                mode: IMPLIED_DIR_MODE,
            },
        );
    }
    if plan.replace.is_some() {
        // Not its own canonical form any more: a path is written twice.
        tree.simple = false;
        tree.nodes.remove(&e.path);
    }
    let (rel, mode, mtime) = (e.path, e.mode, e.mtime);
    match e.kind {
        EntryKind::File => {
            let pos = entry.raw_file_position();
            let want = e.size;
            let mut data = HashingReader {
                inner: entry,
                hasher: (hashing == Hashing::Inline).then(Sha256::new),
                read: 0,
            };
            let r = sink.file(&rel, mode, mtime, want, &mut data);
            if let Err(e) = r {
                return Err(take_failed(failed).unwrap_or(e));
            }
            let got = data.read;
            if got != want {
                // The input ended inside this file's data.
                if let Some(err) = take_failed(failed) {
                    return Err(err);
                }
                return Err(Error::invalid(format!(
                    "the archive ends inside {rel:?} ({got} of {want} bytes)"
                )));
            }
            let sha256: [u8; 32] = data.hasher.map_or([0; 32], |h| h.finalize().into());
            let id = tree.file_entries;
            tree.file_entries += 1;
            tree.nodes.insert(
                rel,
                VNode::File {
                    mode,
                    size: got,
                    sha256,
                    pos,
                    id,
                },
            );
        }
        EntryKind::Dir => {
            sink.dir(&rel, mode, mtime)?;
            tree.nodes.insert(rel, VNode::Dir { mode });
        }
        EntryKind::Symlink { target } => {
            sink.symlink(&rel, &target, mtime)?;
            tree.nodes.insert(rel, VNode::Symlink { target });
        }
        EntryKind::HardLink { target } => {
            // The plan checked that `target` is a regular file of the tree.
            let Some(node @ VNode::File { .. }) = tree.nodes.get(&target).cloned() else {
                return Err(Error::invalid(format!("hard link {rel:?} has no file")));
            };
            sink.hard_link(&rel, &target, mtime)?;
            tree.simple = false;
            tree.nodes.insert(rel, node);
        }
    }
    Ok(())
}

impl Existing for VTree {
    fn kind(&mut self, path: &str) -> Result<Option<Kind>> {
        Ok(self.nodes.get(path).map(|n| match n {
            VNode::Dir { .. } => Kind::Dir,
            VNode::File { .. } => Kind::File,
            VNode::Symlink { .. } => Kind::Symlink,
        }))
    }
}

/// A sink that only reads file data (hashing happens in [`HashingReader`]).
#[derive(Debug, Default)]
pub(crate) struct HashOnly {
    buf: Vec<u8>,
}

impl EntrySink for HashOnly {
    fn implied_dir(&mut self, _: &str) -> Result<()> {
        Ok(())
    }
    fn dir(&mut self, _: &str, _: u32, _: u64) -> Result<()> {
        Ok(())
    }
    fn file(
        &mut self,
        rel: &str,
        _: u32,
        _: u64,
        _: u64,
        data: &mut HashingReader<'_>,
    ) -> Result<()> {
        if self.buf.is_empty() {
            self.buf = vec![0u8; 256 * 1024];
        }
        loop {
            match data.read(&mut self.buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::invalid(format!("reading {rel:?}: {e}")).with_source(e));
                }
            }
        }
    }
    fn symlink(&mut self, _: &str, _: &str, _: u64) -> Result<()> {
        Ok(())
    }
    fn hard_link(&mut self, _: &str, _: &str, _: u64) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetbridge_core::ErrorKind;
    use tar::EntryType;

    fn model(data: &[u8]) -> Result<VTree> {
        let failed = FailSlot::default();
        ingest(
            &mut tar::Archive::new(data),
            &mut HashOnly::default(),
            &failed,
            Hashing::Inline,
        )
    }

    fn header(kind: EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h
    }

    #[test]
    fn implied_dirs_replacement_and_hard_links() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(
            &mut header(EntryType::Regular, 0o4755, 2),
            "a/b/f",
            &b"hi"[..],
        )
        .unwrap();
        b.append_data(
            &mut header(EntryType::Regular, 0o600, 3),
            "a/b/f",
            &b"new"[..],
        )
        .unwrap();
        b.append_link(&mut header(EntryType::Link, 0o644, 0), "a/g", "a/b/f")
            .unwrap();
        b.append_data(
            &mut header(EntryType::Directory, 0o700, 0),
            "a",
            io::empty(),
        )
        .unwrap();
        let t = model(&b.into_inner().unwrap()).unwrap();
        assert!(!t.simple);
        assert_eq!(t.nodes["a"], VNode::Dir { mode: 0o700 });
        assert_eq!(t.nodes["a/b"], VNode::Dir { mode: 0o755 });
        let VNode::File { mode, size, .. } = &t.nodes["a/b/f"] else {
            panic!("not a file")
        };
        assert_eq!((*mode, *size), (0o600, 3));
        let (VNode::File { sha256: f, .. }, VNode::File { sha256: g, .. }) =
            (&t.nodes["a/b/f"], &t.nodes["a/g"])
        else {
            panic!("not files")
        };
        assert_eq!(f, g);
        assert_eq!(t.summary().size, 6);
    }

    #[test]
    fn setuid_is_dropped_and_simple_archives_say_so() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(
            &mut header(EntryType::Directory, 0o755, 0),
            "d",
            io::empty(),
        )
        .unwrap();
        b.append_data(&mut header(EntryType::Regular, 0o6755, 1), "d/x", &b"x"[..])
            .unwrap();
        let t = model(&b.into_inner().unwrap()).unwrap();
        assert!(t.simple);
        assert!(matches!(t.nodes["d/x"], VNode::File { mode: 0o755, .. }));
    }

    #[test]
    fn links_are_kept_wherever_they_point() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(
            &mut header(EntryType::Directory, 0o755, 0),
            "a",
            io::empty(),
        )
        .unwrap();
        for (path, target) in [("l", "a/up/.."), ("a/up", ".."), ("abs", "/etc/./")] {
            jetbridge_core::archive::append_symlink(&mut b, path, target, 0).unwrap();
        }
        let t = model(&b.into_inner().unwrap()).unwrap();
        assert_eq!(
            t.nodes["abs"],
            VNode::Symlink {
                target: "/etc/./".into()
            }
        );
        assert_eq!(
            t.nodes["l"],
            VNode::Symlink {
                target: "a/up/..".into()
            }
        );
    }

    #[test]
    fn directory_is_never_replaced() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(
            &mut header(EntryType::Directory, 0o755, 0),
            "d",
            io::empty(),
        )
        .unwrap();
        b.append_data(&mut header(EntryType::Regular, 0o644, 1), "d", &b"x"[..])
            .unwrap();
        let e = model(&b.into_inner().unwrap()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
    }
}
