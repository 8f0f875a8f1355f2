//! The report folder: `report.md` (machine, settings, the figures with min/max and how each was
//! obtained, the targets of issue 10, what is not measured), `figures.csv`, `timeline.csv`,
//! `latency.csv`, `phases.csv`, the two PNG plots; and the summary printed at the end.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;

use crate::phases::{Results, names};
use crate::settings::Settings;
use crate::stats::Figure;

/// What this bench cannot measure yet, and what it would take.
pub const NOT_MEASURED: &[&str] =
    &["**Largest batch around a hot swap**: measured by `make bench-reload`, not repeated here."];

pub fn utc_now() -> (String, String) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    (
        format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02} UTC"),
        format!("{y:04}{m:02}{d:02}-{hh:02}{mm:02}{ss:02}"),
    )
}

/// Days since 1970-01-01 to a calendar date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// CPU model, cores, memory, kernel: what the figures were measured on.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, v)| v.trim())
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({model}), {mem_gib:.1} GiB, Linux {}",
        kernel.trim()
    )
}

pub fn git_commit(root: &Path) -> String {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let commit = run(&["rev-parse", "--short", "HEAD"]);
    let dirty = !run(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    format!(
        "{commit}{}",
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        }
    )
}

/// A value in the unit's usual precision, with thousands separators for large numbers.
pub fn format_value(value: f64, unit: &str) -> String {
    let decimals = match unit {
        "s" | "×" => 2,
        "ms" | "MiB" | "bytes" | "CPU s" => 1,
        _ if value.abs() >= 100.0 => 0,
        _ => 2,
    };
    let text = format!("{value:.decimals$}");
    let (int, frac) = text
        .split_once('.')
        .map_or((text.as_str(), ""), |(i, f)| (i, f));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if frac.is_empty() {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}.{frac}")
    }
}

fn cell(figure: &Figure, value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format_value(v, figure.unit))
}

/// The summary table (Markdown), printed at the end and placed at the top of the report.
pub fn summary(results: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| figure | median | min | max | unit | runs |");
    let _ = writeln!(out, "|---|--:|--:|--:|---|--:|");
    for f in results.figures() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            f.name,
            cell(f, f.median()),
            cell(f, f.min()),
            cell(f, f.max()),
            f.unit,
            f.values.len()
        );
    }
    out
}

/// Issue 10's targets beside the figures that answer them.
fn targets(results: &Results, settings: &Settings) -> String {
    let get = |name: &str| results.figure(name).and_then(Figure::median);
    let show = |v: Option<f64>, unit: &str| {
        v.map_or("not measured".into(), |v| {
            format!("{} {unit}", format_value(v, unit))
        })
    };
    let rows10 = get(&names::outputs(10))
        .zip(get("fan-out 10: feedback rows/s"))
        .map(|(a, b)| a.min(b));
    let latency_label = format!("{} events/s × fan-out 10", settings.latency_rate);
    let latency = format!("{latency_label}: due → all outputs visible, p99");
    let big = settings.cache_sizes.iter().copied().max().unwrap_or(0);
    let ready0 = get("0 subscriptions: start → ready");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let service_cpu = ["host", "Kafka broker", "PostgreSQL"]
        .into_iter()
        .map(|who| get(&names::cpu_per_million(10, who)))
        .sum::<Option<f64>>();
    let rate_limit = service_cpu.map_or("not measured".into(), |cpu| {
        let cap = cores as f64 * 1e6 / cpu;
        format!(
            "the cores: host, broker and PostgreSQL spent {} CPU s per million outputs, so \
             {cores} fully busy cores allow {} rows/s at that cost; the run reached {} of it",
            format_value(cpu, "CPU s"),
            format_value(cap, "rows/s"),
            rows10.map_or("–".into(), |rate| format!("{:.0} %", rate / cap * 100.0)),
        )
    });
    let stage = |stage: &str| get(&names::per_batch(10, stage));
    let serial_limit = match (
        stage("deciding"),
        stage("storing"),
        stage("the Kafka transaction"),
        get(&names::serial_rate(10)),
    ) {
        (Some(decide), Some(store), Some(deliver), Some(rate)) => format!(
            "; the stages: a batch spent {} ms deciding and then {} ms storing, one after the \
             other (its Kafka transaction, {} ms, runs beside the next batch's), which allows {} \
             rows/s",
            format_value(decide, "ms"),
            format_value(store, "ms"),
            format_value(deliver, "ms"),
            format_value(rate, "rows/s"),
        ),
        _ => String::new(),
    };
    let rate_limit = format!("{rate_limit}{serial_limit}");
    let latency_floor =
        get("Kafka alone: one small transaction, p99").map_or("not measured".into(), |floor| {
            format!(
                "Kafka alone: one small transaction, p99 {} ms; no batch is visible before its \
                 transaction commits",
                format_value(floor, "ms")
            )
        });
    let [host, kafka, pg, bench] = names::BUSY.map(|who| get(&names::busy(&latency_label, who)));
    let latency_busy = match (
        host,
        kafka,
        pg,
        bench,
        get(&names::latency_batch_kafka(&latency_label)),
    ) {
        (Some(host), Some(kafka), Some(pg), Some(bench), Some(transaction)) => format!(
            "; in the phase a batch's Kafka transaction took {} ms on average, while the broker \
             kept {} of the {cores} cores busy, the host {}, PostgreSQL {} and the bench's \
             generator and reader {}",
            format_value(transaction, "ms"),
            format_value(kafka, "cores"),
            format_value(host, "cores"),
            format_value(pg, "cores"),
            format_value(bench, "cores"),
        ),
        _ => String::new(),
    };
    let latency_limit = format!("{latency_floor}{latency_busy}");
    let mut out =
        String::from("| target | this run | what bounds it (this run) |\n|---|---|---|\n");
    let mut row = |target: &str, value: String, limit: &str| {
        let _ = writeln!(out, "| {target} | {value} | {limit} |");
    };
    row(
        "≥ 150,000 rows/s into both sinks at fan-out 10",
        show(rows10, "rows/s"),
        &rate_limit,
    );
    row(
        "≥ 50 % of the same-run ceiling at fan-out 10",
        show(get("fan-out 10: ratio to the same-run ceiling"), "×"),
        "",
    );
    row(
        "p99 ≤ 50 ms due → all outputs visible at 1,000 events/s × fan-out 10",
        show(get(&latency), "ms"),
        &latency_limit,
    );
    row(
        "Wasm/native ≤ 2× at fan-out 100 (guest bench)",
        show(get("guest, fan-out 100: Wasm/native time"), "×"),
        "",
    );
    row(
        "Wasm/native at fan-out 100, the whole pipeline (native rate / Wasm rate)",
        show(get("pipeline, fan-out 100: Wasm/native time"), "×"),
        "",
    );
    row(
        "≥ 3 M output records/s per core in the guest (Wasm, fan-out 100, one thread)",
        show(get("guest, fan-out 100: Wasm records/s"), "records/s"),
        "",
    );
    row(
        "largest batch around a hot swap ≤ 2× normal p99",
        "not measured here: `make bench-reload`".into(),
        "",
    );
    row(
        &format!("{big} subscriptions loaded in ≤ 15 s (the service's own load time)"),
        show(get(&names::cache_load(big)), "s"),
        "",
    );
    row(
        &format!("≤ 64 bytes per subscription ({big})"),
        show(
            get(&format!("{big} subscriptions: bytes per subscription")),
            "bytes",
        ),
        "",
    );
    row(
        "start → ready ≤ 1 s plus the cache load (empty table)",
        show(ready0, "s"),
        "",
    );
    out
}

pub struct Context<'a> {
    pub date: &'a str,
    pub machine: &'a str,
    pub commit: &'a str,
    pub command: &'a str,
    pub settings: &'a Settings,
    pub subscriptions: u64,
    pub restaurants: u64,
    pub service_settings: &'a [(String, String)],
    pub plots: &'a [String],
}

pub fn write(dir: &Path, results: &Results, cx: &Context<'_>) -> Result<()> {
    let s = cx.settings;
    let mut md = String::new();
    let _ = writeln!(md, "# campaign-push bench, {}\n", cx.date);
    let _ = writeln!(md, "- command: `{}`", cx.command);
    let _ = writeln!(
        md,
        "- machine: {} (Kafka, PostgreSQL, the host and the bench's own clients share it)",
        cx.machine
    );
    let _ = writeln!(md, "- commit: {}", cx.commit);
    let _ = writeln!(
        md,
        "- mode: {}, {} run(s) per figure (median, min, max); warm-up excluded as each figure's \"how\" says",
        if s.quick {
            "QUICK (smoke sizes: not figures to quote)"
        } else {
            "full"
        },
        s.runs
    );
    let _ = writeln!(
        md,
        "- subscriber table during the runs: {} subscriptions over {} restaurants (fan-outs {} measured, the other restaurants share the rest)",
        cx.subscriptions,
        cx.restaurants,
        s.fan_outs
            .iter()
            .map(|f| f.fan_out.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if cx.service_settings.is_empty() {
        let _ = writeln!(
            md,
            "- service settings: `config/local.toml` and the defaults"
        );
    } else {
        let list: Vec<String> = cx
            .service_settings
            .iter()
            .map(|(k, v)| format!("`{k}={v}`"))
            .collect();
        let _ = writeln!(
            md,
            "- service settings: `config/local.toml`, the defaults, and {}",
            list.join(", ")
        );
    }
    let _ = writeln!(md, "\n## Summary\n\n{}", summary(results));
    let _ = writeln!(md, "## Targets (issue 10)\n\n{}", targets(results, s));
    let _ = writeln!(md, "## How each figure was obtained\n");
    let mut last_section = "";
    for f in results.figures() {
        if f.section != last_section {
            let gap = if last_section.is_empty() { "" } else { "\n" };
            let _ = writeln!(md, "{gap}### {}\n", f.section);
            last_section = f.section;
        }
        let values: Vec<String> = f.values.iter().map(|v| format_value(*v, f.unit)).collect();
        let _ = writeln!(
            md,
            "- {}: {} {} (runs: {}). {}",
            f.name,
            cell(f, f.median()),
            f.unit,
            values.join(", "),
            f.how
        );
    }
    let _ = writeln!(md, "\n## Not measured\n");
    for item in NOT_MEASURED {
        let _ = writeln!(md, "- {item}");
    }
    if !results.notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for note in &results.notes {
            let _ = writeln!(md, "- {note}");
        }
    }
    let _ = writeln!(md, "\n## Files\n");
    let _ = writeln!(
        md,
        "- `figures.csv`: every figure, one value per run; `timeline.csv`: the service's counters, its CPU and RSS, the CPU of the broker, PostgreSQL and the bench, and PostgreSQL's autovacuum workers every 100 ms; `phases.csv`: when each phase ran; `latency.csv`: every measured event's latencies; `service-*.log`: the service's logs; `guest-bench-run*.txt`: the guest bench's output"
    );
    for plot in cx.plots {
        let _ = writeln!(md, "\n![{plot}]({plot})");
    }
    std::fs::write(dir.join("report.md"), md)?;

    let mut csv = String::from("section,figure,unit,median,min,max,runs,values,how\n");
    for f in results.figures() {
        let values: Vec<String> = f.values.iter().map(|v| format!("{v}")).collect();
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{}",
            f.section,
            quote(&f.name),
            f.unit,
            f.median().unwrap_or(f64::NAN),
            f.min().unwrap_or(f64::NAN),
            f.max().unwrap_or(f64::NAN),
            f.values.len(),
            values.join(" "),
            quote(&format!("{} ({})", f.how, cx.command))
        );
    }
    std::fs::write(dir.join("figures.csv"), csv)?;

    let mut csv = String::from(
        "run,t_s,outputs,feedback_rows,events_in,host_cpu_s,host_rss_bytes,kafka_cpu_s,postgres_cpu_s,bench_cpu_s,autovacuum_workers\n",
    );
    for (run, s) in &results.samples {
        let _ = writeln!(
            csv,
            "{run},{:.3},{},{},{},{:.2},{},{:.2},{:.2},{:.2},{}",
            s.t,
            s.outputs,
            s.rows,
            s.events_in,
            s.cpu,
            s.rss,
            s.kafka_cpu,
            s.pg_cpu,
            s.bench_cpu,
            s.autovacuum_workers
        );
    }
    std::fs::write(dir.join("timeline.csv"), csv)?;

    let mut csv = String::from("run,phase,start_s,end_s\n");
    for span in &results.spans {
        let _ = writeln!(
            csv,
            "{},{},{:.3},{:.3}",
            span.run,
            quote(&span.phase),
            span.start,
            span.end
        );
    }
    std::fs::write(dir.join("phases.csv"), csv)?;

    let mut csv = String::from("run,phase,event,due_to_visible_ms,due_to_create_time_ms\n");
    for l in &results.latencies {
        let _ = writeln!(
            csv,
            "{},{},{},{:.3},{:.1}",
            l.run,
            quote(&l.phase),
            l.event,
            l.visible_ms,
            l.create_ms
        );
    }
    std::fs::write(dir.join("latency.csv"), csv)?;
    Ok(())
}

fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_grouped_and_rounded() {
        assert_eq!(format_value(1_234_567.4, "rows/s"), "1,234,567");
        assert_eq!(format_value(-1_234.0, "rows/s"), "-1,234");
        assert_eq!(format_value(0.456, "×"), "0.46");
        assert_eq!(format_value(1234.56, "ms"), "1,234.6");
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_786), (2026, 11, 29));
    }
}
