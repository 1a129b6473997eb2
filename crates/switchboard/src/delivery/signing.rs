//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`,
//! where the key is the base64-decoded part of a `whsec_` secret.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &str = "whsec_";
/// Secret key lengths accepted, in bytes.
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// A decoded signing secret.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl Secret {
    /// Parses `whsec_<base64>`; the message explains a refusal.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let b64 = s
            .strip_prefix(PREFIX)
            .ok_or("must start with whsec_ followed by base64")?;
        let key = STANDARD
            .decode(b64)
            .map_err(|_| "the part after whsec_ must be standard base64")?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err("must decode to 24 to 64 bytes");
        }
        Ok(Secret(key))
    }

    /// A fresh random secret in its text form.
    pub fn generate() -> String {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the operating system's random source works");
        format!("{PREFIX}{}", STANDARD.encode(key))
    }

    /// The `v1,` signature of one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header value: one signature per live secret, space-separated.
pub fn signature_header<'a>(
    secrets: impl IntoIterator<Item = &'a Secret>,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let sigs: Vec<String> = secrets
        .into_iter()
        .map(|s| s.sign(msg_id, timestamp, body))
        .collect();
    sigs.join(" ")
}

/// Checks a `webhook-signature` header against one secret (for `listen` and tests).
pub fn verify(secret: &Secret, header: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> bool {
    let expected = secret.sign(msg_id, timestamp, body);
    header.split(' ').any(|sig| sig == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's test vector.
    #[test]
    fn standard_webhooks_test_vector() {
        let secret = Secret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        assert_eq!(
            secret.sign("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn secrets() {
        for (input, ok) in [
            ("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD", true),
            ("C2FVsBQIhrscChlQIMV+b5sSYspob7oD", false),
            ("whsec_!!!", false),
            ("whsec_AAAA", false),
            (&format!("whsec_{}", STANDARD.encode([7u8; 65])), false),
            (&format!("whsec_{}", STANDARD.encode([7u8; 64])), true),
        ] {
            assert_eq!(Secret::parse(input).is_ok(), ok, "{input}");
        }
        let generated = Secret::generate();
        assert!(Secret::parse(&generated).is_ok());
        assert_ne!(generated, Secret::generate());
    }

    #[test]
    fn one_signature_per_secret_each_verifiable() {
        let (a, b) = (
            Secret::parse(&Secret::generate()).unwrap(),
            Secret::parse(&Secret::generate()).unwrap(),
        );
        let header = signature_header(&[a.clone(), b.clone()], "id", 5, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(verify(&a, &header, "id", 5, b"{}"));
        assert!(verify(&b, &header, "id", 5, b"{}"));
        assert!(!verify(&a, &header, "id", 6, b"{}"));
        assert!(!verify(&a, &header, "id", 5, b"{ }"));
    }
}
