//! Sandbox layout on disk and the persisted pod record (`pod.json`).
//!
//! ```text
//! <root>/pods/<name>/
//!     pod.json     metadata: uid, labels, created_at, spec without env values (those
//!                  stay in the memory of the process that made the pod: they may be secrets)
//!     ready        present once every mount is in place (absent: Pending)
//!     deleting     present once deletion has started
//!     procs/<pgid> one record per process group started by exec
//!     work/        the working directory; mounts live here
//!     home/        HOME of every exec
//!     tmp/         TMPDIR of every exec
//! <root>/staging/  sandboxes being claimed (renamed into pods/ atomically)
//! <root>/trash/    sandboxes being removed (renamed out of pods/ atomically)
//! ```
//!
//! The disk is the source of truth, so a new process over the same root sees every pod
//! a previous one left behind.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jetbridge_core::digest::Digest;

use crate::error::{io_error, is_gone};
use jetbridge_core::ports::{
    Mount, MountInfo, MountSource, PendingReason, PodSpec, PodState, PodStatus,
};
use jetbridge_core::{Error, Result};
use serde::{Deserialize, Serialize};

pub(crate) const POD_FILE: &str = "pod.json";
pub(crate) const READY_FILE: &str = "ready";
pub(crate) const DELETING_FILE: &str = "deleting";
pub(crate) const PROCS_DIR: &str = "procs";
pub(crate) const WORK_DIR: &str = "work";
pub(crate) const HOME_DIR: &str = "home";
pub(crate) const TMP_DIR: &str = "tmp";

/// Paths of one pod's sandbox.
#[derive(Debug, Clone)]
pub(crate) struct Sandbox {
    pub(crate) dir: PathBuf,
}

impl Sandbox {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Sandbox { dir }
    }
    pub(crate) fn pod_file(&self) -> PathBuf {
        self.dir.join(POD_FILE)
    }
    pub(crate) fn ready_file(&self) -> PathBuf {
        self.dir.join(READY_FILE)
    }
    pub(crate) fn deleting_file(&self) -> PathBuf {
        self.dir.join(DELETING_FILE)
    }
    pub(crate) fn procs(&self) -> PathBuf {
        self.dir.join(PROCS_DIR)
    }
    pub(crate) fn work(&self) -> PathBuf {
        self.dir.join(WORK_DIR)
    }
    pub(crate) fn home(&self) -> PathBuf {
        self.dir.join(HOME_DIR)
    }
    pub(crate) fn tmp(&self) -> PathBuf {
        self.dir.join(TMP_DIR)
    }

    /// Read the pod record; `Ok(None)` when the sandbox or its record is gone.
    pub(crate) fn read_record(&self) -> Result<Option<PodRecord>> {
        match std::fs::read(self.pod_file()) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(|r: PodRecord| Some(r.upgraded()))
                .map_err(|e| {
                    Error::corrupt(format!(
                        "pod record {} is not valid",
                        self.pod_file().display()
                    ))
                    .with_source(e)
                }),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(io_error(e, "reading pod record")),
        }
    }

    /// The status as the disk shows it now; `Ok(None)` when the pod does not exist.
    pub(crate) fn status(&self) -> Result<Option<(PodRecord, PodStatus)>> {
        let Some(rec) = self.read_record()? else {
            return Ok(None);
        };
        let ready = self.ready_file().exists();
        let deleting = self.deleting_file().exists();
        let status = rec.status(ready, deleting);
        Ok(Some((rec, status)))
    }
}

/// Validate a path relative to the working directory: not empty, not absolute, no
/// `..`. `.` components are dropped. Returns the normalised relative path.
pub(crate) fn relative_path(what: &str, p: &str) -> Result<PathBuf> {
    if p.contains('\0') {
        return Err(Error::invalid(format!("{what} {p:?} contains a NUL byte")));
    }
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(Error::invalid(format!(
                    "{what} {p:?} must not contain '..'"
                )));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(Error::invalid(format!(
                    "{what} {p:?} must be relative to the working directory"
                )));
            }
        }
    }
    Ok(out)
}

/// How a mount is kept in `pod.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum MountRecord {
    Empty {
        path: String,
    },
    CopyOf {
        path: String,
        host_path: String,
        /// The sealed digest the copy must match.
        digest: Digest,
        /// For messages: the artifact and the build.
        #[serde(default)]
        artifact: String,
        #[serde(default)]
        build: String,
    },
    WriteInto {
        path: String,
        host_path: String,
    },
    Cache {
        path: String,
        key: String,
    },
}

impl MountRecord {
    /// The record of a mount this backend supports; `Unsupported` for PVC mounts.
    pub(crate) fn from_mount(m: &Mount) -> Result<Self> {
        let host = |info: &MountInfo| match info {
            MountInfo::HostPath { path } => Ok(path.clone()),
            MountInfo::SharedVolume { .. } => Err(Error::unsupported(format!(
                "mount {:?}: the local backend cannot mount PersistentVolumeClaims",
                m.path
            ))),
        };
        let path = m.path.clone();
        Ok(match &m.source {
            MountSource::Empty => MountRecord::Empty { path },
            MountSource::CopyOf(c) => MountRecord::CopyOf {
                path,
                host_path: host(&c.mount)?,
                digest: c.digest.clone(),
                artifact: c.artifact.clone(),
                build: c.build.clone(),
            },
            MountSource::WriteInto(info) => MountRecord::WriteInto {
                path,
                host_path: host(info)?,
            },
            MountSource::Cache { key } => MountRecord::Cache {
                path,
                key: key.clone(),
            },
        })
    }

    pub(crate) fn path(&self) -> &str {
        match self {
            MountRecord::Empty { path }
            | MountRecord::CopyOf { path, .. }
            | MountRecord::WriteInto { path, .. }
            | MountRecord::Cache { path, .. } => path,
        }
    }

    /// Whether the mount is a symlink to a directory outside the sandbox.
    pub(crate) fn is_link(&self) -> bool {
        matches!(
            self,
            MountRecord::WriteInto { .. } | MountRecord::Cache { .. }
        )
    }
}

/// The persisted pod: enough for any process to report, exec into and delete it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PodRecord {
    pub(crate) version: u32,
    pub(crate) name: String,
    /// Distinguishes this pod from an earlier one of the same name.
    pub(crate) uid: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) created_at_unix_nanos: u128,
    pub(crate) image: String,
    pub(crate) mounts: Vec<MountRecord>,
    pub(crate) cpu_millis: Option<u64>,
    pub(crate) memory_bytes: Option<u64>,
    pub(crate) privileged: bool,
}

impl std::fmt::Debug for PodRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Env values may be secrets: names only.
        f.debug_struct("PodRecord")
            .field("name", &self.name)
            .field("uid", &self.uid)
            .field("labels", &self.labels)
            .field("mounts", &self.mounts)
            .finish_non_exhaustive()
    }
}

impl PodRecord {
    pub(crate) fn new(spec: &PodSpec, mounts: Vec<MountRecord>) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        PodRecord {
            version: 1,
            name: spec.name.clone(),
            uid: uuid::Uuid::new_v4().to_string(),
            labels: spec.labels.clone(),
            created_at_unix_nanos: now.as_nanos(),
            image: spec.image.clone(),
            mounts,
            cpu_millis: spec.resources.cpu_millis,
            memory_bytes: spec.resources.memory_bytes,
            privileged: spec.privileged,
        }
    }

    /// The record in today's terms. Pods made before core's managed-by key became
    /// `jetbridge.io/managed-by` carry the old key; they are still ours and must still
    /// be reaped.
    fn upgraded(mut self) -> Self {
        const OLD_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
        if let Some(v) = self.labels.remove(OLD_MANAGED_BY) {
            self.labels
                .entry(jetbridge_core::names::label::MANAGED_BY.to_owned())
                .or_insert(v);
        }
        self
    }

    pub(crate) fn handle(&self) -> Option<&str> {
        self.labels
            .get(jetbridge_core::names::label::HANDLE)
            .map(String::as_str)
    }

    pub(crate) fn created_at(&self) -> SystemTime {
        let secs = (self.created_at_unix_nanos / 1_000_000_000) as u64;
        let nanos = (self.created_at_unix_nanos % 1_000_000_000) as u32;
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    pub(crate) fn status(&self, ready: bool, deleting: bool) -> PodStatus {
        let (state, message) = if ready {
            (PodState::Running, None)
        } else {
            (
                PodState::Pending(PendingReason::ContainerCreating),
                Some("preparing the sandbox and its mounts".to_owned()),
            )
        };
        PodStatus {
            name: self.name.clone(),
            labels: self.labels.clone(),
            state,
            message,
            created_at: Some(self.created_at()),
            deleting,
        }
    }

    /// Write the record to `path` with mode 0600 (labels and paths are nobody else's
    /// business either).
    pub(crate) fn write_to(&self, path: &Path) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::other("encoding pod record").with_source(e))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io_error(e, "writing pod record"))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| io_error(e, "writing pod record"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetbridge_core::ErrorKind;
    use proptest::prelude::*;

    #[test]
    fn relative_paths_are_normalised_or_rejected() {
        assert_eq!(relative_path("p", "a/./b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(relative_path("p", ".").unwrap(), PathBuf::new());
        for bad in ["../x", "a/../../x", "/etc", "a/..", "a\0b"] {
            assert_eq!(
                relative_path("p", bad).unwrap_err().kind(),
                ErrorKind::Invalid,
                "{bad}"
            );
        }
    }

    proptest! {
        #[test]
        fn accepted_paths_stay_inside(p in "[a-z./]{0,20}") {
            if let Ok(rel) = relative_path("p", &p) {
                prop_assert!(rel.is_relative());
                prop_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
            }
        }
    }

    #[test]
    fn record_holds_no_env_values() {
        let mut spec = PodSpec::new("p", "host");
        spec.env.insert("TOKEN".into(), "s3cret".into());
        let rec = PodRecord::new(&spec, vec![]);
        assert!(!format!("{rec:?}").contains("s3cret"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pod.json");
        rec.write_to(&file).unwrap();
        let on_disk = std::fs::read_to_string(&file).unwrap();
        assert!(!on_disk.contains("s3cret"), "{on_disk}");
        assert!(!on_disk.contains("TOKEN"), "{on_disk}");
    }

    #[test]
    fn record_round_trips_and_keeps_created_at() {
        let mut spec = PodSpec::new("p", "host");
        spec.labels.insert("a".into(), "b".into());
        let rec = PodRecord::new(
            &spec,
            vec![MountRecord::Cache {
                path: "c".into(),
                key: "k".into(),
            }],
        );
        let json = serde_json::to_vec(&rec).unwrap();
        let back: PodRecord = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, rec);
        assert_eq!(back.created_at(), rec.created_at());
    }

    #[test]
    fn a_record_with_the_old_managed_by_key_is_still_ours() {
        let mut spec = PodSpec::new("p", "host");
        spec.labels
            .insert("app.kubernetes.io/managed-by".into(), "jetbridge".into());
        let rec = PodRecord::new(&spec, Vec::new());
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::new(dir.path().to_path_buf());
        std::fs::create_dir_all(&sandbox.dir).unwrap();
        rec.write_to(&sandbox.pod_file()).unwrap();
        let back = sandbox.read_record().unwrap().unwrap();
        assert_eq!(
            back.labels.get(jetbridge_core::names::label::MANAGED_BY),
            Some(&"jetbridge".to_owned())
        );
        assert!(!back.labels.contains_key("app.kubernetes.io/managed-by"));
    }
}
