//! The [`Exec`] suite: exit codes, stdout and stderr, stdin, environment, working
//! directory, tar streaming, failures on pods that are not running, cancellation and
//! streaming of output.
//!
//! Each case starts its own pod (through [`Pods`]) and deletes it at the end. Commands
//! stay within the shell subset every backend supports (see the crate README).

use jetbridge_core::ports::DeleteOpts;
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jetbridge_core::ErrorKind;
use jetbridge_core::ports::{
    CaptureOutput, DiscardOutput, Exec, ExecRequest, GarbageOpts, OutputSink, OutputStream, Pods,
    bytes_stream,
};
use tokio::sync::Notify;

use crate::pods::{PodGroup, until_gone};
use crate::support::{CaseError, CaseOutcome, CaseResult, outcome};
use crate::{BackendSubject, ensure, ensure_eq, ensure_kind, fail, skip};

/// Every case of the suite, in the order [`run_all`] runs them.
pub const CASES: &[&str] = &[
    "exit_code_zero",
    "exit_code_nonzero",
    "stdout_and_stderr_are_separate",
    "stdin_reaches_cat_byte_exact",
    "env_is_passed",
    "working_dir_is_used",
    "files_persist_between_execs",
    "tar_round_trip",
    "exec_in_missing_pod_fails",
    "exec_in_deleted_pod_fails",
    "cancelled_exec_leaves_pod_usable",
    "output_is_streamed_before_exit",
    "garbage_collection_spares_live_pods",
];

/// Run the case called `name` against `subject`; `None` if there is no such case.
pub async fn run_case(subject: &BackendSubject, name: &str) -> Option<CaseResult> {
    let p = &*subject.pods;
    let e = &*subject.exec;
    let i = subject.image.as_str();
    Some(match name {
        "exit_code_zero" => Box::pin(exit_code_zero(p, e, i)).await,
        "exit_code_nonzero" => Box::pin(exit_code_nonzero(p, e, i)).await,
        "stdout_and_stderr_are_separate" => Box::pin(stdout_and_stderr_are_separate(p, e, i)).await,
        "stdin_reaches_cat_byte_exact" => Box::pin(stdin_reaches_cat_byte_exact(p, e, i)).await,
        "env_is_passed" => Box::pin(env_is_passed(p, e, i)).await,
        "working_dir_is_used" => Box::pin(working_dir_is_used(p, e, i)).await,
        "files_persist_between_execs" => Box::pin(files_persist_between_execs(p, e, i)).await,
        "tar_round_trip" => Box::pin(tar_round_trip(p, e, i)).await,
        "exec_in_missing_pod_fails" => Box::pin(exec_in_missing_pod_fails(p, e, i)).await,
        "exec_in_deleted_pod_fails" => Box::pin(exec_in_deleted_pod_fails(p, e, i)).await,
        "cancelled_exec_leaves_pod_usable" => {
            Box::pin(cancelled_exec_leaves_pod_usable(p, e, i)).await
        }
        "output_is_streamed_before_exit" => Box::pin(output_is_streamed_before_exit(p, e, i)).await,
        "garbage_collection_spares_live_pods" => {
            Box::pin(garbage_collection_spares_live_pods(p, e, i)).await
        }
        _ => return None,
    })
}

/// Run every case against `subject`, one after another.
pub async fn run_all(subject: &BackendSubject) -> Vec<CaseOutcome> {
    let mut out = Vec::with_capacity(CASES.len());
    for name in CASES {
        out.push(outcome(name, run_case(subject, name)).await);
    }
    out
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

fn sh(script: &str) -> Vec<String> {
    argv(&["sh", "-c", script])
}

/// Run `req`, capturing output; returns (exit code, stdout, stderr).
async fn run(exec: &dyn Exec, req: ExecRequest) -> Result<(i32, Vec<u8>, Vec<u8>), CaseError> {
    let cap = Arc::new(CaptureOutput::new());
    let code = exec.exec(req, cap.clone()).await?;
    Ok((code, cap.stdout(), cap.stderr()))
}

/// Run `req` and require exit code 0; returns stdout.
async fn run_ok(exec: &dyn Exec, req: ExecRequest) -> Result<Vec<u8>, CaseError> {
    let what = format!("{:?}", req.argv);
    let (code, out, err) = run(exec, req).await?;
    if code != 0 {
        return Err(CaseError::here(format!(
            "{what} exited {code}; stderr: {}",
            String::from_utf8_lossy(&err)
        )));
    }
    Ok(out)
}

/// Start a pod for one exec case, run `body` with its name, delete it.
macro_rules! with_pod {
    ($pods:expr, $image:expr, $tag:expr, |$name:ident| $body:block) => {{
        let group = PodGroup::new($pods, $image, $tag);
        let r: CaseResult = async {
            let $name: String = group.start_one().await?;
            $body
        }
        .await;
        group.finish(r).await
    }};
}

/// `true` exits 0.
pub async fn exit_code_zero(pods: &dyn Pods, exec: &dyn Exec, image: &str) -> CaseResult {
    with_pod!(pods, image, "exit0", |pod| {
        let (code, _, _) = run(exec, ExecRequest::new(&pod, argv(&["true"]))).await?;
        ensure_eq!(code, 0);
        let (code, _, _) = run(exec, ExecRequest::new(&pod, sh("exit 0"))).await?;
        ensure_eq!(code, 0);
        Ok(())
    })
}

/// Non-zero exit codes come back as they are.
pub async fn exit_code_nonzero(pods: &dyn Pods, exec: &dyn Exec, image: &str) -> CaseResult {
    with_pod!(pods, image, "exitn", |pod| {
        let (code, _, _) = run(exec, ExecRequest::new(&pod, sh("exit 3"))).await?;
        ensure_eq!(code, 3);
        let (code, _, _) = run(exec, ExecRequest::new(&pod, argv(&["false"]))).await?;
        ensure_eq!(code, 1);
        let (code, _, _) = run(exec, ExecRequest::new(&pod, sh("exit 125"))).await?;
        ensure_eq!(code, 125);
        Ok(())
    })
}

/// Stdout and stderr arrive on their own streams.
pub async fn stdout_and_stderr_are_separate(
    pods: &dyn Pods,
    exec: &dyn Exec,
    image: &str,
) -> CaseResult {
    with_pod!(pods, image, "streams", |pod| {
        let script = "echo to-out; echo to-err >&2; echo -n more-out; echo more-err 1>&2";
        let (code, out, err) = run(exec, ExecRequest::new(&pod, sh(script))).await?;
        ensure_eq!(code, 0);
        ensure_eq!(String::from_utf8_lossy(&out), "to-out\nmore-out");
        ensure_eq!(String::from_utf8_lossy(&err), "to-err\nmore-err\n");
        Ok(())
    })
}

/// Bytes (1 MiB, every byte value) streamed to `cat` come back unchanged; empty stdin
/// gives empty output.
pub async fn stdin_reaches_cat_byte_exact(
    pods: &dyn Pods,
    exec: &dyn Exec,
    image: &str,
) -> CaseResult {
    if !exec.capabilities().stdin {
        skip!("stdin is off");
    }
    with_pod!(pods, image, "stdin", |pod| {
        let payload = pseudo_random_bytes(1 << 20, 7);
        let req = ExecRequest::new(&pod, argv(&["cat"])).stdin(chunked(&payload, 64 * 1024));
        let out = run_ok(exec, req).await?;
        ensure_eq!(out.len(), payload.len(), "cat output length");
        ensure!(out == payload, "cat output differs from its input");
        let out = run_ok(exec, ExecRequest::new(&pod, argv(&["cat"]))).await?;
        ensure!(
            out.is_empty(),
            "cat with no stdin printed {} bytes",
            out.len()
        );
        Ok(())
    })
}

/// Extra environment reaches the command.
pub async fn env_is_passed(pods: &dyn Pods, exec: &dyn Exec, image: &str) -> CaseResult {
    with_pod!(pods, image, "env", |pod| {
        let env = BTreeMap::from([
            ("JB_CONF_ONE".to_owned(), "hello world".to_owned()),
            ("JB_CONF_TWO".to_owned(), "a'b\"c".to_owned()),
        ]);
        let req =
            ExecRequest::new(&pod, sh("echo \"$JB_CONF_ONE\"; echo \"${JB_CONF_TWO}\"")).env(env);
        let out = run_ok(exec, req).await?;
        ensure_eq!(String::from_utf8_lossy(&out), "hello world\na'b\"c\n");
        Ok(())
    })
}

/// `dir` sets the working directory, relative to the pod's working directory.
pub async fn working_dir_is_used(pods: &dyn Pods, exec: &dyn Exec, image: &str) -> CaseResult {
    if !exec.capabilities().working_dir {
        skip!("working_dir is off");
    }
    with_pod!(pods, image, "workdir", |pod| {
        run_ok(
            exec,
            ExecRequest::new(&pod, argv(&["mkdir", "-p", "wd/sub"])),
        )
        .await?;
        let out = run_ok(exec, ExecRequest::new(&pod, argv(&["pwd"])).dir("wd/sub")).await?;
        let pwd = String::from_utf8_lossy(&out);
        ensure!(
            pwd.trim_end().ends_with("/wd/sub"),
            "pwd in wd/sub printed {pwd:?}"
        );
        let base = run_ok(exec, ExecRequest::new(&pod, argv(&["pwd"]))).await?;
        let base = String::from_utf8_lossy(&base).trim_end().to_owned();
        ensure_eq!(pwd.trim_end(), format!("{base}/wd/sub"), "dir is relative");
        run_ok(
            exec,
            ExecRequest::new(&pod, sh("echo -n inside > here.txt")).dir("wd/sub"),
        )
        .await?;
        let out = run_ok(
            exec,
            ExecRequest::new(&pod, argv(&["cat", "wd/sub/here.txt"])),
        )
        .await?;
        ensure_eq!(String::from_utf8_lossy(&out), "inside");
        Ok(())
    })
}

/// A file written by one exec is there for the next one in the same pod.
pub async fn files_persist_between_execs(
    pods: &dyn Pods,
    exec: &dyn Exec,
    image: &str,
) -> CaseResult {
    with_pod!(pods, image, "persist", |pod| {
        run_ok(exec, ExecRequest::new(&pod, sh("echo first > note.txt"))).await?;
        run_ok(exec, ExecRequest::new(&pod, sh("echo second >> note.txt"))).await?;
        let out = run_ok(exec, ExecRequest::new(&pod, argv(&["cat", "note.txt"]))).await?;
        ensure_eq!(String::from_utf8_lossy(&out), "first\nsecond\n");
        let (code, _, _) = run(exec, ExecRequest::new(&pod, sh("test -f note.txt"))).await?;
        ensure_eq!(code, 0);
        let (code, _, _) = run(exec, ExecRequest::new(&pod, sh("test -f absent.txt"))).await?;
        ensure_eq!(code, 1);
        Ok(())
    })
}

/// A tree streamed in with `tar -x -f -` comes back out of `tar -c -f - .` with the
/// same directories and file contents.
pub async fn tar_round_trip(pods: &dyn Pods, exec: &dyn Exec, image: &str) -> CaseResult {
    let caps = exec.capabilities();
    if !caps.stdin || !caps.working_dir {
        skip!("tar streaming needs stdin and working_dir");
    }
    with_pod!(pods, image, "tar", |pod| {
        let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        files.insert("top.txt".into(), b"top\n".to_vec());
        files.insert("src/main.rs".into(), b"fn main() {}\n".to_vec());
        files.insert(
            "src/deep/er/data.bin".into(),
            pseudo_random_bytes(200_000, 3),
        );
        files.insert("empty-file".into(), Vec::new());
        let dirs = ["src", "src/deep", "src/deep/er", "empty-dir"];
        let archive = build_tar(&dirs, &files).map_err(|e| CaseError::here(e.to_string()))?;
        run_ok(exec, ExecRequest::new(&pod, argv(&["mkdir", "-p", "art"]))).await?;
        run_ok(
            exec,
            ExecRequest::new(&pod, argv(&["tar", "-x", "-f", "-"]))
                .dir("art")
                .stdin(chunked(&archive, 10_000)),
        )
        .await?;
        let out = run_ok(
            exec,
            ExecRequest::new(&pod, argv(&["tar", "-c", "-f", "-", "."])).dir("art"),
        )
        .await?;
        let (got_dirs, got_files) =
            read_tar(&out).map_err(|e| CaseError::here(format!("reading tar output: {e}")))?;
        ensure_eq!(got_files, files, "file contents after the round trip");
        for d in dirs {
            ensure!(got_dirs.contains(&d.to_owned()), "directory {d} is missing");
        }
        Ok(())
    })
}

/// Exec into a pod that does not exist fails with `NotFound` or `Conflict`.
pub async fn exec_in_missing_pod_fails(
    pods: &dyn Pods,
    exec: &dyn Exec,
    image: &str,
) -> CaseResult {
    let g = PodGroup::new(pods, image, "nopod");
    let name = g.spec().name;
    let r = async {
        ensure_kind!(
            exec.exec(
                ExecRequest::new(&name, argv(&["true"])),
                Arc::new(DiscardOutput)
            )
            .await,
            ErrorKind::NotFound | ErrorKind::Conflict
        );
        Ok(())
    }
    .await;
    g.finish(r).await
}

/// Exec into a deleted pod fails with `NotFound` or `Conflict`.
pub async fn exec_in_deleted_pod_fails(
    pods: &dyn Pods,
    exec: &dyn Exec,
    image: &str,
) -> CaseResult {
    with_pod!(pods, image, "deletedpod", |pod| {
        run_ok(exec, ExecRequest::new(&pod, argv(&["true"]))).await?;
        pods.delete(&pod, &DeleteOpts::grace(Duration::ZERO))
            .await?;
        until_gone(pods, &pod).await?;
        ensure_kind!(
            exec.exec(
                ExecRequest::new(&pod, argv(&["true"])),
                Arc::new(DiscardOutput)
            )
            .await,
            ErrorKind::NotFound | ErrorKind::Conflict
        );
        Ok(())
    })
}

/// Dropping the future of a running command kills it (it never finishes its work),
/// and the pod keeps taking commands.
pub async fn cancelled_exec_leaves_pod_usable(
    pods: &dyn Pods,
    exec: &dyn Exec,
    image: &str,
) -> CaseResult {
    with_pod!(pods, image, "cancel", |pod| {
        let long = exec.exec(
            ExecRequest::new(&pod, sh("sleep 3; echo late > late.txt")),
            Arc::new(DiscardOutput),
        );
        let start = Instant::now();
        if let Ok(r) = tokio::time::timeout(Duration::from_secs(1), long).await {
            fail!("a 3 s command ended after {:?}: {r:?}", start.elapsed());
        }
        let out = run_ok(exec, ExecRequest::new(&pod, sh("echo -n still-here"))).await?;
        ensure_eq!(String::from_utf8_lossy(&out), "still-here");
        // Past the point where the command would have written its file.
        tokio::time::sleep(Duration::from_secs(4).saturating_sub(start.elapsed())).await;
        let (code, _, _) = run(exec, ExecRequest::new(&pod, sh("test -f late.txt"))).await?;
        ensure_eq!(code, 1, "the cancelled command went on running");
        Ok(())
    })
}

/// A sink that wakes a waiter when a given byte shows up on stdout.
#[derive(Debug)]
struct WatchSink {
    seen: Mutex<Vec<u8>>,
    needle: u8,
    notify: Notify,
}

impl OutputSink for WatchSink {
    fn write(&self, stream: OutputStream, data: &[u8]) {
        if stream == OutputStream::Stdout {
            if let Ok(mut s) = self.seen.lock() {
                s.extend_from_slice(data);
            }
            if data.contains(&self.needle) {
                // notify_one keeps a permit, so a waiter that arrives later still wakes.
                self.notify.notify_one();
            }
        }
    }
}

/// Output reaches the sink while the command still runs, not only at its end.
pub async fn output_is_streamed_before_exit(
    pods: &dyn Pods,
    exec: &dyn Exec,
    image: &str,
) -> CaseResult {
    with_pod!(pods, image, "streaming", |pod| {
        let sink = Arc::new(WatchSink {
            seen: Mutex::new(Vec::new()),
            needle: b'a',
            notify: Notify::new(),
        });
        let run = exec.exec(
            ExecRequest::new(&pod, sh("echo a; sleep 4; echo b")),
            sink.clone(),
        );
        tokio::pin!(run);
        let start = Instant::now();
        tokio::select! {
            biased;
            r = &mut run => {
                fail!("the command ended ({r:?}) before its first line reached the sink");
            }
            _ = sink.notify.notified() => {}
        }
        let early = start.elapsed();
        let code = run.await?;
        ensure_eq!(code, 0);
        let total = start.elapsed();
        ensure!(
            total >= early + Duration::from_secs(2),
            "first output came at {early:?}, the end at {total:?}: not streamed"
        );
        let seen = sink.seen.lock().map(|s| s.clone()).unwrap_or_default();
        ensure_eq!(String::from_utf8_lossy(&seen), "a\nb\n");
        Ok(())
    })
}

/// Deterministic bytes covering every value (a xorshift generator).
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A byte stream of `data` in chunks of `chunk` bytes.
pub fn chunked(data: &[u8], chunk: usize) -> jetbridge_core::ports::ByteStream {
    if data.is_empty() {
        return bytes_stream(Vec::new());
    }
    let chunks: Vec<jetbridge_core::Result<bytes::Bytes>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures::stream::iter(chunks))
}

fn build_tar(dirs: &[&str], files: &BTreeMap<String, Vec<u8>>) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for d in dirs {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, d, std::io::empty())?;
    }
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data.as_slice())?;
    }
    b.into_inner()
}

type TarContents = (Vec<String>, BTreeMap<String, Vec<u8>>);

fn read_tar(data: &[u8]) -> std::io::Result<TarContents> {
    let mut dirs = Vec::new();
    let mut files = BTreeMap::new();
    let mut ar = tar::Archive::new(data);
    for entry in ar.entries()? {
        let mut entry = entry?;
        let path = crate::volumes::normalize(&entry.path()?.to_string_lossy());
        if path.is_empty() {
            continue;
        }
        match entry.header().entry_type() {
            tar::EntryType::Directory => dirs.push(path),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut buf = Vec::new();
                entry.read_to_end(&mut buf)?;
                files.insert(path, buf);
            }
            _ => {}
        }
    }
    Ok((dirs, files))
}

/// The pod adapter's garbage pass, with no grace at all, run while a pod with an
/// environment is being created and again once it runs, takes nothing the pod needs:
/// it starts, and its environment (task params; a Secret on Kubernetes) reaches
/// commands.
pub async fn garbage_collection_spares_live_pods(
    pods: &dyn Pods,
    exec: &dyn Exec,
    image: &str,
) -> CaseResult {
    let group = PodGroup::new(pods, image, "garbage");
    let r: CaseResult = async {
        let mut spec = group.spec();
        spec.env
            .insert("JB_CONF_PARAM".to_owned(), "kept".to_owned());
        pods.create(&spec).await?;
        let opts = || GarbageOpts::new(Duration::ZERO, std::time::SystemTime::now());
        let report = pods.collect_garbage(&opts()).await?;
        ensure!(
            report.errors.is_empty(),
            "garbage pass: {:?}",
            report.errors
        );
        crate::pods::wait_running(pods, &spec.name).await?;
        let report = pods.collect_garbage(&opts()).await?;
        ensure!(
            report.errors.is_empty(),
            "garbage pass: {:?}",
            report.errors
        );
        let out = run_ok(
            exec,
            ExecRequest::new(&spec.name, sh("echo \"$JB_CONF_PARAM\"")),
        )
        .await?;
        ensure_eq!(String::from_utf8_lossy(&out), "kept\n");
        Ok(())
    }
    .await;
    group.finish(r).await
}
