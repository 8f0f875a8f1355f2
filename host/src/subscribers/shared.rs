//! What the cache's background task and its handles share: the table, the phase (ready,
//! stopped), the times and counters behind [`CacheStats`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::table::SubscriberTable;

/// Numbers for metrics and health checks. The instants are taken by the I/O task with tokio's
/// clock (which tests may pause); ages are computed against a `now` the caller passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStats {
    pub rows: usize,
    pub restaurants: usize,
    /// A first full load has succeeded: the table is served.
    pub ready: bool,
    /// Listening right now: changes arrive as they are committed.
    pub connected: bool,
    /// Since when the cache has not been listening (it serves its last table meanwhile).
    pub disconnected_since: Option<Instant>,
    pub last_full_sync: Option<Instant>,
    pub last_change: Option<Instant>,
    /// Notifications applied to the table (replays that changed nothing included).
    pub notifications_applied: u64,
    /// Full loads, the first one included.
    pub resyncs: u64,
    /// Connections opened after the first one.
    pub reconnects: u64,
    /// Notifications dropped because the queue was full (each leads to a reload).
    pub notifications_dropped: u64,
}

impl CacheStats {
    /// How long ago the last full load finished.
    pub fn sync_age(&self, now: Instant) -> Option<Duration> {
        self.last_full_sync
            .map(|t| now.saturating_duration_since(t))
    }

    /// How long the cache has been serving a table it cannot keep fresh; zero while listening.
    pub fn stale_for(&self, now: Instant) -> Option<Duration> {
        match (self.ready, self.disconnected_since) {
            (false, _) => None,
            (true, None) => Some(Duration::ZERO),
            (true, Some(since)) => Some(now.saturating_duration_since(since)),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Phase {
    pub(super) ready: bool,
    pub(super) stopped: bool,
}

#[derive(Debug, Default)]
struct Times {
    connected: bool,
    disconnected_since: Option<Instant>,
    last_full_sync: Option<Instant>,
    last_change: Option<Instant>,
}

/// What the background task and the handles share.
#[derive(Debug)]
pub(super) struct Shared {
    table: RwLock<SubscriberTable>,
    phase: watch::Sender<Phase>,
    times: Mutex<Times>,
    pub(super) notifications_applied: AtomicU64,
    pub(super) resyncs: AtomicU64,
    pub(super) connections: AtomicU64,
    pub(super) notifications_dropped: AtomicU64,
}

impl Shared {
    pub(super) fn new() -> Self {
        Self {
            table: RwLock::default(),
            phase: watch::Sender::new(Phase::default()),
            times: Mutex::default(),
            notifications_applied: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            notifications_dropped: AtomicU64::new(0),
        }
    }

    // A writer that panicked mid-change may leave the table inconsistent; the next full load
    // replaces it, so serving it meanwhile beats failing every read.
    pub(super) fn read(&self) -> RwLockReadGuard<'_, SubscriberTable> {
        self.table.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn write(&self) -> RwLockWriteGuard<'_, SubscriberTable> {
        self.table.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.times.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Swaps in a freshly loaded table; the old one is freed after the lock is released.
    pub(super) fn replace(&self, table: SubscriberTable, now: Instant) {
        let old = std::mem::replace(&mut *self.write(), table);
        drop(old);
        self.resyncs.fetch_add(1, Ordering::Relaxed);
        {
            let mut times = self.times();
            times.last_full_sync = Some(now);
            times.connected = true;
            times.disconnected_since = None;
        }
        self.phase
            .send_if_modified(|phase| !std::mem::replace(&mut phase.ready, true));
    }

    pub(super) fn changes_applied(&self, notifications: u64, now: Instant) {
        self.notifications_applied
            .fetch_add(notifications, Ordering::Relaxed);
        self.times().last_change = Some(now);
    }

    pub(super) fn disconnected(&self, now: Instant) {
        let mut times = self.times();
        if times.connected || times.disconnected_since.is_none() {
            times.disconnected_since = Some(now);
        }
        times.connected = false;
    }

    pub(super) fn stopped(&self) {
        self.times().connected = false;
        self.phase.send_modify(|phase| phase.stopped = true);
    }

    pub(super) fn is_ready(&self) -> bool {
        self.phase.borrow().ready
    }

    /// Follows the phase: ready after the first full load, stopped at shutdown.
    pub(super) fn phases(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    pub(super) fn stats(&self) -> CacheStats {
        let (rows, restaurants) = {
            let table = self.read();
            (table.row_count(), table.restaurant_count())
        };
        let times = self.times();
        CacheStats {
            rows,
            restaurants,
            ready: self.is_ready(),
            connected: times.connected,
            disconnected_since: times.disconnected_since,
            last_full_sync: times.last_full_sync,
            last_change: times.last_change,
            notifications_applied: self.notifications_applied.load(Ordering::Relaxed),
            resyncs: self.resyncs.load(Ordering::Relaxed),
            reconnects: self.connections.load(Ordering::Relaxed).saturating_sub(1),
            notifications_dropped: self.notifications_dropped.load(Ordering::Relaxed),
        }
    }
}
