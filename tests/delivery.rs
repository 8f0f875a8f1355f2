//! Decide once, deliver the decision, against the real local stack.
//!
//! The service is crashed at a protocol step (the test-only crash points of
//! `host/src/failpoint.rs`) after PostgreSQL has committed a batch and before Kafka has; then
//! something changes that would change a recomputation — the campaign ends, a subscriber leaves,
//! another guest is deployed — and the restarted service must send exactly the stored messages,
//! each identical to its feedback row. And data that a sink refuses (or would refuse) is
//! dead-lettered with its reason while the events after it are delivered.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::guests::{GuestBuild, test_guest};
use support::service::{Deployment, Record, Subscriptions, campaign_event, guest_wasm};
use support::{StackEnv, poll_until, psql, run, unique_name};

const DEADLINE: Duration = Duration::from_secs(120);
const VERSION_HEADER: &str = "campaign-push-guest-version";
const SHA256_HEADER: &str = "campaign-push-guest-sha256";
const REASON_HEADER: &str = "campaign-push-dead-letter-reason";
const OMITTED_HEADER: &str = "campaign-push-dead-letter-value-omitted";
const CRASH_BETWEEN_COMMITS: (&str, &str) = ("FAILPOINTS", "between-commits=return");

fn epoch_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `len` hex digits that neither PostgreSQL (it compresses long index entries, so a repeated
/// character would fit in the index) nor the producer's lz4 (the broker's size limit applies to
/// the compressed batch) can compress.
fn incompressible(len: usize) -> String {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut text = String::new();
    while text.len() < len {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        text.push_str(&format!("{:016x}", z ^ (z >> 31)));
    }
    text.truncate(len);
    text
}

/// The feedback rows of `campaign`, as JSON objects with the ten contract fields, by client.
fn rows_of(env: &StackEnv, campaign: &str) -> BTreeMap<String, serde_json::Value> {
    let sql = format!(
        "SELECT json_build_object('restaurant_id', restaurant_id, 'adv_campaign_id', \
         adv_campaign_id, 'adv_campaign_content', adv_campaign_content, 'adv_campaign_owner', \
         adv_campaign_owner, 'adv_campaign_owner_contact', adv_campaign_owner_contact, \
         'adv_campaign_datetime_start', adv_campaign_datetime_start, \
         'adv_campaign_datetime_end', adv_campaign_datetime_end, 'datetime_created', \
         datetime_created, 'client_id', client_id, 'trigger_datetime_created', \
         trigger_datetime_created) FROM subscribers_feedback WHERE adv_campaign_id = '{campaign}'"
    );
    let finished = run(&mut psql(env, "", &sql), None);
    finished.assert_success();
    let mut rows = BTreeMap::new();
    for line in finished.stdout_text().lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let client = row["client_id"].as_str().unwrap().to_owned();
        assert!(
            rows.insert(client, row).is_none(),
            "two rows for one client"
        );
    }
    rows
}

/// Asserts that `messages` are exactly one per row of `rows`, each equal to its row.
#[track_caller]
fn assert_messages_equal_rows(messages: &[Record], rows: &BTreeMap<String, serde_json::Value>) {
    let mut by_client = BTreeMap::new();
    for message in messages {
        assert!(
            by_client
                .insert(message.key_text().to_owned(), message.json())
                .is_none(),
            "two messages for client {}",
            message.key_text()
        );
    }
    assert_eq!(&by_client, rows, "the messages are not the rows");
}

/// One event of a campaign ending `ends_in` seconds after it is produced, crashed between the
/// commits, then `change` applied (given the campaign's end) and the service started again with
/// `restart_overrides`: returns the messages then sent and the rows the crashed run stored.
fn replay_after(
    name: &str,
    ends_in: i64,
    restart_overrides: &[(&str, &str)],
    change: impl FnOnce(&StackEnv, &Subscriptions<'_>, i64),
) -> (Vec<Record>, BTreeMap<String, serde_json::Value>) {
    let env = StackEnv::load();
    let run_id = unique_name(name);
    let subscriptions = Subscriptions::insert(&env, &run_id, 1, 3);
    let restaurant = subscriptions.restaurants[0].clone();
    let deployment = Deployment::new(&env, name);
    let campaign = format!("{run_id}-campaign");

    let mut crashing = deployment.spawn_with(&env, &[CRASH_BETWEEN_COMMITS]);
    crashing.wait_ready();
    let end = epoch_now() + ends_in;
    let event = campaign_event(&campaign, &restaurant, "soup of the day").replace(
        "\"adv_campaign_datetime_end\":2659207116",
        &format!("\"adv_campaign_datetime_end\":{end}"),
    );
    deployment.produce(&[(0, None, event.as_bytes())]);
    let status = crashing.wait_exit(DEADLINE);
    assert!(
        !status.success(),
        "the crash point must stop the service: {status}\n{}",
        crashing.log_text()
    );
    let rows = rows_of(&env, &campaign);
    assert_eq!(rows.len(), 3, "PostgreSQL committed before the crash");
    assert!(
        deployment.read_all(&deployment.output.name).is_empty(),
        "nothing reached Kafka before the crash"
    );

    change(&env, &subscriptions, end);
    let service = deployment.start_with(&env, restart_overrides);
    deployment.wait_consumed_checking(DEADLINE, || service.assert_running());
    let messages = deployment.read_all(&deployment.output.name);
    assert_eq!(rows_of(&env, &campaign), rows, "the replay wrote no rows");
    (messages, rows)
}

#[test]
fn a_replay_after_the_campaign_ended_sends_the_stored_messages() {
    let (messages, rows) = replay_after("replay-ended", 3, &[], |_, _, end| {
        // The restarted service must see the campaign as over; the wall clock is what it reads.
        poll_until("the campaign has ended", DEADLINE, || {
            (epoch_now() > end).then_some(())
        });
    });
    assert_messages_equal_rows(&messages, &rows);
}

#[test]
fn a_replay_after_a_subscriber_left_sends_the_stored_messages() {
    let a_year = 365 * 24 * 3600;
    let (messages, rows) = replay_after("replay-left", a_year, &[], |env, subscriptions, _| {
        let client = format!("{}-c0", subscriptions.restaurants[0]);
        let sql = format!("DELETE FROM subscribers_restaurants WHERE client_id = '{client}'");
        run(&mut psql(env, "", &sql), None).assert_success();
    });
    assert_messages_equal_rows(&messages, &rows);
}

#[test]
fn a_replay_after_a_guest_swap_sends_what_the_old_guest_decided() {
    let v1 = GuestBuild::read(&guest_wasm());
    let v2_path = test_guest("v2-content");
    let v2 = GuestBuild::read(&v2_path);
    let overrides = [("CAMPAIGN_PUSH__GUEST__PATH", v2_path.to_str().unwrap())];
    let a_year = 365 * 24 * 3600;
    let (messages, rows) = replay_after("replay-swap", a_year, &overrides, |_, _, _| {});
    assert_messages_equal_rows(&messages, &rows);
    for message in &messages {
        assert_eq!(message.headers[SHA256_HEADER], v1.sha256, "decided by v1");
        assert_eq!(message.headers[VERSION_HEADER], v1.version);
        assert_ne!(message.headers[SHA256_HEADER], v2.sha256);
    }
}

#[test]
fn data_a_sink_refuses_is_dead_lettered_with_its_reason_and_the_stream_goes_on() {
    let env = StackEnv::load();
    let run_id = unique_name("poison");
    let subscriptions = Subscriptions::insert(&env, &run_id, 1, 2);
    let restaurant = subscriptions.restaurants[0].clone();
    // A client id longer than any index entry: the ledger keeps clients in arrays, not in an
    // index, so it is delivered like any other.
    let long_client_restaurant = format!("{run_id}-long-client");
    let long_client = format!("{run_id}-{}", incompressible(3000));
    let sql = format!(
        "INSERT INTO subscribers_restaurants (client_id, restaurant_id) VALUES \
         ('{long_client}', '{long_client_restaurant}'), ('{run_id}-short', \
         '{long_client_restaurant}')"
    );
    run(&mut psql(&env, "", &sql), None).assert_success();
    let deployment = Deployment::new(&env, "poison");
    // The real transform, except that it lets a NUL into an EVIL event's rows: what PostgreSQL
    // refuses is data no check before it caught.
    let guest = test_guest("nul-in-rows");

    let event = |label: &str, restaurant: &str, content: &str| {
        campaign_event(&format!("{run_id}-{label}"), restaurant, content)
    };
    let with_field = |label: &str, field: &str, value: &str| {
        let mut object: serde_json::Value =
            serde_json::from_str(&event(label, &restaurant, "offer")).unwrap();
        object[field] = serde_json::Value::String(value.to_owned());
        object.to_string()
    };
    // (event, what its dead letter's reason must say), or a good event (no reason).
    let mut stream: Vec<(String, Option<&str>)> = Vec::new();
    for field in [
        "restaurant_id",
        "adv_campaign_id",
        "adv_campaign_content",
        "adv_campaign_owner",
        "adv_campaign_owner_contact",
    ] {
        stream.push((
            with_field(&format!("nul-{field}"), field, "nul\u{0}inside"),
            Some("U+0000"),
        ));
    }
    stream.push((event("good-1", &restaurant, "after the NULs"), None));
    stream.push((
        event("big", &restaurant, &"x".repeat(1_040_000)),
        Some("message.max.bytes (1000000)"),
    ));
    stream.push((event("good-2", &restaurant, "after the big one"), None));
    stream.push((event("long-client", &long_client_restaurant, "offer"), None));
    stream.push((
        event("evil", &restaurant, "EVIL offer"),
        Some("SQLSTATE 22021"),
    ));
    stream.push((event("good-3", &restaurant, "after the refused rows"), None));
    let long_id = "i".repeat(3000);
    stream.push((
        with_field("long-campaign", "adv_campaign_id", &long_id),
        Some("adv_campaign_id` is 3000 bytes long"),
    ));
    stream.push((
        with_field("long-restaurant", "restaurant_id", &long_id),
        Some("restaurant_id` is 3000 bytes long"),
    ));
    stream.push((event("good-4", &restaurant, "after the long ids"), None));

    let service = deployment.start_with(
        &env,
        &[("CAMPAIGN_PUSH__GUEST__PATH", guest.to_str().unwrap())],
    );
    // The broker takes records up to 1,048,588 bytes; the producer's default limit is lower.
    let producer = deployment.input_producer_with(&[("message.max.bytes", "1048588")]);
    for (value, _) in &stream {
        producer.send((0, None, value.as_bytes()));
    }
    producer.flush();
    deployment.wait_consumed_checking(DEADLINE, || service.assert_running());

    // In input order: dead letters without a key spread over the topic's partitions.
    let mut dead = deployment.read_all(&deployment.dead_letter.name);
    dead.sort_by_key(|letter| {
        letter.headers["campaign-push-source-offset"]
            .parse::<i64>()
            .unwrap()
    });
    let expected_dead: Vec<&str> = stream.iter().filter_map(|(_, reason)| *reason).collect();
    assert_eq!(
        dead.len(),
        expected_dead.len(),
        "one dead letter per refused event: {:?}",
        dead.iter()
            .map(|r| r.headers.get(REASON_HEADER))
            .collect::<Vec<_>>()
    );
    for (letter, expected) in dead.iter().zip(&expected_dead) {
        let reason = &letter.headers[REASON_HEADER];
        assert!(
            reason.contains(expected),
            "reason {reason:?} must say {expected:?}"
        );
        assert!(!reason.contains('\n'), "one line: {reason:?}");
    }
    let big = dead
        .iter()
        .find(|letter| letter.headers[REASON_HEADER].contains("message.max.bytes"))
        .unwrap();
    assert!(big.value.is_empty() && big.headers.contains_key(OMITTED_HEADER));
    let refused_rows = dead
        .iter()
        .find(|letter| letter.headers[REASON_HEADER].contains("22021"))
        .unwrap();
    assert!(refused_rows.headers[REASON_HEADER].contains("PostgreSQL refused"));

    // Everything good was delivered, message equal to row; nothing of the refused events was.
    let messages = deployment.read_all(&deployment.output.name);
    let mut rows = BTreeMap::new();
    for good in ["good-1", "good-2", "long-client", "good-3", "good-4"] {
        let campaign = format!("{run_id}-{good}");
        let campaign_rows = rows_of(&env, &campaign);
        assert_eq!(campaign_rows.len(), 2, "{good} delivered to both clients");
        for (client, row) in campaign_rows {
            rows.insert((campaign.clone(), client), row);
        }
    }
    let mut sent = BTreeMap::new();
    for message in &messages {
        let value = message.json();
        let pair = (
            value["adv_campaign_id"].as_str().unwrap().to_owned(),
            message.key_text().to_owned(),
        );
        assert!(sent.insert(pair, value).is_none(), "a message sent twice");
    }
    assert_eq!(
        sent, rows,
        "exactly the good events' messages, equal to their rows"
    );
    for label in ["big", "evil"] {
        assert!(rows_of(&env, &format!("{run_id}-{label}")).is_empty());
    }
}

/// Runs the service until it stops at the crash point `failpoint` names, and checks it did.
fn crash_at(deployment: &Deployment, env: &StackEnv, overrides: &[(&str, &str)], failpoint: &str) {
    let mut with_crash = overrides.to_vec();
    with_crash.push(("FAILPOINTS", failpoint));
    let service = deployment.spawn_with(env, &with_crash);
    let status = service.wait_exit(DEADLINE);
    let point = failpoint.split('=').next().unwrap();
    assert!(
        !status.success()
            && service
                .log_text()
                .contains(&format!("failpoint {point}: aborting")),
        "the service must stop at {point}: {status}\n{}",
        service.log_text()
    );
}

#[test]
fn a_fan_out_larger_than_a_batch_is_delivered_in_parts_exactly_once_across_crashes() {
    let env = StackEnv::load();
    let run_id = unique_name("parts");
    let subscriptions = Subscriptions::insert(&env, &run_id, 2, 25);
    let (r0, r1) = (&subscriptions.restaurants[0], &subscriptions.restaurants[1]);
    let deployment = Deployment::new(&env, "parts");
    // 75 outputs in batches of at most 10: every event is delivered in parts, and the events
    // after a part in its partition wait for the part's last.
    let overrides = [("CAMPAIGN_PUSH__PIPELINE__BATCH_MAX_OUTPUTS", "10")];
    let (a, b, c) = (
        format!("{run_id}-a"),
        format!("{run_id}-b"),
        format!("{run_id}-c"),
    );
    deployment.produce(&[
        (0, None, campaign_event(&a, r0, "first").as_bytes()),
        (0, None, campaign_event(&b, r1, "second").as_bytes()),
        (1, None, campaign_event(&c, r1, "third").as_bytes()),
    ]);

    // A part stored but not delivered (it is sent as stored), then parts delivered but not yet
    // forgotten (they are not sent again), then to the end.
    crash_at(
        &deployment,
        &env,
        &overrides,
        "between-commits=2*off->return",
    );
    crash_at(
        &deployment,
        &env,
        &overrides,
        "after-kafka-commit=1*off->return",
    );
    let service = deployment.start_with(&env, &overrides);
    deployment.wait_consumed_checking(DEADLINE, || service.assert_running());

    let mut expected = std::collections::BTreeSet::new();
    for (campaign, restaurant) in [(&a, r0), (&b, r1), (&c, r1)] {
        expected.extend(subscriptions.pairs(campaign, restaurant));
    }
    deployment.assert_exactly_once(&env, &format!("{run_id}-"), &expected, "parts");
    let messages = deployment.read_all(&deployment.output.name);
    for campaign in [&a, &b, &c] {
        let rows = rows_of(&env, campaign);
        let of_campaign: Vec<Record> = messages
            .iter()
            .filter(|m| m.json()["adv_campaign_id"] == campaign.as_str())
            .cloned()
            .collect();
        assert_messages_equal_rows(&of_campaign, &rows);
        // Every part at the first part's `now`: one campaign, one trigger time.
        let triggers: std::collections::BTreeSet<String> = rows
            .values()
            .map(|row| row["trigger_datetime_created"].to_string())
            .collect();
        assert_eq!(triggers.len(), 1, "{campaign}: {triggers:?}");
    }
    // Once complete, no part of them stays stored: a start forgets what Kafka has committed.
    drop(service);
    let restarted = deployment.start_with(&env, &overrides);
    assert_eq!(deployment.stored_decisions(&env), 0, "parts not forgotten");
    drop(restarted);
}

#[test]
fn a_running_service_forgets_the_decisions_kafka_committed() {
    const ROUNDS: usize = 6;
    const EVENTS: usize = 6;
    let env = StackEnv::load();
    let run_id = unique_name("forget");
    let subscriptions = Subscriptions::insert(&env, &run_id, 1, 2);
    let restaurant = &subscriptions.restaurants[0];
    let deployment = Deployment::new(&env, "forget");
    let service = deployment.start(&env);
    for round in 0..ROUNDS {
        let events: Vec<String> = (0..EVENTS)
            .map(|event| {
                let campaign = format!("{run_id}-r{round}-e{event}");
                campaign_event(&campaign, restaurant, "lunch")
            })
            .collect();
        deployment.produce_spread(&events);
        deployment.wait_consumed_checking(DEADLINE, || service.assert_running());
    }
    // A batch's decisions go with a later batch's store, once its delivery is known: the last
    // round's wait for the next input, and the round before's may have been stored before the
    // last round's first batch knew of their delivery.
    let stored = deployment.stored_decisions(&env);
    assert!(
        stored <= 2 * EVENTS as u64,
        "{stored} of {} decisions still stored",
        ROUNDS * EVENTS
    );
}

/// The number of ledger pairs of `campaign`, and whether the ledger still knows its end.
fn ledger_of(env: &StackEnv, campaign: &str) -> (u64, bool) {
    let sql = format!(
        "SELECT (SELECT coalesce(sum(cardinality(clients)), 0) FROM campaign_push_ledger \
         WHERE adv_campaign_id = '{campaign}'), \
         EXISTS (SELECT 1 FROM campaign_push_campaigns WHERE adv_campaign_id = '{campaign}')"
    );
    let finished = run(&mut psql(env, "", &sql), None);
    finished.assert_success();
    let stdout = finished.stdout_text();
    let (pairs, known) = stdout.trim().split_once('|').unwrap();
    (pairs.parse().unwrap(), known == "t")
}

#[test]
fn the_ledger_forgets_a_campaign_its_retention_after_its_end() {
    let env = StackEnv::load();
    let run_id = unique_name("retention");
    let subscriptions = Subscriptions::insert(&env, &run_id, 1, 3);
    let restaurant = &subscriptions.restaurants[0];
    let deployment = Deployment::new(&env, "retention");
    let service = deployment.start_with(
        &env,
        &[
            ("CAMPAIGN_PUSH__LEDGER__RETENTION", "1s"),
            ("CAMPAIGN_PUSH__LEDGER__PURGE_INTERVAL", "1s"),
        ],
    );
    let (ending, lasting) = (format!("{run_id}-ending"), format!("{run_id}-lasting"));
    let end = epoch_now() + 5;
    let ending_event = campaign_event(&ending, restaurant, "today only").replace(
        "\"adv_campaign_datetime_end\":2659207116",
        &format!("\"adv_campaign_datetime_end\":{end}"),
    );
    deployment.produce(&[
        (0, None, ending_event.as_bytes()),
        (
            0,
            None,
            campaign_event(&lasting, restaurant, "for years").as_bytes(),
        ),
    ]);
    deployment.wait_consumed_checking(DEADLINE, || service.assert_running());
    assert_eq!(rows_of(&env, &ending).len(), 3, "delivered before its end");
    assert_eq!(ledger_of(&env, &lasting), (3, true));

    poll_until("the ended campaign's pairs are deleted", DEADLINE, || {
        service.assert_running();
        (ledger_of(&env, &ending) == (0, false)).then_some(())
    });
    assert!(
        epoch_now() > end + 1,
        "not before the retention after the end"
    );
    assert_eq!(
        ledger_of(&env, &lasting),
        (3, true),
        "a running campaign is kept"
    );
    assert_eq!(
        rows_of(&env, &ending).len(),
        3,
        "feedback rows are the users', kept"
    );
    assert!(
        service
            .metric("campaign_push_ledger_pairs_purged_total")
            .unwrap()
            >= 3.0
    );
}

#[test]
fn messages_kafka_refuses_after_postgres_stored_them_dead_letter_the_event_in_both_sinks() {
    let env = StackEnv::load();
    let run_id = unique_name("kafka-refuses");
    let subscriptions = Subscriptions::insert(&env, &run_id, 1, 2);
    let restaurant = &subscriptions.restaurants[0];
    let deployment = Deployment::new(&env, "kafka-refuses");
    let service = deployment.start(&env);
    // Lowered once the service runs, so that only the broker knows: the plan's check at start-up
    // read the old limit, and the messages of the big event pass PostgreSQL first.
    deployment.output.set_config("max.message.bytes", "20000");
    let (good_1, big, good_2) = (
        format!("{run_id}-good-1"),
        format!("{run_id}-big"),
        format!("{run_id}-good-2"),
    );
    deployment.produce(&[
        (
            0,
            None,
            campaign_event(&good_1, restaurant, "before").as_bytes(),
        ),
        (
            0,
            None,
            campaign_event(&big, restaurant, &incompressible(30_000)).as_bytes(),
        ),
        (
            0,
            None,
            campaign_event(&good_2, restaurant, "after").as_bytes(),
        ),
    ]);
    deployment.wait_consumed_checking(DEADLINE, || service.assert_running());

    let dead = deployment.read_all(&deployment.dead_letter.name);
    assert_eq!(dead.len(), 1, "one dead letter: the big event");
    let reason = &dead[0].headers[REASON_HEADER];
    assert!(
        reason.contains("Kafka refused") && reason.contains("too large"),
        "{reason}"
    );
    assert!(
        dead[0]
            .value
            .windows(big.len())
            .any(|w| w == big.as_bytes()),
        "the dead letter is the big event"
    );
    // Both sinks agree: the big event has neither rows nor messages, the others have both.
    assert!(
        rows_of(&env, &big).is_empty(),
        "its stored rows were removed"
    );
    let messages = deployment.read_all(&deployment.output.name);
    for campaign in [&good_1, &good_2] {
        let of_campaign: Vec<Record> = messages
            .iter()
            .filter(|m| m.json()["adv_campaign_id"] == campaign.as_str())
            .cloned()
            .collect();
        assert_messages_equal_rows(&of_campaign, &rows_of(&env, campaign));
        assert_eq!(of_campaign.len(), 2);
    }
    assert!(
        !messages
            .iter()
            .any(|m| m.json()["adv_campaign_id"] == big.as_str())
    );
}
