//! Durable state: the only module with SQL. Callers see typed operations; the backend behind
//! them is the embedded SQLite database (`store/sqlite.rs`).
//!
//! Ingest goes through one writer task per database that group-commits whatever requests have
//! queued (see `sqlite::writer`); reads use a separate pool.

mod sqlite;

use bytes::Bytes;
use serde::Serialize;
use uuid::Uuid;

use crate::auth::Scope;
use crate::delivery::signing::Secret;
use crate::event::{NewEvent, Timestamp};
use crate::subscription::SubscriptionSpec;

pub use sqlite::Store;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The transaction carrying this request failed; nothing of it was stored.
    #[error("group commit failed: {0}")]
    GroupCommit(String),
    #[error("the store is shut down")]
    Closed,
}

/// Why an ingest request was refused; nothing of it was stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("tenant not found")]
    TenantNotFound,
    /// Events whose `Id` is already stored (or earlier in the request) with other content:
    /// `(index in the request, id)`.
    #[error("conflicting event ids")]
    Conflict(Vec<(usize, Uuid)>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The outcome for one posted event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Accepted {
    pub id: Uuid,
    pub sequence: i64,
    pub duplicate: bool,
}

/// One entry of a tenant's event log.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub sequence: i64,
    /// Unix milliseconds.
    pub received_at: i64,
    /// The canonical JSON of the event.
    pub body: String,
}

/// A page request over the event log; every filter is optional.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    pub after: i64,
    pub limit: u32,
    pub category: Option<u8>,
    pub code: Option<u32>,
    pub username: Option<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

#[derive(Clone, Debug)]
pub struct KeyRecord {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// Creating something whose id is taken.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("already exists")]
    Exists,
    #[error("tenant not found")]
    TenantNotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for CreateError {
    fn from(e: sqlx::Error) -> Self {
        CreateError::Store(e.into())
    }
}

impl From<sqlx::Error> for IngestError {
    fn from(e: sqlx::Error) -> Self {
        IngestError::Store(e.into())
    }
}

/// A unit of work for the writer: one ingest request.
pub(crate) struct IngestJob {
    pub tenant: String,
    pub events: Vec<NewEvent>,
}

pub(crate) fn now_millis() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn scopes_to_text(scopes: &[Scope]) -> String {
    let names: Vec<_> = scopes.iter().map(|s| s.as_str()).collect();
    names.join(",")
}

fn scopes_from_text(text: &str) -> Vec<Scope> {
    text.split(',').filter_map(Scope::parse).collect()
}

/// A stored subscription. `spec.secret` is always set; `spec.enabled` mirrors the column.
#[derive(Clone, Debug)]
pub struct SubscriptionRecord {
    pub id: String,
    pub tenant_id: String,
    pub spec: SubscriptionSpec,
    pub disabled_reason: Option<String>,
    pub old_secret: Option<String>,
    /// Unix ms.
    pub old_secret_expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl SubscriptionRecord {
    /// The secrets that sign at `now_ms`: the current one, and the previous one during its grace.
    pub fn live_secrets(&self, now_ms: i64) -> Vec<Secret> {
        let current = self
            .spec
            .secret
            .as_deref()
            .and_then(|s| Secret::parse(s).ok());
        let old = match (&self.old_secret, self.old_secret_expires_at) {
            (Some(s), Some(until)) if until > now_ms => Secret::parse(s).ok(),
            _ => None,
        };
        current.into_iter().chain(old).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Succeeded, Self::Failed]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// A delivery as the API shows it; times in unix ms.
#[derive(Clone, Debug)]
pub struct DeliveryRecord {
    pub id: i64,
    pub event_id: String,
    pub subscription_id: String,
    pub sequence: i64,
    pub status: DeliveryStatus,
    pub attempt_count: i64,
    pub next_attempt_at: Option<i64>,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One HTTP attempt of a delivery, as logged.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    pub number: i64,
    pub started_at: i64,
    pub duration_ms: i64,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub response_body: Option<String>,
}

/// A delivery claimed by the dispatcher, with the bytes to send.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub delivery_id: i64,
    pub subscription_id: String,
    pub event_id: String,
    pub sequence: i64,
    /// The number this attempt will have, counting every attempt of the delivery.
    pub attempt: u32,
    /// The number this attempt will have in the current round (since the last requeue).
    pub round_attempt: u32,
    /// The stored canonical event, sent as is.
    pub body: Bytes,
}

/// What becomes of a delivery after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextState {
    Succeeded,
    /// Pending again, due at this unix ms.
    RetryAt(i64),
    Failed,
}

/// A finished attempt, to be written back with its delivery's new state in one transaction.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub delivery_id: i64,
    pub subscription_id: String,
    pub attempt: u32,
    pub round_attempt: u32,
    pub started_at: i64,
    pub duration_ms: i64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub response_body: Option<String>,
    pub next: NextState,
    /// Disable the subscription, with this reason (410 Gone).
    pub disable: Option<String>,
}
