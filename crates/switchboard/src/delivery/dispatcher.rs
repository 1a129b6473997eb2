//! The dispatcher: turns due delivery rows into attempts.
//!
//! The loop: write back finished attempts → claim (lease) due deliveries for every
//! subscription, up to its `max_in_flight` slots again beyond those (a prefetch, so the next
//! attempts can start the moment a slot frees, without waiting for a database turn) → start
//! what the free slots and rate-limit tokens allow, each attempt a task → wait for a commit
//! (the store's wake-up), a finished attempt, or the next due time.
//! Nothing that matters lives only in memory: a claim is a lease in the database, and an
//! attempt's outcome changes the delivery row in the same transaction as its log entry.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::attempt::{Target, attempt, expired};
use super::sender::Sender;
use crate::clock::{Backoff, Clock};
use crate::event::{Event, catalog};
use crate::store::{Claimed, Outcome, Recipients, Store, StoreError, SystemEvent};

/// Most deliveries claimed for one subscription in one step.
const MAX_CLAIM: u32 = 256;

/// A Heartbeat (System event 2) for `subscription`, whose latest delivered sequence is `last`.
pub fn heartbeat(subscription: &str, last: i64, now_ms: i64) -> Event {
    let mut fields = serde_json::Map::new();
    fields.insert("SubscriptionId".into(), subscription.into());
    fields.insert("LastSequence".into(), last.into());
    Event::system(catalog::system::HEARTBEAT, fields, now_ms)
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
    /// The dispatcher's time: what is due, rate tokens, Heartbeats; the sender's clock.
    clock: Clock,
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
            clock: sender.clock().clone(),
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
        let now = self.clock.now_ms();
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
        let now = self.clock.now_ms();
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
                let (target, clock, done) = (
                    state.target.clone(),
                    self.clock.clone(),
                    self.done_tx.clone(),
                );
                tokio::spawn(async move {
                    let _ = done.send(attempt(&target, &c, &clock).await);
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
        let now = self.clock.now_ms();
        let mut next = HashMap::with_capacity(subs.len());
        for sub in subs {
            let sub = Arc::new(self.sender.target(sub));
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
