//! # jetbridge-kube
//!
//! The [`Pods`](jetbridge_core::ports::Pods) and [`Exec`](jetbridge_core::ports::Exec)
//! ports on Kubernetes, with kube-rs and k8s-openapi: one pod per step, a main
//! container idling on a pause program until commands are exec'd over WebSocket, an
//! optional helper container for artifact streaming, watch-based waiting, and retries of
//! transient API failures within a per-operation request budget. See the README.

mod config;
mod error;
mod exec;
mod manifest;
mod pods;
mod requests;
mod retry;
mod session;
mod status;

pub use config::{
    DEFAULT_EXEC_POD_WATCH_AFTER, DEFAULT_HELPER_IMAGE, DEFAULT_NODE_LOST_AFTER,
    DEFAULT_NON_ROOT_UID, INSTALLED_HELPER, KubeConfig, RUNS_DIR, RequestBudget, STEP_HELPER_PATH,
    TOOLS_DIR,
};
pub use exec::{
    BOUNDED_STDIN_SCRIPT, CD_SCRIPT, EXEC_ID_VAR, KILL_SCRIPT, Launcher, exit_code, wrap_argv,
    wrap_argv_bounded, wrap_argv_with,
};
pub use manifest::{
    HELPER_CONTAINER, MAIN_CONTAINER, PAUSE_INIT_CONTAINER, WORK_ROOT, cache_sub_path,
    pod_manifest, working_dir,
};
pub use pods::KubeBackend;
pub use requests::{RequestCounts, build_client};
pub use status::{pod_status, pod_status_as, pod_status_at};
