use super::*;
use guest_transform::Messages;

use crate::guest::test_fan_out;

fn fan_out(campaign: &str, clients: &[&str]) -> Outcome {
    let messages: Vec<String> = clients
        .iter()
        .map(|c| format!("{{\"client_id\":\"{c}\"}}"))
        .collect();
    Outcome::FanOut(test_fan_out(
        campaign,
        clients.iter().copied().collect(),
        Messages::Each(messages.iter().map(String::as_str).collect()),
    ))
}

fn event(value: &str) -> InputEvent {
    InputEvent {
        key: Some(b"k".to_vec()),
        value: value.as_bytes().to_vec(),
        resume: None,
    }
}

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
    max_message_bytes: 1_000_000,
    max_message_bytes_setting: "the Kafka producer's message.max.bytes",
};

const NOW: i64 = 1_700_000_000;

/// A fan-out cut short after its last client.
fn cut(campaign: &str, clients: &[&str]) -> Outcome {
    let mut outcome = fan_out(campaign, clients);
    if let Outcome::FanOut(fan_out) = &mut outcome {
        fan_out.continue_after = clients.last().map(|c| c.to_string());
    }
    outcome
}

/// Every record decided now from scratch.
fn fresh(outcomes: &[Outcome]) -> Vec<Input<'_>> {
    outcomes
        .iter()
        .map(|outcome| Input::Decided {
            outcome,
            part: 0,
            decided_at: NOW,
            resumed_after: None,
        })
        .collect()
}

fn stored(
    source: Position,
    part: u32,
    keys: &[&str],
    continue_after: Option<&str>,
) -> StoredDecision {
    StoredDecision {
        source,
        part,
        decided_at: NOW - 60,
        guest: GuestIdentity {
            version: "v0".into(),
            sha256: "cd".repeat(32),
        },
        dead_letter: None,
        keys: keys.iter().map(|k| k.to_string()).collect(),
        values: keys
            .iter()
            .map(|k| format!("{{\"stored\":\"{k}\"}}"))
            .collect(),
        continue_after: continue_after.map(str::to_owned),
    }
}

fn whole(offset: i64) -> Commit {
    Commit {
        offset,
        parts_delivered: 0,
    }
}

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
    let plan = plan(&events, &positions, &fresh(&outcomes), &guest(), LIMITS);
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
    assert_eq!(
        plan.commits,
        BTreeMap::from([(0, whole(12)), (1, whole(7))])
    );
    assert!(plan.carried.is_empty());
}

#[test]
fn a_recalled_record_keeps_its_stored_decision_and_takes_no_outcome() {
    let events = [event("a"), event("b")];
    let positions = [at(0, 7), at(0, 8)];
    let stored = stored(at(0, 7), 0, &["x"], None);
    let steps = [
        next_step(std::slice::from_ref(&stored), 0),
        next_step(&[], 0),
    ];
    let outcomes = [fan_out("c", &["y"])];
    let plan = plan(
        &events,
        &positions,
        &inputs(&steps, &outcomes, NOW),
        &guest(),
        LIMITS,
    );
    match &plan.records[0] {
        Planned::Recalled(decision) => {
            assert_eq!(decision.guest.version, "v0");
            assert_eq!(
                decision.messages[0].value,
                Value::Full("{\"stored\":\"x\"}")
            );
            assert_eq!(decision.input.value, b"a");
        }
        Planned::New(_) => panic!("the stored decision must be used"),
    }
    assert_eq!(candidate(&plan, 1).deliveries()[0].message.key, "y");
    assert_eq!(candidate(&plan, 1).decided_at, NOW);
    assert_eq!(plan.candidates().count(), 1);
    assert_eq!(plan.commits, BTreeMap::from([(0, whole(9))]));
}

#[test]
fn a_pair_is_delivered_once_per_batch_whatever_the_guest_returns() {
    let events = [event("a"), event("b")];
    let positions = [at(0, 0), at(0, 1)];
    let outcomes = [fan_out("c", &["x", "x", "y"]), fan_out("c", &["y", "z"])];
    let plan = plan(&events, &positions, &fresh(&outcomes), &guest(), LIMITS);
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
fn a_fan_out_over_the_message_size_is_dead_lettered_whole_naming_the_limit() {
    let events = [event("a")];
    let positions = [at(2, 0)];
    let outcomes = [fan_out("c", &["x", "y", "z"])];
    // Each message is 1 byte of key + 17 of value + the guest headers.
    let headers = records::headers::output_bytes(&guest());
    let fits = Limits {
        max_message_bytes: 18 + headers,
        ..LIMITS
    };
    let plan_fits = plan(&events, &positions, &fresh(&outcomes), &guest(), fits);
    assert_eq!(candidate(&plan_fits, 0).deliveries().len(), 3);
    let too_small = Limits {
        max_message_bytes: 17 + headers,
        ..LIMITS
    };
    let plan_big = plan(&events, &positions, &fresh(&outcomes), &guest(), too_small);
    let reason = candidate(&plan_big, 0).dead_letter_reason().unwrap();
    assert!(
        reason.contains(&format!("producer's message.max.bytes ({})", 17 + headers)),
        "{reason}"
    );
    assert_eq!(plan_big.commits, BTreeMap::from([(2, whole(1))]));
}

#[test]
fn a_fan_out_cut_short_commits_its_parts_and_carries_its_partition() {
    let events = [event("a"), event("b"), event("c"), event("d"), event("e")];
    let positions = [at(0, 4), at(0, 5), at(1, 9), at(0, 6), at(1, 10)];
    let outcomes = [
        fan_out("c1", &["x"]),
        cut("c2", &["p", "q"]),
        fan_out("c3", &["y"]),
        // Decided by the guest, but after a cut record of its partition: carried, not planned.
        Outcome::Rejected("bad".into()),
        Outcome::Deferred,
    ];
    let plan = plan(&events, &positions, &fresh(&outcomes), &guest(), LIMITS);
    assert_eq!(plan.records.len(), 3);
    assert_eq!(candidate(&plan, 1).continue_after, Some("q"));
    assert_eq!(
        plan.commits,
        BTreeMap::from([
            (
                0,
                Commit {
                    offset: 5,
                    parts_delivered: 1
                }
            ),
            (1, whole(10)),
        ])
    );
    // The cut record goes on next batch, with what follows it in its partition; the deferred one
    // waits whole, its partition committed up to it.
    assert_eq!(plan.carried, [1, 3, 4]);
}

#[test]
fn a_deferred_record_first_in_its_partition_leaves_the_partition_uncommitted() {
    let events = [event("a"), event("b")];
    let positions = [at(3, 40), at(4, 2)];
    let outcomes = [cut("c", &["x"]), Outcome::Deferred];
    let plan = plan(&events, &positions, &fresh(&outcomes), &guest(), LIMITS);
    assert_eq!(plan.commits.keys().copied().collect::<Vec<_>>(), [3]);
    assert_eq!(plan.carried, [0, 1]);
}

#[test]
fn a_part_that_does_not_progress_is_dead_lettered_and_ends_the_record() {
    let events = [event("a")];
    let positions = [at(0, 3)];
    let outcomes = [cut("c", &["m"])];
    let inputs = [Input::Decided {
        outcome: &outcomes[0],
        part: 2,
        decided_at: NOW - 60,
        resumed_after: Some("m"),
    }];
    let plan = plan(&events, &positions, &inputs, &guest(), LIMITS);
    let candidate = candidate(&plan, 0);
    assert!(
        candidate
            .dead_letter_reason()
            .unwrap()
            .contains("did not go beyond")
    );
    assert_eq!(candidate.continue_after, None);
    assert_eq!((candidate.part, candidate.decided_at), (2, NOW - 60));
    assert_eq!(plan.commits, BTreeMap::from([(0, whole(4))]));
    assert!(plan.carried.is_empty());
}

#[test]
fn the_next_step_resends_the_undelivered_part_or_resumes_after_the_last() {
    let source = at(0, 5);
    let part0 = stored(source, 0, &["a"], Some("a"));
    let part1 = stored(source, 1, &["b"], Some("b"));
    let both = [part1.clone(), part0.clone()];
    // Nothing stored: from scratch.
    assert!(matches!(
        next_step(&[], 0),
        Step::Decide {
            part: 0,
            resume: None
        }
    ));
    // Part 1 stored, only part 0 delivered: part 1 again, as stored.
    assert!(matches!(next_step(&both, 1), Step::Resend(p) if *p == part1));
    // Nothing delivered: part 0 first.
    assert!(matches!(next_step(&both, 0), Step::Resend(p) if *p == part0));
    // Both delivered: part 2, after part 1's last client, at the first part's now.
    match next_step(&both, 2) {
        Step::Decide {
            part: 2,
            resume: Some(resume),
        } => assert_eq!((resume.after.as_str(), resume.now), ("b", NOW - 60)),
        other => panic!("{other:?}"),
    }
    // A complete record consumed again (offsets reset): walked again, the ledger sends nothing
    // twice.
    let done = [stored(source, 0, &["a"], None)];
    assert!(matches!(
        next_step(&done, u32::MAX),
        Step::Decide {
            part: 1,
            resume: None
        }
    ));
}

#[test]
fn a_resumed_part_is_decided_at_the_first_parts_now() {
    let events = [event("a")];
    let positions = [at(0, 5)];
    let resumed = [Step::Decide {
        part: 3,
        resume: Some(ResumePoint {
            after: "k".into(),
            now: NOW - 600,
        }),
    }];
    let outcomes = [cut("c", &["l", "m"])];
    let plan = plan(
        &events,
        &positions,
        &inputs(&resumed, &outcomes, NOW),
        &guest(),
        LIMITS,
    );
    let candidate = candidate(&plan, 0);
    assert_eq!((candidate.part, candidate.decided_at), (3, NOW - 600));
    assert_eq!(
        plan.commits,
        BTreeMap::from([(
            0,
            Commit {
                offset: 5,
                parts_delivered: 4
            }
        )])
    );
}

#[test]
fn commits_round_trip_through_the_offset_metadata() {
    let within = Commit {
        offset: 41,
        parts_delivered: 7,
    };
    assert_eq!(Commit::from_committed(41, &within.metadata()), within);
    assert_eq!(whole(42).metadata(), "");
    assert_eq!(Commit::from_committed(42, ""), whole(42));
    assert_eq!(Commit::from_committed(42, "someone else's"), whole(42));
    assert_eq!(within.parts_delivered_of(40), u32::MAX);
    assert_eq!(within.parts_delivered_of(41), 7);
    assert_eq!(within.parts_delivered_of(42), 0);
}
