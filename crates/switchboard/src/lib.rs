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
//! - [`jobs`]: the runner of jobs (long replays, cancels): takes them, works them a page at a
//!   time, resumes them after a restart; the pages themselves are the store's.
//! - [`lag`]: the lag watcher: tells the tenant's monitors when a subscription with a lag
//!   budget falls behind it and when it catches up, once per episode.
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
pub mod jobs;
pub mod lag;
pub mod otel;
pub mod redact;
pub mod rule;
pub mod secrets;
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
    // Held while serving the embedded database, so that `restore` and `copy` refuse to work
    // under it (and a second server on the same files is refused); the kernel drops it with
    // the process.
    let _held = match config.is_postgres() {
        false => Some(store::embedded::hold(&config.data_dir)?),
        true => None,
    };
    // Installed before anything is counted.
    telemetry::metrics();
    let admin_key = admin_key(&config)?;
    let limits = Limits::of(&config);
    tracing::debug!(?limits, "limits derived from the file-descriptor limit");
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
        secret_key: secrets::SecretKey::configured(&config.secret_key, &config.secret_key_file)?,
        group_fields: catalog.group_fields().clone(),
    };
    let store = Store::open_with(&config.database_url, &config.sqlite_path(), options)
        .await
        .with_context(|| format!("opening database {db}"))?;
    let timeout = Duration::from_secs(config.delivery_timeout_secs);
    let guard = Guard {
        allow_loopback: config.dev,
        allow_networks: config.allow_networks.clone(),
    };
    let mut sender = Sender::new(guard, timeout).context("building the HTTP client")?;
    let hash_key = store
        .hash_key()
        .await
        .context("reading the instance's hash key")?;
    sender = sender.with_hash_key(hash_key);
    if !config.egress_proxy.is_empty() {
        sender = sender
            .with_proxy(&config.egress_proxy)
            .context("egress_proxy")?;
    }
    // Streams never end by themselves: the server's graceful stop ends them first.
    let (stop_streams, streams_stopped) = watch::channel(false);
    // Draining (DESIGN §15): told to stop, the node first answers /readyz 503 while it still
    // serves, so that a load balancer takes it out of rotation before it stops accepting.
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drain = match config.dev {
        true => Duration::ZERO,
        false => Duration::from_secs(config.drain_secs),
    };
    let drained = draining.clone();
    let shutdown = async move {
        shutdown.await;
        if !drain.is_zero() {
            drained.store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::info!(
                ?drain,
                "draining: /readyz answers 503 while requests are still served"
            );
            tokio::time::sleep(drain).await;
        }
        let _ = stop_streams.send(true);
    };
    // The lease outlives the HTTP timeout (an attempt starts as soon as it is claimed), so a
    // delivery in flight is never claimed twice; a dead node's claims come free after it.
    let lease = timeout * 2 + Duration::from_secs(5);
    let state = api::AppState::new(api::Shared {
        store: store.clone(),
        catalog: Arc::new(catalog),
        admin_key_hash: auth::hash_key(&admin_key).into(),
        max_body_bytes: config.max_body_bytes,
        sender: sender.clone(),
        lease_ms: lease.as_millis() as i64,
        limits: Arc::default(),
        reads: Arc::new(api::limits::Reads::new(
            config.max_reads_per_tenant,
            api::limits::READ_WAIT,
        )),
        streams_stop: streams_stopped,
        tails: Arc::default(),
        settings: Arc::new(api::Settings {
            max_subscriptions_per_tenant: config.max_subscriptions_per_tenant,
            max_jobs_per_tenant: config.max_jobs_per_tenant,
            max_rules_per_tenant: config.max_rules_per_tenant,
            max_portal_links_per_tenant: config.max_portal_links_per_tenant,
            portal_csp: api::portal_csp(&config.portal_frame_ancestors),
            public_url: config.public_url.trim_end_matches('/').to_string(),
            metrics_key_hash: (!config.metrics_key.is_empty())
                .then(|| auth::hash_key(&config.metrics_key)),
            stream_buffer_bytes: usize::try_from(config.stream_buffer_bytes).unwrap_or(usize::MAX),
            stream_idle: Duration::from_secs(config.stream_idle_secs),
            max_history_events: usize::try_from(config.max_history_events).unwrap_or(usize::MAX),
        }),
        draining,
        streams_open: Arc::new(api::streams::Slots::new(
            config.max_streams_per_key,
            config.max_streams_per_tenant,
            limits.max_streams,
        )),
    });

    let (stop_dispatcher, stopped) = watch::channel(false);
    let dispatcher = config
        .role
        .delivers()
        .then(|| tokio::spawn(Dispatcher::new(store.clone(), sender, lease).run(stopped)));

    let lag = tokio::spawn(lag::watch(
        store.clone(),
        config.auto_disable_after_secs as i64 * 1000,
        stop_dispatcher.subscribe(),
    ));
    let jobs = tokio::spawn(
        jobs::Runner::new(store.clone(), clock::Clock::system()).run(stop_dispatcher.subscribe()),
    );

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
    let served = serve(listener, app, limits, shutdown).await;
    // Order matters: no new requests, then no new attempts (those in flight finish and are
    // recorded), then the writer commits what is queued.
    let _ = stop_dispatcher.send(true);
    if let Some(dispatcher) = dispatcher {
        let _ = dispatcher.await;
    }
    let _ = purger.await;
    let _ = jobs.await;
    let _ = lag.await;
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
        // A stop waits for no purge (DESIGN §15): the pass is dropped between its batches (the
        // batch already queued still runs, in the writer's turn, and commits or not as a whole).
        let passed = tokio::select! {
            passed = store.purge(cutoff) => passed,
            _ = stop.changed() => return,
        };
        match passed {
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

/// Shortest admin key accepted: it opens everything.
pub const MIN_ADMIN_KEY_LEN: usize = 32;

/// The admin key: configured, else the one saved in the data dir, else a new one — saved with
/// mode 0600 and printed once. A key shorter than [`MIN_ADMIN_KEY_LEN`] stops the start.
fn admin_key(config: &Config) -> anyhow::Result<String> {
    let short = |key: &str, from: &str| {
        anyhow::anyhow!(
            "the admin key ({from}) has {} characters, fewer than {MIN_ADMIN_KEY_LEN}: set \
             SWITCHBOARD_ADMIN_KEY to a longer one, e.g. sb_admin_$(openssl rand -hex 32), or \
             delete {} and unset it to have one generated",
            key.chars().count(),
            config.admin_key_path().display()
        )
    };
    if !config.admin_key.is_empty() {
        if config.admin_key.chars().count() < MIN_ADMIN_KEY_LEN {
            return Err(short(
                &config.admin_key,
                "admin_key or SWITCHBOARD_ADMIN_KEY",
            ));
        }
        return Ok(config.admin_key.clone());
    }
    let path = config.admin_key_path();
    match std::fs::read_to_string(&path) {
        Ok(key) if key.trim().chars().count() < MIN_ADMIN_KEY_LEN && !key.trim().is_empty() => {
            return Err(short(key.trim(), &path.display().to_string()));
        }
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

/// What the file-descriptor limit allows connections and streams (DESIGN §23): connections at
/// most half of it, so that they cannot take the descriptors the database and the rest need;
/// streams (each holding a connection) by default a quarter, at most half of the connections,
/// so that with every stream open other requests still find a connection.
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_connections: usize,
    max_streams: u32,
    header_read_timeout: Duration,
}

impl Limits {
    fn of(config: &Config) -> Self {
        let half = (open_files_limit() / 2).max(2);
        let connections = match u64::from(config.max_connections) {
            0 => half,
            n => n.min(half),
        };
        let streams = match u64::from(config.max_streams) {
            0 => connections / 2,
            n => n.min(connections / 2),
        };
        Limits {
            max_connections: connections as usize,
            max_streams: streams.clamp(1, u64::from(u32::MAX)) as u32,
            header_read_timeout: Duration::from_secs(config.header_read_timeout_secs),
        }
    }
}

/// The process's soft limit on open files (`RLIMIT_NOFILE`), from `/proc/self/limits`; 1024
/// (the usual default) where that cannot be read.
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("Max open files"))?;
            let soft = line["Max open files".len()..].split_whitespace().next()?;
            soft.parse().ok()
        })
        .unwrap_or(1024)
}

/// Serves `app` on `listener` until `shutdown`, with hyper's own connection handling: a request
/// whose headers take longer than the header read timeout is closed, and at most
/// `max_connections` are served at once — the next ones wait in the listen queue, those served
/// are not harmed. At shutdown: no new connections, requests in flight finish, idle
/// connections close.
async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: wait for some to be given back.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
