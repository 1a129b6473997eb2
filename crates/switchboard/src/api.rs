//! The HTTP API v1 (DESIGN §4): one file per resource, each with its `router()`, and the
//! pieces they share — state, the caller's identity, body and query parsing, list pages.

mod agents;
mod catalog;
mod console;
mod deliveries;
pub mod doc;
mod error;
mod events;
mod health;
mod jobs;
mod keys;
pub mod limits;
mod mcp;
mod me;
mod portal;
mod pull;
mod rules;
pub mod streams;
mod subscriptions;
mod tenants;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Query, RawPathParams};
use axum::http::{HeaderMap, header, request::Parts};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;

pub use console::portal_csp;
pub use error::ApiError;

use crate::auth::{self, Principal, Scope};
use crate::event::{Catalog, FieldError};
use crate::store::Store;

/// What every handler can reach: one reference-counted pointer, so the clone axum makes for
/// each extractor of each request is one atomic increment, not one per field (it was 3–5 % of
/// the request threads' CPU; docs/BENCHMARKS.md, eighth session).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The state behind [`AppState`].
pub struct Shared {
    pub store: Store,
    pub catalog: Arc<Catalog>,
    /// The admin key's hash; the key itself is not kept.
    pub admin_key_hash: Arc<str>,
    pub max_body_bytes: usize,
    /// The guarded outbound client, for `…/test`.
    pub sender: crate::delivery::Sender,
    /// How long a delivery attempted by a request (`…/test`) is leased to it, in ms.
    pub lease_ms: i64,
    /// Per-tenant ingest limits, enforced by this node.
    pub limits: Arc<limits::TenantLimits>,
    /// Per-tenant turns at expensive reads, on this node (`max_reads_per_tenant`).
    pub reads: Arc<limits::Reads>,
    /// Turns true when the server stops: streams end, so that their connections close.
    pub streams_stop: tokio::sync::watch::Receiver<bool>,
    /// The events streams' shared readers, one per tenant with streams open.
    pub tails: Arc<streams::Tails>,
    /// The limits and keys of the configuration the handlers apply.
    pub settings: Arc<Settings>,
    /// The streams open, by key, by tenant and in all (DESIGN §23).
    pub streams_open: Arc<streams::Slots>,
    /// True once the node was told to stop: `/readyz` answers 503 `draining` meanwhile.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

/// What the handlers take from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub max_subscriptions_per_tenant: u32,
    pub max_jobs_per_tenant: u32,
    pub max_rules_per_tenant: u32,
    pub max_portal_links_per_tenant: u32,
    /// `/portal`'s Content-Security-Policy: the console's, framed by this origin and the
    /// configured `portal_frame_ancestors` (made once, at start).
    pub portal_csp: axum::http::HeaderValue,
    /// The public base URL, without a trailing `/`; empty: the request's `Host`.
    pub public_url: String,
    /// The hash of `metrics_key`: `/metrics` needs it (or the admin key) when set.
    pub metrics_key_hash: Option<String>,
    pub stream_buffer_bytes: usize,
    pub stream_idle: std::time::Duration,
    /// Most events of one agent a rebuild (`as_of`, a timeline) folds.
    pub max_history_events: usize,
}

/// Every route with its OpenAPI description: the router and `/openapi.json` come from here.
pub(crate) fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(<doc::ApiDoc as utoipa::OpenApi>::openapi())
        .merge(health::router())
        .merge(tenants::router())
        .merge(keys::router())
        .merge(events::router())
        .merge(subscriptions::router())
        .merge(pull::router())
        .merge(deliveries::router())
        .merge(jobs::router())
        .merge(agents::router())
        .merge(rules::router())
        .merge(catalog::router())
        .merge(me::router())
        .merge(portal::router())
        .merge(console::router())
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let (router, _) = api_router().split_for_parts();
    // What MCP's tools call, in-process: the API as it is, without `/mcp`.
    let routes = rest(router.clone(), &state);
    rest(router.merge(mcp::service(&state, routes)), &state)
}

/// `router` with the layers every route has, and its state.
fn rest(router: Router<AppState>, state: &AppState) -> Router {
    router
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // Bodies are read and limited by `json_body`, which answers 413 as problem+json.
        .layer(DefaultBodyLimit::disable())
        .layer(TraceLayer::new_for_http())
        .with_state(state.clone())
}

/// What a `worker` node serves: liveness and readiness only.
pub fn health_only(state: AppState) -> Router {
    let (router, _) = health::router().split_for_parts();
    router
        .fallback(|| async {
            ApiError::NotFound("this node runs --role worker: no API here".into())
        })
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// The authenticated caller, and the hash of the key it came with (what streams are counted
/// and revoked by).
pub struct Caller(pub Principal, pub String);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or(ApiError::Unauthorized)?;
        let hash = auth::hash_key(key);
        if *hash == *state.admin_key_hash {
            return Ok(Caller(Principal::Admin, hash));
        }
        // A portal link's token: only on its routes (DESIGN §22). Keys never start so.
        if key.starts_with(auth::PORTAL_TOKEN_PREFIX) {
            let principal = portal::caller(state, parts, &hash).await?;
            return Ok(Caller(principal, hash));
        }
        match state.store.find_key(&hash).await? {
            Some(k) => Ok(Caller(
                Principal::Tenant {
                    tenant_id: k.tenant_id,
                    scopes: k.scopes,
                },
                hash,
            )),
            None => Err(ApiError::Unauthorized),
        }
    }
}

impl Caller {
    /// Checks that the caller may act on `tenant` with `scope`, and that the tenant exists
    /// (what [`Access`] does for the tenant in the path).
    pub async fn check_tenant(
        &self,
        state: &AppState,
        tenant: &str,
        scope: Scope,
    ) -> Result<(), ApiError> {
        self.0.may(tenant, scope)?;
        // A tenant key's tenant exists (its keys go with it); the admin may name any.
        if self.0 == Principal::Admin && state.store.get_tenant(tenant).await?.is_none() {
            return Err(ApiError::NotFound("tenant not found".into()));
        }
        Ok(())
    }
}

/// The scope a route needs on the tenant in its path, as a type: `Access<need::Read>`.
pub mod need {
    use crate::auth::Scope;

    pub trait Scoped: Send + Sync {
        const SCOPE: Scope;
    }
    pub struct Publish;
    pub struct Read;
    pub struct Manage;
    pub struct Consume;
    impl Scoped for Consume {
        const SCOPE: Scope = Scope::Consume;
    }
    impl Scoped for Publish {
        const SCOPE: Scope = Scope::Publish;
    }
    impl Scoped for Read {
        const SCOPE: Scope = Scope::Read;
    }
    impl Scoped for Manage {
        const SCOPE: Scope = Scope::Manage;
    }
}

/// The tenant of a `/v1/tenants/{tenant}/…` route, checked: the caller is authenticated, may
/// act on it with `S`'s scope (another tenant's is 404, a missing scope 403), and it exists.
pub struct Access<S> {
    pub tenant: String,
    pub caller: Principal,
    /// The hash of the caller's key.
    pub key_hash: String,
    scope: std::marker::PhantomData<S>,
}

impl<S: need::Scoped> FromRequestParts<AppState> for Access<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::Internal(format!("path parameters: {e}")))?;
        let tenant = params
            .iter()
            .find_map(|(name, value)| (name == "tenant").then(|| value.to_string()))
            .ok_or_else(|| ApiError::Internal("the route names no tenant".into()))?;
        caller.check_tenant(state, &tenant, S::SCOPE).await?;
        Ok(Access {
            tenant,
            caller: caller.0,
            key_hash: caller.1,
            scope: std::marker::PhantomData,
        })
    }
}

/// Reads a JSON request body: 415 unless it says JSON, 413 past the limit.
pub async fn read_json_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
        .unwrap_or(false);
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(ApiError::TooLarge { limit }),
        Err(e) => Err(ApiError::Malformed(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// Reads and deserializes a JSON body; type errors are 422 naming the field.
pub async fn json_body<T: DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = read_json_body(headers, body, state.max_body_bytes).await?;
    // Every body this reads is an object; serde would also take a struct as a JSON array, by
    // position (`["x", "y"]` for `{id, name}`), which no client means.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|&b| b != b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok()
    {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() {
            let msg = strip_position(&inner);
            ApiError::Invalid(vec![FieldError::at_path(&field, msg)])
        } else {
            ApiError::Malformed(format!("malformed JSON: {inner}"))
        }
    })
}

/// The token of an `Authorization: Bearer <token>` value; the scheme's case does not matter
/// (RFC 9110 §11.1), nor the spaces around the token.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// serde_json appends "at line 1 column 9"; the field name says more.
fn strip_position(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    }
}

/// Query parameters, taken one by one so that an unknown one can be refused.
pub struct Params(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let q: Result<Query<Vec<(String, String)>>, QueryRejection> =
            Query::from_request_parts(parts, state).await;
        q.map(|Query(pairs)| Params(pairs))
            .map_err(|e| ApiError::Malformed(format!("malformed query string: {e}")))
    }
}

/// The whole query of a list keyed by string ids: `limit` and `after`, nothing else.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IdPage {
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000, required = false)]
    pub limit: u32,
    /// The id to start after (`next_after` of the previous page).
    #[param(required = false)]
    pub after: String,
}

impl<S: Send + Sync> FromRequestParts<S> for IdPage {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let mut p = Params::from_request_parts(parts, state).await?;
        let limit = p.limit()?;
        let after = p.take("after").unwrap_or_default();
        p.finish()?;
        Ok(IdPage { limit, after })
    }
}

impl Params {
    pub fn take(&mut self, name: &str) -> Option<String> {
        let i = self.0.iter().position(|(k, _)| k == name)?;
        Some(self.0.remove(i).1)
    }

    /// Takes and parses a parameter; the message names what it should be.
    pub fn parse<T: std::str::FromStr>(
        &mut self,
        name: &str,
        what: &str,
    ) -> Result<Option<T>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::invalid(name, format!("must be {what}, got {v:?}"))),
        }
    }

    /// The page size: 1–1000, default 100.
    pub fn limit(&mut self) -> Result<u32, ApiError> {
        match self.parse::<u32>("limit", "an integer from 1 to 1000")? {
            None => Ok(100),
            Some(n @ 1..=1000) => Ok(n),
            Some(n) => Err(ApiError::invalid(
                "limit",
                format!("must be from 1 to 1000, got {n}"),
            )),
        }
    }

    /// Refuses whatever was not taken.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.0.first() {
            None => Ok(()),
            Some((k, _)) => Err(ApiError::invalid(k, "unknown query parameter")),
        }
    }
}

/// A page of a list: `{data, next_after}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    /// The `after` of the next page; null: no more.
    pub next_after: Option<String>,
}

impl<T> Page<T> {
    /// `items` was fetched with `limit + 1`: the extra one only says there is more.
    pub fn new(mut items: Vec<T>, limit: u32, cursor: impl Fn(&T) -> String) -> Self {
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next_after = if more { items.last().map(cursor) } else { None };
        Page {
            data: items,
            next_after,
        }
    }
}

/// Unix milliseconds as RFC 3339 UTC.
pub fn rfc3339(millis: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_trimmed() {
        for (value, want) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER  abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer   ", None),
            ("Bearerabc", None),
        ] {
            assert_eq!(bearer_token(value), want, "{value:?}");
        }
    }
}
