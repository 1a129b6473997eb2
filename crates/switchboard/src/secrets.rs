//! Secrets at rest (DESIGN §19): with a secret key configured, what would let someone act as
//! Switchboard — subscriptions' signing secrets and Ed25519 keys, receivers' and brokers'
//! credentials, header values, the TLS client key — and the instance's redaction hash key are
//! stored sealed with XChaCha20-Poly1305 (a random 24-byte nonce per value), as
//! `enc:v1:<base64 of nonce ‖ ciphertext>`. Everything else of a subscription stays readable,
//! so the writer's reads of filters and schedules need no key.
//!
//! A row `secret_check` in `instance_keys` holds a known text sealed with the key: a database
//! with one refuses to open without the key, or with another. Plain values (a database from
//! before, or written by a release without the key) are read as they are, and sealed when the
//! key is first given (`Store::seal_secrets`).

use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde_json::Value;

/// The prefix of a sealed value.
pub const SEALED: &str = "enc:v1:";

/// What `secret_check` seals.
pub const CHECK_TEXT: &str = "switchboard secret key check v1";

/// The key secrets are sealed with: 32 bytes.
#[derive(Clone)]
pub struct SecretKey(XChaCha20Poly1305);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

/// A sealed value that does not open with the key: another key sealed it, or it was damaged.
#[derive(Debug, thiserror::Error)]
#[error("a stored secret does not open with the configured secret key")]
pub struct Mismatch;

impl SecretKey {
    /// From 32 raw bytes, or 64 hex characters (surrounding whitespace ignored).
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let key: [u8; 32] = match bytes.len() {
            32 => bytes.try_into().expect("32 bytes"),
            _ => {
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| "must be 32 bytes, or 64 hex characters".to_string())?
                    .trim();
                hex32(text).ok_or_else(|| {
                    format!(
                        "must be 32 bytes, or 64 hex characters (got {} characters)",
                        text.len()
                    )
                })?
            }
        };
        Ok(SecretKey(XChaCha20Poly1305::new(&key.into())))
    }

    /// The configured key, if any: `secret_key` (64 hex characters, as `SWITCHBOARD_SECRET_KEY`)
    /// or the file `secret_key_file` — not both.
    pub fn configured(hex: &str, file: &str) -> anyhow::Result<Option<Self>> {
        match (hex.is_empty(), file.is_empty()) {
            (true, true) => Ok(None),
            (false, false) => {
                bail!("give secret_key_file or secret_key (SWITCHBOARD_SECRET_KEY), not both")
            }
            (false, true) => match hex32(hex.trim()) {
                Some(key) => Ok(Some(SecretKey(XChaCha20Poly1305::new(&key.into())))),
                None => bail!("secret_key (SWITCHBOARD_SECRET_KEY) must be 64 hex characters"),
            },
            (true, false) => Self::from_file(Path::new(file)).map(Some),
        }
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading secret_key_file {}", path.display()))?;
        Self::parse(&bytes).map_err(|e| anyhow::anyhow!("secret_key_file {}: {e}", path.display()))
    }

    /// `plain` sealed: `enc:v1:` and the base64 of a random nonce and the ciphertext.
    pub fn seal(&self, plain: &str) -> String {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).expect("the operating system's random source");
        let sealed = self
            .0
            .encrypt(XNonce::from_slice(&nonce), plain.as_bytes())
            .expect("sealing a value in memory");
        let mut bytes = nonce.to_vec();
        bytes.extend(sealed);
        format!("{SEALED}{}", STANDARD.encode(bytes))
    }

    /// A value as stored: opened when sealed, as it is when plain.
    pub fn open(&self, stored: &str) -> Result<String, Mismatch> {
        let Some(b64) = stored.strip_prefix(SEALED) else {
            return Ok(stored.to_string());
        };
        let bytes = STANDARD.decode(b64).map_err(|_| Mismatch)?;
        if bytes.len() < 24 {
            return Err(Mismatch);
        }
        let (nonce, sealed) = bytes.split_at(24);
        let plain = self
            .0
            .decrypt(XNonce::from_slice(nonce), sealed)
            .map_err(|_| Mismatch)?;
        String::from_utf8(plain).map_err(|_| Mismatch)
    }
}

/// 64 hex characters as 32 bytes.
pub fn hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED)
}

/// The string members of a subscription's stored form that hold secrets: its signing secret,
/// the receiver's credentials and TLS key, a broker's URL (its password), header values.
fn secret_slots(spec: &mut Value) -> Vec<&mut Value> {
    let Some(map) = spec.as_object_mut() else {
        return Vec::new();
    };
    let mut slots = Vec::new();
    for (name, value) in map.iter_mut() {
        match name.as_str() {
            "secret" => slots.push(value),
            "auth" | "tls" | "destination" => {
                // A broker's URL holds its password; an HTTP receiver's stays readable.
                let broker = name == "destination"
                    && value.get("type").and_then(Value::as_str) != Some("http");
                if let Some(inner) = value.as_object_mut() {
                    for (field, v) in inner.iter_mut() {
                        let secret = match field.as_str() {
                            "password" | "token" | "client_secret" | "client_key_pem" => true,
                            "url" => broker,
                            _ => false,
                        };
                        if secret {
                            slots.push(v);
                        }
                    }
                }
            }
            "headers" => {
                if let Some(inner) = value.as_object_mut() {
                    slots.extend(inner.values_mut());
                }
            }
            _ => {}
        }
    }
    slots
}

/// A subscription's stored form (JSON text) with its secrets sealed (those sealed already are
/// left as they are).
pub fn seal_spec(key: &SecretKey, text: &str) -> String {
    let Ok(mut spec) = serde_json::from_str::<Value>(text) else {
        return text.to_string();
    };
    for slot in secret_slots(&mut spec) {
        if let Value::String(s) = slot
            && !is_sealed(s)
        {
            *s = key.seal(s);
        }
    }
    spec.to_string()
}

/// A subscription's stored form with its secrets opened (text that is not JSON, as it is).
pub fn open_spec(key: &SecretKey, text: &str) -> Result<String, Mismatch> {
    if !text.contains(SEALED) {
        return Ok(text.to_string());
    }
    let Ok(mut spec) = serde_json::from_str::<Value>(text) else {
        return Ok(text.to_string());
    };
    for slot in secret_slots(&mut spec) {
        if let Value::String(s) = slot
            && is_sealed(s)
        {
            *s = key.open(s)?;
        }
    }
    Ok(spec.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(b: u8) -> SecretKey {
        SecretKey::parse(&[b; 32]).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_with_its_key_only() {
        let k = key(1);
        let sealed = k.seal("whsec_abc");
        assert!(sealed.starts_with(SEALED) && !sealed.contains("whsec_abc"));
        assert_ne!(sealed, k.seal("whsec_abc"), "a nonce of its own each time");
        assert_eq!(k.open(&sealed).unwrap(), "whsec_abc");
        assert!(key(2).open(&sealed).is_err());
        assert_eq!(
            k.open("plain").unwrap(),
            "plain",
            "plain values read as they are"
        );
        assert!(k.open("enc:v1:!!").is_err());
    }

    #[test]
    fn keys_parse_from_raw_bytes_or_hex() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let a = SecretKey::parse(format!("{hex}\n").as_bytes()).unwrap();
        let mut raw = [0u8; 32];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        let b = SecretKey::parse(&raw).unwrap();
        assert_eq!(b.open(&a.seal("x")).unwrap(), "x", "the same key");
        assert!(SecretKey::parse(b"short").is_err());
        assert!(SecretKey::parse(&[b'z'; 64]).is_err());
        assert!(SecretKey::configured("", "").unwrap().is_none());
        assert!(SecretKey::configured(hex, "/some/file").is_err());
        assert!(SecretKey::configured(hex, "").unwrap().is_some());
        let raw32 = "k".repeat(32);
        assert!(
            SecretKey::configured(&raw32, "").is_err(),
            "the variable is hex only"
        );
    }

    #[test]
    fn only_a_subscriptions_secrets_are_sealed() {
        let k = key(7);
        let spec = json!({"url": "https://example.com/h", "secret": "whsec_s3cret",
            "filter": {"usernames": ["jdoe"]}, "headers": {"X-Token": "t0k"},
            "auth": {"type": "basic", "username": "u", "password": "pw"},
            "tls": {"client_cert_pem": "CERT", "client_key_pem": "KEY"}})
        .to_string();
        let sealed = seal_spec(&k, &spec);
        for secret in ["whsec_s3cret", "t0k", "\"pw\"", "KEY"] {
            assert!(!sealed.contains(secret), "{secret} in {sealed}");
        }
        for plain in ["https://example.com/h", "jdoe", "CERT", "basic"] {
            assert!(sealed.contains(plain), "{plain} sealed too");
        }
        assert_eq!(seal_spec(&k, &sealed), sealed, "sealed once");
        let opened: Value = serde_json::from_str(&open_spec(&k, &sealed).unwrap()).unwrap();
        assert_eq!(opened, serde_json::from_str::<Value>(&spec).unwrap());
        assert!(open_spec(&key(8), &sealed).is_err());
        let broker =
            json!({"destination": {"type": "nats", "url": "nats://u:p@h", "subject": "s"}});
        let sealed = seal_spec(&k, &broker.to_string());
        assert!(!sealed.contains("u:p@h") && sealed.contains("\"subject\":\"s\""));
    }
}
