//! The verified copy of a sealed tree: one pass that reads each file once, writes it
//! and hashes it, then compares the [`TreeDigest`] with the sealed one.
//!
//! This is the one piece of filesystem code in core, and it is blocking (call it from
//! `spawn_blocking`). It lives here because two adapters need exactly the same copy and
//! adapters never depend on each other: the local backend makes private input copies
//! with it, and the directory store's `copy_to` is it.
//!
//! Symlinks are recreated, never followed; modes and mtimes are kept; the copy is built
//! in a hidden sibling of the destination and renamed into place only once its digest
//! matches, so on any error the destination is untouched and nothing else is left.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};

use crate::digest::{Digest, TreeDigest, TreeEntry};
use crate::error::{Error, ErrorKind, Result};

/// Read and write size for file contents.
const CHUNK: usize = 256 * 1024;

/// How [`copy_verified`] treats the copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CopyOptions {
    /// Give every directory of the copy owner `rwx` (a step may build inside its
    /// inputs); the digest is still that of the source's modes.
    pub writable_dirs: bool,
}

impl CopyOptions {
    /// Exact modes.
    pub fn new() -> Self {
        Self::default()
    }
    /// Set [`Self::writable_dirs`].
    pub fn with_writable_dirs(mut self, v: bool) -> Self {
        self.writable_dirs = v;
        self
    }
}

/// What was copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// The tree digest of what was read (equal to the expected one).
    pub digest: Digest,
    /// Total bytes of regular files.
    pub size: u64,
    /// Number of regular files.
    pub files: u64,
}

/// Copy the tree at `src` to `dest` (missing or an empty directory; its parent is
/// created) and check it against `expected`. A mismatch, or anything a sealed tree
/// cannot hold (a device, a name that is not UTF-8), is `Corrupt`; a full disk is
/// `StorageFull`; `dest` is untouched on every error.
pub fn copy_verified(
    src: &Path,
    dest: &Path,
    expected: &Digest,
    opts: CopyOptions,
) -> Result<CopyReport> {
    let dest_exists = match fs::symlink_metadata(dest) {
        Ok(md) if md.is_dir() => {
            let mut rd = fs::read_dir(dest).map_err(|e| io_err(e, "reading the destination"))?;
            if rd.next().is_some() {
                return Err(Error::already_exists(format!(
                    "destination {} is not empty",
                    dest.display()
                )));
            }
            true
        }
        Ok(_) => {
            return Err(Error::already_exists(format!(
                "destination {} exists and is not a directory",
                dest.display()
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_err(e, "checking the destination")),
    };
    let root = fs::symlink_metadata(src).map_err(|e| io_err(e, "reading the sealed tree"))?;
    if !root.is_dir() {
        return Err(Error::corrupt(format!(
            "{} is not a directory",
            src.display()
        )));
    }
    let (parent, name) = match (dest.parent(), dest.file_name().and_then(|n| n.to_str())) {
        (Some(p), Some(n)) => (p, n),
        _ => {
            return Err(Error::invalid(format!(
                "destination {} has no parent or no UTF-8 name",
                dest.display()
            )));
        }
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    fs::create_dir_all(parent).map_err(|e| io_err(e, "creating the destination's parent"))?;
    let staging = parent.join(format!(
        ".{name}.jetbridge-copy-{}",
        uuid::Uuid::new_v4().simple()
    ));
    fs::create_dir(&staging).map_err(|e| io_err(e, "creating the copy's staging directory"))?;
    let r = fill(src, &staging, expected, opts).and_then(|report| {
        let root_mode = root.permissions().mode() & 0o7777;
        let root_mode = if opts.writable_dirs {
            root_mode | 0o700
        } else {
            root_mode
        };
        fs::set_permissions(&staging, fs::Permissions::from_mode(root_mode))
            .map_err(|e| io_err(e, "setting the mode of the copy"))?;
        if dest_exists {
            // Only an empty directory: rename would refuse a non-empty one anyway.
            fs::remove_dir(dest).map_err(|e| io_err(e, "replacing the empty destination"))?;
        }
        fs::rename(&staging, dest).map_err(|e| io_err(e, "moving the copy into place"))?;
        if let Ok(t) = root.modified() {
            set_dir_mtime(dest, t);
        }
        Ok(report)
    });
    if r.is_err() {
        remove_staging(&staging);
        if dest_exists && fs::symlink_metadata(dest).is_err() {
            let _ = fs::create_dir(dest);
        }
    }
    r
}

/// A directory of the copy whose mode and mtime are set once its children are in.
struct DoneDir {
    rel: String,
    mode: u32,
    mtime: Option<SystemTime>,
}

fn fill(src: &Path, staging: &Path, expected: &Digest, opts: CopyOptions) -> Result<CopyReport> {
    let mut digest = TreeDigest::new();
    let mut dirs: Vec<DoneDir> = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    let mut stack: Vec<String> = vec![String::new()];
    while let Some(dir_rel) = stack.pop() {
        let from_dir = join(src, &dir_rel);
        let to_dir = join(staging, &dir_rel);
        let rd = fs::read_dir(&from_dir).map_err(|e| src_err(e, &dir_rel))?;
        for ent in rd {
            let ent = ent.map_err(|e| src_err(e, &dir_rel))?;
            let name = ent.file_name().into_string().map_err(|n| {
                Error::corrupt(format!(
                    "name {:?} in {dir_rel:?} is not UTF-8",
                    n.to_string_lossy()
                ))
            })?;
            let rel = if dir_rel.is_empty() {
                name.clone()
            } else {
                format!("{dir_rel}/{name}")
            };
            // The type from the directory listing: no stat for it.
            let ft = ent.file_type().map_err(|e| src_err(e, &rel))?;
            let from = from_dir.join(&name);
            let to = to_dir.join(&name);
            if ft.is_file() {
                let (mode, size, sha) = copy_file(&from, &to, &mut buf, &rel)?;
                digest.add(
                    &rel,
                    TreeEntry::File {
                        mode,
                        size,
                        sha256: &sha,
                    },
                );
            } else if ft.is_dir() {
                let md = fs::symlink_metadata(&from).map_err(|e| src_err(e, &rel))?;
                if !md.is_dir() {
                    return Err(changed(&rel));
                }
                let mode = md.permissions().mode() & 0o7777;
                fs::create_dir(&to).map_err(|e| io_err(e, format_args!("creating {rel:?}")))?;
                digest.add(&rel, TreeEntry::Dir { mode });
                dirs.push(DoneDir {
                    rel: rel.clone(),
                    mode,
                    mtime: md.modified().ok(),
                });
                stack.push(rel);
            } else if ft.is_symlink() {
                let target = fs::read_link(&from)
                    .map_err(|e| src_err(e, &rel))?
                    .into_os_string()
                    .into_string()
                    .map_err(|_| Error::corrupt(format!("link {rel:?} target is not UTF-8")))?;
                symlink(&target, &to)
                    .map_err(|e| io_err(e, format_args!("creating link {rel:?}")))?;
                digest.add(&rel, TreeEntry::Symlink { target: &target });
            } else {
                return Err(Error::corrupt(format!(
                    "{rel:?} is neither a file, a directory nor a symlink"
                )));
            }
        }
    }
    let (size, files) = (digest.size(), digest.files());
    let got = digest.finish();
    if &got != expected {
        return Err(Error::corrupt(format!(
            "content digest {got} does not match the sealed digest {expected}"
        )));
    }
    // Modes and mtimes of directories last and deepest first: adding children changes
    // a directory's mtime, and a read-only mode would have stopped us adding them.
    for d in dirs.iter().rev() {
        let p = staging.join(&d.rel);
        let mode = if opts.writable_dirs {
            d.mode | 0o700
        } else {
            d.mode
        };
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .map_err(|e| io_err(e, format_args!("setting the mode of {:?}", d.rel)))?;
        if let Some(t) = d.mtime {
            set_dir_mtime(&p, t);
        }
    }
    Ok(CopyReport {
        digest: got,
        size,
        files,
    })
}

/// Copy one regular file and hash what was read: (mode, size, sha256). The source is
/// opened without following a link (a file swapped for one is a changed tree), its
/// mode, size and mtime come from the open descriptor, and mode and mtime are set on
/// the new file's descriptor: open, fstat, read, open, write, futimens, two closes.
fn copy_file(from: &Path, to: &Path, buf: &mut [u8], rel: &str) -> Result<(u32, u64, [u8; 32])> {
    let mut src = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(from)
        .map_err(|e| src_err(e, rel))?;
    let md = src.metadata().map_err(|e| src_err(e, rel))?;
    if !md.is_file() {
        return Err(changed(rel));
    }
    let mode = md.permissions().mode() & 0o7777;
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o777)
        .open(to)
        .map_err(|e| io_err(e, format_args!("creating {rel:?}")))?;
    if !created_with(mode) {
        dst.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| io_err(e, format_args!("setting the mode of {rel:?}")))?;
    }
    let mut h = Sha256::new();
    let mut size = 0u64;
    let expected = md.len();
    loop {
        let n = match src.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(src_err(e, rel)),
        };
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        dst.write_all(&buf[..n])
            .map_err(|e| io_err(e, format_args!("writing {rel:?}")))?;
        size += n as u64;
        // A short read that reaches the size seen by fstat is the end of a regular
        // file: no extra read to see 0. A file that grew is still read to its end,
        // and the digest covers exactly what was copied.
        if n < buf.len() && size >= expected {
            break;
        }
    }
    if let Ok(t) = md.modified() {
        let _ = dst.set_modified(t);
    }
    Ok((mode, size, h.finalize().into()))
}

/// Whether `open(.., mode)` already leaves exactly `mode` (no bits lost to the umask,
/// no setuid, setgid or sticky bit to add), so no `fchmod` is needed.
fn created_with(mode: u32) -> bool {
    match process_umask() {
        Some(umask) => mode & 0o7000 == 0 && mode & umask == 0,
        None => false,
    }
}

/// The process umask, read once from `/proc/self/status` (asking `umask(2)` would
/// change it for every thread for a moment).
fn process_umask() -> Option<u32> {
    static UMASK: OnceLock<Option<u32>> = OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("Umask:"))?;
        u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).ok()
    })
}

fn set_dir_mtime(p: &Path, t: SystemTime) {
    // Best effort: a directory's mtime is not part of the digest.
    if let Ok(f) = File::open(p) {
        let _ = f.set_modified(t);
    }
}

fn join(root: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

/// Something read from the sealed tree changed kind or vanished under us.
fn changed(rel: &str) -> Error {
    Error::corrupt(format!("{rel:?} changed while it was being copied"))
}

/// An error reading the source: a vanished entry means the sealed tree changed.
fn src_err(e: io::Error, rel: &str) -> Error {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ELOOP) | Some(libc::ENOTDIR) => changed(rel),
        _ => io_err(e, format_args!("reading {rel:?}")),
    }
}

/// An I/O error as a port error of the kind a caller acts on.
fn io_err(e: io::Error, what: impl std::fmt::Display) -> Error {
    let kind = match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorKind::StorageFull,
        io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::Interrupted | io::ErrorKind::TimedOut => ErrorKind::Transient,
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            ErrorKind::PermissionDenied
        }
        _ => ErrorKind::Other,
    };
    let msg = format!("{what}: {e}");
    let err = match kind {
        ErrorKind::StorageFull => Error::storage_full(msg),
        ErrorKind::AlreadyExists => Error::already_exists(msg),
        ErrorKind::NotFound => Error::not_found(msg),
        ErrorKind::Transient => Error::transient(msg),
        ErrorKind::PermissionDenied => Error::permission_denied(msg),
        _ => Error::other(msg),
    };
    err.with_source(e)
}

/// Remove a staging tree, making its directories writable where needed.
fn remove_staging(p: &Path) {
    if fs::remove_dir_all(p).is_ok() {
        return;
    }
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o700));
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    let _ = fs::remove_dir_all(p);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn sample(root: &Path) {
        fs::create_dir_all(root.join("empty")).unwrap();
        fs::create_dir_all(root.join("d/e")).unwrap();
        fs::write(root.join("d/e/f.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(root.join("d/e/f.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::write(root.join("ro"), b"x").unwrap();
        fs::set_permissions(root.join("ro"), fs::Permissions::from_mode(0o444)).unwrap();
        fs::write(root.join("big"), vec![7u8; CHUNK * 2 + 3]).unwrap();
        fs::write(root.join("zero"), b"").unwrap();
        symlink("d/e/f.sh", root.join("link")).unwrap();
        // Explicit modes: the digest must not depend on the umask of the test run.
        for p in ["empty", "d/e"] {
            fs::set_permissions(root.join(p), fs::Permissions::from_mode(0o755)).unwrap();
        }
        for p in ["big", "zero"] {
            fs::set_permissions(root.join(p), fs::Permissions::from_mode(0o644)).unwrap();
        }
        fs::set_permissions(root.join("d"), fs::Permissions::from_mode(0o550)).unwrap();
    }

    /// The digest computed independently with [`TreeDigest`] from known content.
    fn sample_digest() -> Digest {
        let mut t = TreeDigest::new();
        t.add("empty", TreeEntry::Dir { mode: 0o755 });
        t.add("d", TreeEntry::Dir { mode: 0o550 });
        t.add("d/e", TreeEntry::Dir { mode: 0o755 });
        let f = crate::digest::sha256(b"#!/bin/sh\necho hi\n");
        t.add(
            "d/e/f.sh",
            TreeEntry::File {
                mode: 0o750,
                size: 18,
                sha256: &f,
            },
        );
        let ro = crate::digest::sha256(b"x");
        t.add(
            "ro",
            TreeEntry::File {
                mode: 0o444,
                size: 1,
                sha256: &ro,
            },
        );
        let big = crate::digest::sha256(&vec![7u8; CHUNK * 2 + 3]);
        t.add(
            "big",
            TreeEntry::File {
                mode: 0o644,
                size: (CHUNK * 2 + 3) as u64,
                sha256: &big,
            },
        );
        let zero = crate::digest::sha256(b"");
        t.add(
            "zero",
            TreeEntry::File {
                mode: 0o644,
                size: 0,
                sha256: &zero,
            },
        );
        t.add("link", TreeEntry::Symlink { target: "d/e/f.sh" });
        t.finish()
    }

    #[test]
    fn copies_faithfully_and_checks_the_digest() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        sample(&src);
        let dest = t.path().join("out/copy");
        let r = copy_verified(&src, &dest, &sample_digest(), CopyOptions::new()).unwrap();
        assert_eq!(r.digest, sample_digest());
        assert_eq!(r.files, 4);
        assert_eq!(
            fs::read(dest.join("d/e/f.sh")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            fs::metadata(dest.join("d/e/f.sh")).unwrap().mode() & 0o7777,
            0o750
        );
        assert_eq!(
            fs::metadata(dest.join("ro")).unwrap().mode() & 0o7777,
            0o444
        );
        assert_eq!(fs::metadata(dest.join("d")).unwrap().mode() & 0o7777, 0o550);
        assert_eq!(
            fs::read_link(dest.join("link")).unwrap(),
            Path::new("d/e/f.sh")
        );
        assert!(dest.join("empty").is_dir());
        assert_eq!(fs::read(dest.join("big")).unwrap().len(), CHUNK * 2 + 3);
        assert_eq!(
            fs::metadata(dest.join("d/e/f.sh")).unwrap().mtime(),
            fs::metadata(src.join("d/e/f.sh")).unwrap().mtime()
        );
        // The copy is itself a faithful tree: copying it checks against the same digest.
        let again = t.path().join("again");
        copy_verified(&dest, &again, &sample_digest(), CopyOptions::new()).unwrap();
        for root in [&src, &dest, &again] {
            fs::set_permissions(root.join("d"), fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn writable_dirs_keep_the_source_digest() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        sample(&src);
        let dest = t.path().join("copy");
        let opts = CopyOptions::new().with_writable_dirs(true);
        copy_verified(&src, &dest, &sample_digest(), opts).unwrap();
        fs::write(dest.join("d/new"), b"y").unwrap();
        assert!(!src.join("d/new").exists());
        fs::set_permissions(src.join("d"), fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn any_change_is_corrupt_and_leaves_nothing() {
        type Tamper = fn(&Path);
        let tampers: &[(&str, Tamper)] = &[
            ("a flipped byte", |s| {
                let mut b = fs::read(s.join("big")).unwrap();
                b[CHUNK + 1] ^= 1;
                fs::write(s.join("big"), b).unwrap();
            }),
            ("a changed mode", |s| {
                fs::set_permissions(s.join("zero"), fs::Permissions::from_mode(0o600)).unwrap()
            }),
            ("an extra file", |s| {
                fs::write(s.join("empty/extra"), b"").unwrap()
            }),
            ("a missing file", |s| fs::remove_file(s.join("ro")).unwrap()),
            ("a file made a link", |s| {
                fs::remove_file(s.join("zero")).unwrap();
                symlink("ro", s.join("zero")).unwrap();
            }),
            ("a retargeted link", |s| {
                fs::remove_file(s.join("link")).unwrap();
                symlink("ro", s.join("link")).unwrap();
            }),
            ("a fifo", |s| {
                let st = std::process::Command::new("mkfifo")
                    .arg(s.join("empty/fifo"))
                    .status()
                    .unwrap();
                assert!(st.success());
            }),
        ];
        for (what, tamper) in tampers {
            let t = tempfile::tempdir().unwrap();
            let src = t.path().join("src");
            sample(&src);
            let want = sample_digest();
            tamper(&src);
            let dest = t.path().join("out/copy");
            let e = copy_verified(&src, &dest, &want, CopyOptions::new()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{what}: {e}");
            assert!(!dest.exists(), "{what}");
            assert_eq!(
                fs::read_dir(t.path().join("out")).unwrap().count(),
                0,
                "{what}: staging left behind"
            );
            // An existing empty destination stays, empty.
            fs::create_dir(&dest).unwrap();
            let e = copy_verified(&src, &dest, &want, CopyOptions::new()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{what}");
            assert_eq!(fs::read_dir(&dest).unwrap().count(), 0, "{what}");
            fs::set_permissions(src.join("d"), fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn a_non_empty_destination_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        let dest = t.path().join("dest");
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("keep"), b"k").unwrap();
        let e = copy_verified(&src, &dest, &TreeDigest::new().finish(), CopyOptions::new())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        assert_eq!(fs::read(dest.join("keep")).unwrap(), b"k");
    }
}
