//! Time-dependent delivery, with the dispatcher stepped by hand and a clock the test moves:
//! retry delays, `Retry-After`, rate limits, per-agent hold-back and lease expiry take no real
//! time, and each step's effect is exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use switchboard::store::{DeliveryStatus, SubscriptionRecord};

use crate::support::TestReceiver;
use crate::support::app::{agent_event, guid};
use crate::support::stepper::Stepper;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[tokio::test]
async fn the_default_retry_schedule_is_followed_within_its_jitter() {
    let mut t = Stepper::new().await;
    let rx = TestReceiver::with(|_, _| (500, Duration::ZERO)).await;
    let sub = t.subscribe(json!({"url": rx.url("/")})).await;
    t.publish(&agent_event(&guid(), 1, "jdoe")).await;

    assert_eq!(t.step().await, 1, "the first attempt at once");
    assert_eq!(t.step().await, 0, "no retry before its time");
    // 5 s ± 20 %: not before 4 s, surely by 6 s.
    t.advance(secs(3.9));
    assert_eq!(t.step().await, 0);
    t.advance(secs(2.2));
    assert_eq!(t.step().await, 1, "the retry after about 5 s");
    // 30 s ± 20 %.
    t.advance(secs(23.9));
    assert_eq!(t.step().await, 0);
    t.advance(secs(12.2));
    assert_eq!(t.step().await, 1, "the next after about 30 s");
    let d = &t.deliveries(&sub).await[0];
    assert_eq!((d.status, d.attempt_count), (DeliveryStatus::Pending, 3));
    assert_eq!(rx.received().len(), 3);
}

#[tokio::test]
async fn retry_after_is_honoured_over_the_schedule() {
    let mut t = Stepper::new().await;
    let rx = TestReceiver::with(|n, _| (if n == 0 { 429 } else { 200 }, Duration::ZERO)).await;
    rx.set_answer("slow down", &[("retry-after", "120")]);
    // The schedule would retry at once; the receiver asked for two minutes.
    let sub = t
        .subscribe(json!({"url": rx.url("/"), "retry_schedule_secs": [0]}))
        .await;
    t.publish(&agent_event(&guid(), 1, "jdoe")).await;
    assert_eq!(t.step().await, 1);
    assert_eq!(t.step().await, 0, "not at once, as the schedule says");
    t.advance(secs(119.0));
    assert_eq!(t.step().await, 0);
    t.advance(secs(1.5));
    assert_eq!(t.step().await, 1, "after the 120 s asked for");
    let d = &t.deliveries(&sub).await[0];
    assert_eq!((d.status, d.attempt_count), (DeliveryStatus::Succeeded, 2));
}

#[tokio::test]
async fn rate_limit_per_sec_spaces_attempts() {
    let mut t = Stepper::new().await;
    let rx = TestReceiver::start().await;
    t.subscribe(json!({"url": rx.url("/"), "rate_limit_per_sec": 10}))
        .await;
    let events: Vec<Value> = (0..30)
        .map(|i| agent_event(&guid(), 1, &format!("a{i}")))
        .collect();
    t.publish(&Value::Array(events)).await;
    assert_eq!(t.step().await, 10, "a burst of the rate");
    assert_eq!(t.step().await, 0, "then nothing until tokens come back");
    t.advance(secs(0.5));
    assert_eq!(t.step().await, 5, "5 tokens in half a second");
    t.advance(secs(3.0));
    assert_eq!(t.step().await, 10, "never more than a second's worth");
    assert_eq!(t.step().await, 0);
    t.advance(secs(1.0));
    assert_eq!(t.step().await, 5, "the rest");
    assert_eq!(rx.received().len(), 30);
}

#[tokio::test]
async fn per_agent_ordering_holds_back_only_that_agent() {
    let mut t = Stepper::new().await;
    let events: Vec<Value> = ["a", "b", "a", "b"]
        .iter()
        .map(|agent| agent_event(&guid(), 3, agent))
        .collect();
    let id = |i: usize| events[i]["Id"].as_str().unwrap().to_string();
    let a_first = id(0);
    let failures = Arc::new(AtomicUsize::new(0));
    let seen = failures.clone();
    // Agent a's first event fails twice; everything else succeeds at once.
    let rx = TestReceiver::with(move |_, r| {
        if r.event_id() == a_first && seen.fetch_add(1, Ordering::SeqCst) < 2 {
            (500, Duration::ZERO)
        } else {
            (200, Duration::ZERO)
        }
    })
    .await;
    t.subscribe(
        json!({"url": rx.url("/"), "ordering": "per_agent", "retry_schedule_secs": [10, 10]}),
    )
    .await;
    t.publish(&Value::Array(events.clone())).await;
    let got =
        |rx: &TestReceiver| -> Vec<String> { rx.received().iter().map(|r| r.event_id()).collect() };

    // Each agent's first event; a's fails.
    assert_eq!(t.step().await, 2);
    // b's second goes on; a's second waits behind a's first, which waits for its retry.
    assert_eq!(t.step().await, 1);
    assert_eq!(t.step().await, 0);
    assert_eq!(got(&rx)[2..], [id(3)], "b went on without waiting for a");
    // 10 s ± 20 %.
    t.advance(secs(12.1));
    assert_eq!(t.step().await, 1, "a's retry, failing again");
    t.advance(secs(12.1));
    assert_eq!(t.step().await, 1, "a's last attempt succeeds");
    assert_eq!(t.step().await, 1, "then a's second event");
    let a: Vec<String> = got(&rx)
        .into_iter()
        .filter(|e| *e == id(0) || *e == id(2))
        .collect();
    assert_eq!(a, [id(0), id(0), id(0), id(2)], "a strictly in sequence");
    assert_eq!(failures.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_lease_left_by_a_dead_dispatcher_expires_and_the_delivery_goes_out() {
    let mut t = Stepper::new().await;
    let rx = TestReceiver::start().await;
    let sub = t.subscribe(json!({"url": rx.url("/")})).await;
    t.publish(&agent_event(&guid(), 1, "jdoe")).await;
    // Another node claims the delivery, then dies before attempting it.
    let now = t.clock.now_ms();
    let lease = crate::support::stepper::LEASE.as_millis() as i64;
    let taken = t
        .store
        .claim(vec![(sub.id.clone(), 16, false)], now + lease, now)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(t.step().await, 0, "leased to the other node");
    t.advance(crate::support::stepper::LEASE - secs(1.0));
    assert_eq!(t.step().await, 0, "still leased");
    t.advance(secs(1.5));
    assert_eq!(t.step().await, 1, "the lease expired: claimed again");
    assert_eq!(rx.received().len(), 1);
    let d = &t.deliveries(&sub).await[0];
    assert_eq!(d.status, DeliveryStatus::Succeeded);
}

/// On SQLite (one writer owns the database) a plain subscription's claim goes on after the
/// last one's deliveries rather than stepping over those in flight; it walks from the start
/// for what that leaves short, and at least once a second: a delivery left behind (its lease
/// given back here) waits at most that long while a backlog keeps every claim busy. PostgreSQL's
/// nodes share the deliveries, and each of their claims walks from the start.
#[tokio::test]
async fn a_claim_goes_on_after_the_last_and_one_left_behind_waits_at_most_a_second() {
    let t = Stepper::new().await;
    let rx = TestReceiver::start().await;
    let sub = t.subscribe(json!({"url": rx.url("/")})).await;
    let events: Vec<Value> = (0..10)
        .map(|i| agent_event(&guid(), 1, &format!("a{i}")))
        .collect();
    let first = t.publish(&Value::Array(events)).await[0].sequence;
    let db = t.db().await;
    let postgres = db.is_postgres();
    db.close().await;
    let lease = crate::support::stepper::LEASE.as_millis() as i64;
    let claim = |n: u32| {
        let (now, store) = (t.clock.now_ms(), &t.store);
        let subs = vec![(sub.id.clone(), n, true)];
        async move {
            let got = store.claim(subs, now + lease, now).await.unwrap();
            let ids: Vec<i64> = got.iter().map(|c| c.delivery_id).collect();
            let nth: Vec<i64> = got.iter().map(|c| c.sequence - first).collect();
            (ids, nth)
        }
    };
    let expect = |sqlite: &[i64], pg: &[i64]| {
        if postgres {
            pg.to_vec()
        } else {
            sqlite.to_vec()
        }
    };

    let (ids, nth) = claim(3).await;
    assert_eq!(nth, [0, 1, 2]);
    t.store.release_leases(vec![ids[1]]).await.unwrap();
    let (_, nth) = claim(3).await;
    assert_eq!(
        nth,
        expect(&[3, 4, 5], &[1, 3, 4]),
        "the one given back waits"
    );
    t.advance(Duration::from_millis(1_000));
    let (_, nth) = claim(3).await;
    assert_eq!(
        nth,
        expect(&[1, 6, 7], &[5, 6, 7]),
        "a second later, from the start"
    );
    let (ids, nth) = claim(2).await;
    assert_eq!(nth, [8, 9], "then on after the last again");
    t.store.release_leases(vec![ids[0]]).await.unwrap();
    let (_, nth) = claim(5).await;
    assert_eq!(nth, [8], "none after the last: from the start for the rest");
    let (_, nth) = claim(5).await;
    assert_eq!(nth, expect(&[], &[]), "every one leased once");
}

/// A claim asked to go on after the last (the dispatcher's view of the subscription may
/// predate a `PATCH` to `per_agent`) still takes one delivery per agent at a time.
#[tokio::test]
async fn a_claim_asked_to_go_on_still_keeps_each_agents_order() {
    let t = Stepper::new().await;
    let rx = TestReceiver::start().await;
    let sub = (t.subscribe(json!({"url": rx.url("/"), "ordering": "per_agent"}))).await;
    let events: Vec<Value> = ["jdoe", "jdoe", "asmith", "jdoe"]
        .iter()
        .map(|agent| agent_event(&guid(), 1, agent))
        .collect();
    let first = t.publish(&Value::Array(events)).await[0].sequence;
    let lease = crate::support::stepper::LEASE.as_millis() as i64;
    let claim = || {
        let (now, store) = (t.clock.now_ms(), &t.store);
        let subs = vec![(sub.id.clone(), 10, true)];
        async move {
            let got = store.claim(subs, now + lease, now).await.unwrap();
            got.iter().map(|c| c.sequence - first).collect::<Vec<i64>>()
        }
    };
    assert_eq!(claim().await, [0, 2], "each agent's first");
    assert_eq!(
        claim().await,
        Vec::<i64>::new(),
        "jdoe's next waits for its first"
    );
}

/// How many deliveries are leased now, as the database says.
async fn leased(t: &Stepper) -> String {
    let mut db = t.db().await;
    let n = db
        .text("SELECT CAST(COUNT(*) AS TEXT) FROM deliveries WHERE lease_until IS NOT NULL")
        .await;
    db.close().await;
    n
}

/// Ingest hands a plain subscription's new deliveries straight to the dispatcher, leased in the
/// same insert — as many as the dispatcher offered room for (twice `max_in_flight` free) — and
/// the rest are claimed as before. The handed ones cannot have been claimed: their lease (25 s
/// on a clock that does not move) makes every claim skip them.
#[tokio::test]
async fn ingest_hands_new_deliveries_to_the_dispatcher_within_the_room_it_offered() {
    let mut t = Stepper::new().await;
    let rx = TestReceiver::start().await;
    let sub = t
        .subscribe(json!({"url": rx.url("/"), "max_in_flight": 2}))
        .await;
    // Nothing offered before the dispatcher knows the subscription: all claimed.
    t.publish(&agent_event(&guid(), 1, "first")).await;
    assert_eq!(leased(&t).await, "0");
    assert_eq!(t.step().await, 1);
    // A step with nothing in flight: the room offered is twice `max_in_flight`.
    assert_eq!(t.step().await, 0);

    let events: Vec<Value> = (0..10)
        .map(|i| agent_event(&guid(), 1, &format!("a{i}")))
        .collect();
    t.publish(&Value::Array(events)).await;
    assert_eq!(
        leased(&t).await,
        "4",
        "handed over as created: the room offered"
    );
    let mut attempts = 0;
    for _ in 0..10 {
        attempts += t.step().await;
    }
    assert_eq!(attempts, 10, "every delivery attempted once");
    let got = rx.received();
    assert_eq!(got.len(), 11);
    assert_eq!(crate::support::receiver::unique_ids(&got).len(), 11);
    let done = t.deliveries(&sub).await;
    assert!(done.iter().all(|d| d.status == DeliveryStatus::Succeeded));
    assert!(done.iter().all(|d| d.attempt_count == 1));
    assert_eq!(
        leased(&t).await,
        "0",
        "every lease given back with its outcome"
    );
}

/// A delivery handed over is a lease like a claim's: if the node stops before attempting it,
/// it goes out after the restart (SQLite voids leases at start; PostgreSQL's expire).
#[tokio::test]
async fn deliveries_handed_over_but_never_attempted_go_out_after_a_restart() {
    let mut t = Stepper::new().await;
    let rx = TestReceiver::start().await;
    let sub = t.subscribe(json!({"url": rx.url("/")})).await;
    assert_eq!(t.step().await, 0, "the dispatcher offers room");
    let events: Vec<Value> = (0..3)
        .map(|i| agent_event(&guid(), 1, &format!("a{i}")))
        .collect();
    t.publish(&Value::Array(events)).await;
    assert_eq!(leased(&t).await, "3");
    // The node dies with the handed deliveries in its dispatcher's queue.
    t.restart().await;
    t.advance(crate::support::stepper::LEASE + secs(1.0));
    assert_eq!(t.step().await, 3, "claimed again after the restart");
    assert_eq!(rx.received().len(), 3);
    let done = t.deliveries(&sub).await;
    assert!(done.iter().all(|d| d.status == DeliveryStatus::Succeeded));
}

/// Deliveries whose order or pace the dispatcher keeps (per-agent order, coalescing, a rate
/// limit) are never handed over: the claim decides which may go.
#[tokio::test]
async fn ordered_coalesced_and_rate_limited_deliveries_are_claimed_not_handed_over() {
    let mut t = Stepper::new().await;
    let rx = TestReceiver::start().await;
    for extra in [
        json!({"ordering": "per_agent"}),
        json!({"coalesce": "latest_status"}),
        json!({"rate_limit_per_sec": 100}),
    ] {
        let mut body = json!({"url": rx.url("/")});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        t.subscribe(body).await;
    }
    assert_eq!(t.step().await, 0);
    t.publish(&agent_event(&guid(), 1, "jdoe")).await;
    assert_eq!(leased(&t).await, "0");
    assert_eq!(t.step().await, 3);
}

/// Publishes one event and makes its attempt; returns once the attempt has finished and its
/// outcome waits in the dispatcher, not yet recorded (a dispatcher records only in its steps).
/// (This stepped until the outcome waited, before: flaky on PostgreSQL, where the "due"
/// notification of the publish arrives from the database some time after the commit and could
/// make such a step claim, and the outcome rode with that claim.)
async fn attempted_with_outcome_waiting(t: &mut Stepper, rx: &TestReceiver) {
    t.publish(&agent_event(&guid(), 1, "jdoe")).await;
    attempt_with_outcome_waiting(t, rx).await;
}

/// A delivery requeued after its attempt but before the attempt's outcome was recorded (a
/// retry asked for, a replay) starts a fresh round: the old outcome, recorded after, is logged
/// and counted but does not end it.
#[tokio::test]
async fn an_outcome_recorded_after_a_requeue_does_not_end_the_fresh_round() {
    let mut t = Stepper::new().await;
    let rx = TestReceiver::start().await;
    let sub = t.subscribe(json!({"url": rx.url("/")})).await;
    attempted_with_outcome_waiting(&mut t, &rx).await;
    let id = t.deliveries(&sub).await[0].id;
    assert!(t.store.retry_delivery("default", id, 1).await.unwrap());
    // (The retry is due at the wall clock's now, which ran on since the test's clock was set.)
    t.advance(secs(60.0));
    assert_eq!(t.step().await, 1, "the fresh round's attempt");
    assert_eq!(rx.received().len(), 2);
    let (d, log) = t.store.get_delivery("default", id).await.unwrap().unwrap();
    assert_eq!((d.status, d.attempt_count), (DeliveryStatus::Succeeded, 2));
    assert_eq!(log.iter().map(|a| a.number).collect::<Vec<_>>(), [1, 2]);
}

/// A delivery waiting in the dispatcher's ready queue is not attempted once its lease has run
/// short: by then another node may hold it.
#[tokio::test]
async fn a_ready_delivery_whose_lease_ran_out_is_not_attempted() {
    let mut t = Stepper::new().await;
    let rx = TestReceiver::start().await;
    let sub = t
        .subscribe(json!({"url": rx.url("/"), "max_in_flight": 1}))
        .await;
    let events: Vec<Value> = (0..2)
        .map(|i| agent_event(&guid(), 1, &format!("a{i}")))
        .collect();
    t.publish(&Value::Array(events)).await;
    assert_eq!(
        t.step().await,
        1,
        "one attempted, the other claimed and ready"
    );
    // Its lease expires; another node claims it.
    t.advance(crate::support::stepper::LEASE + secs(1.0));
    let now = t.clock.now_ms();
    let lease = crate::support::stepper::LEASE.as_millis() as i64;
    let taken = t
        .store
        .claim(vec![(sub.id.clone(), 16, false)], now + lease, now)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1, "the other node holds it now");
    assert_eq!(t.step().await, 0, "not attempted here as well");
    assert_eq!(rx.received().len(), 1);
}

/// The same when another node claimed the requeued delivery before the old outcome was written:
/// the outcome changes only the lease it was made under, and leaves the other node's round be.
#[tokio::test]
async fn an_old_outcome_leaves_another_nodes_fresh_claim_alone() {
    let mut t = Stepper::new().await;
    let rx = TestReceiver::start().await;
    let sub = t.subscribe(json!({"url": rx.url("/")})).await;
    attempted_with_outcome_waiting(&mut t, &rx).await;
    let id = t.deliveries(&sub).await[0].id;
    assert!(t.store.retry_delivery("default", id, 1).await.unwrap());
    t.advance(secs(60.0));
    let now = t.clock.now_ms();
    let lease = crate::support::stepper::LEASE.as_millis() as i64;
    let taken = t
        .store
        .claim(vec![(sub.id.clone(), 16, false)], now + lease, now)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1, "another node claims the requeued delivery");
    // This node writes its old outcome (and finds nothing to claim: the other node holds it).
    assert_eq!(t.step().await, 0);
    let d = &t.deliveries(&sub).await[0];
    assert_eq!(
        d.status,
        DeliveryStatus::Pending,
        "the other node's round goes on"
    );
    assert_eq!(d.attempt_count, 1, "the old attempt is counted");
}

/// A per-agent subscription (its deliveries are claimed, never handed over at ingest) and one
/// event for it, not yet attempted; the test clock's now.
async fn one_event_to_claim(t: &Stepper, rx: &TestReceiver) -> (SubscriptionRecord, i64) {
    let sub = t
        .subscribe(json!({"url": rx.url("/"), "ordering": "per_agent"}))
        .await;
    t.publish(&agent_event(&guid(), 1, "jdoe")).await;
    (sub, t.clock.now_ms())
}

/// A batching subscription (bulk: on SQLite its claims are held in memory, not written in the
/// row) and one event for it, stored before the dispatcher's first step offered ingest room, so
/// that it is claimed rather than handed over; the test clock's now.
async fn one_event_to_hold(t: &Stepper, rx: &TestReceiver) -> (SubscriptionRecord, i64) {
    let sub = t
        .subscribe(json!({"url": rx.url("/"), "batch": {"max_events": 10, "max_wait_ms": 0}}))
        .await;
    t.publish(&agent_event(&guid(), 1, "jdoe")).await;
    (sub, t.clock.now_ms())
}

/// One step, which makes the one attempt there is (handed over or claimed); returns once it
/// has finished and its outcome waits in the dispatcher, not yet recorded (a dispatcher
/// records only in its steps).
async fn attempt_with_outcome_waiting(t: &mut Stepper, rx: &TestReceiver) {
    assert_eq!(t.dispatcher.step().await.unwrap(), 1);
    assert_eq!(t.dispatcher.await_finished().await, 1, "the outcome waits");
    assert_eq!(rx.received().len(), 1);
}

/// How a delivery is put back in the queue, or taken out of it, while its attempt is in flight.
#[derive(Clone, Copy)]
enum Requeue {
    /// `POST …/deliveries/{id}/retry`.
    Retry,
    /// A replay of the subscription's window.
    Replay,
    /// A `cancel_pending` job.
    Cancel,
}

/// A requeue (or a cancel) made while a *claimed* delivery's attempt is in flight wins over
/// that attempt's outcome, recorded after it. Per-agent order makes the delivery claimed rather
/// than handed over at ingest, so its lease is the claim's; the handed-over case is
/// `an_outcome_recorded_after_a_requeue_does_not_end_the_fresh_round`. A claim held anywhere
/// but in the row (in memory, say) must keep this true for each of the three.
async fn requeue_during_a_claimed_attempt(how: Requeue, batching: bool) {
    use switchboard::event::Timestamp;
    use switchboard::jobs::Runner;
    use switchboard::store::JobSpec;

    let mut t = Stepper::new().await;
    let rx = TestReceiver::start().await;
    let (sub, _) = match batching {
        true => one_event_to_hold(&t, &rx).await,
        false => one_event_to_claim(&t, &rx).await,
    };
    attempt_with_outcome_waiting(&mut t, &rx).await;
    let id = t.deliveries(&sub).await[0].id;
    match how {
        Requeue::Retry => assert!(t.store.retry_delivery("default", id, 1).await.unwrap()),
        Requeue::Replay => {
            let since = Timestamp::parse("20200101000000").unwrap();
            assert_eq!(t.store.replay(&sub, since, None, false).await.unwrap(), 1);
        }
        Requeue::Cancel => {
            let spec = JobSpec::CancelPending {
                subscription_id: sub.id.clone(),
                before: None,
            };
            t.store.create_job("default", &spec, false).await.unwrap();
            let mut runner = Runner::new(t.store.clone(), t.clock.clone());
            while runner.run_once().await.expect("a job's page") {}
        }
    }
    // A retry asked for is due at the wall clock's now, which ran on since the test's clock was
    // set (a replay's at the test clock's; a cancel is never due): 20 s covers that, and stays
    // within the claim's lease (25 s). Here the requeue or cancel cleared the lease in the row;
    // a claim held in memory would still be held at the next step, which records the old
    // outcome and sends what is due.
    t.advance(secs(20.0));
    while t.step().await > 0 {}
    let (d, log) = t.store.get_delivery("default", id).await.unwrap().unwrap();
    let numbers: Vec<i64> = log.iter().map(|a| a.number).collect();
    match how {
        Requeue::Retry | Requeue::Replay => {
            assert_eq!(rx.received().len(), 2, "the fresh round's attempt");
            assert_eq!((d.status, d.attempt_count), (DeliveryStatus::Succeeded, 2));
            assert_eq!(numbers, [1, 2]);
        }
        Requeue::Cancel => {
            assert_eq!(rx.received().len(), 1, "canceled: nothing more goes out");
            assert_eq!(
                (d.status, d.attempt_count),
                (DeliveryStatus::Canceled, 1),
                "the old attempt is counted; the cancel stands"
            );
            assert_eq!(numbers, [1]);
        }
    }
}

#[tokio::test]
async fn a_retry_asked_for_during_a_claimed_attempt_wins_over_its_outcome() {
    requeue_during_a_claimed_attempt(Requeue::Retry, false).await;
}

#[tokio::test]
async fn a_replay_during_a_claimed_attempt_wins_over_its_outcome() {
    requeue_during_a_claimed_attempt(Requeue::Replay, false).await;
}

#[tokio::test]
async fn a_cancel_during_a_claimed_attempt_wins_over_its_outcome() {
    requeue_during_a_claimed_attempt(Requeue::Cancel, false).await;
}

/// The same three for a claim held in memory (SQLite's, for a batching subscription): no lease
/// is in the row, and the requeue's mark (`requeued_lease!`) is what fences the old outcome.
#[tokio::test]
async fn a_retry_asked_for_during_a_held_claims_attempt_wins_over_its_outcome() {
    requeue_during_a_claimed_attempt(Requeue::Retry, true).await;
}

#[tokio::test]
async fn a_replay_during_a_held_claims_attempt_wins_over_its_outcome() {
    requeue_during_a_claimed_attempt(Requeue::Replay, true).await;
}

#[tokio::test]
async fn a_cancel_during_a_held_claims_attempt_wins_over_its_outcome() {
    requeue_during_a_claimed_attempt(Requeue::Cancel, true).await;
}

/// On SQLite a batching subscription's claim is held in memory: the row gets no lease (its
/// `UPDATE` and the `deliveries_leased` entry were a third of the writer's batched drain), yet
/// the delivery is not claimed twice while its attempt is in flight, and its outcome ends it.
/// PostgreSQL's nodes share the deliveries: the lease is in the row.
#[tokio::test]
async fn a_batching_claim_is_held_in_memory_on_sqlite_and_taken_once() {
    let mut t = Stepper::new().await;
    let rx = TestReceiver::start().await;
    let (sub, _) = one_event_to_hold(&t, &rx).await;
    let db = t.db().await;
    let postgres = db.is_postgres();
    db.close().await;
    attempt_with_outcome_waiting(&mut t, &rx).await;
    let in_rows = if postgres { "1" } else { "0" };
    assert_eq!(
        leased(&t).await,
        in_rows,
        "a lease in the row only on PostgreSQL"
    );
    let now = t.clock.now_ms();
    let lease = crate::support::stepper::LEASE.as_millis() as i64;
    let again = t
        .store
        .claim(vec![(sub.id.clone(), 10, true)], now + lease, now);
    assert!(
        again.await.unwrap().is_empty(),
        "in flight: not claimed twice"
    );
    while t.step().await > 0 {}
    assert_eq!(rx.received().len(), 1);
    let d = &t.deliveries(&sub).await[0];
    assert_eq!((d.status, d.attempt_count), (DeliveryStatus::Succeeded, 1));
    assert_eq!(leased(&t).await, "0");
}

/// An outcome recorded after its delivery was deleted (its subscription with it) changes no
/// other delivery, though SQLite may give the deleted one's id to a new row: the fence names
/// the subscription too (a claim held in memory is fenced by the value it read, which a new
/// row may have as well).
#[tokio::test]
async fn an_outcome_after_its_delivery_was_deleted_leaves_a_new_one_with_its_id_alone() {
    let mut t = Stepper::new().await;
    let rx = TestReceiver::start().await;
    let (old, _) = one_event_to_hold(&t, &rx).await;
    attempt_with_outcome_waiting(&mut t, &rx).await;
    let id = t.deliveries(&old).await[0].id;
    assert!(
        t.store
            .delete_subscription("default", &old.id)
            .await
            .unwrap()
    );
    let (new, _) = one_event_to_claim(&t, &rx).await;
    let reused = t.deliveries(&new).await[0].id;
    let db = t.db().await;
    if !db.is_postgres() {
        assert_eq!(
            reused, id,
            "SQLite gives the highest id deleted to the next row"
        );
    }
    db.close().await;
    // The old outcome is recorded by the next step, before anything is claimed.
    t.dispatcher.step().await.unwrap();
    let (d, _) = t
        .store
        .get_delivery("default", reused)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (d.status, d.attempt_count),
        (DeliveryStatus::Pending, 0),
        "the new delivery is not ended by the old outcome"
    );
    while t.step().await > 0 {}
    let (d, _) = t
        .store
        .get_delivery("default", reused)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.status, DeliveryStatus::Succeeded);
    assert_eq!(rx.received().len(), 2, "the new delivery was sent");
}

/// A claim held in memory whose outcome never comes (its dispatcher gone) is claimed again
/// once its lease has run out, as a lease in the row would be.
#[tokio::test]
async fn a_held_claim_is_claimed_again_once_its_lease_runs_out() {
    let t = Stepper::new().await;
    let rx = TestReceiver::start().await;
    let (sub, now) = one_event_to_hold(&t, &rx).await;
    let lease = crate::support::stepper::LEASE.as_millis() as i64;
    let claim = |now: i64| {
        let subs = vec![(sub.id.clone(), 10, true)];
        t.store.claim(subs, now + lease, now)
    };
    assert_eq!(claim(now).await.unwrap().len(), 1);
    assert!(
        claim(now + lease).await.unwrap().is_empty(),
        "held to its end"
    );
    assert_eq!(claim(now + lease + 1).await.unwrap().len(), 1, "then due");
}

/// An erasure waits for the attempts in flight that may carry the value: it reads the latest
/// lease the tenant's deliveries are claimed under, and waits while one is held. A claimed
/// delivery's lease is seen there until its outcome is recorded; a claim held in memory (SQLite's,
/// `batching`) is seen too, though its lease is not in the row, and SQLite, knowing only the
/// tenant's latest held lease, may wait until that has passed.
async fn erasure_sees_the_lease_in_flight(batching: bool) {
    let mut t = Stepper::new().await;
    let rx = TestReceiver::start().await;
    let (_, now) = match batching {
        true => one_event_to_hold(&t, &rx).await,
        false => one_event_to_claim(&t, &rx).await,
    };
    attempt_with_outcome_waiting(&mut t, &rx).await;
    let lease = now + crate::support::stepper::LEASE.as_millis() as i64;
    let latest = t.store.latest_lease("default", now).await.unwrap();
    assert_eq!(latest, lease, "the claim's lease");
    let store = t.store.clone();
    let waits = |at: i64| store.erase_must_wait("default", latest, 0, at);
    assert!(waits(now).await.unwrap());
    // Its outcome recorded: nothing in flight, nothing to wait for.
    while t.step().await > 0 {}
    let after = if batching { lease + 1 } else { now };
    assert_eq!(t.store.latest_lease("default", after).await.unwrap(), 0);
    assert!(!waits(after).await.unwrap());
}

#[tokio::test]
async fn an_erasure_sees_the_lease_of_a_claimed_attempt_in_flight() {
    erasure_sees_the_lease_in_flight(false).await;
}

#[tokio::test]
async fn an_erasure_sees_the_lease_of_a_held_claims_attempt_in_flight() {
    erasure_sees_the_lease_in_flight(true).await;
}

/// A delivery whose claimed attempt is in flight is not due: the dispatcher, asking when the
/// next delivery is due so as to sleep until then, is not woken for it. A claim held anywhere
/// but in the row (in memory, say) must keep it so, or an idle dispatcher polls at its
/// shortest wait for as long as an attempt is in flight.
#[tokio::test]
async fn a_claimed_attempt_in_flight_is_not_due() {
    let mut t = Stepper::new().await;
    let rx = TestReceiver::start().await;
    let (_, now) = one_event_to_claim(&t, &rx).await;
    assert!(t.store.next_due(now).await.unwrap().is_some(), "due");
    attempt_with_outcome_waiting(&mut t, &rx).await;
    assert_eq!(t.store.next_due(now).await.unwrap(), None, "in flight");
}
