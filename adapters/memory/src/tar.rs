//! Tar archives to and from a [`MemFs`], with the safety rules of a volume store.

use std::io::Read;

use bytes::Bytes;
use jetbridge_core::{Error, Result};
use tar::{Archive, Builder, EntryType, Header};

use crate::fs::{DIR_MODE, FsError, MemFs, Node};

/// How strict extraction is about symlink targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkPolicy {
    /// Symlinks must stay inside the extracted tree (a volume).
    Contained,
    /// Symlinks may point anywhere (extraction inside a pod, as `tar -x` does); entries
    /// are still never written through a symlink.
    Any,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::invalid(msg.into())
}

/// Normalise an entry name to a relative key: strip `./` and trailing `/`, reject
/// absolute names and `..`. The root (`.`, `./`) is the empty key.
fn entry_key(name: &[u8]) -> Result<String> {
    let name = std::str::from_utf8(name).map_err(|_| invalid("tar entry name is not UTF-8"))?;
    if name.starts_with('/') {
        return Err(invalid(format!("tar entry {name:?} has an absolute path")));
    }
    let mut parts = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(invalid(format!("tar entry {name:?} contains '..'"))),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

fn join_key(base: &str, rel: &str) -> String {
    match (base.is_empty(), rel.is_empty()) {
        (_, true) => base.to_owned(),
        (true, false) => rel.to_owned(),
        (false, false) => format!("{base}/{rel}"),
    }
}

/// Whether a symlink at `rel` with `target` stays inside the tree.
fn link_contained(rel: &str, target: &str) -> bool {
    if target.starts_with('/') || target.is_empty() {
        return false;
    }
    // Depth of the link's parent directory below the root.
    let mut depth: i64 = rel.split('/').count() as i64 - 1;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

/// Make sure every parent of `rel` under `base` is a real directory (not a symlink),
/// creating missing ones.
fn ensure_parents(fs: &mut MemFs, base: &str, rel: &str, name: &str) -> Result<()> {
    let mut cur = String::new();
    let comps: Vec<&str> = rel.split('/').collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        cur = join_key(&cur, c);
        let key = join_key(base, &cur);
        match fs.get_key(&key) {
            Some(Node::Dir { .. }) => {}
            None => fs.insert_key(key, Node::Dir { mode: DIR_MODE }),
            Some(Node::Symlink { .. }) => {
                return Err(invalid(format!(
                    "tar entry {name:?} would be written through a symlink"
                )));
            }
            Some(Node::File { .. }) => {
                return Err(invalid(format!(
                    "tar entry {name:?} has a parent that is not a directory"
                )));
            }
        }
    }
    Ok(())
}

/// Extract `data` into the directory at key `base` of `fs`. On error `fs` may hold a
/// partial result: callers extract into a copy and keep it only on success.
pub(crate) fn extract(fs: &mut MemFs, base: &str, data: &[u8], policy: LinkPolicy) -> Result<()> {
    let mut archive = Archive::new(data);
    let entries = archive
        .entries()
        .map_err(|e| invalid(format!("reading tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("reading tar: {e}")))?;
        let raw_name = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_name).into_owned();
        let rel = entry_key(&raw_name)?;
        let header = entry.header();
        let mode = header
            .mode()
            .map_err(|e| invalid(format!("tar entry {name:?}: {e}")))?
            & 0o7777;
        let kind = header.entry_type();
        let key = join_key(base, &rel);
        if rel.is_empty() {
            // The root itself: only a directory entry makes sense; take its mode.
            if kind.is_dir() {
                if let Some(Node::Dir { .. }) | None = fs.get_key(&key) {
                    fs.insert_key(key, Node::Dir { mode });
                }
                continue;
            }
            return Err(invalid(format!("tar entry {name:?} replaces the root")));
        }
        ensure_parents(fs, base, &rel, &name)?;
        let node = match kind {
            EntryType::Regular | EntryType::Continuous => {
                let mut buf = Vec::new();
                entry
                    .read_to_end(&mut buf)
                    .map_err(|e| invalid(format!("tar entry {name:?}: {e}")))?;
                Node::File {
                    mode,
                    data: Bytes::from(buf),
                }
            }
            EntryType::Directory => Node::Dir { mode },
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| invalid(format!("symlink {name:?} has no target")))?;
                let target = std::str::from_utf8(&target)
                    .map_err(|_| invalid(format!("symlink {name:?} target is not UTF-8")))?
                    .to_owned();
                if policy == LinkPolicy::Contained && !link_contained(&rel, &target) {
                    return Err(invalid(format!(
                        "symlink {name:?} -> {target:?} leads out of the tree"
                    )));
                }
                Node::Symlink { target }
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| invalid(format!("hard link {name:?} has no target")))?;
                let tkey = join_key(base, &entry_key(&target)?);
                // The target must already be a regular file of this tree, reached
                // without any symlink; the copy is independent of it from now on.
                ensure_parents(fs, base, &entry_key(&target)?, &name)?;
                match fs.get_key(&tkey) {
                    Some(Node::File { mode, data }) => Node::File {
                        mode: *mode,
                        data: data.clone(),
                    },
                    _ => {
                        return Err(invalid(format!(
                            "hard link {name:?} does not point to a file of the archive"
                        )));
                    }
                }
            }
            other => {
                return Err(invalid(format!(
                    "tar entry {name:?} has unsupported type {other:?}"
                )));
            }
        };
        match (fs.get_key(&key), &node) {
            (Some(Node::Dir { .. }), Node::Dir { .. }) => {
                // Existing directory: keep its content, take the new mode.
                fs.insert_key(key, node);
            }
            (Some(Node::Dir { .. }), _) => {
                let prefix = format!("{key}/");
                let empty = fs
                    .subtree(&format!("/{key}"))
                    .map(|v| v.is_empty())
                    .unwrap_or(true);
                if !empty {
                    return Err(invalid(format!(
                        "tar entry {name:?} replaces a non-empty directory {prefix:?}"
                    )));
                }
                fs.remove_key(&key);
                fs.insert_key(key, node);
            }
            _ => fs.insert_key(key, node),
        }
    }
    Ok(())
}

fn io_err(e: std::io::Error) -> Error {
    Error::other(format!("writing tar: {e}"))
}

/// Append a symlink entry, keeping the target byte for byte (the tar crate would
/// normalise `a/./b` or a trailing `/`).
fn append_symlink(b: &mut Builder<Vec<u8>>, path: &str, target: &str) -> Result<()> {
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    h.set_mtime(0);
    let t = target.as_bytes();
    if t.len() >= 100 {
        let mut long = Header::new_gnu();
        long.set_entry_type(EntryType::GNULongLink);
        if let Some(g) = long.as_gnu_mut() {
            g.name[..13].copy_from_slice(b"././@LongLink");
        }
        long.set_mode(0o644);
        long.set_size(t.len() as u64 + 1);
        long.set_mtime(0);
        long.set_cksum();
        let mut data = t.to_vec();
        data.push(0);
        b.append(&long, data.as_slice()).map_err(io_err)?;
        h.set_link_name_literal(&t[..99]).map_err(io_err)?;
    } else {
        h.set_link_name_literal(t).map_err(io_err)?;
    }
    b.append_data(&mut h, path, std::io::empty())
        .map_err(io_err)
}

/// A tar of the directory at absolute `path`, entries named relative to it. With
/// `root_entry`, the directory itself comes first as `./` (as `tar -c .` does).
pub(crate) fn create(fs: &MemFs, path: &str, root_entry: bool) -> Result<Vec<u8>> {
    let entries = fs.subtree(path).map_err(|e| fs_err(e, path))?;
    let mut b = Builder::new(Vec::new());
    if root_entry {
        let mode = match fs.stat(path, true) {
            Some(Node::Dir { mode }) => *mode,
            _ => DIR_MODE,
        };
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(0);
        b.append_data(&mut h, "./", std::io::empty())
            .map_err(io_err)?;
    }
    for (rel, node) in entries {
        let mut h = Header::new_gnu();
        h.set_mtime(0);
        match node {
            Node::Dir { mode } => {
                h.set_entry_type(EntryType::Directory);
                h.set_mode(mode);
                h.set_size(0);
                b.append_data(&mut h, format!("{rel}/"), std::io::empty())
                    .map_err(io_err)?;
            }
            Node::File { mode, data } => {
                h.set_entry_type(EntryType::Regular);
                h.set_mode(mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, &rel, data.as_ref()).map_err(io_err)?;
            }
            Node::Symlink { target } => append_symlink(&mut b, &rel, &target)?,
        }
    }
    b.into_inner().map_err(io_err)
}

fn fs_err(e: FsError, path: &str) -> Error {
    e.into_error(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_tar(entries: &[(&str, EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        // Build headers by hand so hostile names reach the extractor unchanged.
        let mut out = Vec::new();
        for (name, kind, data, link) in entries {
            let mut h = Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            if let Some(l) = link {
                h.set_link_name_literal(l).unwrap();
            }
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            out.extend(std::iter::repeat_n(0u8, pad));
        }
        out.extend(std::iter::repeat_n(0u8, 1024));
        out
    }

    fn rejects(entries: &[(&str, EntryType, &[u8], Option<&str>)]) {
        let mut fs = MemFs::new();
        let err = extract(&mut fs, "", &raw_tar(entries), LinkPolicy::Contained).unwrap_err();
        assert_eq!(err.kind(), jetbridge_core::ErrorKind::Invalid, "{err}");
    }

    #[test]
    fn hostile_entries_are_invalid() {
        rejects(&[("../x", EntryType::Regular, b"x", None)]);
        rejects(&[("a/../../x", EntryType::Regular, b"x", None)]);
        rejects(&[("/etc/x", EntryType::Regular, b"x", None)]);
        rejects(&[("l", EntryType::Symlink, b"", Some("/etc"))]);
        rejects(&[("l", EntryType::Symlink, b"", Some("../x"))]);
        rejects(&[("a/l", EntryType::Symlink, b"", Some("../../x"))]);
        rejects(&[
            ("l", EntryType::Symlink, b"", Some(".")),
            ("l/f", EntryType::Regular, b"x", None),
        ]);
        rejects(&[("h", EntryType::Link, b"", Some("../outside"))]);
        rejects(&[("h", EntryType::Link, b"", Some("missing"))]);
        rejects(&[("dev", EntryType::Char, b"", None)]);
        rejects(&[("fifo", EntryType::Fifo, b"", None)]);
    }

    #[test]
    fn contained_links_and_hard_links_are_fine() {
        let t = raw_tar(&[
            ("a/f", EntryType::Regular, b"hello", None),
            ("a/l", EntryType::Symlink, b"", Some("../a/f")),
            ("h", EntryType::Link, b"", Some("a/f")),
        ]);
        let mut fs = MemFs::new();
        extract(&mut fs, "", &t, LinkPolicy::Contained).unwrap();
        assert_eq!(fs.read_file("/h").unwrap(), Bytes::from_static(b"hello"));
        assert_eq!(fs.read_file("/a/l").unwrap(), Bytes::from_static(b"hello"));
        assert!(fs.is_dir("/a"));
    }

    #[test]
    fn round_trip_keeps_modes_links_and_long_names() {
        let mut fs = MemFs::new();
        let long = "d".repeat(120);
        fs.mkdir(&format!("/src/{long}"), true, 0o750).unwrap();
        fs.write_file("/src/x.sh", b"#!/bin/sh\n", false, 0o755)
            .unwrap();
        let target = format!("{long}/./{}", "t".repeat(110));
        fs.symlink(&target, "/src/link").unwrap();
        let tar = create(&fs, "/src", true).unwrap();
        let mut out = MemFs::new();
        out.mkdir("/dst", false, 0o700).unwrap();
        extract(&mut out, "dst", &tar, LinkPolicy::Any).unwrap();
        assert_eq!(fs.digest("/src").unwrap(), out.digest("/dst").unwrap());
        assert_eq!(
            out.stat("/dst/link", false),
            Some(&Node::Symlink { target })
        );
    }
}
