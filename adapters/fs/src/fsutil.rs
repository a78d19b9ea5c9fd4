//! Small filesystem helpers: removal of read-only trees, durable small files.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Remove `path` and everything under it; missing is fine. Directories a tree made
/// read-only (`0o555`) are opened up first when removal is refused.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(md) if !md.is_dir() => return ignore_missing(fs::remove_file(path)),
        Ok(_) => {}
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            open_up(path);
            ignore_missing(fs::remove_dir_all(path))
        }
        Err(e) => Err(e),
    }
}

fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Give the owner full access to every directory under `dir` (never following links).
fn open_up(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    let Ok(rd) = fs::read_dir(dir) else { return };
    for ent in rd.flatten() {
        if ent.file_type().is_ok_and(|t| t.is_dir()) {
            open_up(&ent.path());
        }
    }
}

/// Write `data` to `dest` so that `dest` is either absent or complete: a temporary
/// file in the same directory, flushed to disk, then renamed over `dest`. On stores
/// where rename copies (GCS FUSE), the copy is a single object that appears whole.
pub(crate) fn write_durable(dest: &Path, data: &[u8]) -> io::Result<()> {
    let dir = dest
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"))?;
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let r = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, dest)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r?;
    sync_dir(dir);
    Ok(())
}

/// Flush a directory's entries; some filesystems (FUSE, some NFS) refuse, which
/// is harmless there because they do not reorder metadata the same way.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Flush the whole filesystem holding `path` (one call instead of an fsync per file).
pub(crate) fn sync_fs(path: &Path) {
    if let Ok(d) = fs::File::open(path) {
        let _ = nix::unistd::syncfs(&d);
    }
}
