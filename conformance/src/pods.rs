//! The [`Pods`] suite: create (idempotent on name and handle), get, wait, list, delete.
//!
//! Every case names its pods `jbc-<case>-<8hex>` and labels them with a group label
//! unique to the case, so cases can run at once against one namespace; every case
//! deletes what it created, also when it fails.

use jetbridge_core::ports::{DeleteOpts, WaitOpts};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jetbridge_core::ErrorKind;
use jetbridge_core::names::{StepHandle, dns_fragment, label};
use jetbridge_core::ports::{
    LabelSelector, MountInfo, MountSource, PodSpec, PodState, PodStatus, Pods, WaitFor,
};

use crate::support::{CaseError, CaseOutcome, CaseResult, env_duration, outcome};
use crate::{BackendSubject, ensure, ensure_eq, ensure_kind, fail, skip};

/// The label that groups the pods of one case.
pub const GROUP_LABEL: &str = "conformance.jetbridge.io/group";

/// How long a test pod may take to reach Running (image pulls on a live cluster);
/// `JETBRIDGE_CONFORMANCE_POD_START_SECS` overrides it.
pub fn pod_start_timeout() -> Duration {
    env_duration(
        "JETBRIDGE_CONFORMANCE_POD_START_SECS",
        Duration::from_secs(300),
    )
}

/// How long a deleted pod may take to disappear.
const GONE_TIMEOUT: Duration = Duration::from_secs(120);

/// Every case of the suite, in the order [`run_all`] runs them.
pub const CASES: &[&str] = &[
    "create_then_wait_running",
    "create_is_idempotent_for_same_handle",
    "create_with_other_handle_already_exists",
    "get_missing_not_found",
    "list_selects_by_labels",
    "delete_removes_pod",
    "delete_missing_succeeds",
    "wait_on_deleted_pod_reports_it",
    "wait_sees_deletion",
    "wait_returns_within_timeout",
    "running_satisfies_scheduled_and_running",
    "labels_round_trip",
    "concurrent_creates_all_run",
    "host_path_mount_unsupported",
    "pvc_mount_unsupported",
];

/// Run the case called `name` against `subject`; `None` if there is no such case.
pub async fn run_case(subject: &BackendSubject, name: &str) -> Option<CaseResult> {
    let p = &*subject.pods;
    let i = subject.image.as_str();
    Some(match name {
        "create_then_wait_running" => Box::pin(create_then_wait_running(p, i)).await,
        "create_is_idempotent_for_same_handle" => {
            Box::pin(create_is_idempotent_for_same_handle(p, i)).await
        }
        "create_with_other_handle_already_exists" => {
            Box::pin(create_with_other_handle_already_exists(p, i)).await
        }
        "get_missing_not_found" => Box::pin(get_missing_not_found(p, i)).await,
        "list_selects_by_labels" => Box::pin(list_selects_by_labels(p, i)).await,
        "delete_removes_pod" => Box::pin(delete_removes_pod(p, i)).await,
        "delete_missing_succeeds" => Box::pin(delete_missing_succeeds(p, i)).await,
        "wait_on_deleted_pod_reports_it" => Box::pin(wait_on_deleted_pod_reports_it(p, i)).await,
        "wait_sees_deletion" => Box::pin(wait_sees_deletion(p, i)).await,
        "wait_returns_within_timeout" => Box::pin(wait_returns_within_timeout(p, i)).await,
        "running_satisfies_scheduled_and_running" => {
            Box::pin(running_satisfies_scheduled_and_running(p, i)).await
        }
        "labels_round_trip" => Box::pin(labels_round_trip(p, i)).await,
        "concurrent_creates_all_run" => Box::pin(concurrent_creates_all_run(p, i)).await,
        "host_path_mount_unsupported" => Box::pin(host_path_mount_unsupported(p, i)).await,
        "pvc_mount_unsupported" => Box::pin(pvc_mount_unsupported(p, i)).await,
        _ => return None,
    })
}

/// Run every case against `subject`, one after another.
pub async fn run_all(subject: &BackendSubject) -> Vec<CaseOutcome> {
    let mut out = Vec::with_capacity(CASES.len());
    for name in CASES {
        out.push(outcome(name, run_case(subject, name)).await);
    }
    out
}

/// The pods one case creates: unique names, a shared group label, deleted at the end.
pub struct PodGroup<'a> {
    pods: &'a dyn Pods,
    image: String,
    tag: String,
    group: String,
    created: Mutex<Vec<String>>,
}

impl std::fmt::Debug for PodGroup<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodGroup")
            .field("group", &self.group)
            .field("created", &self.created)
            .finish()
    }
}

impl<'a> PodGroup<'a> {
    /// A group for the case tagged `tag` (a few readable characters).
    pub fn new(pods: &'a dyn Pods, image: &str, tag: &str) -> Self {
        let mut tag = dns_fragment(tag);
        tag.truncate(24);
        let tag = tag.trim_end_matches('-').to_owned();
        PodGroup {
            pods,
            image: image.to_owned(),
            group: format!("jbc-{tag}-{}", crate::support::unique_hex(12)),
            tag,
            created: Mutex::new(Vec::new()),
        }
    }

    /// The value of [`GROUP_LABEL`] on this group's pods.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// A selector matching exactly this group's pods.
    pub fn selector(&self) -> LabelSelector {
        BTreeMap::from([(GROUP_LABEL.to_owned(), self.group.clone())])
    }

    /// A fresh spec (new name, new handle) in this group; the pod is deleted at cleanup.
    pub fn spec(&self) -> PodSpec {
        let handle = StepHandle::random();
        let name = format!("jbc-{}-{}", self.tag, handle.short());
        let mut spec = PodSpec::new(name.clone(), self.image.clone());
        spec.labels
            .insert(label::MANAGED_BY.into(), label::MANAGED_BY_VALUE.into());
        spec.labels
            .insert(label::HANDLE.into(), handle.as_str().to_owned());
        spec.labels.insert(GROUP_LABEL.into(), self.group.clone());
        self.track(&name);
        spec
    }

    /// Delete `name` at cleanup too.
    pub fn track(&self, name: &str) {
        if let Ok(mut c) = self.created.lock() {
            c.push(name.to_owned());
        }
    }

    /// Create `spec` and wait until it runs.
    pub async fn start(&self, spec: &PodSpec) -> Result<PodStatus, CaseError> {
        self.pods.create(spec).await?;
        wait_running(self.pods, &spec.name).await
    }

    /// Create a fresh pod and wait until it runs; returns its name.
    pub async fn start_one(&self) -> Result<String, CaseError> {
        let spec = self.spec();
        self.start(&spec).await?;
        Ok(spec.name)
    }

    /// Delete every pod of the group (errors ignored: the case result is what counts).
    pub async fn cleanup(self) {
        let names = self.created.lock().map(|c| c.clone()).unwrap_or_default();
        let now = DeleteOpts::grace(Duration::ZERO);
        let deletes = names.iter().map(|n| self.pods.delete(n, &now));
        for r in futures::future::join_all(deletes).await {
            if let Err(e) = r {
                eprintln!("note: cleanup of a test pod failed: {e}");
            }
        }
    }

    /// Clean up, then hand back the case's result.
    pub async fn finish(self, result: CaseResult) -> CaseResult {
        self.cleanup().await;
        result
    }
}

/// Wait until `name` runs; fail the case if it does not.
pub async fn wait_running(pods: &dyn Pods, name: &str) -> Result<PodStatus, CaseError> {
    let status = pods
        .wait(name, &WaitOpts::new(WaitFor::Running, pod_start_timeout()))
        .await?;
    if status.state != PodState::Running {
        return Err(CaseError::here(format!(
            "pod {name} did not reach Running: {:?} ({:?})",
            status.state, status.message
        )));
    }
    Ok(status)
}

/// Wait until `get(name)` says `NotFound`, polling briefly (test code only).
pub async fn until_gone(pods: &dyn Pods, name: &str) -> CaseResult {
    let start = Instant::now();
    loop {
        match pods.get(name).await {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(CaseError::here(format!("get after delete: {e}"))),
            Ok(s) if start.elapsed() > GONE_TIMEOUT => {
                return Err(CaseError::here(format!(
                    "pod {name} still there {GONE_TIMEOUT:?} after delete: {:?}",
                    s.state
                )));
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn names(statuses: &[PodStatus]) -> BTreeSet<String> {
    statuses.iter().map(|s| s.name.clone()).collect()
}

/// A created pod reaches Running and reports its name and labels.
pub async fn create_then_wait_running(pods: &dyn Pods, image: &str) -> CaseResult {
    let g = PodGroup::new(pods, image, "create");
    let r = async {
        let spec = g.spec();
        let created = pods.create(&spec).await?;
        ensure_eq!(created.name, spec.name);
        ensure!(!created.deleting, "a new pod is not being deleted");
        let running = wait_running(pods, &spec.name).await?;
        ensure_eq!(running.name, spec.name);
        let got = pods.get(&spec.name).await?;
        ensure_eq!(got.state, PodState::Running);
        ensure!(!got.deleting);
        Ok(())
    }
    .await;
    g.finish(r).await
}

/// Creating the same name with the same handle adopts the pod: still one pod.
pub async fn create_is_idempotent_for_same_handle(pods: &dyn Pods, image: &str) -> CaseResult {
    let g = PodGroup::new(pods, image, "adopt");
    let r = async {
        let spec = g.spec();
        pods.create(&spec).await?;
        let again = pods.create(&spec).await?;
        ensure_eq!(again.name, spec.name);
        wait_running(pods, &spec.name).await?;
        let third = pods.create(&spec).await?;
        ensure_eq!(third.state, PodState::Running, "adopting a running pod");
        let listed = pods.list(&g.selector()).await?;
        ensure_eq!(listed.len(), 1, "one pod after three creates: {listed:?}");
        ensure_eq!(listed[0].name, spec.name);
        Ok(())
    }
    .await;
    g.finish(r).await
}

/// The same name with another handle is `AlreadyExists`, and the first pod is untouched.
pub async fn create_with_other_handle_already_exists(pods: &dyn Pods, image: &str) -> CaseResult {
    let g = PodGroup::new(pods, image, "clash");
    let r = async {
        let spec = g.spec();
        pods.create(&spec).await?;
        let mut other = spec.clone();
        other.labels.insert(
            label::HANDLE.into(),
            StepHandle::random().as_str().to_owned(),
        );
        ensure_kind!(pods.create(&other).await, ErrorKind::AlreadyExists);
        let got = pods.get(&spec.name).await?;
        ensure_eq!(
            got.labels.get(label::HANDLE),
            spec.labels.get(label::HANDLE),
            "the existing pod keeps its handle"
        );
        Ok(())
    }
    .await;
    g.finish(r).await
}

/// `get` of a pod that never existed is `NotFound`.
pub async fn get_missing_not_found(pods: &dyn Pods, image: &str) -> CaseResult {
    let g = PodGroup::new(pods, image, "missing");
    // A name no pod has: the spec is never created.
    let name = g.spec().name;
    ensure_kind!(pods.get(&name).await, ErrorKind::NotFound);
    g.finish(Ok(())).await
}

/// `list` returns exactly the pods whose labels match every pair of the selector.
pub async fn list_selects_by_labels(pods: &dyn Pods, image: &str) -> CaseResult {
    let g = PodGroup::new(pods, image, "list");
    let r = async {
        let mut specs = Vec::new();
        for role in ["a", "a", "b"] {
            let mut s = g.spec();
            s.labels
                .insert("conformance.jetbridge.io/role".into(), role.into());
            pods.create(&s).await?;
            specs.push(s);
        }
        let mut sel = g.selector();
        let all = pods.list(&sel).await?;
        let want: BTreeSet<String> = specs.iter().map(|s| s.name.clone()).collect();
        ensure_eq!(names(&all), want, "the group selector");
        sel.insert("conformance.jetbridge.io/role".into(), "a".into());
        let a = pods.list(&sel).await?;
        let want_a: BTreeSet<String> = specs[..2].iter().map(|s| s.name.clone()).collect();
        ensure_eq!(names(&a), want_a, "group and role=a");
        sel.insert("conformance.jetbridge.io/role".into(), "c".into());
        ensure!(pods.list(&sel).await?.is_empty(), "role=c selects nothing");
        let other = BTreeMap::from([(GROUP_LABEL.to_owned(), format!("{}-other", g.group()))]);
        ensure!(
            pods.list(&other).await?.is_empty(),
            "another group value selects nothing"
        );
        Ok(())
    }
    .await;
    g.finish(r).await
}

/// After `delete`, `get` is `NotFound` and `list` no longer has the pod.
pub async fn delete_removes_pod(pods: &dyn Pods, image: &str) -> CaseResult {
    let g = PodGroup::new(pods, image, "delete");
    let r = async {
        let keep = g.start_one().await?;
        let gone = g.start_one().await?;
        pods.delete(&gone, &DeleteOpts::grace(Duration::from_secs(1)))
            .await?;
        until_gone(pods, &gone).await?;
        let listed = names(&pods.list(&g.selector()).await?);
        ensure_eq!(listed, BTreeSet::from([keep.clone()]));
        ensure_eq!(pods.get(&keep).await?.state, PodState::Running);
        // Deleting again is fine.
        pods.delete(&gone, &DeleteOpts::grace(Duration::ZERO))
            .await?;
        Ok(())
    }
    .await;
    g.finish(r).await
}

/// Deleting a pod that never existed succeeds.
pub async fn delete_missing_succeeds(pods: &dyn Pods, image: &str) -> CaseResult {
    let g = PodGroup::new(pods, image, "delmissing");
    let name = g.spec().name;
    let r = pods
        .delete(&name, &DeleteOpts::grace(Duration::ZERO))
        .await
        .map_err(Into::into);
    g.finish(r).await
}

/// Waiting on a pod deleted before the wait reports it gone (`NotFound` or a terminal
/// state), promptly.
pub async fn wait_on_deleted_pod_reports_it(pods: &dyn Pods, image: &str) -> CaseResult {
    let g = PodGroup::new(pods, image, "waitdeleted");
    let r = async {
        let name = g.start_one().await?;
        pods.delete(&name, &DeleteOpts::grace(Duration::ZERO))
            .await?;
        until_gone(pods, &name).await?;
        let timeout = Duration::from_secs(5);
        let start = Instant::now();
        match pods
            .wait(&name, &WaitOpts::new(WaitFor::Terminated, timeout))
            .await
        {
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => fail!("wait on a deleted pod: {:?}: {e}", e.kind()),
            Ok(s) => ensure!(
                s.state.is_terminal(),
                "a deleted pod is reported terminal, got {:?}",
                s.state
            ),
        }
        ensure!(
            start.elapsed() < timeout + Duration::from_secs(5),
            "wait returned after {:?}",
            start.elapsed()
        );
        // Waiting for Running on a gone pod must not report it running.
        match pods
            .wait(&name, &WaitOpts::new(WaitFor::Running, timeout))
            .await
        {
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => fail!("wait(Running) on a deleted pod: {:?}: {e}", e.kind()),
            Ok(s) => ensure!(s.state != PodState::Running, "a deleted pod is not Running"),
        }
        Ok(())
    }
    .await;
    g.finish(r).await
}

/// A pod deleted while someone waits for it to terminate is reported terminal (the
/// port reports a vanished pod as `Failed(Deleted)`), not a timeout.
pub async fn wait_sees_deletion(pods: &dyn Pods, image: &str) -> CaseResult {
    let g = PodGroup::new(pods, image, "waitsees");
    let r = async {
        let name = g.start_one().await?;
        let timeout = Duration::from_secs(90);
        let start = Instant::now();
        let until_ended = WaitOpts::new(WaitFor::Terminated, timeout);
        let (waited, deleted) = tokio::join!(pods.wait(&name, &until_ended), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            pods.delete(&name, &DeleteOpts::grace(Duration::ZERO)).await
        });
        deleted?;
        let s = waited?;
        ensure!(
            s.state.is_terminal(),
            "wait(Terminated) across a delete ended with {:?}",
            s.state
        );
        ensure!(
            start.elapsed() < timeout,
            "the deletion was noticed only at the timeout"
        );
        Ok(())
    }
    .await;
    g.finish(r).await
}

/// `wait` for a condition that does not come returns the status at the timeout, not
/// much earlier and not much later.
pub async fn wait_returns_within_timeout(pods: &dyn Pods, image: &str) -> CaseResult {
    let g = PodGroup::new(pods, image, "waittimeout");
    let r = async {
        let name = g.start_one().await?;
        let timeout = Duration::from_secs(2);
        let start = Instant::now();
        let s = pods
            .wait(&name, &WaitOpts::new(WaitFor::Terminated, timeout))
            .await?;
        let took = start.elapsed();
        ensure_eq!(s.state, PodState::Running);
        ensure!(!s.satisfies(WaitFor::Terminated));
        ensure!(
            took >= timeout - Duration::from_millis(300),
            "wait gave up after {took:?}, before its {timeout:?} timeout"
        );
        ensure!(
            took < timeout + Duration::from_secs(10),
            "wait took {took:?} for a {timeout:?} timeout"
        );
        Ok(())
    }
    .await;
    g.finish(r).await
}

/// A running pod satisfies `Scheduled` and `Running` at once.
pub async fn running_satisfies_scheduled_and_running(pods: &dyn Pods, image: &str) -> CaseResult {
    let g = PodGroup::new(pods, image, "satisfies");
    let r = async {
        let name = g.start_one().await?;
        for cond in [WaitFor::Scheduled, WaitFor::Running] {
            let start = Instant::now();
            let s = pods
                .wait(&name, &WaitOpts::new(cond, Duration::from_secs(60)))
                .await?;
            ensure!(s.satisfies(cond), "{cond:?} not satisfied: {:?}", s.state);
            ensure_eq!(s.state, PodState::Running);
            ensure!(
                start.elapsed() < Duration::from_secs(10),
                "wait({cond:?}) on a running pod took {:?}",
                start.elapsed()
            );
        }
        Ok(())
    }
    .await;
    g.finish(r).await
}

/// Labels given at create come back from create, get, wait and list.
pub async fn labels_round_trip(pods: &dyn Pods, image: &str) -> CaseResult {
    let g = PodGroup::new(pods, image, "labels");
    let r = async {
        let mut spec = g.spec();
        for (k, v) in [
            (label::PIPELINE, "my-pipeline_1.x"),
            (label::JOB, "Unit_Tests"),
            (label::BUILD, "42"),
            (label::STEP, "compile"),
            (label::STEP_TYPE, "task"),
            (label::WORKER, "worker-0"),
            ("conformance.jetbridge.io/empty", ""),
        ] {
            spec.labels.insert(k.to_owned(), v.to_owned());
        }
        let check = |what: &str, got: &BTreeMap<String, String>| -> CaseResult {
            for (k, v) in &spec.labels {
                ensure_eq!(got.get(k), Some(v), "label {k} from {what}");
            }
            Ok(())
        };
        check("create", &pods.create(&spec).await?.labels)?;
        check("wait", &wait_running(pods, &spec.name).await?.labels)?;
        check("get", &pods.get(&spec.name).await?.labels)?;
        let listed = pods.list(&g.selector()).await?;
        ensure_eq!(listed.len(), 1);
        check("list", &listed[0].labels)?;
        Ok(())
    }
    .await;
    g.finish(r).await
}

/// Ten pods created at once all run and are all listed.
pub async fn concurrent_creates_all_run(pods: &dyn Pods, image: &str) -> CaseResult {
    let g = PodGroup::new(pods, image, "many");
    let r = async {
        let specs: Vec<PodSpec> = (0..10).map(|_| g.spec()).collect();
        let started = futures::future::join_all(specs.iter().map(|s| g.start(s))).await;
        for s in started {
            s?;
        }
        let want: BTreeSet<String> = specs.iter().map(|s| s.name.clone()).collect();
        ensure_eq!(names(&pods.list(&g.selector()).await?), want);
        Ok(())
    }
    .await;
    g.finish(r).await
}

async fn mount_unsupported(pods: &dyn Pods, image: &str, tag: &str, info: MountInfo) -> CaseResult {
    let g = PodGroup::new(pods, image, tag);
    let r = async {
        for source in [
            MountSource::WriteInto(info.clone()),
            MountSource::CopyOf(jetbridge_core::ports::CopySource::new(
                info.clone(),
                jetbridge_core::digest::TreeDigest::new().finish(),
            )),
        ] {
            let mut spec = g.spec();
            spec.mounts
                .push(jetbridge_core::ports::Mount::new("vol", source));
            ensure_kind!(pods.create(&spec).await, ErrorKind::Unsupported);
            ensure_kind!(pods.get(&spec.name).await, ErrorKind::NotFound);
        }
        Ok(())
    }
    .await;
    g.finish(r).await
}

/// Without `host_path_mounts`, a pod with a host path mount is `Unsupported` and not
/// created.
pub async fn host_path_mount_unsupported(pods: &dyn Pods, image: &str) -> CaseResult {
    if pods.capabilities().host_path_mounts {
        skip!("host_path_mounts is on");
    }
    let info = MountInfo::HostPath {
        path: "/tmp/jetbridge-conformance-volume".into(),
    };
    mount_unsupported(pods, image, "hostpath", info).await
}

/// Without `shared_volume_mounts`, a pod with a PVC mount is `Unsupported` and not created.
pub async fn pvc_mount_unsupported(pods: &dyn Pods, image: &str) -> CaseResult {
    if pods.capabilities().shared_volume_mounts {
        skip!("shared_volume_mounts is on");
    }
    let info = MountInfo::SharedVolume {
        volume: "jetbridge-conformance".into(),
        sub_path: "v-conformance".into(),
    };
    mount_unsupported(pods, image, "pvc", info).await
}
