//! Durable state: the only module with SQL. Callers see typed operations on [`Store`]; behind
//! them is the embedded SQLite database (`store/sqlite.rs`) or PostgreSQL (`store/postgres.rs`).
//!
//! # Layout
//!
//! - `store.rs` (this file): [`Store`], its types, and the writer's channel operations
//!   (ingest, claim, record, System events, close), written once for both backends.
//! - `command.rs`: the writer's protocol — commands, the group one turn takes, the answers.
//! - `turn.rs`: the writer turn, written once over `conn.rs`'s `Conn`, which each
//!   backend's writer implements; `agents.rs` and `retention.rs` add their batches to it.
//! - `decide.rs`: what a turn writes, as pure functions (sequences, duplicates, outbox rows).
//! - `sql.rs`: the statements the turn shares between the dialects, and the `Dialect`s for
//!   where the two differ; the read-side files keep their own queries, each written once for
//!   both dialects.
//! - `db.rs`: the interface statements go through (arguments, rows, the read pool).
//! - `events.rs`, `tenants.rs`, `subscriptions.rs`, `deliveries.rs`: reads and administrative
//!   writes, by resource, as `impl Store` blocks.
//! - `sqlite.rs` + `sqlite/`, `postgres.rs` + `postgres/`: opening each backend, its writer.
//!
//! Ingest, claims, outcomes, System events, replays, purges and the agents projection go
//! through one writer per node that group-commits whatever has queued; reads and the rare
//! administrative writes use a separate pool. Deliveries are created only in the writer's turn.

mod agents;
mod command;
mod conn;
pub mod copy;
mod db;
mod decide;
mod deliveries;
pub mod embedded;
mod erase;
mod events;
mod handoff;
mod instance;
mod intervals;
mod jobs;
mod lag;
mod portal;
mod postgres;
mod pull;
mod retention;
mod rules;
mod secrets;
mod sql;
mod sqlite;
mod subscriptions;
mod tenants;
mod turn;
mod usernames;

use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::auth::Scope;
use crate::clock::Clock;
use crate::event::{Event, NewEvent, Timestamp};
use crate::otel::TraceContext;
use crate::subscription::SubscriptionSpec;
use crate::subscription::health::Policy;
pub use agents::{AgentQuery, History, Refused};
use command::{ClaimJob, Command};
use db::{Db, Dialect};
pub use erase::ERASED;
pub use handoff::Handoff;
pub use intervals::IntervalFilter;
pub use jobs::{CancelJob, JobRecord, JobSpec};
pub use lag::{Breaker, Budgeted, Lag};
pub use portal::PortalLink;
pub use pull::{LAG_SCAN, LagCount, Pulled, SCAN_MAX};
pub use retention::{PURGE_BATCH, Purged};
pub use subscriptions::StoredSubscription;
pub(crate) use tenants::KeyCache;

/// The compiled-in migrations of a backend as `(version, name, SQL)`, for tools and tests.
pub fn migrations(postgres: bool) -> &'static [(i64, &'static str, &'static str)] {
    if postgres {
        postgres::MIGRATIONS
    } else {
        sqlite::MIGRATIONS
    }
}

/// What a store is opened with besides its address.
#[derive(Clone, Debug)]
pub struct Options {
    /// When failing subscriptions are disabled.
    pub health: Policy,
    /// How long a PostgreSQL node waits for its database at start before giving up.
    pub connect_timeout: std::time::Duration,
    /// The writer's time: when events are received, deliveries due, attempts judged. The
    /// dispatcher's clock (tests move one by hand).
    pub clock: Clock,
    /// SQLite: the most pages the database file may hold (`PRAGMA max_page_count`), for tests
    /// of a full disk; `None`: as many as the disk takes.
    pub sqlite_max_pages: Option<u64>,
    /// Secrets at rest (DESIGN §19): the key subscriptions' secrets and the instance's keys
    /// are sealed with; `None`: stored plain (a database whose secrets are sealed then refuses
    /// to open).
    pub secret_key: Option<crate::secrets::SecretKey>,
    /// The catalog's `[agents] group_fields` (DESIGN §18): the agents projection notes their
    /// values in each agent's `groups`.
    pub group_fields: crate::agent::GroupFields,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            health: Policy::default(),
            connect_timeout: std::time::Duration::from_secs(60),
            clock: Clock::system(),
            sqlite_max_pages: None,
            secret_key: None,
            group_fields: crate::agent::GroupFields::default(),
        }
    }
}

/// The store handle; cheap to clone.
#[derive(Clone)]
pub struct Store(Arc<Inner>);

struct Inner {
    /// Reads and administrative writes.
    db: Db,
    dialect: &'static Dialect,
    /// The writer's queue.
    writer: mpsc::Sender<Command>,
    /// On PostgreSQL, a second writer's queue, for the dispatcher's claims and outcomes: its
    /// turns run on a connection of their own, beside ingest's (see `postgres/writer.rs`).
    deliveries: Option<mpsc::Sender<Command>>,
    /// Wakes the dispatcher after a commit that made deliveries due, and takes it the
    /// deliveries ingest leased to it (`handoff.rs`).
    wake: Arc<Handoff>,
    /// Bumped after events were committed (on PostgreSQL, by any node): streams read on.
    /// Changes whenever keys are deleted (a key, or a tenant with its keys; on PostgreSQL on any
    /// node): open streams check then whether theirs still exists.
    keys_changed: watch::Sender<u64>,
    /// Stored subscriptions found undecodable and reported, with the `updated_at` they had.
    undecodable: std::sync::Mutex<std::collections::HashSet<(String, i64)>>,
    /// Pull subscriptions' ids, with when this node last noted a consumer's call in the
    /// database (`pulled_at`, written at most once a minute each).
    pulled_at: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// API keys by hash, as authentication found them.
    keys: KeyCache,
    /// Resolves when the writer has committed its last turn and closed its connection.
    writer_done: Mutex<Option<oneshot::Receiver<()>>>,
    /// The same for the deliveries' writer.
    deliveries_done: Mutex<Option<oneshot::Receiver<()>>>,
    /// False while the writer's last turn failed because the database could not be written.
    writable: Arc<std::sync::atomic::AtomicBool>,
    /// SQLite's: the `Id`s of recent events, not yet in `event_ids` (see `sqlite/ids.rs`).
    ids: Option<Arc<sqlite::RecentIds>>,
    /// Wakes this node's job runner when a job is created here.
    jobs: tokio::sync::Notify,
    /// The secret key, when one is configured (set once, when the store is opened).
    secrets: std::sync::OnceLock<crate::secrets::SecretKey>,
    /// The catalog's group fields, for folds outside the writer (`as_of`).
    groups: crate::agent::GroupFields,
}

/// What a backend's `open` hands over: its pools and its started writer.
struct Opened {
    db: Db,
    dialect: &'static Dialect,
    writer: mpsc::Sender<Command>,
    /// PostgreSQL's deliveries' writer: its queue, and what resolves when it has stopped.
    deliveries: Option<(mpsc::Sender<Command>, oneshot::Receiver<()>)>,
    wake: Arc<Handoff>,
    writer_done: oneshot::Receiver<()>,
    writable: Arc<std::sync::atomic::AtomicBool>,
    ids: Option<Arc<sqlite::RecentIds>>,
    groups: crate::agent::GroupFields,
}

impl Store {
    /// Opens the database `url` names (`postgres://…`), else the SQLite file at `sqlite_path`,
    /// and migrates it.
    pub async fn open(url: &str, sqlite_path: &std::path::Path) -> Result<Self, StoreError> {
        Self::open_with(url, sqlite_path, Options::default()).await
    }

    /// [`Store::open`] with options.
    pub async fn open_with(
        url: &str,
        sqlite_path: &std::path::Path,
        options: Options,
    ) -> Result<Self, StoreError> {
        let secret_key = options.secret_key.clone();
        let store = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            postgres::open(url, options).await?
        } else {
            let opened = sqlite::open(sqlite_path, sqlite::MergeSizes::default(), options).await?;
            Store::from_opened(opened)
        };
        // Secrets at rest: the key must be the one the database's secrets are sealed with (or
        // there must be none), and a first key seals what was plain.
        if let Err(e) = store.check_secret_key(secret_key).await {
            store.close().await;
            return Err(e);
        }
        // A log from before the agents projection (or a node that stopped mid-way) is folded
        // in before anything is served.
        store.catch_up_agents().await?;
        Ok(store)
    }

    fn from_opened(o: Opened) -> Self {
        // The writer folds Agent events it deferred under load when asked, now and then, and
        // brings the log by username up to date.
        for (every, command) in [
            (
                agents::FOLD_TICK,
                (|| Command::FoldAgents) as fn() -> Command,
            ),
            (usernames::INDEX_TICK, || Command::IndexUsernames),
            (rules::RULES_TICK, || Command::Rules(None)),
        ] {
            let writer = o.writer.downgrade();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(writer) = writer.upgrade() else {
                        return;
                    };
                    // A full queue will reach the writer anyway.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = writer.try_send(command()) {
                        return;
                    }
                }
            });
        }
        let (deliveries, deliveries_done) = o.deliveries.unzip();
        Store(Arc::new(Inner {
            db: o.db,
            dialect: o.dialect,
            writer: o.writer,
            deliveries,
            deliveries_done: Mutex::new(deliveries_done),
            wake: o.wake,
            undecodable: std::sync::Mutex::default(),
            pulled_at: std::sync::Mutex::default(),
            keys_changed: watch::Sender::new(0),
            keys: KeyCache::default(),
            writer_done: Mutex::new(Some(o.writer_done)),
            writable: o.writable,
            ids: o.ids,
            jobs: tokio::sync::Notify::new(),
            secrets: std::sync::OnceLock::new(),
            groups: o.groups,
        }))
    }

    /// Sends `cmd` to the writer and waits for its answer.
    async fn turn<T>(
        &self,
        cmd: Command,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        Self::turn_on(&self.0.writer, cmd, answer).await
    }

    /// The same on the writer of claims and outcomes (PostgreSQL's second writer, or the one).
    async fn delivery_turn<T>(
        &self,
        cmd: Command,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let writer = self.0.deliveries.as_ref().unwrap_or(&self.0.writer);
        Self::turn_on(writer, cmd, answer).await
    }

    async fn turn_on<T>(
        writer: &mpsc::Sender<Command>,
        cmd: Command,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        writer.send(cmd).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Commits the events of one request, all or nothing; returns once they are durable.
    pub async fn ingest(
        &self,
        tenant: &str,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Accepted>, IngestError> {
        self.ingest_traced(tenant, events, None).await
    }

    /// [`Store::ingest`], the events stored with the trace context `trace` (DESIGN §21).
    pub async fn ingest_traced(
        &self,
        tenant: &str,
        events: Vec<NewEvent>,
        trace: Option<TraceContext>,
    ) -> Result<Vec<Accepted>, IngestError> {
        let (reply, answer) = oneshot::channel();
        let job = IngestJob {
            tenant: tenant.to_string(),
            events,
            trace,
        };
        self.0
            .writer
            .send(Command::Ingest(job, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        let accepted = answer.await.map_err(|_| StoreError::Closed)??;
        if accepted.iter().any(|a| !a.duplicate) {
            self.committed(Some(tenant));
        }
        Ok(accepted)
    }

    /// Wakes the streams of `tenant` (`None`: of every tenant): its events were committed.
    fn committed(&self, tenant: Option<&str>) {
        self.0.wake.committed(tenant)
    }

    /// Changes whenever keys were deleted (see [`Store::find_key`]).
    pub fn key_changes(&self) -> watch::Receiver<u64> {
        self.0.keys_changed.subscribe()
    }

    /// Changes after `tenant`'s events were committed (on PostgreSQL, by any node); a stream
    /// waits on it before reading on.
    pub fn commits(&self, tenant: &str) -> watch::Receiver<u64> {
        self.0.wake.commits(tenant)
    }

    /// Leases up to `n` due deliveries (by `now`, unix ms) of each listed `(subscription, n,
    /// resume)` until `lease_until`. `resume` says that only a lease keeps the subscription's
    /// due deliveries from being claimed (no per-agent order, coalescing, rate limit or probe
    /// decides which may go): on SQLite its claim may then go on after the last one's
    /// deliveries instead of stepping over every one still in flight (see `turn::claim`).
    pub async fn claim(
        &self,
        subs: Vec<(String, u32, bool)>,
        lease_until: i64,
        now: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = ClaimJob {
            subs,
            lease_until,
            now,
        };
        self.delivery_turn(Command::Claim(job, reply), answer).await
    }

    /// Writes back finished attempts with their deliveries' new state.
    pub async fn record(&self, outcomes: Vec<Outcome>) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.delivery_turn(Command::Record(outcomes, reply), answer)
            .await
    }

    /// Stores a System event and a delivery of it to each of its subscriptions; returns those
    /// deliveries, ready to attempt (leased to the caller if it asked for a lease).
    pub async fn system_event(&self, event: SystemEvent) -> Result<Vec<Claimed>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.turn(Command::System(event, reply), answer).await
    }

    /// Commits what is queued and closes the database.
    pub async fn close(&self) {
        let done = self
            .0
            .deliveries_done
            .lock()
            .ok()
            .and_then(|mut t| t.take());
        if let (Some(done), Some(writer)) = (done, &self.0.deliveries) {
            let _ = writer.send(Command::Shutdown).await;
            let _ = done.await;
        }
        let done = self.0.writer_done.lock().ok().and_then(|mut t| t.take());
        if let Some(done) = done {
            let _ = self.0.writer.send(Command::Shutdown).await;
            let _ = done.await;
        }
        self.0.db.close().await;
    }

    /// Whether the database answers reads and the writer can commit, each within 2 s. The
    /// writer is asked (with a probe write, queued behind its work) only while its last
    /// turn failed for want of the database; otherwise that turn's success answers for it.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let timeout = std::time::Duration::from_secs(2);
        if let Err(e) = self.0.db.ping(timeout).await {
            // The database is away: the writer's connection may have gone with it unnoticed
            // (no turn since), so once reads work again readiness asks the writer itself.
            self.0.writable.store(false, AtomicOrdering::SeqCst);
            return Err(e);
        }
        if self.0.writable.load(AtomicOrdering::SeqCst) {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        tokio::time::timeout(timeout, self.turn(Command::Ping(reply), answer))
            .await
            .map_err(|_| StoreError::Unavailable("the writer did not commit in time".into()))?
    }

    /// The dispatcher waits on this; it is signalled when deliveries may have become due, and
    /// brings the deliveries ingest hands over.
    pub fn wake_handle(&self) -> Arc<Handoff> {
        self.0.wake.clone()
    }

    /// Changes whenever a subscription is created, changed or deleted (on PostgreSQL, on any
    /// node).
    pub fn subscriptions_version(&self) -> u64 {
        self.0.wake.version()
    }

    /// Something nodes keep in memory changed: this node forgets it at once, and on PostgreSQL
    /// every other node does when the notification arrives.
    async fn announce(&self, change: Change) {
        self.changed(change);
        if let Some(sql) = self.0.dialect.announce
            && let Err(e) = self.0.db.execute(sql, &db::args![change.as_str()]).await
        {
            tracing::warn!(error = %e, "could not notify the other nodes; they catch up by themselves");
        }
    }

    /// Forgets what `change` made stale.
    fn changed(&self, change: Change) {
        match change {
            Change::Subscriptions => {
                self.0.wake.subscriptions_changed();
            }
            Change::Keys => {
                self.0.keys.invalidate();
                self.0.keys_changed.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }
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

/// A System event (Category 0) to store and deliver to subscriptions of `tenant`.
#[derive(Clone, Debug)]
pub struct SystemEvent {
    pub tenant: String,
    pub event: Event,
    pub to: Recipients,
    /// Lease the new deliveries to the caller until then (unix ms): it makes their first
    /// attempt itself.
    pub lease_until: Option<i64>,
    /// Retried like any delivery; false: one attempt only (Heartbeats: the next one follows).
    pub retried: bool,
}

/// Who gets a System event.
#[derive(Clone, Debug)]
pub enum Recipients {
    /// These subscriptions.
    Subscriptions(Vec<String>),
    /// The tenant's enabled subscriptions whose filter names category 0, but this one (the
    /// subscription the event is about).
    MonitorsBut(String),
}

/// A failed store operation; nothing of it was stored.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or written now (connection lost, disk full or
    /// read-only); the same request may succeed later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Db(String),
    /// The transaction lost to another (a deadlock, a serialization failure, a lock not
    /// granted in time — for example behind a migration's `ALTER TABLE` during a rolling
    /// upgrade) and was rolled back whole: running it again succeeds.
    #[error("database contention: {0}")]
    Contended(String),
    #[error("migration failed: {0}")]
    Migrate(String),
    /// The database has migrations this binary does not know, and one of them does not let
    /// an older release run on it (DESIGN §15): `serve`, `migrate`, `backup`, `copy` exit 3.
    #[error(
        "the database's schema is version {database}, newer than this binary's {binary}, and migration(s) {refused:?} do not let an older release run on it; run a release that knows schema version {database}, or restore a backup made before the upgrade"
    )]
    SchemaTooNew {
        database: i64,
        binary: i64,
        refused: Vec<i64>,
    },
    #[error("the store is shut down")]
    Closed,
    /// The secret key is missing, or is not the one the database's secrets are sealed with.
    #[error("{0}")]
    SecretKey(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        db::sqlx_error(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e.to_string())
    }
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
    /// Sequences up to this one only.
    pub through: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Events per second this tenant may post (None: no limit).
    pub ingest_rate_limit_per_sec: Option<i64>,
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
    /// The tenant holds `max` of them already, the most the configuration key `limit` allows.
    #[error("{limit} reached ({max})")]
    LimitReached { limit: &'static str, max: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A unit of work for the writer: one ingest request.
pub(crate) struct IngestJob {
    pub tenant: String,
    pub events: Vec<NewEvent>,
    /// The request's trace context, stored with each of its new events.
    pub trace: Option<TraceContext>,
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

/// A stored subscription whose `spec` does not decode even tolerantly: it receives nothing,
/// is listed with only its identity, and is repaired by a `PATCH` with a whole body.
#[derive(Clone, Debug)]
pub struct UndecodableSubscription {
    pub id: String,
    pub tenant_id: String,
    /// Its secret, when the stored text still holds one.
    pub secret: Option<String>,
    /// Why it does not decode.
    pub error: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
    /// Not attempted: it would have started more than the subscription's `max_age_secs` after
    /// the event was received. Finished, not failed; replay requeues it.
    Expired,
    /// Not sent: a later StatusChanged of the same agent replaced it (`coalesce`). Finished,
    /// not failed; replay requeues it.
    Superseded,
    /// Not sent: a `cancel_pending` job ended it (DESIGN §16). Finished; replay requeues it.
    Canceled,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Expired => "expired",
            DeliveryStatus::Superseded => "superseded",
            DeliveryStatus::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Succeeded,
            Self::Failed,
            Self::Expired,
            Self::Superseded,
            Self::Canceled,
        ]
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
    /// The trace context stored with the event (DESIGN §21); a System event has none.
    pub trace: Option<Arc<TraceContext>>,
    /// When the delivery was created (the event accepted, or replayed), unix ms.
    pub created_at: i64,
    /// When the event was received, unix ms: what `max_age_secs` counts from.
    pub received_at: i64,
    /// How many pending deliveries of the same agent's status this one replaced (`coalesce`).
    pub superseded: i64,
    /// The lease the attempt is made under (unix ms, the dispatcher's clock); its outcome
    /// changes the delivery only while the row still holds this lease.
    pub lease_until: i64,
}

/// What becomes of a delivery after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextState {
    Succeeded,
    /// Pending again, due at this unix ms.
    RetryAt(i64),
    Failed,
    /// Not attempted: too old for the subscription's `max_age_secs`.
    Expired,
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
    /// The claimed delivery's lease ([`Claimed::lease_until`]).
    pub lease_until: i64,
    /// Made as the probe of an open circuit breaker (DESIGN §16).
    pub probe: bool,
    /// A member of a batch after its first: the batch was one attempt, counted (for the
    /// breaker and the dispatcher's slots) by its first member's outcome.
    pub batched: bool,
    /// Refused (401) with a cached OAuth 2 token, and made again at once with a new one: it
    /// says nothing of the receiver's health, so the breaker does not count it (DESIGN §20).
    pub again_now: bool,
}
