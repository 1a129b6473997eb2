//! `switchboard bench --destination nats`: deliveries to NATS JetStream measured — a fresh
//! in-process server, one subscription whose destination is a stream of the run's own on the
//! broker, `--events` events POSTed 1,000 a request, timed from the first POST until the
//! stream holds them all (each PubAck'd, so stored by the broker). The stream is deleted at the
//! end. The broker runs on loopback (`--nats-url`).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream;
use serde::Serialize;
use serde_json::json;

use super::prefill;
use super::pull::{fresh, post_json};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub events: usize,
    pub nats_url: String,
    /// Empty: SQLite in a temporary directory.
    pub database_url: String,
    /// The subscription's `max_in_flight`.
    pub in_flight: u32,
}

/// What it measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub events: usize,
    pub nats_url: String,
    pub max_in_flight: u32,
    /// From the first POST to the last POST's answer.
    pub ingest_secs: f64,
    /// From the first POST until the stream held every event.
    pub delivered_secs: f64,
    pub delivered_per_sec: f64,
}

impl Report {
    pub fn text(&self) -> String {
        format!(
            "NATS JetStream at {}, max_in_flight {}: {} events delivered in {:.2} s = {:.0} events/s \
             (ingest done after {:.2} s)",
            self.nats_url,
            self.max_in_flight,
            self.events,
            self.delivered_secs,
            self.delivered_per_sec,
            self.ingest_secs
        )
    }
}

pub async fn run(opts: Options) -> anyhow::Result<Report> {
    if opts.events == 0 {
        bail!("--events must be at least 1");
    }
    let client = async_nats::connect(opts.nats_url.as_str())
        .await
        .with_context(|| format!("connecting to NATS at {}", opts.nats_url))?;
    let js = jetstream::new(client);
    let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let name = format!("SBBENCH_{tag}");
    js.create_stream(jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("sbbench.{tag}.>")],
        ..Default::default()
    })
    .await
    .context("creating the run's stream (is JetStream enabled? nats-server -js)")?;
    let outcome = measure(&opts, &js, &name, &tag).await;
    let _ = js.delete_stream(&name).await;
    outcome
}

async fn measure(
    opts: &Options,
    js: &jetstream::Context,
    name: &str,
    tag: &str,
) -> anyhow::Result<Report> {
    let http = reqwest::Client::new();
    let server = fresh(&opts.database_url).await?;
    post_json(
        &http,
        &server.subs(),
        &server.key,
        &json!({"destination": {"type": "nats", "url": opts.nats_url,
                                "subject": format!("sbbench.{tag}.{{agent}}")},
                "max_in_flight": opts.in_flight}),
    )
    .await
    .context("creating the nats subscription")?;
    let started = Instant::now();
    prefill(&server.base, &server.key, opts.events).await?;
    let ingest_secs = started.elapsed().as_secs_f64();
    let deadline = started + Duration::from_secs(600);
    loop {
        let mut stream = js.get_stream(name).await?;
        let held = stream.info().await?.state.messages;
        if held >= opts.events as u64 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {held} of {} events reached the stream in 600 s",
                opts.events
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let delivered_secs = started.elapsed().as_secs_f64();
    server.end(http).await?;
    Ok(Report {
        events: opts.events,
        nats_url: opts.nats_url.clone(),
        max_in_flight: opts.in_flight,
        ingest_secs,
        delivered_secs,
        delivered_per_sec: opts.events as f64 / delivered_secs.max(1e-9),
    })
}
