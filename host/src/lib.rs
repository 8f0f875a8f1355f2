//! The campaign push service: a WebAssembly-hosted transform runner.
//!
//! # Layout
//! - [`guest`]: the wasmtime embedding — loading, checking and calling transform components.
//! - [`records`]: the Kafka messages and `subscribers_feedback` rows derived from a guest fan-out.
//! - [`offline`]: the `transform-test` runner that exercises a guest without Kafka or PostgreSQL.
//! - [`cli`]: the command line.

pub mod cli;
pub mod guest;
pub mod offline;
pub mod records;
