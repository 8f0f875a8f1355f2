//! What one batch writes, derived from the guest's outcomes without any I/O: the candidate
//! deliveries (one Kafka message + one feedback row each), the dead letters, the skipped count
//! and the offsets to commit. Both sinks are fed from this one plan.

use std::collections::BTreeMap;

use guest_transform::SkipReason;

use crate::guest::{InputEvent, Outcome};
use crate::records::{self, FeedbackRow, Message};

/// Where an input record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// One (campaign, client) output of the batch, before the ledger decides whether it is new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery<'a> {
    pub source: Position,
    pub message: Message<'a>,
    pub row: FeedbackRow<'a>,
}

/// An input record that goes to the dead-letter topic unchanged, with its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetter<'a> {
    pub source: Position,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub reason: &'a str,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan<'a> {
    pub deliveries: Vec<Delivery<'a>>,
    pub dead_letters: Vec<DeadLetter<'a>>,
    pub expired: usize,
    pub not_yet_started: usize,
    /// Per partition, the offset after the last record of the batch: what the consumer group
    /// commits with the batch's outputs.
    pub next_offsets: BTreeMap<i32, i64>,
}

/// Builds the plan of a batch. `events`, `positions` and `outcomes` are parallel; an event whose
/// fan-out exceeds `max_outputs_per_event` is dead-lettered rather than sent.
pub fn plan<'a>(
    events: &'a [InputEvent],
    positions: &[Position],
    outcomes: &'a [Outcome],
    max_outputs_per_event: usize,
    oversize_reason: &'a str,
) -> Plan<'a> {
    assert_eq!(events.len(), outcomes.len(), "one outcome per event");
    assert_eq!(events.len(), positions.len(), "one position per event");
    let mut plan = Plan::default();
    for ((event, &source), outcome) in events.iter().zip(positions).zip(outcomes) {
        let next = plan.next_offsets.entry(source.partition).or_default();
        *next = (*next).max(source.offset + 1);
        let dead_letter = |reason| DeadLetter {
            source,
            key: event.key.as_deref(),
            value: &event.value,
            reason,
        };
        match outcome {
            Outcome::FanOut(fan_out) if fan_out.client_ids.len() > max_outputs_per_event => {
                plan.dead_letters.push(dead_letter(oversize_reason));
            }
            Outcome::FanOut(fan_out) => {
                let deliveries =
                    records::messages(fan_out)
                        .zip(records::rows(fan_out))
                        .map(|(message, row)| Delivery {
                            source,
                            message,
                            row,
                        });
                plan.deliveries.extend(deliveries);
            }
            Outcome::Skipped(SkipReason::Expired) => plan.expired += 1,
            Outcome::Skipped(SkipReason::NotYetStarted) => plan.not_yet_started += 1,
            Outcome::Rejected(reason) => plan.dead_letters.push(dead_letter(reason)),
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_transform::{Campaign, FanOut, PackedStrings};

    fn fan_out(clients: &[&str]) -> Outcome {
        let campaign = Campaign {
            restaurant_id: "r".into(),
            adv_campaign_id: "c".into(),
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

    #[test]
    fn splits_a_batch_into_deliveries_dead_letters_and_skips() {
        let events = [event("a"), event("b"), event("c"), event("d")];
        let positions = [
            Position {
                partition: 0,
                offset: 10,
            },
            Position {
                partition: 1,
                offset: 5,
            },
            Position {
                partition: 0,
                offset: 11,
            },
            Position {
                partition: 1,
                offset: 6,
            },
        ];
        let outcomes = [
            fan_out(&["x", "y"]),
            Outcome::Rejected("bad".into()),
            Outcome::Skipped(SkipReason::Expired),
            fan_out(&["z"]),
        ];
        let plan = plan(&events, &positions, &outcomes, 100, "too big");
        let keys: Vec<_> = plan.deliveries.iter().map(|d| d.message.key).collect();
        assert_eq!(keys, ["x", "y", "z"]);
        assert_eq!(plan.deliveries[2].source, positions[3]);
        assert_eq!(plan.deliveries[1].row.client_id, "y");
        assert_eq!(plan.dead_letters.len(), 1);
        assert_eq!(plan.dead_letters[0].value, b"b");
        assert_eq!(plan.dead_letters[0].reason, "bad");
        assert_eq!(plan.dead_letters[0].source, positions[1]);
        assert_eq!((plan.expired, plan.not_yet_started), (1, 0));
        assert_eq!(plan.next_offsets, BTreeMap::from([(0, 12), (1, 7)]));
    }

    #[test]
    fn an_oversized_fan_out_is_dead_lettered_whole() {
        let events = [event("a")];
        let positions = [Position {
            partition: 2,
            offset: 0,
        }];
        let outcomes = [fan_out(&["x", "y", "z"])];
        let plan = plan(&events, &positions, &outcomes, 2, "too big");
        assert!(plan.deliveries.is_empty());
        assert_eq!(plan.dead_letters[0].reason, "too big");
        assert_eq!(plan.next_offsets, BTreeMap::from([(2, 1)]));
    }
}
