//! The [`BuildQueue`] suite: submission, FIFO claims, in-flight limits (a job's
//! `max_in_flight` or `serial`, its `serial_groups`), leases and their fencing, aborts,
//! the end of a build, event logs, listing and the reaping of lapsed leases.
//!
//! Claims cannot be scoped (a replica claims the oldest build of the whole queue), so
//! every case expects a queue that holds no live build when it starts, and leaves none
//! behind when it passes: the registration macro gives each case a fresh queue, and
//! [`run_all`] runs the cases one after another. Lapses are shown without waiting: a
//! lease granted for zero seconds has lapsed by the next call on the queue's clock.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jetbridge_core::ErrorKind;
use jetbridge_core::ports::{
    BuildEnd, BuildFilter, BuildId, BuildQueue, BuildState, Claimed, InFlightLimit, Lease,
    NewBuild, NewEvent, NewPipeline, QueuedBuild,
};

use crate::support::{CaseError, CaseOutcome, CaseResult, outcome, unique_hex};
use crate::{Subject, ensure, ensure_eq, ensure_kind, fail};

/// Every case of the suite, in the order [`run_all`] runs them.
pub const CASES: &[&str] = &[
    "submit_then_get",
    "unknown_build_not_found",
    "positions_follow_submission",
    "claims_are_fifo",
    "claim_on_empty_queue_is_none",
    "concurrent_claims_are_disjoint",
    "max_queued_refuses_with_busy",
    "renew_reports_abort_request",
    "abort_of_queued_build_ends_it",
    "abort_of_ended_build_conflicts",
    "finish_records_the_end_and_fences",
    "finish_needs_a_final_state",
    "events_are_ordered_and_paged",
    "lapsed_unstarted_build_is_requeued_and_old_lease_fenced",
    "lapsed_started_build_ends_errored",
    "live_leases_are_not_reaped",
    "renewed_lease_survives_a_reap",
    "list_filters_and_pages",
    "depth_counts_queued_and_running",
    "max_in_flight_one_holds_the_next_build_until_the_first_ends",
    "max_in_flight_two_runs_two_and_holds_the_third",
    "serial_group_holds_other_jobs_of_the_group",
    "builds_of_other_jobs_are_not_held",
    "a_held_build_is_not_overtaken_by_a_later_one_of_its_job",
    "a_lapsed_lease_frees_its_slot_through_a_reap",
    "concurrent_claims_never_exceed_a_limit",
    "set_pipeline_records_then_versions_changes",
    "pipelines_are_keyed_by_team_name_and_instance_vars",
    "set_pipeline_needs_the_lease",
];

/// Run the case called `name` against `subject`; `None` if there is no such case.
pub async fn run_case(subject: &Subject<dyn BuildQueue>, name: &str) -> Option<CaseResult> {
    let q: &dyn BuildQueue = &**subject;
    Some(match name {
        "submit_then_get" => Box::pin(submit_then_get(q)).await,
        "unknown_build_not_found" => Box::pin(unknown_build_not_found(q)).await,
        "positions_follow_submission" => Box::pin(positions_follow_submission(q)).await,
        "claims_are_fifo" => Box::pin(claims_are_fifo(q)).await,
        "claim_on_empty_queue_is_none" => Box::pin(claim_on_empty_queue_is_none(q)).await,
        "concurrent_claims_are_disjoint" => {
            Box::pin(concurrent_claims_are_disjoint(subject.port())).await
        }
        "max_queued_refuses_with_busy" => Box::pin(max_queued_refuses_with_busy(q)).await,
        "renew_reports_abort_request" => Box::pin(renew_reports_abort_request(q)).await,
        "abort_of_queued_build_ends_it" => Box::pin(abort_of_queued_build_ends_it(q)).await,
        "abort_of_ended_build_conflicts" => Box::pin(abort_of_ended_build_conflicts(q)).await,
        "finish_records_the_end_and_fences" => Box::pin(finish_records_the_end_and_fences(q)).await,
        "finish_needs_a_final_state" => Box::pin(finish_needs_a_final_state(q)).await,
        "events_are_ordered_and_paged" => Box::pin(events_are_ordered_and_paged(q)).await,
        "lapsed_unstarted_build_is_requeued_and_old_lease_fenced" => {
            Box::pin(lapsed_unstarted_build_is_requeued_and_old_lease_fenced(q)).await
        }
        "lapsed_started_build_ends_errored" => Box::pin(lapsed_started_build_ends_errored(q)).await,
        "live_leases_are_not_reaped" => Box::pin(live_leases_are_not_reaped(q)).await,
        "renewed_lease_survives_a_reap" => Box::pin(renewed_lease_survives_a_reap(q)).await,
        "list_filters_and_pages" => Box::pin(list_filters_and_pages(q)).await,
        "depth_counts_queued_and_running" => Box::pin(depth_counts_queued_and_running(q)).await,
        "max_in_flight_one_holds_the_next_build_until_the_first_ends" => {
            Box::pin(max_in_flight_one_holds_the_next_build_until_the_first_ends(
                q,
            ))
            .await
        }
        "max_in_flight_two_runs_two_and_holds_the_third" => {
            Box::pin(max_in_flight_two_runs_two_and_holds_the_third(q)).await
        }
        "serial_group_holds_other_jobs_of_the_group" => {
            Box::pin(serial_group_holds_other_jobs_of_the_group(q)).await
        }
        "builds_of_other_jobs_are_not_held" => Box::pin(builds_of_other_jobs_are_not_held(q)).await,
        "a_held_build_is_not_overtaken_by_a_later_one_of_its_job" => {
            Box::pin(a_held_build_is_not_overtaken_by_a_later_one_of_its_job(q)).await
        }
        "a_lapsed_lease_frees_its_slot_through_a_reap" => {
            Box::pin(a_lapsed_lease_frees_its_slot_through_a_reap(q)).await
        }
        "concurrent_claims_never_exceed_a_limit" => {
            Box::pin(concurrent_claims_never_exceed_a_limit(subject.port())).await
        }
        "set_pipeline_records_then_versions_changes" => {
            Box::pin(set_pipeline_records_then_versions_changes(q)).await
        }
        "pipelines_are_keyed_by_team_name_and_instance_vars" => {
            Box::pin(pipelines_are_keyed_by_team_name_and_instance_vars(q)).await
        }
        "set_pipeline_needs_the_lease" => Box::pin(set_pipeline_needs_the_lease(q)).await,
        _ => return None,
    })
}

/// Run every case against `subject`, one after another.
pub async fn run_all(subject: &Subject<dyn BuildQueue>) -> Vec<CaseOutcome> {
    let mut out = Vec::with_capacity(CASES.len());
    for name in CASES {
        out.push(outcome(name, run_case(subject, name)).await);
    }
    out
}

const HOUR: Duration = Duration::from_secs(3600);
/// A lease that has lapsed by the next call.
const LAPSED: Duration = Duration::ZERO;

/// A pipeline name of this case's own.
fn pipeline(tag: &str) -> String {
    format!("jbc-{tag}-{}", unique_hex(8))
}

async fn submit(q: &dyn BuildQueue, pipeline: &str, job: &str) -> Result<QueuedBuild, CaseError> {
    let spec = format!("spec of {pipeline}/{job}").into_bytes();
    Ok(q.submit(&NewBuild::new(pipeline, job, spec)).await?)
}

async fn claim(q: &dyn BuildQueue, worker: &str, ttl: Duration) -> Result<Claimed, CaseError> {
    match q.claim(worker, ttl).await? {
        Some(c) => Ok(c),
        None => fail!("claim by {worker}: nothing was claimed, but a build was queued"),
    }
}

/// End every live build the queue holds (the case's own: cases start on a queue with
/// none), so the next case starts on an empty queue.
async fn drain(q: &dyn BuildQueue) -> CaseResult {
    let live = q
        .list(
            &BuildFilter::default()
                .with_states([BuildState::Queued, BuildState::Running])
                .with_limit(1000),
        )
        .await?;
    for b in live.builds {
        if b.state == BuildState::Queued {
            q.request_abort(b.id, "conformance case ended").await?;
        } else if let Some(worker) = b.worker.clone() {
            let lease = Lease {
                build: b.id,
                worker,
                token: b.attempt,
            };
            q.finish(&lease, &BuildEnd::new(BuildState::Aborted))
                .await?;
        }
    }
    Ok(())
}

async fn submit_then_get(q: &dyn BuildQueue) -> CaseResult {
    let p = pipeline("get");
    let a = submit(q, &p, "unit").await?;
    ensure_eq!(a.state, BuildState::Queued);
    ensure_eq!(a.pipeline, p);
    ensure_eq!(a.job, "unit");
    ensure_eq!(a.spec, format!("spec of {p}/unit").into_bytes());
    ensure_eq!(a.position, Some(0));
    ensure_eq!(a.attempt, 0);
    ensure!(a.worker.is_none() && a.started_at.is_none() && a.finished_at.is_none());
    ensure!(a.abort_requested.is_none() && a.reason.is_none() && a.outcome.is_none());
    ensure!(!a.steps_started);
    let got = q.get(a.id).await?;
    ensure_eq!(got, a);
    let b = submit(q, &p, "unit").await?;
    ensure!(
        b.id > a.id,
        "ids increase with submission: {} then {}",
        a.id,
        b.id
    );
    drain(q).await
}

async fn unknown_build_not_found(q: &dyn BuildQueue) -> CaseResult {
    let p = pipeline("missing");
    let known = submit(q, &p, "j").await?;
    let missing = BuildId(known.id.0 + 1_000_000);
    ensure_kind!(q.get(missing).await, ErrorKind::NotFound);
    ensure_kind!(q.events(missing, 0, 10).await, ErrorKind::NotFound);
    ensure_kind!(q.request_abort(missing, "x").await, ErrorKind::NotFound);
    let lease = Lease {
        build: missing,
        worker: "w".into(),
        token: 1,
    };
    ensure_kind!(q.renew(&lease, HOUR).await, ErrorKind::NotFound);
    drain(q).await
}

async fn positions_follow_submission(q: &dyn BuildQueue) -> CaseResult {
    let p = pipeline("pos");
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(submit(q, &p, "j").await?.id);
    }
    for (i, id) in ids.iter().enumerate() {
        ensure_eq!(q.get(*id).await?.position, Some(i as u64));
    }
    let c = claim(q, "w1", HOUR).await?;
    ensure_eq!(c.build.id, ids[0]);
    ensure_eq!(c.build.position, None);
    ensure_eq!(q.get(ids[1]).await?.position, Some(0));
    ensure_eq!(q.get(ids[2]).await?.position, Some(1));
    drain(q).await
}

async fn claims_are_fifo(q: &dyn BuildQueue) -> CaseResult {
    let p = pipeline("fifo");
    let mut ids = Vec::new();
    for job in ["a", "b", "c"] {
        ids.push(submit(q, &p, job).await?.id);
    }
    for (n, id) in ids.iter().enumerate() {
        let worker = format!("w{n}");
        let c = claim(q, &worker, HOUR).await?;
        ensure_eq!(c.build.id, *id);
        ensure_eq!(c.build.state, BuildState::Running);
        ensure_eq!(c.build.worker.as_deref(), Some(worker.as_str()));
        ensure_eq!(c.build.attempt, 1);
        ensure!(c.build.started_at.is_some());
        ensure_eq!(
            c.lease,
            Lease {
                build: *id,
                worker: worker.clone(),
                token: 1
            }
        );
        ensure_eq!(q.get(*id).await?, c.build);
    }
    ensure!(q.claim("w9", HOUR).await?.is_none());
    drain(q).await
}

async fn claim_on_empty_queue_is_none(q: &dyn BuildQueue) -> CaseResult {
    ensure!(q.claim("w", HOUR).await?.is_none());
    Ok(())
}

async fn concurrent_claims_are_disjoint(q: Arc<dyn BuildQueue>) -> CaseResult {
    let p = pipeline("race");
    let mut submitted = BTreeSet::new();
    for _ in 0..12 {
        submitted.insert(submit(&*q, &p, "j").await?.id);
    }
    let mut tasks = Vec::new();
    for t in 0..6 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(c) = q.claim(&format!("w{t}"), HOUR).await? {
                got.push(c.build.id);
            }
            Ok::<_, jetbridge_core::Error>(got)
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        match t.await {
            Ok(r) => claimed.extend(r?),
            Err(e) => fail!("a claiming task panicked: {e}"),
        }
    }
    let distinct: BTreeSet<_> = claimed.iter().copied().collect();
    ensure_eq!(distinct.len(), claimed.len(), "a build was claimed twice");
    ensure_eq!(distinct, submitted);
    drain(&*q).await
}

async fn max_queued_refuses_with_busy(q: &dyn BuildQueue) -> CaseResult {
    let p = pipeline("full");
    let limited = |job: &str| NewBuild::new(&p, job, Vec::new()).with_max_queued(Some(2));
    q.submit(&limited("a")).await?;
    q.submit(&limited("b")).await?;
    let err = match q.submit(&limited("c")).await {
        Ok(b) => fail!("a third submission with max_queued 2 was accepted: {b:?}"),
        Err(e) => e,
    };
    ensure_eq!(err.kind(), ErrorKind::Busy);
    ensure!(err.is_retryable());
    ensure_eq!(q.depth().await?.queued, 2);
    // A claimed build no longer counts as queued.
    claim(q, "w", HOUR).await?;
    q.submit(&limited("c")).await?;
    // Without a limit, nothing is refused.
    submit(q, &p, "d").await?;
    drain(q).await
}

async fn renew_reports_abort_request(q: &dyn BuildQueue) -> CaseResult {
    let p = pipeline("renew");
    let b = submit(q, &p, "j").await?;
    let c = claim(q, "w", HOUR).await?;
    ensure_eq!(q.renew(&c.lease, HOUR).await?.abort_requested, None);
    let asked = q.request_abort(b.id, "asked by a person").await?;
    ensure_eq!(asked.state, BuildState::Running, "a running build runs on");
    ensure_eq!(asked.abort_requested.as_deref(), Some("asked by a person"));
    // Asking again keeps the first reason.
    let again = q.request_abort(b.id, "asked twice").await?;
    ensure_eq!(again.abort_requested.as_deref(), Some("asked by a person"));
    let status = q.renew(&c.lease, HOUR).await?;
    ensure_eq!(status.abort_requested.as_deref(), Some("asked by a person"));
    drain(q).await
}

async fn abort_of_queued_build_ends_it(q: &dyn BuildQueue) -> CaseResult {
    let p = pipeline("abortq");
    let b = submit(q, &p, "j").await?;
    let ended = q.request_abort(b.id, "not wanted").await?;
    ensure_eq!(ended.state, BuildState::Aborted);
    ensure_eq!(ended.reason.as_deref(), Some("not wanted"));
    ensure_eq!(ended.position, None);
    ensure!(ended.finished_at.is_some());
    ensure!(
        q.claim("w", HOUR).await?.is_none(),
        "an aborted build was claimed"
    );
    ensure_eq!(q.get(b.id).await?, ended);
    Ok(())
}

async fn abort_of_ended_build_conflicts(q: &dyn BuildQueue) -> CaseResult {
    let p = pipeline("abortf");
    let b = submit(q, &p, "j").await?;
    q.request_abort(b.id, "first").await?;
    ensure_kind!(q.request_abort(b.id, "second").await, ErrorKind::Conflict);
    let b2 = submit(q, &p, "j").await?;
    let c = claim(q, "w", HOUR).await?;
    q.finish(&c.lease, &BuildEnd::new(BuildState::Succeeded))
        .await?;
    ensure_kind!(q.request_abort(b2.id, "late").await, ErrorKind::Conflict);
    ensure_eq!(q.get(b2.id).await?.state, BuildState::Succeeded);
    Ok(())
}

async fn finish_records_the_end_and_fences(q: &dyn BuildQueue) -> CaseResult {
    let p = pipeline("finish");
    let b = submit(q, &p, "j").await?;
    let c = claim(q, "w", HOUR).await?;
    q.mark_started(&c.lease).await?;
    let end = BuildEnd::new(BuildState::Failed)
        .with_reason("step unit failed")
        .with_outcome(b"{\"steps\":1}".to_vec());
    let ended = q.finish(&c.lease, &end).await?;
    ensure_eq!(ended.id, b.id);
    ensure_eq!(ended.state, BuildState::Failed);
    ensure_eq!(ended.reason.as_deref(), Some("step unit failed"));
    ensure_eq!(ended.outcome.as_deref(), Some(&b"{\"steps\":1}"[..]));
    ensure!(ended.finished_at.is_some() && ended.steps_started);
    ensure_eq!(q.get(b.id).await?, ended);
    // The lease ended with the build: every write naming it is refused.
    ensure_kind!(q.renew(&c.lease, HOUR).await, ErrorKind::Conflict);
    ensure_kind!(q.mark_started(&c.lease).await, ErrorKind::Conflict);
    ensure_kind!(
        q.append(&c.lease, &[NewEvent::new("output", "late")]).await,
        ErrorKind::Conflict
    );
    ensure_kind!(
        q.finish(&c.lease, &BuildEnd::new(BuildState::Succeeded))
            .await,
        ErrorKind::Conflict
    );
    ensure_eq!(q.get(b.id).await?.state, BuildState::Failed);
    // So is a lease of another worker, or of another attempt.
    let b2 = submit(q, &p, "j").await?;
    let c2 = claim(q, "w", HOUR).await?;
    let wrong_worker = Lease {
        worker: "someone-else".into(),
        ..c2.lease.clone()
    };
    ensure_kind!(q.renew(&wrong_worker, HOUR).await, ErrorKind::Conflict);
    let wrong_token = Lease {
        token: c2.lease.token + 1,
        ..c2.lease.clone()
    };
    ensure_kind!(
        q.finish(&wrong_token, &BuildEnd::new(BuildState::Succeeded))
            .await,
        ErrorKind::Conflict
    );
    ensure_eq!(q.get(b2.id).await?.state, BuildState::Running);
    drain(q).await
}

async fn finish_needs_a_final_state(q: &dyn BuildQueue) -> CaseResult {
    let p = pipeline("notfinal");
    let b = submit(q, &p, "j").await?;
    let c = claim(q, "w", HOUR).await?;
    for state in [BuildState::Queued, BuildState::Running] {
        ensure_kind!(
            q.finish(&c.lease, &BuildEnd::new(state)).await,
            ErrorKind::Invalid
        );
    }
    ensure_eq!(q.get(b.id).await?.state, BuildState::Running);
    drain(q).await
}

async fn events_are_ordered_and_paged(q: &dyn BuildQueue) -> CaseResult {
    let p = pipeline("events");
    let b = submit(q, &p, "j").await?;
    ensure!(q.events(b.id, 0, 10).await?.is_empty());
    let c = claim(q, "w", HOUR).await?;
    let first: Vec<_> = (1..=3)
        .map(|i| NewEvent::new("output", format!("line {i}\n")))
        .collect();
    ensure_eq!(q.append(&c.lease, &first).await?, 3);
    let second = [
        NewEvent::new("step-finished", "{\"name\":\"unit\"}"),
        NewEvent::new("output", "ünïcode ✓"),
    ];
    ensure_eq!(q.append(&c.lease, &second).await?, 5);
    ensure_eq!(
        q.append(&c.lease, &[]).await?,
        5,
        "an empty append changes nothing"
    );
    let page1 = q.events(b.id, 0, 2).await?;
    ensure_eq!(page1.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    ensure_eq!(page1[0].data, "line 1\n");
    ensure_eq!(page1[0].build, b.id);
    let rest = q.events(b.id, 2, 100).await?;
    ensure_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
    ensure_eq!(rest[1].kind, "step-finished");
    ensure_eq!(rest[2].data, "ünïcode ✓");
    ensure!(q.events(b.id, 5, 100).await?.is_empty());
    // The log outlives the build's end, for whoever reads it later.
    q.finish(&c.lease, &BuildEnd::new(BuildState::Succeeded))
        .await?;
    ensure_eq!(q.events(b.id, 0, 100).await?.len(), 5);
    Ok(())
}

async fn lapsed_unstarted_build_is_requeued_and_old_lease_fenced(q: &dyn BuildQueue) -> CaseResult {
    let p = pipeline("requeue");
    let b = submit(q, &p, "j").await?;
    let later = submit(q, &p, "j").await?;
    let old = claim(q, "dead", LAPSED).await?;
    ensure_eq!(old.build.id, b.id);
    let lapsed = q.reap_lapsed("worker lost").await?;
    ensure_eq!(lapsed.len(), 1);
    ensure_eq!(lapsed[0].id, b.id);
    ensure_eq!(lapsed[0].worker, "dead");
    ensure!(lapsed[0].requeued);
    let back = q.get(b.id).await?;
    ensure_eq!(back.state, BuildState::Queued);
    ensure_eq!(back.position, Some(0), "a requeued build keeps its place");
    ensure!(back.reason.is_none() && back.finished_at.is_none());
    // The lapsed holder is fenced off: it cannot write over what comes next.
    ensure_kind!(q.renew(&old.lease, HOUR).await, ErrorKind::Conflict);
    ensure_kind!(
        q.append(&old.lease, &[NewEvent::new("output", "zombie")])
            .await,
        ErrorKind::Conflict
    );
    ensure_kind!(q.mark_started(&old.lease).await, ErrorKind::Conflict);
    let again = claim(q, "alive", HOUR).await?;
    ensure_eq!(again.build.id, b.id);
    ensure_eq!(again.build.attempt, 2);
    ensure_eq!(again.lease.token, 2);
    ensure_kind!(
        q.finish(&old.lease, &BuildEnd::new(BuildState::Succeeded))
            .await,
        ErrorKind::Conflict
    );
    q.append(&again.lease, &[NewEvent::new("output", "second attempt")])
        .await?;
    ensure_eq!(q.get(later.id).await?.position, Some(0));
    drain(q).await
}

async fn lapsed_started_build_ends_errored(q: &dyn BuildQueue) -> CaseResult {
    let p = pipeline("errored");
    let b = submit(q, &p, "j").await?;
    let c = claim(q, "dead", LAPSED).await?;
    q.mark_started(&c.lease).await?;
    q.mark_started(&c.lease).await?;
    let lapsed = q.reap_lapsed("worker lost").await?;
    ensure_eq!(lapsed.len(), 1);
    ensure!(!lapsed[0].requeued);
    let ended = q.get(b.id).await?;
    ensure_eq!(ended.state, BuildState::Errored);
    ensure_eq!(ended.reason.as_deref(), Some("worker lost"));
    ensure!(ended.finished_at.is_some());
    ensure!(
        q.claim("w", HOUR).await?.is_none(),
        "it must never run twice"
    );
    ensure!(q.reap_lapsed("worker lost").await?.is_empty());
    ensure_kind!(q.renew(&c.lease, HOUR).await, ErrorKind::Conflict);
    Ok(())
}

async fn live_leases_are_not_reaped(q: &dyn BuildQueue) -> CaseResult {
    let p = pipeline("live");
    let b = submit(q, &p, "j").await?;
    let c = claim(q, "w", HOUR).await?;
    ensure!(q.reap_lapsed("worker lost").await?.is_empty());
    ensure_eq!(q.get(b.id).await?.state, BuildState::Running);
    q.renew(&c.lease, HOUR).await?;
    drain(q).await
}

async fn renewed_lease_survives_a_reap(q: &dyn BuildQueue) -> CaseResult {
    let p = pipeline("renewed");
    let b = submit(q, &p, "j").await?;
    let c = claim(q, "slow", LAPSED).await?;
    // Its time has passed, but it was not reaped yet: the lease is still held, and a
    // renewal gives it a new term.
    q.renew(&c.lease, HOUR).await?;
    ensure!(q.reap_lapsed("worker lost").await?.is_empty());
    ensure_eq!(q.get(b.id).await?.state, BuildState::Running);
    drain(q).await
}

async fn list_filters_and_pages(q: &dyn BuildQueue) -> CaseResult {
    let p1 = pipeline("list1");
    let p2 = pipeline("list2");
    let a = submit(q, &p1, "unit").await?; // claimed, then succeeds
    let b = submit(q, &p1, "deploy").await?; // aborted while queued
    let c = submit(q, &p2, "unit").await?; // claimed, running
    let d = submit(q, &p1, "unit").await?; // queued
    let e = submit(q, &p2, "unit").await?; // queued
    let ca = claim(q, "w", HOUR).await?;
    ensure_eq!(ca.build.id, a.id);
    q.finish(&ca.lease, &BuildEnd::new(BuildState::Succeeded))
        .await?;
    q.request_abort(b.id, "no").await?;
    ensure_eq!(claim(q, "w", HOUR).await?.build.id, c.id);

    let ids = |page: &[QueuedBuild]| page.iter().map(|b| b.id).collect::<Vec<_>>();
    let all = q.list(&BuildFilter::default()).await?;
    ensure_eq!(ids(&all.builds), [e.id, d.id, c.id, b.id, a.id]);
    ensure_eq!(all.next, None, "a page that is not full has no next");
    ensure_eq!(
        all.builds[0].position,
        Some(1),
        "positions show in lists too"
    );

    // Pages of two, following the cursor, newest first.
    let mut seen = Vec::new();
    let mut cursor = None;
    for _ in 0..10 {
        let page = q
            .list(&BuildFilter::default().with_limit(2).with_before(cursor))
            .await?;
        ensure!(page.builds.len() <= 2);
        seen.extend(ids(&page.builds));
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
    }
    ensure_eq!(seen, [e.id, d.id, c.id, b.id, a.id]);

    let by_pipeline = q.list(&BuildFilter::default().with_pipeline(&p1)).await?;
    ensure_eq!(ids(&by_pipeline.builds), [d.id, b.id, a.id]);
    let by_job = q
        .list(&BuildFilter::default().with_pipeline(&p1).with_job("unit"))
        .await?;
    ensure_eq!(ids(&by_job.builds), [d.id, a.id]);
    let live = q
        .list(&BuildFilter::default().with_states([BuildState::Queued, BuildState::Running]))
        .await?;
    ensure_eq!(ids(&live.builds), [e.id, d.id, c.id]);
    let ended = q
        .list(&BuildFilter::default().with_states([BuildState::Aborted, BuildState::Succeeded]))
        .await?;
    ensure_eq!(ids(&ended.builds), [b.id, a.id]);
    let none = q
        .list(&BuildFilter::default().with_pipeline(pipeline("nobody")))
        .await?;
    ensure!(none.builds.is_empty() && none.next.is_none());
    drain(q).await
}

async fn depth_counts_queued_and_running(q: &dyn BuildQueue) -> CaseResult {
    let p = pipeline("depth");
    let start = q.depth().await?;
    ensure_eq!((start.queued, start.running), (0, 0));
    for _ in 0..3 {
        submit(q, &p, "j").await?;
    }
    let c = claim(q, "w", HOUR).await?;
    let d = q.depth().await?;
    ensure_eq!((d.queued, d.running), (2, 1));
    q.finish(&c.lease, &BuildEnd::new(BuildState::Succeeded))
        .await?;
    let d = q.depth().await?;
    ensure_eq!((d.queued, d.running), (2, 0));
    drain(q).await?;
    let d = q.depth().await?;
    ensure_eq!((d.queued, d.running), (0, 0));
    Ok(())
}

/// A build of `job` in `pipeline` with these in-flight limits.
async fn submit_limited(
    q: &dyn BuildQueue,
    pipeline: &str,
    job: &str,
    limits: &[InFlightLimit],
) -> Result<QueuedBuild, CaseError> {
    let spec = format!("spec of {pipeline}/{job}").into_bytes();
    let new = NewBuild::new(pipeline, job, spec).with_limits(limits.iter().cloned());
    Ok(q.submit(&new).await?)
}

/// Nothing is claimable now (the queue holds what is queued).
async fn nothing_claimable(q: &dyn BuildQueue, why: &str) -> CaseResult {
    if let Some(c) = q.claim("w-extra", HOUR).await? {
        fail!("{why}, but build {} was claimed", c.build.id);
    }
    Ok(())
}

async fn succeed(q: &dyn BuildQueue, c: &Claimed) -> CaseResult {
    q.finish(&c.lease, &BuildEnd::new(BuildState::Succeeded))
        .await?;
    Ok(())
}

async fn max_in_flight_one_holds_the_next_build_until_the_first_ends(
    q: &dyn BuildQueue,
) -> CaseResult {
    let p = pipeline("serial");
    let serial = [InFlightLimit::job(&p, "j", 1)];
    let a = submit_limited(q, &p, "j", &serial).await?;
    ensure_eq!(a.limits, serial, "the limits are kept as submitted");
    ensure_eq!(q.get(a.id).await?.limits, serial);
    let b = submit_limited(q, &p, "j", &serial).await?;
    let first = claim(q, "w1", HOUR).await?;
    ensure_eq!(first.build.id, a.id);
    nothing_claimable(q, "the job runs one build at a time and one runs").await?;
    let held = q.get(b.id).await?;
    ensure_eq!(held.state, BuildState::Queued);
    ensure_eq!(held.position, Some(0));
    succeed(q, &first).await?;
    let second = claim(q, "w2", HOUR).await?;
    ensure_eq!(
        second.build.id,
        b.id,
        "the held build runs once the first ended"
    );
    // A limit that could never be met is refused up front.
    let zero = NewBuild::new(&p, "j", Vec::new()).with_limits([InFlightLimit::job(&p, "j", 0)]);
    ensure_kind!(q.submit(&zero).await, ErrorKind::Invalid);
    drain(q).await
}

async fn max_in_flight_two_runs_two_and_holds_the_third(q: &dyn BuildQueue) -> CaseResult {
    let p = pipeline("inflight2");
    let two = [InFlightLimit::job(&p, "j", 2)];
    let a = submit_limited(q, &p, "j", &two).await?;
    let b = submit_limited(q, &p, "j", &two).await?;
    let c = submit_limited(q, &p, "j", &two).await?;
    let ca = claim(q, "w1", HOUR).await?;
    let cb = claim(q, "w2", HOUR).await?;
    ensure_eq!((ca.build.id, cb.build.id), (a.id, b.id));
    nothing_claimable(q, "two builds of a job with max_in_flight 2 run").await?;
    // Either one ending makes room.
    q.finish(&cb.lease, &BuildEnd::new(BuildState::Failed))
        .await?;
    ensure_eq!(claim(q, "w3", HOUR).await?.build.id, c.id);
    drain(q).await
}

async fn serial_group_holds_other_jobs_of_the_group(q: &dyn BuildQueue) -> CaseResult {
    let p = pipeline("group");
    let group = [InFlightLimit::serial_group(&p, "deploys")];
    let x = submit_limited(q, &p, "deploy-a", &group).await?;
    let y = submit_limited(q, &p, "deploy-b", &group).await?;
    let cx = claim(q, "w1", HOUR).await?;
    ensure_eq!(cx.build.id, x.id);
    nothing_claimable(q, "another job of the serial group runs").await?;
    ensure_eq!(q.get(y.id).await?.state, BuildState::Queued);
    // A group of the same name in another pipeline is another group.
    let other = pipeline("group-other");
    let z = submit_limited(
        q,
        &other,
        "deploy-a",
        &[InFlightLimit::serial_group(&other, "deploys")],
    )
    .await?;
    ensure_eq!(claim(q, "w2", HOUR).await?.build.id, z.id);
    succeed(q, &cx).await?;
    ensure_eq!(claim(q, "w3", HOUR).await?.build.id, y.id);
    drain(q).await
}

async fn builds_of_other_jobs_are_not_held(q: &dyn BuildQueue) -> CaseResult {
    let p = pipeline("others");
    let serial = [InFlightLimit::job(&p, "slow", 1)];
    let a = submit_limited(q, &p, "slow", &serial).await?;
    let b = submit_limited(q, &p, "slow", &serial).await?;
    let free = submit(q, &p, "free").await?;
    let limited_other =
        submit_limited(q, &p, "other", &[InFlightLimit::job(&p, "other", 1)]).await?;
    ensure_eq!(claim(q, "w1", HOUR).await?.build.id, a.id);
    // `b` is held; those after it are claimed past it, in order.
    ensure_eq!(claim(q, "w2", HOUR).await?.build.id, free.id);
    ensure_eq!(claim(q, "w3", HOUR).await?.build.id, limited_other.id);
    nothing_claimable(q, "only the held build is queued").await?;
    ensure_eq!(q.get(b.id).await?.state, BuildState::Queued);
    ensure_eq!(q.depth().await?.running, 3);
    drain(q).await
}

async fn a_held_build_is_not_overtaken_by_a_later_one_of_its_job(q: &dyn BuildQueue) -> CaseResult {
    let p = pipeline("order");
    let group = InFlightLimit::serial_group(&p, "g");
    let job = InFlightLimit::job(&p, "j", 2);
    let g = submit_limited(q, &p, "other", std::slice::from_ref(&group)).await?;
    let cg = claim(q, "w1", HOUR).await?;
    ensure_eq!(cg.build.id, g.id);
    // The first build of `j` waits for the group; the second (submitted when `j` was no
    // longer in the group, say) has room under `j`'s own limit, but waits its turn.
    let first = submit_limited(q, &p, "j", &[job.clone(), group]).await?;
    let second = submit_limited(q, &p, "j", std::slice::from_ref(&job)).await?;
    nothing_claimable(q, "the first build of j waits for its group").await?;
    ensure_eq!(q.get(second.id).await?.state, BuildState::Queued);
    succeed(q, &cg).await?;
    ensure_eq!(claim(q, "w2", HOUR).await?.build.id, first.id);
    ensure_eq!(claim(q, "w3", HOUR).await?.build.id, second.id);
    drain(q).await
}

async fn a_lapsed_lease_frees_its_slot_through_a_reap(q: &dyn BuildQueue) -> CaseResult {
    let p = pipeline("lapse");
    let serial = [InFlightLimit::job(&p, "j", 1)];
    // A started build whose holder is lost: it ends errored and frees the job.
    let a = submit_limited(q, &p, "j", &serial).await?;
    let b = submit_limited(q, &p, "j", &serial).await?;
    let ca = claim(q, "dead", LAPSED).await?;
    ensure_eq!(ca.build.id, a.id);
    q.mark_started(&ca.lease).await?;
    // Its time has passed but the lease is held until a reap: it still counts.
    nothing_claimable(q, "a lapsed lease not yet reaped still holds the slot").await?;
    let lapsed = q.reap_lapsed("worker lost").await?;
    ensure_eq!(lapsed.len(), 1);
    ensure_eq!(q.get(a.id).await?.state, BuildState::Errored);
    let cb = claim(q, "alive", LAPSED).await?;
    ensure_eq!(cb.build.id, b.id, "the reap freed the slot");
    // An unstarted build whose holder is lost goes back in its place: it runs again
    // before a later build of its job.
    let c = submit_limited(q, &p, "j", &serial).await?;
    let lapsed = q.reap_lapsed("worker lost").await?;
    ensure_eq!(lapsed.len(), 1);
    ensure!(lapsed[0].requeued);
    let again = claim(q, "alive", HOUR).await?;
    ensure_eq!(again.build.id, b.id);
    ensure_eq!(again.build.attempt, 2);
    nothing_claimable(q, "the requeued build runs again").await?;
    succeed(q, &again).await?;
    ensure_eq!(claim(q, "alive", HOUR).await?.build.id, c.id);
    drain(q).await
}

/// Six claimers, each finishing what it claims, over builds of one job with
/// `max_in_flight` 2 and of a serial group: the in-process count of what they hold
/// (raised after a claim returns, lowered before its finish, so never above what the
/// queue has running) never exceeds a limit, and every build runs.
async fn concurrent_claims_never_exceed_a_limit(q: Arc<dyn BuildQueue>) -> CaseResult {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let p = pipeline("limits-race");
    let job = InFlightLimit::job(&p, "j", 2);
    let group = InFlightLimit::serial_group(&p, "g");
    let mut submitted = BTreeSet::new();
    for i in 0..16 {
        let b = if i % 2 == 0 {
            submit_limited(&*q, &p, "j", std::slice::from_ref(&job)).await?
        } else {
            let name = format!("g{}", i % 3);
            submit_limited(&*q, &p, &name, std::slice::from_ref(&group)).await?
        };
        submitted.insert(b.id);
    }
    let total = submitted.len();
    let running_j = Arc::new(AtomicUsize::new(0));
    let running_g = Arc::new(AtomicUsize::new(0));
    let peaks = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for t in 0..6 {
        let (q, running_j, running_g, peaks, done) = (
            q.clone(),
            running_j.clone(),
            running_g.clone(),
            peaks.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while done.load(Ordering::SeqCst) < total {
                if std::time::Instant::now() > deadline {
                    return Err(format!("builds were still held after 60s: {got:?}"));
                }
                let Some(c) = q
                    .claim(&format!("w{t}"), HOUR)
                    .await
                    .map_err(|e| e.to_string())?
                else {
                    tokio::task::yield_now().await;
                    continue;
                };
                let (counter, peak) = if c.build.job == "j" {
                    (&running_j, &peaks.0)
                } else {
                    (&running_g, &peaks.1)
                };
                let now = counter.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                // Let the other claimers try while this one holds its slot.
                tokio::task::yield_now().await;
                counter.fetch_sub(1, Ordering::SeqCst);
                q.finish(&c.lease, &BuildEnd::new(BuildState::Succeeded))
                    .await
                    .map_err(|e| e.to_string())?;
                done.fetch_add(1, Ordering::SeqCst);
                got.push(c.build.id);
            }
            Ok(got)
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(got)) => claimed.extend(got),
            Ok(Err(e)) => fail!("a claimer failed: {e}"),
            Err(e) => fail!("a claiming task panicked: {e}"),
        }
    }
    let peak_j = peaks.0.load(Ordering::SeqCst);
    let peak_g = peaks.1.load(Ordering::SeqCst);
    ensure!(
        peak_j <= 2,
        "{peak_j} builds of a max_in_flight 2 job ran at once"
    );
    ensure!(peak_g <= 1, "{peak_g} builds of a serial group ran at once");
    let distinct: BTreeSet<_> = claimed.iter().copied().collect();
    ensure_eq!(distinct.len(), claimed.len(), "a build was claimed twice");
    ensure_eq!(distinct, submitted);
    Ok(())
}

/// A pipeline as a `set_pipeline` step records it (its vars as sealed bytes).
fn new_pipeline(team: &str, name: &str, config: &str) -> NewPipeline {
    NewPipeline::new(team, name, config, "repo/ci/pipeline.yml").with_vars(b"sealed".to_vec())
}

async fn set_pipeline_records_then_versions_changes(q: &dyn BuildQueue) -> CaseResult {
    let team = pipeline("team");
    let name = "deploy";
    let b = submit(q, &team, "set").await?;
    let c = claim(q, "w", HOUR).await?;
    let first = new_pipeline(&team, name, "jobs: []\n");
    let set = q.set_pipeline(&c.lease, &first).await?;
    ensure!(set.changed, "a first set changes something");
    ensure_eq!(set.stored.version, 1);
    ensure_eq!(set.stored.set_by, b.id);
    ensure_eq!(set.stored.pipeline, first);
    ensure!(set.stored.created_at == set.stored.updated_at);
    // The same again: nothing changes, not even the time.
    let again = q.set_pipeline(&c.lease, &first).await?;
    ensure!(!again.changed, "setting the same pipeline again changed it");
    ensure_eq!(again.stored, set.stored);
    // A new config, then new vars: a version each, set by the build that changed it.
    succeed(q, &c).await?;
    let b2 = submit(q, &team, "set").await?;
    let c2 = claim(q, "w", HOUR).await?;
    let second = new_pipeline(&team, name, "jobs: [{name: j, plan: []}]\n");
    let set2 = q.set_pipeline(&c2.lease, &second).await?;
    ensure!(set2.changed);
    ensure_eq!(set2.stored.version, 2);
    ensure_eq!(set2.stored.set_by, b2.id);
    ensure_eq!(set2.stored.created_at, set.stored.created_at);
    ensure_eq!(set2.stored.pipeline.config, second.config);
    let third = second.clone().with_vars(b"sealed-other".to_vec());
    let set3 = q.set_pipeline(&c2.lease, &third).await?;
    ensure!(set3.changed && set3.stored.version == 3);
    ensure_eq!(
        q.pipelines(Some(&team), Some(name)).await?,
        vec![set3.stored.clone()]
    );
    succeed(q, &c2).await?;
    drain(q).await
}

async fn pipelines_are_keyed_by_team_name_and_instance_vars(q: &dyn BuildQueue) -> CaseResult {
    let team = pipeline("team");
    let other_team = pipeline("other");
    submit(q, &team, "set").await?;
    let c = claim(q, "w", HOUR).await?;
    let a: serde_json::Value = serde_json::json!({"branch": "main", "env": {"r": 1, "q": 2}});
    // The same instance vars written in another key order are the same instance.
    let a_reordered: serde_json::Value =
        serde_json::from_str(r#"{"env": {"q": 2, "r": 1}, "branch": "main"}"#)
            .map_err(|e| CaseError::here(e.to_string()))?;
    let b: serde_json::Value = serde_json::json!({"branch": "release"});
    let set = |team: &str, name: &str, iv: &serde_json::Value| {
        new_pipeline(team, name, "jobs: []\n").with_instance_vars(iv)
    };
    q.set_pipeline(&c.lease, &set(&team, "svc", &a)).await?;
    let same = q
        .set_pipeline(&c.lease, &set(&team, "svc", &a_reordered))
        .await?;
    ensure!(
        !same.changed,
        "reordered instance vars made a second instance"
    );
    q.set_pipeline(&c.lease, &set(&team, "svc", &b)).await?;
    q.set_pipeline(&c.lease, &set(&team, "web", &serde_json::Value::Null))
        .await?;
    q.set_pipeline(&c.lease, &set(&other_team, "svc", &a))
        .await?;
    let keys = |ps: Vec<jetbridge_core::ports::StoredPipeline>| {
        ps.into_iter()
            .map(|p| (p.pipeline.name, p.pipeline.instance_vars, p.version))
            .collect::<Vec<_>>()
    };
    let ia = jetbridge_core::ports::canonical_json(&a);
    let ib = jetbridge_core::ports::canonical_json(&b);
    ensure_eq!(
        keys(q.pipelines(Some(&team), None).await?),
        vec![
            ("svc".to_owned(), ia.clone(), 1),
            ("svc".to_owned(), ib.clone(), 1),
            ("web".to_owned(), "{}".to_owned(), 1),
        ]
    );
    ensure_eq!(keys(q.pipelines(Some(&team), Some("svc")).await?).len(), 2);
    ensure_eq!(
        keys(q.pipelines(Some(&other_team), Some("svc")).await?),
        vec![("svc".to_owned(), ia, 1)]
    );
    ensure!(q.pipelines(Some(&team), Some("nope")).await?.is_empty());
    succeed(q, &c).await?;
    drain(q).await
}

async fn set_pipeline_needs_the_lease(q: &dyn BuildQueue) -> CaseResult {
    let team = pipeline("team");
    submit(q, &team, "set").await?;
    let c = claim(q, "w", HOUR).await?;
    let stale = Lease {
        token: c.lease.token + 1,
        ..c.lease.clone()
    };
    let p = new_pipeline(&team, "svc", "jobs: []\n");
    ensure_kind!(q.set_pipeline(&stale, &p).await, ErrorKind::Conflict);
    succeed(q, &c).await?;
    // The build has ended: its lease sets nothing any more.
    ensure_kind!(q.set_pipeline(&c.lease, &p).await, ErrorKind::Conflict);
    ensure!(
        q.pipelines(Some(&team), None).await?.is_empty(),
        "a refused set recorded a pipeline"
    );
    drain(q).await
}
