//! System events (DESIGN §11): Heartbeats, SubscriptionFailing / Recovered / Disabled to the
//! tenant's monitoring subscriptions, and auto-disable, with the dispatcher stepped by hand on a
//! clock the test moves.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use switchboard::delivery::signing::{Secret, verify};
use switchboard::store::{DeliveryStatus, SubscriptionRecord};

use crate::support::app::{ADMIN_KEY, agent_event, guid, json_ok};
use crate::support::receiver::{Received, eventually};
use crate::support::stepper::Stepper;
use crate::support::{TestApp, TestReceiver};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// `(Code, body)` of the System events among `got`.
fn system(got: &[Received]) -> Vec<(i64, Value)> {
    got.iter()
        .map(|r| r.json())
        .filter(|e| e["Category"] == 0)
        .map(|e| (e["Code"].as_i64().unwrap(), e))
        .collect()
}

fn codes(got: &[Received]) -> Vec<i64> {
    system(got).into_iter().map(|(c, _)| c).collect()
}

/// A receiver answering whatever `status` holds.
async fn switchable(status: u16) -> (TestReceiver, Arc<AtomicU16>) {
    let status = Arc::new(AtomicU16::new(status));
    let s = status.clone();
    let rx = TestReceiver::with(move |_, _| (s.load(Ordering::SeqCst), Duration::ZERO)).await;
    (rx, status)
}

/// One step, then the clock moves on a little: retries scheduled "at once" are due after the
/// attempt's own duration.
async fn step(t: &mut Stepper) -> usize {
    let n = t.step().await;
    t.advance(secs(0.1));
    n
}

/// Steps until `done` holds; panics after 50 steps.
async fn steps_until(t: &mut Stepper, done: impl Fn() -> bool) {
    for _ in 0..50 {
        if done() {
            return;
        }
        step(t).await;
    }
    panic!("not done after 50 steps");
}

fn monitor_filter(rx: &TestReceiver) -> Value {
    json!({"url": rx.url("/monitor"), "filter": {"events": [{"category": 0}]}})
}

#[tokio::test]
async fn heartbeats_follow_idle_time_carry_the_last_sequence_and_stop_under_traffic() {
    let mut t = Stepper::new().await;
    let rx = TestReceiver::start().await;
    let sub = t
        .subscribe(json!({"url": rx.url("/"), "heartbeat_secs": 1}))
        .await;
    t.publish(&agent_event(&guid(), 1, "jdoe")).await;
    assert_eq!(t.step().await, 1, "the event");
    t.advance(secs(0.5));
    assert_eq!(t.step().await, 0, "not idle long enough");
    t.advance(secs(0.6));
    assert_eq!(t.step().await, 1, "a Heartbeat after a second of nothing");
    let got = rx.received();
    let (code, beat) = &system(&got)[0];
    assert_eq!(*code, 2);
    assert_eq!(beat["AdditionalFields"]["SubscriptionId"], sub.id.as_str());
    assert_eq!(beat["AdditionalFields"]["LastSequence"], 1);
    let secret = Secret::parse(sub.spec.secret.as_deref().unwrap()).unwrap();
    let ts: i64 = got[1].header("webhook-timestamp").parse().unwrap();
    assert!(verify(
        &secret,
        got[1].header("webhook-signature"),
        got[1].header("webhook-id"),
        ts,
        &got[1].body
    ));
    t.advance(secs(1.1));
    assert_eq!(t.step().await, 1, "and again, every second");

    // Steady traffic: none.
    for _ in 0..6 {
        t.advance(secs(0.5));
        t.publish(&agent_event(&guid(), 3, "jdoe")).await;
        assert_eq!(t.step().await, 1);
    }
    assert_eq!(
        codes(&rx.received()),
        [2, 2],
        "no Heartbeat while events flow"
    );
    let log = t
        .store
        .list_events(
            "default",
            &switchboard::store::EventQuery {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(log.len(), 7, "Heartbeats are not in the log");
}

#[tokio::test]
async fn a_heartbeat_is_not_retried() {
    let mut t = Stepper::new().await;
    let (rx, _) = switchable(500).await;
    let sub = t
        .subscribe(json!({"url": rx.url("/"), "heartbeat_secs": 1}))
        .await;
    t.step().await;
    t.advance(secs(1.0));
    assert_eq!(t.step().await, 1);
    t.advance(secs(0.5));
    assert_eq!(t.step().await, 0, "no retry");
    let d = &t.deliveries(&sub).await[0];
    assert_eq!((d.status, d.attempt_count), (DeliveryStatus::Failed, 1));
}

#[tokio::test]
async fn monitors_hear_of_failing_and_recovered_once_each_and_of_a_410() {
    let mut t = Stepper::new().await;
    let (rx, status) = switchable(500).await;
    let monitor_rx = TestReceiver::start().await;
    let bystander_rx = TestReceiver::start().await;
    let sub = t
        .subscribe(json!({"url": rx.url("/a"), "retry_schedule_secs": [0, 0, 0, 0, 0, 0, 0, 0]}))
        .await;
    let monitor = t.subscribe(monitor_filter(&monitor_rx)).await;
    t.subscribe(json!({"url": bystander_rx.url("/b")})).await;
    t.publish(&agent_event(&guid(), 1, "jdoe")).await;
    // Four failures: nothing yet; the fifth: SubscriptionFailing.
    steps_until(&mut t, || rx.received().len() >= 4).await;
    assert!(
        monitor_rx
            .received()
            .iter()
            .all(|r| r.json()["Category"] == 1)
    );
    steps_until(&mut t, || rx.received().len() >= 7).await;
    step(&mut t).await;
    assert_eq!(
        codes(&monitor_rx.received()),
        [3],
        "once per failing period"
    );
    let (_, failing) = &system(&monitor_rx.received())[0];
    let fields = &failing["AdditionalFields"];
    assert_eq!(fields["SubscriptionId"], sub.id.as_str());
    assert_eq!(fields["LastError"], "HTTP 500 Internal Server Error");
    assert_eq!(fields["FailingSince"].as_str().unwrap().len(), 14);

    status.store(200, Ordering::SeqCst);
    step(&mut t).await;
    step(&mut t).await;
    assert_eq!(
        codes(&monitor_rx.received()),
        [3, 5],
        "one SubscriptionRecovered"
    );

    // A 410 disables at once, with its reason.
    let (gone_rx, _) = switchable(410).await;
    let gone = t.subscribe(json!({"url": gone_rx.url("/gone")})).await;
    t.publish(&agent_event(&guid(), 1, "jdoe")).await;
    step(&mut t).await;
    step(&mut t).await;
    let got = system(&monitor_rx.received());
    assert_eq!(got.iter().map(|(c, _)| *c).collect::<Vec<_>>(), [3, 5, 4]);
    assert_eq!(
        got[2].1["AdditionalFields"]["SubscriptionId"],
        gone.id.as_str()
    );
    assert_eq!(
        got[2].1["AdditionalFields"]["Reason"],
        "the endpoint answered 410 Gone"
    );
    assert!(!t.subscription(&gone).await.spec.enabled);
    // Only monitors hear of it, and not of themselves.
    assert!(system(&bystander_rx.received()).is_empty());
    let listed = t.deliveries(&monitor).await;
    assert_eq!(
        listed.iter().filter(|d| d.sequence == 0).count(),
        3,
        "in the monitor's deliveries"
    );
}

/// Auto-disable after `auto_disable_after_secs` of failures with at least 10 attempts, counted
/// across a restart: the failing-since time is durable.
#[tokio::test]
async fn auto_disable_counts_failures_across_a_restart() {
    let mut t = Stepper::with(|o| o.health.disable_after_ms = 3_000).await;
    let (rx, _) = switchable(500).await;
    let monitor_rx = TestReceiver::start().await;
    let sub: SubscriptionRecord = t
        .subscribe(json!({"url": rx.url("/"), "retry_schedule_secs": vec![1; 12]}))
        .await;
    t.subscribe(monitor_filter(&monitor_rx)).await;
    t.publish(&agent_event(&guid(), 1, "jdoe")).await;
    let step = async |t: &mut Stepper| {
        let n = t.step().await;
        t.advance(secs(1.25));
        n
    };
    for _ in 0..6 {
        step(&mut t).await;
    }
    assert_eq!(rx.received().len(), 6);
    assert!(
        t.subscription(&sub).await.spec.enabled,
        "6 attempts are not enough"
    );
    t.restart().await;
    for _ in 0..20 {
        if rx.received().len() >= 10 {
            break;
        }
        step(&mut t).await;
    }
    let rec = t.subscription(&sub).await;
    assert!(
        !rec.spec.enabled,
        "disabled after 10 attempts over more than 3 s"
    );
    assert!(
        rec.disabled_reason
            .as_deref()
            .unwrap()
            .starts_with("failing since "),
        "{:?}",
        rec.disabled_reason
    );
    step(&mut t).await;
    assert_eq!(codes(&monitor_rx.received()), [3, 4]);
    assert_eq!(
        step(&mut t).await,
        0,
        "a disabled subscription gets no attempts"
    );
}

#[tokio::test]
async fn a_user_disabling_a_subscription_tells_the_monitors() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let monitor_rx = TestReceiver::start().await;
    let sub = app.subscribe(json!({"url": rx.url("/")})).await;
    app.subscribe(monitor_filter(&monitor_rx)).await;
    let path = format!(
        "/v1/tenants/default/subscriptions/{}",
        sub["id"].as_str().unwrap()
    );
    let patched = json_ok(
        app.call(
            Method::PATCH,
            &path,
            ADMIN_KEY,
            Some(&json!({"enabled": false})),
        )
        .await,
    )
    .await;
    assert_eq!(patched["disabled_reason"], "disabled by the user");
    let got = monitor_rx.wait_for(1).await;
    let event = got[0].json();
    assert_eq!(
        (event["Category"].clone(), event["Code"].clone()),
        (json!(0), json!(4))
    );
    assert_eq!(event["AdditionalFields"]["Reason"], "disabled by the user");
    assert_eq!(event["AdditionalFields"]["SubscriptionId"], sub["id"]);
    eventually("nothing else", || async {
        (monitor_rx.received().len() == 1).then_some(())
    })
    .await;
}
