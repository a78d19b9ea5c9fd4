//! What a person (or a machine) sees of a build: step starts and ends, each step's
//! output prefixed by its name, and a summary.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jetbridge_core::ports::{OutputSink, OutputStream};
use jetbridge_core::services::{BuildEvents, BuildOutcome, StepSummary, fmt_duration};
use jetbridge_server::api::{OutcomeView, StepView};
use serde_json::json;

/// Prints build events to stdout, in text or JSON lines.
#[derive(Debug, Clone)]
pub struct Printer {
    json: bool,
    color: bool,
    lock: Arc<Mutex<()>>,
}

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const CYAN: &str = "\x1b[36m";

impl Printer {
    /// A printer.
    pub fn new(json: bool, color: bool) -> Self {
        Printer {
            json,
            color,
            lock: Arc::new(Mutex::new(())),
        }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("{code}{s}{RESET}")
        } else {
            s.to_owned()
        }
    }

    fn emit_line(&self, text: &str) {
        let _guard = self.lock.lock();
        let mut out = std::io::stdout().lock();
        // A closed stdout (piped into `head`) must not crash the build.
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    fn emit_json(&self, v: serde_json::Value) {
        self.emit_line(&v.to_string());
    }

    /// A line about the build as a whole.
    pub fn info(&self, message: &str) {
        if self.json {
            self.emit_json(json!({"event": "info", "message": message}));
        } else {
            self.emit_line(&self.paint(DIM, message));
        }
    }

    /// Something the user should know that does not stop the command.
    pub fn warning(&self, message: &str) {
        if self.json {
            self.emit_json(json!({"event": "warning", "message": message}));
        } else {
            self.emit_line(&self.paint(YELLOW, &format!("warning: {message}")));
        }
    }

    /// The closing summary.
    /// The end of a build run here.
    pub fn summary(&self, outcome: &BuildOutcome, total: Duration) {
        self.summary_view(&OutcomeView::of(outcome, total), total);
    }

    /// The end of a build, as the server reports it (and as `summary` shows one run
    /// here: both go through the same view, so they print the same).
    pub fn summary_view(&self, outcome: &OutcomeView, total: Duration) {
        if self.json {
            let steps: Vec<_> = outcome
                .steps
                .iter()
                .map(|s| {
                    json!({
                        "step": s.name,
                        "result": s.result,
                        "ok": s.ok,
                        "duration_ms": s.duration_ms,
                        "attempt": s.attempts,
                        "artifacts": s.artifacts.iter().map(|a| json!({
                            "name": a.name,
                            "size": a.size,
                            "digest": a.digest,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            self.emit_json(json!({
                "event": "summary",
                "status": outcome.status,
                "duration_ms": total.as_millis() as u64,
                "failed_step": outcome.failed_step,
                "reason": outcome.reason,
                "steps": steps,
            }));
            return;
        }
        let rows: Vec<[String; 4]> = outcome
            .steps
            .iter()
            .map(|s| {
                let arts = s
                    .artifacts
                    .iter()
                    .map(|a| {
                        let d = a.digest.as_deref().unwrap_or("");
                        let short = d
                            .strip_prefix("sha256:")
                            .map(|h| &h[..12.min(h.len())])
                            .unwrap_or("");
                        format!("{} ({}, {})", a.name, human_bytes(a.size), short)
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let name = if s.attempts > 1 {
                    format!("{} (attempt {})", s.name, s.attempts)
                } else {
                    s.name.clone()
                };
                [
                    name,
                    clip(&s.result, RESULT_CELL),
                    fmt_duration(Duration::from_millis(s.duration_ms)),
                    arts,
                ]
            })
            .collect();
        let header = [
            "STEP".to_owned(),
            "RESULT".to_owned(),
            "DURATION".to_owned(),
            "ARTIFACTS".to_owned(),
        ];
        let mut widths = [0usize; 3];
        for r in rows.iter().chain(std::iter::once(&header)) {
            for i in 0..3 {
                widths[i] = widths[i].max(r[i].chars().count());
            }
        }
        let fmt_row = |r: &[String; 4]| {
            format!(
                "  {:w0$}  {:w1$}  {:w2$}  {}",
                r[0],
                r[1],
                r[2],
                r[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            )
            .trim_end()
            .to_owned()
        };
        self.emit_line("");
        self.emit_line(&self.paint(BOLD, "Summary"));
        self.emit_line(&self.paint(DIM, &fmt_row(&header)));
        for (r, s) in rows.iter().zip(&outcome.steps) {
            let line = fmt_row(r);
            self.emit_line(&if s.ok { line } else { self.paint(RED, &line) });
        }
        let status = outcome.status.as_str();
        let verdict = match (status, &outcome.failed_step, &outcome.reason) {
            ("succeeded", _, _) => self.paint(
                GREEN,
                &format!("build succeeded in {}", fmt_duration(total)),
            ),
            (status, Some(step), Some(why)) => self.paint(
                RED,
                &format!("build {status} in {}: {step} {why}", fmt_duration(total)),
            ),
            (status, _, _) => {
                self.paint(RED, &format!("build {status} in {}", fmt_duration(total)))
            }
        };
        self.emit_line(&verdict);
    }

    /// A step that ended, as the server reports it.
    pub fn step_finished_view(&self, s: &StepView) {
        let took = Duration::from_millis(s.duration_ms);
        if self.json {
            self.emit_json(json!({
                "event": "step_finished",
                "step": s.name,
                "ok": s.ok,
                "result": s.result,
                "duration_ms": s.duration_ms,
                "attempt": s.attempts,
            }));
        } else if s.ok {
            self.emit_line(&self.paint(GREEN, &format!("✓ {} ({})", s.name, fmt_duration(took))));
        } else {
            self.emit_line(&self.paint(
                RED,
                &format!("✗ {}: {} ({})", s.name, s.result, fmt_duration(took)),
            ));
        }
    }
}

const RESULT_CELL: usize = 72;

/// `s` cut to `max` characters, ending in `…` when cut.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl BuildEvents for Printer {
    fn step_started(&self, name: &str, kind: &str) {
        if self.json {
            self.emit_json(json!({"event": "step_started", "step": name, "kind": kind}));
        } else {
            self.emit_line(&self.paint(CYAN, &format!("▶ {name}")));
        }
    }

    fn step_output(&self, name: &str) -> Arc<dyn OutputSink> {
        Arc::new(StepLines {
            printer: self.clone(),
            step: name.to_owned(),
            pending: Mutex::new((Vec::new(), Vec::new())),
        })
    }

    fn step_finished(&self, s: &StepSummary) {
        self.step_finished_view(&StepView::of(s));
    }

    fn notice(&self, message: &str) {
        if self.json {
            self.emit_json(json!({"event": "notice", "message": message}));
        } else {
            self.emit_line(&self.paint(YELLOW, &format!("note: {message}")));
        }
    }
}

/// Splits a step's output into lines and prints each with the step's name.
struct StepLines {
    printer: Printer,
    step: String,
    pending: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl StepLines {
    fn line(&self, stream: OutputStream, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end_matches('\r');
        if self.printer.json {
            let s = if stream == OutputStream::Stdout {
                "stdout"
            } else {
                "stderr"
            };
            self.printer.emit_json(
                json!({"event": "output", "step": self.step, "stream": s, "line": text}),
            );
        } else {
            let prefix = self.printer.paint(DIM, &format!("[{}]", self.step));
            self.printer.emit_line(&format!("{prefix} {text}"));
        }
    }
}

impl OutputSink for StepLines {
    fn write(&self, stream: OutputStream, data: &[u8]) {
        let mut complete = Vec::new();
        if let Ok(mut p) = self.pending.lock() {
            let buf = if stream == OutputStream::Stdout {
                &mut p.0
            } else {
                &mut p.1
            };
            buf.extend_from_slice(data);
            while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let rest = buf.split_off(i + 1);
                let mut line = std::mem::replace(buf, rest);
                line.pop();
                complete.push(line);
            }
        }
        for l in complete {
            self.line(stream, &l);
        }
    }
}

impl Drop for StepLines {
    fn drop(&mut self) {
        // A last line without a newline is still shown.
        let (out, err) = match self.pending.get_mut() {
            Ok(p) => (std::mem::take(&mut p.0), std::mem::take(&mut p.1)),
            Err(_) => return,
        };
        if !out.is_empty() {
            self.line(OutputStream::Stdout, &out);
        }
        if !err.is_empty() {
            self.line(OutputStream::Stderr, &err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_well() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }

    #[test]
    fn long_results_are_clipped_by_characters() {
        assert_eq!(clip("exited with status 3", 72), "exited with status 3");
        assert_eq!(clip("abcdef", 4), "abc…");
        // Characters, not bytes: never a cut inside a multi-byte one.
        assert_eq!(clip("ééééé", 3), "éé…");
        assert_eq!(
            clip(&"x".repeat(500), RESULT_CELL).chars().count(),
            RESULT_CELL
        );
    }
}
