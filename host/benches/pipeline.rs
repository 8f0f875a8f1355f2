//! A first rough throughput figure of the whole service on the local stack (`make up`): events
//! with fan-out produced up front, the service started, and the time until the consumer group has
//! committed everything (both sinks written). Run with `make bench-pipeline`. It reports numbers
//! and never passes or fails on them.
//!
//! `LEDGER_ROWS=10000000 make bench-pipeline` first fills the delivery ledger with that many pairs
//! of other (running) campaigns, to show what a large ledger costs each batch; they are deleted
//! afterwards. `EVENTS=100000 make bench-pipeline` runs longer than the default 20,000 events,
//! e.g. to record a profile of the whole run.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::service::{Deployment, Subscriptions, campaign_event};
use support::{StackEnv, env_number, psql, run, unique_name};

const RESTAURANTS: usize = 100;
const FAN_OUT: usize = 10;
/// Events produced up front, unless `EVENTS` says otherwise (a longer run to profile).
const EVENTS: usize = 20_000;

/// Ledger pairs of other campaigns, deleted when dropped.
struct LedgerFill<'a> {
    env: &'a StackEnv,
    prefix: String,
}

impl<'a> LedgerFill<'a> {
    fn insert(env: &'a StackEnv, run_id: &str, rows: u64) -> Self {
        // The ledger's tables come with the service's migrations.
        drop(Deployment::new(env, "bench-migrate").start(env));
        let prefix = format!("{run_id}-filler");
        let started = Instant::now();
        let sql = format!(
            "INSERT INTO campaign_push_campaigns (adv_campaign_id, ends_at) \
             SELECT '{prefix}-' || c, 2659207116 FROM generate_series(0, {rows} / 1000) c; \
             INSERT INTO campaign_push_ledger (adv_campaign_id, first_client, last_client, clients) \
             SELECT '{prefix}-' || c, min(client), max(client), array_agg(client ORDER BY client) \
             FROM (SELECT i / 1000 AS c, md5(i::text)::uuid::text COLLATE \"C\" AS client \
                   FROM generate_series(1, {rows}) i) pairs \
             GROUP BY c; ANALYZE campaign_push_ledger;"
        );
        run(&mut psql(env, "", &sql), None).assert_success();
        println!(
            "ledger: {rows} pairs of 1000-client campaigns inserted in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Self { env, prefix }
    }
}

impl Drop for LedgerFill<'_> {
    fn drop(&mut self) {
        let sql = format!(
            "DELETE FROM campaign_push_ledger WHERE adv_campaign_id LIKE '{p}-%'; \
             DELETE FROM campaign_push_campaigns WHERE adv_campaign_id LIKE '{p}-%';",
            p = self.prefix
        );
        run(&mut psql(self.env, "", &sql), None).assert_success();
    }
}

fn main() {
    let env = StackEnv::load();
    let run_id = unique_name("bench");
    let ledger_rows: u64 = env_number("LEDGER_ROWS").unwrap_or(0);
    let events: usize = env_number("EVENTS").unwrap_or(EVENTS);
    let _fill = (ledger_rows > 0).then(|| LedgerFill::insert(&env, &run_id, ledger_rows));
    let _subscriptions = Subscriptions::insert(&env, &run_id, RESTAURANTS, FAN_OUT);

    let deployment = Deployment::new(&env, "bench");
    let values: Vec<String> = (0..events)
        .map(|i| {
            let restaurant = format!("{run_id}-r{}", i % RESTAURANTS);
            campaign_event(&format!("{run_id}-e{i}"), &restaurant, "first campaign")
        })
        .collect();
    deployment.produce_spread(&values);

    // BENCH_CAMPAIGN_PUSH__KEY=value sets CAMPAIGN_PUSH__KEY for the service, to compare settings.
    let settings: Vec<(String, String)> = std::env::vars()
        .filter_map(|(key, value)| Some((key.strip_prefix("BENCH_")?.to_owned(), value)))
        .filter(|(key, _)| key.starts_with("CAMPAIGN_PUSH__"))
        .collect();
    let overrides: Vec<(&str, &str)> = settings
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    let service = deployment.start_with(&env, &overrides);
    let started = Instant::now();
    let cpu_before = service.cpu_seconds().unwrap_or(0.0);
    deployment.wait_consumed(Duration::from_secs(600));
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = service.cpu_seconds().unwrap_or(0.0) - cpu_before;
    let rows = (events * FAN_OUT) as f64;
    let batches = service
        .metric("campaign_push_batch_seconds_count")
        .unwrap_or(0.0);
    let batch_seconds = service
        .metric("campaign_push_batch_seconds_sum")
        .unwrap_or(0.0);
    println!(
        "pipeline: {events} events x fan-out {FAN_OUT} = {rows} rows and messages in {elapsed:.2} s \
         from a ready service: {:.0} events/s, {:.0} rows/s; {batches} batches of {:.1} ms on \
         average (one host, Kafka + PostgreSQL on the same 2 cores, \
         {ledger_rows} other pairs in the ledger)",
        events as f64 / elapsed,
        rows / elapsed,
        batch_seconds / batches.max(1.0) * 1000.0,
    );
    let stage = |name: &str| {
        let sum = service
            .metric(&format!(
                "campaign_push_stage_seconds_sum{{stage=\"{name}\"}}"
            ))
            .unwrap_or(0.0);
        sum / batches.max(1.0) * 1000.0
    };
    // Less at the mercy of what else the two cores do than the rate: compare settings by it.
    println!(
        "host CPU: {cpu:.2} s, {:.2} s per million rows",
        cpu / rows * 1e6
    );
    println!(
        "per batch: collect {:.1} ms, decide {:.1} ms, postgres {:.1} ms, kafka {:.1} ms; settings {settings:?}",
        stage("collect"),
        stage("decide"),
        stage("postgres"),
        stage("kafka"),
    );
    drop(service);
}
