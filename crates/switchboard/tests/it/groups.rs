//! Groups and live counts (DESIGN §18): a simulated day of 500 agents in 10 teams, its counts
//! checked against counting the agents the API lists, the counts stream's snapshot and changes
//! applied by the test against the final counts, and a second PostgreSQL node serving the same.

use std::collections::BTreeMap;

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard::cli::simulate::{Options, Simulation};
use switchboard::event::Timestamp;

use crate::support::TestApp;
use crate::support::app::{ADMIN_KEY, fields_named, json_ok, problem};
use crate::support::receiver::eventually;
use crate::support::sse::SseReader;

const CATALOG: &str = "[agents]\ngroup_fields = [\"Team\", \"Queue\"]\n";

/// A server whose catalog names `Team` and `Queue` as group fields.
async fn app_with_groups() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.toml");
    std::fs::write(&path, CATALOG).unwrap();
    // The file is read once, at start.
    let app = TestApp::spawn_with(|c| c.catalog_file = path.display().to_string()).await;
    drop(dir);
    app
}

/// `n` events of 500 agents in 10 teams, mid-shift (the closing sign-outs left out).
fn day(n: usize) -> Vec<Value> {
    let opts = Options {
        server: String::new(),
        key: String::new(),
        tenant: "default".into(),
        agents: 500,
        rate: 1,
        duration_secs: 86_400,
        seed: 30,
        start: Some(Timestamp::parse("20261205080000").unwrap()),
        dry_run: true,
        progress: false,
        teams: 10,
        shift_hours: 0,
    };
    Simulation::new(&opts).take(n).collect()
}

/// Counts as the API shapes them, keyed by group value, for comparison.
type Groups = BTreeMap<Option<String>, Value>;

fn groups_of(body: &Value) -> Groups {
    body["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| (g["value"].as_str().map(str::to_string), g.clone()))
        .collect()
}

/// signed_in, on_work_item, by_availability, by_activity.
type Tallied = (u64, u64, BTreeMap<String, u64>, BTreeMap<String, u64>);

/// The counts made by the test from the agent objects: signed-in agents by `by` (`None`: one
/// group).
fn count(agents: &[Value], by: Option<&str>) -> Groups {
    let mut out: BTreeMap<Option<String>, Tallied> = BTreeMap::new();
    for a in agents.iter().filter(|a| a["signed_in"] == true) {
        let value = by.and_then(|f| a["groups"][f].as_str().map(str::to_string));
        let g = out.entry(value).or_default();
        g.0 += 1;
        if !a["work_item"].is_null() {
            g.1 += 1;
        }
        let code = |v: &Value| v.as_i64().map_or("unknown".to_string(), |c| c.to_string());
        *g.2.entry(code(&a["availability_code"])).or_default() += 1;
        *g.3.entry(code(&a["activity_code"])).or_default() += 1;
    }
    out.into_iter()
        .map(
            |(value, (signed_in, on_work_item, by_availability, by_activity))| {
                let v = json!({"value": value, "signed_in": signed_in, "on_work_item": on_work_item,
                           "by_availability": by_availability, "by_activity": by_activity});
                (value, v)
            },
        )
        .collect()
}

/// Every agent, walked page by page; with the `as_of_sequence` of the pages (all the same).
async fn all_agents(app: &TestApp) -> (Vec<Value>, i64) {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let page = json_ok(
            app.get(
                &format!("/v1/tenants/default/agents?limit=1000{after}"),
                ADMIN_KEY,
            )
            .await,
        )
        .await;
        out.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return (out, page["as_of_sequence"].as_i64().unwrap()),
        }
    }
}

async fn counts(app: &TestApp, by: Option<&str>) -> Value {
    let q = by.map(|b| format!("?by={b}")).unwrap_or_default();
    json_ok(
        app.get(&format!("/v1/tenants/default/agents/counts{q}"), ADMIN_KEY)
            .await,
    )
    .await
}

#[tokio::test]
async fn counts_equal_counting_the_agents_after_a_simulated_day() {
    let app = app_with_groups().await;
    let mut stream = SseReader::open(
        &app,
        "/v1/tenants/default/agents/counts/stream?by=Team",
        ADMIN_KEY,
        None,
    )
    .await;
    let first = stream.next().await.expect("a snapshot");
    assert_eq!(first.event, "snapshot");
    assert_eq!(first.data["groups"], json!([]), "{:?}", first.data);
    assert_eq!(first.data["by"], "Team");

    let events = day(20_000);
    for chunk in events.chunks(1000) {
        app.publish_ok("default", &json!(chunk)).await;
    }
    // One more agent signs in: the last event certainly changes a count, so the stream's last
    // message is as of it.
    let mut late = events[0].clone();
    late["Id"] = json!(crate::support::app::guid());
    late["AdditionalFields"]["Username"] = json!("late-agent");
    late["CreationDateUtc"] = json!("20261206080000");
    assert_eq!(late["Code"], 1);
    app.publish_ok("default", &json!([late])).await;
    let last = 20_001;
    let by_team = eventually("the projection to take in every event", || async {
        let c = counts(&app, Some("Team")).await;
        (c["as_of_sequence"] == last).then_some(c)
    })
    .await;
    let (agents, as_of) = all_agents(&app).await;
    assert_eq!(as_of, last);
    assert_eq!(agents.len(), 501);

    // Every count equals the test's count of the agents.
    assert_eq!(groups_of(&by_team), count(&agents, Some("Team")));
    let teams = groups_of(&by_team);
    assert_eq!(teams.len(), 10, "{teams:?}");
    assert!(teams.keys().all(Option::is_some), "every agent has a Team");
    let whole = counts(&app, None).await;
    assert_eq!(whole["by"], Value::Null);
    assert_eq!(groups_of(&whole), count(&agents, None));
    let signed_in = whole["groups"][0]["signed_in"].as_u64().unwrap();
    assert!(
        (100..500).contains(&signed_in),
        "mid-shift, some but not all signed in: {signed_in}"
    );
    // Queue is the queue of an agent's last work item offered; agents with none (the late
    // one) form the null group.
    let by_queue = counts(&app, Some("Queue")).await;
    assert_eq!(groups_of(&by_queue), count(&agents, Some("Queue")));
    assert_eq!(groups_of(&by_queue).len(), 5, "{by_queue}");
    assert_eq!(groups_of(&by_queue)[&None]["signed_in"], 1, "{by_queue}");

    // Each agent shows its groups: the Team of its latest event.
    let agent = &agents[7];
    let name = agent["username"].as_str().unwrap();
    let latest = events
        .iter()
        .rev()
        .find(|e| e["AdditionalFields"]["Username"] == name)
        .unwrap();
    assert_eq!(agent["groups"]["Team"], latest["AdditionalFields"]["Team"]);

    // The stream's snapshot and changes, applied, equal the final counts.
    let mut applied = Groups::new();
    loop {
        let m = stream
            .next_within(std::time::Duration::from_secs(30))
            .await
            .expect("a counts message");
        assert_eq!(m.event, "counts");
        assert_eq!(m.id, m.data["as_of_sequence"].as_i64());
        for g in m.data["groups"].as_array().unwrap() {
            let value = g["value"].as_str().map(str::to_string);
            match g["signed_in"] == 0 {
                true => applied.remove(&value),
                false => applied.insert(value, g.clone()),
            };
        }
        if m.data["as_of_sequence"] == last {
            break;
        }
    }
    assert_eq!(applied, teams);

    // A resume gets a fresh snapshot equal to the counts.
    let mut resumed = SseReader::open(
        &app,
        "/v1/tenants/default/agents/counts/stream?by=Team",
        ADMIN_KEY,
        Some(5),
    )
    .await;
    let snap = resumed.next().await.unwrap();
    assert_eq!(snap.event, "snapshot");
    assert_eq!(snap.id, Some(last));
    assert_eq!(snap.data, by_team);

    // Another PostgreSQL node serves the same counts.
    if !app.data.database_url().is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.toml");
        std::fs::write(&path, CATALOG).unwrap();
        let second = app
            .second_node_with(|c| c.catalog_file = path.display().to_string())
            .await;
        assert_eq!(counts(&second, Some("Team")).await, by_team);
        second.stop().await;
    }
    drop(stream);
    drop(resumed);
    app.stop().await;
}

#[tokio::test]
async fn a_move_between_teams_and_a_sign_out_are_streamed_as_the_groups_they_change() {
    let app = app_with_groups().await;
    let ev = |user: &str, code: u32, at: &str, team: &str, extra: Value| {
        let mut fields = json!({"SessionId": "S", "SessionType": "CCA", "Username": user,
                                "PhoneNo": "+15551230001", "Team": team});
        fields
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"Id": crate::support::app::guid(), "CreationDateUtc": at, "Category": 1,
               "Code": code, "AdditionalFields": fields})
    };
    let available = json!({"ActivityCode": 16, "AvailabilityCode": 1, "ActivityName": ""});
    app.publish_ok(
        "default",
        &json!([
            ev("ann", 1, "20261205080000", "Sales", json!({})),
            ev("ann", 3, "20261205080010", "Sales", available.clone()),
            ev("ben", 1, "20261205080000", "Sales", json!({})),
        ]),
    )
    .await;
    let mut stream = SseReader::open(
        &app,
        "/v1/tenants/default/agents/counts/stream?by=Team",
        ADMIN_KEY,
        None,
    )
    .await;
    let snap = stream.next().await.unwrap();
    assert_eq!(snap.id, Some(3));
    assert_eq!(
        snap.data,
        json!({"as_of_sequence": 3, "by": "Team", "groups": [
            {"value": "Sales", "signed_in": 2, "on_work_item": 0,
             "by_availability": {"1": 1, "unknown": 1},
             "by_activity": {"16": 1, "unknown": 1}}]})
    );
    // ann moves to Support with a work item on offer; then ben signs out.
    app.publish_ok(
        "default",
        &json!([ev(
            "ann",
            4,
            "20261205080100",
            "Support",
            json!({"WorkItemId": "W-1"})
        )]),
    )
    .await;
    let m = stream.next().await.unwrap();
    assert_eq!(m.event, "counts");
    assert_eq!(
        m.data,
        json!({"as_of_sequence": 4, "groups": [
            {"value": "Sales", "signed_in": 1, "on_work_item": 0,
             "by_availability": {"unknown": 1}, "by_activity": {"unknown": 1}},
            {"value": "Support", "signed_in": 1, "on_work_item": 1,
             "by_availability": {"1": 1}, "by_activity": {"16": 1}}]})
    );
    app.publish_ok(
        "default",
        &json!([ev(
            "ben",
            2,
            "20261205080200",
            "Sales",
            json!({"ExitCode": 0})
        )]),
    )
    .await;
    let m = stream.next().await.unwrap();
    assert_eq!(
        m.data,
        json!({"as_of_sequence": 5, "groups": [
            {"value": "Sales", "signed_in": 0, "on_work_item": 0,
             "by_availability": {}, "by_activity": {}}]}),
        "a group that became empty is sent with signed_in 0"
    );
    let now = counts(&app, Some("Team")).await;
    assert_eq!(now["groups"].as_array().unwrap().len(), 1, "{now}");
    let ann = json_ok(app.get("/v1/tenants/default/agents/ann", ADMIN_KEY).await).await;
    assert_eq!(ann["groups"], json!({"Team": "Support"}));
    drop(stream);
    app.stop().await;
}

#[tokio::test]
async fn counts_by_a_field_that_is_not_a_group_field_are_refused_naming_by() {
    let app = app_with_groups().await;
    for path in [
        "/v1/tenants/default/agents/counts?by=Skill",
        "/v1/tenants/default/agents/counts/stream?by=Skill",
        "/v1/tenants/default/agents/counts?by=",
    ] {
        let p = problem(
            app.get(path, ADMIN_KEY).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(fields_named(&p), ["by"], "{path}: {p}");
        assert!(
            p["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("Team, Queue"),
            "{p}"
        );
    }
    let catalog = json_ok(app.get("/v1/catalog", ADMIN_KEY).await).await;
    assert_eq!(catalog["group_fields"], json!(["Team", "Queue"]));
    app.stop().await;

    // Without group fields, counts are of the whole tenant only.
    let plain = TestApp::spawn().await;
    let p = problem(
        plain
            .get("/v1/tenants/default/agents/counts?by=Team", ADMIN_KEY)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(
        p["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("group_fields"),
        "{p}"
    );
    let whole = counts(&plain, None).await;
    assert_eq!(whole["groups"], json!([]));
    plain.stop().await;
}
