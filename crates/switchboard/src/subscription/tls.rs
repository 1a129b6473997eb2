//! TLS towards an `https` receiver (DESIGN §20): a client certificate and key for mutual TLS,
//! and a private CA as the only trust anchor. The key is write-only: answers show `***`, and a
//! `PATCH` that sends `***` back keeps the stored one.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::destination::MASK;

/// Longest PEM accepted per field.
const MAX_PEM: usize = 64 * 1024;

#[derive(Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The client certificate (PEM; a chain may follow it), presented when the receiver asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_pem: Option<String>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1). Write-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_pem: Option<String>,
    /// When given, the only CA the receiver's certificate may chain to (PEM, one or more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for Tls {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("client_cert_pem", &self.client_cert_pem.is_some())
            .field(
                "client_key_pem",
                &self.client_key_pem.as_ref().map(|_| MASK),
            )
            .field("ca_pem", &self.ca_pem.is_some())
            .finish()
    }
}

impl Tls {
    /// This one with the key as `***`.
    pub fn masked(&self) -> Self {
        let mut t = self.clone();
        if t.client_key_pem.is_some() {
            t.client_key_pem = Some(MASK.into());
        }
        t
    }

    /// In a `PATCH`'s merged `tls` object: a key sent back as `***` takes the stored one.
    pub fn unmask_json(stored: &Tls, given: &mut Map<String, Value>) {
        if given.get("client_key_pem").and_then(Value::as_str) == Some(MASK)
            && let Some(key) = &stored.client_key_pem
        {
            given.insert("client_key_pem".into(), Value::String(key.clone()));
        }
    }

    /// The client identity reqwest presents: the key and the certificate chain, one PEM.
    pub fn identity(&self) -> Option<Result<reqwest::Identity, String>> {
        let (cert, key) = (
            self.client_cert_pem.as_ref()?,
            self.client_key_pem.as_ref()?,
        );
        let pem = format!("{key}\n{cert}\n");
        Some(reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| e.to_string()))
    }

    /// The CA certificates of `ca_pem`.
    pub fn roots(&self) -> Option<Result<Vec<reqwest::Certificate>, String>> {
        let pem = self.ca_pem.as_ref()?;
        Some(
            reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| e.to_string())
                .and_then(|certs| match certs.is_empty() {
                    true => Err("holds no certificate".to_owned()),
                    false => Ok(certs),
                }),
        )
    }

    /// Its problems, each with the field it names: fields that do not parse, a certificate
    /// without its key (or the other way round), a key that is not the certificate's.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let fields = [
            ("tls.client_cert_pem", &self.client_cert_pem),
            ("tls.client_key_pem", &self.client_key_pem),
            ("tls.ca_pem", &self.ca_pem),
        ];
        for (field, value) in fields {
            match value.as_deref() {
                Some(v) if v.len() > MAX_PEM => {
                    out.push((field, "must be at most 65536 bytes".into()))
                }
                Some(MASK) => out.push((
                    field,
                    "is \"***\", which keeps a stored key only in a PATCH".into(),
                )),
                _ => {}
            }
        }
        if !out.is_empty() {
            return out;
        }
        match (&self.client_cert_pem, &self.client_key_pem) {
            (Some(_), None) => out.push((
                "tls.client_key_pem",
                "is required with client_cert_pem (mutual TLS takes both)".into(),
            )),
            (None, Some(_)) => out.push((
                "tls.client_cert_pem",
                "is required with client_key_pem (mutual TLS takes both)".into(),
            )),
            (Some(cert), Some(_)) => {
                if let Err(why) = certificates(cert) {
                    out.push(("tls.client_cert_pem", why));
                } else if let Some(Err(why)) = self.identity() {
                    out.push(("tls.client_key_pem", format!("does not parse: {why}")));
                } else if let Err(why) = self.key_matches() {
                    out.push(("tls.client_key_pem", why));
                }
            }
            (None, None) => {}
        }
        match self.roots() {
            Some(Err(why)) => out.push(("tls.ca_pem", format!("does not parse: {why}"))),
            Some(Ok(roots)) => {
                // The DER inside is read when the roots are loaded.
                let mut builder = reqwest::Client::builder()
                    .use_rustls_tls()
                    .tls_built_in_root_certs(false);
                for root in roots {
                    builder = builder.add_root_certificate(root);
                }
                if let Err(e) = builder.build() {
                    out.push((
                        "tls.ca_pem",
                        format!(
                            "is not a CA certificate: {}",
                            crate::delivery::sender::error_chain(&e)
                        ),
                    ));
                }
            }
            None => {}
        }
        out
    }

    /// Whether the key is the certificate's: a client built with both (rustls checks the pair).
    fn key_matches(&self) -> Result<(), String> {
        let Some(Ok(identity)) = self.identity() else {
            return Ok(());
        };
        reqwest::Client::builder()
            .use_rustls_tls()
            .identity(identity)
            .build()
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "does not go with client_cert_pem: {}",
                    crate::delivery::sender::error_chain(&e)
                )
            })
    }
}

/// The certificates of a PEM bundle, or why there are none.
fn certificates(pem: &str) -> Result<Vec<reqwest::Certificate>, String> {
    match reqwest::Certificate::from_pem_bundle(pem.as_bytes()) {
        Ok(c) if !c.is_empty() => Ok(c),
        Ok(_) => Err("holds no certificate".into()),
        Err(e) => Err(format!("does not parse: {e}")),
    }
}
