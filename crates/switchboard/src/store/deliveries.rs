//! Deliveries and their attempts: listing, retrying one, the dispatcher's leases given back and
//! its next due time, and the figures for `/metrics`, on the read pool; replays, a page per
//! writer turn (`turn.rs` creates their deliveries, as it does ingest's).

use tokio::sync::oneshot;
use uuid::Uuid;

use super::command::{Command, ReplayJob};
use super::db::{Arg, Row, Select, args};
use super::decide::OutboxSub;
use super::sql::DELIVERY_COLUMNS;
use super::{
    AttemptRecord, DeliveryRecord, DeliveryStatus, Stats, Store, StoreError, SubscriptionRecord,
    sql,
};
use crate::clock::now_millis;
use crate::event::Timestamp;

fn delivery_record(mut r: Row) -> Result<DeliveryRecord, StoreError> {
    Ok(DeliveryRecord {
        id: r.int(0)?,
        event_id: r.text(1)?,
        subscription_id: r.text(2)?,
        // A System event's delivery has no place in the log (see `sql::INSERT_SYSTEM_EVENT`).
        sequence: r.int(3)?.max(0),
        status: DeliveryStatus::parse(&r.text(4)?).unwrap_or(DeliveryStatus::Pending),
        attempt_count: r.int(5)?,
        next_attempt_at: r.opt_int(6)?,
        last_status_code: r.opt_int(7)?,
        last_error: r.opt_text(8)?,
        created_at: r.int(9)?,
        updated_at: r.int(10)?,
    })
}

fn attempt_record(mut r: Row) -> Result<AttemptRecord, StoreError> {
    Ok(AttemptRecord {
        number: r.int(0)?,
        started_at: r.int(1)?,
        duration_ms: r.int(2)?,
        status_code: r.opt_int(3)?,
        error: r.opt_text(4)?,
        response_body: r.opt_text(5)?,
    })
}

/// A page of a subscription's deliveries in id order. The status, one of a few fixed words, is
/// written into the statement rather than bound: `deliveries_not_succeeded` holds every status
/// but `succeeded` (migration 19), and a database uses a partial index only for a statement
/// whose text implies the index's condition.
fn list_deliveries_sql<'a>(
    tenant: &'a str,
    subscription: &'a str,
    status: Option<DeliveryStatus>,
    after: i64,
    limit: u32,
) -> Select<'a> {
    let mut sql = Select::new(DELIVERY_COLUMNS);
    sql.push(" WHERE tenant_id = ", tenant)
        .push(" AND subscription_id = ", subscription);
    match status {
        Some(DeliveryStatus::Succeeded) => {
            sql.text(" AND status = 'succeeded'");
        }
        // The index's condition repeated word for word: SQLite sees a partial index serve a
        // statement only when the statement holds the condition's own terms.
        Some(s) => {
            sql.text(&format!(
                " AND status = '{}' AND status <> 'succeeded'",
                s.as_str()
            ));
        }
        None => {}
    }
    sql.push(" AND id > ", after)
        .push(" ORDER BY id LIMIT ", i64::from(limit));
    sql
}

/// How many of a subscription's latest deliveries a Heartbeat's `LastSequence` is looked for
/// among: the read is bounded whatever the subscription's backlog.
pub const LAST_DELIVERED_WINDOW: i64 = 10_000;

fn last_delivered_sql(subscription: &str) -> Select<'_> {
    let mut sql = Select::new("SELECT MAX(sequence) FROM (SELECT sequence, status FROM deliveries");
    sql.push(" WHERE subscription_id = ", subscription)
        .push(
            " AND sequence > 0 ORDER BY sequence DESC LIMIT ",
            LAST_DELIVERED_WINDOW,
        )
        .text(") AS latest WHERE status = 'succeeded'");
    sql
}

impl Store {
    pub async fn list_deliveries(
        &self,
        tenant: &str,
        subscription: &str,
        status: Option<DeliveryStatus>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let sql = list_deliveries_sql(tenant, subscription, status, after, limit);
        let rows = self.0.db.query(&sql.sql, &sql.args).await?;
        rows.into_iter().map(delivery_record).collect()
    }

    /// The database's plan for [`Store::list_deliveries`] (`EXPLAIN`), one line per step: for
    /// the test that checks a listing by status is served by `deliveries_not_succeeded`.
    #[doc(hidden)]
    pub async fn list_deliveries_plan(
        &self,
        tenant: &str,
        subscription: &str,
        status: Option<DeliveryStatus>,
    ) -> Result<String, StoreError> {
        self.plan(&list_deliveries_sql(tenant, subscription, status, 0, 100))
            .await
    }

    pub async fn deliveries_of_event(
        &self,
        tenant: &str,
        event_id: Uuid,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let Some(sequence) = self.sequence_of(tenant, event_id).await? else {
            return Ok(Vec::new());
        };
        let rows = self
            .0
            .db
            .query(
                &format!("{DELIVERY_COLUMNS} WHERE tenant_id = $1 AND sequence = $2 ORDER BY id"),
                &args![tenant, sequence],
            )
            .await?;
        rows.into_iter().map(delivery_record).collect()
    }

    /// A delivery with its attempts, oldest first.
    pub async fn get_delivery(
        &self,
        tenant: &str,
        id: i64,
    ) -> Result<Option<(DeliveryRecord, Vec<AttemptRecord>)>, StoreError> {
        let row = self
            .0
            .db
            .query_one(
                &format!("{DELIVERY_COLUMNS} WHERE tenant_id = $1 AND id = $2"),
                &args![tenant, id],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let attempts = self
            .0
            .db
            .query(
                "SELECT number, started_at, duration_ms, status_code, error, response_body \
                 FROM attempts WHERE delivery_id = $1 ORDER BY number",
                &args![id],
            )
            .await?;
        let attempts = attempts
            .into_iter()
            .map(attempt_record)
            .collect::<Result<_, _>>()?;
        Ok(Some((delivery_record(row)?, attempts)))
    }

    /// Makes a delivery due now for one more attempt (a finished one gets exactly one).
    pub async fn retry_delivery(
        &self,
        tenant: &str,
        id: i64,
        one_attempt_round: i64,
    ) -> Result<bool, StoreError> {
        let now = now_millis();
        let done = self
            .0
            .db
            .execute(
                concat!(
                    "UPDATE deliveries SET next_attempt_at = $1, lease_until = ",
                    sql::requeued_lease!(),
                    ", updated_at = $2, \
                     pending_since = CASE WHEN status = 'pending' THEN pending_since ELSE $2 END, \
                     round_attempts = CASE WHEN status = 'pending' THEN round_attempts ELSE $3 END, \
                     status = 'pending' WHERE tenant_id = $4 AND id = $5"
                ),
                &args![now, now, one_attempt_round, tenant, id],
            )
            .await?;
        self.0.wake.due();
        Ok(done > 0)
    }

    /// Requeues, for a fresh round of attempts, every event of the window that the
    /// subscription's filter matches now — creating deliveries for events it never had (older
    /// than the subscription, or filtered out then). With `only_failed`, only failed deliveries
    /// are requeued. Returns how many deliveries were requeued or created.
    pub async fn replay(
        &self,
        sub: &SubscriptionRecord,
        since: Timestamp,
        until: Option<Timestamp>,
        only_failed: bool,
    ) -> Result<u64, StoreError> {
        let mut job = ReplayJob {
            tenant: sub.tenant_id.clone(),
            sub: std::sync::Arc::new(OutboxSub::of(sub)),
            since: since.as_i64(),
            until: until.map_or(i64::MAX, Timestamp::as_i64),
            after: 0,
            // The log as it is now: what comes in meanwhile is delivered anyway.
            bound: self.last_sequence(&sub.tenant_id).await?,
            only_failed,
            job: None,
        };
        // A page per writer turn, so that ingest is never held up for long.
        let mut total = 0;
        loop {
            let (reply, answer) = oneshot::channel();
            let page = ReplayJob {
                sub: job.sub.clone(),
                tenant: job.tenant.clone(),
                job: None,
                ..job
            };
            let step = self.turn(Command::Replay(page, reply), answer).await?;
            total += step.requeued;
            match step.next {
                Some(after) => job.after = after,
                None => return Ok(total),
            }
        }
    }

    /// Gives back the leases of claimed deliveries that were not attempted (rare: a
    /// subscription disabled, a shutdown), outside the writer.
    pub async fn release_leases(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        // Claims held in memory (SQLite's writer) are let go there; the others in their rows,
        // only where the row holds a lease still running: a held claim's row holds none, and
        // the writer may claim it again meanwhile (the value its claim read must stay).
        self.0.wake.let_go(&ids);
        let now = now_millis();
        for chunk in ids.chunks(500) {
            let mut sql = Select::new("UPDATE deliveries SET lease_until = NULL WHERE id IN (");
            for (i, id) in chunk.iter().enumerate() {
                sql.push(if i == 0 { "" } else { ", " }, Arg::from(*id));
            }
            sql.push(") AND lease_until >= ", Arg::from(now));
            self.0.db.execute(&sql.sql, &sql.args).await?;
        }
        Ok(())
    }

    /// The latest sequence delivered to a subscription among its [`LAST_DELIVERED_WINDOW`]
    /// latest deliveries by sequence, 0 if none of them succeeded (System events' deliveries,
    /// numbered below zero, do not count): a walk back along the unique index, bounded.
    pub async fn last_delivered_sequence(&self, subscription: &str) -> Result<i64, StoreError> {
        let sql = last_delivered_sql(subscription);
        let row = self.0.db.query_one(&sql.sql, &sql.args).await?;
        Ok(row
            .map(|r| r.opt_int(0))
            .transpose()?
            .flatten()
            .unwrap_or(0))
    }

    /// The database's plan for [`Store::last_delivered_sequence`] (`EXPLAIN`).
    #[doc(hidden)]
    pub async fn last_delivered_plan(&self, subscription: &str) -> Result<String, StoreError> {
        self.plan(&last_delivered_sql(subscription)).await
    }

    /// Figures for `/metrics`.
    pub async fn stats(&self) -> Result<Stats, StoreError> {
        let pending = self
            .0
            .db
            .query_one(
                "SELECT COUNT(*) FROM deliveries WHERE status = 'pending'",
                &[],
            )
            .await?;
        let subs = self
            .0
            .db
            .query_one(
                "SELECT COALESCE(SUM(CASE WHEN enabled THEN 1 ELSE 0 END), 0), COUNT(*) \
                 FROM subscriptions",
                &[],
            )
            .await?;
        let (Some(pending), Some(subs)) = (pending, subs) else {
            return Err(StoreError::Db("a count returned no row".into()));
        };
        Ok(Stats {
            pending: pending.int(0)?,
            subscriptions_enabled: subs.int(0)?,
            subscriptions: subs.int(1)?,
        })
    }

    /// When the earliest unleased pending delivery of an enabled subscription is due (unix ms).
    pub async fn next_due(&self, now: i64) -> Result<Option<i64>, StoreError> {
        let row = self
            .0
            .db
            .query_one(
                // Per subscription, the first unleased row in due order (an index walk that
                // stops there), not a scan of every pending row. A subscription whose breaker
                // is open is due at its next probe, which the dispatcher knows.
                "SELECT MIN((SELECT d.next_attempt_at FROM deliveries d \
                   WHERE d.subscription_id = s.id AND d.status = 'pending' \
                     AND (d.lease_until IS NULL OR d.lease_until < $1) \
                   ORDER BY d.next_attempt_at LIMIT 1)) \
                 FROM subscriptions s WHERE s.enabled = TRUE \
                 AND (s.probe_at IS NULL OR s.failures < 5)",
                &args![now],
            )
            .await?;
        row.map(|r| r.opt_int(0)).transpose().map(Option::flatten)
    }
}
