//! Delivery: the dispatcher that turns due delivery rows into signed HTTP POSTs, and the one
//! guarded HTTP client they go through.
//!
//! The dispatcher loop: write back finished attempts → claim (lease) due deliveries for every
//! subscription, up to its `max_in_flight` slots again beyond those (a prefetch, so the next
//! attempts can start the moment a slot frees, without waiting for a database turn) → start
//! what the free slots and rate-limit tokens allow, each attempt a task → wait for a commit
//! (the store's wake-up), a finished attempt, or the next due time.
//! Nothing that matters lives only in memory: a claim is a lease in the database, and an
//! attempt's outcome changes the delivery row in the same transaction as its log entry.

pub mod guard;
pub mod retry;
pub mod signing;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT};
use tokio::sync::{mpsc, watch};

use crate::clock::{Backoff, Clock};
use crate::event::{Event, catalog};
use crate::store::{
    Claimed, NextState, Outcome, Recipients, Store, StoreError, SubscriptionRecord, SystemEvent,
};
use guard::{Guard, GuardedResolver};
use retry::Next;
use signing::Secret;

/// How much of a receiver's answer is kept in the attempt log.
const RESPONSE_BODY_LIMIT: usize = 4096;
/// Most deliveries claimed for one subscription in one step.
const MAX_CLAIM: u32 = 256;

pub const USER_AGENT_VALUE: &str = concat!("Switchboard/", env!("CARGO_PKG_VERSION"));

/// What one HTTP attempt gave.
#[derive(Clone, Debug, Default)]
pub struct AttemptResult {
    /// Unix ms.
    pub started_at: i64,
    pub duration_ms: i64,
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    pub error: Option<String>,
    pub response_body: Option<String>,
}

/// The one outbound HTTP client: pooled keep-alive connections, rustls, a timeout, no
/// redirects, and the address guard on every resolved address.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    guard: Arc<Guard>,
    /// Stamps attempts (and so their retries' due times); the dispatcher's clock too.
    clock: Clock,
}

impl Sender {
    pub fn new(guard: Guard, timeout: Duration) -> anyhow::Result<Self> {
        let guard = Arc::new(guard);
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT_VALUE)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .dns_resolver(Arc::new(GuardedResolver(guard.clone())))
            .build()?;
        Ok(Sender {
            client,
            guard,
            clock: Clock::system(),
        })
    }

    /// The same client, with attempts stamped by `clock` (tests move it by hand).
    pub fn with_clock(self, clock: Clock) -> Self {
        Sender { clock, ..self }
    }

    /// POSTs a claimed delivery's body to the target's endpoint, signed with its live secrets.
    pub async fn send(&self, target: &Target, c: &Claimed) -> AttemptResult {
        let (msg_id, body) = (c.event_id.as_str(), c.body.clone());
        let started = Instant::now();
        let started_at = self.clock.now_ms();
        let mut result = AttemptResult {
            started_at,
            ..AttemptResult::default()
        };
        let finish = |mut r: AttemptResult| {
            r.duration_ms = started.elapsed().as_millis() as i64;
            r
        };
        let url = match &target.url {
            Ok(u) => u.clone(),
            Err(e) => {
                result.error = Some(e.clone());
                return finish(result);
            }
        };
        // IP-literal hosts are not resolved, so the resolver's check does not see them.
        let literal = url.host_str().and_then(|h| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            h.parse::<std::net::IpAddr>().ok()
        });
        if let Some(ip) = literal
            && let Err(why) = self.guard.check(ip)
        {
            result.error = Some(why);
            return finish(result);
        }

        let timestamp = started_at / 1000;
        let mut headers = target.headers.clone();
        let signature =
            signing::signature_header(target.live_secrets(started_at), msg_id, timestamp, &body);
        let fixed = [
            ("webhook-id", msg_id.to_string()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
            ("switchboard-sequence", c.sequence.to_string()),
            ("switchboard-attempt", c.attempt.to_string()),
        ];
        for (name, value) in fixed {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
        if c.superseded > 0 {
            headers.insert(
                HeaderName::from_static("switchboard-superseded"),
                HeaderValue::from(c.superseded),
            );
        }

        match self
            .client
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await
        {
            Err(e) => result.error = Some(error_chain(&e)),
            Ok(mut response) => {
                let status = response.status();
                result.status = Some(status.as_u16());
                result.retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(retry::parse_retry_after);
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
                            result.error =
                                Some(format!("reading the response: {}", error_chain(&e)));
                            break;
                        }
                    }
                }
                if !kept.is_empty() {
                    result.response_body = Some(String::from_utf8_lossy(&kept).into_owned());
                }
                if !status.is_success() && result.error.is_none() {
                    result.error = Some(if status.is_redirection() {
                        format!("HTTP {status}: redirects are not followed")
                    } else {
                        format!("HTTP {status}")
                    });
                }
            }
        }
        finish(result)
    }
}

/// A subscription made ready to send to, once per change of it rather than per attempt: its
/// URL parsed, its signing secrets decoded, its fixed headers built.
pub struct Target {
    pub sub: SubscriptionRecord,
    url: Result<reqwest::Url, String>,
    headers: HeaderMap,
    /// Each secret, with when it stops signing (unix ms; None: never).
    secrets: Vec<(Secret, Option<i64>)>,
}

impl Target {
    pub fn new(sub: SubscriptionRecord) -> Self {
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
        let current = sub.spec.secret.as_deref().map(|s| (s, None));
        let old = match (&sub.old_secret, sub.old_secret_expires_at) {
            (Some(s), Some(until)) => Some((s.as_str(), Some(until))),
            _ => None,
        };
        let secrets = current
            .into_iter()
            .chain(old)
            .filter_map(|(s, until)| Some((Secret::parse(s).ok()?, until)))
            .collect();
        Target {
            sub,
            url,
            headers,
            secrets,
        }
    }

    /// The secrets that sign at `now_ms`: the current one, and the previous one during its grace.
    pub fn live_secrets(&self, now_ms: i64) -> impl Iterator<Item = &Secret> {
        self.secrets
            .iter()
            .filter(move |(_, until)| until.is_none_or(|t| t > now_ms))
            .map(|(s, _)| s)
    }
}

/// An error and its causes, "outer: inner: root".
fn error_chain(e: &dyn std::error::Error) -> String {
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

/// Counts a finished attempt in the process's metrics.
fn record_metrics(c: &Claimed, o: &Outcome) {
    use crate::telemetry::{ATTEMPT_DURATION, DELIVERY_ATTEMPTS, DELIVERY_LATENCY};
    let outcome = match o.next {
        NextState::Succeeded => "succeeded",
        NextState::RetryAt(_) => "retrying",
        NextState::Failed => "failed",
        NextState::Expired => "expired",
    };
    metrics::counter!(DELIVERY_ATTEMPTS, "outcome" => outcome).increment(1);
    metrics::histogram!(ATTEMPT_DURATION).record(o.duration_ms as f64 / 1000.0);
    if o.next == NextState::Succeeded {
        let finished = o.started_at + o.duration_ms;
        metrics::histogram!(DELIVERY_LATENCY)
            .record((finished - c.created_at).max(0) as f64 / 1000.0);
    }
}

/// A Heartbeat (System event 2) for `subscription`, whose latest delivered sequence is `last`.
pub fn heartbeat(subscription: &str, last: i64, now_ms: i64) -> Event {
    let mut fields = serde_json::Map::new();
    fields.insert("SubscriptionId".into(), subscription.into());
    fields.insert("LastSequence".into(), last.into());
    Event::system(catalog::system::HEARTBEAT, fields, now_ms)
}

/// The outcome of a delivery that would start at `now`, more than its subscription's
/// `max_age_secs` after its event was received: no attempt, it ends `expired`. `None` when it
/// may go.
pub fn expired(sub: &SubscriptionRecord, c: &Claimed, now: i64) -> Option<Outcome> {
    let max_age = sub.spec.max_age_secs?;
    let age = now - c.received_at;
    (age > max_age as i64 * 1000).then(|| Outcome {
        delivery_id: c.delivery_id,
        subscription_id: c.subscription_id.clone(),
        // Not an attempt: the counts stay as they were.
        attempt: c.attempt - 1,
        round_attempt: c.round_attempt - 1,
        started_at: now,
        duration_ms: 0,
        status_code: None,
        error: Some(format!(
            "expired: not attempted {:.1} s after the event was received (max_age_secs {max_age})",
            age as f64 / 1000.0
        )),
        response_body: None,
        next: NextState::Expired,
        disable: None,
    })
}

/// What an attempt means for its delivery and subscription.
pub fn decide(sub: &SubscriptionRecord, c: &Claimed, r: AttemptResult) -> Outcome {
    let step = retry::next_step(
        sub.spec.schedule(),
        c.round_attempt,
        r.status,
        r.retry_after,
        crate::clock::jitter,
    );
    let finished_at = r.started_at + r.duration_ms;
    let next = match step {
        Next::Delivered => NextState::Succeeded,
        Next::Retry(delay) => NextState::RetryAt(finished_at + delay.as_millis() as i64),
        Next::Failed => NextState::Failed,
    };
    let disable = (r.status == Some(410)).then(|| "the endpoint answered 410 Gone".to_string());
    Outcome {
        delivery_id: c.delivery_id,
        subscription_id: c.subscription_id.clone(),
        attempt: c.attempt,
        round_attempt: c.round_attempt,
        started_at: r.started_at,
        duration_ms: r.duration_ms,
        status_code: r.status,
        error: r.error,
        response_body: r.response_body,
        next,
        disable,
    }
}

/// Per-subscription state the dispatcher keeps: its settings, attempts in flight, rate tokens,
/// and deliveries claimed but not started yet.
struct SubState {
    target: Arc<Target>,
    /// False once disabled or deleted: only its attempts in flight are awaited.
    active: bool,
    in_flight: u32,
    tokens: f64,
    /// When the tokens were last topped up, unix ms (the dispatcher's clock).
    refilled: i64,
    /// Claimed (leased), in claim order, waiting for a slot. The lease (twice the HTTP timeout
    /// and more) outlasts the wait: at most `max_in_flight` wait, behind as many in flight.
    ready: VecDeque<Claimed>,
    /// When an attempt last started (or a Heartbeat was queued), unix ms: Heartbeats follow
    /// `heartbeat_secs` of nothing attempted.
    last_attempt: i64,
}

impl SubState {
    fn new(target: Arc<Target>, now: i64) -> Self {
        let tokens = target.sub.spec.rate_limit_per_sec.map_or(0.0, f64::from);
        SubState {
            target,
            active: true,
            in_flight: 0,
            tokens,
            refilled: now,
            ready: VecDeque::new(),
            last_attempt: now,
        }
    }

    /// How many attempts may start at `now`: free slots, within the rate-limit tokens.
    fn startable(&mut self, now: i64) -> u32 {
        if !self.active {
            return 0;
        }
        let free = self
            .target
            .sub
            .spec
            .max_in_flight
            .saturating_sub(self.in_flight);
        match self.target.sub.spec.rate_limit_per_sec {
            None => free,
            Some(rate) => {
                let rate = f64::from(rate);
                let elapsed = (now - self.refilled).max(0) as f64 / 1000.0;
                self.tokens = (self.tokens + elapsed * rate).min(rate);
                self.refilled = now;
                free.min(self.tokens.floor() as u32)
            }
        }
    }

    /// How many more deliveries to claim: enough to fill the free slots and, without a rate
    /// limit, as many again to wait ready. A rate-limited subscription claims only what it may
    /// start now, so nothing waits on tokens while its lease runs; so does a coalescing one, so
    /// that a status waiting for a slot is not leased and a later one can still supersede it.
    fn wanted(&mut self, now: i64) -> u32 {
        let spec = &self.target.sub.spec;
        let buffered = spec.rate_limit_per_sec.is_none()
            && spec.coalesce == crate::subscription::Coalesce::None;
        let target = if buffered && self.active {
            (2 * spec.max_in_flight).saturating_sub(self.in_flight)
        } else {
            self.startable(now)
        };
        target
            .saturating_sub(self.ready.len() as u32)
            .min(MAX_CLAIM)
    }
}

/// The dispatcher of one node.
pub struct Dispatcher {
    store: Store,
    sender: Sender,
    lease: Duration,
    subs: HashMap<String, SubState>,
    refreshed: Option<(Instant, u64)>,
    done_tx: mpsc::UnboundedSender<Outcome>,
    done_rx: mpsc::UnboundedReceiver<Outcome>,
    finished: Vec<Outcome>,
}

/// The longest a failing dispatcher waits before its next try.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Subscriptions are re-read at least this often, even without a local change.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

impl Dispatcher {
    /// `lease` must outlive the HTTP timeout: a claimed delivery is not claimed again before.
    pub fn new(store: Store, sender: Sender, lease: Duration) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Dispatcher {
            store,
            sender,
            lease,
            subs: HashMap::new(),
            refreshed: None,
            done_tx,
            done_rx,
            finished: Vec::new(),
        }
    }

    fn in_flight(&self) -> u32 {
        self.subs.values().map(|s| s.in_flight).sum()
    }

    /// Delivers until `shutdown` turns true, then lets attempts in flight finish and records
    /// them.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let wake = self.store.wake_handle();
        // 100 ms, doubling to 10 s: a database that is down for minutes costs a log line and a
        // try every 10 s, not one a second.
        let mut backoff = Backoff::new(Duration::from_millis(100), MAX_BACKOFF);
        while !*shutdown.borrow() {
            let started = match self.step().await {
                Ok(n) => {
                    if backoff.failures() > 0 {
                        tracing::info!(
                            failures = backoff.failures(),
                            "dispatcher steps succeed again"
                        );
                    }
                    backoff.succeeded();
                    n
                }
                Err(e) => {
                    let delay = backoff.failed();
                    match &e {
                        StoreError::Unavailable(_)
                            if backoff.failures() > 1 && delay < MAX_BACKOFF =>
                        {
                            tracing::debug!(error = %e, ?delay, "dispatcher step failed; backing off")
                        }
                        StoreError::Unavailable(_) => {
                            tracing::warn!(error = %e, ?delay, "dispatcher step failed: database unavailable; backing off")
                        }
                        _ => {
                            tracing::error!(error = %e, ?delay, "dispatcher step failed; backing off")
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            };
            if started > 0 {
                continue;
            }
            let idle = self.idle_wait().await;
            tokio::select! {
                _ = wake.notified() => {}
                Some(o) = self.done_rx.recv() => self.note_finished(o),
                _ = tokio::time::sleep(idle) => {}
                _ = shutdown.changed() => {}
            }
        }
        // Shutdown: no new claims, nothing more started; wait for what is in flight (bounded by
        // the HTTP timeout).
        let unstarted = self
            .subs
            .values_mut()
            .flat_map(|s| s.ready.drain(..))
            .collect();
        self.release(unstarted).await;
        if let Err(e) = self.settle().await {
            tracing::warn!(error = %e, "could not record the last outcomes; they will be retried");
        }
    }

    /// Waits for every attempt in flight and records every finished one; true if one of them
    /// disabled its subscription.
    async fn settle(&mut self) -> Result<bool, StoreError> {
        while self.in_flight() > 0 {
            match self.done_rx.recv().await {
                Some(o) => self.note_finished(o),
                None => break,
            }
        }
        let finished = std::mem::take(&mut self.finished);
        let disabled = finished.iter().any(|o| o.disable.is_some());
        if !finished.is_empty() {
            self.store.record(finished).await?;
        }
        Ok(disabled)
    }

    /// Every finished attempt comes through here: its slot is freed at once, so `in_flight`
    /// never counts an attempt whose outcome is already waiting to be recorded.
    fn note_finished(&mut self, o: Outcome) {
        if let Some(s) = self.subs.get_mut(&o.subscription_id) {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
        self.finished.push(o);
    }

    /// How long to wait when nothing could start: until the next due delivery, within bounds.
    async fn idle_wait(&self) -> Duration {
        let min = Duration::from_millis(50);
        let max = Duration::from_secs(1);
        let now = self.sender.clock.now_ms();
        match self.store.next_due(now).await {
            Ok(Some(due)) => {
                let ms = (due - now).max(0) as u64;
                Duration::from_millis(ms).clamp(min, max)
            }
            _ => max,
        }
    }

    /// One round: write back finished attempts, refresh subscriptions, claim what is due, and
    /// start what the slots allow. Returns how many attempts started.
    pub async fn step(&mut self) -> Result<usize, StoreError> {
        while let Ok(o) = self.done_rx.try_recv() {
            self.note_finished(o);
        }
        let now = self.sender.clock.now_ms();
        let mut started = self.start_ready(now);
        let finished = std::mem::take(&mut self.finished);
        // A disabled subscription must be seen as such before claiming for it.
        let finished = if finished.iter().any(|o| o.disable.is_some()) {
            self.store.record(finished).await?;
            self.refresh(true).await?;
            Vec::new()
        } else {
            self.refresh(false).await?;
            finished
        };

        self.heartbeats(now).await?;
        let wanted: Vec<(String, u32)> = self
            .subs
            .iter_mut()
            .filter_map(|(id, s)| {
                let n = s.wanted(now);
                (n > 0).then(|| (id.clone(), n))
            })
            .collect();
        if wanted.is_empty() && finished.is_empty() {
            return Ok(started);
        }
        // Sent together, the outcomes and the claim share one writer turn and one commit.
        let lease_until = now + self.lease.as_millis() as i64;
        let store = &self.store;
        let record = async {
            match finished.is_empty() {
                true => Ok(()),
                false => store.record(finished).await,
            }
        };
        let claim = async {
            match wanted.is_empty() {
                true => Ok(Vec::new()),
                false => store.claim(wanted, lease_until, now).await,
            }
        };
        let (recorded, claimed) = tokio::join!(record, claim);
        for c in claimed? {
            if let Some(state) = self.subs.get_mut(&c.subscription_id) {
                state.ready.push_back(c);
            }
        }
        // The claim may have taken deliveries of events committed after the refresh above, and
        // after a change of their subscription (a secret rotated, then an event posted): they
        // go out with the subscription as it is now.
        self.refresh(false).await?;
        started += self.start_ready(now);
        // Attempts claimed are started even if recording failed; those outcomes are lost and
        // their deliveries go out again when the leases expire.
        recorded?;
        Ok(started)
    }

    /// Queues a Heartbeat (System event 2) for every subscription with `heartbeat_secs` to which
    /// nothing was attempted that long. One attempt each, not retried: the next one follows.
    async fn heartbeats(&mut self, now: i64) -> Result<(), StoreError> {
        let due: Vec<Arc<Target>> = self
            .subs
            .values_mut()
            .filter(|s| s.active && s.in_flight == 0 && s.ready.is_empty())
            .filter_map(|s| {
                let every = s.target.sub.spec.heartbeat_secs? as i64 * 1000;
                (now - s.last_attempt >= every).then(|| {
                    s.last_attempt = now;
                    s.target.clone()
                })
            })
            .collect();
        for target in due {
            let sub = &target.sub;
            let last = self.store.last_delivered_sequence(&sub.id).await?;
            let event = SystemEvent {
                tenant: sub.tenant_id.clone(),
                event: heartbeat(&sub.id, last, now),
                to: Recipients::Subscriptions(vec![sub.id.clone()]),
                lease_until: None,
                retried: false,
            };
            self.store.system_event(event).await?;
        }
        Ok(())
    }

    /// One [`Dispatcher::step`], then every attempt it started is awaited and its outcome
    /// recorded: the dispatcher driven by hand, for tests and tools, with no waiting on timers.
    /// Returns how many attempts were made.
    pub async fn run_once(&mut self) -> Result<usize, StoreError> {
        let started = self.step().await?;
        if self.settle().await? {
            self.refresh(true).await?;
        }
        Ok(started)
    }

    /// Starts every ready delivery that a free slot and the rate limit allow; returns how many.
    /// One too old for its subscription's `max_age_secs` is not attempted: it ends `expired`.
    fn start_ready(&mut self, now: i64) -> usize {
        let mut started = 0;
        let finished = &mut self.finished;
        for state in self.subs.values_mut() {
            if state.ready.is_empty() {
                continue;
            }
            let mut slots = state.startable(now);
            while slots > 0 {
                let Some(c) = state.ready.pop_front() else {
                    break;
                };
                if let Some(outcome) = expired(&state.target.sub, &c, now) {
                    finished.push(outcome);
                    continue;
                }
                slots -= 1;
                state.in_flight += 1;
                state.last_attempt = now;
                state.tokens -= 1.0;
                started += 1;
                let (sub, sender, done) = (
                    state.target.clone(),
                    self.sender.clone(),
                    self.done_tx.clone(),
                );
                tokio::spawn(async move {
                    let result = sender.send(&sub, &c).await;
                    if let Some(status) = result.status.filter(|s| !(200..300).contains(s)) {
                        tracing::warn!(subscription_id = %sub.sub.id, event_id = %c.event_id, status, "receiver refused a delivery");
                    } else if let Some(err) = &result.error {
                        tracing::warn!(subscription_id = %sub.sub.id, event_id = %c.event_id, error = %err, "delivery attempt failed");
                    }
                    let outcome = decide(&sub.sub, &c, result);
                    record_metrics(&c, &outcome);
                    let _ = done.send(outcome);
                });
            }
        }
        started
    }

    /// Gives back the leases of deliveries claimed but not started (subscription disabled,
    /// shutdown), so they go out at once rather than when the lease expires.
    async fn release(&self, ready: Vec<Claimed>) {
        if ready.is_empty() {
            return;
        }
        let ids = ready.iter().map(|c| c.delivery_id).collect();
        if let Err(e) = self.store.release_leases(ids).await {
            tracing::warn!(error = %e, "could not release leases; they expire by themselves");
        }
    }

    /// Re-reads the enabled subscriptions when they changed, or every few seconds.
    async fn refresh(&mut self, force: bool) -> Result<(), StoreError> {
        let version = self.store.subscriptions_version();
        let fresh = self
            .refreshed
            .is_some_and(|(at, v)| v == version && at.elapsed() < REFRESH_EVERY);
        if fresh && !force {
            return Ok(());
        }
        let subs = self.store.enabled_subscriptions().await?;
        let now = self.sender.clock.now_ms();
        let mut next = HashMap::with_capacity(subs.len());
        for sub in subs {
            let sub = Arc::new(Target::new(sub));
            // Always the fresh record: a change within the same millisecond (a secret rotated
            // right after a delivery) leaves `updated_at` alone but must still be seen.
            let rate = sub.sub.spec.rate_limit_per_sec;
            let state = match self.subs.remove(&sub.sub.id) {
                Some(old) if old.target.sub.spec.rate_limit_per_sec == rate => SubState {
                    target: sub.clone(),
                    active: true,
                    ..old
                },
                // The rate changed: keep the count in flight and what is ready, start the rate
                // bucket afresh.
                Some(old) => SubState {
                    in_flight: old.in_flight,
                    ready: old.ready,
                    ..SubState::new(sub.clone(), now)
                },
                None => SubState::new(sub.clone(), now),
            };
            next.insert(sub.sub.id.clone(), state);
        }
        // Disabled or deleted subscriptions with attempts still in flight stay until they end;
        // what they had claimed but not started is given back.
        let mut unstarted = Vec::new();
        for (id, mut old) in self.subs.drain() {
            unstarted.extend(old.ready.drain(..));
            if old.in_flight > 0 {
                next.insert(
                    id,
                    SubState {
                        active: false,
                        ..old
                    },
                );
            }
        }
        self.subs = next;
        self.release(unstarted).await;
        self.refreshed = Some((Instant::now(), version));
        Ok(())
    }
}
