//! An evil guest: panics (in this guest, a trap) on a batch holding an `EVIL` event. Bisection
//! must dead-letter that one event with the trap as its reason and transform the others.
#![no_std]

on_evil_event::guest!("evil: traps on an EVIL event", panic!("an EVIL event"));
