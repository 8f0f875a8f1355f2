use super::*;
use guest_transform::{Campaign, FanOut, PackedStrings};

fn fan_out(campaign: &str, clients: &[&str]) -> Outcome {
    let campaign = Campaign {
        restaurant_id: "r".into(),
        adv_campaign_id: campaign.into(),
        adv_campaign_content: "x".into(),
        adv_campaign_owner: "o".into(),
        adv_campaign_owner_contact: "e".into(),
        adv_campaign_datetime_start: 1,
        adv_campaign_datetime_end: 2,
        datetime_created: 1,
    };
    Outcome::FanOut(FanOut {
        campaign,
        trigger_datetime_created: 2,
        client_ids: clients.iter().copied().collect(),
        messages: clients
            .iter()
            .map(|c| format!("{{\"client_id\":\"{c}\"}}"))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect::<PackedStrings>(),
    })
}

fn event(value: &str) -> InputEvent {
    InputEvent {
        key: Some(b"k".to_vec()),
        value: value.as_bytes().to_vec(),
    }
}

static NONE: std::sync::LazyLock<HashMap<Position, StoredDecision>> =
    std::sync::LazyLock::new(HashMap::new);

fn at(partition: i32, offset: i64) -> Position {
    Position { partition, offset }
}

fn guest() -> GuestIdentity {
    GuestIdentity {
        version: "v1".into(),
        sha256: "ab".repeat(32),
    }
}

const LIMITS: Limits = Limits {
    max_outputs_per_event: 100,
    max_message_bytes: 1_000_000,
};

fn candidate<'p>(plan: &'p Plan<'_>, index: usize) -> &'p Candidate<'p> {
    match &plan.records[index] {
        Planned::New(candidate) => candidate,
        Planned::Recalled(_) => panic!("record {index} was recalled"),
    }
}

#[test]
fn gives_every_record_a_verdict_in_batch_order() {
    let events = [event("a"), event("b"), event("c"), event("d")];
    let positions = [at(0, 10), at(1, 5), at(0, 11), at(1, 6)];
    let outcomes = [
        fan_out("c1", &["x", "y"]),
        Outcome::Rejected("bad".into()),
        Outcome::Skipped(SkipReason::Expired),
        fan_out("c2", &["z"]),
    ];
    let plan = plan(&events, &positions, &NONE, &outcomes, &guest(), LIMITS);
    let first = candidate(&plan, 0);
    let keys: Vec<_> = first.deliveries().iter().map(|d| d.message.key).collect();
    assert_eq!(keys, ["x", "y"]);
    assert_eq!(first.deliveries()[1].row.client_id, "y");
    assert_eq!(candidate(&plan, 1).dead_letter_reason(), Some("bad"));
    assert_eq!(candidate(&plan, 1).input.value, b"b");
    assert_eq!(candidate(&plan, 1).source, positions[1]);
    assert_eq!(
        candidate(&plan, 2).verdict,
        Verdict::Skip(SkipReason::Expired)
    );
    assert_eq!(candidate(&plan, 3).source, positions[3]);
    assert_eq!(plan.next_offsets, BTreeMap::from([(0, 12), (1, 7)]));
}

#[test]
fn a_recalled_record_keeps_its_stored_decision_and_takes_no_outcome() {
    let events = [event("a"), event("b")];
    let positions = [at(0, 7), at(0, 8)];
    let stored = StoredDecision {
        source: at(0, 7),
        decided_at: 1_700_000_000,
        guest: GuestIdentity {
            version: "v0".into(),
            sha256: "cd".repeat(32),
        },
        dead_letter: None,
        keys: vec!["x".into()],
        values: vec!["{\"stored\":true}".into()],
    };
    let recalled = HashMap::from([(stored.source, stored)]);
    let outcomes = [fan_out("c", &["y"])];
    let plan = plan(&events, &positions, &recalled, &outcomes, &guest(), LIMITS);
    match &plan.records[0] {
        Planned::Recalled(decision) => {
            assert_eq!(decision.guest.version, "v0");
            assert_eq!(decision.messages[0].value, "{\"stored\":true}");
            assert_eq!(decision.input.value, b"a");
        }
        Planned::New(_) => panic!("the stored decision must be used"),
    }
    assert_eq!(candidate(&plan, 1).deliveries()[0].message.key, "y");
    assert_eq!(plan.candidates().count(), 1);
}

#[test]
fn a_pair_is_delivered_once_per_batch_whatever_the_guest_returns() {
    let events = [event("a"), event("b")];
    let positions = [at(0, 0), at(0, 1)];
    let outcomes = [fan_out("c", &["x", "x", "y"]), fan_out("c", &["y", "z"])];
    let plan = plan(&events, &positions, &NONE, &outcomes, &guest(), LIMITS);
    let keys = |i| -> Vec<&str> {
        candidate(&plan, i)
            .deliveries()
            .iter()
            .map(|d| d.message.key)
            .collect()
    };
    assert_eq!(keys(0), ["x", "y"]);
    assert_eq!(keys(1), ["z"]);
}

#[test]
fn a_fan_out_over_a_limit_is_dead_lettered_whole_naming_the_limit() {
    let events = [event("a")];
    let positions = [at(2, 0)];
    let outcomes = [fan_out("c", &["x", "y", "z"])];
    let few = Limits {
        max_outputs_per_event: 2,
        ..LIMITS
    };
    let plan_few = plan(&events, &positions, &NONE, &outcomes, &guest(), few);
    let reason = candidate(&plan_few, 0).dead_letter_reason().unwrap();
    assert!(
        reason.contains("pipeline.max_outputs_per_event (2)"),
        "{reason}"
    );
    assert_eq!(plan_few.next_offsets, BTreeMap::from([(2, 1)]));

    // Each message is 1 byte of key + 17 of value + the guest headers.
    let headers = records::headers::output_bytes(&guest());
    let fits = Limits {
        max_message_bytes: 18 + headers,
        ..LIMITS
    };
    let plan_fits = plan(&events, &positions, &NONE, &outcomes, &guest(), fits);
    assert_eq!(candidate(&plan_fits, 0).deliveries().len(), 3);
    let too_small = Limits {
        max_message_bytes: 17 + headers,
        ..LIMITS
    };
    let plan_big = plan(&events, &positions, &NONE, &outcomes, &guest(), too_small);
    let reason = candidate(&plan_big, 0).dead_letter_reason().unwrap();
    assert!(reason.contains("message.max.bytes"), "{reason}");
}
