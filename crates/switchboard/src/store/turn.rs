//! The writer turn, written once for both backends. One turn commits a [`Group`] — every
//! command queued when the writer came round — in one transaction:
//!
//! 1. lock the group's tenants (in one order) and read their last sequences;
//! 2. find the events already stored under the `Id`s the producers gave;
//! 3. decide (`decide.rs`): duplicates, conflicts, the new events' sequences;
//! 4. insert the new events and their outbox rows (one delivery per matching subscription);
//! 5. write back finished attempts, their deliveries' new state, and each subscription's health
//!    as its policy decides;
//! 6. store System events and their deliveries;
//! 7. claim due deliveries, with their bodies;
//! 8. on PostgreSQL, notify the other nodes when deliveries became due.
//!
//! A backend provides [`Conn`]: statements with bound arguments, the transaction, and the few
//! operations whose SQL differs between the dialects. SQLite's writer thread and PostgreSQL's
//! writer task both run [`run`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use uuid::Uuid;

use super::agents::Deferred;
use super::command::{ClaimJob, Committed, Group};
use super::db::{Arg, Dialect, Row, args};
use super::decide::{self, ClaimRow, NewDelivery, NewEventRow, OutboxSub, Stored, fixed_chunks};
use super::{
    Claimed, DeliveryStatus, IngestJob, NextState, Outcome, Recipients, StoreError, SystemEvent,
    agents, sql,
};
use crate::event::{Event, Timestamp};
use crate::subscription::health::{Health, Policy};

/// One writer connection, inside or outside its transaction.
pub(super) trait Conn {
    fn dialect(&self) -> &'static Dialect;
    /// Starts the turn's transaction; its commit waits for the disk only if `durable`.
    async fn begin(&mut self, durable: bool) -> Result<(), StoreError>;
    async fn commit(&mut self) -> Result<(), StoreError>;
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
    /// `(sequence, body, received_at)` of `tenant`'s events stored under `sequences`.
    async fn bodies(
        &mut self,
        tenant: &str,
        sequences: &[i64],
    ) -> Result<Vec<(i64, String, i64)>, StoreError>;
    /// The new state of each outcome's delivery (see `decide::delivery_state`).
    async fn update_deliveries(
        &mut self,
        now: i64,
        outcomes: &[&Outcome],
    ) -> Result<(), StoreError>;
}

/// Commits `group` at `now` (unix ms) in one transaction, all or nothing.
/// `deferred` is the writer's: the Agent events it has committed but not yet folded into the
/// agents projection (see `agents.rs`).
pub(super) async fn run<C: Conn>(
    conn: &mut C,
    group: &Group,
    policy: &Policy,
    now: i64,
    deferred: &mut Deferred,
) -> Result<Committed, StoreError> {
    if group.only_folds() && deferred.is_empty() {
        // The periodic fold, with nothing to fold: no transaction.
        return Ok(Committed::default());
    }
    conn.begin(group.durable()).await?;
    let written = match write(conn, group, policy, now, deferred).await {
        Ok(done) => conn.commit().await.map(|()| done),
        Err(e) => Err(e),
    };
    if written.is_err() {
        conn.rollback().await;
        deferred.forget();
    }
    written
}

async fn write<C: Conn>(
    conn: &mut C,
    group: &Group,
    policy: &Policy,
    now: i64,
    deferred: &mut Deferred,
) -> Result<Committed, StoreError> {
    let mut done = Committed::default();
    if group.pinged() {
        for probe in conn.dialect().probe {
            conn.execute(probe, &args![now]).await?;
        }
    }
    let added = ingest(conn, &group.jobs(), now, &mut done, deferred).await?;
    if group.folds || group.stopping {
        agents::fold_deferred(conn, deferred).await?;
    }
    let outcomes = group.sorted_outcomes();
    done.expired = outcomes
        .iter()
        .filter(|o| o.next == NextState::Expired)
        .count() as u64;
    record(conn, &outcomes, policy, now).await?;
    for (event, _) in &group.system {
        done.system.push(system(conn, event, now).await?);
    }
    for (job, _) in &group.claims {
        done.claims.push(claim(conn, job).await?);
    }
    for (job, _) in &group.purges {
        done.purges
            .push(super::retention::purge_batch(conn, job).await?);
    }
    for (tenant, _) in &group.catch_ups {
        done.catch_ups
            .push(agents::catch_up_batch(conn, tenant).await?);
    }
    done.deliveries_added = added || !group.outcomes.is_empty() || !group.system.is_empty();
    let events_added = !done.new_ids.is_empty() || !group.catch_ups.is_empty();
    if let (true, Some(notify)) = (done.deliveries_added || events_added, conn.dialect().notify) {
        // Other nodes' dispatchers and streams wake when this commits.
        conn.execute(notify, &[]).await?;
    }
    Ok(done)
}

pub(super) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(format!("a stored row does not decode: {e}"))
}

/// Steps 1-4 for the group's ingest requests; true if deliveries were added.
async fn ingest<C: Conn>(
    conn: &mut C,
    jobs: &[&IngestJob],
    now: i64,
    done: &mut Committed,
    deferred: &mut Deferred,
) -> Result<bool, StoreError> {
    if jobs.is_empty() {
        return Ok(false);
    }
    // Every tenant of the group is locked in one order, so that nodes writing at once wait on
    // each other but never deadlock; the lock serialises sequences per tenant.
    let mut last = BTreeMap::new();
    // Where each tenant's agents projection is (see `agents.rs`).
    let mut projected = BTreeMap::new();
    let tenants: BTreeSet<&str> = jobs.iter().map(|j| j.tenant.as_str()).collect();
    for tenant in tenants {
        let rows = conn
            .query(conn.dialect().lock_tenant, &args![tenant])
            .await?;
        if let Some(row) = rows.first() {
            last.insert(tenant, row.int(0)?);
            projected.insert(tenant, row.int(1)?);
        }
    }
    let events: usize = jobs.iter().map(|j| j.events.len()).sum();
    deferred.note(now, events);
    let mut stored: Stored = HashMap::new();
    for (tenant, ids) in decide::given_ids(jobs) {
        for (sequence, body) in conn.stored(tenant, &ids).await? {
            let event = Event::from_canonical_json(&body).map_err(corrupt)?;
            stored.insert((tenant, event.id), (sequence, event));
        }
    }
    let decided = decide::decide_ingests(jobs, last.clone(), &stored, Timestamp::now());
    for chunk in fixed_chunks(&decided.added) {
        insert_events(conn, chunk, now).await?;
    }
    // Per tenant with new events: their outbox rows, and its new last sequence.
    let mut deliveries = 0;
    for (&tenant, &seq) in &decided.advanced {
        let subs = enabled_subscriptions(conn, tenant).await?;
        let mut rows = decide::outbox(&decided.added, tenant, &subs);
        for d in decide::coalescing(&mut rows) {
            done.superseded += d.superseded as u64;
            let (ended, replaced) = supersede(conn, d, now).await?;
            done.superseded += ended;
            d.superseded += replaced;
        }
        let (coalesced, plain): (Vec<_>, Vec<_>) =
            rows.into_iter().partition(NewDelivery::coalesces);
        for chunk in fixed_chunks(&plain) {
            insert_deliveries(conn, chunk, now, None).await?;
        }
        for chunk in fixed_chunks(&coalesced) {
            insert_deliveries(conn, chunk, now, None).await?;
        }
        deliveries += plain.len() + coalesced.len();
        let events: Vec<(i64, &Event)> = decided
            .added
            .iter()
            .filter(|r| r.tenant == tenant)
            .map(|r| (r.sequence, &r.event))
            .collect();
        let at = agents::Position {
            last: last.get(tenant).copied().unwrap_or(0),
            through: projected.get(tenant).copied().unwrap_or(0),
        };
        agents::project(conn, tenant, at, seq, &events, deferred, now).await?;
    }
    done.new_ids = decided
        .added
        .chunk_by(|a, b| a.tenant == b.tenant)
        .map(|rows| {
            let ids = rows.iter().map(|r| (r.id, r.sequence)).collect();
            (rows[0].tenant.to_string(), ids)
        })
        .collect();
    done.ingests = decided.results;
    Ok(deliveries > 0)
}

async fn insert_events<C: Conn>(
    conn: &mut C,
    rows: &[NewEventRow<'_>],
    received_at: i64,
) -> Result<(), StoreError> {
    let texts: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.id.to_string(), r.event.to_canonical_json()))
        .collect();
    let mut values = Vec::with_capacity(rows.len() * sql::INSERT_EVENTS.columns);
    for (r, (id, body)) in rows.iter().zip(&texts) {
        values.extend(args![
            r.tenant,
            r.sequence,
            id.as_str(),
            r.event.creation.as_i64(),
            i64::from(r.event.category),
            i64::from(r.event.code),
            r.event.username(),
            received_at,
            body.as_str(),
        ]);
    }
    conn.execute(&sql::INSERT_EVENTS.text(rows.len()), &values)
        .await?;
    Ok(())
}

async fn enabled_subscriptions<C: Conn>(
    conn: &mut C,
    tenant: &str,
) -> Result<Vec<OutboxSub>, StoreError> {
    let rows = conn
        .query(sql::ENABLED_SUBSCRIPTIONS, &args![tenant])
        .await?;
    rows.into_iter()
        .map(|mut row| {
            let id = row.text(0)?;
            decide::outbox_sub(id, &row.text(1)?).map_err(corrupt)
        })
        .collect()
}

/// Ends `latest`'s predecessors: the pending StatusChanged deliveries of its agent and
/// subscription stored before it and not in flight end `superseded`. Returns how many ended,
/// and how many it replaces (counting those they had replaced).
pub(super) async fn supersede<C: Conn>(
    conn: &mut C,
    latest: &NewDelivery<'_>,
    now: i64,
) -> Result<(u64, i64), StoreError> {
    let rows = conn
        .query(
            sql::SUPERSEDE,
            &args![
                now,
                latest.subscription_id,
                latest.coalesce_key,
                latest.sequence
            ],
        )
        .await?;
    let mut replaced = 0;
    for row in &rows {
        replaced += 1 + row.int(0)?;
    }
    Ok((rows.len() as u64, replaced))
}

/// New pending deliveries, due at `now`; leased until `lease_until` when their first attempt
/// is made by whoever created them.
async fn insert_deliveries<C: Conn>(
    conn: &mut C,
    rows: &[NewDelivery<'_>],
    now: i64,
    lease_until: Option<i64>,
) -> Result<(), StoreError> {
    let values = delivery_values(rows, now, lease_until);
    let statement = match rows.first().is_some_and(NewDelivery::coalesces) {
        true => &sql::INSERT_COALESCED_DELIVERIES,
        false => &sql::INSERT_DELIVERIES,
    };
    conn.execute(&statement.text(rows.len()), &values).await?;
    Ok(())
}

/// The arguments of [`sql::INSERT_DELIVERIES`] for `rows`, or of
/// [`sql::INSERT_COALESCED_DELIVERIES`] when they coalesce (all of them, or none).
fn delivery_values<'a>(
    rows: &'a [NewDelivery<'a>],
    now: i64,
    lease_until: Option<i64>,
) -> Vec<Arg<'a>> {
    let coalesced = rows.first().is_some_and(NewDelivery::coalesces);
    let mut values = Vec::with_capacity(rows.len() * sql::INSERT_COALESCED_DELIVERIES.columns);
    for d in rows {
        values.extend(args![
            d.tenant,
            d.subscription_id,
            d.event_id.as_str(),
            d.sequence,
            d.agent,
            d.status.as_str(),
            (d.status == DeliveryStatus::Pending).then_some(now),
            now,
            now,
            lease_until,
        ]);
        if coalesced {
            values.extend(args![d.coalesce_key, d.superseded]);
        }
    }
    values
}

/// Step 5: attempts and their deliveries' new state, a chunk of rows per statement; then each
/// subscription's health. `outcomes` is sorted by subscription, so rows are locked in one order.
async fn record<C: Conn>(
    conn: &mut C,
    outcomes: &[&Outcome],
    policy: &Policy,
    now: i64,
) -> Result<(), StoreError> {
    for chunk in fixed_chunks(outcomes) {
        let mut values = Vec::with_capacity(chunk.len() * sql::INSERT_ATTEMPTS.columns);
        // An expired delivery ends without an attempt.
        let attempted = chunk.iter().filter(|o| o.next != NextState::Expired);
        let mut n = 0;
        for o in attempted {
            n += 1;
            values.extend(args![
                o.delivery_id,
                i64::from(o.attempt),
                o.started_at,
                o.duration_ms,
                o.status_code.map(i64::from),
                &o.error,
                &o.response_body,
            ]);
        }
        if n > 0 {
            conn.execute(&sql::INSERT_ATTEMPTS.text(n), &values).await?;
        }
        conn.update_deliveries(now, chunk).await?;
    }
    for outcomes in outcomes.chunk_by(|a, b| a.subscription_id == b.subscription_id) {
        let sub = outcomes[0].subscription_id.as_str();
        let mut rows = conn.query(conn.dialect().lock_health, &args![sub]).await?;
        // Deleted meanwhile: nothing to keep.
        let Some(row) = rows.first_mut() else {
            continue;
        };
        let before = Health {
            failing_since: row.opt_int(0)?,
            failures: row.int(1)?,
            failing_sent: row.bool(2)?,
        };
        let tenant = row.text(3)?;
        let verdict = policy.judge(before, &decide::attempts(outcomes), now);
        if verdict.health != before {
            let h = verdict.health;
            let health = args![h.failing_since, h.failures, h.failing_sent, sub];
            conn.execute(sql::SET_HEALTH, &health).await?;
        }
        if let Some(reason) = &verdict.disable {
            conn.execute(sql::DISABLE, &args![reason.as_str(), now, sub])
                .await?;
        }
        for notice in &verdict.notices {
            let event = SystemEvent {
                tenant: tenant.clone(),
                event: notice.event(sub, now),
                to: Recipients::MonitorsBut(sub.to_string()),
                lease_until: None,
                retried: true,
            };
            system(conn, &event, now).await?;
        }
    }
    Ok(())
}

/// The subscriptions a System event goes to.
async fn recipients<C: Conn>(conn: &mut C, ev: &SystemEvent) -> Result<Vec<String>, StoreError> {
    let except = match &ev.to {
        Recipients::Subscriptions(subs) => return Ok(subs.clone()),
        Recipients::MonitorsBut(except) => except,
    };
    let subs = enabled_subscriptions(conn, &ev.tenant).await?;
    Ok(subs
        .into_iter()
        .filter(|s| s.id != *except && decide::monitors(s.filter.as_ref()))
        .map(|s| s.id)
        .collect())
}

/// Step 6 (and notices of step 5): a System event's body and one delivery per subscription it
/// goes to; nothing when it goes to none. Returns those deliveries as claimed: leased ones are
/// attempted by whoever asked.
async fn system<C: Conn>(
    conn: &mut C,
    ev: &SystemEvent,
    now: i64,
) -> Result<Vec<Claimed>, StoreError> {
    let subscriptions = recipients(conn, ev).await?;
    if subscriptions.is_empty() {
        return Ok(Vec::new());
    }
    let id = ev.event.id.to_string();
    let body = ev.event.to_canonical_json();
    let rows = conn
        .query(
            sql::INSERT_SYSTEM_EVENT,
            &args![ev.tenant.as_str(), id.as_str(), now, body.as_str()],
        )
        .await?;
    let sequence = -rows.first().map(|r| r.int(0)).transpose()?.unwrap_or(0);
    let code = ev.event.code.to_string();
    metrics::counter!(crate::telemetry::SYSTEM_EVENTS, "code" => code).increment(1);
    let body = Bytes::from(body);
    let mut claimed = Vec::with_capacity(subscriptions.len());
    for sub in &subscriptions {
        let row = NewDelivery {
            tenant: &ev.tenant,
            subscription_id: sub,
            event_id: id.clone(),
            sequence,
            agent: None,
            status: DeliveryStatus::Pending,
            coalesce_key: None,
            superseded: 0,
        };
        let insert = format!("{} RETURNING id", sql::INSERT_DELIVERIES.text(1));
        let values = delivery_values(std::slice::from_ref(&row), now, ev.lease_until);
        let rows = conn.query(&insert, &values).await?;
        let delivery_id = rows.first().map(|r| r.int(0)).transpose()?.unwrap_or(0);
        if !ev.retried {
            conn.execute(sql::NO_RETRY, &args![delivery_id]).await?;
        }
        claimed.push(Claimed {
            delivery_id,
            subscription_id: sub.clone(),
            event_id: id.clone(),
            sequence: 0,
            attempt: 1,
            round_attempt: 1,
            body: body.clone(),
            created_at: now,
            received_at: now,
            superseded: 0,
        });
    }
    Ok(claimed)
}

fn claim_row(mut r: Row) -> Result<ClaimRow, StoreError> {
    Ok(ClaimRow {
        delivery_id: r.int(0)?,
        tenant: r.text(1)?,
        event_id: r.text(2)?,
        sequence: r.int(3)?,
        attempts: r.int(4)?,
        round_attempts: r.int(5)?,
        created_at: r.int(6)?,
        superseded: r.int(7)?,
    })
}

/// Step 7: leases up to `n` due deliveries of each subscription and returns them with their
/// bodies, each body read once however many subscriptions claimed its event.
async fn claim<C: Conn>(conn: &mut C, job: &ClaimJob) -> Result<Vec<Claimed>, StoreError> {
    let mut out = Vec::new();
    let mut bodies: decide::Bodies = HashMap::new();
    for (sub_id, n) in &job.subs {
        let rows = conn
            .query(
                conn.dialect().claim,
                &args![job.lease_until, sub_id.as_str(), job.now, i64::from(*n)],
            )
            .await?;
        let rows: Vec<ClaimRow> = rows.into_iter().map(claim_row).collect::<Result<_, _>>()?;
        let Some(tenant) = rows.first().map(|r| r.tenant.clone()) else {
            continue;
        };
        let known = bodies.entry(tenant.clone()).or_default();
        let (system, events): (Vec<i64>, Vec<i64>) = decide::missing_bodies(&rows, known)
            .into_iter()
            .partition(|s| *s < 0);
        if !events.is_empty() {
            for (sequence, body, received_at) in conn.bodies(&tenant, &events).await? {
                known.insert(sequence, (body.into(), received_at));
            }
        }
        for sequence in system {
            let mut rows = conn.query(sql::SYSTEM_BODY, &args![-sequence]).await?;
            if let Some(row) = rows.first_mut() {
                known.insert(sequence, (row.text(0)?.into(), row.int(1)?));
            }
        }
        let claimed = decide::claimed(sub_id, rows, known)
            .ok_or_else(|| StoreError::Db("a claimed delivery's event is missing".into()))?;
        out.extend(claimed);
    }
    out.sort_by_key(|c| c.sequence);
    Ok(out)
}
