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
