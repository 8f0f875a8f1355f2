//! The decide stage: what earlier attempts stored for a batch's records is recalled, the others
//! go to the guest.
//!
//! What it makes of a batch ([`Decided`]) owns its data: the batch after the one being stored can
//! be decided on a thread of its own while that store waits for PostgreSQL ([`Decider::ahead`]),
//! with a PostgreSQL connection of its own for the recall. Planning borrows the batch and the
//! decision, and is done just before the store.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use tracing::Instrument;

use super::clock::Clock;
use super::transformer::{TransformError, Transformer};
use super::{Batch, GroupConsumer, Postgres};
use crate::guest::{Budget, GuestIdentity, InputEvent, Outcome};
use crate::plan::{self, Commit, Input, Position, Step, StoredDecision};
use crate::sinks::SinkError;
use crate::sinks::kafka;
use crate::sinks::postgres;

/// Decides batches: the guest, and a PostgreSQL connection for recalls.
pub(super) struct Decider {
    pub(super) transformer: Transformer,
    /// Not the store's connection: a recall may run while the store's transaction is open.
    pub(super) postgres: Postgres,
    pub(super) consumer: Arc<GroupConsumer>,
    pub(super) input_topic: String,
    pub(super) clock: Arc<dyn Clock>,
    /// The most output one batch decides.
    pub(super) budget: Budget,
    /// How long a read of the group's committed offsets may take.
    pub(super) kafka_timeout: Duration,
}

/// A batch decided: the decisions recalled and the guest's outcomes for the others.
pub(super) struct Decided {
    recalled: Recalled,
    outcomes: Vec<Outcome>,
    now: i64,
    pub(super) guest: GuestIdentity,
    pub(super) began: Instant,
    pub(super) ended: Instant,
}

impl Decided {
    /// Pairs each record of `steps` (from [`Decided::steps`]) with what was decided of it.
    pub(super) fn inputs<'a>(&'a self, steps: &'a [Step<'a>]) -> Vec<Input<'a>> {
        plan::inputs(steps, &self.outcomes, self.now)
    }

    /// What was done with each record of the batch decided.
    pub(super) fn steps(&self, batch: &Batch) -> Vec<Step<'_>> {
        self.recalled.steps(&batch.positions)
    }
}

/// Why a batch could not be decided.
#[derive(Debug, thiserror::Error)]
pub(super) enum DecideError {
    /// Recalling what was stored failed; retried.
    #[error(transparent)]
    Recall(#[from] SinkError),
    /// The guest could not run at all; the service stops.
    #[error(transparent)]
    Transform(#[from] TransformError),
}

impl Decider {
    pub(super) async fn decide(&mut self, batch: &Batch) -> Result<Decided, DecideError> {
        let began = Instant::now();
        let recalled = recall(
            &mut self.postgres,
            &self.consumer,
            &self.input_topic,
            self.kafka_timeout,
            batch,
        )
        .await
        .inspect_err(|error| self.postgres.after(error))?;
        let steps = recalled.steps(&batch.positions);
        let now = self.clock.now_epoch_seconds();
        let fresh = guest_input(&batch.events, &steps);
        let budget = remaining_budget(self.budget, &steps);
        let transformer = &mut self.transformer;
        let outcomes =
            tokio::task::block_in_place(|| transformer.transform_batch(now, &fresh, budget))?;
        drop(steps);
        Ok(Decided {
            recalled,
            outcomes,
            now,
            guest: self.transformer.identity().clone(),
            began,
            ended: Instant::now(),
        })
    }

    /// Runs `work` on this thread while deciding `next` on a thread of its own: the guest and the
    /// recall take the time `work` spends waiting. `work` runs on the runtime as a future would;
    /// the decision is `None` when it failed (the caller decides the batch again, and meets the
    /// error there) or no thread could be started.
    pub(super) fn ahead<T>(
        &mut self,
        next: &Batch,
        span: tracing::Span,
        work: impl Future<Output = T>,
    ) -> (T, Option<Decided>) {
        tokio::task::block_in_place(|| {
            let runtime = tokio::runtime::Handle::current();
            std::thread::scope(|scope| {
                let deciding = std::thread::Builder::new()
                    .name("decide-ahead".into())
                    .spawn_scoped(scope, || {
                        runtime
                            .block_on(self.decide(next).instrument(span))
                            .inspect_err(|error| {
                                tracing::debug!(%error, "deciding the next batch ahead failed")
                            })
                            .ok()
                    });
                let done = runtime.block_on(work);
                let decided = match deciding {
                    Ok(deciding) => deciding
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                    Err(error) => {
                        tracing::debug!(%error, "no thread to decide the next batch ahead");
                        None
                    }
                };
                (done, decided)
            })
        })
    }
}

/// The decisions stored for records of `batch` by earlier attempts, and, for the records stored
/// in parts, how many parts Kafka has committed.
async fn recall(
    postgres: &mut Postgres,
    consumer: &GroupConsumer,
    topic: &str,
    timeout: Duration,
    batch: &Batch,
) -> Result<Recalled, SinkError> {
    let client = postgres.client().await?;
    let stored = postgres::recall(client, topic, &batch.ranges()).await?;
    let in_batch: HashSet<&Position> = batch.positions.iter().collect();
    let mut parts: HashMap<Position, Vec<StoredDecision>> = HashMap::new();
    for decision in stored {
        if in_batch.contains(&decision.source) {
            parts.entry(decision.source).or_default().push(decision);
        }
    }
    let in_parts: BTreeSet<i32> = parts
        .values()
        .flatten()
        .filter(|decision| decision.part > 0 || decision.continue_after.is_some())
        .map(|decision| decision.source.partition)
        .collect();
    let committed = if in_parts.is_empty() {
        BTreeMap::new()
    } else {
        committed(consumer, topic, timeout, &in_parts)?
    };
    // Only the parts to send again need their messages.
    let mut recalled = Recalled { parts, committed };
    let resend: HashSet<(Position, u32)> = recalled
        .steps(&batch.positions)
        .iter()
        .filter_map(|step| match step {
            Step::Resend(stored) => Some((stored.source, stored.part)),
            Step::Decide { .. } => None,
        })
        .collect();
    let mut to_read: Vec<&mut StoredDecision> = recalled
        .parts
        .values_mut()
        .flatten()
        .filter(|stored| resend.contains(&(stored.source, stored.part)))
        .collect();
    postgres::recall_messages(client, topic, &mut to_read).await?;
    Ok(recalled)
}

/// The group's committed offsets of `partitions`, from the group coordinator: after a crash or a
/// rebalance, whoever delivered the last part may have been another host.
fn committed(
    consumer: &GroupConsumer,
    topic: &str,
    timeout: Duration,
    partitions: &BTreeSet<i32>,
) -> Result<BTreeMap<i32, Commit>, SinkError> {
    let mut list = TopicPartitionList::new();
    for &partition in partitions {
        list.add_partition(topic, partition);
    }
    tokio::task::block_in_place(|| consumer.committed_offsets(list, timeout))
        .map(|committed| kafka::commits_of(&committed))
        .map_err(|e| SinkError::Retryable(format!("reading the committed offsets: {e}")))
}

/// What earlier attempts stored for the records of a batch.
struct Recalled {
    parts: HashMap<Position, Vec<StoredDecision>>,
    /// Committed offsets of the partitions with records stored in parts.
    committed: BTreeMap<i32, Commit>,
}

impl Recalled {
    /// What to do with each record.
    fn steps(&self, positions: &[Position]) -> Vec<Step<'_>> {
        positions
            .iter()
            .map(|position| {
                let parts = self.parts.get(position).map_or(&[][..], Vec::as_slice);
                let delivered = self
                    .committed
                    .get(&position.partition)
                    .map_or(0, |commit| commit.parts_delivered_of(position.offset));
                plan::next_step(parts, delivered)
            })
            .collect()
    }
}

/// The events the guest decides now, in batch order, each with where its fan-out resumes.
fn guest_input<'e>(events: &'e [InputEvent], steps: &[Step<'_>]) -> Cow<'e, [InputEvent]> {
    let from_scratch = |step: &Step<'_>| {
        matches!(
            step,
            Step::Decide {
                part: 0,
                resume: None
            }
        )
    };
    if steps.iter().all(from_scratch) {
        return Cow::Borrowed(events);
    }
    events
        .iter()
        .zip(steps)
        .filter_map(|(event, step)| match step {
            Step::Resend(_) => None,
            Step::Decide { resume, .. } => Some(InputEvent {
                resume: resume.clone(),
                ..event.clone()
            }),
        })
        .collect()
}

/// The batch's budget less what the parts resent as stored take of it.
fn remaining_budget(budget: Budget, steps: &[Step<'_>]) -> Budget {
    let (outputs, bytes) = steps
        .iter()
        .filter_map(|step| match step {
            Step::Resend(stored) => Some(stored),
            Step::Decide { .. } => None,
        })
        .fold((0u64, 0u64), |(outputs, bytes), stored| {
            let size: usize = stored
                .keys
                .iter()
                .chain(&stored.values)
                .map(String::len)
                .sum();
            (outputs + stored.keys.len() as u64, bytes + size as u64)
        });
    Budget {
        outputs: u32::try_from(u64::from(budget.outputs).saturating_sub(outputs)).unwrap_or(0),
        bytes: budget.bytes.saturating_sub(bytes),
    }
}
