//! `/v1/tenants/{t}/agents` (DESIGN §9): the live state of every agent, one agent (now or as of
//! a sequence), and an agent's timeline. The agents stream is in `streams.rs`.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Json, Response};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::doc::Errors;
use super::{Access, ApiError, AppState, Page, Params, need};
use crate::agent::counts::{GroupCounts, Tally};
use crate::agent::intervals::kept::Empty;
use crate::agent::intervals::{AgentInterval, SIZES, Window};
use crate::agent::{Agent, Interval};
use crate::event::{FieldError, Timestamp};
use crate::store::{AgentQuery, IntervalFilter, Refused};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(counts))
        .routes(routes!(intervals))
        .routes(routes!(super::streams::agents))
        .routes(routes!(super::streams::counts))
        .routes(routes!(show))
        .routes(routes!(timeline))
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct AgentFilter {
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The username to start after (`next_after` of the previous page).
    after: Option<String>,
    signed_in: Option<bool>,
    availability_code: Option<i64>,
}

#[derive(Serialize, ToSchema)]
struct AgentPage {
    #[serde(flatten)]
    page: Page<Agent>,
    as_of_sequence: i64,
}

/// Every agent's current state, by username.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/agents", tag = "agents",
    params(("tenant" = String, Path, description = "The tenant's id"), AgentFilter),
    responses((status = 200, body = AgentPage), Errors),
    security(("bearer" = [])))]
async fn list(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Read>,
    mut p: Params,
) -> Result<Json<AgentPage>, ApiError> {
    let limit = p.limit()?;
    let q = AgentQuery {
        signed_in: p.parse("signed_in", "true or false")?,
        availability_code: p.parse("availability_code", "an integer")?,
        after: p.take("after"),
        limit: limit + 1,
    };
    p.finish()?;
    let (agents, as_of_sequence) = state.store.list_agents(&tenant, &q).await?;
    let agents = agents
        .into_iter()
        .map(|a| a.named(&state.catalog))
        .collect();
    Ok(Json(AgentPage {
        page: Page::new(agents, limit, |a| a.username.clone()),
        as_of_sequence,
    }))
}

/// The live counts by group (DESIGN §18).
#[derive(Serialize, ToSchema)]
pub(super) struct Counts {
    /// The last sequence the counts take in.
    pub as_of_sequence: i64,
    /// The group field counted by; null: the whole tenant as one group.
    pub by: Option<String>,
    /// The groups with a signed-in agent, by value (null first).
    pub groups: Vec<GroupCounts>,
}

/// `by`, checked against the catalog's group fields.
pub(super) fn group_by(state: &AppState, p: &mut Params) -> Result<Option<String>, ApiError> {
    let Some(by) = p.take("by") else {
        return Ok(None);
    };
    let fields = state.catalog.group_fields().names();
    if fields.contains(&by) {
        return Ok(Some(by));
    }
    let known = match fields {
        [] => "the catalog names none ([agents] group_fields in the catalog file)".to_string(),
        f => format!("the catalog's group fields are {}", f.join(", ")),
    };
    Err(ApiError::invalid(
        "by",
        format!("{by:?} is not a group field; {known}"),
    ))
}

/// Counts of the signed-in agents by group: on a work item, by availability, by activity.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/agents/counts", tag = "agents",
    params(("tenant" = String, Path, description = "The tenant's id"),
           ("by" = Option<String>, Query,
            description = "A group field of the catalog (`[agents] group_fields`); absent: \
                           the whole tenant as one group")),
    responses((status = 200, body = Counts), Errors),
    security(("bearer" = [])))]
async fn counts(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Read>,
    mut p: Params,
) -> Result<Json<Counts>, ApiError> {
    let by = group_by(&state, &mut p)?;
    p.finish()?;
    let _turn = state.reads.enter(&tenant).await?;
    let (agents, as_of_sequence) = state.store.agents_for_counts(&tenant, None).await?;
    let groups = Tally::new(by.as_deref(), &agents).groups();
    Ok(Json(Counts {
        as_of_sequence,
        by,
        groups,
    }))
}

/// A page of intervals for WFM.
#[derive(Serialize, ToSchema)]
struct Intervals {
    /// The last sequence of the log the intervals take in.
    as_of_sequence: i64,
    data: Vec<AgentInterval>,
    /// The `after` of the next page; null: no more.
    next_after: Option<String>,
}

/// Most days between `since` and `until`.
const MAX_INTERVAL_DAYS: i64 = 31;
/// Agents whose history one page reads at most (each may have no interval in the window).
const INTERVAL_AGENTS_PER_PAGE: u32 = 200;
/// Agents whose hours one query reads: few, so that a page reads few agents beyond those it
/// answers.
const INTERVAL_AGENTS_PER_QUERY: usize = 4;
/// Queries (with their chunks' assembly and serialization) a page has going at once, at most;
/// before the first answers, two (one a core).
const INTERVAL_QUERIES_IN_FLIGHT: usize = 4;

/// Intervals of the agents' timelines for WFM: signed-in time, time on a work item, time by
/// activity and work items, per agent and interval.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/agents/intervals", tag = "agents",
    params(("tenant" = String, Path, description = "The tenant's id"),
           ("size" = Option<i64>, Query, description = "Seconds: 900 (default), 1800 or 3600"),
           ("since" = String, Query, pattern = "^[0-9]{14}$",
            description = "Intervals starting from (`yyyyMMddHHmmss`, UTC; rounded down to the size)"),
           ("until" = String, Query, pattern = "^[0-9]{14}$",
            description = "…and before (`yyyyMMddHHmmss`, UTC); at most 31 days after `since`"),
           ("username" = Option<String>, Query, description = "One agent only"),
           ("changed_since_sequence" = Option<i64>, Query, minimum = 0,
            description = "Only intervals changed by events after this sequence (exclusive): \
                           the `as_of_sequence` of a previous answer"),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000,
            description = "Most intervals in a page (default 1000)"),
           ("after" = Option<String>, Query,
            description = "The `next_after` of the previous page")),
    responses((status = 200, body = Intervals), Errors),
    security(("bearer" = [])))]
async fn intervals(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Read>,
    mut p: Params,
) -> Result<Response, ApiError> {
    let size = match p.parse::<i64>("size", "900, 1800 or 3600 (seconds)")? {
        None => 900,
        Some(n) if SIZES.contains(&n) => n,
        Some(n) => {
            return Err(ApiError::invalid(
                "size",
                format!("must be 900, 1800 or 3600 (seconds), got {n}"),
            ));
        }
    };
    let mut timestamp = |name: &str| -> Result<i64, ApiError> {
        let v = p
            .take(name)
            .ok_or_else(|| ApiError::invalid(name, "is required (yyyyMMddHHmmss, UTC)"))?;
        let t = Timestamp::parse(&v).map_err(|m| ApiError::invalid(name, m))?;
        Ok(t.to_unix_ms() / 1000)
    };
    let since = timestamp("since")?;
    let until = timestamp("until")?;
    let username = p.take("username");
    let changed_since: Option<i64> = p.parse(
        "changed_since_sequence",
        "a sequence number (a non-negative integer)",
    )?;
    let limit = long_page(&mut p)?;
    let after = p.take("after").map(|a| cursor(&a)).transpose()?;
    p.finish()?;
    if until <= since {
        return Err(ApiError::invalid("until", "must be after since"));
    }
    if until - since > MAX_INTERVAL_DAYS * 86_400 {
        return Err(ApiError::invalid(
            "until",
            format!("must be at most {MAX_INTERVAL_DAYS} days after since"),
        ));
    }
    if changed_since.is_some_and(|n| n < 0) {
        return Err(ApiError::invalid(
            "changed_since_sequence",
            "must be a non-negative integer",
        ));
    }
    if let (Some(u), Some((a, _))) = (&username, &after)
        && a != u
    {
        return Err(ApiError::invalid(
            "after",
            "is the next_after of a page of another username",
        ));
    }
    let _turn = state.reads.enter(&tenant).await?;
    // As of the intervals projection, brought up to the log first: every event committed
    // before this request is in the answer.
    let (as_of_sequence, kept_from) = state.store.intervals_through(&tenant).await?;
    if since < kept_from {
        return Err(ApiError::BeyondRetention(FieldError::new(
            None,
            "since",
            format!(
                "retention purged the intervals before {}; ask for a later start",
                Timestamp::from_unix_ms(kept_from * 1000)
            ),
        )));
    }
    let now = Timestamp::now().to_unix_ms() / 1000;
    let window = Window::new(since, until, size, now);
    // An interval that had not ended when sequence N was received may have grown since by
    // time alone: an incremental load gets it again.
    let changed_since = match changed_since {
        Some(n) => Some((
            n,
            state
                .store
                .received_at(&tenant, n)
                .await?
                .map(|ms| ms / 1000),
        )),
        None => None,
    };
    // A full load leaves out intervals without signed-in time; an incremental one also gets
    // those a late event emptied, so that the consumer overwrites what it held.
    let empty = if changed_since.is_some() {
        Empty::Revised
    } else {
        Empty::Left
    };
    // The agents, by username: the cursor's own first (what is left of it), then those after.
    let mut agents = Vec::new();
    let mut scanned_all = true;
    match (&username, &after) {
        (Some(u), _) => {
            agents = (state.store)
                .interval_agents(&tenant, None, Some(u), 1)
                .await?
        }
        (None, Some((a, start))) if *start < END_OF_AGENT => {
            agents = (state.store)
                .interval_agents(&tenant, None, Some(a), 1)
                .await?
        }
        _ => {}
    }
    if username.is_none() {
        let from = after.as_ref().map(|(a, _)| a.as_str());
        let more = (state.store)
            .interval_agents(&tenant, from, None, INTERVAL_AGENTS_PER_PAGE)
            .await?;
        scanned_all = more.len() < INTERVAL_AGENTS_PER_PAGE as usize;
        agents.extend(more);
    }
    let filter = IntervalFilter {
        empty,
        changed_since,
    };
    let last_name = agents.last().cloned();
    // A few agents a query (their hours in one round trip), four queries in flight, each
    // chunk's intervals serialized by its own task: the page is made on both cores.
    let mut chunks = Vec::new();
    let mut rest = agents.into_iter().peekable();
    // The agent the cursor stopped in reads only what is left of it, alone: the hours before
    // the cursor are not read again.
    if let Some((name, start)) = &after
        && *start < END_OF_AGENT
        && rest.peek() == Some(name)
    {
        let agent = rest.next().into_iter().collect::<Vec<_>>();
        let left = Window::new(start + size, until, size, now);
        if left.since < until {
            chunks.push((agent, left));
        }
    }
    while rest.peek().is_some() {
        let chunk = rest.by_ref().take(INTERVAL_AGENTS_PER_QUERY).collect();
        chunks.push((chunk, window));
    }
    let mut chunks = chunks.into_iter();
    let spawn = |(chunk, window): (Vec<String>, Window)| {
        let store = state.store.clone();
        let tenant = tenant.clone();
        tokio::spawn(async move {
            let found = store
                .agents_intervals(&tenant, &chunk, window, filter)
                .await?;
            let mut out = Vec::new();
            for i in found.into_iter().flatten() {
                let bytes =
                    serde_json::to_vec(&i).map_err(|e| ApiError::Internal(e.to_string()))?;
                out.push((i.username, i.start, bytes));
            }
            Ok::<_, ApiError>(out)
        })
    };
    let mut pending = std::collections::VecDeque::new();
    let mut data: Vec<u8> = Vec::new();
    let mut count = 0;
    let mut last: Option<(String, Timestamp)> = None;
    let mut next_after = None;
    // The agents in the chunks in flight, and the agents and intervals the page has had: a
    // chunk is started only while those in flight may not fill the page (a month of agents
    // fills it with a dozen; reading 32 of them, as four chunks of eight did, made the page
    // three times the work).
    let (mut in_flight, mut answered, mut had) = (0usize, 0usize, 0usize);
    'page: loop {
        while pending.len() < INTERVAL_QUERIES_IN_FLIGHT {
            let enough = match answered {
                0 => pending.len() >= 2,
                _ => {
                    let per_agent = (had / answered).max(1);
                    // One agent's worth beyond the page: the last one may have fewer.
                    count + in_flight * per_agent >= limit + per_agent
                }
            };
            if enough {
                break;
            }
            match chunks.next() {
                Some(chunk) => {
                    in_flight += chunk.0.len();
                    pending.push_back((chunk.0.len(), spawn(chunk)));
                }
                None => break,
            }
        }
        let Some((agents, task)) = pending.pop_front() else {
            break;
        };
        let found = task
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??;
        in_flight -= agents;
        answered += agents;
        had += found.len();
        for (name, start, bytes) in found {
            if count == limit {
                let (name, start) = last.as_ref().expect("a full page");
                next_after = Some(format!("{name}@{start}"));
                break 'page;
            }
            if count > 0 {
                data.push(b',');
            }
            data.extend_from_slice(&bytes);
            count += 1;
            last = Some((name, start));
        }
    }
    for (_, task) in pending {
        task.abort();
    }
    if next_after.is_none()
        && !scanned_all
        && let Some(last) = last_name
    {
        // More agents than a page reads: the next page goes on after this one's last.
        next_after = Some(format!("{last}@{END_OF_AGENT_TEXT}"));
    }
    // The page as `Intervals` serializes it, its data joined from the chunks' serializations.
    let mut body = format!("{{\"as_of_sequence\":{as_of_sequence},\"data\":[").into_bytes();
    body.extend_from_slice(&data);
    body.extend_from_slice(b"],\"next_after\":");
    body.extend_from_slice(&serde_json::to_vec(&next_after).unwrap_or_default());
    body.push(b'}');
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The start in a cursor that says an agent is done with.
const END_OF_AGENT_TEXT: &str = "99991231235959";
/// [`END_OF_AGENT_TEXT`] in unix seconds.
const END_OF_AGENT: i64 = 253_402_300_799;

/// `after`: `<username>@<yyyyMMddHHmmss>` (the last interval a page held).
fn cursor(text: &str) -> Result<(String, i64), ApiError> {
    text.rsplit_once('@')
        .and_then(|(name, start)| {
            let t = Timestamp::parse(start).ok()?;
            Some((name.to_string(), t.to_unix_ms() / 1000))
        })
        .ok_or_else(|| ApiError::invalid("after", "must be the next_after of a previous page"))
}

fn not_found(username: &str) -> ApiError {
    ApiError::NotFound(format!("agent {username:?} not found"))
}

/// One agent: now, or as it was right after a sequence (`as_of`, rebuilt from the log).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/agents/{username}", tag = "agents",
    params(("tenant" = String, Path, description = "The tenant's id"),
           ("username" = String, Path, description = "The agent's `Username`"),
           ("as_of" = Option<i64>, Query, minimum = 0,
            description = "A sequence: the state right after it")),
    responses((status = 200, body = Agent), Errors),
    security(("bearer" = [])))]
async fn show(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Read>,
    Path((_, username)): Path<(String, String)>,
    mut p: Params,
) -> Result<Json<Agent>, ApiError> {
    let as_of: Option<i64> = p.parse("as_of", "a sequence number (a non-negative integer)")?;
    p.finish()?;
    let agent = match as_of {
        None => state.store.get_agent(&tenant, &username).await?,
        Some(n) if n < 0 => {
            return Err(ApiError::invalid("as_of", "must be a non-negative integer"));
        }
        Some(n) => {
            let max = state.settings.max_history_events;
            let _turn = state.reads.enter(&tenant).await?;
            let history = state
                .store
                .agent_history(&tenant, &username, Some(n), max)
                .await?;
            match history.as_of(n).await? {
                Ok(agent) => agent,
                Err(Refused::TooLong) => return Err(too_long("as_of", max)),
                Err(Refused::Purged) => {
                    return Err(ApiError::BeyondRetention(FieldError::new(
                        None,
                        "as_of",
                        format!(
                            "the log no longer holds this agent's events up to sequence {n} \
                             (retention purged them); ask for a later sequence"
                        ),
                    )));
                }
            }
        }
    };
    agent
        .map(|a| Json(a.named(&state.catalog)))
        .ok_or_else(|| not_found(&username))
}

/// The answer when a rebuild would fold more than `max_history_events` events of one agent.
fn too_long(field: &str, max: usize) -> ApiError {
    ApiError::invalid(
        field,
        format!(
            "this agent has more than {max} events in the log up to there, the most a rebuild \
             folds (max_history_events); ask for a later point"
        ),
    )
}

/// A page of an agent's timeline.
#[derive(Serialize, ToSchema)]
struct Timeline {
    data: Vec<Interval>,
    /// The `after` of the next page; null: no more.
    next_after: Option<String>,
}

/// Most intervals a timeline (or intervals) page holds.
const MAX_TIMELINE_LIMIT: usize = 10_000;

/// `limit` of a timeline or intervals page: 1 to 10,000, 1,000 by default.
fn long_page(p: &mut Params) -> Result<usize, ApiError> {
    match p.parse::<usize>("limit", "an integer from 1 to 10000")? {
        None => Ok(1000),
        Some(n @ 1..=MAX_TIMELINE_LIMIT) => Ok(n),
        Some(n) => Err(ApiError::invalid(
            "limit",
            format!("must be from 1 to 10000, got {n}"),
        )),
    }
}

/// An agent's state intervals in a window (on `CreationDateUtc`).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/agents/{username}/timeline", tag = "agents",
    params(("tenant" = String, Path, description = "The tenant's id"),
           ("username" = String, Path, description = "The agent's `Username`"),
           ("since" = String, Query, pattern = "^[0-9]{14}$",
            description = "From (`yyyyMMddHHmmss`, UTC)"),
           ("until" = Option<String>, Query, pattern = "^[0-9]{14}$",
            description = "Up to (`yyyyMMddHHmmss`, UTC); absent: now"),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000,
            description = "Most intervals in a page (default 1000)"),
           ("after" = Option<String>, Query,
            description = "The `next_after` of the previous page")),
    responses((status = 200, body = Timeline), Errors),
    security(("bearer" = [])))]
async fn timeline(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Read>,
    Path((_, username)): Path<(String, String)>,
    mut p: Params,
) -> Result<Json<Timeline>, ApiError> {
    let mut timestamp = |name: &str| -> Result<Option<Timestamp>, ApiError> {
        p.take(name)
            .map(|v| Timestamp::parse(&v).map_err(|m| ApiError::invalid(name, m)))
            .transpose()
    };
    let since = timestamp("since")?
        .ok_or_else(|| ApiError::invalid("since", "is required (yyyyMMddHHmmss, UTC)"))?;
    let until = timestamp("until")?;
    let limit = long_page(&mut p)?;
    let after: usize = p
        .parse("after", "the next_after of a previous page")?
        .unwrap_or(0);
    p.finish()?;
    if until.is_some_and(|u| u < since) {
        return Err(ApiError::invalid("until", "must not be before since"));
    }
    let max = state.settings.max_history_events;
    let _turn = state.reads.enter(&tenant).await?;
    let history = state
        .store
        .agent_history(&tenant, &username, None, max)
        .await?;
    let data = match history.timeline(since, until).await? {
        Ok(Some(data)) => data,
        Ok(None) => return Err(not_found(&username)),
        Err(Refused::TooLong) => return Err(too_long("since", max)),
        Err(Refused::Purged) => {
            return Err(ApiError::BeyondRetention(FieldError::new(
                None,
                "since",
                "the log no longer holds this agent's events from that far back (retention \
                 purged them); ask for a later start",
            )));
        }
    };
    let total = data.len();
    let data: Vec<Interval> = data
        .into_iter()
        .skip(after)
        .take(limit)
        .map(|i| i.named(&state.catalog))
        .collect();
    let served = after.saturating_add(data.len());
    let next_after = (served < total).then(|| served.to_string());
    Ok(Json(Timeline { data, next_after }))
}
