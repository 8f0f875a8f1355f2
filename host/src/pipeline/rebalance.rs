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
//!
//! The deliver stage runs beside the collector (see [`super::courier`]): while the next batch is
//! collected, the previous one's Kafka transaction may still be open. A revocation therefore
//! waits until that delivery has ended ([`DeliveryGate`]): the group cannot finish the rebalance,
//! and the partitions' next owner cannot start on their committed offsets, while this host may
//! still commit records of theirs.

use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};

/// The longest a revocation waits for the delivery in progress: two attempts at a commit.
const DELIVERY_WAIT: Duration = Duration::from_secs(60);

/// The consumer's context: notes revocations for the batch collector, and holds them back while a
/// batch is being delivered.
#[derive(Default)]
pub struct GroupContext {
    revoked: Mutex<Revoked>,
    pub delivery: DeliveryGate,
}

/// Whether a batch's Kafka transaction may be open.
#[derive(Debug, Default)]
pub struct DeliveryGate {
    busy: Mutex<bool>,
    idle: Condvar,
}

impl DeliveryGate {
    pub fn enter(&self) {
        *self.busy.lock().expect("delivery gate lock") = true;
    }

    pub fn leave(&self) {
        *self.busy.lock().expect("delivery gate lock") = false;
        self.idle.notify_all();
    }

    /// Waits until no delivery is in progress, at most `timeout`; whether none is.
    fn wait_idle(&self, timeout: Duration) -> bool {
        let busy = self.busy.lock().expect("delivery gate lock");
        let (busy, _) = self
            .idle
            .wait_timeout_while(busy, timeout, |busy| *busy)
            .expect("delivery gate lock");
        !*busy
    }
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
        if !matches!(rebalance, Rebalance::Assign(_)) && !self.delivery.wait_idle(DELIVERY_WAIT) {
            // Its commit will name a generation that is over, and be refused: the service then
            // stops, and the records are replayed from what was stored.
            tracing::warn!(
                "a batch was still being delivered when partitions were revoked; going on"
            );
        }
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

    #[test]
    fn the_gate_lets_a_revocation_through_once_the_delivery_has_ended() {
        let gate = std::sync::Arc::new(DeliveryGate::default());
        assert!(gate.wait_idle(Duration::ZERO));
        gate.enter();
        assert!(!gate.wait_idle(Duration::from_millis(1)));
        let leaver = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.leave())
        };
        assert!(gate.wait_idle(Duration::from_secs(60)));
        leaver.join().unwrap();
    }
}
