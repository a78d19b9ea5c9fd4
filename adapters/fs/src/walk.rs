//! Walking a volume's tree, checking what it may contain, hashing it.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use jetbridge_core::archive;
use jetbridge_core::digest::{Digest, TreeDigest, TreeEntry};
use jetbridge_core::{Error, Result};
use sha2::{Digest as _, Sha256};

use crate::error::ctx;

/// Read size for hashing and copying.
pub(crate) const CHUNK: usize = 1 << 20;

/// What a tree node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NodeKind {
    Dir,
    /// A regular file; `size` as seen by the walk (hashing reports what it read).
    File {
        size: u64,
    },
    Symlink {
        target: String,
    },
}

/// One entry under a volume's data directory.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// Relative, `/`-separated path.
    pub rel: String,
    /// Mode bits a volume keeps ([`archive::mode`]).
    pub mode: u32,
    /// Whether the file on disk also has setuid or setgid (dropped when sealing).
    pub special_bits: bool,
    pub mtime: Option<SystemTime>,
    pub kind: NodeKind,
}

/// Content hash and size of one file, as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileHash {
    pub sha256: [u8; 32],
    pub size: u64,
}

/// Digest, total size and file count of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub digest: Digest,
    pub size: u64,
    pub files: u64,
}

/// Absolute path of `rel` under `root`.
pub(crate) fn abs(root: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

/// Walk `root` without following symlinks: parents before children, siblings sorted
/// by name, so the order is deterministic. Symlinks are read (`readlink`), never
/// followed or resolved, whatever they point at. Anything that cannot be in an artifact
/// (devices, sockets, fifos, names or link targets that are not UTF-8) is `Invalid`.
pub(crate) fn scan(root: &Path) -> Result<Vec<Node>> {
    let mut out = Vec::new();
    // Depth-first with an explicit stack; children pushed in reverse so they pop sorted.
    let mut stack: Vec<String> = vec![String::new()];
    while let Some(dir_rel) = stack.pop() {
        let dir_abs = abs(root, &dir_rel);
        let mut names = Vec::new();
        for ent in
            fs::read_dir(&dir_abs).map_err(ctx(format_args!("reading directory {dir_rel:?}")))?
        {
            let ent = ent.map_err(ctx(format_args!("reading directory {dir_rel:?}")))?;
            let name = ent.file_name().into_string().map_err(|n| {
                Error::invalid(format!(
                    "name {:?} in {dir_rel:?} is not UTF-8",
                    n.to_string_lossy()
                ))
            })?;
            names.push(name);
        }
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let rel = if dir_rel.is_empty() {
                name
            } else {
                format!("{dir_rel}/{name}")
            };
            let path = root.join(&rel);
            let md = fs::symlink_metadata(&path).map_err(ctx(format_args!("stat {rel:?}")))?;
            let ft = md.file_type();
            let mode = archive::mode(md.mode());
            let special_bits = md.mode() & 0o6000 != 0;
            let mtime = md.modified().ok();
            let kind = if ft.is_dir() {
                subdirs.push(rel.clone());
                NodeKind::Dir
            } else if ft.is_file() {
                NodeKind::File { size: md.len() }
            } else if ft.is_symlink() {
                let target = fs::read_link(&path)
                    .map_err(ctx(format_args!("reading link {rel:?}")))?
                    .into_os_string();
                let target = archive::symlink_target(target.as_encoded_bytes())
                    .map_err(|e| e.context(format_args!("symlink {rel:?}")))?;
                NodeKind::Symlink { target }
            } else {
                let what = if ft.is_char_device() {
                    "a character device"
                } else if ft.is_block_device() {
                    "a block device"
                } else if ft.is_fifo() {
                    "a fifo"
                } else if ft.is_socket() {
                    "a socket"
                } else {
                    "of an unknown type"
                };
                return Err(Error::invalid(format!(
                    "{rel:?} is {what}; artifacts hold only directories, files and symlinks"
                )));
            };
            out.push(Node {
                rel,
                mode,
                special_bits,
                mtime,
                kind,
            });
        }
        stack.extend(subdirs.into_iter().rev());
    }
    // Sorting on path components gives depth-first order with sorted siblings
    // (`a`, `a/b`, `a-c`), whatever order the walk visited directories in.
    out.sort_by(|a, b| a.rel.split('/').cmp(b.rel.split('/')));
    Ok(out)
}

/// Open the regular file at `path` for reading without following a symlink at the
/// last component (the walk saw every parent as a real directory) and without
/// blocking on a fifo swapped in since; anything but a regular file is refused.
pub(crate) fn open_file(path: &Path) -> io::Result<fs::File> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !f.metadata()?.file_type().is_file() {
        return Err(io::Error::other("no longer a regular file"));
    }
    Ok(f)
}

/// Drop setuid and setgid from the files and directories of `nodes` that have them,
/// so what a mounted reader sees is what the digest says. Through a descriptor opened
/// without following links (`chmod` on a path would follow one).
pub(crate) fn drop_special_bits(root: &Path, nodes: &[Node]) -> Result<()> {
    for n in nodes.iter().filter(|n| n.special_bits) {
        let path = abs(root, &n.rel);
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&path)
            .map_err(ctx(format_args!("opening {:?}", n.rel)))?;
        f.set_permissions(fs::Permissions::from_mode(n.mode))
            .map_err(ctx(format_args!("setting the mode of {:?}", n.rel)))?;
    }
    Ok(())
}

/// Hash a reader in [`CHUNK`] reads.
pub(crate) fn hash_reader(mut r: impl Read, buf: &mut [u8]) -> io::Result<FileHash> {
    let mut h = Sha256::new();
    let mut size = 0u64;
    loop {
        let n = match r.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok(FileHash {
        sha256: h.finalize().into(),
        size,
    })
}

/// How many threads hash files at once.
fn hash_workers(files: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cpus.clamp(1, 4).min(files.max(1))
}

/// Hash every regular file of `nodes` (by index), a few files at a time in parallel.
/// The result has one entry per node (`None` for non-files).
pub(crate) fn hash_files(root: &Path, nodes: &[Node]) -> Result<Vec<Option<FileHash>>> {
    let files: Vec<usize> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.kind, NodeKind::File { .. }))
        .map(|(i, _)| i)
        .collect();
    let results: Mutex<Vec<Option<FileHash>>> = Mutex::new(vec![None; nodes.len()]);
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    let next = AtomicUsize::new(0);
    let work = || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let k = next.fetch_add(1, Ordering::Relaxed);
            let Some(&i) = files.get(k) else { break };
            if lock(&first_err).is_some() {
                break;
            }
            let node = &nodes[i];
            let r = open_file(&abs(root, &node.rel))
                .and_then(|f| hash_reader(f, &mut buf))
                .map_err(ctx(format_args!("hashing {:?}", node.rel)));
            match r {
                Ok(h) => lock(&results)[i] = Some(h),
                Err(e) => {
                    lock(&first_err).get_or_insert(e);
                    break;
                }
            }
        }
    };
    let workers = hash_workers(files.len());
    std::thread::scope(|s| {
        for _ in 1..workers {
            s.spawn(work);
        }
        work();
    });
    if let Some(e) = lock(&first_err).take() {
        return Err(e);
    }
    Ok(results.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// Lock, ignoring poison (the data stays consistent: each slot is written once).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The tree digest of `nodes` with their file hashes.
pub(crate) fn summarize(nodes: &[Node], hashes: &[Option<FileHash>]) -> Summary {
    let mut td = TreeDigest::new();
    for (n, h) in nodes.iter().zip(hashes) {
        match (&n.kind, h) {
            (NodeKind::Dir, _) => td.add(&n.rel, TreeEntry::Dir { mode: n.mode }),
            (NodeKind::File { .. }, Some(h)) => td.add(
                &n.rel,
                TreeEntry::File {
                    mode: n.mode,
                    size: h.size,
                    sha256: &h.sha256,
                },
            ),
            (NodeKind::Symlink { target }, _) => td.add(&n.rel, TreeEntry::Symlink { target }),
            // Unreachable by construction (hash_files fills every file); leaving the
            // file out changes the digest, which then fails verification.
            (NodeKind::File { .. }, None) => {}
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

/// Scan, hash and summarize the tree under `root`.
pub(crate) fn digest_tree(root: &Path) -> Result<(Vec<Node>, Vec<Option<FileHash>>, Summary)> {
    let nodes = scan(root)?;
    let hashes = hash_files(root, &nodes)?;
    let summary = summarize(&nodes, &hashes);
    Ok((nodes, hashes, summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_are_read_not_followed_and_setuid_is_dropped() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        symlink("/etc/passwd", r.join("abs")).unwrap();
        symlink("../../outside", r.join("up")).unwrap();
        symlink("l2", r.join("l1")).unwrap();
        symlink("l1", r.join("l2")).unwrap();
        fs::write(r.join("x"), b"x").unwrap();
        fs::set_permissions(r.join("x"), fs::Permissions::from_mode(0o4755)).unwrap();
        let nodes = scan(r).unwrap();
        let kinds: Vec<_> = nodes.iter().map(|n| (n.rel.as_str(), &n.kind)).collect();
        let link = |t: &str| NodeKind::Symlink { target: t.into() };
        assert_eq!(
            kinds,
            [
                ("abs", &link("/etc/passwd")),
                ("l1", &link("l2")),
                ("l2", &link("l1")),
                ("up", &link("../../outside")),
                ("x", &NodeKind::File { size: 1 }),
            ]
        );
        assert_eq!((nodes[4].mode, nodes[4].special_bits), (0o755, true));
        drop_special_bits(r, &nodes).unwrap();
        let md = fs::metadata(r.join("x")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o755);
        // A symlink swapped in for a file is never opened through.
        assert!(open_file(&r.join("abs")).is_err());
    }

    #[test]
    fn scan_order_is_depth_first_and_sorted() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("a/b")).unwrap();
        fs::write(r.join("a-c"), b"x").unwrap();
        fs::write(r.join("a/b/f"), b"y").unwrap();
        fs::write(r.join("a/z"), b"y").unwrap();
        let rels: Vec<_> = scan(r).unwrap().into_iter().map(|n| n.rel).collect();
        assert_eq!(rels, ["a", "a/b", "a/b/f", "a/z", "a-c"]);
    }
}
