//! Concurrency and failure behaviour against a real server (`DATABASE_URL`); each test
//! works in its own schema.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::{count, new_artifact, raw, ref_count_mismatches, registry};
use diesel::QueryableByName;
use diesel::sql_types::Integer;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use jetbridge_core::ErrorKind;
use jetbridge_core::digest::Digest;
use jetbridge_core::ports::{
    ArtifactFilter, ArtifactRegistry, ArtifactState, ClaimOpts, HeartbeatMode, HeartbeatOpts,
    Holder,
};

const STALE: Duration = Duration::from_secs(600);

fn claim(limit: usize) -> ClaimOpts {
    ClaimOpts::default()
        .with_limit(limit)
        .with_stale_after(STALE)
}

fn register(session: &str, ttl: Duration) -> HeartbeatOpts {
    HeartbeatOpts::new(session, ttl, HeartbeatMode::Register)
}

/// Of many processes registering one new name at once, exactly one gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_first_registrations_of_one_name_yield_one_holder() {
    let Some((reg, _schema, _url)) = registry(8).await else {
        return;
    };
    let reg = Arc::new(reg);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let reg = Arc::clone(&reg);
            tokio::spawn(async move {
                reg.heartbeat("w-contended", &register(&format!("s{i}"), STALE))
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(w) => {
                assert!(w.alive);
                won += 1;
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}"),
        }
    }
    assert_eq!(won, 1, "one process holds the name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registration_of_one_artifact_yields_one_record() {
    let Some((reg, schema, url)) = registry(8).await else {
        return;
    };
    let reg = Arc::new(reg);
    let holder = Holder::new("w1", "b1");
    let new = new_artifact("b1", &holder);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let reg = Arc::clone(&reg);
        let new = new.clone();
        tasks.push(tokio::spawn(async move {
            // A caller retries what is retryable; the registration must converge anyway.
            let mut tries = 0;
            loop {
                match reg.register(&new).await {
                    Ok(a) => return a,
                    Err(e) if e.is_retryable() && tries < 5 => tries += 1,
                    Err(e) => panic!("register failed: {e}"),
                }
            }
        }));
    }
    let mut records = Vec::new();
    for t in tasks {
        records.push(t.await.expect("task"));
    }
    assert!(
        records.windows(2).all(|w| w[0] == w[1]),
        "all callers see one record"
    );
    assert_eq!(records[0].id, new.id);
    let found = reg
        .find(&ArtifactFilter {
            build: Some("b1".into()),
            ..ArtifactFilter::default()
        })
        .await
        .expect("find");
    assert_eq!(found.len(), 1);
    let mut c = raw(&url, schema.name()).await;
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM artifact_refs").await,
        1
    );
    assert_eq!(ref_count_mismatches(&mut c).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reapers_never_share_a_claim_nor_take_a_referenced_artifact() {
    let Some((reg, schema, url)) = registry(12).await else {
        return;
    };
    let reg = Arc::new(reg);
    let builder = Holder::new("w-build", "b-build");
    let keeper = Holder::new("w-keep", "b-keep");
    let digest = Digest::from_sha256(&[7; 32]);
    let mut referenced = HashSet::new();
    let mut released = Vec::new();
    for i in 0..300 {
        let a = reg
            .register(&new_artifact(&format!("b{}", i % 10), &builder))
            .await
            .expect("register");
        reg.mark_ready(&a.id, 1, &digest).await.expect("ready");
        if i % 3 == 0 {
            reg.acquire(&a.id, &keeper).await.expect("acquire");
            referenced.insert(a.id.clone());
        } else {
            released.push(a.id.clone());
        }
    }
    assert_eq!(reg.release_all(&builder).await.expect("release_all"), 300);

    // While reapers run, late acquirers race them for the released artifacts: an
    // acquire that succeeds must protect its artifact from every later claim.
    let late = Holder::new("w-late", "b-late");
    let mut acquirers = Vec::new();
    for chunk in released.chunks(25).map(<[_]>::to_vec) {
        let reg = Arc::clone(&reg);
        let late = late.clone();
        acquirers.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for id in chunk.iter().step_by(3) {
                match reg.acquire(id, &late).await {
                    Ok(()) => won.push(id.clone()),
                    Err(e) if e.kind() == ErrorKind::Conflict => {}
                    Err(e) => panic!("acquire failed: {e}"),
                }
            }
            won
        }));
    }
    let mut reapers = Vec::new();
    for r in 0..8 {
        let reg = Arc::clone(&reg);
        reapers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut empty_rounds = 0;
            while empty_rounds < 3 {
                let got = reg
                    .claim_reapable(
                        &format!("reaper-{r}"),
                        &ClaimOpts::default().with_limit(7).with_stale_after(STALE),
                    )
                    .await
                    .expect("claim");
                if got.is_empty() {
                    empty_rounds += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                for a in got {
                    assert_eq!(a.state, ArtifactState::Destroying);
                    mine.push(a.id);
                }
            }
            mine
        }));
    }
    let mut won = HashSet::new();
    for t in acquirers {
        won.extend(t.await.expect("acquirer"));
    }
    let mut claimed = HashSet::new();
    let mut total = 0;
    for t in reapers {
        let mine = t.await.expect("reaper");
        total += mine.len();
        claimed.extend(mine);
    }
    assert_eq!(total, claimed.len(), "no artifact was claimed twice");
    assert!(
        claimed.is_disjoint(&referenced),
        "a referenced artifact was claimed"
    );
    assert!(
        claimed.is_disjoint(&won),
        "an acquired artifact was claimed"
    );
    let expected: HashSet<_> = released
        .iter()
        .filter(|id| !won.contains(*id))
        .cloned()
        .collect();
    assert_eq!(claimed, expected, "every unreferenced artifact was claimed");
    let mut c = raw(&url, schema.name()).await;
    assert_eq!(ref_count_mismatches(&mut c).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_whose_volume_was_never_filled_is_collectable() {
    let Some((reg, _schema, _url)) = registry(2).await else {
        return;
    };
    let holder = Holder::new("w1", "b1");
    let a = reg
        .register(&new_artifact("b1", &holder))
        .await
        .expect("register");
    assert!(
        reg.claim_reapable("r", &claim(10))
            .await
            .expect("claim")
            .is_empty(),
        "held while its step runs"
    );
    // The step failed before sealing: the build releases its references.
    assert_eq!(reg.release_all(&holder).await.expect("release"), 1);
    let got = reg.claim_reapable("r", &claim(10)).await.expect("claim");
    assert_eq!(got.iter().map(|x| &x.id).collect::<Vec<_>>(), vec![&a.id]);
    assert_eq!(got[0].state, ArtifactState::Destroying);
    reg.forget(&a.id).await.expect("forget");
    assert_eq!(
        reg.get(&a.id).await.expect_err("gone").kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_worker_hands_its_artifacts_to_the_reaper() {
    let Some((reg, schema, url)) = registry(2).await else {
        return;
    };
    let ttl = Duration::from_secs(30);
    reg.heartbeat("w-dies", &register("s1", ttl))
        .await
        .expect("heartbeat");
    reg.heartbeat("w-lives", &register("s2", Duration::from_secs(3600)))
        .await
        .expect("heartbeat");
    let dead_only = reg
        .register(&new_artifact("b1", &Holder::new("w-dies", "b1")))
        .await
        .expect("register");
    let shared = reg
        .register(&new_artifact("b1", &Holder::new("w-dies", "b1")))
        .await
        .expect("register");
    reg.acquire(&shared.id, &Holder::new("w-lives", "b2"))
        .await
        .expect("acquire");
    let unknown = reg
        .register(&new_artifact(
            "b3",
            &Holder::new("w-never-registered", "b3"),
        ))
        .await
        .expect("register");

    let before = reg.claim_reapable("r", &claim(10)).await.expect("claim");
    assert!(before.is_empty(), "a live worker's reference protects");

    // The registration runs out on the server's clock (no renewal came).
    let mut c = raw(&url, schema.name()).await;
    c.batch_execute(
        "UPDATE workers SET expires_at = now() - interval '1 second' WHERE name = 'w-dies'",
    )
    .await
    .expect("age the registration");
    let after: BTreeSet<_> = reg
        .claim_reapable("r", &claim(10))
        .await
        .expect("claim")
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert!(
        after.contains(&dead_only.id),
        "expired worker's artifact is reapable"
    );
    assert!(
        !after.contains(&shared.id),
        "another live holder still protects"
    );
    assert!(
        !after.contains(&unknown.id),
        "a holder whose worker never registered protects"
    );
    assert_eq!(after.len(), 1);
}

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_killed_mid_transaction_leaves_nothing_and_is_transient() {
    let Some((reg, schema, url)) = registry(2).await else {
        return;
    };
    let reg = Arc::new(reg);
    // Block the second statement of `register` (the reference insert) behind a table lock,
    // so its first statement (the artifact insert) has run when the backend is killed.
    let mut locker = raw(&url, schema.name()).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE artifact_refs IN EXCLUSIVE MODE")
        .await
        .expect("lock");
    let holder = Holder::new("w1", "b1");
    let new = new_artifact("b1", &holder);
    let pending = {
        let reg = Arc::clone(&reg);
        let new = new.clone();
        tokio::spawn(async move { reg.register(&new).await })
    };
    let mut killer = raw(&url, schema.name()).await;
    let locker_pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<Pid>(&mut locker)
        .await
        .expect("pid")
        .pid;
    let mut victim = None;
    for _ in 0..500 {
        let blocked = diesel::sql_query(
            "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
        )
        .bind::<Integer, _>(locker_pid)
        .load::<Pid>(&mut killer)
        .await
        .expect("pg_stat_activity");
        if let Some(p) = <[Pid]>::first(&blocked) {
            victim = Some(p.pid);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let victim = victim.expect("register blocked inside its transaction");
    diesel::sql_query("SELECT pg_terminate_backend($1)")
        .bind::<Integer, _>(victim)
        .execute(&mut killer)
        .await
        .expect("terminate");
    let err = pending
        .await
        .expect("task")
        .expect_err("register on a killed connection fails");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.is_retryable());
    locker.batch_execute("ROLLBACK").await.expect("unlock");

    // Nothing half-written: the artifact insert was rolled back with the session.
    assert_eq!(
        reg.get(&new.id).await.expect_err("no record").kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        count(&mut killer, "SELECT count(*) AS n FROM artifacts").await,
        0
    );
    // And the retry succeeds on a fresh pooled connection.
    let a = reg.register(&new).await.expect("retry");
    assert_eq!(a.id, new.id);
    assert_eq!(ref_count_mismatches(&mut killer).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_recovers_after_losing_its_connections() {
    let Some((reg, schema, url)) = registry(3).await else {
        return;
    };
    let holder = Holder::new("w1", "b1");
    let a = reg
        .register(&new_artifact("b1", &holder))
        .await
        .expect("register");
    let (open, _) = reg.pool_state();
    assert!(open >= 1);
    let mut killer = diesel_async::AsyncPgConnection::establish(&url)
        .await
        .expect("connect");
    let killed = diesel::sql_query(
        "SELECT pg_terminate_backend(pid)::int AS pid FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind::<diesel::sql_types::Text, _>(schema.name())
    .load::<Pid>(&mut killer)
    .await
    .expect("terminate");
    assert!(!killed.is_empty(), "the pool's connections were found");
    // pg_terminate_backend only signals: wait until the sessions are really gone.
    for _ in 0..500 {
        let left = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind::<diesel::sql_types::Text, _>(schema.name())
        .get_result::<common::Count>(&mut killer)
        .await
        .expect("pg_stat_activity")
        .n;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The next call gets a fresh connection: the pool checks connections on checkout.
    let got = reg.get(&a.id).await.expect("get after connection loss");
    assert_eq!(got, a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_transient() {
    if common::database_url().is_none() {
        jetbridge_conformance::live::unavailable("POSTGRES", "DATABASE_URL is not set");
        return;
    }
    // Port 1 on loopback refuses connections.
    let err = jetbridge_postgres::PgRegistry::connect(
        "postgres://postgres@127.0.0.1:1/postgres",
        jetbridge_postgres::PgOptions::default(),
    )
    .await
    .expect_err("nothing listens on port 1");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_of_one_schema_all_succeed() {
    let Some(url) = common::database_url() else {
        jetbridge_conformance::live::unavailable("POSTGRES", "DATABASE_URL is not set");
        return;
    };
    let schema = jetbridge_postgres::scratch::ScratchSchema::new(&url, "jb_test").expect("name");
    let opts = jetbridge_postgres::PgOptions {
        schema: Some(schema.name().to_owned()),
        ..Default::default()
    };
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (url, opts) = (url.clone(), opts.clone());
        tasks.push(tokio::spawn(async move {
            jetbridge_postgres::migrate_with(&url, &opts).await
        }));
    }
    let mut applied = 0;
    for t in tasks {
        applied += t.await.expect("task").expect("migrate");
    }
    // One directory per migration: the count follows the crate's own list.
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .expect("the migrations directory")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_dir()))
        .count();
    assert_eq!(
        applied, migrations,
        "exactly one run applied each of the {migrations} migrations"
    );
    assert_eq!(
        jetbridge_postgres::migrate_with(&url, &opts)
            .await
            .expect("again"),
        0
    );
}
