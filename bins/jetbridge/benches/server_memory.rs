//! The server's memory with N builds running at once on the Kubernetes API simulator:
//! the server library over the kube backend, in one process with the simulator, RSS
//! read idle and once N one-step `sleep` builds run. The simulator's own share is
//! measured beside it, in the same run: the same N pods created directly, no server.
//!
//! `cargo bench -p jetbridge --bench server_memory` (`JB_BENCH_BUILDS`, default
//! "100 500"; each count in a fresh process: `JB_BENCH_ONE=N` is the child's part).

use std::sync::Arc;
use std::time::{Duration, Instant};

use jetbridge_core::images::ImageResolver;
use jetbridge_core::names::{StepHandle, StepIdentity};
use jetbridge_core::ports::{ArtifactRegistry, BuildQueue, PodSpec, Pods, Runtime};
use jetbridge_core::services::{BuildRunner, NoEvents, SessionConfig, StepConfig, WorkerSession};
use jetbridge_kube::{KubeBackend, KubeConfig};
use jetbridge_kube_sim::{SimConfig, Simulator};
use jetbridge_memory::{MemoryRegistry, MemoryVolumeStore};
use jetbridge_server::{Server, ServerConfig};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

const PLAN: &str = "jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      image_resource: {type: registry-image, source: {repository: busybox}}\n      run: {path: sh, args: [-c, 'sleep 60']}\n";

/// (idle KiB, KiB with `n` running) for the server on the simulator, or for the
/// simulator alone with `n` pods (`server` false).
async fn measure(n: usize, server: bool) -> (u64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Simulator::start(SimConfig {
        work_root: Some(dir.path().join("sim")),
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, "bench")
        .expect("kubeconfig");
    let backend = Arc::new(
        KubeBackend::new(KubeConfig {
            kubeconfig: Some(kubeconfig),
            namespace: Some("bench".into()),
            ..KubeConfig::default()
        })
        .await
        .expect("backend"),
    );
    let idle;
    let deadline = Instant::now() + Duration::from_secs(600);
    if server {
        let registry: Arc<dyn ArtifactRegistry> = Arc::new(MemoryRegistry::new());
        let rt = Runtime {
            pods: backend.clone(),
            exec: backend.clone(),
            volumes: Some(Arc::new(MemoryVolumeStore::new())),
            registry,
        };
        let runner = BuildRunner::new(
            rt.clone(),
            StepConfig::default(),
            ImageResolver::new(),
            "bench",
            Arc::new(NoEvents),
        );
        let session = WorkerSession::start(rt, runner, SessionConfig::new("bench"))
            .await
            .expect("session");
        let queue = Arc::new(jetbridge_memory_registry::MemoryBuildQueue::new());
        let srv = Server::start(
            queue.clone(),
            session,
            ImageResolver::new(),
            false,
            ServerConfig {
                max_builds: n,
                max_queued: None,
                ..ServerConfig::default()
            },
        )
        .expect("server");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let router = srv.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        idle = rss_kib();
        let client = reqwest::Client::new();
        for _ in 0..n {
            let res = client
                .post(format!("{base}/api/v1/builds"))
                .json(&serde_json::json!({"pipeline": PLAN}))
                .send()
                .await
                .expect("submit");
            assert_eq!(res.status(), 201);
        }
        // Every build's step is running its command (its pod counted as running).
        loop {
            let running = sim
                .pods("bench")
                .iter()
                .filter(|p| p["status"]["phase"].as_str() == Some("Running"))
                .count();
            if running >= n && srv.running() == n {
                break;
            }
            assert!(Instant::now() < deadline, "only {running} of {n} running");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let with = rss_kib();
        for b in queue
            .list(&jetbridge_core::ports::BuildFilter::default().with_limit(n.max(1)))
            .await
            .expect("list")
            .builds
        {
            let _ = queue.request_abort(b.id, "bench over").await;
        }
        (idle, with)
    } else {
        idle = rss_kib();
        for i in 0..n {
            let id = StepIdentity {
                pipeline: "bench".into(),
                job: "j".into(),
                build: i as u64,
                step: "s".into(),
                step_type: "task".into(),
                handle: StepHandle::random(),
                worker: "bench".into(),
            };
            let mut spec = PodSpec::new(id.pod_name(), "busybox:1.36");
            spec.labels = id.labels();
            backend.create(&spec).await.expect("create");
        }
        loop {
            let running = sim
                .pods("bench")
                .iter()
                .filter(|p| p["status"]["phase"].as_str() == Some("Running"))
                .count();
            if running >= n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {running} of {n} pods running"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (idle, rss_kib())
    }
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    if let Ok(one) = std::env::var("JB_BENCH_ONE") {
        let (n, server) = match one.split_once(':') {
            Some((n, "sim")) => (n.parse().expect("a count"), false),
            _ => (one.parse().expect("a count"), true),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (idle, with) = rt.block_on(measure(n, server));
        println!("{idle} {with}");
        // Leave at once: the pods' processes go with the simulator's process group.
        std::process::exit(0);
    }
    let counts: Vec<usize> = if smoke {
        vec![2]
    } else {
        std::env::var("JB_BENCH_BUILDS")
            .unwrap_or_else(|_| "100 500".into())
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    let exe = std::env::current_exe().expect("exe");
    let run = |arg: String| {
        let out = std::process::Command::new(&exe)
            .env("JB_BENCH_ONE", &arg)
            .output()
            .expect("child");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text
            .split_whitespace()
            .filter_map(|n| n.parse::<u64>().ok());
        match (it.next(), it.next()) {
            (Some(a), Some(b)) => (a, b),
            _ => panic!(
                "the {arg} run printed {text:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    };
    println!(
        "| builds running | process idle | with server + simulator | simulator alone, same pods | server's share |"
    );
    println!("|---|---|---|---|---|");
    for n in counts {
        let (idle, with) = run(n.to_string());
        let (sim_idle, sim_with) = run(format!("{n}:sim"));
        let share = (with - idle).saturating_sub(sim_with - sim_idle);
        println!(
            "| {n} | {:.1} MiB | {:.1} MiB | {:.1} MiB (+{:.1}) | {:.1} MiB ({:.0} KiB per build) |",
            idle as f64 / 1024.0,
            with as f64 / 1024.0,
            sim_with as f64 / 1024.0,
            (sim_with - sim_idle) as f64 / 1024.0,
            (idle + share) as f64 / 1024.0,
            share as f64 / n as f64,
        );
    }
}
