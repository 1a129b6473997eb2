//! PostgreSQL's writer: an async task owning one connection. What to write is decided in
//! `store/group.rs`, shared with SQLite's writer; this file only runs the statements (each a
//! network round trip, so rows go many to a statement).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{Connection, Executor, Row};
use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;

use super::super::group::{
    self, ClaimJob, ClaimRow, Command, Committed, Group, Health, NewDelivery, NewEventRow,
    OutboxSub, Stored, fixed_chunks, sql,
};
use super::{Conn, DIALECT, Db, IngestJob, Outcome, now_millis};
use crate::event::{Event, Timestamp};
use crate::store::{Claimed, DeliveryStatus};

type Q<'q> = Query<'q, Db, PgArguments>;

/// Starts the writer task on `conn`; the returned receiver resolves when it has committed its
/// last turn and closed the connection.
pub(super) fn spawn(
    mut conn: Conn,
    mut rx: mpsc::Receiver<Command>,
    wake: Arc<Notify>,
) -> oneshot::Receiver<()> {
    let (done, finished) = oneshot::channel();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let (group, stopping) = Group::collect(first, &mut rx);
            if !group.is_empty() {
                let result = commit(&mut conn, &group).await.map_err(|e| e.to_string());
                group.answer(result, &wake);
            }
            if stopping {
                break;
            }
        }
        let _ = conn.close().await;
        let _ = done.send(());
    });
    finished
}

async fn commit(conn: &mut Conn, group: &Group) -> Result<Committed, sqlx::Error> {
    conn.execute(DIALECT.begin_write).await?;
    let result = match write(conn, group).await {
        Ok(done) => conn.execute("COMMIT").await.map(|_| done),
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = conn.execute("ROLLBACK").await;
    }
    result
}

async fn write(conn: &mut Conn, group: &Group) -> Result<Committed, sqlx::Error> {
    if let (true, Some(sql)) = (group.relaxed(), DIALECT.relax_in_transaction) {
        conn.execute(sql).await?;
    }
    let now = now_millis();
    let (ingests, added) = write_ingests(conn, &group.jobs(), now).await?;
    record_outcomes(conn, &group.sorted_outcomes(), now).await?;
    let mut claims = Vec::with_capacity(group.claims.len());
    for ClaimJob(subs, lease_until, _) in &group.claims {
        claims.push(claim(conn, subs, *lease_until, now).await?);
    }
    let deliveries_added = added || !group.outcomes.is_empty();
    if let (true, Some(notify)) = (deliveries_added, DIALECT.notify) {
        // Other nodes' dispatchers wake when this commits.
        conn.execute(notify).await?;
    }
    Ok(Committed {
        ingests,
        claims,
        deliveries_added,
    })
}

fn decode(e: impl std::error::Error + Send + Sync + 'static) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(e))
}

async fn write_ingests(
    conn: &mut Conn,
    jobs: &[&IngestJob],
    received_at: i64,
) -> Result<(Vec<group::JobResult>, bool), sqlx::Error> {
    if jobs.is_empty() {
        return Ok((Vec::new(), false));
    }
    // Every tenant of the group is locked in one order, so that nodes writing at once wait on
    // each other but never deadlock; the lock serialises sequences per tenant.
    let mut last = BTreeMap::new();
    let tenants: BTreeSet<&str> = jobs.iter().map(|j| j.tenant.as_str()).collect();
    for tenant in tenants {
        let row = sqlx::query(DIALECT.lock_tenant)
            .bind(tenant)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(row) = row {
            last.insert(tenant, row.get::<i64, _>(0));
        }
    }
    let stored = find_stored(conn, jobs).await?;
    let decided = group::decide_ingests(jobs, last, &stored, Timestamp::now());
    for chunk in fixed_chunks(&decided.added) {
        insert_events(conn, chunk, received_at).await?;
    }
    // Per tenant with new events: their outbox rows, and its new last sequence.
    let mut deliveries = 0;
    for (&tenant, seq) in &decided.advanced {
        let subs = enabled_subscriptions(conn, tenant).await?;
        let rows = group::outbox(&decided.added, tenant, &subs);
        for chunk in fixed_chunks(&rows) {
            insert_deliveries(conn, chunk, received_at).await?;
        }
        deliveries += rows.len();
        sqlx::query(sql::SET_LAST_SEQUENCE)
            .bind(seq)
            .bind(tenant)
            .execute(&mut *conn)
            .await?;
    }
    Ok((decided.results, deliveries > 0))
}

/// `(sequence, body)` of `tenant`'s events whose id, or sequence, is in the array `$2`. The
/// array is joined, not spelled out as an `IN` list: one statement shape for any length, and a
/// plan of index lookups whatever the table's statistics say (a table that grew since its last
/// ANALYZE made an `IN` list of hundreds scan the tenant's whole log).
const FIND_STORED: &str = "SELECT e.sequence, e.body FROM unnest($2::text[]) AS k(id) \
    JOIN events e ON e.tenant_id = $1 AND e.id = k.id";
const CLAIMED_BODIES: &str = "SELECT e.sequence, e.body FROM unnest($2::int8[]) AS k(seq) \
    JOIN events e ON e.tenant_id = $1 AND e.sequence = k.seq";

async fn sequences_and_bodies<T>(
    conn: &mut Conn,
    sql: &str,
    tenant: &str,
    values: &[T],
) -> Result<Vec<(i64, String)>, sqlx::Error>
where
    for<'q> &'q [T]: sqlx::Encode<'q, Db> + sqlx::Type<Db>,
    T: Sync,
{
    let rows = sqlx::query(sql)
        .bind(tenant)
        .bind(values)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

async fn find_stored<'a>(
    conn: &mut Conn,
    jobs: &[&'a IngestJob],
) -> Result<Stored<'a>, sqlx::Error> {
    let mut found = HashMap::new();
    for (tenant, ids) in group::given_ids(jobs) {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        for (sequence, body) in sequences_and_bodies(conn, FIND_STORED, tenant, &ids).await? {
            let event = Event::from_canonical_json(&body).map_err(decode)?;
            found.insert((tenant, event.id), (sequence, event));
        }
    }
    Ok(found)
}

async fn insert_events(
    conn: &mut Conn,
    rows: &[NewEventRow<'_>],
    received_at: i64,
) -> Result<(), sqlx::Error> {
    let values = sql::values(rows.len(), sql::INSERT_EVENTS_COLUMNS, 1);
    let text = format!("{}{values}", sql::INSERT_EVENTS);
    let mut q: Q = sqlx::query(&text);
    for r in rows {
        q = q
            .bind(r.tenant)
            .bind(r.sequence)
            .bind(r.id.to_string())
            .bind(r.event.creation.as_i64())
            .bind(i64::from(r.event.category))
            .bind(i64::from(r.event.code))
            .bind(r.event.username())
            .bind(received_at)
            .bind(r.event.to_canonical_json());
    }
    q.execute(&mut *conn).await?;
    Ok(())
}

async fn enabled_subscriptions(
    conn: &mut Conn,
    tenant: &str,
) -> Result<Vec<OutboxSub>, sqlx::Error> {
    let rows = sqlx::query(sql::ENABLED_SUBSCRIPTIONS)
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|row| group::outbox_sub(row.get(0), row.get(1)).map_err(decode))
        .collect()
}

async fn insert_deliveries(
    conn: &mut Conn,
    rows: &[NewDelivery<'_>],
    now: i64,
) -> Result<(), sqlx::Error> {
    let values = sql::values(rows.len(), sql::INSERT_DELIVERIES_COLUMNS, 1);
    let text = format!("{}{values}", sql::INSERT_DELIVERIES);
    let mut q: Q = sqlx::query(&text);
    for d in rows {
        q = q
            .bind(d.tenant)
            .bind(d.subscription_id)
            .bind(&d.event_id)
            .bind(d.sequence)
            .bind(d.agent)
            .bind(DeliveryStatus::Pending.as_str())
            .bind(now)
            .bind(now)
            .bind(now);
    }
    q.execute(&mut *conn).await?;
    Ok(())
}

/// A delivery's new state after an attempt, as one array per column.
#[derive(Default)]
struct UpdateColumns<'a> {
    id: Vec<i64>,
    status: Vec<&'a str>,
    attempt: Vec<i64>,
    round: Vec<i64>,
    next_at: Vec<Option<i64>>,
    code: Vec<Option<i64>>,
    error: Vec<Option<&'a str>>,
}

/// `$1` is the time; the columns follow as arrays, in the order of [`UpdateColumns`].
const UPDATE_DELIVERIES: &str = "UPDATE deliveries SET status = v.status, \
    attempt_count = GREATEST(deliveries.attempt_count, v.attempt), round_attempts = v.round, \
    next_attempt_at = v.next_at, lease_until = NULL, last_status_code = v.code, \
    last_error = v.error, updated_at = $1 \
    FROM unnest($2::int8[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], \
      $8::text[]) AS v(id, status, attempt, round, next_at, code, error) \
    WHERE deliveries.id = v.id";

/// Attempts and their deliveries' new state, a chunk of rows per statement; then each
/// subscription's health. `outcomes` is sorted by subscription, so rows are locked in one order.
async fn record_outcomes(
    conn: &mut Conn,
    outcomes: &[&Outcome],
    now: i64,
) -> Result<(), sqlx::Error> {
    for chunk in fixed_chunks(outcomes) {
        let values = sql::values(chunk.len(), sql::INSERT_ATTEMPTS_COLUMNS, 1);
        let text = format!(
            "{}{values}{}",
            sql::INSERT_ATTEMPTS,
            sql::INSERT_ATTEMPTS_TAIL
        );
        let mut q: Q = sqlx::query(&text);
        for o in chunk {
            q = q
                .bind(o.delivery_id)
                .bind(i64::from(o.attempt))
                .bind(o.started_at)
                .bind(o.duration_ms)
                .bind(o.status_code.map(i64::from))
                .bind(&o.error)
                .bind(&o.response_body);
        }
        q.execute(&mut *conn).await?;

        // Arrays joined, not a VALUES list: see `FIND_STORED`.
        let mut v = UpdateColumns::default();
        for o in chunk {
            let (status, next_at) = group::delivery_state(o);
            v.id.push(o.delivery_id);
            v.status.push(status.as_str());
            v.attempt.push(i64::from(o.attempt));
            v.round.push(i64::from(o.round_attempt));
            v.next_at.push(next_at);
            v.code.push(o.status_code.map(i64::from));
            v.error.push(o.error.as_deref());
        }
        let q = sqlx::query(UPDATE_DELIVERIES)
            .bind(now)
            .bind(&v.id)
            .bind(&v.status)
            .bind(&v.attempt)
            .bind(&v.round)
            .bind(&v.next_at)
            .bind(&v.code)
            .bind(&v.error);
        q.execute(&mut *conn).await?;
    }
    for (sub, verdict) in group::health(outcomes) {
        match verdict {
            Health::Disable(reason) => {
                sqlx::query(sql::DISABLE)
                    .bind(reason)
                    .bind(now)
                    .bind(sub)
                    .execute(&mut *conn)
                    .await?;
            }
            Health::Reset => {
                sqlx::query(sql::RESET_FAILURES)
                    .bind(sub)
                    .execute(&mut *conn)
                    .await?;
            }
            Health::Failing(failures) => {
                sqlx::query(sql::COUNT_FAILURES)
                    .bind(now)
                    .bind(failures)
                    .bind(sub)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(sql::DISABLE_IF_FAILING)
                    .bind(now)
                    .bind(sub)
                    .bind(group::AUTO_DISABLE_ATTEMPTS)
                    .bind(now - group::AUTO_DISABLE_AFTER_MS)
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    Ok(())
}

/// Leases up to `n` due deliveries of each subscription and returns them with their bodies.
async fn claim(
    conn: &mut Conn,
    subs: &[(String, u32)],
    lease_until: i64,
    now: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let mut out = Vec::new();
    let mut bodies = group::Bodies::new();
    for (sub_id, n) in subs {
        let rows: Vec<ClaimRow> = sqlx::query(DIALECT.claim)
            .bind(lease_until)
            .bind(sub_id)
            .bind(now)
            .bind(i64::from(*n))
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| ClaimRow {
                delivery_id: r.get(0),
                tenant: r.get(1),
                event_id: r.get(2),
                sequence: r.get(3),
                attempts: r.get(4),
                round_attempts: r.get(5),
                created_at: r.get(6),
            })
            .collect();
        let Some(tenant) = rows.first().map(|r| r.tenant.clone()) else {
            continue;
        };
        let known = bodies.entry(tenant).or_default();
        let missing = group::missing_bodies(&rows, known);
        if !missing.is_empty() {
            let tenant = &rows[0].tenant;
            for (sequence, body) in
                sequences_and_bodies(conn, CLAIMED_BODIES, tenant, &missing).await?
            {
                known.insert(sequence, body.into());
            }
        }
        out.extend(group::claimed(sub_id, rows, known).ok_or(sqlx::Error::RowNotFound)?);
    }
    out.sort_by_key(|c| c.sequence);
    Ok(out)
}
