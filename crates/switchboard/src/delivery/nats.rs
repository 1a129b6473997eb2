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

use serde::Deserialize;
use tokio::sync::Mutex;

use super::attempt::{Answer, Destination, Message, Sending};
use super::guard::Guard;
use crate::subscription::destination::{Template, Values, broker_url};

/// How long a publish waits for its PubAck, and a connection for the broker.
const TIMEOUT: Duration = Duration::from_secs(5);

pub struct Nats {
    guard: Arc<Guard>,
    url: String,
    subject: Result<Template, String>,
    tenant: String,
    /// The subscription's own headers and `switchboard-subscription`, on every message.
    fixed: Vec<(String, String)>,
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
        let mut fixed: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        fixed.push(("switchboard-subscription".into(), id.into()));
        Nats {
            guard,
            url: url.to_owned(),
            subject: Template::parse(subject),
            tenant: tenant.to_owned(),
            fixed,
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
        let (host, port) = broker_url(&self.url, "nats")?;
        let addr = resolve_guarded(&self.guard, &host, port, "nats").await?;
        let parsed = reqwest::Url::parse(&self.url).map_err(|e| e.to_string())?;
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
        let subject = self.subject.as_ref().map_err(Clone::clone)?;
        let keys = Keys::of(&message.body);
        let subject = subject.fill(&Values {
            tenant: &self.tenant,
            category: keys.category,
            code: keys.code,
            agent: keys.agent(),
        });
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in &self.fixed {
            headers.insert(name.as_str(), value.as_str());
        }
        let mut webhook_id = "";
        for (name, value) in &message.headers {
            if *name == "webhook-id" {
                webhook_id = value;
            }
            headers.insert(*name, value.as_str());
        }
        if let Some(agent) = keys.agent() {
            headers.insert("switchboard-agent", agent);
        }
        headers.insert("content-type", "application/json");
        headers.insert("Nats-Msg-Id", format!("{}:{webhook_id}", self.id));
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

/// A broker's address: `host` (an IP literal, or a name resolved now) at `port`, each of its
/// addresses allowed by the guard; the first is the one to dial.
pub(super) async fn resolve_guarded(
    guard: &Guard,
    host: &str,
    port: u16,
    kind: &str,
) -> Result<std::net::SocketAddr, String> {
    let addrs: Vec<std::net::SocketAddr> = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![(ip, port).into()],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("resolving {host}: {e}"))?
            .collect(),
    };
    // Every address the name has must be allowed: the client dials the first.
    for a in &addrs {
        guard
            .check(a.ip())
            .map_err(|why| format!("{kind} broker {host}: {why}"))?;
    }
    addrs
        .first()
        .copied()
        .ok_or_else(|| format!("{host} did not resolve"))
}

/// What of an event a template needs.
#[derive(Deserialize, Default)]
pub(super) struct Keys {
    #[serde(rename = "Category", default)]
    pub(super) category: u8,
    #[serde(rename = "Code", default)]
    pub(super) code: u32,
    #[serde(rename = "AdditionalFields", default)]
    fields: Fields,
}

#[derive(Deserialize, Default)]
struct Fields {
    #[serde(rename = "Username", default)]
    username: Option<String>,
    #[serde(rename = "SessionId", default)]
    session: Option<String>,
}

impl Keys {
    /// The event's (a System event's is not an agent's: none).
    pub(super) fn of(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }

    pub(super) fn agent(&self) -> Option<&str> {
        self.fields
            .username
            .as_deref()
            .or(self.fields.session.as_deref())
            .filter(|a| !a.is_empty())
    }
}

/// A URL's user or password as written (`%40` is `@`).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}
