//! Intervals kept by a projection (DESIGN §18), so that a month of a tenant's agents is read
//! as rows instead of re-folded from the log.
//!
//! The fold never rolls an agent back (§9): an event dated before the agent's last one changes
//! nothing. So everything before an agent's last event time is final, and only the hour holding
//! it, and the time after it, can still change. A [`Tail`] per agent holds that part — its
//! state, its segments from the start of that hour on, the work-item events counted there and
//! the revisions still running — and each commit that moves the agent past an hour hands back
//! that hour, whole and final, as an [`Hour`] row: the figures of its four quarters, and the
//! revisions of each interval (of 900, 1800 and 3600 seconds) that ends with it. A read
//! assembles intervals of any size from the rows of the window and, for the hours not yet
//! kept, from the tail, exactly as [`super::Builder`] computes them from the log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{AgentInterval, Figures, Key, SIZES, UNKNOWN, Window, WorkItems, key};
use crate::agent::{Agent, apply, code};
use crate::event::{Event, Timestamp};

/// The granularity rows are kept in; every size divides it.
pub const HOUR: i64 = 3600;
const QUARTER: i64 = 900;

fn start_of(t: i64, size: i64) -> i64 {
    t.div_euclid(size) * size
}

/// One quarter's figures as a row keeps them: stored as one array of numbers (a read parses
/// thousands of them a page) — signed-in seconds, on a work item, the four work item counts,
/// the last changing sequence, the seconds with no status yet, then (activity code, seconds)
/// pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Vec<i64>", try_from = "Vec<i64>")]
pub struct Quarter {
    signed_in_secs: u64,
    on_work_item_secs: u64,
    by_activity: BTreeMap<String, u64>,
    /// Received, accepted, declined, released.
    items: [u64; 4],
    /// The last sequence that changed it.
    changed_by: i64,
}

impl From<Quarter> for Vec<i64> {
    fn from(q: Quarter) -> Self {
        let unknown = q.by_activity.get(UNKNOWN).copied().unwrap_or(0);
        let mut out = vec![
            q.signed_in_secs as i64,
            q.on_work_item_secs as i64,
            q.items[0] as i64,
            q.items[1] as i64,
            q.items[2] as i64,
            q.items[3] as i64,
            q.changed_by,
            unknown as i64,
        ];
        for (activity, secs) in &q.by_activity {
            if let Ok(code) = activity.parse::<i64>() {
                out.extend([code, *secs as i64]);
            }
        }
        out
    }
}

impl TryFrom<Vec<i64>> for Quarter {
    type Error = &'static str;

    fn try_from(v: Vec<i64>) -> Result<Self, Self::Error> {
        if v.len() < 8 || !v.len().is_multiple_of(2) {
            return Err("a stored quarter is 8 numbers and (activity, seconds) pairs");
        }
        let n = |i: usize| u64::try_from(v[i]).map_err(|_| "a negative count in a stored quarter");
        let mut by_activity = BTreeMap::new();
        if v[7] > 0 {
            by_activity.insert(UNKNOWN.to_string(), n(7)?);
        }
        for pair in v[8..].chunks(2) {
            let secs =
                u64::try_from(pair[1]).map_err(|_| "negative seconds in a stored quarter")?;
            by_activity.insert(pair[0].to_string(), secs);
        }
        Ok(Quarter {
            signed_in_secs: n(0)?,
            on_work_item_secs: n(1)?,
            by_activity,
            items: [n(2)?, n(3)?, n(4)?, n(5)?],
            changed_by: v[6],
        })
    }
}

impl Quarter {
    fn of(f: Figures, changed_by: i64) -> Self {
        let w = f.work_items;
        Quarter {
            signed_in_secs: f.signed_in_secs,
            on_work_item_secs: f.on_work_item_secs,
            by_activity: f.by_activity,
            items: [w.received, w.accepted, w.declined, w.released],
            changed_by,
        }
    }

    fn is_empty(&self) -> bool {
        self.signed_in_secs == 0 && self.items == [0; 4]
    }

    /// Adds its figures to `f`, handing over its activities (a read uses a quarter once).
    fn add_to(&mut self, f: &mut Figures) {
        f.signed_in_secs += self.signed_in_secs;
        f.on_work_item_secs += self.on_work_item_secs;
        if f.by_activity.is_empty() {
            f.by_activity = std::mem::take(&mut self.by_activity);
        } else {
            for (a, s) in std::mem::take(&mut self.by_activity) {
                *f.by_activity.entry(a).or_default() += s;
            }
        }
        let w = &mut f.work_items;
        w.received += self.items[0];
        w.accepted += self.items[1];
        w.declined += self.items[2];
        w.released += self.items[3];
    }
}

/// One hour of one agent, final: its quarters, and the revisions of the intervals that end
/// with it — `revisions[0..4]` the quarters', `[4]` the first half's, `[5]` the second half's,
/// `[6]` the hour's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hour {
    #[serde(rename = "q")]
    quarters: [Quarter; 4],
    #[serde(rename = "r", default)]
    revisions: [u32; 7],
}

impl Hour {
    /// The signed-in seconds of the hour (a column beside the row, so that a read can skip
    /// empty hours).
    pub fn signed_in_secs(&self) -> u64 {
        self.quarters.iter().map(|q| q.signed_in_secs).sum()
    }

    /// The last sequence that changed the hour.
    pub fn changed_by(&self) -> i64 {
        self.quarters
            .iter()
            .map(|q| q.changed_by)
            .max()
            .unwrap_or(0)
    }

    fn is_empty(&self) -> bool {
        self.quarters.iter().all(Quarter::is_empty) && self.revisions == [0; 7]
    }

    /// The revision of the interval of `size` starting at `offset` seconds into the hour.
    fn revision(&self, size: i64, offset: i64) -> u32 {
        match size {
            QUARTER => self.revisions[(offset / QUARTER) as usize],
            1800 => self.revisions[4 + (offset / 1800) as usize],
            _ => self.revisions[6],
        }
    }
}

/// The index of `size` in [`SIZES`].
fn index(size: i64) -> usize {
    SIZES.iter().position(|s| *s == size).unwrap_or(0)
}

/// The part of an agent's intervals that can still change.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tail {
    /// The agent as this fold has it.
    state: Option<Agent>,
    /// The hours before this one are kept as rows (unix seconds, a multiple of [`HOUR`]).
    from: i64,
    /// (from, key, sequence that set it), in time order; the first holds at `from`.
    segments: Vec<(i64, Key, i64)>,
    /// The work item events from `from` on, by second: (time, received, accepted, declined,
    /// released, the last sequence) — at most one entry a second, however many events.
    counted: Vec<(i64, [u64; 4], i64)>,
    /// Per size, revision changes at interval starts from `from` on: +1 where a run of revised
    /// intervals begins, -1 where it ends (a backfill revises long runs; each is one entry).
    revisions: [BTreeMap<i64, i64>; 3],
    /// Per size, the sum of the changes before `from`.
    base: [i64; 3],
}

impl Tail {
    /// A tail starting from `state` (an agent's base: its state after purged events), or from
    /// nothing.
    pub fn new(state: Option<Agent>) -> Self {
        let mut t = Tail::default();
        if let Some(a) = state {
            let at = a.last_event_at.to_unix_ms() / 1000;
            t.from = start_of(at, HOUR);
            t.segments.push((at, key(&a), a.last_sequence));
            t.state = Some(a);
        }
        t
    }

    /// The hours before this one are final (kept as rows).
    pub fn kept_before(&self) -> i64 {
        self.from
    }

    /// The last sequence folded.
    pub fn last_sequence(&self) -> i64 {
        self.state.as_ref().map_or(0, |a| a.last_sequence)
    }

    fn revise(&mut self, size: i64, from: i64, to: i64) {
        if from < to {
            let map = &mut self.revisions[index(size)];
            *map.entry(from).or_default() += 1;
            *map.entry(to).or_default() -= 1;
        }
    }

    fn revision(&self, size: i64, start: i64) -> u32 {
        let i = index(size);
        let sum: i64 = self.base[i]
            + self.revisions[i]
                .range(..=start)
                .map(|(_, d)| d)
                .sum::<i64>();
        u32::try_from(sum).unwrap_or(0)
    }

    /// One commit's events of this agent (in sequence order), received at `received` (unix
    /// seconds); hands back the hours it made final, by start, in order.
    pub fn commit(&mut self, events: &[(i64, &Event)], received: i64) -> Vec<(i64, Hour)> {
        let secs = |e: &Event| e.creation.to_unix_ms() / 1000;
        let (Some(first), Some(last)) = (
            events.iter().map(|(_, e)| secs(e)).min(),
            events.iter().map(|(_, e)| secs(e)).max(),
        ) else {
            return Vec::new();
        };
        if self.state.is_none() && self.segments.is_empty() {
            self.from = start_of(first, HOUR);
        }
        // Events older than the state change nothing (§9): nothing before it is compared.
        let floor = (self.state.as_ref()).map_or(i64::MIN, |a| a.last_event_at.to_unix_ms() / 1000);
        let (first, last) = (
            first.max(floor).max(self.from),
            last.max(floor).max(self.from),
        );
        // Per size: the intervals that had ended by `received` (those starting before
        // `ended_by`) can be revised: the ones holding the commit's events are compared whole,
        // before and after; each one after them changes if and only if the state the agent was
        // left in did.
        struct Compared {
            size: i64,
            ended_by: i64,
            through: i64,
            before: Vec<(i64, Figures)>,
        }
        let mut compared: Vec<Compared> = SIZES
            .iter()
            .map(|&size| {
                let ended_by = start_of(received - size, size) + size;
                let (from, through) = (start_of(first, size), start_of(last, size));
                let before = (from..=through)
                    .step_by(size as usize)
                    .filter(|s| *s < ended_by)
                    .map(|s| (s, self.figures(s, s + size, i64::MAX)))
                    .collect();
                Compared {
                    size,
                    ended_by,
                    through,
                    before,
                }
            })
            .collect();
        let left_in = self.segments.last().map(|s| s.1.clone());
        for (sequence, event) in events {
            let Some(next) = apply(self.state.as_ref(), event, *sequence) else {
                continue;
            };
            let at = secs(event).max(self.from);
            if matches!(
                event.code,
                code::RECEIVING_WORK_ITEM
                    | code::ACCEPTED_WORK_ITEM
                    | code::DECLINED_WORK_ITEM
                    | code::RELEASED_WORK_ITEM
            ) {
                let i = match event.code {
                    code::RECEIVING_WORK_ITEM => 0,
                    code::ACCEPTED_WORK_ITEM => 1,
                    code::DECLINED_WORK_ITEM => 2,
                    _ => 3,
                };
                match self.counted.last_mut() {
                    Some(last) if last.0 == at => {
                        last.1[i] += 1;
                        last.2 = *sequence;
                    }
                    _ => {
                        let mut items = [0; 4];
                        items[i] = 1;
                        self.counted.push((at, items, *sequence));
                    }
                }
            }
            let k = key(&next);
            match self.segments.last_mut() {
                Some(last) if last.0 == at => *last = (at, k, *sequence),
                _ => self.segments.push((at, k, *sequence)),
            }
            self.state = Some(next);
        }
        let now_in = self.segments.last().map(|s| s.1.clone());
        for c in &mut compared {
            for (start, old) in std::mem::take(&mut c.before) {
                if self.figures(start, start + c.size, i64::MAX) != old {
                    self.revise(c.size, start, start + c.size);
                }
            }
            if left_in.clone().flatten() != now_in.clone().flatten() {
                self.revise(c.size, c.through + c.size, c.ended_by);
            }
        }
        let kept_to = self.state.as_ref().map_or(self.from, |a| {
            start_of(a.last_event_at.to_unix_ms() / 1000, HOUR)
        });
        self.keep(kept_to)
    }

    /// Hands back the hours from `from` up to `to` as rows (those with anything in them) and
    /// forgets what it held of them.
    fn keep(&mut self, to: i64) -> Vec<(i64, Hour)> {
        let mut out = Vec::new();
        let mut hour = self.from;
        while hour < to {
            let mut row = Hour::default();
            for (q, quarter) in row.quarters.iter_mut().enumerate() {
                let s = hour + q as i64 * QUARTER;
                *quarter = Quarter::of(
                    self.figures(s, s + QUARTER, i64::MAX),
                    self.changed_by(s, s + QUARTER),
                );
                row.revisions[q] = self.revision(QUARTER, s);
            }
            row.revisions[4] = self.revision(1800, hour);
            row.revisions[5] = self.revision(1800, hour + 1800);
            row.revisions[6] = self.revision(HOUR, hour);
            if !row.is_empty() {
                out.push((hour, row));
            }
            // A long quiet stretch (signed out, nothing revised): straight to the next change.
            hour = self.next_hour_with_anything(hour + HOUR).min(to);
        }
        // Forget what is kept: the segment holding at `to` stays, as the first.
        let holding = self.segments.partition_point(|s| s.0 <= to).max(1) - 1;
        self.segments.drain(..holding.min(self.segments.len()));
        if let Some(first) = self.segments.first_mut()
            && first.0 < to
        {
            first.0 = to;
        }
        self.counted.retain(|c| c.0 >= to);
        for i in 0..3 {
            let later = self.revisions[i].split_off(&to);
            self.base[i] += self.revisions[i].values().sum::<i64>();
            self.revisions[i] = later;
        }
        self.from = to.max(self.from);
        out
    }

    /// The first hour from `hour` on that may hold anything: signed-in time, counted events or
    /// a revision.
    fn next_hour_with_anything(&self, hour: i64) -> i64 {
        let holding = self.segments.partition_point(|s| s.0 <= hour).max(1) - 1;
        let signed_in = self.segments.get(holding).is_some_and(|s| s.1.is_some());
        let revised = (0..3).any(|i| {
            self.base[i]
                + self.revisions[i]
                    .range(..=hour)
                    .map(|(_, d)| d)
                    .sum::<i64>()
                != 0
        });
        if signed_in || revised || self.segments.is_empty() {
            return hour;
        }
        // Signed out and unrevised until the next segment, counted event or revision change.
        let next = [
            self.segments.get(holding + 1).map(|s| s.0),
            self.counted.iter().map(|c| c.0).find(|t| *t >= hour),
            (0..3)
                .filter_map(|i| self.revisions[i].range(hour..).next().map(|(s, _)| *s))
                .min(),
        ];
        next.into_iter()
            .flatten()
            .map(|t| start_of(t, HOUR))
            .min()
            .unwrap_or(i64::MAX)
            .max(hour)
    }

    /// The figures between `start` and `end`, time counted up to `horizon`, of what the tail
    /// holds (from `from` on).
    fn figures(&self, start: i64, end: i64, horizon: i64) -> Figures {
        let cut = end.min(horizon);
        let mut f = Figures::default();
        let first = self.segments.partition_point(|s| s.0 <= start).max(1) - 1;
        for (i, (from, k, _)) in self.segments.iter().enumerate().skip(first) {
            if *from >= cut {
                break;
            }
            let to = self.segments.get(i + 1).map_or(cut, |n| n.0.min(cut));
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
        for (_, items, _) in self.counted[lo..].iter().take_while(|c| c.0 < end) {
            let w = &mut f.work_items;
            w.received += items[0];
            w.accepted += items[1];
            w.declined += items[2];
            w.released += items[3];
        }
        f
    }

    /// The last sequence that changed the interval between `start` and `end`: the event whose
    /// state holds at its start, or a later one within it.
    fn changed_by(&self, start: i64, end: i64) -> i64 {
        let at_start = self.segments.partition_point(|s| s.0 <= start);
        let within = self.segments.partition_point(|s| s.0 < end);
        let states = self.segments[at_start.max(1) - 1..within.max(at_start.max(1) - 1)]
            .iter()
            .map(|s| s.2);
        let lo = self.counted.partition_point(|c| c.0 < start);
        let counted = self.counted[lo..]
            .iter()
            .take_while(|c| c.0 < end)
            .map(|c| c.2);
        states.chain(counted).max().unwrap_or(0)
    }
}

/// Which intervals a read shows beside those with signed-in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Empty {
    /// None (a full load: an interval without signed-in time says nothing).
    Left,
    /// Those revised after they ended (an incremental load: a late event may have emptied an
    /// interval whose earlier figures the consumer holds).
    Revised,
}

/// `username`'s intervals in `window`, from its kept hours in the window (by start, in order)
/// and its tail.
pub fn assemble(
    window: Window,
    username: &str,
    hours: Vec<(i64, Hour)>,
    tail: &Tail,
    empty: Empty,
) -> Vec<AgentInterval> {
    let size = window.size;
    let mut out = Vec::new();
    // The first interval: the window's, or the agent's first.
    let known_from = hours
        .first()
        .map(|h| h.0)
        .into_iter()
        .chain(tail.segments.first().map(|s| start_of(s.0, size)))
        .min();
    let Some(known_from) = known_from else {
        return out;
    };
    let mut start = start_of(known_from, size).max(window.since);
    let mut rows = hours.into_iter().peekable();
    while start < window.until && start < window.horizon {
        let hour = start_of(start, HOUR);
        if hour < tail.from {
            // Kept: skip the hours before, find this one's row.
            while rows.peek().is_some_and(|(h, _)| *h < hour) {
                rows.next();
            }
            let Some((h, row)) = rows.peek_mut().filter(|(h, _)| *h == hour) else {
                // No row: nothing in this hour. On to the next row's hour, or the tail's.
                let next = rows.peek().map_or(tail.from, |(h, _)| *h).min(tail.from);
                start = start_of(next, size).max(start + size);
                continue;
            };
            let mut f = Figures::default();
            let offset = start - *h;
            let first = (offset / QUARTER) as usize;
            let quarters = &mut row.quarters[first..first + (size / QUARTER) as usize];
            for q in quarters.iter_mut() {
                q.add_to(&mut f);
            }
            let changed_by = quarters.iter().map(|q| q.changed_by).max().unwrap_or(0);
            let revision = row.revision(size, offset);
            push(
                &mut out, username, start, size, revision, f, changed_by, empty,
            );
        } else {
            let f = tail.figures(start, start + size, window.horizon);
            let revision = tail.revision(size, start);
            let changed_by = tail.changed_by(start, start + size);
            push(
                &mut out, username, start, size, revision, f, changed_by, empty,
            );
        }
        start += size;
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn push(
    out: &mut Vec<AgentInterval>,
    username: &str,
    start: i64,
    size: i64,
    revision: u32,
    f: Figures,
    changed_by: i64,
    empty: Empty,
) {
    if f.signed_in_secs > 0 || (empty == Empty::Revised && revision > 0) {
        out.push(AgentInterval {
            username: username.to_string(),
            start: Timestamp::from_unix_ms(start * 1000),
            size_secs: size,
            revision,
            signed_in_secs: f.signed_in_secs,
            on_work_item_secs: f.on_work_item_secs,
            by_activity: f.by_activity,
            work_items: WorkItems { ..f.work_items },
            changed_by,
        });
    }
}
