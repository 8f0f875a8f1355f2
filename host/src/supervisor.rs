//! Telling a supervisor how the service is doing: systemd's notification protocol
//! (`sd_notify`), for a unit of `Type=notify` with `WatchdogSec=`.
//!
//! The supervisor names a datagram socket in `NOTIFY_SOCKET` (a path, or `@name` for an abstract
//! socket); each message is a few `KEY=value` lines. The service sends `READY=1` once it consumes,
//! `RELOADING=1` and then `READY=1` around a guest swap, `STOPPING=1` when it is asked to stop,
//! and, if `WATCHDOG_USEC` is set, `WATCHDOG=1` at half that interval for as long as the pipeline
//! makes progress, so that a service stuck on a batch is restarted. Without `NOTIFY_SOCKET`
//! every call does nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::http::Progress;

/// The notification socket, if the service runs under a supervisor. Cheap to clone.
#[derive(Clone, Default)]
pub struct Supervisor {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    socket: UnixDatagram,
    address: SocketAddr,
    /// How often the supervisor expects a sign of life, if it watches.
    watchdog: Option<Duration>,
    /// `READY=1` was sent: a reload ends with it again only then.
    ready: AtomicBool,
    /// `STOPPING=1` was sent: a stop asked for and the end of `run` both announce it.
    stopping: AtomicBool,
}

impl Supervisor {
    /// The supervisor the environment names (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`),
    /// or none. A socket that cannot be reached is logged and ignored: the service runs anyway.
    pub fn from_env() -> Self {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Self::default();
        };
        let connect = || -> std::io::Result<Inner> {
            let path = path.to_string_lossy();
            let address = match path.strip_prefix('@') {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    SocketAddr::from_abstract_name(name.as_bytes())?
                }
                None => SocketAddr::from_pathname(&*path)?,
            };
            Ok(Inner {
                socket: UnixDatagram::unbound()?,
                address,
                watchdog: watchdog_from_env(),
                ready: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
            })
        };
        match connect() {
            Ok(inner) => Self {
                inner: Some(Arc::new(inner)),
            },
            Err(error) => {
                tracing::warn!(%error, "NOTIFY_SOCKET is set but unusable; not notifying");
                Self::default()
            }
        }
    }

    /// The service consumes: start-up is over.
    pub fn ready(&self) {
        if let Some(inner) = &self.inner {
            inner.ready.store(true, Ordering::Release);
        }
        self.send("READY=1\nSTATUS=consuming");
    }

    /// A guest swap begins. (`Type=notify` needs no `MONOTONIC_USEC`; only `notify-reload`,
    /// which Debian 12's systemd 252 lacks, would.)
    pub fn reloading(&self) {
        self.send("RELOADING=1\nSTATUS=loading a guest");
    }

    /// A guest swap ended, accepted or refused.
    pub fn reloaded(&self) {
        if self
            .inner
            .as_ref()
            .is_some_and(|inner| inner.ready.load(Ordering::Acquire))
        {
            self.send("READY=1\nSTATUS=consuming");
        }
    }

    /// The service was asked to stop, or stops because it failed.
    pub fn stopping(&self) {
        if self
            .inner
            .as_ref()
            .is_some_and(|inner| !inner.stopping.swap(true, Ordering::AcqRel))
        {
            self.send("STOPPING=1\nSTATUS=stopping");
        }
    }

    /// Sends `WATCHDOG=1` every half watchdog interval while `progress` reports no stalled batch,
    /// until `shutdown`. Does nothing if the supervisor does not watch.
    pub async fn keep_alive(self, progress: Arc<Progress>, shutdown: CancellationToken) {
        let Some(interval) = self.inner.as_ref().and_then(|inner| inner.watchdog) else {
            return;
        };
        let mut tick = tokio::time::interval(interval / 2);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match progress.check(Instant::now()) {
                Ok(()) => self.send("WATCHDOG=1"),
                // Silence lets the supervisor restart the service, as it should.
                Err(reason) => tracing::warn!(%reason, "no watchdog ping: the pipeline is stalled"),
            }
        }
    }

    fn send(&self, message: &str) {
        if let Some(inner) = &self.inner
            && let Err(error) = inner
                .socket
                .send_to_addr(message.as_bytes(), &inner.address)
        {
            tracing::warn!(%error, message, "cannot notify the supervisor");
        }
    }
}

/// `WATCHDOG_USEC`, if it is meant for this process (`WATCHDOG_PID` unset or ours).
fn watchdog_from_env() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_string_lossy() != std::process::id().to_string()
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}
