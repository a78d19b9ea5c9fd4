//! What failure tests read beside the faults: every object the API server ever
//! created, so a test can tell a create whose answer was lost and then resent (one
//! object) from one that made a second.

use crate::Simulator;
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
