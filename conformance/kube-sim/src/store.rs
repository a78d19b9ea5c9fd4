//! The object store: pods, secrets and NetworkPolicies, the global resourceVersion
//! counter, the event history, and the garbage collection of the secrets and
//! NetworkPolicies owned by pods.

use crate::selector::Selectors;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};

/// The kinds of object the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Pod,
    Secret,
    NetworkPolicy,
}

impl Kind {
    /// The `kind` of the objects.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Secret => "Secret",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }
}

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

/// Objects keyed by (namespace, name), plus history.
#[derive(Debug, Default)]
pub(crate) struct Store {
    pub pods: BTreeMap<(String, String), Value>,
    pub secrets: BTreeMap<(String, String), Value>,
    pub network_policies: BTreeMap<(String, String), Value>,
    /// The last resourceVersion handed out.
    pub rv: u64,
    /// Events in increasing rv order, all with rv > `floor`.
    pub history: VecDeque<Event>,
    /// Watches starting before this version get 410 Gone.
    pub floor: u64,
    /// When set, the dependents of a removed pod are collected later, not at once:
    /// (namespace, pod uid) pairs for the simulator's garbage collector to sweep.
    pub deferred_gc: Option<Vec<(String, String)>>,
}

/// Whether the pod is bound to a node (`spec.nodeName` set).
pub(crate) fn is_bound(pod: &Value) -> bool {
    pod["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty())
}

impl Store {
    /// (namespace, name, uid) of the pods bound to the node; with `live_only`, those
    /// not yet in a terminal phase.
    pub fn bound_pods(&self, live_only: bool) -> Vec<(String, String, String)> {
        self.pods
            .iter()
            .filter(|(_, p)| is_bound(p))
            .filter(|(_, p)| {
                !live_only || !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
            })
            .map(|((ns, n), p)| (ns.clone(), n.clone(), uid_of(p).to_owned()))
            .collect()
    }

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

    fn objects(&self, kind: Kind) -> &BTreeMap<(String, String), Value> {
        match kind {
            Kind::Pod => &self.pods,
            Kind::Secret => &self.secrets,
            Kind::NetworkPolicy => &self.network_policies,
        }
    }

    fn objects_mut(&mut self, kind: Kind) -> &mut BTreeMap<(String, String), Value> {
        match kind {
            Kind::Pod => &mut self.pods,
            Kind::Secret => &mut self.secrets,
            Kind::NetworkPolicy => &mut self.network_policies,
        }
    }

    /// Insert a new pod; the caller checked it does not exist.
    pub fn insert(&mut self, ns: &str, name: &str, obj: Value) -> Value {
        self.insert_kind(Kind::Pod, ns, name, obj)
    }

    /// Insert a new object; the caller checked it does not exist.
    pub fn insert_kind(&mut self, kind: Kind, ns: &str, name: &str, mut obj: Value) -> Value {
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects_mut(kind)
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
        self.get_kind(Kind::Pod, ns, name)
    }

    pub fn get_kind(&self, kind: Kind, ns: &str, name: &str) -> Option<&Value> {
        self.objects(kind).get(&(ns.to_string(), name.to_string()))
    }

    /// Apply `f` to a pod; a change bumps its resourceVersion and emits MODIFIED.
    /// Returns the pod after the change, or `None` when it does not exist.
    pub fn update(&mut self, ns: &str, name: &str, f: impl FnOnce(&mut Value)) -> Option<Value> {
        self.update_kind(Kind::Pod, ns, name, f)
    }

    /// [`Store::update`] for any kind.
    pub fn update_kind(
        &mut self,
        kind: Kind,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let key = (ns.to_string(), name.to_string());
        let current = self.objects(kind).get(&key)?.clone();
        let mut next = current.clone();
        f(&mut next);
        // resourceVersion is owned by the store.
        next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        if next == current {
            return Some(current);
        }
        let rv = self.next_rv();
        next["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects_mut(kind).insert(key, next.clone());
        self.record(Event {
            rv,
            kind: EventType::Modified,
            obj: next.clone(),
            prev: Some(current),
        });
        Some(next)
    }

    /// Remove a pod, emitting DELETED with a fresh resourceVersion, then
    /// garbage-collect the secrets it owned.
    pub fn remove(&mut self, ns: &str, name: &str) -> Option<Value> {
        let obj = self.remove_kind(Kind::Pod, ns, name)?;
        if let Some(uid) = obj.pointer("/metadata/uid").and_then(Value::as_str) {
            match &mut self.deferred_gc {
                Some(later) => later.push((ns.to_owned(), uid.to_owned())),
                None => self.collect_dependents(ns, uid),
            }
        }
        Some(obj)
    }

    /// Remove an object, emitting DELETED with a fresh resourceVersion.
    pub fn remove_kind(&mut self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self
            .objects_mut(kind)
            .remove(&(ns.to_string(), name.to_string()))?;
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
        self.list_kind(Kind::Pod, ns, sel)
    }

    /// Objects of a kind in a namespace (all namespaces when `None`) that match.
    pub fn list_kind(&self, kind: Kind, ns: Option<&str>, sel: &Selectors) -> Vec<Value> {
        self.objects(kind)
            .iter()
            .filter(|((ons, _), _)| ns.is_none_or(|n| n == ons))
            .filter(|(_, o)| sel.matches(o))
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Whether a pod with this uid exists in the namespace.
    fn pod_uid_exists(&self, ns: &str, uid: &str) -> bool {
        self.pods
            .iter()
            .any(|((pns, _), p)| pns == ns && uid_of(p) == uid)
    }

    /// The kinds the garbage collector looks at for owners (pkg/controller/
    /// garbagecollector: any namespaced object may name a pod as its owner).
    const DEPENDENTS: [Kind; 2] = [Kind::Secret, Kind::NetworkPolicy];

    /// Names of the objects of `kind` in `ns` that name pod `uid` as an owner.
    fn dependents_of(&self, kind: Kind, ns: &str, uid: &str) -> Vec<String> {
        self.objects(kind)
            .iter()
            .filter(|((ons, _), o)| ons == ns && owner_refs(o).any(|r| is_pod_ref(r, uid)))
            .map(|((_, n), _)| n.clone())
            .collect()
    }

    /// The garbage collector, after the pod `uid` of `ns` is gone: every secret and
    /// NetworkPolicy of the namespace that names it as an owner is looked at again.
    pub fn collect_dependents(&mut self, ns: &str, uid: &str) {
        for kind in Self::DEPENDENTS {
            for name in self.dependents_of(kind, ns, uid) {
                self.sweep(kind, ns, &name);
            }
        }
    }

    /// [`Store::sweep`] for a secret.
    pub fn sweep_secret(&mut self, ns: &str, name: &str) {
        self.sweep(Kind::Secret, ns, name);
    }

    /// What the garbage collector does with one dependent: when every owner is a
    /// pod that no longer exists (by uid), the object is deleted; when some
    /// owners are gone but others remain (or are of kinds not simulated, taken
    /// to exist), the references to the missing pods are removed.
    pub fn sweep(&mut self, kind: Kind, ns: &str, name: &str) {
        let Some(obj) = self.get_kind(kind, ns, name) else {
            return;
        };
        let refs: Vec<Value> = owner_refs(obj).cloned().collect();
        if refs.is_empty() {
            return;
        }
        let dangling = |r: &Value| {
            is_pod_ref(r, "") && !self.pod_uid_exists(ns, r["uid"].as_str().unwrap_or(""))
        };
        let (gone, kept): (Vec<&Value>, Vec<&Value>) = refs.iter().partition(|r| dangling(r));
        if gone.is_empty() {
            return;
        }
        if kept.is_empty() {
            self.remove_kind(kind, ns, name);
            return;
        }
        let kept: Vec<Value> = kept.into_iter().cloned().collect();
        self.update_kind(kind, ns, name, |s| {
            s["metadata"]["ownerReferences"] = Value::Array(kept);
        });
    }

    /// Deletion with `propagationPolicy: Orphan`: the references to the pod are
    /// removed from its dependents, which stay.
    pub fn orphan_dependents(&mut self, ns: &str, uid: &str) {
        for kind in Self::DEPENDENTS {
            for name in self.dependents_of(kind, ns, uid) {
                self.update_kind(kind, ns, &name, |s| {
                    let refs: Vec<Value> = owner_refs(s)
                        .filter(|r| !is_pod_ref(r, uid))
                        .cloned()
                        .collect();
                    match s["metadata"].as_object_mut() {
                        Some(m) if refs.is_empty() => {
                            m.remove("ownerReferences");
                        }
                        _ => s["metadata"]["ownerReferences"] = Value::Array(refs),
                    }
                });
            }
        }
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

/// An object's uid (empty when it has none).
pub(crate) fn uid_of(o: &Value) -> &str {
    o.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn owner_refs(o: &Value) -> impl Iterator<Item = &Value> {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// Whether an owner reference names a core/v1 Pod (with this uid, unless `uid`
/// is empty).
fn is_pod_ref(r: &Value, uid: &str) -> bool {
    r["kind"] == "Pod"
        && r["apiVersion"] == "v1"
        && (uid.is_empty() || r["uid"].as_str() == Some(uid))
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

    fn owned_by(name: &str, refs: Value) -> Value {
        json!({"kind": "Secret", "metadata": {"name": name, "ownerReferences": refs}})
    }

    #[test]
    fn removing_a_pod_collects_the_secrets_it_alone_owns() {
        let mut s = Store::default();
        let pod = |uid: &str| json!({"kind": "Pod", "metadata": {"uid": uid}});
        let pref = |uid: &str| json!({"apiVersion": "v1", "kind": "Pod", "name": "x", "uid": uid});
        s.insert("ns", "p", pod("u1"));
        s.insert("ns", "q", pod("u2"));
        s.insert("other", "p", pod("u1"));
        let job = json!({"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "j1"});
        for (name, refs) in [
            ("only", json!([pref("u1")])),
            ("shared", json!([pref("u1"), pref("u2")])),
            ("with-job", json!([pref("u1"), job.clone()])),
            ("other-pod", json!([pref("u2")])),
        ] {
            s.insert_kind(Kind::Secret, "ns", name, owned_by(name, refs));
        }
        s.insert_kind(
            Kind::Secret,
            "other",
            "only",
            owned_by("only", json!([pref("u1")])),
        );
        s.remove("ns", "p");
        assert!(s.get_kind(Kind::Secret, "ns", "only").is_none());
        let refs = |n: &str| {
            s.get_kind(Kind::Secret, "ns", n).unwrap()["metadata"]["ownerReferences"].clone()
        };
        assert_eq!(
            refs("shared"),
            json!([pref("u2")]),
            "the dangling reference is dropped"
        );
        assert_eq!(
            refs("with-job"),
            json!([job]),
            "owners of other kinds are taken to exist"
        );
        assert_eq!(refs("other-pod"), json!([pref("u2")]));
        assert!(
            s.get_kind(Kind::Secret, "other", "only").is_some(),
            "owners are looked up in the dependent's namespace"
        );
        let deleted = s
            .history
            .iter()
            .filter(|e| e.kind == EventType::Deleted)
            .count();
        assert_eq!(deleted, 2, "the pod and one secret");
    }

    #[test]
    fn orphaning_keeps_dependents_without_the_reference() {
        let mut s = Store::default();
        let pref = json!({"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u1"});
        s.insert("ns", "p", json!({"metadata": {"uid": "u1"}}));
        s.insert_kind(Kind::Secret, "ns", "a", owned_by("a", json!([pref])));
        s.orphan_dependents("ns", "u1");
        s.remove("ns", "p");
        let a = s.get_kind(Kind::Secret, "ns", "a").unwrap();
        assert!(a["metadata"].get("ownerReferences").is_none(), "{a}");
    }
}
