//! What a writer's connection offers the turn (`turn.rs`) and the work it runs inside a turn
//! (`agents.rs`, `retention.rs`): statements with bound arguments, the transaction, and the
//! few operations whose SQL differs between the dialects. SQLite's writer (a thread) and
//! PostgreSQL's (a task) each implement it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use uuid::Uuid;

use super::db::{Arg, Dialect, Row};
use super::decide::{INSERT_CHUNKS, OutboxSub};
use super::sql::MultiRow;
use super::{Outcome, StoreError};

/// What a writer remembers of the enabled subscriptions between turns, by tenant and id: each
/// decoded (or `None`: it does not decode), with the stamp it was decoded at (`updated_at`, and
/// the stored form's length).
pub(super) type Subscriptions =
    HashMap<String, HashMap<String, ((i64, i64), Option<Arc<OutboxSub>>)>>;

/// Where a subscription's claims have got to: the due order `(next_attempt_at, sequence)` of
/// the last delivery claimed, and when (unix ms) the claims last walked from the start.
#[derive(Clone, Copy, Debug)]
pub(super) struct ClaimCursor {
    pub after: (i64, i64),
    pub walked_at: i64,
}

pub(super) type ClaimCursors = HashMap<String, ClaimCursor>;

/// A claim SQLite's writer holds in memory instead of in its row (`sql::CLAIM_HELD`): the lease
/// the attempt is made under, and the row's `lease_until` as the claim read it. A requeue
/// changes that value (`sql::requeued_lease!`), so the attempt's outcome, fenced with it, no
/// longer ends the delivery's fresh round, and the walk from the start may claim it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct HeldClaim {
    pub lease_until: i64,
    pub seen: Option<i64>,
}

/// How long (ms) after its lease ran out a claim held in memory is still known (see
/// [`HeldClaims::sweep`]).
const HELD_AFTER_LEASE_MS: i64 = 60_000;

/// The claims SQLite's writer holds, by delivery id, shared with the `sb_held` function its
/// connection's claims call and with `Store::release_leases` (through the `Handoff`); and what
/// the open turn changed of them, undone if it rolls back. The lock is never held across a
/// statement (the function takes it).
pub(super) struct HeldClaims {
    claims: Arc<std::sync::Mutex<HashMap<i64, HeldClaim>>>,
    undo: Vec<(i64, Option<HeldClaim>)>,
    /// When those whose lease ran out were last dropped.
    swept_at: i64,
}

impl HeldClaims {
    pub fn new(claims: Arc<std::sync::Mutex<HashMap<i64, HeldClaim>>>) -> Self {
        HeldClaims {
            claims,
            undo: Vec::new(),
            swept_at: 0,
        }
    }

    /// The map `sb_held` reads.
    pub fn shared(&self) -> Arc<std::sync::Mutex<HashMap<i64, HeldClaim>>> {
        self.claims.clone()
    }

    /// Holds `claims` (delivery id, claim).
    pub fn hold(&mut self, claims: impl IntoIterator<Item = (i64, HeldClaim)>) {
        let mut held = lock(&self.claims);
        for (id, claim) in claims {
            self.undo.push((id, held.insert(id, claim)));
        }
    }

    /// The fence for the outcome of delivery `id`'s attempt made under `lease_until`: while
    /// this writer still holds that claim, the value its claim read (and the claim is let go);
    /// otherwise `None`, and the lease in the row fences it.
    pub fn release(&mut self, id: i64, lease_until: i64) -> Option<Option<i64>> {
        let mut held = lock(&self.claims);
        match held.get(&id) {
            Some(c) if c.lease_until == lease_until => {
                let c = held.remove(&id);
                self.undo.push((id, c));
                c.map(|c| c.seen)
            }
            _ => None,
        }
    }

    /// Drops the claims whose lease ran out a minute before `now`, at most once per `every` ms
    /// (each leaves the map when its outcome is recorded; these were never recorded). A lease
    /// run out frees the row at once (`holds`); the claim stays known a while longer so that a
    /// late outcome, if nobody claimed the delivery since, still ends it, as a lease in the row
    /// would let it.
    /// The tenants' latest held leases that ran out go from `wake` at the same time.
    pub fn sweep(&mut self, now: i64, every: i64, wake: &super::Handoff) {
        if now.saturating_sub(self.swept_at) < every && now >= self.swept_at {
            return;
        }
        self.swept_at = now;
        let before = now.saturating_sub(HELD_AFTER_LEASE_MS);
        lock(&self.claims).retain(|_, c| c.lease_until >= before);
        wake.forget_held(now);
    }

    /// The turn committed: its changes stay.
    pub fn committed(&mut self) {
        self.undo.clear();
    }

    /// The turn rolled back: its claims are let go, and the claims its outcomes let go are
    /// held again.
    pub fn rolled_back(&mut self) {
        let mut held = lock(&self.claims);
        while let Some((id, before)) = self.undo.pop() {
            match before {
                Some(c) => held.insert(id, c),
                None => held.remove(&id),
            };
        }
    }
}

/// The held claims' map, locked (a panic elsewhere leaves it usable: each change is whole).
pub(super) fn lock(
    claims: &std::sync::Mutex<HashMap<i64, HeldClaim>>,
) -> std::sync::MutexGuard<'_, HashMap<i64, HeldClaim>> {
    claims
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether delivery `id`, whose row reads `lease_until`, is held at `now`: by a claim whose
/// lease has not run out, made since the last requeue.
pub(super) fn holds(
    claims: &HashMap<i64, HeldClaim>,
    id: i64,
    lease_until: Option<i64>,
    now: i64,
) -> bool {
    claims
        .get(&id)
        .is_some_and(|c| c.lease_until >= now && c.seen == lease_until)
}

/// One writer connection, inside or outside its transaction.
pub(super) trait Conn {
    fn dialect(&self) -> &'static Dialect;
    /// The subscriptions this writer has decoded (see `turn::enabled_subscriptions`).
    fn subscriptions(&mut self) -> &mut Subscriptions;
    /// Where this writer's recent claims ended, by subscription (SQLite's; see `turn::claim`).
    /// `None`: every claim walks its subscription's due deliveries from the start.
    fn claim_cursors(&mut self) -> Option<&mut ClaimCursors> {
        None
    }
    /// The claims this writer holds in memory (SQLite's; see `turn::claim`), and where the
    /// latest lease of each tenant's is told to erasure's wait. `None`: every claim writes its
    /// lease in the row.
    fn held(&mut self) -> Option<(&mut HeldClaims, &super::Handoff)> {
        None
    }
    /// Starts the turn's transaction; its commit waits for the disk only if `durable`.
    async fn begin(&mut self, durable: bool) -> Result<(), StoreError>;
    /// Commits the turn, sending `announce` (PostgreSQL's notifications, which go out when
    /// the transaction commits) in the same round trip; SQLite has none.
    async fn commit(&mut self, announce: &[String]) -> Result<(), StoreError>;
    /// Undoes the turn; errors are only logged (the connection may be gone).
    async fn rollback(&mut self);
    async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError>;
    async fn query(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError>;
    /// `(sequence, body)` of `tenant`'s stored events among `ids`.
    async fn stored(
        &mut self,
        tenant: &str,
        ids: &[Uuid],
    ) -> Result<Vec<(i64, String)>, StoreError>;
    /// [`Conn::stored`] for each tenant of `given`: `(tenant, sequence, body)`. By default
    /// (SQLite: local calls, and recent ids answered from memory) one tenant after another;
    /// PostgreSQL's writer asks for a turn's tenants in one statement.
    async fn stored_of(
        &mut self,
        given: &BTreeMap<&str, Vec<Uuid>>,
    ) -> Result<Vec<(String, i64, String)>, StoreError> {
        stored_each(self, given).await
    }
    /// The stored agents of each tenant of `wanted` (its usernames): `(tenant, username,
    /// state)`. By default (SQLite: local calls) one tenant after another, through the `IN`
    /// lists of `agents::read_states`; PostgreSQL's writer asks for a turn's tenants in one
    /// statement.
    async fn agents_of(
        &mut self,
        wanted: &BTreeMap<&str, Vec<&str>>,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        super::agents::states_each(self, wanted).await
    }
    /// The bodies of `tenant`'s events stored under `sequences`, with when each was received
    /// and the trace context stored with it.
    async fn bodies(&mut self, tenant: &str, sequences: &[i64])
    -> Result<Vec<BodyRow>, StoreError>;
    /// Inserts the rows of `statement` whose values, `statement.columns` a row, are `values`.
    /// By default (SQLite) in chunks of the sizes of `INSERT_CHUNKS`, each one of a few
    /// prepared statements; PostgreSQL's writer sends one statement joining one array per
    /// column, however many rows: one round trip.
    async fn insert(
        &mut self,
        statement: &'static MultiRow,
        values: &[Arg<'_>],
    ) -> Result<u64, StoreError> {
        insert_chunked(self, statement, values).await
    }
    /// [`Conn::insert`] of a statement that returns rows (`RETURNING`): the rows, in no
    /// particular order.
    async fn insert_returning(
        &mut self,
        statement: &'static MultiRow,
        values: &[Arg<'_>],
    ) -> Result<Vec<Row>, StoreError> {
        insert_chunked_rows(self, statement, values).await
    }
    /// The new state of each outcome's delivery (see `decide::delivery_state`).
    async fn update_deliveries(
        &mut self,
        now: i64,
        outcomes: &[&Outcome],
    ) -> Result<(), StoreError>;
}

/// A stored row that does not decode.
/// A stored event as a claim reads it for its deliveries.
pub(super) struct BodyRow {
    pub sequence: i64,
    pub body: String,
    /// Unix ms.
    pub received_at: i64,
    /// The trace context stored with it (DESIGN §21).
    pub trace: Option<crate::otel::TraceContext>,
}

pub(super) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(format!("a stored row does not decode: {e}"))
}

/// [`Conn::insert`] in chunks of the sizes of [`INSERT_CHUNKS`].
pub(super) async fn insert_chunked<C: Conn + ?Sized>(
    conn: &mut C,
    statement: &'static MultiRow,
    values: &[Arg<'_>],
) -> Result<u64, StoreError> {
    let columns = statement.columns;
    let (mut rest, mut inserted) = (values, 0);
    for size in INSERT_CHUNKS {
        while rest.len() >= size * columns {
            let (chunk, tail) = rest.split_at(size * columns);
            inserted += conn.execute(&statement.text(size), chunk).await?;
            rest = tail;
        }
    }
    debug_assert!(rest.is_empty(), "values are not whole rows");
    Ok(inserted)
}

/// [`Conn::stored_of`], one tenant after another.
pub(super) async fn stored_each<C: Conn + ?Sized>(
    conn: &mut C,
    given: &BTreeMap<&str, Vec<Uuid>>,
) -> Result<Vec<(String, i64, String)>, StoreError> {
    let mut found = Vec::new();
    for (tenant, ids) in given {
        for (sequence, body) in conn.stored(tenant, ids).await? {
            found.push((tenant.to_string(), sequence, body));
        }
    }
    Ok(found)
}

/// [`Conn::insert_returning`] in chunks of the sizes of [`INSERT_CHUNKS`].
pub(super) async fn insert_chunked_rows<C: Conn + ?Sized>(
    conn: &mut C,
    statement: &'static MultiRow,
    values: &[Arg<'_>],
) -> Result<Vec<Row>, StoreError> {
    let columns = statement.columns;
    let (mut rest, mut rows) = (values, Vec::new());
    for size in INSERT_CHUNKS {
        while rest.len() >= size * columns {
            let (chunk, tail) = rest.split_at(size * columns);
            rows.extend(conn.query(&statement.text(size), chunk).await?);
            rest = tail;
        }
    }
    debug_assert!(rest.is_empty(), "values are not whole rows");
    Ok(rows)
}

#[cfg(test)]
mod held_tests {
    use super::*;

    fn claim(lease_until: i64) -> HeldClaim {
        HeldClaim {
            lease_until,
            seen: None,
        }
    }

    /// A turn rolled back undoes what it did to the claims held: those it took are let go,
    /// those its outcomes let go are held again; a committed turn's changes stay.
    #[test]
    fn a_rolled_back_turn_undoes_its_claims_and_outcomes() {
        let mut held = HeldClaims::new(Arc::default());
        let shared = held.shared();
        held.hold([(1, claim(100))]);
        held.committed();
        held.hold([(2, claim(200))]);
        assert_eq!(
            held.release(1, 100),
            Some(None),
            "the outcome's fence: the value read"
        );
        assert_eq!(held.release(1, 100), None, "let go once");
        held.rolled_back();
        let claims = shared.lock().unwrap().clone();
        assert_eq!(claims, HashMap::from([(1, claim(100))]));
        assert_eq!(
            held.release(1, 99),
            None,
            "another claim's outcome is not fenced by it"
        );
    }

    /// A sweep drops the claims a minute past their lease, and the tenants whose latest held
    /// lease ran out (erasure's wait no longer needs them; a deleted tenant's would stay).
    #[test]
    fn a_sweep_forgets_claims_and_tenants_whose_leases_ran_out() {
        let wake = super::super::Handoff::default();
        let mut held = HeldClaims::new(Arc::default());
        let shared = held.shared();
        held.hold([(1, claim(100)), (2, claim(200_000))]);
        held.committed();
        wake.note_held("gone", 100);
        wake.note_held("busy", 200_000);
        assert_eq!(wake.held_lease("gone", 0), Some(100));
        held.sweep(100_000, 1_000, &wake);
        let claims = shared.lock().unwrap().clone();
        assert_eq!(claims, HashMap::from([(2, claim(200_000))]));
        assert_eq!(wake.held_lease("busy", 100_000), Some(200_000));
        // Asked as of before its lease ended, the forgotten tenant has none left.
        assert_eq!(wake.held_lease("gone", 0), None, "forgotten");
    }

    /// A claim is held while its lease lasts and its row reads what the claim read; a requeue
    /// (another value) or the lease's end frees it.
    #[test]
    fn a_claim_is_held_until_its_lease_ends_or_a_requeue() {
        let claims = HashMap::from([(7, claim(100))]);
        assert!(holds(&claims, 7, None, 100));
        assert!(!holds(&claims, 7, None, 101), "the lease ran out");
        assert!(!holds(&claims, 7, Some(-1), 50), "requeued since");
        assert!(!holds(&claims, 8, None, 50), "not held");
    }
}
