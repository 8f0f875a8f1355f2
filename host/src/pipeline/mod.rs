//! The pipeline: consume a batch, transform it in the guest, write the plan to both sinks, commit.
//!
//! Per batch: PostgreSQL first (rows + ledger, one transaction), then Kafka (outputs, dead letters
//! and consumed offsets, one transaction). Each sink is retried on its own, with backoff, from the
//! in-memory plan; nothing is recomputed. See the README's "Delivery guarantees".

pub mod clock;
pub mod plan;
pub mod regression;
pub mod transformer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::guest::{InputEvent, Outcome};
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::sinks::kafka::KafkaSink;
use crate::sinks::{SinkError, postgres};
use clock::Clock;
use plan::Position;
use regression::{RegressionSettings, RegressionWatch, Verdict};
use transformer::Transformer;

/// Opens a new PostgreSQL connection (its connection task already spawned).
pub type PgConnect = Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<Client>> + Send + Sync>;

/// Tuning of the pipeline, from the `[pipeline]` configuration section.
#[derive(Debug, Clone)]
pub struct Settings {
    pub batch_max_events: usize,
    pub batch_linger: Duration,
    pub retry_initial_backoff: Duration,
    pub retry_max_backoff: Duration,
    pub max_outputs_per_event: usize,
}

pub struct Pipeline {
    pub consumer: Arc<StreamConsumer>,
    /// Rolls a newly swapped guest back when it regresses (see [`regression`]).
    pub reloader: Arc<Reloader>,
    pub regression: RegressionSettings,
    pub input_topic: String,
    pub transformer: Transformer,
    pub pg_connect: PgConnect,
    pub kafka: KafkaSink,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
}

/// The input records of one batch, copied out of the consumer.
struct Batch {
    events: Vec<InputEvent>,
    positions: Vec<Position>,
    first_received: Instant,
}

impl Pipeline {
    /// Runs until `shutdown` is cancelled (returns `Ok`) or a sink fails fatally (returns `Err`).
    /// A batch interrupted by shutdown is abandoned uncommitted and will be consumed again.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Pipeline {
            consumer,
            reloader,
            regression,
            input_topic,
            mut transformer,
            pg_connect,
            mut kafka,
            clock,
            metrics,
            settings,
        } = self;
        let mut pg: Option<Client> = None;
        // The offsets of the last batch whose Kafka transaction committed, confirmed in the
        // ledger with the next batch's PostgreSQL transaction.
        let mut confirmed: BTreeMap<i32, i64> = BTreeMap::new();
        let mut watch = RegressionWatch::new(regression, &transformer.identity().sha256);
        let oversize_reason = format!(
            "the event fans out to more than {} clients (pipeline.max_outputs_per_event)",
            settings.max_outputs_per_event
        );
        while let Some(batch) = next_batch(&consumer, &settings, &shutdown).await? {
            let now = clock.now_epoch_seconds();
            let started = Instant::now();
            let outcomes =
                tokio::task::block_in_place(|| transformer.transform_batch(now, &batch.events))?;
            let plan = plan::plan(
                &batch.events,
                &batch.positions,
                &outcomes,
                settings.max_outputs_per_event,
                &oversize_reason,
            );

            let transformed = Instant::now();
            let mut backoff = Backoff::new(&settings);
            let written = loop {
                let result = match pg.as_mut() {
                    Some(client) => postgres::write(client, &input_topic, &plan, &confirmed).await,
                    None => match connect_pg(&pg_connect).await {
                        Ok(client) => {
                            pg = Some(client);
                            continue;
                        }
                        Err(error) => Err(SinkError::Retryable(format!("{error:#}"))),
                    },
                };
                match result {
                    Ok(written) => break written,
                    Err(SinkError::Fatal(message)) => anyhow::bail!("PostgreSQL sink: {message}"),
                    Err(SinkError::Retryable(message)) => {
                        tracing::warn!(%message, "PostgreSQL write failed; retrying");
                        metrics.count_sink_retry("postgres");
                        pg = None;
                        if !backoff.wait(&shutdown).await {
                            return Ok(());
                        }
                    }
                }
            };
            confirmed.clear();
            let in_postgres = Instant::now();

            let group = consumer
                .group_metadata()
                .ok_or_else(|| anyhow::anyhow!("the consumer has no group metadata"))?;
            let mut backoff = Backoff::new(&settings);
            loop {
                match kafka.write(&plan, &written.to_send, transformer.identity(), &group) {
                    Ok(()) => break,
                    // A fatal producer (fenced: another instance took over the transactional id,
                    // or the coordinator aborted a transaction that outlived
                    // `transaction.timeout.ms`) is not recreated here but ends the service, for
                    // its supervisor to restart it. Recreating it would be correct only with the
                    // batch re-established from the committed offsets: the new producer's
                    // `init_transactions` settles the old transaction (completes a commit already
                    // prepared, aborts anything else), so whether this batch must be sent again
                    // can be known only from the group's committed offsets read after that, and
                    // the consumer would have to be rewound to them. A restart does exactly that
                    // (see `service::run`), and does not fight over the id with a newer instance.
                    // Broker restarts and outages do not come here: timeouts and abortable errors
                    // are retried, resuming the pending commit or abort (see `KafkaSink::write`).
                    Err(SinkError::Fatal(message)) => anyhow::bail!("Kafka sink: {message}"),
                    Err(SinkError::Retryable(message)) => {
                        tracing::warn!(%message, "Kafka transaction failed; retrying");
                        metrics.count_sink_retry("kafka");
                        if !backoff.wait(&shutdown).await {
                            return Ok(());
                        }
                    }
                }
            }
            confirmed = plan.next_offsets.clone();
            let in_kafka = Instant::now();

            let rejected = outcomes
                .iter()
                .filter(|outcome| matches!(outcome, Outcome::Rejected(_)))
                .count();
            let verdict = watch.record(
                in_kafka,
                &transformer.identity().sha256,
                batch.events.len() as u64,
                rejected as u64,
            );
            if let Verdict::RollBack {
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
                let _ = reloader.rollback(&trigger).await;
            }

            metrics.events_in.inc_by(batch.events.len() as u64);
            metrics.outputs.inc_by(written.to_send.len() as u64);
            metrics.rows_inserted.inc_by(written.rows_inserted);
            metrics
                .duplicates_suppressed
                .inc_by((plan.deliveries.len() - written.to_send.len()) as u64);
            metrics.skipped_expired.inc_by(plan.expired as u64);
            metrics
                .skipped_not_yet_started
                .inc_by(plan.not_yet_started as u64);
            metrics.dead_lettered.inc_by(plan.dead_letters.len() as u64);
            metrics.batch_size.observe(batch.events.len() as f64);
            let latency = batch.first_received.elapsed().as_secs_f64();
            metrics.batch_seconds.observe(latency);
            tracing::debug!(
                events = batch.events.len(),
                outputs = written.to_send.len(),
                dead_letters = plan.dead_letters.len(),
                seconds = latency,
                collect_seconds = (started - batch.first_received).as_secs_f64(),
                transform_seconds = (transformed - started).as_secs_f64(),
                postgres_seconds = (in_postgres - transformed).as_secs_f64(),
                kafka_seconds = (in_kafka - in_postgres).as_secs_f64(),
                guest = %transformer.identity().version,
                "batch committed"
            );
        }
        Ok(())
    }
}

async fn connect_pg(connect: &PgConnect) -> anyhow::Result<Client> {
    let client = connect().await?;
    postgres::prepare_session(&client).await?;
    Ok(client)
}

/// Collects up to `batch_max_events` records, waiting at most `batch_linger` after the first.
/// `None` when shutdown was requested.
///
/// Consumer errors are logged and consumption goes on (librdkafka reconnects by itself, e.g. while
/// a broker restarts), except fatal ones, which end the pipeline: the consumer will never deliver
/// again. One is a static member fenced by its own earlier session after that session timed out
/// during a Kafka outage longer than `session.timeout.ms` (librdkafka issue #3437). Nothing of the
/// batch being collected was written yet, so the restarted service consumes it again from the
/// committed offsets.
async fn next_batch(
    consumer: &StreamConsumer,
    settings: &Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Batch>> {
    let mut batch = Batch {
        events: Vec::new(),
        positions: Vec::new(),
        first_received: Instant::now(),
    };
    let mut deadline = None;
    while batch.events.len() < settings.batch_max_events {
        let received = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(None),
            _ = sleep_until(deadline) => break,
            received = consumer.recv() => received,
        };
        match received {
            Ok(message) => {
                if deadline.is_none() {
                    batch.first_received = Instant::now();
                    deadline = Some(tokio::time::Instant::now() + settings.batch_linger);
                }
                batch.events.push(InputEvent {
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().unwrap_or_default().to_vec(),
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
    }
    Ok(Some(batch))
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
