//! Shared set-up of the live tests: a registry in its own scratch schema.

#![allow(dead_code)] // each test binary uses a different part

use std::time::{Duration, SystemTime};

use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use jetbridge_core::names::{ArtifactId, VolumeHandle};
use jetbridge_core::ports::{Holder, NewArtifact};
use jetbridge_postgres::scratch::ScratchSchema;
use jetbridge_postgres::{PgOptions, PgRegistry};

/// `DATABASE_URL`, if set.
pub fn database_url() -> Option<String> {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
}

/// A registry in a fresh schema (dropped with the returned guard), or `None` (after a
/// loud SKIPPED line) without `DATABASE_URL`.
pub async fn registry(pool_size: u32) -> Option<(PgRegistry, ScratchSchema, String)> {
    let Some(url) = database_url() else {
        jetbridge_conformance::live::unavailable("POSTGRES", "DATABASE_URL is not set");
        return None;
    };
    let schema = ScratchSchema::new(&url, "jb_test").expect("a scratch schema name");
    let registry = PgRegistry::connect(
        &url,
        PgOptions {
            pool_size,
            schema: Some(schema.name().to_owned()),
            application_name: schema.name().to_owned(),
            ..PgOptions::default()
        },
    )
    .await
    .expect("connect to DATABASE_URL");
    Some((registry, schema, url))
}

/// A plain connection with `search_path` set to `schema`, for inspecting and disturbing.
pub async fn raw(url: &str, schema: &str) -> AsyncPgConnection {
    let mut c = AsyncPgConnection::establish(url)
        .await
        .expect("raw connection");
    c.batch_execute(&format!("SET search_path TO \"{schema}\""))
        .await
        .expect("set search_path");
    c
}

#[derive(QueryableByName)]
pub struct Count {
    #[diesel(sql_type = BigInt)]
    pub n: i64,
}

/// Run a `SELECT count(*) AS n ...`.
pub async fn count(c: &mut AsyncPgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Count>(c)
        .await
        .expect("count query")
        .n
}

/// Artifacts whose `ref_count` disagrees with their reference rows (must be 0).
pub async fn ref_count_mismatches(c: &mut AsyncPgConnection) -> i64 {
    count(
        c,
        "SELECT count(*) AS n FROM artifacts a \
         WHERE a.ref_count <> (SELECT count(*) FROM artifact_refs r WHERE r.artifact_id = a.id)",
    )
    .await
}

/// A registration of a fresh artifact held by `holder`.
pub fn new_artifact(build: &str, holder: &Holder) -> NewArtifact {
    NewArtifact::new(
        ArtifactId::random(),
        build,
        "step",
        "out",
        VolumeHandle::random(),
        holder.clone(),
    )
}

/// Whole seconds, so times survive the database's microsecond precision unchanged.
pub fn now_secs() -> SystemTime {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970");
    SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs())
}
