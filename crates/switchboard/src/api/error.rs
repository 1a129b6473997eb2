//! The one error type at the HTTP edge, answered as RFC 9457 `application/problem+json`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::Denied;
use crate::event::FieldError;
use crate::store::{CreateError, IngestError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Malformed(String),
    #[error("missing or unknown API key")]
    Unauthorized,
    /// A portal token whose link is gone: `401`, saying so.
    #[error("this portal link has expired, was revoked or never existed: ask for a new one")]
    PortalLinkGone,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{detail}")]
    Conflict {
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("content-type must be application/json")]
    UnsupportedMediaType,
    #[error("the request is invalid")]
    Invalid(Vec<FieldError>),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// What was asked for is older than the log still holds (retention purged it): 400 naming
    /// the parameter.
    #[error("{}: {}", .0.field, .0.message)]
    BeyondRetention(FieldError),
    #[error(
        "the tenant's ingest limit is reached; nothing was stored; retry after {retry_after_secs} s"
    )]
    TooManyRequests { retry_after_secs: u64 },
    /// A limit of DESIGN §23 (a configuration key) is reached: 429, naming it in `limit`.
    #[error("{detail}")]
    LimitReached { limit: &'static str, detail: String },
    #[error("{0}")]
    Unavailable(String),
    /// The database cannot be written now; the client should try again after a few seconds.
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(String),
    /// Logged in full; the client sees an opaque message.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The problem document.
#[derive(Serialize)]
struct Problem<'a> {
    r#type: String,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [FieldError],
    /// The configuration key of the limit reached (429 `limit-reached`).
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        ApiError::Invalid(vec![FieldError::new(None, field, message)])
    }

    /// 409: the subscription's stored form does not decode (DESIGN §15); only a `PATCH` with a
    /// whole body or a `DELETE` may be done to it.
    pub fn undecodable(id: &str) -> Self {
        ApiError::Conflict {
            detail: format!(
                "subscription {id} does not decode (written by another release?); repair it with a PATCH holding a whole subscription body, or DELETE it"
            ),
            errors: Vec::new(),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            Malformed(_) => (
                StatusCode::BAD_REQUEST,
                "malformed-request",
                "Malformed request",
            ),
            Unauthorized | PortalLinkGone => {
                (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized")
            }
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Conflict { .. } => (StatusCode::CONFLICT, "conflict", "Conflict"),
            TooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "Request too large",
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            Invalid(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Validation failed",
            ),
            BeyondRetention(_) => (
                StatusCode::BAD_REQUEST,
                "beyond-retention",
                "Beyond retention",
            ),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            LimitReached { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "limit-reached",
                "Limit reached",
            ),
            Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Unavailable",
            ),
            DatabaseUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "database-unavailable",
                "Database unavailable",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        let detail = match &self {
            ApiError::Internal(msg) => {
                tracing::error!(error = %msg, "request failed");
                "the server failed to handle the request; it has been logged".to_string()
            }
            ApiError::DatabaseUnavailable(msg) => {
                tracing::warn!(error = %msg, "request refused: database unavailable");
                "the database cannot be reached now; nothing was stored; try again".to_string()
            }
            ApiError::Invalid(errors) => match errors.as_slice() {
                [one] => format!("{}: {}", one.field, one.message),
                many => format!("{} problems; see errors", many.len()),
            },
            other => other.to_string(),
        };
        let errors = match &self {
            ApiError::Invalid(e) | ApiError::Conflict { errors: e, .. } => e.as_slice(),
            ApiError::BeyondRetention(e) => std::slice::from_ref(e),
            _ => &[],
        };
        let problem = Problem {
            r#type: format!("urn:switchboard:problem:{slug}"),
            title,
            status: status.as_u16(),
            detail,
            errors,
            limit: match &self {
                ApiError::LimitReached { limit, .. } => Some(limit),
                _ => None,
            },
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let ApiError::DatabaseUnavailable(_) = &self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        if let ApiError::TooManyRequests { retry_after_secs } = &self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::OtherTenant => ApiError::NotFound("tenant not found".into()),
            Denied::MissingScope(s) => ApiError::Forbidden(format!("this key lacks the {s} scope")),
            Denied::AdminOnly => ApiError::Forbidden("only the admin key may do this".into()),
            Denied::NotForPortal => {
                ApiError::Forbidden("a portal token may not do this; use an API key".into())
            }
            Denied::ReadOnlyPortal => ApiError::Forbidden("this portal link is read-only".into()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(msg) | StoreError::Contended(msg) => {
                ApiError::DatabaseUnavailable(msg)
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::TenantNotFound => ApiError::NotFound("tenant not found".into()),
            IngestError::Conflict(conflicts) => ApiError::Conflict {
                detail: format!(
                    "{} event(s) reuse an Id already stored with other content; nothing was stored",
                    conflicts.len()
                ),
                errors: conflicts
                    .into_iter()
                    .map(|(index, id)| {
                        let msg = format!("event {id} exists with different content");
                        FieldError::new(Some(index), "Id", msg)
                    })
                    .collect(),
            },
            IngestError::Store(e) => e.into(),
        }
    }
}

impl From<CreateError> for ApiError {
    fn from(e: CreateError) -> Self {
        match e {
            CreateError::Exists => ApiError::Conflict {
                detail: "a resource with this id already exists".into(),
                errors: vec![FieldError::new(None, "id", "already exists")],
            },
            CreateError::TenantNotFound => ApiError::NotFound("tenant not found".into()),
            CreateError::LimitReached { limit, max } => ApiError::LimitReached {
                limit,
                detail: format!("the tenant has {max} already, the most {limit} allows"),
            },
            CreateError::Store(e) => e.into(),
        }
    }
}
