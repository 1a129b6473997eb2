//! Durable state: the only module with SQL. Callers see typed operations; the backend behind
//! them is the embedded SQLite database (`store/sqlite.rs`).
//!
//! Ingest goes through one writer task per database that group-commits whatever requests have
//! queued (see `sqlite::writer`); reads use a separate pool.

mod sqlite;

use serde::Serialize;
use uuid::Uuid;

use crate::auth::Scope;
use crate::event::{NewEvent, Timestamp};

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
