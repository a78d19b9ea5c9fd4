//! [`KubeBackend`]: the [`Pods`] port on the Kubernetes API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::TryStreamExt;
use jetbridge_core::names::label;
use jetbridge_core::ports::{
    DeleteOpts, GarbageOpts, GarbageReport, LabelSelector, PodCapabilities, PodFailure, PodSpec,
    PodState, PodStatus, Pods, WaitFor, WaitOpts,
};
use jetbridge_core::{Error, ErrorKind, Result};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, AttachParams, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions,
    WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::time::Instant;

use crate::config::KubeConfig;
use crate::error::{api_code, to_error};
use crate::manifest::{
    env_secret_manifest, env_secret_name, network_policy_manifest, network_policy_name,
    pod_manifest,
};
use crate::retry::Budget;
use crate::status::pod_status_at;

/// Whether `meta` carries the handle label `ours` (never when we have none).
fn has_handle(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ours: Option<&str>,
) -> bool {
    let theirs = meta.labels.as_ref().and_then(|l| l.get(label::HANDLE));
    matches!((ours, theirs), (Some(o), Some(t)) if o == t)
}

/// What is made before a pod and owned by it: the env Secret, the NetworkPolicy of a
/// hermetic pod. The names are the operations the retry budget reports.
trait Dependent:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + k8s_openapi::serde::Serialize
    + k8s_openapi::serde::de::DeserializeOwned
{
    const NOUN: &'static str;
    const CREATE: &'static str;
    const GET: &'static str;
    const DELETE: &'static str;
    const OWN: &'static str;
}

impl Dependent for Secret {
    const NOUN: &'static str = "secret";
    const CREATE: &'static str = "create secret";
    const GET: &'static str = "get secret";
    const DELETE: &'static str = "delete secret";
    const OWN: &'static str = "own secret";
}

impl Dependent for NetworkPolicy {
    const NOUN: &'static str = "networkpolicy";
    const CREATE: &'static str = "create networkpolicy";
    const GET: &'static str = "get networkpolicy";
    const DELETE: &'static str = "delete networkpolicy";
    const OWN: &'static str = "own networkpolicy";
}

/// What a create made before its pod (name, uid when known), to remove on failure.
enum Made {
    Secret(String, Option<String>),
    Policy(String, Option<String>),
}

/// The chart value that grants what a hermetic pod's NetworkPolicy needs.
pub const HERMETIC_CHART_VALUE: &str = "rbac.hermetic";

/// A failure on the NetworkPolicy of a hermetic pod; RBAC's 403 says what to grant.
fn hermetic_error(e: Error, spec: &PodSpec) -> Error {
    if e.kind() != ErrorKind::PermissionDenied {
        return e;
    }
    Error::permission_denied(format!(
        "{e}: pod {} must run without network (`hermetic: true`), which takes a \
         NetworkPolicy, and the ServiceAccount may not manage them: it needs create, get, \
         patch, list and delete on networkpolicies in the API group networking.k8s.io \
         (the Helm chart grants them with {HERMETIC_CHART_VALUE}=true, the default)",
        spec.name
    ))
}

/// Longest single watch request; the API server caps watches at about five minutes.
const MAX_WATCH_SECS: u64 = 290;

/// Step pods and commands in them, on a Kubernetes cluster (implements [`Pods`] and
/// [`Exec`](jetbridge_core::ports::Exec)).
#[derive(Clone)]
pub struct KubeBackend {
    pub(crate) client: kube::Client,
    pub(crate) api: Api<Pod>,
    secrets: Api<Secret>,
    policies: Api<NetworkPolicy>,
    pub(crate) config: KubeConfig,
    namespace: String,
    /// Pods this backend asked to delete, and when: a deletion seen on any other pod
    /// is a disruption ([`pod_status_as`]). Shared by clones; entries expire.
    own_deletes: Arc<Mutex<HashMap<String, std::time::Instant>>>,
    /// The exec subprotocol the API server chose last ([`Protocol`] as a `u8`), shared
    /// by clones.
    exec_protocol: Arc<std::sync::atomic::AtomicU8>,
    /// Per pod, the container's `oom_kill` count last seen (see `crate::exec`), so an
    /// earlier kill is not blamed on a later command.
    pub(crate) oom_seen: Arc<Mutex<HashMap<String, u64>>>,
    /// Requests sent through a client this backend built ([`Self::new`]).
    requests: crate::RequestCounts,
}

/// An exec subprotocol, as far as stdin is concerned (see [`crate::session`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// No exec has told yet.
    Unknown = 0,
    /// `v4.channel.k8s.io`: stdin cannot end without ending the session.
    V4 = 1,
    /// `v5.channel.k8s.io`: stdin ends with a close signal of its own.
    V5 = 2,
}

/// How long a pod this backend deleted is remembered as such: far longer than any
/// grace period.
const OWN_DELETE_MEMORY: Duration = Duration::from_secs(3600);

impl std::fmt::Debug for KubeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeBackend")
            .field("namespace", &self.namespace)
            .field("restricted", &self.config.restricted)
            .finish_non_exhaustive()
    }
}

impl KubeBackend {
    /// Connect with `config`: its kubeconfig file and context when given, else the
    /// default kubeconfig, else the in-cluster service account.
    ///
    /// kube's own retry layer is turned off: this adapter retries transient failures
    /// itself, within [`KubeConfig::request_budget`].
    pub async fn new(config: KubeConfig) -> Result<Self> {
        let options = KubeConfigOptions {
            context: config.context.clone(),
            ..KubeConfigOptions::default()
        };
        let mut kc = match &config.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path).map_err(|e| {
                    Error::invalid(format!("reading kubeconfig {}: {e}", path.display()))
                })?;
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| {
                        Error::invalid(format!("loading kubeconfig {}: {e}", path.display()))
                    })?
            }
            None if config.context.is_some() => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| Error::invalid(format!("loading kubeconfig: {e}")))?,
            None => kube::Config::infer()
                .await
                .map_err(|e| Error::invalid(format!("finding a Kubernetes configuration: {e}")))?,
        };
        kc.default_retry = false;
        // A proxy from the environment must not swallow a loopback API server (the
        // simulator, `kubectl proxy`).
        if kc
            .cluster_url
            .host()
            .is_some_and(|h| h == "127.0.0.1" || h == "localhost" || h == "[::1]")
        {
            kc.proxy_url = None;
        }
        let (client, counts) = crate::build_client(kc)
            .map_err(|e| Error::invalid(format!("building the Kubernetes client: {e}")))?;
        let mut backend = Self::from_client(client, config);
        backend.requests = counts;
        Ok(backend)
    }

    /// The requests sent so far, by verb and status code (only through a client this
    /// backend built itself).
    pub fn requests(&self) -> &crate::RequestCounts {
        &self.requests
    }

    /// How many env Secrets carry these labels (with the worker's: the Secrets that
    /// worker owns now).
    pub async fn count_secrets(&self, selector: &LabelSelector) -> Result<usize> {
        let params = ListParams::default().labels(&label_selector(selector));
        let list = self
            .budget()
            .run("list secrets", true, || self.secrets.list(&params))
            .await
            .map_err(|e| e.into_error("listing env secrets"))?;
        Ok(list.items.len())
    }

    /// Use an existing client. Its namespace is used unless `config` names one. If the
    /// client was built with kube's default retry layer on, 429/503/504 answers are
    /// also retried below this adapter (up to kube's own limit). Build it with
    /// [`crate::build_client`], or a `Retry-After` outside a JSON `Status` (API
    /// Priority and Fairness's 429) is not honoured.
    pub fn from_client(client: kube::Client, mut config: KubeConfig) -> Self {
        let namespace = config
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        config.namespace = Some(namespace.clone());
        KubeBackend {
            api: Api::namespaced(client.clone(), &namespace),
            secrets: Api::namespaced(client.clone(), &namespace),
            policies: Api::namespaced(client.clone(), &namespace),
            client,
            config,
            namespace,
            own_deletes: Arc::default(),
            exec_protocol: Arc::default(),
            oom_seen: Arc::default(),
            requests: crate::RequestCounts::default(),
        }
    }

    /// The exec subprotocol to plan stdin for. Before the first exec has told, one
    /// handshake finds out: an exec of `true` with only stderr, dropped at once (what
    /// it runs does not matter; the answer to the upgrade does). `Unknown` when even
    /// that fails, which callers treat as v4, the safe side.
    pub(crate) async fn exec_protocol(&self, pod: &str, container: &str) -> Protocol {
        let known = self.last_protocol();
        if known != Protocol::Unknown {
            return known;
        }
        let params = AttachParams::default()
            .container(container)
            .stdin(false)
            .stdout(false)
            .stderr(true);
        // Only asked before an exec through `env` (through the step-pod helper stdin is
        // always bounded), so the image has `true` beside `env`.
        let argv = ["true".to_owned()];
        match crate::session::connect(&self.client, &self.namespace, pod, &argv, &params).await {
            Ok(conn) => {
                let p = if conn.supports_stream_close() {
                    Protocol::V5
                } else {
                    Protocol::V4
                };
                self.saw_exec_protocol(p);
                p
            }
            Err(e) => {
                tracing::debug!(pod, error = %e, "the exec protocol probe failed");
                Protocol::Unknown
            }
        }
    }

    fn last_protocol(&self) -> Protocol {
        match self
            .exec_protocol
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            2 => Protocol::V5,
            1 => Protocol::V4,
            _ => Protocol::Unknown,
        }
    }

    /// Remember what the server chose, for the next exec's plan.
    pub(crate) fn saw_exec_protocol(&self, p: Protocol) {
        self.exec_protocol
            .store(p as u8, std::sync::atomic::Ordering::Relaxed);
    }

    /// The namespace of step pods.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The configuration in use.
    pub fn config(&self) -> &KubeConfig {
        &self.config
    }

    /// Create the pod, adopting one a lost answer already made with our handle.
    async fn create_pod(&self, budget: &Budget<'_>, spec: &PodSpec, manifest: &Pod) -> Result<Pod> {
        let what = format!("creating pod {}", spec.name);
        let post = PostParams::default();
        // Resending is safe: if an earlier attempt took effect, the retry gets 409 and
        // adopts the pod below instead of making a second one.
        loop {
            let err = match budget
                .run("create pod", true, || self.api.create(&post, manifest))
                .await
            {
                Ok(pod) => {
                    tracing::debug!(pod = %spec.name, "pod created");
                    return Ok(pod);
                }
                Err(e) if e.kube().and_then(api_code) == Some(409) => e,
                // Admission runs before the name check: a resend of a create that took
                // effect meets quota's 403 instead of 409. Adopt our pod if it is there.
                Err(e) if e.kube().and_then(api_code) == Some(403) => {
                    return match self.get_pod(budget, &spec.name).await {
                        Ok(existing) if has_handle(&existing.metadata, spec.handle()) => {
                            tracing::debug!(pod = %spec.name, "adopted our pod after a 403 on create");
                            Ok(existing)
                        }
                        _ => Err(e.into_error(&what)),
                    };
                }
                Err(e) => return Err(e.into_error(&what)),
            };
            let existing = match self.get_pod(budget, &spec.name).await {
                Ok(p) => p,
                // Gone again (deleted meanwhile, or a 409 that was not about the name):
                // create anew, within the budget.
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    tracing::debug!(pod = %spec.name, error = %err.into_error(&what), "409 on create but no pod; retrying");
                    budget.backoff().await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            return if has_handle(&existing.metadata, spec.handle()) {
                tracing::debug!(pod = %spec.name, "adopted existing pod with our handle");
                Ok(existing)
            } else {
                Err(Error::already_exists(format!(
                    "pod {} exists and belongs to another step handle",
                    spec.name
                )))
            };
        }
    }

    /// Create an object made before the pod and owned by it (the env Secret, the
    /// NetworkPolicy of a hermetic pod), adopting one with our handle (an earlier
    /// attempt whose answer was lost). Returns its uid, so that only this object is
    /// ever deleted.
    ///
    /// On an error the object may still exist (a lost answer, or a create that failed
    /// after taking effect); it carries our labels, so [`Pods::collect_garbage`] finds it.
    async fn create_dependent<K: Dependent>(
        &self,
        api: &Api<K>,
        budget: &Budget<'_>,
        spec: &PodSpec,
        obj: &K,
    ) -> Result<Option<String>> {
        let name = obj.meta().name.clone().unwrap_or_default();
        let noun = K::NOUN;
        let what = format!("creating {noun} {name}");
        let post = PostParams::default();
        match budget.run(K::CREATE, true, || api.create(&post, obj)).await {
            Ok(s) => return Ok(s.meta().uid.clone()),
            Err(e) if e.kube().and_then(api_code) == Some(409) => {}
            Err(e) => return Err(e.into_error(&what)),
        }
        let existing = budget
            .run(K::GET, true, || api.get(&name))
            .await
            .map_err(|e| e.into_error(&what))?;
        if !has_handle(existing.meta(), spec.handle()) {
            return Err(Error::already_exists(format!(
                "{noun} {name} exists and belongs to another step handle"
            )));
        }
        if !self.owner_gone(budget, existing.meta(), &spec.name).await? {
            return Ok(existing.meta().uid.clone());
        }
        // Ours, but owned by a pod of this name that is gone: the garbage collector
        // deletes it some time after the pod went (asynchronously, on a cluster), and
        // adopting it would leave the new pod relying on an object that may vanish
        // before the pod owns it. Replace it.
        tracing::debug!(%name, noun, "replacing a dependent still being collected");
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: existing.meta().uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match budget
            .run(K::DELETE, true, || api.delete(&name, &params))
            .await
        {
            Ok(_) => {}
            Err(e) if matches!(e.kube().and_then(api_code), Some(404 | 409)) => {}
            Err(e) => return Err(e.into_error(&what)),
        }
        budget
            .run(K::CREATE, true, || api.create(&post, obj))
            .await
            .map(|s| s.meta().uid.clone())
            .map_err(|e| e.into_error(&what))
    }

    /// Whether `meta` names an owner pod that no longer exists: a pod called `pod`
    /// with another uid, or none at all. An object without owners is not "gone": a
    /// create whose answer was lost made it, and the pod does not exist yet.
    async fn owner_gone(
        &self,
        budget: &Budget<'_>,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        pod: &str,
    ) -> Result<bool> {
        let owners: Vec<&str> = meta
            .owner_references
            .iter()
            .flatten()
            .filter(|o| o.kind == "Pod")
            .map(|o| o.uid.as_str())
            .collect();
        if owners.is_empty() {
            return Ok(false);
        }
        match budget.run("get pod", true, || self.api.get_opt(pod)).await {
            Ok(Some(p)) => Ok(!owners.contains(&p.metadata.uid.as_deref().unwrap_or_default())),
            Ok(None) => Ok(true),
            Err(e) => Err(e.into_error(&format!("getting pod {pod}"))),
        }
    }

    /// Delete an object made for a pod whose creation failed, with a budget of its own
    /// (the create's may be spent). Only the object with `uid` (ours), when known. A
    /// failure is logged, not returned: the create's error is the one that matters, and
    /// the reaper collects what is left.
    async fn remove_dependent<K: Dependent>(&self, api: &Api<K>, name: &str, uid: Option<String>) {
        let noun = K::NOUN;
        let mut params = DeleteParams::default();
        if uid.is_some() {
            params.preconditions = Some(Preconditions {
                uid,
                resource_version: None,
            });
        }
        let budget = self.budget();
        match budget
            .run(K::DELETE, true, || api.delete(name, &params))
            .await
        {
            Ok(_) => tracing::debug!(%name, noun, "removed what a failed create made"),
            Err(e) if e.kube().and_then(api_code) == Some(404) => {}
            Err(e) => {
                let e = e.into_error(&format!("deleting {noun} {name}"));
                tracing::warn!(%name, noun, error = %e, "left for the reaper");
            }
        }
    }

    /// Make `name` owned by its pod, so the cluster deletes it once the pod is gone.
    async fn own_dependent<K: Dependent>(
        &self,
        api: &Api<K>,
        budget: &Budget<'_>,
        pod: &Pod,
        name: &str,
    ) -> Result<()> {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod
            .metadata
            .uid
            .clone()
            .ok_or_else(|| Error::other(format!("pod {pod_name} has no uid")))?;
        let owner = OwnerReference {
            api_version: "v1".to_owned(),
            kind: "Pod".to_owned(),
            name: pod_name.clone(),
            uid,
            controller: None,
            block_owner_deletion: None,
        };
        let patch = serde_json::json!({"metadata": {"ownerReferences": [owner]}});
        let params = PatchParams::default();
        let patch = Patch::Merge(&patch);
        budget
            .run(K::OWN, true, || api.patch(name, &params, &patch))
            .await
            .map(|_| ())
            .map_err(|e| e.into_error(&format!("making pod {pod_name} own {} {name}", K::NOUN)))
    }

    /// Delete one leftover the garbage pass found, by uid (one made again meanwhile has
    /// another), into `report`.
    async fn collect_one<K: Dependent>(
        &self,
        api: &Api<K>,
        name: &str,
        uid: Option<String>,
        report: &mut GarbageReport,
    ) {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let budget = self.budget();
        match budget
            .run(K::DELETE, true, || api.delete(name, &params))
            .await
        {
            Ok(_) => report
                .deleted
                .push(format!("{} {}/{name}", K::NOUN, self.namespace)),
            // Gone or made again: another reaper, or the garbage collector, was first.
            Err(e) if matches!(e.kube().and_then(api_code), Some(404 | 409)) => {}
            Err(e) => report.errors.push(
                e.into_error(&format!("deleting {} {name}", K::NOUN))
                    .to_string(),
            ),
        }
    }

    /// Create the pod with what it needs made first: its NetworkPolicy (a hermetic
    /// pod), then its env Secret. Until the pod owns them they would outlive any
    /// failure, so every error removes what was made (a retry of the create makes it
    /// again).
    async fn create_with_dependents(
        &self,
        budget: &Budget<'_>,
        spec: &PodSpec,
        manifest: &Pod,
        policy: Option<NetworkPolicy>,
        secret: Option<Secret>,
    ) -> Result<Pod> {
        let mut made: Vec<Made> = Vec::new();
        let result = async {
            if let Some(policy) = &policy {
                let name = network_policy_name(&spec.name);
                match self
                    .create_dependent(&self.policies, budget, spec, policy)
                    .await
                {
                    Ok(uid) => made.push(Made::Policy(name, uid)),
                    Err(e) => {
                        // A lost answer may have created it; not another handle's, though.
                        if e.kind() != ErrorKind::AlreadyExists {
                            made.push(Made::Policy(name, None));
                        }
                        return Err(hermetic_error(e, spec));
                    }
                }
            }
            if let Some(secret) = &secret {
                let name = env_secret_name(&spec.name);
                match self
                    .create_dependent(&self.secrets, budget, spec, secret)
                    .await
                {
                    Ok(uid) => made.push(Made::Secret(name, uid)),
                    Err(e) => {
                        if e.kind() != ErrorKind::AlreadyExists {
                            made.push(Made::Secret(name, None));
                        }
                        return Err(e);
                    }
                }
            }
            let pod = self.create_pod(budget, spec, manifest).await?;
            if secret.is_some() {
                self.own_dependent(&self.secrets, budget, &pod, &env_secret_name(&spec.name))
                    .await?;
            }
            if policy.is_some() {
                self.own_dependent(
                    &self.policies,
                    budget,
                    &pod,
                    &network_policy_name(&spec.name),
                )
                .await
                .map_err(|e| hermetic_error(e, spec))?;
            }
            Ok::<_, Error>(pod)
        }
        .await;
        if result.is_err() {
            for m in made {
                match m {
                    Made::Secret(name, uid) => {
                        self.remove_dependent(&self.secrets, &name, uid).await;
                    }
                    Made::Policy(name, uid) => {
                        self.remove_dependent(&self.policies, &name, uid).await;
                    }
                }
            }
        }
        result
    }

    /// The domain status of `pod`, knowing which deletions were ours.
    /// When a pod marked not ready by the node lifecycle controller will count as on a
    /// lost node, as an instant of this process; `None` when it is not so marked.
    fn node_lost_at(&self, pod: &Pod) -> Option<Instant> {
        let since = crate::status::node_not_ready_since(pod)?;
        let due = since + self.config.node_lost_after;
        let left = due.duration_since(SystemTime::now()).unwrap_or_default();
        Some(Instant::now() + left)
    }

    fn status_of(&self, pod: &Pod) -> PodStatus {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let ours = self
            .own_deletes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(name);
        pod_status_at(pod, ours, SystemTime::now(), self.config.node_lost_after)
    }

    /// Remember that we asked to delete `name`.
    fn note_own_delete(&self, name: &str) {
        let now = std::time::Instant::now();
        let mut own = self.own_deletes.lock().unwrap_or_else(|e| e.into_inner());
        own.retain(|_, at| now.duration_since(*at) < OWN_DELETE_MEMORY);
        own.insert(name.to_owned(), now);
    }

    fn budget(&self) -> Budget<'_> {
        Budget::new(&self.config.request_budget)
    }

    async fn get_pod(&self, budget: &Budget<'_>, name: &str) -> Result<Pod> {
        budget
            .run("get pod", true, || self.api.get(name))
            .await
            .map_err(|e| e.into_error(&format!("getting pod {name}")))
    }

    /// The pod now and the collection version to watch from (`None` when it is gone).
    ///
    /// A list by name rather than a get: the list's version is the store's current one,
    /// while a pod's own version may predate a compaction and make the watch fail with
    /// 410 again and again.
    async fn snapshot(&self, budget: &Budget<'_>, name: &str) -> Result<(Option<Pod>, String)> {
        let params = ListParams::default().fields(&format!("metadata.name={name}"));
        let list = budget
            .run("get pod", true, || self.api.list(&params))
            .await
            .map_err(|e| e.into_error(&format!("getting pod {name}")))?;
        let version = list.metadata.resource_version.clone().unwrap_or_default();
        let pod = list
            .items
            .into_iter()
            .find(|p| p.metadata.name.as_deref() == Some(name));
        Ok((pod, version))
    }

    /// Follow `name` until `cond` holds or is hopeless; `last` keeps the latest status
    /// seen so the caller can return it at its deadline.
    async fn follow(
        &self,
        budget: &Budget<'_>,
        name: &str,
        cond: WaitFor,
        deadline: Instant,
        last: &mut Option<PodStatus>,
    ) -> Result<PodStatus> {
        let done = |s: &PodStatus| s.satisfies(cond) || s.hopeless(cond);
        let gone = |last: &Option<PodStatus>| -> PodStatus {
            let mut s = last.clone().unwrap_or_else(|| PodStatus {
                name: name.to_owned(),
                labels: Default::default(),
                state: PodState::Failed(PodFailure::Deleted),
                message: None,
                created_at: None,
                deleting: true,
            });
            s.state = PodState::Failed(PodFailure::Deleted);
            s.deleting = true;
            s.message = Some(format!("pod {name} was deleted"));
            s
        };
        // (Re)start from a snapshot: the state now and the version to watch from.
        'resync: loop {
            let (pod, mut version) = self.snapshot(budget, name).await?;
            let Some(pod) = pod else {
                return match last {
                    // Seen before, gone now: deleted under us.
                    Some(_) => Ok(gone(last)),
                    None => Err(Error::not_found(format!("pod {name} not found"))),
                };
            };
            let status = self.status_of(&pod);
            *last = Some(status.clone());
            if done(&status) {
                return Ok(status);
            }
            // A pod whose node stopped reporting changes no more: its verdict comes
            // from time passing, so it is looked at again then.
            let mut recheck = self.node_lost_at(&pod);
            let mut last_pod = pod;
            loop {
                let secs = deadline
                    .saturating_duration_since(Instant::now())
                    .min(self.config.watch_timeout)
                    .as_secs()
                    .clamp(1, MAX_WATCH_SECS);
                let params = WatchParams::default()
                    .fields(&format!("metadata.name={name}"))
                    .timeout(secs as u32);
                // A routine renewal costs no budget; a failed watch does (below).
                let stream = match self.api.watch(&params, &version).await {
                    Ok(s) => s,
                    Err(e) if api_code(&e) == Some(410) => {
                        // History compacted: resynchronise with a fresh get.
                        budget.take("watch pod")?;
                        continue 'resync;
                    }
                    Err(e) => {
                        let err = to_error(e, &format!("watching pod {name}"));
                        if !err.is_retryable() {
                            return Err(err);
                        }
                        budget.take("watch pod")?;
                        budget.backoff().await;
                        continue 'resync;
                    }
                };
                let mut stream = std::pin::pin!(stream);
                loop {
                    let event = match recheck {
                        Some(at) => tokio::select! {
                            e = stream.try_next() => e,
                            () = tokio::time::sleep_until(at) => {
                                recheck = None;
                                let status = self.status_of(&last_pod);
                                *last = Some(status.clone());
                                if done(&status) {
                                    return Ok(status);
                                }
                                continue;
                            }
                        },
                        None => stream.try_next().await,
                    };
                    match event {
                        Ok(Some(WatchEvent::Added(p) | WatchEvent::Modified(p))) => {
                            if let Some(v) = &p.metadata.resource_version {
                                version.clone_from(v);
                            }
                            let status = self.status_of(&p);
                            *last = Some(status.clone());
                            if done(&status) {
                                return Ok(status);
                            }
                            recheck = self.node_lost_at(&p);
                            last_pod = p;
                        }
                        Ok(Some(WatchEvent::Deleted(p))) => {
                            *last = Some(self.status_of(&p));
                            return Ok(gone(last));
                        }
                        Ok(Some(WatchEvent::Bookmark(b))) => {
                            version = b.metadata.resource_version;
                        }
                        Ok(Some(WatchEvent::Error(s))) => {
                            budget.take("watch pod")?;
                            if s.code != 410 {
                                budget.backoff().await;
                            }
                            continue 'resync;
                        }
                        // The server ended the watch (its timeout): renew from `version`.
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(pod = name, error = %e, "watch broke; resynchronising");
                            budget.take("watch pod")?;
                            budget.backoff().await;
                            continue 'resync;
                        }
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Pods for KubeBackend {
    fn capabilities(&self) -> PodCapabilities {
        PodCapabilities::none()
            .with_shared_volume_mounts(self.config.artifact_claim.is_some())
            .with_transfer_container(true)
            .with_images(true)
            .with_host_path_mounts(false)
            .with_hermetic(true)
    }

    async fn create(&self, spec: &PodSpec) -> Result<PodStatus> {
        let manifest = pod_manifest(spec, &self.config)?;
        let policy = network_policy_manifest(spec, &self.config)?;
        // Environment values (task params, possibly secrets) go in a Secret made
        // before the pod, never in the pod spec or an exec URL.
        let secret = env_secret_manifest(spec, &self.config);
        let budget = self.budget();
        let pod = self
            .create_with_dependents(&budget, spec, &manifest, policy, secret)
            .await?;
        Ok(self.status_of(&pod))
    }

    async fn get(&self, name: &str) -> Result<PodStatus> {
        let budget = self.budget();
        Ok(self.status_of(&self.get_pod(&budget, name).await?))
    }

    async fn wait(&self, name: &str, opts: &WaitOpts) -> Result<PodStatus> {
        let (cond, timeout) = (opts.cond, opts.timeout);
        let budget = self.budget();
        let deadline = Instant::now() + timeout;
        let mut last = None;
        let outcome = tokio::time::timeout_at(
            deadline,
            self.follow(&budget, name, cond, deadline, &mut last),
        )
        .await;
        let status = match outcome {
            Ok(r) => r?,
            Err(_elapsed) => match last {
                Some(s) => s,
                // The deadline passed before even the first answer: one last look.
                None => self.get(name).await?,
            },
        };
        // A pod that failed before its step: was it a copy that did not match its seal?
        // (One more request, only on this path.)
        if status.state == PodState::Failed(PodFailure::Unknown)
            && let Ok(pod) = self.get_pod(&budget, name).await
            && let Some(e) = crate::status::corrupt_input(&pod)
        {
            return Err(e);
        }
        Ok(status)
    }

    async fn list(&self, selector: &LabelSelector) -> Result<Vec<PodStatus>> {
        let budget = self.budget();
        let params = ListParams::default().labels(&label_selector(selector));
        let list = budget
            .run("list pods", true, || self.api.list(&params))
            .await
            .map_err(|e| e.into_error("listing pods"))?;
        Ok(list.items.iter().map(|p| self.status_of(p)).collect())
    }

    /// Env Secrets and NetworkPolicies whose pod is gone: made by a create that failed
    /// or crashed before the pod owned them (the cluster's garbage collector deletes
    /// owned ones).
    async fn collect_garbage(&self, opts: &GarbageOpts) -> Result<GarbageReport> {
        let sel = format!(
            "{}={}",
            crate::manifest::KUBE_MANAGED_BY,
            label::MANAGED_BY_VALUE
        );
        let params = ListParams::default().labels(&sel);
        let budget = self.budget();
        // Dependents first: a pod created after this listing is in the next one.
        let secrets = budget
            .run("list secrets", true, || self.secrets.list(&params))
            .await
            .map_err(|e| e.into_error("listing env secrets"))?;
        // Without the grant for NetworkPolicies (the chart's `rbac.hermetic` off) no
        // hermetic pod can have made one, so there is nothing to collect.
        let policies = match budget
            .run("list networkpolicies", true, || self.policies.list(&params))
            .await
        {
            Ok(l) => l.items,
            Err(e) if e.kube().and_then(api_code) == Some(403) => {
                tracing::debug!("networkpolicies may not be listed: none to collect");
                Vec::new()
            }
            Err(e) => return Err(e.into_error("listing networkpolicies")),
        };
        let pods: std::collections::HashSet<String> = budget
            .run("list pods", true, || self.api.list(&params))
            .await
            .map_err(|e| e.into_error("listing pods"))?
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        let mut report = GarbageReport::default();
        let left = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
                    suffix: &str| {
            let name = meta.name.as_deref()?;
            let pod = name.strip_suffix(suffix)?;
            // A timestamp after `now` (the API server's clock ahead of ours, or made
            // since the pass began) is young: its pod may be being created.
            let young = meta.creation_timestamp.as_ref().is_some_and(|t| {
                opts.now
                    .duration_since(SystemTime::from(t.0))
                    .unwrap_or_default()
                    < opts.grace
            });
            (!young && !pods.contains(pod)).then(|| (name.to_owned(), meta.uid.clone()))
        };
        for s in &secrets.items {
            if let Some((name, uid)) = left(&s.metadata, "-env") {
                self.collect_one(&self.secrets, &name, uid, &mut report)
                    .await;
            }
        }
        for p in &policies {
            if let Some((name, uid)) = left(&p.metadata, "-hermetic") {
                self.collect_one(&self.policies, &name, uid, &mut report)
                    .await;
            }
        }
        Ok(report)
    }

    async fn delete(&self, name: &str, opts: &DeleteOpts) -> Result<()> {
        let grace = opts.grace;
        self.note_own_delete(name);
        self.oom_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        let budget = self.budget();
        // Whole seconds, rounded up, and at least one: `gracePeriodSeconds: 0` is a force
        // deletion, which removes the object at once while the kubelet may not yet have
        // stopped the containers, so "the pod is gone" would no longer mean "its
        // processes have stopped" (the API itself turns a negative period into 1 s).
        let secs = (grace.as_secs() + u64::from(grace.subsec_nanos() > 0)).max(1);
        let params = DeleteParams {
            grace_period_seconds: Some(u32::try_from(secs).unwrap_or(u32::MAX)),
            ..DeleteParams::default()
        };
        match budget
            .run("delete pod", true, || self.api.delete(name, &params))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kube().and_then(api_code) == Some(404) => Ok(()),
            Err(e) => Err(e.into_error(&format!("deleting pod {name}"))),
        }
    }
}

/// A core label selector in Kubernetes' `key=value,...` form, keys as written on objects.
fn label_selector(selector: &LabelSelector) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{}={v}", crate::manifest::kube_label_key(k)))
        .collect::<Vec<_>>()
        .join(",")
}
