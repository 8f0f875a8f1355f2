//! The public operations endpoint: `/metrics` (Prometheus), `/healthz` (the process is alive) and
//! `/readyz` (subscriber cache loaded and pipeline consuming). None of them changes anything; the
//! admin actions have a listener of their own ([`crate::admin`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What `/readyz` reports, set by the parts of the service as they come up.
#[derive(Default)]
pub struct Readiness {
    pub subscribers_loaded: AtomicBool,
    pub pipeline_running: AtomicBool,
    pub progress: Arc<Progress>,
}

impl Readiness {
    /// `Ok` when ready, else why not.
    pub fn check(&self, now: Instant) -> Result<(), String> {
        if !self.subscribers_loaded.load(Ordering::Acquire) {
            return Err("the subscriber cache is not loaded yet".into());
        }
        if !self.pipeline_running.load(Ordering::Acquire) {
            return Err("the pipeline is not running".into());
        }
        self.progress.check(now)
    }
}

/// Whether the pipeline makes progress: a batch that has been in work for longer than the stall
/// bound (`pipeline.stall_timeout`) makes the service not ready, with the last error as reason.
pub struct Progress {
    stall_timeout: Duration,
    state: Mutex<ProgressState>,
}

#[derive(Default)]
struct ProgressState {
    /// When the batch in work was closed; `None` while waiting for input.
    working_since: Option<Instant>,
    last_error: Option<String>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

impl Progress {
    pub fn new(stall_timeout: Duration) -> Self {
        Self {
            stall_timeout,
            state: Mutex::default(),
        }
    }

    pub fn batch_started(&self) {
        let mut state = self.state.lock().expect("progress lock");
        state.working_since = Some(Instant::now());
        state.last_error = None;
    }

    pub fn failed(&self, error: &str) {
        self.state.lock().expect("progress lock").last_error = Some(error.to_owned());
    }

    pub fn batch_committed(&self) {
        let mut state = self.state.lock().expect("progress lock");
        state.working_since = None;
        state.last_error = None;
    }

    /// `Ok` unless a batch has been in work for longer than the stall bound.
    pub fn check(&self, now: Instant) -> Result<(), String> {
        let state = self.state.lock().expect("progress lock");
        match state.working_since {
            Some(since) if now.saturating_duration_since(since) > self.stall_timeout => {
                Err(format!(
                    "no batch committed for {}s (pipeline.stall_timeout {:?}); last error: {}",
                    now.saturating_duration_since(since).as_secs(),
                    self.stall_timeout,
                    state.last_error.as_deref().unwrap_or("none")
                ))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_in_work_past_the_stall_bound_is_not_ready_and_says_why() {
        let progress = Progress::new(Duration::from_secs(5));
        let start = Instant::now();
        assert!(
            progress.check(start + Duration::from_secs(60)).is_ok(),
            "idle is fine"
        );
        progress.batch_started();
        progress.failed("postgres: connection refused");
        assert!(
            progress
                .check(Instant::now() + Duration::from_secs(4))
                .is_ok()
        );
        let reason = progress
            .check(Instant::now() + Duration::from_secs(6))
            .unwrap_err();
        assert!(reason.contains("postgres: connection refused"), "{reason}");
        progress.batch_committed();
        assert!(
            progress
                .check(Instant::now() + Duration::from_secs(600))
                .is_ok()
        );
    }
}

/// What the endpoint reports on.
#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
}

/// Binds `listen` (failing at start-up if it cannot) and serves until `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(state);
    bind_and_serve(
        "http.listen",
        listen,
        "/metrics, /healthz, /readyz",
        app,
        shutdown,
    )
    .await
}

/// Binds `listen` (failing at start-up, naming `key`, if it cannot) and serves `app` on it until
/// `shutdown`.
pub async fn bind_and_serve(
    key: &str,
    listen: SocketAddr,
    routes: &str,
    app: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("{key}: cannot bind {listen}: {e}"))?;
    tracing::info!(address = %listener.local_addr()?, routes, "serving");
    let key = key.to_owned();
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, key, "an HTTP listener stopped");
        }
    }))
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    match state.readiness.check(Instant::now()) {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}
