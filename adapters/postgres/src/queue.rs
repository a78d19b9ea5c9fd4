//! The [`BuildQueue`] port on Postgres: tables `builds` and `build_events` (migrations
//! `2026-12-02-000000_build_queue`, and `2026-12-03-000000_build_limits` for in-flight
//! limits), and `pipelines` (`2026-12-04-000000_pipelines`), on the same pool machinery and migrations as the registry.
//!
//! A lease is the pair (`worker`, `attempt`) of a `running` row: every write naming a
//! lease carries `state = 'running' AND worker = $w AND attempt = $token` in its own
//! `WHERE`, so a check and the write it guards are one statement and cannot be split by
//! a takeover. `lease_until` is not part of that condition (a lapsed lease is held until
//! a reap takes it away, as the port says); it is only what the reaper selects by.
//!
//! Claims and reaps pick rows with `FOR UPDATE SKIP LOCKED`, so replicas never pick the
//! same row. Claims also take one transaction-scoped advisory lock per schema
//! ([`CLAIM_LOCK`]) so that in-flight limits hold across replicas (the claim says why).
//! Every time comparison uses the server's clock (`now()`; a claim's own times are its
//! statement's). Writes whose returned rows are converted to domain values run in a
//! transaction with the conversion, so a row that does not convert (`Corrupt`) leaves
//! nothing changed (a build is never claimed and then lost to a conversion error).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use diesel::OptionalExtension;
use diesel::sql_types::{Array, BigInt, Binary, Integer, Nullable, Text};
use diesel_async::pooled_connection::bb8::{Pool, PooledConnection};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use jetbridge_core::ports::{
    BuildEnd, BuildEvent, BuildFilter, BuildId, BuildPage, BuildQueue, Claimed, LapsedBuild, Lease,
    LeaseStatus, NewBuild, NewEvent, NewPipeline, PipelineSet, QueueCapabilities, QueueDepth,
    QueuedBuild, StoredPipeline,
};
use jetbridge_core::{Error, Result};

use crate::error::{self, Fail};
use crate::rows::{
    AbortRow, BUILD_COLUMNS, BuildRow, BuildStateRow, CountRow, DepthRow, EventRow, LapsedRow,
    PIPELINE_COLUMNS, PipelineRow,
};
use crate::{PgOptions, PgRegistry, micros, open_pool};

/// The longest page [`BuildQueue::list`] returns.
const MAX_PAGE: usize = 1000;

/// First key of the transaction-scoped advisory lock that serialises limited submissions
/// (the second is the schema's hash, so queues in different schemas do not wait for each
/// other). Distinct from the migration lock's key.
const SUBMIT_LOCK: i32 = 0x6a62_7175; // "jbqu"

/// First key of the transaction-scoped advisory lock every claim takes (the second is the
/// schema's hash), so that no two claims judge in-flight limits at once.
const CLAIM_LOCK: i32 = 0x6a62_636c; // "jbcl"

/// The lease condition, over binds `$1` (id), `$2` (worker), `$3` (token).
const HELD: &str = "id = $1 AND state = 'running' AND worker = $2 AND attempt = $3";

/// A build id as stored. Ids beyond `bigint` cannot exist; `-1` matches no row (identity
/// values start at 1), so such an id is `NotFound` like any other unknown one.
fn db_id(id: BuildId) -> i64 {
    i64::try_from(id.0).unwrap_or(-1)
}

/// A lease token as stored: one beyond `bigint` matches no attempt (they are never
/// negative), so the write is refused like any other stale lease.
fn db_token(token: u64) -> i64 {
    i64::try_from(token).unwrap_or(-1)
}

/// Postgres `text` cannot hold NUL; refuse it as `Invalid` up front rather than let the
/// server's encoding error arrive as `Other`.
fn check_text(what: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::invalid(format!(
            "postgres build queue: {what} contains a NUL character, which Postgres text cannot hold"
        )));
    }
    Ok(())
}

fn not_found(id: BuildId) -> Fail {
    Fail::Port(Error::not_found(format!("build {id}")))
}

type Conn<'a> = PooledConnection<'a, AsyncPgConnection>;

/// The [`BuildQueue`] on Postgres.
///
/// Cheap to clone: clones share the pool. [`PgRegistry::build_queue`] gives one sharing
/// the registry's pool.
#[derive(Clone)]
pub struct PgBuildQueue {
    pool: Pool<AsyncPgConnection>,
    /// Lease renewals only (see `Pools`).
    liveness: Pool<AsyncPgConnection>,
    schema: Option<String>,
}

impl fmt::Debug for PgBuildQueue {
    // The URL (which may carry a password) is deliberately not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.pool.state();
        f.debug_struct("PgBuildQueue")
            .field("schema", &self.schema)
            .field("connections", &state.connections)
            .field("idle_connections", &state.idle_connections)
            .finish()
    }
}

impl PgRegistry {
    /// The build queue in this registry's database and schema, on this registry's pool
    /// (one pool per process when both are used). The migrations `connect` applied
    /// include the queue's tables.
    pub fn build_queue(&self) -> PgBuildQueue {
        PgBuildQueue {
            pool: self.pool.clone(),
            liveness: self.liveness.clone(),
            schema: self.schema.clone(),
        }
    }
}

impl PgBuildQueue {
    /// Connect to `url` with a pool of its own, as [`PgRegistry::connect`] does (same
    /// options, same migrations, same errors).
    pub async fn connect(url: &str, options: PgOptions) -> Result<PgBuildQueue> {
        let pools = open_pool(url, &options).await?;
        Ok(PgBuildQueue {
            pool: pools.main,
            liveness: pools.liveness,
            schema: options.schema,
        })
    }

    /// The schema this queue works in, if one was given.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// Connections open and idle in the pool.
    pub fn pool_state(&self) -> (u32, u32) {
        let s = self.pool.state();
        (s.connections, s.idle_connections)
    }

    async fn conn(&self, op: &str) -> Result<Conn<'_>> {
        self.pool.get().await.map_err(|e| error::from_pool(e, op))
    }

    /// A connection of the liveness pool: for lease renewals only.
    async fn liveness_conn(&self, op: &str) -> Result<Conn<'_>> {
        self.liveness
            .get()
            .await
            .map_err(|e| error::from_pool(e, op))
    }
}

/// Why a write naming `lease` changed nothing: `NotFound` for an unknown build,
/// `Conflict` for one the lease no longer holds.
async fn refused(c: &mut AsyncPgConnection, lease: &Lease) -> Fail {
    let row = diesel::sql_query("SELECT state, attempt FROM builds WHERE id = $1")
        .bind::<BigInt, _>(db_id(lease.build))
        .get_result::<BuildStateRow>(c)
        .await
        .optional();
    match row {
        Err(e) => Fail::Db(e),
        Ok(None) => not_found(lease.build),
        Ok(Some(b)) => Fail::Port(Error::conflict(format!(
            "build {}: the lease of {} (attempt {}) is no longer held: the build is {} (attempt {})",
            lease.build, lease.worker, lease.token, b.state, b.attempt
        ))),
    }
}

#[async_trait]
impl BuildQueue for PgBuildQueue {
    fn capabilities(&self) -> QueueCapabilities {
        QueueCapabilities::none()
            .with_persistent(true)
            .with_shared(true)
    }

    async fn submit(&self, new: &NewBuild) -> Result<QueuedBuild> {
        let op = "submit build";
        check_text("pipeline", &new.pipeline)?;
        check_text("job", &new.job)?;
        new.check_limits()?;
        let limit_keys: Vec<&str> = new.limits.iter().map(|l| l.key.as_str()).collect();
        for k in &limit_keys {
            check_text("in-flight limit key", k)?;
        }
        // A cap beyond `integer` is no cap in practice: no queue runs 2^31 builds.
        let limit_max: Vec<i32> = new
            .limits
            .iter()
            .map(|l| i32::try_from(l.max_running).unwrap_or(i32::MAX))
            .collect();
        // More than i64::MAX queued builds cannot exist: such a limit is no limit.
        let max = new.max_queued.map(|m| i64::try_from(m).unwrap_or(i64::MAX));
        let mut conn = self.conn(op).await?;
        let res = conn
            .transaction::<_, Fail, _>(async |c| {
                // Under the limit's lock, every queued build is ahead of the new one: the
                // count the limit needs is its position too, so it is not counted twice.
                let mut ahead: Option<i64> = None;
                if let Some(max) = max {
                    // Limited submitters count and insert one at a time: the count runs
                    // after the previous holder committed (a fresh snapshot per
                    // statement), so racing submitters cannot all take the last place.
                    // Unlimited submitters do not wait for it.
                    diesel::sql_query(
                        "SELECT pg_advisory_xact_lock($1, hashtext(COALESCE(current_schema(), '')))",
                    )
                    .bind::<Integer, _>(SUBMIT_LOCK)
                    .execute(c)
                    .await?;
                    let queued =
                        diesel::sql_query("SELECT count(*) AS n FROM builds WHERE state = 'queued'")
                            .get_result::<CountRow>(c)
                            .await?
                            .n;
                    if queued >= max {
                        return Err(Fail::Port(Error::busy(format!(
                            "the build queue is full: {queued} build(s) are waiting (the limit is {max})"
                        ))));
                    }
                    ahead = Some(queued);
                }
                let row = diesel::sql_query(format!(
                    "INSERT INTO builds (pipeline, job, spec, limit_keys, limit_max) \
                     VALUES ($1, $2, $3, $5, $6) \
                     RETURNING {BUILD_COLUMNS}, \
                       COALESCE($4, (SELECT count(*) FROM builds q \
                         WHERE q.state = 'queued' AND q.id < builds.id)) AS position"
                ))
                .bind::<Text, _>(&new.pipeline)
                .bind::<Text, _>(&new.job)
                .bind::<Binary, _>(&new.spec)
                .bind::<diesel::sql_types::Nullable<diesel::sql_types::BigInt>, _>(ahead)
                .bind::<Array<Text>, _>(&limit_keys)
                .bind::<Array<Integer>, _>(&limit_max)
                .get_result::<BuildRow>(c)
                .await?;
                Ok(row.into_build()?)
            })
            .await;
        error::settle(&mut conn, res, op).await
    }

    async fn claim(&self, worker: &str, ttl: Duration) -> Result<Option<Claimed>> {
        let op = "claim build";
        check_text("worker", worker)?;
        let ttl = micros(ttl);
        let mut conn = self.conn(op).await?;
        let res = conn
            .transaction::<_, Fail, _>(async |c| {
                // In-flight limits are a check over other rows (how many builds with a
                // key run, whether one is queued ahead), which row locks cannot make
                // atomic: two claims could each see a slot free and both take it (the
                // FIFO rule below alone narrows this to builds whose submissions commit
                // out of id order, but does not close it). So claims take turns under
                // this lock. Only a claim makes a build `running`, so under it the running
                // count of every key can only fall (an end, a reap) before this
                // transaction commits: the count below is exact or high, never low, and
                // no limit is exceeded whatever the replicas do. The lock is released at
                // commit, after the claim is visible (read committed: the next holder's
                // statement takes a fresh snapshot that includes it). A claim is one
                // short statement, so the turns are brief.
                diesel::sql_query(
                    "SELECT pg_advisory_xact_lock($1, hashtext(COALESCE(current_schema(), '')))",
                )
                .bind::<Integer, _>(CLAIM_LOCK)
                .execute(c)
                .await?;
                // The oldest queued row no limit holds and nobody else is changing right
                // now; a row that stopped being queued since the snapshot is re-checked
                // under its lock and passed over. A limit holds a build while a queued
                // build with its key is ahead of it (builds sharing a key start in
                // order; judged on the snapshot, so a row skipped for its lock still
                // counts as ahead) or its cap of builds with the key is running.
                // Times are the statement's, not the transaction's (`now()`), which began
                // before the wait for the lock: a build of a serial job then never seems
                // to start before the one ahead of it ended.
                let row = diesel::sql_query(format!(
                    "UPDATE builds SET state = 'running', worker = $1, attempt = attempt + 1, \
                       steps_started = false, started_at = statement_timestamp(), \
                       lease_until = statement_timestamp() + $2 * interval '1 microsecond' \
                     WHERE id = (SELECT b.id FROM builds b WHERE b.state = 'queued' \
                                   AND NOT EXISTS ( \
                                     SELECT 1 FROM unnest(b.limit_keys, b.limit_max) \
                                                   AS l(key, cap) \
                                      WHERE EXISTS (SELECT 1 FROM builds o \
                                                     WHERE o.state = 'queued' \
                                                       AND o.id < b.id \
                                                       AND o.limit_keys @> ARRAY[l.key]) \
                                         OR (SELECT count(*) FROM builds o \
                                              WHERE o.state = 'running' \
                                                AND o.limit_keys @> ARRAY[l.key]) >= l.cap) \
                                 ORDER BY b.id LIMIT 1 FOR UPDATE OF b SKIP LOCKED) \
                     RETURNING {BUILD_COLUMNS}, NULL::bigint AS position"
                ))
                .bind::<Text, _>(worker)
                .bind::<BigInt, _>(ttl)
                .get_result::<BuildRow>(c)
                .await
                .optional()?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let build = row.into_build()?;
                let lease = Lease {
                    build: build.id,
                    worker: worker.to_owned(),
                    token: build.attempt,
                };
                Ok(Some(Claimed { lease, build }))
            })
            .await;
        error::settle(&mut conn, res, op).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<LeaseStatus> {
        let op = "renew lease";
        check_text("worker", &lease.worker)?;
        let ttl = micros(ttl);
        let mut conn = self.liveness_conn(op).await?;
        let res = async {
            let row = diesel::sql_query(format!(
                "UPDATE builds SET lease_until = now() + $4 * interval '1 microsecond' \
                 WHERE {HELD} RETURNING abort_requested"
            ))
            .bind::<BigInt, _>(db_id(lease.build))
            .bind::<Text, _>(&lease.worker)
            .bind::<BigInt, _>(db_token(lease.token))
            .bind::<BigInt, _>(ttl)
            .get_result::<AbortRow>(&mut *conn)
            .await
            .optional()?;
            match row {
                Some(row) => {
                    let mut status = LeaseStatus::default();
                    status.abort_requested = row.abort_requested;
                    Ok(status)
                }
                None => Err(refused(&mut conn, lease).await),
            }
        }
        .await;
        error::settle(&mut conn, res, op).await
    }

    async fn mark_started(&self, lease: &Lease) -> Result<()> {
        let op = "mark build started";
        check_text("worker", &lease.worker)?;
        let mut conn = self.conn(op).await?;
        let res = async {
            let n = diesel::sql_query(format!(
                "UPDATE builds SET steps_started = true WHERE {HELD}"
            ))
            .bind::<BigInt, _>(db_id(lease.build))
            .bind::<Text, _>(&lease.worker)
            .bind::<BigInt, _>(db_token(lease.token))
            .execute(&mut *conn)
            .await?;
            if n == 0 {
                return Err(refused(&mut conn, lease).await);
            }
            Ok(())
        }
        .await;
        error::settle(&mut conn, res, op).await
    }

    async fn append(&self, lease: &Lease, events: &[NewEvent]) -> Result<u64> {
        let op = "append events";
        check_text("worker", &lease.worker)?;
        for e in events {
            check_text("event kind", &e.kind)?;
            check_text("event data", &e.data)?;
        }
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
        let id = db_id(lease.build);
        let mut conn = self.conn(op).await?;
        let res = conn
            .transaction::<_, Fail, _>(async |c| {
                // The build row's lock serialises appends to one log, so `max(seq)` read
                // below is the last one, and it holds off a takeover until the commit.
                let held = diesel::sql_query(format!(
                    "SELECT id FROM builds WHERE {HELD} FOR NO KEY UPDATE"
                ))
                .bind::<BigInt, _>(id)
                .bind::<Text, _>(&lease.worker)
                .bind::<BigInt, _>(db_token(lease.token))
                .execute(c)
                .await?;
                if held == 0 {
                    return Err(refused(c, lease).await);
                }
                let last = if events.is_empty() {
                    diesel::sql_query(
                        "SELECT COALESCE(max(seq), 0) AS n FROM build_events WHERE build_id = $1",
                    )
                    .bind::<BigInt, _>(id)
                    .get_result::<CountRow>(c)
                    .await?
                } else {
                    diesel::sql_query(
                        "WITH base AS (SELECT COALESCE(max(seq), 0) AS n \
                                         FROM build_events WHERE build_id = $1), \
                         ins AS (INSERT INTO build_events (build_id, seq, kind, data) \
                                 SELECT $1, base.n + e.ord, e.kind, e.data \
                                   FROM base, unnest($2::text[], $3::text[]) \
                                        WITH ORDINALITY AS e(kind, data, ord) \
                                 RETURNING seq) \
                         SELECT max(seq) AS n FROM ins",
                    )
                    .bind::<BigInt, _>(id)
                    .bind::<Array<Text>, _>(&kinds)
                    .bind::<Array<Text>, _>(&data)
                    .get_result::<CountRow>(c)
                    .await?
                };
                u64::try_from(last.n).map_err(|_| {
                    Fail::Port(Error::corrupt(format!(
                        "postgres build queue: build {} has an invalid event seq",
                        lease.build
                    )))
                })
            })
            .await;
        error::settle(&mut conn, res, op).await
    }

    async fn finish(&self, lease: &Lease, end: &BuildEnd) -> Result<QueuedBuild> {
        let op = "finish build";
        if !end.state.is_final() {
            return Err(Error::invalid(format!(
                "build {}: a build cannot end {}",
                lease.build, end.state
            )));
        }
        check_text("worker", &lease.worker)?;
        if let Some(reason) = &end.reason {
            check_text("reason", reason)?;
        }
        let mut conn = self.conn(op).await?;
        let res = conn
            .transaction::<_, Fail, _>(async |c| {
                let row = diesel::sql_query(format!(
                    "UPDATE builds SET state = $4, reason = $5, outcome = $6, \
                       finished_at = now(), lease_until = NULL \
                     WHERE {HELD} \
                     RETURNING {BUILD_COLUMNS}, NULL::bigint AS position"
                ))
                .bind::<BigInt, _>(db_id(lease.build))
                .bind::<Text, _>(&lease.worker)
                .bind::<BigInt, _>(db_token(lease.token))
                .bind::<Text, _>(end.state.as_str())
                .bind::<Nullable<Text>, _>(end.reason.as_deref())
                .bind::<Nullable<Binary>, _>(end.outcome.as_deref())
                .get_result::<BuildRow>(c)
                .await
                .optional()?;
                match row {
                    Some(row) => Ok(row.into_build()?),
                    None => Err(refused(c, lease).await),
                }
            })
            .await;
        error::settle(&mut conn, res, op).await
    }

    async fn get(&self, id: BuildId) -> Result<QueuedBuild> {
        let op = "get build";
        let mut conn = self.conn(op).await?;
        // The position is a count over the queued builds' partial index, up to this one.
        let res = diesel::sql_query(format!(
            "SELECT {BUILD_COLUMNS}, \
               CASE WHEN state = 'queued' THEN \
                 (SELECT count(*) FROM builds q WHERE q.state = 'queued' AND q.id < b.id) \
               END AS position \
             FROM builds b WHERE id = $1"
        ))
        .bind::<BigInt, _>(db_id(id))
        .get_result::<BuildRow>(&mut conn)
        .await
        .optional()
        .map_err(Fail::from);
        match error::settle(&mut conn, res, op).await? {
            Some(row) => row.into_build(),
            None => Err(Error::not_found(format!("build {id}"))),
        }
    }

    async fn list(&self, filter: &BuildFilter) -> Result<BuildPage> {
        let op = "list builds";
        if let Some(p) = &filter.pipeline {
            check_text("pipeline", p)?;
        }
        if let Some(j) = &filter.job {
            check_text("job", j)?;
        }
        let limit = filter.limit.clamp(1, MAX_PAGE);
        let mut q = diesel::sql_query(format!(
            "WITH page AS (SELECT {BUILD_COLUMNS} FROM builds WHERE TRUE"
        ))
        .into_boxed::<diesel::pg::Pg>();
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        if !filter.states.is_empty() {
            let states: Vec<String> = filter
                .states
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect();
            q = q
                .sql(format!(" AND state = ANY(${})", next()))
                .bind::<Array<Text>, _>(states);
        }
        if let Some(v) = &filter.pipeline {
            q = q
                .sql(format!(" AND pipeline = ${}", next()))
                .bind::<Text, _>(v.clone());
        }
        if let Some(v) = &filter.job {
            q = q
                .sql(format!(" AND job = ${}", next()))
                .bind::<Text, _>(v.clone());
        }
        if let Some(before) = filter.before {
            q = q
                .sql(format!(" AND id < ${}", next()))
                .bind::<BigInt, _>(i64::try_from(before.0).unwrap_or(i64::MAX));
        }
        // Positions of the page's queued builds from one ranked pass over the queued
        // builds up to the newest of them, instead of one count per row.
        q = q
            .sql(format!(" ORDER BY id DESC LIMIT ${}", next()))
            .bind::<BigInt, _>(limit as i64)
            .sql(format!(
                "), ahead AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS position \
                   FROM builds WHERE state = 'queued' \
                    AND id <= (SELECT max(id) FROM page WHERE state = 'queued')) \
                 SELECT {BUILD_COLUMNS}, ahead.position \
                 FROM page LEFT JOIN ahead USING (id) ORDER BY id DESC"
            ));
        let mut conn = self.conn(op).await?;
        let res = q.load::<BuildRow>(&mut conn).await.map_err(Fail::from);
        let builds = error::settle(&mut conn, res, op)
            .await?
            .into_iter()
            .map(BuildRow::into_build)
            .collect::<Result<Vec<_>>>()?;
        let next = if builds.len() == limit {
            builds.last().map(|b| b.id)
        } else {
            None
        };
        Ok(BuildPage { builds, next })
    }

    async fn events(&self, id: BuildId, after: u64, limit: usize) -> Result<Vec<BuildEvent>> {
        let op = "read events";
        let bid = db_id(id);
        let mut conn = self.conn(op).await?;
        let res = async {
            let rows = diesel::sql_query(
                "SELECT build_id, seq, kind, data FROM build_events \
                 WHERE build_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind::<BigInt, _>(bid)
            .bind::<BigInt, _>(i64::try_from(after).unwrap_or(i64::MAX))
            .bind::<BigInt, _>(i64::try_from(limit).unwrap_or(i64::MAX))
            .load::<EventRow>(&mut *conn)
            .await?;
            // Only an empty answer needs telling apart from an unknown build.
            if rows.is_empty() {
                let known = diesel::sql_query("SELECT id FROM builds WHERE id = $1")
                    .bind::<BigInt, _>(bid)
                    .execute(&mut *conn)
                    .await?;
                if known == 0 {
                    return Err(not_found(id));
                }
            }
            Ok(rows)
        }
        .await;
        error::settle(&mut conn, res, op)
            .await?
            .into_iter()
            .map(EventRow::into_event)
            .collect()
    }

    async fn request_abort(&self, id: BuildId, reason: &str) -> Result<QueuedBuild> {
        let op = "abort build";
        check_text("reason", reason)?;
        let bid = db_id(id);
        let mut conn = self.conn(op).await?;
        let res = conn
            .transaction::<_, Fail, _>(async |c| {
                // One statement for both live states: a claim racing it commits first
                // (the row is re-read under its lock and found running) or waits.
                // `COALESCE` keeps the first reason asked for.
                let row = diesel::sql_query(format!(
                    "UPDATE builds SET \
                       state = CASE WHEN state = 'queued' THEN 'aborted' ELSE state END, \
                       reason = CASE WHEN state = 'queued' THEN $2 ELSE reason END, \
                       finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END, \
                       abort_requested = COALESCE(abort_requested, $2) \
                     WHERE id = $1 AND state IN ('queued', 'running') \
                     RETURNING {BUILD_COLUMNS}, NULL::bigint AS position"
                ))
                .bind::<BigInt, _>(bid)
                .bind::<Text, _>(reason)
                .get_result::<BuildRow>(c)
                .await
                .optional()?;
                if let Some(row) = row {
                    return Ok(row.into_build()?);
                }
                let ended = diesel::sql_query("SELECT state, attempt FROM builds WHERE id = $1")
                    .bind::<BigInt, _>(bid)
                    .get_result::<BuildStateRow>(c)
                    .await
                    .optional()?;
                match ended {
                    None => Err(not_found(id)),
                    Some(b) => Err(Fail::Port(Error::conflict(format!(
                        "build {id} has ended ({}): there is nothing to abort",
                        b.state
                    )))),
                }
            })
            .await;
        error::settle(&mut conn, res, op).await
    }

    async fn reap_lapsed(&self, reason: &str) -> Result<Vec<LapsedBuild>> {
        let op = "reap lapsed builds";
        check_text("reason", reason)?;
        let mut conn = self.conn(op).await?;
        let res = conn
            .transaction::<_, Fail, _>(async |c| {
                // `<=`: a lease granted for zero time has lapsed by the next transaction.
                // A row renewed since the snapshot is re-checked under its lock and left
                // alone; one another reaper holds is skipped (that reaper deals with it).
                let rows = diesel::sql_query(
                    "WITH lapsed AS (SELECT id FROM builds \
                                      WHERE state = 'running' AND lease_until <= now() \
                                      ORDER BY id FOR UPDATE SKIP LOCKED) \
                     UPDATE builds b SET \
                       state = CASE WHEN b.steps_started THEN 'errored' ELSE 'queued' END, \
                       reason = CASE WHEN b.steps_started THEN $1 ELSE b.reason END, \
                       finished_at = CASE WHEN b.steps_started THEN now() END, \
                       started_at = CASE WHEN b.steps_started THEN b.started_at END, \
                       lease_until = NULL \
                     FROM lapsed WHERE b.id = lapsed.id \
                     RETURNING b.id, b.worker, NOT b.steps_started AS requeued",
                )
                .bind::<Text, _>(reason)
                .load::<LapsedRow>(c)
                .await?;
                let mut lapsed = rows
                    .into_iter()
                    .map(LapsedRow::into_lapsed)
                    .collect::<Result<Vec<_>>>()?;
                lapsed.sort_by_key(|l| l.id);
                Ok(lapsed)
            })
            .await;
        error::settle(&mut conn, res, op).await
    }

    async fn depth(&self) -> Result<QueueDepth> {
        let op = "queue depth";
        let mut conn = self.conn(op).await?;
        // Two counts, each over its own partial index.
        let res = diesel::sql_query(
            "SELECT (SELECT count(*) FROM builds WHERE state = 'queued') AS queued, \
                    (SELECT count(*) FROM builds WHERE state = 'running') AS running",
        )
        .get_result::<DepthRow>(&mut conn)
        .await
        .map_err(Fail::from);
        let row = error::settle(&mut conn, res, op).await?;
        Ok(QueueDepth {
            queued: u64::try_from(row.queued).unwrap_or(0),
            running: u64::try_from(row.running).unwrap_or(0),
        })
    }

    async fn set_pipeline(&self, lease: &Lease, p: &NewPipeline) -> Result<PipelineSet> {
        let op = "set pipeline";
        check_text("worker", &lease.worker)?;
        for (what, v) in [
            ("team", &p.team),
            ("pipeline name", &p.name),
            ("instance vars", &p.instance_vars),
            ("pipeline config", &p.config),
            ("pipeline file", &p.file),
        ] {
            check_text(what, v)?;
        }
        let mut conn = self.conn(op).await?;
        let res = conn
            .transaction::<_, Fail, _>(async |c| {
                // The build row's lock holds off a takeover until the commit, so a
                // replica that lost the build cannot set a pipeline after the new holder.
                let held = diesel::sql_query(format!(
                    "SELECT id FROM builds WHERE {HELD} FOR NO KEY UPDATE"
                ))
                .bind::<BigInt, _>(db_id(lease.build))
                .bind::<Text, _>(&lease.worker)
                .bind::<BigInt, _>(db_token(lease.token))
                .execute(c)
                .await?;
                if held == 0 {
                    return Err(refused(c, lease).await);
                }
                // The update's WHERE leaves an unchanged pipeline as it was (version,
                // time and setter), and then nothing is returned.
                let changed = diesel::sql_query(format!(
                    "INSERT INTO pipelines (team, name, instance_vars, config, vars, file, set_by) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (team, name, instance_vars) DO UPDATE \
                        SET config = EXCLUDED.config, vars = EXCLUDED.vars, file = EXCLUDED.file, \
                            set_by = EXCLUDED.set_by, version = pipelines.version + 1, \
                            updated_at = now() \
                      WHERE pipelines.config <> EXCLUDED.config OR pipelines.vars <> EXCLUDED.vars \
                     RETURNING {PIPELINE_COLUMNS}"
                ))
                .bind::<Text, _>(&p.team)
                .bind::<Text, _>(&p.name)
                .bind::<Text, _>(&p.instance_vars)
                .bind::<Text, _>(&p.config)
                .bind::<Binary, _>(&p.vars)
                .bind::<Text, _>(&p.file)
                .bind::<BigInt, _>(db_id(lease.build))
                .get_result::<PipelineRow>(c)
                .await
                .optional()?;
                let (row, changed) = match changed {
                    Some(row) => (row, true),
                    None => (
                        diesel::sql_query(format!(
                            "SELECT {PIPELINE_COLUMNS} FROM pipelines \
                              WHERE team = $1 AND name = $2 AND instance_vars = $3"
                        ))
                        .bind::<Text, _>(&p.team)
                        .bind::<Text, _>(&p.name)
                        .bind::<Text, _>(&p.instance_vars)
                        .get_result::<PipelineRow>(c)
                        .await?,
                        false,
                    ),
                };
                Ok(PipelineSet {
                    stored: row.into_pipeline().map_err(Fail::Port)?,
                    changed,
                })
            })
            .await;
        error::settle(&mut conn, res, op).await
    }

    async fn pipelines(
        &self,
        team: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<StoredPipeline>> {
        let op = "list pipelines";
        for v in [team, name].into_iter().flatten() {
            check_text("pipeline filter", v)?;
        }
        let mut conn = self.conn(op).await?;
        let res = diesel::sql_query(format!(
            "SELECT {PIPELINE_COLUMNS} FROM pipelines \
              WHERE ($1::text IS NULL OR team = $1) AND ($2::text IS NULL OR name = $2) \
              ORDER BY team COLLATE \"C\", name COLLATE \"C\", instance_vars COLLATE \"C\" LIMIT 1000"
        ))
        .bind::<Nullable<Text>, _>(team)
        .bind::<Nullable<Text>, _>(name)
        .load::<PipelineRow>(&mut conn)
        .await
        .map_err(Fail::from);
        let rows = error::settle(&mut conn, res, op).await?;
        rows.into_iter().map(PipelineRow::into_pipeline).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_tokens_beyond_bigint_match_no_row() {
        assert_eq!(db_id(BuildId(7)), 7);
        assert_eq!(db_id(BuildId(u64::MAX)), -1);
        assert_eq!(db_token(u64::MAX), -1);
    }

    #[test]
    fn long_durations_are_capped() {
        assert_eq!(micros(Duration::from_millis(2)), 2_000);
        assert_eq!(micros(Duration::MAX), crate::MAX_MICROS);
    }

    #[test]
    fn nul_is_invalid() {
        assert!(check_text("job", "unit").is_ok());
        let e = check_text("job", "a\0b").unwrap_err();
        assert_eq!(e.kind(), jetbridge_core::ErrorKind::Invalid);
    }
}
