//! The output message: the contract's ten fields as one JSON object per client.
//!
//! Everything but `client_id` is the same for all clients of a campaign, so it is serialised once
//! per event into a template; each client then costs one copy of the template plus its id.

use crate::event::Campaign;
use crate::prelude::*;

/// The serialised shared part of one campaign's messages.
pub struct MessageTemplate {
    /// `{"restaurant_id":…,…,"trigger_datetime_created":N,"client_id":"`
    head: Vec<u8>,
}

const TAIL: &[u8] = b"\"}";

impl MessageTemplate {
    pub fn new(campaign: &Campaign, trigger_datetime_created: i32) -> Self {
        let mut head = Vec::with_capacity(
            256 + campaign.adv_campaign_content.len() + campaign.adv_campaign_owner.len(),
        );
        head.push(b'{');
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
        head.extend_from_slice(b"\"client_id\":\"");
        Self { head }
    }

    /// The bytes one message will take for a client id of `client_id_len` bytes, barring escapes.
    pub fn message_len(&self, client_id_len: usize) -> usize {
        self.head.len() + client_id_len + TAIL.len()
    }

    /// Appends the message for `client_id` to `out`.
    pub fn render_into(&self, client_id: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head);
        push_escaped_contents(out, client_id);
        out.extend_from_slice(TAIL);
    }
}

fn push_string_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":\"");
    push_escaped_contents(out, value);
    out.extend_from_slice(b"\",");
}

fn push_integer_field(out: &mut Vec<u8>, name: &str, value: i64) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(value.to_string().as_bytes());
    out.push(b',');
}

/// Appends `value` as the inside of a JSON string literal (without the quotes).
fn push_escaped_contents(out: &mut Vec<u8>, value: &str) {
    let needs_escape = value.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\');
    if !needs_escape {
        out.extend_from_slice(value.as_bytes());
        return;
    }
    let quoted = serde_json::to_string(value).expect("serialising a str cannot fail");
    out.extend_from_slice(&quoted.as_bytes()[1..quoted.len() - 1]);
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
        assert_eq!(out.len(), template.message_len(3));
    }

    #[test]
    fn messages_are_appended_back_to_back() {
        let template = MessageTemplate::new(&campaign(), 15);
        let mut out = Vec::new();
        template.render_into("a", &mut out);
        let first_len = out.len();
        template.render_into("b", &mut out);
        let second: Value = serde_json::from_slice(&out[first_len..]).unwrap();
        assert_eq!(second["client_id"], "b");
    }
}
