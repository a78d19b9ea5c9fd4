//! Tar archives to and from a [`MemFs`], with core's entry rules
//! ([`jetbridge_core::archive`]), the same a volume store on disk applies: symlinks are
//! kept as they are, wherever they point, and nothing is written through one.

use std::io::Read;

use bytes::Bytes;
use jetbridge_core::archive::{self, EntryKind, Existing, IMPLIED_DIR_MODE, Kind};
use jetbridge_core::{Error, Result};
use tar::{Archive, Builder, EntryType, Header};

use crate::fs::{DIR_MODE, FsError, MemFs, Node};

fn invalid(msg: impl Into<String>) -> Error {
    Error::invalid(msg.into())
}

fn join_key(base: &str, rel: &str) -> String {
    match (base.is_empty(), rel.is_empty()) {
        (_, true) => base.to_owned(),
        (true, false) => rel.to_owned(),
        (false, false) => format!("{base}/{rel}"),
    }
}

/// The tree under `base`, as [`archive::plan`] sees it: by key, following nothing.
struct Under<'a> {
    fs: &'a MemFs,
    base: &'a str,
}

impl Existing for Under<'_> {
    fn kind(&mut self, path: &str) -> Result<Option<Kind>> {
        Ok(self
            .fs
            .get_key(&join_key(self.base, path))
            .map(|n| match n {
                Node::Dir { .. } => Kind::Dir,
                Node::File { .. } => Kind::File,
                Node::Symlink { .. } => Kind::Symlink,
            }))
    }
}

/// Extract `data` into the directory at key `base` of `fs`. On error `fs` may hold a
/// partial result: callers extract into a copy and keep it only on success.
pub(crate) fn extract(fs: &mut MemFs, base: &str, data: &[u8]) -> Result<()> {
    let mut archive = Archive::new(data);
    let entries = archive
        .entries()
        .map_err(|e| invalid(format!("reading tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("reading tar: {e}")))?;
        let Some(e) = archive::read_entry(&mut entry)? else {
            continue;
        };
        let key = join_key(base, &e.path);
        if e.path.is_empty() {
            // The root itself (`./`): take its mode, as `tar -x` in a pod does.
            if let Some(Node::Dir { .. }) | None = fs.get_key(&key) {
                fs.insert_key(key, Node::Dir { mode: e.mode });
            }
            continue;
        }
        let plan = archive::plan(&mut Under { fs, base }, &e)?;
        for d in plan.implied_dirs {
            fs.insert_key(
                join_key(base, &d),
                Node::Dir {
                    mode: IMPLIED_DIR_MODE,
                },
            );
        }
        if plan.replace.is_some() {
            fs.remove_key(&key);
        }
        let node = match e.kind {
            // An existing directory keeps its content and takes the new mode.
            EntryKind::Dir => Node::Dir { mode: e.mode },
            EntryKind::File => {
                let mut buf = Vec::new();
                entry
                    .read_to_end(&mut buf)
                    .map_err(|err| invalid(format!("tar entry {:?}: {err}", e.path)))?;
                if buf.len() as u64 != e.size {
                    return Err(invalid(format!("the archive ends inside {:?}", e.path)));
                }
                Node::File {
                    mode: e.mode,
                    data: Bytes::from(buf),
                }
            }
            EntryKind::Symlink { target } => Node::Symlink { target },
            // A second copy of the file (the plan checked it is one), independent of
            // it from now on.
            EntryKind::HardLink { target } => match fs.get_key(&join_key(base, &target)) {
                Some(n @ Node::File { .. }) => n.clone(),
                _ => return Err(invalid(format!("hard link {:?} has no file", e.path))),
            },
        };
        fs.insert_key(key, node);
    }
    Ok(())
}

fn io_err(e: std::io::Error) -> Error {
    Error::other(format!("writing tar: {e}"))
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
            Node::Symlink { target } => {
                archive::append_symlink(&mut b, &rel, &target, 0).map_err(io_err)?
            }
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
        let err = extract(&mut fs, "", &raw_tar(entries)).unwrap_err();
        assert_eq!(err.kind(), jetbridge_core::ErrorKind::Invalid, "{err}");
    }

    #[test]
    fn hostile_entries_are_invalid() {
        rejects(&[("../x", EntryType::Regular, b"x", None)]);
        rejects(&[("a/../../x", EntryType::Regular, b"x", None)]);
        rejects(&[("/etc/x", EntryType::Regular, b"x", None)]);
        rejects(&[
            ("l", EntryType::Symlink, b"", Some("/etc")),
            ("l/passwd", EntryType::Regular, b"x", None),
        ]);
        rejects(&[
            ("a", EntryType::Symlink, b"", Some("b")),
            ("b", EntryType::Symlink, b"", Some("/etc")),
            ("a/passwd", EntryType::Regular, b"x", None),
        ]);
        rejects(&[
            ("f", EntryType::Regular, b"x", None),
            ("l", EntryType::Symlink, b"", Some(".")),
            ("h", EntryType::Link, b"", Some("l/f")),
        ]);
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
    fn links_anywhere_are_kept_and_hard_links_are_fine() {
        let t = raw_tar(&[
            ("a/f", EntryType::Regular, b"hello", None),
            ("a/l", EntryType::Symlink, b"", Some("../a/f")),
            ("h", EntryType::Link, b"", Some("a/f")),
            ("etc", EntryType::Symlink, b"", Some("/etc")),
            ("up", EntryType::Symlink, b"", Some("../../x")),
        ]);
        let mut fs = MemFs::new();
        extract(&mut fs, "", &t).unwrap();
        assert_eq!(
            fs.get_key("etc"),
            Some(&Node::Symlink {
                target: "/etc".into()
            })
        );
        assert_eq!(
            fs.get_key("up"),
            Some(&Node::Symlink {
                target: "../../x".into()
            })
        );
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
        extract(&mut out, "dst", &tar).unwrap();
        assert_eq!(fs.digest("/src").unwrap(), out.digest("/dst").unwrap());
        assert_eq!(
            out.stat("/dst/link", false),
            Some(&Node::Symlink { target })
        );
    }
}
