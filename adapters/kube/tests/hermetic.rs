//! Against the simulator: a hermetic pod (`PodSpec::hermetic`, a task's `hermetic:
//! true`) gets a NetworkPolicy that selects it alone and denies it all traffic, made
//! before the pod and gone with it; a denied or failed create leaves no policy, Secret or
//! pod behind. The simulator stores policies but cannot enforce them (its kubelet runs
//! host processes), so what is tested is what the policy says and when it exists.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{NS, sim_backend, sim_client, sim_config};
use jetbridge_core::ErrorKind;
use jetbridge_core::names::{StepHandle, label};
use jetbridge_core::ports::{
    CaptureOutput, DeleteOpts, Exec, ExecRequest, GarbageOpts, PodSpec, PodState, Pods, WaitFor,
    WaitOpts,
};
use jetbridge_kube::KubeBackend;
use jetbridge_kube_sim::{SimConfig, SimControls, Simulator};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::wait::{await_condition, conditions};
use serde_json::{Value, json};

const IMAGE: &str = "busybox:1.36";
const POLICIES: &str = "networkpolicies.networking.k8s.io";

/// A hermetic step with params, so that its pod comes with an env Secret too.
fn hermetic() -> PodSpec {
    let handle = StepHandle::random();
    PodSpec::new(format!("hm-{}", handle.short()), IMAGE)
        .with_label(label::HANDLE, handle.as_str())
        .with_env("TOKEN", "s3cr3t")
        .with_hermetic(true)
}

async fn start() -> (Simulator, Arc<KubeBackend>) {
    sim_backend(SimConfig::default(), sim_config()).await
}

fn names(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

/// Whether a NetworkPolicy's `podSelector.matchLabels` select `pod` (the only form the
/// adapter writes; any other form fails the test).
fn selects(policy: &Value, pod: &Value) -> bool {
    let sel = &policy["spec"]["podSelector"];
    assert!(
        sel.get("matchExpressions").is_none_or(Value::is_null),
        "{sel}"
    );
    let want = sel["matchLabels"].as_object().expect("matchLabels");
    assert!(!want.is_empty(), "an empty selector selects every pod");
    want.iter()
        .all(|(k, v)| pod["metadata"]["labels"].get(k) == Some(v))
}

/// Nothing of a step is left: no pod, Secret or NetworkPolicy, and a garbage pass
/// with no grace finds nothing either.
async fn nothing_left(sim: &Simulator, b: &KubeBackend) {
    assert!(
        names(&sim.pods(NS)).is_empty(),
        "{:?}",
        names(&sim.pods(NS))
    );
    assert!(
        names(&sim.secrets(NS)).is_empty(),
        "{:?}",
        names(&sim.secrets(NS))
    );
    assert!(
        names(&sim.network_policies(NS)).is_empty(),
        "{:?}",
        names(&sim.network_policies(NS))
    );
    let r = b
        .collect_garbage(&GarbageOpts::new(Duration::ZERO, SystemTime::now()))
        .await
        .expect("garbage pass");
    assert!(r.errors.is_empty() && r.deleted.is_empty(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hermetic_pod_is_cut_off_before_it_exists_and_its_policy_goes_with_it() {
    let (sim, b) = start().await;
    assert!(Pods::capabilities(b.as_ref()).hermetic);
    let s = hermetic();
    // A neighbour without `hermetic`, which the policy must not select.
    let plain_handle = StepHandle::random();
    let plain = PodSpec::new(format!("pl-{}", plain_handle.short()), IMAGE)
        .with_label(label::HANDLE, plain_handle.as_str());
    b.create(&plain).await.expect("plain pod");
    b.create(&s).await.expect("hermetic pod");

    // The policy was made before the pod: no moment with the pod and no policy.
    let posts: Vec<String> = sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.path)
        .collect();
    let policy_at = posts
        .iter()
        .position(|p| p.ends_with("/networkpolicies"))
        .expect("a NetworkPolicy was created");
    let pod_at = posts
        .iter()
        .rposition(|p| p.ends_with("/pods"))
        .expect("the pod was created");
    assert!(policy_at < pod_at, "{posts:?}");
    assert_eq!(
        posts
            .iter()
            .filter(|p| p.ends_with("/networkpolicies"))
            .count(),
        1,
        "only the hermetic pod has a policy: {posts:?}"
    );

    let running = b
        .wait(
            &s.name,
            &WaitOpts::new(WaitFor::Running, Duration::from_secs(30)),
        )
        .await
        .expect("running");
    assert_eq!(running.state, PodState::Running);
    let code = b
        .exec(
            ExecRequest::new(&s.name, vec!["true".into()]),
            Arc::new(CaptureOutput::new()),
        )
        .await
        .expect("exec");
    assert_eq!(code, 0);

    // While it runs: one policy, selecting this pod and no other, denying everything.
    let policies = sim.network_policies(NS);
    assert_eq!(names(&policies), [format!("{}-hermetic", s.name)]);
    let policy = &policies[0];
    let pods = sim.pods(NS);
    let pod = pods
        .iter()
        .find(|p| p["metadata"]["name"] == json!(s.name))
        .expect("hermetic pod");
    let neighbour = pods
        .iter()
        .find(|p| p["metadata"]["name"] == json!(plain.name))
        .expect("plain pod");
    assert!(selects(policy, pod), "{policy}");
    assert!(!selects(policy, neighbour), "{policy}");
    let types = policy["spec"]["policyTypes"]
        .as_array()
        .expect("policyTypes");
    assert!(
        types.contains(&json!("Egress")) && types.contains(&json!("Ingress")),
        "{policy}"
    );
    for direction in ["egress", "ingress"] {
        assert!(
            policy["spec"][direction]
                .as_array()
                .is_none_or(|rules| rules.is_empty()),
            "no {direction} rule allows anything: {policy}"
        );
    }
    assert_eq!(
        policy["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        json!("jetbridge")
    );
    let owners = policy["metadata"]["ownerReferences"]
        .as_array()
        .expect("owned");
    assert_eq!(owners.len(), 1, "{policy}");
    assert_eq!(owners[0]["kind"], json!("Pod"));
    assert_eq!(owners[0]["uid"], pod["metadata"]["uid"]);

    // Gone with the pod (the garbage collector, once the pod is gone, not before).
    let api: Api<Pod> = Api::namespaced(sim_client(&sim).await, NS);
    for p in [&s, &plain] {
        let uid = sim
            .pods(NS)
            .iter()
            .find(|o| o["metadata"]["name"] == json!(p.name))
            .and_then(|o| o["metadata"]["uid"].as_str().map(str::to_owned))
            .expect("uid");
        b.delete(&p.name, &DeleteOpts::grace(Duration::from_secs(1)))
            .await
            .expect("delete");
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api.clone(), &p.name, conditions::is_deleted(&uid)),
        )
        .await
        .expect("the pod goes within 30 s")
        .expect("watching the pod");
    }
    nothing_left(&sim, &b).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_policy_says_what_to_grant_and_leaves_nothing() {
    let (sim, b) = start().await;
    sim.forbid("create", POLICIES);
    let e = b.create(&hermetic()).await.expect_err("forbidden");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let msg = e.message();
    for needle in [
        "networkpolicies",
        "networking.k8s.io",
        "create, get, patch, list and delete",
        "rbac.hermetic",
        "hermetic: true",
    ] {
        assert!(msg.contains(needle), "{needle:?} in {msg}");
    }
    // Refused before the pod or its Secret was made.
    assert!(
        !sim.requests()
            .iter()
            .any(|r| r.method == "POST"
                && (r.path.ends_with("/pods") || r.path.ends_with("/secrets"))),
        "nothing after the policy"
    );
    nothing_left(&sim, &b).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_pod_takes_its_policy_and_secret_with_it() {
    let (sim, b) = start().await;
    sim.set_pod_quota(NS, "steps", Some(0));
    let e = b.create(&hermetic()).await.expect_err("over quota");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(e.message().contains("exceeded quota"), "{e}");
    nothing_left(&sim, &b).await;

    // The ownership patch refused: the pod exists, but nothing it needed may outlive
    // the failed create.
    sim.set_pod_quota(NS, "steps", None);
    sim.forbid("patch", POLICIES);
    let s = hermetic();
    let e = b.create(&s).await.expect_err("the policy cannot be owned");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(e.message().contains("rbac.hermetic"), "{e}");
    assert!(names(&sim.network_policies(NS)).is_empty());
    assert!(names(&sim.secrets(NS)).is_empty());
    sim.allow_all();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_left_by_a_failed_cleanup_is_collected() {
    let (sim, b) = start().await;
    sim.set_pod_quota(NS, "steps", Some(0));
    sim.forbid("delete", POLICIES);
    let s = hermetic();
    b.create(&s).await.expect_err("over quota");
    let left = format!("{}-hermetic", s.name);
    assert_eq!(
        names(&sim.network_policies(NS)),
        std::slice::from_ref(&left)
    );
    sim.allow_all();
    sim.set_pod_quota(NS, "steps", None);

    // Young leftovers are spared (a create may be under way).
    let r = b
        .collect_garbage(&GarbageOpts::new(
            Duration::from_secs(3600),
            SystemTime::now(),
        ))
        .await
        .expect("garbage pass");
    assert!(r.deleted.is_empty(), "{r:?}");
    let r = b
        .collect_garbage(&GarbageOpts::new(Duration::ZERO, SystemTime::now()))
        .await
        .expect("garbage pass");
    assert_eq!(r.deleted, [format!("networkpolicy {NS}/{left}")], "{r:?}");
    nothing_left(&sim, &b).await;
    sim.shutdown().await;
}

/// Without the grant (the chart's `rbac.hermetic` off) the garbage pass still works:
/// no hermetic pod can have made a policy then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_garbage_pass_needs_no_grant_for_policies() {
    let (sim, b) = start().await;
    sim.forbid("list", POLICIES);
    let r = b
        .collect_garbage(&GarbageOpts::new(Duration::ZERO, SystemTime::now()))
        .await
        .expect("garbage pass");
    assert!(r.errors.is_empty(), "{r:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hermetic_spec_without_a_handle_is_invalid() {
    let (sim, b) = start().await;
    let e = b
        .create(&PodSpec::new("no-handle", IMAGE).with_hermetic(true))
        .await
        .expect_err("nothing to select the pod by");
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert!(sim.requests().iter().all(|r| r.method != "POST"));
    sim.shutdown().await;
}
