//! Hot reload of the guest: from the watched file, SIGHUP, or the admin endpoint.
//!
//! A candidate is compiled off the hot path, checked against the world (`…Pre::new`), asked its
//! version, and run on the built-in canary batch; only then is it swapped in (see
//! [`GuestSlot`]). A candidate that fails any step is refused with a log line and a metric, and
//! the guest in service keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::guest::{GuestIdentity, GuestRuntime, GuestSlot, LoadError, canary};
use crate::metrics::Metrics;
use crate::supervisor::Supervisor;

/// What a successful reload or rollback changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwapReport {
    pub from: GuestIdentity,
    pub to: GuestIdentity,
}

/// Why a reload or rollback changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the candidate failed the canary batch: {0}")]
    Canary(String),
    #[error("the file holds the guest already in service ({0})")]
    Unchanged(String),
    #[error("there is no earlier version to roll back to")]
    NoEarlierVersion,
    #[error("this component ({0}) was rolled back; build a fixed one")]
    RolledBack(String),
}

pub struct Reloader {
    runtime: GuestRuntime,
    slot: Arc<GuestSlot>,
    path: PathBuf,
    metrics: Arc<Metrics>,
    /// One reload at a time: a file event and a SIGHUP arriving together load once.
    busy: tokio::sync::Mutex<()>,
    /// Told when a swap begins and ends.
    supervisor: Supervisor,
    /// Hashes of components that were rolled back, refused if they come again (e.g. the file
    /// watcher noticing the very build that an explicit reload already tried).
    rolled_back: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Reloader {
    pub fn new(
        runtime: GuestRuntime,
        slot: Arc<GuestSlot>,
        path: PathBuf,
        metrics: Arc<Metrics>,
        supervisor: Supervisor,
    ) -> Self {
        Self {
            runtime,
            slot,
            path,
            metrics,
            supervisor,
            busy: tokio::sync::Mutex::new(()),
            rolled_back: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Loads the configured file and, if it passes every check, puts it in service.
    pub async fn reload(&self, trigger: &str) -> Result<SwapReport, ReloadError> {
        let _busy = self.busy.lock().await;
        self.supervisor.reloading();
        let result = self.load_and_swap().await;
        self.record("reload", trigger, &result);
        self.supervisor.reloaded();
        result
    }

    /// Reads the file, refuses what it knows already (the component in service, or one rolled
    /// back) before compiling it, then compiles, checks and swaps in the rest.
    async fn load_and_swap(&self) -> Result<SwapReport, ReloadError> {
        let wasm = tokio::fs::read(&self.path)
            .await
            .map_err(|source| LoadError::Read {
                path: self.path.display().to_string(),
                source,
            })?;
        // Before the compile, which takes both cores for a tenth of a second or more: a file
        // touched or copied again unchanged costs a hash, not a compile.
        let sha256 = crate::guest::sha256_of(&wasm);
        if self.rolled_back.lock().expect("lock").contains(&sha256) {
            return Err(ReloadError::RolledBack(sha256));
        }
        let current = self.slot.current();
        if current.identity().sha256 == sha256 {
            return Err(ReloadError::Unchanged(current.identity().version.clone()));
        }
        let runtime = self.runtime.clone();
        let guest = tokio::task::spawn_blocking(move || {
            let guest = runtime.load(&wasm)?;
            canary::check(&guest).map_err(ReloadError::Canary)?;
            Ok::<_, ReloadError>(guest)
        })
        .await
        // A component that makes the compiler itself panic is refused like any other bad one.
        .unwrap_or_else(|panicked| {
            Err(ReloadError::Load(LoadError::Compile(format!(
                "compiling it panicked: {panicked}"
            ))))
        })?;
        let to = guest.identity().clone();
        let from = self.slot.swap(guest).identity().clone();
        Ok(SwapReport { from, to })
    }

    /// Puts the previous accepted version back in service.
    pub async fn rollback(&self, trigger: &str) -> Result<SwapReport, ReloadError> {
        let _busy = self.busy.lock().await;
        self.supervisor.reloading();
        let result = self
            .slot
            .rollback()
            .map(|(replaced, restored)| {
                self.rolled_back
                    .lock()
                    .expect("lock")
                    .insert(replaced.identity().sha256.clone());
                SwapReport {
                    from: replaced.identity().clone(),
                    to: restored.identity().clone(),
                }
            })
            .ok_or(ReloadError::NoEarlierVersion);
        self.record("rollback", trigger, &result);
        self.supervisor.reloaded();
        result
    }

    fn record(&self, action: &str, trigger: &str, result: &Result<SwapReport, ReloadError>) {
        match result {
            Ok(report) => {
                tracing::info!(
                    action,
                    trigger,
                    from = %report.from.version,
                    from_sha256 = %report.from.sha256,
                    to = %report.to.version,
                    to_sha256 = %report.to.sha256,
                    "guest swapped"
                );
                self.metrics
                    .set_guest(&report.to.version, &report.to.sha256);
                self.metrics.count_guest_swap(action, "accepted");
            }
            Err(ReloadError::Unchanged(_)) => {
                tracing::debug!(action, trigger, "guest file unchanged");
            }
            Err(error) => {
                tracing::warn!(action, trigger, %error, "guest refused; the previous one keeps serving");
                self.metrics.count_guest_swap(action, "refused");
            }
        }
    }
}

/// Watches the guest file and reloads when it has changed and then stayed the same for one more
/// poll, so that a file still being written is not loaded half-way (an atomic rename is seen as
/// one change). A failed load is retried at the file's next change.
pub async fn watch_file(reloader: Arc<Reloader>, interval: Duration, shutdown: CancellationToken) {
    let stamp = |path: &PathBuf| -> Option<(u64, SystemTime)> {
        let metadata = std::fs::metadata(path).ok()?;
        Some((metadata.len(), metadata.modified().ok()?))
    };
    let mut loaded = stamp(&reloader.path);
    let mut seen = loaded;
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = stamp(&reloader.path);
        if now != seen {
            seen = now;
            continue; // changed since the last poll: wait until it settles
        }
        if now.is_some() && now != loaded {
            loaded = now;
            let _ = reloader.reload("file changed").await;
        }
    }
}
