//! Test-only crash points in the delivery protocol.
//!
//! Built with the `failpoints` feature (`make test` enables it; release builds do not), each
//! [`crash_point!`](crate::crash_point) is a `fail` failpoint configured by the `FAILPOINTS`
//! environment variable, e.g. `FAILPOINTS=between-commits=2*off->return`: the third time the
//! process reaches `between-commits`, it aborts on the spot, as a crash or a SIGKILL would stop
//! it. Without the feature the macro expands to nothing.
//!
//! The points, in protocol order: `before-postgres-commit` (the batch's decisions written, not
//! committed), `between-commits` (PostgreSQL committed, the Kafka transaction not begun),
//! `before-kafka-commit` (every message sent and acknowledged, not committed) and
//! `after-kafka-commit` (before the next batch confirms it).

/// Aborts the process here if the failpoint `$name` is set to fire; see the module doc.
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        if ::fail::eval($name, |_| ()).is_some() {
            eprintln!("failpoint {}: aborting the process", $name);
            std::process::abort();
        }
    };
}

/// Reads `FAILPOINTS` (with the feature) and keeps the configuration for the process's life.
pub fn setup() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}
