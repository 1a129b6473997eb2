//! Switchboard: a webhooks service for contact centers. It takes events in over HTTP, stores
//! them durably, and (soon) delivers them to every subscribed application.
//!
//! # Layout
//!
//! - [`event`]: the wire event, its validation and canonical form (pure logic, no I/O).
//! - [`store`]: durable state; the only module with SQL. Ingest goes through one group-committing
//!   writer.
//! - [`api`]: the HTTP API, one file per resource, errors as problem+json.
//! - [`auth`]: API keys and scopes.
//! - [`config`], [`telemetry`]: start-up concerns.
//!
//! [`run`] serves the API on a bound listener until a shutdown future resolves; `main.rs` only
//! parses flags and hands over.

pub mod api;
pub mod auth;
pub mod config;
pub mod event;
pub mod store;
pub mod telemetry;

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::event::Catalog;
use crate::store::Store;

/// Runs the service on `listener` until `shutdown` resolves, then drains in-flight requests,
/// commits what is queued and closes the database.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let admin_key = admin_key(&config)?;
    let db = config.sqlite_path();
    let store = Store::open(&db)
        .await
        .with_context(|| format!("opening database {}", db.display()))?;
    let state = api::AppState {
        store: store.clone(),
        catalog: Arc::new(Catalog::builtin()),
        admin_key_hash: auth::hash_key(&admin_key).into(),
        max_body_bytes: config.max_body_bytes,
    };
    tracing::info!(addr = %listener.local_addr()?, db = %db.display(), "serving");
    let served = axum::serve(listener, api::app(state))
        .with_graceful_shutdown(shutdown)
        .await;
    store.close().await;
    tracing::info!("stopped");
    served.context("serving HTTP")
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
