//! What one key, one tenant or one anonymous client may hold or make the server do (DESIGN
//! §23): each limit answers with a problem naming it, and secrets stay with those who may see
//! them.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::app::{ADMIN_KEY, agent_event, guid, json_ok, problem};
use crate::support::db::TestData;
use crate::support::process::{Server, serve_command};
use crate::support::receiver::eventually;
use crate::support::sse::SseReader;
use crate::support::{TestApp, TestReceiver};

const EVENTS_STREAM: &str = "/v1/tenants/default/events/stream";

/// Asks for a stream: its status, and the answer (the open stream when 200).
async fn open(app: &TestApp, path: &str, key: &str) -> (StatusCode, Option<reqwest::Response>) {
    let r = app.get(path, key).await;
    (r.status(), Some(r))
}

#[tokio::test]
async fn streams_past_a_keys_or_a_tenants_limit_are_refused_naming_it() {
    let app = TestApp::spawn_with(|c| {
        c.max_streams_per_key = 3;
        c.max_streams_per_tenant = 5;
    })
    .await;
    let first = app.create_key("default", &["read"]).await;
    let second = app.create_key("default", &["read"]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(SseReader::open(&app, EVENTS_STREAM, &first, None).await);
    }
    let (_, r) = open(&app, "/v1/tenants/default/agents/stream", &first).await;
    let doc = problem(r.unwrap(), StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(doc["limit"], "max_streams_per_key", "{doc}");
    // The tenant's other key has room up to the tenant's limit.
    for _ in 0..2 {
        held.push(SseReader::open(&app, EVENTS_STREAM, &second, None).await);
    }
    let (_, r) = open(&app, EVENTS_STREAM, &second).await;
    let doc = problem(r.unwrap(), StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(doc["limit"], "max_streams_per_tenant", "{doc}");
    // Another tenant is not held back by this one.
    app.create_tenant("other").await;
    let other = app.create_key("other", &["read"]).await;
    let _theirs = SseReader::open(&app, "/v1/tenants/other/events/stream", &other, None).await;
    // A stream that ends gives its slot back.
    drop(held.pop());
    eventually("the closed stream's slot to come back", || async {
        let (status, _) = open(&app, EVENTS_STREAM, &second).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_deleted_keys_streams_end_within_a_second() {
    let app = TestApp::spawn().await;
    let created = json_ok_created(
        app.call(
            Method::POST,
            "/v1/tenants/default/keys",
            ADMIN_KEY,
            Some(&json!({"name": "wallboard", "scopes": ["read"]})),
        )
        .await,
    )
    .await;
    let key = created["key"].as_str().unwrap();
    let mut events = SseReader::open(&app, EVENTS_STREAM, key, None).await;
    let mut agents = SseReader::open(&app, "/v1/tenants/default/agents/stream", key, None).await;
    assert_eq!(agents.next().await.unwrap().event, "snapshot");
    app.publish_ok("default", &agent_event(&guid(), 1, "jdoe"))
        .await;
    assert_eq!(events.next().await.unwrap().event, "event");

    let path = format!(
        "/v1/tenants/default/keys/{}",
        created["id"].as_str().unwrap()
    );
    let r = app.call(Method::DELETE, &path, ADMIN_KEY, None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let deleted = Instant::now();
    for stream in [&mut events, &mut agents] {
        let last = loop {
            let m = stream.next_within(Duration::from_secs(2)).await;
            match m {
                Some(m) if m.event == "agent" => continue,
                other => break other,
            }
        };
        let last = last.expect("an error message before the end");
        assert_eq!(
            (last.event.as_str(), &last.data),
            ("error", &json!({"reason": "key revoked"}))
        );
        assert!(
            stream.next_within(Duration::from_secs(2)).await.is_none(),
            "then the stream ends"
        );
    }
    let took = deleted.elapsed();
    // Checked when keys are deleted: within a second, with room for a loaded machine.
    assert!(
        took < Duration::from_secs(3),
        "ended {took:?} after the delete"
    );
}

async fn json_ok_created(r: reqwest::Response) -> Value {
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

#[tokio::test]
async fn subscription_headers_are_shown_to_manage_keys_only_and_kept_when_sent_back_masked() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let sub = app
        .subscribe(json!({"url": rx.url("/"), "headers": {"Authorization": "Bearer s3cret"}}))
        .await;
    let id = sub["id"].as_str().unwrap();
    let path = format!("/v1/tenants/default/subscriptions/{id}");
    let reader = app.create_key("default", &["read"]).await;
    let manager = app.create_key("default", &["manage"]).await;
    let seen = json_ok(app.get(&path, &reader).await).await;
    assert_eq!(seen["headers"], json!({"Authorization": "***"}));
    let listed = json_ok(app.get("/v1/tenants/default/subscriptions", &reader).await).await;
    assert_eq!(
        listed["data"][0]["headers"],
        json!({"Authorization": "***"})
    );
    let managed = json_ok(app.get(&path, &manager).await).await;
    assert_eq!(
        managed["headers"],
        json!({"Authorization": "Bearer s3cret"})
    );

    // The masked value sent back (as a form would) keeps the stored one; a new one replaces it.
    let patch = json!({"headers": {"Authorization": "***", "X-Team": "blue"}, "description": "x"});
    let r = app.call(Method::PATCH, &path, &manager, Some(&patch)).await;
    let patched = json_ok(r).await;
    assert_eq!(
        patched["headers"],
        json!({"Authorization": "Bearer s3cret", "X-Team": "blue"})
    );
    app.publish_ok("default", &agent_event(&guid(), 1, "jdoe"))
        .await;
    let got = rx.wait_for(1).await;
    assert_eq!(got[0].header("authorization"), "Bearer s3cret");
    assert_eq!(got[0].header("x-team"), "blue");
}

#[tokio::test]
async fn a_tenants_subscriptions_are_bounded() {
    let app = TestApp::spawn_with(|c| c.max_subscriptions_per_tenant = 2).await;
    let rx = TestReceiver::start().await;
    for _ in 0..2 {
        app.subscribe(json!({"url": rx.url("/")})).await;
    }
    let r = app
        .call(
            Method::POST,
            "/v1/tenants/default/subscriptions",
            ADMIN_KEY,
            Some(&json!({"url": rx.url("/")})),
        )
        .await;
    let doc = problem(r, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(doc["limit"], "max_subscriptions_per_tenant", "{doc}");
    let listed = json_ok(
        app.get("/v1/tenants/default/subscriptions", ADMIN_KEY)
            .await,
    )
    .await;
    assert_eq!(
        listed["data"].as_array().unwrap().len(),
        2,
        "nothing stored"
    );
}

#[tokio::test]
async fn metrics_need_the_metrics_key_when_one_is_set() {
    const METRICS_KEY: &str = "metrics-scraper-key-0123456789";
    let app = TestApp::spawn_with(|c| c.metrics_key = METRICS_KEY.into()).await;
    let reader = app.create_key("default", &["read", "manage"]).await;
    let anonymous = app.client.get(app.url("/metrics")).send().await.unwrap();
    problem(anonymous, StatusCode::UNAUTHORIZED).await;
    problem(app.get("/metrics", &reader).await, StatusCode::UNAUTHORIZED).await;
    for key in [METRICS_KEY, ADMIN_KEY] {
        let r = app.get("/metrics", key).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("switchboard_deliveries_pending")
        );
    }
    // Liveness stays public.
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_ingest_limit_is_taken_from_the_batchs_length_before_its_events_are_read() {
    let app = TestApp::spawn().await;
    let r = app
        .call(
            Method::PATCH,
            "/v1/tenants/default",
            ADMIN_KEY,
            Some(&json!({"ingest_rate_limit_per_sec": 2})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // A full bucket lets one batch into debt; the next one waits.
    let valid: Vec<Value> = (0..5)
        .map(|i| agent_event(&guid(), 1, &format!("a{i}")))
        .collect();
    app.publish_ok("default", &Value::Array(valid)).await;
    // Five events, each invalid: refused for the limit before any is validated.
    let batch: Vec<Value> = (0..5).map(|_| json!({"Id": "not a guid"})).collect();
    let r = app.publish("default", &Value::Array(batch)).await;
    let doc = problem(r, StatusCode::TOO_MANY_REQUESTS).await;
    assert!(doc["errors"].is_null(), "{doc}");
}

#[tokio::test]
async fn a_receivers_query_string_stays_out_of_errors() {
    let app = TestApp::spawn().await;
    // A port nothing listens on: the attempt fails with the client's error, which names the URL.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("http://127.0.0.1:{port}/hooks?token=s3cret-token");
    let sub = app
        .subscribe(json!({"url": url, "retry_schedule_secs": [3600]}))
        .await;
    let id = sub["id"].as_str().unwrap();
    app.publish_ok("default", &agent_event(&guid(), 1, "jdoe"))
        .await;
    let delivery = eventually("the failed attempt to be recorded", || async {
        let d = app.deliveries(id, None).await;
        (d.len() == 1 && d[0]["attempt_count"] == 1).then(|| d[0].clone())
    })
    .await;
    let detail = app.delivery(&delivery["id"]).await;
    let error = detail["attempts"][0]["error"].as_str().unwrap();
    assert!(error.contains("/hooks"), "{error}");
    assert!(!detail.to_string().contains("s3cret-token"), "{detail}");
}

/// The address of a process server's base URL.
fn addr_of(server: &Server) -> std::net::SocketAddr {
    server
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("host:port")
}

#[tokio::test]
async fn under_a_low_file_limit_streams_stop_at_their_cap_and_others_are_still_served() {
    let data = TestData::new().await;
    // 256 descriptors: 128 connections, 64 streams.
    let server = Server::start_env(&data, &[], Some(256));
    let client = reqwest::Client::new();
    let created = server
        .post(&client, "/v1/tenants", &json!({"id": "other"}))
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let url = format!("{}{EVENTS_STREAM}", server.base);
    let mut held = Vec::new();
    let refused = loop {
        let r = client
            .get(&url)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        if r.status() != StatusCode::OK {
            break r;
        }
        held.push(r);
        assert!(held.len() <= 128, "streams were never refused");
    };
    assert_eq!(held.len(), 64, "half of the 128 connections");
    let doc = problem(refused, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(doc["limit"], "max_streams", "{doc}");
    // With every stream open, another tenant's request and liveness are answered.
    let theirs = client
        .get(format!("{}/v1/tenants/other/subscriptions", server.base))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), StatusCode::OK);
    let health = client
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let data = TestData::new().await;
    let server = Server::start_env(
        &data,
        &[("SWITCHBOARD_HEADER_READ_TIMEOUT_SECS", "1")],
        None,
    );
    let mut stream = tokio::net::TcpStream::connect(addr_of(&server))
        .await
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    // Closed (or answered 408 and closed): a read that ends, however it ends.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was kept past 10 s");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    // The server itself serves on.
    let health = reqwest::get(format!("{}/healthz", server.base))
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn deliveries_ignore_proxy_variables_in_the_environment() {
    let data = TestData::new().await;
    let proxy = TestReceiver::start().await;
    let rx = TestReceiver::start().await;
    let proxy_url = proxy.url("");
    let env: Vec<(&str, &str)> = ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"]
        .into_iter()
        .map(|k| (k, proxy_url.as_str()))
        .collect();
    let server = Server::start_env(&data, &env, None);
    let client = reqwest::Client::new();
    // A hostname: the guard checks what it resolves to; a proxy would get it unchecked.
    let url = rx.url("/").replace("127.0.0.1", "localhost");
    let r = server
        .post(
            &client,
            "/v1/tenants/default/subscriptions",
            &json!({"url": url}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = server
        .post(
            &client,
            "/v1/tenants/default/events",
            &agent_event(&guid(), 1, "jdoe"),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    rx.wait_for(1).await;
    assert!(proxy.received().is_empty(), "the proxy was asked");
}

#[tokio::test]
async fn an_admin_key_shorter_than_32_characters_stops_the_start() {
    let data = TestData::new().await;
    let out = serve_command(
        &data,
        &[],
        &[("SWITCHBOARD_ADMIN_KEY", "sb_admin_short")],
        None,
    )
    .output()
    .expect("ran");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fewer than 32") && !stderr.contains("sb_admin_short"),
        "{stderr}"
    );
}

/// The resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

#[tokio::test]
async fn stalled_streams_of_large_events_hold_their_byte_budget_not_the_log() {
    const EVENTS: usize = 48;
    const STREAMS: usize = 16;
    let data = TestData::new().await;
    let server = Server::start_env(
        &data,
        &[("SWITCHBOARD_STREAM_BUFFER_BYTES", "2097152")],
        None,
    );
    let client = reqwest::Client::new();
    // 48 events of 512 KiB each: 24 MiB of log.
    let filler = "x".repeat(512 * 1024);
    for i in 0..EVENTS {
        let mut event = agent_event(&guid(), 1, &format!("agent{i}"));
        event["AdditionalFields"]["Notes"] = json!(filler);
        let r = server
            .post(&client, "/v1/tenants/default/events", &event)
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let pid = server.child.id();
    let before = rss_mib(pid);
    // Consumers that ask for everything from the start and never read.
    let mut stalled = Vec::new();
    for _ in 0..STREAMS {
        let r = client
            .get(format!("{}{EVENTS_STREAM}", server.base))
            .bearer_auth(ADMIN_KEY)
            .header("last-event-id", "0")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        stalled.push(r);
    }
    // Let them fill what they may: until the memory stops growing.
    let mut last = rss_mib(pid);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_mib(pid);
        if (now - last).abs() < 1.0 {
            break;
        }
        last = now;
    }
    let grown = rss_mib(pid) - before;
    eprintln!("{STREAMS} stalled streams: RSS {before:.0} MiB → +{grown:.0} MiB");
    // Each holds at most its 2 MiB budget and a page of about as much; a server that buffered
    // the log for them would hold 16 × 24 MiB.
    assert!(
        grown < 160.0,
        "{STREAMS} stalled streams took {grown:.0} MiB"
    );
    // They were sending: one of them, read now, gets every event in order.
    let mut reader = stalled.pop().unwrap();
    let mut text = String::new();
    let mut seen = 0;
    while seen < EVENTS {
        let chunk = tokio::time::timeout(Duration::from_secs(10), reader.chunk())
            .await
            .expect("the stream goes on")
            .unwrap()
            .expect("not ended");
        text.push_str(&String::from_utf8_lossy(&chunk));
        seen = text.matches("event: event\n").count();
    }
}

/// `n` events of agent `who` from second `start` on: a sign-in, then statuses alternating
/// between two activities, a second apart, so that each makes an interval of its own.
fn shift(who: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut e = agent_event(&guid(), if i == 0 { 1 } else { 3 }, who);
            if i > 0 {
                e["AdditionalFields"]["ActivityCode"] = json!(if i % 2 == 0 { 16 } else { 34 });
            }
            e["CreationDateUtc"] = json!(format!(
                "202611230{}{:02}{:02}",
                8 + i / 3600,
                i / 60 % 60,
                i % 60
            ));
            e
        })
        .collect()
}

#[tokio::test]
async fn timelines_are_paged_and_rebuilds_bounded_in_events() {
    let app = TestApp::spawn_with(|c| c.max_history_events = 100).await;
    app.publish_ok("default", &Value::Array(shift("small", 60)))
        .await;
    app.publish_ok("default", &Value::Array(shift("big", 120)))
        .await;
    let base = "/v1/tenants/default/agents";
    let whole = json_ok(
        app.get(
            &format!("{base}/small/timeline?since=20261123080000"),
            ADMIN_KEY,
        )
        .await,
    )
    .await;
    assert!(whole["next_after"].is_null());
    let intervals = whole["data"].as_array().unwrap().clone();
    assert!(intervals.len() >= 59, "{}", intervals.len());
    // In pages of 25: the same intervals, in order.
    let mut paged = Vec::new();
    let mut after = String::new();
    loop {
        let page = json_ok(
            app.get(
                &format!("{base}/small/timeline?since=20261123080000&limit=25{after}"),
                ADMIN_KEY,
            )
            .await,
        )
        .await;
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 25);
        paged.extend(data.iter().cloned());
        match page["next_after"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(paged, intervals);
    let r = app
        .get(
            &format!("{base}/small/timeline?since=20261123080000&limit=10001"),
            ADMIN_KEY,
        )
        .await;
    assert_eq!(
        problem(r, StatusCode::UNPROCESSABLE_ENTITY).await["errors"][0]["field"],
        "limit"
    );

    // 120 events of one agent: past the bound for a timeline and a late as_of; an early as_of
    // folds only what it needs.
    let r = app
        .get(
            &format!("{base}/big/timeline?since=20261123080000"),
            ADMIN_KEY,
        )
        .await;
    assert_eq!(
        problem(r, StatusCode::UNPROCESSABLE_ENTITY).await["errors"][0]["field"],
        "since"
    );
    let r = app.get(&format!("{base}/big?as_of=180"), ADMIN_KEY).await;
    assert_eq!(
        problem(r, StatusCode::UNPROCESSABLE_ENTITY).await["errors"][0]["field"],
        "as_of"
    );
    let early = json_ok(app.get(&format!("{base}/big?as_of=70"), ADMIN_KEY).await).await;
    assert_eq!(early["last_sequence"], 70);
}
