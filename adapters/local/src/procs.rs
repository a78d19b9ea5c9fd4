//! Process groups started by exec: records on disk, liveness through `/proc`, signals.
//!
//! Every exec runs in its own process group (its pgid is the pid of the spawned
//! process). The group is recorded as `procs/<pgid>` in the sandbox, holding the start
//! time of the group leader (from `/proc/<pid>/stat`), so any process over the same
//! root can kill the group later without hitting an unrelated group that reused the id:
//! Linux never hands out a pid that is still in use as a process group id, so if
//! `/proc/<pgid>` shows a process with another start time, our group is gone.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How often group liveness is checked while waiting for a group to die.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(25);
/// How long to wait for killed groups to disappear after SIGKILL.
const KILL_SETTLE: Duration = Duration::from_secs(5);

/// A process group started by exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Group {
    pub(crate) pgid: i32,
    /// Start time of the leader, in clock ticks since boot (`None`: unknown).
    pub(crate) start_ticks: Option<u64>,
}

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Debug, Clone, Copy)]
struct ProcStat {
    state: u8,
    pgrp: i32,
    start_ticks: u64,
}

fn read_stat(pid: &str) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // fields[0] is field 3 (state); pgrp is field 5, starttime field 22.
    Some(ProcStat {
        state: *fields.first()?.as_bytes().first()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// The start time of process `pid`, if it exists.
pub(crate) fn start_ticks(pid: i32) -> Option<u64> {
    read_stat(&pid.to_string()).map(|s| s.start_ticks)
}

/// Record `group` in `procs_dir`.
pub(crate) fn write_record(procs_dir: &Path, group: Group) -> std::io::Result<()> {
    let body = group.start_ticks.map(|t| t.to_string()).unwrap_or_default();
    std::fs::write(procs_dir.join(group.pgid.to_string()), body)
}

/// Forget `pgid` (best effort).
pub(crate) fn remove_record(procs_dir: &Path, pgid: i32) {
    let _ = std::fs::remove_file(procs_dir.join(pgid.to_string()));
}

/// Every group recorded in `procs_dir` (unreadable entries are skipped).
pub(crate) fn read_records(procs_dir: &Path) -> Vec<Group> {
    let Ok(entries) = std::fs::read_dir(procs_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pgid: i32 = e.file_name().to_str()?.parse().ok()?;
            if pgid <= 1 {
                return None;
            }
            let start_ticks = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|s| s.trim().parse().ok());
            Some(Group { pgid, start_ticks })
        })
        .collect()
}

/// Whether `group` may still exist (see the module docs for why this is sound).
fn may_exist(group: Group) -> bool {
    match (read_stat(&group.pgid.to_string()), group.start_ticks) {
        // The id belongs to a different process now: our group is gone.
        (Some(now), Some(then)) => now.start_ticks == then,
        // Leader unknown or gone; members may remain (killpg on an empty group is ESRCH).
        _ => true,
    }
}

/// Send `sig` to `group` if it may still exist. Errors (the group is gone) are ignored.
pub(crate) fn signal(group: Group, sig: Signal) {
    if group.pgid > 1 && may_exist(group) {
        let _ = killpg(Pid::from_raw(group.pgid), sig);
    }
}

/// Whether a process group has members (zombies do not count).
pub(crate) fn group_has_members(pgid: i32) -> bool {
    !live_groups(&[pgid]).is_empty()
}

/// The ids among `pgids` that still have a live (non-zombie) member.
fn live_groups(pgids: &[i32]) -> HashSet<i32> {
    let wanted: HashSet<i32> = pgids.iter().copied().collect();
    let mut live = HashSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        // No /proc: fall back to signal 0, which also counts zombies.
        return wanted
            .into_iter()
            .filter(|&g| killpg(Pid::from_raw(g), None).is_ok())
            .collect();
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Some(st) = read_stat(name)
            && wanted.contains(&st.pgrp)
            && st.state != b'Z'
            && st.state != b'X'
        {
            live.insert(st.pgrp);
        }
    }
    live
}

/// SIGTERM every group, wait up to `grace` for them to exit, SIGKILL what remains and
/// wait (briefly) for it to go. Returns the groups still alive at the end (normally none).
pub(crate) async fn terminate(groups: &[Group], grace: Duration) -> Vec<i32> {
    let groups: Vec<Group> = groups.iter().copied().filter(|g| may_exist(*g)).collect();
    if groups.is_empty() {
        return Vec::new();
    }
    let pgids: Vec<i32> = groups.iter().map(|g| g.pgid).collect();
    for g in &groups {
        signal(*g, Signal::SIGTERM);
        // A stopped process cannot act on SIGTERM until it continues.
        signal(*g, Signal::SIGCONT);
    }
    let mut live = wait_until_gone(&pgids, grace).await;
    if !live.is_empty() {
        for g in groups.iter().filter(|g| live.contains(&g.pgid)) {
            signal(*g, Signal::SIGKILL);
        }
        live = wait_until_gone(&live, KILL_SETTLE).await;
    }
    live
}

async fn wait_until_gone(pgids: &[i32], limit: Duration) -> Vec<i32> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let live: Vec<i32> = live_groups(pgids).into_iter().collect();
        if live.is_empty() || tokio::time::Instant::now() >= deadline {
            return live;
        }
        tokio::time::sleep(LIVENESS_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_stat_is_readable() {
        let me = std::process::id() as i32;
        let st = read_stat(&me.to_string()).expect("stat of self");
        assert!(st.start_ticks > 0);
        assert_eq!(st.pgrp, nix::unistd::getpgrp().as_raw());
    }

    #[test]
    fn a_reused_id_is_not_signalled() {
        // Our own process group id with a start time that does not match: must be
        // treated as gone, never signalled.
        let me = nix::unistd::getpgrp().as_raw();
        let leader_start = start_ticks(me);
        let g = Group {
            pgid: me,
            start_ticks: leader_start.map(|t| t + 1),
        };
        if leader_start.is_some() {
            assert!(!may_exist(g));
        }
    }

    #[test]
    fn records_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let g = Group {
            pgid: 4242,
            start_ticks: Some(77),
        };
        write_record(t.path(), g).unwrap();
        std::fs::write(t.path().join("junk"), "x").unwrap();
        assert_eq!(read_records(t.path()), vec![g]);
        remove_record(t.path(), 4242);
        assert!(read_records(t.path()).is_empty());
    }
}
