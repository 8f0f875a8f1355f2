//! Runs batches through the guest, isolating events that make it trap.

use std::sync::Arc;

use crate::guest::SubscriberDirectory;
use crate::guest::{CallError, GuestIdentity, GuestInstance, InputEvent, LoadedGuest, Outcome};

/// The guest in service and its current instance.
pub struct Transformer {
    guest: Arc<LoadedGuest>,
    directory: Arc<dyn SubscriberDirectory>,
    instance: GuestInstance,
}

/// A batch that cannot be transformed at all: the service must stop rather than dead-letter it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransformError(CallError);

impl Transformer {
    pub fn new(
        guest: Arc<LoadedGuest>,
        directory: Arc<dyn SubscriberDirectory>,
    ) -> Result<Self, TransformError> {
        let instance = guest
            .instantiate(directory.clone())
            .map_err(TransformError)?;
        Ok(Self {
            guest,
            directory,
            instance,
        })
    }

    pub fn identity(&self) -> &GuestIdentity {
        self.guest.identity()
    }

    /// One outcome per event. When the guest traps, the instance (whose state may be corrupt) is
    /// replaced and the batch is split in halves until the trapping events stand alone; those are
    /// rejected with the trap as reason and the others are transformed normally.
    pub fn transform(
        &mut self,
        now: i64,
        events: &[InputEvent],
    ) -> Result<Vec<Outcome>, TransformError> {
        match self.instance.transform_batch(now, events) {
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
                let mut outcomes = self.transform(now, left)?;
                outcomes.extend(self.transform(now, right)?);
                Ok(outcomes)
            }
        }
    }
}
