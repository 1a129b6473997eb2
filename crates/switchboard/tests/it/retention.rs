//! Retention (DESIGN §11), with the store's clock moved by hand: old finished events go with
//! their deliveries and attempts; an old event with a pending delivery stays and is delivered;
//! an `Id` posted again after its purge is a new event.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use serde_json::json;
use switchboard::store::{DeliveryStatus, EventQuery, Refused};

use crate::support::TestReceiver;
use crate::support::app::{agent_event, guid};
use crate::support::stepper::Stepper;

async fn log(t: &Stepper) -> Vec<String> {
    let q = EventQuery {
        limit: 1000,
        ..Default::default()
    };
    let events = t.store.list_events("default", &q).await.unwrap();
    events
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.body).unwrap()["Id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn old_finished_events_go_pending_ones_stay_and_their_ids_are_new_again() {
    let mut t = Stepper::new().await;
    let ok = TestReceiver::start().await;
    let status = Arc::new(AtomicU16::new(503));
    let s = status.clone();
    let down = TestReceiver::with(move |_, _| (s.load(Ordering::SeqCst), Duration::ZERO)).await;
    let all = t.subscribe(json!({"url": ok.url("/all")})).await;
    let bobs = t
        .subscribe(json!({"url": down.url("/bob"), "filter": {"usernames": ["bob"]}, "retry_schedule_secs": [60]}))
        .await;
    let (a1, a2, b1) = (guid(), guid(), guid());
    t.publish(&json!([
        agent_event(&a1, 1, "alice"),
        agent_event(&a2, 3, "alice"),
        agent_event(&b1, 1, "bob")
    ]))
    .await;
    assert_eq!(
        t.step().await,
        4,
        "three to all, bob's to his receiver, which is down"
    );
    let old_delivery = t.deliveries(&all).await[0].id;

    t.advance(Duration::from_secs(3));
    let a3 = guid();
    t.publish(&agent_event(&a3, 1, "alice")).await;
    t.step().await;
    let purged = t.store.purge(t.clock.now_ms() - 2_000).await.unwrap();
    assert_eq!(purged.events, 2, "alice's two old events");
    assert_eq!(
        log(&t).await,
        [b1.clone(), a3.clone()],
        "the pending one and the young one stay"
    );
    assert!(
        t.store
            .get_delivery("default", old_delivery)
            .await
            .unwrap()
            .is_none(),
        "its deliveries and attempts went with it"
    );
    assert_eq!(t.deliveries(&all).await.len(), 2);

    // An Id posted again after its purge is a new event.
    let again = t.publish(&agent_event(&a1, 1, "alice")).await;
    assert!(!again[0].duplicate);
    assert_eq!(again[0].sequence, 5);

    // The old pending event is still delivered, then goes too.
    status.store(200, Ordering::SeqCst);
    t.advance(Duration::from_secs(80));
    t.step().await;
    let bob = &t.deliveries(&bobs).await[0];
    assert_eq!(bob.status, DeliveryStatus::Succeeded);
    let purged = t.store.purge(t.clock.now_ms() - 2_000).await.unwrap();
    assert_eq!(purged.events, 3, "bob's, alice's young one and the re-post");
    assert!(log(&t).await.is_empty());
    assert!(down.received().iter().all(|r| r.event_id() == b1));
}

/// The agents projection outlives retention; `as_of` and timelines rebuild from the state
/// retention folded (the agent's base) plus the events still in the log, and refuse what
/// reaches back past it.
#[tokio::test]
async fn agents_outlive_retention_and_rebuilds_start_from_what_it_folded() {
    let t = Stepper::new().await;
    let at = |mut e: serde_json::Value, code: i64, time: &str| {
        e["CreationDateUtc"] = json!(time);
        e["AdditionalFields"]["ActivityCode"] = json!(code);
        e
    };
    t.publish(&json!([
        at(agent_event(&guid(), 1, "alice"), 0, "20261123080000"),
        at(agent_event(&guid(), 3, "alice"), 16, "20261123080100"),
    ]))
    .await;
    t.advance(Duration::from_secs(3));
    t.publish(&at(agent_event(&guid(), 3, "alice"), 34, "20261123080200"))
        .await;
    let purged = t.store.purge(t.clock.now_ms() - 2_000).await.unwrap();
    assert_eq!(purged.events, 2);

    let now = t
        .store
        .get_agent("default", "alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((now.activity_code, now.last_sequence), (Some(34), 3));
    let history = || t.store.agent_history("default", "alice", None, usize::MAX);
    assert_eq!(
        history().await.unwrap().as_of(1).await.unwrap(),
        Err(Refused::Purged),
        "sequence 1 was folded away"
    );
    let at_2 = history()
        .await
        .unwrap()
        .as_of(2)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((at_2.activity_code, at_2.last_sequence), (Some(16), 2));
    let at_3 = history().await.unwrap().as_of(3).await.unwrap().unwrap();
    assert_eq!(at_3, Some(now));
    let ts = |s: &str| switchboard::event::Timestamp::parse(s).unwrap();
    let too_early = history().await.unwrap();
    let too_early = too_early
        .timeline(ts("20261123080000"), None)
        .await
        .unwrap();
    assert_eq!(too_early, Err(Refused::Purged));
    let timeline = history()
        .await
        .unwrap()
        .timeline(ts("20261123080100"), None)
        .await
        .unwrap()
        .unwrap()
        .expect("a known agent");
    let shown: Vec<_> = timeline
        .iter()
        .map(|i| (i.from.to_string(), i.activity_code))
        .collect();
    assert_eq!(
        shown,
        [
            ("20261123080100".to_string(), Some(16)),
            ("20261123080200".to_string(), Some(34))
        ]
    );
}
