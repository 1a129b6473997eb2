//! The circuit breaker (DESIGN §16): after 5 failed attempts in a row a subscription's breaker
//! opens, and only one probe at a time is attempted, each after the next delay of its retry
//! schedule; the first that succeeds closes it and the backlog flows, in order. Stepped, with a
//! clock the test moves.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::TestReceiver;
use crate::support::app::{agent_event, guid};
use crate::support::stepper::Stepper;

/// A receiver that answers 503 until the flag is set, then 200.
async fn down_until() -> (TestReceiver, Arc<AtomicBool>) {
    let up = Arc::new(AtomicBool::new(false));
    let receiving = up.clone();
    let rx = TestReceiver::with(move |_, _| match receiving.load(Ordering::SeqCst) {
        true => (200, Duration::ZERO),
        false => (503, Duration::ZERO),
    })
    .await;
    (rx, up)
}

#[tokio::test]
async fn an_open_breaker_attempts_only_probes_and_the_backlog_then_flows_in_order() {
    let mut t = Stepper::new().await;
    let (rx, up) = down_until().await;
    let sub = t
        .subscribe(
            json!({"url": rx.url("/"), "ordering": "per_agent", "max_in_flight": 4,
                          "retry_schedule_secs": [10, 20, 40]}),
        )
        .await;
    // 1,000 pending: 20 agents, 50 events each, interleaved.
    let events: Vec<Value> = (0..1000)
        .map(|i| agent_event(&guid(), 3, &format!("agent{:02}", i % 20)))
        .collect();
    for chunk in events.chunks(250) {
        t.publish(&Value::Array(chunk.to_vec())).await;
    }

    // The receiver is down: attempts fail until the breaker opens (5 in a row; the attempts
    // in flight when it does fail too).
    let mut steps = 0;
    loop {
        t.step().await;
        steps += 1;
        let b = t.store.breakers(&[sub.id.as_str()]).await.unwrap();
        if b.get(&sub.id).is_some_and(|b| b.probe_at.is_some()) {
            break;
        }
        assert!(steps < 10, "the breaker opens");
    }
    let opened = rx.received().len();
    assert!(
        (5..=8).contains(&opened),
        "{opened} attempts before it opened"
    );
    let breaker = t.store.breakers(&[sub.id.as_str()]).await.unwrap()[&sub.id].clone();
    assert_eq!(breaker.failures as usize, opened);
    assert!(breaker.last_error.is_some());

    // Open for ten minutes of the clock, stepped every 5 s: only probes, one at a time, the
    // n-th after the n-th delay of the schedule (10 s, 20 s, then 40 s repeating).
    let mut probes = 0;
    for _ in 0..120 {
        t.advance(Duration::from_secs(5));
        let made = t.step().await;
        assert!(made <= 1, "one probe at a time, not {made}");
        probes += made;
    }
    assert_eq!(rx.received().len(), opened + probes);
    assert!(
        (15..=17).contains(&probes),
        "after 10 s, 20 s, then every 40 s for 600 s: 16, not {probes}"
    );
    let pending: i64 = t
        .deliveries(&sub)
        .await
        .iter()
        .map(|d| d.attempt_count)
        .sum();
    assert_eq!(
        pending as usize,
        opened + probes,
        "the waiting deliveries spent no attempts"
    );

    // The receiver is back: the next probe succeeds, the breaker closes, everything arrives,
    // each agent's events in order.
    up.store(true, Ordering::SeqCst);
    let before = rx.received().len();
    t.advance(Duration::from_secs(3600));
    let mut rounds = 0;
    while t.step().await > 0 {
        rounds += 1;
        assert!(rounds < 2000);
    }
    let breakers = t.store.breakers(&[sub.id.as_str()]).await.unwrap();
    assert!(!breakers.contains_key(&sub.id), "closed: {breakers:?}");
    let got = rx.received();
    let delivered: Vec<Value> = got[before..].iter().map(|r| r.json()).collect();
    let mut seen = std::collections::HashSet::new();
    let mut per_agent: HashMap<String, Vec<String>> = HashMap::new();
    for e in &delivered {
        let id = e["Id"].as_str().unwrap().to_string();
        if seen.insert(id.clone()) {
            let agent = e["AdditionalFields"]["Username"]
                .as_str()
                .unwrap()
                .to_string();
            per_agent.entry(agent).or_default().push(id);
        }
    }
    assert_eq!(seen.len(), 1000, "every event arrives");
    for (i, agent) in (0..20).map(|i| (i, format!("agent{i:02}"))) {
        let want: Vec<String> = events
            .iter()
            .skip(i)
            .step_by(20)
            .map(|e| e["Id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(per_agent[&agent], want, "{agent} in order");
    }
}

#[tokio::test]
async fn the_api_shows_the_breaker_and_a_successful_test_closes_it() {
    let app = crate::support::TestApp::spawn().await;
    let (rx, up) = down_until().await;
    let sub = app
        .subscribe(json!({"url": rx.url("/"), "retry_schedule_secs": [600]}))
        .await;
    assert_eq!(
        sub["health"],
        json!({"state": "healthy", "failing_since": null, "last_error": null,
               "next_probe_at": null})
    );
    let id = sub["id"].as_str().unwrap();
    let path = format!("/v1/tenants/default/subscriptions/{id}");
    let events: Vec<Value> = (0..6)
        .map(|i| agent_event(&guid(), 1, &format!("u{i}")))
        .collect();
    app.publish_ok("default", &Value::Array(events)).await;
    let open = crate::support::receiver::eventually("the breaker to open", || async {
        let got =
            crate::support::app::json_ok(app.get(&path, crate::support::app::ADMIN_KEY).await)
                .await;
        (got["health"]["state"] == "open").then_some(got)
    })
    .await;
    assert!(open["health"]["failing_since"].is_string());
    assert!(open["health"]["next_probe_at"].is_string());
    assert!(
        open["health"]["last_error"]
            .as_str()
            .unwrap()
            .contains("503"),
        "{open}"
    );

    up.store(true, Ordering::SeqCst);
    let r = app.act(&sub, "test", None).await;
    assert_eq!(r.json::<Value>().await.unwrap()["delivered"], true);
    let got =
        crate::support::app::json_ok(app.get(&path, crate::support::app::ADMIN_KEY).await).await;
    assert_eq!(got["health"]["state"], "healthy", "{got}");
}

#[tokio::test]
async fn changing_a_subscription_starts_its_breaker_over() {
    let mut t = Stepper::new().await;
    let (rx, up) = down_until().await;
    let sub = t
        .subscribe(json!({"url": rx.url("/"), "retry_schedule_secs": [600]}))
        .await;
    let events: Vec<Value> = (0..8)
        .map(|i| agent_event(&guid(), 1, &format!("u{i}")))
        .collect();
    t.publish(&Value::Array(events)).await;
    t.step().await;
    assert!(t.store.open_breakers().await.unwrap().contains_key(&sub.id));
    // A PATCH (here: a new description) starts its health over, breaker included.
    let mut changed = t.subscription(&sub).await;
    changed.spec.description = "fixed".into();
    t.store.update_subscription(&changed).await.unwrap();
    assert!(t.store.open_breakers().await.unwrap().is_empty());
    assert!(
        t.store
            .breakers(&[sub.id.as_str()])
            .await
            .unwrap()
            .is_empty()
    );
    // Its retries come due (10 min later), the receiver is back: all of them go out at once.
    up.store(true, Ordering::SeqCst);
    t.advance(Duration::from_secs(800));
    let before = rx.received().len();
    while t.step().await > 0 {}
    assert_eq!(rx.received().len() - before, 8);
}
