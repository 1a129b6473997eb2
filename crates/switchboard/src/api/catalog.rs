//! `GET /v1/catalog` (DESIGN §12): the categories and codes this server accepts, the fields each
//! needs, a JSON Schema per event type, and the names of activity codes. Any valid key.

use axum::extract::State;
use axum::response::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::doc::Errors;
use super::{AppState, Caller};
use crate::event::catalog::CatalogView;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(show))
}

/// The categories and codes this server accepts, their fields, a JSON Schema per event type,
/// and the names of activity codes. Any valid key.
#[utoipa::path(get, path = "/v1/catalog", tag = "catalog",
    responses((status = 200, body = CatalogView), Errors),
    security(("bearer" = [])))]
async fn show(State(state): State<AppState>, _caller: Caller) -> Json<CatalogView> {
    Json(state.catalog.describe())
}
