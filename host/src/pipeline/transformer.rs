//! Runs batches through the guest, isolating events that make it trap.

use std::sync::Arc;

use guest_transform::{EventInput, Resume};

use crate::config::GuestEngine;
use crate::guest::{
    Budget, CallError, DirectoryLookup, GuestIdentity, GuestInstance, GuestSlot, InputEvent,
    LoadedGuest, Outcome, SubscriberDirectory,
};

/// The guest in service and its current instance.
pub struct Transformer {
    slot: Arc<GuestSlot>,
    guest: Arc<LoadedGuest>,
    directory: Arc<dyn SubscriberDirectory>,
    instance: GuestInstance,
    /// Set with `guest.engine = "native"`: who the outputs say decided them.
    native: Option<GuestIdentity>,
}

/// A batch that cannot be transformed at all: the service must stop rather than dead-letter it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransformError(CallError);

impl Transformer {
    pub fn new(
        slot: Arc<GuestSlot>,
        directory: Arc<dyn SubscriberDirectory>,
        engine: GuestEngine,
    ) -> Result<Self, TransformError> {
        let guest = slot.current();
        let instance = guest
            .instantiate(directory.clone())
            .map_err(TransformError)?;
        let native = (engine == GuestEngine::Native).then(|| GuestIdentity {
            version: format!("{} (native, in the host)", guest_transform::VERSION),
            sha256: "native".to_owned(),
        });
        Ok(Self {
            slot,
            guest,
            directory,
            instance,
            native,
        })
    }

    /// The guest that transformed the last batch.
    pub fn identity(&self) -> &GuestIdentity {
        self.native
            .as_ref()
            .unwrap_or_else(|| self.guest.identity())
    }

    /// Transforms a whole batch with the guest in service at its start: a swap takes effect here,
    /// between batches, never inside one.
    pub fn transform_batch(
        &mut self,
        now: i64,
        events: &[InputEvent],
        budget: Budget,
    ) -> Result<Vec<Outcome>, TransformError> {
        if self.native.is_some() {
            return self.transform_natively(now, events, budget);
        }
        let current = self.slot.current();
        if !Arc::ptr_eq(&current, &self.guest) {
            self.instance = current
                .instantiate(self.directory.clone())
                .map_err(TransformError)?;
            tracing::info!(
                from = %self.guest.identity().version,
                to = %current.identity().version,
                sha256 = %current.identity().sha256,
                "batches now use the new guest"
            );
            self.guest = current;
        }
        self.transform(now, events, budget)
    }

    /// The same logic as the guest's, compiled into the host: what the Wasm boundary costs is the
    /// difference (`make bench`). Nothing isolates a panic here; it is for measuring only.
    fn transform_natively(
        &self,
        now: i64,
        events: &[InputEvent],
        budget: Budget,
    ) -> Result<Vec<Outcome>, TransformError> {
        let inputs = events.iter().map(|event| EventInput {
            value: &event.value,
            resume: event.resume.as_ref().map(|resume| Resume {
                after: &resume.after,
                now: resume.now,
            }),
        });
        let budget = guest_transform::Budget {
            outputs: budget.outputs,
            bytes: budget.bytes,
        };
        let mut lookup = DirectoryLookup(&*self.directory);
        let outcomes = guest_transform::transform_batch(now, inputs, budget, &mut lookup)
            .map_err(|_| TransformError(CallError::NowOutOfRange(now)))?;
        Ok(outcomes.into_iter().map(Outcome::from).collect())
    }

    /// One outcome per event. When the guest traps, the instance (whose state may be corrupt) is
    /// replaced and the batch is split in halves until the trapping events stand alone; those are
    /// rejected with the trap as reason and the others are transformed normally.
    fn transform(
        &mut self,
        now: i64,
        events: &[InputEvent],
        budget: Budget,
    ) -> Result<Vec<Outcome>, TransformError> {
        match self.instance.transform_batch(now, events, budget) {
            Ok(outcomes) => Ok(outcomes),
            Err(error @ CallError::NowOutOfRange(_)) => Err(TransformError(error)),
            Err(failure) => {
                tracing::warn!(events = events.len(), %failure, "guest failed; isolating");
                self.instance = self
                    .guest
                    .instantiate(self.directory.clone())
                    .map_err(TransformError)?;
                if events.len() <= 1 {
                    return Ok(events
                        .iter()
                        .map(|_| {
                            Outcome::Rejected(format!(
                                "the transform failed on this event: {failure}"
                            ))
                        })
                        .collect());
                }
                let (left, right) = events.split_at(events.len() / 2);
                let mut outcomes = self.transform(now, left, budget)?;
                let rest = remaining_after(budget, &outcomes);
                outcomes.extend(self.transform(now, right, rest)?);
                Ok(outcomes)
            }
        }
    }
}

/// What `budget` leaves after `outcomes`.
fn remaining_after(budget: Budget, outcomes: &[Outcome]) -> Budget {
    let (outputs, bytes) = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            Outcome::FanOut(fan_out) => Some(fan_out),
            _ => None,
        })
        .fold((0usize, 0usize), |(outputs, bytes), fan_out| {
            (
                outputs + fan_out.client_ids.len(),
                bytes + fan_out.client_ids.data.len() + fan_out.messages.bytes(&fan_out.client_ids),
            )
        });
    Budget {
        outputs: budget
            .outputs
            .saturating_sub(u32::try_from(outputs).unwrap_or(u32::MAX)),
        bytes: budget.bytes.saturating_sub(bytes as u64),
    }
}
