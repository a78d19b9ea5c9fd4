//! The rules every volume store applies to the entries of a tar archive, in one place.
//!
//! A store reads each entry with [`read_entry`] (the rules about one entry on its own)
//! and asks [`plan`] what writing it means for the tree it has so far (the rules about
//! what is already there). The stores only carry the plan out, so a memory fake, a
//! directory and an object store accept and refuse exactly the same archives and end
//! with the same tree. Every violation is [`ErrorKind::Invalid`](crate::ErrorKind).
//!
//! - **Paths** are UTF-8, relative, without `..` and without NUL; `.` and empty
//!   segments are dropped; a name is at most [`MAX_NAME`] bytes, a path at most
//!   [`MAX_PATH`]. The root (`./`) may only be a directory.
//! - **Entry types**: directories, regular files, symlinks and hard links. Devices,
//!   fifos and any other type are refused. A GNU sparse file (`S`) is a regular file
//!   holding its expanded content. PAX sparse files (`GNU.sparse.*` records) are
//!   refused: a reader that does not expand them would store the sparse map as data.
//!   PAX `path`, `linkpath` and `size` records and GNU long names apply as the tar
//!   format says; a PAX global header is not content.
//! - **Symlinks are kept, never followed.** A target is any non-empty UTF-8 string
//!   without NUL of at most [`MAX_PATH`] bytes, absolute or relative, inside or outside
//!   the tree, dangling or not, and it is stored byte for byte. No entry is ever
//!   written through a symlink: a path whose parent is a symlink (or a file) is
//!   refused, whatever the link points at.
//! - **Hard links** point at a regular file already in the tree, reached without any
//!   symlink; the link becomes a second copy of that file.
//! - **Modes**: the permission bits and the sticky bit are kept; setuid and setgid are
//!   dropped ([`mode`], `& 0o1777`) on the way in, on the way out and in the digest.
//!   Owners and groups are never restored.
//! - **Replacement**: a later entry replaces an earlier file or symlink at the same path
//!   (as `tar -x` does); a directory is never replaced by anything but a directory.
//!   Parents an archive does not list are directories with mode [`IMPLIED_DIR_MODE`].

use std::io::{self, Read, Write};

use crate::{Error, Result};

/// Mode bits a volume keeps: permissions and sticky, not setuid or setgid.
pub const MODE_MASK: u32 = 0o1777;

/// Mode of a directory an archive implies (a parent it never lists).
pub const IMPLIED_DIR_MODE: u32 = 0o755;

/// Longest name of one path segment, in bytes (`NAME_MAX` of Linux filesystems).
pub const MAX_NAME: usize = 255;

/// Longest path or symlink target, in bytes (`PATH_MAX` less its NUL).
pub const MAX_PATH: usize = 4095;

/// The mode bits a volume keeps of `raw`.
pub fn mode(raw: u32) -> u32 {
    raw & MODE_MASK
}

/// What a path of a tree holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (never followed).
    Symlink,
}

/// What one checked archive entry makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file of [`Entry::size`] bytes (a GNU sparse file expanded).
    File,
    /// A symbolic link to `target`, kept as it is.
    Symlink {
        /// The target, byte for byte.
        target: String,
    },
    /// A second copy of the regular file at `target` (a normalised tree path).
    HardLink {
        /// The file linked to.
        target: String,
    },
}

/// One archive entry that passed the rules about a single entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Normalised path: relative, `/`-separated, no `.` or empty segments; `""` is the
    /// root (then [`Entry::kind`] is [`EntryKind::Dir`]).
    pub path: String,
    /// What the entry makes.
    pub kind: EntryKind,
    /// Mode bits to apply, already masked with [`MODE_MASK`].
    pub mode: u32,
    /// Modification time in seconds since the epoch (0 when unreadable).
    pub mtime: u64,
    /// Bytes of content a file entry yields when read to its end (0 for others).
    pub size: u64,
}

/// Normalise an archive path (an entry's name or a hard link's target): `""` for the
/// root, otherwise relative segments joined by `/`.
pub fn entry_path(raw: &[u8]) -> Result<String> {
    let s = std::str::from_utf8(raw).map_err(|_| {
        Error::invalid(format!(
            "path {:?} is not UTF-8",
            String::from_utf8_lossy(raw)
        ))
    })?;
    if s.contains('\0') {
        return Err(Error::invalid(format!("path {s:?} contains NUL")));
    }
    if s.starts_with('/') {
        return Err(Error::invalid(format!("path {s:?} is absolute")));
    }
    let mut out = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(Error::invalid(format!("path {s:?} contains '..'"))),
            c if c.len() > MAX_NAME => {
                return Err(Error::invalid(format!(
                    "path {s:?} has a name longer than {MAX_NAME} bytes"
                )));
            }
            c => out.push(c),
        }
    }
    let path = out.join("/");
    if path.len() > MAX_PATH {
        return Err(Error::invalid(format!(
            "a path is longer than {MAX_PATH} bytes"
        )));
    }
    Ok(path)
}

/// Check a symlink target as the task made it; it is returned unchanged.
pub fn symlink_target(raw: &[u8]) -> Result<String> {
    let s = std::str::from_utf8(raw).map_err(|_| {
        Error::invalid(format!(
            "symlink target {:?} is not UTF-8",
            String::from_utf8_lossy(raw)
        ))
    })?;
    if s.is_empty() {
        return Err(Error::invalid("a symlink has an empty target"));
    }
    if s.contains('\0') {
        return Err(Error::invalid(format!("symlink target {s:?} contains NUL")));
    }
    if s.len() > MAX_PATH {
        return Err(Error::invalid(format!(
            "a symlink target is longer than {MAX_PATH} bytes"
        )));
    }
    Ok(s.to_owned())
}

fn bad_read(e: io::Error, what: &str) -> Error {
    Error::invalid(format!("{what}: {e}")).with_source(e)
}

/// Check one entry on its own. `Ok(None)` for entries that carry no content (a PAX
/// global header). A store that reads from a stream should prefer the stream's own
/// error over what this returns.
pub fn read_entry<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Option<Entry>> {
    use tar::EntryType as T;
    let et = entry.header().entry_type();
    if et.is_pax_global_extensions() {
        // Archive-wide metadata (e.g. a commit id from `git archive`): not content.
        return Ok(None);
    }
    if let Some(exts) = entry
        .pax_extensions()
        .map_err(|e| bad_read(e, "reading PAX records"))?
    {
        for ext in exts {
            let ext = ext.map_err(|e| bad_read(e, "reading a PAX record"))?;
            if ext.key_bytes().starts_with(b"GNU.sparse.") {
                return Err(Error::invalid(
                    "PAX sparse files are not supported; make the archive without tar's --sparse",
                ));
            }
        }
    }
    let path = entry_path(&entry.path_bytes())?;
    let header = entry.header();
    let mode = mode(header.mode().map_err(|e| bad_read(e, "reading a mode"))?);
    let mtime = header.mtime().unwrap_or(0);
    let link = |what: &str| {
        entry
            .link_name_bytes()
            .ok_or_else(|| Error::invalid(format!("{what} {path:?} has no target")))
    };
    let kind = match et {
        T::Regular | T::Continuous | T::GNUSparse => EntryKind::File,
        T::Directory => EntryKind::Dir,
        T::Symlink => EntryKind::Symlink {
            target: symlink_target(&link("symlink")?)?,
        },
        T::Link => {
            let target = entry_path(&link("hard link")?)?;
            if target.is_empty() || target == path {
                return Err(Error::invalid(format!(
                    "hard link {path:?} does not point at another file"
                )));
            }
            EntryKind::HardLink { target }
        }
        T::Char | T::Block | T::Fifo => {
            return Err(Error::invalid(format!(
                "entry {path:?} is a device or fifo; volumes hold only directories, files and links"
            )));
        }
        other => {
            return Err(Error::invalid(format!(
                "entry {path:?} has unsupported type {:?}",
                other.as_byte() as char
            )));
        }
    };
    if path.is_empty() && kind != EntryKind::Dir {
        return Err(Error::invalid(
            "a non-directory entry names the archive root",
        ));
    }
    // For a GNU sparse file the tar reader reports the expanded size.
    let size = if kind == EntryKind::File {
        entry.size()
    } else {
        0
    };
    Ok(Some(Entry {
        path,
        kind,
        mode,
        mtime,
        size,
    }))
}

/// What a store's tree holds so far, as [`plan`] needs to see it. A store on a real
/// filesystem answers from `lstat` (never following the last component), so the rules
/// hold for what is on disk, not for what the archive said.
pub trait Existing {
    /// What is at `path` (normalised, relative to the tree's root; never `""`), or
    /// `None` when nothing is. Only asked after every parent was reported a directory.
    fn kind(&mut self, path: &str) -> Result<Option<Kind>>;
}

/// What writing one entry takes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Missing parents to create first, outermost first, with [`IMPLIED_DIR_MODE`].
    pub implied_dirs: Vec<String>,
    /// A file or symlink at the entry's path to remove first. An existing directory
    /// is kept when the entry is a directory (it takes the entry's mode).
    pub replace: Option<Kind>,
}

/// Decide how to write `entry` into the tree `existing` describes, or refuse it. The
/// root entry (`""`) needs nothing.
pub fn plan(existing: &mut dyn Existing, entry: &Entry) -> Result<Plan> {
    let mut out = Plan::default();
    if entry.path.is_empty() {
        return Ok(out);
    }
    if let EntryKind::HardLink { target } = &entry.kind {
        match lookup(existing, target)? {
            Lookup::Found(Kind::File) => {}
            _ => {
                return Err(Error::invalid(format!(
                    "hard link {:?} does not point at a regular file of the volume",
                    entry.path
                )));
            }
        }
    }
    match lookup(existing, &entry.path)? {
        Lookup::Through(kind, at) => {
            let what = match kind {
                Kind::Symlink => "symlink",
                _ => "file",
            };
            Err(Error::invalid(format!(
                "entry {:?} goes through {what} {at:?}; nothing is written through a link or a file",
                entry.path
            )))
        }
        Lookup::Missing { from } => {
            let segs: Vec<&str> = entry.path.split('/').collect();
            for i in from..segs.len() - 1 {
                out.implied_dirs.push(segs[..=i].join("/"));
            }
            Ok(out)
        }
        Lookup::Found(Kind::Dir) if entry.kind == EntryKind::Dir => Ok(out),
        Lookup::Found(Kind::Dir) => Err(Error::invalid(format!(
            "entry {:?} would replace a directory",
            entry.path
        ))),
        Lookup::Found(k) => {
            out.replace = Some(k);
            Ok(out)
        }
    }
}

enum Lookup {
    /// The path holds this.
    Found(Kind),
    /// A parent is not a directory: what it is and where.
    Through(Kind, String),
    /// Nothing at the path; parents from segment `from` on are missing too.
    Missing { from: usize },
}

/// Find `path` without following anything: every parent must be a directory.
fn lookup(existing: &mut dyn Existing, path: &str) -> Result<Lookup> {
    let segs: Vec<&str> = path.split('/').collect();
    for i in 0..segs.len() {
        let here = segs[..=i].join("/");
        match existing.kind(&here)? {
            None => return Ok(Lookup::Missing { from: i }),
            Some(k) if i + 1 == segs.len() => return Ok(Lookup::Found(k)),
            Some(Kind::Dir) => {}
            Some(k) => return Ok(Lookup::Through(k, here)),
        }
    }
    // Unreachable: `split` yields at least one segment and the last one returns.
    Ok(Lookup::Missing { from: segs.len() })
}

/// Append a symlink entry whose target is stored byte for byte (`tar::Builder`
/// would normalise `a/./b`, `a//b` or a trailing `/`), with a GNU long link for
/// targets of 100 bytes or more.
pub fn append_symlink<W: Write>(
    b: &mut tar::Builder<W>,
    path: &str,
    target: &str,
    mtime: u64,
) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(0);
    h.set_mtime(mtime);
    let t = target.as_bytes();
    if t.len() >= 100 {
        let mut long = tar::Header::new_gnu();
        long.set_entry_type(tar::EntryType::GNULongLink);
        if let Some(g) = long.as_gnu_mut() {
            g.name[..13].copy_from_slice(b"././@LongLink");
        }
        long.set_mode(0o644);
        long.set_size(t.len() as u64 + 1);
        long.set_mtime(0);
        long.set_cksum();
        let mut data = t.to_vec();
        data.push(0);
        b.append(&long, data.as_slice())?;
        h.set_link_name_literal(&t[..99])?;
    } else {
        h.set_link_name_literal(t)?;
    }
    b.append_data(&mut h, path, io::empty())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ErrorKind;

    #[derive(Default)]
    struct Map(BTreeMap<String, Kind>);
    impl Existing for Map {
        fn kind(&mut self, path: &str) -> Result<Option<Kind>> {
            Ok(self.0.get(path).copied())
        }
    }

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.to_owned(),
            kind,
            mode: 0o644,
            mtime: 0,
            size: 0,
        }
    }

    #[test]
    fn paths_are_normalised_or_refused() {
        assert_eq!(entry_path(b"a/./b//c/").unwrap(), "a/b/c");
        assert_eq!(entry_path(b"./").unwrap(), "");
        let long = "n".repeat(MAX_NAME + 1);
        for bad in [
            &b"../x"[..],
            b"a/../../x",
            b"/etc/passwd",
            b"\xff",
            b"a\0b",
            long.as_bytes(),
        ] {
            assert_eq!(
                entry_path(bad).unwrap_err().kind(),
                ErrorKind::Invalid,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn symlink_targets_are_kept_as_they_are() {
        for t in ["/etc/passwd", "../../..", "a/./b/", "dangling", "x//y"] {
            assert_eq!(symlink_target(t.as_bytes()).unwrap(), t);
        }
        for bad in [&b""[..], b"a\0b", b"\xfe"] {
            assert_eq!(symlink_target(bad).unwrap_err().kind(), ErrorKind::Invalid);
        }
    }

    #[test]
    fn modes_drop_setuid_and_setgid_and_keep_sticky() {
        assert_eq!(mode(0o4755), 0o755);
        assert_eq!(mode(0o2755), 0o755);
        assert_eq!(mode(0o1777), 0o1777);
        assert_eq!(mode(0o100644), 0o644);
    }

    #[test]
    fn plans_imply_parents_replace_files_and_refuse_the_rest() {
        let mut m = Map::default();
        let p = plan(&mut m, &entry("a/b/f", EntryKind::File)).unwrap();
        assert_eq!(p.implied_dirs, ["a", "a/b"]);
        m.0.insert("a".into(), Kind::Dir);
        m.0.insert("a/f".into(), Kind::File);
        m.0.insert("l".into(), Kind::Symlink);
        m.0.insert("a/l".into(), Kind::Symlink);
        let p = plan(&mut m, &entry("a/f", EntryKind::Dir)).unwrap();
        assert_eq!(p.replace, Some(Kind::File));
        let p = plan(&mut m, &entry("l", EntryKind::File)).unwrap();
        assert_eq!(p.replace, Some(Kind::Symlink));
        assert_eq!(
            plan(&mut m, &entry("a", EntryKind::Dir)).unwrap(),
            Plan::default()
        );
        let refused = [
            entry("l/x", EntryKind::File),
            entry("a/l/x", EntryKind::Dir),
            entry("a/f/x", EntryKind::File),
            entry("a", EntryKind::File),
            entry(
                "a",
                EntryKind::Symlink {
                    target: "/tmp".into(),
                },
            ),
            entry("h", EntryKind::HardLink { target: "l".into() }),
            entry(
                "h",
                EntryKind::HardLink {
                    target: "a/l/f".into(),
                },
            ),
            entry(
                "h",
                EntryKind::HardLink {
                    target: "missing".into(),
                },
            ),
        ];
        for e in refused {
            assert_eq!(
                plan(&mut m, &e).unwrap_err().kind(),
                ErrorKind::Invalid,
                "{e:?}"
            );
        }
        let h = entry(
            "h",
            EntryKind::HardLink {
                target: "a/f".into(),
            },
        );
        assert_eq!(plan(&mut m, &h).unwrap(), Plan::default());
    }

    fn one(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Result<Option<Entry>> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let data = b.into_inner().unwrap();
        let mut ar = tar::Archive::new(data.as_slice());
        let mut it = ar.entries().unwrap();
        let mut e = it.next().unwrap().unwrap();
        read_entry(&mut e)
    }

    #[test]
    fn entries_are_read_with_the_rules() {
        let e = one(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o6755);
            h.set_size(2);
            b.append_data(&mut h, "./bin/x", &b"hi"[..]).unwrap();
        })
        .unwrap()
        .unwrap();
        assert_eq!((e.path.as_str(), e.mode, e.size), ("bin/x", 0o755, 2));
        let e = one(|b| append_symlink(b, "l", "/abs/./t/", 0).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(
            e.kind,
            EntryKind::Symlink {
                target: "/abs/./t/".into()
            }
        );
        let long = format!("/{}", "t/".repeat(80));
        let e = one(|b| append_symlink(b, "l", &long, 0).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(e.kind, EntryKind::Symlink { target: long });
        let fifo = one(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Fifo);
            h.set_size(0);
            b.append_data(&mut h, "p", io::empty()).unwrap();
        });
        assert_eq!(fifo.unwrap_err().kind(), ErrorKind::Invalid);
        let pax_sparse = one(|b| {
            b.append_pax_extensions([("GNU.sparse.major", &b"1"[..])])
                .unwrap();
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(0);
            b.append_data(&mut h, "s", io::empty()).unwrap();
        });
        assert_eq!(pax_sparse.unwrap_err().kind(), ErrorKind::Invalid);
    }
}
