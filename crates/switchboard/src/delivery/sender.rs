//! The one outbound HTTP client, and the HTTP destination that goes through it.
//!
//! An HTTP attempt is three steps, as svix-server splits a dispatch: [`Http::prepare`] builds
//! the request (refusing a guarded address before anything is sent), the guarded client calls,
//! and [`read_answer`] reads at most [`RESPONSE_BODY_LIMIT`] bytes of the answer into an
//! [`Answer`].

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::{
    AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT,
};

use super::amqp::Amqp;
use super::attempt::{Answer, Destination, Message, Sending, Target};
use super::guard::{Guard, GuardedResolver};
use super::nats::Nats;
use super::retry;
use crate::clock::Clock;
use crate::redact::{HashKey, Redactor};
use crate::store::SubscriptionRecord;
use crate::subscription::auth::Auth;
use crate::subscription::destination::Destination as SpecDestination;

/// How much of a receiver's answer is kept in the attempt log.
pub const RESPONSE_BODY_LIMIT: usize = 4096;

pub const USER_AGENT_VALUE: &str = concat!("Switchboard/", env!("CARGO_PKG_VERSION"));

/// The one outbound HTTP client: pooled keep-alive connections, rustls, a timeout, no
/// redirects, no proxy from the environment, and the address guard on every resolved address.
/// It makes each subscription's [`Target`].
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    guard: Arc<Guard>,
    timeout: Duration,
    /// The egress proxy every request goes through (DESIGN §20), if any.
    proxy: Option<reqwest::Proxy>,
    /// What outlives a subscription's target, rebuilt whenever subscriptions are re-read.
    kept: Arc<std::sync::Mutex<Kept>>,
    /// Stamps attempts (and so their retries' due times); the dispatcher's clock too.
    clock: Clock,
    /// The instance's key for `redact: hash` (DESIGN §19): the stored one in the server.
    hash_key: Arc<HashKey>,
}

impl Sender {
    pub fn new(guard: Guard, timeout: Duration) -> anyhow::Result<Self> {
        let guard = Arc::new(guard);
        let client = client_builder(&guard, timeout, None).build()?;
        Ok(Sender {
            client,
            guard,
            timeout,
            proxy: None,
            kept: Arc::default(),
            clock: Clock::system(),
            hash_key: Arc::new(HashKey::random()),
        })
    }

    /// The same, hashing redacted fields with `key` (the instance's stored key).
    pub fn with_hash_key(self, key: HashKey) -> Self {
        Sender {
            hash_key: Arc::new(key),
            ..self
        }
    }

    /// What changes the bodies `sub` is sent, if it redacts anything.
    pub fn redactor(&self, sub: &SubscriptionRecord) -> Option<Redactor> {
        Redactor::new(&sub.spec.redact, &self.hash_key, &sub.tenant_id)
    }

    /// The same, with every request through the HTTP proxy at `url` (`http://host:port`). Its
    /// address passes the guard too: an IP literal here, a host name when it is resolved.
    pub fn with_proxy(self, url: &str) -> anyhow::Result<Self> {
        let parsed = reqwest::Url::parse(url)?;
        (self.guard)
            .check_literal(parsed.host_str().unwrap_or_default())
            .map_err(|why| anyhow::anyhow!("egress_proxy: {why}"))?;
        let proxy = reqwest::Proxy::all(url)?;
        let client = client_builder(&self.guard, self.timeout, Some(&proxy)).build()?;
        Ok(Sender {
            client,
            proxy: Some(proxy),
            ..self
        })
    }

    /// The same client, with attempts stamped by `clock` (tests move it by hand).
    pub fn with_clock(self, clock: Clock) -> Self {
        Sender { clock, ..self }
    }

    /// Forgets what it keeps for subscriptions `live` says are gone.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        let mut kept = self.kept.lock().expect("kept");
        kept.tokens.retain(|id, _| live(id));
        kept.tls.retain(|id, _| live(id));
    }

    /// What attempts are stamped with.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// `sub` made ready to send to.
    pub fn target(&self, sub: SubscriptionRecord) -> Target {
        let destination: Box<dyn Destination> = match &sub.spec.destination {
            Some(SpecDestination::Nats { url, subject }) => Box::new(Nats::new(
                self.guard.clone(),
                url,
                subject,
                &sub.tenant_id,
                &sub.id,
                &sub.spec.headers,
            )),
            Some(SpecDestination::Amqp {
                url,
                exchange,
                routing_key,
            }) => Box::new(Amqp::new(
                self.guard.clone(),
                url,
                exchange,
                routing_key,
                &sub.tenant_id,
                &sub.id,
                &sub.spec.headers,
            )),
            _ => Box::new(Http::new(self, &sub)),
        };
        let redactor = self.redactor(&sub);
        Target::new(sub, destination, redactor)
    }

    /// The address guard every destination's addresses pass.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }
}

/// Per subscription, what is kept across the rebuilds of its target while the settings it was
/// made from are unchanged: its OAuth 2 token source (and so the cached token), and its own
/// client for `tls` (and so its connections).
#[derive(Default)]
struct Kept {
    tokens: std::collections::HashMap<String, Arc<super::oauth::Tokens>>,
    tls: std::collections::HashMap<
        String,
        (
            crate::subscription::tls::Tls,
            Result<reqwest::Client, String>,
        ),
    >,
}

/// How every client of the sender is built: a timeout, no redirects, no proxy from the
/// environment, and the address guard on every resolved address.
fn client_builder(
    guard: &Arc<Guard>,
    timeout: Duration,
    proxy: Option<&reqwest::Proxy>,
) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .use_rustls_tls()
        .user_agent(USER_AGENT_VALUE)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        // HTTP(S)_PROXY in the environment would send receivers' hostnames to a proxy
        // unchecked, past the guard: ignored (an egress proxy is configured explicitly).
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(90))
        .dns_resolver(Arc::new(GuardedResolver(guard.clone())));
    match proxy {
        Some(p) => builder.proxy(p.clone()),
        None => builder,
    }
}

/// A client of its own for a subscription with `tls`: its client certificate, and its CA as
/// the only trust anchor when it names one.
fn tls_client(
    sender: &Sender,
    tls: &crate::subscription::tls::Tls,
) -> Result<reqwest::Client, String> {
    let mut builder = client_builder(&sender.guard, sender.timeout, sender.proxy.as_ref());
    if let Some(identity) = tls.identity() {
        builder = builder.identity(identity.map_err(|e| format!("tls.client_key_pem: {e}"))?);
    }
    if let Some(roots) = tls.roots() {
        builder = builder.tls_built_in_root_certs(false);
        for root in roots.map_err(|e| format!("tls.ca_pem: {e}"))? {
            builder = builder.add_root_certificate(root);
        }
    }
    builder
        .build()
        .map_err(|e| format!("tls: {}", error_chain(&e)))
}

/// An HTTP receiver: its URL parsed and its fixed headers built, once per change of its
/// subscription.
pub struct Http {
    /// The sender's, or one of its own (`tls`); why none could be built.
    client: Result<reqwest::Client, String>,
    guard: Arc<Guard>,
    url: Result<reqwest::Url, String>,
    headers: HeaderMap,
    /// OAuth 2 client credentials: the subscription's token source.
    tokens: Option<Arc<super::oauth::Tokens>>,
    /// Requests go through the egress proxy: the receiver's host is checked first.
    proxied: bool,
    /// The whole attempt — the address check, a token, the request — ends within this.
    timeout: Duration,
}

impl Http {
    fn new(sender: &Sender, sub: &SubscriptionRecord) -> Self {
        let url = reqwest::Url::parse(&sub.spec.url).map_err(|e| format!("invalid url: {e}"));
        let mut headers = HeaderMap::new();
        for (name, value) in &sub.spec.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(n, v);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&sub.id) {
            headers.insert(HeaderName::from_static("switchboard-subscription"), v);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        let fixed = match &sub.spec.auth {
            Some(Auth::Basic { username, password }) => {
                let pair = STANDARD.encode(format!("{username}:{password}"));
                HeaderValue::from_str(&format!("Basic {pair}")).ok()
            }
            Some(Auth::Bearer { token }) => HeaderValue::from_str(&format!("Bearer {token}")).ok(),
            _ => None,
        };
        if let Some(mut v) = fixed {
            // Kept out of reqwest's and hyper's debug output.
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let mut kept = sender.kept.lock().expect("kept");
        let tokens = match &sub.spec.auth {
            Some(auth @ Auth::Oauth2 { .. }) => {
                let same = kept
                    .tokens
                    .get(&sub.id)
                    .filter(|t| t.auth == *auth)
                    .cloned();
                same.or_else(|| {
                    let made = super::oauth::Tokens::new(
                        sender.client.clone(),
                        sender.guard.clone(),
                        sender.clock.clone(),
                        sender.proxy.is_some(),
                        auth,
                    )
                    .map(Arc::new)?;
                    kept.tokens.insert(sub.id.clone(), made.clone());
                    Some(made)
                })
            }
            _ => {
                kept.tokens.remove(&sub.id);
                None
            }
        };
        let client = match &sub.spec.tls {
            Some(tls) => match kept.tls.get(&sub.id).filter(|(t, _)| t == tls) {
                Some((_, client)) => client.clone(),
                None => {
                    let client = tls_client(sender, tls);
                    kept.tls
                        .insert(sub.id.clone(), (tls.clone(), client.clone()));
                    client
                }
            },
            None => {
                kept.tls.remove(&sub.id);
                Ok(sender.client.clone())
            }
        };
        drop(kept);
        Http {
            client,
            guard: sender.guard.clone(),
            url,
            headers,
            tokens,
            proxied: sender.proxy.is_some(),
            timeout: sender.timeout,
        }
    }

    /// The request for `message`, or why none may be sent. Hostnames are checked by the
    /// resolver when the client connects; IP literals are not resolved, so they are checked here.
    fn prepare(&self, message: &Message) -> Result<reqwest::RequestBuilder, String> {
        let url = self.url.clone()?;
        self.guard
            .check_literal(url.host_str().unwrap_or_default())?;
        let mut headers = self.headers.clone();
        for (name, value) in &message.headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
        Ok(self
            .client
            .as_ref()
            .map_err(Clone::clone)?
            .post(url)
            .headers(headers)
            .body(message.body.clone()))
    }
}

impl Destination for Http {
    fn send<'a>(&'a self, message: &'a Message) -> Sending<'a> {
        Box::pin(async move {
            let mut request = match self.prepare(message) {
                Ok(r) => r,
                Err(why) => return Answer::failed(why),
            };
            // One deadline for all of it, so that no attempt outlives its lease (the
            // dispatcher starts one only with more than the timeout left).
            let deadline = tokio::time::Instant::now() + self.timeout;
            let late = || format!("no answer within {} s", self.timeout.as_secs());
            if self.proxied
                && let Ok(url) = &self.url
            {
                let host = url.host_str().unwrap_or_default();
                let port = url.port_or_known_default().unwrap_or(0);
                let checked = tokio::time::timeout_at(deadline, self.guard.check_host(host, port));
                match checked.await {
                    Ok(Ok(())) => {}
                    // The proxy would resolve the name itself, past the guard: not asked.
                    Ok(Err(why)) => return Answer::failed(why),
                    Err(_) => return Answer::failed(format!("resolving {host}: {}", late())),
                }
            }
            let token = match &self.tokens {
                None => None,
                Some(tokens) => match tokio::time::timeout_at(deadline, tokens.get()).await {
                    Ok(Ok(t)) => Some(t),
                    Ok(Err(why)) => return Answer::failed(why),
                    Err(_) => return Answer::failed(format!("OAuth 2 token endpoint: {}", late())),
                },
            };
            if let Some(t) = &token {
                request = request.header(AUTHORIZATION, t.header.clone());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            request = request.timeout(left.max(Duration::from_millis(1)));
            let mut answer = match request.send().await {
                Err(e) => Answer::failed(error_chain(&e)),
                Ok(response) => read_answer(response).await,
            };
            if let (Some(tokens), Some(t)) = (&self.tokens, &token) {
                // Refused (401): the token goes, and a new attempt is made at once with a new
                // one — once: not again if that one is refused too.
                answer.again_now = tokens.answered(t, answer.status);
            }
            // Errors name the URL; its query often carries a token. They go to the attempt
            // log, notices and logs without it.
            if let (Some(error), Ok(url)) = (&mut answer.error, &self.url) {
                *error = without_query(error, url);
            }
            answer
        })
    }
}

/// `text` with every mention of `url` shown without its query (nor fragment).
pub(super) fn without_query(text: &str, url: &reqwest::Url) -> String {
    if url.query().is_none() && url.fragment().is_none() {
        return text.to_string();
    }
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    text.replace(url.as_str(), shown.as_str())
}

/// A receiver's answer: its status, `Retry-After`, and the start of its body.
async fn read_answer(mut response: reqwest::Response) -> Answer {
    let status = response.status();
    let mut answer = Answer {
        status: Some(status.as_u16()),
        retry_after: response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(retry::parse_retry_after),
        ..Answer::default()
    };
    let mut kept = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = RESPONSE_BODY_LIMIT - kept.len();
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if kept.len() >= RESPONSE_BODY_LIMIT {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                answer.error = Some(format!("reading the response: {}", error_chain(&e)));
                break;
            }
        }
    }
    if !kept.is_empty() {
        answer.response_body = Some(String::from_utf8_lossy(&kept).into_owned());
    }
    if !status.is_success() && answer.error.is_none() {
        answer.error = Some(if status.is_redirection() {
            format!("HTTP {status}: redirects are not followed")
        } else {
            format!("HTTP {status}")
        });
    }
    answer
}

/// An error and its causes, "outer: inner: root".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = cause.source();
    }
    msg
}
