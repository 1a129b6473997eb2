//! Retention (DESIGN §11): events older than the retention period — by `received_at` — are
//! purged with their finished deliveries and those deliveries' attempts; an event with a
//! delivery still pending stays until it is delivered or failed. System events go the same way.
//! The `Id` idempotency window is the retention period: an `Id` posted again after its event
//! was purged is a new event.
//!
//! Each batch is a command of the writer, run in its turn like any write: on SQLite a purge
//! beside the writer would contend for the one write lock, and a writer kept waiting sleeps in
//! SQLite's busy handler for tens of milliseconds. Batches are small and the purge waits a
//! little between them, so that ingest never waits long behind one.

use std::time::Duration;

use tokio::sync::oneshot;

use super::command::{Command, PurgeJob, PurgeStep};
use super::conn::Conn;
use super::db::{Arg, Select, args};
use super::{Store, StoreError};

/// Events examined per batch.
pub const PURGE_BATCH: i64 = 200;
/// The least pause between two batches. Each pause is also at least four times as long as the
/// batch took (queueing included), so the purge takes at most about a fifth of the writer, and
/// less the busier it is; its WAL stays small enough for the background checkpoints.
const PAUSE: Duration = Duration::from_millis(20);

/// What a purge removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub events: u64,
    pub system_events: u64,
    pub deliveries: u64,
}

impl Purged {
    fn add(&mut self, other: Purged) {
        self.events += other.events;
        self.system_events += other.system_events;
        self.deliveries += other.deliveries;
    }
}

impl Store {
    /// Purges everything received before `cutoff` (unix ms) that may go, batch by batch;
    /// returns what it removed.
    pub async fn purge(&self, cutoff: i64) -> Result<Purged, StoreError> {
        let mut total = Purged::default();
        let tenants = self.0.db.query("SELECT id FROM tenants", &[]).await?;
        let mut passes: Vec<Option<String>> = Vec::with_capacity(tenants.len() + 1);
        for mut t in tenants {
            passes.push(Some(t.text(0)?));
        }
        passes.push(None);
        for tenant in passes {
            // The intervals projection folds what is about to go first (a purge stops at the
            // last event it holds).
            if let Some(t) = &tenant {
                self.catch_up_kept_intervals(t).await?;
            }
            // Past the events that must stay (pending deliveries), batch after batch.
            let mut after = 0;
            loop {
                let job = PurgeJob {
                    tenant: tenant.clone(),
                    after,
                    cutoff,
                };
                let (reply, answer) = oneshot::channel();
                let started = std::time::Instant::now();
                let step = self.turn(Command::Purge(job, reply), answer).await?;
                let took = started.elapsed();
                total.add(step.purged);
                metrics::counter!(crate::telemetry::PURGED_EVENTS).increment(step.purged.events);
                if !step.more {
                    break;
                }
                after = step.last;
                tokio::time::sleep(PAUSE.max(took * 4)).await;
            }
        }
        Ok(total)
    }
}

/// One batch, inside a writer turn.
pub(super) async fn purge_batch<C: Conn>(
    conn: &mut C,
    job: &PurgeJob,
    groups: &crate::agent::GroupFields,
) -> Result<PurgeStep, StoreError> {
    match &job.tenant {
        Some(tenant) => events_batch(conn, tenant, job.after, job.cutoff, groups).await,
        None => system_batch(conn, job.after, job.cutoff).await,
    }
}

/// A batch of `tenant`'s events after sequence `after`.
async fn events_batch<C: Conn>(
    conn: &mut C,
    tenant: &str,
    after: i64,
    cutoff: i64,
    groups: &crate::agent::GroupFields,
) -> Result<PurgeStep, StoreError> {
    // Sequences grow with reception, so the oldest come first in key order, and the first
    // event too young ends the tenant's pass (a condition on `received_at` in the statement
    // would scan the whole log for old events when there are none).
    let rows = conn
        .query(
            "SELECT e.sequence, e.received_at, EXISTS (SELECT 1 FROM deliveries d \
               WHERE d.tenant_id = e.tenant_id AND d.sequence = e.sequence \
               AND d.status = 'pending') \
             FROM events e WHERE e.tenant_id = $1 AND e.sequence > $2 \
             ORDER BY e.sequence LIMIT $3",
            &args![tenant, after, PURGE_BATCH],
        )
        .await?;
    // An enabled pull subscription's cursor keeps what is after it (DESIGN §16): the pass
    // ends at the lowest one. (Events after it that no partition matches are kept too.)
    let kept_after = conn
        .query(
            "SELECT MIN(c.cursor) FROM pull_cursors c JOIN subscriptions s \
             ON s.id = c.subscription_id WHERE c.tenant_id = $1 AND s.enabled = TRUE",
            &args![tenant],
        )
        .await?
        .first()
        .map(|r| r.opt_int(0))
        .transpose()?
        .flatten()
        .unwrap_or(i64::MAX);
    // Nor does it pass what the intervals projection, when the tenant's is kept, has not
    // folded yet (DESIGN §18).
    let intervals = conn
        .query(
            "SELECT intervals_through FROM tenants WHERE id = $1",
            &args![tenant],
        )
        .await?
        .first()
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0);
    let kept_after = if intervals > 0 {
        kept_after.min(intervals)
    } else {
        kept_after
    };
    let mut step = PurgeStep {
        more: rows.len() as i64 == PURGE_BATCH,
        last: after,
        purged: Purged::default(),
    };
    let mut gone = Vec::with_capacity(rows.len());
    for row in &rows {
        if row.int(1)? >= cutoff || row.int(0)? > kept_after {
            step.more = false;
            break;
        }
        step.last = row.int(0)?;
        if !row.bool(2)? {
            gone.push(step.last);
        }
    }
    if gone.is_empty() {
        return Ok(step);
    }
    let agent_events = super::agents::purged_agent_events(conn, tenant, &gone).await?;
    // `head`, then `$1` (the tenant) and `AND sequence IN (…)` over the events that go.
    let list = |head: &str, tail: &str| {
        let mut sql = Select::new(head);
        sql.push("", tenant).text(" AND sequence IN (");
        for (i, s) in gone.iter().enumerate() {
            sql.push(if i == 0 { "" } else { ", " }, Arg::from(*s));
        }
        sql.text(")").text(tail);
        sql
    };
    let attempts = list(
        "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE tenant_id = ",
        ")",
    );
    conn.execute(&attempts.sql, &attempts.args).await?;
    let deliveries = list("DELETE FROM deliveries WHERE tenant_id = ", "");
    step.purged.deliveries = conn.execute(&deliveries.sql, &deliveries.args).await?;
    if conn.dialect().tenant_tables.contains(&"event_ids") {
        // By key (tenant, the GUID's bytes), not by sequence, which it has no index on.
        let ids = list(
            "DELETE FROM event_ids WHERE tenant_id = $1 AND id IN (SELECT \
             unhex(replace(id, '-', '')) FROM events WHERE tenant_id = ",
            ")",
        );
        conn.execute(&ids.sql, &ids.args).await?;
    }
    // By key (tenant, username, sequence): the usernames from the events about to go.
    let by_username = list(
        "DELETE FROM events_by_username WHERE tenant_id = $1 AND (username, sequence) IN \
         (SELECT username, sequence FROM events WHERE username IS NOT NULL AND tenant_id = ",
        ")",
    );
    conn.execute(&by_username.sql, &by_username.args).await?;
    let events = list("DELETE FROM events WHERE tenant_id = ", "");
    step.purged.events = conn.execute(&events.sql, &events.args).await?;
    super::agents::fold_purged(conn, tenant, &agent_events, groups).await?;
    super::intervals::purge(conn, tenant, step.last).await?;
    Ok(step)
}

/// A batch of System events after id `after` whose deliveries are all finished.
async fn system_batch<C: Conn>(
    conn: &mut C,
    after: i64,
    cutoff: i64,
) -> Result<PurgeStep, StoreError> {
    let rows = conn
        .query(
            "SELECT s.id, s.tenant_id, s.created_at, EXISTS (SELECT 1 FROM deliveries d \
               WHERE d.tenant_id = s.tenant_id AND d.sequence = -s.id AND d.status = 'pending') \
             FROM system_events s WHERE s.id > $1 ORDER BY s.id LIMIT $2",
            &args![after, PURGE_BATCH],
        )
        .await?;
    let mut step = PurgeStep {
        more: rows.len() as i64 == PURGE_BATCH,
        last: after,
        purged: Purged::default(),
    };
    for mut row in rows {
        if row.int(2)? >= cutoff {
            step.more = false;
            break;
        }
        step.last = row.int(0)?;
        if row.bool(3)? {
            continue;
        }
        let tenant = row.text(1)?;
        let of = args![tenant.as_str(), -step.last];
        conn.execute(
            "DELETE FROM attempts WHERE delivery_id IN \
             (SELECT id FROM deliveries WHERE tenant_id = $1 AND sequence = $2)",
            &of,
        )
        .await?;
        step.purged.deliveries += conn
            .execute(
                "DELETE FROM deliveries WHERE tenant_id = $1 AND sequence = $2",
                &of,
            )
            .await?;
        step.purged.system_events += conn
            .execute("DELETE FROM system_events WHERE id = $1", &args![step.last])
            .await?;
    }
    Ok(step)
}
