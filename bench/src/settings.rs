//! The bench's knobs, from the environment: sizes for a full run (the figures of issue 10) or a
//! quick smoke run (`BENCH_QUICK=1`).

use anyhow::{Context, Result};

/// One throughput phase: a backlog of `events` events, each with `fan_out` outputs, over
/// `restaurants` restaurants with exactly that many subscribers.
#[derive(Debug, Clone, Copy)]
pub struct FanOut {
    pub fan_out: usize,
    pub restaurants: u64,
    pub events: u64,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    /// `BENCH_RUNS` (default 3; 1 when quick): each figure is the median of this many runs.
    pub runs: usize,
    /// Subscriptions and restaurants in the service's table during the runs.
    pub subscriptions: u64,
    pub restaurants: u64,
    pub fan_outs: Vec<FanOut>,
    /// Rows and messages each ceiling writes (`BENCH_CEILING_OUTPUTS`), and per transaction
    /// (`BENCH_CEILING_BATCH`, default 20,000: the service's batch of 2,000 events at fan-out 10).
    pub ceiling_outputs: u64,
    pub ceiling_batch: u64,
    /// `BENCH_LATENCY_RATE` (default 1000) events/s with fan-out 10 for `latency_seconds`
    /// (`BENCH_LATENCY_SECONDS`, default 30; 5 when quick).
    pub latency_rate: f64,
    pub latency_seconds: f64,
    /// The saturation phase offers this fraction (`BENCH_SATURATION_FRACTION`, default 1.0) of
    /// the run's own fan-out-10 throughput, for `saturation_seconds`.
    pub saturation_fraction: f64,
    pub saturation_seconds: f64,
    /// `BENCH_CACHE=0` skips the cache phase; its table sizes otherwise.
    pub cache_sizes: Vec<u64>,
    /// `BENCH_GUEST=0` skips `make bench-guest`'s bench.
    pub guest: bool,
}

impl Settings {
    pub fn from_env() -> Result<Self> {
        let quick = flag("BENCH_QUICK", false)?;
        // Each phase spans several of the service's batches (500 events or 20,000 outputs by
        // default), or its rate could not be told from one batch's step of the counters.
        let fan_outs = if quick {
            vec![
                FanOut {
                    fan_out: 10,
                    restaurants: 100,
                    events: 5_000,
                },
                FanOut {
                    fan_out: 100,
                    restaurants: 20,
                    events: 1_000,
                },
                FanOut {
                    fan_out: 10_000,
                    restaurants: 1,
                    events: 10,
                },
            ]
        } else {
            vec![
                FanOut {
                    fan_out: 10,
                    restaurants: 1_000,
                    events: 30_000,
                },
                FanOut {
                    fan_out: 100,
                    restaurants: 1_000,
                    events: 3_000,
                },
                FanOut {
                    fan_out: 10_000,
                    restaurants: 10,
                    events: 30,
                },
            ]
        };
        // `BENCH_FAN_OUTS=10`: only the phases of these fan-outs (e.g. to compare two builds).
        let fan_outs = match std::env::var("BENCH_FAN_OUTS") {
            Ok(list) => {
                let wanted = list
                    .split(',')
                    .map(|item| item.trim().parse::<usize>())
                    .collect::<Result<std::collections::BTreeSet<usize>, _>>()
                    .map_err(|e| anyhow::anyhow!("BENCH_FAN_OUTS={list}: {e}"))?;
                let known: Vec<String> = fan_outs.iter().map(|p| p.fan_out.to_string()).collect();
                let chosen: Vec<FanOut> = fan_outs
                    .into_iter()
                    .filter(|phase| wanted.contains(&phase.fan_out))
                    .collect();
                anyhow::ensure!(
                    chosen.len() == wanted.len(),
                    "BENCH_FAN_OUTS={list}: the bench has fan-outs {} only",
                    known.join(", ")
                );
                chosen
            }
            Err(_) => fan_outs,
        };
        Ok(Self {
            quick,
            runs: number("BENCH_RUNS", if quick { 1 } else { 3 })?.max(1) as usize,
            subscriptions: if quick { 50_000 } else { 1_000_000 },
            restaurants: if quick { 500 } else { 10_000 },
            fan_outs,
            ceiling_outputs: number(
                "BENCH_CEILING_OUTPUTS",
                if quick { 50_000 } else { 500_000 },
            )?,
            ceiling_batch: number("BENCH_CEILING_BATCH", 20_000)?.max(1),
            latency_rate: number("BENCH_LATENCY_RATE", 1_000)? as f64,
            latency_seconds: decimal("BENCH_LATENCY_SECONDS", if quick { 5.0 } else { 30.0 })?,
            saturation_fraction: decimal("BENCH_SATURATION_FRACTION", 1.0)?,
            saturation_seconds: if quick { 5.0 } else { 20.0 },
            cache_sizes: if !flag("BENCH_CACHE", true)? {
                vec![]
            } else if quick {
                vec![0, 20_000, 100_000]
            } else {
                vec![0, 1_000_000, 10_000_000]
            },
            guest: flag("BENCH_GUEST", true)?,
        })
    }

    /// The `BENCH_*`, `CAMPAIGN_PUSH__*` and `STACK_*` (ports) variables set for this run, as a
    /// command prefix: what reproduces it.
    pub fn command() -> String {
        let mut vars: Vec<String> = std::env::vars()
            .filter(|(k, _)| {
                ["BENCH_", "CAMPAIGN_PUSH__", "STACK_"]
                    .iter()
                    .any(|prefix| k.starts_with(prefix))
            })
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        vars.sort();
        vars.push("make bench".into());
        vars.join(" ")
    }
}

fn number(key: &str, default: u64) -> Result<u64> {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{key}={v} is not a whole number")),
        Err(_) => Ok(default),
    }
}

fn decimal(key: &str, default: f64) -> Result<f64> {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{key}={v} is not a number")),
        Err(_) => Ok(default),
    }
}

fn flag(key: &str, default: bool) -> Result<bool> {
    match std::env::var(key).as_deref() {
        Ok("1" | "true" | "yes") => Ok(true),
        Ok("0" | "false" | "no" | "") => Ok(false),
        Ok(v) => anyhow::bail!("{key}={v}: use 1 or 0"),
        Err(_) => Ok(default),
    }
}
