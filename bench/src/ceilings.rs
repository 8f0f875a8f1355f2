//! The machine's limits for this workload, measured in the same run as the service: each sink
//! alone, written the cheapest way that still does what the service must do.
//!
//! - PostgreSQL: binary `COPY` of output-shaped rows into a table shaped like
//!   `subscribers_feedback` (same columns, types, serial id and primary key), one transaction per
//!   batch, over TLS as the service connects. No ledger, no de-duplication: the floor of what
//!   storing the rows can cost.
//! - Kafka: output-shaped messages (key `client_id`, the JSON value, the two guest headers the
//!   service adds) to a fresh topic with the service's producer settings (SASL_SSL login,
//!   transactional, idempotent, `linger.ms` 0, `retry.backoff.ms` 1, `compression.type` lz4, as
//!   the host's `PRODUCER_DEFAULTS` and `host/src/sinks/kafka.rs` set them), one
//!   transaction per batch, each waited for as the service waits (delivery reports served in 1 ms
//!   steps, then `commit_transaction`). No consumer offsets are sent with the transaction (there
//!   is no consumer), which the service does: one more round trip per batch.
//! - Kafka's floor for one batch: small transactions back to back, each as the service's (the
//!   messages, then the consumer offsets, then the commit), timed one by one. No batch of the
//!   service can be visible sooner than its transaction takes.
//! - What each sink alone costs the machine: the CPU seconds of the server (PostgreSQL with its
//!   backends, or the broker) and of the bench's client (COPY encoding, or the producer's
//!   threads) per million rows, over the same window as the rate, to set beside what the service
//!   costs them per output. (Their sum is no floor for the service's cost: in quick benches on
//!   2026-11-29 the service spent less CPU per output in all than the two alone did.)
//! - The machine's memory: the latency of a random read in a working set the size of a busy
//!   broker's or database's, which on a shared virtual machine can vary several-fold from one
//!   day to the next and moves the other figures with it (see [`memory_latency`]).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::pin_mut;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio_postgres::binary_copy::BinaryCopyInWriter;

use crate::cpu::own_cpu;
use crate::stack::Stack;
use crate::workload::{FEEDBACK_COLUMNS, Output};

/// The table the PostgreSQL ceiling writes: `subscribers_feedback`'s definition (the contract's
/// `schema.sql`) under another name, so the service's own table is untouched.
const TABLE: &str = "bench_feedback_ceiling";

/// The guest headers of every output (`host/src/records.rs`): a version and a SHA-256 in hex.
const GUEST_VERSION: (&str, &str) = ("campaign-push-guest-version", "guest-transform 0.2.0");
const GUEST_SHA256: (&str, &str) = (
    "campaign-push-guest-sha256",
    "5f0c4e1a6b9d2c3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e",
);

/// What one sink alone did: its rate, and the CPU the machine spent on it.
#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    pub per_second: f64,
    /// CPU seconds per million rows or messages of the server (PostgreSQL with its backends, or
    /// the broker) and of the bench's client; NaN where a server's could not be read.
    pub server_cpu_per_million: f64,
    pub client_cpu_per_million: f64,
}

/// The CPU seconds of a sink's server so far.
pub type CpuReader<'a> = &'a dyn Fn() -> f64;

/// Clock and CPU over the measured part of a ceiling (after its warm-up).
struct Window<'a> {
    server_cpu: CpuReader<'a>,
    started: Instant,
    server_at_start: f64,
    client_at_start: f64,
}

impl<'a> Window<'a> {
    fn open(server_cpu: CpuReader<'a>) -> Self {
        Self {
            server_cpu,
            started: Instant::now(),
            server_at_start: server_cpu(),
            client_at_start: own_cpu(),
        }
    }

    fn close(self, count: u64) -> Ceiling {
        let per_million = |cpu: f64| cpu / count as f64 * 1e6;
        Ceiling {
            per_second: count as f64 / self.started.elapsed().as_secs_f64(),
            server_cpu_per_million: per_million((self.server_cpu)() - self.server_at_start),
            client_cpu_per_million: per_million(own_cpu() - self.client_at_start),
        }
    }
}

/// Binary COPY into a `subscribers_feedback`-shaped table, in transactions of `batch` rows; the
/// table is emptied first, so every run starts alike. `server_cpu` reads PostgreSQL's CPU seconds.
pub async fn postgres(
    client: &tokio_postgres::Client,
    server_cpu: CpuReader<'_>,
    tag: &str,
    rows: u64,
    batch: u64,
    fan_out: u64,
) -> Result<Ceiling> {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (
                id serial4 NOT NULL PRIMARY KEY,
                restaurant_id text NOT NULL, adv_campaign_id text NOT NULL,
                adv_campaign_content text NOT NULL, adv_campaign_owner text NOT NULL,
                adv_campaign_owner_contact text NOT NULL,
                adv_campaign_datetime_start int8 NOT NULL, adv_campaign_datetime_end int8 NOT NULL,
                datetime_created int8 NOT NULL, client_id text NOT NULL,
                trigger_datetime_created int4 NOT NULL, feedback varchar NULL)"
        ))
        .await
        .context("creating the ceiling's table")?;
    // Rendered before the clock starts: the ceiling is the database's, not the bench's. The
    // first batch is a warm-up (connection, the table's first pages), left out of the rate.
    let outputs: Vec<Output> = (0..rows + batch)
        .map(|n| Output::nth(tag, n, fan_out))
        .collect();
    let copy = format!("COPY {TABLE} ({FEEDBACK_COLUMNS}) FROM STDIN BINARY");
    let mut window = Window::open(server_cpu);
    for (i, chunk) in outputs.chunks(batch as usize).enumerate() {
        if i == 1 {
            window = Window::open(server_cpu);
        }
        client.batch_execute("BEGIN").await?;
        let sink = client.copy_in(&copy).await?;
        let writer = BinaryCopyInWriter::new(sink, &Output::ROW_TYPES);
        pin_mut!(writer);
        for output in chunk {
            writer.as_mut().write(&output.row()).await?;
        }
        writer.finish().await?;
        client.batch_execute("COMMIT").await?;
    }
    let ceiling = window.close(rows);
    client.batch_execute(&format!("DROP TABLE {TABLE}")).await?;
    Ok(ceiling)
}

/// Messages produced to `topic` with the service's producer settings, in transactions of
/// `batch` messages. `server_cpu` reads the broker's CPU seconds.
pub fn kafka(
    stack: &Stack,
    server_cpu: CpuReader<'_>,
    topic: &str,
    tag: &str,
    messages: u64,
    batch: u64,
    fan_out: u64,
) -> Result<Ceiling> {
    let producer = transactional_producer(stack, &format!("{tag}-ceiling"))?;
    let headers = guest_headers();
    // The first transaction is a warm-up (metadata, connections to the partition leaders, the
    // partitions' first AddPartitionsToTxn), left out of the rate.
    let outputs: Vec<Output> = (0..messages + batch)
        .map(|n| Output::nth(tag, n, fan_out))
        .collect();
    let mut window = Window::open(server_cpu);
    for (i, chunk) in outputs.chunks(batch as usize).enumerate() {
        if i == 1 {
            window = Window::open(server_cpu);
        }
        producer.begin_transaction()?;
        send(&producer, topic, chunk, &headers)?;
        await_deliveries(&producer, TIMEOUT)?;
        producer.commit_transaction(TIMEOUT)?;
    }
    Ok(window.close(messages))
}

/// The milliseconds each of `transactions` transactions of `size` messages took, sent back to
/// back to `topic` as the service's deliver stage sends a batch: the messages, the consumer
/// offsets of a group `tag`, then the commit. The first is a warm-up, left out.
pub fn kafka_transactions(
    stack: &Stack,
    topic: &str,
    tag: &str,
    transactions: usize,
    size: u64,
    fan_out: u64,
) -> Result<Vec<f64>> {
    let producer = transactional_producer(stack, &format!("{tag}-floor"))?;
    let consumer: BaseConsumer = stack
        .service_login()?
        .set("group.id", format!("{tag}-floor"))
        .create()
        .context("creating the floor's consumer")?;
    let group = consumer
        .group_metadata()
        .context("the floor's consumer has no group metadata")?;
    let headers = guest_headers();
    let outputs: Vec<Output> = (0..size).map(|n| Output::nth(tag, n, fan_out)).collect();
    let mut took = Vec::with_capacity(transactions);
    for i in 0..=transactions {
        let started = Instant::now();
        producer.begin_transaction()?;
        send(&producer, topic, &outputs, &headers)?;
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset(topic, 0, Offset::Offset(i as i64))?;
        producer.send_offsets_to_transaction(&offsets, &group, TIMEOUT)?;
        await_deliveries(&producer, TIMEOUT)?;
        producer.commit_transaction(TIMEOUT)?;
        if i > 0 {
            took.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(took)
}

/// Nanoseconds per dependent random read in a working set of `mib` MiB: a pointer chase
/// through one random cycle over the whole set, so that neither the caches nor the prefetcher
/// can help. DRAM itself answers in about 0.1 µs; on 2026-11-29 this machine took 0.4–0.9 µs at
/// 64 MiB (2.6 µs at 256 MiB), while the ceilings ran at half their speed of that morning and
/// a CPU-bound loop (`make bench-guest`) at 85–94 % of it: the Java broker and PostgreSQL's buffer
/// pool live in memory, the guest's loop in the caches.
pub fn memory_latency(mib: usize) -> f64 {
    let len = mib * (1 << 20) / std::mem::size_of::<usize>();
    // Sattolo's shuffle of the identity: a single cycle through every slot.
    let mut next: Vec<usize> = (0..len).collect();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..len).rev() {
        // xorshift64*: enough randomness to defeat the prefetcher, no dependency.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let j = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) % i as u64) as usize;
        next.swap(i, j);
    }
    let reads = 4_000_000;
    let mut at = 0;
    for _ in 0..reads / 4 {
        at = next[at];
    }
    let started = Instant::now();
    for _ in 0..reads {
        at = next[at];
    }
    let took = started.elapsed();
    std::hint::black_box(at);
    took.as_secs_f64() * 1e9 / reads as f64
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn transactional_producer(stack: &Stack, transactional_id: &str) -> Result<BaseProducer> {
    let producer: BaseProducer = stack
        .service_login()?
        .set("transactional.id", transactional_id)
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("retry.backoff.ms", "1")
        .set("compression.type", "lz4")
        .create()
        .context("creating a transactional producer")?;
    producer.init_transactions(TIMEOUT)?;
    Ok(producer)
}

fn guest_headers() -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header {
            key: GUEST_VERSION.0,
            value: Some(GUEST_VERSION.1),
        })
        .insert(Header {
            key: GUEST_SHA256.0,
            value: Some(GUEST_SHA256.1),
        })
}

fn send(
    producer: &BaseProducer,
    topic: &str,
    outputs: &[Output],
    headers: &OwnedHeaders,
) -> Result<()> {
    for output in outputs {
        let mut record = BaseRecord::to(topic)
            .key(output.client_id.as_str())
            .payload(output.value.as_str())
            .headers(headers.clone());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    serve_reports(producer);
                }
                Err((error, _)) => return Err(error).context("producing"),
            }
        }
    }
    Ok(())
}

/// As the service's sink does (`KafkaSink::await_deliveries`): the rdkafka crate's `flush` polls
/// in 100 ms steps, which would add up to 100 ms to every transaction.
fn await_deliveries(producer: &BaseProducer, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match producer.flush(Duration::ZERO) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                if Instant::now() < deadline =>
            {
                serve_reports(producer)
            }
            Err(error) => bail!("waiting for the ceiling's deliveries: {error}"),
        }
    }
}

fn serve_reports(producer: &BaseProducer) {
    let before = producer.in_flight_count();
    producer.poll(Duration::ZERO);
    if producer.in_flight_count() == before {
        std::thread::sleep(Duration::from_millis(1));
    }
}
