//! The statement texts, each written once with `$N` placeholders (SQLite and PostgreSQL both take
//! them); where the dialects differ, both texts are here and `Dialect` picks one.

use std::borrow::Cow;
use std::sync::OnceLock;

use super::db::Dialect;
use super::decide::INSERT_CHUNKS;

/// Which due deliveries of subscription `$2` a claim at time `$3` takes, in due order: for
/// `per_agent` subscriptions only a delivery with no earlier pending delivery of the same agent
/// is due, so one agent's events go out one at a time in sequence order. `$first` opens the
/// condition, `$after` narrows the walk, `$held` leaves out more rows, and `$limit` names the
/// placeholder of the limit.
macro_rules! claim_rows {
    ($first:literal, $after:literal, $held:literal, $limit:literal) => {
        concat!(
            "FROM deliveries d WHERE ",
            $first,
            "d.subscription_id = $2 AND d.status = 'pending' AND d.next_attempt_at <= $3 \
             AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.id = $2 AND s.enabled = TRUE)",
            $after,
            " AND (d.lease_until IS NULL OR d.lease_until < $3)",
            $held,
            " AND (d.agent IS NULL OR NOT EXISTS ( \
               SELECT 1 FROM deliveries p WHERE p.subscription_id = d.subscription_id \
                 AND p.agent = d.agent AND p.status = 'pending' AND p.sequence < d.sequence)) \
             ORDER BY d.next_attempt_at, d.sequence LIMIT ",
            $limit
        )
    };
}

/// The claim: lease up to `$4` due deliveries of subscription `$2` until `$1`, at time `$3`
/// ([`claim_rows!`]). `$lock` is PostgreSQL's row locking, so concurrent nodes skip each
/// other's rows.
macro_rules! claim_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE deliveries SET lease_until = $1 WHERE id IN (SELECT d.id ",
            claim_rows!("", "", "", "$4"),
            $lock,
            ") RETURNING id, tenant_id, event_id, sequence, attempt_count, round_attempts, \
             created_at, superseded, next_attempt_at"
        )
    };
}

/// SQLite's claim held in memory (`turn::claim`, `conn::HeldClaims`): the rows the claim would
/// take ([`claim_rows!`]), only read — no lease is written, so neither the row nor
/// `deliveries_leased` changes — after due order `($4, $5)`, at most `$6`; with each row's
/// `lease_until` as read (column 9), which a requeue changes (`requeued_lease!`). It goes on
/// after the last claim rather than stepping over the deliveries in flight (a batching
/// subscription has thousands), and keeps the per-agent clause, at no cost where `agent` is
/// NULL: the dispatcher's view may be older than a `PATCH` to `per_agent`. Rows the writer
/// holds are left out by `sb_held(id, lease_until, now)`, a function of the writer's
/// connection. `$1` (the lease) is only named, so that the placeholders number as the claim's.
pub const CLAIM_HELD: &str = concat!(
    "SELECT d.id, d.tenant_id, d.event_id, d.sequence, d.attempt_count, d.round_attempts, \
     d.created_at, d.superseded, d.next_attempt_at, d.lease_until ",
    claim_rows!(
        "$1 = $1 AND ",
        " AND (d.next_attempt_at, d.sequence) > ($4, $5)",
        " AND NOT sb_held(d.id, d.lease_until, $3)",
        "$6"
    )
);
/// What a requeue (a retry asked for, a replay) writes to `lease_until`, for
/// `concat!`: a value no claim can hold (below zero: free, to every "not leased" test and to
/// older releases), and a new one each time, so that an attempt whose claim wrote no lease
/// (held in memory, [`CLAIM_HELD`]) can tell that its delivery was requeued since: its outcome
/// is fenced with the value its claim read.
macro_rules! requeued_lease {
    () => {
        "CASE WHEN deliveries.lease_until < 0 THEN deliveries.lease_until - 1 ELSE -1 END"
    };
}
pub(super) use requeued_lease;
/// How long (ms) claims may go on after the last one before one walks from the start again:
/// a delivery left behind (its lease ran out or was given back, its claim undone) waits at
/// most this long while a backlog keeps every claim busy ahead of it.
pub const CLAIM_CURSOR_MS: i64 = 1_000;

const LOCK_TENANT: &str = "SELECT last_sequence, agents_through FROM tenants WHERE id = $1";
const LOCK_HEALTH: &str = "SELECT failing_since, failures, failing_sent, tenant_id, probes \
    FROM subscriptions WHERE id = $1";

/// Sends `payloads` (PostgreSQL) in one statement with no parameters, for a simple query: each
/// an escape string literal (`E'…'`, its quotes and backslashes doubled), which reads the same
/// whatever `standard_conforming_strings` says.
pub fn notify_literals(payloads: &[String]) -> String {
    let calls: Vec<String> = payloads
        .iter()
        .map(|p| {
            let escaped = p.replace('\\', "\\\\").replace('\'', "''");
            format!("pg_notify('switchboard', E'{escaped}')")
        })
        .collect();
    format!("SELECT {}", calls.join(", "))
}

/// The notification payload that says deliveries became due (dispatchers wake).
pub const DUE: &str = "due";
/// The prefix of the payload that says a tenant's events were committed (its streams wake):
/// `events:<tenant>`.
pub const EVENTS_OF: &str = "events:";

pub(crate) const SQLITE: Dialect = Dialect {
    // IMMEDIATE takes the write lock up front: waiting on it beats failing a read-then-write.
    begin_write: "BEGIN IMMEDIATE",
    lock_tenant: LOCK_TENANT,
    try_lock_tenant: LOCK_TENANT,
    lock_in_order: "",
    try_lock_in_order: "",
    lock_health: LOCK_HEALTH,
    probe: &[
        "INSERT INTO write_probe (at, filler) VALUES ($1, zeroblob(65536))",
        "DELETE FROM write_probe WHERE at < $1",
    ],
    claim: claim_sql!(""),
    // One process owns an SQLite database: nobody else to tell.
    announce: None,
    tenant_tables: &[
        "api_keys",
        "events",
        "event_ids",
        "subscriptions",
        "deliveries",
        "system_events",
        "agents",
        "agent_bases",
        "events_by_username",
        "jobs",
        "pull_cursors",
        "rules",
        "rule_episodes",
        "agent_hours",
        "agent_tails",
        "portal_links",
    ],
    skip_locked: "",
    settle: super::erase::Settle::Checkpoint,
};

pub(crate) const POSTGRES: Dialect = Dialect {
    begin_write: "BEGIN",
    lock_tenant: concat!(
        "SELECT last_sequence, agents_through FROM tenants WHERE id = $1",
        " FOR UPDATE"
    ),
    try_lock_tenant: concat!(
        "SELECT last_sequence, agents_through FROM tenants WHERE id = $1",
        " FOR UPDATE SKIP LOCKED"
    ),
    // Rows are locked as the sort hands them over; "C" orders by bytes, as Rust's `str` does.
    lock_in_order: " ORDER BY id COLLATE \"C\" FOR UPDATE",
    try_lock_in_order: " FOR UPDATE SKIP LOCKED",
    lock_health: concat!(
        "SELECT failing_since, failures, failing_sent, tenant_id, probes FROM subscriptions \
         WHERE id = $1",
        " FOR UPDATE"
    ),
    claim: claim_sql!(" FOR UPDATE OF d SKIP LOCKED"),
    probe: &[
        "INSERT INTO write_probe (at, filler) VALUES ($1, '\\x00')",
        "DELETE FROM write_probe WHERE at < $1",
    ],
    announce: Some("SELECT pg_notify('switchboard', $1)"),
    tenant_tables: &[
        "api_keys",
        "events",
        "subscriptions",
        "deliveries",
        "system_events",
        "agents",
        "agent_bases",
        "events_by_username",
        "jobs",
        "pull_cursors",
        "rules",
        "rule_episodes",
        "agent_hours",
        "agent_tails",
        "portal_links",
    ],
    skip_locked: " FOR UPDATE SKIP LOCKED",
    settle: super::erase::Settle::Vacuum,
};

/// A multi-row statement: `head`, `rows` tuples of `columns` placeholders numbered from
/// `$first`, then `tail`. Its texts for the row counts of `INSERT_CHUNKS` are built once (the
/// 512-row ones are tens of kilobytes), not per turn.
pub struct MultiRow {
    head: &'static str,
    tail: &'static str,
    pub columns: usize,
    first: usize,
    texts: OnceLock<Vec<String>>,
}

impl MultiRow {
    const fn new(head: &'static str, tail: &'static str, columns: usize, first: usize) -> Self {
        MultiRow {
            head,
            tail,
            columns,
            first,
            texts: OnceLock::new(),
        }
    }

    fn build(&self, rows: usize) -> String {
        let values = values(rows, self.columns, self.first);
        format!("{}{values}{}", self.head, self.tail)
    }

    /// The same statement taking one array a column, `$1` to `$columns`, of the PostgreSQL
    /// types `types` (`int8`, `text`, …), joined with `unnest`: one text for any number of
    /// rows. Only for statements whose placeholders start at `$1`.
    pub fn unnest(&self, types: &[&str]) -> String {
        debug_assert_eq!((self.first, types.len()), (1, self.columns));
        let head = self
            .head
            .strip_suffix("VALUES ")
            .expect("a multi-row head ends in VALUES");
        let arrays: Vec<String> = (types.iter().enumerate())
            .map(|(i, t)| format!("${}::{t}[]", i + 1))
            .collect();
        format!(
            "{head}SELECT * FROM unnest({}){}",
            arrays.join(", "),
            self.tail
        )
    }

    /// The statement for `rows` rows.
    pub fn text(&'static self, rows: usize) -> Cow<'static, str> {
        let texts = self
            .texts
            .get_or_init(|| INSERT_CHUNKS.iter().map(|&n| self.build(n)).collect());
        match INSERT_CHUNKS.iter().position(|&n| n == rows) {
            Some(i) => Cow::Borrowed(texts[i].as_str()),
            None => Cow::Owned(self.build(rows)),
        }
    }
}

pub static INSERT_EVENTS: MultiRow = MultiRow::new(
    "INSERT INTO events (tenant_id, sequence, id, created, category, code, username, \
     received_at, body, traceparent, tracestate) VALUES ",
    "",
    11,
    1,
);
/// A tenant's enabled subscriptions with what says whether they changed: `updated_at` and the
/// stored form's length.
pub const ENABLED_SUBSCRIPTION_STAMPS: &str = "SELECT id, updated_at, length(spec) \
    FROM subscriptions WHERE tenant_id = $1 AND enabled = TRUE AND pull = FALSE";
/// The same for several tenants (`IN (` … `)`, from `$1`), each row naming its tenant.
pub const ENABLED_SUBSCRIPTION_STAMPS_OF: &str = "SELECT tenant_id, id, updated_at, \
    length(spec) FROM subscriptions WHERE enabled = TRUE AND pull = FALSE AND tenant_id IN (";
/// Several tenants' rows (`IN (` … `)`, from `$1`), read and locked as `lock_tenant` does one's:
/// the dialect's `lock_in_order` follows the list.
pub const LOCK_TENANTS: &str = "SELECT id, last_sequence, agents_through FROM tenants \
    WHERE id IN (";
/// Their stored forms, for those among a list (`IN (` … `)`, from `$2`) that changed.
pub const SUBSCRIPTION_SPECS: &str = "SELECT id, spec, updated_at, length(spec) \
    FROM subscriptions WHERE tenant_id = $1 AND enabled = TRUE AND pull = FALSE AND id IN (";
pub static INSERT_DELIVERIES: MultiRow = MultiRow::new(
    "INSERT INTO deliveries (tenant_id, subscription_id, event_id, sequence, agent, status, \
     next_attempt_at, created_at, updated_at, lease_until) VALUES ",
    "",
    10,
    1,
);
/// The same for deliveries leased to this node's dispatcher as they are created
/// (`handoff.rs`), returning what it needs to attempt them.
pub static INSERT_HANDED_DELIVERIES: MultiRow = MultiRow::new(
    "INSERT INTO deliveries (tenant_id, subscription_id, event_id, sequence, agent, status, \
     next_attempt_at, created_at, updated_at, lease_until) VALUES ",
    " RETURNING id, subscription_id, sequence",
    10,
    1,
);
/// The same with the coalescing columns, for the deliveries of `latest_status` subscriptions
/// (most deliveries do without: two fewer values to bind per row on the hot path).
pub static INSERT_COALESCED_DELIVERIES: MultiRow = MultiRow::new(
    "INSERT INTO deliveries (tenant_id, subscription_id, event_id, sequence, agent, status, \
     next_attempt_at, created_at, updated_at, lease_until, coalesce_key, superseded) VALUES ",
    "",
    12,
    1,
);
/// A replay's deliveries (with the coalescing columns): created, or set back to pending for a
/// fresh round when the subscription had one for the event.
pub static REPLAY_DELIVERIES: MultiRow = MultiRow::new(
    "INSERT INTO deliveries (tenant_id, subscription_id, event_id, sequence, agent, status, \
     next_attempt_at, created_at, updated_at, lease_until, coalesce_key, superseded) VALUES ",
    concat!(
        " ON CONFLICT (subscription_id, sequence) DO UPDATE SET status = excluded.status, \
         round_attempts = 0, next_attempt_at = excluded.next_attempt_at, lease_until = ",
        requeued_lease!(),
        ", agent = excluded.agent, updated_at = excluded.updated_at, \
         coalesce_key = excluded.coalesce_key, superseded = excluded.superseded, \
         pending_since = CASE WHEN deliveries.status = 'pending' THEN deliveries.pending_since \
           ELSE excluded.updated_at END"
    ),
    12,
    1,
);
/// Events per page of a replay: each page is one writer turn.
pub const REPLAY_PAGE_EVENTS: i64 = 1000;
/// The most sequences one page of a replay looks at: a page reads `(after, after + span]`, so
/// its cost is bounded whatever plan the database picks (on PostgreSQL with stale statistics, a
/// range scan of everything after `after`, sorted, made every page quadratic).
pub const REPLAY_PAGE_SPAN: i64 = 10 * REPLAY_PAGE_EVENTS;
/// A page of a replay's window: `(sequence, body)` of tenant `$1`'s events created from `$2`
/// to `$3`, after sequence `$4` and up to `$5`, at most `$6`. (Placeholders are numbered in
/// the order they appear: SQLite binds them in that order.)
pub const REPLAY_PAGE: &str = "SELECT sequence, body FROM events WHERE tenant_id = $1 \
    AND created >= $2 AND created <= $3 AND sequence > $4 AND sequence <= $5 \
    ORDER BY sequence LIMIT $6";
/// The sequences from `$2` to `$3` that subscription `$1` has a pending delivery of: a
/// replay sets them back for a fresh round but does not count them as requeued.
pub const PENDING_SEQUENCES: &str = "SELECT sequence FROM deliveries WHERE subscription_id = $1 \
    AND status = 'pending' AND sequence >= $2 AND sequence <= $3";
/// A replay of only the failed deliveries of subscription `$3`, up to sequence `$4`, for
/// tenant `$5`'s events created from `$6` to `$7`: pending again, due at `$1`, for a fresh
/// round.
pub const REPLAY_FAILED: &str = concat!(
    "UPDATE deliveries SET status = 'pending', round_attempts = 0, next_attempt_at = $1, \
     lease_until = ",
    requeued_lease!(),
    ", updated_at = $2, pending_since = $2 \
    WHERE subscription_id = $3 AND status = 'failed' AND sequence <= $4 \
    AND sequence IN (SELECT sequence FROM events WHERE tenant_id = $5 \
      AND created >= $6 AND created <= $7)"
);
/// The same, counted: what [`REPLAY_FAILED`] would requeue.
pub const COUNT_FAILED: &str = "SELECT COUNT(*) FROM deliveries \
    WHERE subscription_id = $1 AND status = 'failed' AND sequence <= $2 \
    AND sequence IN (SELECT sequence FROM events WHERE tenant_id = $3 \
      AND created >= $4 AND created <= $5)";
/// Whether job `$1` is still running under this runner's lease `$2` (not canceled, not taken
/// over by another node after the lease ran out) and its subscription `$3` still exists, its
/// row locked for the page's transaction (where the dialect locks; a row another transaction
/// holds is skipped: a `DELETE` canceling it, or another node taking it over).
pub const JOB_RUNNING: &str = "SELECT 1 FROM jobs WHERE id = $1 AND state = 'running' \
    AND lease_until = $2 AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.id = $3)";
/// A job's page committed: `$1` more done, resume after `$2`, leased until `$3` — only while
/// it is running under the lease `$6` the page was made under.
pub const JOB_PAGE_DONE: &str = "UPDATE jobs SET done = done + $1, resume_after = $2, \
    lease_until = $3, updated_at = $4 WHERE id = $5 AND state = 'running' AND lease_until = $6";
/// Coalescing (`latest_status`): the pending StatusChanged deliveries of agent `$3` for
/// subscription `$2` before sequence `$4`, not in flight at `$1`, end `superseded`; each
/// returns how many it had replaced itself.
pub const SUPERSEDE: &str = "UPDATE deliveries SET status = 'superseded', next_attempt_at = NULL, \
    updated_at = $1 WHERE subscription_id = $2 AND coalesce_key = $3 AND status = 'pending' \
    AND sequence < $4 AND (lease_until IS NULL OR lease_until < $1) RETURNING superseded";
pub const SET_LAST_SEQUENCE: &str =
    "UPDATE tenants SET last_sequence = $1 WHERE id = $2 AND last_sequence < $1";
/// Also moves the agents projection along, when it was up to date (see `agents.rs`).
pub const SET_SEQUENCES: &str = "UPDATE tenants SET last_sequence = $1, agents_through = $1 \
    WHERE id = $2 AND last_sequence < $1";
/// Several tenants' `agents_through`: each row is a tenant and the sequence its agents
/// projection now reaches (a fold of deferred events: `agents::fold_deferred`).
pub static SET_THROUGH_OF: MultiRow = MultiRow::new(
    "UPDATE tenants SET agents_through = v.column2 FROM (VALUES ",
    ") AS v WHERE tenants.id = v.column1",
    2,
    1,
);
/// [`SET_LAST_SEQUENCE`] or [`SET_SEQUENCES`] for several tenants: each row is a tenant, its
/// new last sequence, and 1 where the agents projection moves along too (else 0).
pub static SET_SEQUENCES_OF: MultiRow = MultiRow::new(
    "UPDATE tenants SET last_sequence = v.column2, agents_through = CASE WHEN v.column3 = 1 \
     THEN v.column2 ELSE agents_through END FROM (VALUES ",
    ") AS v WHERE tenants.id = v.column1 AND tenants.last_sequence < v.column2",
    3,
    1,
);
pub static UPSERT_AGENTS: MultiRow = MultiRow::new(
    "INSERT INTO agents (tenant_id, username, last_sequence, signed_in, availability_code, \
     state) VALUES ",
    " ON CONFLICT (tenant_id, username) DO UPDATE SET last_sequence = excluded.last_sequence, \
     signed_in = excluded.signed_in, availability_code = excluded.availability_code, \
     state = excluded.state",
    6,
    1,
);
pub static INSERT_EPISODES: MultiRow = MultiRow::new(
    "INSERT INTO rule_episodes (tenant_id, rule_id, subject, revision, since_ms, start_seq, \
     due_ms, fired) VALUES ",
    "",
    8,
    1,
);
pub static UPSERT_HOURS: MultiRow = MultiRow::new(
    "INSERT INTO agent_hours (tenant_id, username, start, signed_in_secs, changed_by, figures) \
     VALUES ",
    " ON CONFLICT (tenant_id, username, start) DO UPDATE SET \
     signed_in_secs = excluded.signed_in_secs, changed_by = excluded.changed_by, \
     figures = excluded.figures",
    6,
    1,
);
pub static UPSERT_TAILS: MultiRow = MultiRow::new(
    "INSERT INTO agent_tails (tenant_id, username, tail) VALUES ",
    " ON CONFLICT (tenant_id, username) DO UPDATE SET tail = excluded.tail",
    3,
    1,
);

pub static UPSERT_AGENT_BASES: MultiRow = MultiRow::new(
    "INSERT INTO agent_bases (tenant_id, username, through_sequence, state) VALUES ",
    " ON CONFLICT (tenant_id, username) DO UPDATE SET \
     through_sequence = excluded.through_sequence, state = excluded.state",
    4,
    1,
);
pub static INSERT_ATTEMPTS: MultiRow = MultiRow::new(
    "INSERT INTO attempts (delivery_id, number, started_at, duration_ms, status_code, error, \
     response_body) VALUES ",
    " ON CONFLICT DO NOTHING",
    7,
    1,
);
/// SQLite's: `$1` is the time; the values follow. VALUES columns are column1, column2, ….
/// (PostgreSQL's joins arrays instead: see `postgres/writer.rs`.) An attempt's outcome changes
/// its delivery's state only while the delivery still holds the lease the attempt was made
/// under (`column8`; for a claim held in memory, the row's value as its claim read it, perhaps
/// NULL: hence `IS`): one requeued meanwhile (a replay, a retry asked for: `requeued_lease!`
/// written) and perhaps claimed again (another lease) is in a fresh round that the old
/// attempt's outcome must not end; one canceled meanwhile is no longer pending. Its attempt is
/// counted either way, so the next attempt's number is new. (`column9`, the subscription: SQLite
/// may give a deleted delivery's id to a new one, which an old outcome must not touch.)
/// Whether an outcome ([`UPDATE_DELIVERIES`]) still ends its delivery's round: the row holds
/// the lease the attempt was made under (or the value its held claim read), and is pending.
macro_rules! outcome_fence {
    () => {
        "(lease_until IS v.column8 AND status = 'pending')"
    };
}
pub static UPDATE_DELIVERIES: MultiRow = MultiRow::new(
    concat!(
        "UPDATE deliveries SET status = CASE WHEN ",
        outcome_fence!(),
        " THEN v.column2 ELSE status END, \
         attempt_count = CASE WHEN attempt_count > v.column3 THEN attempt_count \
           ELSE v.column3 END, \
         round_attempts = CASE WHEN ",
        outcome_fence!(),
        " THEN v.column4 ELSE round_attempts END, next_attempt_at = CASE WHEN ",
        outcome_fence!(),
        " THEN v.column5 ELSE next_attempt_at END, \
         last_status_code = v.column6, last_error = v.column7, lease_until = CASE WHEN ",
        outcome_fence!(),
        " THEN NULL ELSE lease_until END, updated_at = $1 FROM (VALUES "
    ),
    ") AS v WHERE id = v.column1 AND subscription_id = v.column9",
    9,
    2,
);
/// A subscription's health as the policy decided it.
pub const SET_HEALTH: &str = "UPDATE subscriptions SET failing_since = $1, failures = $2, \
    failing_sent = $3, last_error = $4, probe_at = $5, probes = $6 WHERE id = $7";
pub const DISABLE: &str = "UPDATE subscriptions SET enabled = FALSE, disabled_reason = $1, \
    updated_at = $2 WHERE id = $3 AND enabled = TRUE";
/// A System event's body; its deliveries point to it with `sequence = -id`.
pub const INSERT_SYSTEM_EVENT: &str = "INSERT INTO system_events (tenant_id, event_id, \
    created_at, body) VALUES ($1, $2, $3, $4) RETURNING id";
pub const SYSTEM_BODY: &str = "SELECT body, created_at FROM system_events WHERE id = $1";
/// A delivery whose retries are spent before its first attempt (Heartbeats: the next follows).
pub const NO_RETRY: &str = "UPDATE deliveries SET round_attempts = 1000000 WHERE id = $1";

pub const SUBSCRIPTION_COLUMNS: &str = "SELECT id, tenant_id, spec, enabled, disabled_reason, \
    old_secret, old_secret_expires_at, created_at, updated_at FROM subscriptions";

pub const DELIVERY_COLUMNS: &str = "SELECT id, event_id, subscription_id, sequence, status, \
    attempt_count, next_attempt_at, last_status_code, last_error, created_at, updated_at \
    FROM deliveries";

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The notifications a turn sends with its `COMMIT` are literals in a simple query: quotes
    /// and backslashes cannot end them early or change them (PostgreSQL reads these back:
    /// `streams::every_postgresql_nodes_streams_see_every_nodes_events`).
    #[test]
    fn notifications_sent_with_the_commit_are_escaped_literals() {
        let payloads = [DUE.to_string(), format!("{EVENTS_OF}a'b\\c")];
        assert_eq!(
            notify_literals(&payloads),
            "SELECT pg_notify('switchboard', E'due'), \
             pg_notify('switchboard', E'events:a''b\\\\c')"
        );
    }

    #[test]
    fn multi_row_texts_are_built_once_per_size() {
        let one = INSERT_ATTEMPTS.text(1);
        assert_eq!(
            one,
            "INSERT INTO attempts (delivery_id, number, started_at, duration_ms, status_code, \
             error, response_body) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"
        );
        assert!(matches!(one, Cow::Borrowed(_)));
        assert!(matches!(UPDATE_DELIVERIES.text(2), Cow::Borrowed(t) if t.contains("($2, $3")));
        assert!(matches!(INSERT_EVENTS.text(3), Cow::Owned(t) if t.ends_with("$33)")));
    }

    #[test]
    fn placeholders_number_on() {
        assert_eq!(values(2, 3, 2), "($2, $3, $4), ($5, $6, $7)");
        assert_eq!(list(3, 2), "$2, $3, $4)");
        assert_eq!(list(0, 2), "NULL)");
    }

    /// The `$N` placeholders of `text`, in order of appearance (single digits).
    fn placeholders(text: &str) -> Vec<&str> {
        text.match_indices('$')
            .map(|(i, _)| &text[i..i + 2])
            .collect()
    }

    #[test]
    fn several_tenants_rows_number_their_placeholders_in_order() {
        // SQLite numbers `$N` by first appearance: the text must show them in order.
        let sequences = SET_SEQUENCES_OF.build(2);
        assert_eq!(
            placeholders(&sequences),
            ["$1", "$2", "$3", "$4", "$5", "$6"]
        );
        assert!(
            sequences.ends_with(
                "AS v WHERE tenants.id = v.column1 AND tenants.last_sequence < v.column2"
            )
        );
        let through = SET_THROUGH_OF.build(3);
        assert_eq!(placeholders(&through), ["$1", "$2", "$3", "$4", "$5", "$6"]);
        assert!(
            through.starts_with(
                "UPDATE tenants SET agents_through = v.column2 FROM (VALUES ($1, $2), "
            )
        );
    }
}
