//! The campaign push service: a WebAssembly-hosted transform runner.
//!
//! # Layout
//! - [`guest`]: the wasmtime embedding — loading, checking and calling transform components.
//! - [`plan`]: what a batch decides, per input record: recalled from an earlier attempt, or new.
//! - [`records`]: the Kafka messages and `subscribers_feedback` rows derived from a guest fan-out.
//! - [`pipeline`]: consume, transform in batches, plan and store the writes; the deliver stage
//!   runs on a thread of its own (`pipeline::courier`) while the next batch is stored.
//! - [`sinks`]: PostgreSQL (binary COPY, the delivery ledger, stored decisions as templates) and
//!   Kafka (transactional).
//! - [`retention`]: deletes the ledger's pairs of campaigns long over.
//! - [`offline`]: the `transform-test` runner that exercises a guest without Kafka or PostgreSQL.
//! - [`config`]: the one configuration struct: TOML file, environment overrides, validation.
//! - [`migrations`]: the project's own database objects (trigger, ledger), applied at start-up.
//! - [`subscribers`]: the in-memory copy of `subscribers_restaurants`, kept fresh by push.
//! - [`reload`]: hot reload of the guest (file watch, SIGHUP, admin API) and rollback.
//! - [`http`]: the public endpoint (metrics, health, readiness); [`admin`]: the admin API, on a
//!   listener of its own, behind a bearer token.
//! - [`supervisor`]: systemd notifications (ready, reloading, stopping, watchdog).
//! - [`service`]: wires everything together and runs it until shutdown.
//! - [`cli`]: the command line; [`check`]: its `check` of a configuration against the world.
//! - [`failpoint`]: test-only crash points in the delivery protocol.

/// What `--version` prints: the release, the commit it was built from, and the WIT world whose
/// guests it runs.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("CAMPAIGN_PUSH_GIT_REV"),
    ", WIT world ",
    env!("CAMPAIGN_PUSH_WIT_WORLD"),
    ")"
);

pub mod admin;
pub mod check;
pub mod cli;
pub mod config;
pub mod failpoint;
pub mod guest;
pub mod http;
pub mod metrics;
pub mod migrations;
pub mod offline;
pub mod pipeline;
pub mod plan;
pub mod records;
pub mod reload;
pub mod retention;
pub mod service;
pub mod sinks;
pub mod subscribers;
pub mod supervisor;
