//! The simulated kubelet: life cycle, logs, init containers and node faults.

mod common;

use common::*;
use futures::StreamExt;
use jetbridge_kube_sim::{SimConfig, Simulator};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{AttachParams, EvictParams, LogParams, WatchEvent, WatchParams};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_runs_and_terminates_with_exit_codes_and_logs() {
    let (sim, client) = start().await;
    let pods = api(&client);
    create(
        &pods,
        &pod("ok", &["sh", "-c", "echo hello; echo oops >&2"]),
    )
    .await;
    create(&pods, &pod("bad", &["sh", "-c", "exit 4"])).await;
    create(&pods, &pod("long", &["sleep", "infinity"])).await;
    let running = wait_phase(&pods, "long", "Running").await;
    assert_eq!(
        running.spec.as_ref().unwrap().node_name.as_deref(),
        Some("sim-node")
    );
    assert_eq!(condition(&running, "PodScheduled").unwrap().status, "True");
    assert_eq!(condition(&running, "Ready").unwrap().status, "True");
    assert!(main_state(&running).unwrap().running.is_some());

    let ok = wait_phase(&pods, "ok", "Succeeded").await;
    let t = main_state(&ok).unwrap().terminated.clone().unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    let logs = pods.logs("ok", &LogParams::default()).await.unwrap();
    assert!(
        logs.contains("hello\n") && logs.contains("oops\n"),
        "{logs:?}"
    );

    let bad = wait_phase(&pods, "bad", "Failed").await;
    let t = main_state(&bad).unwrap().terminated.clone().unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (4, Some("Error")));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_in_order_and_a_failure_fails_the_pod() {
    let (sim, client) = start().await;
    let pods = api(&client);
    let make = |name: &str, second_init: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "volumes": [{"name": "shared", "emptyDir": {}}],
                "initContainers": [
                    {"name": "one", "image": "busybox", "command": ["sh", "-c", "echo 1 > order"], "workingDir": "/s", "volumeMounts": [{"name": "shared", "mountPath": "/s"}]},
                    {"name": "two", "image": "busybox", "command": ["sh", "-c", second_init], "workingDir": "/s", "volumeMounts": [{"name": "shared", "mountPath": "/s"}]},
                ],
                "containers": [{"name": "main", "image": "busybox", "command": ["cat", "order"], "workingDir": "/s", "volumeMounts": [{"name": "shared", "mountPath": "/s"}]}],
            },
        }))
        .unwrap()
    };
    create(&pods, &make("good", "echo 2 >> order")).await;
    create(&pods, &make("broken", "exit 7")).await;
    wait_phase(&pods, "good", "Succeeded").await;
    assert_eq!(
        pods.logs("good", &LogParams::default()).await.unwrap(),
        "1\n2\n"
    );
    let broken = wait_phase(&pods, "broken", "Failed").await;
    let inits = broken
        .status
        .as_ref()
        .unwrap()
        .init_container_statuses
        .clone()
        .unwrap();
    assert_eq!(
        inits[1]
            .state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        7
    );
    assert!(
        main_state(&broken).unwrap().waiting.is_some(),
        "main never started"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_pods_stay_pending_until_allowed() {
    let (sim, client) = start().await;
    let pods = api(&client);
    sim.set_unschedulable(true);
    create(&pods, &pod("u", &["sleep", "infinity"])).await;
    let p = wait_for(&pods, "u", "Unschedulable", |p| {
        condition(p, "PodScheduled").is_some_and(|c| c.status == "False")
    })
    .await;
    let c = condition(&p, "PodScheduled").unwrap();
    assert_eq!(c.reason.as_deref(), Some("Unschedulable"));
    assert_eq!(
        c.message.as_deref(),
        Some("0/1 nodes are available: 1 Insufficient cpu.")
    );
    assert_eq!(phase(&p), "Pending");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(phase(&pods.get("u").await.unwrap()), "Pending");
    sim.set_unschedulable(false);
    wait_phase(&pods, "u", "Running").await;
    sim.shutdown().await;
}

/// Several nodes, each with room for one pod: pods spread over them, the one that finds
/// every node full waits Pending (as the scheduler's `Too many pods`), and is bound to
/// the node a pod left as soon as that pod ends. A terminal pod holds no slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_spread_over_nodes_and_wait_for_room() {
    let sim = Simulator::start(SimConfig {
        nodes: 2,
        max_pods_per_node: Some(1),
        ..SimConfig::default()
    })
    .await
    .expect("start simulator");
    let client = client(&sim, true);
    let pods = api(&client);
    create(&pods, &pod("a", &["sleep", "infinity"])).await;
    create(&pods, &pod("b", &["sleep", "infinity"])).await;
    let node = |p: &Pod| p.spec.as_ref().unwrap().node_name.clone().unwrap();
    let a = node(&wait_phase(&pods, "a", "Running").await);
    let b = node(&wait_phase(&pods, "b", "Running").await);
    let mut both = [a.clone(), b];
    both.sort();
    assert_eq!(both, ["sim-node-0", "sim-node-1"]);

    create(&pods, &pod("c", &["sleep", "infinity"])).await;
    let p = wait_for(&pods, "c", "Unschedulable", |p| {
        condition(p, "PodScheduled").is_some_and(|c| c.status == "False")
    })
    .await;
    let c = condition(&p, "PodScheduled").unwrap();
    assert_eq!(c.reason.as_deref(), Some("Unschedulable"));
    assert_eq!(
        c.message.as_deref(),
        Some("0/2 nodes are available: 2 Too many pods.")
    );
    assert_eq!(phase(&p), "Pending");

    // `a` ends (its pod stays, terminal): `c` takes its node.
    pods.delete("a", &kube::api::DeleteParams::default().grace_period(0))
        .await
        .expect("delete a");
    let c = node(&wait_phase(&pods, "c", "Running").await);
    assert_eq!(c, a);
    // A pod that ran to its end keeps no slot although it is still there.
    pods.delete("c", &kube::api::DeleteParams::default().grace_period(0))
        .await
        .expect("delete c");
    create(&pods, &pod("done", &["true"])).await;
    wait_phase(&pods, "done", "Succeeded").await;
    create(&pods, &pod("d", &["sleep", "infinity"])).await;
    assert_eq!(node(&wait_phase(&pods, "d", "Running").await), a);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pull_failures_show_waiting_reasons() {
    let (sim, client) = start().await;
    let pods = api(&client);
    sim.fail_image("nope", "manifest unknown");
    let mut p = pod("img", &["sleep", "infinity"]);
    p.spec.as_mut().unwrap().containers[0].image = Some("registry.example/nope:1".into());
    create(&pods, &p).await;
    let waiting_reason = |p: &Pod| {
        main_state(p)
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.clone())
    };
    let p = wait_for(&pods, "img", "ErrImagePull", |p| {
        waiting_reason(p).as_deref() == Some("ErrImagePull")
    })
    .await;
    let w = main_state(&p).unwrap().waiting.clone().unwrap();
    assert_eq!(w.message.as_deref(), Some("manifest unknown"));
    let p = wait_for(&pods, "img", "ImagePullBackOff", |p| {
        waiting_reason(p).as_deref() == Some("ImagePullBackOff")
    })
    .await;
    assert!(
        main_state(&p)
            .unwrap()
            .waiting
            .as_ref()
            .unwrap()
            .message
            .as_deref()
            .unwrap()
            .contains("manifest unknown")
    );
    assert_eq!(phase(&p), "Pending");
    sim.clear_image_failures();
    wait_phase(&pods, "img", "Running").await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_eviction_fails_the_pod_with_disruption_target() {
    let (sim, client) = start().await;
    let pods = api(&client);
    create(&pods, &pod("ev", &["sleep", "infinity"])).await;
    wait_phase(&pods, "ev", "Running").await;
    sim.evict(NS, "ev");
    let p = wait_phase(&pods, "ev", "Failed").await;
    let st = p.status.as_ref().unwrap();
    assert_eq!(st.reason.as_deref(), Some("Evicted"));
    assert!(st.message.as_deref().is_some_and(|m| !m.is_empty()));
    let dt = condition(&p, "DisruptionTarget").unwrap();
    assert_eq!(
        (dt.status.as_str(), dt.reason.as_deref()),
        ("True", Some("TerminationByKubelet"))
    );
    assert!(main_state(&p).unwrap().terminated.is_some());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kill_terminates_main_container_and_running_execs() {
    let (sim, client) = start().await;
    let pods = api(&client);
    create(&pods, &pod("oom", &["sleep", "infinity"])).await;
    wait_phase(&pods, "oom", "Running").await;
    let mut proc = pods
        .exec(
            "oom",
            ["sleep", "30"],
            &AttachParams::default().stdout(true).stderr(true),
        )
        .await
        .unwrap();
    let status = proc.take_status().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    sim.oom_kill(NS, "oom");
    let st = tokio::time::timeout(Duration::from_secs(5), status)
        .await
        .expect("exec ends");
    if let Some(st) = st {
        let code = st.details.unwrap().causes.unwrap()[0].message.clone();
        assert_eq!(code.as_deref(), Some("137"));
    }
    let p = wait_phase(&pods, "oom", "Failed").await;
    let t = main_state(&p).unwrap().terminated.clone().unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (137, Some("OOMKilled")));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_api_and_drain_delete_pods_with_disruption_target() {
    let (sim, client) = start().await;
    let pods = api(&client);
    // "a" ignores SIGTERM, so it stays terminating for its grace period.
    let mut a = pod("a", &["sh", "-c", "trap '' TERM; sleep 30"]);
    a.spec.as_mut().unwrap().termination_grace_period_seconds = Some(1);
    create(&pods, &a).await;
    // "b" is a pause program, which exits 0 on TERM (`sleep` as PID 1 would ignore it).
    create(&pods, &pod("b", &["/tools/pause"])).await;
    wait_phase(&pods, "a", "Running").await;
    wait_phase(&pods, "b", "Running").await;
    let rv0 = pods
        .get("b")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = pods
        .watch(
            &WatchParams::default().fields("metadata.name=b").timeout(20),
            &rv0,
        )
        .await
        .unwrap()
        .boxed();

    // kube 5 sends its delete options as `delete_options`, which the API
    // server (and so the simulator) ignores; the pod's own grace period applies.
    let st = pods.evict("a", &EvictParams::default()).await.unwrap();
    assert!(st.is_success(), "{st:?}");
    let a = pods.get("a").await.unwrap();
    assert!(a.metadata.deletion_timestamp.is_some());
    assert_eq!(
        condition(&a, "DisruptionTarget").unwrap().reason.as_deref(),
        Some("EvictionByEvictionAPI")
    );

    sim.drain_node();
    let mut saw_target = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Modified(p) => saw_target |= condition(&p, "DisruptionTarget").is_some(),
            WatchEvent::Deleted(_) => break,
            _ => {}
        }
    }
    assert!(saw_target);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pods.get_opt("a").await.unwrap().is_some() {
        if tokio::time::Instant::now() > deadline {
            panic!(
                "evicted pod a is not deleted: {:#?}",
                pods.get("a").await.unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_node_is_cordoned_until_uncordon() {
    let (sim, client) = start().await;
    let pods = api(&client);
    sim.drain_node();
    create(&pods, &pod("late", &["sleep", "infinity"])).await;
    let p = wait_for(&pods, "late", "unschedulable", |p| {
        condition(p, "PodScheduled").is_some()
    })
    .await;
    assert_eq!(
        condition(&p, "PodScheduled").unwrap().reason.as_deref(),
        Some("Unschedulable")
    );
    sim.uncordon();
    wait_phase(&pods, "late", "Running").await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_kubelet_makes_no_progress() {
    let (sim, client) = start().await;
    let pods = api(&client);
    sim.freeze_kubelet(true);
    create(&pods, &pod("f", &["true"])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = pods.get("f").await.unwrap();
    assert_eq!(phase(&p), "Pending");
    assert!(p.spec.unwrap().node_name.is_none());
    sim.freeze_kubelet(false);
    wait_phase(&pods, "f", "Succeeded").await;
    sim.shutdown().await;
}

/// What a drain does to a step pod whose main container is a pause program: the
/// runtime TERMs only the container's own process, pause exits 0, the kernel kills
/// the exec'd command with the container (137), and the kubelet writes the phase from
/// the containers' exit codes: `Succeeded`, with `DisruptionTarget` and a deletion
/// timestamp, until it has reclaimed the pod and confirms the deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_pause_pod_ends_succeeded_while_its_exec_dies_with_137() {
    let sim = jetbridge_kube_sim::Simulator::start(jetbridge_kube_sim::SimConfig {
        reclaim_delay: Duration::from_secs(3),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = client(&sim, true);
    let pods = api(&client);
    create(&pods, &pod("drained", &["/tools/pause"])).await;
    wait_phase(&pods, "drained", "Running").await;
    let mut proc = pods
        .exec(
            "drained",
            ["sleep", "30"],
            &AttachParams::default().stdout(true).stderr(true),
        )
        .await
        .unwrap();
    let status = proc.take_status().unwrap();
    sim.drain_node();
    let st = tokio::time::timeout(Duration::from_secs(5), status)
        .await
        .expect("the exec ends with its container")
        .expect("a status frame");
    let code = st.details.unwrap().causes.unwrap()[0].message.clone();
    assert_eq!(code.as_deref(), Some("137"), "killed, not TERMed");
    let p = wait_phase(&pods, "drained", "Succeeded").await;
    assert!(p.metadata.deletion_timestamp.is_some());
    assert_eq!(
        condition(&p, "DisruptionTarget").unwrap().reason.as_deref(),
        Some("EvictionByEvictionAPI")
    );
    let t = main_state(&p).unwrap().terminated.clone().unwrap();
    assert_eq!(t.exit_code, 0, "pause exits 0 on TERM");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pods.get_opt("drained").await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "never removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sim.shutdown().await;
}

/// A simulator that keeps a deleted pod's final status for a while before removing it,
/// so the container's terminated state can be read.
async fn start_keeping_deleted() -> (jetbridge_kube_sim::Simulator, kube::Client) {
    let sim = jetbridge_kube_sim::Simulator::start(jetbridge_kube_sim::SimConfig {
        reclaim_delay: Duration::from_secs(5),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = client(&sim, true);
    (sim, client)
}

/// Wait until the pod's log contains `what` (a command saying it is set up).
async fn wait_log(pods: &kube::Api<Pod>, name: &str, what: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let logs = pods
            .logs(name, &LogParams::default())
            .await
            .unwrap_or_default();
        if logs.contains(what) {
            return logs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what:?} in the log of {name}: {logs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Delete `name` with `grace` seconds; returns how long after the delete its main
/// container was first seen terminated, with its exit code and reason.
async fn delete_and_time_termination(
    pods: &kube::Api<Pod>,
    name: &str,
    grace: u32,
) -> (Duration, i32, Option<String>) {
    let asked = std::time::Instant::now();
    pods.delete(
        name,
        &kube::api::DeleteParams::default().grace_period(grace),
    )
    .await
    .unwrap();
    let deadline = asked + Duration::from_secs(u64::from(grace) + 10);
    loop {
        let p = pods.get(name).await.expect("kept after termination");
        if let Some(t) = main_state(&p).and_then(|s| s.terminated.clone()) {
            return (asked.elapsed(), t.exit_code, t.reason);
        }
        assert!(std::time::Instant::now() < deadline, "never terminated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A container's PID 1 without a SIGTERM handler ignores the runtime's TERM (the kernel
/// drops default-action signals sent to a PID namespace's init, pid_namespaces(7)), so a
/// deleted pod running `sleep infinity`, or a shell script that does not trap TERM, runs
/// on until the kubelet SIGKILLs it when the grace period ends: exit code 137, not 143
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pid_1_without_a_term_handler_runs_until_the_grace_period_ends_then_dies_137() {
    let (sim, client) = start_keeping_deleted().await;
    let pods = api(&client);
    create(&pods, &pod("sleeper", &["sleep", "infinity"])).await;
    create(&pods, &pod("script", &["sh", "-c", "echo ready; sleep 30"])).await;
    wait_phase(&pods, "sleeper", "Running").await;
    wait_log(&pods, "script", "ready").await;
    let grace = 2;
    let margin = Duration::from_millis(300);
    let (a, b) = tokio::join!(
        delete_and_time_termination(&pods, "sleeper", grace),
        delete_and_time_termination(&pods, "script", grace),
    );
    for (name, (after, code, reason)) in [("sleeper", a), ("script", b)] {
        assert!(
            after + margin >= Duration::from_secs(grace.into()),
            "{name} ended {after:?} after the delete, before its {grace} s grace period"
        );
        assert_eq!(
            (code, reason.as_deref()),
            (137, Some("Error")),
            "{name}: SIGKILLed"
        );
    }
    sim.shutdown().await;
}

/// A container whose PID 1 traps TERM gets it at once and ends with the code it chooses;
/// what it started in the background dies with it (the kernel kills a PID namespace when
/// its init exits), as jetbridge's helper idle loop `sleep 3600 & wait $!` relies on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pid_1_that_traps_term_exits_promptly_and_takes_its_children_with_it() {
    let (sim, client) = start_keeping_deleted().await;
    let pods = api(&client);
    let trap = r#"trap "exit 0" TERM; echo ready; while :; do sleep 0.1; done"#;
    create(&pods, &pod("trap", &["sh", "-c", trap])).await;
    let idle = r#"trap "exit 0" TERM; sleep 3600 & echo "child $!"; wait $!"#;
    create(&pods, &pod("idle", &["sh", "-c", idle])).await;
    wait_log(&pods, "trap", "ready").await;
    let logs = wait_log(&pods, "idle", "child ").await;
    let child: i32 = logs
        .lines()
        .find_map(|l| l.strip_prefix("child "))
        .and_then(|p| p.trim().parse().ok())
        .expect("child pid");
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().to_owned())
            })
            .is_some_and(|rest| !rest.starts_with('Z'))
    };
    assert!(alive(child), "the background sleep runs");
    let grace = 30;
    let (a, b) = tokio::join!(
        delete_and_time_termination(&pods, "trap", grace),
        delete_and_time_termination(&pods, "idle", grace),
    );
    for (name, (after, code, reason)) in [("trap", a), ("idle", b)] {
        assert_eq!(
            (code, reason.as_deref()),
            (0, Some("Completed")),
            "{name} exits 0 on TERM"
        );
        assert!(
            after < Duration::from_secs(5),
            "{name} took {after:?}: TERM was not delivered"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while alive(child) {
        assert!(
            std::time::Instant::now() < deadline,
            "the background sleep outlived its container"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.shutdown().await;
}
