//! Field filters (DESIGN §14): subscriptions with different `filter.fields` receive exactly
//! their events, at ingest and on replay.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::support::app::{ADMIN_KEY, agent_event, guid, json_ok};
use crate::support::{TestApp, TestReceiver};

fn event(user: &str, session_type: &str, code: u32, activity: i64) -> Value {
    let mut e = agent_event(&guid(), code, user);
    e["AdditionalFields"]["SessionType"] = json!(session_type);
    if code == 3 {
        e["AdditionalFields"]["ActivityCode"] = json!(activity);
    }
    e
}

fn ids(got: &[crate::support::receiver::Received]) -> BTreeSet<String> {
    got.iter().map(|r| r.event_id()).collect()
}

#[tokio::test]
async fn three_subscriptions_receive_exactly_their_events_at_ingest_and_on_replay() {
    let app = TestApp::spawn().await;
    let (ra, rb, rc) = (
        TestReceiver::start().await,
        TestReceiver::start().await,
        TestReceiver::start().await,
    );
    let a = app
        .subscribe(json!({"url": ra.url("/a"), "filter": {"fields": {"SessionType": ["CCA"]}}}))
        .await;
    let b = app
        .subscribe(json!({"url": rb.url("/b"), "filter": {
            "events": [{"category": 1, "codes": [3]}], "fields": {"ActivityCode": [16, 36]}}}))
        .await;
    let c = app
        .subscribe(json!({"url": rc.url("/c"), "filter": {
            "fields": {"SessionType": ["TelAgent"], "Username": ["kim"]}}}))
        .await;
    let mut ivr = json!({"Id": guid(), "Category": 2, "Code": 5,
                         "AdditionalFields": {"SessionType": "CCA", "Queue": "Sales"}});
    ivr["CreationDateUtc"] = json!("20261123184603");
    let events = [
        event("jdoe", "CCA", 1, 0),      // a
        event("jdoe", "CCA", 3, 16),     // a, b
        event("jdoe", "CCA", 3, 0),      // a
        event("kim", "TelAgent", 1, 0),  // c
        event("kim", "TelAgent", 3, 36), // b, c
        event("lee", "TelAgent", 3, 16), // b
        ivr,                             // a
    ];
    app.publish_ok("default", &Value::Array(events.to_vec()))
        .await;
    let id = |i: usize| events[i]["Id"].as_str().unwrap().to_string();
    let want_a: BTreeSet<String> = [0, 1, 2, 6].map(id).into();
    let want_b: BTreeSet<String> = [1, 4, 5].map(id).into();
    let want_c: BTreeSet<String> = [3, 4].map(id).into();
    assert_eq!(ids(&ra.wait_for(4).await), want_a);
    assert_eq!(ids(&rb.wait_for(3).await), want_b);
    assert_eq!(ids(&rc.wait_for(2).await), want_c);
    // Nothing more comes: each delivery list holds exactly those.
    for (sub, want) in [(&a, &want_a), (&b, &want_b), (&c, &want_c)] {
        let got: Vec<Value> = app.deliveries(sub["id"].as_str().unwrap(), None).await;
        assert_eq!(got.len(), want.len());
    }

    // Replay: the same events again, no others.
    for (sub, rx, want) in [(&a, &ra, &want_a), (&b, &rb, &want_b), (&c, &rc, &want_c)] {
        let since = json!({"since": "20200101000000"});
        let r = app.act(sub, "replay", Some(&since)).await;
        assert_eq!(r.status(), 202);
        let requeued: Value = r.json().await.unwrap();
        assert_eq!(requeued["requeued"], want.len());
        let got = rx.wait_for(2 * want.len()).await;
        assert_eq!(ids(&got[want.len()..]), *want);
    }
    // And the filter is shown as given.
    let shown = json_ok(
        app.get(
            &format!(
                "/v1/tenants/default/subscriptions/{}",
                c["id"].as_str().unwrap()
            ),
            ADMIN_KEY,
        )
        .await,
    )
    .await;
    assert_eq!(
        shown["filter"]["fields"],
        json!({"SessionType": ["TelAgent"], "Username": ["kim"]})
    );
}
