//! The one error type every port and service returns.
//!
//! Callers act on [`ErrorKind`] and [`Error::is_retryable`], never on message text.

use std::fmt;
use std::sync::Arc;

/// What went wrong, in terms a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The thing asked for does not exist.
    NotFound,
    /// A thing with that name or id exists already (and is not ours to adopt).
    AlreadyExists,
    /// The request contradicts the current state (e.g. writing a sealed volume).
    Conflict,
    /// The adapter cannot do this at all; see its capabilities.
    Unsupported,
    /// A passing failure (network, 5xx, lost connection): retrying may help.
    Transient,
    /// The storage behind a volume store is full.
    StorageFull,
    /// A stream or a process ended without telling us how it ended.
    Lost,
    /// The input is not valid (bad name, bad tar entry, bad configuration).
    Invalid,
    /// A deadline passed.
    Timeout,
    /// Stored data does not match its recorded digest.
    Corrupt,
    /// The caller's identity lacks a permission (RBAC, bucket IAM, database grants);
    /// the message says which. Permanent until an operator grants it.
    PermissionDenied,
    /// A command was killed by the out-of-memory killer: its memory limit is too small
    /// for it. Said by an exec whose process alone was killed (the pod itself shows no
    /// `OOMKilled`), so that the step is reported OOM-killed, not as its exit status.
    OutOfMemory,
    /// The receiver is at a limit it was configured with (a full build queue): the same
    /// call may succeed once work has drained, so it is retryable.
    Busy,
    /// Anything else; permanent.
    Other,
}

impl ErrorKind {
    /// Whether a retry of the same call can help by default.
    pub fn default_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Transient | ErrorKind::Timeout | ErrorKind::Busy
        )
    }

    /// A short lowercase name, stable for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Transient => "transient",
            ErrorKind::StorageFull => "storage full",
            ErrorKind::Lost => "lost",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::OutOfMemory => "out of memory",
            ErrorKind::Busy => "busy",
            ErrorKind::Other => "error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from a port, an adapter or a service.
///
/// Cheap to clone, so fakes can hand out the same injected error more than once.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    retryable: bool,
    #[source]
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind`, retryable when the kind usually is.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            retryable: kind.default_retryable(),
            source: None,
        }
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Override whether retrying can help.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Prefix the message with context, keeping kind and retryability.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message (without the kind).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retrying the same call can help.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// Shorthand for [`ErrorKind::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    /// Shorthand for [`ErrorKind::AlreadyExists`].
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyExists, message)
    }
    /// Shorthand for [`ErrorKind::Conflict`].
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }
    /// Shorthand for [`ErrorKind::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
    /// Shorthand for [`ErrorKind::Transient`].
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }
    /// Shorthand for [`ErrorKind::OutOfMemory`].
    pub fn out_of_memory(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::OutOfMemory, message)
    }

    /// Shorthand for [`ErrorKind::Busy`].
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Busy, message)
    }

    /// Shorthand for [`ErrorKind::StorageFull`].
    pub fn storage_full(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::StorageFull, message)
    }
    /// Shorthand for [`ErrorKind::Lost`].
    pub fn lost(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Lost, message)
    }
    /// Shorthand for [`ErrorKind::Invalid`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }
    /// Shorthand for [`ErrorKind::Timeout`].
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }
    /// Shorthand for [`ErrorKind::Corrupt`].
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }
    /// Shorthand for [`ErrorKind::PermissionDenied`].
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PermissionDenied, message)
    }
    /// Shorthand for [`ErrorKind::Other`].
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Other, message)
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_is_retryable_and_invalid_is_not() {
        assert!(Error::transient("x").is_retryable());
        assert!(!Error::invalid("x").is_retryable());
        assert!(Error::invalid("x").with_retryable(true).is_retryable());
    }

    #[test]
    fn permission_denied_is_permanent() {
        let e = Error::permission_denied("pods \"p\" is forbidden");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(!e.is_retryable());
        assert_eq!(e.kind().as_str(), "permission denied");
    }

    #[test]
    fn context_keeps_kind() {
        let e = Error::not_found("volume v1").context("reading input repo");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.to_string(), "not found: reading input repo: volume v1");
    }
}
