//! `GET /v1/me`: what the calling key is and may do, so that a client (the console) offers only
//! what the key allows. Any valid key.

use axum::response::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::doc::Errors;
use super::{AppState, Caller};
use crate::auth::{Principal, Scope};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(show))
}

/// The calling key.
#[derive(Serialize, ToSchema)]
struct Me {
    /// The admin key: every tenant, every scope, tenants themselves.
    admin: bool,
    /// The tenant a tenant key belongs to; null for the admin key.
    tenant_id: Option<String>,
    /// What the key may do (the admin: all of them). `manage` includes `read`.
    scopes: Vec<Scope>,
}

/// What the calling key is and may do.
#[utoipa::path(get, path = "/v1/me", tag = "keys",
    responses((status = 200, body = Me), Errors),
    security(("bearer" = [])))]
async fn show(caller: Caller) -> Json<Me> {
    Json(match caller.0 {
        Principal::Admin => Me {
            admin: true,
            tenant_id: None,
            scopes: Scope::ALL.to_vec(),
        },
        Principal::Tenant { tenant_id, scopes } => Me {
            admin: false,
            tenant_id: Some(tenant_id),
            scopes,
        },
        // Not reached: `/v1/me` is not among a portal token's routes (api::portal).
        Principal::Portal {
            tenant_id,
            read_only,
            ..
        } => Me {
            admin: false,
            tenant_id: Some(tenant_id),
            scopes: if read_only {
                vec![Scope::Read]
            } else {
                vec![Scope::Read, Scope::Manage]
            },
        },
    })
}
