//! Redaction per subscription (DESIGN §19): what a receiver gets of an event's personal data.
//!
//! A subscription's `redact` names `AdditionalFields` and what becomes of each in the bodies it
//! is sent — `drop` (left out), `mask` (all but the last four characters as `*`), `hash`
//! (`hmac-sha256:<hex>` keyed per tenant). It is applied to the stored body just before
//! signing, for every destination, and to a pull subscription's messages; the stored event, the
//! log, the streams and the agents view are never changed by it.
//!
//! The per-tenant hash key is derived from one random key the instance keeps in its database
//! (`instance_keys`, row `redact_hash`; copied by `switchboard copy`), so a hash is the same
//! across events, subscriptions, nodes and restarts, and differs between tenants.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

/// Most fields one subscription's `redact` may name.
pub const MAX_FIELDS: usize = 32;

/// What becomes of a field in the delivered body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The field is left out.
    Drop,
    /// The last 4 characters kept, every other one replaced by `*` (a number is masked as its
    /// decimal text and sent as a string).
    Mask,
    /// `"hmac-sha256:<64 lowercase hex>"` of the value's text, keyed per tenant.
    Hash,
}

/// A subscription's `redact`: field name → mode.
pub type Rules = BTreeMap<String, Mode>;

/// The instance's hash key, from which each tenant's is derived.
#[derive(Clone)]
pub struct HashKey([u8; 32]);

impl HashKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        HashKey(bytes)
    }

    /// A key of this process only: what a sender built without the stored one uses (tests,
    /// tools); the server always sets the stored key.
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the operating system's random source");
        HashKey(bytes)
    }

    /// Reads the stored form, 64 hex characters.
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(HashKey(bytes))
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// `tenant`'s key: HMAC-SHA256 of its id under the instance key.
    fn tenant(&self, tenant: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        mac.update(b"switchboard redact hash v1\0");
        mac.update(tenant.as_bytes());
        let derived = mac.finalize().into_bytes();
        <Hmac<Sha256> as Mac>::new_from_slice(&derived).expect("any key length")
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// A subscription's rules made ready: its tenant's hash key derived once.
pub struct Redactor {
    rules: Vec<(String, Mode)>,
    key: Hmac<Sha256>,
}

impl Redactor {
    /// `None` when `rules` is empty: bodies go as stored.
    pub fn new(rules: &Rules, key: &HashKey, tenant: &str) -> Option<Self> {
        if rules.is_empty() {
            return None;
        }
        Some(Redactor {
            rules: rules.iter().map(|(f, m)| (f.clone(), *m)).collect(),
            key: key.tenant(tenant),
        })
    }

    /// The body a receiver gets of the stored event `body`; `None` when it is unchanged (none
    /// of the fields in it, or a body that is not an event object).
    pub fn apply(&self, body: &[u8]) -> Option<Vec<u8>> {
        // Most bodies of a subscription that redacts hold a field it names; a body naming none
        // of them is sent as it is without being parsed.
        if !self.rules.iter().any(|(f, _)| mentions(body, f)) {
            return None;
        }
        let mut event: Value = serde_json::from_slice(body).ok()?;
        let fields = event.get_mut("AdditionalFields")?.as_object_mut()?;
        let mut changed = false;
        for (name, mode) in &self.rules {
            let Some(value) = fields.get_mut(name) else {
                continue;
            };
            changed = true;
            match mode {
                Mode::Drop => {
                    fields.shift_remove(name);
                }
                Mode::Mask if !value.is_null() => *value = Value::String(mask(&text(value))),
                Mode::Hash if !value.is_null() => *value = Value::String(self.hash(&text(value))),
                Mode::Mask | Mode::Hash => {}
            }
        }
        changed.then(|| serde_json::to_vec(&event).unwrap_or_else(|_| body.to_vec()))
    }

    fn hash(&self, text: &str) -> String {
        let mut mac = self.key.clone();
        mac.update(text.as_bytes());
        format!("hmac-sha256:{}", hex(&mac.finalize().into_bytes()))
    }
}

/// Whether `body` holds `"name"` (a field name as a JSON key would be written).
fn mentions(body: &[u8], name: &str) -> bool {
    let n = name.len() + 2;
    body.windows(n)
        .any(|w| w[0] == b'"' && w[n - 1] == b'"' && &w[1..n - 1] == name.as_bytes())
}

/// A value's text: a string's characters, a number's decimal text, anything else its JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// All but the last 4 characters replaced by `*`, one per character; 4 or fewer: all `*`.
fn mask(text: &str) -> String {
    let count = text.chars().count();
    let keep = if count > 4 { 4 } else { 0 };
    let mut out = "*".repeat(count - keep);
    out.extend(text.chars().skip(count - keep));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(pairs: &[(&str, Mode)]) -> Rules {
        pairs.iter().map(|(f, m)| (f.to_string(), *m)).collect()
    }

    fn body() -> Vec<u8> {
        json!({"Id": "6f1c1d52-57a3-4c8e-9f43-0d6d1b0b6c11", "CreationDateUtc": "20261204120000",
               "Category": 1, "Code": 1,
               "AdditionalFields": {"SessionId": "s1", "Username": "jdoe", "PhoneNo": "+15551234567",
                                    "ExitCode": 12345}})
        .to_string()
        .into_bytes()
    }

    fn fields(out: &[u8]) -> serde_json::Map<String, Value> {
        let v: Value = serde_json::from_slice(out).unwrap();
        v["AdditionalFields"].as_object().unwrap().clone()
    }

    #[test]
    fn masks_keep_the_last_four_characters() {
        assert_eq!(mask("+15551234567"), "********4567");
        assert_eq!(mask("abcd"), "****");
        assert_eq!(mask("abc"), "***");
        assert_eq!(mask(""), "");
        assert_eq!(mask("ñandú-12345"), "*******2345", "characters, not bytes");
    }

    #[test]
    fn each_mode_changes_only_its_field() {
        let key = HashKey::new([7; 32]);
        let r = Redactor::new(
            &rules(&[
                ("PhoneNo", Mode::Mask),
                ("Username", Mode::Hash),
                ("SessionId", Mode::Drop),
                ("ExitCode", Mode::Mask),
            ]),
            &key,
            "acme",
        )
        .unwrap();
        let out = r.apply(&body()).expect("changed");
        let f = fields(&out);
        assert_eq!(f["PhoneNo"], "********4567");
        assert_eq!(
            f["ExitCode"], "*2345",
            "a number masked as its text, sent as a string"
        );
        assert!(!f.contains_key("SessionId"));
        let hash = f["Username"].as_str().unwrap();
        assert!(
            hash.starts_with("hmac-sha256:") && hash.len() == 12 + 64,
            "{hash}"
        );
        assert!(
            hash[12..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        // The rest of the event as it was, in its order.
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(r#"{"Id":"6f1c1d52"#), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["Category"], 1);
        assert_eq!(v["CreationDateUtc"], "20261204120000");
    }

    #[test]
    fn hashes_are_stable_per_tenant_and_differ_across_tenants() {
        let key = HashKey::new([1; 32]);
        let hash = |tenant: &str, key: &HashKey| {
            let r = Redactor::new(&rules(&[("Username", Mode::Hash)]), key, tenant).unwrap();
            fields(&r.apply(&body()).unwrap())["Username"].clone()
        };
        assert_eq!(hash("acme", &key), hash("acme", &key));
        assert_ne!(hash("acme", &key), hash("globex", &key));
        assert_ne!(hash("acme", &key), hash("acme", &HashKey::new([2; 32])));
        // The value's text under the tenant's key: HMAC-SHA256(HMAC(instance, label ‖ tenant), v).
        let mut derive = <Hmac<Sha256> as Mac>::new_from_slice(&[1; 32]).unwrap();
        derive.update(b"switchboard redact hash v1\0acme");
        let tenant_key = derive.finalize().into_bytes();
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&tenant_key).unwrap();
        mac.update(b"jdoe");
        let want = format!("hmac-sha256:{}", hex(&mac.finalize().into_bytes()));
        assert_eq!(hash("acme", &key), want);
    }

    #[test]
    fn bodies_without_the_fields_go_unchanged() {
        let key = HashKey::new([1; 32]);
        let r = Redactor::new(&rules(&[("Ani", Mode::Drop)]), &key, "t").unwrap();
        assert_eq!(r.apply(&body()), None);
        assert_eq!(r.apply(b"not json \"Ani\""), None);
        // Named elsewhere than in AdditionalFields: not a field of the event.
        let other = br#"{"Id":"x","AdditionalFields":{"Note":"Ani"}}"#;
        assert_eq!(r.apply(other), None);
        let null = br#"{"Id":"x","AdditionalFields":{"Ani":null}}"#;
        let mask = Redactor::new(&rules(&[("Ani", Mode::Mask)]), &key, "t").unwrap();
        assert_eq!(fields(&mask.apply(null).unwrap())["Ani"], Value::Null);
        assert!(Redactor::new(&Rules::new(), &key, "t").is_none());
    }

    #[test]
    fn the_key_reads_back_from_its_hex() {
        let key = HashKey::random();
        let again = HashKey::from_hex(&key.to_hex()).unwrap();
        assert_eq!(key.0, again.0);
        assert!(HashKey::from_hex("abc").is_none());
        assert!(HashKey::from_hex(&"zz".repeat(32)).is_none());
    }
}
