//! Version 3 of the transform, with a regression: an over-strict rule accepts only the offer text
//! of the contract's sample campaign and rejects every other active campaign. The canary batch,
//! built from that sample, cannot see it; only real traffic can, and the host must roll it back
//! by itself within `guest.rollback_window`.
#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

use guest_transform::component::{Component, Guest, types};

/// The sample campaign's offer, the only one this version accepts.
const SAMPLE_CONTENT: &str = "first campaign";

struct V3;

impl Guest for V3 {
    fn version() -> String {
        "guest-transform 0.3.0 (rejects every offer but the sample's)".into()
    }

    fn transform_batch(
        now: i64,
        events: Vec<types::InputEvent>,
        budget: types::Budget,
    ) -> Result<Vec<types::EventOutcome>, types::BatchError> {
        let outcomes = Component::transform_batch(now, events, budget)?;
        Ok(outcomes
            .into_iter()
            .map(|outcome| match outcome {
                types::EventOutcome::FanOut(fan_out)
                    if fan_out.campaign.adv_campaign_content != SAMPLE_CONTENT =>
                {
                    types::EventOutcome::Rejected("unsupported offer text".into())
                }
                other => other,
            })
            .collect())
    }
}

guest_transform::export_transform!(V3);
