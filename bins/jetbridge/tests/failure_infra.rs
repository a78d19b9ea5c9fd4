//! Infrastructure failing under a running `jetbridge server` (a real process, builds
//! submitted through its API, steps in pods on the Kubernetes API simulator): the
//! registry's and queue's Postgres restarted mid-build, and the bucket that holds the
//! artifacts answering 5xx to the object uploads of a step's output. Each test checks
//! how every build ends, with what message, that no artifact is lost or half-visible,
//! and that one reaper pass leaves nothing behind. An ignored test shows a failed
//! upload left in the bucket when its abort meets a reset connection. The tests fail,
//! never skip, without what they need (`source .ci/postgres-env.sh` for the shared
//! Postgres of the bucket tests; root and the Postgres binaries for the private
//! cluster of the restart test).

mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{ServerProc, database_url, scrape, start_sim, text};
use jetbridge_gcs_sim::{Fault, FaultAction, SimControls};

/// How long a server may take to say where it listens.
const STARTUP: Duration = Duration::from_secs(120);

/// The API of one server, as a client sees it.
struct Api {
    http: reqwest::Client,
    url: String,
    metrics_url: String,
}

const TERMINAL: [&str; 4] = ["succeeded", "failed", "errored", "aborted"];

impl Api {
    fn of(server: &ServerProc) -> Api {
        Api {
            http: reqwest::Client::new(),
            url: server.url.clone(),
            metrics_url: server.metrics_url.clone(),
        }
    }

    /// Queue `pipeline` (its file named `file`); the build's id.
    async fn submit(&self, file: &str, pipeline: &str) -> u64 {
        let res = self
            .http
            .post(format!("{}/api/v1/builds", self.url))
            .json(&serde_json::json!({"pipeline": pipeline, "file": file}))
            .send()
            .await
            .expect("the API answers");
        let status = res.status();
        let body: serde_json::Value = res.json().await.expect("JSON");
        assert_eq!(status.as_u16(), 201, "{body}");
        body["id"].as_u64().expect("an id")
    }

    async fn build(&self, id: u64) -> serde_json::Value {
        self.http
            .get(format!("{}/api/v1/builds/{id}", self.url))
            .send()
            .await
            .expect("the API answers")
            .json()
            .await
            .expect("JSON")
    }

    /// Wait (bounded) until the build has ended; the build.
    async fn ended(&self, id: u64, within: Duration) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let b = self.build(id).await;
            if TERMINAL.contains(&b["state"].as_str().unwrap_or_default()) {
                return b;
            }
            assert!(
                Instant::now() < deadline,
                "build {id} did not end within {within:?}: {b}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The build's events stored so far, as the event stream sends them.
    async fn events(&self, id: u64) -> String {
        self.http
            .get(format!(
                "{}/api/v1/builds/{id}/events?follow=false",
                self.url
            ))
            .send()
            .await
            .expect("the API answers")
            .text()
            .await
            .expect("the events")
    }

    /// The output the build's events hold so far, step by step: `(step, text)`.
    async fn output(&self, id: u64) -> Vec<(String, String)> {
        let sse = self.events(id).await;
        let mut out = Vec::new();
        let mut event = String::new();
        for line in sse.lines() {
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data:")
                && event == "output"
            {
                let v: serde_json::Value = serde_json::from_str(data.trim()).expect("JSON data");
                out.push((
                    v["step"].as_str().unwrap_or_default().to_owned(),
                    v["text"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
        out
    }

    async fn metrics(&self) -> String {
        scrape(&self.http, &self.metrics_url).await
    }

    /// The value of the sample named exactly `name` (labels included).
    async fn metric(&self, name: &str) -> f64 {
        let m = self.metrics().await;
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Wait (bounded) for two clean reaper passes to end from now, so that one of them
    /// started after every build here had ended.
    async fn one_full_reaper_pass(&self) {
        let name = "jetbridge_reaper_passes_total{result=\"clean\"}";
        let before = self.metric(name).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.metric(name).await < before + 2.0 {
            assert!(
                Instant::now() < deadline,
                "no two clean reaper passes in 60 s:\n{}",
                self.metrics().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Wait (bounded) until `path` exists: a task says it got there.
async fn appears(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `psql URL -tA -c SQL`, its output; the query must succeed.
fn psql(url: &str, sql: &str) -> String {
    psql_in(url, None, sql)
}

/// [`psql`] with the tables of `schema` first on the search path.
fn psql_in(url: &str, schema: Option<&str>, sql: &str) -> String {
    let mut c = Command::new("psql");
    if let Some(s) = schema {
        c.env("PGOPTIONS", format!("-csearch_path={s}"));
    }
    let out = c
        .args([url, "-v", "ON_ERROR_STOP=1", "-tA", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "{sql}: {}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The jetbridge pods and env Secrets left in `ns`.
fn cluster_leftovers(sim: &jetbridge_kube_sim::Simulator, ns: &str) -> (usize, usize) {
    (sim.pods(ns).len(), sim.secrets(ns).len())
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

// ---------------------------------------------------------------------------------
// 6. Postgres restart mid-build
// ---------------------------------------------------------------------------------

/// A Postgres cluster of this test's own, on a free port, so restarting it disturbs no
/// other test; stopped (immediately) when dropped.
struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    opts: String,
    log: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivatePostgres {
    /// initdb and start one as the `postgres` user. Panics, saying why, if it cannot.
    fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("the Postgres binaries under /usr/lib/postgresql (this test needs them)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("pg_ctl").exists())
            .max()
            .expect("a /usr/lib/postgresql/N/bin/pg_ctl");
        let dir = tempfile::Builder::new()
            .prefix("jb-private-pg-")
            .tempdir()
            .unwrap();
        let chown = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .output()
            .expect("chown runs");
        assert!(
            chown.status.success(),
            "this test runs as root to start Postgres as the postgres user: {}",
            text(&chown.stderr)
        );
        let data = dir.path().join("data");
        let init = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres"])
            .output()
            .expect("runuser runs");
        assert!(
            init.status.success(),
            "initdb failed: {}{}",
            text(&init.stdout),
            text(&init.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = PrivatePostgres {
            opts: format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1",
                dir.path().display()
            ),
            log: dir.path().join("log"),
            bin,
            data,
            port,
            _dir: dir,
        };
        pg.ctl(&["-w", "start"]);
        pg
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl ARGS` as the postgres user; it must succeed.
    fn ctl(&self, a: &[&str]) {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-o", &self.opts])
            .arg("-l")
            .arg(&self.log)
            .args(a)
            .output()
            .expect("runuser runs");
        assert!(
            out.status.success(),
            "pg_ctl {a:?} failed: {}{}\nlog:\n{}",
            text(&out.stdout),
            text(&out.stderr),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// A job whose second task says it is held (a marker file), then prints a numbered
/// tick every 50 ms until the test lets it go (another file; bounded at 60 s, after
/// which it fails), so that its output events are being written while Postgres
/// restarts. The third task reads both earlier artifacts.
fn held_pipeline(ready: &Path, go: &Path) -> String {
    format!(
        r#"jobs:
- name: j
  plan:
  - task: make
    config:
      platform: linux
      outputs: [{{name: a}}]
      run: {{path: sh, args: [-c, 'echo first > a/f']}}
  - task: hold
    config:
      platform: linux
      inputs: [{{name: a}}]
      outputs: [{{name: b}}]
      run:
        path: sh
        args:
        - -c
        - |
          touch {ready}
          i=0
          while [ ! -e {go} ] && [ $i -lt 1200 ]; do i=$((i+1)); echo "tick $i"; sleep 0.05; done
          [ -e {go} ] || exit 9
          echo "ticks $i"
          cp a/f b/g && echo second >> b/g
  - task: check
    config:
      platform: linux
      inputs: [{{name: a}}, {{name: b}}]
      run: {{path: sh, args: [-c, 'cat a/f b/g']}}
"#,
        ready = ready.display(),
        go = go.display()
    )
}

const ONE_TASK: &str = "jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      outputs: [{name: o}]\n      run: {path: sh, args: [-c, 'echo after > o/f; cat o/f']}\n";

/// The registry's and queue's Postgres restarts (`pg_ctl restart -m fast`: every
/// session terminated) while a step runs and writes output: the build goes on and
/// succeeds with its artifacts, its log loses no line, a build submitted after the
/// restart runs, and one reaper pass leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_build_loses_no_build_reference_or_log_line() {
    let pg = PrivatePostgres::start();
    let url = pg.url();
    let dir = tempfile::tempdir().unwrap();
    let ns = "jb-pg-restart";
    let (sim, kubeconfig) = start_sim(dir.path(), ns).await;
    let volumes = dir.path().join("volumes");
    let server_args = args(&[
        "--backend",
        "kube",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--volumes",
        volumes.to_str().unwrap(),
        // The queue lives in the registry's database: both are restarted.
        "--registry",
        &url,
        "--worker",
        "pg-restart",
        // Renewals every 2 s (the worker) and 2 s (the lease), so both meet the
        // restart; a pass of the reaper every 6 s.
        "--worker-ttl",
        "6s",
        "--lease-ttl",
        "6s",
    ]);
    let data = dir.path().join("data");
    let server =
        tokio::task::spawn_blocking(move || ServerProc::start_within(&data, &server_args, STARTUP))
            .await
            .unwrap();
    let api = Api::of(&server);

    let (ready, go) = (dir.path().join("ready"), dir.path().join("go"));
    let held = api.submit("held.yml", &held_pipeline(&ready, &go)).await;
    appears(&ready, "the held step's start").await;
    // Before the restart: the first step's artifact is registered, sealed and held by
    // the build.
    let before = psql(
        &url,
        "select name || ' ' || state || ' ' || ref_count from artifacts order by name",
    );
    assert_eq!(before, "a ready 1\nb creating 1", "{before}");
    let digest_a = psql(&url, "select digest from artifacts where name = 'a'");

    let t0 = Instant::now();
    pg.ctl(&["-m", "fast", "-w", "restart"]);
    let restarted = t0.elapsed();
    // The server's sessions were in use and were cut by the restart.
    let log = std::fs::read_to_string(&pg.log).unwrap();
    assert!(
        log.contains("terminating connection due to administrator command"),
        "{log}"
    );

    // The same references after it: nothing was lost with the sessions.
    let after = psql(
        &url,
        "select name || ' ' || state || ' ' || ref_count from artifacts order by name",
    );
    assert_eq!(after, before);
    // Recovery: the first heartbeat renewal sent after the restart began succeeds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let heartbeat = loop {
        let age = api.metric("jetbridge_heartbeat_age_seconds").await;
        let since = t0.elapsed().as_secs_f64();
        if age < since {
            break Duration::from_secs_f64(since - age);
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat succeeded within 60 s of the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A build submitted once Postgres is back runs to success.
    let next = api.submit("next.yml", ONE_TASK).await;
    let next_build = api.ended(next, Duration::from_secs(60)).await;
    let to_next_build = t0.elapsed();
    assert_eq!(next_build["state"], "succeeded", "{next_build}");
    eprintln!(
        "postgres restart: pg_ctl restart took {restarted:?}; first heartbeat after it began \
         succeeded {heartbeat:?} after; a build submitted after it succeeded {to_next_build:?} after"
    );

    std::fs::write(&go, "").unwrap();
    let b = api.ended(held, Duration::from_secs(90)).await;
    assert_eq!(b["state"], "succeeded", "{b}");
    let outcome = &b["outcome"];
    let steps: Vec<(&str, &str)> = outcome["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("task: make", "succeeded"),
            ("task: hold", "succeeded"),
            ("task: check", "succeeded")
        ],
        "{b}"
    );
    for a in outcome["artifacts"].as_array().unwrap() {
        assert!(a["digest"].as_str().unwrap().starts_with("sha256:"), "{b}");
    }
    // The artifact sealed before the restart is the one the build ended with.
    assert_eq!(
        outcome["steps"][0]["artifacts"][0]["digest"],
        digest_a.as_str(),
        "{b}"
    );
    // The artifacts made before and during the restart were read by the last step.
    let output = api.output(held).await;
    let of = |step: &str| -> String {
        output
            .iter()
            .filter(|(s, _)| s == step)
            .map(|(_, t)| t.as_str())
            .collect()
    };
    assert_eq!(of("task: check"), "first\nfirst\nsecond\n");
    // Every tick written while the database restarted reached the log, in order.
    let hold = of("task: hold");
    let ticks: Vec<&str> = hold.lines().collect();
    let n: usize = ticks
        .last()
        .and_then(|l| l.strip_prefix("ticks "))
        .expect("the hold step's last line")
        .parse()
        .unwrap();
    let want: Vec<String> = (1..=n)
        .map(|i| format!("tick {i}"))
        .chain([format!("ticks {n}")])
        .collect();
    assert_eq!(ticks, want, "the hold step's log lost or repeated lines");

    api.one_full_reaper_pass().await;
    assert_eq!(cluster_leftovers(&sim, ns), (0, 0));
    assert_eq!(entries(&volumes.join("volumes")), Vec::<String>::new());
    assert_eq!(entries(&volumes.join("trash")), Vec::<String>::new());
    assert_eq!(
        psql(
            &url,
            "select (select count(*) from artifacts) || ' ' || (select count(*) from artifact_refs)"
        ),
        "0 0"
    );
    drop(server);
    drop(sim);
    drop(pg);
}

// ---------------------------------------------------------------------------------
// 7. Bucket errors mid-upload
// ---------------------------------------------------------------------------------

/// 8 MiB and 1 KiB of random bytes (so they do not compress): a data object of two
/// parts, a full 8 MiB one and a small last one, which the faults hit. Small, so the
/// bucket's early 503 reaches the client whole rather than cutting off its body.
const BIG: usize = (8 << 20) + 1024;

/// A small artifact, then a big one whose upload the faults hit, then a check that
/// reads the big one back. The big step's `on_error` hook reads the small artifact and
/// waits (bounded) until the test has looked at the bucket.
fn upload_pipeline(ready: &Path, go: &Path) -> String {
    format!(
        r#"jobs:
- name: j
  plan:
  - task: small
    config:
      platform: linux
      outputs: [{{name: small}}]
      run: {{path: sh, args: [-c, 'echo small > small/f']}}
  - task: big
    config:
      platform: linux
      outputs: [{{name: big}}]
      run: {{path: sh, args: [-c, 'head -c {BIG} /dev/urandom > big/blob && cd big && sha256sum blob > sum']}}
    on_error:
      task: inspect
      config:
        platform: linux
        inputs: [{{name: small}}]
        run:
          path: sh
          args:
          - -c
          - |
            cat small/f
            touch {ready}
            i=0
            while [ ! -e {go} ] && [ $i -lt 1200 ]; do i=$((i+1)); sleep 0.05; done
  - task: check
    config:
      platform: linux
      inputs: [{{name: big}}, {{name: small}}]
      run: {{path: sh, args: [-c, 'cat small/f && cd big && sha256sum -c sum']}}
"#,
        ready = ready.display(),
        go = go.display()
    )
}

/// Requests to the second part of a data object's upload.
fn part2_puts(sim: &jetbridge_gcs_sim::Simulator) -> usize {
    sim.requests()
        .iter()
        .filter(|r| {
            r.method == "PUT"
                && r.query.contains("partNumber=2")
                && r.object.as_deref().is_some_and(|o| o.contains("/data-"))
        })
        .count()
}

/// A server on the Kubernetes simulator whose volume store is a bucket of the GCS
/// simulator, with its registry and queue in a scratch schema of the shared Postgres.
struct BucketRig {
    api: Api,
    server: Option<ServerProc>,
    gcs: jetbridge_gcs_sim::Simulator,
    kube: jetbridge_kube_sim::Simulator,
    ns: &'static str,
    url: String,
    schema: jetbridge_postgres::scratch::ScratchSchema,
    dir: tempfile::TempDir,
}

impl BucketRig {
    async fn start(ns: &'static str) -> BucketRig {
        Self::start_with(ns, None).await
    }

    /// With `reset` (method, text): the server reaches the bucket through
    /// [`resetting_proxy`], which resets the connection of the first such request.
    async fn start_with(
        ns: &'static str,
        reset: Option<(&'static str, &'static str)>,
    ) -> BucketRig {
        let url = database_url();
        let schema = jetbridge_postgres::scratch::ScratchSchema::new(&url, "jb_bucket").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (kube, kubeconfig) = start_sim(dir.path(), ns).await;
        let gcs = jetbridge_gcs_sim::Simulator::start(
            jetbridge_gcs_sim::SimConfig::default().with_bucket("jb-fail"),
        )
        .await
        .expect("gcs simulator");
        let endpoint = match reset {
            Some((method, text)) => resetting_proxy(gcs.port(), method, text),
            None => gcs.url(),
        };
        let server_args = args(&[
            "--backend",
            "kube",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--volumes",
            "gs://jb-fail/ci",
            "--volumes-endpoint",
            &endpoint,
            "--volumes-allow-http",
            "--volumes-anonymous",
            "--registry",
            &url,
            "--registry-schema",
            schema.name(),
            "--worker",
            ns,
            // A reaper pass every 6 s.
            "--worker-ttl",
            "6s",
        ]);
        let data = dir.path().join("data");
        let server = tokio::task::spawn_blocking(move || {
            ServerProc::start_within(&data, &server_args, STARTUP)
        })
        .await
        .unwrap();
        BucketRig {
            api: Api::of(&server),
            server: Some(server),
            gcs,
            kube,
            ns,
            url,
            schema,
            dir,
        }
    }

    /// A query on the registry's tables.
    fn registry(&self, sql: &str) -> String {
        psql_in(&self.url, Some(self.schema.name()), sql)
    }

    /// The names of the objects of `volume`, sorted.
    fn objects_of(&self, volume: &str) -> Vec<String> {
        let prefix = format!("ci/volumes/{volume}/");
        let mut names: Vec<String> = self
            .gcs
            .objects("jb-fail")
            .into_iter()
            .filter_map(|o| o.name.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        names.sort();
        names
    }

    /// The registry's volume of artifact `name` of build `id`.
    fn volume_of(&self, id: u64, name: &str) -> String {
        self.registry(&format!(
            "select volume from artifacts where build like 'upload/j/{id}.%' and name = '{name}'"
        ))
    }

    /// After one reaper pass: no pod, no Secret, no volume object, no unfinished
    /// upload, no artifact record or reference.
    async fn assert_nothing_left(&self) {
        self.api.one_full_reaper_pass().await;
        assert_eq!(cluster_leftovers(&self.kube, self.ns), (0, 0));
        let left: Vec<String> = self
            .gcs
            .objects("jb-fail")
            .into_iter()
            .map(|o| o.name)
            .filter(|n| n.starts_with("ci/volumes/"))
            .collect();
        assert_eq!(left, Vec::<String>::new());
        assert_eq!(self.gcs.in_progress_uploads(), []);
        assert_eq!(
            self.registry(
                "select (select count(*) from artifacts) || ' ' || (select count(*) from artifact_refs)"
            ),
            "0 0"
        );
    }

    async fn stop(mut self) {
        drop(self.server.take());
        self.gcs.clone().shutdown().await;
    }
}

/// The volume store is a bucket (the GCS simulator). (a) Two 5xx answers to the
/// second part of a step output's upload are retried and the build succeeds with the
/// artifact intact. (b) With every answer to it a 503, the step ends `errored` with a
/// transient error, nothing of the failed output is sealed or ready, the earlier
/// artifact stays readable, and one reaper pass leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_errors_mid_upload_are_retried_or_error_the_step_leaving_nothing_partial() {
    let rig = BucketRig::start("jb-bucket").await;
    let (gcs, api, dir) = (&rig.gcs, &rig.api, rig.dir.path());
    let registry = |sql: &str| rig.registry(sql);

    // (a) A 500, then a 503, on the second part: the client retries them.
    gcs.inject(Fault::on("PUT", "/data-", 1, FaultAction::Status(500)).with_query("partNumber=2"));
    gcs.inject(Fault::on("PUT", "/data-", 1, FaultAction::Status(503)).with_query("partNumber=2"));
    let (ready, go) = (dir.join("ready-a"), dir.join("go-a"));
    let first = api
        .submit("upload.yml", &upload_pipeline(&ready, &go))
        .await;
    let b = api.ended(first, Duration::from_secs(90)).await;
    let first_build = b.clone();
    assert_eq!(b["state"], "succeeded", "{b}");
    assert_eq!(part2_puts(gcs), 3, "two refused, then the part");
    assert!(!ready.exists(), "the on_error hook ran: {b}");
    let output = api.output(first).await;
    let check: String = output
        .iter()
        .filter(|(s, _)| s == "task: check")
        .map(|(_, t)| t.as_str())
        .collect();
    assert_eq!(check, "small\nblob: OK\n", "{b}");
    let big = b["outcome"]["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "big")
        .cloned()
        .unwrap_or_else(|| panic!("no big artifact: {b}"));
    assert_eq!(big["size"].as_u64(), Some(BIG as u64 + 71), "{b}");
    assert!(gcs.in_progress_uploads().is_empty());

    // (b) Every answer to the second part is a 503.
    gcs.inject(
        Fault::on("PUT", "/data-", usize::MAX, FaultAction::Status(503)).with_query("partNumber=2"),
    );
    let (ready, go) = (dir.join("ready-b"), dir.join("go-b"));
    let second = api
        .submit("upload.yml", &upload_pipeline(&ready, &go))
        .await;
    // The hook holds the build after the failure: look at what the failure left.
    appears(&ready, "the on_error hook's start").await;
    let rows = registry(&format!(
        "select name || ' ' || state from artifacts where build like 'upload/j/{second}.%' order by name"
    ));
    assert_eq!(rows, "big creating\nsmall ready", "{rows}");
    let big_volume = rig.volume_of(second, "big");
    // Nothing of the failed output is visible: no data object, no seal; and its
    // upload was aborted.
    assert_eq!(rig.objects_of(&big_volume), ["creating.json"]);
    assert_eq!(
        gcs.in_progress_uploads(),
        [],
        "{}",
        api.events(second).await
    );
    let small_volume = rig.volume_of(second, "small");
    assert!(
        rig.objects_of(&small_volume)
            .contains(&"manifest.json".to_owned()),
        "{:?}",
        rig.objects_of(&small_volume)
    );
    std::fs::write(&go, "").unwrap();
    let b = api.ended(second, Duration::from_secs(90)).await;
    gcs.clear_faults();
    assert_eq!(b["state"], "errored", "{b}");
    let outcome = &b["outcome"];
    let steps: Vec<(&str, &str)> = outcome["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                s["failure_class"].as_str().unwrap_or("ok"),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("task: small", "ok"),
            ("task: big", "errored"),
            ("task: inspect", "ok")
        ],
        "{b}"
    );
    // The client tried the part once and retried it 5 times, then gave up: the
    // message names the output, the object and the request, and keeps the bucket's
    // answer. The last part goes out as the upload is completed, hence its wording.
    let refused: Vec<_> = gcs
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "PUT"
                && r.query.contains("partNumber=2")
                && r.object
                    .as_deref()
                    .is_some_and(|o| o.starts_with(&format!("ci/volumes/{big_volume}/data-")))
        })
        .collect();
    assert_eq!(refused.len(), 6, "{refused:?}");
    let object = refused[0].object.clone().unwrap();
    let request = format!("{}{}?{}", gcs.url(), refused[0].path, refused[0].query);
    let result = format!(
        "errored: transient: storing output \"big\": uploading {object}: Generic GCS error: \
         Error performing PUT {request} in T, after 5 retries, max_retries: 5, retry_timeout: 60s  - \
         Server returned non-2xx status code: 503 Service Unavailable: <?xml version='1.0' encoding='UTF-8'?>\
         <Error><Code>ServiceUnavailable</Code><Message>Service unavailable. Please try again.</Message>\
         <Details>injected fault: 503</Details></Error>"
    );
    // How long the retries took varies from run to run: `T` stands for it.
    let timeless = |s: &str| -> String {
        let (head, tail) = s
            .split_once(&format!("{request} in "))
            .unwrap_or_else(|| panic!("no request in {s:?}"));
        let (_, tail) = tail.split_once(", after ").expect("the retries");
        format!("{head}{request} in T, after {tail}")
    };
    let reason = b["reason"].as_str().unwrap();
    assert_eq!(timeless(reason), format!("task: big: {result}"), "{b}");
    assert_eq!(
        timeless(outcome["steps"][1]["result"].as_str().unwrap()),
        result,
        "{b}"
    );
    assert_eq!(
        outcome["steps"][1]["artifacts"],
        serde_json::json!([]),
        "{b}"
    );
    // Counted as an infrastructure error, never as the task's own failure.
    let metrics = api.metrics().await;
    assert!(
        metrics.contains("jetbridge_step_failures_total{class=\"errored\"} 1\n"),
        "{metrics}"
    );
    assert!(!metrics.contains("class=\"failed\""), "{metrics}");
    let took = |b: &serde_json::Value| b["outcome"]["steps"][1]["duration_ms"].as_u64().unwrap();
    let gave_up_after = reason
        .split_once(&format!("{request} in "))
        .and_then(|(_, t)| t.split_once(", after "))
        .map(|(t, _)| t.to_owned())
        .unwrap();
    eprintln!(
        "bucket faults: the big step took {} ms with two 5xx retried, {} ms when the part \
         was refused for good (the client gave up after {gave_up_after})",
        took(&first_build),
        took(&b)
    );
    let hook: String = api
        .output(second)
        .await
        .iter()
        .filter(|(s, _)| s == "task: inspect")
        .map(|(_, t)| t.clone())
        .collect();
    assert_eq!(
        hook, "small\n",
        "the earlier artifact was readable after the failure"
    );

    rig.assert_nothing_left().await;
    rig.stop().await;
}

/// The abort of an output's failed upload is cut off before it is answered (the
/// connection dropped, nothing done): the client sends it again, the upload is
/// aborted, and the step names the part the bucket refused, not the abort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_abort_is_sent_again_and_the_step_names_the_refused_part() {
    let rig = BucketRig::start("jb-bucket-abort").await;
    let (gcs, api, dir) = (&rig.gcs, &rig.api, rig.dir.path());
    gcs.inject(
        Fault::on("PUT", "/data-", usize::MAX, FaultAction::Status(503)).with_query("partNumber=2"),
    );
    gcs.inject(
        Fault::on("DELETE", "/data-", 1, FaultAction::DropConnection).with_query("uploadId"),
    );
    let (ready, go) = (dir.join("ready"), dir.join("go"));
    let id = api
        .submit("upload.yml", &upload_pipeline(&ready, &go))
        .await;
    appears(&ready, "the on_error hook's start").await;
    let big_volume = rig.volume_of(id, "big");
    assert_eq!(rig.objects_of(&big_volume), ["creating.json"]);
    let left = gcs.in_progress_uploads();
    std::fs::write(&go, "").unwrap();
    let b = api.ended(id, Duration::from_secs(90)).await;
    gcs.clear_faults();
    assert_eq!(b["state"], "errored", "{b}");
    assert_eq!(left, [], "the failed upload was left in the bucket: {b}");
    let deletes = gcs
        .requests()
        .iter()
        .filter(|r| r.method == "DELETE" && r.query.starts_with("uploadId="))
        .count();
    assert_eq!(deletes, 2, "the dropped abort, then the abort");
    let reason = b["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("task: big: errored: transient: storing output \"big\": ")
            && reason.contains("?partNumber=2&uploadId=")
            && reason.contains("503 Service Unavailable")
            && !reason.contains("DELETE"),
        "{reason}"
    );
    rig.assert_nothing_left().await;
    rig.stop().await;
}

/// A step whose one output is 8 MiB plus `last_part` random bytes: a data object of
/// two parts.
fn one_big_output(last_part: usize) -> String {
    format!(
        "jobs:\n- name: j\n  plan:\n  - task: big\n    config:\n      platform: linux\n      outputs: [{{name: big}}]\n      run: {{path: sh, args: [-c, 'head -c {} /dev/urandom > big/blob']}}\n",
        (8 << 20) + last_part
    )
}

/// A TCP proxy to 127.0.0.1:`upstream` that resets the connection carrying the first
/// request starting with `method` and containing `text`: it closes that connection
/// with the request unread, so the kernel answers with a reset (as a server or load
/// balancer that dropped a pooled connection does). Everything else it forwards. Its
/// URL.
fn resetting_proxy(upstream: u16, method: &'static str, text: &'static str) -> String {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let done = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { break };
            let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let resetting = Arc::new(AtomicBool::new(false));
            let (mut c_read, mut up_write) = (client.try_clone().unwrap(), up.try_clone().unwrap());
            let (mut up_read, mut c_write) = (up, client);
            let r = resetting.clone();
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut up_read, &mut c_write);
                // Passing the upstream's close on would end the reset connection
                // cleanly instead.
                if !r.load(Ordering::SeqCst) {
                    let _ = c_write.shutdown(Shutdown::Write);
                }
            });
            let done = done.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    // Requests are not pipelined: a request's head starts a read.
                    let n = match c_read.peek(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let head = String::from_utf8_lossy(&buf[..n]);
                    if head.starts_with(method)
                        && head.lines().next().is_some_and(|l| l.contains(text))
                        && !done.swap(true, Ordering::SeqCst)
                    {
                        resetting.store(true, Ordering::SeqCst);
                        let _ = up_write.shutdown(Shutdown::Both);
                        // Dropped with the request unread: a reset.
                        return;
                    }
                    match c_read.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if up_write.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = up_write.shutdown(Shutdown::Write);
            });
        }
    });
    url
}

/// The abort of an output's failed upload (persistent 503s on its last, small part)
/// meets a reset connection, deterministically: the one `DELETE ?uploadId=` is reset
/// by a proxy. The upload must still be aborted (storage.md: any failure aborts the
/// upload; connection errors are retried) and the step must name the refused part.
/// Before the fix, the abort was not retried (object_store's `WriteMultipart` consumes
/// itself in its abort, and a GCS DELETE is not marked safe to repeat): the upload
/// stayed in the bucket with its 8 MiB part and the step named the failed DELETE. The
/// same happened with no proxy in about 1 build of 15, when the simulator answered a
/// big last part's 503 before reading its body and left a reset connection in the
/// client's pool. `multipart.rs` now sends the abort again and keeps the part's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_abort_still_aborts_the_upload_and_the_step_names_the_refused_part() {
    let rig = BucketRig::start_with("jb-bucket-reset", Some(("DELETE ", "uploadId="))).await;
    let (gcs, api) = (&rig.gcs, &rig.api);
    gcs.inject(
        Fault::on("PUT", "/data-", usize::MAX, FaultAction::Status(503)).with_query("partNumber=2"),
    );
    let id = api.submit("reset.yml", &one_big_output(1024)).await;
    let b = api.ended(id, Duration::from_secs(90)).await;
    gcs.clear_faults();
    assert_eq!(b["state"], "errored", "{b}");
    let reason = b["reason"].as_str().unwrap();
    assert_eq!(
        gcs.in_progress_uploads(),
        [],
        "the failed upload was left in the bucket: {reason}"
    );
    assert!(
        reason.starts_with("task: big: errored: transient: storing output \"big\": ")
            && reason.contains("?partNumber=2&uploadId=")
            && reason.contains("503 Service Unavailable")
            && !reason.contains("DELETE"),
        "the step names the abort, not the refused part: {reason}"
    );
    rig.assert_nothing_left().await;
    rig.stop().await;
}
