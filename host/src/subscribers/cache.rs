//! The shared state behind a [`SubscriberCache`] handle: the table, readiness, counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use guest_transform::PackedStrings;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::DEFAULT_CHANNEL;
use super::connect::Connect;
use super::table::{ClientList, SubscriberTable};
use super::task;
use crate::guest::SubscriberDirectory;

/// How the cache listens, reloads and reconnects.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// The NOTIFY channel; must match the trigger's argument (see `migrations/`).
    pub channel: String,
    /// Full reload as a safety net, on top of notifications (e.g. against a trigger someone
    /// disabled). Also bounds how long an interned text outlives its last row.
    pub resync_interval: Duration,
    /// First delay before reconnecting after a loss; doubles per failed attempt...
    pub reconnect_min: Duration,
    /// ...up to this.
    pub reconnect_max: Duration,
    /// Limit for connecting, LISTEN, a full load and a row read. A connection that hangs (e.g.
    /// a silent network partition) is given up and reopened after this.
    pub query_timeout: Duration,
    /// Notifications buffered between the connection and the cache. When it is full (the cache
    /// is busy reloading while thousands of changes arrive) notifications are dropped and the
    /// cache reloads the table instead, so the connection itself never stalls and the server's
    /// notification queue never fills up.
    pub queue_capacity: usize,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            channel: DEFAULT_CHANNEL.to_owned(),
            resync_interval: Duration::from_secs(300),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(30),
            query_timeout: Duration::from_secs(120),
            queue_capacity: 65_536,
        }
    }
}

/// Refusals of [`SubscriberCache::spawn`] and [`SubscriberCache::ready`].
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("NOTIFY channel name must be 1 to 63 bytes without NUL, got {0} bytes")]
    ChannelName(usize),
    #[error("the notification queue capacity must be at least 1")]
    QueueCapacity,
    #[error("the resync interval must be longer than zero")]
    ResyncInterval,
    #[error("the subscriber cache was shut down before its first full load")]
    Stopped,
}

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
    fn new() -> Self {
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
}

/// The host's copy of `subscribers_restaurants`, kept fresh by LISTEN/NOTIFY. Cheap to clone;
/// all clones share one table. See the [module documentation](super) for the guarantees.
#[derive(Debug, Clone)]
pub struct SubscriberCache {
    shared: Arc<Shared>,
}

impl SubscriberCache {
    /// Starts the background task on the current tokio runtime and returns at once; the cache is
    /// empty (and not [ready](Self::is_ready)) until the first full load. The task runs until
    /// `shutdown` is cancelled; await the returned handle to know it has stopped (it closes its
    /// connection on the way out).
    pub fn spawn<C: Connect>(
        connector: C,
        options: CacheOptions,
        shutdown: CancellationToken,
    ) -> Result<(Self, JoinHandle<()>), CacheError> {
        let channel = &options.channel;
        if channel.is_empty() || channel.len() > 63 || channel.contains('\0') {
            return Err(CacheError::ChannelName(options.channel.len()));
        }
        if options.queue_capacity == 0 {
            return Err(CacheError::QueueCapacity);
        }
        if options.resync_interval.is_zero() {
            return Err(CacheError::ResyncInterval);
        }
        let shared = Arc::new(Shared::new());
        let task = tokio::spawn(task::run(
            Arc::clone(&shared),
            Arc::new(connector),
            options,
            shutdown,
        ));
        Ok((Self { shared }, task))
    }

    /// Whether a full load has succeeded; from then on the cache always serves a table.
    pub fn is_ready(&self) -> bool {
        self.shared.phase.borrow().ready
    }

    /// Waits for the first full load. Fails only if the cache is shut down before; a database
    /// that is down makes this wait (wrap it in a timeout to bound the start-up).
    pub async fn ready(&self) -> Result<(), CacheError> {
        let mut phase = self.shared.phase.subscribe();
        let phase = phase
            .wait_for(|phase| phase.ready || phase.stopped)
            .await
            .map_err(|_| CacheError::Stopped)?;
        if phase.ready {
            Ok(())
        } else {
            Err(CacheError::Stopped)
        }
    }

    /// The clients of one restaurant without copying them (the hot path uses
    /// [`SubscriberDirectory::clients_page`]).
    pub fn clients(&self, restaurant_id: &str) -> Option<Arc<ClientList>> {
        self.shared.read().clients(restaurant_id)
    }

    /// Approximate heap bytes of the table; walks every restaurant, so not for every request.
    pub fn heap_bytes(&self) -> usize {
        self.shared.read().heap_bytes()
    }

    pub fn stats(&self) -> CacheStats {
        let (rows, restaurants) = {
            let table = self.shared.read();
            (table.row_count(), table.restaurant_count())
        };
        let times = self.shared.times();
        CacheStats {
            rows,
            restaurants,
            ready: self.is_ready(),
            connected: times.connected,
            disconnected_since: times.disconnected_since,
            last_full_sync: times.last_full_sync,
            last_change: times.last_change,
            notifications_applied: self.shared.notifications_applied.load(Ordering::Relaxed),
            resyncs: self.shared.resyncs.load(Ordering::Relaxed),
            reconnects: self
                .shared
                .connections
                .load(Ordering::Relaxed)
                .saturating_sub(1),
            notifications_dropped: self.shared.notifications_dropped.load(Ordering::Relaxed),
        }
    }
}

impl SubscriberDirectory for SubscriberCache {
    /// A read lock held for one hash lookup and an `Arc` clone; the formatting happens after it
    /// is released. Never waits on I/O.
    fn clients_page(
        &self,
        restaurant_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> PackedStrings {
        self.clients(restaurant_id)
            .map_or_else(PackedStrings::default, |list| list.page(after, limit))
    }
}
