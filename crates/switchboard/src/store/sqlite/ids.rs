//! SQLite's idempotency index: which sequence each `(tenant, Id)` was stored under.
//!
//! Producers' `Id`s are random GUIDs, so a B-tree keyed by them takes every insert on a
//! different page: with one maintained row by row, each event dirtied a page of its own, which
//! every commit wrote to the WAL and every checkpoint again to the database — the biggest cost
//! of ingest (100-event batches ran at half the speed they reach without it). So the `Id`s of
//! recent events live in memory ([`RecentIds`]), and the writer copies them into the
//! `event_ids` table in bulk ([`Merge`]): many thousands at a time, in key order and a key range
//! per transaction, so each page of the index is written once per merge instead of once per
//! event.
//!
//! Every stored event is in `event_ids` or in memory. The writer adds a group's events to
//! memory after its commit and before answering it; events a crash left out of `event_ids`
//! are those above the tenant's `ids_through`, read back into memory when the writer starts.
//! A batch is dropped from memory only after the transaction that copied it committed, and
//! lookups ask memory first, then the table: nothing is ever missing from both.
//!
//! Memory holds hints, not facts: a sequence from it is trusted only where the event stored
//! under it has that `Id` (a tenant deleted and created again starts its sequences over).
//! `event_ids` is filled from the events themselves, so it holds only facts.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, TransactionBehavior};
use uuid::Uuid;

use super::super::decide;
use super::statements;

type Tails = HashMap<String, HashMap<Uuid, i64>>;

/// The `Id`s not yet (known to be) in `event_ids`, shared by the writer and the readers.
#[derive(Default)]
pub(crate) struct RecentIds(Mutex<Recent>);

#[derive(Default)]
struct Recent {
    /// Added since the batch being merged was taken.
    active: Tails,
    active_len: usize,
    /// The batch being merged into `event_ids`.
    merging: Tails,
    /// Tenants deleted since that batch was taken.
    deleted: HashSet<String>,
}

impl RecentIds {
    fn lock(&self) -> MutexGuard<'_, Recent> {
        // A panic while holding the lock cannot leave the maps half-changed in a way that
        // matters: entries are only hints.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sequence `tenant`'s event `id` may be stored under.
    pub fn hint(&self, tenant: &str, id: &Uuid) -> Option<i64> {
        let recent = self.lock();
        [&recent.active, &recent.merging]
            .into_iter()
            .find_map(|tails| tails.get(tenant)?.get(id).copied())
    }

    /// Remembers newly stored events.
    pub fn add<'a>(&self, rows: impl IntoIterator<Item = (&'a str, Uuid, i64)>) {
        let mut recent = self.lock();
        let mut added = 0;
        for (tenant, id, sequence) in rows {
            let tail = match recent.active.get_mut(tenant) {
                Some(tail) => tail,
                None => recent.active.entry(tenant.to_string()).or_default(),
            };
            tail.insert(id, sequence);
            added += 1;
        }
        recent.active_len += added;
    }

    /// Forgets a deleted tenant.
    pub fn forget(&self, tenant: &str) {
        let mut recent = self.lock();
        if let Some(tail) = recent.active.remove(tenant) {
            recent.active_len -= tail.len();
        }
        recent.merging.remove(tenant);
        recent.deleted.insert(tenant.to_string());
    }

    fn active_len(&self) -> usize {
        self.lock().active_len
    }

    /// Moves what was added into the batch to merge, and returns that batch in key order.
    fn take_batch(&self) -> Vec<(String, Vec<(Uuid, i64)>)> {
        let mut recent = self.lock();
        let batch = std::mem::take(&mut recent.active);
        recent.active_len = 0;
        let mut sorted: Vec<(String, Vec<(Uuid, i64)>)> = batch
            .iter()
            .map(|(tenant, tail)| {
                let mut ids: Vec<(Uuid, i64)> = tail.iter().map(|(k, v)| (*k, *v)).collect();
                ids.sort_unstable();
                (tenant.clone(), ids)
            })
            .collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        recent.merging = batch;
        recent.deleted.clear();
        sorted
    }

    /// Whether `tenant` was deleted since the batch was taken.
    fn deleted(&self, tenant: &str) -> bool {
        self.lock().deleted.contains(tenant)
    }

    fn drop_batch(&self) {
        self.lock().merging = Tails::new();
    }
}

/// Reads back the events above each tenant's `ids_through`: those a crash or a stop left out of
/// `event_ids`.
pub(super) fn load(conn: &Connection, ids: &RecentIds) -> rusqlite::Result<usize> {
    let mut stmt = conn.prepare(
        "SELECT e.tenant_id, e.id, e.sequence FROM tenants t \
         JOIN events e ON e.tenant_id = t.id AND e.sequence > t.ids_through",
    )?;
    let mut rows = stmt.query([])?;
    let mut found: Vec<(String, Uuid, i64)> = Vec::new();
    while let Some(row) = rows.next()? {
        let id: String = row.get(1)?;
        let id = Uuid::parse_str(&id).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, e.into())
        })?;
        found.push((row.get(0)?, id, row.get(2)?));
    }
    ids.add(found.iter().map(|(t, id, s)| (t.as_str(), *id, *s)));
    Ok(found.len())
}

/// How the writer merges: a batch once this many `Id`s are in memory, so many per transaction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MergeSizes {
    pub batch: usize,
    pub per_turn: usize,
}

impl Default for MergeSizes {
    /// 65,536 `Id`s take a few MiB of memory; a turn's 8,192 cover an eighth of the key space,
    /// a short transaction even when the index is large.
    fn default() -> Self {
        MergeSizes {
            batch: 65_536,
            per_turn: 8_192,
        }
    }
}

/// The writer's merge in progress: a batch in key order, and how far it has got.
pub(super) struct Merge {
    sizes: MergeSizes,
    batch: Vec<(String, Vec<(Uuid, i64)>)>,
    /// The next tenant of `batch`, and the next `Id` of that tenant.
    at: (usize, usize),
}

impl Merge {
    pub fn new(sizes: MergeSizes) -> Self {
        Merge {
            sizes,
            batch: Vec::new(),
            at: (0, 0),
        }
    }

    /// One step, between two writer turns: takes a batch when enough `Id`s are in memory, and
    /// copies the next key range of the batch into `event_ids` in a transaction of its own.
    /// The last step also moves each tenant's `ids_through` past the batch.
    pub fn step(&mut self, conn: &mut Connection, ids: &RecentIds) -> rusqlite::Result<()> {
        self.advance(conn, ids, self.sizes.batch).map(drop)
    }

    /// Copies every `Id` still in memory into `event_ids`, at a graceful stop: the next start
    /// has nothing to read back and no merges to catch up on.
    pub fn finish(&mut self, conn: &mut Connection, ids: &RecentIds) -> rusqlite::Result<()> {
        while self.advance(conn, ids, 1)? {}
        Ok(())
    }

    /// Takes a batch when at least `min` `Id`s are in memory, and copies its next key range;
    /// false when there was nothing to do.
    fn advance(
        &mut self,
        conn: &mut Connection,
        ids: &RecentIds,
        min: usize,
    ) -> rusqlite::Result<bool> {
        if self.batch.is_empty() {
            if ids.active_len() < min.max(1) {
                return Ok(false);
            }
            self.batch = ids.take_batch();
            self.at = (0, 0);
        }
        // What a crash may lose here is rebuilt from the events at start: no need to wait for
        // the disk.
        if statements::with_sync(conn, false, |conn| self.copy_range(conn, ids))? {
            self.batch.clear();
            ids.drop_batch();
        }
        Ok(true)
    }

    /// Copies the next [`MergeSizes::per_turn`] `Id`s; true when the batch is done.
    fn copy_range(&mut self, conn: &mut Connection, ids: &RecentIds) -> rusqlite::Result<bool> {
        // IMMEDIATE: no tenant can be deleted or created while this runs (see below).
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (mut tenant, mut next) = self.at;
        let mut budget = self.sizes.per_turn.max(1);
        while budget > 0 && tenant < self.batch.len() {
            let (name, tail) = &self.batch[tenant];
            let end = tail.len().min(next + budget);
            let sequences: Vec<i64> = tail[next..end].iter().map(|(_, s)| *s).collect();
            copy(&tx, name, &sequences)?;
            budget -= end - next;
            if end == tail.len() {
                (tenant, next) = (tenant + 1, 0);
            } else {
                next = end;
            }
        }
        let done = tenant == self.batch.len();
        if done {
            // A tenant deleted since the batch was taken may exist again, its sequences started
            // over: its `ids_through` is left alone (its events are read back at start). One
            // deleted but not yet marked has no row here: it cannot be created again before the
            // mark, and not at all while this transaction holds the write lock.
            let mut stmt = tx.prepare_cached(
                "UPDATE tenants SET ids_through = max(ids_through, $1) WHERE id = $2",
            )?;
            for (name, tail) in &self.batch {
                if ids.deleted(name) {
                    continue;
                }
                if let Some(top) = tail.iter().map(|(_, s)| *s).max() {
                    stmt.execute(rusqlite::params![top, name])?;
                }
            }
        }
        tx.commit()?;
        self.at = (tenant, next);
        Ok(done)
    }
}

/// Copies the `Id`s of `tenant`'s events stored under `sequences` into `event_ids`.
fn copy(tx: &Connection, tenant: &str, sequences: &[i64]) -> rusqlite::Result<()> {
    for chunk in sequences.chunks(decide::IN_LIST) {
        statements::in_list(
            tx,
            "INSERT OR IGNORE INTO event_ids (tenant_id, id, sequence) \
             SELECT tenant_id, unhex(replace(id, '-', '')), sequence FROM events \
             WHERE tenant_id = $1 AND sequence IN (",
            tenant,
            chunk,
        )?
        .raw_execute()?;
    }
    Ok(())
}
