//! The step-pod helper on the simulator (issue 17 point 6): a step image with no shell,
//! no `env` and none of the tools the adapter used to wrap commands in runs its steps,
//! because the helper, installed by its init container and run from the built binary, is
//! PID 1 and starts every command itself.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    NS, argv, eventually, helper_config, marked_processes, running, sim_backend, sim_config,
    sim_helper_backend,
};
use jetbridge_core::ErrorKind;
use jetbridge_core::names::{StepHandle, label};
use jetbridge_core::ports::{
    CaptureOutput, Exec, ExecRequest, PodSpec, Pods, WaitFor, WaitOpts, bytes_stream,
};
use jetbridge_kube::KubeBackend;
use jetbridge_kube_sim::{ExecProtocols, SimConfig, SimControls, Simulator};

/// A distroless-like image: none of the programs a shell-based wrapper needs.
const SHELL_LESS: &str = "gcr.io/distroless/static:nonroot";
const LACKS: &[&str] = &[
    "env", "sh", "bash", "true", "cat", "head", "grep", "kill", "sleep", "mkdir",
];

/// What the shell-less image holds: a few programs of its own under `/app`, which the
/// simulator runs from this host's files.
fn shell_less_image(sim: &Simulator) {
    sim.image_lacks("distroless", LACKS);
    for (in_image, host) in [
        ("/app/echo", "/bin/echo"),
        ("/app/cat", "/bin/cat"),
        ("/app/pwd", "/bin/pwd"),
        ("/app/mkdir", "/bin/mkdir"),
        ("/app/sleep", "/bin/sleep"),
        ("/app/printenv", "/usr/bin/printenv"),
    ] {
        sim.image_file("distroless", in_image, host)
            .expect("an image file");
    }
}

fn spec() -> PodSpec {
    let handle = StepHandle::random();
    let mut s = PodSpec::new(format!("hlp-{}", handle.short()), SHELL_LESS);
    s.labels
        .insert(label::HANDLE.into(), handle.as_str().into());
    s
}

async fn run(b: &KubeBackend, req: ExecRequest) -> (i32, Vec<u8>, Vec<u8>) {
    let out = Arc::new(CaptureOutput::new());
    let code = b.exec(req, out.clone()).await.expect("an exit status");
    (code, out.stdout(), out.stderr())
}

/// Directories, environment, stdin (ended by the helper on v4, where the session cannot
/// end it) and exit statuses, in an image that has none of `env`, `sh`, `head` or
/// `cat` of its own for a wrapper; a missing program is the helper's 127 with the
/// runtime's words. Without the helper the same image cannot run a command at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_less_image_runs_commands_through_the_helper() {
    for protocols in [ExecProtocols::V5AndV4, ExecProtocols::V4Only] {
        let config = SimConfig {
            exec_protocols: protocols,
            ..SimConfig::default()
        };
        let (sim, b) = sim_helper_backend(config).await;
        shell_less_image(&sim);
        let s = spec();
        running(&b, &s).await;

        let (code, _, err) = run(&b, ExecRequest::new(&s.name, argv(&["/app/mkdir", "sub"]))).await;
        assert_eq!(code, 0, "{protocols:?}: {}", String::from_utf8_lossy(&err));
        let (code, out, _) = run(
            &b,
            ExecRequest::new(&s.name, argv(&["/app/pwd"])).dir("sub"),
        )
        .await;
        assert_eq!(code, 0);
        assert!(
            String::from_utf8_lossy(&out).trim_end().ends_with("/sub"),
            "{protocols:?}: {}",
            String::from_utf8_lossy(&out)
        );
        let env = BTreeMap::from([("GREETING".to_owned(), "hi 'there' $(x)".to_owned())]);
        let (_, out, _) = run(
            &b,
            ExecRequest::new(&s.name, argv(&["/app/printenv", "GREETING"])).env(env),
        )
        .await;
        assert_eq!(out, b"hi 'there' $(x)\n", "{protocols:?}");
        let payload: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        let (code, out, _) = run(
            &b,
            ExecRequest::new(&s.name, argv(&["/app/cat"])).stdin(bytes_stream(payload.clone())),
        )
        .await;
        assert_eq!(code, 0);
        assert!(out == payload, "{protocols:?}: stdin came back changed");

        let (code, _, err) = run(&b, ExecRequest::new(&s.name, argv(&["/app/nothing"]))).await;
        assert_eq!(code, 127, "{protocols:?}");
        assert!(
            String::from_utf8_lossy(&err).contains("executable file not found"),
            "{}",
            String::from_utf8_lossy(&err)
        );
        b.delete(
            &s.name,
            &jetbridge_core::ports::DeleteOpts::grace(Duration::from_secs(5)),
        )
        .await
        .expect("delete");
        sim.shutdown().await;
    }

    // Without the helper: `env`, then `sh`, of an image that has neither.
    let (sim, b) = sim_backend(SimConfig::default(), sim_config()).await;
    shell_less_image(&sim);
    let s = spec();
    running(&b, &s).await;
    let err = b
        .exec(
            ExecRequest::new(&s.name, argv(&["/app/echo", "hi"])),
            Arc::new(CaptureOutput::new()),
        )
        .await
        .expect_err("no env in the image");
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.message().contains("--step-helper-image"), "{err}");
    sim.shutdown().await;
}

/// The helper, not a sleeping stand-in, is the main container's PID 1, and it ends on
/// the kubelet's TERM: a deleted pod goes at once, not after its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_helper_is_pid_1_and_ends_on_term() {
    let (sim, b) = sim_helper_backend(SimConfig::default()).await;
    shell_less_image(&sim);
    let s = spec();
    running(&b, &s).await;
    // Installed by the init container into the pod's tools volume, and run from there.
    let pause = helper_pauses(sim.work_root());
    assert_eq!(
        pause.len(),
        1,
        "one `jetbridge-helper pause` runs in the pod"
    );
    let grace = Duration::from_secs(30);
    let began = Instant::now();
    b.delete(&s.name, &jetbridge_core::ports::DeleteOpts::grace(grace))
        .await
        .expect("delete");
    let st = b
        .wait(&s.name, &WaitOpts::new(WaitFor::Terminated, grace * 2))
        .await;
    assert!(
        began.elapsed() < grace,
        "the pod waited out its grace period: {st:?}"
    );
    sim.shutdown().await;
}

/// Host processes that are a `jetbridge-helper pause` of a pod under `root`, run from the
/// copy its installer made.
fn helper_pauses(root: &std::path::Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                // The simulator runs it from the pod's tools volume, under its root.
                args.len() >= 2
                    && args[0].starts_with(root.as_os_str().as_encoded_bytes())
                    && args[0].ends_with(b"/.jetbridge/jetbridge-helper")
                    && args[1] == b"pause"
            })
        })
        .collect()
}

/// An abandoned command is stopped by the helper's `kill` (no `sh`, `grep` or `kill` in
/// the image), and a command the OOM killer took alone is read as out of memory by the
/// helper's `read-first` (no `cat`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_helper_kills_abandoned_commands_and_reads_the_oom_counter() {
    let kube = jetbridge_kube::KubeConfig {
        // The simulator keeps the counter in the container's working directory.
        oom_counter_files: vec!["memory.events".into()],
        ..helper_config()
    };
    let (sim, b) = sim_backend(SimConfig::default(), kube).await;
    sim.image_file(
        common::HELPER_IMAGE,
        jetbridge_kube::STEP_HELPER_PATH,
        jetbridge_kube_sim::built_step_helper(),
    )
    .expect("the helper image's file");
    shell_less_image(&sim);
    let s = spec();
    running(&b, &s).await;
    let sleeper = |mark: &str| {
        let env = BTreeMap::from([("MARK".to_owned(), mark.to_owned())]);
        ExecRequest::new(&s.name, argv(&["/app/sleep", "3600"])).env(env)
    };

    let mark = StepHandle::random().short().to_owned();
    let task = {
        let (b, r) = (b.clone(), sleeper(&mark));
        tokio::spawn(async move { b.exec(r, Arc::new(CaptureOutput::new())).await })
    };
    eventually("the command runs", || marked_processes(&mark) > 0).await;
    task.abort();
    assert!(task.await.is_err_and(|e| e.is_cancelled()));
    eventually("the abandoned command is killed", || {
        marked_processes(&mark) == 0
    })
    .await;

    let mark = StepHandle::random().short().to_owned();
    let task = {
        let (b, r) = (b.clone(), sleeper(&mark));
        tokio::spawn(async move { b.exec(r, Arc::new(CaptureOutput::new())).await })
    };
    eventually("the command runs", || marked_processes(&mark) > 0).await;
    sim.oom_kill_exec(NS, &s.name);
    let err = task
        .await
        .expect("joins")
        .expect_err("an OOM kill is not an exit status");
    assert_eq!(err.kind(), ErrorKind::OutOfMemory, "{err}");
    sim.shutdown().await;
}

/// A dropped exec stream no longer loses the command: the helper recorded it, the
/// adapter re-attaches from the bytes it had seen, and gets the rest of the output, in
/// order and once, and the true exit status. A counter file proves the command ran
/// once; the requests show one start and the re-attaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_exec_stream_is_reattached_and_the_command_runs_once() {
    let (sim, b) = sim_helper_backend(SimConfig::default()).await;
    let mut s = spec();
    s.image = common::IMAGE.into();
    running(&b, &s).await;
    sim.reset_requests();
    // The stream drops after the first output, twice: two re-attaches.
    sim.drop_exec_streams(2);
    let script = "echo run >> runs.txt; echo one; sleep 0.2; echo two >&2; sleep 0.2; \
                  echo three; exit 3";
    let out = Arc::new(CaptureOutput::new());
    let code = b
        .exec(
            ExecRequest::new(&s.name, argv(&["sh", "-c", script])),
            out.clone(),
        )
        .await
        .expect("re-attached to its exit status");
    assert_eq!(code, 3);
    assert_eq!(out.stdout(), b"one\nthree\n");
    assert_eq!(out.stderr(), b"two\n");
    let (_, runs, _) = run(&b, ExecRequest::new(&s.name, argv(&["cat", "runs.txt"]))).await;
    assert_eq!(runs, b"run\n", "the command ran once");
    let execs: Vec<String> = sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/exec"))
        .map(|r| r.query.clone())
        .collect();
    let starts = execs.iter().filter(|q| q.contains("echo+run")).count();
    let attaches = execs.iter().filter(|q| q.contains("attach")).count();
    assert_eq!((starts, attaches), (1, 2), "{execs:#?}");
    sim.shutdown().await;
}

/// A command with stdin is re-attached too: through the helper its stdin always has a
/// length, so a command that got all of it goes on and is re-attached to, and its
/// input is never sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_with_stdin_is_reattached_and_its_input_sent_once() {
    for protocols in [ExecProtocols::V5AndV4, ExecProtocols::V4Only] {
        let config = SimConfig {
            exec_protocols: protocols,
            ..SimConfig::default()
        };
        let (sim, b) = sim_helper_backend(config).await;
        let mut s = spec();
        s.image = common::IMAGE.into();
        running(&b, &s).await;
        sim.drop_exec_streams(1);
        let script = "cat > got; echo one; sleep 0.2; echo two; wc -c < got";
        let out = Arc::new(CaptureOutput::new());
        let code = b
            .exec(
                ExecRequest::new(&s.name, argv(&["sh", "-c", script]))
                    .stdin(bytes_stream(vec![7u8; 1000])),
                out.clone(),
            )
            .await
            .expect("re-attached to its exit status");
        assert_eq!(code, 0, "{protocols:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout())
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["one", "two", "1000"],
            "{protocols:?}"
        );
        sim.shutdown().await;
    }
}

/// When the helper cannot give the command's result after a drop (here the command
/// kills its recorder, so no status is ever recorded), the exec is `Lost`, promptly,
/// never the helper's 125 taken for the command's exit status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_that_cannot_be_recovered_is_lost_not_an_exit_status() {
    let (sim, b) = sim_helper_backend(SimConfig::default()).await;
    let mut s = spec();
    s.image = common::IMAGE.into();
    running(&b, &s).await;
    sim.drop_exec_streams(1);
    let err = b
        .exec(
            ExecRequest::new(
                &s.name,
                argv(&["sh", "-c", "echo a; kill -9 $PPID; sleep 0.2; echo b"]),
            ),
            Arc::new(CaptureOutput::new()),
        )
        .await
        .expect_err("no result to give");
    assert_eq!(err.kind(), ErrorKind::Lost, "{err}");
    assert!(
        err.message().contains("the recorder ended without"),
        "{err}"
    );
    sim.shutdown().await;
}
