//! The content digest of a volume: one sha256 over a canonical manifest of its tree.
//!
//! Every volume store computes the same digest for the same tree (paths, types, modes,
//! file contents, link targets; not timestamps or owners), so digests compare across
//! stores and a copy can be checked against its source. Modes count only the bits a
//! volume keeps ([`crate::archive::mode`]: no setuid or setgid), so a tree that had
//! them digests as the volume that holds it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::archive;
use sha2::{Digest as _, Sha256};

/// A `sha256:<64 hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Digest(String);

impl Digest {
    /// Parse `sha256:<64 lowercase hex>`.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("sha256:")?;
        (hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Digest(s.to_owned()))
    }
    /// From raw sha256 bytes.
    pub fn from_sha256(bytes: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(bytes)))
    }
    /// The digest as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One entry of a tree, as fed to [`TreeDigest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeEntry<'a> {
    /// A directory.
    Dir {
        /// Permission bits (masked with [`crate::archive::MODE_MASK`]).
        mode: u32,
    },
    /// A regular file whose content hash and size are known.
    File {
        /// Permission bits (masked with [`crate::archive::MODE_MASK`]).
        mode: u32,
        /// Size in bytes.
        size: u64,
        /// sha256 of the content.
        sha256: &'a [u8; 32],
    },
    /// A symbolic link.
    Symlink {
        /// The link target, as stored.
        target: &'a str,
    },
}

/// Builds a [`Digest`] of a tree. Entries may be added in any order.
#[derive(Debug, Default, Clone)]
pub struct TreeDigest {
    lines: Vec<String>,
    size: u64,
    files: u64,
}

impl TreeDigest {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add the entry at `path` (relative, `/`-separated, no `.` or `..` segments; the
    /// root itself is not added).
    pub fn add(&mut self, path: &str, entry: TreeEntry<'_>) {
        let path = path.trim_end_matches('/');
        let line = match entry {
            TreeEntry::Dir { mode } => format!("d {:04o} {}", archive::mode(mode), escape(path)),
            TreeEntry::File { mode, size, sha256 } => {
                self.size += size;
                self.files += 1;
                format!(
                    "f {:04o} {} {} {}",
                    archive::mode(mode),
                    size,
                    hex::encode(sha256),
                    escape(path)
                )
            }
            TreeEntry::Symlink { target } => {
                format!("l {} {}", escape(path), escape(target))
            }
        };
        self.lines.push(line);
    }

    /// Total size of regular files added so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Number of regular files added so far.
    pub fn files(&self) -> u64 {
        self.files
    }

    /// The digest of everything added.
    pub fn finish(mut self) -> Digest {
        // Sort by path (the last field is shared in position only after the kind,
        // so sort on the escaped path to stay order-independent).
        self.lines
            .sort_by(|a, b| path_of(a).cmp(path_of(b)).then(a.cmp(b)));
        let mut h = Sha256::new();
        h.update(b"jetbridge-tree-v1\n");
        for l in &self.lines {
            h.update(l.as_bytes());
            h.update(b"\n");
        }
        Digest::from_sha256(&h.finalize())
    }
}

fn path_of(line: &str) -> &str {
    // d MODE PATH | f MODE SIZE HASH PATH | l PATH TARGET
    let mut it = line.split(' ');
    match it.next() {
        Some("d") => it.nth(1).unwrap_or(""),
        Some("f") => it.nth(3).unwrap_or(""),
        Some("l") => it.next().unwrap_or(""),
        _ => "",
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            ' ' => out.push_str("\\x20"),
            '\n' => out.push_str("\\n"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out
}

/// sha256 of a byte slice, as the `[u8; 32]` [`TreeEntry::File`] takes.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_independent_and_content_sensitive() {
        let h1 = sha256(b"hello");
        let h2 = sha256(b"hellp");
        let mut a = TreeDigest::new();
        a.add("x", TreeEntry::Dir { mode: 0o755 });
        a.add(
            "x/f",
            TreeEntry::File {
                mode: 0o644,
                size: 5,
                sha256: &h1,
            },
        );
        let mut b = TreeDigest::new();
        b.add(
            "x/f",
            TreeEntry::File {
                mode: 0o644,
                size: 5,
                sha256: &h1,
            },
        );
        b.add("x/", TreeEntry::Dir { mode: 0o755 });
        assert_eq!(a.clone().finish(), b.finish());
        let mut c = TreeDigest::new();
        c.add("x", TreeEntry::Dir { mode: 0o755 });
        c.add(
            "x/f",
            TreeEntry::File {
                mode: 0o644,
                size: 5,
                sha256: &h2,
            },
        );
        assert_ne!(a.clone().finish(), c.finish());
        let mut d = TreeDigest::new();
        d.add("x", TreeEntry::Dir { mode: 0o755 });
        d.add(
            "x/f",
            TreeEntry::File {
                mode: 0o755,
                size: 5,
                sha256: &h1,
            },
        );
        assert_ne!(a.clone().finish(), d.finish());
        // Setuid and setgid are not part of a volume, so not of its digest.
        let mut e = TreeDigest::new();
        e.add("x", TreeEntry::Dir { mode: 0o2755 });
        e.add(
            "x/f",
            TreeEntry::File {
                mode: 0o4644,
                size: 5,
                sha256: &h1,
            },
        );
        assert_eq!(a.finish(), e.finish());
    }

    #[test]
    fn parse_roundtrip() {
        let d = Digest::from_sha256(&sha256(b""));
        assert_eq!(Digest::parse(d.as_str()), Some(d));
        assert_eq!(Digest::parse("sha256:xyz"), None);
    }
}
