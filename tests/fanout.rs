//! One restaurant with a million subscribers, against the real local stack: its campaign is
//! delivered in parts (a batch decides at most `pipeline.batch_max_outputs`), across a crash in the
//! middle, completely and exactly once in both sinks, with the host's memory bounded by a part,
//! not by the fan-out.
//!
//! `FANOUT_SUBSCRIBERS` sets the size (default 1,000,000).

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use support::service::{Deployment, Service, campaign_event};
use support::{StackEnv, env_number, poll_until, psql, run, unique_name};

const DEADLINE: Duration = Duration::from_secs(600);
/// What the host's resident memory may grow by while it delivers, over what it held when ready.
const GROWTH_BOUND: u64 = 300 << 20;

/// Rows of the run, deleted when dropped (they would slow every later start's cache load).
struct Cleanup<'a> {
    env: &'a StackEnv,
    restaurant: String,
    campaign: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let sql = format!(
            "DELETE FROM subscribers_restaurants WHERE restaurant_id = '{r}'; \
             DELETE FROM subscribers_feedback WHERE adv_campaign_id = '{c}'; \
             DELETE FROM campaign_push_ledger WHERE adv_campaign_id = '{c}';",
            r = self.restaurant,
            c = self.campaign
        );
        let finished = run(&mut psql(self.env, "", &sql), None);
        if !std::thread::panicking() {
            finished.assert_success();
        }
    }
}

/// Follows how much the service's resident memory grows over what it held when ready (its
/// peak from then on, as the kernel keeps it), until the process is gone.
struct Growth {
    ready: u64,
    peak: u64,
}

impl Growth {
    /// From now on, for `service`, which is ready.
    fn start(service: &Service) -> Self {
        let (ready, _) = service.memory().expect("the service runs");
        service.reset_peak_memory();
        Self { ready, peak: 0 }
    }

    fn sample(&mut self, service: &Service) {
        if let Some((_, peak)) = service.memory() {
            self.peak = self.peak.max(peak.saturating_sub(self.ready));
        }
    }
}

#[test]
fn a_restaurant_with_a_million_subscribers_gets_its_campaign_exactly_once_in_bounded_memory() {
    let env = StackEnv::load();
    let subscribers: u64 = env_number("FANOUT_SUBSCRIBERS").unwrap_or(1_000_000);
    let run_id = unique_name("fanout");
    let cleanup = Cleanup {
        env: &env,
        restaurant: format!("{run_id}-r"),
        campaign: format!("{run_id}-campaign"),
    };
    let (restaurant, campaign) = (&cleanup.restaurant, &cleanup.campaign);
    let started = Instant::now();
    let sql = format!(
        "INSERT INTO subscribers_restaurants (client_id, restaurant_id) \
         SELECT '{run_id}-c' || i, '{restaurant}' FROM generate_series(1, {subscribers}) i"
    );
    run(&mut psql(&env, "", &sql), None).assert_success();
    println!(
        "fanout: {subscribers} subscriptions inserted in {:?}",
        started.elapsed()
    );

    let deployment = Deployment::new(&env, "fanout");
    let overrides = [("CAMPAIGN_PUSH__PIPELINE__BATCH_MAX_OUTPUTS", "20000")];
    deployment.produce(&[(
        0,
        None,
        campaign_event(campaign, restaurant, "for everyone").as_bytes(),
    )]);

    // Part of the way, then a crash between a part's two commits.
    let parts_before_crash = (subscribers / 20_000 / 2).max(1);
    let failpoint = format!("between-commits={parts_before_crash}*off->return");
    let mut with_crash = overrides.to_vec();
    with_crash.push(("FAILPOINTS", &failpoint));
    let mut crashing = deployment.spawn_with(&env, &with_crash);
    crashing.wait_ready();
    let mut first_growth = Growth::start(&crashing);
    let first = Instant::now();
    let status = poll_until("the service stops at the crash point", DEADLINE, || {
        first_growth.sample(&crashing);
        crashing.exit_status()
    });
    assert!(
        !status.success()
            && crashing
                .log_text()
                .contains("failpoint between-commits: aborting"),
        "the service must stop between the commits: {status}\n{}",
        crashing.log_text()
    );
    let first_time = first.elapsed();
    drop(crashing);

    let mut service = deployment.spawn_with(&env, &overrides);
    service.wait_ready();
    let mut growth = Growth::start(&service);
    let second = Instant::now();
    deployment.wait_consumed_checking(DEADLINE, || {
        service.assert_running();
        growth.sample(&service);
    });
    growth.sample(&service);
    let second_time = second.elapsed();
    println!(
        "fanout: {subscribers} subscribers; {parts_before_crash} parts of 20000 then a crash in \
         {first_time:?} (RSS growth {} MiB), the rest after a restart in {second_time:?} (RSS \
         growth {} MiB over {} MiB when ready)",
        first_growth.peak >> 20,
        growth.peak >> 20,
        growth.ready >> 20
    );
    assert!(
        first_growth.peak < GROWTH_BOUND && growth.peak < GROWTH_BOUND,
        "RSS grew by {} MiB and {} MiB",
        first_growth.peak >> 20,
        growth.peak >> 20
    );

    // Exactly once in PostgreSQL, every row at the first part's `now`.
    let sql = format!(
        "SELECT count(*), count(DISTINCT client_id), count(DISTINCT trigger_datetime_created), \
         min(trigger_datetime_created) FROM subscribers_feedback WHERE adv_campaign_id = '{campaign}'"
    );
    let finished = run(&mut psql(&env, "", &sql), None);
    finished.assert_success();
    let stdout = finished.stdout_text();
    let fields: Vec<&str> = stdout.trim().split('|').collect();
    assert_eq!(
        fields[..3],
        [
            subscribers.to_string().as_str(),
            subscribers.to_string().as_str(),
            "1"
        ],
        "rows, distinct clients, distinct trigger times"
    );
    let trigger: i64 = fields[3].parse().unwrap();

    // Exactly once in Kafka, every message the row of its client.
    let keys = read_output(
        &deployment,
        &run_id,
        campaign,
        restaurant,
        trigger,
        subscribers,
    );
    assert_eq!(keys.len() as u64, subscribers, "one message per subscriber");
    drop(service);
    drop(cleanup);
}

/// Reads the output topic to its end, checking each message against the campaign's rows (the
/// same for every client but the client id); returns the distinct client ids, panicking on a
/// duplicate.
fn read_output(
    deployment: &Deployment,
    run_id: &str,
    campaign: &str,
    restaurant: &str,
    trigger: i64,
    subscribers: u64,
) -> HashSet<String> {
    let consumer: BaseConsumer = deployment.admin_consumer(&unique_name("fanout-reader"));
    let topic = &deployment.output.name;
    let mut list = TopicPartitionList::new();
    for partition in 0..3 {
        list.add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    let mut at_end = [false; 3];
    let mut keys = HashSet::new();
    let client_prefix = format!("{run_id}-c");
    let deadline = Instant::now() + DEADLINE;
    while !at_end.iter().all(|&end| end) {
        assert!(Instant::now() < deadline, "reading {topic}: not done");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                at_end[message.partition() as usize] = false;
                let key = std::str::from_utf8(message.key().unwrap()).unwrap();
                let value: serde_json::Value =
                    serde_json::from_slice(message.payload().unwrap()).unwrap();
                let number: Option<u64> = key
                    .strip_prefix(&client_prefix)
                    .and_then(|n| n.parse().ok());
                assert!(
                    number.is_some_and(|n| (1..=subscribers).contains(&n)),
                    "{key} is not a subscriber"
                );
                assert_eq!(value["client_id"], key);
                assert_eq!(value["adv_campaign_id"], campaign);
                assert_eq!(value["restaurant_id"], restaurant);
                assert_eq!(value["trigger_datetime_created"], trigger);
                assert!(keys.insert(key.to_owned()), "two messages for {key}");
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => at_end[p as usize] = true,
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            None => {}
        }
    }
    keys
}
