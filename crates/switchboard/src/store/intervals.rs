//! The intervals projection (DESIGN §18; `agent/intervals/kept.rs`): each agent's final hours as
//! rows of `agent_hours`, and what can still change as its row of `agent_tails`, folded from the
//! log by the writer behind `tenants.intervals_through`.
//!
//! It follows the log rather than riding in the ingest turn's fold: a batch of a tenant's Agent
//! events, read back with when each was received (a commit's events share that time), at each
//! rules tick (every 250 ms) and before a read of the intervals (so that a read sees every
//! event committed before it). Ingest never waits on it. A tenant's projection starts with its
//! first read of intervals, from the start of its log (`intervals_through` 0: not kept): a
//! tenant that never asks for intervals never pays for them (the fold costs the writer about a
//! tenth of its time under agent-heavy ingest; docs/BENCHMARKS.md).

use std::collections::{BTreeMap, HashMap};

use super::conn::{Conn, corrupt};
use super::db::{Arg, args};
use super::decide::IN_LIST;
use super::{ERASED, Store, StoreError, sql};
use crate::agent::intervals::kept::{Empty, HOUR, Hour, Tail, assemble};
use crate::agent::intervals::{AgentInterval, Window};
use crate::event::Event;
use crate::event::catalog::AGENT;

/// Agent events one fold reads of a tenant's log: a turn stays short.
const FOLD_BATCH: i64 = 10_000;
/// Batches a read waits for before answering as of where the projection is.
const READ_CATCH_UP_BATCHES: u32 = 100;

/// The rules tick's part: a batch for each tenant whose log runs ahead of its projection. A
/// tenant's projection starts with its first read of intervals (`intervals_through` 0: not
/// kept), so that tenants that never ask for intervals never pay for them.
pub(super) async fn tick<C: Conn>(conn: &mut C) -> Result<(), StoreError> {
    let rows = conn
        .query(
            "SELECT id FROM tenants WHERE intervals_through > 0 \
             AND intervals_through < last_sequence",
            &[],
        )
        .await?;
    for mut row in rows {
        fold(conn, &row.text(0)?).await?;
    }
    Ok(())
}

/// Folds the next batch of `tenant`'s Agent events into the projection; true if more remain.
/// On PostgreSQL a tenant another node's turn holds is left for later (false).
pub(super) async fn fold<C: Conn>(conn: &mut C, tenant: &str) -> Result<bool, StoreError> {
    let locked = conn
        .query(conn.dialect().try_lock_tenant, &args![tenant])
        .await?;
    let Some(row) = locked.first() else {
        return Ok(false);
    };
    let last = row.int(0)?;
    let through = conn
        .query(
            "SELECT intervals_through FROM tenants WHERE id = $1",
            &args![tenant],
        )
        .await?
        .first()
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(last);
    if through >= last {
        return Ok(false);
    }
    let rows = conn
        .query(
            "SELECT sequence, received_at, body FROM events WHERE tenant_id = $1 \
             AND sequence > $2 AND sequence <= $3 AND category = 1 ORDER BY sequence LIMIT $4",
            &args![tenant, through, last, FOLD_BATCH],
        )
        .await?;
    let full = rows.len() as i64 == FOLD_BATCH;
    let mut events: Vec<(i64, i64, Event)> = Vec::with_capacity(rows.len());
    for mut r in rows {
        let body = r.text(2)?;
        let event = Event::from_canonical_json(&body).map_err(corrupt)?;
        events.push((r.int(0)?, r.int(1)?, event));
    }
    let reached = match (full, events.last()) {
        (true, Some((s, _, _))) => *s,
        _ => last,
    };
    // By agent, in sequence order.
    let mut by_agent: BTreeMap<&str, Vec<(i64, i64, &Event)>> = BTreeMap::new();
    for (sequence, received, event) in &events {
        if event.category == AGENT
            && let Some(name) = event.username().filter(|u| *u != ERASED)
        {
            by_agent
                .entry(name)
                .or_default()
                .push((*sequence, *received, event));
        }
    }
    let names: Vec<&str> = by_agent.keys().copied().collect();
    let mut tails = load_tails(conn, tenant, &names).await?;
    let mut hours: Vec<(&str, i64, Hour)> = Vec::new();
    let mut written: Vec<(&str, String)> = Vec::with_capacity(names.len());
    for (name, evs) in by_agent {
        let mut tail = tails.remove(name).unwrap_or_default();
        // Events received together (one commit) fold as one.
        for commit in evs.chunk_by(|a, b| a.1 == b.1) {
            let refs: Vec<(i64, &Event)> = commit.iter().map(|(s, _, e)| (*s, *e)).collect();
            for (start, hour) in tail.commit(&refs, commit[0].1.div_euclid(1000)) {
                hours.push((name, start, hour));
            }
        }
        written.push((name, serde_json::to_string(&tail).map_err(corrupt)?));
    }
    let texts: Vec<String> = hours
        .iter()
        .map(|(_, _, h)| serde_json::to_string(h).map_err(corrupt))
        .collect::<Result<_, _>>()?;
    let mut values = Vec::with_capacity(hours.len() * sql::UPSERT_HOURS.columns);
    for ((name, start, hour), text) in hours.iter().zip(&texts) {
        values.extend(args![
            tenant,
            *name,
            *start,
            hour.signed_in_secs() as i64,
            hour.changed_by(),
            text.as_str(),
        ]);
    }
    conn.insert(&sql::UPSERT_HOURS, &values).await?;
    let mut values = Vec::with_capacity(written.len() * sql::UPSERT_TAILS.columns);
    for (name, text) in &written {
        values.extend(args![tenant, *name, text.as_str()]);
    }
    conn.insert(&sql::UPSERT_TAILS, &values).await?;
    conn.execute(
        "UPDATE tenants SET intervals_through = $1 WHERE id = $2",
        &args![reached, tenant],
    )
    .await?;
    Ok(full)
}

/// Retention's part (DESIGN §18): the hours made by events through sequence `through` (each
/// hour's `changed_by`; retention has purged those events, or kept them only for pending
/// deliveries) go with them, and reads of intervals from before the last of them are refused
/// from then on. Hours go as their events do — a backfill's hours as long as its events stay.
pub(super) async fn purge<C: Conn>(
    conn: &mut C,
    tenant: &str,
    through: i64,
) -> Result<(), StoreError> {
    let last = conn
        .query(
            "SELECT MAX(start) FROM agent_hours WHERE tenant_id = $1 AND changed_by <= $2",
            &args![tenant, through],
        )
        .await?
        .first()
        .map(|r| r.opt_int(0))
        .transpose()?
        .flatten();
    let Some(last) = last else {
        return Ok(());
    };
    conn.execute(
        "DELETE FROM agent_hours WHERE tenant_id = $1 AND changed_by <= $2",
        &args![tenant, through],
    )
    .await?;
    conn.execute(
        "UPDATE tenants SET intervals_from = $1 WHERE id = $2 AND intervals_from < $1",
        &args![last + HOUR, tenant],
    )
    .await?;
    Ok(())
}

/// The tails of `names`: stored, or new — from the agent's base when retention purged its
/// first events, else from nothing. A stored tail that does not decode is counted and starts
/// again the same way, from the agent's next events (the hours kept before stay; the hour it
/// was in is written again from what follows).
async fn load_tails<C: Conn>(
    conn: &mut C,
    tenant: &str,
    names: &[&str],
) -> Result<HashMap<String, Tail>, StoreError> {
    let mut tails = HashMap::with_capacity(names.len());
    let mut missing: Vec<&str> = Vec::new();
    for chunk in names.chunks(IN_LIST) {
        let text = format!(
            "SELECT username, tail FROM agent_tails WHERE tenant_id = $1 AND username IN ({}",
            sql::list(chunk.len(), 2)
        );
        let mut values = vec![Arg::from(tenant)];
        values.extend(chunk.iter().map(|n| Arg::from(*n)));
        for mut row in conn.query(&text, &values).await? {
            let name = row.text(0)?;
            match serde_json::from_str::<Tail>(&row.text(1)?) {
                Ok(t) => {
                    tails.insert(name.clone(), t);
                }
                Err(e) => {
                    tracing::error!(tenant, username = name, error = %e, "a stored intervals tail does not decode: it starts again from the agent's next events");
                    metrics::counter!(crate::telemetry::UNDECODABLE_ROWS, "kind" => "agent_tail")
                        .increment(1);
                }
            }
        }
        missing.extend(chunk.iter().filter(|n| !tails.contains_key(**n)));
    }
    for chunk in missing.chunks(IN_LIST) {
        let text = format!(
            "SELECT username, state FROM agent_bases WHERE tenant_id = $1 AND username IN ({}",
            sql::list(chunk.len(), 2)
        );
        let mut values = vec![Arg::from(tenant)];
        values.extend(chunk.iter().map(|n| Arg::from(*n)));
        for mut row in conn.query(&text, &values).await? {
            let name = row.text(0)?;
            if let Ok(state) = serde_json::from_str(&row.text(1)?) {
                tails.insert(name, Tail::new(Some(state)));
            }
        }
    }
    Ok(tails)
}

/// What a read of intervals asks for, beside the window.
#[derive(Clone, Copy, Debug)]
pub struct IntervalFilter {
    /// Which intervals without signed-in time are shown.
    pub empty: Empty,
    /// `changed_since_sequence`, and when that sequence was received (unix seconds; unknown:
    /// every interval): only intervals changed after it, or still going when it was received.
    pub changed_since: Option<(i64, Option<i64>)>,
}

impl Store {
    /// Brings `tenant`'s intervals projection up to its log (a batch per writer turn, up to a
    /// bound; the first time, this starts the projection) and returns the last sequence it
    /// holds, and where its hours start (unix seconds: retention purged those before).
    pub async fn intervals_through(&self, tenant: &str) -> Result<(i64, i64), StoreError> {
        let (mut through, last, kept_from) = self.intervals_position(tenant).await?;
        let mut batches = 0;
        while through < last && batches < READ_CATCH_UP_BATCHES {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let more = self
                .turn(
                    super::command::Command::FoldIntervals(tenant.to_string(), reply),
                    answer,
                )
                .await?;
            batches += 1;
            through = self.intervals_position(tenant).await?.0;
            if !more {
                break;
            }
        }
        Ok((through, kept_from))
    }

    /// Brings `tenant`'s intervals projection up to its log if it is kept (see [`tick`]).
    pub(super) async fn catch_up_kept_intervals(&self, tenant: &str) -> Result<(), StoreError> {
        if self.intervals_position(tenant).await?.0 > 0 {
            self.intervals_through(tenant).await?;
        }
        Ok(())
    }

    /// `tenant`'s `intervals_through`, `last_sequence` and `intervals_from`.
    async fn intervals_position(&self, tenant: &str) -> Result<(i64, i64, i64), StoreError> {
        let rows = self
            .0
            .db
            .query(
                "SELECT intervals_through, last_sequence, intervals_from FROM tenants \
                 WHERE id = $1",
                &args![tenant],
            )
            .await?;
        match rows.first() {
            Some(r) => Ok((r.int(0)?, r.int(1)?, r.int(2)?)),
            None => Ok((0, 0, 0)),
        }
    }

    /// Up to `limit` of `tenant`'s agents with intervals, by username, after `after` (or just
    /// `only`, if it has any).
    pub async fn interval_agents(
        &self,
        tenant: &str,
        after: Option<&str>,
        only: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let rows = match only {
            Some(name) => {
                self.0
                    .db
                    .query(
                        "SELECT username FROM agent_tails WHERE tenant_id = $1 AND username = $2",
                        &args![tenant, name],
                    )
                    .await?
            }
            None => {
                self.0
                    .db
                    .query(
                        "SELECT username FROM agent_tails WHERE tenant_id = $1 \
                         AND username > $2 ORDER BY username LIMIT $3",
                        &args![tenant, after.unwrap_or(""), i64::from(limit)],
                    )
                    .await?
            }
        };
        rows.into_iter().map(|mut r| r.text(0)).collect()
    }

    /// The intervals in `window` of `agents`, each agent's in order.
    pub async fn agents_intervals(
        &self,
        tenant: &str,
        agents: &[String],
        window: Window,
        filter: IntervalFilter,
    ) -> Result<Vec<Vec<AgentInterval>>, StoreError> {
        if agents.is_empty() {
            return Ok(Vec::new());
        }
        // The tails first: every hour they have handed over is in the table by then.
        let text = format!(
            "SELECT username, tail FROM agent_tails WHERE tenant_id = $1 AND username IN ({}",
            sql::list(agents.len(), 2)
        );
        let mut values = vec![Arg::from(tenant)];
        values.extend(agents.iter().map(|n| Arg::from(n.as_str())));
        let mut tails: HashMap<String, Tail> = HashMap::with_capacity(agents.len());
        for mut r in self.0.db.query(&text, &values).await? {
            let tail = serde_json::from_str(&r.text(1)?).map_err(corrupt)?;
            tails.insert(r.text(0)?, tail);
        }
        let from = window.since.div_euclid(HOUR) * HOUR;
        // Each agent's hours as one row, `start figures|start figures|…` in order: rows cross
        // from SQLite's thread to this task one by one (a wake-up each), and a month of an
        // agent is hundreds of hours. (`string_agg … ORDER BY`: PostgreSQL, and SQLite since
        // 3.44; a figures text, JSON arrays of numbers, holds neither `|` nor a space.)
        let mut sql = String::from(
            "SELECT username, string_agg(CAST(start AS TEXT) || ' ' || figures, '|' \
             ORDER BY start) FROM agent_hours WHERE tenant_id = $1 AND start >= $2 AND start < $3",
        );
        let mut values: Vec<Arg> = args![tenant, from, window.until].into();
        if filter.empty == Empty::Left {
            sql.push_str(" AND signed_in_secs > 0");
        }
        if let Some((n, Some(at))) = filter.changed_since {
            sql.push_str(" AND (changed_by > $4 OR start + 3600 > $5)");
            values.extend(args![n, at]);
        }
        sql.push_str(&format!(
            " AND username IN ({} GROUP BY username",
            sql::list(agents.len(), values.len() + 1)
        ));
        values.extend(agents.iter().map(|n| Arg::from(n.as_str())));
        let mut hours: HashMap<String, Vec<(i64, Hour)>> = HashMap::new();
        for mut r in self.0.db.query(&sql, &values).await? {
            let joined = r.text(1)?;
            let mut rows = Vec::new();
            for one in joined.split('|') {
                let (start, figures) = one
                    .split_once(' ')
                    .ok_or_else(|| corrupt("an hour without its start"))?;
                let start = start.parse().map_err(|_| corrupt("an hour's start"))?;
                rows.push((start, serde_json::from_str(figures).map_err(corrupt)?));
            }
            hours.insert(r.text(0)?, rows);
        }
        let mut out = Vec::with_capacity(agents.len());
        for name in agents {
            let Some(tail) = tails.get(name) else {
                out.push(Vec::new());
                continue;
            };
            let rows = hours.remove(name).unwrap_or_default();
            let mut found = assemble(window, name, rows, tail, filter.empty);
            if let Some((n, open_after)) = filter.changed_since {
                found.retain(|i| {
                    let end = i.start.to_unix_ms() / 1000 + i.size_secs;
                    i.changed_by > n || open_after.is_none_or(|at| end > at)
                });
            }
            out.push(found);
        }
        Ok(out)
    }

    /// `username`'s intervals in `window` (none for an agent the projection does not know).
    pub async fn agent_intervals(
        &self,
        tenant: &str,
        username: &str,
        window: Window,
        filter: IntervalFilter,
    ) -> Result<Vec<AgentInterval>, StoreError> {
        let agents = [username.to_string()];
        let found = self
            .agents_intervals(tenant, &agents, window, filter)
            .await?;
        Ok(found.into_iter().next().unwrap_or_default())
    }
}
