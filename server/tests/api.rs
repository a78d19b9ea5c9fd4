//! The server end to end on the local backend, an on-disk store and the in-memory
//! registry and queue: real HTTP over loopback, real processes for steps.

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use jetbridge_core::images::ImageResolver;
use jetbridge_core::ports::{BuildId, BuildQueue, InFlightLimit};
use jetbridge_core::services::{BuildRunner, NoEvents, SessionConfig, StepConfig, WorkerSession};
use jetbridge_memory_registry::MemoryBuildQueue;
use jetbridge_server::api::{BuildList, BuildView, ErrorBody, InfoView};
use jetbridge_server::{Server, ServerConfig};
use serde_json::{Value, json};

struct Harness {
    base: String,
    client: reqwest::Client,
    server: Server,
    queue: Arc<MemoryBuildQueue>,
    _dir: tempfile::TempDir,
}

async fn harness(config: ServerConfig) -> Harness {
    harness_with(config, Arc::new(MemoryBuildQueue::new())).await
}

async fn harness_with(config: ServerConfig, queue: Arc<MemoryBuildQueue>) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = common::local_runtime(dir.path(), |store| store);
    let worker = "server-test";
    let runner = BuildRunner::new(
        rt.clone(),
        StepConfig::default(),
        ImageResolver::new(),
        worker,
        Arc::new(NoEvents),
    );
    let session =
        WorkerSession::start(rt, runner, SessionConfig::new(worker).with_reap_every(None))
            .await
            .expect("session");
    let server =
        Server::start(queue.clone(), session, ImageResolver::new(), true, config).expect("server");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let router = server.router();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Harness {
        base,
        client: reqwest::Client::new(),
        server,
        queue,
        _dir: dir,
    }
}

fn task(script: &str) -> String {
    format!(
        "jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      run: {{path: sh, args: [-c, {}]}}\n",
        serde_json::to_string(script).expect("json")
    )
}

impl Harness {
    async fn submit(&self, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}/api/v1/builds", self.base))
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    async fn submitted(&self, body: Value) -> BuildView {
        let res = self.submit(body).await;
        assert_eq!(res.status(), 201, "{:?}", res.text().await);
        res.json().await.expect("a build")
    }

    async fn get(&self, id: u64) -> BuildView {
        self.client
            .get(format!("{}/api/v1/builds/{id}", self.base))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("a build")
    }

    /// The whole event stream (it ends with the build), as (id, event, data).
    async fn events(&self, id: u64, last: Option<u64>) -> Vec<(Option<u64>, String, String)> {
        let mut req = self
            .client
            .get(format!("{}/api/v1/builds/{id}/events", self.base));
        if let Some(l) = last {
            req = req.header("Last-Event-ID", l.to_string());
        }
        let res = req.send().await.expect("request");
        assert_eq!(res.status(), 200);
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let text = tokio::time::timeout(Duration::from_secs(60), res.text())
            .await
            .expect("the stream ends with the build")
            .expect("body");
        jetbridge_server::sse::parse_all(&text)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_runs_and_its_events_end_with_its_final_state() {
    let h = harness(ServerConfig::default()).await;
    let b = h
        .submitted(json!({"pipeline": task("echo one; echo two >&2; echo three"), "file": "p.yml"}))
        .await;
    assert_eq!(b.job, "j");
    let events = h.events(b.id, None).await;
    let kinds: Vec<&str> = events.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"step-started"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"end"), "{kinds:?}");
    assert!(kinds.contains(&"step-finished"), "{kinds:?}");
    let stdout: String = events
        .iter()
        .filter(|(_, k, _)| k == "output")
        .map(|(_, _, d)| serde_json::from_str::<Value>(d).unwrap())
        .filter(|v| v["stream"] == "stdout")
        .map(|v| v["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stdout, "one\nthree\n");
    // Stored events have increasing ids; the end has none (a resume never skips it).
    let ids: Vec<u64> = events.iter().filter_map(|(id, _, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(events.last().unwrap().0, None);
    let end: Value = serde_json::from_str(&events.last().unwrap().2).unwrap();
    assert_eq!(end["build"]["state"], "succeeded");

    let done = h.get(b.id).await;
    assert_eq!(done.state, "succeeded");
    let outcome = done.outcome.expect("an outcome");
    assert_eq!(outcome.steps.len(), 1);
    assert!(outcome.steps[0].ok);

    // Resuming after the second event replays exactly the rest.
    let resumed = h.events(b.id, Some(ids[1])).await;
    assert_eq!(resumed.len(), events.len() - 2);
    assert_eq!(resumed[0], events[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_fails_the_build_with_its_reason() {
    let h = harness(ServerConfig::default()).await;
    let b = h.submitted(json!({"pipeline": task("exit 3")})).await;
    let events = h.events(b.id, None).await;
    let end: Value = serde_json::from_str(&events.last().unwrap().2).unwrap();
    assert_eq!(end["build"]["state"], "failed");
    let reason = end["build"]["reason"].as_str().unwrap();
    assert!(reason.contains("task: t"), "{reason}");
    assert!(reason.contains('3'), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx() {
    let h = harness(ServerConfig {
        max_body_bytes: 4096,
        ..ServerConfig::default()
    })
    .await;
    let url = format!("{}/api/v1/builds", h.base);
    let res = h
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: ErrorBody = res.json().await.unwrap();
    assert_eq!(body.error, "invalid");

    let res = h.submit(json!({"pipeline": "x".repeat(8192)})).await;
    assert_eq!(res.status(), 413);

    let res = h
        .submit(json!({"pipeline": "jobs:\n- name: a\n  plan:\n  - bogus: 1\n", "file": "ci.yml"}))
        .await;
    assert_eq!(res.status(), 422);
    let body: ErrorBody = res.json().await.unwrap();
    let loc = body.location.expect("a location");
    assert_eq!((loc.file.as_str(), loc.line), ("ci.yml", 4));
    assert!(body.message.starts_with("ci.yml:4:"), "{}", body.message);

    let res = h
        .submit(json!({"pipeline": task("true"), "job": "nope"}))
        .await;
    assert_eq!(res.status(), 422);

    // A hermetic task on a server whose backend runs host processes: refused with the
    // task's place, never run with the network.
    let hermetic = "jobs:\n- name: j\n  plan:\n  - task: offline\n    hermetic: true\n    config:\n      platform: linux\n      run: {path: 'true'}\n";
    let res = h
        .submit(json!({"pipeline": hermetic, "file": "ci.yml"}))
        .await;
    assert_eq!(res.status(), 422);
    let body: ErrorBody = res.json().await.unwrap();
    let loc = body.location.expect("a location");
    assert_eq!((loc.file.as_str(), loc.line, loc.column), ("ci.yml", 4, 5));
    for needle in ["\"offline\"", "hermetic: true", "--backend kube"] {
        assert!(body.message.contains(needle), "{needle}: {}", body.message);
    }

    // A resource image on a server whose backend runs host processes: refused with the
    // resource's place, not queued to fail as `exit 127`.
    let git = "resources:\n- name: repo\n  type: git\n  source: {uri: x}\njobs:\n- name: j\n  plan:\n  - get: repo\n";
    let res = h.submit(json!({"pipeline": git, "file": "ci.yml"})).await;
    assert_eq!(res.status(), 422);
    let body: ErrorBody = res.json().await.unwrap();
    let loc = body.location.expect("a location");
    assert_eq!((loc.file.as_str(), loc.line, loc.column), ("ci.yml", 2, 3));
    for needle in [
        "resource \"repo\"",
        "\"git\"",
        "concourse/git-resource",
        "--backend kube",
    ] {
        assert!(body.message.contains(needle), "{needle}: {}", body.message);
    }
    let res = h
        .submit(json!({"pipeline": task("true"), "file": "a\u{0}b.yml"}))
        .await;
    assert_eq!(res.status(), 422);

    let res = h.client.delete(&url).send().await.unwrap();
    assert_eq!(res.status(), 405);
    let body: ErrorBody = res.json().await.unwrap();
    assert_eq!(body.error, "method-not-allowed");

    for path in ["/api/v1/builds/999", "/api/v1/builds/abc", "/nowhere"] {
        let res = h
            .client
            .get(format!("{}{path}", h.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{path}");
        let _: ErrorBody = res.json().await.unwrap();
    }
    let res = h
        .client
        .get(format!("{}/api/v1/builds?state=done", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborting_a_running_build_runs_its_hooks_and_a_finished_one_is_a_conflict() {
    let h = harness(ServerConfig::default()).await;
    let pipeline = "jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      run: {path: sh, args: [-c, 'echo started; sleep 600']}\n    on_abort:\n      task: cleanup\n      config:\n        platform: linux\n        run: {path: sh, args: [-c, 'echo cleaning up']}\n";
    let b = h.submitted(json!({"pipeline": pipeline})).await;
    // Wait for the step's first output: the build is running its command.
    let url = format!("{}/api/v1/builds/{}/events", h.base, b.id);
    let mut res = h.client.get(&url).send().await.unwrap();
    let mut seen = String::new();
    while !seen.contains("started") {
        let chunk = tokio::time::timeout(Duration::from_secs(60), res.chunk())
            .await
            .expect("output in time")
            .unwrap()
            .expect("more of the stream");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(res);
    let res = h
        .client
        .post(format!("{}/api/v1/builds/{}/abort", h.base, b.id))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let events = h.events(b.id, None).await;
    let end: Value = serde_json::from_str(&events.last().unwrap().2).unwrap();
    assert_eq!(end["build"]["state"], "aborted");
    assert_eq!(end["build"]["reason"], "aborted by request");
    assert!(
        events
            .iter()
            .any(|(_, k, d)| k == "output" && d.contains("cleaning up")),
        "the on_abort hook ran: {events:?}"
    );
    let res = h
        .client
        .post(format!("{}/api/v1/builds/{}/abort", h.base, b.id))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_with_429_and_positions_show() {
    // No room to run anything: every build stays queued.
    let h = harness(ServerConfig {
        max_builds: 1,
        max_queued: Some(2),
        ..ServerConfig::default()
    })
    .await;
    let blocker = h.submitted(json!({"pipeline": task("sleep 600")})).await;
    // The first is claimed (running) before the next are counted as queued.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while h.get(blocker.id).await.state != "running" {
        assert!(
            std::time::Instant::now() < deadline,
            "the first build never started"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = h.submitted(json!({"pipeline": task("true")})).await;
    let b = h.submitted(json!({"pipeline": task("true")})).await;
    assert_eq!(h.get(a.id).await.position, Some(0));
    assert_eq!(h.get(b.id).await.position, Some(1));
    let res = h.submit(json!({"pipeline": task("true")})).await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let body: ErrorBody = res.json().await.unwrap();
    assert_eq!(body.error, "busy");

    // A queued build aborts at once.
    let res = h
        .client
        .post(format!("{}/api/v1/builds/{}/abort", h.base, b.id))
        .send()
        .await
        .unwrap();
    let aborted: BuildView = res.json().await.unwrap();
    assert_eq!(aborted.state, "aborted");

    // Listing filters by state, newest first.
    let list: BuildList = h
        .client
        .get(format!("{}/api/v1/builds?state=queued,running", h.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<u64> = list.builds.iter().map(|b| b.id).collect();
    assert_eq!(ids, [a.id, blocker.id]);
    h.client
        .post(format!("{}/api/v1/builds/{}/abort", h.base, blocker.id))
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_the_api_but_not_health() {
    let h = harness(ServerConfig {
        tokens: vec!["s3cret-one".into(), "s3cret-two".into()],
        ..ServerConfig::default()
    })
    .await;
    let info = format!("{}/api/v1/info", h.base);
    let res = h.client.get(&info).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    let res = h
        .client
        .get(&info)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = h
        .client
        .get(&info)
        .bearer_auth("s3cret-two")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let info: InfoView = res.json().await.unwrap();
    assert_eq!(info.worker, "server-test");
    for open in ["/healthz", "/readyz"] {
        let res = h
            .client
            .get(format!("{}{open}", h.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{open}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_inputs_and_local_resource_types_resolve_inside_the_upload() {
    let h = harness(ServerConfig {
        allow_local_resources: true,
        ..ServerConfig::default()
    })
    .await;
    let tar_of = |files: &[(&str, &str, u32)]| {
        let mut b = tar::Builder::new(Vec::new());
        for (path, text, mode) in files {
            let mut hdr = tar::Header::new_gnu();
            hdr.set_size(text.len() as u64);
            hdr.set_mode(*mode);
            hdr.set_cksum();
            b.append_data(&mut hdr, path, text.as_bytes()).unwrap();
        }
        base64::engine::general_purpose::STANDARD.encode(b.into_inner().unwrap())
    };
    let bundle = tar_of(&[
        (
            "types/echo/check",
            "#!/bin/sh\necho '[{\"v\":\"1\"}]'\n",
            0o755,
        ),
        (
            "types/echo/in",
            "#!/bin/sh\nmkdir -p \"$1\"; echo from-local-type > \"$1/text\"; echo '{\"version\":{\"v\":\"1\"}}'\n",
            0o755,
        ),
        (
            "types/echo/out",
            "#!/bin/sh\necho '{\"version\":{\"v\":\"1\"}}'\n",
            0o755,
        ),
    ]);
    let input = tar_of(&[("hello.txt", "from-input\n", 0o644)]);
    let pipeline = "resource_types:\n- name: echo\n  type: local\n  source: {path: types/echo}\nresources:\n- name: r\n  type: echo\n  source: {}\njobs:\n- name: j\n  plan:\n  - get: r\n  - task: t\n    config:\n      platform: linux\n      inputs: [{name: r}, {name: src}]\n      run: {path: sh, args: [-c, 'cat r/text src/hello.txt']}\n";
    let b = h
        .submitted(json!({"pipeline": pipeline, "bundle": bundle, "inputs": {"src": input}}))
        .await;
    let events = h.events(b.id, None).await;
    let end: Value = serde_json::from_str(&events.last().unwrap().2).unwrap();
    assert_eq!(end["build"]["state"], "succeeded", "{events:?}");
    let out: String = events
        .iter()
        .filter(|(_, k, _)| k == "output")
        .map(|(_, _, d)| {
            serde_json::from_str::<Value>(d).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(out.contains("from-local-type\nfrom-input\n"), "{out}");

    // A path out of the upload is refused before anything runs.
    let escaping = pipeline.replace("path: types/echo", "path: ../../etc");
    let res = h
        .submit(json!({"pipeline": escaping, "bundle": bundle}))
        .await;
    assert_eq!(res.status(), 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_stops_claiming_and_aborts_what_outlives_its_timeout() {
    let queue = Arc::new(MemoryBuildQueue::new());
    let h = harness_with(
        ServerConfig {
            drain_timeout: Duration::from_millis(300),
            abort_grace: Duration::from_secs(5),
            max_builds: 1,
            ..ServerConfig::default()
        },
        queue.clone(),
    )
    .await;
    let long = h.submitted(json!({"pipeline": task("sleep 600")})).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while h.get(long.id).await.state != "running" {
        assert!(std::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waiting = h.submitted(json!({"pipeline": task("true")})).await;
    let server = h.server.clone();
    let readyz = format!("{}/readyz", h.base);
    let drain = tokio::spawn(server.drain());
    // Readiness turns 503 while the drain runs.
    let mut status = 200;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status == 200 && std::time::Instant::now() < deadline {
        status = h
            .client
            .get(&readyz)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
    }
    assert_eq!(status, 503);
    tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .expect("the drain ends within its timeout and the grace")
        .unwrap()
        .expect("a clean drain");
    let ended = h
        .queue
        .get(jetbridge_core::ports::BuildId(long.id))
        .await
        .unwrap();
    assert_eq!(ended.state.as_str(), "aborted");
    assert_eq!(ended.reason.as_deref(), Some("server shutting down"));
    // The queued one was never claimed: another replica takes it.
    let left = queue
        .get(jetbridge_core::ports::BuildId(waiting.id))
        .await
        .unwrap();
    assert_eq!(left.state.as_str(), "queued");
    assert_eq!(h.server.running(), 0);
}

/// Polls the build until it is in `state` (bounded: a build that never gets there fails
/// the test).
async fn wait_for_state(h: &Harness, id: u64, state: &str) -> BuildView {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let b = h.get(id).await;
        if b.state == state {
            return b;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "build {id} never became {state}: {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_job_runs_one_build_at_a_time_and_other_jobs_run_past_it() {
    let h = harness(ServerConfig::default()).await;
    let gate = tempfile::tempdir().expect("tempdir");
    let release = gate.path().join("release");
    // The first step runs until the test releases it: no timing decides the outcome.
    let wait = format!(
        "echo started; while [ ! -e {} ]; do sleep 0.05; done",
        release.display()
    );
    let pipeline = format!(
        "jobs:\n\
         - name: slow\n  serial: true\n  plan:\n  - task: t\n    config:\n      platform: linux\n      run: {{path: sh, args: [-c, {}]}}\n\
         - name: quick\n  plan:\n  - task: t\n    config:\n      platform: linux\n      run: {{path: 'true'}}\n\
         - name: grouped\n  serial_groups: [deploys, deploys]\n  plan:\n  - task: t\n    config:\n      platform: linux\n      run: {{path: 'true'}}\n",
        serde_json::to_string(&wait).expect("json")
    );
    let submit = |job: &str| json!({"pipeline": pipeline, "file": "serial.yml", "job": job});
    let first = h.submitted(submit("slow")).await;
    wait_for_state(&h, first.id, "running").await;
    let second = h.submitted(submit("slow")).await;
    // Submitted after the second, so a claim loop that claims it has passed over the
    // second: a build of another job is not held.
    let quick = h.submitted(submit("quick")).await;
    wait_for_state(&h, quick.id, "succeeded").await;
    let held = h.get(second.id).await;
    assert_eq!(held.state, "queued", "{held:?}");
    assert_eq!(held.position, Some(0));
    assert_eq!(h.get(first.id).await.state, "running");
    // The queue holds it by the job's limit, keyed by the pipeline's name.
    let stored = h.queue.get(BuildId(second.id)).await.expect("stored");
    assert_eq!(
        stored.limits,
        [InFlightLimit::job(&first.pipeline, "slow", 1)]
    );

    std::fs::write(&release, "").expect("release the first build");
    let done = wait_for_state(&h, first.id, "succeeded").await;
    let after = wait_for_state(&h, second.id, "succeeded").await;
    let (ended, started) = (
        done.finished_at_ms.expect("an end"),
        after.started_at_ms.expect("a start"),
    );
    assert!(
        started >= ended,
        "the second started at {started}, before the first ended at {ended}"
    );

    // A job's serial groups become limits of one, a group named twice once.
    let grouped = h.submitted(submit("grouped")).await;
    wait_for_state(&h, grouped.id, "succeeded").await;
    let stored = h.queue.get(BuildId(grouped.id)).await.expect("stored");
    assert_eq!(
        stored.limits,
        [InFlightLimit::serial_group(&first.pipeline, "deploys")]
    );
}

/// A job whose task writes a pipeline file with `jobs` of `job_name`, then sets it.
fn setter(job_name: &str) -> String {
    let script = format!(
        "printf '%s\\n' 'jobs:' '- name: {job_name}' '  plan:' '  - task: t' '    config: {{platform: linux, run: {{path: \"true\"}}}}' > ci/p.yml"
    );
    format!(
        "jobs:\n- name: j\n  plan:\n  - task: make\n    config:\n      platform: linux\n      outputs: [{{name: ci}}]\n      run: {{path: sh, args: [-c, {}]}}\n  - set_pipeline: svc\n    file: ci/p.yml\n    vars: {{token: ((token))}}\n    instance_vars: {{branch: main}}\n",
        serde_json::to_string(&script).expect("json")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_pipeline_records_the_pipeline_and_the_api_lists_it_without_its_vars() {
    let h = harness(ServerConfig::default()).await;
    let run = async |job_name: &str| {
        let b = h
            .submitted(json!({"pipeline": setter(job_name), "vars": {"token": "s3cr3t-token"}}))
            .await;
        h.events(b.id, None).await;
        let done = h.get(b.id).await;
        assert_eq!(done.state, "succeeded", "{:?}", done.reason);
        b.id
    };
    let list = async |query: &str| -> Value {
        let res = h
            .client
            .get(format!("{}/api/v1/pipelines{query}", h.base))
            .send()
            .await
            .expect("request");
        assert_eq!(res.status(), 200);
        res.json().await.expect("json")
    };
    let first = run("build").await;
    let body = list("").await;
    let ps = body["pipelines"].as_array().expect("pipelines");
    assert_eq!(ps.len(), 1, "{body}");
    let p = &ps[0];
    assert_eq!(p["team"], "main");
    assert_eq!(p["name"], "svc");
    assert_eq!(p["instance_vars"], json!({"branch": "main"}));
    assert_eq!(p["version"], 1);
    assert_eq!(p["set_by_build"], first);
    assert_eq!(p["file"], "ci/p.yml");
    assert!(
        p["config"].as_str().unwrap().contains("- name: build"),
        "{p}"
    );
    assert_eq!(p["var_names"], json!(["token"]));
    assert!(
        !body.to_string().contains("s3cr3t-token"),
        "a var's value reached the API: {body}"
    );
    // The same pipeline again changes nothing; a new file is a new version.
    run("build").await;
    assert_eq!(list("").await["pipelines"][0]["version"], 1);
    let third = run("deploy").await;
    let p = list("?team=main&name=svc").await["pipelines"][0].clone();
    assert_eq!(
        (p["version"].clone(), p["set_by_build"].clone()),
        (json!(2), json!(third))
    );
    assert_eq!(list("?name=other").await["pipelines"], json!([]));
    // The step's line in the build's events says what happened.
    let events = h.events(third, None).await;
    assert!(
        events
            .iter()
            .any(|(_, kind, data)| kind == "notice"
                && data.contains("pipeline main/svc set: version 2")),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_groups_and_max_in_flight_hold_builds_until_a_slot_frees() {
    let h = harness(ServerConfig::default()).await;
    let gate = tempfile::tempdir().expect("tempdir");
    let release = gate.path().join("release");
    // Every step runs until the test releases it: no timing decides the outcome.
    let wait = serde_json::to_string(&format!(
        "while [ ! -e {} ]; do sleep 0.05; done",
        release.display()
    ))
    .expect("json");
    let job = |name: &str, extra: &str| {
        format!(
            "- name: {name}\n{extra}  plan:\n  - task: t\n    config:\n      platform: linux\n      run: {{path: sh, args: [-c, {wait}]}}\n"
        )
    };
    let pipeline = format!(
        "jobs:\n{}{}{}",
        job("deploy-a", "  serial_groups: [deploys]\n"),
        job("deploy-b", "  serial_groups: [deploys]\n"),
        job("tests", "  max_in_flight: 2\n"),
    );
    let submit = |job: &str| json!({"pipeline": pipeline, "file": "limits.yml", "job": job});
    // A build of one job of a group holds a build of another job of that group.
    let a = h.submitted(submit("deploy-a")).await;
    wait_for_state(&h, a.id, "running").await;
    let b = h.submitted(submit("deploy-b")).await;
    // Two of `tests` run at once, the third waits; all were submitted after `b`, so
    // the claim loop has passed over `b` by the time the second of them runs.
    let t: Vec<BuildView> = [
        h.submitted(submit("tests")).await,
        h.submitted(submit("tests")).await,
        h.submitted(submit("tests")).await,
    ]
    .into();
    wait_for_state(&h, t[0].id, "running").await;
    wait_for_state(&h, t[1].id, "running").await;
    assert_eq!(
        h.get(b.id).await.state,
        "queued",
        "the group holds deploy-b"
    );
    assert_eq!(
        h.get(t[2].id).await.state,
        "queued",
        "max_in_flight: 2 holds the third"
    );
    std::fs::write(&release, "").expect("release");
    for id in [a.id, b.id, t[0].id, t[1].id, t[2].id] {
        wait_for_state(&h, id, "succeeded").await;
    }
    let (a_end, b_start) = (
        h.get(a.id).await.finished_at_ms.expect("an end"),
        h.get(b.id).await.started_at_ms.expect("a start"),
    );
    assert!(
        b_start >= a_end,
        "deploy-b started at {b_start}, before deploy-a ended at {a_end}"
    );
}
