//! OAuth 2 client credentials for an HTTP receiver (DESIGN §20): one cached access token per
//! subscription, shared by all its attempts, got again 30 s before it expires, and dropped when
//! the receiver answers 401 with it.
//!
//! The token request goes through the same client as deliveries (the address guard on every
//! resolved address, no proxy from the environment), with HTTP Basic client authentication and
//! `grant_type=client_credentials` (RFC 6749 §4.4).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Mutex;

use super::guard::Guard;
use crate::clock::Clock;

/// A token is got again this long before it expires.
const EARLY: Duration = Duration::from_secs(30);
/// How long a token without `expires_in` is kept.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Most bytes of a token endpoint's answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// A subscription's token source.
pub struct Tokens {
    client: reqwest::Client,
    guard: Arc<Guard>,
    token_url: String,
    client_id: String,
    client_secret: String,
    scope: Option<String>,
    audience: Option<String>,
    /// The sender's clock: when a cached token stops being used.
    clock: Clock,
    /// Through the egress proxy: the token endpoint's host is checked first.
    proxied: bool,
    /// The cached token and when it stops being used (unix ms); the lock also makes
    /// concurrent attempts wait for one request rather than each making its own.
    cached: Mutex<Option<(String, i64)>>,
    /// The last token was got because the receiver refused the one before: refused too, it is
    /// not worth another attempt at once.
    after_refusal: AtomicBool,
}

/// A token for one attempt.
pub struct Token {
    pub value: String,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl Tokens {
    pub fn new(
        client: reqwest::Client,
        guard: Arc<Guard>,
        clock: Clock,
        proxied: bool,
        auth: &crate::subscription::auth::Auth,
    ) -> Option<Self> {
        let crate::subscription::auth::Auth::Oauth2 {
            token_url,
            client_id,
            client_secret,
            scope,
            audience,
        } = auth
        else {
            return None;
        };
        Some(Tokens {
            client,
            guard,
            token_url: token_url.clone(),
            client_id: client_id.clone(),
            client_secret: client_secret.clone(),
            scope: scope.clone(),
            audience: audience.clone(),
            clock,
            proxied,
            cached: Mutex::new(None),
            after_refusal: AtomicBool::new(false),
        })
    }

    /// The cached token, or a new one; the error names the token endpoint.
    pub async fn get(&self) -> Result<Token, String> {
        let mut cached = self.cached.lock().await;
        if let Some((value, until)) = cached.as_ref()
            && self.clock.now_ms() < *until
        {
            return Ok(Token {
                value: value.clone(),
            });
        }
        let (value, lifetime) = self.request().await.map_err(|why| {
            // Errors name the URL; its query may carry a secret.
            let why = match reqwest::Url::parse(&self.token_url) {
                Ok(u) => super::sender::without_query(&why, &u),
                Err(_) => why,
            };
            format!(
                "OAuth 2 token endpoint {}: {why}",
                without_query(&self.token_url)
            )
        })?;
        // A token that lives 30 s or less is used for this attempt only.
        *cached = lifetime
            .checked_sub(EARLY)
            .filter(|d| !d.is_zero())
            .map(|keep| (value.clone(), self.clock.now_ms() + keep.as_millis() as i64));
        Ok(Token { value })
    }

    /// The receiver answered `status` to a request with `token`. A 401 drops the token (if it
    /// is still the cached one) and says whether the delivery is worth another attempt at once,
    /// with a new token: yes, unless the token was itself got after a refusal.
    pub async fn answered(&self, token: &Token, status: Option<u16>) -> bool {
        if status != Some(401) {
            if status.is_some() {
                self.after_refusal.store(false, Ordering::Relaxed);
            }
            return false;
        }
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|(v, _)| *v == token.value) {
            *cached = None;
        }
        !self.after_refusal.swap(true, Ordering::Relaxed)
    }

    async fn request(&self) -> Result<(String, Duration), String> {
        let url = reqwest::Url::parse(&self.token_url).map_err(|e| format!("invalid url: {e}"))?;
        let literal = url.host_str().and_then(|h| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            h.parse::<std::net::IpAddr>().ok()
        });
        if let Some(ip) = literal {
            self.guard.check(ip)?;
        }
        if self.proxied {
            let port = url.port_or_known_default().unwrap_or(0);
            self.guard
                .check_host(url.host_str().unwrap_or_default(), port)
                .await?;
        }
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(s) = &self.scope {
            form.push(("scope", s));
        }
        if let Some(a) = &self.audience {
            form.push(("audience", a));
        }
        let response = self
            .client
            .post(url)
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| super::sender::error_chain(&e))?;
        let status = response.status();
        let mut body = Vec::new();
        let mut response = response;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| super::sender::error_chain(&e))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_ANSWER {
                return Err(format!("its answer is over {MAX_ANSWER} bytes"));
            }
        }
        if !status.is_success() {
            // The answer's start says why (RFC 6749 §5.2's `error`); never the request's secret.
            let said: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            return Err(format!("HTTP {status}: {said}"));
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| format!("its answer is not a token (access_token, expires_in): {e}"))?;
        if answer.access_token.is_empty() {
            return Err("its answer's access_token is empty".to_owned());
        }
        let lifetime = answer
            .expires_in
            .map_or(DEFAULT_LIFETIME, Duration::from_secs);
        Ok((answer.access_token, lifetime))
    }
}

/// `url` without its query and fragment (which may carry a secret).
fn without_query(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => url.split(['?', '#']).next().unwrap_or_default().to_owned(),
    }
}
