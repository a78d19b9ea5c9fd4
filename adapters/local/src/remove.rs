//! Removing directory trees (blocking; call from `spawn_blocking`). Copies are core's
//! verified copy (`jetbridge_core::copy`).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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
    use std::os::unix::fs::symlink;

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
