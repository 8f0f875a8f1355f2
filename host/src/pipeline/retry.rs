//! What a failed sink write does before the next attempt: log it, count it, report it, back off.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::http::Progress;
use crate::metrics::Metrics;
use crate::sinks::SinkError;

/// Shared by the store stage and the deliver stage (on its own thread).
#[derive(Clone)]
pub struct Retry {
    pub metrics: Arc<Metrics>,
    pub progress: Arc<Progress>,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Retry {
    pub fn backoff(&self) -> Backoff {
        Backoff {
            next: self.initial_backoff,
            max: self.max_backoff,
        }
    }

    /// Logs and counts a failed attempt and waits before the next: `Ok(false)` when shutdown
    /// was requested meanwhile, `Err` when the error cannot be retried.
    pub async fn after(
        &self,
        sink: &'static str,
        error: &SinkError,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let message = match error {
            SinkError::Retryable(message) => message,
            SinkError::Fatal(message) => anyhow::bail!("{sink} sink: {message}"),
            SinkError::Refused(message) => {
                anyhow::bail!("{sink} sink refused data it should have been spared: {message}")
            }
            SinkError::Conflict => anyhow::bail!("{sink} sink: unexpected conflict"),
            SinkError::Undeliverable { reason, .. } => {
                anyhow::bail!("{sink} sink refused a message unexpectedly: {reason}")
            }
        };
        tracing::warn!(sink, error = %message, "write failed; retrying");
        self.metrics.count_sink_retry(sink);
        self.progress.failed(&format!("{sink}: {message}"));
        Ok(backoff.wait(shutdown).await)
    }
}

/// Exponential backoff between retries of one sink write.
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
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
