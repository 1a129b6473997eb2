//! Delivery semantics for contact centers (DESIGN §14): freshness (`max_age_secs`, `expired`),
//! coalescing (`coalesce: "latest_status"`, `superseded`, `switchboard-superseded`) and Ed25519
//! signatures (`v1a`, `public_key`, rotation). Time-dependent parts step the dispatcher with a
//! clock the test moves.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use switchboard::delivery::signing::PublicKey;
use switchboard::store::{DeliveryRecord, DeliveryStatus};

use crate::support::app::{ADMIN_KEY, agent_event, guid, json_ok, problem};
use crate::support::receiver::Received;
use crate::support::stepper::Stepper;
use crate::support::{TestApp, TestReceiver};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn status_of(deliveries: &[DeliveryRecord], status: DeliveryStatus) -> usize {
    deliveries.iter().filter(|d| d.status == status).count()
}

/// Steps the dispatcher until a step makes no attempt.
async fn drain(t: &mut Stepper) {
    while t.step().await > 0 {}
}

#[tokio::test]
async fn events_older_than_max_age_expire_unsent_and_fresh_ones_are_delivered() {
    let mut t = Stepper::new().await;
    let rx = TestReceiver::with(|_, _| (503, Duration::ZERO)).await;
    let sub = t
        .subscribe(json!({"url": rx.url("/"), "max_age_secs": 2, "retry_schedule_secs": [1, 1, 1]}))
        .await;
    let old: Vec<Value> = (0..3)
        .map(|i| agent_event(&guid(), 1, &format!("old{i}")))
        .collect();
    t.publish(&Value::Array(old.clone())).await;
    assert_eq!(
        t.step().await,
        3,
        "first attempts at once; the receiver is down"
    );
    t.advance(secs(1.5));
    let fresh: Vec<Value> = (0..2)
        .map(|i| agent_event(&guid(), 1, &format!("new{i}")))
        .collect();
    t.publish(&Value::Array(fresh.clone())).await;
    assert_eq!(
        t.step().await,
        5,
        "the old ones' retries (1.5 s old) and the new ones"
    );

    // The receiver returns 1.3 s later: the old events are 2.8 s old, the new ones 1.3 s.
    rx.set_behaviour(|_, _| (200, Duration::ZERO));
    let before = rx.received().len();
    t.advance(secs(1.3));
    // Eight attempts failed in a row: its breaker is open, so one probe first (the old ones,
    // due first, expire unattempted), then the rest.
    let mut made = 0;
    for _ in 0..10 {
        made += t.step().await;
    }
    assert_eq!(made, 2, "only the fresh ones are attempted");
    let got: BTreeSet<String> = rx.received()[before..]
        .iter()
        .map(Received::event_id)
        .collect();
    let want: BTreeSet<String> = fresh
        .iter()
        .map(|e| e["Id"].as_str().unwrap().into())
        .collect();
    assert_eq!(got, want);

    let deliveries = t.deliveries(&sub).await;
    assert_eq!(status_of(&deliveries, DeliveryStatus::Expired), 3);
    assert_eq!(status_of(&deliveries, DeliveryStatus::Succeeded), 2);
    for d in deliveries
        .iter()
        .filter(|d| d.status == DeliveryStatus::Expired)
    {
        assert_eq!(d.attempt_count, 2, "expiry is not an attempt");
        assert_eq!(d.next_attempt_at, None);
        let error = d.last_error.as_deref().unwrap();
        assert!(error.starts_with("expired: not attempted 2.8 s"), "{error}");
        let (_, attempts) = t
            .store
            .get_delivery("default", d.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(attempts.len(), 2);
    }
    let expired = t
        .store
        .list_deliveries("default", &sub.id, Some(DeliveryStatus::Expired), 0, 100)
        .await
        .unwrap();
    assert_eq!(expired.len(), 3, "the status filters the list");

    // A replay requeues them, but max_age_secs still applies: they expire again, unsent.
    t.advance(secs(5.0));
    let since = switchboard::event::Timestamp::parse("20200101000000").unwrap();
    let requeued = t.store.replay(&sub, since, None, false).await.unwrap();
    assert_eq!(requeued, 5);
    let before = rx.received().len();
    drain(&mut t).await;
    let again: Vec<String> = rx.received()[before..]
        .iter()
        .map(Received::event_id)
        .collect();
    assert!(again.is_empty(), "all five are now too old: {again:?}");
    let deliveries = t.deliveries(&sub).await;
    assert_eq!(status_of(&deliveries, DeliveryStatus::Expired), 5);

    // Once the budget is lifted, a replay sends them.
    let mut lifted = t.subscription(&sub).await;
    lifted.spec.max_age_secs = None;
    t.store.update_subscription(&lifted).await.unwrap();
    t.store.replay(&lifted, since, None, false).await.unwrap();
    drain(&mut t).await;
    assert_eq!(rx.received().len(), before + 5);
    let deliveries = t.deliveries(&sub).await;
    assert_eq!(status_of(&deliveries, DeliveryStatus::Succeeded), 5);
}

/// One agent's status event number `n` (its ActivityCode says which).
fn status(agent: &str, n: i64) -> Value {
    let mut e = agent_event(&guid(), 3, agent);
    e["AdditionalFields"]["ActivityCode"] = json!(100 + n);
    e
}

/// A work-item event of an agent (ReceivingWorkItem).
fn work_item(agent: &str, n: i64) -> Value {
    let mut e = agent_event(&guid(), 4, agent);
    e["AdditionalFields"]["WorkItemId"] = json!(format!("w-{agent}-{n}"));
    e
}

/// What a receiver path got, per agent: `(code, sequence, activity or work item,
/// switchboard-superseded)` in arrival order.
type Got = BTreeMap<String, Vec<(u64, i64, String, String)>>;

fn per_agent(got: &[Received], path: &str) -> Got {
    let mut out: Got = BTreeMap::new();
    for r in got.iter().filter(|r| r.header("x-path") == path) {
        let e = r.json();
        let f = &e["AdditionalFields"];
        let what = match e["Code"].as_u64().unwrap() {
            3 => f["ActivityCode"].to_string(),
            _ => f["WorkItemId"].as_str().unwrap().to_string(),
        };
        out.entry(f["Username"].as_str().unwrap().to_string())
            .or_default()
            .push((
                e["Code"].as_u64().unwrap(),
                r.header("switchboard-sequence").parse().unwrap(),
                what,
                r.header("switchboard-superseded").to_string(),
            ));
    }
    out
}

#[tokio::test]
async fn coalescing_delivers_every_work_item_and_only_each_agents_newest_status() {
    let mut t = Stepper::new().await;
    let rx = TestReceiver::with(|_, _| (503, Duration::ZERO)).await;
    let route = |path: &str| json!({"url": rx.url(path), "headers": {"X-Path": path}, "coalesce": "latest_status"});
    let mut ordered = route("/per-agent");
    ordered["ordering"] = json!("per_agent");
    let ordered = t.subscribe(ordered).await;
    let unordered = t.subscribe(route("/none")).await;
    let mut all = route("/all");
    all["coalesce"] = json!("none");
    let all = t.subscribe(all).await;

    // The receiver is down while 5 agents × 20 statuses and 4 work items each arrive, in four
    // posts with dispatcher steps (failed attempts) between them.
    let agents: Vec<String> = (0..5).map(|i| format!("agent{i}")).collect();
    for batch in 0..4 {
        let mut events = Vec::new();
        for n in 0..5 {
            for a in &agents {
                events.push(status(a, batch * 5 + n));
                if n == 2 {
                    events.push(work_item(a, batch));
                }
            }
        }
        t.publish(&Value::Array(events)).await;
        t.step().await;
        t.advance(secs(40.0));
    }

    // The receiver returns; every retry comes due.
    rx.set_behaviour(|_, _| (200, Duration::ZERO));
    let before = rx.received().len();
    t.advance(secs(3600.0));
    drain(&mut t).await;
    let got = &rx.received()[before..];

    for (path, sub, is_ordered) in [("/per-agent", &ordered, true), ("/none", &unordered, false)] {
        let by_agent = per_agent(got, path);
        assert_eq!(by_agent.len(), 5, "{path}");
        for (agent, items) in &by_agent {
            let works: Vec<&str> = items
                .iter()
                .filter(|i| i.0 == 4)
                .map(|i| i.2.as_str())
                .collect();
            let mut works_sorted = works.clone();
            works_sorted.sort();
            let want: Vec<String> = (0..4).map(|b| format!("w-{agent}-{b}")).collect();
            assert_eq!(works_sorted, want, "{path} {agent}: every work item");
            let statuses: Vec<_> = items.iter().filter(|i| i.0 == 3).collect();
            assert_eq!(statuses.len(), 1, "{path} {agent}: only the newest status");
            assert_eq!(statuses[0].2, "119", "{path} {agent}: the 20th status");
            assert_eq!(statuses[0].3, "19", "{path} {agent}: it replaced 19 others");
            // Receipts that were not coalesced carry no header.
            assert!(items.iter().filter(|i| i.0 == 4).all(|i| i.3.is_empty()));
            if is_ordered {
                let sequences: Vec<i64> = items.iter().map(|i| i.1).collect();
                let mut sorted = sequences.clone();
                sorted.sort();
                assert_eq!(sequences, sorted, "{path} {agent}: in sequence order");
                assert_eq!(works, want, "{path} {agent}: work items in order");
            }
        }
        let deliveries = t.deliveries(sub).await;
        assert_eq!(status_of(&deliveries, DeliveryStatus::Superseded), 5 * 19);
        assert_eq!(status_of(&deliveries, DeliveryStatus::Succeeded), 5 * 5);
        assert_eq!(status_of(&deliveries, DeliveryStatus::Pending), 0);
    }
    // Without coalescing, every event goes out (at least once: the clock jumped past the
    // leases of deliveries claimed ahead, which are then claimed again).
    let everything = per_agent(got, "/all");
    let total = everything
        .values()
        .flatten()
        .map(|i| i.1)
        .collect::<BTreeSet<i64>>()
        .len();
    let succeeded = t
        .deliveries(&all)
        .await
        .iter()
        .filter(|d| d.status == DeliveryStatus::Succeeded)
        .count();
    assert_eq!(succeeded, 5 * 24);
    assert_eq!(total, 5 * 24);

    // A replay coalesces too: the window's statuses give way to the newest of each agent.
    let since = switchboard::event::Timestamp::parse("20200101000000").unwrap();
    let before = rx.received().len();
    assert_eq!(
        t.store
            .replay(&unordered, since, None, false)
            .await
            .unwrap(),
        5 * 24
    );
    drain(&mut t).await;
    let replayed = per_agent(&rx.received()[before..], "/none");
    for items in replayed.values() {
        let statuses: Vec<_> = items.iter().filter(|i| i.0 == 3).collect();
        assert_eq!((statuses.len(), statuses[0].3.as_str()), (1, "19"));
        assert_eq!(items.len(), 5);
    }
}

/// A delivery's `webhook-signature` checked with public keys only, as a receiver would.
fn verifies(r: &Received, public_key: &str) -> bool {
    let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
    PublicKey::parse(public_key).unwrap().verify(
        r.header("webhook-signature"),
        r.header("webhook-id"),
        ts,
        &r.body,
    )
}

#[tokio::test]
async fn v1a_signatures_verify_with_the_public_key_and_both_keys_during_a_rotation() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let sub = app
        .subscribe(json!({"url": rx.url("/"), "signature_scheme": "v1a"}))
        .await;
    let secret = sub["secret"].as_str().unwrap();
    let public = sub["public_key"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("whsk_") && public.starts_with("whpk_"),
        "{sub}"
    );
    assert_eq!(sub["signature_scheme"], "v1a");
    let id = sub["id"].as_str().unwrap();
    let path = format!("/v1/tenants/default/subscriptions/{id}");

    // A read key sees the public key, not the secret.
    let read = app.create_key("default", &["read"]).await;
    let shown = json_ok(app.get(&path, &read).await).await;
    assert_eq!(shown["public_key"], public.as_str());
    assert!(shown.get("secret").is_none(), "{shown}");

    app.publish_ok("default", &agent_event(&guid(), 1, "jdoe"))
        .await;
    let got = rx.wait_for(1).await;
    let sig = got[0].header("webhook-signature");
    assert!(sig.starts_with("v1a,") && !sig.contains(' '), "{sig}");
    assert!(verifies(&got[0], &public));

    // Rotation: the new key pair signs, the old one too until the grace ends.
    let grace = json!({"grace_secs": 3600});
    let rotated = json_ok(app.act(&sub, "secret/rotate", Some(&grace)).await).await;
    let new_public = rotated["public_key"].as_str().unwrap().to_string();
    assert!(rotated["secret"].as_str().unwrap().starts_with("whsk_"));
    assert_ne!(new_public, public);
    let shown = json_ok(app.get(&path, &read).await).await;
    assert_eq!(shown["public_key"], new_public.as_str());
    app.publish_ok("default", &agent_event(&guid(), 1, "kim"))
        .await;
    let got = rx.wait_for(2).await;
    assert_eq!(got[1].header("webhook-signature").split(' ').count(), 2);
    assert!(verifies(&got[1], &public), "the old key still verifies");
    assert!(verifies(&got[1], &new_public), "the new key verifies");
    assert!(!verifies(&got[0], &new_public));

    // A secret of the wrong kind is refused, naming the field; a change of scheme gets a new
    // secret of its kind.
    let wrong = json!({"url": rx.url("/"), "signature_scheme": "v1a",
                       "secret": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"});
    let r = app
        .call(
            Method::POST,
            "/v1/tenants/default/subscriptions",
            ADMIN_KEY,
            Some(&wrong),
        )
        .await;
    let p = problem(r, reqwest::StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(p["errors"][0]["field"], "secret", "{p}");
    let r = app
        .call(
            Method::PATCH,
            &path,
            ADMIN_KEY,
            Some(&json!({"signature_scheme": "v1"})),
        )
        .await;
    let v1 = json_ok(r).await;
    assert!(v1["secret"].as_str().unwrap().starts_with("whsec_"), "{v1}");
    assert!(v1.get("public_key").is_none(), "{v1}");
}

/// A status whose attempt is in flight is not superseded by a newer one of the same agent: it
/// was sent, so it ends as its attempt says, and the newer one replaced nothing. Coalescing
/// makes the delivery claimed rather than handed over at ingest; a claim held anywhere but in
/// the row (in memory, say) must keep this true.
#[tokio::test]
async fn a_status_in_flight_is_not_superseded_by_a_newer_one() {
    let mut t = Stepper::new().await;
    let rx = TestReceiver::start().await;
    let sub = t
        .subscribe(json!({"url": rx.url("/"), "coalesce": "latest_status"}))
        .await;
    t.publish(&status("ann", 1)).await;
    // Claimed and attempted; its outcome waits in the dispatcher, not recorded before the
    // newer status comes (a dispatcher records only in its steps).
    assert_eq!(t.dispatcher.step().await.unwrap(), 1);
    assert_eq!(t.dispatcher.await_finished().await, 1, "the outcome waits");
    t.publish(&status("ann", 2)).await;
    drain(&mut t).await;

    let got = rx.received();
    assert_eq!(got.len(), 2, "both statuses went out");
    assert_eq!(
        got[1].header("switchboard-superseded"),
        "",
        "the newer replaced nothing"
    );
    let deliveries = t.deliveries(&sub).await;
    assert_eq!(status_of(&deliveries, DeliveryStatus::Succeeded), 2);
    assert_eq!(status_of(&deliveries, DeliveryStatus::Superseded), 0);
    assert!(deliveries.iter().all(|d| d.attempt_count == 1));
}
