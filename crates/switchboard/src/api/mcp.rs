//! MCP (DESIGN §22): `POST /mcp`, the Model Context Protocol's Streamable HTTP transport, for AI
//! agents that read a contact center's live state. The transport and the protocol are the
//! official Rust SDK's (`rmcp`), stateless (any node answers any request) with JSON answers.
//! Each tool is one read-only REST route, called in-process with the caller's own key, so a
//! tool answers exactly what the route answers to that key, under the same limits; the
//! subscriptions' secrets, headers and credentials are taken out.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, JsonObject,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{ApiError, AppState, Caller};
use crate::auth::{Principal, Scope};

/// What is escaped in a URL's path segment or parameter: all but RFC 3986's unreserved.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A tool's argument: its name (a REST query parameter's, or a path segment's) and type.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    /// A whole number (sent as text to the route, which checks its range).
    Integer,
    /// A string or a whole number: cursors and sequences.
    TextOrInteger,
    Boolean,
}

struct Arg {
    name: &'static str,
    kind: Kind,
    required: bool,
    description: &'static str,
}

const fn arg(name: &'static str, kind: Kind, description: &'static str) -> Arg {
    Arg {
        name,
        kind,
        required: false,
        description,
    }
}

const fn required(name: &'static str, kind: Kind, description: &'static str) -> Arg {
    Arg {
        name,
        kind,
        required: true,
        description,
    }
}

/// What a tool's answer is made of.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The route's answer as it is.
    Whole,
    /// A page of subscriptions without their secrets, headers and credentials.
    Subscriptions,
    /// `{id, lag, health}` of one subscription.
    Lag,
}

struct ToolDef {
    name: &'static str,
    description: &'static str,
    /// The route, `{tenant}` and other `{name}`s filled from the arguments.
    path: &'static str,
    args: &'static [Arg],
    /// Query parameters the tool always sends.
    fixed: &'static [(&'static str, &'static str)],
    shape: Shape,
}

const LIMIT: Arg = arg(
    "limit",
    Kind::Integer,
    "Page size (the route's bounds apply).",
);
const AFTER: Arg = arg(
    "after",
    Kind::TextOrInteger,
    "The cursor to start after: next_after of the previous page.",
);
const SINCE: Arg = arg(
    "since",
    Kind::TextOrInteger,
    "Start of the window, yyyyMMddHHmmss (UTC).",
);
const UNTIL: Arg = arg(
    "until",
    Kind::TextOrInteger,
    "End of the window, yyyyMMddHHmmss (UTC).",
);
const USERNAME: Arg = required("username", Kind::Text, "The agent's username.");
const SINCE_REQUIRED: Arg = Arg {
    required: true,
    ..SINCE
};

const TOOLS: &[ToolDef] = &[
    ToolDef {
        name: "list_agents",
        description: "The tenant's agents and their live state (signed in, activity, \
            availability, work item), by username, a page at a time; as_of_sequence is the log \
            position the states reflect. GET /v1/tenants/{tenant}/agents.",
        path: "/v1/tenants/{tenant}/agents",
        args: &[
            arg(
                "signed_in",
                Kind::Boolean,
                "Only agents signed in (true) or signed out (false).",
            ),
            arg(
                "availability_code",
                Kind::TextOrInteger,
                "Only agents with this availability code.",
            ),
            LIMIT,
            AFTER,
        ],
        fixed: &[],
        shape: Shape::Whole,
    },
    ToolDef {
        name: "get_agent",
        description: "One agent's live state, or as it was right after a log sequence \
            (as_of). GET /v1/tenants/{tenant}/agents/{username}.",
        path: "/v1/tenants/{tenant}/agents/{username}",
        args: &[
            USERNAME,
            arg(
                "as_of",
                Kind::TextOrInteger,
                "A log sequence: the agent as it was right after it.",
            ),
        ],
        fixed: &[],
        shape: Shape::Whole,
    },
    ToolDef {
        name: "agent_timeline",
        description: "An agent's state intervals in a window (since is required). \
            GET /v1/tenants/{tenant}/agents/{username}/timeline.",
        path: "/v1/tenants/{tenant}/agents/{username}/timeline",
        args: &[USERNAME, SINCE_REQUIRED, UNTIL, LIMIT, AFTER],
        fixed: &[],
        shape: Shape::Whole,
    },
    ToolDef {
        name: "agent_counts",
        description: "Live counts of the signed-in agents by state, for the whole tenant or \
            by a group field of the catalog (by=Team). GET /v1/tenants/{tenant}/agents/counts.",
        path: "/v1/tenants/{tenant}/agents/counts",
        args: &[arg(
            "by",
            Kind::Text,
            "A group field of the catalog, e.g. Team.",
        )],
        fixed: &[],
        shape: Shape::Whole,
    },
    ToolDef {
        name: "list_events",
        description: "The event log in sequence order, filtered by category, code, username \
            and a window on CreationDateUtc. GET /v1/tenants/{tenant}/events.",
        path: "/v1/tenants/{tenant}/events",
        args: &[
            arg(
                "category",
                Kind::Integer,
                "1 Agent, 2 IVR, 3 Email, 4 Chat, 5 derived, 6 System.",
            ),
            arg("code", Kind::Integer, "The event code within its category."),
            arg("username", Kind::Text, "Only this agent's events."),
            SINCE,
            UNTIL,
            LIMIT,
            AFTER,
        ],
        fixed: &[],
        shape: Shape::Whole,
    },
    ToolDef {
        name: "get_event",
        description: "One event by its Id. GET /v1/tenants/{tenant}/events/{id}.",
        path: "/v1/tenants/{tenant}/events/{id}",
        args: &[required("id", Kind::Text, "The event's Id (a GUID).")],
        fixed: &[],
        shape: Shape::Whole,
    },
    ToolDef {
        name: "list_subscriptions",
        description: "The tenant's subscriptions with their lag and health, without secrets, \
            headers or credentials. GET /v1/tenants/{tenant}/subscriptions.",
        path: "/v1/tenants/{tenant}/subscriptions",
        args: &[LIMIT, AFTER],
        fixed: &[],
        shape: Shape::Subscriptions,
    },
    ToolDef {
        name: "subscription_lag",
        description: "How far behind one subscription is (its unfinished deliveries and how \
            long the oldest has waited) and its circuit breaker's health. \
            From GET /v1/tenants/{tenant}/subscriptions/{id}.",
        path: "/v1/tenants/{tenant}/subscriptions/{id}",
        args: &[required("id", Kind::Text, "The subscription's id.")],
        fixed: &[],
        shape: Shape::Lag,
    },
    ToolDef {
        name: "failed_deliveries",
        description: "One subscription's failed deliveries, oldest first, with the last status \
            code and error. GET /v1/tenants/{tenant}/subscriptions/{id}/deliveries?status=failed.",
        path: "/v1/tenants/{tenant}/subscriptions/{id}/deliveries",
        args: &[
            required("id", Kind::Text, "The subscription's id."),
            LIMIT,
            AFTER,
        ],
        fixed: &[("status", "failed")],
        shape: Shape::Whole,
    },
    ToolDef {
        name: "catalog",
        description: "The event catalog: every category and code this server accepts, the \
            fields of each and an example. GET /v1/catalog.",
        path: "/v1/catalog",
        args: &[],
        fixed: &[],
        shape: Shape::Whole,
    },
];

/// `POST /mcp`, for [`super::app`]: the SDK's transport behind [`authenticate`]; `routes` is
/// the API the tools call.
pub fn service(state: &AppState, routes: Router) -> Router<AppState> {
    let tools = Tools {
        routes,
        listed: Arc::new(TOOLS.iter().map(tool).collect()),
    };
    let config = StreamableHttpServerConfig::default()
        // Stateless: no session to keep, so any node of a cluster answers any request.
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        // A bearer key is required, so a rebinding attack has nothing to borrow; the host is
        // whatever name the operator serves under.
        .disable_allowed_hosts()
        .with_max_request_body_bytes(state.max_body_bytes);
    let mcp = StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    Router::new()
        .route_service("/mcp", mcp)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
}

/// Only keys that may read (or the admin key) reach the transport: 401 without one, 403 for a
/// key without `read` or a portal token.
async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let caller = match <Caller as axum::extract::FromRequestParts<AppState>>::from_request_parts(
        &mut parts, &state,
    )
    .await
    {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    match &caller.0 {
        Principal::Admin => {}
        Principal::Tenant { tenant_id, .. } => {
            if let Err(denied) = caller.0.may(tenant_id, Scope::Read) {
                return ApiError::from(denied).into_response();
            }
        }
        Principal::Portal { .. } => {
            return ApiError::from(crate::auth::Denied::NotForPortal).into_response();
        }
    }
    if parts.method != Method::POST {
        // No server-sent stream of its own, no sessions to end: POST only.
        return ApiError::MethodNotAllowed.into_response();
    }
    parts.extensions.insert(caller.0);
    next.run(Request::from_parts(parts, body)).await
}

fn tool(def: &ToolDef) -> Tool {
    let mut properties = serde_json::Map::new();
    let mut needed = Vec::new();
    if def.path.contains("{tenant}") {
        let tenant = json!({"type": "string", "description":
            "The tenant's id: required with the admin key; a tenant key's own tenant by default."});
        properties.insert("tenant".into(), tenant);
    }
    for a in def.args {
        let kind = match a.kind {
            Kind::Text => json!("string"),
            Kind::Integer => json!("integer"),
            Kind::TextOrInteger => json!(["string", "integer"]),
            Kind::Boolean => json!("boolean"),
        };
        properties.insert(
            a.name.into(),
            json!({"type": kind, "description": a.description}),
        );
        if a.required {
            needed.push(a.name);
        }
    }
    let schema = json!({
        "type": "object",
        "properties": properties,
        "required": needed,
        "additionalProperties": false,
    });
    let Value::Object(schema) = schema else {
        unreachable!("an object")
    };
    let mut annotations = ToolAnnotations::new();
    annotations.read_only_hint = Some(true);
    annotations.destructive_hint = Some(false);
    annotations.idempotent_hint = Some(true);
    annotations.open_world_hint = Some(false);
    Tool::new(def.name, def.description, Arc::new(schema)).with_annotations(annotations)
}

/// The MCP server: the tools, and the API they call.
#[derive(Clone)]
struct Tools {
    routes: Router,
    listed: Arc<Vec<Tool>>,
}

impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "switchboard",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Read-only tools over a contact center's live state as Switchboard holds it: \
                 agents and their states, counts, the event log, subscriptions and their \
                 deliveries, and the event catalog. Each tool answers what its REST route does.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.listed.to_vec()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let Some(def) = TOOLS.iter().find(|t| t.name == request.name) else {
            let names: Vec<&str> = TOOLS.iter().map(|t| t.name).collect();
            return Err(ErrorData::invalid_params(
                format!(
                    "unknown tool {:?}; the tools are {}",
                    request.name,
                    names.join(", ")
                ),
                None,
            ));
        };
        let parts = context.extensions.get::<axum::http::request::Parts>();
        let principal = parts.and_then(|p| p.extensions.get::<Principal>());
        let authorization = parts.and_then(|p| p.headers.get(header::AUTHORIZATION));
        let (Some(principal), Some(authorization)) = (principal, authorization) else {
            return Err(ErrorData::internal_error(
                "the request's credentials did not reach the tool",
                None,
            ));
        };
        let args = request.arguments.unwrap_or_default();
        let uri = match route(def, &args, principal) {
            Ok(uri) => uri,
            Err(e) => return Ok(problem(e).await.into()),
        };
        let req = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(header::AUTHORIZATION, authorization.clone())
            .body(Body::empty())
            .map_err(|e| ErrorData::internal_error(format!("building the request: {e}"), None))?;
        let response = match self.routes.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let ok = response.status().is_success();
        // Every tool's route answers JSON; anything else (a stream) is not read.
        let json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.starts_with("application/json") || v.starts_with("application/problem+json")
            });
        if !json {
            return Err(ErrorData::internal_error(
                "the route did not answer JSON",
                None,
            ));
        }
        let bytes = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| ErrorData::internal_error(format!("reading the answer: {e}"), None))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ErrorData::internal_error(format!("the route's answer is not JSON: {e}"), None)
        })?;
        if !ok {
            return Ok(CallToolResult::structured_error(value).into());
        }
        Ok(CallToolResult::structured(shape(def.shape, value)).into())
    }
}

/// The route to call for `def` with `args`: its path filled, the rest as query parameters.
fn route(def: &ToolDef, args: &JsonObject, principal: &Principal) -> Result<String, ApiError> {
    let mut values: Vec<(&str, String)> = Vec::new();
    for (name, value) in args {
        if name == "tenant" {
            continue;
        }
        let Some(a) = def.args.iter().find(|a| a.name == name) else {
            let known: Vec<&str> = def.args.iter().map(|a| a.name).collect();
            return Err(ApiError::invalid(
                name,
                if known.is_empty() {
                    format!("unknown argument: {} takes none (but tenant)", def.name)
                } else {
                    format!(
                        "unknown argument; {} takes tenant, {}",
                        def.name,
                        known.join(", ")
                    )
                },
            ));
        };
        let text = match (a.kind, value) {
            (Kind::Text | Kind::TextOrInteger, Value::String(s)) => s.clone(),
            (Kind::Integer | Kind::TextOrInteger, Value::Number(n)) if n.is_i64() || n.is_u64() => {
                n.to_string()
            }
            (Kind::Boolean, Value::Bool(b)) => b.to_string(),
            _ => {
                let want = match a.kind {
                    Kind::Text => "a string",
                    Kind::Integer => "a whole number",
                    Kind::TextOrInteger => "a string or a whole number",
                    Kind::Boolean => "true or false",
                };
                return Err(ApiError::invalid(
                    name,
                    format!("must be {want}, got {value}"),
                ));
            }
        };
        values.push((a.name, text));
    }
    if let Some(missing) = def
        .args
        .iter()
        .find(|a| a.required && !values.iter().any(|(n, _)| *n == a.name))
    {
        return Err(ApiError::invalid(missing.name, "is required"));
    }
    let tenant = match (args.get("tenant"), principal.tenant()) {
        // A route of no tenant (the catalog): any tenant named is only checked for its type.
        (None, _) if !def.path.contains("{tenant}") => String::new(),
        (Some(Value::String(t)), _) => t.clone(),
        (Some(other), _) => {
            return Err(ApiError::invalid(
                "tenant",
                format!("must be a string, got {other}"),
            ));
        }
        (None, Some(own)) => own.to_string(),
        (None, None) => {
            return Err(ApiError::invalid(
                "tenant",
                "is required with the admin key: the tenant to read",
            ));
        }
    };
    let enc = |s: &str| utf8_percent_encode(s, COMPONENT).to_string();
    let mut path = def.path.replace("{tenant}", &enc(&tenant));
    let mut query = Vec::new();
    for (name, value) in values {
        let hole = format!("{{{name}}}");
        if path.contains(&hole) {
            // A value that is a route's own word there would be that route (`…/agents/stream`
            // is the agents stream, not an agent named "stream").
            let before = &path[..path.find(&hole).unwrap_or(0)];
            if value.is_empty()
                || SIBLINGS
                    .iter()
                    .any(|(parent, word)| before.ends_with(parent) && value == *word)
            {
                return Err(ApiError::invalid(
                    name,
                    format!("{value:?} cannot be named through this tool"),
                ));
            }
            path = path.replace(&hole, &enc(&value));
        } else {
            query.push(format!("{name}={}", enc(&value)));
        }
    }
    for (name, value) in def.fixed {
        query.push(format!("{name}={value}"));
    }
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    Ok(path)
}

/// The fixed words beside a `{name}` segment in the API's routes: a value equal to one of them
/// would reach that route instead.
const SIBLINGS: &[(&str, &str)] = &[
    ("/agents/", "stream"),
    ("/agents/", "counts"),
    ("/agents/", "intervals"),
    ("/events/", "stream"),
];

/// The most a tool reads of its route's answer (a page of events at the largest `limit`).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// A refused call as the REST API answers it: its problem document.
async fn problem(e: ApiError) -> CallToolResult {
    let body = e.into_response().into_body().collect().await;
    let value = body
        .ok()
        .and_then(|b| serde_json::from_slice(&b.to_bytes()).ok())
        .unwrap_or(Value::Null);
    CallToolResult::structured_error(value)
}

/// What a tool answers of its route's answer.
fn shape(shape: Shape, mut value: Value) -> Value {
    match shape {
        Shape::Whole => value,
        Shape::Subscriptions => {
            if let Some(Value::Array(items)) = value.get_mut("data") {
                for item in items {
                    if let Value::Object(sub) = item {
                        for secret in ["secret", "headers", "auth", "tls"] {
                            sub.remove(secret);
                        }
                    }
                }
            }
            value
        }
        Shape::Lag => json!({
            "id": value.get("id").cloned().unwrap_or(Value::Null),
            "lag": value.get("lag").cloned().unwrap_or(Value::Null),
            "health": value.get("health").cloned().unwrap_or(Value::Null),
        }),
    }
}
