//! A guest that lets U+0000 into the rows: the real transform, except that the offer text of an
//! `EVIL` event's fan-out ends with a NUL, which PostgreSQL's `text` refuses (SQLSTATE 22021). The
//! real transform rejects such an event itself; this one shows what the host does when a guest
//! does not: the database's refusal is isolated to the event, which is dead-lettered with it.
#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

use guest_transform::component::{Component, Guest, types};

struct NulInRows;

impl Guest for NulInRows {
    fn version() -> String {
        "evil: a NUL in an EVIL event's rows".into()
    }

    fn transform_batch(
        now: i64,
        events: Vec<types::InputEvent>,
        budget: types::Budget,
    ) -> Result<Vec<types::EventOutcome>, types::BatchError> {
        let evil: Vec<bool> = events
            .iter()
            .map(|event| event.value.windows(4).any(|w| w == b"EVIL"))
            .collect();
        let mut outcomes = Component::transform_batch(now, events, budget)?;
        for (outcome, evil) in outcomes.iter_mut().zip(evil) {
            if let (types::EventOutcome::FanOut(fan_out), true) = (outcome, evil) {
                fan_out.campaign.adv_campaign_content.push('\0');
            }
        }
        Ok(outcomes)
    }
}

guest_transform::export_transform!(NulInRows);
