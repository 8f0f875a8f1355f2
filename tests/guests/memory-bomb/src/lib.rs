//! An evil guest: the real transform, except that a batch holding an event whose value contains
//! `EVIL` allocates (and touches) memory until there is no more. The host's memory cap
//! (`guest.max_memory_mib`) must stop it long before the machine runs out.
#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

use guest_transform::component::{Component, Guest, types};

struct MemoryBomb;

impl Guest for MemoryBomb {
    fn version() -> String {
        "evil: allocates without end on an EVIL event".into()
    }

    fn transform_batch(
        now: i64,
        events: Vec<types::InputEvent>,
    ) -> Result<Vec<types::EventOutcome>, types::BatchError> {
        if events
            .iter()
            .any(|e| e.value.windows(4).any(|w| w == b"EVIL"))
        {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(alloc::vec![0xA5; 1 << 20]);
                core::hint::black_box(&hoard);
            }
        }
        Component::transform_batch(now, events)
    }
}

guest_transform::export_transform!(MemoryBomb);
