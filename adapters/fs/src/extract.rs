//! Streaming, hostile-input-safe tar extraction into a volume's data directory.
//!
//! The entry rules are core's ([`jetbridge_core::archive`]); this module carries out
//! each entry's [`Plan`] on disk. What is already there is judged by `lstat` of every
//! parent (remembered once it is a real directory), never by the archive's word:
//! files are created with `O_CREAT|O_EXCL|O_NOFOLLOW`, symlinks with `symlink(2)` and
//! hard links with `link(2)`, none of which follows a symlink at the last component,
//! so nothing is ever written through a link. Symlinks are made exactly as the archive
//! says and never resolved. Owners are not restored.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use jetbridge_core::archive::{self, Entry, EntryKind, Existing, IMPLIED_DIR_MODE, Kind, Plan};
use jetbridge_core::{Error, Result};

use crate::error::{ctx, io_err};

pub(crate) use jetbridge_core::ports::bridge::{ChannelReader, Chunk};

/// Turns read-side errors into the stream's own error when there is one, otherwise
/// into `Invalid` (a malformed or truncated archive).
struct ReadErr<'a> {
    failed: &'a Arc<Mutex<Option<Error>>>,
}

impl ReadErr<'_> {
    /// The stream's own error if it failed (it explains a parse failure), else `e`.
    fn prefer(&self, e: Error) -> Error {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or(e)
    }

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
    /// What `lstat` says is under `root`; directories are remembered once seen.
    disk: Disk<'a>,
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
        disk: Disk {
            root,
            dirs: HashSet::new(),
        },
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

/// The tree as it is on disk, for [`archive::plan`].
struct Disk<'a> {
    root: &'a Path,
    /// Paths known to be real directories (a directory is never replaced, so this
    /// stays true for the whole extraction).
    dirs: HashSet<String>,
}

impl Existing for Disk<'_> {
    fn kind(&mut self, rel: &str) -> Result<Option<Kind>> {
        if self.dirs.contains(rel) {
            return Ok(Some(Kind::Dir));
        }
        match fs::symlink_metadata(self.root.join(rel)) {
            Ok(md) if md.file_type().is_dir() => {
                self.dirs.insert(rel.to_owned());
                Ok(Some(Kind::Dir))
            }
            Ok(md) if md.file_type().is_symlink() => Ok(Some(Kind::Symlink)),
            Ok(md) if md.file_type().is_file() => Ok(Some(Kind::File)),
            // A special file nobody should have made: never write through it.
            Ok(_) => Err(Error::invalid(format!(
                "{rel:?} is neither a directory, a file nor a symlink"
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(e, format_args!("stat {rel:?}"))),
        }
    }
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, rerr: &ReadErr<'_>) -> Result<()> {
        let Some(e) = archive::read_entry(entry).map_err(|e| rerr.prefer(e))? else {
            return Ok(());
        };
        if e.path.is_empty() {
            // The archive root (`./`): its mode belongs to the volume, not the archive.
            return Ok(());
        }
        let plan = archive::plan(&mut self.disk, &e)?;
        self.carry_out(&plan, &e)?;
        let rel = e.path.as_str();
        let mtime = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(e.mtime));
        match &e.kind {
            EntryKind::File => self.write_file(rel, entry, e.mode, mtime, e.size, rerr)?,
            EntryKind::Dir => self.dir(rel, e.mode, mtime)?,
            EntryKind::Symlink { target } => symlink(target, self.root.join(rel))
                .map_err(ctx(format_args!("creating symlink {rel:?}")))?,
            EntryKind::HardLink { target } => self.hard_link(target, rel)?,
        }
        Ok(())
    }

    /// Make the plan's implied parents and clear the entry's slot.
    fn carry_out(&mut self, plan: &Plan, e: &Entry) -> Result<()> {
        for rel in &plan.implied_dirs {
            let path = self.root.join(rel);
            fs::create_dir(&path).map_err(ctx(format_args!("creating {rel:?}")))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(IMPLIED_DIR_MODE))
                .map_err(ctx(format_args!("setting the mode of {rel:?}")))?;
            self.disk.dirs.insert(rel.clone());
        }
        if plan.replace.is_some() {
            // A file or a symlink: `unlink` removes the link itself, never its target.
            fs::remove_file(self.root.join(&e.path))
                .map_err(ctx(format_args!("replacing {:?}", e.path)))?;
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
                // Neither end through a link (`fs::copy` would follow one at `to`).
                let n = copy_nofollow(&from, &to).map_err(ctx(format_args!(
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

    /// A directory entry: a directory already there (the plan kept it) stays.
    fn dir(&mut self, rel: &str, mode: u32, mtime: Option<SystemTime>) -> Result<()> {
        let path = self.root.join(rel);
        if self.disk.kind(rel)? != Some(Kind::Dir) {
            fs::create_dir(&path).map_err(ctx(format_args!("creating {rel:?}")))?;
        }
        // Writable until the end, whatever the archive says.
        fs::set_permissions(&path, fs::Permissions::from_mode(IMPLIED_DIR_MODE))
            .map_err(ctx(format_args!("setting the mode of {rel:?}")))?;
        self.disk.dirs.insert(rel.to_owned());
        self.dir_meta.push((rel.to_owned(), mode, mtime));
        Ok(())
    }

    fn write_file<R: Read>(
        &mut self,
        rel: &str,
        entry: &mut tar::Entry<'_, R>,
        mode: u32,
        mtime: Option<SystemTime>,
        want: u64,
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
        if got != want {
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

/// Copy the regular file `from` to a new file `to` with its mode, following no link.
fn copy_nofollow(from: &Path, to: &Path) -> io::Result<u64> {
    let mut src = crate::walk::open_file(from)?;
    let mode = src.metadata()?.permissions().mode();
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(to)?;
    let n = io::copy(&mut src, &mut dst)?;
    dst.set_permissions(fs::Permissions::from_mode(archive::mode(mode)))?;
    Ok(n)
}
