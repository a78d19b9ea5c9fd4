//! What failure tests read beside the faults: every object the API server ever
//! created, so a test can tell a create whose answer was lost and then resent (one
//! object) from one that made a second.

use crate::Simulator;

/// Exec payload bytes through the API server ([`Simulator::exec_bytes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecBytes {
    /// Sent by clients to commands' stdin.
    pub stdin: u64,
    /// Sent by commands' stdout and stderr to clients.
    pub output: u64,
}

impl ExecBytes {
    /// Both ways.
    pub fn total(&self) -> u64 {
        self.stdin + self.output
    }
}
use crate::state::lock;
use crate::store::EventType;

impl Simulator {
    /// Every pod created in `namespace` since the start, deleted ones included, as it
    /// was when created, in creation order (one entry per uid). Read from the watch
    /// history, so nothing created before a [`Simulator::compact`] is seen.
    pub fn pods_created(&self, namespace: &str) -> Vec<serde_json::Value> {
        self.created(namespace, "Pod")
    }

    /// [`Simulator::pods_created`] for Secrets (the values of their `data` kept as
    /// they were sent, in base64).
    pub fn secrets_created(&self, namespace: &str) -> Vec<serde_json::Value> {
        self.created(namespace, "Secret")
    }

    /// The payload bytes that have crossed this API server in exec sessions since the
    /// start (or the last [`Simulator::reset_exec_bytes`]): what clients sent to
    /// commands' stdin, and what commands' stdout and stderr sent back. Frame headers
    /// and status frames are not counted. On a cluster every such byte also crosses the
    /// kubelet and the node's network: this is the cost of moving artifacts through
    /// exec.
    pub fn exec_bytes(&self) -> ExecBytes {
        use std::sync::atomic::Ordering::Relaxed;
        ExecBytes {
            stdin: self.shared.exec_bytes.stdin.load(Relaxed),
            output: self.shared.exec_bytes.output.load(Relaxed),
        }
    }

    /// Start [`Simulator::exec_bytes`] again from zero.
    pub fn reset_exec_bytes(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.shared.exec_bytes.stdin.store(0, Relaxed);
        self.shared.exec_bytes.output.store(0, Relaxed);
    }

    fn created(&self, namespace: &str, kind: &str) -> Vec<serde_json::Value> {
        let store = lock(&self.shared.store);
        let mut seen = std::collections::BTreeSet::new();
        store
            .history
            .iter()
            .filter(|ev| ev.kind == EventType::Added)
            .filter(|ev| ev.obj["kind"] == kind && ev.obj["metadata"]["namespace"] == namespace)
            .filter(|ev| seen.insert(crate::store::uid_of(&ev.obj).to_owned()))
            .map(|ev| ev.obj.clone())
            .collect()
    }
}
