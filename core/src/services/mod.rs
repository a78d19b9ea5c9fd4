//! Services built only on the ports: the step runner, the build runner, the artifact
//! service, the reaper, the worker heartbeat and the worker session that holds them.

pub mod abort;
pub mod artifacts;
pub mod build;
pub mod failure;
pub mod heartbeat;
pub mod pipelines;
pub mod reaper;
pub mod session;
pub mod step;

pub use abort::{AbortHandle, AbortReason, AbortSignal, abort_pair};
pub use artifacts::{ArtifactRequest, ArtifactService, ArtifactVolume};
pub use build::*;
pub use failure::StepFailure;
pub use heartbeat::{Heartbeat, HeartbeatConfig};
pub use pipelines::{PipelineRecorded, PipelineSink, PipelineToSet};
pub use reaper::{ReapReport, Reaper, ReaperConfig};
pub use session::{SessionConfig, WorkerSession};
pub use step::*;

use std::time::Duration;

/// A duration the way people write it: `850ms`, `12.3s`, `4m05s`, `1h02m`.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1_000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}
