//! The ports. Adapters implement them; services use them as `Arc<dyn Port>`.
//!
//! Every port is an object-safe async trait, is implemented for `Arc<T>` and `Box<T>`
//! of an implementation, and reports what it can do through a small capabilities
//! value so callers (and the conformance suite) can pick what applies.

pub mod bridge;
mod exec;
mod pods;
mod queue;
mod registry;
pub mod volume_support;
mod volumes;

pub use exec::*;
pub use pods::*;
pub use queue::*;
pub use registry::*;
pub use volumes::*;

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

/// A stream of bytes (tar archives, stdin) that can fail midway.
pub type ByteStream = Pin<Box<dyn Stream<Item = crate::Result<Bytes>> + Send + 'static>>;

/// A [`ByteStream`] over bytes already in memory.
pub fn bytes_stream(data: impl Into<Bytes>) -> ByteStream {
    let data: Bytes = data.into();
    Box::pin(futures::stream::once(async move { Ok(data) }))
}

/// Read a whole [`ByteStream`] into memory (tests and small payloads only).
pub async fn collect_stream(mut s: ByteStream) -> crate::Result<Vec<u8>> {
    use futures::StreamExt;
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// The four ports bundled, as the services take them.
#[derive(Clone)]
pub struct Runtime {
    /// Where step pods run.
    pub pods: std::sync::Arc<dyn Pods>,
    /// How commands run inside them.
    pub exec: std::sync::Arc<dyn Exec>,
    /// Where artifacts live; `None` when no store is configured.
    pub volumes: Option<std::sync::Arc<dyn VolumeStore>>,
    /// What knows every artifact.
    pub registry: std::sync::Arc<dyn ArtifactRegistry>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("pods", &self.pods.capabilities())
            .field("exec", &self.exec.capabilities())
            .field("volumes", &self.volumes.as_ref().map(|v| v.capabilities()))
            .field("registry", &self.registry.capabilities())
            .finish()
    }
}
