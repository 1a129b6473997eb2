//! Liveness, readiness and metrics, unauthenticated (served by every role).

use std::fmt::Write;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{ApiError, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Prometheus text: what this process counted (ingest, attempts, latencies), then gauges the
/// database answers (pending deliveries, subscriptions by state).
async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
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

/// The process is up and serving HTTP.
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The database answers.
async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.store.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness check failed");
        ApiError::Unavailable("the database is not reachable".into())
    })?;
    Ok(Json(json!({"status": "ready"})))
}
