//! Durable state: the only module with SQL. Callers see typed operations on [`Store`]; behind
//! them is the embedded SQLite database (`store/sqlite.rs`) or PostgreSQL (`store/postgres.rs`).
//! Both include `store/backend.rs`, the SQL they share, so they cannot drift apart.
//!
//! Ingest, claims and outcomes go through one writer task per node that group-commits whatever
//! has queued (see `backend.rs`, `writer`); reads use a separate pool.

/// The statement that reads, and on PostgreSQL locks, a tenant's last sequence.
macro_rules! tenant_sql {
    () => {
        "SELECT last_sequence FROM tenants WHERE id = $1"
    };
}

/// The claim: lease up to `$4` due deliveries of subscription `$2` until `$1`, at time `$3`.
/// `$lock` is PostgreSQL's row locking, so concurrent nodes skip each other's rows. For
/// `per_agent` subscriptions only a delivery with no earlier pending delivery of the same agent
/// is due, so one agent's events go out one at a time in sequence order.
macro_rules! claim_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE deliveries SET lease_until = $1 WHERE id IN ( \
               SELECT d.id FROM deliveries d \
               WHERE d.subscription_id = $2 AND d.status = 'pending' AND d.next_attempt_at <= $3 \
                 AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.id = $2 AND s.enabled = TRUE) \
                 AND (d.lease_until IS NULL OR d.lease_until < $3) \
                 AND (d.agent IS NULL OR NOT EXISTS ( \
                   SELECT 1 FROM deliveries p WHERE p.subscription_id = d.subscription_id \
                     AND p.agent = d.agent AND p.status = 'pending' AND p.sequence < d.sequence)) \
               ORDER BY d.next_attempt_at, d.sequence LIMIT $4",
            $lock,
            ") RETURNING id, tenant_id, event_id, sequence, attempt_count, round_attempts, created_at"
        )
    };
}

mod group;
mod postgres;
mod sqlite;

/// The statements that differ between backends.
pub(crate) struct Dialect {
    /// Starts a transaction that will write.
    pub begin_write: &'static str,
    /// [`tenant_sql!`], locking on PostgreSQL.
    pub lock_tenant: &'static str,
    /// [`claim_sql!`] with the backend's row locking.
    pub claim: &'static str,
    /// Run in a transaction that made deliveries due, to wake other nodes.
    pub notify: Option<&'static str>,
    /// Run in a transaction whose loss a crash may cause (claims, outcomes), so its commit does
    /// not wait for the disk.
    pub relax_in_transaction: Option<&'static str>,
    /// Tells the other nodes that a [`Change`] (`$1`, its name) happened.
    pub announce: Option<&'static str>,
    /// The tables whose rows a tenant's deletion takes (by `tenant_id`), besides `attempts`.
    pub tenant_tables: &'static [&'static str],
}

/// What nodes keep in memory and must forget when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Subscriptions,
    Keys,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Subscriptions => "subs",
            Change::Keys => "keys",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Change::Subscriptions, Change::Keys]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// How long a key found by authentication is trusted without reading it again. Deleting a key
/// (or its tenant) forgets it at once on this node and, on PostgreSQL, on the others as the
/// notification arrives; this bounds a notification lost with a dropped connection.
const KEY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// Most keys remembered; past this the memory starts over (there are rarely so many).
const KEY_CACHE_MAX: usize = 10_000;

/// API keys by hash, as authentication found them: a request with a known key reads nothing.
/// Only keys that exist are remembered, so unknown keys cannot fill it.
#[derive(Default)]
pub(crate) struct KeyCache {
    version: std::sync::atomic::AtomicU64,
    keys: std::sync::Mutex<std::collections::HashMap<String, (KeyRecord, u64, std::time::Instant)>>,
}

impl KeyCache {
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn get(&self, hash: &str) -> Option<KeyRecord> {
        let keys = self.keys.lock().ok()?;
        let (key, version, at) = keys.get(hash)?;
        (*version == self.version() && at.elapsed() < KEY_CACHE_TTL).then(|| key.clone())
    }

    /// Remembers `key`, found by a read that started at `version`.
    pub fn put(&self, hash: &str, key: KeyRecord, version: u64) {
        if let Ok(mut keys) = self.keys.lock() {
            if keys.len() >= KEY_CACHE_MAX {
                keys.clear();
            }
            keys.insert(hash.to_string(), (key, version, std::time::Instant::now()));
        }
    }

    /// Forgets every key (one was deleted).
    pub fn invalidate(&self) {
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut keys) = self.keys.lock() {
            keys.clear();
        }
    }
}

use bytes::Bytes;
use serde::Serialize;
use uuid::Uuid;

use crate::auth::Scope;
use crate::delivery::signing::Secret;
use crate::event::{NewEvent, Timestamp};
use crate::subscription::SubscriptionSpec;

/// The compiled-in migrations of a backend as `(version, name, SQL)`, for tools and tests.
pub fn migrations(postgres: bool) -> &'static [(i64, &'static str, &'static str)] {
    if postgres {
        postgres::MIGRATIONS
    } else {
        sqlite::MIGRATIONS
    }
}

/// The store handle; cheap to clone.
#[derive(Clone)]
pub struct Store(Backend);

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::Backend),
    Postgres(postgres::Backend),
}

impl Store {
    /// Opens the database `url` names (`postgres://…`), else the SQLite file at `sqlite_path`,
    /// and migrates it.
    pub async fn open(url: &str, sqlite_path: &std::path::Path) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store(Backend::Postgres(
                postgres::Backend::open(url).await?,
            )))
        } else {
            Ok(Store(Backend::Sqlite(
                sqlite::Backend::open(sqlite_path).await?,
            )))
        }
    }

    /// The dispatcher waits on this; it is signalled when deliveries may have become due.
    pub fn wake_handle(&self) -> std::sync::Arc<tokio::sync::Notify> {
        match &self.0 {
            Backend::Sqlite(b) => b.wake_handle(),
            Backend::Postgres(b) => b.wake_handle(),
        }
    }

    /// Commits what is queued and closes the database.
    pub async fn close(&self) {
        match &self.0 {
            Backend::Sqlite(b) => b.close().await,
            Backend::Postgres(b) => b.close().await,
        }
    }

    /// Changes whenever a subscription is created, changed or deleted (on PostgreSQL, on any
    /// node).
    pub fn subscriptions_version(&self) -> u64 {
        match &self.0 {
            Backend::Sqlite(b) => b.subscriptions_version(),
            Backend::Postgres(b) => b.subscriptions_version(),
        }
    }
}

/// Forwards each listed method to the backend.
macro_rules! forward {
    ($($(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        impl Store {
            $(
                $(#[$doc])*
                pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match &self.0 {
                        Backend::Sqlite(b) => b.$name($($arg),*).await,
                        Backend::Postgres(b) => b.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

forward! {
    /// Commits the events of one request, all or nothing; returns once they are durable.
    fn ingest(&self, tenant: &str, events: Vec<NewEvent>) -> Result<Vec<Accepted>, IngestError>;
    fn ping(&self) -> Result<(), StoreError>;
    fn list_events(&self, tenant: &str, q: &EventQuery) -> Result<Vec<StoredEvent>, StoreError>;
    fn get_event(&self, tenant: &str, id: Uuid) -> Result<Option<StoredEvent>, StoreError>;
    fn create_tenant(&self, id: &str, name: &str) -> Result<Tenant, CreateError>;
    fn get_tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError>;
    fn list_tenants(&self, after: &str, limit: u32) -> Result<Vec<Tenant>, StoreError>;
    /// Deletes a tenant with everything it owns; false if there was none.
    fn delete_tenant(&self, id: &str) -> Result<bool, StoreError>;
    /// Stores a key under its hash.
    fn create_key(&self, tenant: &str, name: &str, scopes: &[Scope], id: &str, key_hash: &str) -> Result<KeyRecord, CreateError>;
    fn list_keys(&self, tenant: &str, after: &str, limit: u32) -> Result<Vec<KeyRecord>, StoreError>;
    fn delete_key(&self, tenant: &str, id: &str) -> Result<bool, StoreError>;
    /// The key with this hash, if any.
    fn find_key(&self, key_hash: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// Leases up to `n` due deliveries of each listed subscription until `lease_until` (ms).
    fn claim(&self, subs: Vec<(String, u32)>, lease_until: i64) -> Result<Vec<Claimed>, StoreError>;
    /// Writes back finished attempts with their deliveries' new state.
    fn record(&self, outcomes: Vec<Outcome>) -> Result<(), StoreError>;
    /// Gives back the leases of claimed deliveries that were not attempted.
    fn release_leases(&self, ids: Vec<i64>) -> Result<(), StoreError>;
    /// Figures for `/metrics`.
    fn stats(&self) -> Result<Stats, StoreError>;
    /// When the earliest unleased pending delivery of an enabled subscription is due (unix ms).
    fn next_due(&self) -> Result<Option<i64>, StoreError>;
    fn create_subscription(&self, rec: &SubscriptionRecord) -> Result<(), CreateError>;
    fn get_subscription(&self, tenant: &str, id: &str) -> Result<Option<SubscriptionRecord>, StoreError>;
    fn list_subscriptions(&self, tenant: &str, after: &str, limit: u32) -> Result<Vec<SubscriptionRecord>, StoreError>;
    /// Every enabled subscription of every tenant, for the dispatcher.
    fn enabled_subscriptions(&self) -> Result<Vec<SubscriptionRecord>, StoreError>;
    /// Replaces a subscription's body, state and secrets.
    fn update_subscription(&self, rec: &SubscriptionRecord) -> Result<bool, StoreError>;
    /// Deletes a subscription with its deliveries and their attempts.
    fn delete_subscription(&self, tenant: &str, id: &str) -> Result<bool, StoreError>;
    fn list_deliveries(&self, tenant: &str, subscription: &str, status: Option<DeliveryStatus>, after: i64, limit: u32) -> Result<Vec<DeliveryRecord>, StoreError>;
    fn deliveries_of_event(&self, tenant: &str, event_id: Uuid) -> Result<Vec<DeliveryRecord>, StoreError>;
    /// A delivery with its attempts, oldest first.
    fn get_delivery(&self, tenant: &str, id: i64) -> Result<Option<(DeliveryRecord, Vec<AttemptRecord>)>, StoreError>;
    /// Makes a delivery due now; a finished one gets the round given.
    fn retry_delivery(&self, tenant: &str, id: i64, one_attempt_round: i64) -> Result<bool, StoreError>;
    /// Requeues a window of events for a subscription; see the backend for the rules.
    fn replay(&self, sub: &SubscriptionRecord, since: Timestamp, until: Option<Timestamp>, only_failed: bool) -> Result<u64, StoreError>;
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// From the SQLite writer's connection.
    #[error("database error: {0}")]
    Sqlite(String),
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

/// Figures for `/metrics`, counted in the database (so every node shows the same).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Deliveries waiting for a successful attempt (or their last).
    pub pending: i64,
    pub subscriptions_enabled: i64,
    pub subscriptions: i64,
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
    /// When the event was accepted (the delivery created), unix ms.
    pub created_at: i64,
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
