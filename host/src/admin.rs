//! The admin API: `POST /admin/reload` (load the guest file now) and `POST /admin/rollback`
//! (put the previous version back), on a listener of its own (`admin.listen`, loopback by
//! default).
//!
//! Every request must carry `Authorization: Bearer <token>` with the token of
//! `admin.token_file` (else 401), and none may come from a web page: a request with an `Origin`
//! header, or that a browser marks as cross-site, is refused (403). Without a configured token the
//! API is not served at all.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::reload::{ReloadError, Reloader, SwapReport};

/// What the admin API acts upon, and who may ask.
#[derive(Clone)]
pub struct AdminState {
    pub reloader: Arc<Reloader>,
    pub token: Arc<Secret>,
}

/// Binds `listen` (failing at start-up if it cannot) and serves the admin routes until
/// `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    state: AdminState,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    if !listen.ip().is_loopback() {
        tracing::warn!(%listen, "the admin API listens beyond loopback; the bearer token is all that guards it");
    }
    let app = Router::new()
        .route("/admin/reload", post(reload))
        .route("/admin/rollback", post(rollback))
        .with_state(state);
    crate::http::bind_and_serve(
        "admin.listen",
        listen,
        "/admin/reload, /admin/rollback",
        app,
        shutdown,
    )
    .await
}

async fn reload(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse(&headers, &state.token) {
        return refused;
    }
    swap_response(state.reloader.reload("admin endpoint").await)
}

async fn rollback(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse(&headers, &state.token) {
        return refused;
    }
    swap_response(state.reloader.rollback("admin endpoint").await)
}

/// Why a request is refused: checked before anything is done, and logged without the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No `Authorization: Bearer` header, or not the configured token.
    Unauthenticated,
    /// Sent by a web page: a browser adds `Origin` to cross-origin requests (and to every POST),
    /// and `Sec-Fetch-Site` when another site made it. Operators' tools send neither.
    CrossOrigin,
}

fn check(headers: &HeaderMap, token: &Secret) -> Result<(), Refusal> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
    if !presented.is_some_and(|candidate| token.matches(candidate)) {
        return Err(Refusal::Unauthenticated);
    }
    let cross_site = headers
        .get("sec-fetch-site")
        .is_some_and(|site| !matches!(site.as_bytes(), b"none" | b"same-origin"));
    if headers.contains_key(header::ORIGIN) || cross_site {
        return Err(Refusal::CrossOrigin);
    }
    Ok(())
}

/// The response refusing the request, if it must be refused.
fn refuse(headers: &HeaderMap, token: &Secret) -> Option<Response> {
    check(headers, token).err().map(|refusal| {
        tracing::warn!(?refusal, "admin request refused");
        match refusal {
            Refusal::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(serde_json::json!({
                    "error": "an admin request needs Authorization: Bearer <the token of admin.token_file>"
                })),
            )
                .into_response(),
            Refusal::CrossOrigin => (
                StatusCode::FORBIDDEN,
                Json(serde_json::json!({ "error": "cross-origin requests are refused" })),
            )
                .into_response(),
        }
    })
}

/// 200 with `{"from": …, "to": …}`, or 409 (nothing changed) / 422 (refused) with the reason.
fn swap_response(result: Result<SwapReport, ReloadError>) -> Response {
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const TOKEN: &str = "0123456789abcdef-token";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn only_the_token_from_a_tool_is_let_through() {
        let token = Secret::new(TOKEN);
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(
            check(&headers(&[("authorization", &bearer)]), &token),
            Ok(())
        );
        assert_eq!(
            check(
                &headers(&[("authorization", &bearer), ("sec-fetch-site", "none")]),
                &token
            ),
            Ok(()),
            "typed into the browser's address bar by the operator"
        );
        let unauthenticated = [
            headers(&[]),
            headers(&[("authorization", TOKEN)]),
            headers(&[("authorization", &format!("Basic {TOKEN}"))]),
            headers(&[("authorization", &format!("Bearer {TOKEN}x"))]),
            headers(&[("authorization", "Bearer ")]),
        ];
        for request in unauthenticated {
            assert_eq!(check(&request, &token), Err(Refusal::Unauthenticated));
        }
        let cross_origin = [
            headers(&[
                ("authorization", &bearer),
                ("origin", "https://evil.example"),
            ]),
            headers(&[("authorization", &bearer), ("origin", "null")]),
            headers(&[("authorization", &bearer), ("sec-fetch-site", "cross-site")]),
        ];
        for request in cross_origin {
            assert_eq!(check(&request, &token), Err(Refusal::CrossOrigin));
        }
    }
}
