//! The client commands: `submit`, `builds`, `logs`, `abort`, over the server's API.
//! `submit --watch` replays the build's events into the same [`Printer`] that `run`
//! prints with, so both show the same lines and summary.
//!
//! [`Client`], [`Submission`] and [`follow`] are also what `jetbridge load` submits and
//! follows its builds with: the load harness has no private path to the server.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use futures::StreamExt;
use jetbridge_core::plan::Vars;
use jetbridge_core::ports::{OutputSink, OutputStream};
use jetbridge_core::services::BuildEvents;
use jetbridge_server::api::{
    BuildList, BuildView, EndEvent, ErrorBody, Notice, OutcomeView, OutputChunk, StepStarted,
    StepView, kinds,
};

use crate::cli::{AbortArgs, BuildsArgs, ClientArgs, LogsArgs, PipelineArgs, SubmitArgs};
use crate::output::Printer;
use crate::user;
use jetbridge_server::sse::{find_blank_line, parse_block, push_normalized};

/// The server, with the token if one is given.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// The server's queue is full (429): back-pressure, to retry after `retry_after`
/// seconds.
#[derive(Debug)]
pub(crate) struct QueueFull {
    /// The server's `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
}

impl std::fmt::Display for QueueFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.retry_after {
            Some(s) => write!(f, "the server's queue is full; try again in {s} s"),
            None => f.write_str("the server's queue is full; try again in a few s"),
        }
    }
}

impl std::error::Error for QueueFull {}

impl Client {
    fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        Self::connect(&args.server, args.token_file.as_deref())
    }

    /// A client of the server at `server`, with the token of `token_file` if given.
    pub(crate) fn connect(server: &str, token_file: Option<&Path>) -> anyhow::Result<Self> {
        let token = match token_file {
            Some(path) => Some(read_token(path)?),
            None => None,
        };
        let base = server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(user(format!(
                "--server {base:?}: give the server's URL, e.g. http://127.0.0.1:8080"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("setting up the HTTP client")?;
        Ok(Client { base, http, token })
    }

    /// The server's URL.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// Queue a build; the build as queued.
    pub(crate) async fn submit(&self, body: &serde_json::Value) -> anyhow::Result<BuildView> {
        let res = self
            .send(
                self.request(reqwest::Method::POST, "/api/v1/builds")
                    .json(body),
            )
            .await?;
        res.json().await.context("reading the server's answer")
    }

    /// Ask the server to abort a build.
    pub(crate) async fn abort(&self, id: u64) -> anyhow::Result<BuildView> {
        let req = self
            .request(reqwest::Method::POST, &format!("/api/v1/builds/{id}/abort"))
            .timeout(Duration::from_secs(10));
        let res = self.send(req).await?;
        res.json().await.context("reading the server's answer")
    }

    /// One page of builds, newest first, in `states` (comma-separated; empty: all).
    pub(crate) async fn list(&self, states: &str, limit: usize) -> anyhow::Result<BuildList> {
        let mut req = self
            .request(reqwest::Method::GET, "/api/v1/builds")
            .query(&[("limit", limit.to_string())])
            .timeout(Duration::from_secs(30));
        if !states.is_empty() {
            req = req.query(&[("state", states)]);
        }
        self.send(req)
            .await?
            .json()
            .await
            .context("reading the server's answer")
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Send; a refusal becomes an error naming what to do (exit 2 for the caller's
    /// mistakes, 1 for the server's state).
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let res = req.send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the server at {}: {e} (is `jetbridge server` running? --server / JETBRIDGE_SERVER)",
                self.base
            )
        })?;
        if res.status().is_success() {
            return Ok(res);
        }
        let status = res.status();
        let retry = res
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = res.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.message)
            .unwrap_or(text);
        Err(match status.as_u16() {
            401 => user(format!(
                "the server refused the token: {message}\n  give --token-file FILE (or JETBRIDGE_TOKEN_FILE) with one of the server's --api-token-file tokens"
            )),
            429 => anyhow::Error::new(QueueFull {
                retry_after: retry.as_deref().and_then(|r| r.trim().parse().ok()),
            }),
            400..=499 => user(message),
            _ => anyhow::anyhow!("the server failed ({status}): {message}"),
        })
    }
}

/// The first line of a token file that is not blank or a comment.
fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        user(format!(
            "cannot read the token file {}: {e}",
            path.display()
        ))
    })?;
    crate::token_lines(&text)
        .next()
        .map(str::to_owned)
        .ok_or_else(|| user(format!("the token file {} holds no token", path.display())))
}

/// A plain tar of `dir`'s contents under `prefix` (`.` for the root), symlinks kept as
/// links, never followed.
fn tar_dir(dir: &Path, prefix: &str) -> anyhow::Result<Vec<u8>> {
    if !dir.is_dir() {
        return Err(user(format!("{} is not a directory", dir.display())));
    }
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Deterministic);
    b.append_dir_all(prefix, dir)
        .with_context(|| format!("packing {}", dir.display()))?;
    b.into_inner().context("packing")
}

/// The body of a submission of `args`' pipeline (checked here first, as `run` checks
/// it), with its `type: local` directories bundled and `inputs` (`NAME=DIR`) packed.
pub(crate) fn submission(
    args: &PipelineArgs,
    job: Option<&str>,
    inputs: &[String],
) -> anyhow::Result<serde_json::Value> {
    // Parsed here too: a mistake is reported as `run` reports it, before any upload,
    // and the `type: local` directories to upload are known.
    let (pipeline, _) = crate::load_pipeline(args)?;
    let path = &args.pipeline;
    let text = std::fs::read_to_string(path)
        .map_err(|e| user(format!("cannot read the pipeline {}: {e}", path.display())))?;
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let b64 = base64::engine::general_purpose::STANDARD;

    let mut bundle: Option<tar::Builder<Vec<u8>>> = None;
    for rt in pipeline
        .resource_types
        .iter()
        .filter(|t| t.type_ == "local")
    {
        let rel = rt.source.get("path").and_then(|v| v.as_str()).unwrap_or("");
        if !jetbridge_server::spec::is_inner_path(rel) {
            return Err(user(format!(
                "{}: resource type {:?} has `source.path: {rel:?}`; to submit it, make it a relative path under the pipeline's directory, with no `..`",
                rt.location, rt.name
            )));
        }
        let dir = base_dir.join(rel);
        if !dir.is_dir() {
            return Err(user(format!(
                "{}: resource type {:?}: {} is not a directory",
                rt.location,
                rt.name,
                dir.display()
            )));
        }
        let b = bundle.get_or_insert_with(|| {
            let mut b = tar::Builder::new(Vec::new());
            b.follow_symlinks(false);
            b
        });
        b.append_dir_all(rel, &dir)
            .with_context(|| format!("packing {}", dir.display()))?;
    }
    let bundle = match bundle {
        Some(b) => Some(b64.encode(b.into_inner().context("packing")?)),
        None => None,
    };
    let mut packed = BTreeMap::new();
    for spec in inputs {
        let Some((name, dir)) = spec.split_once('=') else {
            return Err(user(format!("--input {spec:?}: give NAME=DIR")));
        };
        let tar = tar_dir(Path::new(dir), ".").map_err(|e| user(format!("--input {name}: {e}")))?;
        packed.insert(name.to_owned(), b64.encode(tar));
    }
    let mut vars = serde_json::Map::new();
    for a in &args.vars {
        let (k, v) = Vars::parse_assignment(a).map_err(|e| user(format!("--var: {e}")))?;
        vars.insert(k, v);
    }
    Ok(serde_json::json!({
        "pipeline": text,
        "file": path.display().to_string(),
        "job": job,
        "vars": vars,
        "bundle": bundle,
        "inputs": packed,
    }))
}

/// `jetbridge submit`.
pub async fn submit(args: &SubmitArgs, printer: Printer) -> anyhow::Result<u8> {
    let client = Client::new(&args.client)?;
    let body = submission(&args.pipeline, args.job.as_deref(), &args.inputs)?;
    let build = client.submit(&body).await?;
    if !args.watch {
        printer.info(&format!(
            "queued build {} (job {} of pipeline {}); follow it with `jetbridge logs {} -f`",
            build.id, build.job, build.pipeline, build.id
        ));
        return Ok(0);
    }
    printer.info(&format!(
        "running job {} of pipeline {} (build {} on {})",
        build.job, build.pipeline, build.id, client.base
    ));
    watch(&client, build.id, printer, true).await
}

/// `jetbridge logs`.
pub async fn logs(args: &LogsArgs, printer: Printer) -> anyhow::Result<u8> {
    let client = Client::new(&args.client)?;
    if args.follow {
        return watch(&client, args.id, printer, false).await;
    }
    let mut replay = Replay::new(printer);
    let end = stream_once(&client, args.id, 0, false, &mut replay).await?;
    if let Some(b) = end.build {
        replay.end(&b);
    }
    Ok(0)
}

/// `jetbridge abort`.
pub async fn abort(args: &AbortArgs, printer: Printer) -> anyhow::Result<u8> {
    let client = Client::new(&args.client)?;
    let b = client.abort(args.id).await?;
    printer.info(&if b.is_final() {
        format!("build {}: {}", b.id, b.state)
    } else {
        format!(
            "build {}: abort requested; its on_abort and ensure hooks run",
            b.id
        )
    });
    Ok(0)
}

/// `jetbridge builds`.
pub async fn builds(args: &BuildsArgs, json: bool) -> anyhow::Result<u8> {
    let client = Client::new(&args.client)?;
    let mut req = client
        .request(reqwest::Method::GET, "/api/v1/builds")
        .query(&[("limit", args.limit.to_string())]);
    for (k, v) in [
        ("state", &args.state),
        ("pipeline", &args.pipeline),
        ("job", &args.job),
    ] {
        if let Some(v) = v {
            req = req.query(&[(k, v)]);
        }
    }
    let list: BuildList = client
        .send(req)
        .await?
        .json()
        .await
        .context("reading the server's answer")?;
    if json {
        for b in &list.builds {
            println!("{}", serde_json::to_string(b).unwrap_or_default());
        }
        return Ok(0);
    }
    let rows: Vec<[String; 4]> = list
        .builds
        .iter()
        .map(|b| {
            let note = match (&b.position, &b.reason) {
                (Some(p), _) => format!("{p} ahead"),
                (None, Some(r)) => r.clone(),
                (None, None) => String::new(),
            };
            [
                b.id.to_string(),
                b.state.clone(),
                format!("{}/{}", b.pipeline, b.job),
                note,
            ]
        })
        .collect();
    let header = ["ID", "STATE", "PIPELINE/JOB", "NOTE"].map(str::to_owned);
    let mut w = [0usize; 3];
    for r in rows.iter().chain(std::iter::once(&header)) {
        for i in 0..3 {
            w[i] = w[i].max(r[i].chars().count());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2]
        );
        println!("{}", line.trim_end());
    }
    Ok(0)
}

/// Events into the printer, as `run`'s build prints them.
struct Replay {
    printer: Arc<Printer>,
    sinks: HashMap<String, Arc<dyn OutputSink>>,
}

impl Replay {
    fn new(printer: Printer) -> Self {
        Replay {
            printer: Arc::new(printer),
            sinks: HashMap::new(),
        }
    }
}

/// Where a build's events go as they are read from its stream, in order.
pub(crate) trait EventSink {
    /// One event: its kind (`step-started`, `output`, ...) and its JSON data.
    fn event(&mut self, kind: &str, data: &str);
}

impl EventSink for Replay {
    fn event(&mut self, kind: &str, data: &str) {
        match kind {
            kinds::STEP_STARTED => {
                if let Ok(e) = serde_json::from_str::<StepStarted>(data) {
                    self.printer.step_started(&e.step, &e.kind);
                }
            }
            kinds::OUTPUT => {
                if let Ok(e) = serde_json::from_str::<OutputChunk>(data) {
                    let stream = if e.stream == "stderr" {
                        OutputStream::Stderr
                    } else {
                        OutputStream::Stdout
                    };
                    let printer = self.printer.clone();
                    self.sinks
                        .entry(e.step.clone())
                        .or_insert_with(|| printer.step_output(&e.step))
                        .write(stream, e.text.as_bytes());
                }
            }
            kinds::STEP_FINISHED => {
                if let Ok(v) = serde_json::from_str::<StepView>(data) {
                    // The step's last unterminated line shows before its result.
                    self.sinks.remove(&v.name);
                    self.printer.step_finished_view(&v);
                }
            }
            kinds::NOTICE => {
                if let Ok(n) = serde_json::from_str::<Notice>(data) {
                    self.printer.notice(&n.message);
                }
            }
            _ => {}
        }
    }
}

impl Replay {
    /// The summary of an ended build.
    fn end(&mut self, b: &BuildView) {
        self.sinks.clear();
        let outcome = b.outcome.clone().unwrap_or_else(|| OutcomeView {
            status: b.state.clone(),
            duration_ms: match (b.started_at_ms, b.finished_at_ms) {
                (Some(s), Some(f)) => f.saturating_sub(s),
                _ => 0,
            },
            failed_step: None,
            reason: None,
            steps: Vec::new(),
            artifacts: Vec::new(),
        });
        // The build's own reason, unless the summary's verdict says it already.
        let said = match (&outcome.failed_step, &outcome.reason) {
            (Some(step), Some(why)) => Some(format!("{step}: {why}")),
            _ => None,
        };
        if let Some(reason) = b.reason.as_deref().filter(|r| said.as_deref() != Some(*r)) {
            self.printer.info(&format!("build {}: {reason}", b.state));
        }
        self.printer
            .summary_view(&outcome, Duration::from_millis(outcome.duration_ms));
    }
}

/// How one connection to the event stream ended.
struct StreamEnd {
    /// The last event id seen.
    last: u64,
    /// The build, when the stream ended with it.
    build: Option<BuildView>,
}

/// Read the event stream from after `last` until it ends or the connection drops.
async fn stream_once(
    client: &Client,
    id: u64,
    last: u64,
    follow: bool,
    replay: &mut (dyn EventSink + Send),
) -> anyhow::Result<StreamEnd> {
    let mut req = client
        .request(reqwest::Method::GET, &format!("/api/v1/builds/{id}/events"))
        .query(&[("follow", follow.to_string())]);
    if last > 0 {
        req = req.header("Last-Event-ID", last.to_string());
    }
    let res = client.send(req).await?;
    let mut end = StreamEnd { last, build: None };
    let mut body = res.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut pending_cr = false;
    loop {
        // The server sends a keep-alive every 15 s: silence beyond this is a dead link.
        let next = match tokio::time::timeout(STREAM_IDLE, body.next()).await {
            Ok(n) => n,
            Err(_) => return Ok(end),
        };
        let Some(chunk) = next else { break };
        let Ok(chunk) = chunk else {
            // Dropped: the caller resumes from `end.last`.
            return Ok(end);
        };
        push_normalized(&mut buf, &chunk, &mut pending_cr);
        while let Some(i) = find_blank_line(&buf) {
            let block: Vec<u8> = buf.drain(..i).collect();
            let text = String::from_utf8_lossy(&block);
            if let Some((seq, kind, data)) = parse_block(&text) {
                if kind == kinds::END {
                    end.build = serde_json::from_str::<EndEvent>(&data)
                        .ok()
                        .map(|e| e.build);
                    return Ok(end);
                }
                if let Some(seq) = seq {
                    end.last = seq;
                }
                replay.event(&kind, &data);
            }
        }
    }
    Ok(end)
}

/// Longer than this without a byte (keep-alives included), the stream counts as dropped.
const STREAM_IDLE: Duration = Duration::from_secs(45);

/// Follow a build to its end, resuming after dropped connections; with
/// `abort_on_interrupt`, Ctrl-C aborts it on the server (a second leaves at once).
async fn watch(
    client: &Client,
    id: u64,
    printer: Printer,
    abort_on_interrupt: bool,
) -> anyhow::Result<u8> {
    let mut replay = Replay::new(printer.clone());
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| anyhow::anyhow!("cannot listen for SIGINT: {e}"))?;
    let mut last = 0;
    let mut interrupts = 0u8;
    let mut drops = 0u32;
    loop {
        let end = {
            let once = stream_once(client, id, last, true, &mut replay);
            tokio::pin!(once);
            loop {
                tokio::select! {
                    r = &mut once => break r,
                    _ = sigint.recv() => {
                        interrupts += 1;
                        if !abort_on_interrupt || interrupts > 1 {
                            eprintln!("error: left without waiting; the build goes on (or ends) on the server");
                            return Ok(130);
                        }
                        printer.info(&format!(
                            "interrupted: aborting build {id} on the server; its on_abort and ensure hooks run \
                             (press Ctrl-C again to stop watching)"
                        ));
                        let req = client
                        .request(reqwest::Method::POST, &format!("/api/v1/builds/{id}/abort"))
                        .timeout(Duration::from_secs(10));
                        if let Err(e) = client.send(req).await {
                            eprintln!("error: could not abort the build: {e:#}");
                        }
                    }
                }
            }
        };
        let end = match end {
            Ok(end) => end,
            // The caller's mistakes (a wrong token, no such build) are final; anything
            // else (a restarting server, a 5xx) is retried like a dropped stream.
            Err(e) if e.downcast_ref::<crate::UserError>().is_some() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the event stream failed; retrying");
                StreamEnd { last, build: None }
            }
        };
        if let Some(b) = end.build {
            replay.end(&b);
            return Ok(match b.state.as_str() {
                "succeeded" => 0,
                "aborted" => 130,
                _ => 1,
            });
        }
        // The connection dropped: resume after the last event seen.
        if end.last == last {
            drops += 1;
            if drops > 30 {
                return Err(anyhow::anyhow!(
                    "lost the server's event stream of build {id}; `jetbridge logs {id} -f` resumes it"
                ));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        } else {
            drops = 0;
        }
        last = end.last;
    }
}

/// Follow build `id`'s events into `sink` until it ends, resuming after dropped
/// connections (from the last event seen, so none is lost or repeated), as `submit
/// --watch` does; the build as it ended. Gives up at `deadline`, or after 30 drops in a
/// row that brought no event.
pub(crate) async fn follow(
    client: &Client,
    id: u64,
    sink: &mut (dyn EventSink + Send),
    deadline: tokio::time::Instant,
) -> anyhow::Result<BuildView> {
    let mut last = 0;
    let mut drops = 0u32;
    loop {
        let once = tokio::time::timeout_at(deadline, stream_once(client, id, last, true, sink));
        let end = match once.await {
            Err(_) => {
                return Err(anyhow::anyhow!(
                    "build {id} did not end in time (its event stream is still open)"
                ));
            }
            Ok(Ok(end)) => end,
            Ok(Err(e)) if e.downcast_ref::<crate::UserError>().is_some() => return Err(e),
            Ok(Err(e)) => {
                tracing::debug!(error = %format!("{e:#}"), "the event stream failed; retrying");
                StreamEnd { last, build: None }
            }
        };
        if let Some(b) = end.build {
            return Ok(b);
        }
        if end.last == last {
            drops += 1;
            if drops > 30 {
                return Err(anyhow::anyhow!(
                    "lost the server's event stream of build {id} 30 times in a row"
                ));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        } else {
            drops = 0;
        }
        last = end.last;
    }
}
