//! The Kafka sink: output messages, dead letters and the consumed offsets in one transaction, so
//! that `read_committed` consumers see a batch's outputs exactly when its input is committed.
//!
//! librdkafka's transactional calls block, so they run under `block_in_place`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use super::SinkError;
use crate::guest::GuestIdentity;
use crate::plan::{Commit, Decision};

pub use crate::records::headers;

/// How long the sink sleeps when no delivery report is waiting to be served. Not a `poll` with a
/// timeout: the rdkafka crate's `poll` runs to its deadline and, below a millisecond left, polls
/// without blocking, so a short `poll` in a loop spins a core, starving the broker it waits for
/// on a small machine (the flush timeouts of issue 11).
const DELIVERY_WAIT_STEP: Duration = Duration::from_millis(1);

pub struct Topics {
    pub input: String,
    pub output: String,
    pub dead_letter: String,
}

pub struct KafkaSink {
    /// Polled by the sink itself, without a polling thread: delivery reports are served while a
    /// write waits for its batch's acknowledgements (see [`KafkaSink::await_deliveries`]), and
    /// whatever came between batches (errors, logs) at the start of the next write.
    producer: BaseProducer<DeliveryWatch>,
    /// What the producer was created from, to create it afresh (see [`KafkaSink::renew`]).
    config: ClientConfig,
    topics: Topics,
    timeout: Duration,
    /// The producer's `message.max.bytes`: a dead letter whose value would exceed it is sent
    /// without the value (see [`headers::VALUE_OMITTED`]).
    max_message_bytes: usize,
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

/// A transactional producer from `config`, with its transactions initialised (which fences any
/// earlier producer of the same id and settles what it left open).
fn start_producer(
    config: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> Result<BaseProducer<DeliveryWatch>, SinkError> {
    let producer: BaseProducer<DeliveryWatch> = config
        .create_with_context(DeliveryWatch::default())
        .map_err(|e| fatal("creating the producer", e))?;
    // A broker of the cluster up first: `init_transactions` looks for the transaction
    // coordinator at once, and finding no broker up it tries again only after librdkafka's fixed
    // 500 ms (`rd_kafka_txn_coord_query`). The first metadata answer replaces the bootstrap
    // connection with the brokers it names, which connect anew (TLS, SASL); the second read is
    // answered once one of them is up. Without it, 5 of 8 starts on the local stack paid the
    // 500 ms; with it, none did. The output topic's metadata is needed anyway.
    for _ in 0..2 {
        producer
            .client()
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| classify("reading the output topic's metadata", e))?;
    }
    producer
        .init_transactions(timeout)
        .map_err(|e| classify("initialising transactions", e))?;
    Ok(producer)
}

impl KafkaSink {
    /// Creates the transactional producer and fences any previous one with the same id.
    pub fn new(
        mut config: ClientConfig,
        transactional_id: &str,
        topics: Topics,
        timeout: Duration,
        max_message_bytes: usize,
    ) -> Result<Self, SinkError> {
        for (name, value) in crate::config::PRODUCER_DEFAULTS {
            if config.get(name).is_none() {
                config.set(*name, *value);
            }
        }
        config
            .set("transactional.id", transactional_id)
            .set("enable.idempotence", "true");
        let producer =
            tokio::task::block_in_place(|| start_producer(&config, &topics.output, timeout))?;
        Ok(Self {
            producer,
            config,
            topics,
            timeout,
            max_message_bytes,
            pending: Pending::Nothing,
        })
    }

    /// Sends what `decisions` hold (messages and dead letters, each with the headers of the guest
    /// that decided it) and commits `commits` for the consumer group, atomically. After a
    /// retryable error the caller repeats the call with the same
    /// arguments (the pipeline retries a batch until it is written): the repeat first finishes
    /// what the failed call left pending (see `Pending`), resuming a commit whose outcome is not
    /// known instead of sending the batch again, and aborting a failed transaction before the
    /// batch goes into a new one.
    pub fn write(
        &mut self,
        decisions: &[Decision<'_>],
        commits: &BTreeMap<i32, Commit>,
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
            self.producer.context().take_refused();
            if let Err(error) = self.send_all(decisions, commits, group) {
                // Now rather than at the next call, so that a retry starts from a clean producer
                // (if the abort cannot finish yet, the next call resumes it), and so that nothing
                // of a batch this host must give up lingers until the transaction times out.
                let _ = self.abort();
                return Err(error);
            }
            let delivered = self.await_deliveries();
            if let Some((decision, reason)) = self.producer.context().take_refused() {
                let _ = self.abort();
                self.renew()?;
                return Err(SinkError::Undeliverable { decision, reason });
            }
            delivered?;
            crate::crash_point!("before-kafka-commit");
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
                    self.serve_delivery_reports();
                }
                Err(error) => {
                    return Err(SinkError::Retryable(format!(
                        "waiting for the broker to acknowledge the batch: {error}"
                    )));
                }
            }
        }
    }

    /// Replaces the producer with a new one of the same transactional id, which fences the old
    /// and starts a new epoch. Needed after the broker refused a message for good: the refused
    /// message leaves a gap in the partition's idempotence sequence, and with compressed batches
    /// the old producer's next transaction then waited for acknowledgements that never came,
    /// until its timeout, twice (a 60 s stall in `tests/delivery.rs`).
    fn renew(&mut self) -> Result<(), SinkError> {
        self.producer = start_producer(&self.config, &self.topics.output, self.timeout)?;
        self.pending = Pending::Nothing;
        Ok(())
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
            // Aborted first, so that nothing of the batch lingers until the transaction times out.
            Err(error) if group_lost(&error) => {
                self.pending = Pending::Abort;
                let _ = self.abort();
                Err(classify(what, error))
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
        decisions: &[Decision<'_>],
        commits: &BTreeMap<i32, Commit>,
        group: &ConsumerGroupMetadata,
    ) -> Result<(), SinkError> {
        let mut guest_headers = GuestHeaders::default();
        // Where a framed value is rendered: librdkafka copies the payload when it is enqueued.
        let mut scratch = String::new();
        for (index, decision) in decisions.iter().enumerate() {
            // Dead letters carry them too: a guest's rejections (or a regressed guest's, after
            // its rollback) can be found and replayed by version.
            let headers = guest_headers.for_guest(decision.guest);
            for message in &decision.messages {
                let record = BaseRecord::with_opaque_to(&self.topics.output, index)
                    .key(message.key)
                    .payload(message.value_in(&mut scratch))
                    .headers(headers.clone());
                self.enqueue(record)?;
            }
            if let Some(reason) = &decision.dead_letter {
                self.enqueue_dead_letter(index, decision, reason, headers.clone())?;
            }
        }
        let offsets = offsets_list(&self.topics.input, commits)?;
        self.producer
            .send_offsets_to_transaction(&offsets, group, self.timeout)
            .map_err(|e| classify("committing offsets in the transaction", e))
    }

    /// The input record, unchanged, with its reason and source. A value that would not fit in a
    /// message is left out (the record stays in the input topic, named by the headers).
    fn enqueue_dead_letter(
        &self,
        index: usize,
        decision: &Decision<'_>,
        reason: &str,
        guest_headers: OwnedHeaders,
    ) -> Result<(), SinkError> {
        let input = decision.input;
        let partition = decision.source.partition.to_string();
        let offset = decision.source.offset.to_string();
        let mut headers = guest_headers
            .insert(Header {
                key: headers::REASON,
                value: Some(reason.as_bytes()),
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
        let header_bytes: usize = headers
            .iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum();
        let key_bytes = input.key.as_ref().map_or(0, Vec::len);
        let omitted = key_bytes + input.value.len() + header_bytes + 64 > self.max_message_bytes;
        let omitted_note = format!(
            "the value ({} bytes) does not fit in a message (message.max.bytes {}): read it from \
             the source topic at the partition and offset named here",
            input.value.len(),
            self.max_message_bytes
        );
        if omitted {
            headers = headers.insert(Header {
                key: headers::VALUE_OMITTED,
                value: Some(omitted_note.as_bytes()),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(&self.topics.dead_letter, index).headers(headers);
        if !omitted {
            record = record.payload(&input.value);
        }
        if let Some(key) = &input.key {
            record = record.key(key);
        }
        self.enqueue(record)
    }

    /// Serves the delivery reports that have arrived, or, when none has, sleeps a moment for the
    /// broker to send some.
    fn serve_delivery_reports(&self) {
        let before = self.producer.in_flight_count();
        loop {
            let outstanding = self.producer.in_flight_count();
            self.producer.poll(Duration::ZERO);
            if self.producer.in_flight_count() == outstanding {
                break;
            }
        }
        if self.producer.in_flight_count() == before {
            std::thread::sleep(DELIVERY_WAIT_STEP);
        }
    }

    /// Enqueues a record, waiting for room when librdkafka's queue is full.
    fn enqueue<K, P>(&self, mut record: BaseRecord<'_, K, P, usize>) -> Result<(), SinkError>
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
                    self.serve_delivery_reports();
                }
                Err((error, _)) => return Err(classify("sending a message", error)),
            }
        }
    }
}

/// The producer's context: remembers, of the messages of a batch that Kafka refused for good, the
/// largest, by the index of its decision in the batch (each record's opaque). The broker refuses
/// a whole record batch at once, so messages that only shared a batch with the culprit are
/// refused too; the largest is the likeliest culprit, and the others are sent again.
#[derive(Default)]
struct DeliveryWatch {
    refused: std::sync::Mutex<Option<Refusal>>,
}

struct Refusal {
    decision: usize,
    bytes: usize,
    reason: String,
}

impl DeliveryWatch {
    fn take_refused(&self) -> Option<(usize, String)> {
        let refused = self.refused.lock().expect("delivery watch lock").take();
        refused.map(|refusal| (refusal.decision, refusal.reason))
    }
}

impl ClientContext for DeliveryWatch {}

impl ProducerContext for DeliveryWatch {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, decision: usize) {
        let Err((KafkaError::MessageProduction(code), message)) = result else {
            return;
        };
        if !refused_for_good(*code) {
            return;
        }
        let bytes = message.key().map_or(0, <[u8]>::len) + message.payload().map_or(0, <[u8]>::len);
        let mut refused = self.refused.lock().expect("delivery watch lock");
        if refused.as_ref().is_none_or(|known| known.bytes < bytes) {
            *refused = Some(Refusal {
                decision,
                bytes,
                reason: format!("{code} ({bytes} bytes of key and value)"),
            });
        }
    }
}

/// Produce errors that come from the message itself and come again on every retry.
fn refused_for_good(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::MessageBatchTooLarge
    )
}

fn offsets_list(
    topic: &str,
    commits: &BTreeMap<i32, Commit>,
) -> Result<TopicPartitionList, SinkError> {
    let mut list = TopicPartitionList::new();
    for (&partition, commit) in commits {
        list.add_partition_offset(topic, partition, Offset::Offset(commit.offset))
            .map_err(|e| fatal("building the offset list", e))?;
        list.find_partition(topic, partition)
            .expect("added above")
            .set_metadata(commit.metadata());
    }
    Ok(list)
}

/// The commits that a list of committed offsets read from the group coordinator holds, for the
/// partitions that have one.
pub fn commits_of(committed: &TopicPartitionList) -> BTreeMap<i32, Commit> {
    committed
        .elements()
        .iter()
        .filter_map(|element| match element.offset() {
            Offset::Offset(offset) => Some((
                element.partition(),
                Commit::from_committed(offset, element.metadata()),
            )),
            _ => None,
        })
        .collect()
}

fn fatal(what: &str, error: KafkaError) -> SinkError {
    SinkError::Fatal(format!("{what}: {error}"))
}

/// Fatal transactional errors (e.g. a fenced producer) and a lost group membership end the
/// service; everything else, including errors that require an abort, is retried.
fn classify(what: &str, error: KafkaError) -> SinkError {
    if group_lost(&error) {
        return SinkError::Fatal(format!(
            "{what}: {error}: the consumer group has moved on without this host (its \
             partitions may be another host's now), so it must not commit; a restart rejoins"
        ));
    }
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

/// The broker refused the batch's offsets because this member's generation is over: retrying
/// with the same group metadata can never succeed.
fn group_lost(error: &KafkaError) -> bool {
    let code = match error {
        KafkaError::Transaction(rd) => rd.code(),
        other => match other.rdkafka_error_code() {
            Some(code) => code,
            None => return false,
        },
    };
    matches!(
        code,
        RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::UnknownMemberId
            | RDKafkaErrorCode::FencedInstanceId
    )
}

/// The guest headers of the batch's messages, built once per guest.
#[derive(Default)]
struct GuestHeaders {
    current: Option<(String, OwnedHeaders)>,
}

impl GuestHeaders {
    fn for_guest(&mut self, guest: &GuestIdentity) -> &OwnedHeaders {
        let stale = self
            .current
            .as_ref()
            .is_none_or(|(sha256, _)| *sha256 != guest.sha256);
        if stale {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: headers::GUEST_VERSION,
                    value: Some(guest.version.as_bytes()),
                })
                .insert(Header {
                    key: headers::GUEST_SHA256,
                    value: Some(guest.sha256.as_bytes()),
                });
            self.current = Some((guest.sha256.clone(), headers));
        }
        &self.current.as_ref().expect("set above").1
    }
}
