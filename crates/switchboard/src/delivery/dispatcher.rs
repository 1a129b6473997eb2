//! The dispatcher: turns due delivery rows into attempts.
//!
//! The loop: take the deliveries ingest handed over → write back finished attempts → claim
//! (lease) due deliveries for every subscription, up to its `max_in_flight` slots again beyond
//! those (a prefetch, so the next attempts can start the moment a slot frees, without waiting
//! for a database turn) → start what the free slots and rate-limit tokens allow, each attempt a
//! task → offer ingest the room left → wait for a commit (the store's wake-up), a finished
//! attempt, or the next due time.
//!
//! A subscription without rate limit, coalescing or per-agent order ("bulk") gets most of its
//! deliveries from ingest itself: they are created leased to this node and handed over after
//! the commit (`store/handoff.rs`), so no claim is needed for them. It is claimed for only
//! when something may be due that nobody holds: the store says so (deliveries not handed over,
//! replays, System events, another node's), a retry it scheduled comes due, the last claim
//! filled all it asked for, its wait timed out, or a second passed (leases that expired).
//! Nothing that matters lives only in memory: a claim is a lease in the database, and an
//! attempt's outcome changes the delivery row in the same transaction as its log entry.

use std::collections::BTreeSet;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::attempt::{Target, attempt, attempt_batch, expired};
use super::sender::Sender;
use crate::clock::{Backoff, Clock};
use crate::event::{Event, catalog};
use crate::store::{
    Claimed, Handoff, NextState, Outcome, Recipients, Store, StoreError, SystemEvent,
};

/// Most deliveries claimed for one subscription in one step.
const MAX_CLAIM: u32 = 256;
/// The same for a subscription with batches: a claim fills many slots' batches.
const MAX_BATCH_CLAIM: u32 = 4_096;

/// Bulk subscriptions are claimed for at least this often (ms) even when nothing says so: a
/// lease that expired (a node that stopped) is noticed by no one else.
const CLAIM_EVERY_MS: i64 = 1_000;

/// How long (ms) the outcomes of bulk subscriptions may wait to be recorded when no claim is
/// made that they could ride with: at a low rate, one turn records many attempts instead of
/// each its own. Nothing is promised on an outcome (lost in a crash, the attempt is made again)
/// and its slot is free at once; only its row shows it this much later.
const OUTCOME_LINGER_MS: i64 = 50;

/// Most outcomes waiting to be recorded before they are recorded anyway.
const MAX_LINGERING: usize = 256;

/// Most retry times remembered; beyond, [`CLAIM_EVERY_MS`] finds them.
const MAX_RETRY_TIMES: usize = 10_000;

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
    /// The circuit breaker (DESIGN §16): `Some` while open — when the next probe may start
    /// (`i64::MAX` after a failed probe, until the store says when).
    probe_at: Option<i64>,
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
            probe_at: None,
        }
    }

    /// While its breaker is open, whether the one probe may start now: due, none in flight.
    fn probe_due(&self, now: i64) -> bool {
        self.probe_at.is_some_and(|at| at <= now) && self.in_flight == 0
    }

    /// How many attempts may start at `now`: free slots, within the rate-limit tokens.
    fn startable(&mut self, now: i64) -> u32 {
        if !self.active {
            return 0;
        }
        if self.probe_at.is_some() {
            return u32::from(self.probe_due(now));
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

    /// No rate limit, coalescing or per-agent order: its deliveries may be handed over by
    /// ingest, and it is claimed for only when something may be due (see the module's doc).
    fn bulk(&self) -> bool {
        let spec = &self.target.sub.spec;
        self.active
            && self.probe_at.is_none()
            && spec.rate_limit_per_sec.is_none()
            && spec.coalesce == crate::subscription::Coalesce::None
            && spec.ordering == crate::subscription::Ordering::None
    }

    /// How many more deliveries to claim: enough to fill the free slots and, without a rate
    /// limit, as many again to wait ready. A rate-limited subscription claims only what it may
    /// start now, so nothing waits on tokens while its lease runs; so does a coalescing one, so
    /// that a status waiting for a slot is not leased and a later one can still supersede it.
    fn wanted(&mut self, now: i64) -> u32 {
        // A batch fills a slot with up to `max_events` deliveries.
        let per_slot = (self.target.sub.spec.batch).map_or(1, |b| b.max_events.max(1));
        if self.probe_at.is_some() {
            // Open: its oldest due delivery — or, batching, its oldest due batch — as the one
            // probe (DESIGN §17).
            let probe = self.active && self.probe_due(now) && self.ready.is_empty();
            return u32::from(probe) * per_slot;
        }
        let spec = &self.target.sub.spec;
        let buffered = spec.rate_limit_per_sec.is_none()
            && spec.coalesce == crate::subscription::Coalesce::None;
        let target = if buffered && self.active {
            (2 * spec.max_in_flight).saturating_sub(self.in_flight) * per_slot
        } else {
            self.startable(now) * per_slot
        };
        target
            .saturating_sub(self.ready.len() as u32)
            .min(if per_slot > 1 {
                // Batches: enough for every slot's batch, within reason.
                MAX_BATCH_CLAIM
            } else {
                MAX_CLAIM
            })
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
    handoff: Arc<Handoff>,
    /// Deliveries ingest leased to this dispatcher; `None` if another dispatcher of the same
    /// store takes them.
    handed: Option<mpsc::UnboundedReceiver<Vec<Claimed>>>,
    /// The last claim for bulk subscriptions took all it asked for: more may be due.
    more_due: bool,
    /// When bulk subscriptions were last claimed for (the dispatcher's clock, unix ms).
    last_claim: i64,
    /// When retries scheduled by this dispatcher's attempts come due, after the last claim.
    retries: BTreeSet<i64>,
    /// When the oldest outcome not yet recorded finished (the dispatcher's clock).
    finished_since: Option<i64>,
    /// Ready deliveries whose lease ran too short to start them: given back at the step's end.
    stale: Vec<Claimed>,
    /// An attempt failed (or a probe ended) since the breakers were last read: read them again
    /// once its outcome is recorded.
    breakers_stale: bool,
    /// When the first batch held back for more members may go (unix ms; `i64::MAX`: none).
    batch_wait: i64,
}

/// The longest a failing dispatcher waits before its next try.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Subscriptions are re-read at least this often, even without a local change.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

impl Dispatcher {
    /// `lease` must outlive the HTTP timeout: a claimed delivery is not claimed again before.
    pub fn new(store: Store, sender: Sender, lease: Duration) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let handoff = store.wake_handle();
        let handed = handoff.receiver();
        Dispatcher {
            store,
            handoff,
            handed,
            more_due: true,
            last_claim: i64::MIN,
            retries: BTreeSet::new(),
            finished_since: None,
            stale: Vec::new(),
            breakers_stale: false,
            batch_wait: i64::MAX,
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
                    // Nothing is taken from ingest while steps fail.
                    self.handoff.offer(HashMap::new(), 0, 0);
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
            let (idle, lingering) = self.idle_wait().await;
            tokio::select! {
                _ = wake.notified() => {}
                Some(o) = self.done_rx.recv() => self.note_finished(o),
                // What is due by now is claimed (or the outcomes waiting are recorded).
                _ = tokio::time::sleep(idle) => self.more_due |= !lingering,
                _ = shutdown.changed() => {}
            }
        }
        // Shutdown: nothing more taken from ingest, no new claims, nothing more started; wait
        // for what is in flight (bounded by the HTTP timeout). A delivery handed over after
        // this stays leased until its lease ends (SQLite's are void at the next start).
        self.handoff.offer(HashMap::new(), 0, 0);
        let mut unstarted: Vec<Claimed> = self
            .subs
            .values_mut()
            .flat_map(|s| s.ready.drain(..))
            .collect();
        if let Some(rx) = self.handed.as_mut() {
            while let Ok(claimed) = rx.try_recv() {
                unstarted.extend(claimed);
            }
        }
        self.release(unstarted).await;
        if let Err(e) = self.settle().await {
            tracing::warn!(error = %e, "could not record the last outcomes; they will be retried");
        }
        // A turn that took room just before the offer was withdrawn hands over after it.
        let mut late = Vec::new();
        if let Some(rx) = self.handed.as_mut() {
            while let Ok(claimed) = rx.try_recv() {
                late.extend(claimed);
            }
        }
        self.release(late).await;
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
        self.finished_since = None;
        let disabled = finished.iter().any(|o| o.disable.is_some());
        if !finished.is_empty() {
            self.store.record(finished).await?;
        }
        Ok(disabled)
    }

    /// Waits for an attempt in flight to finish and notes it — its slot freed, its outcome kept
    /// for the next step's turn — without recording anything; returns how many outcomes wait
    /// (for tests: what happens between an attempt and its outcome's record). Returns at once
    /// when nothing is in flight.
    #[doc(hidden)]
    pub async fn await_finished(&mut self) -> usize {
        if self.in_flight() > 0
            && let Some(o) = self.done_rx.recv().await
        {
            self.note_finished(o);
        }
        self.finished.len()
    }

    /// Every finished attempt comes through here: its slot is freed at once, so `in_flight`
    /// never counts an attempt whose outcome is already waiting to be recorded.
    fn note_finished(&mut self, o: Outcome) {
        if let Some(s) = self.subs.get_mut(&o.subscription_id)
            && !o.batched
        {
            s.in_flight = s.in_flight.saturating_sub(1);
            match o.next {
                NextState::Expired => {}
                // A success closes an open breaker at once: the backlog flows from the next
                // step; what the store says is read again once it is recorded.
                NextState::Succeeded => {
                    if s.probe_at.take().is_some() {
                        self.breakers_stale = true;
                        self.more_due = true;
                    }
                }
                NextState::RetryAt(_) | NextState::Failed => {
                    if s.probe_at.is_some() {
                        s.probe_at = Some(i64::MAX);
                    }
                    self.breakers_stale = true;
                }
            }
        }
        if let NextState::RetryAt(at) = o.next
            && self.retries.len() < MAX_RETRY_TIMES
        {
            self.retries.insert(at);
        }
        self.finished_since
            .get_or_insert_with(|| self.clock.now_ms());
        self.finished.push(o);
    }

    /// Whether the outcomes waiting are to be recorded now rather than ride with a later turn:
    /// when one is of a subscription whose next claim depends on it (a successor in per-agent
    /// order, a rate limit, coalescing), when there are many, or once the oldest has waited
    /// [`OUTCOME_LINGER_MS`].
    ///
    /// Asked at every step while outcomes wait, so a run of outcomes of one subscription (the
    /// usual case) costs one lookup, not one each.
    fn record_now(&self, finished: &[Outcome], now: i64) -> bool {
        let mut seen: Option<&str> = None;
        finished.len() >= MAX_LINGERING
            || self
                .finished_since
                .is_none_or(|since| now - since >= OUTCOME_LINGER_MS)
            || finished.iter().any(|o| {
                let id = o.subscription_id.as_str();
                if seen == Some(id) {
                    return false;
                }
                seen = Some(id);
                self.subs.get(id).is_none_or(|s| !s.bulk())
            })
    }

    /// Takes what ingest handed over into the subscriptions' ready queues; returns what no
    /// active subscription takes (disabled or deleted meanwhile), to be released.
    fn take_handed(&mut self) -> Vec<Claimed> {
        let mut orphans = Vec::new();
        let Some(rx) = self.handed.as_mut() else {
            return orphans;
        };
        while let Ok(claimed) = rx.try_recv() {
            for c in claimed {
                match self.subs.get_mut(&c.subscription_id) {
                    Some(state) if state.active => state.ready.push_back(c),
                    _ => orphans.push(c),
                }
            }
        }
        orphans
    }

    /// Whether bulk subscriptions are to be claimed for at `now` (see the module's doc).
    fn bulk_due(&mut self, now: i64) -> bool {
        // Always asked, so that a "due" said now is not left for later.
        let said = self.handoff.take_due();
        said || self.more_due
            || now.saturating_sub(self.last_claim) >= CLAIM_EVERY_MS
            || self.retries.first().is_some_and(|&at| at <= now)
    }

    /// Offers ingest the room the bulk subscriptions have left: what they would claim now.
    fn offer(&mut self, now: i64) {
        if self.handed.is_none() {
            return;
        }
        let room = self
            .subs
            .iter_mut()
            .filter(|(_, s)| s.bulk())
            .map(|(id, s)| (id.clone(), s.wanted(now)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let version = self.refreshed.map_or(u64::MAX, |(_, v)| v);
        self.handoff
            .offer(room, self.lease.as_millis() as i64, version);
    }

    /// How long to wait when nothing could start: until the next due delivery, within bounds.
    /// When every subscription is bulk, what can come due is known here without asking the
    /// database: a retry this dispatcher scheduled, or the next periodic claim; everything else
    /// is said ([`Handoff::due`]).
    /// Shorter when outcomes wait to be recorded: then true.
    async fn idle_wait(&self) -> (Duration, bool) {
        let due = self.due_wait().await;
        match self.finished_since {
            Some(since) if !self.finished.is_empty() => {
                let left = (since + OUTCOME_LINGER_MS - self.clock.now_ms()).max(1) as u64;
                let left = Duration::from_millis(left);
                if left < due {
                    (left, true)
                } else {
                    (due, false)
                }
            }
            _ => (due, false),
        }
    }

    async fn due_wait(&self) -> Duration {
        let min = Duration::from_millis(50);
        let max = Duration::from_secs(1);
        let now = self.clock.now_ms();
        // An open breaker's subscription is due at its next probe (the store leaves it out).
        let probe = (self.subs.values())
            .filter(|s| s.active && s.in_flight == 0)
            .filter_map(|s| s.probe_at)
            .min()
            .unwrap_or(i64::MAX);
        let open_or_bulk = |s: &SubState| s.bulk() || !s.active || s.probe_at.is_some();
        let next = if self.subs.values().all(open_or_bulk) {
            (self.retries.first().copied().unwrap_or(i64::MAX))
                .min(self.last_claim.saturating_add(CLAIM_EVERY_MS))
        } else {
            match self.store.next_due(now).await {
                Ok(Some(due)) => due,
                Ok(None) => i64::MAX,
                Err(_) => return max,
            }
        };
        // A batch not full yet goes when its oldest has waited `max_wait_ms`.
        let next = next.min(probe).min(self.batch_wait);
        Duration::from_millis(next.saturating_sub(now).max(0) as u64).clamp(min, max)
    }

    /// One round: write back finished attempts, refresh subscriptions, claim what is due, and
    /// start what the slots allow. Returns how many attempts started.
    pub async fn step(&mut self) -> Result<usize, StoreError> {
        while let Ok(o) = self.done_rx.try_recv() {
            self.note_finished(o);
        }
        let now = self.clock.now_ms();
        let orphans = self.take_handed();
        self.release(orphans).await;
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
        let bulk_due = self.bulk_due(now);
        // A bulk subscription with no room now, when something may be due, is claimed for at
        // the next step that finds room.
        let mut full = false;
        let wanted: Vec<(String, u32, bool)> = self
            .subs
            .iter_mut()
            .filter_map(|(id, s)| {
                let bulk = s.bulk();
                let n = match bulk && !bulk_due {
                    true => 0,
                    false => s.wanted(now),
                };
                full |= bulk && n == 0;
                (n > 0).then(|| (id.clone(), n, bulk))
            })
            .collect();
        if bulk_due {
            self.last_claim = now;
            self.retries.retain(|&at| at > now);
            self.more_due = full;
        }
        // With no claim to ride with, bulk outcomes may wait for a later turn.
        let finished = match wanted.is_empty() && !self.record_now(&finished, now) {
            true => {
                self.finished = finished;
                Vec::new()
            }
            false => {
                self.finished_since = None;
                finished
            }
        };
        if wanted.is_empty() && finished.is_empty() {
            let stale = std::mem::take(&mut self.stale);
            self.release(stale).await;
            self.read_breakers().await?;
            self.offer(now);
            return Ok(started);
        }
        let asked: HashMap<String, u32> = (wanted.iter())
            .filter(|(_, _, bulk)| *bulk)
            .map(|(id, n, _)| (id.clone(), *n))
            .collect();
        let probed: Vec<String> = (wanted.iter())
            .filter(|(id, _, _)| self.subs.get(id).is_some_and(|s| s.probe_at.is_some()))
            .map(|(id, _, _)| id.clone())
            .collect();
        // A batching bulk subscription's claim may go on after its last one (`Store::claim`):
        // it holds thousands of deliveries in flight, which a walk from the start steps over.
        // Others hold at most twice `max_in_flight`, and their claims often come up short,
        // which would cost a second walk.
        let wanted: Vec<(String, u32, bool)> = (wanted.into_iter())
            .map(|(id, n, bulk)| {
                let batching = self
                    .subs
                    .get(&id)
                    .is_some_and(|s| s.target.sub.spec.batch.is_some());
                (id, n, bulk && batching)
            })
            .collect();
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
        let mut got: HashMap<String, u32> = HashMap::new();
        for c in claimed? {
            if asked.contains_key(&c.subscription_id) {
                *got.entry(c.subscription_id.clone()).or_default() += 1;
            }
            if let Some(state) = self.subs.get_mut(&c.subscription_id) {
                state.ready.push_back(c);
            }
        }
        // A bulk subscription that got all it asked for may have more due.
        self.more_due |= asked.iter().any(|(id, n)| got.get(id) == Some(n));
        // An open breaker whose probe found nothing due asks again a second later, not at
        // every step.
        for (id, state) in &mut self.subs {
            if state.probe_at.is_some_and(|at| at <= now)
                && state.in_flight == 0
                && state.ready.is_empty()
                && probed.contains(id)
            {
                state.probe_at = Some(now + CLAIM_EVERY_MS);
            }
        }
        // The claim may have taken deliveries of events committed after the refresh above, and
        // after a change of their subscription (a secret rotated, then an event posted): they
        // go out with the subscription as it is now.
        self.refresh(false).await?;
        started += self.start_ready(now);
        let stale = std::mem::take(&mut self.stale);
        self.release(stale).await;
        self.offer(now);
        // Attempts claimed are started even if recording failed; those outcomes are lost and
        // their deliveries go out again when the leases expire.
        recorded?;
        self.read_breakers().await?;
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
        self.read_breakers().await?;
        Ok(started)
    }

    /// Starts every ready delivery that a free slot and the rate limit allow; returns how many.
    /// One too old for its subscription's `max_age_secs` is not attempted: it ends `expired`.
    /// One whose lease has less than half its length left (more than the HTTP timeout) is not
    /// attempted either: it is given back (`stale`), so that no attempt outlives its lease and
    /// a live node never sends a delivery another claim took.
    fn start_ready(&mut self, now: i64) -> usize {
        let mut started = 0;
        let finished = &mut self.finished;
        let stale = &mut self.stale;
        let min_left = self.lease.as_millis() as i64 / 2;
        self.batch_wait = i64::MAX;
        for state in self.subs.values_mut() {
            if state.ready.is_empty() {
                continue;
            }
            let mut slots = state.startable(now);
            let open = state.probe_at.is_some();
            let batch = state.target.sub.spec.batch;
            let most = batch.map_or(1, |b| b.max_events.max(1) as usize);
            while slots > 0 {
                // One delivery, or a batch of up to `most` (DESIGN §17): one slot either way.
                let mut members = Vec::new();
                while members.len() < most {
                    let Some(c) = state.ready.pop_front() else {
                        break;
                    };
                    if let Some(outcome) = expired(&state.target.sub, &c, now) {
                        finished.push(outcome);
                        continue;
                    }
                    if c.lease_until - now < min_left {
                        // Given back while still held; once expired it is anyone's to claim,
                        // and giving it back could clear another claim's lease.
                        if c.lease_until > now {
                            stale.push(c);
                        }
                        continue;
                    }
                    members.push(c);
                }
                if members.is_empty() {
                    break;
                }
                if let Some(b) = batch
                    && members.len() < most
                    && !open
                {
                    // Not full: it waits for more until its oldest has waited `max_wait_ms`.
                    let oldest = members.iter().map(|c| c.created_at).min().unwrap_or(now);
                    let go_at = oldest.saturating_add(b.max_wait_ms as i64);
                    if go_at > now {
                        for c in members.into_iter().rev() {
                            state.ready.push_front(c);
                        }
                        self.batch_wait = self.batch_wait.min(go_at);
                        break;
                    }
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
                if batch.is_some() {
                    members.sort_by_key(|c| c.sequence);
                    tokio::spawn(async move {
                        let mut outcomes = attempt_batch(&target, &members, &clock).await;
                        outcomes[0].probe = open;
                        for o in outcomes {
                            let _ = done.send(o);
                        }
                    });
                } else {
                    let c = members.pop().expect("one member");
                    tokio::spawn(async move {
                        let mut outcome = attempt(&target, &c, &clock).await;
                        outcome.probe = open;
                        let _ = done.send(outcome);
                    });
                }
            }
            if open {
                // Open: nothing but the probe is attempted; the rest waits in the database,
                // its attempts not spent.
                stale.extend(state.ready.drain(..).filter(|c| c.lease_until > now));
            }
        }
        started
    }

    /// Reads which breakers are open (and when each may be probed) when an attempt failed or
    /// a probe ended since the last read, once no outcome waits to be recorded.
    async fn read_breakers(&mut self) -> Result<(), StoreError> {
        if !self.breakers_stale || !self.finished.is_empty() {
            return Ok(());
        }
        let open = self.store.open_breakers().await?;
        for (id, state) in &mut self.subs {
            let was_open = state.probe_at.is_some();
            state.probe_at = open.get(id).copied();
            // Closed (here, or by another node's probe or a Test): its backlog is due.
            self.more_due |= was_open && state.probe_at.is_none();
        }
        self.breakers_stale = false;
        Ok(())
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
                    probe_at: old.probe_at,
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
        // What the sender keeps per subscription (tokens, TLS clients) goes with it.
        self.sender.retain(|id| next.contains_key(id));
        self.subs = next;
        self.release(unstarted).await;
        self.refreshed = Some((Instant::now(), version));
        // Other nodes' attempts open and close breakers too: read again once this step's
        // outcomes are recorded (not before: a probe's outcome taken but not yet written would
        // be read as the breaker still open, with its past probe time).
        self.breakers_stale = true;
        Ok(())
    }
}
