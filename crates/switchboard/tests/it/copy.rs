//! `switchboard copy --to postgres://…` (DESIGN §15): an embedded deployment moved into an empty
//! PostgreSQL database answers every read as before, keeps its keys, continues its sequences
//! and delivers what was pending; bad input changes nothing.
//!
//! The source is always SQLite and the target PostgreSQL, whatever backend the suite runs on;
//! `.ci/run` runs these once, with the SQLite suite.

use std::collections::HashSet;
use std::process::{Command, Output};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::TestReceiver;
use crate::support::app::{ADMIN_KEY, agent_event, guid};
use crate::support::db::TestData;
use crate::support::process::{Server, post_to};

/// `switchboard copy` of `source`'s data directory.
fn copy(source: &TestData, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("copy")
        .args(args)
        .arg("--data-dir")
        .arg(source.dir.path())
        .env("SWITCHBOARD_ADMIN_KEY", ADMIN_KEY)
        .env_remove("SWITCHBOARD_DATABASE_URL")
        .output()
        .expect("run switchboard copy")
}

async fn call(base: &str, key: &str, method: Method, path: &str, body: Option<Value>) -> Value {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(key);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

/// Every page of a list, followed to its end.
async fn all_pages(base: &str, key: &str, path: &str) -> Vec<Value> {
    let (mut out, mut after) = (Vec::new(), None::<String>);
    let sep = if path.contains('?') { '&' } else { '?' };
    loop {
        let page_path = match &after {
            None => format!("{path}{sep}limit=1000"),
            Some(a) => format!("{path}{sep}limit=1000&after={a}"),
        };
        let page = call(base, key, Method::GET, &page_path, None).await;
        out.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_str() {
            Some(a) => after = Some(a.to_string()),
            None => return out,
        }
    }
}

/// What a deployment answers: every resource the tenant's key and the admin may read.
async fn snapshot(
    base: &str,
    key: &str,
    subs: &[String],
    users: &[String],
) -> Vec<(String, Value)> {
    let mut seen = Vec::new();
    let mut lists = vec![
        ("/v1/tenants".to_string(), ADMIN_KEY),
        ("/v1/tenants/acme/keys".to_string(), ADMIN_KEY),
        ("/v1/tenants/acme/events".to_string(), key),
        ("/v1/tenants/acme/subscriptions".to_string(), key),
        ("/v1/tenants/acme/agents".to_string(), key),
    ];
    for sub in subs {
        lists.push((
            format!("/v1/tenants/acme/subscriptions/{sub}/deliveries"),
            key,
        ));
    }
    for (path, k) in lists {
        seen.push((path.clone(), Value::Array(all_pages(base, k, &path).await)));
    }
    for sub in subs {
        let path = format!("/v1/tenants/acme/subscriptions/{sub}");
        seen.push((
            path.clone(),
            call(base, key, Method::GET, &path, None).await,
        ));
    }
    let deliveries = all_pages(
        base,
        key,
        &format!("/v1/tenants/acme/subscriptions/{}/deliveries", subs[1]),
    )
    .await;
    for d in deliveries.iter().take(20) {
        let path = format!("/v1/tenants/acme/deliveries/{}", d["id"]);
        seen.push((
            path.clone(),
            call(base, key, Method::GET, &path, None).await,
        ));
    }
    for user in users {
        for path in [
            format!("/v1/tenants/acme/agents/{user}"),
            format!("/v1/tenants/acme/agents/{user}?as_of=100"),
            format!(
                "/v1/tenants/acme/agents/{user}/timeline?since=20261123000000&until=20261124000000"
            ),
        ] {
            seen.push((
                path.clone(),
                call(base, key, Method::GET, &path, None).await,
            ));
        }
    }
    // A subscription's lag is the same but for its age, which grows with the clock.
    for (_, answer) in &mut seen {
        let subs = match answer {
            Value::Array(items) => items.iter_mut().collect::<Vec<_>>(),
            one => vec![one],
        };
        for sub in subs {
            if let Some(lag) = sub.get_mut("lag").and_then(Value::as_object_mut) {
                lag.remove("oldest_pending_age_ms");
            }
        }
    }
    seen
}

#[tokio::test]
async fn a_copied_deployment_answers_as_before_and_delivers_what_was_pending() {
    let source = TestData::sqlite();
    let target = TestData::postgres().await;
    let (ok, failing) = (
        TestReceiver::start().await,
        TestReceiver::with(|_, _| (503, Duration::ZERO)).await,
    );
    let server = Server::start(&source);
    let base = server.base.clone();
    call(
        &base,
        ADMIN_KEY,
        Method::POST,
        "/v1/tenants",
        Some(json!({"id": "acme", "name": "Acme"})),
    )
    .await;
    let created = call(
        &base,
        ADMIN_KEY,
        Method::POST,
        "/v1/tenants/acme/keys",
        Some(json!({"name": "crm", "scopes": ["publish", "read", "manage"]})),
    )
    .await;
    let key = created["key"].as_str().unwrap().to_string();
    let subscribe = |body: Value| {
        let (base, key) = (base.clone(), key.clone());
        async move {
            call(
                &base,
                &key,
                Method::POST,
                "/v1/tenants/acme/subscriptions",
                Some(body),
            )
            .await
        }
    };
    let monitor = TestReceiver::start().await;
    // A receives three agents' events (a tenth of the log), B one agent's. A's phone numbers
    // are hashed with the instance's key, which the copy carries over (DESIGN §19).
    let a = subscribe(json!({"url": ok.url("/"), "redact": {"PhoneNo": "hash"},
                             "filter": {"usernames": ["agent00", "agent01", "agent02"]}}))
    .await;
    let b = subscribe(
        json!({"url": failing.url("/"), "filter": {"usernames": ["agent00"]},
                             "retry_schedule_secs": vec![20; 50]}),
    )
    .await;
    let m =
        subscribe(json!({"url": monitor.url("/"), "filter": {"events": [{"category": 0}]}})).await;
    let subs: Vec<String> = [&a, &b, &m]
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();

    // 100,000 events of 30 agents, in batches of 1,000.
    let users: Vec<String> = (0..30).map(|i| format!("agent{i:02}")).collect();
    let (mut to_a, mut ids) = (0, HashSet::new());
    let client = reqwest::Client::new();
    for batch in 0..100 {
        let events: Vec<Value> = (0..1000)
            .map(|i| {
                let id = guid();
                let user = &users[(batch * 1000 + i) % 30];
                if users[..3].contains(user) {
                    to_a += 1;
                }
                if *user == users[0] {
                    ids.insert(id.clone());
                }
                let code = if (batch + i) % 7 == 0 { 1 } else { 3 };
                agent_event(&id, code, user)
            })
            .collect();
        let r = post_to(
            &client,
            &base,
            "/v1/tenants/acme/events",
            &Value::Array(events),
        )
        .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    ok.wait_until(|got| got.len() >= to_a, "A's deliveries")
        .await;
    // B's receiver fails: its breaker opens after 5 attempts, and the rest wait unattempted.
    failing
        .wait_until(|got| got.len() >= 5, "B's first attempts")
        .await;
    // B is stopped while its deliveries are pending (a System event tells the monitor).
    call(
        &base,
        &key,
        Method::PATCH,
        &format!("/v1/tenants/acme/subscriptions/{}", subs[1]),
        Some(json!({"enabled": false})),
    )
    .await;
    monitor.wait_for(1).await;
    let before = snapshot(&base, &key, &subs, &users[..3]).await;
    let pending = all_pages(
        &base,
        &key,
        &format!(
            "/v1/tenants/acme/subscriptions/{}/deliveries?status=pending",
            subs[1]
        ),
    )
    .await;
    assert_eq!(pending.len(), ids.len());
    drop(server);

    // Refused while a server holds the data directory.
    let holder = Server::start(&source);
    let out = copy(&source, &["--to", &target.database_url()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds the data directory"),
        "{out:?}"
    );
    drop(holder);

    let out = copy(&source, &["--to", &target.database_url()]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("checksums equal on every table"), "{said}");

    // Serve on PostgreSQL: the same answers, the same keys.
    let node = TestData::beside(target.database_url());
    let server = Server::start(&node);
    let base = server.base.clone();
    let after = snapshot(&base, &key, &subs, &users[..3]).await;
    for ((path, was), (_, is)) in before.iter().zip(&after) {
        assert_eq!(was, is, "{path} answers differently after the move");
    }

    // The next event follows the last sequence; pending deliveries go out once B is enabled.
    let id = guid();
    let r = post_to(
        &client,
        &base,
        "/v1/tenants/acme/events",
        &agent_event(&id, 3, "agent00"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["events"][0]["sequence"], 100_001);
    let got = ok
        .wait_until(
            |got| got.iter().any(|r| r.event_id() == id),
            "the new event delivered",
        )
        .await;
    let phone =
        |r: &crate::support::receiver::Received| r.json()["AdditionalFields"]["PhoneNo"].clone();
    let hashed = phone(got.iter().find(|r| r.event_id() == id).unwrap());
    assert!(
        hashed.as_str().unwrap().starts_with("hmac-sha256:"),
        "{hashed}"
    );
    assert_eq!(hashed, phone(&got[0]), "the same hash after the move");
    let seen = failing.received().len();
    failing.set_behaviour(|_, _| (204, Duration::ZERO));
    call(
        &base,
        &key,
        Method::PATCH,
        &format!("/v1/tenants/acme/subscriptions/{}", subs[1]),
        Some(json!({"enabled": true})),
    )
    .await;
    failing
        .wait_until(
            |got| ids.is_subset(&got[seen..].iter().map(|r| r.event_id()).collect()),
            "every pending delivery delivered from PostgreSQL",
        )
        .await;
}

/// Bad input: each a one-line error and a failed exit, nothing changed.
#[tokio::test]
async fn a_copy_refuses_what_it_cannot_do_and_changes_nothing() {
    // A missing data directory: nothing created.
    let target = TestData::postgres().await;
    let missing = tempfile::tempdir().unwrap().path().join("nowhere");
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["copy", "--to", &target.database_url(), "--data-dir"])
        .arg(&missing)
        .env_remove("SWITCHBOARD_DATABASE_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error: ")).count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(!missing.exists());

    // An unreachable target.
    let source = TestData::sqlite();
    drop(Server::start(&source));
    let out = copy(
        &source,
        &["--to", "postgres://postgres@127.0.0.1:1/nothing"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("connecting to postgres://postgres@127.0.0.1:1/nothing"),
        "{stderr}"
    );

    // A target that is not empty: named, and left as it was.
    let second = TestData::beside(target.database_url());
    let node = Server::start(&second);
    node.publish_one().await;
    drop(node);
    let out = copy(&source, &["--to", &target.database_url()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("is not empty: it holds 1 events"),
        "{stderr}"
    );
    assert!(stderr.contains("--force-empty"), "{stderr}");
    let node = Server::start(&second);
    assert_eq!(node.event_ids(&reqwest::Client::new()).await.len(), 1);
    drop(node);

    // --force-empty: the target then holds the source, and only it.
    let out = copy(&source, &["--to", &target.database_url(), "--force-empty"]);
    assert!(out.status.success(), "{out:?}");
    let node = Server::start(&second);
    assert!(node.event_ids(&reqwest::Client::new()).await.is_empty());
}
