use proptest::prelude::*;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::*;
use crate::event::catalog::AGENT;

/// 2026-12-05 08:00:00 UTC.
const T0: i64 = 1_796_457_600;

fn event(code: u32, at: i64, extra: Value) -> Event {
    let mut fields: Map<String, Value> = json!({
        "SessionId": "S-1", "SessionType": "CCA", "Username": "jdoe", "PhoneNo": "+15550001"
    })
    .as_object()
    .unwrap()
    .clone();
    fields.extend(extra.as_object().unwrap().clone());
    Event {
        id: Uuid::new_v4(),
        creation: Timestamp::from_unix_ms(at * 1000),
        category: AGENT,
        code,
        fields,
    }
}

/// A random Agent event at `at`.
fn random_event(kind: u8, at: i64) -> Event {
    match kind % 8 {
        0 => event(code::SIGNED_IN, at, json!({})),
        1 => event(code::SIGNED_OUT, at, json!({"ExitCode": 0})),
        2 => event(
            code::STATUS_CHANGED,
            at,
            json!({"ActivityCode": 16, "AvailabilityCode": 1}),
        ),
        3 => event(
            code::STATUS_CHANGED,
            at,
            json!({"ActivityCode": 36, "AvailabilityCode": 0}),
        ),
        4 => event(code::RECEIVING_WORK_ITEM, at, json!({"WorkItemId": "W"})),
        5 => event(code::ACCEPTED_WORK_ITEM, at, json!({"WorkItemId": "W"})),
        6 => event(code::DECLINED_WORK_ITEM, at, json!({"WorkItemId": "W"})),
        _ => event(code::RELEASED_WORK_ITEM, at, json!({"WorkItemId": "W"})),
    }
}

/// Commits of `(sequence, event)` with the second they were received, in sequence order.
type Commits = Vec<(Vec<(i64, Event)>, i64)>;

/// Random commits: events mostly in time order (some a little older: refused by the fold),
/// received soon after their time or, now and then, much later (late, backfilled).
fn commits() -> impl Strategy<Value = Commits> {
    prop::collection::vec((0u8..8, 0i64..1500, 0u8..10, 1usize..3), 1..40).prop_map(|steps| {
        let (mut at, mut received, mut sequence) = (T0, T0, 0);
        let mut out = Vec::new();
        for (kind, gap, lateness, n) in steps {
            let mut events = Vec::new();
            for i in 0..n {
                // One step in ten goes back a little: such an event changes nothing.
                let t = if lateness == 0 && i == 0 {
                    at - 30
                } else {
                    at + gap
                };
                at = at.max(t);
                sequence += 1;
                events.push((sequence, random_event(kind.wrapping_add(i as u8), t)));
            }
            // Received at once, or (one in five) an hour and a bit later.
            let delay = if lateness >= 8 { 3_700 } else { 1 };
            received = received.max(at + delay);
            out.push((events, received));
        }
        out
    })
}

fn build(window: Window, commits: &Commits) -> Vec<AgentInterval> {
    let mut b = Builder::new(window, None);
    for (events, received) in commits {
        let refs: Vec<(i64, &Event)> = events.iter().map(|(s, e)| (*s, e)).collect();
        b.commit(&refs, *received);
    }
    b.finish("jdoe")
}

/// The signed-in seconds of the timeline (§9) between `since` and `until`.
fn timeline_secs(commits: &Commits, since: i64, until: i64) -> u64 {
    let events: Vec<(i64, &Event)> = commits
        .iter()
        .flat_map(|(evs, _)| evs.iter().map(|(s, e)| (*s, e)))
        .collect();
    let ts = |t: i64| Timestamp::from_unix_ms(t * 1000);
    let line = crate::agent::timeline(None, events, ts(since), Some(ts(until)));
    line.iter()
        .filter(|i| i.signed_in)
        .map(|i| {
            let from = i.from.to_unix_ms() / 1000;
            let to = i.to.map_or(until, |t| t.to_unix_ms() / 1000);
            (to.min(until) - from.max(since)).max(0) as u64
        })
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn intervals_tile_the_timeline_and_activities_sum_to_signed_in(
        commits in commits(),
        size in prop::sample::select(SIZES.to_vec()),
        offset in 0i64..4_000,
    ) {
        let since = T0 + offset;
        let until = T0 + 2 * 86_400;
        let window = Window::new(since, until, size, until);
        let intervals = build(window, &commits);
        let mut last = i64::MIN;
        for i in &intervals {
            prop_assert_eq!(i.by_activity.values().sum::<u64>(), i.signed_in_secs);
            prop_assert!(i.on_work_item_secs <= i.signed_in_secs);
            prop_assert!(i.signed_in_secs > 0 || i.revision > 0);
            prop_assert!(i.signed_in_secs <= size as u64);
            let start = i.start.to_unix_ms() / 1000;
            prop_assert_eq!(start % size, 0);
            prop_assert!(start > last, "in order, each once");
            last = start;
        }
        // Together they hold exactly the timeline's signed-in time, from the first interval's
        // start (the window's, aligned) to the end.
        let total: u64 = intervals.iter().map(|i| i.signed_in_secs).sum();
        prop_assert_eq!(total, timeline_secs(&commits, window.since, until));
    }

    #[test]
    fn a_late_event_revises_exactly_the_ended_intervals_it_changes(
        commits in commits(),
        kind in 0u8..8,
        back in 1i64..7_200,
    ) {
        let size = 900;
        let end_of_all = commits.last().map_or(T0, |c| c.1);
        let last_time = commits
            .iter()
            .flat_map(|(evs, _)| evs.iter().map(|(_, e)| e.creation.to_unix_ms() / 1000))
            .max()
            .unwrap_or(T0);
        // Late: dated after the agent's last event (so the fold takes it), received hours later.
        let at = last_time + back;
        let received = end_of_all.max(at) + 4 * 3_600;
        let until = received + 3_600;
        let window = Window::new(T0, until, size, until);
        let before = build(window, &commits);
        let sequence = commits.iter().map(|c| c.0.len() as i64).sum::<i64>() + 1;
        let mut with = commits.clone();
        with.push((vec![(sequence, random_event(kind, at))], received));
        let after = build(window, &with);
        let by_start = |v: &[AgentInterval]| -> BTreeMap<i64, AgentInterval> {
            v.iter().map(|i| (i.start.to_unix_ms() / 1000, i.clone())).collect()
        };
        let (b, a) = (by_start(&before), by_start(&after));
        let starts: std::collections::BTreeSet<i64> = b.keys().chain(a.keys()).copied().collect();
        for start in starts {
            let figures = |i: Option<&AgentInterval>| i.map(|i| (
                i.signed_in_secs, i.on_work_item_secs, i.by_activity.clone(), i.work_items,
            ));
            let (old, new) = (b.get(&start), a.get(&start));
            let changed = figures(old) != figures(new);
            let ended = start + size <= received;
            let revision = |i: Option<&AgentInterval>| i.map_or(0, |i| i.revision);
            if changed && ended {
                prop_assert_eq!(revision(new), revision(old) + 1, "{}", start);
            } else {
                prop_assert_eq!(revision(new), revision(old), "{}", start);
            }
            if changed && let Some(new) = new {
                prop_assert_eq!(new.changed_by, sequence, "changed_since_sequence finds it");
            }
        }
    }
}

#[test]
fn a_shift_cut_into_quarter_hours() {
    // Signed in at 08:10, Available at 08:20, a work item from 08:25 to 08:40, break at 08:50,
    // signed out at 09:05.
    let commits: Commits = [
        (code::SIGNED_IN, 600, json!({})),
        (
            code::STATUS_CHANGED,
            1200,
            json!({"ActivityCode": 16, "AvailabilityCode": 1}),
        ),
        (code::RECEIVING_WORK_ITEM, 1500, json!({"WorkItemId": "W"})),
        (code::ACCEPTED_WORK_ITEM, 1510, json!({"WorkItemId": "W"})),
        (code::RELEASED_WORK_ITEM, 2400, json!({"WorkItemId": "W"})),
        (
            code::STATUS_CHANGED,
            3000,
            json!({"ActivityCode": 34, "AvailabilityCode": 0}),
        ),
        (code::SIGNED_OUT, 3900, json!({})),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (c, at, extra))| (vec![(i as i64 + 1, event(c, T0 + at, extra))], T0 + at))
    .collect();
    let window = Window::new(T0, T0 + 7_200, 900, T0 + 86_400);
    let got = build(window, &commits);
    let row = |i: &AgentInterval| {
        let mut acts: Vec<String> = i
            .by_activity
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        acts.sort();
        (
            i.start.to_string(),
            i.signed_in_secs,
            i.on_work_item_secs,
            acts.join(","),
        )
    };
    let rows: Vec<_> = got.iter().map(row).collect();
    let s = |a: &str| a.to_string();
    assert_eq!(
        rows,
        [
            (s("20261205080000"), 300, 0, s("unknown=300")),
            (s("20261205081500"), 900, 300, s("16=600,unknown=300")),
            (s("20261205083000"), 900, 600, s("16=900")),
            (s("20261205084500"), 900, 0, s("16=300,34=600")),
            (s("20261205090000"), 300, 0, s("34=300")),
        ]
    );
    assert_eq!(
        got[1].work_items,
        WorkItems {
            received: 1,
            accepted: 1,
            ..WorkItems::default()
        }
    );
    assert_eq!(got[2].work_items.released, 1);
    assert!(
        got.iter().all(|i| i.revision == 0),
        "every event came at once"
    );
}

/// Like [`commits`], with long quiet stretches (hours, a weekend) and backfills days late.
fn wide_commits() -> impl Strategy<Value = Commits> {
    prop::collection::vec((0u8..8, 0i64..30_000, 0u8..10, 1usize..4), 1..30).prop_map(|steps| {
        let (mut at, mut received, mut sequence) = (T0 + 1_234, T0, 0);
        let mut out = Vec::new();
        for (kind, gap, lateness, n) in steps {
            let mut events = Vec::new();
            for i in 0..n {
                let t = if lateness == 1 && i == 0 {
                    at - 100
                } else {
                    at + gap * (i as i64 + 1) % 200_000
                };
                at = at.max(t);
                sequence += 1;
                events.push((sequence, random_event(kind.wrapping_add(3 * i as u8), t)));
            }
            let delay = match lateness {
                0..=5 => 2,
                6 | 7 => 1_000,
                _ => 3 * 86_400,
            };
            received = received.max(at + delay);
            out.push((events, received));
        }
        out
    })
}

/// The intervals of `window` as the kept projection has them: each commit folded into a tail
/// that goes through its stored form between commits, the hours it hands back kept by start.
fn kept(window: Window, commits: &Commits, empty: kept::Empty) -> Vec<AgentInterval> {
    let mut tail = kept::Tail::new(None);
    let mut hours = BTreeMap::new();
    for (events, received) in commits {
        let refs: Vec<(i64, &Event)> = events.iter().map(|(s, e)| (*s, e)).collect();
        for (start, hour) in tail.commit(&refs, *received) {
            let text = serde_json::to_string(&hour).unwrap();
            let again: kept::Hour = serde_json::from_str(&text).unwrap();
            assert!(hours.insert(start, again).is_none(), "an hour is kept once");
        }
        let text = serde_json::to_string(&tail).unwrap();
        tail = serde_json::from_str(&text).unwrap();
    }
    let first = window.since.div_euclid(kept::HOUR) * kept::HOUR;
    let rows: Vec<(i64, kept::Hour)> = hours
        .range(first..window.until)
        .map(|(s, h)| (*s, h.clone()))
        .collect();
    kept::assemble(window, "jdoe", rows, &tail, empty)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// The kept projection answers exactly what a fold of the whole log answers, for every size
    /// and window, with the revisions and the last changing sequences.
    #[test]
    fn kept_hours_and_the_tail_answer_as_the_log_does(
        commits in prop_oneof![commits(), wide_commits()],
        size in prop::sample::select(SIZES.to_vec()),
        offset in -7_200i64..200_000,
        length in 1i64..400_000,
        now_after in 0i64..400_000,
    ) {
        let since = T0 + offset;
        let until = since + length;
        let now = commits.last().map_or(T0, |c| c.1) + now_after;
        let window = Window::new(since, until, size, now);
        let expected = build(window, &commits);
        prop_assert_eq!(&kept(window, &commits, kept::Empty::Revised), &expected);
        let full: Vec<AgentInterval> =
            expected.into_iter().filter(|i| i.signed_in_secs > 0).collect();
        prop_assert_eq!(kept(window, &commits, kept::Empty::Left), full);
    }
}
