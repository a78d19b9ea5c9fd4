//! Operator configuration of the Kubernetes backend.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use jetbridge_core::ports::Resources;
use k8s_openapi::api::core::v1::Toleration;

/// The default helper image: busybox 1.36.1, pinned by the digest of its multi-platform
/// index so a moved tag cannot change what runs next to every step. It provides `sh`,
/// `cp`, `tar` and a static `/bin/busybox`. Operators mirroring images override it.
pub const DEFAULT_HELPER_IMAGE: &str = "docker.io/library/busybox:1.36.1@sha256:73aaf090f3d85aa34ee199857f03fa3a95c8ede2ffd4cc2cdb5b94e566b11662";

/// The user id of the helper container (and of the main container in the restricted
/// profile when [`KubeConfig::run_as_user`] is not set): any non-zero id works; this is
/// the conventional "nonroot" id of distroless images.
pub const DEFAULT_NON_ROOT_UID: i64 = 65532;

/// Where the default pause program is installed inside the main container.
pub const TOOLS_DIR: &str = "/.jetbridge";

/// Where [`KubeConfig::step_helper_image`] holds the static step-pod helper
/// (`bins/jetbridge-helper`; the jetbridge image's Dockerfile puts it there).
pub const STEP_HELPER_PATH: &str = "/usr/local/bin/jetbridge-helper";

/// The step-pod helper as its init container installs it in the main container, in the
/// tools volume at [`TOOLS_DIR`].
pub const INSTALLED_HELPER: &str = "/.jetbridge/jetbridge-helper";

/// Where the step-pod helper records each command's output and exit status (one
/// directory per exec, in an `emptyDir` of the pod), so that a dropped exec stream is
/// re-attached instead of the command being lost or run again.
pub const RUNS_DIR: &str = "/.jetbridge-runs";

/// How long a pod may be marked not ready by the node lifecycle controller before its
/// node is taken as lost (see [`crate::pod_status_at`]).
pub const DEFAULT_NODE_LOST_AFTER: Duration = Duration::from_secs(60);

/// How long an exec runs before the pod is watched beside it (see
/// [`KubeConfig::exec_pod_watch_after`]).
pub const DEFAULT_EXEC_POD_WATCH_AFTER: Duration = Duration::from_secs(10);

/// How many API requests one port operation may make, and how retries back off.
///
/// Every request an operation sends (the first try, retries after transient failures,
/// the `get` of an adoption, the re-`get` after a watch expired) counts against
/// `max_requests`; a wait's routine watch renewals at the server's watch timeout do not
/// (they are bounded by the wait's own timeout). When the budget is spent the operation
/// fails with a retryable `Transient` error rather than hammering the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestBudget {
    /// Requests one operation may send.
    pub max_requests: u32,
    /// Delay before the first retry.
    pub initial_backoff: Duration,
    /// Longest delay between retries (the delay doubles up to this).
    pub max_backoff: Duration,
}

impl Default for RequestBudget {
    fn default() -> Self {
        RequestBudget {
            max_requests: 8,
            initial_backoff: Duration::from_millis(100),
            // With eight requests the retries then span about 11 s (and more when the
            // server asks for it with `Retry-After`), long enough to ride out an API
            // server restart or a burst of throttling.
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Configuration of a [`KubeBackend`](crate::KubeBackend).
#[derive(Debug, Clone, PartialEq)]
pub struct KubeConfig {
    /// Namespace of step pods; `None`: the kubeconfig's (or the in-cluster) namespace.
    pub namespace: Option<String>,
    /// Kubeconfig file; `None`: `KUBECONFIG` or `~/.kube/config`, else in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context; `None`: the current context.
    pub context: Option<String>,
    /// Names of image pull secrets in the namespace.
    pub image_pull_secrets: Vec<String>,
    /// Service account of step pods; `None`: the namespace's default. Its token is never
    /// mounted.
    pub service_account: Option<String>,
    /// Node selector of step pods.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of step pods.
    pub tolerations: Vec<Toleration>,
    /// Resources of steps that ask for none.
    pub default_resources: Resources,
    /// Image of the helper and init containers (a static busybox; digest-pinned).
    pub helper_image: String,
    /// Command that keeps the main container idle until commands are exec'd.
    ///
    /// `None` (the default): an init container copies the helper's static busybox into a
    /// shared `emptyDir` at [`TOOLS_DIR`] with a small `pause` script, and the main
    /// container runs `/.jetbridge/pause`; this works with any step image, including
    /// ones without a shell. `Some(argv)`: run `argv` instead (e.g.
    /// `["sleep", "infinity"]` for images known to have `sleep`), with no init container.
    pub pause_command: Option<Vec<String>>,
    /// The image that holds the static step-pod helper at [`STEP_HELPER_PATH`]: the
    /// jetbridge image of the same version (the chart sets its own image here).
    ///
    /// `Some` (with `pause_command` unset): an init container of this image copies the
    /// helper into the tools volume, the main container's PID 1 is `jetbridge-helper
    /// pause`, and every command of the main container is exec'd through `jetbridge-helper
    /// exec`, which sets its environment, working directory and stdin itself. The step
    /// image then needs no program of its own beyond the command it runs: no `sh`,
    /// `env`, `cat` or `kill`, so distroless and scratch images work. `None` (the
    /// library's default, for operators without the jetbridge image): the busybox pause
    /// of `helper_image`, and commands through the image's `env` and `sh`.
    pub step_helper_image: Option<String>,
    /// Apply the Pod Security "restricted" profile to the main container (non-root,
    /// no privilege escalation, all capabilities dropped, RuntimeDefault seccomp).
    /// The helper containers are always restricted; "baseline" always holds.
    pub restricted: bool,
    /// User id of the main container; in the restricted profile
    /// [`DEFAULT_NON_ROOT_UID`] when unset.
    pub run_as_user: Option<i64>,
    /// Pod `fsGroup` (with `fsGroupChangePolicy: OnRootMismatch`), so non-root steps can
    /// write to volumes that honour it.
    pub fs_group: Option<i64>,
    /// Whether steps that ask to run privileged may do so.
    pub allow_privileged: bool,
    /// Name of the worker that owns the pods; added as the worker label when the spec
    /// has none.
    pub worker: Option<String>,
    /// API request budget and retry backoff per operation.
    pub request_budget: RequestBudget,
    /// Longest single watch request of a wait (renewed from the last version seen);
    /// at most 290 s. Lower it when a proxy cuts long requests.
    pub watch_timeout: Duration,
    /// The PersistentVolumeClaim that holds artifact volumes; when set, pods can mount
    /// [`MountInfo::SharedVolume`](jetbridge_core::ports::MountInfo::SharedVolume) volumes.
    pub artifact_claim: Option<String>,
    /// The PersistentVolumeClaim for step caches; `None`: caches are `emptyDir`s (empty
    /// on every run).
    pub cache_claim: Option<String>,
    /// Annotations of step pods, e.g. `gke-gcsfuse/volumes: "true"` so GKE's GCS FUSE
    /// CSI driver mounts a bucket-backed artifact claim into them.
    pub pod_annotations: BTreeMap<String, String>,
    /// How long a pod may stay marked not ready by the node lifecycle controller
    /// (`Ready=False` with `ContainersReady=True`) before its node is taken as lost and
    /// the step fails `node lost`; default [`DEFAULT_NODE_LOST_AFTER`].
    pub node_lost_after: Duration,
    /// How long an exec runs before its pod is watched beside it, so that a command on
    /// a node that vanished ends as soon as the pod says so instead of hanging; default
    /// [`DEFAULT_EXEC_POD_WATCH_AFTER`]. Shorter execs cost no watch.
    pub exec_pod_watch_after: Duration,
    /// Where a container's out-of-memory kill counter (`oom_kill N`) is read after a
    /// command dies by SIGKILL (exit 137), first file that exists: cgroup v2's
    /// `memory.events`, then cgroup v1's `memory.oom_control`. Relative paths are from
    /// the container's working directory.
    pub oom_counter_files: Vec<String>,
}

impl Default for KubeConfig {
    fn default() -> Self {
        KubeConfig {
            namespace: None,
            kubeconfig: None,
            context: None,
            image_pull_secrets: Vec::new(),
            service_account: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            default_resources: Resources::default(),
            helper_image: DEFAULT_HELPER_IMAGE.to_owned(),
            pause_command: None,
            step_helper_image: None,
            restricted: false,
            run_as_user: None,
            fs_group: None,
            allow_privileged: false,
            worker: None,
            request_budget: RequestBudget::default(),
            watch_timeout: Duration::from_secs(290),
            artifact_claim: None,
            cache_claim: None,
            pod_annotations: BTreeMap::new(),
            node_lost_after: DEFAULT_NODE_LOST_AFTER,
            exec_pod_watch_after: DEFAULT_EXEC_POD_WATCH_AFTER,
            oom_counter_files: vec![
                "/sys/fs/cgroup/memory.events".to_owned(),
                "/sys/fs/cgroup/memory/memory.oom_control".to_owned(),
            ],
        }
    }
}
