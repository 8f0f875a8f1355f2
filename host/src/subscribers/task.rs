//! The background task: connect, LISTEN, load the table, apply notifications; on any failure,
//! keep serving the last table, reconnect with backoff and load again.
//!
//! # Why nothing is missed
//! The session LISTENs before it loads. A change committed before the load's snapshot is in the
//! snapshot; one committed after it is notified (PostgreSQL delivers, in commit order, every
//! notification committed after LISTEN returned). Some notifications describe changes the
//! snapshot already has (committed between LISTEN and the snapshot); they are applied anyway,
//! and since every change *sets* rows to a state rather than adjusting them (see
//! [`Change`]), replaying that overlap converges to the database's table. The same holds for the
//! periodic reload: queued notifications are never discarded, only applied after it.

use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_postgres::{AsyncMessage, Client};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::change::Change;
use super::connect::{Connect, ConnectionMessages};
use super::options::CacheOptions;
use super::shared::Shared;
use super::table::{SubscriberTable, TableLoader};

/// Notifications applied under one write lock at most.
const MAX_BATCH: usize = 1024;

/// How long a closing connection may take to say goodbye to the server.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

const LOAD_SQL: &str = "SELECT id, client_id, restaurant_id FROM public.subscribers_restaurants";
const ROW_SQL: &str =
    "SELECT client_id, restaurant_id FROM public.subscribers_restaurants WHERE id = $1";

/// Why a session ended. Each ends the connection; the task reconnects.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{what} failed: {source}")]
    Database {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("the connection closed")]
    Closed,
}

/// The instant "now" as tokio's clock sees it, so that tests may pause time.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A number in `[0, 1)` that differs between calls and processes (std's per-instance random
/// hash keys), for the reconnection jitter: no dependency for so small a need.
fn jitter() -> f64 {
    let hasher = std::collections::hash_map::RandomState::new().build_hasher();
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

pub(super) async fn run<C: Connect>(
    shared: Arc<Shared>,
    connector: Arc<C>,
    options: CacheOptions,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(options.reconnect_min, options.reconnect_max);
    loop {
        let mut slot = None;
        let outcome = tokio::select! {
            biased;
            () = shutdown.cancelled() => None,
            error = serve(&shared, &*connector, &options, &mut backoff, &mut slot) => Some(error),
        };
        if let Some(session) = slot.take() {
            session.close().await;
        }
        let Some(error) = outcome else { break };
        shared.disconnected(now());
        let delay = backoff.next_delay(jitter());
        let rows_served = shared.read().row_count();
        warn!(
            error = %error,
            retry_in_ms = delay.as_millis() as u64,
            rows_served,
            "subscriber cache lost its database session; serving the last table meanwhile"
        );
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
    shared.stopped();
    info!("subscriber cache stopped");
}

/// One session, from connecting to its failure. The session is kept in `slot` so that the
/// caller can close it properly even when this future is dropped at shutdown.
async fn serve<C: Connect>(
    shared: &Arc<Shared>,
    connector: &C,
    options: &CacheOptions,
    backoff: &mut Backoff,
    slot: &mut Option<Session>,
) -> SessionError {
    match serve_session(shared, connector, options, backoff, slot).await {
        Ok(never) => match never {},
        Err(error) => error,
    }
}

async fn serve_session<C: Connect>(
    shared: &Arc<Shared>,
    connector: &C,
    options: &CacheOptions,
    backoff: &mut Backoff,
    slot: &mut Option<Session>,
) -> Result<Infallible, SessionError> {
    let session = slot.insert(Session::connect(connector, options, shared).await?);
    session.listen(options).await?;
    session.resync(shared, options, "connected").await?;
    backoff.reset();
    let period = options.resync_interval;
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        if session.overflow.swap(false, Ordering::AcqRel) {
            session
                .resync(shared, options, "notifications dropped")
                .await?;
            timer.reset();
        }
        tokio::select! {
            _ = timer.tick() => session.resync(shared, options, "periodic").await?,
            received = session.notifications.recv_many(&mut batch, MAX_BATCH) => {
                if received == 0 {
                    return Err(SessionError::Closed);
                }
                session.apply(shared, options, &batch).await?;
                batch.clear();
            }
        }
    }
}

/// One connection: the client for queries, and the notifications its driver task forwards.
struct Session {
    client: Client,
    notifications: mpsc::Receiver<String>,
    /// Set by the driver when it had to drop a notification: the table must be reloaded.
    overflow: Arc<AtomicBool>,
    driver: JoinHandle<()>,
}

impl Session {
    async fn connect<C: Connect>(
        connector: &C,
        options: &CacheOptions,
        shared: &Arc<Shared>,
    ) -> Result<Self, SessionError> {
        let (client, messages) =
            bounded(options.query_timeout, "connecting", connector.connect()).await?;
        let (sender, notifications) = mpsc::channel(options.queue_capacity);
        let overflow = Arc::new(AtomicBool::new(false));
        let driver = tokio::spawn(drive(
            messages,
            options.channel.clone(),
            sender,
            Arc::clone(&overflow),
            Arc::clone(shared),
        ));
        shared.connections.fetch_add(1, Ordering::Relaxed);
        Ok(Self {
            client,
            notifications,
            overflow,
            driver,
        })
    }

    async fn listen(&self, options: &CacheOptions) -> Result<(), SessionError> {
        let sql = format!("LISTEN {}", quote_identifier(&options.channel));
        bounded(
            options.query_timeout,
            "LISTEN",
            self.client.batch_execute(&sql),
        )
        .await
    }

    /// Loads the whole table and swaps it in.
    async fn resync(
        &self,
        shared: &Shared,
        options: &CacheOptions,
        reason: &'static str,
    ) -> Result<(), SessionError> {
        let started = now();
        let table = bounded(options.query_timeout, "full load", load(&self.client)).await?;
        let (rows, restaurants) = (table.row_count(), table.restaurant_count());
        let finished = now();
        shared.replace(table, finished);
        info!(
            reason,
            rows,
            restaurants,
            elapsed_ms = finished.duration_since(started).as_millis() as u64,
            "subscriber table loaded"
        );
        Ok(())
    }

    /// Applies a batch in arrival order: runs of plain changes under one write lock each; a
    /// change that needs the database is done in its place in the sequence.
    async fn apply(
        &self,
        shared: &Shared,
        options: &CacheOptions,
        batch: &[String],
    ) -> Result<(), SessionError> {
        let mut pending = Vec::with_capacity(batch.len());
        for payload in batch {
            match Change::parse(payload) {
                Ok(change) if !change.needs_database() => pending.push(change),
                Ok(Change::Refetch { old_id, id }) => {
                    apply_all(shared, &mut pending);
                    pending.extend(self.refetch(options, old_id, id).await?);
                    apply_all(shared, &mut pending);
                }
                Ok(_) => {
                    apply_all(shared, &mut pending);
                    self.resync(shared, options, "table truncated").await?;
                }
                Err(error) => {
                    warn!(%error, bytes = payload.len(), "unexpected subscriber notification");
                    apply_all(shared, &mut pending);
                    self.resync(shared, options, "unexpected notification")
                        .await?;
                }
            }
        }
        apply_all(shared, &mut pending);
        shared.changes_applied(batch.len() as u64, now());
        debug!(notifications = batch.len(), "subscriber changes applied");
        Ok(())
    }

    /// The current state of a row whose ids did not fit in its notification.
    async fn refetch(
        &self,
        options: &CacheOptions,
        old_id: Option<i32>,
        id: i32,
    ) -> Result<Vec<Change>, SessionError> {
        let what = "reading a changed row";
        let row = bounded(
            options.query_timeout,
            what,
            self.client.query_opt(ROW_SQL, &[&id]),
        )
        .await?;
        let mut changes = Vec::with_capacity(2);
        if let Some(old_id) = old_id.filter(|&old_id| old_id != id) {
            changes.push(Change::Delete { id: old_id });
        }
        changes.push(match row {
            Some(row) => Change::Upsert {
                id,
                client_id: row
                    .try_get(0)
                    .map_err(|source| SessionError::Database { what, source })?,
                restaurant_id: row
                    .try_get(1)
                    .map_err(|source| SessionError::Database { what, source })?,
            },
            None => Change::Delete { id },
        });
        Ok(changes)
    }

    /// Ends the connection politely: dropping the client makes the driver send Terminate and
    /// finish; a driver that cannot within the grace period is aborted.
    async fn close(self) {
        let Session {
            client,
            notifications,
            mut driver,
            ..
        } = self;
        drop(client);
        drop(notifications);
        if tokio::time::timeout(CLOSE_GRACE, &mut driver)
            .await
            .is_err()
        {
            driver.abort();
        }
    }
}

fn apply_all(shared: &Shared, pending: &mut Vec<Change>) {
    if pending.is_empty() {
        return;
    }
    let mut table = shared.write();
    for change in pending.drain(..) {
        table.apply(&change);
    }
}

async fn load(client: &Client) -> Result<SubscriberTable, tokio_postgres::Error> {
    let rows = client
        .query_raw(LOAD_SQL, std::iter::empty::<i32>())
        .await?;
    futures::pin_mut!(rows);
    let mut table = TableLoader::default();
    while let Some(row) = rows.try_next().await? {
        let client_id: &str = row.try_get(1)?;
        let restaurant_id: &str = row.try_get(2)?;
        table.upsert(row.try_get(0)?, client_id, restaurant_id);
    }
    Ok(table.finish())
}

/// Polls the connection (which is what makes its queries progress) and forwards the
/// notifications of `channel`. Never blocks on the cache: when the queue is full it drops the
/// notification and raises `overflow`, which makes the cache reload the table.
async fn drive(
    mut messages: ConnectionMessages,
    channel: String,
    sender: mpsc::Sender<String>,
    overflow: Arc<AtomicBool>,
    shared: Arc<Shared>,
) {
    while let Some(message) = messages.next().await {
        match message {
            Ok(AsyncMessage::Notification(notification)) if notification.channel() == channel => {
                match sender.try_send(notification.payload().to_owned()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        overflow.store(true, Ordering::Release);
                        shared.notifications_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    // The session is closing; keep polling so the connection can shut down.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
            Ok(AsyncMessage::Notice(notice)) => {
                debug!(message = notice.message(), "subscriber connection notice");
            }
            Ok(_) => {}
            Err(error) => {
                // The session then fails with "connection closed"; this is the cause.
                warn!(%error, "subscriber connection failed");
                return;
            }
        }
    }
}

async fn bounded<T>(
    limit: Duration,
    what: &'static str,
    work: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, SessionError> {
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(SessionError::Database { what, source }),
        Err(_) => Err(SessionError::Timeout(what)),
    }
}

/// `name` as an SQL identifier: LISTEN takes an identifier, and pg_notify's channel is matched
/// exactly, so the name is quoted to keep its case.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_keep_their_case_and_quotes() {
        assert_eq!(
            quote_identifier("campaign_push_subscribers"),
            "\"campaign_push_subscribers\""
        );
        assert_eq!(quote_identifier("A\"b"), "\"A\"\"b\"");
    }

    #[test]
    fn jitter_is_in_range() {
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
