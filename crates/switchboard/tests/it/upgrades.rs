//! Stored forms that this release cannot read (a newer release's, a damaged row) harm only
//! themselves (DESIGN §15).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::app::{ADMIN_KEY, agent_event, guid, json_ok, problem};
use crate::support::db::{OldDb, TestData};
use crate::support::process::Server;
use crate::support::receiver::eventually;
use crate::support::{TestApp, TestReceiver};

/// A stored subscription with fields this release does not know (what a newer release wrote)
/// is read without them and served; one whose stored form is garbage harms only itself: it is
/// listed with only its identity, receives nothing, counts in the metric, and a `PATCH` with a
/// whole body repairs it (DESIGN §15).
#[tokio::test]
async fn stored_subscriptions_are_read_tolerantly_and_a_garbage_one_harms_only_itself() {
    let app = TestApp::spawn().await;
    let good = TestReceiver::start().await;
    let newer = TestReceiver::start().await;
    let lost = TestReceiver::start().await;
    app.subscribe(json!({"url": good.url("/")})).await;
    let from_newer = app
        .subscribe(json!({"url": newer.url("/"), "filter": {"events": [{"category": 1}]}}))
        .await;
    let broken = app.subscribe(json!({"url": lost.url("/")})).await;
    let secret = broken["secret"].as_str().unwrap().to_owned();
    let (newer_id, id) = (
        from_newer["id"].as_str().unwrap(),
        broken["id"].as_str().unwrap(),
    );
    let mut db = OldDb::latest(&app.data).await;
    let mut spec: Value = {
        let r = app
            .get(
                &format!("/v1/tenants/default/subscriptions/{newer_id}"),
                ADMIN_KEY,
            )
            .await;
        json_ok(r).await
    };
    for gone in [
        "id",
        "created_at",
        "updated_at",
        "disabled_reason",
        "public_key",
    ] {
        spec.as_object_mut().unwrap().remove(gone);
    }
    spec["destination"] = json!({"kind": "nats", "subject": "agents"});
    spec["filter"]["groups"] = json!(["sales"]);
    spec["filter"]["events"][0]["wildcard"] = json!(true);
    let spec = spec.to_string().replace('\'', "''");
    db.exec(&format!(
        "UPDATE subscriptions SET spec = '{spec}', updated_at = updated_at + 1 WHERE id = '{newer_id}'"
    ))
    .await;
    db.exec(&format!(
        "UPDATE subscriptions SET spec = '{{\"url\": 7, \"secret\": \"{secret}\"}}' \
         , updated_at = updated_at + 1 WHERE id = '{id}'"
    ))
    .await;
    db.close().await;

    // Ingest goes on, and so does delivery to the others, the newer one's included.
    for _ in 0..3 {
        app.publish_ok("default", &agent_event(&guid(), 1, "jdoe"))
            .await;
    }
    good.wait_for(3).await;
    newer.wait_for(3).await;
    assert!(lost.received().is_empty());

    // The API lists all three; the broken one with only its identity.
    let list = json_ok(
        app.get("/v1/tenants/default/subscriptions", ADMIN_KEY)
            .await,
    )
    .await;
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    let listed = data.iter().find(|s| s["id"] == id).unwrap();
    assert_eq!(listed["undecodable"], true);
    let mut keys: Vec<_> = listed.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["created_at", "id", "undecodable", "updated_at"]);
    let path = format!("/v1/tenants/default/subscriptions/{id}");
    let got = json_ok(app.get(&path, ADMIN_KEY).await).await;
    assert_eq!(&got, listed);
    let newer_got = data.iter().find(|s| s["id"] == newer_id).unwrap();
    assert!(newer_got.get("undecodable").is_none());
    assert_eq!(newer_got["filter"], json!({"events": [{"category": 1}]}));
    // What needs its body is refused, naming the way out.
    let test = app.act(&broken, "test", None).await;
    let p = problem(test, StatusCode::CONFLICT).await;
    assert!(p["detail"].as_str().unwrap().contains("PATCH"), "{p}");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("switchboard_undecodable_rows_total{kind=\"subscription\"}"),
        "{metrics}"
    );

    // A whole body repairs it; the stored secret is kept, and it receives again.
    let r = app
        .call(
            reqwest::Method::PATCH,
            &path,
            ADMIN_KEY,
            Some(&json!({"url": lost.url("/")})),
        )
        .await;
    let repaired = json_ok(r).await;
    assert_eq!(repaired["secret"], secret);
    assert!(repaired.get("undecodable").is_none());
    app.publish_ok("default", &agent_event(&guid(), 1, "jdoe"))
        .await;
    lost.wait_for(1).await;
}

/// Told to stop, a node drains first (DESIGN §15): `/readyz` answers 503 `draining` while
/// ingest still answers 202; then it exits 0, and what it accepted is kept.
#[tokio::test]
async fn a_node_told_to_stop_drains_then_exits_cleanly() {
    let data = TestData::new().await;
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.dir.path())
        .arg("--database-url")
        .arg(data.database_url())
        .env("SWITCHBOARD_ADMIN_KEY", ADMIN_KEY)
        .env("SWITCHBOARD_LOG_LEVEL", "warn")
        .env("SWITCHBOARD_DRAIN_SECS", "3");
    let mut server = Server::launch(command, Stdio::inherit());
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    let told = Instant::now();
    server.terminate();
    let draining = loop {
        let r = client
            .get(format!("{}/readyz", server.base))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            break r;
        }
        assert!(told.elapsed() < Duration::from_secs(2), "never draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(draining.headers()["content-type"], "application/json");
    assert_eq!(
        draining.json::<Value>().await.unwrap(),
        json!({"status": "draining"})
    );
    // Still serving: an event posted while draining is accepted.
    let id = guid();
    let r = server
        .post(
            &client,
            "/v1/tenants/default/events",
            &agent_event(&id, 1, "jdoe"),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    drop(client);
    let status = tokio::task::spawn_blocking(move || server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        told.elapsed() >= Duration::from_secs(3),
        "left before its drain"
    );

    // Kept: the next node has it.
    let again = Server::start(&data);
    let ids = again.event_ids(&reqwest::Client::new()).await;
    assert!(ids.contains(&id));
}

/// A database with a migration this binary does not know (DESIGN §15): it starts, with a
/// warning naming it, when the migration lets the previous release run; otherwise `serve` and
/// `migrate` exit with status 3 and one line naming both schema versions.
#[tokio::test]
async fn a_newer_schema_lets_this_binary_run_only_when_it_says_so() {
    let data = TestData::new().await;
    let mut first = Server::start(&data);
    first.kill();
    let mut db = OldDb::latest(&data).await;
    let postgres = db.is_postgres();
    let ours = switchboard::store::migrations(postgres).last().unwrap().0;
    let newer = ours + 1;
    let checksum = if postgres { "'\\x00'" } else { "x'00'" };
    db.exec(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ({newer}, 'of a newer release', TRUE, {checksum}, 0)"
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO schema_compat (version, previous_may_run) VALUES ({newer}, TRUE)"
    ))
    .await;

    // Allowed: it starts, says so, and serves.
    let (mut server, logs) = Server::start_logged(&data);
    server.publish_one().await;
    let version = newer.to_string();
    eventually("the warning naming the newer migration", || async {
        (logs.matching(&["newer release", &version]).len() == 1).then_some(())
    })
    .await;
    server.kill();

    // Not allowed: exit 3, one line naming both versions, for serve and for migrate.
    db.exec(&format!(
        "UPDATE schema_compat SET previous_may_run = FALSE WHERE version = {newer}"
    ))
    .await;
    db.close().await;
    for command in ["serve", "migrate"] {
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args([command, "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.dir.path())
            .arg("--database-url")
            .arg(data.database_url())
            .env("SWITCHBOARD_ADMIN_KEY", ADMIN_KEY)
            .env("SWITCHBOARD_LOG_LEVEL", "error")
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{command}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{command}: {stderr}");
        assert!(
            lines[0].starts_with("error: ")
                && lines[0].contains(&format!("version {newer}"))
                && lines[0].contains(&format!("binary's {ours}")),
            "{command}: {stderr}"
        );
    }
}

/// A stop waits for no purge (DESIGN §15): a node told to stop while retention is purging a
/// large expired backlog leaves the rest of it for later and exits 0 at once; before, it
/// purged to the end first (15 s for 20,000 events on PostgreSQL).
#[tokio::test]
async fn a_stop_waits_for_no_purge() {
    let data = TestData::postgres().await;
    let server = Server::start(&data);
    let client = reqwest::Client::new();
    for _ in 0..40 {
        let batch: Vec<Value> = (0..500)
            .map(|i| agent_event(&guid(), 3, &format!("agent{}", i % 50)))
            .collect();
        let r = server
            .post(&client, "/v1/tenants/default/events", &Value::Array(batch))
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    drop(server);
    // All of them received 60 days ago, beyond the default retention (30): the next node's
    // first purge finds 20,000 expired.
    let db = sqlx::PgPool::connect(&data.database_url()).await.unwrap();
    sqlx::query("UPDATE events SET received_at = received_at - 5184000000")
        .execute(&db)
        .await
        .unwrap();
    let mut server = Server::start(&data);
    let at_stop = eventually("the purge under way", || async {
        let left = events_left(&db).await;
        (left < 20_000).then_some(left)
    })
    .await;
    server.terminate();
    let status = tokio::task::spawn_blocking(move || server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    // At most the batch queued when it was told, and one being read, went after that.
    let purged_after = at_stop - events_left(&db).await;
    assert!(
        purged_after <= 2 * switchboard::store::PURGE_BATCH,
        "{purged_after} events were purged after the node was told to stop"
    );
}

async fn events_left(db: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(db)
        .await
        .unwrap()
}

/// A rolling upgrade on PostgreSQL, simulated (DESIGN §15): a node of this release keeps
/// serving while "the next release" migrates the shared database under it — new columns, a new
/// index and table, its own `schema_compat` verdict (the previous release may run) and its
/// stored form of a subscription (fields this release does not know) — and a second node
/// starts on the migrated database (allowed, with a warning). Under load on both: every
/// request `202`, nothing lost, every event delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_loses_nothing_and_refuses_nothing() {
    let data = TestData::postgres().await;
    let receiver = TestReceiver::start().await;
    let old = Server::start(&data);
    let client = reqwest::Client::new();
    let r = old
        .post(
            &client,
            "/v1/tenants/default/subscriptions",
            &json!({"url": receiver.url("/"), "ordering": "per_agent"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // Load, batch after batch, on whichever nodes are up.
    let bases = std::sync::Arc::new(std::sync::Mutex::new(vec![old.base.clone()]));
    let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let (bases, sent, stop) = (bases.clone(), sent.clone(), stop.clone());
        async move {
            let client = reqwest::Client::new();
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let base = {
                    let b = bases.lock().unwrap();
                    b[n % b.len()].clone()
                };
                let ids: Vec<String> = (0..20).map(|_| guid()).collect();
                let batch: Vec<Value> = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| agent_event(id, 3, &format!("agent{}", (n + i) % 7)))
                    .collect();
                let r = crate::support::process::post_to(
                    &client,
                    &base,
                    "/v1/tenants/default/events",
                    &Value::Array(batch),
                )
                .await;
                let status = r.status();
                if status != StatusCode::ACCEPTED {
                    let body = r.text().await.unwrap_or_default();
                    panic!("{base} answered {status}: {body}");
                }
                sent.lock().unwrap().extend(ids);
                n += 1;
            }
        }
    });
    let at_least = |n: usize| {
        let sent = sent.clone();
        async move {
            eventually("events sent", || async {
                (sent.lock().unwrap().len() >= n).then_some(())
            })
            .await
        }
    };
    at_least(400).await;

    // The next release migrates: expand only, and says the previous release may run.
    let db = sqlx::PgPool::connect(&data.database_url()).await.unwrap();
    let next = switchboard::store::migrations(true).last().unwrap().0 + 1;
    let statements = [
        "ALTER TABLE events ADD COLUMN region TEXT".to_string(),
        "ALTER TABLE deliveries ADD COLUMN trace_id TEXT DEFAULT NULL".into(),
        "ALTER TABLE subscriptions ADD COLUMN destination_kind TEXT NOT NULL DEFAULT 'http'".into(),
        "CREATE INDEX events_by_region ON events (tenant_id, region)".into(),
        "CREATE TABLE exports (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, spec TEXT NOT NULL)"
            .into(),
        format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES ({next}, 'the next release', TRUE, '\\x00', 0)"
        ),
        format!("INSERT INTO schema_compat (version, previous_may_run) VALUES ({next}, TRUE)"),
        // Its stored form of the subscription carries what it added.
        "UPDATE subscriptions SET spec = (spec::jsonb || \
         '{\"destination\": {\"kind\": \"http\"}, \"auth\": null}'::jsonb)::text, \
         updated_at = updated_at + 1"
            .into(),
    ];
    // As sqlx runs a migration: in one transaction. Should it lose a deadlock to a node's
    // writer, it is run again (a real node would fail to start, and be started again).
    let mut tries = 0;
    loop {
        let mut tx = db.begin().await.unwrap();
        let mut failed = None;
        for sql in &statements {
            if let Err(e) = sqlx::query(sql).execute(&mut *tx).await {
                failed = Some(e);
                break;
            }
        }
        match failed {
            None => {
                tx.commit().await.unwrap();
                break;
            }
            Some(e) => {
                eprintln!("the migration lost to a node's writer ({e}); running it again");
                tries += 1;
                assert!(tries < 5, "the migration failed {tries} times: {e}");
                drop(tx);
            }
        }
    }
    let so_far = sent.lock().unwrap().len();
    at_least(so_far + 400).await;

    // A second node starts on the migrated database, and takes half the load.
    let beside = TestData::beside(data.database_url());
    // Its start blocks this worker while it reads the node's first line; the receiver and the
    // load run on the other.
    let (new, logs) = Server::start_logged(&beside);
    eventually("the warning that the schema is newer", || async {
        (logs.matching(&["newer release"]).len() == 1).then_some(())
    })
    .await;
    bases.lock().unwrap().push(new.base.clone());
    let so_far = sent.lock().unwrap().len();
    at_least(so_far + 800).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();

    // Nothing lost: every event in the log once, and delivered.
    let ids: std::collections::HashSet<String> = sent.lock().unwrap().iter().cloned().collect();
    assert_eq!(old.event_ids(&client).await, ids);
    receiver
        .wait_until(
            |got| ids.is_subset(&got.iter().map(|r| r.event_id()).collect()),
            "every event delivered",
        )
        .await;
    drop(new);
}
