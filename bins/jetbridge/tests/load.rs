//! `jetbridge load` as CI runs it: the built-in mix through two `jetbridge server`
//! replicas sharing one Postgres database, on the Kubernetes API simulator (50 builds at
//! once, then a compressed soak); a leak (a Secret left in the cluster) failing the
//! verdict; and bad input refused with exit 2. The suites that need Postgres fail,
//! never skip, without `DATABASE_URL` (`source .ci/postgres-env.sh`).

mod harness;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use harness::{ServerProc as Replica, bin, database_url, text};
use jetbridge_kube_sim::{SimConfig, Simulator};

/// The image of the built-in `mock` resource on Kubernetes, as the chart names its own;
/// the simulator runs its `/opt/resource/{check,in,out}` as the binary under test.
const MOCK_IMAGE: &str = "ghcr.io/jetbridge/jetbridge:test";

/// How long a replica may take to say where it listens.
const STARTUP: Duration = Duration::from_secs(120);

/// The simulator, its kubeconfig for `ns`, and the jetbridge image's mock scripts.
async fn simulator(dir: &Path, ns: &str) -> (Simulator, PathBuf) {
    let sim = Simulator::start(SimConfig {
        work_root: Some(dir.join("sim")),
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let kubeconfig = dir.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, ns).expect("kubeconfig");
    for name in ["check", "in", "out"] {
        sim.image_file(
            MOCK_IMAGE,
            &format!("/opt/resource/{name}"),
            env!("CARGO_BIN_EXE_jetbridge"),
        )
        .expect("image file");
    }
    (sim, kubeconfig)
}

/// The arguments of a replica on the simulator: `registry` (URL, schema) shared, or the
/// memory registry.
fn replica_args(
    kubeconfig: &Path,
    volumes: &Path,
    worker: &str,
    registry: Option<(&str, &str)>,
) -> Vec<String> {
    let mut a: Vec<String> = [
        "--backend",
        "kube",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--volumes",
        volumes.to_str().unwrap(),
        "--mock-image",
        MOCK_IMAGE,
        "--worker",
        worker,
        // The reaper passes every worker TTL: 15 s brings the verdict soon after the
        // last build, and leaves a loaded replica's heartbeat 10 s to get through.
        "--worker-ttl",
        "15s",
        "--max-builds",
        "8",
        "--max-queued",
        "0",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if let Some((url, schema)) = registry {
        a.extend(
            ["--registry", url, "--registry-schema", schema]
                .iter()
                .map(|s| (*s).to_owned()),
        );
    }
    a
}

/// `jetbridge load` against `replicas`, every observer given; its output.
fn load(
    replicas: &[Replica],
    kubeconfig: &Path,
    volumes: &Path,
    registry: Option<(&str, &str)>,
    report: &Path,
    extra: &[&str],
) -> Output {
    let mut c = bin();
    c.arg("load");
    for r in replicas {
        c.args(["--server", &r.url, "--metrics", &r.metrics_url]);
    }
    c.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--volumes")
        .arg(volumes)
        .arg("--report")
        .arg(report)
        .args(["--large-artifact-mib", "4", "--reap-timeout", "90s"])
        .args(extra);
    if let Some((url, schema)) = registry {
        c.args(["--registry", url, "--registry-schema", schema]);
    }
    c.output().expect("jetbridge load runs")
}

fn report_json(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("report.json")).expect("report.json");
    serde_json::from_str(&text).expect("report.json is JSON")
}

/// The verdict line named `name` of a report.
fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["report"]["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report}"))
}

fn assert_pngs(dir: &Path) {
    for name in ["latency", "builds", "queue", "pods", "rss", "fds"] {
        let bytes = std::fs::read(dir.join(format!("{name}.png"))).expect("the plot exists");
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 2000,
            "{name}.png is not a drawn PNG"
        );
    }
    let md = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    assert!(md.contains("![latency](latency.png)"), "{md}");
}

/// The tests that start replicas take turns: on a 2-core machine two runs at once
/// measure each other's load more than their own.
static REPLICAS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Two replicas on the simulator with one Postgres database: every build of the mix
/// (50 submitted at once) ends as it should, and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_builds_of_the_mix_through_two_replicas_end_as_expected_and_leave_nothing()
{
    let _turn = REPLICAS.lock().await;
    let url = database_url();
    let schema = jetbridge_postgres::scratch::ScratchSchema::new(&url, "jb_load").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sim, kubeconfig) = simulator(dir.path(), "jb-load").await;
    let root = dir.path().to_owned();
    let schema_name = schema.name().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let volumes = root.join("volumes");
        std::fs::create_dir_all(&volumes).unwrap();
        let reg = Some((url.as_str(), schema_name.as_str()));
        let a = Replica::start_within(
            &root.join("a"),
            &replica_args(&kubeconfig, &volumes, "load-a", reg),
            STARTUP,
        );
        let b = Replica::start_within(
            &root.join("b"),
            &replica_args(&kubeconfig, &volumes, "load-b", reg),
            STARTUP,
        );
        let report = root.join("report");
        let out = load(
            &[a, b],
            &kubeconfig,
            &volumes,
            reg,
            &report,
            &[
                "--mix",
                "--builds",
                "50",
                "--concurrency",
                "50",
                "--sample-every",
                "1s",
            ],
        );
        (out, report_json(&report), report)
    })
    .await
    .unwrap();
    let (out, report, dir_report) = out;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let r = &report["report"];
    assert_eq!(r["submitted"], 50, "{stdout}");
    assert_eq!(r["ended"], 50, "{stdout}");
    assert_eq!(r["unexpected"], 0, "{stdout}");
    assert_eq!(r["errors"], 0, "{stdout}");
    // Every kind ran, and the deliberate failures ended as they meant to.
    let entries = r["entries"].as_object().unwrap();
    assert_eq!(entries.len(), 9, "{stdout}");
    assert_eq!(
        entries["load-aborted"]["by_state"]["aborted"], 5,
        "{stdout}"
    );
    assert_eq!(
        entries["load-times-out"]["by_state"]["failed"], 5,
        "{stdout}"
    );
    assert_eq!(
        entries["load-get-task-put"]["by_state"]["succeeded"], 6,
        "{stdout}"
    );
    for name in [
        "pods left",
        "Secrets left",
        "volumes left",
        "references left",
        "builds still queued or running",
        "reaper pass after the last build",
    ] {
        assert_eq!(check(&report, name)["ok"], true, "{name}: {stdout}");
    }
    // Both replicas ran builds, and pods were seen while they did.
    assert!(r["peak_pods"].as_f64().unwrap() >= 1.0, "{stdout}");
    let samples = report["samples"].as_array().unwrap();
    for i in 0..2 {
        assert!(
            samples
                .iter()
                .any(|s| s["replicas"][i]["builds_running"].as_f64() > Some(0.0)),
            "replica {i} never ran a build: {stdout}"
        );
    }
    assert!(
        r["latency_ms"]["1 submit -> first step started"]["count"].as_u64() >= Some(45),
        "{stdout}"
    );
    assert!(stdout.contains("result: PASS"), "{stdout}");
    assert_pngs(&dir_report);
    drop(sim);
    drop(schema);
}

/// A compressed soak: 150 s of continuous triggering through two replicas; every
/// build ends as expected, nothing is left, and each replica's RSS and fds stay flat
/// over the steady state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_soak_leaves_nothing_and_keeps_rss_and_fds_flat() {
    let _turn = REPLICAS.lock().await;
    let url = database_url();
    let schema = jetbridge_postgres::scratch::ScratchSchema::new(&url, "jb_soak").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sim, kubeconfig) = simulator(dir.path(), "jb-soak").await;
    let root = dir.path().to_owned();
    let schema_name = schema.name().to_owned();
    let (out, report) = tokio::task::spawn_blocking(move || {
        let volumes = root.join("volumes");
        std::fs::create_dir_all(&volumes).unwrap();
        let reg = Some((url.as_str(), schema_name.as_str()));
        let a = Replica::start_within(
            &root.join("a"),
            &replica_args(&kubeconfig, &volumes, "soak-a", reg),
            STARTUP,
        );
        let b = Replica::start_within(
            &root.join("b"),
            &replica_args(&kubeconfig, &volumes, "soak-b", reg),
            STARTUP,
        );
        let report = root.join("report");
        let out = load(
            &[a, b],
            &kubeconfig,
            &volumes,
            reg,
            &report,
            &[
                "--mix",
                "--duration",
                "150s",
                // A replica's RSS grows for its first minute or two (allocator arenas,
                // the blocking pool's threads) and then stays flat (the 60-minute soak
                // of docs/benchmarks.md): judge the slopes after that.
                "--warm-up",
                "75s",
                "--concurrency",
                "4",
                "--sample-every",
                "1s",
            ],
        );
        (out, report_json(&report))
    })
    .await
    .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let r = &report["report"];
    assert_eq!(r["soak"], true);
    assert_eq!(r["unexpected"], 0, "{stdout}");
    assert_eq!(r["errors"], 0, "{stdout}");
    assert!(r["submitted"].as_u64() >= Some(9), "{stdout}");
    for replica in r["metrics"].as_array().unwrap() {
        let m = replica.as_str().unwrap();
        for kind in ["RSS slope", "fd slope"] {
            let c = check(&report, &format!("{kind} {m}"));
            assert_eq!(c["ok"], true, "{kind} {m}: {stdout}");
        }
    }
    for name in [
        "pods left",
        "Secrets left",
        "volumes left",
        "references left",
    ] {
        assert_eq!(check(&report, name)["ok"], true, "{name}: {stdout}");
    }
    drop(sim);
    drop(schema);
}

/// A Secret left in the cluster (as a pod's env Secret would be) fails the verdict:
/// exit 1, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_left_in_the_cluster_fails_the_verdict_with_exit_1() {
    let _turn = REPLICAS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (sim, kubeconfig) = simulator(dir.path(), "jb-leak").await;
    let secret = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "env-left-behind",
            "namespace": "jb-leak",
            "labels": {"app.kubernetes.io/managed-by": "jetbridge", "jetbridge.io/worker": "gone"},
        },
        "data": {"TOKEN": "czNjcjN0"},
    });
    let res = reqwest::Client::new()
        .post(format!("{}/api/v1/namespaces/jb-leak/secrets", sim.url()))
        .json(&secret)
        .send()
        .await
        .expect("the simulator answers");
    assert!(res.status().is_success(), "{}", res.status());
    let pipeline = dir.path().join("one.yml");
    std::fs::write(
        &pipeline,
        "jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      image_resource: {type: registry-image, source: {repository: busybox}}\n      run: {path: sh, args: [-c, 'echo fine']}\n",
    )
    .unwrap();
    let root = dir.path().to_owned();
    let (out, report) = tokio::task::spawn_blocking(move || {
        let volumes = root.join("volumes");
        std::fs::create_dir_all(&volumes).unwrap();
        let a = Replica::start_within(
            &root.join("a"),
            &replica_args(&kubeconfig, &volumes, "leak-a", None),
            STARTUP,
        );
        let report = root.join("report");
        let out = load(
            &[a],
            &kubeconfig,
            &volumes,
            None,
            &report,
            &[
                "--pipeline",
                pipeline.to_str().unwrap(),
                "--builds",
                "2",
                "--sample-every",
                "500ms",
            ],
        );
        (out, report_json(&report))
    })
    .await
    .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert_eq!(report["report"]["unexpected"], 0, "{stdout}");
    let c = check(&report, "Secrets left");
    assert_eq!(c["ok"], false, "{stdout}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("1 labelled managed-by jetbridge"),
        "{stdout}"
    );
    assert!(stdout.contains("result: FAIL (Secrets left)"), "{stdout}");
    // The builds' own pods and Secrets were all removed: only the planted one is left.
    assert_eq!(check(&report, "pods left")["ok"], true, "{stdout}");
    assert_eq!(sim.secrets("jb-leak").len(), 1);
    drop(sim);
}

/// Bad input: exit 2 and a message naming the flag or file, before any server is
/// reached.
#[test]
fn bad_input_exits_2_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yml");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--builds".into(), "0".into()],
            "--builds must be at least 1",
        ),
        (
            vec!["--concurrency".into(), "0".into()],
            "--concurrency must be at least 1",
        ),
        (vec!["--rate".into(), "fast".into()], "--rate \"fast\""),
        (
            vec!["--warm-up".into(), "1m".into()],
            "--warm-up goes with --duration",
        ),
        (
            vec![
                "--warm-up".into(),
                "2m".into(),
                "--duration".into(),
                "1m".into(),
            ],
            "must be shorter than --duration",
        ),
        (vec!["--rate".into(), "0/s".into()], "--rate \"0/s\""),
        (
            vec!["--pipeline".into(), missing.to_string_lossy().into_owned()],
            "cannot read the pipeline",
        ),
        (
            vec!["--pipeline".into(), "p.yml".into(), "--mix".into()],
            "cannot be used with",
        ),
        (
            vec!["--metrics".into(), "localhost:9391".into()],
            "--metrics \"localhost:9391\"",
        ),
        (
            vec!["--server".into(), "127.0.0.1:1".into()],
            "--server \"127.0.0.1:1\"",
        ),
        // Nothing listens there: the run does not start.
        (
            vec!["--server".into(), "http://127.0.0.1:1".into()],
            "--server http://127.0.0.1:1",
        ),
    ];
    for (args, want) in cases {
        let out = bin().arg("load").args(&args).output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

/// Every flag of `jetbridge load --help` is in docs/load-testing.md.
#[test]
fn every_load_flag_is_documented() {
    let help = bin().args(["load", "--help"]).output().unwrap();
    let help = text(&help.stdout);
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/load-testing.md"),
    )
    .expect("docs/load-testing.md");
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter_map(|w| w.find("--").map(|i| &w[i..]))
        .map(|w| {
            let end = w[2..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .map_or(w.len(), |i| i + 2);
            &w[..end]
        })
        .filter(|w| w.len() > 2 && *w != "--help" && *w != "--version")
        .collect();
    assert!(flags.len() > 20, "{help}");
    for f in flags {
        assert!(
            doc.contains(&format!("`{f}")),
            "{f} is not in docs/load-testing.md"
        );
    }
}
