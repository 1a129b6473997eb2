//! Tenants and their API keys, and the memory of keys authentication found.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::db::{Row, args};
use super::{
    Change, CreateError, KeyRecord, Store, StoreError, Tenant, scopes_from_text, scopes_to_text,
};
use crate::auth::Scope;
use crate::clock::now_millis;

/// How long a key found by authentication is trusted without reading it again. Deleting a key
/// (or its tenant) forgets it at once on this node and, on PostgreSQL, on the others as the
/// notification arrives; this bounds a notification lost with a dropped connection.
const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
/// Most keys remembered; past this the memory starts over (there are rarely so many).
const KEY_CACHE_MAX: usize = 10_000;

/// API keys by hash, as authentication found them: a request with a known key reads nothing.
/// Only keys that exist are remembered, so unknown keys cannot fill it.
#[derive(Default)]
pub(crate) struct KeyCache {
    version: AtomicU64,
    keys: Mutex<HashMap<String, (KeyRecord, u64, Instant)>>,
}

impl KeyCache {
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    pub fn get(&self, hash: &str) -> Option<KeyRecord> {
        let keys = self.keys.lock().ok()?;
        let (key, version, at) = keys.get(hash)?;
        (*version == self.version() && at.elapsed() < KEY_CACHE_TTL).then(|| key.clone())
    }

    /// Remembers `key`, found by a read that started at `version`.
    pub fn put(&self, hash: &str, key: KeyRecord, version: u64) {
        if let Ok(mut keys) = self.keys.lock() {
            if keys.len() >= KEY_CACHE_MAX {
                keys.clear();
            }
            keys.insert(hash.to_string(), (key, version, Instant::now()));
        }
    }

    /// Forgets every key (one was deleted).
    pub fn invalidate(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut keys) = self.keys.lock() {
            keys.clear();
        }
    }
}

fn tenant(mut r: Row) -> Result<Tenant, StoreError> {
    Ok(Tenant {
        id: r.text(0)?,
        name: r.text(1)?,
        created_at: r.int(2)?,
        ingest_rate_limit_per_sec: r.opt_int(3)?,
    })
}

const TENANT_COLUMNS: &str = "SELECT id, name, created_at, ingest_rate_limit_per_sec FROM tenants";

fn key_record(mut r: Row) -> Result<KeyRecord, StoreError> {
    Ok(KeyRecord {
        id: r.text(0)?,
        tenant_id: r.text(1)?,
        name: r.text(2)?,
        scopes: scopes_from_text(&r.text(3)?),
        created_at: r.int(4)?,
    })
}

const KEY_COLUMNS: &str = "SELECT id, tenant_id, name, scopes, created_at FROM api_keys";

impl Store {
    pub async fn create_tenant(&self, id: &str, name: &str) -> Result<Tenant, CreateError> {
        let created_at = now_millis();
        let done = self
            .0
            .db
            .execute(
                "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
                &args![id, name, created_at],
            )
            .await?;
        if done == 0 {
            return Err(CreateError::Exists);
        }
        Ok(Tenant {
            id: id.into(),
            name: name.into(),
            created_at,
            ingest_rate_limit_per_sec: None,
        })
    }

    /// Sets a tenant's name and ingest limit; false if there is no such tenant.
    pub async fn update_tenant(&self, t: &Tenant) -> Result<bool, StoreError> {
        let done = self
            .0
            .db
            .execute(
                "UPDATE tenants SET name = $1, ingest_rate_limit_per_sec = $2 WHERE id = $3",
                &args![t.name.as_str(), t.ingest_rate_limit_per_sec, t.id.as_str()],
            )
            .await?;
        Ok(done > 0)
    }

    pub async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        let row = self
            .0
            .db
            .query_one(&format!("{TENANT_COLUMNS} WHERE id = $1"), &args![id])
            .await?;
        row.map(tenant).transpose()
    }

    pub async fn list_tenants(&self, after: &str, limit: u32) -> Result<Vec<Tenant>, StoreError> {
        let rows = self
            .0
            .db
            .query(
                &format!("{TENANT_COLUMNS} WHERE id > $1 ORDER BY id LIMIT $2"),
                &args![after, i64::from(limit)],
            )
            .await?;
        rows.into_iter().map(tenant).collect()
    }

    /// Deletes a tenant with everything it owns; false if there was none.
    pub async fn delete_tenant(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.0.db.begin(self.0.dialect).await?;
        let gone = tx
            .execute("DELETE FROM tenants WHERE id = $1", &args![id])
            .await?;
        tx.execute(
            "DELETE FROM attempts WHERE delivery_id IN \
             (SELECT id FROM deliveries WHERE tenant_id = $1)",
            &args![id],
        )
        .await?;
        for table in self.0.dialect.tenant_tables {
            tx.execute(
                &format!("DELETE FROM {table} WHERE tenant_id = $1"),
                &args![id],
            )
            .await?;
        }
        tx.commit().await?;
        if let Some(ids) = &self.0.ids {
            ids.forget(id);
        }
        self.announce(Change::Keys).await;
        self.announce(Change::Subscriptions).await;
        Ok(gone > 0)
    }

    /// Stores a key under its hash.
    pub async fn create_key(
        &self,
        tenant: &str,
        name: &str,
        scopes: &[Scope],
        id: &str,
        key_hash: &str,
    ) -> Result<KeyRecord, CreateError> {
        let created_at = now_millis();
        let scope_text = scopes_to_text(scopes);
        let done = self
            .0
            .db
            .execute(
                "INSERT INTO api_keys (id, tenant_id, name, scopes, key_hash, created_at) \
                 SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS (SELECT 1 FROM tenants WHERE id = $7)",
                &args![
                    id,
                    tenant,
                    name,
                    scope_text.as_str(),
                    key_hash,
                    created_at,
                    tenant
                ],
            )
            .await?;
        if done == 0 {
            return Err(CreateError::TenantNotFound);
        }
        Ok(KeyRecord {
            id: id.into(),
            tenant_id: tenant.into(),
            name: name.into(),
            scopes: scopes.to_vec(),
            created_at,
        })
    }

    pub async fn list_keys(
        &self,
        tenant: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = self
            .0
            .db
            .query(
                &format!("{KEY_COLUMNS} WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"),
                &args![tenant, after, i64::from(limit)],
            )
            .await?;
        rows.into_iter().map(key_record).collect()
    }

    pub async fn delete_key(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let done = self
            .0
            .db
            .execute(
                "DELETE FROM api_keys WHERE tenant_id = $1 AND id = $2",
                &args![tenant, id],
            )
            .await?;
        self.announce(Change::Keys).await;
        Ok(done > 0)
    }

    /// The key with this hash, if any; from memory when it was found recently.
    pub async fn find_key(&self, key_hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        if let Some(key) = self.0.keys.get(key_hash) {
            return Ok(Some(key));
        }
        // Read before the query: a deletion announced meanwhile makes this entry stale.
        let version = self.0.keys.version();
        let row = self
            .0
            .db
            .query_one(
                &format!("{KEY_COLUMNS} WHERE key_hash = $1"),
                &args![key_hash],
            )
            .await?;
        let key = row.map(key_record).transpose()?;
        if let Some(key) = &key {
            self.0.keys.put(key_hash, key.clone(), version);
        }
        Ok(key)
    }
}
