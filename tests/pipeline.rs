//! The service end to end against the real local stack (`make up`): the users' kcat commands over
//! SASL_SSL, PostgreSQL rows, dead letters, subscription changes and a clean stop. Every test runs
//! the real binary on topics and a consumer group of its own, and campaigns ids no other run uses.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::service::{Deployment, InputRecord, Record};
use support::{StackEnv, kcat, kcat_sasl_args, psql, run, unique_name};

const RESTAURANT: &str = "123e4567-e89b-12d3-a456-426614174000";
const RESTAURANT_WITH_DUPLICATE: &str = "123e4567-e89b-12d3-a456-426614174001";
const SAMPLE_CAMPAIGN_ID: &str = "123e4567-e89b-12d3-a456-426614174003";
const DEADLINE: Duration = Duration::from_secs(90);

fn sample_event() -> String {
    std::fs::read_to_string(support::repo_root().join("stack/contract/sample_event.json"))
        .unwrap()
        .trim()
        .to_owned()
}

/// The sample event with its own campaign id (the ledger remembers every campaign ever sent) and
/// possibly another restaurant.
fn event(campaign_id: &str, restaurant_id: &str) -> String {
    sample_event()
        .replace(SAMPLE_CAMPAIGN_ID, campaign_id)
        .replace(RESTAURANT, restaurant_id)
}

fn epoch_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The users' produce command from the contract, with the line `first_message:<event>`.
fn kcat_produce(env: &StackEnv, topic: &str, event: &str) {
    let mut args = kcat_sasl_args(
        env,
        env.get("KAFKA_SASL_PASSWORD"),
        env.get("KAFKA_CA_FILE"),
    );
    args.extend(["-t".into(), topic.into(), "-K:".into(), "-P".into()]);
    run(
        kcat().args(&args),
        Some(format!("first_message:{event}\n").as_bytes()),
    )
    .assert_success();
}

/// The users' read command from the contract (`-C -o beginning`, plus `-e` to end), one
/// `key\tvalue` line per message.
fn kcat_read(env: &StackEnv, topic: &str) -> Vec<String> {
    let mut args = kcat_sasl_args(
        env,
        env.get("KAFKA_SASL_PASSWORD"),
        env.get("KAFKA_CA_FILE"),
    );
    args.extend(
        [
            "-t",
            topic,
            "-C",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%k\t%s\n",
        ]
        .map(String::from),
    );
    let finished = run(kcat().args(&args), None);
    finished.assert_success();
    finished.stdout_text().lines().map(str::to_owned).collect()
}

/// `subscribers_feedback` rows of a campaign as JSON objects, in id order.
fn feedback_rows(env: &StackEnv, campaign_id: &str) -> Vec<Value> {
    let sql = format!(
        "SELECT row_to_json(f) FROM subscribers_feedback f WHERE adv_campaign_id = '{campaign_id}' ORDER BY id"
    );
    let finished = run(&mut psql(env, "", &sql), None);
    finished.assert_success();
    finished
        .stdout_text()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn outputs_of<'a>(records: &'a [Record], campaign_id: &str) -> Vec<&'a Record> {
    records
        .iter()
        .filter(|r| r.json()["adv_campaign_id"] == campaign_id)
        .collect()
}

fn clients(digits: &[&str]) -> BTreeSet<String> {
    digits
        .iter()
        .map(|d| format!("{d}23e4567-e89b-12d3-a456-426614174000"))
        .collect()
}

#[test]
fn worked_example_end_to_end_with_the_users_kcat_commands() {
    let env = StackEnv::load();
    let deployment = Deployment::new(&env, "worked");
    let _service = deployment.start(&env);
    let campaign = unique_name("campaign");
    let campaign_1 = unique_name("campaign");
    let sent = event(&campaign, RESTAURANT);

    let before = epoch_now();
    kcat_produce(&env, &deployment.input.name, &sent);
    kcat_produce(
        &env,
        &deployment.input.name,
        &event(&campaign_1, RESTAURANT_WITH_DUPLICATE),
    );
    deployment.wait_consumed(DEADLINE);
    let after = epoch_now();

    // Kafka, as the users read it.
    let lines = kcat_read(&env, &deployment.output.name);
    assert_eq!(lines.len(), 9, "{lines:#?}");
    let records = deployment.read_all(&deployment.output.name);
    let messages = outputs_of(&records, &campaign);
    assert_eq!(messages.len(), 8);
    let keys: BTreeSet<String> = messages.iter().map(|m| m.key_text().to_owned()).collect();
    assert_eq!(keys, clients(&["2", "3", "4", "5", "6", "7", "8", "0"]));
    let sample: Value = serde_json::from_str(&sent).unwrap();
    for message in &messages {
        let value = message.json();
        let fields = value.as_object().unwrap();
        assert_eq!(fields.len(), 10, "{value}");
        for (name, expected) in sample.as_object().unwrap() {
            assert_eq!(&fields[name], expected, "{name}");
        }
        assert_eq!(fields["client_id"], message.key_text());
        let trigger = fields["trigger_datetime_created"].as_i64().unwrap();
        assert!(
            (before..=after).contains(&trigger),
            "{trigger} not in {before}..={after}"
        );
        assert!(message.headers["campaign-push-guest-version"].starts_with("guest-transform "));
        assert_eq!(message.headers["campaign-push-guest-sha256"].len(), 64);
    }
    let duplicate_restaurant = outputs_of(&records, &campaign_1);
    assert_eq!(duplicate_restaurant.len(), 1);
    assert_eq!(
        duplicate_restaurant[0].key_text(),
        "923e4567-e89b-12d3-a456-426614174000"
    );

    // PostgreSQL: the same ten values, feedback NULL.
    let rows = feedback_rows(&env, &campaign);
    assert_eq!(rows.len(), 8);
    let row_clients: BTreeSet<String> = rows
        .iter()
        .map(|r| r["client_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(row_clients, keys);
    for row in &rows {
        let message = messages
            .iter()
            .find(|m| m.key_text() == row["client_id"])
            .unwrap()
            .json();
        for (name, value) in message.as_object().unwrap() {
            assert_eq!(&row[name], value, "{name}");
        }
        assert!(row["feedback"].is_null());
    }
    assert_eq!(feedback_rows(&env, &campaign_1).len(), 1);

    // The same event again: nothing new in either sink.
    kcat_produce(&env, &deployment.input.name, &sent);
    deployment.wait_consumed(DEADLINE);
    assert_eq!(kcat_read(&env, &deployment.output.name).len(), 9);
    assert_eq!(feedback_rows(&env, &campaign).len(), 8);
}

#[test]
fn poison_events_go_to_the_dead_letter_topic_and_the_rest_is_processed_in_order() {
    let env = StackEnv::load();
    let deployment = Deployment::new(&env, "poison");
    let _service = deployment.start(&env);
    let campaigns: Vec<String> = (0..4).map(|_| unique_name("campaign")).collect();
    let valid: Vec<String> = campaigns
        .iter()
        .map(|c| event(c, RESTAURANT_WITH_DUPLICATE))
        .collect();
    let missing_field = valid[0].replace("\"adv_campaign_owner\":", "\"owner\":");
    let inputs: Vec<(Option<&[u8]>, &[u8])> = vec![
        (Some(b"k0"), valid[0].as_bytes()),
        (Some(b"bad-1"), b"this is not JSON"),
        (Some(b"k1"), valid[1].as_bytes()),
        (None, missing_field.as_bytes()),
        (Some(b"k2"), valid[2].as_bytes()),
        (Some(b"bad-3"), b"[1,2,3]"),
        (Some(b"k3"), valid[3].as_bytes()),
    ];
    let records: Vec<InputRecord> = inputs.iter().map(|(k, v)| (0, *k, *v)).collect();
    deployment.produce(&records);
    deployment.wait_consumed(DEADLINE);

    let dead = deployment.read_all(&deployment.dead_letter.name);
    assert_eq!(dead.len(), 3, "{dead:#?}");
    let mut dead = dead;
    dead.sort_by_key(|r| {
        r.headers["campaign-push-source-offset"]
            .parse::<i64>()
            .unwrap()
    });
    let expected = [
        (1, Some(&b"bad-1"[..]), "not valid JSON"),
        (3, None, "field `adv_campaign_owner` is missing"),
        (5, Some(b"bad-3"), "not a JSON object"),
    ];
    for (record, (offset, key, reason)) in dead.iter().zip(expected) {
        assert_eq!(
            record.headers["campaign-push-source-offset"],
            offset.to_string()
        );
        assert_eq!(record.headers["campaign-push-source-partition"], "0");
        assert_eq!(
            record.headers["campaign-push-source-topic"],
            deployment.input.name
        );
        assert!(
            record.headers["campaign-push-dead-letter-reason"].contains(reason),
            "{:?}",
            record.headers
        );
        assert_eq!(record.key.as_deref(), key);
        assert_eq!(record.value, inputs[offset as usize].1);
    }

    // One client, so one output partition: its messages are in input order.
    let outputs = deployment.read_all(&deployment.output.name);
    let order: Vec<String> = outputs
        .iter()
        .map(|r| r.json()["adv_campaign_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(order, campaigns);
}

#[test]
fn subscription_changes_reach_events_processed_a_second_later() {
    let env = StackEnv::load();
    let restaurant = unique_name("restaurant");
    let client = |n: u32| format!("{restaurant}-client-{n}");
    let sql = |statement: String| {
        run(&mut psql(&env, "", &statement), None)
            .assert_success()
            .stdout_text()
    };
    sql(format!(
        "INSERT INTO subscribers_restaurants (client_id, restaurant_id) VALUES ('{}', '{restaurant}'), ('{}', '{restaurant}')",
        client(1),
        client(2)
    ));
    let deployment = Deployment::new(&env, "subscriptions");
    let _service = deployment.start(&env);

    let first = unique_name("campaign");
    deployment.produce(&[(0, None, event(&first, &restaurant).as_bytes())]);
    deployment.wait_consumed(DEADLINE);

    sql(format!(
        "DELETE FROM subscribers_restaurants WHERE client_id = '{}'",
        client(1)
    ));
    sql(format!(
        "INSERT INTO subscribers_restaurants (client_id, restaurant_id) VALUES ('{}', '{restaurant}')",
        client(3)
    ));
    // The documented freshness bound: changes committed 1 s before an event is processed apply.
    std::thread::sleep(Duration::from_secs(1));
    let second = unique_name("campaign");
    deployment.produce(&[(0, None, event(&second, &restaurant).as_bytes())]);
    deployment.wait_consumed(DEADLINE);

    let records = deployment.read_all(&deployment.output.name);
    let keys_of = |campaign: &str| -> BTreeSet<String> {
        outputs_of(&records, campaign)
            .iter()
            .map(|r| r.key_text().to_owned())
            .collect()
    };
    assert_eq!(keys_of(&first), BTreeSet::from([client(1), client(2)]));
    assert_eq!(keys_of(&second), BTreeSet::from([client(2), client(3)]));
    sql(format!(
        "DELETE FROM subscribers_restaurants WHERE restaurant_id = '{restaurant}'"
    ));
}

#[test]
fn sigterm_stops_the_service_cleanly() {
    let env = StackEnv::load();
    let deployment = Deployment::new(&env, "sigterm");
    let service = deployment.start(&env);
    let campaign = unique_name("campaign");
    deployment.produce(&[(1, None, event(&campaign, RESTAURANT).as_bytes())]);
    deployment.wait_consumed(DEADLINE);
    assert_eq!(service.metric("campaign_push_outputs_total"), Some(8.0));
    let status = service.terminate();
    assert!(status.success(), "exit status {status}");
}
