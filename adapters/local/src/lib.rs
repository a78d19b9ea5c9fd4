//! Pods and Exec as local processes: the embedded default backend.
//!
//! A *local pod* is a sandbox directory under `<root>/pods/<name>` with a working
//! directory `work/`; it has no main process and is `Running` as soon as its mounts are
//! in place. [`Exec`] spawns real processes on the host, each in its own process group,
//! with `work/<dir>` as working directory and a minimal environment (see
//! [`LocalBackend`]). Deleting a pod kills every process group started in it and
//! removes the sandbox.
//!
//! Everything is recorded on disk (`pod.json`, process group records), so a new
//! [`LocalBackend`] over the same root, e.g. in a restarted worker, can list, exec into
//! and delete the pods a previous one left behind.
//!
//! Linux only: process groups are inspected through `/proc`. This is not a security
//! boundary: commands run as the worker's user and can reach the whole host.
//!
//! ```no_run
//! # async fn demo() -> jetbridge_core::Result<()> {
//! use std::sync::Arc;
//! use jetbridge_core::ports::{CaptureOutput, DeleteOpts, Exec, ExecRequest, PodSpec, Pods};
//! use jetbridge_local::{LocalBackend, LocalConfig};
//!
//! let backend = LocalBackend::new(LocalConfig::new("/var/lib/jetbridge"))?;
//! backend.create(&PodSpec::new("demo-pod", "host")).await?;
//! let out = Arc::new(CaptureOutput::new());
//! let code = backend
//!     .exec(ExecRequest::new("demo-pod", vec!["echo".into(), "hi".into()]), out.clone())
//!     .await?;
//! assert_eq!((code, out.stdout()), (0, b"hi\n".to_vec()));
//! backend.delete("demo-pod", &DeleteOpts::grace(std::time::Duration::from_secs(5))).await?;
//! # Ok(()) }
//! ```

mod config;
mod error;
mod exec;
mod pods;
mod procs;
mod remove;
mod sandbox;

pub use config::{DEFAULT_PATH, LocalConfig};

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jetbridge_core::names::is_dns_label;
use jetbridge_core::{Error, Result};
use tokio::sync::watch;

use crate::error::io_error;
use crate::sandbox::Sandbox;

/// Pods as sandbox directories and exec as local processes; implements both
/// [`Pods`](jetbridge_core::ports::Pods) and [`Exec`](jetbridge_core::ports::Exec) over
/// shared state. Cheap to clone.
///
/// # Environment of a command
///
/// Built fresh for every exec, later entries overriding earlier ones:
/// 1. `PATH` ([`LocalConfig::path`], else the worker's), `HOME=<sandbox>/home`,
///    `TMPDIR=<sandbox>/tmp`, and the worker variables named in
///    [`LocalConfig::pass_env`]; nothing else of the worker's environment;
/// 2. the pod's [`PodSpec::env`](jetbridge_core::ports::PodSpec::env);
/// 3. the exec's [`ExecRequest::env`](jetbridge_core::ports::ExecRequest::env).
#[derive(Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("root", &self.inner.root)
            .field("cache_root", &self.inner.cache_root)
            .finish_non_exhaustive()
    }
}

struct Inner {
    root: PathBuf,
    cache_root: PathBuf,
    pods_dir: PathBuf,
    staging_dir: PathBuf,
    trash_dir: PathBuf,
    /// The worker variables every command gets (`PATH` and [`LocalConfig::pass_env`]).
    host_env: Vec<(OsString, OsString)>,
    /// Per-name state of this process; the disk remains the source of truth.
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    /// Environment of the pods this process made, by name, with the pod's uid. Kept
    /// in memory only: values may be secrets (task params) and never go to disk.
    envs: Mutex<HashMap<String, PodEnv>>,
}

/// A pod's uid and its environment.
type PodEnv = (String, BTreeMap<String, String>);

/// What this process knows about one pod name.
struct Entry {
    /// Serialises create and delete of the name within this process.
    op: Arc<tokio::sync::Mutex<()>>,
    /// Bumped on every change made here; waiters re-read the disk when it moves.
    changes: watch::Sender<u64>,
    /// True while this process deletes the pod. Exec spawns under this lock, so a
    /// delete either sees the new process group or the exec sees the flag.
    deleting: Mutex<bool>,
}

impl Entry {
    fn new() -> Self {
        Entry {
            op: Arc::new(tokio::sync::Mutex::new(())),
            changes: watch::Sender::new(0),
            deleting: Mutex::new(false),
        }
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn is_deleting(&self) -> bool {
        self.deleting.lock().map(|d| *d).unwrap_or(true)
    }

    fn set_deleting(&self, v: bool) {
        if let Ok(mut d) = self.deleting.lock() {
            *d = v;
        }
    }
}

impl LocalBackend {
    /// A backend over `config.root`, creating the directories it needs. Leftovers of
    /// removals interrupted by a crash (`root/trash`) are removed now.
    pub fn new(config: LocalConfig) -> Result<Self> {
        let mk = |p: &Path| {
            std::fs::create_dir_all(p).map_err(|e| io_error(e, format!("creating {}", p.display())))
        };
        mk(&config.root)?;
        mk(&config.cache_root)?;
        let root = std::fs::canonicalize(&config.root)
            .map_err(|e| io_error(e, format!("resolving {}", config.root.display())))?;
        let cache_root = std::fs::canonicalize(&config.cache_root)
            .map_err(|e| io_error(e, format!("resolving {}", config.cache_root.display())))?;
        let pods_dir = root.join("pods");
        let staging_dir = root.join("staging");
        let trash_dir = root.join("trash");
        for d in [&pods_dir, &staging_dir, &trash_dir] {
            mk(d)?;
        }
        clear_dir(&trash_dir, Duration::ZERO);
        // A staging sandbox lives for milliseconds (mounts are set up after the claim);
        // an old one was left by a crash.
        clear_dir(&staging_dir, STALE_STAGING);

        let path = match config.path {
            Some(p) => OsString::from(p),
            None => std::env::var_os("PATH")
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| OsString::from(DEFAULT_PATH)),
        };
        let mut host_env = vec![(OsString::from("PATH"), path)];
        for name in &config.pass_env {
            if name.is_empty() || name.contains('=') {
                return Err(Error::invalid(format!(
                    "pass_env entry {name:?} is not a variable name"
                )));
            }
            if let Some(v) = std::env::var_os(name) {
                host_env.push((OsString::from(name), v));
            }
        }

        Ok(LocalBackend {
            inner: Arc::new(Inner {
                root,
                cache_root,
                pods_dir,
                staging_dir,
                trash_dir,
                host_env,
                entries: Mutex::new(HashMap::new()),
                envs: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The (canonical) root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The sandbox directory of pod `name` (which may not exist), or `None` when `name`
    /// is not a valid pod name.
    pub fn sandbox_dir(&self, name: &str) -> Option<PathBuf> {
        self.sandbox(name).map(|s| s.dir)
    }

    /// The working directory of pod `name` (which may not exist), or `None` when `name`
    /// is not a valid pod name.
    pub fn work_dir(&self, name: &str) -> Option<PathBuf> {
        self.sandbox(name).map(|s| s.work())
    }

    fn sandbox(&self, name: &str) -> Option<Sandbox> {
        // Only DNS labels: a name can never escape `pods/`.
        is_dns_label(name).then(|| Sandbox::new(self.inner.pods_dir.join(name)))
    }

    /// The entry of `name`, pruned from the map when the last user lets go of it.
    fn entry(&self, name: &str) -> EntryRef {
        EntryRef {
            entry: self.raw_entry(name),
            backend: self.clone(),
            name: name.to_owned(),
        }
    }

    fn raw_entry(&self, name: &str) -> Arc<Entry> {
        let mut map = self
            .inner
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(name.to_owned())
            .or_insert_with(|| Arc::new(Entry::new()))
            .clone()
    }

    /// Drop the entry of `name` if nobody but the map and `held` uses it.
    fn prune_entry(&self, name: &str, held: &Arc<Entry>) {
        let mut map = self
            .inner
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(e) = map.get(name)
            && Arc::ptr_eq(e, held)
            && Arc::strong_count(held) <= 2
        {
            map.remove(name);
        }
    }
}

/// Age after which a staging sandbox is a crash leftover.
const STALE_STAGING: Duration = Duration::from_secs(600);

/// A handle on the [`Entry`] of a name; the entry leaves the map once unused (the pod
/// state lives on disk, so a later user simply makes a new one).
struct EntryRef {
    entry: Arc<Entry>,
    backend: LocalBackend,
    name: String,
}

impl std::ops::Deref for EntryRef {
    type Target = Entry;
    fn deref(&self) -> &Entry {
        &self.entry
    }
}

impl Drop for EntryRef {
    fn drop(&mut self) {
        self.backend.prune_entry(&self.name, &self.entry);
    }
}

/// Remove everything inside `dir` last modified at least `min_age` ago (best effort).
fn clear_dir(dir: &Path, min_age: Duration) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let old_enough = min_age.is_zero()
                || e.metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age >= min_age);
            if !old_enough {
                continue;
            }
            if let Err(err) = remove::remove_tree(&e.path()) {
                tracing::warn!(path = %e.path().display(), error = %err, "could not remove leftover sandbox");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetbridge_core::ports::{
        DeleteOpts, DiscardOutput, Exec, ExecRequest, PodSpec, Pods, WaitFor, WaitOpts,
    };

    fn entries(b: &LocalBackend) -> usize {
        b.inner.entries.lock().unwrap().len()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn per_name_state_does_not_outlive_its_users() {
        let t = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(LocalConfig::new(t.path())).unwrap();
        b.create(&PodSpec::new("p1", "host")).await.unwrap();
        assert_eq!(entries(&b), 0);
        let code = b
            .exec(
                ExecRequest::new("p1", vec!["true".into()]),
                Arc::new(DiscardOutput),
            )
            .await
            .unwrap();
        assert_eq!(code, 0);
        b.wait(
            "p1",
            &WaitOpts::new(WaitFor::Running, Duration::from_secs(1)),
        )
        .await
        .unwrap();
        assert_eq!(entries(&b), 0);
        // Held while in use.
        let held = b.entry("p1");
        assert_eq!(entries(&b), 1);
        drop(held);
        b.delete("p1", &DeleteOpts::grace(Duration::from_secs(1)))
            .await
            .unwrap();
        assert_eq!(entries(&b), 0);
    }

    #[test]
    fn pass_env_names_are_validated() {
        let t = tempfile::tempdir().unwrap();
        let mut cfg = LocalConfig::new(t.path());
        cfg.pass_env = vec!["A=B".into()];
        assert_eq!(
            LocalBackend::new(cfg).unwrap_err().kind(),
            jetbridge_core::ErrorKind::Invalid
        );
    }

    #[test]
    fn leftovers_in_trash_are_removed_at_start() {
        let t = tempfile::tempdir().unwrap();
        let trash = t.path().join("trash/old-pod-123");
        std::fs::create_dir_all(trash.join("work")).unwrap();
        let fresh_staging = t.path().join("staging/new-pod-1");
        std::fs::create_dir_all(&fresh_staging).unwrap();
        LocalBackend::new(LocalConfig::new(t.path())).unwrap();
        assert!(!trash.exists());
        // Young staging dirs may belong to a create in progress elsewhere.
        assert!(fresh_staging.exists());
    }
}
