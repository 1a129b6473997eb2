//! Rules and derived events (DESIGN §18): agent and group rules fire once per episode at the
//! crossing (on a clock the test moves), clear when the condition ends, survive restarts and
//! fire once per cluster; category 5 reaches only subscriptions that name it; bad rules are
//! refused naming the field.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use switchboard::agent::GroupFields;
use switchboard::event::Timestamp;
use switchboard::rule::{Rule, RuleSpec};
use switchboard::store::EventQuery;

use crate::support::app::{ADMIN_KEY, TestApp, fields_named, guid, json_ok, problem};
use crate::support::process::Server;
use crate::support::receiver::eventually_within;
use crate::support::stepper::Stepper;

fn at(ms: i64) -> String {
    Timestamp::from_unix_ms(ms).to_string()
}

fn agent(code: u32, username: &str, ms: i64, extra: Value) -> Value {
    let mut fields = json!({"SessionId": format!("S-{username}"), "SessionType": "CCA",
                            "Username": username, "PhoneNo": "+15551230001"});
    for (k, v) in extra.as_object().into_iter().flatten() {
        fields[k] = v.clone();
    }
    json!({"Id": guid(), "CreationDateUtc": at(ms), "Category": 1, "Code": code,
           "AdditionalFields": fields})
}

fn status(username: &str, ms: i64, activity: i64, extra: Value) -> Value {
    let mut extra = extra;
    extra["ActivityCode"] = json!(activity);
    extra["AvailabilityCode"] = json!(activity);
    extra["ActivityName"] = json!(format!("activity {activity}"));
    agent(3, username, ms, extra)
}

/// A rule of tenant `default` as the API would make it, in force since `since_ms`.
async fn rule(s: &Stepper, body: Value, since_ms: i64) -> Rule {
    let spec = RuleSpec::from_value(body, &["Team".to_string()]).expect("a valid rule");
    let rule = Rule {
        id: format!("rule_{}", uuid::Uuid::new_v4().simple()),
        tenant_id: "default".into(),
        spec,
        revision: 1,
        created_at: since_ms,
        updated_at: since_ms,
    };
    s.store.create_rule(&rule, 1000).await.expect("created");
    rule
}

/// The derived events of tenant `default`, in log order.
async fn derived(s: &Stepper) -> Vec<Value> {
    let q = EventQuery {
        category: Some(5),
        limit: 1000,
        ..EventQuery::default()
    };
    let rows = s.store.list_events("default", &q).await.expect("log");
    rows.iter()
        .map(|r| serde_json::from_str(&r.body).expect("json"))
        .collect()
}

/// The clock's now, on a whole second (event times have no finer grain).
fn second(s: &Stepper) -> i64 {
    s.clock.now_ms() / 1000 * 1000
}

#[tokio::test]
async fn an_agent_rule_fires_once_per_episode_at_the_crossing_and_clears() {
    let mut s = Stepper::new().await;
    let t0 = second(&s);
    let r = rule(
        &s,
        json!({"name": "busy too long", "kind": "agent_state", "activity_codes": [36],
               "for_secs": 60}),
        t0 - 3_600_000,
    )
    .await;
    s.store.run_rules().await.unwrap();
    s.publish(&json!([
        agent(1, "ann", t0 - 10_000, json!({})),
        status("ann", t0, 36, json!({}))
    ]))
    .await;
    s.store.run_rules().await.unwrap();
    s.advance(Duration::from_secs(59));
    s.store.run_rules().await.unwrap();
    assert!(derived(&s).await.is_empty(), "nothing before the crossing");

    // The crossing passes while the node is down: the timer is a row, fired after the restart.
    s.restart().await;
    s.advance(Duration::from_millis(1_500));
    s.store.run_rules().await.unwrap();
    s.store.run_rules().await.unwrap();
    let fired = derived(&s).await;
    assert_eq!(fired.len(), 1, "{fired:?}");
    let f = &fired[0];
    assert_eq!(
        (f["Category"].as_i64(), f["Code"].as_i64()),
        (Some(5), Some(1))
    );
    assert_eq!(f["CreationDateUtc"], json!(at(t0 + 60_000)));
    let fields = &f["AdditionalFields"];
    assert_eq!(fields["RuleId"], json!(r.id));
    assert_eq!(fields["RuleName"], json!("busy too long"));
    assert_eq!(fields["Username"], json!("ann"));
    assert_eq!(fields["Since"], json!(at(t0)));

    // The agent leaves the state: cleared at that event's time, with another Id.
    s.advance(Duration::from_secs(30));
    s.publish(&status("ann", t0 + 90_000, 16, json!({}))).await;
    let both = derived(&s).await;
    assert_eq!(both.len(), 2, "{both:?}");
    let c = &both[1];
    assert_eq!(c["Code"], json!(2));
    assert_eq!(c["CreationDateUtc"], json!(at(t0 + 90_000)));
    assert_eq!(c["AdditionalFields"]["Since"], json!(at(t0)));
    assert_ne!(c["Id"], f["Id"]);

    // A second episode fires again, with its own Id; a short one (under 60 s) never does.
    s.publish(&status("ann", t0 + 100_000, 36, json!({}))).await;
    s.advance(Duration::from_secs(30));
    s.publish(&status("ann", t0 + 120_000, 16, json!({}))).await;
    s.publish(&status("ann", t0 + 125_000, 36, json!({}))).await;
    s.advance(Duration::from_secs(70));
    s.store.run_rules().await.unwrap();
    s.store.run_rules().await.unwrap();
    let all = derived(&s).await;
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all[2]["Code"], json!(1));
    assert_eq!(all[2]["CreationDateUtc"], json!(at(t0 + 185_000)));
    assert_eq!(all[2]["AdditionalFields"]["Since"], json!(at(t0 + 125_000)));
    let ids: std::collections::HashSet<&Value> = all.iter().map(|e| &e["Id"]).collect();
    assert_eq!(ids.len(), 3);

    // Deleting the rule clears its fired episode at that moment.
    let now = s.clock.now_ms();
    s.store.delete_rule("default", &r.id, now).await.unwrap();
    s.store.run_rules().await.unwrap();
    let all = derived(&s).await;
    assert_eq!(all.len(), 4, "{all:?}");
    assert_eq!(all[3]["Code"], json!(2));
    assert_eq!(all[3]["CreationDateUtc"], json!(at(now)));
    assert!(s.store.get_rule("default", &r.id).await.unwrap().is_none());
}

#[tokio::test]
async fn a_rule_created_while_its_condition_holds_counts_from_its_creation() {
    let s = Stepper::new().await;
    let t0 = second(&s);
    s.publish(&json!([
        agent(1, "bob", t0 - 600_000, json!({})),
        status("bob", t0 - 300_000, 36, json!({}))
    ]))
    .await;
    rule(
        &s,
        json!({"name": "busy", "kind": "agent_state", "activity_codes": [36], "for_secs": 120}),
        t0,
    )
    .await;
    s.store.run_rules().await.unwrap();
    s.advance(Duration::from_secs(119));
    s.store.run_rules().await.unwrap();
    assert!(derived(&s).await.is_empty());
    s.advance(Duration::from_secs(2));
    s.store.run_rules().await.unwrap();
    let fired = derived(&s).await;
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0]["AdditionalFields"]["Since"], json!(at(t0)));
    assert_eq!(fired[0]["CreationDateUtc"], json!(at(t0 + 120_000)));
}

#[tokio::test]
async fn a_group_rule_fires_below_its_threshold_and_ignores_a_short_dip() {
    let s = Stepper::with(|o| o.group_fields = GroupFields::new(vec!["Team".into()])).await;
    let t0 = second(&s);
    let sales = json!({"Team": "Sales"});
    let mut start = Vec::new();
    for name in ["a", "b", "c"] {
        start.push(agent(1, name, t0 - 60_000, sales.clone()));
        start.push(status(name, t0 - 50_000, 16, sales.clone()));
    }
    start.push(agent(1, "z", t0 - 60_000, json!({"Team": "Support"})));
    s.publish(&Value::Array(start)).await;
    rule(
        &s,
        json!({"name": "sales thin", "kind": "group_count", "by": "Team", "value": "Sales",
               "availability_codes": [16], "op": "lt", "threshold": 2, "for_secs": 30}),
        t0 - 3_600_000,
    )
    .await;
    s.store.run_rules().await.unwrap();
    // A dip of 10 s: two leave, one comes back.
    s.publish(&json!([
        status("a", t0 + 10_000, 0, json!({})),
        status("b", t0 + 10_000, 0, json!({}))
    ]))
    .await;
    s.advance(Duration::from_secs(20));
    s.publish(&status("a", t0 + 20_000, 16, json!({}))).await;
    s.advance(Duration::from_secs(60));
    s.store.run_rules().await.unwrap();
    assert!(
        derived(&s).await.is_empty(),
        "no fire for a dip shorter than for_secs"
    );

    // Below for 30 s: fires at the crossing with the count.
    s.publish(&status("a", t0 + 90_000, 0, json!({}))).await;
    s.advance(Duration::from_secs(40));
    s.store.run_rules().await.unwrap();
    let fired = derived(&s).await;
    assert_eq!(fired.len(), 1, "{fired:?}");
    let f = &fired[0]["AdditionalFields"];
    assert_eq!(fired[0]["CreationDateUtc"], json!(at(t0 + 120_000)));
    assert_eq!(f["GroupBy"], json!("Team"));
    assert_eq!(f["GroupValue"], json!("Sales"));
    assert_eq!(f["Value"], json!(1));
    assert_eq!(f["Since"], json!(at(t0 + 90_000)));
    assert!(f.get("Username").is_none());

    // Back to two: cleared at that event, with the count.
    s.publish(&status("b", t0 + 140_000, 16, json!({}))).await;
    let all = derived(&s).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[1]["Code"], json!(2));
    assert_eq!(all[1]["CreationDateUtc"], json!(at(t0 + 140_000)));
    assert_eq!(all[1]["AdditionalFields"]["Value"], json!(2));
}

#[tokio::test]
async fn rules_are_managed_over_the_api_and_bad_ones_are_refused_naming_the_field() {
    let app = TestApp::spawn_with(|c| c.max_rules_per_tenant = 2).await;
    let path = "/v1/tenants/default/rules";
    let post = |body: Value| {
        let app = &app;
        async move { app.call(Method::POST, path, ADMIN_KEY, Some(&body)).await }
    };
    let cases = [
        (
            json!({"name": "x", "kind": "queue_depth", "for_secs": 5}),
            "kind",
        ),
        (
            json!({"name": "x", "kind": "agent_state", "for_secs": 0}),
            "for_secs",
        ),
        (
            json!({"name": "x", "kind": "agent_state", "for_secs": 86_401}),
            "for_secs",
        ),
        (
            json!({"name": "x", "kind": "group_count", "by": "Team", "op": "lt", "threshold": 1,
                "for_secs": 5}),
            "by",
        ),
    ];
    for (body, field) in cases {
        let p = problem(post(body.clone()).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert!(fields_named(&p).contains(&field), "{body}: {p}");
    }
    let listed = json_ok(app.get(path, ADMIN_KEY).await).await;
    assert_eq!(listed["data"], json!([]), "nothing stored");

    let r = post(
        json!({"name": "wrap-up", "kind": "agent_state", "activity_codes": [36],
                        "for_secs": 120}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["enabled"], json!(true));
    let one = format!("{path}/{id}");
    assert_eq!(json_ok(app.get(&one, ADMIN_KEY).await).await, created);
    let patched = json_ok(
        app.call(
            Method::PATCH,
            &one,
            ADMIN_KEY,
            Some(&json!({"for_secs": 30, "enabled": false})),
        )
        .await,
    )
    .await;
    assert_eq!(
        (patched["for_secs"].as_i64(), patched["enabled"].as_bool()),
        (Some(30), Some(false))
    );
    let bad = app
        .call(
            Method::PATCH,
            &one,
            ADMIN_KEY,
            Some(&json!({"for_secs": 0})),
        )
        .await;
    problem(bad, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(
        json_ok(app.get(&one, ADMIN_KEY).await).await["for_secs"],
        json!(30)
    );

    // The limit, then deletion.
    let second = json!({"name": "n", "kind": "agent_state", "for_secs": 5});
    assert_eq!(post(second.clone()).await.status(), StatusCode::CREATED);
    let p = problem(post(second).await, StatusCode::TOO_MANY_REQUESTS).await;
    assert!(p.to_string().contains("max_rules_per_tenant"), "{p}");
    let gone = app.call(Method::DELETE, &one, ADMIN_KEY, None).await;
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    problem(app.get(&one, ADMIN_KEY).await, StatusCode::NOT_FOUND).await;

    // The catalog describes Category 5.
    let catalog = json_ok(app.get("/v1/catalog", ADMIN_KEY).await).await;
    let derived = catalog["categories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["category"] == json!(5))
        .expect("category 5 in the catalog");
    assert_eq!(derived["name"], json!("Derived"));
    let names: Vec<&str> = derived["codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["RuleFired", "RuleCleared"]);

    // Producers cannot write Category 5.
    let mut e = crate::support::app::agent_event(&guid(), 1, "ann");
    e["Category"] = json!(5);
    let p = problem(
        app.publish("default", &e).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(fields_named(&p).contains(&"Category"), "{p}");
    app.stop().await;
}

/// Makes the rule "activity 36 for `for_secs`" over the API.
async fn busy_rule(app: &TestApp, for_secs: i64) {
    let body = json!({"name": "busy", "kind": "agent_state", "activity_codes": [36],
                      "for_secs": for_secs});
    let r = app
        .call(
            Method::POST,
            "/v1/tenants/default/rules",
            ADMIN_KEY,
            Some(&body),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// Against a server on the system clock: events dated in the past cross at once.
#[tokio::test]
async fn category_5_reaches_only_subscriptions_that_name_it() {
    let app = TestApp::spawn().await;
    let rx_all = crate::support::TestReceiver::start().await;
    let rx_rules = crate::support::TestReceiver::start().await;
    let all_sub = app.subscribe(json!({"url": rx_all.url("/")})).await;
    app.subscribe(json!({"url": rx_rules.url("/"), "filter": {"events": [{"category": 5}]}}))
        .await;
    busy_rule(&app, 1).await;
    let now = switchboard::clock::now_millis() / 1000 * 1000;
    // Created before the rule existed, so the episode counts from the rule's creation.
    app.publish_ok(
        "default",
        &json!([
            agent(1, "ann", now - 5_000, json!({})),
            status("ann", now - 4_000, 36, json!({}))
        ]),
    )
    .await;
    rx_rules
        .wait_until(|got| !got.is_empty(), "the RuleFired delivery")
        .await;
    let got = rx_rules.received();
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(
        (body["Category"].as_i64(), body["Code"].as_i64()),
        (Some(5), Some(1))
    );
    // The unfiltered one: a delivery for each agent event, none for the derived one (made in
    // the turn that logged it).
    let made = app.deliveries(all_sub["id"].as_str().unwrap(), None).await;
    assert_eq!(made.len(), 2, "{made:?}");
    rx_all
        .wait_until(|got| got.len() >= 2, "the agent events")
        .await;
    // In the log, listed like any event.
    assert_eq!(app.events_where("default", "category=5").await.len(), 1);
    app.stop().await;
}

async fn derived_over_http(client: &reqwest::Client, base: &str) -> Vec<Value> {
    let page: Value = client
        .get(format!(
            "{base}/v1/tenants/default/events?category=5&limit=1000"
        ))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("a page");
    page["data"].as_array().expect("data").clone()
}

/// A node killed (SIGKILL) after an episode opened and before it was due fires it exactly once
/// after its restart: the timer is a row of the database.
#[tokio::test]
async fn a_node_killed_before_the_crossing_fires_the_episode_once_after_restart() {
    let data = crate::support::db::TestData::new().await;
    let client = reqwest::Client::new();
    let mut server = Server::start(&data);
    let r = server
        .post(
            &client,
            "/v1/tenants/default/rules",
            &json!({"name": "busy", "kind": "agent_state", "activity_codes": [36], "for_secs": 3}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let now = switchboard::clock::now_millis() / 1000 * 1000;
    let r = server
        .post(
            &client,
            "/v1/tenants/default/events",
            &json!([
                agent(1, "ann", now - 20_000, json!({})),
                status("ann", now - 10_000, 36, json!({}))
            ]),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    server.kill();
    // Down while the episode comes due (3 s after the rule was made).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let server = Server::start(&data);
    let fired = eventually_within("the RuleFired", Duration::from_secs(10), || async {
        let got = derived_over_http(&client, &server.base).await;
        (!got.is_empty()).then_some(got)
    })
    .await;
    // A few more ticks: still one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = derived_over_http(&client, &server.base).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(fired[0]["event"]["Code"], json!(1));
    assert_eq!(
        fired[0]["event"]["AdditionalFields"]["Username"],
        json!("ann")
    );
}

/// Two nodes on one PostgreSQL, both ticking: each episode fires once and clears once.
#[tokio::test]
async fn two_nodes_fire_and_clear_an_episode_once() {
    let one = TestApp::spawn_in(crate::support::db::TestData::postgres().await).await;
    let two = one.second_node().await;
    busy_rule(&one, 1).await;
    let now = switchboard::clock::now_millis() / 1000 * 1000;
    let names: Vec<String> = (0..20).map(|i| format!("agent{i}")).collect();
    let mut events = Vec::new();
    for n in &names {
        events.push(agent(1, n, now - 20_000, json!({})));
        events.push(status(n, now - 10_000, 36, json!({})));
    }
    two.publish_ok("default", &Value::Array(events)).await;
    let fired = eventually_within("20 RuleFired", Duration::from_secs(15), || async {
        let got = one.events_where("default", "category=5&code=1").await;
        (got.len() >= 20).then_some(got)
    })
    .await;
    let later = switchboard::clock::now_millis() / 1000 * 1000;
    let back: Vec<Value> = names
        .iter()
        .map(|n| status(n, later, 16, json!({})))
        .collect();
    one.publish_ok("default", &Value::Array(back)).await;
    eventually_within("20 RuleCleared", Duration::from_secs(15), || async {
        let got = two.events_where("default", "category=5&code=2").await;
        (got.len() >= 20).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = two.events_where("default", "category=5").await;
    assert_eq!(all.len(), 40, "one RuleFired and one RuleCleared per agent");
    let fired_names: std::collections::BTreeSet<&str> = fired
        .iter()
        .map(|e| e["event"]["AdditionalFields"]["Username"].as_str().unwrap())
        .collect();
    assert_eq!(fired_names.len(), 20);
    two.stop().await;
    one.stop().await;
}

/// An episode whose end comes in (by event time) after it was due, before a tick fired it, still
/// fires — then clears at once.
#[tokio::test]
async fn an_episode_ended_after_it_was_due_fires_then_clears() {
    let s = Stepper::new().await;
    let t0 = second(&s);
    rule(
        &s,
        json!({"name": "busy", "kind": "agent_state", "activity_codes": [36], "for_secs": 60}),
        t0 - 3_600_000,
    )
    .await;
    s.store.run_rules().await.unwrap();
    s.publish(&json!([
        agent(1, "ann", t0 - 200_000, json!({})),
        status("ann", t0 - 100_000, 36, json!({}))
    ]))
    .await;
    s.publish(&status("ann", t0 - 30_000, 16, json!({}))).await;
    let all = derived(&s).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        (all[0]["Code"].as_i64(), all[1]["Code"].as_i64()),
        (Some(1), Some(2))
    );
    assert_eq!(all[0]["CreationDateUtc"], json!(at(t0 - 40_000)));
    assert_eq!(all[1]["CreationDateUtc"], json!(at(t0 - 30_000)));
}

/// A changed rule ends its fired episode and opens a new one for the same agent, with no event
/// between: the new episode's events have ids of their own, and are logged.
#[tokio::test]
async fn a_changed_rule_fires_again_under_new_ids() {
    let s = Stepper::new().await;
    let t0 = second(&s);
    let mut r = rule(
        &s,
        json!({"name": "busy", "kind": "agent_state", "activity_codes": [36], "for_secs": 60}),
        t0 - 3_600_000,
    )
    .await;
    s.store.run_rules().await.unwrap();
    s.publish(&json!([
        agent(1, "ann", t0 - 10_000, json!({})),
        status("ann", t0, 36, json!({}))
    ]))
    .await;
    s.advance(Duration::from_secs(61));
    s.store.run_rules().await.unwrap();
    assert_eq!(derived(&s).await.len(), 1);
    // The same body saved again: a new revision.
    r.revision += 1;
    r.updated_at = s.clock.now_ms();
    assert!(s.store.update_rule(&r).await.unwrap());
    s.store.run_rules().await.unwrap();
    s.advance(Duration::from_secs(61));
    s.store.run_rules().await.unwrap();
    let all = derived(&s).await;
    let codes: Vec<i64> = all.iter().map(|e| e["Code"].as_i64().unwrap()).collect();
    assert_eq!(codes, [1, 2, 1], "{all:?}");
    assert_eq!(all[2]["AdditionalFields"]["Since"], json!(at(r.updated_at)));
    // A stale change (read before this one) is refused.
    assert!(!s.store.update_rule(&r).await.unwrap());
}
