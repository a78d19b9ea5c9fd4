//! [`MemoryBackend`]'s pods: a state machine per pod, watched through a
//! `tokio::sync::watch` channel, with the faults a cluster can throw at a step.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use jetbridge_core::names::{is_dns_label, label};
use jetbridge_core::ports::{
    DeleteOpts, LabelSelector, MountSource, PendingReason, PodCapabilities, PodFailure, PodSpec,
    PodState, PodStatus, Pods, WaitOpts,
};
use jetbridge_core::{Error, ErrorKind, Result};
use tokio::sync::watch;

use crate::faults::{FaultTiming, Faults, after};
use crate::fs::{DIR_MODE, MemFs, Node, PodFs, join};
use crate::programs::{Program, ProgramContext, ProgramTable, ResourceScripts, image_repo};

/// An operation of [`MemoryBackend`], for fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendOp {
    /// [`Pods::create`].
    Create,
    /// [`Pods::get`].
    Get,
    /// [`Pods::wait`].
    Wait,
    /// [`Pods::list`].
    List,
    /// [`Pods::delete`].
    Delete,
    /// [`Exec::exec`](jetbridge_core::ports::Exec::exec).
    Exec,
}

/// How running programs of a pod are stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kill {
    /// The connection to the program is gone: execs end `Lost`.
    Lost(&'static str),
    /// The container was OOM-killed: execs end with exit 137.
    Oom,
}

/// The message of an eviction, as the kubelet words it.
pub const EVICTED_MESSAGE: &str = "The node was low on resource: memory.";
/// The message of an unschedulable pod, as the scheduler words it.
pub const UNSCHEDULABLE_MESSAGE: &str = "0/1 nodes are available: 1 Insufficient memory. \
     preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.";

pub(crate) struct PodEntry {
    pub(crate) generation: u64,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) image: String,
    pub(crate) env: BTreeMap<String, String>,
    caches: Vec<(String, String)>,
    pub(crate) state: PodState,
    message: Option<String>,
    created_at: SystemTime,
    deleting: bool,
    status_tx: watch::Sender<PodStatus>,
    pub(crate) kill_tx: watch::Sender<Option<Kill>>,
    pub(crate) fs: PodFs,
}

impl PodEntry {
    fn status(&self, name: &str) -> PodStatus {
        PodStatus {
            name: name.to_owned(),
            labels: self.labels.clone(),
            state: self.state,
            message: self.message.clone(),
            created_at: Some(self.created_at),
            deleting: self.deleting,
        }
    }

    fn set(&mut self, name: &str, state: PodState, message: Option<String>) {
        self.state = state;
        self.message = message;
        self.status_tx.send_replace(self.status(name));
    }
}

pub(crate) struct State {
    pub(crate) pods: BTreeMap<String, PodEntry>,
    caches: HashMap<String, (Node, Vec<(String, Node)>)>,
    created: u64,
    /// Pods created with [`PodSpec::hermetic`], in order, kept after they are gone.
    hermetic: Vec<String>,
    unschedulable: bool,
    unpullable: HashMap<String, String>,
    delay: Duration,
    pub(crate) drop_streams: usize,
    next_gen: u64,
}

pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) faults: Faults<BackendOp>,
    pub(crate) programs: Arc<Mutex<ProgramTable>>,
    pub(crate) versions: Arc<AtomicU64>,
    pub(crate) execs: AtomicU64,
    /// Where `sh` runs are recorded, when a test asked for it.
    pub(crate) shell_log: Mutex<Option<Arc<crate::record::ShellLog>>>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // No code path leaves the state half-updated before a possible panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Fake pods and exec in memory: both [`Pods`] and
/// [`Exec`](jetbridge_core::ports::Exec), sharing one set of pods.
///
/// Cloning gives another handle to the same backend, so a test keeps one handle for
/// fault injection and hands clones to the code under test.
///
/// Each pod has a filesystem of its own with the working directory at
/// [`MemoryBackend::WORKDIR`], holding its mounts. Commands run against it: the shell
/// subset, `tar`, programs registered with [`MemoryBackend::register_program`], resource
/// programs of the pod's image, and `#!/bin/sh` scripts found in the pod.
#[derive(Clone)]
pub struct MemoryBackend {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.shared.lock();
        f.debug_struct("MemoryBackend")
            .field("pods", &s.pods.keys().collect::<Vec<_>>())
            .field("created", &s.created)
            .finish()
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

enum Advance {
    Moved,
    Stopped,
}

impl MemoryBackend {
    /// The absolute path of every pod's working directory.
    pub const WORKDIR: &'static str = "/workdir";

    /// A backend with no pods, scheduling immediately.
    pub fn new() -> Self {
        MemoryBackend {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    pods: BTreeMap::new(),
                    caches: HashMap::new(),
                    created: 0,
                    hermetic: Vec::new(),
                    unschedulable: false,
                    unpullable: HashMap::new(),
                    delay: Duration::ZERO,
                    drop_streams: 0,
                    next_gen: 0,
                }),
                faults: Faults::default(),
                programs: Arc::new(Mutex::new(ProgramTable::default())),
                versions: Arc::new(AtomicU64::new(0)),
                execs: AtomicU64::new(0),
                shell_log: Mutex::new(None),
            }),
        }
    }

    /// Record every `sh -c` exec run to its end from now on (argv, environment, stdin,
    /// the pod's tree before and after, output and status), so a test can replay them
    /// under a real shell. Runs that call registered or resource programs are counted
    /// but not kept.
    pub fn record_shell_runs(&self) -> Arc<crate::record::ShellLog> {
        let log = Arc::new(crate::record::ShellLog::default());
        *self
            .shared
            .shell_log
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(log.clone());
        log
    }

    fn programs(&self) -> MutexGuard<'_, ProgramTable> {
        self.shared
            .programs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    // ---- programs ----

    /// Register an async program under a name (`make`, found for `/usr/bin/make` too)
    /// or a path (`./ci/build`, `/opt/tool/run`). It runs in every pod and takes
    /// precedence over the built-in commands.
    pub fn register_program<F, Fut>(&self, name_or_path: impl Into<String>, f: F)
    where
        F: Fn(ProgramContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = i32> + Send + 'static,
    {
        self.programs()
            .by_name
            .insert(name_or_path.into(), Program::new(f));
    }

    /// Register a synchronous program; see [`Self::register_program`].
    pub fn register_sync_program<F>(&self, name_or_path: impl Into<String>, f: F)
    where
        F: Fn(&mut ProgramContext) -> i32 + Send + Sync + 'static,
    {
        self.programs()
            .by_name
            .insert(name_or_path.into(), Program::sync(f));
    }

    /// Register a [`Program`] value under a name or path.
    pub fn register(&self, name_or_path: impl Into<String>, program: Program) {
        self.programs().by_name.insert(name_or_path.into(), program);
    }

    /// Register a program at `path` for pods of `image` only (any tag of it).
    pub fn register_image_program(&self, image: &str, path: impl Into<String>, program: Program) {
        self.programs()
            .by_image
            .insert((image_repo(image), path.into()), program);
    }

    /// Register the resource programs (`/opt/resource/check|in|out`) of `image`.
    /// `concourse/mock-resource` has built-in ones unless replaced here.
    pub fn register_resource(&self, image: &str, scripts: ResourceScripts) {
        for (path, p) in [
            ("/opt/resource/check", scripts.check),
            ("/opt/resource/in", scripts.in_),
            ("/opt/resource/out", scripts.out),
        ] {
            if let Some(p) = p {
                self.register_image_program(image, path, p);
            }
        }
    }

    // ---- inspection ----

    /// The filesystem of a pod; `NotFound` if there is no such pod.
    pub fn pod_fs(&self, pod: &str) -> Result<PodFs> {
        self.shared
            .lock()
            .pods
            .get(pod)
            .map(|p| p.fs.clone())
            .ok_or_else(|| Error::not_found(format!("pod {pod}")))
    }

    /// How many pods were created (adoptions of an existing pod not counted).
    pub fn created_pods(&self) -> u64 {
        self.shared.lock().created
    }

    /// The pods created with [`PodSpec::hermetic`] set, in order of creation, including
    /// those deleted since: what a test asserts reached the port.
    pub fn hermetic_pods(&self) -> Vec<String> {
        self.shared.lock().hermetic.clone()
    }

    /// How many times `exec` was called (including calls failed by injected faults).
    pub fn exec_count(&self) -> u64 {
        self.shared.execs.load(Ordering::SeqCst)
    }

    /// How many pods exist now.
    pub fn live_pods(&self) -> usize {
        self.shared.lock().pods.len()
    }

    /// Names of the pods that exist now, sorted.
    pub fn pod_names(&self) -> Vec<String> {
        self.shared.lock().pods.keys().cloned().collect()
    }

    /// Names of the cache keys kept so far.
    pub fn cache_keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.shared.lock().caches.keys().cloned().collect();
        k.sort();
        k
    }

    // ---- faults ----

    /// Make the next `n` calls of `op` fail with an error of `kind`, doing nothing.
    pub fn fail_next(&self, op: BackendOp, n: usize, kind: ErrorKind) {
        self.shared
            .faults
            .plan_kind(op, n, kind, FaultTiming::Before);
    }

    /// Make the next `n` calls of `op` take effect and then fail with `kind`, as when
    /// the response is lost (a pod is created, the caller hears an error).
    pub fn fail_next_after(&self, op: BackendOp, n: usize, kind: ErrorKind) {
        self.shared
            .faults
            .plan_kind(op, n, kind, FaultTiming::After);
    }

    /// Make the next `n` calls of `op` fail with exactly `error`.
    pub fn fail_next_with(&self, op: BackendOp, n: usize, error: Error) {
        self.shared.faults.plan(op, n, error, FaultTiming::Before);
    }

    /// Forget all planned call failures.
    pub fn clear_faults(&self) {
        self.shared.faults.clear();
    }

    fn fail_pod(&self, pod: &str, state: PodState, msg: &str, kill: Kill) -> Result<()> {
        let mut s = self.shared.lock();
        let p = s
            .pods
            .get_mut(pod)
            .ok_or_else(|| Error::not_found(format!("pod {pod}")))?;
        p.set(pod, state, Some(msg.to_owned()));
        p.kill_tx.send_replace(Some(kill));
        Ok(())
    }

    /// Evict a pod: `Failed(Evicted)`; execs in flight end `Lost`.
    pub fn evict(&self, pod: &str) -> Result<()> {
        self.fail_pod(
            pod,
            PodState::Failed(PodFailure::Evicted),
            EVICTED_MESSAGE,
            Kill::Lost("pod evicted"),
        )
    }

    /// OOM-kill a pod's container: `Failed(OomKilled)`; execs in flight exit 137.
    pub fn oom_kill(&self, pod: &str) -> Result<()> {
        self.fail_pod(
            pod,
            PodState::Failed(PodFailure::OomKilled),
            "OOMKilled: container exceeded its memory limit",
            Kill::Oom,
        )
    }

    /// Lose a pod's node: `Failed(NodeLost)`; execs in flight end `Lost`.
    pub fn lose_node(&self, pod: &str) -> Result<()> {
        self.fail_pod(
            pod,
            PodState::Failed(PodFailure::NodeLost),
            "node is not ready",
            Kill::Lost("node lost"),
        )
    }

    /// Let the main container exit by itself with `code`: `Succeeded` for 0, else
    /// `Failed(Exited(code))`; execs in flight end `Lost`.
    pub fn exit_container(&self, pod: &str, code: i32) -> Result<()> {
        let state = if code == 0 {
            PodState::Succeeded
        } else {
            PodState::Failed(PodFailure::Exited(code))
        };
        self.fail_pod(
            pod,
            state,
            "container exited",
            Kill::Lost("container exited"),
        )
    }

    /// Delete a pod as someone else would: it vanishes, waiters see `Failed(Deleted)`,
    /// execs in flight end `Lost`. `NotFound` if there is no such pod.
    pub fn delete_externally(&self, pod: &str) -> Result<()> {
        let mut s = self.shared.lock();
        if remove_pod(&mut s, pod) {
            Ok(())
        } else {
            Err(Error::not_found(format!("pod {pod}")))
        }
    }

    /// While set, new pods (and pods waiting for a node) stay
    /// `Pending(Unschedulable)` with a scheduler message; clearing it schedules them.
    pub fn set_unschedulable(&self, on: bool) {
        self.shared.lock().unschedulable = on;
        if !on {
            self.redrive(|p| p.state == PodState::Pending(PendingReason::Unschedulable));
        }
    }

    /// Pods with this image (any tag) go `Pending(ImagePullFailed)` with `message`.
    pub fn set_unpullable(&self, image: &str, message: impl Into<String>) {
        self.shared
            .lock()
            .unpullable
            .insert(image_repo(image), message.into());
    }

    /// Make an image pullable again; pods stuck on it start.
    pub fn clear_unpullable(&self, image: &str) {
        let repo = image_repo(image);
        self.shared.lock().unpullable.remove(&repo);
        self.redrive(|p| {
            p.state == PodState::Pending(PendingReason::ImagePullFailed)
                && image_repo(&p.image) == repo
        });
    }

    /// The next `n` execs produce some output, then end `Lost` without an exit status.
    pub fn drop_next_exec_streams(&self, n: usize) {
        self.shared.lock().drop_streams += n;
    }

    /// Each of the two steps of pod start-up (scheduling, then container creation)
    /// takes `delay` of tokio time. Zero (the default) makes new pods `Running` at once.
    pub fn set_scheduling_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    fn redrive(&self, stuck: impl Fn(&PodEntry) -> bool) {
        let mut s = self.shared.lock();
        let targets: Vec<(String, u64)> = s
            .pods
            .iter()
            .filter(|(_, p)| stuck(p))
            .map(|(n, p)| (n.clone(), p.generation))
            .collect();
        for (name, generation) in targets {
            self.start(&mut s, name, generation);
        }
    }

    /// Move a new or stuck pod along: at once without a delay, else in a task.
    fn start(&self, s: &mut State, name: String, generation: u64) {
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
            Ok(rt) if !s.delay.is_zero() => {
                rt.spawn(drive(self.shared.clone(), name, generation));
            }
            _ => while let Advance::Moved = advance(s, &name, generation) {},
        }
    }
}

/// One step of the start-up state machine.
fn advance(s: &mut State, name: &str, generation: u64) -> Advance {
    let unschedulable = s.unschedulable;
    let Some(p) = s
        .pods
        .get(name)
        .filter(|p| p.generation == generation && !p.deleting)
    else {
        return Advance::Stopped;
    };
    let pull_error = s.unpullable.get(&image_repo(&p.image)).cloned();
    let Some(p) = s.pods.get_mut(name) else {
        return Advance::Stopped;
    };
    match p.state {
        PodState::Pending(PendingReason::Scheduling | PendingReason::Unschedulable) => {
            if unschedulable {
                if p.state != PodState::Pending(PendingReason::Unschedulable) {
                    p.set(
                        name,
                        PodState::Pending(PendingReason::Unschedulable),
                        Some(UNSCHEDULABLE_MESSAGE.to_owned()),
                    );
                }
                Advance::Stopped
            } else {
                p.set(
                    name,
                    PodState::Pending(PendingReason::ContainerCreating),
                    None,
                );
                Advance::Moved
            }
        }
        PodState::Pending(PendingReason::ContainerCreating | PendingReason::ImagePullFailed) => {
            if let Some(msg) = pull_error {
                if p.state != PodState::Pending(PendingReason::ImagePullFailed) {
                    p.set(
                        name,
                        PodState::Pending(PendingReason::ImagePullFailed),
                        Some(msg),
                    );
                }
                Advance::Stopped
            } else {
                p.set(name, PodState::Running, None);
                Advance::Stopped
            }
        }
        _ => Advance::Stopped,
    }
}

async fn drive(shared: Arc<Shared>, name: String, generation: u64) {
    loop {
        let delay = shared.lock().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Advance::Stopped = advance(&mut shared.lock(), &name, generation) {
            return;
        }
    }
}

/// Remove a pod: keep its caches, stop its programs, tell its waiters.
fn remove_pod(s: &mut State, name: &str) -> bool {
    let Some(mut p) = s.pods.remove(name) else {
        return false;
    };
    {
        let fs = p.fs.lock();
        for (path, key) in &p.caches {
            let abs = join(MemoryBackend::WORKDIR, path);
            if let (Some(root), Ok(entries)) = (fs.stat(&abs, true).cloned(), fs.subtree(&abs)) {
                s.caches.insert(key.clone(), (root, entries));
            }
        }
    }
    p.kill_tx.send_replace(Some(Kill::Lost("pod deleted")));
    p.deleting = true;
    let state = if p.state.is_terminal() {
        p.state
    } else {
        PodState::Failed(PodFailure::Deleted)
    };
    p.set(name, state, Some("pod deleted".to_owned()));
    true
}

fn check_mount_path(path: &str) -> Result<()> {
    if path.is_empty()
        || path.starts_with('/')
        || path.split('/').any(|c| c == ".." || c.is_empty())
    {
        return Err(Error::invalid(format!(
            "mount path {path:?} must be relative, without '..'"
        )));
    }
    Ok(())
}

/// The status reported for a pod that vanished while waited on.
fn vanished(mut last: PodStatus) -> PodStatus {
    if !last.state.is_terminal() {
        last.state = PodState::Failed(PodFailure::Deleted);
    }
    last.deleting = true;
    last
}

#[async_trait]
impl Pods for MemoryBackend {
    fn capabilities(&self) -> PodCapabilities {
        // Its `sh` interpreter has no network to cut: a hermetic pod is honoured as is.
        PodCapabilities::none()
            .with_images(true)
            .with_hermetic(true)
    }

    async fn create(&self, spec: &PodSpec) -> Result<PodStatus> {
        let late = self.shared.faults.before(BackendOp::Create)?;
        let r = self.create_pod(spec);
        after(late, r)
    }

    async fn get(&self, name: &str) -> Result<PodStatus> {
        let late = self.shared.faults.before(BackendOp::Get)?;
        let r = self
            .shared
            .lock()
            .pods
            .get(name)
            .map(|p| p.status(name))
            .ok_or_else(|| Error::not_found(format!("pod {name}")));
        after(late, r)
    }

    async fn wait(&self, name: &str, opts: &WaitOpts) -> Result<PodStatus> {
        let (cond, timeout) = (opts.cond, opts.timeout);
        let late = self.shared.faults.before(BackendOp::Wait)?;
        let mut rx = self
            .shared
            .lock()
            .pods
            .get(name)
            .map(|p| p.status_tx.subscribe())
            .ok_or_else(|| Error::not_found(format!("pod {name}")))?;
        let done = |s: &PodStatus| s.satisfies(cond) || s.hopeless(cond);
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(done).await.map(|s| s.clone())
        })
        .await;
        let r = match waited {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(_closed)) => Ok(vanished(rx.borrow().clone())),
            Err(_elapsed) => Ok(rx.borrow().clone()),
        };
        after(late, r)
    }

    async fn list(&self, selector: &LabelSelector) -> Result<Vec<PodStatus>> {
        let late = self.shared.faults.before(BackendOp::List)?;
        let r = Ok(self
            .shared
            .lock()
            .pods
            .iter()
            .filter(|(_, p)| selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
            .map(|(n, p)| p.status(n))
            .collect());
        after(late, r)
    }

    async fn delete(&self, name: &str, opts: &DeleteOpts) -> Result<()> {
        // Programs are stopped at once: the grace period only bounds how long a real
        // container may take, and fake programs cannot clean up anyway.
        let _ = opts;
        let late = self.shared.faults.before(BackendOp::Delete)?;
        remove_pod(&mut self.shared.lock(), name);
        after(late, Ok(()))
    }
}

impl MemoryBackend {
    fn create_pod(&self, spec: &PodSpec) -> Result<PodStatus> {
        if !is_dns_label(&spec.name) {
            return Err(Error::invalid(format!(
                "pod name {:?} is not a DNS-1123 label",
                spec.name
            )));
        }
        if spec.transfer {
            return Err(Error::unsupported(
                "memory pods have no helper container; stream with tar in the main container",
            ));
        }
        let mut caches = Vec::new();
        for m in &spec.mounts {
            check_mount_path(&m.path)?;
            match &m.source {
                MountSource::Empty => {}
                MountSource::Cache { key } => caches.push((m.path.clone(), key.clone())),
                MountSource::CopyOf(_) | MountSource::WriteInto(_) => {
                    return Err(Error::unsupported(format!(
                        "memory pods cannot mount volumes ({}); stream them with tar",
                        m.path
                    )));
                }
            }
        }
        let mut s = self.shared.lock();
        if let Some(p) = s.pods.get(&spec.name) {
            let theirs = p.labels.get(label::HANDLE);
            return match spec.handle() {
                Some(h) if theirs.map(String::as_str) == Some(h) => Ok(p.status(&spec.name)),
                _ => Err(Error::already_exists(format!(
                    "pod {} exists with another handle",
                    spec.name
                ))),
            };
        }
        let mut fs = MemFs::new();
        let err = |e: crate::fs::FsError| e.into_error(&spec.name);
        fs.mkdir(MemoryBackend::WORKDIR, true, DIR_MODE)
            .map_err(err)?;
        for m in &spec.mounts {
            let abs = join(MemoryBackend::WORKDIR, &m.path);
            if let MountSource::Cache { key } = &m.source
                && let Some((root, entries)) = s.caches.get(key)
            {
                fs.mkdir(&join(&abs, ".."), true, DIR_MODE).map_err(err)?;
                fs.put_subtree(&abs, root.clone(), entries.clone())
                    .map_err(err)?;
            } else {
                fs.mkdir(&abs, true, DIR_MODE).map_err(err)?;
            }
        }
        s.next_gen += 1;
        let generation = s.next_gen;
        let entry = PodEntry {
            generation,
            labels: spec.labels.clone(),
            image: spec.image.clone(),
            env: spec.env.clone(),
            caches,
            state: PodState::Pending(PendingReason::Scheduling),
            message: None,
            created_at: SystemTime::now(),
            deleting: false,
            status_tx: watch::channel(PodStatus {
                name: spec.name.clone(),
                labels: BTreeMap::new(),
                state: PodState::Pending(PendingReason::Scheduling),
                message: None,
                created_at: None,
                deleting: false,
            })
            .0,
            kill_tx: watch::channel(None).0,
            fs: PodFs::new(fs, MemoryBackend::WORKDIR),
        };
        entry.status_tx.send_replace(entry.status(&spec.name));
        s.pods.insert(spec.name.clone(), entry);
        s.created += 1;
        if spec.hermetic {
            s.hermetic.push(spec.name.clone());
        }
        self.start(&mut s, spec.name.clone(), generation);
        s.pods
            .get(&spec.name)
            .map(|p| p.status(&spec.name))
            .ok_or_else(|| Error::other("pod vanished while being created"))
    }
}
