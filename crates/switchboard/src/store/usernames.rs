//! The log by username (DESIGN §23): `events_by_username (tenant_id, username, sequence)`, kept
//! beside the log rather than as an index on it.
//!
//! An index on `events (tenant_id, username, sequence)` is written with every event: each
//! commit touches a page per agent in it, and batch ingest fell by half (docs/BENCHMARKS.md).
//! Instead the writer copies the new events' `(username, sequence)` into `events_by_username`
//! about once a second ([`INDEX_TICK`]), a batch per tenant in username order — a page per agent
//! per second — and moves `tenants.usernames_through` along. A page of one username's events
//! ([`page`]) reads the table up to there, joined to the log, then scans only the log's tail
//! after it: about a second of the tenant's events.

use std::time::Duration;

use super::StoreError;
use super::conn::Conn;
use super::db::{Select, args};

/// How often the writer brings `events_by_username` up to date.
pub(crate) const INDEX_TICK: Duration = Duration::from_secs(1);
/// Most events of one tenant copied in one turn (a log from before the table catches up a
/// batch a second).
const INDEX_BATCH: i64 = 100_000;

/// How far `tenant`'s events are in `events_by_username`.
pub(super) const THROUGH: &str = "SELECT usernames_through FROM tenants WHERE id = $1";

/// Brings `events_by_username` up to date for every tenant whose row this turn can lock (on
/// PostgreSQL, another node's turn may hold one: it is done next time).
pub(super) async fn index<C: Conn>(conn: &mut C) -> Result<(), StoreError> {
    let behind = conn
        .query(
            &format!(
                "SELECT id, usernames_through, last_sequence FROM tenants \
                 WHERE usernames_through < last_sequence ORDER BY id{}",
                conn.dialect().skip_locked
            ),
            &[],
        )
        .await?;
    for mut row in behind {
        let (tenant, from, last) = (row.text(0)?, row.int(1)?, row.int(2)?);
        let to = last.min(from.saturating_add(INDEX_BATCH));
        conn.execute(
            "INSERT INTO events_by_username (tenant_id, username, sequence) \
             SELECT tenant_id, username, sequence FROM events WHERE tenant_id = $1 \
             AND sequence > $2 AND sequence <= $3 AND username IS NOT NULL \
             ORDER BY username, sequence ON CONFLICT DO NOTHING",
            &args![tenant.as_str(), from, to],
        )
        .await?;
        conn.execute(
            "UPDATE tenants SET usernames_through = $1 WHERE id = $2 AND usernames_through < $1",
            &args![to, tenant.as_str()],
        )
        .await?;
    }
    Ok(())
}

/// Which of a page's two statements.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    /// From `events_by_username`, up to the tenant's `usernames_through`.
    Indexed,
    /// The log's tail after it.
    Tail,
}

/// One statement of a page of `username`'s events of `tenant` with a sequence in
/// `(after, through]`, matching what `filter` adds (on `e.` columns), in sequence order, at most
/// `limit`: the [`Part::Indexed`] first, then — for what it did not fill — the
/// [`Part::Tail`]. `indexed` is the tenant's `usernames_through`, read before either runs.
#[allow(clippy::too_many_arguments)]
pub(super) fn page<'a>(
    part: Part,
    columns: &str,
    tenant: &'a str,
    username: &'a str,
    after: i64,
    through: i64,
    indexed: i64,
    limit: i64,
    filter: impl FnOnce(&mut Select<'a>),
) -> Select<'a> {
    let mut sql;
    match part {
        Part::Indexed => {
            sql = Select::new(&format!(
                "SELECT {columns} FROM events_by_username byname JOIN events e \
                 ON e.tenant_id = byname.tenant_id AND e.sequence = byname.sequence"
            ));
            sql.push(" WHERE byname.tenant_id = ", tenant)
                .push(" AND byname.username = ", username)
                .push(" AND byname.sequence > ", after)
                .push(" AND byname.sequence <= ", through.min(indexed));
            filter(&mut sql);
            sql.push(" ORDER BY byname.sequence LIMIT ", limit);
        }
        Part::Tail => {
            sql = Select::new(&format!("SELECT {columns} FROM events e"));
            sql.push(" WHERE e.tenant_id = ", tenant)
                .push(" AND e.sequence > ", after.max(indexed))
                .push(" AND e.sequence <= ", through)
                .push(" AND e.username = ", username);
            filter(&mut sql);
            sql.push(" ORDER BY e.sequence LIMIT ", limit);
        }
    }
    sql
}
