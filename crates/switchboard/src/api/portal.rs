//! The customers' portal (DESIGN §22): `/v1/tenants/{t}/portal-links`, the short-lived tokens a
//! platform hands its own customers, and the guard that keeps such a token to the routes a
//! customer needs — its tenant's subscriptions (or only the link's), their deliveries, the
//! catalog, checked where the caller is extracted (`Caller`). The pages themselves (`/portal`)
//! are served beside the console (`console.rs`).

use axum::body::Body;
use axum::extract::{MatchedPath, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Json;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::doc::{BodyErrors, Errors};
use super::{Access, ApiError, AppState, IdPage, Page, json_body, need, rfc3339};
use crate::auth::{self, PORTAL_TOKEN_PREFIX, Principal};
use crate::clock::now_millis;
use crate::store::PortalLink;

/// What is escaped in a URL's path segment or parameter: all but RFC 3986's unreserved.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, remove))
}

/// The shortest and longest life of a link, in seconds.
const EXPIRY: std::ops::RangeInclusive<u64> = 60..=86_400;
/// Most subscriptions one link may be limited to.
const MAX_SUBSCRIPTIONS: usize = 100;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateLink {
    /// How long the link works, 60 to 86,400 seconds.
    #[schema(minimum = 60, maximum = 86400)]
    expires_in_secs: Option<u64>,
    /// Only these subscriptions (1 to 100 of the tenant's); then it cannot create any. Left
    /// out: all of the tenant's.
    subscription_ids: Option<Vec<String>>,
    /// Looks, changes nothing: no secrets, no create, edit, test, rotate, replay or retry.
    #[serde(default)]
    read_only: bool,
}

#[derive(Serialize, ToSchema)]
struct PortalLinkView {
    id: String,
    /// The subscriptions it is limited to; null: all of the tenant's.
    subscription_ids: Option<Vec<String>>,
    read_only: bool,
    created_at: String,
    expires_at: String,
    /// Only in the answer to creation: the page to open (the token is in its fragment, which
    /// browsers never send to a server).
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    /// Only in the answer to creation: the bearer token itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

impl PortalLinkView {
    fn new(link: PortalLink) -> Self {
        PortalLinkView {
            id: link.id,
            subscription_ids: link.subscription_ids,
            read_only: link.read_only,
            created_at: rfc3339(link.created_at),
            expires_at: rfc3339(link.expires_at),
            url: None,
            token: None,
        }
    }
}

/// Makes a portal link for one of the tenant's customers; the answer is the only time `url`
/// and `token` are shown.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/portal-links", tag = "portal",
    params(("tenant" = String, Path, description = "The tenant's id")),
    request_body = CreateLink,
    responses((status = 201, body = PortalLinkView), Errors, BodyErrors),
    security(("bearer" = [])))]
async fn create(
    State(state): State<AppState>,
    Access { tenant, caller, .. }: Access<need::Manage>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<PortalLinkView>), ApiError> {
    keys_only(&caller)?;
    let req: CreateLink = json_body(&state, &headers, body).await?;
    let secs = match req.expires_in_secs {
        Some(s) if EXPIRY.contains(&s) => s,
        Some(s) => {
            return Err(ApiError::invalid(
                "expires_in_secs",
                format!("must be from 60 to 86400, got {s}"),
            ));
        }
        None => {
            return Err(ApiError::invalid(
                "expires_in_secs",
                "is required: how long the link works, 60 to 86400 seconds",
            ));
        }
    };
    if let Some(ids) = &req.subscription_ids {
        if ids.is_empty() || ids.len() > MAX_SUBSCRIPTIONS {
            return Err(ApiError::invalid(
                "subscription_ids",
                "must name 1 to 100 subscriptions, or be left out (all of the tenant's)",
            ));
        }
        for (i, id) in ids.iter().enumerate() {
            let field = format!("subscription_ids[{i}]");
            if ids[..i].contains(id) {
                return Err(ApiError::invalid(&field, format!("{id} is named twice")));
            }
            if state.store.get_subscription(&tenant, id).await?.is_none() {
                return Err(ApiError::invalid(
                    &field,
                    format!("the tenant has no subscription {id}"),
                ));
            }
        }
    }
    let now = now_millis();
    let link = PortalLink {
        id: format!("pl_{}", auth::random_token(12)),
        tenant_id: tenant.clone(),
        subscription_ids: req.subscription_ids,
        read_only: req.read_only,
        created_at: now,
        expires_at: now + secs as i64 * 1000,
    };
    let token = format!("{PORTAL_TOKEN_PREFIX}{}", auth::random_token(32));
    state
        .store
        .create_portal_link(
            &link,
            &auth::hash_key(&token),
            state.settings.max_portal_links_per_tenant,
        )
        .await?;
    let url = link_url(&state, &uri, &headers, &link, &token);
    let mut view = PortalLinkView::new(link);
    view.url = Some(url);
    view.token = Some(token);
    Ok((StatusCode::CREATED, Json(view)))
}

/// Where the link's page is: `<base>/portal#tenant=…&token=…`, with the link's limits after
/// them for the page to show only what works.
fn link_url(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    link: &PortalLink,
    token: &str,
) -> String {
    let base = if state.settings.public_url.is_empty() {
        // HTTP/1.1 names the host in `Host`, HTTP/2 in the request's `:authority`.
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| uri.authority().map(|a| a.to_string()))
            .unwrap_or_else(|| "localhost".into());
        let https = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"));
        format!("{}://{host}", if https { "https" } else { "http" })
    } else {
        state.settings.public_url.clone()
    };
    let enc = |s: &str| utf8_percent_encode(s, COMPONENT).to_string();
    let mut url = format!(
        "{base}/portal#tenant={}&token={token}",
        enc(&link.tenant_id)
    );
    if let Some(ids) = &link.subscription_ids {
        let ids: Vec<String> = ids.iter().map(|id| enc(id)).collect();
        url.push_str(&format!("&subscriptions={}", ids.join(",")));
    }
    if link.read_only {
        url.push_str("&read_only=1");
    }
    url
}

/// The tenant's portal links that have not expired (never their tokens).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/portal-links", tag = "portal",
    params(("tenant" = String, Path, description = "The tenant's id"), IdPage),
    responses((status = 200, body = Page<PortalLinkView>), Errors),
    security(("bearer" = [])))]
async fn list(
    State(state): State<AppState>,
    Access { tenant, caller, .. }: Access<need::Manage>,
    IdPage { limit, after }: IdPage,
) -> Result<Json<Page<PortalLinkView>>, ApiError> {
    keys_only(&caller)?;
    let links = state
        .store
        .list_portal_links(&tenant, &after, limit + 1)
        .await?;
    let views = links.into_iter().map(PortalLinkView::new).collect();
    Ok(Json(Page::new(views, limit, |l| l.id.clone())))
}

/// One portal link (not its token).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/portal-links/{id}", tag = "portal",
    params(("tenant" = String, Path, description = "The tenant's id"), ("id" = String, Path, description = "The link's id")),
    responses((status = 200, body = PortalLinkView), Errors),
    security(("bearer" = [])))]
async fn show(
    State(state): State<AppState>,
    Access { tenant, caller, .. }: Access<need::Manage>,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<PortalLinkView>, ApiError> {
    keys_only(&caller)?;
    match state.store.get_portal_link(&tenant, &id).await? {
        Some(link) => Ok(Json(PortalLinkView::new(link))),
        None => Err(ApiError::NotFound(format!("portal link {id} not found"))),
    }
}

/// Revokes a portal link: its token answers 401 from the next request on, on every node.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/portal-links/{id}", tag = "portal",
    params(("tenant" = String, Path, description = "The tenant's id"), ("id" = String, Path, description = "The link's id")),
    responses((status = 204, description = "Revoked"), Errors),
    security(("bearer" = [])))]
async fn remove(
    State(state): State<AppState>,
    Access { tenant, caller, .. }: Access<need::Manage>,
    Path((_, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    keys_only(&caller)?;
    if state.store.delete_portal_link(&tenant, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("portal link {id} not found")))
    }
}

/// Links are made by keys: a portal token never makes another (the guard already refuses it;
/// this says so where the rule lives).
fn keys_only(caller: &Principal) -> Result<(), ApiError> {
    match caller {
        Principal::Portal { .. } => Err(auth::Denied::NotForPortal.into()),
        _ => Ok(()),
    }
}

/// What a route asks of a portal link beyond being its tenant's.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Needs {
    /// Looking.
    Read,
    /// Changing something: not with a read-only link.
    Write,
    /// Making a subscription: not with a read-only link, nor one limited to some subscriptions.
    Create,
}

/// Every route a portal token may use (DESIGN §22); any other answers 403.
const ROUTES: &[(Method, &str, Needs)] = &[
    (Method::GET, "/v1/catalog", Needs::Read),
    (
        Method::GET,
        "/v1/tenants/{tenant}/subscriptions",
        Needs::Read,
    ),
    (
        Method::POST,
        "/v1/tenants/{tenant}/subscriptions",
        Needs::Create,
    ),
    (
        Method::GET,
        "/v1/tenants/{tenant}/subscriptions/{id}",
        Needs::Read,
    ),
    (
        Method::PATCH,
        "/v1/tenants/{tenant}/subscriptions/{id}",
        Needs::Write,
    ),
    (
        Method::DELETE,
        "/v1/tenants/{tenant}/subscriptions/{id}",
        Needs::Write,
    ),
    (
        Method::POST,
        "/v1/tenants/{tenant}/subscriptions/{id}/test",
        Needs::Write,
    ),
    (
        Method::POST,
        "/v1/tenants/{tenant}/subscriptions/{id}/secret/rotate",
        Needs::Write,
    ),
    (
        Method::POST,
        "/v1/tenants/{tenant}/subscriptions/{id}/replay",
        Needs::Write,
    ),
    (
        Method::GET,
        "/v1/tenants/{tenant}/subscriptions/{id}/deliveries",
        Needs::Read,
    ),
    (
        Method::GET,
        "/v1/tenants/{tenant}/deliveries/{id}",
        Needs::Read,
    ),
    (
        Method::POST,
        "/v1/tenants/{tenant}/deliveries/{id}/retry",
        Needs::Write,
    ),
];

/// The caller behind a portal token (`hash`, the token's), if its link is live and may use the
/// route `parts` matched: what [`super::Caller`] answers for such a token. Expired, revoked and
/// forged tokens are 401; a route not in [`ROUTES`] 403 (checked where the caller is
/// extracted, so requests with keys pay nothing for it; routes that ask for no caller — health,
/// the pages, `/openapi.json` — ignore the token as they ignore any).
pub async fn caller(state: &AppState, parts: &Parts, hash: &str) -> Result<Principal, ApiError> {
    let link = state
        .store
        .find_portal_link(hash)
        .await?
        .ok_or(ApiError::PortalLinkGone)?;
    let template = parts
        .extensions
        .get::<MatchedPath>()
        .ok_or(auth::Denied::NotForPortal)?;
    let method = if parts.method == Method::HEAD {
        Method::GET
    } else {
        parts.method.clone()
    };
    allowed(state, &link, &method, template.as_str(), parts.uri.path()).await?;
    Ok(Principal::Portal {
        tenant_id: link.tenant_id,
        link_id: link.id,
        subscription_ids: link.subscription_ids,
        read_only: link.read_only,
    })
}

/// May `link` use the route `template` (the path `path`) with `method`?
async fn allowed(
    state: &AppState,
    link: &PortalLink,
    method: &Method,
    template: &str,
    path: &str,
) -> Result<(), ApiError> {
    let Some(&(_, _, needs)) = ROUTES
        .iter()
        .find(|(m, t, _)| m == method && *t == template)
    else {
        return Err(auth::Denied::NotForPortal.into());
    };
    // The path's parameters, by the template's names.
    let param = |name: &str| -> Option<String> {
        let want = format!("{{{name}}}");
        let i = template.split('/').position(|s| s == want)?;
        let raw = path.split('/').nth(i)?;
        Some(percent_decode_str(raw).decode_utf8_lossy().into_owned())
    };
    if let Some(tenant) = param("tenant")
        && tenant != link.tenant_id
    {
        return Err(auth::Denied::OtherTenant.into());
    }
    if link.read_only && needs != Needs::Read {
        return Err(auth::Denied::ReadOnlyPortal.into());
    }
    let Some(only) = &link.subscription_ids else {
        return Ok(());
    };
    if needs == Needs::Create {
        return Err(ApiError::Forbidden(
            "this portal link is limited to some subscriptions: it cannot create one".into(),
        ));
    }
    let outside = |id: &str| {
        ApiError::Forbidden(format!("this portal link does not cover subscription {id}"))
    };
    if template.starts_with("/v1/tenants/{tenant}/subscriptions/{id}")
        && let Some(id) = param("id")
        && !only.contains(&id)
    {
        return Err(outside(&id));
    }
    if template.starts_with("/v1/tenants/{tenant}/deliveries/{id}")
        && let Some(id) = param("id").and_then(|id| id.parse::<i64>().ok())
        && let Some((delivery, _)) = state.store.get_delivery(&link.tenant_id, id).await?
        && !only.contains(&delivery.subscription_id)
    {
        return Err(outside(&delivery.subscription_id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ROUTES;

    #[test]
    fn every_portal_route_exists() {
        let doc = super::super::api_router().into_openapi();
        for (method, path, _) in ROUTES {
            let item = doc
                .paths
                .paths
                .get(*path)
                .unwrap_or_else(|| panic!("{path} is not a route"));
            let op = match *method {
                axum::http::Method::GET => &item.get,
                axum::http::Method::POST => &item.post,
                axum::http::Method::PATCH => &item.patch,
                axum::http::Method::DELETE => &item.delete,
                _ => unreachable!(),
            };
            assert!(op.is_some(), "{method} {path} is not a route");
        }
    }
}
