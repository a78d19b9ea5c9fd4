//! `kill ID`: SIGKILL every process whose environment carries `JETBRIDGE_EXEC_ID=ID`.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use nix::sys::signal::{Signal, kill as send};
use nix::unistd::Pid;

/// The environment variable jetbridge sets on every command it runs.
const MARKER: &[u8] = b"JETBRIDGE_EXEC_ID=";

/// A command may fork while we scan; scan again until a pass finds nobody new, at most
/// this many times.
const MAX_PASSES: usize = 5;

pub fn kill(id: &OsStr) -> ExitCode {
    let mut entry = MARKER.to_vec();
    entry.extend_from_slice(id.as_bytes());
    let me = std::process::id();
    let mut killed = HashSet::new();
    for _ in 0..MAX_PASSES {
        let mut new = false;
        for pid in marked(&entry, me) {
            // Vanished or not ours to kill: nothing more to do about it.
            let _ = send(Pid::from_raw(pid), Signal::SIGKILL);
            new |= killed.insert(pid);
        }
        if !new {
            break;
        }
    }
    ExitCode::SUCCESS
}

/// The pids (other than `me`) whose /proc environ holds exactly `entry`.
fn marked(entry: &[u8], me: u32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            (pid != me).then_some(pid)
        })
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == entry))
        })
        .filter_map(|pid| i32::try_from(pid).ok())
        .collect()
}
