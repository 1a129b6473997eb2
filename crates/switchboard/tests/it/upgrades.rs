//! Stored forms that this release cannot read (a newer release's, a damaged row) harm only
//! themselves (DESIGN §15).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::app::{ADMIN_KEY, agent_event, guid};
use crate::support::db::{OldDb, TestData};
use crate::support::process::Server;
use crate::support::{TestApp, TestReceiver};

#[tokio::test]
async fn a_subscription_that_does_not_decode_harms_only_itself() {
    let app = TestApp::spawn().await;
    let good = TestReceiver::start().await;
    let lost = TestReceiver::start().await;
    app.subscribe(json!({"url": good.url("/")})).await;
    let broken = app.subscribe(json!({"url": lost.url("/")})).await;
    let id = broken["id"].as_str().unwrap();
    let mut db = OldDb::open(&app.data, 9, 8).await;
    db.exec(&format!(
        "UPDATE subscriptions SET spec = 'not a subscription', updated_at = updated_at + 1 \
         WHERE id = '{id}'"
    ))
    .await;
    db.close().await;

    // Ingest goes on, and so does delivery to the other subscription.
    for _ in 0..3 {
        app.publish_ok("default", &agent_event(&guid(), 1, "jdoe"))
            .await;
    }
    good.wait_for(3).await;
    assert!(lost.received().is_empty());
}

/// Told to stop, a node drains first (DESIGN §15): `/readyz` answers 503 `draining` while
/// ingest still answers 202; then it exits 0, and what it accepted is kept.
#[tokio::test]
async fn a_node_told_to_stop_drains_then_exits_cleanly() {
    let data = TestData::new().await;
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.dir.path())
        .arg("--database-url")
        .arg(data.database_url())
        .env("SWITCHBOARD_ADMIN_KEY", ADMIN_KEY)
        .env("SWITCHBOARD_LOG_LEVEL", "warn")
        .env("SWITCHBOARD_DRAIN_SECS", "3");
    let mut server = Server::launch(command, Stdio::inherit());
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    let pid = server.child.id().to_string();
    let told = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let draining = loop {
        let r = client
            .get(format!("{}/readyz", server.base))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            break r;
        }
        assert!(told.elapsed() < Duration::from_secs(2), "never draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(draining.headers()["content-type"], "application/json");
    assert_eq!(
        draining.json::<Value>().await.unwrap(),
        json!({"status": "draining"})
    );
    // Still serving: an event posted while draining is accepted.
    let id = guid();
    let r = server
        .post(
            &client,
            "/v1/tenants/default/events",
            &agent_event(&id, 1, "jdoe"),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    drop(client);
    let status = tokio::task::spawn_blocking(move || server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        told.elapsed() >= Duration::from_secs(3),
        "left before its drain"
    );

    // Kept: the next node has it.
    let again = Server::start(&data);
    let ids = again.event_ids(&reqwest::Client::new()).await;
    assert!(ids.contains(&id));
}
