//! `switchboard listen`: a local webhook receiver that verifies signatures and prints each
//! delivery — for trying Switchboard out and for debugging an integration.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tokio::net::TcpListener;

use crate::delivery::signing::{self, Secret};

/// Serves on `addr` until `shutdown`; with `secret`, answers 401 to a bad signature.
pub async fn run(
    addr: SocketAddr,
    secret: Option<Secret>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!(
        "listening for webhooks on http://{}/",
        listener.local_addr()?
    );
    let app = Router::new()
        .route("/", post(receive))
        .route("/{*path}", post(receive))
        .with_state(Arc::new(secret));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn receive(
    State(secret): State<Arc<Option<Secret>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let id = h("webhook-id");
    let verdict = match (secret.as_ref(), h("webhook-timestamp").parse::<i64>()) {
        (None, _) => "unverified",
        (Some(_), Err(_)) => "BAD (no timestamp)",
        (Some(s), Ok(ts)) if signing::verify(s, h("webhook-signature"), id, ts, &body) => {
            "verified"
        }
        (Some(_), Ok(_)) => "BAD SIGNATURE",
    };
    println!(
        "{id} sequence={} attempt={} signature {verdict}\n  {}",
        h("switchboard-sequence"),
        h("switchboard-attempt"),
        String::from_utf8_lossy(&body)
    );
    if verdict.starts_with("BAD") {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::NO_CONTENT
    }
}
