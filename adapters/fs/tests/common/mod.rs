//! Helpers shared by the integration tests: a tree model, tars of it, snapshots.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use bytes::Bytes;
use jetbridge_core::digest::{Digest, TreeDigest, TreeEntry, sha256};
use jetbridge_core::ports::ByteStream;

/// One entry of a model tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum N {
    Dir(u32),
    File(u32, Vec<u8>),
    Link(String),
}

/// A tree: relative path -> entry; parents listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model(pub BTreeMap<String, N>);

impl Model {
    pub fn dir(mut self, p: &str, mode: u32) -> Self {
        self.0.insert(p.into(), N::Dir(mode));
        self
    }
    pub fn file(mut self, p: &str, mode: u32, data: impl Into<Vec<u8>>) -> Self {
        self.0.insert(p.into(), N::File(mode, data.into()));
        self
    }
    pub fn link(mut self, p: &str, target: &str) -> Self {
        self.0.insert(p.into(), N::Link(target.into()));
        self
    }

    pub fn digest(&self) -> Digest {
        let mut d = TreeDigest::new();
        for (p, n) in &self.0 {
            match n {
                N::Dir(m) => d.add(p, TreeEntry::Dir { mode: *m }),
                N::File(m, data) => {
                    let h = sha256(data);
                    d.add(
                        p,
                        TreeEntry::File {
                            mode: *m,
                            size: data.len() as u64,
                            sha256: &h,
                        },
                    );
                }
                N::Link(t) => d.add(p, TreeEntry::Symlink { target: t }),
            }
        }
        d.finish()
    }

    pub fn size(&self) -> u64 {
        self.0
            .values()
            .map(|n| match n {
                N::File(_, d) => d.len() as u64,
                _ => 0,
            })
            .sum()
    }

    pub fn to_tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, n) in &self.0 {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_700_000_000);
            match n {
                N::Dir(m) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*m);
                    h.set_size(0);
                    b.append_data(&mut h, p, io::empty()).unwrap();
                }
                N::File(m, data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*m);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, p, data.as_slice()).unwrap();
                }
                N::Link(t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, p, t).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    /// Parse a tar into a model; panics on entry types a volume never holds.
    pub fn from_tar(data: &[u8]) -> Model {
        let mut m = Model::default();
        let mut ar = tar::Archive::new(data);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_owned();
            let mode = e.header().mode().unwrap() & 0o7777;
            let n = match e.header().entry_type() {
                tar::EntryType::Directory => N::Dir(mode),
                tar::EntryType::Regular => {
                    let mut d = Vec::new();
                    e.read_to_end(&mut d).unwrap();
                    N::File(mode, d)
                }
                tar::EntryType::Symlink => N::Link(
                    e.link_name()
                        .unwrap()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                ),
                t => panic!("unexpected entry type {t:?} at {p}"),
            };
            m.0.insert(p, n);
        }
        m
    }

    /// Read a directory tree into a model.
    pub fn from_dir(root: &Path) -> Model {
        let mut m = Model::default();
        fn walk(root: &Path, rel: &str, m: &mut Model) {
            let dir = if rel.is_empty() {
                root.to_path_buf()
            } else {
                root.join(rel)
            };
            let mut names: Vec<_> = fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            for name in names {
                let r = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let p = root.join(&r);
                let md = fs::symlink_metadata(&p).unwrap();
                let mode = md.mode() & 0o7777;
                if md.is_dir() {
                    m.0.insert(r.clone(), N::Dir(mode));
                    walk(root, &r, m);
                } else if md.file_type().is_symlink() {
                    let t = fs::read_link(&p).unwrap().to_string_lossy().into_owned();
                    m.0.insert(r, N::Link(t));
                } else {
                    m.0.insert(r, N::File(mode, fs::read(&p).unwrap()));
                }
            }
        }
        walk(root, "", &mut m);
        m
    }
}

/// What volumes must keep: modes, nested and empty dirs, symlinks, odd names.
pub fn sample() -> Model {
    Model::default()
        .file("README.md", 0o644, "# sample\n")
        .file("empty-file", 0o644, "")
        .file("with space.txt", 0o644, "spaced\n")
        .file("ünïcode.txt", 0o644, "ü\n")
        .dir("bin", 0o755)
        .file("bin/run.sh", 0o755, "#!/bin/sh\necho hi\n")
        .link("bin/readme", "../README.md")
        .link("readme-link", "README.md")
        .dir("private", 0o700)
        .file("private/key", 0o600, "not really a key\n")
        .dir("empty-dir", 0o755)
        .dir("ro", 0o555)
        .file("ro/inside", 0o444, "read only\n")
        .dir("a", 0o755)
        .dir("a/b", 0o755)
        .dir("a/b/c", 0o750)
        .file("a/b/c/deep.bin", 0o644, pseudo_random(70_000, 11))
}

pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A byte stream of `data` in `chunk`-sized pieces.
pub fn chunked(data: &[u8], chunk: usize) -> ByteStream {
    let parts: Vec<jetbridge_core::Result<Bytes>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures::stream::iter(parts))
}

/// Everything under `root` (type, mode, size, content hash, link target, link count),
/// skipping paths under any of `except`: to prove nothing else changed.
pub fn snapshot(root: &Path, except: &[&Path]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(p: &Path, except: &[&Path], out: &mut BTreeMap<String, String>) {
        if except.iter().any(|e| p.starts_with(e)) {
            return;
        }
        let md = fs::symlink_metadata(p).unwrap();
        let desc = if md.is_dir() {
            format!("d {:o}", md.mode() & 0o7777)
        } else if md.file_type().is_symlink() {
            format!("l {}", fs::read_link(p).unwrap().display())
        } else if md.is_file() {
            let data = fs::read(p).unwrap();
            format!(
                "f {:o} {} {} n{}",
                md.mode() & 0o7777,
                data.len(),
                hex::encode(sha256(&data)),
                md.nlink()
            )
        } else {
            format!("other {:o}", md.mode())
        };
        out.insert(p.display().to_string(), desc);
        if md.is_dir() {
            for e in fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), except, out);
            }
        }
    }
    walk(root, except, &mut out);
    out
}

/// Whether a directory is empty.
pub fn is_empty_dir(p: &Path) -> bool {
    fs::read_dir(p)
        .map(|mut r| r.next().is_none())
        .unwrap_or(false)
}

/// Make a path writable for a corruption test.
pub fn make_writable(p: &Path) {
    let mut perm = fs::metadata(p).unwrap().permissions();
    perm.set_mode(perm.mode() | 0o200);
    fs::set_permissions(p, perm).unwrap();
}
