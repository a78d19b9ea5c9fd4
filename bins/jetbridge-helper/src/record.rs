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
//! reader sees whole frames or a frame still being written at the end. Everything the
//! recorder says itself goes there too, as stderr, so the caller's byte counts and the
//! record agree. `DIR/status` holds the exit code in decimal, or `lost-stdin` when the
//! command's stdin ended before its length; it is written to a temporary name and
//! renamed, so it exists only when complete, and always after the last frame. The
//! recorder holds an exclusive `flock` on `DIR/output` for as long as it lives, so an
//! attach can tell a recorder that died without a status from one still running.
//!
//! When `attach` cannot give the command's true result (no record, a recorder that
//! died, output that was not kept, a damaged record), it says so on stderr with
//! [`ATTACH_FAILED`] first and exits 125; the caller must take that as "lost", never as
//! the command's exit status.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::EXIT_USAGE;

/// Output bytes kept per command; past this the output is still forwarded live but no
/// longer recorded, and a re-attach after that is refused as lost rather than giving
/// output with a gap. Bounds the pod's disk (`emptyDir`) a chatty command can take.
pub const RECORD_LIMIT: u64 = 64 << 20;

/// What `attach` puts first on its stderr when it cannot give the command's result.
pub const ATTACH_FAILED: &str = "jetbridge-helper: attach failed: ";

/// The status of a command whose stdin ended before its length.
const LOST_STDIN: &str = "lost-stdin";

const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const HEADER: usize = 5;

/// How often `attach` looks for more output while the command runs.
const FOLLOW_EVERY: Duration = Duration::from_millis(20);
/// How long `attach` waits for a record that is not there yet (the first exec may still
/// be starting).
const APPEAR_WITHIN: Duration = Duration::from_secs(10);
/// How long the recorder reads a finished command's pipes that something it left
/// running still holds open, before it records the status without the rest.
const DRAIN_WITHIN: Duration = Duration::from_secs(10);

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
    file: Flock<File>,
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
                    Err(_) => self.truncate(),
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

    /// A message of the helper's own, on stderr and in the record.
    fn say(&mut self, msg: std::fmt::Arguments<'_>) {
        let line = format!("jetbridge-helper: {msg}\n");
        self.chunk(STDERR, line.as_bytes());
    }

    fn truncate(&mut self) {
        self.truncated = true;
        let _ = fs::write(truncated_path(&self.dir), self.kept.to_string());
    }
}

type SharedRecorder = Arc<Mutex<Recorder>>;

fn locked(rec: &SharedRecorder) -> std::sync::MutexGuard<'_, Recorder> {
    rec.lock().unwrap_or_else(|e| e.into_inner())
}

/// Creates `DIR/output`, locked, under its final name only once it is locked.
fn open_record(dir: &Path) -> io::Result<Flock<File>> {
    let tmp = dir.join("output.tmp");
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&tmp)?;
    let file =
        Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| io::Error::from(e))?;
    fs::rename(&tmp, output_path(dir))?;
    Ok(file)
}

/// Starts `cmd` (already given its program, arguments, environment and directory)
/// recorded in `dir`. A `dir` that exists means the command was started before: it is
/// attached to from the start instead, never run a second time.
pub fn run_recorded(
    cmd: io::Result<Command>,
    prog: &OsStr,
    dir: &Path,
    stdin: Option<Box<dyn FnOnce(std::process::ChildStdin) -> crate::exec::Copied + Send>>,
) -> ExitCode {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return attach(dir, 0, 0),
        Err(e) => {
            crate::complain(format_args!(
                "cannot create the record directory {}: {e}",
                dir.display()
            ));
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let file = match open_record(dir) {
        Ok(f) => f,
        Err(e) => {
            crate::complain(format_args!(
                "cannot record output in {}: {e}",
                dir.display()
            ));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let rec = Arc::new(Mutex::new(Recorder {
        file,
        kept: 0,
        truncated: false,
        dir: dir.to_owned(),
        live: [true, true],
    }));
    // Ignored from before the spawn, so a command quick to signal its group cannot
    // reach the recorder; the child puts them back to the default before it execs.
    ignore_stop_signals();
    let spawned = cmd.and_then(|mut cmd| {
        restore_stop_signals_in_child(&mut cmd);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        cmd.spawn()
    });
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let (code, msg) = crate::exec::launch_failure(prog, &e);
            locked(&rec).say(format_args!("{msg}"));
            write_status(&rec, &code.to_string());
            return ExitCode::from(code);
        }
    };
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let pump = |pipe: Option<Box<dyn Read + Send>>, stream: u8| {
        let (rec, done) = (rec.clone(), done_tx.clone());
        std::thread::spawn(move || {
            if let Some(mut pipe) = pipe {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => locked(&rec).chunk(stream, &buf[..n]),
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            }
            let _ = done.send(());
        });
    };
    pump(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        STDOUT,
    );
    pump(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        STDERR,
    );
    drop(done_tx);
    let short = match (stdin, child.stdin.take()) {
        (Some(copy), Some(pipe)) => copy(pipe),
        _ => crate::exec::Copied::Done,
    };
    if let crate::exec::Copied::Short(got) = short {
        // Whatever it would do with part of its input is not its result.
        let _ = child.kill();
        locked(&rec).say(format_args!(
            "stdin ended after {got} bytes, before the length given: the command was \
             stopped, and its result is not taken"
        ));
    }
    let status = wait(&mut child, &rec);
    // Both pipes at their end, or something the command left running holds them: then
    // the status is recorded without what that might still write.
    let deadline = Instant::now() + DRAIN_WITHIN;
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            locked(&rec).say(format_args!(
                "the command ended, but a process it left holds its output open; what \
                 that writes now is not recorded"
            ));
            break;
        }
    }
    let code = match (short, status) {
        (crate::exec::Copied::Short(_), _) => {
            write_status(&rec, LOST_STDIN);
            return ExitCode::from(EXIT_USAGE);
        }
        (_, Some(status)) => status_code(status),
        (_, None) => EXIT_USAGE,
    };
    write_status(&rec, &code.to_string());
    ExitCode::from(code)
}

/// The recorder outlives what the command does to its process group: a script's `kill
/// 0` (or `trap 'kill 0' EXIT`) signals the recorder too, and a recorder that died would
/// leave the command without a status. SIGKILL still ends it, with the container.
#[allow(unsafe_code)]
fn ignore_stop_signals() {
    use nix::sys::signal::{SigHandler, signal};
    for sig in stop_signals().iter() {
        // SAFETY: `signal` is unsafe because a handler runs asynchronously and must be
        // async-signal-safe. `SigIgn` installs no handler: the kernel discards the
        // signal, no code of ours runs. The child restores the defaults before it
        // execs (`restore_stop_signals_in_child`).
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
}

/// The command starts with the default dispositions of the signals the recorder
/// ignores, as if the recorder were not there.
#[allow(unsafe_code)]
fn restore_stop_signals_in_child(cmd: &mut Command) {
    use nix::sys::signal::{SigHandler, signal};
    use std::os::unix::process::CommandExt;
    // SAFETY: `pre_exec` runs the closure in the forked child before `execve`, where
    // only async-signal-safe calls are allowed; `signal(2)` (sigaction underneath) is
    // one, and the closure allocates nothing and takes no lock. Setting `SigDfl`
    // installs no handler code.
    unsafe {
        cmd.pre_exec(|| {
            for sig in stop_signals().iter() {
                signal(sig, SigHandler::SigDfl).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
}

fn stop_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(sig);
    }
    set
}

fn wait(child: &mut std::process::Child, rec: &SharedRecorder) -> Option<ExitStatus> {
    loop {
        match child.wait() {
            Ok(s) => return Some(s),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                locked(rec).say(format_args!("waiting for the command: {e}"));
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

fn write_status(rec: &SharedRecorder, status: &str) {
    let mut r = locked(rec);
    let tmp = r.dir.join("status.tmp");
    let done = fs::write(&tmp, status).and_then(|()| fs::rename(&tmp, status_path(&r.dir)));
    if let Err(e) = done {
        r.say(format_args!("recording the exit status: {e}"));
    }
}

/// `attach` cannot give the command's result: says why, and exits 125.
fn failed(msg: std::fmt::Arguments<'_>) -> ExitCode {
    let _ = writeln!(io::stderr().lock(), "{ATTACH_FAILED}{msg}");
    ExitCode::from(EXIT_USAGE)
}

/// Whether the recorder of `output` is gone: its lock is free.
fn recorder_gone(dir: &Path) -> bool {
    File::open(output_path(dir))
        .ok()
        .is_some_and(|f| Flock::lock(f, FlockArg::LockSharedNonblock).is_ok())
}

/// Replays the output recorded in `dir` past `out` bytes of stdout and `err` bytes of
/// stderr, follows it while the command runs, and exits with its recorded status.
pub fn attach(dir: &Path, out: u64, err: u64) -> ExitCode {
    let appear_by = Instant::now() + APPEAR_WITHIN;
    let mut file = loop {
        match File::open(output_path(dir)) {
            Ok(f) => break f,
            Err(e) if e.kind() == ErrorKind::NotFound && Instant::now() < appear_by => {
                std::thread::sleep(FOLLOW_EVERY);
            }
            Err(e) => {
                return failed(format_args!(
                    "no recorded command at {}: {e}",
                    dir.display()
                ));
            }
        }
    };
    let from = [out, err];
    let mut seen = [0u64; 2];
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Whether the command had ended before this read: then the read sees every frame.
        let finished = status_path(dir).exists() || recorder_gone(dir);
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return failed(format_args!("reading the record: {e}")),
            };
            pending.extend_from_slice(&buf[..n]);
            // Whole frames out as they come, so memory stays at one read's worth.
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
                    return failed(format_args!("the record is damaged"));
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
        }
        if !finished {
            std::thread::sleep(FOLLOW_EVERY);
            continue;
        }
        if fs::metadata(truncated_path(dir)).is_ok() {
            return failed(format_args!(
                "only the first {} bytes of the command's output were kept, so what the \
                 stream missed cannot be given",
                fs::read_to_string(truncated_path(dir))
                    .unwrap_or_default()
                    .trim()
            ));
        }
        if seen[0] < from[0] || seen[1] < from[1] {
            return failed(format_args!(
                "asked to resume at {out}/{err} bytes, but only {}/{} were recorded",
                seen[0], seen[1]
            ));
        }
        return match fs::read_to_string(status_path(dir))
            .as_deref()
            .map(str::trim)
        {
            Ok(LOST_STDIN) => failed(format_args!(
                "the command's stdin ended before its length; it was stopped"
            )),
            Ok(s) => match s.parse::<u8>() {
                Ok(c) => ExitCode::from(c),
                Err(_) => failed(format_args!("the recorded status {s:?} is unreadable")),
            },
            Err(_) => failed(format_args!(
                "the recorder ended without recording the command's status"
            )),
        };
    }
}
