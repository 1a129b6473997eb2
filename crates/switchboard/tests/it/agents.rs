//! The live agents projection (DESIGN §9): a scripted day of three agents, checked against the
//! agent objects, `as_of` states and timelines written out by hand; kept across a restart, on a
//! second PostgreSQL node, through retention, and filled from an older database's log.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::TestApp;
use crate::support::app::{ADMIN_KEY, guid, json_ok, problem};
use crate::support::db::{OldDb, TestData};

/// An Agent event of `username` at `at` with extra parameters.
fn ev(username: &str, code: u32, at: &str, extra: Value) -> Value {
    let mut fields = json!({
        "SessionId": format!("S-{username}"), "SessionType": "CCA",
        "Username": username, "PhoneNo": "+15551230001"
    });
    fields
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({"Id": guid(), "CreationDateUtc": at, "Category": 1, "Code": code,
           "AdditionalFields": fields})
}

fn status(username: &str, at: &str, activity: i64, availability: i64, name: &str) -> Value {
    ev(
        username,
        3,
        at,
        json!({"ActivityCode": activity, "AvailabilityCode": availability, "ActivityName": name}),
    )
}

/// The day, in the order posted: sequences 1 to 16.
fn day() -> Vec<Value> {
    vec![
        ev("alice", 1, "20261123080000", json!({})),  // 1
        ev("bob", 1, "20261123080000", json!({})),    // 2
        ev("carol", 1, "20261123080000", json!({})),  // 3
        status("bob", "20261123080030", 16, 1, ""),   // 4
        status("alice", "20261123080100", 16, 1, ""), // 5
        status("carol", "20261123080100", 16, 1, ""), // 6
        ev(
            "alice",
            4,
            "20261123080200",
            json!({"WorkItemId": "W-1", "WorkItemType": "Voice", "Queue": "Sales"}),
        ), // 7
        ev(
            "alice",
            5,
            "20261123080210",
            json!({"WorkItemId": "W-1", "WorkItemType": "Voice"}),
        ), // 8
        ev(
            "bob",
            4,
            "20261123080300",
            json!({"WorkItemId": "W-2", "WorkItemType": "Chat"}),
        ), // 9
        ev(
            "bob",
            6,
            "20261123080310",
            json!({"WorkItemId": "W-2", "WorkItemType": "Chat", "Reason": "busy"}),
        ), // 10
        ev(
            "alice",
            8,
            "20261123080500",
            json!({"WorkItemId": "W-1", "WorkItemType": "Voice", "DurationSecs": 170}),
        ), // 11
        status("alice", "20261123080600", 36, 2, "Team meeting"), // 12
        status("carol", "20261123080900", 0, 0, ""),  // 13
        status("bob", "20261123081000", 34, 0, ""),   // 14
        ev("bob", 2, "20261123090000", json!({"ExitCode": 3})), // 15
        // Late: older than carol's state, so it changes nothing.
        status("carol", "20261123080800", 34, 0, ""), // 16
    ]
}

fn expected_agents() -> Value {
    json!([
        {"username": "alice", "signed_in": true, "session_id": "S-alice", "session_type": "CCA",
         "phone_no": "+15551230001", "activity_code": 36, "availability_code": 2,
         "activity_name": "Team meeting", "since": "20261123080600", "work_item": null,
         "signed_in_at": "20261123080000", "signed_out_at": null, "exit_code": null,
         "last_sequence": 12, "last_event_at": "20261123080600"},
        {"username": "bob", "signed_in": false, "session_id": "S-bob", "session_type": "CCA",
         "phone_no": "+15551230001", "activity_code": 34, "availability_code": 0,
         "activity_name": "On Break", "since": "20261123081000", "work_item": null,
         "signed_in_at": "20261123080000", "signed_out_at": "20261123090000", "exit_code": 3,
         "last_sequence": 15, "last_event_at": "20261123090000"},
        {"username": "carol", "signed_in": true, "session_id": "S-carol", "session_type": "CCA",
         "phone_no": "+15551230001", "activity_code": 0, "availability_code": 0,
         "activity_name": "Not Ready", "since": "20261123080900", "work_item": null,
         "signed_in_at": "20261123080000", "signed_out_at": null, "exit_code": null,
         "last_sequence": 13, "last_event_at": "20261123080900"},
    ])
}

async fn post_day(app: &TestApp) {
    let events = day();
    app.publish_ok("default", &Value::Array(events[..10].to_vec()))
        .await;
    app.publish_ok("default", &Value::Array(events[10..].to_vec()))
        .await;
}

async fn agents(app: &TestApp, query: &str) -> Value {
    json_ok(
        app.get(&format!("/v1/tenants/default/agents{query}"), ADMIN_KEY)
            .await,
    )
    .await
}

/// Every check of the day's outcome that reads the projection.
async fn check_current(app: &TestApp) {
    let all = agents(app, "").await;
    assert_eq!(all["data"], expected_agents());
    assert_eq!(all["as_of_sequence"], 16);
    assert_eq!(all["next_after"], Value::Null);
    let one = json_ok(app.get("/v1/tenants/default/agents/bob", ADMIN_KEY).await).await;
    assert_eq!(one, expected_agents()[1]);
}

fn usernames(page: &Value) -> Vec<&str> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["username"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_scripted_day_gives_the_expected_agents_as_of_states_and_timelines() {
    let app = TestApp::spawn().await;
    post_day(&app).await;
    check_current(&app).await;

    // Filters and pages.
    assert_eq!(
        usernames(&agents(&app, "?signed_in=true").await),
        ["alice", "carol"]
    );
    assert_eq!(usernames(&agents(&app, "?signed_in=false").await), ["bob"]);
    assert_eq!(
        usernames(&agents(&app, "?availability_code=0").await),
        ["bob", "carol"]
    );
    let first = agents(&app, "?limit=2").await;
    assert_eq!(usernames(&first), ["alice", "bob"]);
    assert_eq!(first["next_after"], "bob");
    assert_eq!(
        usernames(&agents(&app, "?limit=2&after=bob").await),
        ["carol"]
    );
    let bad = problem(
        app.get("/v1/tenants/default/agents?signed_in=maybe", ADMIN_KEY)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(bad["errors"][0]["field"], "signed_in");

    // As of a sequence, rebuilt from the log.
    let as_of = |user: &str, n: i64| {
        let app = &app;
        let path = format!("/v1/tenants/default/agents/{user}?as_of={n}");
        async move { app.get(&path, ADMIN_KEY).await }
    };
    let alice = json_ok(as_of("alice", 8).await).await;
    assert_eq!(
        alice["work_item"],
        json!({"id": "W-1", "type": "Voice", "state": "accepted", "since": "20261123080210"})
    );
    assert_eq!(
        (
            alice["activity_code"].clone(),
            alice["last_sequence"].clone()
        ),
        (json!(16), json!(8))
    );
    let alice = json_ok(as_of("alice", 7).await).await;
    assert_eq!(alice["work_item"]["state"], "receiving");
    let bob = json_ok(as_of("bob", 9).await).await;
    assert_eq!(
        bob["work_item"],
        json!({"id": "W-2", "type": "Chat", "state": "receiving", "since": "20261123080300"})
    );
    let bob = json_ok(as_of("bob", 10).await).await;
    assert_eq!(bob["work_item"], Value::Null);
    // The late event changed nothing: carol as of 16 is carol as of 13.
    assert_eq!(
        json_ok(as_of("carol", 16).await).await,
        json_ok(as_of("carol", 13).await).await
    );
    assert_eq!(json_ok(as_of("bob", 100).await).await, expected_agents()[1]);
    // Not known yet at sequence 1; never known at all.
    problem(as_of("carol", 1).await, StatusCode::NOT_FOUND).await;
    problem(
        app.get("/v1/tenants/default/agents/nobody", ADMIN_KEY)
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let bad = problem(as_of("bob", -1).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(bad["errors"][0]["field"], "as_of");

    // Bob's timeline: his whole day, then a window.
    let timeline = |query: &str| {
        let app = &app;
        let path = format!("/v1/tenants/default/agents/bob/timeline{query}");
        async move { app.get(&path, ADMIN_KEY).await }
    };
    let t = json_ok(timeline("?since=20261123000000").await).await;
    let interval =
        |from: &str, to: Value, signed_in: bool, activity: Value, name: Value, wi: Value| {
            let availability = match activity.as_i64() {
                Some(16) => json!(1),
                Some(_) => json!(0),
                None => Value::Null,
            };
            json!({"from": from, "to": to, "signed_in": signed_in, "activity_code": activity,
               "availability_code": availability, "activity_name": name, "work_item": wi})
        };
    let chat =
        json!({"id": "W-2", "type": "Chat", "state": "receiving", "since": "20261123080300"});
    assert_eq!(
        t["data"],
        json!([
            interval(
                "20261123080000",
                json!("20261123080030"),
                true,
                Value::Null,
                Value::Null,
                Value::Null
            ),
            interval(
                "20261123080030",
                json!("20261123080300"),
                true,
                json!(16),
                json!("Available"),
                Value::Null
            ),
            interval(
                "20261123080300",
                json!("20261123080310"),
                true,
                json!(16),
                json!("Available"),
                chat.clone()
            ),
            interval(
                "20261123080310",
                json!("20261123081000"),
                true,
                json!(16),
                json!("Available"),
                Value::Null
            ),
            interval(
                "20261123081000",
                json!("20261123090000"),
                true,
                json!(34),
                json!("On Break"),
                Value::Null
            ),
            interval(
                "20261123090000",
                Value::Null,
                false,
                json!(34),
                json!("On Break"),
                Value::Null
            ),
        ])
    );
    let t = json_ok(timeline("?since=20261123080305&until=20261123083000").await).await;
    assert_eq!(
        t["data"],
        json!([
            interval(
                "20261123080305",
                json!("20261123080310"),
                true,
                json!(16),
                json!("Available"),
                chat
            ),
            interval(
                "20261123080310",
                json!("20261123081000"),
                true,
                json!(16),
                json!("Available"),
                Value::Null
            ),
            interval(
                "20261123081000",
                json!("20261123083000"),
                true,
                json!(34),
                json!("On Break"),
                Value::Null
            ),
        ])
    );
    let bad = problem(timeline("").await, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(bad["errors"][0]["field"], "since");
    let bad = problem(
        timeline("?since=20261123080000&until=20261123070000").await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(bad["errors"][0]["field"], "until");

    // A key of another tenant sees none of it.
    app.create_tenant("other").await;
    let key = app.create_key("other", &["read"]).await;
    problem(
        app.get("/v1/tenants/default/agents", &key).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let theirs = json_ok(app.get("/v1/tenants/other/agents", &key).await).await;
    assert_eq!(theirs["data"], json!([]));

    // The same after a restart.
    let data = app.stop().await;
    let app = TestApp::spawn_in(data).await;
    check_current(&app).await;
}

/// Every node of a cluster reads the same projection, whichever node took the events.
#[tokio::test]
async fn a_second_postgresql_node_sees_the_same_agents() {
    let app = TestApp::spawn_in(TestData::postgres().await).await;
    let second = app.second_node().await;
    let events = day();
    app.publish_ok("default", &Value::Array(events[..10].to_vec()))
        .await;
    second
        .publish_ok("default", &Value::Array(events[10..].to_vec()))
        .await;
    check_current(&app).await;
    check_current(&second).await;
    second.stop().await;
}

/// A database from before the projection: the log is folded in when the store opens.
#[tokio::test]
async fn an_older_database_gets_its_agents_from_its_log() {
    let data = TestData::new().await;
    // The schema before the agents migration (SQLite 6, PostgreSQL 5), with the day's events.
    let mut old = OldDb::open(&data, 6, 5).await;
    let now = switchboard::clock::now_millis();
    for (i, e) in day().iter().enumerate() {
        let body = e.to_string().replace('\'', "''");
        let sql = format!(
            "INSERT INTO events (tenant_id, sequence, id, created, category, code, username, \
             received_at, body) VALUES ('default', {seq}, '{id}', {created}, 1, {code}, \
             '{user}', {now}, '{body}')",
            seq = i + 1,
            id = e["Id"].as_str().unwrap(),
            created = e["CreationDateUtc"].as_str().unwrap(),
            code = e["Code"],
            user = e["AdditionalFields"]["Username"].as_str().unwrap(),
        );
        old.exec(&sql).await;
    }
    old.exec("UPDATE tenants SET last_sequence = 16").await;
    old.close().await;

    let app = TestApp::spawn_in(data).await;
    check_current(&app).await;
    // And it goes on from there.
    app.publish_ok("default", &status("carol", "20261123100000", 16, 1, ""))
        .await;
    let carol = json_ok(app.get("/v1/tenants/default/agents/carol", ADMIN_KEY).await).await;
    assert_eq!(
        (
            carol["activity_code"].clone(),
            carol["last_sequence"].clone()
        ),
        (json!(16), json!(17))
    );
}

/// `n` Agent events of `agents` agents: sign-ins, statuses, work items and sign-outs, with
/// times that sometimes go backwards (late events), from a fixed seed.
fn busy_day(n: usize, agents: usize, seed: u64) -> Vec<Value> {
    let mut x = seed;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as usize
    };
    (0..n)
        .map(|i| {
            let user = format!("agent{}", next() % agents);
            // Mostly forward in time, now and then a few seconds back.
            let secs = (i + 10).saturating_sub(next() % 12);
            let at = format!("2026112309{:02}{:02}", secs / 60 % 60, secs % 60);
            match next() % 10 {
                0 => ev(&user, 1, &at, json!({})),
                1 => ev(&user, 2, &at, json!({"ExitCode": (next() % 4) as i64})),
                2 => ev(
                    &user,
                    4,
                    &at,
                    json!({"WorkItemId": format!("W{i}"), "WorkItemType": "Voice"}),
                ),
                3 => ev(&user, 5, &at, json!({"WorkItemId": format!("W{i}")})),
                4 => ev(&user, 8, &at, json!({"DurationSecs": 30})),
                _ => status(
                    &user,
                    &at,
                    [0, 16, 17, 34][next() % 4],
                    (next() % 3) as i64,
                    "",
                ),
            }
        })
        .collect()
}

/// The agents as folding the whole log, event by event, gives them.
async fn folded_log(app: &TestApp) -> Value {
    let mut agents: std::collections::BTreeMap<String, Option<switchboard::agent::Agent>> =
        Default::default();
    for item in app.all_events("default").await {
        let event = switchboard::event::Event::from_canonical_json(&item["event"].to_string())
            .expect("a stored event");
        let name = event.username().unwrap().to_string();
        let state = agents.entry(name).or_default();
        switchboard::agent::step(state, &event, item["sequence"].as_i64().unwrap());
    }
    let catalog = switchboard::event::Catalog::builtin();
    let shown: Vec<_> = agents
        .into_values()
        .flatten()
        .map(|a| a.named(&catalog))
        .collect();
    serde_json::to_value(shown).unwrap()
}

/// Posts `events` 250 at a time, four requests at once, over `nodes` in turn.
async fn post_fast(nodes: &[&TestApp], events: &[Value]) {
    let batches: Vec<Value> = events
        .chunks(250)
        .map(|c| Value::Array(c.to_vec()))
        .collect();
    for (round, group) in batches.chunks(4).enumerate() {
        let posts: Vec<_> = group
            .iter()
            .enumerate()
            .map(|(i, body)| {
                let node = nodes[(round + i) % nodes.len()];
                let (client, url, body) = (
                    node.client.clone(),
                    node.url("/v1/tenants/default/events"),
                    body.clone(),
                );
                tokio::spawn(async move {
                    let r = client.post(url).bearer_auth(ADMIN_KEY).json(&body).send();
                    r.await.unwrap().status()
                })
            })
            .collect();
        for p in posts {
            assert_eq!(p.await.unwrap(), StatusCode::ACCEPTED);
        }
    }
}

async fn caught_up(app: &TestApp, through: i64) -> Value {
    crate::support::receiver::eventually("the projection catches up with the log", || async {
        let page = agents(app, "?limit=1000").await;
        (page["as_of_sequence"] == through).then_some(page["data"].clone())
    })
    .await
}

/// Under load the writer defers and coalesces the projection's writes; what it ends with is
/// exactly the log folded event by event.
#[tokio::test]
async fn under_load_the_projection_is_the_log_folded() {
    let app = TestApp::spawn().await;
    post_fast(&[&app], &busy_day(8_000, 60, 7)).await;
    assert_eq!(caught_up(&app, 8_000).await, folded_log(&app).await);
    // And after a restart (what memory held was written or is read back from the log).
    let data = app.stop().await;
    let app = TestApp::spawn_in(data).await;
    assert_eq!(caught_up(&app, 8_000).await, folded_log(&app).await);
}

/// Two PostgreSQL nodes taking a tenant's events at once: each node's deferred states are
/// only trusted while no other node wrote in between; the result is still the log folded.
#[tokio::test]
async fn two_postgresql_nodes_under_load_agree_with_the_log() {
    let app = TestApp::spawn_in(TestData::postgres().await).await;
    let second = app.second_node().await;
    post_fast(&[&app, &second], &busy_day(8_000, 60, 11)).await;
    let want = folded_log(&app).await;
    assert_eq!(caught_up(&app, 8_000).await, want);
    assert_eq!(caught_up(&second, 8_000).await, want);
    second.stop().await;
}

/// A stored agent this release cannot read harms only itself (DESIGN §15): one with fields a
/// newer release wrote (or without one it left out) is read tolerantly; one whose stored form is
/// garbage is re-folded from the log for readers and by the writer, which stores it again —
/// ingest answers `202` all along, and the metric counts it.
#[tokio::test]
async fn a_stored_agent_that_does_not_decode_is_refolded_from_the_log() {
    let app = TestApp::spawn().await;
    post_day(&app).await;
    check_current(&app).await;
    let expected = expected_agents();

    let mut db = OldDb::latest(&app.data).await;
    let mut newer = expected[2].clone();
    newer["mood"] = json!("focused");
    newer.as_object_mut().unwrap().remove("exit_code");
    newer.as_object_mut().unwrap().remove("signed_out_at");
    let newer = newer.to_string().replace('\'', "''");
    db.exec(&format!(
        "UPDATE agents SET state = '{newer}' WHERE username = 'carol'"
    ))
    .await;
    db.exec("UPDATE agents SET state = '{\"username\": 7' WHERE username = 'alice'")
        .await;

    // Readers: the same agents as before, the broken one re-folded.
    check_current(&app).await;
    let changes = json_ok(
        app.get("/v1/tenants/default/agents?signed_in=true", ADMIN_KEY)
            .await,
    )
    .await;
    assert_eq!(changes["data"], json!([expected[0], expected[2]]));
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("switchboard_undecodable_rows_total{kind=\"agent\"}"),
        "{metrics}"
    );

    // The writer: ingest goes on, folds bob's next event onto his re-folded state, and stores
    // it again in a form that decodes.
    app.publish_ok("default", &status("alice", "20261123100000", 16, 1, ""))
        .await;
    let alice = json_ok(app.get("/v1/tenants/default/agents/alice", ADMIN_KEY).await).await;
    // What only his history holds is still there (a fold from nothing would not have it).
    for (field, value) in [
        ("signed_in_at", json!("20261123080000")),
        ("session_id", json!("S-alice")),
        ("activity_code", json!(16)),
        ("last_sequence", json!(17)),
    ] {
        assert_eq!(alice[field], value, "{field} in {alice}");
    }
    let stored = db
        .text("SELECT state FROM agents WHERE username = 'alice'")
        .await;
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["last_sequence"], 17);
    assert_eq!(stored["signed_in_at"], "20261123080000");
    db.close().await;
}
