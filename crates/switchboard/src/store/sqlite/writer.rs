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

use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::super::agents::Deferred;
use super::super::command::{Command, Group};
use super::super::conn::BodyRow;
use super::super::db::{Arg, Dialect, Row};
use super::super::decide::{self, fixed_chunks};
use super::super::{Handoff, Options, Outcome, StoreError, conn, sql, turn};
use super::ids::{self, Merge, MergeSizes, RecentIds};
use super::statements::{Binder, EVENT_IDS, bodies, bound, db, row, select_in};
use crate::clock::Clock;
use crate::subscription::health::Policy;

/// Opens the write connection and starts the writer thread. The returned receiver resolves when
/// the thread has committed its last turn and closed the database.
pub(super) fn spawn(
    path: &Path,
    rx: mpsc::Receiver<Command>,
    wake: Arc<Handoff>,
    ids: Arc<RecentIds>,
    merge: MergeSizes,
    options: Options,
    writable: Arc<AtomicBool>,
) -> Result<oneshot::Receiver<()>, StoreError> {
    let (policy, clock) = (options.health, options.clock.clone());
    let groups = options.group_fields.clone();
    let conn = Connection::open(path).map_err(db)?;
    // WAL is set (and persists) when the database is opened for migrations; FULL: a committed
    // transaction survives power loss, not only a process crash.
    // Statement journals (multi-row statements inside a transaction) stay in memory; the WAL
    // is checkpointed by a thread of its own (below), not by whichever commit crosses the limit.
    // Freed space is zeroed (`secure_delete`), so an erased value stays in no free page.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000; \
         PRAGMA cache_size = -32000; PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 0; \
         PRAGMA secure_delete = ON;",
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
    // Claims held in memory (`turn::claim`): the claims' statements leave out the rows held.
    let held = conn::HeldClaims::new(wake.held_claims());
    let shared = held.shared();
    conn.create_scalar_function("sb_held", 3, FunctionFlags::SQLITE_UTF8, move |ctx| {
        let (id, lease_until, now) = (ctx.get(0)?, ctx.get(1)?, ctx.get(2)?);
        Ok(conn::holds(&conn::lock(&shared), id, lease_until, now))
    })
    .map_err(db)?;
    let (done, finished) = oneshot::channel();
    std::thread::Builder::new()
        .name("switchboard-writer".into())
        .spawn(move || {
            let writer = Writer {
                conn,
                ids: &ids,
                relaxed: false,
                subscriptions: conn::Subscriptions::default(),
                cursors: conn::ClaimCursors::default(),
                held,
                wake: wake.clone(),
            };
            let settings = Settings {
                policy,
                clock,
                writable,
                groups,
            };
            run(writer, rx, &wake, &wal_long, Merge::new(merge), &settings);
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

/// Runs the turn over rusqlite to its end on this thread. Its every step completes when first
/// polled (rusqlite blocks; nothing in the turn waits on a timer or a channel), so one poll
/// finishes it; a turn that did wait would be a bug, and it stops the writer loudly rather
/// than spinning.
fn complete<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("a writer turn over rusqlite waited on something"),
    }
}

/// The writer's settings: what every turn is run with.
struct Settings {
    policy: Policy,
    clock: Clock,
    writable: Arc<AtomicBool>,
    groups: crate::agent::GroupFields,
}

/// Group commit until shutdown, or until every sender is gone.
fn run(
    mut writer: Writer<'_>,
    mut rx: mpsc::Receiver<Command>,
    wake: &Handoff,
    wal_long: &AtomicBool,
    mut merge: Merge,
    settings: &Settings,
) {
    let mut deferred = Deferred::new(settings.groups.clone());
    while let Some(first) = rx.blocking_recv() {
        let (group, stopping) = Group::collect(first, &mut rx);
        if !group.is_empty() {
            let now = settings.clock.now_ms();
            let turned = turn::run(
                &mut writer,
                &group,
                &settings.policy,
                now,
                &mut deferred,
                wake,
            );
            let result = complete(turned);
            // Once durable, and before any request is answered, the new `Id`s join memory.
            if let Ok(done) = &result {
                for (tenant, ids) in &done.new_ids {
                    writer
                        .ids
                        .add(ids.iter().map(|&(id, seq)| (tenant.as_str(), id, seq)));
                }
            }
            group.answer(result, wake, &settings.writable);
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

/// The writer's connection, as the turn sees it.
struct Writer<'a> {
    conn: Connection,
    /// The `Id`s of recent events, asked before `event_ids`.
    ids: &'a RecentIds,
    /// The open transaction's commit need not wait for the disk.
    relaxed: bool,
    /// The enabled subscriptions as decoded, kept across turns.
    subscriptions: conn::Subscriptions,
    /// Where the recent claims ended: one process owns the database and this thread is its
    /// only writer, so no other claim moves past them.
    cursors: conn::ClaimCursors,
    /// The claims held in memory: one process owns the database, and this thread is the only
    /// one that claims or records outcomes.
    held: conn::HeldClaims,
    wake: Arc<Handoff>,
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

impl conn::Conn for Writer<'_> {
    fn dialect(&self) -> &'static Dialect {
        &sql::SQLITE
    }

    fn subscriptions(&mut self) -> &mut conn::Subscriptions {
        &mut self.subscriptions
    }

    fn claim_cursors(&mut self) -> Option<&mut conn::ClaimCursors> {
        Some(&mut self.cursors)
    }

    fn held(&mut self) -> Option<(&mut conn::HeldClaims, &Handoff)> {
        Some((&mut self.held, &self.wake))
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

    async fn commit(&mut self, _announce: &[String]) -> Result<(), StoreError> {
        let done = self.conn.execute_batch("COMMIT").map_err(db);
        self.restore_sync();
        if done.is_ok() {
            self.held.committed();
        }
        done
    }

    async fn rollback(&mut self) {
        if !self.conn.is_autocommit()
            && let Err(e) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::warn!(error = %e, "rolling back a failed turn");
        }
        self.held.rolled_back();
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
            .map(|b| (b.sequence, b.body))
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
        found.extend(more.into_iter().map(|b| (b.sequence, b.body)));
        Ok(found)
    }

    async fn bodies(
        &mut self,
        tenant: &str,
        sequences: &[i64],
    ) -> Result<Vec<BodyRow>, StoreError> {
        bodies(&self.conn, tenant, sequences).map_err(db)
    }

    async fn update_deliveries(
        &mut self,
        now: i64,
        outcomes: &[&Outcome],
    ) -> Result<(), StoreError> {
        for chunk in fixed_chunks(outcomes) {
            // A claim held in memory is fenced with the row's value its claim read, a claim in
            // the row with its lease (`sql::UPDATE_DELIVERIES`).
            let fences: Vec<Option<i64>> = (chunk.iter())
                .map(|o| {
                    (self.held.release(o.delivery_id, o.lease_until)).unwrap_or(Some(o.lease_until))
                })
                .collect();
            let text = sql::UPDATE_DELIVERIES.text(chunk.len());
            let mut stmt = self.conn.prepare_cached(&text).map_err(db)?;
            let mut b = Binder::new(&mut stmt);
            let bind = |b: &mut Binder| -> rusqlite::Result<()> {
                b.bind(now)?;
                for (o, fence) in chunk.iter().zip(&fences) {
                    let (status, next_at) = decide::delivery_state(o);
                    b.bind(o.delivery_id)?
                        .bind(status.as_str())?
                        .bind(i64::from(o.attempt))?
                        .bind(i64::from(o.round_attempt))?
                        .bind(next_at)?
                        .bind(o.status_code.map(i64::from))?
                        .bind(&o.error)?
                        .bind(*fence)?
                        .bind(o.subscription_id.as_str())?;
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
