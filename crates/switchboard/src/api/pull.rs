//! Pull subscriptions' consumers (DESIGN §16): `…/messages` (with long poll), `…/commit` and
//! `…/seek`. Messages are read from the tenant's log after each partition's committed cursor;
//! nothing is copied per subscription.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::doc::{BodyErrors, Conflict, Errors};
use super::events::LogItem;
use super::{Access, ApiError, AppState, Params, json_body, need};
use crate::clock::now_millis;
use crate::event::Timestamp;
use crate::store::{LAG_SCAN, Lag, LagCount, SubscriptionRecord};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(messages))
        .routes(routes!(commit))
        .routes(routes!(seek))
}

/// Longest long poll.
const MAX_WAIT_SECS: u64 = 30;

/// How far behind a partition (or a whole pull subscription) is.
#[derive(Serialize, ToSchema)]
pub(super) struct PullLag {
    /// Matching events after the committed cursor (counted among the next 10,000 events of
    /// the log; beyond them, at least this many).
    pending: i64,
    /// How long ago the oldest of them was received, in ms; 0 when none is pending.
    oldest_pending_age_ms: i64,
}

impl PullLag {
    fn of(lag: Lag, now: i64) -> Self {
        PullLag {
            pending: lag.pending,
            oldest_pending_age_ms: lag.oldest_since.map_or(0, |s| (now - s).max(0)),
        }
    }
}

/// A page of a partition's messages.
#[derive(Serialize, ToSchema)]
struct Messages {
    partition: u32,
    /// The matching events after the cursor, in sequence order.
    data: Vec<LogItem>,
    /// The last sequence examined (it may pass events that do not match): commit it once
    /// `data` is handled, or pass it as `after` to read on without committing.
    next_cursor: i64,
    lag: PullLag,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct MessagesQuery {
    /// The partition to read (default 0).
    #[param(minimum = 0, maximum = 63)]
    partition: Option<u32>,
    /// Most events to answer, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Seconds to wait for a matching event when there is none yet, 0 to 30 (default 0).
    #[param(minimum = 0, maximum = 30)]
    wait_secs: Option<u64>,
    /// Read after this sequence instead of the committed cursor (the cursor does not move).
    #[param(minimum = 0)]
    after: Option<i64>,
}

/// The pull subscription `id` of `tenant`: a push one is a `409`.
async fn find_pull(
    state: &AppState,
    tenant: &str,
    id: &str,
) -> Result<SubscriptionRecord, ApiError> {
    let rec = state
        .store
        .get_subscription(tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("subscription {id} not found")))?
        .map_err(|bad| ApiError::undecodable(&bad.id))?;
    if !rec.spec.is_pull() {
        return Err(ApiError::Conflict {
            detail: format!(
                "subscription {id} is a push subscription: its events are sent to its url; \
                 messages, commit and seek are for pull subscriptions (mode: pull)"
            ),
            errors: Vec::new(),
        });
    }
    Ok(rec)
}

/// A partition number, checked against the subscription's partitions.
fn partition(rec: &SubscriptionRecord, p: u32) -> Result<u32, ApiError> {
    let count = rec.spec.partition_count();
    if p >= count {
        return Err(ApiError::invalid(
            "partition",
            format!("must be 0 to {} (the subscription has {count})", count - 1),
        ));
    }
    Ok(p)
}

/// The matching events of one partition after its committed cursor (or `after`), in sequence
/// order; with `wait_secs`, waits for one to be committed when there is none yet. A waiting
/// call holds one of the key's streams (`max_streams_per_key`, DESIGN §23).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/subscriptions/{id}/messages",
    tag = "subscriptions",
    params(("tenant" = String, Path, description = "The tenant's id"), ("id" = String, Path, description = "The subscription's id"), MessagesQuery),
    responses((status = 200, body = Messages), Errors, Conflict),
    security(("bearer" = [])))]
async fn messages(
    State(state): State<AppState>,
    access: Access<need::Consume>,
    Path((_, id)): Path<(String, String)>,
    mut p: Params,
) -> Result<Json<Messages>, ApiError> {
    let part = p.parse::<u32>("partition", "an integer from 0 to 63")?;
    let limit = p.limit()?;
    let wait = match p.parse::<u64>("wait_secs", "an integer from 0 to 30")? {
        Some(w) if w > MAX_WAIT_SECS => {
            return Err(ApiError::invalid(
                "wait_secs",
                format!("must be from 0 to 30, got {w}"),
            ));
        }
        w => w.unwrap_or(0),
    };
    let after = match p.parse::<i64>("after", "a sequence (an integer of 0 or more)")? {
        Some(a) if a < 0 => return Err(ApiError::invalid("after", "must be 0 or more")),
        a => a,
    };
    p.finish()?;
    let tenant = access.tenant.as_str();
    let rec = find_pull(&state, tenant, &id).await?;
    let part = partition(&rec, part.unwrap_or(0))?;
    let now = now_millis();
    state.store.touch_pull(&id, now).await?;
    let cursors = state.store.pull_cursors(&id).await?;
    let committed = cursors.get(part as usize).copied().unwrap_or(0);
    let mut from = after.unwrap_or(committed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let mut commits = state.store.commits(tenant);
    let mut stop = state.streams_stop.clone();
    let mut slot = None;
    let pulled = loop {
        commits.borrow_and_update();
        let head = state.store.last_sequence(tenant).await?;
        let pulled = {
            let _turn = state.reads.enter(tenant).await?;
            state
                .store
                .pull_messages(
                    tenant,
                    &rec.spec,
                    part,
                    from,
                    head,
                    limit as usize,
                    now_millis(),
                )
                .await?
        };
        if !pulled.events.is_empty() || tokio::time::Instant::now() >= deadline || *stop.borrow() {
            break pulled;
        }
        // Nothing yet: wait for the tenant's next commit, holding a stream's place.
        if slot.is_none() {
            slot = Some(state.streams_open.take(&access.key_hash, tenant)?);
        }
        from = pulled.next_cursor;
        tokio::select! {
            changed = commits.changed() => {
                if changed.is_err() {
                    break pulled;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
            _ = stop.changed() => {}
        }
    };
    drop(slot);
    // The partition's lag: when this read started at the committed cursor, what it found is
    // pending, and the count goes on from where it stopped; else it starts at the cursor.
    let now = now_millis();
    let mut count = [LagCount {
        spec: &rec.spec,
        cursors: &cursors,
        partition: Some(part),
        lag: Lag::default(),
    }];
    let (from, budget) = match after {
        None => {
            count[0].lag = Lag {
                pending: pulled.events.len() as i64,
                oldest_since: pulled.events.first().map(|e| e.received_at),
            };
            (pulled.next_cursor, LAG_SCAN.saturating_sub(pulled.examined))
        }
        Some(_) => (committed, LAG_SCAN),
    };
    state
        .store
        .count_pull_lags(tenant, &mut count, Some(from), budget, now)
        .await?;
    let [LagCount { lag, .. }] = count;
    // The subscription's `redact` (DESIGN §19), as its pushed deliveries would have it.
    let redactor = state.sender.redactor(&rec);
    let data = pulled
        .events
        .into_iter()
        .map(|mut e| {
            if let Some(body) = redactor.as_ref().and_then(|r| r.apply(e.body.as_bytes())) {
                e.body = String::from_utf8(body).unwrap_or_default();
            }
            LogItem::new(e)
        })
        .collect::<Result<_, _>>()?;
    Ok(Json(Messages {
        partition: part,
        data,
        next_cursor: pulled.next_cursor,
        lag: PullLag::of(lag, now),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CommitRequest {
    /// Default 0.
    #[serde(default)]
    partition: u32,
    /// The last sequence handled (`next_cursor` of a `messages` answer): forward only, at most
    /// the tenant's last sequence.
    cursor: i64,
}

/// A partition's committed cursor.
#[derive(Serialize, ToSchema)]
struct Cursor {
    partition: u32,
    cursor: i64,
}

/// Commits a partition's cursor: what is at or before it is not read again.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/subscriptions/{id}/commit",
    tag = "subscriptions",
    params(("tenant" = String, Path, description = "The tenant's id"), ("id" = String, Path, description = "The subscription's id")),
    request_body = CommitRequest,
    responses((status = 200, body = Cursor), Errors, BodyErrors, Conflict),
    security(("bearer" = [])))]
async fn commit(
    State(state): State<AppState>,
    access: Access<need::Consume>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Cursor>, ApiError> {
    let req: CommitRequest = json_body(&state, &headers, body).await?;
    let tenant = access.tenant.as_str();
    let rec = find_pull(&state, tenant, &id).await?;
    let part = partition(&rec, req.partition)?;
    let head = state.store.last_sequence(tenant).await?;
    if req.cursor > head {
        return Err(ApiError::invalid(
            "cursor",
            format!(
                "is beyond the head: the tenant's last sequence is {head}, got {}",
                req.cursor
            ),
        ));
    }
    match state
        .store
        .commit_cursor(&id, part, req.cursor, now_millis())
        .await?
    {
        Some(current) => Err(ApiError::invalid(
            "cursor",
            format!(
                "must not go backwards: the committed cursor is {current}, got {} (use …/seek \
                 to move it back)",
                req.cursor
            ),
        )),
        None => Ok(Json(Cursor {
            partition: part,
            cursor: req.cursor,
        })),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SeekRequest {
    /// The partition to move; absent: every partition.
    partition: Option<u32>,
    /// Exactly one of `to_sequence` and `to_time`: the cursor moves to just before the first
    /// event at or after it.
    #[schema(minimum = 1)]
    to_sequence: Option<i64>,
    /// `yyyyMMddHHmmss` (UTC), on when events were received.
    #[schema(pattern = "^[0-9]{14}$")]
    to_time: Option<String>,
}

/// Cursors after a seek.
#[derive(Serialize, ToSchema)]
struct Cursors {
    cursors: Vec<Cursor>,
}

/// Moves the cursor of one partition, or of all, forward or back: to just before the first
/// event at or after a sequence or a time of reception.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/subscriptions/{id}/seek",
    tag = "subscriptions",
    params(("tenant" = String, Path, description = "The tenant's id"), ("id" = String, Path, description = "The subscription's id")),
    request_body = SeekRequest,
    responses((status = 200, body = Cursors), Errors, BodyErrors, Conflict),
    security(("bearer" = [])))]
async fn seek(
    State(state): State<AppState>,
    access: Access<need::Manage>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Cursors>, ApiError> {
    let req: SeekRequest = json_body(&state, &headers, body).await?;
    let tenant = access.tenant.as_str();
    let rec = find_pull(&state, tenant, &id).await?;
    let only = req.partition.map(|p| partition(&rec, p)).transpose()?;
    let head = state.store.last_sequence(tenant).await?;
    let cursor = match (req.to_sequence, req.to_time.as_deref()) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(ApiError::invalid(
                "to_sequence",
                "give exactly one of to_sequence and to_time",
            ));
        }
        (Some(s), None) if s < 1 => {
            return Err(ApiError::invalid("to_sequence", "must be 1 or more"));
        }
        // Sequences have no gaps but those retention made: the first event at or after `s`
        // is `s` itself, or the next kept one (its cursor is the same).
        (Some(s), None) => (s - 1).min(head),
        (None, Some(t)) => {
            let at = Timestamp::parse(t).map_err(|m| ApiError::invalid("to_time", m))?;
            match state
                .store
                .first_received_at(tenant, at.to_unix_ms())
                .await?
            {
                Some(first) => first - 1,
                None => head,
            }
        }
    };
    state
        .store
        .seek_cursors(&id, only, cursor, now_millis())
        .await?;
    let cursors = state.store.pull_cursors(&id).await?;
    let cursors = cursors
        .into_iter()
        .enumerate()
        .map(|(p, c)| Cursor {
            partition: p as u32,
            cursor: c,
        })
        .filter(|c| only.is_none_or(|o| o == c.partition))
        .collect();
    Ok(Json(Cursors { cursors }))
}
