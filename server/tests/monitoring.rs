//! The chart's monitoring files (charts/jetbridge/files): the alert rules pass
//! `promtool check rules` and their unit tests, every alert has a firing and a quiet
//! case and a runbook section in docs/monitoring.md showing its expression, the
//! dashboard is a Grafana dashboard over a data source variable whose queries parse and
//! show every metric, and every metric an alert or a dashboard panel reads is one a
//! running server exports on its metrics port.
//!
//! promtool comes from Debian's `prometheus` package: `.ci/install-tools.sh` installs it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use jetbridge_core::images::ImageResolver;
use jetbridge_core::services::{BuildRunner, NoEvents, SessionConfig, StepConfig, WorkerSession};
use jetbridge_memory_registry::{MemoryBuildQueue, RegistryClock};
use jetbridge_server::metrics::{CountingVolumes, METRICS, Metrics, PhaseLayer};
use jetbridge_server::{Server, ServerConfig};
use serde::Deserialize;
use serde_json::{Value, json};

const FILES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/jetbridge/files");
const ALERTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../charts/jetbridge/files/alerts.yaml"
);
const ALERTS_TEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../charts/jetbridge/files/alerts_test.yaml"
);
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../charts/jetbridge/files/dashboard.json"
);
const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/monitoring.md");
/// Where every alert's runbook lives: its section of docs/monitoring.md.
const RUNBOOKS: &str = "https://github.com/jetbridge/jetbridge/blob/main/docs/monitoring.md#";

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

// ---------------------------------------------------------------------------------
// promtool

/// Runs promtool in the chart's files directory; a missing promtool fails the test.
fn promtool(args: &[&str]) {
    promtool_in(Path::new(FILES), args);
}

/// Runs promtool in `dir`, asserting that it succeeds.
fn promtool_in(dir: &Path, args: &[&str]) {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed; run `.ci/install-tools.sh` (it installs Debian's \
             `prometheus` package, which has promtool)"
        ),
        Err(e) => panic!("running promtool: {e}"),
    };
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_pass_promtool_check() {
    promtool(&["check", "rules", "alerts.yaml"]);
}

#[test]
fn the_alert_unit_tests_pass() {
    promtool(&["test", "rules", "alerts_test.yaml"]);
}

// ---------------------------------------------------------------------------------
// The rule files

#[derive(Debug, Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    #[serde(rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct TestFile {
    tests: Vec<UnitTest>,
}

#[derive(Debug, Deserialize)]
struct UnitTest {
    #[serde(default)]
    alert_rule_test: Vec<AlertRuleTest>,
}

#[derive(Debug, Deserialize)]
struct AlertRuleTest {
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<serde::de::IgnoredAny>,
}

fn rules() -> Vec<Rule> {
    let file: RuleFile = serde_saphyr::from_str(&read(ALERTS)).expect("alerts.yaml");
    assert!(!file.groups.is_empty(), "alerts.yaml has no groups");
    file.groups
        .into_iter()
        .inspect(|g| assert!(!g.rules.is_empty(), "group {} has no rules", g.name))
        .flat_map(|g| g.rules)
        .collect()
}

fn alert_name(r: &Rule) -> String {
    r.alert
        .clone()
        .or_else(|| r.record.clone())
        .unwrap_or_default()
}

/// The anchors GitHub gives the headings of a Markdown file.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let text = line.trim_start_matches('#').trim();
        let slug: String = text
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        out.insert(slug);
    }
    out
}

#[test]
fn every_alert_has_a_wait_a_severity_a_summary_and_a_runbook_section() {
    let doc = read(DOC);
    let anchors = anchors(&doc);
    let mut names = BTreeSet::new();
    for r in rules() {
        let name = alert_name(&r);
        assert!(
            r.alert.is_some(),
            "{name}: only alerts belong in alerts.yaml"
        );
        assert!(names.insert(name.clone()), "{name} is defined twice");
        assert!(!r.expr.trim().is_empty(), "{name}: no expr");
        assert!(
            r.for_.as_deref().is_some_and(|f| !f.is_empty()),
            "{name}: no `for:`"
        );
        let severity = r.labels.get("severity").map(String::as_str);
        assert!(
            matches!(severity, Some("critical" | "warning" | "info")),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                r.annotations.get(key).is_some_and(|v| !v.trim().is_empty()),
                "{name}: no {key} annotation"
            );
        }
        let url = &r.annotations["runbook_url"];
        let anchor = url
            .strip_prefix(RUNBOOKS)
            .unwrap_or_else(|| panic!("{name}: runbook_url {url} is not under {RUNBOOKS}"));
        assert_eq!(
            anchor,
            name.to_lowercase(),
            "{name}: the runbook anchor is the alert's name"
        );
        assert!(
            anchors.contains(anchor),
            "{name}: docs/monitoring.md has no section #{anchor}"
        );
        let shown = documented_expr(&doc, &name)
            .unwrap_or_else(|| panic!("{name}: its section shows no ```promql block"));
        let words = |e: &str| e.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(
            words(&shown),
            words(&r.expr),
            "{name}: docs/monitoring.md shows another expression than alerts.yaml"
        );
    }
}

/// The first ```promql block of the section `### {name}` of the doc.
fn documented_expr(doc: &str, name: &str) -> Option<String> {
    let heading = format!("### {name}\n");
    let section = &doc[doc.find(&heading)? + heading.len()..];
    let section = &section[..section.find("\n### ").unwrap_or(section.len())];
    let block = &section[section.find("```promql\n")? + "```promql\n".len()..];
    Some(block[..block.find("```")?].to_owned())
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_case_in_its_unit_tests() {
    let tests: TestFile = serde_saphyr::from_str(&read(ALERTS_TEST)).expect("alerts_test.yaml");
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for t in tests.tests.iter().flat_map(|t| &t.alert_rule_test) {
        if t.exp_alerts.is_empty() {
            quiet.insert(t.alertname.clone());
        } else {
            firing.insert(t.alertname.clone());
        }
    }
    let alerts: BTreeSet<String> = rules().iter().map(alert_name).collect();
    for a in &alerts {
        assert!(firing.contains(a), "{a}: no test case where it fires");
        assert!(quiet.contains(a), "{a}: no test case where it stays quiet");
    }
    let unknown: Vec<&String> = firing
        .union(&quiet)
        .filter(|a| !alerts.contains(*a))
        .collect();
    assert!(
        unknown.is_empty(),
        "tests of alerts that do not exist: {unknown:?}"
    );
}

// ---------------------------------------------------------------------------------
// The dashboard

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("dashboard.json is JSON")
}

/// Every panel, the rows' nested ones included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// Each query of the dashboard, with where it is: panel targets and variable queries
/// (`label_values(METRIC, LABEL)`: the metric part).
fn dashboard_queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            out.push((
                format!("panel {:?}", p["title"].as_str().unwrap_or_default()),
                expr.to_owned(),
            ));
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap_or_default();
        let inner = q
            .trim()
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'));
        if let Some((metric, _label)) = inner.and_then(|i| i.rsplit_once(',')) {
            out.push((
                format!("variable {:?}", v["name"].as_str().unwrap_or_default()),
                metric.to_owned(),
            ));
        }
    }
    out
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_over_a_prometheus_datasource_variable() {
    let d = dashboard();
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()), "no uid");
    assert!(
        d["title"].as_str().is_some_and(|t| !t.is_empty()),
        "no title"
    );
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no `datasource` variable of type prometheus"
    );
    let ours = json!({"type": "prometheus", "uid": "${datasource}"});
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(v["datasource"], ours, "variable {}", v["name"]);
    }
    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or_default().to_owned();
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "{title}: id {id} is taken");
        let g = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k}"))
        });
        assert!(x + w <= 24 && w > 0 && h > 0, "{title}: gridPos {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title.clone()) {
                    panic!("{title} overlaps {other}");
                }
            }
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"], ours, "{title}: datasource");
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert_eq!(t["datasource"], ours, "{title}: target datasource");
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title}: a target without expr"
            );
            let r = t["refId"].as_str().unwrap_or_default();
            assert!(!r.is_empty() && refs.insert(r), "{title}: refId {r:?}");
        }
    }
}

/// A dashboard query as Prometheus gets it: Grafana's interval variables become
/// durations, the others (the `namespace` and `pod` regexes) match anything.
fn grafana_to_promql(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        let (name, len) = match tail.strip_prefix('{') {
            Some(braced) => {
                let end = braced.find('}').expect("a closed ${...}");
                (&braced[..end], end + 2)
            }
            None => {
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                (&tail[..end], end)
            }
        };
        out.push_str(match name {
            "__rate_interval" | "__interval" => "5m",
            "__range" => "1h",
            _ => ".*",
        });
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
}

#[test]
fn the_dashboard_queries_are_promql() {
    let d = dashboard();
    let rules: Vec<Value> = dashboard_queries(&d)
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| json!({"record": format!("dashboard:query_{i}"), "expr": grafana_to_promql(expr)}))
        .collect();
    assert!(!rules.is_empty());
    // promtool parses every query as the expression of a recording rule (JSON is YAML).
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dashboard-rules.yaml");
    let groups = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, groups.to_string()).expect("writing the rules");
    promtool_in(dir.path(), &["check", "rules", "dashboard-rules.yaml"]);
}

#[test]
fn grafana_variables_become_promql() {
    assert_eq!(
        grafana_to_promql(r#"rate(m{pod=~"$pod", ns=~"${namespace}"}[$__rate_interval])"#),
        r#"rate(m{pod=~".*", ns=~".*"}[5m])"#
    );
}

/// Whether `name` is a sample name of a metric METRICS lists.
fn listed(name: &str) -> bool {
    METRICS.iter().any(|(n, kind, _)| {
        name == *n
            || (*kind == "histogram"
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name == format!("{n}{s}")))
    })
}

#[test]
fn the_dashboard_shows_every_metric() {
    let d = dashboard();
    let read: BTreeSet<String> = dashboard_queries(&d)
        .iter()
        .flat_map(|(_, e)| metric_names(e))
        .collect();
    for (name, kind, _) in METRICS {
        let shown = if *kind == "histogram" {
            ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| read.contains(&format!("{name}{s}")))
        } else {
            read.contains(*name)
        };
        assert!(shown, "no dashboard panel shows {name}");
    }
}

#[test]
fn the_monitoring_doc_names_every_metric_and_only_those() {
    let doc = read(DOC);
    for (name, _, _) in METRICS {
        assert!(
            doc.contains(&format!("`{name}`")),
            "docs/monitoring.md does not describe `{name}`"
        );
    }
    let mut rest = doc.as_str();
    while let Some(at) = rest.find("jetbridge_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        assert!(
            listed(name),
            "docs/monitoring.md names {name}, which the server does not export"
        );
        rest = &tail[end..];
    }
}

// ---------------------------------------------------------------------------------
// Metric names in PromQL

/// Keywords of PromQL that look like identifiers.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
];

/// Keywords followed by a list of label names in parentheses.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The index after the string literal opening at `i`.
fn skip_string(c: &[char], i: usize) -> usize {
    let quote = c[i];
    let mut j = i + 1;
    while j < c.len() {
        match c[j] {
            '\\' if quote != '`' => j += 2,
            q if q == quote => return j + 1,
            _ => j += 1,
        }
    }
    c.len()
}

/// The index after the `close` that ends the bracket opening at `i`, strings skipped.
fn skip_group(c: &[char], i: usize, close: char) -> usize {
    let open = c[i];
    let mut depth = 0;
    let mut j = i;
    while j < c.len() {
        match c[j] {
            '"' | '\'' | '`' => {
                j = skip_string(c, j);
                continue;
            }
            x if x == open => depth += 1,
            x if x == close => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    c.len()
}

/// The metric names a PromQL expression reads: the identifiers that are not function
/// names, keywords, label names (in `{...}` matchers or `by (...)` and its kin),
/// durations, strings or Grafana variables (`$__rate_interval`, `${name}`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let c: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '"' | '\'' | '`' => i = skip_string(&c, i),
            '{' => i = skip_group(&c, i, '}'),
            '[' => i = skip_group(&c, i, ']'),
            '#' => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '$' => {
                i += 1;
                if c.get(i) == Some(&'{') {
                    i = skip_group(&c, i, '}');
                } else {
                    while i < c.len() && ident_char(c[i]) {
                        i += 1;
                    }
                }
            }
            // Numbers and durations (5m, 1h30m, 1e3, 0x1f, .5).
            d if d.is_ascii_digit()
                || (d == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.' || c[i] == '_') {
                    i += 1;
                }
            }
            s if ident_start(s) => {
                let start = i;
                while i < c.len() && ident_char(c[i]) {
                    i += 1;
                }
                let word: String = c[start..i].iter().collect();
                let mut next = i;
                while next < c.len() && c[next].is_whitespace() {
                    next += 1;
                }
                let paren = c.get(next) == Some(&'(');
                // `sum by (...) (...)`: an aggregation, its grouping first.
                let grouped = ["by", "without"].iter().any(|k| {
                    let end = next + k.len();
                    c.get(next..end)
                        .is_some_and(|w| w.iter().collect::<String>().eq_ignore_ascii_case(k))
                        && !c.get(end).copied().is_some_and(ident_char)
                });
                let lower = word.to_ascii_lowercase();
                if LABEL_LISTS.contains(&lower.as_str()) {
                    if paren {
                        i = skip_group(&c, next, ')');
                    }
                } else if KEYWORDS.contains(&lower.as_str()) || paren || grouped {
                    // A keyword, or a function's or an aggregation's name.
                } else {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

#[test]
fn metric_names_skip_functions_label_matchers_and_grouping_lists() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.95, sum by (namespace, le) (rate(jetbridge_queue_wait_seconds_bucket{state="queued", le=~"1|2"}[15m]))) > 300"#
        ),
        set(&["jetbridge_queue_wait_seconds_bucket"])
    );
    assert_eq!(
        metric_names("sum(rate(m_bucket[5m])) without (pod) / on (job) group_left (le) n"),
        set(&["m_bucket", "n"])
    );
    assert_eq!(
        metric_names("a > b or c > bool d and e unless f offset 1h30m"),
        set(&["a", "b", "c", "d", "e", "f"])
    );
    assert_eq!(
        metric_names("count without(pod)(bytes) + max BY (le) (byte_count) - sum(by_pod)"),
        set(&["bytes", "byte_count", "by_pod"])
    );
    assert_eq!(
        metric_names("x / ignoring (code) group_left y > 0.05 AND z"),
        set(&["x", "y", "z"])
    );
    assert_eq!(
        metric_names("absent(jetbridge_build_info) or vector(0) + Inf - NaN * 1e3"),
        set(&["jetbridge_build_info"])
    );
}

#[test]
fn metric_names_skip_strings_durations_subqueries_and_grafana_variables() {
    assert_eq!(
        metric_names(r#"label_replace(up, "dst", "$1 by (x) foo", 'src', `(.*)`)"#),
        set(&["up"])
    );
    assert_eq!(
        metric_names(
            r#"max by (pod) (rate(jetbridge_process_cpu_seconds{namespace=~"$namespace", pod=~"${pod}"}[$__rate_interval]))"#
        ),
        set(&["jetbridge_process_cpu_seconds"])
    );
    assert_eq!(
        metric_names("max_over_time(ns:jobs:rate5m[1h:5m]) * $factor + ${other} @ start()"),
        set(&["ns:jobs:rate5m"])
    );
    assert_eq!(
        metric_names(r#"a{l="} b"} # a comment naming c"#),
        set(&["a"])
    );
}

// ---------------------------------------------------------------------------------
// What the server exports

/// What a scrape holds: its sample names and its families with their types.
#[derive(Debug, Default)]
struct Exposition {
    samples: BTreeSet<String>,
    families: BTreeMap<String, String>,
}

impl Exposition {
    fn parse(text: &str) -> Self {
        let mut e = Exposition::default();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let mut parts = t.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    e.families.insert(name.to_owned(), kind.to_owned());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                e.samples.insert(line[..end].to_owned());
            }
        }
        e
    }

    /// Whether Prometheus gets a series named `name` from this scrape: a sample of it,
    /// or a family whose samples are so named (a counter's `_total`, a histogram's
    /// `_bucket`, `_sum` and `_count`) even if it has none yet.
    fn has(&self, name: &str) -> bool {
        self.samples.contains(name)
            || self.families.iter().any(|(family, kind)| {
                let suffixes: &[&str] = match kind.as_str() {
                    "counter" => &["_total"],
                    "histogram" => &["_bucket", "_sum", "_count"],
                    "summary" => &["", "_sum", "_count"],
                    "info" => &["_info"],
                    "gaugehistogram" => &["_bucket", "_gsum", "_gcount"],
                    _ => &[""],
                };
                suffixes.iter().any(|s| name == format!("{family}{s}"))
            })
    }

    /// The metric names of `queries` (where, expr) that this scrape lacks, with where.
    fn missing(&self, queries: &[(String, String)]) -> Vec<String> {
        let mut out = Vec::new();
        for (at, expr) in queries {
            for name in metric_names(expr) {
                if !self.has(&name) {
                    out.push(format!("{at}: {name}"));
                }
            }
        }
        out
    }
}

#[test]
fn a_name_the_scrape_lacks_is_reported() {
    let e = Exposition::parse(
        "# TYPE jetbridge_builds counter\n\
         # TYPE jetbridge_queue_wait_seconds histogram\n\
         jetbridge_queue_wait_seconds_bucket{le=\"+Inf\"} 0\n\
         # TYPE jetbridge_queue_depth gauge\n\
         # EOF\n",
    );
    let queries = |expr: &str| vec![("alert X".to_owned(), expr.to_owned())];
    assert!(
        e.missing(&queries(
            "rate(jetbridge_builds_total[5m]) + jetbridge_queue_depth + jetbridge_queue_wait_seconds_count"
        ))
        .is_empty()
    );
    assert_eq!(
        e.missing(&queries(
            "jetbridge_builds + jetbridge_queue_depth_total + nope"
        )),
        [
            "alert X: jetbridge_builds",
            "alert X: jetbridge_queue_depth_total",
            "alert X: nope"
        ]
    );
}

fn task(script: &str) -> String {
    format!(
        "jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      run: {{path: sh, args: [-c, {}]}}\n",
        serde_json::to_string(script).expect("json")
    )
}

/// A tar of `files` (path, text, mode), in base64 as the API takes uploads.
fn tar_of(files: &[(&str, &str, u32)]) -> String {
    let mut b = tar::Builder::new(Vec::new());
    for (path, text, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(*mode);
        h.set_cksum();
        b.append_data(&mut h, path, text.as_bytes()).expect("tar");
    }
    base64::engine::general_purpose::STANDARD.encode(b.into_inner().expect("tar"))
}

/// Serves `router` on a loopback port; its base URL.
async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    base
}

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    /// Queues a build; its id.
    async fn submit(&self, body: Value) -> u64 {
        let res = self
            .client
            .post(format!("{}/api/v1/builds", self.base))
            .json(&body)
            .send()
            .await
            .expect("submit");
        assert_eq!(res.status(), 201);
        res.json::<Value>().await.expect("a build")["id"]
            .as_u64()
            .expect("an id")
    }

    /// The build's event stream, open.
    async fn events(&self, id: u64) -> reqwest::Response {
        let res = self
            .client
            .get(format!("{}/api/v1/builds/{id}/events", self.base))
            .send()
            .await
            .expect("events");
        assert_eq!(res.status(), 200);
        res
    }
}

/// Reads `res` until `until` holds for the events read so far (`None`: to its end);
/// the events read.
async fn read_events(
    res: &mut reqwest::Response,
    buf: &mut Vec<u8>,
    until: Option<&str>,
) -> Vec<(Option<u64>, String, String)> {
    let events = |buf: &[u8]| jetbridge_server::sse::parse_all(&String::from_utf8_lossy(buf));
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(kind) = until
                && events(buf).iter().any(|(_, k, _)| k == kind)
            {
                return;
            }
            match res.chunk().await.expect("the event stream") {
                Some(chunk) => buf.extend_from_slice(&chunk),
                None => {
                    assert!(until.is_none(), "the stream ended before a {until:?} event");
                    return;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {until:?} event within a minute"));
    events(buf)
}

/// The final build of a whole event stream, which ends with it.
fn final_build(events: &[(Option<u64>, String, String)]) -> Value {
    let (_, kind, data) = events.last().expect("events");
    assert_eq!(kind, "end", "{events:?}");
    serde_json::from_str::<Value>(data).expect("the final build")["build"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_read_is_exported() {
    // Wired as `jetbridge server` wires them (bins/jetbridge/src/main.rs): phases timed
    // from the step spans, the store counted, reaper passes observed.
    let metrics = Arc::new(Metrics::new("monitoring-test"));
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        let subscriber = tracing_subscriber::registry().with(PhaseLayer::new(metrics.clone()));
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    }
    // This server has no Postgres pool and no Kubernetes client, so it would export
    // neither family; these probes stand in for the two that the binary sets from them.
    metrics.set_pool_probe(Box::new(|| Some((3, 7))));
    metrics.set_request_probe(Box::new(|| vec![("create".to_owned(), 201, 2)]));

    let dir = tempfile::tempdir().expect("tempdir");
    let rt = common::local_runtime(dir.path(), |store| {
        Arc::new(CountingVolumes::new(store, metrics.clone()))
    });
    let worker = "monitoring-test";
    let runner = BuildRunner::new(
        rt.clone(),
        StepConfig::default(),
        ImageResolver::new(),
        worker,
        Arc::new(NoEvents),
    );
    let session = WorkerSession::start(
        rt,
        runner,
        SessionConfig::new(worker)
            .with_reap_every(None)
            .with_on_reap({
                let metrics = metrics.clone();
                Arc::new(move |r| metrics.reaped(r))
            }),
    )
    .await
    .expect("session");
    // Leases are judged on a clock the test moves, so that one can lapse.
    let clock = RegistryClock::manual(SystemTime::now());
    let lease_ttl = Duration::from_secs(3600);
    let server = Server::start(
        Arc::new(MemoryBuildQueue::with_clock(clock.clone())),
        session.clone(),
        ImageResolver::new(),
        true,
        ServerConfig {
            metrics: Some(metrics.clone()),
            allow_local_resources: true,
            lease_ttl,
            reap_lapsed_every: Duration::from_millis(20),
            drain_timeout: Duration::from_secs(5),
            ..ServerConfig::default()
        },
    )
    .expect("server");
    let api = Api {
        base: serve(server.router()).await,
        client: reqwest::Client::new(),
    };
    let metrics_base = serve(server.metrics_router()).await;

    // A build that gets a resource, takes an uploaded input and succeeds, and one that
    // fails: the labelled families get their series.
    let bundle = tar_of(&[
        (
            "types/echo/check",
            "#!/bin/sh\necho '[{\"v\":\"1\"}]'\n",
            0o755,
        ),
        (
            "types/echo/in",
            "#!/bin/sh\nmkdir -p \"$1\"; echo hi > \"$1/text\"; echo '{\"version\":{\"v\":\"1\"}}'\n",
            0o755,
        ),
        (
            "types/echo/out",
            "#!/bin/sh\necho '{\"version\":{\"v\":\"1\"}}'\n",
            0o755,
        ),
    ]);
    let pipeline = "resource_types:\n- name: echo\n  type: local\n  source: {path: types/echo}\nresources:\n- name: r\n  type: echo\n  source: {}\njobs:\n- name: j\n  plan:\n  - get: r\n  - task: t\n    config:\n      platform: linux\n      inputs: [{name: r}, {name: src}]\n      run: {path: sh, args: [-c, 'cat r/text src/hello.txt']}\n";
    let input = tar_of(&[("hello.txt", "from-input\n", 0o644)]);
    for (body, state) in [
        (
            json!({"pipeline": pipeline, "file": "p.yml", "bundle": bundle, "inputs": {"src": input}}),
            "succeeded",
        ),
        (
            json!({"pipeline": task("exit 3"), "file": "p.yml"}),
            "failed",
        ),
    ] {
        let id = api.submit(body).await;
        let mut res = api.events(id).await;
        let events = read_events(&mut res, &mut Vec::new(), None).await;
        assert_eq!(final_build(&events)["state"], state, "{events:?}");
    }

    // A build whose lease lapses, as if its replica stalled past it: once its step
    // prints, the lease clock jumps past the lease, and the replica's lapse reaper
    // ends it "worker lost". (The loop ends by itself should nothing stop it.)
    let id = api
        .submit(json!({"pipeline": task("i=0; while [ $i -lt 300 ]; do echo tick; i=$((i+1)); sleep 0.1; done")}))
        .await;
    let mut res = api.events(id).await;
    let mut buf = Vec::new();
    read_events(&mut res, &mut buf, Some("output")).await;
    clock.advance(2 * lease_ttl);
    let events = read_events(&mut res, &mut buf, None).await;
    let lapsed = final_build(&events);
    assert_eq!(lapsed["state"], "errored", "{lapsed}");
    assert_eq!(
        lapsed["reason"],
        jetbridge_server::WORKER_LOST_REASON,
        "{lapsed}"
    );

    session.reap_now().await.expect("a reaper pass");

    let res = api
        .client
        .get(format!("{metrics_base}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(res.status(), 200);
    let text = res.text().await.expect("body");
    let scrape = Exposition::parse(&text);
    for (name, kind, _) in METRICS {
        let sample = if *kind == "histogram" {
            format!("{name}_count")
        } else {
            (*name).to_owned()
        };
        assert!(scrape.has(&sample), "the scrape lacks {sample}:\n{text}");
    }
    // Label values the alerts and the dashboard select on.
    for want in [
        "jetbridge_step_phase_duration_seconds_count{phase=\"start\"}",
        "jetbridge_step_duration_seconds_count{type=\"get\"}",
        "jetbridge_step_duration_seconds_count{type=\"task\"}",
        "jetbridge_queue_depth{state=\"queued\"}",
        "jetbridge_queue_depth{state=\"running\"}",
        "jetbridge_submissions_total{result=\"accepted\"}",
        "jetbridge_step_failures_total{class=\"failed\"}",
        "jetbridge_builds_total{status=\"failed\"}",
        "jetbridge_lapsed_builds_total{outcome=\"errored\"}",
        "jetbridge_artifact_bytes_total{direction=\"in\"}",
        "jetbridge_reaper_removals_total{kind=\"pods\"}",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(want)),
            "the scrape lacks {want}:\n{text}"
        );
    }

    let mut queries: Vec<(String, String)> = rules()
        .iter()
        .map(|r| (format!("alert {}", alert_name(r)), r.expr.clone()))
        .collect();
    queries.extend(dashboard_queries(&dashboard()));
    let read: BTreeSet<String> = queries.iter().flat_map(|(_, e)| metric_names(e)).collect();
    assert!(
        read.len() >= METRICS.len(),
        "the extractor found only {read:?}"
    );
    let missing = scrape.missing(&queries);
    assert!(
        missing.is_empty(),
        "metrics read by the alerts or the dashboard that the server does not export:\n{}\n\nthe scrape:\n{text}",
        missing.join("\n")
    );

    tokio::time::timeout(Duration::from_secs(60), server.drain())
        .await
        .expect("the drain ends")
        .expect("a clean drain");
}
