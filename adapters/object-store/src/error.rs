//! Mapping object store errors onto [`jetbridge_core::ErrorKind`].

use std::error::Error as StdError;
use std::fmt::Display;
use std::io;

use jetbridge_core::{Error, ErrorKind};

/// Which kind of backend produced an error: it decides how an unclassified error reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// A bucket reached over HTTP (GCS, S3, Azure): unclassified errors are failed
    /// requests after the client's own retries (5xx, connection failures, timeouts).
    Http,
    /// A local directory: errors carry an I/O error.
    Local,
    /// In memory.
    Memory,
}

/// The kind for an object store error from `backend`.
pub(crate) fn kind_of(e: &object_store::Error, backend: Backend) -> ErrorKind {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => ErrorKind::NotFound,
        E::AlreadyExists { .. } => ErrorKind::AlreadyExists,
        E::Precondition { .. } | E::NotModified { .. } => ErrorKind::Conflict,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => ErrorKind::PermissionDenied,
        E::NotSupported { .. } | E::NotImplemented { .. } => ErrorKind::Unsupported,
        E::InvalidPath { .. } | E::UnknownConfigurationKey { .. } => ErrorKind::Invalid,
        E::Generic { source, .. } => generic_kind(source.as_ref(), backend),
        _ => ErrorKind::Other,
    }
}

fn generic_kind(source: &(dyn StdError + Send + Sync + 'static), backend: Backend) -> ErrorKind {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(source);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return io_kind(io);
        }
        cur = e.source();
    }
    match backend {
        // The HTTP client retried what it could (server errors, dropped connections,
        // timeouts) and gave up; object_store does not expose the status of these.
        Backend::Http => ErrorKind::Transient,
        Backend::Local | Backend::Memory => ErrorKind::Other,
    }
}

/// The kind for an I/O error.
pub(crate) fn io_kind(e: &io::Error) -> ErrorKind {
    #[allow(unreachable_patterns)]
    match e.raw_os_error() {
        Some(28 /* ENOSPC */ | 122 /* EDQUOT */) => return ErrorKind::StorageFull,
        Some(5 /* EIO */) => return ErrorKind::Transient,
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorKind::StorageFull,
        io::ErrorKind::TimedOut
        | io::ErrorKind::Interrupted
        | io::ErrorKind::WouldBlock
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionRefused
        | io::ErrorKind::NotConnected
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => ErrorKind::Transient,
        _ => ErrorKind::Other,
    }
}

/// Convert an object store error, naming what was being done. A refusal says so
/// first, with the object and whether the credentials were refused or lack the
/// permission the operation needs (the provider's answer, kept in the source, names
/// it: e.g. GCS's `Permission 'storage.objects.create' denied`).
pub(crate) fn store_err(e: object_store::Error, backend: Backend, what: impl Display) -> Error {
    let kind = kind_of(&e, backend);
    let msg = match &e {
        object_store::Error::PermissionDenied { path, source } => format!(
            "{what}: permission denied: the credentials in use may not do this to object {path:?} of the bucket: {source}"
        ),
        object_store::Error::Unauthenticated { path, source } => format!(
            "{what}: permission denied: the bucket refused the credentials in use (object {path:?}): {source}"
        ),
        _ => format!("{what}: {e}"),
    };
    Error::new(kind, msg).with_source(e)
}

/// Convert a local I/O error (temporary files), naming what was being done.
pub(crate) fn io_err(e: io::Error, what: impl Display) -> Error {
    let kind = io_kind(&e);
    Error::new(kind, format!("{what}: {e}")).with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(source: Box<dyn StdError + Send + Sync>) -> object_store::Error {
        object_store::Error::Generic {
            store: "test",
            source,
        }
    }

    #[test]
    fn variants_map_to_kinds() {
        let nf = object_store::Error::NotFound {
            path: "p".into(),
            source: "gone".into(),
        };
        assert_eq!(kind_of(&nf, Backend::Http), ErrorKind::NotFound);
        let ae = object_store::Error::AlreadyExists {
            path: "p".into(),
            source: "there".into(),
        };
        assert_eq!(kind_of(&ae, Backend::Http), ErrorKind::AlreadyExists);
        let pre = object_store::Error::Precondition {
            path: "p".into(),
            source: "etag".into(),
        };
        assert_eq!(kind_of(&pre, Backend::Http), ErrorKind::Conflict);
        let denied = object_store::Error::PermissionDenied {
            path: "p".into(),
            source: "403".into(),
        };
        let e = store_err(denied, Backend::Http, "uploading vol/data.tar.zst");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(!e.is_retryable());
        assert!(
            e.message()
                .starts_with("uploading vol/data.tar.zst: permission denied"),
            "{e}"
        );
        assert!(e.message().contains("\"p\""), "{e}");
        let unauth = object_store::Error::Unauthenticated {
            path: "p".into(),
            source: "401".into(),
        };
        let e = store_err(unauth, Backend::Http, "listing");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.message().contains("refused the credentials"), "{e}");
    }

    #[test]
    fn generic_errors_depend_on_the_backend_and_io_cause() {
        let e = store_err(generic("503 after retries".into()), Backend::Http, "x");
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert!(e.is_retryable());
        assert_eq!(
            kind_of(&generic("odd".into()), Backend::Local),
            ErrorKind::Other
        );
        let full = io::Error::from_raw_os_error(28);
        assert_eq!(
            kind_of(&generic(Box::new(full)), Backend::Local),
            ErrorKind::StorageFull
        );
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(
            kind_of(&generic(Box::new(reset)), Backend::Local),
            ErrorKind::Transient
        );
    }
}
