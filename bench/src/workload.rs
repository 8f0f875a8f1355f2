//! The bench's data: restaurants and their subscribers, campaign events, and rows and messages
//! shaped like the service's outputs (for the ceilings).
//!
//! Ids are canonical UUID text, as in production, because the service's cache stores those as 16
//! bytes and anything else as a shared string: other ids would measure another memory layout.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

/// The offer text of every bench campaign: about the length of the contract's sample event's, so
/// that messages have the production size (~440 bytes of JSON).
pub const CONTENT: &str = "first campaign: 50% off every pizza this weekend, delivery included";
pub const OWNER: &str = "Ivanov Ivan Ivanovich";
pub const CONTACT: &str = "iiivanov@restaurant.ru";
/// `datetime_created` of every event (any valid time does).
const CREATED: i64 = 1_678_879_362;

pub fn restaurant_id(restaurant: u64) -> String {
    format!("{restaurant:08x}-0000-4000-8000-000000000000")
}

pub fn client_id(restaurant: u64, client: u64) -> String {
    format!("{restaurant:08x}-0001-4000-8000-{client:012x}")
}

/// Restaurants with a given number of subscribers each.
#[derive(Debug, Clone, Copy)]
pub struct Group {
    pub fan_out: usize,
    pub first: u64,
    pub restaurants: u64,
}

/// Which restaurants have how many subscribers: one group per measured fan-out, and the remaining
/// restaurants sharing the rest of the subscriptions, so that the cache holds about the
/// requested total over the requested number of restaurants.
#[derive(Debug, Clone)]
pub struct Layout {
    pub measured: Vec<Group>,
    pub filler: Option<Group>,
}

impl Layout {
    /// `measured`: (fan-out, restaurants) for each fan-out the bench drives.
    pub fn new(subscriptions: u64, restaurants: u64, measured: &[(usize, u64)]) -> Self {
        let mut next = 0;
        let measured: Vec<Group> = measured
            .iter()
            .map(|&(fan_out, count)| {
                let group = Group {
                    fan_out,
                    first: next,
                    restaurants: count,
                };
                next += count;
                group
            })
            .collect();
        let used: u64 = measured
            .iter()
            .map(|g| g.fan_out as u64 * g.restaurants)
            .sum();
        let rest = restaurants.saturating_sub(next);
        let filler = (rest > 0 && subscriptions > used).then(|| Group {
            fan_out: ((subscriptions - used) / rest).max(1) as usize,
            first: next,
            restaurants: rest,
        });
        Self { measured, filler }
    }

    pub fn group(&self, fan_out: usize) -> Option<Group> {
        self.measured.iter().copied().find(|g| g.fan_out == fan_out)
    }

    fn groups(&self) -> impl Iterator<Item = Group> + '_ {
        self.measured.iter().copied().chain(self.filler)
    }

    pub fn subscriptions(&self) -> u64 {
        self.groups()
            .map(|g| g.fan_out as u64 * g.restaurants)
            .sum()
    }

    pub fn restaurants(&self) -> u64 {
        self.groups().map(|g| g.restaurants).sum()
    }

    /// Every (client id, restaurant id) row, group by group.
    pub fn rows(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.groups().flat_map(|g| {
            (g.first..g.first + g.restaurants).flat_map(move |r| {
                let restaurant = restaurant_id(r);
                (0..g.fan_out as u64).map(move |c| (client_id(r, c), restaurant.clone()))
            })
        })
    }
}

/// Appends `rows` to `subscribers_restaurants` with one binary COPY.
pub async fn load_subscribers(
    client: &tokio_postgres::Client,
    rows: impl Iterator<Item = (String, String)>,
) -> Result<u64> {
    let sink = client
        .copy_in("COPY subscribers_restaurants (client_id, restaurant_id) FROM STDIN BINARY")
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::VARCHAR, Type::VARCHAR]);
    pin_mut!(writer);
    for (client_id, restaurant_id) in rows {
        writer
            .as_mut()
            .write(&[&client_id, &restaurant_id])
            .await
            .context("copying subscribers")?;
    }
    Ok(writer.finish().await?)
}

/// The campaign ids of one phase: `<tag>-e<index>`, so that a reader finds the event of any
/// output from its value alone, and no two phases (or runs) share a campaign (the service
/// delivers a pair once: a shared campaign would be skipped as already sent).
pub fn campaign_id(tag: &str, index: u64) -> String {
    format!("{tag}-e{index}")
}

/// Seconds since the epoch now: campaigns active from a day ago to a month ahead.
fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A valid, active campaign event (the contract's eight fields).
pub fn event(tag: &str, index: u64, restaurant: u64) -> String {
    let now = now_secs();
    format!(
        r#"{{"restaurant_id":"{}","adv_campaign_id":"{}","adv_campaign_content":"{CONTENT}","adv_campaign_owner":"{OWNER}","adv_campaign_owner_contact":"{CONTACT}","adv_campaign_datetime_start":{},"adv_campaign_datetime_end":{},"datetime_created":{CREATED}}}"#,
        restaurant_id(restaurant),
        campaign_id(tag, index),
        now - 86_400,
        now + 30 * 86_400,
    )
}

/// The events of a phase at one fan-out: event `i` goes to the group's restaurants in turn.
pub fn phase_events(tag: &str, group: Group, count: u64) -> impl Iterator<Item = String> + '_ {
    (0..count).map(move |i| event(tag, i, group.first + i % group.restaurants))
}

/// One output as the service would write it: the message's key and JSON value, and the row's
/// values in `subscribers_feedback`'s column order (without `id` and `feedback`).
pub struct Output {
    pub client_id: String,
    pub value: String,
    restaurant_id: String,
    campaign_id: String,
    start: i64,
    end: i64,
    trigger: i32,
}

impl Output {
    /// The `n`-th output of a stream of campaigns with fan-out `fan_out` (each message and row
    /// different, as the service's are).
    pub fn nth(tag: &str, n: u64, fan_out: u64) -> Self {
        let now = now_secs();
        let (event, client) = (n / fan_out, n % fan_out);
        let restaurant = event % 1_000;
        let restaurant_id = restaurant_id(restaurant);
        let campaign_id = campaign_id(tag, event);
        let client_id = client_id(restaurant, client);
        let (start, end, trigger) = (now - 86_400, now + 30 * 86_400, now as i32);
        // The guest's field order (guest-transform/src/message.rs).
        let value = format!(
            r#"{{"restaurant_id":"{restaurant_id}","adv_campaign_id":"{campaign_id}","adv_campaign_content":"{CONTENT}","adv_campaign_owner":"{OWNER}","adv_campaign_owner_contact":"{CONTACT}","adv_campaign_datetime_start":{start},"adv_campaign_datetime_end":{end},"datetime_created":{CREATED},"trigger_datetime_created":{trigger},"client_id":"{client_id}"}}"#
        );
        Self {
            client_id,
            value,
            restaurant_id,
            campaign_id,
            start,
            end,
            trigger,
        }
    }

    /// The COPY types of [`Output::row`].
    pub const ROW_TYPES: [Type; 10] = [
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::TEXT,
        Type::INT4,
    ];

    /// The ten values of the row, in the order of [`FEEDBACK_COLUMNS`].
    pub fn row(&self) -> [&(dyn ToSql + Sync); 10] {
        [
            &self.restaurant_id,
            &self.campaign_id,
            &CONTENT,
            &OWNER,
            &CONTACT,
            &self.start,
            &self.end,
            &CREATED,
            &self.client_id,
            &self.trigger,
        ]
    }
}

/// `subscribers_feedback`'s columns that the service writes (all but `id` and `feedback`).
pub const FEEDBACK_COLUMNS: &str = "restaurant_id, adv_campaign_id, adv_campaign_content, \
    adv_campaign_owner, adv_campaign_owner_contact, adv_campaign_datetime_start, \
    adv_campaign_datetime_end, datetime_created, client_id, trigger_datetime_created";

/// The index of the event whose output `value` is, if its campaign id has the phase's `tag`:
/// found by a scan for the field, not by parsing the JSON, to keep the reader light.
pub fn event_index(value: &[u8], tag: &str) -> Option<u64> {
    const FIELD: &[u8] = br#""adv_campaign_id":""#;
    let at = value.windows(FIELD.len()).position(|w| w == FIELD)? + FIELD.len();
    let rest = &value[at..];
    let end = rest.iter().position(|&b| b == b'"')?;
    let id = std::str::from_utf8(&rest[..end]).ok()?;
    id.strip_prefix(tag)?.strip_prefix("-e")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_fills_the_remaining_restaurants() {
        let layout = Layout::new(
            1_000_000,
            10_000,
            &[(10, 1_000), (100, 1_000), (10_000, 10)],
        );
        assert_eq!(layout.restaurants(), 10_000);
        let filler = layout.filler.unwrap();
        assert_eq!(filler.first, 2_010);
        assert_eq!(filler.fan_out, 98);
        assert!(layout.subscriptions().abs_diff(1_000_000) < 10_000);
        assert_eq!(layout.rows().count() as u64, layout.subscriptions());
    }

    #[test]
    fn the_event_of_an_output_is_found_by_its_campaign() {
        let output = Output::nth("run1-f10", 123, 10);
        assert_eq!(event_index(output.value.as_bytes(), "run1-f10"), Some(12));
        assert_eq!(event_index(output.value.as_bytes(), "run1-f100"), None);
        let event = event("t", 7, 3);
        assert_eq!(event_index(event.as_bytes(), "t"), Some(7));
    }

    #[test]
    fn ids_are_canonical_uuids() {
        for id in [restaurant_id(5), client_id(5, 77)] {
            assert_eq!(id.len(), 36);
            assert_eq!(id, id.to_lowercase());
            assert_eq!(id.matches('-').count(), 4);
        }
    }
}
