//! A first rough throughput figure of the whole service on the local stack (`make up`): events
//! with fan-out produced up front, the service started, and the time until the consumer group has
//! committed everything (both sinks written). Run with `make bench-pipeline`. It reports numbers
//! and never passes or fails on them.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use support::service::{Deployment, Subscriptions, campaign_event};
use support::{StackEnv, unique_name};

const RESTAURANTS: usize = 100;
const FAN_OUT: usize = 10;
const EVENTS: usize = 20_000;

fn main() {
    let env = StackEnv::load();
    let run_id = unique_name("bench");
    let _subscriptions = Subscriptions::insert(&env, &run_id, RESTAURANTS, FAN_OUT);

    let deployment = Deployment::new(&env, "bench");
    let values: Vec<String> = (0..EVENTS)
        .map(|i| {
            let restaurant = format!("{run_id}-r{}", i % RESTAURANTS);
            campaign_event(&format!("{run_id}-e{i}"), &restaurant, "first campaign")
        })
        .collect();
    deployment.produce_spread(&values);

    let service = deployment.start(&env);
    let started = Instant::now();
    deployment.wait_consumed(std::time::Duration::from_secs(600));
    let elapsed = started.elapsed().as_secs_f64();
    let rows = (EVENTS * FAN_OUT) as f64;
    println!(
        "pipeline: {EVENTS} events x fan-out {FAN_OUT} = {rows} rows and messages in {elapsed:.2} s \
         from a ready service: {:.0} events/s, {:.0} rows/s (batch_max_events 500, one host, \
         Kafka + PostgreSQL on the same 2 cores)",
        EVENTS as f64 / elapsed,
        rows / elapsed
    );
    drop(service);
}
