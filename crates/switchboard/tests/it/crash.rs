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
