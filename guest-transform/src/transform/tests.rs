use std::collections::HashMap;

use super::*;
use crate::event::BadEvent;

const RESTAURANT: &str = "123e4567-e89b-12d3-a456-426614174000";
const RESTAURANT_WITH_DUPLICATE: &str = "123e4567-e89b-12d3-a456-426614174001";
const NOW: i64 = 1_700_000_000;

/// The contract's sample subscribers, in table order.
fn sample_subscribers() -> TableLookup {
    let rows = [
        ("223e4567-e89b-12d3-a456-426614174000", RESTAURANT),
        ("323e4567-e89b-12d3-a456-426614174000", RESTAURANT),
        ("423e4567-e89b-12d3-a456-426614174000", RESTAURANT),
        ("523e4567-e89b-12d3-a456-426614174000", RESTAURANT),
        ("623e4567-e89b-12d3-a456-426614174000", RESTAURANT),
        ("723e4567-e89b-12d3-a456-426614174000", RESTAURANT),
        ("823e4567-e89b-12d3-a456-426614174000", RESTAURANT),
        (
            "923e4567-e89b-12d3-a456-426614174000",
            RESTAURANT_WITH_DUPLICATE,
        ),
        (
            "923e4567-e89b-12d3-a456-426614174000",
            RESTAURANT_WITH_DUPLICATE,
        ),
        ("023e4567-e89b-12d3-a456-426614174000", RESTAURANT),
    ];
    let mut lookup = TableLookup::default();
    for (client, restaurant) in rows {
        lookup
            .table
            .entry(restaurant.to_owned())
            .or_default()
            .push(client.to_owned());
    }
    lookup
}

/// A subscriber table that counts how often each restaurant is looked up.
#[derive(Default)]
struct TableLookup {
    table: HashMap<String, Vec<String>>,
    lookups: HashMap<String, usize>,
}

impl SubscriberLookup for TableLookup {
    fn subscribers_of(&mut self, restaurant_id: &str) -> PackedStrings {
        *self.lookups.entry(restaurant_id.to_owned()).or_default() += 1;
        self.table
            .get(restaurant_id)
            .map(|clients| clients.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }
}

fn event(restaurant_id: &str, campaign_id: &str, start: i64, end: i64) -> Vec<u8> {
    format!(
        r#"{{"restaurant_id":"{restaurant_id}","adv_campaign_id":"{campaign_id}","adv_campaign_content":"first campaign","adv_campaign_owner":"Ivanov Ivan Ivanovich","adv_campaign_owner_contact":"iiivanov@restaurant.ru","adv_campaign_datetime_start":{start},"adv_campaign_datetime_end":{end},"datetime_created":1678879362}}"#
    )
    .into_bytes()
}

fn run(now: i64, events: &[Vec<u8>], lookup: &mut TableLookup) -> Vec<EventOutcome> {
    transform_batch(now, events.iter().map(Vec::as_slice), lookup).expect("now fits int4")
}

fn fan_out(outcome: &EventOutcome) -> &FanOut {
    match outcome {
        EventOutcome::FanOut(fan_out) => fan_out,
        other => panic!("expected a fan-out, got {other:?}"),
    }
}

fn client_ids(fan_out: &FanOut) -> Vec<&str> {
    fan_out.client_ids.iter().map(Option::unwrap).collect()
}

#[test]
fn worked_example_fans_out_to_the_eight_clients_of_the_restaurant() {
    let outcomes = run(
        NOW,
        &[event(RESTAURANT, "c", 1678615562, 2659207116)],
        &mut sample_subscribers(),
    );
    let fan_out = fan_out(&outcomes[0]);
    let expected: Vec<String> = ["2", "3", "4", "5", "6", "7", "8", "0"]
        .iter()
        .map(|digit| format!("{digit}23e4567-e89b-12d3-a456-426614174000"))
        .collect();
    assert_eq!(client_ids(fan_out), expected);
    assert_eq!(fan_out.trigger_datetime_created, 1_700_000_000);
    for (client, message) in fan_out.client_ids.iter().zip(fan_out.messages.iter()) {
        let message: serde_json::Value = serde_json::from_str(message.unwrap()).unwrap();
        assert_eq!(message["client_id"], client.unwrap());
        assert_eq!(message["trigger_datetime_created"], NOW);
        assert_eq!(message.as_object().unwrap().len(), 10);
    }
}

#[test]
fn duplicate_subscription_rows_yield_one_client() {
    let outcomes = run(
        NOW,
        &[event(RESTAURANT_WITH_DUPLICATE, "c", 0, i64::MAX)],
        &mut sample_subscribers(),
    );
    assert_eq!(
        client_ids(fan_out(&outcomes[0])),
        ["923e4567-e89b-12d3-a456-426614174000"]
    );
}

#[test]
fn the_active_window_includes_both_ends() {
    let (start, end) = (1_000, 2_000);
    let cases = [
        (start - 1, Some(SkipReason::NotYetStarted)),
        (start, None),
        (end, None),
        (end + 1, Some(SkipReason::Expired)),
    ];
    for (now, skipped) in cases {
        let outcomes = run(
            now,
            &[event(RESTAURANT, "c", start, end)],
            &mut sample_subscribers(),
        );
        match (skipped, &outcomes[0]) {
            (Some(reason), EventOutcome::Skipped(got)) => assert_eq!(*got, reason, "now={now}"),
            (None, EventOutcome::FanOut(fan_out)) => assert_eq!(fan_out.client_ids.len(), 8),
            (expected, got) => panic!("now={now}: expected {expected:?}, got {got:?}"),
        }
    }
}

#[test]
fn now_beyond_int4_refuses_the_whole_batch() {
    let events = [event(RESTAURANT, "c", 0, i64::MAX)];
    for now in [i64::from(i32::MAX) + 1, i64::from(i32::MIN) - 1] {
        let result = transform_batch(
            now,
            events.iter().map(Vec::as_slice),
            &mut sample_subscribers(),
        );
        assert_eq!(result, Err(BatchError::NowOutOfRange(now)));
    }
    let last_second = i64::from(i32::MAX);
    let outcomes = run(last_second, &events, &mut sample_subscribers());
    assert_eq!(fan_out(&outcomes[0]).trigger_datetime_created, i32::MAX);
}

#[test]
fn one_outcome_per_event_in_input_order() {
    let events = vec![
        event(RESTAURANT, "a", 0, i64::MAX),
        b"garbage".to_vec(),
        event(RESTAURANT, "b", 0, 1),
        event("unknown-restaurant", "c", 0, i64::MAX),
        event(RESTAURANT_WITH_DUPLICATE, "d", NOW + 1, NOW + 2),
    ];
    let outcomes = run(NOW, &events, &mut sample_subscribers());
    assert_eq!(outcomes.len(), 5);
    assert_eq!(fan_out(&outcomes[0]).campaign.adv_campaign_id, "a");
    assert!(matches!(
        &outcomes[1],
        EventOutcome::Rejected(Rejection::BadEvent(BadEvent::NotJson(_)))
    ));
    assert_eq!(outcomes[2], EventOutcome::Skipped(SkipReason::Expired));
    assert!(fan_out(&outcomes[3]).client_ids.is_empty());
    assert_eq!(
        outcomes[4],
        EventOutcome::Skipped(SkipReason::NotYetStarted)
    );
}

#[test]
fn a_restaurant_is_looked_up_once_per_batch() {
    let mut lookup = sample_subscribers();
    let events = [
        event(RESTAURANT, "a", 0, i64::MAX),
        event(RESTAURANT, "b", 0, i64::MAX),
    ];
    let outcomes = run(NOW, &events, &mut lookup);
    assert_eq!(lookup.lookups[RESTAURANT], 1);
    assert_eq!(
        client_ids(fan_out(&outcomes[0])),
        client_ids(fan_out(&outcomes[1]))
    );
    assert_eq!(fan_out(&outcomes[1]).campaign.adv_campaign_id, "b");
}

#[test]
fn inactive_and_bad_events_do_not_look_subscribers_up() {
    let mut lookup = sample_subscribers();
    run(
        NOW,
        &[b"{}".to_vec(), event(RESTAURANT, "x", 0, 1)],
        &mut lookup,
    );
    assert!(lookup.lookups.is_empty());
}

#[test]
fn a_malformed_subscriber_list_rejects_the_event_instead_of_trapping() {
    struct Garbled;
    impl SubscriberLookup for Garbled {
        fn subscribers_of(&mut self, _: &str) -> PackedStrings {
            PackedStrings {
                data: vec![0xff],
                ends: vec![1],
            }
        }
    }
    let events = [event(RESTAURANT, "a", 0, i64::MAX)];
    let outcomes = transform_batch(NOW, events.iter().map(Vec::as_slice), &mut Garbled).unwrap();
    assert_eq!(
        outcomes[0],
        EventOutcome::Rejected(Rejection::MalformedSubscribers {
            restaurant_id: RESTAURANT.into()
        })
    );
}

#[test]
fn ten_thousand_subscribers_fan_out_in_lookup_order() {
    let mut lookup = TableLookup::default();
    let clients: Vec<String> = (0..10_000).map(|i| format!("client-{i:05}")).collect();
    let mut rows = clients.clone();
    rows.extend(clients.iter().take(100).cloned()); // duplicated subscriptions
    lookup.table.insert(RESTAURANT.into(), rows);
    let outcomes = run(NOW, &[event(RESTAURANT, "c", 0, i64::MAX)], &mut lookup);
    let fan_out = fan_out(&outcomes[0]);
    assert_eq!(client_ids(fan_out), clients);
    assert_eq!(fan_out.messages.len(), 10_000);
}

#[test]
fn a_campaign_repeated_in_a_batch_reaches_each_client_once() {
    let mut lookup = sample_subscribers();
    lookup
        .table
        .get_mut(RESTAURANT_WITH_DUPLICATE)
        .unwrap()
        .push("223e4567-e89b-12d3-a456-426614174000".into());
    let events = [
        event(RESTAURANT, "same", 0, i64::MAX),
        event(RESTAURANT, "other", 0, i64::MAX),
        event(RESTAURANT, "same", 0, i64::MAX),
        // Same campaign id under another restaurant: only its clients not reached yet.
        event(RESTAURANT_WITH_DUPLICATE, "same", 0, i64::MAX),
        event(RESTAURANT, "same", 0, i64::MAX),
    ];
    let outcomes = run(NOW, &events, &mut lookup);
    assert_eq!(fan_out(&outcomes[0]).client_ids.len(), 8);
    assert_eq!(fan_out(&outcomes[1]).client_ids.len(), 8);
    assert!(fan_out(&outcomes[2]).client_ids.is_empty());
    assert_eq!(
        client_ids(fan_out(&outcomes[3])),
        ["923e4567-e89b-12d3-a456-426614174000"]
    );
    assert!(fan_out(&outcomes[4]).client_ids.is_empty());
}
