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
        let check = self.instance_value(SECRET_CHECK).await?;
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
        if let Some(sealed) = &check {
            matches(&key, sealed)?;
        }
        // What is still plain — everything, at the first start with a key; what a node without
        // it wrote meanwhile, later — is sealed now. Nodes starting together with a first key
        // each seal what is still plain (what another sealed is kept), the first check row
        // stays, and every node checks against it.
        let keep = |v: &str| match is_sealed(v) {
            true => Ok(v.to_string()),
            false => Ok(key.seal(v)),
        };
        let sealed = (self.rewrite_secrets(|t| Ok(seal_spec(&key, t)), keep, &key, false)).await?;
        if check.is_none() {
            matches(
                &key,
                &self.instance_value(SECRET_CHECK).await?.unwrap_or_default(),
            )?;
            tracing::info!("secrets at rest sealed with the configured secret key");
        }
        if sealed > 0 {
            self.settle(&["subscriptions", "instance_keys"]).await?;
        }
        let _ = self.0.secrets.set(key);
        Ok(())
    }

    /// Rewrites every stored secret in one transaction — subscriptions' stored forms with
    /// `spec`, their previous secrets and the instance keys with `value` — writing only the
    /// rows that change, and leaves the check row saying `new` (replaced when `replace_check`,
    /// else only written when there is none). How many rows changed.
    async fn rewrite_secrets(
        &self,
        spec: impl Fn(&str) -> Result<String, StoreError>,
        value: impl Fn(&str) -> Result<String, StoreError>,
        new: &SecretKey,
        replace_check: bool,
    ) -> Result<u64, StoreError> {
        let mut tx: Tx = self.0.db.begin(self.0.dialect).await?;
        let mut changed = 0;
        let rows = tx
            .query("SELECT id, spec, old_secret FROM subscriptions", &args![])
            .await?;
        for mut row in rows {
            let (id, text, old) = (row.text(0)?, row.text(1)?, row.opt_text(2)?);
            let (new_text, new_old) = (spec(&text)?, old.as_deref().map(&value).transpose()?);
            if new_text != text || new_old != old {
                tx.execute(
                    "UPDATE subscriptions SET spec = $1, old_secret = $2 WHERE id = $3",
                    &args![new_text.as_str(), &new_old, id.as_str()],
                )
                .await?;
                changed += 1;
            }
        }
        let keys = tx
            .query(
                "SELECT name, value FROM instance_keys WHERE name <> $1",
                &args![SECRET_CHECK],
            )
            .await?;
        for mut row in keys {
            let (name, stored) = (row.text(0)?, row.text(1)?);
            let rewritten = value(&stored)?;
            if rewritten != stored {
                tx.execute(
                    "UPDATE instance_keys SET value = $1 WHERE name = $2",
                    &args![rewritten.as_str(), name.as_str()],
                )
                .await?;
                changed += 1;
            }
        }
        let on_conflict = match replace_check {
            true => "DO UPDATE SET value = excluded.value",
            false => "DO NOTHING",
        };
        let check = new.seal(CHECK_TEXT);
        tx.execute(
            &format!(
                "INSERT INTO instance_keys (name, value, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) {on_conflict}"
            ),
            &args![SECRET_CHECK, check.as_str(), now_millis()],
        )
        .await?;
        tx.commit().await?;
        Ok(changed)
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
        let mismatch = |_| StoreError::SecretKey(MISMATCH.into());
        let spec = |t: &str| Ok(seal_spec(new, &open_spec(&old, t).map_err(mismatch)?));
        let value = |v: &str| Ok(new.seal(&old.open(v).map_err(mismatch)?));
        self.rewrite_secrets(spec, value, new, true).await?;
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
