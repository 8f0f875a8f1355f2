//! What a batch decides, as plain data without I/O.
//!
//! Every input record gets one decision, taken once: the first attempt's is stored in PostgreSQL
//! with the feedback rows it accounts for, and any later delivery of the record (a crash replay,
//! a sink retry, another host after a rebalance) sends exactly what was stored. A record is
//! therefore either [`Planned::Recalled`] (decided by an earlier attempt, delivered as stored) or
//! [`Planned::New`] (decided now: a [`Candidate`]). The PostgreSQL sink turns candidates into
//! [`Decision`]s — keeping only the (campaign, client) pairs that are new to the ledger — and the
//! Kafka sink delivers decisions. Pipeline and sinks share these types, so they live below both.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use guest_transform::SkipReason;

use crate::guest::{GuestIdentity, InputEvent, Outcome};
use crate::records::{self, FeedbackRow, Message};

/// Where an input record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// One (campaign, client) output: the Kafka message and the feedback row, from one fan-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery<'a> {
    pub message: Message<'a>,
    pub row: FeedbackRow<'a>,
}

/// What the guest (and the plan's own checks) made of a record decided now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Candidate deliveries; the ledger decides which pairs are new.
    Deliver(Vec<Delivery<'a>>),
    /// Valid but not active: nothing is written but the decision itself.
    Skip(SkipReason),
    /// Goes to the dead-letter topic with this reason.
    DeadLetter(Cow<'a, str>),
}

/// A record decided by this attempt, before the ledger has seen it.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub source: Position,
    pub input: &'a InputEvent,
    pub verdict: Verdict<'a>,
}

impl<'a> Candidate<'a> {
    /// The same record dead-lettered instead, e.g. because a sink refused its data.
    pub fn dead_lettered(&self, reason: String) -> Candidate<'a> {
        Candidate {
            source: self.source,
            input: self.input,
            verdict: Verdict::DeadLetter(Cow::Owned(reason)),
        }
    }

    pub fn deliveries(&self) -> &[Delivery<'a>] {
        match &self.verdict {
            Verdict::Deliver(deliveries) => deliveries,
            Verdict::Skip(_) | Verdict::DeadLetter(_) => &[],
        }
    }

    pub fn dead_letter_reason(&self) -> Option<&str> {
        match &self.verdict {
            Verdict::DeadLetter(reason) => Some(reason),
            Verdict::Deliver(_) | Verdict::Skip(_) => None,
        }
    }
}

/// A record's decision as both sinks hold it: what Kafka receives for it.
#[derive(Debug, Clone)]
pub struct Decision<'a> {
    pub source: Position,
    pub input: &'a InputEvent,
    /// The guest that decided, named in the headers of everything sent for the record.
    pub guest: &'a GuestIdentity,
    pub messages: Vec<Message<'a>>,
    pub dead_letter: Option<Cow<'a, str>>,
}

/// A decision as PostgreSQL stored it, read back for a record that is delivered again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDecision {
    pub source: Position,
    /// The `now` the record was decided at.
    pub decided_at: i64,
    pub guest: GuestIdentity,
    pub dead_letter: Option<String>,
    pub keys: Vec<String>,
    pub values: Vec<String>,
}

impl StoredDecision {
    pub fn as_decision<'a>(&'a self, input: &'a InputEvent) -> Decision<'a> {
        Decision {
            source: self.source,
            input,
            guest: &self.guest,
            messages: self
                .keys
                .iter()
                .zip(&self.values)
                .map(|(key, value)| Message { key, value })
                .collect(),
            dead_letter: self.dead_letter.as_deref().map(Cow::Borrowed),
        }
    }
}

/// One input record of the plan, in batch order.
#[derive(Debug, Clone)]
pub enum Planned<'a> {
    Recalled(Decision<'a>),
    New(Candidate<'a>),
}

#[derive(Debug, Default, Clone)]
pub struct Plan<'a> {
    pub records: Vec<Planned<'a>>,
    /// Per partition, the offset after the last record of the batch: what the consumer group
    /// commits with the batch's outputs.
    pub next_offsets: BTreeMap<i32, i64>,
}

impl<'a> Plan<'a> {
    pub fn candidates(&self) -> impl Iterator<Item = &Candidate<'a>> {
        self.records.iter().filter_map(|record| match record {
            Planned::New(candidate) => Some(candidate),
            Planned::Recalled(_) => None,
        })
    }
}

/// What the plan checks a fan-out against before any sink sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `pipeline.max_outputs_per_event`.
    pub max_outputs_per_event: usize,
    /// The producer's `message.max.bytes`: key, value and headers of one output must fit.
    pub max_message_bytes: usize,
}

/// Builds the plan of a batch. `events` and `positions` are parallel; a record with an entry in
/// `recalled` is delivered as stored, and every other record takes, in order, the next of
/// `outcomes` (so `outcomes` has one entry per record not recalled), decided by `guest`.
///
/// A pair that an earlier record of the batch already delivers is dropped, whatever the guest
/// did, so that the ledger never sees a pair twice in one statement. A fan-out over the limits is
/// dead-lettered whole, with the limit in its reason.
pub fn plan<'a>(
    events: &'a [InputEvent],
    positions: &[Position],
    recalled: &'a HashMap<Position, StoredDecision>,
    outcomes: &'a [Outcome],
    guest: &GuestIdentity,
    limits: Limits,
) -> Plan<'a> {
    assert_eq!(events.len(), positions.len(), "one position per event");
    let output_headers = records::headers::output_bytes(guest);
    let mut outcomes = outcomes.iter();
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    let mut plan = Plan::default();
    for (input, &source) in events.iter().zip(positions) {
        let next = plan.next_offsets.entry(source.partition).or_default();
        *next = (*next).max(source.offset + 1);
        if let Some(stored) = recalled.get(&source) {
            plan.records
                .push(Planned::Recalled(stored.as_decision(input)));
            continue;
        }
        let outcome = outcomes
            .next()
            .expect("one outcome per record not recalled");
        let verdict = match outcome {
            Outcome::FanOut(fan_out) => match oversize(fan_out, limits, output_headers) {
                Some(reason) => Verdict::DeadLetter(Cow::Owned(reason)),
                None => Verdict::Deliver(
                    records::messages(fan_out)
                        .zip(records::rows(fan_out))
                        .filter(|(message, row)| seen.insert((row.adv_campaign_id, message.key)))
                        .map(|(message, row)| Delivery { message, row })
                        .collect(),
                ),
            },
            Outcome::Skipped(reason) => Verdict::Skip(*reason),
            Outcome::Rejected(reason) => Verdict::DeadLetter(Cow::Borrowed(reason)),
        };
        plan.records.push(Planned::New(Candidate {
            source,
            input,
            verdict,
        }));
    }
    assert!(
        outcomes.next().is_none(),
        "one outcome per record not recalled"
    );
    plan
}

/// Why a fan-out cannot be delivered, if it cannot.
fn oversize(fan_out: &guest_transform::FanOut, limits: Limits, headers: usize) -> Option<String> {
    let clients = fan_out.client_ids.len();
    if clients > limits.max_outputs_per_event {
        return Some(format!(
            "the event fans out to {clients} clients, more than pipeline.max_outputs_per_event \
             ({})",
            limits.max_outputs_per_event
        ));
    }
    let largest = records::messages(fan_out)
        .map(|message| message.key.len() + message.value.len())
        .max()
        .unwrap_or(0);
    (largest + headers > limits.max_message_bytes).then(|| {
        format!(
            "an output message would be {} bytes with its headers, more than the Kafka \
             producer's message.max.bytes ({})",
            largest + headers,
            limits.max_message_bytes
        )
    })
}

#[cfg(test)]
mod tests;
