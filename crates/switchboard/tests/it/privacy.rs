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

/// The value erased by the erase tests: one agent's sign-in number.
const ERIN_PHONE: &str = "+15559990000";

/// Agent `user`'s event `code` with its own phone number.
fn event_with_phone(id: &str, code: u32, user: &str, phone: &str) -> Value {
    let mut e = agent_event(id, code, user);
    e["AdditionalFields"]["PhoneNo"] = json!(phone);
    e
}

/// Posts a job to tenant `default` as the admin.
async fn post_job(app: &TestApp, body: &Value) -> reqwest::Response {
    let path = "/v1/tenants/default/jobs";
    app.call(Method::POST, path, ADMIN_KEY, Some(body)).await
}

/// Posts a job as the admin; returns the answer (202).
async fn create_job(app: &TestApp, body: Value) -> Value {
    let r = post_job(app, &body).await;
    let status = r.status();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    answer
}

/// Waits for job `id` to end; returns it as `key` sees it.
async fn ended(app: &TestApp, id: &str, key: &str) -> Value {
    crate::support::receiver::eventually("the job ended", || async {
        let job = json_ok(
            app.get(&format!("/v1/tenants/default/jobs/{id}"), key)
                .await,
        )
        .await;
        (!matches!(job["state"].as_str(), Some("queued" | "running"))).then_some(job)
    })
    .await
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn an_erasure_leaves_the_value_nowhere_and_pending_deliveries_go_erased() {
    let app = TestApp::spawn().await;
    let monitor = TestReceiver::start().await;
    app.subscribe(json!({"url": monitor.url("/"), "filter": {"events": [{"category": 0}]}}))
        .await;
    // Erin's receiver refuses, echoing her number in its answer (kept in the attempt log),
    // until it is told otherwise.
    let rx = TestReceiver::with(|_, _| (503, std::time::Duration::ZERO)).await;
    rx.set_answer(&format!("no thanks, {ERIN_PHONE}"), &[]);
    let erin = app
        .subscribe(
            json!({"url": rx.url("/"), "filter": {"usernames": ["erin"]},
                          "retry_schedule_secs": [1]}),
        )
        .await;
    // 100,000 events of 50 agents; every 100th is Erin's (1,000), with her own number.
    let mut erins = Vec::new();
    for batch in 0..100 {
        let events: Vec<Value> = (0..1000)
            .map(|i| {
                let id = guid();
                match i % 100 {
                    0 => {
                        erins.push(id.clone());
                        event_with_phone(
                            &id,
                            if batch == 0 && i == 0 { 1 } else { 3 },
                            "erin",
                            ERIN_PHONE,
                        )
                    }
                    n => agent_event(
                        &id,
                        if batch == 0 { 1 } else { 3 },
                        &format!("agent{}", n % 49),
                    ),
                }
            })
            .collect();
        app.publish_ok("default", &Value::Array(events)).await;
    }
    rx.wait_until(|got| got.len() >= 5, "attempts recorded with the number")
        .await;
    rx.set_answer("busy", &[]);
    let agent = json_ok(app.get("/v1/tenants/default/agents/erin", ADMIN_KEY).await).await;
    assert_eq!(agent["phone_no"], ERIN_PHONE);

    let job = create_job(
        &app,
        json!({"kind": "erase", "field": "PhoneNo", "value": ERIN_PHONE}),
    )
    .await;
    assert_eq!(
        job["value"], ERIN_PHONE,
        "shown to manage keys while it runs"
    );
    let reader = app.create_key("default", &["read"]).await;
    let id = job["id"].as_str().unwrap();
    let seen = json_ok(
        app.get(&format!("/v1/tenants/default/jobs/{id}"), &reader)
            .await,
    )
    .await;
    assert!(seen.get("value").is_none(), "never to read keys: {seen}");
    let done = ended(&app, id, ADMIN_KEY).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["value"], "[erased]", "its own value erased too");
    let receipt = &done["result"];
    assert_eq!(receipt["events"], 1000, "{receipt}");
    assert_eq!(receipt["agents"], 1, "{receipt}");
    assert_eq!(receipt["pii"], true);
    assert_eq!(done["total"], 1000);

    // The log and the agents view show it erased; the event keeps its id and sequence.
    for id in [&erins[0], &erins[500], &erins[999]] {
        let e = json_ok(
            app.get(&format!("/v1/tenants/default/events/{id}"), ADMIN_KEY)
                .await,
        )
        .await;
        assert_eq!(e["event"]["Id"], json!(id));
        assert_eq!(additional(&e["event"])["PhoneNo"], "[erased]");
        assert_eq!(additional(&e["event"])["Username"], "erin");
    }
    let agent = json_ok(app.get("/v1/tenants/default/agents/erin", ADMIN_KEY).await).await;
    assert_eq!(agent["phone_no"], "[erased]");
    // The attempts that kept the number in the receiver's answer: each erased, and counted.
    let mut erased_answers = 0;
    let deliveries = app.deliveries(erin["id"].as_str().unwrap(), None).await;
    for d in deliveries
        .iter()
        .filter(|d| d["attempt_count"].as_i64() > Some(0))
    {
        let d = app.delivery(&d["id"]).await;
        for a in d["attempts"].as_array().unwrap() {
            let body = a["response_body"].as_str().unwrap_or_default();
            assert!(!body.contains(ERIN_PHONE), "{body}");
            erased_answers += i64::from(body.contains("[erased]"));
        }
    }
    assert!(erased_answers >= 5);
    assert_eq!(receipt["attempts"], erased_answers, "{receipt}");
    // A re-post of an erased event is a duplicate, and stores nothing.
    let again = app
        .publish_ok(
            "default",
            &event_with_phone(&erins[1], 3, "erin", ERIN_PHONE),
        )
        .await;
    assert_eq!(again[0]["duplicate"], true);

    // The number is in no file (SQLite: database and WAL, free pages included) and no row.
    let bytes = bytes_at_rest(&app.data).await;
    assert!(!holds(&bytes, ERIN_PHONE), "the value is still stored");
    assert!(holds(&bytes, "+15551230001"), "the others' numbers are");

    // The pending deliveries go out erased once the receiver takes them.
    let before = rx.received().len();
    rx.set_behaviour(|_, _| (204, std::time::Duration::ZERO));
    let got = rx
        .wait_until(
            |got| {
                let ids: std::collections::HashSet<String> =
                    got[before..].iter().map(Received::event_id).collect();
                ids.len() == 1000
            },
            "every Erin delivery, erased",
        )
        .await;
    for r in &got[before..] {
        assert_eq!(additional(&r.json())["PhoneNo"], "[erased]");
    }
    // The tenant's monitors are told, without the value.
    let told = monitor
        .wait_until(
            |got| got.iter().any(|r| r.json()["Code"] == 8),
            "System event 8 Erased",
        )
        .await;
    let note = told.iter().find(|r| r.json()["Code"] == 8).unwrap();
    assert!(!holds(&note.body, ERIN_PHONE));
    let fields = note.json()["AdditionalFields"].clone();
    assert_eq!(fields["JobId"], json!(id));
    assert_eq!(fields["Field"], "PhoneNo");
    assert_eq!(fields["Events"], 1000);
    assert_eq!(fields["Agents"], 1);
}

#[tokio::test]
async fn erasing_a_username_takes_the_agent_out_of_the_view() {
    let app = TestApp::spawn().await;
    let events = json!([
        agent_event(&guid(), 1, "frank"),
        agent_event(&guid(), 1, "gina")
    ]);
    app.publish_ok("default", &events).await;
    json_ok(app.get("/v1/tenants/default/agents/frank", ADMIN_KEY).await).await;
    // Its intervals are kept (a read folds them in): they go too.
    let window = "since=20261123000000&until=20261124000000";
    let path = format!("/v1/tenants/default/agents/intervals?{window}&username=frank");
    let kept = json_ok(app.get(&path, ADMIN_KEY).await).await;
    assert_eq!(kept["data"].as_array().unwrap().len(), 21, "{kept}");
    let job = create_job(
        &app,
        json!({"kind": "erase", "field": "Username", "value": "frank"}),
    )
    .await;
    let done = ended(&app, job["id"].as_str().unwrap(), ADMIN_KEY).await;
    assert_eq!(
        done["result"],
        json!({"events": 1, "attempts": 0, "agents": 1, "pii": true})
    );
    let r = app.get("/v1/tenants/default/agents/frank", ADMIN_KEY).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    json_ok(app.get("/v1/tenants/default/agents/gina", ADMIN_KEY).await).await;
    let log = app.all_events("default").await;
    let names: Vec<&Value> = log
        .iter()
        .map(|e| &additional(&e["event"])["Username"])
        .collect();
    assert_eq!(names, [&json!("[erased]"), &json!("gina")]);
    assert!(!holds(&bytes_at_rest(&app.data).await, "\"frank\""));
    let gone = json_ok(app.get(&path, ADMIN_KEY).await).await;
    assert_eq!(gone["data"], json!([]));
}

#[tokio::test]
async fn an_erasure_names_a_catalog_field_and_a_value() {
    let app = TestApp::spawn().await;
    let refused = |body: Value| {
        let app = &app;
        async move {
            let r = post_job(app, &body).await;
            fields_named(&problem(r, StatusCode::UNPROCESSABLE_ENTITY).await)
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        refused(json!({"kind": "erase", "field": "Nope", "value": "x"})).await,
        ["field"]
    );
    assert_eq!(
        refused(json!({"kind": "erase", "field": "PhoneNo", "value": ""})).await,
        ["value"]
    );
    assert_eq!(
        refused(json!({"kind": "erase", "field": "PhoneNo"})).await,
        ["value"]
    );
    assert_eq!(
        refused(json!({"kind": "erase", "value": "x"})).await,
        ["field"]
    );
    assert_eq!(
        refused(json!({"kind": "erase", "field": "PhoneNo", "value": {"a": 1}})).await,
        ["value"]
    );
    assert_eq!(
        refused(json!({"kind": "erase", "field": "PhoneNo", "value": "9".repeat(1001)})).await,
        ["value"]
    );
    assert_eq!(
        refused(json!({"kind": "forget", "field": "PhoneNo", "value": "x"})).await,
        ["kind"]
    );
    assert_eq!(
        refused(json!({"kind": "erase", "field": "PhoneNo", "value": "x", "subscription_id": "s"}))
            .await,
        ["subscription_id"]
    );
    assert_eq!(
        refused(json!({"kind": "replay", "since": "20260101000000"})).await,
        ["subscription_id"]
    );
    let jobs = json_ok(app.get("/v1/tenants/default/jobs", ADMIN_KEY).await).await;
    assert_eq!(jobs["data"], json!([]), "nothing stored");
    // A field the catalog does not mark as personal data: allowed, and the receipt says so.
    app.publish_ok("default", &agent_event(&guid(), 1, "hal"))
        .await;
    let job = create_job(
        &app,
        json!({"kind": "erase", "field": "SessionType", "value": "CCA"}),
    )
    .await;
    let done = ended(&app, job["id"].as_str().unwrap(), ADMIN_KEY).await;
    assert_eq!(done["result"]["pii"], false);
    assert_eq!(done["result"]["events"], 1);
}

const KEY_ONE: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const SIGNING_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const HEADER_TOKEN: &str = "h3ader-t0ken-kept-secret";

/// Every place the database keeps data, as bytes: SQLite's database file and WAL (free pages
/// included), or every PostgreSQL table's rows as text.
async fn bytes_at_rest(data: &crate::support::db::TestData) -> Vec<u8> {
    match data.database_url().as_str() {
        "" => ["switchboard.db", "switchboard.db-wal"]
            .iter()
            .filter_map(|f| std::fs::read(data.dir.path().join(f)).ok())
            .flatten()
            .collect(),
        url => {
            use sqlx::Connection;
            let mut pg = sqlx::PgConnection::connect(url).await.unwrap();
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
            )
            .fetch_all(&mut pg)
            .await
            .unwrap();
            let mut all = Vec::new();
            for t in tables {
                let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM {t} t"))
                    .fetch_all(&mut pg)
                    .await
                    .unwrap();
                all.extend(rows.into_iter().flat_map(String::into_bytes));
            }
            all
        }
    }
}

/// `serve` over `data` with `env`, expected to refuse to start: its exit status and stderr.
fn refused_start(data: &crate::support::db::TestData, env: &[(&str, &str)]) -> String {
    let out = crate::support::process::serve_command(data, &[], env, None)
        .output()
        .expect("switchboard ran");
    assert!(!out.status.success(), "it started: {out:?}");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Creates a subscription on `default` through `server`; returns the answer (201).
async fn subscribe_via(server: &crate::support::process::Server, body: &Value) -> Value {
    let path = "/v1/tenants/default/subscriptions";
    let r = server.post(&reqwest::Client::new(), path, body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

/// Posts one event of erin through `server` and returns what the receiver got for it.
async fn one_delivery(server: &crate::support::process::Server, rx: &TestReceiver) -> Received {
    let id = guid();
    let event = event_with_phone(&id, 1, "erin", ERIN_PHONE);
    let r = server
        .post(
            &reqwest::Client::new(),
            "/v1/tenants/default/events",
            &event,
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let got = rx
        .wait_until(|got| got.iter().any(|r| r.event_id() == id), "the delivery")
        .await;
    got.into_iter().find(|r| r.event_id() == id).unwrap()
}

#[tokio::test]
async fn secrets_at_rest_are_encrypted_and_the_key_is_required_and_rotated() {
    use crate::support::process::Server;
    let data = crate::support::db::TestData::new().await;
    let rx = TestReceiver::start().await;
    let key_one = [("SWITCHBOARD_SECRET_KEY", KEY_ONE)];
    let mut server = Server::start_env(&data, &key_one, None);
    let body = json!({"url": rx.url("/"), "secret": SIGNING_SECRET,
                      "headers": {"X-Api-Token": HEADER_TOKEN}, "redact": {"PhoneNo": "hash"}});
    let answer = subscribe_via(&server, &body).await;
    assert_eq!(answer["secret"], SIGNING_SECRET, "shown as given");
    let secret = json!(SIGNING_SECRET);
    let first = one_delivery(&server, &rx).await;
    assert!(signed(&first, &secret), "deliveries verify");
    assert_eq!(first.header("x-api-token"), HEADER_TOKEN);
    let hashed = additional(&first.json())["PhoneNo"].clone();
    server.terminate();
    server.child.wait().unwrap();

    // Neither the secret (nor its key bytes) nor the header's value is stored as such.
    let stored = bytes_at_rest(&data).await;
    assert!(stored.len() > 1000, "the database was read");
    for plain in [SIGNING_SECRET, &SIGNING_SECRET[6..], HEADER_TOKEN] {
        assert!(!holds(&stored, plain), "{plain} is stored in plain");
    }

    // Without the key, or with another, it refuses to start, saying which.
    let said = refused_start(&data, &[]);
    assert!(said.contains("no secret key is configured"), "{said}");
    let other = "22".repeat(32);
    let said = refused_start(&data, &[("SWITCHBOARD_SECRET_KEY", &other)]);
    assert!(said.contains("secret key does not match"), "{said}");

    // rotate-key (the server stopped), then start with the new key: deliveries still verify,
    // and hashes of redacted fields are unchanged.
    let new_key = data.dir.path().join("new.key");
    std::fs::write(&new_key, [7u8; 32]).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["secrets", "rotate-key", "--new-key-file"])
        .arg(&new_key)
        .arg("--data-dir")
        .arg(data.dir.path())
        .arg("--database-url")
        .arg(data.database_url())
        .env("SWITCHBOARD_SECRET_KEY", KEY_ONE)
        .env("SWITCHBOARD_ADMIN_KEY", ADMIN_KEY)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = refused_start(&data, &key_one);
    assert!(
        said.contains("secret key does not match"),
        "the old key no more: {said}"
    );
    let file = new_key.to_string_lossy().to_string();
    let mut server = Server::start_env(&data, &[("SWITCHBOARD_SECRET_KEY_FILE", &file)], None);
    let again = one_delivery(&server, &rx).await;
    assert!(
        signed(&again, &secret),
        "deliveries verify after the rotation"
    );
    assert_eq!(again.header("x-api-token"), HEADER_TOKEN);
    assert_eq!(
        additional(&again.json())["PhoneNo"],
        hashed,
        "the same hash"
    );
    server.terminate();
    server.child.wait().unwrap();
    let stored = bytes_at_rest(&data).await;
    assert!(!holds(&stored, &SIGNING_SECRET[6..]));
}

#[tokio::test]
async fn a_first_key_encrypts_the_secrets_stored_before_it() {
    use crate::support::process::Server;
    let data = crate::support::db::TestData::new().await;
    let rx = TestReceiver::start().await;
    let mut server = Server::start(&data);
    let body = json!({"url": rx.url("/"), "secret": SIGNING_SECRET});
    subscribe_via(&server, &body).await;
    server.terminate();
    server.child.wait().unwrap();
    assert!(
        holds(&bytes_at_rest(&data).await, &SIGNING_SECRET[6..]),
        "plain before"
    );
    let mut server = Server::start_env(&data, &[("SWITCHBOARD_SECRET_KEY", KEY_ONE)], None);
    let got = one_delivery(&server, &rx).await;
    assert!(signed(&got, &json!(SIGNING_SECRET)));
    server.terminate();
    server.child.wait().unwrap();
    assert!(
        !holds(&bytes_at_rest(&data).await, &SIGNING_SECRET[6..]),
        "sealed after"
    );
}
