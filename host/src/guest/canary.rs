//! The built-in canary batch a new guest must pass before it serves: the contract's sample event,
//! an expired one and a bad one, against the sample subscribers.

use std::sync::Arc;

use guest_transform::{PackedStrings, SkipReason};

use super::{Budget, InputEvent, LoadedGuest, Outcome, ResumePoint, SubscriberDirectory};

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
    fn clients_page(
        &self,
        restaurant_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> PackedStrings {
        if restaurant_id != RESTAURANT {
            return PackedStrings::default();
        }
        let mut clients = CLIENTS;
        clients.sort_unstable();
        clients
            .into_iter()
            .filter(|client| after.is_none_or(|after| *client > after))
            .take(limit)
            .collect()
    }
}

/// Enough for the whole canary batch.
const AMPLE: Budget = Budget {
    outputs: 1_000,
    bytes: 1 << 20,
};

fn event(end: i64) -> InputEvent {
    let value = format!(
        r#"{{"restaurant_id":"{RESTAURANT}","adv_campaign_id":"canary","adv_campaign_content":"first campaign","adv_campaign_owner":"Ivanov Ivan Ivanovich","adv_campaign_owner_contact":"iiivanov@restaurant.ru","adv_campaign_datetime_start":1678615562,"adv_campaign_datetime_end":{end},"datetime_created":1678879362}}"#
    );
    InputEvent {
        key: Some(b"first_message".to_vec()),
        value: value.into_bytes(),
        resume: None,
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
            resume: None,
        },
    ];
    let outcomes = instance
        .transform_batch(NOW, &events, AMPLE)
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
    for (client, message) in clients.iter().zip(crate::records::messages(fan_out)) {
        let message = message.value();
        let value: serde_json::Value =
            serde_json::from_str(&message).map_err(|e| format!("a message is not JSON: {e}"))?;
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
    check_parts(&mut instance, clients[0], clients[1])
}

/// The sample event in two parts of one client each: the second goes on after the first, at the
/// first part's `now`.
fn check_parts(
    instance: &mut super::GuestInstance,
    first: &str,
    second: &str,
) -> Result<(), String> {
    let one = Budget {
        outputs: 1,
        bytes: 1 << 20,
    };
    let part = |instance: &mut super::GuestInstance, now, event| {
        let outcome = instance
            .transform_batch(now, &[event], one)
            .map_err(|e| e.to_string())?
            .remove(0);
        match outcome {
            Outcome::FanOut(fan_out) => Ok(fan_out),
            other => Err(format!("a part of the sample event gave {other:?}")),
        }
    };
    let head = part(instance, NOW, event(2_659_207_116))?;
    let reached: Vec<&str> = head.client_ids.iter().flatten().collect();
    if reached != [first] || head.continue_after.as_deref() != Some(first) {
        return Err(format!(
            "with a budget of one output, the sample event reached {reached:?} and goes on \
             after {:?}, not [{first:?}] and after {first:?}",
            head.continue_after
        ));
    }
    // Resumed long after the campaign ended: the first part's `now` still decides.
    let mut resumed = event(NOW + 10);
    resumed.resume = Some(ResumePoint {
        after: first.to_owned(),
        now: NOW,
    });
    let tail = part(instance, NOW + 1_000, resumed)?;
    let reached: Vec<&str> = tail.client_ids.iter().flatten().collect();
    if reached != [second]
        || tail.continue_after.is_some()
        || tail.trigger_datetime_created != NOW as i32
    {
        return Err(format!(
            "resumed after {first:?} at the first part's now, the sample event reached \
             {reached:?} at {} and goes on after {:?}, not [{second:?}] at {NOW}, complete",
            tail.trigger_datetime_created, tail.continue_after
        ));
    }
    Ok(())
}
