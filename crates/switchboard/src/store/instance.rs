//! Keys the instance keeps for itself (DESIGN §19): one row per name, written once by whichever
//! node needs it first.

use super::db::args;
use super::{Store, StoreError};
use crate::clock::now_millis;
use crate::redact::HashKey;

/// The row of the key `redact: hash` derives each tenant's from.
const REDACT_HASH: &str = "redact_hash";

impl Store {
    /// The instance's hash key: the stored one, or a new random one stored now (nodes starting
    /// together agree: the first insert wins, every node reads it back).
    pub async fn hash_key(&self) -> Result<HashKey, StoreError> {
        // Sealed with the secret key, when one is configured (DESIGN §19).
        let fresh = self.seal_value(&HashKey::random().to_hex());
        self.0
            .db
            .execute(
                "INSERT INTO instance_keys (name, value, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
                &args![REDACT_HASH, fresh.as_str(), now_millis()],
            )
            .await?;
        let text = match self.instance_value(REDACT_HASH).await? {
            Some(stored) => self.open_value(&stored)?,
            None => return Err(StoreError::Db("instance key redact_hash vanished".into())),
        };
        HashKey::from_hex(&text)
            .ok_or_else(|| StoreError::Db("instance key redact_hash is not 64 hex".into()))
    }

    /// The stored value of the instance key `name`, as stored (sealed or not).
    pub(super) async fn instance_value(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row = self
            .0
            .db
            .query_one(
                "SELECT value FROM instance_keys WHERE name = $1",
                &args![name],
            )
            .await?;
        row.map(|mut r| r.text(0)).transpose()
    }
}
