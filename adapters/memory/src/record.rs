//! Recording the emulated `sh` runs, so a test can replay each under a real shell and
//! require the same result (`tests/sh_differential.rs`). Without this nothing would
//! notice the emulator drifting from `sh`.

use std::sync::{Arc, Mutex};

use jetbridge_core::ports::{CaptureOutput, OutputSink, OutputStream};

use crate::fs::{MemFs, Node};

/// One file-tree entry of a pod, as the emulator saw it. Paths are absolute.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum FsEntry {
    /// A directory and its permission bits.
    Dir {
        /// Absolute path in the pod.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Absolute path in the pod.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Contents.
        data: Vec<u8>,
    },
    /// A symbolic link, never followed.
    Symlink {
        /// Absolute path in the pod.
        path: String,
        /// The link's target, as written.
        target: String,
    },
}

impl FsEntry {
    /// The entry's absolute path.
    pub fn path(&self) -> &str {
        match self {
            FsEntry::Dir { path, .. }
            | FsEntry::File { path, .. }
            | FsEntry::Symlink { path, .. } => path,
        }
    }
}

/// One `sh` (or `bash`) exec the emulator ran to its end.
#[derive(Debug, Clone)]
pub struct ShellRun {
    /// The exec's argv (`sh -c SCRIPT ...`).
    pub argv: Vec<String>,
    /// The full environment the emulator gave it.
    pub env: std::collections::BTreeMap<String, String>,
    /// The working directory.
    pub cwd: String,
    /// Everything on standard input.
    pub stdin: Vec<u8>,
    /// The pod's tree before the run.
    pub before: Vec<FsEntry>,
    /// The pod's tree after it.
    pub after: Vec<FsEntry>,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// Exit status.
    pub status: i32,
}

/// The runs recorded on one backend; see [`crate::MemoryBackend::record_shell_runs`].
#[derive(Debug, Default)]
pub struct ShellLog {
    runs: Mutex<Vec<ShellRun>>,
    /// Runs left out because they called a registered program or an image's resource
    /// program, which a real shell does not have.
    left_out: Mutex<u64>,
}

impl ShellLog {
    /// The runs recorded so far, taken out of the log.
    pub fn take(&self) -> Vec<ShellRun> {
        std::mem::take(&mut *self.runs.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many runs were left out for calling programs only the fakes have.
    pub fn left_out(&self) -> u64 {
        *self.left_out.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn push(&self, run: ShellRun) {
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(run);
    }

    pub(crate) fn leave_out(&self) {
        *self.left_out.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }
}

/// The whole tree as entries, sorted by path.
pub(crate) fn snapshot(fs: &MemFs) -> Vec<FsEntry> {
    let mut out: Vec<FsEntry> = fs
        .subtree("/")
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, node)| {
            let path = format!("/{k}");
            match node {
                Node::Dir { mode } => FsEntry::Dir { path, mode },
                Node::File { mode, data } => FsEntry::File {
                    path,
                    mode,
                    data: data.to_vec(),
                },
                Node::Symlink { target } => FsEntry::Symlink { path, target },
            }
        })
        .collect();
    out.sort();
    out
}

/// Passes output on and keeps a copy of each stream.
pub(crate) struct TeeSink {
    pub(crate) inner: Arc<dyn OutputSink>,
    pub(crate) copy: CaptureOutput,
}

impl TeeSink {
    pub(crate) fn new(inner: Arc<dyn OutputSink>) -> Self {
        TeeSink {
            inner,
            copy: CaptureOutput::new(),
        }
    }
}

impl OutputSink for TeeSink {
    fn write(&self, stream: OutputStream, data: &[u8]) {
        self.copy.write(stream, data);
        self.inner.write(stream, data);
    }
}
