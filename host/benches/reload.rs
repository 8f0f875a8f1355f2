//! Hot reload under load on the local stack (`make up`): a steady stream with fan-out runs while
//! the guest file is replaced several times (v1 → v2 → v1 …, by an atomic rename, as a deployment
//! does). Reported, never judged:
//!
//! - the time from the new file landing to the first output of the new version that a
//!   `read_committed` consumer sees (target ≤ 1 s);
//! - the largest batch latency (first event consumed → both sinks committed, from the service's
//!   own log) around each swap, against the p99 of the batches away from any swap (target ≤ 2×).
//!
//! Run with `make bench-reload`; `RELOAD_SWAPS` and `RELOAD_RATE` (events/s) change the load.
//!
//! `RELOAD_MODE` runs controls in place of the swaps, over windows as long as a swap's, to tell
//! what a swap costs from what the machine does anyway: `idle` (nothing happens in the window) and
//! `burn` (another process, at nice 19, spins one CPU for about as long as a component takes to
//! compile, 250 ms).

#[path = "../../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::message::{Headers, Message};
use support::guests::{GuestBuild, GuestFile, install_guest, test_guest};
use support::service::{Deployment, Subscriptions, campaign_event, guest_wasm};
use support::{SetOnDrop, StackEnv, env_number, unique_name};

const RESTAURANTS: usize = 20;
const FAN_OUT: usize = 10;
/// Steady load between swaps, so that batches away from a swap are plentiful.
const SETTLE: Duration = Duration::from_secs(4);
/// A batch counts as "around" a swap when it commits between the file landing and this long after
/// the new version's first output: the batches that ran while the candidate was compiled and
/// checked, and the first ones of the new version.
const AROUND: Duration = Duration::from_millis(200);

fn epoch_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// One swap as the bench saw it: when the file landed (wall clock) and how long until the first
/// output of the new version.
struct Swap {
    landed: f64,
    to_first_output: Duration,
}

/// One committed batch from the service's log: when (wall clock) and its latency in seconds.
struct Batch {
    committed: f64,
    seconds: f64,
    /// Collecting, guest, PostgreSQL, Kafka: where the latency went.
    stages: [f64; 4],
}

/// What happens in each measured window.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// The guest file is replaced (v1 → v2 → v1 …).
    Swap,
    /// Nothing: the same statistics over windows where nothing happens.
    Idle,
    /// A CPU-bound process at the lowest priority runs for about as long as a compile, in the
    /// middle of the window.
    Burn,
}

/// The length of a control window: about a swap's, from landing to the first new output.
const CONTROL_WINDOW: Duration = Duration::from_millis(450);

impl Mode {
    fn from_env() -> Self {
        match std::env::var("RELOAD_MODE").as_deref() {
            Err(_) | Ok("swap") => Self::Swap,
            Ok("idle") => Self::Idle,
            Ok("burn") => Self::Burn,
            Ok(other) => panic!("RELOAD_MODE={other}: expected swap, idle or burn"),
        }
    }

    /// Runs a control window; its end stands for "the first new output".
    fn control_window(self) -> Instant {
        let started = Instant::now();
        if self == Self::Burn {
            std::thread::sleep(Duration::from_millis(150));
            // At the lowest priority: lowering the compile's priority would not help either.
            std::process::Command::new("nice")
                .args([
                    "-n",
                    "19",
                    "timeout",
                    "0.25",
                    "sh",
                    "-c",
                    "while :; do :; done",
                ])
                .status()
                .expect("running the CPU burner");
        }
        std::thread::sleep(CONTROL_WINDOW.saturating_sub(started.elapsed()));
        Instant::now()
    }
}

fn main() {
    let mode = Mode::from_env();
    let swaps = env_number("RELOAD_SWAPS").unwrap_or(6);
    let rate = env_number("RELOAD_RATE").unwrap_or(500);
    let env = StackEnv::load();
    let run_id = unique_name("bench-reload");
    let subscriptions = Subscriptions::insert(&env, &run_id, RESTAURANTS, FAN_OUT);
    let deployment = Deployment::new(&env, "bench-reload");
    let versions = [
        GuestBuild::read(&guest_wasm()),
        GuestBuild::read(&test_guest("v2-content")),
    ];
    let file = GuestFile::new(&versions[0]);
    let service = deployment.start_with(
        &env,
        &[
            file.setting(),
            ("CAMPAIGN_PUSH__LOG__FORMAT", "json"),
            (
                "CAMPAIGN_PUSH__LOG__FILTER",
                "info,campaign_push::pipeline=debug,librdkafka=warn",
            ),
        ],
    );
    let mut tail = Some(deployment.tail(&deployment.output.name));

    let stop = AtomicBool::new(false);
    let mut measured = Vec::new();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let producer = deployment.input_producer();
            let per_tick = (rate / 100).max(1);
            let mut next_tick = Instant::now();
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let restaurant = &subscriptions.restaurants[i % RESTAURANTS];
                let value = campaign_event(&format!("{run_id}-e{i}"), restaurant, "bench");
                producer.send(((i % 3) as i32, None, value.as_bytes()));
                if i % per_tick == per_tick - 1 {
                    next_tick += Duration::from_millis(10);
                    std::thread::sleep(next_tick.saturating_duration_since(Instant::now()));
                }
            }
            producer.flush();
        });

        // Reports the arrival of the first output of each awaited version.
        let (await_tx, await_rx) = mpsc::channel::<String>();
        let (seen_tx, seen_rx) = mpsc::channel::<Instant>();
        let consumer = tail.take().unwrap();
        let stop = &stop;
        scope.spawn(move || {
            let mut awaited: Option<String> = None;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(sha256) = await_rx.try_recv() {
                    awaited = Some(sha256);
                }
                let Some(Ok(message)) = consumer.poll(Duration::from_millis(5)) else {
                    continue;
                };
                let arrived = Instant::now();
                let sha256 = message.headers().and_then(|headers| {
                    headers
                        .iter()
                        .find(|h| h.key == "campaign-push-guest-sha256")
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                });
                if awaited.is_some() && sha256 == awaited {
                    seen_tx.send(arrived).unwrap();
                    awaited = None;
                }
            }
        });

        let _stop_threads = SetOnDrop(stop);
        std::thread::sleep(SETTLE);
        for k in 0..swaps {
            let next = &versions[(k + 1) % 2];
            await_tx.send(next.sha256.clone()).unwrap();
            let landed_wall = SystemTime::now();
            let landed = Instant::now();
            let first_output = if mode == Mode::Swap {
                install_guest(&file.path, &next.bytes);
                seen_rx
                    .recv_timeout(Duration::from_secs(60))
                    .expect("the new version's first output within 60 s")
            } else {
                mode.control_window()
            };
            measured.push(Swap {
                landed: epoch_seconds(landed_wall),
                to_first_output: first_output - landed,
            });
            std::thread::sleep(SETTLE);
        }
    });
    deployment.wait_consumed(Duration::from_secs(300));
    let log = service.log_text();
    drop(service);

    let batches: Vec<Batch> = log.lines().filter_map(committed_batch).collect();
    let accepted: Vec<f64> = log.lines().filter_map(swap_accepted).collect();
    let warmed_up = batches.first().map_or(0.0, |b| b.committed) + 2.0;
    let near_swap = |b: &Batch| {
        measured.iter().any(|s| {
            let end = s.landed + (s.to_first_output + AROUND).as_secs_f64();
            b.committed >= s.landed - 0.5 && b.committed <= end + 0.5
        })
    };
    let normal_batches: Vec<&Batch> = batches
        .iter()
        .filter(|b| b.committed > warmed_up && !near_swap(b))
        .collect();
    let mut stages = [0.0; 4];
    for batch in &normal_batches {
        for (total, stage) in stages.iter_mut().zip(batch.stages) {
            *total += stage / normal_batches.len() as f64;
        }
    }
    assert!(
        !normal_batches.is_empty(),
        "no \"batch committed\" line away from the swaps in the service's log: did its fields \
         change?\n{log}"
    );
    let mut normal: Vec<f64> = normal_batches.iter().map(|b| b.seconds).collect();
    normal.sort_by(f64::total_cmp);
    let quantile = |q: f64| normal[((normal.len() - 1) as f64 * q).round() as usize];
    let (p50, p99) = (quantile(0.5), quantile(0.99));

    println!(
        "reload ({mode:?} mode): {swaps} windows under {rate} events/s x fan-out {FAN_OUT} ({} batches, {} away from swaps)",
        batches.len(),
        normal.len()
    );
    println!(
        "  normal batches: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; on average {:.1} ms collecting, {:.1} ms in \
         the guest, {:.1} ms PostgreSQL, {:.1} ms Kafka",
        p50 * 1e3,
        p99 * 1e3,
        normal.last().unwrap() * 1e3,
        stages[0] * 1e3,
        stages[1] * 1e3,
        stages[2] * 1e3,
        stages[3] * 1e3
    );
    let mut ratios: Vec<f64> = Vec::new();
    let mut to_output: Vec<Duration> = Vec::new();
    for (k, swap) in measured.iter().enumerate() {
        let end = swap.landed + (swap.to_first_output + AROUND).as_secs_f64();
        let worst = batches
            .iter()
            .filter(|b| b.committed >= swap.landed && b.committed <= end)
            .max_by(|a, b| a.seconds.total_cmp(&b.seconds))
            .expect("batches were committed in the window");
        ratios.push(worst.seconds / p99);
        to_output.push(swap.to_first_output);
        let timing = if mode == Mode::Swap {
            let in_service = accepted
                .iter()
                .find(|&&at| at >= swap.landed)
                .map_or(f64::NAN, |at| at - swap.landed);
            format!(
                "file landed → in service {:.0} ms → first new output {:.0} ms; ",
                in_service * 1e3,
                swap.to_first_output.as_secs_f64() * 1e3
            )
        } else {
            String::new()
        };
        println!(
            "  window {}: {timing}largest batch {:.1} ms = {:.2}× p99 ({}, committed at +{:.0} ms)",
            k + 1,
            worst.seconds * 1e3,
            worst.seconds / p99,
            worst.describe_stages(),
            (worst.committed - swap.landed) * 1e3
        );
    }
    to_output.sort();
    ratios.sort_by(f64::total_cmp);
    if mode == Mode::Swap {
        println!(
            "  file landed → first new output: median {:.0} ms, max {:.0} ms (target ≤ 1000 ms)",
            to_output[to_output.len() / 2].as_secs_f64() * 1e3,
            to_output.last().unwrap().as_secs_f64() * 1e3
        );
    }
    println!(
        "  largest batch of a window / p99 of normal batches: median {:.2}×, worst {:.2}× (target ≤ 2×)",
        ratios[ratios.len() / 2],
        ratios.last().unwrap()
    );
}

impl Batch {
    fn describe_stages(&self) -> String {
        let [collect, guest, postgres, kafka] = self.stages.map(|s| s * 1e3);
        format!(
            "collect {collect:.0}, guest {guest:.1}, PostgreSQL {postgres:.0}, Kafka {kafka:.0} ms"
        )
    }
}

/// A "batch committed" line of the service's JSON log.
fn committed_batch(line: &str) -> Option<Batch> {
    let (committed, entry) = log_entry(line, "batch committed")?;
    let field = |name: &str| entry["fields"][name].as_f64();
    Some(Batch {
        committed,
        seconds: field("seconds")?,
        stages: [
            field("collect_seconds")?,
            field("decide_seconds")?,
            field("postgres_seconds")?,
            field("kafka_seconds")?,
        ],
    })
}

/// When a "guest swapped" line of the service's JSON log says a new guest was put in service.
fn swap_accepted(line: &str) -> Option<f64> {
    log_entry(line, "guest swapped").map(|(at, _)| at)
}

/// A line of the service's JSON log with `message`: when it was written (seconds since the
/// epoch), and the whole entry.
fn log_entry(line: &str, message: &str) -> Option<(f64, serde_json::Value)> {
    let entry: serde_json::Value = serde_json::from_str(line).ok()?;
    if entry["fields"]["message"] != message {
        return None;
    }
    Some((rfc3339_seconds(entry["timestamp"].as_str()?)?, entry))
}

/// Seconds since the epoch of a UTC timestamp as `tracing` writes it: `2026-11-25T13:20:01.123456Z`.
fn rfc3339_seconds(text: &str) -> Option<f64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut date = date.split('-').map(|p| p.parse::<i64>());
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let mut time = time.split(':');
    let (hour, minute) = (
        time.next()?.parse::<i64>().ok()?,
        time.next()?.parse::<i64>().ok()?,
    );
    let second: f64 = time.next()?.parse().ok()?;
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some((days * 86_400 + hour * 3_600 + minute * 60) as f64 + second)
}
