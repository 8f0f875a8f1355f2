//! Stored decisions in less space: when every message of a decision is the same text around its
//! own key (as the transform renders them: the client id is both the key and a field of the
//! value), the decision is stored as its keys and that text once, not as every value.
//!
//! The split is checked message by message, so that rendering the template gives back exactly
//! the values it was taken from; a decision whose messages do not fit one template keeps its
//! values.

use crate::records::{Message, Value};

/// The text before and after the key, shared by every value of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template<'a> {
    pub prefix: &'a str,
    pub suffix: &'a str,
}

impl<'a> Template<'a> {
    /// The template of `messages`, if they share one; the key's last occurrence in the first
    /// value is taken as its place.
    pub fn of(messages: &[Message<'a>]) -> Option<Self> {
        let first = messages.first()?;
        let value = match first.value {
            // The guest sent them as one frame: nothing to check.
            Value::AroundKey(frame) => {
                return messages
                    .iter()
                    .all(|message| message.value == first.value)
                    .then_some(Template {
                        prefix: frame.prefix,
                        suffix: frame.suffix,
                    });
            }
            Value::Full(value) => value,
        };
        if first.key.is_empty() {
            return None;
        }
        let at = value.rfind(first.key)?;
        let template = Template {
            prefix: &value[..at],
            suffix: &value[at + first.key.len()..],
        };
        messages
            .iter()
            .all(|message| template.renders(message))
            .then_some(template)
    }

    fn renders(&self, message: &Message<'_>) -> bool {
        let Value::Full(value) = message.value else {
            return false;
        };
        value.len() == self.prefix.len() + message.key.len() + self.suffix.len()
            && value.starts_with(self.prefix)
            && value.ends_with(self.suffix)
            && value[self.prefix.len()..value.len() - self.suffix.len()] == *message.key
    }
}

/// The values of a decision stored with `prefix` and `suffix`, one per key.
pub fn render(prefix: &str, suffix: &str, keys: &[String]) -> Vec<String> {
    keys.iter()
        .map(|key| {
            let mut value = String::with_capacity(prefix.len() + key.len() + suffix.len());
            value.push_str(prefix);
            value.push_str(key);
            value.push_str(suffix);
            value
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Frame;

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
        let template = Template::of(&stored).unwrap();
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
        let template = Template::of(&[framed("a"), framed("b")]).unwrap();
        assert_eq!(
            (template.prefix, template.suffix),
            (frame.prefix, frame.suffix)
        );
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
        assert_eq!(Template::of(&mixed), None);
    }

    #[test]
    fn messages_that_differ_elsewhere_keep_their_values() {
        assert_eq!(Template::of(&[]), None);
        let other_field = messages(&[("a", "{a,1}"), ("b", "{b,2}")]);
        assert_eq!(Template::of(&other_field), None);
        let key_absent = messages(&[("a", "{a}"), ("b", "{c}")]);
        assert_eq!(Template::of(&key_absent), None);
        let empty_key = messages(&[("", "{}"), ("", "{}")]);
        assert_eq!(Template::of(&empty_key), None);
        // Same lengths and ends, another middle.
        let middle = messages(&[("ab", "<ab>"), ("cd", "<ce>")]);
        assert_eq!(Template::of(&middle), None);
    }
}
