//! The chart's Role is exact: the `(verb, resource)` pairs it grants are the pairs the
//! Kubernetes adapter is authorised for, no more and no less. The simulator records
//! what its RBAC check lets through ([`Simulator::authorized`]); the Role comes from
//! `helm template` (installed by `.ci/install-tools.sh`).
//!
//! Against one simulator namespace, as one worker, the adapter runs:
//! - the pods and exec suites (create, get, list by labels, watch, delete; WebSocket exec
//!   with stdin, output and exit status), and the exec suite again on a second
//!   simulator that offers only `v4.channel.k8s.io`;
//! - the runtime and lifecycle suites with artifacts on a claim (in-place outputs,
//!   inputs copied by an init container) and streamed through the helper container;
//! - the env Secret's rare paths: a lost answer to its create (409, then `get` and
//!   adopt), a pod create refused by quota (the Secret deleted at once), and one whose
//!   Secret could not be deleted then;
//! - a hermetic step's NetworkPolicy on the same paths: a lost answer to its create
//!   (409, `get`, adopt, then owned by the pod) and a pod refused by quota (the policy
//!   deleted at once);
//! - a reaper pass (pods of this worker listed and deleted, Secrets and NetworkPolicies
//!   listed and the orphan Secret deleted) and the server's metrics probe of the
//!   worker's Secrets.
//!
//! Resources outside the core group are compared as `resource.group`
//! (`networkpolicies.networking.k8s.io`), as the simulator records them.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

mod sim_images;
use sim_images::{MOCK_IMAGE, MOCK_TYPE, image_files};

use jetbridge_conformance::runtime::{flip_a_byte_under, write_mock_resource};
use jetbridge_conformance::{BackendSubject, CaseOutcome, RuntimeSubject, Status};
use jetbridge_core::ErrorKind;
use jetbridge_core::images::ImageResolver;
use jetbridge_core::names::{StepHandle, label, worker_selector};
use jetbridge_core::ports::{
    ArtifactRegistry, DeleteOpts, PodSpec, Pods, Runtime, VolumeStore, WaitFor, WaitOpts,
};
use jetbridge_core::services::{Reaper, ReaperConfig};
use jetbridge_fs::FsVolumeStore;
use jetbridge_kube::{KubeBackend, KubeConfig};
use jetbridge_kube_sim::{ExecProtocols, Fault, FaultAction, SimConfig, SimControls, Simulator};
use jetbridge_memory::{MemoryRegistry, MemoryVolumeStore};
use serde_json::Value;

const NS: &str = "jb-rbac";
const WORKER: &str = "rbac-worker";
const IMAGE: &str = "busybox:1.36";
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../charts/jetbridge");

type Pairs = BTreeSet<(String, String)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_role_grants_exactly_what_the_kubernetes_adapter_is_authorised_for() {
    // First, so a missing helm fails at once rather than after the suites.
    let granted = role_grants();

    let dir = tempfile::tempdir().expect("tempdir");
    let pvc_root = dir.path().join("pvc");
    let sim = Simulator::start(SimConfig {
        work_root: Some(dir.path().join("sim")),
        pvc_root: Some(pvc_root.clone()),
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, NS).expect("kubeconfig");

    let mut outcomes = Vec::new();
    let plain = backend(&kubeconfig, None).await;
    let subject = BackendSubject::new(plain.clone(), plain.clone(), IMAGE);
    outcomes.extend(report(
        "pods",
        jetbridge_conformance::pods::run_all(&subject).await,
    ));
    outcomes.extend(report(
        "exec",
        jetbridge_conformance::exec::run_all(&subject).await,
    ));
    let v4_authorized = exec_on_v4_only(dir.path(), &mut outcomes).await;

    let mock = dir.path().join("mock-resource");
    write_mock_resource(&mock).expect("mock resource");
    image_files(&sim, &mock);
    let images = ImageResolver::new().with_mock_image(MOCK_IMAGE);
    // Outputs written in place on the claim, inputs copied by an init container.
    let store = FsVolumeStore::new(pvc_root.join("artifacts"))
        .expect("store")
        .with_shared_volume("artifacts", "");
    let claimed = backend(&kubeconfig, Some("artifacts")).await;
    let tampered = store.clone();
    let subject = RuntimeSubject::new(
        runtime(&claimed, Arc::new(store)),
        MOCK_TYPE,
        images.clone(),
    )
    .with_tamper(move |h| flip_a_byte_under(&tampered.volume_data_path(h), ""));
    run_runtime("claim", &subject, &mut outcomes).await;
    // A store pods cannot mount: artifacts go as tar through the helper container.
    let streamed = RuntimeSubject::new(
        runtime(&plain, Arc::new(MemoryVolumeStore::new())),
        MOCK_TYPE,
        images,
    );
    run_runtime("streamed", &streamed, &mut outcomes).await;

    env_secret_failure_paths(&sim, &plain).await;

    let failed: Vec<String> = outcomes
        .iter()
        .filter(|(_, o)| o.status() == Status::Failed)
        .map(|(suite, o)| format!("{suite} {o}"))
        .collect();
    assert!(
        failed.is_empty(),
        "suite cases failed, so what the adapter used is not known:\n{}",
        failed.join("\n")
    );

    // A Role grants within its own namespace only.
    let outside: Vec<String> = sim
        .requests()
        .into_iter()
        .filter(|r| {
            let core = r.path.starts_with("/api/v1/")
                && !r.path.starts_with(&format!("/api/v1/namespaces/{NS}/"));
            let grouped = r.path.starts_with("/apis/networking.k8s.io/v1/")
                && !r
                    .path
                    .starts_with(&format!("/apis/networking.k8s.io/v1/namespaces/{NS}/"));
            core || grouped
        })
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        outside.is_empty(),
        "requests outside the step namespace: {outside:?}"
    );

    let mut used = sim.authorized();
    used.extend(v4_authorized);
    println!("authorised on the simulator: {}", show(&used));
    println!("granted by the chart's Role: {}", show(&granted));
    let lacking: Pairs = used.difference(&granted).cloned().collect();
    let unused: Pairs = granted.difference(&used).cloned().collect();
    assert!(
        lacking.is_empty() && unused.is_empty(),
        "the chart's Role is not exact.\n  used by the adapter, not granted by the Role: {}\n  \
         granted by the Role, never used by the adapter: {}",
        show(&lacking),
        show(&unused)
    );
    sim.shutdown().await;
}

async fn backend(kubeconfig: &Path, claim: Option<&str>) -> Arc<KubeBackend> {
    Arc::new(
        KubeBackend::new(KubeConfig {
            kubeconfig: Some(kubeconfig.to_path_buf()),
            namespace: Some(NS.into()),
            worker: Some(WORKER.into()),
            artifact_claim: claim.map(str::to_owned),
            cache_claim: Some("caches".into()),
            ..KubeConfig::default()
        })
        .await
        .expect("kube backend"),
    )
}

fn runtime(backend: &Arc<KubeBackend>, volumes: Arc<dyn VolumeStore>) -> Runtime {
    Runtime {
        pods: backend.clone(),
        exec: backend.clone(),
        volumes: Some(volumes),
        registry: Arc::new(MemoryRegistry::new()),
    }
}

fn report(suite: &'static str, outcomes: Vec<CaseOutcome>) -> Vec<(&'static str, CaseOutcome)> {
    for o in &outcomes {
        println!("{suite:9} {o}");
    }
    outcomes.into_iter().map(|o| (suite, o)).collect()
}

async fn run_runtime(
    suite: &'static str,
    subject: &RuntimeSubject,
    outcomes: &mut Vec<(&'static str, CaseOutcome)>,
) {
    outcomes.extend(report(
        suite,
        jetbridge_conformance::runtime::run_all(subject).await,
    ));
    outcomes.extend(report(
        suite,
        jetbridge_conformance::lifecycle::run_all(subject).await,
    ));
}

/// The exec suite where stdin cannot end on its own (exec's other code path); a
/// simulator of its own, as the protocols offered are the server's.
async fn exec_on_v4_only(dir: &Path, outcomes: &mut Vec<(&'static str, CaseOutcome)>) -> Pairs {
    let dir = dir.join("v4");
    let sim = Simulator::start(SimConfig {
        work_root: Some(dir.join("sim")),
        exec_protocols: ExecProtocols::V4Only,
        ..SimConfig::default()
    })
    .await
    .expect("v4 simulator");
    let kubeconfig = dir.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, NS).expect("kubeconfig");
    let b = backend(&kubeconfig, None).await;
    let subject = BackendSubject::new(b.clone(), b, IMAGE);
    outcomes.extend(report(
        "exec-v4",
        jetbridge_conformance::exec::run_all(&subject).await,
    ));
    let authorized = sim.authorized();
    sim.shutdown().await;
    authorized
}

/// A step with params, so that its pod comes with an env Secret.
fn spec() -> PodSpec {
    let handle = StepHandle::random();
    let mut s = PodSpec::new(format!("rbac-{}", handle.short()), IMAGE);
    s.labels
        .insert(label::HANDLE.into(), handle.as_str().into());
    s.env.insert("TOKEN".into(), "s3cr3t".into());
    s
}

fn secret_names(sim: &Simulator) -> Vec<String> {
    sim.secrets(NS)
        .iter()
        .filter_map(|s| s["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

/// The env Secret's paths the suites do not take, then the reaper and the metrics probe.
async fn env_secret_failure_paths(sim: &Simulator, b: &Arc<KubeBackend>) {
    // The Secret's create takes effect but its answer is lost: the resend meets 409 and
    // reads the Secret to adopt it.
    sim.inject(Fault::on(
        "POST",
        "/secrets",
        1,
        FaultAction::DropAfterCommit,
    ));
    let adopted = spec();
    b.create(&adopted)
        .await
        .expect("created, the Secret adopted");
    b.wait(
        &adopted.name,
        &WaitOpts::new(WaitFor::Running, Duration::from_secs(30)),
    )
    .await
    .expect("running");
    b.delete(&adopted.name, &DeleteOpts::grace(Duration::from_secs(1)))
        .await
        .expect("deleted");

    // Quota refuses the pod: the create deletes the Secret it made.
    sim.set_pod_quota(NS, "steps", Some(0));
    let refused = spec();
    let e = b.create(&refused).await.expect_err("over quota");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let leftover = format!("{}-env", refused.name);
    assert!(!secret_names(sim).contains(&leftover), "{leftover} left");

    // Refused again, and the Secret cannot be deleted then: left for the reaper.
    sim.forbid("delete", "secrets");
    let orphaned = spec();
    b.create(&orphaned).await.expect_err("over quota");
    sim.allow_all();
    sim.set_pod_quota(NS, "steps", None);
    let orphan = format!("{}-env", orphaned.name);
    assert!(secret_names(sim).contains(&orphan), "{orphan} was deleted");

    hermetic_paths(sim, b).await;

    let pods: Arc<dyn Pods> = b.clone();
    let registry: Arc<dyn ArtifactRegistry> = Arc::new(MemoryRegistry::new());
    let reaper = Reaper::new(
        Some(pods),
        None,
        registry,
        ReaperConfig {
            pod_garbage_grace: Duration::ZERO,
            ..ReaperConfig::new(WORKER)
        },
    );
    let r = reaper
        .run_once(&HashSet::new(), SystemTime::now())
        .await
        .expect("reaper pass");
    assert!(r.errors.is_empty(), "{r:?}");
    assert!(
        r.pod_garbage_deleted
            .contains(&format!("secret {NS}/{orphan}")),
        "{r:?}"
    );
    // The server's `jetbridge_env_secrets` gauge reads this.
    b.count_secrets(&worker_selector(WORKER))
        .await
        .expect("secrets counted");
}

/// A hermetic step's NetworkPolicy on the paths of the env Secret above: made, adopted
/// after a lost answer, owned by the pod, and deleted when the pod is refused.
async fn hermetic_paths(sim: &Simulator, b: &Arc<KubeBackend>) {
    let policies = |sim: &Simulator| -> Vec<String> {
        sim.network_policies(NS)
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
            .collect()
    };
    sim.inject(Fault::on(
        "POST",
        "/networkpolicies",
        1,
        FaultAction::DropAfterCommit,
    ));
    let adopted = spec().with_hermetic(true);
    b.create(&adopted)
        .await
        .expect("created, the NetworkPolicy adopted");
    b.wait(
        &adopted.name,
        &WaitOpts::new(WaitFor::Running, Duration::from_secs(30)),
    )
    .await
    .expect("running");
    assert_eq!(policies(sim), [format!("{}-hermetic", adopted.name)]);
    b.delete(&adopted.name, &DeleteOpts::grace(Duration::from_secs(1)))
        .await
        .expect("deleted");

    sim.set_pod_quota(NS, "steps", Some(0));
    let refused = spec().with_hermetic(true);
    let e = b.create(&refused).await.expect_err("over quota");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let leftover = format!("{}-hermetic", refused.name);
    assert!(!policies(sim).contains(&leftover), "{leftover} left");
    sim.set_pod_quota(NS, "steps", None);
}

/// `(verb, resource)` pairs of the Role `helm template` renders with the chart's
/// default values.
fn role_grants() -> Pairs {
    role_grants_with(&[])
}

/// [`role_grants`] with `--set` values. The rules must name the core group or
/// `networking.k8s.io` only, no wildcards, and nothing this comparison cannot see
/// (resource names, non-resource URLs); a resource of a named group is paired as
/// `resource.group`.
fn role_grants_with(sets: &[&str]) -> Pairs {
    let mut args = vec!["template", "t", CHART, "--show-only", "templates/role.yaml"];
    for set in sets {
        args.extend(["--set", set]);
    }
    let out = match Command::new("helm").args(&args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("helm is not installed: run .ci/install-tools.sh")
        }
        Err(e) => panic!("running helm: {e}"),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helm template failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("the rendered role.yaml is not YAML: {e}\n{text}"));
    let roles: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Role").collect();
    assert_eq!(roles.len(), 1, "one Role expected in:\n{text}");
    let rules = roles[0]["rules"]
        .as_array()
        .unwrap_or_else(|| panic!("the Role has no rules:\n{text}"));
    let strings = |rule: &Value, key: &str| -> Vec<String> {
        rule[key]
            .as_array()
            .unwrap_or_else(|| panic!("rule without a list {key}: {rule}"))
            .iter()
            .map(|v| {
                let s = v
                    .as_str()
                    .unwrap_or_else(|| panic!("{key} holds a non-string: {rule}"));
                assert!(!s.contains('*'), "a wildcard in {key}: {rule}");
                s.to_owned()
            })
            .collect()
    };
    let mut pairs = Pairs::new();
    for rule in rules {
        let keys: Vec<&str> = rule
            .as_object()
            .unwrap_or_else(|| panic!("a rule that is not a mapping: {rule}"))
            .keys()
            .map(String::as_str)
            .collect();
        assert!(
            keys.iter()
                .all(|k| matches!(*k, "apiGroups" | "resources" | "verbs")),
            "only apiGroups, resources and verbs are compared: {rule}"
        );
        let groups = strings(rule, "apiGroups");
        assert!(
            groups.len() == 1 && matches!(groups[0].as_str(), "" | "networking.k8s.io"),
            "the adapter uses the core group and networking.k8s.io only, one a rule: {rule}"
        );
        for resource in strings(rule, "resources") {
            let resource = if groups[0].is_empty() {
                resource
            } else {
                format!("{resource}.{}", groups[0])
            };
            for verb in strings(rule, "verbs") {
                pairs.insert((verb, resource.clone()));
            }
        }
    }
    pairs
}

/// `rbac.hermetic=false` takes the NetworkPolicy grant away and nothing else.
#[test]
fn turning_hermetic_off_removes_the_networkpolicy_grant() {
    let on = role_grants();
    let off = role_grants_with(&["rbac.hermetic=false"]);
    let policies: Pairs = on
        .iter()
        .filter(|(_, r)| r == "networkpolicies.networking.k8s.io")
        .cloned()
        .collect();
    assert!(!policies.is_empty(), "granted by default: {}", show(&on));
    let rest: Pairs = on.difference(&policies).cloned().collect();
    assert_eq!(off, rest, "off: {}", show(&off));
}

fn show(pairs: &Pairs) -> String {
    if pairs.is_empty() {
        return "(none)".to_owned();
    }
    pairs
        .iter()
        .map(|(verb, resource)| format!("{verb} {resource}"))
        .collect::<Vec<_>>()
        .join(", ")
}
