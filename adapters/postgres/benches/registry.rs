//! Registry benchmarks against a real server, beside the in-memory registry as baseline.
//!
//! Run: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!       cargo bench -p jetbridge-postgres --bench registry`
//!
//! Measures registrations per second with 16 concurrent writers, and the time of one
//! reaper pass (`claim_reapable` of 1,000 reapable artifacts) over 10,000 and 100,000
//! artifacts, to show that the pass costs what it reaps, not what the table holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use jetbridge_core::names::{ArtifactId, VolumeHandle};
use jetbridge_core::ports::{ArtifactRegistry, ClaimOpts, Holder, NewArtifact};
use jetbridge_memory::MemoryRegistry;
use jetbridge_postgres::scratch::ScratchSchema;
use jetbridge_postgres::{PgOptions, PgRegistry};

const WRITERS: usize = 16;
const REGISTRATIONS: usize = 8_000;
const REAPABLE: usize = 1_000;
const REPEATS: usize = 5;
const STALE: Duration = Duration::from_secs(600);

fn new_artifact(build: &str, holder: &Holder) -> NewArtifact {
    NewArtifact::new(
        ArtifactId::random(),
        build,
        "step",
        "out",
        VolumeHandle::random(),
        holder.clone(),
    )
}

/// Registrations per second with `WRITERS` concurrent writers.
async fn registrations_per_second(reg: Arc<dyn ArtifactRegistry>) -> f64 {
    let per_writer = REGISTRATIONS / WRITERS;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let reg = Arc::clone(&reg);
        tasks.push(tokio::spawn(async move {
            let holder = Holder::new(format!("w{w}"), format!("b{w}"));
            for _ in 0..per_writer {
                reg.register(&new_artifact(&format!("b{w}"), &holder))
                    .await
                    .expect("register");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    (per_writer * WRITERS) as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// One reaper pass over `total` artifacts of which `REAPABLE` are reapable, in memory
/// (median of 3).
async fn memory_pass(total: usize) -> Duration {
    let mut times = Vec::new();
    for _ in 0..3 {
        let reg = MemoryRegistry::new();
        let keep = Holder::new("w-keep", "b-keep");
        let gone = Holder::new("w-gone", "b-gone");
        for i in 0..total {
            let holder = if i % (total / REAPABLE) == 0 {
                &gone
            } else {
                &keep
            };
            reg.register(&new_artifact("b", holder))
                .await
                .expect("register");
        }
        reg.release_all(&gone).await.expect("release");
        let start = Instant::now();
        let got = reg
            .claim_reapable(
                "bench",
                &ClaimOpts::default()
                    .with_limit(REAPABLE)
                    .with_stale_after(STALE),
            )
            .await
            .expect("claim");
        times.push(start.elapsed());
        assert_eq!(got.len(), REAPABLE);
    }
    median(times)
}

/// Seed `total` artifacts server-side: every `total / REAPABLE`-th is unreferenced, the
/// rest are held by a live build.
async fn seed(conn: &mut AsyncPgConnection, total: usize) {
    let every = total / REAPABLE;
    conn.batch_execute(&format!(
        "INSERT INTO workers (name, last_heartbeat, expires_at) \
           VALUES ('w-keep', now(), now() + interval '1 day'); \
         INSERT INTO artifacts (id, build, step, name, volume, state, size, digest, worker, ref_count) \
           SELECT 'a-' || g, 'b' || (g % 500), 'step', 'out', 'v-' || g, 'ready', 1, \
                  'sha256:' || repeat('0', 64), 'w-keep', CASE WHEN g % {every} = 0 THEN 0 ELSE 1 END \
           FROM generate_series(0, {last}) AS g; \
         INSERT INTO artifact_refs (artifact_id, worker, build) \
           SELECT 'a-' || g, 'w-keep', 'b-keep' FROM generate_series(0, {last}) AS g \
           WHERE g % {every} <> 0;",
        last = total - 1
    ))
    .await
    .expect("seed");
    vacuum(conn).await;
}

/// `VACUUM` refuses to run in a (implicit) transaction block: one statement per call.
async fn vacuum(conn: &mut AsyncPgConnection) {
    for table in ["artifacts", "artifact_refs", "workers"] {
        conn.batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await
            .expect("vacuum");
    }
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = Text)]
    #[allow(dead_code)] // read only to make the query do its work
    id: String,
}

/// One reaper pass over `total` artifacts in Postgres; also the same selection done as a
/// plain anti-join over the whole table (no `ref_count` column), for comparison.
async fn postgres_pass(url: &str, total: usize) -> (Duration, Duration) {
    let schema = ScratchSchema::new(url, "jb_bench").expect("schema name");
    let reg = PgRegistry::connect(
        url,
        PgOptions {
            pool_size: 2,
            schema: Some(schema.name().to_owned()),
            ..PgOptions::default()
        },
    )
    .await
    .expect("connect");
    let mut conn = AsyncPgConnection::establish(url).await.expect("connect");
    conn.batch_execute(&format!("SET search_path TO {}", schema.name()))
        .await
        .expect("search_path");
    seed(&mut conn, total).await;
    let mut times = Vec::new();
    let mut naive = Vec::new();
    for _ in 0..REPEATS {
        let start = Instant::now();
        let got = reg
            .claim_reapable(
                "bench",
                &ClaimOpts::default()
                    .with_limit(REAPABLE)
                    .with_stale_after(STALE),
            )
            .await
            .expect("claim");
        times.push(start.elapsed());
        assert_eq!(got.len(), REAPABLE);
        conn.batch_execute(
            "UPDATE artifacts SET state = 'ready', claimed_by = NULL, claimed_at = NULL \
             WHERE state = 'destroying'",
        )
        .await
        .expect("reset");
        vacuum(&mut conn).await;

        let start = Instant::now();
        let rows = diesel::sql_query(
            "SELECT a.id FROM artifacts a WHERE a.state <> 'destroying' \
               AND COALESCE(a.retain_until, '-infinity'::timestamptz) <= now() \
               AND NOT EXISTS (SELECT 1 FROM artifact_refs r \
                 LEFT JOIN workers w ON w.name = r.worker \
                 WHERE r.artifact_id = a.id AND (w.name IS NULL OR w.expires_at > now())) \
             ORDER BY a.created_at, a.seq LIMIT 1000",
        )
        .load::<IdRow>(&mut conn)
        .await
        .expect("naive");
        naive.push(start.elapsed());
        assert_eq!(rows.len(), REAPABLE);
    }
    drop(reg);
    (median(times), median(naive))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let Some(url) = std::env::var("DATABASE_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
    else {
        println!(
            "registry bench needs a server: DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
             cargo bench -p jetbridge-postgres --bench registry"
        );
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        println!("registrations/s, {WRITERS} concurrent writers, {REGISTRATIONS} registrations");
        let mem: Arc<dyn ArtifactRegistry> = Arc::new(MemoryRegistry::new());
        let mem_rate = registrations_per_second(mem).await;
        let schema = ScratchSchema::new(&url, "jb_bench").expect("schema name");
        let pg: Arc<dyn ArtifactRegistry> = Arc::new(
            PgRegistry::connect(
                &url,
                PgOptions {
                    pool_size: WRITERS as u32,
                    schema: Some(schema.name().to_owned()),
                    ..PgOptions::default()
                },
            )
            .await
            .expect("connect"),
        );
        let pg_rate = registrations_per_second(Arc::clone(&pg)).await;
        drop(pg);
        drop(schema);
        println!("  {:<28} {:>12.0}", "memory (baseline)", mem_rate);
        println!("  {:<28} {:>12.0}", "postgres", pg_rate);
        println!();
        println!(
            "reaper pass: claim_reapable of {REAPABLE} reapable artifacts \
             (postgres: median of {REPEATS}; memory: one run)"
        );
        println!(
            "  {:<10} {:>14} {:>14} {:>22}",
            "artifacts", "memory", "postgres", "postgres anti-join"
        );
        for total in [10_000, 100_000] {
            let mem = memory_pass(total).await;
            let (pg, naive) = postgres_pass(&url, total).await;
            println!(
                "  {:<10} {:>14} {:>14} {:>22}",
                total,
                ms(mem),
                ms(pg),
                ms(naive)
            );
        }
    });
}
