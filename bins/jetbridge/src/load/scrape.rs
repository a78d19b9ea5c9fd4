//! Reading a replica's `/metrics` (the OpenMetrics text the server serves) into the
//! figures the harness samples.

use std::collections::BTreeMap;

use serde::Serialize;

/// One sample line: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The sample's name (`jetbridge_builds_total`, `..._bucket`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Every sample of an exposition, comments left out.
pub fn parse(text: &str) -> Vec<Line> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Line> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(i) => {
            let end = line[i..].find('}')? + i;
            (
                &line[..i],
                parse_labels(&line[i + 1..end]),
                &line[end + 1..],
            )
        }
        None => {
            let sp = line.find(' ')?;
            (&line[..sp], BTreeMap::new(), &line[sp..])
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Line {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_owned();
        let after = &rest[eq + 1..];
        let Some(after) = after.strip_prefix('"') else {
            break;
        };
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key, value);
        rest = &after[end..];
    }
    out
}

/// What the harness reads of one replica at one time.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    /// `jetbridge_queue_depth{state="queued"}` (across replicas).
    pub queued: f64,
    /// `jetbridge_queue_depth{state="running"}`.
    pub running: f64,
    /// `jetbridge_builds_running` (this replica).
    pub builds_running: f64,
    /// `jetbridge_steps_running`.
    pub steps_running: f64,
    /// `jetbridge_pods_owned`.
    pub pods_owned: f64,
    /// `jetbridge_secrets_owned` (Kubernetes only).
    pub secrets_owned: Option<f64>,
    /// `jetbridge_submissions_total`, every result.
    pub submissions: f64,
    /// `jetbridge_kube_requests_total`, every verb and code.
    pub kube_requests: f64,
    /// `jetbridge_process_resident_memory_bytes`.
    pub rss_bytes: f64,
    /// `jetbridge_process_open_fds`.
    pub open_fds: f64,
    /// `jetbridge_process_cpu_seconds`.
    pub cpu_seconds: f64,
    /// `jetbridge_reaper_passes_total`, every result.
    pub reaper_passes: f64,
    /// `jetbridge_reaper_last_clean_pass_timestamp_seconds`.
    pub last_clean_pass: f64,
    /// `jetbridge_artifact_bytes_total`, both directions.
    pub artifact_bytes: f64,
    /// `jetbridge_builds_total` by status.
    #[serde(skip)]
    pub builds_ended: BTreeMap<String, f64>,
    /// `jetbridge_step_phase_duration_seconds` cumulative buckets by phase.
    #[serde(skip)]
    pub phases: BTreeMap<String, Vec<(f64, f64)>>,
}

impl Figures {
    /// The figures of an exposition's text.
    pub fn of(text: &str) -> Figures {
        let lines = parse(text);
        let sum = |name: &str| -> f64 {
            lines
                .iter()
                .filter(|l| l.name == name)
                .map(|l| l.value)
                .sum()
        };
        let with = |name: &str, k: &str, v: &str| -> f64 {
            lines
                .iter()
                .filter(|l| l.name == name && l.labels.get(k).map(String::as_str) == Some(v))
                .map(|l| l.value)
                .sum()
        };
        let mut builds_ended = BTreeMap::new();
        let mut phases: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for l in &lines {
            if l.name == "jetbridge_builds_total"
                && let Some(s) = l.labels.get("status")
            {
                *builds_ended.entry(s.clone()).or_default() += l.value;
            }
            if l.name == "jetbridge_step_phase_duration_seconds_bucket"
                && let (Some(p), Some(le)) = (l.labels.get("phase"), l.labels.get("le"))
            {
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                };
                phases.entry(p.clone()).or_default().push((le, l.value));
            }
        }
        for b in phases.values_mut() {
            b.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        Figures {
            queued: with("jetbridge_queue_depth", "state", "queued"),
            running: with("jetbridge_queue_depth", "state", "running"),
            builds_running: sum("jetbridge_builds_running"),
            steps_running: sum("jetbridge_steps_running"),
            pods_owned: sum("jetbridge_pods_owned"),
            secrets_owned: lines
                .iter()
                .any(|l| l.name == "jetbridge_secrets_owned")
                .then(|| sum("jetbridge_secrets_owned")),
            submissions: sum("jetbridge_submissions_total"),
            kube_requests: sum("jetbridge_kube_requests_total"),
            rss_bytes: sum("jetbridge_process_resident_memory_bytes"),
            open_fds: sum("jetbridge_process_open_fds"),
            cpu_seconds: sum("jetbridge_process_cpu_seconds"),
            reaper_passes: sum("jetbridge_reaper_passes_total"),
            last_clean_pass: sum("jetbridge_reaper_last_clean_pass_timestamp_seconds"),
            artifact_bytes: sum("jetbridge_artifact_bytes_total"),
            builds_ended,
            phases,
        }
    }
}

/// Buckets `after` minus `before`, bound by bound (what was observed between them).
pub fn bucket_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, n)| {
            let was = before
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |(_, c)| *c);
            (le, (n - was).max(0.0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP jetbridge_queue_depth Builds.\n\
# TYPE jetbridge_queue_depth gauge\n\
jetbridge_queue_depth{state=\"queued\"} 3\n\
jetbridge_queue_depth{state=\"running\"} 2\n\
jetbridge_builds_running 2\n\
jetbridge_process_resident_memory_bytes 1.5e7\n\
jetbridge_reaper_passes_total{result=\"clean\"} 4\n\
jetbridge_reaper_passes_total{result=\"with-errors\"} 1\n\
jetbridge_builds_total{status=\"failed\"} 2\n\
jetbridge_kube_requests_total{verb=\"create\",code=\"201\"} 7\n\
jetbridge_step_phase_duration_seconds_bucket{phase=\"command\",le=\"0.5\"} 1\n\
jetbridge_step_phase_duration_seconds_bucket{phase=\"command\",le=\"+Inf\"} 3\n\
jetbridge_step_phase_duration_seconds_bucket{phase=\"command\",le=\"1.0\"} 2\n\
jetbridge_label_escape{a=\"x\\\"y,z\",b=\"w\"} 1\n\
# EOF\n";

    #[test]
    fn the_exposition_reads_into_the_figures() {
        let f = Figures::of(TEXT);
        assert_eq!((f.queued, f.running, f.builds_running), (3.0, 2.0, 2.0));
        assert_eq!(f.rss_bytes, 1.5e7);
        assert_eq!(f.reaper_passes, 5.0);
        assert_eq!(f.kube_requests, 7.0);
        assert_eq!(f.secrets_owned, None);
        assert_eq!(f.builds_ended.get("failed"), Some(&2.0));
        assert_eq!(
            f.phases["command"],
            vec![(0.5, 1.0), (1.0, 2.0), (f64::INFINITY, 3.0)]
        );
        let l = parse(TEXT)
            .into_iter()
            .find(|l| l.name == "jetbridge_label_escape")
            .unwrap();
        assert_eq!(l.labels["a"], "x\"y,z");
        assert_eq!(l.labels["b"], "w");
    }

    #[test]
    fn bucket_deltas_count_what_came_between() {
        let before = [(1.0, 2.0), (f64::INFINITY, 3.0)];
        let after = [(1.0, 5.0), (f64::INFINITY, 9.0)];
        assert_eq!(
            bucket_delta(&before, &after),
            vec![(1.0, 3.0), (f64::INFINITY, 6.0)]
        );
    }
}
