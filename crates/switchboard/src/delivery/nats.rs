//! The NATS JetStream destination (DESIGN §17): each message published to the subscription's
//! subject template with the Standard Webhooks and `switchboard-*` values as NATS headers, and
//! `Nats-Msg-Id` = `<subscription id>:<webhook-id>`, so JetStream's duplicate window drops a
//! second publish of the same delivery (a crash between publish and record) and never another
//! subscription's copy. Success is the stream's PubAck (a duplicate's too).
//!
//! One connection per destination, made at its first attempt and reused; the client reconnects
//! by itself (with backoff) when the broker goes away, and an attempt meanwhile fails and is
//! retried on the subscription's schedule. The broker's address passes the address guard: an
//! IP literal at creation and here, a host name when it is resolved, here, before connecting.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use super::attempt::{Answer, Destination, Message, Sending};
use super::broker::Broker;
use super::guard::Guard;

/// How long a publish waits for its PubAck, and a connection for the broker.
const TIMEOUT: Duration = Duration::from_secs(5);

pub struct Nats {
    broker: Broker,
    id: String,
    conn: Mutex<Option<async_nats::jetstream::Context>>,
}

impl Nats {
    pub fn new(
        guard: Arc<Guard>,
        url: &str,
        subject: &str,
        tenant: &str,
        id: &str,
        headers: &std::collections::BTreeMap<String, String>,
    ) -> Self {
        Nats {
            broker: Broker::new(guard, "nats", url, subject, tenant, id, headers),
            id: id.to_owned(),
            conn: Mutex::new(None),
        }
    }

    /// The connection, made when there is none: the address checked by the guard first.
    async fn context(&self) -> Result<async_nats::jetstream::Context, String> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            return Ok(c.clone());
        }
        let (host, port, addr) = self.broker.address().await?;
        let parsed = reqwest::Url::parse(&self.broker.url).map_err(|e| e.to_string())?;
        let mut options = async_nats::ConnectOptions::new()
            .name("switchboard")
            .connection_timeout(TIMEOUT)
            .ignore_discovered_servers();
        if !parsed.username().is_empty() {
            options = options.user_and_password(
                percent_decode(parsed.username()),
                percent_decode(parsed.password().unwrap_or("")),
            );
        }
        let server = format!("nats://{addr}");
        let client = options
            .connect(server.as_str())
            .await
            .map_err(|e| format!("connecting to nats://{host}:{port}: {e}"))?;
        let mut js = async_nats::jetstream::new(client);
        js.set_timeout(TIMEOUT);
        *conn = Some(js.clone());
        Ok(js)
    }

    async fn publish(&self, message: &Message) -> Result<(), String> {
        let routed = self.broker.route(message)?;
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in &routed.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        headers.insert("content-type", "application/json");
        headers.insert("Nats-Msg-Id", format!("{}:{}", self.id, routed.webhook_id));
        let subject = routed.route;
        let js = self.context().await?;
        let ack = js
            .publish_with_headers(subject.clone(), headers, message.body.clone())
            .await
            .map_err(|e| format!("publishing to {subject}: {e}"))?;
        ack.await
            .map_err(|e| format!("no PubAck from a stream for {subject}: {e}"))?;
        Ok(())
    }
}

impl Destination for Nats {
    fn send<'a>(&'a self, message: &'a Message) -> Sending<'a> {
        Box::pin(async move {
            match self.publish(message).await {
                Ok(()) => Answer::default(),
                Err(why) => Answer::failed(why),
            }
        })
    }
}

/// A URL's user or password as written (`%40` is `@`).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}
