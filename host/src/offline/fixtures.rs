//! The offline runner's input files: events as JSON lines, subscribers as CSV.

use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::guest::InputEvent;
use crate::subscribers::{SubscriberTable, TableLoader};

/// One line of an events file. Exactly one of the `value…` fields is given:
/// - `value`: any JSON; the event's bytes are that JSON text exactly as written in the line;
/// - `value_text`: a string whose UTF-8 bytes are the event (for values that are not JSON);
/// - `value_hex`: the event's bytes in hex (for values that are not even UTF-8).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine<'a> {
    #[serde(default)]
    key: Option<String>,
    #[serde(borrow, default, deserialize_with = "present")]
    value: Option<&'a RawValue>,
    #[serde(default)]
    value_text: Option<String>,
    #[serde(default)]
    value_hex: Option<String>,
}

/// Keeps `"value": null` as the JSON text `null` (a bad event worth testing), not as absent.
fn present<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// Reads an events file: one JSON object per line, blank lines and lines starting with `#` ignored.
pub fn read_events(path: &Path) -> anyhow::Result<Vec<InputEvent>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading events file {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .map(|(index, line)| {
            parse_event_line(line).with_context(|| format!("{}:{}", path.display(), index + 1))
        })
        .collect()
}

fn parse_event_line(line: &str) -> anyhow::Result<InputEvent> {
    let parsed: EventLine = serde_json::from_str(line).context("not a valid event line")?;
    let value = match (parsed.value, parsed.value_text, parsed.value_hex) {
        (Some(json), None, None) => json.get().as_bytes().to_vec(),
        (None, Some(text), None) => text.into_bytes(),
        (None, None, Some(hex)) => decode_hex(&hex)?,
        _ => bail!("give exactly one of `value`, `value_text`, `value_hex`"),
    };
    Ok(InputEvent {
        key: parsed.key.map(String::into_bytes),
        value,
        resume: None,
    })
}

fn decode_hex(hex: &str) -> anyhow::Result<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        bail!("`value_hex` has an odd number of digits");
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&hex[i..i + 2], 16)
                .with_context(|| format!("`value_hex` has a bad digit pair at {i}"))
        })
        .collect()
}

/// Reads a subscriber table from a CSV file into the same structure the service's live cache
/// serves. The header names at least `client_id` and `restaurant_id`; an `id` column (as
/// `\copy subscribers_restaurants to … csv header` writes it) gives the row ids, otherwise rows
/// are numbered from 1. Other columns are ignored.
pub fn read_subscribers_csv(path: &Path) -> anyhow::Result<SubscriberTable> {
    let mut reader = csv::Reader::from_path(path)
        .with_context(|| format!("reading subscribers file {}", path.display()))?;
    let headers = reader.headers()?.clone();
    let position = |name: &str| headers.iter().position(|h| h == name);
    let column = |name: &str| {
        position(name)
            .with_context(|| format!("{}: no `{name}` column in the header", path.display()))
    };
    let (client_column, restaurant_column) = (column("client_id")?, column("restaurant_id")?);
    let id_column = position("id");
    let mut table = TableLoader::default();
    for (index, record) in reader.records().enumerate() {
        let row = index + 1;
        let record = record.with_context(|| format!("{}: row {row}", path.display()))?;
        let id = match id_column {
            Some(column) => record[column]
                .parse()
                .with_context(|| format!("{}: row {row}: `id` is not an int4", path.display()))?,
            None => i32::try_from(row).context("more than 2^31 rows")?,
        };
        table.upsert(id, &record[client_column], &record[restaurant_column]);
    }
    Ok(table.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_line_keeps_json_bytes_exactly_as_written() {
        let event = parse_event_line(r#"{"key": "k", "value": {"a":  1, "b" :[2]}}"#).unwrap();
        assert_eq!(event.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(event.value, br#"{"a":  1, "b" :[2]}"#);
    }

    #[test]
    fn an_event_line_can_carry_text_or_raw_bytes() {
        let text = parse_event_line(r#"{"value_text": "not json"}"#).unwrap();
        assert_eq!((text.key, text.value), (None, b"not json".to_vec()));
        let raw = parse_event_line(r#"{"value_hex": "ff00"}"#).unwrap();
        assert_eq!(raw.value, vec![0xff, 0x00]);
    }

    #[test]
    fn an_event_line_needs_exactly_one_value() {
        assert!(parse_event_line(r#"{"key": "k"}"#).is_err());
        assert!(parse_event_line(r#"{"value": 1, "value_text": "x"}"#).is_err());
        assert!(parse_event_line(r#"{"value_hex": "f"}"#).is_err());
    }
}
