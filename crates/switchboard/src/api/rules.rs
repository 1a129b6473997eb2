//! `/v1/tenants/{t}/rules` (DESIGN §18): rules that watch the agents and raise derived events
//! (Category 5) when a condition has held long enough. The writer judges them (`store/rules.rs`).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Json;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::doc::{BodyErrors, Errors};
use super::{Access, ApiError, AppState, IdPage, Page, json_body, need, rfc3339};
use crate::auth;
use crate::clock::now_millis;
use crate::rule::{Rule, RuleSpec};
use crate::subscription::merge_patch;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
}

/// A rule as answered: its body plus identity.
#[derive(Serialize, ToSchema)]
pub struct RuleView {
    pub id: String,
    #[serde(flatten)]
    pub spec: RuleSpec,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Rule> for RuleView {
    fn from(r: Rule) -> Self {
        RuleView {
            id: r.id,
            spec: r.spec,
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
        }
    }
}

fn group_fields(state: &AppState) -> Vec<String> {
    state.catalog.group_fields().names().to_vec()
}

/// Creates a rule (`kind`: `agent_state` or `group_count`); it is judged from now on, a
/// condition that holds already counting from now.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/rules", tag = "rules",
    params(("tenant" = String, Path, description = "The tenant's id")),
    request_body = RuleSpec,
    responses((status = 201, body = RuleView), Errors, BodyErrors),
    security(("bearer" = [])))]
async fn create(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Manage>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<RuleView>), ApiError> {
    let value: Value = json_body(&state, &headers, body).await?;
    let spec = RuleSpec::from_value(value, &group_fields(&state)).map_err(ApiError::Invalid)?;
    let now = now_millis();
    let rule = Rule {
        id: format!("rule_{}", auth::random_token(12)),
        tenant_id: tenant,
        spec,
        revision: 1,
        created_at: now,
        updated_at: now,
    };
    state
        .store
        .create_rule(&rule, state.settings.max_rules_per_tenant)
        .await?;
    Ok((StatusCode::CREATED, Json(rule.into())))
}

/// The tenant's rules, by id.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/rules", tag = "rules",
    params(("tenant" = String, Path, description = "The tenant's id"), IdPage),
    responses((status = 200, body = Page<RuleView>), Errors),
    security(("bearer" = [])))]
async fn list(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Read>,
    IdPage { limit, after }: IdPage,
) -> Result<Json<Page<RuleView>>, ApiError> {
    let rules = state.store.list_rules(&tenant, &after, limit + 1).await?;
    let views = rules.into_iter().map(RuleView::from).collect();
    Ok(Json(Page::new(views, limit, |r: &RuleView| r.id.clone())))
}

async fn find(state: &AppState, tenant: &str, id: &str) -> Result<Rule, ApiError> {
    state
        .store
        .get_rule(tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("rule not found".into()))
}

/// One rule.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/rules/{id}", tag = "rules",
    params(("tenant" = String, Path, description = "The tenant's id"), ("id" = String, Path, description = "The rule's id")),
    responses((status = 200, body = RuleView), Errors),
    security(("bearer" = [])))]
async fn show(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Read>,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<RuleView>, ApiError> {
    Ok(Json(find(&state, &tenant, &id).await?.into()))
}

/// Changes a rule: the fields given replace its own (a JSON merge patch, validated as a whole).
/// Its open episodes end now (a fired one with `RuleCleared`), and it is judged afresh.
#[utoipa::path(patch, path = "/v1/tenants/{tenant}/rules/{id}", tag = "rules",
    params(("tenant" = String, Path, description = "The tenant's id"), ("id" = String, Path, description = "The rule's id")),
    request_body(content = Object, description = "Fields of the rule to change"),
    responses((status = 200, body = RuleView), Errors, BodyErrors),
    security(("bearer" = [])))]
async fn update(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Manage>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<RuleView>, ApiError> {
    let patch: Map<String, Value> = json_body(&state, &headers, body).await?;
    let mut rule = find(&state, &tenant, &id).await?;
    let mut current = rule.spec.to_value();
    merge_patch(&mut current, Value::Object(patch));
    rule.spec = RuleSpec::from_value(current, &group_fields(&state)).map_err(ApiError::Invalid)?;
    rule.revision += 1;
    rule.updated_at = now_millis().max(rule.updated_at + 1);
    if !state.store.update_rule(&rule).await? {
        find(&state, &tenant, &id).await?;
        return Err(ApiError::Conflict {
            detail: "the rule was changed meanwhile; read it again and send the change again"
                .into(),
            errors: Vec::new(),
        });
    }
    Ok(Json(rule.into()))
}

/// Deletes a rule; its fired episodes are cleared (`RuleCleared`) as of now.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/rules/{id}", tag = "rules",
    params(("tenant" = String, Path, description = "The tenant's id"), ("id" = String, Path, description = "The rule's id")),
    responses((status = 204, description = "Deleted"), Errors),
    security(("bearer" = [])))]
async fn remove(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Manage>,
    Path((_, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    match state.store.delete_rule(&tenant, &id, now_millis()).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::NotFound("rule not found".into())),
    }
}
