use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::ByteStream;
use crate::Result;

/// What an [`Exec`] adapter can do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExecCapabilities {
    /// Stdin can be streamed to the command.
    pub stdin: bool,
    /// A working directory can be given.
    pub working_dir: bool,
    /// Commands can run as another user.
    pub user: bool,
}

impl ExecCapabilities {
    /// Everything supported.
    pub fn all() -> Self {
        ExecCapabilities {
            stdin: true,
            working_dir: true,
            user: true,
        }
    }
    /// Set [`Self::user`].
    pub fn with_user(mut self, v: bool) -> Self {
        self.user = v;
        self
    }
}

/// The container of a pod a command runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Container {
    /// The step's own container.
    #[default]
    Main,
    /// A second container beside the step's, with the tools that move artifacts in
    /// and out (where [`PodCapabilities::transfer_container`](crate::ports::PodCapabilities::transfer_container)
    /// is set). The Kubernetes adapter maps it to its helper container.
    Transfer,
}

/// A command to run.
///
/// `#[non_exhaustive]`: build it with [`ExecRequest::new`] and the builder methods.
#[non_exhaustive]
pub struct ExecRequest {
    /// Pod name.
    pub pod: String,
    /// Which container.
    pub container: Container,
    /// argv; never a shell string.
    pub argv: Vec<String>,
    /// Extra environment. Not for secrets: adapters may carry it in the request itself
    /// (Kubernetes puts it in the exec URL, which API-server audit logs record); put
    /// secret values in [`PodSpec::env`](crate::ports::PodSpec::env) instead.
    pub env: BTreeMap<String, String>,
    /// Working directory relative to the pod's working directory (`None`: that directory).
    pub dir: Option<String>,
    /// Run as this user, where supported.
    pub user: Option<String>,
    /// Stdin; closed at the end of the stream. `None`: empty stdin.
    pub stdin: Option<ByteStream>,
}

impl std::fmt::Debug for ExecRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Env values may be secrets: print only their names.
        f.debug_struct("ExecRequest")
            .field("pod", &self.pod)
            .field("container", &self.container)
            .field("argv", &self.argv)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("dir", &self.dir)
            .field("user", &self.user)
            .field("stdin", &self.stdin.is_some())
            .finish()
    }
}

impl ExecRequest {
    /// Run `argv` in the main container of `pod`.
    pub fn new(pod: impl Into<String>, argv: Vec<String>) -> Self {
        ExecRequest {
            pod: pod.into(),
            container: Container::Main,
            argv,
            env: BTreeMap::new(),
            dir: None,
            user: None,
            stdin: None,
        }
    }
    /// Set the working directory.
    pub fn dir(mut self, dir: impl Into<String>) -> Self {
        self.dir = Some(dir.into());
        self
    }
    /// Set stdin.
    pub fn stdin(mut self, s: ByteStream) -> Self {
        self.stdin = Some(s);
        self
    }
    /// Set the container.
    pub fn container(mut self, c: Container) -> Self {
        self.container = c;
        self
    }
    /// Add environment.
    pub fn env(mut self, env: BTreeMap<String, String>) -> Self {
        self.env.extend(env);
        self
    }
    /// Run as `user`, where supported.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Receives a command's output as it arrives.
pub trait OutputSink: Send + Sync {
    /// A chunk of output (not necessarily whole lines).
    fn write(&self, stream: OutputStream, data: &[u8]);
}

/// An [`OutputSink`] that discards everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscardOutput;

impl OutputSink for DiscardOutput {
    fn write(&self, _: OutputStream, _: &[u8]) {}
}

/// An [`OutputSink`] that keeps everything in memory.
#[derive(Debug, Default)]
pub struct CaptureOutput {
    stdout: std::sync::Mutex<Vec<u8>>,
    stderr: std::sync::Mutex<Vec<u8>>,
}

impl CaptureOutput {
    /// A new, empty capture.
    pub fn new() -> Self {
        Self::default()
    }
    /// Everything written to stdout so far.
    pub fn stdout(&self) -> Vec<u8> {
        self.stdout.lock().map(|v| v.clone()).unwrap_or_default()
    }
    /// Everything written to stderr so far.
    pub fn stderr(&self) -> Vec<u8> {
        self.stderr.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl OutputSink for CaptureOutput {
    fn write(&self, stream: OutputStream, data: &[u8]) {
        let buf = match stream {
            OutputStream::Stdout => &self.stdout,
            OutputStream::Stderr => &self.stderr,
        };
        if let Ok(mut b) = buf.lock() {
            b.extend_from_slice(data);
        }
    }
}

/// Runs commands in running pods.
#[async_trait]
pub trait Exec: Send + Sync {
    /// What this adapter can do.
    fn capabilities(&self) -> ExecCapabilities;

    /// Run a command to completion, streaming its output to `output`; return its exit
    /// code. A stream that ends without an exit status is
    /// [`ErrorKind::Lost`](crate::ErrorKind::Lost), never a success. A pod that is not
    /// running is `NotFound` or `Conflict`. Dropping the future kills the command.
    async fn exec(&self, req: ExecRequest, output: Arc<dyn OutputSink>) -> Result<i32>;
}

#[async_trait]
impl<T: Exec + ?Sized> Exec for Arc<T> {
    fn capabilities(&self) -> ExecCapabilities {
        (**self).capabilities()
    }
    async fn exec(&self, req: ExecRequest, output: Arc<dyn OutputSink>) -> Result<i32> {
        (**self).exec(req, output).await
    }
}

#[async_trait]
impl<T: Exec + ?Sized> Exec for Box<T> {
    fn capabilities(&self) -> ExecCapabilities {
        (**self).capabilities()
    }
    async fn exec(&self, req: ExecRequest, output: Arc<dyn OutputSink>) -> Result<i32> {
        (**self).exec(req, output).await
    }
}
