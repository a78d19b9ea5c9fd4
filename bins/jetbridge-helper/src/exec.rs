//! `exec`: run a command like `env NAME=VALUE... PROG ARG...`, optionally in another
//! directory and with exactly N bytes of our stdin as its whole stdin.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitCode, Stdio};

use nix::unistd::{AccessFlags, access};

use crate::cli::ExecSpec;
use crate::{EXIT_USAGE, complain};

/// Found but could not be run (permission denied, not an executable format...).
const EXIT_CANNOT_RUN: u8 = 126;
/// Not found.
const EXIT_NOT_FOUND: u8 = 127;
/// The search path when PATH is unset, as Kubernetes' container runtimes default it.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn exec(spec: ExecSpec) -> ExitCode {
    if let Some(dir) = &spec.dir
        && let Err(e) = std::env::set_current_dir(dir)
    {
        complain(format_args!(
            "cannot enter directory \"{}\": {e}",
            dir.to_string_lossy()
        ));
        return ExitCode::from(EXIT_USAGE);
    }
    let resolved = resolve(&spec).map(|path| {
        let mut cmd = Command::new(&path);
        cmd.arg0(&spec.prog).args(&spec.args);
        for (name, value) in &spec.env {
            cmd.env(name, value);
        }
        cmd
    });
    if let Some(dir) = &spec.record {
        // Even a command that cannot start is recorded, with the reason, so a re-attach
        // finds its result.
        let stdin = spec.stdin_len.map(|n| {
            Box::new(move |mut to: ChildStdin| copy_exact(n, &mut to))
                as Box<dyn FnOnce(ChildStdin) -> Copied + Send>
        });
        return crate::record::run_recorded(resolved, &spec.prog, Path::new(dir), stdin);
    }
    let mut cmd = match resolved {
        Ok(cmd) => cmd,
        Err(e) => return launch_failed(&spec.prog, &e),
    };
    match spec.stdin_len {
        None => {
            // Only returns on failure; on success the command has our PID.
            let err = cmd.exec();
            launch_failed(&spec.prog, &err)
        }
        Some(n) => run_with_stdin(cmd, &spec.prog, n),
    }
}

/// Finds PROG: as given when it holds a `/`, else in the PATH of the command's
/// environment (the assignments applied), like `execvp`.
fn resolve(spec: &ExecSpec) -> io::Result<PathBuf> {
    let prog = spec.prog.as_os_str();
    if prog.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(prog));
    }
    let search = spec
        .env
        .iter()
        .rev()
        .find(|(name, _)| name == "PATH")
        .map(|(_, value)| value.clone())
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| DEFAULT_PATH.into());
    let mut denied = false;
    for dir in search.as_bytes().split(|&b| b == b':') {
        // An empty entry means the current directory.
        let dir = if dir.is_empty() {
            Path::new(".")
        } else {
            Path::new(OsStr::from_bytes(dir))
        };
        let candidate = dir.join(prog);
        if fs::metadata(&candidate).is_ok_and(|m| m.is_file()) {
            if access(&candidate, AccessFlags::X_OK).is_ok() {
                return Ok(candidate);
            }
            denied = true;
        }
    }
    Err(io::Error::from(if denied {
        ErrorKind::PermissionDenied
    } else {
        ErrorKind::NotFound
    }))
}

/// The exit for an `execve`/spawn failure.
fn launch_failed(prog: &OsStr, err: &io::Error) -> ExitCode {
    ExitCode::from(launch_failed_code(prog, err))
}

/// [`launch_failed`]'s code, after saying why.
pub(crate) fn launch_failed_code(prog: &OsStr, err: &io::Error) -> u8 {
    let (code, msg) = launch_failure(prog, err);
    complain(format_args!("{msg}"));
    code
}

/// The exit code and message for a failure to start PROG.
pub(crate) fn launch_failure(prog: &OsStr, err: &io::Error) -> (u8, String) {
    let prog = prog.to_string_lossy();
    match err.kind() {
        ErrorKind::NotFound => (
            EXIT_NOT_FOUND,
            format!("exec \"{prog}\": executable file not found in $PATH"),
        ),
        ErrorKind::PermissionDenied => (
            EXIT_CANNOT_RUN,
            format!("exec \"{prog}\": permission denied"),
        ),
        _ => (EXIT_CANNOT_RUN, format!("exec \"{prog}\": {err}")),
    }
}

fn run_with_stdin(mut cmd: Command, prog: &OsStr, n: u64) -> ExitCode {
    cmd.stdin(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return launch_failed(prog, &e),
    };
    let to = child.stdin.take();
    let copied = match to {
        Some(mut to) => copy_exact(n, &mut to),
        None => Copied::Done,
    };
    // `to` was moved into the copy and is dropped by now: the command sees EOF.
    let status = loop {
        match child.wait() {
            Ok(status) => break status,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                complain(format_args!(
                    "waiting for \"{}\": {e}",
                    prog.to_string_lossy()
                ));
                return ExitCode::from(EXIT_USAGE);
            }
        }
    };
    if let Copied::Short(got) = copied {
        complain(format_args!("stdin ended after {got} of {n} bytes"));
    }
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(u8::MAX)),
        (None, Some(sig)) => ExitCode::from(u8::try_from(128 + sig).unwrap_or(u8::MAX)),
        (None, None) => ExitCode::FAILURE,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Copied {
    /// All N bytes, or the command closed its stdin first (it needs no more).
    Done,
    /// Our stdin ended (or failed) after this many bytes.
    Short(u64),
}

/// Copies exactly `n` bytes of our stdin to `to`, reading no byte past them: the
/// stream may stay open afterwards, and what follows is not the command's.
fn copy_exact(n: u64, to: &mut ChildStdin) -> Copied {
    // Read through a duplicate of fd 0, not `io::stdin()`: that one buffers and could
    // read past the N bytes.
    let mut from = match io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(e) => {
            complain(format_args!("stdin: {e}"));
            return Copied::Short(0);
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut done: u64 = 0;
    while done < n {
        let want = usize::try_from(n - done).map_or(buf.len(), |left| left.min(buf.len()));
        let got = match from.read(&mut buf[..want]) {
            Ok(0) => return Copied::Short(done),
            Ok(got) => got,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                complain(format_args!("reading stdin: {e}"));
                return Copied::Short(done);
            }
        };
        done += got as u64;
        match to.write_all(&buf[..got]) {
            Ok(()) => {}
            // The command stopped reading: it needs nothing more.
            Err(e) if e.kind() == ErrorKind::BrokenPipe => return Copied::Done,
            Err(e) => {
                complain(format_args!("writing the command's stdin: {e}"));
                return Copied::Done;
            }
        }
    }
    Copied::Done
}
