//! The [`Exec`] port: commands in a pod's containers over the WebSocket exec API.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use jetbridge_core::ports::{
    Container, Exec, ExecCapabilities, ExecRequest, OutputSink, OutputStream,
};
use jetbridge_core::{Error, ErrorKind, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::AttachParams;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::manifest::{HELPER_CONTAINER, MAIN_CONTAINER};
use crate::pods::KubeBackend;

/// The script that gives Kubernetes exec (which has no working directory option) one:
/// `$1` is the directory, the rest is the command. The directory and the command are
/// passed as arguments, never pasted into the script.
pub const CD_SCRIPT: &str = "cd \"$1\" && shift && exec \"$@\"";

/// Buffer between the WebSocket task and this adapter, per stream.
const STREAM_BUF: usize = 64 * 1024;

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

/// How long buffered output is drained after a session broke without a status.
const DRAIN_AFTER_LOSS: std::time::Duration = std::time::Duration::from_millis(200);

/// How long a cancellation may take to reach the container.
const KILL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The argv actually exec'd for `req`: `env JETBRIDGE_EXEC_ID=<id> K=V ...`, then
/// `sh -c CD_SCRIPT sh DIR ...` when it has a directory, then its own argv.
pub fn wrap_argv(req: &ExecRequest, exec_id: &str) -> Result<Vec<String>> {
    if req.argv.is_empty() {
        return Err(Error::invalid("exec needs a command: argv is empty"));
    }
    if req.user.is_some() {
        return Err(Error::unsupported(
            "running commands as another user is not supported on Kubernetes",
        ));
    }
    let mut out = vec!["env".to_owned(), format!("{EXEC_ID_VAR}={exec_id}")];
    {
        for (k, v) in &req.env {
            if k.is_empty()
                || k.contains('=')
                || k.contains('\0')
                || v.contains('\0')
                || k == EXEC_ID_VAR
            {
                return Err(Error::invalid(format!(
                    "environment variable name {k:?} is not valid"
                )));
            }
            out.push(format!("{k}={v}"));
        }
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
        out.extend(
            ["sh", "-c", CD_SCRIPT, "sh", dir]
                .into_iter()
                .map(str::to_owned),
        );
    }
    out.extend(req.argv.iter().cloned());
    Ok(out)
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
    Err(Error::other(format!(
        "the command could not be run: {}",
        status.message.as_deref().unwrap_or("no message")
    )))
}

/// Stops the command of an exec that ends without its status (the future dropped, or
/// the stream lost): Kubernetes would let it run on unobserved.
struct KillOnDrop {
    api: Option<kube::Api<k8s_openapi::api::core::v1::Pod>>,
    pod: String,
    container: &'static str,
    exec_id: String,
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
        let id = std::mem::take(&mut self.exec_id);
        let params = AttachParams::default()
            .container(self.container)
            .stdin(false)
            .stdout(false)
            .stderr(true);
        rt.spawn(async move {
            let argv = ["sh", "-c", KILL_SCRIPT, "sh", id.as_str()];
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

async fn pump(
    mut reader: impl AsyncRead + Unpin,
    stream: OutputStream,
    sink: &dyn OutputSink,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; STREAM_BUF];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        sink.write(stream, &buf[..n]);
    }
}

#[async_trait]
impl Exec for KubeBackend {
    fn capabilities(&self) -> ExecCapabilities {
        ExecCapabilities::all().with_user(false)
    }

    async fn exec(&self, mut req: ExecRequest, output: Arc<dyn OutputSink>) -> Result<i32> {
        let exec_id = hex::encode(&uuid_bytes()[..8]);
        let argv = wrap_argv(&req, &exec_id)?;
        let container = match req.container {
            Container::Main => MAIN_CONTAINER,
            Container::Transfer => HELPER_CONTAINER,
        };
        let stdin = req.stdin.take();
        let params = AttachParams {
            container: Some(container.to_owned()),
            stdin: stdin.is_some(),
            stdout: true,
            stderr: true,
            tty: false,
            max_stdin_buf_size: Some(STREAM_BUF),
            max_stdout_buf_size: Some(STREAM_BUF),
            max_stderr_buf_size: Some(STREAM_BUF),
        };
        let pod = req.pod.as_str();
        let budget = crate::retry::Budget::new(&self.config.request_budget);
        // Only failures that prove the command never started are retried: a command is
        // never run twice.
        let mut attached = match budget
            .run("exec", false, || self.api.exec(pod, argv.clone(), &params))
            .await
        {
            Ok(a) => a,
            Err(e) => {
                let err = e.into_error(&format!("exec in pod {pod}"));
                // 400: the pod or container is not running (completed, not started).
                return Err(match err.kind() {
                    ErrorKind::Invalid => Error::conflict(err.message().to_owned()),
                    _ => err,
                });
            }
        };
        tracing::debug!(pod, container, "exec started");
        let mut guard = KillOnDrop {
            api: Some(self.api.clone()),
            pod: pod.to_owned(),
            container,
            exec_id,
        };

        let status = attached.take_status();
        let stdout = attached.stdout();
        let stderr = attached.stderr();
        let writer = attached.stdin();
        let sink = &*output;

        let outputs = async {
            let out = async {
                match stdout {
                    Some(r) => pump(r, OutputStream::Stdout, sink).await,
                    None => Ok(()),
                }
            };
            let err = async {
                match stderr {
                    Some(r) => pump(r, OutputStream::Stderr, sink).await,
                    None => Ok(()),
                }
            };
            let pumps = futures::future::join(out, err);
            let status = async {
                match status {
                    Some(s) => s.await,
                    None => None,
                }
            };
            tokio::pin!(pumps, status);
            // kube closes the output pipes when the session ends cleanly, but not when it
            // breaks; so once the session has ended without a status, take what is
            // buffered and stop waiting for an end of file that never comes.
            let (outputs, status) = tokio::select! {
                o = &mut pumps => (Some(o), status.await),
                s = &mut status => match s {
                    Some(s) => (Some(pumps.await), Some(s)),
                    None => (tokio::time::timeout(DRAIN_AFTER_LOSS, pumps).await.ok(), None),
                },
            };
            if let Some((a, b)) = outputs {
                a.and(b)
                    .map_err(|e| Error::lost(format!("reading exec output from pod {pod}: {e}")))?;
            }
            Ok::<_, Error>(status)
        };
        let feed = async {
            let (Some(mut stream), Some(mut w)) = (stdin, writer) else {
                return Ok(());
            };
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| e.context("reading stdin for exec"))?;
                if w.write_all(&chunk).await.is_err() {
                    // The session ended; its status tells how.
                    return Ok(());
                }
            }
            // kube 5 sends the end of stdin (v5 close frame) on shutdown, not on drop.
            let _ = w.shutdown().await;
            Ok::<(), Error>(())
        };
        tokio::pin!(outputs, feed);
        let mut fed = false;
        // The feed is dropped as soon as the outputs end: a command that exits without
        // reading all its stdin must not leave us blocked on a full pipe.
        let status = loop {
            tokio::select! {
                r = &mut outputs => break r?,
                r = &mut feed, if !fed => {
                    fed = true;
                    // A failing stdin stream aborts the command (dropping `attached`
                    // closes the WebSocket) rather than passing it truncated input.
                    r?;
                }
            }
        };
        drop(attached);
        match status {
            Some(s) => {
                guard.disarm();
                exit_code(&s)
            }
            None => Err(Error::lost(format!(
                "the exec stream of pod {pod} ended without an exit status"
            ))),
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
        let s: Status =
            serde_json::from_str(r#"{"status":"Failure","reason":"NonZeroExitCode"}"#).unwrap();
        assert_eq!(
            exit_code(&s).unwrap_err().kind(),
            jetbridge_core::ErrorKind::Lost
        );
    }
}
