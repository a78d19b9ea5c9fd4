//! The port implementation.
//!
//! Locking discipline (what keeps it free of deadlocks): an operation that changes
//! references first locks the artifact rows involved (`FOR NO KEY UPDATE`, sorted by id
//! when there are several) and only then touches `artifact_refs`; `ref_count` changes in
//! the same transaction as the reference rows. The reaper never waits for a lock
//! (`SKIP LOCKED`), and re-checks references with a fresh snapshot after it holds its row
//! locks, so a reference added concurrently either commits before that check (and is
//! seen) or waits for the claim to commit (and then sees `destroying`: `Conflict`).
//!
//! Every time comparison uses the server's `now()`: expiries, retention and claim ages
//! are judged on one clock, whatever the clocks of the processes calling.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use diesel::OptionalExtension;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};
use diesel_async::pooled_connection::bb8::PooledConnection;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use jetbridge_core::digest::Digest;
use jetbridge_core::names::{ArtifactId, VolumeHandle};
use jetbridge_core::ports::{
    Artifact, ArtifactFilter, ArtifactRegistry, ArtifactState, ClaimOpts, HeartbeatMode,
    HeartbeatOpts, Holder, NewArtifact, RegistryCapabilities, Worker,
};
use jetbridge_core::{Error, Result};

use crate::error::{self, Fail};
use crate::rows::{
    ARTIFACT_COLUMNS, ARTIFACT_COLUMNS_A, ArtifactRow, ExistingRow, IdRow, SessionRow, StateRow,
    Ts, VolumeRow, WorkerRow,
};
use crate::{MAX_MICROS, PgRegistry, micros};

/// A live reference to artifact `a`: a holder whose worker never registered, or whose
/// heartbeat has not expired on the server's clock.
const LIVE_REF: &str = "EXISTS (SELECT 1 FROM artifact_refs r \
     LEFT JOIN workers w ON w.name = r.worker \
     WHERE r.artifact_id = a.id AND (w.name IS NULL OR w.expires_at > now()))";

type Conn<'a> = PooledConnection<'a, AsyncPgConnection>;

fn ts(t: SystemTime) -> Ts {
    Ts(t)
}

fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| {
        Error::invalid(format!(
            "postgres registry: {what} {v} does not fit a bigint"
        ))
    })
}

impl PgRegistry {
    /// A pooled connection, or a mapped pool error.
    pub(crate) async fn conn(&self, op: &str) -> Result<Conn<'_>> {
        self.pool.get().await.map_err(|e| error::from_pool(e, op))
    }

    /// A connection of the liveness pool: for heartbeats and sign-offs only.
    async fn liveness_conn(&self, op: &str) -> Result<Conn<'_>> {
        self.liveness
            .get()
            .await
            .map_err(|e| error::from_pool(e, op))
    }
}

/// Lock one artifact row for a change of its state or references.
async fn lock_artifact(
    c: &mut AsyncPgConnection,
    id: &str,
) -> std::result::Result<Option<StateRow>, Fail> {
    Ok(diesel::sql_query(
        "SELECT state, size, digest FROM artifacts WHERE id = $1 FOR NO KEY UPDATE",
    )
    .bind::<Text, _>(id)
    .get_result::<StateRow>(c)
    .await
    .optional()?)
}

async fn select_artifact(
    c: &mut AsyncPgConnection,
    id: &str,
) -> std::result::Result<Option<ArtifactRow>, Fail> {
    Ok(diesel::sql_query(format!(
        "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE id = $1"
    ))
    .bind::<Text, _>(id)
    .get_result::<ArtifactRow>(c)
    .await
    .optional()?)
}

/// Add `holder`'s reference to a locked artifact; whether it was new.
async fn add_ref(
    c: &mut AsyncPgConnection,
    id: &str,
    holder: &Holder,
) -> std::result::Result<bool, Fail> {
    let added = diesel::sql_query(
        "INSERT INTO artifact_refs (artifact_id, worker, build) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind::<Text, _>(id)
    .bind::<Text, _>(&holder.worker)
    .bind::<Text, _>(&holder.build)
    .execute(c)
    .await?;
    if added > 0 {
        diesel::sql_query(
            "UPDATE artifacts SET ref_count = ref_count + 1, updated_at = now() WHERE id = $1",
        )
        .bind::<Text, _>(id)
        .execute(c)
        .await?;
    }
    Ok(added > 0)
}

fn held_by_another(worker: &str, remaining_secs: Option<i64>) -> Fail {
    let runs = remaining_secs
        .map(|s| format!(" (its registration runs for {s} s more unless renewed)"))
        .unwrap_or_default();
    Fail::Port(Error::already_exists(format!(
        "worker name {worker:?} is held by another live process{runs}; give this one \
         another name, or stop the other"
    )))
}

fn not_found(id: &str) -> Fail {
    Fail::Port(Error::not_found(format!("artifact {id:?}")))
}

fn destroying(id: &str, what: &str) -> Fail {
    Fail::Port(Error::conflict(format!(
        "artifact {id:?} is being destroyed; cannot {what}"
    )))
}

#[async_trait]
impl ArtifactRegistry for PgRegistry {
    fn capabilities(&self) -> RegistryCapabilities {
        RegistryCapabilities::none()
            .with_persistent(true)
            .with_shared(true)
    }

    async fn register(&self, new: &NewArtifact) -> Result<Artifact> {
        let op = "register";
        let retain = new.retain_until.map(ts);
        let mut conn = self.conn(op).await?;
        let res = conn
            .transaction::<_, Fail, _>(async |c| {
                let inserted = diesel::sql_query(format!(
                    "INSERT INTO artifacts \
                     (id, build, step, name, volume, worker, retain_until, ref_count) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 1) \
                     ON CONFLICT (id) DO NOTHING RETURNING {ARTIFACT_COLUMNS}"
                ))
                .bind::<Text, _>(new.id.as_str())
                .bind::<Text, _>(&new.build)
                .bind::<Text, _>(&new.step)
                .bind::<Text, _>(&new.name)
                .bind::<Text, _>(new.volume.as_str())
                .bind::<Text, _>(&new.holder.worker)
                .bind::<Nullable<Timestamptz>, _>(retain)
                .get_result::<ArtifactRow>(c)
                .await
                .optional()?;
                if let Some(row) = inserted {
                    diesel::sql_query(
                        "INSERT INTO artifact_refs (artifact_id, worker, build) \
                         VALUES ($1, $2, $3)",
                    )
                    .bind::<Text, _>(new.id.as_str())
                    .bind::<Text, _>(&new.holder.worker)
                    .bind::<Text, _>(&new.holder.build)
                    .execute(c)
                    .await?;
                    return Ok(row.into_artifact()?);
                }
                // The id exists: a retry (same fields) or a clash (different fields). The
                // comparison runs in SQL so `retain_until` is compared at the precision it
                // is stored with.
                let existing = diesel::sql_query(format!(
                    "SELECT {ARTIFACT_COLUMNS}, \
                     (build = $2 AND step = $3 AND name = $4 AND volume = $5 AND worker = $6 \
                      AND retain_until IS NOT DISTINCT FROM $7) AS same \
                     FROM artifacts WHERE id = $1 FOR NO KEY UPDATE"
                ))
                .bind::<Text, _>(new.id.as_str())
                .bind::<Text, _>(&new.build)
                .bind::<Text, _>(&new.step)
                .bind::<Text, _>(&new.name)
                .bind::<Text, _>(new.volume.as_str())
                .bind::<Text, _>(&new.holder.worker)
                .bind::<Nullable<Timestamptz>, _>(retain)
                .get_result::<ExistingRow>(c)
                .await
                .optional()?;
                let Some(existing) = existing else {
                    // Forgotten between the insert and the lock: the caller may retry.
                    return Err(Fail::Port(Error::transient(format!(
                        "artifact {:?} was removed while registering it",
                        new.id.as_str()
                    ))));
                };
                if !existing.same {
                    return Err(Fail::Port(Error::conflict(format!(
                        "artifact {:?} is registered with different fields",
                        new.id.as_str()
                    ))));
                }
                let artifact = existing.artifact.into_artifact()?;
                if artifact.state != ArtifactState::Destroying {
                    add_ref(c, new.id.as_str(), &new.holder).await?;
                }
                Ok(artifact)
            })
            .await;
        error::settle(&mut conn, res, op).await
    }

    async fn mark_ready(&self, id: &ArtifactId, size: u64, digest: &Digest) -> Result<Artifact> {
        let op = "mark_ready";
        let size = to_i64(size, "size")?;
        let mut conn = self.conn(op).await?;
        let res = conn
            .transaction::<_, Fail, _>(async |c| {
                let Some(cur) = lock_artifact(c, id.as_str()).await? else {
                    return Err(not_found(id.as_str()));
                };
                match ArtifactState::parse(&cur.state) {
                    Some(ArtifactState::Destroying) => {
                        return Err(destroying(id.as_str(), "mark it ready"));
                    }
                    Some(ArtifactState::Ready) => {
                        if cur.size == Some(size) && cur.digest.as_deref() == Some(digest.as_str())
                        {
                            let row = select_artifact(c, id.as_str())
                                .await?
                                .ok_or_else(|| not_found(id.as_str()))?;
                            return Ok(row.into_artifact()?);
                        }
                        return Err(Fail::Port(Error::conflict(format!(
                            "artifact {:?} is ready with a different size or digest",
                            id.as_str()
                        ))));
                    }
                    Some(ArtifactState::Creating) => {}
                    None => {
                        return Err(Fail::Port(Error::corrupt(format!(
                            "artifact {:?} has an invalid state",
                            id.as_str()
                        ))));
                    }
                }
                let row = diesel::sql_query(format!(
                    "UPDATE artifacts SET state = 'ready', size = $2, digest = $3, \
                     updated_at = now() WHERE id = $1 RETURNING {ARTIFACT_COLUMNS}"
                ))
                .bind::<Text, _>(id.as_str())
                .bind::<BigInt, _>(size)
                .bind::<Text, _>(digest.as_str())
                .get_result::<ArtifactRow>(c)
                .await?;
                Ok(row.into_artifact()?)
            })
            .await;
        error::settle(&mut conn, res, op).await
    }

    async fn get(&self, id: &ArtifactId) -> Result<Artifact> {
        let op = "get";
        let mut conn = self.conn(op).await?;
        let res = select_artifact(&mut conn, id.as_str()).await;
        match error::settle(&mut conn, res, op).await? {
            Some(row) => row.into_artifact(),
            None => Err(Error::not_found(format!("artifact {:?}", id.as_str()))),
        }
    }

    async fn find(&self, filter: &ArtifactFilter) -> Result<Vec<Artifact>> {
        let op = "find";
        let mut q = diesel::sql_query(format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE TRUE"
        ))
        .into_boxed::<diesel::pg::Pg>();
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        if let Some(v) = &filter.build {
            q = q
                .sql(format!(" AND build = ${}", next()))
                .bind::<Text, _>(v.clone());
        }
        if let Some(v) = &filter.step {
            q = q
                .sql(format!(" AND step = ${}", next()))
                .bind::<Text, _>(v.clone());
        }
        if let Some(v) = &filter.name {
            q = q
                .sql(format!(" AND name = ${}", next()))
                .bind::<Text, _>(v.clone());
        }
        if let Some(v) = &filter.volume {
            q = q
                .sql(format!(" AND volume = ${}", next()))
                .bind::<Text, _>(v.as_str().to_owned());
        }
        if let Some(v) = filter.state {
            q = q
                .sql(format!(" AND state = ${}", next()))
                .bind::<Text, _>(v.as_str().to_owned());
        }
        q = q.sql(" ORDER BY created_at, seq");
        let mut conn = self.conn(op).await?;
        let res = q.load::<ArtifactRow>(&mut conn).await.map_err(Fail::from);
        error::settle(&mut conn, res, op)
            .await?
            .into_iter()
            .map(ArtifactRow::into_artifact)
            .collect()
    }

    async fn acquire(&self, id: &ArtifactId, holder: &Holder) -> Result<()> {
        let op = "acquire";
        let mut conn = self.conn(op).await?;
        let res = conn
            .transaction::<_, Fail, _>(async |c| {
                let Some(cur) = lock_artifact(c, id.as_str()).await? else {
                    return Err(not_found(id.as_str()));
                };
                if cur.state == ArtifactState::Destroying.as_str() {
                    return Err(destroying(id.as_str(), "acquire it"));
                }
                add_ref(c, id.as_str(), holder).await?;
                Ok(())
            })
            .await;
        error::settle(&mut conn, res, op).await
    }

    async fn release(&self, id: &ArtifactId, holder: &Holder) -> Result<()> {
        let op = "release";
        let mut conn = self.conn(op).await?;
        let res = conn
            .transaction::<_, Fail, _>(async |c| {
                if lock_artifact(c, id.as_str()).await?.is_none() {
                    return Ok(());
                }
                diesel::sql_query(
                    "WITH gone AS (DELETE FROM artifact_refs \
                       WHERE artifact_id = $1 AND worker = $2 AND build = $3 \
                       RETURNING artifact_id) \
                     UPDATE artifacts SET ref_count = ref_count - 1, updated_at = now() \
                     WHERE id IN (SELECT artifact_id FROM gone)",
                )
                .bind::<Text, _>(id.as_str())
                .bind::<Text, _>(&holder.worker)
                .bind::<Text, _>(&holder.build)
                .execute(c)
                .await?;
                Ok(())
            })
            .await;
        error::settle(&mut conn, res, op).await
    }

    async fn release_all(&self, holder: &Holder) -> Result<u64> {
        let op = "release_all";
        let mut conn = self.conn(op).await?;
        let res = conn
            .transaction::<_, Fail, _>(async |c| {
                // Sorted locks: two holders releasing overlapping sets cannot deadlock.
                let locked: Vec<String> = diesel::sql_query(
                    "SELECT a.id FROM artifacts a WHERE a.id IN \
                       (SELECT artifact_id FROM artifact_refs WHERE worker = $1 AND build = $2) \
                     ORDER BY a.id FOR NO KEY UPDATE OF a",
                )
                .bind::<Text, _>(&holder.worker)
                .bind::<Text, _>(&holder.build)
                .load::<IdRow>(c)
                .await?
                .into_iter()
                .map(|r| r.id)
                .collect();
                if locked.is_empty() {
                    return Ok(0);
                }
                let n = diesel::sql_query(
                    "WITH gone AS (DELETE FROM artifact_refs \
                       WHERE worker = $1 AND build = $2 AND artifact_id = ANY($3) \
                       RETURNING artifact_id) \
                     UPDATE artifacts a SET ref_count = a.ref_count - 1, updated_at = now() \
                     FROM gone WHERE a.id = gone.artifact_id",
                )
                .bind::<Text, _>(&holder.worker)
                .bind::<Text, _>(&holder.build)
                .bind::<Array<Text>, _>(&locked)
                .execute(c)
                .await?;
                Ok(n as u64)
            })
            .await;
        error::settle(&mut conn, res, op).await
    }

    async fn claim_reapable(&self, claimer: &str, opts: &ClaimOpts) -> Result<Vec<Artifact>> {
        let op = "claim_reapable";
        if opts.limit == 0 {
            return Ok(Vec::new());
        }
        // More than i64::MAX rows cannot exist; clamp rather than refuse.
        let limit = i64::try_from(opts.limit).unwrap_or(i64::MAX);
        let stale_after = micros(opts.stale_after);
        let mut conn = self.conn(op).await?;
        let res = conn
            .transaction::<_, Fail, _>(async |c| {
                // 1. Candidates, each set read through its own index, so the cost follows
                //    the number of candidates, not the size of the table; then lock them
                //    without waiting for rows another reaper or a writer holds.
                //    A claim made at or before `now() - stale_after` is stale.
                let picked: Vec<String> = diesel::sql_query(format!(
                    "SELECT a.id FROM artifacts a WHERE a.id IN ( \
                        SELECT id FROM artifacts \
                         WHERE ref_count = 0 AND state <> 'destroying' \
                           AND COALESCE(retain_until, '-infinity'::timestamptz) <= now() \
                        UNION ALL \
                        SELECT id FROM artifacts \
                         WHERE state = 'destroying' \
                           AND claimed_at <= now() - $1 * interval '1 microsecond' \
                        UNION ALL \
                        SELECT r.artifact_id FROM workers w \
                          JOIN artifact_refs r ON r.worker = w.name \
                         WHERE w.expires_at <= now()) \
                     AND ((a.state = 'destroying' \
                           AND a.claimed_at <= now() - $1 * interval '1 microsecond') \
                       OR (a.state <> 'destroying' \
                           AND COALESCE(a.retain_until, '-infinity'::timestamptz) <= now() \
                           AND NOT {LIVE_REF})) \
                     ORDER BY a.created_at, a.seq \
                     LIMIT $2 \
                     FOR UPDATE OF a SKIP LOCKED"
                ))
                .bind::<BigInt, _>(stale_after)
                .bind::<BigInt, _>(limit)
                .load::<IdRow>(c)
                .await?
                .into_iter()
                .map(|r| r.id)
                .collect();
                if picked.is_empty() {
                    return Ok(Vec::new());
                }
                // 2. With the rows locked, re-check references with a fresh snapshot: a
                //    reference committed after step 1 read its snapshot is seen here, and
                //    none can be added until this transaction ends.
                let mut rows = diesel::sql_query(format!(
                    "UPDATE artifacts a SET state = 'destroying', claimed_by = $2, \
                       claimed_at = now(), updated_at = now() \
                     WHERE a.id = ANY($1) \
                       AND (a.state = 'destroying' OR NOT {LIVE_REF}) \
                     RETURNING {ARTIFACT_COLUMNS_A}"
                ))
                .bind::<Array<Text>, _>(&picked)
                .bind::<Text, _>(claimer)
                .load::<ArtifactRow>(c)
                .await?
                .into_iter()
                .map(ArtifactRow::into_artifact)
                .collect::<Result<Vec<_>>>()?;
                rows.sort_by_key(|a| a.created_at);
                Ok(rows)
            })
            .await;
        error::settle(&mut conn, res, op).await
    }

    async fn forget(&self, id: &ArtifactId) -> Result<()> {
        let op = "forget";
        let mut conn = self.conn(op).await?;
        let res = async {
            let deleted =
                diesel::sql_query("DELETE FROM artifacts WHERE id = $1 AND state = 'destroying'")
                    .bind::<Text, _>(id.as_str())
                    .execute(&mut *conn)
                    .await?;
            if deleted > 0 {
                return Ok(());
            }
            match artifact_exists(&mut conn, id.as_str()).await? {
                false => Ok(()),
                true => Err(Fail::Port(Error::conflict(format!(
                    "artifact {:?} is not being destroyed; claim it first",
                    id.as_str()
                )))),
            }
        }
        .await;
        error::settle(&mut conn, res, op).await
    }

    async fn known_volumes(&self, volumes: &[VolumeHandle]) -> Result<Vec<VolumeHandle>> {
        let op = "known_volumes";
        if volumes.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = volumes.iter().map(VolumeHandle::as_str).collect();
        let mut conn = self.conn(op).await?;
        let res = diesel::sql_query("SELECT volume FROM artifacts WHERE volume = ANY($1)")
            .bind::<Array<Text>, _>(&names)
            .load::<VolumeRow>(&mut conn)
            .await
            .map_err(Fail::from);
        let known: std::collections::HashSet<String> = error::settle(&mut conn, res, op)
            .await?
            .into_iter()
            .map(|r| r.volume)
            .collect();
        // Input order, each handle once.
        let mut seen = std::collections::HashSet::new();
        Ok(volumes
            .iter()
            .filter(|v| known.contains(v.as_str()) && seen.insert(v.as_str()))
            .cloned()
            .collect())
    }

    async fn heartbeat(&self, worker: &str, opts: &HeartbeatOpts) -> Result<Worker> {
        let op = "heartbeat";
        if opts.ttl > Duration::from_micros(MAX_MICROS as u64) {
            return Err(Error::invalid(
                "postgres registry: heartbeat ttl is out of range",
            ));
        }
        let ttl = micros(opts.ttl);
        let mut conn = self.liveness_conn(op).await?;
        let res = conn
            .transaction::<_, Fail, _>(async |c| {
                // Lock the name (or learn it is new) so that two registrations of one
                // name are decided one after the other.
                let current = diesel::sql_query(
                    "SELECT session, expires_at > now() AS alive, \
                       CEIL(EXTRACT(EPOCH FROM GREATEST(expires_at - now(), interval '0'))) \
                         :: bigint AS remaining_secs \
                     FROM workers WHERE name = $1 FOR UPDATE",
                )
                .bind::<Text, _>(worker)
                .get_result::<SessionRow>(c)
                .await
                .optional()?;
                let ours = current.as_ref().is_some_and(|w| w.session == opts.session);
                let alive = current.as_ref().is_some_and(|w| w.alive);
                match opts.mode {
                    HeartbeatMode::Register if alive && !ours => {
                        let secs = current.map_or(0, |w| w.remaining_secs);
                        return Err(held_by_another(worker, Some(secs)));
                    }
                    HeartbeatMode::Register if current.is_some() && !alive => {
                        // The lapsed registration's references protect nothing; they must
                        // not come back to life under the new one.
                        drop_refs_of_worker(c, worker).await?;
                    }
                    HeartbeatMode::Renew if !(alive && ours) => {
                        return Err(Fail::Port(Error::conflict(format!(
                            "the registration of worker {worker:?} lapsed or was taken over"
                        ))));
                    }
                    _ => {}
                }
                // The condition repeats the decision for a name that did not exist above:
                // of two first registrations racing, the second waits for the first to
                // commit and then finds the name held.
                let row = diesel::sql_query(
                    "INSERT INTO workers (name, session, last_heartbeat, expires_at) \
                     VALUES ($1, $2, now(), now() + $3 * interval '1 microsecond') \
                     ON CONFLICT (name) DO UPDATE SET session = EXCLUDED.session, \
                       last_heartbeat = EXCLUDED.last_heartbeat, \
                       expires_at = EXCLUDED.expires_at \
                     WHERE workers.session = EXCLUDED.session OR workers.expires_at <= now() \
                     RETURNING name, last_heartbeat, expires_at, expires_at > now() AS alive",
                )
                .bind::<Text, _>(worker)
                .bind::<Text, _>(&opts.session)
                .bind::<BigInt, _>(ttl)
                .get_result::<WorkerRow>(c)
                .await
                .optional()?;
                match row {
                    Some(row) => Ok(row.into_worker()),
                    None => Err(held_by_another(worker, None)),
                }
            })
            .await;
        error::settle(&mut conn, res, op).await
    }

    async fn sign_off(&self, worker: &str, session: &str) -> Result<()> {
        let op = "sign_off";
        let mut conn = self.liveness_conn(op).await?;
        let res = diesel::sql_query(
            "UPDATE workers SET expires_at = now() \
             WHERE name = $1 AND session = $2 AND expires_at > now()",
        )
        .bind::<Text, _>(worker)
        .bind::<Text, _>(session)
        .execute(&mut conn)
        .await
        .map(|_| ())
        .map_err(Fail::from);
        error::settle(&mut conn, res, op).await
    }

    async fn workers(&self) -> Result<Vec<Worker>> {
        let op = "workers";
        let mut conn = self.conn(op).await?;
        let res = diesel::sql_query(
            "SELECT name, last_heartbeat, expires_at, expires_at > now() AS alive \
             FROM workers ORDER BY name",
        )
        .load::<WorkerRow>(&mut conn)
        .await
        .map_err(Fail::from);
        Ok(error::settle(&mut conn, res, op)
            .await?
            .into_iter()
            .map(WorkerRow::into_worker)
            .collect())
    }
}

/// Drop every reference held by `worker`'s builds, keeping the locking order: the
/// artifact rows first (sorted by id), then the reference rows.
async fn drop_refs_of_worker(
    c: &mut AsyncPgConnection,
    worker: &str,
) -> std::result::Result<(), Fail> {
    let locked: Vec<String> = diesel::sql_query(
        "SELECT a.id FROM artifacts a WHERE a.id IN \
           (SELECT artifact_id FROM artifact_refs WHERE worker = $1) \
         ORDER BY a.id FOR NO KEY UPDATE OF a",
    )
    .bind::<Text, _>(worker)
    .load::<IdRow>(c)
    .await?
    .into_iter()
    .map(|r| r.id)
    .collect();
    if locked.is_empty() {
        return Ok(());
    }
    diesel::sql_query(
        "WITH gone AS (DELETE FROM artifact_refs \
           WHERE worker = $1 AND artifact_id = ANY($2) RETURNING artifact_id), \
         counted AS (SELECT artifact_id, count(*) AS n FROM gone GROUP BY artifact_id) \
         UPDATE artifacts a SET ref_count = a.ref_count - counted.n, updated_at = now() \
         FROM counted WHERE a.id = counted.artifact_id",
    )
    .bind::<Text, _>(worker)
    .bind::<Array<Text>, _>(&locked)
    .execute(c)
    .await?;
    Ok(())
}

/// Whether an artifact exists (used after a conditional write changed nothing).
async fn artifact_exists(c: &mut AsyncPgConnection, id: &str) -> std::result::Result<bool, Fail> {
    Ok(select_artifact(c, id).await?.is_some())
}
