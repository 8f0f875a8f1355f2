//! What the evil test guests share: each is the real transform, except that a batch holding an
//! event whose value contains `EVIL` makes it misbehave in its own way. A guest crate is then one
//! line, its misbehaviour:
//!
//! ```ignore
//! on_evil_event::guest!("evil: traps on an EVIL event", panic!("an EVIL event"));
//! ```
#![no_std]

#[doc(hidden)]
pub use guest_transform;

use guest_transform::component::types::InputEvent;

/// Whether `events` holds the event the evil guests misbehave on.
pub fn holds_evil_event(events: &[InputEvent]) -> bool {
    events
        .iter()
        .any(|e| e.value.windows(4).any(|w| w == b"EVIL"))
}

/// Defines and exports a guest reporting `$version` that runs `$misbehave` (an expression that
/// never returns) on a batch holding an `EVIL` event, and the real transform on any other.
#[macro_export]
macro_rules! guest {
    ($version:literal, $misbehave:expr) => {
        extern crate alloc;

        use $crate::guest_transform::component::{Component, Guest, types};

        struct Evil;

        impl Guest for Evil {
            fn version() -> alloc::string::String {
                $version.into()
            }

            fn transform_batch(
                now: i64,
                events: alloc::vec::Vec<types::InputEvent>,
                budget: types::Budget,
            ) -> Result<alloc::vec::Vec<types::EventOutcome>, types::BatchError> {
                if $crate::holds_evil_event(&events) {
                    $misbehave
                }
                Component::transform_batch(now, events, budget)
            }
        }

        $crate::guest_transform::export_transform!(
            Evil with_types_in $crate::guest_transform::component::bindings
        );
    };
}
