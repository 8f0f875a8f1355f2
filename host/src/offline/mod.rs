//! The offline runner (`campaign-push transform-test`): runs a guest component through the same
//! wasmtime embedding as the service, on events and a subscriber table read from files, and prints
//! what the service would write — without Kafka or PostgreSQL.

mod fixtures;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use serde_json::value::RawValue;

pub use fixtures::{read_events, read_subscribers_csv};

use crate::guest::{Budget, GuestRuntime, InputEvent, Outcome};
use crate::records::{self, FeedbackRow};
use crate::subscribers::SubscriberTable;

/// What to run.
#[derive(Debug, Clone)]
pub struct TransformTest {
    pub guest: PathBuf,
    pub events: PathBuf,
    pub subscribers: Option<PathBuf>,
    pub now: i64,
    /// Events per guest call; `None` sends all events in one batch.
    pub batch_size: Option<usize>,
}

/// Counts of what was printed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub events: usize,
    pub messages: usize,
    pub rows: usize,
    pub skipped: usize,
    pub rejected: usize,
}

/// One printed line. `event` is the 0-based index of the input event it came from.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Line<'a> {
    /// A valid, active event and how many distinct clients it reaches (possibly none).
    FanOut {
        event: usize,
        clients: usize,
    },
    /// A message for the output topic.
    Message {
        event: usize,
        key: &'a str,
        value: &'a RawValue,
    },
    /// A row for `subscribers_feedback`.
    Row {
        event: usize,
        row: FeedbackRow<'a>,
    },
    Skipped {
        event: usize,
        reason: &'static str,
    },
    Rejected {
        event: usize,
        key: Option<String>,
        reason: &'a str,
    },
}

/// The offline runner decides every batch whole, however large its fan-outs: it shows what the
/// transform makes of events, not how the service cuts batches into parts.
const WHOLE: Budget = Budget {
    outputs: u32::MAX,
    bytes: u64::MAX,
};

/// Runs the test and writes one JSON line per message, row, skipped and rejected event to `out`.
pub fn run(test: &TransformTest, out: &mut impl Write) -> anyhow::Result<Summary> {
    let runtime = GuestRuntime::new()?;
    let guest = runtime.load_file(&test.guest)?;
    let events = read_events(&test.events)?;
    let subscribers = match &test.subscribers {
        Some(path) => read_subscribers_csv(path)?,
        None => SubscriberTable::new(),
    };
    let mut instance = guest.instantiate(Arc::new(subscribers))?;
    let batch_size = test.batch_size.unwrap_or(events.len()).max(1);
    let mut summary = Summary::default();
    for (batch_index, batch) in events.chunks(batch_size).enumerate() {
        let outcomes = instance
            .transform_batch(test.now, batch, WHOLE)
            .with_context(|| format!("guest call for batch {batch_index}"))?;
        let first_event = batch_index * batch_size;
        for (offset, (event, outcome)) in batch.iter().zip(&outcomes).enumerate() {
            print_outcome(first_event + offset, event, outcome, out, &mut summary)?;
        }
    }
    summary.events = events.len();
    out.flush()?;
    Ok(summary)
}

fn print_outcome(
    index: usize,
    event: &InputEvent,
    outcome: &Outcome,
    out: &mut impl Write,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    match outcome {
        Outcome::FanOut(fan_out) => {
            let clients = fan_out.client_ids.len();
            write_line(
                out,
                &Line::FanOut {
                    event: index,
                    clients,
                },
            )?;
            for message in records::messages(fan_out) {
                let text = message.value();
                let value: &RawValue = serde_json::from_str(&text).with_context(|| {
                    format!("event {index}: the guest produced a message that is not JSON")
                })?;
                let line = Line::Message {
                    event: index,
                    key: message.key,
                    value,
                };
                write_line(out, &line)?;
                summary.messages += 1;
            }
            for row in records::rows(fan_out) {
                write_line(out, &Line::Row { event: index, row })?;
                summary.rows += 1;
            }
        }
        Outcome::Skipped(reason) => {
            let reason = match reason {
                guest_transform::SkipReason::Expired => "expired",
                guest_transform::SkipReason::NotYetStarted => "not_yet_started",
            };
            write_line(
                out,
                &Line::Skipped {
                    event: index,
                    reason,
                },
            )?;
            summary.skipped += 1;
        }
        Outcome::Rejected(reason) => {
            let key = event
                .key
                .as_ref()
                .map(|key| String::from_utf8_lossy(key).into_owned());
            write_line(
                out,
                &Line::Rejected {
                    event: index,
                    key,
                    reason,
                },
            )?;
            summary.rejected += 1;
        }
        Outcome::Deferred => {
            anyhow::bail!("event {index}: the guest deferred it although the budget is unlimited")
        }
    }
    Ok(())
}

fn write_line(out: &mut impl Write, line: &Line<'_>) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")?;
    Ok(())
}
