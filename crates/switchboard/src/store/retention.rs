//! Retention (DESIGN §11): events older than the retention period — by `received_at` — are
//! purged with their finished deliveries and those deliveries' attempts, in small batches, each
//! its own short transaction, so the writer is never held up for long. An event with a delivery
//! still pending stays until it is delivered or failed. System events go the same way. The
//! `Id` idempotency window is the retention period: an `Id` posted again after its event was
//! purged is a new event.

use super::db::{Arg, Select, args};
use super::{Store, StoreError};

/// Events examined per batch (per tenant).
pub const PURGE_BATCH: i64 = 500;

/// What one purge pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub events: u64,
    pub system_events: u64,
    pub deliveries: u64,
}

impl Store {
    /// Purges everything received before `cutoff` (unix ms) that may go, batch by batch; returns
    /// what it removed.
    pub async fn purge(&self, cutoff: i64) -> Result<Purged, StoreError> {
        let mut total = Purged::default();
        let tenants = self.0.db.query("SELECT id FROM tenants", &[]).await?;
        for mut t in tenants {
            let tenant = t.text(0)?;
            // Past the events that must stay (pending deliveries), batch after batch.
            let mut after = 0i64;
            loop {
                let (more, last, purged) = self.purge_batch(&tenant, cutoff, after).await?;
                total.events += purged.events;
                total.deliveries += purged.deliveries;
                if !more {
                    break;
                }
                after = last;
            }
        }
        loop {
            let purged = self.purge_system_batch(cutoff).await?;
            total.system_events += purged.system_events;
            total.deliveries += purged.deliveries;
            if (purged.system_events as i64) < PURGE_BATCH {
                break;
            }
        }
        Ok(total)
    }

    /// One batch of `tenant`'s events after sequence `after`, received before `cutoff`:
    /// `(more may follow, last sequence examined, purged)`.
    async fn purge_batch(
        &self,
        tenant: &str,
        cutoff: i64,
        after: i64,
    ) -> Result<(bool, i64, Purged), StoreError> {
        let mut tx = self.0.db.begin(self.0.dialect).await?;
        // Sequences grow with reception, so the oldest come first in key order, and the first
        // event too young ends the tenant's pass (a condition on `received_at` in the statement
        // would scan the whole log for old events when there are none).
        let rows = tx
            .query(
                "SELECT e.sequence, e.received_at, EXISTS (SELECT 1 FROM deliveries d \
                   WHERE d.tenant_id = e.tenant_id AND d.sequence = e.sequence \
                   AND d.status = 'pending') \
                 FROM events e WHERE e.tenant_id = $1 AND e.sequence > $2 \
                 ORDER BY e.sequence LIMIT $3",
                &args![tenant, after, PURGE_BATCH],
            )
            .await?;
        let mut more = rows.len() as i64 == PURGE_BATCH;
        let mut last = after;
        let mut gone = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.int(1)? >= cutoff {
                more = false;
                break;
            }
            last = row.int(0)?;
            if !row.bool(2)? {
                gone.push(last);
            }
        }
        let mut purged = Purged::default();
        if !gone.is_empty() {
            let list = |head: &str| {
                let mut sql = Select::new(head);
                sql.push("", tenant).text(" AND sequence IN (");
                for (i, s) in gone.iter().enumerate() {
                    sql.push(if i == 0 { "" } else { ", " }, Arg::from(*s));
                }
                sql.text(")");
                sql
            };
            let attempts = list(
                "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries \
                 WHERE tenant_id = ",
            );
            tx.execute(&format!("{})", attempts.sql), &attempts.args)
                .await?;
            let deliveries = list("DELETE FROM deliveries WHERE tenant_id = ");
            purged.deliveries = tx.execute(&deliveries.sql, &deliveries.args).await?;
            if self.0.ids.is_some() {
                let ids = list("DELETE FROM event_ids WHERE tenant_id = ");
                tx.execute(&ids.sql, &ids.args).await?;
            }
            let events = list("DELETE FROM events WHERE tenant_id = ");
            purged.events = tx.execute(&events.sql, &events.args).await?;
        }
        tx.commit().await?;
        Ok((more, last, purged))
    }

    /// One batch of System events received before `cutoff` whose deliveries are all finished.
    async fn purge_system_batch(&self, cutoff: i64) -> Result<Purged, StoreError> {
        let mut tx = self.0.db.begin(self.0.dialect).await?;
        let rows = tx
            .query(
                "SELECT s.id, s.tenant_id FROM system_events s WHERE s.created_at < $1 AND NOT EXISTS \
                   (SELECT 1 FROM deliveries d WHERE d.tenant_id = s.tenant_id \
                     AND d.sequence = -s.id AND d.status = 'pending') \
                 ORDER BY s.id LIMIT $2",
                &args![cutoff, PURGE_BATCH],
            )
            .await?;
        let mut purged = Purged::default();
        for mut row in rows {
            let id = row.int(0)?;
            let tenant = row.text(1)?;
            let of = args![tenant.as_str(), -id];
            tx.execute(
                "DELETE FROM attempts WHERE delivery_id IN \
                 (SELECT id FROM deliveries WHERE tenant_id = $1 AND sequence = $2)",
                &of,
            )
            .await?;
            purged.deliveries += tx
                .execute(
                    "DELETE FROM deliveries WHERE tenant_id = $1 AND sequence = $2",
                    &of,
                )
                .await?;
            purged.system_events += tx
                .execute("DELETE FROM system_events WHERE id = $1", &args![id])
                .await?;
        }
        tx.commit().await?;
        Ok(purged)
    }
}
