//! SQLite's writer: a thread of its own holding a synchronous connection (rusqlite). A turn
//! costs two thread hand-offs — the commands in, the answers out — however many statements it
//! runs; through an async driver each statement would be a round trip to a worker thread, and
//! on a busy machine every round trip waits to be scheduled. What to write is decided in
//! `store/group.rs`, shared with PostgreSQL's writer; this file only runs the statements.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};

use rusqlite::{Connection, OptionalExtension, Statement, ToSql, TransactionBehavior, params};
use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;

use super::super::group::{
    self, ClaimJob, ClaimRow, Command, Committed, Group, Health, NewDelivery, NewEventRow,
    OutboxSub, Stored, fixed_chunks, sql,
};
use super::ids::{self, Merge, MergeSizes, RecentIds};
use super::{DIALECT, IngestJob, Outcome, StoreError, now_millis};
use crate::event::{Event, Timestamp};
use crate::store::{Claimed, DeliveryStatus};

/// Opens the write connection and starts the writer thread. The returned receiver resolves when
/// the thread has committed its last turn and closed the database.
pub(super) fn spawn(
    path: &Path,
    rx: mpsc::Receiver<Command>,
    wake: Arc<Notify>,
    ids: Arc<RecentIds>,
    merge: MergeSizes,
) -> Result<oneshot::Receiver<()>, StoreError> {
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
    conn.set_prepared_statement_cache_capacity(64);
    let tail = ids::load(&conn, &ids).map_err(db)?;
    tracing::debug!(ids = tail, "event ids not yet in the index, read back");
    let checkpointer = Connection::open(path).map_err(db)?;
    checkpointer
        .execute_batch("PRAGMA busy_timeout = 10000;")
        .map_err(db)?;
    let (stop_checkpoints, stopped) = std::sync::mpsc::channel::<()>();
    let wal_long = Arc::new(AtomicBool::new(false));
    let spawn_error = |e: std::io::Error| StoreError::Sqlite(format!("cannot start a thread: {e}"));
    let flag = wal_long.clone();
    std::thread::Builder::new()
        .name("switchboard-checkpoint".into())
        .spawn(move || checkpoints(checkpointer, &stopped, &flag))
        .map_err(spawn_error)?;
    let (done, finished) = oneshot::channel();
    std::thread::Builder::new()
        .name("switchboard-writer".into())
        .spawn(move || {
            run(conn, rx, &wake, &wal_long, &ids, Merge::new(merge));
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
    StoreError::Sqlite(e.to_string())
}

/// Group commit until shutdown, or until every sender is gone.
fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Command>,
    wake: &Notify,
    wal_long: &AtomicBool,
    ids: &RecentIds,
    mut merge: Merge,
) {
    while let Some(first) = rx.blocking_recv() {
        let (group, stopping) = Group::collect(first, &mut rx);
        if !group.is_empty() {
            let result = commit(&mut conn, &group, ids).map_err(|e| e.to_string());
            group.answer(result, wake);
        }
        if stopping {
            break;
        }
        if let Err(e) = merge.step(&mut conn, ids) {
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
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the database");
    }
}

/// Commits a group; once it is durable, and before it is answered, its new events' `Id`s join
/// the recent ones.
fn commit(conn: &mut Connection, group: &Group, ids: &RecentIds) -> rusqlite::Result<Committed> {
    with_sync(conn, !group.relaxed(), |conn| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (done, added) = write(&tx, group, ids)?;
        tx.commit()?;
        ids.add(added);
        Ok(done)
    })
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

/// Writes a group; returns what to answer and the new events' `(tenant, Id, sequence)`.
fn write<'g>(
    tx: &Connection,
    group: &'g Group,
    ids: &RecentIds,
) -> rusqlite::Result<(Committed, NewIds<'g>)> {
    let now = now_millis();
    let jobs = group.jobs();
    let (ingests, added, new_ids) = write_ingests(tx, &jobs, ids, now)?;
    record_outcomes(tx, &group.sorted_outcomes(), now)?;
    let mut claims = Vec::with_capacity(group.claims.len());
    for ClaimJob(subs, lease_until, _) in &group.claims {
        claims.push(claim(tx, subs, *lease_until, now)?);
    }
    let done = Committed {
        ingests,
        claims,
        deliveries_added: added || !group.outcomes.is_empty(),
    };
    Ok((done, new_ids))
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

/// A group's new events: `(tenant, Id, sequence)`.
type NewIds<'a> = Vec<(&'a str, Uuid, i64)>;

type Ingested<'a> = (Vec<group::JobResult>, bool, NewIds<'a>);

fn write_ingests<'a>(
    tx: &Connection,
    jobs: &[&'a IngestJob],
    ids: &RecentIds,
    received_at: i64,
) -> rusqlite::Result<Ingested<'a>> {
    if jobs.is_empty() {
        return Ok((Vec::new(), false, Vec::new()));
    }
    let mut last = BTreeMap::new();
    let tenants: BTreeSet<&str> = jobs.iter().map(|j| j.tenant.as_str()).collect();
    for tenant in tenants {
        let seq: Option<i64> = tx
            .prepare_cached(DIALECT.lock_tenant)?
            .query_row([tenant], |r| r.get(0))
            .optional()?;
        if let Some(seq) = seq {
            last.insert(tenant, seq);
        }
    }
    let stored = find_stored(tx, jobs, ids)?;
    let decided = group::decide_ingests(jobs, last, &stored, Timestamp::now());
    for chunk in fixed_chunks(&decided.added) {
        insert_events(tx, chunk, received_at)?;
    }
    // Per tenant with new events: their outbox rows, and its new last sequence.
    let mut deliveries = 0;
    for (&tenant, seq) in &decided.advanced {
        let subs = enabled_subscriptions(tx, tenant)?;
        let rows = group::outbox(&decided.added, tenant, &subs);
        for chunk in fixed_chunks(&rows) {
            insert_deliveries(tx, chunk, received_at)?;
        }
        deliveries += rows.len();
        tx.prepare_cached(sql::SET_LAST_SEQUENCE)?
            .execute(params![seq, tenant])?;
    }
    let new_ids = decided
        .added
        .iter()
        .map(|r| (r.tenant, r.id, r.sequence))
        .collect();
    Ok((decided.results, deliveries > 0, new_ids))
}

const EVENT_IDS: &str = "SELECT sequence FROM event_ids WHERE tenant_id = $1 AND id IN (";
const BODIES: &str = "SELECT sequence, body FROM events WHERE tenant_id = $1 AND sequence IN (";

/// `head` — a statement ending in `IN (` — with `tenant` bound to `$1` and `chunk` (at most
/// [`group::IN_LIST`] values) to the list, padded to one of a few lengths with its last value.
pub(super) fn in_list<'c, T: ToSql>(
    tx: &'c Connection,
    head: &str,
    tenant: &str,
    chunk: &[T],
) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
    let padded = group::padded_len(chunk.len());
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
/// padded list per [`group::IN_LIST`] values.
fn select_in<T: ToSql, R>(
    tx: &Connection,
    head: &str,
    tenant: &str,
    values: &[T],
    mut read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<R>,
) -> rusqlite::Result<Vec<R>> {
    let mut out = Vec::with_capacity(values.len());
    for chunk in values.chunks(group::IN_LIST) {
        let mut stmt = in_list(tx, head, tenant, chunk)?;
        let mut rows = stmt.raw_query();
        while let Some(row) = rows.next()? {
            out.push(read(row)?);
        }
    }
    Ok(out)
}

/// `(sequence, body)` of `tenant`'s events stored under `sequences`.
fn bodies(
    tx: &Connection,
    tenant: &str,
    sequences: &[i64],
) -> rusqlite::Result<Vec<(i64, String)>> {
    select_in(tx, BODIES, tenant, sequences, |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
}

/// The stored events among those whose `Id` the group's producers gave: recent ones where
/// memory says, checked against the event stored there; the others through `event_ids`.
fn find_stored<'a>(
    tx: &Connection,
    jobs: &[&'a IngestJob],
    ids: &RecentIds,
) -> rusqlite::Result<Stored<'a>> {
    let mut found = HashMap::new();
    for (tenant, given) in group::given_ids(jobs) {
        let hinted: Vec<i64> = given.iter().filter_map(|id| ids.hint(tenant, id)).collect();
        let keep = |found: &mut Stored<'a>, rows: Vec<(i64, String)>| -> rusqlite::Result<()> {
            for (sequence, body) in rows {
                let event = Event::from_canonical_json(&body).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        1,
                        rusqlite::types::Type::Text,
                        e.into(),
                    )
                })?;
                found.insert((tenant, event.id), (sequence, event));
            }
            Ok(())
        };
        keep(&mut found, bodies(tx, tenant, &hinted)?)?;
        let rest: Vec<&[u8]> = given
            .iter()
            .filter(|id| hinted.is_empty() || !found.contains_key(&(tenant, **id)))
            .map(|id| id.as_bytes().as_slice())
            .collect();
        let sequences = select_in(tx, EVENT_IDS, tenant, &rest, |r| r.get::<_, i64>(0))?;
        keep(&mut found, bodies(tx, tenant, &sequences)?)?;
    }
    Ok(found)
}

fn insert_events(
    tx: &Connection,
    rows: &[NewEventRow<'_>],
    received_at: i64,
) -> rusqlite::Result<()> {
    let values = sql::values(rows.len(), sql::INSERT_EVENTS_COLUMNS, 1);
    let mut stmt = tx.prepare_cached(&format!("{}{values}", sql::INSERT_EVENTS))?;
    let mut b = Binder::new(&mut stmt);
    for r in rows {
        b.bind(r.tenant)?
            .bind(r.sequence)?
            .bind(r.id.to_string())?
            .bind(r.event.creation.as_i64())?
            .bind(i64::from(r.event.category))?
            .bind(i64::from(r.event.code))?
            .bind(r.event.username())?
            .bind(received_at)?
            .bind(r.event.to_canonical_json())?;
    }
    stmt.raw_execute()?;
    Ok(())
}

fn enabled_subscriptions(tx: &Connection, tenant: &str) -> rusqlite::Result<Vec<OutboxSub>> {
    let mut stmt = tx.prepare_cached(sql::ENABLED_SUBSCRIPTIONS)?;
    let rows = stmt.query_map([tenant], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    rows.map(|row| {
        let (id, spec) = row?;
        group::outbox_sub(id, &spec).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, e.into())
        })
    })
    .collect()
}

fn insert_deliveries(tx: &Connection, rows: &[NewDelivery<'_>], now: i64) -> rusqlite::Result<()> {
    let values = sql::values(rows.len(), sql::INSERT_DELIVERIES_COLUMNS, 1);
    let mut stmt = tx.prepare_cached(&format!("{}{values}", sql::INSERT_DELIVERIES))?;
    let mut b = Binder::new(&mut stmt);
    for d in rows {
        b.bind(d.tenant)?
            .bind(d.subscription_id)?
            .bind(&d.event_id)?
            .bind(d.sequence)?
            .bind(d.agent)?
            .bind(DeliveryStatus::Pending.as_str())?
            .bind(now)?
            .bind(now)?
            .bind(now)?;
    }
    stmt.raw_execute()?;
    Ok(())
}

/// Attempts and their deliveries' new state, a chunk of rows per statement; then each
/// subscription's health.
fn record_outcomes(tx: &Connection, outcomes: &[&Outcome], now: i64) -> rusqlite::Result<()> {
    for chunk in fixed_chunks(outcomes) {
        let values = sql::values(chunk.len(), sql::INSERT_ATTEMPTS_COLUMNS, 1);
        let mut stmt = tx.prepare_cached(&format!(
            "{}{values}{}",
            sql::INSERT_ATTEMPTS,
            sql::INSERT_ATTEMPTS_TAIL
        ))?;
        let mut b = Binder::new(&mut stmt);
        for o in chunk {
            b.bind(o.delivery_id)?
                .bind(i64::from(o.attempt))?
                .bind(o.started_at)?
                .bind(o.duration_ms)?
                .bind(o.status_code.map(i64::from))?
                .bind(&o.error)?
                .bind(&o.response_body)?;
        }
        stmt.raw_execute()?;

        let values = sql::values(chunk.len(), sql::UPDATE_DELIVERIES_COLUMNS, 2);
        let mut stmt = tx.prepare_cached(&format!(
            "{}{values}{}",
            sql::UPDATE_DELIVERIES,
            sql::UPDATE_DELIVERIES_TAIL
        ))?;
        let mut b = Binder::new(&mut stmt);
        b.bind(now)?;
        for o in chunk {
            let (status, next_at) = group::delivery_state(o);
            b.bind(o.delivery_id)?
                .bind(status.as_str())?
                .bind(i64::from(o.attempt))?
                .bind(i64::from(o.round_attempt))?
                .bind(next_at)?
                .bind(o.status_code.map(i64::from))?
                .bind(&o.error)?;
        }
        stmt.raw_execute()?;
    }
    for (sub, verdict) in group::health(outcomes) {
        match verdict {
            Health::Disable(reason) => {
                tx.prepare_cached(sql::DISABLE)?
                    .execute(params![reason, now, sub])?;
            }
            Health::Reset => {
                tx.prepare_cached(sql::RESET_FAILURES)?.execute([sub])?;
            }
            Health::Failing(failures) => {
                tx.prepare_cached(sql::COUNT_FAILURES)?
                    .execute(params![now, failures, sub])?;
                tx.prepare_cached(sql::DISABLE_IF_FAILING)?
                    .execute(params![
                        now,
                        sub,
                        group::AUTO_DISABLE_ATTEMPTS,
                        now - group::AUTO_DISABLE_AFTER_MS
                    ])?;
            }
        }
    }
    Ok(())
}

/// Leases up to `n` due deliveries of each subscription and returns them with their bodies.
fn claim(
    tx: &Connection,
    subs: &[(String, u32)],
    lease_until: i64,
    now: i64,
) -> rusqlite::Result<Vec<Claimed>> {
    let mut out = Vec::new();
    let mut known_bodies = group::Bodies::new();
    for (sub_id, n) in subs {
        let mut stmt = tx.prepare_cached(DIALECT.claim)?;
        let rows = stmt
            .query_map(params![lease_until, sub_id, now, i64::from(*n)], |r| {
                Ok(ClaimRow {
                    delivery_id: r.get(0)?,
                    tenant: r.get(1)?,
                    event_id: r.get(2)?,
                    sequence: r.get(3)?,
                    attempts: r.get(4)?,
                    round_attempts: r.get(5)?,
                    created_at: r.get(6)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let Some(tenant) = rows.first().map(|r| r.tenant.clone()) else {
            continue;
        };
        let known = known_bodies.entry(tenant).or_default();
        let missing = group::missing_bodies(&rows, known);
        if !missing.is_empty() {
            let tenant = &rows[0].tenant;
            for (sequence, body) in bodies(tx, tenant, &missing)? {
                known.insert(sequence, body.into());
            }
        }
        out.extend(
            group::claimed(sub_id, rows, known).ok_or(rusqlite::Error::QueryReturnedNoRows)?,
        );
    }
    out.sort_by_key(|c| c.sequence);
    Ok(out)
}
