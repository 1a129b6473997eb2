//! The embedded SQLite backend.
//!
//! SQLite has one writer at a time, so ingest has exactly one: a task that owns a connection,
//! takes every request queued on its channel, and commits them in one `BEGIN IMMEDIATE`
//! transaction — one fsync (WAL, `synchronous=FULL`) for many requests. A request's reply is
//! sent only after `COMMIT` returns, which is what makes a 202 durable. Reads and the rare
//! administrative writes use a separate pool; those writes wait on SQLite's lock (busy timeout).

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_core::future::BoxFuture;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Executor, QueryBuilder, Row};
use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;

use super::group::{self, Command};
use super::{
    Accepted, AttemptRecord, Claimed, CreateError, DeliveryRecord, DeliveryStatus, Dialect,
    EventQuery, IngestError, IngestJob, KeyRecord, Outcome, Stats, StoreError, StoredEvent,
    SubscriptionRecord, Tenant, now_millis, scopes_from_text, scopes_to_text,
};
use crate::auth::Scope;
use crate::event::{Event, NewEvent, Timestamp};
use crate::subscription::SubscriptionSpec;

type Db = sqlx::Sqlite;
type DbRow = SqliteRow;
type DbPool = SqlitePool;

const DIALECT: Dialect = Dialect {
    // IMMEDIATE takes the write lock up front: waiting on it beats failing a read-then-write.
    begin_write: "BEGIN IMMEDIATE",
    lock_tenant: concat!(tenant_sql!(), ""),
    claim: claim_sql!(""),
    notify: None,
    // SQLite's writer sets `synchronous = NORMAL` around such transactions instead.
    relax_in_transaction: None,
    // One process owns an SQLite database: nobody else to tell.
    announce: None,
    tenant_tables: &[
        "api_keys",
        "events",
        "event_ids",
        "subscriptions",
        "deliveries",
    ],
};

/// The `Id`s of recent events, not yet copied into `event_ids` (see `sqlite/ids.rs`).
type Ids = Arc<ids::RecentIds>;

impl Backend {
    /// The sequence `tenant`'s event `id` is stored under. Memory is asked first: an `Id` leaves
    /// it only once `event_ids` has it.
    async fn sequence_of(&self, tenant: &str, id: Uuid) -> Result<Option<i64>, StoreError> {
        let hint = self.ids.hint(tenant, &id).unwrap_or(-1);
        let found = sqlx::query_scalar(
            "SELECT sequence FROM events WHERE tenant_id = $1 AND sequence = $2 AND id = $3 \
             UNION ALL SELECT sequence FROM event_ids WHERE tenant_id = $1 AND id = $4 LIMIT 1",
        )
        .bind(tenant)
        .bind(hint)
        .bind(id.to_string())
        .bind(id.as_bytes().as_slice())
        .fetch_optional(&self.read)
        .await?;
        Ok(found)
    }
}

/// The migrations, compiled in; versions only ever grow.
pub(super) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("migrations/sqlite/0001_init.sql")),
    (
        2,
        "delivery",
        include_str!("migrations/sqlite/0002_delivery.sql"),
    ),
    (
        3,
        "due_order",
        include_str!("migrations/sqlite/0003_due_order.sql"),
    ),
    (
        4,
        "deliveries_by_sequence",
        include_str!("migrations/sqlite/0004_deliveries_by_sequence.sql"),
    ),
    (
        5,
        "event_ids",
        include_str!("migrations/sqlite/0005_event_ids.sql"),
    ),
];

impl Backend {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, ids::MergeSizes::default()).await
    }

    /// [`Backend::open`], with the writer merging event ids into their index in batches of the
    /// given sizes.
    pub(crate) async fn open_with(path: &Path, merge: ids::MergeSizes) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed transaction survives power loss, not only a process crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .pragma("cache_size", "-32000");

        let mut conn = SqliteConnection::connect_with(&options).await?;
        Migrator::new(Embedded).await?.run_direct(&mut conn).await?;
        // One process owns an SQLite database, so leases left by a crash are void at once.
        conn.execute("UPDATE deliveries SET lease_until = NULL WHERE lease_until IS NOT NULL")
            .await?;
        conn.close().await?;

        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options)
            .await?;
        let (tx, rx) = mpsc::channel(group::QUEUE_DEPTH);
        let wake = Arc::new(Notify::new());
        let ids = Arc::new(ids::RecentIds::default());
        let done = writer::spawn(path, rx, wake.clone(), ids.clone(), merge)?;
        Ok(Self::start(read, tx, wake, done, ids))
    }
}

mod ids;
#[cfg(test)]
mod tests;
mod writer;

include!("backend.rs");
