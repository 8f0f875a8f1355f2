//! The operations endpoint: `/metrics` (Prometheus), `/healthz` (the process is alive) and
//! `/readyz` (subscriber cache loaded and pipeline consuming), and the admin actions
//! `POST /admin/reload` (load the guest file now) and `POST /admin/rollback` (previous version).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::reload::{ReloadError, Reloader, SwapReport};

/// What `/readyz` reports, set by the parts of the service as they come up.
#[derive(Default)]
pub struct Readiness {
    pub subscribers_loaded: AtomicBool,
    pub pipeline_running: AtomicBool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.subscribers_loaded.load(Ordering::Acquire)
            && self.pipeline_running.load(Ordering::Acquire)
    }
}

/// What the endpoint reports on and acts upon.
#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub reloader: Arc<Reloader>,
}

/// Binds `listen` (failing at start-up if it cannot) and serves until `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("http.listen: cannot bind {listen}: {e}"))?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /healthz, /readyz, /admin/reload, /admin/rollback");
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/admin/reload", post(reload))
        .route("/admin/rollback", post(rollback))
        .with_state(state);
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the HTTP endpoint stopped");
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
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn reload(State(state): State<AppState>) -> impl IntoResponse {
    swap_response(state.reloader.reload("admin endpoint").await)
}

async fn rollback(State(state): State<AppState>) -> impl IntoResponse {
    swap_response(state.reloader.rollback("admin endpoint").await)
}

/// 200 with `{"from": …, "to": …}`, or 409 (nothing changed) / 422 (refused) with the reason.
fn swap_response(result: Result<SwapReport, ReloadError>) -> axum::response::Response {
    match result {
        Ok(report) => (StatusCode::OK, Json(report)).into_response(),
        Err(
            error @ (ReloadError::Unchanged(_)
            | ReloadError::NoEarlierVersion
            | ReloadError::RolledBack(_)),
        ) => (
            StatusCode::CONFLICT,
            Json(serde_json::json!({ "error": error.to_string() })),
        )
            .into_response(),
        Err(error) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(serde_json::json!({ "error": error.to_string() })),
        )
            .into_response(),
    }
}
