//! Reconnection delays: exponential, capped, jittered so that many hosts that lost the same
//! database do not all come back in the same millisecond.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The delay before the next attempt, and doubles the one after. `jitter` in `[0, 1)` picks
    /// the delay between half and all of the nominal one.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let nominal = self.next;
        self.next = (self.next * 2).min(self.max);
        nominal.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// Back to the shortest delay, after a connection that worked.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<u128> = (0..6)
            .map(|_| backoff.next_delay(0.999_999).as_millis())
            .collect();
        assert_eq!(delays, vec![99, 199, 399, 799, 999, 999]);
        backoff.reset();
        assert_eq!(backoff.next_delay(0.0), Duration::from_millis(50));
    }
}
