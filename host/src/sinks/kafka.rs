//! The Kafka sink: output messages, dead letters and the consumed offsets in one transaction, so
//! that `read_committed` consumers see a batch's outputs exactly when its input is committed.
//!
//! librdkafka's transactional calls block, so they run under `block_in_place`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::SinkError;
use crate::guest::GuestIdentity;
use crate::pipeline::plan::Plan;

/// Header names on output and dead-letter messages.
pub mod headers {
    pub const GUEST_VERSION: &str = "campaign-push-guest-version";
    pub const GUEST_SHA256: &str = "campaign-push-guest-sha256";
    pub const REASON: &str = "campaign-push-dead-letter-reason";
    pub const SOURCE_TOPIC: &str = "campaign-push-source-topic";
    pub const SOURCE_PARTITION: &str = "campaign-push-source-partition";
    pub const SOURCE_OFFSET: &str = "campaign-push-source-offset";
}

/// How long one `poll` serves delivery reports while the sink waits for them (the rdkafka crate's
/// `poll` always runs to its deadline, so this is also the granularity of the wait).
const DELIVERY_POLL_STEP: Duration = Duration::from_millis(1);

pub struct Topics {
    pub input: String,
    pub output: String,
    pub dead_letter: String,
}

pub struct KafkaSink {
    /// Polled by the sink itself, without a polling thread: delivery reports are served while a
    /// write waits for its batch's acknowledgements (see [`KafkaSink::await_deliveries`]), and
    /// whatever came between batches (errors, logs) at the start of the next write.
    producer: BaseProducer,
    topics: Topics,
    timeout: Duration,
    pending: Pending,
}

/// What a failed [`KafkaSink::write`] left unfinished in the producer, for the next call to finish
/// first.
///
/// librdkafka's transactional calls are resumable: one that times out (the broker is away, say
/// restarting) goes on in the background, and until the *same* function is called again and
/// returns, every other transactional call fails with "Conflicting … API call is already in
/// progress". So a write never starts a new transaction over an unfinished one: it resumes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// No transaction is open.
    Nothing,
    /// The transaction holds the whole batch and `commit_transaction` was called, with an outcome
    /// not known yet: the commit may well happen. Only calling it again is safe; a new
    /// transaction with the same batch could publish it twice.
    Commit,
    /// The transaction failed before it could commit and must be aborted. Nothing of it becomes
    /// visible to `read_committed` consumers, so the batch is then sent again in a new one.
    Abort,
}

impl KafkaSink {
    /// Creates the transactional producer and fences any previous one with the same id.
    pub fn new(
        mut config: ClientConfig,
        transactional_id: &str,
        topics: Topics,
        timeout: Duration,
    ) -> Result<Self, SinkError> {
        config
            .set("transactional.id", transactional_id)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5");
        let producer: BaseProducer = config
            .create()
            .map_err(|e| fatal("creating the producer", e))?;
        tokio::task::block_in_place(|| producer.init_transactions(timeout))
            .map_err(|e| classify("initialising transactions", e))?;
        Ok(Self {
            producer,
            topics,
            timeout,
            pending: Pending::Nothing,
        })
    }

    /// Sends `to_send` deliveries of `plan` and all its dead letters, and commits the consumed
    /// offsets, atomically. After a retryable error the caller repeats the call with the same
    /// arguments (the pipeline retries a batch until it is written): the repeat first finishes
    /// what the failed call left pending (see [`Pending`]), resuming a commit whose outcome is not
    /// known instead of sending the batch again, and aborting a failed transaction before the
    /// batch goes into a new one.
    pub fn write(
        &mut self,
        plan: &Plan<'_>,
        to_send: &[usize],
        guest: &GuestIdentity,
        group: &ConsumerGroupMetadata,
    ) -> Result<(), SinkError> {
        tokio::task::block_in_place(|| {
            self.producer.poll(Duration::ZERO);
            match self.pending {
                Pending::Commit => return self.commit(),
                Pending::Abort => self.abort()?,
                Pending::Nothing => {}
            }
            self.producer
                .begin_transaction()
                .map_err(|e| classify("beginning a transaction", e))?;
            self.pending = Pending::Abort;
            if let Err(error) = self.send_all(plan, to_send, guest, group) {
                if let SinkError::Retryable(_) = error {
                    // Now rather than at the next call, so that the retry starts from a clean
                    // producer; if the abort cannot finish yet, the next call resumes it.
                    let _ = self.abort();
                }
                return Err(error);
            }
            self.await_deliveries()?;
            self.pending = Pending::Commit;
            self.commit()
        })
    }

    /// Waits until the broker has acknowledged every message sent, serving their delivery reports
    /// in short steps. `commit_transaction` would wait as well, but through the rdkafka crate's
    /// `flush`, whose `poll` returns only at its 100 ms deadline: that added 100 ms to every
    /// batch. After this, its flush finds nothing outstanding and returns at once.
    fn await_deliveries(&self) -> Result<(), SinkError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.producer.flush(Duration::ZERO) {
                Ok(()) => return Ok(()),
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                    if Instant::now() < deadline =>
                {
                    self.producer.poll(DELIVERY_POLL_STEP);
                }
                Err(error) => {
                    return Err(SinkError::Retryable(format!(
                        "waiting for the broker to acknowledge the batch: {error}"
                    )));
                }
            }
        }
    }

    /// Commits the open transaction, or resumes a commit that did not finish.
    fn commit(&mut self) -> Result<(), SinkError> {
        let what = "committing the transaction";
        match self.producer.commit_transaction(self.timeout) {
            Ok(()) => {
                self.pending = Pending::Nothing;
                Ok(())
            }
            // The rdkafka crate flushes the queued messages before it asks for the commit; when
            // that times out, the commit was not requested yet and the transaction stays open:
            // the next call flushes again and commits.
            Err(error @ KafkaError::Flush(_)) => {
                Err(SinkError::Retryable(format!("{what}: {error}")))
            }
            Err(KafkaError::Transaction(error)) if error.is_fatal() => {
                Err(SinkError::Fatal(format!("{what}: {error}")))
            }
            Err(KafkaError::Transaction(error)) if error.txn_requires_abort() => {
                self.pending = Pending::Abort;
                let _ = self.abort();
                Err(SinkError::Retryable(format!("{what}: {error}")))
            }
            // E.g. timed out: the commit goes on in the background; calling again resumes it.
            Err(KafkaError::Transaction(error)) if error.is_retriable() => {
                Err(SinkError::Retryable(format!("{what}: {error}")))
            }
            // Neither retriable nor abortable nor fatal: a state this sink does not know how to
            // leave. Stopping is safe: the next start's `init_transactions` settles the
            // transaction, and the batch is replayed from the committed offsets.
            Err(error) => Err(SinkError::Fatal(format!("{what}: {error}"))),
        }
    }

    /// Aborts the open transaction, or resumes an abort that did not finish.
    fn abort(&mut self) -> Result<(), SinkError> {
        let what = "aborting the transaction";
        match self.producer.abort_transaction(self.timeout) {
            Ok(()) => {
                self.pending = Pending::Nothing;
                Ok(())
            }
            Err(KafkaError::Transaction(error)) if error.is_retriable() && !error.is_fatal() => {
                Err(SinkError::Retryable(format!("{what}: {error}")))
            }
            Err(error) => Err(SinkError::Fatal(format!("{what}: {error}"))),
        }
    }

    /// Everything of the batch into the open transaction, but not the commit.
    fn send_all(
        &self,
        plan: &Plan<'_>,
        to_send: &[usize],
        guest: &GuestIdentity,
        group: &ConsumerGroupMetadata,
    ) -> Result<(), SinkError> {
        // Dead letters carry them too: a guest's rejections (or a regressed guest's, after its
        // rollback) can be found and replayed by version.
        let guest_headers = OwnedHeaders::new()
            .insert(Header {
                key: headers::GUEST_VERSION,
                value: Some(guest.version.as_bytes()),
            })
            .insert(Header {
                key: headers::GUEST_SHA256,
                value: Some(guest.sha256.as_bytes()),
            });
        for &index in to_send {
            let message = plan.deliveries[index].message;
            let record = BaseRecord::to(&self.topics.output)
                .key(message.key)
                .payload(message.value)
                .headers(guest_headers.clone());
            self.enqueue(record)?;
        }
        for dead in &plan.dead_letters {
            let partition = dead.source.partition.to_string();
            let offset = dead.source.offset.to_string();
            let headers = guest_headers
                .clone()
                .insert(Header {
                    key: headers::REASON,
                    value: Some(dead.reason.as_bytes()),
                })
                .insert(Header {
                    key: headers::SOURCE_TOPIC,
                    value: Some(self.topics.input.as_bytes()),
                })
                .insert(Header {
                    key: headers::SOURCE_PARTITION,
                    value: Some(partition.as_bytes()),
                })
                .insert(Header {
                    key: headers::SOURCE_OFFSET,
                    value: Some(offset.as_bytes()),
                });
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topics.dead_letter)
                .payload(dead.value)
                .headers(headers);
            if let Some(key) = dead.key {
                record = record.key(key);
            }
            self.enqueue(record)?;
        }
        let offsets = offsets_list(&self.topics.input, &plan.next_offsets)?;
        self.producer
            .send_offsets_to_transaction(&offsets, group, self.timeout)
            .map_err(|e| classify("committing offsets in the transaction", e))
    }

    /// Enqueues a record, waiting for room when librdkafka's queue is full.
    fn enqueue<K, P>(&self, mut record: BaseRecord<'_, K, P>) -> Result<(), SinkError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    // Serving delivery reports is what frees room in the queue.
                    self.producer.poll(DELIVERY_POLL_STEP);
                }
                Err((error, _)) => return Err(classify("sending a message", error)),
            }
        }
    }
}

fn offsets_list(
    topic: &str,
    next_offsets: &BTreeMap<i32, i64>,
) -> Result<TopicPartitionList, SinkError> {
    let mut list = TopicPartitionList::new();
    for (&partition, &next) in next_offsets {
        list.add_partition_offset(topic, partition, Offset::Offset(next))
            .map_err(|e| fatal("building the offset list", e))?;
    }
    Ok(list)
}

fn fatal(what: &str, error: KafkaError) -> SinkError {
    SinkError::Fatal(format!("{what}: {error}"))
}

/// Fatal transactional errors (e.g. a fenced producer) end the service; everything else, including
/// errors that require an abort, is retried.
fn classify(what: &str, error: KafkaError) -> SinkError {
    let is_fatal = match &error {
        KafkaError::Transaction(rd) => rd.is_fatal(),
        _ => false,
    };
    if is_fatal {
        fatal(what, error)
    } else {
        SinkError::Retryable(format!("{what}: {error}"))
    }
}
