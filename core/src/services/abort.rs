//! Aborting a build: one handle, many listeners.

use tokio::sync::watch;

/// Ends a build early (Ctrl-C, a timeout of the whole build).
#[derive(Debug)]
pub struct AbortHandle(watch::Sender<bool>);

/// Listens for an abort; cheap to clone.
#[derive(Debug, Clone)]
pub struct AbortSignal(watch::Receiver<bool>);

/// A connected handle and signal.
pub fn abort_pair() -> (AbortHandle, AbortSignal) {
    let (tx, rx) = watch::channel(false);
    (AbortHandle(tx), AbortSignal(rx))
}

impl AbortHandle {
    /// Abort everything listening.
    pub fn abort(&self) {
        let _ = self.0.send(true);
    }
}

impl AbortSignal {
    /// A signal that never fires.
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        // Keep the sender alive forever so `aborted` pends instead of returning.
        std::mem::forget(tx);
        AbortSignal(rx)
    }

    /// Whether abort was requested.
    pub fn is_aborted(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once abort is requested; pends forever if the handle is dropped
    /// without aborting.
    pub async fn aborted(&mut self) {
        loop {
            if *self.0.borrow_and_update() {
                return;
            }
            if self.0.changed().await.is_err() {
                futures::future::pending::<()>().await;
            }
        }
    }
}
