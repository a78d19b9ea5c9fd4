//! `jetbridge server` and its client commands as a user meets them: real processes,
//! real HTTP, the local backend; a drain on SIGTERM; and two replicas sharing a real
//! Postgres, one of them killed mid-build.

mod harness;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use harness::{NO_ARGS, ServerProc, bin, database_url, running_pod, start_sim, text};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// What the tests here do through a server.
impl ServerProc {
    /// Submit `pipeline` and wait (bounded) until its build runs; its id.
    fn submit_running(&self, pipeline: &Path) -> u64 {
        let out = self.client("submit").arg(pipeline).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let id = submitted_id(&out);
        self.wait_state(id, "running");
        id
    }

    /// Wait (bounded) until the build's state is `state`.
    fn wait_state(&self, id: u64, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self
                .client("builds")
                .args(["--log-format", "json"])
                .output()
                .expect("builds");
            let found = text(&out.stdout).lines().any(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
                v["id"] == id && v["state"] == state
            });
            if found {
                return;
            }
            assert!(Instant::now() < deadline, "build {id} never got {state}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The lines of a build's output with timings made equal, sorted (parallel steps
/// interleave differently from run to run).
fn normalized(out: &str) -> Vec<String> {
    let mut lines: Vec<String> = out
        .lines()
        // The first line names the build differently (a number here, a server there).
        .skip(1)
        .map(|l| {
            let mut o = String::new();
            let mut chars = l.chars().peekable();
            while let Some(c) = chars.next() {
                if c.is_ascii_digit() {
                    let mut num = String::from(c);
                    while let Some(&d) = chars.peek() {
                        if d.is_ascii_digit() || d == '.' {
                            num.push(d);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    let rest: String = chars.clone().take(2).collect();
                    if rest.starts_with("ms") || rest.starts_with('s') || rest.starts_with('m') {
                        // A duration: `12ms`, `1.2s`, `1m05s`.
                        while chars.peek().is_some_and(|c| c.is_ascii_alphanumeric()) {
                            chars.next();
                        }
                        o.push('T');
                    } else {
                        o.push_str(&num);
                    }
                } else {
                    o.push(c);
                }
            }
            // Column widths follow the widest duration cell.
            o.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .collect();
    lines.sort();
    lines
}

#[test]
fn submit_watch_prints_what_run_prints_and_exits_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("server"), &["--allow-local-resources"]);
    for example in ["hello.yml", "fails.yml", "parallel.yml"] {
        let file = examples().join(example);
        let run: Output = bin()
            .arg("run")
            .arg(&file)
            .arg("--data-dir")
            .arg(dir.path().join("run"))
            .output()
            .unwrap();
        let submit = server
            .client("submit")
            .arg(&file)
            .arg("--watch")
            .output()
            .unwrap();
        assert_eq!(
            run.status.code(),
            submit.status.code(),
            "{example}: {}",
            text(&submit.stderr)
        );
        assert_eq!(
            normalized(&text(&run.stdout)),
            normalized(&text(&submit.stdout)),
            "{example}"
        );
    }
}

#[test]
fn client_mistakes_exit_2_and_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    // Off loopback with no token: refused before anything starts.
    let out = bin()
        .args(["server", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--api-token-file"),
        "{}",
        text(&out.stderr)
    );

    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# the API's tokens\n0123456789abcdef0123\n").unwrap();
    let server = ServerProc::start(
        &dir.path().join("server"),
        &["--api-token-file", tokens.to_str().unwrap()],
    );
    let pipeline = dir.path().join("t.yml");
    std::fs::write(
        &pipeline,
        "jobs:\n- name: j\n  plan:\n  - task: t\n    config: {platform: linux, run: {path: 'true'}}\n",
    )
    .unwrap();
    // No token: 401, exit 2 naming the flag.
    let out = server.client("submit").arg(&pipeline).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--token-file"),
        "{}",
        text(&out.stderr)
    );
    // With it: queued, then watched to success.
    let out = server
        .client("submit")
        .arg(&pipeline)
        .args(["--watch", "--token-file", tokens.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // `type: local` without --allow-local-resources: the server's 422, exit 2.
    let out = server
        .client("submit")
        .arg(examples().join("hello.yml"))
        .args(["--token-file", tokens.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--allow-local-resources"),
        "{}",
        text(&out.stderr)
    );
    // An unknown build: 404, exit 2.
    let out = server
        .client("abort")
        .args(["999", "--token-file", tokens.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

fn sleeper(dir: &Path, secs: u32) -> PathBuf {
    let p = dir.join("sleep.yml");
    std::fs::write(
        &p,
        format!(
            "jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      run: {{path: sh, args: [-c, 'echo started; sleep {secs}']}}\n    on_abort:\n      task: cleanup\n      config:\n        platform: linux\n        run: {{path: sh, args: [-c, 'echo cleaned up']}}\n"
        ),
    )
    .unwrap();
    p
}

/// The id `submit` printed.
fn submitted_id(out: &Output) -> u64 {
    let t = text(&out.stdout);
    t.split("queued build ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no build id in {t:?} / {}", text(&out.stderr)))
}

#[test]
fn sigterm_drains_then_aborts_what_outlives_the_timeout_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(&dir.path().join("server"), &["--drain-timeout", "1s"]);
    let id = server.submit_running(&sleeper(dir.path(), 600));
    // Follow it from another process, as a user would.
    let follower = server
        .client("logs")
        .args([&id.to_string(), "-f"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let status = server.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0));
    let logs = follower.wait_with_output().unwrap();
    let logs = text(&logs.stdout);
    assert!(logs.contains("[task: t] started"), "{logs}");
    assert!(
        logs.contains("[task: cleanup] cleaned up"),
        "the on_abort hook ran: {logs}"
    );
    assert!(logs.contains("server shutting down"), "{logs}");
    let said: Vec<String> = server.lines.try_iter().collect();
    assert!(said.iter().any(|l| l.starts_with("draining")), "{said:?}");
}

#[test]
fn a_draining_replica_is_unready_yet_still_serves_its_metrics() {
    // The chart scrapes pods with a PodMonitor rather than through a Service because a
    // draining pod is unready: its metrics must still answer, with the builds it runs.
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(&dir.path().join("server"), &["--drain-timeout", "5m"]);
    let id = server.submit_running(&sleeper(dir.path(), 600));
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = server
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the server says it drains");
        if line.starts_with("draining") {
            break;
        }
    }
    let ready = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{}/readyz", server.url))
        .output()
        .unwrap();
    assert_eq!(text(&ready.stdout), "503", "draining is unready");
    let metrics = Command::new("curl")
        .args(["-fsS", &server.metrics_url])
        .output()
        .unwrap();
    assert!(metrics.status.success(), "{}", text(&metrics.stderr));
    assert!(
        text(&metrics.stdout).contains("\njetbridge_builds_running 1\n"),
        "{}",
        text(&metrics.stdout)
    );
    // The drain ends when its last build does.
    let out = server.client("abort").arg(id.to_string()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(server.wait(Duration::from_secs(60)).code(), Some(0));
}

#[test]
fn a_killed_replica_s_running_build_ends_worker_lost_on_the_other() {
    let url = database_url();
    let schema = jetbridge_postgres::scratch::ScratchSchema::new(&url, "jb_srv").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shared = |worker: &str| {
        vec![
            "--registry".to_owned(),
            url.clone(),
            "--registry-schema".to_owned(),
            schema.name().to_owned(),
            "--worker".to_owned(),
            worker.to_owned(),
            "--lease-ttl".to_owned(),
            "1s".to_owned(),
        ]
    };
    let args_a = shared("replica-a");
    let args_a: Vec<&str> = args_a.iter().map(String::as_str).collect();
    let mut a = ServerProc::start(&dir.path().join("a"), &args_a);
    let id = a.submit_running(&sleeper(dir.path(), 20));
    // Its step has started: a lapse ends it rather than running it twice.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = a.client("logs").arg(id.to_string()).output().unwrap();
        if text(&out.stdout).contains("started") {
            break;
        }
        assert!(Instant::now() < deadline, "the step never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let args_b = shared("replica-b");
    let args_b: Vec<&str> = args_b.iter().map(String::as_str).collect();
    let b = ServerProc::start(&dir.path().join("b"), &args_b);
    a.signal(nix::sys::signal::Signal::SIGKILL);
    a.wait(Duration::from_secs(10));
    // Any replica serves any build's log: B follows it to its end.
    let logs = b
        .client("logs")
        .args([&id.to_string(), "-f"])
        .output()
        .unwrap();
    assert_eq!(logs.status.code(), Some(1), "{}", text(&logs.stderr));
    let logs = text(&logs.stdout);
    assert!(logs.contains("[task: t] started"), "{logs}");
    assert!(logs.contains("worker lost"), "{logs}");
    // B runs new builds.
    let out = b
        .client("submit")
        .arg(examples().join("fails.yml"))
        .arg("--watch")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("build failed"),
        "{}",
        text(&out.stdout)
    );
}

/// A replica on the Postgres queue in `schema`, started in `dir`, sealing vars with `key`
/// when given.
fn postgres_replica(
    url: &str,
    schema: &str,
    dir: &Path,
    worker: &str,
    key: Option<&Path>,
) -> ServerProc {
    let mut args = vec![
        "--registry",
        url,
        "--registry-schema",
        schema,
        "--worker",
        worker,
    ];
    if let Some(key) = key {
        args.extend(["--vars-key-file", key.to_str().unwrap()]);
    }
    ServerProc::start(dir, &args)
}

/// A vars key file in `dir`.
fn vars_key(dir: &Path) -> PathBuf {
    let key = dir.join("key");
    std::fs::write(&key, "f00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeed\n").unwrap();
    key
}

/// What `sql` selects, one row a line (`psql -At`).
fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .arg(url)
        .args(["-At", "-c", sql])
        .output()
        .expect("psql");
    text(&out.stdout)
}

#[test]
fn vars_reach_a_postgres_queue_only_sealed() {
    let url = database_url();
    let schema = jetbridge_postgres::scratch::ScratchSchema::new(&url, "jb_vars").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("v.yml");
    std::fs::write(
        &pipeline,
        "jobs:\n- name: j\n  plan:\n  - task: t\n    params: {TOKEN: ((token))}\n    config:\n      platform: linux\n      run: {path: sh, args: [-c, 'echo token of ${#TOKEN} characters']}\n",
    )
    .unwrap();
    // No key: the server refuses vars rather than store them in clear.
    {
        let server = postgres_replica(
            &url,
            schema.name(),
            &dir.path().join("a"),
            "vars-nokey",
            None,
        );
        let out = server
            .client("submit")
            .arg(&pipeline)
            .args(["--var", "token=hunter2-very-secret"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(
            text(&out.stderr).contains("--vars-key-file"),
            "{}",
            text(&out.stderr)
        );
    }
    let key = vars_key(dir.path());
    let server = postgres_replica(
        &url,
        schema.name(),
        &dir.path().join("b"),
        "vars-key",
        Some(&key),
    );
    let out = server
        .client("submit")
        .arg(&pipeline)
        .args(["--var", "token=hunter2-very-secret", "--watch"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("token of 19 characters"),
        "{}",
        text(&out.stdout)
    );
    let dump = psql(
        &url,
        &format!(
            "select convert_from(spec, 'UTF8') from {}.builds",
            schema.name()
        ),
    );
    assert!(dump.contains("sealed_vars"), "{dump}");
    assert!(
        !dump.contains("hunter2"),
        "a var in clear in the database: {dump}"
    );
}

/// A pipeline whose task writes a child pipeline and sets it with a var `token`.
fn pipeline_setter(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("setter.yml");
    std::fs::write(
        &path,
        format!(
            "jobs:\n- name: j\n  plan:\n  - task: make\n    config:\n      platform: linux\n      outputs: [{{name: ci}}]\n      run: {{path: sh, args: [-c, \"echo 'jobs: [{{name: child, plan: [{{task: t, config: {{platform: linux, run: {{path: x}}}}}}]}}]' > ci/p.yml\"]}}\n  - set_pipeline: child\n    file: ci/p.yml\n    vars: {{token: {token}}}\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn pipelines_reach_a_postgres_queue_with_their_vars_only_sealed() {
    let url = database_url();
    let schema = jetbridge_postgres::scratch::ScratchSchema::new(&url, "jb_pipes").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = pipeline_setter(dir.path(), "hunter2-pipeline-secret");
    // No key: the step refuses to store the vars in clear, and says what to do.
    {
        let server = postgres_replica(
            &url,
            schema.name(),
            &dir.path().join("a"),
            "pipes-nokey",
            None,
        );
        let out = server
            .client("submit")
            .arg(&pipeline)
            .arg("--watch")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let said = text(&out.stdout);
        assert!(said.contains("set_pipeline: child"), "{said}");
        assert!(said.contains("--vars-key-file"), "{said}");
    }
    let key = vars_key(dir.path());
    let server = postgres_replica(
        &url,
        schema.name(),
        &dir.path().join("b"),
        "pipes-key",
        Some(&key),
    );
    let out = server
        .client("submit")
        .arg(&pipeline)
        .arg("--watch")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("pipeline main/child set: version 1"),
        "{}",
        text(&out.stdout)
    );
    let dump = psql(
        &url,
        &format!(
            "select team, name, version, config, convert_from(vars, 'UTF8') from {}.pipelines",
            schema.name()
        ),
    );
    assert!(
        dump.starts_with("main|child|1|jobs: [{name: child"),
        "{dump}"
    );
    assert!(dump.contains("sealed"), "{dump}");
    assert!(
        !dump.contains("hunter2"),
        "a pipeline var in clear in the database: {dump}"
    );
}

/// Two replicas on the Kubernetes API simulator, sharing one Postgres database and one
/// volume directory: builds run in pods; one replica is killed mid-build and the other
/// ends its build "worker lost", then runs the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_the_kubernetes_simulator_share_the_queue_and_survive_a_kill() {
    let url = database_url();
    let schema = jetbridge_postgres::scratch::ScratchSchema::new(&url, "jb_srv_kube").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sim = jetbridge_kube_sim::Simulator::start(jetbridge_kube_sim::SimConfig {
        work_root: Some(dir.path().join("sim")),
        ..jetbridge_kube_sim::SimConfig::default()
    })
    .await
    .expect("simulator");
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, "jb-server")
        .expect("kubeconfig");
    // The simulator is served by this runtime; the blocking part reads it too.
    let sim = std::sync::Arc::new(sim);
    let sim_seen = sim.clone();
    let root = dir.path().to_owned();
    let schema_name = schema.name().to_owned();
    tokio::task::spawn_blocking(move || {
        let replica = |name: &str| {
            let args: Vec<String> = [
                "--backend",
                "kube",
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
                "--volumes",
                root.join("volumes").to_str().unwrap(),
                "--registry",
                &url,
                "--registry-schema",
                &schema_name,
                "--worker",
                name,
                "--lease-ttl",
                "1s",
                "--worker-ttl",
                "3s",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ServerProc::start(&root.join(name), &args)
        };
        let mut a = replica("kube-a");
        let ok = a
            .client("submit")
            .arg(examples().join("parallel.yml"))
            .arg("--watch")
            .output()
            .unwrap();
        assert_eq!(ok.status.code(), Some(0), "{}\n{}", text(&ok.stdout), text(&ok.stderr));
        assert!(
            text(&ok.stdout).contains("[task: report] unit: 42 passed"),
            "{}",
            text(&ok.stdout)
        );
        // A step in a pod that runs until the replica dies.
        let p = root.join("long.yml");
        std::fs::write(
            &p,
            "jobs:\n- name: j\n  plan:\n  - task: t\n    params: {TOKEN: s3cr3t}\n    config:\n      platform: linux\n      image_resource: {type: registry-image, source: {repository: busybox}}\n      run: {path: sh, args: [-c, 'echo started; sleep 20']}\n",
        )
        .unwrap();
        let out = a.client("submit").arg(&p).output().unwrap();
        let id = submitted_id(&out);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = a.client("logs").arg(id.to_string()).output().unwrap();
            if text(&out.stdout).contains("started") {
                break;
            }
            assert!(Instant::now() < deadline, "the step never started");
            std::thread::sleep(Duration::from_millis(100));
        }
        let b = replica("kube-b");
        let a_pods = |sim: &jetbridge_kube_sim::Simulator| {
            sim.pods("jb-server")
                .iter()
                .filter(|o| o["metadata"]["labels"]["jetbridge.io/worker"] == "kube-a")
                .count()
        };
        a.signal(nix::sys::signal::Signal::SIGKILL);
        a.wait(Duration::from_secs(10));
        // A died with its step's pod running: nobody may take it while A's
        // registration lives.
        assert_eq!(a_pods(&sim_seen), 1);
        let logs = b
            .client("logs")
            .args([&id.to_string(), "-f"])
            .output()
            .unwrap();
        assert_eq!(logs.status.code(), Some(1), "{}", text(&logs.stderr));
        assert!(text(&logs.stdout).contains("worker lost"), "{}", text(&logs.stdout));
        // Once A's registration has lapsed, B's reaper removes A's pod, and with it
        // (its owner) the pod's env Secret.
        let deadline = Instant::now() + Duration::from_secs(60);
        let of_a = |items: Vec<serde_json::Value>| {
            items
                .into_iter()
                .filter(|o| o["metadata"]["labels"]["jetbridge.io/worker"] == "kube-a")
                .count()
        };
        loop {
            let (pods, secrets) = (of_a(sim_seen.pods("jb-server")),
                of_a(sim_seen.secrets("jb-server")),);
            if pods == 0 && secrets == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "A's {pods} pod(s) and {secrets} Secret(s) were never reaped"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let failed = b
            .client("submit")
            .arg(examples().join("fails.yml"))
            .arg("--watch")
            .output()
            .unwrap();
        assert_eq!(failed.status.code(), Some(1));
        assert!(
            text(&failed.stdout).contains("task: tests exited with status 3"),
            "{}",
            text(&failed.stdout)
        );
    })
    .await
    .expect("the replicas' test");
    drop(sim);
    drop(schema);
}

/// A minimal OTLP/HTTP receiver: keeps every request body posted to it.
fn otlp_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let kept = kept.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                // One request per connection is enough for a test; keep-alive requests
                // are read in turn.
                loop {
                    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + 4 + len {
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buf[head_end + 4..head_end + 4 + len].to_vec();
                    buf.drain(..head_end + 4 + len);
                    kept.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&body).into_owned());
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
                    );
                }
            });
        }
    });
    (url, bodies)
}

#[test]
fn builds_are_traced_over_otlp_and_their_log_lines_carry_the_trace_id() {
    let (endpoint, bodies) = otlp_receiver();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let mut child = bin()
        .args([
            "--log-format",
            "json",
            "server",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .env("JETBRIDGE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&first).expect("a JSON line");
    let url = v["message"]
        .as_str()
        .and_then(|m| m.split("API on ").nth(1))
        .and_then(|r| r.split(',').next())
        .expect("the address")
        .to_owned();
    let p = dir.path().join("t.yml");
    std::fs::write(
        &p,
        "jobs:\n- name: j\n  plan:\n  - task: t\n    config: {platform: linux, run: {path: sh, args: [-c, 'echo traced']}}\n",
    )
    .unwrap();
    let out = bin()
        .args(["submit", "--server", &url, "--watch"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // A drain flushes the batch.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));

    let spans: Vec<serde_json::Value> = bodies
        .lock()
        .unwrap()
        .iter()
        .filter_map(|b| serde_json::from_str::<serde_json::Value>(b).ok())
        .flat_map(|v| {
            v["resourceSpans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
                .flat_map(|ss| ss["spans"].as_array().cloned().unwrap_or_default())
        })
        .collect();
    let named = |n: &str| spans.iter().filter(|s| s["name"] == n).collect::<Vec<_>>();
    let build = named("build");
    assert_eq!(build.len(), 1, "{spans:?}");
    let trace = build[0]["traceId"].as_str().unwrap().to_owned();
    let step = named("step");
    assert_eq!(step.len(), 1, "{spans:?}");
    assert_eq!(step[0]["traceId"], trace.as_str());
    assert_eq!(step[0]["parentSpanId"], build[0]["spanId"]);
    let phases: Vec<&serde_json::Value> = named("phase");
    assert!(
        phases
            .iter()
            .all(|p| p["traceId"] == trace.as_str() && p["parentSpanId"] == step[0]["spanId"]),
        "{phases:?}"
    );
    assert!(
        phases.len() >= 3,
        "schedule, start, command at least: {phases:?}"
    );
    // The build's log lines name the trace.
    let logs = std::fs::read_to_string(&log).unwrap();
    let claimed = logs
        .lines()
        .find(|l| l.contains("build claimed"))
        .unwrap_or_else(|| panic!("no claim logged: {logs}"));
    assert!(claimed.contains(&trace), "{claimed}");
}

/// A TCP proxy to `upstream` that cuts its first connection after `cut` bytes of the
/// answer; later connections pass whole.
fn cutting_proxy(upstream: String, cut: usize) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let upstream = upstream.trim_start_matches("http://").to_owned();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut down) = conn else { break };
            let Ok(mut up) = std::net::TcpStream::connect(&upstream) else {
                break;
            };
            let (mut down2, mut up2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut down2, &mut up2);
            });
            std::thread::spawn(move || {
                let mut sent = 0usize;
                let mut buf = [0u8; 64];
                while let Ok(k) = up.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    let k = if n == 0 {
                        k.min(cut.saturating_sub(sent))
                    } else {
                        k
                    };
                    if k == 0 || down.write_all(&buf[..k]).is_err() {
                        break;
                    }
                    sent += k;
                }
                let _ = down.shutdown(std::net::Shutdown::Both);
                let _ = up.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

#[test]
fn logs_follow_resumes_after_a_dropped_stream_without_losing_or_repeating_lines() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("server"), NO_ARGS);
    let p = dir.path().join("lines.yml");
    std::fs::write(
        &p,
        "jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      run: {path: sh, args: [-c, 'for i in $(seq 1 40); do echo line $i; sleep 0.01; done']}\n",
    )
    .unwrap();
    let out = server.client("submit").arg(&p).output().unwrap();
    let id = submitted_id(&out);
    // The first connection is cut inside the stream's first events.
    let proxy = cutting_proxy(server.url.clone(), 700);
    let logs = bin()
        .args(["logs", &id.to_string(), "-f", "--server", &proxy])
        .output()
        .unwrap();
    assert_eq!(logs.status.code(), Some(0), "{}", text(&logs.stderr));
    let stdout = text(&logs.stdout);
    for i in 1..=40 {
        let line = format!("[task: t] line {i}");
        assert_eq!(
            stdout.lines().filter(|l| *l == line).count(),
            1,
            "{line} once in:\n{stdout}"
        );
    }
    assert!(stdout.contains("build succeeded"), "{stdout}");
}

/// An evicted step through the server: the build errors with the eviction named, the
/// failure is counted by class, and the Kubernetes requests are counted by verb.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_step_errors_the_build_through_submit_watch() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, kubeconfig) = start_sim(dir.path(), "jb-evict").await;
    let root = dir.path().to_owned();
    let server = tokio::task::spawn_blocking(move || {
        ServerProc::start(
            &root.join("data"),
            &[
                "--backend",
                "kube",
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
            ],
        )
    })
    .await
    .unwrap();
    let p = dir.path().join("slow.yml");
    std::fs::write(
        &p,
        "jobs:\n- name: j\n  plan:\n  - task: t\n    params: {TOKEN: s3cr3t}\n    config:\n      platform: linux\n      image_resource: {type: registry-image, source: {repository: busybox}}\n      run: {path: sh, args: [-c, 'echo started; sleep 30']}\n",
    )
    .unwrap();
    let mut watch = server.client("submit");
    watch.arg(&p).arg("--watch");
    let watched = tokio::task::spawn_blocking(move || watch.output().unwrap());
    // The step's pod runs: evict it.
    let pod = running_pod(&sim, "jb-evict").await;
    // While it runs, the replica owns its pod and the pod's env Secret.
    let url = server.metrics_url.clone();
    let running = tokio::task::spawn_blocking(move || {
        Command::new("curl").args(["-fsS", &url]).output().unwrap()
    })
    .await
    .unwrap();
    let running = text(&running.stdout);
    assert!(running.contains("\njetbridge_pods_owned 1\n"), "{running}");
    assert!(
        running.contains("\njetbridge_secrets_owned 1\n"),
        "{running}"
    );
    sim.evict_with_api("jb-evict", &pod);
    let out = tokio::time::timeout(Duration::from_secs(60), watched)
        .await
        .expect("the build ends well before its command would")
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("build errored"), "{stdout}");
    // Evicted, or (when the pod was gone before its status was read) deleted: a
    // disruption either way, never the step's own failure.
    let class = if stdout.contains("evicted") {
        "evicted"
    } else {
        assert!(stdout.contains("pod deleted"), "{stdout}");
        "pod-deleted"
    };
    let url = server.metrics_url.clone();
    let metrics = tokio::task::spawn_blocking(move || {
        Command::new("curl").args(["-fsS", &url]).output().unwrap()
    })
    .await
    .unwrap();
    let metrics = text(&metrics.stdout);
    assert!(
        metrics.contains(&format!(
            "jetbridge_step_failures_total{{class=\"{class}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("jetbridge_kube_requests_total{verb=\"create\",code=\"201\"}"),
        "{metrics}"
    );
    drop(server);
    drop(sim);
}

#[test]
fn ctrl_c_in_submit_watch_aborts_the_remote_build_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("server"), NO_ARGS);
    let mut watch = server
        .client("submit")
        .arg(sleeper(dir.path(), 600))
        .arg("--watch")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the step's first line, as a person would before pressing Ctrl-C.
    let mut out = BufReader::new(watch.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("[task: t] started") {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the stream ended: {seen}"
        );
        seen.push_str(&line);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watch.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = watch.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen}{rest}");
    assert!(rest.contains("aborting build"), "{rest}");
    assert!(
        rest.contains("[task: cleanup] cleaned up"),
        "the on_abort hook ran: {rest}"
    );
    assert!(rest.contains("build aborted"), "{rest}");
}

/// Failure modes on the simulator through `submit --watch`, each beside `run` of the
/// same plan on the same simulator where the failure comes from the plan or the
/// cluster's setup (the same lines and exit status), and an OOM kill injected mid-step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_modes_on_the_simulator_print_and_exit_as_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, kubeconfig) = start_sim(dir.path(), "jb-modes").await;
    sim.fail_image("no-such-image", "manifest unknown");
    let sim = std::sync::Arc::new(sim);
    let root = dir.path().to_owned();
    let kc = kubeconfig.clone();
    let server = tokio::task::spawn_blocking(move || {
        ServerProc::start(
            &root.join("data"),
            &["--backend", "kube", "--kubeconfig", kc.to_str().unwrap()],
        )
    })
    .await
    .unwrap();
    let task = |image: &str, run: &str, extra: &str| {
        format!(
            "jobs:\n- name: j\n  plan:\n  - task: t\n{extra}    config:\n      platform: linux\n      image_resource: {{type: registry-image, source: {{repository: {image}}}}}\n      run: {{path: sh, args: [-c, {}]}}\n",
            serde_json::to_string(run).unwrap()
        )
    };
    let cases = [
        (
            "image-pull",
            task("no-such-image", "true", ""),
            "manifest unknown",
        ),
        (
            "timeout",
            task("busybox", "echo started; sleep 30", "    timeout: 1s\n"),
            "timed out",
        ),
        (
            "exit",
            task("busybox", "echo failing; exit 7", ""),
            "exited with status 7",
        ),
    ];
    for (name, plan, says) in cases {
        let p = dir.path().join(format!("{name}.yml"));
        std::fs::write(&p, plan).unwrap();
        let (kc, data, p2) = (kubeconfig.clone(), dir.path().join("run"), p.clone());
        let run = tokio::task::spawn_blocking(move || {
            bin()
                .arg("run")
                .arg(&p2)
                .args(["--backend", "kube", "--kubeconfig"])
                .arg(&kc)
                .arg("--data-dir")
                .arg(&data)
                .output()
                .unwrap()
        });
        let mut c = server.client("submit");
        c.arg(&p).arg("--watch");
        let submit = tokio::task::spawn_blocking(move || c.output().unwrap());
        let (run, submit) = (run.await.unwrap(), submit.await.unwrap());
        assert_eq!(run.status.code(), Some(1), "{name}: {}", text(&run.stdout));
        assert_eq!(submit.status.code(), run.status.code(), "{name}");
        assert!(
            text(&submit.stdout).contains(says),
            "{name}: {}",
            text(&submit.stdout)
        );
        assert_eq!(
            normalized(&text(&run.stdout)),
            normalized(&text(&submit.stdout)),
            "{name}"
        );
    }
    // An OOM kill of the step's container mid-command.
    let p = dir.path().join("oom.yml");
    std::fs::write(&p, task("busybox", "echo started; sleep 30", "")).unwrap();
    let mut c = server.client("submit");
    c.arg(&p).arg("--watch");
    let watched = tokio::task::spawn_blocking(move || c.output().unwrap());
    let pod = running_pod(&sim, "jb-modes").await;
    sim.oom_kill("jb-modes", &pod);
    let out = tokio::time::timeout(Duration::from_secs(60), watched)
        .await
        .expect("ends well before the command would")
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.to_lowercase().contains("oom") || stdout.contains("out of memory"),
        "{stdout}"
    );
    drop(server);
}
