//! The report's PNG plots, drawn with plotters' bitmap backend. Text is rendered with
//! ab_glyph from the Go Regular font compiled into the binary (BSD-3-Clause, its
//! licence beside it in `assets/fonts/`), so no system font library is needed.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use super::Sample;
use super::report::Report;

static FONT: &[u8] = include_bytes!("../../assets/fonts/Go-Regular.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        // The font is part of the binary: it parses, or no plot has text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

const SIZE: (u32, u32) = (960, 440);

type Series = (String, Vec<(f64, f64)>);

/// Colours that stay apart on white (no yellow).
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(60, 60, 60),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot: {e}")
}

/// A line chart of `series` over the run's seconds.
fn lines(path: &Path, title: &str, y_desc: &str, series: &[Series]) -> anyhow::Result<()> {
    register_font();
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let xmax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(t, _)| *t))
        .fold(1.0f64, f64::max);
    let ymax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, v)| *v))
        .fold(0.0f64, f64::max);
    // Headroom above the data for the legend.
    let ymax = if ymax <= 0.0 { 1.0 } else { ymax * 1.45 };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start")
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = color(i);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    if !series.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}

/// Grouped bars: p50, p95, p99 and max of each latency, in seconds.
fn latency(path: &Path, report: &Report) -> anyhow::Result<()> {
    register_font();
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let rows: Vec<(&str, [f64; 4])> = report
        .latency_ms
        .iter()
        .map(|(name, p)| {
            let name = name.split_once(' ').map_or(name.as_str(), |(_, n)| n);
            (name, [p.p50, p.p95, p.p99, p.max].map(|v| v / 1000.0))
        })
        .collect();
    let n = rows.len().max(1) as f64;
    let ymax = rows
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max);
    let ymax = if ymax <= 0.0 { 1.0 } else { ymax * 1.3 };
    let mut chart = ChartBuilder::on(&root)
        .caption("latency percentiles", ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(90)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("seconds")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    let names = ["p50", "p95", "p99", "max"];
    for (j, name) in names.iter().enumerate() {
        let color = color(j);
        let bars = rows.iter().enumerate().map(move |(i, (_, v))| {
            let x0 = i as f64 + 0.1 + j as f64 * 0.2;
            Rectangle::new([(x0, 0.0), (x0 + 0.18, v[j])], color.filled())
        });
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    // Each group's name under it, wrapped at its words.
    let style = TextStyle::from(("sans-serif", 13).into_font()).pos(
        plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        ),
    );
    for (i, (name, _)) in rows.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        let mut line = String::new();
        let mut k = 0;
        let per_line = ((SIZE.0 as f64 - 100.0) / n / 7.5).max(8.0) as usize;
        for word in name.split(' ') {
            if !line.is_empty() && line.len() + word.len() + 1 > per_line {
                root.draw_text(&line, &style, (x, y + 8 + k * 16))
                    .map_err(err)?;
                line.clear();
                k += 1;
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        if !line.is_empty() {
            root.draw_text(&line, &style, (x, y + 8 + k * 16))
                .map_err(err)?;
        }
    }
    root.present().map_err(err)
}

/// Every plot of the report, into `dir`.
pub fn all(dir: &Path, report: &Report, samples: &[Sample]) -> anyhow::Result<()> {
    latency(&dir.join("latency.png"), report)?;
    let series = |name: &str, f: &dyn Fn(&Sample) -> Option<f64>| -> Series {
        (
            name.to_owned(),
            samples
                .iter()
                .filter_map(|s| f(s).map(|v| (s.t, v)))
                .collect(),
        )
    };
    let keep =
        |v: Vec<Series>| -> Vec<Series> { v.into_iter().filter(|(_, p)| !p.is_empty()).collect() };
    lines(
        &dir.join("builds.png"),
        "builds and steps",
        "count",
        &keep(vec![
            series("builds in flight (submitted, not ended)", &|s| {
                Some((s.submitted - s.ended) as f64)
            }),
            series("builds running (jetbridge_builds_running)", &|s| {
                s.sum(|f| f.builds_running)
            }),
            series("steps running (jetbridge_steps_running)", &|s| {
                s.sum(|f| f.steps_running)
            }),
        ]),
    )?;
    lines(
        &dir.join("queue.png"),
        "queue depth",
        "builds",
        &keep(vec![
            series("queued", &|s| s.first(|f| f.queued)),
            series("running", &|s| s.first(|f| f.running)),
        ]),
    )?;
    lines(
        &dir.join("pods.png"),
        "pods and env Secrets",
        "count",
        &keep(vec![
            series("pods owned (jetbridge_pods_owned)", &|s| {
                s.sum(|f| f.pods_owned)
            }),
            series("pods (Kubernetes API)", &|s| s.kube_pods.map(|v| v as f64)),
            series("Secrets (Kubernetes API)", &|s| {
                s.kube_secrets.map(|v| v as f64)
            }),
        ]),
    )?;
    let per_replica = |f: &dyn Fn(&super::scrape::Figures) -> f64| -> Vec<Series> {
        report
            .metrics
            .iter()
            .enumerate()
            .map(|(i, url)| {
                (
                    format!("replica {} ({url})", i + 1),
                    samples
                        .iter()
                        .filter_map(|s| s.replicas.get(i).cloned().flatten().map(|r| (s.t, f(&r))))
                        .collect(),
                )
            })
            .collect()
    };
    lines(
        &dir.join("rss.png"),
        "resident memory",
        "MiB",
        &keep(per_replica(&|f| f.rss_bytes / 1048576.0)),
    )?;
    lines(
        &dir.join("fds.png"),
        "open file descriptors",
        "fds",
        &keep(per_replica(&|f| f.open_fds)),
    )
}
