//! The object store: pods, the global resourceVersion counter and the event history.

use crate::selector::Selectors;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};

/// How many events are kept before the oldest are compacted away.
const HISTORY_CAP: usize = 50_000;

/// A watch event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, with the object before it (for selector transitions).
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub rv: u64,
    pub kind: EventType,
    pub obj: Value,
    pub prev: Option<Value>,
}

impl Event {
    /// The event as a watcher with `sel` sees it: selector transitions turn a
    /// MODIFIED into ADDED or DELETED, as the API server does.
    pub fn for_selector(&self, sel: &Selectors) -> Option<(EventType, &Value)> {
        let now = sel.matches(&self.obj);
        match self.kind {
            EventType::Added => now.then_some((EventType::Added, &self.obj)),
            EventType::Deleted => now.then_some((EventType::Deleted, &self.obj)),
            EventType::Modified => {
                let before = self.prev.as_ref().is_some_and(|p| sel.matches(p));
                match (before, now) {
                    (true, true) => Some((EventType::Modified, &self.obj)),
                    (false, true) => Some((EventType::Added, &self.obj)),
                    (true, false) => Some((EventType::Deleted, &self.obj)),
                    (false, false) => None,
                }
            }
        }
    }
}

/// Pods keyed by (namespace, name), plus history.
#[derive(Debug, Default)]
pub(crate) struct Store {
    pub pods: BTreeMap<(String, String), Value>,
    /// The last resourceVersion handed out.
    pub rv: u64,
    /// Events in increasing rv order, all with rv > `floor`.
    pub history: VecDeque<Event>,
    /// Watches starting before this version get 410 Gone.
    pub floor: u64,
}

impl Store {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, ev: Event) {
        self.history.push_back(ev);
        while self.history.len() > HISTORY_CAP {
            if let Some(old) = self.history.pop_front() {
                self.floor = old.rv;
            }
        }
    }

    /// Insert a new pod; the caller checked it does not exist.
    pub fn insert(&mut self, ns: &str, name: &str, mut obj: Value) -> Value {
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.pods
            .insert((ns.to_string(), name.to_string()), obj.clone());
        self.record(Event {
            rv,
            kind: EventType::Added,
            obj: obj.clone(),
            prev: None,
        });
        obj
    }

    pub fn get(&self, ns: &str, name: &str) -> Option<&Value> {
        self.pods.get(&(ns.to_string(), name.to_string()))
    }

    /// Apply `f` to a pod; a change bumps its resourceVersion and emits MODIFIED.
    /// Returns the pod after the change, or `None` when it does not exist.
    pub fn update(&mut self, ns: &str, name: &str, f: impl FnOnce(&mut Value)) -> Option<Value> {
        let key = (ns.to_string(), name.to_string());
        let current = self.pods.get(&key)?.clone();
        let mut next = current.clone();
        f(&mut next);
        // resourceVersion is owned by the store.
        next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        if next == current {
            return Some(current);
        }
        let rv = self.next_rv();
        next["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.pods.insert(key, next.clone());
        self.record(Event {
            rv,
            kind: EventType::Modified,
            obj: next.clone(),
            prev: Some(current),
        });
        Some(next)
    }

    /// Remove a pod, emitting DELETED with a fresh resourceVersion.
    pub fn remove(&mut self, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self.pods.remove(&(ns.to_string(), name.to_string()))?;
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(Event {
            rv,
            kind: EventType::Deleted,
            obj: obj.clone(),
            prev: None,
        });
        Some(obj)
    }

    /// Pods in a namespace (all namespaces when `None`) that match.
    pub fn list(&self, ns: Option<&str>, sel: &Selectors) -> Vec<Value> {
        self.pods
            .iter()
            .filter(|((pns, _), _)| ns.is_none_or(|n| n == pns))
            .filter(|(_, p)| sel.matches(p))
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Events after `rv`, or `Err(())` when that part of history is gone.
    pub fn events_after(&self, rv: u64) -> Result<Vec<Event>, ()> {
        if rv < self.floor {
            return Err(());
        }
        let start = self.history.partition_point(|e| e.rv <= rv);
        Ok(self.history.iter().skip(start).cloned().collect())
    }

    /// Forget all history: watches from older versions get 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.floor = self.rv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_history() {
        let mut s = Store::default();
        let a = s.insert("ns", "a", json!({"metadata": {"name": "a"}}));
        assert_eq!(a["metadata"]["resourceVersion"], "1");
        let same = s.update("ns", "a", |_| {}).unwrap();
        assert_eq!(
            same["metadata"]["resourceVersion"], "1",
            "no-op update keeps rv"
        );
        let b = s.update("ns", "a", |p| p["x"] = json!(1)).unwrap();
        assert_eq!(b["metadata"]["resourceVersion"], "2");
        s.remove("ns", "a").unwrap();
        let evs = s.events_after(1).unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[1].kind, EventType::Deleted);
        s.compact();
        assert!(s.events_after(2).is_err());
        assert!(s.events_after(3).unwrap().is_empty());
    }
}
