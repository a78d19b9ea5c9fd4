use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::volumes::MountInfo;
use crate::Result;
use crate::digest::Digest;

/// What a [`Pods`] adapter can do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PodCapabilities {
    /// Pods can mount [`MountInfo::HostPath`] volumes.
    pub host_path_mounts: bool,
    /// Pods can mount [`MountInfo::SharedVolume`] volumes.
    pub shared_volume_mounts: bool,
    /// Pods have a transfer container ([`Container::Transfer`](super::Container::Transfer)) for tar streaming.
    pub transfer_container: bool,
    /// The adapter honours container images (a local backend does not).
    pub images: bool,
    /// The adapter can run a pod without network ([`PodSpec::hermetic`]); one that
    /// cannot refuses such a pod rather than run it with the network.
    pub hermetic: bool,
}

impl PodCapabilities {
    /// All capabilities off.
    pub fn none() -> Self {
        Self::default()
    }
    /// Set [`Self::host_path_mounts`].
    pub fn with_host_path_mounts(mut self, v: bool) -> Self {
        self.host_path_mounts = v;
        self
    }
    /// Set [`Self::shared_volume_mounts`].
    pub fn with_shared_volume_mounts(mut self, v: bool) -> Self {
        self.shared_volume_mounts = v;
        self
    }
    /// Set [`Self::transfer_container`].
    pub fn with_transfer_container(mut self, v: bool) -> Self {
        self.transfer_container = v;
        self
    }
    /// Set [`Self::images`].
    pub fn with_images(mut self, v: bool) -> Self {
        self.images = v;
        self
    }
    /// Set [`Self::hermetic`].
    pub fn with_hermetic(mut self, v: bool) -> Self {
        self.hermetic = v;
        self
    }
    /// Whether pods can mount `m` directly.
    pub fn can_mount(&self, m: &MountInfo) -> bool {
        match m {
            MountInfo::HostPath { .. } => self.host_path_mounts,
            MountInfo::SharedVolume { .. } => self.shared_volume_mounts,
        }
    }
}

/// CPU and memory for a pod's main container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Resources {
    /// CPU request and limit, in millicores.
    pub cpu_millis: Option<u64>,
    /// Memory request and limit, in bytes.
    pub memory_bytes: Option<u64>,
}

impl Resources {
    /// CPU (millicores) and memory (bytes); `None` leaves either to the platform.
    pub fn new(cpu_millis: Option<u64>, memory_bytes: Option<u64>) -> Self {
        Resources {
            cpu_millis,
            memory_bytes,
        }
    }
}

/// What appears at a path of the pod's working directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// An empty writable directory (filled by streaming, or an output collected by streaming).
    Empty,
    /// A private writable copy of a sealed volume: changes never reach the volume. The
    /// adapter checks the copy against [`CopySource::digest`] before the step can see
    /// it, and fails with `Corrupt` (naming the artifact and the build) on a mismatch.
    CopyOf(CopySource),
    /// The volume itself, writable, for outputs written in place (no copy).
    WriteInto(MountInfo),
    /// A cache kept between runs of the same step, keyed by `key`.
    Cache {
        /// Stable key: pipeline, job, step and cache path.
        key: String,
    },
}

/// What a [`MountSource::CopyOf`] copies, and what the copy must match.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CopySource {
    /// Where the sealed volume is.
    pub mount: MountInfo,
    /// The sealed tree digest ([`crate::digest::TreeDigest`]) the copy must have.
    pub digest: Digest,
    /// The artifact's name, for messages.
    pub artifact: String,
    /// The build the step belongs to, for messages.
    pub build: String,
}

impl CopySource {
    /// A copy of `mount` that must match `digest`.
    pub fn new(mount: MountInfo, digest: Digest) -> Self {
        CopySource {
            mount,
            digest,
            artifact: String::new(),
            build: String::new(),
        }
    }

    /// Name the artifact and the build in messages.
    pub fn with_artifact(mut self, artifact: impl Into<String>, build: impl Into<String>) -> Self {
        self.artifact = artifact.into();
        self.build = build.into();
        self
    }

    /// The `Corrupt` error for a copy that does not match: names the artifact and the
    /// build; `detail` says what differed.
    pub fn corrupt(&self, detail: impl std::fmt::Display) -> crate::Error {
        Self::corrupt_error(&self.artifact, &self.build, detail)
    }

    /// [`Self::corrupt`] for an adapter that has only the names (e.g. read back from
    /// a pod).
    pub fn corrupt_error(
        artifact: &str,
        build: &str,
        detail: impl std::fmt::Display,
    ) -> crate::Error {
        crate::Error::corrupt(format!(
            "input artifact {artifact:?} of build {build:?} changed after it was sealed: {detail}"
        ))
    }
}

/// A directory in the pod's working directory.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Mount {
    /// Path relative to the working directory (`repo`, `out/bin`); no `..`.
    pub path: String,
    /// What appears there.
    pub source: MountSource,
}

impl Mount {
    /// `source` at `path` (relative to the working directory).
    pub fn new(path: impl Into<String>, source: MountSource) -> Self {
        Mount {
            path: path.into(),
            source,
        }
    }
}

/// A pod to create: one main container that stays idle until commands are exec'd.
///
/// `#[non_exhaustive]`: build it with [`PodSpec::new`] and the `with_*` methods (or
/// set the public fields), so that a new field is not a breaking change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PodSpec {
    /// DNS-1123 name; see [`crate::names`].
    pub name: String,
    /// Labels, including [`crate::names::label::HANDLE`] which makes create idempotent.
    pub labels: BTreeMap<String, String>,
    /// Image of the main container (ignored where [`PodCapabilities::images`] is false).
    pub image: String,
    /// Environment of the main container, and of every command exec'd in it. May hold
    /// secrets (task params): adapters keep the values out of logs and of anything
    /// readable without secret access (the Kubernetes adapter puts them in a Secret).
    pub env: BTreeMap<String, String>,
    /// Directories under the working directory.
    pub mounts: Vec<Mount>,
    /// Resources of the main container.
    pub resources: Resources,
    /// Run privileged (only when the step asks and the operator allows it).
    pub privileged: bool,
    /// Whether the pod needs the transfer container ([`Container::Transfer`](super::Container::Transfer)) for tar
    /// streaming.
    pub transfer: bool,
    /// Cut the pod off the network before its command runs (a task's `hermetic: true`).
    /// An adapter without [`PodCapabilities::hermetic`] refuses such a pod
    /// (`Unsupported`); it never runs it with the network.
    pub hermetic: bool,
}

impl PodSpec {
    /// A spec with only a name, labels and an image.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        PodSpec {
            name: name.into(),
            labels: BTreeMap::new(),
            image: image.into(),
            env: BTreeMap::new(),
            mounts: Vec::new(),
            resources: Resources::default(),
            privileged: false,
            transfer: false,
            hermetic: false,
        }
    }

    /// Add a label.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Add an environment variable (may be a secret; see [`Self::env`]).
    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    /// Add a mount.
    pub fn with_mount(mut self, mount: Mount) -> Self {
        self.mounts.push(mount);
        self
    }

    /// Set the resources.
    pub fn with_resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }

    /// Run privileged.
    pub fn with_privileged(mut self, privileged: bool) -> Self {
        self.privileged = privileged;
        self
    }

    /// Ask for the transfer container.
    pub fn with_transfer(mut self, transfer: bool) -> Self {
        self.transfer = transfer;
        self
    }

    /// Cut the pod off the network ([`Self::hermetic`]).
    pub fn with_hermetic(mut self, hermetic: bool) -> Self {
        self.hermetic = hermetic;
        self
    }

    /// The handle label, if set.
    pub fn handle(&self) -> Option<&str> {
        self.labels
            .get(crate::names::label::HANDLE)
            .map(String::as_str)
    }
}

/// Why a pod is not running yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingReason {
    /// Waiting for a node.
    Scheduling,
    /// No node can take it (resources, selectors, taints).
    Unschedulable,
    /// Scheduled; pulling images or starting containers.
    ContainerCreating,
    /// The image cannot be pulled (`ErrImagePull`, `ImagePullBackOff`, bad name).
    ImagePullFailed,
}

/// Why a pod failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodFailure {
    /// Evicted by the kubelet or the eviction API (node pressure, drain).
    Evicted,
    /// A container was killed for exceeding its memory limit.
    OomKilled,
    /// The pod was deleted by someone else.
    Deleted,
    /// The pod's node went away.
    NodeLost,
    /// Another disruption (preemption, `DisruptionTarget`).
    Disrupted,
    /// The main container exited by itself with this code.
    Exited(i32),
    /// The adapter cannot tell.
    Unknown,
}

/// Where a pod is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    /// Not running yet.
    Pending(PendingReason),
    /// Running: commands can be exec'd.
    Running,
    /// Ended by itself successfully.
    Succeeded,
    /// Ended for this reason.
    Failed(PodFailure),
}

impl PodState {
    /// Whether the pod can never run (again).
    pub fn is_terminal(&self) -> bool {
        matches!(self, PodState::Succeeded | PodState::Failed(_))
    }
}

/// A pod as the adapter sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodStatus {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// State.
    pub state: PodState,
    /// The platform's own words about the state (scheduler or kubelet message).
    pub message: Option<String>,
    /// When the pod was created.
    pub created_at: Option<SystemTime>,
    /// Whether deletion has started.
    pub deleting: bool,
}

/// What [`Pods::wait`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    /// Placed on a node (or further).
    Scheduled,
    /// Running (or terminated).
    Running,
    /// Terminated.
    Terminated,
}

impl PodStatus {
    /// Whether the condition holds now.
    pub fn satisfies(&self, cond: WaitFor) -> bool {
        match cond {
            WaitFor::Scheduled => !matches!(
                self.state,
                PodState::Pending(PendingReason::Scheduling | PendingReason::Unschedulable)
            ),
            WaitFor::Running => matches!(
                self.state,
                PodState::Running | PodState::Succeeded | PodState::Failed(_)
            ),
            WaitFor::Terminated => self.state.is_terminal(),
        }
    }

    /// Whether the condition can no longer come true without outside help.
    pub fn hopeless(&self, cond: WaitFor) -> bool {
        match cond {
            WaitFor::Scheduled | WaitFor::Running => {
                self.state.is_terminal()
                    || self.state == PodState::Pending(PendingReason::ImagePullFailed)
            }
            WaitFor::Terminated => false,
        }
    }
}

/// Label equality selector: every pair must match.
pub type LabelSelector = BTreeMap<String, String>;

/// Options of [`Pods::collect_garbage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GarbageOpts {
    /// Leave alone what is younger than this: its pod may be being created.
    pub grace: Duration,
    /// Now, by the caller's clock.
    pub now: SystemTime,
}

impl GarbageOpts {
    /// Collect what is older than `grace` at `now`.
    pub fn new(grace: Duration, now: SystemTime) -> Self {
        GarbageOpts { grace, now }
    }
}

/// What [`Pods::collect_garbage`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GarbageReport {
    /// What was deleted, as the adapter names it (e.g. `secret ns/name`).
    pub deleted: Vec<String>,
    /// Errors met; the pass goes on after each.
    pub errors: Vec<String>,
}

/// Options of [`Pods::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WaitOpts {
    /// What to wait for.
    pub cond: WaitFor,
    /// How long to wait at most.
    pub timeout: Duration,
}

impl WaitOpts {
    /// Wait for `cond`, at most `timeout`.
    pub fn new(cond: WaitFor, timeout: Duration) -> Self {
        WaitOpts { cond, timeout }
    }
}

/// Options of [`Pods::delete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeleteOpts {
    /// How long processes get between the polite signal and the kill.
    pub grace: Duration,
}

impl DeleteOpts {
    /// Delete with a grace period of `grace`.
    pub fn grace(grace: Duration) -> Self {
        DeleteOpts { grace }
    }
}

/// Options of [`Pods::stop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StopOpts {
    /// How long processes get between the polite signal and the kill.
    pub grace: Duration,
}

impl StopOpts {
    /// Stop with a grace period of `grace`.
    pub fn grace(grace: Duration) -> Self {
        StopOpts { grace }
    }
}

/// Creates, watches and deletes step pods.
#[async_trait]
pub trait Pods: Send + Sync {
    /// What this adapter can do.
    fn capabilities(&self) -> PodCapabilities;

    /// Create a pod. Idempotent on name: if a pod of that name exists with the same
    /// handle label it is adopted and its status returned; with another handle,
    /// [`ErrorKind::AlreadyExists`](crate::ErrorKind::AlreadyExists).
    async fn create(&self, spec: &PodSpec) -> Result<PodStatus>;

    /// The pod's status now; `NotFound` if there is none.
    async fn get(&self, name: &str) -> Result<PodStatus>;

    /// Wait until `opts.cond` holds or can no longer hold, or until `opts.timeout`; return the
    /// status then (the caller checks [`PodStatus::satisfies`]). A pod that vanishes
    /// while waited on is reported as `Failed(Deleted)`. Event-driven, never a busy poll.
    async fn wait(&self, name: &str, opts: &WaitOpts) -> Result<PodStatus>;

    /// Pods whose labels match every pair of `selector`.
    async fn list(&self, selector: &LabelSelector) -> Result<Vec<PodStatus>>;

    /// Delete a pod with a grace period (`opts.grace`); processes are killed. Deleting
    /// a pod that is gone already succeeds.
    async fn delete(&self, name: &str, opts: &DeleteOpts) -> Result<()>;

    /// End every process of a pod but keep the pod, for inspection (kept pods). Returns
    /// `false` where the platform cannot do that (then callers delete the pod); returns
    /// once the processes are gone.
    async fn stop(&self, name: &str, opts: &StopOpts) -> Result<bool> {
        let _ = (name, opts);
        Ok(false)
    }

    /// Delete what the adapter keeps beside pods (e.g. the Kubernetes adapter's env
    /// Secrets) whose pod is gone and that is older than `opts.grace`: what a create
    /// that failed or crashed half-way left. Safe to run on several replicas at once.
    /// Adapters that keep nothing beside pods collect nothing (the default).
    async fn collect_garbage(&self, opts: &GarbageOpts) -> Result<GarbageReport> {
        let _ = opts;
        Ok(GarbageReport::default())
    }
}

macro_rules! forward_pods {
    ($ty:ty) => {
        #[async_trait]
        impl<T: Pods + ?Sized> Pods for $ty {
            fn capabilities(&self) -> PodCapabilities {
                (**self).capabilities()
            }
            async fn create(&self, spec: &PodSpec) -> Result<PodStatus> {
                (**self).create(spec).await
            }
            async fn get(&self, name: &str) -> Result<PodStatus> {
                (**self).get(name).await
            }
            async fn wait(&self, name: &str, opts: &WaitOpts) -> Result<PodStatus> {
                (**self).wait(name, opts).await
            }
            async fn list(&self, selector: &LabelSelector) -> Result<Vec<PodStatus>> {
                (**self).list(selector).await
            }
            async fn delete(&self, name: &str, opts: &DeleteOpts) -> Result<()> {
                (**self).delete(name, opts).await
            }
            async fn stop(&self, name: &str, opts: &StopOpts) -> Result<bool> {
                (**self).stop(name, opts).await
            }
            async fn collect_garbage(&self, opts: &GarbageOpts) -> Result<GarbageReport> {
                (**self).collect_garbage(opts).await
            }
        }
    };
}
forward_pods!(Arc<T>);
forward_pods!(Box<T>);
