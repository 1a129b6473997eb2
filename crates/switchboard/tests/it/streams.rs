//! Server-Sent Event streams (DESIGN §10): resumable with no gap and no duplicate, filtered,
//! the agents stream's snapshot and changes, a consumer that stops reading, and shutdown.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::TestApp;
use crate::support::app::{ADMIN_KEY, agent_event, guid, json_ok, problem};
use crate::support::db::TestData;
use crate::support::process::Server;
use crate::support::receiver::eventually;
use crate::support::sse::SseReader;

const SOON: Duration = Duration::from_secs(10);

/// `n` StatusChanged events over `agents` agents, with increasing times.
fn statuses(n: usize, agents: usize, offset: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut e = agent_event(&guid(), 3, &format!("agent{}", (i + offset) % agents));
            let activity = [16, 0, 34, 17][(i + offset) % 4];
            e["AdditionalFields"]["ActivityCode"] = json!(activity);
            let secs = i + offset;
            e["CreationDateUtc"] = json!(format!(
                "202611231{:01}{:02}{:02}",
                secs / 3600 % 10,
                secs / 60 % 60,
                secs % 60
            ));
            e
        })
        .collect()
}

/// Posts `events` in batches of 50 from a task of its own.
fn post_in_background(app: &TestApp, events: Vec<Value>) -> tokio::task::JoinHandle<()> {
    let (client, url) = (app.client.clone(), app.url("/v1/tenants/default/events"));
    tokio::spawn(async move {
        for batch in events.chunks(50) {
            let r = client
                .post(&url)
                .bearer_auth(ADMIN_KEY)
                .json(&batch)
                .send()
                .await
                .expect("post");
            assert_eq!(r.status(), StatusCode::ACCEPTED);
        }
    })
}

/// Reads `n` event messages; checks each is an `event` with `id` equal to its sequence.
async fn read_events(reader: &mut SseReader, n: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let m = reader.next_within(SOON).await.expect("the stream goes on");
        assert_eq!(m.event, "event");
        assert_eq!(m.id, m.data["sequence"].as_i64());
        out.push(m.id.unwrap());
    }
    out
}

#[tokio::test]
async fn an_events_stream_resumed_mid_load_gets_every_event_once_in_order() {
    let app = TestApp::spawn().await;
    // Before the stream: not part of it (a stream without a resume point starts from now).
    app.publish_ok("default", &Value::Array(statuses(5, 3, 0)))
        .await;
    let mut reader =
        SseReader::open(&app, "/v1/tenants/default/events/stream", ADMIN_KEY, None).await;
    let producer = post_in_background(&app, statuses(1500, 20, 5));
    let mut got = read_events(&mut reader, 400).await;
    // Disconnect mid-load; resume after the last id received.
    drop(reader);
    let last = *got.last().unwrap();
    let mut reader = SseReader::open(
        &app,
        "/v1/tenants/default/events/stream",
        ADMIN_KEY,
        Some(last),
    )
    .await;
    got.extend(read_events(&mut reader, 1100).await);
    producer.await.unwrap();
    let want: Vec<i64> = (6..=1505).collect();
    assert_eq!(got, want, "every event once, in sequence order");

    // Filtered, from the start of the log with ?after=: only the matching events.
    let path = "/v1/tenants/default/events/stream?after=0&username=agent7&code=3";
    let mut filtered = SseReader::open(&app, path, ADMIN_KEY, None).await;
    let log = app.events_where("default", "username=agent7&code=3").await;
    assert!(log.len() > 50);
    let mut seen = Vec::new();
    for _ in 0..log.len() {
        let m = filtered.next_within(SOON).await.unwrap();
        assert_eq!(m.data["event"]["AdditionalFields"]["Username"], "agent7");
        seen.push(m.data);
    }
    assert_eq!(seen, log);
    // And live: the next matching event, not the others.
    let mut other = agent_event(&guid(), 3, "agent8");
    other["CreationDateUtc"] = json!("20261124000000");
    let mut mine = agent_event(&guid(), 3, "agent7");
    mine["CreationDateUtc"] = json!("20261124000001");
    app.publish_ok("default", &json!([other, mine])).await;
    let m = filtered.next_within(SOON).await.unwrap();
    assert_eq!(m.data["event"]["Id"], mine["Id"]);

    // Refusals before the stream starts are problems.
    let bad = problem(
        app.get("/v1/tenants/default/events/stream?after=x", ADMIN_KEY)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(bad["errors"][0]["field"], "after");
    problem(
        app.get("/v1/tenants/default/events/stream", "nope").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

/// The agents a consumer holds, by username.
type View = BTreeMap<String, Value>;

fn view_of(agents: &Value) -> View {
    agents
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["username"].as_str().unwrap().to_string(), a.clone()))
        .collect()
}

async fn current(app: &TestApp) -> (View, i64) {
    let page = json_ok(
        app.get("/v1/tenants/default/agents?limit=1000", ADMIN_KEY)
            .await,
    )
    .await;
    (
        view_of(&page["data"]),
        page["as_of_sequence"].as_i64().unwrap(),
    )
}

/// Applies `agent` messages to `view` until it equals the server's agents as of sequence
/// `through` (the log's last); returns the last id. Under load the projection may trail the
/// log by a few milliseconds: its `as_of_sequence` says when it has caught up.
async fn follow_until_current(
    reader: &mut SseReader,
    view: &mut View,
    app: &TestApp,
    through: i64,
) -> i64 {
    let (want, as_of) = eventually("the projection catches up with the log", || async {
        let (agents, as_of) = current(app).await;
        (as_of >= through).then_some((agents, as_of))
    })
    .await;
    let mut last = 0;
    while *view != want {
        let m = reader.next_within(SOON).await.expect("the stream goes on");
        assert_eq!(m.event, "agent");
        assert_eq!(m.id, m.data["last_sequence"].as_i64());
        assert!(m.id.unwrap() > last, "changes come in sequence order");
        last = m.id.unwrap();
        assert!(last <= as_of);
        view.insert(m.data["username"].as_str().unwrap().into(), m.data);
    }
    last
}

#[tokio::test]
async fn an_agents_stream_starts_with_the_snapshot_then_follows_every_change() {
    let app = TestApp::spawn().await;
    app.publish_ok("default", &Value::Array(statuses(60, 12, 0)))
        .await;
    let path = "/v1/tenants/default/agents/stream";
    let mut reader = SseReader::open(&app, path, ADMIN_KEY, None).await;
    let snap = reader.next_within(SOON).await.unwrap();
    assert_eq!(snap.event, "snapshot");
    let (want, as_of) = current(&app).await;
    assert_eq!(snap.id, Some(as_of));
    assert_eq!(snap.data["as_of_sequence"], as_of);
    let mut view = view_of(&snap.data["agents"]);
    assert_eq!(view, want, "the snapshot is GET …/agents");
    assert_eq!(view.len(), 12);

    // Changes, while they are posted.
    post_in_background(&app, statuses(300, 15, 60))
        .await
        .unwrap();
    let last = follow_until_current(&mut reader, &mut view, &app, 360).await;

    // Disconnected; more changes; resumed from the last id: the view is current again.
    drop(reader);
    app.publish_ok("default", &Value::Array(statuses(100, 15, 360)))
        .await;
    let mut reader = SseReader::open(&app, path, ADMIN_KEY, Some(last)).await;
    follow_until_current(&mut reader, &mut view, &app, 460).await;
    // A live change arrives as one message.
    app.publish_ok("default", &Value::Array(statuses(1, 15, 460)))
        .await;
    let m = reader.next_within(SOON).await.unwrap();
    assert_eq!(m.event, "agent");
    assert_eq!(m.data["username"], "agent10");
    assert_eq!(m.data, current(&app).await.0["agent10"]);

    // An id the projection has not reached (another database's): a fresh snapshot.
    let mut reader = SseReader::open(&app, path, ADMIN_KEY, Some(1_000_000)).await;
    let snap = reader.next_within(SOON).await.unwrap();
    assert_eq!(snap.event, "snapshot");
    assert_eq!(view_of(&snap.data["agents"]), current(&app).await.0);
}

#[tokio::test]
async fn streams_end_cleanly_when_the_server_stops() {
    let app = TestApp::spawn().await;
    let mut events =
        SseReader::open(&app, "/v1/tenants/default/events/stream", ADMIN_KEY, None).await;
    let mut agents =
        SseReader::open(&app, "/v1/tenants/default/agents/stream", ADMIN_KEY, None).await;
    assert_eq!(agents.next_within(SOON).await.unwrap().event, "snapshot");
    let stopping = tokio::spawn(app.stop());
    assert!(events.next_within(SOON).await.is_none(), "the stream ends");
    assert!(agents.next_within(SOON).await.is_none(), "the stream ends");
    tokio::time::timeout(SOON, stopping)
        .await
        .expect("the server stops although streams were open")
        .unwrap();
}

/// The events streams of two PostgreSQL nodes both see events either node accepted.
#[tokio::test]
async fn every_postgresql_nodes_streams_see_every_nodes_events() {
    let app = TestApp::spawn_in(TestData::postgres().await).await;
    let second = app.second_node().await;
    let path = "/v1/tenants/default/events/stream";
    let mut on_first = SseReader::open(&app, path, ADMIN_KEY, None).await;
    let mut on_second = SseReader::open(&second, path, ADMIN_KEY, None).await;
    app.publish_ok("default", &Value::Array(statuses(3, 3, 0)))
        .await;
    second
        .publish_ok("default", &Value::Array(statuses(3, 3, 3)))
        .await;
    assert_eq!(read_events(&mut on_first, 6).await, [1, 2, 3, 4, 5, 6]);
    assert_eq!(read_events(&mut on_second, 6).await, [1, 2, 3, 4, 5, 6]);
    second.stop().await;
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Consumers that stop reading cost the server bounded memory, and get every event when they
/// read again. Bounded means: once ten consumers are stalled, 20,000 more events grow the
/// server's memory about as much as the same load grows it without streams (ingest itself grows
/// it a little: caches, ids waiting to be merged), give or take 30 MiB of allocator noise
/// (measured: up to 10 MiB); a server that buffered for them would add 10 × 20,000 messages of
/// about 360 bytes (over 68 MiB) per round. The
/// first round after the consumers stall is not what is measured: it opens read connections and
/// fills their page caches once (a fixed cost, up to about 20 MiB depending on timing, which made
/// a one-round measure flaky).
#[tokio::test]
async fn consumers_that_stop_reading_cost_bounded_memory_and_miss_nothing() {
    let data = TestData::new().await;
    // The consumers stall for as long as 40,000 events take to post, over a minute on a slow
    // machine: past the default stream_idle_secs, which would close them.
    let server = Server::start_env(&data, &[("SWITCHBOARD_STREAM_IDLE_SECS", "600")], None);
    let client = reqwest::Client::new();
    let post_all = |events: Vec<Value>| {
        let (client, url) = (
            client.clone(),
            format!("{}/v1/tenants/default/events", server.base),
        );
        async move {
            for batch in events.chunks(500) {
                let r = client
                    .post(&url)
                    .bearer_auth(ADMIN_KEY)
                    .json(&batch)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::ACCEPTED);
            }
        }
    };
    let pid = server.child.id();
    post_all(statuses(20_000, 200, 0)).await;
    let warm = rss_kib(pid);
    post_all(statuses(20_000, 200, 20_000)).await;
    let control = rss_kib(pid);

    let url = format!("{}/v1/tenants/default/events/stream", server.base);
    let mut readers = Vec::new();
    for _ in 0..10 {
        readers.push(SseReader::open_at(&client, &url, ADMIN_KEY, None).await);
    }
    let metrics = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains("switchboard_streams_open 10\n"),
        "{metrics}"
    );
    post_all(statuses(20_000, 200, 40_000)).await;
    let stalled = rss_kib(pid);
    post_all(statuses(20_000, 200, 60_000)).await;
    let still_stalled = rss_kib(pid);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let (ingest, first, second) = (
        mib(control.saturating_sub(warm)),
        mib(stalled.saturating_sub(control)),
        mib(still_stalled.saturating_sub(stalled)),
    );
    eprintln!(
        "server RSS: +{ingest:.1} MiB for 20,000 events; with 10 stalled consumers +{first:.1} \
         MiB for 20,000 more, then +{second:.1} MiB for 20,000 more"
    );
    assert!(
        second < ingest + 30.0,
        "10 stalled consumers grew the server by {second:.1} MiB over 20,000 events, against \
         {ingest:.1} MiB without streams"
    );

    let want: Vec<i64> = (40_001..=80_000).collect();
    for reader in &mut readers {
        assert_eq!(read_events(reader, 40_000).await, want);
    }
    drop(readers);
    let closed = eventually("the streams' end is counted", || async {
        let m = client
            .get(format!("{}/metrics", server.base))
            .send()
            .await
            .unwrap();
        m.text()
            .await
            .unwrap()
            .contains("switchboard_streams_open 0\n")
            .then_some(())
    });
    closed.await;
}
