//! What a batch decides, as plain data without I/O.
//!
//! Every input record gets one decision, taken once: the first attempt's is stored in PostgreSQL
//! with the feedback rows it accounts for, and any later delivery of the record (a crash replay,
//! a sink retry, another host after a rebalance) sends exactly what was stored. A record is
//! therefore either [`Planned::Recalled`] (decided by an earlier attempt, delivered as stored) or
//! [`Planned::New`] (decided now: a [`Candidate`]). The PostgreSQL sink turns candidates into
//! [`Decision`]s — keeping only the (campaign, client) pairs that are new to the ledger — and the
//! Kafka sink delivers decisions. Pipeline and sinks share these types, so they live below both.
//!
//! # Parts
//! A batch's output is bounded (the guest's budget), a restaurant's following is not: a record
//! whose fan-out the budget cuts short is decided in parts, one per batch, each stored and
//! delivered like a whole record. Its partition's offset is committed at the record itself, with
//! the number of parts delivered in the commit's metadata ([`Commit`]), so that whoever consumes
//! it next — this host in the next batch, or another after a crash or a rebalance — resends the
//! one part stored but not delivered, or decides the next part after the last client reached
//! ([`next_step`]). Later records of that partition wait in the batch after it ([`Plan::carried`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use guest_transform::SkipReason;

use crate::guest::{GuestIdentity, InputEvent, Outcome, ResumePoint};
use crate::records::{self, FeedbackRow, Message, Value};

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
    /// Which part of the record's fan-out this is (0 for a record decided in one piece).
    pub part: u32,
    /// The `now` of the decision: the first part's, for every part.
    pub decided_at: i64,
    pub input: &'a InputEvent,
    pub verdict: Verdict<'a>,
    /// The last client this part reached, when the fan-out goes on in a next part.
    pub continue_after: Option<&'a str>,
}

impl<'a> Candidate<'a> {
    /// The same record dead-lettered instead, e.g. because a sink refused its data. That ends
    /// its fan-out.
    pub fn dead_lettered(&self, reason: String) -> Candidate<'a> {
        Candidate {
            verdict: Verdict::DeadLetter(Cow::Owned(reason)),
            continue_after: None,
            ..self.clone()
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

/// A record's decision (or one part of it) as both sinks hold it: what Kafka receives for it.
#[derive(Debug, Clone)]
pub struct Decision<'a> {
    pub source: Position,
    pub part: u32,
    /// The `now` of the decision: the `trigger_datetime_created` of its rows.
    pub decided_at: i64,
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
    pub part: u32,
    /// The `now` the record was decided at.
    pub decided_at: i64,
    pub guest: GuestIdentity,
    pub dead_letter: Option<String>,
    pub keys: Vec<String>,
    pub values: Vec<String>,
    /// The last client this part reached, when the fan-out goes on in a next part.
    pub continue_after: Option<String>,
}

impl StoredDecision {
    pub fn as_decision<'a>(&'a self, input: &'a InputEvent) -> Decision<'a> {
        Decision {
            source: self.source,
            part: self.part,
            decided_at: self.decided_at,
            input,
            guest: &self.guest,
            messages: self
                .keys
                .iter()
                .zip(&self.values)
                .map(|(key, value)| Message {
                    key,
                    value: Value::Full(value),
                })
                .collect(),
            dead_letter: self.dead_letter.as_deref().map(Cow::Borrowed),
        }
    }
}

/// Which stored decisions of one partition a store forgets: those at offsets from `from` on that
/// `until` (the group's committed position) proves delivered. Below `from` the host forgot them
/// before (see the pipeline's `forgetting`); 0 reads the partition from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forget {
    pub from: i64,
    pub until: Commit,
}

impl Forget {
    /// Every decision of the partition that `until` proves delivered.
    pub fn all_below(until: Commit) -> Self {
        Self { from: 0, until }
    }
}

/// What a partition's consumer-group offset says once a batch's Kafka transaction commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Commit {
    /// The next record to consume.
    pub offset: i64,
    /// How many parts of that record's fan-out are delivered (0 for a record not begun).
    pub parts_delivered: u32,
}

impl Commit {
    /// The metadata of a commit inside a record's fan-out.
    const PARTS_PREFIX: &'static str = "campaign-push parts-delivered=";

    /// The offset commit's metadata: empty at a record boundary.
    pub fn metadata(&self) -> String {
        if self.parts_delivered == 0 {
            String::new()
        } else {
            format!("{}{}", Self::PARTS_PREFIX, self.parts_delivered)
        }
    }

    /// A committed offset and its metadata, as read back from the group coordinator. Metadata
    /// this service did not write counts as a record boundary.
    pub fn from_committed(offset: i64, metadata: &str) -> Self {
        let parts_delivered = metadata
            .strip_prefix(Self::PARTS_PREFIX)
            .and_then(|parts| parts.parse().ok())
            .unwrap_or(0);
        Self {
            offset,
            parts_delivered,
        }
    }

    /// How many parts of the record at `offset` this commit proves delivered.
    pub fn parts_delivered_of(&self, offset: i64) -> u32 {
        match self.offset.cmp(&offset) {
            std::cmp::Ordering::Less => 0,
            std::cmp::Ordering::Equal => self.parts_delivered,
            std::cmp::Ordering::Greater => u32::MAX,
        }
    }
}

/// What to do with a record, given the parts of it that earlier attempts stored (any order) and
/// how many of them Kafka has committed.
#[derive(Debug, Clone)]
pub enum Step<'a> {
    /// A part was stored but not delivered: send it as stored.
    Resend(&'a StoredDecision),
    /// Ask the guest for part `part`, going on from `resume` (from the start when `None`).
    Decide {
        part: u32,
        resume: Option<ResumePoint>,
    },
}

pub fn next_step(stored: &[StoredDecision], parts_delivered: u32) -> Step<'_> {
    if let Some(undelivered) = stored
        .iter()
        .filter(|decision| decision.part >= parts_delivered)
        .min_by_key(|decision| decision.part)
    {
        return Step::Resend(undelivered);
    }
    match stored.iter().max_by_key(|decision| decision.part) {
        None => Step::Decide {
            part: 0,
            resume: None,
        },
        // A record whose every part is delivered but whose offset was consumed again (the
        // group's offsets were reset): walked again from the start, the ledger sends nothing
        // twice.
        Some(last) => Step::Decide {
            part: last.part + 1,
            resume: last.continue_after.as_ref().map(|after| ResumePoint {
                after: after.clone(),
                now: last.decided_at,
            }),
        },
    }
}

/// What the decide stage has for one record of the batch.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// Stored by an earlier attempt and not delivered: sent as stored.
    Recalled(&'a StoredDecision),
    /// Decided now by the guest: part `part` at `decided_at`.
    Decided {
        outcome: &'a Outcome,
        part: u32,
        decided_at: i64,
        /// Where this part started (see [`ResumePoint`]).
        resumed_after: Option<&'a str>,
    },
}

/// Pairs each record's step with what the guest made of it: `outcomes` has one entry per
/// [`Step::Decide`], in order, decided at `now` unless the step resumes a fan-out.
pub fn inputs<'s>(steps: &'s [Step<'_>], outcomes: &'s [Outcome], now: i64) -> Vec<Input<'s>> {
    let mut outcomes = outcomes.iter();
    let inputs = steps
        .iter()
        .map(|step| match step {
            Step::Resend(stored) => Input::Recalled(stored),
            Step::Decide { part, resume } => Input::Decided {
                outcome: outcomes.next().expect("one outcome per record decided now"),
                part: *part,
                decided_at: resume.as_ref().map_or(now, |resume| resume.now),
                resumed_after: resume.as_ref().map(|resume| resume.after.as_str()),
            },
        })
        .collect();
    assert!(
        outcomes.next().is_none(),
        "one outcome per record decided now"
    );
    inputs
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
    /// Per partition that progressed, what the consumer group commits with the batch's outputs.
    pub commits: BTreeMap<i32, Commit>,
    /// Indexes (into the batch) of the records that go on in the next batch: a record whose
    /// fan-out goes on, or that the budget deferred, and every later record of its partition.
    pub carried: Vec<usize>,
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
    /// The largest message Kafka takes: key, value and headers of one output must fit.
    pub max_message_bytes: usize,
    /// Which setting that is, for the dead letter's reason, e.g. "the Kafka producer's
    /// message.max.bytes".
    pub max_message_bytes_setting: &'static str,
}

/// Builds the plan of a batch. `events`, `positions` and `inputs` are parallel.
///
/// A pair that an earlier record of the batch already delivers is dropped, whatever the guest
/// did, so that the ledger never sees a pair twice in one statement. A fan-out over the limits is
/// dead-lettered whole, with the limit in its reason, and so is a part that does not go beyond
/// where it was resumed (a guest that would loop forever).
pub fn plan<'a>(
    events: &'a [InputEvent],
    positions: &[Position],
    inputs: &[Input<'a>],
    guest: &GuestIdentity,
    limits: Limits,
) -> Plan<'a> {
    assert_eq!(events.len(), positions.len(), "one position per event");
    assert_eq!(events.len(), inputs.len(), "one input per event");
    let output_headers = records::headers::output_bytes(guest);
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    let mut cut: HashSet<i32> = HashSet::new();
    let mut plan = Plan::default();
    for (index, ((input, &source), decided)) in events.iter().zip(positions).zip(inputs).enumerate()
    {
        if cut.contains(&source.partition) {
            plan.carried.push(index);
            continue;
        }
        let (planned, goes_on_from) = match *decided {
            Input::Recalled(stored) => (
                Some(Planned::Recalled(stored.as_decision(input))),
                stored.continue_after.is_some().then_some(stored.part),
            ),
            Input::Decided {
                outcome: Outcome::Deferred,
                ..
            } => (None, None),
            Input::Decided {
                outcome,
                part,
                decided_at,
                resumed_after,
            } => {
                let candidate = decide(
                    source,
                    input,
                    outcome,
                    part,
                    decided_at,
                    resumed_after,
                    (limits, output_headers),
                    &mut seen,
                );
                let goes_on = candidate.continue_after.is_some().then_some(part);
                (Some(Planned::New(candidate)), goes_on)
            }
        };
        let Some(planned) = planned else {
            // Deferred: nothing of the record now, nor of its partition after it.
            cut.insert(source.partition);
            plan.carried.push(index);
            continue;
        };
        plan.records.push(planned);
        let commit = match goes_on_from {
            None => Commit {
                offset: source.offset + 1,
                parts_delivered: 0,
            },
            Some(part) => {
                cut.insert(source.partition);
                plan.carried.push(index);
                Commit {
                    offset: source.offset,
                    parts_delivered: part + 1,
                }
            }
        };
        plan.commits.insert(source.partition, commit);
    }
    plan
}

/// The candidate of a record decided now.
#[allow(clippy::too_many_arguments)]
fn decide<'a>(
    source: Position,
    input: &'a InputEvent,
    outcome: &'a Outcome,
    part: u32,
    decided_at: i64,
    resumed_after: Option<&str>,
    (limits, output_headers): (Limits, usize),
    seen: &mut HashSet<(&'a str, &'a str)>,
) -> Candidate<'a> {
    let mut continue_after = None;
    let verdict = match outcome {
        Outcome::FanOut(fan_out) => {
            let stalled = match (&fan_out.continue_after, resumed_after) {
                (Some(next), Some(previous)) => next.as_str() <= previous,
                _ => false,
            };
            if stalled {
                Verdict::DeadLetter(Cow::Borrowed(
                    "the transform's fan-out did not go beyond the client it was resumed after",
                ))
            } else if let Some(reason) = oversize(fan_out, limits, output_headers) {
                Verdict::DeadLetter(Cow::Owned(reason))
            } else {
                continue_after = fan_out.continue_after.as_deref();
                Verdict::Deliver(
                    records::messages(fan_out)
                        .zip(records::rows(fan_out))
                        .filter(|(message, row)| seen.insert((row.adv_campaign_id, message.key)))
                        .map(|(message, row)| Delivery { message, row })
                        .collect(),
                )
            }
        }
        Outcome::Skipped(reason) => Verdict::Skip(*reason),
        Outcome::Rejected(reason) => Verdict::DeadLetter(Cow::Borrowed(reason)),
        Outcome::Deferred => unreachable!("a deferred record is carried, not decided"),
    };
    Candidate {
        source,
        part,
        decided_at,
        input,
        verdict,
        continue_after,
    }
}

/// Why a fan-out cannot be delivered, if it cannot.
fn oversize(fan_out: &crate::guest::FanOut, limits: Limits, headers: usize) -> Option<String> {
    let largest = records::messages(fan_out)
        .map(|message| message.key.len() + message.value_len())
        .max()
        .unwrap_or(0);
    (largest + headers > limits.max_message_bytes).then(|| {
        format!(
            "an output message would be {} bytes with its headers, more than {} ({})",
            largest + headers,
            limits.max_message_bytes_setting,
            limits.max_message_bytes
        )
    })
}

#[cfg(test)]
mod tests;
