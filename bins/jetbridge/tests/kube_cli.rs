//! `jetbridge run --backend kube` and `jetbridge conformance` against the Kubernetes API
//! simulator, through the binary as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use jetbridge_kube_sim::SimControls;
use jetbridge_kube_sim::{SimConfig, Simulator};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_jetbridge"));
    for (k, _) in std::env::vars() {
        if k.starts_with("JETBRIDGE_") {
            c.env_remove(k);
        }
    }
    c.env("NO_COLOR", "1");
    c
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn sim(dir: &Path) -> (Simulator, PathBuf) {
    let sim = Simulator::start(SimConfig {
        work_root: Some(dir.join("sim")),
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let kubeconfig = dir.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, "jb-cli")
        .expect("kubeconfig");
    (sim, kubeconfig)
}

async fn run_on(kubeconfig: &Path, data: &Path, example: &str) -> Output {
    let mut c = bin();
    c.arg("run")
        .arg(examples().join(example))
        .args(["--backend", "kube", "--kubeconfig"])
        .arg(kubeconfig)
        .arg("--data-dir")
        .arg(data);
    tokio::task::spawn_blocking(move || c.output().expect("runs"))
        .await
        .expect("joins")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_examples_run_on_the_simulator() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, kubeconfig) = sim(dir.path()).await;
    let data = dir.path().join("data");

    let ok = run_on(&kubeconfig, &data, "parallel.yml").await;
    let stdout = text(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{stdout}\n{}", text(&ok.stderr));
    // Artifacts passed between pods: the report step read both reports.
    assert!(
        stdout.contains("[task: report] unit: 42 passed"),
        "{stdout}"
    );
    assert!(stdout.contains("[task: report] lint: clean"), "{stdout}");

    let failed = run_on(&kubeconfig, &data, "fails.yml").await;
    let stdout = text(&failed.stdout);
    assert_eq!(failed.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("task: tests exited with status 3"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[task: show-report] 1 passed, 1 failed"),
        "{stdout}"
    );

    // No pod is left in the cluster.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !sim.pods("jb-cli").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "pods left: {:?}",
            sim.pods("jb-cli")
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_resource_types_are_refused_on_kubernetes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_sim, kubeconfig) = sim(dir.path()).await;
    let out = run_on(&kubeconfig, &dir.path().join("data"), "hello.yml").await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("hello.yml:") && stderr.contains("type: local"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_command_reports_on_the_simulator() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, kubeconfig) = sim(dir.path()).await;
    // What the two resource images hold on the simulator: the suite's scripts (the
    // command writes them) in Concourse's mock image, this binary in the jetbridge image
    // the configuration names for the built-in `mock`.
    let scripts = dir.path().join("mock");
    for name in ["check", "in", "out"] {
        let in_image = format!("/opt/resource/{name}");
        sim.image_file("concourse/mock-resource", &in_image, scripts.join(name))
            .expect("mock-resource file");
        sim.image_file(
            "ghcr.io/jetbridge/jetbridge",
            &in_image,
            env!("CARGO_BIN_EXE_jetbridge"),
        )
        .expect("jetbridge image file");
    }
    let config = dir.path().join("jetbridge.yml");
    std::fs::write(
        &config,
        "images:\n  mock-image: ghcr.io/jetbridge/jetbridge:test\n",
    )
    .expect("config");
    let mut c = bin();
    c.arg("--config")
        .arg(&config)
        .arg("conformance")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--namespace", "jb-conf", "--mock-resource-dir"])
        .arg(&scripts);
    let out = tokio::task::spawn_blocking(move || c.output().expect("runs"))
        .await
        .expect("joins");
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or("");
    assert!(last.contains(" passed, 0 failed"), "{last}");
    // Every case of the three suites was reported.
    let reported = stdout
        .lines()
        .filter(|l| l.starts_with("pods") || l.starts_with("exec") || l.starts_with("runtime"))
        .count();
    assert_eq!(reported, jetbridge_conformance_counts(), "{stdout}");
    assert!(
        sim.pods("jb-conf")
            .iter()
            .all(|p| p["metadata"]["deletionTimestamp"].is_string()),
        "pods left behind"
    );
}

fn jetbridge_conformance_counts() -> usize {
    // The binary depends on the conformance crate; the test reads the same case lists.
    jetbridge_conformance::PODS_CASES.len()
        + jetbridge_conformance::EXEC_CASES.len()
        + jetbridge_conformance::RUNTIME_CASES.len()
        + jetbridge_conformance::LIFECYCLE_CASES.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_reported_before_any_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    // Port 1 on loopback: nothing listens there.
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'http://127.0.0.1:1'}\nusers:\n- name: u\n  user: {}\ncontexts:\n- name: x\n  context: {cluster: c, user: u, namespace: ns}\ncurrent-context: x\n",
    )
    .expect("kubeconfig");
    let out = run_on(&kubeconfig, &dir.path().join("data"), "parallel.yml").await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cannot reach Kubernetes"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stdout).contains("▶"), "no step started");
}

/// Task params reach the task through a Secret of the step's own: never in a request
/// URL (exec commands travel in the query string, which audit logs record), never in
/// the pod spec; and the Secret goes with its pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_reach_the_task_through_a_secret_and_nowhere_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, kubeconfig) = sim(dir.path()).await;
    let secret = "s3cr3t-kube-5e2a91c0";
    let pipeline = dir.path().join("secret.yml");
    // The task checks the value by its length, so the value is not in its argv either.
    std::fs::write(
        &pipeline,
        format!(
            "jobs:\n- name: j\n  plan:\n  - task: uses-secret\n    params: {{TOKEN: ((token))}}\n    config:\n      platform: linux\n      image_resource: {{type: registry-image, source: {{repository: busybox}}}}\n      outputs: [{{name: o}}]\n      run: {{path: sh, args: [-c, 'test \"${{#TOKEN}}\" -eq {} && echo ok > o/flag']}}\n",
            secret.len()
        ),
    )
    .expect("pipeline");
    let data = dir.path().join("data");
    let run = |keep: bool| {
        let mut c = bin();
        c.arg("run")
            .arg(&pipeline)
            .args(["--backend", "kube", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(["--var", &format!("token={secret}")])
            .arg("--data-dir")
            .arg(&data);
        if keep {
            c.arg("--keep-pods");
        }
        async move {
            tokio::task::spawn_blocking(move || c.output().expect("runs"))
                .await
                .expect("joins")
        }
    };
    let out = run(true).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for r in sim.requests() {
        assert!(
            !r.path.contains(secret) && !r.query.contains(secret),
            "{} {}?{} carries the secret",
            r.method,
            r.path,
            r.query
        );
    }
    // The kept pod names the variable and holds no value; its Secret holds the value
    // and is owned by it.
    let pods = sim.pods("jb-cli");
    let pod = pods
        .iter()
        .find(|p| p.to_string().contains("TOKEN"))
        .expect("the task's pod was kept");
    assert!(!pod.to_string().contains(secret), "{pod}");
    let uid = pod["metadata"]["uid"].as_str().expect("uid");
    let secrets = sim.secrets("jb-cli");
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    let s: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(secrets[0].clone()).expect("a Secret");
    let values: Vec<&[u8]> = s
        .data
        .as_ref()
        .expect("data")
        .values()
        .map(|v| v.0.as_slice())
        .collect();
    assert_eq!(values, [secret.as_bytes()]);
    let owners = s.metadata.owner_references.expect("owned");
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].uid.as_str()),
        ("Pod", uid)
    );
    // The next run collects the kept pod, and the Secret goes with it.
    let out = run(false).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sim.secrets("jb-cli").is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(sim.secrets("jb-cli"), Vec::<serde_json::Value>::new());
}

/// A param name 1.29-1.31 refuse in a pod is a plan error with its position, on a
/// cluster with either rule: nothing is created, so no Secret can be left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_param_name_no_cluster_accepts_is_a_plan_error_on_either_rule() {
    use jetbridge_kube_sim::EnvVarNames;
    for rule in [EnvVarNames::Strict, EnvVarNames::Relaxed] {
        let dir = tempfile::tempdir().expect("tempdir");
        let sim = Simulator::start(SimConfig {
            work_root: Some(dir.path().join("sim")),
            env_var_names: rule,
            ..SimConfig::default()
        })
        .await
        .expect("simulator");
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig, "jb-cli")
            .expect("kubeconfig");
        let pipeline = dir.path().join("param.yml");
        std::fs::write(
            &pipeline,
            "jobs:\n- name: j\n  plan:\n  - task: t\n    params: {1PASSWORD: x}\n    config:\n      platform: linux\n      image_resource: {type: registry-image, source: {repository: busybox}}\n      run: {path: env}\n",
        )
        .expect("pipeline");
        let mut c = bin();
        c.arg("run")
            .arg(&pipeline)
            .args(["--backend", "kube", "--kubeconfig"])
            .arg(&kubeconfig)
            .arg("--data-dir")
            .arg(dir.path().join("data"));
        let out = tokio::task::spawn_blocking(move || c.output().expect("runs"))
            .await
            .expect("joins");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{rule:?}: {stderr}");
        assert!(
            stderr.contains("param.yml:5:14") && stderr.contains("`1PASSWORD`"),
            "{rule:?}: {stderr}"
        );
        let posts: Vec<_> = sim
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect();
        assert!(posts.is_empty(), "{rule:?}: {posts:?}");
        assert!(
            !sim.authorized().iter().any(|(verb, _)| verb == "create"),
            "{rule:?}: {:?}",
            sim.authorized()
        );
        assert!(sim.pods("jb-cli").is_empty() && sim.secrets("jb-cli").is_empty());
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_in_the_image_an_earlier_get_fetched_by_digest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, kubeconfig) = sim(dir.path()).await;
    let digest = format!("sha256:{}", "ab".repeat(32));
    let pipeline = |files: &str| {
        format!(
            "jobs:\n- name: j\n  plan:\n  - task: fetch\n    config:\n      platform: linux\n      outputs: [{{name: tools}}]\n      run: {{path: sh, args: [-c, \"{files}\"]}}\n  - task: use\n    image: tools\n    config:\n      platform: linux\n      run: {{path: 'true'}}\n"
        )
    };
    let run = |name: &str, text: String, keep: bool| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        let mut c = bin();
        c.arg("run")
            .arg(&p)
            .args(["--backend", "kube", "--kubeconfig"])
            .arg(&kubeconfig)
            .arg("--data-dir")
            .arg(dir.path().join(format!("data-{name}")));
        if keep {
            c.arg("--keep-pods");
        }
        async move {
            tokio::task::spawn_blocking(move || c.output().expect("runs"))
                .await
                .expect("joins")
        }
    };
    let out = run(
        "image.yml",
        pipeline(&format!(
            "echo registry.example.com/tools > tools/repository && echo {digest} > tools/digest"
        )),
        true,
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let images: Vec<String> = sim
        .pods("jb-cli")
        .iter()
        .filter(|p| p["metadata"]["labels"]["jetbridge.io/step"] == "use")
        .filter_map(|p| {
            p["spec"]["containers"]
                .as_array()?
                .iter()
                .find(|c| c["name"] == "main")
                .and_then(|c| c["image"].as_str().map(str::to_owned))
        })
        .collect();
    assert_eq!(images, [format!("registry.example.com/tools@{digest}")]);

    // An artifact that names no image is refused, saying what `image:` needs.
    let out = run(
        "not-image.yml",
        pipeline("echo hello > tools/readme"),
        false,
    )
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("the artifact \\\"tools\\\" is not an image this backend can run")
            || stdout.contains("the artifact \"tools\" is not an image this backend can run"),
        "{stdout}"
    );
    assert!(stdout.contains("`registry-image` get"), "{stdout}");
}
