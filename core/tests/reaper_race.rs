//! The reaper and a step that starts during its pass: the running set is read after
//! the pods are listed, so a pod whose step started in between is never deleted under
//! it. (A set read before the listing misses that step and deletes its new pod: the
//! step then fails "pod deleted while the step ran".)
//!
//! The same holds for volumes: a step's volume exists a moment before its artifact is
//! registered, and a pass that began before it was made must not take it for an
//! orphan of unknown age (the build then fails "volume ... does not exist").

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use jetbridge_core::names::VolumeHandle;
use jetbridge_core::names::label;
use jetbridge_core::ports::{PodSpec, Pods, VolumeStore};
use jetbridge_core::services::{Reaper, ReaperConfig};
use jetbridge_memory::MemoryRuntime;

const WORKER: &str = "w-race";

fn step_pod(name: &str, handle: &str) -> PodSpec {
    let mut spec = PodSpec::new(name, "busybox");
    spec.labels = BTreeMap::from([
        (
            label::MANAGED_BY.to_owned(),
            label::MANAGED_BY_VALUE.to_owned(),
        ),
        (
            label::WORKER.to_owned(),
            jetbridge_core::names::label_value(WORKER),
        ),
        (label::HANDLE.to_owned(), handle.to_owned()),
    ]);
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_starts_during_a_pass_keeps_its_pod() {
    let m = MemoryRuntime::new();
    let rt = m.runtime();
    let reaper = Reaper::new(
        Some(rt.pods.clone()),
        rt.volumes.clone(),
        rt.registry.clone(),
        ReaperConfig::new(WORKER),
    );
    // The first time the reaper asks what runs, nothing does, and a step starts just
    // after: its handle is active from then on, and its pod exists. (That is the order
    // the build runner keeps: the handle first, then the pod.)
    let running: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
    let pods = rt.pods.clone();
    let active = || {
        let mut r = running.lock().expect("lock");
        let now = r.clone();
        if r.is_empty() {
            r.insert("h-new".to_owned());
            futures::executor::block_on(pods.create(&step_pod("p-new", "h-new")))
                .expect("the new step's pod");
        }
        now
    };
    let report = reaper
        .run_once_live(&active, SystemTime::now())
        .await
        .expect("a pass");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        !report.pods_deleted.contains(&"p-new".to_owned()),
        "the pod of a step that started during the pass was deleted"
    );
    let listed = rt.pods.list(&BTreeMap::new()).await.expect("list");
    assert!(listed.iter().any(|p| p.name == "p-new"), "{listed:?}");
    // The next pass sees the step running and keeps its pod too.
    let report = reaper
        .run_once_live(&active, SystemTime::now())
        .await
        .expect("a pass");
    assert!(report.pods_deleted.is_empty(), "{:?}", report.pods_deleted);
    // Once the step is gone, its pod is collected.
    running.lock().expect("lock").clear();
    running.lock().expect("lock").insert("h-other".to_owned());
    let report = reaper
        .run_once_live(&active, SystemTime::now())
        .await
        .expect("a pass");
    assert_eq!(report.pods_deleted, vec!["p-new".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_made_after_the_pass_began_and_not_yet_registered_is_kept() {
    let m = MemoryRuntime::new();
    let rt = m.runtime();
    let volumes = rt.volumes.clone().expect("a store");
    let reaper = Reaper::new(
        Some(rt.pods.clone()),
        Some(volumes.clone()),
        rt.registry.clone(),
        ReaperConfig::new(WORKER),
    );
    // The pass's clock was read, then a step made its volume; its registration has
    // not committed yet.
    let pass_began = SystemTime::now() - Duration::from_secs(2);
    let young = VolumeHandle::random();
    volumes.create(&young).await.expect("the step's volume");
    let report = reaper
        .run_once(&HashSet::new(), pass_began)
        .await
        .expect("a pass");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.orphan_volumes_deleted, 0, "{report:?}");
    volumes
        .stat(&young)
        .await
        .expect("the new step's volume is still there");
    // Once it is older than the grace and still unregistered, it is an orphan.
    let later = SystemTime::now() + ReaperConfig::new(WORKER).orphan_volume_grace;
    let report = reaper
        .run_once(&HashSet::new(), later)
        .await
        .expect("a pass");
    assert_eq!(report.orphan_volumes_deleted, 1, "{report:?}");
    assert!(volumes.stat(&young).await.is_err());
}
