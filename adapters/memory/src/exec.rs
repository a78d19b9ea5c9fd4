//! [`MemoryBackend`]'s exec: run a program against a pod's filesystem, stopped by the
//! pod's fate (deletion, eviction, OOM) or by dropping the future.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use jetbridge_core::ports::{
    Container, Exec, ExecCapabilities, ExecRequest, OutputSink, OutputStream, PodState,
    collect_stream,
};
use jetbridge_core::{Error, Result};
use tokio::sync::Notify;

use crate::faults::after;
use crate::fs::join;
use crate::pods::{BackendOp, Kill, MemoryBackend};
use crate::programs::{self, Output, ProgramContext, Sys};
use crate::record::{ShellRun, TeeSink, snapshot};

/// Passes the first chunk of output on, then signals that the stream is to be dropped
/// and swallows the rest.
struct DroppingSink {
    inner: Arc<dyn OutputSink>,
    fired: AtomicBool,
    notify: Arc<Notify>,
}

impl OutputSink for DroppingSink {
    fn write(&self, stream: OutputStream, data: &[u8]) {
        if !self.fired.swap(true, Ordering::SeqCst) {
            self.inner.write(stream, data);
            self.notify.notify_one();
        }
    }
}

#[async_trait]
impl Exec for MemoryBackend {
    fn capabilities(&self) -> ExecCapabilities {
        ExecCapabilities::all()
    }

    async fn exec(&self, req: ExecRequest, output: Arc<dyn OutputSink>) -> Result<i32> {
        self.shared.execs.fetch_add(1, Ordering::SeqCst);
        let late = self.shared.faults.before(BackendOp::Exec)?;
        let r = self.run_exec(req, output).await;
        after(late, r)
    }
}

impl MemoryBackend {
    async fn run_exec(&self, req: ExecRequest, output: Arc<dyn OutputSink>) -> Result<i32> {
        if req.container == Container::Transfer {
            return Err(Error::unsupported("memory pods have no helper container"));
        }
        if req.argv.is_empty() {
            return Err(Error::invalid("exec needs a non-empty argv"));
        }
        let (fs, mut env, image, mut kill_rx, drop_stream) = {
            let mut s = self.shared.lock();
            let p = s
                .pods
                .get(&req.pod)
                .ok_or_else(|| Error::not_found(format!("pod {}", req.pod)))?;
            if p.state != PodState::Running {
                return Err(Error::conflict(format!(
                    "pod {} is not running ({:?})",
                    req.pod, p.state
                )));
            }
            let got = (
                p.fs.clone(),
                p.env.clone(),
                p.image.clone(),
                p.kill_tx.subscribe(),
            );
            let drop_stream = s.drop_streams > 0;
            if drop_stream {
                s.drop_streams -= 1;
            }
            (got.0, got.1, got.2, got.3, drop_stream)
        };
        let cwd = join(MemoryBackend::WORKDIR, req.dir.as_deref().unwrap_or("."));
        if !fs.lock().is_dir(&cwd) {
            return Err(Error::not_found(format!(
                "working directory {cwd} does not exist in pod {}",
                req.pod
            )));
        }
        env.extend(req.env);
        let shell_log = self
            .shared
            .shell_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|_| is_shell(&req.argv));
        let (output, tee) = match &shell_log {
            Some(_) => {
                let tee = Arc::new(TeeSink::new(output));
                (tee.clone() as Arc<dyn OutputSink>, Some(tee))
            }
            None => (output, None),
        };
        let recorded = shell_log.as_ref().map(|_| {
            (
                req.argv.clone(),
                env.clone(),
                cwd.clone(),
                snapshot(&fs.lock()),
            )
        });
        let wants_stdin = recorded.is_some();
        let notify = Arc::new(Notify::new());
        let sink: Arc<dyn OutputSink> = if drop_stream {
            Arc::new(DroppingSink {
                inner: output,
                fired: AtomicBool::new(false),
                notify: notify.clone(),
            })
        } else {
            output
        };
        let sys = Arc::new(Sys {
            programs: self.shared.programs.clone(),
            image,
            pod: req.pod.clone(),
            versions: self.shared.versions.clone(),
            ran_program: AtomicBool::new(false),
        });
        let sys_seen = sys.clone();
        let fs_after = fs.clone();
        let stdin = req.stdin;
        let argv = req.argv;
        let run = async move {
            let stdin = match stdin {
                Some(s) => Bytes::from(collect_stream(s).await?),
                None => Bytes::new(),
            };
            let stdin_copy = wants_stdin.then(|| stdin.to_vec());
            let ctx = ProgramContext {
                argv,
                env,
                cwd,
                stdin,
                fs,
                stdout: Output::sink(sink.clone(), OutputStream::Stdout),
                stderr: Output::sink(sink, OutputStream::Stderr),
                sys,
            };
            programs::run(ctx).await.map(|code| (code, stdin_copy))
        };
        let lost = |why: &str| Error::lost(format!("exec in pod {}: {why}", req.pod));
        let result = tokio::select! {
            kill = kill_rx.wait_for(Option::is_some) => match kill.map(|k| *k) {
                Ok(Some(Kill::Oom)) => Ok(137),
                Ok(Some(Kill::Lost(why))) => Err(lost(why)),
                _ => Err(lost("pod vanished")),
            },
            r = run => r.map(|(code, stdin)| {
                if let (Some(log), Some(tee), Some((argv, env, cwd, before))) =
                    (&shell_log, &tee, recorded)
                {
                    if sys_seen.ran_program.load(Ordering::Relaxed) {
                        log.leave_out();
                    } else {
                        log.push(ShellRun {
                            argv,
                            env,
                            cwd,
                            stdin: stdin.unwrap_or_default(),
                            before,
                            after: snapshot(&fs_after.lock()),
                            stdout: tee.copy.stdout(),
                            stderr: tee.copy.stderr(),
                            status: code,
                        });
                    }
                }
                code
            }),
            () = notify.notified(), if drop_stream => Err(lost("stream dropped")),
        };
        if drop_stream {
            return Err(lost("stream dropped"));
        }
        result
    }
}

/// `sh` or `bash`, found as [`programs::run`] finds them (`sh -c ...`, `/bin/sh -ec ...`).
fn is_shell(argv: &[String]) -> bool {
    let name = argv.first().and_then(|a| programs::system_path(a));
    matches!(name, Some("sh" | "bash"))
}
