//! [`SubscriberCache`]: the handle the service holds, and the task it starts.

use std::sync::Arc;

use guest_transform::PackedStrings;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::connect::Connect;
use super::options::CacheOptions;
use super::shared::{CacheStats, Shared};
use super::table::ClientList;
use super::task;
use crate::guest::SubscriberDirectory;

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
        self.shared.is_ready()
    }

    /// Waits for the first full load. Fails only if the cache is shut down before; a database
    /// that is down makes this wait (wrap it in a timeout to bound the start-up).
    pub async fn ready(&self) -> Result<(), CacheError> {
        let mut phase = self.shared.phases();
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
        self.shared.stats()
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
