//! The host's view of what the guest made of each event, independent of how it was computed
//! (through the Wasm component, or natively in benchmarks).

pub use guest_transform::FanOut;
use guest_transform::{Campaign, Messages, PackedStrings, SkipReason};

use super::bindings::types as wit;

/// What one input event became.
// Most outcomes are fan-outs, so boxing the large variant would add an allocation per event
// without saving memory.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Valid and active: one message and one row per client.
    FanOut(FanOut),
    /// Valid but not active at `now`: counted, not written.
    Skipped(SkipReason),
    /// Bad: goes to the dead-letter topic with this reason.
    Rejected(String),
    /// The batch's budget ran out before the event's first output: submitted again later.
    Deferred,
}

impl From<guest_transform::EventOutcome> for Outcome {
    fn from(outcome: guest_transform::EventOutcome) -> Self {
        match outcome {
            guest_transform::EventOutcome::FanOut(fan_out) => Outcome::fan_out(fan_out),
            guest_transform::EventOutcome::Skipped(reason) => Outcome::Skipped(reason),
            guest_transform::EventOutcome::Rejected(rejection) => {
                Outcome::Rejected(rejection.to_string())
            }
            guest_transform::EventOutcome::Deferred => Outcome::Deferred,
        }
    }
}

impl Outcome {
    /// A fan-out, checking what the host relies on later: as many messages as client ids, and
    /// every entry well-formed UTF-8. A guest that breaks this gets the event dead-lettered
    /// instead of crashing a sink.
    fn fan_out(fan_out: FanOut) -> Self {
        match malformation(&fan_out) {
            None => Outcome::FanOut(fan_out),
            Some(problem) => {
                Outcome::Rejected(format!("the guest returned a malformed fan-out: {problem}"))
            }
        }
    }

    /// Converts what crossed the boundary; see [`Outcome::fan_out`] for the checks.
    pub(super) fn from_wit(outcome: wit::EventOutcome) -> Self {
        match outcome {
            wit::EventOutcome::FanOut(fan_out) => Outcome::fan_out(FanOut {
                campaign: Campaign {
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
                client_ids: from_wit_packed(fan_out.client_ids),
                messages: match fan_out.messages {
                    wit::Messages::AroundClientId(frame) => Messages::AroundClientId {
                        prefix: frame.prefix,
                        suffix: frame.suffix,
                    },
                    wit::Messages::Each(each) => Messages::Each(from_wit_packed(each)),
                },
                continue_after: fan_out.continue_after,
            }),
            wit::EventOutcome::Skipped(wit::SkipReason::Expired) => {
                Outcome::Skipped(SkipReason::Expired)
            }
            wit::EventOutcome::Skipped(wit::SkipReason::NotYetStarted) => {
                Outcome::Skipped(SkipReason::NotYetStarted)
            }
            wit::EventOutcome::Rejected(reason) => Outcome::Rejected(reason),
            wit::EventOutcome::Deferred => Outcome::Deferred,
        }
    }
}

fn malformation(fan_out: &FanOut) -> Option<&'static str> {
    // Text around each client id is as many messages as ids, as well-formed as they are.
    let each = match &fan_out.messages {
        Messages::AroundClientId { .. } => None,
        Messages::Each(each) => Some(each),
    };
    if each.is_some_and(|each| each.len() != fan_out.client_ids.len()) {
        Some("client id and message counts differ")
    } else if fan_out.client_ids.iter().any(|id| id.is_none()) {
        Some("a client id is out of bounds or not UTF-8")
    } else if each.is_some_and(|each| each.iter().any(|message| message.is_none())) {
        Some("a message is out of bounds or not UTF-8")
    } else if fan_out.continue_after.as_deref().is_some_and(|after| {
        fan_out
            .client_ids
            .iter()
            .flatten()
            .last()
            .is_some_and(|last| after < last)
    }) {
        // The next part starts after `continue_after`: clients of this part would be sent again.
        Some("continue-after is before the last client it reached")
    } else {
        None
    }
}

fn from_wit_packed(packed: wit::PackedStrings) -> PackedStrings {
    PackedStrings {
        data: packed.data,
        ends: packed.ends,
    }
}

pub(super) fn to_wit_packed(packed: PackedStrings) -> wit::PackedStrings {
    wit::PackedStrings {
        data: packed.data,
        ends: packed.ends,
    }
}

/// A fan-out of campaign `campaign` to `client_ids` with `messages`, the rest of it fixed: for
/// tests of what the host does with fan-outs.
#[cfg(test)]
pub(crate) fn test_fan_out(
    campaign: &str,
    client_ids: PackedStrings,
    messages: Messages,
) -> FanOut {
    FanOut {
        campaign: Campaign {
            restaurant_id: "r".into(),
            adv_campaign_id: campaign.into(),
            adv_campaign_content: "x".into(),
            adv_campaign_owner: "o".into(),
            adv_campaign_owner_contact: "e".into(),
            adv_campaign_datetime_start: 1,
            adv_campaign_datetime_end: 2,
            datetime_created: 1,
        },
        trigger_datetime_created: 2,
        client_ids,
        messages,
        continue_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fan_out(client_ids: PackedStrings, messages: Messages) -> FanOut {
        test_fan_out("c", client_ids, messages)
    }

    fn frame() -> Messages {
        Messages::AroundClientId {
            prefix: "{\"client_id\":\"".into(),
            suffix: "\"}".into(),
        }
    }

    fn rejection(outcome: Outcome) -> String {
        match outcome {
            Outcome::Rejected(reason) => reason,
            other => panic!("not rejected: {other:?}"),
        }
    }

    #[test]
    fn text_around_well_formed_client_ids_is_a_fan_out() {
        let ids: PackedStrings = ["a", "b"].into_iter().collect();
        let outcome = Outcome::fan_out(fan_out(ids, frame()));
        assert!(matches!(outcome, Outcome::FanOut(_)));
    }

    #[test]
    fn a_client_id_that_is_not_utf8_is_refused_whatever_the_messages() {
        let ids = PackedStrings {
            data: vec![b'a', 0xff],
            ends: vec![1, 2],
        };
        let reason = rejection(Outcome::fan_out(fan_out(ids, frame())));
        assert!(
            reason.contains("a client id is out of bounds or not UTF-8"),
            "{reason}"
        );
    }

    #[test]
    fn messages_sent_in_full_must_be_one_per_client_id() {
        let ids: PackedStrings = ["a", "b"].into_iter().collect();
        let one: PackedStrings = ["{}"].into_iter().collect();
        let reason = rejection(Outcome::fan_out(fan_out(ids, Messages::Each(one))));
        assert!(reason.contains("counts differ"), "{reason}");
    }
}
