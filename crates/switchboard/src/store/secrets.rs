//! Secrets at rest (DESIGN §19), the store's side: which key the database's secrets are sealed
//! with (`instance_keys` row `secret_check`), sealing what was plain when a key is first given,
//! and re-sealing everything under a new key (`switchboard secrets rotate-key`).

use super::db::{Tx, args};
use super::{Store, StoreError};
use crate::clock::now_millis;
use crate::secrets::{CHECK_TEXT, SecretKey, is_sealed, open_spec, seal_spec};

/// The row whose sealed known text says which key the secrets are sealed with.
const SECRET_CHECK: &str = "secret_check";

impl Store {
    /// The configured key, if any.
    pub(crate) fn secret_key(&self) -> Option<&SecretKey> {
        self.0.secrets.get()
    }

    /// At open: refuses a database whose secrets are sealed when no key is given, or with
    /// another key; with a key and nothing sealed yet, seals every secret now.
    pub(super) async fn check_secret_key(&self, key: Option<SecretKey>) -> Result<(), StoreError> {
        let check = self.secret_check().await?;
        let Some(key) = key else {
            return match check {
                Some(_) => Err(StoreError::SecretKey(
                    "the database's secrets are encrypted and no secret key is configured: set \
                     secret_key_file (or SWITCHBOARD_SECRET_KEY)"
                        .into(),
                )),
                None => Ok(()),
            };
        };
        match check {
            Some(sealed) => {
                matches(&key, &sealed)?;
                // Written plain meanwhile (a node without the key): sealed now.
                if self.seal_leftovers(&key).await? > 0 {
                    self.settle(&["subscriptions", "instance_keys"]).await?;
                }
            }
            None => {
                // Nodes starting together with the key: each seals what is still plain, the
                // first check row stays, and every node checks against it.
                self.reseal(None, &key).await?;
                let sealed = self.secret_check().await?.unwrap_or_default();
                matches(&key, &sealed)?;
                self.settle(&["subscriptions", "instance_keys"]).await?;
                tracing::info!("secrets at rest sealed with the configured secret key");
            }
        }
        let _ = self.0.secrets.set(key);
        Ok(())
    }

    async fn secret_check(&self) -> Result<Option<String>, StoreError> {
        let row = self
            .0
            .db
            .query_one(
                "SELECT value FROM instance_keys WHERE name = $1",
                &args![SECRET_CHECK],
            )
            .await?;
        row.map(|mut r| r.text(0)).transpose()
    }

    /// Re-seals every secret under `new`, opening those sealed with `old` (and reading plain
    /// ones as they are), in one transaction; the check row says `new` from then on.
    async fn reseal(&self, old: Option<&SecretKey>, new: &SecretKey) -> Result<(), StoreError> {
        let mismatch = |_| StoreError::SecretKey(MISMATCH.into());
        let open = |text: &str| -> Result<String, StoreError> {
            match old {
                Some(k) => k.open(text).map_err(mismatch),
                // Nodes starting together with a first key: what another sealed opens with it.
                None => new.open(text).map_err(mismatch),
            }
        };
        let mut tx: Tx = self.0.db.begin(self.0.dialect).await?;
        let rows = tx
            .query("SELECT id, spec, old_secret FROM subscriptions", &args![])
            .await?;
        for mut row in rows {
            let (id, spec, old_secret) = (row.text(0)?, row.text(1)?, row.opt_text(2)?);
            let spec = open_spec(old.unwrap_or(new), &spec).map_err(mismatch)?;
            let spec = seal_spec(new, &spec);
            let old_secret = old_secret
                .map(|s| open(&s).map(|plain| new.seal(&plain)))
                .transpose()?;
            tx.execute(
                "UPDATE subscriptions SET spec = $1, old_secret = $2 WHERE id = $3",
                &args![spec.as_str(), &old_secret, id.as_str()],
            )
            .await?;
        }
        let keys = tx
            .query(
                "SELECT name, value FROM instance_keys WHERE name <> $1",
                &args![SECRET_CHECK],
            )
            .await?;
        for mut row in keys {
            let (name, value) = (row.text(0)?, row.text(1)?);
            let sealed = new.seal(&open(&value)?);
            tx.execute(
                "UPDATE instance_keys SET value = $1 WHERE name = $2",
                &args![sealed.as_str(), name.as_str()],
            )
            .await?;
        }
        let check = new.seal(CHECK_TEXT);
        match old {
            Some(_) => {
                tx.execute(
                    "UPDATE instance_keys SET value = $1 WHERE name = $2",
                    &args![check.as_str(), SECRET_CHECK],
                )
                .await?
            }
            None => {
                tx.execute(
                    "INSERT INTO instance_keys (name, value, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING",
                    &args![SECRET_CHECK, check.as_str(), now_millis()],
                )
                .await?
            }
        };
        tx.commit().await
    }

    /// Seals the secrets still stored plain (a database sealed already); how many rows.
    async fn seal_leftovers(&self, key: &SecretKey) -> Result<u64, StoreError> {
        let mut tx: Tx = self.0.db.begin(self.0.dialect).await?;
        let mut sealed = 0;
        let rows = tx
            .query("SELECT id, spec, old_secret FROM subscriptions", &args![])
            .await?;
        for mut row in rows {
            let (id, spec, old_secret) = (row.text(0)?, row.text(1)?, row.opt_text(2)?);
            let new_spec = seal_spec(key, &spec);
            let plain_old = old_secret.as_deref().is_some_and(|s| !is_sealed(s));
            if new_spec != spec || plain_old {
                let old_secret = old_secret.map(|s| match is_sealed(&s) {
                    true => s,
                    false => key.seal(&s),
                });
                tx.execute(
                    "UPDATE subscriptions SET spec = $1, old_secret = $2 WHERE id = $3",
                    &args![new_spec.as_str(), &old_secret, id.as_str()],
                )
                .await?;
                sealed += 1;
            }
        }
        let keys = tx
            .query("SELECT name, value FROM instance_keys", &args![])
            .await?;
        for mut row in keys {
            let (name, value) = (row.text(0)?, row.text(1)?);
            if !is_sealed(&value) {
                let value = key.seal(&value);
                tx.execute(
                    "UPDATE instance_keys SET value = $1 WHERE name = $2",
                    &args![value.as_str(), name.as_str()],
                )
                .await?;
                sealed += 1;
            }
        }
        tx.commit().await?;
        Ok(sealed)
    }

    /// `switchboard secrets rotate-key`: every secret re-sealed under `new` (the store was
    /// opened with the current key); no copy under the old key is left in the files.
    pub async fn rotate_secret_key(&self, new: &SecretKey) -> Result<(), StoreError> {
        let Some(old) = self.secret_key().cloned() else {
            return Err(StoreError::SecretKey(
                "no secret key is configured, so nothing is encrypted yet: start the server \
                 with secret_key_file to encrypt the secrets"
                    .into(),
            ));
        };
        self.reseal(Some(&old), new).await?;
        self.settle(&["subscriptions", "instance_keys"]).await
    }

    /// A subscription's stored form with its secrets sealed, when a key is configured.
    pub(super) fn seal_stored_spec(&self, text: String) -> String {
        match self.secret_key() {
            Some(k) => seal_spec(k, &text),
            None => text,
        }
    }

    /// A stored secret (or instance key) as it is to be written.
    pub(super) fn seal_value(&self, plain: &str) -> String {
        match self.secret_key() {
            Some(k) => k.seal(plain),
            None => plain.to_string(),
        }
    }

    /// A stored value opened, when sealed.
    pub(super) fn open_value(&self, stored: &str) -> Result<String, StoreError> {
        match self.secret_key() {
            Some(k) => k
                .open(stored)
                .map_err(|_| StoreError::SecretKey(MISMATCH.into())),
            None if is_sealed(stored) => Err(StoreError::SecretKey(MISSING.into())),
            None => Ok(stored.to_string()),
        }
    }
}

const MISMATCH: &str =
    "the secret key does not match the one the database's secrets are encrypted with";
const MISSING: &str = "a stored secret is encrypted and no secret key is configured";

fn matches(key: &SecretKey, sealed: &str) -> Result<(), StoreError> {
    match key.open(sealed) {
        Ok(text) if text == CHECK_TEXT => Ok(()),
        _ => Err(StoreError::SecretKey(MISMATCH.into())),
    }
}
