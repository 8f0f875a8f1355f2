//! A batch's decisions as owned data: what the store stage hands to the deliver stage, which sends
//! them on a thread of its own while the next batch is decided and stored.
//!
//! The plan's decisions borrow from the batch's records and the guest's outcomes, which the next
//! batch replaces. Packing copies the messages into one buffer (one allocation for the batch, a
//! few milliseconds for 20,000 messages); [`Outbox::decisions`] lends them out again.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use rdkafka::consumer::ConsumerGroupMetadata;

use super::Batch;
use crate::guest::GuestIdentity;
use crate::plan::{Commit, Decision, Position};
use crate::records::{Frame, Message, Value};

/// Everything the deliver stage sends for one batch, owned.
pub struct Outbox {
    /// The batch's records: a dead letter carries its input.
    pub batch: Batch,
    /// What the consumer group commits with the outputs.
    pub commits: BTreeMap<i32, Commit>,
    /// The group's generation that owns the batch's records.
    pub group: ConsumerGroupMetadata,
    decisions: Packed,
}

/// Decisions without their records, which the batch holds.
pub struct Packed {
    guests: Vec<GuestIdentity>,
    /// Every message's key and value (a decision's frame once), one after the other.
    text: String,
    /// Per message, where its key and its value are in `text`.
    messages: Vec<(Range<usize>, PackedValue)>,
    entries: Vec<Entry>,
}

/// Where a message's value is in [`Packed::text`].
#[derive(Clone)]
enum PackedValue {
    Full(Range<usize>),
    AroundKey {
        prefix: Range<usize>,
        suffix: Range<usize>,
    },
}

struct Entry {
    source: Position,
    part: u32,
    decided_at: i64,
    /// Index into [`Packed::guests`].
    guest: usize,
    /// Indexes into [`Packed::messages`].
    messages: Range<usize>,
    dead_letter: Option<String>,
}

impl Packed {
    /// Copies `decisions` (in batch order) out of what they borrow.
    pub fn new(decisions: &[Decision<'_>]) -> Self {
        let bytes: usize = decisions
            .iter()
            .flat_map(|d| &d.messages)
            .map(|m| match m.value {
                Value::Full(value) => m.key.len() + value.len(),
                Value::AroundKey(_) => m.key.len(),
            })
            .sum();
        let count: usize = decisions.iter().map(|d| d.messages.len()).sum();
        let mut packed = Self {
            guests: Vec::new(),
            text: String::with_capacity(bytes),
            messages: Vec::with_capacity(count),
            entries: Vec::with_capacity(decisions.len()),
        };
        for decision in decisions {
            let guest = match packed.guests.iter().position(|g| g == decision.guest) {
                Some(index) => index,
                None => {
                    packed.guests.push(decision.guest.clone());
                    packed.guests.len() - 1
                }
            };
            let first = packed.messages.len();
            // A fan-out's messages share one frame: copied once, not once per message.
            let mut last_frame: Option<(Frame<'_>, PackedValue)> = None;
            for message in &decision.messages {
                let key = packed.push(message.key);
                let value = match message.value {
                    Value::Full(value) => PackedValue::Full(packed.push(value)),
                    Value::AroundKey(frame) => match &last_frame {
                        Some((last, value)) if last.same_text(&frame) => value.clone(),
                        _ => {
                            let value = PackedValue::AroundKey {
                                prefix: packed.push(frame.prefix),
                                suffix: packed.push(frame.suffix),
                            };
                            last_frame = Some((frame, value.clone()));
                            value
                        }
                    },
                };
                packed.messages.push((key, value));
            }
            packed.entries.push(Entry {
                source: decision.source,
                part: decision.part,
                decided_at: decision.decided_at,
                guest,
                messages: first..packed.messages.len(),
                dead_letter: decision.dead_letter.as_deref().map(str::to_owned),
            });
        }
        packed
    }

    fn push(&mut self, text: &str) -> Range<usize> {
        let start = self.text.len();
        self.text.push_str(text);
        start..self.text.len()
    }
}

impl Outbox {
    pub fn new(
        batch: Batch,
        decisions: Packed,
        commits: BTreeMap<i32, Commit>,
        group: ConsumerGroupMetadata,
    ) -> Self {
        Self {
            batch,
            commits,
            group,
            decisions,
        }
    }

    /// The decisions, in batch order, borrowing from the outbox.
    pub fn decisions(&self) -> Vec<Decision<'_>> {
        self.decisions.decisions(&self.batch)
    }
}

impl Packed {
    /// The decisions, in batch order, with their records from `batch`.
    fn decisions<'a>(&'a self, batch: &'a Batch) -> Vec<Decision<'a>> {
        let records: HashMap<Position, usize> = batch
            .positions
            .iter()
            .enumerate()
            .map(|(index, position)| (*position, index))
            .collect();
        self.entries
            .iter()
            .map(|entry| Decision {
                source: entry.source,
                part: entry.part,
                decided_at: entry.decided_at,
                input: &batch.events[records[&entry.source]],
                guest: &self.guests[entry.guest],
                messages: self.messages[entry.messages.clone()]
                    .iter()
                    .map(|(key, value)| Message {
                        key: &self.text[key.clone()],
                        value: match value {
                            PackedValue::Full(value) => Value::Full(&self.text[value.clone()]),
                            PackedValue::AroundKey { prefix, suffix } => Value::AroundKey(Frame {
                                prefix: &self.text[prefix.clone()],
                                suffix: &self.text[suffix.clone()],
                            }),
                        },
                    })
                    .collect(),
                dead_letter: entry.dead_letter.as_deref().map(Into::into),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::guest::InputEvent;

    #[test]
    fn packed_decisions_come_back_as_they_went_in() {
        let events = vec![
            InputEvent {
                key: Some(b"k".to_vec()),
                value: b"first".to_vec(),
                resume: None,
            },
            InputEvent {
                key: None,
                value: b"second".to_vec(),
                resume: None,
            },
        ];
        let positions = vec![
            Position {
                partition: 0,
                offset: 7,
            },
            Position {
                partition: 1,
                offset: 3,
            },
        ];
        let (v1, v2) = (
            GuestIdentity {
                version: "v1".into(),
                sha256: "a".repeat(64),
            },
            GuestIdentity {
                version: "v2".into(),
                sha256: "b".repeat(64),
            },
        );
        let frame = Frame {
            prefix: "{\"client_id\":\"",
            suffix: "\"}",
        };
        let decisions = vec![
            Decision {
                source: positions[0],
                part: 2,
                decided_at: 1_700_000_000,
                input: &events[0],
                guest: &v1,
                messages: vec![
                    Message {
                        key: "c1",
                        value: Value::Full("{\"client_id\":\"c1\"}"),
                    },
                    Message {
                        key: "c2",
                        value: Value::AroundKey(frame),
                    },
                    Message {
                        key: "c3",
                        value: Value::AroundKey(frame),
                    },
                ],
                dead_letter: None,
            },
            Decision {
                source: positions[1],
                part: 0,
                decided_at: 1_700_000_001,
                input: &events[1],
                guest: &v2,
                messages: Vec::new(),
                dead_letter: Some(Cow::Borrowed("bad event")),
            },
        ];
        let packed = Packed::new(&decisions);
        // The frame shared by two messages is copied once.
        assert_eq!(
            packed.text.len(),
            [
                "c1",
                "{\"client_id\":\"c1\"}",
                "c2",
                frame.prefix,
                frame.suffix,
                "c3"
            ]
            .concat()
            .len()
        );
        let batch = Batch {
            events: events.clone(),
            positions: positions.clone(),
            carried: 0,
            first_received: std::time::Instant::now(),
        };
        let unpacked = packed.decisions(&batch);
        assert_eq!(unpacked.len(), 2);
        for (got, want) in unpacked.iter().zip(&decisions) {
            assert_eq!(got.source, want.source);
            assert_eq!(got.part, want.part);
            assert_eq!(got.decided_at, want.decided_at);
            assert_eq!(
                (&got.input.key, &got.input.value),
                (&want.input.key, &want.input.value)
            );
            assert_eq!(got.guest, want.guest);
            assert_eq!(got.messages, want.messages);
            assert_eq!(got.dead_letter, want.dead_letter);
        }
    }
}
