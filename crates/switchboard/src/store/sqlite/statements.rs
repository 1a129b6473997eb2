//! The SQLite writer's statement helpers: `Arg`s bound to rusqlite statements, rows read back
//! as `Row`s, padded `IN (…)` lists, relaxed-sync sections, and what a rusqlite error means.
//! Shared by the writer (`writer.rs`) and the event-id index (`ids.rs`).

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, Statement, ToSql};

use super::super::conn::BodyRow;
use super::super::db::{Arg, Row, Value};
use super::super::{StoreError, decide, sql};
use crate::otel::TraceContext;

pub(super) fn db(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::*;
    match e.sqlite_error_code() {
        // The disk, not the statement: full, failing, read-only, locked past the timeout.
        Some(
            SystemIoFailure | DiskFull | ReadOnly | CannotOpen | DatabaseBusy | DatabaseLocked,
        ) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Db(e.to_string()),
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

pub(super) fn bound<'c>(
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

pub(super) fn row(r: &rusqlite::Row<'_>, columns: usize) -> rusqlite::Result<Row> {
    let mut out = Vec::with_capacity(columns);
    for i in 0..columns {
        out.push(match r.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(v) => Value::Int(v),
            ValueRef::Real(v) => Value::Int(v as i64),
            // `from_utf8` checks a word at a time; the lossy path's chunks, a byte at a time
            // (1.8 % of the writer draining a batched backlog). Invalid text is still replaced.
            ValueRef::Text(t) => Value::Text(match std::str::from_utf8(t) {
                Ok(s) => s.to_owned(),
                Err(_) => String::from_utf8_lossy(t).into_owned(),
            }),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        });
    }
    Ok(Row(out))
}

/// Binds values to a statement's parameters in order.
pub(super) struct Binder<'a, 'c> {
    stmt: &'a mut Statement<'c>,
    n: usize,
}

impl<'a, 'c> Binder<'a, 'c> {
    pub(super) fn new(stmt: &'a mut Statement<'c>) -> Self {
        Binder { stmt, n: 0 }
    }

    pub(super) fn bind<T: ToSql>(&mut self, value: T) -> rusqlite::Result<&mut Self> {
        self.n += 1;
        self.stmt.raw_bind_parameter(self.n, value)?;
        Ok(self)
    }
}

pub(super) const EVENT_IDS: &str =
    "SELECT sequence FROM event_ids WHERE tenant_id = $1 AND id IN (";
pub(super) const BODIES: &str = "SELECT sequence, body, received_at, traceparent, tracestate \
    FROM events WHERE tenant_id = $1 AND sequence IN (";

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
    for v in decide::padded(chunk) {
        b.bind(v)?;
    }
    Ok(stmt)
}

/// What `head` — a statement ending in `IN (` — selects for `tenant` and each of `values`, one
/// padded list per [`decide::IN_LIST`] values.
pub(super) fn select_in<T: ToSql, R>(
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
pub(super) fn bodies(
    tx: &Connection,
    tenant: &str,
    sequences: &[i64],
) -> rusqlite::Result<Vec<BodyRow>> {
    select_in(tx, BODIES, tenant, sequences, |r| {
        Ok(BodyRow {
            sequence: r.get(0)?,
            body: r.get(1)?,
            received_at: r.get(2)?,
            trace: TraceContext::stored(r.get(3)?, r.get(4)?),
        })
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
