//! The transform natively and as the Wasm component through the host's embedding, at fan-outs
//! 10, 100 and 10,000, measured in one run: output records per second and the Wasm/native ratio.
//!
//! Run with `make bench-guest` (builds the component first). Each measurement is the median of
//! several samples, each sample a timed loop of whole batches, after a warm-up. This reports
//! numbers; it never passes or fails on them.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use campaign_push::guest::{DirectoryLookup, GuestRuntime, InputEvent, Outcome};
use campaign_push::subscribers::{SubscriberTable, TableLoader};
use guest_transform::{Budget, EventInput};

const NOW: i64 = 1_700_000_000;
const SAMPLES: usize = 9;
const SAMPLE_TIME: Duration = Duration::from_millis(300);
/// Output records per batch, whatever the fan-out, so batches are comparable.
const RECORDS_PER_BATCH: usize = 10_000;
/// Each batch decided whole, as in the service when its budget exceeds a batch.
const WHOLE: campaign_push::guest::Budget = campaign_push::guest::Budget {
    outputs: u32::MAX,
    bytes: u64::MAX,
};

fn main() {
    let guest_path = PathBuf::from(
        std::env::var("GUEST_WASM")
            .expect("GUEST_WASM names the component; run `make bench-guest`"),
    );
    let runtime = GuestRuntime::new().expect("engine");
    let guest = runtime.load_file(&guest_path).expect("guest loads");
    println!(
        "guest: {} ({} bytes), {} output records per batch, median of {SAMPLES} samples",
        guest.identity().version,
        std::fs::metadata(&guest_path).unwrap().len(),
        RECORDS_PER_BATCH
    );
    println!();
    println!("| fan-out | events/batch | native records/s | wasm records/s | wasm/native time |");
    println!("|--------:|-------------:|-----------------:|---------------:|-----------------:|");
    for fan_out in [10, 100, 10_000] {
        let events_per_batch = RECORDS_PER_BATCH / fan_out;
        let (directory, events) = workload(fan_out, events_per_batch);
        let directory = Arc::new(directory);

        let mut native_lookup = DirectoryLookup(&*directory);
        let native = records_per_second(|| {
            let inputs = events.iter().map(|event| EventInput::new(&event.value));
            let outcomes: Vec<Outcome> = guest_transform::transform_batch(
                NOW,
                inputs,
                Budget::UNLIMITED,
                &mut native_lookup,
            )
            .unwrap()
            .into_iter()
            .map(Outcome::from)
            .collect();
            count_records(&outcomes)
        });

        let mut instance = guest.instantiate(directory.clone()).expect("instance");
        let wasm = records_per_second(|| {
            let outcomes = instance.transform_batch(NOW, &events, WHOLE).unwrap();
            count_records(&outcomes)
        });

        println!(
            "| {fan_out:>7} | {events_per_batch:>12} | {:>16} | {:>14} | {:>15.2}x |",
            thousands(native),
            thousands(wasm),
            native / wasm
        );
    }
}

/// `fan_out` subscribers for each of `events` restaurants, one campaign event per restaurant, in
/// the service's own subscriber table (ids stored as 16-byte UUIDs, formatted per lookup).
fn workload(fan_out: usize, events: usize) -> (SubscriberTable, Vec<InputEvent>) {
    let mut directory = TableLoader::default();
    let mut row_id = 0;
    let mut batch = Vec::with_capacity(events);
    for restaurant in 0..events {
        let restaurant_id = format!("{restaurant:08x}-e89b-12d3-a456-426614174000");
        for client in 0..fan_out {
            row_id += 1;
            directory.upsert(
                row_id,
                &format!("{client:08x}-{restaurant:04x}-4000-8000-000000000000"),
                &restaurant_id,
            );
        }
        let value = format!(
            r#"{{"restaurant_id":"{restaurant_id}","adv_campaign_id":"campaign-{restaurant}","adv_campaign_content":"first campaign","adv_campaign_owner":"Ivanov Ivan Ivanovich","adv_campaign_owner_contact":"iiivanov@restaurant.ru","adv_campaign_datetime_start":1678615562,"adv_campaign_datetime_end":2659207116,"datetime_created":1678879362}}"#
        );
        batch.push(InputEvent {
            key: Some(b"first_message".to_vec()),
            value: value.into_bytes(),
            resume: None,
        });
    }
    (directory.finish(), batch)
}

/// Output records: one message per client id (the boundary checked that they match). The messages
/// are not rendered here: the host renders a framed value only as the producer copies it.
fn count_records(outcomes: &[Outcome]) -> usize {
    outcomes
        .iter()
        .map(|outcome| match outcome {
            Outcome::FanOut(fan_out) => black_box(fan_out.client_ids.len()),
            _ => 0,
        })
        .sum()
}

/// Median output records per second over `SAMPLES` timed loops of `batch`.
fn records_per_second(mut batch: impl FnMut() -> usize) -> f64 {
    let warm_up = Instant::now();
    while warm_up.elapsed() < SAMPLE_TIME {
        black_box(batch());
    }
    let mut rates: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let start = Instant::now();
            let mut records = 0;
            while start.elapsed() < SAMPLE_TIME {
                records += batch();
            }
            records as f64 / start.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[SAMPLES / 2]
}

fn thousands(rate: f64) -> String {
    let digits = format!("{:.0}", rate);
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}
