//! The narrow interface every statement of the store goes through: arguments as [`Arg`]s, rows
//! as [`Row`]s of [`Value`]s, and [`Db`], the read pool (SQLite or PostgreSQL through sqlx),
//! with its transactions ([`Tx`]). The writers (`sqlite/writer.rs`, `postgres/writer.rs`) run
//! the same arguments and rows through their own connections.
//!
//! Every SQL text is written once, with `$N` placeholders, which SQLite and PostgreSQL both take;
//! where the two dialects differ, [`Dialect`] holds each one's text.

use std::borrow::Cow;
use std::time::Duration;

use futures_core::future::BoxFuture;
use sqlx::migrate::{Migration, MigrationSource, MigrationType};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::query::Query;
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{
    Database, Decode, Encode, Executor, Postgres, Row as _, Sqlite, Type, TypeInfo, ValueRef,
};

use super::StoreError;

/// A value bound to a placeholder. Nulls carry their type: PostgreSQL checks it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    Int(Option<i64>),
    Text(Option<&'a str>),
    Blob(&'a [u8]),
    Bool(bool),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(Some(v))
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(Some(v))
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a Option<String>> for Arg<'a> {
    fn from(v: &'a Option<String>) -> Self {
        Arg::Text(v.as_deref())
    }
}

impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Arg::Bool(v)
    }
}

/// `[Arg::from(a), Arg::from(b), …]`.
macro_rules! args {
    ($($v:expr),* $(,)?) => { [$($crate::store::db::Arg::from($v)),*] };
}
pub(crate) use args;

/// A column's value as read.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// One row of a result.
#[derive(Clone, Debug, Default)]
pub(crate) struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> Result<&Value, StoreError> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Db(format!("no column {i}")))
    }

    pub fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.opt_int(i)?
            .ok_or_else(|| StoreError::Db(format!("column {i} is null")))
    }

    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            other => Err(StoreError::Db(format!(
                "column {i}: expected an integer, found {other:?}"
            ))),
        }
    }

    pub fn bool(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self.int(i)? != 0)
    }

    /// Moves a text column out of the row.
    pub fn text(&mut self, i: usize) -> Result<String, StoreError> {
        self.opt_text(i)?
            .ok_or_else(|| StoreError::Db(format!("column {i} is null")))
    }

    /// Moves a nullable text column out of the row.
    pub fn opt_text(&mut self, i: usize) -> Result<Option<String>, StoreError> {
        match self.0.get_mut(i) {
            Some(Value::Null) => Ok(None),
            Some(Value::Text(s)) => Ok(Some(std::mem::take(s))),
            other => Err(StoreError::Db(format!(
                "column {i}: expected text, found {other:?}"
            ))),
        }
    }
}

/// The statements that differ between the dialects.
pub(crate) struct Dialect {
    /// Starts a transaction that will write.
    pub begin_write: &'static str,
    /// Reads, and on PostgreSQL locks, a tenant's last sequence (`$1`).
    pub lock_tenant: &'static str,
    /// Readiness's probe after a failed write (`$1`: now): a real write, which needs room.
    pub probe: &'static [&'static str],
    /// As `lock_tenant`, but on PostgreSQL no row when another transaction holds it.
    pub try_lock_tenant: &'static str,
    /// Ends a `SELECT` of several tenants' rows that locks them, in the order of their ids'
    /// bytes (the order every turn locks tenants in, so that nodes never deadlock), waiting
    /// for those another transaction holds (empty on SQLite, where the writer is alone).
    pub lock_in_order: &'static str,
    /// Ends a `SELECT` of several tenants' rows that locks those no other transaction holds and
    /// skips the others, never waiting (so in no particular order); empty on SQLite.
    pub try_lock_in_order: &'static str,
    /// Reads, and on PostgreSQL locks, a subscription's health (`$1`).
    pub lock_health: &'static str,
    /// The claim of due deliveries, with the dialect's row locking.
    pub claim: &'static str,
    /// Tells the other nodes that a `Change` (`$1`, its name) happened (PostgreSQL). The
    /// writer's turn sends its own notifications (deliveries due, a tenant's events) in one
    /// statement: `sql::notify_each`.
    pub announce: Option<&'static str>,
    /// The tables whose rows a tenant's deletion takes (by `tenant_id`), besides `attempts`.
    pub tenant_tables: &'static [&'static str],
    /// Ends a `SELECT` that locks the rows it reads, skipping those another transaction holds
    /// (empty on SQLite, where the writer is alone).
    pub skip_locked: &'static str,
    /// How an erasure leaves no copy behind (DESIGN §19).
    pub settle: super::erase::Settle,
}

/// The compiled-in migrations of a backend, as sqlx runs them.
#[derive(Debug)]
pub(crate) struct Embedded(pub &'static [(i64, &'static str, &'static str)]);

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|&(version, name, sql)| {
                    // A migration that must run outside a transaction (PostgreSQL's CREATE
                    // INDEX CONCURRENTLY) says so on its first line, as sqlx's files do.
                    Migration::new(
                        version,
                        Cow::Borrowed(name),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        no_transaction(sql),
                    )
                })
                .collect())
        })
    }
}

/// Whether migration `sql` runs outside a transaction: its first line is `-- no-transaction`.
pub(crate) fn no_transaction(sql: &str) -> bool {
    sql.lines().next().map(str::trim) == Some("-- no-transaction")
}

/// DESIGN §15, versions side by side: of the `applied` migrations, those this binary does not
/// know (it is older than the database). It may run when `allowed` (the versions whose
/// `schema_compat` row has `previous_may_run`) holds every one of them; else the error names
/// both schema versions.
pub(crate) fn judge_schema(
    applied: &[i64],
    allowed: &[i64],
    known: &[(i64, &str, &str)],
) -> Result<Vec<i64>, StoreError> {
    let binary = known.iter().map(|m| m.0).max().unwrap_or(0);
    let unknown: Vec<i64> = applied
        .iter()
        .copied()
        .filter(|v| !known.iter().any(|m| m.0 == *v))
        .collect();
    let refused: Vec<i64> = unknown
        .iter()
        .copied()
        .filter(|v| !allowed.contains(v))
        .collect();
    if refused.is_empty() {
        if !unknown.is_empty() {
            tracing::warn!(
                ?unknown,
                schema = applied.iter().max().copied().unwrap_or(0),
                binary,
                "the database has migrations of a newer release, each of which lets this one run on it; starting"
            );
        }
        Ok(unknown)
    } else {
        Err(StoreError::SchemaTooNew {
            database: applied.iter().max().copied().unwrap_or(0),
            binary,
            refused,
        })
    }
}

/// An sqlx error as the store reports it: a lost or refused connection means the database is
/// unavailable (the caller may try again), anything else is an error of the statement.
pub(crate) fn sqlx_error(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // PostgreSQL: admin shutdown, crash shutdown, cannot connect now; connection
            // exceptions; read-only transaction (a standby after failover).
            Some("57P01" | "57P02" | "57P03" | "25006") => StoreError::Unavailable(e.to_string()),
            // Deadlock, serialization failure, lock not available: rolled back, try again.
            Some("40P01" | "40001" | "55P03") => StoreError::Contended(e.to_string()),
            // Insufficient resources: a full disk, out of memory, too many connections.
            Some(code) if code.starts_with("53") => StoreError::Unavailable(e.to_string()),
            Some(code) if code.starts_with("08") => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Db(e.to_string()),
        },
        _ => StoreError::Db(e.to_string()),
    }
}

/// Binds `args` to `q`, in order.
fn bind<'q, DB: Database>(
    mut q: Query<'q, DB, <DB as Database>::Arguments<'q>>,
    args: &[Arg<'q>],
) -> Query<'q, DB, <DB as Database>::Arguments<'q>>
where
    Option<i64>: Encode<'q, DB> + Type<DB>,
    Option<&'q str>: Encode<'q, DB> + Type<DB>,
    &'q [u8]: Encode<'q, DB> + Type<DB>,
    bool: Encode<'q, DB> + Type<DB>,
{
    for a in args {
        q = match *a {
            Arg::Int(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::Blob(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
        };
    }
    q
}

fn decode_err(e: sqlx::error::BoxDynError) -> StoreError {
    StoreError::Db(format!("decoding a column: {e}"))
}

fn sqlite_row(row: &SqliteRow) -> Result<Row, StoreError> {
    let mut out = Vec::with_capacity(row.len());
    for i in 0..row.len() {
        let raw = row.try_get_raw(i).map_err(sqlx_error)?;
        let value = if raw.is_null() {
            Value::Null
        } else {
            match raw.type_info().name() {
                "INTEGER" | "BOOLEAN" | "INT8" | "BIGINT" => {
                    Value::Int(<i64 as Decode<Sqlite>>::decode(raw).map_err(decode_err)?)
                }
                "BLOB" => {
                    Value::Blob(<Vec<u8> as Decode<Sqlite>>::decode(raw).map_err(decode_err)?)
                }
                _ => Value::Text(<String as Decode<Sqlite>>::decode(raw).map_err(decode_err)?),
            }
        };
        out.push(value);
    }
    Ok(Row(out))
}

pub(crate) fn pg_row(row: &PgRow) -> Result<Row, StoreError> {
    let mut out = Vec::with_capacity(row.len());
    for i in 0..row.len() {
        let raw = row.try_get_raw(i).map_err(sqlx_error)?;
        let value = if raw.is_null() {
            Value::Null
        } else {
            match raw.type_info().name() {
                "INT8" => Value::Int(<i64 as Decode<Postgres>>::decode(raw).map_err(decode_err)?),
                "INT4" => Value::Int(i64::from(
                    <i32 as Decode<Postgres>>::decode(raw).map_err(decode_err)?,
                )),
                "INT2" => Value::Int(i64::from(
                    <i16 as Decode<Postgres>>::decode(raw).map_err(decode_err)?,
                )),
                "BOOL" => Value::Int(i64::from(
                    <bool as Decode<Postgres>>::decode(raw).map_err(decode_err)?,
                )),
                "BYTEA" => {
                    Value::Blob(<Vec<u8> as Decode<Postgres>>::decode(raw).map_err(decode_err)?)
                }
                _ => Value::Text(<String as Decode<Postgres>>::decode(raw).map_err(decode_err)?),
            }
        };
        out.push(value);
    }
    Ok(Row(out))
}

/// Runs `sql` with `args` on an SQLite executor; rows affected.
async fn sqlite_execute<'e>(
    e: impl Executor<'e, Database = Sqlite>,
    sql: &str,
    args: &[Arg<'_>],
) -> Result<u64, StoreError> {
    let done = bind(sqlx::query(sql), args).execute(e).await;
    done.map(|d| d.rows_affected()).map_err(sqlx_error)
}

/// Runs `sql` with `args` on an SQLite executor; its rows.
async fn sqlite_query<'e>(
    e: impl Executor<'e, Database = Sqlite>,
    sql: &str,
    args: &[Arg<'_>],
) -> Result<Vec<Row>, StoreError> {
    let rows = bind(sqlx::query(sql), args).fetch_all(e).await;
    rows.map_err(sqlx_error)?.iter().map(sqlite_row).collect()
}

/// Runs `sql` with `args` on a PostgreSQL executor; rows affected.
pub(crate) async fn pg_execute<'e>(
    e: impl Executor<'e, Database = Postgres>,
    sql: &str,
    args: &[Arg<'_>],
) -> Result<u64, StoreError> {
    let done = bind(sqlx::query(sql), args).execute(e).await;
    done.map(|d| d.rows_affected()).map_err(sqlx_error)
}

/// Runs `sql` with `args` on a PostgreSQL executor; its rows.
pub(crate) async fn pg_query<'e>(
    e: impl Executor<'e, Database = Postgres>,
    sql: &str,
    args: &[Arg<'_>],
) -> Result<Vec<Row>, StoreError> {
    let rows = bind(sqlx::query(sql), args).fetch_all(e).await;
    rows.map_err(sqlx_error)?.iter().map(pg_row).collect()
}

/// The read pool: reads, and the administrative writes that do not go through the writer.
#[derive(Clone)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A transaction on the read pool.
pub(crate) enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

impl Db {
    pub async fn execute(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        match self {
            Db::Sqlite(p) => sqlite_execute(p, sql, args).await,
            Db::Postgres(p) => pg_execute(p, sql, args).await,
        }
    }

    pub async fn query(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        match self {
            Db::Sqlite(p) => sqlite_query(p, sql, args).await,
            Db::Postgres(p) => pg_query(p, sql, args).await,
        }
    }

    pub async fn query_one(&self, sql: &str, args: &[Arg<'_>]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, args).await?.into_iter().next())
    }

    /// Starts a transaction that will write (on SQLite, taking the write lock at once).
    pub async fn begin(&self, dialect: &Dialect) -> Result<Tx, StoreError> {
        match self {
            Db::Sqlite(p) => p.begin_with(dialect.begin_write).await.map(Tx::Sqlite),
            Db::Postgres(p) => p.begin_with(dialect.begin_write).await.map(Tx::Postgres),
        }
        .map_err(sqlx_error)
    }

    /// Answers `SELECT 1` within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        let ping = self.execute("SELECT 1", &[]);
        tokio::time::timeout(timeout, ping)
            .await
            .map_err(|_| StoreError::Unavailable("the database did not answer in time".into()))?
            .map(drop)
    }

    pub async fn close(&self) {
        match self {
            Db::Sqlite(p) => p.close().await,
            Db::Postgres(p) => p.close().await,
        }
    }
}

impl Tx {
    pub async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        match self {
            Tx::Sqlite(t) => sqlite_execute(&mut **t, sql, args).await,
            Tx::Postgres(t) => pg_execute(&mut **t, sql, args).await,
        }
    }

    pub async fn query(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        match self {
            Tx::Sqlite(t) => sqlite_query(&mut **t, sql, args).await,
            Tx::Postgres(t) => pg_query(&mut **t, sql, args).await,
        }
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(t) => t.commit().await,
            Tx::Postgres(t) => t.commit().await,
        }
        .map_err(sqlx_error)
    }
}

/// A statement assembled from optional parts, numbering its placeholders as they are added.
pub(crate) struct Select<'a> {
    pub sql: String,
    pub args: Vec<Arg<'a>>,
}

impl<'a> Select<'a> {
    pub fn new(head: &str) -> Self {
        Select {
            sql: head.to_string(),
            args: Vec::new(),
        }
    }

    /// Appends `text` and then a placeholder bound to `arg`.
    pub fn push(&mut self, text: &str, arg: impl Into<Arg<'a>>) -> &mut Self {
        self.args.push(arg.into());
        self.sql.push_str(text);
        self.sql.push('$');
        self.sql.push_str(&self.args.len().to_string());
        self
    }

    pub fn text(&mut self, text: &str) -> &mut Self {
        self.sql.push_str(text);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[(i64, &str, &str)] = &[(1, "a", ""), (2, "b", ""), (3, "c", "")];

    #[test]
    fn a_binary_runs_on_newer_migrations_only_when_each_allows_it() {
        assert_eq!(judge_schema(&[], &[], KNOWN).unwrap(), Vec::<i64>::new());
        assert_eq!(
            judge_schema(&[1, 2, 3], &[], KNOWN).unwrap(),
            Vec::<i64>::new()
        );
        assert_eq!(
            judge_schema(&[1, 2, 3, 4, 5], &[3, 4, 5], KNOWN).unwrap(),
            [4, 5]
        );
        match judge_schema(&[1, 2, 3, 4, 5], &[4], KNOWN) {
            Err(e @ StoreError::SchemaTooNew { .. }) => {
                let StoreError::SchemaTooNew {
                    database,
                    binary,
                    ref refused,
                } = e
                else {
                    unreachable!()
                };
                assert_eq!((database, binary, refused.as_slice()), (5, 3, &[5][..]));
                let line = e.to_string();
                assert!(
                    line.contains("version 5") && line.contains("binary's 3"),
                    "{line}"
                );
                assert!(!line.contains('\n'));
            }
            other => panic!("{other:?}"),
        }
    }

    /// Expand/contract (ARCHITECTURE.md): from `schema_compat` on, every migration's verdict is
    /// recorded exactly once, by itself or by a migration before it (one that runs outside a
    /// transaction holds a single statement, so an earlier one records it), and a migration that
    /// drops or renames a table or column may not claim the previous release still runs on it
    /// (that release's statements would fail on what it removed). Dropping an index is allowed:
    /// no statement names one.
    #[test]
    fn every_migration_records_whether_the_previous_release_may_run_and_tells_the_truth() {
        let uppercase = |sql: &str| {
            let code: String = sql
                .lines()
                .map(|l| l.split("--").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join(" ")
                .to_ascii_uppercase();
            code.split_whitespace().collect::<Vec<_>>().join(" ")
        };
        for postgres in [false, true] {
            let all = crate::store::migrations(postgres);
            let first = all
                .iter()
                .find(|m| m.1 == "schema_compat")
                .expect("the schema_compat migration")
                .0;
            for &(version, name, sql) in all.iter().filter(|m| m.0 >= first) {
                let at = format!("migration {version} ({name}, postgres: {postgres})");
                let row = |verdict: &str| {
                    format!(
                        "INSERT INTO SCHEMA_COMPAT (VERSION, PREVIOUS_MAY_RUN) VALUES ({version}, {verdict})"
                    )
                };
                let recorders: Vec<_> = all
                    .iter()
                    .filter(|m| m.0 <= version)
                    .map(|m| uppercase(m.2))
                    .filter(|c| c.contains(&row("TRUE")) || c.contains(&row("FALSE")))
                    .collect();
                assert_eq!(
                    recorders.len(),
                    1,
                    "{at} must have exactly one schema_compat row, written by itself or an earlier migration"
                );
                let allows = recorders[0].contains(&row("TRUE"));
                let code = uppercase(sql);
                if no_transaction(sql) {
                    assert_eq!(
                        code.trim_end_matches(';').matches(';').count(),
                        0,
                        "{at} runs outside a transaction: one statement only"
                    );
                }
                let contracts = ["DROP TABLE", "DROP COLUMN", "RENAME "]
                    .iter()
                    .any(|w| code.contains(w));
                assert!(
                    !(contracts && allows),
                    "{at} drops or renames, so the previous release may not run on it: record FALSE, or keep what it removes until the release after"
                );
            }
        }
    }
}
