//! `switchboard bench --destination nats|amqp`: deliveries to a broker measured — a fresh
//! in-process server, one subscription whose destination is a stream (NATS JetStream) or an
//! exchange and queue (RabbitMQ) of the run's own, `--events` events POSTed 1,000 a request,
//! timed from the first POST until the broker holds them all (each acknowledged, so stored).
//! What the run declared is deleted at its end. The broker runs on loopback (`--broker-url`).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream;
use serde::Serialize;
use serde_json::json;

use super::prefill;
use super::pull::{fresh, post_json};

/// The broker to deliver to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Nats,
    Amqp,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub kind: Kind,
    pub events: usize,
    /// The broker (`nats://…` or `amqp://…`).
    pub broker_url: String,
    /// Empty: SQLite in a temporary directory.
    pub database_url: String,
    /// The subscription's `max_in_flight`.
    pub in_flight: u32,
}

/// What it measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub destination: Kind,
    pub events: usize,
    pub broker_url: String,
    pub max_in_flight: u32,
    /// From the first POST to the last POST's answer.
    pub ingest_secs: f64,
    /// From the first POST until the stream held every event.
    pub delivered_secs: f64,
    pub delivered_per_sec: f64,
}

impl Report {
    pub fn text(&self) -> String {
        let what = match self.destination {
            Kind::Nats => "NATS JetStream",
            Kind::Amqp => "RabbitMQ",
        };
        format!(
            "{what} at {}, max_in_flight {}: {} events delivered in {:.2} s = {:.0} events/s \
             (ingest done after {:.2} s)",
            crate::subscription::destination::mask(&self.broker_url),
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
    let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    match opts.kind {
        Kind::Nats => {
            let client = async_nats::connect(opts.broker_url.as_str())
                .await
                .with_context(|| format!("connecting to NATS at {}", opts.broker_url))?;
            let js = jetstream::new(client);
            let name = format!("SBBENCH_{tag}");
            js.create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![format!("sbbench.{tag}.>")],
                ..Default::default()
            })
            .await
            .context("creating the run's stream (is JetStream enabled? nats-server -js)")?;
            let destination = json!({"type": "nats", "url": opts.broker_url,
                                     "subject": format!("sbbench.{tag}.{{agent}}")});
            let held = || async {
                let mut stream = js.get_stream(&name).await?;
                anyhow::Ok(stream.info().await?.state.messages)
            };
            let outcome = measure(&opts, destination, held).await;
            let _ = js.delete_stream(&name).await;
            outcome
        }
        Kind::Amqp => {
            use lapin::options::{
                ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
                QueueDeclareOptions, QueueDeleteOptions,
            };
            use lapin::types::FieldTable;
            let conn = lapin::Connection::connect(
                &opts.broker_url,
                lapin::ConnectionProperties::default(),
            )
            .await
            .with_context(|| format!("connecting to RabbitMQ at {}", opts.broker_url))?;
            let channel = conn.create_channel().await?;
            let exchange = format!("sbbench.{tag}");
            let queue = format!("sbbench.{tag}.all");
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    lapin::ExchangeKind::Topic,
                    ExchangeDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    "#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let destination = json!({"type": "amqp", "url": opts.broker_url,
                                     "exchange": exchange, "routing_key": "{agent}"});
            let held = || async {
                let q = channel
                    .queue_declare(
                        queue.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                anyhow::Ok(u64::from(q.message_count()))
            };
            let outcome = measure(&opts, destination, held).await;
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
            outcome
        }
    }
}

async fn measure<F, Fut>(
    opts: &Options,
    destination: serde_json::Value,
    held: F,
) -> anyhow::Result<Report>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    let http = reqwest::Client::new();
    let server = fresh(&opts.database_url).await?;
    post_json(
        &http,
        &server.subs(),
        &server.key,
        &json!({"destination": destination, "max_in_flight": opts.in_flight}),
    )
    .await
    .context("creating the subscription")?;
    let started = Instant::now();
    prefill(&server.base, &server.key, opts.events).await?;
    let ingest_secs = started.elapsed().as_secs_f64();
    let deadline = started + Duration::from_secs(600);
    loop {
        let held = held().await?;
        if held >= opts.events as u64 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {held} of {} events reached the broker in 600 s",
                opts.events
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let delivered_secs = started.elapsed().as_secs_f64();
    server.end(http).await?;
    Ok(Report {
        destination: opts.kind,
        events: opts.events,
        broker_url: crate::subscription::destination::mask(&opts.broker_url),
        max_in_flight: opts.in_flight,
        ingest_secs,
        delivered_secs,
        delivered_per_sec: opts.events as f64 / delivered_secs.max(1e-9),
    })
}
