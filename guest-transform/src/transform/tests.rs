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

/// A subscriber table answering as the host does (in order, paged), counting how often each
/// restaurant is looked up and the largest page asked for.
#[derive(Default)]
struct TableLookup {
    table: HashMap<String, Vec<String>>,
    lookups: HashMap<String, usize>,
    largest_limit: u32,
}

impl SubscriberLookup for TableLookup {
    fn subscribers_of(
        &mut self,
        restaurant_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> PackedStrings {
        *self.lookups.entry(restaurant_id.to_owned()).or_default() += 1;
        self.largest_limit = self.largest_limit.max(limit);
        let Some(clients) = self.table.get_mut(restaurant_id) else {
            return PackedStrings::default();
        };
        if !clients.is_sorted() {
            clients.sort_unstable();
        }
        let start = after.map_or(0, |after| {
            clients.partition_point(|client| client.as_str() <= after)
        });
        clients[start..]
            .iter()
            .take(limit as usize)
            .map(String::as_str)
            .collect()
    }
}

fn event(restaurant_id: &str, campaign_id: &str, start: i64, end: i64) -> Vec<u8> {
    format!(
        r#"{{"restaurant_id":"{restaurant_id}","adv_campaign_id":"{campaign_id}","adv_campaign_content":"first campaign","adv_campaign_owner":"Ivanov Ivan Ivanovich","adv_campaign_owner_contact":"iiivanov@restaurant.ru","adv_campaign_datetime_start":{start},"adv_campaign_datetime_end":{end},"datetime_created":1678879362}}"#
    )
    .into_bytes()
}

fn run(now: i64, events: &[Vec<u8>], lookup: &mut TableLookup) -> Vec<EventOutcome> {
    run_within(now, events, Budget::UNLIMITED, lookup)
}

fn run_within(
    now: i64,
    events: &[Vec<u8>],
    budget: Budget,
    lookup: &mut impl SubscriberLookup,
) -> Vec<EventOutcome> {
    let inputs = events.iter().map(|value| EventInput::new(value));
    transform_batch(now, inputs, budget, lookup).expect("now fits int4")
}

fn outputs(outputs: u32) -> Budget {
    Budget {
        outputs,
        bytes: u64::MAX,
    }
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
    // In the order of their ids, which lets a fan-out cut into parts go on where it stopped.
    let expected: Vec<String> = ["0", "2", "3", "4", "5", "6", "7", "8"]
        .iter()
        .map(|digit| format!("{digit}23e4567-e89b-12d3-a456-426614174000"))
        .collect();
    assert_eq!(client_ids(fan_out), expected);
    assert_eq!(fan_out.trigger_datetime_created, 1_700_000_000);
    for (client, message) in fan_out.client_ids.iter().zip(values(fan_out).iter()) {
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
            events.iter().map(|value| EventInput::new(value)),
            Budget::UNLIMITED,
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
        fn subscribers_of(&mut self, _: &str, _: Option<&str>, _: u32) -> PackedStrings {
            PackedStrings {
                data: vec![0xff],
                ends: vec![1],
            }
        }
    }
    /// Out of order: a resumed walk would skip or repeat clients.
    struct Unordered;
    impl SubscriberLookup for Unordered {
        fn subscribers_of(&mut self, _: &str, _: Option<&str>, _: u32) -> PackedStrings {
            ["b", "a"].into_iter().collect()
        }
    }
    let events = [event(RESTAURANT, "a", 0, i64::MAX)];
    let malformed = EventOutcome::Rejected(Rejection::MalformedSubscribers {
        restaurant_id: RESTAURANT.into(),
    });
    let outcomes = run_within(NOW, &events, Budget::UNLIMITED, &mut Garbled);
    assert_eq!(outcomes[0], malformed);
    let outcomes = run_within(NOW, &events, Budget::UNLIMITED, &mut Unordered);
    assert_eq!(outcomes[0], malformed);
}

#[test]
fn ten_thousand_subscribers_fan_out_in_order_over_several_lookups() {
    let mut lookup = TableLookup::default();
    let clients: Vec<String> = (0..10_000).map(|i| format!("client-{i:05}")).collect();
    let mut rows = clients.clone();
    rows.extend(clients.iter().take(100).cloned()); // duplicated subscriptions
    lookup.table.insert(RESTAURANT.into(), rows);
    let outcomes = run(NOW, &[event(RESTAURANT, "c", 0, i64::MAX)], &mut lookup);
    let fan_out = fan_out(&outcomes[0]);
    assert_eq!(client_ids(fan_out), clients);
    assert_eq!(values(fan_out).len(), 10_000);
    assert_eq!(fan_out.continue_after, None);
    assert_eq!(lookup.lookups[RESTAURANT], 3, "4096 ids per lookup");
    assert_eq!(lookup.largest_limit, LOOKUP_CHUNK);
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

/// `count` clients `c000000`… of one restaurant, each subscribed twice (duplicates must not
/// become two outputs, across a lookup's boundary neither).
fn many_subscribers(count: usize) -> TableLookup {
    let mut lookup = TableLookup::default();
    let clients = (0..count).flat_map(|i| {
        let client = format!("c{i:06}");
        [client.clone(), client]
    });
    lookup.table.insert(RESTAURANT.into(), clients.collect());
    lookup
}

#[test]
fn the_budget_cuts_a_fan_out_and_defers_what_would_produce_output_after_it() {
    let mut lookup = sample_subscribers();
    let events = [
        event(RESTAURANT, "a", 0, i64::MAX),
        event(RESTAURANT, "b", 0, i64::MAX),
        b"garbage".to_vec(),
        event(RESTAURANT, "c", 0, 1),
        event("unknown-restaurant", "d", 0, i64::MAX),
        event(RESTAURANT_WITH_DUPLICATE, "e", 0, i64::MAX),
    ];
    let outcomes = run_within(NOW, &events, outputs(10), &mut lookup);
    assert_eq!(client_ids(fan_out(&outcomes[0])).len(), 8);
    assert_eq!(fan_out(&outcomes[0]).continue_after, None);
    let cut = fan_out(&outcomes[1]);
    assert_eq!(
        client_ids(cut),
        [
            "023e4567-e89b-12d3-a456-426614174000",
            "223e4567-e89b-12d3-a456-426614174000"
        ]
    );
    assert_eq!(
        cut.continue_after.as_deref(),
        Some("223e4567-e89b-12d3-a456-426614174000")
    );
    // Decided as usual: they produce no output.
    assert!(matches!(outcomes[2], EventOutcome::Rejected(_)));
    assert_eq!(outcomes[3], EventOutcome::Skipped(SkipReason::Expired));
    assert!(fan_out(&outcomes[4]).client_ids.is_empty());
    assert_eq!(fan_out(&outcomes[4]).continue_after, None);
    // Would produce output: deferred whole.
    assert_eq!(outcomes[5], EventOutcome::Deferred);
}

#[test]
fn a_resumed_fan_out_goes_on_after_its_point_at_its_first_now() {
    let mut lookup = sample_subscribers();
    // The campaign ended before this batch's `now`, but not before the first part's.
    let value = event(RESTAURANT, "a", 0, NOW + 10);
    let resumed = EventInput {
        value: &value,
        resume: Some(Resume {
            after: "423e4567-e89b-12d3-a456-426614174000",
            now: NOW,
        }),
    };
    let outcomes = transform_batch(NOW + 3600, [resumed], Budget::UNLIMITED, &mut lookup).unwrap();
    let fan_out = fan_out(&outcomes[0]);
    let digits: Vec<char> = client_ids(fan_out)
        .iter()
        .map(|id| id.chars().next().unwrap())
        .collect();
    assert_eq!(digits, ['5', '6', '7', '8']);
    assert_eq!(fan_out.trigger_datetime_created, NOW as i32);
    assert_eq!(fan_out.continue_after, None);
    for message in values(fan_out).iter() {
        let message: serde_json::Value = serde_json::from_str(message.unwrap()).unwrap();
        assert_eq!(message["trigger_datetime_created"], NOW);
    }
}

#[test]
fn a_budget_ending_on_the_last_client_completes_the_fan_out() {
    let outcomes = run_within(
        NOW,
        &[event(RESTAURANT, "a", 0, i64::MAX)],
        outputs(8),
        &mut sample_subscribers(),
    );
    assert_eq!(fan_out(&outcomes[0]).client_ids.len(), 8);
    assert_eq!(fan_out(&outcomes[0]).continue_after, None);
}

#[test]
fn the_first_output_of_a_batch_is_produced_whatever_the_budget() {
    let nothing = Budget {
        outputs: 0,
        bytes: 0,
    };
    let events = [
        event(RESTAURANT, "a", 0, i64::MAX),
        event(RESTAURANT, "b", 0, i64::MAX),
    ];
    let outcomes = run_within(NOW, &events, nothing, &mut sample_subscribers());
    assert_eq!(client_ids(fan_out(&outcomes[0])).len(), 1);
    assert!(fan_out(&outcomes[0]).continue_after.is_some());
    assert_eq!(outcomes[1], EventOutcome::Deferred);
}

#[test]
fn the_byte_budget_cuts_too() {
    let first = run(
        NOW,
        &[event(RESTAURANT, "a", 0, i64::MAX)],
        &mut sample_subscribers(),
    );
    let fan_out_all = fan_out(&first[0]);
    let one_output = (fan_out_all.client_ids.data.len() + values(fan_out_all).data.len()) / 8;
    let three_outputs = Budget {
        outputs: u32::MAX,
        bytes: (3 * one_output + one_output / 2) as u64,
    };
    let outcomes = run_within(
        NOW,
        &[event(RESTAURANT, "a", 0, i64::MAX)],
        three_outputs,
        &mut sample_subscribers(),
    );
    assert_eq!(client_ids(fan_out(&outcomes[0])).len(), 3);
    assert!(fan_out(&outcomes[0]).continue_after.is_some());
}

#[test]
fn after_an_output_that_does_not_fit_no_smaller_one_gets_ahead() {
    let mut lookup = sample_subscribers();
    lookup.table.insert("short".into(), vec!["s".into()]);
    let first = run(
        NOW,
        &[event(RESTAURANT, "a", 0, i64::MAX)],
        &mut sample_subscribers(),
    );
    let all = fan_out(&first[0]);
    let one_output = (all.client_ids.data.len() + values(all).data.len()) / 8;
    // Room for one and a half outputs of the first event: its second does not fit; the other
    // event's single, shorter output would, but must not overtake it.
    let budget = Budget {
        outputs: u32::MAX,
        bytes: (one_output + one_output / 2) as u64,
    };
    let events = [
        event(RESTAURANT, "a", 0, i64::MAX),
        event("short", "b", 0, i64::MAX),
    ];
    let outcomes = run_within(NOW, &events, budget, &mut lookup);
    assert_eq!(client_ids(fan_out(&outcomes[0])).len(), 1);
    assert_eq!(outcomes[1], EventOutcome::Deferred);
}

#[test]
fn a_million_subscribers_in_parts_reach_each_client_exactly_once() {
    let subscribers = 1_000_000;
    let mut lookup = many_subscribers(subscribers);
    let value = event(RESTAURANT, "big", 0, i64::MAX);
    let (mut reached, mut parts, mut previous_last) = (0usize, 0, None::<String>);
    let mut resume_after: Option<String> = None;
    loop {
        let input = EventInput {
            value: &value,
            resume: resume_after
                .as_deref()
                .map(|after| Resume { after, now: NOW }),
        };
        let outcomes = transform_batch(NOW, [input], outputs(10_000), &mut lookup).unwrap();
        let part = fan_out(&outcomes[0]);
        assert!(part.client_ids.len() <= 10_000);
        let ids = client_ids(part);
        // Strictly after the previous part, strictly ascending: nobody twice.
        let first = ids.first().map(|id| id.to_string());
        assert!(
            previous_last < first,
            "part {parts} overlaps the previous one"
        );
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
        reached += ids.len();
        previous_last = ids.last().map(|id| id.to_string());
        parts += 1;
        match &part.continue_after {
            Some(after) => resume_after = Some(after.clone()),
            None => break,
        }
    }
    assert_eq!(reached, subscribers);
    assert_eq!(parts, 100);
    assert_eq!(
        lookup.largest_limit, LOOKUP_CHUNK,
        "memory bounded by a chunk"
    );
}

/// A fan-out's values in full, as the host renders them.
fn values(fan_out: &FanOut) -> PackedStrings {
    fan_out.messages.render(&fan_out.client_ids)
}
