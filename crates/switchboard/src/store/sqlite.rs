//! The embedded SQLite backend.
//!
//! SQLite has one writer at a time, so ingest has exactly one: a thread that owns a connection,
//! takes every command queued on its channel, and commits them in one `BEGIN IMMEDIATE`
//! transaction — one fsync (WAL, `synchronous=FULL`) for many requests. A request's reply is
//! sent only after `COMMIT` returns, which is what makes a 202 durable. Reads and the rare
//! administrative writes use a separate pool; those writes wait on SQLite's lock (busy timeout).

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Executor};
use tokio::sync::mpsc;

use super::command::QUEUE_DEPTH;
use super::db::{self, Db, Embedded};
use super::{Handoff, Opened, Options, StoreError, sql};
pub(super) use ids::{MergeSizes, RecentIds};

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
    (
        6,
        "system_events",
        include_str!("migrations/sqlite/0006_system_events.sql"),
    ),
    (
        7,
        "agents",
        include_str!("migrations/sqlite/0007_agents.sql"),
    ),
    (
        8,
        "write_probe",
        include_str!("migrations/sqlite/0008_write_probe.sql"),
    ),
    (
        9,
        "delivery_semantics",
        include_str!("migrations/sqlite/0009_delivery_semantics.sql"),
    ),
    (
        10,
        "schema_compat",
        include_str!("migrations/sqlite/0010_schema_compat.sql"),
    ),
    (
        11,
        "log_indexes",
        include_str!("migrations/sqlite/0011_log_indexes.sql"),
    ),
    (12, "jobs", include_str!("migrations/sqlite/0012_jobs.sql")),
    (13, "pull", include_str!("migrations/sqlite/0013_pull.sql")),
    (
        14,
        "trace_context",
        include_str!("migrations/sqlite/0014_trace_context.sql"),
    ),
    (
        15,
        "instance_keys",
        include_str!("migrations/sqlite/0015_instance_keys.sql"),
    ),
    (
        16,
        "rules",
        include_str!("migrations/sqlite/0016_rules.sql"),
    ),
    (
        17,
        "agent_hours",
        include_str!("migrations/sqlite/0017_agent_hours.sql"),
    ),
    (
        18,
        "portal_links",
        include_str!("migrations/sqlite/0018_portal_links.sql"),
    ),
    (
        19,
        "deliveries_by_status",
        include_str!("migrations/sqlite/0019_deliveries_by_status.sql"),
    ),
];

/// Opens (creating if needed) the database at `path`, migrates it and starts the writer, which
/// merges event ids into their index in batches of the given sizes.
pub(super) async fn open(
    path: &Path,
    merge: MergeSizes,
    options: Options,
) -> Result<Opened, StoreError> {
    let connect = SqliteConnectOptions::from_str("sqlite:")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a committed transaction survives power loss, not only a process crash.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .pragma("cache_size", "-32000")
        // DESIGN §19: freed space is zeroed, so an erased value is not left in free pages.
        .pragma("secure_delete", "ON");

    let mut conn = SqliteConnection::connect_with(&connect).await?;
    let (applied, allowed) = schema_state(&mut conn).await?;
    let unknown = db::judge_schema(&applied, &allowed, MIGRATIONS)?;
    let mut migrator = Migrator::new(Embedded(MIGRATIONS)).await?;
    migrator.set_ignore_missing(!unknown.is_empty());
    migrator.run_direct(&mut conn).await?;
    // One process owns an SQLite database, so leases left by a crash are void at once.
    conn.execute("UPDATE deliveries SET lease_until = NULL WHERE lease_until IS NOT NULL")
        .await?;
    conn.execute("UPDATE jobs SET lease_until = NULL WHERE lease_until IS NOT NULL")
        .await?;
    conn.close().await?;

    let read = SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(1)
        .connect_with(connect)
        .await?;
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let wake = Arc::new(Handoff::default());
    let ids = Arc::new(RecentIds::default());
    let writable = Arc::new(AtomicBool::new(true));
    let groups = options.group_fields.clone();
    let done = writer::spawn(
        path,
        rx,
        wake.clone(),
        ids.clone(),
        merge,
        options,
        writable.clone(),
    )?;
    Ok(Opened {
        db: Db::Sqlite(read),
        dialect: &sql::SQLITE,
        writer: tx,
        deliveries: None,
        wake,
        writer_done: done,
        writable,
        ids: Some(ids),
        groups,
    })
}

/// The applied migrations' versions, and those whose `schema_compat` row lets the previous
/// release run (both empty on a new database).
async fn schema_state(conn: &mut SqliteConnection) -> Result<(Vec<i64>, Vec<i64>), StoreError> {
    const HAS: &str = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?";
    let mut state = (Vec::new(), Vec::new());
    let has = |n: i64| n > 0;
    if has(sqlx::query_scalar(HAS)
        .bind("_sqlx_migrations")
        .fetch_one(&mut *conn)
        .await?)
    {
        state.0 = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&mut *conn)
            .await?;
    }
    if has(sqlx::query_scalar(HAS)
        .bind("schema_compat")
        .fetch_one(&mut *conn)
        .await?)
    {
        state.1 = sqlx::query_scalar("SELECT version FROM schema_compat WHERE previous_may_run")
            .fetch_all(&mut *conn)
            .await?;
    }
    Ok(state)
}

mod ids;
mod statements;
#[cfg(test)]
mod tests;
mod writer;
