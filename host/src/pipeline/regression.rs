//! Automatic rollback: after a swap, the new guest's share of rejected events is compared with
//! the share of the guest it replaced; a clear regression within the watch window rolls it back.
//!
//! Pure bookkeeping: the pipeline reports each batch with the instant it finished, and acts on
//! the verdict.

use std::time::{Duration, Instant};

/// When a new guest counts as worse than the previous one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegressionSettings {
    /// How long after a swap the new guest is watched.
    pub window: Duration,
    /// How much higher its reject share may be (0.2 = 20 percentage points) before it is rolled
    /// back.
    pub margin: f64,
    /// Events the new guest must have seen before it is judged, so one bad event cannot decide.
    pub min_events: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    events: u64,
    rejected: u64,
}

impl Counts {
    fn add(&mut self, events: u64, rejected: u64) {
        self.events += events;
        self.rejected += rejected;
    }

    fn share(&self) -> f64 {
        if self.events == 0 {
            0.0
        } else {
            self.rejected as f64 / self.events as f64
        }
    }
}

/// What to do after a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Keep,
    /// The guest in service rejects clearly more than its predecessor did.
    RollBack {
        previous_share: f64,
        new_share: f64,
    },
}

/// Tracks the guest in service and, for a while after a swap, how it compares.
pub struct RegressionWatch {
    settings: RegressionSettings,
    current: String,
    /// Counts of the guest in service before the last swap: the baseline.
    baseline: Counts,
    /// Counts of the guest in service since it took over.
    counts: Counts,
    /// When the guest in service took over, while it is still being watched.
    watched_since: Option<Instant>,
}

impl RegressionWatch {
    /// Starts watching with `guest` (its component hash) in service.
    pub fn new(settings: RegressionSettings, guest: &str) -> Self {
        Self {
            settings,
            current: guest.to_owned(),
            baseline: Counts::default(),
            counts: Counts::default(),
            watched_since: None,
        }
    }

    /// Records a batch of `events` of which `rejected` were rejected, transformed by the guest
    /// whose component hash is `guest`, finished at `now`.
    pub fn record(&mut self, now: Instant, guest: &str, events: u64, rejected: u64) -> Verdict {
        if self.current != guest {
            self.current = guest.to_owned();
            self.baseline = std::mem::take(&mut self.counts);
            self.watched_since = Some(now);
        }
        self.counts.add(events, rejected);
        let Some(since) = self.watched_since else {
            return Verdict::Keep;
        };
        if now.duration_since(since) > self.settings.window {
            self.watched_since = None; // accepted: it becomes the baseline at the next swap
            return Verdict::Keep;
        }
        let (previous_share, new_share) = (self.baseline.share(), self.counts.share());
        if self.counts.events >= self.settings.min_events
            && new_share > previous_share + self.settings.margin
        {
            self.watched_since = None;
            return Verdict::RollBack {
                previous_share,
                new_share,
            };
        }
        Verdict::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: RegressionSettings = RegressionSettings {
        window: Duration::from_secs(60),
        margin: 0.2,
        min_events: 20,
    };

    #[test]
    fn a_guest_that_rejects_everything_after_a_swap_is_rolled_back() {
        let start = Instant::now();
        let mut watch = RegressionWatch::new(SETTINGS, "v1");
        assert_eq!(watch.record(start, "v1", 100, 2), Verdict::Keep);
        // Too few events yet to judge the new guest.
        assert_eq!(watch.record(start, "v3", 10, 10), Verdict::Keep);
        let verdict = watch.record(start + Duration::from_secs(1), "v3", 10, 10);
        assert_eq!(
            verdict,
            Verdict::RollBack {
                previous_share: 0.02,
                new_share: 1.0
            }
        );
    }

    #[test]
    fn a_guest_within_the_margin_is_kept() {
        let start = Instant::now();
        let mut watch = RegressionWatch::new(SETTINGS, "v1");
        watch.record(start, "v1", 100, 10);
        assert_eq!(watch.record(start, "v2", 100, 25), Verdict::Keep);
    }

    #[test]
    fn after_the_window_a_guest_is_no_longer_judged() {
        let start = Instant::now();
        let mut watch = RegressionWatch::new(SETTINGS, "v1");
        watch.record(start, "v1", 100, 0);
        watch.record(start, "v2", 5, 0);
        let late = start + SETTINGS.window + Duration::from_secs(1);
        assert_eq!(watch.record(late, "v2", 100, 100), Verdict::Keep);
    }

    #[test]
    fn the_guest_running_at_start_is_not_judged() {
        let mut watch = RegressionWatch::new(SETTINGS, "v1");
        assert_eq!(watch.record(Instant::now(), "v1", 100, 100), Verdict::Keep);
    }

    #[test]
    fn a_swap_before_any_event_is_judged_against_an_empty_baseline() {
        let start = Instant::now();
        let mut watch = RegressionWatch::new(SETTINGS, "v1");
        assert!(matches!(
            watch.record(start, "v3", 20, 20),
            Verdict::RollBack { .. }
        ));
    }

    #[test]
    fn a_rolled_back_guest_is_compared_with_the_bad_one_and_kept() {
        let start = Instant::now();
        let mut watch = RegressionWatch::new(SETTINGS, "v1");
        watch.record(start, "v1", 100, 0);
        assert!(matches!(
            watch.record(start, "v3", 50, 50),
            Verdict::RollBack { .. }
        ));
        assert_eq!(watch.record(start, "v1", 50, 0), Verdict::Keep);
    }
}
