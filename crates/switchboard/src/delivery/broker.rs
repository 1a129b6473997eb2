//! What the broker destinations (`nats.rs`, `amqp.rs`) share: the broker's address checked by
//! the guard before it is dialled, and each message's route (subject or routing key, the
//! template filled from the event) and headers (the subscription's own,
//! `switchboard-subscription`, the message's Standard Webhooks and `switchboard-*` values, and
//! `switchboard-agent`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Deserialize;

use super::attempt::Message;
use super::guard::Guard;
use crate::subscription::destination::{Template, Values, broker_url};

/// A broker destination's settings, fixed per change of its subscription.
pub(super) struct Broker {
    guard: Arc<Guard>,
    /// `scheme://…` as stored (credentials included).
    pub(super) url: String,
    scheme: &'static str,
    template: Result<Template, String>,
    tenant: String,
    /// The subscription's own headers and `switchboard-subscription`, on every message.
    fixed: Vec<(String, String)>,
}

/// One message made ready for a broker.
pub(super) struct Routed {
    /// The subject or routing key.
    pub(super) route: String,
    pub(super) headers: Vec<(String, String)>,
    pub(super) webhook_id: String,
}

impl Broker {
    pub(super) fn new(
        guard: Arc<Guard>,
        scheme: &'static str,
        url: &str,
        template: &str,
        tenant: &str,
        id: &str,
        headers: &BTreeMap<String, String>,
    ) -> Self {
        let mut fixed: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        fixed.push(("switchboard-subscription".into(), id.into()));
        Broker {
            guard,
            url: url.to_owned(),
            scheme,
            template: Template::parse(template),
            tenant: tenant.to_owned(),
            fixed,
        }
    }

    /// `message`'s route and headers.
    pub(super) fn route(&self, message: &Message) -> Result<Routed, String> {
        let template = self.template.as_ref().map_err(Clone::clone)?;
        let keys = Keys::of(&message.body);
        let route = template.fill(&Values {
            tenant: &self.tenant,
            category: keys.category,
            code: keys.code,
            agent: keys.agent(),
        });
        let mut headers = self.fixed.clone();
        let mut webhook_id = String::new();
        for (name, value) in &message.headers {
            if *name == "webhook-id" {
                webhook_id = value.clone();
            }
            headers.push(((*name).to_owned(), value.clone()));
        }
        if let Some(agent) = keys.agent() {
            headers.push(("switchboard-agent".into(), agent.to_owned()));
        }
        Ok(Routed {
            route,
            headers,
            webhook_id,
        })
    }

    /// The broker's host and port as written, and the address to dial: an IP literal, or a
    /// name resolved now; every address the name has must be allowed by the guard (the first
    /// is dialled).
    pub(super) async fn address(&self) -> Result<(String, u16, SocketAddr), String> {
        let (host, port) = broker_url(&self.url, self.scheme)?;
        let addrs = (self.guard.resolve_all(&host, port).await)
            .map_err(|why| format!("{} broker {host}: {why}", self.scheme))?;
        Ok((host, port, addrs[0]))
    }
}

/// What of an event a template needs.
#[derive(Deserialize, Default)]
struct Keys {
    #[serde(rename = "Category", default)]
    category: u8,
    #[serde(rename = "Code", default)]
    code: u32,
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
    fn of(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }

    fn agent(&self) -> Option<&str> {
        self.fields
            .username
            .as_deref()
            .or(self.fields.session.as_deref())
            .filter(|a| !a.is_empty())
    }
}
