//! `/v1/tenants/{t}/events`: ingest (publish) and the event log (read).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde::Serialize;
use serde_json::value::RawValue;
use tracing::Instrument;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::doc::{BodyErrors, Errors, Problem, WireEvent};
use super::{Access, ApiError, AppState, Caller, Page, Params, need, read_json_body, rfc3339};
use crate::auth::Scope;
use crate::event::{self, ParseError, Timestamp};
use crate::otel::{self, TraceContext};
use crate::store::{Accepted, EventQuery, StoredEvent};
use crate::telemetry;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, publish))
        .routes(routes!(super::streams::events))
        .routes(routes!(show))
}

#[derive(Serialize, ToSchema)]
struct PublishResponse {
    /// One per posted event, in order.
    events: Vec<Accepted>,
}

/// One event, or an array of up to 1,000.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum PublishBody {
    One(WireEvent),
    Many(Vec<WireEvent>),
}

/// The log's filters.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct LogQuery {
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The sequence to start after (`next_after` of the previous page).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// Only this category.
    #[param(minimum = 0, maximum = 255)]
    category: Option<u8>,
    /// Only this code.
    #[param(minimum = 0)]
    code: Option<u32>,
    /// Only this agent's events (`AdditionalFields.Username`).
    username: Option<String>,
    /// `CreationDateUtc` from (`yyyyMMddHHmmss`, inclusive).
    #[param(pattern = "^[0-9]{14}$")]
    since: Option<String>,
    /// `CreationDateUtc` up to (`yyyyMMddHHmmss`, inclusive).
    #[param(pattern = "^[0-9]{14}$")]
    until: Option<String>,
}

/// Publish events: `202` once they and their deliveries are durably committed.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/events", tag = "events",
    params(("tenant" = String, Path, description = "The tenant's id"),
        ("traceparent" = Option<String>, Header, description = "W3C Trace Context: stored with \
            the events and sent with every attempt of their deliveries; malformed: ignored"),
        ("tracestate" = Option<String>, Header, description = "W3C Trace Context: kept with \
            `traceparent`")),
    request_body(content = PublishBody, description = "One event, or an array of up to 1,000 \
        (docs/events.md)"),
    responses(
        (status = 202, body = PublishResponse,
         description = "Stored (or found already stored: `duplicate`)"),
        (status = 409, body = Problem, content_type = "application/problem+json",
         description = "An `Id` already stored with other content"),
        (status = 429, body = Problem, content_type = "application/problem+json",
         description = "The tenant's ingest limit is reached; see `Retry-After`"),
        Errors, BodyErrors),
    security(("bearer" = [])))]
async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // DESIGN §21: the producer's trace context (a malformed one is ignored: a new trace), and
    // the `ingest` span when traces are exported.
    let producer = TraceContext::from_headers(&headers);
    let (span, trace) = otel::ingest_span(producer, &tenant);
    let published = publish_traced(state, caller, tenant, headers, body, trace, &span)
        .instrument(span.clone())
        .await;
    if published.is_err() {
        otel::ingest_failed(&span);
    }
    published
}

async fn publish_traced(
    state: AppState,
    caller: Caller,
    tenant: String,
    headers: HeaderMap,
    body: Body,
    trace: Option<TraceContext>,
    span: &tracing::Span,
) -> Result<Response, ApiError> {
    // The hot path: the writer finds out whether the tenant exists as it commits, so a valid
    // request costs no read before it. Refusals still name a missing tenant first (404).
    caller.0.may(&tenant, Scope::Publish)?;
    let refused = |e: ApiError| async {
        caller.check_tenant(&state, &tenant, Scope::Publish).await?;
        Err::<Response, ApiError>(e)
    };
    let bytes = match read_json_body(&headers, body, state.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(e) => return refused(e).await,
    };
    // The tenant's limit is taken for the batch's length, found without validating its events
    // (and only counted when the tenant has a limit): over the limit, nothing more is done for
    // it. A body that does not parse takes nothing; its 400 follows.
    let is_array = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let length = || match is_array {
        true => serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(&bytes).map_or(0, |i| i.len()),
        false => 1,
    };
    if let Err(secs) = state.limits.take(&state.store, &tenant, length).await? {
        return Err(ApiError::TooManyRequests {
            retry_after_secs: secs,
        });
    }
    let events = match event::parse_batch(&bytes, &state.catalog) {
        Ok(events) => events,
        Err(ParseError::Malformed(e)) => {
            return refused(ApiError::Malformed(format!("malformed JSON: {e}"))).await;
        }
        Err(ParseError::Invalid(errors)) => return refused(ApiError::Invalid(errors)).await,
    };
    otel::ingest_events(span, &events);
    let accepted = state
        .store
        .ingest_traced(&tenant, events, trace)
        .await
        .map_err(|e| {
            let mut err = ApiError::from(e);
            // A single posted object has no index to name.
            if let (false, ApiError::Conflict { errors, .. }) = (is_array, &mut err) {
                errors.iter_mut().for_each(|e| e.index = None);
            }
            err
        })?;
    let new = accepted.iter().filter(|a| !a.duplicate).count();
    metrics::counter!(telemetry::EVENTS_INGESTED).increment(new as u64);
    Ok((
        StatusCode::ACCEPTED,
        Json(PublishResponse { events: accepted }),
    )
        .into_response())
}

/// An event-log item; the event is the stored canonical JSON, passed through unparsed.
#[derive(Serialize, ToSchema)]
pub(super) struct LogItem {
    pub(super) sequence: i64,
    /// When Switchboard accepted it (RFC 3339).
    #[schema(format = DateTime)]
    received_at: String,
    #[schema(value_type = WireEvent)]
    event: Box<RawValue>,
}

impl LogItem {
    pub(super) fn new(e: StoredEvent) -> Result<Self, ApiError> {
        Ok(LogItem {
            sequence: e.sequence,
            received_at: rfc3339(e.received_at),
            event: RawValue::from_string(e.body)
                .map_err(|e| ApiError::Internal(format!("stored event is not JSON: {e}")))?,
        })
    }
}

/// The event log, in sequence order, filtered and paginated.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/events", tag = "events",
    params(("tenant" = String, Path, description = "The tenant's id"), LogQuery),
    responses((status = 200, body = Page<LogItem>), Errors),
    security(("bearer" = [])))]
async fn list(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Read>,
    mut p: Params,
) -> Result<Json<Page<LogItem>>, ApiError> {
    let limit = p.limit()?;
    let timestamp = |p: &mut Params, name: &str| -> Result<Option<Timestamp>, ApiError> {
        p.take(name)
            .map(|v| Timestamp::parse(&v).map_err(|m| ApiError::invalid(name, m)))
            .transpose()
    };
    let mut q = EventQuery {
        after: p
            .parse("after", "a sequence number (a non-negative integer)")?
            .unwrap_or(0),
        limit: limit + 1,
        since: timestamp(&mut p, "since")?,
        until: timestamp(&mut p, "until")?,
        ..EventQuery::default()
    };
    filters(&mut p, &mut q)?;
    p.finish()?;
    if q.after < 0 {
        return Err(ApiError::invalid("after", "must be a non-negative integer"));
    }
    let _turn = state.reads.enter(&tenant).await?;
    let items = state.store.list_events(&tenant, &q).await?;
    let items = items
        .into_iter()
        .map(LogItem::new)
        .collect::<Result<_, _>>()?;
    Ok(Json(Page::new(items, limit, |i| i.sequence.to_string())))
}

/// The filters on what an event is, shared by the log and its stream: `category`, `code`,
/// `username`.
pub(super) fn filters(p: &mut Params, q: &mut EventQuery) -> Result<(), ApiError> {
    q.category = p.parse("category", "a category number from 0 to 255")?;
    q.code = p.parse("code", "a non-negative integer")?;
    q.username = p.take("username");
    Ok(())
}

#[derive(Serialize, ToSchema)]
struct EventDetail {
    #[serde(flatten)]
    item: LogItem,
    deliveries: Vec<super::deliveries::DeliveryView>,
}

/// One event, with its deliveries.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/events/{id}", tag = "events",
    params(("tenant" = String, Path, description = "The tenant's id"),
           ("id" = String, Path, description = "The event's `Id`")),
    responses((status = 200, body = EventDetail), Errors),
    security(("bearer" = [])))]
async fn show(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Read>,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<EventDetail>, ApiError> {
    let not_found = || ApiError::NotFound(format!("event {id} not found"));
    let uuid = Uuid::try_parse(&id).map_err(|_| not_found())?;
    let event = state
        .store
        .get_event(&tenant, uuid)
        .await?
        .ok_or_else(not_found)?;
    let deliveries = state.store.deliveries_of_event(&tenant, uuid).await?;
    Ok(Json(EventDetail {
        item: LogItem::new(event)?,
        deliveries: deliveries.into_iter().map(Into::into).collect(),
    }))
}
