//! Private, writable copies of sealed volumes (`copy_to`).

use std::fs;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use jetbridge_core::digest::Digest;
use jetbridge_core::{Error, Result};
use sha2::{Digest as _, Sha256};

use crate::fsutil::remove_tree;
use crate::ioerr::{ctx, io_err};
use crate::tree::{self, CHUNK, FileHash, NodeKind, Summary};

/// Copy the tree at `src` to `dest`, checking it against `expected` on the way.
///
/// The copy is built in a hidden sibling of `dest` and renamed into place only once
/// its digest matches, so `dest` never holds partial or corrupt data. `dest` must be
/// missing or an empty directory.
pub(crate) fn copy_tree(
    src: &Path,
    dest: &Path,
    expected: &Digest,
    reflink: &AtomicBool,
) -> Result<Summary> {
    match fs::symlink_metadata(dest) {
        Ok(md) if md.is_dir() => {
            let mut rd = fs::read_dir(dest).map_err(ctx("reading the destination"))?;
            if rd.next().is_some() {
                return Err(Error::already_exists(format!(
                    "destination {} is not empty",
                    dest.display()
                )));
            }
        }
        Ok(_) => {
            return Err(Error::already_exists(format!(
                "destination {} exists and is not a directory",
                dest.display()
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e, "checking the destination")),
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
    fs::create_dir_all(parent).map_err(ctx("creating the destination's parent"))?;
    let staging = parent.join(format!(
        ".{name}.jetbridge-copy-{}",
        uuid::Uuid::new_v4().simple()
    ));
    fs::create_dir(&staging).map_err(ctx("creating the copy's staging directory"))?;
    let r = fill(src, &staging, expected, reflink).and_then(|summary| {
        fs::rename(&staging, dest).map_err(ctx("moving the copy into place"))?;
        Ok(summary)
    });
    if r.is_err() {
        let _ = remove_tree(&staging);
    }
    r
}

fn fill(src: &Path, staging: &Path, expected: &Digest, reflink: &AtomicBool) -> Result<Summary> {
    let nodes = tree::scan(src).map_err(as_corrupt)?;
    let mut hashes = Vec::with_capacity(nodes.len());
    let mut dirs = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    for n in &nodes {
        let from = src.join(&n.rel);
        let to = staging.join(&n.rel);
        match &n.kind {
            NodeKind::Dir => {
                fs::create_dir(&to).map_err(ctx(format_args!("creating {:?}", n.rel)))?;
                dirs.push(n);
                hashes.push(None);
            }
            NodeKind::File { .. } => {
                let h = copy_file(&from, &to, reflink, &mut buf)
                    .map_err(ctx(format_args!("copying {:?}", n.rel)))?;
                fs::set_permissions(&to, fs::Permissions::from_mode(n.mode))
                    .map_err(ctx(format_args!("setting the mode of {:?}", n.rel)))?;
                if let Some(t) = n.mtime
                    && let Ok(f) = fs::File::options().write(true).open(&to)
                {
                    let _ = f.set_modified(t);
                }
                hashes.push(Some(h));
            }
            NodeKind::Symlink { target } => {
                symlink(target, &to).map_err(ctx(format_args!("creating link {:?}", n.rel)))?;
                hashes.push(None);
            }
        }
    }
    let summary = tree::summarize(&nodes, &hashes);
    if &summary.digest != expected {
        return Err(Error::corrupt(format!(
            "volume content digest {} does not match the sealed digest {expected}",
            summary.digest
        )));
    }
    // Modes last and deepest first, so read-only directories could still be filled.
    for d in dirs.iter().rev() {
        let p = staging.join(&d.rel);
        if let Some(t) = d.mtime
            && let Ok(f) = fs::File::open(&p)
        {
            let _ = f.set_modified(t);
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(d.mode))
            .map_err(ctx(format_args!("setting the mode of {:?}", d.rel)))?;
    }
    let root_mode = fs::symlink_metadata(src).map_or(0o755, |m| {
        jetbridge_core::archive::mode(m.permissions().mode())
    });
    fs::set_permissions(staging, fs::Permissions::from_mode(root_mode))
        .map_err(ctx("setting the mode of the copy"))?;
    Ok(summary)
}

/// A sealed tree holding something a tree may not hold has been tampered with.
pub(crate) fn as_corrupt(e: Error) -> Error {
    if e.kind() == jetbridge_core::ErrorKind::Invalid {
        Error::corrupt(format!(
            "sealed volume no longer passes checks: {}",
            e.message()
        ))
    } else {
        e
    }
}

/// Copy one file, sharing blocks (reflink) where the filesystem can, and hash it.
/// Both ends are opened without following a symlink.
fn copy_file(
    from: &Path,
    to: &PathBuf,
    reflink: &AtomicBool,
    buf: &mut [u8],
) -> io::Result<FileHash> {
    let mut src = tree::open_file(from)?;
    let mut dst = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(to)?;
    if reflink.load(Ordering::Relaxed) {
        match reflink_copy::reflink_file(&src, &dst) {
            // The clone shares the source's blocks: hashing it checks what the
            // consumer will read.
            Ok(()) => {
                dst.rewind()?;
                return tree::hash_reader(&mut dst, buf);
            }
            Err(e) => {
                if !reflink_unsupported(&e) {
                    return Err(e);
                }
                reflink.store(false, Ordering::Relaxed);
                dst.set_len(0)?;
            }
        }
    }
    let mut h = Sha256::new();
    let mut size = 0u64;
    loop {
        let n = match src.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
        size += n as u64;
    }
    Ok(FileHash {
        sha256: h.finalize().into(),
        size,
    })
}

/// Errors that mean "this filesystem cannot clone", after which plain copies are used.
fn reflink_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EOPNOTSUPP
                | libc::EXDEV
                | libc::EINVAL
                | libc::ENOTTY
                | libc::ENOSYS
                | libc::EPERM
        )
    ) || e.kind() == io::ErrorKind::Unsupported
}
