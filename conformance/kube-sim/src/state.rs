//! State shared by the API server, the kubelet and the control handle.

use crate::store::Store;
use crate::{RequestRecord, SimConfig, process};
use jetbridge_sim_http::Controls;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Lock a std mutex, recovering from poisoning (a panicked holder leaves
/// plain data that is still usable for a simulator).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kubelet-wide switches set from the control handle.
#[derive(Debug, Default)]
pub(crate) struct Flags {
    pub unschedulable: bool,
    pub cordoned: bool,
    pub frozen: bool,
    /// The node is unreachable (see `Simulator::lose_node`): the kubelet hears nothing
    /// and says nothing, and exec sessions to it go silent.
    pub node_down: bool,
    /// (substring of image, pull error message)
    /// (image substring, message, pull attempts left to fail; `None`: all of them).
    pub image_failures: Vec<(String, String, Option<usize>)>,
    /// (image substring, executables the image does not have), see
    /// `Simulator::image_lacks`.
    pub image_lacks: Vec<(String, Vec<String>)>,
    /// Files images hold, in the order given (see `Simulator::image_file`).
    pub image_files: Vec<ImageFile>,
    pub drop_exec: usize,
    /// How long a container's end takes to reach the API (see `Simulator::status_lag`).
    pub status_lag: Duration,
    /// Pods bound to each node and not yet terminal (`SimConfig::nodes`); grown to the
    /// node count on first use.
    pub node_load: Vec<usize>,
}

/// A file an image holds: images whose reference contains `image` have `path`, which
/// runs on the host as `link` (named as `path` is, pointing at the host file).
#[derive(Debug, Clone)]
pub(crate) struct ImageFile {
    pub image: String,
    pub path: String,
    pub link: PathBuf,
}

/// Why the kubelet must stop a pod's containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kill {
    /// Graceful (or immediate, grace 0) deletion.
    Delete { grace: u64 },
    /// Kubelet eviction: phase Failed, reason Evicted.
    Evict { message: String },
    /// The main container ran out of memory.
    Oom,
    /// The simulator is shutting down: stop everything, write nothing.
    Shutdown,
}

/// A handle on something that can be signalled: a process group, or a
/// "wait until killed" container that has no process at all.
#[derive(Debug, Clone)]
pub(crate) enum ProcHandle {
    Group(i32),
    /// Exit code sender; `true` when the command is a pause binary (exits 0 on TERM),
    /// `false` for `sleep infinity` (ignores TERM as PID 1).
    Pause(Arc<watch::Sender<Option<i32>>>, bool),
}

impl ProcHandle {
    /// `kill`: SIGKILL the whole group (the end of the grace period, or a command exec'd
    /// beside PID 1 dying with it). Otherwise the runtime's StopContainer TERM: to the
    /// container's own process only, not its group (containerd `task.Kill` of the init
    /// process without `WithKillAll`; runc `kill` without `--all`), and only when that
    /// process handles TERM, since a PID 1 without a handler ignores it
    /// ([`process::catches_term`]). Such a container runs on until the kubelet's SIGKILL
    /// after the grace period (kuberuntime_container.go `killContainer`) and ends with
    /// 137.
    pub fn signal(&self, kill: bool) {
        use nix::sys::signal::{Signal, kill as send, killpg};
        use nix::unistd::Pid;
        match self {
            // The process or its group may already be gone; nothing to do then.
            ProcHandle::Group(pgid) if kill => {
                let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
            }
            ProcHandle::Group(pid) => {
                // The group leader is the process spawned: its pid is the group's id.
                if process::catches_term(*pid) {
                    let _ = send(Pid::from_raw(*pid), Signal::SIGTERM);
                }
            }
            ProcHandle::Pause(tx, handles_term) => {
                let code = match (kill, handles_term) {
                    (true, _) => 137,
                    (false, true) => 0,
                    // `sleep infinity` as PID 1: TERM is dropped.
                    (false, false) => return,
                };
                tx.send_if_modified(|c| {
                    if c.is_none() {
                        *c = Some(code);
                        true
                    } else {
                        false
                    }
                });
            }
        }
    }
}

/// A signallable thing of a pod: a container's own process, or a command exec'd in
/// a container.
#[derive(Debug, Clone)]
pub(crate) struct Proc {
    pub handle: ProcHandle,
    /// The container it runs in.
    pub container: String,
    /// Exec'd (not the container's own process).
    pub exec: bool,
}

/// One volume mount of a container.
#[derive(Debug, Clone)]
pub(crate) struct Mount {
    /// Where the container sees it: absolute, as in its spec.
    pub path: String,
    /// What is mounted there, on the host: the volume's directory (joined with the
    /// mount's `subPath`), or a file for a `subPath` naming one.
    pub source: PathBuf,
    pub read_only: bool,
}

/// Where a container's processes run.
#[derive(Debug, Clone)]
pub(crate) struct ContainerEnv {
    /// The container's root directory.
    pub root: PathBuf,
    /// The working directory as the container's processes see it (under `root`): on
    /// the host, where it is a mount point, it can be an empty directory (see
    /// [`ContainerEnv::host_path`]).
    pub cwd: PathBuf,
    /// Resolved when the container starts (secrets are read then).
    pub env: Vec<(String, String)>,
    /// The container's mounts, parents before children (shortest path first), each at
    /// `root` joined with its relative form.
    pub mounts: Vec<Mount>,
    /// Its processes run in mount namespaces of their own where each mount is a bind
    /// mount onto a real directory ([`process::bind_mounts_available`]); otherwise the
    /// mount points are symbolic links to the volumes.
    pub bind: bool,
}

impl ContainerEnv {
    /// The host path of `path`, a path under `root` as the container's processes see
    /// it: inside a mount (the innermost one holding it), the same place in the
    /// mount's source; anywhere else `path` itself. What the simulator reads or writes
    /// on a container's behalf goes through this, since on the host a mount point is
    /// only an empty directory.
    pub fn host_path(&self, path: &std::path::Path) -> PathBuf {
        self.mounts
            .iter()
            .rev()
            .find_map(|m| {
                let rest = path
                    .strip_prefix(self.root.join(process::relative(&m.path)))
                    .ok()?;
                Some(if rest.as_os_str().is_empty() {
                    m.source.clone()
                } else {
                    m.source.join(rest)
                })
            })
            .unwrap_or_else(|| path.to_path_buf())
    }

    /// A command of this container, `argv` already resolved ([`Self::resolve_program`]):
    /// in a mount namespace of its own with the container's mounts made, in the
    /// working directory, or, without bind mounts, a plain process there.
    pub fn command(&self, argv: &[String]) -> Option<tokio::process::Command> {
        if !self.bind {
            return process::command(argv, &self.cwd, &self.env);
        }
        let binds: Vec<process::Bind> = self
            .mounts
            .iter()
            .map(|m| process::Bind {
                source: m.source.clone(),
                target: self.root.join(process::relative(&m.path)),
                read_only: m.read_only,
                file: m.source.is_file(),
            })
            .collect();
        process::namespaced_command(argv, &self.cwd, &self.root, &self.env, &binds)
    }

    /// `argv` with paths resolved as the container sees them: an element that is an
    /// absolute path inside one of the container's volumes (the step-pod helper that an
    /// init container installed in a shared `emptyDir`, as the program or as the
    /// command the helper runs) is that volume's file, at its place under the
    /// container's root (where the container's processes have the volume mounted);
    /// anything else is left alone, so other programs are the host's, as before. Like
    /// image files ([`crate::images::host_argv`]), a path inside a script string is not
    /// seen.
    pub fn resolve_program(&self, argv: Vec<String>) -> Vec<String> {
        argv.into_iter()
            .map(|a| {
                let inside = a.starts_with('/')
                    && !crate::process::has_dotdot(&a)
                    && self.mounts.iter().any(|m| {
                        let m = m.path.trim_end_matches('/');
                        !m.is_empty() && a.strip_prefix(m).is_some_and(|r| r.starts_with('/'))
                    });
                if inside {
                    self.root
                        .join(crate::process::relative(&a))
                        .to_string_lossy()
                        .into_owned()
                } else {
                    a
                }
            })
            .collect()
    }
}

/// A container's combined stdout and stderr.
#[derive(Debug)]
pub(crate) struct LogBuf {
    data: Mutex<Vec<u8>>,
    /// (bytes so far, finished)
    pub tx: watch::Sender<(usize, bool)>,
}

impl LogBuf {
    pub fn new() -> Arc<Self> {
        Arc::new(LogBuf {
            data: Mutex::new(Vec::new()),
            tx: watch::Sender::new((0, false)),
        })
    }
    pub fn append(&self, bytes: &[u8]) {
        let len = {
            let mut d = lock(&self.data);
            d.extend_from_slice(bytes);
            d.len()
        };
        self.tx.send_modify(|s| s.0 = len);
    }
    pub fn finish(&self) {
        self.tx.send_modify(|s| s.1 = true);
    }
    pub fn slice_from(&self, from: usize) -> Vec<u8> {
        let d = lock(&self.data);
        d.get(from..).map(<[u8]>::to_vec).unwrap_or_default()
    }
}

/// The kubelet's view of one pod (by uid).
#[derive(Debug)]
pub(crate) struct PodRuntime {
    pub ns: String,
    pub name: String,
    pub uid: String,
    pub kill_tx: watch::Sender<Option<Kill>>,
    pub containers: Mutex<HashMap<String, ContainerEnv>>,
    pub logs: Mutex<HashMap<String, Arc<LogBuf>>>,
    pub procs: Mutex<HashMap<u64, Proc>>,
    /// Containers whose own process has ended, as the runtime knows at once (the API
    /// hears of it later, see `Simulator::status_lag`).
    pub exited: Mutex<HashSet<String>>,
    next_proc: AtomicU64,
    pub pod_dir: Mutex<Option<PathBuf>>,
    /// The node (index) the pod holds a slot on, until it is terminal or gone.
    pub node: Mutex<Option<usize>>,
}

impl PodRuntime {
    pub fn new(ns: &str, name: &str, uid: &str) -> Arc<Self> {
        Arc::new(PodRuntime {
            ns: ns.into(),
            name: name.into(),
            uid: uid.into(),
            kill_tx: watch::Sender::new(None),
            containers: Mutex::new(HashMap::new()),
            logs: Mutex::new(HashMap::new()),
            procs: Mutex::new(HashMap::new()),
            exited: Mutex::default(),
            next_proc: AtomicU64::new(0),
            pod_dir: Mutex::new(None),
            node: Mutex::new(None),
        })
    }

    /// Register the process of `container` (`exec`: a command exec'd in it) to
    /// signal when the pod is killed.
    pub fn add_proc(&self, h: ProcHandle, container: &str, exec: bool) -> u64 {
        let id = self.next_proc.fetch_add(1, Ordering::Relaxed);
        let p = Proc {
            handle: h,
            container: container.to_owned(),
            exec,
        };
        lock(&self.procs).insert(id, p);
        id
    }

    pub fn remove_proc(&self, id: u64) {
        lock(&self.procs).remove(&id);
    }

    /// The process group registered as `id`, if it is one.
    pub fn group_of(&self, id: u64) -> Option<i32> {
        match lock(&self.procs).get(&id).map(|p| &p.handle) {
            Some(ProcHandle::Group(g)) => Some(*g),
            _ => None,
        }
    }

    /// SIGKILL every process of the pod, execs included; or SIGTERM the containers'
    /// own processes only, each where it handles TERM ([`ProcHandle::signal`]). The
    /// runtime's StopContainer signals a container's init process, not its children nor
    /// what was exec'd beside it (CRI `StopContainer`; runc `kill` without `--all`);
    /// those die with the container ([`process::wait_init`],
    /// [`PodRuntime::container_exited`]).
    pub fn signal_all(&self, kill: bool) {
        let procs: Vec<ProcHandle> = lock(&self.procs)
            .values()
            .filter(|p| kill || !p.exec)
            .map(|p| p.handle.clone())
            .collect();
        for p in procs {
            p.signal(kill);
        }
    }

    /// A container's own process ended: what was exec'd in it is SIGKILLed, as the
    /// kernel kills a PID namespace's processes when its init exits
    /// (pid_namespaces(7)), so those commands end with 137.
    pub fn container_exited(&self, container: &str) {
        lock(&self.exited).insert(container.to_owned());
        let execs: Vec<ProcHandle> = lock(&self.procs)
            .values()
            .filter(|p| p.exec && p.container == container)
            .map(|p| p.handle.clone())
            .collect();
        for p in execs {
            p.signal(true);
        }
    }

    /// Whether `container`'s own process has ended (the runtime's view, not the API's).
    pub fn has_exited(&self, container: &str) -> bool {
        lock(&self.exited).contains(container)
    }

    /// SIGKILL every process of `container`, its own and those exec'd in it, and
    /// nothing of the pod's other containers: what the kernel does to a cgroup with
    /// `memory.oom.group` set when it runs out of memory.
    pub fn kill_container(&self, container: &str) {
        let procs: Vec<ProcHandle> = lock(&self.procs)
            .values()
            .filter(|p| p.container == container)
            .map(|p| p.handle.clone())
            .collect();
        for p in procs {
            p.signal(true);
        }
    }

    /// The OOM killer takes the processes exec'd in `container` and nothing else, as
    /// with cgroup v1 or `singleProcessOOMKill: true` (1.32+): SIGKILL, no status
    /// change. The container's `memory.events` counter (a file `memory.events` in its
    /// working directory here, `oom_kill N`, written on the host into the volume
    /// mounted there) goes up by one.
    pub fn oom_kill_execs(&self, container: &str) -> std::io::Result<()> {
        let execs: Vec<ProcHandle> = lock(&self.procs)
            .values()
            .filter(|p| p.exec && p.container == container)
            .map(|p| p.handle.clone())
            .collect();
        if let Some(env) = lock(&self.containers).get(container) {
            let file = env.host_path(&env.cwd).join("memory.events");
            let before = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("oom_kill ").map(|n| n.trim().parse::<u64>()))
                })
                .and_then(Result::ok)
                .unwrap_or(0);
            std::fs::write(
                &file,
                format!(
                    "low 0\nhigh 0\nmax 1\noom 1\noom_kill {}\noom_group_kill 0\n",
                    before + 1
                ),
            )?;
        }
        for p in execs {
            p.signal(true);
        }
        Ok(())
    }

    /// Ask the kubelet to stop the pod. A later, stronger request replaces a
    /// weaker one (any deletion beats eviction; a shorter grace beats a longer).
    pub fn request_kill(&self, k: Kill) {
        self.kill_tx.send_if_modified(|cur| {
            let replace = match (&*cur, &k) {
                (None, _) => true,
                (Some(Kill::Shutdown), _) => false,
                (_, Kill::Shutdown) => true,
                (Some(Kill::Delete { grace: a }), Kill::Delete { grace: b }) => b < a,
                (Some(Kill::Delete { .. }), _) => false,
                (Some(_), Kill::Delete { .. }) => true,
                (Some(_), _) => false,
            };
            if replace {
                *cur = Some(k.clone());
            }
            replace
        });
    }
}

/// Everything the simulator shares between tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: SimConfig,
    pub work_root: PathBuf,
    pub pvc_root: PathBuf,
    pub _tmp: Option<tempfile::TempDir>,
    pub store: Mutex<Store>,
    /// Latest resourceVersion, for waking watches.
    pub rv_tx: watch::Sender<u64>,
    pub flags: Mutex<Flags>,
    /// Bumped whenever flags change, to wake the kubelet.
    pub flags_tx: watch::Sender<u64>,
    pub runtimes: Mutex<HashMap<String, Arc<PodRuntime>>>,
    /// Injected faults and the request log.
    pub controls: Controls<RequestRecord>,
    /// RBAC denials and admission settings.
    pub policy: Mutex<crate::admission::Policy>,
    /// Removed pods (namespace, uid) for the garbage collector task, when it runs late
    /// (`SimConfig::gc_delay`).
    pub gc_tx: tokio::sync::mpsc::UnboundedSender<(String, String)>,
    pub port: u16,
    /// Cancelled when the current listener generation ends (restart/shutdown).
    pub generation: Mutex<CancellationToken>,
    pub shutdown: CancellationToken,
    /// Payload bytes that crossed the API server in exec sessions.
    pub exec_bytes: Arc<ExecByteCounts>,
}

/// Exec payload counters ([`crate::Simulator::exec_bytes`]).
#[derive(Debug, Default)]
pub(crate) struct ExecByteCounts {
    pub stdin: std::sync::atomic::AtomicU64,
    pub output: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Run `f` on the store and wake watches.
    pub fn mutate<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let (r, rv, collect) = {
            let mut s = lock(&self.store);
            let r = f(&mut s);
            let collect = s
                .deferred_gc
                .as_mut()
                .map(std::mem::take)
                .unwrap_or_default();
            (r, s.rv, collect)
        };
        self.rv_tx.send_replace(rv);
        // The garbage collector is a controller of its own: it deletes a removed pod's
        // dependents some time later (pkg/controller/garbagecollector, driven by its
        // informers and work queue), not in the request that removed the pod.
        for removed in collect {
            let _ = self.gc_tx.send(removed);
        }
        r
    }

    pub fn get_pod(&self, ns: &str, name: &str) -> Option<Value> {
        lock(&self.store).get(ns, name).cloned()
    }

    /// The name of node `i` (`SimConfig::nodes`).
    pub fn node_name(&self, i: usize) -> String {
        if self.config.nodes <= 1 {
            crate::kubelet::NODE_NAME.to_owned()
        } else {
            format!("{}-{i}", crate::kubelet::NODE_NAME)
        }
    }

    /// Take a slot on the least loaded node with room: its index, or `None` when every
    /// node is full.
    pub fn bind_node(&self) -> Option<usize> {
        let nodes = self.config.nodes.max(1);
        let mut f = lock(&self.flags);
        f.node_load.resize(nodes, 0);
        let (i, load) = f
            .node_load
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|&(i, load)| (load, i))?;
        if self.config.max_pods_per_node.is_some_and(|max| load >= max) {
            return None;
        }
        f.node_load[i] += 1;
        Some(i)
    }

    /// Give back the slot `rt` holds, if any, and wake pods waiting for one.
    pub fn release_node(&self, rt: &PodRuntime) {
        if let Some(i) = lock(&rt.node).take() {
            self.update_flags(|f| {
                if let Some(n) = f.node_load.get_mut(i) {
                    *n = n.saturating_sub(1);
                }
            });
        }
    }

    pub fn update_flags(&self, f: impl FnOnce(&mut Flags)) {
        f(&mut lock(&self.flags));
        self.flags_tx.send_modify(|n| *n += 1);
    }

    pub fn runtime(&self, uid: &str) -> Option<Arc<PodRuntime>> {
        lock(&self.runtimes).get(uid).cloned()
    }

    /// The runtime of the pod currently stored under ns/name.
    pub fn runtime_of(&self, ns: &str, name: &str) -> Option<Arc<PodRuntime>> {
        let pod = self.get_pod(ns, name)?;
        let uid = pod.pointer("/metadata/uid")?.as_str()?;
        self.runtime(uid)
    }

    pub fn generation(&self) -> CancellationToken {
        lock(&self.generation).clone()
    }

    /// Wait until the node is unreachable.
    pub async fn wait_node_down(&self) {
        let mut rx = self.flags_tx.subscribe();
        loop {
            if lock(&self.flags).node_down {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Wait until the kubelet is not frozen.
    pub async fn wait_unfrozen(&self) {
        let mut rx = self.flags_tx.subscribe();
        loop {
            if !lock(&self.flags).frozen {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}
