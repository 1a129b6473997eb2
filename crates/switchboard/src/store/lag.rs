//! Lag and the circuit breaker (DESIGN §16), as the store keeps them: how far behind each
//! subscription is — its deliveries not finished yet and how long the oldest has been pending —
//! the lagging episodes of those with a budget, each told once (System events 6 and 7)
//! whichever node sees it; and each subscription's health as the breaker reads it.

use std::collections::HashMap;

use super::db::{Select, args};
use super::pull::{LAG_SCAN, LagCount};
use super::{Store, StoreError};
use crate::subscription::stored;

/// How far behind a subscription is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lag {
    /// Deliveries pending, System events' aside.
    pub pending: i64,
    /// Since when the oldest of them has been pending (created, or requeued), unix ms.
    pub oldest_since: Option<i64>,
}

/// A subscription with a lag budget, and the lagging episode it is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budgeted {
    pub id: String,
    pub tenant_id: String,
    pub budget_secs: u64,
    /// Since when it has been lagging (unix ms); `None`: not lagging.
    pub lagging_since: Option<i64>,
}

/// A subscription's health as the circuit breaker sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Breaker {
    /// Attempts failed in a row.
    pub failures: i64,
    /// Since when every attempt failed, unix ms.
    pub failing_since: Option<i64>,
    pub last_error: Option<String>,
    /// While open: when the next probe may start, unix ms.
    pub probe_at: Option<i64>,
}

impl Store {
    /// The health of each of `ids` that is not healthy.
    pub async fn breakers(&self, ids: &[&str]) -> Result<HashMap<String, Breaker>, StoreError> {
        let mut found = HashMap::new();
        for chunk in ids.chunks(500) {
            let select = in_list(
                "SELECT id, failures, failing_since, last_error, probe_at FROM subscriptions \
                 WHERE failures > 0 AND id IN (",
                chunk,
                ")",
            );
            for mut row in self.0.db.query(&select.sql, &select.args).await? {
                let breaker = Breaker {
                    failures: row.int(1)?,
                    failing_since: row.opt_int(2)?,
                    last_error: row.opt_text(3)?,
                    probe_at: row.opt_int(4)?,
                };
                found.insert(row.text(0)?, breaker);
            }
        }
        Ok(found)
    }

    /// The enabled subscriptions whose breaker is open, with when each may be probed next.
    pub async fn open_breakers(&self) -> Result<HashMap<String, i64>, StoreError> {
        let rows = self
            .0
            .db
            .query(
                // `failures` too: a release before the breaker resets them without the probe.
                "SELECT id, probe_at FROM subscriptions WHERE probe_at IS NOT NULL \
                 AND failures >= 5 AND enabled = TRUE",
                &[],
            )
            .await?;
        let mut open = HashMap::with_capacity(rows.len());
        for mut row in rows {
            open.insert(row.text(0)?, row.int(1)?);
        }
        Ok(open)
    }

    /// The lag of each of `ids` that has pending deliveries (the others have none), at `now`
    /// (unix ms: what `max_age_secs` leaves out of a pull subscription's count).
    pub async fn lags(&self, ids: &[&str], now: i64) -> Result<HashMap<String, Lag>, StoreError> {
        let mut lags = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let select = in_list(
                "SELECT subscription_id, COUNT(*), MIN(COALESCE(pending_since, created_at)) \
                 FROM deliveries WHERE status = 'pending' AND sequence > 0 \
                 AND subscription_id IN (",
                chunk,
                ") GROUP BY subscription_id",
            );
            for mut row in self.0.db.query(&select.sql, &select.args).await? {
                let lag = Lag {
                    pending: row.int(1)?,
                    oldest_since: row.opt_int(2)?,
                };
                lags.insert(row.text(0)?, lag);
            }
            // Pull subscriptions have no deliveries: their lag is counted in the log, after
            // their cursors (DESIGN §16), one scan per tenant for all of them.
            let select = in_list(
                "SELECT id, tenant_id, spec FROM subscriptions WHERE pull = TRUE AND id IN (",
                chunk,
                ") ORDER BY tenant_id",
            );
            let mut pulls: Vec<(
                String,
                String,
                crate::subscription::SubscriptionSpec,
                Vec<i64>,
            )> = Vec::new();
            for mut row in self.0.db.query(&select.sql, &select.args).await? {
                let (id, tenant) = (row.text(0)?, row.text(1)?);
                let Ok(spec) = stored::decode(&row.text(2)?) else {
                    continue;
                };
                let cursors = self.pull_cursors(&id).await?;
                pulls.push((id, tenant, spec, cursors));
            }
            for tenant_pulls in pulls.chunk_by(|a, b| a.1 == b.1) {
                let mut counts: Vec<LagCount> = tenant_pulls
                    .iter()
                    .map(|(_, _, spec, cursors)| LagCount {
                        spec,
                        cursors,
                        partition: None,
                        lag: Lag::default(),
                    })
                    .collect();
                let tenant = &tenant_pulls[0].1;
                self.count_pull_lags(tenant, &mut counts, None, LAG_SCAN, now)
                    .await?;
                for ((id, ..), count) in tenant_pulls.iter().zip(counts) {
                    if count.lag.pending > 0 {
                        lags.insert(id.clone(), count.lag);
                    }
                }
            }
        }
        Ok(lags)
    }

    /// Every subscription with a lag budget (disabled ones too: their backlog still waits).
    /// One that does not decode has none.
    pub async fn budgeted_subscriptions(&self) -> Result<Vec<Budgeted>, StoreError> {
        let rows = self
            .0
            .db
            .query(
                // Looked at every second on every node: only the specs that name a budget are
                // read and decoded (a spec is stored as compact JSON, `null` when none).
                "SELECT id, tenant_id, spec, lagging_since FROM subscriptions \
                 WHERE spec LIKE '%\"lag_budget_secs\":%' \
                 AND spec NOT LIKE '%\"lag_budget_secs\":null%'",
                &[],
            )
            .await?;
        let mut subs = Vec::new();
        for mut row in rows {
            let Ok(spec) = stored::decode(&row.text(2)?) else {
                continue;
            };
            if let Some(budget_secs) = spec.lag_budget_secs {
                subs.push(Budgeted {
                    id: row.text(0)?,
                    tenant_id: row.text(1)?,
                    budget_secs,
                    lagging_since: row.opt_int(3)?,
                });
            }
        }
        Ok(subs)
    }

    /// Starts `id`'s lagging episode at `at`; false if it had one already (another node's).
    pub async fn start_lagging(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let done = self
            .0
            .db
            .execute(
                "UPDATE subscriptions SET lagging_since = $1 WHERE id = $2 \
                 AND lagging_since IS NULL",
                &args![at, id],
            )
            .await?;
        Ok(done > 0)
    }

    /// Ends `id`'s lagging episode that began at `since`; false if it was not that one.
    pub async fn end_lagging(&self, id: &str, since: i64) -> Result<bool, StoreError> {
        let done = self
            .0
            .db
            .execute(
                "UPDATE subscriptions SET lagging_since = NULL WHERE id = $1 \
                 AND lagging_since = $2",
                &args![id, since],
            )
            .await?;
        Ok(done > 0)
    }
}

/// `head`, the placeholders of `ids` separated by commas, then `tail`.
fn in_list<'a>(head: &str, ids: &[&'a str], tail: &str) -> Select<'a> {
    let mut select = Select::new(head);
    for (i, id) in ids.iter().enumerate() {
        select.push(if i == 0 { "" } else { ", " }, *id);
    }
    select.text(tail);
    select
}
