//! Strict parsing of one campaign event (the Kafka value) into a [`Campaign`].
//!
//! Every deviation from the contract is a [`BadEvent`] whose message is written to the dead-letter
//! topic, so the messages name the field and say what was wrong with it.

use crate::prelude::*;
use core::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

/// A valid campaign event. Field names and meanings are those of the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    pub restaurant_id: String,
    pub adv_campaign_id: String,
    pub adv_campaign_content: String,
    pub adv_campaign_owner: String,
    pub adv_campaign_owner_contact: String,
    pub adv_campaign_datetime_start: i64,
    pub adv_campaign_datetime_end: i64,
    pub datetime_created: i64,
}

/// Why an event was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadEvent {
    /// The value is not valid UTF-8 JSON.
    NotJson(String),
    /// The value is JSON but not an object.
    NotAnObject(JsonKind),
    /// The object is malformed in a way JSON allows but the contract does not (a repeated field).
    InvalidObject(String),
    Missing(&'static str),
    Null(&'static str),
    WrongType {
        field: &'static str,
        expected: JsonKind,
        found: JsonKind,
    },
    /// A number with a fraction or an exponent where an integer is required.
    NotAnInteger {
        field: &'static str,
        text: String,
    },
    /// An integer outside `0..=i64::MAX`.
    OutOfRange {
        field: &'static str,
        text: String,
    },
    StartAfterEnd {
        start: i64,
        end: i64,
    },
    /// A string holding U+0000, which PostgreSQL's `text` cannot store.
    NulCharacter(&'static str),
    /// An id longer than [`MAX_ID_BYTES`]: the service's indexes could not hold it.
    IdTooLong {
        field: &'static str,
        bytes: usize,
    },
}

/// The longest `restaurant_id` and `adv_campaign_id` accepted, in UTF-8 bytes. The delivery
/// ledger's primary key holds (campaign id, client id) in one B-tree entry of at most ~2.7 kB;
/// this leaves the client id (from `subscribers_restaurants`) well over a kilobyte.
pub const MAX_ID_BYTES: usize = 1024;

impl fmt::Display for BadEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadEvent::NotJson(error) => write!(f, "not valid JSON: {error}"),
            BadEvent::NotAnObject(kind) => write!(f, "not a JSON object: got {kind}"),
            BadEvent::InvalidObject(error) => write!(f, "invalid event object: {error}"),
            BadEvent::Missing(field) => write!(f, "field `{field}` is missing"),
            BadEvent::Null(field) => write!(f, "field `{field}` is null"),
            BadEvent::WrongType {
                field,
                expected,
                found,
            } => write!(f, "field `{field}` must be {expected}, got {found}"),
            BadEvent::NotAnInteger { field, text } => {
                write!(f, "field `{field}` must be an integer, got {text}")
            }
            BadEvent::OutOfRange { field, text } => write!(
                f,
                "field `{field}` is out of range: {text} is not within 0..={}",
                i64::MAX
            ),
            BadEvent::StartAfterEnd { start, end } => write!(
                f,
                "adv_campaign_datetime_start ({start}) is after adv_campaign_datetime_end ({end})"
            ),
            BadEvent::NulCharacter(field) => write!(
                f,
                "field `{field}` contains the character U+0000, which PostgreSQL text cannot store"
            ),
            BadEvent::IdTooLong { field, bytes } => write!(
                f,
                "field `{field}` is {bytes} bytes long; ids longer than {MAX_ID_BYTES} bytes \
                 cannot be indexed"
            ),
        }
    }
}

/// The kind of a JSON value, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    Null,
    Bool,
    Number,
    Integer,
    String,
    Array,
    Object,
}

impl JsonKind {
    /// Classifies a syntactically valid JSON text by its first byte.
    fn of(raw: &str) -> JsonKind {
        match raw.trim_start().as_bytes().first() {
            Some(b'n') => JsonKind::Null,
            Some(b't' | b'f') => JsonKind::Bool,
            Some(b'"') => JsonKind::String,
            Some(b'[') => JsonKind::Array,
            Some(b'{') => JsonKind::Object,
            _ => JsonKind::Number,
        }
    }
}

impl fmt::Display for JsonKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JsonKind::Null => "null",
            JsonKind::Bool => "a boolean",
            JsonKind::Number => "a number",
            JsonKind::Integer => "an integer",
            JsonKind::String => "a string",
            JsonKind::Array => "an array",
            JsonKind::Object => "an object",
        })
    }
}

/// The event's fields as raw JSON texts, so that "missing", "null" and "wrong type" can be told
/// apart. Unknown fields are ignored; a repeated known field is refused by serde.
#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    restaurant_id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    adv_campaign_id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    adv_campaign_content: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    adv_campaign_owner: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    adv_campaign_owner_contact: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    adv_campaign_datetime_start: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    adv_campaign_datetime_end: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    datetime_created: Option<&'a RawValue>,
}

/// Keeps a present `null` as `Some("null")`; only an absent field (via `default`) becomes `None`.
fn present<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// Parses and validates one event value.
pub fn parse_campaign(value: &[u8]) -> Result<Campaign, BadEvent> {
    let raw = parse_object(value)?;
    let campaign = Campaign {
        restaurant_id: string_field("restaurant_id", raw.restaurant_id)?,
        adv_campaign_id: string_field("adv_campaign_id", raw.adv_campaign_id)?,
        adv_campaign_content: string_field("adv_campaign_content", raw.adv_campaign_content)?,
        adv_campaign_owner: string_field("adv_campaign_owner", raw.adv_campaign_owner)?,
        adv_campaign_owner_contact: string_field(
            "adv_campaign_owner_contact",
            raw.adv_campaign_owner_contact,
        )?,
        adv_campaign_datetime_start: integer_field(
            "adv_campaign_datetime_start",
            raw.adv_campaign_datetime_start,
        )?,
        adv_campaign_datetime_end: integer_field(
            "adv_campaign_datetime_end",
            raw.adv_campaign_datetime_end,
        )?,
        datetime_created: integer_field("datetime_created", raw.datetime_created)?,
    };
    for (field, id) in [
        ("restaurant_id", &campaign.restaurant_id),
        ("adv_campaign_id", &campaign.adv_campaign_id),
    ] {
        if id.len() > MAX_ID_BYTES {
            return Err(BadEvent::IdTooLong {
                field,
                bytes: id.len(),
            });
        }
    }
    if campaign.adv_campaign_datetime_start > campaign.adv_campaign_datetime_end {
        return Err(BadEvent::StartAfterEnd {
            start: campaign.adv_campaign_datetime_start,
            end: campaign.adv_campaign_datetime_end,
        });
    }
    Ok(campaign)
}

fn parse_object(value: &[u8]) -> Result<RawEvent<'_>, BadEvent> {
    let text = core::str::from_utf8(value)
        .map_err(|error| BadEvent::NotJson(format!("invalid UTF-8: {error}")))?;
    let any: &RawValue =
        serde_json::from_str(text).map_err(|error| BadEvent::NotJson(error.to_string()))?;
    // serde would also accept a JSON array for a struct (by position), so check the kind first.
    match JsonKind::of(any.get()) {
        JsonKind::Object => serde_json::from_str(any.get())
            .map_err(|error| BadEvent::InvalidObject(error.to_string())),
        other => Err(BadEvent::NotAnObject(other)),
    }
}

fn string_field(field: &'static str, raw: Option<&RawValue>) -> Result<String, BadEvent> {
    let raw = present_value(field, raw)?;
    match JsonKind::of(raw.get()) {
        JsonKind::String => {
            let text: String =
                serde_json::from_str(raw.get()).expect("a JSON string literal is a string");
            if text.contains('\0') {
                return Err(BadEvent::NulCharacter(field));
            }
            Ok(text)
        }
        found => Err(BadEvent::WrongType {
            field,
            expected: JsonKind::String,
            found,
        }),
    }
}

fn integer_field(field: &'static str, raw: Option<&RawValue>) -> Result<i64, BadEvent> {
    let raw = present_value(field, raw)?;
    let text = raw.get();
    match JsonKind::of(text) {
        JsonKind::Number => {}
        found => {
            return Err(BadEvent::WrongType {
                field,
                expected: JsonKind::Integer,
                found,
            });
        }
    }
    // Read the digits ourselves: serde_json turns integers beyond u64 into floats, which would
    // make `1e3` look integral and a 30-digit integer look fractional.
    if text.contains(['.', 'e', 'E']) {
        return Err(BadEvent::NotAnInteger {
            field,
            text: text.to_owned(),
        });
    }
    match text.parse::<i64>() {
        Ok(value) if value >= 0 => Ok(value),
        _ => Err(BadEvent::OutOfRange {
            field,
            text: text.to_owned(),
        }),
    }
}

fn present_value<'a>(
    field: &'static str,
    raw: Option<&'a RawValue>,
) -> Result<&'a RawValue, BadEvent> {
    match raw {
        None => Err(BadEvent::Missing(field)),
        Some(raw) if JsonKind::of(raw.get()) == JsonKind::Null => Err(BadEvent::Null(field)),
        Some(raw) => Ok(raw),
    }
}

#[cfg(test)]
mod tests;
