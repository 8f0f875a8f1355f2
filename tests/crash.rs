//! Crash safety against the real local stack: the service is crashed while it works through a
//! stream with fan-out, and restarted; afterwards every expected (campaign, client) pair is exactly
//! once in PostgreSQL and exactly once in the output topic read with `read_committed`, and re-sent
//! events added nothing.
//!
//! Batches are cut by outputs, so events are delivered in parts as well as whole.
//!
//! The cycles take turns: four of five crash the service at a step of the delivery protocol (the
//! test-only crash points of `host/src/failpoint.rs`, each after a random number of batches), the
//! fifth kills it with SIGKILL at a random moment. The test reports how many crashes landed at
//! each step. `CHAOS_CYCLES` sets the number of cycles (default 10; `make chaos` runs 50).

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::service::{Deployment, Subscriptions, campaign_event};
use support::{StackEnv, env_number, unique_name};

const RESTAURANTS: usize = 20;
const CLIENTS_PER_RESTAURANT: usize = 10;
const EVENTS_PER_CYCLE: usize = 300;

/// The crash points of the delivery protocol, in protocol order.
const STEPS: [&str; 4] = [
    "before-postgres-commit",
    "between-commits",
    "before-kafka-commit",
    "after-kafka-commit",
];

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

#[test]
fn killed_at_random_moments_the_service_delivers_every_pair_exactly_once() {
    let env = StackEnv::load();
    let cycles: usize = env_number("CHAOS_CYCLES").unwrap_or(10);
    let seed: u64 =
        env_number("CHAOS_SEED").unwrap_or_else(|| std::process::id() as u64 * 2_654_435_761 + 1);
    println!("chaos: {cycles} cycles, CHAOS_SEED={seed}");
    let mut rng = Rng(seed);

    let run_id = unique_name("crash");
    let subscriptions = Subscriptions::insert(&env, &run_id, RESTAURANTS, CLIENTS_PER_RESTAURANT);
    let restaurants = &subscriptions.restaurants;

    let deployment = Deployment::new(&env, "crash");
    // 40 events of 10 clients would be 400 outputs: a budget of 128 cuts fan-outs into parts,
    // which the crashes then interrupt too.
    let overrides = [
        ("CAMPAIGN_PUSH__PIPELINE__BATCH_MAX_EVENTS", "40"),
        ("CAMPAIGN_PUSH__PIPELINE__BATCH_MAX_OUTPUTS", "128"),
    ];
    let mut expected: BTreeSet<(String, String)> = BTreeSet::new();
    let mut sent_events: Vec<String> = Vec::new();
    let mut crashes: std::collections::BTreeMap<&str, usize> = Default::default();
    for cycle in 0..cycles {
        let mut values = Vec::new();
        for i in 0..EVENTS_PER_CYCLE {
            // One event in ten re-sends an earlier campaign (a producer retry): no new pairs.
            let value = if !sent_events.is_empty() && rng.below(10) == 0 {
                sent_events[rng.below(sent_events.len() as u64) as usize].clone()
            } else {
                let restaurant = &restaurants[rng.below(RESTAURANTS as u64) as usize];
                let campaign = format!("{run_id}-cycle{cycle}-e{i}");
                expected.extend(subscriptions.pairs(&campaign, restaurant));
                campaign_event(&campaign, restaurant, "crash test")
            };
            values.push(value);
        }
        sent_events.extend(values.iter().cloned());
        deployment.produce_spread(&values);

        match STEPS.get(cycle % (STEPS.len() + 1)) {
            Some(step) => {
                // Crash at the step after a few batches: 300 events make at least 8 of 40.
                let failpoint = format!("{step}={}*off->return", rng.below(6));
                let mut with_crash = overrides.to_vec();
                with_crash.push(("FAILPOINTS", &failpoint));
                let service = deployment.spawn_with(&env, &with_crash);
                let status = service.wait_exit(Duration::from_secs(120));
                assert!(!status.success(), "{step}: {}", service.log_text());
                assert!(
                    service
                        .log_text()
                        .contains(&format!("failpoint {step}: aborting")),
                    "the service must stop at {step}:\n{}",
                    service.log_text()
                );
                *crashes.entry(*step).or_default() += 1;
            }
            None => {
                let service = deployment.start_with(&env, &overrides);
                // The chaos schedule itself, not a synchronisation: kill somewhere in the first
                // 1.5 s of work, which on this machine lands before, inside and after batches.
                std::thread::sleep(Duration::from_millis(rng.below(1500)));
                service.kill();
                *crashes.entry("SIGKILL at a random moment").or_default() += 1;
            }
        }
    }

    let service = deployment.start_with(&env, &overrides);
    deployment.wait_consumed(Duration::from_secs(180));
    drop(service);

    // A start forgets the decisions that Kafka has committed: afterwards none of this run's is
    // still stored.
    let restarted = deployment.start_with(&env, &overrides);
    assert_eq!(
        deployment.stored_decisions(&env),
        0,
        "decisions not forgotten"
    );
    drop(restarted);

    deployment.assert_exactly_once(
        &env,
        &format!("{run_id}-"),
        &expected,
        &format!("CHAOS_SEED={seed}"),
    );
    println!(
        "chaos: {cycles} crashes ({crashes:?}), {} events, {} pairs exactly once in Kafka and \
         PostgreSQL",
        sent_events.len(),
        expected.len()
    );
}
