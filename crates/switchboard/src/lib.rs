//! Switchboard: a webhooks service for contact centers. It takes events in over HTTP, stores
//! them durably, and delivers them to every subscribed application, signed, retried until
//! delivered.
//!
//! # Layout
//!
//! - [`event`]: the wire event, its validation and canonical form (pure logic, no I/O).
//! - [`agent`]: the live state of an agent derived from its events, and its timeline (pure).
//! - [`subscription`]: the subscription body, its validation, event matching, JSON merge patch
//!   and the health policy (pure logic).
//! - [`store`]: durable state; the only module with SQL. Ingest, the dispatcher's claims and
//!   outcomes, System events, replays, retention's purges and the agents projection go through
//!   one group-committing writer per node, whose turn (`store/turn.rs`) is written once for
//!   SQLite and PostgreSQL; deliveries are created only there. Reads and rare administrative
//!   writes use a separate pool.
//! - [`delivery`]: in three rooms — the dispatcher (which due deliveries to attempt, and when),
//!   the attempt (the `Destination` trait, and the one `attempt()` that the dispatcher and the
//!   API's Test action share, with the outcome policy) and the sender (the one guarded HTTP
//!   client and the HTTP destination); beside them the address guard, the retry schedule and
//!   the signatures.
//! - [`api`]: the HTTP API, one file per resource; the `Access` extractor (authentication, the
//!   scope on the path's tenant, the tenant's existence) and strict query parameters; errors
//!   as problem+json; the OpenAPI document, generated from the handlers; the console.
//! - [`auth`]: API keys, scopes and principals (`Principal::may`: 404 or 403).
//! - [`clock`]: time: `now_millis`, and the `Clock` the writer, the dispatcher and attempts
//!   read (one tests move by hand); jitter and backoff.
//! - [`cli`]: the tools besides `serve`: the API's client commands, `listen` (a verifying local
//!   receiver), `bench` and its `--pending` backlog mode, `simulate` (agents' shifts).
//! - [`config`], [`telemetry`]: start-up concerns: the layered configuration; logs and metrics.
//!
//! [`run`] serves the API on a bound listener until a shutdown future resolves; `main.rs` only
//! parses flags and hands over.

pub mod agent;
pub mod api;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod event;
pub mod store;
pub mod subscription;
pub mod telemetry;

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::delivery::guard::Guard;
use crate::delivery::{Dispatcher, Sender};
use crate::event::Catalog;
use crate::store::Store;

/// Runs the service on `listener` until `shutdown` resolves, then drains in-flight requests,
/// commits what is queued and closes the database.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(config, listener, shutdown, |_| {}).await
}

/// [`run`], calling `serving` with the bound address once the store is open and requests are
/// answered (`serve` prints its "listening" line there: nothing is said before it is true).
pub async fn run_with(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    serving: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    // Installed before anything is counted.
    telemetry::metrics();
    let admin_key = admin_key(&config)?;
    let catalog = match config.catalog_file.as_str() {
        "" => Catalog::builtin(),
        path => Catalog::load(Path::new(path)).map_err(anyhow::Error::msg)?,
    };
    let db = config.database_description();
    let options = store::Options {
        connect_timeout: Duration::from_secs(config.database_connect_timeout_secs),
        health: subscription::health::Policy {
            disable_after_ms: config.auto_disable_after_secs as i64 * 1000,
            ..Default::default()
        },
        clock: clock::Clock::system(),
        sqlite_max_pages: None,
    };
    let store = Store::open_with(&config.database_url, &config.sqlite_path(), options)
        .await
        .with_context(|| format!("opening database {db}"))?;
    let timeout = Duration::from_secs(config.delivery_timeout_secs);
    let guard = Guard {
        allow_loopback: config.dev,
        allow_networks: config.allow_networks.clone(),
    };
    let sender = Sender::new(guard, timeout).context("building the HTTP client")?;
    // Streams never end by themselves: the server's graceful stop ends them first.
    let (stop_streams, streams_stopped) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_streams.send(true);
    };
    // The lease outlives the HTTP timeout (an attempt starts as soon as it is claimed), so a
    // delivery in flight is never claimed twice; a dead node's claims come free after it.
    let lease = timeout * 2 + Duration::from_secs(5);
    let state = api::AppState {
        store: store.clone(),
        catalog: Arc::new(catalog),
        admin_key_hash: auth::hash_key(&admin_key).into(),
        max_body_bytes: config.max_body_bytes,
        sender: sender.clone(),
        lease_ms: lease.as_millis() as i64,
        limits: Arc::default(),
        streams_stop: streams_stopped,
        tails: Arc::default(),
    };

    let (stop_dispatcher, stopped) = watch::channel(false);
    let dispatcher = config
        .role
        .delivers()
        .then(|| tokio::spawn(Dispatcher::new(store.clone(), sender, lease).run(stopped)));

    let purger = tokio::spawn(purge(
        store.clone(),
        Duration::from_secs(config.retention_secs),
        stop_dispatcher.subscribe(),
    ));

    let app = if config.role.serves_api() {
        api::app(state)
    } else {
        api::health_only(state)
    };
    let role = config.role;
    tracing::info!(addr = %listener.local_addr()?, db = %db, dev = config.dev, ?role, "serving");
    serving(listener.local_addr()?);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    // Order matters: no new requests, then no new attempts (those in flight finish and are
    // recorded), then the writer commits what is queued.
    let _ = stop_dispatcher.send(true);
    if let Some(dispatcher) = dispatcher {
        let _ = dispatcher.await;
    }
    let _ = purger.await;
    store.close().await;
    tracing::info!("stopped");
    served.context("serving HTTP")
}

/// Purges what `retention` has expired, now and then every minute (or every half retention
/// period, if shorter), until `stop` turns true. Each pass works in small transactions.
async fn purge(store: Store, retention: Duration, mut stop: watch::Receiver<bool>) {
    let every = (retention / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
    while !*stop.borrow() {
        let cutoff = clock::now_millis() - retention.as_millis() as i64;
        match store.purge(cutoff).await {
            Ok(p) if p.events + p.system_events > 0 => {
                tracing::info!(
                    events = p.events,
                    system_events = p.system_events,
                    deliveries = p.deliveries,
                    "retention purged"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention purge failed; trying again later"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
    }
}

/// The admin key: configured, else the one saved in the data dir, else a new one — saved with
/// mode 0600 and printed once.
fn admin_key(config: &Config) -> anyhow::Result<String> {
    if !config.admin_key.is_empty() {
        return Ok(config.admin_key.clone());
    }
    let path = config.admin_key_path();
    match std::fs::read_to_string(&path) {
        Ok(key) if !key.trim().is_empty() => return Ok(key.trim().to_string()),
        Ok(_) => anyhow::bail!("admin key file {} is empty", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let key = auth::generate_key("sb_admin_");
    write_private(&path, &key).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "Generated the admin key (shown once; saved to {}, mode 0600):\n\n    {key}\n",
        path.display()
    );
    Ok(key)
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}
