//! The live state of an agent (DESIGN §9, EVENTS.md "Agent state derived from events"), derived
//! from Agent events in `sequence` order. Pure logic, no I/O: the store's projection (written in
//! the same transaction as the events), `as_of` rebuilds and timelines all fold events through
//! [`apply`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::catalog::AGENT;
use crate::event::{Catalog, Event, Timestamp};

/// Agent event codes.
pub mod code {
    pub const SIGNED_IN: u32 = 1;
    pub const SIGNED_OUT: u32 = 2;
    pub const STATUS_CHANGED: u32 = 3;
    pub const RECEIVING_WORK_ITEM: u32 = 4;
    pub const ACCEPTED_WORK_ITEM: u32 = 5;
    pub const DECLINED_WORK_ITEM: u32 = 6;
    pub const RELEASED_WORK_ITEM: u32 = 8;
}

// Read back only from the store (the API never accepts one), and that read is tolerant (DESIGN
// §15): unknown fields are ignored, absent optional ones are `None`; a row missing what is
// required does not decode and the agent is re-folded from the log (`store::agents`).
/// One agent's state: the agent object of the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Agent {
    pub username: String,
    pub signed_in: bool,
    pub session_id: Option<String>,
    pub session_type: Option<String>,
    pub phone_no: Option<String>,
    pub activity_code: Option<i64>,
    pub availability_code: Option<i64>,
    pub activity_name: Option<String>,
    pub since: Option<Timestamp>,
    pub work_item: Option<WorkItem>,
    pub signed_in_at: Option<Timestamp>,
    pub signed_out_at: Option<Timestamp>,
    pub exit_code: Option<i64>,
    pub last_sequence: i64,
    pub last_event_at: Timestamp,
    /// The agent's groups (DESIGN §18): for each of the catalog's `[agents] group_fields`, the
    /// value in the agent's latest event that carries it (a string, or the JSON text of another
    /// value); a field not seen yet is absent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = BTreeMap<String, String>)]
    pub groups: BTreeMap<String, String>,
}

/// The fields that place an agent in groups (the catalog's `[agents] group_fields`); cheap to
/// clone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupFields(Arc<[String]>);

impl GroupFields {
    pub fn new(names: Vec<String>) -> Self {
        GroupFields(names.into())
    }

    pub fn names(&self) -> &[String] {
        &self.0
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|n| n == name)
    }
}

impl Agent {
    /// As shown: an activity without an `ActivityName` gets the catalog's name for its code
    /// (or "activity N"); only the groups of the fields the catalog names now are kept (one it
    /// named in an earlier run is left out).
    pub fn named(mut self, catalog: &Catalog) -> Self {
        let fields = catalog.group_fields();
        self.groups.retain(|k, _| fields.contains(k));
        name_activity(&mut self.activity_name, self.activity_code, catalog);
        self
    }
}

/// An activity without an `ActivityName` takes the catalog's name for its code.
fn name_activity(name: &mut Option<String>, code: Option<i64>, catalog: &Catalog) {
    if let (None, Some(code)) = (&name, code) {
        *name = Some(catalog.activity_name(code));
    }
}

/// The work item an agent is receiving or handling.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkItem {
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `receiving` or `accepted`.
    pub state: String,
    pub since: Timestamp,
}

fn text(event: &Event, name: &str) -> Option<String> {
    event
        .fields
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn int(event: &Event, name: &str) -> Option<i64> {
    event.fields.get(name).and_then(Value::as_i64)
}

/// The state after `event` (stored under `sequence`) given the state before it, or `None` when
/// the event changes nothing (see [`step`]).
pub fn apply(before: Option<&Agent>, event: &Event, sequence: i64) -> Option<Agent> {
    let mut state = before.cloned();
    step(&mut state, event, sequence).then_some(state).flatten()
}

/// Moves `state` on by `event` (stored under `sequence`), in place; false when the event
/// changes nothing: not an Agent event, no `Username`, or older than the state
/// (`CreationDateUtc` before its `last_event_at`: never a roll-back; equal times go by
/// sequence, which only grows).
///
/// Any Agent event but SignedOut shows the agent signed in: an agent first seen mid-shift (the
/// service started after it signed in) is on the wallboard at once, `signed_in_at` then being
/// the first event seen.
pub fn step(state: &mut Option<Agent>, event: &Event, sequence: i64) -> bool {
    step_grouped(state, event, sequence, &GroupFields::default())
}

/// [`step`], also noting the values of `groups` the event carries (a JSON null carries none).
pub fn step_grouped(
    state: &mut Option<Agent>,
    event: &Event,
    sequence: i64,
    groups: &GroupFields,
) -> bool {
    if event.category != AGENT {
        return false;
    }
    // An event whose `Username` was erased (DESIGN §19) no longer names an agent.
    let Some(username) = event.username().filter(|u| *u != crate::store::ERASED) else {
        return false;
    };
    if let Some(b) = state
        && (event.creation < b.last_event_at || sequence <= b.last_sequence)
    {
        return false;
    }
    let at = event.creation;
    let a = state.get_or_insert_with(|| Agent {
        username: username.to_string(),
        signed_in: false,
        session_id: None,
        session_type: None,
        phone_no: None,
        activity_code: None,
        availability_code: None,
        activity_name: None,
        since: None,
        work_item: None,
        signed_in_at: None,
        signed_out_at: None,
        exit_code: None,
        last_sequence: sequence,
        last_event_at: at,
        groups: BTreeMap::new(),
    });
    a.last_sequence = sequence;
    a.last_event_at = at;
    for field in groups.names() {
        match event.fields.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(v)) => {
                a.groups.insert(field.clone(), v.clone());
            }
            Some(v) => {
                a.groups.insert(field.clone(), v.to_string());
            }
        }
    }
    if event.code == code::SIGNED_IN || (!a.signed_in && event.code != code::SIGNED_OUT) {
        // A new session: what the last one left is gone.
        a.signed_in = true;
        a.signed_in_at = Some(at);
        a.signed_out_at = None;
        a.exit_code = None;
        a.activity_code = None;
        a.availability_code = None;
        a.activity_name = None;
        a.since = None;
        a.work_item = None;
    }
    for (field, name) in [
        (&mut a.session_id, "SessionId"),
        (&mut a.session_type, "SessionType"),
        (&mut a.phone_no, "PhoneNo"),
    ] {
        if let Some(v) = event.fields.get(name).and_then(Value::as_str)
            && field.as_deref() != Some(v)
        {
            *field = Some(v.to_string());
        }
    }
    let work_item = |state: &str| WorkItem {
        id: text(event, "WorkItemId"),
        kind: text(event, "WorkItemType"),
        state: state.to_string(),
        since: at,
    };
    match event.code {
        code::SIGNED_OUT => {
            a.signed_in = false;
            a.signed_out_at = Some(at);
            a.exit_code = int(event, "ExitCode");
            a.work_item = None;
        }
        code::STATUS_CHANGED => {
            a.activity_code = int(event, "ActivityCode");
            a.availability_code = int(event, "AvailabilityCode");
            // Named by the catalog when shown (see `Agent::named`): the operator's names may
            // change, the stored state need not.
            a.activity_name = text(event, "ActivityName").filter(|n| !n.is_empty());
            a.since = Some(at);
        }
        code::RECEIVING_WORK_ITEM => a.work_item = Some(work_item("receiving")),
        code::ACCEPTED_WORK_ITEM => a.work_item = Some(work_item("accepted")),
        code::DECLINED_WORK_ITEM | code::RELEASED_WORK_ITEM => a.work_item = None,
        _ => {}
    }
    true
}

/// The state after folding `events` (in sequence order) onto `base`.
pub fn fold<'a>(
    base: Option<Agent>,
    events: impl IntoIterator<Item = (i64, &'a Event)>,
) -> Option<Agent> {
    let mut state = base;
    for (sequence, event) in events {
        step(&mut state, event, sequence);
    }
    state
}

/// One interval of an agent's timeline: a state held from `from` to `to` (null: still held).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Interval {
    pub from: Timestamp,
    pub to: Option<Timestamp>,
    pub signed_in: bool,
    pub activity_code: Option<i64>,
    pub availability_code: Option<i64>,
    pub activity_name: Option<String>,
    pub work_item: Option<WorkItem>,
}

impl Interval {
    /// As shown (see [`Agent::named`]).
    pub fn named(mut self, catalog: &Catalog) -> Self {
        name_activity(&mut self.activity_name, self.activity_code, catalog);
        self
    }

    fn of(a: &Agent, from: Timestamp) -> Self {
        Interval {
            from,
            to: None,
            signed_in: a.signed_in,
            activity_code: a.activity_code,
            availability_code: a.availability_code,
            activity_name: a.activity_name.clone(),
            work_item: a.work_item.clone(),
        }
    }

    fn same_state(&self, other: &Interval) -> bool {
        (
            self.signed_in,
            self.activity_code,
            self.availability_code,
            &self.activity_name,
            &self.work_item,
        ) == (
            other.signed_in,
            other.activity_code,
            other.availability_code,
            &other.activity_name,
            &other.work_item,
        )
    }
}

/// The intervals of an agent's states between `since` and `until` (inclusive, on
/// `CreationDateUtc`): `start` is the state at `since` (if the agent was known then), `events`
/// the agent's later events in sequence order. The first interval is clipped to `since`; the
/// last one ends at `until` when given, else is still held (`to` null). A change and its undoing
/// within the same second leave no empty interval; consecutive events that leave the shown
/// state as it was (a new session id, a repeated status) extend the interval.
pub fn timeline<'a>(
    start: Option<Agent>,
    events: impl IntoIterator<Item = (i64, &'a Event)>,
    since: Timestamp,
    until: Option<Timestamp>,
) -> Vec<Interval> {
    let mut line = Timeline::new(start, since, until);
    for (sequence, event) in events {
        line.push(sequence, event);
    }
    line.finish()
}

/// [`timeline`] built an event at a time, so that the events need not all be in memory.
pub struct Timeline {
    out: Vec<Interval>,
    state: Option<Agent>,
    since: Timestamp,
    until: Option<Timestamp>,
    /// An event after `until` came: the rest change nothing.
    ended: bool,
}

impl Timeline {
    pub fn new(start: Option<Agent>, since: Timestamp, until: Option<Timestamp>) -> Self {
        let mut out = Vec::new();
        if let Some(a) = &start {
            out.push(Interval::of(a, since));
        }
        Timeline {
            out,
            state: start,
            since,
            until,
            ended: false,
        }
    }

    /// True once the events pushed reach past `until`: the rest need not be read.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The agent's next event (in sequence order).
    pub fn push(&mut self, sequence: i64, event: &Event) {
        if self.ended || self.until.is_some_and(|u| event.creation > u) {
            self.ended = true;
            return;
        }
        let Some(next) = apply(self.state.as_ref(), event, sequence) else {
            return;
        };
        let out = &mut self.out;
        let at = event.creation.max(self.since);
        let interval = Interval::of(&next, at);
        match out.last_mut() {
            Some(last) if last.same_state(&interval) => {}
            Some(last) if last.from == at => *last = interval,
            Some(last) => {
                last.to = Some(at);
                out.push(interval);
            }
            None => out.push(interval),
        }
        // Two intervals in a row may now hold the same state (a change undone within a second).
        if out.len() >= 2 && out[out.len() - 2].same_state(&out[out.len() - 1]) {
            out.pop();
            if let Some(last) = out.last_mut() {
                last.to = None;
            }
        }
        self.state = Some(next);
    }

    pub fn finish(mut self) -> Vec<Interval> {
        if let (Some(last), Some(u)) = (self.out.last_mut(), self.until) {
            last.to = Some(u);
        }
        self.out
    }
}

pub mod counts;
pub mod intervals;

#[cfg(test)]
mod tests;
