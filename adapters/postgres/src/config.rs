//! Options of the Postgres registry: its pool and its connections.

use std::time::Duration;

use jetbridge_core::{Error, Result};

use crate::{quote_ident, quote_literal, validate_schema};

/// How [`PgRegistry::connect`] sets up its pool and its connections.
///
/// Build it with struct update syntax: `PgOptions { pool_size: 4, ..PgOptions::default() }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// Most connections the pool opens (default 10).
    pub pool_size: u32,
    /// Most connections of the second, small pool that only worker heartbeats,
    /// sign-offs and lease renewals use (default 2), so that a main pool used up by
    /// event streams or a burst of steps never starves what keeps a worker and its
    /// builds alive.
    pub liveness_pool_size: u32,
    /// Idle connections the pool keeps open (default: none; connections open on demand).
    pub min_idle: Option<u32>,
    /// Schema holding the tables; every pooled connection sets `search_path` to it and
    /// migrations create it. `None`: the server's default `search_path` (usually `public`).
    /// Lowercase letters, digits and `_`, starting with a letter or `_`, at most 63.
    pub schema: Option<String>,
    /// How long a call waits for a pooled connection before failing with a `Transient`
    /// error (default 10 s).
    pub connection_timeout: Duration,
    /// Close connections idle for longer than this (default 10 min).
    pub idle_timeout: Option<Duration>,
    /// Close connections older than this (default 30 min).
    pub max_lifetime: Option<Duration>,
    /// Server-side `statement_timeout` of every connection (default: none).
    pub statement_timeout: Option<Duration>,
    /// `application_name` of every connection, shown in `pg_stat_activity`.
    pub application_name: String,
    /// Apply pending migrations in [`PgRegistry::connect`] (default true).
    pub migrate: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 10,
            liveness_pool_size: 2,
            min_idle: None,
            schema: None,
            connection_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            statement_timeout: None,
            application_name: "jetbridge".to_owned(),
            migrate: true,
        }
    }
}

impl PgOptions {
    /// Check the options; `Invalid` when a value cannot be used.
    pub fn validate(&self) -> Result<()> {
        if self.pool_size == 0 {
            return Err(Error::invalid(
                "postgres registry: pool_size must be at least 1",
            ));
        }
        if self.liveness_pool_size == 0 {
            return Err(Error::invalid(
                "postgres registry: liveness_pool_size must be at least 1",
            ));
        }
        if let Some(min) = self.min_idle
            && min > self.pool_size
        {
            return Err(Error::invalid(
                "postgres registry: min_idle must not exceed pool_size",
            ));
        }
        if let Some(schema) = &self.schema {
            validate_schema(schema)?;
        }
        Ok(())
    }

    /// The statements every new connection runs before joining the pool.
    pub(crate) fn session_setup(&self) -> String {
        let mut sql = String::new();
        if let Some(schema) = &self.schema {
            sql.push_str(&format!("SET search_path TO {};", quote_ident(schema)));
        }
        sql.push_str(&format!(
            "SET application_name TO {};",
            quote_literal(&self.application_name)
        ));
        if let Some(t) = self.statement_timeout {
            sql.push_str(&format!("SET statement_timeout TO {};", t.as_millis()));
        }
        sql
    }
}
