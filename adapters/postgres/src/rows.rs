//! Row types read with `sql_query`, and the `timestamptz` mapping of `SystemTime`.

use std::time::SystemTime;

use diesel::QueryableByName;
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamp, Timestamptz};
use jetbridge_core::digest::Digest;
use jetbridge_core::names::{ArtifactId, VolumeHandle};
use jetbridge_core::ports::{Artifact, ArtifactState, Worker};
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
