//! Riding through server restarts against the real local stack: while the service works through a
//! stream with fan-out, PostgreSQL is restarted and later the Kafka broker
//! (`stack/stack.sh restart-postgres`, `stack/stack.sh restart-kafka`). The service must never
//! exit, must catch up on its own (reconnecting to both), and afterwards every expected
//! (campaign, client) pair is exactly once in PostgreSQL and exactly once in the output topic read
//! with `read_committed`; re-sent events add nothing.
//!
//! `RESTART_DOWNTIME_SECS` (default 0) keeps each server down that long before it starts again
//! (`STACK_RESTART_DOWNTIME` of `stack/stack.sh`). With e.g. 32 the Kafka outage outlasts the
//! service's 30 s limit on one transactional call (so it must resume a timed-out commit or abort)
//! but stays within the consumer's 45 s session timeout.
//!
//! This test stops and starts the shared stack's servers, so nothing else may use the stack while
//! it runs. That holds under `cargo test`: it runs the test binaries one after another, and this
//! binary holds this one test only. Do not add another test to this file.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use support::service::{Deployment, Service, Subscriptions, campaign_event};
use support::{StackEnv, repo_root, run_with_deadline, unique_name};

const RESTAURANTS: usize = 40;
/// The fan-out of every event.
const CLIENTS_PER_RESTAURANT: usize = 5;
const CHUNKS: usize = 6;
const EVENTS_PER_CHUNK: usize = 200;
/// Restart PostgreSQL right after producing this chunk, and Kafka right after that one.
const RESTART_POSTGRES_AFTER: usize = 1;
const RESTART_KAFKA_AFTER: usize = 3;
/// Small batches: a chunk takes many of them, so that one is in flight when a server goes away.
const BATCH_MAX_EVENTS: &str = "25";
/// A restart waits for the server's stop and start (Kafka may take up to 60 s + 120 s), plus the
/// downtime asked for.
const RESTART_DEADLINE: Duration = Duration::from_secs(240);
/// Generous: the sinks' retry backoff grows to 10 s, and the consumer rejoins its group.
const CONSUMED_DEADLINE: Duration = Duration::from_secs(300);

const EVENTS_METRIC: &str = "campaign_push_events_in_total";

/// If the test failed half-way through a restart, starts whatever server of the stack is not
/// running (`up` is idempotent), so that the stack is left as it was found.
struct RestoreStack;

impl Drop for RestoreStack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new(repo_root().join("stack/stack.sh"))
                .arg("up")
                .status();
        }
    }
}

/// `stack/stack.sh <command>` with `downtime`; returns how long it took.
#[track_caller]
fn stack(command: &str, downtime: Duration) -> Duration {
    let started = Instant::now();
    let finished = run_with_deadline(
        Command::new(repo_root().join("stack/stack.sh"))
            .arg(command)
            .env("STACK_RESTART_DOWNTIME", downtime.as_secs().to_string()),
        None,
        RESTART_DEADLINE + downtime,
    );
    finished.assert_success();
    print!("{}", finished.stdout_text());
    started.elapsed()
}

#[track_caller]
fn assert_running(service: &mut Service, when: &str) {
    assert!(
        service.is_running(),
        "the service exited {when}:\n{}",
        service.log_text()
    );
}

/// A log line without its ANSI colour codes (`ESC [ … m`).
fn without_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}

fn events_committed(service: &Service) -> f64 {
    service.metric(EVENTS_METRIC).unwrap_or(0.0)
}

fn sink_retries(service: &Service, sink: &str) -> f64 {
    service
        .metric(&format!(
            r#"campaign_push_sink_retries_total{{sink="{sink}"}}"#
        ))
        .unwrap_or(0.0)
}

#[test]
fn the_service_rides_through_a_postgres_and_a_kafka_restart_with_exact_counts() {
    let env = StackEnv::load();
    let downtime = Duration::from_secs(
        std::env::var("RESTART_DOWNTIME_SECS")
            .ok()
            .map(|v| {
                v.parse()
                    .expect("RESTART_DOWNTIME_SECS is a number of seconds")
            })
            .unwrap_or(0),
    );
    let run_id = unique_name("restarts");
    let subscriptions = Subscriptions::insert(&env, &run_id, RESTAURANTS, CLIENTS_PER_RESTAURANT);
    let restaurants = &subscriptions.restaurants;
    // Dropped before `subscriptions` (reverse order), so PostgreSQL is back for their cleanup.
    let _restore_stack = RestoreStack;

    let deployment = Deployment::new(&env, "restarts");
    let mut service = deployment.start_with(
        &env,
        &[(
            "CAMPAIGN_PUSH__PIPELINE__BATCH_MAX_EVENTS",
            BATCH_MAX_EVENTS,
        )],
    );
    let started = Instant::now();

    let mut expected: BTreeSet<(String, String)> = BTreeSet::new();
    let mut sent_events: Vec<String> = Vec::new();
    for chunk in 0..CHUNKS {
        let mut values = Vec::with_capacity(EVENTS_PER_CHUNK);
        for i in 0..EVENTS_PER_CHUNK {
            // One event in ten re-sends an earlier one (a producer retry): no new pairs.
            let value = if i % 10 == 9 && !sent_events.is_empty() {
                sent_events[(chunk * 131 + i * 17) % sent_events.len()].clone()
            } else {
                let restaurant = &restaurants[(chunk * 7 + i) % RESTAURANTS];
                let campaign = format!("{run_id}-chunk{chunk}-e{i}");
                expected.extend(subscriptions.pairs(&campaign, restaurant));
                campaign_event(&campaign, restaurant, "restart test")
            };
            values.push(value);
        }
        sent_events.extend(values.iter().cloned());
        deployment.produce_spread(&values);
        assert_running(&mut service, &format!("after chunk {chunk} was produced"));

        let restart = match chunk {
            RESTART_POSTGRES_AFTER => Some(("PostgreSQL", "restart-postgres")),
            RESTART_KAFKA_AFTER => Some(("Kafka", "restart-kafka")),
            _ => None,
        };
        let Some((server, command)) = restart else {
            continue;
        };
        // Right after a chunk was produced, so the service is in the middle of it.
        let committed_before = events_committed(&service);
        let took = stack(command, downtime);
        assert_running(&mut service, &format!("during the {server} restart"));
        println!(
            "restarts: {server} restarted in {:.1} s (kept down {} s of it); {} of {} events were committed when it began",
            took.as_secs_f64(),
            downtime.as_secs(),
            committed_before,
            sent_events.len()
        );
        // Recovery: how long until the service has committed everything produced so far.
        let restarted = Instant::now();
        deployment.wait_consumed_checking(CONSUMED_DEADLINE, || {
            assert_running(&mut service, &format!("after the {server} restart"));
            // The log of a service that stopped making progress, before the deadline's panic.
            assert!(
                restarted.elapsed() < CONSUMED_DEADLINE - Duration::from_secs(1),
                "the service did not catch up after the {server} restart; its log:\n{}",
                service.log_text()
            );
        });
        println!(
            "restarts: {server}: the service caught up {:.1} s after the restart (retries so far: postgres {}, kafka {})",
            restarted.elapsed().as_secs_f64(),
            sink_retries(&service, "postgres"),
            sink_retries(&service, "kafka")
        );
    }

    deployment.wait_consumed_checking(CONSUMED_DEADLINE, || {
        assert_running(&mut service, "before consuming everything");
    });
    assert_running(&mut service, "at the end");
    println!(
        "restarts: all {} events consumed {:.1} s after the service started ({} counted by the service, re-reads included); sink retries: postgres {}, kafka {}",
        sent_events.len(),
        started.elapsed().as_secs_f64(),
        events_committed(&service),
        sink_retries(&service, "postgres"),
        sink_retries(&service, "kafka")
    );
    let log = service.log_text();
    drop(service);
    // What the service itself said about the restarts, for whoever reads the output (librdkafka's
    // connection errors and the consumer's "broker down" warnings would drown it).
    for line in log.lines().map(without_colours) {
        if (line.contains(" WARN ") || line.contains(" ERROR "))
            && line.contains("campaign_push::")
            && !line.contains("consumer error")
        {
            println!("service: {line}");
        }
    }

    deployment.assert_exactly_once(&env, &format!("{run_id}-"), &expected, &log);
    let dead_letters = deployment.read_all(&deployment.dead_letter.name);
    assert!(
        dead_letters.is_empty(),
        "dead letters: {}",
        dead_letters.len()
    );

    println!(
        "restarts: {} events ({} re-sent), {} pairs exactly once in Kafka and PostgreSQL",
        sent_events.len(),
        sent_events.len() - expected.len() / CLIENTS_PER_RESTAURANT,
        expected.len()
    );
}
