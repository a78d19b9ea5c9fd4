//! Orchestration time per step on Kubernetes, against the API simulator's own pod start
//! time, in the same run: a one-step build of `true` (create, wait, exec, post-exec
//! check, delete, registry) against creating a pod and waiting until it runs.
//!
//! `cargo bench -p jetbridge --bench kube_steps` (`JB_BENCH_STEPS`, default 20).

use jetbridge_core::ports::{DeleteOpts, WaitOpts};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jetbridge_core::images::ImageResolver;
use jetbridge_core::names::{StepHandle, StepIdentity};
use jetbridge_core::plan::{Vars, parse_pipeline};
use jetbridge_core::ports::{ArtifactRegistry, PodSpec, Pods, Runtime, WaitFor};
use jetbridge_core::services::{BuildRequest, BuildRunner, BuildStatus, NoEvents, StepConfig};
use jetbridge_kube::{KubeBackend, KubeConfig};
use jetbridge_kube_sim::{SimConfig, Simulator};
use jetbridge_memory::{MemoryRegistry, MemoryVolumeStore};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let steps: usize = if smoke {
        2
    } else {
        std::env::var("JB_BENCH_STEPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let sim_cfg = SimConfig { work_root: Some(dir.path().join("sim")), ..SimConfig::default() };
        let (sched, start) = (sim_cfg.schedule_delay, sim_cfg.start_delay);
        let sim = Simulator::start(sim_cfg).await.expect("simulator");
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig, "bench").expect("kubeconfig");
        let backend = Arc::new(
            KubeBackend::new(KubeConfig {
                kubeconfig: Some(kubeconfig),
                namespace: Some("bench".into()),
                ..KubeConfig::default()
            })
            .await
            .expect("backend"),
        );

        // Baseline: the pod start as the API shows it (create + wait until running).
        let mut starts = Vec::new();
        for i in 0..steps {
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
            let t = Instant::now();
            backend.create(&spec).await.expect("create");
            let st = backend.wait(&spec.name, &WaitOpts::new(WaitFor::Running, Duration::from_secs(30))).await.expect("wait");
            starts.push(t.elapsed());
            assert!(st.satisfies(WaitFor::Running));
            backend.delete(&spec.name, &DeleteOpts::grace(Duration::ZERO)).await.expect("delete");
        }

        // jetbridge: a whole one-step build of `true`.
        let registry: Arc<dyn ArtifactRegistry> = Arc::new(MemoryRegistry::new());
        let rtm = Runtime {
            pods: backend.clone(),
            exec: backend.clone(),
            volumes: Some(Arc::new(MemoryVolumeStore::new())),
            registry,
        };
        let runner = BuildRunner::new(rtm, StepConfig::default(), ImageResolver::new(), "bench", Arc::new(NoEvents));
        let yaml = "jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      run: {path: 'true'}\n";
        let pipeline = Arc::new(parse_pipeline(yaml, "bench.yml", &Vars::new()).expect("parses"));
        let mut step_times = Vec::new();
        for i in 0..steps {
            let t = Instant::now();
            let out = runner
                .run(BuildRequest::new(pipeline.clone(), "j", i as u64, format!("b{i}")))
                .await
                .expect("build");
            step_times.push(t.elapsed());
            assert_eq!(out.status, BuildStatus::Succeeded);
        }
        let (s, o) = (median(starts), median(step_times));
        println!("| case | jetbridge | simulator pod start | orchestration beyond the pod start |");
        println!("|---|---|---|---|");
        println!(
            "| one-step build of `true` ({steps} runs, median; simulator delays {} ms + {} ms) | {:.1} ms | {:.1} ms | {:.1} ms |",
            sched.as_millis(),
            start.as_millis(),
            o.as_secs_f64() * 1e3,
            s.as_secs_f64() * 1e3,
            (o.as_secs_f64() - s.as_secs_f64()) * 1e3
        );
        sim.shutdown().await;
    });
}
