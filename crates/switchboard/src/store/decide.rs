//! The writer turn's decisions, as plain functions over plain data: sequences, duplicates and
//! conflicts, the outbox rows, the deliveries' next state, what a claim hands out. No I/O: the
//! turn (`turn.rs`) reads what they need and writes what they decide.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use super::command::JobResult;
use super::{
    Accepted, Claimed, DeliveryStatus, IngestError, IngestJob, NextState, Outcome,
    SubscriptionRecord,
};
use crate::event::{Event, Timestamp};
use crate::otel::TraceContext;
use crate::subscription::health::Attempt;
use crate::subscription::{self, Coalesce, Filter, Ordering};

/// Rows per multi-row statement: powers of two, largest first, so any count takes at most one
/// statement of each size and the few statement shapes stay in the prepared-statement cache.
pub(super) const INSERT_CHUNKS: [usize; 10] = [512, 256, 128, 64, 32, 16, 8, 4, 2, 1];
/// Most values in one `IN (…)` list (SQLite's writer; PostgreSQL's joins an array).
pub(super) const IN_LIST: usize = 512;

/// Splits `rows` into chunks of the sizes in [`INSERT_CHUNKS`].
pub(super) fn fixed_chunks<T>(rows: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut rest = rows;
    for size in INSERT_CHUNKS {
        while rest.len() >= size {
            let (chunk, tail) = rest.split_at(size);
            out.push(chunk);
            rest = tail;
        }
    }
    out
}

/// The length an `IN (…)` list of `n` values is padded to (with copies of its last value,
/// which change nothing), so lists of any length take one of a few statement shapes.
pub(super) fn padded_len(n: usize) -> usize {
    n.next_power_of_two()
}

/// `rows` followed by copies of the last, [`padded_len`] in all: the values of a padded list
/// (or of a padded multi-row statement).
pub(super) fn padded<T>(rows: &[T]) -> impl Iterator<Item = &T> {
    let copies = padded_len(rows.len()) - rows.len();
    rows.iter()
        .chain(rows.last().into_iter().cycle().take(copies))
}

/// The ids the producers of a group gave, by tenant: those that may be stored already.
pub(super) fn given_ids<'a>(jobs: &[&'a IngestJob]) -> BTreeMap<&'a str, Vec<Uuid>> {
    let mut given: BTreeMap<&str, Vec<Uuid>> = BTreeMap::new();
    for job in jobs {
        let ids = given.entry(job.tenant.as_str()).or_default();
        ids.extend(job.events.iter().filter(|e| e.id_given).map(|e| e.id));
    }
    given
}

/// Stored events by tenant and id, with their sequence.
pub(super) type Stored<'a> = HashMap<(&'a str, Uuid), (i64, Event)>;

/// An event a group adds.
pub(super) struct NewEventRow<'a> {
    pub tenant: &'a str,
    pub id: Uuid,
    pub sequence: i64,
    pub event: Event,
    /// Its request's trace context.
    pub trace: Option<&'a TraceContext>,
}

/// What a group's ingest requests come to.
pub(super) struct Decided<'a> {
    /// One per request, in order.
    pub results: Vec<JobResult>,
    /// The tenants that got new events, with their last sequence after the group.
    pub advanced: BTreeMap<&'a str, i64>,
    /// The new events, by tenant and sequence.
    pub added: Vec<NewEventRow<'a>>,
}

/// Decides every ingest request of a group, in order: a request naming a missing tenant or
/// posting an `Id` stored (or posted earlier in the group) with other content is refused
/// alone; identical re-posts are duplicates; new events get the tenant's next sequences.
/// `last` holds the last sequence of each tenant that exists.
pub(super) fn decide_ingests<'a>(
    jobs: &[&'a IngestJob],
    mut last: BTreeMap<&'a str, i64>,
    stored: &Stored<'a>,
    now: Timestamp,
) -> Decided<'a> {
    let before = last.clone();
    let mut added: Stored<'a> = HashMap::new();
    let mut traces: HashMap<(&'a str, Uuid), &'a TraceContext> = HashMap::new();
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        let tenant = job.tenant.as_str();
        let Some(&base) = last.get(tenant) else {
            results.push(Err(IngestError::TenantNotFound));
            continue;
        };
        let mut seq = base;
        let mut accepted = Vec::with_capacity(job.events.len());
        let mut conflicts = Vec::new();
        let mut mine: HashMap<Uuid, (i64, Event)> = HashMap::new();
        for (index, ev) in job.events.iter().enumerate() {
            let key = (tenant, ev.id);
            let prior = stored
                .get(&key)
                .or_else(|| added.get(&key))
                .or_else(|| mine.get(&ev.id));
            match prior {
                Some((sequence, existing)) if ev.same_as(existing) => accepted.push(Accepted {
                    id: ev.id,
                    sequence: *sequence,
                    duplicate: true,
                }),
                Some(_) => conflicts.push((index, ev.id)),
                None => {
                    seq += 1;
                    mine.insert(ev.id, (seq, ev.complete(now)));
                    accepted.push(Accepted {
                        id: ev.id,
                        sequence: seq,
                        duplicate: false,
                    });
                }
            }
        }
        if conflicts.is_empty() {
            last.insert(tenant, seq);
            if let Some(trace) = &job.trace {
                traces.extend(mine.keys().map(|id| ((tenant, *id), trace)));
            }
            added.extend(mine.into_iter().map(|(id, v)| ((tenant, id), v)));
            results.push(Ok(accepted));
        } else {
            results.push(Err(IngestError::Conflict(conflicts)));
        }
    }
    let mut added: Vec<NewEventRow> = added
        .into_iter()
        .map(|((tenant, id), (sequence, event))| NewEventRow {
            tenant,
            id,
            sequence,
            event,
            trace: traces.get(&(tenant, id)).copied(),
        })
        .collect();
    // In key order: appends to the events table's primary key.
    added.sort_by_key(|r| (r.tenant, r.sequence));
    last.retain(|tenant, seq| before.get(tenant) != Some(seq));
    Decided {
        results,
        advanced: last,
        added,
    }
}

/// Whether a subscription with `filter` monitors its tenant: its filter names category 0.
pub(super) fn monitors(filter: Option<&Filter>) -> bool {
    filter
        .and_then(|f| f.events.as_ref())
        .is_some_and(|events| {
            events
                .iter()
                .any(|e| e.category == crate::event::catalog::SYSTEM)
        })
}

/// An enabled subscription as the outbox needs it.
#[derive(Clone)]
pub(super) struct OutboxSub {
    pub id: String,
    pub filter: Option<Filter>,
    pub ordering: Ordering,
    pub coalesce: Coalesce,
}

impl OutboxSub {
    pub fn of(sub: &SubscriptionRecord) -> Self {
        OutboxSub {
            id: sub.id.clone(),
            filter: sub.spec.filter.clone(),
            ordering: sub.spec.ordering,
            coalesce: sub.spec.coalesce,
        }
    }
}

/// Reads the stored spec of an enabled subscription for the outbox.
pub(super) fn outbox_sub(id: String, spec: &str) -> Result<OutboxSub, serde_json::Error> {
    let spec = subscription::stored::decode(spec)?;
    Ok(OutboxSub {
        id,
        filter: spec.filter,
        ordering: spec.ordering,
        coalesce: spec.coalesce,
    })
}

/// A delivery to insert: one per new event and matching enabled subscription.
pub(super) struct NewDelivery<'a> {
    pub tenant: &'a str,
    pub subscription_id: &'a str,
    pub event_id: String,
    pub sequence: i64,
    /// The `per_agent` ordering key.
    pub agent: Option<&'a str>,
    /// `Pending`, or `Superseded` for a status a later one of the same group replaced.
    pub status: DeliveryStatus,
    /// The agent of a StatusChanged delivery of a `latest_status` subscription.
    pub coalesce_key: Option<&'a str>,
    /// How many deliveries this one replaced.
    pub superseded: i64,
}

impl NewDelivery<'_> {
    /// Whether it is written with the coalescing columns.
    pub fn coalesces(&self) -> bool {
        self.coalesce_key.is_some() || self.superseded > 0
    }
}

/// The outbox rows for `tenant`'s new events among `added`. For a `latest_status`
/// subscription, only the last StatusChanged of each agent in `added` stays pending; the
/// earlier ones are written `superseded` and counted on it. (The turn then supersedes the
/// pending ones stored before: see [`coalescing`].)
pub(super) fn outbox<'a>(
    added: &'a [NewEventRow<'a>],
    tenant: &'a str,
    subs: &'a [std::sync::Arc<OutboxSub>],
) -> Vec<NewDelivery<'a>> {
    let mut out = Vec::new();
    // The latest status delivery of each (subscription, agent) so far: its index in `out`.
    let mut latest: HashMap<(&str, &str), usize> = HashMap::new();
    for row in added.iter().filter(|r| r.tenant == tenant) {
        for sub in subs {
            let Some(agent) = delivery_agent(&row.event, sub.filter.as_ref(), sub.ordering) else {
                continue;
            };
            let coalesce_key = coalesce_key(&row.event, sub.coalesce);
            let mut superseded = 0;
            if let Some(key) = coalesce_key
                && let Some(i) = latest.insert((sub.id.as_str(), key), out.len())
            {
                let earlier: &mut NewDelivery = &mut out[i];
                earlier.status = DeliveryStatus::Superseded;
                superseded = earlier.superseded + 1;
            }
            out.push(NewDelivery {
                tenant,
                subscription_id: &sub.id,
                event_id: row.id.to_string(),
                sequence: row.sequence,
                agent,
                status: DeliveryStatus::Pending,
                coalesce_key,
                superseded,
            });
        }
    }
    out
}

/// The deliveries among `rows` that may replace pending ones stored before: the pending
/// StatusChanged of each (subscription, agent).
pub(super) fn coalescing<'r, 'a>(
    rows: &'r mut [NewDelivery<'a>],
) -> impl Iterator<Item = &'r mut NewDelivery<'a>> {
    rows.iter_mut()
        .filter(|d| d.coalesce_key.is_some() && d.status == DeliveryStatus::Pending)
}

/// How many of a replay's `rows` set a delivery pending that was not pending already.
pub(super) fn fresh(rows: &[NewDelivery<'_>], pending: &std::collections::BTreeSet<i64>) -> u64 {
    rows.iter()
        .filter(|d| d.status == DeliveryStatus::Pending && !pending.contains(&d.sequence))
        .count() as u64
}

/// The coalescing key of `event` for a subscription that coalesces as `coalesce`: the agent of
/// a StatusChanged, for `latest_status`.
pub(super) fn coalesce_key(event: &Event, coalesce: Coalesce) -> Option<&str> {
    let status = event.category == crate::event::catalog::AGENT
        && event.code == crate::agent::code::STATUS_CHANGED;
    match coalesce {
        Coalesce::LatestStatus if status => event.agent_key(),
        _ => None,
    }
}

/// Whether a subscription with `filter` gets a delivery of `event` — at ingest or on replay —
/// and if so its ordering key: the agent for `per_agent`, else none.
pub(super) fn delivery_agent<'e>(
    event: &'e Event,
    filter: Option<&Filter>,
    ordering: Ordering,
) -> Option<Option<&'e str>> {
    subscription::matches(filter, event).then(|| match ordering {
        Ordering::PerAgent => event.agent_key(),
        Ordering::None => None,
    })
}

/// A delivery's status and next attempt time after an attempt.
pub(super) fn delivery_state(o: &Outcome) -> (DeliveryStatus, Option<i64>) {
    match o.next {
        NextState::Succeeded => (DeliveryStatus::Succeeded, None),
        NextState::RetryAt(at) => (DeliveryStatus::Pending, Some(at)),
        NextState::Failed => (DeliveryStatus::Failed, None),
        NextState::Expired => (DeliveryStatus::Expired, None),
    }
}

/// A turn's outcomes of one subscription, as its health policy sees them.
pub(super) fn attempts<'a>(outcomes: &[&'a Outcome]) -> Vec<Attempt<'a>> {
    outcomes
        .iter()
        // An expired delivery was not attempted, and one refused with a stale OAuth 2 token
        // went again at once: neither says anything of the endpoint's health.
        .filter(|o| o.next != NextState::Expired && !o.batched && !o.again_now)
        .map(|o| Attempt {
            at: o.started_at,
            succeeded: o.next == NextState::Succeeded,
            gone: o.disable.as_deref(),
            error: o.error.as_deref(),
        })
        .collect()
}

/// A claimed event's body, when it was received (unix ms), and its trace context.
pub(super) type Body = (bytes::Bytes, i64, Option<std::sync::Arc<TraceContext>>);

/// Bodies of claimed events by tenant and sequence, read once per claim however many
/// subscriptions (fan-out) claimed the same event; the bytes are shared, not copied.
pub(super) type Bodies = HashMap<String, HashMap<i64, Body>>;

/// The sequences among `rows` whose bodies `known` lacks.
pub(super) fn missing_bodies(rows: &[ClaimRow], known: &HashMap<i64, Body>) -> Vec<i64> {
    rows.iter()
        .map(|r| r.sequence)
        .filter(|s| !known.contains_key(s))
        .collect()
}

/// Claimed rows with their bodies, as [`Claimed`] items; `None` if a body is missing.
pub(super) fn claimed(
    sub_id: &str,
    rows: Vec<ClaimRow>,
    bodies: &HashMap<i64, Body>,
    lease_until: i64,
) -> Option<Vec<Claimed>> {
    rows.into_iter()
        .map(|r| {
            let (body, received_at, trace) = bodies.get(&r.sequence)?.clone();
            Some(Claimed {
                delivery_id: r.delivery_id,
                subscription_id: sub_id.to_string(),
                event_id: r.event_id,
                // A System event's delivery points to its body with a negative sequence; it
                // has no place in the tenant's log.
                sequence: r.sequence.max(0),
                attempt: r.attempts as u32 + 1,
                round_attempt: r.round_attempts as u32 + 1,
                body,
                trace,
                created_at: r.created_at,
                received_at,
                superseded: r.superseded,
                lease_until,
            })
        })
        .collect()
}

/// A row the claim statement returns.
pub(super) struct ClaimRow {
    pub delivery_id: i64,
    pub tenant: String,
    pub event_id: String,
    pub sequence: i64,
    pub attempts: i64,
    pub round_attempts: i64,
    pub created_at: i64,
    pub superseded: i64,
    /// Its due order: `(next_attempt_at, sequence)`.
    pub due: (i64, i64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_powers_of_two_largest_first() {
        let rows: Vec<usize> = (0..1_300).collect();
        let sizes: Vec<usize> = fixed_chunks(&rows).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![512, 512, 256, 16, 4]);
        assert_eq!(sizes.iter().sum::<usize>(), 1_300);
        assert!(fixed_chunks::<u8>(&[]).is_empty());
        assert_eq!(padded_len(5), 8);
        assert_eq!(padded_len(1), 1);
        assert_eq!(
            padded(&[1, 2, 3]).copied().collect::<Vec<_>>(),
            [1, 2, 3, 3]
        );
        assert_eq!(padded::<u8>(&[]).count(), 0);
    }
}
