//! Intervals for WFM (DESIGN §18): a shift cut into quarter hours, a late event revising exactly
//! the intervals it changes and found with `changed_since_sequence`, paging, and bad input.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::TestApp;
use crate::support::app::{ADMIN_KEY, fields_named, guid, json_ok, problem};

fn ev(code: u32, at: &str, extra: Value) -> Value {
    let mut fields = json!({"SessionId": "S-1", "SessionType": "CCA", "Username": "alice",
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
