//! Copying and removing directory trees (blocking; call from `spawn_blocking`).

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use filetime::FileTime;

/// Copy the directory `src` to `dst` (which must not exist).
///
/// Regular files are reflinked where the filesystem supports it and copied otherwise;
/// symlinks are recreated with the same target (never followed); empty directories
/// are kept; file modes and mtimes are preserved. Directories keep their mode plus
/// owner write, so the copy is always writable. Sockets, FIFOs and devices are
/// skipped. Hard links become separate files.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let meta = fs::metadata(src)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", src.display()),
        ));
    }
    copy_dir(src, dst, &meta)
}

fn copy_dir(src: &Path, dst: &Path, meta: &fs::Metadata) -> io::Result<()> {
    fs::create_dir(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let m = fs::symlink_metadata(&from)?;
        let ft = m.file_type();
        if ft.is_dir() {
            copy_dir(&from, &to, &m)?;
        } else if ft.is_symlink() {
            symlink(fs::read_link(&from)?, &to)?;
        } else if ft.is_file() {
            reflink_copy::reflink_or_copy(&from, &to)?;
            fs::set_permissions(&to, fs::Permissions::from_mode(m.permissions().mode()))?;
            filetime::set_file_mtime(&to, FileTime::from_last_modification_time(&m))?;
        } else {
            tracing::warn!(path = %from.display(), "skipping a special file while copying");
        }
    }
    // Modes and mtimes of a directory last: adding children changes the mtime, and a
    // read-only mode would have stopped us adding them.
    fs::set_permissions(
        dst,
        fs::Permissions::from_mode(meta.permissions().mode() | 0o700),
    )?;
    filetime::set_file_mtime(dst, FileTime::from_last_modification_time(meta))?;
    Ok(())
}

/// Remove `path` whatever it is, without following symlinks. Directories a process
/// made unwritable are made writable first. A missing path is not an error.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return ignore_missing(fs::remove_file(path));
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_dirs_writable(path);
            ignore_missing(fs::remove_dir_all(path))
        }
    }
}

fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Give the owner full access to every directory under `path` (symlinks not followed).
fn make_dirs_writable(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            make_dirs_writable(&e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn copy_preserves_modes_symlinks_and_empty_dirs() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("empty")).unwrap();
        fs::create_dir_all(src.join("d/e")).unwrap();
        fs::write(src.join("d/e/f.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(src.join("d/e/f.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::write(src.join("ro"), b"x").unwrap();
        fs::set_permissions(src.join("ro"), fs::Permissions::from_mode(0o444)).unwrap();
        symlink("d/e/f.sh", src.join("link")).unwrap();
        symlink("/nonexistent/target", src.join("dangling")).unwrap();
        let dst = t.path().join("dst");
        copy_tree(&src, &dst).unwrap();

        assert!(dst.join("empty").is_dir());
        assert_eq!(
            fs::read(dst.join("d/e/f.sh")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            fs::metadata(dst.join("d/e/f.sh")).unwrap().mode() & 0o777,
            0o750
        );
        assert_eq!(fs::metadata(dst.join("ro")).unwrap().mode() & 0o777, 0o444);
        assert_eq!(
            fs::read_link(dst.join("link")).unwrap(),
            Path::new("d/e/f.sh")
        );
        assert_eq!(
            fs::read_link(dst.join("dangling")).unwrap(),
            Path::new("/nonexistent/target")
        );
        assert_eq!(
            fs::metadata(dst.join("d/e/f.sh")).unwrap().mtime(),
            fs::metadata(src.join("d/e/f.sh")).unwrap().mtime()
        );
    }

    #[test]
    fn copy_of_a_read_only_tree_is_writable() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("sub/f"), b"x").unwrap();
        fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o555)).unwrap();
        let dst = t.path().join("dst");
        copy_tree(&src, &dst).unwrap();
        fs::write(dst.join("sub/new"), b"y").unwrap();
        fs::write(dst.join("new"), b"y").unwrap();
        assert!(!src.join("new").exists());
        fs::set_permissions(&src, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn remove_handles_unwritable_dirs_and_does_not_follow_links() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"k").unwrap();
        let doomed = t.path().join("doomed");
        fs::create_dir_all(doomed.join("locked/inner")).unwrap();
        fs::write(doomed.join("locked/inner/f"), b"x").unwrap();
        fs::set_permissions(doomed.join("locked"), fs::Permissions::from_mode(0o500)).unwrap();
        symlink(&outside, doomed.join("link")).unwrap();
        remove_tree(&doomed).unwrap();
        assert!(!doomed.exists());
        assert!(outside.join("keep").exists());
        remove_tree(&doomed).unwrap();
    }
}
