//! Local processes standing in for container processes.

use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use tokio::process::{Child, Command};

/// Whether argv means "wait until killed": a `pause` binary or `sleep infinity`, with
/// whether it handles SIGTERM. jetbridge's pause program traps TERM and exits 0 (adapter
/// manifest.rs `PAUSE_INSTALL_SCRIPT`, like the kubernetes pause image's `sigdown`);
/// `sleep` has no handler, so as a container's PID 1 it ignores TERM (pid_namespaces(7))
/// and dies only of the kubelet's SIGKILL at the end of the grace period. An empty argv
/// (image entrypoint, unknown here) is treated like `sleep infinity`.
pub(crate) fn is_pause(argv: &[String]) -> Option<bool> {
    match argv {
        [] => Some(false),
        [a, b] if a == "sleep" && b == "infinity" => Some(false),
        [a, ..] if Path::new(a).file_name().is_some_and(|n| n == "pause") => Some(true),
        _ => None,
    }
}

/// Exit code as a container runtime reports it: 128+signal for signalled processes.
pub(crate) fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// The relative form of an absolute container path, keeping only normal parts.
pub(crate) fn relative(path: &str) -> PathBuf {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p),
            _ => None,
        })
        .collect()
}

/// Whether a path contains `..`.
pub(crate) fn has_dotdot(path: &str) -> bool {
    Path::new(path)
        .components()
        .any(|c| matches!(c, Component::ParentDir))
}

/// Build a command: own process group, clean environment, cwd set; a relative
/// program path with a slash is resolved against the cwd.
pub(crate) fn command(argv: &[String], cwd: &Path, env: &[(String, String)]) -> Option<Command> {
    let (prog, args) = argv.split_first()?;
    let mut cmd = Command::new(program_path(prog, cwd));
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    Some(as_container_process(cmd))
}

/// What every container process starts with, wrapped in a mount namespace or not: a
/// process group of its own (the unit the kubelet signals), no stdin, piped output,
/// and killed with its handle unless the caller says otherwise.
fn as_container_process(mut cmd: Command) -> Command {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

/// `unshare(1)`, which makes the private mount namespace of a container's process.
const UNSHARE: &str = "/usr/bin/unshare";
/// The shell that makes a container's mounts in that namespace, then execs the command.
const SH: &str = "/bin/sh";

/// One bind mount of a container's process: `source` (a volume's host directory, or a
/// file for a `subPath` naming one) onto `target`, a path under the container's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bind {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
    /// `source` is a file: a file is bound onto a file.
    pub file: bool,
}

/// A string as one single-quoted shell word.
fn quote(s: &std::ffi::OsStr) -> String {
    format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"))
}

/// The script that makes `binds` (parents before children, as given), then enters
/// `cwd` and execs `"$@"`, as a container runtime makes a container's mounts before its
/// process starts. A mount point below another mount is made inside the volume bound
/// there, as runc does; read-only mounts are made read-only once every bind is in place,
/// so a mount point below one can still be made. A mount that cannot be made ends the
/// process with 125 (what `docker run` answers when the runtime fails). `"$@"` is the
/// container's environment as `NAME=VALUE` words, then the command: `env -i` sets it
/// exactly, since a shell would drop the variables whose names are not identifiers,
/// which a kubelet passes through (so a program whose name has a `=` cannot be run).
pub(crate) fn mount_script(binds: &[Bind], cwd: &Path) -> String {
    let mut script = String::new();
    let fail = |what: &str, dst: &str| {
        format!(" || {{ printf 'kube-sim: cannot {what} at %s\\n' {dst} >&2; exit 125; }}\n")
    };
    for b in binds {
        let (src, dst) = (quote(b.source.as_os_str()), quote(b.target.as_os_str()));
        if b.file {
            let parent = b.target.parent().unwrap_or(Path::new("/"));
            script.push_str(&format!(
                "/bin/mkdir -p {} && {{ [ -e {dst} ] || : > {dst}; }} && /bin/mount --bind {src} {dst}",
                quote(parent.as_os_str())
            ));
        } else {
            script.push_str(&format!(
                "/bin/mkdir -p {dst} && /bin/mount --bind {src} {dst}"
            ));
        }
        script.push_str(&fail("bind-mount a volume", &dst));
    }
    for b in binds.iter().filter(|b| b.read_only) {
        let dst = quote(b.target.as_os_str());
        script.push_str(&format!("/bin/mount -o remount,bind,ro {dst}"));
        script.push_str(&fail("make read-only the mount", &dst));
    }
    let cwd = quote(cwd.as_os_str());
    script.push_str(&format!("cd {cwd}"));
    script.push_str(&fail("enter the working directory", &cwd));
    script.push_str("exec /usr/bin/env -i -- \"$@\"\n");
    script
}

/// [`command`] in a private mount namespace of its own where `binds` are made, so the
/// container's mount points are real directories with the volumes' files in them. The
/// process keeps the pid (and process group) spawned: `unshare` execs the shell, which
/// execs `env`, which execs the command. `host_cwd` is where the spawn itself starts, on
/// the host.
pub(crate) fn namespaced_command(
    argv: &[String],
    cwd: &Path,
    host_cwd: &Path,
    env: &[(String, String)],
    binds: &[Bind],
) -> Option<Command> {
    let (prog, args) = argv.split_first()?;
    let program = program_path(prog, cwd);
    let mut cmd = Command::new(UNSHARE);
    cmd.args(["--mount", "--propagation", "private", "--", SH, "-c"])
        .arg(mount_script(binds, cwd))
        .arg("sh")
        .args(env.iter().map(|(k, v)| format!("{k}={v}")))
        .arg(program)
        .args(args)
        .current_dir(host_cwd)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    Some(as_container_process(cmd))
}

/// The program a command runs: a relative path with a slash is from `cwd`.
fn program_path(prog: &str, cwd: &Path) -> PathBuf {
    if prog.contains('/') && !prog.starts_with('/') {
        cwd.join(prog)
    } else {
        PathBuf::from(prog)
    }
}

/// Wait until process `pid`, spawned by [`namespaced_command`] for `argv` in `cwd`, has
/// made its mounts and execed the command itself (its `/proc/PID/cmdline` is the
/// command's), as a container runtime reports a container started only once its process
/// runs: until then its pid is the wrapper's, whose TERM handling is not the command's.
/// Also returns when the process is gone, or after `limit`.
pub(crate) async fn await_exec(pid: i32, argv: &[String], cwd: &Path, limit: std::time::Duration) {
    use std::os::unix::ffi::OsStrExt;
    let Some((prog, args)) = argv.split_first() else {
        return;
    };
    let mut want = program_path(prog, cwd).into_os_string().as_bytes().to_vec();
    want.push(0);
    for a in args {
        want.extend_from_slice(a.as_bytes());
        want.push(0);
    }
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match std::fs::read(format!("/proc/{pid}/cmdline")) {
            Ok(c) if c == want => return,
            // Gone.
            Err(_) => return,
            // Empty both for a zombie and, for a moment, for a process in the middle of
            // an `execve`: only the state tells them apart (proc(5), field 3 of `stat`).
            Ok(c) if c.is_empty() && is_zombie(pid) => return,
            Ok(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Whether process `pid` is a zombie (or gone): state `Z` or `X` in `/proc/PID/stat`,
/// after the command name, which is in parentheses and may hold anything.
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            after
                .split_whitespace()
                .next()
                .map(|st| st == "Z" || st == "X")
        })
        .unwrap_or(true)
}

/// Whether container processes can have mount namespaces with bind mounts here (root,
/// `unshare` and `mount` at hand): found out once, by binding one directory onto
/// another in a namespace of their own. Without them the kubelet falls back to symbolic
/// links at the mount points, and says so once.
pub(crate) fn bind_mounts_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let probe = || -> Result<(), String> {
            let dir = tempfile::Builder::new()
                .prefix("kube-sim-probe-")
                .tempdir()
                .map_err(|e| e.to_string())?;
            let (a, b) = (dir.path().join("a"), dir.path().join("b"));
            std::fs::create_dir(&a).map_err(|e| e.to_string())?;
            std::fs::create_dir(&b).map_err(|e| e.to_string())?;
            let out = std::process::Command::new(UNSHARE)
                .args([
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    "/bin/mount",
                    "--bind",
                ])
                .arg(&a)
                .arg(&b)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("{UNSHARE}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
            }
        };
        match probe() {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(
                    %error,
                    "no mount namespaces with bind mounts here (they need root): container \
                     mount points are symbolic links to the volumes instead"
                );
                false
            }
        }
    })
}

/// Whether process `pid` has a handler for SIGTERM: bit 15 (mask bit 14) of `SigCgt` in
/// `/proc/PID/status` (proc(5)). The kernel drops a signal with the default action sent
/// to a PID namespace's init from inside the namespace (kernel/signal.c
/// `sig_task_ignored` with `SIGNAL_UNKILLABLE`; pid_namespaces(7)), and the runtime's
/// StopContainer TERM is such a signal, so a container's PID 1 without a handler
/// ignores it. A process that is gone, or unreadable, has none.
pub(crate) fn catches_term(pid: i32) -> bool {
    const SIGTERM_BIT: u64 = 1 << (15 - 1);
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & SIGTERM_BIT != 0)
}

/// Wait for a container's own process, then SIGKILL what it left in its process group:
/// when a PID namespace's init exits the kernel kills every other process in it
/// (pid_namespaces(7), `zap_pid_ns_processes`), so a container ends with its PID 1 and
/// no orphan keeps its output open.
pub(crate) async fn wait_init(child: &mut Child) -> std::io::Result<ExitStatus> {
    let group = pgid(child);
    let status = child.wait().await;
    if let Some(g) = group {
        // The group outlives its leader while it has members, so its id cannot be
        // reused meanwhile; with none left there is nothing to kill.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(g),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    status
}

/// The process group of a spawned child (its own pid, as we use `process_group(0)`).
pub(crate) fn pgid(child: &Child) -> Option<i32> {
    child.id().and_then(|id| i32::try_from(id).ok())
}

/// Exit code a shell would report for a spawn failure.
pub(crate) fn spawn_error_code(e: &std::io::Error) -> i32 {
    match e.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 126,
    }
}

/// Expand Kubernetes `$(VAR)` references; `$$` is a literal `$`; unknown
/// references stay as written.
pub(crate) fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_detection() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(is_pause(&v(&["/jetbridge/pause"])), Some(true));
        assert_eq!(is_pause(&v(&["sleep", "infinity"])), Some(false));
        assert_eq!(is_pause(&v(&["sleep", "1"])), None);
        assert_eq!(is_pause(&v(&["sh", "-c", "pause"])), None);
    }

    #[test]
    fn a_term_handler_shows_in_sigcgt() {
        use std::io::BufRead;
        let spawn = |script: &str| {
            use std::os::unix::process::CommandExt;
            let mut c = std::process::Command::new("sh")
                .args(["-c", script])
                .process_group(0)
                .stdout(Stdio::piped())
                .spawn()
                .expect("sh");
            // The script says when its trap (or lack of one) is in place.
            let mut line = String::new();
            std::io::BufReader::new(c.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("ready");
            c
        };
        let mut trapping = spawn("trap 'exit 0' TERM; echo ready; sleep 30 & wait");
        let mut plain = spawn("echo ready; sleep 30");
        let pid = |c: &std::process::Child| i32::try_from(c.id()).expect("pid");
        assert!(catches_term(pid(&trapping)));
        assert!(!catches_term(pid(&plain)));
        for c in [&mut trapping, &mut plain] {
            // The whole group, so no `sleep` outlives the test.
            let group = nix::unistd::Pid::from_raw(pid(c));
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
        assert!(
            !catches_term(pid(&plain)),
            "a process that is gone has none"
        );
    }

    #[test]
    fn expansion() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
    }

    #[test]
    fn mount_scripts_quote_paths_and_bind_parents_first() {
        let bind = |src: &str, dst: &str, read_only| Bind {
            source: src.into(),
            target: dst.into(),
            read_only,
            file: false,
        };
        let script = mount_script(
            &[
                bind("/v/a", "/r/w", false),
                bind("/v/it's", "/r/w/in", true),
            ],
            Path::new("/r/w"),
        );
        let lines: Vec<&str> = script.lines().collect();
        assert!(lines[0].starts_with("/bin/mkdir -p '/r/w' && /bin/mount --bind '/v/a' '/r/w' ||"));
        assert!(
            lines[1].contains("--bind '/v/it'\\''s' '/r/w/in'"),
            "{script}"
        );
        assert!(lines[2].starts_with("/bin/mount -o remount,bind,ro '/r/w/in' ||"));
        assert!(lines[3].starts_with("cd '/r/w' ||") && lines[3].contains("exit 125"));
        assert_eq!(lines[4], "exec /usr/bin/env -i -- \"$@\"");
    }

    #[test]
    fn relative_paths() {
        assert_eq!(relative("/a/./b/"), PathBuf::from("a/b"));
        assert!(has_dotdot("/a/../b"));
        assert!(!has_dotdot("/a/b"));
    }
}
