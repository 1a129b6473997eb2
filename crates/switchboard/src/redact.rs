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
use sha2::Sha256;

/// Most fields one subscription's `redact` may name.
pub const MAX_FIELDS: usize = 32;

/// What becomes of a field in the delivered body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
// Named apart from the subscription's `Mode` (push or pull) in the OpenAPI document.
#[schema(as = RedactMode)]
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
        crate::secrets::hex32(text.trim()).map(HashKey)
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
    ///
    /// On the delivery path of every event of a redacting subscription, so the body is not
    /// parsed into values: its members are read as raw JSON text (borrowed) and written out
    /// again as they were, but for the named fields of `AdditionalFields`.
    pub fn apply(&self, body: &[u8]) -> Option<Vec<u8>> {
        let text = std::str::from_utf8(body).ok()?;
        let Members(top) = serde_json::from_str(text).ok()?;
        let (_, raw) = top.iter().find(|(k, _)| &**k == "AdditionalFields")?;
        let Members(fields) = serde_json::from_str(raw.get()).ok()?;
        if !fields.iter().any(|(k, _)| self.mode(k).is_some()) {
            return None;
        }
        let mut out = Vec::with_capacity(body.len() + 64);
        out.push(b'{');
        for (i, (key, raw)) in top.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_key(&mut out, key);
            if &**key != "AdditionalFields" {
                out.extend_from_slice(raw.get().as_bytes());
                continue;
            }
            out.push(b'{');
            let mut first = true;
            for (name, value) in &fields {
                let mode = self.mode(name);
                if mode == Some(Mode::Drop) {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                write_key(&mut out, name);
                let raw = value.get();
                match mode {
                    Some(m) if raw != "null" => {
                        let plain = match raw.starts_with('"') {
                            true => serde_json::from_str::<String>(raw).ok()?,
                            false => raw.to_string(),
                        };
                        let changed = match m {
                            Mode::Mask => mask(&plain),
                            _ => self.hash(&plain),
                        };
                        serde_json::to_writer(&mut out, &changed).ok()?;
                    }
                    _ => out.extend_from_slice(raw.as_bytes()),
                }
            }
            out.push(b'}');
        }
        out.push(b'}');
        Some(out)
    }

    fn mode(&self, field: &str) -> Option<Mode> {
        self.rules.iter().find(|(f, _)| f == field).map(|(_, m)| *m)
    }

    fn hash(&self, text: &str) -> String {
        let mut mac = self.key.clone();
        mac.update(text.as_bytes());
        format!("hmac-sha256:{}", hex(&mac.finalize().into_bytes()))
    }
}

/// A JSON object's members in their order, each value as its raw text (borrowed from the
/// input when the key needs no unescaping).
struct Members<'a>(Vec<(Key<'a>, &'a serde_json::value::RawValue)>);

/// An object's key: borrowed from the input, or unescaped into a string of its own.
struct Key<'a>(std::borrow::Cow<'a, str>);

impl std::ops::Deref for Key<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'a>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'a>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(Visit(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Members<'a>, M::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(entry) = map.next_entry()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// `"key":`, the key escaped as JSON.
fn write_key(out: &mut Vec<u8>, key: &str) {
    serde_json::to_writer(&mut *out, key).expect("a string serializes");
    out.push(b':');
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
    use serde_json::{Value, json};

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
    fn escaped_text_is_redacted_as_its_characters() {
        let key = HashKey::new([3; 32]);
        let body = br#"{"Id":"x","AdditionalFields":{"Ani":"say \"hi\" 1234","Note":"\u00e9t\u00e9","Amount":12.50}}"#;
        let r = Redactor::new(
            &rules(&[("Ani", Mode::Mask), ("Amount", Mode::Mask)]),
            &key,
            "t",
        )
        .unwrap();
        let out = r.apply(body).unwrap();
        let f = fields(&out);
        assert_eq!(
            f["Ani"], "*********1234",
            "13 characters: all but the last 4"
        );
        assert_eq!(f["Amount"], "*2.50", "a number's text as written");
        assert_eq!(f["Note"], "été", "the rest as it was");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["Id"], "x");
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
