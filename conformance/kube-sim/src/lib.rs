//! A simulator of the Kubernetes pod API, good enough for kube-rs to talk to
//! unmodified: create/get/list/watch/delete pods, the eviction and log
//! subresources, WebSocket exec (`v5.channel.k8s.io` and `v4.channel.k8s.io`),
//! secrets and NetworkPolicies (stored, not enforced; garbage-collected with the pod
//! that owns them), and a local
//! "kubelet" that runs each container's command as a host process, its
//! environment taken from secrets where the spec says so.
//!
//! Faults are injected from the [`Simulator`] handle: per-request failures
//! ([`Fault`]), server restarts, history compaction, kubelet eviction, OOM
//! kills, node drains, image pull failures and unschedulable pods.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use jetbridge_kube_sim::{SimConfig, Simulator};
//! let sim = Simulator::start(SimConfig::default()).await?;
//! let url = sim.url(); // http://127.0.0.1:PORT, give it to kube::Config::new
//! # let _ = url;
//! sim.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod admission;
mod api;
mod exec;
mod faults_extra;
mod images;
mod kubelet;
mod networkpolicies;
mod process;
mod secrets;
mod selector;
mod state;
mod store;
mod util;

use state::{Flags, Kill, Shared, lock};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Simulator configuration.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Namespace written into kubeconfigs by the command line entry point when
    /// none is given ("default").
    pub namespace_default: String,
    /// Delay before a new pod is bound to the node.
    pub schedule_delay: Duration,
    /// Delay between a pod's images being "pulled" and its containers starting.
    pub start_delay: Duration,
    /// Root of per-pod directories (container roots, emptyDir volumes); a
    /// temporary directory removed at shutdown when `None`.
    pub work_root: Option<PathBuf>,
    /// Root of persistent volume claims: claim `X` lives at `pvc_root/X`.
    /// `work_root/pvc` when `None`.
    pub pvc_root: Option<PathBuf>,
    /// Port to listen on; 0 picks a free one.
    pub port: u16,
    /// How long the kubelet takes, after a gracefully deleted pod's containers have
    /// stopped and its terminal phase is written, to reclaim its resources (unmount
    /// volumes, remove cgroups) and confirm the deletion. Until then the pod is seen
    /// terminating in its terminal phase, as in a cluster: the kubelet's status manager
    /// deletes only once `PodResourcesAreReclaimed` (pkg/kubelet/status/
    /// status_manager.go `canBeDeleted`). Zero by default.
    pub reclaim_delay: Duration,
    /// The exec subprotocols the API server offers; see [`ExecProtocols`].
    pub exec_protocols: ExecProtocols,
    /// How long after a pod is removed the garbage collector deletes the Secrets it
    /// owned. On a cluster this is asynchronous, typically well under a second, longer
    /// when the controller manager is busy. Zero (the default) collects them in the
    /// request that removed the pod.
    pub gc_delay: Duration,
    /// Which environment variable names the API server accepts; see [`EnvVarNames`].
    pub env_var_names: EnvVarNames,
    /// Nodes pods are bound to (default 1, named `sim-node`; with more, `sim-node-0`,
    /// `sim-node-1`, ...). Each pod goes to the node running the fewest, as the
    /// scheduler's spreading would put it. Cordons, node loss and the other node
    /// faults act on every node at once.
    pub nodes: usize,
    /// Pods each node runs at once (the kubelet's `maxPods`); `None` (the default):
    /// no limit. A pod that finds every node full stays Pending with `PodScheduled`
    /// false (`Unschedulable`, `0/N nodes are available: N Too many pods.`) and is
    /// bound as soon as a pod ends somewhere: terminal pods hold no slot, as the
    /// scheduler does not count them.
    pub max_pods_per_node: Option<usize>,
}

/// The rule the API server checks container `env` names and `envFrom` prefixes
/// against, which depends on its version and a feature gate.
///
/// pkg/apis/core/validation/validation.go `validateEnvVarName` applies apimachinery's
/// `IsRelaxedEnvVarName` when the gate `RelaxedEnvironmentVariableValidation` is on
/// (alpha and off in 1.30, beta and on from 1.32), `IsEnvVarName` otherwise
/// (k8s.io/apimachinery/pkg/util/validation/validation.go).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnvVarNames {
    /// `IsEnvVarName`: `[-._a-zA-Z][-._a-zA-Z0-9]*`, and not `.`, `..` or `..`-prefixed,
    /// as 1.29 to 1.31 at their defaults.
    Strict,
    /// `IsRelaxedEnvVarName`: any printable ASCII but `=`, as 1.32 and later (the
    /// default here, a 1.33 cluster).
    #[default]
    Relaxed,
}

/// The exec subprotocols an API server offers, which depends on its version, a feature
/// gate and any proxy in front of it.
///
/// `v5.channel.k8s.io` (KEP-4006) adds a close signal for one stream, so a client can
/// end stdin and still read the output and the status. The API server speaks it through
/// its stream translator, behind the feature gate `TranslateStreamCloseWebsocketRequests`:
/// alpha and off in 1.29, beta and on from 1.30. Proxies in front of the API server may
/// offer only `v4.channel.k8s.io`. On v4 the only way to end stdin is to close the
/// WebSocket, and that ends the whole session (wsstream `Conn.handle` in
/// k8s.io/apimachinery/pkg/util/httpstream/wsstream/conn.go returns when its read loop
/// fails, and its deferred `Close` shuts every channel): output still buffered and the
/// status frame are lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecProtocols {
    /// v5 and v4, as 1.30 and later with the gate at its default.
    #[default]
    V5AndV4,
    /// v4 only, as 1.29 with the gate at its default, or behind a v4-only proxy.
    V4Only,
    /// v5 and v4 behind a proxy that drops the client's `Sec-WebSocket-Protocol`
    /// header: the server sees no subprotocol asked for and falls back to the
    /// unversioned `channel.k8s.io` (wsstream `handshake` takes an empty list as `""`),
    /// answering without the header; that protocol carries no exit status.
    HeaderStripped,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            namespace_default: "default".into(),
            schedule_delay: Duration::from_millis(20),
            start_delay: Duration::from_millis(20),
            work_root: None,
            pvc_root: None,
            port: 0,
            reclaim_delay: Duration::ZERO,
            exec_protocols: ExecProtocols::default(),
            gc_delay: Duration::ZERO,
            env_var_names: EnvVarNames::default(),
            nodes: 1,
            max_pods_per_node: None,
        }
    }
}

/// One API request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method, e.g. `GET`.
    pub method: String,
    /// Request path, e.g. `/api/v1/namespaces/ns/pods`.
    pub path: String,
    /// Raw query string (empty when none).
    pub query: String,
}

/// Injected faults and the test controls. Here `FaultAction::Status(code)` answers a
/// Kubernetes `Status` with the reason the API uses for that code.
pub use faults_extra::ExecBytes;
pub use images::built_step_helper;
pub use jetbridge_sim_http::{Fault, FaultAction, SimControls};

/// Handle to a running simulator; cheap to clone.
#[derive(Debug, Clone)]
pub struct Simulator {
    shared: Arc<Shared>,
    server: Arc<tokio::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl SimControls for Simulator {
    type Request = RequestRecord;

    fn controls(&self) -> &jetbridge_sim_http::Controls<RequestRecord> {
        &self.shared.controls
    }
}

impl Simulator {
    /// Start a simulator on 127.0.0.1 (plain HTTP/1.1), on `config.port` or a
    /// free port.
    pub async fn start(config: SimConfig) -> std::io::Result<Simulator> {
        let (work_root, tmp) = match &config.work_root {
            Some(p) => (p.clone(), None),
            None => {
                let t = tempfile::Builder::new().prefix("kube-sim-").tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let pvc_root = config
            .pvc_root
            .clone()
            .unwrap_or_else(|| work_root.join("pvc"));
        std::fs::create_dir_all(&work_root)?;
        std::fs::create_dir_all(&pvc_root)?;
        let listener = jetbridge_sim_http::bind(config.port)?;
        let port = listener.local_addr()?.port();
        let generation_token = CancellationToken::new();
        let store = store::Store {
            deferred_gc: (!config.gc_delay.is_zero()).then(Vec::new),
            ..store::Store::default()
        };
        let (gc_tx, mut gc_rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
        let shared = Arc::new(Shared {
            gc_tx,
            config,
            work_root,
            pvc_root,
            _tmp: tmp,
            store: Mutex::new(store),
            rv_tx: tokio::sync::watch::Sender::new(0),
            flags: Mutex::new(Flags::default()),
            flags_tx: tokio::sync::watch::Sender::new(0),
            runtimes: Mutex::default(),
            controls: jetbridge_sim_http::Controls::default(),
            policy: Mutex::default(),
            port,
            generation: Mutex::new(generation_token.clone()),
            shutdown: CancellationToken::new(),
            exec_bytes: Arc::default(),
        });
        // The garbage collector, when it runs late: each removed pod's dependents are
        // swept `gc_delay` after the removal.
        {
            let weak = Arc::downgrade(&shared);
            let delay = shared.config.gc_delay;
            tokio::spawn(async move {
                while let Some((ns, uid)) = gc_rx.recv().await {
                    let weak = weak.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        if let Some(sh) = weak.upgrade() {
                            sh.mutate(|s| s.collect_dependents(&ns, &uid));
                        }
                    });
                }
            });
        }
        let task = serve(&shared, listener, generation_token);
        Ok(Simulator {
            shared,
            server: Arc::new(tokio::sync::Mutex::new(Some(task))),
        })
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.shared.port)
    }

    /// The port the simulator listens on.
    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// Root of the per-pod directories.
    pub fn work_root(&self) -> &Path {
        &self.shared.work_root
    }

    /// Root of persistent volume claims (claim `X` is `pvc_root/X`).
    pub fn pvc_root(&self) -> &Path {
        &self.shared.pvc_root
    }

    /// Write a kubeconfig pointing at this simulator with `namespace` as the
    /// context's namespace.
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> std::io::Result<()> {
        // JSON strings are valid YAML scalars, so quoting via serde_json is safe.
        let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-sim\n  cluster:\n    server: {}\ncontexts:\n- name: kube-sim\n  context:\n    cluster: kube-sim\n    user: kube-sim\n    namespace: {}\ncurrent-context: kube-sim\nusers:\n- name: kube-sim\n  user: {{}}\n",
            q(&self.url()),
            q(namespace)
        );
        std::fs::write(path, text)
    }

    /// Drop every connection (including watches and exec sessions) and stop
    /// listening briefly, then listen again on the same port. Pods, processes,
    /// history and the resourceVersion counter are kept.
    pub async fn restart(&self) {
        let mut server = self.server.lock().await;
        self.shared.generation().cancel();
        if let Some(task) = server.take() {
            let _ = task.await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut listener = None;
        for _ in 0..100 {
            match jetbridge_sim_http::bind(self.shared.port) {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let Some(listener) = listener else {
            tracing::error!(
                port = self.shared.port,
                "kube-sim could not listen again after restart"
            );
            return;
        };
        let generation_token = CancellationToken::new();
        *lock(&self.shared.generation) = generation_token.clone();
        *server = Some(serve(&self.shared, listener, generation_token));
    }

    /// Forget watch history: watches from versions older than now get an
    /// `ERROR` event carrying a 410 `Expired` Status (inside a 200 stream).
    pub fn compact(&self) {
        self.shared.mutate(store::Store::compact);
    }

    /// While on, new and pending pods stay Pending with `PodScheduled=False`,
    /// reason `Unschedulable`, message "0/1 nodes are available: 1 Insufficient cpu.".
    /// Turning it off lets them schedule.
    pub fn set_unschedulable(&self, on: bool) {
        self.shared.update_flags(|f| f.unschedulable = on);
    }

    /// Pods whose container image contains `image_contains` fail to pull: the
    /// container waits with reason `ErrImagePull` (message `message`), then
    /// `ImagePullBackOff`, alternating, and the pod stays Pending.
    pub fn fail_image(&self, image_contains: &str, message: &str) {
        self.shared.update_flags(|f| {
            f.image_failures
                .push((image_contains.into(), message.into(), None))
        });
    }

    /// Like [`Simulator::fail_image`] for the next `attempts` pulls only, then the pull
    /// succeeds and the pod goes on: a registry's 429 or 5xx, which the kubelet retries
    /// with back-off (pkg/kubelet/images/image_manager.go `EnsureImageExists`, the
    /// back-off of `ImagePullBackOff`).
    pub fn fail_image_times(&self, image_contains: &str, message: &str, attempts: usize) {
        self.shared.update_flags(|f| {
            f.image_failures
                .push((image_contains.into(), message.into(), Some(attempts)))
        });
    }

    /// Images whose reference contains `image_contains` have none of `executables`
    /// (`env`, `sh`, ...): distroless and scratch images have no shell. An exec whose
    /// command is one of them fails as the container runtime fails it: the upgrade,
    /// then an `InternalError` status frame, `... OCI runtime exec failed: exec failed:
    /// unable to start container process: exec: "NAME": executable file not found in
    /// $PATH: unknown` (the kubelet's remotecommand server writes `ExecInContainer`'s
    /// error to the error stream as an internal error). Not an exit status: 127 comes
    /// only from a shell or `env` that could not find what it was asked to run.
    pub fn image_lacks(&self, image_contains: &str, executables: &[&str]) {
        self.shared.update_flags(|f| {
            f.image_lacks.push((
                image_contains.to_owned(),
                executables.iter().map(|e| (*e).to_owned()).collect(),
            ))
        });
    }

    /// Let every image pull succeed again (pods waiting on a pull go on).
    pub fn clear_image_failures(&self) {
        self.shared.update_flags(|f| f.image_failures.clear());
    }

    /// Kubelet eviction (node pressure): processes are killed, phase Failed,
    /// `status.reason` "Evicted" with a message, and a `DisruptionTarget`
    /// condition (reason `TerminationByKubelet`). The pod object stays.
    pub fn evict(&self, namespace: &str, pod: &str) {
        if let Some(rt) = self.shared.runtime_of(namespace, pod) {
            rt.request_kill(Kill::Evict {
                message: kubelet::EVICTION_MSG.into(),
            });
        }
    }

    /// The pod's first main container is OOM-killed as cgroup v2's group OOM kill does
    /// (`memory.oom.group`): that container's process and its running execs die (the
    /// execs with exit code 137), and it ends terminated, reason `OOMKilled`, exit code
    /// 137. Its other containers keep running, so the pod stays `Running` while one
    /// does (kubelet `getPhase`); it ends `Failed` once none does.
    pub fn oom_kill(&self, namespace: &str, pod: &str) {
        if let Some(rt) = self.shared.runtime_of(namespace, pod) {
            rt.request_kill(Kill::Oom);
        }
    }

    /// The OOM killer as cgroup v1, or `singleProcessOOMKill: true` (1.32+), has it:
    /// only the processes exec'd in the pod's first main container die (SIGKILL, exit
    /// 137), the container and the pod carry on with no `OOMKilled` anywhere, and the
    /// container's `memory.events` `oom_kill` counter goes up. The simulator keeps that
    /// counter in a file `memory.events` in the container's working directory. (With
    /// cgroup v2's `memory.oom.group`, the kubelet's default from 1.28, the whole
    /// container goes: [`Simulator::oom_kill`].)
    pub fn oom_kill_exec(&self, namespace: &str, pod: &str) {
        let Some(rt) = self.shared.runtime_of(namespace, pod) else {
            return;
        };
        let main = self.shared.get_pod(namespace, pod).and_then(|p| {
            p["spec"]["containers"][0]["name"]
                .as_str()
                .map(str::to_owned)
        });
        if let Some(main) = main
            && let Err(e) = rt.oom_kill_execs(&main)
        {
            tracing::warn!(error = %e, "writing the simulated memory.events");
        }
    }

    /// Drain the node as `kubectl drain` does: cordon it (new pods stay
    /// Pending, Unschedulable, "1 node(s) were unschedulable") and evict
    /// every pod through the eviction API: a `DisruptionTarget` condition
    /// (reason `EvictionByEvictionAPI`) is added and the pod is deleted
    /// gracefully with its own grace period. Undo the cordon with
    /// [`Simulator::uncordon`].
    ///
    /// As staging/src/k8s.io/kubectl/pkg/drain/drain.go and cordon.go do it: cordon
    /// (`spec.unschedulable`) first, then `DeleteOrEvictPods` evicts each pod through
    /// the eviction API, never deleting it directly.
    pub fn drain_node(&self) {
        self.shared.update_flags(|f| f.cordoned = true);
        let pods: Vec<(String, String)> = lock(&self.shared.store).pods.keys().cloned().collect();
        for (ns, name) in pods {
            let _ = api::do_delete(
                &self.shared,
                &ns,
                &name,
                None,
                &serde_json::json!({}),
                Some(&api::eviction_condition),
            );
        }
    }

    /// What `POST pods/NAME/eviction` does, as another client would send it: a
    /// `DisruptionTarget` condition (reason `EvictionByEvictionAPI`), then a graceful
    /// delete with the pod's own grace period.
    pub fn evict_with_api(&self, namespace: &str, pod: &str) {
        let _ = api::do_delete(
            &self.shared,
            namespace,
            pod,
            None,
            &serde_json::json!({}),
            Some(&api::eviction_condition),
        );
    }

    /// Delete a pod as another client would (`kubectl delete pod`): gracefully, with
    /// `grace` seconds or the pod's own grace period.
    pub fn delete_pod(&self, namespace: &str, pod: &str, grace: Option<i64>) {
        let _ = api::do_delete(
            &self.shared,
            namespace,
            pod,
            grace,
            &serde_json::json!({}),
            None,
        );
    }

    /// Mark the node schedulable again after [`Simulator::drain_node`].
    pub fn uncordon(&self) {
        self.shared.update_flags(|f| f.cordoned = false);
    }

    /// The node becomes unreachable, as when its VM dies or the network to it is cut,
    /// and the control plane reacts as current clusters do; no `NodeLost` reason and no
    /// phase `Unknown` is written (the node controller stopped doing that in 1.12):
    ///
    /// 1. At once: the kubelet hears and writes nothing (no status, no deletion
    ///    confirmed, no signal reaches a process, which runs on unobserved); exec
    ///    sessions go silent without closing; new execs answer 500 `error dialing
    ///    backend`.
    /// 2. After `not_ready_after` (the node lifecycle controller's
    ///    `node-monitor-grace-period`, 40 s by default, 50 s from 1.32): every pod of
    ///    the node gets `Ready=False` (pkg/controller/nodelifecycle `MarkPodsNotReady`,
    ///    which leaves `ContainersReady` and the phase alone); on a cluster the node
    ///    also gets the `node.kubernetes.io/unreachable:NoExecute` taint (nodes are not
    ///    served here).
    /// 3. After `evict_after` more (the pods' toleration of that taint, 300 s by default
    ///    from the DefaultTolerationSeconds admission plugin): the taint-eviction
    ///    controller adds `DisruptionTarget` (reason `DeletionByTaintManager`) and deletes
    ///    each pod gracefully. No kubelet confirms it, so the pod stays `Running` and
    ///    terminating until [`Simulator::delete_node`].
    pub fn lose_node(&self, not_ready_after: Duration, evict_after: Duration) {
        self.shared.update_flags(|f| {
            f.node_down = true;
            f.frozen = true;
        });
        let sh = Arc::clone(&self.shared);
        tokio::spawn(async move {
            tokio::time::sleep(not_ready_after).await;
            let on_node = |sh: &Shared| lock(&sh.store).bound_pods(true);
            for (ns, name, _) in on_node(&sh) {
                sh.mutate(|s| {
                    s.update(&ns, &name, |p| {
                        kubelet::set_cond(p, "Ready", false, None, None)
                    });
                });
            }
            tokio::time::sleep(evict_after).await;
            for (ns, name, _) in on_node(&sh) {
                let _ = api::do_delete(
                    &sh,
                    &ns,
                    &name,
                    None,
                    &serde_json::json!({}),
                    Some(&|p: &mut serde_json::Value| {
                        kubelet::set_cond(
                            p,
                            "DisruptionTarget",
                            true,
                            Some("DeletionByTaintManager"),
                            Some("Taint manager: deleting due to NoExecute taint"),
                        )
                    }),
                );
            }
        });
    }

    /// The lost node's object is deleted (by the cloud node controller once its VM is
    /// gone, or by an operator): pod GC (pkg/controller/podgc `gcOrphaned`) marks each
    /// of its pods `DisruptionTarget` (reason `DeletionByPodGC`) and phase `Failed`,
    /// then deletes it at once. Their processes are gone with the node.
    pub fn delete_node(&self) {
        let pods = lock(&self.shared.store).bound_pods(false);
        for (ns, name, uid) in pods {
            self.shared.mutate(|s| {
                s.update(&ns, &name, |p| {
                    kubelet::set_cond(
                        p,
                        "DisruptionTarget",
                        true,
                        Some("DeletionByPodGC"),
                        Some("PodGC: node no longer exists"),
                    );
                    p["status"]["phase"] = serde_json::json!("Failed");
                });
                s.remove(&ns, &name);
            });
            if let Some(rt) = self.shared.runtime(&uid) {
                rt.request_kill(Kill::Shutdown);
                rt.signal_all(true);
            }
        }
    }

    /// While on, the kubelet writes no status: pods make no progress and
    /// graceful deletions are not confirmed. Signals still reach processes.
    pub fn freeze_kubelet(&self, on: bool) {
        self.shared.update_flags(|f| f.frozen = on);
    }

    /// The next `n` exec sessions send their first output (or wait for the
    /// process to end when it prints nothing), then close the connection
    /// without a status frame. Their process runs on, as on a node: only the
    /// client can stop it (or the container's end).
    pub fn drop_exec_streams(&self, n: usize) {
        self.shared.update_flags(|f| f.drop_exec += n);
    }

    /// RBAC denies `verb` on `resource` (`"create"`, `"pods/exec"`; `"get"`,
    /// `"secrets"`; outside the core group `resource.group`, as `kubectl auth can-i`
    /// writes it: `"create"`, `"networkpolicies.networking.k8s.io"`): such requests
    /// answer 403 `Forbidden` with the authorizer's words, `pods "p" is forbidden: User
    /// "kube-sim" cannot create resource "pods/exec" in API group "" in the namespace
    /// "ns"`, before anything is done.
    pub fn forbid(&self, verb: &str, resource: &str) {
        lock(&self.shared.policy)
            .forbidden
            .insert((verb.to_owned(), resource.to_owned()));
    }

    /// Lift every RBAC denial.
    pub fn allow_all(&self) {
        lock(&self.shared.policy).forbidden.clear();
    }

    /// Every `(verb, resource)` pair RBAC has let through since the start, e.g.
    /// `("create", "pods")`, `("get", "pods/exec")`,
    /// `("create", "networkpolicies.networking.k8s.io")`: the rules a Role needs for the
    /// requests made so far. The resource carries its subresource, and its group when
    /// that is not the core group (as [`Simulator::forbid`] names it); the verbs are the
    /// authorizer's (`list` and `watch` for collection GETs, both `get` and `create` for
    /// a WebSocket exec). Denied requests and non-resource paths (`/version`, `/api`,
    /// discovery) are not recorded.
    pub fn authorized(&self) -> BTreeSet<(String, String)> {
        lock(&self.shared.policy).authorized.clone()
    }

    /// Label a namespace. `pod-security.kubernetes.io/enforce=restricted` makes Pod
    /// Security admission reject pods that break the restricted profile with 403
    /// `violates PodSecurity "restricted:latest": ...`.
    pub fn label_namespace(&self, namespace: &str, key: &str, value: &str) {
        lock(&self.shared.policy)
            .namespace_labels
            .entry(namespace.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_owned());
    }

    /// A ResourceQuota `name` allowing at most `pods` non-terminal pods in `namespace`
    /// (`None` removes it). A create beyond it answers 403 `exceeded quota: ...`, checked
    /// before the name is: a resent create meets 403, not 409.
    pub fn set_pod_quota(&self, namespace: &str, name: &str, pods: Option<usize>) {
        let mut p = lock(&self.shared.policy);
        match pods {
            Some(n) => {
                p.pod_quota
                    .insert(namespace.to_owned(), (name.to_owned(), n));
            }
            None => {
                p.pod_quota.remove(namespace);
            }
        }
    }

    /// Namespace `namespace` does not exist: creating a pod or Secret in it answers 404
    /// `namespaces "NS" not found`. Every namespace exists until this is said of it.
    pub fn remove_namespace(&self, namespace: &str) {
        lock(&self.shared.policy)
            .namespace_gone
            .insert(namespace.to_owned(), false);
    }

    /// Namespace `namespace` is being deleted: creating a pod or Secret in it answers 403
    /// `... is forbidden: unable to create new content in namespace NS because it is
    /// being terminated`.
    pub fn terminate_namespace(&self, namespace: &str) {
        lock(&self.shared.policy)
            .namespace_gone
            .insert(namespace.to_owned(), true);
    }

    /// Create service account `name` in `namespace`. Only `default` exists otherwise; a
    /// pod naming another is rejected with 403 `error looking up service account ...`.
    pub fn create_service_account(&self, namespace: &str, name: &str) {
        lock(&self.shared.policy)
            .service_accounts
            .entry(namespace.to_owned())
            .or_default()
            .insert(name.to_owned());
    }

    /// Current pods of a namespace, as the API would return them.
    pub fn pods(&self, namespace: &str) -> Vec<serde_json::Value> {
        lock(&self.shared.store).list(Some(namespace), &selector::Selectors::default())
    }

    /// Current secrets of a namespace, as the API would return them (`data`
    /// values in base64).
    pub fn secrets(&self, namespace: &str) -> Vec<serde_json::Value> {
        secrets::list(&self.shared, namespace)
    }

    /// Current NetworkPolicies of a namespace, as the API would return them. They are
    /// stored, not enforced: the simulated kubelet's processes keep the host's network.
    pub fn network_policies(&self, namespace: &str) -> Vec<serde_json::Value> {
        networkpolicies::list_in(&self.shared, namespace)
    }

    /// The latest resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).rv
    }

    /// Stop listening, end every connection and kill every pod process.
    pub async fn shutdown(self) {
        self.shared.generation().cancel();
        if let Some(task) = self.server.lock().await.take() {
            let _ = task.await;
        }
        let rts: Vec<_> = lock(&self.shared.runtimes).values().cloned().collect();
        for rt in rts {
            rt.request_kill(Kill::Shutdown);
            rt.signal_all(true);
        }
        self.shared.shutdown.cancel();
    }
}

/// Accept connections (upgradable, for exec) until `generation_token` is
/// cancelled; cancelling also ends every connection of this generation.
fn serve(
    sh: &Arc<Shared>,
    listener: tokio::net::TcpListener,
    generation_token: CancellationToken,
) -> JoinHandle<()> {
    jetbridge_sim_http::serve(api::router(sh.clone()), listener, generation_token, true)
}

fn usage() -> &'static str {
    "usage: kube-sim --kubeconfig-out FILE [--namespace NS] [--port P]\n\
     \x20      [--nodes N] [--max-pods-per-node M]\n\
     \x20      [--image-file IMAGE=PATH_IN_IMAGE=HOST_FILE ...]\n\
     Runs a Kubernetes pod API simulator on 127.0.0.1 until Ctrl-C. Each --image-file\n\
     says that images whose reference contains IMAGE hold PATH_IN_IMAGE, run from\n\
     HOST_FILE (Simulator::image_file). --nodes spreads pods over N nodes, each\n\
     running at most M at once (SimConfig::nodes, max_pods_per_node)."
}

/// Command line entry point:
/// `--kubeconfig-out FILE [--namespace NS] [--port P] [--nodes N] [--max-pods-per-node M]
/// [--image-file I=P=H ...]`.
/// Prints the URL, writes the kubeconfig and runs until Ctrl-C.
pub fn run_cli() -> std::process::ExitCode {
    use std::process::ExitCode;
    let mut args = std::env::args().skip(1);
    let mut kubeconfig: Option<PathBuf> = None;
    let mut config = SimConfig::default();
    let mut namespace = None;
    let mut image_files: Vec<(String, String, PathBuf)> = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--image-file" => {
                let spec = args.next().unwrap_or_default();
                let mut parts = spec.splitn(3, '=');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(i), Some(p), Some(h)) if !i.is_empty() && !h.is_empty() => {
                        image_files.push((i.to_owned(), p.to_owned(), PathBuf::from(h)));
                    }
                    _ => {
                        eprintln!(
                            "--image-file needs IMAGE=PATH_IN_IMAGE=HOST_FILE, got {spec:?}\n{}",
                            usage()
                        );
                        return ExitCode::from(2);
                    }
                }
            }
            "--kubeconfig-out" => kubeconfig = args.next().map(PathBuf::from),
            "--namespace" => namespace = args.next(),
            "--port" => match args.next().and_then(|p| p.parse().ok()) {
                Some(p) => config.port = p,
                None => {
                    eprintln!("--port needs a number\n{}", usage());
                    return ExitCode::from(2);
                }
            },
            "--nodes" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if n >= 1 => config.nodes = n,
                _ => {
                    eprintln!("--nodes needs a number of at least 1\n{}", usage());
                    return ExitCode::from(2);
                }
            },
            "--max-pods-per-node" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if n >= 1 => config.max_pods_per_node = Some(n),
                _ => {
                    eprintln!(
                        "--max-pods-per-node needs a number of at least 1\n{}",
                        usage()
                    );
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("{}", usage());
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?}\n{}", usage());
                return ExitCode::from(2);
            }
        }
    }
    let Some(kubeconfig) = kubeconfig else {
        eprintln!("{}", usage());
        return ExitCode::from(2);
    };
    let namespace = namespace.unwrap_or_else(|| config.namespace_default.clone());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let sim = match Simulator::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cannot start the simulator: {e}");
                return ExitCode::FAILURE;
            }
        };
        for (image, path, host) in &image_files {
            if let Err(e) = sim.image_file(image, path, host) {
                eprintln!("--image-file {image}={path}={}: {e}", host.display());
                sim.shutdown().await;
                return ExitCode::from(2);
            }
        }
        if let Err(e) = sim.write_kubeconfig(&kubeconfig, &namespace) {
            eprintln!("cannot write {}: {e}", kubeconfig.display());
            sim.shutdown().await;
            return ExitCode::FAILURE;
        }
        println!("{}", sim.url());
        let _ = tokio::signal::ctrl_c().await;
        sim.shutdown().await;
        ExitCode::SUCCESS
    })
}
