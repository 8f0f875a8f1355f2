//! The campaign transform guest: every rule of the service's contract that concerns one event.
//!
//! # Layout
//! - [`event`]: strict parsing and validation of a campaign event.
//! - [`transform`]: the batch transform — active window, join, de-duplication.
//! - [`message`]: the shape of the output message, serialised once per campaign.
//! - [`packed`]: the packed string lists that cross the Wasm boundary.
//! - `component` (wasm32 only): the thin adapter between the WIT bindings and the logic, and
//!   the bindings themselves for variants of the transform that wrap it.
//!
//! The logic is plain Rust: it is unit-tested natively (`cargo test -p guest-transform`) and linked
//! natively into the host's benchmarks, so the Wasm build and the native build run the same code.

#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

/// What `std`'s prelude would give; the Wasm build has no `std`, so no WASI imports.
mod prelude {
    pub use alloc::borrow::ToOwned;
    pub use alloc::format;
    pub use alloc::string::{String, ToString};
    pub use alloc::vec::Vec;
}

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

// memcmp, memcpy and friends come from wasi-libc, which brings no WASI imports for these.
#[cfg(target_arch = "wasm32")]
#[link(name = "c")]
unsafe extern "C" {}

/// The canonical ABI's allocator, through which the host copies arguments into guest memory.
/// `std` would export it; without `std` the component exports its own.
///
/// # Safety
/// Called by the host per the component model's canonical ABI: `old_ptr`/`old_len`/`align`
/// describe a block this allocator handed out (or `old_len == 0`), `align` is a power of two.
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cabi_realloc(
    old_ptr: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    use alloc::alloc::{Layout, alloc, realloc};
    if new_len == 0 {
        return align as *mut u8;
    }
    // SAFETY: the caller upholds the canonical ABI contract stated above.
    let block = unsafe {
        if old_len == 0 {
            alloc(Layout::from_size_align_unchecked(new_len, align))
        } else {
            realloc(
                old_ptr,
                Layout::from_size_align_unchecked(old_len, align),
                new_len,
            )
        }
    };
    if block.is_null() {
        core::arch::wasm32::unreachable()
    }
    block
}

#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

pub mod event;
pub mod message;
pub mod packed;
pub mod transform;

#[cfg(target_arch = "wasm32")]
pub mod component;
#[cfg(target_arch = "wasm32")]
pub use component::bindings::export_transform;

pub use event::{BadEvent, Campaign, MAX_ID_BYTES};
pub use message::Messages;
pub use packed::PackedStrings;
pub use transform::{
    BatchError, Budget, EventInput, EventOutcome, FanOut, LOOKUP_CHUNK, Rejection, Resume,
    SkipReason, SubscriberLookup, transform_batch,
};

/// The version this guest reports to the host, which tags every output with it.
pub const VERSION: &str = concat!("guest-transform ", env!("CARGO_PKG_VERSION"));
