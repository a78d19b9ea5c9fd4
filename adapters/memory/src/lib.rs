//! # jetbridge-memory
//!
//! In-memory fakes of all four ports, deterministic and with fault injection a test can
//! script:
//!
//! - [`MemoryBackend`], [`Pods`](jetbridge_core::ports::Pods) and
//!   [`Exec`](jetbridge_core::ports::Exec). Pods have an in-memory filesystem; commands
//!   run a small `sh`, `tar`, registered [`Program`]s and resource programs per image
//!   (with a built-in `concourse/mock-resource`).
//! - [`MemoryVolumeStore`], [`VolumeStore`](jetbridge_core::ports::VolumeStore) with
//!   safe tar extraction, digests equal to those of a directory store, a capacity limit
//!   and corruption.
//! - [`MemoryRegistry`], [`ArtifactRegistry`](jetbridge_core::ports::ArtifactRegistry)
//!   under one mutex.
//!
//! Every fake has `fail_next(op, n, kind)` (fail before doing anything) and
//! `fail_next_after(op, n, kind)` (do it, then report the error, as a lost response).

mod commands;
mod exec;
mod faults;
mod fs;
mod mock;
mod pods;
mod programs;
#[cfg(test)]
mod proptests;
mod record;
mod registry;
mod shell;
mod tar;
mod volumes;

use std::sync::Arc;

use jetbridge_core::ports::Runtime;

pub use faults::FaultTiming;
pub use fs::PodFs;
pub use pods::{BackendOp, EVICTED_MESSAGE, MemoryBackend, UNSCHEDULABLE_MESSAGE};
pub use programs::{Output, Program, ProgramContext, ProgramFuture, ResourceScripts};
pub use record::{FsEntry, ShellLog, ShellRun};
pub use registry::{MemoryRegistry, RegistryClock, RegistryOp};
pub use volumes::{MemoryVolumeStore, VolumeOp};

/// The four fakes together, with handles kept for fault injection.
#[derive(Debug, Clone)]
pub struct MemoryRuntime {
    /// Pods and exec.
    pub backend: MemoryBackend,
    /// The volume store.
    pub volumes: Arc<MemoryVolumeStore>,
    /// The registry.
    pub registry: Arc<MemoryRegistry>,
}

impl Default for MemoryRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRuntime {
    /// Fresh fakes.
    pub fn new() -> Self {
        MemoryRuntime {
            backend: MemoryBackend::new(),
            volumes: Arc::new(MemoryVolumeStore::new()),
            registry: Arc::new(MemoryRegistry::new()),
        }
    }

    /// The ports bundled as services take them.
    pub fn runtime(&self) -> Runtime {
        Runtime {
            pods: Arc::new(self.backend.clone()),
            exec: Arc::new(self.backend.clone()),
            volumes: Some(self.volumes.clone()),
            registry: self.registry.clone(),
        }
    }
}

// Compile and run the README example as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;
