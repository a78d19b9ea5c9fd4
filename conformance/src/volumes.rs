//! The [`VolumeStore`] suite: the volume life cycle (create, write, seal, read, delete),
//! digests that match [`TreeDigest`], atomicity, hostile archives and mounts.
//!
//! Every case uses fresh random handles and deletes its volumes at the end, so cases can
//! share one store.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};

use jetbridge_core::archive::{self, EntryKind, Existing, Kind};
use jetbridge_core::digest::{Digest, TreeDigest, TreeEntry, sha256};
use jetbridge_core::names::VolumeHandle;
use jetbridge_core::ports::{
    ByteStream, MountAccess, VolumeInfo, VolumeState, VolumeStore, collect_stream,
};
use jetbridge_core::{Error, ErrorKind};

use crate::exec::{chunked, pseudo_random_bytes};
use crate::support::{CaseError, CaseOutcome, CaseResult, outcome};
use crate::{Subject, ensure, ensure_eq, ensure_kind, skip};

/// Every case of the suite, in the order [`run_all`] runs them.
pub const CASES: &[&str] = &[
    "create_is_creating",
    "create_twice_already_exists",
    "missing_volume_not_found",
    "read_tar_of_creating_not_found",
    "seal_reports_size_and_digest",
    "read_tar_round_trips_tree",
    "digest_follows_content",
    "write_after_seal_conflict",
    "seal_twice_returns_same_info",
    "delete_then_stat_not_found",
    "delete_missing_succeeds",
    "list_includes_both_states",
    "hostile_tars_rejected",
    "hostile_tars_kept_as_written",
    "symlinks_round_trip_unfollowed",
    "broken_stream_leaves_nothing_readable",
    "truncated_tar_fails",
    "empty_tar_seals_empty",
    "large_file_round_trips",
    "many_small_files_round_trip",
    "mount_unsupported",
    "mount_follows_state",
];

/// Run the case called `name` against `subject`; `None` if there is no such case.
pub async fn run_case(subject: &Subject<dyn VolumeStore>, name: &str) -> Option<CaseResult> {
    let s: &dyn VolumeStore = &**subject;
    Some(match name {
        "create_is_creating" => Box::pin(create_is_creating(s)).await,
        "create_twice_already_exists" => Box::pin(create_twice_already_exists(s)).await,
        "missing_volume_not_found" => Box::pin(missing_volume_not_found(s)).await,
        "read_tar_of_creating_not_found" => Box::pin(read_tar_of_creating_not_found(s)).await,
        "seal_reports_size_and_digest" => Box::pin(seal_reports_size_and_digest(s)).await,
        "read_tar_round_trips_tree" => Box::pin(read_tar_round_trips_tree(s)).await,
        "digest_follows_content" => Box::pin(digest_follows_content(s)).await,
        "write_after_seal_conflict" => Box::pin(write_after_seal_conflict(s)).await,
        "seal_twice_returns_same_info" => Box::pin(seal_twice_returns_same_info(s)).await,
        "delete_then_stat_not_found" => Box::pin(delete_then_stat_not_found(s)).await,
        "delete_missing_succeeds" => Box::pin(delete_missing_succeeds(s)).await,
        "list_includes_both_states" => Box::pin(list_includes_both_states(s)).await,
        "hostile_tars_rejected" => Box::pin(hostile_tars_rejected(s)).await,
        "hostile_tars_kept_as_written" => Box::pin(hostile_tars_kept_as_written(s)).await,
        "symlinks_round_trip_unfollowed" => Box::pin(symlinks_round_trip_unfollowed(s)).await,
        "broken_stream_leaves_nothing_readable" => {
            Box::pin(broken_stream_leaves_nothing_readable(s)).await
        }
        "truncated_tar_fails" => Box::pin(truncated_tar_fails(s)).await,
        "empty_tar_seals_empty" => Box::pin(empty_tar_seals_empty(s)).await,
        "large_file_round_trips" => Box::pin(large_file_round_trips(s)).await,
        "many_small_files_round_trip" => Box::pin(many_small_files_round_trip(s)).await,
        "mount_unsupported" => Box::pin(mount_unsupported(s)).await,
        "mount_follows_state" => Box::pin(mount_follows_state(s)).await,
        _ => return None,
    })
}

/// Run every case against `subject`, one after another.
pub async fn run_all(subject: &Subject<dyn VolumeStore>) -> Vec<CaseOutcome> {
    let mut out = Vec::with_capacity(CASES.len());
    for name in CASES {
        out.push(outcome(name, run_case(subject, name)).await);
    }
    out
}

// ---------------------------------------------------------------------------------
// Trees

/// One entry of a [`Tree`].
#[derive(Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory with these permission bits.
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Permission bits.
        mode: u32,
        /// Content.
        data: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Target as stored.
        target: String,
    },
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Dir { mode } => write!(f, "dir {mode:04o}"),
            // Contents can be megabytes: show their size and hash only.
            Node::File { mode, data } => write!(
                f,
                "file {mode:04o} {} bytes sha256:{}",
                data.len(),
                hex_prefix(&sha256(data))
            ),
            Node::Symlink { target } => write!(f, "symlink -> {target}"),
        }
    }
}

fn hex_prefix(b: &[u8; 32]) -> String {
    b[..6].iter().map(|x| format!("{x:02x}")).collect()
}

/// A tree of files as a test writes it and reads it back: paths relative,
/// `/`-separated, parents listed before children, the root not listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree(pub BTreeMap<String, Node>);

/// Reduce a tar path to the [`Tree`] form: no leading `./` or `/`, no trailing `/`;
/// the root is the empty string.
pub fn normalize(path: &str) -> String {
    let mut p = path;
    loop {
        if let Some(rest) = p.strip_prefix("./") {
            p = rest;
        } else if let Some(rest) = p.strip_prefix('/') {
            p = rest;
        } else {
            break;
        }
    }
    let p = p.trim_end_matches('/');
    if p == "." {
        String::new()
    } else {
        p.to_owned()
    }
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a directory.
    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        self.0.insert(path.to_owned(), Node::Dir { mode });
        self
    }

    /// Add a file.
    pub fn file(mut self, path: &str, mode: u32, data: impl Into<Vec<u8>>) -> Self {
        self.0.insert(
            path.to_owned(),
            Node::File {
                mode,
                data: data.into(),
            },
        );
        self
    }

    /// Add a symbolic link.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.0.insert(
            path.to_owned(),
            Node::Symlink {
                target: target.to_owned(),
            },
        );
        self
    }

    /// Total size of the regular files.
    pub fn size(&self) -> u64 {
        self.0
            .values()
            .map(|n| match n {
                Node::File { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum()
    }

    /// The [`TreeDigest`] of the tree, as every store must compute it.
    pub fn digest(&self) -> Digest {
        let mut d = TreeDigest::new();
        for (path, node) in &self.0 {
            match node {
                Node::Dir { mode } => d.add(path, TreeEntry::Dir { mode: *mode }),
                Node::File { mode, data } => {
                    let h = sha256(data);
                    d.add(
                        path,
                        TreeEntry::File {
                            mode: *mode,
                            size: data.len() as u64,
                            sha256: &h,
                        },
                    );
                }
                Node::Symlink { target } => d.add(path, TreeEntry::Symlink { target }),
            }
        }
        d.finish()
    }

    /// A plain tar of the tree (GNU headers, entries in path order).
    pub fn to_tar(&self) -> io::Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, node) in &self.0 {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_700_000_000);
            match node {
                Node::Dir { mode } => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    b.append_data(&mut h, path, io::empty())?;
                }
                Node::File { mode, data } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data.as_slice())?;
                }
                Node::Symlink { target } => {
                    // Byte for byte (`append_link` would normalise the target).
                    archive::append_symlink(&mut b, path, target, 1_700_000_000)?;
                }
            }
        }
        b.into_inner()
    }

    /// Extract `data` into the tree with core's entry rules
    /// ([`jetbridge_core::archive`]): the reference every store must agree with. On
    /// error the tree may hold part of the archive.
    pub fn extract(&mut self, data: &[u8]) -> jetbridge_core::Result<()> {
        let bad = |e: io::Error| Error::invalid(format!("reading the archive: {e}"));
        let mut ar = tar::Archive::new(data);
        for entry in ar.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let Some(e) = archive::read_entry(&mut entry)? else {
                continue;
            };
            if e.path.is_empty() {
                continue;
            }
            let plan = archive::plan(self, &e)?;
            for d in plan.implied_dirs {
                self.0.insert(
                    d,
                    Node::Dir {
                        mode: archive::IMPLIED_DIR_MODE,
                    },
                );
            }
            let node = match e.kind {
                EntryKind::Dir => Node::Dir { mode: e.mode },
                EntryKind::File => {
                    let mut data = Vec::new();
                    entry.read_to_end(&mut data).map_err(bad)?;
                    if data.len() as u64 != e.size {
                        return Err(Error::invalid(format!("{:?} is cut short", e.path)));
                    }
                    Node::File { mode: e.mode, data }
                }
                EntryKind::Symlink { target } => Node::Symlink { target },
                EntryKind::HardLink { target } => self.0[&target].clone(),
            };
            self.0.insert(e.path, node);
        }
        Ok(())
    }

    /// Read a tar into a tree; fails on entry types a volume never holds.
    pub fn from_tar(data: &[u8]) -> io::Result<Tree> {
        let mut tree = Tree::new();
        let mut ar = tar::Archive::new(data);
        for entry in ar.entries()? {
            let mut entry = entry?;
            let path = normalize(&entry.path()?.to_string_lossy());
            let mode = entry.header().mode()? & 0o7777;
            let node = match entry.header().entry_type() {
                tar::EntryType::Directory => Node::Dir { mode },
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mut data = Vec::new();
                    entry.read_to_end(&mut data)?;
                    Node::File { mode, data }
                }
                tar::EntryType::Symlink => Node::Symlink {
                    target: entry
                        .link_name()?
                        .map(|t| t.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                },
                tar::EntryType::XGlobalHeader => continue,
                other => {
                    return Err(io::Error::other(format!(
                        "unexpected entry type {other:?} at {path:?}"
                    )));
                }
            };
            if path.is_empty() {
                // The root directory itself is not part of the tree.
                continue;
            }
            tree.0.insert(path, node);
        }
        Ok(tree)
    }

    /// The first few differences from `other`, or `None` when equal.
    pub fn diff(&self, other: &Tree) -> Option<String> {
        let mut out = Vec::new();
        for (p, n) in &self.0 {
            match other.0.get(p) {
                None => out.push(format!("missing {p:?} ({n:?})")),
                Some(m) if m != n => out.push(format!("{p:?}: want {n:?}, got {m:?}")),
                Some(_) => {}
            }
        }
        for (p, n) in &other.0 {
            if !self.0.contains_key(p) {
                out.push(format!("unexpected {p:?} ({n:?})"));
            }
        }
        if out.is_empty() {
            return None;
        }
        let more = out.len().saturating_sub(10);
        out.truncate(10);
        if more > 0 {
            out.push(format!("... and {more} more"));
        }
        Some(out.join("\n  "))
    }
}

impl Existing for Tree {
    fn kind(&mut self, path: &str) -> jetbridge_core::Result<Option<Kind>> {
        Ok(self.0.get(path).map(|n| match n {
            Node::Dir { .. } => Kind::Dir,
            Node::File { .. } => Kind::File,
            Node::Symlink { .. } => Kind::Symlink,
        }))
    }
}

/// A tree of symlinks a task may make and the next step must see again exactly:
/// absolute, escaping, dangling, chained, looping, long, and targets `tar` tools like
/// to normalise (`./`, `//`, a trailing `/`). None of them is followed by a store.
pub fn symlink_tree() -> Tree {
    let long = format!("/{}", "deep/".repeat(40));
    Tree::new()
        .dir("rootfs", 0o755)
        .dir("rootfs/usr", 0o755)
        .dir("rootfs/usr/bin", 0o755)
        .file("rootfs/usr/bin/busybox", 0o755, "#!/bin/true\n")
        .symlink("rootfs/bin", "usr/bin")
        .symlink("rootfs/usr/bin/sh", "/usr/bin/busybox")
        .symlink("rootfs/etc-passwd", "/etc/passwd")
        .symlink("rootfs/up", "../../../../..")
        .symlink("dangling", "does/not/exist")
        .symlink("dangling-abs", "/nonexistent/jetbridge")
        .symlink("chain-a", "chain-b")
        .symlink("chain-b", "/tmp")
        .symlink("loop-1", "loop-2")
        .symlink("loop-2", "loop-1")
        .symlink("dotted", "./rootfs/./usr//bin/")
        .symlink("long", &long)
        .dir("node_modules", 0o755)
        .dir("node_modules/.bin", 0o755)
        .symlink("node_modules/.bin/tool", "../tool/cli.js")
        .dir("node_modules/tool", 0o755)
        .file("node_modules/tool/cli.js", 0o755, "// cli\n")
}

/// A tree with what volumes must keep: modes, nested and empty directories, symlinks
/// inside the tree, empty files, names with spaces and non-ASCII characters.
pub fn sample_tree() -> Tree {
    Tree::new()
        .file("README.md", 0o644, "# sample\n")
        .file("empty-file", 0o644, "")
        .file("with space.txt", 0o644, "spaced\n")
        .file("ünïcode.txt", 0o644, "ü\n")
        .dir("bin", 0o755)
        .file("bin/run.sh", 0o755, "#!/bin/sh\necho hi\n")
        .symlink("bin/readme", "../README.md")
        .symlink("readme-link", "README.md")
        .dir("private", 0o700)
        .file("private/key", 0o600, "not really a key\n")
        .dir("empty-dir", 0o755)
        .dir("a", 0o755)
        .dir("a/b", 0o755)
        .dir("a/b/c", 0o750)
        .file("a/b/c/deep.bin", 0o644, pseudo_random_bytes(70_000, 11))
}

// ---------------------------------------------------------------------------------
// Hostile archives

/// Archives every store must reject with `Invalid`, writing nothing outside the
/// volume and leaving nothing readable. Paths that try to escape use names containing
/// [`hostile::ESCAPE_NAME`], so a filesystem test can check none appeared.
pub mod hostile {
    use std::io;

    /// The file name every escaping entry tries to create.
    pub const ESCAPE_NAME: &str = "jetbridge-hostile-escape";

    struct Raw<'a> {
        kind: tar::EntryType,
        name: &'a [u8],
        link: Option<&'a [u8]>,
        data: &'a [u8],
        mode: u32,
        device: Option<(u32, u32)>,
    }

    fn raw(kind: tar::EntryType, name: &str) -> Raw<'_> {
        Raw {
            kind,
            name: name.as_bytes(),
            link: None,
            data: b"",
            mode: 0o644,
            device: None,
        }
    }

    fn file<'a>(name: &'a str, data: &'a [u8]) -> Raw<'a> {
        Raw {
            data,
            ..raw(tar::EntryType::Regular, name)
        }
    }

    fn link<'a>(kind: tar::EntryType, name: &'a str, target: &'a str) -> Raw<'a> {
        Raw {
            link: Some(target.as_bytes()),
            mode: 0o777,
            ..raw(kind, name)
        }
    }

    fn device(kind: tar::EntryType, name: &str, major: u32, minor: u32) -> Raw<'_> {
        Raw {
            device: Some((major, minor)),
            mode: 0o666,
            ..raw(kind, name)
        }
    }

    fn dir(name: &str) -> Raw<'_> {
        Raw {
            mode: 0o755,
            ..raw(tar::EntryType::Directory, name)
        }
    }

    /// Write entries without the path checks `tar::Builder` applies, since these
    /// archives exist to break them.
    fn archive(entries: &[Raw<'_>], gnu: bool) -> io::Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = if gnu {
                tar::Header::new_gnu()
            } else {
                tar::Header::new_ustar()
            };
            let slot = &mut h.as_old_mut().name;
            if e.name.len() >= slot.len() {
                return Err(io::Error::other("name too long for a raw header"));
            }
            slot.fill(0);
            slot[..e.name.len()].copy_from_slice(e.name);
            h.set_entry_type(e.kind);
            h.set_mode(e.mode);
            h.set_size(e.data.len() as u64);
            h.set_mtime(1_700_000_000);
            if let Some(l) = e.link {
                h.set_link_name_literal(l)?;
            }
            if let Some((major, minor)) = e.device {
                h.set_device_major(major)?;
                h.set_device_minor(minor)?;
            }
            h.set_cksum();
            b.append(&h, e.data)?;
        }
        b.into_inner()
    }

    pub(crate) fn pax_record(key: &str, value: &str) -> Vec<u8> {
        // "<len> <key>=<value>\n" where len counts the whole record, its own digits too.
        let rest = format!(" {key}={value}\n");
        let mut len = rest.len() + 1;
        while len.to_string().len() + rest.len() != len {
            len += 1;
        }
        format!("{len}{rest}").into_bytes()
    }

    /// Every hostile archive, by name.
    pub fn archives() -> Vec<(&'static str, Vec<u8>)> {
        let escape = ESCAPE_NAME;
        let up = format!("../{escape}");
        let up_nested = format!("a/../../{escape}");
        let abs = format!("/tmp/{escape}");
        let through_out = format!("out/{escape}");
        let through_abs = format!("abs/{escape}");
        let pax = pax_record("path", &up);
        let long = format!("{}/../../{escape}\0", "x".repeat(120));
        let chain_through = format!("a/{escape}");
        let chain_in_dirs = format!("d/l/{escape}");
        let through_x = format!("x/{escape}");
        let pax_nul = pax_record("path", &format!("benign\0/../{escape}"));
        let long_nul = format!("benign\0/../{escape}\0");
        let pax_link_nul = pax_record("linkpath", "fine\0/etc");
        let pax_sparse = [
            pax_record("GNU.sparse.major", "1"),
            pax_record("GNU.sparse.minor", "0"),
            pax_record("GNU.sparse.name", "sparse.bin"),
            pax_record("GNU.sparse.realsize", "4096"),
        ]
        .concat();
        let cases: Vec<(&'static str, Vec<Raw<'_>>, bool)> = vec![
            ("dotdot", vec![file(&up, b"escaped\n")], false),
            (
                "dotdot_nested",
                vec![dir("a"), file(&up_nested, b"escaped\n")],
                false,
            ),
            ("absolute_path", vec![file(&abs, b"escaped\n")], false),
            (
                "symlink_dir_out_then_file",
                vec![
                    link(tar::EntryType::Symlink, "out", ".."),
                    file(&through_out, b"escaped\n"),
                ],
                false,
            ),
            (
                "symlink_absolute_dir_then_file",
                vec![
                    link(tar::EntryType::Symlink, "abs", "/tmp"),
                    file(&through_abs, b"escaped\n"),
                ],
                false,
            ),
            (
                "hardlink_out",
                vec![link(tar::EntryType::Link, "hard", &up)],
                false,
            ),
            (
                "hardlink_absolute",
                vec![link(tar::EntryType::Link, "hard", "/etc/passwd")],
                false,
            ),
            (
                "char_device",
                vec![device(tar::EntryType::Char, "null", 1, 3)],
                false,
            ),
            (
                "block_device",
                vec![device(tar::EntryType::Block, "disk", 8, 0)],
                false,
            ),
            (
                "pax_path_dotdot",
                vec![
                    Raw {
                        data: &pax,
                        ..raw(tar::EntryType::XHeader, "PaxHeaders/benign.txt")
                    },
                    file("benign.txt", b"escaped\n"),
                ],
                false,
            ),
            (
                "gnu_longname_dotdot",
                vec![
                    Raw {
                        data: long.as_bytes(),
                        ..raw(tar::EntryType::GNULongName, "././@LongLink")
                    },
                    file("benign.txt", b"escaped\n"),
                ],
                true,
            ),
            (
                "symlink_chain_then_file",
                vec![
                    link(tar::EntryType::Symlink, "a", "b"),
                    link(tar::EntryType::Symlink, "b", "/tmp"),
                    file(&chain_through, b"escaped\n"),
                ],
                false,
            ),
            (
                "symlink_chain_in_dirs_then_file",
                vec![
                    dir("d"),
                    link(tar::EntryType::Symlink, "d/l", "../m"),
                    link(tar::EntryType::Symlink, "m", ".."),
                    file(&chain_in_dirs, b"escaped\n"),
                ],
                false,
            ),
            (
                "symlink_replaces_dir_then_file",
                vec![
                    dir("x"),
                    link(tar::EntryType::Symlink, "x", "/tmp"),
                    file(&through_x, b"escaped\n"),
                ],
                false,
            ),
            (
                "file_replaces_dir",
                vec![dir("d"), file("d/inner", b"x"), file("d", b"x")],
                false,
            ),
            (
                "hardlink_through_symlink",
                vec![
                    file("f", b"x"),
                    link(tar::EntryType::Symlink, "l", "."),
                    link(tar::EntryType::Link, "h", "l/f"),
                ],
                false,
            ),
            (
                "hardlink_to_file_replaced_by_symlink",
                vec![
                    file("f", b"x"),
                    link(tar::EntryType::Symlink, "f", "/etc/passwd"),
                    link(tar::EntryType::Link, "h", "f"),
                ],
                false,
            ),
            (
                "hardlink_to_dir",
                vec![dir("d"), link(tar::EntryType::Link, "h", "d")],
                false,
            ),
            ("fifo", vec![raw(tar::EntryType::Fifo, "pipe")], false),
            (
                "nul_in_pax_path",
                vec![
                    Raw {
                        data: &pax_nul,
                        ..raw(tar::EntryType::XHeader, "PaxHeaders/benign.txt")
                    },
                    file("benign.txt", b"escaped\n"),
                ],
                false,
            ),
            (
                "nul_in_gnu_longname",
                vec![
                    Raw {
                        data: long_nul.as_bytes(),
                        ..raw(tar::EntryType::GNULongName, "././@LongLink")
                    },
                    file("benign.txt", b"escaped\n"),
                ],
                true,
            ),
            (
                "nul_in_pax_linkpath",
                vec![
                    Raw {
                        data: &pax_link_nul,
                        ..raw(tar::EntryType::XHeader, "PaxHeaders/benign")
                    },
                    link(tar::EntryType::Symlink, "benign", "fine"),
                ],
                false,
            ),
            (
                "pax_sparse",
                vec![
                    Raw {
                        data: &pax_sparse,
                        ..raw(tar::EntryType::XHeader, "PaxHeaders/sparse.bin")
                    },
                    file("GNUSparseFile.0/sparse.bin", b"0\n"),
                ],
                false,
            ),
        ];
        cases
            .into_iter()
            .filter_map(|(name, entries, gnu)| {
                // Building can only fail on a name longer than a header slot, which
                // none of the names above is; a failure drops the archive visibly in
                // the crate's own tests.
                archive(&entries, gnu).ok().map(|a| (name, a))
            })
            .collect()
    }

    /// A GNU sparse file (`S`): 512 bytes of `a`, a hole, then `tail!` at 4096.
    fn gnu_sparse(name: &str) -> io::Result<(Vec<u8>, Vec<u8>)> {
        let mut h = tar::Header::new_gnu();
        h.set_path(name)?;
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        let g = h
            .as_gnu_mut()
            .ok_or_else(|| io::Error::other("not a GNU header"))?;
        g.sparse[0].set_offset(0);
        g.sparse[0].set_length(512);
        g.sparse[1].set_offset(4096);
        g.sparse[1].set_length(5);
        g.set_real_size(4101);
        h.set_size(517);
        h.set_cksum();
        let mut stored = vec![b'a'; 512];
        stored.extend_from_slice(b"tail!");
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, stored.as_slice())?;
        let mut expanded = vec![b'a'; 512];
        expanded.resize(4096, 0);
        expanded.extend_from_slice(b"tail!");
        Ok((b.into_inner()?, expanded))
    }

    /// Archives that look hostile but are accepted, each with the tree a store must
    /// hold afterwards: symlinks anywhere are kept as links (never followed), a later
    /// entry replaces a link instead of writing through it, setuid and setgid are
    /// dropped while sticky stays, a GNU sparse file is expanded.
    pub fn kept() -> Vec<(&'static str, Vec<u8>, super::Tree)> {
        use super::Tree;
        let escape = ESCAPE_NAME;
        let up = format!("../{escape}");
        let nested_up = format!("../../{escape}");
        let escape_in_d = format!("d/{escape}");
        let pax_link = pax_record("linkpath", "/etc");
        let cases: Vec<(&'static str, Vec<Raw<'_>>, Tree)> = vec![
            (
                "symlink_absolute_target",
                vec![link(tar::EntryType::Symlink, "passwd", "/etc/passwd")],
                Tree::new().symlink("passwd", "/etc/passwd"),
            ),
            (
                "nested_symlink_out",
                vec![
                    dir("sub"),
                    link(tar::EntryType::Symlink, "sub/up", &nested_up),
                ],
                Tree::new().dir("sub", 0o755).symlink("sub/up", &nested_up),
            ),
            (
                "symlink_out_then_replaced_by_file",
                vec![
                    link(tar::EntryType::Symlink, "target", &up),
                    file("target", b"replaced\n"),
                ],
                Tree::new().file("target", 0o644, "replaced\n"),
            ),
            (
                "symlink_then_dir_same_name",
                vec![
                    link(tar::EntryType::Symlink, "d", "/tmp"),
                    dir("d"),
                    file(&escape_in_d, b"inside\n"),
                ],
                Tree::new()
                    .dir("d", 0o755)
                    .file(&escape_in_d, 0o644, "inside\n"),
            ),
            (
                "pax_linkpath_absolute",
                vec![
                    Raw {
                        data: &pax_link,
                        ..raw(tar::EntryType::XHeader, "PaxHeaders/benign")
                    },
                    link(tar::EntryType::Symlink, "benign", "fine"),
                ],
                Tree::new().symlink("benign", "/etc"),
            ),
            (
                "setuid_setgid_dropped_sticky_kept",
                vec![
                    Raw {
                        mode: 0o4755,
                        ..file("suid", b"u")
                    },
                    Raw {
                        mode: 0o2711,
                        ..file("sgid", b"g")
                    },
                    Raw {
                        mode: 0o1777,
                        ..dir("tmp")
                    },
                    Raw {
                        mode: 0o3775,
                        ..dir("shared")
                    },
                ],
                Tree::new()
                    .file("suid", 0o755, "u")
                    .file("sgid", 0o711, "g")
                    .dir("tmp", 0o1777)
                    .dir("shared", 0o1775),
            ),
        ];
        let mut out: Vec<(&'static str, Vec<u8>, Tree)> = cases
            .into_iter()
            .filter_map(|(name, entries, tree)| {
                archive(&entries, false).ok().map(|a| (name, a, tree))
            })
            .collect();
        if let Ok((data, expanded)) = gnu_sparse("sparse.bin") {
            out.push((
                "gnu_sparse_expanded",
                data,
                Tree::new().file("sparse.bin", 0o644, expanded),
            ));
        }
        out
    }
}

// ---------------------------------------------------------------------------------
// Helpers

/// The volumes one case creates; deleted at the end.
struct Vols<'a> {
    store: &'a dyn VolumeStore,
    handles: std::sync::Mutex<Vec<VolumeHandle>>,
}

impl<'a> Vols<'a> {
    fn new(store: &'a dyn VolumeStore) -> Self {
        Vols {
            store,
            handles: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A fresh handle, deleted at the end.
    fn handle(&self) -> VolumeHandle {
        let h = VolumeHandle::random();
        if let Ok(mut v) = self.handles.lock() {
            v.push(h.clone());
        }
        h
    }

    /// Create a fresh volume.
    async fn create(&self) -> Result<VolumeHandle, CaseError> {
        let h = self.handle();
        self.store.create(&h).await?;
        Ok(h)
    }

    /// Create, fill with `tree`, seal.
    async fn sealed(&self, tree: &Tree) -> Result<(VolumeHandle, VolumeInfo), CaseError> {
        let h = self.create().await?;
        self.store.write_tar(&h, tar_stream(tree)?).await?;
        let info = self.store.seal(&h).await?;
        Ok((h, info))
    }

    async fn finish(self, r: CaseResult) -> CaseResult {
        let handles = self.handles.lock().map(|v| v.clone()).unwrap_or_default();
        for h in handles {
            if let Err(e) = self.store.delete(&h).await {
                eprintln!("note: cleanup of volume {h} failed: {e}");
            }
        }
        r
    }
}

fn tar_stream(tree: &Tree) -> Result<ByteStream, CaseError> {
    let data = tree
        .to_tar()
        .map_err(|e| CaseError::here(format!("building a test tar: {e}")))?;
    // An odd chunk size: stores must not assume chunks align with tar blocks.
    Ok(chunked(&data, 7_919))
}

async fn read_tree(store: &dyn VolumeStore, h: &VolumeHandle) -> Result<Tree, CaseError> {
    let data = collect_stream(store.read_tar(h).await?).await?;
    Tree::from_tar(&data).map_err(|e| CaseError::here(format!("reading the volume's tar: {e}")))
}

fn check_sealed(info: &VolumeInfo, h: &VolumeHandle, tree: &Tree) -> CaseResult {
    ensure_eq!(&info.handle, h);
    ensure_eq!(info.state, VolumeState::Sealed);
    ensure_eq!(info.size, tree.size(), "size of a sealed volume");
    ensure_eq!(
        info.digest.as_ref(),
        Some(&tree.digest()),
        "digest of a sealed volume"
    );
    Ok(())
}

async fn round_trip(store: &dyn VolumeStore, tree: &Tree) -> CaseResult {
    let v = Vols::new(store);
    let r = async {
        let (h, info) = v.sealed(tree).await?;
        check_sealed(&info, &h, tree)?;
        let back = read_tree(store, &h).await?;
        if let Some(d) = tree.diff(&back) {
            return Err(CaseError::here(format!(
                "read_tar differs from what was written:\n  {d}"
            )));
        }
        Ok(())
    }
    .await;
    v.finish(r).await
}

// ---------------------------------------------------------------------------------
// Cases

/// A new volume is `Creating`, with no size and no digest.
pub async fn create_is_creating(store: &dyn VolumeStore) -> CaseResult {
    let v = Vols::new(store);
    let r = async {
        let h = v.handle();
        let info = store.create(&h).await?;
        ensure_eq!(info.handle, h);
        ensure_eq!(info.state, VolumeState::Creating);
        ensure_eq!(info.digest, None);
        ensure_eq!(info.size, 0);
        let stat = store.stat(&h).await?;
        ensure_eq!(stat.state, VolumeState::Creating);
        ensure_eq!(stat.digest, None);
        Ok(())
    }
    .await;
    v.finish(r).await
}

/// Creating a taken handle is `AlreadyExists`, in either state.
pub async fn create_twice_already_exists(store: &dyn VolumeStore) -> CaseResult {
    let v = Vols::new(store);
    let r = async {
        let h = v.create().await?;
        ensure_kind!(store.create(&h).await, ErrorKind::AlreadyExists);
        let (sealed, _) = v.sealed(&sample_tree()).await?;
        ensure_kind!(store.create(&sealed).await, ErrorKind::AlreadyExists);
        ensure_eq!(store.stat(&sealed).await?.state, VolumeState::Sealed);
        Ok(())
    }
    .await;
    v.finish(r).await
}

/// `stat` and `read_tar` of a volume that does not exist are `NotFound`.
pub async fn missing_volume_not_found(store: &dyn VolumeStore) -> CaseResult {
    let h = VolumeHandle::random();
    ensure_kind!(store.stat(&h).await, ErrorKind::NotFound);
    ensure_kind!(store.read_tar(&h).await, ErrorKind::NotFound);
    Ok(())
}

/// A volume being filled cannot be read: `read_tar` is `NotFound`.
pub async fn read_tar_of_creating_not_found(store: &dyn VolumeStore) -> CaseResult {
    let v = Vols::new(store);
    let r = async {
        let h = v.create().await?;
        ensure_kind!(store.read_tar(&h).await, ErrorKind::NotFound);
        store.write_tar(&h, tar_stream(&sample_tree())?).await?;
        ensure_kind!(store.read_tar(&h).await, ErrorKind::NotFound);
        ensure_eq!(store.stat(&h).await?.state, VolumeState::Creating);
        Ok(())
    }
    .await;
    v.finish(r).await
}

/// `seal` reports the size and the [`TreeDigest`] of what was written; `stat` agrees.
pub async fn seal_reports_size_and_digest(store: &dyn VolumeStore) -> CaseResult {
    let v = Vols::new(store);
    let r = async {
        let tree = sample_tree();
        let (h, info) = v.sealed(&tree).await?;
        check_sealed(&info, &h, &tree)?;
        let stat = store.stat(&h).await?;
        check_sealed(&stat, &h, &tree)?;
        Ok(())
    }
    .await;
    v.finish(r).await
}

/// `read_tar` gives back the tree: modes, empty directories, symlinks, contents.
pub async fn read_tar_round_trips_tree(store: &dyn VolumeStore) -> CaseResult {
    round_trip(store, &sample_tree()).await
}

/// Equal trees have equal digests; a change of content, mode or link target changes it.
pub async fn digest_follows_content(store: &dyn VolumeStore) -> CaseResult {
    let v = Vols::new(store);
    let r = async {
        let base = sample_tree();
        let (_, a) = v.sealed(&base).await?;
        let (_, b) = v.sealed(&base).await?;
        ensure!(a.digest.is_some());
        ensure_eq!(a.digest, b.digest, "same tree, same digest");
        let variants = [
            (
                "content",
                base.clone().file("README.md", 0o644, "# Sample\n"),
            ),
            ("mode", base.clone().file("README.md", 0o600, "# sample\n")),
            (
                "link target",
                base.clone().symlink("readme-link", "bin/run.sh"),
            ),
            ("empty dir", base.clone().dir("another-empty-dir", 0o755)),
        ];
        for (what, tree) in variants {
            let (h, c) = v.sealed(&tree).await?;
            check_sealed(&c, &h, &tree)?;
            ensure!(a.digest != c.digest, "a change of {what} keeps the digest");
        }
        Ok(())
    }
    .await;
    v.finish(r).await
}

/// Writing into a sealed volume is `Conflict` and changes nothing.
pub async fn write_after_seal_conflict(store: &dyn VolumeStore) -> CaseResult {
    let v = Vols::new(store);
    let r = async {
        let tree = sample_tree();
        let (h, info) = v.sealed(&tree).await?;
        let more = Tree::new().file("extra.txt", 0o644, "extra\n");
        ensure_kind!(
            store.write_tar(&h, tar_stream(&more)?).await,
            ErrorKind::Conflict
        );
        ensure_eq!(store.stat(&h).await?, info);
        ensure!(read_tree(store, &h).await? == tree, "the volume changed");
        Ok(())
    }
    .await;
    v.finish(r).await
}

/// Sealing a sealed volume returns the same info.
pub async fn seal_twice_returns_same_info(store: &dyn VolumeStore) -> CaseResult {
    let v = Vols::new(store);
    let r = async {
        let (h, first) = v.sealed(&sample_tree()).await?;
        let second = store.seal(&h).await?;
        ensure_eq!(first, second);
        Ok(())
    }
    .await;
    v.finish(r).await
}

/// After `delete` a volume (sealed or not) is gone: `stat` and `read_tar` are
/// `NotFound`, and its handle can be created again.
pub async fn delete_then_stat_not_found(store: &dyn VolumeStore) -> CaseResult {
    let v = Vols::new(store);
    let r = async {
        let (sealed, _) = v.sealed(&sample_tree()).await?;
        let creating = v.create().await?;
        for h in [&sealed, &creating] {
            store.delete(h).await?;
            ensure_kind!(store.stat(h).await, ErrorKind::NotFound);
            ensure_kind!(store.read_tar(h).await, ErrorKind::NotFound);
            ensure!(
                !store.list().await?.iter().any(|i| &i.handle == h),
                "list still has {h}"
            );
        }
        let info = store.create(&sealed).await?;
        ensure_eq!(info.state, VolumeState::Creating);
        Ok(())
    }
    .await;
    v.finish(r).await
}

/// Deleting a volume that does not exist succeeds.
pub async fn delete_missing_succeeds(store: &dyn VolumeStore) -> CaseResult {
    store.delete(&VolumeHandle::random()).await?;
    Ok(())
}

/// `list` has volumes in both states, with their state.
pub async fn list_includes_both_states(store: &dyn VolumeStore) -> CaseResult {
    let v = Vols::new(store);
    let r = async {
        let creating = v.create().await?;
        let (sealed, info) = v.sealed(&sample_tree()).await?;
        let all = store.list().await?;
        let find = |h: &VolumeHandle| all.iter().find(|i| &i.handle == h).cloned();
        ensure_eq!(
            find(&creating).map(|i| i.state),
            Some(VolumeState::Creating)
        );
        let listed = find(&sealed);
        ensure_eq!(listed.as_ref().map(|i| i.state), Some(VolumeState::Sealed));
        ensure_eq!(listed.and_then(|i| i.digest), info.digest);
        Ok(())
    }
    .await;
    v.finish(r).await
}

/// Every [`hostile`] archive is `Invalid` and leaves the volume unreadable.
pub async fn hostile_tars_rejected(store: &dyn VolumeStore) -> CaseResult {
    let v = Vols::new(store);
    let r = async {
        let archives = hostile::archives();
        ensure!(archives.len() >= 23, "every hostile archive builds");
        for (name, data) in archives {
            let h = v.create().await?;
            let one: CaseResult = async {
                ensure_kind!(
                    store.write_tar(&h, chunked(&data, 512)).await,
                    ErrorKind::Invalid
                );
                ensure_kind!(store.read_tar(&h).await, ErrorKind::NotFound);
                Ok(())
            }
            .await;
            one.map_err(|e| e.context(format!("hostile archive {name}")))?;
        }
        Ok(())
    }
    .await;
    v.finish(r).await
}

/// Every [`hostile::kept`] archive is accepted and holds exactly its tree: links kept
/// as links wherever they point, nothing written through one, setuid and setgid
/// dropped, sticky kept, GNU sparse files expanded; the digest is the tree's.
pub async fn hostile_tars_kept_as_written(store: &dyn VolumeStore) -> CaseResult {
    let v = Vols::new(store);
    let r = async {
        let kept = hostile::kept();
        ensure!(kept.len() >= 7, "every kept archive builds");
        for (name, data, tree) in kept {
            let one: CaseResult = async {
                let h = v.create().await?;
                store.write_tar(&h, chunked(&data, 512)).await?;
                let info = store.seal(&h).await?;
                check_sealed(&info, &h, &tree)?;
                let back = read_tree(store, &h).await?;
                if let Some(d) = tree.diff(&back) {
                    return Err(CaseError::here(format!("read_tar differs:\n  {d}")));
                }
                Ok(())
            }
            .await;
            one.map_err(|e| e.context(format!("archive {name}")))?;
        }
        Ok(())
    }
    .await;
    v.finish(r).await
}

/// A volume of symlinks that are absolute, escaping, dangling, chained, looping, long
/// or oddly spelled ([`symlink_tree`]) seals with the tree's digest and reads back
/// with every link exactly as made.
pub async fn symlinks_round_trip_unfollowed(store: &dyn VolumeStore) -> CaseResult {
    round_trip(store, &symlink_tree()).await
}

/// A stream that fails midway fails the write (with the stream's error or another)
/// and leaves nothing readable.
pub async fn broken_stream_leaves_nothing_readable(store: &dyn VolumeStore) -> CaseResult {
    let v = Vols::new(store);
    let r = async {
        let h = v.create().await?;
        let data = sample_tree()
            .to_tar()
            .map_err(|e| CaseError::here(e.to_string()))?;
        let half = data.len() / 2;
        let chunks: Vec<jetbridge_core::Result<bytes::Bytes>> = vec![
            Ok(bytes::Bytes::copy_from_slice(&data[..half])),
            Err(Error::transient("the connection dropped")),
        ];
        let res = store
            .write_tar(&h, Box::pin(futures::stream::iter(chunks)))
            .await;
        ensure!(res.is_err(), "a write from a failed stream succeeded");
        ensure_kind!(store.read_tar(&h).await, ErrorKind::NotFound);
        Ok(())
    }
    .await;
    v.finish(r).await
}

/// A tar cut off inside a file's data fails the write (any error kind: the contract
/// names none) and leaves nothing readable.
pub async fn truncated_tar_fails(store: &dyn VolumeStore) -> CaseResult {
    let v = Vols::new(store);
    let r = async {
        let tree = Tree::new().file("big.bin", 0o644, pseudo_random_bytes(100_000, 5));
        let data = tree.to_tar().map_err(|e| CaseError::here(e.to_string()))?;
        let h = v.create().await?;
        let res = store.write_tar(&h, chunked(&data[..50_000], 4096)).await;
        ensure!(res.is_err(), "a truncated tar was accepted");
        ensure_kind!(store.read_tar(&h).await, ErrorKind::NotFound);
        Ok(())
    }
    .await;
    v.finish(r).await
}

/// An empty tar (and no write at all) seals to an empty volume.
pub async fn empty_tar_seals_empty(store: &dyn VolumeStore) -> CaseResult {
    let v = Vols::new(store);
    let r = async {
        let empty = Tree::new();
        let (h, info) = v.sealed(&empty).await?;
        check_sealed(&info, &h, &empty)?;
        ensure!(
            read_tree(store, &h).await?.0.is_empty(),
            "an empty volume has entries"
        );
        // Sealing without any write is the same empty volume.
        let h2 = v.create().await?;
        let info2 = store.seal(&h2).await?;
        check_sealed(&info2, &h2, &empty)?;
        Ok(())
    }
    .await;
    v.finish(r).await
}

/// An 8 MiB file round-trips.
pub async fn large_file_round_trips(store: &dyn VolumeStore) -> CaseResult {
    let tree =
        Tree::new()
            .dir("big", 0o755)
            .file("big/blob.bin", 0o644, pseudo_random_bytes(8 << 20, 99));
    round_trip(store, &tree).await
}

/// 2,000 small files in 20 directories round-trip.
pub async fn many_small_files_round_trip(store: &dyn VolumeStore) -> CaseResult {
    let mut tree = Tree::new();
    for d in 0..20 {
        tree = tree.dir(&format!("d{d:02}"), 0o755);
        for f in 0..100 {
            tree = tree.file(
                &format!("d{d:02}/f{f:03}.txt"),
                0o644,
                format!("file {d} {f}\n"),
            );
        }
    }
    round_trip(store, &tree).await
}

/// Without the `mount` capability, `mount` is `Unsupported` in every state.
pub async fn mount_unsupported(store: &dyn VolumeStore) -> CaseResult {
    if store.capabilities().mount {
        skip!("mount is on");
    }
    let v = Vols::new(store);
    let r = async {
        let creating = v.create().await?;
        let (sealed, _) = v.sealed(&sample_tree()).await?;
        ensure_kind!(
            store.mount(&creating, MountAccess::Write).await,
            ErrorKind::Unsupported
        );
        ensure_kind!(
            store.mount(&sealed, MountAccess::Read).await,
            ErrorKind::Unsupported
        );
        Ok(())
    }
    .await;
    v.finish(r).await
}

/// With `mount`: `Write` needs `Creating` and `Read` needs `Sealed`; otherwise `Conflict`.
pub async fn mount_follows_state(store: &dyn VolumeStore) -> CaseResult {
    if !store.capabilities().mount {
        skip!("mount is off");
    }
    let v = Vols::new(store);
    let r = async {
        let creating = v.create().await?;
        store.mount(&creating, MountAccess::Write).await?;
        ensure_kind!(
            store.mount(&creating, MountAccess::Read).await,
            ErrorKind::Conflict
        );
        let (sealed, _) = v.sealed(&sample_tree()).await?;
        store.mount(&sealed, MountAccess::Read).await?;
        ensure_kind!(
            store.mount(&sealed, MountAccess::Write).await,
            ErrorKind::Conflict
        );
        Ok(())
    }
    .await;
    v.finish(r).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_tree_survives_tar() {
        let t = sample_tree();
        let back = Tree::from_tar(&t.to_tar().unwrap()).unwrap();
        assert_eq!(t.diff(&back), None);
        assert_eq!(t.digest(), back.digest());
        assert_eq!(t.size(), back.size());
    }

    #[test]
    fn diff_reports_changes() {
        let a = sample_tree();
        let b = a.clone().file("README.md", 0o600, "x");
        let d = a.diff(&b).unwrap();
        assert!(d.contains("README.md"), "{d}");
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn normalize_strips_prefixes() {
        assert_eq!(normalize("./"), "");
        assert_eq!(normalize("."), "");
        assert_eq!(normalize("./a/b/"), "a/b");
        assert_eq!(normalize("a"), "a");
    }

    /// Core's rules, applied by the reference extractor, refuse every hostile
    /// archive and turn every kept one into exactly its tree.
    #[test]
    fn corpus_agrees_with_the_reference_rules() {
        let all = hostile::archives();
        assert_eq!(all.len(), 23);
        for (name, data) in &all {
            let err = Tree::new().extract(data).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Invalid, "{name}: {err}");
        }
        let kept = hostile::kept();
        assert_eq!(kept.len(), 7);
        for (name, data, want) in &kept {
            let mut got = Tree::new();
            got.extract(data).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(want.diff(&got), None, "{name}");
        }
    }

    #[test]
    fn symlink_tree_survives_tar_byte_for_byte() {
        let t = symlink_tree();
        let mut back = Tree::new();
        back.extract(&t.to_tar().unwrap()).unwrap();
        assert_eq!(t.diff(&back), None);
        assert_eq!(t.digest(), back.digest());
    }

    #[test]
    fn pax_records_count_their_own_length() {
        for v in ["x".to_owned(), "y".repeat(90), "z".repeat(994)] {
            let r = String::from_utf8(hostile::pax_record("path", &v)).unwrap();
            let (len, rest) = r.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), r.len(), "{r}");
            assert_eq!(rest, format!("path={v}\n"));
        }
    }
}
