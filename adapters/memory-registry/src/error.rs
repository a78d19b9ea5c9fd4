//! The errors this registry returns. It maps no foreign failures: every operation
//! answers in core's kinds directly, with the same words as the Postgres registry.

use jetbridge_core::Error;
use jetbridge_core::names::ArtifactId;

/// No artifact of that id.
pub(crate) fn not_found(id: &ArtifactId) -> Error {
    Error::not_found(format!("artifact {id}"))
}

/// The artifact is being destroyed: nothing may change or reference it any more.
pub(crate) fn destroying(id: &ArtifactId) -> Error {
    Error::conflict(format!("artifact {id} is being destroyed"))
}
