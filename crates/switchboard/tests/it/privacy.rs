//! Privacy (DESIGN §19): redaction per subscription — what each receiver is sent of the
//! catalog's personal data, signed as sent, while the log keeps the event as it came.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use switchboard::delivery::signing::{Secret, verify};

use crate::support::app::{ADMIN_KEY, agent_event, fields_named, guid, json_ok, problem};
use crate::support::receiver::Received;
use crate::support::{TestApp, TestReceiver};

const PHONE: &str = "+15551230001";

/// The body's signature verifies with `secret` (the receiver gets what was signed).
fn signed(r: &Received, secret: &Value) -> bool {
    let secret = Secret::parse(secret.as_str().unwrap()).unwrap();
    let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
    let id = r.header("webhook-id");
    verify(&secret, r.header("webhook-signature"), id, ts, &r.body)
}

fn additional(event: &Value) -> &serde_json::Map<String, Value> {
    event["AdditionalFields"]
        .as_object()
        .expect("AdditionalFields")
}

/// The `PhoneNo` each delivery of subscription `sub` carried, by event id (verified first).
fn phones(got: &[Received], sub: &Value) -> Vec<(String, Option<Value>)> {
    let id = sub["id"].as_str().unwrap();
    let mine: Vec<_> = (got.iter())
        .filter(|r| r.header("switchboard-subscription") == id)
        .collect();
    assert!(mine.iter().all(|r| signed(r, &sub["secret"])), "verified");
    let mut out: Vec<_> = (mine.iter())
        .map(|r| {
            let event = r.json();
            (r.event_id(), additional(&event).get("PhoneNo").cloned())
        })
        .collect();
    out.sort_by(|x, y| x.0.cmp(&y.0));
    out
}

#[tokio::test]
async fn each_subscription_gets_its_own_redaction_and_the_log_keeps_the_event() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let sub = |path: &str, redact: Value| json!({"url": rx.url(path), "redact": redact});
    let drop = app
        .subscribe(sub("/drop", json!({"PhoneNo": "drop"})))
        .await;
    let mask = app
        .subscribe(sub("/mask", json!({"PhoneNo": "mask"})))
        .await;
    let hash = (app.subscribe(sub("/hash", json!({"PhoneNo": "hash", "Username": "hash"})))).await;
    let plain = app.subscribe(json!({"url": rx.url("/plain")})).await;
    assert_eq!(drop["redact"], json!({"PhoneNo": "drop"}), "shown as given");
    assert!(plain.get("redact").is_none(), "none: left out");
    let (a, b) = (guid(), guid());
    let events = json!([agent_event(&a, 1, "alice"), agent_event(&b, 1, "bob")]);
    app.publish_ok("default", &events).await;
    let got = rx.wait_for(8).await;

    let dropped = phones(&got, &drop);
    let mut ids = vec![a.clone(), b.clone()];
    ids.sort();
    assert_eq!(
        dropped,
        ids.into_iter().map(|i| (i, None)).collect::<Vec<_>>()
    );
    for (_, phone) in phones(&got, &mask) {
        assert_eq!(phone, Some(json!("********0001")));
    }
    let hashed = phones(&got, &hash);
    let h = hashed[0].1.clone().unwrap();
    let h = h.as_str().unwrap();
    assert!(h.starts_with("hmac-sha256:") && h.len() == 76, "{h}");
    assert_eq!(hashed[1].1, Some(json!(h)), "stable across events");
    assert!(!h.contains(PHONE));
    for (_, phone) in phones(&got, &plain) {
        assert_eq!(phone, Some(json!(PHONE)), "no redact: as stored");
    }
    // Only the named fields change: the hashed subscription's usernames differ per agent, and
    // everything else is as posted.
    let of = |sub: &Value| -> Vec<Value> {
        (got.iter())
            .filter(|r| r.header("switchboard-subscription") == sub["id"].as_str().unwrap())
            .map(Received::json)
            .collect()
    };
    let users: Vec<Value> = of(&hash)
        .iter()
        .map(|e| additional(e)["Username"].clone())
        .collect();
    assert_ne!(users[0], users[1]);
    assert!(
        users
            .iter()
            .all(|u| u.as_str().unwrap().starts_with("hmac-sha256:"))
    );
    for e in of(&mask) {
        assert_eq!(additional(&e)["SessionType"], "CCA");
        assert_eq!(e["Category"], 1);
    }

    // The log, as a read key sees it: unchanged.
    for e in app.all_events("default").await {
        assert_eq!(additional(&e["event"])["PhoneNo"], PHONE);
    }
}

#[tokio::test]
async fn hashes_differ_across_tenants_and_survive_a_restart() {
    let app = TestApp::spawn().await;
    app.create_tenant("globex").await;
    let rx = TestReceiver::start().await;
    let body = |path: &str| json!({"url": rx.url(path), "redact": {"PhoneNo": "hash"}});
    let ours_sub = app.subscribe(body("/default")).await;
    let r = app
        .call(
            Method::POST,
            "/v1/tenants/globex/subscriptions",
            ADMIN_KEY,
            Some(&body("/globex")),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let ours_id = ours_sub["id"].as_str().unwrap().to_string();
    let is_ours = |r: &&Received| r.header("switchboard-subscription") == ours_id;
    let event = |name: &str| agent_event(&guid(), 1, name);
    app.publish_ok("default", &event("alice")).await;
    app.publish_ok("globex", &event("alice")).await;
    let got = rx.wait_for(2).await;
    let phone = |r: &Received| additional(&r.json())["PhoneNo"].clone();
    let ours = phone(got.iter().find(is_ours).unwrap());
    let theirs = phone(got.iter().find(|r| !is_ours(r)).unwrap());
    assert_ne!(ours, theirs, "each tenant its own key");

    // The key is the instance's stored one: the same hash after a restart.
    let data = app.stop().await;
    let app = TestApp::spawn_in(data).await;
    app.publish_ok("default", &event("carol")).await;
    let got = rx.wait_for(3).await;
    let again = (got.iter()).filter(is_ours).map(phone).collect::<Vec<_>>();
    assert_eq!(again, vec![ours.clone(), ours]);
}

#[tokio::test]
async fn batches_and_pull_messages_are_redacted_too() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let batch = app
        .subscribe(
            json!({"url": rx.url("/batch"), "batch": {"max_events": 2, "max_wait_ms": 50},
                          "redact": {"PhoneNo": "mask"}}),
        )
        .await;
    let pull = app
        .subscribe(json!({"mode": "pull", "start": "earliest", "redact": {"PhoneNo": "drop"}}))
        .await;
    let events = json!([
        agent_event(&guid(), 1, "alice"),
        agent_event(&guid(), 1, "bob")
    ]);
    app.publish_ok("default", &events).await;
    let got = rx.wait_for(1).await;
    assert!(
        signed(&got[0], &batch["secret"]),
        "the batch verifies as sent"
    );
    let list = got[0].json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    for e in list {
        assert_eq!(additional(e)["PhoneNo"], "********0001");
    }
    let id = pull["id"].as_str().unwrap();
    let page = app
        .get(
            &format!("/v1/tenants/default/subscriptions/{id}/messages"),
            ADMIN_KEY,
        )
        .await;
    let page = json_ok(page).await;
    let data = page["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for m in data {
        let fields = additional(&m["event"]);
        assert!(!fields.contains_key("PhoneNo"), "{m}");
        assert_eq!(fields["SessionType"], "CCA");
    }
}

#[tokio::test]
async fn redaction_names_a_catalog_field_and_a_known_mode() {
    let app = TestApp::spawn().await;
    let create = |redact: Value| {
        let body = json!({"url": "https://example.com/hooks", "redact": redact});
        let app = &app;
        async move {
            let path = "/v1/tenants/default/subscriptions";
            app.call(Method::POST, path, ADMIN_KEY, Some(&body)).await
        }
    };
    let doc = problem(
        create(json!({"NotAField": "drop"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(fields_named(&doc), ["redact.NotAField"]);
    let doc = problem(
        create(json!({"PhoneNo": "blur"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(fields_named(&doc), ["redact.PhoneNo"]);
    let doc = problem(
        create(json!(["PhoneNo"])).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(fields_named(&doc), ["redact"]);
    // A catalog field that is not personal data may be redacted too (the catalog may not know
    // what a tenant considers personal).
    let r = create(json!({"SessionId": "hash"})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // Nothing was stored by the refusals.
    let page = json_ok(
        app.get("/v1/tenants/default/subscriptions", ADMIN_KEY)
            .await,
    )
    .await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    // A patch is checked the same way, and `null` removes the redaction.
    let id = page["data"][0]["id"].as_str().unwrap().to_string();
    let path = format!("/v1/tenants/default/subscriptions/{id}");
    let patch = |body: Value| {
        let path = &path;
        let app = &app;
        async move { app.call(Method::PATCH, path, ADMIN_KEY, Some(&body)).await }
    };
    let doc = problem(
        patch(json!({"redact": {"Nope": "mask"}})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(fields_named(&doc), ["redact.Nope"]);
    let v = json_ok(patch(json!({"redact": null})).await).await;
    assert!(v.get("redact").is_none(), "{v}");
}
