//! The OpenAPI 3.1 document (DESIGN §12), generated from the code: every route is registered
//! through `utoipa_axum`'s `routes!` from its handler's `#[utoipa::path]`, so the router and the
//! document cannot disagree. Shared here: the document's frame (info, the bearer scheme, the
//! problem+json errors, the wire event's schema) and its `webhooks` section (the delivery).

use std::sync::OnceLock;

use serde::Serialize;
use serde_json::{Value, json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

use crate::event::FieldError;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard",
        description = "Webhooks for contact centers: durable ingest of contact-center events, \
            signed at-least-once delivery (Standard Webhooks), the live state of every agent, \
            and resumable streams. The API in prose: docs/api.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&Bearer),
    components(schemas(Problem, FieldError, WireEvent)),
    tags(
        (name = "events", description = "Ingest and the event log"),
        (name = "agents", description = "The live state of every agent"),
        (name = "rules", description = "Rules that raise derived events (Category 5)"),
        (name = "subscriptions", description = "Endpoints, filters and delivery options"),
        (name = "deliveries", description = "Deliveries and their attempts"),
        (name = "jobs", description = "Long work, tracked and cancellable: replays, cancels"),
        (name = "tenants", description = "Tenants and API keys"),
        (name = "catalog", description = "The event catalog"),
        (name = "portal", description = "The customers' portal: links, and its page"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    ),
)]
pub struct ApiDoc;

/// Every `/v1` operation takes `Authorization: Bearer <key>`.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The operator's admin key, or a tenant key with the scopes the \
                         operation names",
                    ))
                    .build(),
            ),
        );
    }
}

/// An error, RFC 9457 problem+json.
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// `urn:switchboard:problem:<slug>`.
    #[schema(example = "urn:switchboard:problem:validation")]
    pub r#type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Each problem with a field (validation, conflicts), naming it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// The errors any authenticated operation may answer.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum Errors {
    /// Malformed JSON or query string; or, for `as_of`/`since`, beyond retention.
    #[response(status = 400, content_type = "application/problem+json")]
    Malformed(Problem),
    /// No key, or an unknown one.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(Problem),
    /// The key lacks the scope.
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
    /// No such resource (or another tenant's).
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
    /// A field is wrong; `errors` names each one.
    #[response(status = 422, content_type = "application/problem+json")]
    Invalid(Problem),
    /// The database cannot be reached or written now (`Retry-After: 2`).
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(Problem),
}

/// The `409` of an operation that does not apply to the resource as it is: a push-only action
/// on a pull subscription (or the reverse), a subscription whose stored form does not decode,
/// a job that has finished.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum Conflict {
    /// Not applicable to the resource as it is; `detail` says why.
    #[response(status = 409, content_type = "application/problem+json")]
    Conflict(Problem),
}

/// The further errors of an operation with a JSON body.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum BodyErrors {
    /// The body is larger than `max_body_bytes`.
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(Problem),
    /// The body is not `application/json`.
    #[response(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Problem),
}

/// An event on the wire (docs/events.md): what producers post and subscribers receive.
#[derive(Serialize, ToSchema)]
#[schema(as = Event)]
#[allow(non_snake_case, dead_code)]
pub struct WireEvent {
    /// GUID, the idempotency key; generated when absent.
    #[schema(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        example = "0f8fad5b-d9cb-469f-a165-70867728950e",
        required = false
    )]
    Id: Option<String>,
    /// `yyyyMMddHHmmss`, UTC; the server's time when absent.
    #[schema(pattern = "^[0-9]{14}$", example = "20261123184603", required = false)]
    CreationDateUtc: Option<String>,
    /// 1 Agent, 2 IVR, 3 Email, 4 Chat (0: Switchboard's System events, never posted).
    #[schema(minimum = 0, maximum = 255, example = 1)]
    Category: u8,
    #[schema(minimum = 0, example = 3)]
    Code: u32,
    /// The event's parameters (see `GET /v1/catalog`).
    #[schema(value_type = Object)]
    AdditionalFields: Value,
}

/// The served document, built once: the paths from `api::router()`, and the webhooks section.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let (_, api) = super::api_router().split_for_parts();
        let mut doc = serde_json::to_value(&api).unwrap_or_default();
        name_operations(&mut doc);
        doc["webhooks"] = webhooks();
        serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
    })
}

/// Gives every operation an `operationId` from its method and path (`getEvents`,
/// `postSubscriptionsReplay`, `getAgentsOne`): the handlers' names repeat across resources.
fn name_operations(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut words: Vec<String> = segments
            .iter()
            .filter(|s| !s.starts_with('{') && **s != "v1")
            .flat_map(|s| s.split(['.', '_']))
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_uppercase().chain(c).collect())
                    .unwrap_or_default()
            })
            .collect();
        // A tenant's resources: the resource names them, not "Tenants".
        if words.len() > 1 && words[0] == "Tenants" {
            words.remove(0);
        }
        if segments.last().is_some_and(|s| s.starts_with('{')) {
            words.push("One".into());
        }
        let name = words.concat();
        if let Some(ops) = item.as_object_mut() {
            for (method, op) in ops.iter_mut() {
                if let Some(op) = op.as_object_mut() {
                    op.insert(
                        "operationId".into(),
                        Value::String(format!("{method}{name}")),
                    );
                }
            }
        }
    }
}

/// The delivery (DESIGN §5) as an OpenAPI 3.1 webhook.
fn webhooks() -> Value {
    json!({
        "event": {
            "post": {
                "summary": "An event delivered to a subscription",
                "description": "One POST per event and subscription, retried until a 2xx \
                    (docs/receiving.md). Verify the signature, deduplicate on webhook-id, \
                    answer fast.",
                "parameters": [
                    {"name": "webhook-id", "in": "header", "required": true,
                     "description": "The event's Id: the same on every attempt and replay.",
                     "schema": {"type": "string", "format": "uuid"}},
                    {"name": "webhook-timestamp", "in": "header", "required": true,
                     "description": "Unix seconds of this attempt.",
                     "schema": {"type": "string", "pattern": "^[0-9]+$"}},
                    {"name": "webhook-signature", "in": "header", "required": true,
                     "description": "Space-separated v1,<base64 HMAC-SHA256 of \
                        \"{webhook-id}.{webhook-timestamp}.{body}\">, one per live secret.",
                     "schema": {"type": "string"}},
                    {"name": "switchboard-sequence", "in": "header", "required": true,
                     "description": "The event's sequence in the tenant's log (0: System).",
                     "schema": {"type": "string", "pattern": "^[0-9]+$"}},
                    {"name": "switchboard-attempt", "in": "header", "required": true,
                     "description": "1 for the first attempt, then 2, 3, …",
                     "schema": {"type": "string", "pattern": "^[0-9]+$"}},
                    {"name": "switchboard-subscription", "in": "header", "required": true,
                     "description": "The subscription's id.",
                     "schema": {"type": "string"}},
                ],
                "requestBody": {
                    "required": true,
                    "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Event"}}},
                },
                "responses": {
                    "2XX": {"description": "Delivered."},
                    "410": {"description": "Gone: the subscription is disabled at once."},
                    "429": {"description": "Retry later; Retry-After is honoured."},
                    "503": {"description": "Retry later; Retry-After is honoured."},
                    "default": {"description": "A failure: the delivery is retried."},
                },
            }
        }
    })
}
