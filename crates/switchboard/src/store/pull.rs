//! Pull subscriptions (DESIGN §16): their messages are read from the tenant's log, never
//! copied into deliveries; what the store keeps of them is one committed cursor per partition
//! and when a consumer last called.

use super::db::args;
use super::lag::Lag;
use super::{Change, Store, StoreError, StoredEvent};
use crate::subscription::SubscriptionSpec;

/// Most log events one `messages` call examines (matching or not): a call that finds fewer
/// than `limit` in them answers what it found, its `next_cursor` the last one examined.
pub const SCAN_MAX: usize = 100_000;
/// Most log events a lag figure examines after the lowest cursor: beyond them `pending` is a
/// lower bound (the oldest pending one is the first found, so its age is exact whenever any
/// is found).
pub const LAG_SCAN: usize = 10_000;
/// How often a consumer's calls are noted in `pulled_at`, at most.
const TOUCH_EVERY_MS: i64 = 60_000;
/// Rows read per statement while scanning.
const PAGE: i64 = 2_000;

/// A `messages` read: the matching events and where the scan ended.
#[derive(Debug, Default)]
pub struct Pulled {
    pub events: Vec<StoredEvent>,
    /// The last sequence examined (the start when nothing was).
    pub next_cursor: i64,
    /// How many events of the log were examined.
    pub examined: usize,
}

/// A pull subscription whose lag is being counted: its spec and cursors, the partition counted
/// (`None`: every one), and the lag counted so far.
pub struct LagCount<'a> {
    pub spec: &'a SubscriptionSpec,
    pub cursors: &'a [i64],
    pub partition: Option<u32>,
    pub lag: Lag,
}

/// What of an event's body a scan reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bodies {
    All,
    /// Only where there is no `Username` (the partition's key is then `SessionId`).
    WithoutUsername,
    None,
}

/// One event of the log with what a pull filter looks at.
struct LogRow {
    sequence: i64,
    received_at: i64,
    category: u8,
    code: u32,
    username: Option<String>,
    body: String,
}

impl Store {
    /// `tenant`'s events after `after`, up to `through`, at most `limit`, in sequence order.
    async fn log_rows(
        &self,
        tenant: &str,
        after: i64,
        through: i64,
        limit: i64,
        bodies: Bodies,
    ) -> Result<Vec<LogRow>, StoreError> {
        let body = match bodies {
            Bodies::All => "body",
            Bodies::WithoutUsername => "CASE WHEN username IS NULL THEN body ELSE '' END",
            Bodies::None => "''",
        };
        let sql = format!(
            "SELECT sequence, received_at, category, code, username, {body} FROM events \
             WHERE tenant_id = $1 AND sequence > $2 AND sequence <= $3 \
             ORDER BY sequence LIMIT $4"
        );
        let rows = self
            .0
            .db
            .query(&sql, &args![tenant, after, through, limit])
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for mut r in rows {
            out.push(LogRow {
                sequence: r.int(0)?,
                received_at: r.int(1)?,
                category: u8::try_from(r.int(2)?).unwrap_or(u8::MAX),
                code: u32::try_from(r.int(3)?).unwrap_or(u32::MAX),
                username: r.opt_text(4)?,
                body: r.text(5)?,
            });
        }
        Ok(out)
    }

    /// The committed cursor of each partition of pull subscription `id`, by partition.
    pub async fn pull_cursors(&self, id: &str) -> Result<Vec<i64>, StoreError> {
        let rows = self
            .0
            .db
            .query(
                "SELECT cursor FROM pull_cursors WHERE subscription_id = $1 ORDER BY partition_no",
                &args![id],
            )
            .await?;
        rows.iter().map(|r| r.int(0)).collect()
    }

    #[allow(clippy::too_many_arguments)]
    /// The messages of `partition` of a pull subscription after `after`: at most `limit`
    /// matching events among the log's up to `head`, examining at most [`SCAN_MAX`].
    pub async fn pull_messages(
        &self,
        tenant: &str,
        spec: &SubscriptionSpec,
        partition: u32,
        after: i64,
        head: i64,
        limit: usize,
        now: i64,
    ) -> Result<Pulled, StoreError> {
        let mut pulled = Pulled {
            events: Vec::new(),
            next_cursor: after,
            examined: 0,
        };
        // The first page as large as the answer (every event may match), then larger ones.
        let mut page = limit as i64;
        while pulled.next_cursor < head && pulled.examined < SCAN_MAX {
            let rows = self
                .log_rows(tenant, pulled.next_cursor, head, page, Bodies::All)
                .await?;
            let short = (rows.len() as i64) < page;
            page = PAGE.max(limit as i64);
            for row in rows {
                pulled.examined += 1;
                let to = spec.pulled(
                    row.category,
                    row.code,
                    row.username.as_deref(),
                    &row.body,
                    row.received_at,
                    now,
                );
                pulled.next_cursor = row.sequence;
                if to == Some(partition) {
                    pulled.events.push(StoredEvent {
                        sequence: row.sequence,
                        received_at: row.received_at,
                        body: row.body,
                    });
                    if pulled.events.len() >= limit {
                        return Ok(pulled);
                    }
                }
            }
            if short {
                // Every event up to the head was examined (a gap is what retention took).
                pulled.next_cursor = head;
                break;
            }
        }
        Ok(pulled)
    }

    /// Counts each of `counts` on: its matching events after its cursors (in its partition,
    /// when it names one) among the tenant's log after `from` (default: the lowest cursor),
    /// examining at most `budget` events, and since when the oldest has waited (when it was
    /// received). One scan serves them all.
    pub async fn count_pull_lags(
        &self,
        tenant: &str,
        counts: &mut [LagCount<'_>],
        from: Option<i64>,
        budget: usize,
        now: i64,
    ) -> Result<(), StoreError> {
        let lowest = counts
            .iter()
            .flat_map(|c| {
                c.cursors
                    .iter()
                    .enumerate()
                    .filter(|(p, _)| c.partition.is_none_or(|only| only as usize == *p))
                    .map(|(_, cursor)| *cursor)
            })
            .min();
        let Some(start) = from.or(lowest) else {
            return Ok(());
        };
        let head = self.last_sequence(tenant).await?;
        // Those whose match needs nothing but the columns, over one partition: counted by the
        // database, no row read out. (Sequences are dense above the cursors, as retention
        // stops at them: `budget` sequences are at most `budget` events.)
        let through = head.min(start.saturating_add(budget as i64));
        let mut scanned = Vec::new();
        for (i, c) in counts.iter_mut().enumerate() {
            let one = c.partition.unwrap_or(0);
            match (c.spec.partition_count(), sql_match(c.spec, now)) {
                (1, Some(pred)) if one == 0 => {
                    let after = start.max(c.cursors.first().copied().unwrap_or(0));
                    if after < through {
                        let row = self
                            .0
                            .db
                            .query_one(
                                &format!(
                                    "SELECT COUNT(*), MIN(received_at) FROM events \
                                     WHERE tenant_id = $1 AND sequence > $2 AND sequence <= $3 \
                                     AND {pred}"
                                ),
                                &args![tenant, after, through],
                            )
                            .await?;
                        if let Some(r) = row {
                            c.lag.pending += r.int(0)?;
                            if let Some(oldest) = r.opt_int(1)? {
                                let since = c.lag.oldest_since.get_or_insert(oldest);
                                *since = (*since).min(oldest);
                            }
                        }
                    }
                }
                _ => scanned.push(i),
            }
        }
        if scanned.is_empty() {
            return Ok(());
        }
        let mut at = start;
        let bodies = if scanned.iter().any(|&i| {
            counts[i]
                .spec
                .filter
                .as_ref()
                .is_some_and(|f| f.fields.is_some())
        }) {
            Bodies::All
        } else if scanned
            .iter()
            .any(|&i| counts[i].spec.partition_count() > 1)
        {
            Bodies::WithoutUsername
        } else {
            Bodies::None
        };
        let mut examined = 0;
        while at < head && examined < budget {
            let page = PAGE.min((budget - examined) as i64);
            let rows = self.log_rows(tenant, at, head, page, bodies).await?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                examined += 1;
                at = row.sequence;
                for &i in &scanned {
                    let c = &mut counts[i];
                    let Some(p) = c.spec.pulled(
                        row.category,
                        row.code,
                        row.username.as_deref(),
                        &row.body,
                        row.received_at,
                        now,
                    ) else {
                        continue;
                    };
                    let counted = c.partition.is_none_or(|only| only == p);
                    if counted
                        && c.cursors
                            .get(p as usize)
                            .is_some_and(|cur| row.sequence > *cur)
                    {
                        c.lag.pending += 1;
                        c.lag.oldest_since.get_or_insert(row.received_at);
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves `partition`'s cursor forward to `cursor`: `Ok(None)` done (or already there),
    /// `Ok(Some(current))` when `cursor` is behind the committed `current`.
    pub async fn commit_cursor(
        &self,
        id: &str,
        partition: u32,
        cursor: i64,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let moved = self
            .0
            .db
            .execute(
                "UPDATE pull_cursors SET cursor = $1 WHERE subscription_id = $2 \
                 AND partition_no = $3 AND cursor <= $4",
                &args![cursor, id, i64::from(partition), cursor],
            )
            .await?;
        self.touch_pull(id, now).await?;
        if moved > 0 {
            return Ok(None);
        }
        let row = self
            .0
            .db
            .query_one(
                "SELECT cursor FROM pull_cursors WHERE subscription_id = $1 AND partition_no = $2",
                &args![id, i64::from(partition)],
            )
            .await?;
        row.map(|r| r.int(0)).transpose()
    }

    /// Sets the cursor of `partition` (every partition when `None`) to `cursor`, forward or
    /// back.
    pub async fn seek_cursors(
        &self,
        id: &str,
        partition: Option<u32>,
        cursor: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let (sql, args) = match partition {
            Some(p) => (
                "UPDATE pull_cursors SET cursor = $1 WHERE subscription_id = $2 \
                 AND partition_no = $3",
                args![cursor, id, i64::from(p)].to_vec(),
            ),
            None => (
                "UPDATE pull_cursors SET cursor = $1 WHERE subscription_id = $2",
                args![cursor, id].to_vec(),
            ),
        };
        self.0.db.execute(sql, &args).await?;
        self.touch_pull(id, now).await
    }

    /// Notes a consumer's call (at most one write a minute): an abandoned pull subscription is
    /// one nobody called for `auto_disable_after_secs`.
    pub async fn touch_pull(&self, id: &str, now: i64) -> Result<(), StoreError> {
        {
            let mut noted = self.0.pulled_at.lock().unwrap_or_else(|e| e.into_inner());
            match noted.get_mut(id) {
                Some(at) if *at > now - TOUCH_EVERY_MS => return Ok(()),
                Some(at) => *at = now,
                None => {
                    noted.insert(id.to_owned(), now);
                }
            }
        }
        self.0
            .db
            .execute(
                "UPDATE subscriptions SET pulled_at = $1 WHERE id = $2 \
                 AND (pulled_at IS NULL OR pulled_at < $3)",
                &args![now, id, now - TOUCH_EVERY_MS],
            )
            .await?;
        Ok(())
    }

    /// The first of `tenant`'s events received at or after `at` (unix ms), if any.
    pub async fn first_received_at(
        &self,
        tenant: &str,
        at: i64,
    ) -> Result<Option<i64>, StoreError> {
        let row = self
            .0
            .db
            .query_one(
                "SELECT sequence FROM events WHERE tenant_id = $1 AND received_at >= $2 \
                 ORDER BY sequence LIMIT 1",
                &args![tenant, at],
            )
            .await?;
        row.map(|r| r.int(0)).transpose()
    }

    /// Disables the enabled pull subscriptions nobody called since `before` (unix ms; counted
    /// from creation when never): their ids and tenants. Each is disabled by one node only.
    pub async fn disable_abandoned_pulls(
        &self,
        before: i64,
        reason: &str,
        now: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self
            .0
            .db
            .query(
                "SELECT id, tenant_id FROM subscriptions WHERE pull = TRUE AND enabled = TRUE \
                 AND COALESCE(pulled_at, created_at) < $1",
                &args![before],
            )
            .await?;
        let mut disabled = Vec::new();
        for mut r in rows {
            let (id, tenant) = (r.text(0)?, r.text(1)?);
            let done = self
                .0
                .db
                .execute(
                    "UPDATE subscriptions SET enabled = FALSE, disabled_reason = $1, \
                     updated_at = $2 WHERE id = $3 AND enabled = TRUE \
                     AND COALESCE(pulled_at, created_at) < $4",
                    &args![reason, now, id.as_str(), before],
                )
                .await?;
            if done > 0 {
                disabled.push((id, tenant));
            }
        }
        if !disabled.is_empty() {
            self.announce(Change::Subscriptions).await;
        }
        Ok(disabled)
    }
}

/// The SQL condition on a row of `events` that matches what `spec` pulls, when its columns
/// alone decide it (no field filter, no username list): the numbers are the spec's own,
/// validated integers.
fn sql_match(spec: &SubscriptionSpec, now: i64) -> Option<String> {
    let mut parts = Vec::new();
    match &spec.filter {
        None => parts.push(format!(
            "category NOT IN ({}, {})",
            crate::event::catalog::SYSTEM,
            crate::event::catalog::DERIVED
        )),
        Some(f) => {
            if f.fields.is_some() || f.usernames.is_some() {
                return None;
            }
            match &f.events {
                None => parts.push(format!(
                    "category NOT IN ({}, {})",
                    crate::event::catalog::SYSTEM,
                    crate::event::catalog::DERIVED
                )),
                Some(list) if list.is_empty() => parts.push("1 = 0".to_owned()),
                Some(list) => {
                    let any = list
                        .iter()
                        .map(|e| match &e.codes {
                            None => format!("category = {}", e.category),
                            Some(codes) if codes.is_empty() => "1 = 0".to_owned(),
                            Some(codes) => format!(
                                "(category = {} AND code IN ({}))",
                                e.category,
                                codes
                                    .iter()
                                    .map(u32::to_string)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        })
                        .collect::<Vec<_>>()
                        .join(" OR ");
                    parts.push(format!("({any})"));
                }
            }
        }
    }
    if let Some(max) = spec.max_age_secs {
        let max_ms = i64::try_from(max).unwrap_or(i64::MAX / 1000) * 1000;
        parts.push(format!("received_at >= {}", now.saturating_sub(max_ms)));
    }
    Some(parts.join(" AND "))
}
