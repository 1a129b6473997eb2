//! Stored forms that this release cannot read (a newer release's, a damaged row) harm only
//! themselves (DESIGN §15).

use serde_json::json;

use crate::support::app::{agent_event, guid};
use crate::support::db::OldDb;
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
