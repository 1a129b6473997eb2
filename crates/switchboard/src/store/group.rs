//! The writer's side shared by both backends. Ingest requests, claims and outcomes queue as
//! [`Command`]s; each writer turn takes every command already queued (a [`Group`]), commits it
//! in one transaction and answers each. What to write is decided here, in plain functions —
//! sequences, duplicates, conflicts, the outbox rows, subscription health — so that the two
//! writers (SQLite's on a thread of its own, PostgreSQL's an async task) only run statements.

use std::collections::{BTreeMap, HashMap};

use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;

use super::{
    Accepted, Claimed, DeliveryStatus, IngestError, IngestJob, NextState, Outcome, StoreError,
};
use crate::event::{Event, Timestamp};
use crate::subscription::{self, Filter, Ordering, SubscriptionSpec};

/// Most events (and outcomes) one turn takes; more wait for the next. Small enough that a turn
/// stays short, so claims and outcomes queued behind a burst of ingest are not kept waiting.
pub(super) const MAX_GROUP_EVENTS: usize = 2_000;
/// Commands waiting for the writer before senders queue up behind them.
pub(super) const QUEUE_DEPTH: usize = 4096;
/// Rows per multi-row statement: powers of two, largest first, so any count takes at most one
/// statement of each size and the few statement shapes stay in the prepared-statement cache.
pub(super) const INSERT_CHUNKS: [usize; 10] = [512, 256, 128, 64, 32, 16, 8, 4, 2, 1];
/// Most values in one `IN (…)` list (SQLite's writer; PostgreSQL's joins an array).
pub(super) const IN_LIST: usize = 512;

pub(super) type JobResult = Result<Vec<Accepted>, IngestError>;
type Reply = oneshot::Sender<JobResult>;
type ClaimReply = oneshot::Sender<Result<Vec<Claimed>, StoreError>>;

pub(super) enum Command {
    Ingest(IngestJob, Reply),
    /// Claim up to `n` due deliveries of each listed subscription, leased until the given ms.
    Claim(Vec<(String, u32)>, i64, ClaimReply),
    /// Write back finished attempts.
    Record(Vec<Outcome>, oneshot::Sender<Result<(), StoreError>>),
    /// Commit what is queued, then stop.
    Shutdown,
}

/// A claim request: up to `n` deliveries per listed subscription, leased until `.1`.
pub(super) struct ClaimJob(pub Vec<(String, u32)>, pub i64, pub ClaimReply);

/// Everything one writer turn commits.
#[derive(Default)]
pub(super) struct Group {
    pub ingests: Vec<(IngestJob, Reply)>,
    pub outcomes: Vec<Outcome>,
    outcome_replies: Vec<oneshot::Sender<Result<(), StoreError>>>,
    pub claims: Vec<ClaimJob>,
    events: usize,
}

/// What a committed turn hands back.
pub(super) struct Committed {
    pub ingests: Vec<JobResult>,
    pub claims: Vec<Vec<Claimed>>,
    pub deliveries_added: bool,
}

impl Group {
    /// `first` and every command queued behind it, up to about [`MAX_GROUP_EVENTS`]; true if a
    /// shutdown was among them (everything queued before it is then taken).
    pub fn collect(first: Command, rx: &mut mpsc::Receiver<Command>) -> (Group, bool) {
        let mut group = Group::default();
        let mut stopping = false;
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            stopping |= group.add(cmd);
            if group.events < MAX_GROUP_EVENTS || stopping {
                next = rx.try_recv().ok();
            }
        }
        (group, stopping)
    }

    fn add(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Ingest(job, reply) => {
                self.events += job.events.len();
                self.ingests.push((job, reply));
            }
            Command::Record(outcomes, reply) => {
                self.events += outcomes.len();
                self.outcomes.extend(outcomes);
                self.outcome_replies.push(reply);
            }
            Command::Claim(subs, lease, reply) => self.claims.push(ClaimJob(subs, lease, reply)),
            Command::Shutdown => return true,
        }
        false
    }

    pub fn is_empty(&self) -> bool {
        self.ingests.is_empty() && self.outcome_replies.is_empty() && self.claims.is_empty()
    }

    /// A group without ingest holds nothing a client was promised — claims and outcomes; losing
    /// them in a crash only means an attempt is made again — so its commit need not wait for
    /// the disk. The next durable commit flushes it anyway.
    pub fn relaxed(&self) -> bool {
        self.ingests.is_empty()
    }

    pub fn jobs(&self) -> Vec<&IngestJob> {
        self.ingests.iter().map(|(job, _)| job).collect()
    }

    /// The outcomes in the one order every writer locks rows in: by subscription, then delivery.
    pub fn sorted_outcomes(&self) -> Vec<&Outcome> {
        let mut outcomes: Vec<&Outcome> = self.outcomes.iter().collect();
        outcomes.sort_by(|a, b| {
            (&a.subscription_id, a.delivery_id).cmp(&(&b.subscription_id, b.delivery_id))
        });
        outcomes
    }

    /// Answers every command of the group: with its part of `result`, or with the error that
    /// failed the whole turn (nothing of it was stored).
    pub fn answer(self, result: Result<Committed, String>, wake: &Notify) {
        match result {
            Ok(done) => {
                if done.deliveries_added {
                    wake.notify_one();
                }
                for ((_, reply), result) in self.ingests.into_iter().zip(done.ingests) {
                    let _ = reply.send(result);
                }
                for (ClaimJob(_, _, reply), claimed) in self.claims.into_iter().zip(done.claims) {
                    let _ = reply.send(Ok(claimed));
                }
                for reply in self.outcome_replies {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = self.ingests.len(), "group commit failed");
                let failed = || StoreError::GroupCommit(e.clone());
                for (_, reply) in self.ingests {
                    let _ = reply.send(Err(IngestError::Store(failed())));
                }
                for ClaimJob(_, _, reply) in self.claims {
                    let _ = reply.send(Err(failed()));
                }
                for reply in self.outcome_replies {
                    let _ = reply.send(Err(failed()));
                }
            }
        }
    }
}

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

/// An enabled subscription as the outbox needs it: id, filter, ordering.
pub(super) type OutboxSub = (String, Option<Filter>, Ordering);

/// Reads the stored spec of an enabled subscription for the outbox.
pub(super) fn outbox_sub(id: String, spec: &str) -> Result<OutboxSub, serde_json::Error> {
    let spec: SubscriptionSpec = serde_json::from_str(spec)?;
    Ok((id, spec.filter, spec.ordering))
}

/// A delivery to insert: one per new event and matching enabled subscription.
pub(super) struct NewDelivery<'a> {
    pub tenant: &'a str,
    pub subscription_id: &'a str,
    pub event_id: String,
    pub sequence: i64,
    pub agent: Option<&'a str>,
}

/// The outbox rows for `tenant`'s new events among `added`.
pub(super) fn outbox<'a>(
    added: &'a [NewEventRow<'a>],
    tenant: &'a str,
    subs: &'a [OutboxSub],
) -> Vec<NewDelivery<'a>> {
    let mut out = Vec::new();
    for row in added.iter().filter(|r| r.tenant == tenant) {
        for (sub_id, filter, ordering) in subs {
            if let Some(agent) = delivery_agent(&row.event, filter.as_ref(), *ordering) {
                out.push(NewDelivery {
                    tenant,
                    subscription_id: sub_id,
                    event_id: row.id.to_string(),
                    sequence: row.sequence,
                    agent,
                });
            }
        }
    }
    out
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
    }
}

/// What a turn's outcomes mean for one subscription's health.
pub(super) enum Health<'a> {
    /// 410 Gone: disable at once, with this reason.
    Disable(&'a str),
    /// At least one success: the failure count starts over.
    Reset,
    /// Only failures, this many: counted; past the limits the subscription is disabled.
    Failing(i64),
}

/// A subscription failing everything this long, with at least this many attempts, is disabled.
pub(super) const AUTO_DISABLE_AFTER_MS: i64 = 72 * 3600 * 1000;
pub(super) const AUTO_DISABLE_ATTEMPTS: i64 = 10;

/// Each subscription's health after `outcomes` (sorted by subscription), in that order.
pub(super) fn health<'a>(outcomes: &[&'a Outcome]) -> Vec<(&'a str, Health<'a>)> {
    outcomes
        .chunk_by(|a, b| a.subscription_id == b.subscription_id)
        .map(|group| {
            let sub = group[0].subscription_id.as_str();
            let failures = group
                .iter()
                .filter(|o| o.next != NextState::Succeeded)
                .count();
            let verdict = if let Some(reason) = group.iter().find_map(|o| o.disable.as_deref()) {
                Health::Disable(reason)
            } else if failures < group.len() {
                Health::Reset
            } else {
                Health::Failing(failures as i64)
            };
            (sub, verdict)
        })
        .collect()
}

/// Bodies of claimed events by tenant and sequence, read once per claim however many
/// subscriptions (fan-out) claimed the same event; the bytes are shared, not copied.
pub(super) type Bodies = HashMap<String, HashMap<i64, bytes::Bytes>>;

/// The sequences among `rows` whose bodies `known` lacks.
pub(super) fn missing_bodies(rows: &[ClaimRow], known: &HashMap<i64, bytes::Bytes>) -> Vec<i64> {
    rows.iter()
        .map(|r| r.sequence)
        .filter(|s| !known.contains_key(s))
        .collect()
}

/// Claimed rows with their bodies, as [`Claimed`] items; `None` if a body is missing.
pub(super) fn claimed(
    sub_id: &str,
    rows: Vec<ClaimRow>,
    bodies: &HashMap<i64, bytes::Bytes>,
) -> Option<Vec<Claimed>> {
    rows.into_iter()
        .map(|r| {
            Some(Claimed {
                delivery_id: r.delivery_id,
                subscription_id: sub_id.to_string(),
                event_id: r.event_id,
                sequence: r.sequence,
                attempt: r.attempts as u32 + 1,
                round_attempt: r.round_attempts as u32 + 1,
                body: bodies.get(&r.sequence)?.clone(),
                created_at: r.created_at,
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
}

/// The statements both writers run; `$N` placeholders, which SQLite and PostgreSQL both take.
pub(super) mod sql {
    pub const INSERT_EVENTS: &str = "INSERT INTO events \
        (tenant_id, sequence, id, created, category, code, username, received_at, body) VALUES ";
    pub const INSERT_EVENTS_COLUMNS: usize = 9;
    pub const ENABLED_SUBSCRIPTIONS: &str =
        "SELECT id, spec FROM subscriptions WHERE tenant_id = $1 AND enabled = TRUE";
    pub const INSERT_DELIVERIES: &str = "INSERT INTO deliveries (tenant_id, subscription_id, \
        event_id, sequence, agent, status, next_attempt_at, created_at, updated_at) VALUES ";
    pub const INSERT_DELIVERIES_COLUMNS: usize = 9;
    pub const SET_LAST_SEQUENCE: &str =
        "UPDATE tenants SET last_sequence = $1 WHERE id = $2 AND last_sequence < $1";
    pub const INSERT_ATTEMPTS: &str = "INSERT INTO attempts (delivery_id, number, started_at, \
        duration_ms, status_code, error, response_body) VALUES ";
    pub const INSERT_ATTEMPTS_TAIL: &str = " ON CONFLICT DO NOTHING";
    pub const INSERT_ATTEMPTS_COLUMNS: usize = 7;
    /// `$1` is the time; the values follow. VALUES columns are column1, column2, … on both.
    pub const UPDATE_DELIVERIES: &str = "UPDATE deliveries SET status = v.column2, \
        attempt_count = CASE WHEN attempt_count > v.column3 THEN attempt_count ELSE v.column3 END, \
        round_attempts = v.column4, next_attempt_at = v.column5, lease_until = NULL, \
        last_status_code = v.column6, last_error = v.column7, updated_at = $1 FROM (VALUES ";
    pub const UPDATE_DELIVERIES_TAIL: &str = ") AS v WHERE id = v.column1";
    pub const UPDATE_DELIVERIES_COLUMNS: usize = 7;
    pub const DISABLE: &str = "UPDATE subscriptions SET enabled = FALSE, disabled_reason = $1, \
        updated_at = $2 WHERE id = $3 AND enabled = TRUE";
    pub const RESET_FAILURES: &str = "UPDATE subscriptions SET failing_since = NULL, failures = 0 WHERE id = $1 AND failures > 0";
    pub const COUNT_FAILURES: &str = "UPDATE subscriptions SET \
        failing_since = COALESCE(failing_since, $1), failures = failures + $2 WHERE id = $3";
    pub const DISABLE_IF_FAILING: &str = "UPDATE subscriptions SET enabled = FALSE, \
        updated_at = $1, disabled_reason = 'every attempt failed for 72 hours' \
        WHERE id = $2 AND enabled = TRUE AND failures >= $3 AND failing_since <= $4";

    /// `rows` tuples of `columns` placeholders, numbered from `$first`.
    pub fn values(rows: usize, columns: usize, first: usize) -> String {
        let mut out = String::with_capacity(rows * columns * 5);
        let mut n = first;
        for r in 0..rows {
            out.push_str(if r == 0 { "(" } else { ", (" });
            for c in 0..columns {
                if c > 0 {
                    out.push_str(", ");
                }
                out.push('$');
                out.push_str(&n.to_string());
                n += 1;
            }
            out.push(')');
        }
        out
    }

    /// `count` placeholders for an `IN (…)` list, numbered from `$first`, and the closing `)`.
    pub fn list(count: usize, first: usize) -> String {
        let mut out: Vec<String> = (first..first + count).map(|n| format!("${n}")).collect();
        if out.is_empty() {
            out.push("NULL".into());
        }
        format!("{})", out.join(", "))
    }
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
    }

    #[test]
    fn placeholders_number_on() {
        assert_eq!(sql::values(2, 3, 2), "($2, $3, $4), ($5, $6, $7)");
        assert_eq!(sql::list(3, 2), "$2, $3, $4)");
        assert_eq!(sql::list(0, 2), "NULL)");
        assert_eq!(padded_len(5), 8);
        assert_eq!(padded_len(1), 1);
    }
}
