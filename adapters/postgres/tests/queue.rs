//! The build queue against a real server (`DATABASE_URL`): the shared conformance suite,
//! and what only a shared database shows (replicas with pools of their own, a pool shared
//! with the registry, a log outliving its process). Each test works in its own schema.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{count, database_url, raw};
use diesel_async::SimpleAsyncConnection;
use jetbridge_conformance::Subject;
use jetbridge_core::ErrorKind;
use jetbridge_core::ports::{
    ArtifactRegistry, BuildEnd, BuildFilter, BuildId, BuildQueue, BuildState, HeartbeatMode,
    HeartbeatOpts, InFlightLimit, NewBuild, NewEvent,
};
use jetbridge_postgres::scratch::ScratchSchema;
use jetbridge_postgres::{PgBuildQueue, PgOptions, PgRegistry};

const HOUR: Duration = Duration::from_secs(3600);

/// `DATABASE_URL` and a fresh schema name, or `None` (after a loud SKIPPED line).
fn scratch() -> Option<(String, ScratchSchema)> {
    let Some(url) = database_url() else {
        jetbridge_conformance::live::unavailable("POSTGRES", "DATABASE_URL is not set");
        return None;
    };
    let schema = ScratchSchema::new(&url, "jb_test").expect("a scratch schema name");
    Some((url, schema))
}

fn options(schema: &ScratchSchema, pool_size: u32) -> PgOptions {
    PgOptions {
        pool_size,
        schema: Some(schema.name().to_owned()),
        application_name: schema.name().to_owned(),
        ..PgOptions::default()
    }
}

/// A queue with a pool of its own on `schema` (migrated on first use).
async fn queue(url: &str, schema: &ScratchSchema, pool_size: u32) -> PgBuildQueue {
    PgBuildQueue::connect(url, options(schema, pool_size))
        .await
        .expect("connect to DATABASE_URL")
}

async fn make_queue() -> Option<Subject<dyn BuildQueue>> {
    let (url, schema) = scratch()?;
    let q = queue(&url, &schema, 4).await;
    let port: Arc<dyn BuildQueue> = Arc::new(q);
    Some(Subject::new(port).with_guard(schema))
}

jetbridge_conformance::queue_suite!(make_queue);

fn build(job: &str) -> NewBuild {
    NewBuild::new("p", job, job.as_bytes().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_reports_persistent_and_shared() {
    let Some((url, schema)) = scratch() else {
        return;
    };
    let caps = queue(&url, &schema, 1).await.capabilities();
    assert!(caps.persistent && caps.shared);
}

/// Two replicas, each with its own pool, claiming from one queue in eight tasks: every
/// build is claimed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_claim_disjoint_builds() {
    let Some((url, schema)) = scratch() else {
        return;
    };
    let replicas = [
        Arc::new(queue(&url, &schema, 4).await),
        Arc::new(queue(&url, &schema, 4).await),
    ];
    let mut submitted = BTreeSet::new();
    for i in 0..20 {
        let b = replicas[i % 2]
            .submit(&build(&format!("j{i}")))
            .await
            .expect("submit");
        submitted.insert(b.id);
    }
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let q = Arc::clone(&replicas[t % 2]);
            tokio::spawn(async move {
                let worker = format!("replica{}-task{t}", t % 2);
                let mut got = Vec::new();
                while let Some(c) = q.claim(&worker, HOUR).await.expect("claim") {
                    assert_eq!(c.build.state, BuildState::Running);
                    assert_eq!(c.build.worker.as_deref(), Some(worker.as_str()));
                    assert_eq!(c.lease.token, 1);
                    got.push(c.build.id);
                }
                got
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.expect("task"));
    }
    let distinct: BTreeSet<BuildId> = claimed.iter().copied().collect();
    assert_eq!(distinct.len(), claimed.len(), "a build was claimed twice");
    assert_eq!(distinct, submitted, "every build was claimed");
    let mut c = raw(&url, schema.name()).await;
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM builds WHERE state = 'running' AND attempt = 1"
        )
        .await,
        20
    );
    let depth = replicas[1].depth().await.expect("depth");
    assert_eq!((depth.queued, depth.running), (0, 20));
}

/// Ten submitters racing for five places: five get one, five are refused `Busy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_limited_submissions_stop_at_the_limit() {
    let Some((url, schema)) = scratch() else {
        return;
    };
    let q = Arc::new(queue(&url, &schema, 10).await);
    let start = Arc::new(tokio::sync::Barrier::new(10));
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let (q, start) = (Arc::clone(&q), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                q.submit(&build(&format!("j{i}")).with_max_queued(Some(5)))
                    .await
            })
        })
        .collect();
    let (mut accepted, mut busy) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Ok(b) => {
                assert_eq!(b.state, BuildState::Queued);
                accepted += 1;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
                assert!(e.is_retryable());
                busy += 1;
            }
        }
    }
    assert_eq!((accepted, busy), (5, 5));
    assert_eq!(q.depth().await.expect("depth").queued, 5);
    let mut c = raw(&url, schema.name()).await;
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM builds").await, 5);
}

/// Hold `n` of `q`'s pooled connections: `n` aborts of build `id` wait on a row lock
/// that the returned connection holds (`COMMIT` on it lets them go). Returns once all
/// `n` wait in Postgres, i.e. hold their connections.
async fn hold_connections(
    q: &PgBuildQueue,
    url: &str,
    schema: &ScratchSchema,
    id: BuildId,
    n: i64,
) -> (
    diesel_async::AsyncPgConnection,
    Vec<tokio::task::JoinHandle<jetbridge_core::Result<jetbridge_core::ports::QueuedBuild>>>,
) {
    let mut locker = raw(url, schema.name()).await;
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT id FROM builds WHERE id = {id} FOR UPDATE"
        ))
        .await
        .expect("lock the build row");
    let waiters = (0..n)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move { q.request_abort(id, "not wanted").await })
        })
        .collect();
    let mut watcher = raw(url, schema.name()).await;
    let waiting = format!(
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE application_name = '{}' AND wait_event_type = 'Lock'",
        schema.name()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&mut watcher, &waiting).await < n {
        assert!(
            Instant::now() < deadline,
            "{n} abort(s) never waited for the row lock"
        );
        tokio::task::yield_now().await;
    }
    (locker, waiters)
}

/// `PgRegistry::build_queue` works through the registry's own pool: while a queue call
/// holds the pool's only connection (blocked on a row lock), a registry call cannot get
/// one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_and_its_build_queue_share_one_pool() {
    let Some((url, schema)) = scratch() else {
        return;
    };
    let registry = PgRegistry::connect(
        &url,
        PgOptions {
            connection_timeout: Duration::from_millis(300),
            ..options(&schema, 1)
        },
    )
    .await
    .expect("connect");
    let q = registry.build_queue();
    assert_eq!(q.schema(), registry.schema());
    assert!(format!("{q:?}").contains(schema.name()));
    // The registry's migrations made the queue's tables.
    let b = q.submit(&build("unit")).await.expect("submit");
    registry
        .workers()
        .await
        .expect("the registry works beside it");

    // The abort's statement waits for the lock, i.e. holds the only connection.
    let (mut locker, mut aborts) = hold_connections(&q, &url, &schema, b.id, 1).await;
    let abort = aborts.remove(0);
    assert_eq!(registry.pool_state(), (1, 0));
    assert_eq!(q.pool_state(), (1, 0));
    let starved = registry
        .workers()
        .await
        .expect_err("the only connection is the queue's");
    assert_eq!(starved.kind(), ErrorKind::Transient, "{starved}");

    locker.batch_execute("COMMIT").await.expect("unlock");
    let ended = abort.await.expect("task").expect("abort");
    assert_eq!(ended.state, BuildState::Aborted);
    registry
        .workers()
        .await
        .expect("the connection is back in the pool");
}

/// What keeps a worker and its builds alive has a pool of its own: while every
/// connection of the main pool waits on a lock (hundreds of event streams or a burst of
/// steps do the same to it), heartbeats, lease renewals and the sign-off still get
/// through at once. Sharing the main pool, they timed out, the registration lapsed and
/// another replica's reaper collected the artifacts of builds still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heartbeats_and_lease_renewals_get_through_a_used_up_pool() {
    let Some((url, schema)) = scratch() else {
        return;
    };
    let registry = PgRegistry::connect(
        &url,
        PgOptions {
            connection_timeout: Duration::from_millis(300),
            ..options(&schema, 2)
        },
    )
    .await
    .expect("connect");
    let q = registry.build_queue();
    let session = "s-liveness";
    let opts = |mode| HeartbeatOpts::new(session, HOUR, mode);
    registry
        .heartbeat("w1", &opts(HeartbeatMode::Register))
        .await
        .expect("register the worker");
    q.submit(&build("unit")).await.expect("submit");
    let lease = q
        .claim("w1", HOUR)
        .await
        .expect("claim")
        .expect("one")
        .lease;

    // Both main connections wait on a lock the test holds.
    let blocker = q.submit(&build("blocked")).await.expect("submit");
    let (mut locker, waiters) = hold_connections(&q, &url, &schema, blocker.id, 2).await;
    assert_eq!(registry.pool_state(), (2, 0));
    let starved = registry
        .workers()
        .await
        .expect_err("the main pool is used up");
    assert_eq!(starved.kind(), ErrorKind::Transient, "{starved}");

    let renewed = registry
        .heartbeat("w1", &opts(HeartbeatMode::Renew))
        .await
        .expect("the heartbeat does not wait for the main pool");
    assert!(renewed.alive);
    q.renew(&lease, HOUR)
        .await
        .expect("the lease renewal does not wait for the main pool");
    registry
        .sign_off("w1", session)
        .await
        .expect("the sign-off does not wait for the main pool");
    assert_eq!(
        registry.liveness_pool_state().0,
        1,
        "one liveness connection served all three"
    );

    locker.batch_execute("COMMIT").await.expect("unlock");
    // The first abort ends the build; the second finds it ended.
    let ended: Vec<_> = futures::future::join_all(waiters)
        .await
        .into_iter()
        .map(|w| w.expect("task").map(|b| b.state))
        .collect();
    assert!(
        ended.iter().any(|e| matches!(e, Ok(BuildState::Aborted))),
        "{ended:?}"
    );
}

/// A build's log and lease live in the database: a second process (a fresh pool) reads
/// what the first appended, and the holder's lease still works through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_and_leases_survive_a_reconnect() {
    let Some((url, schema)) = scratch() else {
        return;
    };
    let first = queue(&url, &schema, 2).await;
    let b = first.submit(&build("unit")).await.expect("submit");
    let c = first.claim("w1", HOUR).await.expect("claim").expect("one");
    let events: Vec<_> = (1..=3)
        .map(|i| NewEvent::new("output", format!("line {i}\n")))
        .collect();
    assert_eq!(first.append(&c.lease, &events).await.expect("append"), 3);
    let before = first.events(b.id, 0, 100).await.expect("events");
    drop(first);

    let second = queue(&url, &schema, 2).await;
    assert_eq!(second.events(b.id, 0, 100).await.expect("events"), before);
    assert_eq!(
        before.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
        ["line 1\n", "line 2\n", "line 3\n"]
    );
    let got = second.get(b.id).await.expect("get");
    assert_eq!(got, c.build, "the build is as the claim left it");
    assert_eq!(
        second
            .append(&c.lease, &[NewEvent::new("output", "line 4\n")])
            .await
            .expect("append with the same lease"),
        4
    );
    let ended = second
        .finish(&c.lease, &BuildEnd::new(BuildState::Succeeded))
        .await
        .expect("finish");
    assert_eq!(ended.state, BuildState::Succeeded);
}

/// Reapers of two replicas racing over the same lapsed builds deal with each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_reapers_deal_with_each_lapsed_build_once() {
    let Some((url, schema)) = scratch() else {
        return;
    };
    let replicas = [
        Arc::new(queue(&url, &schema, 4).await),
        Arc::new(queue(&url, &schema, 4).await),
    ];
    let mut started = BTreeSet::new();
    for i in 0..10 {
        replicas[0]
            .submit(&build(&format!("j{i}")))
            .await
            .expect("submit");
        let c = replicas[0]
            .claim("dead", Duration::ZERO)
            .await
            .expect("claim")
            .expect("one");
        if i % 2 == 0 {
            replicas[0].mark_started(&c.lease).await.expect("started");
            started.insert(c.build.id);
        }
    }
    let start = Arc::new(tokio::sync::Barrier::new(4));
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let (q, start) = (Arc::clone(&replicas[t % 2]), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                q.reap_lapsed("worker lost").await
            })
        })
        .collect();
    let mut reaped = Vec::new();
    for t in tasks {
        reaped.extend(t.await.expect("task").expect("reap"));
    }
    assert_eq!(reaped.len(), 10, "each lapsed build once: {reaped:?}");
    let ids: BTreeSet<_> = reaped.iter().map(|l| l.id).collect();
    assert_eq!(ids.len(), 10);
    for l in &reaped {
        assert_eq!(l.worker, "dead");
        assert_eq!(l.requeued, !started.contains(&l.id), "{l:?}");
    }
    let depth = replicas[1].depth().await.expect("depth");
    assert_eq!((depth.queued, depth.running), (5, 0));
    let errored = replicas[1]
        .list(&BuildFilter::default().with_states([BuildState::Errored]))
        .await
        .expect("list");
    let errored: BTreeSet<_> = errored.builds.iter().map(|b| b.id).collect();
    assert_eq!(errored, started);
}

/// A stored state the port does not know is `Corrupt`, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_stored_state_is_corrupt() {
    let Some((url, schema)) = scratch() else {
        return;
    };
    let q = queue(&url, &schema, 2).await;
    let b = q.submit(&build("unit")).await.expect("submit");
    let mut c = raw(&url, schema.name()).await;
    c.batch_execute(
        "ALTER TABLE builds DROP CONSTRAINT builds_state_check; \
         UPDATE builds SET state = 'paused', finished_at = now()",
    )
    .await
    .expect("corrupt the row");
    let e = q.get(b.id).await.expect_err("unknown state");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let e = q
        .list(&BuildFilter::default())
        .await
        .expect_err("unknown state");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
}

/// Postgres text cannot hold NUL: such input is `Invalid` and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nul_in_text_is_invalid() {
    let Some((url, schema)) = scratch() else {
        return;
    };
    let q = queue(&url, &schema, 2).await;
    let e = q
        .submit(&NewBuild::new("p\0", "j", Vec::new()))
        .await
        .expect_err("NUL in a pipeline name");
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert_eq!(q.depth().await.expect("depth").queued, 0);
    // Bytes are bytes: a spec with NUL is stored as given.
    let b = q
        .submit(&NewBuild::new("p", "j", vec![0, 1, 0]))
        .await
        .expect("submit");
    assert_eq!(q.get(b.id).await.expect("get").spec, [0, 1, 0]);
    let c = q.claim("w", HOUR).await.expect("claim").expect("one");
    let e = q
        .append(&c.lease, &[NewEvent::new("output", "a\0b")])
        .await
        .expect_err("NUL in event data");
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert!(q.events(b.id, 0, 10).await.expect("events").is_empty());
}

/// Two replicas, each with its own pool, claiming builds of one `serial` job in eight
/// tasks: never two at once. Each task holds what it claimed in an in-process count
/// (raised after the claim returns, lowered before the finish, so never above what the
/// database has running) while the others try to claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_never_run_two_builds_of_a_serial_job() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let Some((url, schema)) = scratch() else {
        return;
    };
    let replicas = [
        Arc::new(queue(&url, &schema, 4).await),
        Arc::new(queue(&url, &schema, 4).await),
    ];
    let serial = InFlightLimit::job("p", "serial", 1);
    let total = 12;
    for i in 0..total {
        replicas[i % 2]
            .submit(&build("serial").with_limits([serial.clone()]))
            .await
            .expect("submit");
    }
    let holding = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(60);
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let q = Arc::clone(&replicas[t % 2]);
            let (holding, peak, done) = (holding.clone(), peak.clone(), done.clone());
            tokio::spawn(async move {
                let worker = format!("replica{}-task{t}", t % 2);
                let mut order = Vec::new();
                while done.load(Ordering::SeqCst) < total {
                    assert!(Instant::now() < deadline, "builds still held after 60s");
                    let Some(c) = q.claim(&worker, HOUR).await.expect("claim") else {
                        tokio::task::yield_now().await;
                        continue;
                    };
                    let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    holding.fetch_sub(1, Ordering::SeqCst);
                    q.finish(&c.lease, &BuildEnd::new(BuildState::Succeeded))
                        .await
                        .expect("finish");
                    done.fetch_add(1, Ordering::SeqCst);
                    order.push(c.build.id);
                }
                order
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.expect("task"));
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        1,
        "a serial job ran twice at once"
    );
    assert_eq!(claimed.len(), total);
    let mut c = raw(&url, schema.name()).await;
    // One at a time, and in submission order: each started after the one before ended.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM builds a JOIN builds b ON b.id > a.id \
             WHERE b.started_at < a.finished_at"
        )
        .await,
        0
    );
}

/// A build stored before limits existed has none, and the migration's check refuses a
/// cap of 0 written behind the queue's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_are_stored_with_the_build_and_checked_by_the_table() {
    let Some((url, schema)) = scratch() else {
        return;
    };
    let q = queue(&url, &schema, 2).await;
    let limits = [
        InFlightLimit::job("p", "j", 3),
        InFlightLimit::serial_group("p", "g"),
    ];
    let b = q
        .submit(&build("j").with_limits(limits.clone()))
        .await
        .expect("submit");
    let plain = q.submit(&build("k")).await.expect("submit");
    assert_eq!(q.get(b.id).await.expect("get").limits, limits);
    assert!(q.get(plain.id).await.expect("get").limits.is_empty());
    let mut c = raw(&url, schema.name()).await;
    let e = c
        .batch_execute(&format!(
            "UPDATE builds SET limit_max = '{{0, 1}}' WHERE id = {}",
            b.id
        ))
        .await
        .expect_err("a cap of 0");
    assert!(e.to_string().contains("builds_limits_check"), "{e}");
}
