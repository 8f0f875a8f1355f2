//! The output message: the contract's ten fields as one JSON object per client.
//!
//! Everything but `client_id` is the same for all clients of a campaign, so it is serialised once
//! per event into a template. A fan-out's values leave the guest as that template's text around
//! the client id ([`Messages::AroundClientId`]) and are rendered by whoever needs them in full
//! ([`Messages::render`]); only a fan-out with a client id that needs escaping carries every
//! value ([`Messages::Each`]).

use crate::event::Campaign;
use crate::packed::PackedStrings;
use crate::prelude::*;
use alloc::borrow::Cow;

/// The serialised shared part of one campaign's messages.
pub struct MessageTemplate {
    /// `{"restaurant_id":…,…,"trigger_datetime_created":N,"client_id":"`
    head: String,
}

const TAIL: &str = "\"}";

impl MessageTemplate {
    pub fn new(campaign: &Campaign, trigger_datetime_created: i32) -> Self {
        let mut head = String::with_capacity(
            256 + campaign.adv_campaign_content.len() + campaign.adv_campaign_owner.len(),
        );
        head.push('{');
        push_string_field(&mut head, "restaurant_id", &campaign.restaurant_id);
        push_string_field(&mut head, "adv_campaign_id", &campaign.adv_campaign_id);
        push_string_field(
            &mut head,
            "adv_campaign_content",
            &campaign.adv_campaign_content,
        );
        push_string_field(
            &mut head,
            "adv_campaign_owner",
            &campaign.adv_campaign_owner,
        );
        push_string_field(
            &mut head,
            "adv_campaign_owner_contact",
            &campaign.adv_campaign_owner_contact,
        );
        push_integer_field(
            &mut head,
            "adv_campaign_datetime_start",
            campaign.adv_campaign_datetime_start,
        );
        push_integer_field(
            &mut head,
            "adv_campaign_datetime_end",
            campaign.adv_campaign_datetime_end,
        );
        push_integer_field(&mut head, "datetime_created", campaign.datetime_created);
        push_integer_field(
            &mut head,
            "trigger_datetime_created",
            i64::from(trigger_datetime_created),
        );
        head.push_str("\"client_id\":\"");
        Self { head }
    }

    /// The bytes the message for `client_id` takes.
    pub fn message_len(&self, client_id: &str) -> usize {
        self.head.len() + json_contents(client_id).len() + TAIL.len()
    }

    /// Appends the message for `client_id` to `out`.
    pub fn render_into(&self, client_id: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(json_contents(client_id).as_bytes());
        out.extend_from_slice(TAIL.as_bytes());
    }

    /// The values for `client_ids`: as the text around them when none needs escaping, which is
    /// then the same for every client.
    pub fn messages(self, client_ids: &PackedStrings) -> Messages {
        let plain = client_ids.iter().flatten().all(|id| !needs_escape(id));
        if plain {
            return Messages::AroundClientId {
                prefix: self.head,
                suffix: TAIL.to_owned(),
            };
        }
        let mut each = PackedStrings::with_capacity(client_ids.len(), 0);
        for id in client_ids.iter().flatten() {
            self.render_into(id, &mut each.data);
            each.seal();
        }
        Messages::Each(each)
    }
}

/// The Kafka values of a fan-out, one per client id, in client order (`messages` in
/// `wit/transform.wit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Messages {
    /// Value `i` is `prefix`, client id `i`, `suffix`.
    AroundClientId { prefix: String, suffix: String },
    /// Every value in full.
    Each(PackedStrings),
}

impl Messages {
    /// The bytes of the values in full, for `client_ids` (the fan-out's): what a batch's budget
    /// counts.
    pub fn bytes(&self, client_ids: &PackedStrings) -> usize {
        match self {
            Messages::AroundClientId { prefix, suffix } => {
                (prefix.len() + suffix.len()) * client_ids.len() + client_ids.data.len()
            }
            Messages::Each(each) => each.data.len(),
        }
    }

    /// Every value in full, one per entry of `client_ids` (an entry that is not well-formed gets
    /// an empty value): what the host sends, for tests and tools that look at whole messages.
    pub fn render(&self, client_ids: &PackedStrings) -> PackedStrings {
        let (prefix, suffix) = match self {
            Messages::Each(each) => return each.clone(),
            Messages::AroundClientId { prefix, suffix } => (prefix, suffix),
        };
        let mut values = PackedStrings::with_capacity(client_ids.len(), self.bytes(client_ids));
        for id in client_ids.iter() {
            if let Some(id) = id {
                values.data.extend_from_slice(prefix.as_bytes());
                values.data.extend_from_slice(id.as_bytes());
                values.data.extend_from_slice(suffix.as_bytes());
            }
            values.seal();
        }
        values
    }
}

fn push_string_field(out: &mut String, name: &str, value: &str) {
    out.push('"');
    out.push_str(name);
    out.push_str("\":\"");
    out.push_str(&json_contents(value));
    out.push_str("\",");
}

fn push_integer_field(out: &mut String, name: &str, value: i64) {
    out.push('"');
    out.push_str(name);
    out.push_str("\":");
    out.push_str(&value.to_string());
    out.push(',');
}

fn needs_escape(value: &str) -> bool {
    value.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

/// `value` as the inside of a JSON string literal (without the quotes): itself unless it needs
/// escaping.
fn json_contents(value: &str) -> Cow<'_, str> {
    if !needs_escape(value) {
        return Cow::Borrowed(value);
    }
    let quoted = serde_json::to_string(value).expect("serialising a str cannot fail");
    Cow::Owned(quoted[1..quoted.len() - 1].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn campaign() -> Campaign {
        Campaign {
            restaurant_id: "r-1".into(),
            adv_campaign_id: "c-1".into(),
            adv_campaign_content: "50% off \"today\"\n\\ only".into(),
            adv_campaign_owner: "Иванов".into(),
            adv_campaign_owner_contact: "owner@example.com".into(),
            adv_campaign_datetime_start: 10,
            adv_campaign_datetime_end: 20,
            datetime_created: 5,
        }
    }

    #[test]
    fn renders_exactly_the_ten_contract_fields() {
        let template = MessageTemplate::new(&campaign(), 15);
        let mut out = Vec::new();
        template.render_into("client-\"7\"", &mut out);
        let message: Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(
            message,
            json!({
                "restaurant_id": "r-1",
                "adv_campaign_id": "c-1",
                "adv_campaign_content": "50% off \"today\"\n\\ only",
                "adv_campaign_owner": "Иванов",
                "adv_campaign_owner_contact": "owner@example.com",
                "adv_campaign_datetime_start": 10,
                "adv_campaign_datetime_end": 20,
                "datetime_created": 5,
                "trigger_datetime_created": 15,
                "client_id": "client-\"7\"",
            })
        );
    }

    #[test]
    fn predicts_the_length_of_unescaped_messages() {
        let template = MessageTemplate::new(&campaign(), 15);
        let mut out = Vec::new();
        template.render_into("abc", &mut out);
        assert_eq!(out.len(), template.message_len("abc"));
        out.clear();
        template.render_into("a\"b", &mut out);
        assert_eq!(out.len(), template.message_len("a\"b"));
    }

    fn rendered_one_by_one(template: &MessageTemplate, ids: &[&str]) -> PackedStrings {
        let mut values = PackedStrings::default();
        for id in ids {
            template.render_into(id, &mut values.data);
            values.seal();
        }
        values
    }

    #[test]
    fn plain_client_ids_leave_as_the_text_around_them_and_render_to_the_same_values() {
        let ids = ["a", "bé", "c-42"];
        let client_ids: PackedStrings = ids.into_iter().collect();
        let messages = MessageTemplate::new(&campaign(), 15).messages(&client_ids);
        assert!(matches!(messages, Messages::AroundClientId { .. }));
        let want = rendered_one_by_one(&MessageTemplate::new(&campaign(), 15), &ids);
        assert_eq!(messages.render(&client_ids), want);
        assert_eq!(messages.bytes(&client_ids), want.data.len());
    }

    #[test]
    fn a_client_id_that_needs_escaping_makes_every_value_travel_in_full() {
        let ids = ["a", "b\"c"];
        let client_ids: PackedStrings = ids.into_iter().collect();
        let messages = MessageTemplate::new(&campaign(), 15).messages(&client_ids);
        let want = rendered_one_by_one(&MessageTemplate::new(&campaign(), 15), &ids);
        assert_eq!(messages, Messages::Each(want.clone()));
        assert_eq!(messages.render(&client_ids), want);
    }
}
