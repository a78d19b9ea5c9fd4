//! The run's report: counts, latencies, peaks, slopes and the leak verdict; printed, and
//! with `--report DIR` written as `report.json`, `report.md` and PNG plots.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use super::observe::Observed;
use super::scrape::bucket_delta;
use super::stats::{Fit, Percentiles, histogram_percentiles, theil_sen};
use super::{BuildRecord, Reap, Sample};
use crate::cli::LoadArgs;

/// What the report needs beside the records and samples.
#[derive(Debug)]
pub(crate) struct Context<'a> {
    pub args: &'a LoadArgs,
    pub started_at: u64,
    pub soak: bool,
    pub first_submit_s: f64,
    pub last_submit_s: f64,
    pub all_ended_s: f64,
    pub interrupted: bool,
    pub reap: Reap,
    pub lingering: Result<usize, String>,
    pub observed: Observed,
}

/// One line of the verdict.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    /// What is checked.
    pub name: String,
    /// `Some(true)` passed, `Some(false)` failed, `None` not checked.
    pub ok: Option<bool>,
    /// The figure, or why it was not checked.
    pub detail: String,
}

/// One entry's builds.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct EntryCounts {
    pub builds: u64,
    pub by_state: BTreeMap<String, u64>,
    pub unexpected: u64,
    pub errors: u64,
}

/// A replica's resources over the run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReplicaFigures {
    pub metrics: String,
    pub peak_rss_mib: Option<f64>,
    pub peak_open_fds: Option<f64>,
    pub cpu_seconds: Option<f64>,
    /// The steady state's fits (units per second).
    pub rss_fit: Option<Fit>,
    pub fd_fit: Option<Fit>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub started_at_unix: u64,
    pub servers: Vec<String>,
    pub metrics: Vec<String>,
    pub workload: String,
    pub soak: bool,
    pub wall_seconds: f64,
    pub submitted: u64,
    pub ended: u64,
    pub as_expected: u64,
    pub unexpected: u64,
    pub errors: u64,
    pub busy_retries: u64,
    pub builds_per_minute: Option<f64>,
    pub entries: BTreeMap<String, EntryCounts>,
    /// Milliseconds.
    pub latency_ms: BTreeMap<String, Percentiles>,
    pub peak_queued: Option<f64>,
    pub peak_running_builds: Option<f64>,
    pub peak_running_steps: Option<f64>,
    pub peak_pods: Option<f64>,
    pub peak_store_bytes: Option<u64>,
    pub peak_store_volumes: Option<u64>,
    pub peak_registry_artifacts: Option<u64>,
    pub replicas: Vec<ReplicaFigures>,
    pub steady_state_seconds: Option<(f64, f64)>,
    pub checks: Vec<Check>,
    pub unexpected_builds: Vec<BuildRecord>,
}

fn pct(values: impl Iterator<Item = f64>) -> Option<Percentiles> {
    Percentiles::of(&values.collect::<Vec<_>>())
}

fn max_of(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    v.flatten()
        .fold(None, |m, x| Some(m.map_or(x, |m: f64| m.max(x))))
}

/// Fewest samples a steady state's slope is judged on.
const MIN_STEADY_SAMPLES: usize = 10;

impl Report {
    pub fn build(
        ctx: &Context<'_>,
        records: &[BuildRecord],
        samples: &[Sample],
        last: &Sample,
    ) -> Report {
        let args = ctx.args;
        let mut entries: BTreeMap<String, EntryCounts> = BTreeMap::new();
        for r in records {
            let e = entries.entry(r.entry.clone()).or_default();
            e.builds += 1;
            if let Some(s) = &r.state {
                *e.by_state.entry(s.clone()).or_default() += 1;
            }
            if r.error.is_some() {
                e.errors += 1;
            } else if r.unexpected.is_some() {
                e.unexpected += 1;
            }
        }
        let errors = records.iter().filter(|r| r.error.is_some()).count() as u64;
        let unexpected = records
            .iter()
            .filter(|r| r.error.is_none() && r.unexpected.is_some())
            .count() as u64;
        let ended = records.iter().filter(|r| r.state.is_some()).count() as u64;
        let mut latency = BTreeMap::new();
        let mut put = |name: &str, p: Option<Percentiles>| {
            if let Some(p) = p {
                latency.insert(name.to_owned(), p);
            }
        };
        put(
            "1 submit -> first step started",
            pct(records.iter().filter_map(|r| r.first_step_ms)),
        );
        put(
            "2 queue wait (submit -> claim)",
            pct(records.iter().filter_map(|r| r.queue_wait_ms)),
        );
        put(
            "3 build duration (claim -> end)",
            pct(records.iter().filter_map(|r| r.duration_ms)),
        );
        put(
            "4 submit request",
            pct(records.iter().filter_map(|r| r.submit_ms)),
        );
        let mut kinds: Vec<&str> = records
            .iter()
            .flat_map(|r| r.steps.iter().map(|(k, _)| k.as_str()))
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        for k in kinds {
            put(
                &format!("5 step: {k}"),
                pct(records
                    .iter()
                    .flat_map(|r| r.steps.iter())
                    .filter(|(kind, _)| kind == k)
                    .map(|(_, d)| *d)),
            );
        }
        // Phases: the histograms' growth over the run, summed over the replicas.
        let first = samples.first();
        let mut phases: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for (i, now) in last.replicas.iter().enumerate() {
            let Some(now) = now else { continue };
            let before = first.and_then(|f| f.replicas.get(i).cloned().flatten());
            for (phase, after) in &now.phases {
                let was = before
                    .as_ref()
                    .and_then(|b| b.phases.get(phase).cloned())
                    .unwrap_or_default();
                let d = bucket_delta(&was, after);
                let acc = phases.entry(phase.clone()).or_default();
                if acc.is_empty() {
                    *acc = d;
                } else {
                    for (slot, (_, n)) in acc.iter_mut().zip(d) {
                        slot.1 += n;
                    }
                }
            }
        }
        for (phase, buckets) in &phases {
            if let Some(p) = histogram_percentiles(buckets) {
                let s = |v: f64| v * 1000.0;
                latency.insert(
                    format!("6 phase: {phase} (histogram)"),
                    Percentiles {
                        count: p.count,
                        p50: s(p.p50),
                        p95: s(p.p95),
                        p99: s(p.p99),
                        max: s(p.max),
                    },
                );
            }
        }
        let span = ctx.all_ended_s - ctx.first_submit_s;
        let builds_per_minute = (span > 0.0 && ended > 0).then(|| ended as f64 * 60.0 / span);

        // The steady state: after the warm-up (by default the first quarter of the
        // submitting), to the last submission.
        let window = (ctx.soak && ctx.last_submit_s > ctx.first_submit_s)
            .then(|| {
                let warm = match &args.warm_up {
                    Some(d) => d.0.as_secs_f64(),
                    None => 0.25 * (ctx.last_submit_s - ctx.first_submit_s),
                };
                (ctx.first_submit_s + warm, ctx.last_submit_s)
            })
            .filter(|(a, b)| a < b);
        let mut replicas = Vec::new();
        for (i, url) in args.metrics.iter().enumerate() {
            let series = |f: &dyn Fn(&super::scrape::Figures) -> f64| -> Vec<(f64, f64)> {
                samples
                    .iter()
                    .filter_map(|s| s.replicas.get(i).cloned().flatten().map(|r| (s.t, f(&r))))
                    .collect()
            };
            let rss = series(&|f| f.rss_bytes);
            let fds = series(&|f| f.open_fds);
            let cpu = series(&|f| f.cpu_seconds);
            let steady = |v: &[(f64, f64)]| -> Option<Fit> {
                let (a, b) = window?;
                let pts: Vec<(f64, f64)> = v
                    .iter()
                    .copied()
                    .filter(|(t, _)| *t >= a && *t <= b)
                    .collect();
                if pts.len() < MIN_STEADY_SAMPLES {
                    return None;
                }
                theil_sen(&pts)
            };
            replicas.push(ReplicaFigures {
                metrics: url.clone(),
                peak_rss_mib: max_of(rss.iter().map(|(_, v)| Some(v / 1048576.0))),
                peak_open_fds: max_of(fds.iter().map(|(_, v)| Some(*v))),
                cpu_seconds: match (cpu.first(), cpu.last()) {
                    (Some(a), Some(b)) => Some(b.1 - a.1),
                    _ => None,
                },
                rss_fit: steady(&rss),
                fd_fit: steady(&fds),
            });
        }

        let mut checks = Vec::new();
        let mut check = |name: &str, ok: Option<bool>, detail: String| {
            checks.push(Check {
                name: name.to_owned(),
                ok,
                detail,
            })
        };
        if ctx.interrupted {
            check(
                "run",
                Some(false),
                "interrupted before every build was submitted".into(),
            );
        }
        check(
            "unexpected outcomes",
            Some(unexpected == 0),
            format!("{unexpected} of {} build(s)", records.len()),
        );
        check(
            "errors",
            Some(errors == 0),
            format!("{errors} build(s) the harness could not submit or follow"),
        );
        match &ctx.reap {
            Reap::Done(s) => check(
                "reaper pass after the last build",
                Some(true),
                format!("every replica made a whole pass ({s:.1} s after the last build)"),
            ),
            Reap::Unobserved => check(
                "reaper pass after the last build",
                Some(false),
                "not observed: give each replica's --metrics URL, so the verdict follows a reaper pass".into(),
            ),
            Reap::Missing(m) => check(
                "reaper pass after the last build",
                Some(false),
                format!(
                    "none within --reap-timeout {}s on {}",
                    args.reap_timeout.0.as_secs(),
                    m.join(", ")
                ),
            ),
        }
        match &ctx.lingering {
            Ok(n) => check(
                "builds still queued or running",
                Some(*n == 0),
                format!("{n} (the API's build list)"),
            ),
            Err(e) => check(
                "builds still queued or running",
                Some(false),
                format!("cannot list them: {e}"),
            ),
        }
        let any = !last.replicas.is_empty();
        let scraped = last.replicas.iter().all(Option::is_some);
        if any && !scraped {
            check(
                "metrics at the end",
                Some(false),
                "a replica's /metrics did not answer at the end".into(),
            );
        }
        let from_metrics = |f: &dyn Fn(&super::scrape::Figures) -> f64| last.sum(f);
        if let Some(n) = from_metrics(&|f| f.steps_running) {
            check(
                "steps still running",
                Some(n == 0.0),
                format!("{n} (jetbridge_steps_running)"),
            );
        }
        let mut pods = Vec::new();
        let mut pods_ok = true;
        if let Some(n) = from_metrics(&|f| f.pods_owned) {
            pods_ok &= n == 0.0;
            pods.push(format!("{n} owned by the replicas (jetbridge_pods_owned)"));
        }
        if let Some(n) = last.kube_pods {
            pods_ok &= n == 0;
            pods.push(format!(
                "{n} labelled managed-by jetbridge (Kubernetes API)"
            ));
        }
        check(
            "pods left",
            (!pods.is_empty()).then_some(pods_ok),
            if pods.is_empty() {
                "not checked: give --metrics or --kubeconfig".into()
            } else {
                pods.join("; ")
            },
        );
        let mut secrets = Vec::new();
        let mut secrets_ok = true;
        if let Some(n) = last.sum(|f| f.secrets_owned.unwrap_or(0.0)).filter(|_| {
            last.replicas
                .iter()
                .flatten()
                .any(|f| f.secrets_owned.is_some())
        }) {
            secrets_ok &= n == 0.0;
            secrets.push(format!(
                "{n} owned by the replicas (jetbridge_secrets_owned)"
            ));
        }
        if let Some(n) = last.kube_secrets {
            secrets_ok &= n == 0;
            secrets.push(format!(
                "{n} labelled managed-by jetbridge (Kubernetes API)"
            ));
        }
        check(
            "Secrets left",
            (!secrets.is_empty()).then_some(secrets_ok),
            if secrets.is_empty() {
                "not checked: give --kubeconfig (Kubernetes backends only)".into()
            } else {
                secrets.join("; ")
            },
        );
        match (ctx.observed.volumes, last.store_volumes) {
            (true, Some(n)) => check(
                "volumes left",
                Some(n == 0),
                format!("{n} in the store ({} bytes)", last.store_bytes.unwrap_or(0)),
            ),
            (true, None) => check(
                "volumes left",
                Some(false),
                "the store could not be listed".into(),
            ),
            (false, _) => check(
                "volumes left",
                None,
                "not checked: give the servers' --volumes (the server exposes no store usage)"
                    .into(),
            ),
        }
        match (ctx.observed.registry, last.registry_artifacts) {
            (true, Some(n)) => check(
                "references left",
                Some(n == 0),
                format!("{n} artifact row(s) in the registry"),
            ),
            (true, None) => check(
                "references left",
                Some(false),
                "the registry could not be read".into(),
            ),
            (false, _) => check(
                "references left",
                None,
                "not checked: give the servers' --registry (the server exposes no registry rows)"
                    .into(),
            ),
        }
        for r in &replicas {
            let judged = ctx.soak;
            let rss = match (&r.rss_fit, judged) {
                (Some(f), _) => {
                    let pct = if f.start > 0.0 {
                        100.0 * f.growth() / f.start
                    } else {
                        0.0
                    };
                    (
                        judged.then_some(pct <= args.max_rss_growth),
                        format!(
                            "{pct:+.1}% over {:.0} s ({:+.1} MiB/h; limit {}%)",
                            f.span,
                            f.slope * 3600.0 / 1048576.0,
                            args.max_rss_growth
                        ),
                    )
                }
                (None, true) => (
                    Some(false),
                    format!(
                        "fewer than {MIN_STEADY_SAMPLES} samples in the steady state: lower --sample-every or lengthen --duration"
                    ),
                ),
                (None, false) => (
                    None,
                    "not judged: no steady state without --duration".into(),
                ),
            };
            check(&format!("RSS slope {}", r.metrics), rss.0, rss.1);
            let fd = match (&r.fd_fit, judged) {
                (Some(f), _) => (
                    judged.then_some(f.growth() <= args.max_fd_growth),
                    format!(
                        "{:+.1} fds over {:.0} s ({:+.1}/h; limit {})",
                        f.growth(),
                        f.span,
                        f.slope * 3600.0,
                        args.max_fd_growth
                    ),
                ),
                (None, true) => (
                    Some(false),
                    format!("fewer than {MIN_STEADY_SAMPLES} samples in the steady state"),
                ),
                (None, false) => (
                    None,
                    "not judged: no steady state without --duration".into(),
                ),
            };
            check(&format!("fd slope {}", r.metrics), fd.0, fd.1);
        }

        let workload = match &args.pipeline {
            Some(p) => format!("pipeline {}", p.display()),
            None => format!("the built-in mix of {} kinds", entries.len().max(9)),
        };
        let peak = |f: &dyn Fn(&Sample) -> Option<f64>| max_of(samples.iter().map(f));
        Report {
            started_at_unix: ctx.started_at,
            servers: args.servers.clone(),
            metrics: args.metrics.clone(),
            workload,
            soak: ctx.soak,
            wall_seconds: ctx.all_ended_s,
            submitted: records.len() as u64,
            ended,
            as_expected: records.len() as u64 - unexpected - errors,
            unexpected,
            errors,
            busy_retries: records.iter().map(|r| u64::from(r.busy_retries)).sum(),
            builds_per_minute,
            entries,
            latency_ms: latency,
            peak_queued: peak(&|s| s.first(|f| f.queued)),
            peak_running_builds: peak(&|s| s.sum(|f| f.builds_running)),
            peak_running_steps: peak(&|s| s.sum(|f| f.steps_running)),
            peak_pods: peak(&|s| s.kube_pods.map(|p| p as f64).or(s.sum(|f| f.pods_owned))),
            peak_store_bytes: samples.iter().filter_map(|s| s.store_bytes).max(),
            peak_store_volumes: samples.iter().filter_map(|s| s.store_volumes).max(),
            peak_registry_artifacts: samples.iter().filter_map(|s| s.registry_artifacts).max(),
            replicas,
            steady_state_seconds: window,
            checks,
            unexpected_builds: records
                .iter()
                .filter(|r| r.unexpected.is_some() || r.error.is_some())
                .cloned()
                .collect(),
        }
    }

    /// Whether no check failed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok != Some(false))
    }

    fn failed(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|c| c.ok == Some(false))
            .map(|c| c.name.as_str())
            .collect()
    }

    fn latency_table(&self, md: bool) -> String {
        let mut out = String::new();
        if md {
            out.push_str(
                "| latency (ms) | p50 | p95 | p99 | max | n |\n|---|---:|---:|---:|---:|---:|\n",
            );
        } else {
            out.push_str(&format!(
                "  {:<40} {:>9} {:>9} {:>9} {:>9} {:>6}\n",
                "latency (ms)", "p50", "p95", "p99", "max", "n"
            ));
        }
        for (name, p) in &self.latency_ms {
            let name = name.split_once(' ').map_or(name.as_str(), |(_, n)| n);
            if md {
                out.push_str(&format!(
                    "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {} |\n",
                    p.p50, p.p95, p.p99, p.max, p.count
                ));
            } else {
                out.push_str(&format!(
                    "  {name:<40} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>6}\n",
                    p.p50, p.p95, p.p99, p.max, p.count
                ));
            }
        }
        out
    }

    fn outcome_line(&self) -> String {
        let mut states: BTreeMap<&str, u64> = BTreeMap::new();
        for e in self.entries.values() {
            for (s, n) in &e.by_state {
                *states.entry(s).or_default() += n;
            }
        }
        let states: Vec<String> = states.iter().map(|(s, n)| format!("{s} {n}")).collect();
        format!(
            "{} as expected ({}), {} unexpected, {} errors, {} submission(s) refused busy and retried",
            self.as_expected,
            states.join(", "),
            self.unexpected,
            self.errors,
            self.busy_retries
        )
    }

    /// What the run prints.
    pub fn summary_text(&self) -> String {
        let mut out = format!(
            "jetbridge load: {} build(s) of {} through {} server(s) in {:.1} s{}\n",
            self.submitted,
            self.workload,
            self.servers.len(),
            self.wall_seconds,
            self.builds_per_minute
                .map_or(String::new(), |b| format!(" ({b:.1} builds/min)"))
        );
        out.push_str(&format!("  outcomes: {}\n", self.outcome_line()));
        for r in self.unexpected_builds.iter().take(10) {
            out.push_str(&format!(
                "    build {} ({}): {}\n",
                r.id.map_or("-".to_owned(), |i| i.to_string()),
                r.entry,
                r.error.as_deref().or(r.unexpected.as_deref()).unwrap_or("")
            ));
        }
        out.push_str(&self.latency_table(false));
        let peaks = [
            ("queued", self.peak_queued),
            ("running builds", self.peak_running_builds),
            ("running steps", self.peak_running_steps),
            ("pods", self.peak_pods),
        ];
        let peaks: Vec<String> = peaks
            .iter()
            .filter_map(|(n, v)| v.map(|v| format!("{n} {v:.0}")))
            .collect();
        if !peaks.is_empty() {
            out.push_str(&format!("  peaks: {}\n", peaks.join(", ")));
        }
        for r in &self.replicas {
            out.push_str(&format!(
                "  replica {}: peak RSS {} MiB, peak fds {}, CPU {} s\n",
                r.metrics,
                r.peak_rss_mib.map_or("?".into(), |v| format!("{v:.1}")),
                r.peak_open_fds.map_or("?".into(), |v| format!("{v:.0}")),
                r.cpu_seconds.map_or("?".into(), |v| format!("{v:.1}"))
            ));
        }
        out.push_str("  verdict:\n");
        for c in &self.checks {
            let mark = match c.ok {
                Some(true) => "ok  ",
                Some(false) => "FAIL",
                None => "--  ",
            };
            out.push_str(&format!("    {mark} {}: {}\n", c.name, c.detail));
        }
        if self.passed() {
            out.push_str("  result: PASS\n");
        } else {
            out.push_str(&format!("  result: FAIL ({})\n", self.failed().join("; ")));
        }
        out
    }

    fn markdown(&self) -> String {
        let mut md = String::from("# jetbridge load report\n\n");
        md.push_str(&format!(
            "- started: {} (Unix time)\n- servers: {}\n- metrics: {}\n- workload: {}{}\n- wall time: {:.1} s{}\n- outcomes: {}\n\n",
            self.started_at_unix,
            self.servers.join(", "),
            if self.metrics.is_empty() { "none".to_owned() } else { self.metrics.join(", ") },
            self.workload,
            if self.soak { " (soak)" } else { "" },
            self.wall_seconds,
            self.builds_per_minute.map_or(String::new(), |b| format!(", {b:.1} builds/min")),
            self.outcome_line()
        ));
        md.push_str(&format!(
            "**Result: {}**\n\n## Verdict\n\n| check | result | detail |\n|---|---|---|\n",
            if self.passed() {
                "PASS".to_owned()
            } else {
                format!("FAIL ({})", self.failed().join("; "))
            }
        ));
        for c in &self.checks {
            let r = match c.ok {
                Some(true) => "ok",
                Some(false) => "**FAIL**",
                None => "not checked",
            };
            md.push_str(&format!(
                "| {} | {r} | {} |\n",
                c.name,
                c.detail.replace('|', "/")
            ));
        }
        md.push_str("\n## Builds by kind\n\n| kind | builds | ended as | unexpected | errors |\n|---|---:|---|---:|---:|\n");
        for (name, e) in &self.entries {
            let states: Vec<String> = e.by_state.iter().map(|(s, n)| format!("{s} {n}")).collect();
            md.push_str(&format!(
                "| {name} | {} | {} | {} | {} |\n",
                e.builds,
                states.join(", "),
                e.unexpected,
                e.errors
            ));
        }
        md.push_str("\n## Latency\n\n");
        md.push_str(&self.latency_table(true));
        md.push_str("\n`submit -> first step started` is measured here, from sending the submission to receiving the build's first `step-started` event; queue wait and build duration are the server's timestamps; step rows are each step's wall time over its attempts (`step-finished`); phase rows are estimated from the replicas' `jetbridge_step_phase_duration_seconds` buckets (their max is a bucket's upper bound).\n\n![latency](latency.png)\n\n## Over time\n\n![builds](builds.png)\n![queue](queue.png)\n![pods](pods.png)\n![rss](rss.png)\n![fds](fds.png)\n\n## Replicas\n\n| metrics | peak RSS (MiB) | peak fds | CPU (s) | RSS slope (MiB/h) | fd slope (/h) |\n|---|---:|---:|---:|---:|---:|\n");
        for r in &self.replicas {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r.metrics,
                r.peak_rss_mib.map_or("?".into(), |v| format!("{v:.1}")),
                r.peak_open_fds.map_or("?".into(), |v| format!("{v:.0}")),
                r.cpu_seconds.map_or("?".into(), |v| format!("{v:.1}")),
                r.rss_fit.map_or("-".into(), |f| format!(
                    "{:+.2}",
                    f.slope * 3600.0 / 1048576.0
                )),
                r.fd_fit
                    .map_or("-".into(), |f| format!("{:+.2}", f.slope * 3600.0)),
            ));
        }
        if let Some((a, b)) = self.steady_state_seconds {
            md.push_str(&format!("\nSteady state: {a:.0} s to {b:.0} s after the start (slopes are Theil–Sen fits over it).\n"));
        }
        md.push_str(&format!(
            "\nPeaks: store {} bytes in {} volume(s), {} registry artifact row(s).\n",
            self.peak_store_bytes.map_or("?".into(), |v| v.to_string()),
            self.peak_store_volumes
                .map_or("?".into(), |v| v.to_string()),
            self.peak_registry_artifacts
                .map_or("?".into(), |v| v.to_string()),
        ));
        md
    }

    /// `report.json`, `report.md` and the plots, into `dir`.
    pub fn write(&self, dir: &Path, samples: &[Sample]) -> anyhow::Result<()> {
        let json = serde_json::json!({ "report": self, "samples": samples });
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_vec_pretty(&json).context("encoding the report")?,
        )
        .with_context(|| format!("writing {}", dir.join("report.json").display()))?;
        std::fs::write(dir.join("report.md"), self.markdown())
            .with_context(|| format!("writing {}", dir.join("report.md").display()))?;
        super::plot::all(dir, self, samples)
    }
}
