//! Failure scenarios through a `jetbridge server` process on the Kubernetes API
//! simulator, with a Postgres registry and queue in a scratch schema: a node drain, a
//! kubelet eviction, an OOM kill, an API server restart while a pod is created, and a
//! network partition between the server and the API server (connections reset, or
//! stalled). Each test checks that the build ends, that the platform's failure is
//! `errored` (never `succeeded`, never `failed`; a fault that loses nothing lets the
//! build succeed), the exact message the user reads, and that one reaper pass after the
//! end leaves no pod, env Secret, volume or registry row. Each prints its recovery time
//! (fault to terminal state) for docs/failure-scenarios.md. They fail, never skip,
//! without Postgres (`source .ci/postgres-env.sh`).

mod harness;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::{ServerProc as Replica, bin, database_url, running_pod, scrape, text};
use jetbridge_core::ports::VolumeStore;
use jetbridge_kube_sim::{Fault, FaultAction, SimConfig, SimControls, Simulator};
use jetbridge_postgres::scratch::ScratchSchema;
use serde_json::Value;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// How long the kubelet takes to confirm a graceful deletion: a cluster's takes a
/// moment, during which a drained pod is seen terminating with its eviction recorded.
const RECLAIM: Duration = Duration::from_secs(1);

/// The scenarios take turns: each starts a simulator and a replica, and on a 2-core
/// machine two at once starve each other's heartbeats.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A step that prints, then runs for `secs` unless something stops it.
fn slow_task(secs: u32) -> String {
    format!(
        "jobs:\n- name: j\n  plan:\n  - task: t\n    params: {{TOKEN: s3cr3t}}\n    config:\n      platform: linux\n      image_resource: {{type: registry-image, source: {{repository: busybox}}}}\n      outputs: [{{name: out}}]\n      run: {{path: sh, args: [-c, 'echo started; echo data > out/f; sleep {secs}']}}\n"
    )
}

/// One scenario's world: the simulator, a scratch schema, a volume directory and one
/// replica using them all.
/// Fields drop in order: the replica goes before the schema it uses and the directory
/// its data lives in.
struct World {
    replica: Option<Replica>,
    sim: Simulator,
    schema: ScratchSchema,
    db: String,
    ns: &'static str,
    http: reqwest::Client,
    /// Whether step pods get the step-pod helper (the chart's default).
    step_helper: bool,
    dir: tempfile::TempDir,
}

/// The image the helper comes from in these scenarios.
const HELPER_IMAGE: &str = "ghcr.io/jetbridge/jetbridge:test";

impl World {
    /// The simulator and a scratch schema; no replica yet.
    async fn new(ns: &'static str, reclaim: Duration) -> World {
        let db = database_url();
        let schema = ScratchSchema::new(&db, "jb_fail").expect("scratch schema");
        let dir = tempfile::tempdir().expect("tempdir");
        let sim = Simulator::start(SimConfig {
            work_root: Some(dir.path().join("sim")),
            reclaim_delay: reclaim,
            ..SimConfig::default()
        })
        .await
        .expect("simulator");
        std::fs::create_dir_all(dir.path().join("volumes")).expect("volumes");
        World {
            replica: None,
            sim,
            schema,
            db,
            ns,
            http: reqwest::Client::new(),
            step_helper: false,
            dir,
        }
    }

    /// Step pods get the step-pod helper, from the build the simulator's kubelet runs,
    /// as the chart deploys them.
    fn with_step_helper(mut self) -> World {
        self.sim
            .image_file(
                HELPER_IMAGE,
                jetbridge_kube::STEP_HELPER_PATH,
                jetbridge_kube_sim::built_step_helper(),
            )
            .expect("the helper image's file");
        self.step_helper = true;
        self
    }

    fn volumes(&self) -> PathBuf {
        self.dir.path().join("volumes")
    }

    /// Start the replica, reaching the API server at `api` (the simulator itself, or a
    /// proxy in front of it), its registration living `worker_ttl`.
    async fn start_replica(&mut self, api: &str, worker_ttl: &str) {
        let kubeconfig = self.dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {api}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n    user: sim\n    namespace: {}\ncurrent-context: sim\nusers:\n- name: sim\n  user: {{}}\n",
                self.ns
            ),
        )
        .expect("kubeconfig");
        let mut args: Vec<String> = [
            "--backend",
            "kube",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--volumes",
            self.volumes().to_str().unwrap(),
            "--registry",
            &self.db,
            "--registry-schema",
            self.schema.name(),
            "--worker",
            "fail-a",
            "--worker-ttl",
            worker_ttl,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if self.step_helper {
            args.extend(["--step-helper-image".to_owned(), HELPER_IMAGE.to_owned()]);
        }
        let data = self.dir.path().join("data");
        self.replica = Some(
            tokio::task::spawn_blocking(move || Replica::start(&data, &args))
                .await
                .expect("starts"),
        );
    }

    fn replica(&self) -> &Replica {
        self.replica.as_ref().expect("a replica")
    }

    async fn submit(&self, pipeline: &str) -> u64 {
        let res = self
            .http
            .post(format!("{}/api/v1/builds", self.replica().url))
            .json(&serde_json::json!({"pipeline": pipeline, "file": "scenario.yml", "job": "j"}))
            .send()
            .await
            .expect("the API answers");
        assert_eq!(res.status().as_u16(), 201, "{:?}", res.text().await);
        let v: Value = res.json().await.expect("JSON");
        v["id"].as_u64().expect("an id")
    }

    async fn build(&self, id: u64) -> Value {
        self.http
            .get(format!("{}/api/v1/builds/{id}", self.replica().url))
            .send()
            .await
            .expect("the API answers")
            .json()
            .await
            .expect("JSON")
    }

    /// Wait (bounded) until the build has ended; the build.
    async fn terminal(&self, id: u64, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let b = self.build(id).await;
            if !matches!(b["state"].as_str(), Some("queued" | "running")) {
                return b;
            }
            assert!(Instant::now() < deadline, "build {id} never ended: {b}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The events stored so far, as the SSE text.
    async fn events(&self, id: u64) -> String {
        self.http
            .get(format!(
                "{}/api/v1/builds/{id}/events?follow=false",
                self.replica().url
            ))
            .send()
            .await
            .expect("the API answers")
            .text()
            .await
            .unwrap_or_default()
    }

    /// Wait (bounded) until the build's output has a chunk starting with `said`.
    async fn wait_output(&self, id: u64, said: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        // The output event's JSON, not an event name (`step-started`).
        let chunk = format!("\"text\":\"{said}");
        while !self.events(id).await.contains(&chunk) {
            assert!(Instant::now() < deadline, "build {id} never said {said:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What `jetbridge logs ID` prints, as the user reads it.
    async fn logs(&self, id: u64) -> String {
        let mut c = bin();
        c.args(["logs", &id.to_string(), "--server", &self.replica().url]);
        let out = tokio::task::spawn_blocking(move || c.output().expect("logs"))
            .await
            .expect("joins");
        text(&out.stdout)
    }

    async fn metrics(&self) -> String {
        scrape(&self.http, &self.replica().metrics_url).await
    }

    /// The replica's reaper passes so far, whatever their result.
    async fn reaper_passes(&self) -> u64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with("jetbridge_reaper_passes_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Wait for a reaper pass that starts after now to end (bounded), then check that
    /// nothing is left: no step pod, env Secret, volume, artifact row or reference.
    async fn assert_nothing_left_after_a_reaper_pass(&self) {
        let before = self.reaper_passes().await;
        // The pass under way now may have started before the build ended: the one
        // after it is the first that surely saw the end.
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.reaper_passes().await < before + 2 {
            assert!(Instant::now() < deadline, "no reaper pass ended");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let managed = |items: Vec<Value>| {
            items
                .into_iter()
                .filter(|o| o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "jetbridge")
                .map(|o| o["metadata"]["name"].as_str().unwrap_or("").to_owned())
                .collect::<Vec<_>>()
        };
        let pods = managed(self.sim.pods(self.ns));
        assert!(pods.is_empty(), "pods left: {pods:?}");
        let secrets = managed(self.sim.secrets(self.ns));
        assert!(secrets.is_empty(), "Secrets left: {secrets:?}");
        let store = jetbridge_fs::FsVolumeStore::new(self.volumes()).expect("store");
        let volumes = store.list().await.expect("the store lists");
        assert!(volumes.is_empty(), "volumes left: {volumes:?}");
        for table in ["artifacts", "artifact_refs"] {
            let rows = psql(
                &self.db,
                &format!("select count(*) from {}.{table}", self.schema.name()),
            );
            assert_eq!(rows.trim(), "0", "rows left in {table}");
        }
    }

    /// The first running pod of the namespace (bounded wait); its name.
    /// A replica, a 60 s step that has started, then `fault` (given the simulator,
    /// the namespace and the step's pod); the build once it has ended, and the time
    /// from the fault to its end printed as `scenario`'s recovery.
    async fn fault_mid_step(
        &mut self,
        scenario: &str,
        fault: impl FnOnce(&Simulator, &str, &str),
    ) -> (u64, Value) {
        self.start_replica(&self.sim.url(), "3s").await;
        let id = self.submit(&slow_task(60)).await;
        self.wait_output(id, "started").await;
        let pod = self.running_pod().await;
        let at = now_ms();
        fault(&self.sim, self.ns, &pod);
        let b = self.terminal(id, Duration::from_secs(60)).await;
        recovery(scenario, at, &b);
        (id, b)
    }

    async fn running_pod(&self) -> String {
        running_pod(&self.sim, self.ns).await
    }
}

/// What `sql` selects, one row a line (`psql -At`).
fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .arg(url)
        .args(["-At", "-c", sql])
        .output()
        .expect("psql");
    assert!(out.status.success(), "psql: {}", text(&out.stderr));
    text(&out.stdout)
}

/// Recovery time from `fault_ms` to the build's end, printed for the docs.
fn recovery(scenario: &str, fault_ms: u64, build: &Value) -> Duration {
    let end = build["finished_at_ms"].as_u64().expect("an end time");
    let took = Duration::from_millis(end.saturating_sub(fault_ms));
    eprintln!("recovery: {scenario}: {took:?} from the fault to the build's end");
    took
}

/// Check (b) and (c): the build errored (the platform's failure, never the command's),
/// its step's failure class is `class`, its reason is `reason`, and the user reads
/// `says` in its log.
async fn assert_errored(
    w: &World,
    id: u64,
    build: &Value,
    class: &str,
    reason: &str,
    says: &[&str],
) {
    // Pod names end in random hex: the messages are compared with them as `POD`.
    let pods: Vec<String> = w
        .sim
        .pods_created(w.ns)
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    let named = |t: &str| {
        pods.iter()
            .fold(t.to_owned(), |t, p| t.replace(p.as_str(), "POD"))
    };
    let logs = named(&w.logs(id).await);
    assert_eq!(build["state"], "errored", "{build}\n{logs}");
    assert_eq!(
        build["outcome"]["steps"][0]["failure_class"], class,
        "{build}"
    );
    assert_eq!(
        build["reason"].as_str().map(named).as_deref(),
        Some(reason),
        "{build}\n{logs}"
    );
    for s in says {
        assert!(logs.contains(s), "{s:?} not in:\n{logs}");
    }
    assert!(logs.contains("build errored"), "{logs}");
    assert!(!logs.contains("build succeeded"), "{logs}");
    assert!(!logs.contains("build failed"), "{logs}");
}

/// 1. A node drained while a step runs (`kubectl drain`: cordon, then the eviction API
///    on every pod): the build errors, naming the eviction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_drain_mid_step_errors_the_build_and_leaves_nothing() {
    let _turn = TURN.lock().await;
    node_drain(World::new("jb-drain", RECLAIM).await, "node drain").await;
}

async fn node_drain(mut w: World, scenario: &str) {
    let (id, b) = w
        .fault_mid_step(scenario, |sim, _, _| sim.drain_node())
        .await;
    assert_errored(
        &w,
        id,
        &b,
        "evicted",
        "task: t: evicted: Eviction API: evicting",
        &[
            "✗ task: t: evicted: Eviction API: evicting",
            "build errored in ",
        ],
    )
    .await;
    // The next build needs a schedulable node.
    w.sim.uncordon();
    w.assert_nothing_left_after_a_reaper_pass().await;
}

/// 2a. The kubelet evicts the step's pod under memory pressure (the pod object stays,
///     `Failed`, reason `Evicted`): the build errors, quoting the kubelet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_eviction_under_memory_pressure_errors_the_build_and_leaves_nothing() {
    let _turn = TURN.lock().await;
    let w = World::new("jb-pressure", Duration::ZERO).await;
    kubelet_eviction(w, "kubelet eviction (memory pressure)").await;
}

async fn kubelet_eviction(mut w: World, scenario: &str) {
    let (id, b) = w
        .fault_mid_step(scenario, |sim, ns, pod| sim.evict(ns, pod))
        .await;
    const KUBELET: &str = "evicted: The node was low on resource: memory. Threshold quantity: 100Mi, available: 10Mi.";
    assert_errored(
        &w,
        id,
        &b,
        "evicted",
        &format!("task: t: {KUBELET}"),
        &[&format!("✗ task: t: {KUBELET}")],
    )
    .await;
    w.assert_nothing_left_after_a_reaper_pass().await;
}

/// 2b. The step's container is OOM-killed mid-command (cgroup v2's group kill): the
///     build errors as out of memory, never as the command's exit status 137.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_mid_step_errors_the_build_and_leaves_nothing() {
    let _turn = TURN.lock().await;
    oom_kill(World::new("jb-oom", Duration::ZERO).await, "OOM kill").await;
}

async fn oom_kill(mut w: World, scenario: &str) {
    let (id, b) = w
        .fault_mid_step(scenario, |sim, ns, pod| sim.oom_kill(ns, pod))
        .await;
    const OOM: &str = "OOM-killed (exit 137): container main terminated: OOMKilled (exit code 137)";
    assert_errored(
        &w,
        id,
        &b,
        "oom-killed",
        &format!("task: t: {OOM}"),
        &[&format!("✗ task: t: {OOM}")],
    )
    .await;
    assert!(
        !w.logs(id).await.contains("exited with status 137"),
        "an OOM kill is not the command's exit status"
    );
    w.assert_nothing_left_after_a_reaper_pass().await;
}

/// 2c. The kubelet evicts the pod after the command has exited 0, while its output is
///     streamed out (`tar -c` through exec): the step is never reported as
///     succeeded, and nothing of its output is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_eviction_while_outputs_stream_out_errors_and_keeps_nothing() {
    let _turn = TURN.lock().await;
    let mut w = World::new("jb-outputs", Duration::ZERO).await;
    w.start_replica(&w.sim.url(), "3s").await;
    // The output's exec waits, so the eviction lands while it is under way.
    w.sim.inject(Fault {
        method: None,
        path_contains: Some("/exec".to_owned()),
        query_contains: Some("command=tar".to_owned()),
        times: 1,
        action: FaultAction::Delay(Duration::from_secs(2)),
    });
    w.sim.reset_requests();
    let id = w.submit(&slow_task(0)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !w
        .sim
        .requests()
        .iter()
        .any(|r| r.path.ends_with("/exec") && r.query.contains("command=tar"))
    {
        assert!(Instant::now() < deadline, "the output was never streamed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pod = w.running_pod().await;
    let fault = now_ms();
    w.sim.evict(w.ns, &pod);
    let b = w.terminal(id, Duration::from_secs(60)).await;
    recovery("kubelet eviction while outputs stream out", fault, &b);
    const KUBELET: &str = "evicted: The node was low on resource: memory. Threshold quantity: 100Mi, available: 10Mi.";
    assert_errored(
        &w,
        id,
        &b,
        "evicted",
        &format!("task: t: {KUBELET}"),
        &[&format!("✗ task: t: {KUBELET}")],
    )
    .await;
    // The output the command wrote was never sealed nor bound.
    assert_eq!(b["outcome"]["artifacts"], serde_json::json!([]), "{b}");
    assert_eq!(
        b["outcome"]["steps"][0]["artifacts"],
        serde_json::json!([]),
        "{b}"
    );
    w.assert_nothing_left_after_a_reaper_pass().await;
}

/// 3. The API server restarts while the step's pod is created, and the answers of the
///    env Secret's create and of the pod's are lost though both were made: the resent
///    creates adopt them (one Secret and one pod for the step), and the step runs to
///    its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_restart_during_pod_creation_makes_one_pod_and_the_build_ends() {
    let _turn = TURN.lock().await;
    let mut w = World::new("jb-restart", Duration::ZERO).await;
    w.start_replica(&w.sim.url(), "3s").await;
    for what in ["secrets", "pods"] {
        w.sim.inject(Fault::on(
            "POST",
            &format!("/namespaces/{}/{what}", w.ns),
            1,
            FaultAction::DropAfterCommit,
        ));
    }
    w.sim.reset_requests();
    let id = w.submit(&slow_task(1)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !w
        .sim
        .requests()
        .iter()
        .any(|r| r.method == "POST" && r.path.ends_with("/pods"))
    {
        assert!(Instant::now() < deadline, "the pod was never created");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fault = now_ms();
    w.sim.restart().await;
    let b = w.terminal(id, Duration::from_secs(120)).await;
    recovery("API server restart during pod creation", fault, &b);
    let logs = w.logs(id).await;
    eprintln!("{logs}");
    let created: Vec<String> = w
        .sim
        .pods_created(w.ns)
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_owned())
        .collect();
    let creates = w
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/pods"))
        .count();
    eprintln!("pods created: {created:?}; creates sent: {creates}");
    assert_eq!(created.len(), 1, "one pod for the step: {created:?}");
    assert!(
        creates >= 2,
        "the lost answer made the create be sent again"
    );
    let secrets = w.sim.secrets_created(w.ns).len();
    let secret_creates = w
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/secrets"))
        .count();
    eprintln!("Secrets created: {secrets}; creates sent: {secret_creates}");
    assert_eq!(secrets, 1, "one env Secret for the step");
    assert!(secret_creates >= 2, "the Secret's create was sent again");
    assert_eq!(b["state"], "succeeded", "{b}\n{logs}");
    assert!(logs.contains("✓ task: t"), "{logs}");
    w.assert_nothing_left_after_a_reaper_pass().await;
}

/// A TCP proxy in front of `upstream` that a test can cut (every open connection
/// closed, new ones closed as soon as they are accepted) and heal.
struct Partition {
    url: String,
    cut: Arc<tokio::sync::watch::Sender<bool>>,
}

/// How a cut network behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CutMode {
    /// Every open connection is closed, new ones are closed as soon as they are
    /// accepted: what a client sees behind a firewall that rejects, or a proxy or NAT
    /// that lost its state.
    Reset,
    /// Nothing goes through and nothing is closed: open connections stall, new ones
    /// wait unanswered; once healed, everything goes on where it stopped (packets
    /// dropped, then retransmitted).
    Blackhole,
}

impl Partition {
    async fn start(upstream: String, mode: CutMode) -> Partition {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let cut = Arc::new(tokio::sync::watch::Sender::new(false));
        let up_addr = upstream.trim_start_matches("http://").to_owned();
        let state = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if mode == CutMode::Reset && *state.borrow() {
                    // Partitioned: the connection goes nowhere.
                    drop(down);
                    continue;
                }
                let mut rx = state.subscribe();
                let up_addr = up_addr.clone();
                tokio::spawn(async move {
                    if mode == CutMode::Blackhole && rx.wait_for(|c| !*c).await.is_err() {
                        return;
                    }
                    let Ok(mut up) = tokio::net::TcpStream::connect(&up_addr).await else {
                        return;
                    };
                    match mode {
                        CutMode::Reset => {
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                                // Dropping both ends closes them: the partition cuts it.
                                _ = rx.wait_for(|c| *c) => {}
                            }
                        }
                        CutMode::Blackhole => {
                            let (dr, dw) = down.into_split();
                            let (ur, uw) = up.into_split();
                            tokio::join!(
                                stalling_copy(dr, uw, rx.clone()),
                                stalling_copy(ur, dw, rx)
                            );
                        }
                    }
                });
            }
        });
        Partition { url, cut }
    }

    fn set_cut(&self, on: bool) {
        self.cut.send_replace(on);
    }
}

/// Copy `from` to `to`, holding each chunk while the network is cut.
async fn stalling_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if cut.wait_for(|c| !*c).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// How long the network between the server and the API server stays cut.
const PARTITION: Duration = Duration::from_secs(35);

/// 8. The network between the server and the API server is cut for longer than the
///    worker's registration lives (its heartbeat goes to Postgres, which stays
///    reachable, so the worker is not fenced), then healed: the running build, its
///    exec cut, is never reported as succeeded, it ends errored; a build submitted
///    during the cut runs once the network is back; after healing a reaper pass
///    leaves nothing, and a build submitted then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_from_the_api_server_longer_than_the_worker_ttl_errors_the_build_and_heals() {
    let _turn = TURN.lock().await;
    let mut w = World::new("jb-partition", Duration::ZERO).await;
    let proxy = Partition::start(w.sim.url(), CutMode::Reset).await;
    w.start_replica(&proxy.url, "6s").await;
    let id = w.submit(&slow_task(60)).await;
    w.wait_output(id, "started").await;
    let fault = now_ms();
    proxy.set_cut(true);
    // A build submitted while the API server cannot be reached: its pod cannot be made
    // until the network is back.
    let cut_off = w.submit(&slow_task(0)).await;
    // The partition lasts longer than the worker's 6 s registration, and longer than
    // the step goes on trying to remove its pod (about 25 s of retries here), so the
    // pod is the reaper's to remove once the network is back: this wait is the
    // fault's length, not a synchronisation.
    tokio::time::sleep(PARTITION).await;
    eprintln!(
        "partition: the build is {} after {PARTITION:?}",
        w.build(id).await["state"]
    );
    proxy.set_cut(false);
    let healed = now_ms();
    // A build submitted as soon as the network is back runs beside the one still
    // ending.
    let next = w.submit(&slow_task(0)).await;
    let b = w.terminal(id, Duration::from_secs(120)).await;
    recovery("partition from the API server", fault, &b);
    const LOST: &str =
        "lost contact with the command: the exec stream of pod POD ended without an exit status";
    assert_errored(
        &w,
        id,
        &b,
        "exec-lost",
        &format!("task: t: {LOST}"),
        &[&format!("✗ task: t: {LOST}")],
    )
    .await;
    // The create is retried through the partition and made once the network is
    // back: that build runs whole, on one pod.
    let cb = w.terminal(cut_off, Duration::from_secs(120)).await;
    assert_eq!(cb["state"], "succeeded", "{cb}\n{}", w.logs(cut_off).await);
    let its_pods = w
        .sim
        .pods_created(w.ns)
        .iter()
        .filter(|p| {
            p["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.contains(&format!("-b{cut_off}-")))
        })
        .count();
    assert_eq!(its_pods, 1, "one pod for the step submitted during the cut");
    eprintln!(
        "recovery: partition from the API server: the build submitted during it succeeded {:?} after healing",
        Duration::from_millis(
            cb["finished_at_ms"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(healed)
        )
    );
    let nb = w.terminal(next, Duration::from_secs(60)).await;
    assert_eq!(nb["state"], "succeeded", "{nb}");
    eprintln!(
        "recovery: partition from the API server: the next build succeeded {:?} after healing",
        Duration::from_millis(
            nb["finished_at_ms"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(healed)
        )
    );
    // The step gave up removing its pod during the partition: how soon after the
    // heal the reaper had removed it (and its Secret with it).
    let deadline = Instant::now() + Duration::from_secs(90);
    while !w.sim.pods(w.ns).is_empty() || !w.sim.secrets(w.ns).is_empty() {
        assert!(Instant::now() < deadline, "the pods were never removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "recovery: partition from the API server: no pod or Secret left {:?} after healing",
        Duration::from_millis(now_ms().saturating_sub(healed))
    );
    eprintln!(
        "partition: reaper removals: {:?}",
        w.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with("jetbridge_reaper_removals_total{"))
            .collect::<Vec<_>>()
    );
    w.assert_nothing_left_after_a_reaper_pass().await;
}

/// 8b. The same partition as packets dropped rather than connections reset: open
///     connections stall and new ones wait, for longer than the worker's
///     registration lives; the step's command ends meanwhile. Once healed, nothing
///     was lost: the command's status arrives and the build succeeds on its one pod,
///     and a reaper pass leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_partition_that_heals_loses_nothing() {
    let _turn = TURN.lock().await;
    let mut w = World::new("jb-blackhole", Duration::ZERO).await;
    let proxy = Partition::start(w.sim.url(), CutMode::Blackhole).await;
    w.start_replica(&proxy.url, "6s").await;
    let id = w.submit(&slow_task(3)).await;
    w.wait_output(id, "started").await;
    let fault = now_ms();
    proxy.set_cut(true);
    // Longer than the registration and the command: the fault's length.
    tokio::time::sleep(BLACKHOLE).await;
    eprintln!(
        "blackhole: the build is {} after {BLACKHOLE:?}",
        w.build(id).await["state"]
    );
    proxy.set_cut(false);
    let healed = now_ms();
    let b = w.terminal(id, Duration::from_secs(120)).await;
    recovery("blackholed partition", fault, &b);
    eprintln!(
        "recovery: blackholed partition: the build ended {:?} after healing",
        Duration::from_millis(
            b["finished_at_ms"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(healed)
        )
    );
    // The command exited 0 during the cut, and its status was held, not lost: a
    // success here is the truth, reported once it is known.
    let logs = w.logs(id).await;
    assert_eq!(b["state"], "succeeded", "{b}\n{logs}");
    assert!(logs.contains("[task: t] started"), "{logs}");
    assert!(logs.contains("✓ task: t"), "{logs}");
    assert!(logs.contains("build succeeded"), "{logs}");
    assert_eq!(w.sim.pods_created(w.ns).len(), 1, "one pod for the step");
    w.assert_nothing_left_after_a_reaper_pass().await;
}

/// How long the blackholed network stays cut.
const BLACKHOLE: Duration = Duration::from_secs(15);

/// Drain, kubelet eviction and OOM again with the step-pod helper as PID 1, the chart's
/// default: the helper exits 0 on the kubelet's TERM, so a drained pod ends `Succeeded`
/// while its command dies with 137, and the step must still read as evicted, never as
/// the command's failure.
mod with_the_step_helper {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_drain_mid_step_errors_the_build_and_leaves_nothing() {
        let _turn = TURN.lock().await;
        let w = World::new("jb-drain-h", RECLAIM).await.with_step_helper();
        node_drain(w, "node drain, helper").await;
    }

    /// The exec stream of the step's command drops mid-command: the command is
    /// re-attached, runs once, its whole output is read once, and the build succeeds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_exec_stream_mid_step_is_reattached_and_the_build_succeeds() {
        let _turn = TURN.lock().await;
        let mut w = World::new("jb-drop-h", Duration::ZERO)
            .await
            .with_step_helper();
        w.start_replica(&w.sim.url(), "3s").await;
        // The build's first exec is the task's command: its stream drops after its
        // first output.
        w.sim.drop_exec_streams(1);
        let pipeline = "jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      run: {path: sh, args: [-c, 'echo alpha-$((1+1)); sleep 0.5; echo omega-$((2+2))']}\n";
        let id = w.submit(pipeline).await;
        let b = w.terminal(id, Duration::from_secs(60)).await;
        let logs = w.logs(id).await;
        assert_eq!(b["state"], "succeeded", "{b}\n{logs}");
        assert_eq!(logs.matches("alpha-2").count(), 1, "{logs}");
        assert_eq!(logs.matches("omega-4").count(), 1, "{logs}");
        let execs: Vec<String> = w
            .sim
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/exec"))
            .map(|r| r.query.clone())
            .collect();
        let starts = execs.iter().filter(|q| q.contains("alpha-")).count();
        let attaches = execs
            .iter()
            .filter(|q| q.contains("command=attach"))
            .count();
        assert_eq!((starts, attaches), (1, 1), "{execs:#?}");
        w.assert_nothing_left_after_a_reaper_pass().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kubelet_eviction_errors_the_build_and_leaves_nothing() {
        let _turn = TURN.lock().await;
        let w = World::new("jb-pressure-h", Duration::ZERO)
            .await
            .with_step_helper();
        kubelet_eviction(w, "kubelet eviction, helper").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_oom_kill_mid_step_errors_the_build_and_leaves_nothing() {
        let _turn = TURN.lock().await;
        let w = World::new("jb-oom-h", Duration::ZERO)
            .await
            .with_step_helper();
        oom_kill(w, "OOM kill, helper").await;
    }
}
