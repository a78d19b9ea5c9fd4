//! `jetbridge load`: the load harness. It submits builds through the server's API with
//! the client `jetbridge submit` uses, follows each one's event stream as `submit
//! --watch` does, samples the replicas' `/metrics` (and, when told where they are, the
//! cluster's pods and Secrets, the volume store and the registry), then waits for every
//! replica's reaper to make a whole pass and gives a leak verdict.
//!
//! Every loop is bounded: submissions by `--builds` or `--duration`, each build by
//! `--build-timeout`, the wait for the reaper by `--reap-timeout`.

mod mix;
mod observe;
mod plot;
mod report;
mod scrape;
mod stats;

use std::io::{IsTerminal, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jetbridge_server::api::{StepView, kinds};
use tokio::sync::{Mutex, Notify, Semaphore};
use tokio::time::Instant;

use crate::cli::{LoadArgs, PipelineArgs};
use crate::client::{Client, EventSink, QueueFull};
use crate::user;
use mix::{Entry, Expect};
use observe::Observers;
use scrape::Figures;

/// Builds submitted when neither --builds nor --duration says.
const DEFAULT_BUILDS: u64 = 20;
/// Builds in flight when --concurrency does not say.
const DEFAULT_CONCURRENCY: usize = 10;
/// With only --rate, the most builds in flight (a bound on the harness's own memory).
const RATE_IN_FLIGHT_CAP: usize = 2000;

/// What the arguments ask for, checked before anything is reached.
#[derive(Debug)]
struct Plan {
    entries: Vec<Entry>,
    builds: Option<u64>,
    duration: Option<Duration>,
    concurrency: usize,
    /// Seconds between submissions.
    interval: Option<Duration>,
}

fn plan(args: &LoadArgs) -> anyhow::Result<Plan> {
    if args.builds == Some(0) {
        return Err(user("--builds must be at least 1"));
    }
    if args.concurrency == Some(0) {
        return Err(user("--concurrency must be at least 1"));
    }
    if args.duration.is_some_and(|d| d.0.is_zero()) {
        return Err(user("--duration must be longer than 0s (e.g. 10m, 24h)"));
    }
    match (&args.warm_up, &args.duration) {
        (Some(_), None) => {
            return Err(user(
                "--warm-up goes with --duration: only a soak has a steady state to judge",
            ));
        }
        (Some(w), Some(d)) if w.0 >= d.0 => {
            return Err(user(format!(
                "--warm-up {:?} must be shorter than --duration {:?}, or no steady state is left",
                w.0, d.0
            )));
        }
        _ => {}
    }
    if args.sample_every.0 < Duration::from_millis(100) {
        return Err(user("--sample-every must be at least 100ms"));
    }
    if args.build_timeout.0 < Duration::from_secs(1) {
        return Err(user("--build-timeout must be at least 1s"));
    }
    if !(args.max_rss_growth >= 0.0 && args.max_fd_growth >= 0.0) {
        return Err(user(
            "--max-rss-growth and --max-fd-growth must be 0 or more",
        ));
    }
    if args.large_artifact_mib == 0 || args.large_artifact_mib > 4096 {
        return Err(user("--large-artifact-mib must be between 1 and 4096"));
    }
    let interval = match &args.rate {
        None => None,
        Some(r) => {
            let n = r.trim().trim_end_matches("/s").trim();
            match n.parse::<f64>() {
                Ok(v) if v > 0.0 && v <= 1000.0 => Some(Duration::from_secs_f64(1.0 / v)),
                _ => {
                    return Err(user(format!(
                        "--rate {r:?}: give builds per second, more than 0 and at most 1000 (e.g. 5/s or 0.5)"
                    )));
                }
            }
        }
    };
    let entries = match &args.pipeline {
        Some(path) => {
            let expect = args.expect.as_deref().unwrap_or("succeeded");
            if !["succeeded", "failed", "errored", "aborted"].contains(&expect) {
                return Err(user(format!(
                    "--expect {expect:?}: give succeeded, failed, errored or aborted"
                )));
            }
            let pa = PipelineArgs {
                pipeline: path.clone(),
                vars: args.vars.clone(),
            };
            let body = crate::client::submission(&pa, args.job.as_deref(), &[])?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "pipeline".to_owned());
            vec![Entry {
                name,
                body,
                expect: Expect::state(expect),
                abort: false,
            }]
        }
        None => mix::builtin(&args.mix_image, args.large_artifact_mib),
    };
    let builds = match (args.builds, args.duration) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_BUILDS),
    };
    let concurrency = match (args.concurrency, interval) {
        (Some(c), _) => c,
        (None, Some(_)) => RATE_IN_FLIGHT_CAP,
        (None, None) => DEFAULT_CONCURRENCY,
    };
    Ok(Plan {
        entries,
        builds,
        duration: args.duration.map(|d| d.0),
        concurrency,
        interval,
    })
}

/// One build as the harness saw it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct BuildRecord {
    /// The mix entry (or the pipeline's name).
    pub entry: String,
    /// The server's build number.
    pub id: Option<u64>,
    /// The replica it was submitted to.
    pub server: String,
    /// Seconds from the run's start to its submission.
    pub submitted_s: f64,
    /// How long the submission's request took.
    pub submit_ms: Option<f64>,
    /// From sending the submission to receiving its first `step-started` event.
    pub first_step_ms: Option<f64>,
    /// From submission to claim, on the server's clock.
    pub queue_wait_ms: Option<f64>,
    /// From claim to end, on the server's clock.
    pub duration_ms: Option<f64>,
    /// Seconds from the run's start to its end, as seen here.
    pub ended_s: Option<f64>,
    /// How it ended.
    pub state: Option<String>,
    /// Its steps as they ended: kind, wall time of all attempts.
    #[serde(skip)]
    pub steps: Vec<(String, f64)>,
    /// Submissions refused with 429 before it was queued.
    pub busy_retries: u32,
    /// How it ended otherwise than expected.
    pub unexpected: Option<String>,
    /// What went wrong in the harness's dealings with the server (no build, a lost
    /// stream).
    pub error: Option<String>,
}

/// One sample of everything the harness watches.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Sample {
    /// Seconds since the run's start.
    pub t: f64,
    /// Each replica's figures, in --metrics order (`None`: its scrape failed).
    pub replicas: Vec<Option<Figures>>,
    /// Pods labelled managed-by jetbridge in the namespace.
    pub kube_pods: Option<u64>,
    /// Secrets so labelled.
    pub kube_secrets: Option<u64>,
    /// Volumes in the store.
    pub store_volumes: Option<u64>,
    /// Bytes of the store's sealed volumes.
    pub store_bytes: Option<u64>,
    /// Artifact rows of the registry.
    pub registry_artifacts: Option<u64>,
    /// Live worker rows of the registry.
    pub registry_workers: Option<u64>,
    /// Builds submitted so far.
    pub submitted: u64,
    /// Builds ended so far.
    pub ended: u64,
}

impl Sample {
    fn sum(&self, f: impl Fn(&Figures) -> f64) -> Option<f64> {
        let v: Vec<f64> = self.replicas.iter().flatten().map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum())
    }

    fn first(&self, f: impl Fn(&Figures) -> f64) -> Option<f64> {
        self.replicas.iter().flatten().next().map(f)
    }
}

/// Counters the build tasks share with the sampler.
#[derive(Debug, Default)]
struct Progress {
    submitted: AtomicU64,
    ended: AtomicU64,
    unexpected: AtomicU64,
    errors: AtomicU64,
}

/// Events of one build: when its first step started, what its steps were.
struct Timing {
    sent: Instant,
    first_step: Option<Duration>,
    steps: Vec<(String, f64)>,
    abort: Option<Arc<Notify>>,
}

impl EventSink for Timing {
    fn event(&mut self, kind: &str, data: &str) {
        match kind {
            kinds::STEP_STARTED if self.first_step.is_none() => {
                self.first_step = Some(self.sent.elapsed());
                if let Some(n) = &self.abort {
                    n.notify_one();
                }
            }
            kinds::STEP_FINISHED => {
                if let Ok(v) = serde_json::from_str::<StepView>(data) {
                    self.steps.push((v.kind, v.duration_ms as f64));
                }
            }
            _ => {}
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Submit one build of `entry` and follow it to its end.
async fn one_build(client: Client, entry: Entry, start: Instant, timeout: Duration) -> BuildRecord {
    let mut rec = BuildRecord {
        entry: entry.name.clone(),
        server: client.base().to_owned(),
        submitted_s: start.elapsed().as_secs_f64(),
        ..BuildRecord::default()
    };
    let deadline = Instant::now() + timeout;
    let sent = Instant::now();
    // Back-pressure (429) is waited out, within the build's time.
    let build = loop {
        match client.submit(&entry.body).await {
            Ok(b) => break b,
            Err(e) => {
                if let Some(full) = e.downcast_ref::<QueueFull>() {
                    rec.busy_retries += 1;
                    let wait = Duration::from_secs(full.retry_after.unwrap_or(1).clamp(1, 10));
                    if Instant::now() + wait < deadline {
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                }
                rec.error = Some(format!("submitting: {e:#}"));
                return rec;
            }
        }
    };
    rec.submit_ms = Some(ms(sent.elapsed()));
    rec.id = Some(build.id);
    let abort = entry.abort.then(|| Arc::new(Notify::new()));
    let aborter = abort.clone().map(|n| {
        let client = client.clone();
        let id = build.id;
        tokio::spawn(async move {
            if tokio::time::timeout_at(deadline, n.notified())
                .await
                .is_ok()
            {
                client.abort(id).await.err().map(|e| format!("{e:#}"))
            } else {
                None
            }
        })
    });
    let mut timing = Timing {
        sent,
        first_step: None,
        steps: Vec::new(),
        abort,
    };
    let ended = crate::client::follow(&client, build.id, &mut timing, deadline).await;
    if let Some(a) = aborter {
        a.abort();
        if let Ok(Some(e)) = a.await {
            rec.error = Some(format!("aborting: {e}"));
        }
    }
    rec.first_step_ms = timing.first_step.map(ms);
    rec.steps = timing.steps;
    rec.ended_s = Some(start.elapsed().as_secs_f64());
    match ended {
        Ok(b) => {
            if let Some(s) = b.started_at_ms {
                rec.queue_wait_ms = Some(s.saturating_sub(b.submitted_at_ms) as f64);
                if let Some(f) = b.finished_at_ms {
                    rec.duration_ms = Some(f.saturating_sub(s) as f64);
                }
            }
            rec.unexpected = entry.expect.check(&b);
            rec.state = Some(b.state);
        }
        Err(e) => {
            // Not ended in time: stop it, so that it leaves nothing running.
            let _ = client.abort(build.id).await;
            rec.unexpected = Some(format!("{e:#}"));
        }
    }
    rec
}

/// Every replica's figures, each scrape bounded.
async fn scrape_all(http: &reqwest::Client, urls: &[String]) -> Vec<Option<Figures>> {
    let mut out = Vec::with_capacity(urls.len());
    for u in urls {
        let text = async {
            let res = http.get(u).send().await.ok()?;
            if !res.status().is_success() {
                return None;
            }
            res.text().await.ok()
        };
        out.push(
            tokio::time::timeout(Duration::from_secs(10), text)
                .await
                .ok()
                .flatten()
                .map(|t| Figures::of(&t)),
        );
    }
    out
}

async fn take_sample(
    http: &reqwest::Client,
    metrics: &[String],
    observers: &Observers,
    start: Instant,
    progress: &Progress,
) -> Sample {
    let replicas = scrape_all(http, metrics).await;
    let o = observers.observe().await;
    Sample {
        t: start.elapsed().as_secs_f64(),
        replicas,
        kube_pods: o.pods,
        kube_secrets: o.secrets,
        store_volumes: o.volumes,
        store_bytes: o.volume_bytes,
        registry_artifacts: o.artifacts,
        registry_workers: o.workers,
        submitted: progress.submitted.load(Ordering::Relaxed),
        ended: progress.ended.load(Ordering::Relaxed),
    }
}

fn progress_line(s: &Sample, p: &Progress) -> String {
    let mut line = format!(
        "{:>6.0}s  submitted {}  ended {}  unexpected {}  errors {}",
        s.t,
        s.submitted,
        s.ended,
        p.unexpected.load(Ordering::Relaxed),
        p.errors.load(Ordering::Relaxed)
    );
    if let Some(q) = s.first(|f| f.queued) {
        line.push_str(&format!("  queued {q:.0}"));
    }
    if let Some(r) = s.sum(|f| f.builds_running) {
        line.push_str(&format!("  running {r:.0}"));
    }
    if let Some(pods) = s.kube_pods.map(|p| p as f64).or(s.sum(|f| f.pods_owned)) {
        line.push_str(&format!("  pods {pods:.0}"));
    }
    if let Some(rss) = s.sum(|f| f.rss_bytes) {
        line.push_str(&format!("  rss {:.0} MiB", rss / 1048576.0));
    }
    line
}

/// `jetbridge load`.
pub async fn run(args: &LoadArgs) -> anyhow::Result<u8> {
    let plan = plan(args)?;
    if args.servers.is_empty() {
        return Err(user("--server: give at least one server URL"));
    }
    let clients = args
        .servers
        .iter()
        .map(|s| Client::connect(s, args.token_file.as_deref()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for m in &args.metrics {
        if !(m.starts_with("http://") || m.starts_with("https://")) {
            return Err(user(format!(
                "--metrics {m:?}: give a replica's metrics URL, e.g. http://127.0.0.1:9391/metrics"
            )));
        }
    }
    if let Some(dir) = &args.report {
        std::fs::create_dir_all(dir)
            .map_err(|e| user(format!("--report {}: cannot create it: {e}", dir.display())))?;
    }
    // Every server answers before anything is submitted: a wrong URL or token is the
    // caller's to fix (exit 2), not a run of errors.
    for c in &clients {
        c.list("", 1)
            .await
            .map_err(|e| user(format!("--server {}: {e:#}", c.base())))?;
    }
    let observers = Observers::open(args).await?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let tty = std::io::stdout().is_terminal();
    let start = Instant::now();
    let started_at = SystemTime::now();
    let progress = Arc::new(Progress::default());
    let samples = Arc::new(Mutex::new(vec![
        take_sample(&http, &args.metrics, &observers, start, &progress).await,
    ]));
    let observers = Arc::new(observers);
    let stop_sampling = Arc::new(Notify::new());
    let sampler = {
        let (http, metrics, observers, progress, samples, stop) = (
            http.clone(),
            args.metrics.clone(),
            observers.clone(),
            progress.clone(),
            samples.clone(),
            stop_sampling.clone(),
        );
        let every = args.sample_every.0;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.notified() => break,
                }
                let s = take_sample(&http, &metrics, &observers, start, &progress).await;
                if tty {
                    print!("\r\x1b[2K{}", progress_line(&s, &progress));
                    let _ = std::io::stdout().flush();
                }
                samples.lock().await.push(s);
            }
        })
    };

    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| anyhow::anyhow!("cannot listen for SIGINT: {e}"))?;
    let sem = Arc::new(Semaphore::new(plan.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let mut n: u64 = 0;
    let mut next_at = Instant::now();
    let soak_end = plan.duration.map(|d| start + d);
    let mut interrupted = false;
    let mut last_submit_s = 0.0;
    'submit: loop {
        if plan.builds.is_some_and(|max| n >= max) {
            break;
        }
        if soak_end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
        // Without a soak's end, a run of --builds ends once they are all submitted.
        let until = soak_end.unwrap_or_else(|| Instant::now() + Duration::from_secs(86400 * 365));
        let permit = tokio::select! {
            p = sem.clone().acquire_owned() => p?,
            _ = tokio::time::sleep_until(until) => break 'submit,
            _ = sigint.recv() => { interrupted = true; break 'submit; }
        };
        if let Some(i) = plan.interval {
            tokio::select! {
                _ = tokio::time::sleep_until(next_at) => {}
                _ = tokio::time::sleep_until(until) => break 'submit,
                _ = sigint.recv() => { interrupted = true; break 'submit; }
            }
            next_at = next_at.max(Instant::now() - i) + i;
        }
        let entry = plan.entries[(n as usize) % plan.entries.len()].clone();
        let client = clients[(n as usize) % clients.len()].clone();
        let progress = progress.clone();
        let timeout = args.build_timeout.0;
        progress.submitted.fetch_add(1, Ordering::Relaxed);
        last_submit_s = start.elapsed().as_secs_f64();
        tasks.spawn(async move {
            let rec = one_build(client, entry, start, timeout).await;
            progress.ended.fetch_add(1, Ordering::Relaxed);
            if rec.error.is_some() {
                progress.errors.fetch_add(1, Ordering::Relaxed);
            } else if rec.unexpected.is_some() {
                progress.unexpected.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
            rec
        });
        n += 1;
    }
    if interrupted {
        eprintln!(
            "\ninterrupted: no more submissions; waiting for the {} build(s) in flight (Ctrl-C again to leave)",
            tasks.len()
        );
    }
    let mut records = Vec::with_capacity(n as usize);
    loop {
        tokio::select! {
            r = tasks.join_next() => match r {
                Some(Ok(rec)) => records.push(rec),
                Some(Err(e)) => records.push(BuildRecord {
                    error: Some(format!("the build's task failed: {e}")),
                    ..BuildRecord::default()
                }),
                None => break,
            },
            _ = sigint.recv() => {
                eprintln!("\nerror: left without waiting; builds go on on the server");
                return Ok(130);
            }
        }
    }
    let all_ended_s = start.elapsed().as_secs_f64();

    // The leak verdict waits for a reaper pass that started after the last build ended
    // on every replica: two more passes than counted now (one may be under way).
    let reap = wait_for_reapers(&http, &args.metrics, args.reap_timeout.0).await;
    stop_sampling.notify_one();
    let _ = sampler.await;
    let last = take_sample(&http, &args.metrics, &observers, start, &progress).await;
    samples.lock().await.push(last.clone());
    if tty {
        println!();
    }
    let lingering = match clients[0].list("queued,running", 500).await {
        Ok(l) => Ok(l.builds.len()),
        Err(e) => Err(format!("{e:#}")),
    };
    let samples = std::mem::take(&mut *samples.lock().await);
    records.sort_by_key(|r| r.id.unwrap_or(u64::MAX));
    let ctx = report::Context {
        args,
        started_at: started_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        soak: plan.duration.is_some(),
        first_submit_s: records
            .iter()
            .map(|r| r.submitted_s)
            .fold(f64::INFINITY, f64::min),
        last_submit_s,
        all_ended_s,
        interrupted,
        reap,
        lingering,
        observed: observers.what(),
    };
    let report = report::Report::build(&ctx, &records, &samples, &last);
    print!("{}", report.summary_text());
    if let Some(dir) = &args.report {
        report.write(dir, &samples)?;
        println!("report: {}", dir.join("report.md").display());
    }
    Ok(if report.passed() { 0 } else { 1 })
}

/// How the wait for the reapers ended.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) enum Reap {
    /// No --metrics: the passes cannot be seen.
    Unobserved,
    /// Every replica made its passes; how long the wait took.
    Done(f64),
    /// These replicas (--metrics URLs) did not, in time.
    Missing(Vec<String>),
}

async fn wait_for_reapers(http: &reqwest::Client, urls: &[String], within: Duration) -> Reap {
    if urls.is_empty() {
        return Reap::Unobserved;
    }
    let began = Instant::now();
    let deadline = began + within;
    let mut target: Vec<Option<f64>> = vec![None; urls.len()];
    loop {
        let now = scrape_all(http, urls).await;
        let mut missing = Vec::new();
        for (i, f) in now.iter().enumerate() {
            match (f, target[i]) {
                (Some(f), None) => {
                    target[i] = Some(f.reaper_passes + 2.0);
                    missing.push(urls[i].clone());
                }
                (Some(f), Some(t)) if f.reaper_passes >= t => {}
                _ => missing.push(urls[i].clone()),
            }
        }
        if missing.is_empty() {
            return Reap::Done(began.elapsed().as_secs_f64());
        }
        if Instant::now() >= deadline {
            return Reap::Missing(missing);
        }
        tokio::time::sleep(Duration::from_millis(500).min(deadline - Instant::now())).await;
    }
}
