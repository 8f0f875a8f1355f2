//! The deliver stage on a thread of its own, so that a batch's Kafka transaction overlaps the
//! next batch's decide and store stages: on two cores, PostgreSQL and the host's own work for
//! batch N+1 run while the broker takes batch N.
//!
//! One delivery at a time, in batch order: the pipeline hands the courier batch N+1 only once it
//! knows how batch N ended. Whatever needs batch N's Kafka commit settled first waits for it: a
//! batch holding records carried from N (their parts' progress is read from the group's committed
//! offsets), and a revocation (see [`super::rebalance`]).

use std::sync::Arc;
use std::time::Instant;

use rdkafka::consumer::Consumer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::GroupConsumer;
use super::outbox::Outbox;
use super::retry::Retry;
use crate::sinks::SinkError;
use crate::sinks::kafka::KafkaSink;

/// How a delivery ended.
#[derive(Debug)]
pub enum Delivered {
    Committed,
    /// Shutdown came first.
    Interrupted,
    /// Kafka refuses a message of the decision at this index for good.
    Refused {
        decision: usize,
        reason: String,
    },
}

/// A finished delivery, with the sink to hand back to the [`Courier`].
pub struct Done {
    /// Taken back by [`Courier::received`].
    sink: Option<KafkaSink>,
    pub outbox: Outbox,
    pub result: anyhow::Result<Delivered>,
    pub started: Instant,
    pub ended: Instant,
}

/// A delivery under way; a future of its [`Done`].
pub type InFlight = JoinHandle<Done>;

pub struct Courier {
    /// With the courier between deliveries, with the delivery while one is under way.
    sink: Option<KafkaSink>,
    consumer: Arc<GroupConsumer>,
    retry: Retry,
}

impl Courier {
    pub fn new(sink: KafkaSink, consumer: Arc<GroupConsumer>, retry: Retry) -> Self {
        Self {
            sink: Some(sink),
            consumer,
            retry,
        }
    }

    /// Starts delivering `outbox`: one Kafka transaction, retried until it commits, Kafka refuses
    /// a message for good, or `shutdown`.
    pub fn send(
        &mut self,
        outbox: Outbox,
        span: tracing::Span,
        shutdown: &CancellationToken,
    ) -> InFlight {
        let mut sink = self
            .sink
            .take()
            .expect("a delivery is sent only once the previous one is done");
        let retry = self.retry.clone();
        let shutdown = shutdown.clone();
        let runtime = tokio::runtime::Handle::current();
        let gate = Gate::enter(self.consumer.clone());
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let started = Instant::now();
            let result = deliver(&mut sink, &outbox, &retry, &runtime, &shutdown);
            drop(gate);
            Done {
                sink: Some(sink),
                outbox,
                result,
                started,
                ended: Instant::now(),
            }
        })
    }

    /// Takes the sink back from a delivery that ended.
    pub fn received(
        &mut self,
        joined: Result<Done, tokio::task::JoinError>,
    ) -> anyhow::Result<Done> {
        let mut done =
            joined.map_err(|e| anyhow::anyhow!("the deliver stage's thread failed: {e}"))?;
        self.sink = done.sink.take();
        Ok(done)
    }
}

/// Marks a delivery under way for the consumer's rebalance callback, until dropped (also when
/// the delivery panics).
struct Gate(Arc<GroupConsumer>);

impl Gate {
    fn enter(consumer: Arc<GroupConsumer>) -> Self {
        consumer.context().delivery.enter();
        Self(consumer)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.0.context().delivery.leave();
    }
}

fn deliver(
    sink: &mut KafkaSink,
    outbox: &Outbox,
    retry: &Retry,
    runtime: &tokio::runtime::Handle,
    shutdown: &CancellationToken,
) -> anyhow::Result<Delivered> {
    let decisions = outbox.decisions();
    let mut backoff = retry.backoff();
    loop {
        match sink.write(&decisions, &outbox.commits, &outbox.group) {
            Ok(()) => {
                crate::crash_point!("after-kafka-commit");
                return Ok(Delivered::Committed);
            }
            Err(SinkError::Undeliverable { decision, reason }) => {
                return Ok(Delivered::Refused { decision, reason });
            }
            // A fatal producer (fenced: another instance took over the transactional id, or the
            // coordinator aborted a transaction that outlived `transaction.timeout.ms`) or a lost
            // group membership is not recovered here but ends the service, for its supervisor to
            // restart it: the new producer's `init_transactions` settles the old transaction, the
            // restarted consumer reads from the committed offsets, and every decision stored
            // meanwhile is recalled and sent as stored (see `service::run`). Broker restarts and
            // outages do not come here: timeouts and abortable errors are retried, resuming the
            // pending commit or abort (see `KafkaSink::write`).
            Err(error) => {
                if !runtime.block_on(retry.after("kafka", &error, &mut backoff, shutdown))? {
                    return Ok(Delivered::Interrupted);
                }
            }
        }
    }
}
