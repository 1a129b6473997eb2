//! TLS towards receivers (DESIGN §20): a receiver on loopback that asks for a client
//! certificate from the test's own CA, and a server certificate from another CA of the test's,
//! unknown to the system's roots.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto::ring};

use crate::support::app::{ADMIN_KEY, TestApp, agent_event, fields_named, guid, json_ok, problem};
use crate::support::receiver::eventually;

const SUBS: &str = "/v1/tenants/default/subscriptions";

/// A CA of the test's own.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            cert,
            key,
        }
    }

    /// A leaf certificate for `purpose`, and its key: (certificate PEM, key PEM, DERs).
    pub fn issue(&self, name: &str, purpose: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

/// An `https` receiver on loopback (`https://localhost:<port>/`) that asks every client for a
/// certificate chaining to `clients`; counts the requests it answered and the handshakes it
/// refused.
pub struct TlsReceiver {
    pub url: String,
    pub answered: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

impl TlsReceiver {
    pub async fn start(server: &Leaf, clients: &Ca) -> Self {
        let provider = Arc::new(ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(clients.der.clone()).unwrap();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server.key_der.clone()));
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server.cert_der.clone()], key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://localhost:{}/",
            listener.local_addr().unwrap().port()
        );
        let (answered, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, r) = (answered.clone(), refused.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, a, r) = (acceptor.clone(), a.clone(), r.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        r.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    // One HTTP/1.1 request per connection: its head, then its body.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        let Ok(n) = tls.read(&mut chunk).await else {
                            r.fetch_add(1, Ordering::SeqCst);
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    a.fetch_add(1, Ordering::SeqCst);
                    let answer = b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n";
                    let _ = tls.write_all(answer).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        TlsReceiver {
            url,
            answered,
            refused,
        }
    }
}

#[tokio::test]
async fn a_receiver_asking_for_a_client_certificate_gets_one_only_from_tls() {
    let (server_ca, client_ca) = (Ca::new("Receiver CA"), Ca::new("Client CA"));
    let server = server_ca.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let client = client_ca.issue("switchboard", ExtendedKeyUsagePurpose::ClientAuth);
    let rx = TlsReceiver::start(&server, &client_ca).await;
    let app = TestApp::spawn().await;
    let mutual = app
        .subscribe(
            json!({"url": rx.url, "retry_schedule_secs": [3600], "tls": {
            "client_cert_pem": client.cert_pem, "client_key_pem": client.key_pem,
            "ca_pem": server_ca.pem}}),
        )
        .await;
    assert_eq!(
        mutual["tls"]["client_key_pem"], "***",
        "the key is write-only"
    );
    assert_eq!(mutual["tls"]["client_cert_pem"], client.cert_pem.as_str());
    // The receiver trusted, but no client certificate: the receiver refuses the handshake.
    let no_cert = app
        .subscribe(json!({"url": rx.url, "retry_schedule_secs": [3600],
                          "tls": {"ca_pem": server_ca.pem}}))
        .await;
    // A client certificate, but the receiver's CA unknown: the client refuses the receiver.
    let unknown_ca = app
        .subscribe(
            json!({"url": rx.url, "retry_schedule_secs": [3600], "tls": {
            "client_cert_pem": client.cert_pem, "client_key_pem": client.key_pem}}),
        )
        .await;
    app.publish_ok("default", &agent_event(&guid(), 1, "jdoe"))
        .await;

    let id = |s: &Value| s["id"].as_str().unwrap().to_owned();
    let mutual_id = id(&mutual);
    eventually("the mutual-TLS delivery succeeded", || async {
        (app.deliveries(&mutual_id, Some("succeeded")).await.len() == 1).then_some(())
    })
    .await;
    for (sub, says) in [
        (&no_cert, "refused by the receiver"),
        (&unknown_ca, "UnknownIssuer"),
    ] {
        let sub_id = id(sub);
        let failed = eventually("a failed attempt", || async {
            let d = app.deliveries(&sub_id, Some("pending")).await;
            d.into_iter().find(|d| d["attempt_count"] == 1)
        })
        .await;
        let error = failed["last_error"].as_str().unwrap_or_default().to_owned();
        match says {
            "UnknownIssuer" => assert!(error.contains("UnknownIssuer"), "{error}"),
            _ => assert!(
                [
                    "certificate",
                    "alert",
                    "tls",
                    "TLS",
                    "handshake",
                    "connection"
                ]
                .iter()
                .any(|w| error.contains(w)),
                "a TLS error: {error}"
            ),
        }
    }
    assert_eq!(
        rx.answered.load(Ordering::SeqCst),
        1,
        "only the mutual-TLS one answered"
    );
    assert!(
        rx.refused.load(Ordering::SeqCst) >= 1,
        "the certificate-less handshake refused"
    );

    // A PATCH sending the masked key back keeps it: the next delivery still gets through.
    let path = format!("{SUBS}/{mutual_id}");
    let shown = json_ok(app.get(&path, ADMIN_KEY).await).await;
    let patch = json!({"description": "mTLS", "tls": shown["tls"].clone()});
    json_ok(
        app.call(Method::PATCH, &path, ADMIN_KEY, Some(&patch))
            .await,
    )
    .await;
    app.publish_ok("default", &agent_event(&guid(), 3, "jdoe"))
        .await;
    eventually("the second mutual-TLS delivery succeeded", || async {
        (app.deliveries(&mutual_id, Some("succeeded")).await.len() == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn bad_tls_settings_are_422_naming_the_field_and_store_nothing() {
    let ca = Ca::new("Client CA");
    let client = ca.issue("switchboard", ExtendedKeyUsagePurpose::ClientAuth);
    let other = ca.issue("someone-else", ExtendedKeyUsagePurpose::ClientAuth);
    let app = TestApp::spawn().await;
    let url = "https://hooks.example.com/in";
    let cases = [
        (
            json!({"url": url, "tls": {"client_cert_pem": "not a pem", "client_key_pem": client.key_pem}}),
            "tls.client_cert_pem",
        ),
        (
            json!({"url": url, "tls": {"client_cert_pem": client.cert_pem, "client_key_pem": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}}),
            "tls.client_key_pem",
        ),
        // A key that does not go with the certificate.
        (
            json!({"url": url, "tls": {"client_cert_pem": client.cert_pem, "client_key_pem": other.key_pem}}),
            "tls.client_key_pem",
        ),
        (
            json!({"url": url, "tls": {"client_cert_pem": client.cert_pem}}),
            "tls.client_key_pem",
        ),
        (
            json!({"url": url, "tls": {"ca_pem": "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"}}),
            "tls.ca_pem",
        ),
        (
            json!({"url": "http://hooks.example.com/in", "tls": {"ca_pem": ca.pem}}),
            "tls",
        ),
        (json!({"url": url, "tls": {"pin": "x"}}), "tls"),
    ];
    for (body, field) in cases {
        let r = app.call(Method::POST, SUBS, ADMIN_KEY, Some(&body)).await;
        assert_eq!(
            r.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field}: {body}"
        );
        let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        let named = fields_named(&p);
        assert!(named.iter().any(|f| f.starts_with(field)), "{field} in {p}");
        assert!(
            !p.to_string().contains("BEGIN PRIVATE KEY"),
            "no key in the answer: {p}"
        );
    }
    let listed = json_ok(app.get(SUBS, ADMIN_KEY).await).await;
    assert_eq!(listed["data"], json!([]), "nothing stored");
}
