//! The batch transform: validation, active window, join with the subscribers, message shaping.

use crate::prelude::*;

use crate::event::{BadEvent, Campaign, parse_campaign};
use crate::message::{MessageTemplate, Messages};
use crate::packed::PackedStrings;

/// The host's subscriber table, seen from the transform.
pub trait SubscriberLookup {
    /// Up to `limit` client ids subscribed to `restaurant_id`, in ascending byte order, starting
    /// after `after` (exclusive) when given. Duplicates (several rows for one client) come back
    /// next to each other. Fewer than `limit` means there are no more.
    fn subscribers_of(
        &mut self,
        restaurant_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> PackedStrings;
}

/// How much output one call may produce; see `budget` in `wit/transform.wit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Messages.
    pub outputs: u32,
    /// Client id and message bytes.
    pub bytes: u64,
}

impl Budget {
    pub const UNLIMITED: Budget = Budget {
        outputs: u32::MAX,
        bytes: u64::MAX,
    };
}

/// Where a fan-out cut short by an earlier call goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume<'a> {
    /// The last client the earlier part reached.
    pub after: &'a str,
    /// The `now` the event was first decided at.
    pub now: i64,
}

/// One event of a batch: its bytes, and where its fan-out resumes, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventInput<'a> {
    pub value: &'a [u8],
    pub resume: Option<Resume<'a>>,
}

impl<'a> EventInput<'a> {
    /// An event seen for the first time.
    pub fn new(value: &'a [u8]) -> Self {
        Self {
            value,
            resume: None,
        }
    }
}

/// The output of one valid, active event (or of one part of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanOut {
    pub campaign: Campaign,
    pub trigger_datetime_created: i32,
    /// Distinct client ids, in the subscribers' order; also the Kafka keys.
    pub client_ids: PackedStrings,
    /// One JSON message per client id, same order.
    pub messages: Messages,
    /// The last client reached, when the budget ended the fan-out before the restaurant's last
    /// subscriber.
    pub continue_after: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    Expired,
    NotYetStarted,
}

/// What one input event became.
// Most outcomes are fan-outs: boxing the large variant would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    FanOut(FanOut),
    Skipped(SkipReason),
    Rejected(Rejection),
    /// The budget ran out before the event's first output: to be submitted again.
    Deferred,
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

/// Client ids asked of the host per lookup: bounds the guest's memory whatever a restaurant's
/// following, and a restaurant with fewer is read whole in one lookup (and kept for the batch).
pub const LOOKUP_CHUNK: u32 = 4096;

/// Transforms a batch of events at `now`, within `budget`; one outcome per event, in order.
///
/// Within the batch, a (campaign, client) pair is sent at most once: a later event of a campaign
/// already seen in the batch fans out only to clients the earlier ones did not reach. Across
/// batches the host enforces the same rule with its delivery ledger.
///
/// Events are served in order: the one during which the budget runs out ends with a
/// `continue_after`, later ones that would produce output are deferred, and the first output of
/// the batch is produced whatever the budget, so that every batch makes progress.
pub fn transform_batch<'a>(
    now: i64,
    events: impl IntoIterator<Item = EventInput<'a>>,
    budget: Budget,
    lookup: &mut impl SubscriberLookup,
) -> Result<Vec<EventOutcome>, BatchError> {
    i32::try_from(now).map_err(|_| BatchError::NowOutOfRange(now))?;
    let mut batch = Batch {
        lookup,
        budget,
        spent: Budget {
            outputs: 0,
            bytes: 0,
        },
        exhausted: false,
        small_restaurants: hashbrown::HashMap::default(),
        sent_by_campaign: hashbrown::HashMap::default(),
    };
    let mut outcomes = Vec::new();
    for event in events {
        let outcome = batch.transform(now, event, &outcomes)?;
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// What a batch call keeps between its events.
struct Batch<'l, L> {
    lookup: &'l mut L,
    budget: Budget,
    spent: Budget,
    /// Set by the first output that did not fit: after it nothing more is produced, not even a
    /// smaller output, so that no event gets ahead of the one the budget cut short.
    exhausted: bool,
    /// Restaurants read whole in one lookup: several events of a batch often share one.
    small_restaurants: hashbrown::HashMap<String, PackedStrings, FixedState>,
    /// `None` until a campaign's second event shows up: the common case, one event per campaign,
    /// pays no per-client bookkeeping.
    sent_by_campaign: hashbrown::HashMap<String, Option<ClientSet>, FixedState>,
}

/// Why a fan-out stopped.
enum Stop {
    /// Past the restaurant's last subscriber.
    Complete,
    /// The budget ran out.
    Budget,
    Malformed,
}

impl<L: SubscriberLookup> Batch<'_, L> {
    fn transform(
        &mut self,
        now: i64,
        event: EventInput<'_>,
        earlier: &[EventOutcome],
    ) -> Result<EventOutcome, BatchError> {
        let campaign = match parse_campaign(event.value) {
            Ok(campaign) => campaign,
            Err(bad) => return Ok(EventOutcome::Rejected(Rejection::BadEvent(bad))),
        };
        // A resumed fan-out keeps the `now` of its first part: one window, one trigger time.
        let at = event.resume.map_or(now, |resume| resume.now);
        let trigger = i32::try_from(at).map_err(|_| BatchError::NowOutOfRange(at))?;
        if let Some(reason) = inactive_reason(&campaign, at) {
            return Ok(EventOutcome::Skipped(reason));
        }
        // Taken out of the map for the walk, put back after it.
        let mut sent: Option<ClientSet> =
            match self.sent_by_campaign.get_mut(&campaign.adv_campaign_id) {
                None => {
                    self.sent_by_campaign
                        .insert(campaign.adv_campaign_id.clone(), None);
                    None
                }
                Some(sent) => Some(sent.take().unwrap_or_else(|| {
                    clients_sent_earlier(earlier, &campaign.adv_campaign_id).collect()
                })),
            };
        let template = MessageTemplate::new(&campaign, trigger);
        let mut client_ids = PackedStrings::default();
        let mut reached: Option<String> = None;
        let mut after: Option<String> = event.resume.map(|resume| resume.after.to_owned());
        let stop = 'walk: loop {
            let chunk = self.chunk(&campaign.restaurant_id, after.as_deref());
            let mut previous: Option<&str> = after.as_deref();
            for client in chunk.iter() {
                let Some(client) = client else {
                    break 'walk Stop::Malformed;
                };
                match previous {
                    // The host promised ascending order: a resumed walk relies on it.
                    Some(previous) if client < previous => break 'walk Stop::Malformed,
                    // Another row of the same client.
                    Some(previous) if client == previous => continue,
                    _ => {}
                }
                previous = Some(client);
                if sent
                    .as_mut()
                    .is_some_and(|sent| !sent.insert(client.to_owned()))
                {
                    reached = Some(client.to_owned());
                    continue;
                }
                let size = (client.len() + template.message_len(client)) as u64;
                if !self.admits(size) {
                    break 'walk Stop::Budget;
                }
                client_ids.push(client);
                self.spent.outputs += 1;
                self.spent.bytes += size;
                reached = Some(client.to_owned());
            }
            if (chunk.len() as u32) < LOOKUP_CHUNK {
                break Stop::Complete;
            }
            after = previous.map(str::to_owned);
        };
        if let Some(sent) = sent {
            self.sent_by_campaign
                .insert(campaign.adv_campaign_id.clone(), Some(sent));
        }
        Ok(match stop {
            Stop::Malformed => EventOutcome::Rejected(Rejection::MalformedSubscribers {
                restaurant_id: campaign.restaurant_id,
            }),
            Stop::Budget if reached.is_none() => EventOutcome::Deferred,
            stop => EventOutcome::FanOut(FanOut {
                campaign,
                trigger_datetime_created: trigger,
                messages: template.messages(&client_ids),
                client_ids,
                continue_after: match stop {
                    Stop::Budget => reached,
                    _ => None,
                },
            }),
        })
    }

    /// The next chunk of the restaurant's clients after `after`.
    fn chunk(&mut self, restaurant_id: &str, after: Option<&str>) -> PackedStrings {
        if after.is_none()
            && let Some(whole) = self.small_restaurants.get(restaurant_id)
        {
            return whole.clone();
        }
        let chunk = self
            .lookup
            .subscribers_of(restaurant_id, after, LOOKUP_CHUNK);
        if after.is_none() && (chunk.len() as u32) < LOOKUP_CHUNK {
            self.small_restaurants
                .insert(restaurant_id.to_owned(), chunk.clone());
        }
        chunk
    }

    /// Whether one more output of `size` bytes fits the budget; the batch's first always does.
    fn admits(&mut self, size: u64) -> bool {
        let fits = self.spent.outputs == 0
            || (!self.exhausted
                && self.spent.outputs < self.budget.outputs
                && self.spent.bytes.saturating_add(size) <= self.budget.bytes);
        self.exhausted |= !fits;
        fits
    }
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

#[cfg(test)]
mod tests;
