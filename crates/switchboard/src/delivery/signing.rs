//! Standard Webhooks signatures, in two schemes (DESIGN §5, §14):
//!
//! - `v1`: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, where the key is the
//!   base64-decoded part of a `whsec_` secret;
//! - `v1a`: `v1a,<base64 Ed25519 signature of "{id}.{timestamp}.{body}">`, where the secret is
//!   `whsk_<base64 of the 64-byte key pair: 32-byte seed, then the 32-byte public key>` and
//!   receivers verify with the public key alone, `whpk_<base64 of its 32 bytes>`.
//!
//! And for receivers that verify another ecosystem's signatures (DESIGN §20), beside the
//! Standard Webhooks headers, with a `whsec_` secret whose whole text (prefix included) is the
//! HMAC key, as those libraries take a secret:
//!
//! - `github`: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(key, body)>`, newest secret only;
//! - `stripe`: `Switchboard-Signature: t=<unix>,v1=<hex HMAC-SHA256(key, "{t}.{body}")>`, one
//!   `v1=` per live secret.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, SigningKey, Verifier as _, VerifyingKey};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const PREFIX: &str = "whsec_";
const KEY_PAIR_PREFIX: &str = "whsk_";
const PUBLIC_KEY_PREFIX: &str = "whpk_";
/// Secret key lengths accepted, in bytes.
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// How a subscription's deliveries are signed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// HMAC-SHA256 with a shared `whsec_` secret.
    #[default]
    V1,
    /// Ed25519 with a `whsk_` key pair; receivers hold only the `whpk_` public key.
    V1a,
    /// `v1`, and GitHub's `X-Hub-Signature-256`.
    Github,
    /// `v1`, and a Stripe-style `Switchboard-Signature`.
    Stripe,
}

impl Scheme {
    /// What a secret for this scheme must be, for error messages.
    pub fn wants(self) -> &'static str {
        match self {
            Scheme::V1a => "must be a whsk_ key pair for signature_scheme v1a",
            _ => "must be a whsec_ secret for signature_scheme v1, github and stripe",
        }
    }
}

/// A decoded signing secret.
#[derive(Clone)]
pub enum Secret {
    /// The decoded key, and the secret's whole text (the key of `github` and `stripe`).
    Hmac(Vec<u8>, Box<str>),
    Ed25519(Box<SigningKey>),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl Secret {
    /// Parses `whsec_<base64>` or `whsk_<base64>`; the message explains a refusal.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if let Some(b64) = s.strip_prefix(KEY_PAIR_PREFIX) {
            let pair = STANDARD
                .decode(b64)
                .map_err(|_| "the part after whsk_ must be standard base64")?;
            let pair: [u8; 64] = pair.try_into().map_err(
                |_| "a whsk_ key must decode to 64 bytes: the seed, then the public key",
            )?;
            let key = SigningKey::from_keypair_bytes(&pair)
                .map_err(|_| "the public key of a whsk_ key pair must be its seed's")?;
            return Ok(Secret::Ed25519(Box::new(key)));
        }
        let b64 = s
            .strip_prefix(PREFIX)
            .ok_or("must start with whsec_ (or whsk_ for v1a) followed by base64")?;
        let key = STANDARD
            .decode(b64)
            .map_err(|_| "the part after whsec_ must be standard base64")?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err("must decode to 24 to 64 bytes");
        }
        Ok(Secret::Hmac(key, s.into()))
    }

    /// A fresh random secret of `scheme`, in its text form.
    pub fn generate_for(scheme: Scheme) -> String {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the operating system's random source works");
        match scheme {
            Scheme::V1 | Scheme::Github | Scheme::Stripe => {
                format!("{PREFIX}{}", STANDARD.encode(seed))
            }
            Scheme::V1a => {
                let key = SigningKey::from_bytes(&seed);
                format!(
                    "{KEY_PAIR_PREFIX}{}",
                    STANDARD.encode(key.to_keypair_bytes())
                )
            }
        }
    }

    /// A fresh random `v1` secret in its text form.
    pub fn generate() -> String {
        Self::generate_for(Scheme::V1)
    }

    /// The Standard Webhooks scheme this secret signs with.
    pub fn scheme(&self) -> Scheme {
        match self {
            Secret::Hmac(..) => Scheme::V1,
            Secret::Ed25519(_) => Scheme::V1a,
        }
    }

    /// Whether this secret can sign for `scheme`: a `whsec_` secret for all but `v1a`.
    pub fn signs_for(&self, scheme: Scheme) -> bool {
        matches!(
            (self, scheme),
            (Secret::Ed25519(_), Scheme::V1a)
                | (
                    Secret::Hmac(..),
                    Scheme::V1 | Scheme::Github | Scheme::Stripe
                )
        )
    }

    /// `whpk_<base64>`, the public key a receiver verifies `v1a` signatures with.
    pub fn public_key(&self) -> Option<String> {
        match self {
            Secret::Hmac(..) => None,
            Secret::Ed25519(key) => Some(format!(
                "{PUBLIC_KEY_PREFIX}{}",
                STANDARD.encode(key.verifying_key().as_bytes())
            )),
        }
    }

    /// The signature of one message, with its scheme's prefix (`v1,` or `v1a,`).
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        match self {
            Secret::Hmac(key, _) => {
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
                mac.update(msg_id.as_bytes());
                mac.update(b".");
                mac.update(timestamp.to_string().as_bytes());
                mac.update(b".");
                mac.update(body);
                format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
            }
            Secret::Ed25519(key) => {
                let signature = key.sign(&signed_content(msg_id, timestamp, body));
                format!("v1a,{}", STANDARD.encode(signature.to_bytes()))
            }
        }
    }
}

/// `{id}.{timestamp}.{body}`: what is signed.
fn signed_content(msg_id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let ts = timestamp.to_string();
    let mut msg = Vec::with_capacity(msg_id.len() + ts.len() + body.len() + 2);
    msg.extend_from_slice(msg_id.as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(ts.as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(body);
    msg
}

/// A `whpk_` public key, as receivers hold it.
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let b64 = s
            .strip_prefix(PUBLIC_KEY_PREFIX)
            .ok_or("must start with whpk_ followed by base64")?;
        let bytes: [u8; 32] = STANDARD
            .decode(b64)
            .map_err(|_| "the part after whpk_ must be standard base64")?
            .try_into()
            .map_err(|_| "must decode to 32 bytes")?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| "is not an Ed25519 public key")
    }

    /// Whether one of the `v1a,` signatures of a `webhook-signature` header is this key's.
    pub fn verify(&self, header: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> bool {
        let msg = signed_content(msg_id, timestamp, body);
        header.split(' ').any(|sig| {
            sig.strip_prefix("v1a,")
                .and_then(|b64| STANDARD.decode(b64).ok())
                .and_then(|bytes| ed25519_dalek::Signature::from_slice(&bytes).ok())
                .is_some_and(|sig| self.0.verify(&msg, &sig).is_ok())
        })
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

/// HMAC-SHA256 of `parts` under `secret`'s whole text, in lowercase hex; `None` for a key pair.
fn text_hmac_hex(secret: &Secret, parts: &[&[u8]]) -> Option<String> {
    let Secret::Hmac(_, text) = secret else {
        return None;
    };
    let mut mac =
        Hmac::<Sha256>::new_from_slice(text.as_bytes()).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    let bytes = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(2 * bytes.len());
    for b in bytes {
        use std::fmt::Write;
        let _ = write!(hex, "{b:02x}");
    }
    Some(hex)
}

/// The headers `scheme` adds to the Standard Webhooks ones, signed with `secrets` (newest
/// first) at `timestamp`: GitHub's `x-hub-signature-256` with the newest, or the Stripe-style
/// `switchboard-signature` with each.
pub fn scheme_headers<'a>(
    scheme: Scheme,
    mut secrets: impl Iterator<Item = &'a Secret>,
    timestamp: i64,
    body: &[u8],
) -> Option<(&'static str, String)> {
    match scheme {
        Scheme::V1 | Scheme::V1a => None,
        Scheme::Github => {
            let hex = text_hmac_hex(secrets.next()?, &[body])?;
            Some(("x-hub-signature-256", format!("sha256={hex}")))
        }
        Scheme::Stripe => {
            let t = timestamp.to_string();
            let mut value = format!("t={t}");
            for s in secrets {
                if let Some(hex) = text_hmac_hex(s, &[t.as_bytes(), b".", body]) {
                    value.push_str(",v1=");
                    value.push_str(&hex);
                }
            }
            Some(("switchboard-signature", value))
        }
    }
}

/// Checks a `webhook-signature` header against one secret (for `listen` and tests), as the
/// Standard Webhooks libraries do: HMAC signatures compared in constant time; a `v1a` key pair
/// verifies as its receiver would, with the public key.
pub fn verify(secret: &Secret, header: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> bool {
    match secret {
        Secret::Hmac(key, _) => {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(&signed_content(msg_id, timestamp, body));
            header.split(' ').any(|sig| {
                sig.strip_prefix("v1,")
                    .and_then(|b64| STANDARD.decode(b64).ok())
                    // `verify_slice` compares in constant time.
                    .is_some_and(|bytes| mac.clone().verify_slice(&bytes).is_ok())
            })
        }
        Secret::Ed25519(key) => {
            PublicKey(key.verifying_key()).verify(header, msg_id, timestamp, body)
        }
    }
}

/// What a receiver verifies with: a signing secret (`whsec_`, or a `whsk_` key pair), or for
/// `v1a` only the public key (`whpk_`).
pub enum Verifier {
    Secret(Secret),
    PublicKey(PublicKey),
}

impl Verifier {
    /// Parses `whsec_…`, `whsk_…` or `whpk_…`.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.starts_with(PUBLIC_KEY_PREFIX) {
            return PublicKey::parse(s).map(Verifier::PublicKey);
        }
        Secret::parse(s).map(Verifier::Secret)
    }

    pub fn verify(&self, header: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> bool {
        match self {
            Verifier::Secret(secret) => verify(secret, header, msg_id, timestamp, body),
            Verifier::PublicKey(key) => key.verify(header, msg_id, timestamp, body),
        }
    }
}

/// How far a `webhook-timestamp` may be from now, in seconds, as the Standard Webhooks
/// libraries allow (older: a replay; newer: a wrong clock).
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 5 * 60;

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

    /// RFC 8032's first test vector (the empty message's signature), through a `whsk_` pair.
    #[test]
    fn ed25519_rfc8032_test_vector() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let public = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        let pair = [seed, public.clone()].concat();
        let secret = Secret::parse(&format!("whsk_{}", STANDARD.encode(&pair))).unwrap();
        assert_eq!(secret.scheme(), Scheme::V1a);
        assert_eq!(
            secret.public_key().unwrap(),
            format!("whpk_{}", STANDARD.encode(&public))
        );
        let Secret::Ed25519(key) = &secret else {
            unreachable!()
        };
        let sig = key.sign(b"");
        assert_eq!(
            sig.to_bytes().to_vec(),
            hex(concat!(
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155",
                "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
            ))
        );
    }

    #[test]
    fn v1a_signatures_verify_with_the_public_key_only() {
        let secret = Secret::parse(&Secret::generate_for(Scheme::V1a)).unwrap();
        let public = PublicKey::parse(&secret.public_key().unwrap()).unwrap();
        let header = signature_header([&secret], "msg_1", 1_700_000_000, b"{\"a\":1}");
        assert!(header.starts_with("v1a,"));
        assert!(public.verify(&header, "msg_1", 1_700_000_000, b"{\"a\":1}"));
        assert!(verify(
            &secret,
            &header,
            "msg_1",
            1_700_000_000,
            b"{\"a\":1}"
        ));
        assert!(!public.verify(&header, "msg_1", 1_700_000_001, b"{\"a\":1}"));
        assert!(!public.verify(&header, "msg_2", 1_700_000_000, b"{\"a\":1}"));
        assert!(!public.verify(&header, "msg_1", 1_700_000_000, b"{\"a\":2}"));
        // Another key's signature, or an HMAC one, does not verify.
        let other = Secret::parse(&Secret::generate_for(Scheme::V1a)).unwrap();
        let hmac = Secret::parse(&Secret::generate()).unwrap();
        let both = signature_header([&other, &hmac], "msg_1", 1_700_000_000, b"{\"a\":1}");
        assert!(!public.verify(&both, "msg_1", 1_700_000_000, b"{\"a\":1}"));
    }

    #[test]
    fn key_pairs_and_public_keys() {
        let pair = STANDARD
            .decode(
                Secret::generate_for(Scheme::V1a)
                    .strip_prefix("whsk_")
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(pair.len(), 64);
        let mut wrong = pair.clone();
        wrong[40] ^= 1;
        for (input, ok) in [
            (format!("whsk_{}", STANDARD.encode(&pair)), true),
            (format!("whsk_{}", STANDARD.encode(&wrong)), false),
            (format!("whsk_{}", STANDARD.encode(&pair[..32])), false),
            ("whsk_!!".to_string(), false),
        ] {
            assert_eq!(Secret::parse(&input).is_ok(), ok, "{input}");
        }
        assert!(PublicKey::parse(&format!("whpk_{}", STANDARD.encode(&pair[32..]))).is_ok());
        assert!(PublicKey::parse(&format!("whpk_{}", STANDARD.encode(&pair[..31]))).is_err());
        assert!(PublicKey::parse("whsec_AAAA").is_err());
    }
}
