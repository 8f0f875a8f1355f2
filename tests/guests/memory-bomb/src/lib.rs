//! An evil guest: on a batch holding an `EVIL` event, allocates (and touches) memory until there
//! is no more. The host's memory cap (`guest.max_memory_mib`) must stop it long before the
//! machine runs out.
#![no_std]

on_evil_event::guest!("evil: allocates without end on an EVIL event", {
    let mut hoard = alloc::vec::Vec::new();
    loop {
        hoard.push(alloc::vec![0xA5_u8; 1 << 20]);
        core::hint::black_box(&hoard);
    }
});
