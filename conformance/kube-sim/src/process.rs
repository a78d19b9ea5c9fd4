//! Local processes standing in for container processes.

use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use tokio::process::{Child, Command};

/// Whether argv means "wait until killed": a `pause` binary or `sleep infinity`.
/// An empty argv (image entrypoint, unknown here) is treated the same way.
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
