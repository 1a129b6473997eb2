//! Many nodes, one PostgreSQL: what only the PostgreSQL backend does. These tests always run
//! against PostgreSQL (see `TestData::postgres`) and fail loudly when it is unreachable.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

use crate::support::app::{ADMIN_KEY, agent_event, guid};
use crate::support::db::{TestData, old_postgres};
use crate::support::process::{Server, post_to};
use crate::support::receiver::{eventually_within, unique_ids};
use crate::support::{TestApp, TestReceiver};

/// Posts `events` in batches of 25, round-robin over `nodes`, four batches at a time.
async fn publish_round_robin(client: &reqwest::Client, nodes: &[String], events: &[Value]) {
    let batches: Vec<&[Value]> = events.chunks(25).collect();
    for (round, group) in batches.chunks(4).enumerate() {
        let posts: Vec<_> = group
            .iter()
            .enumerate()
            .map(|(i, batch)| {
                let base = nodes[(round * 4 + i) % nodes.len()].clone();
                let (client, body) = (client.clone(), Value::Array(batch.to_vec()));
                tokio::spawn(async move {
                    post_to(&client, &base, "/v1/tenants/default/events", &body)
                        .await
                        .status()
                })
            })
            .collect();
        for p in posts {
            assert_eq!(p.await.unwrap(), StatusCode::ACCEPTED);
        }
    }
}

/// Three nodes share one database; 5,000 events are posted round-robin and one node is
/// SIGKILLed mid-run. Every event arrives, duplicates stay under 1 %, and each agent's events
/// arrive in sequence order although different nodes accepted and delivered them.
#[tokio::test]
async fn three_nodes_one_killed_deliver_everything_in_per_agent_order() {
    let data = TestData::postgres().await;
    let rx = TestReceiver::with(|_, _| (200, Duration::from_millis(1))).await;
    let client = reqwest::Client::new();
    let mut nodes: Vec<Server> = (0..3).map(|_| Server::start(&data)).collect();
    let r = post_to(
        &client,
        &nodes[0].base,
        "/v1/tenants/default/subscriptions",
        &json!({"url": rx.url("/"), "ordering": "per_agent"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    let events: Vec<Value> = (0..5000)
        .map(|i| {
            agent_event(
                &guid(),
                [1, 3, 4, 5, 8, 3][i % 6],
                &format!("agent{}", i % 50),
            )
        })
        .collect();
    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
    publish_round_robin(&client, &bases, &events[..2500]).await;
    rx.wait_until(
        |got| unique_ids(got).len() >= 1000,
        "a first part of the deliveries",
    )
    .await;
    nodes[1].kill();
    assert!(
        unique_ids(&rx.received()).len() < 5000,
        "the kill came mid-run"
    );
    let survivors = vec![bases[0].clone(), bases[2].clone()];
    publish_round_robin(&client, &survivors, &events[2500..]).await;

    let want: HashSet<String> = events
        .iter()
        .map(|e| e["Id"].as_str().unwrap().to_string())
        .collect();
    let got = rx
        .wait_until(|got| unique_ids(got).is_superset(&want), "every event")
        .await;
    let duplicates = got.len() - unique_ids(&got).len();
    eprintln!(
        "{} deliveries of {} events: {duplicates} duplicates",
        got.len(),
        want.len()
    );
    assert!(
        duplicates * 100 < want.len(),
        "{duplicates} duplicates is 1 % or more"
    );

    let mut by_agent: HashMap<String, Vec<i64>> = HashMap::new();
    for r in &got {
        let agent = r.json()["AdditionalFields"]["Username"]
            .as_str()
            .unwrap()
            .to_string();
        by_agent
            .entry(agent)
            .or_default()
            .push(r.header("switchboard-sequence").parse().unwrap());
    }
    for (agent, seqs) in by_agent {
        assert!(
            seqs.windows(2).all(|w| w[0] <= w[1]),
            "{agent} out of order: {seqs:?}"
        );
    }
    drop(nodes);
}

async fn applied_migrations(data: &TestData) -> Vec<(i64, bool)> {
    let mut conn = PgConnection::connect(&data.database_url()).await.unwrap();
    sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

/// A node started against a database with an older schema migrates it, and works.
#[tokio::test]
async fn a_node_migrates_an_older_schema() {
    let data = TestData::postgres().await;
    // The schema as the first release left it: only migration 1.
    let mut conn = old_postgres(&data.database_url(), 1).await;
    sqlx::query("INSERT INTO events (tenant_id, sequence, id, created, category, code, received_at, body) \
                 VALUES ('default', 1, '0f8fad5b-d9cb-469f-a165-70867728950e', 20261123184603, 2, 1, 0, \
                 '{\"Id\":\"0f8fad5b-d9cb-469f-a165-70867728950e\",\"CreationDateUtc\":\"20261123184603\",\"Category\":2,\"Code\":1,\"AdditionalFields\":{}}')")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("UPDATE tenants SET last_sequence = 1")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(applied_migrations(&data).await, [(1, true)]);

    let node = Server::start(&data);
    let client = reqwest::Client::new();
    // Served once the store is open, so after the migrations.
    let r = client
        .get(format!("{}/readyz", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let all = switchboard::store::migrations(true).len() as i64;
    assert_eq!(
        applied_migrations(&data).await,
        (1..=all).map(|v| (v, true)).collect::<Vec<_>>()
    );
    let client = reqwest::Client::new();
    let r = post_to(
        &client,
        &node.base,
        "/v1/tenants/default/events",
        &agent_event(&guid(), 1, "jdoe"),
    )
    .await;
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        answer["events"][0]["sequence"], 2,
        "the old event is kept, sequences continue"
    );
}

/// Nodes started at the same moment on an empty database take turns migrating it.
#[tokio::test]
async fn nodes_starting_together_do_not_corrupt_the_migrations() {
    let data = TestData::postgres().await;
    let nodes: Vec<Server> = std::thread::scope(|s| {
        let starting: Vec<_> = (0..3).map(|_| s.spawn(|| Server::start(&data))).collect();
        starting.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let client = reqwest::Client::new();
    for node in &nodes {
        let r = client
            .get(format!("{}/readyz", node.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let all = switchboard::store::migrations(true).len() as i64;
    assert_eq!(
        applied_migrations(&data).await,
        (1..=all).map(|v| (v, true)).collect::<Vec<_>>()
    );
    let r = post_to(
        &client,
        &nodes[2].base,
        "/v1/tenants/default/events",
        &agent_event(&guid(), 1, "jdoe"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}

/// An `api` node accepts but does not deliver; a `worker` node delivers but has no API.
#[tokio::test]
async fn roles_split_the_api_from_delivery() {
    let data = TestData::postgres().await;
    let rx = TestReceiver::start().await;
    let client = reqwest::Client::new();
    let api = Server::start_with(&data, &["--role", "api"]);
    let r = post_to(
        &client,
        &api.base,
        "/v1/tenants/default/subscriptions",
        &json!({"url": rx.url("/")}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let event = agent_event(&guid(), 1, "jdoe");
    let r = post_to(&client, &api.base, "/v1/tenants/default/events", &event).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    let worker = Server::start_with(&data, &["--role", "worker"]);
    let got = rx.wait_for(1).await;
    assert_eq!(got[0].event_id(), event["Id"].as_str().unwrap());
    let r = post_to(&client, &worker.base, "/v1/tenants/default/events", &event).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "a worker serves no API");
    let r = client
        .get(format!("{}/readyz", worker.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// A key deleted through one node stops working on the others at once: authentication
/// remembers keys, and a deletion is announced to every node (`NOTIFY`), not left to the
/// 30-second expiry.
#[tokio::test]
async fn a_key_deleted_on_one_node_stops_working_on_the_others() {
    let data = TestData::postgres().await;
    let (a, b) = (Server::start(&data), Server::start(&data));
    let client = reqwest::Client::new();
    let r = post_to(
        &client,
        &a.base,
        "/v1/tenants/default/keys",
        &json!({"name": "crm", "scopes": ["publish", "read"]}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    let read_on_b = || {
        client
            .get(format!("{}/v1/tenants/default/events", b.base))
            .bearer_auth(&key)
            .send()
    };
    assert_eq!(read_on_b().await.unwrap().status(), StatusCode::OK);

    let r = client
        .delete(format!(
            "{}/v1/tenants/default/keys/{}",
            a.base,
            created["id"].as_str().unwrap()
        ))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // The notification is asynchronous: B refuses the key as soon as it arrives, well before
    // the expiry would (30 s).
    let refused = || async {
        (read_on_b().await.unwrap().status() == StatusCode::UNAUTHORIZED).then_some(())
    };
    eventually_within(
        "node B to refuse a key deleted on node A",
        Duration::from_secs(10),
        refused,
    )
    .await;
}

/// On PostgreSQL a node's claims and outcomes have a writer, and a connection, of their own: an
/// ingest turn that waits (here on its tenant's row, which another session holds, as another
/// node's long turn would) does not hold up the delivery of what was stored before it.
#[tokio::test]
async fn deliveries_are_recorded_while_an_ingest_turn_waits() {
    let app = TestApp::spawn_in(TestData::postgres().await).await;
    // The first attempt is held a while by the receiver: it is in flight when ingest starts
    // to wait, and its outcome comes back while ingest still waits.
    let rx = TestReceiver::with(|n, _| {
        let hold = if n == 0 { 1500 } else { 0 };
        (200, Duration::from_millis(hold))
    })
    .await;
    let sub = app.subscribe(json!({"url": rx.url("/")})).await;
    let sub = sub["id"].as_str().unwrap().to_string();
    app.publish_ok("default", &agent_event(&guid(), 1, "a1"))
        .await;
    rx.wait_for(1).await;

    let url = app.data.database_url();
    let mut holder = PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT 1 FROM tenants WHERE id = 'default' FOR UPDATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let (client, base) = (reqwest::Client::new(), app.url(""));
    let second = agent_event(&guid(), 3, "a1");
    let post = tokio::spawn(async move {
        post_to(&client, &base, "/v1/tenants/default/events", &second)
            .await
            .status()
    });
    // The node's ingest waits on the row.
    eventually_within(
        "the ingest turn to wait on the tenant's row",
        LIMIT,
        || async {
            let mut watch = PgConnection::connect(&url).await.unwrap();
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&mut watch)
            .await
            .unwrap();
            (waiting > 0).then_some(())
        },
    )
    .await;
    // Meanwhile the first event's outcome is written.
    eventually_within("the first delivery recorded", LIMIT, || async {
        (app.deliveries(&sub, Some("succeeded")).await.len() == 1).then_some(())
    })
    .await;
    assert!(!post.is_finished(), "the second POST waited all along");

    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    assert_eq!(post.await.unwrap(), StatusCode::ACCEPTED);
    rx.wait_for(2).await;
    app.stop().await;
}

/// Long enough for a loaded machine; the first delivery is recorded within about 1.5 s.
const LIMIT: Duration = Duration::from_secs(20);
