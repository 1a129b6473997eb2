//! `switchboard bench --pull`: pull subscriptions (DESIGN §16) measured — one consumer reading
//! a stored backlog 1,000 at a time and committing as it goes; the long poll, from an event's
//! POST to its consumer's receipt; and ingest with 10 pull subscriptions against 10 push ones,
//! fresh servers in turn, interleaved.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    BenchDatabase, BenchIds, Percentiles, bench_event, histogram, in_process, prefill, publish_key,
    start_receiver, stop_in_process,
};
use crate::config::Config;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Events stored, then read by one consumer.
    pub events: usize,
    /// Empty: SQLite in a temporary directory.
    pub database_url: String,
    /// Events sent one at a time, 10 ms apart, to a long-polling consumer.
    pub polled: usize,
    /// Single-event POSTs per ingest run, from `concurrency` clients.
    pub ingest_events: usize,
    pub concurrency: usize,
}

/// What it measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub events: usize,
    /// One consumer, `limit=1000`, committing each page.
    pub consumer_secs: f64,
    pub consumer_events_per_sec: f64,
    /// From the POST of an event to the long-polling consumer's receipt of it.
    pub polled: usize,
    pub post_to_consumer_ms: Percentiles,
    /// Accepted events per second, single POSTs, with 10 subscriptions of each kind; one
    /// figure per run, runs interleaved (push, pull, push, pull).
    pub ingest_events: usize,
    pub ingest_10_push_per_sec: Vec<f64>,
    pub ingest_10_pull_per_sec: Vec<f64>,
}

impl Report {
    pub fn text(&self) -> String {
        let p = &self.post_to_consumer_ms;
        let rates = |v: &[f64]| {
            v.iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "one pull consumer, limit 1000: {} events in {:.2} s = {:.0} events/s\n\
             long poll, POST → consumer ({} events): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n\
             ingest, {} single POSTs: 10 push subscriptions {} accepted/s; 10 pull subscriptions {} accepted/s",
            self.events,
            self.consumer_secs,
            self.consumer_events_per_sec,
            self.polled,
            p.p50,
            p.p90,
            p.p99,
            p.max,
            self.ingest_events,
            rates(&self.ingest_10_push_per_sec),
            rates(&self.ingest_10_pull_per_sec),
        )
    }
}

/// A fresh in-process server, its admin key, and what removes it.
pub(super) struct Fresh {
    pub(super) base: String,
    pub(super) key: String,
    stop: super::InProcess,
    _dir: tempfile::TempDir,
    database: Option<BenchDatabase>,
}

pub(super) async fn fresh(database_url: &str) -> anyhow::Result<Fresh> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::for_data_dir(dir.path());
    config.dev = true;
    let database = match database_url {
        "" => None,
        url => Some(BenchDatabase::create(url).await?),
    };
    config.database_url = database.as_ref().map(|d| d.url.clone()).unwrap_or_default();
    config.admin_key = crate::auth::generate_key("sb_admin_");
    config.log_level = "warn".into();
    let key = config.admin_key.clone();
    let (base, stop) = in_process(config)?;
    let ready = reqwest::get(format!("{base}/readyz")).await?;
    if !ready.status().is_success() {
        bail!("the server at {base} is not ready: {}", ready.status());
    }
    Ok(Fresh {
        base,
        key,
        stop,
        _dir: dir,
        database,
    })
}

impl Fresh {
    pub(super) async fn end(self, client: reqwest::Client) -> anyhow::Result<()> {
        drop(client);
        stop_in_process(self.stop).await?;
        if let Some(d) = self.database {
            d.drop_it().await;
        }
        Ok(())
    }

    pub(super) fn subs(&self) -> String {
        format!("{}/v1/tenants/default/subscriptions", self.base)
    }
}

async fn get_json(client: &reqwest::Client, url: &str, key: &str) -> anyhow::Result<Value> {
    let r = client.get(url).bearer_auth(key).send().await?;
    if !r.status().is_success() {
        bail!(
            "GET {url}: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    Ok(r.json().await?)
}

pub(super) async fn post_json(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let r = client.post(url).bearer_auth(key).json(body).send().await?;
    if !r.status().is_success() {
        bail!(
            "POST {url}: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    Ok(r.json().await?)
}

/// Runs the three measurements.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    if opts.events == 0 || opts.polled == 0 || opts.ingest_events == 0 || opts.concurrency == 0 {
        bail!("--events, --concurrency and the pull figures must be at least 1");
    }
    let client = reqwest::Client::new();
    let server = fresh(&opts.database_url).await?;
    let subs = server.subs();

    // 1. One consumer reads a stored backlog to its end, 1,000 at a time, committing each page.
    let sub = post_json(
        &client,
        &subs,
        &server.key,
        &json!({"mode": "pull", "start": "earliest"}),
    )
    .await
    .context("creating a pull subscription")?;
    let id = sub["id"].as_str().context("a subscription id")?.to_string();
    prefill(&server.base, &server.key, opts.events).await?;
    let messages = format!("{subs}/{id}/messages?limit=1000");
    let commit = format!("{subs}/{id}/commit");
    let started = Instant::now();
    let mut read = 0;
    while read < opts.events {
        let page = get_json(&client, &messages, &server.key).await?;
        let got = page["data"].as_array().map_or(0, Vec::len);
        if got == 0 {
            bail!("the consumer found {read} of {} events", opts.events);
        }
        read += got;
        post_json(
            &client,
            &commit,
            &server.key,
            &json!({"cursor": page["next_cursor"]}),
        )
        .await?;
    }
    let consumer_secs = started.elapsed().as_secs_f64();

    // 2. The long poll: events sent 10 ms apart; the consumer reads on after each page.
    let sub = post_json(&client, &subs, &server.key, &json!({"mode": "pull"})).await?;
    let id = sub["id"].as_str().context("a subscription id")?.to_string();
    let sent: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let consumer = {
        let (client, url, key, sent) = (
            client.clone(),
            format!("{subs}/{id}/messages?limit=1000&wait_secs=30"),
            server.key.clone(),
            sent.clone(),
        );
        let want = opts.polled;
        tokio::spawn(async move {
            let mut latency = histogram();
            let (mut got, mut after) = (0, None::<i64>);
            while got < want {
                let url = match after {
                    Some(a) => format!("{url}&after={a}"),
                    None => url.clone(),
                };
                let page = get_json(&client, &url, &key).await?;
                let now = Instant::now();
                for m in page["data"].as_array().into_iter().flatten() {
                    got += 1;
                    let id = m["event"]["Id"]
                        .as_str()
                        .and_then(|s| Uuid::parse_str(s).ok());
                    let at = id.and_then(|id| sent.lock().expect("lock").get(&id).copied());
                    if let Some(at) = at {
                        let _ = latency.record(now.duration_since(at).as_micros().max(1) as u64);
                    }
                }
                after = page["next_cursor"].as_i64();
            }
            anyhow::Ok(latency)
        })
    };
    let publish = publish_key(&server.base, &server.key).await?;
    let events_url = format!("{}/v1/tenants/default/events", server.base);
    let ids = BenchIds::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for n in 0..opts.polled {
        tick.tick().await;
        let id = ids.id(opts.events + n);
        let body = bench_event(id, n, 500);
        sent.lock().expect("lock").insert(id, Instant::now());
        post_json(&client, &events_url, &publish, &body).await?;
    }
    let latency = tokio::time::timeout(Duration::from_secs(60), consumer)
        .await
        .context("the long-polling consumer did not get every event within 60 s")???;
    server.end(client).await?;

    // 3. Ingest with 10 subscriptions of each kind, fresh servers, interleaved.
    let (receiver, addr) =
        start_receiver(opts.ingest_events * 10, super::ReceiverAuth::None, 0).await?;
    drop(receiver);
    let (mut push, mut pull) = (Vec::new(), Vec::new());
    for kind in ["push", "pull", "push", "pull"] {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(opts.concurrency * 2)
            .build()?;
        let server = fresh(&opts.database_url).await?;
        let body = match kind {
            "push" => json!({"url": format!("http://{addr}/"), "max_in_flight": 64}),
            _ => json!({"mode": "pull"}),
        };
        for _ in 0..10 {
            post_json(&client, &server.subs(), &server.key, &body).await?;
        }
        let key = publish_key(&server.base, &server.key).await?;
        let rate = ingest(&client, &server.base, &key, &opts).await?;
        match kind {
            "push" => push.push(rate),
            _ => pull.push(rate),
        }
        server.end(client).await?;
    }
    Ok(Report {
        events: opts.events,
        consumer_secs,
        consumer_events_per_sec: opts.events as f64 / consumer_secs,
        polled: opts.polled,
        post_to_consumer_ms: Percentiles::of(&latency),
        ingest_events: opts.ingest_events,
        ingest_10_push_per_sec: push,
        ingest_10_pull_per_sec: pull,
    })
}

/// Closed loop: `ingest_events` single POSTs from `concurrency` clients; accepted per second.
async fn ingest(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    opts: &Options,
) -> anyhow::Result<f64> {
    let ids = BenchIds::new();
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(
        (0..opts.ingest_events)
            .map(|n| serde_json::to_vec(&bench_event(ids.id(n), n, 500)).map(bytes::Bytes::from))
            .collect::<Result<_, _>>()?,
    );
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let url = format!("{base}/v1/tenants/default/events");
    let started = Instant::now();
    let workers: Vec<_> = (0..opts.concurrency)
        .map(|_| {
            let (client, url, key, bodies, next) = (
                client.clone(),
                url.clone(),
                key.to_string(),
                bodies.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(body) = bodies.get(n) else {
                        return anyhow::Ok(());
                    };
                    let r = client
                        .post(&url)
                        .bearer_auth(&key)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await?;
                    if r.status() != reqwest::StatusCode::ACCEPTED {
                        bail!("POST {url}: {}", r.status());
                    }
                    r.bytes().await?;
                }
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    Ok(opts.ingest_events as f64 / started.elapsed().as_secs_f64())
}
