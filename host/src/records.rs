//! The records both sinks receive, derived from one guest fan-out without recomputing anything:
//! a Kafka message (key = client id) and a `subscribers_feedback` row per client.

use std::borrow::Cow;

use guest_transform::{Campaign, Messages};

use crate::guest::FanOut;
use serde::Serialize;

/// Header names on output and dead-letter messages.
pub mod headers {
    use crate::guest::GuestIdentity;

    pub const GUEST_VERSION: &str = "campaign-push-guest-version";
    pub const GUEST_SHA256: &str = "campaign-push-guest-sha256";
    pub const REASON: &str = "campaign-push-dead-letter-reason";
    pub const SOURCE_TOPIC: &str = "campaign-push-source-topic";
    pub const SOURCE_PARTITION: &str = "campaign-push-source-partition";
    pub const SOURCE_OFFSET: &str = "campaign-push-source-offset";
    /// On a dead letter sent without its value because the value would not fit in a message.
    pub const VALUE_OMITTED: &str = "campaign-push-dead-letter-value-omitted";

    /// The bytes the headers of an output message take, as the producer counts them against
    /// `message.max.bytes` (names and values).
    pub fn output_bytes(guest: &GuestIdentity) -> usize {
        GUEST_VERSION.len() + guest.version.len() + GUEST_SHA256.len() + guest.sha256.len()
    }
}

/// One output message: Kafka key and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub key: &'a str,
    pub value: Value<'a>,
}

/// A message's value: in full, or as the text around its key, which all the messages of a
/// fan-out share (see `messages` in `wit/transform.wit`). A framed value is rendered only where
/// its bytes are needed, into the producer's buffer, instead of once per client in the guest and
/// copied from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Full(&'a str),
    AroundKey(Frame<'a>),
}

/// The text before and after the key in a framed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub prefix: &'a str,
    pub suffix: &'a str,
}

impl Frame<'_> {
    /// The same text, found without comparing it when both borrow it from the same place.
    pub fn same_text(&self, other: &Frame<'_>) -> bool {
        (std::ptr::eq(self.prefix, other.prefix) && std::ptr::eq(self.suffix, other.suffix))
            || (self.prefix == other.prefix && self.suffix == other.suffix)
    }

    /// The length of the value for `key`.
    pub fn len_with(&self, key: &str) -> usize {
        self.prefix.len() + key.len() + self.suffix.len()
    }

    /// Appends the value for `key` to `out`.
    pub fn render_into(&self, key: &str, out: &mut String) {
        out.push_str(self.prefix);
        out.push_str(key);
        out.push_str(self.suffix);
    }

    /// The value for `key`.
    pub fn render(&self, key: &str) -> String {
        let mut value = String::with_capacity(self.len_with(key));
        self.render_into(key, &mut value);
        value
    }
}

impl<'a> Message<'a> {
    /// The value's length in bytes.
    pub fn value_len(&self) -> usize {
        match self.value {
            Value::Full(value) => value.len(),
            Value::AroundKey(frame) => frame.len_with(self.key),
        }
    }

    /// The value, rendered into `scratch` if it is framed.
    pub fn value_in<'s>(&'s self, scratch: &'s mut String) -> &'s str {
        match self.value {
            Value::Full(value) => value,
            Value::AroundKey(frame) => {
                scratch.clear();
                frame.render_into(self.key, scratch);
                scratch
            }
        }
    }

    /// The value in full.
    pub fn value(&self) -> Cow<'a, str> {
        match self.value {
            Value::Full(value) => Cow::Borrowed(value),
            Value::AroundKey(frame) => Cow::Owned(frame.render(self.key)),
        }
    }
}

/// One `subscribers_feedback` row without its `id` (the sequence assigns it) and with `feedback`
/// NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FeedbackRow<'a> {
    pub restaurant_id: &'a str,
    pub adv_campaign_id: &'a str,
    pub adv_campaign_content: &'a str,
    pub adv_campaign_owner: &'a str,
    pub adv_campaign_owner_contact: &'a str,
    pub adv_campaign_datetime_start: i64,
    pub adv_campaign_datetime_end: i64,
    pub datetime_created: i64,
    pub client_id: &'a str,
    pub trigger_datetime_created: i32,
    pub feedback: Option<&'a str>,
}

/// The messages of a fan-out, in client order.
///
/// Relies on the fan-out having been checked at the boundary (see `guest::Outcome`): entries that
/// are not well-formed would be skipped here, and that check rejects such fan-outs first.
pub fn messages(fan_out: &FanOut) -> impl Iterator<Item = Message<'_>> {
    let keys = fan_out.client_ids.iter().flatten();
    let values: Box<dyn Iterator<Item = Value<'_>>> = match &fan_out.messages {
        Messages::AroundClientId { prefix, suffix } => {
            let frame = Frame { prefix, suffix };
            Box::new(std::iter::repeat(Value::AroundKey(frame)))
        }
        Messages::Each(each) => Box::new(each.iter().flatten().map(Value::Full)),
    };
    keys.zip(values).map(|(key, value)| Message { key, value })
}

/// The feedback rows of a fan-out, in client order.
pub fn rows(fan_out: &FanOut) -> impl Iterator<Item = FeedbackRow<'_>> {
    let campaign: &Campaign = &fan_out.campaign;
    fan_out
        .client_ids
        .iter()
        .flatten()
        .map(move |client_id| FeedbackRow {
            restaurant_id: &campaign.restaurant_id,
            adv_campaign_id: &campaign.adv_campaign_id,
            adv_campaign_content: &campaign.adv_campaign_content,
            adv_campaign_owner: &campaign.adv_campaign_owner,
            adv_campaign_owner_contact: &campaign.adv_campaign_owner_contact,
            adv_campaign_datetime_start: campaign.adv_campaign_datetime_start,
            adv_campaign_datetime_end: campaign.adv_campaign_datetime_end,
            datetime_created: campaign.datetime_created,
            client_id,
            trigger_datetime_created: fan_out.trigger_datetime_created,
            feedback: None,
        })
}
