//! Crash safety against the real local stack: the service is killed with SIGKILL at random
//! moments while it works through a stream with fan-out, and restarted; afterwards every expected
//! (campaign, client) pair is exactly once in PostgreSQL and exactly once in the output topic read
//! with `read_committed`, and re-sent events added nothing.
//!
//! `CHAOS_CYCLES` sets the number of kill/restart cycles (default 10; `make chaos` runs more).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use support::service::{Deployment, InputRecord};
use support::{StackEnv, psql, run, unique_name};

const RESTAURANTS: usize = 20;
const CLIENTS_PER_RESTAURANT: usize = 10;
const EVENTS_PER_CYCLE: usize = 300;

/// A small deterministic generator (xorshift), seeded per run and printed, so a failing schedule
/// can be replayed with `CHAOS_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn event(campaign: &str, restaurant: &str) -> String {
    format!(
        r#"{{"restaurant_id":"{restaurant}","adv_campaign_id":"{campaign}","adv_campaign_content":"crash test","adv_campaign_owner":"Ivanov Ivan Ivanovich","adv_campaign_owner_contact":"iiivanov@restaurant.ru","adv_campaign_datetime_start":1678615562,"adv_campaign_datetime_end":2659207116,"datetime_created":1678879362}}"#
    )
}

#[test]
fn killed_at_random_moments_the_service_delivers_every_pair_exactly_once() {
    let env = StackEnv::load();
    let cycles: usize = std::env::var("CHAOS_CYCLES")
        .ok()
        .map(|v| v.parse().expect("CHAOS_CYCLES is a number"))
        .unwrap_or(10);
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .map(|v| v.parse().expect("CHAOS_SEED is a number"))
        .unwrap_or_else(|| std::process::id() as u64 * 2_654_435_761 + 1);
    println!("chaos: {cycles} cycles, CHAOS_SEED={seed}");
    let mut rng = Rng(seed);

    let run_id = unique_name("crash");
    let restaurants: Vec<String> = (0..RESTAURANTS).map(|r| format!("{run_id}-r{r}")).collect();
    let mut subscriptions =
        String::from("INSERT INTO subscribers_restaurants (client_id, restaurant_id) VALUES ");
    for (r, restaurant) in restaurants.iter().enumerate() {
        for c in 0..CLIENTS_PER_RESTAURANT {
            if r > 0 || c > 0 {
                subscriptions.push(',');
            }
            subscriptions.push_str(&format!("('{restaurant}-c{c}', '{restaurant}')"));
        }
    }
    run(&mut psql(&env, "", &subscriptions), None).assert_success();

    let deployment = Deployment::new(&env, "crash");
    let overrides = [("CAMPAIGN_PUSH__PIPELINE__BATCH_MAX_EVENTS", "40")];
    let mut expected: BTreeSet<(String, String)> = BTreeSet::new();
    let mut sent_events: Vec<String> = Vec::new();
    for cycle in 0..cycles {
        let mut values = Vec::new();
        for i in 0..EVENTS_PER_CYCLE {
            // One event in ten re-sends an earlier campaign (a producer retry): no new pairs.
            let value = if !sent_events.is_empty() && rng.below(10) == 0 {
                sent_events[rng.below(sent_events.len() as u64) as usize].clone()
            } else {
                let restaurant = &restaurants[rng.below(RESTAURANTS as u64) as usize];
                let campaign = format!("{run_id}-cycle{cycle}-e{i}");
                for c in 0..CLIENTS_PER_RESTAURANT {
                    expected.insert((campaign.clone(), format!("{restaurant}-c{c}")));
                }
                event(&campaign, restaurant)
            };
            values.push(value);
        }
        sent_events.extend(values.iter().cloned());
        let records: Vec<InputRecord> = values
            .iter()
            .enumerate()
            .map(|(i, v)| ((i % 3) as i32, None, v.as_bytes()))
            .collect();
        deployment.produce(&records);

        let service = deployment.start_with(&env, &overrides);
        // The chaos schedule itself, not a synchronisation: kill somewhere in the first 1.5 s of
        // work, which on this machine lands before, inside and after batches.
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        service.kill();
    }

    let service = deployment.start_with(&env, &overrides);
    deployment.wait_consumed(Duration::from_secs(180));
    drop(service);

    // Kafka, read_committed: each expected pair exactly once, nothing else.
    let mut in_kafka: BTreeMap<(String, String), usize> = BTreeMap::new();
    for record in deployment.read_all(&deployment.output.name) {
        let value = record.json();
        let pair = (
            value["adv_campaign_id"].as_str().unwrap().to_owned(),
            value["client_id"].as_str().unwrap().to_owned(),
        );
        assert_eq!(pair.1, record.key_text());
        *in_kafka.entry(pair).or_default() += 1;
    }
    let kafka_duplicates: Vec<_> = in_kafka.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        kafka_duplicates.is_empty(),
        "duplicates in Kafka: {kafka_duplicates:?}"
    );
    let kafka_pairs: BTreeSet<_> = in_kafka.into_keys().collect();
    assert_eq!(kafka_pairs.len(), expected.len(), "pairs in Kafka");
    assert!(
        kafka_pairs == expected,
        "Kafka pairs differ from the expected pairs"
    );

    // PostgreSQL: each expected pair exactly once.
    let sql = format!(
        "SELECT adv_campaign_id, client_id, count(*) FROM subscribers_feedback WHERE adv_campaign_id LIKE '{run_id}-%' GROUP BY 1, 2"
    );
    let finished = run(&mut psql(&env, "", &sql), None);
    finished.assert_success();
    let mut pg_pairs = BTreeSet::new();
    for line in finished.stdout_text().lines() {
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(fields[2], "1", "duplicate row for {line}");
        pg_pairs.insert((fields[0].to_owned(), fields[1].to_owned()));
    }
    assert_eq!(pg_pairs.len(), expected.len(), "pairs in PostgreSQL");
    assert!(
        pg_pairs == expected,
        "PostgreSQL pairs differ from the expected pairs"
    );
    println!(
        "chaos: {cycles} kills, {} events, {} pairs exactly once in Kafka and PostgreSQL",
        sent_events.len(),
        expected.len()
    );

    let cleanup =
        format!("DELETE FROM subscribers_restaurants WHERE restaurant_id LIKE '{run_id}-%'");
    run(&mut psql(&env, "", &cleanup), None).assert_success();
}
