//! The binary as a user meets it: the examples, exit statuses, messages, JSON output,
//! Ctrl-C, and nothing left behind.

use jetbridge_gcs_sim::SimControls;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_jetbridge"));
    // Nothing from the caller's environment may steer the tests.
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

fn run_example(name: &str, data: &Path, extra: &[&str]) -> Output {
    run_file(&examples().join(name), data, extra)
}

fn run_file(pipeline: &Path, data: &Path, extra: &[&str]) -> Output {
    bin()
        .arg("run")
        .arg(pipeline)
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .output()
        .expect("jetbridge runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn assert_nothing_left(data: &Path) {
    assert_eq!(
        entries(&data.join("local/pods")),
        Vec::<String>::new(),
        "pods left behind"
    );
    // Each run keeps its volumes under runs/<worker>/ and removes them at the end.
    assert_eq!(
        entries(&data.join("runs")),
        Vec::<String>::new(),
        "volumes left behind"
    );
    assert!(
        data.join("local").exists(),
        "the run used this data directory"
    );
}

#[test]
fn hello_passes_artifacts_from_get_to_task_to_put() {
    let data = tempfile::tempdir().expect("tempdir");
    let out = run_example("hello.yml", data.path(), &[]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    for line in [
        "▶ get: message",
        "✓ task: shout",
        "[task: shout] wrote: HELLO FROM JETBRIDGE",
        "[put: outbox] delivered: HELLO FROM JETBRIDGE",
        "build succeeded",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // The summary lists each step with its artifacts.
    assert!(stdout.contains("Summary"));
    assert!(
        stdout.lines().any(|l| l.contains("task: shout")
            && l.contains("succeeded")
            && l.contains("shouted (")),
        "{stdout}"
    );
    // Told once that images are not honoured locally.
    assert_eq!(
        stdout.matches("image_resource is not honoured").count(),
        1,
        "{stdout}"
    );
    assert_nothing_left(data.path());
}

#[test]
fn parallel_example_runs_and_keeps_its_cache() {
    let data = tempfile::tempdir().expect("tempdir");
    let first = run_example("parallel.yml", data.path(), &[]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stdout));
    assert!(
        text(&first.stdout).contains("this cache has seen 1 run(s)"),
        "{}",
        text(&first.stdout)
    );
    let second = run_example("parallel.yml", data.path(), &[]);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second.stdout));
    assert!(
        text(&second.stdout).contains("this cache has seen 2 run(s)"),
        "{}",
        text(&second.stdout)
    );
    assert!(text(&second.stdout).contains("unit: 42 passed"));
    assert_nothing_left(data.path());
}

#[test]
fn failing_example_exits_1_and_names_the_step() {
    let data = tempfile::tempdir().expect("tempdir");
    let out = run_example("fails.yml", data.path(), &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("build failed"), "{stdout}");
    assert!(
        stdout.contains("task: tests exited with status 3"),
        "{stdout}"
    );
    // The on_failure hook read the report the failed step wrote.
    assert!(
        stdout.contains("[task: show-report] 1 passed, 1 failed"),
        "{stdout}"
    );
    assert_nothing_left(data.path());
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write");
    p
}

#[test]
fn a_mistake_exits_2_with_file_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(
        dir.path(),
        "bad.yml",
        "jobs:\n- name: j\n  plan:\n  - task: t\n    confg:\n      platform: linux\n",
    );
    let out = bin()
        .arg("run")
        .arg(&p)
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .output()
        .expect("runs");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.yml:5:5"), "{stderr}");
    assert!(stderr.contains("confg"), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Error {"),
        "no panic or debug dump: {stderr}"
    );
}

#[test]
fn an_unfilled_var_names_it_and_var_fills_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(
        dir.path(),
        "vars.yml",
        "jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      run: {path: sh, args: [-c, 'echo ((greeting))']}\n",
    );
    // As `fly validate-pipeline`: valid, with a warning naming the variable and where.
    let out = bin().arg("validate").arg(&p).output().expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("vars.yml:7:34: variable `greeting` has no value here; `run` needs one (--var greeting=VALUE)"),
        "{said}"
    );
    assert!(said.contains("valid (1 job(s)"), "{said}");
    // Given, no warning.
    let out = bin()
        .arg("validate")
        .arg(&p)
        .args(["--var", "greeting=hi"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0));
    assert!(
        !text(&out.stdout).contains("warning"),
        "{}",
        text(&out.stdout)
    );
    // `run` still requires it.
    let out = bin()
        .arg("run")
        .arg(&p)
        .arg("--data-dir")
        .arg(dir.path().join("d0"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("hint: pass `--var greeting=...`"),
        "{}",
        text(&out.stderr)
    );
    let ok = bin()
        .arg("run")
        .arg(&p)
        .args(["--var", "greeting=bonjour", "--data-dir"])
        .arg(dir.path().join("d"))
        .output()
        .expect("runs");
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(
        text(&ok.stdout).contains("[task: t] bonjour"),
        "{}",
        text(&ok.stdout)
    );
}

#[test]
fn several_jobs_need_job_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = |n: &str| {
        format!(
            "- name: {n}\n  plan:\n  - task: t\n    config:\n      platform: linux\n      run: {{path: 'true'}}\n"
        )
    };
    let p = write(
        dir.path(),
        "two.yml",
        &format!("jobs:\n{}{}", job("a"), job("b")),
    );
    let out = bin()
        .arg("run")
        .arg(&p)
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--job"), "{}", text(&out.stderr));
    let out = bin()
        .arg("run")
        .arg(&p)
        .args(["--job", "b", "--data-dir"])
        .arg(dir.path().join("d"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn validate_accepts_the_examples() {
    for ex in ["hello.yml", "parallel.yml", "fails.yml"] {
        let out = bin()
            .arg("validate")
            .arg(examples().join(ex))
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(0), "{ex}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("valid"));
    }
}

#[test]
fn json_log_format_prints_one_object_per_line() {
    let data = tempfile::tempdir().expect("tempdir");
    let out = run_example("hello.yml", data.path(), &["--log-format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let mut kinds = Vec::new();
    for line in text(&out.stdout).lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        kinds.push(v["event"].as_str().unwrap_or("").to_owned());
    }
    assert!(kinds.contains(&"step_started".to_owned()));
    assert!(kinds.contains(&"output".to_owned()));
    assert_eq!(kinds.last().map(String::as_str), Some("summary"));
}

#[test]
fn env_vars_stand_in_for_flags() {
    let data = tempfile::tempdir().expect("tempdir");
    let out = bin()
        .arg("run")
        .arg(examples().join("hello.yml"))
        .env("JETBRIDGE_DATA_DIR", data.path())
        .env("JETBRIDGE_LOG_FORMAT", "json")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with('{'));
    assert!(
        data.path().join("local").exists(),
        "JETBRIDGE_DATA_DIR was used"
    );
}

/// A run of `pipeline` (written to a file) that the test interrupts: its stdout lines
/// can be waited for.
struct Interrupted {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    seen: Vec<String>,
    data: PathBuf,
    dir: tempfile::TempDir,
}

impl Interrupted {
    fn start(pipeline: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), "slow.yml", pipeline);
        let data = dir.path().join("d");
        let mut child = bin()
            .arg("run")
            .arg(&p)
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::piped())
            // A file, not a pipe nobody reads: a full pipe would block the run.
            .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr file"))
            .spawn()
            .expect("spawns");
        let stdout = child.stdout.take().expect("stdout");
        Interrupted {
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
            data,
            dir,
        }
    }

    /// Read stdout until a line contains `needle`.
    fn wait_for(&mut self, needle: &str) {
        for line in self.lines.by_ref() {
            let line = line.expect("line");
            let found = line.contains(needle);
            self.seen.push(line);
            if found {
                return;
            }
        }
        let status = self.child.wait().expect("exits");
        panic!(
            "the run ended ({status}) without printing {needle:?}: {:#?}\nstderr:\n{}",
            self.seen,
            std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
        );
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("signal");
    }

    /// Wait for the exit; returns its code and everything it printed.
    fn finish(mut self) -> (Option<i32>, String) {
        for line in self.lines.by_ref() {
            self.seen.push(line.expect("line"));
        }
        let status = self.child.wait().expect("exits");
        assert_eq!(
            entries(&self.data.join("local/pods")),
            Vec::<String>::new(),
            "pods left behind"
        );
        let stderr = std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default();
        (
            status.code(),
            format!("{}\nstderr:\n{stderr}", self.seen.join("\n")),
        )
    }
}

fn no_process_has(marker: &str) {
    let ps = Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("ps");
    assert!(
        !text(&ps.stdout).contains(marker),
        "a step's process survived the abort ({marker})"
    );
}

/// A step that says it started, then would run for five minutes; with `on_abort` and
/// `ensure` hooks (`hook` is the on_abort script).
fn slow_with_hooks(marker: &str, hook: &str) -> String {
    let task = |name: &str, script: &str, indent: &str| {
        format!(
            "task: {name}\n{indent}  config:\n{indent}    platform: linux\n{indent}    run: {{path: sh, args: [-c, {}]}}",
            serde_json::to_string(script).expect("json")
        )
    };
    format!(
        "jobs:\n- name: j\n  plan:\n  - {}\n    on_abort:\n      {}\n    ensure:\n      {}\n",
        task("slow", &format!("echo started; sleep 300 # {marker}"), "  "),
        task("on-abort", hook, "    "),
        task("ensure", "echo ensured", "    "),
    )
}

fn aborts_once_and_runs_the_hooks(sig: nix::sys::signal::Signal, tag: &str) {
    let marker = format!("jb-{tag}-{}", std::process::id());
    let mut run = Interrupted::start(&slow_with_hooks(&marker, "echo cleaned up"));
    run.wait_for("[task: slow] started");
    run.signal(sig);
    let (code, out) = run.finish();
    assert_eq!(code, Some(130), "{out}");
    assert!(out.contains("[task: on-abort] cleaned up"), "{out}");
    assert!(out.contains("[task: ensure] ensured"), "{out}");
    no_process_has(&marker);
}

#[test]
fn ctrl_c_aborts_runs_the_hooks_and_cleans_up() {
    aborts_once_and_runs_the_hooks(nix::sys::signal::Signal::SIGINT, "ctrl-c");
}

#[test]
fn sigterm_is_handled_like_ctrl_c() {
    aborts_once_and_runs_the_hooks(nix::sys::signal::Signal::SIGTERM, "sigterm");
}

#[test]
fn a_second_ctrl_c_skips_the_hooks_but_removes_every_pod() {
    let marker = format!("jb-ctrl-c-twice-{}", std::process::id());
    let hook_marker = format!("{marker}-hook");
    let mut run = Interrupted::start(&slow_with_hooks(
        &marker,
        &format!("echo hook started; sleep 300 # {hook_marker}"),
    ));
    run.wait_for("[task: slow] started");
    run.signal(nix::sys::signal::Signal::SIGINT);
    run.wait_for("[task: on-abort] hook started");
    run.signal(nix::sys::signal::Signal::SIGINT);
    let (code, out) = run.finish();
    assert_eq!(code, Some(130), "{out}");
    assert!(!out.contains("[task: ensure] ensured"), "ensure ran: {out}");
    no_process_has(&marker);
    no_process_has(&hook_marker);
}

#[test]
fn hello_runs_with_artifacts_in_an_s3_bucket() {
    let Ok(endpoint) = std::env::var("JETBRIDGE_S3_ENDPOINT") else {
        jetbridge_conformance::live::unavailable("S3", "JETBRIDGE_S3_ENDPOINT is not set");
        return;
    };
    let bucket = std::env::var("JETBRIDGE_S3_BUCKET").unwrap_or_else(|_| "jetbridge-test".into());
    let data = tempfile::tempdir().expect("tempdir");
    let prefix = format!("cli-{}", std::process::id());
    let out = bin()
        .arg("run")
        .arg(examples().join("hello.yml"))
        .arg("--data-dir")
        .arg(data.path())
        .arg("--volumes")
        .arg(format!("s3://{bucket}/{prefix}"))
        .args([
            "--volumes-endpoint",
            &endpoint,
            "--volumes-allow-http",
            "--volumes-region",
            "us-east-1",
        ])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .expect("runs");
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("[put: outbox] delivered: HELLO FROM JETBRIDGE"),
        "{stdout}"
    );
    // Nothing was written to the local volume directory: the bucket held the artifacts.
    assert_eq!(
        entries(&data.path().join("volumes/volumes")),
        Vec::<String>::new()
    );
}

/// The Cloud Storage simulator in this process with `bucket`, on a runtime of its own
/// (kept alive by the caller) while the binary runs.
fn gcs_sim(bucket: &str) -> (tokio::runtime::Runtime, jetbridge_gcs_sim::Simulator) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sim = rt
        .block_on(jetbridge_gcs_sim::Simulator::start(
            jetbridge_gcs_sim::SimConfig::default().with_bucket(bucket),
        ))
        .expect("gcs simulator");
    (rt, sim)
}

/// `jetbridge run hello.yml` with its artifacts at `url` on the simulator, anonymously.
fn hello_on_gcs(sim: &jetbridge_gcs_sim::Simulator, data: &Path, url: &str) -> Command {
    let mut c = bin();
    c.arg("run")
        .arg(examples().join("hello.yml"))
        .arg("--data-dir")
        .arg(data)
        .args(["--volumes", url])
        .args([
            "--volumes-endpoint",
            &sim.url(),
            "--volumes-allow-http",
            "--volumes-anonymous",
        ]);
    c
}

#[test]
fn hello_runs_with_artifacts_in_a_gcs_bucket() {
    let (rt, sim) = gcs_sim("jb-cli");
    let data = tempfile::tempdir().expect("tempdir");
    let out = hello_on_gcs(&sim, data.path(), "gs://jb-cli/ci")
        // Anonymous ignores credentials in the environment, even conflicting ones.
        .env("GOOGLE_SERVICE_ACCOUNT", "/nonexistent/key.json")
        .output()
        .expect("runs");
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("[put: outbox] delivered: HELLO FROM JETBRIDGE"),
        "{stdout}"
    );
    // The bucket held the artifacts: written there with multipart uploads, and
    // nothing was written to the local volume directory.
    let uploads = sim
        .requests()
        .iter()
        .filter(|r| {
            r.method == "POST"
                && r.query.starts_with("uploads")
                && r.object
                    .as_deref()
                    .is_some_and(|o| o.starts_with("ci/volumes/"))
        })
        .count();
    assert!(uploads > 0, "{:?}", sim.requests());
    assert_eq!(sim.in_progress_uploads(), []);
    assert_eq!(
        entries(&data.path().join("volumes/volumes")),
        Vec::<String>::new()
    );
    rt.block_on(sim.shutdown());
}

#[test]
fn a_bad_volumes_url_is_a_usage_error() {
    let data = tempfile::tempdir().expect("tempdir");
    let out = run_example("hello.yml", data.path(), &["--volumes", "ftp://nowhere/x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--volumes"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn kept_pods_stay_until_the_next_run_reaps_them() {
    let data = tempfile::tempdir().expect("tempdir");
    let first = run_example("parallel.yml", data.path(), &["--keep-pods"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let kept = entries(&data.path().join("local/pods"));
    assert_eq!(
        kept.len(),
        3,
        "one pod per step kept for debugging: {kept:?}"
    );
    // The first run's process is gone: the next run collects its pods.
    let second = run_example("parallel.yml", data.path(), &[]);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second.stderr));
    assert_nothing_left(data.path());
}

#[test]
fn concurrent_runs_do_not_reap_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // The first run's step waits, mid-step, until the test lets it go.
    let go = dir.path().join("go");
    let script = format!(
        "echo started; while [ ! -e {} ]; do sleep 0.05; done; echo done > o/f; echo finished",
        go.display()
    );
    let slow = write(
        dir.path(),
        "slow.yml",
        &format!(
            "jobs:\n- name: j\n  plan:\n  - task: slow\n    config:\n      platform: linux\n      outputs: [{{name: o}}]\n      run: {{path: sh, args: [-c, {}]}}\n",
            serde_json::to_string(&script).expect("json")
        ),
    );
    let mut long = bin()
        .arg("run")
        .arg(&slow)
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawns");
    let mut lines = BufReader::new(long.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        let started = line.contains("[task: slow] started");
        seen.push(line);
        if started {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.contains("started")),
        "the first run's step never started: {seen:#?}"
    );
    // A second run on the same data directory starts and ends while the first one's
    // step runs, then the first one goes on.
    let quick = run_example("fails.yml", &data, &[]);
    assert_eq!(quick.status.code(), Some(1));
    std::fs::write(&go, "").expect("let the first run go");
    seen.extend(lines.map(|l| l.expect("line")));
    let status = long.wait().expect("first run ends");
    let out = seen.join("\n");
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("[task: slow] finished"), "{out}");
    assert_nothing_left(&data);
}

/// Every file under `dir` (not following symlinks) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file()
                && std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn a_planted_secret_never_reaches_logs_or_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "s3cr3t-planted-7d1f0c";
    let p = write(
        dir.path(),
        "secret.yml",
        "jobs:\n- name: j\n  plan:\n  - task: uses-secret\n    params: {TOKEN: ((token))}\n    config:\n      platform: linux\n      outputs: [{name: o}]\n      run: {path: sh, args: [-c, 'test -n \"$TOKEN\" && echo token-was-set > o/flag']}\n",
    );
    let data = dir.path().join("d");
    let out = bin()
        .arg("run")
        .arg(&p)
        .args([
            "--var",
            &format!("token={secret}"),
            "--keep-pods",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(&data)
        .env("JETBRIDGE_LOG", "trace")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("uses-secret"), "the run was logged");
    assert!(!all.contains(secret), "the secret reached the output");
    // Nothing on disk holds it either: not the kept sandbox, not the volumes.
    assert_eq!(
        files_containing(&data, secret.as_bytes()),
        Vec::<PathBuf>::new()
    );
}

#[test]
fn a_bucket_that_cannot_be_used_stops_the_run_before_any_step() {
    let (_rt, sim) = gcs_sim("jb-present");
    let data = tempfile::tempdir().expect("tempdir");
    let out = hello_on_gcs(&sim, data.path(), "gs://jb-absent/ci")
        .output()
        .expect("runs");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("gs://jb-absent/ci"), "{stderr}");
    assert!(stderr.contains("NoSuchBucket"), "{stderr}");
    assert!(stderr.contains("--volumes-anonymous"), "the hint: {stderr}");
    assert!(!stdout.contains("get: message"), "a step ran: {stdout}");
    // One listing, nothing written.
    assert!(
        sim.requests().iter().all(|r| r.method == "GET"),
        "{:?}",
        sim.requests()
    );
}

/// A pipeline whose one task says it started and then waits until the test writes to
/// the FIFO at `gate`.
fn held_pipeline(dir: &Path, gate: &Path) -> PathBuf {
    nix::unistd::mkfifo(gate, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    write(
        dir,
        "held.yml",
        &format!(
            "jobs:\n- name: j\n  plan:\n  - task: hold\n    config:\n      platform: linux\n      run: {{path: sh, args: [-c, 'echo started; read go < {}; echo finished']}}\n",
            gate.display()
        ),
    )
}

/// Start `cmd` (a run of [`held_pipeline`]) and return once its task has started.
fn start_held(mut cmd: Command) -> std::process::Child {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines
            .next()
            .expect("output before the step starts")
            .expect("line");
        if line.contains("[task: hold] started") {
            break;
        }
    }
    // Keep draining so the run never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    child
}

/// Two runs given the same `--worker` on one data directory: the second is refused
/// before any step while the first runs; once the first ended the name is free again.
#[test]
fn two_runs_given_the_same_worker_the_second_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let gate = dir.path().join("gate");
    let held = held_pipeline(dir.path(), &gate);
    let mut first = bin();
    first
        .arg("run")
        .arg(&held)
        .arg("--data-dir")
        .arg(&data)
        .args(["--worker", "ci-shared"]);
    let mut first = start_held(first);
    let second = run_example("hello.yml", &data, &["--worker", "ci-shared"]);
    assert_eq!(second.status.code(), Some(2), "{}", text(&second.stderr));
    let err = text(&second.stderr);
    assert!(
        err.contains("\"ci-shared\"") && err.contains("worker name"),
        "says which name is taken: {err}"
    );
    assert!(
        !text(&second.stdout).contains("[get:"),
        "no step of the refused run ran"
    );
    std::fs::write(&gate, "go\n").expect("open the gate");
    assert_eq!(first.wait().expect("first ends").code(), Some(0));
    let third = run_example("hello.yml", &data, &["--worker", "ci-shared"]);
    assert_eq!(third.status.code(), Some(0), "{}", text(&third.stderr));
}

/// The same on a shared Postgres registry from two data directories (as from two
/// hosts): the registry refuses the second, and the first's sign-off frees the name at
/// once.
#[test]
fn two_runs_given_the_same_worker_on_a_shared_registry_the_second_is_refused() {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        jetbridge_conformance::live::unavailable("POSTGRES", "DATABASE_URL is not set");
        return;
    };
    let schema = jetbridge_postgres::scratch::ScratchSchema::new(&url, "jb_cli").expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = dir.path().join("gate");
    let held = held_pipeline(dir.path(), &gate);
    let registry = ["--registry", &url, "--registry-schema", schema.name()];
    let mut first = bin();
    first
        .arg("run")
        .arg(&held)
        .arg("--data-dir")
        .arg(dir.path().join("one"))
        .args(registry)
        .args(["--worker", "ci-shared"]);
    let mut first = start_held(first);
    let mut other_host: Vec<&str> = registry.to_vec();
    other_host.extend(["--worker", "ci-shared"]);
    let second = run_example("hello.yml", &dir.path().join("two"), &other_host);
    assert_eq!(second.status.code(), Some(2), "{}", text(&second.stderr));
    let err = text(&second.stderr);
    assert!(
        err.contains("\"ci-shared\"") && err.contains("held by another live process"),
        "{err}"
    );
    std::fs::write(&gate, "go\n").expect("open the gate");
    assert_eq!(first.wait().expect("first ends").code(), Some(0));
    let third = run_example("hello.yml", &dir.path().join("two"), &other_host);
    assert_eq!(third.status.code(), Some(0), "{}", text(&third.stderr));
}

#[test]
fn a_resource_image_on_the_local_backend_is_refused_before_any_step_runs() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write(
        dir.path(),
        "ci.yml",
        "resources:\n- name: src\n  type: git\n  source: {uri: https://example.com/r.git}\njobs:\n- name: j\n  plan:\n  - task: first\n    config:\n      platform: linux\n      run: {path: 'true'}\n  - get: src\n",
    );
    let out = run_file(&pipeline, &dir.path().join("data"), &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for needle in [
        "ci.yml:2:3: resource \"src\" has type \"git\"",
        "the image concourse/git-resource",
        "--backend kube",
        "`type: local`",
    ] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    assert!(
        !text(&out.stdout).contains("task: first"),
        "no step ran: {}",
        text(&out.stdout)
    );
}

#[test]
fn set_pipeline_is_refused_by_run_before_any_step() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write(
        dir.path(),
        "ci.yml",
        "jobs:\n- name: j\n  plan:\n  - task: make\n    config:\n      platform: linux\n      outputs: [{name: ci}]\n      run: {path: sh, args: [-c, 'echo jobs: > ci/p.yml']}\n  - set_pipeline: other\n    file: ci/p.yml\n",
    );
    let out = run_file(&pipeline, &dir.path().join("data"), &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ci.yml:9:5: `set_pipeline` stores a pipeline, and `jetbridge run` runs one job once and stores none"),
        "{stderr}"
    );
    assert!(!text(&out.stdout).contains("task: make"), "no step ran");
}
