//! Mapping of diesel, connection and pool failures onto the core error kinds.
//!
//! diesel-async reports a database error as a [`DatabaseErrorKind`] and drops the raw
//! SQLSTATE, so the classification works on that kind, on the constraint name the server
//! reports (structured data, not message text), and on whether the connection is still
//! usable afterwards (probed by the caller, see `PgRegistry::classify`).

use diesel::ConnectionError;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::PoolError;
use jetbridge_core::{Error, ErrorKind};

/// Name of the unique constraint on `artifacts.volume` (see the migration).
pub(crate) const VOLUME_UNIQUE: &str = "artifacts_volume_key";

/// A failure inside one registry operation, before it becomes a core [`Error`].
#[derive(Debug)]
pub(crate) enum Fail {
    /// Anything diesel reported.
    Db(DieselError),
    /// A decision of the operation itself (NotFound, Conflict, ...).
    Port(Error),
}

impl From<DieselError> for Fail {
    fn from(e: DieselError) -> Self {
        Fail::Db(e)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Port(e)
    }
}

/// Whether a database error leaves the question open whether the connection survived:
/// such errors are classified by probing the connection.
pub(crate) fn needs_probe(e: &DieselError) -> bool {
    matches!(e, DieselError::DatabaseError(DatabaseErrorKind::Unknown, _))
}

/// The server's message for SQLSTATE 42501 (insufficient_privilege), e.g. `permission
/// denied for table artifacts`. diesel-async maps 42501 to `Unknown` and drops the code
/// (diesel-async src/pg/error_helper.rs), so the server's wording is all that is left;
/// it is English unless the server's `lc_messages` says otherwise, and then the error
/// stays `Other`.
fn insufficient_privilege(kind: &DatabaseErrorKind, message: &str) -> bool {
    matches!(kind, DatabaseErrorKind::Unknown)
        && (message.starts_with("permission denied") || message.starts_with("must be owner of"))
}

/// Map a diesel error. `connection_lost` is the result of probing the connection after
/// an error for which [`needs_probe`] is true (false otherwise).
pub(crate) fn from_diesel(e: DieselError, op: &str, connection_lost: bool) -> Error {
    if let DieselError::DatabaseError(kind, info) = &e
        && insufficient_privilege(kind, info.message())
    {
        // The server's message names the object (table, schema, sequence); no values.
        return Error::permission_denied(format!(
            "postgres registry: {op} failed: {} (grant the registry's database role the privileges the migrations' tables need)",
            info.message()
        ))
        .with_source(DieselSource(e.to_string()));
    }
    let kind = match &e {
        DieselError::DatabaseError(kind, info) => match kind {
            DatabaseErrorKind::UniqueViolation => {
                if info.constraint_name() == Some(VOLUME_UNIQUE) {
                    ErrorKind::AlreadyExists
                } else {
                    ErrorKind::Conflict
                }
            }
            // 40001: the transaction lost a race; running it again is the cure.
            DatabaseErrorKind::SerializationFailure => ErrorKind::Transient,
            // The socket is gone or could not be written: a fresh connection may work.
            DatabaseErrorKind::UnableToSendCommand | DatabaseErrorKind::ClosedConnection => {
                ErrorKind::Transient
            }
            DatabaseErrorKind::CheckViolation | DatabaseErrorKind::NotNullViolation => {
                ErrorKind::Invalid
            }
            // Includes 57P01 (admin shutdown) and a server crash: the server ends the
            // session after reporting them, which the probe sees.
            _ if connection_lost => ErrorKind::Transient,
            _ => ErrorKind::Other,
        },
        DieselError::NotFound => ErrorKind::NotFound,
        // The transaction could not be rolled back or committed cleanly: the connection
        // is discarded by the pool and the transaction did not commit.
        DieselError::BrokenTransactionManager
        | DieselError::RollbackErrorOnCommit { .. }
        | DieselError::AlreadyInTransaction
        | DieselError::NotInTransaction => ErrorKind::Transient,
        DieselError::DeserializationError(_) => ErrorKind::Corrupt,
        DieselError::SerializationError(_) | DieselError::InvalidCString(_) => ErrorKind::Invalid,
        _ => ErrorKind::Other,
    };
    Error::new(kind, format!("postgres registry: {op} failed"))
        .with_source(DieselSource(e.to_string()))
}

/// Map a connection (or pool connection) failure.
pub(crate) fn from_connection(e: ConnectionError, op: &str) -> Error {
    // No CONNECT privilege on the database (42501 `permission denied for database`).
    if let ConnectionError::CouldntSetupConfiguration(DieselError::DatabaseError(kind, info)) = &e
        && insufficient_privilege(kind, info.message())
    {
        return Error::permission_denied(format!(
            "postgres registry: {op}: cannot connect: {}",
            info.message()
        ))
        .with_source(DieselSource(e.to_string()));
    }
    let kind = match &e {
        ConnectionError::InvalidConnectionUrl(_) | ConnectionError::InvalidCString(_) => {
            ErrorKind::Invalid
        }
        // The server answered with an error (bad password, unknown database): permanent.
        ConnectionError::CouldntSetupConfiguration(DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            _,
        )) => ErrorKind::Other,
        // Refused, reset, unreachable: the server may come back.
        _ => ErrorKind::Transient,
    };
    Error::new(kind, format!("postgres registry: {op}: cannot connect"))
        .with_source(DieselSource(e.to_string()))
}

/// Map a failure to get a connection from the pool.
pub(crate) fn from_pool(e: bb8::RunError<PoolError>, op: &str) -> Error {
    match e {
        bb8::RunError::TimedOut => Error::transient(format!(
            "postgres registry: {op}: timed out waiting for a pooled connection"
        )),
        bb8::RunError::User(PoolError::ConnectionError(c)) => from_connection(c, op),
        bb8::RunError::User(PoolError::QueryError(q)) => {
            // The health check of a pooled connection failed: the connection is gone.
            from_diesel(q, op, true).with_retryable(true)
        }
    }
}

/// The text of a diesel error, kept as the source of a core error. Diesel's errors are not
/// `Clone` or always `Sync`; the text is what a log needs. It never contains bind values.
#[derive(Debug)]
struct DieselSource(String);

impl std::fmt::Display for DieselSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DieselSource {}

/// How long the post-error probe of a connection may take before it counts as lost.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Turn an operation's failure into a core error. Database errors diesel cannot
/// classify are told apart by probing the connection: if the session is gone (the
/// server was shut down, the backend terminated, the socket dropped) the failure is
/// `Transient`; otherwise it is permanent.
pub(crate) async fn classify(
    conn: &mut diesel_async::AsyncPgConnection,
    fail: Fail,
    op: &str,
) -> jetbridge_core::Error {
    use diesel_async::RunQueryDsl;
    match fail {
        Fail::Port(e) => e,
        Fail::Db(e) => {
            let lost = if needs_probe(&e) {
                let probe = diesel::sql_query("SELECT 1").execute(conn);
                !matches!(tokio::time::timeout(PROBE_TIMEOUT, probe).await, Ok(Ok(_)))
            } else {
                false
            };
            from_diesel(e, op, lost)
        }
    }
}

/// An operation's result, its failure classified on the connection it ran on.
pub(crate) async fn settle<T>(
    conn: &mut diesel_async::AsyncPgConnection,
    res: std::result::Result<T, Fail>,
    op: &str,
) -> jetbridge_core::Result<T> {
    match res {
        Ok(v) => Ok(v),
        Err(f) => Err(classify(conn, f, op).await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_connection_is_transient_and_retryable() {
        let e = DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection,
            Box::new("closed".to_owned()),
        );
        let mapped = from_diesel(e, "get", false);
        assert_eq!(mapped.kind(), ErrorKind::Transient);
        assert!(mapped.is_retryable());
    }

    #[test]
    fn unknown_database_error_depends_on_the_probe() {
        let mk =
            || DieselError::DatabaseError(DatabaseErrorKind::Unknown, Box::new("x".to_owned()));
        assert!(needs_probe(&mk()));
        assert_eq!(from_diesel(mk(), "get", false).kind(), ErrorKind::Other);
        assert_eq!(from_diesel(mk(), "get", true).kind(), ErrorKind::Transient);
    }

    #[test]
    fn insufficient_privilege_is_permission_denied_and_names_the_object() {
        let denied = || {
            DieselError::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new("permission denied for table artifacts".to_owned()),
            )
        };
        // Whatever the probe says: the server answered, the connection is fine.
        for lost in [false, true] {
            let e = from_diesel(denied(), "record", lost);
            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
            assert!(!e.is_retryable());
            assert!(e.message().contains("for table artifacts"), "{e}");
            assert!(e.message().contains("record failed"), "{e}");
        }
        let e = from_connection(
            ConnectionError::CouldntSetupConfiguration(DieselError::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new("permission denied for database jb".to_owned()),
            )),
            "connect",
        );
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.message().contains("for database jb"), "{e}");
    }

    #[test]
    fn serialization_failure_is_transient() {
        let e = DieselError::DatabaseError(
            DatabaseErrorKind::SerializationFailure,
            Box::new("x".to_owned()),
        );
        assert!(!needs_probe(&e));
        assert_eq!(from_diesel(e, "claim", false).kind(), ErrorKind::Transient);
    }

    #[test]
    fn pool_timeout_is_transient() {
        let e = from_pool(bb8::RunError::TimedOut, "get");
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert!(e.is_retryable());
    }

    #[test]
    fn bad_url_is_invalid() {
        let e = from_connection(ConnectionError::InvalidConnectionUrl("x".into()), "connect");
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(!e.is_retryable());
    }
}
