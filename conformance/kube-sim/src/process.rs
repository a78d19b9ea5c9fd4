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
    let program = if prog.contains('/') && !prog.starts_with('/') {
        cwd.join(prog)
    } else {
        PathBuf::from(prog)
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    Some(cmd)
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
    fn relative_paths() {
        assert_eq!(relative("/a/./b/"), PathBuf::from("a/b"));
        assert!(has_dotdot("/a/../b"));
        assert!(!has_dotdot("/a/b"));
    }
}
