//! Batched HTTP delivery (DESIGN §17): JSON arrays in sequence order, one signature, all or
//! nothing, retried whole, and `per_agent` order held across batches.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use switchboard::delivery::signing::{Secret, verify};

use crate::support::app::{ADMIN_KEY, agent_event, guid, problem};
use crate::support::receiver::Received;
use crate::support::stepper::Stepper;
use crate::support::{TestApp, TestReceiver};

const SUBS: &str = "/v1/tenants/default/subscriptions";

/// The events of a batch, checked: its signature over the array, its headers.
fn members(r: &Received, secret: &Secret) -> Vec<Value> {
    let id = r.header("webhook-id");
    assert!(id.starts_with("batch_"), "{id}");
    let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
    assert!(
        verify(secret, r.header("webhook-signature"), id, ts, &r.body),
        "the batch's signature"
    );
    let events = r.json().as_array().expect("a JSON array").clone();
    assert_eq!(r.header("switchboard-batch-size"), events.len().to_string());
    events
}

#[tokio::test]
async fn ten_thousand_events_in_batches_of_a_hundred_each_once_in_sequence_order() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let sub = app
        .subscribe(json!({"url": rx.url("/batches"),
                          "batch": {"max_events": 100, "max_wait_ms": 200}}))
        .await;
    assert_eq!(sub["batch"], json!({"max_events": 100, "max_wait_ms": 200}));
    let secret = Secret::parse(sub["secret"].as_str().unwrap()).unwrap();
    let mut sent = Vec::new();
    for round in 0..10 {
        let batch: Vec<Value> = (0..1000)
            .map(|i| agent_event(&guid(), 3, &format!("a{}", (round * 1000 + i) % 50)))
            .collect();
        sent.extend(app.publish_ok("default", &Value::Array(batch)).await);
    }
    let got = rx
        .wait_until(
            |r| {
                r.iter()
                    .map(|r| r.json().as_array().map_or(0, Vec::len))
                    .sum::<usize>()
                    >= 10_000
            },
            "10,000 events in batches",
        )
        .await;
    // Each event's sequence, from the log (the events themselves do not carry it).
    let sequence: HashMap<String, i64> = app
        .all_events("default")
        .await
        .iter()
        .map(|item| {
            (
                item["event"]["Id"].as_str().unwrap().to_owned(),
                item["sequence"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut ids = HashSet::new();
    for r in &got {
        let events = members(r, &secret);
        assert!(events.len() <= 100);
        let seqs: Vec<i64> = events
            .iter()
            .map(|e| sequence[e["Id"].as_str().unwrap()])
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in sequence order");
        assert_eq!(r.header("switchboard-sequence"), seqs[0].to_string());
        for e in &events {
            assert!(ids.insert(e["Id"].as_str().unwrap().to_owned()), "once");
        }
    }
    assert_eq!(ids.len(), 10_000, "every event");
    assert!(
        got.len() <= 400,
        "batched: {} requests for 10,000 events",
        got.len()
    );
    let _ = sent;
}

#[tokio::test]
async fn a_failing_batch_is_retried_whole_and_per_agent_order_holds_across_batches() {
    // Every third request fails: a failed batch comes again with the same members (its
    // webhook-id), and each agent's events reach the receiver — counting only the requests
    // answered 2xx — exactly in the order they were published.
    let rx = TestReceiver::with(|n, _| (if n % 3 == 1 { 500 } else { 200 }, Duration::ZERO)).await;
    let app = TestApp::spawn().await;
    let sub = app
        .subscribe(json!({"url": rx.url("/"), "ordering": "per_agent",
                          "retry_schedule_secs": [0, 0, 0, 0, 0, 0],
                          "batch": {"max_events": 10, "max_wait_ms": 50}}))
        .await;
    let secret = Secret::parse(sub["secret"].as_str().unwrap()).unwrap();
    let mut published: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..20 {
        let batch: Vec<Value> = (0..8)
            .map(|a| agent_event(&guid(), 3, &format!("agent{a}")))
            .collect();
        for e in &batch {
            let agent = e["AdditionalFields"]["Username"]
                .as_str()
                .unwrap()
                .to_owned();
            published
                .entry(agent)
                .or_default()
                .push(e["Id"].as_str().unwrap().to_owned());
        }
        app.publish_ok("default", &Value::Array(batch)).await;
    }
    let delivered = |got: &[Received]| -> usize {
        (0..got.len())
            .filter(|n| n % 3 != 1)
            .map(|n| got[n].json().as_array().map_or(0, Vec::len))
            .sum()
    };
    let got = rx
        .wait_until(|r| delivered(r) >= 160, "160 events delivered")
        .await;
    let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
    let mut arrived: HashMap<String, Vec<String>> = HashMap::new();
    let mut retried = 0;
    for (n, r) in got.iter().enumerate() {
        let events = members(r, &secret);
        let ids: Vec<String> = events
            .iter()
            .map(|e| e["Id"].as_str().unwrap().to_owned())
            .collect();
        let id = r.header("webhook-id").to_owned();
        if let Some(before) = by_id.get(&id) {
            assert_eq!(before, &ids, "a retried batch carries the same members");
            retried += 1;
        }
        by_id.insert(id, ids);
        if n % 3 == 1 {
            continue;
        }
        for e in &events {
            let agent = e["AdditionalFields"]["Username"]
                .as_str()
                .unwrap()
                .to_owned();
            arrived
                .entry(agent)
                .or_default()
                .push(e["Id"].as_str().unwrap().to_owned());
        }
    }
    assert!(retried > 0, "failed batches were retried");
    assert_eq!(arrived, published, "each agent's events once, in order");
}

#[tokio::test]
async fn a_batch_on_a_broker_or_out_of_bounds_is_422() {
    let app = TestApp::spawn().await;
    for (body, field) in [
        (
            json!({"url": "http://127.0.0.1:9/", "batch": {"max_events": 0}}),
            "batch.max_events",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "batch": {"max_events": 1001}}),
            "batch.max_events",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "batch": {"max_events": 10, "max_wait_ms": 10001}}),
            "batch.max_wait_ms",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "batch": {"max_events": 10, "size": 1}}),
            "batch",
        ),
        (
            json!({"destination": {"type": "nats", "url": "nats://127.0.0.1", "subject": "a"},
                   "batch": {"max_events": 10}}),
            "batch",
        ),
        (
            json!({"mode": "pull", "batch": {"max_events": 10}}),
            "batch",
        ),
    ] {
        let r = app.call(Method::POST, SUBS, ADMIN_KEY, Some(&body)).await;
        let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert!(
            p["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["field"].as_str().is_some_and(|f| f.starts_with(field))),
            "{body}: {field} in {p}"
        );
    }
}

/// One generated case: agents × events each, batches of up to `most`, and which requests fail.
async fn per_agent_case(agents: usize, each: usize, most: u32, fails: Vec<bool>) {
    let fails = Arc::new(fails);
    let pattern = fails.clone();
    let rx = TestReceiver::with(move |n, _| {
        let fail = pattern.get(n).copied().unwrap_or(false);
        (if fail { 503 } else { 200 }, Duration::ZERO)
    })
    .await;
    let mut t = Stepper::new().await;
    let _sub = t
        .subscribe(json!({"url": rx.url("/"), "ordering": "per_agent",
                          "retry_schedule_secs": vec![1; 50],
                          "batch": {"max_events": most, "max_wait_ms": 0}}))
        .await;
    let mut published: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..each {
        let round: Vec<Value> = (0..agents)
            .map(|a| agent_event(&guid(), 3, &format!("agent{a}")))
            .collect();
        for e in &round {
            published
                .entry(
                    e["AdditionalFields"]["Username"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
                .or_default()
                .push(e["Id"].as_str().unwrap().to_owned());
        }
        t.publish(&Value::Array(round)).await;
    }
    // Step, and move the clock a second (the retry delay, and a probe's) whenever nothing goes.
    let want = agents * each;
    let mut delivered = 0;
    for _ in 0..400 {
        if t.step().await == 0 {
            t.advance(Duration::from_secs(1));
        }
        let got = rx.received();
        delivered = (0..got.len())
            .filter(|&n| !fails.get(n).copied().unwrap_or(false))
            .map(|n| got[n].json().as_array().map_or(0, Vec::len))
            .sum::<usize>();
        if delivered >= want {
            break;
        }
    }
    assert_eq!(delivered, want, "every event delivered");
    let got = rx.received();
    let mut arrived: HashMap<String, Vec<String>> = HashMap::new();
    for (n, r) in got.iter().enumerate() {
        let events = r.json();
        let events = events.as_array().expect("an array");
        assert!(events.len() <= most as usize);
        let mut agents_in = HashSet::new();
        for e in events {
            let agent = e["AdditionalFields"]["Username"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(
                agents_in.insert(agent.clone()),
                "one event per agent in a batch"
            );
            if !fails.get(n).copied().unwrap_or(false) {
                arrived
                    .entry(agent)
                    .or_default()
                    .push(e["Id"].as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(arrived, published, "each agent's events once, in order");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 32, ..Default::default() })]

    /// Whatever requests fail, `per_agent` order holds across batches, and each event is
    /// delivered exactly once (counting the requests answered 2xx).
    #[test]
    fn per_agent_order_holds_across_batches_under_any_failures(
        agents in 1usize..5,
        each in 1usize..5,
        most in 1u32..5,
        fails in proptest::collection::vec(proptest::bool::weighted(0.4), 0..24),
    ) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(per_agent_case(agents, each, most, fails));
    }
}

/// An open breaker's probe is one batch (DESIGN §17): while it is open, one request at a time,
/// each carrying up to `max_events` of the oldest due events.
#[tokio::test]
async fn an_open_breakers_probe_is_one_whole_batch() {
    let mut t = Stepper::new().await;
    let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let receiving = up.clone();
    let rx =
        TestReceiver::with(
            move |_, _| match receiving.load(std::sync::atomic::Ordering::SeqCst) {
                true => (200, Duration::ZERO),
                false => (503, Duration::ZERO),
            },
        )
        .await;
    let sub = t
        .subscribe(json!({"url": rx.url("/"), "max_in_flight": 1,
                          "batch": {"max_events": 10, "max_wait_ms": 0},
                          "retry_schedule_secs": [10, 10, 10, 10, 10, 10, 10, 10]}))
        .await;
    let events: Vec<Value> = (0..100)
        .map(|i| agent_event(&guid(), 3, &format!("a{i}")))
        .collect();
    t.publish(&Value::Array(events)).await;
    // Down: batches fail until the breaker opens.
    for _ in 0..20 {
        t.step().await;
        t.advance(Duration::from_secs(11));
        let b = t.store.breakers(&[sub.id.as_str()]).await.unwrap();
        if b.get(&sub.id).is_some_and(|b| b.probe_at.is_some()) {
            break;
        }
    }
    let b = t.store.breakers(&[sub.id.as_str()]).await.unwrap();
    assert!(b[&sub.id].probe_at.is_some(), "the breaker opened");
    let before = rx.received().len();
    // Still down: the next probe is one request, a whole batch.
    t.advance(Duration::from_secs(11));
    assert_eq!(t.step().await, 1, "one probe");
    let probe = rx.received()[before].json();
    assert_eq!(
        probe.as_array().map(Vec::len),
        Some(10),
        "a whole batch: {probe}"
    );
}
