//! Subscriptions and signed, at-least-once delivery against a real receiver on loopback.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use switchboard::delivery::signing::{Secret, verify};

use crate::support::app::{ADMIN_KEY, agent_event, guid, json_ok, problem};
use crate::support::receiver::eventually;
use crate::support::{TestApp, TestReceiver};

/// Checks a delivery's Standard Webhooks headers and signature against `secret`.
fn assert_signed(r: &crate::support::receiver::Received, secret: &str) {
    let secret = Secret::parse(secret).unwrap();
    let id = r.header("webhook-id");
    let ts: i64 = r
        .header("webhook-timestamp")
        .parse()
        .expect("numeric timestamp");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((now - ts).abs() < 60, "timestamp {ts} is now");
    assert!(
        verify(&secret, r.header("webhook-signature"), id, ts, &r.body),
        "signature verifies"
    );
}

#[tokio::test]
async fn filtered_fan_out_with_standard_webhooks_headers() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let all = app
        .subscribe(json!({"url": rx.url("/all"), "headers": {"X-Crm-Token": "t0k"}}))
        .await;
    let signins = app
        .subscribe(json!({"url": rx.url("/signins"), "filter": {"events": [{"category": 1, "codes": [1]}]}}))
        .await;
    let bob = app
        .subscribe(json!({"url": rx.url("/bob"), "filter": {"usernames": ["bob"]}}))
        .await;
    let events = vec![
        agent_event(&guid(), 1, "alice"),
        agent_event(&guid(), 3, "alice"),
        agent_event(&guid(), 1, "bob"),
        json!({"Id": guid(), "CreationDateUtc": "20261123184603", "Category": 2, "Code": 5,
               "AdditionalFields": {"Queue": "sales"}}),
    ];
    app.publish_ok("default", &Value::Array(events.clone()))
        .await;
    let got = rx.wait_for(4 + 2 + 1).await;
    // Give stragglers no chance to hide: the log says exactly how many deliveries exist.
    let count = |sub: &Value| {
        let id = sub["id"].as_str().unwrap().to_string();
        got.iter()
            .filter(move |r| r.header("switchboard-subscription") == id)
            .count()
    };
    assert_eq!((count(&all), count(&signins), count(&bob)), (4, 2, 1));
    assert_eq!(
        app.deliveries(signins["id"].as_str().unwrap(), None)
            .await
            .len(),
        2
    );

    let log = app.all_events("default").await;
    for r in &got {
        let item = log
            .iter()
            .find(|i| i["event"]["Id"] == r.header("webhook-id"))
            .expect("a logged event");
        // The body is the canonical event, byte for byte.
        assert_eq!(
            r.body,
            serde_json::to_string(&item["event"]).unwrap().as_bytes()
        );
        assert_eq!(r.header("content-type"), "application/json");
        assert!(r.header("user-agent").starts_with("Switchboard/"));
        assert_eq!(
            r.header("switchboard-sequence"),
            item["sequence"].to_string()
        );
        assert_eq!(r.header("switchboard-attempt"), "1");
        let sub = [&all, &signins, &bob]
            .into_iter()
            .find(|s| s["id"] == r.header("switchboard-subscription"))
            .unwrap();
        assert_signed(r, sub["secret"].as_str().unwrap());
        if sub["id"] == all["id"] {
            assert_eq!(r.header("x-crm-token"), "t0k");
        } else {
            assert_eq!(r.header("x-crm-token"), "");
        }
    }
    let bob_got: Vec<_> = got
        .iter()
        .filter(|r| r.header("switchboard-subscription") == bob["id"])
        .collect();
    assert_eq!(bob_got[0].event_id(), events[2]["Id"].as_str().unwrap());
    // The event's detail lists its deliveries.
    let id = events[0]["Id"].as_str().unwrap();
    let detail = json_ok(
        app.get(&format!("/v1/tenants/default/events/{id}"), ADMIN_KEY)
            .await,
    )
    .await;
    assert_eq!(
        detail["deliveries"].as_array().unwrap().len(),
        2,
        "all and signins"
    );
}

#[tokio::test]
async fn a_subscription_created_later_gets_only_newer_events() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    app.publish_ok("default", &agent_event(&guid(), 1, "early"))
        .await;
    app.subscribe(json!({"url": rx.url("/")})).await;
    let late = agent_event(&guid(), 1, "late");
    app.publish_ok("default", &late).await;
    let got = rx.wait_for(1).await;
    assert_eq!(got[0].event_id(), late["Id"].as_str().unwrap());
    let log = app.all_events("default").await;
    let early_id = log[0]["event"]["Id"].as_str().unwrap();
    let detail = json_ok(
        app.get(&format!("/v1/tenants/default/events/{early_id}"), ADMIN_KEY)
            .await,
    )
    .await;
    assert_eq!(detail["deliveries"], json!([]));
}

#[tokio::test]
async fn a_failing_receiver_gets_the_event_on_attempt_n_plus_one_and_every_attempt_is_logged() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::with(|n, _| (if n < 3 { 500 } else { 200 }, Duration::ZERO)).await;
    let sub = app
        .subscribe(json!({"url": rx.url("/"), "retry_schedule_secs": [0, 0, 0, 0, 0]}))
        .await;
    let event = agent_event(&guid(), 1, "jdoe");
    app.publish_ok("default", &event).await;
    let got = rx.wait_for(4).await;
    let attempts: Vec<&str> = got
        .iter()
        .map(|r| r.header("switchboard-attempt"))
        .collect();
    assert_eq!(attempts, ["1", "2", "3", "4"]);
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id") == event["Id"].as_str().unwrap())
    );
    assert!(
        got.iter().all(|r| r.body == got[0].body),
        "byte-identical on every attempt"
    );

    let sub_id = sub["id"].as_str().unwrap();
    let delivered = eventually("the delivery to succeed", || async {
        let d = app.deliveries(sub_id, Some("succeeded")).await;
        (d.len() == 1).then(|| d[0].clone())
    })
    .await;
    assert_eq!(delivered["attempt_count"], 4);
    assert_eq!(delivered["last_status_code"], 200);
    assert_eq!(delivered["next_attempt_at"], Value::Null);
    let detail = app.delivery(&delivered["id"]).await;
    let codes: Vec<i64> = detail["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [500, 500, 500, 200]);
    assert_eq!(
        detail["attempts"][0]["error"],
        "HTTP 500 Internal Server Error"
    );
    assert_eq!(detail["attempts"][0]["number"], 1);
    assert!(detail["attempts"][3]["duration_ms"].is_i64());
    assert!(app.deliveries(sub_id, Some("pending")).await.is_empty());
    assert!(rx.received().len() == 4, "no attempt after success");
}

#[tokio::test]
async fn gone_disables_the_subscription() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::with(|_, _| (410, Duration::ZERO)).await;
    let sub = app
        .subscribe(json!({"url": rx.url("/"), "retry_schedule_secs": [0, 0]}))
        .await;
    let sub_path = format!(
        "/v1/tenants/default/subscriptions/{}",
        sub["id"].as_str().unwrap()
    );
    app.publish_ok("default", &agent_event(&guid(), 1, "jdoe"))
        .await;
    rx.wait_for(1).await;
    let disabled = eventually("the subscription to be disabled", || async {
        let s = json_ok(app.get(&sub_path, ADMIN_KEY).await).await;
        (s["enabled"] == false).then_some(s)
    })
    .await;
    assert!(
        disabled["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("410"),
        "{disabled}"
    );
    // It matches no new events; its pending delivery waits.
    let later = agent_event(&guid(), 1, "later");
    app.publish_ok("default", &later).await;
    let id = later["Id"].as_str().unwrap();
    let detail = json_ok(
        app.get(&format!("/v1/tenants/default/events/{id}"), ADMIN_KEY)
            .await,
    )
    .await;
    assert_eq!(detail["deliveries"], json!([]));
    let pending = app
        .deliveries(sub["id"].as_str().unwrap(), Some("pending"))
        .await;
    assert_eq!(pending.len(), 1);
    // Enabled again (the receiver now well), the waiting delivery resumes.
    rx.set_behaviour(|_, _| (200, Duration::ZERO));
    let r = app
        .call(
            Method::PATCH,
            &sub_path,
            ADMIN_KEY,
            Some(&json!({"enabled": true})),
        )
        .await;
    let s = json_ok(r).await;
    assert_eq!(
        (s["enabled"].clone(), s["disabled_reason"].clone()),
        (json!(true), Value::Null)
    );
    let got = rx.wait_for(2).await;
    assert_eq!(got[1].header("webhook-id"), got[0].header("webhook-id"));
}

#[tokio::test]
async fn exhausted_deliveries_fail_and_retry_and_replay_deliver_them_again() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::with(|_, _| (503, Duration::ZERO)).await;
    let sub = app
        .subscribe(json!({"url": rx.url("/"), "retry_schedule_secs": [0, 0]}))
        .await;
    let sub_id = sub["id"].as_str().unwrap();
    let event = agent_event(&guid(), 1, "jdoe");
    app.publish_ok("default", &event).await;
    rx.wait_for(3).await;
    let failed = eventually("the delivery to fail", || async {
        let d = app.deliveries(sub_id, Some("failed")).await;
        (d.len() == 1).then(|| d[0].clone())
    })
    .await;
    assert_eq!(
        failed["attempt_count"], 3,
        "[0, 0] means three attempts in all"
    );
    assert_eq!(failed["last_status_code"], 503);

    rx.set_behaviour(|_, _| (200, Duration::ZERO));
    let path = format!("/v1/tenants/default/deliveries/{}/retry", failed["id"]);
    let r = app.call(Method::POST, &path, ADMIN_KEY, None).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let got = rx.wait_for(4).await;
    assert_eq!(got[3].header("webhook-id"), event["Id"].as_str().unwrap());
    assert_eq!(got[3].header("switchboard-attempt"), "4");
    eventually("the retried delivery to succeed", || async {
        (app.deliveries(sub_id, Some("succeeded")).await.len() == 1).then_some(())
    })
    .await;

    // Replay the window: delivered once more, same webhook-id.
    let since = json!({"since": "20261123000000"});
    let r = app.act(&sub, "replay", Some(&since)).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.json::<Value>().await.unwrap()["requeued"], 1);
    let got = rx.wait_for(5).await;
    assert_eq!(got[4].header("webhook-id"), event["Id"].as_str().unwrap());
    // only_failed finds nothing failed now.
    let body = json!({"since": "20261123000000", "only_failed": true});
    let r = app.act(&sub, "replay", Some(&body)).await;
    assert_eq!(r.json::<Value>().await.unwrap()["requeued"], 0);
    let r = app
        .act(&sub, "replay", Some(&json!({"since": "2026"})))
        .await;
    problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
}

#[tokio::test]
async fn replay_reaches_events_older_than_the_subscription() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let old: Vec<Value> = (0..3)
        .map(|i| agent_event(&guid(), 1, &format!("u{i}")))
        .collect();
    app.publish_ok("default", &Value::Array(old.clone())).await;
    app.publish_ok("default", &json!({"Category": 2, "Code": 1}))
        .await;
    let sub = app
        .subscribe(json!({"url": rx.url("/"), "filter": {"events": [{"category": 1}]}}))
        .await;
    let body = json!({"since": "20261123000000", "until": "20261123235959"});
    let r = app.act(&sub, "replay", Some(&body)).await;
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        answer["requeued"], 3,
        "the filter matches the three agent events: {answer}"
    );
    let got = rx.wait_for(3).await;
    let ids: HashSet<String> = got.iter().map(|r| r.event_id()).collect();
    let want: HashSet<String> = old
        .iter()
        .map(|e| e["Id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, want);
}

#[tokio::test]
async fn without_dev_a_loopback_receiver_never_gets_a_request() {
    let app = TestApp::spawn_with(|c| c.dev = false).await;
    let rx = TestReceiver::start().await;
    // An IP literal is refused at creation (DESIGN §20); a host name at connect time.
    let body = json!({"url": rx.url("/"), "retry_schedule_secs": []});
    let refused = app
        .call(
            Method::POST,
            "/v1/tenants/default/subscriptions",
            ADMIN_KEY,
            Some(&body),
        )
        .await;
    let p = problem(refused, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(p["errors"][0]["field"], "url", "{p}");
    let by_name = app
        .subscribe(json!({"url": format!("http://localhost:{}/", rx.addr.port()), "retry_schedule_secs": []}))
        .await;
    app.publish_ok("default", &agent_event(&guid(), 1, "jdoe"))
        .await;
    for sub in [&by_name] {
        let sub_id = sub["id"].as_str().unwrap();
        let failed = eventually("the attempt to be refused", || async {
            let d = app.deliveries(sub_id, Some("failed")).await;
            (d.len() == 1).then(|| d[0].clone())
        })
        .await;
        let error = failed["last_error"].as_str().unwrap();
        assert!(
            error.contains("loopback") && error.contains("address guard"),
            "{error}"
        );
        assert_eq!(failed["last_status_code"], Value::Null);
    }
    let outcome = json_ok(app.act(&by_name, "test", None).await).await;
    assert_eq!(outcome["delivered"], false);
    assert!(outcome["error"].as_str().unwrap().contains("loopback"));
    assert!(rx.received().is_empty(), "no request reached the receiver");
}

#[tokio::test]
async fn during_rotation_each_attempt_carries_two_verifiable_signatures() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let sub = app.subscribe(json!({"url": rx.url("/")})).await;
    let old = sub["secret"].as_str().unwrap().to_string();
    let grace = json!({"grace_secs": 3600});
    let r = app.act(&sub, "secret/rotate", Some(&grace)).await;
    let new = json_ok(r).await["secret"].as_str().unwrap().to_string();
    assert_ne!(old, new);
    app.publish_ok("default", &agent_event(&guid(), 1, "jdoe"))
        .await;
    let got = rx.wait_for(1).await;
    assert_eq!(got[0].header("webhook-signature").split(' ').count(), 2);
    assert_signed(&got[0], &old);
    assert_signed(&got[0], &new);

    // With no grace, only the new secret signs.
    let r = app
        .act(&sub, "secret/rotate", Some(&json!({"grace_secs": 0})))
        .await;
    let newest = json_ok(r).await["secret"].as_str().unwrap().to_string();
    app.publish_ok("default", &agent_event(&guid(), 1, "jdoe"))
        .await;
    let got = rx.wait_for(2).await;
    assert_eq!(got[1].header("webhook-signature").split(' ').count(), 1);
    assert_signed(&got[1], &newest);
}

#[tokio::test]
async fn the_test_endpoint_sends_a_system_test_event() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let sub = app.subscribe(json!({"url": rx.url("/")})).await;
    let outcome = json_ok(app.act(&sub, "test", None).await).await;
    assert_eq!(
        (outcome["delivered"].clone(), outcome["status_code"].clone()),
        (json!(true), json!(200))
    );
    let got = rx.wait_for(1).await;
    let event = got[0].json();
    assert_eq!(
        (event["Category"].clone(), event["Code"].clone()),
        (json!(0), json!(1))
    );
    assert_eq!(event["AdditionalFields"]["SubscriptionId"], sub["id"]);
    assert_eq!(
        got[0].header("webhook-id"),
        outcome["event_id"].as_str().unwrap()
    );
    assert_signed(&got[0], sub["secret"].as_str().unwrap());
    assert!(
        app.all_events("default").await.is_empty(),
        "System events are not in the log"
    );
    // Stored and logged like any delivery: listed with the subscription's deliveries.
    let sub_id = sub["id"].as_str().unwrap();
    let listed = app.deliveries(sub_id, Some("succeeded")).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], outcome["delivery_id"]);
    assert_eq!(listed[0]["event_id"], outcome["event_id"]);
    assert_eq!(listed[0]["sequence"], 0, "no place in the tenant's log");
    let detail = app.delivery(&listed[0]["id"]).await;
    assert_eq!(detail["attempts"][0]["status_code"], 200);
    assert_eq!(rx.received().len(), 1, "attempted once, by the request");
}

#[tokio::test]
async fn a_failed_test_event_is_retried_like_any_delivery() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::with(|n, _| (if n == 0 { 503 } else { 200 }, Duration::ZERO)).await;
    let sub = app
        .subscribe(json!({"url": rx.url("/"), "retry_schedule_secs": [0]}))
        .await;
    let sub_id = sub["id"].as_str().unwrap();
    let outcome = json_ok(app.act(&sub, "test", None).await).await;
    assert_eq!(outcome["delivered"], false);
    assert_eq!(outcome["status_code"], 503);
    // The dispatcher makes the retry, with the same body and webhook-id, signed.
    let got = rx.wait_for(2).await;
    assert_eq!(got[0].body, got[1].body, "byte-identical");
    assert_eq!(
        got[1].header("webhook-id"),
        outcome["event_id"].as_str().unwrap()
    );
    assert_eq!(got[1].header("switchboard-attempt"), "2");
    assert_signed(&got[1], sub["secret"].as_str().unwrap());
    let done = eventually("the test delivery to succeed", || async {
        let d = app.deliveries(sub_id, Some("succeeded")).await;
        (d.len() == 1).then(|| d[0].clone())
    })
    .await;
    assert_eq!(done["attempt_count"], 2);
}

#[tokio::test]
async fn subscription_crud_and_validation() {
    let app = TestApp::spawn().await;
    let base = "/v1/tenants/default/subscriptions";
    for (body, field) in [
        (json!({"url": "ftp://example.com"}), "url"),
        (json!({"url": "not a url"}), "url"),
        (json!({}), "url"),
        (
            json!({"url": "https://example.com", "secret": "plain"}),
            "secret",
        ),
        (
            json!({"url": "https://example.com", "ordering": "random"}),
            "ordering",
        ),
        (
            json!({"url": "https://example.com", "headers": {"webhook-id": "x"}}),
            "headers.webhook-id",
        ),
        (
            json!({"url": "https://example.com", "max_in_flight": 0}),
            "max_in_flight",
        ),
        (
            json!({"url": "https://example.com", "filter": {"events": [{"category": "one"}]}}),
            "filter.events[0].category",
        ),
        (
            json!({"url": "https://example.com", "retry_schedule_secs": [-1]}),
            "retry_schedule_secs[0]",
        ),
        (json!({"url": "https://example.com", "urll": "x"}), "urll"),
    ] {
        let r = app.call(Method::POST, base, ADMIN_KEY, Some(&body)).await;
        let doc = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(doc["errors"][0]["field"], field, "{body}: {doc}");
    }
    let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let sub = app
        .subscribe(
            json!({"url": "https://crm.example.com/hooks", "secret": secret, "description": "CRM"}),
        )
        .await;
    assert_eq!(sub["secret"], secret);
    assert_eq!(sub["max_in_flight"], 16);
    assert_eq!(sub["ordering"], "none");
    assert_eq!(sub["enabled"], true);
    let generated = app.subscribe(json!({"url": "https://x.example.com"})).await;
    assert!(Secret::parse(generated["secret"].as_str().unwrap()).is_ok());

    let path = format!("{base}/{}", sub["id"].as_str().unwrap());
    let read = app.create_key("default", &["read"]).await;
    let as_reader = json_ok(app.get(&path, &read).await).await;
    assert!(
        as_reader.get("secret").is_none(),
        "secrets only for manage keys"
    );
    assert_eq!(
        json_ok(app.get(&path, ADMIN_KEY).await).await["secret"],
        secret
    );
    let list = json_ok(app.get(base, ADMIN_KEY).await).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    problem(
        app.call(
            Method::POST,
            base,
            &read,
            Some(&json!({"url": "https://a.example.com"})),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;

    let patched = json_ok(
        app.call(
            Method::PATCH,
            &path,
            ADMIN_KEY,
            Some(&json!({"description": "new", "enabled": false, "filter": {"usernames": ["x"]}})),
        )
        .await,
    )
    .await;
    assert_eq!(patched["description"], "new");
    assert_eq!(patched["url"], "https://crm.example.com/hooks");
    assert_eq!(patched["disabled_reason"], "disabled by the user");
    assert_eq!(patched["filter"], json!({"usernames": ["x"]}));
    let r = app
        .call(
            Method::PATCH,
            &path,
            ADMIN_KEY,
            Some(&json!({"url": "gopher://x"})),
        )
        .await;
    problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    let cleared = json_ok(
        app.call(
            Method::PATCH,
            &path,
            ADMIN_KEY,
            Some(&json!({"filter": null})),
        )
        .await,
    )
    .await;
    assert_eq!(cleared["filter"], Value::Null);

    assert_eq!(
        app.call(Method::DELETE, &path, ADMIN_KEY, None)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    problem(app.get(&path, ADMIN_KEY).await, StatusCode::NOT_FOUND).await;
    problem(
        app.get(&format!("{base}/sub_nope/deliveries"), ADMIN_KEY)
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.get("/v1/tenants/default/deliveries/12345", ADMIN_KEY)
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn max_in_flight_bounds_concurrent_attempts() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::with(|_, _| (200, Duration::from_millis(50))).await;
    app.subscribe(json!({"url": rx.url("/"), "max_in_flight": 3}))
        .await;
    let events: Vec<Value> = (0..30)
        .map(|i| agent_event(&guid(), 1, &format!("a{i}")))
        .collect();
    app.publish_ok("default", &Value::Array(events)).await;
    rx.wait_for(30).await;
    assert_eq!(rx.max_concurrent(), 3, "three at a time, and no more");
}

#[tokio::test]
async fn redirects_are_not_followed_and_answers_are_logged_truncated() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::with(|_, _| (302, Duration::ZERO)).await;
    rx.set_answer(
        &"x".repeat(10_000),
        &[("location", "http://127.0.0.1:1/elsewhere")],
    );
    let sub = app
        .subscribe(json!({"url": rx.url("/"), "retry_schedule_secs": []}))
        .await;
    app.publish_ok("default", &agent_event(&guid(), 1, "jdoe"))
        .await;
    let sub_id = sub["id"].as_str().unwrap();
    let failed = eventually("the delivery to fail", || async {
        let d = app.deliveries(sub_id, Some("failed")).await;
        (d.len() == 1).then(|| d[0].clone())
    })
    .await;
    let detail = app.delivery(&failed["id"]).await;
    let attempt = &detail["attempts"][0];
    assert_eq!(attempt["status_code"], 302);
    assert!(
        attempt["error"]
            .as_str()
            .unwrap()
            .contains("redirects are not followed")
    );
    assert_eq!(
        attempt["response_body"].as_str().unwrap().len(),
        4096,
        "the first 4 KiB"
    );
    assert_eq!(rx.received().len(), 1);
}

/// A subscription's deliveries listed by status, and its last delivered sequence (a
/// Heartbeat's), are read through an index on each backend, not by a scan of every delivery:
/// `deliveries_not_succeeded`, which replaced `deliveries_by_status` (migration 19), does not
/// hold the succeeded ones, so the listings by another status name it in their statements,
/// and the last delivered sequence walks the (subscription, sequence) index back, bounded. Checked on the plans for 20,000 deliveries (19,701
/// succeeded, 199 failed, 100 pending) and on the answers.
#[tokio::test]
async fn deliveries_by_status_and_the_last_delivered_sequence_are_read_through_an_index() {
    use switchboard::store::DeliveryStatus;

    use crate::support::db::OldDb;
    use crate::support::stepper::Stepper;

    let t = Stepper::new().await;
    let rx = TestReceiver::start().await;
    let sub = t.subscribe(json!({"url": rx.url("/")})).await;
    let quiet = t.subscribe(json!({"url": rx.url("/quiet")})).await;
    for batch in 0..40 {
        let events: Vec<Value> = (0..500)
            .map(|i| agent_event(&guid(), 3, &format!("agent-{}", (batch * 500 + i) % 200)))
            .collect();
        t.publish(&Value::Array(events)).await;
    }
    let mut db = OldDb::latest(t.data()).await;
    db.exec(
        "UPDATE deliveries SET status = CASE WHEN sequence % 100 = 0 THEN 'failed' \
         ELSE 'succeeded' END, next_attempt_at = NULL, lease_until = NULL \
         WHERE sequence <= 19900",
    )
    .await;
    db.exec(&format!(
        "DELETE FROM deliveries WHERE subscription_id = '{}'",
        quiet.id
    ))
    .await;
    // PostgreSQL plans from statistics, which autovacuum gathers in time; here at once.
    if db.is_postgres() {
        db.exec("ANALYZE").await;
    }
    let scan = |plan: &str| plan.contains("SCAN deliveries") || plan.contains("Seq Scan");

    let list = |status| t.store.list_deliveries("default", &sub.id, status, 0, 100);
    let failed = list(Some(DeliveryStatus::Failed)).await.unwrap();
    assert_eq!(failed.len(), 100);
    assert!(failed.iter().all(|d| d.sequence % 100 == 0));
    assert!(failed.windows(2).all(|w| w[0].id < w[1].id));
    let pending = list(Some(DeliveryStatus::Pending)).await.unwrap();
    assert_eq!(pending.len(), 100);
    assert!(pending.iter().all(|d| d.sequence > 19_900));
    let succeeded = list(Some(DeliveryStatus::Succeeded)).await.unwrap();
    assert_eq!(succeeded.len(), 100);
    assert!(succeeded.iter().all(|d| d.sequence % 100 != 0));
    assert!(succeeded.windows(2).all(|w| w[0].id < w[1].id));
    for status in [DeliveryStatus::Failed, DeliveryStatus::Pending] {
        let plan = t
            .store
            .list_deliveries_plan("default", &sub.id, Some(status))
            .await
            .unwrap();
        assert!(
            plan.contains("deliveries_not_succeeded") && !scan(&plan),
            "{status:?}: {plan}"
        );
    }

    assert_eq!(
        t.store.last_delivered_sequence(&sub.id).await.unwrap(),
        19_899,
        "the latest that succeeded: 19,900 failed, those after it are pending"
    );
    assert_eq!(t.store.last_delivered_sequence(&quiet.id).await.unwrap(), 0);
    let plan = t.store.last_delivered_plan(&sub.id).await.unwrap();
    assert!(
        !scan(&plan) && plan.to_lowercase().contains("index"),
        "{plan}"
    );
    db.close().await;
}
