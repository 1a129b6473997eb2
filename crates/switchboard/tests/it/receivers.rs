//! Receivers as they are (DESIGN §20): GitHub- and Stripe-style signatures beside Standard
//! Webhooks', Basic and Bearer credentials, and OAuth 2 client credentials with a token endpoint
//! of the test's own on loopback. (The ecosystems' own verifiers check the two schemes in
//! `.ci/receivers.sh`; here the headers are checked against an HMAC computed independently.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;
use switchboard::delivery::signing::{Secret, verify};
use switchboard::store::DeliveryStatus;

use crate::support::app::{ADMIN_KEY, TestApp, agent_event, fields_named, guid, json_ok, problem};
use crate::support::db::TestData;
use crate::support::process::{Server, get_text};
use crate::support::receiver::{TestReceiver, eventually};
use crate::support::stepper::Stepper;

const SUBS: &str = "/v1/tenants/default/subscriptions";
const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn hex_hmac(key: &str, parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn github_and_stripe_schemes_sign_with_the_whole_secret_and_keep_standard_webhooks() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let github = app
        .subscribe(
            json!({"url": rx.url("/github"), "signature_scheme": "github", "secret": SECRET}),
        )
        .await;
    let stripe = app
        .subscribe(
            json!({"url": rx.url("/stripe"), "signature_scheme": "stripe", "secret": SECRET}),
        )
        .await;
    assert_eq!(github["signature_scheme"], "github");
    assert_eq!(stripe["signature_scheme"], "stripe");
    app.publish_ok("default", &agent_event(&guid(), 1, "jdoe"))
        .await;
    let got = rx.wait_for(2).await;
    let secret = Secret::parse(SECRET).unwrap();
    for r in &got {
        let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
        assert!(
            verify(
                &secret,
                r.header("webhook-signature"),
                r.header("webhook-id"),
                ts,
                &r.body
            ),
            "Standard Webhooks' signature is still sent"
        );
        let hub = r.header("x-hub-signature-256");
        let stripe_sig = r.header("switchboard-signature");
        let is_github = r.header("switchboard-subscription") == github["id"];
        if is_github {
            assert_eq!(hub, format!("sha256={}", hex_hmac(SECRET, &[&r.body])));
            assert_eq!(stripe_sig, "");
        } else {
            let t = ts.to_string();
            let want = hex_hmac(SECRET, &[t.as_bytes(), b".", &r.body]);
            assert_eq!(stripe_sig, format!("t={t},v1={want}"));
            assert_eq!(hub, "");
        }
    }

    // During a rotation GitHub's header carries the newest secret's signature only; the
    // Stripe-style one a `v1=` per live secret.
    let mut new = std::collections::HashMap::new();
    for sub in [&github, &stripe] {
        let r = app.act(sub, "secret/rotate", None).await;
        let rotated = json_ok(r).await;
        new.insert(
            sub["id"].as_str().unwrap().to_owned(),
            rotated["secret"].as_str().unwrap().to_owned(),
        );
    }
    app.publish_ok("default", &agent_event(&guid(), 3, "jdoe"))
        .await;
    let got = rx.wait_for(4).await;
    for r in &got[2..] {
        let sub = r.header("switchboard-subscription");
        let newest = &new[sub];
        let ts = r.header("webhook-timestamp");
        if sub == github["id"] {
            let hub = r.header("x-hub-signature-256");
            assert_eq!(hub, format!("sha256={}", hex_hmac(newest, &[&r.body])));
        } else {
            let parts: Vec<&str> = r.header("switchboard-signature").split(',').collect();
            let want = |k: &str| format!("v1={}", hex_hmac(k, &[ts.as_bytes(), b".", &r.body]));
            assert_eq!(parts, [format!("t={ts}"), want(newest), want(SECRET)]);
        }
    }
}

#[tokio::test]
async fn a_scheme_change_within_whsec_keeps_the_secret_and_to_v1a_makes_a_key_pair() {
    let app = TestApp::spawn().await;
    let sub = app
        .subscribe(json!({"url": "http://127.0.0.1:9/", "secret": SECRET}))
        .await;
    let path = format!("{SUBS}/{}", sub["id"].as_str().unwrap());
    let patch = |scheme: &str| json!({"signature_scheme": scheme});
    let r = app
        .call(Method::PATCH, &path, ADMIN_KEY, Some(&patch("stripe")))
        .await;
    assert_eq!(json_ok(r).await["secret"], SECRET, "v1 → stripe keeps it");
    let r = app
        .call(Method::PATCH, &path, ADMIN_KEY, Some(&patch("v1a")))
        .await;
    let v1a = json_ok(r).await;
    assert!(v1a["secret"].as_str().unwrap().starts_with("whsk_"));
    // A key pair cannot sign for GitHub: a given one is refused, naming `secret`.
    let body = json!({"url": "http://127.0.0.1:9/", "signature_scheme": "github",
                      "secret": v1a["secret"]});
    let p = problem(
        app.call(Method::POST, SUBS, ADMIN_KEY, Some(&body)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "secret", "{p}");
}

#[tokio::test]
async fn basic_and_bearer_credentials_reach_the_receiver_and_are_write_only() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let basic = app
        .subscribe(json!({"url": rx.url("/basic"),
            "auth": {"type": "basic", "username": "switchboard", "password": "pa55-w0rd"}}))
        .await;
    assert_eq!(
        basic["auth"],
        json!({"type": "basic", "username": "switchboard", "password": "***"})
    );
    let bearer = app
        .subscribe(
            json!({"url": rx.url("/bearer"), "auth": {"type": "bearer", "token": "t0ken-abc"}}),
        )
        .await;
    assert_eq!(bearer["auth"]["token"], "***");
    app.publish_ok("default", &agent_event(&guid(), 1, "jdoe"))
        .await;
    let got = rx.wait_for(2).await;
    let expect = |sub: &Value| match sub == &basic {
        true => format!("Basic {}", STANDARD.encode("switchboard:pa55-w0rd")),
        false => "Bearer t0ken-abc".to_owned(),
    };
    for r in &got {
        let sub = if r.header("switchboard-subscription") == basic["id"] {
            &basic
        } else {
            &bearer
        };
        assert_eq!(r.header("authorization"), expect(sub));
    }

    // A PATCH that sends the masked value back keeps the stored one.
    let path = format!("{SUBS}/{}", basic["id"].as_str().unwrap());
    let shown = json_ok(app.get(&path, ADMIN_KEY).await).await;
    assert_eq!(shown["auth"]["password"], "***");
    let mut patch = json!({"description": "renamed", "auth": shown["auth"].clone()});
    patch["auth"]["username"] = json!("sb2");
    let r = app
        .call(Method::PATCH, &path, ADMIN_KEY, Some(&patch))
        .await;
    assert_eq!(json_ok(r).await["auth"]["username"], "sb2");
    app.publish_ok("default", &agent_event(&guid(), 3, "jdoe"))
        .await;
    let got = rx.wait_for(4).await;
    let again = got[2..]
        .iter()
        .find(|r| r.header("switchboard-subscription") == basic["id"])
        .unwrap();
    assert_eq!(
        again.header("authorization"),
        format!("Basic {}", STANDARD.encode("sb2:pa55-w0rd"))
    );
    // Credentials never follow the receiver elsewhere by themselves: a new origin without them,
    // or with them masked, is refused.
    let moved = json!({"url": "https://elsewhere.example.com/in"});
    let p = problem(
        app.call(Method::PATCH, &path, ADMIN_KEY, Some(&moved))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "auth", "{p}");
    let moved = json!({"url": "https://elsewhere.example.com/in",
                       "auth": {"type": "basic", "username": "sb2", "password": "***"}});
    let p = problem(
        app.call(Method::PATCH, &path, ADMIN_KEY, Some(&moved))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "auth.password", "{p}");
    // "***" for another type has nothing to keep.
    let patch = json!({"auth": {"type": "bearer", "token": "***"}});
    let p = problem(
        app.call(Method::PATCH, &path, ADMIN_KEY, Some(&patch))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "auth.token", "{p}");
}

#[tokio::test]
async fn bad_receiver_settings_are_422_naming_the_field_and_store_nothing() {
    let app = TestApp::spawn_with(|c| c.dev = false).await;
    let url = "https://hooks.example.com/in";
    let cases = [
        (
            json!({"url": url, "signature_scheme": "hub"}),
            "signature_scheme",
        ),
        (
            json!({"url": url, "auth": {"type": "digest", "username": "u"}}),
            "auth.type",
        ),
        (
            json!({"url": url, "auth": {"type": "basic", "username": "a:b", "password": "p"}}),
            "auth.username",
        ),
        (
            json!({"url": url, "auth": {"type": "bearer", "token": ""}}),
            "auth.token",
        ),
        (
            json!({"url": url, "auth": {"type": "bearer", "token": "a b"}}),
            "auth.token",
        ),
        (
            json!({"url": url, "auth": {"type": "oauth2", "token_url": "not a url",
                   "client_id": "c", "client_secret": "s"}}),
            "auth.token_url",
        ),
        // Classified, never connected to: a private token endpoint is refused at creation.
        (
            json!({"url": url, "auth": {"type": "oauth2", "token_url": "https://10.1.2.3/token",
                   "client_id": "c", "client_secret": "s"}}),
            "auth.token_url",
        ),
        (json!({"url": "http://192.168.1.20/in"}), "url"),
        (
            json!({"url": url, "auth": {"type": "oauth2", "token_url": "https://u:p@idp.example.com/t",
                   "client_id": "c", "client_secret": "s"}}),
            "auth.token_url",
        ),
        (
            json!({"url": url, "headers": {"Authorization": "x"},
                   "auth": {"type": "bearer", "token": "t"}}),
            "auth",
        ),
        (
            json!({"destination": {"type": "nats", "url": "nats://nats.example.com", "subject": "a"},
                   "auth": {"type": "bearer", "token": "t"}}),
            "auth",
        ),
        (
            json!({"mode": "pull", "auth": {"type": "bearer", "token": "t"}}),
            "auth",
        ),
    ];
    for (body, field) in cases {
        let r = app.call(Method::POST, SUBS, ADMIN_KEY, Some(&body)).await;
        let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        let named = fields_named(&p);
        assert!(named.contains(&field), "{body}: {field} in {p}");
    }
    let listed = json_ok(app.get(SUBS, ADMIN_KEY).await).await;
    assert_eq!(listed["data"], json!([]), "nothing stored");
}

/// A token endpoint of the test's own: counts requests, checks the client's credentials and
/// the grant, and hands out `tok-<n>` living `expires_in` seconds.
pub struct TokenEndpoint {
    pub url: String,
    requests: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct TokenState {
    requests: Arc<AtomicUsize>,
    expires_in: u64,
}

async fn token(
    State(s): State<TokenState>,
    headers: HeaderMap,
    body: String,
) -> (AxumStatus, String) {
    let n = s.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let basic = format!("Basic {}", STANDARD.encode("client-1:cl1ent-s3cret"));
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(basic.as_str()) || !body.contains("grant_type=client_credentials") {
        return (
            AxumStatus::UNAUTHORIZED,
            r#"{"error":"invalid_client"}"#.into(),
        );
    }
    let scope_ok = body.contains("scope=hooks+write") || body.contains("scope=hooks%20write");
    if !scope_ok || !body.contains("audience=switchboard") {
        return (
            AxumStatus::BAD_REQUEST,
            r#"{"error":"invalid_scope"}"#.into(),
        );
    }
    let answer = json!({"access_token": format!("tok-{n}"), "token_type": "Bearer",
                        "expires_in": s.expires_in});
    (AxumStatus::OK, answer.to_string())
}

impl TokenEndpoint {
    pub async fn start(expires_in: u64) -> Self {
        let requests = Arc::new(AtomicUsize::new(0));
        let state = TokenState {
            requests: requests.clone(),
            expires_in,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/oauth/token", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/oauth/token", post(token))
            .with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        TokenEndpoint { url, requests }
    }

    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn auth(&self) -> Value {
        json!({"type": "oauth2", "token_url": self.url, "client_id": "client-1",
               "client_secret": "cl1ent-s3cret", "scope": "hooks write", "audience": "switchboard"})
    }
}

#[tokio::test]
async fn a_thousand_deliveries_share_one_oauth2_token() {
    let tokens = TokenEndpoint::start(3600).await;
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let sub = app
        .subscribe(json!({"url": rx.url("/"), "auth": tokens.auth(), "max_in_flight": 32}))
        .await;
    assert_eq!(sub["auth"]["client_secret"], "***");
    for _ in 0..10 {
        let batch: Vec<Value> = (0..100)
            .map(|i| agent_event(&guid(), 1, &format!("a{i}")))
            .collect();
        app.publish_ok("default", &Value::Array(batch)).await;
    }
    let got = rx.wait_for(1000).await;
    assert!(
        got.iter()
            .all(|r| r.header("authorization") == "Bearer tok-1")
    );
    assert_eq!(tokens.count(), 1, "one token for all");
}

#[tokio::test]
async fn a_token_is_got_again_30_s_before_it_expires() {
    let tokens = TokenEndpoint::start(90).await;
    let mut t = Stepper::new().await;
    let rx = TestReceiver::start().await;
    t.subscribe(json!({"url": rx.url("/"), "auth": tokens.auth()}))
        .await;
    let one = |agent: &str| agent_event(&guid(), 1, agent);
    t.publish(&one("a")).await;
    t.step().await;
    t.advance(Duration::from_secs(59));
    t.publish(&one("b")).await;
    t.step().await;
    assert_eq!(tokens.count(), 1, "60 s of 90 used: still cached");
    t.advance(Duration::from_secs(2));
    t.publish(&one("c")).await;
    t.step().await;
    t.publish(&one("d")).await;
    t.step().await;
    assert_eq!(tokens.count(), 2, "within 30 s of expiry: one new token");
    let auths: Vec<String> = rx
        .wait_for(4)
        .await
        .iter()
        .map(|r| r.header("authorization").to_owned())
        .collect();
    assert_eq!(
        auths,
        [
            "Bearer tok-1",
            "Bearer tok-1",
            "Bearer tok-2",
            "Bearer tok-2"
        ]
    );
}

#[tokio::test]
async fn a_401_drops_the_token_and_the_delivery_goes_again_at_once_with_a_new_one() {
    let tokens = TokenEndpoint::start(3600).await;
    let mut t = Stepper::new().await;
    // The receiver revokes the first token after its first request.
    let rx = TestReceiver::with(|_, r| match r.header("authorization") {
        "Bearer tok-1" => (401, Duration::ZERO),
        _ => (200, Duration::ZERO),
    })
    .await;
    // Without the token's refresh the retry would be an hour away.
    let sub = t
        .subscribe(json!({"url": rx.url("/"), "auth": tokens.auth(),
                          "retry_schedule_secs": [3600, 3600]}))
        .await;
    t.publish(&agent_event(&guid(), 1, "a")).await;
    t.step().await;
    // "At once": due when the refused attempt ended (a moment of real time on the stepped
    // clock), not in an hour.
    t.advance(Duration::from_secs(1));
    t.step().await;
    let d = t.deliveries(&sub).await;
    assert_eq!(d[0].status, DeliveryStatus::Succeeded, "{d:?}");
    assert_eq!(d[0].attempt_count, 2, "one refused, one retried at once");
    assert_eq!(tokens.count(), 2, "one refresh");

    // A token refused right after a refresh is not refreshed at once again: the schedule
    // applies (the second refusal in a row waits its hour).
    let refusing = TestReceiver::with(|_, _| (401, Duration::ZERO)).await;
    let tokens2 = TokenEndpoint::start(3600).await;
    let sub2 = t
        .subscribe(json!({"url": refusing.url("/"), "auth": tokens2.auth(),
                          "retry_schedule_secs": [3600, 3600, 3600]}))
        .await;
    t.publish(&agent_event(&guid(), 1, "b")).await;
    for _ in 0..3 {
        t.step().await;
        t.advance(Duration::from_secs(1));
    }
    let d = t.deliveries(&sub2).await;
    assert_eq!(d[0].attempt_count, 2, "{d:?}");
    assert_eq!(d[0].status, DeliveryStatus::Pending);
    assert_eq!(tokens2.count(), 2);
    // An hour on, the scheduled attempt's new token is refused too: still the schedule (the
    // receiver has accepted no token since it began refusing), not another at once.
    // (Past the hour's jitter, ±20 %.)
    t.advance(Duration::from_secs(4400));
    for _ in 0..3 {
        t.step().await;
        t.advance(Duration::from_secs(1));
    }
    let d = t.deliveries(&sub2).await;
    assert_eq!(d[0].attempt_count, 3, "{d:?}");
    assert_eq!(d[0].status, DeliveryStatus::Pending);
    assert_eq!(tokens2.count(), 3);
}

#[tokio::test]
async fn the_token_outlives_the_rebuild_of_the_subscriptions_target() {
    let tokens = TokenEndpoint::start(3600).await;
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    app.subscribe(json!({"url": rx.url("/"), "auth": tokens.auth()}))
        .await;
    app.publish_ok("default", &agent_event(&guid(), 1, "a"))
        .await;
    rx.wait_for(1).await;
    // Another subscription: the dispatcher re-reads them all and rebuilds every target.
    let other = TestReceiver::start().await;
    app.subscribe(json!({"url": other.url("/")})).await;
    app.publish_ok("default", &agent_event(&guid(), 1, "b"))
        .await;
    rx.wait_for(2).await;
    other.wait_for(1).await;
    assert_eq!(tokens.count(), 1, "the cached token survived the rebuild");
}

#[tokio::test]
async fn every_delivery_refused_with_a_revoked_token_goes_again_at_once() {
    let tokens = TokenEndpoint::start(3600).await;
    let mut t = Stepper::new().await;
    // tok-1 works once, then is revoked: every delivery still in flight with it is refused.
    let rx = TestReceiver::with(|n, r| match (n, r.header("authorization")) {
        (0, _) => (200, Duration::ZERO),
        (_, "Bearer tok-1") => (401, Duration::ZERO),
        _ => (200, Duration::ZERO),
    })
    .await;
    let sub = t
        .subscribe(json!({"url": rx.url("/"), "auth": tokens.auth(),
                          "retry_schedule_secs": [3600], "max_in_flight": 8}))
        .await;
    t.publish(&agent_event(&guid(), 1, "first")).await;
    t.step().await;
    let five: Vec<Value> = (0..5)
        .map(|i| agent_event(&guid(), 1, &format!("a{i}")))
        .collect();
    t.publish(&Value::Array(five)).await;
    t.step().await;
    t.advance(Duration::from_secs(1));
    t.step().await;
    let d = t.deliveries(&sub).await;
    assert_eq!(d.len(), 6);
    assert!(
        d.iter().all(|d| d.status == DeliveryStatus::Succeeded),
        "{d:?}"
    );
    let refused = d.iter().filter(|d| d.attempt_count == 2).count();
    assert_eq!(refused, 5, "each refused one went again at once: {d:?}");
    assert_eq!(tokens.count(), 2, "one new token for all of them");
}

#[tokio::test]
async fn a_dead_token_endpoint_fails_the_attempt_naming_it() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let sub = app
        .subscribe(json!({"url": rx.url("/"), "retry_schedule_secs": [3600],
            "auth": {"type": "oauth2", "token_url": format!("http://127.0.0.1:{dead}/token?k=v"),
                     "client_id": "c", "client_secret": "s3cr3t-never-shown"}}))
        .await;
    app.publish_ok("default", &agent_event(&guid(), 1, "jdoe"))
        .await;
    let id = sub["id"].as_str().unwrap().to_owned();
    let failed = eventually("a failed attempt", || async {
        let d = app.deliveries(&id, Some("pending")).await;
        d.into_iter().find(|d| d["attempt_count"] == 1)
    })
    .await;
    let error = failed["last_error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "OAuth 2 token endpoint http://127.0.0.1:{dead}/token"
        )),
        "{error}"
    );
    assert!(!error.contains("k=v"), "without its query: {error}");
    assert!(rx.received().is_empty(), "nothing sent without a token");
}

/// No answer and no log line ever shows a password, token, client secret: the real binary,
/// logging at debug, through deliveries that succeed, are refused and cannot get a token.
#[tokio::test]
async fn credentials_never_appear_in_answers_or_the_servers_log() {
    let data = TestData::new().await;
    let (server, logs) = Server::start_logged_env(&data, &[("SWITCHBOARD_LOG_LEVEL", "debug")]);
    let client = reqwest::Client::new();
    let refusing = TestReceiver::with(|n, _| ([401, 500, 200][n % 3], Duration::ZERO)).await;
    let tokens = TokenEndpoint::start(3600).await;
    let leaf = crate::mtls::Ca::new("Client CA")
        .issue("switchboard", rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    // A line of the private key's body.
    let key_line = leaf.key_pem.lines().nth(1).unwrap().to_owned();
    assert!(key_line.len() > 40);
    let secrets = [
        "pa55-w0rd-xyz",
        "t0ken-xyz",
        "cl1ent-s3cret",
        "s3cr3t-dead-xyz",
        key_line.as_str(),
    ];
    let bodies = [
        json!({"url": refusing.url("/b"), "auth": {"type": "basic", "username": "u", "password": secrets[0]}}),
        json!({"url": refusing.url("/t"), "auth": {"type": "bearer", "token": secrets[1]}}),
        json!({"url": refusing.url("/o"), "auth": tokens.auth()}),
        json!({"url": refusing.url("/d"), "auth": {"type": "oauth2",
            "token_url": "http://127.0.0.1:9/token", "client_id": "c", "client_secret": secrets[3]}}),
        json!({"url": "https://localhost:9/", "tls": {"client_cert_pem": leaf.cert_pem,
            "client_key_pem": leaf.key_pem}}),
    ];
    let mut answers = String::new();
    let mut ids = Vec::new();
    for body in &bodies {
        let r = server.post(&client, SUBS, body).await;
        let text = r.text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        ids.push(v["id"].as_str().unwrap().to_owned());
        answers.push_str(&text);
    }
    for n in 0..6 {
        let e = agent_event(&guid(), [1, 3, 4][n % 3], "jdoe");
        let r = server.post(&client, "/v1/tenants/default/events", &e).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let get = |path: String| {
        let (client, base) = (client.clone(), server.base.clone());
        async move { get_text(&client, &base, &path).await }
    };
    let last = ids[3].clone();
    eventually("attempts everywhere", || {
        let last = last.clone();
        async move {
            let d = get(format!("{SUBS}/{last}/deliveries")).await;
            d.contains("OAuth 2 token endpoint").then_some(())
        }
    })
    .await;
    eventually("the refusing receiver asked", || async {
        (refusing.received().len() >= 6).then_some(())
    })
    .await;
    answers.push_str(&get(SUBS.to_owned()).await);
    for id in &ids {
        answers.push_str(&get(format!("{SUBS}/{id}")).await);
        answers.push_str(&get(format!("{SUBS}/{id}/deliveries")).await);
    }
    answers.push_str(&get("/v1/tenants/default/events?limit=100".to_owned()).await);
    let log = logs.matching(&[]).join("\n");
    assert!(
        log.contains("DEBUG") || log.contains("debug"),
        "logging at debug"
    );
    for s in secrets {
        assert!(!answers.contains(s), "{s} in an answer");
        assert!(!log.contains(s), "{s} in the log");
    }
    drop(server);
}
