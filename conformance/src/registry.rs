//! The [`ArtifactRegistry`] suite: registration, readiness, lookups, references, the
//! reaper's claims and worker heartbeats.
//!
//! The registry judges every time on its own clock, which a case cannot move (a
//! database's `now()`): expiry is shown with signing off, retention with times far in
//! the past or future, staleness with `stale_after` zero or an hour.
//!
//! Cases can share one registry (one database schema). Every case names its artifacts,
//! builds and workers with a prefix of its own and looks only at records with that
//! prefix. Claims cannot be scoped (a reaper claims across everything), so:
//! - every artifact a case does not mean to be claimable is referenced by a "keeper"
//!   holder whose worker never registers, which protects at any time;
//! - every case that claims holds [`claim_lock`] for its whole run, so no two claiming
//!   cases of one process overlap;
//! - each case ends by releasing its references, claiming (under the lock) and
//!   forgetting its own records (those still retained stay until their retention
//!   ends). Records of others that such a claim moves to `Destroying` are unreferenced
//!   garbage a real reaper would take too.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jetbridge_core::ErrorKind;
use jetbridge_core::digest::{Digest, sha256};
use jetbridge_core::names::{ArtifactId, VolumeHandle};
use jetbridge_core::ports::{
    Artifact, ArtifactFilter, ArtifactRegistry, ArtifactState, ClaimOpts, HeartbeatMode,
    HeartbeatOpts, Holder, NewArtifact, Worker,
};
use jetbridge_core::services::{Reaper, ReaperConfig};
use tokio::sync::{Mutex, MutexGuard};

use crate::support::{CaseError, CaseOutcome, CaseResult, outcome, unique_hex};
use crate::{Subject, ensure, ensure_eq, ensure_kind, fail};

/// Every case of the suite, in the order [`run_all`] runs them.
pub const CASES: &[&str] = &[
    "register_then_get",
    "register_is_idempotent",
    "register_conflicting_fields_conflict",
    "register_taken_volume_already_exists",
    "mark_ready_records_size_and_digest",
    "get_missing_not_found",
    "find_filters",
    "acquire_release_idempotent",
    "acquire_unknown_not_found",
    "release_all_counts",
    "claim_takes_only_reapable",
    "claim_respects_retention",
    "expired_holder_does_not_protect",
    "unregistered_holder_protects",
    "concurrent_claims_are_disjoint",
    "claim_respects_limit",
    "stale_destroying_reclaimed",
    "forget_only_destroying",
    "destroying_refuses_acquire_and_mark_ready",
    "known_volumes_reports_registered",
    "heartbeat_and_workers",
    "worker_name_held_by_one_live_session",
    "taking_over_a_lapsed_name_drops_its_references",
    "reaper_clock_ahead_spares_live_workers",
];

/// Run the case called `name` against `subject`; `None` if there is no such case.
pub async fn run_case(subject: &Subject<dyn ArtifactRegistry>, name: &str) -> Option<CaseResult> {
    let r: &dyn ArtifactRegistry = &**subject;
    Some(match name {
        "register_then_get" => Box::pin(register_then_get(r)).await,
        "register_is_idempotent" => Box::pin(register_is_idempotent(r)).await,
        "register_conflicting_fields_conflict" => {
            Box::pin(register_conflicting_fields_conflict(r)).await
        }
        "register_taken_volume_already_exists" => {
            Box::pin(register_taken_volume_already_exists(r)).await
        }
        "mark_ready_records_size_and_digest" => {
            Box::pin(mark_ready_records_size_and_digest(r)).await
        }
        "get_missing_not_found" => Box::pin(get_missing_not_found(r)).await,
        "find_filters" => Box::pin(find_filters(r)).await,
        "acquire_release_idempotent" => Box::pin(acquire_release_idempotent(r)).await,
        "acquire_unknown_not_found" => Box::pin(acquire_unknown_not_found(r)).await,
        "release_all_counts" => Box::pin(release_all_counts(r)).await,
        "claim_takes_only_reapable" => Box::pin(claim_takes_only_reapable(r)).await,
        "claim_respects_retention" => Box::pin(claim_respects_retention(r)).await,
        "expired_holder_does_not_protect" => Box::pin(expired_holder_does_not_protect(r)).await,
        "unregistered_holder_protects" => Box::pin(unregistered_holder_protects(r)).await,
        "concurrent_claims_are_disjoint" => {
            Box::pin(concurrent_claims_are_disjoint(subject.port())).await
        }
        "claim_respects_limit" => Box::pin(claim_respects_limit(r)).await,
        "stale_destroying_reclaimed" => Box::pin(stale_destroying_reclaimed(r)).await,
        "forget_only_destroying" => Box::pin(forget_only_destroying(r)).await,
        "destroying_refuses_acquire_and_mark_ready" => {
            Box::pin(destroying_refuses_acquire_and_mark_ready(r)).await
        }
        "known_volumes_reports_registered" => Box::pin(known_volumes_reports_registered(r)).await,
        "heartbeat_and_workers" => Box::pin(heartbeat_and_workers(r)).await,
        "worker_name_held_by_one_live_session" => {
            Box::pin(worker_name_held_by_one_live_session(r)).await
        }
        "taking_over_a_lapsed_name_drops_its_references" => {
            Box::pin(taking_over_a_lapsed_name_drops_its_references(r)).await
        }
        "reaper_clock_ahead_spares_live_workers" => {
            Box::pin(reaper_clock_ahead_spares_live_workers(subject.port())).await
        }
        _ => return None,
    })
}

/// Run every case against `subject`, one after another.
pub async fn run_all(subject: &Subject<dyn ArtifactRegistry>) -> Vec<CaseOutcome> {
    let mut out = Vec::with_capacity(CASES.len());
    for name in CASES {
        out.push(outcome(name, run_case(subject, name)).await);
    }
    out
}

static CLAIM_LOCK: Mutex<()> = Mutex::const_new(());

/// The lock every claiming case holds (see the module docs).
pub async fn claim_lock() -> MutexGuard<'static, ()> {
    CLAIM_LOCK.lock().await
}

/// A big claim limit, so leftovers of other runs never crowd out a case's own records.
const ALL: usize = 100_000;

/// The current time in whole seconds: databases keep microseconds at best, and whole
/// seconds compare equal after a round trip everywhere.
fn now() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(secs)
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Claim everything reapable, taking claims at least `stale_after` old again.
fn claim_opts(stale_after: Duration) -> ClaimOpts {
    ClaimOpts::default()
        .with_limit(ALL)
        .with_stale_after(stale_after)
}

/// A heartbeat of `session` lasting `ttl`.
fn beat(session: &str, ttl: Duration, mode: HeartbeatMode) -> HeartbeatOpts {
    HeartbeatOpts::new(session, ttl, mode)
}

/// Register `worker` for `session` for `ttl`.
async fn register_worker(
    reg: &dyn ArtifactRegistry,
    worker: &str,
    session: &str,
    ttl: Duration,
) -> Result<Worker, CaseError> {
    Ok(reg
        .heartbeat(worker, &beat(session, ttl, HeartbeatMode::Register))
        .await?)
}

fn digest_of(s: &str) -> Digest {
    Digest::from_sha256(&sha256(s.as_bytes()))
}

/// One case's names, holders and records.
struct Ctx<'a> {
    reg: &'a dyn ArtifactRegistry,
    prefix: String,
    keeper: Holder,
    holders: std::sync::Mutex<Vec<Holder>>,
}

impl<'a> Ctx<'a> {
    fn new(reg: &'a dyn ArtifactRegistry, tag: &str) -> Self {
        let prefix = format!("jbc-{tag}-{}", unique_hex(12));
        let keeper = Holder::new(format!("{prefix}-keeper"), format!("{prefix}-keep"));
        Ctx {
            reg,
            holders: std::sync::Mutex::new(vec![keeper.clone()]),
            prefix,
            keeper,
        }
    }

    fn build(&self) -> String {
        format!("{}-build", self.prefix)
    }

    /// A holder on worker `n` (never registered unless the case heartbeats it).
    fn holder(&self, n: u32) -> Holder {
        let h = Holder::new(
            format!("{}-w{n}", self.prefix),
            format!("{}-b{n}", self.prefix),
        );
        if let Ok(mut v) = self.holders.lock() {
            v.push(h.clone());
        }
        h
    }

    fn worker(&self, n: u32) -> String {
        self.holder(n).worker
    }

    fn is_ours(&self, a: &Artifact) -> bool {
        a.id.as_str().starts_with(&self.prefix)
    }

    fn ours(&self, claimed: &[Artifact]) -> BTreeSet<String> {
        claimed
            .iter()
            .filter(|a| self.is_ours(a))
            .map(|a| a.id.as_str().to_owned())
            .collect()
    }

    /// A new artifact of this case, held by the keeper.
    fn artifact(&self, step: &str, name: &str) -> NewArtifact {
        let id = format!("{}-{}", self.prefix, unique_hex(8));
        NewArtifact::new(
            ArtifactId::parse(&id).unwrap_or_else(|_| ArtifactId::random()),
            self.build(),
            step,
            name,
            VolumeHandle::random(),
            self.keeper.clone(),
        )
    }

    /// Register an artifact held only by `holder`.
    async fn register_held_by(&self, holder: &Holder) -> Result<Artifact, CaseError> {
        let mut new = self.artifact("step", "out");
        new.holder = holder.clone();
        Ok(self.reg.register(&new).await?)
    }

    /// Register an artifact nothing references (registered by a throwaway holder that
    /// then lets go).
    async fn register_free(&self, retain_until: Option<SystemTime>) -> Result<Artifact, CaseError> {
        let holder = self.holder(9_999);
        let mut new = self.artifact("step", "free");
        new.holder = holder.clone();
        new.retain_until = retain_until;
        let a = self.reg.register(&new).await?;
        self.reg.release(&a.id, &holder).await?;
        Ok(a)
    }

    /// Let go of every reference, claim and forget this case's records.
    async fn cleanup(&self, locked: bool) {
        let holders = self.holders.lock().map(|v| v.clone()).unwrap_or_default();
        let guard = if locked {
            None
        } else {
            Some(claim_lock().await)
        };
        for h in holders {
            let _ = self.reg.release_all(&h).await;
        }
        // stale_after zero re-claims this case's earlier claims. Only records nothing
        // references or retains can be taken.
        match self
            .reg
            .claim_reapable(&self.prefix, &claim_opts(Duration::ZERO))
            .await
        {
            Ok(claimed) => {
                for a in claimed.iter().filter(|a| self.is_ours(a)) {
                    let _ = self.reg.forget(&a.id).await;
                }
            }
            Err(e) => eprintln!("note: registry cleanup claim failed: {e}"),
        }
        drop(guard);
    }

    async fn finish(self, r: CaseResult) -> CaseResult {
        self.cleanup(false).await;
        r
    }

    /// For cases that hold the claim lock themselves.
    async fn finish_locked(self, r: CaseResult) -> CaseResult {
        self.cleanup(true).await;
        r
    }

    async fn claim_ours(&self, stale: Duration) -> Result<BTreeSet<String>, CaseError> {
        let claimed = self
            .reg
            .claim_reapable(&self.prefix, &claim_opts(stale))
            .await?;
        for a in &claimed {
            ensure_eq!(
                a.state,
                ArtifactState::Destroying,
                "a claimed artifact's state"
            );
        }
        Ok(self.ours(&claimed))
    }

    async fn state(&self, id: &ArtifactId) -> Result<ArtifactState, CaseError> {
        Ok(self.reg.get(id).await?.state)
    }
}

fn ids(list: &[&Artifact]) -> BTreeSet<String> {
    list.iter().map(|a| a.id.as_str().to_owned()).collect()
}

/// A registered artifact is `Creating`, has the given fields, and `get` returns it.
pub async fn register_then_get(reg: &dyn ArtifactRegistry) -> CaseResult {
    let c = Ctx::new(reg, "reg");
    let r = async {
        let mut new = c.artifact("compile", "binary");
        new.retain_until = Some(now() + DAY);
        let a = reg.register(&new).await?;
        ensure_eq!(a.id, new.id);
        ensure_eq!(a.build, new.build);
        ensure_eq!(a.step, new.step);
        ensure_eq!(a.name, new.name);
        ensure_eq!(a.volume, new.volume);
        ensure_eq!(a.state, ArtifactState::Creating);
        ensure_eq!(a.size, None);
        ensure_eq!(a.digest, None);
        ensure_eq!(a.worker, new.holder.worker);
        ensure_eq!(a.retain_until, new.retain_until);
        ensure_eq!(reg.get(&new.id).await?, a);
        Ok(())
    }
    .await;
    c.finish(r).await
}

/// Registering the same artifact twice returns the one record.
pub async fn register_is_idempotent(reg: &dyn ArtifactRegistry) -> CaseResult {
    let c = Ctx::new(reg, "idem");
    let r = async {
        let new = c.artifact("s", "out");
        let a = reg.register(&new).await?;
        let b = reg.register(&new).await?;
        ensure_eq!(a, b);
        let found = reg
            .find(&ArtifactFilter {
                build: Some(c.build()),
                ..Default::default()
            })
            .await?;
        ensure_eq!(found.len(), 1, "records after two registrations: {found:?}");
        Ok(())
    }
    .await;
    c.finish(r).await
}

/// The same id with other fields is `Conflict`.
pub async fn register_conflicting_fields_conflict(reg: &dyn ArtifactRegistry) -> CaseResult {
    let c = Ctx::new(reg, "conf");
    let r = async {
        let new = c.artifact("s", "out");
        let a = reg.register(&new).await?;
        let mut other_step = new.clone();
        other_step.step = "another-step".into();
        ensure_kind!(reg.register(&other_step).await, ErrorKind::Conflict);
        let mut other_volume = new.clone();
        other_volume.volume = VolumeHandle::random();
        ensure_kind!(reg.register(&other_volume).await, ErrorKind::Conflict);
        ensure_eq!(reg.get(&new.id).await?, a, "the record is unchanged");
        Ok(())
    }
    .await;
    c.finish(r).await
}

/// Another id for a volume that is already registered is `AlreadyExists`.
pub async fn register_taken_volume_already_exists(reg: &dyn ArtifactRegistry) -> CaseResult {
    let c = Ctx::new(reg, "vol");
    let r = async {
        let first = c.artifact("s", "out");
        reg.register(&first).await?;
        let mut second = c.artifact("s", "out");
        second.volume = first.volume.clone();
        ensure_kind!(reg.register(&second).await, ErrorKind::AlreadyExists);
        ensure_kind!(reg.get(&second.id).await, ErrorKind::NotFound);
        Ok(())
    }
    .await;
    c.finish(r).await
}

/// `mark_ready` records size and digest; repeating it is fine, other values conflict.
pub async fn mark_ready_records_size_and_digest(reg: &dyn ArtifactRegistry) -> CaseResult {
    let c = Ctx::new(reg, "ready");
    let r = async {
        let new = c.artifact("s", "out");
        reg.register(&new).await?;
        let d = digest_of("tree");
        let a = reg.mark_ready(&new.id, 1234, &d).await?;
        ensure_eq!(a.state, ArtifactState::Ready);
        ensure_eq!(a.size, Some(1234));
        ensure_eq!(a.digest.as_ref(), Some(&d));
        let again = reg.mark_ready(&new.id, 1234, &d).await?;
        ensure_eq!(again, a);
        ensure_kind!(reg.mark_ready(&new.id, 1235, &d).await, ErrorKind::Conflict);
        ensure_kind!(
            reg.mark_ready(&new.id, 1234, &digest_of("other")).await,
            ErrorKind::Conflict
        );
        ensure_eq!(reg.get(&new.id).await?, a);
        Ok(())
    }
    .await;
    c.finish(r).await
}

/// `get` of an unknown id is `NotFound`.
pub async fn get_missing_not_found(reg: &dyn ArtifactRegistry) -> CaseResult {
    ensure_kind!(reg.get(&ArtifactId::random()).await, ErrorKind::NotFound);
    Ok(())
}

/// `find` matches every given field, oldest first.
pub async fn find_filters(reg: &dyn ArtifactRegistry) -> CaseResult {
    let c = Ctx::new(reg, "find");
    let r = async {
        let mut specs = Vec::new();
        for (build, step, name) in [
            ("one", "fetch", "repo"),
            ("one", "compile", "binary"),
            ("one", "compile", "cache"),
            ("two", "fetch", "repo"),
        ] {
            let mut n = c.artifact(step, name);
            n.build = format!("{}-{build}", c.prefix);
            specs.push(reg.register(&n).await?);
        }
        reg.mark_ready(&specs[1].id, 10, &digest_of("b")).await?;
        let find = |f: ArtifactFilter| async move { reg.find(&f).await };
        let b1 = format!("{}-one", c.prefix);
        let got = find(ArtifactFilter {
            build: Some(b1.clone()),
            ..Default::default()
        })
        .await?;
        ensure_eq!(
            ids(&got.iter().collect::<Vec<_>>()),
            ids(&[&specs[0], &specs[1], &specs[2]])
        );
        for w in got.windows(2) {
            ensure!(w[0].created_at <= w[1].created_at, "find is oldest first");
        }
        let got = find(ArtifactFilter {
            build: Some(b1.clone()),
            step: Some("compile".into()),
            ..Default::default()
        })
        .await?;
        ensure_eq!(
            ids(&got.iter().collect::<Vec<_>>()),
            ids(&[&specs[1], &specs[2]])
        );
        let got = find(ArtifactFilter {
            build: Some(b1.clone()),
            step: Some("compile".into()),
            name: Some("cache".into()),
            ..Default::default()
        })
        .await?;
        ensure_eq!(ids(&got.iter().collect::<Vec<_>>()), ids(&[&specs[2]]));
        let got = find(ArtifactFilter {
            build: Some(b1.clone()),
            state: Some(ArtifactState::Ready),
            ..Default::default()
        })
        .await?;
        ensure_eq!(ids(&got.iter().collect::<Vec<_>>()), ids(&[&specs[1]]));
        let got = find(ArtifactFilter {
            volume: Some(specs[3].volume.clone()),
            ..Default::default()
        })
        .await?;
        ensure_eq!(ids(&got.iter().collect::<Vec<_>>()), ids(&[&specs[3]]));
        let got = find(ArtifactFilter {
            name: Some("repo".into()),
            state: Some(ArtifactState::Creating),
            ..Default::default()
        })
        .await?;
        let ours: Vec<&Artifact> = got.iter().filter(|a| c.is_ours(a)).collect();
        ensure_eq!(ids(&ours), ids(&[&specs[0], &specs[3]]));
        let got = find(ArtifactFilter {
            build: Some(format!("{}-three", c.prefix)),
            ..Default::default()
        })
        .await?;
        ensure!(got.is_empty(), "an unknown build finds nothing");
        Ok(())
    }
    .await;
    c.finish(r).await
}

/// References are a set: acquiring twice and releasing once lets go; releasing again
/// is fine. Observed through claims.
pub async fn acquire_release_idempotent(reg: &dyn ArtifactRegistry) -> CaseResult {
    let _lock = claim_lock().await;
    let c = Ctx::new(reg, "refs");
    let r = async {
        let first = c.holder(1);
        let second = c.holder(2);
        let a = c.register_held_by(&first).await?;
        reg.acquire(&a.id, &second).await?;
        reg.acquire(&a.id, &second).await?;
        reg.release(&a.id, &first).await?;
        reg.release(&a.id, &first).await?;
        ensure!(
            !c.claim_ours(HOUR).await?.contains(a.id.as_str()),
            "claimed while still referenced"
        );
        reg.release(&a.id, &second).await?;
        reg.release(&a.id, &second).await?;
        ensure!(
            c.claim_ours(HOUR).await?.contains(a.id.as_str()),
            "two acquires by one holder need one release"
        );
        Ok(())
    }
    .await;
    c.finish_locked(r).await
}

/// `acquire` of an unknown id is `NotFound`; `release` of one succeeds.
pub async fn acquire_unknown_not_found(reg: &dyn ArtifactRegistry) -> CaseResult {
    let c = Ctx::new(reg, "unknown");
    let r = async {
        let h = c.holder(1);
        let id = ArtifactId::random();
        ensure_kind!(reg.acquire(&id, &h).await, ErrorKind::NotFound);
        reg.release(&id, &h).await?;
        Ok(())
    }
    .await;
    c.finish(r).await
}

/// `release_all` drops every reference of a holder and says how many there were.
pub async fn release_all_counts(reg: &dyn ArtifactRegistry) -> CaseResult {
    let c = Ctx::new(reg, "relall");
    let r = async {
        let h = c.holder(1);
        c.register_held_by(&h).await?;
        c.register_held_by(&h).await?;
        let kept = reg.register(&c.artifact("s", "kept")).await?;
        reg.acquire(&kept.id, &h).await?;
        reg.acquire(&kept.id, &h).await?;
        ensure_eq!(reg.release_all(&h).await?, 3);
        ensure_eq!(reg.release_all(&h).await?, 0);
        ensure_eq!(reg.release_all(&c.holder(2)).await?, 0);
        Ok(())
    }
    .await;
    c.finish(r).await
}

/// A claim takes unreferenced, unretained artifacts (in `Creating` or `Ready`), moves
/// them to `Destroying`, and leaves referenced and retained ones alone.
pub async fn claim_takes_only_reapable(reg: &dyn ArtifactRegistry) -> CaseResult {
    let _lock = claim_lock().await;
    let c = Ctx::new(reg, "claim");
    let r = async {
        let free = c.register_free(None).await?;
        let free_ready = c.register_free(None).await?;
        reg.mark_ready(&free_ready.id, 5, &digest_of("x")).await?;
        let held = reg.register(&c.artifact("s", "held")).await?;
        let retained = c.register_free(Some(now() + DAY)).await?;
        let got = c.claim_ours(HOUR).await?;
        ensure_eq!(got, ids(&[&free, &free_ready]));
        ensure_eq!(c.state(&free.id).await?, ArtifactState::Destroying);
        ensure_eq!(c.state(&free_ready.id).await?, ArtifactState::Destroying);
        ensure_eq!(c.state(&held.id).await?, ArtifactState::Creating);
        ensure_eq!(c.state(&retained.id).await?, ArtifactState::Creating);
        ensure!(
            c.claim_ours(HOUR).await?.is_empty(),
            "a second claim takes nothing new"
        );
        Ok(())
    }
    .await;
    c.finish_locked(r).await
}

/// An artifact retained until a time to come is not claimed; one whose retention
/// ended is.
pub async fn claim_respects_retention(reg: &dyn ArtifactRegistry) -> CaseResult {
    let _lock = claim_lock().await;
    let c = Ctx::new(reg, "retain");
    let r = async {
        let t = now();
        let kept = c.register_free(Some(t + HOUR)).await?;
        let ended = c.register_free(Some(t - HOUR)).await?;
        ensure_eq!(c.claim_ours(HOUR).await?, ids(&[&ended]));
        ensure!(c.claim_ours(HOUR).await?.is_empty());
        ensure_eq!(c.state(&kept.id).await?, ArtifactState::Creating);
        Ok(())
    }
    .await;
    c.finish_locked(r).await
}

/// References of a worker whose registration ended protect nothing; those of a live
/// worker do.
pub async fn expired_holder_does_not_protect(reg: &dyn ArtifactRegistry) -> CaseResult {
    let _lock = claim_lock().await;
    let c = Ctx::new(reg, "expired");
    let r = async {
        let dead = c.holder(1);
        let live = c.holder(2);
        register_worker(reg, &dead.worker, "s-dead", HOUR).await?;
        register_worker(reg, &live.worker, "s-live", HOUR).await?;
        let by_dead = c.register_held_by(&dead).await?;
        let by_live = c.register_held_by(&live).await?;
        reg.sign_off(&dead.worker, "s-dead").await?;
        ensure_eq!(c.claim_ours(HOUR).await?, ids(&[&by_dead]));
        ensure_eq!(c.state(&by_live.id).await?, ArtifactState::Creating);
        // Once the live worker's registration ends, its references stop protecting too.
        reg.sign_off(&live.worker, "s-live").await?;
        ensure_eq!(c.claim_ours(HOUR).await?, ids(&[&by_live]));
        Ok(())
    }
    .await;
    c.finish_locked(r).await
}

/// References of a worker that never sent a heartbeat protect (it may be starting).
pub async fn unregistered_holder_protects(reg: &dyn ArtifactRegistry) -> CaseResult {
    let _lock = claim_lock().await;
    let c = Ctx::new(reg, "unreg");
    let r = async {
        let h = c.holder(1);
        let a = c.register_held_by(&h).await?;
        ensure!(c.claim_ours(HOUR).await?.is_empty());
        ensure!(c.claim_ours(Duration::ZERO).await?.is_empty());
        ensure_eq!(c.state(&a.id).await?, ArtifactState::Creating);
        Ok(())
    }
    .await;
    c.finish_locked(r).await
}

/// Two claims at once never return the same artifact, and together take all.
pub async fn concurrent_claims_are_disjoint(reg: Arc<dyn ArtifactRegistry>) -> CaseResult {
    let _lock = claim_lock().await;
    let c = Ctx::new(&*reg, "race");
    let r = async {
        let mut want = BTreeSet::new();
        for _ in 0..20 {
            want.insert(c.register_free(None).await?.id.as_str().to_owned());
        }
        let spawn = |who: &str| {
            let reg = Arc::clone(&reg);
            let who = who.to_owned();
            tokio::spawn(async move { reg.claim_reapable(&who, &claim_opts(HOUR)).await })
        };
        let (a, b) = (spawn("reaper-a"), spawn("reaper-b"));
        let (a, b) = (a.await, b.await);
        let (Ok(a), Ok(b)) = (a, b) else {
            fail!("a claim task panicked");
        };
        let (a, b) = (a?, b?);
        let ia: BTreeSet<String> = a.iter().map(|x| x.id.as_str().to_owned()).collect();
        let ib: BTreeSet<String> = b.iter().map(|x| x.id.as_str().to_owned()).collect();
        let both: Vec<&String> = ia.intersection(&ib).collect();
        ensure!(both.is_empty(), "claimed by both: {both:?}");
        let ours: BTreeSet<String> = ia
            .union(&ib)
            .filter(|i| want.contains(*i))
            .cloned()
            .collect();
        ensure_eq!(ours, want, "together the claims take every free artifact");
        Ok(())
    }
    .await;
    c.finish_locked(r).await
}

/// A claim returns at most `limit` artifacts; later claims take the rest.
pub async fn claim_respects_limit(reg: &dyn ArtifactRegistry) -> CaseResult {
    let _lock = claim_lock().await;
    let c = Ctx::new(reg, "limit");
    let r = async {
        let mut want = BTreeSet::new();
        for _ in 0..3 {
            want.insert(c.register_free(None).await?.id.as_str().to_owned());
        }
        let mut got = BTreeSet::new();
        // Leftovers of other runs may come first; a bounded number of rounds suffices.
        for _ in 0..10_000 {
            let opts = ClaimOpts::default().with_limit(2).with_stale_after(HOUR);
            let claimed = reg.claim_reapable(&c.prefix, &opts).await?;
            ensure!(claimed.len() <= 2, "limit 2 returned {}", claimed.len());
            if claimed.is_empty() {
                break;
            }
            got.extend(c.ours(&claimed));
        }
        ensure_eq!(got, want);
        Ok(())
    }
    .await;
    c.finish_locked(r).await
}

/// A `Destroying` claim at least `stale_after` old is claimed again; a fresh one is not.
pub async fn stale_destroying_reclaimed(reg: &dyn ArtifactRegistry) -> CaseResult {
    let _lock = claim_lock().await;
    let c = Ctx::new(reg, "stale");
    let r = async {
        let a = c.register_free(None).await?;
        ensure_eq!(c.claim_ours(HOUR).await?, ids(&[&a]));
        ensure!(
            c.claim_ours(HOUR).await?.is_empty(),
            "a fresh claim was taken again"
        );
        ensure_eq!(
            c.claim_ours(Duration::ZERO).await?,
            ids(&[&a]),
            "a stale claim is taken again"
        );
        ensure_eq!(c.state(&a.id).await?, ArtifactState::Destroying);
        Ok(())
    }
    .await;
    c.finish_locked(r).await
}

/// Only `Destroying` records can be forgotten; forgetting unknown ids is fine.
pub async fn forget_only_destroying(reg: &dyn ArtifactRegistry) -> CaseResult {
    let _lock = claim_lock().await;
    let c = Ctx::new(reg, "forget");
    let r = async {
        let creating = reg.register(&c.artifact("s", "c")).await?;
        ensure_kind!(reg.forget(&creating.id).await, ErrorKind::Conflict);
        let ready = reg.register(&c.artifact("s", "r")).await?;
        reg.mark_ready(&ready.id, 1, &digest_of("r")).await?;
        ensure_kind!(reg.forget(&ready.id).await, ErrorKind::Conflict);
        let a = c.register_free(None).await?;
        ensure_eq!(c.claim_ours(HOUR).await?, ids(&[&a]));
        reg.forget(&a.id).await?;
        ensure_kind!(reg.get(&a.id).await, ErrorKind::NotFound);
        ensure!(
            reg.known_volumes(std::slice::from_ref(&a.volume))
                .await?
                .is_empty(),
            "a forgotten volume is still known"
        );
        reg.forget(&a.id).await?;
        reg.forget(&ArtifactId::random()).await?;
        ensure_eq!(c.state(&creating.id).await?, ArtifactState::Creating);
        Ok(())
    }
    .await;
    c.finish_locked(r).await
}

/// A `Destroying` artifact cannot be acquired or marked ready (`Conflict`).
pub async fn destroying_refuses_acquire_and_mark_ready(reg: &dyn ArtifactRegistry) -> CaseResult {
    let _lock = claim_lock().await;
    let c = Ctx::new(reg, "destroying");
    let r = async {
        let a = c.register_free(None).await?;
        ensure_eq!(c.claim_ours(HOUR).await?, ids(&[&a]));
        ensure_kind!(reg.acquire(&a.id, &c.holder(1)).await, ErrorKind::Conflict);
        ensure_kind!(
            reg.mark_ready(&a.id, 1, &digest_of("late")).await,
            ErrorKind::Conflict
        );
        ensure_eq!(c.state(&a.id).await?, ArtifactState::Destroying);
        Ok(())
    }
    .await;
    c.finish_locked(r).await
}

/// `known_volumes` returns exactly the given volumes some record names.
pub async fn known_volumes_reports_registered(reg: &dyn ArtifactRegistry) -> CaseResult {
    let c = Ctx::new(reg, "known");
    let r = async {
        let a = reg.register(&c.artifact("s", "a")).await?;
        let b = reg.register(&c.artifact("s", "b")).await?;
        reg.mark_ready(&b.id, 3, &digest_of("b")).await?;
        let unknown = VolumeHandle::random();
        let asked = vec![a.volume.clone(), unknown.clone(), b.volume.clone()];
        let got: BTreeSet<VolumeHandle> = reg.known_volumes(&asked).await?.into_iter().collect();
        ensure_eq!(got, BTreeSet::from([a.volume.clone(), b.volume.clone()]));
        ensure!(reg.known_volumes(&[]).await?.is_empty());
        ensure!(reg.known_volumes(&[unknown]).await?.is_empty());
        Ok(())
    }
    .await;
    c.finish(r).await
}

/// Heartbeats register workers with an expiry `ttl` after the heartbeat on the
/// registry's clock; a renewal extends it.
pub async fn heartbeat_and_workers(reg: &dyn ArtifactRegistry) -> CaseResult {
    let c = Ctx::new(reg, "hb");
    let r = async {
        let w = c.worker(1);
        let ttl = Duration::from_secs(30);
        let first = register_worker(reg, &w, "s1", ttl).await?;
        ensure_eq!(first.name, w);
        ensure!(first.alive, "a fresh registration is alive: {first:?}");
        ensure_eq!(
            first.expires_at.duration_since(first.last_heartbeat).ok(),
            Some(ttl),
            "expiry is ttl after the heartbeat"
        );
        let find = || async {
            let all = reg.workers().await?;
            Ok::<_, CaseError>(all.into_iter().find(|x| x.name == w))
        };
        let Some(listed) = find().await? else {
            fail!("worker {w} is not listed after a heartbeat");
        };
        ensure_eq!(listed.expires_at, first.expires_at);
        ensure!(listed.alive, "listed as alive");
        let second = reg
            .heartbeat(&w, &beat("s1", HOUR, HeartbeatMode::Renew))
            .await?;
        ensure!(
            second.expires_at >= first.expires_at + (HOUR - ttl),
            "the renewal extended the expiry: {first:?} then {second:?}"
        );
        ensure!(second.last_heartbeat >= first.last_heartbeat);
        let Some(listed) = find().await? else {
            fail!("worker {w} vanished after a renewal");
        };
        ensure_eq!(listed.expires_at, second.expires_at);
        let n = reg.workers().await?.iter().filter(|x| x.name == w).count();
        ensure_eq!(n, 1, "one record per worker");
        reg.sign_off(&w, "s1").await?;
        let Some(gone) = find().await? else {
            fail!("worker {w} vanished after signing off");
        };
        ensure!(!gone.alive, "signed off, yet alive: {gone:?}");
        Ok(())
    }
    .await;
    c.finish(r).await
}

/// A worker name is held by one live session: another session's registration is
/// `AlreadyExists` and its renewal `Conflict`; the holder renews and re-registers. Once
/// the holder signs off the name is free, and the old holder can no longer renew.
pub async fn worker_name_held_by_one_live_session(reg: &dyn ArtifactRegistry) -> CaseResult {
    let c = Ctx::new(reg, "unique");
    let r = async {
        let w = c.worker(1);
        register_worker(reg, &w, "first", HOUR).await?;
        ensure_kind!(
            reg.heartbeat(&w, &beat("second", HOUR, HeartbeatMode::Register))
                .await,
            ErrorKind::AlreadyExists
        );
        ensure_kind!(
            reg.heartbeat(&w, &beat("second", HOUR, HeartbeatMode::Renew))
                .await,
            ErrorKind::Conflict
        );
        // A refused session does not end the holder's registration.
        reg.sign_off(&w, "second").await?;
        register_worker(reg, &w, "first", HOUR).await?;
        reg.heartbeat(&w, &beat("first", HOUR, HeartbeatMode::Renew))
            .await?;
        reg.sign_off(&w, "first").await?;
        ensure_kind!(
            reg.heartbeat(&w, &beat("first", HOUR, HeartbeatMode::Renew))
                .await,
            ErrorKind::Conflict
        );
        let taken = register_worker(reg, &w, "second", HOUR).await?;
        ensure!(taken.alive);
        ensure_kind!(
            reg.heartbeat(&w, &beat("first", HOUR, HeartbeatMode::Renew))
                .await,
            ErrorKind::Conflict
        );
        reg.sign_off(&w, "first").await?;
        let listed = reg.workers().await?;
        let Some(now_held) = listed.iter().find(|x| x.name == w) else {
            fail!("worker {w} is not listed");
        };
        ensure!(
            now_held.alive,
            "the old holder's sign-off ended the new one's"
        );
        reg.sign_off(&w, "second").await?;
        Ok(())
    }
    .await;
    c.finish(r).await
}

/// References of a lapsed registration do not come back to life when another process
/// takes the name; the new holder's own references protect.
pub async fn taking_over_a_lapsed_name_drops_its_references(
    reg: &dyn ArtifactRegistry,
) -> CaseResult {
    let _lock = claim_lock().await;
    let c = Ctx::new(reg, "takeover");
    let r = async {
        let old = c.holder(1);
        register_worker(reg, &old.worker, "old", HOUR).await?;
        let left = c.register_held_by(&old).await?;
        reg.sign_off(&old.worker, "old").await?;
        register_worker(reg, &old.worker, "new", HOUR).await?;
        let new = Holder::new(old.worker.clone(), format!("{}-later", c.prefix));
        let mine = c.register_held_by(&new).await?;
        ensure_eq!(c.claim_ours(HOUR).await?, ids(&[&left]));
        ensure_eq!(c.state(&mine.id).await?, ArtifactState::Creating);
        reg.sign_off(&old.worker, "new").await?;
        Ok(())
    }
    .await;
    c.finish_locked(r).await
}

/// A reaper whose host clock runs five minutes ahead does not collect what a live
/// worker (registered for one minute) references: expiry is the registry's call.
pub async fn reaper_clock_ahead_spares_live_workers(reg: Arc<dyn ArtifactRegistry>) -> CaseResult {
    let _lock = claim_lock().await;
    let c = Ctx::new(&*reg, "skew");
    let r = async {
        let live = c.holder(1);
        register_worker(&*reg, &live.worker, "s1", Duration::from_secs(60)).await?;
        let held = c.register_held_by(&live).await?;
        let free = c.register_free(None).await?;
        let reaper = Reaper::new(
            None,
            None,
            Arc::clone(&reg),
            ReaperConfig::new(format!("{}-reaper", c.prefix)),
        );
        let ahead = SystemTime::now() + Duration::from_secs(300);
        let report = reaper.run_once(&Default::default(), ahead).await?;
        ensure!(
            report.errors.is_empty(),
            "reaper errors: {:?}",
            report.errors
        );
        ensure_eq!(c.state(&held.id).await?, ArtifactState::Creating);
        // The pass did run: it collected what nothing references.
        ensure_kind!(reg.get(&free.id).await, ErrorKind::NotFound);
        reg.sign_off(&live.worker, "s1").await?;
        Ok(())
    }
    .await;
    c.finish_locked(r).await
}
