//! `/v1/tenants/{t}/deliveries/{id}`: one delivery with its attempts, and retrying it now.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::doc::{Conflict, Errors};
use super::{Access, ApiError, AppState, need, rfc3339};
use crate::store::{AttemptRecord, DeliveryRecord, DeliveryStatus};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(show))
        .routes(routes!(retry))
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: i64,
    event_id: String,
    subscription_id: String,
    sequence: i64,
    status: DeliveryStatus,
    attempt_count: i64,
    next_attempt_at: Option<String>,
    last_status_code: Option<i64>,
    last_error: Option<String>,
    created_at: String,
    updated_at: String,
}

impl From<DeliveryRecord> for DeliveryView {
    fn from(d: DeliveryRecord) -> Self {
        DeliveryView {
            id: d.id,
            event_id: d.event_id,
            subscription_id: d.subscription_id,
            sequence: d.sequence,
            status: d.status,
            attempt_count: d.attempt_count,
            next_attempt_at: d.next_attempt_at.map(rfc3339),
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            created_at: rfc3339(d.created_at),
            updated_at: rfc3339(d.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
struct AttemptView {
    number: i64,
    started_at: String,
    duration_ms: i64,
    status_code: Option<i64>,
    error: Option<String>,
    response_body: Option<String>,
}

impl From<AttemptRecord> for AttemptView {
    fn from(a: AttemptRecord) -> Self {
        AttemptView {
            number: a.number,
            started_at: rfc3339(a.started_at),
            duration_ms: a.duration_ms,
            status_code: a.status_code,
            error: a.error,
            response_body: a.response_body,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct DeliveryDetail {
    #[serde(flatten)]
    delivery: DeliveryView,
    attempts: Vec<AttemptView>,
}

fn parse_id(id: &str) -> Result<i64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::NotFound(format!("delivery {id} not found")))
}

/// A delivery with every attempt.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/deliveries/{id}", tag = "deliveries",
    params(("tenant" = String, Path, description = "The tenant's id"), ("id" = String, Path, description = "The delivery's id")),
    responses((status = 200, body = DeliveryDetail), Errors),
    security(("bearer" = [])))]
async fn show(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Read>,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<DeliveryDetail>, ApiError> {
    let (delivery, attempts) = state
        .store
        .get_delivery(&tenant, parse_id(&id)?)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("delivery {id} not found")))?;
    Ok(Json(DeliveryDetail {
        delivery: delivery.into(),
        attempts: attempts.into_iter().map(AttemptView::from).collect(),
    }))
}

/// Makes the delivery due now. A finished (succeeded or failed) delivery gets one attempt; a
/// pending one keeps its schedule and is simply tried now.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/deliveries/{id}/retry", tag = "deliveries",
    params(("tenant" = String, Path, description = "The tenant's id"), ("id" = String, Path, description = "The delivery's id")),
    responses((status = 202, body = DeliveryView, description = "Due now"), Errors, Conflict),
    security(("bearer" = [])))]
async fn retry(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Manage>,
    Path((_, id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<DeliveryView>), ApiError> {
    let not_found = || ApiError::NotFound(format!("delivery {id} not found"));
    let delivery_id = parse_id(&id)?;
    let (delivery, _) = state
        .store
        .get_delivery(&tenant, delivery_id)
        .await?
        .ok_or_else(not_found)?;
    let sub = state
        .store
        .get_subscription(&tenant, &delivery.subscription_id)
        .await?
        .ok_or_else(not_found)?
        .map_err(|bad| ApiError::undecodable(&bad.id))?;
    // Its round is set so that the next attempt is the last one of the schedule.
    let last_round = sub.spec.schedule().len() as i64;
    if !state
        .store
        .retry_delivery(&tenant, delivery_id, last_round)
        .await?
    {
        return Err(not_found());
    }
    let (delivery, _) = state
        .store
        .get_delivery(&tenant, delivery_id)
        .await?
        .ok_or_else(not_found)?;
    Ok((StatusCode::ACCEPTED, Json(delivery.into())))
}
