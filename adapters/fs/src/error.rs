//! Mapping of filesystem errors to [`jetbridge_core::ErrorKind`].

use std::fmt::Display;
use std::io;

use jetbridge_core::{Error, ErrorKind};

/// The kind a caller should act on for an I/O error.
///
/// The raw OS error decides where there is one (the std mapping of a few codes
/// differs between Rust versions); the std kind is the fallback.
pub(crate) fn kind_of(e: &io::Error) -> ErrorKind {
    if let Some(code) = e.raw_os_error() {
        return match code {
            libc::ENOSPC | libc::EDQUOT => ErrorKind::StorageFull,
            libc::ENOENT => ErrorKind::NotFound,
            // The store's directory (or claim) is not ours to write: a mount option, a
            // claim's fsGroup, a read-only mount. The message names the operation and path.
            libc::EACCES | libc::EPERM | libc::EROFS => ErrorKind::PermissionDenied,
            // A FUSE daemon restarting, an NFS server hiccup, a timed-out object request:
            // the same call can succeed later.
            libc::EIO
            | libc::ETIMEDOUT
            | libc::EAGAIN
            | libc::EINTR
            | libc::ESTALE
            | libc::ENOTCONN => ErrorKind::Transient,
            _ => ErrorKind::Other,
        };
    }
    match e.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            ErrorKind::PermissionDenied
        }
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorKind::StorageFull,
        io::ErrorKind::TimedOut | io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => {
            ErrorKind::Transient
        }
        _ => ErrorKind::Other,
    }
}

/// Convert an I/O error, naming what was being done (never file contents).
pub(crate) fn io_err(e: io::Error, what: impl Display) -> Error {
    let kind = kind_of(&e);
    Error::new(kind, format!("{what}: {e}")).with_source(e)
}

/// `.map_err(ctx("doing x"))` shorthand.
pub(crate) fn ctx<D: Display>(what: D) -> impl FnOnce(io::Error) -> Error {
    move |e| io_err(e, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_codes_map_to_kinds() {
        let k = |c| kind_of(&io::Error::from_raw_os_error(c));
        assert_eq!(k(libc::ENOSPC), ErrorKind::StorageFull);
        assert_eq!(k(libc::EDQUOT), ErrorKind::StorageFull);
        assert_eq!(k(libc::ENOENT), ErrorKind::NotFound);
        assert_eq!(k(libc::EACCES), ErrorKind::PermissionDenied);
        assert_eq!(k(libc::EPERM), ErrorKind::PermissionDenied);
        assert_eq!(k(libc::EROFS), ErrorKind::PermissionDenied);
        assert_eq!(k(libc::EBADF), ErrorKind::Other);
        assert_eq!(k(libc::EIO), ErrorKind::Transient);
        assert_eq!(k(libc::ETIMEDOUT), ErrorKind::Transient);
        assert_eq!(k(libc::EAGAIN), ErrorKind::Transient);
        assert!(io_err(io::Error::from_raw_os_error(libc::EIO), "x").is_retryable());
        assert!(!io_err(io::Error::from_raw_os_error(libc::EACCES), "x").is_retryable());
        assert_eq!(
            kind_of(&io::Error::new(io::ErrorKind::NotFound, "gone")),
            ErrorKind::NotFound
        );
    }
}
