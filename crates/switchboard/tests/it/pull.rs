//! Pull subscriptions (DESIGN §16): partitions by agent, messages after a committed cursor,
//! commit, seek, long poll, the `consume` scope, what retention keeps, the auto-disable of an
//! abandoned one, and that pull costs no delivery rows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use switchboard::lag;
use switchboard::subscription::health::Notice;
use switchboard::subscription::partition_of;

use crate::support::app::{ADMIN_KEY, TestApp, agent_event, guid, json_ok, problem};
use crate::support::stepper::Stepper;

const SUBS: &str = "/v1/tenants/default/subscriptions";

fn path(sub: &Value, action: &str) -> String {
    format!("{SUBS}/{}/{action}", sub["id"].as_str().unwrap())
}

/// `messages` of `partition` with `query` added, as `key`.
async fn messages(app: &TestApp, sub: &Value, key: &str, query: &str) -> Value {
    json_ok(
        app.get(&format!("{}?{query}", path(sub, "messages")), key)
            .await,
    )
    .await
}

async fn commit(app: &TestApp, sub: &Value, key: &str, partition: u64, cursor: i64) -> StatusCode {
    let body = json!({"partition": partition, "cursor": cursor});
    let r = app
        .call(Method::POST, &path(sub, "commit"), key, Some(&body))
        .await;
    r.status()
}

fn sequences(page: &Value) -> Vec<i64> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["sequence"].as_i64().unwrap())
        .collect()
}

/// The tenant's last sequence, as its log shows it.
async fn head(app: &TestApp) -> i64 {
    let all = app.all_events("default").await;
    all.last().map_or(0, |e| e["sequence"].as_i64().unwrap())
}

#[tokio::test]
async fn three_consumers_read_every_matching_event_once_each_agent_in_order_in_one_partition() {
    let app = TestApp::spawn().await;
    let sub = app
        .subscribe(json!({"mode": "pull", "partitions": 3,
                          "filter": {"events": [{"category": 1, "codes": [1, 3]}]}}))
        .await;
    assert_eq!(sub["mode"], "pull");
    assert_eq!(sub["partitions"], 3);
    assert!(
        sub.get("url").is_none() && sub.get("secret").is_none(),
        "{sub}"
    );
    // 50 agents, interleaved: sign-in (1), status (3), sign-out (2, not matched), status (3).
    let mut matching = HashSet::new();
    for round in [1, 3, 2, 3] {
        let batch: Vec<Value> = (0..50)
            .map(|a| agent_event(&guid(), round, &format!("agent{a:02}")))
            .collect();
        app.publish_ok("default", &Value::Array(batch.clone()))
            .await;
        if round != 2 {
            matching.extend(batch.iter().map(|e| e["Id"].as_str().unwrap().to_string()));
        }
    }
    let consume = app.create_key("default", &["consume"]).await;
    let last = head(&app).await;
    // Three consumers, each reading its partition to the end, committing as it goes.
    let mut seen: HashMap<String, (u64, i64)> = HashMap::new();
    let mut by_agent: BTreeMap<String, Vec<(u64, i64)>> = BTreeMap::new();
    for p in 0..3u64 {
        loop {
            let page = messages(&app, &sub, &consume, &format!("partition={p}&limit=17")).await;
            assert_eq!(page["partition"], p);
            for m in page["data"].as_array().unwrap() {
                let event = &m["event"];
                let id = event["Id"].as_str().unwrap().to_string();
                let seq = m["sequence"].as_i64().unwrap();
                assert!(
                    seen.insert(id.clone(), (p, seq)).is_none(),
                    "{id} read twice"
                );
                let agent = event["AdditionalFields"]["Username"].as_str().unwrap();
                by_agent.entry(agent.into()).or_default().push((p, seq));
            }
            let next = page["next_cursor"].as_i64().unwrap();
            assert_eq!(commit(&app, &sub, &consume, p, next).await, StatusCode::OK);
            if page["data"].as_array().unwrap().is_empty() {
                assert_eq!(next, last, "an empty page has examined up to the head");
                assert_eq!(page["lag"]["pending"], 0);
                break;
            }
        }
    }
    assert_eq!(
        seen.keys().cloned().collect::<HashSet<_>>(),
        matching,
        "every matching event exactly once"
    );
    assert_eq!(by_agent.len(), 50);
    let mut used = HashSet::new();
    for (agent, reads) in &by_agent {
        assert_eq!(reads.len(), 3, "{agent}");
        let p = reads[0].0;
        assert!(reads.iter().all(|r| r.0 == p), "{agent} in one partition");
        assert_eq!(
            u64::from(partition_of(Some(agent), 3)),
            p,
            "FNV-1a of the key"
        );
        assert!(
            reads.windows(2).all(|w| w[0].1 < w[1].1),
            "{agent} in order"
        );
        used.insert(p);
    }
    assert_eq!(used.len(), 3, "50 agents spread over the 3 partitions");
    let r = app.get(&path(&sub, "deliveries"), ADMIN_KEY).await;
    problem(r, StatusCode::CONFLICT).await;
}

#[tokio::test]
async fn what_is_read_but_not_committed_is_read_again_after_a_restart() {
    let app = TestApp::spawn().await;
    let sub = app.subscribe(json!({"mode": "pull"})).await;
    let batch: Vec<Value> = (0..30)
        .map(|i| agent_event(&guid(), 1, &format!("a{i}")))
        .collect();
    app.publish_ok("default", &Value::Array(batch)).await;
    let first = messages(&app, &sub, ADMIN_KEY, "limit=10").await;
    assert_eq!(sequences(&first).len(), 10);
    assert_eq!(first["lag"]["pending"], 30);
    assert!(first["lag"]["oldest_pending_age_ms"].as_i64().unwrap() >= 0);
    // Read on with `after` without committing, then start over: the same ten again.
    let next = first["next_cursor"].as_i64().unwrap();
    let on = messages(&app, &sub, ADMIN_KEY, &format!("limit=10&after={next}")).await;
    assert_eq!(sequences(&on)[0], next + 1);
    let data = app.stop().await;
    let app = TestApp::spawn_in(data).await;
    let again = messages(&app, &sub, ADMIN_KEY, "limit=10").await;
    assert_eq!(
        sequences(&again),
        sequences(&first),
        "uncommitted: read again"
    );
    assert_eq!(commit(&app, &sub, ADMIN_KEY, 0, next).await, StatusCode::OK);
    let after = messages(&app, &sub, ADMIN_KEY, "limit=10").await;
    assert_eq!(sequences(&after)[0], next + 1);
    assert_eq!(after["lag"]["pending"], 20);
    // The subscription's own lag is the sum over partitions.
    let shown = json_ok(
        app.get(
            &format!("{SUBS}/{}", sub["id"].as_str().unwrap()),
            ADMIN_KEY,
        )
        .await,
    )
    .await;
    assert_eq!(shown["lag"]["pending"], 20);
}

#[tokio::test]
async fn seek_lands_on_the_first_event_at_or_after_the_point() {
    let app = TestApp::spawn().await;
    let sub = app
        .subscribe(json!({"mode": "pull", "partitions": 2, "start": "earliest"}))
        .await;
    let batch: Vec<Value> = (0..20)
        .map(|i| agent_event(&guid(), 1, &format!("a{i}")))
        .collect();
    app.publish_ok("default", &Value::Array(batch)).await;
    let last = head(&app).await;
    for p in 0..2 {
        let page = messages(&app, &sub, ADMIN_KEY, &format!("partition={p}&limit=1000")).await;
        commit(
            &app,
            &sub,
            ADMIN_KEY,
            p,
            page["next_cursor"].as_i64().unwrap(),
        )
        .await;
    }
    // By sequence, every partition: each reads on from the first of its own at or after it.
    let seek = |body: Value| {
        let app = &app;
        let sub = &sub;
        async move {
            app.call(Method::POST, &path(sub, "seek"), ADMIN_KEY, Some(&body))
                .await
        }
    };
    let target = last - 9;
    let moved = json_ok(seek(json!({"to_sequence": target})).await).await;
    assert_eq!(
        moved["cursors"],
        json!([{"partition": 0, "cursor": target - 1}, {"partition": 1, "cursor": target - 1}])
    );
    let mut read = Vec::new();
    for p in 0..2 {
        read.extend(sequences(
            &messages(&app, &sub, ADMIN_KEY, &format!("partition={p}&limit=1000")).await,
        ));
    }
    read.sort();
    assert_eq!(read, (target..=last).collect::<Vec<_>>());
    // One partition only, by time: before every event: from the first; after: nothing left.
    let moved = json_ok(seek(json!({"partition": 1, "to_time": "20000101000000"})).await).await;
    assert_eq!(moved["cursors"], json!([{"partition": 1, "cursor": 0}]));
    let all = messages(&app, &sub, ADMIN_KEY, "partition=1&limit=1000").await;
    let all_p1 = sequences(&all);
    assert!(!all_p1.is_empty() && all_p1[0] <= target);
    let moved = json_ok(seek(json!({"to_time": "29991231235959"})).await).await;
    assert_eq!(moved["cursors"][0]["cursor"], last);
    // Exactly one of the two.
    for body in [
        json!({}),
        json!({"to_sequence": 1, "to_time": "20000101000000"}),
    ] {
        let doc = problem(seek(body).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(doc["errors"][0]["field"], "to_sequence");
    }
    let doc = problem(
        seek(json!({"partition": 2, "to_sequence": 1})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(doc["errors"][0]["field"], "partition");
}

#[tokio::test]
async fn the_first_event_received_at_or_after_a_time_is_found_by_the_stepped_clock() {
    let t = Stepper::new().await;
    let early = t
        .publish(&json!([
            agent_event(&guid(), 1, "a"),
            agent_event(&guid(), 1, "b")
        ]))
        .await;
    let split = t.clock.now_ms() + 5_000;
    t.advance(Duration::from_secs(10));
    let late = t.publish(&json!([agent_event(&guid(), 1, "c")])).await;
    let (early_last, late_first) = (early.last().unwrap().sequence, late[0].sequence);
    assert!(late_first > early_last);
    assert_eq!(
        t.store.first_received_at("default", split).await.unwrap(),
        Some(late_first)
    );
    assert_eq!(
        t.store.first_received_at("default", 0).await.unwrap(),
        Some(early[0].sequence)
    );
    assert_eq!(
        t.store
            .first_received_at("default", split + 3_600_000)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_long_poll_returns_when_a_matching_event_is_committed_not_before() {
    let app = TestApp::spawn().await;
    let sub = app
        .subscribe(json!({"mode": "pull", "filter": {"usernames": ["wanted"]}}))
        .await;
    let poll = {
        let client = app.client.clone();
        let url = app.url(&format!("{}?wait_secs=30", path(&sub, "messages")));
        tokio::spawn(async move {
            client
                .get(url)
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    // An event the filter does not match does not end the wait; the matching one does.
    app.publish_ok("default", &agent_event(&guid(), 1, "other"))
        .await;
    let wanted = app
        .publish_ok("default", &agent_event(&guid(), 1, "wanted"))
        .await;
    let page = tokio::time::timeout(Duration::from_secs(25), poll)
        .await
        .expect("the poll answered before its wait ended")
        .unwrap();
    let seq = wanted[0]["sequence"].as_i64().unwrap();
    assert_eq!(sequences(&page), [seq], "{page}");
    assert_eq!(page["next_cursor"], seq);
    // Nothing more: a short wait answers empty, its cursor at the head.
    let empty = messages(&app, &sub, ADMIN_KEY, &format!("wait_secs=1&after={seq}")).await;
    assert_eq!(sequences(&empty), Vec::<i64>::new());
    assert_eq!(empty["next_cursor"], seq);
}

#[tokio::test]
async fn commits_go_forward_up_to_the_head_and_scopes_are_enforced() {
    let app = TestApp::spawn().await;
    app.create_tenant("other").await;
    let sub = app.subscribe(json!({"mode": "pull"})).await;
    let push = app.subscribe(json!({"url": "http://127.0.0.1:9/"})).await;
    app.publish_ok(
        "default",
        &json!([agent_event(&guid(), 1, "a"), agent_event(&guid(), 1, "b")]),
    )
    .await;
    let last = head(&app).await;
    let consume = app.create_key("default", &["consume"]).await;
    let read = app.create_key("default", &["read"]).await;
    let theirs = app.create_key("other", &["consume"]).await;

    let r = app
        .call(
            Method::POST,
            &path(&sub, "commit"),
            &consume,
            Some(&json!({"cursor": last + 1})),
        )
        .await;
    let doc = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(doc["errors"][0]["field"], "cursor");
    assert_eq!(commit(&app, &sub, &consume, 0, last).await, StatusCode::OK);
    assert_eq!(
        commit(&app, &sub, &consume, 0, last).await,
        StatusCode::OK,
        "the same again"
    );
    let r = app
        .call(
            Method::POST,
            &path(&sub, "commit"),
            &consume,
            Some(&json!({"cursor": last - 1})),
        )
        .await;
    let doc = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(doc["errors"][0]["field"], "cursor");
    assert_eq!(
        commit(&app, &sub, &consume, 1, last).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    problem(
        app.get(&path(&sub, "messages"), &read).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    problem(
        app.get(&path(&sub, "messages"), &theirs).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let r = app
        .call(
            Method::POST,
            &path(&sub, "seek"),
            &consume,
            Some(&json!({"to_sequence": 1})),
        )
        .await;
    problem(r, StatusCode::FORBIDDEN).await;
    for q in [
        "limit=0",
        "limit=1001",
        "wait_secs=31",
        "partition=1",
        "after=-1",
        "nope=1",
    ] {
        let r = app
            .get(&format!("{}?{q}", path(&sub, "messages")), &consume)
            .await;
        let doc = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        let field = q.split('=').next().unwrap();
        assert_eq!(doc["errors"][0]["field"], field, "{q}");
    }

    // Push-only actions on a pull subscription, and messages on a push one: 409.
    problem(
        app.get(&path(&push, "messages"), ADMIN_KEY).await,
        StatusCode::CONFLICT,
    )
    .await;
    for action in ["test", "secret/rotate"] {
        problem(app.act(&sub, action, None).await, StatusCode::CONFLICT).await;
    }
    let replay = json!({"since": "20000101000000"});
    problem(
        app.act(&sub, "replay", Some(&replay)).await,
        StatusCode::CONFLICT,
    )
    .await;
    let job = json!({"kind": "cancel_pending", "subscription_id": sub["id"]});
    let r = app
        .call(
            Method::POST,
            "/v1/tenants/default/jobs",
            ADMIN_KEY,
            Some(&job),
        )
        .await;
    problem(r, StatusCode::CONFLICT).await;
}

#[tokio::test]
async fn pull_bodies_are_checked_and_fixed_fields_stay_fixed() {
    let app = TestApp::spawn().await;
    let create = |body: Value| {
        let app = &app;
        async move { app.call(Method::POST, SUBS, ADMIN_KEY, Some(&body)).await }
    };
    let fields = |doc: Value| -> Vec<String> {
        doc["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap().to_string())
            .collect()
    };
    let cases = [
        (
            json!({"mode": "pull", "url": "http://127.0.0.1:9/"}),
            vec!["url"],
        ),
        (
            json!({"mode": "pull", "ordering": "per_agent", "secret": "x"}),
            vec!["secret", "ordering"],
        ),
        (
            json!({"mode": "pull", "partitions": 65}),
            vec!["partitions"],
        ),
        (json!({"mode": "pull", "partitions": 0}), vec!["partitions"]),
        (
            json!({"mode": "pull", "filter": {"events": [{"category": 0}]}}),
            vec!["filter.events[0].category"],
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "partitions": 2}),
            vec!["partitions"],
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "start": "earliest"}),
            vec!["start"],
        ),
        (json!({"mode": "push"}), vec!["url"]),
    ];
    for (body, expect) in cases {
        let doc = problem(create(body.clone()).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields(doc), expect, "{body}");
    }
    let sub = app
        .subscribe(json!({"mode": "pull", "partitions": 4}))
        .await;
    let id = sub["id"].as_str().unwrap();
    let patch = |body: Value| {
        let app = &app;
        async move {
            app.call(
                Method::PATCH,
                &format!("{SUBS}/{id}"),
                ADMIN_KEY,
                Some(&body),
            )
            .await
        }
    };
    for (body, field) in [
        (json!({"partitions": 2}), "partitions"),
        (json!({"mode": "push"}), "mode"),
        (json!({"start": "earliest"}), "start"),
        (json!({"headers": {"X-A": "b"}}), "headers"),
    ] {
        let doc = problem(patch(body.clone()).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields(doc), [field], "{body}");
    }
    let changed = json_ok(patch(json!({"description": "wfm", "partitions": 4})).await).await;
    assert_eq!(
        (
            changed["description"].as_str(),
            changed["partitions"].as_u64()
        ),
        (Some("wfm"), Some(4))
    );
    // A push subscription answers as before.
    let push = app.subscribe(json!({"url": "http://127.0.0.1:9/"})).await;
    assert_eq!(push["mode"], "push");
    assert!(push.get("partitions").is_none());
    assert!(push["rate_limit_per_sec"].is_null() && push["ordering"] == "none");
}

#[tokio::test]
async fn retention_keeps_what_an_enabled_cursor_has_not_passed() {
    let t = Stepper::new().await;
    let sub = t.subscribe(json!({"mode": "pull", "partitions": 2})).await;
    let batch: Vec<Value> = (0..10)
        .map(|i| agent_event(&guid(), 1, &format!("a{i}")))
        .collect();
    let accepted = t.publish(&Value::Array(batch)).await;
    let seqs: Vec<i64> = accepted.iter().map(|a| a.sequence).collect();
    t.store
        .commit_cursor(&sub.id, 0, seqs[9], t.clock.now_ms())
        .await
        .unwrap();
    t.store
        .commit_cursor(&sub.id, 1, seqs[3], t.clock.now_ms())
        .await
        .unwrap();
    t.advance(Duration::from_secs(3600));
    let purged = t.store.purge(t.clock.now_ms()).await.unwrap();
    assert_eq!(purged.events, 4, "only what the lowest cursor passed");
    let mut rec = t.subscription(&sub).await;
    rec.spec.enabled = false;
    rec.disabled_reason = Some("test".into());
    t.store.update_subscription(&rec).await.unwrap();
    let purged = t.store.purge(t.clock.now_ms()).await.unwrap();
    assert_eq!(
        purged.events, 6,
        "a disabled pull subscription holds nothing"
    );
}

#[tokio::test]
async fn an_abandoned_pull_subscription_is_disabled_once_and_its_monitors_told() {
    let t = Stepper::new().await;
    let monitor = t
        .subscribe(json!({"url": "http://127.0.0.1:9/", "filter": {"events": [{"category": 0}]}}))
        .await;
    let quiet = t.subscribe(json!({"mode": "pull"})).await;
    let busy = t.subscribe(json!({"mode": "pull"})).await;
    let after = 3_600_000;
    let now = quiet.created_at.max(busy.created_at);
    let first = quiet.created_at.min(busy.created_at);
    assert!(
        lag::abandoned(&t.store, first + after, after)
            .await
            .unwrap()
            .is_empty()
    );
    t.store.touch_pull(&busy.id, now + 120_000).await.unwrap();
    let gone = lag::abandoned(&t.store, now + after + 1, after)
        .await
        .unwrap();
    assert_eq!(gone, std::slice::from_ref(&quiet.id));
    assert!(
        lag::abandoned(&t.store, now + after + 2, after)
            .await
            .unwrap()
            .is_empty()
    );
    let rec = t.subscription(&quiet).await;
    assert!(!rec.spec.enabled);
    assert!(
        rec.disabled_reason
            .unwrap()
            .contains("auto_disable_after_secs")
    );
    let told = t.deliveries(&monitor).await;
    assert_eq!(told.len(), 1, "one SubscriptionDisabled");
    // No delivery rows for pull subscriptions, ever: only the monitor's System event.
    t.publish(&json!([agent_event(&guid(), 1, "a")])).await;
    let mut db = t.db().await;
    assert_eq!(
        db.text("SELECT CAST(COUNT(*) AS TEXT) FROM deliveries")
            .await,
        "1"
    );
    db.close().await;
}

#[tokio::test]
async fn pull_lag_counts_matching_events_after_the_cursors_and_its_budget_is_told() {
    let t = Stepper::new().await;
    let _monitor = t
        .subscribe(json!({"url": "http://127.0.0.1:9/", "filter": {"events": [{"category": 0}]}}))
        .await;
    let sub = t
        .subscribe(
            json!({"mode": "pull", "partitions": 2, "lag_budget_secs": 60,
                          "filter": {"events": [{"category": 1, "codes": [1]}]}}),
        )
        .await;
    let start = t.clock.now_ms();
    let mut batch: Vec<Value> = (0..10)
        .map(|i| agent_event(&guid(), 1, &format!("a{i}")))
        .collect();
    batch.extend((0..5).map(|i| agent_event(&guid(), 2, &format!("a{i}"))));
    t.publish(&Value::Array(batch)).await;
    t.advance(Duration::from_secs(61));
    let lags = t
        .store
        .lags(&[sub.id.as_str()], t.clock.now_ms())
        .await
        .unwrap();
    assert_eq!(lags[&sub.id].pending, 10, "sign-outs do not match");
    assert_eq!(lags[&sub.id].oldest_since, Some(start));
    let sent = lag::check(&t.store, t.clock.now_ms()).await.unwrap();
    assert!(
        matches!(sent.as_slice(), [(id, Notice::Lagging { pending: 10, .. })] if *id == sub.id),
        "{sent:?}"
    );
    let head = t.store.last_sequence("default").await.unwrap();
    for p in 0..2 {
        t.store
            .commit_cursor(&sub.id, p, head, t.clock.now_ms())
            .await
            .unwrap();
    }
    let lags = t
        .store
        .lags(&[sub.id.as_str()], t.clock.now_ms())
        .await
        .unwrap();
    assert!(!lags.contains_key(&sub.id), "caught up");
    let sent = lag::check(&t.store, t.clock.now_ms()).await.unwrap();
    assert!(
        matches!(sent.as_slice(), [(_, Notice::CaughtUp { .. })]),
        "{sent:?}"
    );
}

#[tokio::test]
async fn a_lag_counted_by_the_database_agrees_with_one_counted_row_by_row() {
    // One partition and a filter on columns only: counted by the database. The same filter
    // with a username list (or two partitions): counted row by row. Both must agree, and so
    // must `max_age_secs`, which leaves out what is too old.
    let t = Stepper::new().await;
    let specs = [
        json!({"mode": "pull"}),
        json!({"mode": "pull", "filter": {"events": [{"category": 1, "codes": [1, 2]}, {"category": 4}]}}),
        json!({"mode": "pull", "filter": {"events": [{"category": 1, "codes": [1, 2]}]}, "max_age_secs": 60}),
    ];
    let names: Vec<String> = (0..6).map(|i| format!("a{i}")).collect();
    let mut subs = Vec::new();
    for spec in &specs {
        let by_db = t.subscribe(spec.clone()).await;
        let mut by_rows = spec.clone();
        by_rows["filter"]["usernames"] = json!(names);
        let by_rows = t.subscribe(by_rows).await;
        let mut split = spec.clone();
        split["partitions"] = json!(2);
        let split = t.subscribe(split).await;
        subs.push([by_db, by_rows, split]);
    }
    let old = t.clock.now_ms();
    let batch: Vec<Value> = (0..6)
        .map(|i| agent_event(&guid(), 1, &format!("a{i}")))
        .collect();
    t.publish(&Value::Array(batch)).await;
    t.advance(Duration::from_secs(120));
    let recent = t.clock.now_ms();
    let batch: Vec<Value> = (0..6)
        .map(|i| agent_event(&guid(), 2, &format!("a{i}")))
        .chain((0..3).map(|i| agent_event(&guid(), 3, &format!("a{i}"))))
        .collect();
    t.publish(&Value::Array(batch)).await;
    let expected = [(15, old), (12, old), (6, recent)];
    for (three, (pending, since)) in subs.iter().zip(expected) {
        let ids: Vec<&str> = three.iter().map(|s| s.id.as_str()).collect();
        let lags = t.store.lags(&ids, t.clock.now_ms()).await.unwrap();
        for sub in three {
            assert_eq!(lags[&sub.id].pending, pending, "{:?}", sub.spec);
            assert_eq!(lags[&sub.id].oldest_since, Some(since), "{:?}", sub.spec);
        }
    }
}

#[tokio::test]
async fn a_consumers_calls_are_noted_at_most_once_a_minute() {
    let t = Stepper::new().await;
    let sub = t.subscribe(json!({"mode": "pull"})).await;
    let pulled_at = || async {
        let mut db = t.db().await;
        let at = db
            .text(&format!(
                "SELECT CAST(pulled_at AS TEXT) FROM subscriptions WHERE id = '{}'",
                sub.id
            ))
            .await;
        db.close().await;
        at
    };
    let now = sub.created_at;
    t.store.touch_pull(&sub.id, now).await.unwrap();
    assert_eq!(pulled_at().await, now.to_string());
    t.store.touch_pull(&sub.id, now + 59_000).await.unwrap();
    assert_eq!(pulled_at().await, now.to_string(), "within the minute");
    t.store.touch_pull(&sub.id, now + 61_000).await.unwrap();
    assert_eq!(pulled_at().await, (now + 61_000).to_string());
}
