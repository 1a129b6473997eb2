//! `GET /metrics`: Prometheus text with what the process counted and what the database holds.
//! Counters are per process and the suite runs many servers in one, so they are checked as
//! lower bounds; the gauges come from this server's own database and are exact.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::app::{agent_event, guid};
use crate::support::db::TestData;
use crate::support::process::Server;
use crate::support::receiver::eventually;
use crate::support::{TestApp, TestReceiver};

/// The value of the sample named exactly `series` (name and labels), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test]
async fn metrics_count_ingest_attempts_latency_and_show_pending_and_subscriptions() {
    let app = TestApp::spawn().await;
    let ok = TestReceiver::start().await;
    let down = TestReceiver::with(|_, _| (503, Duration::ZERO)).await;
    let sub_ok = app.subscribe(json!({"url": ok.url("/")})).await;
    // One attempt, then a retry an hour away: its deliveries stay pending.
    let sub_down = app
        .subscribe(json!({"url": down.url("/"), "retry_schedule_secs": [3600]}))
        .await;
    app.subscribe(json!({"url": ok.url("/"), "enabled": false}))
        .await;
    for _ in 0..3 {
        app.publish_ok("default", &agent_event(&guid(), 1, "jdoe"))
            .await;
    }
    ok.wait_for(3).await;
    down.wait_for(3).await;
    // Outcomes are counted before they are written back; once the log shows them, they are in.
    for (sub, state) in [(&sub_ok, "succeeded"), (&sub_down, "pending")] {
        let id = sub["id"].as_str().unwrap();
        eventually("the attempts to be recorded", || async {
            let done = app.deliveries(id, Some(state)).await;
            (done.len() == 3 && done.iter().all(|d| d["attempt_count"] == 1)).then_some(())
        })
        .await;
    }

    // No key needed.
    let r = reqwest::get(app.url("/metrics")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    let at_least = |series: &str, n: f64| {
        let v = sample(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        assert!(v >= n, "{series} = {v}, expected at least {n}");
    };
    at_least("switchboard_events_ingested_total", 3.0);
    at_least(
        "switchboard_delivery_attempts_total{outcome=\"succeeded\",destination=\"http\"}",
        3.0,
    );
    at_least(
        "switchboard_delivery_attempts_total{outcome=\"retrying\",destination=\"http\"}",
        3.0,
    );
    at_least("switchboard_attempt_duration_seconds_count", 6.0);
    at_least("switchboard_delivery_latency_seconds_count", 3.0);
    at_least(
        "switchboard_delivery_latency_seconds_bucket{le=\"+Inf\"}",
        3.0,
    );
    assert!(text.contains("# TYPE switchboard_delivery_latency_seconds histogram"));
    assert_eq!(sample(&text, "switchboard_deliveries_pending"), Some(3.0));
    assert_eq!(
        sample(&text, "switchboard_subscriptions{state=\"enabled\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "switchboard_subscriptions{state=\"disabled\"}"),
        Some(1.0)
    );
}

/// The API's Test action attempts through the same path as the dispatcher: its attempt is
/// counted in `/metrics` and a refusal is logged, like any other. In a server process of its
/// own, where nothing else attempts anything, so the counts are exact.
#[tokio::test]
async fn the_test_action_is_counted_and_logged_like_any_attempt() {
    let data = TestData::new().await;
    let (server, logs) = Server::start_logged(&data);
    let refusing = TestReceiver::with(|_, _| (503, Duration::ZERO)).await;
    let client = reqwest::Client::new();
    let subs = "/v1/tenants/default/subscriptions";
    // One attempt, then a retry an hour away: only the Test action attempts anything.
    let body = json!({"url": refusing.url("/"), "retry_schedule_secs": [3600]});
    let sub: serde_json::Value = server
        .post(&client, subs, &body)
        .await
        .json()
        .await
        .unwrap();
    let id = sub["id"].as_str().unwrap();
    let r = server
        .post(&client, &format!("{subs}/{id}/test"), &json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let outcome: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (&outcome["delivered"], &outcome["status_code"]),
        (&json!(false), &json!(503))
    );

    let text = server.get_text(&client, "/metrics").await;
    assert_eq!(
        sample(
            &text,
            "switchboard_delivery_attempts_total{outcome=\"retrying\",destination=\"http\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "switchboard_attempt_duration_seconds_count"),
        Some(1.0),
        "{text}"
    );
    eventually("the refusal to be logged", || async {
        let lines = logs.matching(&["receiver refused a delivery", id, "503"]);
        (lines.len() == 1).then_some(())
    })
    .await;
}
