//! The writer turn, written once for both backends. One turn commits a [`Group`] — every
//! command queued when the writer came round — in one transaction. [`run`] opens none for a
//! group holding only the periodic fold with nothing deferred; otherwise `write` does, in order:
//!
//! 1. when readiness asked (`Ping`), the dialect's probe write;
//! 2. ingest: lock the group's tenants (in one order) and read their last sequences; find the
//!    events already stored under the `Id`s the producers gave; decide (`decide.rs`):
//!    duplicates, conflicts, the new events' sequences; insert the new events; per tenant,
//!    decide their outbox rows (one delivery per matching subscription; a coalesced status
//!    supersedes the pending ones before it); fold the tenants' agents projection (or defer it
//!    while the writer is busy: `agents.rs`); then, for all the group's tenants at once, write
//!    the new last sequences and insert the outbox rows. The tenants' locks, their
//!    subscriptions' stamps, their sequences, the outbox inserts, the projection's upsert and
//!    (on PostgreSQL) the lookups of stored ids and of the agents' stored states are
//!    statements shared by the group's tenants, not one each (docs/BENCHMARKS.md, "tenants");
//!    the specs of changed subscriptions are still read per tenant, and a tenant whose
//!    deferred events no longer follow its log is folded from the log on its own;
//! 3. when a `FoldAgents` came, or the writer is stopping, fold the deferred Agent events;
//!    when an `IndexUsernames` came, copy the new events into `events_by_username`
//!    (`usernames.rs`);
//! 4. write back finished attempts, their deliveries' new state, and each subscription's health
//!    as its policy decides, with the notices it raises (System events);
//! 5. store System events and their deliveries;
//! 6. replays: a page of each (see [`ReplayJob`]), its deliveries created or set back to
//!    pending, coalesced as at ingest;
//! 7. claim due deliveries, with their bodies;
//! 8. retention's purge batches (`retention.rs`);
//! 9. agent catch-up batches (`agents.rs`);
//! 10. on PostgreSQL, notify the other nodes when deliveries may have become due or events
//!     were added.
//!
//! If a step fails, the whole turn rolls back and the deferred agents' states are forgotten
//! (the next fold reads the log).
//!
//! Deliveries are created here and nowhere else: ingest's outbox rows (step 2) and a replay's
//! (step 6) through the same `decide::outbox`, `supersede` and `delivery_values`, so the two
//! cannot disagree; System events' deliveries (steps 4 and 5) through `system`.
//!
//! A backend provides a [`Conn`] (`conn.rs`). SQLite's writer thread and PostgreSQL's writer
//! task both run [`run`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use super::agents::Deferred;
use super::command::{ClaimJob, Committed, Group, JobMark, ReplayJob, ReplayStep};
use super::conn::{ClaimCursor, Conn, HeldClaim, corrupt};
use super::db::{Arg, Row, args};
use super::decide::{self, ClaimRow, NewDelivery, NewEventRow, OutboxSub, Stored};
use super::{
    Claimed, DeliveryStatus, IngestJob, NextState, Outcome, Recipients, StoreError, SystemEvent,
    agents, handoff::Handoff, intervals, rules, sql, usernames,
};
use crate::event::{Event, Timestamp};
use crate::otel::TraceContext;
use crate::subscription::health::{FAILING_AFTER, Health, Policy};

/// Commits `group` at `now` (unix ms) in one transaction, all or nothing.
/// `deferred` is the writer's: the Agent events it has committed but not yet folded into the
/// agents projection (see `agents.rs`).
pub(super) async fn run<C: Conn>(
    conn: &mut C,
    group: &Group,
    policy: &Policy,
    now: i64,
    deferred: &mut Deferred,
    handoff: &Handoff,
) -> Result<Committed, StoreError> {
    if !group.has_work() && deferred.is_empty() {
        // The periodic fold, with nothing to fold: no transaction.
        return Ok(Committed::default());
    }
    // DESIGN §21: a turn that commits events is a `writer.turn` span, linked to the requests'
    // contexts (when traces are exported; else nothing is made).
    let span = match crate::otel::enabled() && !group.ingests.is_empty() {
        true => {
            let jobs = group.jobs();
            let events = jobs.iter().map(|j| j.events.len()).sum();
            crate::otel::turn_span(jobs.iter().filter_map(|j| j.trace.as_ref()), events)
        }
        false => tracing::Span::none(),
    };
    use tracing::Instrument;
    async {
        let mut tries = 1;
        loop {
            conn.begin(group.durable()).await?;
            deferred.begin();
            let written = match write(conn, group, policy, now, deferred, handoff).await {
                Ok(done) => {
                    let announce = match conn.dialect().announce {
                        Some(_) => announcements(&done, group),
                        None => Vec::new(),
                    };
                    conn.commit(&announce).await.map(|()| done)
                }
                Err(e) => Err(e),
            };
            if written.is_err() {
                conn.rollback().await;
                deferred.forget();
                // A claim undone: the deliveries it took are due again, wherever its cursor
                // went.
                if let Some(cursors) = conn.claim_cursors() {
                    cursors.clear();
                }
            }
            match written {
                // Lost to another transaction (on PostgreSQL: another node, or a migration's lock
                // during a rolling upgrade) and rolled back whole: the same turn runs again, so
                // no caller hears of it.
                Err(StoreError::Contended(e)) if tries < CONTENDED_TRIES => {
                    tracing::info!(
                        error = %e,
                        tries,
                        "the writer's turn met contention; running it again"
                    );
                    tries += 1;
                }
                other => return other,
            }
        }
    }
    .instrument(span)
    .await
}

/// How many times a turn that met contention ([`StoreError::Contended`]) is run in all.
const CONTENDED_TRIES: u32 = 5;

async fn write<C: Conn>(
    conn: &mut C,
    group: &Group,
    policy: &Policy,
    now: i64,
    deferred: &mut Deferred,
    handoff: &Handoff,
) -> Result<Committed, StoreError> {
    let mut done = Committed::default();
    if group.pinged() {
        for probe in conn.dialect().probe {
            conn.execute(probe, &args![now]).await?;
        }
    }
    let unheld = ingest(conn, &group.jobs(), now, &mut done, deferred, handoff).await?;
    if group.folds || group.stopping {
        done.folded = agents::fold_deferred(conn, deferred).await?;
    }
    if group.indexes {
        usernames::index(conn).await?;
    }
    let outcomes = group.sorted_outcomes();
    done.expired = outcomes
        .iter()
        .filter(|o| o.next == NextState::Expired)
        .count() as u64;
    let noticed = record(conn, &outcomes, policy, now).await?;
    for (event, _) in &group.system {
        done.system.push(system(conn, event, now).await?);
    }
    let mut replayed = false;
    for (job, _) in &group.replays {
        let step = replay(conn, job, now).await?;
        replayed |= step.requeued > 0;
        done.replays.push(step);
    }
    for (job, _) in &group.claims {
        done.claims.push(claim(conn, job).await?);
    }
    for (job, _) in &group.purges {
        done.purges
            .push(super::retention::purge_batch(conn, job, &deferred.groups).await?);
    }
    for (tenant, _) in &group.catch_ups {
        done.catch_ups
            .push(agents::catch_up_batch(conn, tenant, deferred).await?);
    }
    for (tenant, _) in &group.interval_folds {
        done.interval_folds
            .push(intervals::fold(conn, tenant).await?);
    }
    if group.rules {
        intervals::tick(conn).await?;
    }
    // Rules (DESIGN §18): judged on what this turn's folds wrote; the tick reloads changed
    // rules and fires due episodes. Their derived events are logged in this same turn.
    let mut derived = Vec::new();
    rules::judge(conn, &mut deferred.rules, &mut derived).await?;
    if group.rules {
        rules::tick(conn, &mut deferred.rules, now, &mut derived).await?;
    }
    let unheld = if derived.is_empty() {
        unheld
    } else {
        let jobs = rules::jobs(derived);
        let jobs: Vec<&IngestJob> = jobs.iter().collect();
        let mut more = Committed::default();
        let unheld_more = ingest(conn, &jobs, now, &mut more, deferred, handoff).await?;
        // Derived events change no agent: nothing for the rules to judge.
        rules::join(&mut done, more);
        unheld || unheld_more
    };
    // What the dispatcher is to claim: deliveries nobody holds — ingest's not handed over,
    // replays', System events' — and retries (due later; other nodes learn of them here).
    // An attempt's outcome makes nothing else due: a `per_agent` successor it unblocks is
    // claimed by the dispatcher's next step (it claims such subscriptions at every step, and
    // sends the outcome together with that claim, which follows it in the turn).
    let retries = outcomes
        .iter()
        .any(|o| matches!(o.next, NextState::RetryAt(_)));
    done.due = unheld || replayed || noticed || retries || !group.system.is_empty();
    Ok(done)
}

/// What a turn announces on PostgreSQL as it commits (sent with the `COMMIT`, in its round trip:
/// `Conn::commit`): other nodes' dispatchers wake if deliveries may have become due; and the
/// streams of the tenants whose events (or agents) changed, theirs only.
fn announcements(done: &Committed, group: &Group) -> Vec<String> {
    let tenants: BTreeSet<&str> = (done.new_ids.iter().map(|(t, _)| t.as_str()))
        .chain(group.catch_ups.iter().map(|(t, _)| t.as_str()))
        .chain(done.folded.iter().map(String::as_str))
        .collect();
    let mut payloads: Vec<String> = Vec::with_capacity(tenants.len() + 1);
    if done.due {
        payloads.push(sql::DUE.to_string());
    }
    payloads.extend(tenants.iter().map(|t| format!("{}{t}", sql::EVENTS_OF)));
    payloads
}

/// Step 2, the group's ingest requests; true if deliveries were added that were not handed to
/// this node's dispatcher (see `handoff.rs`).
async fn ingest<C: Conn>(
    conn: &mut C,
    jobs: &[&IngestJob],
    now: i64,
    done: &mut Committed,
    deferred: &mut Deferred,
    handoff: &Handoff,
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
    for (tenant, sequence, through) in lock_tenants(conn, &tenants).await? {
        last.insert(tenant, sequence);
        projected.insert(tenant, through);
    }
    let events: usize = jobs.iter().map(|j| j.events.len()).sum();
    deferred.note(now, events);
    let mut stored: Stored = HashMap::new();
    let given = decide::given_ids(jobs);
    for (tenant, sequence, body) in conn.stored_of(&given).await? {
        let Some((&tenant, _)) = given.get_key_value(tenant.as_str()) else {
            return Err(StoreError::Db(
                "a stored event of a tenant not asked for".into(),
            ));
        };
        let event = Event::from_canonical_json(&body).map_err(corrupt)?;
        stored.insert((tenant, event.id), (sequence, event));
    }
    let decided = decide::decide_ingests(jobs, last.clone(), &stored, Timestamp::now());
    let bodies = insert_events(conn, &decided.added, now).await?;
    // Per tenant with new events: their outbox rows, and its new last sequence. The rows of
    // all the turn's tenants are inserted together: a statement each, not one per tenant.
    let mut stamps = subscription_stamps(conn, decided.advanced.keys().copied()).await?;
    let (mut plain_rows, mut coalesced_rows) = (Vec::new(), Vec::new());
    // Handed over rows, by the length of their lease (ms).
    let mut held_rows: BTreeMap<i64, Vec<NewDelivery>> = BTreeMap::new();
    // Each tenant's new events for the agents projection, which says whether it reaches the
    // new last sequence too.
    let mut projecting = Vec::with_capacity(decided.advanced.len());
    let mut subs_of = Vec::with_capacity(decided.advanced.len());
    for (&tenant, &seq) in &decided.advanced {
        let current = stamps.remove(tenant).unwrap_or_default();
        subs_of.push((
            tenant,
            seq,
            enabled_subscriptions(conn, tenant, current).await?,
        ));
    }
    for &(tenant, seq, ref subs) in &subs_of {
        let mut rows = decide::outbox(&decided.added, tenant, subs);
        for d in decide::coalescing(&mut rows) {
            done.superseded += d.superseded as u64;
            let (ended, replaced) = supersede(conn, d, now).await?;
            done.superseded += ended;
            d.superseded += replaced;
        }
        let (coalesced, plain): (Vec<_>, Vec<_>) =
            rows.into_iter().partition(NewDelivery::coalesces);
        let (held, plain, lease_ms) = hand_over(plain, handoff);
        plain_rows.extend(plain);
        coalesced_rows.extend(coalesced);
        if !held.is_empty() {
            held_rows.entry(lease_ms).or_default().extend(held);
        }
        projecting.push(agents::Projecting {
            tenant,
            at: agents::Position {
                last: last.get(tenant).copied().unwrap_or(0),
                through: projected.get(tenant).copied().unwrap_or(0),
            },
            to: seq,
            events: decided
                .added
                .iter()
                .filter(|r| r.tenant == tenant)
                .map(|r| (r.sequence, &r.event))
                .collect(),
        });
    }
    let folded = agents::project(conn, &projecting, deferred, now).await?;
    let sequences: Vec<(&str, i64, bool)> = (projecting.iter().zip(folded))
        .map(|(p, folded)| (p.tenant, p.to, folded))
        .collect();
    set_sequences(conn, &sequences).await?;
    insert_deliveries(conn, &plain_rows, now, None).await?;
    insert_deliveries(conn, &coalesced_rows, now, None).await?;
    if !held_rows.is_empty() {
        let bodies: HashMap<(&str, i64), Held> = (decided.added.iter().zip(&bodies))
            .map(|(r, body)| {
                let held = (body.clone(), r.trace.cloned().map(Arc::new));
                ((r.tenant, r.sequence), held)
            })
            .collect();
        for (lease_ms, held) in &held_rows {
            let handed = insert_held(conn, held, now, now + lease_ms, &bodies).await?;
            done.handed.extend(handed);
        }
    }
    let deliveries = plain_rows.len() + coalesced_rows.len();
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

/// Inserts the new events; returns their stored bodies, in the order of `rows`.
async fn insert_events<C: Conn>(
    conn: &mut C,
    rows: &[NewEventRow<'_>],
    received_at: i64,
) -> Result<Vec<Bytes>, StoreError> {
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
            r.trace.map(|t| t.traceparent.as_str()),
            r.trace.and_then(|t| t.tracestate.as_deref()),
        ]);
    }
    conn.insert(&sql::INSERT_EVENTS, &values).await?;
    drop(values);
    Ok(texts
        .into_iter()
        .map(|(_, body)| Bytes::from(body))
        .collect())
}

/// Splits a tenant's new plain deliveries into those this node's dispatcher takes now, as its
/// offer allows (see `handoff.rs`), and the others; with the length of the lease (ms).
fn hand_over<'a>(
    rows: Vec<NewDelivery<'a>>,
    handoff: &Handoff,
) -> (Vec<NewDelivery<'a>>, Vec<NewDelivery<'a>>, i64) {
    // Only pending deliveries without an order to keep: a `per_agent` one waits for its
    // agent's earlier ones, which the claim checks.
    let eligible = |d: &NewDelivery| d.status == DeliveryStatus::Pending && d.agent.is_none();
    let mut wanted: BTreeMap<&str, u32> = BTreeMap::new();
    for d in rows.iter().filter(|d| eligible(d)) {
        *wanted.entry(d.subscription_id).or_default() += 1;
    }
    let mut lease_ms = 0;
    let mut granted: HashMap<&str, u32> = HashMap::new();
    for (sub, n) in wanted {
        let (took, lease) = handoff.take(sub, n);
        if took > 0 {
            granted.insert(sub, took);
            lease_ms = lease;
        }
    }
    if granted.is_empty() {
        return (Vec::new(), rows, 0);
    }
    let (mut held, mut rest) = (Vec::new(), Vec::with_capacity(rows.len()));
    for d in rows {
        match granted.get_mut(d.subscription_id) {
            Some(left) if *left > 0 && eligible(&d) => {
                *left -= 1;
                held.push(d);
            }
            _ => rest.push(d),
        }
    }
    (held, rest, lease_ms)
}

/// Inserts `rows` leased until `lease_until`, and returns them as the dispatcher attempts
/// them, with their events' `bodies` (by tenant and sequence).
async fn insert_held<C: Conn>(
    conn: &mut C,
    rows: &[NewDelivery<'_>],
    now: i64,
    lease_until: i64,
    bodies: &HashMap<(&str, i64), Held>,
) -> Result<Vec<Claimed>, StoreError> {
    let values = delivery_values(rows, now, Some(lease_until), false);
    let inserted = conn
        .insert_returning(&sql::INSERT_HANDED_DELIVERIES, &values)
        .await?;
    let mut ids = HashMap::with_capacity(inserted.len());
    for mut row in inserted {
        ids.insert((row.text(1)?, row.int(2)?), row.int(0)?);
    }
    let mut claimed = Vec::with_capacity(rows.len());
    for d in rows {
        let key = (d.subscription_id.to_string(), d.sequence);
        let body = bodies.get(&(d.tenant, d.sequence));
        let (Some(&delivery_id), Some(body)) = (ids.get(&key), body) else {
            return Err(StoreError::Db(
                "a delivery just inserted was not returned".into(),
            ));
        };
        claimed.push(first_attempt(
            delivery_id,
            key.0,
            d.event_id.clone(),
            d.sequence,
            body,
            now,
            lease_until,
        ));
    }
    Ok(claimed)
}

/// Reads and locks the rows of `tenants` (in their order: see `Dialect::lock_in_order`):
/// each one's last sequence and how far its agents projection reaches. A tenant deleted
/// meanwhile has none. One statement for a turn's tenants, not one each: a turn over many
/// tenants ran this and the stamps below once per tenant (docs/BENCHMARKS.md, "tenants").
async fn lock_tenants<'t, C: Conn>(
    conn: &mut C,
    tenants: &BTreeSet<&'t str>,
) -> Result<Vec<(&'t str, i64, i64)>, StoreError> {
    let mut out = Vec::with_capacity(tenants.len());
    if let (1, Some(&tenant)) = (tenants.len(), tenants.first()) {
        let rows = conn
            .query(conn.dialect().lock_tenant, &args![tenant])
            .await?;
        if let Some(row) = rows.first() {
            out.push((tenant, row.int(0)?, row.int(1)?));
        }
        return Ok(out);
    }
    let list: Vec<&'t str> = tenants.iter().copied().collect();
    for chunk in list.chunks(decide::IN_LIST) {
        let values = padded(chunk);
        let text = format!(
            "{}{}{}",
            sql::LOCK_TENANTS,
            sql::list(values.len(), 1),
            conn.dialect().lock_in_order
        );
        for mut row in conn.query(&text, &values).await? {
            let id = row.text(0)?;
            if let Some(&tenant) = tenants.get(id.as_str()) {
                out.push((tenant, row.int(1)?, row.int(2)?));
            }
        }
    }
    Ok(out)
}

/// Each tenant's new last sequence, and, where its agents projection was folded up to it
/// (`agents::project`), the projection's place too: one statement for a turn's tenants (the
/// one-tenant statements for one).
async fn set_sequences<C: Conn>(
    conn: &mut C,
    sequences: &[(&str, i64, bool)],
) -> Result<(), StoreError> {
    if let [(tenant, to, folded)] = sequences {
        let statement = match folded {
            true => sql::SET_SEQUENCES,
            false => sql::SET_LAST_SEQUENCE,
        };
        conn.execute(statement, &args![*to, *tenant]).await?;
        return Ok(());
    }
    for chunk in sequences.chunks(decide::IN_LIST) {
        // Padded with copies of the last row, which change nothing more (see `padded`).
        let mut values = Vec::new();
        for &(tenant, to, folded) in decide::padded(chunk) {
            values.extend(args![tenant, to, i64::from(folded)]);
        }
        let rows = values.len() / sql::SET_SEQUENCES_OF.columns;
        conn.execute(&sql::SET_SEQUENCES_OF.text(rows), &values)
            .await?;
    }
    Ok(())
}

/// `tenants` as the values of an `IN (…)` list padded to one of a few lengths with copies of
/// the last (which match nothing more), so that turns of any number of tenants share a few
/// prepared statements.
fn padded<'t>(tenants: &[&'t str]) -> Vec<Arg<'t>> {
    decide::padded(tenants).map(|t| Arg::from(*t)).collect()
}

/// A tenant's enabled push subscriptions as stamps: (id, (updated_at, length of the stored
/// form)), what says whether the writer's decoded copy is still current.
type Stamps = Vec<(String, (i64, i64))>;

/// The stamps of `tenants`' subscriptions, in one statement for all of them (the one-tenant
/// statement for one).
async fn subscription_stamps<'t, C: Conn>(
    conn: &mut C,
    tenants: impl Iterator<Item = &'t str>,
) -> Result<HashMap<&'t str, Stamps>, StoreError> {
    let tenants: Vec<&'t str> = tenants.collect();
    let mut out: HashMap<&'t str, Stamps> = HashMap::with_capacity(tenants.len());
    if let [tenant] = tenants[..] {
        let rows = conn
            .query(sql::ENABLED_SUBSCRIPTION_STAMPS, &args![tenant])
            .await?;
        let stamps = out.entry(tenant).or_default();
        for mut row in rows {
            stamps.push((row.text(0)?, (row.int(1)?, row.int(2)?)));
        }
        return Ok(out);
    }
    for chunk in tenants.chunks(decide::IN_LIST) {
        let values = padded(chunk);
        let text = format!(
            "{}{}",
            sql::ENABLED_SUBSCRIPTION_STAMPS_OF,
            sql::list(values.len(), 1)
        );
        for mut row in conn.query(&text, &values).await? {
            let tenant = row.text(0)?;
            if let Some(t) = chunk.iter().find(|t| **t == tenant) {
                out.entry(*t)
                    .or_default()
                    .push((row.text(1)?, (row.int(2)?, row.int(3)?)));
            }
        }
    }
    Ok(out)
}

/// `tenant`'s enabled subscriptions, as the outbox reads them. Each is decoded once per change
/// (the writer's connection remembers them, by `updated_at` and the stored form's length), not
/// in every turn: a tenant's large filters cost the turns it shares with others nothing. One
/// that does not decode harms only itself: logged once, counted, and given no deliveries.
/// `current` is its stamps as this turn read them ([`subscription_stamps`]).
async fn enabled_subscriptions<C: Conn>(
    conn: &mut C,
    tenant: &str,
    current: Stamps,
) -> Result<Vec<Arc<OutboxSub>>, StoreError> {
    let known = conn.subscriptions().remove(tenant).unwrap_or_default();
    let (mut fresh, mut changed) = (HashMap::with_capacity(current.len()), Vec::new());
    for (id, stamp) in current {
        match known.get(&id) {
            Some(entry) if entry.0 == stamp => {
                fresh.insert(id, entry.clone());
            }
            _ => changed.push(id),
        }
    }
    for chunk in changed.chunks(decide::IN_LIST) {
        let text = format!("{}{}", sql::SUBSCRIPTION_SPECS, sql::list(chunk.len(), 2));
        let mut values = args![tenant].to_vec();
        values.extend(chunk.iter().map(|id| Arg::from(id.as_str())));
        for mut row in conn.query(&text, &values).await? {
            let id = row.text(0)?;
            let stamp = (row.int(2)?, row.int(3)?);
            let decoded = match decide::outbox_sub(id.clone(), &row.text(1)?) {
                Ok(sub) => Some(Arc::new(sub)),
                Err(e) => {
                    tracing::error!(tenant, subscription_id = %id, error = %e, "a stored subscription does not decode: it gets no deliveries until it is repaired (PATCH with a whole body) or deleted");
                    metrics::counter!(crate::telemetry::UNDECODABLE_ROWS, "kind" => "subscription")
                        .increment(1);
                    None
                }
            };
            fresh.insert(id, (stamp, decoded));
        }
    }
    let subs = fresh.values().filter_map(|(_, s)| s.clone()).collect();
    conn.subscriptions().insert(tenant.to_string(), fresh);
    Ok(subs)
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

/// A page of a replay (see [`ReplayJob`]): the page's matching events get a delivery each —
/// created, or set back to pending for a fresh round — coalesced as at ingest: within the
/// page, and against the subscription's pending statuses stored before. A job's page writes the
/// job's progress in the same transaction.
async fn replay<C: Conn>(
    conn: &mut C,
    job: &ReplayJob,
    now: i64,
) -> Result<ReplayStep, StoreError> {
    let (tenant, sub) = (job.tenant.as_str(), &job.sub);
    if let Some(mark) = &job.job
        && !job_running(conn, mark, &sub.id).await?
    {
        return Ok(ReplayStep::default());
    }
    let (requeued, fresh, next) = if job.only_failed {
        let window = args![
            now,
            now,
            sub.id.as_str(),
            job.bound,
            tenant,
            job.since,
            job.until
        ];
        let requeued = conn.execute(sql::REPLAY_FAILED, &window).await?;
        (requeued, requeued, None)
    } else {
        let upto = page_end(job.after, job.bound);
        let page = args![
            tenant,
            job.since,
            job.until,
            job.after,
            upto,
            sql::REPLAY_PAGE_EVENTS
        ];
        let rows = conn.query(sql::REPLAY_PAGE, &page).await?;
        let (events, next) = replay_events(tenant, rows, upto, job.bound)?;
        let mut rows = decide::outbox(&events, tenant, std::slice::from_ref(sub));
        let pending = match (events.first(), events.last()) {
            (Some(first), Some(last)) => {
                let range = args![sub.id.as_str(), first.sequence, last.sequence];
                pending_sequences(conn.query(sql::PENDING_SEQUENCES, &range).await?)?
            }
            _ => Default::default(),
        };
        let fresh = decide::fresh(&rows, &pending);
        for d in decide::coalescing(&mut rows) {
            let (_, replaced) = supersede(conn, d, now).await?;
            d.superseded += replaced;
        }
        let values = delivery_values(&rows, now, None, true);
        conn.insert(&sql::REPLAY_DELIVERIES, &values).await?;
        (rows.len() as u64, fresh, next)
    };
    let running = match &job.job {
        None => true,
        Some(mark) => {
            let progress = args![
                fresh as i64,
                next.unwrap_or(i64::MAX),
                mark.lease_until,
                now,
                mark.id.as_str(),
                mark.held
            ];
            conn.execute(sql::JOB_PAGE_DONE, &progress).await? > 0
        }
    };
    Ok(ReplayStep {
        requeued,
        fresh,
        next,
        running,
    })
}

/// The circuit breaker (DESIGN §16): with `probes` probes failed since it opened, how long
/// (ms) until the next probe of subscription `sub` may start: the n-th delay of its retry
/// schedule for the n-th probe, the last one repeating.
async fn probe_delay<C: Conn>(conn: &mut C, sub: &str, probes: i64) -> Result<i64, StoreError> {
    let rows = conn
        .query("SELECT spec FROM subscriptions WHERE id = $1", &args![sub])
        .await?;
    let spec = match rows.into_iter().next() {
        Some(mut row) => crate::subscription::stored::decode(&row.text(0)?).ok(),
        None => None,
    };
    let schedule = match &spec {
        Some(spec) => spec.schedule(),
        None => &crate::delivery::retry::DEFAULT_SCHEDULE_SECS[..],
    };
    let n = usize::try_from(probes).unwrap_or(0);
    let secs = schedule.get(n).or(schedule.last()).copied().unwrap_or(0);
    Ok(i64::try_from(secs).unwrap_or(i64::MAX / 1000) * 1000)
}

/// Whether job `id` is still running (not canceled): checked, its row locked, before a page
/// of it is written, so that nothing is done for a job after its `DELETE` answered.
async fn job_running<C: Conn>(conn: &mut C, mark: &JobMark, sub: &str) -> Result<bool, StoreError> {
    let check = format!("{}{}", sql::JOB_RUNNING, conn.dialect().skip_locked);
    let found = conn
        .query(&check, &args![mark.id.as_str(), mark.held, sub])
        .await?;
    Ok(!found.is_empty())
}

/// The last sequence a replay page after `after` looks at (see [`sql::REPLAY_PAGE_SPAN`]).
pub(super) fn page_end(after: i64, bound: i64) -> i64 {
    after.saturating_add(sql::REPLAY_PAGE_SPAN).min(bound)
}

/// A page of [`sql::REPLAY_PAGE`] read up to `upto` decoded, and where the next page starts
/// (`None`: that was the last, up to `bound`).
pub(super) fn replay_events(
    tenant: &str,
    rows: Vec<Row>,
    upto: i64,
    bound: i64,
) -> Result<(Vec<NewEventRow<'_>>, Option<i64>), StoreError> {
    let next = match rows.last() {
        Some(last) if rows.len() as i64 == sql::REPLAY_PAGE_EVENTS => Some(last.int(0)?),
        _ if upto < bound => Some(upto),
        _ => None,
    };
    let mut events = Vec::with_capacity(rows.len());
    for mut row in rows {
        let sequence = row.int(0)?;
        let event = Event::from_canonical_json(&row.text(1)?).map_err(corrupt)?;
        events.push(NewEventRow {
            tenant,
            sequence,
            id: event.id,
            event,
            trace: None,
        });
    }
    Ok((events, next))
}

/// The sequences of [`sql::PENDING_SEQUENCES`].
pub(super) fn pending_sequences(rows: Vec<Row>) -> Result<BTreeSet<i64>, StoreError> {
    rows.iter().map(|r| r.int(0)).collect()
}

/// New pending deliveries, due at `now`; leased until `lease_until` when their first attempt
/// is made by whoever created them.
async fn insert_deliveries<C: Conn>(
    conn: &mut C,
    rows: &[NewDelivery<'_>],
    now: i64,
    lease_until: Option<i64>,
) -> Result<(), StoreError> {
    let coalesced = rows.first().is_some_and(NewDelivery::coalesces);
    let values = delivery_values(rows, now, lease_until, coalesced);
    let statement = match coalesced {
        true => &sql::INSERT_COALESCED_DELIVERIES,
        false => &sql::INSERT_DELIVERIES,
    };
    conn.insert(statement, &values).await?;
    Ok(())
}

/// The arguments of [`sql::INSERT_DELIVERIES`] for `rows`, or, `coalesced`, of
/// [`sql::INSERT_COALESCED_DELIVERIES`] (and [`sql::REPLAY_DELIVERIES`]).
fn delivery_values<'a>(
    rows: &'a [NewDelivery<'a>],
    now: i64,
    lease_until: Option<i64>,
    coalesced: bool,
) -> Vec<Arg<'a>> {
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

/// Step 4: attempts and their deliveries' new state, a chunk of rows per statement; then each
/// subscription's health. `outcomes` is sorted by subscription, so rows are locked in one order.
/// True if a notice was given (System event deliveries added).
async fn record<C: Conn>(
    conn: &mut C,
    outcomes: &[&Outcome],
    policy: &Policy,
    now: i64,
) -> Result<bool, StoreError> {
    let mut noticed = false;
    if !outcomes.is_empty() {
        let mut values = Vec::with_capacity(outcomes.len() * sql::INSERT_ATTEMPTS.columns);
        // An expired delivery ends without an attempt.
        let attempted = outcomes.iter().filter(|o| o.next != NextState::Expired);
        for o in attempted {
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
        conn.insert(&sql::INSERT_ATTEMPTS, &values).await?;
        conn.update_deliveries(now, outcomes).await?;
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
        let probes_before = row.int(4)?;
        let verdict = policy.judge(before, &decide::attempts(outcomes), now);
        if verdict.health != before {
            let h = verdict.health;
            let last_error = match h.failures {
                0 => None,
                _ => outcomes
                    .iter()
                    .rev()
                    .filter(|o| o.next != NextState::Expired && o.next != NextState::Succeeded)
                    .find_map(|o| o.error.as_deref())
                    .or(Some("the attempt failed")),
            };
            // Open: the n-th probe comes after the n-th delay. Attempts that were in flight when
            // it opened are not probes.
            let probes = match (
                h.failures >= FAILING_AFTER,
                before.failures >= FAILING_AFTER,
            ) {
                (true, true) => {
                    let failed =
                        |o: &&&Outcome| o.probe && !o.batched && o.next != NextState::Succeeded;
                    probes_before + outcomes.iter().filter(failed).count() as i64
                }
                _ => 0,
            };
            let probe_at = match h.failures >= FAILING_AFTER {
                true => Some(now + probe_delay(conn, sub, probes).await?),
                false => None,
            };
            let health = args![
                h.failing_since,
                h.failures,
                h.failing_sent,
                last_error,
                probe_at,
                probes,
                sub
            ];
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
            noticed |= !system(conn, &event, now).await?.is_empty();
        }
    }
    Ok(noticed)
}

/// The subscriptions a System event goes to.
async fn recipients<C: Conn>(conn: &mut C, ev: &SystemEvent) -> Result<Vec<String>, StoreError> {
    let except = match &ev.to {
        Recipients::Subscriptions(subs) => return Ok(subs.clone()),
        Recipients::MonitorsBut(except) => except,
    };
    let mut stamps = subscription_stamps(conn, std::iter::once(ev.tenant.as_str())).await?;
    let current = stamps.remove(ev.tenant.as_str()).unwrap_or_default();
    let subs = enabled_subscriptions(conn, &ev.tenant, current).await?;
    Ok(subs
        .into_iter()
        .filter(|s| s.id != *except && decide::monitors(s.filter.as_ref()))
        .map(|s| s.id.clone())
        .collect())
}

/// Step 5 (and notices of step 4): a System event's body and one delivery per subscription it
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
    // A System event starts a trace of its own (DESIGN §21): it carries none.
    let held: Held = (Bytes::from(body), None);
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
        let values = delivery_values(std::slice::from_ref(&row), now, ev.lease_until, false);
        let rows = conn.query(&insert, &values).await?;
        let delivery_id = rows.first().map(|r| r.int(0)).transpose()?.unwrap_or(0);
        if !ev.retried {
            conn.execute(sql::NO_RETRY, &args![delivery_id]).await?;
        }
        let lease_until = ev.lease_until.unwrap_or(0);
        claimed.push(first_attempt(
            delivery_id,
            sub.clone(),
            id.clone(),
            0,
            &held,
            now,
            lease_until,
        ));
    }
    Ok(claimed)
}

/// A new event's body and trace context, as a delivery handed over in its turn carries them.
type Held = (Bytes, Option<Arc<TraceContext>>);

/// A delivery created `now` in this turn, as its first attempt takes it.
fn first_attempt(
    delivery_id: i64,
    subscription_id: String,
    event_id: String,
    sequence: i64,
    (body, trace): &Held,
    now: i64,
    lease_until: i64,
) -> Claimed {
    Claimed {
        delivery_id,
        subscription_id,
        event_id,
        sequence,
        attempt: 1,
        round_attempt: 1,
        body: body.clone(),
        trace: trace.clone(),
        created_at: now,
        received_at: now,
        superseded: 0,
        lease_until,
    }
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
        due: (r.int(8)?, r.int(3)?),
    })
}

/// SQLite's claim held in memory ([`sql::CLAIM_HELD`]): up to `n` of the subscription's due
/// deliveries after due order `after`, read (no lease written) and held by the writer until
/// their outcome is recorded or their lease runs out; the tenant's latest such lease is told to
/// erasure's wait. Held at once, so that the claim's walk from the start leaves them out.
async fn claim_held<C: Conn>(
    conn: &mut C,
    job: &ClaimJob,
    sub_id: &str,
    after: (i64, i64),
    n: i64,
) -> Result<Vec<ClaimRow>, StoreError> {
    let (at, sequence) = after;
    let args = args![job.lease_until, sub_id, job.now, at, sequence, n];
    let found = conn.query(sql::CLAIM_HELD, &args).await?;
    let mut rows = Vec::with_capacity(found.len());
    let mut claims = Vec::with_capacity(found.len());
    for r in found {
        let seen = r.opt_int(9)?;
        let row = claim_row(r)?;
        let claim = HeldClaim {
            lease_until: job.lease_until,
            seen,
        };
        claims.push((row.delivery_id, claim));
        rows.push(row);
    }
    if let (Some(first), Some((held, wake))) = (rows.first(), conn.held()) {
        held.hold(claims);
        wake.note_held(&first.tenant, job.lease_until);
    }
    Ok(rows)
}

/// Step 7: leases up to `n` due deliveries of each subscription and returns them with their
/// bodies, each body read once however many subscriptions claimed its event.
///
/// A claim walks the subscription's due deliveries in due order and steps over those in
/// flight, one row lookup each. Where the writer keeps cursors (SQLite: one writer owns the
/// database) and only a lease holds the subscription's deliveries back (`resume`), the claim
/// first goes on after the last delivery the previous claims took, and walks from the start
/// only for what that leaves short, or when the cursor is [`sql::CLAIM_CURSOR_MS`] old: a
/// delivery due again behind the cursor (a lease run out or given back, a claim undone, a
/// retry due no later than the cursor) waits at most that long, plus the claims' interval. (A
/// test's clock that stands still keeps a cursor until a claim comes up short.) The cursor's
/// claim keeps the per-agent clause: the dispatcher's `resume` may predate a `PATCH`.
async fn claim<C: Conn>(conn: &mut C, job: &ClaimJob) -> Result<Vec<Claimed>, StoreError> {
    let mut out = Vec::new();
    let mut bodies: decide::Bodies = HashMap::new();
    // A cursor a second old is walked past anyway: forgotten, so that those of subscriptions
    // deleted or no longer claimed do not pile up.
    let fresh = |c: &ClaimCursor| (0..sql::CLAIM_CURSOR_MS).contains(&(job.now - c.walked_at));
    if let Some(cursors) = conn.claim_cursors() {
        cursors.retain(|_, c| fresh(c));
    }
    if let Some((held, wake)) = conn.held() {
        held.sweep(job.now, sql::CLAIM_CURSOR_MS, wake);
    }
    for (sub_id, n, resume) in &job.subs {
        let n = i64::from(*n);
        // Held in memory where the writer can (SQLite), going on after the last claim.
        let hold = *resume && conn.held().is_some();
        let cursor = match conn.claim_cursors() {
            Some(cursors) if hold => cursors.get(sub_id.as_str()).copied(),
            Some(cursors) => {
                cursors.remove(sub_id.as_str());
                None
            }
            None => None,
        };
        let rows = if hold {
            let mut rows = match cursor {
                Some(c) => claim_held(conn, job, sub_id, c.after, n).await?,
                None => Vec::new(),
            };
            let short = n - rows.len() as i64;
            if short > 0 {
                let start = (i64::MIN, i64::MIN);
                rows.extend(claim_held(conn, job, sub_id, start, short).await?);
            }
            if let Some(cursors) = conn.claim_cursors() {
                let walked_at = cursor.map_or(job.now, |c| c.walked_at);
                let last = rows.iter().map(|r| r.due).max();
                if let Some(after) = last.or(cursor.map(|c| c.after)) {
                    cursors.insert(sub_id.clone(), ClaimCursor { after, walked_at });
                }
            }
            rows
        } else {
            let args = args![job.lease_until, sub_id.as_str(), job.now, n];
            let rows = conn.query(conn.dialect().claim, &args).await?;
            rows.into_iter().map(claim_row).collect::<Result<_, _>>()?
        };
        let Some(tenant) = rows.first().map(|r| r.tenant.clone()) else {
            continue;
        };
        let known = bodies.entry(tenant.clone()).or_default();
        let (system, events): (Vec<i64>, Vec<i64>) = decide::missing_bodies(&rows, known)
            .into_iter()
            .partition(|s| *s < 0);
        if !events.is_empty() {
            for b in conn.bodies(&tenant, &events).await? {
                let trace = b.trace.map(Arc::new);
                known.insert(b.sequence, (b.body.into(), b.received_at, trace));
            }
        }
        for sequence in system {
            let mut rows = conn.query(sql::SYSTEM_BODY, &args![-sequence]).await?;
            if let Some(row) = rows.first_mut() {
                known.insert(sequence, (row.text(0)?.into(), row.int(1)?, None));
            }
        }
        let claimed = decide::claimed(sub_id, rows, known, job.lease_until)
            .ok_or_else(|| StoreError::Db("a claimed delivery's event is missing".into()))?;
        out.extend(claimed);
    }
    out.sort_by_key(|c| c.sequence);
    Ok(out)
}
