//! The built-in canary batch a new guest must pass before it serves: the contract's sample event,
//! an expired one and a bad one, against the sample subscribers.

use std::sync::Arc;

use guest_transform::{PackedStrings, SkipReason};

use super::{InputEvent, LoadedGuest, Outcome, SubscriberDirectory};

const NOW: i64 = 1_700_000_000;
const RESTAURANT: &str = "123e4567-e89b-12d3-a456-426614174000";
const CLIENTS: [&str; 3] = [
    "223e4567-e89b-12d3-a456-426614174000",
    "323e4567-e89b-12d3-a456-426614174000",
    "223e4567-e89b-12d3-a456-426614174000",
];
const OUTPUT_FIELDS: [&str; 10] = [
    "restaurant_id",
    "adv_campaign_id",
    "adv_campaign_content",
    "adv_campaign_owner",
    "adv_campaign_owner_contact",
    "adv_campaign_datetime_start",
    "adv_campaign_datetime_end",
    "datetime_created",
    "client_id",
    "trigger_datetime_created",
];

struct CanarySubscribers;

impl SubscriberDirectory for CanarySubscribers {
    fn clients_of(&self, restaurant_id: &str) -> PackedStrings {
        if restaurant_id == RESTAURANT {
            CLIENTS.into_iter().collect()
        } else {
            PackedStrings::default()
        }
    }
}

fn event(end: i64) -> InputEvent {
    let value = format!(
        r#"{{"restaurant_id":"{RESTAURANT}","adv_campaign_id":"canary","adv_campaign_content":"first campaign","adv_campaign_owner":"Ivanov Ivan Ivanovich","adv_campaign_owner_contact":"iiivanov@restaurant.ru","adv_campaign_datetime_start":1678615562,"adv_campaign_datetime_end":{end},"datetime_created":1678879362}}"#
    );
    InputEvent {
        key: Some(b"first_message".to_vec()),
        value: value.into_bytes(),
    }
}

/// Runs the canary batch on a fresh instance of `guest`; `Err` says what was wrong.
pub fn check(guest: &LoadedGuest) -> Result<(), String> {
    let mut instance = guest
        .instantiate(Arc::new(CanarySubscribers))
        .map_err(|e| e.to_string())?;
    let events = [
        event(2_659_207_116),
        event(NOW - 1),
        InputEvent {
            key: None,
            value: b"not json".to_vec(),
        },
    ];
    let outcomes = instance
        .transform_batch(NOW, &events)
        .map_err(|e| e.to_string())?;
    let Outcome::FanOut(fan_out) = &outcomes[0] else {
        return Err(format!(
            "the sample event gave {:?}, not a fan-out",
            outcomes[0]
        ));
    };
    let clients: Vec<&str> = fan_out.client_ids.iter().flatten().collect();
    if clients != CLIENTS[..2] {
        return Err(format!(
            "the sample event reached {clients:?}, not {:?}",
            &CLIENTS[..2]
        ));
    }
    for (client, message) in clients.iter().zip(fan_out.messages.iter().flatten()) {
        let value: serde_json::Value =
            serde_json::from_str(message).map_err(|e| format!("a message is not JSON: {e}"))?;
        let fields = value.as_object().ok_or("a message is not a JSON object")?;
        if fields.len() != OUTPUT_FIELDS.len()
            || !OUTPUT_FIELDS.iter().all(|f| fields.contains_key(*f))
        {
            return Err(format!(
                "a message does not have the ten output fields: {message}"
            ));
        }
        if fields["client_id"] != *client || fields["trigger_datetime_created"] != NOW {
            return Err(format!(
                "a message has the wrong client or trigger time: {message}"
            ));
        }
    }
    if outcomes[1] != Outcome::Skipped(SkipReason::Expired) {
        return Err(format!("an expired event gave {:?}", outcomes[1]));
    }
    if !matches!(outcomes[2], Outcome::Rejected(_)) {
        return Err(format!("a bad event gave {:?}", outcomes[2]));
    }
    Ok(())
}
