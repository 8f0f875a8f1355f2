//! The delivery ledger's retention: the (campaign, client) pairs of a campaign are kept until
//! `ledger.retention` after its end, then deleted, so that the ledger holds the campaigns that can
//! still be delivered rather than every campaign ever.
//!
//! Deleting them is safe because an event of a campaign that has ended is skipped, not delivered:
//! past its end no pair of the campaign can be decided again. Each host runs the purge; it is
//! idempotent, and its statements are short (a chunk of rows each), so hosts do not block each
//! other or the pipeline for long.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::pipeline::PgConnect;
use crate::pipeline::clock::Clock;
use crate::sinks::ledger;

/// Ledger rows deleted per statement.
const CHUNK: i64 = 10_000;

/// What the purge needs to know.
pub struct Retention {
    /// `ledger.retention`.
    pub retention: Duration,
    /// `ledger.purge_interval`.
    pub interval: Duration,
    pub connect: PgConnect,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
}

impl Retention {
    /// Purges at once, then every `interval`, until `shutdown`. A failed purge is logged and
    /// tried again at the next interval: a ledger that keeps rows longer is only larger.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let cutoff = self.clock.now_epoch_seconds()
                - i64::try_from(self.retention.as_secs()).unwrap_or(i64::MAX);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                purged = self.purge(cutoff) => match purged {
                    Ok(0) => {}
                    Ok(purged) => {
                        self.metrics.ledger_pairs_purged.inc_by(purged);
                        tracing::info!(purged, cutoff, "ledger pairs of ended campaigns deleted");
                    }
                    Err(error) => tracing::warn!(error = %format!("{error:#}"), "ledger purge failed; trying again later"),
                },
            }
        }
    }

    async fn purge(&self, cutoff: i64) -> anyhow::Result<u64> {
        let client = (self.connect)().await?;
        Ok(ledger::purge_ended_campaigns(&client, cutoff, CHUNK).await?)
    }
}
