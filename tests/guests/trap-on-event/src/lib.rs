//! An evil guest: the real transform, except that a batch holding an event whose value contains
//! `EVIL` panics, which in this guest is a trap. Bisection must dead-letter that one event with
//! the trap as its reason and transform the others.
#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

use guest_transform::component::{Component, Guest, types};

struct TrapOnEvent;

impl Guest for TrapOnEvent {
    fn version() -> String {
        "evil: traps on an EVIL event".into()
    }

    fn transform_batch(
        now: i64,
        events: Vec<types::InputEvent>,
    ) -> Result<Vec<types::EventOutcome>, types::BatchError> {
        if events
            .iter()
            .any(|e| e.value.windows(4).any(|w| w == b"EVIL"))
        {
            panic!("an EVIL event");
        }
        Component::transform_batch(now, events)
    }
}

guest_transform::export_transform!(TrapOnEvent);
