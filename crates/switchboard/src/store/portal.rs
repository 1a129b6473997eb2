//! Portal links (DESIGN §22): a tenant's short-lived tokens for its own customers, kept as the
//! hash of the token, like API keys. Never remembered between requests: a link deleted or
//! expired stops working at once, on every node.

use super::db::{Row, args};
use super::{CreateError, Store, StoreError};
use crate::clock::now_millis;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortalLink {
    pub id: String,
    pub tenant_id: String,
    /// The subscriptions it is limited to; `None`: all of the tenant's.
    pub subscription_ids: Option<Vec<String>>,
    pub read_only: bool,
    /// Unix milliseconds.
    pub created_at: i64,
    pub expires_at: i64,
}

const COLUMNS: &str =
    "SELECT id, tenant_id, subscription_ids, read_only, created_at, expires_at FROM portal_links";

fn link(mut r: Row) -> Result<PortalLink, StoreError> {
    let ids = match r.opt_text(2)? {
        None => None,
        Some(text) => Some(
            serde_json::from_str(&text)
                .map_err(|e| StoreError::Db(format!("portal link subscription_ids: {e}")))?,
        ),
    };
    Ok(PortalLink {
        id: r.text(0)?,
        tenant_id: r.text(1)?,
        subscription_ids: ids,
        read_only: r.bool(3)?,
        created_at: r.int(4)?,
        expires_at: r.int(5)?,
    })
}

impl Store {
    /// Stores a link under its token's hash, unless the tenant already holds `max` that have
    /// not expired; expired ones are dropped first.
    pub async fn create_portal_link(
        &self,
        link: &PortalLink,
        token_hash: &str,
        max: u32,
    ) -> Result<(), CreateError> {
        let now = now_millis();
        let ids = link
            .subscription_ids
            .as_ref()
            .map(|ids| serde_json::to_string(ids).expect("strings serialize"));
        let mut tx = self.0.db.begin(self.0.dialect).await?;
        tx.execute(
            "DELETE FROM portal_links WHERE tenant_id = $1 AND expires_at <= $2",
            &args![link.tenant_id.as_str(), now],
        )
        .await?;
        // Counted in the insert itself, so that two creations at once cannot both pass it.
        let done = tx
            .execute(
                "INSERT INTO portal_links \
                 (id, tenant_id, token_hash, subscription_ids, read_only, created_at, expires_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS (SELECT 1 FROM tenants WHERE id = $8) \
                 AND (SELECT COUNT(*) FROM portal_links WHERE tenant_id = $9) < $10",
                &args![
                    link.id.as_str(),
                    link.tenant_id.as_str(),
                    token_hash,
                    ids.as_deref(),
                    link.read_only,
                    link.created_at,
                    link.expires_at,
                    link.tenant_id.as_str(),
                    link.tenant_id.as_str(),
                    i64::from(max)
                ],
            )
            .await?;
        tx.commit().await?;
        if done == 0 {
            return Err(match self.get_tenant(&link.tenant_id).await? {
                None => CreateError::TenantNotFound,
                Some(_) => CreateError::LimitReached {
                    limit: "max_portal_links_per_tenant",
                    max,
                },
            });
        }
        Ok(())
    }

    /// The link whose token has this hash, if it exists and has not expired.
    pub async fn find_portal_link(
        &self,
        token_hash: &str,
    ) -> Result<Option<PortalLink>, StoreError> {
        let row = self
            .0
            .db
            .query_one(
                &format!("{COLUMNS} WHERE token_hash = $1 AND expires_at > $2"),
                &args![token_hash, now_millis()],
            )
            .await?;
        row.map(link).transpose()
    }

    /// A tenant's links that have not expired, by id.
    pub async fn list_portal_links(
        &self,
        tenant: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<PortalLink>, StoreError> {
        let rows = self
            .0
            .db
            .query(
                &format!(
                    "{COLUMNS} WHERE tenant_id = $1 AND id > $2 AND expires_at > $3 \
                     ORDER BY id LIMIT $4"
                ),
                &args![tenant, after, now_millis(), i64::from(limit)],
            )
            .await?;
        rows.into_iter().map(link).collect()
    }

    pub async fn get_portal_link(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<PortalLink>, StoreError> {
        let row = self
            .0
            .db
            .query_one(
                &format!("{COLUMNS} WHERE tenant_id = $1 AND id = $2 AND expires_at > $3"),
                &args![tenant, id, now_millis()],
            )
            .await?;
        row.map(link).transpose()
    }

    /// Revokes a link; false if there was none (or it had expired).
    pub async fn delete_portal_link(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let done = self
            .0
            .db
            .execute(
                "DELETE FROM portal_links WHERE tenant_id = $1 AND id = $2 AND expires_at > $3",
                &args![tenant, id, now_millis()],
            )
            .await?;
        Ok(done > 0)
    }
}
