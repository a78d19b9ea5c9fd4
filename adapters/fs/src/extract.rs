//! Streaming, hostile-input-safe tar extraction into a volume's data directory.
//!
//! Rules (each violation is `Invalid` and stops the extraction):
//! - entry paths are relative, UTF-8, without `..`; `.` and empty segments are dropped;
//! - no entry is written through a symlink: every parent directory is checked with
//!   `lstat` (and remembered once checked) and files are created with `O_EXCL`, which
//!   never follows a symlink at the last component;
//! - symlink targets are relative and resolve inside the volume (checked when the link
//!   is made and again once the whole archive is in);
//! - hard links point at a regular file this archive extracted earlier;
//! - character and block devices, fifos and unknown entry types are refused;
//! - setuid and setgid bits are dropped; owners are not restored.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use jetbridge_core::{Error, Result};
use tar::EntryType;

use crate::ioerr::{ctx, io_err};
use crate::tree::check_symlink;

/// Mode bits kept from the archive: permissions and sticky, not setuid/setgid.
const MODE_MASK: u32 = 0o1777;

/// Mode of directories the archive implies but does not list.
const IMPLIED_DIR_MODE: u32 = 0o755;

pub(crate) use jetbridge_core::ports::bridge::{ChannelReader, Chunk};

/// Turns read-side errors into the stream's own error when there is one, otherwise
/// into `Invalid` (a malformed or truncated archive).
struct ReadErr<'a> {
    failed: &'a Arc<Mutex<Option<Error>>>,
}

impl ReadErr<'_> {
    fn map(&self, e: io::Error, what: &str) -> Error {
        if let Some(err) = self.failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return err;
        }
        Error::invalid(format!("{what}: {e}")).with_source(e)
    }
}

/// Extraction state for one archive.
struct Extractor<'a> {
    root: &'a Path,
    /// Directories known to be real directories (not symlinks) under `root`.
    dirs: HashSet<String>,
    /// Regular files this archive wrote: the only valid hard link targets.
    files: HashSet<String>,
    /// Symlinks this archive made, checked again at the end.
    symlinks: Vec<String>,
    /// Directory modes and mtimes, applied last so read-only directories can be filled.
    dir_meta: Vec<(String, u32, Option<SystemTime>)>,
    written: u64,
    limit: Option<u64>,
    /// Copy buffer, reused across files.
    buf: Vec<u8>,
}

/// Extract `reader` into `root` (an existing directory). Stops at the first error.
pub(crate) fn extract(
    reader: impl Read,
    root: &Path,
    limit: Option<u64>,
    failed: &Arc<Mutex<Option<Error>>>,
) -> Result<()> {
    let rerr = ReadErr { failed };
    let mut ex = Extractor {
        root,
        dirs: HashSet::new(),
        files: HashSet::new(),
        symlinks: Vec::new(),
        dir_meta: Vec::new(),
        written: 0,
        limit,
        buf: vec![0u8; 256 * 1024],
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| rerr.map(e, "reading the archive"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| rerr.map(e, "reading an archive entry"))?;
        ex.entry(&mut entry, &rerr)?;
    }
    ex.finish()
}

/// Split an archive path into checked components.
pub(crate) fn components(raw: &[u8], what: &str) -> Result<Vec<String>> {
    let s = std::str::from_utf8(raw).map_err(|_| {
        Error::invalid(format!(
            "{what} {:?} is not UTF-8",
            String::from_utf8_lossy(raw)
        ))
    })?;
    if s.starts_with('/') {
        return Err(Error::invalid(format!("{what} {s:?} is absolute")));
    }
    let mut out = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(Error::invalid(format!("{what} {s:?} contains '..'")));
            }
            c if c.contains('\0') => {
                return Err(Error::invalid(format!("{what} {s:?} contains NUL")));
            }
            c => out.push(c.to_owned()),
        }
    }
    Ok(out)
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, rerr: &ReadErr<'_>) -> Result<()> {
        let et = entry.header().entry_type();
        if et.is_pax_global_extensions() {
            // Archive-wide metadata (e.g. a commit id from `git archive`): nothing to write.
            return Ok(());
        }
        let comps = components(&entry.path_bytes(), "entry path")?;
        let header = entry.header();
        let mode = header.mode().map_err(|e| rerr.map(e, "reading a mode"))? & MODE_MASK;
        let mtime = header
            .mtime()
            .ok()
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        if comps.is_empty() {
            // The archive root (`./`): its mode belongs to the volume, not the archive.
            return if et.is_dir() {
                Ok(())
            } else {
                Err(Error::invalid(
                    "a non-directory entry names the archive root",
                ))
            };
        }
        let rel = comps.join("/");
        self.ensure_parents(&comps)?;
        match et {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.prepare_slot(&rel)?;
                // A sparse entry expands to more than it stores; others must be whole.
                let expect = (et != EntryType::GNUSparse).then(|| entry.size());
                self.write_file(&rel, entry, mode, mtime, expect, rerr)?;
                self.files.insert(rel);
            }
            EntryType::Directory => self.dir(&rel, mode, mtime)?,
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Error::invalid(format!("symlink {rel:?} has no target")))?;
                let target = std::str::from_utf8(&target)
                    .map_err(|_| Error::invalid(format!("symlink {rel:?} target is not UTF-8")))?
                    .to_owned();
                check_symlink(self.root, &rel, &target)?;
                self.prepare_slot(&rel)?;
                symlink(&target, self.root.join(&rel))
                    .map_err(ctx(format_args!("creating symlink {rel:?}")))?;
                self.symlinks.push(rel);
            }
            EntryType::Link => {
                let raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| Error::invalid(format!("hard link {rel:?} has no target")))?;
                let target = components(&raw, "hard link target")?.join("/");
                if target == rel || !self.files.contains(&target) {
                    return Err(Error::invalid(format!(
                        "hard link {rel:?} does not point at a file extracted earlier"
                    )));
                }
                self.prepare_slot(&rel)?;
                self.hard_link(&target, &rel)?;
                self.files.insert(rel);
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(Error::invalid(format!(
                    "entry {rel:?} is a device or fifo; artifacts hold only directories, files and links"
                )));
            }
            other => {
                return Err(Error::invalid(format!(
                    "entry {rel:?} has unsupported type {:?}",
                    other.as_byte() as char
                )));
            }
        }
        Ok(())
    }

    /// Link `rel` to the earlier file `target`. Where the filesystem has no hard
    /// links (GCS FUSE) the file is copied: the tree and its digest are the same, as the
    /// digest sees two files either way.
    fn hard_link(&mut self, target: &str, rel: &str) -> Result<()> {
        let from = self.root.join(target);
        let to = self.root.join(rel);
        match fs::hard_link(&from, &to) {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(
                        libc::EPERM | libc::EOPNOTSUPP | libc::EXDEV | libc::EMLINK | libc::ENOSYS
                    )
                ) =>
            {
                let n = fs::copy(&from, &to).map_err(ctx(format_args!(
                    "copying {target:?} for hard link {rel:?}"
                )))?;
                self.written += n;
                if let Some(limit) = self.limit
                    && self.written > limit
                {
                    return Err(Error::storage_full(format!(
                        "the write limit of {limit} bytes was reached"
                    )));
                }
                Ok(())
            }
            Err(e) => Err(io_err(e, format_args!("creating hard link {rel:?}"))),
        }
    }

    /// Make sure every parent of `comps` is a real directory under the root, creating
    /// missing ones; a symlink or a file on the way is `Invalid`.
    fn ensure_parents(&mut self, comps: &[String]) -> Result<()> {
        for i in 1..comps.len() {
            let rel = comps[..i].join("/");
            if self.dirs.contains(&rel) {
                continue;
            }
            let path = self.root.join(&rel);
            match fs::symlink_metadata(&path) {
                Ok(md) if md.file_type().is_dir() => {}
                Ok(md) if md.file_type().is_symlink() => {
                    return Err(Error::invalid(format!(
                        "entry {:?} goes through symlink {rel:?}",
                        comps.join("/")
                    )));
                }
                Ok(_) => {
                    return Err(Error::invalid(format!(
                        "entry {:?} goes through {rel:?}, which is not a directory",
                        comps.join("/")
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&path).map_err(ctx(format_args!("creating {rel:?}")))?;
                    fs::set_permissions(&path, fs::Permissions::from_mode(IMPLIED_DIR_MODE))
                        .map_err(ctx(format_args!("setting the mode of {rel:?}")))?;
                }
                Err(e) => return Err(io_err(e, format_args!("stat {rel:?}"))),
            }
            self.dirs.insert(rel);
        }
        Ok(())
    }

    /// Clear the place for a non-directory entry: a later entry replaces an earlier
    /// file or link (last one wins, as with `tar -x`); a directory is never replaced.
    fn prepare_slot(&mut self, rel: &str) -> Result<()> {
        let path = self.root.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(md) if md.file_type().is_dir() => Err(Error::invalid(format!(
                "entry {rel:?} would replace a directory"
            ))),
            Ok(_) => {
                self.files.remove(rel);
                fs::remove_file(&path).map_err(ctx(format_args!("replacing {rel:?}")))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(e, format_args!("stat {rel:?}"))),
        }
    }

    fn dir(&mut self, rel: &str, mode: u32, mtime: Option<SystemTime>) -> Result<()> {
        let path = self.root.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(md) if md.file_type().is_dir() => {}
            Ok(_) => {
                // A file or link earlier in the archive becomes a directory.
                self.files.remove(rel);
                fs::remove_file(&path).map_err(ctx(format_args!("replacing {rel:?}")))?;
                fs::create_dir(&path).map_err(ctx(format_args!("creating {rel:?}")))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&path).map_err(ctx(format_args!("creating {rel:?}")))?;
            }
            Err(e) => return Err(io_err(e, format_args!("stat {rel:?}"))),
        }
        // Writable until the end, whatever the archive says.
        fs::set_permissions(&path, fs::Permissions::from_mode(IMPLIED_DIR_MODE))
            .map_err(ctx(format_args!("setting the mode of {rel:?}")))?;
        self.dirs.insert(rel.to_owned());
        self.dir_meta.push((rel.to_owned(), mode, mtime));
        Ok(())
    }

    fn write_file<R: Read>(
        &mut self,
        rel: &str,
        entry: &mut tar::Entry<'_, R>,
        mode: u32,
        mtime: Option<SystemTime>,
        expect: Option<u64>,
        rerr: &ReadErr<'_>,
    ) -> Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.root.join(rel))
            .map_err(ctx(format_args!("creating {rel:?}")))?;
        let mut buf = std::mem::take(&mut self.buf);
        let r = self.copy_data(rel, entry, &mut f, &mut buf, rerr);
        self.buf = buf;
        let got = r?;
        if let Some(want) = expect
            && got != want
        {
            // The input ended inside this file's data.
            if let Some(err) = rerr.failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return Err(err);
            }
            return Err(Error::invalid(format!(
                "the archive ends inside {rel:?} ({got} of {want} bytes)"
            )));
        }
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(ctx(format_args!("setting the mode of {rel:?}")))?;
        if let Some(t) = mtime {
            // Timestamps are a convenience for incremental builds, not content.
            let _ = f.set_modified(t);
        }
        Ok(())
    }

    /// Copy one entry's data into `f`, counting against the write limit.
    fn copy_data<R: Read>(
        &mut self,
        rel: &str,
        entry: &mut tar::Entry<'_, R>,
        f: &mut fs::File,
        buf: &mut [u8],
        rerr: &ReadErr<'_>,
    ) -> Result<u64> {
        let mut got = 0u64;
        loop {
            let n = match entry.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(rerr.map(e, "reading file data")),
            };
            got += n as u64;
            self.written += n as u64;
            if let Some(limit) = self.limit
                && self.written > limit
            {
                return Err(Error::storage_full(format!(
                    "the write limit of {limit} bytes was reached"
                )));
            }
            f.write_all(&buf[..n])
                .map_err(ctx(format_args!("writing {rel:?}")))?;
        }
        Ok(got)
    }

    fn finish(self) -> Result<()> {
        // A later entry can change what an earlier link resolves through.
        for rel in &self.symlinks {
            let path = self.root.join(rel);
            match fs::symlink_metadata(&path) {
                Ok(md) if md.file_type().is_symlink() => {
                    let target =
                        fs::read_link(&path).map_err(ctx(format_args!("reading link {rel:?}")))?;
                    let target = target.to_str().ok_or_else(|| {
                        Error::invalid(format!("symlink {rel:?} target is not UTF-8"))
                    })?;
                    check_symlink(self.root, rel, target)?;
                }
                // Replaced by a later entry.
                _ => {}
            }
        }
        // Deepest first, so a read-only parent is locked only after its children.
        let mut metas = self.dir_meta;
        metas.sort_by_key(|m| std::cmp::Reverse(m.0.split('/').count()));
        for (rel, mode, mtime) in metas {
            let path = self.root.join(&rel);
            if let Some(t) = mtime
                && let Ok(d) = fs::File::open(&path)
            {
                let _ = d.set_modified(t);
            }
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(ctx(format_args!("setting the mode of {rel:?}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetbridge_core::ErrorKind;

    #[test]
    fn components_reject_escapes() {
        assert_eq!(components(b"a/./b//c", "p").unwrap(), ["a", "b", "c"]);
        assert_eq!(
            components(b"../x", "p").unwrap_err().kind(),
            ErrorKind::Invalid
        );
        assert_eq!(
            components(b"a/../../x", "p").unwrap_err().kind(),
            ErrorKind::Invalid
        );
        assert_eq!(
            components(b"/etc/passwd", "p").unwrap_err().kind(),
            ErrorKind::Invalid
        );
        assert_eq!(
            components(b"\xff", "p").unwrap_err().kind(),
            ErrorKind::Invalid
        );
        assert!(components(b"./", "p").unwrap().is_empty());
    }
}
