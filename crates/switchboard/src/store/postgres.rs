//! The PostgreSQL backend: any number of nodes share one database.
//!
//! Each node has its own group-committing writer (see `backend.rs`). What keeps nodes correct
//! together: a tenant's row is locked (`FOR UPDATE`, in one order) while its sequences are
//! assigned, so sequences stay strictly increasing and a duplicate `Id` posted to two nodes at
//! once is seen by the second; claims lock rows with `FOR UPDATE SKIP LOCKED`, so nodes never
//! claim the same delivery; a commit that made deliveries due sends `NOTIFY`, and every node's
//! listener wakes its dispatcher; migrations run under sqlx's advisory lock.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_core::future::BoxFuture;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgRow};
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

type Db = sqlx::Postgres;
type Conn = PgConnection;
type DbRow = PgRow;
type DbPool = PgPool;

/// The channel nodes notify each other on: `wake` (deliveries due), `subs` (subscriptions
/// changed) or `keys` (a key or tenant deleted).
const CHANNEL: &str = "switchboard";

const DIALECT: Dialect = Dialect {
    begin_write: "BEGIN",
    lock_tenant: concat!(tenant_sql!(), " FOR UPDATE"),
    claim: claim_sql!(" FOR UPDATE OF d SKIP LOCKED"),
    notify: Some("SELECT pg_notify('switchboard', 'wake')"),
    relax_in_transaction: Some("SET LOCAL synchronous_commit = off"),
    announce: Some("SELECT pg_notify('switchboard', $1)"),
    tenant_tables: &["api_keys", "events", "subscriptions", "deliveries"],
};

/// PostgreSQL keeps nothing of event ids outside its tables: its unique index on
/// `(tenant_id, id)` is maintained with the events.
#[derive(Clone)]
struct Ids;

impl Ids {
    fn forget(&self, _tenant: &str) {}
}

impl Backend {
    /// The sequence `tenant`'s event `id` is stored under.
    async fn sequence_of(&self, tenant: &str, id: Uuid) -> Result<Option<i64>, StoreError> {
        let found =
            sqlx::query_scalar("SELECT sequence FROM events WHERE tenant_id = $1 AND id = $2")
                .bind(tenant)
                .bind(id.to_string())
                .fetch_optional(&self.read)
                .await?;
        Ok(found)
    }
}

/// The migrations, compiled in; versions only ever grow.
pub(super) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("migrations/postgres/0001_init.sql")),
    (
        2,
        "delivery",
        include_str!("migrations/postgres/0002_delivery.sql"),
    ),
    (
        3,
        "due_order",
        include_str!("migrations/postgres/0003_due_order.sql"),
    ),
    (
        4,
        "deliveries_by_sequence",
        include_str!("migrations/postgres/0004_deliveries_by_sequence.sql"),
    ),
];

impl Backend {
    /// Connects to `url`, migrates the schema (under an advisory lock, so nodes starting
    /// together take turns) and starts the writer and the notification listener.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let read = PgPoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        Migrator::new(Embedded).await?.run(&read).await?;
        let conn = PgConnection::connect_with(&options).await?;
        let (tx, rx) = mpsc::channel(group::QUEUE_DEPTH);
        let wake = Arc::new(Notify::new());
        let done = writer::spawn(conn, rx, wake.clone());
        let backend = Self::start(read.clone(), tx, wake, done, Ids);

        let mut listener = PgListener::connect_with(&read).await?;
        listener.listen(CHANNEL).await?;
        let node = backend.clone();
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(n) => match super::Change::parse(n.payload()) {
                        Some(change) => node.changed(change),
                        None => node.wake.notify_one(),
                    },
                    // The listener reconnects by itself; a missed notification only delays a
                    // dispatcher until its next poll.
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(backend)
    }
}

mod writer;

include!("backend.rs");
