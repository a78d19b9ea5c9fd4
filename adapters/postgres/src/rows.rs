//! Row types read with `sql_query`, and the `timestamptz` mapping of `SystemTime`.

use std::time::SystemTime;

use diesel::QueryableByName;
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::{
    Array, BigInt, Binary, Bool, Integer, Nullable, Text, Timestamp, Timestamptz,
};
use jetbridge_core::digest::Digest;
use jetbridge_core::names::{ArtifactId, VolumeHandle};
use jetbridge_core::ports::{
    Artifact, ArtifactState, BuildEvent, BuildId, BuildState, InFlightLimit, LapsedBuild,
    NewPipeline, QueuedBuild, StoredPipeline, Worker,
};
use jetbridge_core::{Error, Result};

/// A point in time stored as `timestamptz` (microsecond precision; finer parts of a
/// `SystemTime` are truncated by the encoding).
///
/// diesel maps `SystemTime` to `timestamp` only; the binary encoding of `timestamptz` is
/// the same (microseconds since 2000-01-01 UTC), so the `timestamp` codec is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, AsExpression, FromSqlRow)]
#[diesel(sql_type = Timestamptz)]
pub(crate) struct Ts(pub(crate) SystemTime);

impl ToSql<Timestamptz, Pg> for Ts {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <SystemTime as ToSql<Timestamp, Pg>>::to_sql(&self.0, out)
    }
}

impl FromSql<Timestamptz, Pg> for Ts {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        <SystemTime as FromSql<Timestamp, Pg>>::from_sql(bytes).map(Ts)
    }
}

/// The columns every artifact query selects, in [`ArtifactRow`] order.
pub(crate) const ARTIFACT_COLUMNS: &str =
    "id, build, step, name, volume, state, size, digest, worker, retain_until, created_at";

/// The same columns qualified with the alias `a`.
pub(crate) const ARTIFACT_COLUMNS_A: &str = "a.id, a.build, a.step, a.name, a.volume, a.state, \
     a.size, a.digest, a.worker, a.retain_until, a.created_at";

/// One row of `artifacts`.
#[derive(Debug, QueryableByName)]
pub(crate) struct ArtifactRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    build: String,
    #[diesel(sql_type = Text)]
    step: String,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    volume: String,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    size: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    digest: Option<String>,
    #[diesel(sql_type = Text)]
    worker: String,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    retain_until: Option<Ts>,
    #[diesel(sql_type = Timestamptz)]
    created_at: Ts,
}

fn corrupt(what: &str, id: &str) -> Error {
    Error::corrupt(format!(
        "postgres registry: artifact {id:?} has an invalid {what}"
    ))
}

impl ArtifactRow {
    /// The domain record; `Corrupt` if a stored value does not parse.
    pub(crate) fn into_artifact(self) -> Result<Artifact> {
        let id = ArtifactId::parse(&self.id).map_err(|_| corrupt("id", &self.id))?;
        let volume = VolumeHandle::parse(&self.volume).map_err(|_| corrupt("volume", &self.id))?;
        let state = ArtifactState::parse(&self.state).ok_or_else(|| corrupt("state", &self.id))?;
        let size = match self.size {
            Some(s) => Some(u64::try_from(s).map_err(|_| corrupt("size", &self.id))?),
            None => None,
        };
        let digest = match self.digest {
            Some(d) => Some(Digest::parse(&d).ok_or_else(|| corrupt("digest", &self.id))?),
            None => None,
        };
        Ok(Artifact {
            id,
            build: self.build,
            step: self.step,
            name: self.name,
            volume,
            state,
            size,
            digest,
            worker: self.worker,
            retain_until: self.retain_until.map(|t| t.0),
            created_at: self.created_at.0,
        })
    }
}

/// An artifact row plus whether it matches a registration (see `register`).
#[derive(Debug, QueryableByName)]
pub(crate) struct ExistingRow {
    #[diesel(embed)]
    pub(crate) artifact: ArtifactRow,
    #[diesel(sql_type = Bool)]
    pub(crate) same: bool,
}

/// The lock-and-inspect row used before changing an artifact.
#[derive(Debug, QueryableByName)]
pub(crate) struct StateRow {
    #[diesel(sql_type = Text)]
    pub(crate) state: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub(crate) size: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) digest: Option<String>,
}

/// One id.
#[derive(Debug, QueryableByName)]
pub(crate) struct IdRow {
    #[diesel(sql_type = Text)]
    pub(crate) id: String,
}

/// One volume handle.
#[derive(Debug, QueryableByName)]
pub(crate) struct VolumeRow {
    #[diesel(sql_type = Text)]
    pub(crate) volume: String,
}

/// One row of `workers`.
#[derive(Debug, QueryableByName)]
pub(crate) struct WorkerRow {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Timestamptz)]
    last_heartbeat: Ts,
    #[diesel(sql_type = Timestamptz)]
    expires_at: Ts,
    #[diesel(sql_type = Bool)]
    alive: bool,
}

impl WorkerRow {
    pub(crate) fn into_worker(self) -> Worker {
        Worker {
            name: self.name,
            last_heartbeat: self.last_heartbeat.0,
            expires_at: self.expires_at.0,
            alive: self.alive,
        }
    }
}

/// Who holds a worker name, and whether the registration is alive, locked before a
/// heartbeat decides.
#[derive(Debug, QueryableByName)]
pub(crate) struct SessionRow {
    #[diesel(sql_type = Text)]
    pub(crate) session: String,
    #[diesel(sql_type = Bool)]
    pub(crate) alive: bool,
    /// How long the registration still runs, in whole seconds (rounded up).
    #[diesel(sql_type = BigInt)]
    pub(crate) remaining_secs: i64,
}

/// The columns every pipeline query selects, in [`PipelineRow`] order.
pub(crate) const PIPELINE_COLUMNS: &str =
    "team, name, instance_vars, config, vars, file, version, set_by, created_at, updated_at";

/// One row of `pipelines`.
#[derive(Debug, QueryableByName)]
pub(crate) struct PipelineRow {
    #[diesel(sql_type = Text)]
    team: String,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    instance_vars: String,
    #[diesel(sql_type = Text)]
    config: String,
    #[diesel(sql_type = Binary)]
    vars: Vec<u8>,
    #[diesel(sql_type = Text)]
    file: String,
    #[diesel(sql_type = BigInt)]
    version: i64,
    #[diesel(sql_type = BigInt)]
    set_by: i64,
    #[diesel(sql_type = Timestamptz)]
    created_at: Ts,
    #[diesel(sql_type = Timestamptz)]
    updated_at: Ts,
}

impl PipelineRow {
    /// The domain record; `Corrupt` if a stored number is out of range.
    pub(crate) fn into_pipeline(self) -> Result<StoredPipeline> {
        let corrupt = |what: &str| {
            Error::corrupt(format!(
                "postgres build queue: pipeline {}/{} has an invalid {what}",
                self.team, self.name
            ))
        };
        let version = u64::try_from(self.version).map_err(|_| corrupt("version"))?;
        let set_by = u64::try_from(self.set_by)
            .map(BuildId)
            .map_err(|_| corrupt("set_by"))?;
        let mut p = NewPipeline::new(self.team, self.name, self.config, self.file);
        p.instance_vars = self.instance_vars;
        p.vars = self.vars;
        Ok(StoredPipeline::new(
            p,
            version,
            set_by,
            self.created_at.0,
            self.updated_at.0,
        ))
    }
}

/// The columns every build query selects, in [`BuildRow`] order, except `position`,
/// which each query computes (or sets `NULL`) itself.
pub(crate) const BUILD_COLUMNS: &str = "id, pipeline, job, spec, state, worker, attempt, \
     steps_started, abort_requested, reason, outcome, submitted_at, started_at, finished_at, \
     limit_keys, limit_max";

/// One row of `builds`, plus the build's place in the queue.
#[derive(Debug, QueryableByName)]
pub(crate) struct BuildRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    pipeline: String,
    #[diesel(sql_type = Text)]
    job: String,
    #[diesel(sql_type = Binary)]
    spec: Vec<u8>,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Nullable<Text>)]
    worker: Option<String>,
    #[diesel(sql_type = BigInt)]
    attempt: i64,
    #[diesel(sql_type = Bool)]
    steps_started: bool,
    #[diesel(sql_type = Nullable<Text>)]
    abort_requested: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    reason: Option<String>,
    #[diesel(sql_type = Nullable<Binary>)]
    outcome: Option<Vec<u8>>,
    #[diesel(sql_type = Timestamptz)]
    submitted_at: Ts,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    started_at: Option<Ts>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    finished_at: Option<Ts>,
    /// The in-flight limits' keys, and at the same index their caps.
    #[diesel(sql_type = Array<Text>)]
    limit_keys: Vec<String>,
    #[diesel(sql_type = Array<Integer>)]
    limit_max: Vec<i32>,
    /// Queued builds ahead of this one; `NULL` unless it is queued.
    #[diesel(sql_type = Nullable<BigInt>)]
    position: Option<i64>,
}

fn corrupt_build(what: &str, id: i64) -> Error {
    Error::corrupt(format!(
        "postgres build queue: build {id} has an invalid {what}"
    ))
}

/// A stored build id (identity, so never negative in a sound table).
pub(crate) fn build_id(id: i64) -> Result<BuildId> {
    u64::try_from(id)
        .map(BuildId)
        .map_err(|_| corrupt_build("id", id))
}

impl BuildRow {
    /// The domain record; `Corrupt` if a stored value does not parse.
    pub(crate) fn into_build(self) -> Result<QueuedBuild> {
        let id = self.id;
        let state = BuildState::parse(&self.state).ok_or_else(|| corrupt_build("state", id))?;
        let attempt = u64::try_from(self.attempt).map_err(|_| corrupt_build("attempt", id))?;
        let position = match self.position {
            Some(p) => Some(u64::try_from(p).map_err(|_| corrupt_build("position", id))?),
            None => None,
        };
        let mut b = QueuedBuild::new(
            build_id(id)?,
            self.pipeline,
            self.job,
            self.spec,
            self.submitted_at.0,
        );
        b.state = state;
        b.position = position;
        b.worker = self.worker;
        b.attempt = attempt;
        b.steps_started = self.steps_started;
        b.abort_requested = self.abort_requested;
        b.reason = self.reason;
        b.outcome = self.outcome;
        b.started_at = self.started_at.map(|t| t.0);
        b.finished_at = self.finished_at.map(|t| t.0);
        if self.limit_keys.len() != self.limit_max.len() {
            return Err(corrupt_build("in-flight limits", id));
        }
        b.limits = self
            .limit_keys
            .into_iter()
            .zip(self.limit_max)
            .map(|(key, max)| match u32::try_from(max) {
                Ok(max_running) if max_running > 0 => Ok(InFlightLimit { key, max_running }),
                _ => Err(corrupt_build("in-flight limit", id)),
            })
            .collect::<Result<_>>()?;
        Ok(b)
    }
}

/// One row of `build_events`.
#[derive(Debug, QueryableByName)]
pub(crate) struct EventRow {
    #[diesel(sql_type = BigInt)]
    build_id: i64,
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    data: String,
}

impl EventRow {
    /// The domain record; `Corrupt` for a negative id or seq.
    pub(crate) fn into_event(self) -> Result<BuildEvent> {
        let seq = u64::try_from(self.seq).map_err(|_| corrupt_build("event seq", self.build_id))?;
        Ok(BuildEvent {
            build: build_id(self.build_id)?,
            seq,
            kind: self.kind,
            data: self.data,
        })
    }
}

/// A build the reaper dealt with.
#[derive(Debug, QueryableByName)]
pub(crate) struct LapsedRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Nullable<Text>)]
    worker: Option<String>,
    #[diesel(sql_type = Bool)]
    requeued: bool,
}

impl LapsedRow {
    /// The domain record; `Corrupt` for a running build without a holder (which the
    /// table's CHECK rules out).
    pub(crate) fn into_lapsed(self) -> Result<LapsedBuild> {
        Ok(LapsedBuild {
            id: build_id(self.id)?,
            worker: self
                .worker
                .ok_or_else(|| corrupt_build("worker", self.id))?,
            requeued: self.requeued,
        })
    }
}

/// What a refused write is explained by: the build's state and current attempt.
#[derive(Debug, QueryableByName)]
pub(crate) struct BuildStateRow {
    #[diesel(sql_type = Text)]
    pub(crate) state: String,
    #[diesel(sql_type = BigInt)]
    pub(crate) attempt: i64,
}

/// What a renewal returns.
#[derive(Debug, QueryableByName)]
pub(crate) struct AbortRow {
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) abort_requested: Option<String>,
}

/// One count, or one sequence number.
#[derive(Debug, QueryableByName)]
pub(crate) struct CountRow {
    #[diesel(sql_type = BigInt)]
    pub(crate) n: i64,
}

/// Queued and running builds.
#[derive(Debug, QueryableByName)]
pub(crate) struct DepthRow {
    #[diesel(sql_type = BigInt)]
    pub(crate) queued: i64,
    #[diesel(sql_type = BigInt)]
    pub(crate) running: i64,
}
