//! [`MemoryBuildQueue`]: the build queue of one process, behind one mutex, on the same
//! kind of clock as the registry ([`RegistryClock`]).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use jetbridge_core::ports::{
    BuildEnd, BuildEvent, BuildFilter, BuildId, BuildPage, BuildQueue, BuildState, Claimed,
    LapsedBuild, Lease, LeaseStatus, NewBuild, NewEvent, NewPipeline, PipelineSet,
    QueueCapabilities, QueueDepth, QueuedBuild, StoredPipeline,
};
use jetbridge_core::{Error, Result};

use crate::RegistryClock;

/// The longest page [`BuildQueue::list`] returns, as the Postgres queue caps it.
const MAX_PAGE: usize = 1000;

#[derive(Debug)]
struct Entry {
    build: QueuedBuild,
    lease_until: Option<SystemTime>,
    events: Vec<BuildEvent>,
}

/// A pipeline's key: team, name, canonical instance vars.
type PipelineKey = (String, String, String);

#[derive(Debug, Default)]
struct State {
    builds: BTreeMap<BuildId, Entry>,
    next_id: u64,
    pipelines: BTreeMap<PipelineKey, StoredPipeline>,
}

impl State {
    fn queued_before(&self, id: BuildId) -> u64 {
        self.builds
            .range(..id)
            .filter(|(_, e)| e.build.state == BuildState::Queued)
            .count() as u64
    }

    /// Whether claiming `b` now keeps to its limits: for each, no queued build with the
    /// key is ahead of it (builds sharing a key start in submission order) and fewer
    /// than its cap are running.
    fn within_limits(&self, b: &QueuedBuild) -> bool {
        b.limits.iter().all(|l| {
            let shares = |o: &QueuedBuild| o.limits.iter().any(|ol| ol.key == l.key);
            let ahead = self
                .builds
                .range(..b.id)
                .any(|(_, e)| e.build.state == BuildState::Queued && shares(&e.build));
            let running = self
                .builds
                .values()
                .filter(|e| e.build.state == BuildState::Running && shares(&e.build))
                .count();
            !ahead && running < l.max_running as usize
        })
    }

    /// The build with its position filled in.
    fn view(&self, e: &Entry) -> QueuedBuild {
        let mut b = e.build.clone();
        b.position = (b.state == BuildState::Queued).then(|| self.queued_before(b.id));
        b
    }

    fn entry(&self, id: BuildId) -> Result<&Entry> {
        self.builds.get(&id).ok_or_else(|| not_found(id))
    }

    /// The entry `lease` holds, or `Conflict` when it no longer holds it.
    fn held(&mut self, lease: &Lease) -> Result<&mut Entry> {
        let e = self
            .builds
            .get_mut(&lease.build)
            .ok_or_else(|| not_found(lease.build))?;
        let b = &e.build;
        if b.state != BuildState::Running
            || b.attempt != lease.token
            || b.worker.as_deref() != Some(lease.worker.as_str())
        {
            return Err(lost_lease(lease, b));
        }
        Ok(e)
    }
}

fn not_found(id: BuildId) -> Error {
    Error::not_found(format!("build {id}"))
}

fn lost_lease(lease: &Lease, b: &QueuedBuild) -> Error {
    Error::conflict(format!(
        "build {}: the lease of {} (attempt {}) is no longer held: the build is {} (attempt {})",
        lease.build, lease.worker, lease.token, b.state, b.attempt
    ))
}

/// An in-memory [`BuildQueue`]: every operation is atomic under one mutex. It sees only
/// the process that holds it, and forgets everything when that process ends.
#[derive(Debug, Default)]
pub struct MemoryBuildQueue {
    state: Mutex<State>,
    clock: RegistryClock,
}

impl MemoryBuildQueue {
    /// An empty queue on the system clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty queue judging leases by `clock`.
    pub fn with_clock(clock: RegistryClock) -> Self {
        MemoryBuildQueue {
            state: Mutex::default(),
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves no half-made change: every operation
        // checks before it writes.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl BuildQueue for MemoryBuildQueue {
    fn capabilities(&self) -> QueueCapabilities {
        QueueCapabilities::none()
    }

    async fn submit(&self, new: &NewBuild) -> Result<QueuedBuild> {
        new.check_limits()?;
        let now = self.clock.now();
        let mut s = self.lock();
        if let Some(max) = new.max_queued {
            let queued = s
                .builds
                .values()
                .filter(|e| e.build.state == BuildState::Queued)
                .count() as u64;
            if queued >= max {
                return Err(Error::busy(format!(
                    "the build queue is full: {queued} build(s) are waiting (the limit is {max})"
                )));
            }
        }
        s.next_id += 1;
        let id = BuildId(s.next_id);
        let mut build = QueuedBuild::new(id, &new.pipeline, &new.job, new.spec.clone(), now);
        build.limits = new.limits.clone();
        let entry = Entry {
            build,
            lease_until: None,
            events: Vec::new(),
        };
        let view = s.view(&entry);
        s.builds.insert(id, entry);
        Ok(view)
    }

    async fn claim(&self, worker: &str, ttl: Duration) -> Result<Option<Claimed>> {
        let now = self.clock.now();
        let mut s = self.lock();
        let Some(id) = s
            .builds
            .values()
            .find(|e| e.build.state == BuildState::Queued && s.within_limits(&e.build))
            .map(|e| e.build.id)
        else {
            return Ok(None);
        };
        let Some(e) = s.builds.get_mut(&id) else {
            return Ok(None);
        };
        let b = &mut e.build;
        b.state = BuildState::Running;
        b.worker = Some(worker.to_owned());
        b.attempt += 1;
        b.steps_started = false;
        b.started_at = Some(now);
        e.lease_until = Some(now + ttl);
        let lease = Lease {
            build: b.id,
            worker: worker.to_owned(),
            token: b.attempt,
        };
        let build = b.clone();
        Ok(Some(Claimed { lease, build }))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<LeaseStatus> {
        let now = self.clock.now();
        let mut s = self.lock();
        let e = s.held(lease)?;
        e.lease_until = Some(now + ttl);
        let mut status = LeaseStatus::default();
        status.abort_requested = e.build.abort_requested.clone();
        Ok(status)
    }

    async fn mark_started(&self, lease: &Lease) -> Result<()> {
        self.lock().held(lease)?.build.steps_started = true;
        Ok(())
    }

    async fn append(&self, lease: &Lease, events: &[NewEvent]) -> Result<u64> {
        let mut s = self.lock();
        let e = s.held(lease)?;
        for ev in events {
            let seq = e.events.len() as u64 + 1;
            e.events.push(BuildEvent {
                build: lease.build,
                seq,
                kind: ev.kind.clone(),
                data: ev.data.clone(),
            });
        }
        Ok(e.events.len() as u64)
    }

    async fn finish(&self, lease: &Lease, end: &BuildEnd) -> Result<QueuedBuild> {
        if !end.state.is_final() {
            return Err(Error::invalid(format!(
                "build {}: a build cannot end {}",
                lease.build, end.state
            )));
        }
        let now = self.clock.now();
        let mut s = self.lock();
        let e = s.held(lease)?;
        e.build.state = end.state;
        e.build.reason = end.reason.clone();
        e.build.outcome = end.outcome.clone();
        e.build.finished_at = Some(now);
        e.lease_until = None;
        Ok(e.build.clone())
    }

    async fn get(&self, id: BuildId) -> Result<QueuedBuild> {
        let s = self.lock();
        let e = s.entry(id)?;
        Ok(s.view(e))
    }

    async fn list(&self, filter: &BuildFilter) -> Result<BuildPage> {
        let limit = filter.limit.clamp(1, MAX_PAGE);
        let s = self.lock();
        let upper = filter.before.unwrap_or(BuildId(u64::MAX));
        let builds: Vec<QueuedBuild> = s
            .builds
            .range(..upper)
            .rev()
            .filter(|(_, e)| filter.matches(&e.build))
            .take(limit)
            .map(|(_, e)| s.view(e))
            .collect();
        let next = (builds.len() == limit)
            .then(|| builds.last().map(|b| b.id))
            .flatten();
        Ok(BuildPage { builds, next })
    }

    async fn events(&self, id: BuildId, after: u64, limit: usize) -> Result<Vec<BuildEvent>> {
        let s = self.lock();
        let e = s.entry(id)?;
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(e.events.len());
        Ok(e.events[start..].iter().take(limit).cloned().collect())
    }

    async fn request_abort(&self, id: BuildId, reason: &str) -> Result<QueuedBuild> {
        let now = self.clock.now();
        let mut s = self.lock();
        let e = s.builds.get_mut(&id).ok_or_else(|| not_found(id))?;
        let b = &mut e.build;
        match b.state {
            BuildState::Queued => {
                b.state = BuildState::Aborted;
                b.abort_requested = Some(reason.to_owned());
                b.reason = Some(reason.to_owned());
                b.finished_at = Some(now);
            }
            BuildState::Running => {
                if b.abort_requested.is_none() {
                    b.abort_requested = Some(reason.to_owned());
                }
            }
            ended => {
                return Err(Error::conflict(format!(
                    "build {id} has ended ({ended}): there is nothing to abort"
                )));
            }
        }
        let e = s.entry(id)?;
        Ok(s.view(e))
    }

    async fn reap_lapsed(&self, reason: &str) -> Result<Vec<LapsedBuild>> {
        let now = self.clock.now();
        let mut s = self.lock();
        let mut out = Vec::new();
        for e in s.builds.values_mut() {
            let lapsed = e.build.state == BuildState::Running
                && e.lease_until.is_some_and(|until| until <= now);
            if !lapsed {
                continue;
            }
            let b = &mut e.build;
            let requeued = !b.steps_started;
            if requeued {
                b.state = BuildState::Queued;
                b.started_at = None;
            } else {
                b.state = BuildState::Errored;
                b.reason = Some(reason.to_owned());
                b.finished_at = Some(now);
            }
            e.lease_until = None;
            out.push(LapsedBuild {
                id: b.id,
                worker: b.worker.clone().unwrap_or_default(),
                requeued,
            });
        }
        Ok(out)
    }

    async fn depth(&self) -> Result<QueueDepth> {
        let s = self.lock();
        let mut d = QueueDepth::default();
        for e in s.builds.values() {
            match e.build.state {
                BuildState::Queued => d.queued += 1,
                BuildState::Running => d.running += 1,
                _ => {}
            }
        }
        Ok(d)
    }

    async fn set_pipeline(&self, lease: &Lease, p: &NewPipeline) -> Result<PipelineSet> {
        let now = self.clock.now();
        let mut s = self.lock();
        s.held(lease)?;
        let key = (p.team.clone(), p.name.clone(), p.instance_vars.clone());
        let (stored, changed) = match s.pipelines.get(&key) {
            Some(old) if old.pipeline.config == p.config && old.pipeline.vars == p.vars => {
                (old.clone(), false)
            }
            Some(old) => (
                StoredPipeline::new(p.clone(), old.version + 1, lease.build, old.created_at, now),
                true,
            ),
            None => (
                StoredPipeline::new(p.clone(), 1, lease.build, now, now),
                true,
            ),
        };
        if changed {
            s.pipelines.insert(key, stored.clone());
        }
        Ok(PipelineSet { stored, changed })
    }

    async fn pipelines(
        &self,
        team: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<StoredPipeline>> {
        let s = self.lock();
        Ok(s.pipelines
            .iter()
            .filter(|((t, n, _), _)| {
                team.is_none_or(|want| want == t) && name.is_none_or(|want| want == n)
            })
            .map(|(_, p)| p.clone())
            .take(1000)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lease_lapses_only_when_its_clock_passes_it() {
        let clock = RegistryClock::manual(SystemTime::UNIX_EPOCH + Duration::from_secs(1000));
        let q = MemoryBuildQueue::with_clock(clock.clone());
        let b = q.submit(&NewBuild::new("p", "j", vec![])).await.unwrap();
        let c = q
            .claim("w", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        clock.advance(Duration::from_secs(29));
        assert!(q.reap_lapsed("lost").await.unwrap().is_empty());
        clock.advance(Duration::from_secs(1));
        let lapsed = q.reap_lapsed("lost").await.unwrap();
        assert_eq!(lapsed.len(), 1);
        assert!(lapsed[0].requeued);
        assert_eq!(q.get(b.id).await.unwrap().state, BuildState::Queued);
        assert!(q.renew(&c.lease, Duration::from_secs(30)).await.is_err());
    }
}
