//! Prometheus metrics of the service, rendered by the HTTP endpoint `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Every metric the service exports. Cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    pub events_in: Counter,
    pub outputs: Counter,
    pub rows_inserted: Counter,
    pub duplicates_suppressed: Counter,
    pub skipped_expired: Counter,
    pub skipped_not_yet_started: Counter,
    pub dead_lettered: Counter,
    pub sink_retries: Family<Vec<(String, String)>, Counter>,
    pub batch_size: Histogram,
    pub batch_seconds: Histogram,
    pub stage_seconds: StageHistograms,
    pub consumer_lag: Gauge,
    pub cache_rows: Gauge,
    pub cache_age_seconds: Gauge,
    pub guest: Family<Vec<(String, String)>, Gauge>,
    pub guest_swaps: Family<Vec<(String, String)>, Counter>,
    pub ledger_pairs_purged: Counter,
}

/// One histogram per pipeline stage, labelled `stage`.
pub type StageHistograms = Family<Vec<(String, String)>, Histogram, fn() -> Histogram>;

fn stage_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("campaign_push");
        let metrics = Self {
            events_in: Counter::default(),
            outputs: Counter::default(),
            rows_inserted: Counter::default(),
            duplicates_suppressed: Counter::default(),
            skipped_expired: Counter::default(),
            skipped_not_yet_started: Counter::default(),
            dead_lettered: Counter::default(),
            sink_retries: Family::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            batch_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            stage_seconds: Family::new_with_constructor(stage_histogram),
            consumer_lag: Gauge::default(),
            cache_rows: Gauge::default(),
            cache_age_seconds: Gauge::default(),
            guest: Family::default(),
            guest_swaps: Family::default(),
            ledger_pairs_purged: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "events_in",
            "Input events consumed",
            metrics.events_in.clone(),
        );
        registry.register(
            "outputs",
            "Output messages committed to the output topic",
            metrics.outputs.clone(),
        );
        registry.register(
            "feedback_rows",
            "Rows inserted into subscribers_feedback",
            metrics.rows_inserted.clone(),
        );
        registry.register(
            "duplicates_suppressed",
            "Deliveries not repeated because the ledger had them",
            metrics.duplicates_suppressed.clone(),
        );
        registry.register(
            "skipped_expired",
            "Valid events skipped because their campaign ended",
            metrics.skipped_expired.clone(),
        );
        registry.register(
            "skipped_not_yet_started",
            "Valid events skipped because their campaign has not started",
            metrics.skipped_not_yet_started.clone(),
        );
        registry.register(
            "dead_lettered",
            "Events sent to the dead-letter topic",
            metrics.dead_lettered.clone(),
        );
        registry.register(
            "sink_retries",
            "Sink writes retried, by sink",
            metrics.sink_retries.clone(),
        );
        registry.register("batch_size", "Events per batch", metrics.batch_size.clone());
        registry.register(
            "batch_seconds",
            "Time from a batch's first event to its commit in both sinks",
            metrics.batch_seconds.clone(),
        );
        registry.register(
            "stage_seconds",
            "Time a batch spends in each stage: collect (first event to batch closed), decide \
             (recall and guest), postgres (store), kafka (deliver and commit)",
            metrics.stage_seconds.clone(),
        );
        registry.register(
            "consumer_lag",
            "Input records not yet consumed, summed over assigned partitions",
            metrics.consumer_lag.clone(),
        );
        registry.register(
            "subscriber_cache_rows",
            "Rows in the subscriber cache",
            metrics.cache_rows.clone(),
        );
        registry.register(
            "subscriber_cache_age_seconds",
            "Seconds since the subscriber cache was last known in sync",
            metrics.cache_age_seconds.clone(),
        );
        registry.register(
            "guest",
            "The guest in service (value 1), by version and SHA-256",
            metrics.guest.clone(),
        );
        registry.register(
            "ledger_pairs_purged",
            "Delivery ledger pairs deleted after their campaign's retention (ledger.retention)",
            metrics.ledger_pairs_purged.clone(),
        );
        registry.register(
            "guest_swaps",
            "Guest reloads and rollbacks, by action and result (accepted or refused)",
            metrics.guest_swaps.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Records which guest is in service, replacing the previous one.
    pub fn set_guest(&self, version: &str, sha256: &str) {
        self.guest.clear();
        self.guest
            .get_or_create(&vec![
                ("version".to_owned(), version.to_owned()),
                ("sha256".to_owned(), sha256.to_owned()),
            ])
            .set(1);
    }

    pub fn observe_stage(&self, stage: &str, seconds: f64) {
        self.stage_seconds
            .get_or_create(&vec![("stage".to_owned(), stage.to_owned())])
            .observe(seconds);
    }

    pub fn count_guest_swap(&self, action: &str, result: &str) {
        self.guest_swaps
            .get_or_create(&vec![
                ("action".to_owned(), action.to_owned()),
                ("result".to_owned(), result.to_owned()),
            ])
            .inc();
    }

    pub fn count_sink_retry(&self, sink: &str) {
        self.sink_retries
            .get_or_create(&vec![("sink".to_owned(), sink.to_owned())])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_the_guest_identity() {
        let metrics = Metrics::default();
        metrics.events_in.inc_by(3);
        metrics.set_guest("guest-transform 0.1.0", "abc");
        metrics.set_guest("guest-transform 0.2.0", "def");
        let text = metrics.render();
        assert!(text.contains("campaign_push_events_in_total 3"), "{text}");
        assert!(
            text.contains(r#"campaign_push_guest{version="guest-transform 0.2.0",sha256="def"} 1"#),
            "{text}"
        );
        assert!(!text.contains("0.1.0"), "{text}");
    }
}
