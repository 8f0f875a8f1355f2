//! The campaign transform guest: every rule of the service's contract that concerns one event.
//!
//! # Layout
//! - [`event`]: strict parsing and validation of a campaign event.
//! - [`transform`]: the batch transform — active window, join, de-duplication.
//! - [`message`]: the shape of the output message, serialised once per campaign.
//! - [`packed`]: the packed string lists that cross the Wasm boundary.
//! - `component` (wasm32 only): the thin adapter between the WIT bindings and the logic.
//!
//! The logic is plain Rust: it is unit-tested natively (`cargo test -p guest-transform`) and linked
//! natively into the host's benchmarks, so the Wasm build and the native build run the same code.

pub mod event;
pub mod message;
pub mod packed;
pub mod transform;

#[cfg(target_arch = "wasm32")]
mod component;

pub use event::{BadEvent, Campaign};
pub use packed::PackedStrings;
pub use transform::{
    BatchError, EventOutcome, FanOut, Rejection, SkipReason, SubscriberLookup, transform_batch,
};

/// The version this guest reports to the host, which tags every output with it.
pub const VERSION: &str = concat!("guest-transform ", env!("CARGO_PKG_VERSION"));
