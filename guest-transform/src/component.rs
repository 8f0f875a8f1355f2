//! The adapter between the WIT bindings and the logic: conversions only, no rules.
//!
//! With the `export` feature (the default) [`Component`] is what the component exports. A variant
//! of the transform (see `tests/guests`) depends on this crate without that feature, implements
//! [`Guest`] on a type of its own, delegating to [`Component`] where it does not differ, and
//! exports it with [`export_transform!`](crate::export_transform).

pub mod bindings {
    wit_bindgen::generate!({
        world: "campaign-transform",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_transform",
        default_bindings_module: "guest_transform::component::bindings",
    });
}

use bindings::campaign_push::transform::subscribers;
pub use bindings::campaign_push::transform::types;
pub use bindings::exports::campaign_push::transform::transform::Guest;

use crate::prelude::*;
use crate::{
    Budget, EventInput, EventOutcome, Messages, PackedStrings, Resume, SkipReason, SubscriberLookup,
};

/// The transform as this crate defines it.
pub struct Component;

#[cfg(feature = "export")]
bindings::export_transform!(Component with_types_in bindings);

impl Guest for Component {
    fn version() -> String {
        crate::VERSION.to_owned()
    }

    fn transform_batch(
        now: i64,
        events: Vec<types::InputEvent>,
        budget: types::Budget,
    ) -> Result<Vec<types::EventOutcome>, types::BatchError> {
        let inputs = events.iter().map(|event| EventInput {
            value: &event.value,
            resume: event.resume.as_ref().map(|resume| Resume {
                after: &resume.after,
                now: resume.now,
            }),
        });
        let budget = Budget {
            outputs: budget.outputs,
            bytes: budget.bytes,
        };
        match crate::transform_batch(now, inputs, budget, &mut HostSubscribers) {
            Ok(outcomes) => Ok(outcomes.into_iter().map(to_wit_outcome).collect()),
            Err(crate::BatchError::NowOutOfRange(now)) => {
                Err(types::BatchError::NowOutOfRange(now))
            }
        }
    }
}

struct HostSubscribers;

impl SubscriberLookup for HostSubscribers {
    fn subscribers_of(
        &mut self,
        restaurant_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> PackedStrings {
        let packed = subscribers::subscribers_of(restaurant_id, after, limit);
        PackedStrings {
            data: packed.data,
            ends: packed.ends,
        }
    }
}

fn to_wit_outcome(outcome: EventOutcome) -> types::EventOutcome {
    match outcome {
        EventOutcome::FanOut(fan_out) => types::EventOutcome::FanOut(types::FanOut {
            campaign: types::Campaign {
                restaurant_id: fan_out.campaign.restaurant_id,
                adv_campaign_id: fan_out.campaign.adv_campaign_id,
                adv_campaign_content: fan_out.campaign.adv_campaign_content,
                adv_campaign_owner: fan_out.campaign.adv_campaign_owner,
                adv_campaign_owner_contact: fan_out.campaign.adv_campaign_owner_contact,
                adv_campaign_datetime_start: fan_out.campaign.adv_campaign_datetime_start,
                adv_campaign_datetime_end: fan_out.campaign.adv_campaign_datetime_end,
                datetime_created: fan_out.campaign.datetime_created,
            },
            trigger_datetime_created: fan_out.trigger_datetime_created,
            client_ids: to_wit_packed(fan_out.client_ids),
            messages: to_wit_messages(fan_out.messages),
            continue_after: fan_out.continue_after,
        }),
        EventOutcome::Skipped(SkipReason::Expired) => {
            types::EventOutcome::Skipped(types::SkipReason::Expired)
        }
        EventOutcome::Skipped(SkipReason::NotYetStarted) => {
            types::EventOutcome::Skipped(types::SkipReason::NotYetStarted)
        }
        EventOutcome::Rejected(rejection) => types::EventOutcome::Rejected(rejection.to_string()),
        EventOutcome::Deferred => types::EventOutcome::Deferred,
    }
}

fn to_wit_messages(messages: Messages) -> types::Messages {
    match messages {
        Messages::AroundClientId { prefix, suffix } => {
            types::Messages::AroundClientId(types::MessageFrame { prefix, suffix })
        }
        Messages::Each(each) => types::Messages::Each(to_wit_packed(each)),
    }
}

fn to_wit_packed(packed: PackedStrings) -> types::PackedStrings {
    types::PackedStrings {
        data: packed.data,
        ends: packed.ends,
    }
}
