//! Traces (DESIGN §21): W3C trace context from the producer's POST to the receiver's request,
//! and spans exported over OTLP/HTTP to a collector that decodes them with the official
//! protobuf definitions (`otlp_collector.py`, PyPI `opentelemetry-proto`; `.ci/run` installs it).
//!
//! Export is process-wide, so the tests that export run the real binary as a child process;
//! those of the context alone (export off) run in process, on both backends.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::TestApp;
use crate::support::app::{ADMIN_KEY, agent_event, free_port, guid, json_ok};
use crate::support::db::TestData;
use crate::support::process::Server;
use crate::support::receiver::{Received, TestReceiver, eventually};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

fn producer_traceparent() -> String {
    format!("00-{TRACE_ID}-{PRODUCER_SPAN}-01")
}

/// A `traceparent` split into (trace id, parent id, flags).
fn parts(traceparent: &str) -> (String, String, String) {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "a traceparent: {traceparent:?}");
    assert_eq!(p[0], "00");
    (p[1].to_string(), p[2].to_string(), p[3].to_string())
}

/// The test collector, its decoded spans collected as they arrive.
struct Collector {
    url: String,
    child: Child,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Collector {
    fn start(extra: &[&str]) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/otlp_collector.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("0")
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 must be installed");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_else(|| {
            panic!(
                "the OTLP collector did not start: install opentelemetry-proto with \
                 `python3 -m pip install opentelemetry-proto` (.ci/run does)"
            )
        });
        let port = first.strip_prefix("listening ").expect("listening line");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str::<Value>(&line).expect("a JSON span"));
            }
        });
        Collector {
            url: format!("http://127.0.0.1:{port}"),
            child,
            spans,
        }
    }

    fn spans(&self) -> Vec<Value> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until a span satisfies `found`, and returns it.
    async fn span(&self, what: &str, found: impl Fn(&Value) -> bool) -> Value {
        eventually(what, || async {
            self.spans().into_iter().find(|s| found(s))
        })
        .await
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real binary, exporting to `endpoint` every 100 ms.
fn exporting_server(data: &TestData, endpoint: &str, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![
        ("SWITCHBOARD_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    env.extend_from_slice(extra);
    Server::start_env(data, &env, None)
}

async fn post(
    client: &reqwest::Client,
    server: &Server,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = client
        .post(format!("{}{path}", server.base))
        .bearer_auth(ADMIN_KEY)
        .json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("the server answers")
}

/// Posts `body` to the server's `default` tenant's events, with `headers`.
async fn publish(
    client: &reqwest::Client,
    server: &Server,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    post(client, server, "/v1/tenants/default/events", body, headers).await
}

/// Waits for the first two attempts of event `id` (the receivers here refuse every other
/// request); returns them.
async fn two_attempts(receiver: &TestReceiver, id: &str) -> Vec<Received> {
    let got = receiver
        .wait_until(
            |r| r.iter().filter(|r| r.event_id() == id).count() >= 2,
            "both attempts",
        )
        .await;
    got.into_iter().filter(|r| r.event_id() == id).collect()
}

/// Subscribes `receiver` (retrying after 1 s) on the server's `default` tenant.
async fn subscribe(client: &reqwest::Client, server: &Server, receiver: &TestReceiver) -> Value {
    let body = json!({"url": receiver.url("/hook"), "retry_schedule_secs": [1, 1]});
    let r = post(
        client,
        server,
        "/v1/tenants/default/subscriptions",
        &body,
        &[],
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

/// A POST with a `traceparent` is one trace from the producer to the receiver: the `ingest`
/// span is the producer's child, the `writer.turn` that committed it is in the trace and
/// linked to it, each attempt (the retry too) is the ingest span's child, and the receiver's
/// `traceparent` names the attempt's span as parent; `tracestate` goes through as received.
/// Without a `traceparent`, or with a malformed one, each request starts a trace of its own.
#[tokio::test]
async fn one_trace_from_the_producer_to_the_receiver_and_its_retry() {
    let collector = Collector::start(&[]);
    let data = TestData::new().await;
    let mut server = exporting_server(&data, &collector.url, &[]);
    let client = reqwest::Client::new();
    // The first request of each event is refused; its retry succeeds.
    let receiver =
        TestReceiver::with(|n, _| (if n % 2 == 0 { 503 } else { 200 }, Duration::ZERO)).await;
    subscribe(&client, &server, &receiver).await;

    let id = guid();
    let traceparent = producer_traceparent();
    let r = publish(
        &client,
        &server,
        &agent_event(&id, 1, "agent42"),
        &[
            ("traceparent", &traceparent),
            ("tracestate", "cc=agent42,x=1"),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let got = receiver.wait_for(2).await;
    let ingest = collector
        .span("the ingest span", |s| s["name"] == "ingest")
        .await;
    assert_eq!(ingest["service"], "switchboard");
    assert_eq!(
        ingest["content_type"], "application/x-protobuf",
        "OTLP/HTTP protobuf"
    );
    assert_eq!(ingest["trace_id"], TRACE_ID, "in the producer's trace");
    assert_eq!(ingest["parent_span_id"], PRODUCER_SPAN);
    assert_eq!(*attr(&ingest, "switchboard.tenant"), "default");
    assert_eq!(*attr(&ingest, "switchboard.event_id"), id.as_str());
    assert_eq!(*attr(&ingest, "switchboard.events"), 1);
    let ingest_span = ingest["span_id"].as_str().unwrap().to_string();

    let turn = collector
        .span("the writer turn", |s| {
            s["name"] == "writer.turn" && s["trace_id"] == TRACE_ID
        })
        .await;
    assert_eq!(turn["parent_span_id"], ingest_span);
    assert!(
        turn["links"]
            .as_array()
            .unwrap()
            .contains(&json!({"trace_id": TRACE_ID, "span_id": ingest_span})),
        "the turn links the request it commits: {turn}"
    );
    assert_eq!(*attr(&turn, "switchboard.events"), 1);

    let attempts: Vec<Value> = eventually("both attempts' spans", || async {
        let a: Vec<Value> = collector
            .spans()
            .into_iter()
            .filter(|s| s["name"] == "delivery.attempt")
            .collect();
        (a.len() >= 2).then_some(a)
    })
    .await;
    for (received, n, status) in [(&got[0], 1, 503), (&got[1], 2, 200)] {
        let (trace, parent, flags) = parts(received.header("traceparent"));
        assert_eq!(trace, TRACE_ID, "attempt {n} is in the producer's trace");
        assert_eq!(flags, "01");
        assert_eq!(received.header("tracestate"), "cc=agent42,x=1");
        let span = attempts
            .iter()
            .find(|s| s["span_id"] == parent)
            .unwrap_or_else(|| panic!("attempt {n}'s span is the receiver's parent"));
        assert_eq!(span["trace_id"], TRACE_ID);
        assert_eq!(span["parent_span_id"], ingest_span);
        assert_eq!(*attr(span, "switchboard.attempt"), n);
        assert_eq!(*attr(span, "switchboard.event_id"), id.as_str());
        assert_eq!(*attr(span, "http.response.status_code"), status);
        assert!(attr(span, "switchboard.subscription").is_string());
    }

    // No traceparent, and a malformed one: a new trace per request, carried to the receiver.
    for headers in [vec![], vec![("traceparent", "00-not-a-trace-01")]] {
        let id = guid();
        let r = publish(&client, &server, &agent_event(&id, 1, "agent43"), &headers).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{headers:?}");
        let ingest = collector
            .span("a new trace's ingest span", |s| {
                s["name"] == "ingest" && *attr(s, "switchboard.event_id") == id.as_str()
            })
            .await;
        assert_eq!(ingest["parent_span_id"], "", "a root span: {headers:?}");
        assert_ne!(ingest["trace_id"], TRACE_ID);
        for r in two_attempts(&receiver, &id).await {
            let (trace, _, _) = parts(r.header("traceparent"));
            assert_eq!(trace, ingest["trace_id"].as_str().unwrap());
            assert_eq!(r.header("tracestate"), "");
        }
    }

    // A trace the producer does not record (flags 00) is followed: no span of ours, and its
    // context reaches the receiver as it came.
    let unrecorded = format!("00-{}-{PRODUCER_SPAN}-00", "b".repeat(32));
    let id = guid();
    let r = publish(
        &client,
        &server,
        &agent_event(&id, 1, "agent44"),
        &[("traceparent", &unrecorded)],
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    for r in two_attempts(&receiver, &id).await {
        assert_eq!(r.header("traceparent"), unrecorded);
    }
    // Spans of the last sampled request were exported since: had any span of the unrecorded
    // trace been made, it would be there by now.
    let marker = guid();
    publish(&client, &server, &agent_event(&marker, 1, "agent45"), &[]).await;
    collector
        .span("a later request's span", |s| {
            s["name"] == "ingest" && *attr(s, "switchboard.event_id") == marker.as_str()
        })
        .await;
    assert!(
        collector
            .spans()
            .iter()
            .all(|s| s["trace_id"] != "b".repeat(32)),
        "no span of an unrecorded trace"
    );

    // A System event (the Test action) is a trace of its own, named by its Id.
    let sub = json_ok(
        client
            .get(format!("{}/v1/tenants/default/subscriptions", server.base))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap(),
    )
    .await["data"][0]
        .clone();
    let path = format!(
        "/v1/tenants/default/subscriptions/{}/test",
        sub["id"].as_str().unwrap()
    );
    let r = post(&client, &server, &path, &json!({}), &[]).await;
    assert!(r.status().is_success(), "{}", r.status());
    let got = receiver
        .wait_until(
            |r| r.iter().any(|r| r.json()["Category"] == 0),
            "the test event",
        )
        .await;
    let test = got.iter().find(|r| r.json()["Category"] == 0).unwrap();
    let (trace, parent, _) = parts(test.header("traceparent"));
    assert_eq!(
        trace,
        test.event_id().replace('-', ""),
        "its trace id is its Id"
    );
    let span = collector
        .span("the test event's attempt", |s| s["span_id"] == parent)
        .await;
    assert_eq!(span["name"], "delivery.attempt");
    assert_eq!(span["trace_id"], trace);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// The collector refusing every export, then not there at all: ingest and delivery go on as
/// ever, and the spans lost are counted.
#[tokio::test]
async fn a_failing_or_absent_collector_costs_nothing_and_is_counted() {
    let refusing = Collector::start(&["--refuse"]);
    let absent = format!("http://127.0.0.1:{}", free_port());
    for endpoint in [refusing.url.clone(), absent] {
        let data = TestData::new().await;
        let mut server = exporting_server(&data, &endpoint, &[("OTEL_BSP_MAX_QUEUE_SIZE", "16")]);
        let client = reqwest::Client::new();
        let receiver = TestReceiver::start().await;
        subscribe(&client, &server, &receiver).await;
        let events: Vec<Value> = (0..50)
            .map(|i| agent_event(&guid(), 1, &format!("a{i}")))
            .collect();
        for chunk in events.chunks(10) {
            let r = publish(
                &client,
                &server,
                &Value::Array(chunk.to_vec()),
                &[("traceparent", &producer_traceparent())],
            )
            .await;
            assert_eq!(r.status(), StatusCode::ACCEPTED);
        }
        let got = receiver.wait_for(50).await;
        assert!(
            got.iter()
                .all(|r| parts(r.header("traceparent")).0 == TRACE_ID),
            "the context still travels"
        );
        let dropped = eventually("dropped spans counted", || async {
            let text = client
                .get(format!("{}/metrics", server.base))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let n: f64 = text
                .lines()
                .find(|l| l.starts_with("switchboard_otel_spans_dropped_total"))?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()?;
            (n > 0.0).then_some(n)
        })
        .await;
        assert!(dropped >= 1.0, "{endpoint}: {dropped}");
        server.child.kill().unwrap();
        server.child.wait().unwrap();
    }
}

/// Export off (the default): the producer's context is stored with the event and sent as it
/// came on every attempt — the first, a retry, a replay — and a batch carries its first
/// event's; an event without one, a malformed one and a System event carry none.
#[tokio::test]
async fn without_export_the_producers_context_travels_as_it_came() {
    let app = TestApp::spawn().await;
    let receiver =
        TestReceiver::with(|n, _| (if n == 0 { 500 } else { 200 }, Duration::ZERO)).await;
    let sub = app
        .subscribe(json!({"url": receiver.url("/plain"), "retry_schedule_secs": [1]}))
        .await;
    let send = |event: Value, headers: Vec<(&'static str, String)>| {
        let app = &app;
        async move {
            let mut r = app
                .client
                .post(app.url("/v1/tenants/default/events"))
                .bearer_auth(ADMIN_KEY)
                .json(&event);
            for (k, v) in headers {
                r = r.header(k, v);
            }
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::ACCEPTED);
        }
    };
    let traced = guid();
    send(
        agent_event(&traced, 1, "a1"),
        vec![
            ("traceparent", producer_traceparent()),
            ("tracestate", "cc=1".into()),
        ],
    )
    .await;
    let got = receiver.wait_for(2).await;
    for r in &got {
        assert_eq!(r.event_id(), traced);
        assert_eq!(r.header("traceparent"), producer_traceparent());
        assert_eq!(r.header("tracestate"), "cc=1");
    }
    let plain = guid();
    send(agent_event(&plain, 1, "a2"), vec![]).await;
    let bad = guid();
    send(
        agent_event(&bad, 1, "a3"),
        vec![(
            "traceparent",
            format!("00-{}-{PRODUCER_SPAN}-01", "0".repeat(32)),
        )],
    )
    .await;
    let got = receiver
        .wait_until(
            |r| {
                [&plain, &bad]
                    .iter()
                    .all(|id| r.iter().any(|r| r.event_id() == **id))
            },
            "the untraced events",
        )
        .await;
    for r in got
        .iter()
        .filter(|r| r.event_id() == plain || r.event_id() == bad)
    {
        assert_eq!(r.header("traceparent"), "", "no context, none sent");
    }

    // A replay is in the producer's trace too.
    let before = receiver.received().len();
    let job = json!({"kind": "replay", "subscription_id": sub["id"], "since": "20200101000000"});
    let r = app
        .call(
            reqwest::Method::POST,
            "/v1/tenants/default/jobs",
            ADMIN_KEY,
            Some(&job),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let got = receiver.wait_for(before + 3).await;
    let replayed = got[before..]
        .iter()
        .find(|r| r.event_id() == traced)
        .expect("the traced event replayed");
    assert_eq!(replayed.header("traceparent"), producer_traceparent());

    // A System event (the Test action) starts no trace of the producer's.
    let r = app.act(&sub, "test", None).await;
    let outcome = json_ok(r).await;
    assert!(outcome.is_object());
    let test = receiver
        .wait_until(
            |r| r.iter().any(|r| r.json()["Category"] == 0),
            "the test event",
        )
        .await;
    let test: Vec<&Received> = test.iter().filter(|r| r.json()["Category"] == 0).collect();
    assert_eq!(test[0].header("traceparent"), "");

    // A batch carries its first event's context.
    let batched = TestReceiver::start().await;
    app.subscribe(json!({"url": batched.url("/batch"),
                          "batch": {"max_events": 10, "max_wait_ms": 50}}))
        .await;
    let other = format!("00-{}-{PRODUCER_SPAN}-01", "a".repeat(32));
    let events: Vec<Value> = (0..3)
        .map(|i| agent_event(&guid(), 1, &format!("b{i}")))
        .collect();
    let last = guid();
    let mut expected: std::collections::HashMap<String, String> = events
        .iter()
        .map(|e| {
            (
                e["Id"].as_str().unwrap().to_string(),
                producer_traceparent(),
            )
        })
        .collect();
    expected.insert(last.clone(), other.clone());
    send(
        Value::Array(events),
        vec![("traceparent", producer_traceparent())],
    )
    .await;
    send(
        agent_event(&last, 1, "b9"),
        vec![("traceparent", other.clone())],
    )
    .await;
    let got = batched
        .wait_until(
            |r| {
                r.iter()
                    .map(|r| r.json().as_array().map_or(0, Vec::len))
                    .sum::<usize>()
                    >= 4
            },
            "the four events in batches",
        )
        .await;
    // Batches may arrive in either order; each carries its first event's context.
    for batch in &got {
        let first = batch.json()[0]["Id"].as_str().unwrap().to_string();
        assert_eq!(
            batch.header("traceparent"),
            expected[&first],
            "batch led by {first}"
        );
    }
}
