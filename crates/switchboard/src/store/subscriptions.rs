//! Subscriptions: their bodies, state and secrets.

use super::UndecodableSubscription;
use super::db::{Row, args};
use super::sql::SUBSCRIPTION_COLUMNS;
use super::{Change, CreateError, Store, StoreError, SubscriptionRecord};
use crate::subscription::stored;

/// A stored subscription, or what is known of one whose stored form does not decode.
pub type StoredSubscription = Result<SubscriptionRecord, UndecodableSubscription>;

fn subscription_record(store: &Store, mut r: Row) -> Result<StoredSubscription, StoreError> {
    let (id, tenant_id, text) = (r.text(0)?, r.text(1)?, r.text(2)?);
    let (created_at, updated_at) = (r.int(7)?, r.int(8)?);
    // Its secrets opened (DESIGN §19); one that does not open leaves the row undecodable.
    let opened = match store.secret_key() {
        Some(key) => crate::secrets::open_spec(key, &text).map_err(|e| e.to_string()),
        None => Ok(text.clone()),
    };
    let text = match opened {
        Ok(text) => text,
        Err(e) => {
            return Ok(Err(UndecodableSubscription {
                id,
                tenant_id,
                secret: None,
                error: e,
                created_at,
                updated_at,
            }));
        }
    };
    let mut spec = match stored::decode(&text) {
        Ok(spec) => spec,
        Err(e) => {
            return Ok(Err(UndecodableSubscription {
                id,
                tenant_id,
                secret: stored::salvage_secret(&text),
                error: e.to_string(),
                created_at,
                updated_at,
            }));
        }
    };
    spec.enabled = r.bool(3)?;
    Ok(Ok(SubscriptionRecord {
        id,
        tenant_id,
        spec,
        disabled_reason: r.opt_text(4)?,
        // A previous secret that does not open only stops signing (its grace ends early).
        old_secret: (r.opt_text(5)?).and_then(|s| store.open_value(&s).ok()),
        old_secret_expires_at: r.opt_int(6)?,
        created_at,
        updated_at,
    }))
}

impl Store {
    /// Stores a new subscription, unless its tenant has `max` already.
    pub async fn create_subscription(
        &self,
        rec: &SubscriptionRecord,
        max: u32,
    ) -> Result<(), CreateError> {
        let spec = self.seal_stored_spec(stored::encode(&rec.spec));
        let mut tx = self.0.db.begin(self.0.dialect).await?;
        let done = tx
            .execute(
                "INSERT INTO subscriptions (id, tenant_id, spec, enabled, disabled_reason, \
                 created_at, updated_at, pull) SELECT $1, $2, $3, $4, $5, $6, $7, $8 \
                 WHERE EXISTS (SELECT 1 FROM tenants WHERE id = $9) \
                 AND (SELECT COUNT(*) FROM subscriptions WHERE tenant_id = $10) < $11",
                &args![
                    &rec.id,
                    &rec.tenant_id,
                    spec.as_str(),
                    rec.spec.enabled,
                    &rec.disabled_reason,
                    rec.created_at,
                    rec.updated_at,
                    rec.spec.is_pull(),
                    &rec.tenant_id,
                    &rec.tenant_id,
                    i64::from(max),
                ],
            )
            .await?;
        if done > 0 && rec.spec.is_pull() {
            // Each partition's cursor: before the log's first event (`earliest`), or after its
            // last one now.
            let earliest = rec.spec.start == Some(crate::subscription::Start::Earliest);
            for p in 0..rec.spec.partition_count() {
                tx.execute(
                    "INSERT INTO pull_cursors (tenant_id, subscription_id, partition_no, cursor) \
                     SELECT $1, $2, $3, CASE WHEN $4 THEN 0 ELSE last_sequence END \
                     FROM tenants WHERE id = $5",
                    &args![
                        &rec.tenant_id,
                        &rec.id,
                        i64::from(p),
                        earliest,
                        &rec.tenant_id
                    ],
                )
                .await?;
            }
        }
        tx.commit().await?;
        if done == 0 {
            return Err(match self.get_tenant(&rec.tenant_id).await? {
                None => CreateError::TenantNotFound,
                Some(_) => CreateError::LimitReached {
                    limit: "max_subscriptions_per_tenant",
                    max,
                },
            });
        }
        self.announce(Change::Subscriptions).await;
        Ok(())
    }

    pub async fn get_subscription(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<StoredSubscription>, StoreError> {
        let row = self
            .0
            .db
            .query_one(
                &format!("{SUBSCRIPTION_COLUMNS} WHERE tenant_id = $1 AND id = $2"),
                &args![tenant, id],
            )
            .await?;
        row.map(|r| subscription_record(self, r)).transpose()
    }

    pub async fn list_subscriptions(
        &self,
        tenant: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<StoredSubscription>, StoreError> {
        let rows = self
            .0
            .db
            .query(
                &format!(
                    "{SUBSCRIPTION_COLUMNS} WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"
                ),
                &args![tenant, after, i64::from(limit)],
            )
            .await?;
        rows.into_iter()
            .map(|r| subscription_record(self, r))
            .collect()
    }

    /// Every enabled push subscription of every tenant, for the dispatcher. One that does not decode
    /// is left out (logged once, counted): it harms only itself.
    pub async fn enabled_subscriptions(&self) -> Result<Vec<SubscriptionRecord>, StoreError> {
        let rows = self
            .0
            .db
            .query(
                &format!("{SUBSCRIPTION_COLUMNS} WHERE enabled = TRUE AND pull = FALSE"),
                &[],
            )
            .await?;
        let mut subs = Vec::with_capacity(rows.len());
        for row in rows {
            match subscription_record(self, row)? {
                Ok(sub) => subs.push(sub),
                Err(bad) => self.undecodable(&bad),
            }
        }
        Ok(subs)
    }

    /// Logs (once per stored version) and counts a subscription that does not decode.
    fn undecodable(&self, bad: &UndecodableSubscription) {
        let mut reported = self.0.undecodable.lock().unwrap_or_else(|e| e.into_inner());
        if reported.insert((bad.id.clone(), bad.updated_at)) {
            tracing::error!(tenant = %bad.tenant_id, subscription_id = %bad.id, error = %bad.error, "a stored subscription does not decode: nothing is delivered to it until it is repaired (PATCH with a whole body) or deleted");
            metrics::counter!(crate::telemetry::UNDECODABLE_ROWS, "kind" => "subscription")
                .increment(1);
        }
    }

    /// Replaces a subscription's body, state and secrets. Enabling it starts its health over.
    pub async fn update_subscription(&self, rec: &SubscriptionRecord) -> Result<bool, StoreError> {
        let spec = self.seal_stored_spec(stored::encode(&rec.spec));
        let old_secret = rec.old_secret.as_deref().map(|s| self.seal_value(s));
        let done = self
            .0
            .db
            .execute(
                "UPDATE subscriptions SET spec = $1, enabled = $2, disabled_reason = $3, \
                 old_secret = $4, old_secret_expires_at = $5, updated_at = $6, \
                 failing_since = CASE WHEN $7 THEN NULL ELSE failing_since END, \
                 failures = CASE WHEN $8 THEN 0 ELSE failures END, \
                 failing_sent = CASE WHEN $9 THEN FALSE ELSE failing_sent END, \
                 last_error = CASE WHEN $9 THEN NULL ELSE last_error END, \
                 probe_at = CASE WHEN $9 THEN NULL ELSE probe_at END, \
                 probes = CASE WHEN $9 THEN 0 ELSE probes END \
                 WHERE tenant_id = $10 AND id = $11",
                &args![
                    spec.as_str(),
                    rec.spec.enabled,
                    &rec.disabled_reason,
                    &old_secret,
                    rec.old_secret_expires_at,
                    rec.updated_at,
                    rec.spec.enabled,
                    rec.spec.enabled,
                    rec.spec.enabled,
                    &rec.tenant_id,
                    &rec.id,
                ],
            )
            .await?;
        self.announce(Change::Subscriptions).await;
        Ok(done > 0)
    }

    /// Deletes a subscription with its deliveries and their attempts.
    pub async fn delete_subscription(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.0.db.begin(self.0.dialect).await?;
        let gone = tx
            .execute(
                "DELETE FROM subscriptions WHERE tenant_id = $1 AND id = $2",
                &args![tenant, id],
            )
            .await?;
        if gone > 0 {
            tx.execute(
                "DELETE FROM attempts WHERE delivery_id IN \
                 (SELECT id FROM deliveries WHERE subscription_id = $1)",
                &args![id],
            )
            .await?;
            tx.execute(
                "DELETE FROM pull_cursors WHERE subscription_id = $1",
                &args![id],
            )
            .await?;
            tx.execute(
                "DELETE FROM deliveries WHERE subscription_id = $1",
                &args![id],
            )
            .await?;
        }
        tx.commit().await?;
        self.announce(Change::Subscriptions).await;
        Ok(gone > 0)
    }
}
