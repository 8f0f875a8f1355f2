//! Which stored decisions the next store forgets, and from where.
//!
//! Once a batch's Kafka transaction has committed, its decisions are deleted with the next
//! batch's PostgreSQL transaction (see [`crate::sinks::postgres::forget_committed`]). Each delete
//! starts where this host's last one in the partition ended: deleted rows stay in the primary key
//! until vacuum, and a delete that started from the partition's first offset read all of them.
//!
//! Below that start, a decision can be left only by a host that stored it after another had
//! already delivered and forgotten the record (a zombie, whose Kafka transaction is fenced), or by
//! a reset of the group's offsets. So every [`SWEEP_EVERY`]-th forget reads each partition from
//! its first offset again, as a start does.

use std::collections::BTreeMap;

use crate::plan::{Commit, Forget};

/// How many forgets start where the last ended before one reads the partitions from the start.
pub const SWEEP_EVERY: u32 = 1_000;

#[derive(Debug, Default)]
pub struct Forgetting {
    /// Per partition, the latest commit of a batch whose Kafka transaction committed, not yet
    /// forgotten.
    confirmed: BTreeMap<i32, Commit>,
    /// Per partition, the offset below which this host has forgotten every decision.
    forgotten_below: BTreeMap<i32, i64>,
    /// Forgets since `forgotten_below` was last cleared.
    since_sweep: u32,
}

impl Forgetting {
    /// A batch's Kafka transaction committed with `commits`: its decisions may go. The commits of
    /// an earlier batch not yet forgotten stay due for the partitions this one did not touch.
    pub fn confirm(&mut self, commits: &BTreeMap<i32, Commit>) {
        self.confirmed.extend(commits);
    }

    /// What the next store forgets.
    pub fn due(&self) -> BTreeMap<i32, Forget> {
        self.confirmed
            .iter()
            .map(|(&partition, &until)| {
                let forget = match self.forgotten_below.get(&partition) {
                    Some(&from) => Forget { from, until },
                    None => Forget::all_below(until),
                };
                (partition, forget)
            })
            .collect()
    }

    /// A store that forgot `forgets` (what [`due`](Self::due) said) committed.
    pub fn forgotten(&mut self, forgets: &BTreeMap<i32, Forget>) {
        // A store with nothing to forget deleted nothing: not a forget to count.
        if forgets.is_empty() {
            return;
        }
        for (&partition, forget) in forgets {
            // A record delivered in parts keeps its last part stored: the next forget starts at it.
            self.forgotten_below.insert(partition, forget.until.offset);
            if self.confirmed.get(&partition) == Some(&forget.until) {
                self.confirmed.remove(&partition);
            }
        }
        self.since_sweep += 1;
        if self.since_sweep > SWEEP_EVERY {
            // Each partition's next forget reads it from its first offset, whichever batch
            // touches it next.
            self.forgotten_below.clear();
            self.since_sweep = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commits(offsets: &[(i32, i64)]) -> BTreeMap<i32, Commit> {
        offsets
            .iter()
            .map(|&(partition, offset)| {
                (
                    partition,
                    Commit {
                        offset,
                        parts_delivered: 0,
                    },
                )
            })
            .collect()
    }

    fn froms(forgets: &BTreeMap<i32, Forget>) -> Vec<(i32, i64, i64)> {
        forgets
            .iter()
            .map(|(&partition, forget)| (partition, forget.from, forget.until.offset))
            .collect()
    }

    #[test]
    fn each_forget_starts_where_the_last_one_of_its_partition_ended() {
        let mut forgetting = Forgetting::default();
        assert!(forgetting.due().is_empty(), "nothing confirmed yet");

        forgetting.confirm(&commits(&[(0, 10), (1, 7)]));
        let first = forgetting.due();
        assert_eq!(
            froms(&first),
            [(0, 0, 10), (1, 0, 7)],
            "unknown: from the start"
        );
        forgetting.forgotten(&first);
        assert!(forgetting.due().is_empty(), "forgotten once");

        forgetting.confirm(&commits(&[(0, 25), (2, 3)]));
        let second = forgetting.due();
        assert_eq!(froms(&second), [(0, 10, 25), (2, 0, 3)]);
        forgetting.forgotten(&second);

        // Partition 1 comes back later: it goes on from where it ended.
        forgetting.confirm(&commits(&[(1, 9)]));
        assert_eq!(froms(&forgetting.due()), [(1, 7, 9)]);
    }

    #[test]
    fn a_store_that_did_not_commit_leaves_the_start_where_it_was() {
        let mut forgetting = Forgetting::default();
        forgetting.confirm(&commits(&[(0, 10)]));
        let first = forgetting.due();
        forgetting.forgotten(&first);

        forgetting.confirm(&commits(&[(0, 20)]));
        let failed = forgetting.due();
        assert_eq!(froms(&failed), [(0, 10, 20)]);
        // The store failed; meanwhile a later batch committed.
        forgetting.confirm(&commits(&[(0, 30)]));
        assert_eq!(froms(&forgetting.due()), [(0, 10, 30)], "nothing skipped");
    }

    #[test]
    fn a_partition_the_next_batch_did_not_touch_stays_due() {
        let mut forgetting = Forgetting::default();
        forgetting.confirm(&commits(&[(0, 10), (1, 7)]));
        forgetting.confirm(&commits(&[(0, 12)]));
        assert_eq!(froms(&forgetting.due()), [(0, 0, 12), (1, 0, 7)]);
    }

    #[test]
    fn a_batch_confirmed_while_a_store_forgot_the_one_before_is_kept_for_the_next() {
        let mut forgetting = Forgetting::default();
        forgetting.confirm(&commits(&[(0, 10)]));
        let due = forgetting.due();
        forgetting.confirm(&commits(&[(0, 20)]));
        forgetting.forgotten(&due);
        assert_eq!(froms(&forgetting.due()), [(0, 10, 20)]);
    }

    #[test]
    fn every_sweep_every_th_forget_reads_the_partitions_from_their_start() {
        let mut forgetting = Forgetting::default();
        let mut from_the_start = Vec::new();
        for batch in 0..=(2 * SWEEP_EVERY + 2) {
            forgetting.confirm(&commits(&[(0, i64::from(batch) + 1), (1, 5)]));
            let due = forgetting.due();
            if due.values().all(|forget| forget.from == 0) {
                from_the_start.push(batch);
            }
            forgetting.forgotten(&due);
        }
        assert_eq!(from_the_start, [0, SWEEP_EVERY + 1, 2 * SWEEP_EVERY + 2]);

        // A partition that the sweeping batch did not touch reads from its start when one does.
        forgetting.confirm(&commits(&[(2, 3)]));
        let first = forgetting.due();
        forgetting.forgotten(&first);
        for batch in 0.. {
            assert!(batch <= SWEEP_EVERY + 1, "no sweep");
            forgetting.confirm(&commits(&[(0, 10_000 + i64::from(batch))]));
            let due = forgetting.due();
            forgetting.forgotten(&due);
            if due[&0].from == 0 {
                break;
            }
        }
        forgetting.confirm(&commits(&[(2, 9)]));
        assert_eq!(froms(&forgetting.due()), [(2, 0, 9)]);
    }
}
