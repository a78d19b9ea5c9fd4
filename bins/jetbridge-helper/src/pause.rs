//! `pause`: the container's PID 1. Sleeps in `sigwait`, reaps every zombie, and exits 0
//! on SIGTERM or SIGINT.

use std::process::ExitCode;

use nix::errno::Errno;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::complain;

pub fn pause() -> ExitCode {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGCHLD);
    // Block first, then install the handlers: a TERM arriving in between stays pending
    // for `wait` instead of running the no-op handler and being lost.
    if let Err(e) = set.thread_block() {
        complain(format_args!("pause: blocking signals: {e}"));
        return ExitCode::FAILURE;
    }
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        if let Err(e) = catch(sig) {
            complain(format_args!("pause: sigaction {sig}: {e}"));
            return ExitCode::FAILURE;
        }
    }
    // Children we already had (from before an exec into us) may have died before
    // SIGCHLD was blocked, when it was discarded.
    reap();
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => reap(),
            Ok(Signal::SIGTERM | Signal::SIGINT) => return ExitCode::SUCCESS,
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(e) => {
                complain(format_args!("pause: sigwait: {e}"));
                return ExitCode::FAILURE;
            }
        }
    }
}

/// Does nothing; it only has to exist. The signals it is installed for are blocked
/// and taken by `sigwait`, so it never runs in practice.
extern "C" fn ignore(_: std::ffi::c_int) {}

/// Installs [`ignore`] as the handler of `sig`, so that the kernel reports the signal
/// as caught (`SigCgt` in /proc/PID/status: what tools read to tell whether a PID 1
/// handles TERM), and so that the signal is never at the default disposition, which
/// for a PID 1 means "discard" once it is unblocked.
#[allow(unsafe_code)]
fn catch(sig: Signal) -> nix::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(ignore),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: `sigaction` is unsafe because a handler may run at any point and must be
    // async-signal-safe. `ignore` touches no memory and calls nothing, so it is
    // trivially async-signal-safe; no other handler is being replaced that the program
    // relies on (the helper installs none elsewhere).
    unsafe { sigaction(sig, &action) }.map(drop)
}

/// Reaps every child that has exited, without blocking.
fn reap() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                complain(format_args!("pause: waitpid: {e}"));
                return;
            }
        }
    }
}
