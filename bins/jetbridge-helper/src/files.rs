//! `install` and `read-first`.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::complain;

/// The installed file's name inside DIR.
const NAME: &str = "jetbridge-helper";

/// Copies the running executable to `DIR/jetbridge-helper`, mode 0555, atomically.
pub fn install(dir: &Path) -> ExitCode {
    match install_to(dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            complain(format_args!("install into {:?}: {e}", dir));
            ExitCode::FAILURE
        }
    }
}

fn open_self() -> io::Result<File> {
    match File::open("/proc/self/exe") {
        Ok(f) => Ok(f),
        Err(_) => File::open(std::env::current_exe()?),
    }
}

fn install_to(dir: &Path) -> io::Result<()> {
    let mut src = open_self()?;
    let tmp: PathBuf = dir.join(format!(".{NAME}.tmp-{}", std::process::id()));
    let dest = dir.join(NAME);
    let result = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        io::copy(&mut src, &mut out)?;
        out.set_permissions(fs::Permissions::from_mode(0o555))?;
        out.sync_all()?;
        drop(out);
        fs::rename(&tmp, &dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // Make the rename itself durable; best effort (some filesystems refuse fsync on
    // a directory, and the file is complete either way).
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes the first readable FILE to stdout: exit 0, or 1 when none can be read.
pub fn read_first(files: &[OsString]) -> ExitCode {
    for f in files {
        let Ok(data) = fs::read(f) else { continue };
        let mut out = io::stdout().lock();
        return match out.write_all(&data).and_then(|()| out.flush()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                complain(format_args!("write: {e}"));
                ExitCode::FAILURE
            }
        };
    }
    ExitCode::FAILURE
}
