//! The reader: a `read_committed` consumer of the output topic, as the push-notification service
//! would be, noting when the last output of each event became visible to it.
//!
//! It is light on purpose (no JSON parsing, one scan of each value for its campaign id), since
//! on two cores whatever it costs is taken from the service under test.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, Timestamp};
use rdkafka::{Offset, TopicPartitionList};

use crate::stack::{PARTITIONS, Stack};
use crate::workload::event_index;

/// What one phase's reader saw.
pub struct Seen {
    /// Per event: when its last output became visible (`None`: not all of them did).
    pub complete_at: Vec<Option<Instant>>,
    /// Per event: the latest `CreateTime` of its outputs (ms since the epoch; 0: none seen).
    pub last_create_ms: Vec<i64>,
    /// Outputs of the phase seen.
    pub outputs: u64,
}

/// A reader running on its own thread until it has every output of `events` events with
/// `fan_out` outputs each, or until stopped.
pub struct Reader {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<Seen>>,
}

impl Reader {
    /// Starts reading `topic` at `from` (one offset per partition), counting the outputs of the
    /// campaigns of `tag`.
    pub fn start(
        stack: &Stack,
        topic: &str,
        from: &[i64],
        tag: &str,
        events: usize,
        fan_out: u32,
    ) -> Result<Self> {
        let consumer: BaseConsumer = stack
            .plaintext()?
            .set("group.id", format!("{tag}-reader"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            // The broker answers a fetch as soon as there is data; this bounds the wait when
            // there is none, and so how late the reader can notice a commit.
            .set("fetch.wait.max.ms", "10")
            .create()
            .context("creating the reader")?;
        let mut list = TopicPartitionList::new();
        for (partition, &offset) in from.iter().enumerate().take(PARTITIONS as usize) {
            list.add_partition_offset(topic, partition as i32, Offset::Offset(offset))?;
        }
        consumer.assign(&list)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let tag = tag.to_owned();
        let handle = std::thread::spawn(move || {
            let mut seen = Seen {
                complete_at: vec![None; events],
                last_create_ms: vec![0; events],
                outputs: 0,
            };
            let mut counts = vec![0u32; events];
            let mut complete = 0;
            while complete < events && !flag.load(Ordering::Relaxed) {
                let Some(message) = consumer.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let message = message.context("reading the output topic")?;
                let now = Instant::now();
                let Some(index) = message
                    .payload()
                    .and_then(|value| event_index(value, &tag))
                    .map(|i| i as usize)
                    .filter(|&i| i < events)
                else {
                    continue;
                };
                seen.outputs += 1;
                if let Timestamp::CreateTime(ms) = message.timestamp() {
                    seen.last_create_ms[index] = seen.last_create_ms[index].max(ms);
                }
                counts[index] += 1;
                if counts[index] == fan_out {
                    seen.complete_at[index] = Some(now);
                    complete += 1;
                }
            }
            Ok(seen)
        });
        Ok(Self { stop, handle })
    }

    /// Waits up to `timeout` for the reader to see everything, then stops it and returns what it
    /// saw.
    pub fn finish(self, timeout: Duration) -> Result<Seen> {
        let deadline = Instant::now() + timeout;
        while !self.handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("the reader thread panicked"))?
    }
}
