//! The pipeline: collect a batch, decide it, store the decisions, deliver them, commit.
//!
//! Per batch, in named stages:
//! 1. [`collect`]: the records carried over from the previous batch, then new ones, up to
//!    `batch_max_events`, dropping those of revoked partitions; the group metadata the batch
//!    commits with is taken when it closes (see [`rebalance`]).
//! 2. decide: recall the decisions (or parts of decisions) stored for records of the batch by
//!    earlier attempts, run the others through the guest within the batch's output budget, and
//!    [`plan`](crate::plan::plan) them.
//! 3. store: one PostgreSQL transaction takes the new decisions for good (ledger, feedback rows,
//!    decisions); data the database refuses is isolated by bisection and dead-lettered.
//! 4. deliver: one Kafka transaction sends every decision of the batch, as decided, and commits
//!    the consumed offsets (inside a record delivered in parts: the parts delivered).
//! 5. account: metrics, the regression watch of a newly swapped guest, progress.
//!
//! A record whose fan-out the budget cut short, and the records of its partition after it, are
//! carried into the next batch (see the plan's "Parts").
//!
//! A failed stage is retried with backoff; a retry of the store stage decides again only what no
//! attempt stored, and the deliver stage sends the stored decisions, never a recomputation. See
//! the README's "Delivery guarantees".

pub mod clock;
pub mod rebalance;
pub mod regression;
pub mod transformer;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rdkafka::consumer::{Consumer, ConsumerGroupMetadata, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, TopicPartitionList};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::guest::{Budget, GuestIdentity, InputEvent};
use crate::http::Progress;
use crate::metrics::Metrics;
use crate::plan::{
    self, Candidate, Commit, Decision, Limits, Plan, Planned, Position, Step, StoredDecision,
    Verdict,
};
use crate::reload::Reloader;
use crate::sinks::SinkError;
use crate::sinks::kafka::{self, KafkaSink};
use crate::sinks::postgres::{self, Written};
use clock::Clock;
use rebalance::GroupContext;
use regression::{RegressionSettings, RegressionWatch, Verdict as RegressionVerdict};
use transformer::Transformer;

/// Opens a new PostgreSQL connection (its connection task already spawned).
pub type PgConnect = Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<Client>> + Send + Sync>;

/// The consumer the pipeline reads from, with its rebalance-aware context.
pub type GroupConsumer = StreamConsumer<GroupContext>;

/// Tuning of the pipeline, from the `[pipeline]` configuration section.
#[derive(Debug, Clone)]
pub struct Settings {
    pub batch_max_events: usize,
    pub batch_linger: Duration,
    pub retry_initial_backoff: Duration,
    pub retry_max_backoff: Duration,
    /// The most output one batch decides (`batch_max_outputs`, `batch_max_bytes`).
    pub budget: Budget,
    pub limits: Limits,
    /// How long a read of the group's committed offsets may take.
    pub kafka_timeout: Duration,
}

pub struct Pipeline {
    pub consumer: Arc<GroupConsumer>,
    /// Rolls a newly swapped guest back when it regresses (see [`regression`]).
    pub reloader: Arc<Reloader>,
    pub regression: RegressionSettings,
    pub input_topic: String,
    pub transformer: Transformer,
    pub pg_connect: PgConnect,
    pub kafka: KafkaSink,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// What `/readyz` reports of the pipeline's progress.
    pub progress: Arc<Progress>,
    pub settings: Settings,
}

/// The input records of one batch, copied out of the consumer.
struct Batch {
    events: Vec<InputEvent>,
    positions: Vec<Position>,
    first_received: Instant,
}

impl Batch {
    fn empty() -> Self {
        Self {
            events: Vec::new(),
            positions: Vec::new(),
            first_received: Instant::now(),
        }
    }

    /// The records at `indexes`, which open the next batch.
    fn carry(self, indexes: &[usize]) -> Self {
        let keep: std::collections::HashSet<usize> = indexes.iter().copied().collect();
        let (events, positions) = self
            .events
            .into_iter()
            .zip(self.positions)
            .enumerate()
            .filter(|(index, _)| keep.contains(index))
            .map(|(_, record)| record)
            .unzip();
        Self {
            events,
            positions,
            first_received: Instant::now(),
        }
    }

    /// Per partition, the first and last offset of the batch.
    fn ranges(&self) -> BTreeMap<i32, (i64, i64)> {
        let mut ranges: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
        for position in &self.positions {
            let range = ranges
                .entry(position.partition)
                .or_insert((position.offset, position.offset));
            range.0 = range.0.min(position.offset);
            range.1 = range.1.max(position.offset);
        }
        ranges
    }

    fn retain_partitions(&mut self, keep: impl Fn(i32) -> bool) {
        let mut index = 0;
        self.events.retain(|_| {
            index += 1;
            keep(self.positions[index - 1].partition)
        });
        self.positions.retain(|position| keep(position.partition));
    }
}

/// How the deliver stage ended.
enum Delivered {
    Committed,
    /// Shutdown came first.
    Interrupted,
    /// Kafka refuses a message of the decision at this index for good.
    Refused {
        decision: usize,
        reason: String,
    },
}

/// How long each stage of a batch took, for the batch's debug line.
struct StageTimes {
    collected: Instant,
    decided: Instant,
    stored: Instant,
    delivered: Instant,
}

/// The PostgreSQL connection of the pipeline, opened again after an error that may have broken
/// it.
struct Postgres {
    connect: PgConnect,
    client: Option<Client>,
}

impl Postgres {
    async fn client(&mut self) -> Result<&mut Client, SinkError> {
        if self.client.is_none() {
            let client = (self.connect)()
                .await
                .map_err(|e| SinkError::Retryable(format!("connecting: {e:#}")))?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Drops the connection unless `error` leaves it usable (a rolled-back statement does).
    fn after(&mut self, error: &SinkError) {
        if !matches!(error, SinkError::Refused(_) | SinkError::Conflict) {
            self.client = None;
        }
    }
}

impl Pipeline {
    /// Runs until `shutdown` is cancelled (returns `Ok`) or a sink fails fatally (returns `Err`).
    /// A batch interrupted by shutdown is abandoned uncommitted and will be consumed again.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut postgres = Postgres {
            connect: self.pg_connect.clone(),
            client: None,
        };
        // The commits of the last batch whose Kafka transaction committed: their decisions are
        // forgotten with the next batch's PostgreSQL transaction.
        let mut confirmed: BTreeMap<i32, Commit> = BTreeMap::new();
        let mut watch = RegressionWatch::new(self.regression, &self.transformer.identity().sha256);
        let mut carried = Batch::empty();
        while let Some((batch, group)) =
            collect(&self.consumer, &self.settings, carried, &shutdown).await?
        {
            self.progress.batch_started();
            // Every line logged while the batch is in work says which records it holds and which
            // guest decides them.
            let span = tracing::info_span!(
                "batch",
                input = %describe_ranges(&batch.ranges()),
                guest = %self.transformer.identity().version,
            );
            let Some(carry) = self
                .process(
                    &batch,
                    &group,
                    &mut postgres,
                    &mut confirmed,
                    &mut watch,
                    &shutdown,
                )
                .instrument(span)
                .await?
            else {
                return Ok(());
            };
            carried = batch.carry(&carry);
            self.progress.batch_committed();
        }
        Ok(())
    }

    /// Decides, stores and delivers one batch. Returns the indexes of the records carried into
    /// the next batch, or `None` when shutdown interrupted it.
    async fn process(
        &mut self,
        batch: &Batch,
        group: &ConsumerGroupMetadata,
        postgres: &mut Postgres,
        confirmed: &mut BTreeMap<i32, Commit>,
        watch: &mut RegressionWatch,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Vec<usize>>> {
        let collected = Instant::now();
        let mut backoff = Backoff::new(&self.settings);
        loop {
            // Decide: what earlier attempts stored is recalled, the rest goes to the guest.
            let recalled = match recall(
                postgres,
                &self.consumer,
                &self.input_topic,
                self.settings.kafka_timeout,
                batch,
            )
            .await
            {
                Ok(recalled) => recalled,
                Err(error) => {
                    if !self
                        .retry_postgres(&error, postgres, &mut backoff, shutdown)
                        .await?
                    {
                        return Ok(None);
                    }
                    continue;
                }
            };
            let steps = recalled.steps(&batch.positions);
            let now = self.clock.now_epoch_seconds();
            let fresh = guest_input(&batch.events, &steps);
            let budget = remaining_budget(self.settings.budget, &steps);
            let transformer = &mut self.transformer;
            let outcomes =
                tokio::task::block_in_place(|| transformer.transform_batch(now, &fresh, budget))?;
            let guest = self.transformer.identity().clone();
            let inputs = plan::inputs(&steps, &outcomes, now);
            let plan = plan::plan(
                &batch.events,
                &batch.positions,
                &inputs,
                &guest,
                self.settings.limits,
            );
            anyhow::ensure!(
                !plan.records.is_empty(),
                "the guest deferred every event of a batch: it does not honour the budget"
            );
            let decided = Instant::now();

            // Store: the new decisions are taken for good.
            let candidates: Vec<&Candidate<'_>> = plan.candidates().collect();
            let stored = match postgres.client().await {
                Ok(client) => {
                    store(client, &self.input_topic, &candidates, &guest, confirmed).await
                }
                Err(error) => Err(error),
            };
            let written = match stored {
                Ok(written) => written,
                Err(SinkError::Conflict) => {
                    tracing::info!("another attempt decided records of this batch; recalling");
                    continue;
                }
                Err(error) => {
                    if !self
                        .retry_postgres(&error, postgres, &mut backoff, shutdown)
                        .await?
                    {
                        return Ok(None);
                    }
                    continue;
                }
            };
            confirmed.clear();
            let stored_at = Instant::now();
            crate::crash_point!("between-commits");

            // Deliver: every decision of the batch, as decided.
            let decisions = merge(&plan, written.decisions);
            match self
                .deliver(&decisions, &plan.commits, group, shutdown)
                .await?
            {
                Delivered::Committed => {}
                Delivered::Interrupted => return Ok(None),
                Delivered::Refused { decision, reason } => {
                    let decision = &decisions[decision];
                    if !self
                        .make_undeliverable(decision, &reason, postgres, shutdown)
                        .await?
                    {
                        return Ok(None);
                    }
                    // Planned again: the record is now a dead letter in both sinks.
                    continue;
                }
            }
            crate::crash_point!("after-kafka-commit");
            *confirmed = plan.commits.clone();
            let times = StageTimes {
                collected,
                decided,
                stored: stored_at,
                delivered: Instant::now(),
            };
            self.account(
                batch,
                &plan,
                &decisions,
                written.rows_inserted,
                &guest,
                watch,
                times,
            )
            .await;
            return Ok(Some(plan.carried));
        }
    }

    /// [`Self::retry`] for a PostgreSQL error, dropping a connection the error may have broken.
    async fn retry_postgres(
        &mut self,
        error: &SinkError,
        postgres: &mut Postgres,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let go_on = self.retry("postgres", error, backoff, shutdown).await?;
        postgres.after(error);
        Ok(go_on)
    }

    /// Turns a stored decision that Kafka refuses into a dead letter (see
    /// [`postgres::undeliverable`]), retrying until PostgreSQL takes it. `false` when shutdown
    /// interrupted it.
    async fn make_undeliverable(
        &mut self,
        decision: &Decision<'_>,
        reason: &str,
        postgres: &mut Postgres,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<bool> {
        if decision.messages.is_empty() {
            anyhow::bail!(
                "Kafka refuses the dead letter of {}:{} for good: {reason}",
                decision.source.partition,
                decision.source.offset
            );
        }
        let source = decision.source;
        tracing::warn!(
            partition = source.partition,
            offset = source.offset,
            part = decision.part,
            %reason,
            "Kafka refused an event's messages; dead-lettering the event"
        );
        let reason = format!("Kafka refused the event's messages: {reason}");
        let mut backoff = Backoff::new(&self.settings);
        loop {
            let result = match postgres.client().await {
                Ok(client) => {
                    postgres::undeliverable(client, &self.input_topic, decision, &reason).await
                }
                Err(error) => Err(error),
            };
            match result {
                Ok(()) => return Ok(true),
                Err(error) => {
                    if !self
                        .retry_postgres(&error, postgres, &mut backoff, shutdown)
                        .await?
                    {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Sends the decisions in one Kafka transaction, retrying until it commits or Kafka refuses
    /// a message for good.
    async fn deliver(
        &mut self,
        decisions: &[Decision<'_>],
        commits: &BTreeMap<i32, Commit>,
        group: &ConsumerGroupMetadata,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Delivered> {
        let mut backoff = Backoff::new(&self.settings);
        loop {
            match self.kafka.write(decisions, commits, group) {
                Ok(()) => return Ok(Delivered::Committed),
                Err(SinkError::Undeliverable { decision, reason }) => {
                    return Ok(Delivered::Refused { decision, reason });
                }
                // A fatal producer (fenced: another instance took over the transactional id, or
                // the coordinator aborted a transaction that outlived `transaction.timeout.ms`) or
                // a lost group membership is not recovered here but ends the service, for its
                // supervisor to restart it: the new producer's `init_transactions` settles the old
                // transaction, the restarted consumer reads from the committed offsets, and every
                // decision stored meanwhile is recalled and sent as stored (see `service::run`).
                // Broker restarts and outages do not come here: timeouts and abortable errors are
                // retried, resuming the pending commit or abort (see `KafkaSink::write`).
                Err(error) => {
                    if !self.retry("kafka", &error, &mut backoff, shutdown).await? {
                        return Ok(Delivered::Interrupted);
                    }
                }
            }
        }
    }

    /// Logs and counts a failed attempt and waits before the next: `Ok(false)` when shutdown
    /// was requested meanwhile, `Err` when the error cannot be retried.
    async fn retry(
        &mut self,
        sink: &'static str,
        error: &SinkError,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let message = match error {
            SinkError::Retryable(message) => message,
            SinkError::Fatal(message) => anyhow::bail!("{sink} sink: {message}"),
            SinkError::Refused(message) => {
                anyhow::bail!("{sink} sink refused data it should have been spared: {message}")
            }
            SinkError::Conflict => anyhow::bail!("{sink} sink: unexpected conflict"),
            SinkError::Undeliverable { reason, .. } => {
                anyhow::bail!("{sink} sink refused a message unexpectedly: {reason}")
            }
        };
        tracing::warn!(sink, error = %message, "write failed; retrying");
        self.metrics.count_sink_retry(sink);
        self.progress.failed(&format!("{sink}: {message}"));
        Ok(backoff.wait(shutdown).await)
    }

    #[allow(clippy::too_many_arguments)]
    async fn account(
        &mut self,
        batch: &Batch,
        plan: &Plan<'_>,
        decisions: &[Decision<'_>],
        rows_inserted: u64,
        guest: &GuestIdentity,
        watch: &mut RegressionWatch,
        times: StageTimes,
    ) {
        let (mut decided_now, mut recalled) = (0u64, 0u64);
        let (mut rejected, mut expired, mut not_yet_started, mut candidates_delivered) =
            (0u64, 0u64, 0u64, 0u64);
        for record in &plan.records {
            if let Planned::Recalled(_) = record {
                recalled += 1;
            }
            if let Planned::New(candidate) = record {
                decided_now += 1;
                match &candidate.verdict {
                    Verdict::Deliver(deliveries) => candidates_delivered += deliveries.len() as u64,
                    Verdict::Skip(guest_transform::SkipReason::Expired) => expired += 1,
                    Verdict::Skip(guest_transform::SkipReason::NotYetStarted) => {
                        not_yet_started += 1
                    }
                    Verdict::DeadLetter(_) => rejected += 1,
                }
            }
        }
        let verdict = watch.record(times.delivered, &guest.sha256, decided_now, rejected);
        if let RegressionVerdict::RollBack {
            previous_share,
            new_share,
        } = verdict
        {
            let trigger = format!(
                "automatic: the new guest rejected {:.0}% of its events, its predecessor {:.0}%",
                new_share * 100.0,
                previous_share * 100.0
            );
            // Logged and counted by the reloader; the next batch uses the restored guest.
            let _ = self.reloader.rollback(&trigger).await;
        }

        let outputs: usize = decisions.iter().map(|d| d.messages.len()).sum();
        let dead_letters = decisions.iter().filter(|d| d.dead_letter.is_some()).count();
        let metrics = &self.metrics;
        // A record delivered in parts counts once, with its last part.
        let finished = batch.events.len() - plan.carried.len();
        metrics.events_in.inc_by(finished as u64);
        metrics.outputs.inc_by(outputs as u64);
        metrics.rows_inserted.inc_by(rows_inserted);
        metrics
            .duplicates_suppressed
            .inc_by(candidates_delivered.saturating_sub(rows_inserted));
        metrics.skipped_expired.inc_by(expired);
        metrics.skipped_not_yet_started.inc_by(not_yet_started);
        metrics.dead_lettered.inc_by(dead_letters as u64);
        metrics.batch_size.observe(batch.events.len() as f64);
        let latency = batch.first_received.elapsed().as_secs_f64();
        metrics.batch_seconds.observe(latency);
        let stages = [
            ("collect", times.collected - batch.first_received),
            ("decide", times.decided - times.collected),
            ("postgres", times.stored - times.decided),
            ("kafka", times.delivered - times.stored),
        ];
        for (stage, time) in stages {
            metrics.observe_stage(stage, time.as_secs_f64());
        }
        tracing::debug!(
            offsets = ?batch.ranges(),
            commits = ?plan.commits,
            events = batch.events.len(),
            finished,
            carried = plan.carried.len(),
            recalled,
            outputs,
            dead_letters,
            seconds = latency,
            collect_seconds = (times.collected - batch.first_received).as_secs_f64(),
            decide_seconds = (times.decided - times.collected).as_secs_f64(),
            postgres_seconds = (times.stored - times.decided).as_secs_f64(),
            kafka_seconds = (times.delivered - times.stored).as_secs_f64(),
            guest = %guest.version,
            "batch committed"
        );
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
    let in_batch: std::collections::HashSet<&Position> = batch.positions.iter().collect();
    let mut parts: HashMap<Position, Vec<StoredDecision>> = HashMap::new();
    for decision in stored {
        if in_batch.contains(&decision.source) {
            parts.entry(decision.source).or_default().push(decision);
        }
    }
    let in_parts: std::collections::BTreeSet<i32> = parts
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
    let resend: std::collections::HashSet<(Position, u32)> = recalled
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
    partitions: &std::collections::BTreeSet<i32>,
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

/// Stores the candidates' decisions; when the database refuses the data of one of them, splits
/// the candidates in halves until that one stands alone, and stores it dead-lettered with the
/// database's reason. The others are stored normally, in transactions of their own.
fn store<'a, 'b>(
    client: &'b mut Client,
    topic: &'b str,
    candidates: &'b [&'b Candidate<'a>],
    guest: &'a GuestIdentity,
    confirmed: &'b BTreeMap<i32, Commit>,
) -> BoxFuture<'b, Result<Written<'a>, SinkError>>
where
    'a: 'b,
{
    Box::pin(async move {
        let refused = match postgres::write(client, topic, candidates, guest, confirmed).await {
            Err(SinkError::Refused(reason)) => reason,
            other => return other,
        };
        if let [candidate] = candidates {
            if candidate.deliveries().is_empty() {
                return Err(SinkError::Fatal(format!(
                    "PostgreSQL refused a decision that writes no rows: {refused}"
                )));
            }
            let source = candidate.source;
            tracing::warn!(
                partition = source.partition,
                offset = source.offset,
                reason = %refused,
                "PostgreSQL refused an event's rows; dead-lettering the event"
            );
            let isolated =
                candidate.dead_lettered(format!("PostgreSQL refused the event's rows: {refused}"));
            return postgres::write(client, topic, &[&isolated], guest, confirmed).await;
        }
        let (left, right) = candidates.split_at(candidates.len() / 2);
        let mut written = store(client, topic, left, guest, confirmed).await?;
        let rest = store(client, topic, right, guest, confirmed).await?;
        written.decisions.extend(rest.decisions);
        written.rows_inserted += rest.rows_inserted;
        Ok(written)
    })
}

/// Every decision of the batch in batch order: recalled ones as they were stored, new ones as
/// the store stage took them.
fn merge<'a>(plan: &Plan<'a>, stored: Vec<Decision<'a>>) -> Vec<Decision<'a>> {
    let mut stored = stored.into_iter();
    let merged: Vec<Decision<'a>> = plan
        .records
        .iter()
        .map(|record| match record {
            Planned::Recalled(decision) => decision.clone(),
            Planned::New(_) => stored.next().expect("one decision per candidate"),
        })
        .collect();
    assert!(stored.next().is_none(), "one decision per candidate");
    merged
}

/// Collects up to `batch_max_events` records, `carried` first, waiting at most `batch_linger`
/// after the first, and the group metadata to commit them with. `None` when shutdown was
/// requested.
///
/// Records of partitions revoked meanwhile are dropped (see [`rebalance`]), carried ones
/// included. Consumer errors are logged and consumption goes on (librdkafka reconnects by itself,
/// e.g. while a broker restarts), except fatal ones, which end the pipeline: the consumer will
/// never deliver again. One is a static member fenced by its own earlier session after that
/// session timed out during a Kafka outage longer than `session.timeout.ms` (librdkafka issue
/// #3437). Nothing of the batch being collected was written yet, so the restarted service
/// consumes it again from the committed offsets.
async fn collect(
    consumer: &GroupConsumer,
    settings: &Settings,
    carried: Batch,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<(Batch, ConsumerGroupMetadata)>> {
    let mut batch = carried;
    // Carried records are ready now: the batch takes what else is already there, no more.
    let mut deadline = (!batch.events.is_empty()).then(tokio::time::Instant::now);
    loop {
        if batch.events.len() >= settings.batch_max_events {
            break;
        }
        let received = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(None),
            _ = sleep_until(deadline) => None,
            received = consumer.recv() => Some(received),
        };
        // The rebalance callbacks run inside `recv`, before it returns a message: what was
        // revoked is dropped from the records received before, while the message `recv` returns
        // now comes from the assignment in force (librdkafka discards what it fetched for the
        // old one). Dropping that message too would lose it: the new assignment goes on after it.
        let revoked = consumer.context().take_revoked();
        if revoked != rebalance::Revoked::Nothing {
            let before = batch.events.len();
            batch.retain_partitions(|partition| !revoked.contains(partition));
            if batch.events.len() < before {
                tracing::info!(
                    dropped = before - batch.events.len(),
                    "records of revoked partitions dropped from the batch"
                );
            }
        }
        let Some(received) = received else {
            if batch.events.is_empty() {
                deadline = None;
                continue;
            }
            break;
        };
        match received {
            Ok(message) => {
                if batch.events.is_empty() {
                    batch.first_received = Instant::now();
                    deadline = Some(tokio::time::Instant::now() + settings.batch_linger);
                }
                batch.events.push(InputEvent {
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().unwrap_or_default().to_vec(),
                    resume: None,
                });
                batch.positions.push(Position {
                    partition: message.partition(),
                    offset: message.offset(),
                });
            }
            Err(error @ KafkaError::MessageConsumptionFatal(_)) => {
                anyhow::bail!("Kafka consumer: {error}")
            }
            Err(error) => tracing::warn!(%error, "consumer error"),
        }
        if batch.events.is_empty() {
            deadline = None;
        }
    }
    let group = consumer
        .group_metadata()
        .ok_or_else(|| anyhow::anyhow!("the consumer has no group metadata"))?;
    Ok(Some((batch, group)))
}

/// `partition:first-last` per partition, e.g. `0:17-40,2:5-5`.
fn describe_ranges(ranges: &BTreeMap<i32, (i64, i64)>) -> String {
    ranges
        .iter()
        .map(|(partition, (first, last))| format!("{partition}:{first}-{last}"))
        .collect::<Vec<_>>()
        .join(",")
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Exponential backoff between retries of one sink write.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(settings: &Settings) -> Self {
        Self {
            next: settings.retry_initial_backoff,
            max: settings.retry_max_backoff,
        }
    }

    /// Waits for the next attempt; `false` if shutdown was requested meanwhile.
    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}
