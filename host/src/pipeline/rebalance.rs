//! What the consumer group's rebalances mean for the batch being collected.
//!
//! librdkafka runs the rebalance callbacks inside the consumer's poll, which the pipeline calls
//! only while it collects a batch: a partition can therefore be revoked only while nothing of the
//! batch has been written. The records of a revoked partition received before the revocation are
//! dropped from that batch before the batch is closed (they belong to the partition's next owner,
//! who reads them from the committed offsets; the same host, when the partition comes back to it).
//! The message that the `recv` running the callbacks returns is kept: it comes from the new
//! assignment, which goes on after it (`tests/multihost.rs` lost it when it was dropped too). The
//! group metadata the batch commits with is taken after that, so it names the generation that
//! owns every record of the batch.

use std::collections::BTreeSet;
use std::sync::Mutex;

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};

/// The consumer's context: notes revocations for the batch collector.
#[derive(Default)]
pub struct GroupContext {
    revoked: Mutex<Revoked>,
}

/// Partitions taken from this host since the collector last looked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Revoked {
    #[default]
    Nothing,
    Partitions(BTreeSet<i32>),
    /// A rebalance failed or the assignment was lost: nothing collected can be trusted.
    Everything,
}

impl Revoked {
    pub fn contains(&self, partition: i32) -> bool {
        match self {
            Revoked::Nothing => false,
            Revoked::Partitions(partitions) => partitions.contains(&partition),
            Revoked::Everything => true,
        }
    }

    fn add(&mut self, partitions: impl IntoIterator<Item = i32>) {
        match self {
            Revoked::Nothing => *self = Revoked::Partitions(partitions.into_iter().collect()),
            Revoked::Partitions(known) => known.extend(partitions),
            Revoked::Everything => {}
        }
    }
}

impl GroupContext {
    /// The revocations since the last call.
    pub fn take_revoked(&self) -> Revoked {
        std::mem::take(&mut *self.revoked.lock().expect("revocations lock"))
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut revoked = self.revoked.lock().expect("revocations lock");
        match rebalance {
            Rebalance::Revoke(list) => {
                let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?partitions, "partitions revoked");
                revoked.add(partitions);
            }
            Rebalance::Assign(list) => {
                let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?partitions, "partitions assigned");
            }
            Rebalance::Error(error) => {
                tracing::warn!(%error, "rebalance failed; dropping the batch being collected");
                *revoked = Revoked::Everything;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_accumulate_until_taken_and_everything_absorbs_the_rest() {
        let mut revoked = Revoked::Nothing;
        assert!(!revoked.contains(0));
        revoked.add([1, 2]);
        revoked.add([4]);
        assert!(revoked.contains(2) && revoked.contains(4) && !revoked.contains(3));
        let mut everything = Revoked::Everything;
        everything.add([1]);
        assert!(everything.contains(7));
    }
}
