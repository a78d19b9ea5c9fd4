//! The mapping of a Kubernetes pod's status onto the domain [`PodStatus`].

use std::time::SystemTime;

use jetbridge_core::Error;
use jetbridge_core::ports::{CopySource, PendingReason, PodFailure, PodState, PodStatus};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::manifest::{COPY_ARTIFACT_ENV, COPY_BUILD_ENV, COPY_CORRUPT_EXIT, MAIN_CONTAINER};

/// Waiting reasons of a failed image pull.
const IMAGE_PULL_FAILURES: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
];

/// Waiting reasons that no retry can cure: the reference is malformed, or the policy
/// forbids pulling (kubelet pkg/kubelet/images/types.go).
const IMAGE_PULL_PERMANENT_REASONS: &[&str] = &["InvalidImageName", "ErrImageNeverPull"];

/// Words of registry answers that no retry can cure: the image or tag does not exist, or
/// the credentials are refused (OCI distribution error codes `MANIFEST_UNKNOWN`,
/// `NAME_UNKNOWN`, `UNAUTHORIZED`, `DENIED`, as containerd and CRI-O pass them on).
/// Everything else (Docker Hub's 429 `toomanyrequests`, registry 5xx, timeouts, resets)
/// the kubelet retries with back-off, and so the pod is waited for until its start
/// deadline.
const IMAGE_PULL_PERMANENT_WORDS: &[&str] = &[
    "manifest unknown",
    "name unknown",
    "not found",
    "unauthorized",
    "authentication required",
    "pull access denied",
    "access denied",
    "denied:",
    "invalid reference format",
];

/// The domain status of `pod`, taking any deletion of it as one jetbridge did not ask
/// for (see [`pod_status_as`]).
pub fn pod_status(pod: &Pod) -> PodStatus {
    pod_status_as(pod, false)
}

/// The domain status of `pod`; `deletion_requested` says whether jetbridge itself
/// asked to delete it.
///
/// A disruption wins over the phase, whatever the phase: drain, the eviction API,
/// preemption and the taint manager mark the pod `DisruptionTarget` and then delete
/// it gracefully; the kubelet writes the terminal phase from the exit codes, and a
/// pause program exits 0 on TERM, so a drained pod ends `Succeeded` while the command
/// exec'd in it dies with 137. Neither is the step's doing. A deletion jetbridge did
/// not ask for (`kubectl delete`, a namespace going away) is `Failed(Deleted)` as soon
/// as it starts, for the same reason.
/// (pkg/controller/disruption, pkg/registry/core/pod/storage/eviction.go; the
/// condition: <https://kubernetes.io/docs/concepts/workloads/pods/disruptions/#pod-disruption-conditions>.)
pub fn pod_status_as(pod: &Pod, deletion_requested: bool) -> PodStatus {
    pod_status_at(
        pod,
        deletion_requested,
        SystemTime::now(),
        crate::config::DEFAULT_NODE_LOST_AFTER,
    )
}

/// [`pod_status_as`] at `now`, where a pod whose node has been not ready for
/// `node_lost_after` is `Failed(NodeLost)`.
///
/// A node that stops reporting is first seen on its pods as `Ready=False` with
/// `ContainersReady` still `True` and the phase still `Running`: the node lifecycle
/// controller flips only the `Ready` condition (pkg/controller/nodelifecycle
/// `MarkPodsNotReady`), while the kubelet, when it is the one saying not ready, always
/// flips both. Current clusters write no `NodeLost` reason and no phase `Unknown`; the
/// taint-eviction controller acts only after the pods' toleration (300 s by default),
/// and the pods then stay terminating until the node object goes. So the node is taken
/// as lost once that mark is older than `node_lost_after`, on this host's clock against
/// the condition's `lastTransitionTime` (a clock skewed by a few seconds moves the
/// verdict by as much).
pub fn pod_status_at(
    pod: &Pod,
    deletion_requested: bool,
    now: SystemTime,
    node_lost_after: std::time::Duration,
) -> PodStatus {
    let not_ready_for =
        node_not_ready_since(pod).map(|t| now.duration_since(t).unwrap_or_default());
    let (state, message) = match not_ready_for {
        Some(d) if d >= node_lost_after => (
            PodState::Failed(PodFailure::NodeLost),
            Some(format!(
                "the node stopped reporting: the node lifecycle controller has marked the pod \
                 not ready for {}s (jetbridge waits {}s)",
                d.as_secs(),
                node_lost_after.as_secs()
            )),
        ),
        _ => pod_state(pod, deletion_requested),
    };
    let created_at = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| SystemTime::from(t.0));
    PodStatus {
        name: pod.metadata.name.clone().unwrap_or_default(),
        labels: crate::manifest::core_labels(pod.metadata.labels.clone().unwrap_or_default()),
        state,
        message,
        created_at,
        deleting: pod.metadata.deletion_timestamp.is_some(),
    }
}

/// When the node lifecycle controller marked the running pod not ready (see
/// [`pod_status_at`]): the `Ready` condition's transition time.
pub(crate) fn node_not_ready_since(pod: &Pod) -> Option<SystemTime> {
    let phase = pod.status.as_ref()?.phase.as_deref();
    if phase != Some("Running") {
        return None;
    }
    let ready = condition(pod, "Ready")?;
    let containers = condition(pod, "ContainersReady")?;
    if ready.status != "False" || containers.status != "True" {
        return None;
    }
    Some(
        ready
            .last_transition_time
            .as_ref()
            .map_or(SystemTime::UNIX_EPOCH, |t| SystemTime::from(t.0)),
    )
}

/// `Corrupt` when a copy init container found its copy different from the sealed
/// volume (it exits with [`COPY_CORRUPT_EXIT`]), naming the artifact and the build
/// from that container's environment.
pub fn corrupt_input(pod: &Pod) -> Option<Error> {
    let failed = pod
        .status
        .as_ref()?
        .init_container_statuses
        .iter()
        .flatten()
        .find(|c| {
            c.name.starts_with("copy-")
                && c.state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .is_some_and(|t| t.exit_code == COPY_CORRUPT_EXIT)
        })?;
    let spec = pod
        .spec
        .as_ref()?
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == failed.name)?;
    let env = |name: &str| {
        spec.env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
            .unwrap_or_default()
    };
    Some(CopySource::corrupt_error(
        &env(COPY_ARTIFACT_ENV),
        &env(COPY_BUILD_ENV),
        format_args!(
            "its in-cluster copy ({}) does not match the sealed digest",
            failed.name
        ),
    ))
}

fn non_empty(s: Option<&String>) -> Option<String> {
    s.filter(|s| !s.is_empty()).cloned()
}

/// The first container (init containers first) waiting for an image that cannot be pulled.
/// A failed image pull: its description, and whether it is permanent.
fn image_pull_failure(pod: &Pod) -> Option<(String, bool)> {
    let status = pod.status.as_ref()?;
    let all = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for cs in all {
        let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = waiting.reason.as_deref().unwrap_or_default();
        if IMAGE_PULL_FAILURES.contains(&reason) {
            let detail = non_empty(waiting.message.as_ref()).unwrap_or_default();
            let lower = detail.to_lowercase();
            let permanent = IMAGE_PULL_PERMANENT_REASONS.contains(&reason)
                || IMAGE_PULL_PERMANENT_WORDS.iter().any(|w| lower.contains(w));
            return Some((
                format!("container {}: {reason}: {detail}", cs.name),
                permanent,
            ));
        }
    }
    None
}

/// A permanent pull failure ends the wait for the pod at once; a transient one is still
/// starting (the kubelet retries), with the last error as its message, so a start
/// deadline that passes says what the pull last met.
fn pull_state((msg, permanent): (String, bool)) -> (PodState, Option<String>) {
    if permanent {
        (PodState::Pending(PendingReason::ImagePullFailed), Some(msg))
    } else {
        (
            PodState::Pending(PendingReason::ContainerCreating),
            Some(format!("{msg} (the kubelet retries the pull)")),
        )
    }
}

fn main_status(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == MAIN_CONTAINER)
}

/// The main container's termination: (reason, exit code, message), if it terminated.
fn main_terminated(pod: &Pod) -> Option<(String, i32, Option<String>)> {
    let cs = main_status(pod)?;
    let t = cs.state.as_ref()?.terminated.as_ref()?;
    Some((
        t.reason.clone().unwrap_or_default(),
        t.exit_code,
        non_empty(t.message.as_ref()),
    ))
}

/// How a container ended, as its status says once the kubelet has written it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ContainerEnd {
    /// Terminated `OOMKilled`, now or before a restart: the description.
    OomKilled(String),
    /// Terminated otherwise, or the pod ended: the description.
    Other(String),
}

/// How container `name` of `pod` ended, or `None` while its status still says it runs.
///
/// The kernel kills a whole container for memory where the kubelet sets
/// `memory.oom.group` (cgroup v2, 1.28+, unless `singleProcessOOMKill`; pkg/kubelet/
/// kuberuntime/kuberuntime_container_linux.go), and the runtime reports reason
/// `OOMKilled`: in `state.terminated` under restartPolicy Never, in
/// `lastState.terminated` once a container that may restart has (pkg/kubelet/
/// kubelet_pods.go `convertToAPIContainerStatuses`). The pod's other containers run
/// on, so the phase can stay `Running` (`getPhase`); only the container says it.
pub(crate) fn container_end(pod: &Pod, name: &str) -> Option<ContainerEnd> {
    let status = pod.status.as_ref()?;
    let cs = status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| c.name == name);
    let terminated = |s: Option<&k8s_openapi::api::core::v1::ContainerState>| {
        s.and_then(|s| s.terminated.clone())
    };
    let now = cs.and_then(|c| terminated(c.state.as_ref()));
    let before = cs.and_then(|c| terminated(c.last_state.as_ref()));
    let describe = |t: &k8s_openapi::api::core::v1::ContainerStateTerminated| {
        let reason = t.reason.as_deref().unwrap_or_default();
        let base = format!(
            "container {name} terminated: {reason} (exit code {})",
            t.exit_code
        );
        match non_empty(t.message.as_ref()) {
            Some(m) => format!("{base}: {m}"),
            None => base,
        }
    };
    for t in now.iter().chain(before.iter()) {
        if t.reason.as_deref() == Some("OOMKilled") {
            return Some(ContainerEnd::OomKilled(describe(t)));
        }
    }
    if let Some(t) = &now {
        return Some(ContainerEnd::Other(describe(t)));
    }
    matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
        .then(|| ContainerEnd::Other(format!("the pod ended ({:?})", status.phase)))
}

fn termination_message(reason: &str, code: i32, msg: Option<String>) -> String {
    let base = if reason.is_empty() {
        format!("container {MAIN_CONTAINER} terminated (exit code {code})")
    } else {
        format!("container {MAIN_CONTAINER} terminated: {reason} (exit code {code})")
    };
    match msg {
        Some(m) => format!("{base}: {m}"),
        None => base,
    }
}

fn condition<'a>(
    pod: &'a Pod,
    type_: &str,
) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// Why a failed (or disrupted) pod stopped, from its reason and `DisruptionTarget`.
fn disruption(pod: &Pod) -> Option<(PodFailure, Option<String>)> {
    let status = pod.status.as_ref()?;
    let reason = status.reason.as_deref().unwrap_or_default();
    let msg = non_empty(status.message.as_ref());
    match reason {
        "Evicted" => return Some((PodFailure::Evicted, msg)),
        "NodeLost" => return Some((PodFailure::NodeLost, msg)),
        _ => {}
    }
    let dt = condition(pod, "DisruptionTarget").filter(|c| c.status == "True")?;
    let failure = match dt.reason.as_deref().unwrap_or_default() {
        "EvictionByEvictionAPI" | "TerminationByKubelet" => PodFailure::Evicted,
        "DeletionByTaintManager" | "DeletionByPodGC" => PodFailure::NodeLost,
        "PreemptionByScheduler" | "PreemptionByKubeScheduler" => PodFailure::Disrupted,
        _ => PodFailure::Disrupted,
    };
    Some((failure, msg.or_else(|| non_empty(dt.message.as_ref()))))
}

fn pod_state(pod: &Pod, deletion_requested: bool) -> (PodState, Option<String>) {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let pod_msg = status.and_then(|s| non_empty(s.message.as_ref()));

    // A lost node is reported in the pod's reason while the phase may still say Running.
    if status.and_then(|s| s.reason.as_deref()) == Some("NodeLost") {
        return (PodState::Failed(PodFailure::NodeLost), pod_msg);
    }

    // The step's container ran out of memory: that is the step's limit, and it wins
    // over an eviction that followed. The pod may still be Running (see
    // `container_end`), and a container that restarted says it in `lastState`.
    if let Some(ContainerEnd::OomKilled(msg)) = container_end(pod, MAIN_CONTAINER) {
        return (PodState::Failed(PodFailure::OomKilled), Some(msg));
    }
    // Disrupted or deleted under us, in whatever phase (see `pod_status_as`).
    if let Some((failure, msg)) = disruption(pod) {
        return (PodState::Failed(failure), msg);
    }
    if pod.metadata.deletion_timestamp.is_some() && !deletion_requested {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        return (
            PodState::Failed(PodFailure::Deleted),
            Some(format!(
                "pod {name} is being deleted, not at jetbridge's request (phase {phase})"
            )),
        );
    }

    match phase {
        "Succeeded" => (PodState::Succeeded, pod_msg),
        "Failed" => match main_terminated(pod) {
            Some((reason, code, msg)) => (
                PodState::Failed(PodFailure::Exited(code)),
                Some(termination_message(&reason, code, msg)),
            ),
            None => (PodState::Failed(PodFailure::Unknown), pod_msg),
        },
        "Unknown" => (PodState::Failed(PodFailure::NodeLost), pod_msg),
        "Running" => {
            // The pod keeps running while a helper does; the step's container may not.
            if let Some((reason, code, msg)) = main_terminated(pod) {
                return (
                    PodState::Failed(PodFailure::Exited(code)),
                    Some(termination_message(&reason, code, msg)),
                );
            }
            if let Some(pull) = image_pull_failure(pod) {
                return pull_state(pull);
            }
            let main_running = main_status(pod)
                .and_then(|c| c.state.as_ref())
                .is_none_or(|s| s.running.is_some());
            if main_running {
                (PodState::Running, pod_msg)
            } else {
                (PodState::Pending(PendingReason::ContainerCreating), pod_msg)
            }
        }
        _ => pending_state(pod, pod_msg),
    }
}

fn pending_state(pod: &Pod, pod_msg: Option<String>) -> (PodState, Option<String>) {
    let scheduled = condition(pod, "PodScheduled");
    if let Some(c) = scheduled
        && c.status == "False"
        && c.reason.as_deref() == Some("Unschedulable")
    {
        return (
            PodState::Pending(PendingReason::Unschedulable),
            non_empty(c.message.as_ref()).or(pod_msg),
        );
    }
    if let Some(pull) = image_pull_failure(pod) {
        return pull_state(pull);
    }
    let bound = scheduled.is_some_and(|c| c.status == "True")
        || pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some();
    if !bound {
        return (PodState::Pending(PendingReason::Scheduling), pod_msg);
    }
    // Scheduled: say what the containers wait for, where they say it.
    let waiting = pod.status.as_ref().and_then(|s| {
        s.init_container_statuses
            .iter()
            .flatten()
            .chain(s.container_statuses.iter().flatten())
            .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
            .find_map(|w| {
                let reason = w.reason.as_deref().filter(|r| !r.is_empty())?;
                Some(match non_empty(w.message.as_ref()) {
                    Some(m) => format!("{reason}: {m}"),
                    None => reason.to_owned(),
                })
            })
    });
    (
        PodState::Pending(PendingReason::ContainerCreating),
        waiting.or(pod_msg),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        let mut base = json!({
            "metadata": {"name": "p", "labels": {"a": "b"},
                         "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "main", "image": "x"}]},
        });
        base["status"] = v;
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn kubernetes_managed_by_reads_back_as_core_key() {
        let mut p = pod(json!({"phase": "Running"}));
        p.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("app.kubernetes.io/managed-by".into(), "jetbridge".into());
        let s = pod_status(&p);
        assert_eq!(
            s.labels
                .get(jetbridge_core::names::label::MANAGED_BY)
                .map(String::as_str),
            Some("jetbridge")
        );
        assert!(!s.labels.contains_key("app.kubernetes.io/managed-by"));
    }

    #[test]
    fn unschedulable_carries_the_scheduler_message() {
        let s = pod_status(&pod(json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                            "message": "0/3 nodes are available: 3 Insufficient cpu."}]
        })));
        assert_eq!(s.state, PodState::Pending(PendingReason::Unschedulable));
        assert_eq!(
            s.message.as_deref(),
            Some("0/3 nodes are available: 3 Insufficient cpu.")
        );
        assert_eq!(s.labels.get("a").map(String::as_str), Some("b"));
        assert!(s.created_at.is_some());
        assert!(!s.deleting);
    }

    #[test]
    fn image_pull_failures() {
        for reason in ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"] {
            let s = pod_status(&pod(json!({
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [{"name": "main", "image": "x", "imageID": "", "ready": false,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": reason, "message": "manifest unknown"}}}]
            })));
            assert_eq!(
                s.state,
                PodState::Pending(PendingReason::ImagePullFailed),
                "{reason}"
            );
            let m = s.message.unwrap();
            assert!(m.contains("manifest unknown") && m.contains(reason), "{m}");
        }
    }

    #[test]
    fn marked_not_ready_by_the_node_controller_is_node_lost_after_the_bound() {
        let marked = |ready: &str, containers: &str| {
            pod(json!({
                "phase": "Running",
                "conditions": [
                    {"type": "Ready", "status": ready, "lastTransitionTime": "2026-01-01T00:00:00Z"},
                    {"type": "ContainersReady", "status": containers, "lastTransitionTime": "2026-01-01T00:00:00Z"},
                ],
                "containerStatuses": [{"name": "main", "image": "x", "imageID": "", "ready": true,
                    "restartCount": 0, "state": {"running": {}}}]
            }))
        };
        let at = |secs: u64| {
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600 + secs)
        };
        let bound = std::time::Duration::from_secs(60);
        let p = marked("False", "True");
        assert_eq!(
            pod_status_at(&p, false, at(59), bound).state,
            PodState::Running
        );
        let lost = pod_status_at(&p, false, at(60), bound);
        assert_eq!(lost.state, PodState::Failed(PodFailure::NodeLost));
        assert!(lost.message.unwrap().contains("stopped reporting"));
        // The kubelet's own not-ready flips both conditions: not the node controller.
        let p = marked("False", "False");
        assert_eq!(
            pod_status_at(&p, false, at(3600), bound).state,
            PodState::Running
        );
        let p = marked("True", "True");
        assert_eq!(
            pod_status_at(&p, false, at(3600), bound).state,
            PodState::Running
        );
    }

    #[test]
    fn transient_pull_failures_keep_the_pod_starting() {
        for (reason, message) in [
            (
                "ErrImagePull",
                "429 Too Many Requests - Server message: toomanyrequests: You have reached your pull rate limit",
            ),
            (
                "ImagePullBackOff",
                "Back-off pulling image \"busybox\": ErrImagePull: received unexpected HTTP status: 503 Service Unavailable",
            ),
            ("ErrImagePull", "dial tcp 10.0.0.1:443: i/o timeout"),
        ] {
            let s = pod_status(&pod(json!({
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [{"name": "main", "image": "x", "imageID": "", "ready": false,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": reason, "message": message}}}]
            })));
            assert_eq!(
                s.state,
                PodState::Pending(PendingReason::ContainerCreating),
                "{message}"
            );
            let m = s.message.unwrap();
            assert!(m.contains(message) && m.contains("retries"), "{m}");
        }
        for message in [
            "rpc error: code = NotFound desc = failed to pull and unpack image: not found",
            "pull access denied for private/x, repository does not exist or may require 'docker login'",
            "failed to authorize: failed to fetch anonymous token: unexpected status: 401 Unauthorized",
        ] {
            let s = pod_status(&pod(json!({
                "phase": "Pending",
                "containerStatuses": [{"name": "main", "image": "x", "imageID": "", "ready": false,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "ErrImagePull", "message": message}}}]
            })));
            assert_eq!(
                s.state,
                PodState::Pending(PendingReason::ImagePullFailed),
                "{message}"
            );
        }
    }

    #[test]
    fn scheduling_and_creating() {
        let s = pod_status(&pod(json!({"phase": "Pending"})));
        assert_eq!(s.state, PodState::Pending(PendingReason::Scheduling));
        let s = pod_status(&pod(json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "main", "image": "x", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]
        })));
        assert_eq!(s.state, PodState::Pending(PendingReason::ContainerCreating));
        assert_eq!(s.message.as_deref(), Some("ContainerCreating"));
    }

    #[test]
    fn running_and_deleting() {
        let mut p = pod(json!({"phase": "Running",
            "containerStatuses": [{"name": "main", "image": "x", "imageID": "", "ready": true,
                "restartCount": 0, "state": {"running": {}}}]}));
        assert_eq!(pod_status(&p).state, PodState::Running);
        p.metadata.deletion_timestamp = p.metadata.creation_timestamp.clone();
        assert!(pod_status_as(&p, true).deleting);
        assert_eq!(pod_status_as(&p, true).state, PodState::Running);
    }

    #[test]
    fn evicted_by_reason_or_condition() {
        let s = pod_status(&pod(json!({"phase": "Failed", "reason": "Evicted",
            "message": "The node was low on resource: memory."})));
        assert_eq!(s.state, PodState::Failed(PodFailure::Evicted));
        assert_eq!(
            s.message.as_deref(),
            Some("The node was low on resource: memory.")
        );
        let s = pod_status(&pod(json!({"phase": "Failed",
            "conditions": [{"type": "DisruptionTarget", "status": "True",
                "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"}]})));
        assert_eq!(s.state, PodState::Failed(PodFailure::Evicted));
        assert_eq!(s.message.as_deref(), Some("Eviction API: evicting"));
        let s = pod_status(&pod(json!({"phase": "Failed",
            "conditions": [{"type": "DisruptionTarget", "status": "True",
                "reason": "PreemptionByScheduler"}]})));
        assert_eq!(s.state, PodState::Failed(PodFailure::Disrupted));
    }

    fn with_disruption(mut p: Pod, reason: &str) -> Pod {
        let cond: k8s_openapi::api::core::v1::PodCondition = serde_json::from_value(json!({
            "type": "DisruptionTarget", "status": "True", "reason": reason,
            "message": "Eviction API: evicting"}))
        .unwrap();
        let st = p.status.get_or_insert_with(Default::default);
        st.conditions.get_or_insert_with(Vec::new).push(cond);
        p.metadata.deletion_timestamp = p.metadata.creation_timestamp.clone();
        p
    }

    fn main_exited(phase: &str, code: i32) -> Pod {
        pod(json!({"phase": phase,
            "containerStatuses": [{"name": "main", "image": "x", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"terminated": {"reason": if code == 0 { "Completed" } else { "Error" },
                                         "exitCode": code}}}]}))
    }

    #[test]
    fn a_disruption_is_never_success_or_an_exit_code_in_any_phase() {
        // What a drain leaves behind as the kubelet goes: still running, the pause
        // program stopped with 0 (Succeeded), or the main container killed (Failed, 137).
        let running = pod(json!({"phase": "Running",
            "containerStatuses": [{"name": "main", "image": "x", "imageID": "", "ready": true,
                "restartCount": 0, "state": {"running": {}}}]}));
        let pending = pod(json!({"phase": "Pending"}));
        for p in [
            pending,
            running,
            main_exited("Succeeded", 0),
            main_exited("Failed", 137),
            main_exited("Running", 137),
        ] {
            for (reason, want) in [
                ("EvictionByEvictionAPI", PodFailure::Evicted),
                ("PreemptionByScheduler", PodFailure::Disrupted),
                ("DeletionByTaintManager", PodFailure::NodeLost),
            ] {
                let phase = p.status.as_ref().unwrap().phase.clone();
                let s = pod_status_as(&with_disruption(p.clone(), reason), true);
                assert_eq!(s.state, PodState::Failed(want), "{phase:?} {reason}");
            }
        }
    }

    #[test]
    fn a_deletion_jetbridge_did_not_ask_for_is_deleted_in_any_phase() {
        for p in [main_exited("Succeeded", 0), main_exited("Failed", 137)] {
            let mut p = p;
            p.metadata.deletion_timestamp = p.metadata.creation_timestamp.clone();
            let s = pod_status_as(&p, false);
            assert_eq!(s.state, PodState::Failed(PodFailure::Deleted));
            assert!(s.message.unwrap().contains("not at jetbridge's request"));
            // Asked for: the phase says how it ended.
            assert_ne!(
                pod_status_as(&p, true).state,
                PodState::Failed(PodFailure::Deleted)
            );
        }
        let mut running = pod(json!({"phase": "Running",
            "containerStatuses": [{"name": "main", "image": "x", "imageID": "", "ready": true,
                "restartCount": 0, "state": {"running": {}}}]}));
        running.metadata.deletion_timestamp = running.metadata.creation_timestamp.clone();
        assert_eq!(
            pod_status(&running).state,
            PodState::Failed(PodFailure::Deleted)
        );
        let s = pod_status_as(&running, true);
        assert_eq!(s.state, PodState::Running);
        assert!(s.deleting);
    }

    #[test]
    fn oom_killed_main_container() {
        for phase in ["Failed", "Running"] {
            let s = pod_status(&pod(json!({"phase": phase,
                "containerStatuses": [{"name": "main", "image": "x", "imageID": "", "ready": false,
                    "restartCount": 0,
                    "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]})));
            assert_eq!(s.state, PodState::Failed(PodFailure::OomKilled), "{phase}");
            assert!(s.message.unwrap().contains("137"));
        }
    }

    #[test]
    fn an_oom_kill_before_a_restart_and_a_helper_left_running() {
        // The main container restarted after the kill: `lastState` says it.
        let restarted = pod(json!({"phase": "Running",
            "containerStatuses": [{"name": "main", "image": "x", "imageID": "", "ready": true,
                "restartCount": 1, "state": {"running": {}},
                "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}));
        assert_eq!(
            pod_status(&restarted).state,
            PodState::Failed(PodFailure::OomKilled)
        );
        // The helper runs on after main's kill: the pod is Running, main says why.
        let helper_on = pod(json!({"phase": "Running",
            "containerStatuses": [
                {"name": "main", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}},
                {"name": "helper", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
                 "state": {"running": {}}}]}));
        match container_end(&helper_on, "main") {
            Some(ContainerEnd::OomKilled(m)) => {
                assert!(m.contains("OOMKilled (exit code 137)"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(container_end(&helper_on, "helper"), None, "still running");
        let exited = pod(json!({"phase": "Running",
            "containerStatuses": [{"name": "main", "image": "x", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"terminated": {"reason": "Error", "exitCode": 137}}}]}));
        assert!(matches!(
            container_end(&exited, "main"),
            Some(ContainerEnd::Other(_))
        ));
        let ended = pod(json!({"phase": "Failed"}));
        assert!(matches!(
            container_end(&ended, "main"),
            Some(ContainerEnd::Other(_))
        ));
    }

    #[test]
    fn exited_main_and_node_lost() {
        let s = pod_status(&pod(json!({"phase": "Failed",
            "containerStatuses": [{"name": "main", "image": "x", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"terminated": {"reason": "Error", "exitCode": 2}}}]})));
        assert_eq!(s.state, PodState::Failed(PodFailure::Exited(2)));
        let s = pod_status(&pod(json!({"phase": "Running", "reason": "NodeLost",
            "message": "Node n1 which was running pod p is unresponsive"})));
        assert_eq!(s.state, PodState::Failed(PodFailure::NodeLost));
        let s = pod_status(&pod(json!({"phase": "Succeeded"})));
        assert_eq!(s.state, PodState::Succeeded);
        let s = pod_status(&pod(json!({"phase": "Failed"})));
        assert_eq!(s.state, PodState::Failed(PodFailure::Unknown));
    }
}
