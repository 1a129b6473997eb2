//! Intervals for WFM (DESIGN §18): a shift cut into quarter hours, a late event revising exactly
//! the intervals it changes and found with `changed_since_sequence`, paging, and bad input.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::TestApp;
use crate::support::app::{ADMIN_KEY, fields_named, guid, json_ok, problem};
use crate::support::db::OldDb;
use crate::support::stepper::Stepper;

fn ev(code: u32, at: &str, extra: Value) -> Value {
    ev_of("alice", code, at, extra)
}

fn ev_of(who: &str, code: u32, at: &str, extra: Value) -> Value {
    let mut fields = json!({"SessionId": "S-1", "SessionType": "CCA", "Username": who,
                            "PhoneNo": "+15551230001"});
    fields
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({"Id": guid(), "CreationDateUtc": at, "Category": 1, "Code": code,
           "AdditionalFields": fields})
}

const WINDOW: &str = "since=20261201080000&until=20261201100000";

async fn intervals(app: &TestApp, query: &str) -> Value {
    json_ok(
        app.get(
            &format!("/v1/tenants/default/agents/intervals?{query}"),
            ADMIN_KEY,
        )
        .await,
    )
    .await
}

/// `(start, revision, signed_in_secs, on_work_item_secs, by_activity)` of each interval.
fn rows(page: &Value) -> Vec<(String, u64, u64, u64, Value)> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["start"].as_str().unwrap().to_string(),
                i["revision"].as_u64().unwrap(),
                i["signed_in_secs"].as_u64().unwrap(),
                i["on_work_item_secs"].as_u64().unwrap(),
                i["by_activity"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_shift_in_quarter_hours_and_a_late_event_that_revises_it() {
    let app = TestApp::spawn().await;
    let item = json!({"WorkItemId": "W-1", "WorkItemType": "Voice"});
    // One commit: signed in 08:10, Available 08:20, a work item 08:25–08:40, break from 08:50.
    app.publish_ok(
        "default",
        &json!([
            ev(1, "20261201081000", json!({})),
            ev(
                3,
                "20261201082000",
                json!({"ActivityCode": 16, "AvailabilityCode": 1, "ActivityName": ""})
            ),
            ev(4, "20261201082500", item.clone()),
            ev(5, "20261201082510", item.clone()),
            ev(8, "20261201084000", item.clone()),
            ev(
                3,
                "20261201085000",
                json!({"ActivityCode": 34, "AvailabilityCode": 0, "ActivityName": ""})
            ),
        ]),
    )
    .await;
    let first = intervals(&app, WINDOW).await;
    assert_eq!(first["as_of_sequence"], 6);
    let s = |t: &str| format!("2026120108{t}00");
    let b = |t: &str| format!("2026120109{t}00");
    // Received after every interval had ended (a backfill): each one's revision is 1.
    assert_eq!(
        rows(&first),
        [
            (s("00"), 1, 300, 0, json!({"unknown": 300})),
            (s("15"), 1, 900, 300, json!({"16": 600, "unknown": 300})),
            (s("30"), 1, 900, 600, json!({"16": 900})),
            (s("45"), 1, 900, 0, json!({"16": 300, "34": 600})),
            (b("00"), 1, 900, 0, json!({"34": 900})),
            (b("15"), 1, 900, 0, json!({"34": 900})),
            (b("30"), 1, 900, 0, json!({"34": 900})),
            (b("45"), 1, 900, 0, json!({"34": 900})),
        ]
    );
    let quarter = &first["data"][1];
    assert_eq!(quarter["username"], "alice");
    assert_eq!(quarter["size_secs"], 900);
    assert_eq!(
        quarter["work_items"],
        json!({"received": 1, "accepted": 1, "declined": 0, "released": 0})
    );

    // Late: she signed out at 09:05. Only the intervals it changes are revised, and only they
    // come back for an incremental load from the last answer's as_of_sequence (emptied ones
    // with no time left).
    app.publish_ok(
        "default",
        &json!([ev(2, "20261201090500", json!({"ExitCode": 0}))]),
    )
    .await;
    let changed = intervals(&app, &format!("{WINDOW}&changed_since_sequence=6")).await;
    assert_eq!(changed["as_of_sequence"], 7);
    assert_eq!(
        rows(&changed),
        [
            (b("00"), 2, 300, 0, json!({"34": 300})),
            (b("15"), 2, 0, 0, json!({})),
            (b("30"), 2, 0, 0, json!({})),
            (b("45"), 2, 0, 0, json!({})),
        ]
    );
    let all = intervals(&app, WINDOW).await;
    assert_eq!(
        rows(&all)[..4],
        rows(&first)[..4],
        "the earlier ones unchanged"
    );
    let none = intervals(&app, &format!("{WINDOW}&changed_since_sequence=7")).await;
    assert_eq!(none["data"], json!([]));

    // Half hours: the same time, cut in two. A full load leaves out the half hour the late
    // sign-out emptied (no signed-in time); an incremental one brings it, revised, at zero.
    let halves = intervals(&app, &format!("{WINDOW}&size=1800")).await;
    let secs: Vec<u64> = rows(&halves).iter().map(|r| r.2).collect();
    assert_eq!(secs, [1200, 1800, 300]);
    let halves = intervals(
        &app,
        &format!("{WINDOW}&size=1800&changed_since_sequence=0"),
    )
    .await;
    let secs: Vec<(u64, u64)> = rows(&halves).iter().map(|r| (r.1, r.2)).collect();
    assert_eq!(secs, [(1, 1200), (1, 1800), (2, 300), (2, 0)]);

    // Pages of three, walked with next_after, hold the same intervals.
    let mut walked = Vec::new();
    let mut after = String::new();
    loop {
        let page = intervals(&app, &format!("{WINDOW}&limit=3{after}")).await;
        walked.extend(rows(&page));
        match page["next_after"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(walked, rows(&all));
    let one = intervals(&app, &format!("{WINDOW}&username=bob")).await;
    assert_eq!(one["data"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn an_interval_still_open_at_the_last_load_comes_back_as_time_goes_on() {
    let app = TestApp::spawn().await;
    let stamp = |secs: i64| switchboard::event::Timestamp::from_unix_ms(secs * 1000).to_string();
    let now = switchboard::event::Timestamp::now().to_unix_ms() / 1000;
    // Signed in a minute ago, nothing since: the current interval grows with time alone.
    app.publish_ok("default", &json!([ev(1, &stamp(now - 60), json!({}))]))
        .await;
    let window = format!("since={}&until={}", stamp(now - 3600), stamp(now + 3600));
    let full = intervals(&app, &window).await;
    let last = full["data"].as_array().unwrap().last().unwrap().clone();
    let n = full["as_of_sequence"].as_i64().unwrap();
    assert_eq!(n, 1);
    // No event since sequence 1, but the interval open when it was received may have grown.
    let again = intervals(&app, &format!("{window}&changed_since_sequence={n}")).await;
    let starts: Vec<&Value> = again["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["start"])
        .collect();
    assert!(starts.contains(&&last["start"]), "{again}");
    app.stop().await;
}

#[tokio::test]
async fn bad_interval_requests_are_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    for (query, field) in [
        ("since=20261201080000&until=20261201100000&size=600", "size"),
        ("until=20261201100000", "since"),
        ("since=20261201080000", "until"),
        ("since=20261201080000&until=20261201070000", "until"),
        ("since=20261101080000&until=20261203080000", "until"),
        ("since=2026120108&until=20261201100000", "since"),
        (
            "since=20261201080000&until=20261201100000&after=nope",
            "after",
        ),
        ("since=20261201080000&until=20261201100000&limit=0", "limit"),
        (
            "since=20261201080000&until=20261201100000&username=bob&after=alice@20261201080000",
            "after",
        ),
        (
            "since=20261201080000&until=20261201100000&changed_since_sequence=-1",
            "changed_since_sequence",
        ),
    ] {
        let r = app
            .get(
                &format!("/v1/tenants/default/agents/intervals?{query}"),
                ADMIN_KEY,
            )
            .await;
        let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields_named(&p), [field], "{query}: {p}");
    }
    app.stop().await;
}

/// Three agents' day, in commits of one event each, some a few hours late: hours kept as rows,
/// tails still going, revisions.
async fn a_day(app: &TestApp) {
    let status =
        |code: i64| json!({"ActivityCode": code, "AvailabilityCode": 0, "ActivityName": ""});
    let item = json!({"WorkItemId": "W-1", "WorkItemType": "Voice"});
    for events in [
        vec![
            ev_of("alice", 1, "20261201071000", json!({})),
            ev_of("alice", 3, "20261201072000", status(16)),
            ev_of("alice", 4, "20261201084000", item.clone()),
            ev_of("alice", 5, "20261201084010", item.clone()),
            ev_of("alice", 8, "20261201101500", item.clone()),
            ev_of("alice", 3, "20261201120000", status(34)),
            ev_of("alice", 2, "20261201153000", json!({"ExitCode": 0})),
        ],
        vec![
            ev_of("bob", 1, "20261201090000", json!({})),
            ev_of("bob", 3, "20261201093000", status(36)),
        ],
        vec![
            ev_of("carol", 1, "20261201060000", json!({})),
            ev_of("carol", 2, "20261201061500", json!({"ExitCode": 0})),
            ev_of("carol", 1, "20261201130000", json!({})),
        ],
    ] {
        for e in events {
            app.publish_ok("default", &json!([e])).await;
        }
    }
}

/// Every size of the day's intervals, full and incremental from sequence 3.
async fn answers(app: &TestApp) -> Vec<Value> {
    let mut out = Vec::new();
    for size in [900, 1800, 3600] {
        for more in ["", "&changed_since_sequence=3"] {
            let query = format!("since=20261201000000&until=20261202000000&size={size}{more}");
            let mut page = intervals(app, &query).await;
            page.as_object_mut().unwrap().remove("as_of_sequence");
            out.push(page);
        }
    }
    out
}

/// The projection is stored, not kept in memory: the same answers after a restart, after its
/// tables are emptied (a log written before it existed: folded again from the start), and — on
/// PostgreSQL — from a second node.
#[tokio::test]
async fn the_projection_survives_restarts_refolds_an_old_log_and_serves_every_node() {
    let app = TestApp::spawn().await;
    a_day(&app).await;
    let before = answers(&app).await;
    let quarters = before[0]["data"].as_array().unwrap();
    assert!(quarters.len() > 30, "{}", quarters.len());
    let hours = before[4]["data"].as_array().unwrap();
    let of = |who: &str| {
        hours
            .iter()
            .filter(|i| i["username"] == who)
            .map(|i| i["signed_in_secs"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    // Alice from 07:10 to 15:30; Carol from 06:00 to 06:15, and from 13:00 on (still signed in).
    assert_eq!(
        of("alice"),
        [3000, 3600, 3600, 3600, 3600, 3600, 3600, 3600, 1800]
    );
    assert_eq!(of("carol")[..3], [900, 3600, 3600]);
    assert_eq!(of("carol").len(), 12, "06:00, then 13:00 to midnight");
    if !app.data.database_url().is_empty() {
        let node = app.second_node().await;
        assert_eq!(answers(&node).await, before, "a second node");
        node.stop().await;
    }
    let data = app.stop().await;
    let app = TestApp::spawn_in(data).await;
    assert_eq!(answers(&app).await, before, "after a restart");
    let data = app.stop().await;
    let mut db = OldDb::latest(&data).await;
    db.exec("DELETE FROM agent_hours").await;
    db.exec("DELETE FROM agent_tails").await;
    db.exec("UPDATE tenants SET intervals_through = 0").await;
    db.close().await;
    let app = TestApp::spawn_in(data).await;
    assert_eq!(answers(&app).await, before, "folded again from the log");
    app.stop().await;
}

/// Retention purges the hours that ended before its cutoff with the events, and reads from
/// before it are refused; what is after it stays.
#[tokio::test]
async fn retention_purges_old_hours_and_refuses_reads_from_before() {
    use std::time::Duration;
    use switchboard::agent::intervals::Window;
    use switchboard::agent::intervals::kept::Empty;
    use switchboard::event::Timestamp;
    use switchboard::store::IntervalFilter;
    let t = Stepper::new().await;
    let t0 = t.clock.now_ms() / 1000;
    let stamp = |secs: i64| Timestamp::from_unix_ms(secs * 1000).to_string();
    // Signed in three days ago, a status every day since, each sent as it happened.
    for day in 0..3 {
        let at = t.clock.now_ms() / 1000;
        let code = if day == 0 { 1 } else { 3 };
        let e = ev(
            code,
            &stamp(at),
            json!({"ActivityCode": 16 + day, "AvailabilityCode": 1, "ActivityName": ""}),
        );
        t.publish(&json!([e])).await;
        t.advance(Duration::from_secs(86_400));
    }
    let now = t.clock.now_ms() / 1000;
    let window = Window::new(t0 - 3600, now, 3600, now);
    let filter = IntervalFilter {
        empty: Empty::Left,
        changed_since: None,
    };
    let read = || t.store.agent_intervals("default", "alice", window, filter);
    let (through, kept_from) = t.store.intervals_through("default").await.unwrap();
    assert_eq!((through, kept_from), (3, 0));
    let all = read().await.unwrap();
    assert!(all.len() > 60, "{}", all.len());
    // Retention of a day and a half: the first two events go, and the hours they made — up to
    // the hour of the third event, which it changed too.
    let cutoff = t0 + 3 * 86_400 / 2;
    let purged = t.store.purge(cutoff * 1000).await.unwrap();
    assert_eq!(purged.events, 2);
    let (_, kept_from) = t.store.intervals_through("default").await.unwrap();
    assert_eq!(kept_from, (t0 + 2 * 86_400).div_euclid(3600) * 3600);
    let left = read().await.unwrap();
    let start = |i: &switchboard::agent::intervals::AgentInterval| i.start.to_unix_ms() / 1000;
    assert!(left.iter().all(|i| start(i) >= kept_from));
    let kept: Vec<_> = all
        .iter()
        .filter(|i| start(i) >= kept_from)
        .cloned()
        .collect();
    assert_eq!(left, kept, "the hours after the cutoff stay as they were");
}

/// A tenant's projection starts with its first read of intervals: before, the writer's tick
/// folds nothing of its log (ingest pays nothing for it); after, the tick keeps it up.
#[tokio::test]
async fn the_projection_starts_with_the_first_read() {
    let t = Stepper::new().await;
    t.publish(&json!([ev(1, "20261201080000", json!({}))]))
        .await;
    t.store.run_rules().await.unwrap();
    let t = &t;
    let count = |table: &'static str| async move {
        let mut db = t.db().await;
        let n = db
            .text(&format!("SELECT CAST(COUNT(*) AS TEXT) FROM {table}"))
            .await;
        db.close().await;
        n
    };
    assert_eq!(count("agent_tails").await, "0", "not kept before a read");
    let (through, _) = t.store.intervals_through("default").await.unwrap();
    assert_eq!(through, 1);
    assert_eq!(count("agent_tails").await, "1");
    // From then on the tick folds what comes, without a read.
    t.publish(&json!([ev(
        3,
        "20261201100000",
        json!({"ActivityCode": 16, "AvailabilityCode": 1, "ActivityName": ""})
    )]))
    .await;
    t.store.run_rules().await.unwrap();
    let mut db = t.db().await;
    let hours = db
        .text("SELECT CAST(COUNT(*) AS TEXT) FROM agent_hours")
        .await;
    let kept = db
        .text("SELECT CAST(intervals_through AS TEXT) FROM tenants WHERE id = 'default'")
        .await;
    db.close().await;
    assert_eq!(
        (hours.as_str(), kept.as_str()),
        ("2", "2"),
        "08:00 and 09:00 kept"
    );
}

/// A page reads only as many agents as it needs (and the agent a cursor stopped in only from
/// there): walked in pages of every size, twenty agents of different lengths answer exactly as
/// one page does.
#[tokio::test]
async fn pages_of_any_size_over_many_agents_hold_the_whole_answer() {
    let app = TestApp::spawn().await;
    let mut batch = Vec::new();
    for n in 0..20 {
        let who = format!("agent{n:02}");
        // Signed in from 08:00 for n × 5 minutes (agent00: a sign-in and out at once).
        batch.push(ev_of(&who, 1, "20261201080000", json!({})));
        let out = 8 * 3600 + n * 300;
        let at = format!("20261201{:02}{:02}00", out / 3600, out % 3600 / 60);
        batch.push(ev_of(&who, 2, &at, json!({"ExitCode": 0})));
    }
    app.publish_ok("default", &json!(batch)).await;
    let whole = intervals(&app, &format!("{WINDOW}&size=900&limit=10000")).await;
    let all: Vec<(String, String)> = whole["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["username"].to_string(), i["start"].to_string()))
        .collect();
    assert!(all.len() > 40, "{}", all.len());
    for limit in [1, 2, 3, 5, 7, 13, 50] {
        let mut walked = Vec::new();
        let mut after = String::new();
        loop {
            let page = intervals(&app, &format!("{WINDOW}&size=900&limit={limit}{after}")).await;
            let data = page["data"].as_array().unwrap();
            walked.extend(
                data.iter()
                    .map(|i| (i["username"].to_string(), i["start"].to_string())),
            );
            assert!(data.len() <= limit);
            match page["next_after"].as_str() {
                Some(next) => after = format!("&after={next}"),
                None => break,
            }
        }
        assert_eq!(walked, all, "pages of {limit}");
    }
    app.stop().await;
}
