//! `GET /v1/catalog` (DESIGN §12): the categories and codes this server accepts, the fields each
//! needs, a JSON Schema per event type, and the names of activity codes. Any valid key.

use axum::Router;
use axum::extract::State;
use axum::response::Json;
use axum::routing::get;

use super::{AppState, Caller};
use crate::event::catalog::CatalogView;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/catalog", get(show))
}

async fn show(State(state): State<AppState>, _caller: Caller) -> Json<CatalogView> {
    Json(state.catalog.describe())
}
