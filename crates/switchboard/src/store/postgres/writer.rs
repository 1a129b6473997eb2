//! PostgreSQL's writer: an async task owning one connection, running `turn::run` ([`Writer`] is
//! its `Conn`; each statement is a network round trip, so rows go many to a statement).
//!
//! A connection lost (a database restart, a failover, `pg_terminate_backend`) fails the turn it
//! happened in — its transaction is gone with the connection, so nothing of it was stored and
//! no request of it is acknowledged — and the writer connects again, with backoff and jitter,
//! before its next turn. Meanwhile turns fail at once with `StoreError::Unavailable`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Executor};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::super::agents::Deferred;
use super::super::command::{Command, Group};
use super::super::conn::BodyRow;
use super::super::db::{Arg, Dialect, Row, pg_execute, pg_query, pg_row, sqlx_error};
use super::super::decide;
use super::super::sql::MultiRow;
use super::super::{Handoff, Options, Outcome, StoreError, agents, conn, sql, turn};
use crate::clock::Backoff;
use crate::otel::TraceContext;
use crate::store::Clock;
use crate::subscription::health::Policy;

/// Starts the writer on a thread of its own, connected there; the returned receiver resolves
/// when it has committed its last turn and closed the connection. `name` names the thread.
///
/// Its own thread, with a single-threaded runtime, rather than a task among the node's: a turn
/// is nine or ten statements one after the other, and as a task each answer from the database
/// waited for a turn on the runtime's workers behind every request in flight — on PostgreSQL
/// the ingest connection sat idle for two thirds of each turn (docs/BENCHMARKS.md, "ninth
/// session"). Here its connection's reactor is its own, and the thread is woken as soon as an
/// answer arrives. Its connection is made on that runtime, so that its socket is driven there.
pub(super) async fn spawn(
    name: &str,
    connect: PgConnectOptions,
    rx: mpsc::Receiver<Command>,
    wake: Arc<Handoff>,
    options: Options,
    writable: Arc<AtomicBool>,
) -> Result<oneshot::Receiver<()>, StoreError> {
    let (done, finished) = oneshot::channel();
    let (started, connected) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Db(format!("cannot start the writer's runtime: {e}")))?;
    let turns = Turns {
        rx,
        wake,
        writable,
        policy: options.health,
        clock: options.clock,
        deferred: Deferred::new(options.group_fields),
    };
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || runtime.block_on(serve(connect, turns, started, done)))
        .map_err(|e| StoreError::Db(format!("cannot start a thread: {e}")))?;
    match connected.await {
        Ok(result) => result.map(|()| finished),
        Err(_) => Err(StoreError::Db(
            "the writer's thread ended at its start".into(),
        )),
    }
}

/// What a writer's turns need besides its connection.
struct Turns {
    rx: mpsc::Receiver<Command>,
    wake: Arc<Handoff>,
    writable: Arc<AtomicBool>,
    policy: Policy,
    clock: Clock,
    deferred: Deferred,
}

/// The writer's life on its thread: connects (and says on `started` whether it could), then runs
/// a turn for each group of commands until the last, and closes the connection (then `done`).
async fn serve(
    connect: PgConnectOptions,
    mut t: Turns,
    started: oneshot::Sender<Result<(), StoreError>>,
    done: oneshot::Sender<()>,
) {
    let conn = match PgConnection::connect_with(&connect).await {
        Ok(conn) => conn,
        Err(e) => {
            let _ = started.send(Err(sqlx_error(e)));
            return;
        }
    };
    if started.send(Ok(())).is_err() {
        return;
    }
    let mut writer = Writer {
        options: connect,
        conn: Some(conn),
        retry: Backoff::new(Duration::from_millis(50), Duration::from_secs(2)),
        not_before: None,
        subscriptions: conn::Subscriptions::default(),
    };
    while let Some(first) = t.rx.recv().await {
        let (group, stopping) = Group::collect(first, &mut t.rx);
        if !group.is_empty() {
            let now = t.clock.now_ms();
            let result = match writer.connected().await {
                Ok(()) => {
                    let deferred = &mut t.deferred;
                    turn::run(&mut writer, &group, &t.policy, now, deferred, &t.wake).await
                }
                Err(e) => Err(e),
            };
            if let Err(StoreError::Unavailable(_)) = &result {
                // The connection is not to be trusted again; the next turn opens another.
                writer.conn = None;
            }
            group.answer(result, &t.wake, &t.writable);
        }
        if stopping {
            break;
        }
    }
    if let Some(conn) = writer.conn.take() {
        let _ = conn.close().await;
    }
    let _ = done.send(());
}

struct Writer {
    options: PgConnectOptions,
    /// None after a connection error, until connected again.
    conn: Option<PgConnection>,
    /// 50 ms after the first failure to connect, doubling to 2 s.
    retry: Backoff,
    /// No try before then.
    not_before: Option<Instant>,
    /// The enabled subscriptions as decoded, kept across turns (and reconnections: they are
    /// checked against the database in every turn).
    subscriptions: conn::Subscriptions,
}

fn gone() -> StoreError {
    StoreError::Unavailable("the writer's database connection is down".into())
}

impl Writer {
    /// Connects again if the connection was lost, unless the last try was too recent.
    async fn connected(&mut self) -> Result<(), StoreError> {
        if self.conn.is_some() {
            return Ok(());
        }
        if self.not_before.is_some_and(|t| Instant::now() < t) {
            return Err(gone());
        }
        let connect = PgConnection::connect_with(&self.options);
        match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(conn)) => {
                tracing::info!(
                    after = self.retry.failures(),
                    "writer reconnected to the database"
                );
                metrics::counter!(crate::telemetry::DB_RECONNECTS).increment(1);
                self.conn = Some(conn);
                self.retry.succeeded();
                self.not_before = None;
                Ok(())
            }
            Ok(Err(e)) => {
                self.not_before = Some(Instant::now() + self.retry.failed());
                tracing::warn!(error = %e, "writer cannot reach the database; retrying");
                Err(StoreError::Unavailable(e.to_string()))
            }
            Err(_) => {
                self.not_before = Some(Instant::now() + self.retry.failed());
                tracing::warn!("writer cannot reach the database (timed out); retrying");
                Err(gone())
            }
        }
    }

    fn conn(&mut self) -> Result<&mut PgConnection, StoreError> {
        self.conn.as_mut().ok_or_else(gone)
    }
}

/// `(sequence, body)` of `tenant`'s events whose id, or sequence, is in the array `$2`. The
/// array is joined, not spelled out as an `IN` list: one statement shape for any length. Each
/// key is looked up on its own (a `LATERAL` subquery with a `LIMIT` is never merged into a
/// join), so the plan is one index probe per key whatever the table's statistics say: joined
/// plainly, a table that grew since its last ANALYZE (a new deployment, in its first minute)
/// was hashed whole for each batch of keys, and the turn slowed down with every event stored.
pub(in crate::store) const FIND_STORED: &str = "SELECT e.sequence, e.body FROM unnest($2::text[]) AS k(id) \
    CROSS JOIN LATERAL (SELECT sequence, body FROM events \
      WHERE tenant_id = $1 AND id = k.id LIMIT 1) e";
/// [`FIND_STORED`] for several tenants: `$1` and `$2` pair each id with its tenant.
const FIND_STORED_OF: &str = "SELECT k.tenant, e.sequence, e.body \
    FROM unnest($1::text[], $2::text[]) AS k(tenant, id) \
    CROSS JOIN LATERAL (SELECT sequence, body FROM events \
      WHERE tenant_id = k.tenant AND id = k.id LIMIT 1) e";
/// The stored agents of (tenant, username) pairs, an index probe each (see [`FIND_STORED_OF`]).
const AGENTS_OF: &str = "SELECT k.tenant, a.username, a.state \
    FROM unnest($1::text[], $2::text[]) AS k(tenant, username) \
    CROSS JOIN LATERAL (SELECT username, state FROM agents \
      WHERE tenant_id = k.tenant AND username = k.username LIMIT 1) a";
pub(in crate::store) const CLAIMED_BODIES: &str = "SELECT e.sequence, e.body, e.received_at, \
    e.traceparent, e.tracestate FROM unnest($2::int8[]) AS k(seq) \
    CROSS JOIN LATERAL (SELECT sequence, body, received_at, traceparent, tracestate FROM events \
      WHERE tenant_id = $1 AND sequence = k.seq LIMIT 1) e";

/// `$1` is the time; the columns follow as arrays, in the order of [`UpdateColumns`]. Arrays
/// joined, not a VALUES list: see [`FIND_STORED`]. Only a delivery still holding the attempt's
/// lease changes state (see `sql::UPDATE_DELIVERIES`).
const UPDATE_DELIVERIES: &str = "UPDATE deliveries SET \
    status = CASE WHEN deliveries.lease_until = v.lease THEN v.status \
      ELSE deliveries.status END, \
    attempt_count = GREATEST(deliveries.attempt_count, v.attempt), \
    round_attempts = CASE WHEN deliveries.lease_until = v.lease THEN v.round \
      ELSE deliveries.round_attempts END, \
    next_attempt_at = CASE WHEN deliveries.lease_until = v.lease THEN v.next_at \
      ELSE deliveries.next_attempt_at END, \
    lease_until = CASE WHEN deliveries.lease_until = v.lease THEN NULL \
      ELSE deliveries.lease_until END, \
    last_status_code = v.code, last_error = v.error, updated_at = $1 \
    FROM unnest($2::int8[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], \
      $8::text[], $9::int8[]) AS v(id, status, attempt, round, next_at, code, error, lease) \
    WHERE deliveries.id = v.id";

/// A delivery's new state after an attempt, as one array per column.
#[derive(Default)]
struct UpdateColumns<'a> {
    id: Vec<i64>,
    status: Vec<&'a str>,
    attempt: Vec<i64>,
    round: Vec<i64>,
    next_at: Vec<Option<i64>>,
    code: Vec<Option<i64>>,
    error: Vec<Option<&'a str>>,
    lease: Vec<i64>,
}

impl Writer {
    /// The rows of `sql`, run with `tenant` as `$1` and `values` as the array `$2`, each read
    /// by `read`.
    async fn keyed_rows<T, R>(
        &mut self,
        sql: &str,
        tenant: &str,
        values: &[T],
        read: impl Fn(&mut Row) -> Result<R, StoreError>,
    ) -> Result<Vec<R>, StoreError>
    where
        for<'q> &'q [T]: sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
        T: Sync,
    {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(sql)
            .bind(tenant)
            .bind(values)
            .fetch_all(self.conn()?)
            .await
            .map_err(sqlx_error)?;
        rows.iter().map(|row| read(&mut pg_row(row)?)).collect()
    }

    /// The rows of `sql`, run with the (tenant, key) pairs of `given` — each tenant with each
    /// of its keys — as two arrays, the tenants `$1` and the keys (as text) `$2`.
    async fn by_pairs<K: ToString>(
        &mut self,
        sql: &str,
        given: &BTreeMap<&str, Vec<K>>,
    ) -> Result<Vec<Row>, StoreError> {
        let (mut tenants, mut keys) = (Vec::new(), Vec::new());
        for (tenant, given) in given {
            for key in given {
                tenants.push(*tenant);
                keys.push(key.to_string());
            }
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(sql)
            .bind(&tenants)
            .bind(&keys)
            .fetch_all(self.conn()?)
            .await
            .map_err(sqlx_error)?;
        rows.iter().map(pg_row).collect()
    }
}

/// One column of a multi-row insert, as the array `unnest` joins.
enum Column<'a> {
    Int(Vec<Option<i64>>),
    Text(Vec<Option<&'a str>>),
    Bool(Vec<bool>),
}

impl<'a> Column<'a> {
    /// An empty column of `first`'s type; `None` for a type sent row by row (blobs).
    fn of(first: &Arg<'_>, rows: usize) -> Option<Self> {
        match first {
            Arg::Int(_) => Some(Column::Int(Vec::with_capacity(rows))),
            Arg::Text(_) => Some(Column::Text(Vec::with_capacity(rows))),
            Arg::Bool(_) => Some(Column::Bool(Vec::with_capacity(rows))),
            Arg::Blob(_) => None,
        }
    }

    /// Adds `value`; false if it is not of the column's type.
    fn push(&mut self, value: &Arg<'a>) -> bool {
        match (self, *value) {
            (Column::Int(c), Arg::Int(v)) => c.push(v),
            (Column::Text(c), Arg::Text(v)) => c.push(v),
            (Column::Bool(c), Arg::Bool(v)) => c.push(v),
            _ => return false,
        }
        true
    }

    fn pg_type(&self) -> &'static str {
        match self {
            Column::Int(_) => "int8",
            Column::Text(_) => "text",
            Column::Bool(_) => "bool",
        }
    }
}

/// `text` (an `unnest` statement) with `arrays` bound.
fn unnested<'q>(
    text: &'q str,
    arrays: &'q [Column<'q>],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let mut query = sqlx::query(text);
    for column in arrays {
        query = match column {
            Column::Int(v) => query.bind(v),
            Column::Text(v) => query.bind(v),
            Column::Bool(v) => query.bind(v),
        };
    }
    query
}

/// `values`, `columns` a row, as one array a column; `None` if a column is of a type sent row by
/// row or mixes types.
fn columns<'a>(values: &[Arg<'a>], columns: usize) -> Option<Vec<Column<'a>>> {
    let rows = values.len() / columns;
    let mut out = (values[..columns].iter())
        .map(|a| Column::of(a, rows))
        .collect::<Option<Vec<_>>>()?;
    for row in values.chunks(columns) {
        for (column, value) in out.iter_mut().zip(row) {
            if !column.push(value) {
                return None;
            }
        }
    }
    Some(out)
}

impl conn::Conn for Writer {
    fn dialect(&self) -> &'static Dialect {
        &sql::POSTGRES
    }

    fn subscriptions(&mut self) -> &mut conn::Subscriptions {
        &mut self.subscriptions
    }

    async fn begin(&mut self, durable: bool) -> Result<(), StoreError> {
        // One round trip either way (a simple query may hold two statements).
        let begin = match durable {
            true => "BEGIN",
            false => "BEGIN; SET LOCAL synchronous_commit = off",
        };
        (self.conn()?.execute(begin).await)
            .map(drop)
            .map_err(sqlx_error)
    }

    async fn commit(&mut self, announce: &[String]) -> Result<(), StoreError> {
        // The notifications and the commit in one simple query, one round trip: its statements
        // run in order, and an error in the first skips the `COMMIT` (the turn rolls back).
        let commit = match announce {
            [] => "COMMIT".to_string(),
            _ => format!("{}; COMMIT", sql::notify_literals(announce)),
        };
        self.conn()?
            .execute(commit.as_str())
            .await
            .map(drop)
            .map_err(sqlx_error)
    }

    async fn rollback(&mut self) {
        if let Some(conn) = self.conn.as_mut()
            && let Err(e) = conn.execute("ROLLBACK").await
        {
            tracing::warn!(error = %e, "rolling back a failed turn");
        }
    }

    async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        pg_execute(self.conn()?, sql, args).await
    }

    async fn query(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        pg_query(self.conn()?, sql, args).await
    }

    async fn stored(
        &mut self,
        tenant: &str,
        ids: &[Uuid],
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        self.keyed_rows(FIND_STORED, tenant, &ids, |r| Ok((r.int(0)?, r.text(1)?)))
            .await
    }

    async fn stored_of(
        &mut self,
        given: &BTreeMap<&str, Vec<Uuid>>,
    ) -> Result<Vec<(String, i64, String)>, StoreError> {
        if given.len() < 2 {
            return conn::stored_each(self, given).await;
        }
        let rows = self.by_pairs(FIND_STORED_OF, given).await?;
        rows.into_iter()
            .map(|mut r| Ok((r.text(0)?, r.int(1)?, r.text(2)?)))
            .collect()
    }

    async fn agents_of(
        &mut self,
        wanted: &BTreeMap<&str, Vec<&str>>,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        if wanted.len() < 2 {
            return agents::states_each(self, wanted).await;
        }
        let rows = self.by_pairs(AGENTS_OF, wanted).await?;
        rows.into_iter()
            .map(|mut r| Ok((r.text(0)?, r.text(1)?, r.text(2)?)))
            .collect()
    }

    async fn bodies(
        &mut self,
        tenant: &str,
        sequences: &[i64],
    ) -> Result<Vec<BodyRow>, StoreError> {
        self.keyed_rows(CLAIMED_BODIES, tenant, sequences, |r| {
            Ok(BodyRow {
                sequence: r.int(0)?,
                body: r.text(1)?,
                received_at: r.int(2)?,
                trace: TraceContext::stored(r.opt_text(3)?, r.opt_text(4)?),
            })
        })
        .await
    }

    async fn insert(
        &mut self,
        statement: &'static MultiRow,
        values: &[Arg<'_>],
    ) -> Result<u64, StoreError> {
        if values.is_empty() {
            return Ok(0);
        }
        let Some(arrays) = columns(values, statement.columns) else {
            return conn::insert_chunked(self, statement, values).await;
        };
        let text = statement.unnest(&arrays.iter().map(Column::pg_type).collect::<Vec<_>>());
        let done = unnested(&text, &arrays)
            .execute(self.conn()?)
            .await
            .map_err(sqlx_error)?;
        Ok(done.rows_affected())
    }

    async fn insert_returning(
        &mut self,
        statement: &'static MultiRow,
        values: &[Arg<'_>],
    ) -> Result<Vec<Row>, StoreError> {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let Some(arrays) = columns(values, statement.columns) else {
            return conn::insert_chunked_rows(self, statement, values).await;
        };
        let text = statement.unnest(&arrays.iter().map(Column::pg_type).collect::<Vec<_>>());
        let rows = unnested(&text, &arrays)
            .fetch_all(self.conn()?)
            .await
            .map_err(sqlx_error)?;
        rows.iter().map(pg_row).collect()
    }

    async fn update_deliveries(
        &mut self,
        now: i64,
        outcomes: &[&Outcome],
    ) -> Result<(), StoreError> {
        let mut v = UpdateColumns::default();
        for o in outcomes {
            let (status, next_at) = decide::delivery_state(o);
            v.id.push(o.delivery_id);
            v.status.push(status.as_str());
            v.attempt.push(i64::from(o.attempt));
            v.round.push(i64::from(o.round_attempt));
            v.next_at.push(next_at);
            v.code.push(o.status_code.map(i64::from));
            v.error.push(o.error.as_deref());
            v.lease.push(o.lease_until);
        }
        sqlx::query(UPDATE_DELIVERIES)
            .bind(now)
            .bind(&v.id)
            .bind(&v.status)
            .bind(&v.attempt)
            .bind(&v.round)
            .bind(&v.next_at)
            .bind(&v.code)
            .bind(&v.error)
            .bind(&v.lease)
            .execute(self.conn()?)
            .await
            .map_err(sqlx_error)?;
        Ok(())
    }
}
