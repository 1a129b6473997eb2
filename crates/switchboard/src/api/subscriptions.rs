//! `/v1/tenants/{t}/subscriptions`: endpoints, their filters and secrets; test, replay, rotate.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::deliveries::DeliveryView;
use super::doc::{BodyErrors, Conflict, Errors};
use super::{Access, ApiError, AppState, IdPage, Page, Params, json_body, need, rfc3339};
use crate::auth::{self, Principal, Scope};
use crate::clock::now_millis;
use crate::delivery::attempt;
use crate::delivery::signing::Secret;
use crate::event::{Event, Timestamp, catalog};
use crate::store::{
    Breaker, DeliveryStatus, Lag, Recipients, StoredSubscription, SubscriptionRecord, SystemEvent,
    UndecodableSubscription,
};
use crate::subscription::destination::Destination;
use crate::subscription::health::{FAILING_AFTER, Notice};
use crate::subscription::{SubscriptionSpec, merge_patch};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
        .routes(routes!(rotate))
        .routes(routes!(test))
        .routes(routes!(replay))
        .routes(routes!(deliveries))
}

/// A subscription as answered: its body plus identity and state, deciding once what the
/// caller may see (`secret` and header values only for `manage`). Written out rather than
/// flattened from the body, whose own schema forbids the fields added here.
#[derive(Serialize, ToSchema)]
#[schema(as = SubscriptionDoc)]
struct SubscriptionView {
    id: String,
    /// Push to HTTP only.
    #[schema(required = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    /// Push only: where deliveries go (an HTTP receiver's too, beside `url`); a broker URL's
    /// password is shown as `***`.
    #[schema(required = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<Destination>,
    /// `push` or `pull`.
    mode: crate::subscription::Mode,
    /// Pull only: its partitions (1 to 64).
    #[schema(required = false, minimum = 1, maximum = 64)]
    #[serde(skip_serializing_if = "Option::is_none")]
    partitions: Option<u32>,
    description: String,
    filter: Option<crate::subscription::Filter>,
    /// Only to `manage` keys and the admin; push only.
    #[schema(required = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    enabled: bool,
    /// Push only, as are the fields below up to `heartbeat_secs`.
    #[schema(required = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    ordering: Option<crate::subscription::Ordering>,
    #[schema(required = false, value_type = Option<u32>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit_per_sec: Option<Option<u32>>,
    #[schema(required = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_in_flight: Option<u32>,
    #[schema(required = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<std::collections::BTreeMap<String, String>>,
    #[schema(required = false, value_type = Option<Vec<u64>>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_schedule_secs: Option<Option<Vec<u64>>>,
    #[schema(required = false, minimum = 1, maximum = 604800, value_type = Option<u64>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat_secs: Option<Option<u64>>,
    #[schema(minimum = 1, maximum = 31536000)]
    max_age_secs: Option<u64>,
    #[schema(minimum = 1, maximum = 31536000)]
    lag_budget_secs: Option<u64>,
    /// How far behind it is: its deliveries not finished yet (System events aside; a disabled
    /// subscription's waiting ones too), and how long the oldest has been pending.
    lag: LagView,
    /// Its circuit breaker: `open` after 5 failed attempts in a row, when only one probe at a
    /// time is attempted.
    health: HealthView,
    /// Push only.
    #[schema(required = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    coalesce: Option<crate::subscription::Coalesce>,
    /// HTTP only: many events per request; absent: one per request.
    #[schema(required = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<crate::subscription::Batch>,
    /// Push only.
    #[schema(required = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    signature_scheme: Option<crate::delivery::signing::Scheme>,
    /// The receiver's credentials, their secrets always `***`.
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<crate::subscription::auth::Auth>,
    /// TLS towards the receiver, the key always `***`.
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<crate::subscription::tls::Tls>,
    /// What its receivers are not sent as stored (DESIGN §19); absent: nothing is redacted.
    #[schema(required = false, value_type = Option<std::collections::BTreeMap<String, crate::redact::Mode>>)]
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    redact: crate::redact::Rules,
    /// For `v1a` only: `whpk_<base64 of the 32-byte Ed25519 public key>`.
    #[schema(
        required = false,
        example = "whpk_11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    disabled_reason: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

/// A subscription as listed or got: whole, or, when its stored form does not decode (written
/// by another release; DESIGN §15), only its identity.
#[derive(Serialize, ToSchema)]
#[schema(as = SubscriptionOrUndecodable)]
#[serde(untagged)]
enum Listed {
    Whole(Box<SubscriptionView>),
    Undecodable(UndecodableView),
}

/// A subscription whose stored form does not decode: it receives nothing until a `PATCH` with
/// a whole body repairs it, or a `DELETE` removes it.
#[derive(Serialize, ToSchema)]
#[schema(as = UndecodableSubscription)]
struct UndecodableView {
    id: String,
    /// Always `true`.
    undecodable: bool,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

impl Listed {
    fn new(sub: StoredSubscription, show_secret: bool) -> Self {
        match sub {
            Ok(rec) => Listed::Whole(Box::new(SubscriptionView::new(rec, show_secret))),
            Err(bad) => Listed::Undecodable(UndecodableView {
                id: bad.id,
                undecodable: true,
                created_at: rfc3339(bad.created_at),
                updated_at: rfc3339(bad.updated_at),
            }),
        }
    }

    fn id(&self) -> &str {
        match self {
            Listed::Whole(v) => &v.id,
            Listed::Undecodable(v) => &v.id,
        }
    }
}

/// The answer to a rotation.
#[derive(Serialize, ToSchema)]
struct NewSecret {
    /// Signs from now on; the old one too, until the grace period ends.
    #[schema(example = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")]
    secret: String,
    /// For `v1a`: the new secret's public key.
    #[schema(required = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
}

/// The outcome of a Test event's attempt.
#[derive(Serialize, ToSchema)]
struct TestOutcome {
    event_id: String,
    delivery_id: i64,
    /// The receiver answered 2xx.
    delivered: bool,
    status_code: Option<u16>,
    duration_ms: i64,
    error: Option<String>,
    response_body: Option<String>,
}

/// The answer to a replay.
#[derive(Serialize, ToSchema)]
struct Requeued {
    /// Deliveries made due again or created.
    requeued: u64,
}

/// A subscription's deliveries.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct DeliveryFilter {
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The delivery id to start after.
    #[param(minimum = 0)]
    after: Option<i64>,
    status: Option<DeliveryStatus>,
}

impl SubscriptionView {
    fn new(rec: SubscriptionRecord, show_secret: bool) -> Self {
        let spec = rec.spec;
        let push = !spec.is_pull();
        let partitions = (!push).then_some(spec.partition_count());
        let public_key = spec
            .secret
            .as_deref()
            .and_then(|s| Secret::parse(s).ok())
            .and_then(|s| s.public_key());
        let mut headers = spec.headers;
        if !show_secret {
            // Where users put receivers' credentials: names shown, values to manage keys only.
            for value in headers.values_mut() {
                *value = MASKED.into();
            }
        }
        SubscriptionView {
            id: rec.id,
            destination: push.then(|| match &spec.destination {
                Some(d) => d.masked(),
                None => Destination::Http {
                    url: spec.url.clone(),
                },
            }),
            url: (push && spec.destination.is_none()).then_some(spec.url),
            mode: spec.mode,
            partitions,
            description: spec.description,
            filter: spec.filter,
            secret: spec.secret.filter(|_| show_secret && push),
            enabled: spec.enabled,
            ordering: push.then_some(spec.ordering),
            rate_limit_per_sec: push.then_some(spec.rate_limit_per_sec),
            max_in_flight: push.then_some(spec.max_in_flight),
            headers: push.then_some(headers),
            retry_schedule_secs: push.then_some(spec.retry_schedule_secs),
            heartbeat_secs: push.then_some(spec.heartbeat_secs),
            max_age_secs: spec.max_age_secs,
            lag_budget_secs: spec.lag_budget_secs,
            lag: LagView::default(),
            health: HealthView::default(),
            coalesce: push.then_some(spec.coalesce),
            batch: spec.batch,
            signature_scheme: push.then_some(spec.signature_scheme),
            auth: spec.auth.as_ref().map(|a| a.masked()),
            tls: spec.tls.as_ref().map(|t| t.masked()),
            redact: spec.redact,
            public_key,
            disabled_reason: rec.disabled_reason,
            created_at: rfc3339(rec.created_at),
            updated_at: rfc3339(rec.updated_at),
        }
    }
}

/// How far behind a subscription is (DESIGN §16).
#[derive(Serialize, ToSchema, Default, Clone, Copy)]
struct LagView {
    /// Deliveries pending (due, retrying, or in flight).
    pending: i64,
    /// How long the oldest of them has been pending (since created, or requeued), in ms; 0 when
    /// none is.
    oldest_pending_age_ms: i64,
}

impl LagView {
    fn of(lag: Option<&Lag>, now: i64) -> Self {
        match lag {
            None => LagView::default(),
            Some(l) => LagView {
                pending: l.pending,
                oldest_pending_age_ms: l.oldest_since.map_or(0, |since| (now - since).max(0)),
            },
        }
    }
}

/// A subscription's circuit breaker (DESIGN §16).
#[derive(Serialize, ToSchema, Clone)]
struct HealthView {
    /// `healthy` (its last attempt succeeded, or none failed), `failing` (1 to 4 attempts in a
    /// row failed) or `open` (5 or more: only one probe at a time is attempted, each after the
    /// next delay of its retry schedule, until one succeeds or a Test does).
    #[schema(example = "healthy")]
    state: &'static str,
    #[schema(format = DateTime)]
    failing_since: Option<String>,
    last_error: Option<String>,
    /// While open: when the next probe may start.
    #[schema(format = DateTime)]
    next_probe_at: Option<String>,
}

impl Default for HealthView {
    fn default() -> Self {
        HealthView {
            state: "healthy",
            failing_since: None,
            last_error: None,
            next_probe_at: None,
        }
    }
}

impl HealthView {
    fn of(breaker: Option<&Breaker>) -> Self {
        let Some(b) = breaker else {
            return HealthView::default();
        };
        HealthView {
            state: match b.failures {
                0 => "healthy",
                n if n < FAILING_AFTER => "failing",
                _ => "open",
            },
            failing_since: b.failing_since.map(rfc3339),
            last_error: b.last_error.clone(),
            next_probe_at: b.probe_at.map(rfc3339),
        }
    }
}

/// Fills in the lag and the health of `views`, as they are now.
async fn fill_state(views: Vec<&mut SubscriptionView>, state: &AppState) -> Result<(), ApiError> {
    let ids: Vec<&str> = views.iter().map(|v| v.id.as_str()).collect();
    let now = now_millis();
    let lags = state.store.lags(&ids, now).await?;
    let breakers = state.store.breakers(&ids).await?;
    for view in views {
        view.lag = LagView::of(lags.get(&view.id), now);
        view.health = HealthView::of(breakers.get(&view.id));
    }
    Ok(())
}

impl Listed {
    /// Fills in the lag and the health of each whole subscription among `views`.
    async fn with_lag(views: &mut [Listed], state: &AppState) -> Result<(), ApiError> {
        let whole = views
            .iter_mut()
            .filter_map(|v| match v {
                Listed::Whole(w) => Some(&mut **w),
                Listed::Undecodable(_) => None,
            })
            .collect();
        fill_state(whole, state).await
    }
}

/// A secret value as answers show it to keys that may not see it.
const MASKED: &str = "***";

/// The subscription, decodable or not.
async fn find_stored(
    state: &AppState,
    tenant: &str,
    id: &str,
) -> Result<StoredSubscription, ApiError> {
    state
        .store
        .get_subscription(tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("subscription {id} not found")))
}

/// What a portal link's customer may not change of a subscription the platform made (DESIGN
/// §22 and §19): its redaction, which keeps personal data from the receiver; and, for a link
/// limited to some subscriptions, which agents' events it receives (`filter.usernames`,
/// `filter.fields`) — widening those would show the customer other customers' agents. The
/// event types (`filter.events`) are theirs to choose.
fn portal_may_change(
    before: &SubscriptionSpec,
    after: &SubscriptionSpec,
    scoped: bool,
) -> Result<(), ApiError> {
    if after.redact != before.redact {
        return Err(ApiError::Forbidden(
            "redact is set by the platform: a portal link cannot change it".into(),
        ));
    }
    if scoped {
        let agents = |s: &SubscriptionSpec| {
            let f = s.filter.clone().unwrap_or_default();
            (f.usernames, f.fields)
        };
        if agents(after) != agents(before) {
            return Err(ApiError::Forbidden(
                "filter.usernames and filter.fields are set by the platform: this portal link \
                 cannot change whose events the subscription receives"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// The subscription; one that does not decode is a `409`.
async fn find(state: &AppState, tenant: &str, id: &str) -> Result<SubscriptionRecord, ApiError> {
    find_stored(state, tenant, id)
        .await?
        .map_err(|bad| ApiError::undecodable(&bad.id))
}

/// Creates a subscription; the answer holds its `id` and `secret`.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/subscriptions", tag = "subscriptions",
    params(("tenant" = String, Path, description = "The tenant's id")),
    request_body = SubscriptionSpec,
    responses((status = 201, body = SubscriptionView), Errors, BodyErrors),
    security(("bearer" = [])))]
async fn create(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Manage>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<SubscriptionView>), ApiError> {
    let value: Value = json_body(&state, &headers, body).await?;
    let mut spec = SubscriptionSpec::from_value(value).map_err(ApiError::Invalid)?;
    guarded(&state, &spec)?;
    if !spec.is_pull() {
        spec.secret
            .get_or_insert_with(|| Secret::generate_for(spec.signature_scheme));
    }
    let now = now_millis();
    let rec = SubscriptionRecord {
        id: format!("sub_{}", auth::random_token(12)),
        tenant_id: tenant,
        disabled_reason: (!spec.enabled).then(|| "disabled by the user".to_string()),
        spec,
        old_secret: None,
        old_secret_expires_at: None,
        created_at: now,
        updated_at: now,
    };
    state
        .store
        .create_subscription(&rec, state.settings.max_subscriptions_per_tenant)
        .await?;
    Ok((StatusCode::CREATED, Json(SubscriptionView::new(rec, true))))
}

/// The tenant's subscriptions.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/subscriptions", tag = "subscriptions",
    params(("tenant" = String, Path, description = "The tenant's id"), IdPage),
    responses((status = 200, body = Page<Listed>), Errors),
    security(("bearer" = [])))]
async fn list(
    State(state): State<AppState>,
    Access { tenant, caller, .. }: Access<need::Read>,
    IdPage { limit, after }: IdPage,
) -> Result<Json<Page<Listed>>, ApiError> {
    let subs = match caller {
        // A portal link limited to some subscriptions lists only those.
        Principal::Portal {
            subscription_ids: Some(mut ids),
            ..
        } => {
            ids.sort();
            let mut subs = Vec::new();
            for id in ids.iter().filter(|id| **id > after) {
                if subs.len() > limit as usize {
                    break;
                }
                if let Some(sub) = state.store.get_subscription(&tenant, id).await? {
                    subs.push(sub);
                }
            }
            subs
        }
        _ => {
            state
                .store
                .list_subscriptions(&tenant, &after, limit + 1)
                .await?
        }
    };
    let mut views: Vec<Listed> = subs.into_iter().map(|s| Listed::new(s, false)).collect();
    let shown = (limit as usize).min(views.len());
    Listed::with_lag(&mut views[..shown], &state).await?;
    Ok(Json(Page::new(views, limit, |s| s.id().to_owned())))
}

/// One subscription (`secret` only to `manage` keys).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/subscriptions/{id}", tag = "subscriptions",
    params(("tenant" = String, Path, description = "The tenant's id"), ("id" = String, Path, description = "The subscription's id")),
    responses((status = 200, body = Listed), Errors),
    security(("bearer" = [])))]
async fn show(
    State(state): State<AppState>,
    Access { tenant, caller, .. }: Access<need::Read>,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<Listed>, ApiError> {
    let sub = find_stored(&state, &tenant, &id).await?;
    let manage = caller.may(&tenant, Scope::Manage).is_ok();
    let mut view = [Listed::new(sub, manage)];
    Listed::with_lag(&mut view, &state).await?;
    let [view] = view;
    Ok(Json(view))
}

/// `disabled_reason` of a subscription a user disabled.
const DISABLED_BY_USER: &str = "disabled by the user";

/// Changes a subscription: the fields given replace its own (a JSON merge patch of its body,
/// RFC 7396, validated as a whole; `{"enabled": true}` enables it again). A subscription whose
/// stored form does not decode takes the patch as its whole new body.
#[utoipa::path(patch, path = "/v1/tenants/{tenant}/subscriptions/{id}", tag = "subscriptions",
    params(("tenant" = String, Path, description = "The tenant's id"), ("id" = String, Path, description = "The subscription's id")),
    request_body(content = Object, description = "Fields of the subscription body to change"),
    responses((status = 200, body = SubscriptionView), Errors, BodyErrors),
    security(("bearer" = [])))]
async fn update(
    State(state): State<AppState>,
    Access { tenant, caller, .. }: Access<need::Manage>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<SubscriptionView>, ApiError> {
    let patch: Map<String, Value> = json_body(&state, &headers, body).await?;
    let mut rec = match find_stored(&state, &tenant, &id).await? {
        Ok(rec) => rec,
        // Repairing takes a whole new body: nothing stored to hold a portal link's change to.
        Err(_) if matches!(caller, Principal::Portal { .. }) => {
            return Err(ApiError::Forbidden(
                "this subscription was written by another release: the platform must repair it"
                    .into(),
            ));
        }
        Err(bad) => return repair(&state, bad, patch).await,
    };
    let mut current = rec.spec.to_value();
    fixed_at_creation(&current, &patch)?;
    // A new scheme whose secret is of another kind (`v1a` and the rest) takes a new secret of
    // its kind, at once (as a secret given in a patch); `v1`, `github` and `stripe` share one.
    let new_kind = !patch.contains_key("secret")
        && patch
            .get("signature_scheme")
            .and_then(|s| {
                serde_json::from_value::<crate::delivery::signing::Scheme>(s.clone()).ok()
            })
            .is_some_and(|scheme| {
                let stored = rec.spec.secret.as_deref().map(Secret::parse);
                !matches!(stored, Some(Ok(s)) if s.signs_for(scheme))
            });
    if new_kind {
        current["secret"] = Value::Null;
    }
    // One form replaces the other: a patch giving `destination` (or `url`) alone drops the
    // stored `url` (or `destination`).
    for (given, other) in [("destination", "url"), ("url", "destination")] {
        if patch.get(given).is_some_and(|v| !v.is_null())
            && !patch.contains_key(other)
            && let Some(map) = current.as_object_mut()
        {
            map.remove(other);
        }
    }
    // Credentials are replaced whole, never merged field by field with another type's.
    let auth_given = patch.contains_key("auth");
    if auth_given && let Some(map) = current.as_object_mut() {
        map.remove("auth");
    }
    let before = receiver_origin(&current);
    merge_patch(&mut current, Value::Object(patch));
    let same_receiver = receiver_origin(&current) == before;
    if !same_receiver && !auth_given && rec.spec.auth.is_some() {
        // Write-only credentials never follow a receiver elsewhere by themselves.
        return Err(ApiError::invalid(
            "auth",
            "the receiver's origin changed: give its credentials again (or null for none)",
        ));
    }
    // A credential sent back as shown ("***") keeps the stored one, for the same receiver.
    if let (Some(Value::Object(auth)), Some(stored)) = (current.get_mut("auth"), &rec.spec.auth) {
        crate::subscription::auth::Auth::unmask_json(stored, auth, same_receiver);
    }
    if let (Some(Value::Object(tls)), Some(stored)) = (current.get_mut("tls"), &rec.spec.tls) {
        crate::subscription::tls::Tls::unmask_json(stored, tls);
    }
    // A header sent back as shown to others ("***") keeps its stored value.
    if let Some(Value::Object(headers)) = current.get_mut("headers") {
        for (name, value) in headers.iter_mut() {
            if value.as_str() == Some(MASKED)
                && let Some(stored) = rec.spec.headers.get(name)
            {
                *value = Value::String(stored.clone());
            }
        }
    }
    let mut spec = SubscriptionSpec::from_value(current).map_err(ApiError::Invalid)?;
    if let Principal::Portal {
        subscription_ids, ..
    } = &caller
    {
        portal_may_change(&rec.spec, &spec, subscription_ids.is_some())?;
    }
    // A broker password sent back as shown ("***") keeps the stored one.
    if let Some(d) = spec.destination.as_mut() {
        d.unmask(rec.spec.destination.as_ref());
    }
    guarded(&state, &spec)?;
    if !spec.is_pull() {
        spec.secret
            .get_or_insert_with(|| Secret::generate_for(spec.signature_scheme));
    }
    let disabled = rec.spec.enabled && !spec.enabled;
    match (rec.spec.enabled, spec.enabled) {
        (true, false) => rec.disabled_reason = Some(DISABLED_BY_USER.into()),
        (_, true) => rec.disabled_reason = None,
        _ => {}
    }
    rec.spec = spec;
    rec.updated_at = now_millis();
    state.store.update_subscription(&rec).await?;
    if rec.spec.is_pull() && rec.spec.enabled {
        // Enabled again: its consumers have `auto_disable_after_secs` from now to call.
        state.store.touch_pull(&rec.id, rec.updated_at).await?;
    }
    if disabled {
        // The tenant's monitors are told, as for a disable by 410 or by failures.
        let notice = Notice::Disabled {
            reason: DISABLED_BY_USER.into(),
        };
        let event = SystemEvent {
            tenant: tenant.clone(),
            event: notice.event(&id, rec.updated_at),
            to: Recipients::MonitorsBut(id.clone()),
            lease_until: None,
            retried: true,
        };
        state.store.system_event(event).await?;
    }
    let mut view = SubscriptionView::new(rec, true);
    fill_state(vec![&mut view], &state).await?;
    Ok(Json(view))
}

/// A broker named by an IP literal must be an address the guard allows (a host name is checked
/// when it is resolved, at connect time): else a `422` naming `destination.url`.
/// The origin (scheme, host, port) an HTTP subscription's deliveries go to, from its stored or
/// patched JSON form (`url`, or an `http` destination's).
fn receiver_origin(spec: &Value) -> Option<String> {
    let url = spec
        .get("url")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty());
    let url = url.or_else(|| {
        let d = spec.get("destination")?;
        (d.get("type")?.as_str()? == "http").then_some(d.get("url")?.as_str()?)
    })?;
    let u = reqwest::Url::parse(url).ok()?;
    Some(u.origin().ascii_serialization())
}

fn guarded(state: &AppState, spec: &SubscriptionSpec) -> Result<(), ApiError> {
    // What `redact` names must be a field the catalog declares (DESIGN §19).
    let unknown: Vec<_> = (spec.redact.keys())
        .filter(|f| state.catalog.field_pii(f).is_none())
        .map(|f| {
            let why = "is not a field of the catalog (built in or the catalog file)";
            crate::event::FieldError::new(None, format!("redact.{f}"), why)
        })
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::Invalid(unknown));
    }
    let broker = spec.destination.as_ref().and_then(Destination::broker_url);
    let token = spec.auth.as_ref().and_then(|a| a.token_url());
    let addresses = [
        ("url", (!spec.url.is_empty()).then_some(spec.url.as_str())),
        ("destination.url", broker),
        ("auth.token_url", token),
    ];
    for (field, url) in addresses {
        let Some(Ok(u)) = url.map(reqwest::Url::parse) else {
            continue;
        };
        (state.sender.guard())
            .check_literal(u.host_str().unwrap_or_default())
            .map_err(|why| ApiError::invalid(field, why))?;
    }
    Ok(())
}

/// `mode` and `partitions` are fixed at creation, and `start` is only read then: a patch that
/// changes one is a `422` naming it.
fn fixed_at_creation(current: &Value, patch: &Map<String, Value>) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    let now = |field: &str| match current.get(field) {
        Some(v) => v.clone(),
        None if field == "mode" => Value::String("push".into()),
        None => Value::Null,
    };
    for field in ["mode", "partitions"] {
        if patch.get(field).is_some_and(|v| *v != now(field)) {
            let msg = "is fixed at creation; create a new subscription to change it";
            errors.push(crate::event::FieldError::new(None, field, msg));
        }
    }
    if patch.contains_key("start") {
        let msg = "is only read at creation; use …/seek to move the cursors";
        errors.push(crate::event::FieldError::new(None, "start", msg));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid(errors))
    }
}

/// A push subscription, for the actions only those have (`…/test`, `…/replay`,
/// `…/deliveries`): a pull subscription is a `409`.
pub(super) fn push_only(rec: &SubscriptionRecord, action: &str) -> Result<(), ApiError> {
    if rec.spec.is_pull() {
        return Err(ApiError::Conflict {
            detail: format!(
                "subscription {} is a pull subscription: {action} is for push subscriptions; \
                 read its events from …/messages",
                rec.id
            ),
            errors: Vec::new(),
        });
    }
    Ok(())
}

/// Replaces the stored form of a subscription that does not decode by a whole new body; its
/// secret is kept when the body leaves it out and the stored text still holds it.
async fn repair(
    state: &AppState,
    bad: UndecodableSubscription,
    body: Map<String, Value>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let mut spec = SubscriptionSpec::from_value(Value::Object(body)).map_err(ApiError::Invalid)?;
    guarded(state, &spec)?;
    let kept = bad
        .secret
        .filter(|s| Secret::parse(s).is_ok_and(|s| s.signs_for(spec.signature_scheme)));
    if spec.secret.is_none() && !spec.is_pull() {
        spec.secret = kept;
        spec.secret
            .get_or_insert_with(|| Secret::generate_for(spec.signature_scheme));
    }
    let rec = SubscriptionRecord {
        id: bad.id,
        tenant_id: bad.tenant_id,
        disabled_reason: (!spec.enabled).then(|| DISABLED_BY_USER.to_string()),
        spec,
        old_secret: None,
        old_secret_expires_at: None,
        created_at: bad.created_at,
        updated_at: now_millis(),
    };
    state.store.update_subscription(&rec).await?;
    tracing::info!(tenant = %rec.tenant_id, subscription_id = %rec.id, "an undecodable subscription was repaired by a whole body");
    let mut view = SubscriptionView::new(rec, true);
    fill_state(vec![&mut view], state).await?;
    Ok(Json(view))
}

/// Deletes a subscription with its deliveries.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/subscriptions/{id}", tag = "subscriptions",
    params(("tenant" = String, Path, description = "The tenant's id"), ("id" = String, Path, description = "The subscription's id")),
    responses((status = 204, description = "Deleted"), Errors),
    security(("bearer" = [])))]
async fn remove(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Manage>,
    Path((_, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    if state.store.delete_subscription(&tenant, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("subscription {id} not found")))
    }
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    /// Seconds the old secret keeps signing (default 86400, at most 2592000).
    #[schema(maximum = 2592000)]
    grace_secs: Option<u64>,
}

/// A new secret signs from now on; the old one keeps signing alongside until the grace ends.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/subscriptions/{id}/secret/rotate",
    tag = "subscriptions",
    params(("tenant" = String, Path, description = "The tenant's id"), ("id" = String, Path, description = "The subscription's id")),
    request_body(content = Option<RotateRequest>, description = "Optional"),
    responses((status = 200, body = NewSecret), Errors, BodyErrors, Conflict),
    security(("bearer" = [])))]
async fn rotate(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Manage>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<NewSecret>, ApiError> {
    let req: RotateRequest = if headers.contains_key("content-type") {
        json_body(&state, &headers, body).await?
    } else {
        RotateRequest::default()
    };
    let grace = req.grace_secs.unwrap_or(86_400);
    if grace > 30 * 86_400 {
        return Err(ApiError::invalid(
            "grace_secs",
            "must be at most 2592000 (30 days)",
        ));
    }
    let mut rec = find(&state, &tenant, &id).await?;
    push_only(&rec, "rotating a secret")?;
    let now = now_millis();
    let secret = Secret::generate_for(rec.spec.signature_scheme);
    let public_key = Secret::parse(&secret).ok().and_then(|s| s.public_key());
    rec.old_secret = rec.spec.secret.replace(secret.clone());
    rec.old_secret_expires_at = Some(now + grace as i64 * 1000);
    rec.updated_at = now;
    state.store.update_subscription(&rec).await?;
    Ok(Json(NewSecret { secret, public_key }))
}

/// Sends a System Test event now and answers with the attempt's outcome. The event is stored
/// and its delivery logged like any other: leased to this request for its first attempt, then
/// retried by the dispatcher if that failed.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/subscriptions/{id}/test",
    tag = "subscriptions",
    params(("tenant" = String, Path, description = "The tenant's id"), ("id" = String, Path, description = "The subscription's id")),
    responses((status = 200, body = TestOutcome), Errors, Conflict),
    security(("bearer" = [])))]
async fn test(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Manage>,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<TestOutcome>, ApiError> {
    let rec = find(&state, &tenant, &id).await?;
    push_only(&rec, "a test")?;
    let mut fields = Map::new();
    fields.insert("SubscriptionId".into(), Value::String(rec.id.clone()));
    let event = Event::system(catalog::system::TEST, fields, now_millis());
    let target = state.sender.target(rec);
    let system = SystemEvent {
        tenant: tenant.clone(),
        event,
        to: Recipients::Subscriptions(vec![id.clone()]),
        lease_until: Some(now_millis() + state.lease_ms),
        retried: true,
    };
    let claimed = state.store.system_event(system).await?;
    let Some(c) = claimed.into_iter().next() else {
        return Err(ApiError::Internal(
            "the test delivery was not created".into(),
        ));
    };
    let o = attempt(&target, &c, state.sender.clock()).await;
    let delivered = o.next == crate::store::NextState::Succeeded;
    let answer = TestOutcome {
        event_id: c.event_id,
        delivery_id: c.delivery_id,
        delivered,
        status_code: o.status_code,
        duration_ms: o.duration_ms,
        error: o.error.clone(),
        response_body: o.response_body.clone(),
    };
    state.store.record(vec![o]).await?;
    Ok(Json(answer))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    /// From (`yyyyMMddHHmmss`, on `CreationDateUtc`).
    #[schema(pattern = "^[0-9]{14}$")]
    since: String,
    /// Up to (`yyyyMMddHHmmss`); absent: now.
    #[schema(pattern = "^[0-9]{14}$")]
    until: Option<String>,
    /// Only the deliveries that failed.
    #[serde(default)]
    only_failed: bool,
}

/// Sends again every event of a window that the subscription's filter matches now, older ones
/// included.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/subscriptions/{id}/replay",
    tag = "subscriptions",
    params(("tenant" = String, Path, description = "The tenant's id"), ("id" = String, Path, description = "The subscription's id")),
    request_body = ReplayRequest,
    responses((status = 202, body = Requeued), Errors, BodyErrors, Conflict),
    security(("bearer" = [])))]
async fn replay(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Manage>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Requeued>), ApiError> {
    let req: ReplayRequest = json_body(&state, &headers, body).await?;
    let since = Timestamp::parse(&req.since).map_err(|m| ApiError::invalid("since", m))?;
    let until = req
        .until
        .as_deref()
        .map(|u| Timestamp::parse(u).map_err(|m| ApiError::invalid("until", m)))
        .transpose()?;
    if until.is_some_and(|u| u < since) {
        return Err(ApiError::invalid("until", "must not be before since"));
    }
    let rec = find(&state, &tenant, &id).await?;
    push_only(&rec, "a replay")?;
    let requeued = state
        .store
        .replay(&rec, since, until, req.only_failed)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(Requeued { requeued })))
}

/// The subscription's deliveries, oldest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/subscriptions/{id}/deliveries",
    tag = "subscriptions",
    params(("tenant" = String, Path, description = "The tenant's id"), ("id" = String, Path, description = "The subscription's id"), DeliveryFilter),
    responses((status = 200, body = Page<DeliveryView>), Errors, Conflict),
    security(("bearer" = [])))]
async fn deliveries(
    State(state): State<AppState>,
    Access { tenant, .. }: Access<need::Read>,
    Path((_, id)): Path<(String, String)>,
    mut p: Params,
) -> Result<Json<Page<DeliveryView>>, ApiError> {
    let limit = p.limit()?;
    let after: i64 = p.parse("after", "a delivery id")?.unwrap_or(0);
    let status = p
        .take("status")
        .map(|s| {
            DeliveryStatus::parse(&s).ok_or_else(|| {
                ApiError::invalid(
                    "status",
                    "must be pending, succeeded, failed, expired, superseded or canceled",
                )
            })
        })
        .transpose()?;
    p.finish()?;
    // Deliveries of a subscription that does not decode are still listed.
    if let Ok(rec) = find_stored(&state, &tenant, &id).await? {
        push_only(&rec, "listing deliveries")?;
    }
    let rows = state
        .store
        .list_deliveries(&tenant, &id, status, after, limit + 1)
        .await?;
    let views = rows.into_iter().map(DeliveryView::from).collect();
    Ok(Json(Page::new(views, limit, |d| d.id.to_string())))
}
