//! The batch transform: validation, active window, join with the subscribers, message shaping.

use crate::prelude::*;

use crate::event::{BadEvent, Campaign, parse_campaign};
use crate::message::MessageTemplate;
use crate::packed::PackedStrings;

/// The host's subscriber table, seen from the transform.
pub trait SubscriberLookup {
    /// Client ids subscribed to `restaurant_id`, possibly with duplicates.
    fn subscribers_of(&mut self, restaurant_id: &str) -> PackedStrings;
}

/// The output of one valid, active event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanOut {
    pub campaign: Campaign,
    pub trigger_datetime_created: i32,
    /// Distinct client ids, in lookup order; also the Kafka keys.
    pub client_ids: PackedStrings,
    /// One JSON message per client id, same order.
    pub messages: PackedStrings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    Expired,
    NotYetStarted,
}

/// What one input event became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    FanOut(FanOut),
    Skipped(SkipReason),
    Rejected(Rejection),
}

/// Why an event is refused: bad content, or a subscriber list the host garbled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    BadEvent(BadEvent),
    MalformedSubscribers { restaurant_id: String },
}

impl core::fmt::Display for Rejection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Rejection::BadEvent(bad) => bad.fmt(f),
            Rejection::MalformedSubscribers { restaurant_id } => write!(
                f,
                "the host returned a malformed subscriber list for restaurant `{restaurant_id}`"
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchError {
    /// `now` does not fit the int4 column `trigger_datetime_created`.
    NowOutOfRange(i64),
}

/// A fixed-key hasher: no seed means no `wasi:random` import, and the keys come from our own
/// database, so there is no flooding adversary to defend against.
type FixedState = hashbrown::DefaultHashBuilder;

/// Transforms a batch of event values at `now`; one outcome per value, in order.
///
/// Within the batch, a (campaign, client) pair is sent at most once: a later event of a campaign
/// already seen in the batch fans out only to clients the earlier ones did not reach. Across
/// batches the host enforces the same rule with its delivery ledger.
pub fn transform_batch<'a>(
    now: i64,
    values: impl IntoIterator<Item = &'a [u8]>,
    lookup: &mut impl SubscriberLookup,
) -> Result<Vec<EventOutcome>, BatchError> {
    let trigger = i32::try_from(now).map_err(|_| BatchError::NowOutOfRange(now))?;
    // Several events of one batch often share a restaurant: look it up and de-duplicate once.
    let mut clients_by_restaurant: hashbrown::HashMap<String, Option<PackedStrings>, FixedState> =
        hashbrown::HashMap::default();
    // `None` until a campaign's second event shows up: the common case, one event per campaign,
    // pays no per-client bookkeeping.
    let mut sent_by_campaign: hashbrown::HashMap<String, Option<ClientSet>, FixedState> =
        hashbrown::HashMap::default();
    let mut outcomes = Vec::new();
    for value in values {
        let campaign = match parse_campaign(value) {
            Ok(campaign) => campaign,
            Err(bad) => {
                outcomes.push(EventOutcome::Rejected(Rejection::BadEvent(bad)));
                continue;
            }
        };
        if let Some(reason) = inactive_reason(&campaign, now) {
            outcomes.push(EventOutcome::Skipped(reason));
            continue;
        }
        let clients = clients_by_restaurant
            .entry(campaign.restaurant_id.clone())
            .or_insert_with(|| distinct(&lookup.subscribers_of(&campaign.restaurant_id)));
        let Some(clients) = clients else {
            outcomes.push(EventOutcome::Rejected(Rejection::MalformedSubscribers {
                restaurant_id: campaign.restaurant_id,
            }));
            continue;
        };
        let clients = match sent_by_campaign.get_mut(&campaign.adv_campaign_id) {
            None => {
                sent_by_campaign.insert(campaign.adv_campaign_id.clone(), None);
                clients.clone()
            }
            Some(sent) => {
                let sent = sent.get_or_insert_with(|| {
                    clients_sent_earlier(&outcomes, &campaign.adv_campaign_id).collect()
                });
                not_yet_sent(clients, sent)
            }
        };
        outcomes.push(EventOutcome::FanOut(fan_out(campaign, trigger, clients)));
    }
    Ok(outcomes)
}

type ClientSet = hashbrown::HashSet<String, FixedState>;

/// The clients of the earlier fan-outs of `campaign_id` in this batch.
fn clients_sent_earlier<'a>(
    outcomes: &'a [EventOutcome],
    campaign_id: &'a str,
) -> impl Iterator<Item = String> + 'a {
    outcomes
        .iter()
        .filter_map(move |outcome| match outcome {
            EventOutcome::FanOut(fan_out) if fan_out.campaign.adv_campaign_id == campaign_id => {
                Some(fan_out.client_ids.iter().flatten())
            }
            _ => None,
        })
        .flatten()
        .map(str::to_owned)
}

/// The clients not in `sent`, which then records them as sent.
fn not_yet_sent(clients: &PackedStrings, sent: &mut ClientSet) -> PackedStrings {
    clients
        .iter()
        .flatten()
        .filter(|client| sent.insert((*client).to_owned()))
        .collect()
}

/// `None` when `start <= now <= end`, both ends inclusive.
pub fn inactive_reason(campaign: &Campaign, now: i64) -> Option<SkipReason> {
    if now < campaign.adv_campaign_datetime_start {
        Some(SkipReason::NotYetStarted)
    } else if now > campaign.adv_campaign_datetime_end {
        Some(SkipReason::Expired)
    } else {
        None
    }
}

/// The distinct client ids, first occurrence kept; `None` if the list is malformed.
fn distinct(subscribers: &PackedStrings) -> Option<PackedStrings> {
    let mut seen: hashbrown::HashSet<&str, FixedState> =
        hashbrown::HashSet::with_capacity_and_hasher(subscribers.len(), FixedState::default());
    let mut out = PackedStrings::with_capacity(subscribers.len(), subscribers.data.len());
    for client_id in subscribers.iter() {
        let client_id = client_id?;
        if seen.insert(client_id) {
            out.push(client_id);
        }
    }
    Some(out)
}

fn fan_out(campaign: Campaign, trigger: i32, client_ids: PackedStrings) -> FanOut {
    let template = MessageTemplate::new(&campaign, trigger);
    let mut messages = PackedStrings::with_capacity(
        client_ids.len(),
        client_ids.len() * template.message_len(0) + client_ids.data.len(),
    );
    // `client_ids` came out of `distinct`, which only keeps well-formed entries.
    for client_id in client_ids.iter().flatten() {
        template.render_into(client_id, &mut messages.data);
        messages.seal();
    }
    FanOut {
        campaign,
        trigger_datetime_created: trigger,
        client_ids,
        messages,
    }
}

#[cfg(test)]
mod tests;
