//! The console (DESIGN §4, `GET /`): a dashboard for the people who run and integrate
//! Switchboard, served by the binary itself. Three files, written by hand and compiled in
//! (`console/`): no build step, no third-party requests, no inline script or style, so the
//! Content-Security-Policy can forbid everything but this origin. The page signs in with an API
//! key kept in `sessionStorage` and calls the same API as every other client (docs/console.md).

use axum::extract::State;
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

const INDEX: &str = include_str!("../../console/index.html");
const APP_JS: &str = include_str!("../../console/app.js");
const APP_CSS: &str = include_str!("../../console/app.css");
const PORTAL_INDEX: &str = include_str!("../../portal/index.html");
const PORTAL_JS: &str = include_str!("../../portal/app.js");
const PORTAL_CSS: &str = include_str!("../../portal/app.css");

/// Only this origin, for everything; no framing, no plugins, no inline code.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; font-src 'self'; form-action 'self'; \
    base-uri 'none'; frame-ancestors 'none'";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(index))
        .route("/console/app.js", axum::routing::get(app_js))
        .route("/console/app.css", axum::routing::get(app_css))
        .routes(routes!(portal))
        .route("/portal/app.js", axum::routing::get(portal_js))
        .route("/portal/app.css", axum::routing::get(portal_css))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = page(content_type, body, HeaderValue::from_static(CSP));
    response
        .headers_mut()
        .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// The portal's CSP: the console's, but framed by this origin and `ancestors`.
pub fn portal_csp(ancestors: &[String]) -> HeaderValue {
    let mut allowed = String::from("'self'");
    for origin in ancestors {
        allowed.push(' ');
        allowed.push_str(origin);
    }
    let csp = CSP.replace(
        "frame-ancestors 'none'",
        &format!("frame-ancestors {allowed}"),
    );
    // The origins were checked at start (scheme://host[:port]): always a valid header.
    HeaderValue::from_str(&csp).unwrap_or_else(|_| HeaderValue::from_static(CSP))
}

fn page(content_type: &'static str, body: &'static str, csp: HeaderValue) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, csp),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        // Small, and new with every version: always revalidated.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body).into_response()
}

/// The console: a single page that signs in with an API key.
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, content_type = "text/html", body = String,
               description = "The console's page")))]
async fn index() -> Response {
    let mut response = asset("text/html; charset=utf-8", INDEX);
    // The console opens no other window; the portal, framed by another origin, must not say
    // this.
    response.headers_mut().insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// The customers' portal (DESIGN §22): their subscriptions, deliveries and the catalog, opened
/// from a portal link's `url`; embeddable from `portal_frame_ancestors`.
#[utoipa::path(get, path = "/portal", tag = "portal",
    responses((status = 200, content_type = "text/html", body = String,
               description = "The portal's page")))]
async fn portal(State(state): State<AppState>) -> Response {
    page(
        "text/html; charset=utf-8",
        PORTAL_INDEX,
        state.settings.portal_csp.clone(),
    )
}

async fn portal_js(State(state): State<AppState>) -> Response {
    page(
        "text/javascript; charset=utf-8",
        PORTAL_JS,
        state.settings.portal_csp.clone(),
    )
}

async fn portal_css(State(state): State<AppState>) -> Response {
    page(
        "text/css; charset=utf-8",
        PORTAL_CSS,
        state.settings.portal_csp.clone(),
    )
}
