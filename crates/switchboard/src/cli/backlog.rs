//! `switchboard bench --pending N`: the backlog benchmark. A server process (this binary's
//! `serve`, on a fresh SQLite data directory) gets N events for one subscription whose receiver
//! is down, keeps failing attempts for a while — its peak memory is measured then — and is
//! killed (SIGKILL). The receiver comes up, the server starts again on the same data, and the
//! time from the start to the first delivery is measured, with the deliveries of the next
//! seconds.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Deliveries to leave pending (one subscription, so also the events sent).
    pub pending: usize,
    /// How long the server keeps failing attempts against the dead receiver before the kill.
    pub down_secs: u64,
    /// How long deliveries are counted after the restart.
    pub after_secs: u64,
    pub progress: bool,
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub pending: usize,
    pub ingest_secs: f64,
    /// Peak resident memory of the server process while the backlog was pending (VmHWM).
    pub server_peak_rss_mib: f64,
    /// Its resident memory at the end of the down period.
    pub server_rss_mib: f64,
    /// From spawning the server again to its readiness probe answering.
    pub restart_ready_secs: f64,
    /// From spawning the server again to the first delivery arriving.
    pub restart_first_delivery_secs: f64,
    /// Deliveries that arrived within `after_secs` of the first one.
    pub delivered_after_restart: usize,
    pub after_secs: u64,
}

struct Arrivals {
    count: AtomicUsize,
    first: Notify,
}

async fn receive(State(a): State<Arc<Arrivals>>) -> StatusCode {
    if a.count.fetch_add(1, Ordering::SeqCst) == 0 {
        a.first.notify_one();
    }
    StatusCode::NO_CONTENT
}

/// A `switchboard serve` child process on `data_dir`, and its address.
async fn spawn_server(data_dir: &std::path::Path, key: &str) -> anyhow::Result<(Child, String)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--dev",
            "--config",
            "/dev/null",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env("SWITCHBOARD_ADMIN_KEY", key)
        .env("SWITCHBOARD_LOG_LEVEL", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the server")?;
    let stdout = child.stdout.take().context("the server's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(url) = line.strip_prefix("switchboard listening on ") {
            // Whatever it prints later is read and dropped, so it never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok((child, url.trim().to_string()));
        }
    }
    bail!("the server exited before listening")
}

/// Polls the readiness probe until it answers 200.
async fn wait_ready(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the server at {base} did not become ready in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs the backlog benchmark.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    if opts.pending == 0 {
        bail!("--pending must be at least 1");
    }
    let dir = tempfile::tempdir()?;
    let key = crate::auth::generate_key("sb_admin_");
    let client = reqwest::Client::new();
    // The receiver's port: free now, so attempts are refused until it listens there. Taken
    // below Linux's ephemeral range (32768 and up): a port the kernel hands out could be given
    // to another program's connection or listener while this one is down.
    let receiver_port = free_port_below_ephemeral()?;

    let (mut server, base) = spawn_server(dir.path(), &key).await?;
    let pid = server.id().context("the server's pid")?;
    wait_ready(&client, &base).await?;
    // Its breaker opens while the receiver is down (DESIGN §16); probes every second, so that
    // the restart, not the retry policy, is what the first delivery waits for.
    let body = json!({"url": format!("http://127.0.0.1:{receiver_port}/"),
                      "retry_schedule_secs": [1]});
    super::client::Api::new(&base, &key)
        .create_subscription("default", &body)
        .await
        .context("creating the subscription")?;

    // Ingest in the largest batches, a few at a time, with a publish key.
    let publish = super::bench::publish_key(&base, &key).await?;
    let start = Instant::now();
    let batch = crate::event::MAX_BATCH;
    let next = Arc::new(AtomicUsize::new(0));
    let ids = super::bench::BenchIds::new();
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (api, next, total) = (
            super::client::Api::new(&base, &publish),
            next.clone(),
            opts.pending,
        );
        workers.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(batch, Ordering::SeqCst);
                if first >= total {
                    return anyhow::Ok(());
                }
                let events: Vec<Value> = (first..(first + batch).min(total))
                    .map(|n| super::bench::bench_event(ids.id(n), n, 500))
                    .collect();
                api.publish("default", &Value::Array(events))
                    .await
                    .context("ingest")?;
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let ingest_secs = start.elapsed().as_secs_f64();
    if opts.progress {
        eprintln!(
            "{} events accepted in {ingest_secs:.1} s; receiver down for {} s",
            opts.pending, opts.down_secs
        );
    }

    // The receiver stays down; the server keeps failing attempts.
    tokio::time::sleep(Duration::from_secs(opts.down_secs)).await;
    let (server_rss_mib, server_peak_rss_mib) =
        super::bench::rss_mib(&pid.to_string()).context("reading the server's memory")?;
    server.kill().await?;

    // The receiver comes up; the server starts again on the same data.
    let arrivals = Arc::new(Arrivals {
        count: AtomicUsize::new(0),
        first: Notify::new(),
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", receiver_port)).await?;
    let app = Router::new()
        .route("/", post(receive))
        .with_state(arrivals.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let first = arrivals.first.notified();
    let restarted = Instant::now();
    let (_server, base) = spawn_server(dir.path(), &key).await?;
    wait_ready(&client, &base).await?;
    let restart_ready_secs = restarted.elapsed().as_secs_f64();
    tokio::time::timeout(Duration::from_secs(60), first)
        .await
        .context("no delivery within 60 s of the restart")?;
    let restart_first_delivery_secs = restarted.elapsed().as_secs_f64();
    let counted_from = arrivals.count.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(opts.after_secs)).await;
    let delivered_after_restart = arrivals.count.load(Ordering::SeqCst) - counted_from + 1;
    Ok(Report {
        pending: opts.pending,
        ingest_secs,
        server_peak_rss_mib,
        server_rss_mib,
        restart_ready_secs,
        restart_first_delivery_secs,
        delivered_after_restart,
        after_secs: opts.after_secs,
    })
}

impl Report {
    /// The human-readable summary.
    pub fn text(&self) -> String {
        format!(
            "switchboard bench --pending: {} deliveries pending, receiver down\n\
             ingested          in {:.1} s ({:.0} events/s)\n\
             server RSS        peak {:.0} MiB, {:.0} MiB at the kill\n\
             restart (SIGKILL) ready after {:.2} s, first delivery after {:.2} s\n\
             then              {} deliveries in {} s ({:.0}/s)",
            self.pending,
            self.ingest_secs,
            self.pending as f64 / self.ingest_secs,
            self.server_peak_rss_mib,
            self.server_rss_mib,
            self.restart_ready_secs,
            self.restart_first_delivery_secs,
            self.delivered_after_restart,
            self.after_secs,
            self.delivered_after_restart as f64 / self.after_secs.max(1) as f64,
        )
    }
}

/// A loopback port from 20000 to 32767 that nothing listens on now, tried from a point that
/// differs from run to run.
fn free_port_below_ephemeral() -> anyhow::Result<u16> {
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_768;
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        % SPAN;
    (0..SPAN)
        .map(|i| (FIRST + (start + i) % SPAN) as u16)
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .context("no free loopback port from 20000 to 32767")
}
