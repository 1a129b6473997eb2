//! SQLite's writer: a thread of its own holding a synchronous connection (rusqlite). A turn
//! costs two thread hand-offs — the commands in, the answers out — however many statements it
//! runs; through an async driver each statement would be a round trip to a worker thread, and
//! on a busy machine every round trip waits to be scheduled. The turn itself is `turn::run`,
//! shared with PostgreSQL's writer; this file runs its statements ([`Writer`] is its `Conn`),
//! and keeps the WAL checkpointed and the event ids merged between turns.

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::task::{Context, Poll, Waker};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, Statement, ToSql};
use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;

use super::super::agents::Deferred;
use super::super::command::{Command, Group};
use super::super::db::{Arg, Dialect, Row, Value};
use super::super::decide::{self, fixed_chunks};
use super::super::{Options, Outcome, StoreError, sql, turn};
use super::ids::{self, Merge, MergeSizes, RecentIds};
use crate::clock::Clock;
use crate::subscription::health::Policy;

/// Opens the write connection and starts the writer thread. The returned receiver resolves when
/// the thread has committed its last turn and closed the database.
pub(super) fn spawn(
    path: &Path,
    rx: mpsc::Receiver<Command>,
    wake: Arc<Notify>,
    ids: Arc<RecentIds>,
    merge: MergeSizes,
    options: Options,
    writable: Arc<AtomicBool>,
) -> Result<oneshot::Receiver<()>, StoreError> {
    let (policy, clock) = (options.health, options.clock.clone());
    let conn = Connection::open(path).map_err(db)?;
    // WAL is set (and persists) when the database is opened for migrations; FULL: a committed
    // transaction survives power loss, not only a process crash.
    // Statement journals (multi-row statements inside a transaction) stay in memory; the WAL
    // is checkpointed by a thread of its own (below), not by whichever commit crosses the limit.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000; \
         PRAGMA cache_size = -32000; PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 0;",
    )
    .map_err(db)?;
    if let Some(pages) = options.sqlite_max_pages {
        conn.pragma_update(None, "max_page_count", pages)
            .map_err(db)?;
    }
    // Every shape the turn uses (ten sizes of each multi-row statement and IN list, and the
    // rest) stays prepared.
    conn.set_prepared_statement_cache_capacity(128);
    let tail = ids::load(&conn, &ids).map_err(db)?;
    tracing::debug!(ids = tail, "event ids not yet in the index, read back");
    let checkpointer = Connection::open(path).map_err(db)?;
    checkpointer
        .execute_batch("PRAGMA busy_timeout = 10000;")
        .map_err(db)?;
    let (stop_checkpoints, stopped) = std::sync::mpsc::channel::<()>();
    let wal_long = Arc::new(AtomicBool::new(false));
    let spawn_error = |e: std::io::Error| StoreError::Db(format!("cannot start a thread: {e}"));
    let flag = wal_long.clone();
    std::thread::Builder::new()
        .name("switchboard-checkpoint".into())
        .spawn(move || checkpoints(checkpointer, &stopped, &flag))
        .map_err(spawn_error)?;
    let (done, finished) = oneshot::channel();
    std::thread::Builder::new()
        .name("switchboard-writer".into())
        .spawn(move || {
            let writer = Writer {
                conn,
                ids: &ids,
                relaxed: false,
            };
            let turn = Turn {
                policy,
                clock,
                writable,
            };
            run(writer, rx, &wake, &wal_long, Merge::new(merge), &turn);
            // Dropping the sender stops the checkpoints.
            drop(stop_checkpoints);
            let _ = done.send(());
        })
        .map_err(spawn_error)?;
    Ok(finished)
}

/// How often the WAL is copied back into the database file by the checkpoint thread. Its
/// writes and fsync of the database file delay the commits' fsyncs that overlap them (the
/// open-loop p99 was 17-33 ms with checkpoints every 40 ms-1 s, 4-6 ms with none), so the
/// writer checkpoints itself whenever it falls idle, and this thread only does the work that
/// sustained load leaves; frequent, so each of its checkpoints stays small.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(40);

/// A WAL this many pages long (about 128 MiB) is restarted by the writer between two turns.
const WAL_LIMIT_PAGES: i64 = 32_768;

/// Copies committed WAL frames into the database file, every [`CHECKPOINT_EVERY`], until
/// `stop`'s sender is gone. PASSIVE never blocks the writer or readers, but under steady writes
/// it never reaches the end of the WAL, and the WAL only starts over once a checkpoint has: it
/// would grow without bound (gigabytes in a bulk load), and opening after a crash replays it.
/// So past [`WAL_LIMIT_PAGES`] this thread raises `wal_long`, and the writer — the one that can
/// find a moment with no write in progress — checkpoints it in RESTART mode: everything copied,
/// the next commit writes from the start of the file again (whose blocks stay allocated, so its
/// fsyncs stay cheap). That pause is what a sustained bulk load pays for a bounded WAL.
fn checkpoints(conn: Connection, stop: &std::sync::mpsc::Receiver<()>, wal_long: &AtomicBool) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY)
    {
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1)) {
            Ok(pages) if pages >= WAL_LIMIT_PAGES => wal_long.store(true, AtomicOrdering::SeqCst),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; trying again"),
        }
    }
    let _ = conn.close();
}

fn db(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::*;
    match e.sqlite_error_code() {
        // The disk, not the statement: full, failing, read-only, locked past the timeout.
        Some(
            SystemIoFailure | DiskFull | ReadOnly | CannotOpen | DatabaseBusy | DatabaseLocked,
        ) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Db(e.to_string()),
    }
}

/// Runs a future that never waits — the turn over rusqlite, whose every step completes at once —
/// on this thread.
fn now_or_never<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::yield_now();
    }
}

/// What every turn is run with.
struct Turn {
    policy: Policy,
    clock: Clock,
    writable: Arc<AtomicBool>,
}

/// Group commit until shutdown, or until every sender is gone.
fn run(
    mut writer: Writer<'_>,
    mut rx: mpsc::Receiver<Command>,
    wake: &Notify,
    wal_long: &AtomicBool,
    mut merge: Merge,
    turn: &Turn,
) {
    let mut deferred = Deferred::default();
    while let Some(first) = rx.blocking_recv() {
        let (group, stopping) = Group::collect(first, &mut rx);
        if !group.is_empty() {
            let now = turn.clock.now_ms();
            let turned = turn::run(&mut writer, &group, &turn.policy, now, &mut deferred);
            let result = now_or_never(turned);
            // Once durable, and before any request is answered, the new `Id`s join memory.
            if let Ok(done) = &result {
                for (tenant, ids) in &done.new_ids {
                    writer
                        .ids
                        .add(ids.iter().map(|&(id, seq)| (tenant.as_str(), id, seq)));
                }
            }
            group.answer(result, wake, &turn.writable);
        }
        if stopping {
            break;
        }
        let conn = &mut writer.conn;
        if let Err(e) = merge.step(conn, writer.ids) {
            tracing::warn!(error = %e, "copying event ids into their index failed; trying again");
        }
        // Idle: checkpoint the few frames just committed, so the background checkpoints —
        // which overlap commits — find little to do. Under load the queue is never empty and
        // this never runs; then the WAL is restarted when the checkpoint thread says so.
        let mode = if wal_long.swap(false, AtomicOrdering::SeqCst) {
            Some("RESTART")
        } else {
            rx.is_empty().then_some("PASSIVE")
        };
        if let Some(mode) = mode
            && let Err(e) =
                conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
        {
            tracing::warn!(error = %e, mode, "WAL checkpoint failed");
        }
    }
    if let Err(e) = merge.finish(&mut writer.conn, writer.ids) {
        tracing::warn!(error = %e, "merging event ids at stop failed; they are read back at start");
    }
    if let Err((_, e)) = writer.conn.close() {
        tracing::warn!(error = %e, "closing the database");
    }
}

/// Runs `f`, whose commits wait for the disk only if `durable` (else `synchronous = NORMAL`:
/// for what a crash may lose without harm; the next durable commit flushes it anyway).
pub(super) fn with_sync<R>(
    conn: &mut Connection,
    durable: bool,
    f: impl FnOnce(&mut Connection) -> rusqlite::Result<R>,
) -> rusqlite::Result<R> {
    if durable {
        return f(conn);
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL")?;
    let result = f(conn);
    conn.execute_batch("PRAGMA synchronous = FULL")?;
    result
}

impl ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            Arg::Int(Some(v)) => ToSqlOutput::Borrowed(ValueRef::Integer(v)),
            Arg::Text(Some(v)) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Arg::Int(None) | Arg::Text(None) => ToSqlOutput::Borrowed(ValueRef::Null),
            Arg::Blob(v) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
            Arg::Bool(v) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(v))),
        })
    }
}

fn bound<'c>(
    conn: &'c Connection,
    sql: &str,
    args: &[Arg<'_>],
) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
    let mut stmt = conn.prepare_cached(sql)?;
    for (i, a) in args.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, a)?;
    }
    Ok(stmt)
}

fn row(r: &rusqlite::Row<'_>, columns: usize) -> rusqlite::Result<Row> {
    let mut out = Vec::with_capacity(columns);
    for i in 0..columns {
        out.push(match r.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(v) => Value::Int(v),
            ValueRef::Real(v) => Value::Int(v as i64),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        });
    }
    Ok(Row(out))
}

/// The writer's connection, as the turn sees it.
struct Writer<'a> {
    conn: Connection,
    /// The `Id`s of recent events, asked before `event_ids`.
    ids: &'a RecentIds,
    /// The open transaction's commit need not wait for the disk.
    relaxed: bool,
}

impl Writer<'_> {
    fn restore_sync(&mut self) {
        if std::mem::take(&mut self.relaxed)
            && let Err(e) = self.conn.execute_batch("PRAGMA synchronous = FULL")
        {
            tracing::warn!(error = %e, "restoring synchronous = FULL");
        }
    }
}

impl turn::Conn for Writer<'_> {
    fn dialect(&self) -> &'static Dialect {
        &sql::SQLITE
    }

    async fn begin(&mut self, durable: bool) -> Result<(), StoreError> {
        if !durable {
            self.conn
                .execute_batch("PRAGMA synchronous = NORMAL")
                .map_err(db)?;
            self.relaxed = true;
        }
        self.conn.execute_batch(sql::SQLITE.begin_write).map_err(db)
    }

    async fn commit(&mut self) -> Result<(), StoreError> {
        let done = self.conn.execute_batch("COMMIT").map_err(db);
        self.restore_sync();
        done
    }

    async fn rollback(&mut self) {
        if !self.conn.is_autocommit()
            && let Err(e) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::warn!(error = %e, "rolling back a failed turn");
        }
        self.restore_sync();
    }

    async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let mut stmt = bound(&self.conn, sql, args).map_err(db)?;
        stmt.raw_execute().map(|n| n as u64).map_err(db)
    }

    async fn query(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = bound(&self.conn, sql, args).map_err(db)?;
        let columns = stmt.column_count();
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(db)? {
            out.push(row(r, columns).map_err(db)?);
        }
        Ok(out)
    }

    /// Recent ones where memory says, checked against the event stored there; the others
    /// through `event_ids`.
    async fn stored(
        &mut self,
        tenant: &str,
        given: &[Uuid],
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let hinted: Vec<i64> = given
            .iter()
            .filter_map(|id| self.ids.hint(tenant, id))
            .collect();
        let mut found: Vec<(i64, String)> = bodies(&self.conn, tenant, &hinted)
            .map_err(db)?
            .into_iter()
            .map(|(sequence, body, _)| (sequence, body))
            .collect();
        let known: std::collections::HashSet<Uuid> = found
            .iter()
            .filter_map(|(_, body)| event_id(body))
            .collect();
        let rest: Vec<&[u8]> = given
            .iter()
            .filter(|id| !known.contains(id))
            .map(|id| id.as_bytes().as_slice())
            .collect();
        let sequences =
            select_in(&self.conn, EVENT_IDS, tenant, &rest, |r| r.get::<_, i64>(0)).map_err(db)?;
        let more = bodies(&self.conn, tenant, &sequences).map_err(db)?;
        found.extend(more.into_iter().map(|(sequence, body, _)| (sequence, body)));
        Ok(found)
    }

    async fn bodies(
        &mut self,
        tenant: &str,
        sequences: &[i64],
    ) -> Result<Vec<(i64, String, i64)>, StoreError> {
        bodies(&self.conn, tenant, sequences).map_err(db)
    }

    async fn update_deliveries(
        &mut self,
        now: i64,
        outcomes: &[&Outcome],
    ) -> Result<(), StoreError> {
        for chunk in fixed_chunks(outcomes) {
            let text = sql::UPDATE_DELIVERIES.text(chunk.len());
            let mut stmt = self.conn.prepare_cached(&text).map_err(db)?;
            let mut b = Binder::new(&mut stmt);
            let bind = |b: &mut Binder| -> rusqlite::Result<()> {
                b.bind(now)?;
                for o in chunk {
                    let (status, next_at) = decide::delivery_state(o);
                    b.bind(o.delivery_id)?
                        .bind(status.as_str())?
                        .bind(i64::from(o.attempt))?
                        .bind(i64::from(o.round_attempt))?
                        .bind(next_at)?
                        .bind(o.status_code.map(i64::from))?
                        .bind(&o.error)?;
                }
                Ok(())
            };
            bind(&mut b).map_err(db)?;
            stmt.raw_execute().map_err(db)?;
        }
        Ok(())
    }
}

/// The `Id` in a stored event's canonical JSON, which starts with it.
fn event_id(body: &str) -> Option<Uuid> {
    let rest = body.strip_prefix("{\"Id\":\"")?;
    Uuid::parse_str(rest.get(..36)?).ok()
}

/// Binds values to a statement's parameters in order.
struct Binder<'a, 'c> {
    stmt: &'a mut Statement<'c>,
    n: usize,
}

impl<'a, 'c> Binder<'a, 'c> {
    fn new(stmt: &'a mut Statement<'c>) -> Self {
        Binder { stmt, n: 0 }
    }

    fn bind<T: ToSql>(&mut self, value: T) -> rusqlite::Result<&mut Self> {
        self.n += 1;
        self.stmt.raw_bind_parameter(self.n, value)?;
        Ok(self)
    }
}

const EVENT_IDS: &str = "SELECT sequence FROM event_ids WHERE tenant_id = $1 AND id IN (";
const BODIES: &str =
    "SELECT sequence, body, received_at FROM events WHERE tenant_id = $1 AND sequence IN (";

/// `head` — a statement ending in `IN (` — with `tenant` bound to `$1` and `chunk` (at most
/// [`decide::IN_LIST`] values) to the list, padded to one of a few lengths with its last value.
pub(super) fn in_list<'c, T: ToSql>(
    tx: &'c Connection,
    head: &str,
    tenant: &str,
    chunk: &[T],
) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
    let padded = decide::padded_len(chunk.len());
    let mut stmt = tx.prepare_cached(&format!("{head}{}", sql::list(padded, 2)))?;
    let mut b = Binder::new(&mut stmt);
    b.bind(tenant)?;
    for v in chunk {
        b.bind(v)?;
    }
    if let Some(last) = chunk.last() {
        for _ in chunk.len()..padded {
            b.bind(last)?;
        }
    }
    Ok(stmt)
}

/// What `head` — a statement ending in `IN (` — selects for `tenant` and each of `values`, one
/// padded list per [`decide::IN_LIST`] values.
fn select_in<T: ToSql, R>(
    tx: &Connection,
    head: &str,
    tenant: &str,
    values: &[T],
    mut read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<R>,
) -> rusqlite::Result<Vec<R>> {
    let mut out = Vec::with_capacity(values.len());
    for chunk in values.chunks(decide::IN_LIST) {
        let mut stmt = in_list(tx, head, tenant, chunk)?;
        let mut rows = stmt.raw_query();
        while let Some(row) = rows.next()? {
            out.push(read(row)?);
        }
    }
    Ok(out)
}

/// `(sequence, body, received_at)` of `tenant`'s events stored under `sequences`.
fn bodies(
    tx: &Connection,
    tenant: &str,
    sequences: &[i64],
) -> rusqlite::Result<Vec<(i64, String, i64)>> {
    select_in(tx, BODIES, tenant, sequences, |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk (here: SQLite's page limit, which fails the same way) is the database being
    /// unavailable — a 503 the client may retry — not an error of the request; and the
    /// connection writes again once there is room.
    #[test]
    fn a_full_disk_is_unavailable_and_the_connection_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("full.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (v TEXT); PRAGMA max_page_count = 3;")
            .unwrap();
        let fill = || conn.execute("INSERT INTO t VALUES (?1)", ["x".repeat(2000)]);
        let err = (0..100)
            .find_map(|_| fill().err())
            .expect("the database fills up");
        assert!(
            matches!(db(err), StoreError::Unavailable(_)),
            "disk full is unavailable"
        );
        conn.execute_batch("PRAGMA max_page_count = 1000").unwrap();
        fill().expect("writes again once there is room");
        let bad = conn
            .execute("INSERT INTO nowhere VALUES (1)", [])
            .unwrap_err();
        assert!(
            matches!(db(bad), StoreError::Db(_)),
            "a bad statement is not"
        );
    }
}
