//! Liveness, readiness and metrics, unauthenticated (served by every role) — but `/metrics`
//! needs a bearer key when `metrics_key` is set.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::doc::Problem;
use super::{ApiError, AppState};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
}

/// This document (OpenAPI 3.1).
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, content_type = "application/json", body = Object,
               description = "The OpenAPI 3.1 document")))]
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::doc::document(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, content_type = "text/plain", body = String,
         description = "Prometheus text exposition"),
        (status = 401, content_type = "application/problem+json", body = Problem,
         description = "`metrics_key` is set and the request does not carry it (or the admin key)"),
        (status = 503, content_type = "application/problem+json", body = Problem,
         description = "The database does not answer")))]
/// Prometheus text: what this process counted (ingest, attempts, latencies), then gauges the
/// database answers (pending deliveries, subscriptions by state).
async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(metrics_key) = &state.settings.metrics_key_hash {
        let hash = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(super::bearer_token)
            .map(crate::auth::hash_key);
        let allowed = hash.is_some_and(|h| h == *metrics_key || *h == *state.admin_key_hash);
        if !allowed {
            return Err(ApiError::Unauthorized);
        }
    }
    let mut text = crate::telemetry::metrics()
        .map(|handle| {
            handle.run_upkeep();
            handle.render()
        })
        .unwrap_or_default();
    let stats = state.store.stats().await?;
    let disabled = stats.subscriptions - stats.subscriptions_enabled;
    let _ = write!(
        text,
        "# HELP switchboard_deliveries_pending Deliveries not yet delivered nor failed.\n\
         # TYPE switchboard_deliveries_pending gauge\n\
         switchboard_deliveries_pending {}\n\
         # HELP switchboard_subscriptions Subscriptions, by state.\n\
         # TYPE switchboard_subscriptions gauge\n\
         switchboard_subscriptions{{state=\"enabled\"}} {}\n\
         switchboard_subscriptions{{state=\"disabled\"}} {disabled}\n",
        stats.pending, stats.subscriptions_enabled,
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// What `/healthz` and `/readyz` answer when all is well (plain JSON, not problem+json).
#[derive(Serialize, utoipa::ToSchema)]
struct Status {
    /// `ok` from `/healthz`; `ready` (200) or `draining` (503) from `/readyz`.
    #[schema(example = "ok")]
    status: &'static str,
}

/// The process is up and serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Status, description = "`{\"status\": \"ok\"}`")))]
async fn healthz() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// The database answers and takes writes.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, body = Status, description = "Ready: `{\"status\": \"ready\"}`"),
        (status = 503, description = "Not ready: the database does not answer or take writes \
         (problem+json), or the node is draining before it stops (`{\"status\": \"draining\"}`)",
         content(
            (Problem = "application/problem+json"),
            (Status = "application/json")))))]
async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        let draining = Json(Status { status: "draining" });
        return Ok((StatusCode::SERVICE_UNAVAILABLE, draining).into_response());
    }
    state.store.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness check failed");
        ApiError::Unavailable("the database is not reachable".into())
    })?;
    Ok(Json(Status { status: "ready" }).into_response())
}
