//! A command OOM-killed with its whole container while the pod runs on: cgroup v2 with
//! `memory.oom.group` (the kubelet's setting from 1.28) kills every process of the
//! step's container, the helper container runs on, so the pod stays `Running` and only
//! the container's status says `OOMKilled`, and that status reaches the API after the
//! kubelet's relist. The exec is `OutOfMemory` whether the status comes at once or late:
//! never exit status 137 (a user failure), never a hang.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{IMAGE, NS, sim_backend, sim_config};
use jetbridge_core::ErrorKind;
use jetbridge_core::names::{StepHandle, label};
use jetbridge_core::ports::{
    CaptureOutput, Exec, ExecRequest, Mount, MountSource, PodFailure, PodSpec, PodState, Pods,
    WaitFor, WaitOpts,
};
use jetbridge_kube::KubeConfig;
use jetbridge_kube_sim::SimConfig;

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < give_up, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The case with the container's end reaching the API `lag` after it happened.
async fn group_oom_kill_is_out_of_memory(lag: Duration) {
    let kube = KubeConfig {
        // Where the simulator keeps a container's counter: the single-process check runs
        // first and must see the container gone rather than a count.
        oom_counter_files: vec!["memory.events".into()],
        ..sim_config()
    };
    let (sim, b) = sim_backend(SimConfig::default(), kube).await;
    sim.status_lag(lag);
    let handle = StepHandle::random();
    let mut s = PodSpec::new(format!("oom-{}", handle.short()), IMAGE);
    s.labels
        .insert(label::HANDLE.into(), handle.as_str().into());
    // A streamed output: the pod has the helper container beside the step's.
    s.mounts.push(Mount::new("out", MountSource::Empty));
    s.transfer = true;
    b.create(&s).await.expect("create");
    let st = b
        .wait(
            &s.name,
            &WaitOpts::new(WaitFor::Running, Duration::from_secs(30)),
        )
        .await
        .expect("wait");
    assert_eq!(st.state, PodState::Running, "{st:?}");

    let out = Arc::new(CaptureOutput::new());
    let exec = {
        let (b, name, out) = (b.clone(), s.name.clone(), out.clone());
        tokio::spawn(async move {
            let argv = ["sh", "-c", "echo started; exec sleep 3600"].map(str::to_owned);
            b.exec(ExecRequest::new(&name, argv.to_vec()), out).await
        })
    };
    eventually("the command runs", || out.stdout() == b"started\n").await;
    let killed = Instant::now();
    sim.oom_kill(NS, &s.name);
    let err = exec
        .await
        .expect("joins")
        .expect_err("a command OOM-killed with its container is not an exit status");
    assert_eq!(err.kind(), ErrorKind::OutOfMemory, "lag {lag:?}: {err}");
    assert!(err.message().contains("OOMKilled"), "{err}");
    assert!(
        killed.elapsed() < lag + Duration::from_secs(10),
        "reported {:?} after the kill, with a status lag of {lag:?}",
        killed.elapsed()
    );

    // As a cluster shows it: the pod still Running (the helper runs on), the step's
    // container terminated `OOMKilled` with 137.
    let pod = sim
        .pods(NS)
        .into_iter()
        .find(|p| p["metadata"]["name"] == s.name.as_str())
        .expect("the pod");
    assert_eq!(pod["status"]["phase"], "Running", "{pod}");
    let container = |name: &str| {
        pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    let main = container("main");
    assert_eq!(main["state"]["terminated"]["reason"], "OOMKilled", "{pod}");
    assert_eq!(main["state"]["terminated"]["exitCode"], 137, "{pod}");
    assert!(container("helper")["state"]["running"].is_object(), "{pod}");
    let st = b.get(&s.name).await.expect("get");
    assert_eq!(st.state, PodState::Failed(PodFailure::OomKilled), "{st:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_killed_with_its_container_for_memory_is_out_of_memory() {
    group_oom_kill_is_out_of_memory(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_whose_status_comes_late_is_out_of_memory_promptly() {
    group_oom_kill_is_out_of_memory(Duration::from_millis(1500)).await;
}
