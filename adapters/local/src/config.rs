//! Options of the local backend.

use std::path::PathBuf;

/// `PATH` for commands when the worker itself has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Configuration of a [`LocalBackend`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// Sandboxes live under `root/pods/<pod-name>`; `root/staging` and `root/trash` hold
    /// sandboxes being created and removed. Created if missing.
    pub root: PathBuf,
    /// Caches ([`MountSource::Cache`](jetbridge_core::ports::MountSource::Cache)) live
    /// here, one directory per key; they outlive pods. Created if missing.
    pub cache_root: PathBuf,
    /// `PATH` of every command (before the pod's and the command's own env); `None`:
    /// the worker's `PATH`, or [`DEFAULT_PATH`] if it has none.
    pub path: Option<String>,
    /// Names of further worker environment variables passed to every command (e.g.
    /// `LANG`, `SSL_CERT_FILE`). Empty by default: nothing else of the worker's
    /// environment (which may hold secrets) reaches a command.
    pub pass_env: Vec<String>,
}

impl LocalConfig {
    /// Sandboxes under `root/pods`, caches under `root/cache`, the worker's `PATH`,
    /// no other variables passed.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        LocalConfig {
            cache_root: root.join("cache"),
            root,
            path: None,
            pass_env: Vec::new(),
        }
    }
}
