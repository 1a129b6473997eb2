//! `/v1/tenants`: the operator's tenant administration (admin key only).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::doc::{BodyErrors, Errors, Problem};
use super::{ApiError, AppState, Caller, IdPage, Page, json_body, rfc3339};
use crate::store::Tenant;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    id: String,
    /// Defaults to the id.
    name: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct TenantView {
    id: String,
    name: String,
    ingest_rate_limit_per_sec: Option<i64>,
    created_at: String,
}

impl From<Tenant> for TenantView {
    fn from(t: Tenant) -> Self {
        TenantView {
            id: t.id,
            name: t.name,
            ingest_rate_limit_per_sec: t.ingest_rate_limit_per_sec,
            created_at: rfc3339(t.created_at),
        }
    }
}

/// `PATCH /v1/tenants/{t}`: absent fields are left as they are.
#[derive(ToSchema)]
#[allow(dead_code)]
struct TenantPatch {
    name: Option<String>,
    /// Events per second this tenant may post, enforced by each node; null removes it.
    #[schema(minimum = 1, maximum = 1_000_000)]
    ingest_rate_limit_per_sec: Option<Option<i64>>,
}

/// Most events per second a tenant's limit may be set to.
const MAX_RATE_LIMIT: i64 = 1_000_000;

/// `PATCH /v1/tenants/{t}`: `{name?, ingest_rate_limit_per_sec?}`, absent fields unchanged,
/// a `null` limit removes it.
#[utoipa::path(patch, path = "/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "The tenant's id")),
    request_body(content = TenantPatch, description = "Fields to change"),
    responses((status = 200, body = TenantView), Errors, BodyErrors),
    security(("bearer" = [])))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<TenantView>, ApiError> {
    caller.0.require_admin()?;
    let patch: serde_json::Map<String, serde_json::Value> =
        json_body(&state, &headers, body).await?;
    let mut found = state
        .store
        .get_tenant(&tenant)
        .await?
        .ok_or_else(|| ApiError::NotFound("tenant not found".into()))?;
    for (key, value) in patch {
        match key.as_str() {
            "name" => match value.as_str() {
                Some(n) if !n.trim().is_empty() && n.len() <= 200 => found.name = n.into(),
                _ => return Err(ApiError::invalid("name", "must be 1 to 200 characters")),
            },
            "ingest_rate_limit_per_sec" => {
                found.ingest_rate_limit_per_sec = match value.as_i64() {
                    _ if value.is_null() => None,
                    Some(n) if (1..=MAX_RATE_LIMIT).contains(&n) => Some(n),
                    _ => {
                        return Err(ApiError::invalid(
                            "ingest_rate_limit_per_sec",
                            "must be an integer from 1 to 1000000, or null for no limit",
                        ));
                    }
                }
            }
            other => return Err(ApiError::invalid(other, "unknown field")),
        }
    }
    if !state.store.update_tenant(&found).await? {
        return Err(ApiError::NotFound("tenant not found".into()));
    }
    state.limits.forget(&tenant);
    Ok(Json(found.into()))
}

/// `^[a-z0-9][a-z0-9-]{0,62}$`
fn valid_tenant_id(id: &str) -> bool {
    let b = id.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&b.len()) && ok(&b[0]) && b[1..].iter().all(|c| ok(c) || *c == b'-')
}

/// Creates a tenant (admin key).
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants",
    request_body = CreateTenant,
    responses((status = 201, body = TenantView),
        (status = 409, body = Problem, content_type = "application/problem+json",
         description = "A tenant with this id exists"),
        Errors, BodyErrors),
    security(("bearer" = [])))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<TenantView>), ApiError> {
    caller.0.require_admin()?;
    let req: CreateTenant = json_body(&state, &headers, body).await?;
    if !valid_tenant_id(&req.id) {
        return Err(ApiError::invalid(
            "id",
            "must be 1 to 63 characters of a-z, 0-9 and '-', starting with a letter or digit",
        ));
    }
    let name = req.name.unwrap_or_else(|| req.id.clone());
    if name.trim().is_empty() || name.len() > 200 {
        return Err(ApiError::invalid("name", "must be 1 to 200 characters"));
    }
    let tenant = state.store.create_tenant(&req.id, &name).await?;
    Ok((StatusCode::CREATED, Json(tenant.into())))
}

/// Every tenant (admin key).
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants",
    params(IdPage),
    responses((status = 200, body = Page<TenantView>), Errors),
    security(("bearer" = [])))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    IdPage { limit, after }: IdPage,
) -> Result<Json<Page<TenantView>>, ApiError> {
    caller.0.require_admin()?;
    let tenants = state.store.list_tenants(&after, limit + 1).await?;
    let views = tenants.into_iter().map(TenantView::from).collect();
    Ok(Json(Page::new(views, limit, |t| t.id.clone())))
}

/// One tenant (admin key).
#[utoipa::path(get, path = "/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "The tenant's id")),
    responses((status = 200, body = TenantView), Errors),
    security(("bearer" = [])))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    caller.0.require_admin()?;
    let found = state.store.get_tenant(&tenant).await?;
    let found = found.ok_or_else(|| ApiError::NotFound("tenant not found".into()))?;
    Ok(Json(found.into()))
}

/// Deletes a tenant and everything it holds (admin key).
#[utoipa::path(delete, path = "/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "The tenant's id")),
    responses((status = 204, description = "Deleted"), Errors),
    security(("bearer" = [])))]
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.0.require_admin()?;
    if state.store.delete_tenant(&tenant).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("tenant not found".into()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tenant_ids() {
        for (id, ok) in [
            ("default", true),
            ("a", true),
            ("0-acme", true),
            (&"a".repeat(63), true),
            (&"a".repeat(64), false),
            ("", false),
            ("-acme", false),
            ("Acme", false),
            ("acme_1", false),
            ("acmé", false),
        ] {
            assert_eq!(super::valid_tenant_id(id), ok, "{id:?}");
        }
    }
}
