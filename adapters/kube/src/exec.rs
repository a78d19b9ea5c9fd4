//! The [`Exec`] port: commands in a pod's containers over the WebSocket exec API.

use std::sync::Arc;

use async_trait::async_trait;
use jetbridge_core::ports::{
    Container, Exec, ExecCapabilities, ExecRequest, OutputSink, OutputStream, Pods, WaitFor,
    WaitOpts,
};
use jetbridge_core::{Error, ErrorKind, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::AttachParams;

use crate::config::{INSTALLED_HELPER, RUNS_DIR};
use crate::manifest::{HELPER_CONTAINER, MAIN_CONTAINER};
use crate::pods::{KubeBackend, Protocol};

/// The script that gives Kubernetes exec (which has no working directory option) one:
/// `$1` is the directory, the rest is the command. The directory and the command are
/// passed as arguments, never pasted into the script.
pub const CD_SCRIPT: &str = "cd \"$1\" && shift && exec \"$@\"";

/// The environment variable that marks every process of one exec (inherited by its
/// children), so a cancelled command can be found and stopped.
pub const EXEC_ID_VAR: &str = "JETBRIDGE_EXEC_ID";

/// Stops every process of the container whose environment carries the marker `$1`.
/// Kubernetes does not stop an exec'd command when its client goes away, so cancelling
/// an exec runs this in the same container.
pub const KILL_SCRIPT: &str = concat!(
    "for d in /proc/[0-9]*; do ",
    "if grep -q \"JETBRIDGE_EXEC_ID=$1\" \"$d/environ\" 2>/dev/null; then ",
    "kill -KILL \"${d#/proc/}\" 2>/dev/null; fi; done; true"
);

/// The longest watch of a pod beside its exec: far beyond any step (the exec's own
/// deadline is its caller's).
const POD_WATCH_LIMIT: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// How long a cancellation may take to reach the container.
const KILL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// How long the status of a container that ended under its command may take to reach
/// the API. The kubelet's PLEG relists containers every second and the status manager
/// then patches the pod (pkg/kubelet/kubelet.go `genericPlegRelistPeriod`,
/// pkg/kubelet/status/status_manager.go): seconds on a healthy node. Beyond this the
/// command is given up as lost, never taken for its exit status.
const CONTAINER_END_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The script that hands a command exactly `$1` bytes of stdin and then its end, for
/// sessions that cannot end stdin (`v4.channel.k8s.io`, see [`crate::session`]); the
/// command and its arguments follow. `head -c` stops reading at the count, so the
/// session's stdin can stay open.
pub const BOUNDED_STDIN_SCRIPT: &str = "n=$1; shift; head -c \"$n\" | \"$@\"";

/// How a container's commands are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// Through the image's own `env`, and `sh` for a working directory or bounded stdin.
    Env,
    /// Through the static step-pod helper installed at [`INSTALLED_HELPER`]
    /// (`KubeConfig::step_helper_image`): the image needs none of its programs.
    Helper,
}

/// The argv actually exec'd for `req`: `env JETBRIDGE_EXEC_ID=<id> K=V ...`, then
/// `sh -c CD_SCRIPT sh DIR ...` when it has a directory, then its own argv.
pub fn wrap_argv(req: &ExecRequest, exec_id: &str) -> Result<Vec<String>> {
    wrap(req, exec_id, Launcher::Env, None)
}

/// [`wrap_argv`] for a command whose stdin is `len` bytes that the session cannot end:
/// `sh -c BOUNDED_STDIN_SCRIPT sh LEN` comes after `env`, so every process carries the
/// exec's marker.
pub fn wrap_argv_bounded(req: &ExecRequest, exec_id: &str, len: u64) -> Result<Vec<String>> {
    wrap(req, exec_id, Launcher::Env, Some(len))
}

/// The argv exec'd for `req` when `launcher` starts it, with `stdin_len` for stdin the
/// session cannot end. Through the helper: `jetbridge-helper exec [--dir DIR]
/// [--stdin-len LEN] JETBRIDGE_EXEC_ID=<id> K=V ... -- ARGV`.
pub fn wrap_argv_with(
    req: &ExecRequest,
    exec_id: &str,
    launcher: Launcher,
    stdin_len: Option<u64>,
) -> Result<Vec<String>> {
    wrap(req, exec_id, launcher, stdin_len)
}

fn wrap(
    req: &ExecRequest,
    exec_id: &str,
    launcher: Launcher,
    stdin_len: Option<u64>,
) -> Result<Vec<String>> {
    if req.argv.is_empty() {
        return Err(Error::invalid("exec needs a command: argv is empty"));
    }
    if req.user.is_some() {
        return Err(Error::unsupported(
            "running commands as another user is not supported on Kubernetes",
        ));
    }
    let mut vars = vec![format!("{EXEC_ID_VAR}={exec_id}")];
    for (k, v) in &req.env {
        // A leading `-` would read as an option to the helper; no shell takes it either.
        if k.is_empty()
            || k.starts_with('-')
            || k.contains('=')
            || k.contains('\0')
            || v.contains('\0')
            || k == EXEC_ID_VAR
        {
            return Err(Error::invalid(format!(
                "environment variable name {k:?} is not valid"
            )));
        }
        vars.push(format!("{k}={v}"));
    }
    let dir = req
        .dir
        .as_deref()
        .map(|d| d.trim_end_matches('/'))
        .filter(|d| !d.is_empty() && *d != ".");
    if let Some(dir) = dir {
        let ok =
            !dir.starts_with('/') && dir.split('/').all(|seg| seg != "..") && !dir.contains('\0');
        if !ok {
            return Err(Error::invalid(format!(
                "exec dir {dir:?} must be relative to the pod's working directory, without '..'"
            )));
        }
    }
    let mut out = Vec::new();
    match launcher {
        Launcher::Helper => {
            out.extend([INSTALLED_HELPER, "exec", "--record"].map(str::to_owned));
            out.push(run_dir(exec_id));
            if let Some(dir) = dir {
                out.extend(["--dir".to_owned(), dir.to_owned()]);
            }
            if let Some(n) = stdin_len {
                out.extend(["--stdin-len".to_owned(), n.to_string()]);
            }
            out.extend(vars);
            out.push("--".to_owned());
        }
        Launcher::Env => {
            out.push("env".to_owned());
            out.extend(vars);
            if let Some(n) = stdin_len {
                out.extend(["sh", "-c", BOUNDED_STDIN_SCRIPT, "sh"].map(str::to_owned));
                out.push(n.to_string());
            }
            if let Some(dir) = dir {
                out.extend(["sh", "-c", CD_SCRIPT, "sh", dir].map(str::to_owned));
            }
        }
    }
    out.extend(req.argv.iter().cloned());
    Ok(out)
}

/// Where the step-pod helper records the command of exec `exec_id`.
fn run_dir(exec_id: &str) -> String {
    format!("{RUNS_DIR}/{exec_id}")
}

/// How many times a dropped exec stream of a recorded command is re-attached before the
/// command is given up as lost.
const REATTACH_ATTEMPTS: u32 = 5;

/// An [`OutputSink`] that counts what passes, per stream: where a re-attach resumes.
struct Counted {
    inner: Arc<dyn OutputSink>,
    stdout: std::sync::atomic::AtomicU64,
    stderr: std::sync::atomic::AtomicU64,
}

impl Counted {
    fn new(inner: Arc<dyn OutputSink>) -> Self {
        Counted {
            inner,
            stdout: 0.into(),
            stderr: 0.into(),
        }
    }

    fn seen(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.stdout.load(Relaxed), self.stderr.load(Relaxed))
    }
}

impl OutputSink for Counted {
    fn write(&self, stream: OutputStream, data: &[u8]) {
        use std::sync::atomic::Ordering::Relaxed;
        let n = data.len() as u64;
        match stream {
            OutputStream::Stdout => self.stdout.fetch_add(n, Relaxed),
            OutputStream::Stderr => self.stderr.fetch_add(n, Relaxed),
        };
        self.inner.write(stream, data);
    }
}

/// What `jetbridge-helper attach` puts first on its stderr when it cannot give the
/// command's result (no record, a recorder that died, output not kept, input cut
/// short): then its exit status (125) is not the command's.
const ATTACH_FAILED: &[u8] = b"jetbridge-helper: attach failed: ";

/// One session's view of [`Counted`]: it passes everything on, and keeps the end of the
/// session's stderr, where an attach that failed says so.
struct Watched<'a> {
    inner: &'a Counted,
    stderr_tail: std::sync::Mutex<Vec<u8>>,
}

impl<'a> Watched<'a> {
    const TAIL: usize = 1024;

    fn new(inner: &'a Counted) -> Self {
        Watched {
            inner,
            stderr_tail: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Why the helper could not give the command's result, when `status` is its 125
    /// and it said so.
    fn attach_failed(&self, status: &Status) -> Option<String> {
        if !matches!(exit_code(status), Ok(125)) {
            return None;
        }
        let tail = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        let at = tail
            .windows(ATTACH_FAILED.len())
            .rposition(|w| w == ATTACH_FAILED)?;
        let why = String::from_utf8_lossy(&tail[at + ATTACH_FAILED.len()..]);
        Some(why.trim_end().to_owned())
    }
}

impl OutputSink for Watched<'_> {
    fn write(&self, stream: OutputStream, data: &[u8]) {
        if stream == OutputStream::Stderr {
            let mut tail = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
            tail.extend_from_slice(data);
            let excess = tail.len().saturating_sub(Self::TAIL);
            tail.drain(..excess);
        }
        self.inner.write(stream, data);
    }
}

/// The argv that stops every process of the exec marked `exec_id`.
fn kill_argv(launcher: Launcher, exec_id: &str) -> Vec<String> {
    match launcher {
        Launcher::Helper => vec![INSTALLED_HELPER.into(), "kill".into(), exec_id.into()],
        Launcher::Env => ["sh", "-c", KILL_SCRIPT, "sh", exec_id]
            .map(str::to_owned)
            .to_vec(),
    }
}

/// The exit code in an exec status: `Success` is 0, `NonZeroExitCode` carries the code;
/// anything else is an error (the command could not be started).
pub fn exit_code(status: &Status) -> Result<i32> {
    if status.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    if status.reason.as_deref() == Some("NonZeroExitCode") {
        let code = status
            .details
            .as_ref()
            .and_then(|d| d.causes.as_ref())
            .and_then(|c| c.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
            .and_then(|c| c.message.as_deref())
            .and_then(|m| m.trim().parse::<i32>().ok());
        return code.ok_or_else(|| {
            Error::lost("the exec status says the command failed but carries no exit code")
        });
    }
    let message = status.message.as_deref().unwrap_or("no message");
    if message.contains("executable file not found") {
        // The runtime could not start the exec'd program at all: the image lacks it.
        // Without the step-pod helper every command is run through `env` (and `sh` for
        // a working directory); with it, only the helper itself is exec'd.
        return Err(Error::invalid(format!(
            "the step image lacks a program jetbridge runs commands with: {message}. \
             Without a step helper image, commands are exec'd through `env`, and `sh` \
             when they have a working directory; for images without them (distroless, \
             scratch) set the step helper image (`--step-helper-image`, the jetbridge \
             image), whose static helper runs the command directly"
        )));
    }
    if crate::error::container_not_found(message) {
        // The container is not running: the pod's state says why.
        return Err(Error::conflict(format!(
            "the container is not running: {message}"
        )));
    }
    Err(Error::other(format!(
        "the command could not be run: {message}"
    )))
}

/// Stops the command of an exec that ends without its status (the future dropped, or
/// the stream lost): Kubernetes would let it run on unobserved.
struct KillOnDrop {
    api: Option<kube::Api<k8s_openapi::api::core::v1::Pod>>,
    pod: String,
    container: &'static str,
    /// What stops the exec's processes in that container.
    kill: Vec<String>,
}

impl KillOnDrop {
    fn disarm(&mut self) {
        self.api = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let Some(api) = self.api.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pod = std::mem::take(&mut self.pod);
        let argv = std::mem::take(&mut self.kill);
        let params = AttachParams::default()
            .container(self.container)
            .stdin(false)
            .stdout(false)
            .stderr(true);
        rt.spawn(async move {
            let run = async {
                let mut p = api.exec(&pod, argv, &params).await?;
                if let Some(status) = p.take_status() {
                    status.await;
                }
                Ok::<(), kube::Error>(())
            };
            match tokio::time::timeout(KILL_TIMEOUT, run).await {
                Ok(Ok(())) => tracing::debug!(pod, "cancelled exec stopped"),
                Ok(Err(e)) => tracing::debug!(pod, error = %e, "could not stop a cancelled exec"),
                Err(_) => tracing::debug!(pod, "stopping a cancelled exec timed out"),
            }
        });
    }
}

#[async_trait]
impl Exec for KubeBackend {
    fn capabilities(&self) -> ExecCapabilities {
        ExecCapabilities::all().with_user(false)
    }

    async fn exec(&self, mut req: ExecRequest, output: Arc<dyn OutputSink>) -> Result<i32> {
        let exec_id = hex::encode(&uuid_bytes()[..8]);
        let launcher = self.launcher(req.container);
        // Checked before anything is sent or spooled.
        wrap(&req, &exec_id, launcher, None)?;
        let container = match req.container {
            Container::Main => MAIN_CONTAINER,
            Container::Transfer => HELPER_CONTAINER,
        };
        let pod = req.pod.clone();
        let params = AttachParams {
            container: Some(container.to_owned()),
            stdin: req.stdin.is_some(),
            stdout: true,
            stderr: true,
            tty: false,
            max_stdin_buf_size: None,
            max_stdout_buf_size: None,
            max_stderr_buf_size: None,
        };
        // Stdin on a server that cannot end it alone (v4) goes to a file first, so the
        // command can be told its length. Through the helper it always does: a command
        // told its input's length is never taken to have succeeded on part of it, so a
        // dropped stream can be re-attached (main-container stdin is a resource
        // script's request: small).
        let mut stdin = req.stdin.take();
        let mut bounded = None;
        if let Some(input) = stdin.take() {
            if launcher == Launcher::Env
                && self.exec_protocol(&pod, container).await == Protocol::V5
            {
                stdin = Some(input);
            } else {
                let spooled = crate::session::Spooled::new(input).await?;
                let len = spooled.len();
                tracing::debug!(pod, len, "exec stdin bounded for a v4 session");
                bounded = Some(len);
                stdin = Some(spooled.into_stream()?);
            }
        }
        let argv = wrap(&req, &exec_id, launcher, bounded)?;
        let budget = crate::retry::Budget::new(&self.config.request_budget);
        // Only failures that prove the command never started are retried: a command is
        // never run twice.
        let conn = match budget
            .run("exec", false, || {
                crate::session::connect(&self.client, self.namespace(), &pod, &argv, &params)
            })
            .await
        {
            Ok(c) => c,
            Err(e) => {
                let err = e.into_error(&format!("exec in pod {pod}"));
                // 400: the pod or container is not running (completed, not started).
                return Err(match err.kind() {
                    ErrorKind::Invalid => Error::conflict(err.message().to_owned()),
                    _ => err,
                });
            }
        };
        let v5 = conn.supports_stream_close();
        self.saw_exec_protocol(if v5 { Protocol::V5 } else { Protocol::V4 });
        tracing::debug!(pod, container, v5, "exec started");
        let mut guard = KillOnDrop {
            api: Some(self.api.clone()),
            pod: pod.clone(),
            container,
            kill: kill_argv(launcher, &exec_id),
        };
        let end = match (stdin.is_some(), v5, bounded.is_some()) {
            (_, true, _) => crate::session::StdinEnd::Signal,
            (_, false, true) | (false, false, false) => crate::session::StdinEnd::Bounded,
            // The server answered v4 though it spoke v5 a moment ago (an upgrade in
            // progress behind a load balancer): ending stdin ends the session.
            (true, false, false) => crate::session::StdinEnd::CloseSession,
        };
        // A node that vanishes takes the kubelet with it, and the session goes silent
        // without closing. So an exec that runs for a while has its pod watched beside
        // it: once the pod says it is gone (node lost, evicted, deleted), the command is
        // given up as lost and the caller asks the pod why.
        let pod_gone = async {
            tokio::time::sleep(self.config.exec_pod_watch_after).await;
            let forever = WaitOpts::new(WaitFor::Terminated, POD_WATCH_LIMIT);
            match self.wait(&pod, &forever).await {
                Ok(st) if st.state.is_terminal() => {
                    format!("{:?}: {}", st.state, st.message.unwrap_or_default())
                }
                Err(e) if e.kind() == ErrorKind::NotFound => e.message().to_owned(),
                // The watch failing says nothing about the command: leave it be.
                _ => std::future::pending().await,
            }
        };
        // A recorded command (through the helper) whose stream drops is re-attached: the
        // helper replays its output from the bytes already seen and ends with its true
        // status. It never runs twice, and its stdin is never sent twice: it had its
        // length, so a command that got only part of it is stopped, and the attach says
        // it cannot give a result (`Lost`), never the command's.
        let reattach = launcher == Launcher::Helper;
        let counted = Counted::new(output.clone());
        tokio::pin!(pod_gone);
        let mut conn = Some(conn);
        let mut stdin = stdin;
        let mut end = end;
        // Attempts since output last moved on: a long command behind a proxy that drops
        // streams now and then is followed for as long as it makes progress.
        let mut attempts = 0;
        let mut seen_at_drop = (0, 0);
        let status = 'session: loop {
            let Some(c) = conn.take() else { break None };
            let watched = Watched::new(&counted);
            let status = tokio::select! {
                r = crate::session::run(c, stdin.take(), end, &watched) => r?,
                why = &mut pod_gone => {
                    return Err(Error::lost(format!(
                        "pod {pod} stopped while its command ran ({why})"
                    )));
                }
            };
            if reattach
                && let Some(s) = &status
                && let Some(why) = watched.attach_failed(s)
            {
                return Err(Error::lost(format!(
                    "the exec stream of pod {pod} dropped and its command's result could \
                     not be recovered: {why}"
                )));
            }
            if status.is_some() || !reattach {
                break status;
            }
            let seen = counted.seen();
            if seen != seen_at_drop {
                attempts = 0;
                seen_at_drop = seen;
            }
            let argv = vec![
                INSTALLED_HELPER.to_owned(),
                "attach".to_owned(),
                run_dir(&exec_id),
                seen.0.to_string(),
                seen.1.to_string(),
            ];
            let params = AttachParams::default()
                .container(container)
                .stdin(false)
                .stdout(true)
                .stderr(true);
            loop {
                if attempts >= REATTACH_ATTEMPTS {
                    break 'session None;
                }
                attempts += 1;
                tracing::info!(
                    pod,
                    attempt = attempts,
                    stdout = seen.0,
                    stderr = seen.1,
                    "the exec stream dropped; re-attaching to the command"
                );
                // Attaching starts nothing, so any failure may be retried.
                let budget = crate::retry::Budget::new(&self.config.request_budget);
                let again = budget
                    .run("exec", true, || {
                        crate::session::connect(
                            &self.client,
                            self.namespace(),
                            &pod,
                            &argv,
                            &params,
                        )
                    })
                    .await;
                match again {
                    Ok(c) => {
                        end = crate::session::StdinEnd::Bounded;
                        conn = Some(c);
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(pod, error = %e.into_error("re-attach"), "could not re-attach");
                    }
                }
            }
        };
        match status {
            Some(s) => {
                guard.disarm();
                let code = exit_code(&s)?;
                if code == 137 {
                    match self.oom_killed(&pod, req.container).await {
                        Killed::ByOom(e) => return Err(e),
                        // The container went with the command (cgroup v2's group OOM
                        // kill, an eviction, a deletion), and its status may lag.
                        Killed::WithContainer => self.container_end(&pod, container).await?,
                        Killed::Alone => {}
                    }
                }
                Ok(code)
            }
            None if end == crate::session::StdinEnd::CloseSession => Err(Error::lost(format!(
                "the exec session in pod {pod} ended with its stdin: the API server answered \
                 with v4.channel.k8s.io, which cannot end stdin alone"
            ))),
            None => Err(Error::lost(format!(
                "the exec stream of pod {pod} ended without an exit status"
            ))),
        }
    }
}

/// What killed a command that died by SIGKILL (exit 137).
enum Killed {
    /// The out-of-memory killer, the command alone: the error to report.
    ByOom(Error),
    /// Its container stopped with it: the container's status says why.
    WithContainer,
    /// Nothing the container shows: a SIGKILL of the command's own making.
    Alone,
}

impl KubeBackend {
    /// How commands of `container` are started: the main container's through the
    /// step-pod helper when the pods have it, the transfer container's (busybox) and a
    /// main container with an operator's own pause command through `env`.
    pub(crate) fn launcher(&self, container: Container) -> Launcher {
        let helper = self.config.step_helper_image.is_some()
            && self.config.pause_command.is_none()
            && container == Container::Main;
        if helper {
            Launcher::Helper
        } else {
            Launcher::Env
        }
    }

    /// What killed a command that died by SIGKILL, though nothing in the pod may say so
    /// yet. With cgroup v1, or `singleProcessOOMKill: true` (1.32+), the kernel kills
    /// only the largest process (the command) and the container carries on without an
    /// `OOMKilled` status; the container's cgroup counts it in `oom_kill`
    /// (`memory.events`, `memory.oom_control`), which one more exec reads, and a count
    /// above the last one seen in this pod is this command's. That exec refused with
    /// `container not found` means the container went with the command: the runtime
    /// knows at once, while its status can take a while to reach the API. `Alone` when
    /// the count did not rise or cannot be read (no `sh` or `cat` in the image: the
    /// runtime still started the exec, so the container runs).
    async fn oom_killed(&self, pod: &str, container: Container) -> Killed {
        // Through the helper the counter is read by the helper itself, so no `sh` or
        // `cat` is needed.
        const READ_FIRST: &str =
            "for f in \"$@\"; do cat \"$f\" 2>/dev/null && exit 0; done; exit 1";
        let mut argv = match self.launcher(container) {
            Launcher::Helper => vec![INSTALLED_HELPER.to_owned(), "read-first".to_owned()],
            Launcher::Env => vec![
                "sh".to_owned(),
                "-c".to_owned(),
                READ_FIRST.to_owned(),
                "sh".to_owned(),
            ],
        };
        argv.extend(self.config.oom_counter_files.iter().cloned());
        let mut req = ExecRequest::new(pod, argv);
        req.container = container;
        let out = Arc::new(jetbridge_core::ports::CaptureOutput::new());
        match self.exec(req, out.clone()).await {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::Conflict => return Killed::WithContainer,
            _ => return Killed::Alone,
        }
        let text = String::from_utf8_lossy(&out.stdout()).into_owned();
        let Some(count) = text
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse::<u64>().ok())
        else {
            return Killed::Alone;
        };
        let mut seen = self.oom_seen.lock().unwrap_or_else(|e| e.into_inner());
        let before = seen.insert(pod.to_owned(), count).unwrap_or(0);
        if count <= before {
            return Killed::Alone;
        }
        Killed::ByOom(Error::out_of_memory(format!(
            "the command was killed by the out-of-memory killer (exit 137; the container's \
             oom_kill count went from {before} to {count}); raise the step's memory limit"
        )))
    }

    /// Wait for the status of `container`, which stopped with a command, to say why:
    /// `OutOfMemory` when it was OOM-killed (the pod itself may stay Running, its other
    /// containers running on), `Ok` when it ended otherwise (the caller asks the pod,
    /// where an eviction or a deletion shows), `Lost` when nothing says so within
    /// [`CONTAINER_END_WAIT`] or the pod goes. The pod is listed, then watched from the
    /// list's version, within one request budget.
    async fn container_end(&self, pod: &str, container: &str) -> Result<()> {
        use futures::StreamExt;
        use kube::api::{ListParams, WatchEvent, WatchParams};
        let budget = crate::retry::Budget::new(&self.config.request_budget);
        let deadline = tokio::time::Instant::now() + CONTAINER_END_WAIT;
        let fields = format!("metadata.name={pod}");
        let lost = |why: &str| {
            Error::lost(format!(
                "container {container} of pod {pod} stopped with the command (exit 137) \
                 and {why}"
            ))
        };
        let verdict = |end: crate::status::ContainerEnd| match end {
            crate::status::ContainerEnd::OomKilled(m) => Err(Error::out_of_memory(format!(
                "the command was killed by the out-of-memory killer with its container \
                 ({m}); raise the step's memory limit"
            ))),
            crate::status::ContainerEnd::Other(_) => Ok(()),
        };
        loop {
            let params = ListParams::default().fields(&fields);
            let list = budget
                .run("get pod", true, || self.api.list(&params))
                .await
                .map_err(|e| e.into_error(&format!("getting pod {pod}")))?;
            let version = list.metadata.resource_version.clone().unwrap_or_default();
            let Some(now) = list.items.into_iter().next() else {
                return Err(lost("the pod is gone"));
            };
            if let Some(end) = crate::status::container_end(&now, container) {
                return verdict(end);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(lost(&format!(
                    "its status did not say why within {}s",
                    CONTAINER_END_WAIT.as_secs()
                )));
            }
            let secs = u32::try_from(left.as_secs().clamp(1, 290)).unwrap_or(290);
            let watch = WatchParams::default().fields(&fields).timeout(secs);
            let Ok(stream) = self.api.watch(&watch, &version).await else {
                // A failed watch costs a request of the budget; a list starts again.
                budget.take("watch pod")?;
                continue;
            };
            let mut stream = std::pin::pin!(stream);
            while let Ok(Some(event)) = tokio::time::timeout_at(deadline, stream.next()).await {
                match event {
                    Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)) => {
                        if let Some(end) = crate::status::container_end(&p, container) {
                            return verdict(end);
                        }
                    }
                    Ok(WatchEvent::Deleted(_)) => return Err(lost("the pod was deleted")),
                    Ok(WatchEvent::Bookmark(_)) => {}
                    // Expired history or a broken stream: list again.
                    Ok(WatchEvent::Error(_)) | Err(_) => break,
                }
            }
        }
    }
}

/// Random bytes for exec ids (a v4 UUID's, from the OS generator).
fn uuid_bytes() -> [u8; 16] {
    *uuid::Uuid::new_v4().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn plain_argv_stays_as_is() {
        let req = ExecRequest::new("p", v(&["tar", "-c", "-f", "-", "."]));
        assert_eq!(
            wrap_argv(&req, "id1").unwrap(),
            v(&["env", "JETBRIDGE_EXEC_ID=id1", "tar", "-c", "-f", "-", "."])
        );
        let req = ExecRequest::new("p", v(&["true"])).dir(".");
        assert_eq!(
            wrap_argv(&req, "id1").unwrap(),
            v(&["env", "JETBRIDGE_EXEC_ID=id1", "true"])
        );
    }

    #[test]
    fn dir_and_env_are_arguments_not_script() {
        let env = BTreeMap::from([("A".to_owned(), "x; rm -rf /".to_owned())]);
        let req = ExecRequest::new("p", v(&["echo", "$(id)"]))
            .dir("my dir/$(x)")
            .env(env);
        assert_eq!(
            wrap_argv(&req, "id1").unwrap(),
            v(&[
                "env",
                "JETBRIDGE_EXEC_ID=id1",
                "A=x; rm -rf /",
                "sh",
                "-c",
                CD_SCRIPT,
                "sh",
                "my dir/$(x)",
                "echo",
                "$(id)"
            ])
        );
    }

    #[test]
    fn bounded_stdin_goes_after_env_and_before_the_directory() {
        let env = BTreeMap::from([("A".to_owned(), "1".to_owned())]);
        let req = ExecRequest::new("p", v(&["tar", "-x", "-f", "-"]))
            .dir("out")
            .env(env);
        assert_eq!(
            wrap_argv_bounded(&req, "id1", 10240).unwrap(),
            v(&[
                "env",
                "JETBRIDGE_EXEC_ID=id1",
                "A=1",
                "sh",
                "-c",
                BOUNDED_STDIN_SCRIPT,
                "sh",
                "10240",
                "sh",
                "-c",
                CD_SCRIPT,
                "sh",
                "out",
                "tar",
                "-x",
                "-f",
                "-"
            ])
        );
    }

    #[test]
    fn through_the_helper_no_program_of_the_image_wraps_the_command() {
        let env = BTreeMap::from([("A".to_owned(), "1 2".to_owned())]);
        let req = ExecRequest::new("p", v(&["/app/run", "--x=$(y)"]))
            .dir("my dir")
            .env(env);
        assert_eq!(
            wrap_argv_with(&req, "id1", Launcher::Helper, Some(7)).unwrap(),
            v(&[
                INSTALLED_HELPER,
                "exec",
                "--record",
                "/.jetbridge-runs/id1",
                "--dir",
                "my dir",
                "--stdin-len",
                "7",
                "JETBRIDGE_EXEC_ID=id1",
                "A=1 2",
                "--",
                "/app/run",
                "--x=$(y)"
            ])
        );
        let bare = ExecRequest::new("p", v(&["true"]));
        assert_eq!(
            wrap_argv_with(&bare, "id2", Launcher::Helper, None).unwrap(),
            v(&[
                INSTALLED_HELPER,
                "exec",
                "--record",
                "/.jetbridge-runs/id2",
                "JETBRIDGE_EXEC_ID=id2",
                "--",
                "true"
            ])
        );
        // The same refusals as through `env`.
        let bad = ExecRequest::new("p", v(&["true"])).dir("../up");
        assert!(wrap_argv_with(&bad, "i", Launcher::Helper, None).is_err());
        assert_eq!(
            kill_argv(Launcher::Helper, "id1"),
            v(&[INSTALLED_HELPER, "kill", "id1"])
        );
    }

    #[test]
    fn the_bounded_script_passes_exactly_its_count_and_the_exit_status() {
        // Run by this machine's sh and head, with more input than the count and the
        // pipe left open, as a v4 session leaves it.
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        let mut child = Command::new("sh")
            .args(["-c", BOUNDED_STDIN_SCRIPT, "sh", "5", "sh", "-c"])
            .arg("cat > /dev/null; exit 3")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello").unwrap();
        // The pipe stays open: the command must end on the count alone.
        let status = child.wait().unwrap();
        drop(stdin);
        assert_eq!(status.code(), Some(3));
        let out = Command::new("sh")
            .args(["-c", BOUNDED_STDIN_SCRIPT, "sh", "3", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(b"abcdef")?;
                c.wait_with_output()
            })
            .unwrap();
        assert_eq!(out.stdout, b"abc");
    }

    #[test]
    fn bad_requests() {
        use jetbridge_core::ErrorKind;
        let kind = |r: ExecRequest| wrap_argv(&r, "id").unwrap_err().kind();
        assert_eq!(kind(ExecRequest::new("p", vec![])), ErrorKind::Invalid);
        assert_eq!(
            kind(ExecRequest::new("p", v(&["x"])).dir("/abs")),
            ErrorKind::Invalid
        );
        assert_eq!(
            kind(ExecRequest::new("p", v(&["x"])).dir("a/../..")),
            ErrorKind::Invalid
        );
        let env = BTreeMap::from([("A=B".to_owned(), "x".to_owned())]);
        assert_eq!(
            kind(ExecRequest::new("p", v(&["x"])).env(env)),
            ErrorKind::Invalid
        );
        let env = BTreeMap::from([(EXEC_ID_VAR.to_owned(), "x".to_owned())]);
        assert_eq!(
            kind(ExecRequest::new("p", v(&["x"])).env(env)),
            ErrorKind::Invalid
        );
        let mut r = ExecRequest::new("p", v(&["x"]));
        r.user = Some("root".into());
        assert_eq!(kind(r), ErrorKind::Unsupported);
    }

    #[test]
    fn exit_codes_from_status() {
        let s: Status = serde_json::from_str(r#"{"metadata":{},"status":"Success"}"#).unwrap();
        assert_eq!(exit_code(&s).unwrap(), 0);
        let s: Status = serde_json::from_str(
            r#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#,
        )
        .unwrap();
        assert_eq!(exit_code(&s).unwrap(), 3);
        let s: Status = serde_json::from_str(
            r#"{"status":"Failure","reason":"InternalError","message":"executable file not found"}"#,
        )
        .unwrap();
        let e = exit_code(&s).unwrap_err();
        assert!(e.message().contains("executable file not found"));
        assert_eq!(
            e.kind(),
            jetbridge_core::ErrorKind::Invalid,
            "the image must change"
        );
        let s: Status = serde_json::from_str(
            r#"{"status":"Failure","reason":"InternalError","message":"the runtime broke"}"#,
        )
        .unwrap();
        assert_eq!(
            exit_code(&s).unwrap_err().kind(),
            jetbridge_core::ErrorKind::Other
        );
        // 1.30+: the kubelet's refusal for a stopped container, through the translator.
        let s: Status = serde_json::from_str(
            r#"{"status":"Failure","reason":"InternalError","message":"Internal error occurred: container not found (\"main\")"}"#,
        )
        .unwrap();
        assert_eq!(
            exit_code(&s).unwrap_err().kind(),
            jetbridge_core::ErrorKind::Conflict
        );
        let s: Status =
            serde_json::from_str(r#"{"status":"Failure","reason":"NonZeroExitCode"}"#).unwrap();
        assert_eq!(
            exit_code(&s).unwrap_err().kind(),
            jetbridge_core::ErrorKind::Lost
        );
    }
}
