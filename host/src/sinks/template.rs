//! Stored decisions in less space: when every message of a decision is the same text around its
//! own key (as the transform renders them: the client id is both the key and a field of the
//! value), the decision is stored as its keys and that text once, not as every value.
//!
//! The split is checked message by message, so that rendering the template gives back exactly
//! the values it was taken from; a decision whose messages do not fit one template keeps its
//! values.

use crate::records::{Frame, Message, Value};

/// The text before and after the key that every value of `messages` shares, if they share one;
/// in a value the transform rendered in full, the key's last occurrence in the first value is
/// taken as its place.
pub fn of<'a>(messages: &[Message<'a>]) -> Option<Frame<'a>> {
    let first = messages.first()?;
    let value = match first.value {
        // The guest sent them as one frame: nothing to check but that they share it.
        Value::AroundKey(frame) => {
            return messages
                .iter()
                .all(|message| {
                    matches!(message.value, Value::AroundKey(other) if other.same_text(&frame))
                })
                .then_some(frame);
        }
        Value::Full(value) => value,
    };
    if first.key.is_empty() {
        return None;
    }
    let at = value.rfind(first.key)?;
    let frame = Frame {
        prefix: &value[..at],
        suffix: &value[at + first.key.len()..],
    };
    messages
        .iter()
        .all(|message| renders(&frame, message))
        .then_some(frame)
}

/// Whether `message` is a value in full that `frame` gives back for its key.
fn renders(frame: &Frame<'_>, message: &Message<'_>) -> bool {
    let Value::Full(value) = message.value else {
        return false;
    };
    value.len() == frame.len_with(message.key)
        && value.starts_with(frame.prefix)
        && value.ends_with(frame.suffix)
        && value[frame.prefix.len()..value.len() - frame.suffix.len()] == *message.key
}

/// The values of a decision stored with `prefix` and `suffix`, one per key.
pub fn render(prefix: &str, suffix: &str, keys: &[String]) -> Vec<String> {
    let frame = Frame { prefix, suffix };
    keys.iter().map(|key| frame.render(key)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<Message<'a>> {
        pairs
            .iter()
            .map(|&(key, value)| Message {
                key,
                value: Value::Full(value),
            })
            .collect()
    }

    #[test]
    fn messages_that_differ_only_in_their_key_share_a_template_that_renders_them_again() {
        let values = [
            ("c1", r#"{"restaurant_id":"c1x","client_id":"c1","t":5}"#),
            ("c22", r#"{"restaurant_id":"c1x","client_id":"c22","t":5}"#),
            ("é", r#"{"restaurant_id":"c1x","client_id":"é","t":5}"#),
        ];
        let stored = messages(&values);
        let template = of(&stored).unwrap();
        // The last occurrence: the restaurant id also holds the first key.
        assert_eq!(template.prefix, r#"{"restaurant_id":"c1x","client_id":""#);
        assert_eq!(template.suffix, r#"","t":5}"#);
        let keys: Vec<String> = values.iter().map(|(k, _)| k.to_string()).collect();
        let rendered = render(template.prefix, template.suffix, &keys);
        assert_eq!(rendered, values.map(|(_, v)| v.to_owned()));
    }

    #[test]
    fn messages_framed_by_the_guest_are_their_frame() {
        let frame = Frame {
            prefix: "{\"client_id\":\"",
            suffix: "\"}",
        };
        let framed = |key| Message {
            key,
            value: Value::AroundKey(frame),
        };
        assert_eq!(of(&[framed("a"), framed("b")]), Some(frame));
        let other = Frame {
            prefix: "<",
            suffix: ">",
        };
        let mixed = [
            framed("a"),
            Message {
                key: "b",
                value: Value::AroundKey(other),
            },
        ];
        assert_eq!(of(&mixed), None);
    }

    #[test]
    fn messages_that_differ_elsewhere_keep_their_values() {
        assert_eq!(of(&[]), None);
        let other_field = messages(&[("a", "{a,1}"), ("b", "{b,2}")]);
        assert_eq!(of(&other_field), None);
        let key_absent = messages(&[("a", "{a}"), ("b", "{c}")]);
        assert_eq!(of(&key_absent), None);
        let empty_key = messages(&[("", "{}"), ("", "{}")]);
        assert_eq!(of(&empty_key), None);
        // Same lengths and ends, another middle.
        let middle = messages(&[("ab", "<ab>"), ("cd", "<ce>")]);
        assert_eq!(of(&middle), None);
    }
}
