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

/// `len` hex digits that PostgreSQL cannot compress (it compresses long index entries, so a
/// repeated character would fit in the index).
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
    // A client id too long for the ledger's index: the guest cannot know, PostgreSQL refuses.
    let long_client_restaurant = format!("{run_id}-long-client");
    let long_client = format!("{run_id}-{}", incompressible(3000));
    let sql = format!(
        "INSERT INTO subscribers_restaurants (client_id, restaurant_id) VALUES \
         ('{long_client}', '{long_client_restaurant}'), ('{run_id}-short', \
         '{long_client_restaurant}')"
    );
    run(&mut psql(&env, "", &sql), None).assert_success();
    let deployment = Deployment::new(&env, "poison");

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
    stream.push((
        event("long-client", &long_client_restaurant, "offer"),
        Some("SQLSTATE 54000"),
    ));
    stream.push((event("good-3", &restaurant, "after the long client"), None));
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

    let service = deployment.start(&env);
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
    let long_client_letter = dead
        .iter()
        .find(|letter| letter.headers[REASON_HEADER].contains("54000"))
        .unwrap();
    assert!(long_client_letter.headers[REASON_HEADER].contains("PostgreSQL"));

    // Everything good was delivered, message equal to row; nothing of the refused events was.
    let messages = deployment.read_all(&deployment.output.name);
    let mut rows = BTreeMap::new();
    for good in ["good-1", "good-2", "good-3", "good-4"] {
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
    for label in ["big", "long-client"] {
        assert!(rows_of(&env, &format!("{run_id}-{label}")).is_empty());
    }
}
