//! The pipeline: collect a batch, decide it, store the decisions, deliver them, commit.
//!
//! Per batch, in named stages:
//! 1. `collect`: the records carried over from the previous batch, then new ones, up to
//!    `batch_max_events`, dropping those of revoked partitions; the group metadata the batch
//!    commits with is taken when it closes (see [`rebalance`]).
//! 2. decide: recall the decisions (or parts of decisions) stored for records of the batch by
//!    earlier attempts, run the others through the guest within the batch's output budget, and
//!    [`plan`](crate::plan::plan) them.
//! 3. store: one PostgreSQL transaction takes the new decisions for good (ledger, feedback rows,
//!    decisions) and deletes those whose delivery has committed since ([`forgetting`]); data the
//!    database refuses is isolated by bisection and dead-lettered.
//! 4. deliver: one Kafka transaction sends every decision of the batch, as decided, and commits
//!    the consumed offsets (inside a record delivered in parts: the parts delivered). It runs on
//!    a thread of its own ([`courier`]) while the next batch goes through stages 1–3.
//! 5. account: once the delivery is known to have committed: metrics, the regression watch of a
//!    newly swapped guest, progress.
//!
//! A record whose fan-out the budget cut short, and the records of its partition after it, are
//! carried into the next batch (see the plan's "Parts"); that batch waits for the delivery before
//! it is decided.
//!
//! A failed stage is retried with backoff; a retry of the store stage decides again only what no
//! attempt stored, and the deliver stage sends the stored decisions, never a recomputation. A
//! decision Kafka refuses for good becomes a dead letter in both sinks, and its batch is planned
//! and delivered again. See the README's "Delivery guarantees".

pub mod clock;
pub mod courier;
pub mod forgetting;
pub mod outbox;
pub mod rebalance;
pub mod regression;
pub mod retry;
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
    self, Candidate, Commit, Decision, Forget, Limits, Plan, Planned, Position, Step,
    StoredDecision, Verdict,
};
use crate::reload::Reloader;
use crate::sinks::SinkError;
use crate::sinks::kafka::{self, KafkaSink};
use crate::sinks::postgres::{self, Written};
use clock::Clock;
use courier::{Courier, Delivered, Done, InFlight};
use forgetting::Forgetting;
use outbox::{Outbox, Packed};
use rebalance::GroupContext;
use regression::{RegressionSettings, RegressionWatch, Verdict as RegressionVerdict};
use retry::Retry;
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
pub struct Batch {
    events: Vec<InputEvent>,
    positions: Vec<Position>,
    /// How many records at the front were carried over from the previous batch.
    carried: usize,
    first_received: Instant,
}

impl Batch {
    fn empty() -> Self {
        Self {
            events: Vec::new(),
            positions: Vec::new(),
            carried: 0,
            first_received: Instant::now(),
        }
    }

    /// The records at `indexes`, which open the next batch.
    fn carry(&self, indexes: &[usize]) -> Self {
        Self {
            events: indexes.iter().map(|&i| self.events[i].clone()).collect(),
            positions: indexes.iter().map(|&i| self.positions[i]).collect(),
            carried: indexes.len(),
            first_received: Instant::now(),
        }
    }

    /// `carried`, then the records of `fresh` that were not carried into it: `fresh` rebuilt
    /// around what the previous batch carries after all.
    fn after(mut carried: Batch, fresh: Batch) -> Self {
        carried
            .events
            .extend(fresh.events.into_iter().skip(fresh.carried));
        carried
            .positions
            .extend(fresh.positions.into_iter().skip(fresh.carried));
        carried.first_received = fresh.first_received;
        carried
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
        let mut carried = 0;
        self.events.retain(|_| {
            index += 1;
            let kept = keep(self.positions[index - 1].partition);
            if kept && index <= self.carried {
                carried += 1;
            }
            kept
        });
        self.positions.retain(|position| keep(position.partition));
        self.carried = carried;
    }
}

/// When each stage of a batch ended, for its metrics and debug line.
#[derive(Debug, Clone, Copy)]
struct StageTimes {
    collected: Instant,
    decided: Instant,
    stored: Instant,
}

/// What the store stage hands on: the batch's decisions (owned, for the deliver stage), what
/// the accounting needs of them, and which records go on in the next batch.
struct Stored {
    decisions: Packed,
    commits: BTreeMap<i32, Commit>,
    carried: Vec<usize>,
    tally: Tally,
    times: StageTimes,
}

/// A batch's figures for the account stage, taken before its data goes to the deliver stage.
struct Tally {
    finished: usize,
    carried: usize,
    decided_now: u64,
    recalled: u64,
    rejected: u64,
    expired: u64,
    not_yet_started: u64,
    candidates_delivered: u64,
    outputs: u64,
    dead_letters: u64,
    rows_inserted: u64,
    guest: GuestIdentity,
}

impl Tally {
    fn of(
        batch: &Batch,
        plan: &Plan<'_>,
        decisions: &[Decision<'_>],
        rows_inserted: u64,
        guest: &GuestIdentity,
    ) -> Self {
        let mut tally = Tally {
            // A record delivered in parts counts once, with its last part.
            finished: batch.events.len() - plan.carried.len(),
            carried: plan.carried.len(),
            decided_now: 0,
            recalled: 0,
            rejected: 0,
            expired: 0,
            not_yet_started: 0,
            candidates_delivered: 0,
            outputs: decisions.iter().map(|d| d.messages.len() as u64).sum(),
            dead_letters: decisions.iter().filter(|d| d.dead_letter.is_some()).count() as u64,
            rows_inserted,
            guest: guest.clone(),
        };
        for record in &plan.records {
            match record {
                Planned::Recalled(_) => tally.recalled += 1,
                Planned::New(candidate) => {
                    tally.decided_now += 1;
                    match &candidate.verdict {
                        Verdict::Deliver(deliveries) => {
                            tally.candidates_delivered += deliveries.len() as u64
                        }
                        Verdict::Skip(guest_transform::SkipReason::Expired) => tally.expired += 1,
                        Verdict::Skip(guest_transform::SkipReason::NotYetStarted) => {
                            tally.not_yet_started += 1
                        }
                        Verdict::DeadLetter(_) => tally.rejected += 1,
                    }
                }
            }
        }
        tally
    }
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

/// The batch handed to the deliver stage.
struct Sent {
    in_flight: InFlight,
    pending: Pending,
}

/// What the account stage needs of a batch in delivery.
struct Pending {
    /// Whether the batch carries records into the next one.
    carries: bool,
    tally: Tally,
    times: StageTimes,
    first_received: Instant,
    span: tracing::Span,
}

/// How the batch in delivery ended, for the batch after it.
enum Settled {
    Committed,
    /// Kafka refused one of its decisions; it was made a dead letter and the batch planned and
    /// delivered again, now carrying the records at `carried` of `batch` into the next.
    Redone {
        batch: Batch,
        carried: Vec<usize>,
    },
    /// Shutdown came first.
    Interrupted,
}

impl Pipeline {
    /// Runs until `shutdown` is cancelled (returns `Ok`) or a sink fails fatally (returns `Err`).
    /// A batch interrupted by shutdown is abandoned uncommitted and will be consumed again.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let retry = Retry {
            metrics: self.metrics.clone(),
            progress: self.progress.clone(),
            initial_backoff: self.settings.retry_initial_backoff,
            max_backoff: self.settings.retry_max_backoff,
        };
        let courier = Courier::new(self.kafka, self.consumer.clone(), retry.clone());
        let watch = RegressionWatch::new(self.regression, &self.transformer.identity().sha256);
        let mut stages = Stages {
            consumer: self.consumer,
            reloader: self.reloader,
            input_topic: self.input_topic,
            transformer: self.transformer,
            postgres: Postgres {
                connect: self.pg_connect,
                client: None,
            },
            courier,
            clock: self.clock,
            metrics: self.metrics,
            progress: self.progress,
            settings: self.settings,
            retry,
            forgetting: Forgetting::default(),
            watch,
        };
        stages.run(&shutdown).await
    }
}

/// The pipeline at work: [`Pipeline`]'s parts, the deliver stage's [`Courier`] and what the
/// stages carry from one batch to the next.
struct Stages {
    consumer: Arc<GroupConsumer>,
    reloader: Arc<Reloader>,
    input_topic: String,
    transformer: Transformer,
    postgres: Postgres,
    courier: Courier,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    progress: Arc<Progress>,
    settings: Settings,
    retry: Retry,
    /// The decisions whose Kafka transaction committed: forgotten with the next batch's
    /// PostgreSQL transaction.
    forgetting: Forgetting,
    watch: RegressionWatch,
}

impl Stages {
    async fn run(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut sent: Option<Sent> = None;
        let mut next = Batch::empty();
        loop {
            let in_flight = sent.as_mut().map(|sent| &mut sent.in_flight);
            let (mut batch, group) =
                match collect(&self.consumer, &self.settings, next, in_flight, shutdown).await? {
                    Collected::Batch(batch, group) => (batch, group),
                    Collected::Shutdown => return self.finish(sent, shutdown).await,
                    Collected::Delivered(partial, joined) => {
                        let pending = sent.take().expect("a delivery was in flight").pending;
                        next = match self.settle(pending, *joined, shutdown).await? {
                            Settled::Committed => partial,
                            Settled::Redone { batch, carried } => {
                                self.assigned(Batch::after(batch.carry(&carried), partial))?
                            }
                            Settled::Interrupted => return Ok(()),
                        };
                        continue;
                    }
                };
            // Records carried from the batch in delivery go on from what its commit says was
            // delivered of them: it must have ended.
            if sent.as_ref().is_some_and(|sent| sent.pending.carries)
                && let Some(Sent { in_flight, pending }) = sent.take()
            {
                match self.settle(pending, in_flight.await, shutdown).await? {
                    Settled::Committed => {}
                    Settled::Redone {
                        batch: previous,
                        carried,
                    } => batch = self.assigned(Batch::after(previous.carry(&carried), batch))?,
                    Settled::Interrupted => return Ok(()),
                }
            }

            self.progress.batch_started();
            // Every line logged while the batch is in work says which records it holds and which
            // guest decides them.
            let span = tracing::info_span!(
                "batch",
                input = %describe_ranges(&batch.ranges()),
                guest = %self.transformer.identity().version,
            );
            let stored = self
                .decide_and_store(&batch, shutdown)
                .instrument(span.clone())
                .await?;
            let Some(stored) = stored else {
                return self.finish(sent, shutdown).await;
            };
            if let Some(Sent { in_flight, pending }) = sent.take() {
                match self.settle(pending, in_flight.await, shutdown).await? {
                    Settled::Committed => {}
                    // A batch that carried nothing was delivered whole before, and its records are
                    // all stored: planned again, none goes on into this one.
                    Settled::Redone { carried, .. } => anyhow::ensure!(
                        carried.is_empty(),
                        "a batch planned again after a Kafka refusal carries records into a batch \
                         already stored"
                    ),
                    Settled::Interrupted => return Ok(()),
                }
                // The stored batch is in work until its delivery is settled.
                self.progress.batch_started();
            }
            next = batch.carry(&stored.carried);
            sent = Some(self.hand_over(batch, stored, group, span, shutdown));
        }
    }

    /// Hands a stored batch to the deliver stage.
    fn hand_over(
        &mut self,
        batch: Batch,
        stored: Stored,
        group: ConsumerGroupMetadata,
        span: tracing::Span,
        shutdown: &CancellationToken,
    ) -> Sent {
        let pending = Pending {
            carries: !stored.carried.is_empty(),
            tally: stored.tally,
            times: stored.times,
            first_received: batch.first_received,
            span: span.clone(),
        };
        let outbox = Outbox::new(batch, stored.decisions, stored.commits, group);
        Sent {
            in_flight: self.courier.send(outbox, span, shutdown),
            pending,
        }
    }

    /// `batch` without the records of partitions no longer assigned to this host: records a
    /// batch planned again carries may be of a partition revoked since.
    fn assigned(&self, mut batch: Batch) -> anyhow::Result<Batch> {
        // Without the assignment, which records may be dropped is not known; a restart consumes
        // them all again from the committed offsets.
        let assignment = self
            .consumer
            .assignment()
            .map_err(|e| anyhow::anyhow!("reading the consumer's assignment: {e}"))?;
        let assigned: std::collections::HashSet<i32> = assignment
            .elements_for_topic(&self.input_topic)
            .iter()
            .map(|element| element.partition())
            .collect();
        batch.retain_partitions(|partition| assigned.contains(&partition));
        Ok(batch)
    }

    /// Waits for the delivery in flight, if any, and settles it: the end of the run.
    async fn finish(
        &mut self,
        sent: Option<Sent>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        if let Some(Sent { in_flight, pending }) = sent {
            self.settle(pending, in_flight.await, shutdown).await?;
        }
        Ok(())
    }

    /// Decides and stores one batch. `None` when shutdown interrupted it.
    async fn decide_and_store(
        &mut self,
        batch: &Batch,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Stored>> {
        let collected = Instant::now();
        let mut backoff = self.retry.backoff();
        loop {
            // Decide: what earlier attempts stored is recalled, the rest goes to the guest.
            let recalled = match recall(
                &mut self.postgres,
                &self.consumer,
                &self.input_topic,
                self.settings.kafka_timeout,
                batch,
            )
            .await
            {
                Ok(recalled) => recalled,
                Err(error) => {
                    if !self.retry_postgres(&error, &mut backoff, shutdown).await? {
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
            let forgets = self.forgetting.due();
            let written = match self.postgres.client().await {
                Ok(client) => store(client, &self.input_topic, &candidates, &guest, &forgets).await,
                Err(error) => Err(error),
            };
            let written = match written {
                Ok(written) => written,
                Err(SinkError::Conflict) => {
                    tracing::info!("another attempt decided records of this batch; recalling");
                    continue;
                }
                Err(error) => {
                    if !self.retry_postgres(&error, &mut backoff, shutdown).await? {
                        return Ok(None);
                    }
                    continue;
                }
            };
            self.forgetting.forgotten(&forgets);
            let stored = Instant::now();
            crate::crash_point!("between-commits");

            let decisions = merge(&plan, written.decisions);
            return Ok(Some(Stored {
                decisions: Packed::new(&decisions),
                commits: plan.commits.clone(),
                carried: plan.carried.clone(),
                tally: Tally::of(batch, &plan, &decisions, written.rows_inserted, &guest),
                times: StageTimes {
                    collected,
                    decided,
                    stored,
                },
            }));
        }
    }

    /// Takes in how the delivery of a batch ended: accounts for a commit, and makes a decision
    /// Kafka refused a dead letter and delivers its batch again.
    async fn settle(
        &mut self,
        pending: Pending,
        joined: Result<Done, tokio::task::JoinError>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Settled> {
        let done = self.courier.received(joined)?;
        match done.result? {
            Delivered::Committed => {
                self.account(pending, &done.outbox, done.started, done.ended)
                    .await;
                Ok(Settled::Committed)
            }
            Delivered::Interrupted => Ok(Settled::Interrupted),
            Delivered::Refused { decision, reason } => {
                self.redo(done.outbox, decision, &reason, pending.span, shutdown)
                    .await
            }
        }
    }

    /// Makes the decision at `refused` of `outbox` a dead letter, and plans and delivers its
    /// batch again: the record now as a dead letter in both sinks, every other as stored.
    async fn redo(
        &mut self,
        outbox: Outbox,
        refused: usize,
        reason: &str,
        span: tracing::Span,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Settled> {
        let mut outbox = outbox;
        let mut refusal = (refused, reason.to_owned());
        loop {
            let made = {
                let decisions = outbox.decisions();
                self.make_undeliverable(&decisions[refusal.0], &refusal.1, shutdown)
                    .instrument(span.clone())
                    .await?
            };
            if !made {
                return Ok(Settled::Interrupted);
            }
            let Outbox { batch, group, .. } = outbox;
            self.progress.batch_started();
            let Some(stored) = self
                .decide_and_store(&batch, shutdown)
                .instrument(span.clone())
                .await?
            else {
                return Ok(Settled::Interrupted);
            };
            let carried = stored.carried.clone();
            let Sent { in_flight, pending } =
                self.hand_over(batch, stored, group, span.clone(), shutdown);
            let done = self.courier.received(in_flight.await)?;
            match done.result? {
                Delivered::Committed => {
                    self.account(pending, &done.outbox, done.started, done.ended)
                        .await;
                    return Ok(Settled::Redone {
                        batch: done.outbox.batch,
                        carried,
                    });
                }
                Delivered::Interrupted => return Ok(Settled::Interrupted),
                Delivered::Refused { decision, reason } => {
                    outbox = done.outbox;
                    refusal = (decision, reason);
                }
            }
        }
    }

    /// [`Retry::after`] for a PostgreSQL error, dropping a connection the error may have broken.
    async fn retry_postgres(
        &mut self,
        error: &SinkError,
        backoff: &mut retry::Backoff,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let go_on = self
            .retry
            .after("postgres", error, backoff, shutdown)
            .await?;
        self.postgres.after(error);
        Ok(go_on)
    }

    /// Turns a stored decision that Kafka refuses into a dead letter (see
    /// [`postgres::undeliverable`]), retrying until PostgreSQL takes it. `false` when shutdown
    /// interrupted it.
    async fn make_undeliverable(
        &mut self,
        decision: &Decision<'_>,
        reason: &str,
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
        let mut backoff = self.retry.backoff();
        loop {
            let result = match self.postgres.client().await {
                Ok(client) => {
                    postgres::undeliverable(client, &self.input_topic, decision, &reason).await
                }
                Err(error) => Err(error),
            };
            match result {
                Ok(()) => return Ok(true),
                Err(error) => {
                    if !self.retry_postgres(&error, &mut backoff, shutdown).await? {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Once a batch's delivery has committed: its decisions are forgotten with the next batch's
    /// store; metrics, the regression watch, progress.
    async fn account(
        &mut self,
        pending: Pending,
        outbox: &Outbox,
        delivery_started: Instant,
        delivered: Instant,
    ) {
        let Pending {
            carries: _,
            tally,
            times,
            first_received,
            span,
        } = pending;
        self.forgetting.confirm(&outbox.commits);
        let entered = span.enter();
        let verdict = self.watch.record(
            delivered,
            &tally.guest.sha256,
            tally.decided_now,
            tally.rejected,
        );
        let metrics = &self.metrics;
        metrics.events_in.inc_by(tally.finished as u64);
        metrics.outputs.inc_by(tally.outputs);
        metrics.rows_inserted.inc_by(tally.rows_inserted);
        metrics.duplicates_suppressed.inc_by(
            tally
                .candidates_delivered
                .saturating_sub(tally.rows_inserted),
        );
        metrics.skipped_expired.inc_by(tally.expired);
        metrics
            .skipped_not_yet_started
            .inc_by(tally.not_yet_started);
        metrics.dead_lettered.inc_by(tally.dead_letters);
        let events = outbox.batch.events.len();
        metrics.batch_size.observe(events as f64);
        let latency = delivered.saturating_duration_since(first_received);
        metrics.batch_seconds.observe(latency.as_secs_f64());
        let stages = [
            (
                "collect",
                times.collected.saturating_duration_since(first_received),
            ),
            ("decide", times.decided - times.collected),
            ("postgres", times.stored - times.decided),
            ("kafka", delivered - delivery_started),
        ];
        for (stage, time) in stages {
            metrics.observe_stage(stage, time.as_secs_f64());
        }
        tracing::debug!(
            offsets = ?outbox.batch.ranges(),
            commits = ?outbox.commits,
            events,
            finished = tally.finished,
            carried = tally.carried,
            recalled = tally.recalled,
            outputs = tally.outputs,
            dead_letters = tally.dead_letters,
            seconds = latency.as_secs_f64(),
            collect_seconds = stages[0].1.as_secs_f64(),
            decide_seconds = stages[1].1.as_secs_f64(),
            postgres_seconds = stages[2].1.as_secs_f64(),
            kafka_seconds = stages[3].1.as_secs_f64(),
            // The deliver stage waited this long for the one before it to be taken in.
            waited_seconds = delivery_started.saturating_duration_since(times.stored).as_secs_f64(),
            guest = %tally.guest.version,
            "batch committed"
        );
        self.progress.batch_committed();
        drop(entered);
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
            let _ = self.reloader.rollback(&trigger).instrument(span).await;
        }
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
    forgets: &'b BTreeMap<i32, Forget>,
) -> BoxFuture<'b, Result<Written<'a>, SinkError>>
where
    'a: 'b,
{
    Box::pin(async move {
        let refused = match postgres::write(client, topic, candidates, guest, forgets).await {
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
            return postgres::write(client, topic, &[&isolated], guest, forgets).await;
        }
        let (left, right) = candidates.split_at(candidates.len() / 2);
        let mut written = store(client, topic, left, guest, forgets).await?;
        let rest = store(client, topic, right, guest, forgets).await?;
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

/// What [`collect`] ended with.
enum Collected {
    /// A batch, with the group metadata to commit it with.
    Batch(Batch, ConsumerGroupMetadata),
    /// The delivery in flight ended first: the records collected so far, to go on with once it
    /// is settled.
    Delivered(Batch, Box<Result<Done, tokio::task::JoinError>>),
    /// Shutdown was requested.
    Shutdown,
}

/// Collects up to `batch_max_events` records, `pending` first, waiting at most `batch_linger`
/// after the first, and the group metadata to commit them with; or returns what it has as soon
/// as the delivery `in_flight` ends, so that the delivery is settled without waiting for records.
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
    pending: Batch,
    mut in_flight: Option<&mut InFlight>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Collected> {
    let mut batch = pending;
    // Records already there are ready now: the batch takes what else is already there, no more.
    let mut deadline = (!batch.events.is_empty()).then(tokio::time::Instant::now);
    loop {
        if batch.events.len() >= settings.batch_max_events {
            break;
        }
        let received = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(Collected::Shutdown),
            joined = delivery_end(in_flight.as_deref_mut()) => {
                return Ok(Collected::Delivered(batch, Box::new(joined)));
            }
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
    Ok(Collected::Batch(batch, group))
}

/// The end of the delivery in flight; never, without one.
async fn delivery_end(in_flight: Option<&mut InFlight>) -> Result<Done, tokio::task::JoinError> {
    match in_flight {
        Some(in_flight) => in_flight.await,
        None => std::future::pending().await,
    }
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
