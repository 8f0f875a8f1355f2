//! The load generator: campaign events to the service's input topic, either all at once (a
//! backlog, for throughput) or each at its due time (an offered rate, for latency).
//!
//! A plain `BaseProducer` on the PLAINTEXT listener, events spread over the partitions in turn:
//! the generator should cost the 2-core machine as little as it can.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::stack::{PARTITIONS, Stack};

pub struct Generator {
    producer: BaseProducer,
    topic: String,
    sent: u64,
}

impl Generator {
    /// `linger_ms`: 5 for a backlog (batched, cheap), 0 for a paced stream (each event leaves at
    /// its due time, so the generator adds no delay of its own to the latency).
    pub fn new(stack: &Stack, topic: &str, linger_ms: u32) -> Result<Self> {
        let producer = stack
            .plaintext()?
            .set("enable.idempotence", "true")
            .set("linger.ms", linger_ms.to_string())
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .context("creating the generator's producer")?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            sent: 0,
        })
    }

    /// Queues one event, waiting while the producer's queue is full.
    pub fn send(&mut self, value: &str) -> Result<()> {
        let partition = (self.sent % PARTITIONS as u64) as i32;
        let mut record = BaseRecord::<(), str>::to(&self.topic)
            .partition(partition)
            .payload(value);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    self.producer.poll(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(error).context("producing an event"),
            }
        }
        self.sent += 1;
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// Produces every event at once and waits until the broker has them all.
    pub fn backlog(&mut self, events: impl Iterator<Item = String>) -> Result<()> {
        for value in events {
            self.send(&value)?;
        }
        self.flush()
    }

    /// Produces `count` events, the `i`-th at `start + i / rate` (made by `event(i)` just
    /// before): a schedule that does not slow down when the service does, so that latency is
    /// counted from when an event was due, not from when a lagging generator got to it.
    pub fn paced(
        &mut self,
        start: Instant,
        rate: f64,
        count: u64,
        event: impl Fn(u64) -> String,
    ) -> Result<()> {
        for i in 0..count {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                // Serving delivery reports while waiting keeps the producer's queue short.
                self.producer.poll(Duration::ZERO);
                std::thread::sleep(due - now);
            }
            self.send(&event(i))?;
        }
        self.flush()
    }

    fn flush(&self) -> Result<()> {
        self.producer
            .flush(Duration::from_secs(60))
            .context("flushing the generator's events")
    }
}
