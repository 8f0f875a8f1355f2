//! `make bench`: the service (`target/release/campaign-push`, as `make build` leaves it) against
//! the machine's own limits on the local stack, in one run: the ceilings of each sink alone,
//! throughput at fan-outs 10, 100 and 10,000, latency at an offered rate and at saturation, the
//! guest boundary, the subscriber cache, and the host's CPU and memory. See issue 10 and the
//! README's "Benchmarks" section.
//!
//! Knobs (environment): `BENCH_RUNS` (runs per figure, default 3), `BENCH_QUICK=1` (smoke sizes,
//! one run), `BENCH_GUEST=0` / `BENCH_CACHE=0` (skip those parts), `BENCH_LATENCY_RATE`, `BENCH_LATENCY_SECONDS`,
//! `BENCH_SATURATION_FRACTION`, `BENCH_CEILING_BATCH`, `BENCH_REPORT_DIR`; any
//! `CAMPAIGN_PUSH__…` setting is passed on to the service.
//!
//! Everything the bench creates is its own and removed afterwards: a database per bench (created
//! and dropped as PostgreSQL's superuser, the way `stack/stack.sh` administers the stack), topics,
//! consumer groups and transactional ids with the bench's unique prefix.

mod ceilings;
mod cpu;
mod generator;
mod pagecache;
mod phases;
mod plot;
mod png;
mod reader;
mod report;
mod service;
mod settings;
mod stack;
mod stats;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use phases::Bench;
use settings::Settings;
use stack::{BenchDatabase, Stack, Topics};
use workload::Layout;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let settings = Settings::from_env()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the bench crate lives in the repository")?
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let binary = existing(
        std::env::var_os("BENCH_SERVICE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| target.join("release/campaign-push")),
        "the service binary: run `make build`",
    )?;
    let guest = existing(
        std::env::var_os("GUEST_WASM")
            .map(PathBuf::from)
            .unwrap_or_else(|| target.join("wasm32-wasip2/release-guest/guest_transform.wasm")),
        "the guest component: run `make guest`",
    )?;
    let (date, stamp) = report::utc_now();
    let out = std::env::var_os("BENCH_REPORT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("bench-report").join(&stamp));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let stack = Stack::load(&root)?;
    // One worker: the bench's PostgreSQL work is a few connections at a time, and the cores
    // belong to what is measured.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let secs = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let id = format!("cpbench{secs}");
    let measured: Vec<(usize, u64)> = settings
        .fan_outs
        .iter()
        .map(|f| (f.fan_out, f.restaurants))
        .collect();
    let layout = Layout::new(settings.subscriptions, settings.restaurants, &measured);
    let machine = report::machine();
    let command = Settings::command();
    println!(
        "bench: {} mode, {} run(s), report in {}",
        if settings.quick { "quick" } else { "full" },
        settings.runs,
        out.display()
    );

    let mut bench = Bench {
        stack: &stack,
        settings: &settings,
        runtime: &runtime,
        id,
        epoch: Instant::now(),
        binary,
        guest,
        out: out.clone(),
        results: phases::Results::default(),
    };
    let outcome = measure(&mut bench, &layout);
    if let Err(error) = &outcome {
        bench
            .results
            .notes
            .push(format!("the bench stopped early: {error:#}"));
    }

    // Drawn after every measurement, so the plots' CPU use distorts no figure.
    let mut plots = Vec::new();
    if plot::register() {
        let results = &bench.results;
        if !results.samples.is_empty() {
            plot::throughput(
                &out.join("throughput.png"),
                &results.samples,
                &results.spans,
            )?;
            plots.push("throughput.png".to_owned());
        }
        if !results.latencies.is_empty() {
            plot::latency_cdf(&out.join("latency-cdf.png"), &results.latencies)?;
            plots.push("latency-cdf.png".to_owned());
        }
    } else {
        bench
            .results
            .notes
            .push("no TTF font found (DejaVu Sans, or BENCH_FONT): plots skipped".into());
    }
    let service_settings = service::passed_settings();
    report::write(
        &out,
        &bench.results,
        &report::Context {
            date: &date,
            machine: &machine,
            commit: &report::git_commit(&root),
            command: &command,
            settings: &settings,
            subscriptions: layout.subscriptions(),
            restaurants: layout.restaurants(),
            service_settings: &service_settings,
            plots: &plots,
        },
    )?;
    println!("\n## campaign-push bench, {date}: {machine}\n");
    println!("{}", report::summary(&bench.results));
    for note in &bench.results.notes {
        println!("note: {note}");
    }
    println!("not measured here: the largest batch around a hot swap (`make bench-reload`)");
    println!("report: {}", out.join("report.md").display());
    outcome
}

/// The guest bench first (it needs nothing of the stack and should not share the CPU with it),
/// then the runs and the cache in databases and topics of the bench's own.
fn measure(bench: &mut Bench<'_>, layout: &Layout) -> Result<()> {
    if bench.settings.guest {
        bench.guest_bench()?;
    }
    let stack = bench.stack;
    let mut topics = Topics::new(stack)?;
    let db = bench
        .runtime
        .block_on(BenchDatabase::create(stack, &bench.id))?;
    println!(
        "bench: loading {} subscriptions over {} restaurants into database {}",
        layout.subscriptions(),
        layout.restaurants(),
        db.name
    );
    let started = Instant::now();
    bench.runtime.block_on(async {
        let client = stack.connect(&db.name).await?;
        workload::load_subscribers(&client, layout.rows()).await?;
        client
            .batch_execute("VACUUM ANALYZE subscribers_restaurants")
            .await?;
        anyhow::Ok(())
    })?;
    println!("bench: loaded in {:.1} s", started.elapsed().as_secs_f64());
    bench.warm_up(&db.name, &mut topics)?;
    for run in 1..=bench.settings.runs {
        bench.run_once(run, &db.name, layout, &mut topics)?;
    }
    bench.cache(&mut topics)?;
    drop(db);
    Ok(())
}

fn existing(path: PathBuf, what: &str) -> Result<PathBuf> {
    if !path.exists() {
        bail!("{} not found: {what}", path.display());
    }
    Ok(path)
}
