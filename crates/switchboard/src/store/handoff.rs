//! Between the writer and this node's dispatcher: the wake-up after a commit, and the
//! deliveries ingest hands straight to the dispatcher. (And the signal this node's streams
//! wait on, [`Handoff::commits`], which a turn the writer runs by itself — a deferred fold of
//! the agents projection — sends too.)
//!
//! A delivery ingest creates is due at once. Rather than committing it unleased, waking the
//! dispatcher, and having the dispatcher claim it back in a turn of its own (an update of the
//! row, and a read of the event's body), ingest commits it already leased to this node — in
//! the same insert — and hands it over with the body it just wrote, once the commit is done.
//! The lease is in the row exactly as a claim's would be: other nodes skip it, and after a
//! crash it expires and the delivery is due again, as at-least-once allows.
//!
//! The dispatcher says how many it takes, per subscription ([`Handoff::offer`]): only for
//! subscriptions it would claim for in bulk (no rate limit, no coalescing, no per-agent order),
//! and what it would claim then. (A turn may take an offer while a claim fills the same room:
//! the ready queue then holds up to about twice that, and a delivery whose lease ran short
//! there is given back rather than attempted: see the dispatcher's `start_ready`.) Everything else stays on the claim path: a commit that adds
//! deliveries nobody took marks them [`Handoff::due`], and the dispatcher claims.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, futures::Notified, mpsc, watch};

use super::Claimed;
use super::conn::HeldClaim;

/// The dispatcher's side of the writer; one per store.
pub struct Handoff {
    notify: Notify,
    /// Deliveries may be due that nobody holds: the dispatcher should claim.
    due: AtomicBool,
    /// Bumped on every subscription change made through this store (and, on PostgreSQL, on
    /// every node's).
    version: AtomicU64,
    room: Mutex<Room>,
    tx: mpsc::UnboundedSender<Vec<Claimed>>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Vec<Claimed>>>>,
    /// Per tenant with a stream waiting: changes after its events (or agents) were committed.
    commits: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// SQLite's: per tenant, the latest lease of a claim the writer holds in memory rather than
    /// in the row (`conn::HeldClaims`), which erasure's wait cannot read in the table.
    held: Mutex<HashMap<String, i64>>,
    /// SQLite's: the claims the writer holds in memory, by delivery id (`conn::HeldClaims`).
    claims: Arc<Mutex<HashMap<i64, HeldClaim>>>,
}

/// What the dispatcher takes: per subscription, how many deliveries more, leased for how long
/// (ms, from the commit's time), as of which subscriptions version.
#[derive(Default)]
struct Room {
    subs: HashMap<String, u32>,
    lease_ms: i64,
    version: u64,
}

impl Default for Handoff {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Handoff {
            notify: Notify::new(),
            due: AtomicBool::new(true),
            version: AtomicU64::new(0),
            room: Mutex::default(),
            tx,
            rx: Mutex::new(Some(rx)),
            commits: Mutex::default(),
            held: Mutex::default(),
            claims: Arc::default(),
        }
    }
}

impl Handoff {
    /// The claims the writer holds in memory.
    pub(super) fn held_claims(&self) -> Arc<Mutex<HashMap<i64, HeldClaim>>> {
        self.claims.clone()
    }

    /// Lets go of the claims held in memory of deliveries `ids`, given back unattempted.
    pub(super) fn let_go(&self, ids: &[i64]) {
        let mut claims = super::conn::lock(&self.claims);
        for id in ids {
            claims.remove(id);
        }
    }

    /// The writer holds a claim of `tenant`'s under `lease_until` in memory.
    pub(super) fn note_held(&self, tenant: &str, lease_until: i64) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.get_mut(tenant) {
            Some(latest) => *latest = (*latest).max(lease_until),
            None => {
                held.insert(tenant.to_string(), lease_until);
            }
        }
    }

    /// Forgets the tenants whose latest held lease ran out by `now` (a deleted tenant's too).
    pub(super) fn forget_held(&self, now: i64) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|_, &mut latest| latest > now);
    }

    /// The latest lease under which the writer may still hold a claim of `tenant`'s in memory,
    /// if it runs out after `now`.
    pub(super) fn held_lease(&self, tenant: &str, now: i64) -> Option<i64> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(tenant).copied().filter(|&l| l > now)
    }

    /// Changes after `tenant`'s events or agents were committed by this node (on PostgreSQL,
    /// by any node: see `postgres::listen`).
    pub fn commits(&self, tenant: &str) -> watch::Receiver<u64> {
        let mut commits = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        commits
            .entry(tenant.to_string())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe()
    }

    /// Wakes the streams of `tenant` (`None`: of every tenant). Only that tenant's streams
    /// wake, so one tenant's ingest costs another's idle streams nothing.
    pub fn committed(&self, tenant: Option<&str>) {
        let mut commits = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        commits.retain(|_, tx| tx.receiver_count() > 0);
        let bump = |tx: &watch::Sender<u64>| tx.send_modify(|n| *n = n.wrapping_add(1));
        match tenant {
            Some(tenant) => commits.get(tenant).into_iter().for_each(bump),
            None => commits.values().for_each(bump),
        }
    }

    /// Deliveries may have become due that nobody holds: the dispatcher wakes and claims.
    pub fn due(&self) {
        self.due.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// Whether [`Handoff::due`] was said since the last call.
    pub fn take_due(&self) -> bool {
        self.due.swap(false, Ordering::SeqCst)
    }

    /// The subscriptions changed: what was offered for them is void, and the dispatcher wakes
    /// to re-read them (a subscription enabled again may have deliveries due).
    pub fn subscriptions_changed(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
        self.due();
    }

    /// Changes whenever a subscription is created, changed or deleted.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    /// Wakes the dispatcher without anything to claim (a handoff, a change to re-read).
    pub fn poke(&self) {
        self.notify.notify_one();
    }

    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// The receiving end of the handoffs, for the one dispatcher that takes them; `None` once
    /// taken.
    pub fn receiver(&self) -> Option<mpsc::UnboundedReceiver<Vec<Claimed>>> {
        self.rx.lock().expect("handoff lock").take()
    }

    /// The dispatcher takes up to `room[s]` more deliveries of subscription `s`, leased for
    /// `lease_ms` from their insert, while the subscriptions are at `version`. Replaces the
    /// last offer.
    pub fn offer(&self, room: HashMap<String, u32>, lease_ms: i64, version: u64) {
        *self.room.lock().expect("handoff lock") = Room {
            subs: room,
            lease_ms,
            version,
        };
    }

    /// Takes up to `n` of the room offered for `subscription`; returns how many, and the
    /// lease's length (ms).
    /// Nothing once the subscriptions changed since the offer: the dispatcher decides again on
    /// what it knows then.
    pub(super) fn take(&self, subscription: &str, n: u32) -> (u32, i64) {
        let mut room = self.room.lock().expect("handoff lock");
        if room.version != self.version() {
            return (0, 0);
        }
        let lease_ms = room.lease_ms;
        match room.subs.get_mut(subscription) {
            Some(left) => {
                let took = n.min(*left);
                *left -= took;
                (took, lease_ms)
            }
            None => (0, 0),
        }
    }

    /// Hands committed, leased deliveries to the dispatcher.
    pub(super) fn hand(&self, claimed: Vec<Claimed>) {
        if claimed.is_empty() {
            return;
        }
        // No dispatcher to take them (it stopped): their leases expire and they are claimed.
        let _ = self.tx.send(claimed);
        self.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_taken_once_and_only_at_the_offered_version() {
        let h = Handoff::default();
        assert_eq!(h.take("s", 5), (0, 0), "nothing offered yet");
        h.offer(HashMap::from([("s".to_string(), 3)]), 1_000, h.version());
        assert_eq!(h.take("t", 5), (0, 0), "not offered for t");
        assert_eq!(h.take("s", 2), (2, 1_000));
        assert_eq!(h.take("s", 2), (1, 1_000));
        assert_eq!(h.take("s", 2), (0, 1_000));
        h.offer(HashMap::from([("s".to_string(), 3)]), 1_000, h.version());
        h.subscriptions_changed();
        assert_eq!(
            h.take("s", 1),
            (0, 0),
            "the subscriptions changed since the offer"
        );
    }

    #[test]
    fn due_is_said_once() {
        let h = Handoff::default();
        assert!(h.take_due(), "at start everything may be due");
        assert!(!h.take_due());
        h.due();
        assert!(h.take_due());
        assert!(!h.take_due());
    }
}
