//! The two sinks of a batch plan, each retried on its own from the in-memory plan:
//! [`postgres`] (feedback rows and the delivery ledger) and [`kafka`] (output messages, dead
//! letters and the consumed offsets, in one Kafka transaction).

pub mod kafka;
pub mod postgres;

/// How a sink failure is to be handled by the caller.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying the same write later (connection lost, broker unavailable, abortable
    /// transaction error).
    #[error("retryable: {0}")]
    Retryable(String),
    /// The sink cannot continue (fenced producer, fatal client error): stop the service.
    #[error("fatal: {0}")]
    Fatal(String),
}
