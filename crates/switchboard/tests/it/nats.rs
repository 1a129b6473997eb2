//! NATS JetStream destinations (DESIGN §17), against the real broker on loopback
//! (`SWITCHBOARD_TEST_NATS_URL`, default `nats://127.0.0.1:4222`; `.ci/run` starts it). Each
//! test makes a stream of its own over subjects of its own, and deletes it after.

use std::collections::{HashMap, HashSet};

use async_nats::jetstream;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use switchboard::delivery::signing::{Secret, verify};

use crate::support::app::{
    ADMIN_KEY, TestApp, agent_event, fields_named, free_port, guid, json_ok, problem,
};
use crate::support::db::OldDb;
use crate::support::receiver::{eventually, eventually_within};

const SUBS: &str = "/v1/tenants/default/subscriptions";

fn nats_url() -> String {
    std::env::var("SWITCHBOARD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A stream of the test's own, over `<prefix>.>`.
struct Stream {
    js: jetstream::Context,
    name: String,
    prefix: String,
}

impl Stream {
    async fn new() -> Self {
        let url = nats_url();
        let client = async_nats::connect(url.as_str()).await.unwrap_or_else(|e| {
            panic!("NATS with JetStream must run at {url} (.ci/run starts it): {e}")
        });
        let js = jetstream::new(client);
        let tag = guid().replace('-', "")[..12].to_owned();
        let name = format!("SBTEST_{tag}");
        let prefix = format!("sbtest.{tag}");
        js.create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            ..Default::default()
        })
        .await
        .expect("create the test's stream");
        Stream { js, name, prefix }
    }

    async fn count(&self) -> u64 {
        let mut stream = self.js.get_stream(&self.name).await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    /// Every message, in stream order.
    async fn messages(&self) -> Vec<jetstream::message::StreamMessage> {
        let stream = self.js.get_stream(&self.name).await.unwrap();
        let mut out = Vec::new();
        for seq in 1..=self.count().await {
            out.push(stream.get_raw_message(seq).await.unwrap());
        }
        out
    }

    async fn delete(self) {
        let _ = self.js.delete_stream(&self.name).await;
    }
}

/// The spec as stored (with what answers mask).
async fn stored_spec(app: &TestApp, id: &str) -> Value {
    let mut db = OldDb::latest(&app.data).await;
    let text = db
        .text(&format!("SELECT spec FROM subscriptions WHERE id = '{id}'"))
        .await;
    db.close().await;
    serde_json::from_str(&text).unwrap()
}

fn header<'a>(m: &'a jetstream::message::StreamMessage, name: &str) -> &'a str {
    m.headers
        .get(name)
        .unwrap_or_else(|| panic!("header {name} on {m:?}"))
        .as_str()
}

#[tokio::test]
async fn twenty_agents_reach_jetstream_each_in_order_signed_once_each() {
    let stream = Stream::new().await;
    let app = TestApp::spawn().await;
    let sub = app
        .subscribe(json!({
            "destination": {"type": "nats", "url": nats_url(),
                            "subject": format!("{}.{{tenant}}.{{category}}.{{code}}.{{agent}}", stream.prefix)},
            "ordering": "per_agent",
        }))
        .await;
    assert_eq!(sub["destination"]["type"], "nats");
    assert!(sub.get("url").is_none(), "{sub}");
    let secret = Secret::parse(sub["secret"].as_str().unwrap()).unwrap();
    // 20 agents × 50 events, interleaved: 50 batches of one event per agent.
    for round in 0..50u32 {
        let batch: Vec<Value> = (0..20)
            .map(|a| {
                agent_event(
                    &guid(),
                    [1, 3, 4][(round % 3) as usize],
                    &format!("agent.{a}"),
                )
            })
            .collect();
        app.publish_ok("default", &Value::Array(batch)).await;
    }
    eventually("1,000 messages in the stream", || async {
        (stream.count().await >= 1000).then_some(())
    })
    .await;
    let messages = stream.messages().await;
    assert_eq!(messages.len(), 1000, "each delivery published once");
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut ids = HashSet::new();
    for m in &messages {
        let agent = header(m, "switchboard-agent").to_owned();
        let seq: i64 = header(m, "switchboard-sequence").parse().unwrap();
        let id = header(m, "webhook-id");
        let ts: i64 = header(m, "webhook-timestamp").parse().unwrap();
        assert!(
            verify(&secret, header(m, "webhook-signature"), id, ts, &m.payload),
            "signature of {id}"
        );
        assert!(ids.insert(id.to_owned()), "{id} once");
        let msg_id = m.headers.get(async_nats::header::NATS_MESSAGE_ID).unwrap();
        assert_eq!(
            msg_id.as_str(),
            format!("{}:{id}", sub["id"].as_str().unwrap())
        );
        let body: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(body["AdditionalFields"]["Username"], agent.as_str());
        // The subject is the template filled in, the key made safe ('.' → '_').
        assert_eq!(
            m.subject.as_str(),
            format!(
                "{}.default.1.{}.{}",
                stream.prefix,
                body["Code"],
                agent.replace('.', "_")
            )
        );
        let before = last.insert(agent.clone(), seq);
        assert!(before.is_none_or(|b| b < seq), "{agent} in order");
    }
    assert_eq!(last.len(), 20);
    let delivered = app
        .deliveries(sub["id"].as_str().unwrap(), Some("succeeded"))
        .await;
    assert!(!delivered.is_empty());
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("destination=\"nats\""),
        "attempts counted by destination"
    );
    // A producer's trace context rides as message headers (DESIGN §21).
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = app
        .client
        .post(app.url("/v1/tenants/default/events"))
        .bearer_auth(crate::support::app::ADMIN_KEY)
        .header("traceparent", traceparent)
        .header("tracestate", "cc=1")
        .json(&agent_event(&guid(), 1, "agent.traced"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    eventually("the traced message", || async {
        (stream.count().await >= 1001).then_some(())
    })
    .await;
    let messages = stream.messages().await;
    let traced = messages
        .iter()
        .find(|m| header(m, "switchboard-agent") == "agent.traced")
        .expect("the traced message");
    assert_eq!(header(traced, "traceparent"), traceparent);
    assert_eq!(header(traced, "tracestate"), "cc=1");
    stream.delete().await;
}

#[tokio::test]
async fn a_subject_no_stream_listens_to_is_a_failed_attempt_retried() {
    let stream = Stream::new().await;
    let app = TestApp::spawn().await;
    let sub = app
        .subscribe(json!({
            "destination": {"type": "nats", "url": nats_url(), "subject": "sbtest_nostream.{tenant}"},
            "retry_schedule_secs": [3600],
        }))
        .await;
    app.publish_ok("default", &json!([agent_event(&guid(), 1, "a")]))
        .await;
    let id = sub["id"].as_str().unwrap().to_owned();
    let failed = eventually("a failed attempt", || async {
        let d = app.deliveries(&id, Some("pending")).await;
        d.into_iter()
            .find(|d| d["attempt_count"].as_u64() == Some(1))
    })
    .await;
    let error = failed["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("sbtest_nostream.default"), "{failed}");
    stream.delete().await;
}

#[tokio::test]
async fn bad_destinations_are_422_naming_the_field_and_store_nothing() {
    let app = TestApp::spawn().await;
    let nats = |d: Value| json!({ "destination": d });
    let cases = [
        (nats(json!({"type": "kafka", "url": "x"})), "destination"),
        (
            nats(json!({"type": "nats", "url": "nats//nope", "subject": "a"})),
            "destination.url",
        ),
        (
            nats(json!({"type": "nats", "url": "http://127.0.0.1:4222", "subject": "a"})),
            "destination.url",
        ),
        (
            nats(json!({"type": "nats", "url": "nats://127.0.0.1", "subject": "cc.{queue}"})),
            "destination.subject",
        ),
        (
            nats(json!({"type": "nats", "url": "nats://127.0.0.1", "subject": "cc.*"})),
            "destination.subject",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "destination":
                   {"type": "nats", "url": "nats://127.0.0.1", "subject": "a"}}),
            "destination",
        ),
        // Classified, never connected to: the guard refuses a private address at creation.
        (
            nats(json!({"type": "nats", "url": "nats://10.1.2.3:4222", "subject": "a"})),
            "destination.url",
        ),
        (
            nats(
                json!({"type": "amqp", "url": "amqp//127.0.0.1", "exchange": "cc",
                        "routing_key": "{tenant}"}),
            ),
            "destination.url",
        ),
        (
            nats(
                json!({"type": "amqp", "url": "amqp://127.0.0.1", "exchange": "cc",
                        "routing_key": "{tenant}.{skill}"}),
            ),
            "destination.routing_key",
        ),
        (
            nats(
                json!({"type": "amqp", "url": "amqp://192.168.1.10", "exchange": "cc",
                        "routing_key": "{tenant}"}),
            ),
            "destination.url",
        ),
        (
            json!({"mode": "pull", "destination":
                   {"type": "nats", "url": "nats://127.0.0.1", "subject": "a"}}),
            "destination",
        ),
    ];
    for (body, field) in cases {
        let r = app.call(Method::POST, SUBS, ADMIN_KEY, Some(&body)).await;
        let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        let named = fields_named(&p);
        assert!(
            named.iter().any(|f| f.starts_with(field)),
            "{body}: {field} in {p}"
        );
    }
    let listed = json_ok(app.get(SUBS, ADMIN_KEY).await).await;
    assert_eq!(listed["data"], json!([]), "nothing stored");
    // The HTTP receiver's two forms are one: both given alike is accepted, and answers show both.
    let url = "http://127.0.0.1:9/hooks";
    let both = app
        .subscribe(json!({"url": url, "destination": {"type": "http", "url": url}}))
        .await;
    assert_eq!(both["url"], url);
    assert_eq!(both["destination"], json!({"type": "http", "url": url}));
    let long = app
        .subscribe(json!({"destination": {"type": "http", "url": url}}))
        .await;
    assert_eq!(long["url"], url);
}

#[tokio::test]
async fn a_brokers_password_is_write_only_and_a_masked_one_is_kept() {
    let app = TestApp::spawn().await;
    let sub = app
        .subscribe(json!({"destination": {"type": "nats",
            "url": "nats://cc:s3cret@127.0.0.1:4222", "subject": "a.{tenant}"}}))
        .await;
    assert_eq!(sub["destination"]["url"], "nats://cc:***@127.0.0.1:4222");
    assert!(!sub.to_string().contains("s3cret"));
    let path = format!("{SUBS}/{}", sub["id"].as_str().unwrap());
    // Sent back as shown: the stored password stays.
    let mut back = sub["destination"].clone();
    back["subject"] = json!("b.{tenant}");
    let patched = json_ok(
        app.call(
            Method::PATCH,
            &path,
            ADMIN_KEY,
            Some(&json!({ "destination": back })),
        )
        .await,
    )
    .await;
    assert_eq!(patched["destination"]["subject"], "b.{tenant}");
    let stored = stored_spec(&app, sub["id"].as_str().unwrap()).await;
    assert_eq!(
        stored["destination"]["url"],
        "nats://cc:s3cret@127.0.0.1:4222"
    );
    // Giving `url` alone turns it back into an HTTP receiver.
    let http = json_ok(
        app.call(
            Method::PATCH,
            &path,
            ADMIN_KEY,
            Some(&json!({"url": "http://127.0.0.1:9/"})),
        )
        .await,
    )
    .await;
    assert_eq!(http["destination"]["type"], "http");
    let stored = stored_spec(&app, sub["id"].as_str().unwrap()).await;
    assert!(!stored.to_string().contains("s3cret"));
}

#[tokio::test]
async fn a_broker_host_name_outside_the_allowed_networks_fails_at_connect() {
    // Without --dev loopback is refused: "localhost" resolves to it, so the attempt fails
    // before any connection is made.
    let app = TestApp::spawn_with(|c| c.dev = false).await;
    let sub = app
        .subscribe(json!({
            "destination": {"type": "nats", "url": "nats://localhost:4222", "subject": "sbtest_guard.{tenant}"},
            "retry_schedule_secs": [3600],
        }))
        .await;
    app.publish_ok("default", &json!([agent_event(&guid(), 1, "a")]))
        .await;
    let id = sub["id"].as_str().unwrap().to_owned();
    let failed = eventually("a refused attempt", || async {
        let d = app.deliveries(&id, Some("pending")).await;
        d.into_iter()
            .find(|d| d["attempt_count"].as_u64() == Some(1))
    })
    .await;
    let error = failed["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("address guard"), "{failed}");
}

#[tokio::test]
async fn the_same_delivery_published_again_is_dropped_by_the_duplicate_window() {
    // What a crash between the PubAck and the record leads to: the delivery attempted again,
    // with the same webhook-id. Retrying a succeeded delivery makes exactly that second publish.
    let stream = Stream::new().await;
    let app = TestApp::spawn().await;
    let sub = app
        .subscribe(json!({"destination": {"type": "nats", "url": nats_url(),
                          "subject": format!("{}.{{agent}}", stream.prefix)}}))
        .await;
    let other = app
        .subscribe(json!({"destination": {"type": "nats", "url": nats_url(),
                          "subject": format!("{}.other.{{agent}}", stream.prefix)}}))
        .await;
    app.publish_ok("default", &json!([agent_event(&guid(), 1, "a")]))
        .await;
    let id = sub["id"].as_str().unwrap().to_owned();
    let done = eventually("delivered", || async {
        app.deliveries(&id, Some("succeeded")).await.pop()
    })
    .await;
    eventually("both subscriptions' copies", || async {
        (stream.count().await == 2).then_some(())
    })
    .await;
    let r = app
        .call(
            Method::POST,
            &format!("/v1/tenants/default/deliveries/{}/retry", done["id"]),
            ADMIN_KEY,
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let again = eventually("attempted again, and a success", || async {
        let d = app.delivery(&done["id"]).await;
        (d["attempts"].as_array().unwrap().len() == 2 && d["status"] == "succeeded").then_some(d)
    })
    .await;
    assert_eq!(again["attempts"][1]["error"], Value::Null, "{again}");
    assert_eq!(
        stream.count().await,
        2,
        "the second publish was a duplicate"
    );
    // The Test action through the same destination: delivered, by the PubAck.
    let test = json_ok(app.act(&sub, "test", None).await).await;
    assert_eq!(test["delivered"], true, "{test}");
    assert_eq!(stream.count().await, 3);
    let _ = other;
    stream.delete().await;
}

/// A NATS server of the test's own (the one binary `.ci/run` uses), on a free loopback port,
/// with its JetStream store in a directory that outlives a restart.
struct OwnBroker {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<tokio::process::Child>,
}

impl OwnBroker {
    async fn start() -> Self {
        let port = free_port();
        let mut b = OwnBroker {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        b.up().await;
        b
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn up(&mut self) {
        let child = tokio::process::Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server must be installed (.ci/run installs it)");
        self.child = Some(child);
        let port = self.port;
        eventually("the broker listening", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        })
        .await;
    }

    async fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

#[tokio::test]
async fn the_broker_stopped_for_ten_seconds_under_load_loses_nothing_and_keeps_order() {
    let mut broker = OwnBroker::start().await;
    let client = async_nats::connect(broker.url()).await.unwrap();
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: "OUTAGE".into(),
        subjects: vec!["outage.>".into()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    let app = TestApp::spawn().await;
    let sub = app
        .subscribe(json!({
            "destination": {"type": "nats", "url": broker.url(), "subject": "outage.{agent}"},
            "ordering": "per_agent",
            "retry_schedule_secs": vec![1; 50],
        }))
        .await;
    let publish = |round: u32| {
        let batch: Vec<Value> = (0..10)
            .map(|a| agent_event(&guid(), [1, 3, 4][(round % 3) as usize], &format!("a{a}")))
            .collect();
        Value::Array(batch)
    };
    for round in 0..10 {
        app.publish_ok("default", &publish(round)).await;
    }
    broker.down().await;
    // Under load while it is down: events keep coming for 10 s.
    for round in 10..30 {
        app.publish_ok("default", &publish(round)).await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    broker.up().await;
    let client = async_nats::connect(broker.url()).await.unwrap();
    let js = jetstream::new(client);
    let count = || async {
        let mut s = js.get_stream("OUTAGE").await.ok()?;
        Some(s.info().await.ok()?.state.messages)
    };
    eventually_within(
        "every delivery in the stream after the restart",
        std::time::Duration::from_secs(90),
        || async { (count().await? >= 300).then_some(()) },
    )
    .await;
    let id = sub["id"].as_str().unwrap().to_owned();
    eventually("every delivery recorded succeeded", || async {
        (app.deliveries(&id, Some("succeeded")).await.len() == 300).then_some(())
    })
    .await;
    assert_eq!(count().await, Some(300), "nothing twice");
    let stream = js.get_stream("OUTAGE").await.unwrap();
    let mut last: HashMap<String, i64> = HashMap::new();
    for seq in 1..=300 {
        let m = stream.get_raw_message(seq).await.unwrap();
        let agent = header(&m, "switchboard-agent").to_owned();
        let sequence: i64 = header(&m, "switchboard-sequence").parse().unwrap();
        let before = last.insert(agent.clone(), sequence);
        assert!(before.is_none_or(|b| b < sequence), "{agent} in order");
    }
    assert_eq!(last.len(), 10);
    broker.down().await;
}

/// The real binary SIGKILLed while deliveries to NATS flow: what it published but had not yet
/// recorded is published again after the restart, and JetStream's duplicate window drops it —
/// the stream ends with every event exactly once.
#[tokio::test]
async fn a_server_killed_mid_delivery_leaves_each_event_once_in_the_stream() {
    use crate::support::db::TestData;
    use crate::support::process::Server;
    let stream = Stream::new().await;
    let data = TestData::new().await;
    let client = reqwest::Client::new();
    let mut server = Server::start(&data);
    let r = server
        .post(
            &client,
            SUBS,
            &json!({"destination": {"type": "nats", "url": nats_url(),
                                    "subject": format!("{}.{{agent}}", stream.prefix)},
                    "max_in_flight": 8}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let sub: Value = r.json().await.unwrap();
    let events: Vec<Value> = (0..3000)
        .map(|i| agent_event(&guid(), 1, &format!("agent{}", i % 40)))
        .collect();
    for chunk in events.chunks(500) {
        let r = server
            .post(
                &client,
                "/v1/tenants/default/events",
                &Value::Array(chunk.to_vec()),
            )
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    eventually("part of the deliveries in the stream", || async {
        (stream.count().await >= 300).then_some(())
    })
    .await;
    server.kill();
    let at_kill = stream.count().await;
    assert!(at_kill < 3000, "the kill came mid-delivery ({at_kill})");
    let server = Server::start(&data);
    let pending = format!(
        "{}{SUBS}/{}/deliveries?status=pending&limit=1",
        server.base,
        sub["id"].as_str().unwrap()
    );
    eventually("every delivery recorded", || async {
        let page: Value = client
            .get(&pending)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        page["data"].as_array()?.is_empty().then_some(())
    })
    .await;
    assert_eq!(stream.count().await, 3000, "each event once in the stream");
    let ids: HashSet<String> = stream
        .messages()
        .await
        .iter()
        .map(|m| header(m, "webhook-id").to_owned())
        .collect();
    assert_eq!(ids.len(), 3000);
    stream.delete().await;
}
