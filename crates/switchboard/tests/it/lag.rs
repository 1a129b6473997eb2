//! Lag (DESIGN §16): every subscription's `lag` (pending deliveries, the age of the oldest) as
//! the API shows it, and the lagging episodes of one with `lag_budget_secs` — told once each,
//! with a clock the test moves.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard::lag;
use switchboard::store::DeliveryStatus;
use switchboard::subscription::health::Notice;

use crate::support::TestReceiver;
use crate::support::app::{ADMIN_KEY, TestApp, agent_event, guid, json_ok, problem};
use crate::support::stepper::Stepper;

fn batch(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| agent_event(&guid(), 1, &format!("agent{i}")))
            .collect(),
    )
}

#[tokio::test]
async fn each_lagging_episode_is_told_once_and_its_end_too() {
    let mut t = Stepper::new().await;
    let monitor = t
        .subscribe(json!({"url": "http://127.0.0.1:9/", "enabled": false,
                          "filter": {"events": [{"category": 0}]}}))
        .await;
    let monitor_on = t
        .subscribe(json!({"url": "http://127.0.0.1:9/", "filter": {"events": [{"category": 0}]}}))
        .await;
    let rx = TestReceiver::with(|_, _| (200, Duration::ZERO)).await;
    let sub = t
        .subscribe(json!({"url": rx.url("/"), "lag_budget_secs": 60,
                          "filter": {"events": [{"category": 1}]}}))
        .await;
    let start = t.clock.now_ms();
    t.publish(&batch(10)).await;

    // The receiver is not reached (the dispatcher is not stepped): the lag grows with the clock.
    t.advance(Duration::from_secs(30));
    let lags = t
        .store
        .lags(&[sub.id.as_str()], t.clock.now_ms())
        .await
        .unwrap();
    assert_eq!(lags[&sub.id].pending, 10);
    assert_eq!(
        t.clock.now_ms() - lags[&sub.id].oldest_since.unwrap(),
        30_000
    );
    assert!(
        lag::check(&t.store, t.clock.now_ms())
            .await
            .unwrap()
            .is_empty(),
        "within budget"
    );

    t.advance(Duration::from_secs(31));
    let sent = lag::check(&t.store, t.clock.now_ms()).await.unwrap();
    assert_eq!(
        sent,
        [(
            sub.id.clone(),
            Notice::Lagging {
                oldest_pending_age_secs: 61,
                pending: 10
            }
        )]
    );
    t.advance(Duration::from_secs(60));
    assert!(
        lag::check(&t.store, t.clock.now_ms())
            .await
            .unwrap()
            .is_empty(),
        "no repeat within the episode"
    );

    // The receiver is reached: caught up, once.
    while t.step().await > 0 {}
    assert_eq!(rx.received().len(), 10);
    let sent = lag::check(&t.store, t.clock.now_ms()).await.unwrap();
    let lagged = (t.clock.now_ms() - start - 61_000) / 1000;
    assert_eq!(
        sent,
        [(
            sub.id.clone(),
            Notice::CaughtUp {
                lagged_secs: lagged
            }
        )]
    );
    assert!(
        lag::check(&t.store, t.clock.now_ms())
            .await
            .unwrap()
            .is_empty()
    );

    // The enabled monitor was told, by System events 6 and 7 (delivered like any: here to a
    // port nobody listens on, so still pending); a disabled one is told nothing.
    let told: Vec<_> = t
        .deliveries(&monitor_on)
        .await
        .into_iter()
        .filter(|d| d.status == DeliveryStatus::Pending)
        .collect();
    assert_eq!(told.len(), 2, "{told:?}");
    assert!(t.deliveries(&monitor).await.is_empty());

    // A new episode is a new notice.
    t.publish(&batch(1)).await;
    t.advance(Duration::from_secs(61));
    let sent = lag::check(&t.store, t.clock.now_ms()).await.unwrap();
    assert!(
        matches!(sent[..], [(_, Notice::Lagging { pending: 1, .. })]),
        "{sent:?}"
    );
}

#[tokio::test]
async fn every_subscription_shows_its_lag_as_it_is() {
    let app = TestApp::spawn().await;
    let sub = app
        .subscribe(json!({"url": "http://127.0.0.1:9/", "enabled": false}))
        .await;
    let id = sub["id"].as_str().unwrap();
    assert_eq!(
        sub["lag"],
        json!({"pending": 0, "oldest_pending_age_ms": 0})
    );
    assert_eq!(sub["lag_budget_secs"], Value::Null);

    // A disabled subscription's backlog counts: a replay makes its deliveries wait.
    let sent = Instant::now();
    app.publish_ok("default", &batch(5)).await;
    let published = Instant::now();
    let r = app
        .act(&sub, "replay", Some(&json!({"since": "20200101000000"})))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let got = json_ok(
        app.get(
            &format!("/v1/tenants/default/subscriptions/{id}"),
            ADMIN_KEY,
        )
        .await,
    )
    .await;
    let answered = Instant::now();
    assert_eq!(got["lag"]["pending"], 5);
    // Requeued by the replay, after the events were published: at most since the publish began,
    // and at least the 300 ms slept, within 100 ms.
    let age = got["lag"]["oldest_pending_age_ms"].as_u64().unwrap() as u128;
    assert!(age <= (answered - sent).as_millis() + 100, "{age}");
    assert!(
        age + 100 >= (asked - published).as_millis().min(300),
        "{age}"
    );
    let listed = json_ok(
        app.get("/v1/tenants/default/subscriptions", ADMIN_KEY)
            .await,
    )
    .await;
    assert_eq!(listed["data"][0]["lag"]["pending"], 5);

    let r = app
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/tenants/default/subscriptions/{id}"),
            ADMIN_KEY,
            Some(&json!({"lag_budget_secs": 0})),
        )
        .await;
    let bad = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(bad["errors"][0]["field"], "lag_budget_secs");
    let r = app
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/tenants/default/subscriptions/{id}"),
            ADMIN_KEY,
            Some(&json!({"lag_budget_secs": 1})),
        )
        .await;
    assert_eq!(json_ok(r).await["lag_budget_secs"], 1);
    // The watcher (every second) sets the gauge of a subscription with a budget.
    crate::support::receiver::eventually("the lag gauge", || async {
        let metrics = app.metrics().await;
        metrics
            .lines()
            .any(|l| l.starts_with("switchboard_subscription_lag_seconds") && l.contains(id))
            .then_some(())
    })
    .await;
}
