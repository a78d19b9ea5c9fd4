//! The step runner: one step, one pod.
//!
//! Create the pod, wait for it with separate scheduling and startup deadlines, bring
//! the inputs in, exec the command, take the outputs out, register them, delete the
//! pod. Every failure is classified ([`StepFailure`]); a command whose exec stream ends
//! without an exit status is never a success, and a pod found failed after the command
//! returned (evicted, OOM-killed) fails the step even if the command said 0.

use crate::ports::{DeleteOpts, StopOpts, WaitOpts};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::abort::AbortSignal;
use super::artifacts::{ArtifactRequest, ArtifactService, ArtifactVolume};
use super::failure::StepFailure;
use crate::digest::Digest;
use crate::error::{Error, ErrorKind, Result};
use crate::names::{ArtifactId, StepIdentity, VolumeHandle};
use crate::ports::{
    Container, CopySource, Exec, ExecRequest, Holder, MountAccess, MountSource, OutputSink,
    OutputStream, PendingReason, PodSpec, PodState, Pods, Resources, Runtime, WaitFor,
};

/// Deadlines and policies of the step runner.
#[derive(Debug, Clone)]
pub struct StepConfig {
    /// How long a pod may wait for a node.
    pub scheduling_timeout: Duration,
    /// How long a scheduled pod may take to start (image pull, containers).
    pub startup_timeout: Duration,
    /// Grace period when deleting step pods.
    pub delete_grace: Duration,
    /// Keep pods after the step (for debugging); the reaper collects them later.
    pub keep_pods: bool,
    /// How many times a transient pod-creation error is retried.
    pub create_retries: u32,
}

impl Default for StepConfig {
    fn default() -> Self {
        StepConfig {
            scheduling_timeout: Duration::from_secs(300),
            startup_timeout: Duration::from_secs(300),
            delete_grace: Duration::from_secs(10),
            keep_pods: false,
            create_retries: 4,
        }
    }
}

/// An artifact as steps pass it around.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRef {
    /// Registry id.
    pub id: ArtifactId,
    /// Artifact name.
    pub name: String,
    /// Volume.
    pub volume: VolumeHandle,
    /// Size in bytes.
    pub size: u64,
    /// Tree digest.
    pub digest: Option<Digest>,
}

/// An input of a step.
#[derive(Debug, Clone)]
pub struct StepInput {
    /// Path under the working directory.
    pub path: String,
    /// The artifact.
    pub artifact: ArtifactRef,
}

/// An output of a step.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// Artifact name it binds to.
    pub name: String,
    /// Path under the working directory.
    pub path: String,
}

/// The command of a step.
#[derive(Clone)]
pub struct StepCommand {
    /// argv.
    pub argv: Vec<String>,
    /// Environment (task params).
    pub env: BTreeMap<String, String>,
    /// Working directory, relative to the pod's.
    pub dir: Option<String>,
    /// User, where supported.
    pub user: Option<String>,
    /// Stdin (the resource protocol's JSON request).
    pub stdin: Option<Bytes>,
    /// Keep stdout for the caller instead of showing it (resource protocol).
    pub capture_stdout: bool,
}

impl std::fmt::Debug for StepCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Env and stdin may hold secrets.
        f.debug_struct("StepCommand")
            .field("argv", &self.argv)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Everything needed to run one step.
#[derive(Clone)]
pub struct StepRequest {
    /// Who the step is (name, labels).
    pub identity: StepIdentity,
    /// Build id, for artifact records.
    pub build_id: String,
    /// The reference holder for the artifacts it produces.
    pub holder: Holder,
    /// Image of the main container.
    pub image: String,
    /// Privileged.
    pub privileged: bool,
    /// Without network (a task's `hermetic: true`): only on a backend whose pods
    /// can be cut off ([`crate::ports::PodCapabilities::hermetic`]); elsewhere pod
    /// creation refuses it.
    pub hermetic: bool,
    /// Resources.
    pub resources: Resources,
    /// Inputs.
    pub inputs: Vec<StepInput>,
    /// Outputs.
    pub outputs: Vec<StepOutput>,
    /// Caches: (path, key).
    pub caches: Vec<(String, String)>,
    /// Command.
    pub command: StepCommand,
    /// Deadline for the whole step.
    pub deadline: Option<Instant>,
    /// The `timeout` the deadline came from, for the message.
    pub timeout: Option<Duration>,
    /// Where the user sees the step's output.
    pub output: Arc<dyn OutputSink>,
    /// Ends the step early.
    pub abort: AbortSignal,
}

impl std::fmt::Debug for StepRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepRequest")
            .field("identity", &self.identity)
            .field("image", &self.image)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("command", &self.command)
            .finish_non_exhaustive()
    }
}

/// How a step ended.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// `Ok(())` on success.
    pub result: std::result::Result<(), StepFailure>,
    /// Outputs that were sealed and registered (also after a failed command).
    pub outputs: Vec<ArtifactRef>,
    /// Captured stdout when asked for.
    pub stdout: Vec<u8>,
    /// Wall time.
    pub duration: Duration,
}

/// Runs steps on a [`Runtime`].
#[derive(Debug, Clone)]
pub struct StepRunner {
    rt: Runtime,
    artifacts: ArtifactService,
    config: StepConfig,
}

struct Tee {
    user: Arc<dyn OutputSink>,
    captured: Option<std::sync::Mutex<Vec<u8>>>,
}

impl OutputSink for Tee {
    fn write(&self, stream: OutputStream, data: &[u8]) {
        match (&self.captured, stream) {
            (Some(buf), OutputStream::Stdout) => {
                if let Ok(mut b) = buf.lock() {
                    b.extend_from_slice(data);
                }
            }
            _ => self.user.write(stream, data),
        }
    }
}

/// Forwards stdout chunks into a channel; stderr goes to the user's sink.
///
/// Unbounded because [`OutputSink::write`] cannot wait: when the store is slower than
/// the pod's tar, chunks queue in memory. Only the streaming path (stores that cannot
/// be mounted) uses it.
struct ChannelSink {
    tx: mpsc::UnboundedSender<Result<Bytes>>,
    user: Arc<dyn OutputSink>,
}

impl OutputSink for ChannelSink {
    fn write(&self, stream: OutputStream, data: &[u8]) {
        match stream {
            // A closed receiver means the writer already failed; its error is reported.
            OutputStream::Stdout => {
                let _ = self.tx.send(Ok(Bytes::copy_from_slice(data)));
            }
            OutputStream::Stderr => self.user.write(stream, data),
        }
    }
}

impl StepRunner {
    /// A runner over `rt`.
    pub fn new(rt: Runtime, config: StepConfig) -> Self {
        let artifacts = ArtifactService::new(rt.volumes.clone(), rt.registry.clone());
        StepRunner {
            rt,
            artifacts,
            config,
        }
    }

    /// The runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    /// The artifact service.
    pub fn artifacts(&self) -> &ArtifactService {
        &self.artifacts
    }

    /// Run one step to the end. Never panics; always deletes the pod it created
    /// (unless configured to keep pods).
    pub async fn run(&self, req: StepRequest) -> StepResult {
        let started = Instant::now();
        let pod_name = req.identity.pod_name();
        let mut outputs = Vec::new();
        let mut stdout = Vec::new();
        let mut deleted = false;
        // One span per step (a child of the build's, when there is one); its phases are
        // children of it.
        let span = tracing::info_span!(
            "step",
            step = %req.identity.step,
            r#type = %req.identity.step_type,
            pod = %pod_name
        );
        let result = self
            .run_inner(&req, &pod_name, &mut outputs, &mut stdout, &mut deleted)
            .instrument(span)
            .await;
        // On every path, aborts included: the pod (and on Kubernetes the Secret it
        // owns) goes.
        if !self.config.keep_pods
            && !deleted
            && let Err(e) = self
                .rt
                .pods
                .delete(&pod_name, &DeleteOpts::grace(self.config.delete_grace))
                .await
        {
            // The reaper deletes it later (our worker label, handle not active).
            tracing::warn!(pod = %pod_name, error = %e, "could not delete step pod");
        }
        StepResult {
            result,
            outputs,
            stdout,
            duration: started.elapsed(),
        }
    }

    fn remaining(&self, req: &StepRequest) -> Option<Duration> {
        req.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    async fn run_inner(
        &self,
        req: &StepRequest,
        pod_name: &str,
        produced: &mut Vec<ArtifactRef>,
        stdout: &mut Vec<u8>,
        deleted: &mut bool,
    ) -> std::result::Result<(), StepFailure> {
        if req.abort.is_aborted() {
            return Err(self.aborted(req));
        }
        let pods = self.rt.pods.clone();
        let pod_caps = pods.capabilities();
        let store = if req.inputs.is_empty() && req.outputs.is_empty() {
            None
        } else {
            Some(
                self.artifacts
                    .store()
                    .map_err(StepFailure::from_error)?
                    .clone(),
            )
        };

        // Outputs first: registered volumes held by this build.
        let mut out_volumes: Vec<(StepOutput, ArtifactVolume)> = Vec::new();
        for o in &req.outputs {
            let v = self
                .artifacts
                .create_volume_for_artifact(&ArtifactRequest {
                    build: req.build_id.clone(),
                    step: req.identity.step.clone(),
                    name: o.name.clone(),
                    holder: req.holder.clone(),
                    retain_until: None,
                })
                .await
                .map_err(StepFailure::from_error)?;
            out_volumes.push((o.clone(), v));
        }

        // Decide, per volume, whether the pod uses it in place or we stream tar.
        let mut mounts = Vec::new();
        let mut stream_in: Vec<&StepInput> = Vec::new();
        let mut stream_out: Vec<usize> = Vec::new();
        let mountable = store.as_ref().is_some_and(|s| s.capabilities().mount);
        for input in &req.inputs {
            let mut source = MountSource::Empty;
            if let (true, Some(s)) = (mountable, &store) {
                let m = s
                    .mount(&input.artifact.volume, MountAccess::Read)
                    .await
                    .map_err(StepFailure::from_error)?;
                // Without a sealed digest the copy could not be checked: stream it
                // instead (reads verify).
                if let (true, Some(digest)) = (pod_caps.can_mount(&m), &input.artifact.digest) {
                    source = MountSource::CopyOf(
                        CopySource::new(m, digest.clone())
                            .with_artifact(&input.artifact.name, &req.build_id),
                    );
                }
            }
            if source == MountSource::Empty {
                stream_in.push(input);
            }
            mounts.push(crate::ports::Mount::new(input.path.clone(), source));
        }
        for (i, (o, v)) in out_volumes.iter().enumerate() {
            let mut source = MountSource::Empty;
            if mountable {
                let m = v.mount_for_write().await.map_err(StepFailure::from_error)?;
                if pod_caps.can_mount(&m) {
                    source = MountSource::WriteInto(m);
                }
            }
            if source == MountSource::Empty {
                stream_out.push(i);
            }
            mounts.push(crate::ports::Mount::new(o.path.clone(), source));
        }
        for (path, key) in &req.caches {
            mounts.push(crate::ports::Mount::new(
                path.clone(),
                MountSource::Cache { key: key.clone() },
            ));
        }

        let helper =
            pod_caps.transfer_container && (!stream_in.is_empty() || !stream_out.is_empty());
        let spec = PodSpec {
            name: pod_name.to_owned(),
            labels: req.identity.labels(),
            image: req.image.clone(),
            // Params go with the pod, not with the exec: an exec's environment can end
            // up in a request URL (Kubernetes puts the command in the query string),
            // while adapters keep a pod's environment out of sight (a Secret there).
            env: req.command.env.clone(),
            mounts,
            resources: req.resources.clone(),
            privileged: req.privileged,
            transfer: helper,
            hermetic: req.hermetic,
        };
        // An abort interrupts pod creation (between attempts) and every wait, not only
        // the command.
        self.create_pod(req, &spec)
            .instrument(phase("schedule"))
            .await?;
        self.interruptible(req, self.wait_running(req, pod_name))
            .instrument(phase("start"))
            .await?;

        let transfer_container = if helper {
            Container::Transfer
        } else {
            Container::Main
        };
        if let Some(s) = &store {
            async {
                for input in &stream_in {
                    let tar = s.read_tar(&input.artifact.volume).await.map_err(|e| {
                        StepFailure::from_error(e.context(format!(
                            "reading input artifact {:?} of build {:?}",
                            input.artifact.name, req.build_id
                        )))
                    })?;
                    let exec = ExecRequest::new(pod_name, argv(&["tar", "-x", "-f", "-"]))
                        .container(transfer_container)
                        .dir(input.path.clone())
                        .stdin(tar);
                    self.helper_exec(
                        req,
                        pod_name,
                        exec,
                        &format!("bringing in input {:?}", input.artifact.name),
                    )
                    .await?;
                }
                Ok::<(), StepFailure>(())
            }
            .instrument(phase("inputs"))
            .await?;
        }

        // The command itself.
        let tee = Arc::new(Tee {
            user: req.output.clone(),
            captured: req
                .command
                .capture_stdout
                .then(|| std::sync::Mutex::new(Vec::new())),
        });
        let mut exec = ExecRequest::new(pod_name, req.command.argv.clone());
        exec.dir = req.command.dir.clone();
        exec.user = req.command.user.clone();
        if let Some(stdin) = &req.command.stdin {
            exec.stdin = Some(crate::ports::bytes_stream(stdin.clone()));
        }
        let code = self
            .exec_step(req, pod_name, exec, tee.clone())
            .instrument(phase("command"))
            .await;
        if let Some(buf) = &tee.captured
            && let Ok(b) = buf.lock()
        {
            stdout.extend_from_slice(&b);
        }
        let code = code?;

        // The command ended with a status; was the pod still healthy? An eviction
        // racing the end of the command must not turn into a success.
        match pods.get(pod_name).await {
            Ok(st) => {
                if let PodState::Failed(f) = st.state {
                    return Err(StepFailure::from_pod(f, st.message.as_deref()));
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StepFailure::PodDeleted(
                    "the pod vanished while the step ran".into(),
                ));
            }
            Err(e) => return Err(StepFailure::from_error(e)),
        }

        // A command that failed while writing outputs in place may have failed because
        // the store filled up: that is the platform's failure, not the step's, and what
        // it wrote is partial, so nothing of it is sealed.
        if code != 0
            && stream_out.len() < out_volumes.len()
            && let Some(why) = self.full_store(&out_volumes, code).await
        {
            return Err(StepFailure::StorageFull(why));
        }
        // Outputs are kept after a failed command too: hooks (on_failure) read them.
        for i in &stream_out {
            let (o, v) = &out_volumes[*i];
            self.collect_output(req, pod_name, transfer_container, o, v)
                .instrument(phase("outputs"))
                .await?;
        }
        // Outputs written in place are sealed only once nothing of the step can still
        // write to them: a process the task left in the background would otherwise
        // change a sealed artifact. (Streamed outputs are a snapshot already.)
        if stream_out.len() < out_volumes.len() {
            *deleted = self.stop_writers(pod_name).await?;
        }
        for (_, v) in &out_volumes {
            let (ready, _) = v
                .seal()
                .instrument(phase("seal"))
                .await
                .map_err(StepFailure::from_error)?;
            produced.push(ArtifactRef {
                id: ready.id.clone(),
                name: ready.name.clone(),
                volume: ready.volume.clone(),
                size: ready.size.unwrap_or(0),
                digest: ready.digest.clone(),
            });
        }
        if code == 0 {
            Ok(())
        } else {
            Err(StepFailure::Exited(code))
        }
    }

    /// Why the store counts as full for these outputs (under [`FULL_BELOW`] bytes free
    /// where one of them is written), if it does.
    async fn full_store(
        &self,
        outputs: &[(StepOutput, ArtifactVolume)],
        code: i32,
    ) -> Option<String> {
        let store = self.artifacts.store().ok()?;
        for (o, v) in outputs {
            match store.free_bytes(v.handle()).await {
                Ok(Some(free)) if free < FULL_BELOW => {
                    return Some(format!(
                        "the command exited with status {code} with {free} bytes free in the \
                         volume store where output {:?} is written: the store is full; nothing \
                         of this step's outputs is kept",
                        o.name
                    ));
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "cannot tell the store's free space"),
            }
        }
        None
    }

    /// How this step ends because its build was stopped.
    fn aborted(&self, req: &StepRequest) -> StepFailure {
        StepFailure::from_abort(req.abort.reason().as_ref())
    }

    /// `fut`, unless the build is aborted first.
    async fn interruptible<T>(
        &self,
        req: &StepRequest,
        fut: impl std::future::Future<Output = std::result::Result<T, StepFailure>>,
    ) -> std::result::Result<T, StepFailure> {
        let mut abort = req.abort.clone();
        // An abort already given wins over work that is ready too: `select!` would
        // otherwise pick either at random, and a build could run on after its abort.
        tokio::select! {
            biased;
            _ = abort.aborted() => Err(self.aborted(req)),
            r = fut => r,
        }
    }

    /// End every process of the step's pod before its in-place outputs are sealed.
    /// Returns whether the pod was deleted to do so.
    async fn stop_writers(&self, pod: &str) -> std::result::Result<bool, StepFailure> {
        let pods = &self.rt.pods;
        let grace = self.config.delete_grace;
        if self.config.keep_pods {
            // Kept for inspection where the platform can end the processes and keep
            // the pod; otherwise it goes like any other, so the outputs stay sound.
            match pods.stop(pod, &StopOpts::grace(grace)).await {
                Ok(true) => return Ok(false),
                Ok(false) => {
                    tracing::info!(
                        pod,
                        "deleting the kept pod anyway: its outputs are sealed only once it has stopped"
                    );
                }
                Err(e) => {
                    return Err(StepFailure::from_error(
                        e.context(format!("stopping pod {pod}")),
                    ));
                }
            }
        }
        pods.delete(pod, &DeleteOpts::grace(grace))
            .await
            .map_err(|e| {
                StepFailure::from_error(
                    e.context(format!("stopping pod {pod} before sealing its outputs")),
                )
            })?;
        // Bounded: a pod that will not stop (its node gone) must not hang the build. The
        // step's own deadline does not apply: its command is done.
        let limit = grace + STOP_MARGIN;
        match pods
            .wait(pod, &WaitOpts::new(WaitFor::Terminated, limit))
            .await
        {
            Ok(st) if st.satisfies(WaitFor::Terminated) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(true),
            Ok(_) => Err(StepFailure::Infrastructure(Error::timeout(format!(
                "pod {pod} did not stop within {} of its deletion; its outputs were not sealed",
                super::fmt_duration(limit)
            )))),
            Err(e) => Err(StepFailure::from_error(
                e.context(format!("waiting for pod {pod} to stop")),
            )),
        }
    }

    /// Create the pod, retrying what is retryable. One `create` call always runs to
    /// its end, abort or not: dropped half-way, it could leave what it made first (the
    /// Kubernetes adapter's env Secret, before the pod owns it) where neither the
    /// pod's deletion nor its owner collects it. An abort is honoured before each
    /// attempt and during the backoff.
    async fn create_pod(
        &self,
        req: &StepRequest,
        spec: &PodSpec,
    ) -> std::result::Result<(), StepFailure> {
        let mut attempt = 0;
        loop {
            if req.abort.is_aborted() {
                return Err(self.aborted(req));
            }
            match self.rt.pods.create(spec).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_retryable() && attempt < self.config.create_retries => {
                    // Create is idempotent on name + handle, so a retry after a lost
                    // response adopts the pod instead of duplicating it.
                    attempt += 1;
                    let backoff = Duration::from_millis(100u64 << attempt.min(6));
                    tracing::debug!(pod = %spec.name, error = %e, ?backoff, "retrying pod creation");
                    self.interruptible(req, async {
                        tokio::time::sleep(backoff).await;
                        Ok(())
                    })
                    .await?;
                }
                Err(e) => {
                    return Err(StepFailure::from_error(
                        e.context(format!("creating pod {}", spec.name)),
                    ));
                }
            }
        }
    }

    async fn wait_running(
        &self,
        req: &StepRequest,
        pod: &str,
    ) -> std::result::Result<(), StepFailure> {
        let cap = |d: Duration| self.remaining(req).map_or(d, |r| r.min(d));
        let st = self
            .rt
            .pods
            .wait(
                pod,
                &WaitOpts::new(WaitFor::Scheduled, cap(self.config.scheduling_timeout)),
            )
            .await
            .map_err(StepFailure::from_error)?;
        if !st.satisfies(WaitFor::Scheduled) || st.hopeless(WaitFor::Scheduled) {
            return Err(self.classify_not_running(
                req,
                &st,
                "scheduled",
                self.config.scheduling_timeout,
            ));
        }
        if st.state == PodState::Running {
            // Already running: a second wait would only cost API requests.
            return Ok(());
        }
        let st = self
            .rt
            .pods
            .wait(
                pod,
                &WaitOpts::new(WaitFor::Running, cap(self.config.startup_timeout)),
            )
            .await
            .map_err(StepFailure::from_error)?;
        if st.state != PodState::Running {
            return Err(self.classify_not_running(
                req,
                &st,
                "running",
                self.config.startup_timeout,
            ));
        }
        Ok(())
    }

    fn classify_not_running(
        &self,
        req: &StepRequest,
        st: &crate::ports::PodStatus,
        what: &str,
        limit: Duration,
    ) -> StepFailure {
        let msg = st.message.clone().unwrap_or_default();
        if let Some(d) = req.deadline
            && Instant::now() >= d
        {
            return StepFailure::TimedOut(req.timeout.unwrap_or_default());
        }
        match st.state {
            PodState::Pending(PendingReason::Unschedulable)
            | PodState::Pending(PendingReason::Scheduling) => {
                StepFailure::Unschedulable(if msg.is_empty() {
                    format!("not scheduled within {}", super::fmt_duration(limit))
                } else {
                    format!(
                        "{msg} (not scheduled within {})",
                        super::fmt_duration(limit)
                    )
                })
            }
            PodState::Pending(PendingReason::ImagePullFailed) => StepFailure::ImagePull(msg),
            PodState::Pending(PendingReason::ContainerCreating) => {
                StepFailure::StartupTimeout(format!(
                    "not {what} within {}{}",
                    super::fmt_duration(limit),
                    if msg.is_empty() {
                        String::new()
                    } else {
                        format!(": {msg}")
                    }
                ))
            }
            PodState::Failed(f) => StepFailure::from_pod(f, st.message.as_deref()),
            PodState::Succeeded => {
                StepFailure::ExecLost("the pod ended before the step ran".into())
            }
            PodState::Running => StepFailure::StartupTimeout(msg),
        }
    }

    /// Run the step's command with its deadline and abort; classify how it ended.
    async fn exec_step(
        &self,
        req: &StepRequest,
        pod: &str,
        exec: ExecRequest,
        sink: Arc<dyn OutputSink>,
    ) -> std::result::Result<i32, StepFailure> {
        let execer: Arc<dyn Exec> = self.rt.exec.clone();
        let fut = execer.exec(exec, sink);
        let mut abort = req.abort.clone();
        let outcome = match self.remaining(req) {
            // The abort first, as in `interruptible`.
            Some(left) => tokio::select! {
                biased;
                _ = abort.aborted() => return Err(self.aborted(req)),
                r = tokio::time::timeout(left, fut) => match r {
                    Ok(r) => r,
                    Err(_) => return Err(StepFailure::TimedOut(req.timeout.unwrap_or(left))),
                },
            },
            None => tokio::select! {
                biased;
                _ = abort.aborted() => return Err(self.aborted(req)),
                r = fut => r,
            },
        };
        match outcome {
            Ok(code) => Ok(code),
            Err(e) => Err(self.classify_exec_error(pod, e).await),
        }
    }

    async fn classify_exec_error(&self, pod: &str, e: Error) -> StepFailure {
        // Ask the pod what happened: an eviction or OOM shows there, and is the
        // better explanation than "stream lost".
        match self.rt.pods.get(pod).await {
            Ok(st) => match st.state {
                PodState::Failed(f) => StepFailure::from_pod(f, st.message.as_deref()),
                _ => StepFailure::from_error(e),
            },
            Err(ge) if ge.kind() == ErrorKind::NotFound => {
                StepFailure::PodDeleted(format!("the pod was deleted while the step ran ({e})"))
            }
            Err(_) => StepFailure::from_error(e),
        }
    }

    async fn helper_exec(
        &self,
        req: &StepRequest,
        pod: &str,
        exec: ExecRequest,
        what: &str,
    ) -> std::result::Result<(), StepFailure> {
        let err = Arc::new(crate::ports::CaptureOutput::new());
        let code = self.exec_step(req, pod, exec, err.clone()).await?;
        if code != 0 {
            let stderr = String::from_utf8_lossy(&err.stderr()).trim().to_owned();
            return Err(StepFailure::Infrastructure(Error::other(format!(
                "{what}: tar exited with status {code}: {stderr}"
            ))));
        }
        Ok(())
    }

    async fn collect_output(
        &self,
        req: &StepRequest,
        pod: &str,
        container: Container,
        o: &StepOutput,
        v: &ArtifactVolume,
    ) -> std::result::Result<(), StepFailure> {
        let (tx, rx) = mpsc::unbounded_channel::<Result<Bytes>>();
        let sink = Arc::new(ChannelSink {
            tx,
            user: req.output.clone(),
        });
        let exec = ExecRequest::new(pod, argv(&["tar", "-c", "-f", "-", "."]))
            .container(container)
            .dir(o.path.clone());
        let stream = tokio_stream_from(rx);
        let write = v.write_tar(stream);
        // The sink (and so the sender) drops when the exec ends, closing the stream.
        let run = self.exec_step(req, pod, exec, sink);
        let (code, written) = tokio::join!(run, write);
        let code = code?;
        if code != 0 {
            return Err(StepFailure::Infrastructure(Error::other(format!(
                "collecting output {:?}: tar exited with status {code}",
                o.name
            ))));
        }
        written
            .map_err(|e| StepFailure::from_error(e.context(format!("storing output {:?}", o.name))))
    }
}

/// How long past its grace period a deleted pod may take to stop before its outputs
/// are given up on.
const STOP_MARGIN: Duration = Duration::from_secs(60);

/// A filesystem with less free than this is full: a write that failed for room leaves
/// at most a partial block or two (ext4 keeps its reserve for root, which a root writer
/// uses up too).
pub const FULL_BELOW: u64 = 64 * 1024;

fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

fn tokio_stream_from(mut rx: mpsc::UnboundedReceiver<Result<Bytes>>) -> crate::ports::ByteStream {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).fuse())
}

/// A span for one phase of a step (`schedule`, `start`, `inputs`, `command`,
/// `outputs`, `seal`), for traces.
fn phase(name: &'static str) -> tracing::Span {
    tracing::info_span!("phase", phase = name)
}
