//! Durability: what was acknowledged survives a graceful restart and a SIGKILL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::support::TestApp;
use crate::support::app::{ADMIN_KEY, agent_event, guid};
use crate::support::db::TestData;
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
    let mut stored = std::collections::HashSet::new();
    let mut after = 0;
    loop {
        let page: Value = client
            .get(format!(
                "{}/v1/tenants/default/events?limit=1000&after={after}",
                server.base
            ))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for item in page["data"].as_array().unwrap() {
            stored.insert(item["event"]["Id"].as_str().unwrap().to_string());
            after = item["sequence"].as_i64().unwrap();
        }
        if page["next_after"].is_null() {
            break;
        }
    }
    let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost: {lost:?}",
        lost.len()
    );
}
