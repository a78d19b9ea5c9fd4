//! [`ArtifactRegistry`] on Postgres with diesel-async.
//!
//! [`PgRegistry::connect`] builds a bb8 pool of `AsyncPgConnection`s (pure Rust
//! `tokio-postgres` underneath; no libpq), applies the embedded migrations, and returns a
//! registry that any number of processes can share: every multi-statement operation runs
//! in one transaction, rows are locked in a fixed order (artifact rows, sorted by id,
//! before their references), and the reaper claims work with `FOR UPDATE SKIP LOCKED`.
//!
//! [`PgBuildQueue`] is the [`BuildQueue`](jetbridge_core::ports::BuildQueue) on the same
//! database and migrations: [`PgBuildQueue::connect`] builds its own pool, and
//! [`PgRegistry::build_queue`] shares the registry's.
//!
//! ```no_run
//! # async fn demo() -> jetbridge_core::Result<()> {
//! use jetbridge_postgres::{PgOptions, PgRegistry};
//! let registry = PgRegistry::connect(
//!     "postgres://postgres@127.0.0.1:5432/postgres",
//!     PgOptions { schema: Some("jetbridge".into()), ..PgOptions::default() },
//! )
//! .await?;
//! # let _ = registry;
//! # Ok(())
//! # }
//! ```

mod config;
mod error;
mod migrate;
mod queue;
mod registry;
mod rows;
pub mod scratch;

use std::fmt;
use std::sync::Arc;

use diesel::ConnectionError;
use diesel_async::pooled_connection::bb8::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures::FutureExt;
use jetbridge_core::{Error, Result};

pub use config::PgOptions;
pub use migrate::{migrate, migrate_with};
pub use queue::PgBuildQueue;

/// Check a schema name: `[a-z_][a-z0-9_]{0,62}`. Quoting would allow more, but a plain
/// name is what operators type and what shows up unquoted in `psql`.
pub fn validate_schema(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit()
        && !schema.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "postgres registry: schema {schema:?} is not valid: use 1 to 63 characters of a-z, 0-9 and '_', not starting with a digit or 'pg_'"
        )))
    }
}

/// Durations travel as microseconds (`$n * interval '1 microsecond'`). Longer ones are
/// cut to this (about 1,000 years), which keeps `now() ± d` inside `timestamptz`'s range.
pub(crate) const MAX_MICROS: i64 = 1_000 * 366 * 86_400 * 1_000_000;

pub(crate) fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros())
        .unwrap_or(i64::MAX)
        .min(MAX_MICROS)
}

/// `"ident"` with embedded quotes doubled.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'literal'` with embedded quotes doubled (`standard_conforming_strings` is on since
/// Postgres 9.1, so backslashes are not special).
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Open one connection outside the pool and run `setup` on it.
pub(crate) async fn establish(url: &str, setup: &str, op: &str) -> Result<AsyncPgConnection> {
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .map_err(|e| error::from_connection(e, op))?;
    if !setup.is_empty() {
        conn.batch_execute(setup)
            .await
            .map_err(|e| error::from_diesel(e, op, false))?;
    }
    Ok(conn)
}

/// The two pools every type of this crate works through: `main` for everything, and
/// `liveness`, small, for what keeps a worker and its builds alive (heartbeats,
/// sign-offs, lease renewals). A main pool used up (hundreds of event streams, a burst
/// of steps) makes those wait behind it, a registration lapses, and another replica's
/// reaper collects the artifacts of builds still running.
#[derive(Clone)]
pub(crate) struct Pools {
    pub(crate) main: Pool<AsyncPgConnection>,
    pub(crate) liveness: Pool<AsyncPgConnection>,
}

/// Validate `options`, apply pending migrations (unless `options.migrate` is false) and
/// build the pools every type of this crate works through ([`PgRegistry::connect`],
/// [`PgBuildQueue::connect`]).
async fn open_pool(url: &str, options: &PgOptions) -> Result<Pools> {
    options.validate()?;
    if options.migrate {
        migrate_with(url, options).await?;
    }
    let setup: Arc<str> = Arc::from(options.session_setup());
    let manager = || {
        let setup = Arc::clone(&setup);
        let mut config = ManagerConfig::<AsyncPgConnection>::default();
        config.custom_setup = Box::new(move |url: &str| {
            let setup = Arc::clone(&setup);
            let url = url.to_owned();
            async move {
                let mut conn = AsyncPgConnection::establish(&url).await?;
                conn.batch_execute(&setup)
                    .await
                    .map_err(ConnectionError::CouldntSetupConfiguration)?;
                Ok(conn)
            }
            .boxed()
        });
        AsyncDieselConnectionManager::new_with_config(url, config)
    };
    // `build_unchecked`: connections open on first use, so a registry can be built
    // while the server is briefly away; the first call then reports `Transient`.
    let main = Pool::builder()
        .max_size(options.pool_size)
        .min_idle(options.min_idle)
        .connection_timeout(options.connection_timeout)
        .idle_timeout(options.idle_timeout)
        .max_lifetime(options.max_lifetime)
        .test_on_check_out(true)
        .build_unchecked(manager());
    // Its connection opens at the first heartbeat and, renewed every few seconds, stays.
    let liveness = Pool::builder()
        .max_size(options.liveness_pool_size)
        .connection_timeout(options.connection_timeout)
        .idle_timeout(options.idle_timeout)
        .max_lifetime(options.max_lifetime)
        .test_on_check_out(true)
        .build_unchecked(manager());
    // Fail fast on a wrong URL or password instead of on the first call.
    drop(
        main.get()
            .await
            .map_err(|e| error::from_pool(e, "connect"))?,
    );
    Ok(Pools { main, liveness })
}

/// The [`ArtifactRegistry`](jetbridge_core::ports::ArtifactRegistry) on Postgres.
///
/// Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct PgRegistry {
    pool: Pool<AsyncPgConnection>,
    liveness: Pool<AsyncPgConnection>,
    schema: Option<String>,
}

impl fmt::Debug for PgRegistry {
    // The URL (which may carry a password) is deliberately not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.pool.state();
        f.debug_struct("PgRegistry")
            .field("schema", &self.schema)
            .field("connections", &state.connections)
            .field("idle_connections", &state.idle_connections)
            .finish()
    }
}

impl PgRegistry {
    /// Connect to `url` (`postgres://user:password@host:port/database`), apply pending
    /// migrations (unless `options.migrate` is false) and build the pool.
    ///
    /// Fails with `Invalid` for bad options or URL, `Transient` when the server cannot be
    /// reached, `Other` when it refuses (authentication, unknown database) or a migration
    /// fails.
    pub async fn connect(url: &str, options: PgOptions) -> Result<PgRegistry> {
        let pools = open_pool(url, &options).await?;
        Ok(PgRegistry {
            pool: pools.main,
            liveness: pools.liveness,
            schema: options.schema,
        })
    }

    /// The schema this registry works in, if one was given.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// Connections open and idle in the pool.
    pub fn pool_state(&self) -> (u32, u32) {
        let s = self.pool.state();
        (s.connections, s.idle_connections)
    }

    /// Connections open and idle in the liveness pool (heartbeats, sign-offs, lease
    /// renewals).
    pub fn liveness_pool_state(&self) -> (u32, u32) {
        let s = self.liveness.state();
        (s.connections, s.idle_connections)
    }
}
