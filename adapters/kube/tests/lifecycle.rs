//! Against the simulator: no env Secret outlives a failed create (every failure point,
//! then one garbage pass), API rejections keep their kind and words, and a drained,
//! evicted or foreign-deleted pod is a disruption in whatever phase the kubelet left it.

mod common;

use jetbridge_core::ports::{DeleteOpts, WaitOpts};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{NS, sim_backend, sim_client, sim_config};
use jetbridge_core::ErrorKind;
use jetbridge_core::names::{StepHandle, label};
use jetbridge_core::ports::{
    Exec, ExecRequest, GarbageOpts, OutputSink, OutputStream, PodFailure, PodSpec, PodState, Pods,
    WaitFor,
};
use jetbridge_kube::{KubeBackend, KubeConfig};
use jetbridge_kube_sim::SimControls;
use jetbridge_kube_sim::{EnvVarNames, Fault, FaultAction, SimConfig, Simulator};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, EvictParams};

const IMAGE: &str = "busybox:1.36";

/// A spec with task params, so that creating it makes an env Secret.
fn spec() -> PodSpec {
    let handle = StepHandle::random();
    let mut s = PodSpec::new(format!("lc-{}", handle.short()), IMAGE);
    s.labels
        .insert(label::HANDLE.into(), handle.as_str().into());
    s.env.insert("TOKEN".into(), "s3cr3t".into());
    s
}

async fn start_with(kube: KubeConfig) -> (Simulator, Arc<KubeBackend>) {
    sim_backend(SimConfig::default(), kube).await
}

fn secrets(sim: &Simulator) -> Vec<String> {
    sim.secrets(NS)
        .iter()
        .filter_map(|s| s["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

/// One garbage pass with no grace, as the reaper runs it once the grace is over.
async fn collect(b: &KubeBackend) -> Vec<String> {
    let r = b
        .collect_garbage(&GarbageOpts::new(Duration::ZERO, SystemTime::now()))
        .await
        .expect("garbage pass");
    assert!(r.errors.is_empty(), "{r:?}");
    r.deleted
}

/// Create `s`, expect failure of `kind`; no Secret is left, even before a garbage pass.
async fn fails_and_leaves_nothing(sim: &Simulator, b: &KubeBackend, kind: ErrorKind) -> String {
    let s = spec();
    let e = b.create(&s).await.expect_err("the create fails");
    assert_eq!(e.kind(), kind, "{e}");
    assert!(secrets(sim).is_empty(), "left behind: {:?}", secrets(sim));
    assert!(collect(b).await.is_empty());
    e.message().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rbac_denial_leaves_no_secret_and_names_the_permission() {
    let (sim, b) = start_with(sim_config()).await;
    sim.forbid("create", "pods");
    let msg = fails_and_leaves_nothing(&sim, &b, ErrorKind::PermissionDenied).await;
    assert!(
        msg.contains(&format!("lacks `create pods in namespace {NS}`")),
        "{msg}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_rbac_denial_is_permission_denied_and_names_the_permission() {
    let (sim, b) = start_with(sim_config()).await;
    let mut s = spec();
    s.env.clear();
    b.create(&s).await.expect("create");
    b.wait(
        &s.name,
        &WaitOpts::new(WaitFor::Running, Duration::from_secs(30)),
    )
    .await
    .unwrap();
    sim.forbid("create", "pods/exec");
    let e = b
        .exec(
            ExecRequest::new(&s.name, vec!["true".into()]),
            Arc::new(Started::default()),
        )
        .await
        .expect_err("forbidden");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(
        e.message()
            .contains(&format!("lacks `create pods/exec in namespace {NS}`")),
        "{e}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_pod_leaves_no_secret() {
    let (sim, b) = start_with(sim_config()).await;
    sim.inject(Fault::on("POST", "/pods", 1, FaultAction::Status(422)));
    fails_and_leaves_nothing(&sim, &b, ErrorKind::Invalid).await;
    sim.shutdown().await;
}

/// 1.29-1.31 check env names with the strict rule: a name the plan checks would have
/// refused, reaching the adapter anyway, is the API's 422 with its words, and the env
/// Secret made before the pod goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_cluster_refuses_a_digit_led_env_name_and_leaves_no_secret() {
    let (sim, b) = sim_backend(
        SimConfig {
            env_var_names: EnvVarNames::Strict,
            ..SimConfig::default()
        },
        sim_config(),
    )
    .await;
    let mut s = spec();
    s.env.insert("1PASSWORD".into(), "hunter2".into());
    let e = b.create(&s).await.expect_err("the pod is refused");
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert!(
        e.message().contains(
            "Invalid value: \"1PASSWORD\": a valid environment variable name must consist of alphabetic characters"
        ),
        "{e}"
    );
    // The Secret was made, so the rollback is what removed it.
    let posted = |what: &str| {
        sim.requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with(what))
            .count()
    };
    assert_eq!((posted("/secrets"), posted("/pods")), (1, 1));
    assert!(secrets(&sim).is_empty(), "left behind: {:?}", secrets(&sim));
    assert!(sim.pods(NS).is_empty());
    assert!(collect(&b).await.is_empty());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_security_rejection_leaves_no_secret_and_says_why() {
    let (sim, b) = start_with(KubeConfig {
        restricted: false,
        ..sim_config()
    })
    .await;
    sim.label_namespace(NS, "pod-security.kubernetes.io/enforce", "restricted");
    let msg = fails_and_leaves_nothing(&sim, &b, ErrorKind::Invalid).await;
    assert!(
        msg.contains("violates PodSecurity \"restricted:latest\""),
        "{msg}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceeded_quota_leaves_no_secret() {
    let (sim, b) = start_with(sim_config()).await;
    sim.set_pod_quota(NS, "steps", Some(0));
    let msg = fails_and_leaves_nothing(&sim, &b, ErrorKind::PermissionDenied).await;
    assert!(msg.contains("exceeded quota: steps"), "{msg}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_service_account_leaves_no_secret() {
    let (sim, b) = start_with(KubeConfig {
        service_account: Some("builder".into()),
        ..sim_config()
    })
    .await;
    let msg = fails_and_leaves_nothing(&sim, &b, ErrorKind::Invalid).await;
    assert!(
        msg.contains("serviceaccount \"builder\" not found"),
        "{msg}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_retry_leaves_no_secret() {
    let (sim, b) = start_with(sim_config()).await;
    sim.inject(Fault::on("POST", "/pods", 100, FaultAction::Status(503)));
    fails_and_leaves_nothing(&sim, &b, ErrorKind::Transient).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_to_own_the_secret_leaves_no_secret() {
    let (sim, b) = start_with(sim_config()).await;
    sim.inject(Fault::on(
        "PATCH",
        "/secrets/",
        100,
        FaultAction::Status(500),
    ));
    fails_and_leaves_nothing(&sim, &b, ErrorKind::Transient).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_create_could_not_remove_goes_in_one_garbage_pass() {
    let (sim, b) = start_with(sim_config()).await;
    sim.forbid("create", "pods");
    sim.forbid("delete", "secrets");
    let s = spec();
    b.create(&s).await.expect_err("forbidden");
    assert_eq!(secrets(&sim), vec![format!("{}-env", s.name)]);
    sim.allow_all();
    // Within the grace period it stays: its pod may be being created.
    let r = b
        .collect_garbage(&GarbageOpts::new(
            Duration::from_secs(3600),
            SystemTime::now(),
        ))
        .await
        .unwrap();
    assert!(r.deleted.is_empty(), "{r:?}");
    assert_eq!(secrets(&sim).len(), 1);
    // The API server's clock ahead of ours (or a Secret made since the pass began): a
    // creation time after `now` is young, not of unknown age.
    let r = b
        .collect_garbage(&GarbageOpts::new(
            Duration::from_secs(60),
            SystemTime::now() - Duration::from_secs(600),
        ))
        .await
        .unwrap();
    assert!(r.deleted.is_empty(), "{r:?}");
    assert_eq!(secrets(&sim).len(), 1);
    assert_eq!(
        collect(&b).await,
        vec![format!("secret {NS}/{}-env", s.name)]
    );
    assert!(secrets(&sim).is_empty());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_dies_between_secret_and_pod_is_collected() {
    let (sim, b) = start_with(sim_config()).await;
    sim.inject(Fault::on(
        "POST",
        "/pods",
        1,
        FaultAction::Delay(Duration::from_secs(30)),
    ));
    let s = spec();
    // The worker dies while the pod's create is in flight.
    let create = tokio::time::timeout(Duration::from_millis(500), b.create(&s)).await;
    assert!(create.is_err(), "the create was cut short");
    assert_eq!(secrets(&sim).len(), 1, "the crash left the Secret");
    // A pod that exists keeps its Secret: only one of a gone pod is garbage.
    let other = spec();
    b.create(&other).await.expect("another step's pod");
    assert_eq!(
        collect(&b).await,
        vec![format!("secret {NS}/{}-env", s.name)]
    );
    assert_eq!(secrets(&sim), vec![format!("{}-env", other.name)]);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_create_meeting_quota_adopts_its_own_pod() {
    let (sim, b) = start_with(sim_config()).await;
    sim.set_pod_quota(NS, "steps", Some(1));
    sim.inject(Fault::on("POST", "/pods", 1, FaultAction::DropAfterCommit));
    let s = spec();
    let st = b.create(&s).await.expect("adopted after quota's 403");
    assert_eq!(st.name, s.name);
    let pods = sim.pods(NS);
    assert_eq!(pods.len(), 1);
    // The Secret is kept and owned by the pod.
    let secret = sim.secrets(NS);
    assert_eq!(secret.len(), 1);
    assert_eq!(
        secret[0]["metadata"]["ownerReferences"][0]["uid"],
        pods[0]["metadata"]["uid"]
    );
    // Another step's pod is not adopted: quota's 403 is the answer.
    let e = b.create(&spec()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert_eq!(secrets(&sim).len(), 1);
    sim.shutdown().await;
}

// ---------------------------------------------------------------------------------
// Disruption

/// Tells when the command has written something.
#[derive(Default)]
struct Started(tokio::sync::Notify);

impl OutputSink for Started {
    fn write(&self, _: OutputStream, _: &[u8]) {
        // notify_one keeps a permit, so a write before the wait is not missed.
        self.0.notify_one();
    }
}

/// The simulator with a kubelet that takes a while to reclaim a stopped pod, so the
/// terminal phase of a terminating pod is seen, as in a cluster.
async fn start_reclaiming() -> (Simulator, Arc<KubeBackend>) {
    sim_backend(
        SimConfig {
            reclaim_delay: Duration::from_secs(3),
            ..SimConfig::default()
        },
        sim_config(),
    )
    .await
}

/// Run a long command in a running pod; while it runs, `disrupt`; return what the
/// command ended with and the pod's state just after, as the step runner sees it.
async fn disrupted_mid_exec<F, Fut>(
    b: &KubeBackend,
    disrupt: F,
) -> (std::result::Result<i32, jetbridge_core::Error>, PodState)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut s = spec();
    s.env.clear();
    b.create(&s).await.expect("create");
    let st = b
        .wait(
            &s.name,
            &WaitOpts::new(WaitFor::Running, Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert_eq!(st.state, PodState::Running);
    let started = Arc::new(Started::default());
    let exec = b.exec(
        ExecRequest::new(
            &s.name,
            vec!["sh".into(), "-c".into(), "echo started; sleep 20".into()],
        ),
        started.clone(),
    );
    let name = s.name.clone();
    let wait_started = async {
        // Disrupt once the command is surely running: it has printed.
        started.0.notified().await;
        disrupt(name).await;
    };
    let (code, ()) = tokio::join!(exec, wait_started);
    let state = match b.get(&s.name).await {
        Ok(st) => st.state,
        Err(e) if e.kind() == ErrorKind::NotFound => PodState::Failed(PodFailure::Deleted),
        Err(e) => panic!("get: {e}"),
    };
    (code, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_pod_is_evicted_though_it_ends_succeeded() {
    let (sim, b) = start_reclaiming().await;
    let (code, state) = disrupted_mid_exec(&b, |_| async { sim.drain_node() }).await;
    // The command is killed with its container: 137, never 0.
    match code {
        Ok(c) => assert_eq!(c, 137),
        Err(e) => assert!(matches!(e.kind(), ErrorKind::Lost), "{e}"),
    }
    let pod = &sim.pods(NS)[0];
    assert_eq!(pod["status"]["phase"], "Succeeded", "the kubelet's phase");
    assert_eq!(state, PodState::Failed(PodFailure::Evicted));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eviction_api_mid_step_is_an_eviction() {
    let (sim, b) = start_reclaiming().await;
    let pods: Api<Pod> = Api::namespaced(sim_client(&sim).await, NS);
    let (_, state) = disrupted_mid_exec(&b, |name| async move {
        pods.evict(&name, &EvictParams::default()).await.unwrap();
    })
    .await;
    assert_eq!(state, PodState::Failed(PodFailure::Evicted));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_jetbridge_did_not_ask_for_is_a_deleted_pod() {
    let (sim, b) = start_reclaiming().await;
    let pods: Api<Pod> = Api::namespaced(sim_client(&sim).await, NS);
    let (_, state) = disrupted_mid_exec(&b, |name| async move {
        pods.delete(&name, &DeleteParams::default()).await.unwrap();
    })
    .await;
    assert_eq!(state, PodState::Failed(PodFailure::Deleted));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_jetbridge_asked_for_is_not_a_disruption() {
    let (sim, b) = start_reclaiming().await;
    let mut s = spec();
    s.env.clear();
    b.create(&s).await.unwrap();
    b.wait(
        &s.name,
        &WaitOpts::new(WaitFor::Running, Duration::from_secs(30)),
    )
    .await
    .unwrap();
    b.delete(&s.name, &DeleteOpts::grace(Duration::from_secs(5)))
        .await
        .unwrap();
    let st = b.get(&s.name).await.unwrap();
    assert!(st.deleting);
    assert_ne!(st.state, PodState::Failed(PodFailure::Deleted), "{st:?}");
    sim.shutdown().await;
}
