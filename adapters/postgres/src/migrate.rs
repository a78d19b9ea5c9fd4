//! Embedded migrations, applied through diesel_migrations on top of an async connection.
//!
//! diesel_migrations drives a synchronous `diesel::Connection`; diesel-async's
//! `AsyncConnectionWrapper` provides one over `AsyncPgConnection`, so no libpq is linked.
//! The wrapper blocks on the runtime, so it runs on a blocking thread.

use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use jetbridge_core::{Error, Result};

use crate::{PgOptions, establish, quote_ident, quote_literal};

/// The migrations under `adapters/postgres/migrations`, compiled in.
const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// First key of the advisory lock that serialises migrations (the second is the schema's
/// hash), so replicas starting together do not race each other's `CREATE TABLE`.
const MIGRATION_LOCK: i32 = 0x6a62_7267; // "jbrg"

/// Apply pending migrations to the default schema of `url`; the binary's
/// `jetbridge migrate --registry URL`.
pub async fn migrate(url: &str) -> Result<usize> {
    migrate_with(url, &PgOptions::default()).await
}

/// Apply pending migrations to `options.schema` (created if missing) of `url`, returning
/// how many were applied. Safe to run from several processes at once.
pub async fn migrate_with(url: &str, options: &PgOptions) -> Result<usize> {
    options.validate()?;
    let schema = options.schema.clone();
    let lock_key = quote_literal(schema.as_deref().unwrap_or(""));
    let mut setup = format!("SELECT pg_advisory_lock({MIGRATION_LOCK}, hashtext({lock_key}));");
    if let Some(schema) = &schema {
        let ident = quote_ident(schema);
        setup.push_str(&format!(
            "CREATE SCHEMA IF NOT EXISTS {ident}; SET search_path TO {ident};"
        ));
    }
    let mut conn = establish(url, "", "migrate").await?;
    if let Err(e) = conn.batch_execute(&setup).await {
        return Err(crate::error::from_diesel(e, "migrate", false));
    }
    let applied = tokio::task::spawn_blocking(move || run_pending(conn))
        .await
        .map_err(|e| Error::other(format!("postgres registry: migration task failed: {e}")))??;
    tracing::info!(
        schema = schema.as_deref().unwrap_or("(default)"),
        applied,
        "registry migrations applied"
    );
    Ok(applied)
}

/// Runs on a blocking thread: the wrapper blocks on the runtime for every query.
fn run_pending(conn: AsyncPgConnection) -> Result<usize> {
    let mut wrapper: AsyncConnectionWrapper<AsyncPgConnection> = conn.into();
    let result = wrapper
        .run_pending_migrations(MIGRATIONS)
        .map(|done| done.len())
        .map_err(|e| Error::other(format!("postgres registry: migration failed: {e}")));
    // The session ends with the connection, which releases the advisory lock anyway;
    // unlocking first lets a waiting replica go on without waiting for the socket to close.
    let _unlocked = diesel::connection::SimpleConnection::batch_execute(
        &mut wrapper,
        "SELECT pg_advisory_unlock_all();",
    );
    result
}
