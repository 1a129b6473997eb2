//! `/v1/tenants/{t}/keys`: a tenant's API keys (`manage` scope). A key is shown once, at
//! creation; only its hash is stored.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::doc::{BodyErrors, Errors};
use super::{Access, ApiError, AppState, IdPage, Page, json_body, need, rfc3339};
use crate::auth::{self, Scope};
use crate::store::KeyRecord;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(remove))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    scopes: Vec<Scope>,
}

#[derive(Serialize, ToSchema)]
struct KeyView {
    id: String,
    name: String,
    scopes: Vec<Scope>,
    created_at: String,
    /// Only in the answer to creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

impl KeyView {
    fn new(k: KeyRecord, key: Option<String>) -> Self {
        KeyView {
            id: k.id,
            name: k.name,
            scopes: k.scopes,
            created_at: rfc3339(k.created_at),
            key,
        }
    }
}

/// Creates a key; the answer is the only time `key` is shown.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/keys", tag = "tenants",
    params(("tenant" = String, Path, description = "The tenant's id")),
    request_body = CreateKey,
    responses((status = 201, body = KeyView), Errors, BodyErrors),
    security(("bearer" = [])))]
async fn create(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Manage>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<KeyView>), ApiError> {
    let mut req: CreateKey = json_body(&state, &headers, body).await?;
    if req.name.trim().is_empty() || req.name.len() > 200 {
        return Err(ApiError::invalid("name", "must be 1 to 200 characters"));
    }
    req.scopes.sort();
    req.scopes.dedup();
    if req.scopes.is_empty() {
        return Err(ApiError::invalid(
            "scopes",
            "must name at least one of publish, read, manage, consume",
        ));
    }
    let key = auth::generate_key("sb_");
    let id = auth::generate_key_id();
    let record = state
        .store
        .create_key(&tenant, &req.name, &req.scopes, &id, &auth::hash_key(&key))
        .await?;
    Ok((StatusCode::CREATED, Json(KeyView::new(record, Some(key)))))
}

/// The tenant's keys (never the keys themselves).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/keys", tag = "tenants",
    params(("tenant" = String, Path, description = "The tenant's id"), IdPage),
    responses((status = 200, body = Page<KeyView>), Errors),
    security(("bearer" = [])))]
async fn list(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Manage>,
    IdPage { limit, after }: IdPage,
) -> Result<Json<Page<KeyView>>, ApiError> {
    let keys = state.store.list_keys(&tenant, &after, limit + 1).await?;
    let views = keys.into_iter().map(|k| KeyView::new(k, None)).collect();
    Ok(Json(Page::new(views, limit, |k| k.id.clone())))
}

/// Deletes a key: it stops working at once, on every node.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/keys/{id}", tag = "tenants",
    params(("tenant" = String, Path, description = "The tenant's id"), ("id" = String, Path, description = "The key's id")),
    responses((status = 204, description = "Deleted"), Errors),
    security(("bearer" = [])))]
async fn remove(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Manage>,
    Path((_, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    if state.store.delete_key(&tenant, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("key {id} not found")))
    }
}
