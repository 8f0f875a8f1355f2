//! An evil guest: never returns from a batch holding an `EVIL` event. The host's epoch deadline
//! (`guest.call_timeout`) must stop it, and bisection must dead-letter that one event and
//! transform the others.
#![no_std]

on_evil_event::guest!(
    "evil: loops forever on an EVIL event",
    loop {
        core::hint::spin_loop();
    }
);
