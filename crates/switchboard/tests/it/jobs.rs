//! Jobs (DESIGN §16): a replay counted first (`dry_run`), worked a page at a time with its
//! progress visible, canceled between pages, resumed after a restart; `cancel_pending`; the
//! API's validation, listing, limits and answers. The runner is stepped by hand here (its
//! clock the test's), except in the API test, where the server's own runs.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use switchboard::event::Timestamp;
use switchboard::jobs::{LEASE, Runner};
use switchboard::store::{CancelJob, DeliveryStatus, JobRecord, JobSpec, SubscriptionRecord};

use crate::support::app::{ADMIN_KEY, TestApp, agent_event, guid, problem};
use crate::support::receiver::{TestReceiver, eventually};
use crate::support::stepper::Stepper;

/// `n` events created at `date`: Agent sign-ins of 50 agents, every other one an IVR event
/// instead when `mixed`.
fn events(n: usize, date: &str, mixed: bool) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut e = agent_event(&guid(), 1, &format!("agent{}", i % 50));
            if mixed && i % 2 == 1 {
                e = json!({"Id": guid(), "Category": 2, "Code": 1});
            }
            e["CreationDateUtc"] = json!(date);
            e
        })
        .collect()
}

/// Publishes `events` a thousand at a time.
async fn publish_all(t: &Stepper, events: Vec<Value>) {
    for chunk in events.chunks(1000) {
        t.publish(&Value::Array(chunk.to_vec())).await;
    }
}

fn replay(sub: &str) -> JobSpec {
    JobSpec::Replay {
        subscription_id: sub.into(),
        since: Timestamp::parse("20200101000000").unwrap(),
        until: None,
        only_failed: false,
    }
}

/// `n` events before a subscription to a port nobody listens on, and a replay job of them.
async fn replaying(t: &Stepper, n: usize) -> (SubscriptionRecord, JobRecord) {
    publish_all(t, events(n, "20261120100000", false)).await;
    let sub = t.subscribe(json!({"url": "http://127.0.0.1:9/"})).await;
    let spec = replay(&sub.id);
    let created = t.store.create_job("default", &spec, false).await.unwrap();
    (sub, created)
}

async fn job(t: &Stepper, id: &str) -> JobRecord {
    t.store
        .get_job("default", id)
        .await
        .unwrap()
        .expect("the job")
}

/// Steps `runner` until it has nothing to do; how many pages that took.
async fn run_out(runner: &mut Runner) -> usize {
    let mut pages = 0;
    while runner.run_once().await.expect("a job's page") {
        pages += 1;
        assert!(pages < 10_000, "a job that never ends");
    }
    pages
}

/// The subscription's deliveries in `status`, counted by the test itself.
async fn count(t: &Stepper, sub: &str, status: &str) -> i64 {
    let sql = format!(
        "SELECT CAST(COUNT(*) AS TEXT) FROM deliveries WHERE subscription_id = '{sub}' \
         AND status = '{status}'"
    );
    let mut db = t.db().await;
    let n = db.text(&sql).await.parse().unwrap();
    db.close().await;
    n
}

#[tokio::test]
async fn a_replay_job_requeues_exactly_what_its_dry_run_counted_with_progress_on_the_way() {
    let t = Stepper::new().await;
    // 20,000 events before the subscription (half of them Agent events, which it matches),
    // then 1,000 after it: those are pending already and a replay does not count them.
    publish_all(&t, events(20_000, "20261120100000", true)).await;
    let sub = t
        .subscribe(json!({"url": "http://127.0.0.1:9/", "filter": {"events": [{"category": 1}]}}))
        .await;
    publish_all(&t, events(1_000, "20261120110000", false)).await;
    assert_eq!(count(&t, &sub.id, "pending").await, 1_000);
    let mut runner = Runner::new(t.store.clone(), t.clock.clone());

    let dry = t
        .store
        .create_job("default", &replay(&sub.id), true)
        .await
        .unwrap();
    assert_eq!((dry.state.as_str(), dry.total), ("queued", None));
    run_out(&mut runner).await;
    let dry = job(&t, &dry.id).await;
    assert_eq!(dry.state, "done", "{dry:?}");
    assert_eq!(
        dry.total,
        Some(10_000),
        "the matching events not pending already"
    );
    assert_eq!(dry.done, 10_000);
    assert_eq!(dry.result, Some(json!({"would_requeue": 10_000})));
    assert_eq!(
        count(&t, &sub.id, "pending").await,
        1_000,
        "a dry run changes nothing"
    );

    let real = t
        .store
        .create_job("default", &replay(&sub.id), false)
        .await
        .unwrap();
    // Counting, a page at a time: 21 full pages of 1,000 events, then the empty one that
    // ends the count.
    let mut counting = 0;
    loop {
        assert!(runner.run_once().await.unwrap());
        counting += 1;
        let seen = job(&t, &real.id).await;
        assert_eq!((seen.state.as_str(), seen.done), ("running", 0));
        if seen.total.is_some() {
            assert_eq!(seen.total, Some(10_000));
            break;
        }
    }
    assert_eq!(counting, 22);
    // Two pages of work: progress shows while it runs.
    runner.run_once().await.unwrap();
    runner.run_once().await.unwrap();
    let midway = job(&t, &real.id).await;
    assert_eq!(midway.state, "running");
    assert!(
        midway.done > 0 && midway.done < 10_000,
        "progress is visible: {midway:?}"
    );
    run_out(&mut runner).await;
    let real = job(&t, &real.id).await;
    assert_eq!(real.state, "done", "{real:?}");
    assert_eq!(real.total, dry.total);
    assert_eq!(real.done, 10_000);
    assert_eq!(real.result, Some(json!({"requeued": 10_000})));
    assert!(real.finished_at.is_some());
    assert_eq!(count(&t, &sub.id, "pending").await, 11_000);
}

#[tokio::test]
async fn a_canceled_job_does_nothing_more_and_what_it_did_stays_done() {
    let t = Stepper::new().await;
    let (sub, created) = replaying(&t, 5_000).await;
    let mut runner = Runner::new(t.store.clone(), t.clock.clone());
    // Five counting pages and the last, empty one; then one page of work.
    for _ in 0..7 {
        assert!(runner.run_once().await.unwrap());
    }
    assert_eq!(job(&t, &created.id).await.done, 1_000);

    let CancelJob::Canceled(canceled) = t.store.cancel_job("default", &created.id).await.unwrap()
    else {
        panic!("a running job is canceled");
    };
    assert_eq!(canceled.state, "canceled");
    // The runner still holds it: its next page finds it canceled and writes nothing.
    assert!(runner.run_once().await.unwrap());
    assert!(!runner.run_once().await.unwrap(), "nothing left to do");
    let after = job(&t, &created.id).await;
    assert_eq!((after.state.as_str(), after.done), ("canceled", 1_000));
    assert_eq!(
        count(&t, &sub.id, "pending").await,
        1_000,
        "the page done stays"
    );
    assert!(matches!(
        t.store.cancel_job("default", &created.id).await.unwrap(),
        CancelJob::Finished(_)
    ));
    assert!(matches!(
        t.store.cancel_job("default", "job_none").await.unwrap(),
        CancelJob::NotFound
    ));
}

#[tokio::test]
async fn a_job_resumes_after_a_restart_where_its_last_page_ended() {
    let mut t = Stepper::new().await;
    let (sub, created) = replaying(&t, 5_000).await;
    {
        let mut runner = Runner::new(t.store.clone(), t.clock.clone());
        for _ in 0..8 {
            assert!(runner.run_once().await.unwrap());
        }
    }
    let before = job(&t, &created.id).await;
    assert_eq!((before.total, before.done), (Some(5_000), 2_000));

    // The node dies holding it; its lease runs out (on SQLite, a start voids it at once).
    t.restart().await;
    t.advance(LEASE + std::time::Duration::from_secs(1));
    let mut runner = Runner::new(t.store.clone(), t.clock.clone());
    let pages = run_out(&mut runner).await;
    assert_eq!(
        pages, 4,
        "the three pages left and the empty one that ends it; no count again"
    );
    let after = job(&t, &created.id).await;
    assert_eq!(after.state, "done");
    assert_eq!((after.total, after.done), (Some(5_000), 5_000));
    assert_eq!(after.result, Some(json!({"requeued": 5_000})));
    assert_eq!(count(&t, &sub.id, "pending").await, 5_000);
}

#[tokio::test]
async fn a_job_held_by_a_live_node_is_not_taken_by_another() {
    let t = Stepper::new().await;
    let (_, created) = replaying(&t, 3_000).await;
    let mut first = Runner::new(t.store.clone(), t.clock.clone());
    assert!(first.run_once().await.unwrap());
    let mut second = Runner::new(t.store.clone(), t.clock.clone());
    assert!(!second.run_once().await.unwrap(), "held by the first");
    run_out(&mut first).await;
    assert_eq!(job(&t, &created.id).await.done, 3_000);
}

#[tokio::test]
async fn cancel_pending_ends_exactly_the_pending_deliveries_of_events_before_the_time() {
    let mut t = Stepper::new().await;
    let rx = TestReceiver::start().await;
    let sub = t.subscribe(json!({"url": rx.url("/")})).await;
    // Five delivered; then ten older and ten newer ones pending.
    publish_all(&t, events(5, "20261101090000", false)).await;
    while t.step().await > 0 {}
    assert_eq!(rx.received().len(), 5);
    // (A new dispatcher: the one that ran offered room, and would hold some of what comes.)
    t.restart().await;
    publish_all(&t, events(10, "20261101120000", false)).await;
    publish_all(&t, events(10, "20261201120000", false)).await;
    let mut runner = Runner::new(t.store.clone(), t.clock.clone());
    let spec = JobSpec::CancelPending {
        subscription_id: sub.id.clone(),
        before: Some(Timestamp::parse("20261115000000").unwrap()),
    };

    let dry = t.store.create_job("default", &spec, true).await.unwrap();
    run_out(&mut runner).await;
    let dry = job(&t, &dry.id).await;
    assert_eq!(
        (dry.total, dry.result),
        (Some(10), Some(json!({"would_cancel": 10})))
    );
    let created = t.store.create_job("default", &spec, false).await.unwrap();
    run_out(&mut runner).await;
    let done = job(&t, &created.id).await;
    assert_eq!(done.state, "done");
    assert_eq!((done.total, done.done), (Some(10), 10));
    assert_eq!(done.result, Some(json!({"canceled": 10})));

    let deliveries = t.deliveries(&sub).await;
    let of = |s: DeliveryStatus| deliveries.iter().filter(|d| d.status == s).count();
    assert_eq!(of(DeliveryStatus::Succeeded), 5);
    assert_eq!(of(DeliveryStatus::Canceled), 10);
    assert_eq!(of(DeliveryStatus::Pending), 10);
    assert!(
        deliveries
            .iter()
            .filter(|d| d.status == DeliveryStatus::Canceled)
            .all(|d| d.next_attempt_at.is_none())
    );
    // Only the newer ten go out.
    while t.step().await > 0 {}
    assert_eq!(rx.received().len(), 15);
    let listed = t
        .store
        .list_deliveries("default", &sub.id, Some(DeliveryStatus::Canceled), 0, 100)
        .await
        .unwrap();
    assert_eq!(listed.len(), 10, "the status filters the list");
}

#[tokio::test]
async fn the_jobs_api_validates_lists_limits_and_cancels() {
    let app = TestApp::spawn_with(|c| c.max_jobs_per_tenant = 2).await;
    let sub = app.subscribe(json!({"url": "http://127.0.0.1:9/"})).await;
    let sub_id = sub["id"].as_str().unwrap();
    app.publish_ok(
        "default",
        &Value::Array(events(30, "20261120100000", false)),
    )
    .await;
    let path = "/v1/tenants/default/jobs";
    let app = &app;
    let post =
        |body: Value| async move { app.call(Method::POST, path, ADMIN_KEY, Some(&body)).await };

    for (body, field) in [
        (json!({"kind": "nope", "subscription_id": sub_id}), "kind"),
        (
            json!({"kind": "replay", "subscription_id": sub_id}),
            "since",
        ),
        (
            json!({"kind": "replay", "subscription_id": sub_id, "since": "2026"}),
            "since",
        ),
        (
            json!({"kind": "replay", "subscription_id": sub_id, "since": "20261120000000",
                   "until": "20261119000000"}),
            "until",
        ),
        (
            json!({"kind": "replay", "subscription_id": sub_id, "since": "20261120000000",
                   "before": "20261120000000"}),
            "before",
        ),
        (
            json!({"kind": "cancel_pending", "subscription_id": sub_id, "only_failed": true}),
            "only_failed",
        ),
        (
            json!({"kind": "replay", "subscription_id": "sub_none", "since": "20261120000000"}),
            "subscription_id",
        ),
        (
            json!({"kind": "replay", "subscription_id": sub_id, "since": "20261120000000",
                   "speed": 2}),
            "",
        ),
    ] {
        let bad = problem(post(body.clone()).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        if !field.is_empty() {
            assert_eq!(bad["errors"][0]["field"], field, "{body}: {bad}");
        }
    }
    let reader = app.create_key("default", &["read"]).await;
    let r = app
        .call(
            Method::POST,
            path,
            &reader,
            Some(&json!({"kind": "cancel_pending", "subscription_id": sub_id})),
        )
        .await;
    problem(r, StatusCode::FORBIDDEN).await;

    let r = post(json!({"kind": "replay", "subscription_id": sub_id,
                        "since": "20261120000000", "dry_run": true}))
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let first: Value = r.json().await.unwrap();
    assert_eq!(first["kind"], "replay");
    assert_eq!(first["state"], "queued");
    assert_eq!(first["dry_run"], true);
    assert_eq!(first["since"], "20261120000000");
    assert_eq!(first["subscription_id"], sub_id);
    let id = first["id"].as_str().unwrap();
    let done = eventually("the dry run to end", || async {
        let job: Value = app
            .get(&format!("{path}/{id}"), &reader)
            .await
            .json()
            .await
            .unwrap();
        (job["state"] == "done").then_some(job)
    })
    .await;
    assert_eq!(done["total"], 0, "all 30 are pending already: {done}");
    assert_eq!(done["result"], json!({"would_requeue": 0}));
    assert!(done["finished_at"].is_string());
    let r = app
        .call(Method::DELETE, &format!("{path}/{id}"), ADMIN_KEY, None)
        .await;
    problem(r, StatusCode::CONFLICT).await;
    let r = app
        .call(Method::DELETE, &format!("{path}/job_none"), ADMIN_KEY, None)
        .await;
    problem(r, StatusCode::NOT_FOUND).await;

    // A newer release's job, queued: listed as it is, not run here, and counted in the limit.
    let mut db = crate::support::db::OldDb::latest(&app.data).await;
    db.exec(
        "INSERT INTO jobs (id, tenant_id, kind, params, dry_run, state, bound, created_at, \
         updated_at) VALUES ('job_newer', 'default', 'rebalance', '{\"kind\":\"rebalance\"}', \
         FALSE, 'queued', 0, 9999999999999, 9999999999999)",
    )
    .await;
    db.close().await;
    let second = post(json!({"kind": "cancel_pending", "subscription_id": sub_id,
                             "before": "20200101000000"}))
    .await;
    assert_eq!(second.status(), StatusCode::ACCEPTED);
    let second: Value = second.json().await.unwrap();
    let listed: Value = app.get(path, &reader).await.json().await.unwrap();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["job_newer", second["id"].as_str().unwrap(), id],
        "newest first"
    );
    assert_eq!(listed["data"][0]["state"], "queued");
    let page: Value = app
        .get(&format!("{path}?limit=1&after=job_newer"), &reader)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["data"][0]["id"], second["id"]);
    assert_eq!(page["next_after"], second["id"]);

    // Two unfinished (the newer one stays queued): a third is refused until one ends.
    eventually("the cancel to end", || async {
        let job: Value = app
            .get(
                &format!("{path}/{}", second["id"].as_str().unwrap()),
                &reader,
            )
            .await
            .json()
            .await
            .unwrap();
        (job["state"] == "done").then_some(())
    })
    .await;
    let r = app
        .call(
            Method::DELETE,
            &format!("{path}/job_newer"),
            ADMIN_KEY,
            None,
        )
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "canceled");
    let mut db = crate::support::db::OldDb::latest(&app.data).await;
    for n in 0..2 {
        db.exec(&format!(
            "INSERT INTO jobs (id, tenant_id, kind, params, dry_run, state, bound, created_at, \
             updated_at) VALUES ('job_newer{n}', 'default', 'rebalance', '{{}}', FALSE, \
             'queued', 0, 1, 1)"
        ))
        .await;
    }
    db.close().await;
    let r = post(json!({"kind": "cancel_pending", "subscription_id": sub_id})).await;
    let refused = problem(r, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(refused["limit"], "max_jobs_per_tenant");
}

#[tokio::test]
async fn a_replay_of_a_window_far_along_a_long_log_pages_through_to_it() {
    let t = Stepper::new().await;
    let sub = t
        .subscribe(json!({"url": "http://127.0.0.1:9/", "enabled": false}))
        .await;
    // More than a page's span of events outside the window, then three in it.
    publish_all(&t, events(12_500, "20261101100000", false)).await;
    publish_all(&t, events(3, "20261120100000", false)).await;
    let since = Timestamp::parse("20261120000000").unwrap();
    let requeued = t.store.replay(&sub, since, None, false).await.unwrap();
    assert_eq!(requeued, 3);

    let window = JobSpec::Replay {
        subscription_id: sub.id.clone(),
        since,
        until: None,
        only_failed: false,
    };
    let mut runner = Runner::new(t.store.clone(), t.clock.clone());
    // A dry run now: the three are pending, so it counts none; canceled first, it counts them.
    let cancel = JobSpec::CancelPending {
        subscription_id: sub.id.clone(),
        before: None,
    };
    let canceled = t.store.create_job("default", &cancel, false).await.unwrap();
    run_out(&mut runner).await;
    assert_eq!(
        job(&t, &canceled.id).await.done,
        3,
        "disabled: only the replay made any"
    );
    let dry = t.store.create_job("default", &window, true).await.unwrap();
    run_out(&mut runner).await;
    assert_eq!(job(&t, &dry.id).await.total, Some(3));
}

#[tokio::test]
async fn a_runner_that_lost_its_lease_writes_nothing_more() {
    let t = Stepper::new().await;
    let (_, created) = replaying(&t, 5_000).await;
    let mut first = Runner::new(t.store.clone(), t.clock.clone());
    // Six counting pages, then one of work.
    for _ in 0..7 {
        assert!(first.run_once().await.unwrap());
    }
    // The first runner stalls past its lease; a second takes the job over and works a page.
    t.advance(LEASE + std::time::Duration::from_secs(1));
    let mut second = Runner::new(t.store.clone(), t.clock.clone());
    assert!(second.run_once().await.unwrap());
    let taken = job(&t, &created.id).await;
    assert_eq!(taken.done, 2_000);
    // The first one's next page finds the lease not its own: nothing is written.
    assert!(first.run_once().await.unwrap());
    let after = job(&t, &created.id).await;
    assert_eq!(
        (after.done, after.resume_after),
        (taken.done, taken.resume_after)
    );
    assert!(!first.run_once().await.unwrap(), "it let the job go");
    run_out(&mut second).await;
    let done = job(&t, &created.id).await;
    assert_eq!((done.state.as_str(), done.done), ("done", 5_000));
}

#[tokio::test]
async fn a_job_whose_subscription_is_deleted_ends_failed() {
    let t = Stepper::new().await;
    let (sub, created) = replaying(&t, 5_000).await;
    let mut runner = Runner::new(t.store.clone(), t.clock.clone());
    for _ in 0..7 {
        assert!(runner.run_once().await.unwrap());
    }
    assert!(
        t.store
            .delete_subscription("default", &sub.id)
            .await
            .unwrap()
    );
    run_out(&mut runner).await;
    let failed = job(&t, &created.id).await;
    assert_eq!(failed.state, "failed", "{failed:?}");
    assert_eq!(
        failed.error.as_deref(),
        Some("its subscription was deleted")
    );
    assert_eq!(failed.done, 1_000);
    assert_eq!(
        count(&t, &sub.id, "pending").await,
        0,
        "no page after the delete"
    );
}
