//! [`Pods`] for [`LocalBackend`]: sandboxes on disk.

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jetbridge_core::copy::{CopyOptions, copy_verified};
use jetbridge_core::names::{dns_fragment, is_dns_label};
use jetbridge_core::ports::{
    CopySource, DeleteOpts, LabelSelector, MountInfo, PodCapabilities, PodFailure, PodSpec,
    PodState, PodStatus, Pods, StopOpts, WaitOpts,
};
use jetbridge_core::{Error, ErrorKind, Result};

use crate::error::{io_error, is_gone};
use crate::sandbox::{MountRecord, PodRecord, Sandbox, relative_path};
use crate::{EntryRef, LocalBackend, procs, remove};

/// How often a waiter re-reads the disk to notice changes made by another process
/// (changes made by this process wake it at once).
const DISK_RECHECK: Duration = Duration::from_secs(1);

impl LocalBackend {
    /// Lock the create/delete lock of `name`, making sure the entry locked is the
    /// current one (a delete may have pruned it while we waited).
    async fn lock_entry(&self, name: &str) -> (EntryRef, tokio::sync::OwnedMutexGuard<()>) {
        loop {
            let entry = self.entry(name);
            let guard = entry.op.clone().lock_owned().await;
            if Arc::ptr_eq(&entry.entry, &self.raw_entry(name)) {
                return (entry, guard);
            }
        }
    }

    fn not_found(name: &str) -> Error {
        Error::not_found(format!("pod {name:?} does not exist"))
    }

    /// The directory caching `key`: a readable fragment plus a hash of the whole key,
    /// so distinct keys never share a directory and any key is a safe path segment.
    pub(crate) fn cache_dir(&self, key: &str) -> PathBuf {
        let digest = hex::encode(jetbridge_core::digest::sha256(key.as_bytes()));
        let mut readable = dns_fragment(key);
        readable.truncate(40);
        let name = if readable.is_empty() {
            digest[..32].to_owned()
        } else {
            format!("{readable}-{}", &digest[..32])
        };
        self.inner.cache_root.join(name)
    }

    /// Adopt the existing pod when its handle label matches, else refuse. The spec's
    /// environment becomes the pod's in this process (it is never on disk).
    fn adopt(&self, spec: &PodSpec, rec: &PodRecord, status: PodStatus) -> Result<PodStatus> {
        if rec.handle() != spec.handle() {
            return Err(Error::already_exists(format!(
                "pod {:?} exists with another handle",
                spec.name
            )));
        }
        if status.deleting {
            return Err(Error::conflict(format!(
                "pod {:?} is being deleted; create it again once it is gone",
                spec.name
            ))
            .with_retryable(true));
        }
        self.remember_env(&spec.name, &rec.uid, &spec.env);
        Ok(status)
    }

    /// Keep the environment of pod `name` (uid `uid`) for its execs.
    fn remember_env(&self, name: &str, uid: &str, env: &BTreeMap<String, String>) {
        if let Ok(mut envs) = self.inner.envs.lock() {
            envs.insert(name.to_owned(), (uid.to_owned(), env.clone()));
        }
    }

    /// Put every mount in place under `work` (blocking).
    fn setup_mounts(&self, work: &Path, mounts: &[MountRecord]) -> Result<()> {
        for m in mounts {
            // Validated at create: relative, no `..`, not empty.
            let rel = relative_path("mount path", m.path())?;
            let target = work.join(&rel);
            ensure_parents(work, &rel)?;
            // A nested mount replaces what a copied parent had at its path.
            remove::remove_tree(&target)
                .map_err(|e| io_error(e, format!("clearing mount path {:?}", m.path())))?;
            match m {
                MountRecord::Empty { .. } => std::fs::create_dir(&target)
                    .map_err(|e| io_error(e, format!("creating mount {:?}", m.path())))?,
                MountRecord::CopyOf {
                    host_path,
                    digest,
                    artifact,
                    build,
                    ..
                } => {
                    // Read once, written, hashed; renamed into place only if it matches.
                    let opts = CopyOptions::new().with_writable_dirs(true);
                    copy_verified(Path::new(host_path), &target, digest, opts).map_err(|e| {
                        if e.kind() == ErrorKind::Corrupt {
                            CopySource::new(
                                MountInfo::HostPath {
                                    path: host_path.clone(),
                                },
                                digest.clone(),
                            )
                            .with_artifact(artifact, build)
                            .corrupt(e.message())
                        } else {
                            e.context(format!("copying {host_path:?} into mount {:?}", m.path()))
                        }
                    })?;
                }
                MountRecord::WriteInto { host_path, .. } => {
                    let meta = std::fs::metadata(host_path)
                        .map_err(|e| io_error(e, format!("volume {host_path:?}")))?;
                    if !meta.is_dir() {
                        return Err(Error::invalid(format!(
                            "volume {host_path:?} is not a directory"
                        )));
                    }
                    symlink(host_path, &target)
                        .map_err(|e| io_error(e, format!("linking mount {:?}", m.path())))?
                }
                MountRecord::Cache { key, .. } => {
                    let dir = self.cache_dir(key);
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| io_error(e, format!("creating cache {}", dir.display())))?;
                    symlink(&dir, &target)
                        .map_err(|e| io_error(e, format!("linking cache {:?}", m.path())))?
                }
            }
        }
        Ok(())
    }

    /// Move the sandbox out of `pods/` (it disappears at once) and remove it.
    async fn remove_sandbox(&self, sandbox: &Sandbox, name: &str) -> Result<()> {
        let trash = self
            .inner
            .trash_dir
            .join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
        let doomed = match std::fs::rename(&sandbox.dir, &trash) {
            Ok(()) => trash,
            Err(e) if is_gone(&e) => return Ok(()),
            Err(e) => {
                tracing::warn!(pod = name, error = %e, "could not move sandbox to trash; removing in place");
                sandbox.dir.clone()
            }
        };
        tokio::task::spawn_blocking(move || remove::remove_tree(&doomed))
            .await
            .map_err(|e| Error::other(format!("removing sandbox of {name:?}: {e}")))?
            .map_err(|e| io_error(e, format!("removing sandbox of {name:?}")))
    }
}

/// Create the directories leading to `work/rel` (not `rel` itself), refusing to pass
/// through a symlink or a file: a copied volume must not redirect a mount outside.
fn ensure_parents(work: &Path, rel: &Path) -> Result<()> {
    let mut cur = work.to_path_buf();
    let comps: Vec<Component<'_>> = rel.components().collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::invalid(format!(
                    "mount path {} passes through a symlink or a file",
                    rel.display()
                )));
            }
            Err(e) if is_gone(&e) => std::fs::create_dir(&cur)
                .map_err(|e| io_error(e, format!("creating {}", cur.display())))?,
            Err(e) => return Err(io_error(e, format!("inspecting {}", cur.display()))),
        }
    }
    Ok(())
}

/// Validate mounts and return them in the order to set them up (parents first).
fn plan_mounts(spec: &PodSpec) -> Result<Vec<MountRecord>> {
    let mut planned: Vec<(PathBuf, MountRecord)> = Vec::with_capacity(spec.mounts.len());
    for m in &spec.mounts {
        let rec = MountRecord::from_mount(m)?;
        let rel = relative_path("mount path", &m.path)?;
        if rel.as_os_str().is_empty() {
            return Err(Error::invalid(format!(
                "mount path {:?} names the working directory itself",
                m.path
            )));
        }
        match &rec {
            MountRecord::CopyOf { host_path, .. } | MountRecord::WriteInto { host_path, .. }
                if !Path::new(host_path).is_absolute() =>
            {
                return Err(Error::invalid(format!(
                    "host path {host_path:?} of mount {:?} is not absolute",
                    m.path
                )));
            }
            _ => {}
        }
        planned.push((rel, rec));
    }
    planned.sort_by_key(|(rel, _)| rel.components().count());
    for (i, (rel, _)) in planned.iter().enumerate() {
        for (other, orec) in &planned[..i] {
            if other == rel {
                return Err(Error::invalid(format!("two mounts at {}", rel.display())));
            }
            // Inside a linked directory a mount would write into the volume or cache.
            if rel.starts_with(other) && orec.is_link() {
                return Err(Error::invalid(format!(
                    "mount {} lies inside mount {}, which is a volume or a cache",
                    rel.display(),
                    other.display()
                )));
            }
        }
    }
    Ok(planned.into_iter().map(|(_, r)| r).collect())
}

fn deleted_status(mut last: PodStatus) -> PodStatus {
    last.state = PodState::Failed(PodFailure::Deleted);
    last.message = Some("the pod was deleted".to_owned());
    last.deleting = true;
    last
}

#[async_trait]
impl Pods for LocalBackend {
    fn capabilities(&self) -> PodCapabilities {
        PodCapabilities::none().with_host_path_mounts(true)
    }

    async fn create(&self, spec: &PodSpec) -> Result<PodStatus> {
        let name = spec.name.as_str();
        let Some(sandbox) = self.sandbox(name) else {
            return Err(Error::invalid(format!(
                "pod name {name:?} is not a DNS-1123 label"
            )));
        };
        if spec.transfer {
            return Err(Error::unsupported(
                "the local backend has no helper container",
            ));
        }
        // Its commands are processes of this host, with its network: a step that must
        // have none is refused, never run with it (runners refuse the job up front
        // from the capability; this is the last line).
        if spec.hermetic {
            return Err(Error::unsupported(format!(
                "pod {name} must run without network (`hermetic: true`), and the local backend \
                 runs steps as processes of this host, which it cannot cut off the network: \
                 run it on the Kubernetes backend, or set `hermetic: false`"
            )));
        }
        let mounts = plan_mounts(spec)?;
        if spec.privileged {
            tracing::warn!(
                pod = name,
                "privileged is ignored: local commands run as the worker's user"
            );
        }

        let (entry, _op) = self.lock_entry(name).await;
        if let Some((rec, status)) = sandbox.status()? {
            return self.adopt(spec, &rec, status);
        }

        // Claim the name atomically: build the skeleton in staging, rename it into place.
        let record = PodRecord::new(spec, mounts);
        let staging = Sandbox::new(
            self.inner
                .staging_dir
                .join(format!("{name}-{}", uuid::Uuid::new_v4().simple())),
        );
        let build = || -> Result<()> {
            for d in [
                &staging.dir,
                &staging.work(),
                &staging.home(),
                &staging.tmp(),
                &staging.procs(),
            ] {
                std::fs::create_dir(d)
                    .map_err(|e| io_error(e, format!("creating {}", d.display())))?;
            }
            record.write_to(&staging.pod_file())
        };
        if let Err(e) = build() {
            let _ = remove::remove_tree(&staging.dir);
            return Err(e);
        }
        if let Err(e) = std::fs::rename(&staging.dir, &sandbox.dir) {
            let _ = remove::remove_tree(&staging.dir);
            // Another process claimed the name first.
            return match sandbox.status()? {
                Some((rec, status)) => self.adopt(spec, &rec, status),
                None => Err(io_error(e, format!("claiming pod {name:?}"))),
            };
        }
        self.remember_env(name, &record.uid, &spec.env);
        entry.bump();

        let this = self.clone();
        let work = sandbox.work();
        let mounts = record.mounts.clone();
        let set_up = tokio::task::spawn_blocking(move || this.setup_mounts(&work, &mounts))
            .await
            .map_err(|e| Error::other(format!("setting up mounts of {name:?}: {e}")))
            .and_then(|r| r);
        let ready = set_up.and_then(|()| {
            std::fs::File::create(sandbox.ready_file())
                .map(drop)
                .map_err(|e| io_error(e, "marking the pod ready"))
        });
        if let Err(e) = ready {
            // Nothing ran in it yet: just remove it.
            if let Err(rm) = self.remove_sandbox(&sandbox, name).await {
                tracing::warn!(pod = name, error = %rm, "could not remove a failed sandbox");
            }
            entry.bump();
            return Err(e.context(format!("creating pod {name:?}")));
        }
        entry.bump();
        Ok(record.status(true, false))
    }

    async fn get(&self, name: &str) -> Result<PodStatus> {
        let sandbox = self.sandbox(name).ok_or_else(|| Self::not_found(name))?;
        sandbox
            .status()?
            .map(|(_, s)| s)
            .ok_or_else(|| Self::not_found(name))
    }

    async fn wait(&self, name: &str, opts: &WaitOpts) -> Result<PodStatus> {
        let (cond, timeout) = (opts.cond, opts.timeout);
        let sandbox = self.sandbox(name).ok_or_else(|| Self::not_found(name))?;
        let deadline = tokio::time::Instant::now() + timeout;
        let entry = self.entry(name);
        // Subscribe before reading, so no change made here can be missed.
        let mut changes = entry.changes.subscribe();
        let Some((rec, mut status)) = sandbox.status()? else {
            return Err(Self::not_found(name));
        };
        loop {
            if status.satisfies(cond) || status.hopeless(cond) {
                return Ok(status);
            }
            let timed_out = tokio::select! {
                _ = changes.changed() => false,
                _ = tokio::time::sleep(DISK_RECHECK) => false,
                _ = tokio::time::sleep_until(deadline) => true,
            };
            changes.borrow_and_update();
            status = match sandbox.status()? {
                // Same pod (a pod of the same name created later is another pod).
                Some((now, s)) if now.uid == rec.uid => s,
                _ => return Ok(deleted_status(status)),
            };
            if timed_out {
                return Ok(status);
            }
        }
    }

    async fn list(&self, selector: &LabelSelector) -> Result<Vec<PodStatus>> {
        let entries = match std::fs::read_dir(&self.inner.pods_dir) {
            Ok(e) => e,
            Err(e) => return Err(io_error(e, "listing pods")),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !is_dns_label(&name) {
                continue;
            }
            let sandbox = Sandbox::new(e.path());
            match sandbox.status() {
                Ok(Some((_, s))) => {
                    if selector.iter().all(|(k, v)| s.labels.get(k) == Some(v)) {
                        out.push(s);
                    }
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(pod = %name, error = %err, "skipping unreadable pod"),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn delete(&self, name: &str, opts: &DeleteOpts) -> Result<()> {
        let grace = opts.grace;
        // No pod can have an invalid name: it is gone already.
        let Some(sandbox) = self.sandbox(name) else {
            return Ok(());
        };
        let (entry, op) = self.lock_entry(name).await;
        match std::fs::symlink_metadata(&sandbox.dir) {
            Err(e) if is_gone(&e) => return Ok(()),
            _ => {}
        }
        // Execs of this process see the flag; other processes see the marker.
        entry.set_deleting(true);
        match std::fs::File::create(sandbox.deleting_file()) {
            Ok(_) => {}
            Err(e) if is_gone(&e) => {}
            Err(e) => tracing::warn!(pod = name, error = %e, "could not mark the pod deleting"),
        }
        entry.bump();

        let groups = procs::read_records(&sandbox.procs());
        let survivors = procs::terminate(&groups, grace).await;
        if !survivors.is_empty() {
            tracing::warn!(pod = name, groups = ?survivors, "process groups survived SIGKILL");
        }
        let removed = self.remove_sandbox(&sandbox, name).await;
        if let Ok(mut envs) = self.inner.envs.lock() {
            envs.remove(name);
        }
        entry.set_deleting(false);
        entry.bump();
        drop(op);
        removed
    }

    async fn stop(&self, name: &str, opts: &StopOpts) -> Result<bool> {
        let grace = opts.grace;
        // Every process of the pod goes; the sandbox stays for inspection.
        let Some(sandbox) = self.sandbox(name) else {
            return Ok(true);
        };
        let (_entry, op) = self.lock_entry(name).await;
        let groups = procs::read_records(&sandbox.procs());
        let survivors = procs::terminate(&groups, grace).await;
        drop(op);
        if survivors.is_empty() {
            Ok(true)
        } else {
            Err(Error::other(format!(
                "process groups {survivors:?} of pod {name} survived SIGKILL"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetbridge_core::ErrorKind;
    use jetbridge_core::ports::{Mount, MountInfo, MountSource};

    fn spec_with(mounts: Vec<(&str, MountSource)>) -> PodSpec {
        let mut s = PodSpec::new("p", "host");
        s.mounts = mounts
            .into_iter()
            .map(|(p, source)| Mount::new(p, source))
            .collect();
        s
    }

    fn host(p: &str) -> MountInfo {
        MountInfo::HostPath { path: p.into() }
    }

    fn copy_of(m: MountInfo) -> MountSource {
        MountSource::CopyOf(CopySource::new(
            m,
            jetbridge_core::digest::Digest::from_sha256(&[0; 32]),
        ))
    }

    #[test]
    fn mounts_are_ordered_parents_first_and_validated() {
        let s = spec_with(vec![
            ("a/b", MountSource::Empty),
            ("a", copy_of(host("/x"))),
        ]);
        let planned = plan_mounts(&s).unwrap();
        assert_eq!(planned[0].path(), "a");
        assert_eq!(planned[1].path(), "a/b");

        let bad = [
            spec_with(vec![("../x", MountSource::Empty)]),
            spec_with(vec![("/abs", MountSource::Empty)]),
            spec_with(vec![(".", MountSource::Empty)]),
            spec_with(vec![("a", MountSource::Empty), ("./a", MountSource::Empty)]),
            spec_with(vec![
                ("c", MountSource::Cache { key: "k".into() }),
                ("c/d", MountSource::Empty),
            ]),
            spec_with(vec![("o", MountSource::WriteInto(host("relative")))]),
        ];
        for s in bad {
            assert_eq!(
                plan_mounts(&s).unwrap_err().kind(),
                ErrorKind::Invalid,
                "{:?}",
                s.mounts
            );
        }
        let pvc = spec_with(vec![(
            "v",
            copy_of(MountInfo::SharedVolume {
                volume: "c".into(),
                sub_path: "s".into(),
            }),
        )]);
        assert_eq!(
            plan_mounts(&pvc).unwrap_err().kind(),
            ErrorKind::Unsupported
        );
    }
}
