//! The campaign push service: a WebAssembly-hosted transform runner.
//!
//! # Layout
//! - [`guest`]: the wasmtime embedding — loading, checking and calling transform components.
//! - [`records`]: the Kafka messages and `subscribers_feedback` rows derived from a guest fan-out.
//! - [`pipeline`]: consume, transform in batches, plan the writes.
//! - [`sinks`]: PostgreSQL (binary COPY + delivery ledger) and Kafka (transactional).
//! - [`offline`]: the `transform-test` runner that exercises a guest without Kafka or PostgreSQL.
//! - [`config`]: the one configuration struct: TOML file, environment overrides, validation.
//! - [`subscribers`]: the in-memory copy of `subscribers_restaurants`, kept fresh by push.
//! - [`cli`]: the command line.

pub mod cli;
pub mod config;
pub mod guest;
pub mod http;
pub mod metrics;
pub mod offline;
pub mod pipeline;
pub mod records;
pub mod sinks;
pub mod subscribers;
