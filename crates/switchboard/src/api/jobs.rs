//! `/v1/tenants/{t}/jobs` (DESIGN §16): long work, tracked and cancellable — a replay of any
//! window (`replay`, with `dry_run` to count first) and ending a backlog (`cancel_pending`).
//! A node's runner (`crate::jobs`) works them; here they are created, shown and canceled.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::doc::{BodyErrors, Conflict, Errors};
use super::{Access, ApiError, AppState, Page, Params, json_body, need, rfc3339};
use crate::auth::Scope;
use crate::event::Timestamp;
use crate::store::{CancelJob, JobRecord, JobSpec};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get, cancel))
}

/// A job to create: `kind` and its parameters.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateJob {
    /// `replay`, `cancel_pending` or `erase`.
    #[schema(example = "replay")]
    kind: String,
    /// replay, cancel_pending: the push subscription the job works on.
    subscription_id: Option<String>,
    /// erase: the `AdditionalFields` field (declared in the catalog) whose value is erased.
    #[schema(example = "PhoneNo")]
    field: Option<String>,
    /// erase: the value to erase (a string, or a number as its decimal text).
    #[schema(value_type = Option<String>, example = "+15551230001")]
    value: Option<Value>,
    /// replay: from (`yyyyMMddHHmmss`, on `CreationDateUtc`).
    #[schema(pattern = "^[0-9]{14}$")]
    since: Option<String>,
    /// replay: up to (`yyyyMMddHHmmss`); absent: now.
    #[schema(pattern = "^[0-9]{14}$")]
    until: Option<String>,
    /// replay: only the deliveries that failed.
    only_failed: Option<bool>,
    /// cancel_pending: only deliveries of events created before (`yyyyMMddHHmmss`); absent:
    /// all pending.
    #[schema(pattern = "^[0-9]{14}$")]
    before: Option<String>,
    /// Count what the job would do, change nothing: `total`, and `result.would_requeue` (or
    /// `would_cancel`).
    #[serde(default)]
    dry_run: bool,
}

/// A job, with its kind's parameters.
#[derive(Serialize, ToSchema)]
struct JobView {
    id: String,
    /// `replay`, `cancel_pending` or `erase` (or a kind of a newer release, listed only).
    kind: String,
    /// `queued`, `running`, `done`, `canceled` or `failed`.
    state: String,
    /// What the job does in all: deliveries it requeues (replay; those already pending are
    /// not counted) or pending deliveries it cancels, counted when it starts; null while it
    /// is being counted.
    total: Option<i64>,
    /// How many of them are done.
    done: i64,
    dry_run: bool,
    /// When done: `{requeued}`, `{canceled}`, an erasure's receipt `{events, attempts,
    /// agents, pii}`, or for a dry run `{would_requeue}` / `{would_cancel}`.
    #[schema(value_type = Option<Object>)]
    result: Option<Value>,
    /// Why it failed.
    error: Option<String>,
    created_at: String,
    finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    only_failed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<String>,
    /// erase: the field.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    /// erase: the value — to `manage` keys only while the job runs; `"[erased]"` once it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
}

impl JobView {
    /// The view for a key that may not `manage`: a running erasure's value left out (once
    /// it ends, the value shown is `"[erased]"`).
    fn for_reader(mut self, manage: bool) -> Self {
        if !manage && matches!(self.state.as_str(), "queued" | "running") {
            self.value = None;
        }
        self
    }
}

impl From<JobRecord> for JobView {
    fn from(j: JobRecord) -> Self {
        let mut view = JobView {
            state: j.state.clone(),
            total: j.total,
            done: j.done,
            dry_run: j.dry_run,
            error: j.error.clone(),
            created_at: rfc3339(j.created_at),
            finished_at: j.finished_at.map(rfc3339),
            subscription_id: None,
            since: None,
            until: None,
            only_failed: None,
            before: None,
            field: None,
            value: None,
            result: j.result.clone(),
            kind: j.kind.clone(),
            id: j.id.clone(),
        };
        match j.spec() {
            Some(JobSpec::Replay {
                subscription_id,
                since,
                until,
                only_failed,
            }) => {
                view.subscription_id = Some(subscription_id);
                view.since = Some(since.to_string());
                view.until = until.map(|u| u.to_string());
                view.only_failed = Some(only_failed);
            }
            Some(JobSpec::CancelPending {
                subscription_id,
                before,
            }) => {
                view.subscription_id = Some(subscription_id);
                view.before = before.map(|b| b.to_string());
            }
            Some(JobSpec::Erase { field, value, .. }) => {
                view.field = Some(field);
                view.value = Some(value);
            }
            None => {}
        }
        view
    }
}

fn timestamp(field: &str, value: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    value
        .map(|v| Timestamp::parse(v).map_err(|m| ApiError::invalid(field, m)))
        .transpose()
}

/// The longest value an erasure takes (a field's value in an event is far shorter).
const MAX_ERASE_VALUE: usize = 1000;

/// The parameters of `req`'s kind; a parameter of another kind is 422 naming it.
fn spec(req: &CreateJob, catalog: &crate::event::catalog::Catalog) -> Result<JobSpec, ApiError> {
    let not_of = |field: &str, present: bool| match present {
        true => Err(ApiError::invalid(
            field,
            format!("is not a parameter of {}", req.kind),
        )),
        false => Ok(()),
    };
    let subscription_id = || {
        (req.subscription_id.clone()).ok_or_else(|| {
            ApiError::invalid("subscription_id", format!("is required for {}", req.kind))
        })
    };
    let known = matches!(req.kind.as_str(), "replay" | "cancel_pending" | "erase");
    if known && req.kind != "erase" {
        not_of("field", req.field.is_some())?;
        not_of("value", req.value.is_some())?;
    }
    match req.kind.as_str() {
        "replay" => {
            not_of("before", req.before.is_some())?;
            let since = timestamp("since", req.since.as_deref())?
                .ok_or_else(|| ApiError::invalid("since", "is required for a replay"))?;
            let until = timestamp("until", req.until.as_deref())?;
            if until.is_some_and(|u| u < since) {
                return Err(ApiError::invalid("until", "must not be before since"));
            }
            Ok(JobSpec::Replay {
                subscription_id: subscription_id()?,
                since,
                until,
                only_failed: req.only_failed.unwrap_or(false),
            })
        }
        "cancel_pending" => {
            not_of("since", req.since.is_some())?;
            not_of("until", req.until.is_some())?;
            not_of("only_failed", req.only_failed.is_some())?;
            Ok(JobSpec::CancelPending {
                subscription_id: subscription_id()?,
                before: timestamp("before", req.before.as_deref())?,
            })
        }
        "erase" => {
            not_of("subscription_id", req.subscription_id.is_some())?;
            not_of("since", req.since.is_some())?;
            not_of("until", req.until.is_some())?;
            not_of("only_failed", req.only_failed.is_some())?;
            not_of("before", req.before.is_some())?;
            if req.dry_run {
                return Err(ApiError::invalid("dry_run", "is not available for erase"));
            }
            let field = (req.field.clone())
                .ok_or_else(|| ApiError::invalid("field", "is required for erase"))?;
            // Allowed for any field the catalog declares; the receipt says whether it is PII.
            let pii = catalog.field_pii(&field).ok_or_else(|| {
                ApiError::invalid(
                    "field",
                    format!("{field} is not a field of the catalog (built in or the catalog file)"),
                )
            })?;
            let value = match &req.value {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                Some(_) => {
                    return Err(ApiError::invalid("value", "must be a string or a number"));
                }
                None => return Err(ApiError::invalid("value", "is required for erase")),
            };
            if value.is_empty() {
                return Err(ApiError::invalid("value", "must not be empty"));
            }
            if value.len() > MAX_ERASE_VALUE {
                let why = format!("must be at most {MAX_ERASE_VALUE} bytes");
                return Err(ApiError::invalid("value", why));
            }
            if value == crate::store::ERASED {
                return Err(ApiError::invalid("value", "is what erased values become"));
            }
            Ok(JobSpec::Erase { field, value, pii })
        }
        _ => Err(ApiError::invalid(
            "kind",
            "must be replay, cancel_pending or erase",
        )),
    }
}

/// Starts a job; the answer is the job, `queued`. Follow it with `GET …/jobs/{id}`.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/jobs", tag = "jobs",
    params(("tenant" = String, Path, description = "The tenant's id")),
    request_body = CreateJob,
    responses((status = 202, body = JobView), Errors, BodyErrors, Conflict),
    security(("bearer" = [])))]
async fn create(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Manage>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let req: CreateJob = json_body(&state, &headers, body).await?;
    let spec = spec(&req, &state.catalog)?;
    if let Some(id) = spec.subscription_id() {
        match state.store.get_subscription(&tenant, id).await? {
            Some(Ok(rec)) => super::subscriptions::push_only(&rec, &format!("a {} job", req.kind))?,
            Some(Err(bad)) => return Err(ApiError::undecodable(&bad.id)),
            None => {
                return Err(ApiError::invalid(
                    "subscription_id",
                    format!("no subscription {id} in this tenant"),
                ));
            }
        }
    }
    let limit = state.settings.max_jobs_per_tenant;
    if state.store.unfinished_jobs(&tenant).await? >= i64::from(limit) {
        return Err(ApiError::LimitReached {
            limit: "max_jobs_per_tenant",
            detail: format!(
                "the tenant has {limit} jobs queued or running; wait for one to end or cancel one"
            ),
        });
    }
    let job = state.store.create_job(&tenant, &spec, req.dry_run).await?;
    Ok((StatusCode::ACCEPTED, Json(job.into())))
}

/// The tenant's jobs, newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/jobs", tag = "jobs",
    params(("tenant" = String, Path, description = "The tenant's id"), super::IdPage),
    responses((status = 200, body = Page<JobView>), Errors),
    security(("bearer" = [])))]
async fn list(
    State(state): State<AppState>,
    Access { tenant, caller, .. }: Access<need::Read>,
    mut p: Params,
) -> Result<Json<Page<JobView>>, ApiError> {
    let limit = p.limit()?;
    let after = p.take("after");
    p.finish()?;
    let before = match after {
        Some(id) => Some(
            state
                .store
                .get_job(&tenant, &id)
                .await?
                .ok_or_else(|| ApiError::invalid("after", "no such job"))?,
        ),
        None => None,
    };
    let jobs = state
        .store
        .list_jobs(&tenant, before.as_ref(), limit + 1)
        .await?;
    let manage = caller.may(&tenant, Scope::Manage).is_ok();
    let views = (jobs.into_iter())
        .map(|j| JobView::from(j).for_reader(manage))
        .collect();
    Ok(Json(Page::new(views, limit, |j| j.id.clone())))
}

/// A job: its state and progress.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/jobs/{id}", tag = "jobs",
    params(("tenant" = String, Path, description = "The tenant's id"), ("id" = String, Path, description = "The job's id")),
    responses((status = 200, body = JobView), Errors),
    security(("bearer" = [])))]
async fn get(
    State(state): State<AppState>,
    Access { tenant, caller, .. }: Access<need::Read>,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<JobView>, ApiError> {
    let manage = caller.may(&tenant, Scope::Manage).is_ok();
    match state.store.get_job(&tenant, &id).await? {
        Some(job) => Ok(Json(JobView::from(job).for_reader(manage))),
        None => Err(ApiError::NotFound(format!("job {id} not found"))),
    }
}

/// Cancels a queued or running job: it stops within a second, after the page it is on; what
/// it did stays done. A finished job is a `409`.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/jobs/{id}", tag = "jobs",
    params(("tenant" = String, Path, description = "The tenant's id"), ("id" = String, Path, description = "The job's id")),
    responses((status = 200, body = JobView, description = "Canceled"), Errors, Conflict),
    security(("bearer" = [])))]
async fn cancel(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Manage>,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<JobView>, ApiError> {
    match state.store.cancel_job(&tenant, &id).await? {
        CancelJob::Canceled(job) => Ok(Json(job.into())),
        CancelJob::Finished(job) => Err(ApiError::Conflict {
            detail: format!("job {id} has ended ({}); nothing to cancel", job.state),
            errors: Vec::new(),
        }),
        CancelJob::NotFound => Err(ApiError::NotFound(format!("job {id} not found"))),
    }
}
