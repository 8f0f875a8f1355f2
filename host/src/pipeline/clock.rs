//! The processing time, injected so that logic never reads the wall clock itself.

/// Tells the pipeline what `now` is.
pub trait Clock: Send + Sync + 'static {
    /// Unix epoch seconds, UTC.
    fn now_epoch_seconds(&self) -> i64;
}

/// The machine's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_epoch_seconds(&self) -> i64 {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970");
        i64::try_from(since_epoch.as_secs()).expect("seconds fit i64")
    }
}
