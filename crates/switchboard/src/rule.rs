//! Rules and derived events (DESIGN §18): a rule watches the agents projection and, once a
//! condition has held for `for_secs`, raises a `RuleFired` event in the tenant's log (Category 5
//! Derived), and a `RuleCleared` when it ends. Pure logic, no I/O: what a rule is and how it is
//! checked ([`RuleSpec`]), whether an agent matches one, the counts a group rule judges
//! ([`GroupTally`]) and the derived events themselves. The store's `rules.rs` keeps the
//! episodes and runs the timers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::agent::Agent;
use crate::event::catalog::DERIVED;
use crate::event::{Event, FieldError, Timestamp};

/// Derived event codes.
pub mod code {
    pub const RULE_FIRED: u32 = 1;
    pub const RULE_CLEARED: u32 = 2;
}

/// The longest a condition may be required to hold: a day.
pub const MAX_FOR_SECS: i64 = 86_400;
/// The most codes a criterion may list.
pub const MAX_CODES: usize = 100;
/// The longest name.
pub const MAX_NAME: usize = 200;
/// The largest threshold of a group rule.
pub const MAX_THRESHOLD: i64 = 1_000_000;

/// The namespace of derived events' `Id`s (UUIDv5).
const NAMESPACE: Uuid = Uuid::from_u128(0x5b1c_7d3e_2f4a_4e8b_9c6d_0a1b_2c3d_4e5f);

/// What a rule watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// One agent in a matching state.
    AgentState,
    /// How many signed-in agents of a group match.
    GroupCount,
}

/// Below or above the threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Lt,
    Gt,
}

/// A rule's body, as posted and as stored (read back tolerantly: unknown fields are ignored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleSpec {
    pub name: String,
    pub kind: Kind,
    /// The agent's `ActivityCode` is one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity_codes: Option<Vec<i64>>,
    /// The agent's `AvailabilityCode` is one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_codes: Option<Vec<i64>>,
    /// `agent_state` only: the agent's work item is in this state (`receiving` or `accepted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_item_state: Option<String>,
    /// `group_count` only: the group field (one of the catalog's `group_fields`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// `group_count` only: one group; absent, every group seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `group_count` only: fires below (`lt`) or above (`gt`) the threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<Op>,
    /// `group_count` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<i64>,
    /// How long the condition must hold, 1 to 86,400 seconds.
    pub for_secs: i64,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

const FIELDS: [&str; 11] = [
    "name",
    "kind",
    "activity_codes",
    "availability_codes",
    "work_item_state",
    "by",
    "value",
    "op",
    "threshold",
    "for_secs",
    "enabled",
];

impl RuleSpec {
    /// A body checked whole: every problem, each naming its field; `group_fields` are the
    /// catalog's.
    pub fn from_value(value: Value, group_fields: &[String]) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let err = |errors: &mut Vec<FieldError>, field: &str, msg: &str| {
            errors.push(FieldError::new(None, field, msg));
        };
        let Value::Object(map) = value else {
            return Err(vec![FieldError::new(None, "body", "must be a JSON object")]);
        };
        for k in map.keys() {
            if !FIELDS.contains(&k.as_str()) {
                err(&mut errors, k, "unknown field");
            }
        }
        let name = match map.get("name") {
            Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= MAX_NAME => {
                Some(s.clone())
            }
            Some(Value::String(_)) => {
                err(&mut errors, "name", "must be 1 to 200 characters");
                None
            }
            Some(_) => {
                err(&mut errors, "name", "must be a string");
                None
            }
            None => {
                err(&mut errors, "name", "is required");
                None
            }
        };
        let kind = match map.get("kind") {
            Some(Value::String(s)) if s == "agent_state" => Some(Kind::AgentState),
            Some(Value::String(s)) if s == "group_count" => Some(Kind::GroupCount),
            None => {
                err(
                    &mut errors,
                    "kind",
                    "is required: agent_state or group_count",
                );
                None
            }
            Some(_) => {
                err(&mut errors, "kind", "must be agent_state or group_count");
                None
            }
        };
        let for_secs = match map.get("for_secs").and_then(Value::as_i64) {
            Some(n) if (1..=MAX_FOR_SECS).contains(&n) => n,
            Some(_) => {
                err(&mut errors, "for_secs", "must be 1 to 86400 (a day)");
                0
            }
            None => {
                err(
                    &mut errors,
                    "for_secs",
                    "is required: an integer from 1 to 86400",
                );
                0
            }
        };
        let codes = |errors: &mut Vec<FieldError>, field: &str| -> Option<Vec<i64>> {
            match map.get(field) {
                None | Some(Value::Null) => None,
                Some(Value::Array(a)) => {
                    let codes: Vec<i64> = a.iter().filter_map(Value::as_i64).collect();
                    if codes.len() != a.len() || a.is_empty() || a.len() > MAX_CODES {
                        err(errors, field, "must be 1 to 100 integer codes");
                        None
                    } else {
                        Some(codes)
                    }
                }
                Some(_) => {
                    err(errors, field, "must be an array of integer codes");
                    None
                }
            }
        };
        let activity_codes = codes(&mut errors, "activity_codes");
        let availability_codes = codes(&mut errors, "availability_codes");
        let text = |errors: &mut Vec<FieldError>, field: &str| -> Option<String> {
            match map.get(field) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Some(s.clone()),
                Some(_) => {
                    err(errors, field, "must be a string of 1 to 256 bytes");
                    None
                }
            }
        };
        let work_item_state = text(&mut errors, "work_item_state");
        if let Some(s) = &work_item_state
            && s != "receiving"
            && s != "accepted"
        {
            err(
                &mut errors,
                "work_item_state",
                "must be receiving or accepted",
            );
        }
        let by = text(&mut errors, "by");
        let value = text(&mut errors, "value");
        let op = match map.get("op") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s == "lt" => Some(Op::Lt),
            Some(Value::String(s)) if s == "gt" => Some(Op::Gt),
            Some(_) => {
                err(&mut errors, "op", "must be lt or gt");
                None
            }
        };
        let threshold = match map.get("threshold") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_i64() {
                Some(n) if (0..=MAX_THRESHOLD).contains(&n) => Some(n),
                _ => {
                    err(
                        &mut errors,
                        "threshold",
                        "must be an integer from 0 to 1000000",
                    );
                    None
                }
            },
        };
        let enabled = match map.get("enabled") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                err(&mut errors, "enabled", "must be true or false");
                true
            }
        };
        match kind {
            Some(Kind::AgentState) => {
                for f in ["by", "value", "op", "threshold"] {
                    if map.get(f).is_some_and(|v| !v.is_null()) {
                        err(&mut errors, f, "is for group_count rules only");
                    }
                }
            }
            Some(Kind::GroupCount) => {
                if map.get("work_item_state").is_some_and(|v| !v.is_null()) {
                    err(
                        &mut errors,
                        "work_item_state",
                        "is for agent_state rules only",
                    );
                }
                match &by {
                    None if !errors.iter().any(|e| e.field == "by") => {
                        err(&mut errors, "by", "is required for group_count rules");
                    }
                    Some(b) if !group_fields.contains(b) => {
                        let msg = match group_fields.is_empty() {
                            true => "is not a group field: the catalog names none \
                                     ([agents] group_fields)"
                                .to_string(),
                            false => format!(
                                "is not a group field; the catalog's are: {}",
                                group_fields.join(", ")
                            ),
                        };
                        err(&mut errors, "by", &msg);
                    }
                    _ => {}
                }
                if op.is_none() && !errors.iter().any(|e| e.field == "op") {
                    err(
                        &mut errors,
                        "op",
                        "is required for group_count rules: lt or gt",
                    );
                }
                if threshold.is_none() && !errors.iter().any(|e| e.field == "threshold") {
                    err(
                        &mut errors,
                        "threshold",
                        "is required for group_count rules",
                    );
                }
            }
            None => {}
        }
        match (errors.is_empty(), name, kind) {
            (true, Some(name), Some(kind)) => Ok(RuleSpec {
                name: name.trim().to_string(),
                kind,
                activity_codes,
                availability_codes,
                work_item_state,
                by,
                value,
                op,
                threshold,
                for_secs,
                enabled,
            }),
            _ => Err(errors),
        }
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// When `agent` came to match this (an `agent_state`) rule, in unix ms; `None` when it does
    /// not (a signed-out agent never does). The later of the times its matched criteria began:
    /// the sign-in, the status (activity and availability), the work item's state.
    pub fn agent_since(&self, agent: &Agent) -> Option<i64> {
        if !agent.signed_in {
            return None;
        }
        let mut since = agent.signed_in_at.map_or(0, Timestamp::to_unix_ms);
        if self.activity_codes.is_some() || self.availability_codes.is_some() {
            if !self.status_matches(agent) {
                return None;
            }
            since = since.max(agent.since.map_or(0, Timestamp::to_unix_ms));
        }
        if let Some(state) = &self.work_item_state {
            let item = agent.work_item.as_ref().filter(|w| &w.state == state)?;
            since = since.max(item.since.to_unix_ms());
        }
        Some(since)
    }

    /// Whether `agent`'s activity and availability are among the rule's (those it names).
    fn status_matches(&self, agent: &Agent) -> bool {
        let ok = |codes: &Option<Vec<i64>>, code: Option<i64>| match codes {
            None => true,
            Some(codes) => code.is_some_and(|c| codes.contains(&c)),
        };
        ok(&self.activity_codes, agent.activity_code)
            && ok(&self.availability_codes, agent.availability_code)
    }

    /// A `group_count` rule's judgement of a count.
    pub fn holds(&self, count: i64) -> bool {
        let t = self.threshold.unwrap_or(0);
        match self.op {
            Some(Op::Gt) => count > t,
            _ => count < t,
        }
    }

    /// Whether a `group_count` rule judges `group` (one group, or every group).
    pub fn judges(&self, group: &str) -> bool {
        self.value.as_deref().is_none_or(|v| v == group)
    }
}

/// A stored rule: its body and identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub tenant_id: String,
    pub spec: RuleSpec,
    /// Moves on with every change: an episode opened under an older revision is over.
    pub revision: i64,
    /// Unix ms.
    pub created_at: i64,
    pub updated_at: i64,
}

impl Rule {
    /// The earliest an episode may start: when the rule took its present form.
    pub fn active_from(&self) -> i64 {
        self.updated_at
    }
}

/// The counts a `group_count` rule judges: per group seen (any agent that ever carried the
/// field's value, signed in or not), the signed-in agents matching the rule's codes; and each
/// agent's part in them, so that an agent's new state moves it between groups.
#[derive(Debug, Default)]
pub struct GroupTally {
    counts: BTreeMap<String, i64>,
    /// Each agent's group, and whether it counts there.
    agents: HashMap<String, (Option<String>, bool)>,
}

impl GroupTally {
    pub fn new<'a>(rule: &RuleSpec, agents: impl IntoIterator<Item = &'a Agent>) -> Self {
        let mut t = GroupTally::default();
        for a in agents {
            t.update(rule, a);
        }
        t
    }

    /// Moves `agent` to its new state; the group whose count changed, if any (a group seen for
    /// the first time counts as changed too).
    pub fn update(&mut self, rule: &RuleSpec, agent: &Agent) -> BTreeSet<String> {
        let by = rule.by.as_deref().unwrap_or_default();
        let group = agent.groups.get(by).cloned();
        let counts = agent.signed_in && rule.status_matches(agent);
        let mut changed = BTreeSet::new();
        if let Some(g) = &group
            && !self.counts.contains_key(g)
        {
            self.counts.insert(g.clone(), 0);
            changed.insert(g.clone());
        }
        let new = (group, counts);
        let old = self.agents.insert(agent.username.clone(), new.clone());
        if old.as_ref() == Some(&new) {
            return changed;
        }
        if let Some((Some(g), true)) = old {
            *self.counts.entry(g.clone()).or_default() -= 1;
            changed.insert(g);
        }
        if let (Some(g), true) = new {
            *self.counts.entry(g.clone()).or_default() += 1;
            changed.insert(g);
        }
        changed
    }

    /// An agent gone from the projection (erased).
    pub fn remove(&mut self, username: &str) -> Option<String> {
        match self.agents.remove(username) {
            Some((Some(g), true)) => {
                *self.counts.entry(g.clone()).or_default() -= 1;
                Some(g)
            }
            _ => None,
        }
    }

    pub fn count(&self, group: &str) -> i64 {
        self.counts.get(group).copied().unwrap_or(0)
    }

    /// Every group seen, with its count.
    pub fn groups(&self) -> impl Iterator<Item = (&String, i64)> {
        self.counts.iter().map(|(g, n)| (g, *n))
    }
}

/// An episode of a rule for one subject (an agent's username, or a group's value): when its
/// condition began (unix ms) and the sequence that opened it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Episode {
    pub rule_id: String,
    /// The rule's revision it was opened under.
    pub revision: i64,
    pub subject: String,
    pub since_ms: i64,
    pub start_seq: i64,
    /// When `RuleFired` is due (unix ms): `since_ms` + `for_secs`.
    pub due_ms: i64,
    pub fired: bool,
}

/// The `Id` of an episode's derived event: the same on every node and after every restart.
/// The rule's revision is part of it: a changed rule's new episode for the same subject may
/// start at the same sequence (no event came between), and must not share the old one's ids.
pub fn derived_id(rule_id: &str, revision: i64, subject: &str, start_seq: i64, code: u32) -> Uuid {
    let name = format!("{rule_id}\u{0}{revision}\u{0}{subject}\u{0}{start_seq}\u{0}{code}");
    Uuid::new_v5(&NAMESPACE, name.as_bytes())
}

/// The `RuleFired` (`code` 1) or `RuleCleared` (2) event of `episode`, created `at` (unix ms);
/// `value` is a group rule's count.
pub fn derived_event(
    rule: &Rule,
    episode: &Episode,
    code: u32,
    at_ms: i64,
    value: Option<i64>,
) -> Event {
    let mut fields = Map::new();
    fields.insert("RuleId".into(), json!(rule.id));
    fields.insert("RuleName".into(), json!(rule.spec.name));
    match rule.spec.kind {
        Kind::AgentState => {
            fields.insert("Username".into(), json!(episode.subject));
        }
        Kind::GroupCount => {
            fields.insert("GroupBy".into(), json!(rule.spec.by));
            fields.insert("GroupValue".into(), json!(episode.subject));
            fields.insert("Value".into(), json!(value.unwrap_or(0)));
        }
    }
    fields.insert(
        "Since".into(),
        json!(Timestamp::from_unix_ms(episode.since_ms).to_string()),
    );
    Event {
        id: derived_id(
            &rule.id,
            episode.revision,
            &episode.subject,
            episode.start_seq,
            code,
        ),
        creation: Timestamp::from_unix_ms(at_ms),
        category: DERIVED,
        code,
        fields,
    }
}

#[cfg(test)]
mod tests;
