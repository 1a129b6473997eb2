//! Durability: what was acknowledged survives a graceful restart and a SIGKILL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::support::TestApp;
use crate::support::app::{ADMIN_KEY, agent_event, guid};
use crate::support::db::{OldDb, TestData, old_sqlite};
use crate::support::process::Server;

#[tokio::test]
async fn events_survive_a_graceful_restart() {
    let app = TestApp::spawn().await;
    let batch: Vec<Value> = (0..100)
        .map(|i| agent_event(&guid(), 1, &format!("u{i}")))
        .collect();
    app.publish_ok("default", &Value::Array(batch.clone()))
        .await;
    let before = app.all_events("default").await;
    let data = app.stop().await;

    let app = TestApp::spawn_in(data).await;
    assert_eq!(app.all_events("default").await, before);
    // Sequences continue where they stopped.
    let next = app
        .publish_ok("default", &agent_event(&guid(), 1, "after"))
        .await;
    assert_eq!(next[0]["sequence"], 101);
}

/// Producers keep posting while the server is SIGKILLed; every event that got a 202 is there
/// after the restart.
#[tokio::test]
async fn acknowledged_events_survive_sigkill() {
    let data = TestData::new().await;
    let mut server = Server::start(&data);
    let client = reqwest::Client::new();
    let url = format!("{}/v1/tenants/default/events", server.base);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let killed = Arc::new(AtomicBool::new(false));

    let mut producers = Vec::new();
    for p in 0..8 {
        let (client, url, acked, killed) =
            (client.clone(), url.clone(), acked.clone(), killed.clone());
        producers.push(tokio::spawn(async move {
            let mut i = 0;
            while !killed.load(Ordering::SeqCst) {
                let event = agent_event(&guid(), 1, &format!("p{p}-{i}"));
                i += 1;
                let Ok(r) = client
                    .post(&url)
                    .bearer_auth(ADMIN_KEY)
                    .json(&event)
                    .send()
                    .await
                else {
                    break;
                };
                if r.status() == StatusCode::ACCEPTED {
                    acked
                        .lock()
                        .await
                        .push(event["Id"].as_str().unwrap().to_string());
                }
            }
        }));
    }
    // Kill as soon as enough have been acknowledged, while requests are still in flight.
    loop {
        if acked.lock().await.len() >= 400 {
            break;
        }
        assert!(
            !producers.iter().all(|p| p.is_finished()),
            "the producers stopped: is the server up?"
        );
        tokio::task::yield_now().await;
    }
    server.kill();
    killed.store(true, Ordering::SeqCst);
    for p in producers {
        p.await.unwrap();
    }
    let acked = acked.lock().await.clone();
    assert!(acked.len() >= 400);

    let server = Server::start(&data);
    let stored = server.event_ids(&client).await;
    let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost: {lost:?}",
        lost.len()
    );
}

/// An SQLite database with deliveries made before migration 4 (which rebuilds their table)
/// keeps them, ids, state and all, and finds them by event.
#[tokio::test]
async fn deliveries_survive_the_rebuild_of_their_table() {
    use sqlx::Connection;
    use switchboard::store::{DeliveryStatus, Store};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let mut conn = old_sqlite(&path, 3).await;
    let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
    sqlx::query(
        "INSERT INTO events (tenant_id, sequence, id, created, category, code, received_at, body) \
         VALUES ('default', 1, $1, 20261123184603, 2, 1, 0, '{}')",
    )
    .bind(id)
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO deliveries (id, tenant_id, subscription_id, event_id, sequence, status, \
         attempt_count, next_attempt_at, created_at, updated_at) \
         VALUES (7, 'default', 'sub_old', $1, 1, 'pending', 3, 5, 1, 2)",
    )
    .bind(id)
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    let store = Store::open("", &path).await.expect("migrates");
    let found = store
        .deliveries_of_event("default", id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    let d = &found[0];
    assert_eq!((d.id, d.sequence, d.attempt_count), (7, 1, 3));
    assert_eq!(d.status, DeliveryStatus::Pending);
    assert_eq!(
        (d.event_id.as_str(), d.subscription_id.as_str()),
        (id, "sub_old")
    );
    store.close().await;
}

/// Events stored before migration 5 (which moves their ids into `event_ids`) are still
/// duplicates when posted again, conflicts with other content, and found by id.
#[tokio::test]
async fn event_ids_survive_their_move_to_an_index_of_their_own() {
    use sqlx::Connection;
    use switchboard::event::{Catalog, Timestamp, parse_batch};
    use switchboard::store::{IngestError, Store};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let mut conn = old_sqlite(&path, 4).await;
    let post = |date: &str| {
        let body = agent_event("0f8fad5b-d9cb-469f-a165-70867728950e", 1, "alice");
        let mut body = body.as_object().unwrap().clone();
        body.insert("CreationDateUtc".into(), date.into());
        parse_batch(
            Value::Object(body).to_string().as_bytes(),
            &Catalog::builtin(),
        )
        .unwrap()
    };
    let old = post("20261123184603").remove(0).complete(Timestamp::now());
    sqlx::query(
        "INSERT INTO events (tenant_id, sequence, id, created, category, code, received_at, body) \
         VALUES ('default', 1, $1, $2, 1, 1, 0, $3)",
    )
    .bind(old.id.to_string())
    .bind(old.creation.as_i64())
    .bind(old.to_canonical_json())
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("UPDATE tenants SET last_sequence = 1 WHERE id = 'default'")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    let store = Store::open("", &path).await.expect("migrates");
    let again = store
        .ingest("default", post("20261123184603"))
        .await
        .unwrap();
    assert_eq!((again[0].sequence, again[0].duplicate), (1, true));
    match store.ingest("default", post("20261123184604")).await {
        Err(IngestError::Conflict(c)) => assert_eq!(c, vec![(0, old.id)]),
        other => panic!("other content: {other:?}"),
    }
    let found = store.get_event("default", old.id).await.unwrap();
    assert_eq!(found.map(|e| e.sequence), Some(1));
    store.close().await;
}

/// A database as the previous release (before System events had a table) left it — an event,
/// a subscription, a delivery pending and one failed with its attempt — opens with its data, on
/// either backend, and the pending delivery goes out.
#[tokio::test]
async fn a_database_of_the_previous_release_opens_with_its_data() {
    let rx = crate::support::TestReceiver::start().await;
    let data = TestData::new().await;
    let mut old = OldDb::open(&data, 5, 4).await;
    let (id1, id2) = (guid(), guid());
    let body = |id: &str| {
        let mut e = agent_event(id, 1, "alice");
        e["CreationDateUtc"] = "20261123184603".into();
        e.to_string()
    };
    let spec = serde_json::json!({"url": rx.url("/old"), "secret": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"});
    // Received now: older would be purged by retention as the node starts.
    let now = switchboard::clock::now_millis();
    for sql in [
        format!(
            "INSERT INTO events (tenant_id, sequence, id, created, category, code, username, \
             received_at, body) VALUES ('default', 1, '{id1}', 20261123184603, 1, 1, 'alice', {now}, \
             '{}'), ('default', 2, '{id2}', 20261123184603, 1, 1, 'alice', {now}, '{}')",
            body(&id1),
            body(&id2)
        ),
        "UPDATE tenants SET last_sequence = 2".to_string(),
        format!(
            "INSERT INTO subscriptions (id, tenant_id, spec, enabled, created_at, updated_at) \
             VALUES ('sub_old', 'default', '{spec}', TRUE, 0, 0)"
        ),
        format!(
            "INSERT INTO deliveries (tenant_id, subscription_id, event_id, sequence, status, \
             attempt_count, next_attempt_at, created_at, updated_at) VALUES \
             ('default', 'sub_old', '{id1}', 1, 'failed', 1, NULL, 0, 0), \
             ('default', 'sub_old', '{id2}', 2, 'pending', 0, 0, 0, 0)"
        ),
        "INSERT INTO attempts (delivery_id, number, started_at, duration_ms, status_code, error) \
         SELECT id, 1, 0, 5, 500, 'HTTP 500' FROM deliveries WHERE sequence = 1"
            .to_string(),
    ] {
        old.exec(&sql).await;
    }
    old.close().await;

    let app = TestApp::spawn_in(data).await;
    let got = rx.wait_for(1).await;
    assert_eq!(got[0].event_id(), id2, "the pending delivery goes out");
    let log = app.all_events("default").await;
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["event"]["Id"], id1.as_str());
    let failed = app.deliveries("sub_old", Some("failed")).await;
    assert_eq!(failed.len(), 1);
    let detail = app.delivery(&failed[0]["id"]).await;
    assert_eq!(detail["attempts"][0]["status_code"], 500);
    // New events follow the old ones, and the Test event (a System event: new table) works.
    let accepted = app
        .publish_ok("default", &agent_event(&guid(), 1, "bob"))
        .await;
    assert_eq!(accepted[0]["sequence"], 3);
    let test = crate::support::app::json_ok(
        app.call(
            reqwest::Method::POST,
            "/v1/tenants/default/subscriptions/sub_old/test",
            ADMIN_KEY,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(test["delivered"], true);
}
