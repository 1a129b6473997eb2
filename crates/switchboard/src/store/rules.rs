//! Rules (DESIGN §18): stored by the API; judged by the writer, in the turn whose fold moved the
//! agents projection, so that an episode (a condition holding for an agent or a group) opens and
//! ends in the same transaction as the state that caused it; fired by the writer's rules tick.
//!
//! - `rule_episodes` holds each open episode: when its condition began, the sequence that
//!   opened it, when `RuleFired` is due and whether it was fired. A timer is a row: it survives
//!   restarts, and a cluster shares it.
//! - The fold (`agents.rs`) hands the agents it wrote ([`Moved`]); [`judge`] opens the episodes
//!   that began and ends those that ended, logging `RuleCleared` for an ended episode that had
//!   fired — in the same turn.
//! - [`tick`] (a `Rules` command, now and then): reloads the rules of the tenants whose rules
//!   changed (`tenants.rules_version`), reconciling their episodes with the projection as it
//!   stands, then fires the due episodes: the episode is marked fired and its `RuleFired`
//!   logged in one transaction, so it fires once, whichever node comes first.
//! - Derived events go through the turn's ingest, with ids made from the episode (UUIDv5):
//!   a copy made again (a turn run twice) is dropped as a duplicate.
//!
//! The writer keeps each tenant's enabled rules and, for group rules, their counts
//! ([`GroupTally`]) in memory ([`Engine`]): the counts follow the folds, and are counted again
//! from `agents` when another node (or a failed turn) moved the projection meanwhile.

use std::collections::{BTreeMap, HashMap};

use super::command::Committed;
use super::conn::{Conn, corrupt};
use super::db::{Arg, Row, args};
use super::decide::IN_LIST;
use super::{CreateError, Store, StoreError, sql};
use crate::agent::Agent;
use crate::event::Event;
use crate::rule::{Episode, GroupTally, Kind, Rule, RuleSpec, code, derived_event};

/// Most due episodes one tick fires.
const FIRE_BATCH: i64 = 1_000;
/// How often the writer is asked to run its rules tick.
pub(crate) const RULES_TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// The agents a fold wrote for a tenant, moving its projection from `from` to `to`.
pub(super) struct Moved {
    pub tenant: String,
    pub from: i64,
    pub to: i64,
    pub agents: Vec<Agent>,
    /// What some of them were before (`None`: new); an agent not listed is not known.
    pub before: HashMap<String, Option<Agent>>,
}

/// One tenant's rules as the writer holds them.
#[derive(Default)]
struct Tenant {
    /// The `rules_version` they were loaded at.
    version: i64,
    /// Enabled, not deleted.
    rules: Vec<Rule>,
    /// Each group rule's counts, by rule id…
    tallies: HashMap<String, GroupTally>,
    /// …as of this `agents_through` (`None`: to be counted again).
    through: Option<i64>,
}

/// The writer's rules, by tenant; and the agents its folds wrote this turn.
#[derive(Default)]
pub(crate) struct Engine {
    tenants: HashMap<String, Tenant>,
    moved: Vec<Moved>,
}

impl Engine {
    /// Whether a fold of `tenant` should hand over the agents it wrote.
    pub fn wants(&self, tenant: &str) -> bool {
        self.tenants
            .get(tenant)
            .is_some_and(|t| !t.rules.is_empty())
    }

    pub(super) fn moved(&mut self, m: Moved) {
        if self.wants(&m.tenant) {
            self.moved.push(m);
        }
    }

    /// After a failed turn: memory may hold what was not committed.
    pub fn forget(&mut self) {
        self.moved.clear();
        // A reconcile may have been rolled back with the turn: every tenant is reconciled
        // again at the next tick.
        self.tenants.clear();
    }
}

/// A derived event to log for a tenant.
pub(super) type Derived = Vec<(String, Event)>;

/// Judges the agents this turn's folds wrote (see the module's doc); the `RuleCleared` events
/// of the fired episodes that ended go to `out`.
pub(super) async fn judge<C: Conn>(
    conn: &mut C,
    engine: &mut Engine,
    out: &mut Derived,
) -> Result<(), StoreError> {
    for m in std::mem::take(&mut engine.moved) {
        let Some(t) = engine.tenants.get_mut(&m.tenant) else {
            continue;
        };
        if t.rules.is_empty() {
            continue;
        }
        if m.agents.is_empty() {
            // No agent changed (derived events, say): the counts still hold as of `to`.
            if t.through == Some(m.from) {
                t.through = Some(m.to);
            }
            continue;
        }
        let latest = m.agents.iter().map(|a| a.last_event_at.to_unix_ms()).max();
        // Each group rule's groups whose count changed, with the time of the latest event
        // that changed it.
        let mut changed: HashMap<String, BTreeMap<String, i64>> = HashMap::new();
        let groups: Vec<&Rule> = (t.rules.iter())
            .filter(|r| r.spec.kind == Kind::GroupCount)
            .collect();
        if !groups.is_empty() {
            if t.through == Some(m.from) {
                for r in &groups {
                    let tally = t.tallies.entry(r.id.clone()).or_default();
                    let seen = changed.entry(r.id.clone()).or_default();
                    for a in &m.agents {
                        let at = a.last_event_at.to_unix_ms();
                        for g in tally.update(&r.spec, a) {
                            let e = seen.entry(g).or_insert(at);
                            *e = (*e).max(at);
                        }
                    }
                }
            } else {
                let agents = load_agents(conn, &m.tenant).await?;
                for r in &groups {
                    let tally = GroupTally::new(&r.spec, &agents);
                    let at = latest.unwrap_or(0);
                    let seen = tally.groups().map(|(g, _)| (g.clone(), at)).collect();
                    changed.insert(r.id.clone(), seen);
                    t.tallies.insert(r.id.clone(), tally);
                }
            }
            t.through = Some(m.to);
        }
        // The agents whose match of some agent rule changed (or is not known to be the same):
        // only those can open or end an episode.
        let agent_rules: Vec<&Rule> = (t.rules.iter())
            .filter(|r| r.spec.kind == Kind::AgentState)
            .collect();
        let moved: Vec<&Agent> = (m.agents.iter())
            .filter(|a| match m.before.get(&a.username) {
                Some(was) => agent_rules.iter().any(|r| {
                    let before = was.as_ref().and_then(|w| r.spec.agent_since(w));
                    before.is_some() != r.spec.agent_since(a).is_some()
                }),
                None => !agent_rules.is_empty(),
            })
            .collect();
        let mut subjects: Vec<&str> = moved.iter().map(|a| a.username.as_str()).collect();
        subjects.extend(changed.values().flat_map(|g| g.keys().map(String::as_str)));
        subjects.sort_unstable();
        subjects.dedup();
        let mut open = open_episodes(conn, &m.tenant, Some(&subjects)).await?;
        let mut changes = Changes::default();
        let c = &mut changes;
        for r in &t.rules {
            match r.spec.kind {
                Kind::AgentState => {
                    for a in &moved {
                        let since = r.spec.agent_since(a).map(|s| s.max(r.active_from()));
                        let ep = open.remove(&(r.id.clone(), a.username.clone()));
                        let at = a.last_event_at.to_unix_ms();
                        let start = a.last_sequence;
                        settle(
                            c,
                            &m.tenant,
                            r,
                            &a.username,
                            since,
                            start,
                            ep,
                            at,
                            None,
                            out,
                        );
                    }
                }
                Kind::GroupCount => {
                    let tally = t.tallies.get(&r.id);
                    for (g, at) in changed.get(&r.id).into_iter().flatten() {
                        if !r.spec.judges(g) {
                            continue;
                        }
                        let n = tally.map_or(0, |t| t.count(g));
                        let since = r.spec.holds(n).then_some((*at).max(r.active_from()));
                        let ep = open.remove(&(r.id.clone(), g.clone()));
                        settle(c, &m.tenant, r, g, since, m.to, ep, *at, Some(n), out);
                    }
                }
            }
        }
        changes.write(conn, &m.tenant).await?;
    }
    Ok(())
}

/// Brings one subject's episode of `rule` in line with whether its condition holds now
/// (`since`: since when), opening one (`start_seq`) or ending `open` (`at`: when, unix ms;
/// logging `RuleCleared` if it had fired, with `value`).
#[allow(clippy::too_many_arguments)]
fn settle(
    changes: &mut Changes,
    tenant: &str,
    rule: &Rule,
    subject: &str,
    since: Option<i64>,
    start_seq: i64,
    open: Option<Episode>,
    at: i64,
    value: Option<i64>,
    out: &mut Derived,
) {
    match open {
        // The condition goes on under the rule as it is.
        Some(ep) if since.is_some() && ep.revision == rule.revision => return,
        Some(ep) => end(changes, tenant, rule, &ep, at, value, out),
        None => {}
    }
    if let Some(since) = since {
        changes.opened.push(Opened {
            rule_id: rule.id.clone(),
            subject: subject.to_string(),
            revision: rule.revision,
            since,
            start_seq,
            due: since + rule.spec.for_secs * 1000,
        });
    }
}

/// An episode to open.
struct Opened {
    rule_id: String,
    subject: String,
    revision: i64,
    since: i64,
    start_seq: i64,
    due: i64,
}

/// The episode rows a judgement changes, written together.
#[derive(Default)]
struct Changes {
    opened: Vec<Opened>,
    /// By rule: the subjects whose episode ended.
    ended: BTreeMap<String, Vec<String>>,
}

impl Changes {
    async fn write<C: Conn>(self, conn: &mut C, tenant: &str) -> Result<(), StoreError> {
        // Ended first: an episode ended and opened again in one judgement keeps its key.
        for (rule, subjects) in &self.ended {
            for chunk in subjects.chunks(IN_LIST) {
                let text = format!(
                    "DELETE FROM rule_episodes WHERE tenant_id = $1 AND rule_id = $2 \
                     AND subject IN ({}",
                    sql::list(chunk.len(), 3)
                );
                let mut values = vec![Arg::from(tenant), Arg::from(rule.as_str())];
                values.extend(chunk.iter().map(|s| Arg::from(s.as_str())));
                conn.execute(&text, &values).await?;
            }
        }
        if self.opened.is_empty() {
            return Ok(());
        }
        let mut values = Vec::with_capacity(self.opened.len() * sql::INSERT_EPISODES.columns);
        for o in &self.opened {
            values.extend(args![
                tenant,
                o.rule_id.as_str(),
                o.subject.as_str(),
                o.revision,
                o.since,
                o.start_seq,
                o.due,
                false
            ]);
        }
        conn.insert(&sql::INSERT_EPISODES, &values).await?;
        Ok(())
    }
}

/// Ends an open episode at `at`: its row goes; if it had fired, its `RuleCleared` is logged.
fn end(
    changes: &mut Changes,
    tenant: &str,
    rule: &Rule,
    ep: &Episode,
    at: i64,
    value: Option<i64>,
    out: &mut Derived,
) {
    (changes.ended.entry(ep.rule_id.clone()).or_default()).push(ep.subject.clone());
    // Ended at or after it was due, before a tick fired it: it held `for_secs` all the same.
    let fired = ep.fired || ep.due_ms <= at;
    if !ep.fired && fired {
        let event = derived_event(rule, ep, code::RULE_FIRED, ep.due_ms, value);
        out.push((tenant.to_string(), event));
    }
    if fired {
        let event = derived_event(rule, ep, code::RULE_CLEARED, at.max(ep.since_ms), value);
        out.push((tenant.to_string(), event));
    }
}

/// The open episodes of `tenant` (of `subjects` only, when given), by (rule, subject).
async fn open_episodes<C: Conn>(
    conn: &mut C,
    tenant: &str,
    subjects: Option<&[&str]>,
) -> Result<HashMap<(String, String), Episode>, StoreError> {
    const SELECT: &str = "SELECT rule_id, subject, since_ms, start_seq, fired, revision, \
                          due_ms FROM rule_episodes WHERE tenant_id = $1";
    let mut rows = Vec::new();
    match subjects {
        None => rows = conn.query(SELECT, &args![tenant]).await?,
        Some(subjects) => {
            for chunk in subjects.chunks(IN_LIST) {
                let text = format!("{SELECT} AND subject IN ({}", sql::list(chunk.len(), 2));
                let mut values = vec![Arg::from(tenant)];
                values.extend(chunk.iter().map(|s| Arg::from(*s)));
                rows.extend(conn.query(&text, &values).await?);
            }
        }
    }
    let mut out = HashMap::with_capacity(rows.len());
    for mut r in rows {
        let revision = r.int(5)?;
        let ep = Episode {
            rule_id: r.text(0)?,
            revision,
            subject: r.text(1)?,
            since_ms: r.int(2)?,
            start_seq: r.int(3)?,
            due_ms: r.int(6)?,
            fired: r.bool(4)?,
        };
        out.insert((ep.rule_id.clone(), ep.subject.clone()), ep);
    }
    Ok(out)
}

/// Every agent of `tenant` as the projection holds it (one that does not decode is left out:
/// the fold mends it when its next event comes).
async fn load_agents<C: Conn>(conn: &mut C, tenant: &str) -> Result<Vec<Agent>, StoreError> {
    let rows = conn
        .query(
            "SELECT state FROM agents WHERE tenant_id = $1",
            &args![tenant],
        )
        .await?;
    let mut agents = Vec::with_capacity(rows.len());
    for mut r in rows {
        if let Ok(a) = serde_json::from_str::<Agent>(&r.text(0)?) {
            agents.push(a);
        }
    }
    Ok(agents)
}

/// A stored rule, with whether it was deleted (unix ms); `None` when its body does not decode.
fn rule_of(mut r: Row) -> Result<(Option<Rule>, Option<i64>), StoreError> {
    let (id, tenant_id, text) = (r.text(0)?, r.text(1)?, r.text(2)?);
    let deleted = r.opt_int(6)?;
    let spec: RuleSpec = match serde_json::from_str(&text) {
        Ok(spec) => spec,
        Err(e) => {
            tracing::error!(tenant = %tenant_id, rule = %id, error = %e,
                "a stored rule does not decode; it is left out");
            return Ok((None, deleted));
        }
    };
    Ok((
        Some(Rule {
            id,
            tenant_id,
            spec,
            revision: r.int(3)?,
            created_at: r.int(4)?,
            updated_at: r.int(5)?,
        }),
        deleted,
    ))
}

const RULE_COLUMNS: &str =
    "SELECT id, tenant_id, spec, revision, created_at, updated_at, deleted_at FROM rules";

/// The rules tick (see the module's doc): reloads changed rules, then fires due episodes.
pub(super) async fn tick<C: Conn>(
    conn: &mut C,
    engine: &mut Engine,
    now: i64,
    out: &mut Derived,
) -> Result<(), StoreError> {
    let rows = conn
        .query(
            "SELECT id, rules_version FROM tenants WHERE rules_version > 0",
            &[],
        )
        .await?;
    let mut versions = BTreeMap::new();
    for mut r in rows {
        versions.insert(r.text(0)?, r.int(1)?);
    }
    engine.tenants.retain(|t, _| versions.contains_key(t));
    for (tenant, version) in versions {
        if engine.tenants.get(&tenant).map(|t| t.version) != Some(version) {
            reconcile(conn, engine, &tenant, now, out).await?;
        }
    }
    fire(conn, engine, now, out).await
}

/// Loads `tenant`'s rules and brings its episodes in line with them and with the projection:
/// episodes of deleted, disabled or changed rules end at the moment of the change; episodes
/// whose condition holds and that are not open are opened (since the later of when the
/// condition began and the rule's change); deleted rules' rows go.
async fn reconcile<C: Conn>(
    conn: &mut C,
    engine: &mut Engine,
    tenant: &str,
    now: i64,
    out: &mut Derived,
) -> Result<(), StoreError> {
    let locked = conn
        .query(conn.dialect().try_lock_tenant, &args![tenant])
        .await?;
    // Another node's turn holds it: next tick.
    let Some(row) = locked.first() else {
        return Ok(());
    };
    let through = row.int(1)?;
    let version = conn
        .query(
            "SELECT rules_version FROM tenants WHERE id = $1",
            &args![tenant],
        )
        .await?
        .first()
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0);
    let rows = conn
        .query(
            &format!("{RULE_COLUMNS} WHERE tenant_id = $1"),
            &args![tenant],
        )
        .await?;
    let mut all: HashMap<String, (Rule, Option<i64>)> = HashMap::new();
    for r in rows {
        if let (Some(rule), deleted) = rule_of(r)? {
            all.insert(rule.id.clone(), (rule, deleted));
        }
    }
    let agents = load_agents(conn, tenant).await?;
    let mut open = open_episodes(conn, tenant, None).await?;
    let mut changes = Changes::default();
    let c = &mut changes;
    let active: Vec<Rule> = (all.values())
        .filter(|(r, deleted)| deleted.is_none() && r.spec.enabled)
        .map(|(r, _)| r.clone())
        .collect();
    // Episodes of rules gone, disabled or changed end when that happened.
    let keys: Vec<(String, String)> = open.keys().cloned().collect();
    let mut ended_tallies: HashMap<String, GroupTally> = HashMap::new();
    for key in keys {
        let ep = &open[&key];
        let ends = match all.get(&ep.rule_id) {
            None => None,
            Some((r, deleted)) if deleted.is_some() || !r.spec.enabled => {
                Some((r, deleted.unwrap_or(r.updated_at)))
            }
            Some((r, _)) if ep.revision != r.revision => Some((r, r.updated_at)),
            Some(_) => continue,
        };
        let ep = open.remove(&key).expect("listed above");
        match ends {
            Some((r, at)) => {
                let value = (r.spec.kind == Kind::GroupCount).then(|| {
                    (ended_tallies.entry(r.id.clone()))
                        .or_insert_with(|| GroupTally::new(&r.spec, &agents))
                        .count(&ep.subject)
                });
                end(c, tenant, r, &ep, at, value, out);
            }
            // Its rule's row is gone (it cannot be named): the episode goes quietly.
            None => (c.ended.entry(ep.rule_id.clone()).or_default()).push(ep.subject.clone()),
        }
    }
    let mut tallies = HashMap::new();
    for r in &active {
        match r.spec.kind {
            Kind::AgentState => {
                for a in &agents {
                    let since = r.spec.agent_since(a).map(|s| s.max(r.active_from()));
                    let ep = open.remove(&(r.id.clone(), a.username.clone()));
                    let at = a.last_event_at.to_unix_ms();
                    settle(
                        c,
                        tenant,
                        r,
                        &a.username,
                        since,
                        a.last_sequence,
                        ep,
                        at,
                        None,
                        out,
                    );
                }
            }
            Kind::GroupCount => {
                let tally = GroupTally::new(&r.spec, &agents);
                // When a group's condition began is not known here: no earlier than the
                // rule's last change, nor than its agents' latest event.
                let by = r.spec.by.as_deref().unwrap_or_default();
                let mut latest: HashMap<&str, i64> = HashMap::new();
                for a in &agents {
                    if let Some(g) = a.groups.get(by) {
                        let at = a.last_event_at.to_unix_ms();
                        let e = latest.entry(g.as_str()).or_insert(at);
                        *e = (*e).max(at);
                    }
                }
                for (g, n) in tally.groups() {
                    if !r.spec.judges(g) {
                        continue;
                    }
                    let began = latest.get(g.as_str()).copied().unwrap_or(0);
                    let since = r.spec.holds(n).then_some(r.active_from().max(began));
                    let ep = open.remove(&(r.id.clone(), g.clone()));
                    settle(c, tenant, r, g, since, through, ep, now, Some(n), out);
                }
                tallies.insert(r.id.clone(), tally);
            }
        }
    }
    // Left open: episodes of active rules whose subject is no longer there (an erased agent).
    for ((rule_id, _), ep) in open {
        if let Some(r) = active.iter().find(|r| r.id == rule_id) {
            end(c, tenant, r, &ep, now, None, out);
        }
    }
    changes.write(conn, tenant).await?;
    conn.execute(
        "DELETE FROM rules WHERE tenant_id = $1 AND deleted_at IS NOT NULL",
        &args![tenant],
    )
    .await?;
    engine.tenants.insert(
        tenant.to_string(),
        Tenant {
            version,
            rules: active,
            tallies,
            through: Some(through),
        },
    );
    Ok(())
}

/// Fires the due episodes of the rules this writer holds: each is marked fired and its
/// `RuleFired` logged in this turn — unless another node's turn marked it first.
async fn fire<C: Conn>(
    conn: &mut C,
    engine: &mut Engine,
    now: i64,
    out: &mut Derived,
) -> Result<(), StoreError> {
    let rows = conn
        .query(
            "SELECT e.tenant_id, e.rule_id, e.subject, e.since_ms, e.start_seq, e.revision, \
             e.due_ms FROM rule_episodes e JOIN rules r ON r.tenant_id = e.tenant_id \
             AND r.id = e.rule_id AND r.revision = e.revision AND r.deleted_at IS NULL \
             WHERE NOT e.fired AND e.due_ms <= $1 ORDER BY e.due_ms LIMIT $2",
            &args![now, FIRE_BATCH],
        )
        .await?;
    // Each tenant's row is locked first, as ingest locks it before its episodes (a node that
    // holds it is folding that tenant: its episodes wait for the next tick).
    let mut locked: HashMap<String, bool> = HashMap::new();
    for mut r in rows {
        let tenant = r.text(0)?;
        if !locked.contains_key(&tenant) {
            let row = conn
                .query(conn.dialect().try_lock_tenant, &args![tenant.as_str()])
                .await?;
            locked.insert(tenant.clone(), !row.is_empty());
        }
        if locked.get(&tenant) != Some(&true) {
            continue;
        }
        let (revision, due) = (r.int(5)?, r.int(6)?);
        let ep = Episode {
            rule_id: r.text(1)?,
            revision,
            subject: r.text(2)?,
            since_ms: r.int(3)?,
            start_seq: r.int(4)?,
            due_ms: due,
            fired: true,
        };
        let Some(t) = engine.tenants.get_mut(&tenant) else {
            continue;
        };
        // A rule this writer does not hold as it is now: reconciled first, at a later tick.
        let Some(rule) = t
            .rules
            .iter()
            .find(|x| x.id == ep.rule_id && x.revision == revision)
        else {
            continue;
        };
        let marked = conn
            .execute(
                "UPDATE rule_episodes SET fired = $1 WHERE tenant_id = $2 AND rule_id = $3 \
                 AND subject = $4 AND revision = $5 AND start_seq = $6 AND NOT fired",
                &args![
                    true,
                    tenant.as_str(),
                    ep.rule_id.as_str(),
                    ep.subject.as_str(),
                    revision,
                    ep.start_seq
                ],
            )
            .await?;
        if marked == 0 {
            continue;
        }
        let value = (rule.spec.kind == Kind::GroupCount)
            .then(|| t.tallies.get(&rule.id).map_or(0, |x| x.count(&ep.subject)));
        let event = derived_event(rule, &ep, code::RULE_FIRED, due, value);
        out.push((tenant.clone(), event));
    }
    Ok(())
}

/// Logs `derived` events through the turn's ingest; what it committed joins `done`.
pub(super) fn jobs(derived: Derived) -> Vec<super::IngestJob> {
    // One job an event: a copy refused as a conflict (a body that differs from the one stored
    // under its id) is refused alone.
    derived
        .into_iter()
        .map(|(tenant, e)| super::IngestJob {
            tenant,
            events: vec![crate::event::NewEvent {
                id: e.id,
                id_given: true,
                creation: Some(e.creation),
                category: e.category,
                code: e.code,
                fields: e.fields,
            }],
            trace: None,
        })
        .collect()
}

/// Adds what the derived events' ingest committed to the turn's `done`.
pub(super) fn join(done: &mut Committed, more: Committed) {
    done.new_ids.extend(more.new_ids);
    done.handed.extend(more.handed);
    done.superseded += more.superseded;
}

impl Store {
    /// Stores a new rule, unless its tenant has `max` already; its writers reload the
    /// tenant's rules.
    pub async fn create_rule(&self, rule: &Rule, max: u32) -> Result<(), CreateError> {
        let spec = serde_json::to_string(&rule.spec).map_err(corrupt)?;
        let mut tx = self.0.db.begin(self.0.dialect).await?;
        let done = tx
            .execute(
                "INSERT INTO rules (tenant_id, id, spec, revision, created_at, updated_at) \
                 SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS (SELECT 1 FROM tenants WHERE id = $7) \
                 AND (SELECT COUNT(*) FROM rules WHERE tenant_id = $8 \
                 AND deleted_at IS NULL) < $9",
                &args![
                    &rule.tenant_id,
                    &rule.id,
                    spec.as_str(),
                    rule.revision,
                    rule.created_at,
                    rule.updated_at,
                    &rule.tenant_id,
                    &rule.tenant_id,
                    i64::from(max)
                ],
            )
            .await?;
        if done > 0 {
            bump(&mut tx, &rule.tenant_id).await?;
        }
        tx.commit().await?;
        if done == 0 {
            return Err(match self.get_tenant(&rule.tenant_id).await? {
                None => CreateError::TenantNotFound,
                Some(_) => CreateError::LimitReached {
                    limit: "max_rules_per_tenant",
                    max,
                },
            });
        }
        Ok(())
    }

    /// A rule of `tenant` (not deleted).
    pub async fn get_rule(&self, tenant: &str, id: &str) -> Result<Option<Rule>, StoreError> {
        let row = self
            .0
            .db
            .query_one(
                &format!("{RULE_COLUMNS} WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL"),
                &args![tenant, id],
            )
            .await?;
        Ok(match row {
            Some(r) => rule_of(r)?.0,
            None => None,
        })
    }

    /// Up to `limit` of `tenant`'s rules after id `after`, by id.
    pub async fn list_rules(
        &self,
        tenant: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Rule>, StoreError> {
        let rows = self
            .0
            .db
            .query(
                &format!(
                    "{RULE_COLUMNS} WHERE tenant_id = $1 AND id > $2 AND deleted_at IS NULL \
                     ORDER BY id LIMIT $3"
                ),
                &args![tenant, after, i64::from(limit)],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            if let Some(rule) = rule_of(r)?.0 {
                out.push(rule);
            }
        }
        Ok(out)
    }

    /// Replaces a rule's body with `rule.revision` the next after the one it was read at (its
    /// open episodes end); false if there is no such rule, or another change came first.
    pub async fn update_rule(&self, rule: &Rule) -> Result<bool, StoreError> {
        let spec = serde_json::to_string(&rule.spec).map_err(corrupt)?;
        let mut tx = self.0.db.begin(self.0.dialect).await?;
        let done = tx
            .execute(
                "UPDATE rules SET spec = $1, revision = $2, updated_at = $3 \
                 WHERE tenant_id = $4 AND id = $5 AND deleted_at IS NULL AND revision = $6",
                &args![
                    spec.as_str(),
                    rule.revision,
                    rule.updated_at,
                    &rule.tenant_id,
                    &rule.id,
                    rule.revision - 1
                ],
            )
            .await?;
        if done > 0 {
            bump(&mut tx, &rule.tenant_id).await?;
        }
        tx.commit().await?;
        Ok(done > 0)
    }

    /// Deletes a rule at `now` (unix ms): the writer clears its open episodes as of then and
    /// removes it; false if there is no such rule.
    pub async fn delete_rule(&self, tenant: &str, id: &str, now: i64) -> Result<bool, StoreError> {
        let mut tx = self.0.db.begin(self.0.dialect).await?;
        let done = tx
            .execute(
                "UPDATE rules SET deleted_at = $1 WHERE tenant_id = $2 AND id = $3 \
                 AND deleted_at IS NULL",
                &args![now, tenant, id],
            )
            .await?;
        if done > 0 {
            bump(&mut tx, tenant).await?;
        }
        tx.commit().await?;
        Ok(done > 0)
    }

    /// Runs the writer's rules tick now (tests step it instead of waiting for it).
    pub async fn run_rules(&self) -> Result<(), StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.turn(super::command::Command::Rules(Some(reply)), answer)
            .await
    }
}

/// Tells the tenant's writers that its rules changed.
async fn bump(tx: &mut super::db::Tx, tenant: &str) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE tenants SET rules_version = rules_version + 1 WHERE id = $1",
        &args![tenant],
    )
    .await
    .map(drop)
}
