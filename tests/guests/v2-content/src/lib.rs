//! Version 2 of the transform, as a team would ship it: the offer text is formatted differently
//! (`[v2] ` before `adv_campaign_content`), behind a new version string. Everything else is the
//! real transform, so both sinks must see exactly v1's or v2's output for every event.
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use guest_transform::component::{Component, Guest, types};
use serde_json::Value;

/// What the tests look for in the output to tell v2 from v1.
const CONTENT_PREFIX: &str = "[v2] ";

struct V2;

impl Guest for V2 {
    fn version() -> String {
        "guest-transform 0.2.0 (offer prefixed with [v2])".into()
    }

    fn transform_batch(
        now: i64,
        mut events: Vec<types::InputEvent>,
        budget: types::Budget,
    ) -> Result<Vec<types::EventOutcome>, types::BatchError> {
        events.iter_mut().for_each(reformat_content);
        Component::transform_batch(now, events, budget)
    }
}

/// Rewrites the offer text of an event that is a JSON object with a string content; any other
/// event is left for the real transform to judge.
fn reformat_content(event: &mut types::InputEvent) {
    let Ok(mut value) = serde_json::from_slice::<Value>(&event.value) else {
        return;
    };
    if let Some(Value::String(content)) = value.get_mut("adv_campaign_content") {
        *content = format!("{CONTENT_PREFIX}{content}");
        if let Ok(bytes) = serde_json::to_vec(&value) {
            event.value = bytes;
        }
    }
}

guest_transform::export_transform!(V2);
