//! The PostgreSQL backend: any number of nodes share one database.
//!
//! Each node has its own group-committing writer (`postgres/writer.rs`). What keeps nodes
//! correct together: a tenant's row is locked (`FOR UPDATE`, in one order) while its sequences
//! are assigned, so sequences stay strictly increasing and a duplicate `Id` posted to two nodes
//! at once is seen by the second; claims lock rows with `FOR UPDATE SKIP LOCKED`, so nodes never
//! claim the same delivery; a commit that made deliveries due sends `NOTIFY`, and every node's
//! listener wakes its dispatcher; migrations run under an advisory lock of our own (`migrate`).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPoolOptions};
use tokio::sync::mpsc;

use super::command::QUEUE_DEPTH;
use super::db::{self, Db, Embedded};
use super::{Change, Handoff, Opened, Options, Store, StoreError, sql};
use crate::clock::Backoff;

/// The channel nodes notify each other on: `wake` (deliveries due), `subs` (subscriptions
/// changed) or `keys` (a key or tenant deleted).
const CHANNEL: &str = "switchboard";

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
    (
        5,
        "system_events",
        include_str!("migrations/postgres/0005_system_events.sql"),
    ),
    (
        6,
        "agents",
        include_str!("migrations/postgres/0006_agents.sql"),
    ),
    (
        7,
        "write_probe",
        include_str!("migrations/postgres/0007_write_probe.sql"),
    ),
    (
        8,
        "delivery_semantics",
        include_str!("migrations/postgres/0008_delivery_semantics.sql"),
    ),
    (
        9,
        "schema_compat",
        include_str!("migrations/postgres/0009_schema_compat.sql"),
    ),
    (
        10,
        "log_indexes",
        include_str!("migrations/postgres/0010_log_indexes.sql"),
    ),
    (
        11,
        "events_code",
        include_str!("migrations/postgres/0011_events_code.sql"),
    ),
    (
        12,
        "jobs",
        include_str!("migrations/postgres/0012_jobs.sql"),
    ),
    (
        13,
        "pull",
        include_str!("migrations/postgres/0013_pull.sql"),
    ),
    (
        14,
        "trace_context",
        include_str!("migrations/postgres/0014_trace_context.sql"),
    ),
    (
        15,
        "instance_keys",
        include_str!("migrations/postgres/0015_instance_keys.sql"),
    ),
    (
        16,
        "rules",
        include_str!("migrations/postgres/0016_rules.sql"),
    ),
    (
        17,
        "agent_hours",
        include_str!("migrations/postgres/0017_agent_hours.sql"),
    ),
    (
        18,
        "portal_links",
        include_str!("migrations/postgres/0018_portal_links.sql"),
    ),
    (
        19,
        "deliveries_by_status",
        include_str!("migrations/postgres/0019_deliveries_by_status.sql"),
    ),
    (
        20,
        "deliveries_not_succeeded",
        include_str!("migrations/postgres/0020_deliveries_not_succeeded.sql"),
    ),
    (
        21,
        "drop_deliveries_by_status",
        include_str!("migrations/postgres/0021_drop_deliveries_by_status.sql"),
    ),
];

/// Connects to `url`, migrates the schema (under an advisory lock, so nodes starting together
/// take turns) and starts the writer and the notification listener. A database that cannot be
/// reached yet (a node started before it, or during a restart) is tried again, with a log line
/// each time, for up to `options.connect_timeout`.
pub(super) async fn open(url: &str, options: Options) -> Result<Store, StoreError> {
    let started = std::time::Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        let delay = backoff.failed();
        match try_open(url, options.clone()).await {
            Err(StoreError::Unavailable(e))
                if started.elapsed() + delay < options.connect_timeout =>
            {
                tracing::warn!(error = %e, retry_in = ?delay, "the database is not reachable yet; waiting for it");
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}

async fn try_open(url: &str, options: Options) -> Result<Store, StoreError> {
    let connect: PgConnectOptions = url.parse()?;
    let read = PgPoolOptions::new()
        .max_connections(8)
        .min_connections(1)
        // A request waits this long for a connection before it is answered 503 (while the
        // database is away, every read would otherwise hang that long).
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(connect.clone())
        .await?;
    let (applied, allowed) = schema_state(&mut *read.acquire().await?).await?;
    let unknown = db::judge_schema(&applied, &allowed, MIGRATIONS)?;
    let mut migrator = Migrator::new(Embedded(MIGRATIONS)).await?;
    migrator.set_ignore_missing(!unknown.is_empty());
    // Nodes take turns under `MIGRATE_LOCK` instead of sqlx's lock, which waits inside a
    // statement (see `migrate`).
    migrator.set_locking(false);
    migrate(&read, &migrator).await?;
    // The writers' statements are planned for the arguments of each execution, not once for
    // all: a plan cached while a table was small (a new deployment) stays the one it chose then
    // — a scan of the whole table for each batch of keys — until the next ANALYZE, and the
    // writer's statements are all key lookups whose right plan does not depend on the arguments
    // but on the table's size now.
    let connect = connect.options([("plan_cache_mode", "force_custom_plan")]);
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let wake = Arc::new(Handoff::default());
    let writable = Arc::new(AtomicBool::new(true));
    let done = writer::spawn(
        "switchboard-writer",
        connect.clone(),
        rx,
        wake.clone(),
        options.clone(),
        writable.clone(),
    )
    .await?;
    // The dispatcher's claims and outcomes get a writer of their own: on one connection, a turn
    // of ingest (which waits for the disk) and a turn of claims and outcomes would take turns;
    // on two they overlap, as two nodes' would. Nothing of either needs the other's turn: a
    // claim locks what it takes (`SKIP LOCKED`), every node already writes beside the others.
    let (deliveries, rx) = mpsc::channel(QUEUE_DEPTH);
    let deliveries_done = writer::spawn(
        "switchboard-deliveries-writer",
        connect.clone(),
        rx,
        wake.clone(),
        options.clone(),
        writable.clone(),
    )
    .await?;
    let mut listener = PgListener::connect_with(&read).await?;
    listener.listen(CHANNEL).await?;
    let store = Store::from_opened(Opened {
        db: Db::Postgres(read),
        dialect: &sql::POSTGRES,
        writer: tx,
        deliveries: Some((deliveries, deliveries_done)),
        wake,
        writer_done: done,
        writable,
        ids: None,
        groups: options.group_fields.clone(),
    });
    tokio::spawn(listen(listener, store.clone()));
    Ok(store)
}

/// Indexes built by a migration outside a transaction (`CREATE INDEX CONCURRENTLY`): one whose
/// build was stopped midway is left invalid, and `IF NOT EXISTS` would keep it.
const CONCURRENT_INDEXES: [&str; 2] = ["events_code", "deliveries_not_succeeded"];
/// The advisory lock nodes take around [`migrate`] (sqlx's migrator takes its own inside).
const MIGRATE_LOCK: i64 = 0x5377_6974_6368_6d67;

/// Runs `migrator`, first dropping what an interrupted concurrent index build left: under a
/// lock of our own, so that no node drops an index another node is still building.
async fn migrate(read: &sqlx::PgPool, migrator: &Migrator) -> Result<(), StoreError> {
    let mut conn = read.acquire().await?;
    // Taken by polling, not by waiting in a statement: `CREATE INDEX CONCURRENTLY` waits for
    // every transaction in progress to end, a statement blocked on the lock included — which
    // would wait for the index in turn.
    loop {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(MIGRATE_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        if got {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = clean_and_migrate(read, migrator, &mut conn).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATE_LOCK)
        .execute(&mut *conn)
        .await?;
    done
}

async fn clean_and_migrate(
    read: &sqlx::PgPool,
    migrator: &Migrator,
    conn: &mut PgConnection,
) -> Result<(), StoreError> {
    let invalid: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::TEXT FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE NOT i.indisvalid AND c.relname = ANY($1)",
    )
    .bind(CONCURRENT_INDEXES.map(String::from).to_vec())
    .fetch_all(&mut *conn)
    .await?;
    for name in invalid {
        tracing::warn!(index = %name, "dropping an index whose build was interrupted; it is built again");
        let drop = format!("DROP INDEX CONCURRENTLY IF EXISTS {name}");
        sqlx::query(&drop).execute(&mut *conn).await?;
    }
    migrator.run(read).await?;
    Ok(())
}

/// The applied migrations' versions, and those whose `schema_compat` row lets the previous
/// release run (both empty on a new database).
pub(super) async fn schema_state(
    conn: &mut PgConnection,
) -> Result<(Vec<i64>, Vec<i64>), StoreError> {
    const HAS: &str = "SELECT to_regclass($1) IS NOT NULL";
    let mut state = (Vec::new(), Vec::new());
    if sqlx::query_scalar(HAS)
        .bind("_sqlx_migrations")
        .fetch_one(&mut *conn)
        .await?
    {
        state.0 = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&mut *conn)
            .await?;
    }
    if sqlx::query_scalar(HAS)
        .bind("schema_compat")
        .fetch_one(&mut *conn)
        .await?
    {
        state.1 = sqlx::query_scalar("SELECT version FROM schema_compat WHERE previous_may_run")
            .fetch_all(&mut *conn)
            .await?;
    }
    Ok(state)
}

/// Applies the other nodes' notifications. The listener reconnects by itself; while it was
/// down notifications were missed, so after an error everything they could have said is
/// assumed: the dispatcher wakes and polls, and what nodes keep in memory is forgotten.
async fn listen(mut listener: PgListener, store: Store) {
    loop {
        match listener.recv().await {
            Ok(n) => match (Change::parse(n.payload()), n.payload()) {
                (Some(change), _) => store.changed(change),
                // Deliveries became due.
                (None, sql::DUE) => store.0.wake.due(),
                (None, payload) => match payload.strip_prefix(sql::EVENTS_OF) {
                    Some(tenant) => store.committed(Some(tenant)),
                    // "wake", from a node of an earlier release: anything may have changed.
                    None => {
                        store.0.wake.due();
                        store.committed(None);
                    }
                },
            },
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
                store.changed(Change::Keys);
                store.changed(Change::Subscriptions);
                store.committed(None);
            }
        }
        if std::sync::Arc::strong_count(&store.0) == 1 {
            // Every other handle is gone: the store was dropped.
            break;
        }
    }
}

mod writer;

/// The writer's lookups of stored events by keys (for `Store::writer_lookup_plans`).
pub(super) use writer::{CLAIMED_BODIES, FIND_STORED};
