//! PNG plots (drawn by plotters into a buffer, encoded by [`crate::png`]), drawn after every
//! measurement (so their CPU use does not distort a figure):
//! throughput over time and the latency CDF. Text is rendered with a TTF file read at run time
//! (DejaVu Sans, or `BENCH_FONT`); without one the plots are skipped and the report says so.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::phases::{Latency, Span};
use crate::png;
use crate::service::Sample;

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers the font plotters draws text with; `false` if none is found.
pub fn register() -> bool {
    let path = std::env::var("BENCH_FONT")
        .ok()
        .into_iter()
        .chain(FONTS.iter().map(|p| (*p).to_owned()))
        .find(|p| Path::new(p).exists());
    let Some(bytes) = path.and_then(|p| std::fs::read(p).ok()) else {
        return false;
    };
    // plotters keeps the font for the process's lifetime.
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .is_ok()
}

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 600;

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Output messages/s and feedback rows/s of each run over time (from the service's counters,
/// differenced between samples), with the phases shaded.
pub fn throughput(path: &Path, samples: &[(usize, Sample)], spans: &[Span]) -> Result<()> {
    let runs: Vec<usize> = {
        let mut r: Vec<usize> = samples.iter().map(|(run, _)| *run).collect();
        r.dedup();
        r
    };
    let mut series = Vec::new();
    for &run in &runs {
        let run_samples: Vec<&Sample> = samples
            .iter()
            .filter(|(r, _)| *r == run)
            .map(|(_, s)| s)
            .collect();
        let Some(first) = run_samples.first() else {
            continue;
        };
        let t0 = first.t;
        // Over the last second: the counters step once per batch, so a rate between two samples
        // 100 ms apart would be all spikes and zeros.
        let points: Vec<(f64, f64)> = run_samples
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let back = run_samples[..i].iter().rev().find(|p| p.t <= s.t - 1.0)?;
                Some((s.t - t0, (s.outputs - back.outputs) / (s.t - back.t)))
            })
            .collect();
        series.push((run, t0, points));
    }
    let max_t = series
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|(t, _)| *t))
        .fold(1.0, f64::max);
    let max_y = series
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|(_, y)| *y))
        .fold(1.0, f64::max)
        * 1.1;

    let mut rgb = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Output messages/s over time (service counters, 1 s moving window)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..max_t, 0.0..max_y)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the service was ready")
        .y_desc("messages/s")
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, (run, t0, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        if i == 0 {
            for span in spans.iter().filter(|s| s.run == *run) {
                let (a, b) = (span.start - t0, span.end - t0);
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(a, 0.0), (b, max_y)],
                    color.mix(0.06).filled(),
                )))?;
                chart.draw_series(std::iter::once(Text::new(
                    span.phase.clone(),
                    (a, max_y * 0.97),
                    ("sans-serif", 13),
                )))?;
            }
        }
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(format!("run {run}"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present().context("drawing the throughput plot")?;
    drop(chart);
    drop(root);
    png::write(path, WIDTH, HEIGHT, &rgb)
}

/// The CDF of due → all outputs visible, one line per latency phase (all runs pooled).
pub fn latency_cdf(path: &Path, latencies: &[Latency]) -> Result<()> {
    let mut phases: Vec<&str> = Vec::new();
    for l in latencies {
        if !phases.contains(&l.phase.as_str()) {
            phases.push(&l.phase);
        }
    }
    let max_x = latencies.iter().map(|l| l.visible_ms).fold(1.0, f64::max) * 1.05;
    let mut rgb = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Due → all outputs visible (read_committed): CDF",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((1.0..max_x.max(2.0)).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds (log scale)")
        .y_desc("fraction of events")
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, phase) in phases.iter().enumerate() {
        let mut values: Vec<f64> = latencies
            .iter()
            .filter(|l| l.phase == *phase)
            .map(|l| l.visible_ms.max(1.0))
            .collect();
        values.sort_by(f64::total_cmp);
        let n = values.len() as f64;
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                values
                    .iter()
                    .enumerate()
                    .map(|(k, v)| (*v, (k + 1) as f64 / n)),
                color.stroke_width(2),
            ))?
            .label(phase.to_string())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present().context("drawing the latency plot")?;
    drop(chart);
    drop(root);
    png::write(path, WIDTH, HEIGHT, &rgb)
}
