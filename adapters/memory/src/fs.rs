//! A small in-memory filesystem: the tree behind a fake pod and behind a memory volume.
//!
//! Paths handed to [`MemFs`] are absolute (`/a/b`); the root always exists. Nodes are
//! kept in one ordered map keyed by the path without its leading `/`, so a subtree is a
//! contiguous key range and a parent always sorts before its children.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use jetbridge_core::digest::{Digest, TreeDigest, TreeEntry, sha256};
use jetbridge_core::{Error, Result};

/// Mode of directories created implicitly (`mkdir`, parents of tar entries).
pub(crate) const DIR_MODE: u32 = 0o755;
/// Mode of files created by redirections and `touch`.
pub(crate) const FILE_MODE: u32 = 0o644;
/// How many symlinks one lookup may follow, as Linux allows.
const MAX_LINKS: usize = 40;

/// One node of the tree.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: Bytes },
    Symlink { target: String },
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Dir { mode } => write!(f, "Dir({mode:o})"),
            Node::File { mode, data } => write!(f, "File({mode:o}, {} bytes)", data.len()),
            Node::Symlink { target } => write!(f, "Symlink({target:?})"),
        }
    }
}

/// Why a filesystem operation failed, in the words a shell prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FsError {
    NotFound,
    NotADirectory,
    IsADirectory,
    Exists,
    NotEmpty,
    Loop,
    Invalid,
}

impl FsError {
    pub(crate) fn text(self) -> &'static str {
        match self {
            FsError::NotFound => "No such file or directory",
            FsError::NotADirectory => "Not a directory",
            FsError::IsADirectory => "Is a directory",
            FsError::Exists => "File exists",
            FsError::NotEmpty => "Directory not empty",
            FsError::Loop => "Too many levels of symbolic links",
            FsError::Invalid => "Invalid argument",
        }
    }

    /// The port error for a failure seen by a caller outside any shell.
    pub(crate) fn into_error(self, path: &str) -> Error {
        let msg = format!("{path}: {}", self.text());
        match self {
            FsError::NotFound => Error::not_found(msg),
            FsError::Exists => Error::already_exists(msg),
            FsError::NotEmpty | FsError::IsADirectory | FsError::NotADirectory => {
                Error::conflict(msg)
            }
            FsError::Loop | FsError::Invalid => Error::invalid(msg),
        }
    }
}

/// Join `base` (absolute) and `p` (absolute or relative) lexically, resolving `.` and
/// `..` without looking at the tree; `..` at the root stays at the root.
pub(crate) fn join(base: &str, p: &str) -> String {
    let mut parts: Vec<&str> = if p.starts_with('/') {
        Vec::new()
    } else {
        base.split('/').filter(|s| !s.is_empty()).collect()
    };
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = String::from("/");
    out.push_str(&parts.join("/"));
    out
}

/// The last segment of a path (`/a/b` -> `b`).
pub(crate) fn basename(p: &str) -> &str {
    p.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

fn parent_key(key: &str) -> &str {
    key.rfind('/').map_or("", |i| &key[..i])
}

fn child_key(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

/// Whether `key` is `root` or lies under it.
fn in_subtree(key: &str, root: &str) -> bool {
    root.is_empty()
        || key == root
        || (key.len() > root.len() && key.starts_with(root) && key.as_bytes()[root.len()] == b'/')
}

/// The in-memory tree.
#[derive(Clone, Default)]
pub(crate) struct MemFs {
    nodes: BTreeMap<String, Node>,
}

impl fmt::Debug for MemFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemFs")
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

impl MemFs {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn node(&self, key: &str) -> Option<&Node> {
        if key.is_empty() {
            const ROOT: Node = Node::Dir { mode: DIR_MODE };
            return Some(self.nodes.get("").unwrap_or(&ROOT));
        }
        self.nodes.get(key)
    }

    /// Resolve `path` (absolute) to a key, following symlinks in every component and,
    /// when `follow_last`, in the last one too. The final node need not exist, but its
    /// parent must be a directory.
    pub(crate) fn resolve(&self, path: &str, follow_last: bool) -> Result<String, FsError> {
        let mut pending: VecDeque<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let mut cur = String::new();
        let mut links = 0;
        while let Some(comp) = pending.pop_front() {
            match comp.as_str() {
                "." => continue,
                ".." => {
                    cur = parent_key(&cur).to_owned();
                    continue;
                }
                _ => {}
            }
            match self.node(&cur) {
                Some(Node::Dir { .. }) => {}
                Some(_) => return Err(FsError::NotADirectory),
                None => return Err(FsError::NotFound),
            }
            let next = child_key(&cur, &comp);
            let last = pending.is_empty();
            match self.node(&next) {
                Some(Node::Symlink { target }) if !last || follow_last => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(FsError::Loop);
                    }
                    if target.starts_with('/') {
                        cur = String::new();
                    }
                    for c in target.split('/').filter(|s| !s.is_empty()).rev() {
                        pending.push_front(c.to_owned());
                    }
                }
                _ => cur = next,
            }
        }
        Ok(cur)
    }

    /// The node at `path`.
    pub(crate) fn stat(&self, path: &str, follow: bool) -> Option<&Node> {
        let key = self.resolve(path, follow).ok()?;
        self.node(&key)
    }

    pub(crate) fn is_dir(&self, path: &str) -> bool {
        matches!(self.stat(path, true), Some(Node::Dir { .. }))
    }

    pub(crate) fn read_file(&self, path: &str) -> Result<Bytes, FsError> {
        let key = self.resolve(path, true)?;
        match self.node(&key) {
            Some(Node::File { data, .. }) => Ok(data.clone()),
            Some(Node::Dir { .. }) => Err(FsError::IsADirectory),
            _ => Err(FsError::NotFound),
        }
    }

    /// Where a new node named by `path` goes: its key, after checking the parent.
    fn new_key(&self, path: &str, follow_last: bool) -> Result<String, FsError> {
        let key = self.resolve(path, follow_last)?;
        if key.is_empty() {
            return Err(FsError::IsADirectory);
        }
        match self.node(parent_key(&key)) {
            Some(Node::Dir { .. }) => Ok(key),
            Some(_) => Err(FsError::NotADirectory),
            None => Err(FsError::NotFound),
        }
    }

    /// Write (or append to) a regular file; a new file gets `mode`.
    pub(crate) fn write_file(
        &mut self,
        path: &str,
        data: &[u8],
        append: bool,
        mode: u32,
    ) -> Result<(), FsError> {
        let key = self.new_key(path, true)?;
        match self.nodes.get_mut(&key) {
            Some(Node::Dir { .. }) => Err(FsError::IsADirectory),
            Some(Node::File { data: old, .. }) => {
                if append {
                    let mut v = Vec::with_capacity(old.len() + data.len());
                    v.extend_from_slice(old);
                    v.extend_from_slice(data);
                    *old = Bytes::from(v);
                } else {
                    *old = Bytes::copy_from_slice(data);
                }
                Ok(())
            }
            // A dangling symlink resolves to a missing node, so this is a new file.
            Some(Node::Symlink { .. }) | None => {
                self.nodes.insert(
                    key,
                    Node::File {
                        mode,
                        data: Bytes::copy_from_slice(data),
                    },
                );
                Ok(())
            }
        }
    }

    /// Create a directory; with `parents`, create missing parents and accept an
    /// existing directory.
    pub(crate) fn mkdir(&mut self, path: &str, parents: bool, mode: u32) -> Result<(), FsError> {
        if parents {
            let mut cur = String::from("/");
            for c in path.split('/').filter(|s| !s.is_empty()) {
                cur = join(&cur, c);
                let key = self.resolve(&cur, true)?;
                match self.node(&key) {
                    Some(Node::Dir { .. }) => {}
                    Some(_) => return Err(FsError::Exists),
                    None => {
                        let key = self.new_key(&cur, true)?;
                        self.nodes.insert(key, Node::Dir { mode });
                    }
                }
            }
            return Ok(());
        }
        let key = self.new_key(path, false)?;
        if self.nodes.contains_key(&key) {
            return Err(FsError::Exists);
        }
        self.nodes.insert(key, Node::Dir { mode });
        Ok(())
    }

    /// Names in a directory, sorted.
    pub(crate) fn list(&self, path: &str) -> Result<Vec<String>, FsError> {
        let key = self.resolve(path, true)?;
        match self.node(&key) {
            Some(Node::Dir { .. }) => {}
            Some(_) => return Err(FsError::NotADirectory),
            None => return Err(FsError::NotFound),
        }
        Ok(self
            .subtree_keys(&key)
            .filter_map(|k| {
                let rel = if key.is_empty() {
                    k
                } else {
                    &k[key.len() + 1..]
                };
                (!rel.is_empty() && !rel.contains('/')).then(|| rel.to_owned())
            })
            .collect())
    }

    /// Keys under `key` (not `key` itself), in order.
    fn subtree_keys<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let start = if key.is_empty() {
            String::new()
        } else {
            format!("{key}/")
        };
        self.nodes
            .range(start.clone()..)
            .map(|(k, _)| k.as_str())
            .take_while(move |k| k.starts_with(&start))
            .filter(|k| !k.is_empty())
    }

    /// The nodes under `path` (not following a final symlink), with keys relative to it.
    pub(crate) fn subtree(&self, path: &str) -> Result<Vec<(String, Node)>, FsError> {
        let key = self.resolve(path, true)?;
        if self.node(&key).is_none() {
            return Err(FsError::NotFound);
        }
        let cut = if key.is_empty() { 0 } else { key.len() + 1 };
        Ok(self
            .subtree_keys(&key)
            .map(|k| (k[cut..].to_owned(), self.nodes[k].clone()))
            .collect())
    }

    /// Remove a node; directories only with `recursive` (or when empty).
    pub(crate) fn remove(&mut self, path: &str, recursive: bool) -> Result<(), FsError> {
        let key = self.resolve(path, false)?;
        if key.is_empty() {
            return Err(FsError::Invalid);
        }
        match self.nodes.get(&key) {
            None => Err(FsError::NotFound),
            Some(Node::Dir { .. }) => {
                let children: Vec<String> = self.subtree_keys(&key).map(str::to_owned).collect();
                if !children.is_empty() && !recursive {
                    return Err(FsError::NotEmpty);
                }
                for c in children {
                    self.nodes.remove(&c);
                }
                self.nodes.remove(&key);
                Ok(())
            }
            Some(_) => {
                self.nodes.remove(&key);
                Ok(())
            }
        }
    }

    /// Put `entries` (relative keys, parents first) under the directory `path`,
    /// replacing what was there.
    pub(crate) fn put_subtree(
        &mut self,
        path: &str,
        root: Node,
        entries: Vec<(String, Node)>,
    ) -> Result<(), FsError> {
        let key = self.new_key(path, false)?;
        if self.nodes.contains_key(&key) {
            self.remove(&format!("/{key}"), true)?;
        }
        for (rel, node) in entries {
            self.nodes.insert(child_key(&key, &rel), node);
        }
        self.nodes.insert(key, root);
        Ok(())
    }

    /// Rename `from` to `to` (both resolved by the caller's rules for a final link).
    pub(crate) fn rename(&mut self, from: &str, to: &str) -> Result<(), FsError> {
        let fk = self.resolve(from, false)?;
        let Some(node) = self.nodes.get(&fk).cloned() else {
            return Err(FsError::NotFound);
        };
        let tk = self.new_key(to, false)?;
        if fk == tk {
            return Ok(());
        }
        if in_subtree(&tk, &fk) {
            return Err(FsError::Invalid);
        }
        match (self.nodes.get(&tk), &node) {
            (Some(Node::Dir { .. }), Node::Dir { .. })
                if self.subtree_keys(&tk).next().is_some() =>
            {
                return Err(FsError::NotEmpty);
            }
            (Some(Node::Dir { .. }), Node::Dir { .. }) => {}
            (Some(Node::Dir { .. }), _) => return Err(FsError::IsADirectory),
            (Some(_), Node::Dir { .. }) => return Err(FsError::NotADirectory),
            _ => {}
        }
        let moved: Vec<(String, Node)> = self
            .subtree_keys(&fk)
            .map(|k| (k[fk.len()..].to_owned(), self.nodes[k].clone()))
            .collect();
        for (suffix, _) in &moved {
            self.nodes.remove(&format!("{fk}{suffix}"));
        }
        self.nodes.remove(&fk);
        self.nodes.remove(&tk);
        for (suffix, n) in moved {
            self.nodes.insert(format!("{tk}{suffix}"), n);
        }
        self.nodes.insert(tk, node);
        Ok(())
    }

    pub(crate) fn symlink(&mut self, target: &str, link: &str) -> Result<(), FsError> {
        let key = self.new_key(link, false)?;
        if self.nodes.contains_key(&key) {
            return Err(FsError::Exists);
        }
        self.nodes.insert(
            key,
            Node::Symlink {
                target: target.to_owned(),
            },
        );
        Ok(())
    }

    /// Set permission bits (following symlinks).
    pub(crate) fn chmod(&mut self, path: &str, new_mode: u32) -> Result<(), FsError> {
        let key = self.resolve(path, true)?;
        if key.is_empty() {
            self.nodes.insert(
                String::new(),
                Node::Dir {
                    mode: new_mode & 0o7777,
                },
            );
            return Ok(());
        }
        match self.nodes.get_mut(&key) {
            Some(Node::Dir { mode } | Node::File { mode, .. }) => {
                *mode = new_mode & 0o7777;
                Ok(())
            }
            _ => Err(FsError::NotFound),
        }
    }

    /// Insert a node by key directly (tar extraction, which checks paths itself).
    pub(crate) fn insert_key(&mut self, key: String, node: Node) {
        self.nodes.insert(key, node);
    }

    /// Remove a node and everything under it, by key.
    pub(crate) fn remove_key(&mut self, key: &str) {
        let children: Vec<String> = self.subtree_keys(key).map(str::to_owned).collect();
        for c in children {
            self.nodes.remove(&c);
        }
        self.nodes.remove(key);
    }

    /// The node at a key, without following anything.
    pub(crate) fn get_key(&self, key: &str) -> Option<&Node> {
        self.node(key)
    }

    /// Size of regular files under `path` and the tree digest of that subtree.
    pub(crate) fn digest(&self, path: &str) -> Result<(u64, Digest), FsError> {
        let mut d = TreeDigest::new();
        for (rel, node) in self.subtree(path)? {
            match node {
                Node::Dir { mode } => d.add(&rel, TreeEntry::Dir { mode }),
                Node::File { mode, data } => {
                    let h = sha256(&data);
                    d.add(
                        &rel,
                        TreeEntry::File {
                            mode,
                            size: data.len() as u64,
                            sha256: &h,
                        },
                    );
                }
                Node::Symlink { target } => d.add(&rel, TreeEntry::Symlink { target: &target }),
            }
        }
        Ok((d.size(), d.finish()))
    }

    /// Total bytes of regular files in the whole tree.
    pub(crate) fn file_bytes(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match n {
                Node::File { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum()
    }

    /// Mutable access to the first regular file, for corruption tests.
    pub(crate) fn first_file_mut(&mut self) -> Option<&mut Bytes> {
        self.nodes.values_mut().find_map(|n| match n {
            Node::File { data, .. } => Some(data),
            _ => None,
        })
    }
}

/// A shared handle to a fake pod's filesystem, for tests and registered programs.
///
/// Relative paths are relative to the pod's working directory
/// ([`crate::MemoryBackend::WORKDIR`]); absolute paths are absolute in the pod.
/// Symlinks are followed the way a kernel would.
#[derive(Clone, Default)]
pub struct PodFs {
    inner: Arc<Mutex<MemFs>>,
    base: Arc<str>,
}

impl fmt::Debug for PodFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodFs").field("base", &self.base).finish()
    }
}

impl PodFs {
    pub(crate) fn new(fs: MemFs, base: &str) -> Self {
        PodFs {
            inner: Arc::new(Mutex::new(fs)),
            base: Arc::from(base),
        }
    }

    /// Lock the tree. The lock is never held across an await.
    pub(crate) fn lock(&self) -> MutexGuard<'_, MemFs> {
        // A panic while holding the lock leaves a tree that is still well formed (every
        // mutation is a single map operation), so recover from poisoning.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The absolute path of `path` relative to the working directory.
    pub fn abs(&self, path: &str) -> String {
        join(&self.base, path)
    }

    /// Read a whole file.
    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        let p = self.abs(path);
        self.lock()
            .read_file(&p)
            .map(|b| b.to_vec())
            .map_err(|e| e.into_error(&p))
    }

    /// Read a whole file as UTF-8 (lossily).
    pub fn read_to_string(&self, path: &str) -> Result<String> {
        self.read(path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// Write a whole file (mode 0644 when new), creating missing parent directories.
    pub fn write(&self, path: &str, data: impl AsRef<[u8]>) -> Result<()> {
        let p = self.abs(path);
        let mut fs = self.lock();
        let parent = join(&p, "..");
        fs.mkdir(&parent, true, DIR_MODE)
            .and_then(|()| fs.write_file(&p, data.as_ref(), false, FILE_MODE))
            .map_err(|e| e.into_error(&p))
    }

    /// Append to a file, creating it (mode 0644) when missing.
    pub fn append(&self, path: &str, data: impl AsRef<[u8]>) -> Result<()> {
        let p = self.abs(path);
        self.lock()
            .write_file(&p, data.as_ref(), true, FILE_MODE)
            .map_err(|e| e.into_error(&p))
    }

    /// Create a directory and its missing parents (mode 0755).
    pub fn create_dir_all(&self, path: &str) -> Result<()> {
        let p = self.abs(path);
        self.lock()
            .mkdir(&p, true, DIR_MODE)
            .map_err(|e| e.into_error(&p))
    }

    /// Whether anything exists at `path` (following symlinks).
    pub fn exists(&self, path: &str) -> bool {
        self.lock().stat(&self.abs(path), true).is_some()
    }

    /// Whether `path` is a directory (following symlinks).
    pub fn is_dir(&self, path: &str) -> bool {
        self.lock().is_dir(&self.abs(path))
    }

    /// Whether `path` is a regular file (following symlinks).
    pub fn is_file(&self, path: &str) -> bool {
        matches!(
            self.lock().stat(&self.abs(path), true),
            Some(Node::File { .. })
        )
    }

    /// Names in a directory, sorted.
    pub fn list(&self, path: &str) -> Result<Vec<String>> {
        let p = self.abs(path);
        self.lock().list(&p).map_err(|e| e.into_error(&p))
    }

    /// Remove a file, a symlink or a whole directory tree.
    pub fn remove(&self, path: &str) -> Result<()> {
        let p = self.abs(path);
        self.lock().remove(&p, true).map_err(|e| e.into_error(&p))
    }

    /// Create a symlink at `link` pointing to `target` (stored as given).
    pub fn symlink(&self, target: &str, link: &str) -> Result<()> {
        let p = self.abs(link);
        self.lock()
            .symlink(target, &p)
            .map_err(|e| e.into_error(&p))
    }

    /// Permission bits of a file or directory (following symlinks).
    pub fn mode(&self, path: &str) -> Result<u32> {
        let p = self.abs(path);
        match self.lock().stat(&p, true) {
            Some(Node::Dir { mode } | Node::File { mode, .. }) => Ok(*mode),
            _ => Err(FsError::NotFound.into_error(&p)),
        }
    }

    /// Set permission bits (following symlinks).
    pub fn set_mode(&self, path: &str, mode: u32) -> Result<()> {
        let p = self.abs(path);
        self.lock().chmod(&p, mode).map_err(|e| e.into_error(&p))
    }

    /// The target of a symlink, as stored.
    pub fn read_link(&self, path: &str) -> Result<String> {
        let p = self.abs(path);
        match self.lock().stat(&p, false) {
            Some(Node::Symlink { target }) => Ok(target.clone()),
            Some(_) => Err(Error::invalid(format!("{p}: not a symlink"))),
            None => Err(FsError::NotFound.into_error(&p)),
        }
    }

    /// The tree digest of a directory, as a volume store would compute it for the same
    /// tree (see [`jetbridge_core::digest::TreeDigest`]).
    pub fn digest(&self, path: &str) -> Result<Digest> {
        let p = self.abs(path);
        self.lock()
            .digest(&p)
            .map(|(_, d)| d)
            .map_err(|e| e.into_error(&p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_is_lexical_and_clamped() {
        assert_eq!(join("/a/b", "../c"), "/a/c");
        assert_eq!(join("/a", "/x/./y/"), "/x/y");
        assert_eq!(join("/", "../../.."), "/");
        assert_eq!(join("/w", ""), "/w");
    }

    #[test]
    fn symlinks_are_followed_in_the_middle() {
        let mut fs = MemFs::new();
        fs.mkdir("/a/b", true, 0o755).unwrap();
        fs.write_file("/a/b/f", b"x", false, 0o644).unwrap();
        fs.symlink("a/b", "/l").unwrap();
        assert_eq!(fs.read_file("/l/f").unwrap(), Bytes::from_static(b"x"));
        fs.symlink("/l2", "/l2").unwrap();
        assert_eq!(fs.read_file("/l2/f"), Err(FsError::Loop));
    }

    #[test]
    fn rename_moves_subtrees() {
        let mut fs = MemFs::new();
        fs.mkdir("/a/b", true, 0o755).unwrap();
        fs.write_file("/a/b/f", b"x", false, 0o644).unwrap();
        fs.rename("/a", "/z").unwrap();
        assert!(fs.stat("/a", false).is_none());
        assert!(fs.read_file("/z/b/f").is_ok());
        assert_eq!(fs.rename("/z", "/z/b/q"), Err(FsError::Invalid));
    }

    #[test]
    fn list_excludes_grandchildren_and_similar_prefixes() {
        let mut fs = MemFs::new();
        fs.mkdir("/a/b", true, 0o755).unwrap();
        fs.mkdir("/a-c", true, 0o755).unwrap();
        fs.write_file("/a/x", b"", false, 0o644).unwrap();
        assert_eq!(fs.list("/a").unwrap(), vec!["b", "x"]);
        assert_eq!(fs.list("/").unwrap(), vec!["a", "a-c"]);
    }
}
