//! The agents projection (DESIGN §9): the state of every agent, folded from Agent events by
//! [`crate::agent::apply`] and written by the writer in the same transaction as the events, so
//! that it is exactly as durable as the log and every node reads the same.
//!
//! - A turn folds its new events into `agents` and moves `tenants.agents_through` (the last
//!   sequence the projection holds) along with the log — while the writer is not busy. Under
//!   load (more than [`BUSY_EVENTS`] events in [`BUSY_WINDOW_MS`]) it defers: the tenant's
//!   Agent events wait in the writer's memory ([`Deferred`]) and are folded together, in a
//!   later turn, once [`FOLD_EVERY`] have gathered or [`MAX_LAG_MS`] have passed (a
//!   `FoldAgents` command comes every [`FOLD_TICK`]). An agent that changes twenty times in
//!   that window is then written once, not twenty times: written every turn, the projection
//!   cost much of ingest's throughput (docs/BENCHMARKS.md). Readers see exactly the state as of `agents_through`
//!   (`as_of_sequence`), at most that far behind the log.
//! - A log the projection does not cover (a database from before it, deferred events lost in a
//!   crash or a failed turn, or folded by another node in between) is read back from the log:
//!   at open by [`Store::catch_up_agents`], a batch per writer turn, and by a fold whose
//!   memory does not cover the tenant's log since `agents_through`.
//! - Retention folds the Agent events it purges into `agent_bases`, from which `as_of` and
//!   timelines rebuild what the log no longer holds.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio::sync::oneshot;

use super::command::Command;
use super::conn::{Conn, corrupt};
use super::db::{Arg, Row, Select, args};
use super::decide::IN_LIST;
use super::rules::Moved;
use super::usernames::{self, Part};
use super::{Store, StoreError, sql};
use crate::agent::{self, Agent, GroupFields};
use crate::event::catalog::AGENT;
use crate::event::{Event, Timestamp};

/// Events folded per catch-up batch.
const CATCH_UP_BATCH: i64 = 2_000;
/// The writer is busy when more events than this came in the last [`BUSY_WINDOW_MS`].
pub(super) const BUSY_EVENTS: usize = 500;
pub(super) const BUSY_WINDOW_MS: i64 = 100;
/// A busy writer folds a tenant's deferred events once this many have gathered…
pub(super) const FOLD_EVERY: i64 = 8_192;
/// …or once the oldest has waited this long.
pub(super) const MAX_LAG_MS: i64 = 50;
/// How often the writer is asked to fold what it deferred.
pub(crate) const FOLD_TICK: std::time::Duration = std::time::Duration::from_millis(50);

/// Where a tenant's log and projection are: its last sequence, and the last one folded.
#[derive(Clone, Copy, Debug)]
pub(super) struct Position {
    pub last: i64,
    pub through: i64,
}

/// A tenant's agents as its deferred events left them, not yet written.
struct Backlog {
    /// The `agents_through` the events follow on from: `None` when they are not known to be
    /// all of the tenant's since then (the fold then reads the log).
    from: Option<i64>,
    /// The last sequence they reach.
    to: i64,
    /// When the first was deferred (writer's clock, ms).
    since: i64,
    /// The states of the agents they concern, read once and moved on in memory.
    states: HashMap<String, Agent>,
    /// Which of those changed.
    changed: BTreeSet<String>,
    /// While the tenant has rules: the states as the events found them (`None`: a new agent),
    /// for the rules to see which agents' matches changed.
    before: HashMap<String, Option<Agent>>,
}

impl Backlog {
    /// A backlog holding no states yet: following the log from `from` (`None`: it does not),
    /// through `to`, since `since`.
    fn new(from: Option<i64>, to: i64, since: i64) -> Self {
        Backlog {
            from,
            to,
            since,
            states: HashMap::new(),
            before: HashMap::new(),
            changed: BTreeSet::new(),
        }
    }

    /// Moves the states on by `by_agent`'s events, up to sequence `to`; `states` were read now
    /// for the agents `read` (those the backlog did not hold), noted as they were found when
    /// the tenant's rules `keep` them.
    fn step(
        &mut self,
        by_agent: BTreeMap<&str, Vec<(i64, &Event)>>,
        read: &[(&str, i64)],
        states: HashMap<String, Agent>,
        keep: bool,
        groups: &GroupFields,
        to: i64,
    ) {
        if keep {
            for (name, _) in read {
                self.before
                    .insert(name.to_string(), states.get(*name).cloned());
            }
        }
        self.states.extend(states);
        for (name, evs) in by_agent {
            let mut state = self.states.remove(name);
            let before = state.as_ref().map(|a| a.last_sequence);
            for (sequence, event) in evs {
                agent::step_grouped(&mut state, event, sequence, groups);
            }
            if let Some(a) = state {
                if Some(a.last_sequence) != before {
                    self.changed.insert(name.to_string());
                }
                self.states.insert(name.to_string(), a);
            }
        }
        self.to = to;
    }

    fn lost(&mut self, to: i64) {
        self.from = None;
        self.to = to;
        self.states.clear();
        self.before.clear();
        self.changed.clear();
    }
}

/// The writer's deferred agent states, by tenant, and its recent load.
pub(crate) struct Deferred {
    tenants: BTreeMap<String, Backlog>,
    /// The backlogs this turn's folds took out (their `to` and `since`), put back to be folded
    /// from the log if the turn does not commit: else a tenant with nothing more to ingest would
    /// keep its agents behind its log until a restart.
    taken: BTreeMap<String, (i64, i64)>,
    /// (time, events) of recent ingest turns.
    recent: std::collections::VecDeque<(i64, usize)>,
    /// The fields whose values the fold notes in each agent's `groups` (DESIGN §18).
    pub groups: GroupFields,
    /// The tenants' rules, judged on what the folds write (`rules.rs`).
    pub rules: super::rules::Engine,
}

impl Deferred {
    pub fn new(groups: GroupFields) -> Self {
        Deferred {
            tenants: BTreeMap::new(),
            taken: BTreeMap::new(),
            recent: std::collections::VecDeque::new(),
            groups,
            rules: super::rules::Engine::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// Counts `events` ingested at `now`.
    pub fn note(&mut self, now: i64, events: usize) {
        self.recent.push_back((now, events));
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| *t <= now - BUSY_WINDOW_MS)
        {
            self.recent.pop_front();
        }
    }

    fn busy(&self) -> bool {
        self.recent.iter().map(|(_, n)| n).sum::<usize>() > BUSY_EVENTS
    }

    /// A turn begins: what the previous one took out is written.
    pub fn begin(&mut self) {
        self.taken.clear();
    }

    /// After a failed turn: what memory holds may not be committed, and what the turn's folds
    /// took out was not written; folds read the log.
    pub fn forget(&mut self) {
        self.rules.forget();
        for (tenant, (to, since)) in std::mem::take(&mut self.taken) {
            (self.tenants.entry(tenant)).or_insert_with(|| Backlog::new(None, to, since));
        }
        for b in self.tenants.values_mut() {
            let to = b.to;
            b.lost(to);
        }
    }

    fn due(&self, tenant: &str, through: i64, now: i64) -> bool {
        self.tenants
            .get(tenant)
            .is_some_and(|b| b.to - through >= FOLD_EVERY || now - b.since >= MAX_LAG_MS)
    }
}

/// A tenant's part of a turn that committed its `events` (sequences after `at.last`, the last
/// being `to`).
pub(super) struct Projecting<'a> {
    pub tenant: &'a str,
    pub at: Position,
    pub to: i64,
    pub events: Vec<(i64, &'a Event)>,
}

/// How a tenant's events are projected in this turn.
enum Path<'a> {
    /// Folded now, from the stored states.
    Live(BTreeMap<&'a str, Vec<(i64, &'a Event)>>),
    /// Deferred: moved on in memory, from the states the backlog holds or reads now.
    Deferred(BTreeMap<&'a str, Vec<(i64, &'a Event)>>),
    /// The backlog does not follow the log: a fold reads the log.
    Lost,
}

/// The projection's part of a turn that committed the events of `tenants`: folds them now, or
/// defers them (see the module's doc). For each tenant, in order: true when the caller is to
/// move its `agents_through` along with its last sequence to `to` (folded here and now; the
/// turn writes both, for all its tenants at once: `turn::set_sequences`); false when only the
/// last sequence moves (deferred, or folded from the log, which wrote `agents_through`
/// itself). The states the tenants' events need are read in one statement, and the agents
/// folded from memory written in one, whatever the number of tenants (PostgreSQL; SQLite
/// reads tenant by tenant: local calls).
pub(super) async fn project<C: Conn>(
    conn: &mut C,
    tenants: &[Projecting<'_>],
    deferred: &mut Deferred,
    now: i64,
) -> Result<Vec<bool>, StoreError> {
    let busy = deferred.busy();
    // What each tenant needs read.
    let mut paths = Vec::with_capacity(tenants.len());
    let mut wanted: BTreeMap<&str, Vec<(&str, i64)>> = BTreeMap::new();
    for p in tenants {
        let by_agent = by_agent(&p.events);
        if !busy && p.at.through == p.at.last && !deferred.tenants.contains_key(p.tenant) {
            let names: Vec<(&str, i64)> = by_agent.iter().map(|(n, e)| (*n, e[0].0)).collect();
            if !names.is_empty() {
                wanted.insert(p.tenant, names);
            }
            paths.push(Path::Live(by_agent));
            continue;
        }
        let (at, to) = (p.at, p.to);
        let backlog = deferred
            .tenants
            .entry(p.tenant.to_string())
            .or_insert_with(|| {
                Backlog::new((at.through == at.last).then_some(at.through), at.last, now)
            });
        if backlog.from.is_some() && backlog.to == at.last {
            let missing: Vec<(&str, i64)> = by_agent
                .iter()
                .filter(|(n, _)| !backlog.states.contains_key(**n))
                .map(|(n, evs)| (*n, evs[0].0))
                .collect();
            if !missing.is_empty() {
                wanted.insert(p.tenant, missing);
            }
            paths.push(Path::Deferred(by_agent));
        } else {
            // Another node wrote in between, or memory was lost: the log has what memory
            // misses.
            backlog.lost(to);
            paths.push(Path::Lost);
        }
    }
    let mut loaded = load_of(conn, &wanted, &deferred.groups).await?;
    // Folded from memory, written together below.
    let mut moved: Vec<Moved> = Vec::new();
    let mut folded = Vec::with_capacity(tenants.len());
    for (p, path) in tenants.iter().zip(paths) {
        let states = loaded.remove(p.tenant).unwrap_or_default();
        match path {
            Path::Live(by_agent) => {
                let keep = deferred.rules.wants(p.tenant);
                let (out, before) =
                    fold_states(Table::Live, by_agent, states, &deferred.groups, keep);
                moved.push(Moved {
                    tenant: p.tenant.to_string(),
                    from: p.at.through,
                    to: p.to,
                    agents: out.into_iter().map(|(a, _)| a).collect(),
                    before,
                });
                folded.push(true);
                continue;
            }
            Path::Deferred(by_agent) => {
                let keep = deferred.rules.wants(p.tenant);
                if let Some(backlog) = deferred.tenants.get_mut(p.tenant) {
                    let read = wanted.get(p.tenant).map(Vec::as_slice).unwrap_or_default();
                    backlog.step(by_agent, read, states, keep, &deferred.groups, p.to);
                }
            }
            Path::Lost => {}
        }
        if !busy || deferred.due(p.tenant, p.at.through, now) {
            let at = Position {
                last: p.to,
                through: p.at.through,
            };
            match take_fold(deferred, p.tenant, at) {
                Fold::Nothing => folded.push(false),
                Fold::Memory(m) => {
                    moved.push(m);
                    folded.push(true);
                }
                Fold::Log => {
                    fold_log(conn, p.tenant, at, deferred).await?;
                    folded.push(false);
                }
            }
        } else {
            folded.push(false);
        }
    }
    write_moved(conn, moved, deferred).await?;
    Ok(folded)
}

/// Writes the agents folds from memory moved on, of any tenants, in one statement, and hands
/// them to the rules.
async fn write_moved<C: Conn>(
    conn: &mut C,
    moved: Vec<Moved>,
    deferred: &mut Deferred,
) -> Result<(), StoreError> {
    let rows: Vec<(&str, &Agent, i64)> = moved
        .iter()
        .flat_map(|m| m.agents.iter().map(|a| (m.tenant.as_str(), a, 0)))
        .collect();
    write_rows(conn, Table::Live, &rows).await?;
    for m in moved {
        deferred.rules.moved(m);
    }
    Ok(())
}

/// Folds every deferred tenant whose row this turn can lock now (on PostgreSQL another
/// node's turn may hold it: that tenant waits for the next fold); returns the tenants whose
/// projection it moved on (their streams are woken after the commit). The tenants' rows are
/// locked in one statement, the agents folded from memory upserted in one and their
/// `agents_through` moved in one, however many tenants (a tenant folded from the log is
/// folded on its own).
pub(super) async fn fold_deferred<C: Conn>(
    conn: &mut C,
    deferred: &mut Deferred,
) -> Result<Vec<String>, StoreError> {
    let tenants: Vec<String> = deferred.tenants.keys().cloned().collect();
    let mut at_of: HashMap<String, Position> = HashMap::with_capacity(tenants.len());
    if let [tenant] = tenants.as_slice() {
        let rows = conn
            .query(conn.dialect().try_lock_tenant, &args![tenant.as_str()])
            .await?;
        if let Some(row) = rows.first() {
            let at = Position {
                last: row.int(0)?,
                through: row.int(1)?,
            };
            at_of.insert(tenant.clone(), at);
        }
    } else {
        for chunk in tenants.chunks(IN_LIST) {
            let values: Vec<Arg> = super::decide::padded(chunk)
                .map(|t| Arg::from(t.as_str()))
                .collect();
            let text = format!(
                "{}{}{}",
                sql::LOCK_TENANTS,
                sql::list(values.len(), 1),
                conn.dialect().try_lock_in_order
            );
            for mut row in conn.query(&text, &values).await? {
                let at = Position {
                    last: row.int(1)?,
                    through: row.int(2)?,
                };
                at_of.insert(row.text(0)?, at);
            }
        }
    }
    let mut folded = Vec::new();
    let (mut moved, mut throughs) = (Vec::new(), Vec::new());
    for tenant in tenants {
        match at_of.get(&tenant) {
            Some(&at) => {
                if at.through < at.last {
                    folded.push(tenant.clone());
                }
                match take_fold(deferred, &tenant, at) {
                    Fold::Nothing => {}
                    Fold::Memory(m) => {
                        moved.push(m);
                        throughs.push((tenant, at.last));
                    }
                    Fold::Log => fold_log(conn, &tenant, at, deferred).await?,
                }
            }
            // Locked by another node: next time. (SQLite never says so: deleted.)
            None if conn.dialect().try_lock_tenant == conn.dialect().lock_tenant => {
                deferred.tenants.remove(&tenant);
            }
            None => {}
        }
    }
    match throughs.as_slice() {
        [] => {}
        [(tenant, through)] => set_through(conn, tenant, *through).await?,
        _ => {
            for chunk in throughs.chunks(IN_LIST) {
                // Padded with copies of the last row, which change nothing more.
                let mut values = Vec::new();
                for (tenant, through) in super::decide::padded(chunk) {
                    values.extend(args![tenant.as_str(), *through]);
                }
                let rows = values.len() / sql::SET_THROUGH_OF.columns;
                conn.execute(&sql::SET_THROUGH_OF.text(rows), &values)
                    .await?;
            }
        }
    }
    write_moved(conn, moved, deferred).await?;
    Ok(folded)
}

/// What a fold of a tenant's backlog writes.
enum Fold {
    /// The projection is already at the log's end.
    Nothing,
    /// The agents memory moved on (in `agents`), to be written and `agents_through` moved.
    Memory(Moved),
    /// Memory does not follow the log from `agents_through`: fold from the log.
    Log,
}

/// Takes `tenant`'s backlog out of `deferred`, and says what a fold to `at.last` writes.
fn take_fold(deferred: &mut Deferred, tenant: &str, at: Position) -> Fold {
    let backlog = deferred.tenants.remove(tenant);
    if let Some(b) = &backlog {
        deferred.taken.insert(tenant.to_string(), (b.to, b.since));
    }
    if at.through >= at.last {
        return Fold::Nothing;
    }
    match backlog {
        Some(mut b) if b.from == Some(at.through) && b.to == at.last => {
            let agents: Vec<Agent> = b
                .changed
                .iter()
                .filter_map(|n| b.states.remove(n))
                .collect();
            let mut before = std::mem::take(&mut b.before);
            before.retain(|n, _| b.changed.contains(n));
            Fold::Memory(Moved {
                tenant: tenant.to_string(),
                from: at.through,
                to: at.last,
                agents,
                before,
            })
        }
        _ => Fold::Log,
    }
}

/// Folds `tenant`'s events after `at.through` through `at.last` from the log, writes them and
/// moves `agents_through` there.
async fn fold_log<C: Conn>(
    conn: &mut C,
    tenant: &str,
    at: Position,
    deferred: &mut Deferred,
) -> Result<(), StoreError> {
    let (to, agents) = fold_from_log(conn, tenant, at, i64::MAX, &deferred.groups).await?;
    deferred.rules.moved(Moved {
        tenant: tenant.to_string(),
        from: at.through,
        to,
        agents,
        before: HashMap::new(),
    });
    Ok(())
}

async fn set_through<C: Conn>(conn: &mut C, tenant: &str, through: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE tenants SET agents_through = $1 WHERE id = $2",
        &args![through, tenant],
    )
    .await
    .map(drop)
}

/// Folds up to `limit` of `tenant`'s Agent events after `at.through` through `at.last`, read from
/// the log, and moves `agents_through` as far as it got; returns that sequence, and the agents
/// written.
async fn fold_from_log<C: Conn>(
    conn: &mut C,
    tenant: &str,
    at: Position,
    limit: i64,
    groups: &GroupFields,
) -> Result<(i64, Vec<Agent>), StoreError> {
    let rows = conn
        .query(
            "SELECT sequence, body FROM events WHERE tenant_id = $1 AND sequence > $2 \
             AND sequence <= $3 AND category = 1 ORDER BY sequence LIMIT $4",
            &args![tenant, at.through, at.last, limit],
        )
        .await?;
    let full = rows.len() as i64 == limit;
    let events = parse_events(rows)?;
    let refs: Vec<(i64, &Event)> = events.iter().map(|(s, e)| (*s, e)).collect();
    let agents = fold_in(conn, Table::Live, tenant, &refs, groups).await?;
    let reached = match (full, events.last()) {
        (true, Some((s, _))) => *s,
        _ => at.last,
    };
    set_through(conn, tenant, reached).await?;
    Ok((reached, agents))
}

/// Where a fold is kept.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Table {
    /// `agents`: the live state.
    Live,
    /// `agent_bases`: the state after the purged events.
    Base,
}

fn decode(text: &str) -> Result<Agent, serde_json::Error> {
    serde_json::from_str(text)
}

/// Logs and counts a stored agent that does not decode (DESIGN §15): it harms only itself.
fn undecodable(tenant: &str, username: &str, what: &str, e: &serde_json::Error) {
    tracing::error!(tenant, username, error = %e, "a stored agent {what} does not decode: it is re-folded from the log");
    metrics::counter!(crate::telemetry::UNDECODABLE_ROWS, "kind" => "agent").increment(1);
}

/// Agent events read per page when an agent is re-folded or rebuilt from the log.
const REFOLD_PAGE: i64 = 2_000;
/// An agent's base (its state after the purged events).
const BASE_OF: &str =
    "SELECT through_sequence, state FROM agent_bases WHERE tenant_id = $1 AND username = $2";

/// A walk through one agent's events in the log, a page at a time, in sequence order: from
/// `events_by_username` up to the tenant's `usernames_through`, then the log's tail after it
/// (`usernames.rs`) — so that an agent with a long history takes bounded memory, and an agent
/// with none costs nothing.
struct Pages {
    tenant: String,
    username: String,
    /// The last sequence read.
    after: i64,
    /// Read up to this sequence.
    through: i64,
    /// The tenant's `usernames_through`.
    indexed: i64,
    part: Part,
    ended: bool,
}

impl Pages {
    fn new(tenant: &str, username: &str, after: i64, through: i64, indexed: i64) -> Self {
        Pages {
            tenant: tenant.to_string(),
            username: username.to_string(),
            after,
            through,
            indexed,
            part: Part::Indexed,
            ended: false,
        }
    }

    fn statement(&self) -> Select<'_> {
        usernames::page(
            self.part,
            "e.sequence, e.body",
            &self.tenant,
            &self.username,
            self.after,
            self.through,
            self.indexed,
            REFOLD_PAGE,
            |sql| {
                sql.text(" AND e.category = 1");
            },
        )
    }

    /// The events of the rows [`Pages::statement`] answered (none, at the end of a part).
    fn take(&mut self, rows: Vec<Row>) -> Result<Vec<(i64, Event)>, StoreError> {
        self.advance(&rows)?;
        parse_events(rows)
    }

    /// Moves past the rows [`Pages::statement`] answered.
    fn advance(&mut self, rows: &[Row]) -> Result<(), StoreError> {
        if (rows.len() as i64) < REFOLD_PAGE {
            match self.part {
                Part::Indexed => self.part = Part::Tail,
                Part::Tail => self.ended = true,
            }
        }
        if let Some(row) = rows.last() {
            self.after = row.int(0)?;
        }
        Ok(())
    }
}

/// An agent's base row, if any, as `(through_sequence, state)`; a state that does not decode is
/// counted and left out (what was folded into it is purged: a rebuild starts from nothing).
fn base_of(
    tenant: &str,
    username: &str,
    row: Option<Row>,
) -> Result<(i64, Option<Agent>), StoreError> {
    let Some(mut row) = row else {
        return Ok((0, None));
    };
    let through = row.int(0)?;
    match decode(&row.text(1)?) {
        Ok(a) => Ok((through, Some(a))),
        Err(e) => {
            undecodable(tenant, username, "base", &e);
            Ok((through, None))
        }
    }
}

/// `username`'s state right before sequence `before`, re-folded from its base and the log in the
/// writer's transaction (its stored row does not decode).
async fn refold<C: Conn>(
    conn: &mut C,
    tenant: &str,
    username: &str,
    before: i64,
    groups: &GroupFields,
) -> Result<Option<Agent>, StoreError> {
    let base = conn.query(BASE_OF, &args![tenant, username]).await?;
    let (after, mut state) = base_of(tenant, username, base.into_iter().next())?;
    let indexed = match conn
        .query(usernames::THROUGH, &args![tenant])
        .await?
        .first()
    {
        Some(row) => row.int(0)?,
        None => 0,
    };
    let mut pages = Pages::new(tenant, username, after, before - 1, indexed);
    while !pages.ended {
        let sql = pages.statement();
        let rows = conn.query(&sql.sql, &sql.args).await?;
        for (sequence, event) in pages.take(rows)? {
            agent::step_grouped(&mut state, &event, sequence, groups);
        }
    }
    Ok(state)
}

fn encode(agent: &Agent) -> String {
    serde_json::to_string(agent).unwrap_or_default()
}

/// `events` (in sequence order) by the agent they concern; others than Agent events are
/// skipped.
fn by_agent<'a>(events: &[(i64, &'a Event)]) -> BTreeMap<&'a str, Vec<(i64, &'a Event)>> {
    let mut out: BTreeMap<&str, Vec<(i64, &Event)>> = BTreeMap::new();
    for &(sequence, event) in events {
        if event.category == AGENT
            && let Some(name) = event.username()
        {
            out.entry(name).or_default().push((sequence, event));
        }
    }
    out
}

/// The stored states of `names` in `table`, each with the sequence of the first event about to
/// be folded into it. A live state that does not decode is re-folded from the log up to that
/// event; a base that does not decode is left out (the events folded into it are purged).
async fn load<C: Conn>(
    conn: &mut C,
    table: Table,
    tenant: &str,
    names: &[(&str, i64)],
    groups: &GroupFields,
) -> Result<HashMap<String, Agent>, StoreError> {
    let only: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
    let rows = read_states(conn, table, tenant, &only).await?;
    decode_states(conn, table, tenant, names, rows, groups).await
}

/// `(username, state)` of `tenant`'s `names` stored in `table`.
async fn read_states<C: Conn + ?Sized>(
    conn: &mut C,
    table: Table,
    tenant: &str,
    names: &[&str],
) -> Result<Vec<(String, String)>, StoreError> {
    let select = match table {
        Table::Live => "SELECT username, state FROM agents WHERE tenant_id = $1 AND username IN (",
        Table::Base => {
            "SELECT username, state FROM agent_bases WHERE tenant_id = $1 AND username IN ("
        }
    };
    let mut out = Vec::with_capacity(names.len());
    for chunk in names.chunks(IN_LIST) {
        // Padded with copies of the last name to one of a few lengths, so that turns share a
        // few prepared statements (and PostgreSQL their plans) whatever their agents' count.
        let mut values = vec![Arg::from(tenant)];
        values.extend(super::decide::padded(chunk).map(|n| Arg::from(*n)));
        let text = format!("{select}{}", sql::list(values.len() - 1, 2));
        for mut row in conn.query(&text, &values).await? {
            out.push((row.text(0)?, row.text(1)?));
        }
    }
    Ok(out)
}

/// [`Conn::agents_of`] one tenant after another.
pub(super) async fn states_each<C: Conn + ?Sized>(
    conn: &mut C,
    wanted: &BTreeMap<&str, Vec<&str>>,
) -> Result<Vec<(String, String, String)>, StoreError> {
    let mut out = Vec::new();
    for (tenant, names) in wanted {
        for (name, state) in read_states(conn, Table::Live, tenant, names).await? {
            out.push((tenant.to_string(), name, state));
        }
    }
    Ok(out)
}

/// The states `rows` hold of `tenant`'s `names` (see [`load`]).
async fn decode_states<C: Conn>(
    conn: &mut C,
    table: Table,
    tenant: &str,
    names: &[(&str, i64)],
    rows: Vec<(String, String)>,
    groups: &GroupFields,
) -> Result<HashMap<String, Agent>, StoreError> {
    let mut states = HashMap::with_capacity(rows.len());
    let mut bad = Vec::new();
    for (name, state) in rows {
        match decode(&state) {
            Ok(a) => {
                states.insert(name, a);
            }
            Err(e) => {
                let what = if table == Table::Live {
                    "state"
                } else {
                    "base"
                };
                undecodable(tenant, &name, what, &e);
                bad.push(name);
            }
        }
    }
    if table == Table::Live {
        for name in bad {
            let before = names
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(i64::MAX, |(_, s)| *s);
            if let Some(a) = refold(conn, tenant, &name, before, groups).await? {
                states.insert(name, a);
            }
        }
    }
    Ok(states)
}

/// The live states of each tenant's `wanted` agents (see [`load`]), by tenant: read in one
/// statement for all of them where the backend can ([`Conn::agents_of`], which also says when
/// one tenant's `IN` lists do better).
async fn load_of<C: Conn>(
    conn: &mut C,
    wanted: &BTreeMap<&str, Vec<(&str, i64)>>,
    groups: &GroupFields,
) -> Result<HashMap<String, HashMap<String, Agent>>, StoreError> {
    let mut out = HashMap::with_capacity(wanted.len());
    let names: BTreeMap<&str, Vec<&str>> = wanted
        .iter()
        .map(|(t, names)| (*t, names.iter().map(|(n, _)| *n).collect()))
        .collect();
    let mut rows: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (tenant, name, state) in conn.agents_of(&names).await? {
        rows.entry(tenant).or_default().push((name, state));
    }
    for (tenant, names) in wanted {
        let found = rows.remove(*tenant).unwrap_or_default();
        let states = decode_states(conn, Table::Live, tenant, names, found, groups).await?;
        out.insert(tenant.to_string(), states);
    }
    Ok(out)
}

/// Writes `agents` (each with, for a base, the last sequence folded into it) to `table`.
async fn write<C: Conn>(
    conn: &mut C,
    table: Table,
    tenant: &str,
    agents: &[(Agent, i64)],
) -> Result<(), StoreError> {
    let rows: Vec<(&str, &Agent, i64)> = agents.iter().map(|(a, t)| (tenant, a, *t)).collect();
    write_rows(conn, table, &rows).await
}

/// Writes agents of any tenants, `(tenant, agent, through)` (see [`write`]), in one statement.
async fn write_rows<C: Conn>(
    conn: &mut C,
    table: Table,
    agents: &[(&str, &Agent, i64)],
) -> Result<(), StoreError> {
    if agents.is_empty() {
        return Ok(());
    }
    let rows: Vec<(&str, &Agent, String, i64)> = agents
        .iter()
        .map(|(tenant, a, through)| (*tenant, *a, encode(a), *through))
        .collect();
    let statement = match table {
        Table::Live => &sql::UPSERT_AGENTS,
        Table::Base => &sql::UPSERT_AGENT_BASES,
    };
    let mut values = Vec::with_capacity(rows.len() * statement.columns);
    for (tenant, a, json, through) in &rows {
        match table {
            Table::Live => values.extend(args![
                *tenant,
                a.username.as_str(),
                a.last_sequence,
                a.signed_in,
                a.availability_code,
                json.as_str(),
            ]),
            Table::Base => {
                values.extend(args![*tenant, a.username.as_str(), *through, json.as_str()])
            }
        }
    }
    conn.insert(statement, &values).await?;
    Ok(())
}

/// Folds `events` (in sequence order; others than Agent events are skipped) into `table`;
/// returns the states written.
pub(super) async fn fold_in<C: Conn>(
    conn: &mut C,
    table: Table,
    tenant: &str,
    events: &[(i64, &Event)],
    groups: &GroupFields,
) -> Result<Vec<Agent>, StoreError> {
    let (agents, _) = fold_in_keeping(conn, table, tenant, events, groups, false).await?;
    Ok(agents)
}

/// [`fold_in`], also returning, when `keep`, the states the written agents had before
/// (`None`: new).
async fn fold_in_keeping<C: Conn>(
    conn: &mut C,
    table: Table,
    tenant: &str,
    events: &[(i64, &Event)],
    groups: &GroupFields,
    keep: bool,
) -> Result<(Vec<Agent>, HashMap<String, Option<Agent>>), StoreError> {
    let by_agent = by_agent(events);
    if by_agent.is_empty() {
        return Ok((Vec::new(), HashMap::new()));
    }
    let names: Vec<(&str, i64)> = by_agent.iter().map(|(n, evs)| (*n, evs[0].0)).collect();
    let states = load(conn, table, tenant, &names, groups).await?;
    let (out, kept) = fold_states(table, by_agent, states, groups, keep);
    write(conn, table, tenant, &out).await?;
    Ok((out.into_iter().map(|(a, _)| a).collect(), kept))
}

/// The states some agents had before a fold, by username (`None`: new).
type Before = HashMap<String, Option<Agent>>;

/// Folds each agent's events into its state among `states` (none: a new agent); returns the
/// states to write, each with the last sequence folded into it, and, when `keep`, the states
/// they had before (`None`: new).
fn fold_states(
    table: Table,
    by_agent: BTreeMap<&str, Vec<(i64, &Event)>>,
    mut states: HashMap<String, Agent>,
    groups: &GroupFields,
    keep: bool,
) -> (Vec<(Agent, i64)>, Before) {
    let mut kept = HashMap::new();
    let mut out = Vec::with_capacity(by_agent.len());
    for (name, evs) in by_agent {
        let mut state = states.remove(name);
        let before = state.as_ref().map(|a| a.last_sequence);
        if keep {
            kept.insert(name.to_string(), state.clone());
        }
        let through = evs.last().map_or(0, |(s, _)| *s);
        for (sequence, event) in evs {
            agent::step_grouped(&mut state, event, sequence, groups);
        }
        // A base records how far it has folded even when nothing changed.
        if let Some(a) = state
            && (table == Table::Base || Some(a.last_sequence) != before)
        {
            out.push((a, through));
        }
    }
    (out, kept)
}

/// `(sequence, event)` of stored rows `(sequence, body)`.
fn parse_events(rows: Vec<Row>) -> Result<Vec<(i64, Event)>, StoreError> {
    rows.into_iter()
        .map(|mut r| {
            let body = r.text(1)?;
            Ok((
                r.int(0)?,
                Event::from_canonical_json(&body).map_err(corrupt)?,
            ))
        })
        .collect()
}

/// One catch-up batch for `tenant`, in a writer turn: folds the next events the projection does
/// not hold. True if more remain.
pub(super) async fn catch_up_batch<C: Conn>(
    conn: &mut C,
    tenant: &str,
    deferred: &mut Deferred,
) -> Result<bool, StoreError> {
    let rows = conn
        .query(conn.dialect().lock_tenant, &args![tenant])
        .await?;
    let Some(row) = rows.first() else {
        return Ok(false);
    };
    let at = Position {
        last: row.int(0)?,
        through: row.int(1)?,
    };
    if at.through >= at.last {
        return Ok(false);
    }
    let (reached, agents) =
        fold_from_log(conn, tenant, at, CATCH_UP_BATCH, &deferred.groups).await?;
    deferred.rules.moved(Moved {
        tenant: tenant.to_string(),
        from: at.through,
        to: reached,
        agents,
        before: HashMap::new(),
    });
    Ok(reached < at.last)
}

/// The Agent events among `sequences` of `tenant` (about to be purged), read before they go:
/// [`fold_purged`] folds them into their agents' bases after the delete, so that a purge on a
/// full disk writes the bases into the room it has just made.
pub(super) async fn purged_agent_events<C: Conn>(
    conn: &mut C,
    tenant: &str,
    sequences: &[i64],
) -> Result<Vec<(i64, Event)>, StoreError> {
    let mut sql = Select::new("SELECT sequence, body FROM events WHERE category = 1");
    sql.push(" AND tenant_id = ", tenant)
        .text(" AND sequence IN (");
    for (i, s) in sequences.iter().enumerate() {
        sql.push(if i == 0 { "" } else { ", " }, Arg::from(*s));
    }
    sql.text(") ORDER BY sequence");
    parse_events(conn.query(&sql.sql, &sql.args).await?)
}

/// Folds purged Agent events (from [`purged_agent_events`]) into their agents' bases.
pub(super) async fn fold_purged<C: Conn>(
    conn: &mut C,
    tenant: &str,
    events: &[(i64, Event)],
    groups: &GroupFields,
) -> Result<(), StoreError> {
    let refs: Vec<(i64, &Event)> = events.iter().map(|(s, e)| (*s, e)).collect();
    fold_in(conn, Table::Base, tenant, &refs, groups)
        .await
        .map(drop)
}

/// A page of agents.
#[derive(Clone, Debug, Default)]
pub struct AgentQuery {
    pub signed_in: Option<bool>,
    pub availability_code: Option<i64>,
    /// Usernames after this one.
    pub after: Option<String>,
    pub limit: u32,
}

/// Why a rebuild is not answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Retention purged events of this agent from the range asked for.
    Purged,
    /// The agent has more than `max_history_events` events in the log up to there.
    TooLong,
}

/// An agent's past, read for a rebuild: the base retention left (the state after its last
/// purged event), then its events still in the log after it, in sequence order, read
/// [`REFOLD_PAGE`] at a time — so that a rebuild holds a page of events, never all of them.
pub struct History<'s> {
    store: &'s Store,
    base: Option<(i64, Agent)>,
    pages: Pages,
    /// Most events read.
    max: usize,
    read: usize,
}

impl History<'_> {
    /// The next page of rows; `Ok(None)` at the end.
    async fn rows(&mut self) -> Result<Option<Result<Vec<Row>, Refused>>, StoreError> {
        while !self.pages.ended {
            let sql = self.pages.statement();
            let rows = self.store.0.db.query(&sql.sql, &sql.args).await?;
            self.pages.advance(&rows)?;
            self.read += rows.len();
            if self.read > self.max {
                return Ok(Some(Err(Refused::TooLong)));
            }
            if !rows.is_empty() {
                return Ok(Some(Ok(rows)));
            }
        }
        Ok(None)
    }

    /// The next page of events; `Ok(None)` at the end.
    async fn page(&mut self) -> Result<Option<Result<Vec<(i64, Event)>, Refused>>, StoreError> {
        match self.rows().await? {
            Some(Ok(rows)) => Ok(Some(Ok(parse_events(rows)?))),
            Some(Err(refused)) => Ok(Some(Err(refused))),
            None => Ok(None),
        }
    }

    /// The state right after `sequence` (`through`, when the history was opened with one).
    pub async fn as_of(
        mut self,
        sequence: i64,
    ) -> Result<Result<Option<Agent>, Refused>, StoreError> {
        let mut state = match self.base.take() {
            Some((through, _)) if through > sequence => return Ok(Err(Refused::Purged)),
            Some((_, a)) => Some(a),
            None => None,
        };
        while let Some(page) = self.page().await? {
            let page = match page {
                Ok(p) => p,
                Err(refused) => return Ok(Err(refused)),
            };
            let groups = &self.store.0.groups;
            for (s, e) in page.iter().take_while(|(s, _)| *s <= sequence) {
                agent::step_grouped(&mut state, e, *s, groups);
            }
        }
        Ok(Ok(state))
    }

    /// The timeline between `since` and `until`; `Ok(Ok(None))` when the agent is unknown.
    pub async fn timeline(
        mut self,
        since: Timestamp,
        until: Option<Timestamp>,
    ) -> Result<Result<Option<Vec<agent::Interval>>, Refused>, StoreError> {
        let mut state = match self.base.take() {
            Some((_, a)) if a.last_event_at > since => return Ok(Err(Refused::Purged)),
            Some((_, a)) => Some(a),
            None => None,
        };
        let mut known = state.is_some();
        // The events up to the first one after `since` fold into the state the timeline
        // starts from; from there on, they make it.
        let mut line: Option<agent::Timeline> = None;
        while let Some(page) = self.page().await? {
            let page = match page {
                Ok(p) => p,
                Err(refused) => return Ok(Err(refused)),
            };
            known = true;
            for (s, e) in &page {
                if line.is_none() && e.creation > since {
                    line = Some(agent::Timeline::new(state.take(), since, until));
                }
                match &mut line {
                    Some(l) => l.push(*s, e),
                    None => {
                        agent::step(&mut state, e, *s);
                    }
                }
            }
            if line.as_ref().is_some_and(agent::Timeline::ended) {
                break;
            }
        }
        if !known {
            return Ok(Ok(None));
        }
        let line = line.unwrap_or_else(|| agent::Timeline::new(state, since, until));
        Ok(Ok(Some(line.finish())))
    }
}

impl Store {
    /// The database's plan for [`Store::agent_history`] (`EXPLAIN`), as
    /// [`Store::list_events_plan`].
    #[doc(hidden)]
    pub async fn agent_history_plan(
        &self,
        tenant: &str,
        username: &str,
    ) -> Result<String, StoreError> {
        let pages = Pages::new(tenant, username, 0, i64::MAX, i64::MAX);
        self.plan(&pages.statement()).await
    }

    /// An agent read from a row `(username, last_sequence, state)`: one whose state does not
    /// decode is logged and counted (once per stored version) and re-folded from the log up to
    /// sequence `through` (inclusive).
    async fn read_agent(
        &self,
        tenant: &str,
        row: &mut Row,
        through: i64,
    ) -> Result<Option<Agent>, StoreError> {
        let e = match decode(&row.text(2)?) {
            Ok(a) => return Ok(Some(a)),
            Err(e) => e,
        };
        let username = row.text(0)?;
        let version = (format!("agent {tenant} {username}"), row.int(1)?);
        if self
            .0
            .undecodable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(version)
        {
            undecodable(tenant, &username, "state", &e);
        }
        let history = self
            .agent_history(tenant, &username, Some(through), usize::MAX)
            .await?;
        Ok(history.as_of(through).await?.unwrap_or(None))
    }

    /// The agents of rows `(username, last_sequence, state, …)`.
    async fn agents_of(
        &self,
        tenant: &str,
        rows: Vec<Row>,
        through: i64,
    ) -> Result<Vec<Agent>, StoreError> {
        let mut agents = Vec::with_capacity(rows.len());
        for mut row in rows {
            agents.extend(self.read_agent(tenant, &mut row, through).await?);
        }
        Ok(agents)
    }

    /// A page of `tenant`'s agents by username, and the sequence the projection is as of (read
    /// in the same statement, so the two agree).
    pub async fn list_agents(
        &self,
        tenant: &str,
        q: &AgentQuery,
    ) -> Result<(Vec<Agent>, i64), StoreError> {
        let mut sql = Select::new(
            "SELECT username, last_sequence, state, \
             (SELECT agents_through FROM tenants WHERE id = $1) FROM agents",
        );
        sql.push(" WHERE tenant_id = ", tenant);
        if let Some(after) = &q.after {
            sql.push(" AND username > ", after.as_str());
        }
        if let Some(s) = q.signed_in {
            sql.push(" AND signed_in = ", s);
        }
        if let Some(c) = q.availability_code {
            sql.push(" AND availability_code = ", c);
        }
        sql.push(" ORDER BY username LIMIT ", i64::from(q.limit));
        let rows = self.0.db.query(&sql.sql, &sql.args).await?;
        let as_of = match rows.first() {
            Some(row) => row.int(3)?,
            None => self.agents_through(tenant).await?,
        };
        Ok((self.agents_of(tenant, rows, as_of).await?, as_of))
    }

    /// `tenant`'s signed-in agents (`after`: `None`), or every agent changed after sequence
    /// `after`, with the sequence the projection is as of, read in the same statement so that
    /// the two agree (DESIGN §18's counts). Each agent comes once: at most the tenant's agents.
    pub async fn agents_for_counts(
        &self,
        tenant: &str,
        after: Option<i64>,
    ) -> Result<(Vec<Agent>, i64), StoreError> {
        let mut sql = Select::new(
            "SELECT a.username, a.last_sequence, a.state, t.agents_through FROM tenants t \
             LEFT JOIN agents a ON a.tenant_id = t.id",
        );
        match after {
            None => sql.push(" AND a.signed_in = ", true),
            Some(after) => sql.push(" AND a.last_sequence > ", after),
        };
        sql.push(" WHERE t.id = ", tenant);
        let rows = self.0.db.query(&sql.sql, &sql.args).await?;
        let Some(first) = rows.first() else {
            return Ok((Vec::new(), 0));
        };
        let as_of = first.int(3)?;
        let mut agents = Vec::with_capacity(rows.len());
        for mut row in rows {
            if row.opt_int(1)?.is_none() {
                continue;
            }
            agents.extend(self.read_agent(tenant, &mut row, as_of).await?);
        }
        Ok((agents, as_of))
    }

    /// The sequence `tenant`'s projection is as of.
    pub async fn agents_through(&self, tenant: &str) -> Result<i64, StoreError> {
        let row = self
            .0
            .db
            .query_one(
                "SELECT agents_through FROM tenants WHERE id = $1",
                &args![tenant],
            )
            .await?;
        row.map_or(Ok(0), |r| r.int(0))
    }

    pub async fn get_agent(
        &self,
        tenant: &str,
        username: &str,
    ) -> Result<Option<Agent>, StoreError> {
        let row = self
            .0
            .db
            .query_one(
                "SELECT username, last_sequence, state FROM agents \
                 WHERE tenant_id = $1 AND username = $2",
                &args![tenant, username],
            )
            .await?;
        match row {
            Some(mut row) => self.read_agent(tenant, &mut row, i64::MAX - 1).await,
            None => Ok(None),
        }
    }

    /// Agents changed after sequence `after`, in the order of their changes, up to `limit`.
    pub async fn agent_changes(
        &self,
        tenant: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Agent>, StoreError> {
        let rows = self
            .0
            .db
            .query(
                "SELECT username, last_sequence, state FROM agents \
                 WHERE tenant_id = $1 AND last_sequence > $2 ORDER BY last_sequence LIMIT $3",
                &args![tenant, after, i64::from(limit)],
            )
            .await?;
        self.agents_of(tenant, rows, i64::MAX - 1).await
    }

    /// `username`'s past for a rebuild: its base, then its events in the log (up to sequence
    /// `through`, when given), read a page at a time; a rebuild that would read more than `max`
    /// of them (`max_history_events`) is refused.
    pub async fn agent_history(
        &self,
        tenant: &str,
        username: &str,
        through: Option<i64>,
        max: usize,
    ) -> Result<History<'_>, StoreError> {
        let row = self
            .0
            .db
            .query_one(BASE_OF, &args![tenant, username])
            .await?;
        let (after, base) = base_of(tenant, username, row)?;
        let indexed = self.usernames_through(tenant).await?;
        Ok(History {
            store: self,
            base: base.map(|a| (after, a)),
            pages: Pages::new(
                tenant,
                username,
                after,
                through.unwrap_or(i64::MAX),
                indexed,
            ),
            max,
            read: 0,
        })
    }

    /// Folds into the agents projection every event it does not hold yet (a log written before
    /// it existed), a batch per writer turn.
    pub async fn catch_up_agents(&self) -> Result<(), StoreError> {
        let tenants = self
            .0
            .db
            .query(
                "SELECT id FROM tenants WHERE agents_through < last_sequence",
                &[],
            )
            .await?;
        for mut t in tenants {
            let tenant = t.text(0)?;
            let mut batches = 0u64;
            loop {
                let (reply, answer) = oneshot::channel();
                let more = self
                    .turn(Command::CatchUpAgents(tenant.clone(), reply), answer)
                    .await?;
                batches += 1;
                self.committed(Some(&tenant));
                if !more {
                    break;
                }
            }
            tracing::info!(tenant, batches, "agents projection caught up with the log");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fold takes a tenant's backlog out of memory before it writes. If its turn then fails
    /// (a full disk, a lost connection), the tenant must stay deferred, to be folded from the
    /// log at the next fold: forgotten, it would keep its agents behind its log until its next
    /// event or a restart. A turn that commits keeps what it took.
    #[test]
    fn a_backlog_taken_by_a_turn_that_fails_is_folded_from_the_log_next() {
        let mut deferred = Deferred::new(GroupFields::default());
        deferred
            .tenants
            .insert("t".into(), Backlog::new(Some(10), 20, 5));
        deferred
            .tenants
            .insert("u".into(), Backlog::new(Some(3), 7, 6));
        let at = Position {
            last: 20,
            through: 10,
        };
        deferred.begin();
        assert!(matches!(take_fold(&mut deferred, "t", at), Fold::Memory(_)));
        assert!(!deferred.tenants.contains_key("t"));
        deferred.forget();
        let t = &deferred.tenants["t"];
        assert_eq!((t.from, t.to, t.since), (None, 20, 5));
        assert!(deferred.due("t", 10, 5 + MAX_LAG_MS));
        // The backlog left in memory is marked as not following the log either.
        assert_eq!(deferred.tenants["u"].from, None);
        assert!(matches!(take_fold(&mut deferred, "t", at), Fold::Log));
        // The next turn begins: the one that took it committed.
        deferred.begin();
        deferred.forget();
        assert!(!deferred.tenants.contains_key("t"));
    }
}
