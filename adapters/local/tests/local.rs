//! Behaviour of the local backend against real processes and a real filesystem.

use jetbridge_core::ports::{DeleteOpts, WaitOpts};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use jetbridge_core::ErrorKind;
use jetbridge_core::digest::{Digest, TreeDigest};
use jetbridge_core::names::label;
use jetbridge_core::ports::{
    ByteStream, CaptureOutput, Container, CopySource, Exec, ExecRequest, Mount, MountInfo,
    MountSource, OutputSink, OutputStream, PodFailure, PodSpec, PodState, Pods, WaitFor,
    bytes_stream,
};
use jetbridge_local::{LocalBackend, LocalConfig};
use tempfile::TempDir;

fn backend(t: &TempDir) -> LocalBackend {
    LocalBackend::new(LocalConfig::new(t.path().join("root"))).unwrap()
}

fn spec(name: &str, handle: &str) -> PodSpec {
    let mut s = PodSpec::new(name, "host");
    s.labels.insert(label::HANDLE.into(), handle.into());
    s.labels
        .insert(label::MANAGED_BY.into(), label::MANAGED_BY_VALUE.into());
    s
}

fn mount(path: &str, source: MountSource) -> Mount {
    Mount::new(path, source)
}

fn host(p: &Path) -> MountInfo {
    MountInfo::HostPath {
        path: p.to_str().unwrap().into(),
    }
}

/// The sealed digest of the tree at `dir`, computed here independently of the copier
/// (what a volume store records at seal time).
fn tree_digest(dir: &Path) -> Digest {
    jetbridge_conformance::support::dir_digest(dir)
}

fn copy_of(vol: &Path) -> MountSource {
    MountSource::CopyOf(CopySource::new(host(vol), tree_digest(vol)).with_artifact("repo", "b-42"))
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(b: &LocalBackend, req: ExecRequest) -> Ran {
    let out = Arc::new(CaptureOutput::new());
    let code = b.exec(req, out.clone()).await.unwrap();
    Ran {
        code,
        stdout: String::from_utf8(out.stdout()).unwrap(),
        stderr: String::from_utf8(out.stderr()).unwrap(),
    }
}

async fn run_sh(b: &LocalBackend, pod: &str, script: &str) -> Ran {
    run(b, ExecRequest::new(pod, sh(script))).await
}

/// Whether `pid` is a live (non-zombie) process.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s[s.rfind(')').unwrap() + 2..].chars().next().unwrap();
            state != 'Z' && state != 'X'
        }
        Err(_) => false,
    }
}

async fn wait_dead(pids: &[i32], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if pids.iter().all(|&p| !alive(p)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Wait until the file `path` holds `n` pids, one per line.
async fn read_pids(path: &Path, n: usize) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            let pids: Vec<i32> = s.lines().filter_map(|l| l.trim().parse().ok()).collect();
            if pids.len() >= n {
                return pids;
            }
        }
        assert!(Instant::now() < deadline, "pids never written to {path:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const TWO_SLEEPERS: &str =
    "sleep 100 & echo $! > pids.tmp; echo $$ >> pids.tmp; mv pids.tmp pids; sleep 100";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_create_get_wait_list_delete() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    let before = std::time::SystemTime::now();
    let created = b.create(&spec("pod-a", "h1")).await.unwrap();
    assert_eq!(created.state, PodState::Running);
    assert!(created.created_at.unwrap() >= before - Duration::from_secs(1));
    assert!(b.work_dir("pod-a").unwrap().is_dir());

    let got = b.get("pod-a").await.unwrap();
    assert_eq!(got.state, PodState::Running);
    assert_eq!(got.labels.get(label::HANDLE).unwrap(), "h1");
    let w = b
        .wait(
            "pod-a",
            &WaitOpts::new(WaitFor::Running, Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert_eq!(w.state, PodState::Running);

    b.create(&spec("pod-b", "h2")).await.unwrap();
    let mut sel = BTreeMap::new();
    sel.insert(label::HANDLE.to_string(), "h2".to_string());
    let listed = b.list(&sel).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "pod-b");
    assert_eq!(b.list(&BTreeMap::new()).await.unwrap().len(), 2);

    b.delete("pod-a", &DeleteOpts::grace(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(
        b.get("pod-a").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(!b.sandbox_dir("pod-a").unwrap().exists());
    // Idempotent.
    b.delete("pod-a", &DeleteOpts::grace(Duration::from_secs(1)))
        .await
        .unwrap();
    b.delete("never-existed", &DeleteOpts::grace(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(b.list(&BTreeMap::new()).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_is_idempotent_on_handle() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    let first = b.create(&spec("pod-x", "h1")).await.unwrap();
    // Leave a trace so adoption is visibly the same sandbox.
    run_sh(&b, "pod-x", "echo mark > m").await;
    let again = b.create(&spec("pod-x", "h1")).await.unwrap();
    assert_eq!(again.created_at, first.created_at);
    assert!(b.work_dir("pod-x").unwrap().join("m").exists());
    let err = b.create(&spec("pod-x", "other")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_names_and_missing_pods() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    for bad in ["", "UPPER", "../escape", "a/b", &"x".repeat(64)] {
        let e = b.create(&PodSpec::new(bad, "host")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{bad:?}");
        assert_eq!(b.get(bad).await.unwrap_err().kind(), ErrorKind::NotFound);
    }
    assert_eq!(b.get("nope").await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(
        b.wait(
            "nope",
            &WaitOpts::new(WaitFor::Running, Duration::from_millis(10))
        )
        .await
        .unwrap_err()
        .kind(),
        ErrorKind::NotFound
    );
    let e = b
        .exec(
            ExecRequest::new("nope", vec!["true".into()]),
            Arc::new(CaptureOutput::new()),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_are_reported() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    let p = Pods::capabilities(&b);
    assert!(p.host_path_mounts && !p.shared_volume_mounts && !p.transfer_container && !p.images);
    let e = Exec::capabilities(&b);
    assert!(e.stdin && e.working_dir && !e.user);
}

/// Host processes share the host's network: a pod that must have none is refused before
/// anything of it exists, never run with the network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hermetic_pod_is_refused_and_nothing_is_made() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    assert!(!Pods::capabilities(&b).hermetic);
    let e = b
        .create(&spec("pod-sealed", "h").with_hermetic(true))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("pod-sealed")
            && msg.contains("hermetic: true")
            && msg.contains("Kubernetes backend"),
        "{msg}"
    );
    assert_eq!(
        b.get("pod-sealed").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let mut all = BTreeMap::new();
    all.insert(
        label::MANAGED_BY.to_owned(),
        label::MANAGED_BY_VALUE.to_owned(),
    );
    assert!(b.list(&all).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_reports_deletion_and_times_out() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    b.create(&spec("pod-w", "h")).await.unwrap();
    let start = Instant::now();
    let st = b
        .wait(
            "pod-w",
            &WaitOpts::new(WaitFor::Terminated, Duration::from_millis(300)),
        )
        .await
        .unwrap();
    assert_eq!(st.state, PodState::Running);
    assert!(start.elapsed() >= Duration::from_millis(300));

    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            b.wait(
                "pod-w",
                &WaitOpts::new(WaitFor::Terminated, Duration::from_secs(30)),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    b.delete("pod-w", &DeleteOpts::grace(Duration::from_secs(1)))
        .await
        .unwrap();
    let st = waiter.await.unwrap().unwrap();
    assert_eq!(st.state, PodState::Failed(PodFailure::Deleted));
    // Woken by the event, not by the periodic disk check.
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_output_and_reports_exit_codes() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    b.create(&spec("pod-e", "h")).await.unwrap();
    let r = run_sh(&b, "pod-e", "echo out; echo err >&2; exit 3").await;
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (3, "out\n", "err\n")
    );
    assert_eq!(run_sh(&b, "pod-e", "true").await.code, 0);
    assert_eq!(run_sh(&b, "pod-e", "kill -TERM $$").await.code, 143);
    assert_eq!(run_sh(&b, "pod-e", "kill -KILL $$").await.code, 137);
    let r = run(
        &b,
        ExecRequest::new("pod-e", vec!["echo".into(), "a b".into(), "$HOME".into()]),
    )
    .await;
    assert_eq!(r.stdout, "a b $HOME\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_stdin_and_uses_the_working_dir() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    let mut s = spec("pod-i", "h");
    s.mounts.push(mount("in/deep", MountSource::Empty));
    b.create(&s).await.unwrap();
    let chunks: Vec<jetbridge_core::Result<Bytes>> =
        vec![Ok(Bytes::from("hello ")), Ok(Bytes::from("world"))];
    let input: ByteStream = Box::pin(futures::stream::iter(chunks));
    let r = run(
        &b,
        ExecRequest::new("pod-i", sh("cat > f; cat f; pwd"))
            .dir("in/deep")
            .stdin(input),
    )
    .await;
    let work = std::fs::canonicalize(b.work_dir("pod-i").unwrap()).unwrap();
    assert_eq!(
        r.stdout,
        format!("hello world{}\n", work.join("in/deep").display())
    );
    assert!(work.join("in/deep/f").exists());
    // No stdin: an immediate EOF, not a hang.
    assert_eq!(run_sh(&b, "pod-i", "cat").await.stdout, "");

    for bad in ["../x", "/tmp"] {
        let e = b
            .exec(
                ExecRequest::new("pod-i", vec!["true".into()]).dir(bad),
                Arc::new(CaptureOutput::new()),
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{bad}");
    }
    let e = b
        .exec(
            ExecRequest::new("pod-i", vec!["true".into()]).dir("missing"),
            Arc::new(CaptureOutput::new()),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_stdin_stream_fails_the_exec_and_kills_the_command() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    b.create(&spec("pod-f", "h")).await.unwrap();
    let pid_file = b.work_dir("pod-f").unwrap().join("pid");
    // The stream fails only once the command is surely running.
    let failing = {
        let pid_file = pid_file.clone();
        futures::stream::once(async move {
            read_pids(&pid_file, 1).await;
            Err(jetbridge_core::Error::transient("upstream broke"))
        })
    };
    let input: ByteStream = Box::pin(futures::StreamExt::chain(
        futures::stream::iter(vec![Ok(Bytes::from("partial"))]),
        failing,
    ));
    let req =
        ExecRequest::new("pod-f", sh("echo $$ > pid; cat > /dev/null; sleep 100")).stdin(input);
    let e = b
        .exec(req, Arc::new(CaptureOutput::new()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient);
    let pids = read_pids(&pid_file, 1).await;
    assert!(wait_dead(&pids, Duration::from_secs(5)).await);
}

/// Collects chunks and tells the test about each as it arrives.
struct Notify(Mutex<Option<tokio::sync::mpsc::UnboundedSender<Vec<u8>>>>);

impl OutputSink for Notify {
    fn write(&self, stream: OutputStream, data: &[u8]) {
        if stream == OutputStream::Stdout
            && let Some(tx) = self.0.lock().unwrap().as_ref()
        {
            let _ = tx.send(data.to_vec());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_arrives_while_the_command_runs() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    b.create(&spec("pod-s", "h")).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sink = Arc::new(Notify(Mutex::new(Some(tx))));
    let task = {
        let b = b.clone();
        tokio::spawn(async move {
            b.exec(
                ExecRequest::new("pod-s", sh("echo first; sleep 2; echo second")),
                sink,
            )
            .await
        })
    };
    let first = tokio::time::timeout(Duration::from_secs(1), rx.recv())
        .await
        .expect("first chunk before the command ends")
        .unwrap();
    assert_eq!(first, b"first\n");
    assert!(!task.is_finished());
    assert_eq!(task.await.unwrap().unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_is_isolated_from_the_worker() {
    // Cargo sets this for every test process: it is in our environment for sure.
    let leaked = "CARGO_MANIFEST_DIR";
    assert!(std::env::var_os(leaked).is_some());
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    let mut s = spec("pod-env", "h");
    s.env.insert("FROM_POD".into(), "pod".into());
    s.env.insert("BOTH".into(), "pod".into());
    b.create(&s).await.unwrap();
    let mut extra = BTreeMap::new();
    extra.insert("BOTH".to_string(), "exec".to_string());
    let r = run(
        &b,
        ExecRequest::new("pod-env", vec!["env".into()]).env(extra),
    )
    .await;
    let vars: BTreeMap<&str, &str> = r.stdout.lines().filter_map(|l| l.split_once('=')).collect();
    assert!(!vars.contains_key(leaked), "{:?}", vars);
    assert_eq!(vars["FROM_POD"], "pod");
    assert_eq!(vars["BOTH"], "exec");
    let sandbox = std::fs::canonicalize(b.sandbox_dir("pod-env").unwrap()).unwrap();
    assert_eq!(Path::new(vars["HOME"]), sandbox.join("home"));
    assert_eq!(Path::new(vars["TMPDIR"]), sandbox.join("tmp"));
    assert!(Path::new(vars["TMPDIR"]).is_dir() && Path::new(vars["HOME"]).is_dir());
    assert!(vars.contains_key("PATH"));
    let unexpected: Vec<&&str> = vars
        .keys()
        .filter(|k| {
            ![
                "PATH", "HOME", "TMPDIR", "FROM_POD", "BOTH", "PWD", "SHLVL", "_",
            ]
            .contains(k)
        })
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");

    // Named variables are passed on request.
    let mut cfg = LocalConfig::new(t.path().join("root2"));
    cfg.pass_env = vec![leaked.into()];
    cfg.path = Some("/usr/bin:/bin".into());
    let b2 = LocalBackend::new(cfg).unwrap();
    b2.create(&spec("pod-env", "h")).await.unwrap();
    let r = run_sh(&b2, "pod-env", "echo $CARGO_MANIFEST_DIR; echo $PATH").await;
    assert_eq!(
        r.stdout,
        format!("{}\n/usr/bin:/bin\n", std::env::var(leaked).unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_non_executable_programs_exit_like_a_shell() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    b.create(&spec("pod-p", "h")).await.unwrap();
    let work = b.work_dir("pod-p").unwrap();

    let r = run(
        &b,
        ExecRequest::new("pod-p", vec!["no-such-program-xyz".into()]),
    )
    .await;
    assert_eq!(r.code, 127);
    assert!(
        r.stderr.contains("no-such-program-xyz: command not found"),
        "{}",
        r.stderr
    );

    let r = run(&b, ExecRequest::new("pod-p", vec!["/no/such/file".into()])).await;
    assert_eq!(r.code, 127);
    assert!(
        r.stderr.contains("No such file or directory"),
        "{}",
        r.stderr
    );

    std::fs::write(work.join("plain"), "echo hi\n").unwrap();
    std::fs::set_permissions(work.join("plain"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = run(&b, ExecRequest::new("pod-p", vec!["./plain".into()])).await;
    assert_eq!(r.code, 126);
    assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);

    std::fs::create_dir(work.join("adir")).unwrap();
    assert_eq!(
        run(&b, ExecRequest::new("pod-p", vec!["./adir".into()]))
            .await
            .code,
        126
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_run_by_absolute_path_like_a_resource() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    // A resource type directory outside the pod, as for `type: local` resources.
    let res = t.path().join("resource");
    std::fs::create_dir(&res).unwrap();
    std::fs::write(
        res.join("in"),
        "#!/bin/sh\nset -e\ndest=\"$1\"\ncat > \"$dest/request.json\"\necho '{\"version\":{\"ref\":\"abc\"}}'\n",
    )
    .unwrap();
    std::fs::set_permissions(res.join("in"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut s = spec("pod-r", "h");
    s.mounts.push(mount("dest", MountSource::Empty));
    b.create(&s).await.unwrap();
    let work = std::fs::canonicalize(b.work_dir("pod-r").unwrap()).unwrap();
    let req = ExecRequest::new(
        "pod-r",
        vec![
            res.join("in").to_str().unwrap().into(),
            work.join("dest").to_str().unwrap().into(),
        ],
    )
    .stdin(bytes_stream(r#"{"source":{},"version":null}"#));
    let r = run(&b, req).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "{\"version\":{\"ref\":\"abc\"}}\n");
    assert_eq!(
        std::fs::read_to_string(work.join("dest/request.json")).unwrap(),
        r#"{"source":{},"version":null}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tar_streams_between_pods() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    let mut s = spec("pod-src", "h1");
    s.mounts.push(mount("out", MountSource::Empty));
    b.create(&s).await.unwrap();
    let r = run_sh(
        &b,
        "pod-src",
        "mkdir -p out/sub && echo data > out/sub/f && ln -s sub/f out/l",
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = Arc::new(CaptureOutput::new());
    let code = b
        .exec(
            ExecRequest::new(
                "pod-src",
                vec![
                    "tar".into(),
                    "-c".into(),
                    "-f".into(),
                    "-".into(),
                    ".".into(),
                ],
            )
            .dir("out"),
            out.clone(),
        )
        .await
        .unwrap();
    assert_eq!(code, 0);
    let archive = out.stdout();
    assert!(!archive.is_empty());

    let mut d = spec("pod-dst", "h2");
    d.mounts.push(mount("in", MountSource::Empty));
    b.create(&d).await.unwrap();
    let r = run(
        &b,
        ExecRequest::new(
            "pod-dst",
            vec!["tar".into(), "-x".into(), "-f".into(), "-".into()],
        )
        .dir("in")
        .stdin(bytes_stream(archive)),
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let work = b.work_dir("pod-dst").unwrap();
    assert_eq!(
        std::fs::read_to_string(work.join("in/sub/f")).unwrap(),
        "data\n"
    );
    assert_eq!(
        std::fs::read_link(work.join("in/l")).unwrap(),
        Path::new("sub/f")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_kills_every_process_group_and_the_exec_is_lost() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    b.create(&spec("pod-k", "h")).await.unwrap();
    let task = {
        let b = b.clone();
        tokio::spawn(async move {
            b.exec(
                ExecRequest::new("pod-k", sh(TWO_SLEEPERS)),
                Arc::new(CaptureOutput::new()),
            )
            .await
        })
    };
    let pids = read_pids(&b.work_dir("pod-k").unwrap().join("pids"), 2).await;
    assert!(pids.iter().all(|&p| alive(p)), "{pids:?}");
    b.delete("pod-k", &DeleteOpts::grace(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(wait_dead(&pids, Duration::from_secs(5)).await, "{pids:?}");
    let res = task.await.unwrap();
    assert_eq!(res.unwrap_err().kind(), ErrorKind::Lost);
    assert!(!b.sandbox_dir("pod-k").unwrap().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_ignoring_sigterm_is_killed_after_the_grace_period_and_not_a_success() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    b.create(&spec("pod-g", "h")).await.unwrap();
    let task = {
        let b = b.clone();
        tokio::spawn(async move {
            b.exec(
                ExecRequest::new(
                    "pod-g",
                    sh("trap '' TERM; echo $$ > pids; sleep 100; exit 0"),
                ),
                Arc::new(CaptureOutput::new()),
            )
            .await
        })
    };
    let pids = read_pids(&b.work_dir("pod-g").unwrap().join("pids"), 1).await;
    let start = Instant::now();
    b.delete("pod-g", &DeleteOpts::grace(Duration::from_millis(400)))
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(400));
    assert!(wait_dead(&pids, Duration::from_secs(5)).await);
    assert_eq!(task.await.unwrap().unwrap_err().kind(), ErrorKind::Lost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_exec_kills_the_process_group() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    b.create(&spec("pod-d", "h")).await.unwrap();
    let task = {
        let b = b.clone();
        tokio::spawn(async move {
            b.exec(
                ExecRequest::new("pod-d", sh(TWO_SLEEPERS)),
                Arc::new(CaptureOutput::new()),
            )
            .await
        })
    };
    let pids = read_pids(&b.work_dir("pod-d").unwrap().join("pids"), 2).await;
    assert!(pids.iter().all(|&p| alive(p)));
    task.abort();
    let _ = task.await;
    assert!(wait_dead(&pids, Duration::from_secs(5)).await, "{pids:?}");
    // The pod itself lives on.
    assert_eq!(b.get("pod-d").await.unwrap().state, PodState::Running);
    assert_eq!(run_sh(&b, "pod-d", "echo ok").await.stdout, "ok\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_processes_do_not_hold_the_exec_and_die_with_the_pod() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    b.create(&spec("pod-bg", "h")).await.unwrap();
    let start = Instant::now();
    let r = run_sh(&b, "pod-bg", "sleep 100 & echo $! > pids; echo started").await;
    assert_eq!((r.code, r.stdout.as_str()), (0, "started\n"));
    assert!(start.elapsed() < Duration::from_secs(5));
    let pids = read_pids(&b.work_dir("pod-bg").unwrap().join("pids"), 1).await;
    assert!(alive(pids[0]));
    b.delete("pod-bg", &DeleteOpts::grace(Duration::from_secs(2)))
        .await
        .unwrap();
    assert!(wait_dead(&pids, Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_container_and_other_users_are_unsupported() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    b.create(&spec("pod-u", "h")).await.unwrap();
    let e = b
        .exec(
            ExecRequest::new("pod-u", vec!["true".into()]).container(Container::Transfer),
            Arc::new(CaptureOutput::new()),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    let mut req = ExecRequest::new("pod-u", vec!["true".into()]);
    req.user = Some("definitely-not-this-user".into());
    let e = b
        .exec(req, Arc::new(CaptureOutput::new()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    let mut req = ExecRequest::new("pod-u", vec!["id".into(), "-u".into()]);
    req.user = Some(nix::unistd::getuid().to_string());
    let r = run(&b, req).await;
    assert_eq!(r.stdout.trim(), nix::unistd::getuid().to_string());

    let mut s = spec("pod-h", "h");
    s.transfer = true;
    assert_eq!(
        b.create(&s).await.unwrap_err().kind(),
        ErrorKind::Unsupported
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_of_is_private_and_complete() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    let vol = t.path().join("volume");
    std::fs::create_dir_all(vol.join("src/empty")).unwrap();
    std::fs::write(vol.join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(vol.join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(vol.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("src/main.rs", vol.join("link")).unwrap();

    let mut s = spec("pod-c", "h");
    s.mounts.push(mount("repo", copy_of(&vol)));
    b.create(&s).await.unwrap();
    let r = run(
        &b,
        ExecRequest::new("pod-c", vec!["./run.sh".into()]).dir("repo"),
    )
    .await;
    assert_eq!(r.stdout, "ran\n");
    let r = run_sh(
        &b,
        "pod-c",
        "test -d repo/src/empty && cat repo/link && echo changed > repo/src/main.rs && rm repo/run.sh && touch repo/new",
    )
    .await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "fn main() {}\n"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(vol.join("src/main.rs")).unwrap(),
        "fn main() {}\n"
    );
    assert!(vol.join("run.sh").exists());
    assert!(!vol.join("new").exists());
    assert!(
        !std::fs::symlink_metadata(b.work_dir("pod-c").unwrap().join("repo"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    b.delete("pod-c", &DeleteOpts::grace(Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(vol.join("src/main.rs").exists());
}

/// A volume changed after sealing: pod creation fails `Corrupt`, naming the artifact
/// and the build, and no pod (so no command, no partial copy) is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_of_a_changed_volume_fails_corrupt() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    let vol = t.path().join("volume");
    std::fs::create_dir_all(vol.join("src")).unwrap();
    std::fs::write(vol.join("src/main.rs"), "fn main() {}\n").unwrap();
    let source = copy_of(&vol);
    std::fs::write(vol.join("src/main.rs"), "fn main() {}\r").unwrap();

    let mut s = spec("pod-x", "h");
    s.mounts.push(mount("repo", source));
    let e = b.create(&s).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("\"repo\"") && msg.contains("\"b-42\""),
        "{msg}"
    );
    assert_eq!(
        b.get("pod-x").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // Nothing of the copy is left anywhere under the backend's root.
    let leftovers = std::process::Command::new("find")
        .arg(t.path().join("root"))
        .args(["-name", "main.rs"])
        .output()
        .unwrap();
    assert!(
        leftovers.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&leftovers.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_into_writes_the_volume_directly() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    let vol = t.path().join("out-volume");
    std::fs::create_dir(&vol).unwrap();
    let mut s = spec("pod-o", "h");
    s.mounts
        .push(mount("out/bin", MountSource::WriteInto(host(&vol))));
    b.create(&s).await.unwrap();
    let r = run_sh(&b, "pod-o", "echo built > out/bin/artifact").await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(vol.join("artifact")).unwrap(),
        "built\n"
    );
    // Zero copy: the path is a link to the volume.
    assert_eq!(
        std::fs::read_link(b.work_dir("pod-o").unwrap().join("out/bin")).unwrap(),
        vol
    );
    b.delete("pod-o", &DeleteOpts::grace(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(vol.join("artifact")).unwrap(),
        "built\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_persist_across_pods_by_key() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    let cache = |name: &str, key: &str| {
        let mut s = spec(name, name);
        s.mounts
            .push(mount("cache", MountSource::Cache { key: key.into() }));
        s
    };
    b.create(&cache("pod-c1", "pipe/job/step/../../cache"))
        .await
        .unwrap();
    run_sh(&b, "pod-c1", "echo warm > cache/f").await;
    b.delete("pod-c1", &DeleteOpts::grace(Duration::from_secs(1)))
        .await
        .unwrap();

    b.create(&cache("pod-c2", "pipe/job/step/../../cache"))
        .await
        .unwrap();
    assert_eq!(run_sh(&b, "pod-c2", "cat cache/f").await.stdout, "warm\n");
    b.create(&cache("pod-c3", "another key")).await.unwrap();
    let r = run_sh(&b, "pod-c3", "ls cache").await;
    assert_eq!((r.code, r.stdout.as_str()), (0, ""));
    // Caches live under cache_root, never inside the root's pods.
    let cache_root = std::fs::canonicalize(t.path().join("root/cache")).unwrap();
    let target = std::fs::read_link(b.work_dir("pod-c2").unwrap().join("cache")).unwrap();
    assert!(target.starts_with(&cache_root), "{target:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_mounts_leave_no_pod_and_pvcs_are_unsupported() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    let mut s = spec("pod-m", "h");
    s.mounts.push(mount(
        "repo",
        MountSource::CopyOf(CopySource::new(
            host(&t.path().join("does-not-exist")),
            TreeDigest::new().finish(),
        )),
    ));
    assert_eq!(b.create(&s).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(
        b.get("pod-m").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(!b.sandbox_dir("pod-m").unwrap().exists());

    let mut s = spec("pod-m", "h");
    s.mounts.push(mount(
        "v",
        MountSource::WriteInto(MountInfo::SharedVolume {
            volume: "c".into(),
            sub_path: "x".into(),
        }),
    ));
    assert_eq!(
        b.create(&s).await.unwrap_err().kind(),
        ErrorKind::Unsupported
    );

    let mut s = spec("pod-m", "h");
    s.mounts.push(mount("../x", MountSource::Empty));
    assert_eq!(b.create(&s).await.unwrap_err().kind(), ErrorKind::Invalid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_mounts_inside_a_copy_cannot_escape_through_its_symlinks() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    let vol = t.path().join("vol");
    let outside = t.path().join("outside");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, vol.join("sub")).unwrap();
    let mut s = spec("pod-n", "h");
    s.mounts.push(mount("repo", copy_of(&vol)));
    s.mounts.push(mount("repo/sub/x", MountSource::Empty));
    assert_eq!(b.create(&s).await.unwrap_err().kind(), ErrorKind::Invalid);
    assert!(!outside.join("x").exists());

    // Without the link, the nested mount replaces the copied content.
    let vol2 = t.path().join("vol2");
    std::fs::create_dir_all(vol2.join("out")).unwrap();
    std::fs::write(vol2.join("out/old"), "x").unwrap();
    let mut s = spec("pod-n2", "h");
    s.mounts.push(mount("repo", copy_of(&vol2)));
    s.mounts.push(mount("repo/out", MountSource::Empty));
    b.create(&s).await.unwrap();
    assert!(!b.work_dir("pod-n2").unwrap().join("repo/out/old").exists());
    assert!(vol2.join("out/old").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_backend_over_the_same_root_sees_execs_and_deletes_old_pods() {
    let t = TempDir::new().unwrap();
    let first = backend(&t);
    let mut s = spec("pod-old", "h-old");
    s.env.insert("KEPT".into(), "yes".into());
    first.create(&s).await.unwrap();
    let task = {
        let b = first.clone();
        tokio::spawn(async move {
            b.exec(
                ExecRequest::new("pod-old", sh(TWO_SLEEPERS)),
                Arc::new(CaptureOutput::new()),
            )
            .await
        })
    };
    let pids = read_pids(&first.work_dir("pod-old").unwrap().join("pids"), 2).await;

    // As after a worker restart: a fresh backend, nothing in memory.
    let second = backend(&t);
    let mut sel = BTreeMap::new();
    sel.insert(
        label::MANAGED_BY.to_string(),
        label::MANAGED_BY_VALUE.to_string(),
    );
    let listed = second.list(&sel).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "pod-old");
    assert_eq!(listed[0].labels.get(label::HANDLE).unwrap(), "h-old");
    // Adoption by handle works from the new process too.
    second.create(&s).await.unwrap();
    assert_eq!(
        run_sh(&second, "pod-old", "echo $KEPT").await.stdout,
        "yes\n"
    );

    let waiter = {
        let first = first.clone();
        tokio::spawn(async move {
            first
                .wait(
                    "pod-old",
                    &WaitOpts::new(WaitFor::Terminated, Duration::from_secs(30)),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    second
        .delete("pod-old", &DeleteOpts::grace(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(wait_dead(&pids, Duration::from_secs(5)).await, "{pids:?}");
    assert_eq!(task.await.unwrap().unwrap_err().kind(), ErrorKind::Lost);
    assert_eq!(
        first.get("pod-old").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // The first backend notices a deletion by another process too.
    let st = waiter.await.unwrap().unwrap();
    assert_eq!(st.state, PodState::Failed(PodFailure::Deleted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_of_the_same_name_created_later_is_a_different_pod() {
    let t = TempDir::new().unwrap();
    let b = backend(&t);
    b.create(&spec("pod-re", "h1")).await.unwrap();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            b.wait(
                "pod-re",
                &WaitOpts::new(WaitFor::Terminated, Duration::from_secs(30)),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.delete("pod-re", &DeleteOpts::grace(Duration::from_secs(1)))
        .await
        .unwrap();
    b.create(&spec("pod-re", "h2")).await.unwrap();
    assert_eq!(
        waiter.await.unwrap().unwrap().state,
        PodState::Failed(PodFailure::Deleted)
    );
    assert_eq!(b.get("pod-re").await.unwrap().state, PodState::Running);
    assert!(b.work_dir("pod-re").unwrap().is_dir());
    let _: PathBuf = b.root().to_path_buf();
}
