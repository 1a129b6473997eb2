//! Intervals for WFM (DESIGN §18): an agent's timeline (§9, the same fold) cut at interval
//! borders — signed-in time, time on a work item, time by activity and the work items of each
//! interval — with a `revision` counting the commits that changed an interval after it had
//! ended, and the last sequence that changed it (for `changed_since_sequence`).
//!
//! Pure: the store feeds an agent's events in sequence order, each with when it was received;
//! events received together (one commit) share that time.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Agent, apply, code, counts::UNKNOWN};
use crate::event::{Event, Timestamp};

/// The sizes an interval may have, in seconds.
pub const SIZES: [i64; 3] = [900, 1800, 3600];

/// The intervals asked for: those starting in `[since, until)` (unix seconds, `since` aligned
/// to `size`), with time counted up to `horizon` (now: an interval is whole, or still going).
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub since: i64,
    pub until: i64,
    pub size: i64,
    pub horizon: i64,
}

impl Window {
    /// The window of intervals of `size` seconds that start in `[since, until)`, counted up to
    /// `now` at most (all in unix seconds).
    pub fn new(since: i64, until: i64, size: i64, now: i64) -> Self {
        let since = since.div_euclid(size) * size;
        Window {
            since,
            until,
            size,
            horizon: now,
        }
    }

    /// The start of the interval holding `t`.
    fn start_of(&self, t: i64) -> i64 {
        t.div_euclid(self.size) * self.size
    }
}

/// Work items by what happened to them in an interval (by the events' times).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct WorkItems {
    pub received: u64,
    pub accepted: u64,
    pub declined: u64,
    pub released: u64,
}

/// What an interval holds, apart from who and when.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Figures {
    signed_in_secs: u64,
    on_work_item_secs: u64,
    by_activity: BTreeMap<String, u64>,
    work_items: WorkItems,
}

/// One interval of one agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AgentInterval {
    pub username: String,
    /// `yyyyMMddHHmmss`, UTC, a multiple of `size_secs` since the epoch.
    #[schema(value_type = String, pattern = "^[0-9]{14}$")]
    pub start: Timestamp,
    pub size_secs: i64,
    /// The commits that changed this interval after it had ended (late or backfilled events).
    pub revision: u32,
    pub signed_in_secs: u64,
    /// Of the signed-in time, receiving or handling a work item.
    pub on_work_item_secs: u64,
    /// The signed-in time by `ActivityCode` (`"unknown"`: no status yet); sums to
    /// `signed_in_secs`.
    pub by_activity: BTreeMap<String, u64>,
    pub work_items: WorkItems,
    /// The last sequence that changed the interval.
    #[serde(skip)]
    pub changed_by: i64,
}

/// What the time an agent spends in a state counts towards: signed out (`None`), or its
/// activity and whether it is on a work item.
type Key = Option<(String, bool)>;

fn key(a: &Agent) -> Key {
    a.signed_in.then(|| {
        let activity = a
            .activity_code
            .map_or_else(|| UNKNOWN.to_string(), |c| c.to_string());
        (activity, a.work_item.is_some())
    })
}

/// An agent's timeline, built an event at a time, cut into intervals at the end.
pub struct Builder {
    window: Window,
    state: Option<Agent>,
    /// (from, key, sequence that set it), in time order; each holds until the next.
    segments: Vec<(i64, Key, i64)>,
    /// (time, event code, sequence) of the work item events.
    counted: Vec<(i64, u32, i64)>,
    /// Revisions, as changes at interval starts: +1 where a run of revised intervals begins,
    /// -1 where it ends (a backfill in many commits revises long runs; each is one entry).
    revisions: BTreeMap<i64, i64>,
}

impl Builder {
    /// A timeline starting from `state` (the agent before the events to come: its base).
    pub fn new(window: Window, state: Option<Agent>) -> Self {
        let mut b = Builder {
            window,
            state: None,
            segments: Vec::new(),
            counted: Vec::new(),
            revisions: BTreeMap::new(),
        };
        if let Some(a) = state {
            b.segments.push((
                a.last_event_at.to_unix_ms() / 1000,
                key(&a),
                a.last_sequence,
            ));
            b.state = Some(a);
        }
        b
    }

    fn revise(&mut self, from: i64, to: i64) {
        if from < to {
            *self.revisions.entry(from).or_default() += 1;
            *self.revisions.entry(to).or_default() -= 1;
        }
    }

    /// One commit's events of this agent (in sequence order), received at `received` (unix
    /// seconds).
    pub fn commit(&mut self, events: &[(i64, &Event)], received: i64) {
        let times = || events.iter().map(|(_, e)| e.creation.to_unix_ms() / 1000);
        let (Some(first), Some(last)) = (times().min(), times().max()) else {
            return;
        };
        // Events older than the state change nothing (§9): nothing before it is compared.
        let floor = self
            .state
            .as_ref()
            .map_or(i64::MIN, |a| a.last_event_at.to_unix_ms() / 1000);
        let (first, last) = (first.max(floor), last.max(floor));
        let w = self.window;
        // Intervals that had ended by `received` (those starting before `ended_by`) can be
        // revised: the ones holding the commit's events are compared whole, before and after;
        // each one after them changes if and only if the state the agent was left in did.
        let ended_by = (received - w.size).div_euclid(w.size) * w.size + w.size;
        let ended_by = ended_by.min(w.until);
        let (from, through) = (w.start_of(first).max(w.since), w.start_of(last));
        let compared: Vec<i64> = (from..=through.max(from - 1))
            .step_by(w.size as usize)
            .filter(|s| *s < ended_by)
            .collect();
        let before: Vec<Figures> = (compared.iter())
            .map(|s| self.figures(*s, i64::MAX))
            .collect();
        let left_in = self.segments.last().map(|s| s.1.clone());
        for (sequence, event) in events {
            let Some(next) = apply(self.state.as_ref(), event, *sequence) else {
                continue;
            };
            let at = event.creation.to_unix_ms() / 1000;
            if matches!(
                event.code,
                code::RECEIVING_WORK_ITEM
                    | code::ACCEPTED_WORK_ITEM
                    | code::DECLINED_WORK_ITEM
                    | code::RELEASED_WORK_ITEM
            ) {
                self.counted.push((at, event.code, *sequence));
            }
            let k = key(&next);
            match self.segments.last_mut() {
                Some(last) if last.0 == at => *last = (at, k, *sequence),
                _ => self.segments.push((at, k, *sequence)),
            }
            self.state = Some(next);
        }
        for (start, old) in compared.iter().zip(before) {
            if self.figures(*start, i64::MAX) != old {
                self.revise(*start, start + w.size);
            }
        }
        let now_in = self.segments.last().map(|s| s.1.clone());
        if left_in.flatten() != now_in.flatten() {
            self.revise((through + w.size).max(w.since), ended_by);
        }
    }

    /// The figures of the interval starting at `start`, time counted up to `horizon`.
    fn figures(&self, start: i64, horizon: i64) -> Figures {
        let end = (start + self.window.size).min(horizon);
        let mut f = Figures::default();
        // The segment in effect at `start`, and those after it.
        let first = self.segments.partition_point(|s| s.0 <= start).max(1) - 1;
        for (i, (from, k, _)) in self.segments.iter().enumerate().skip(first) {
            if *from >= end {
                break;
            }
            let to = self.segments.get(i + 1).map_or(end, |n| n.0.min(end));
            let secs = (to - (*from).max(start)).max(0) as u64;
            if let (Some((activity, working)), true) = (k, secs > 0) {
                f.signed_in_secs += secs;
                if *working {
                    f.on_work_item_secs += secs;
                }
                *f.by_activity.entry(activity.clone()).or_default() += secs;
            }
        }
        let lo = self.counted.partition_point(|c| c.0 < start);
        for (_, c, _) in self.counted[lo..]
            .iter()
            .take_while(|c| c.0 < start + self.window.size)
        {
            let w = &mut f.work_items;
            match *c {
                code::RECEIVING_WORK_ITEM => w.received += 1,
                code::ACCEPTED_WORK_ITEM => w.accepted += 1,
                code::DECLINED_WORK_ITEM => w.declined += 1,
                _ => w.released += 1,
            }
        }
        f
    }

    /// The last sequence that changed the interval at `start`: the event whose state holds at
    /// its start, or a later one within it.
    fn changed_by(&self, start: i64) -> i64 {
        let end = start + self.window.size;
        let at_start = self.segments.partition_point(|s| s.0 <= start);
        let within = self.segments.partition_point(|s| s.0 < end);
        let states = self.segments[at_start.max(1) - 1..within]
            .iter()
            .map(|s| s.2);
        let lo = self.counted.partition_point(|c| c.0 < start);
        let counted = self.counted[lo..]
            .iter()
            .take_while(|c| c.0 < end)
            .map(|c| c.2);
        states.chain(counted).max().unwrap_or(0)
    }

    /// The intervals of the window with signed-in time (or revised), for `username`.
    pub fn finish(self, username: &str) -> Vec<AgentInterval> {
        let w = self.window;
        let mut out = Vec::new();
        let Some(first) = self.segments.first().map(|s| w.start_of(s.0).max(w.since)) else {
            return out;
        };
        let mut start = first;
        // The revisions' changes before the first interval shown, summed.
        let mut revision: i64 = self.revisions.range(..start).map(|(_, d)| d).sum();
        while start < w.until && start < w.horizon {
            let f = self.figures(start, w.horizon);
            revision += self.revisions.get(&start).copied().unwrap_or(0);
            let revision = u32::try_from(revision).unwrap_or(0);
            // An interval with no signed-in time is left out — unless a late event emptied it
            // after it had ended: a consumer holding its earlier figures must hear of it.
            if f.signed_in_secs > 0 || revision > 0 {
                out.push(AgentInterval {
                    username: username.to_string(),
                    start: Timestamp::from_unix_ms(start * 1000),
                    size_secs: w.size,
                    revision,
                    signed_in_secs: f.signed_in_secs,
                    on_work_item_secs: f.on_work_item_secs,
                    by_activity: f.by_activity,
                    work_items: f.work_items,
                    changed_by: self.changed_by(start),
                });
            }
            start += w.size;
        }
        out
    }
}

pub mod kept;

#[cfg(test)]
mod tests;
