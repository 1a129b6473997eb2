//! `/v1/tenants/{t}/agents` (DESIGN §9): the live state of every agent, one agent (now or as of
//! a sequence), and an agent's timeline. The agents stream is in `streams.rs`.

use axum::extract::{Path, State};
use axum::response::Json;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::doc::Errors;
use super::{Access, ApiError, AppState, Page, Params, need};
use crate::agent::counts::{GroupCounts, Tally};
use crate::agent::{Agent, Interval};
use crate::event::{FieldError, Timestamp};
use crate::store::{AgentQuery, Refused};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(counts))
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

/// Most intervals a timeline page holds.
const MAX_TIMELINE_LIMIT: usize = 10_000;

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
    let limit = match p.parse::<usize>("limit", "an integer from 1 to 10000")? {
        None => 1000,
        Some(n @ 1..=MAX_TIMELINE_LIMIT) => n,
        Some(n) => {
            return Err(ApiError::invalid(
                "limit",
                format!("must be from 1 to 10000, got {n}"),
            ));
        }
    };
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
