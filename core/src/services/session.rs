//! A worker session: what one process holds while it runs builds.
//!
//! It owns the worker's registration (renewed in the background; when it cannot be
//! renewed, every build of the process is stopped as `WorkerLost`, since what they
//! reference would soon be unprotected), the periodic reaper (which sees every active
//! step of every build of the process, so it never takes a running step's pod), the set
//! of running builds, and the orderly end: stop the reaper, one last pass, sign off.
//! Both the one-shot `run` and a long-running server use it; it knows nothing of either.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::ports::Runtime;
use crate::services::{
    AbortHandle, AbortReason, BuildOutcome, BuildRequest, BuildRunner, Heartbeat, HeartbeatConfig,
    ReapReport, Reaper, ReaperConfig,
};

/// Told of every reaper pass of a session (for metrics): what it removed, or why the
/// pass could not run at all.
pub type ReapObserver = Arc<dyn Fn(std::result::Result<&ReapReport, &Error>) + Send + Sync>;

/// How a [`WorkerSession`] behaves.
#[derive(Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// The worker's registration.
    pub heartbeat: HeartbeatConfig,
    /// What the reaper collects (its `worker` is the session's).
    pub reaper: ReaperConfig,
    /// Time between reaper passes while the session runs; `None`: only the passes the
    /// owner asks for ([`WorkerSession::reap_now`]) and the last one.
    pub reap_every: Option<Duration>,
    /// Whether the last pass, at [`WorkerSession::shutdown`], deletes this worker's
    /// pods (off to keep them for debugging; a later worker reaps them once this one's
    /// registration is gone).
    pub reap_pods_at_end: bool,
    /// Told of every reaper pass's report.
    pub on_reap: Option<ReapObserver>,
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("heartbeat", &self.heartbeat)
            .field("reaper", &self.reaper)
            .field("reap_every", &self.reap_every)
            .field("reap_pods_at_end", &self.reap_pods_at_end)
            .field("on_reap", &self.on_reap.is_some())
            .finish()
    }
}

impl SessionConfig {
    /// Defaults for `worker`: a 60 s registration, the default reaper, a pass every
    /// minute, pods deleted at the end.
    pub fn new(worker: impl Into<String>) -> Self {
        let worker = worker.into();
        SessionConfig {
            heartbeat: HeartbeatConfig::new(worker.clone()),
            reaper: ReaperConfig::new(worker),
            reap_every: Some(Duration::from_secs(60)),
            reap_pods_at_end: true,
            on_reap: None,
        }
    }

    /// Tell `observer` of every reaper pass's report.
    pub fn with_on_reap(mut self, observer: ReapObserver) -> Self {
        self.on_reap = Some(observer);
        self
    }

    /// With this registration.
    pub fn with_heartbeat(mut self, heartbeat: HeartbeatConfig) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// With this reaper.
    pub fn with_reaper(mut self, reaper: ReaperConfig) -> Self {
        self.reaper = reaper;
        self
    }

    /// With this time between reaper passes (`None`: no periodic pass).
    pub fn with_reap_every(mut self, every: Option<Duration>) -> Self {
        self.reap_every = every;
        self
    }

    /// Whether the last pass deletes this worker's pods.
    pub fn with_reap_pods_at_end(mut self, v: bool) -> Self {
        self.reap_pods_at_end = v;
        self
    }
}

struct Inner {
    rt: Runtime,
    runner: BuildRunner,
    heartbeat: Heartbeat,
    config: SessionConfig,
    /// The abort handle of each running build, by build id.
    builds: Mutex<HashMap<String, Arc<AbortHandle>>>,
    /// Why the registration was lost, once it was.
    lost: watch::Sender<Option<String>>,
}

impl Inner {
    fn builds(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<AbortHandle>>> {
        // Entries are inserted and removed whole: a poisoned map is still consistent.
        self.builds.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reaper(&self, with_pods: bool) -> Reaper {
        Reaper::new(
            with_pods.then(|| self.rt.pods.clone()),
            self.rt.volumes.clone(),
            self.rt.registry.clone(),
            self.config.reaper.clone(),
        )
    }

    async fn reap(&self, with_pods: bool) -> Result<ReapReport> {
        let report = self
            .reaper(with_pods)
            .run_once_live(&|| self.runner.active_steps(), SystemTime::now())
            .await;
        if let Some(observe) = &self.config.on_reap {
            observe(report.as_ref());
        }
        report
    }
}

/// A worker's session: registration, reaper, running builds. Cheap to clone; clones
/// share the session.
#[derive(Clone)]
pub struct WorkerSession {
    inner: Arc<Inner>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for WorkerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerSession")
            .field("worker", &self.worker())
            .field("running", &self.running().len())
            .finish_non_exhaustive()
    }
}

/// Removes a build from the running set however its future ends (also when dropped).
struct Running<'a> {
    inner: &'a Inner,
    id: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.inner.builds().remove(&self.id);
    }
}

impl WorkerSession {
    /// Register the worker and start renewing it and, if configured, the periodic
    /// reaper. `AlreadyExists` while another live process holds the name; `Invalid` for
    /// a configuration that cannot work (a reaper of another worker, a bad heartbeat).
    pub async fn start(rt: Runtime, runner: BuildRunner, config: SessionConfig) -> Result<Self> {
        if config.reaper.worker != config.heartbeat.worker {
            return Err(Error::invalid(format!(
                "worker session: the reaper is for worker {:?} but the registration is for {:?}",
                config.reaper.worker, config.heartbeat.worker
            )));
        }
        if config.reap_every.is_some_and(|d| d.is_zero()) {
            return Err(Error::invalid(
                "worker session: the time between reaper passes must be more than zero",
            ));
        }
        let (heartbeat, _) =
            Heartbeat::register(rt.registry.clone(), config.heartbeat.clone()).await?;
        let (lost, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            rt,
            runner,
            heartbeat,
            config,
            builds: Mutex::new(HashMap::new()),
            lost,
        });
        let mut tasks = Vec::new();
        {
            let inner = inner.clone();
            tasks.push(tokio::spawn(async move {
                // Mark the loss before stopping the builds: `run` inserts its build and
                // then checks the mark, so every build is either stopped here or sees it.
                let on_lost = |why: String| {
                    inner.lost.send_replace(Some(why.clone()));
                    for abort in inner.builds().values() {
                        abort.abort_because(AbortReason::WorkerLost(why.clone()));
                    }
                };
                inner.heartbeat.keep_alive(on_lost).await;
            }));
        }
        if let Some(every) = inner.config.reap_every {
            let inner = inner.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // The first tick is immediate; the owner decides about a pass at start.
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if inner.lost.borrow().is_some() {
                        // Unregistered, this worker's view of what is alive is stale.
                        break;
                    }
                    match inner.reap(true).await {
                        Ok(r) if !r.errors.is_empty() => {
                            tracing::warn!(errors = ?r.errors, "a reaper pass was incomplete")
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "a reaper pass failed; the next retries")
                        }
                    }
                }
            }));
        }
        Ok(WorkerSession {
            inner,
            tasks: Arc::new(Mutex::new(tasks)),
        })
    }

    /// The worker name.
    pub fn worker(&self) -> &str {
        &self.inner.config.heartbeat.worker
    }

    /// The runner builds run on.
    pub fn runner(&self) -> &BuildRunner {
        &self.inner.runner
    }

    /// The ports.
    pub fn runtime(&self) -> &Runtime {
        &self.inner.rt
    }

    /// How long ago the registration was last renewed.
    pub fn heartbeat_age(&self) -> Duration {
        self.inner.heartbeat.age()
    }

    /// Why the registration was lost, once it was. A lost session runs no more builds.
    pub fn lost(&self) -> Option<String> {
        self.inner.lost.borrow().clone()
    }

    /// Resolves once the registration is lost, with why.
    pub async fn wait_lost(&self) -> String {
        let mut rx = self.inner.lost.subscribe();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as the session; pend like a lost that never
                // comes.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Run a build in this session. `abort` must be the handle of `req.abort`: the
    /// session uses it to stop the build when the worker is lost and for
    /// [`Self::abort_all`]. `AlreadyExists` when a build with the same id is running.
    pub async fn run(&self, req: BuildRequest, abort: Arc<AbortHandle>) -> Result<BuildOutcome> {
        let id = req.build_id.clone();
        {
            let mut builds = self.inner.builds();
            if builds.contains_key(&id) {
                return Err(Error::already_exists(format!(
                    "build {id} is already running on worker {}",
                    self.worker()
                )));
            }
            builds.insert(id.clone(), abort.clone());
        }
        let _running = Running {
            inner: &self.inner,
            id,
        };
        // Checked after the insert: a loss from now on reaches this build through the
        // map, and one before it is seen here.
        if let Some(why) = self.lost() {
            abort.abort_because(AbortReason::WorkerLost(why));
        }
        self.inner.runner.run(req).await
    }

    /// The ids of the builds running now.
    pub fn running(&self) -> Vec<String> {
        let mut ids: Vec<_> = self.inner.builds().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Abort one running build (first stage: its hooks still run); `false` when no
    /// build of that id runs here.
    pub fn abort(&self, build_id: &str) -> bool {
        match self.inner.builds().get(build_id) {
            Some(a) => {
                a.abort();
                true
            }
            None => false,
        }
    }

    /// Abort every running build (first stage).
    pub fn abort_all(&self) {
        for a in self.inner.builds().values() {
            a.abort();
        }
    }

    /// Stop every running build's hooks too (second stage).
    pub fn force_all(&self) {
        for a in self.inner.builds().values() {
            a.force();
        }
    }

    /// One reaper pass now, sparing every active step of the process.
    pub async fn reap_now(&self) -> Result<ReapReport> {
        self.inner.reap(true).await
    }

    /// End the session: stop renewing and reaping, make one last pass (deleting this
    /// worker's pods unless the config keeps them), and sign off, so the name is free
    /// at once and what this worker still references stops protecting. Builds still
    /// running are the owner's to end first; their active steps are spared.
    pub async fn shutdown(self) -> Result<ReapReport> {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        let report = self.inner.reap(self.inner.config.reap_pods_at_end).await;
        let signed_off = self.inner.heartbeat.sign_off().await;
        let report = report?;
        signed_off?;
        Ok(report)
    }
}
