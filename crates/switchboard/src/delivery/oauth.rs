//! OAuth 2 client credentials for an HTTP receiver (DESIGN §20): one cached access token per
//! subscription, shared by all its attempts, got again 30 s before it expires, and dropped when
//! the receiver answers 401 with it.
//!
//! The token request goes through the same client as deliveries (the address guard on every
//! resolved address, the egress proxy, no proxy from the environment), with HTTP Basic client
//! authentication (RFC 6749 §2.3.1: id and secret form-encoded first) and
//! `grant_type=client_credentials` (§4.4). A subscription's `Tokens` outlive the rebuilds of its
//! target (the sender keeps them while its `auth` is unchanged), so the cache does too.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::HeaderValue;
use serde::Deserialize;

use super::guard::Guard;
use crate::clock::Clock;
use crate::subscription::auth::Auth;

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
    /// The credentials it was made for: the sender reuses it while they are the same.
    pub auth: Auth,
    /// The sender's clock: when a cached token stops being used.
    clock: Clock,
    /// Through the egress proxy: the token endpoint's host is checked first.
    proxied: bool,
    /// The cached token and until when (unix ms): read without waiting by every attempt.
    cached: Mutex<Option<(Token, i64)>>,
    /// Held while a token is requested, so that concurrent attempts wait for one request
    /// rather than each making its own; holds the last failure and when (unix ms), which the
    /// attempts that waited share rather than each asking again.
    fetching: tokio::sync::Mutex<Option<(String, i64)>>,
    /// How many tokens were got: each token's number tells the latest from one already
    /// replaced.
    generation: AtomicU64,
    /// The receiver refused the latest token, and no token has been accepted since: a token
    /// got meanwhile and refused too is not worth another attempt at once.
    refusing: AtomicBool,
}

/// A token for one attempt.
#[derive(Clone)]
pub struct Token {
    /// Its `Authorization` header (sensitive).
    pub header: HeaderValue,
    generation: u64,
    /// Got while the receiver was refusing tokens.
    while_refusing: bool,
}

/// A failed token request is shared by the attempts waiting on it for this long (ms).
const FAILURE_SHARED_MS: i64 = 1000;
/// The longest a token is kept, whatever its `expires_in`.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    /// A number, or (older Azure AD, ADFS) a numeric string.
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

/// `expires_in` as seconds: a non-negative number or a string of one; anything else: absent.
fn seconds(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => {
            n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64))
        }
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl Tokens {
    pub fn new(
        client: reqwest::Client,
        guard: Arc<Guard>,
        clock: Clock,
        proxied: bool,
        auth: &Auth,
    ) -> Option<Self> {
        matches!(auth, Auth::Oauth2 { .. }).then(|| Tokens {
            client,
            guard,
            auth: auth.clone(),
            clock,
            proxied,
            cached: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
        })
    }

    fn cached(&self) -> Option<Token> {
        let cached = self.cached.lock().expect("token cache");
        let (token, until) = cached.as_ref()?;
        (self.clock.now_ms() < *until).then(|| token.clone())
    }

    /// The cached token, or a new one; the error names the token endpoint.
    pub async fn get(&self) -> Result<Token, String> {
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        let mut last_failure = self.fetching.lock().await;
        // Got, or failed to get, by the attempt this one waited for?
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        let now = self.clock.now_ms();
        if let Some((why, at)) = last_failure.as_ref()
            && now.saturating_sub(*at) < FAILURE_SHARED_MS
        {
            return Err(why.clone());
        }
        let Auth::Oauth2 { token_url, .. } = &self.auth else {
            return Err("not OAuth 2".into());
        };
        let got = self.request().await.map_err(|why| {
            // Errors name the URL; its query may carry a secret.
            let why = match reqwest::Url::parse(token_url) {
                Ok(u) => super::sender::without_query(&why, &u),
                Err(_) => why,
            };
            format!("OAuth 2 token endpoint {}: {why}", without_query(token_url))
        });
        let (value, lifetime) = match got {
            Ok(v) => v,
            Err(why) => {
                *last_failure = Some((why.clone(), self.clock.now_ms()));
                return Err(why);
            }
        };
        *last_failure = None;
        let mut header = HeaderValue::from_str(&format!("Bearer {value}"))
            .map_err(|_| "OAuth 2 token endpoint: its access_token is not a header value")?;
        header.set_sensitive(true);
        let token = Token {
            header,
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            while_refusing: self.refusing.load(Ordering::Relaxed),
        };
        // A token that lives 30 s or less is used for this attempt only.
        let keep = lifetime.min(MAX_LIFETIME).checked_sub(EARLY);
        *self.cached.lock().expect("token cache") = keep.filter(|d| !d.is_zero()).map(|keep| {
            (
                token.clone(),
                self.clock.now_ms().saturating_add(keep.as_millis() as i64),
            )
        });
        Ok(token)
    }

    /// The receiver answered `status` to a request with `token`. A 401 drops the token (if it
    /// is still the cached one) and says whether the delivery is worth another attempt at once,
    /// with a new token: yes for every delivery refused with a token since replaced, or with
    /// the latest token — unless that one was got while the receiver was already refusing
    /// tokens (then the retry schedule applies, until a token is accepted again).
    pub fn answered(&self, token: &Token, status: Option<u16>) -> bool {
        match status {
            Some(401) => {}
            Some(s) if (200..300).contains(&s) => {
                self.refusing.store(false, Ordering::Relaxed);
                return false;
            }
            _ => return false,
        }
        if token.generation < self.generation.load(Ordering::Relaxed) {
            // Already replaced: the next attempt gets the newer one.
            return true;
        }
        {
            let mut cached = self.cached.lock().expect("token cache");
            if cached
                .as_ref()
                .is_some_and(|(t, _)| t.generation == token.generation)
            {
                *cached = None;
            }
        }
        if token.while_refusing && self.refusing.load(Ordering::Relaxed) {
            return false;
        }
        self.refusing.store(true, Ordering::Relaxed);
        true
    }

    async fn request(&self) -> Result<(String, Duration), String> {
        let Auth::Oauth2 {
            token_url,
            client_id,
            client_secret,
            scope,
            audience,
        } = &self.auth
        else {
            return Err("not OAuth 2".into());
        };
        let url = reqwest::Url::parse(token_url).map_err(|e| format!("invalid url: {e}"))?;
        self.guard
            .check_literal(url.host_str().unwrap_or_default())?;
        if self.proxied {
            let port = url.port_or_known_default().unwrap_or(0);
            self.guard
                .check_host(url.host_str().unwrap_or_default(), port)
                .await?;
        }
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        if let Some(a) = audience {
            form.push(("audience", a));
        }
        // RFC 6749 §2.3.1: the id and the secret are form-encoded, then joined for Basic.
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let response = self
            .client
            .post(url)
            .basic_auth(encode(client_id), Some(encode(client_secret)))
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
        let lifetime = (answer.expires_in.as_ref())
            .and_then(seconds)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expires_in_is_a_number_or_a_numeric_string() {
        assert_eq!(seconds(&json!(3599)), Some(3599));
        assert_eq!(seconds(&json!("3599")), Some(3599));
        assert_eq!(seconds(&json!(1.5)), Some(1));
        assert_eq!(seconds(&json!("soon")), None);
        assert_eq!(seconds(&json!(-5)), Some(0));
    }
}
