//! Reading a tar stream as the tree it describes, with the filesystem store's rules.
//!
//! [`ingest`] walks a tar archive once, keeps a model of the tree an extraction would
//! leave behind ([`VTree`]) and hands every entry to an [`EntrySink`] (the writer
//! re-emits canonical entries; the reader only hashes). The model gives the same
//! [`TreeDigest`] the directory store computes after a real extraction:
//!
//! - entry paths are relative, UTF-8, without `..`; `.` and empty segments are dropped;
//! - nothing is written through a symlink or a file; missing parents are implied
//!   directories with mode `0755`;
//! - symlink targets are relative and resolve inside the tree (checked when the link
//!   is added and again once the whole archive is in);
//! - hard links point at a regular file this archive holds at that point, and become a
//!   copy of it;
//! - devices, fifos and unknown entry types are refused;
//! - setuid and setgid bits are dropped (mode `& 0o1777`); owners are ignored;
//! - a later entry replaces an earlier file or link at the same path (last one wins); a
//!   directory is never replaced by a non-directory.
//!
//! Every violation is `Invalid`.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read};

use jetbridge_core::digest::{Digest, TreeDigest, TreeEntry};
use jetbridge_core::{Error, Result};
use sha2::{Digest as _, Sha256};
use tar::EntryType;

/// Mode bits kept from an archive: permissions and sticky, not setuid/setgid.
pub(crate) const MODE_MASK: u32 = 0o1777;

/// Mode of directories an archive implies but does not list.
pub(crate) const IMPLIED_DIR_MODE: u32 = 0o755;

/// Symlinks followed while resolving one target before giving up.
const MAX_HOPS: usize = 40;

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
    /// A regular file: the sink must read `data` to its end (hashing and counting
    /// what it reads through it).
    fn file(
        &mut self,
        path: &str,
        mode: u32,
        mtime: u64,
        size_hint: Option<u64>,
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

/// Split an archive path into checked components.
pub(crate) fn components(raw: &[u8], what: &str) -> Result<Vec<String>> {
    let s = std::str::from_utf8(raw).map_err(|_| {
        Error::invalid(format!(
            "{what} {:?} is not UTF-8",
            String::from_utf8_lossy(raw)
        ))
    })?;
    if s.starts_with('/') {
        return Err(Error::invalid(format!("{what} {s:?} is absolute")));
    }
    let mut out = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(Error::invalid(format!("{what} {s:?} contains '..'"))),
            c if c.contains('\0') => {
                return Err(Error::invalid(format!("{what} {s:?} contains NUL")));
            }
            c => out.push(c.to_owned()),
        }
    }
    Ok(out)
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
    // A later entry can change what an earlier link resolves through.
    for (path, node) in &tree.nodes {
        if let VNode::Symlink { target } = node {
            check_symlink(&tree, path, target)?;
        }
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
    let et = entry.header().entry_type();
    if et.is_pax_global_extensions() {
        // Archive-wide metadata (e.g. a commit id from `git archive`): not content.
        return Ok(());
    }
    let comps = components(&entry.path_bytes(), "entry path")?;
    let header = entry.header();
    let mode = header
        .mode()
        .map_err(|e| read_err(failed, e, "reading a mode"))?
        & MODE_MASK;
    let mtime = header.mtime().unwrap_or(0);
    if comps.is_empty() {
        // The archive root (`./`): its mode belongs to the volume, not the archive.
        return if et.is_dir() {
            Ok(())
        } else {
            Err(Error::invalid(
                "a non-directory entry names the archive root",
            ))
        };
    }
    let rel = comps.join("/");
    ensure_parents(tree, &comps, sink)?;
    match et {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            prepare_slot(tree, &rel)?;
            let pos = entry.raw_file_position();
            // A sparse entry expands to more than it stores; others must be whole.
            let expect = (et != EntryType::GNUSparse).then(|| entry.size());
            let mut data = HashingReader {
                inner: entry,
                hasher: (hashing == Hashing::Inline).then(Sha256::new),
                read: 0,
            };
            let r = sink.file(&rel, mode, mtime, expect, &mut data);
            if let Err(e) = r {
                return Err(take_failed(failed).unwrap_or(e));
            }
            let got = data.read;
            if let Some(want) = expect
                && got != want
            {
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
        EntryType::Directory => {
            match tree.nodes.get(&rel) {
                Some(VNode::Dir { .. }) | None => {}
                // A file or link earlier in the archive becomes a directory.
                Some(_) => tree.simple = false,
            }
            sink.dir(&rel, mode, mtime)?;
            tree.nodes.insert(rel, VNode::Dir { mode });
        }
        EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| Error::invalid(format!("symlink {rel:?} has no target")))?;
            let target = std::str::from_utf8(&target)
                .map_err(|_| Error::invalid(format!("symlink {rel:?} target is not UTF-8")))?
                .to_owned();
            check_symlink(tree, &rel, &target)?;
            prepare_slot(tree, &rel)?;
            sink.symlink(&rel, &target, mtime)?;
            tree.nodes.insert(rel, VNode::Symlink { target });
        }
        EntryType::Link => {
            let raw = entry
                .link_name_bytes()
                .ok_or_else(|| Error::invalid(format!("hard link {rel:?} has no target")))?;
            let target = components(&raw, "hard link target")?.join("/");
            let node = match tree.nodes.get(&target) {
                Some(n @ VNode::File { .. }) if target != rel => n.clone(),
                _ => {
                    return Err(Error::invalid(format!(
                        "hard link {rel:?} does not point at a file extracted earlier"
                    )));
                }
            };
            prepare_slot(tree, &rel)?;
            sink.hard_link(&rel, &target, mtime)?;
            tree.simple = false;
            tree.nodes.insert(rel, node);
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            return Err(Error::invalid(format!(
                "entry {rel:?} is a device or fifo; artifacts hold only directories, files and links"
            )));
        }
        other => {
            return Err(Error::invalid(format!(
                "entry {rel:?} has unsupported type {:?}",
                other.as_byte() as char
            )));
        }
    }
    Ok(())
}

/// Make sure every parent of `comps` is a directory of the tree, adding missing ones;
/// a symlink or a file on the way is `Invalid`.
fn ensure_parents(tree: &mut VTree, comps: &[String], sink: &mut dyn EntrySink) -> Result<()> {
    for i in 1..comps.len() {
        let rel = comps[..i].join("/");
        match tree.nodes.get(&rel) {
            Some(VNode::Dir { .. }) => {}
            Some(VNode::Symlink { .. }) => {
                return Err(Error::invalid(format!(
                    "entry {:?} goes through symlink {rel:?}",
                    comps.join("/")
                )));
            }
            Some(VNode::File { .. }) => {
                return Err(Error::invalid(format!(
                    "entry {:?} goes through {rel:?}, which is not a directory",
                    comps.join("/")
                )));
            }
            None => {
                sink.implied_dir(&rel)?;
                tree.nodes.insert(
                    rel,
                    VNode::Dir {
                        mode: IMPLIED_DIR_MODE,
                    },
                );
            }
        }
    }
    Ok(())
}

/// Clear the place for a non-directory entry: a later entry replaces an earlier file
/// or link; a directory is never replaced.
fn prepare_slot(tree: &mut VTree, rel: &str) -> Result<()> {
    match tree.nodes.get(rel) {
        Some(VNode::Dir { .. }) => Err(Error::invalid(format!(
            "entry {rel:?} would replace a directory"
        ))),
        Some(_) => {
            tree.simple = false;
            tree.nodes.remove(rel);
            Ok(())
        }
        None => Ok(()),
    }
}

/// `Invalid` unless the symlink at `link_rel` with `target` stays inside the tree.
pub(crate) fn check_symlink(tree: &VTree, link_rel: &str, target: &str) -> Result<()> {
    if target.is_empty() {
        return Err(Error::invalid(format!(
            "symlink {link_rel:?} has an empty target"
        )));
    }
    if target.starts_with('/') {
        return Err(Error::invalid(format!(
            "symlink {link_rel:?} has an absolute target; only relative links inside the volume are allowed"
        )));
    }
    let parent: Vec<String> = match link_rel.rsplit_once('/') {
        Some((p, _)) => p.split('/').map(str::to_owned).collect(),
        None => Vec::new(),
    };
    if resolves_inside(tree, parent, target) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "symlink {link_rel:?} points outside the volume"
        )))
    }
}

/// Resolve `target` from directory `start` the way the kernel would, following links
/// of the tree, and tell whether the walk stays inside. Stepping above the root at any
/// point counts as leaving it (a consumer may mount the volume anywhere). Missing
/// components are taken literally.
fn resolves_inside(tree: &VTree, start: Vec<String>, target: &str) -> bool {
    let mut stack = start;
    let mut pending: VecDeque<String> = target.split('/').map(str::to_owned).collect();
    let mut hops = 0usize;
    while let Some(c) = pending.pop_front() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                if stack.pop().is_none() {
                    return false;
                }
            }
            _ => {
                stack.push(c);
                if let Some(VNode::Symlink { target: t }) = tree.nodes.get(&stack.join("/")) {
                    hops += 1;
                    // A loop cannot be shown to stay inside: refuse it.
                    if hops > MAX_HOPS || t.starts_with('/') {
                        return false;
                    }
                    stack.pop();
                    for part in t.split('/').rev() {
                        pending.push_front(part.to_owned());
                    }
                }
            }
        }
    }
    true
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
        _: Option<u64>,
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
    fn components_reject_escapes() {
        assert_eq!(components(b"a/./b//c", "p").unwrap(), ["a", "b", "c"]);
        for bad in [&b"../x"[..], b"a/../../x", b"/etc/passwd", b"\xff"] {
            assert_eq!(components(bad, "p").unwrap_err().kind(), ErrorKind::Invalid);
        }
        assert!(components(b"./", "p").unwrap().is_empty());
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
    fn links_through_links_are_checked_at_the_end() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(
            &mut header(EntryType::Directory, 0o755, 0),
            "a",
            io::empty(),
        )
        .unwrap();
        // Inside when added (`a/up` does not exist yet), outside once `a/up` is `..`.
        b.append_link(&mut header(EntryType::Symlink, 0o777, 0), "l", "a/up/..")
            .unwrap();
        b.append_link(&mut header(EntryType::Symlink, 0o777, 0), "a/up", "..")
            .unwrap();
        let e = model(&b.into_inner().unwrap()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
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
