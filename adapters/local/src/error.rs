//! The mapping of I/O errors onto [`jetbridge_core::ErrorKind`].

use jetbridge_core::Error;

/// Whether an I/O error means "not there".
pub(crate) fn is_gone(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

/// Convert an I/O error into a port error of the right kind.
pub(crate) fn io_error(e: std::io::Error, what: impl std::fmt::Display) -> Error {
    use std::io::ErrorKind as K;
    let err = match e.kind() {
        K::NotFound => Error::not_found(format!("{what}: {e}")),
        K::AlreadyExists => Error::already_exists(format!("{what}: {e}")),
        K::StorageFull | K::QuotaExceeded => Error::storage_full(format!("{what}: {e}")),
        K::InvalidInput | K::InvalidFilename => Error::invalid(format!("{what}: {e}")),
        K::PermissionDenied | K::ReadOnlyFilesystem => {
            Error::permission_denied(format!("{what}: {e}"))
        }
        K::Interrupted | K::TimedOut | K::WouldBlock => Error::transient(format!("{what}: {e}")),
        _ => Error::other(format!("{what}: {e}")),
    };
    err.with_source(e)
}
