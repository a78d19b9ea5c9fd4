//! Aborting a build: one handle, many listeners, in two stages.
//!
//! The first abort (Ctrl-C, SIGTERM, an API abort) interrupts whatever the build is
//! doing — pod creation, every wait, the command — and lets the `on_abort` and
//! `ensure` hooks of the interrupted steps run, as Concourse does. The second stage
//! (a second Ctrl-C, or the hooks' grace period running out) interrupts the hooks too.
//! A worker that lost its registration skips straight to the second stage: it can no
//! longer protect what it runs, so nothing more runs.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Why a build is being stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortReason {
    /// Someone asked (Ctrl-C, SIGTERM, an abort request): the build ends `aborted`.
    Requested,
    /// The worker can no longer run it safely (its registration lapsed): the build
    /// ends `errored` with this reason, and no hooks run.
    WorkerLost(String),
}

#[derive(Debug, Clone)]
struct State {
    /// 0: running; 1: aborted (hooks may run); 2: stop everything.
    level: u8,
    reason: AbortReason,
    /// When the first stage began (for the hooks' grace period).
    since: Option<Instant>,
}

/// Ends a build early.
#[derive(Debug)]
pub struct AbortHandle(watch::Sender<State>);

/// Listens for an abort; cheap to clone.
#[derive(Debug, Clone)]
pub struct AbortSignal {
    rx: watch::Receiver<State>,
    /// The stage this signal fires at: 1 for steps, 2 for hooks run after an abort.
    level: u8,
    /// For hook signals: fire this long after the first stage even without a second.
    grace: Option<Duration>,
}

/// A connected handle and signal.
pub fn abort_pair() -> (AbortHandle, AbortSignal) {
    let (tx, rx) = watch::channel(State {
        level: 0,
        reason: AbortReason::Requested,
        since: None,
    });
    (
        AbortHandle(tx),
        AbortSignal {
            rx,
            level: 1,
            grace: None,
        },
    )
}

impl AbortHandle {
    /// First stage: abort the build; its `on_abort` and `ensure` hooks still run.
    pub fn abort(&self) {
        self.raise(1, AbortReason::Requested);
    }

    /// Second stage: interrupt the hooks too (the pods they made are still deleted).
    pub fn force(&self) {
        self.raise(2, AbortReason::Requested);
    }

    /// Stop everything at once for `reason`; no hooks run.
    pub fn abort_because(&self, reason: AbortReason) {
        let level = match reason {
            AbortReason::Requested => 1,
            AbortReason::WorkerLost(_) => 2,
        };
        self.raise(level, reason);
    }

    /// Whether the first stage has begun.
    pub fn is_aborted(&self) -> bool {
        self.0.borrow().level >= 1
    }

    fn raise(&self, level: u8, reason: AbortReason) {
        self.0.send_if_modified(|s| {
            if s.level >= level {
                return false;
            }
            if s.since.is_none() {
                s.since = Some(Instant::now());
            }
            // The first reason given wins, except that losing the worker outranks a
            // plain request: it decides how the build ends.
            if s.level == 0 || matches!(reason, AbortReason::WorkerLost(_)) {
                s.reason = reason;
            }
            s.level = level;
            true
        });
    }
}

impl AbortSignal {
    /// A signal that never fires.
    pub fn never() -> Self {
        let (tx, signal) = abort_pair();
        // Keep the sender alive forever so `aborted` pends instead of returning.
        std::mem::forget(tx);
        signal
    }

    /// The signal hooks run under once the build was aborted: it fires at the second
    /// stage, or `grace` after the first.
    pub fn for_hooks(&self, grace: Duration) -> Self {
        AbortSignal {
            rx: self.rx.clone(),
            level: 2,
            grace: Some(grace),
        }
    }

    /// Whether this signal has fired.
    pub fn is_aborted(&self) -> bool {
        let s = self.rx.borrow();
        s.level >= self.level || self.grace_over(&s)
    }

    /// Whether the build was aborted at all (first stage or later), whatever stage this
    /// signal listens for.
    pub fn build_aborted(&self) -> bool {
        self.rx.borrow().level >= 1
    }

    /// Why the build is being stopped, once it is.
    pub fn reason(&self) -> Option<AbortReason> {
        let s = self.rx.borrow();
        (s.level >= 1).then(|| s.reason.clone())
    }

    fn grace_over(&self, s: &State) -> bool {
        grace_over(self.grace, s)
    }

    /// Resolves once this signal fires; pends forever if the handle is dropped without
    /// aborting.
    pub async fn aborted(&mut self) {
        loop {
            let (level, grace) = (self.level, self.grace);
            let deadline = {
                let s = self.rx.borrow_and_update();
                if s.level >= level || grace_over(grace, &s) {
                    return;
                }
                match (grace, s.since) {
                    (Some(g), Some(since)) if s.level >= 1 => Some(since + g),
                    _ => None,
                }
            };
            let changed = async {
                if self.rx.changed().await.is_err() {
                    futures::future::pending::<()>().await;
                }
            };
            match deadline {
                Some(d) => {
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep_until(d) => return,
                    }
                }
                None => changed.await,
            }
        }
    }
}

fn grace_over(grace: Option<Duration>, s: &State) -> bool {
    match (grace, s.since) {
        (Some(g), Some(since)) => s.level >= 1 && Instant::now() >= since + g,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn hooks_signal_fires_on_force_or_after_grace() {
        let (h, s) = abort_pair();
        let hooks = s.for_hooks(Duration::from_secs(60));
        assert!(!s.is_aborted() && !hooks.is_aborted());
        h.abort();
        assert!(s.is_aborted());
        assert!(!hooks.is_aborted(), "hooks run during the grace period");
        let mut waiting = hooks.clone();
        let started = Instant::now();
        waiting.aborted().await;
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        assert!(hooks.is_aborted());
        assert_eq!(s.reason(), Some(AbortReason::Requested));
    }

    #[tokio::test(start_paused = true)]
    async fn force_ends_the_grace_at_once() {
        let (h, s) = abort_pair();
        let mut hooks = s.for_hooks(Duration::from_secs(60));
        h.abort();
        h.force();
        let started = Instant::now();
        hooks.aborted().await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_worker_stops_hooks_too_and_says_why() {
        let (h, s) = abort_pair();
        let hooks = s.for_hooks(Duration::from_secs(60));
        h.abort();
        h.abort_because(AbortReason::WorkerLost("lost its registration".into()));
        assert!(hooks.is_aborted());
        assert_eq!(
            s.reason(),
            Some(AbortReason::WorkerLost("lost its registration".into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn never_never_fires() {
        let mut s = AbortSignal::never();
        let r = tokio::time::timeout(Duration::from_secs(3600), s.aborted()).await;
        assert!(r.is_err());
        assert!(!s.is_aborted());
    }
}
