//! At-least-once delivery across SIGKILLs of the real binary.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::TestReceiver;
use crate::support::app::{agent_event, guid};
use crate::support::db::TestData;
use crate::support::process::Server;
use crate::support::receiver::unique_ids;

async fn publish(client: &reqwest::Client, server: &Server, events: &[Value]) {
    for chunk in events.chunks(50) {
        let r = server
            .post(
                client,
                "/v1/tenants/default/events",
                &Value::Array(chunk.to_vec()),
            )
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
}

/// 2,000 events are accepted while the server is SIGKILLed twice mid-delivery and restarted;
/// the receiver ends with every event id at least once.
#[tokio::test]
async fn no_event_is_lost_when_the_server_is_killed_mid_delivery() {
    let data = TestData::new().await;
    // A slightly slow receiver, so that deliveries are in flight when the kill comes.
    let rx = TestReceiver::with(|_, _| (200, Duration::from_millis(2))).await;
    let client = reqwest::Client::new();
    let events: Vec<Value> = (0..2000)
        .map(|i| agent_event(&guid(), 1 + i % 6, &format!("agent{}", i % 40)))
        .collect();
    let mut server = Server::start(&data);
    let r = server
        .post(
            &client,
            "/v1/tenants/default/subscriptions",
            &json!({"url": rx.url("/"), "max_in_flight": 8}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    for (phase, range) in [(0, 0..700), (1, 700..1400)] {
        publish(&client, &server, &events[range.clone()]).await;
        // Kill once part of this phase's events has been delivered, the rest still queued.
        let target = range.start + 150;
        rx.wait_until(
            |got| unique_ids(got).len() >= target,
            "part of the deliveries",
        )
        .await;
        server.kill();
        assert!(
            unique_ids(&rx.received()).len() < 2000,
            "phase {phase}: the kill came mid-delivery"
        );
        server = Server::start(&data);
    }
    publish(&client, &server, &events[1400..]).await;

    let want: HashSet<String> = events
        .iter()
        .map(|e| e["Id"].as_str().unwrap().to_string())
        .collect();
    let got = rx
        .wait_until(|got| unique_ids(got).is_superset(&want), "every event id")
        .await;
    let duplicates = got.len() - unique_ids(&got).len();
    eprintln!(
        "{} deliveries for {} events: {duplicates} duplicates",
        got.len(),
        want.len()
    );
}

/// A replay job of 100,000 events is SIGKILLed mid-run; after the restart it resumes after its
/// last page and ends `done` with the right total, every event's delivery requeued once.
#[tokio::test]
async fn a_replay_job_killed_mid_run_resumes_after_the_restart_with_the_right_total() {
    const EVENTS: usize = 100_000;
    let data = TestData::new().await;
    let client = reqwest::Client::new();
    let mut server = Server::start(&data);
    let events: Vec<Value> = (0..EVENTS)
        .map(|i| agent_event(&guid(), 1, &format!("agent{}", i % 500)))
        .collect();
    for chunk in events.chunks(1000) {
        let r = server
            .post(
                &client,
                "/v1/tenants/default/events",
                &Value::Array(chunk.to_vec()),
            )
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    // Disabled: the replay creates its deliveries, and nothing attempts them.
    let r = server
        .post(
            &client,
            "/v1/tenants/default/subscriptions",
            &json!({"url": "http://127.0.0.1:9/", "enabled": false}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let sub: Value = r.json().await.unwrap();
    let body = json!({"kind": "replay", "subscription_id": sub["id"], "since": "20200101000000"});
    let r = server
        .post(&client, "/v1/tenants/default/jobs", &body)
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let job: Value = r.json().await.unwrap();
    let path = format!("/v1/tenants/default/jobs/{}", job["id"].as_str().unwrap());

    let seen = |server: &Server| {
        let url = format!("{}{path}", server.base);
        let client = client.clone();
        async move {
            let r = client
                .get(url)
                .bearer_auth(crate::support::app::ADMIN_KEY)
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        }
    };
    // Killed once some pages are done, well before the last.
    loop {
        let job = seen(&server).await;
        let done = job["done"].as_i64().unwrap();
        assert!(
            done < EVENTS as i64 / 2,
            "the job ran too far before the kill: {job}"
        );
        if done >= 2_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    server = Server::start(&data);
    let before = seen(&server).await;
    assert_eq!(before["state"], "running", "{before}");
    assert_eq!(before["total"], EVENTS, "{before}");
    let done = crate::support::receiver::eventually_within(
        "the job to resume and end",
        Duration::from_secs(120),
        || async {
            let job = seen(&server).await;
            (job["state"] == "done").then_some(job)
        },
    )
    .await;
    assert_eq!(done["total"], EVENTS, "{done}");
    assert_eq!(done["done"], EVENTS, "{done}");
    assert_eq!(done["result"], json!({"requeued": EVENTS}));
    drop(server);
    let mut db = crate::support::db::OldDb::latest(&data).await;
    let pending = db
        .text("SELECT CAST(COUNT(*) AS TEXT) FROM deliveries WHERE status = 'pending'")
        .await;
    db.close().await;
    assert_eq!(pending, EVENTS.to_string());
}
