//! The event log: cursor pagination and filters.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::TestApp;
use crate::support::app::{ADMIN_KEY, agent_event, guid, json_ok, problem};
use crate::support::db::{OldDb, TestData};

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

/// Log queries by `username` or `code`, and an agent's history, are served by an index: the
/// database reads only the matching entries, not the tenant's whole log (DESIGN §23). Checked
/// on the plan each backend makes for a log of 20,000 events of 200 agents and 40 codes, and on
/// the answers on both sides of where `events_by_username` reaches (the writer brings it up to
/// date about once a second; the log's tail after it is scanned).
#[tokio::test]
async fn username_and_code_queries_and_agent_histories_are_served_by_an_index() {
    use switchboard::event::{Catalog, parse_batch};
    use switchboard::store::{EventQuery, Store};

    let data = TestData::new().await;
    let store = Store::open(
        &data.database_url(),
        &data.dir.path().join("switchboard.db"),
    )
    .await
    .unwrap();
    let catalog = Catalog::builtin();
    let post = |from: usize, n: usize| {
        let events: Vec<Value> = (from..from + n)
            .map(|n| {
                let username = format!("agent-{}", n % 200);
                match n % 4 {
                    0 => agent_event(&guid(), 3, &username),
                    _ => json!({"Id": guid(), "CreationDateUtc": "20261123184603",
                                "Category": 2, "Code": 100 + n % 40,
                                "AdditionalFields": {"Username": username}}),
                }
            })
            .collect();
        parse_batch(&serde_json::to_vec(&events).unwrap(), &catalog).unwrap()
    };
    for batch in 0..40 {
        store
            .ingest("default", post(batch * 500, 500))
            .await
            .unwrap();
    }
    // PostgreSQL plans from statistics, which autovacuum gathers in time; here at once.
    // (SQLite plans without any: Switchboard never runs ANALYZE on it.)
    let mut db = OldDb::latest(&data).await;
    crate::support::receiver::eventually("events_by_username reaches the log's end", || async {
        let through = OldDb::latest(&data)
            .await
            .text("SELECT CAST(usernames_through AS TEXT) FROM tenants WHERE id = 'default'")
            .await;
        (through == "20000").then_some(())
    })
    .await;
    if db.is_postgres() {
        db.exec("ANALYZE").await;
    }
    let query = |username: Option<&str>, code: Option<u32>, limit: u32| EventQuery {
        after: 0,
        limit,
        category: None,
        code,
        username: username.map(str::to_string),
        since: None,
        until: None,
        through: None,
    };
    let by_index = |plan: &str| {
        plan.contains("byname") && !plan.contains("SCAN e") && !plan.contains("Seq Scan on events")
    };
    let by_username = store
        .list_events_plan("default", &query(Some("agent-7"), None, 100))
        .await
        .unwrap();
    assert!(by_index(&by_username), "{by_username}");
    let by_code = store
        .list_events_plan("default", &query(None, Some(107), 100))
        .await
        .unwrap();
    assert!(by_code.contains("events_code"), "{by_code}");
    let history = store
        .agent_history_plan("default", "agent-7")
        .await
        .unwrap();
    assert!(by_index(&history), "{history}");

    // 400 more, not yet in events_by_username when read at once: a page spanning both sides
    // is the whole of agent-7's events, in order.
    store.ingest("default", post(20_000, 400)).await.unwrap();
    let page = store
        .list_events("default", &query(Some("agent-7"), None, 1000))
        .await
        .unwrap();
    assert_eq!(page.len(), 102);
    assert!(page.windows(2).all(|w| w[0].sequence < w[1].sequence));
    assert!(page.iter().all(|e| e.body.contains("\"agent-7\"")));
    assert!(page.last().unwrap().sequence > 20_000);
    let codes = store
        .list_events("default", &query(Some("agent-7"), Some(107), 1000))
        .await
        .unwrap();
    assert_eq!(
        codes.len(),
        102,
        "agent-7's events all have code 107 (n % 40 = 7)"
    );
    let none = store
        .list_events("default", &query(Some("agent-7"), Some(3), 1000))
        .await
        .unwrap();
    assert!(none.is_empty(), "and none has code 3");
    db.close().await;
    store.close().await;
}

/// The writer's lookups by key on PostgreSQL — stored events by the `Id`s a request gave, the
/// bodies of claimed deliveries by sequence — probe an index for each key whatever the table's
/// statistics say. Here the log grew to 20,000 events with no ANALYZE since it was empty (as in
/// a new deployment's first minute): joined plainly, the planner hashed the tenant's whole log
/// for each batch of keys, and each turn cost more than the last.
#[tokio::test]
async fn the_writers_lookups_probe_an_index_whatever_the_statistics_say() {
    use switchboard::event::{Catalog, parse_batch};
    use switchboard::store::Store;

    let data = TestData::postgres().await;
    let store = Store::open(
        &data.database_url(),
        &data.dir.path().join("switchboard.db"),
    )
    .await
    .unwrap();
    let mut db = OldDb::latest(&data).await;
    // No statistics but those of the empty table, whenever autovacuum would come round.
    db.exec("ALTER TABLE events SET (autovacuum_enabled = false)")
        .await;
    let catalog = Catalog::builtin();
    for _ in 0..20 {
        let events: Vec<Value> = (0..1000)
            .map(|n| agent_event(&guid(), 3, &format!("agent-{}", n % 200)))
            .collect();
        let batch = parse_batch(&serde_json::to_vec(&events).unwrap(), &catalog).unwrap();
        store.ingest("default", batch).await.unwrap();
    }
    let plans = store.writer_lookup_plans("default").await.unwrap();
    for plan in plans.split("\n\n") {
        assert!(plan.contains("Index Scan using events_"), "{plan}");
        for scan in ["Hash Join", "Seq Scan", "Bitmap Heap Scan"] {
            assert!(!plan.contains(scan), "{plan}");
        }
    }
    store.close().await;
}
