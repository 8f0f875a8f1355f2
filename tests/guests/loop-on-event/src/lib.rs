//! An evil guest: the real transform, except that a batch holding an event whose value contains
//! `EVIL` never returns. The host's epoch deadline (`guest.call_timeout`) must stop it, and
//! bisection must dead-letter that one event and transform the others.
#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

use guest_transform::component::{Component, Guest, types};

struct LoopOnEvent;

impl Guest for LoopOnEvent {
    fn version() -> String {
        "evil: loops forever on an EVIL event".into()
    }

    fn transform_batch(
        now: i64,
        events: Vec<types::InputEvent>,
    ) -> Result<Vec<types::EventOutcome>, types::BatchError> {
        if events
            .iter()
            .any(|e| e.value.windows(4).any(|w| w == b"EVIL"))
        {
            loop {
                core::hint::spin_loop();
            }
        }
        Component::transform_batch(now, events)
    }
}

guest_transform::export_transform!(LoopOnEvent);
