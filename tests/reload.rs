//! Hot reload of the guest against the real local stack: a new version swapped in under a
//! continuous stream, evil guests refused at load or contained per event, and a regressing guest
//! rolled back by the service itself. The guests are the small crates under `tests/guests`, built
//! by the suite (see `support::guests`); each test owns the guest file its service watches.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::guests::{GuestBuild, GuestFile, install_guest, test_guest};
use support::service::{
    Deployment, InputRecord, Pair, Record, Service, Subscriptions, campaign_event, guest_wasm,
};
use support::{SetOnDrop, StackEnv, poll_until, psql, run, unique_name};

const VERSION_HEADER: &str = "campaign-push-guest-version";
const SHA256_HEADER: &str = "campaign-push-guest-sha256";
const REASON_HEADER: &str = "campaign-push-dead-letter-reason";
const DEADLINE: Duration = Duration::from_secs(120);
const OFFER: &str = "two pizzas for one";

#[track_caller]
fn wait_for_guest(service: &Service, guest: &GuestBuild) {
    poll_until(
        &format!("the service runs {}", guest.version),
        DEADLINE,
        || {
            service.assert_running();
            (service.guest_sha256()? == guest.sha256).then_some(())
        },
    );
}

#[track_caller]
fn wait_for_events_in(service: &Service, at_least: f64) {
    poll_until(
        &format!("the service has consumed {at_least} events"),
        DEADLINE,
        || {
            service.assert_running();
            (service.metric("campaign_push_events_in_total")? >= at_least).then_some(())
        },
    );
}

fn swap_count(service: &Service, action: &str, result: &str) -> f64 {
    let name = format!(r#"campaign_push_guest_swaps_total{{action="{action}",result="{result}"}}"#);
    service.metric(&name).unwrap_or(0.0)
}

fn campaign_id(record: &Record) -> String {
    record.json()["adv_campaign_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn a_guest_swapped_under_a_continuous_stream_takes_over_at_a_batch_boundary() {
    let env = StackEnv::load();
    let run_id = unique_name("swap");
    let subscriptions = Subscriptions::insert(&env, &run_id, 6, 5);
    let deployment = Deployment::new(&env, "swap");
    let v1 = GuestBuild::read(&guest_wasm());
    let v2 = GuestBuild::read(&test_guest("v2-content"));
    let file = GuestFile::new(&v1);
    let service = deployment.start_with(
        &env,
        &[
            file.setting(),
            ("CAMPAIGN_PUSH__PIPELINE__BATCH_MAX_EVENTS", "20"),
        ],
    );

    let stop = AtomicBool::new(false);
    let expected: BTreeSet<Pair> = std::thread::scope(|scope| {
        let producer = scope.spawn(|| {
            let producer = deployment.input_producer();
            let mut expected = BTreeSet::new();
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let restaurant = &subscriptions.restaurants[i % subscriptions.restaurants.len()];
                let campaign = format!("{run_id}-e{i}");
                expected.extend(subscriptions.pairs(&campaign, restaurant));
                let value = campaign_event(&campaign, restaurant, OFFER);
                producer.send(((i % 3) as i32, None, value.as_bytes()));
                if i % 10 == 9 {
                    // Pacing, so that the stream runs through the swap rather than ahead of it.
                    producer.flush();
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            producer.flush();
            expected
        });
        let stop_producing = SetOnDrop(&stop);
        wait_for_events_in(&service, 300.0);
        install_guest(&file.path, &v2.bytes);
        wait_for_guest(&service, &v2);
        let at_swap = service.metric("campaign_push_events_in_total").unwrap();
        wait_for_events_in(&service, at_swap + 300.0);
        drop(stop_producing);
        producer.join().unwrap()
    });
    deployment.wait_consumed_checking(DEADLINE, || service.assert_running());

    let context = format!("{} events", expected.len() / 5);
    deployment.assert_exactly_once(&env, &format!("{run_id}-"), &expected, &context);
    assert!(deployment.read_all(&deployment.dead_letter.name).is_empty());
    assert_eq!(swap_count(&service, "reload", "accepted"), 1.0);

    // Every output is exactly v1's or v2's, as its headers say.
    let outputs = deployment.read_all(&deployment.output.name);
    let mut content_in_kafka: BTreeMap<Pair, String> = BTreeMap::new();
    let mut versions_of_campaign: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut per_version = BTreeMap::<&str, usize>::new();
    for record in &outputs {
        let sha256 = &record.headers[SHA256_HEADER];
        let (guest, content) = if *sha256 == v1.sha256 {
            (&v1, OFFER.to_owned())
        } else if *sha256 == v2.sha256 {
            (&v2, format!("[v2] {OFFER}"))
        } else {
            panic!("an output from an unknown guest: {:?}", record.headers);
        };
        assert_eq!(record.headers[VERSION_HEADER], guest.version);
        let value = record.json();
        assert_eq!(value["adv_campaign_content"], content.as_str(), "{value}");
        *per_version.entry(&guest.version).or_default() += 1;
        versions_of_campaign
            .entry(campaign_id(record))
            .or_default()
            .insert(sha256.clone());
        let pair = (campaign_id(record), record.key_text().to_owned());
        content_in_kafka.insert(pair, content);
    }
    assert!(
        per_version.len() == 2,
        "both versions produced outputs: {per_version:?}"
    );
    println!("swap: outputs per version {per_version:?}");
    // One event, one version: the swap never happens inside a batch.
    let split: Vec<_> = versions_of_campaign
        .iter()
        .filter(|(_, versions)| versions.len() > 1)
        .collect();
    assert!(
        split.is_empty(),
        "events served by both versions: {split:?}"
    );
    // Within each output partition, every v1 output precedes every v2 output.
    for partition in 0..3 {
        let mut in_order: Vec<&Record> = outputs
            .iter()
            .filter(|r| r.partition == partition)
            .collect();
        in_order.sort_by_key(|r| r.offset);
        let first_v2 = in_order
            .iter()
            .position(|r| r.headers[SHA256_HEADER] == v2.sha256)
            .unwrap_or(in_order.len());
        let late_v1 = in_order[first_v2..]
            .iter()
            .find(|r| r.headers[SHA256_HEADER] == v1.sha256);
        assert!(
            late_v1.is_none(),
            "partition {partition}: a v1 output after a v2 one: {late_v1:?}"
        );
    }

    // The join fed both sinks: each feedback row has the content of its Kafka message.
    let sql = format!(
        "SELECT adv_campaign_id, client_id, adv_campaign_content FROM subscribers_feedback \
         WHERE adv_campaign_id LIKE '{run_id}-%'"
    );
    let finished = run(&mut psql(&env, "", &sql), None);
    finished.assert_success();
    let content_in_postgres: BTreeMap<Pair, String> = finished
        .stdout_text()
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('|').collect();
            (
                (fields[0].to_owned(), fields[1].to_owned()),
                fields[2].to_owned(),
            )
        })
        .collect();
    assert!(
        content_in_postgres == content_in_kafka,
        "feedback rows and messages disagree on the version that made them"
    );
}

/// The normal campaigns of one round of the evil-guest test (besides these, a round may have one
/// campaign `<run>-<label>-evil` whose offer is `EVIL`, the event the evil guests misbehave on).
struct Round {
    label: &'static str,
    normal: Vec<(String, String)>,
}

#[test]
fn evil_guests_are_refused_at_load_or_contained_to_their_event() {
    let env = StackEnv::load();
    let run_id = unique_name("evil");
    let subscriptions = Subscriptions::insert(&env, &run_id, 4, 3);
    let deployment = Deployment::new(&env, "evil");
    let v1 = GuestBuild::read(&guest_wasm());
    let file = GuestFile::new(&v1);
    let service = deployment.start_with(
        &env,
        &[
            file.setting(),
            ("CAMPAIGN_PUSH__GUEST__CALL_TIMEOUT", "300ms"),
            ("CAMPAIGN_PUSH__GUEST__MAX_MEMORY_MIB", "64"),
        ],
    );
    let mut rounds: Vec<(Round, &GuestBuild)> = Vec::new();
    let serve_round = |label: &'static str, with_evil_event: bool| {
        let normal = subscriptions.campaigns(label, 12);
        let mut values: Vec<String> = normal
            .iter()
            .map(|(campaign, restaurant)| campaign_event(campaign, restaurant, OFFER))
            .collect();
        if with_evil_event {
            let campaign = format!("{run_id}-{label}-evil");
            let value = campaign_event(&campaign, &subscriptions.restaurants[0], "EVIL");
            values.insert(values.len() / 2, value);
        }
        deployment.produce_spread(&values);
        deployment.wait_consumed_checking(DEADLINE, || service.assert_running());
        Round { label, normal }
    };

    let evil_guests = [
        ("trap-on-event", "unreachable"),
        ("loop-on-event", "interrupt"),
        ("memory-bomb", "growing memory"),
    ]
    .map(|(name, reason)| (name, reason, GuestBuild::read(&test_guest(name))));
    let (_, _, first_evil) = &evil_guests[0];
    let half = first_evil.bytes.len() / 2;

    // Refused at load: each is reported by the admin endpoint, and v1 keeps serving.
    let garbage: Vec<u8> = (0u32..4096)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let wrong_world = std::fs::read(test_guest("wrong-world")).unwrap();
    let refusals: [(&str, &dyn Fn(), &str); 3] = [
        (
            "garbage",
            &|| install_guest(&file.path, &garbage),
            "not a valid WebAssembly component",
        ),
        (
            "wrong-world",
            &|| install_guest(&file.path, &wrong_world),
            "does not fit the campaign-transform world",
        ),
        (
            // A copy under way: written in place, as a plain `cp` does, and half done.
            "truncated",
            &|| std::fs::write(&file.path, &first_evil.bytes[..half]).unwrap(),
            "not a valid WebAssembly component",
        ),
    ];
    for (label, write, reason) in refusals {
        write();
        let response = service.post("/admin/reload").expect("the service answers");
        assert!(
            response.starts_with("HTTP/1.1 422") && response.contains(reason),
            "{label}: {response}"
        );
        assert_eq!(service.guest_sha256().as_deref(), Some(&*v1.sha256));
        rounds.push((serve_round(label, false), &v1));
    }
    assert!(swap_count(&service, "reload", "refused") >= 3.0);

    // The copy finishes: the file watcher puts the completed component in service by itself.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file.path)
        .and_then(|mut f| f.write_all(&first_evil.bytes[half..]))
        .unwrap();

    // Accepted (they pass the canary), then contained to the one event they misbehave on.
    for (k, (name, _, guest)) in evil_guests.iter().enumerate() {
        if k > 0 {
            install_guest(&file.path, &guest.bytes);
        }
        wait_for_guest(&service, guest);
        rounds.push((serve_round(name, true), guest));
    }

    service.assert_running();

    // Every normal event was served exactly once, by the guest in service for its round.
    let mut expected = BTreeSet::new();
    for (round, _) in &rounds {
        for (campaign, restaurant) in &round.normal {
            expected.extend(subscriptions.pairs(campaign, restaurant));
        }
    }
    deployment.assert_exactly_once(&env, &format!("{run_id}-"), &expected, "evil guests");
    let guest_of_round: BTreeMap<&str, &GuestBuild> = rounds
        .iter()
        .map(|(round, guest)| (round.label, *guest))
        .collect();
    for record in deployment.read_all(&deployment.output.name) {
        let campaign = campaign_id(&record);
        let label = campaign
            .strip_prefix(&format!("{run_id}-"))
            .and_then(|rest| rest.rsplit_once('-'))
            .map(|(label, _)| label)
            .unwrap();
        assert_eq!(
            record.headers[SHA256_HEADER], guest_of_round[label].sha256,
            "{campaign}"
        );
    }

    // Every evil event, and nothing else, is dead-lettered with the failure as its reason.
    let dead = deployment.read_all(&deployment.dead_letter.name);
    assert_eq!(dead.len(), evil_guests.len(), "{dead:#?}");
    for (name, reason, guest) in &evil_guests {
        let campaign = format!("{run_id}-{name}-evil");
        let letter = dead
            .iter()
            .find(|r| String::from_utf8_lossy(&r.value).contains(&campaign))
            .unwrap_or_else(|| panic!("no dead letter for {campaign}: {dead:#?}"));
        let headers = &letter.headers;
        let stated = &headers[REASON_HEADER];
        assert!(
            stated.contains("the transform failed on this event")
                && stated.contains(reason)
                && !stated.contains('\n'),
            "{name}: a one-line reason naming the failure: {headers:?}"
        );
        assert_eq!(headers[SHA256_HEADER], guest.sha256);
        println!("{name}: dead-lettered with {:?}", headers[REASON_HEADER]);
    }
}

#[test]
fn a_guest_that_regresses_is_rolled_back_without_an_operator() {
    let env = StackEnv::load();
    let run_id = unique_name("rollback");
    let subscriptions = Subscriptions::insert(&env, &run_id, 4, 3);
    let deployment = Deployment::new(&env, "rollback");
    let v1 = GuestBuild::read(&guest_wasm());
    let v3 = GuestBuild::read(&test_guest("v3-rejects"));
    let file = GuestFile::new(&v1);
    let service = deployment.start_with(
        &env,
        &[
            file.setting(),
            ("CAMPAIGN_PUSH__GUEST__ROLLBACK_WINDOW", "10m"),
            ("CAMPAIGN_PUSH__GUEST__ROLLBACK_MIN_EVENTS", "20"),
            ("CAMPAIGN_PUSH__PIPELINE__BATCH_MAX_EVENTS", "20"),
        ],
    );
    let produce = |campaigns: &[(String, String)]| {
        let values: Vec<String> = campaigns
            .iter()
            .map(|(campaign, restaurant)| campaign_event(campaign, restaurant, OFFER))
            .collect();
        let records: Vec<InputRecord> = values.iter().map(|v| (0, None, v.as_bytes())).collect();
        deployment.produce(&records);
    };

    // v1 sets the baseline: nothing rejected.
    let before = subscriptions.campaigns("before", 30);
    produce(&before);
    deployment.wait_consumed_checking(DEADLINE, || service.assert_running());

    install_guest(&file.path, &v3.bytes);
    wait_for_guest(&service, &v3);
    let during = subscriptions.campaigns("during", 60);
    produce(&during);
    wait_for_guest(&service, &v1);
    deployment.wait_consumed_checking(DEADLINE, || service.assert_running());
    assert_eq!(swap_count(&service, "rollback", "accepted"), 1.0);

    // The file still holds v3, but a rolled-back component is not put in service again.
    let response = service.post("/admin/reload").expect("the service answers");
    assert!(
        response.starts_with("HTTP/1.1 409") && response.contains("was rolled back"),
        "{response}"
    );
    let after = subscriptions.campaigns("after", 30);
    produce(&after);
    deployment.wait_consumed_checking(DEADLINE, || service.assert_running());
    assert_eq!(service.guest_sha256().as_deref(), Some(&*v1.sha256));

    // Nothing is lost: each event of the window was either rejected by v3 (and is in the
    // dead-letter topic, to be replayed) or served by v1 after the rollback.
    let dead = deployment.read_all(&deployment.dead_letter.name);
    let mut rejected_by_v3 = BTreeSet::new();
    for letter in &dead {
        assert_eq!(letter.headers[SHA256_HEADER], v3.sha256);
        assert!(letter.headers[REASON_HEADER].contains("unsupported offer text"));
        let value: serde_json::Value = serde_json::from_slice(&letter.value).unwrap();
        rejected_by_v3.insert(value["adv_campaign_id"].as_str().unwrap().to_owned());
    }
    assert!(
        rejected_by_v3.len() >= 20,
        "v3 was judged on at least rollback_min_events events: {rejected_by_v3:?}"
    );
    let mut expected = BTreeSet::new();
    for (campaign, restaurant) in before.iter().chain(&during).chain(&after) {
        if !rejected_by_v3.contains(campaign) {
            expected.extend(subscriptions.pairs(campaign, restaurant));
        }
    }
    deployment.assert_exactly_once(&env, &format!("{run_id}-"), &expected, "rollback");
    for record in deployment.read_all(&deployment.output.name) {
        assert_eq!(record.headers[SHA256_HEADER], v1.sha256, "{record:?}");
    }
    println!(
        "rollback: v3 rejected {} of {} events before it was rolled back",
        rejected_by_v3.len(),
        during.len()
    );
}
