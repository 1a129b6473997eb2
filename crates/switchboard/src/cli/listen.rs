//! `switchboard listen`: a local webhook receiver that verifies signatures and prints each
//! delivery — for trying Switchboard out and for debugging an integration. With `--forward
//! URL` it also hands each verified delivery (body and headers as received) to a local app and
//! answers with the app's answer, like `stripe listen --forward-to`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::net::TcpListener;

use crate::delivery::signing::{TIMESTAMP_TOLERANCE_SECS, Verifier};

/// What the receiver does with a delivery.
struct Listener {
    secret: Option<Verifier>,
    /// The local app deliveries are forwarded to.
    forward: Option<reqwest::Url>,
    client: reqwest::Client,
}

/// Serves on `addr` until `shutdown`; with `secret`, answers 401 to a bad signature; with
/// `forward`, answers with what that app answers.
pub async fn run(
    addr: SocketAddr,
    secret: Option<Verifier>,
    forward: Option<reqwest::Url>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    serve(listener, secret, forward, shutdown).await
}

/// [`run`] on a bound listener.
pub async fn serve(
    listener: TcpListener,
    secret: Option<Verifier>,
    forward: Option<reqwest::Url>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let to = forward
        .as_ref()
        .map_or(String::new(), |u| format!(", forwarding to {u}"));
    println!(
        "listening for webhooks on http://{}/{to}",
        listener.local_addr()?
    );
    let state = Listener {
        secret,
        forward,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
    };
    let app = Router::new()
        .route("/", post(receive))
        .route("/{*path}", post(receive))
        .with_state(Arc::new(state));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// The headers a forwarded delivery keeps.
const FORWARDED: [&str; 7] = [
    "content-type",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "switchboard-sequence",
    "switchboard-attempt",
    "switchboard-subscription",
];

async fn receive(
    State(listener): State<Arc<Listener>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let id = h("webhook-id");
    let now = crate::clock::now_millis() / 1000;
    let verdict = match (
        listener.secret.as_ref(),
        h("webhook-timestamp").parse::<i64>(),
    ) {
        (None, _) => "unverified",
        (Some(_), Err(_)) => "BAD (no timestamp)",
        (Some(_), Ok(ts)) if ts < now - TIMESTAMP_TOLERANCE_SECS => "BAD (timestamp too old)",
        (Some(_), Ok(ts)) if ts > now + TIMESTAMP_TOLERANCE_SECS => "BAD (timestamp in the future)",
        (Some(v), Ok(ts)) if v.verify(h("webhook-signature"), id, ts, &body) => "verified",
        (Some(_), Ok(_)) => "BAD SIGNATURE",
    };
    println!(
        "{id} sequence={} attempt={} signature {verdict}\n  {}",
        h("switchboard-sequence"),
        h("switchboard-attempt"),
        String::from_utf8_lossy(&body)
    );
    if verdict.starts_with("BAD") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Some(url) = &listener.forward else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let mut request = listener.client.post(url.clone()).body(body);
    for name in FORWARDED {
        if let Some(v) = headers.get(name) {
            request = request.header(name, v);
        }
    }
    match request.send().await {
        Ok(r) => {
            let status = r.status();
            let retry_after = r.headers().get("retry-after").cloned();
            let answer = r.bytes().await.unwrap_or_default();
            println!("  → {url} answered {status}");
            let mut response = (status, answer).into_response();
            if let Some(v) = retry_after {
                response.headers_mut().insert("retry-after", v);
            }
            response
        }
        Err(e) => {
            println!("  → {url} did not answer: {e}");
            (StatusCode::BAD_GATEWAY, format!("forwarding to {url}: {e}")).into_response()
        }
    }
}
