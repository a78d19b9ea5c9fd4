//! Re-attach after a dropped exec stream, on the API simulator, beside its baseline in
//! the same run: a recorded command prints `a`, then `b` 10 ms later. The time from `a`
//! to `b` as the caller sees it is about 10 ms when the stream
//! holds (baseline), and the re-attach (plus what is left of the 10 ms) when the stream
//! drops right after `a` (the simulator's `drop_exec_streams`): the adapter execs
//! `jetbridge-helper attach` and the helper replays `b` from its record.
//!
//! `JETBRIDGE_HELPER_BIN=$(.ci/build-helper.sh) cargo bench -p jetbridge-kube --bench
//! reattach` (`JB_BENCH_RUNS`, default 20). Without `--bench` (as `cargo test` runs
//! benches) it does two runs of each, as a smoke test.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jetbridge_core::names::{StepHandle, label};
use jetbridge_core::ports::{
    Exec, ExecRequest, OutputSink, OutputStream, PodSpec, Pods, WaitFor, WaitOpts,
};
use jetbridge_kube::{KubeBackend, KubeConfig, RequestBudget};
use jetbridge_kube_sim::{SimConfig, Simulator};

const NS: &str = "bench";
const HELPER_IMAGE: &str = "ghcr.io/jetbridge/jetbridge:bench";

/// When each chunk of stdout arrived, with its text.
#[derive(Default)]
struct Stamps(Mutex<Vec<(Instant, Vec<u8>)>>);

impl OutputSink for Stamps {
    fn write(&self, stream: OutputStream, data: &[u8]) {
        if stream == OutputStream::Stdout {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((Instant::now(), data.to_vec()));
        }
    }
}

impl Stamps {
    /// The time from the chunk holding `a` to the one holding `b`.
    fn a_to_b(&self) -> Duration {
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let at = |c: u8| {
            v.iter()
                .find(|(_, d)| d.contains(&c))
                .map(|(t, _)| *t)
                .unwrap_or_else(|| panic!("no {:?} in the output", c as char))
        };
        at(b'b') - at(b'a')
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let runs: usize = if smoke {
        2
    } else {
        std::env::var("JB_BENCH_RUNS")
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
        let sim = Simulator::start(SimConfig {
            work_root: Some(dir.path().join("sim")),
            ..SimConfig::default()
        })
        .await
        .expect("simulator");
        sim.image_file(
            HELPER_IMAGE,
            jetbridge_kube::STEP_HELPER_PATH,
            jetbridge_kube_sim::built_step_helper(),
        )
        .expect("the helper image's file");
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig, NS).expect("kubeconfig");
        let b = Arc::new(
            KubeBackend::new(KubeConfig {
                kubeconfig: Some(kubeconfig),
                namespace: Some(NS.into()),
                step_helper_image: Some(HELPER_IMAGE.into()),
                request_budget: RequestBudget {
                    max_requests: 8,
                    initial_backoff: Duration::from_millis(20),
                    max_backoff: Duration::from_millis(200),
                },
                ..KubeConfig::default()
            })
            .await
            .expect("backend"),
        );
        let handle = StepHandle::random();
        let mut spec = PodSpec::new(format!("reattach-{}", handle.short()), "busybox:1.36");
        spec.labels
            .insert(label::HANDLE.into(), handle.as_str().into());
        b.create(&spec).await.expect("create");
        b.wait(
            &spec.name,
            &WaitOpts::new(WaitFor::Running, Duration::from_secs(30)),
        )
        .await
        .expect("running");
        let argv: Vec<String> = ["sh", "-c", "echo a; sleep 0.01; echo b"]
            .map(str::to_owned)
            .to_vec();
        let mut held = Vec::new();
        let mut dropped = Vec::new();
        for _ in 0..runs {
            for drop in [false, true] {
                if drop {
                    sim.drop_exec_streams(1);
                }
                let stamps = Arc::new(Stamps::default());
                let code = b
                    .exec(ExecRequest::new(&spec.name, argv.clone()), stamps.clone())
                    .await
                    .expect("an exit status");
                assert_eq!(code, 0);
                let t = stamps.a_to_b();
                if drop { dropped.push(t) } else { held.push(t) }
            }
        }
        let (h, d) = (median(held), median(dropped));
        println!("runs: {runs} of each, `echo a; sleep 0.01; echo b` through the helper");
        println!("a -> b, stream held (baseline):          {h:>10.1?}");
        println!("a -> b, stream dropped after a:          {d:>10.1?}");
        println!(
            "re-attach cost beyond the baseline:      {:>10.1?} (ratio {:.2})",
            d.saturating_sub(h),
            d.as_secs_f64() / h.as_secs_f64()
        );
        sim.shutdown().await;
    });
}
