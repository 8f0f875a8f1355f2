//! How the subscriber cache listens, reloads and reconnects.

use std::time::Duration;

use super::DEFAULT_CHANNEL;

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
