//! The failure taxonomy: every way a step can end other than success.

use std::time::Duration;

use crate::error::{Error, ErrorKind};
use crate::ports::PodFailure;

/// Why a step did not succeed.
#[derive(Debug, Clone)]
pub enum StepFailure {
    /// The step's own command exited non-zero: the step failed, the platform did not.
    Exited(i32),
    /// No node could take the pod before the scheduling deadline.
    Unschedulable(String),
    /// The image could not be pulled.
    ImagePull(String),
    /// The pod was evicted (node pressure, drain).
    Evicted(String),
    /// The container exceeded its memory limit.
    OomKilled(String),
    /// The pod was deleted by someone else.
    PodDeleted(String),
    /// The pod's node went away.
    NodeLost(String),
    /// The exec stream ended without an exit status.
    ExecLost(String),
    /// The pod did not start in time (after being scheduled).
    StartupTimeout(String),
    /// The step's `timeout` passed.
    TimedOut(Duration),
    /// The volume store is full.
    StorageFull(String),
    /// The build was aborted.
    Aborted,
    /// The worker running the build lost its registration (its heartbeat could not be
    /// renewed in time), so it stopped rather than run unprotected.
    WorkerLost(String),
    /// The step is wrong in a way only visible when it runs (a missing task file...).
    Invalid(String),
    /// Another infrastructure error (registry, API server, store).
    Infrastructure(Error),
}

impl StepFailure {
    /// Whether the step itself failed (its command said so), as opposed to the
    /// platform failing to run it. Decides `on_failure` vs `on_error`.
    pub fn is_step_failure(&self) -> bool {
        matches!(
            self,
            StepFailure::Exited(_) | StepFailure::TimedOut(_) | StepFailure::Invalid(_)
        )
    }

    /// Whether this ended by abort.
    pub fn is_abort(&self) -> bool {
        matches!(self, StepFailure::Aborted)
    }

    /// A short label: `failed`, `evicted`, `oom-killed`, ...
    pub fn label(&self) -> &'static str {
        match self {
            StepFailure::Exited(_) => "failed",
            StepFailure::Unschedulable(_) => "unschedulable",
            StepFailure::ImagePull(_) => "image-pull",
            StepFailure::Evicted(_) => "evicted",
            StepFailure::OomKilled(_) => "oom-killed",
            StepFailure::PodDeleted(_) => "pod-deleted",
            StepFailure::NodeLost(_) => "node-lost",
            StepFailure::ExecLost(_) => "exec-lost",
            StepFailure::StartupTimeout(_) => "startup-timeout",
            StepFailure::TimedOut(_) => "timed-out",
            StepFailure::StorageFull(_) => "storage-full",
            StepFailure::Aborted => "aborted",
            StepFailure::WorkerLost(_) => "worker-lost",
            StepFailure::Invalid(_) => "invalid",
            StepFailure::Infrastructure(_) => "errored",
        }
    }

    /// Classify a pod failure, with the platform's message.
    pub fn from_pod(f: PodFailure, message: Option<&str>) -> Self {
        let m = message.unwrap_or("").to_owned();
        match f {
            PodFailure::Evicted => StepFailure::Evicted(m),
            PodFailure::OomKilled => StepFailure::OomKilled(m),
            PodFailure::Deleted => StepFailure::PodDeleted(m),
            PodFailure::NodeLost => StepFailure::NodeLost(m),
            PodFailure::Disrupted => {
                StepFailure::Evicted(if m.is_empty() { "disrupted".into() } else { m })
            }
            PodFailure::Exited(code) => StepFailure::ExecLost(format!(
                "the pod's main container exited with status {code} while the step ran"
            )),
            PodFailure::Unknown => StepFailure::ExecLost(if m.is_empty() {
                "the pod failed for an unknown reason".into()
            } else {
                m
            }),
        }
    }

    /// How a step ends when its build is stopped for `reason`.
    pub fn from_abort(reason: Option<&super::abort::AbortReason>) -> Self {
        match reason {
            Some(super::abort::AbortReason::WorkerLost(m)) => StepFailure::WorkerLost(m.clone()),
            _ => StepFailure::Aborted,
        }
    }

    /// Classify a port error met while running a step.
    pub fn from_error(e: Error) -> Self {
        match e.kind() {
            ErrorKind::StorageFull => StepFailure::StorageFull(e.message().to_owned()),
            ErrorKind::Lost => StepFailure::ExecLost(e.message().to_owned()),
            ErrorKind::OutOfMemory => StepFailure::OomKilled(e.message().to_owned()),
            // A missing grant is the platform's fault, never the step's: errored, and
            // the message names the permission.
            ErrorKind::PermissionDenied => StepFailure::Infrastructure(e),
            _ => StepFailure::Infrastructure(e),
        }
    }
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn with(f: &mut std::fmt::Formatter<'_>, what: &str, m: &str) -> std::fmt::Result {
            if m.is_empty() {
                f.write_str(what)
            } else {
                write!(f, "{what}: {m}")
            }
        }
        match self {
            StepFailure::Exited(code) => write!(f, "exited with status {code}"),
            StepFailure::Unschedulable(m) => with(f, "unschedulable", m),
            StepFailure::ImagePull(m) => with(f, "image could not be pulled", m),
            StepFailure::Evicted(m) => with(f, "evicted", m),
            StepFailure::OomKilled(m) => with(f, "OOM-killed (exit 137)", m),
            StepFailure::PodDeleted(m) => with(f, "pod deleted", m),
            StepFailure::NodeLost(m) => with(f, "node lost", m),
            StepFailure::ExecLost(m) => with(f, "lost contact with the command", m),
            StepFailure::StartupTimeout(m) => with(f, "pod did not start in time", m),
            StepFailure::TimedOut(d) => {
                write!(f, "timed out after {}", crate::services::fmt_duration(*d))
            }
            StepFailure::StorageFull(m) => with(f, "volume store full", m),
            StepFailure::Aborted => f.write_str("aborted"),
            StepFailure::WorkerLost(m) => with(f, "worker lost", m),
            StepFailure::Invalid(m) => with(f, "invalid", m),
            StepFailure::Infrastructure(e) => write!(f, "errored: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_out_of_memory_is_an_oom_kill_not_an_exit_status() {
        let f = StepFailure::from_error(Error::out_of_memory("killed by the OOM killer"));
        assert!(matches!(f, StepFailure::OomKilled(_)), "{f}");
        assert!(f.to_string().starts_with("OOM-killed (exit 137)"), "{f}");
        assert!(
            !f.is_step_failure(),
            "the platform's limit, not the step's doing"
        );
    }

    #[test]
    fn messages_name_the_cause() {
        assert_eq!(StepFailure::Exited(3).to_string(), "exited with status 3");
        assert!(
            StepFailure::from_pod(PodFailure::Evicted, Some("low memory"))
                .to_string()
                .starts_with("evicted")
        );
        assert!(StepFailure::Exited(1).is_step_failure());
        assert!(!StepFailure::Evicted(String::new()).is_step_failure());
        assert_eq!(
            StepFailure::from_error(Error::lost("stream closed")).label(),
            "exec-lost"
        );
        assert_eq!(
            StepFailure::from_error(Error::storage_full("disk")).label(),
            "storage-full"
        );
    }

    #[test]
    fn a_missing_permission_is_an_infrastructure_error() {
        let f = StepFailure::from_error(Error::permission_denied(
            "pods is forbidden: cannot create resource \"pods\"",
        ));
        assert_eq!(f.label(), "errored");
        assert!(!f.is_step_failure());
        assert!(f.to_string().contains("permission denied"), "{f}");
        assert!(f.to_string().contains("cannot create resource"), "{f}");
    }
}
