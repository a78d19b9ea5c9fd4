//! [`Exec`] for [`LocalBackend`]: local processes, one process group each.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use jetbridge_core::ports::{
    ByteStream, Container, Exec, ExecCapabilities, ExecRequest, OutputSink, OutputStream, PodState,
};
use jetbridge_core::{Error, Result};
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};

use crate::procs::{self, Group};
use crate::sandbox::{PodRecord, Sandbox, relative_path};
use crate::{Entry, LocalBackend};

/// How long output is still read after the command exited, when a background process
/// it started keeps the pipes open.
const OUTPUT_LINGER: Duration = Duration::from_millis(500);
/// How often a spawn that hit "text file busy" is retried (a script written just
/// before, whose write handle a concurrent fork briefly inherited).
const TXTBSY_RETRIES: u32 = 20;

/// Kills the process group when dropped while armed: dropping the exec future must
/// kill the command and everything it started, not just the direct child.
struct GroupGuard {
    group: Group,
    procs_dir: PathBuf,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            procs::signal(self.group, Signal::SIGKILL);
            procs::remove_record(&self.procs_dir, self.group.pgid);
        }
    }
}

/// Where `argv[0]` leads.
#[derive(Debug, PartialEq, Eq)]
enum Program {
    /// Run this file.
    Path(PathBuf),
    /// Nothing of that name on `PATH` (exit 127).
    NotFound,
    /// Found on `PATH` but not executable (exit 126).
    NotExecutable,
}

/// Resolve `argv0` like a shell: a name containing `/` is a path (relative to `cwd`);
/// a bare name is looked up on `path` (empty or relative entries are relative to `cwd`).
fn resolve(argv0: &str, cwd: &Path, path: Option<&OsStr>) -> Program {
    if argv0.contains('/') {
        return Program::Path(cwd.join(argv0));
    }
    let mut denied = false;
    for dir in std::env::split_paths(path.unwrap_or_default()) {
        let candidate = cwd.join(dir).join(argv0);
        match std::fs::metadata(&candidate) {
            Ok(m) if m.is_file() => {
                if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok() {
                    return Program::Path(candidate);
                }
                denied = true;
            }
            _ => {}
        }
    }
    if denied {
        Program::NotExecutable
    } else {
        Program::NotFound
    }
}

/// A spawn failure a shell would report with an exit code rather than an error.
fn shell_exit_for(err: &std::io::Error) -> Option<i32> {
    use nix::errno::Errno;
    match Errno::from_raw(err.raw_os_error()?) {
        Errno::ENOENT | Errno::ENOTDIR => Some(127),
        Errno::EACCES | Errno::EPERM | Errno::ENOEXEC | Errno::EISDIR | Errno::ELOOP => Some(126),
        _ => None,
    }
}

fn describe(err: &std::io::Error) -> String {
    match err.raw_os_error() {
        Some(raw) => nix::errno::Errno::from_raw(raw).desc().to_owned(),
        None => err.to_string(),
    }
}

/// The exit code of `status`; a signal `N` gives `128 + N`, as in a shell.
fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        // Neither a code nor a signal cannot happen for a reaped child on Linux.
        (None, None) => 128,
    }
}

/// Run `user` only if it is the current user (by name or uid): the local backend
/// cannot switch users.
fn check_user(user: &str) -> Result<()> {
    let uid = nix::unistd::getuid();
    if user == uid.to_string() {
        return Ok(());
    }
    if let Ok(Some(u)) = nix::unistd::User::from_uid(uid)
        && u.name == user
    {
        return Ok(());
    }
    Err(Error::unsupported(format!(
        "the local backend runs commands as the worker's user and cannot run them as {user:?}"
    )))
}

async fn pump(mut from: impl AsyncRead + Unpin, stream: OutputStream, sink: Arc<dyn OutputSink>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => sink.write(stream, &buf[..n]),
        }
    }
}

/// Feed `input` to the command's stdin and close it. A failing input stream is an
/// error; a command that stops reading is not.
async fn feed(mut stdin: ChildStdin, mut input: ByteStream) -> Result<()> {
    while let Some(chunk) = input.next().await {
        let chunk = chunk.map_err(|e| e.context("reading stdin for the command"))?;
        if stdin.write_all(&chunk).await.is_err() {
            return Ok(());
        }
    }
    let _ = stdin.shutdown().await;
    Ok(())
}

/// Whether the disk shows the pod of `rec` deleted or being deleted.
fn pod_gone_on_disk(sandbox: &Sandbox, rec: &PodRecord) -> bool {
    sandbox.deleting_file().exists()
        || !matches!(sandbox.read_record(), Ok(Some(now)) if now.uid == rec.uid)
}

impl LocalBackend {
    /// The environment of a command in the pod of `rec` (see [`LocalBackend`]).
    fn command_env(
        &self,
        sandbox: &Sandbox,
        rec: &PodRecord,
        extra: &BTreeMap<String, String>,
    ) -> BTreeMap<OsString, OsString> {
        let mut env: BTreeMap<OsString, OsString> = self.inner.host_env.iter().cloned().collect();
        env.insert("HOME".into(), sandbox.home().into_os_string());
        env.insert("TMPDIR".into(), sandbox.tmp().into_os_string());
        // The pod's own environment is known to the process that made it (it is never
        // written to disk); a pod adopted from an earlier process has none.
        let pod_env = self
            .inner
            .envs
            .lock()
            .ok()
            .and_then(|m| m.get(&rec.name).filter(|(uid, _)| *uid == rec.uid).cloned())
            .map(|(_, e)| e)
            .unwrap_or_default();
        for (k, v) in pod_env.iter().chain(extra) {
            env.insert(k.into(), v.into());
        }
        env
    }

    /// Whether the pod of `rec` went away or began to go.
    fn pod_gone(&self, entry: &Entry, sandbox: &Sandbox, rec: &PodRecord) -> bool {
        entry.is_deleting() || pod_gone_on_disk(sandbox, rec)
    }

    /// Spawn `cmd` if the pod still runs, recording its process group under the
    /// entry lock so a concurrent delete in this process cannot miss it.
    fn spawn_registered(
        &self,
        entry: &Entry,
        sandbox: &Sandbox,
        rec: &PodRecord,
        cmd: &mut Command,
    ) -> Result<std::result::Result<(Child, GroupGuard), std::io::Error>> {
        let deleting = entry
            .deleting
            .lock()
            .map_err(|_| Error::other("pod state lock poisoned"))?;
        if *deleting || pod_gone_on_disk(sandbox, rec) {
            return Err(Error::conflict(format!(
                "pod {:?} is being deleted",
                rec.name
            )));
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let Some(pid) = child.id() else {
            return Err(Error::lost("the command ended before it could be tracked"));
        };
        let pgid = pid as i32;
        let group = Group {
            pgid,
            start_ticks: procs::start_ticks(pgid),
        };
        let guard = GroupGuard {
            group,
            procs_dir: sandbox.procs(),
            armed: true,
        };
        procs::write_record(&sandbox.procs(), group)
            .map_err(|e| crate::error::io_error(e, "recording the command's process group"))?;
        drop(deleting);
        Ok(Ok((child, guard)))
    }
}

#[async_trait]
impl Exec for LocalBackend {
    fn capabilities(&self) -> ExecCapabilities {
        ExecCapabilities::all().with_user(false)
    }

    async fn exec(&self, req: ExecRequest, output: Arc<dyn OutputSink>) -> Result<i32> {
        let Some(argv0) = req.argv.first().cloned() else {
            return Err(Error::invalid("exec needs a command (argv is empty)"));
        };
        if argv0.is_empty() || req.argv.iter().any(|a| a.contains('\0')) {
            return Err(Error::invalid(
                "exec argv must not be empty strings or hold NUL bytes",
            ));
        }
        if req.container == Container::Transfer {
            return Err(Error::unsupported(
                "the local backend has no helper container",
            ));
        }
        if let Some(user) = &req.user {
            check_user(user)?;
        }
        let not_found = || Error::not_found(format!("pod {:?} does not exist", req.pod));
        let sandbox = self.sandbox(&req.pod).ok_or_else(not_found)?;
        let rel_dir = match &req.dir {
            Some(d) => relative_path("working directory", d)?,
            None => PathBuf::new(),
        };
        let entry = self.entry(&req.pod);
        let (rec, status) = sandbox.status()?.ok_or_else(not_found)?;
        if status.deleting {
            return Err(Error::conflict(format!(
                "pod {:?} is being deleted",
                req.pod
            )));
        }
        if status.state != PodState::Running {
            return Err(Error::conflict(format!(
                "pod {:?} is not running yet",
                req.pod
            )));
        }
        let cwd = sandbox.work().join(&rel_dir);
        if !cwd.is_dir() {
            return Err(Error::invalid(format!(
                "working directory {:?} does not exist in pod {:?}",
                rel_dir.display().to_string(),
                req.pod
            )));
        }

        let env = self.command_env(&sandbox, &rec, &req.env);
        let program = match resolve(
            &argv0,
            &cwd,
            env.get(OsStr::new("PATH")).map(|p| p.as_os_str()),
        ) {
            Program::Path(p) => p,
            Program::NotFound => {
                output.write(
                    OutputStream::Stderr,
                    format!("{argv0}: command not found\n").as_bytes(),
                );
                return Ok(127);
            }
            Program::NotExecutable => {
                output.write(
                    OutputStream::Stderr,
                    format!("{argv0}: Permission denied\n").as_bytes(),
                );
                return Ok(126);
            }
        };

        let mut cmd = Command::new(&program);
        cmd.arg0(&argv0)
            .args(&req.argv[1..])
            .env_clear()
            .envs(&env)
            .current_dir(&cwd)
            .process_group(0)
            .kill_on_drop(true)
            .stdin(if req.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());

        let mut attempts = 0;
        let (mut child, mut guard) = loop {
            match self.spawn_registered(&entry, &sandbox, &rec, &mut cmd)? {
                Ok(spawned) => break spawned,
                Err(e)
                    if e.raw_os_error() == Some(nix::errno::Errno::ETXTBSY as i32)
                        && attempts < TXTBSY_RETRIES =>
                {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempts))).await;
                }
                Err(e) => {
                    let Some(code) = shell_exit_for(&e) else {
                        return Err(crate::error::io_error(
                            e,
                            format!("starting {argv0:?} in pod {:?}", req.pod),
                        ));
                    };
                    let what = if program.as_os_str().as_bytes() == argv0.as_bytes() {
                        argv0.clone()
                    } else {
                        format!("{argv0} ({})", program.display())
                    };
                    output.write(
                        OutputStream::Stderr,
                        format!("{what}: {}\n", describe(&e)).as_bytes(),
                    );
                    return Ok(code);
                }
            }
        };
        // A delete in another process may have started between its marker and our record.
        if self.pod_gone(&entry, &sandbox, &rec) {
            return Err(Error::conflict(format!(
                "pod {:?} is being deleted",
                req.pod
            )));
        }

        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let pumps = async {
            let out = async {
                if let Some(s) = stdout {
                    pump(s, OutputStream::Stdout, output.clone()).await;
                }
            };
            let err = async {
                if let Some(s) = stderr {
                    pump(s, OutputStream::Stderr, output.clone()).await;
                }
            };
            futures::join!(out, err);
        };
        tokio::pin!(pumps);
        let stdin = child.stdin.take();
        let input = req.stdin;
        let feeding = async move {
            match (stdin, input) {
                (Some(stdin), Some(input)) => feed(stdin, input).await,
                _ => Ok(()),
            }
        };
        tokio::pin!(feeding);

        let mut pumps_done = false;
        let mut fed = false;
        let status = loop {
            tokio::select! {
                s = child.wait() => break s,
                () = &mut pumps, if !pumps_done => pumps_done = true,
                r = &mut feeding, if !fed => {
                    fed = true;
                    // The guard kills the group on return.
                    r?;
                }
            }
        };
        if !pumps_done {
            let _ = tokio::time::timeout(OUTPUT_LINGER, &mut pumps).await;
        }
        let status = status.map_err(|e| {
            Error::lost(format!("lost track of {argv0:?} in pod {:?}", req.pod)).with_source(e)
        })?;

        let gone = self.pod_gone(&entry, &sandbox, &rec);
        // The command ended by itself: processes it left in the background keep running
        // (as in a container) until the pod is deleted.
        guard.armed = false;
        if !gone && !procs::group_has_members(guard.group.pgid) {
            procs::remove_record(&sandbox.procs(), guard.group.pgid);
        }
        if gone {
            return Err(Error::lost(format!(
                "pod {:?} was deleted while {argv0:?} ran",
                req.pod
            )));
        }
        Ok(exit_code(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn resolution_follows_path_and_reports_126_127() {
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(bin.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(bin.join("plain"), "x").unwrap();
        std::fs::set_permissions(bin.join("plain"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let path = std::env::join_paths([Path::new("/nonexistent"), &bin]).unwrap();
        assert_eq!(
            resolve("tool", t.path(), Some(&path)),
            Program::Path(bin.join("tool"))
        );
        assert_eq!(resolve("missing", t.path(), Some(&path)), Program::NotFound);
        assert_eq!(resolve("tool", t.path(), None), Program::NotFound);
        assert_eq!(
            resolve("./x/y", Path::new("/w"), Some(&path)),
            Program::Path(PathBuf::from("/w/./x/y"))
        );
        assert_eq!(
            resolve("/abs/p", Path::new("/w"), Some(&path)),
            Program::Path(PathBuf::from("/abs/p"))
        );
        // Root may execute anything with an x bit; a file with none is refused for all.
        assert_eq!(
            resolve("plain", t.path(), Some(&path)),
            Program::NotExecutable
        );
    }

    #[test]
    fn signals_map_to_128_plus_n() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
    }

    #[test]
    fn user_must_be_the_current_one() {
        let uid = nix::unistd::getuid();
        assert!(check_user(&uid.to_string()).is_ok());
        assert_eq!(
            check_user("no-such-user-here").unwrap_err().kind(),
            jetbridge_core::ErrorKind::Unsupported
        );
    }
}
