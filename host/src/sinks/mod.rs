//! The two sinks of a batch: [`postgres`] (the decisions, with the ledger and the feedback rows
//! they account for) and [`kafka`] (the decisions' messages, dead letters and the consumed
//! offsets, in one Kafka transaction).

pub mod kafka;
pub mod ledger;
pub mod postgres;
pub mod template;

/// How a sink failure is to be handled by the caller.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying the same write later (connection lost, broker unavailable, serialization
    /// failure, abortable transaction error).
    #[error("retryable: {0}")]
    Retryable(String),
    /// The sink refuses the data of an event for good (PostgreSQL data exceptions and limits):
    /// the event must be isolated and dead-lettered; retrying it would stall the stream.
    #[error("refused: {0}")]
    Refused(String),
    /// Kafka refuses a message of the batch's decision at `decision` for good (too large for
    /// the topic, an invalid record): that decision must be turned into a dead letter, in both
    /// sinks, before the batch is sent again.
    #[error("Kafka refused a message of decision {decision}: {reason}")]
    Undeliverable { decision: usize, reason: String },
    /// Another attempt (a host that owned the partition before a rebalance) stored a decision
    /// for a record of the batch first: the batch must be planned again around it.
    #[error("another attempt decided a record of the batch first")]
    Conflict,
    /// The sink cannot continue (fenced producer, consumer group membership lost, schema
    /// mismatch): stop the service.
    #[error("fatal: {0}")]
    Fatal(String),
}
