//! Supervised commands: `exec --record DIR` runs the command as a child, keeps its output
//! and exit status in `DIR`, and forwards the output live; `attach DIR OUT ERR` replays
//! that output from a byte position per stream and follows it to the recorded status.
//!
//! An exec stream can drop while its command runs on (Kubernetes does not stop an exec'd
//! process when its client goes), so the caller re-attaches instead of starting the
//! command again: the command runs once, and the caller still gets all of its output and
//! its true exit status.
//!
//! `DIR/output` is a sequence of frames, `[stream: 1 byte (1 stdout, 2 stderr)][length:
//! u32 big-endian][bytes]`, each written with one `write(2)` on an `O_APPEND` file, so a
//! reader sees whole frames or a frame still being written at the end. `DIR/status` holds
//! the exit code in decimal; it is written to a temporary name and renamed, so it exists
//! only when complete, and always after the last frame.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{EXIT_USAGE, complain};

/// Output bytes kept per command; past this the output is still forwarded live but no
/// longer recorded, and a re-attach that needs it says so. Bounds the pod's memory
/// (`emptyDir`) a chatty command can take.
pub const RECORD_LIMIT: u64 = 64 << 20;

const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const HEADER: usize = 5;

/// How often `attach` looks for more output while the command runs.
const FOLLOW_EVERY: Duration = Duration::from_millis(20);

fn output_path(dir: &Path) -> PathBuf {
    dir.join("output")
}

fn status_path(dir: &Path) -> PathBuf {
    dir.join("status")
}

fn truncated_path(dir: &Path) -> PathBuf {
    dir.join("truncated")
}

/// What one recorder shares between the threads reading the command's two pipes.
struct Recorder {
    file: File,
    kept: u64,
    truncated: bool,
    dir: PathBuf,
    /// Whether our own stdout / stderr still take output (the exec stream may be gone).
    live: [bool; 2],
}

impl Recorder {
    fn chunk(&mut self, stream: u8, data: &[u8]) {
        if !self.truncated {
            if self.kept + data.len() as u64 <= RECORD_LIMIT {
                let mut frame = Vec::with_capacity(HEADER + data.len());
                frame.push(stream);
                let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
                frame.extend_from_slice(&len.to_be_bytes());
                frame.extend_from_slice(data);
                match self.file.write_all(&frame) {
                    Ok(()) => self.kept += data.len() as u64,
                    Err(e) => {
                        complain(format_args!("recording output: {e}"));
                        self.truncate();
                    }
                }
            } else {
                self.truncate();
            }
        }
        let i = usize::from(stream - 1);
        if self.live[i] {
            let ok = if stream == STDOUT {
                let mut out = io::stdout().lock();
                out.write_all(data).and_then(|()| out.flush())
            } else {
                io::stderr().lock().write_all(data)
            };
            // The exec stream went away: keep recording, stop forwarding.
            if ok.is_err() {
                self.live[i] = false;
            }
        }
    }

    fn truncate(&mut self) {
        self.truncated = true;
        let _ = fs::write(truncated_path(&self.dir), self.kept.to_string());
    }
}

/// Starts `cmd` (already given its program, arguments, environment and directory)
/// recorded in `dir`. A `dir` that exists means the command was started before: it is
/// attached to from the start instead, never run a second time.
pub fn run_recorded(
    mut cmd: Command,
    prog: &OsStr,
    dir: &Path,
    stdin: Option<Box<dyn FnOnce(std::process::ChildStdin) -> crate::exec::Copied + Send>>,
) -> ExitCode {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return attach(dir, 0, 0),
        Err(e) => {
            complain(format_args!(
                "cannot create the record directory {}: {e}",
                dir.display()
            ));
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let file = match OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(output_path(dir))
    {
        Ok(f) => f,
        Err(e) => {
            complain(format_args!(
                "cannot record output in {}: {e}",
                dir.display()
            ));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let code = crate::exec::launch_failed_code(prog, &e);
            write_status(dir, code);
            return ExitCode::from(code);
        }
    };
    let rec = Arc::new(Mutex::new(Recorder {
        file,
        kept: 0,
        truncated: false,
        dir: dir.to_owned(),
        live: [true, true],
    }));
    let pump = |pipe: Option<Box<dyn Read + Send>>, stream: u8| {
        let rec = rec.clone();
        std::thread::spawn(move || {
            let Some(mut pipe) = pipe else { return };
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => rec
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .chunk(stream, &buf[..n]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        })
    };
    let out = pump(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        STDOUT,
    );
    let err = pump(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        STDERR,
    );
    let short = match (stdin, child.stdin.take()) {
        (Some(copy), Some(pipe)) => copy(pipe),
        _ => crate::exec::Copied::Done,
    };
    let status = wait(&mut child);
    let _ = out.join();
    let _ = err.join();
    let code = match (short, status) {
        // The command never had its whole input: whatever it did is not its result.
        (crate::exec::Copied::Short(got), _) => {
            complain(format_args!(
                "stdin ended after {got} bytes, before the length given; the command's \
                 result is not taken"
            ));
            EXIT_USAGE
        }
        (_, Some(status)) => status_code(status),
        (_, None) => EXIT_USAGE,
    };
    write_status(dir, code);
    ExitCode::from(code)
}

fn wait(child: &mut std::process::Child) -> Option<ExitStatus> {
    loop {
        match child.wait() {
            Ok(s) => return Some(s),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                complain(format_args!("waiting for the command: {e}"));
                return None;
            }
        }
    }
}

/// The exit code a container runtime reports: the code, or 128 + the signal.
pub fn status_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(u8::MAX),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(u8::MAX),
        (None, None) => 1,
    }
}

fn write_status(dir: &Path, code: u8) {
    let tmp = dir.join("status.tmp");
    let done = fs::write(&tmp, code.to_string()).and_then(|()| fs::rename(&tmp, status_path(dir)));
    if let Err(e) = done {
        complain(format_args!("recording the exit status: {e}"));
    }
}

/// Replays the output recorded in `dir` past `out` bytes of stdout and `err` bytes of
/// stderr, follows it while the command runs, and exits with its recorded status.
pub fn attach(dir: &Path, out: u64, err: u64) -> ExitCode {
    let mut file = match File::open(output_path(dir)) {
        Ok(f) => f,
        Err(e) => {
            complain(format_args!(
                "no recorded command at {}: {e}",
                dir.display()
            ));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let from = [out, err];
    let mut seen = [0u64; 2];
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Whether the status existed before this read: then the read saw every frame.
        let finished = status_path(dir).exists();
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    complain(format_args!("reading the recorded output: {e}"));
                    return ExitCode::from(EXIT_USAGE);
                }
            }
        }
        let mut at = 0;
        while pending.len() - at >= HEADER {
            let stream = pending[at];
            let len = u32::from_be_bytes([
                pending[at + 1],
                pending[at + 2],
                pending[at + 3],
                pending[at + 4],
            ]) as usize;
            if pending.len() - at - HEADER < len {
                break;
            }
            let data = &pending[at + HEADER..at + HEADER + len];
            at += HEADER + len;
            let Some(i) = [STDOUT, STDERR].iter().position(|s| *s == stream) else {
                complain(format_args!("the recorded output is damaged"));
                return ExitCode::from(EXIT_USAGE);
            };
            let start = seen[i];
            seen[i] += data.len() as u64;
            if seen[i] <= from[i] {
                continue;
            }
            let skip = usize::try_from(from[i].saturating_sub(start)).unwrap_or(usize::MAX);
            let part = &data[skip.min(data.len())..];
            let wrote = if stream == STDOUT {
                let mut o = io::stdout().lock();
                o.write_all(part).and_then(|()| o.flush())
            } else {
                io::stderr().lock().write_all(part)
            };
            if wrote.is_err() {
                // This stream dropped too: the caller attaches again.
                return ExitCode::from(EXIT_USAGE);
            }
        }
        pending.drain(..at);
        if finished {
            if let Ok(kept) = fs::read_to_string(truncated_path(dir)) {
                complain(format_args!(
                    "only the first {} bytes of the command's output were kept; what came \
                     after them while no one was attached is missing here",
                    kept.trim()
                ));
            } else if seen[0] < from[0] || seen[1] < from[1] {
                complain(format_args!(
                    "asked to resume at {out}/{err} bytes, but only {}/{} were recorded",
                    seen[0], seen[1]
                ));
                return ExitCode::from(EXIT_USAGE);
            }
            let code = fs::read_to_string(status_path(dir))
                .ok()
                .and_then(|s| s.trim().parse::<u8>().ok());
            return match code {
                Some(c) => ExitCode::from(c),
                None => {
                    complain(format_args!("the recorded exit status is unreadable"));
                    ExitCode::from(EXIT_USAGE)
                }
            };
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}
