//! `GET /metrics`: Prometheus text with what the process counted and what the database holds.
//! Counters are per process and the suite runs many servers in one, so they are checked as
//! lower bounds; the gauges come from this server's own database and are exact.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::app::{agent_event, guid};
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
        "switchboard_delivery_attempts_total{outcome=\"succeeded\"}",
        3.0,
    );
    at_least(
        "switchboard_delivery_attempts_total{outcome=\"retrying\"}",
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
