//! Lag (DESIGN §16): how far behind each subscription is — its deliveries not finished yet and
//! how long the oldest has been pending — and the lagging episodes of those with a budget,
//! each told once (System events 6 and 7) whichever node sees it.

use std::collections::HashMap;

use super::db::{Select, args};
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

impl Store {
    /// The lag of each of `ids` that has pending deliveries (the others have none).
    pub async fn lags(&self, ids: &[&str]) -> Result<HashMap<String, Lag>, StoreError> {
        let mut lags = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let mut select = Select::new(
                "SELECT subscription_id, COUNT(*), MIN(COALESCE(pending_since, created_at)) \
                 FROM deliveries WHERE status = 'pending' AND sequence > 0 \
                 AND subscription_id IN (",
            );
            for (i, id) in chunk.iter().enumerate() {
                select.push(if i == 0 { "" } else { ", " }, *id);
            }
            select.text(") GROUP BY subscription_id");
            for mut row in self.0.db.query(&select.sql, &select.args).await? {
                let lag = Lag {
                    pending: row.int(1)?,
                    oldest_since: row.opt_int(2)?,
                };
                lags.insert(row.text(0)?, lag);
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
                "SELECT id, tenant_id, spec, lagging_since FROM subscriptions",
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
