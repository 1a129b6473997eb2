//! The event log: cursor pagination and filters.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::TestApp;
use crate::support::app::{ADMIN_KEY, agent_event, guid, json_ok, problem};

#[tokio::test]
async fn cursor_pagination_walks_the_whole_log_in_order() {
    let app = TestApp::spawn().await;
    let batch: Vec<Value> = (0..250)
        .map(|i| agent_event(&guid(), 1, &format!("u{i}")))
        .collect();
    app.publish_ok("default", &Value::Array(batch.clone()))
        .await;

    let mut seen = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let page = json_ok(
            app.get(
                &format!("/v1/tenants/default/events?limit=100{after}"),
                ADMIN_KEY,
            )
            .await,
        )
        .await;
        pages += 1;
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 100);
        seen.extend(data.iter().map(|i| i["event"]["Id"].clone()));
        match page["next_after"].as_str() {
            Some(cursor) => {
                assert_eq!(cursor, data.last().unwrap()["sequence"].to_string());
                after = format!("&after={cursor}");
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let ids: Vec<Value> = batch.iter().map(|e| e["Id"].clone()).collect();
    assert_eq!(seen, ids);
    // Exactly one full page: no next cursor.
    let page = json_ok(
        app.get("/v1/tenants/default/events?after=150&limit=100", ADMIN_KEY)
            .await,
    )
    .await;
    assert_eq!(page["data"].as_array().unwrap().len(), 100);
    assert_eq!(page["next_after"], Value::Null);
    // The default page is 100.
    let page = json_ok(app.get("/v1/tenants/default/events", ADMIN_KEY).await).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 100);
}

#[tokio::test]
async fn filters_select_by_category_code_username_and_date() {
    let app = TestApp::spawn().await;
    let mut events = vec![
        agent_event(&guid(), 1, "alice"),
        agent_event(&guid(), 3, "alice"),
        agent_event(&guid(), 2, "bob"),
        json!({"Id": guid(), "CreationDateUtc": "20261124000000", "Category": 3, "Code": 3}),
        json!({"Id": guid(), "CreationDateUtc": "20261122235959", "Category": 4, "Code": 9,
               "AdditionalFields": {"Username": "alice"}}),
    ];
    events[1]["CreationDateUtc"] = json!("20261123190000");
    app.publish_ok("default", &Value::Array(events.clone()))
        .await;
    let ids = |items: Vec<Value>| -> Vec<Value> {
        items.iter().map(|i| i["event"]["Id"].clone()).collect()
    };
    let want =
        |idx: &[usize]| -> Vec<Value> { idx.iter().map(|&i| events[i]["Id"].clone()).collect() };

    assert_eq!(
        ids(app.events_where("default", "category=1").await),
        want(&[0, 1, 2])
    );
    assert_eq!(
        ids(app.events_where("default", "code=3").await),
        want(&[1, 3])
    );
    assert_eq!(
        ids(app.events_where("default", "category=1&code=3").await),
        want(&[1])
    );
    assert_eq!(
        ids(app.events_where("default", "username=alice").await),
        want(&[0, 1, 4])
    );
    assert_eq!(
        ids(app.events_where("default", "since=20261123190000").await),
        want(&[1, 3])
    );
    assert_eq!(
        ids(app.events_where("default", "until=20261123184603").await),
        want(&[0, 2, 4])
    );
    assert_eq!(
        ids(app
            .events_where("default", "since=20261123000000&until=20261123235959")
            .await),
        want(&[0, 1, 2])
    );
    assert_eq!(
        ids(app.events_where("default", "username=nobody").await),
        want(&[])
    );

    for (query, field) in [
        ("since=2026", "since"),
        ("until=20261340000000", "until"),
        ("category=x", "category"),
        ("code=-1", "code"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("after=x", "after"),
        ("usernme=alice", "usernme"),
    ] {
        let r = app
            .get(&format!("/v1/tenants/default/events?{query}"), ADMIN_KEY)
            .await;
        let doc = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(doc["errors"][0]["field"], field, "{query}: {doc}");
    }
}
