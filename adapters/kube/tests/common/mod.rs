//! Shared test support: a backend on a fresh simulator, or on a live cluster when
//! `JETBRIDGE_KUBECONFIG` is set.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use jetbridge_conformance::BackendSubject;
use jetbridge_kube::{KubeBackend, KubeConfig, RequestBudget};
use jetbridge_kube_sim::{ExecProtocols, SimConfig, Simulator};

/// Namespace of the simulated test pods.
pub const NS: &str = "jb-test";
/// Image of test pods.
pub const IMAGE: &str = "busybox:1.36";

/// The configuration used against the simulator. The simulator runs container commands
/// as local processes and stands in for any program named `pause`, so the pause command
/// is given directly; the default (an init container copying the helper's busybox) is
/// covered by the manifest unit tests and by the live variant.
pub fn sim_config() -> KubeConfig {
    KubeConfig {
        namespace: Some(NS.into()),
        pause_command: Some(vec!["/.jetbridge/pause".into()]),
        artifact_claim: Some("artifacts".into()),
        request_budget: RequestBudget {
            max_requests: 8,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
        },
        ..KubeConfig::default()
    }
}

/// A kube client for the simulator, without kube's own retry layer (so injected
/// faults reach this adapter's retry loop deterministically) and without a proxy, with
/// the adapter's layers as `KubeBackend::new` has them (`build_client`).
pub async fn sim_client(sim: &Simulator) -> kube::Client {
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {}\n\
         users:\n- name: sim\n  user: {{}}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n    user: sim\n    namespace: {NS}\n\
         current-context: sim\n",
        sim.url()
    );
    let kc = kube::config::Kubeconfig::from_yaml(&yaml).expect("a kubeconfig for the simulator");
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("a client configuration for the simulator");
    cfg.default_retry = false;
    cfg.proxy_url = None;
    jetbridge_kube::build_client(cfg)
        .expect("a client for the simulator")
        .0
}

/// A simulator and a backend on it.
pub async fn sim_backend(config: SimConfig, kube: KubeConfig) -> (Simulator, Arc<KubeBackend>) {
    let sim = Simulator::start(config)
        .await
        .expect("the simulator starts");
    let backend = Arc::new(KubeBackend::from_client(sim_client(&sim).await, kube));
    (sim, backend)
}

/// The conformance factory: a live cluster when `JETBRIDGE_KUBECONFIG` is set (in
/// namespace `JETBRIDGE_NAMESPACE`, default `default`), else a fresh simulator.
pub async fn make_backend() -> Option<BackendSubject> {
    if let Ok(path) = std::env::var("JETBRIDGE_KUBECONFIG") {
        let cfg = KubeConfig {
            kubeconfig: Some(path.into()),
            namespace: Some(
                std::env::var("JETBRIDGE_NAMESPACE").unwrap_or_else(|_| "default".into()),
            ),
            ..KubeConfig::default()
        };
        let image = std::env::var("JETBRIDGE_TEST_IMAGE").unwrap_or_else(|_| IMAGE.into());
        let backend = Arc::new(
            KubeBackend::new(cfg)
                .await
                .expect("JETBRIDGE_KUBECONFIG names a usable cluster"),
        );
        return Some(BackendSubject::new(backend.clone(), backend, image));
    }
    let (sim, backend) = sim_backend(SimConfig::default(), sim_config()).await;
    Some(BackendSubject::new(backend.clone(), backend, IMAGE).with_guard(sim))
}

/// The conformance factory for an API server that offers only `v4.channel.k8s.io`
/// exec (1.29 at its defaults, or behind a v4-only proxy). Always the simulator, even
/// with `JETBRIDGE_KUBECONFIG` set: a live cluster speaks what it speaks, and
/// [`make_backend`] covers it.
pub async fn make_v4_backend() -> Option<BackendSubject> {
    let config = SimConfig {
        exec_protocols: ExecProtocols::V4Only,
        ..SimConfig::default()
    };
    let (sim, backend) = sim_backend(config, sim_config()).await;
    Some(BackendSubject::new(backend.clone(), backend, IMAGE).with_guard(sim))
}

/// The image that holds the step-pod helper in [`helper_config`].
pub const HELPER_IMAGE: &str = "ghcr.io/jetbridge/jetbridge:test";

/// [`sim_config`] with the step-pod helper: the default pause installer of
/// [`HELPER_IMAGE`] and commands through the helper.
pub fn helper_config() -> KubeConfig {
    KubeConfig {
        pause_command: None,
        step_helper_image: Some(HELPER_IMAGE.into()),
        ..sim_config()
    }
}

/// A simulator whose [`HELPER_IMAGE`] holds the built helper, and a backend on it with
/// [`helper_config`]: the init container installs the helper for real, and it is the
/// main container's PID 1 and runs every command.
pub async fn sim_helper_backend(config: SimConfig) -> (Simulator, Arc<KubeBackend>) {
    let (sim, backend) = sim_backend(config, helper_config()).await;
    sim.image_file(
        HELPER_IMAGE,
        jetbridge_kube::STEP_HELPER_PATH,
        jetbridge_kube_sim::built_step_helper(),
    )
    .expect("the helper image's file");
    (sim, backend)
}

/// The conformance factory with the step-pod helper, on the simulator.
pub async fn make_helper_backend() -> Option<BackendSubject> {
    let (sim, backend) = sim_helper_backend(SimConfig::default()).await;
    Some(BackendSubject::new(backend.clone(), backend, IMAGE).with_guard(sim))
}

/// [`make_helper_backend`] on a server that offers only `v4.channel.k8s.io`: the helper
/// bounds stdin itself.
pub async fn make_helper_v4_backend() -> Option<BackendSubject> {
    let config = SimConfig {
        exec_protocols: ExecProtocols::V4Only,
        ..SimConfig::default()
    };
    let (sim, backend) = sim_helper_backend(config).await;
    Some(BackendSubject::new(backend.clone(), backend, IMAGE).with_guard(sim))
}

/// Wait until `cond` holds, checking every 10 ms, failing after 30 s.
pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < give_up, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Processes of this host whose environment holds `MARK=<mark>`: the simulator runs a
/// container's processes here, so this is what is still running in the "container".
pub fn marked_processes(mark: &str) -> usize {
    let needle = format!("MARK={mark}");
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .filter(|e| {
                    std::fs::read(e.path().join("environ"))
                        .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
                })
                .count()
        })
        .unwrap_or(0)
}

/// `a` as an argv.
pub fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// Create the pod of `s` and wait (30 s at most) until it runs.
pub async fn running(b: &KubeBackend, s: &jetbridge_core::ports::PodSpec) {
    use jetbridge_core::ports::{PodState, Pods, WaitFor, WaitOpts};
    b.create(s).await.expect("create");
    let st = b
        .wait(
            &s.name,
            &WaitOpts::new(WaitFor::Running, Duration::from_secs(30)),
        )
        .await
        .expect("wait");
    assert_eq!(st.state, PodState::Running, "{st:?}");
}
