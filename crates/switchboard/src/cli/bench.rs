//! `switchboard bench`: the end-to-end benchmark. It starts a server (or targets one with
//! `--url`), its own receiver on loopback and the subscriptions, drives events, and reports
//! throughput and latency percentiles — and the receiver's raw loopback request rate, measured
//! in the same run, so every figure reads as a fraction of what the machine can do at all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};
use uuid::Uuid;

use crate::config::Config;

pub mod destination;
pub mod pull;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// A running server to target; `None` starts one in this process. Several nodes of one
    /// cluster: their URLs separated by commas (set up through the first; client `w` posts to
    /// node `w % nodes`, as with `nodes`).
    pub url: Option<String>,
    /// Its admin key (with `url`).
    pub key: Option<String>,
    pub events: usize,
    pub concurrency: usize,
    pub batch: usize,
    pub subscriptions: usize,
    /// Open loop: events per second, sent on schedule and measured from the scheduled time.
    /// `None`: closed loop, as fast as the server answers.
    pub rate: Option<u64>,
    /// For the in-process server: empty for SQLite in a temporary directory.
    pub database_url: String,
    /// Print a progress line on stderr.
    pub progress: bool,
    /// In-process server only: first store this many events, then run with a one-second
    /// retention, so that the purge of all of them runs alongside the measured load.
    pub expired: usize,
    /// Consumers of the events stream, opened before the load: each must receive every event.
    pub streams: usize,
    /// Distinct agents the events come from (their `Username`s).
    pub agents: usize,
    /// Consumers of the counts stream by `Team` (DESIGN §18), opened before the load: the
    /// events then carry a `Team` (one of ten) and move each agent through four activities, and
    /// the in-process server's catalog groups by `Team`.
    pub counts_streams: usize,
    /// Rules (DESIGN §18) made before the load, each holding a timer for every agent it
    /// matches (`for_secs` a day, so none fires): half watch every signed-in agent, half only
    /// agents in three of the four activities the events then move each agent through.
    pub rules: usize,
    /// The rules are made disabled: the same run (the same events) with nothing judged, the
    /// baseline a run with rules compares against.
    pub rules_disabled: bool,
    /// In-process servers sharing the PostgreSQL database (`database_url`); the clients are
    /// split evenly over them.
    pub nodes: usize,
    /// Tenants the events are spread over (the first is `default`, the others `bench-1`, …),
    /// each with `subscriptions` subscriptions and a publish key of its own; each client posts
    /// to one of them. Ingest serialises each tenant's sequence, so one tenant cannot show
    /// what more nodes add.
    pub tenants: usize,
    /// With several nodes: each tenant is posted to on one node only, as behind a load
    /// balancer that routes by tenant (client `w` posts to tenant `w % tenants` on node
    /// `w % nodes`; with `tenants` a multiple of `nodes`, no tenant on two). Otherwise every
    /// node takes every tenant's events, whose turns then wait for each other's tenant locks.
    pub tenants_by_node: bool,
    /// Batched delivery (DESIGN §17): each subscription gets up to this many events per
    /// request (`max_wait_ms` 100). `None`: one per request.
    pub delivery_batch: Option<u32>,
    /// How the subscriptions' receiver wants to be called (DESIGN §20): the bench's receiver
    /// checks the `Authorization` header, and for OAuth 2 hands out the token itself.
    pub receiver_auth: ReceiverAuth,
    /// In-process server only: store every event first on a node that does not deliver, then
    /// start delivery and time how fast the backlog drains — the delivery path measured alone,
    /// without ingest sharing the machine.
    pub backlog: bool,
    /// In-process server only: export traces to the bench's receiver (an OTLP/HTTP endpoint
    /// that answers 200 and counts), sampling this ratio. `None`: export off.
    pub otlp_ratio: Option<f64>,
    /// Every subscription redacts three fields (DESIGN §19): `PhoneNo` masked, `Username`
    /// hashed, `SessionId` dropped.
    pub redact: bool,
}

/// What `--redact` sets on each subscription.
pub const BENCH_REDACT: &str = r#"{"PhoneNo": "mask", "Username": "hash", "SessionId": "drop"}"#;

impl Default for Options {
    /// The command's defaults: 20,000 single-event POSTs from 64 clients, one subscription.
    fn default() -> Self {
        Options {
            url: None,
            key: None,
            events: 20_000,
            concurrency: 64,
            batch: 1,
            subscriptions: 1,
            delivery_batch: None,
            backlog: false,
            otlp_ratio: None,
            redact: false,
            receiver_auth: ReceiverAuth::None,
            rate: None,
            database_url: String::new(),
            progress: false,
            expired: 0,
            streams: 0,
            counts_streams: 0,
            rules: 0,
            rules_disabled: false,
            agents: 500,
            nodes: 1,
            tenants: 1,
            tenants_by_node: false,
        }
    }
}

/// Credentials the bench's subscriptions send their receiver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverAuth {
    #[default]
    None,
    /// `Authorization: Bearer` with a fixed token.
    Bearer,
    /// OAuth 2 client credentials, from a token endpoint on the bench's receiver.
    Oauth2,
}

/// The token the bench's receiver expects (and its token endpoint hands out).
const BENCH_TOKEN: &str = "bench-token-0123456789";

/// A server started in this process, and what stops it.
type InProcess = (
    oneshot::Sender<()>,
    std::thread::JoinHandle<anyhow::Result<()>>,
);

/// Starts `config`'s server in this process on a port of its own; returns its base URL.
fn in_process(config: Config) -> anyhow::Result<(String, InProcess)> {
    // The server gets a runtime of its own on its own threads, as it would in its own
    // process: the load generator's tasks never share its scheduler.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let base = format!("http://{}", listener.local_addr()?);
    let (tx, rx) = oneshot::channel::<()>();
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            // Named so that the server's CPU time can be told from the load's (see `Cpu`).
            .thread_name("switchboard-node")
            .enable_all()
            .build()?;
        rt.block_on(async {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            crate::run(config, listener, async {
                let _ = rx.await;
            })
            .await
        })
    });
    Ok((base, (tx, server)))
}

/// Stops a server started with [`in_process`] and waits for it.
async fn stop_in_process((tx, server): InProcess) -> anyhow::Result<()> {
    let _ = tx.send(());
    tokio::task::spawn_blocking(move || server.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the server thread panicked"))?
}

/// Stores `n` events (no subscription), 1,000 a request, four requests at a time.
async fn prefill(base: &str, key: &str, n: usize) -> anyhow::Result<()> {
    let ids = BenchIds::new();
    let api = super::client::Api::new(base, key);
    let batches: Vec<usize> = (0..n.div_ceil(1000)).collect();
    for group in batches.chunks(4) {
        let posts = group.iter().map(|&b| {
            let events: Vec<Value> = (b * 1000..((b + 1) * 1000).min(n))
                .map(|i| bench_event(ids.id(i), i, 500))
                .collect();
            let api = api.clone();
            async move { api.publish("default", &Value::Array(events)).await }
        });
        for r in futures_join(posts).await {
            if let Err(e) = r {
                bail!("storing expired events: {e}");
            }
        }
    }
    Ok(())
}

/// Runs the requests together; their answers in order.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("a request task"));
    }
    out
}

/// The counter `name` (without labels) as the server's `/metrics` shows it; 0 when absent.
async fn counter_so_far(client: &reqwest::Client, base: &str, name: &str) -> anyhow::Result<u64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64))
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub events: usize,
    pub batch: usize,
    pub concurrency: usize,
    pub subscriptions: usize,
    pub rate: Option<u64>,
    pub accepted: usize,
    pub deliveries: usize,
    pub accept_secs: f64,
    pub accepted_per_sec: f64,
    pub end_to_end_secs: f64,
    pub deliveries_per_sec: f64,
    /// With `backlog`: `end_to_end_secs` and `deliveries_per_sec` count from the start of the
    /// delivering node, every event stored before it.
    pub backlog: bool,
    /// With `backlog`: deliveries that arrived before the delivering node started (none, when
    /// the storing node kept to its role).
    pub delivered_before_drain: usize,
    /// How the receiver was called, and how many OAuth 2 tokens were asked for.
    pub receiver_auth: ReceiverAuth,
    pub token_requests: usize,
    /// With `otlp_ratio`: the ratio, and the OTLP export requests the receiver got.
    pub otlp_ratio: Option<f64>,
    pub otlp_exports: usize,
    /// Spans the server dropped (its export queue full) by the end of the load.
    pub otlp_dropped: u64,
    /// Whether the subscriptions redacted three fields.
    pub redact: bool,
    /// Per request.
    pub ingest_latency_ms: Percentiles,
    /// From the (scheduled) send to the first arrival at the receiver, per event and subscription.
    pub ingest_to_receiver_ms: Percentiles,
    /// The receiver driven directly over loopback: the ceiling for deliveries per second.
    pub receiver_raw_requests_per_sec: f64,
    /// Peak resident memory of the server, when it runs in this process (it then includes the
    /// benchmark's own memory).
    pub server_peak_rss_mib: Option<f64>,
    /// With `expired`: expired events stored before the run, and how many retention had
    /// purged by its end.
    pub expired: Option<(usize, u64)>,
    /// Events-stream consumers, and from the (scheduled) send to each consumer's receipt, per
    /// event and consumer.
    pub streams: usize,
    pub ingest_to_stream_ms: Option<Percentiles>,
    /// Counts-stream consumers, and from the (scheduled) send of each event to the first
    /// counts message as of its sequence or later, per event and consumer.
    pub counts_streams: usize,
    pub ingest_to_counts_ms: Option<Percentiles>,
    /// Rules made before the load, and whether they were disabled.
    pub rules: usize,
    pub rules_disabled: bool,
    /// `GET …/agents` after the run: the agents there were, and the latency of a default page
    /// (100) and of a page of 1,000.
    pub agents: usize,
    pub agents_page_ms: Percentiles,
    pub agents_page_1000_ms: Percentiles,
    /// In-process servers.
    pub nodes: usize,
    /// Tenants the events were spread over, and how many each took in.
    pub tenants: usize,
    pub accepted_by_tenant: std::collections::BTreeMap<String, usize>,
    /// CPU time spent from the first request to the last delivery, by whom.
    pub cpu: CpuSpent,
}

/// One consumer of the events stream: counts the events it receives and how long after their
/// (scheduled) send each arrived.
async fn consume_stream(
    mut response: reqwest::Response,
    state: Arc<Receiver>,
    want: usize,
) -> anyhow::Result<Histogram<u64>> {
    let mut latency = histogram();
    let (mut got, mut buffer) = (0, String::new());
    while got < want {
        let Some(chunk) = response.chunk().await? else {
            bail!("a stream ended after {got} of {want} events");
        };
        buffer.push_str(std::str::from_utf8(&chunk)?);
        let now = Instant::now();
        // Only what is needed of each message: the event's `Id`, found without parsing.
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            let Some(at) = message.find("\"Id\":\"") else {
                continue;
            };
            got += 1;
            let id = message
                .get(at + 6..at + 42)
                .and_then(|s| Uuid::parse_str(s).ok());
            let sent = id.and_then(|id| state.sent.lock().expect("lock").get(&id).copied());
            if let Some(sent) = sent {
                let us = now.saturating_duration_since(sent).as_micros().max(1) as u64;
                let _ = latency.record(us);
            }
        }
    }
    Ok(latency)
}

/// Latency of `GET path` over `n` requests.
async fn time_gets(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    n: usize,
) -> anyhow::Result<Percentiles> {
    let mut h = histogram();
    for _ in 0..n {
        let started = Instant::now();
        let r = client.get(url).bearer_auth(key).send().await?;
        if !r.status().is_success() {
            bail!("GET {url}: {}", r.status());
        }
        r.bytes().await?;
        let _ = h.record(started.elapsed().as_micros().max(1) as u64);
    }
    Ok(Percentiles::of(&h))
}

/// The receiver's shared state.
struct Receiver {
    sent: Mutex<HashMap<Uuid, Instant>>,
    /// Per counts-stream consumer: the events accepted and not yet counted in a message, by
    /// sequence, with when they were sent.
    counted: Vec<Mutex<std::collections::BTreeMap<i64, Instant>>>,
    /// Every event has been accepted.
    all_accepted: std::sync::atomic::AtomicBool,
    latency: Mutex<Histogram<u64>>,
    seen: Mutex<std::collections::HashSet<(Uuid, String)>>,
    arrived: Notify,
    /// The `Authorization` every delivery must carry (else 401).
    expect_auth: Option<String>,
    /// Requests to the token endpoint.
    token_requests: std::sync::atomic::AtomicUsize,
    /// Requests to the OTLP endpoint.
    otlp_exports: std::sync::atomic::AtomicUsize,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

async fn receive(
    State(rx): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    if rx
        .expect_auth
        .as_deref()
        .is_some_and(|a| a != h("authorization"))
    {
        return StatusCode::UNAUTHORIZED;
    }
    let ids: Vec<Uuid> = if h("webhook-id").starts_with("batch_") {
        // A batch: every member's `Id`, found without parsing.
        let text = String::from_utf8_lossy(&body);
        text.match_indices("\"Id\":\"")
            .filter_map(|(at, _)| text.get(at + 6..at + 42))
            .filter_map(|s| Uuid::parse_str(s).ok())
            .collect()
    } else {
        match Uuid::parse_str(h("webhook-id")) {
            Ok(id) => vec![id],
            // The raw-rate probe.
            Err(_) => return StatusCode::NO_CONTENT,
        }
    };
    let sub = h("switchboard-subscription").to_string();
    for id in ids {
        let first = rx.seen.lock().expect("lock").insert((id, sub.clone()));
        if first && let Some(at) = rx.sent.lock().expect("lock").get(&id).copied() {
            let us = at.elapsed().as_micros().max(1) as u64;
            let _ = rx.latency.lock().expect("lock").record(us);
        }
    }
    rx.arrived.notify_waiters();
    StatusCode::NO_CONTENT
}

/// The bench's OAuth 2 token endpoint: one token, good for an hour.
async fn token(State(rx): State<Arc<Receiver>>) -> axum::Json<Value> {
    rx.token_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    axum::Json(json!({"access_token": BENCH_TOKEN, "token_type": "Bearer", "expires_in": 3600}))
}

/// The bench's OTLP/HTTP endpoint: takes every export, counting them.
async fn otlp(State(rx): State<Arc<Receiver>>) -> StatusCode {
    rx.otlp_exports
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    StatusCode::OK
}

/// Runs the benchmark.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    if opts.events == 0 || opts.batch == 0 || opts.concurrency == 0 {
        bail!("--events, --batch and --concurrency must be at least 1");
    }
    if opts.nodes == 0 || (opts.nodes > 1 && (opts.url.is_some() || opts.database_url.is_empty())) {
        bail!("--nodes above 1 needs --database-url (PostgreSQL), and no --url");
    }
    if opts.backlog
        && (opts.url.is_some() || opts.nodes > 1 || opts.streams > 0 || opts.rate.is_some())
    {
        bail!("--backlog runs one in-process server: no --url, --nodes, --streams or --rate");
    }
    if opts.tenants == 0 || opts.tenants > 1_000 {
        bail!("--tenants must be from 1 to 1000");
    }
    if opts.tenants > 1 && (opts.streams > 0 || opts.counts_streams > 0 || opts.rules > 0) {
        bail!(
            "--tenants above 1 sends no --streams, --counts-streams or --rules (they watch one tenant)"
        );
    }
    if let Some(ratio) = opts.otlp_ratio
        && (opts.url.is_some() || !(0.0..=1.0).contains(&ratio))
    {
        bail!("--otlp-ratio is a ratio from 0 to 1, for the in-process server (no --url)");
    }
    let (state, receiver_addr) =
        start_receiver(opts.events, opts.receiver_auth, opts.counts_streams).await?;
    if let Some(ratio) = opts.otlp_ratio {
        crate::otel::install_for_bench(&format!("http://{receiver_addr}"), ratio)?;
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.concurrency * 2)
        .build()?;
    let probe = (opts.events * opts.subscriptions).clamp(1_000, 20_000);
    let raw = raw_rate(&client, receiver_addr, opts.concurrency, probe).await?;

    let mut server = start_server(&opts, &client).await?;
    let (base, admin_key) = (server.base.clone(), server.admin_key.clone());
    let (base, admin_key) = (base.as_str(), admin_key.as_str());
    let api = super::client::Api::new(base, admin_key);
    for i in 0..opts.rules {
        let mut body = json!({"name": format!("bench rule {i}"), "kind": "agent_state",
                              "for_secs": 86_400, "enabled": !opts.rules_disabled});
        if i % 2 == 1 {
            body["activity_codes"] = json!([16, 0, 34]);
        }
        api.call(
            reqwest::Method::POST,
            "/v1/tenants/default/rules",
            Some(&body),
        )
        .await
        .context("creating a rule")?;
    }
    if opts.rules > 0 {
        // The timers live before the clock starts (and before the subscriptions, which do not
        // get these): one event per agent, in an activity every rule matches, opens each
        // agent's episodes. The measured events follow on from it.
        let warm: Vec<Value> = (0..opts.agents)
            .map(|n| counts_event(Uuid::new_v4(), n, opts.agents))
            .collect();
        for chunk in warm.chunks(500) {
            api.publish("default", &Value::Array(chunk.to_vec()))
                .await
                .context("opening the rules' episodes")?;
        }
    }
    let tenants = bench_tenants(opts.tenants);
    for tenant in tenants.iter().skip(1) {
        api.call(
            reqwest::Method::POST,
            "/v1/tenants",
            Some(&json!({"id": tenant})),
        )
        .await
        .with_context(|| format!("creating the tenant {tenant}"))?;
    }
    for n in 0..opts.subscriptions * tenants.len() {
        let tenant = &tenants[n % tenants.len()];
        let mut body = json!({"url": format!("http://{receiver_addr}/"), "max_in_flight": 64});
        if let Some(n) = opts.delivery_batch {
            body["batch"] = json!({"max_events": n, "max_wait_ms": 100});
        }
        if opts.redact {
            body["redact"] = serde_json::from_str(BENCH_REDACT)?;
        }
        match opts.receiver_auth {
            ReceiverAuth::None => {}
            ReceiverAuth::Bearer => body["auth"] = json!({"type": "bearer", "token": BENCH_TOKEN}),
            ReceiverAuth::Oauth2 => {
                body["auth"] = json!({"type": "oauth2", "client_id": "bench",
                    "token_url": format!("http://{receiver_addr}/token"), "client_secret": "bench"});
            }
        }
        api.create_subscription(tenant, &body)
            .await
            .context("creating a subscription")?;
    }
    let consumers = open_streams(&opts, base, admin_key, &state).await?;
    let counters = open_counts_streams(&opts, base, admin_key, &state).await?;
    // Events are posted as a producer would: with a tenant key that may only publish.
    let mut targets = Vec::with_capacity(tenants.len());
    for tenant in &tenants {
        targets.push((
            tenant.clone(),
            publish_key_of(base, admin_key, tenant).await?,
        ));
    }
    let requests = Arc::new(request_bodies(&opts)?);

    let mut cpu_before = Cpu::now(opts.url.is_none());
    let load = drive(&opts, &client, &server.bases, &targets, requests, &state);
    let Driven {
        accepted,
        by_tenant: accepted_by_tenant,
        ingest,
        accept_secs,
        mut end_to_end_secs,
    } = load.await?;
    let mut delivered_before_drain = 0;
    if let Some(config) = server.restart.take() {
        // Every event is stored: the node that stored them stops, one that delivers starts on
        // the same data, and the clock runs from its start to the last arrival.
        for stop in server.stop.drain(..) {
            stop_in_process(stop).await?;
        }
        delivered_before_drain = state.seen.lock().expect("lock").len();
        cpu_before = Cpu::now(true);
        let start = Instant::now();
        let (base, stop) = in_process(config)?;
        server.stop.push(stop);
        server.base = base;
        server.bases = vec![server.base.clone()];
        wait_deliveries(&state, opts.events * opts.subscriptions).await?;
        end_to_end_secs = start.elapsed().as_secs_f64();
    }
    let cpu = Cpu::now(opts.url.is_none()).since(&cpu_before);
    let base = server.base.as_str();

    let ingest_to_stream_ms = if consumers.is_empty() {
        None
    } else {
        let mut all = histogram();
        for c in consumers {
            let h = tokio::time::timeout(Duration::from_secs(60), c)
                .await
                .context("the stream consumers did not get every event within 60 s")???;
            all.add(&h)?;
        }
        Some(Percentiles::of(&all))
    };
    state
        .all_accepted
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let ingest_to_counts_ms = if counters.is_empty() {
        None
    } else {
        let mut all = histogram();
        for c in counters {
            all.add(&c.await??)?;
        }
        Some(Percentiles::of(&all))
    };
    let otlp_dropped = match opts.otlp_ratio {
        Some(_) => counter_so_far(&client, base, crate::otel::SPANS_DROPPED).await?,
        None => 0,
    };
    let agents_url = format!("{base}/v1/tenants/default/agents");
    let agents_page_ms = time_gets(&client, &agents_url, admin_key, 50).await?;
    let agents_page_1000_ms =
        time_gets(&client, &format!("{agents_url}?limit=1000"), admin_key, 50).await?;
    let server_peak_rss_mib = opts
        .url
        .is_none()
        .then(|| rss_mib("self").map(|(_, peak)| peak))
        .flatten();
    let expired = match (opts.expired, server.stop.is_empty()) {
        (0, _) | (_, true) => None,
        (n, false) => Some((
            n,
            counter_so_far(&client, base, crate::telemetry::PURGED_EVENTS).await?,
        )),
    };
    // Close the client's keep-alive connections first: the server's graceful shutdown waits
    // for its connections.
    drop(client);
    for stop in server.stop {
        stop_in_process(stop).await?;
    }
    if let Some(database) = server.database {
        database.drop_it().await;
    }
    let deliveries = state.seen.lock().expect("lock").len();
    let ingest_to_receiver_ms = Percentiles::of(&state.latency.lock().expect("lock"));
    Ok(Report {
        events: opts.events,
        batch: opts.batch,
        concurrency: opts.concurrency,
        subscriptions: opts.subscriptions,
        rate: opts.rate,
        accepted,
        deliveries,
        accept_secs,
        accepted_per_sec: accepted as f64 / accept_secs,
        end_to_end_secs,
        deliveries_per_sec: deliveries as f64 / end_to_end_secs,
        backlog: opts.backlog,
        delivered_before_drain,
        receiver_auth: opts.receiver_auth,
        token_requests: state
            .token_requests
            .load(std::sync::atomic::Ordering::Relaxed),
        otlp_ratio: opts.otlp_ratio,
        otlp_dropped,
        redact: opts.redact,
        otlp_exports: state
            .otlp_exports
            .load(std::sync::atomic::Ordering::Relaxed),
        ingest_latency_ms: Percentiles::of(&ingest),
        ingest_to_receiver_ms,
        receiver_raw_requests_per_sec: raw,
        server_peak_rss_mib,
        expired,
        streams: opts.streams,
        counts_streams: opts.counts_streams,
        rules: opts.rules,
        rules_disabled: opts.rules_disabled,
        ingest_to_counts_ms,
        ingest_to_stream_ms,
        agents: opts.agents.min(opts.events),
        agents_page_ms,
        agents_page_1000_ms,
        nodes: server.bases.len(),
        tenants: opts.tenants,
        accepted_by_tenant,
        cpu,
    })
}

/// The bench's receiver on a loopback port of its own.
async fn start_receiver(
    events: usize,
    auth: ReceiverAuth,
    counts_streams: usize,
) -> anyhow::Result<(Arc<Receiver>, SocketAddr)> {
    let state = Arc::new(Receiver {
        sent: Mutex::new(HashMap::with_capacity(events)),
        counted: (0..counts_streams).map(|_| Mutex::default()).collect(),
        all_accepted: Default::default(),
        latency: Mutex::new(histogram()),
        seen: Mutex::default(),
        arrived: Notify::new(),
        expect_auth: (auth != ReceiverAuth::None).then(|| format!("Bearer {BENCH_TOKEN}")),
        token_requests: Default::default(),
        otlp_exports: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/", post(receive))
        .route("/token", post(token))
        .route("/v1/traces", post(otlp))
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((state, addr))
}

/// The server measured: given by `--url`, or started in this process on a fresh data dir.
struct Server {
    base: String,
    /// Every node's base URL (the first is `base`).
    bases: Vec<String>,
    admin_key: String,
    /// Stops the in-process servers.
    stop: Vec<InProcess>,
    /// The in-process servers' data, removed when dropped.
    _dirs: Vec<tempfile::TempDir>,
    /// The PostgreSQL database made for this run, dropped at its end.
    database: Option<BenchDatabase>,
    /// With `--backlog`: the delivering node's configuration, started once every event is
    /// stored.
    restart: Option<Config>,
}

/// Starts (or reaches) the server and waits until it is ready. With `--expired`, the
/// in-process server is first filled, then started again with a one-second retention.
async fn start_server(opts: &Options, client: &reqwest::Client) -> anyhow::Result<Server> {
    let server = match &opts.url {
        Some(url) => {
            let key = opts
                .key
                .clone()
                .context("--url needs --key, the admin key")?;
            let bases: Vec<String> = (url.split(','))
                .map(|u| u.trim().trim_end_matches('/').to_string())
                .filter(|u| !u.is_empty())
                .collect();
            let base = bases.first().cloned().context("--url names no server")?;
            Server {
                bases,
                base,
                admin_key: key,
                stop: Vec::new(),
                _dirs: Vec::new(),
                database: None,
                restart: None,
            }
        }
        None => {
            let dir = tempfile::tempdir()?;
            let mut config = Config::for_data_dir(dir.path());
            config.dev = true;
            let database = match opts.database_url.as_str() {
                "" => None,
                url => Some(BenchDatabase::create(url).await?),
            };
            config.database_url = database.as_ref().map(|d| d.url.clone()).unwrap_or_default();
            config.admin_key = crate::auth::generate_key("sb_admin_");
            if opts.counts_streams > 0 {
                let catalog = dir.path().join("catalog.toml");
                std::fs::write(&catalog, "[agents]\ngroup_fields = [\"Team\"]\n")?;
                config.catalog_file = catalog.display().to_string();
            }
            config.log_level = "warn".into();
            let key = config.admin_key.clone();
            if opts.expired > 0 {
                let (base, stop) = in_process(config.clone())?;
                prefill(&base, &key, opts.expired).await?;
                stop_in_process(stop).await?;
                // The prefill's writes reach the disk first, so that the run measures the
                // purge, not the write-back of a gigabyte stored just before; everything
                // stored so far is then expired a second from now.
                let _ = tokio::process::Command::new("sync").status().await;
                tokio::time::sleep(Duration::from_millis(1100)).await;
                config.retention_secs = 1;
            }
            let restart = opts.backlog.then(|| config.clone());
            if opts.backlog {
                config.role = crate::config::Role::Api;
            }
            let (base, stop) = in_process(config.clone())?;
            let (mut bases, mut stops, mut dirs) = (vec![base.clone()], vec![stop], vec![dir]);
            for _ in 1..opts.nodes {
                let dir = tempfile::tempdir()?;
                config.data_dir = dir.path().to_path_buf();
                let (base, stop) = in_process(config.clone())?;
                bases.push(base);
                stops.push(stop);
                dirs.push(dir);
            }
            Server {
                base,
                bases,
                admin_key: key,
                stop: stops,
                _dirs: dirs,
                database,
                restart,
            }
        }
    };
    for base in &server.bases {
        let ready = client.get(format!("{base}/readyz")).send().await?;
        if !ready.status().is_success() {
            bail!("the server at {base} is not ready: {}", ready.status());
        }
    }
    Ok(server)
}

/// Stream consumers, each on a connection of its own, from the next event on.
async fn open_streams(
    opts: &Options,
    base: &str,
    admin_key: &str,
    state: &Arc<Receiver>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<Histogram<u64>>>>> {
    let mut consumers = Vec::new();
    for _ in 0..opts.streams {
        let response = open_stream(base, "events/stream", admin_key).await?;
        consumers.push(tokio::spawn(consume_stream(
            response,
            state.clone(),
            opts.events,
        )));
    }
    Ok(consumers)
}

/// A stream of the tenant `default` (`path` after `…/default/`), on a connection of its own.
async fn open_stream(base: &str, path: &str, key: &str) -> anyhow::Result<reqwest::Response> {
    let response = reqwest::Client::new()
        .get(format!("{base}/v1/tenants/default/{path}"))
        .bearer_auth(key)
        .send()
        .await?;
    if response.status() != StatusCode::OK {
        bail!(
            "opening {path}: {} (for counts: does the server's catalog group by Team?)",
            response.status()
        );
    }
    Ok(response)
}

/// Counts-stream consumers (`--counts-streams`), by `Team`, each on a connection of its own.
async fn open_counts_streams(
    opts: &Options,
    base: &str,
    admin_key: &str,
    state: &Arc<Receiver>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<Histogram<u64>>>>> {
    let mut consumers = Vec::new();
    for i in 0..opts.counts_streams {
        let mut response = open_stream(base, "agents/counts/stream?by=Team", admin_key).await?;
        // The snapshot first: the load starts after it.
        let mut buffer = String::new();
        while !buffer.contains("\n\n") {
            let chunk = response.chunk().await?.context("the counts stream ended")?;
            buffer.push_str(std::str::from_utf8(&chunk)?);
        }
        let snapshot_end = buffer.find("\n\n").unwrap_or(0) + 2;
        buffer.drain(..snapshot_end);
        consumers.push(tokio::spawn(consume_counts(
            response,
            buffer,
            state.clone(),
            i,
            opts.events,
        )));
    }
    Ok(consumers)
}

/// Reads counts messages; each takes in the events up to its `as_of_sequence`: their latency is
/// from their send to its receipt. Ends when every event was taken in, or when every event was
/// accepted and no message came for two seconds (a last commit whose changes cancelled out).
async fn consume_counts(
    mut response: reqwest::Response,
    mut buffer: String,
    state: Arc<Receiver>,
    me: usize,
    want: usize,
) -> anyhow::Result<Histogram<u64>> {
    let mut latency = histogram();
    let mut got = 0;
    while got < want {
        let chunk = match tokio::time::timeout(Duration::from_secs(2), response.chunk()).await {
            Ok(chunk) => chunk?,
            Err(_) if state.all_accepted.load(std::sync::atomic::Ordering::SeqCst) => break,
            Err(_) => continue,
        };
        let Some(chunk) = chunk else {
            bail!("a counts stream ended after {got} of {want} events");
        };
        buffer.push_str(std::str::from_utf8(&chunk)?);
        let now = Instant::now();
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            const AS_OF: &str = "\"as_of_sequence\":";
            let Some(at) = message.find(AS_OF) else {
                continue;
            };
            let digits: String = message[at + AS_OF.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            let as_of: i64 = digits.parse().unwrap_or(0);
            let mut pending = state.counted[me].lock().expect("lock");
            let later = pending.split_off(&(as_of + 1));
            for sent in pending.values() {
                let us = now.saturating_duration_since(*sent).as_micros().max(1) as u64;
                let _ = latency.record(us);
                got += 1;
            }
            *pending = later;
        }
    }
    Ok(latency)
}

/// An Agent StatusChanged event for `--counts-streams`: agents in ten teams, each event moving
/// its agent to the next of four activities, so that (nearly) every event changes a count.
pub(crate) fn counts_event(id: Uuid, n: usize, agents: usize) -> Value {
    let agents = agents.max(1);
    let agent = n % agents;
    let (activity, availability) = [(16, 1), (0, 0), (34, 0), (36, 0)][(n / agents) % 4];
    json!({
        "Id": id,
        "Category": 1, "Code": 3,
        "AdditionalFields": {
            "SessionId": format!("S-{agent}"), "SessionType": "CCA",
            "Username": format!("agent{agent}"), "PhoneNo": "+15551230001",
            "Team": format!("team{}", agent % 10),
            "ActivityCode": activity, "AvailabilityCode": availability, "ActivityName": ""
        }
    })
}

/// Every request body, made before the clock starts, so that the bench's own work competes as
/// little as possible with the server it measures (as with wrk's fixed bodies).
fn request_bodies(opts: &Options) -> anyhow::Result<Vec<(bytes::Bytes, Vec<Uuid>)>> {
    let batches = opts.events.div_ceil(opts.batch);
    let id_source = BenchIds::new();
    let bodies = (0..batches)
        .map(|b| {
            let first = b * opts.batch;
            let count = opts.batch.min(opts.events - first);
            let ids: Vec<Uuid> = (first..first + count).map(|n| id_source.id(n)).collect();
            let events: Vec<Value> = (first..first + count)
                .zip(&ids)
                .map(|(n, id)| match opts.counts_streams + opts.rules {
                    0 => bench_event(*id, n, opts.agents),
                    _ => counts_event(*id, n, opts.agents),
                })
                .collect();
            let body = if opts.batch == 1 {
                serde_json::to_vec(&events[0])
            } else {
                serde_json::to_vec(&events)
            };
            body.map(|b| (bytes::Bytes::from(b), ids))
        })
        .collect::<Result<_, _>>()?;
    Ok(bodies)
}

/// What the load did: events accepted (in all, and by tenant), each request's latency, and
/// the seconds to the last acceptance and to the last delivery.
struct Driven {
    accepted: usize,
    by_tenant: std::collections::BTreeMap<String, usize>,
    ingest: Histogram<u64>,
    accept_secs: f64,
    end_to_end_secs: f64,
}

/// The measured load: `concurrency` workers take batches from a shared counter and post them
/// (on schedule with `--rate`), until every event is accepted and every delivery arrived.
async fn drive(
    opts: &Options,
    client: &reqwest::Client,
    bases: &[String],
    targets: &[(String, String)],
    requests: Arc<Vec<(bytes::Bytes, Vec<Uuid>)>>,
    state: &Arc<Receiver>,
) -> anyhow::Result<Driven> {
    let target = |w: usize| {
        let (node, t) = client_target(w, bases.len(), targets.len(), opts.tenants_by_node);
        let (tenant, key) = &targets[t];
        let base = &bases[node];
        (format!("{base}/v1/tenants/{tenant}/events"), key.clone(), t)
    };
    let by_tenant: Arc<Vec<std::sync::atomic::AtomicUsize>> =
        Arc::new(targets.iter().map(|_| Default::default()).collect());
    let batches = requests.len();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ingest = Arc::new(Mutex::new(histogram()));
    let start = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..opts.concurrency {
        let (url, key, tenant) = target(worker);
        let by_tenant = by_tenant.clone();
        let (client, url, requests, key, state, next, accepted, ingest, opts) = (
            client.clone(),
            url,
            requests.clone(),
            key,
            state.clone(),
            next.clone(),
            accepted.clone(),
            ingest.clone(),
            opts.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let b = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if b >= batches {
                    return anyhow::Ok(());
                }
                let first = b * opts.batch;
                let count = opts.batch.min(opts.events - first);
                // Open loop: this batch's scheduled time; latency counts from it.
                let scheduled = match opts.rate {
                    Some(rate) => {
                        let at = start + Duration::from_secs_f64(first as f64 / rate.max(1) as f64);
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    None => Instant::now(),
                };
                let (body, ids) = &requests[b];
                {
                    let mut sent = state.sent.lock().expect("lock");
                    for id in ids {
                        sent.insert(*id, scheduled);
                    }
                }
                let r = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                if r.status() != StatusCode::ACCEPTED {
                    bail!("ingest answered {}: {}", r.status(), r.text().await?);
                }
                let us = scheduled.elapsed().as_micros().max(1) as u64;
                if !state.counted.is_empty() {
                    // The sequences each counts consumer waits to see taken in.
                    let answer: Value = r.json().await?;
                    let sequences: Vec<i64> = (answer["events"].as_array().into_iter())
                        .flatten()
                        .filter_map(|e| e["sequence"].as_i64())
                        .collect();
                    for consumer in &state.counted {
                        let mut pending = consumer.lock().expect("lock");
                        pending.extend(sequences.iter().map(|s| (*s, scheduled)));
                    }
                }
                let _ = ingest.lock().expect("lock").record(us);
                accepted.fetch_add(count, std::sync::atomic::Ordering::SeqCst);
                by_tenant[tenant].fetch_add(count, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    let want = opts.events * opts.subscriptions;
    let progress = opts.progress.then(|| {
        let (accepted, state, events) = (accepted.clone(), state.clone(), opts.events);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let delivered = state.seen.lock().expect("lock").len();
                eprint!(
                    "\r{:>6.1}s  accepted {}/{}  delivered {delivered}/{want}   ",
                    start.elapsed().as_secs_f64(),
                    accepted.load(std::sync::atomic::Ordering::SeqCst),
                    events
                );
            }
        })
    });
    for w in workers {
        w.await??;
    }
    let accept_secs = start.elapsed().as_secs_f64();
    if !opts.backlog {
        wait_deliveries(state, want).await?;
    }
    let end_to_end_secs = start.elapsed().as_secs_f64();
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let accepted = accepted.load(std::sync::atomic::Ordering::SeqCst);
    let ingest = ingest.lock().expect("lock").clone();
    let by_tenant = (targets.iter().zip(by_tenant.iter()))
        .map(|((tenant, _), n)| (tenant.clone(), n.load(std::sync::atomic::Ordering::Relaxed)))
        .collect();
    Ok(Driven {
        accepted,
        by_tenant,
        ingest,
        accept_secs,
        end_to_end_secs,
    })
}

/// Waits until every event reached every subscription; the receiver wakes us on each arrival.
async fn wait_deliveries(state: &Arc<Receiver>, want: usize) -> anyhow::Result<()> {
    loop {
        let arrived = state.arrived.notified();
        if state.seen.lock().expect("lock").len() >= want {
            return Ok(());
        }
        if tokio::time::timeout(Duration::from_secs(60), arrived)
            .await
            .is_err()
        {
            bail!(
                "no delivery for 60 s; {} of {want} arrived",
                state.seen.lock().expect("lock").len()
            );
        }
    }
}

/// Creates a `default`-tenant key with the `publish` scope, using the admin key.
pub(crate) async fn publish_key(base: &str, admin_key: &str) -> anyhow::Result<String> {
    publish_key_of(base, admin_key, "default").await
}

/// Creates a key of `tenant` with the `publish` scope, using the admin key.
async fn publish_key_of(base: &str, admin_key: &str, tenant: &str) -> anyhow::Result<String> {
    let api = super::client::Api::new(base, admin_key);
    api.create_key(tenant, "bench", &["publish"])
        .await
        .with_context(|| format!("creating a publish key of {tenant}"))
}

/// The node and the tenant client `w` posts to, of `nodes` and `tenants`: node `w % nodes`
/// and, independently of that, tenant `(w / nodes) % tenants`; or, `by_node`, tenant
/// `w % tenants` (see [`Options::tenants_by_node`]).
fn client_target(w: usize, nodes: usize, tenants: usize, by_node: bool) -> (usize, usize) {
    let tenant = match by_node {
        true => w % tenants,
        false => (w / nodes) % tenants,
    };
    (w % nodes, tenant)
}

/// The ids of `n` tenants: `default`, then `bench-1`, `bench-2`, ….
fn bench_tenants(n: usize) -> Vec<String> {
    std::iter::once("default".to_string())
        .chain((1..n).map(|i| format!("bench-{i}")))
        .collect()
}

/// Random-looking version-4 GUIDs, as scattered as a producer's, without a system call for
/// random bytes per event on the machine being measured: one seed per run (runs may share a
/// database), the `n`th id derived from it.
#[derive(Clone, Copy)]
pub(crate) struct BenchIds(u64);

impl BenchIds {
    pub fn new() -> Self {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("the operating system's random source works");
        BenchIds(u64::from_le_bytes(b))
    }

    pub fn id(self, n: usize) -> Uuid {
        // SplitMix64's output function: distinct inputs give distinct, well-mixed outputs.
        let mix = |mut z: u64| {
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let seed = self.0;
        let high = mix(seed.wrapping_add((n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        let low = mix(high ^ seed.rotate_left(32));
        uuid::Builder::from_random_bytes((u128::from(high) << 64 | u128::from(low)).to_be_bytes())
            .into_uuid()
    }
}

/// An Agent StatusChanged event with Id `id`; `agents` agents take turns with `n`, so per-agent
/// work spreads.
pub(crate) fn bench_event(id: Uuid, n: usize, agents: usize) -> Value {
    let agent = n % agents.max(1);
    json!({
        "Id": id,
        "Category": 1, "Code": 3,
        "AdditionalFields": {
            "SessionId": format!("S-{agent}"), "SessionType": "CCA",
            "Username": format!("agent{agent}"), "PhoneNo": "+15551230001",
            "ActivityCode": 16, "AvailabilityCode": 1, "ActivityName": ""
        }
    })
}

/// Requests per second the receiver answers when driven directly with `concurrency` clients
/// sending `requests` in all.
async fn raw_rate(
    client: &reqwest::Client,
    addr: SocketAddr,
    concurrency: usize,
    requests: usize,
) -> anyhow::Result<f64> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next) = (client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < requests {
                client
                    .post(format!("http://{addr}/"))
                    .body("{}")
                    .send()
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(requests as f64 / start.elapsed().as_secs_f64())
}

/// Resident memory of a process from /proc (`self` or a pid): `(VmRSS, VmHWM)` in MiB, the
/// latter its peak.
pub(crate) fn rss_mib(pid: &str) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

impl Report {
    /// The human-readable summary.
    pub fn text(&self) -> String {
        let p = |x: &Percentiles| {
            format!(
                "p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2} ms",
                x.p50, x.p90, x.p99, x.max
            )
        };
        let rate = self
            .rate
            .map_or("closed loop".to_string(), |r| format!("open loop at {r}/s"));
        let rss = self
            .server_peak_rss_mib
            .map_or("n/a (--url)".to_string(), |m| format!("{m:.0} MiB"));
        let (delivered, to_receiver) = if self.subscriptions == 0 {
            let none = "none: no subscription (ingest alone)".to_string();
            (none.clone(), none)
        } else {
            let how = match self.backlog {
                true => "draining a stored backlog",
                false => "end to end",
            };
            let auth = match self.receiver_auth {
                ReceiverAuth::None => String::new(),
                ReceiverAuth::Bearer => ", bearer token".into(),
                ReceiverAuth::Oauth2 => {
                    format!(", OAuth 2 ({} token requests)", self.token_requests)
                }
            };
            let traces = self.otlp_ratio.map_or(String::new(), |r| {
                format!(
                    ", traces exported at ratio {r} ({} OTLP requests, {} spans dropped)",
                    self.otlp_exports, self.otlp_dropped
                )
            });
            let redact = match self.redact {
                true => ", three fields redacted",
                false => "",
            };
            let delivered = format!(
                "{} in {:.2} s = {:.0} deliveries/s {how}{auth}{traces}{redact}",
                self.deliveries, self.end_to_end_secs, self.deliveries_per_sec
            );
            (delivered, p(&self.ingest_to_receiver_ms))
        };
        let expired = self.expired.map_or(String::new(), |(n, purged)| {
            format!("\nretention         {purged} of {n} expired events purged during the run")
        });
        let per = |secs: f64| match self.deliveries.max(self.accepted) {
            0 => "n/a".to_string(),
            n => format!("{:.3}", secs * 1000.0 / n as f64),
        };
        let nodes = match (self.nodes, self.tenants) {
            (1, 1) => String::new(),
            (n, 1) => format!(", {n} nodes"),
            (1, t) => format!(", {t} tenants"),
            (n, t) => format!(", {n} nodes, {t} tenants"),
        };
        let server_cpu = self
            .cpu
            .server_secs
            .map_or(format!("n/a (--url{nodes})"), |s| {
                format!("server{nodes} {s:.2} s ({} ms)", per(s))
            });
        let cpu = format!(
            "\ncpu               {server_cpu}, PostgreSQL {:.2} s ({} ms), load+receiver {:.2} s ({} ms); per delivery (or event)",
            self.cpu.postgres_secs,
            per(self.cpu.postgres_secs),
            self.cpu.load_secs,
            per(self.cpu.load_secs),
        );
        let mut streams = self
            .ingest_to_stream_ms
            .as_ref()
            .map_or(String::new(), |s| {
                format!("\ningest→stream     {} ({} consumers)", p(s), self.streams)
            });
        if self.rules > 0 {
            streams.push_str(&format!(
                "\nrules             {} (a timer per matching agent, none firing){}",
                self.rules,
                if self.rules_disabled {
                    ", disabled"
                } else {
                    ""
                }
            ));
        }
        if let Some(s) = &self.ingest_to_counts_ms {
            streams.push_str(&format!(
                "\ningest→counts     {} ({} consumers, by Team)",
                p(s),
                self.counts_streams
            ));
        }
        format!(
            "switchboard bench: {} events, batch {}, concurrency {}, {} subscription(s), {rate}\n\
             accepted          {} in {:.2} s = {:.0} events/s\n\
             delivered         {delivered}\n\
             receiver raw      {:.0} requests/s over loopback (the ceiling)\n\
             ingest latency    {}\n\
             ingest→receiver   {to_receiver}\n\
             agents page       {} (limit 100, {} agents)\n\
             agents page 1000  {}\n\
             server peak RSS   {rss}{cpu}{expired}{streams}",
            self.events,
            self.batch,
            self.concurrency,
            self.subscriptions,
            self.accepted,
            self.accept_secs,
            self.accepted_per_sec,
            self.receiver_raw_requests_per_sec,
            p(&self.ingest_latency_ms),
            p(&self.agents_page_ms),
            self.agents,
            p(&self.agents_page_1000_ms),
        )
    }
}

/// A PostgreSQL database of the run's own, beside the one `--database-url` names (on the same
/// server), so that every run starts from empty tables; dropped at the end.
struct BenchDatabase {
    /// The admin connection's URL (the database given).
    admin: String,
    name: String,
    /// The new database's URL.
    url: String,
}

impl BenchDatabase {
    async fn create(url: &str) -> anyhow::Result<Self> {
        use sqlx::Connection;
        let (server, _) = url
            .rsplit_once('/')
            .context("--database-url has no database")?;
        // Runs at once (tests in one process) each get their own.
        let unique = Uuid::new_v4().simple().to_string();
        let name = format!("switchboard_bench_{}_{}", std::process::id(), &unique[..8]);
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .context("connecting to --database-url")?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .context("creating the run's database")?;
        Ok(BenchDatabase {
            admin: url.to_string(),
            url: format!("{server}/{name}"),
            name,
        })
    }

    async fn drop_it(self) {
        use sqlx::Connection;
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin).await {
            let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            let _ = sqlx::query(&drop).execute(&mut conn).await;
        }
    }
}

/// CPU time so far (seconds): this process, its in-process servers' threads (named
/// `switchboard-…`, and sqlx's `sqlx-sqlite-…`), and every process named `postgres` on this machine (the database on
/// loopback) by pid.
struct Cpu {
    process: f64,
    /// The servers' threads, by thread id: a thread that ends during a run (an earlier run's
    /// server going away) must not take its time off this run's.
    servers: HashMap<u32, f64>,
    postgres: HashMap<u32, f64>,
}

/// CPU time spent in a run, in seconds.
#[derive(Debug, Default, Serialize)]
pub struct CpuSpent {
    /// The in-process servers' threads (`None` with `--url`).
    pub server_secs: Option<f64>,
    /// The rest of this process: the clients and the receiver.
    pub load_secs: f64,
    /// PostgreSQL's processes on this machine (0 on SQLite).
    pub postgres_secs: f64,
}

/// `utime + stime` of a `/proc/…/stat` line, in seconds (USER_HZ is 100 on Linux), with the
/// command name.
fn stat_cpu(path: &str) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((name, ticks / 100.0))
}

impl Cpu {
    fn now(in_process: bool) -> Self {
        let process = stat_cpu("/proc/self/stat").map_or(0.0, |(_, s)| s);
        let mut servers = HashMap::new();
        if in_process && let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                let Some(tid) = task
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                let path = format!("{}/stat", task.path().display());
                // The servers' runtimes, writer and checkpoint threads, and sqlx's SQLite read
                // pool (the load does not use sqlx).
                if let Some((name, secs)) = stat_cpu(&path)
                    && (name.starts_with("switchboard-") || name.starts_with("sqlx-sqlite"))
                {
                    servers.insert(tid, secs);
                }
            }
        }
        let mut postgres = HashMap::new();
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some((name, secs)) = stat_cpu(&format!("/proc/{pid}/stat"))
                    && name == "postgres"
                {
                    postgres.insert(pid, secs);
                }
            }
        }
        Cpu {
            process,
            servers,
            postgres,
        }
    }

    /// What was spent since `before`. Threads and backends that ended meanwhile are not
    /// counted: the servers and their connections are still up when this is read.
    fn since(&self, before: &Cpu) -> CpuSpent {
        let postgres_secs = (self.postgres.iter())
            .map(|(pid, now)| now - before.postgres.get(pid).copied().unwrap_or(0.0))
            .sum();
        let process = self.process - before.process;
        let servers: f64 = (self.servers.iter())
            .map(|(tid, now)| now - before.servers.get(tid).copied().unwrap_or(0.0))
            .sum();
        CpuSpent {
            server_secs: (!self.servers.is_empty()).then_some(servers),
            load_secs: process - servers,
            postgres_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client_target;
    use std::collections::{BTreeMap, BTreeSet};

    /// The nodes each tenant is posted to, by 64 clients.
    fn nodes_of_tenants(
        nodes: usize,
        tenants: usize,
        by_node: bool,
    ) -> BTreeMap<usize, BTreeSet<usize>> {
        let mut of: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        for w in 0..64 {
            let (node, tenant) = client_target(w, nodes, tenants, by_node);
            of.entry(tenant).or_default().insert(node);
        }
        of
    }

    #[test]
    fn clients_spread_every_tenant_over_every_node_unless_tenants_go_by_node() {
        let everywhere = nodes_of_tenants(2, 8, false);
        assert_eq!(everywhere.len(), 8);
        assert!(everywhere.values().all(|n| n.len() == 2), "{everywhere:?}");
        let by_node = nodes_of_tenants(2, 8, true);
        assert_eq!(by_node.len(), 8);
        assert!(by_node.values().all(|n| n.len() == 1), "{by_node:?}");
        // Each node still takes tenants, and as many.
        let per_node = |node| by_node.values().filter(|n| n.contains(&node)).count();
        assert_eq!((per_node(0), per_node(1)), (4, 4));
    }
}
