use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::*;

fn ts(s: &str) -> Timestamp {
    Timestamp::parse(s).unwrap()
}

fn ev(code: u32, at: &str, extra: Value) -> Event {
    let mut fields: Map<String, Value> = json!({
        "SessionId": "S-1", "SessionType": "CCA", "Username": "jdoe", "PhoneNo": "+15550001"
    })
    .as_object()
    .unwrap()
    .clone();
    fields.extend(extra.as_object().unwrap().clone());
    Event {
        id: Uuid::new_v4(),
        creation: ts(at),
        category: AGENT,
        code,
        fields,
    }
}

fn status(at: &str, activity: i64, availability: i64, name: &str) -> Event {
    ev(
        code::STATUS_CHANGED,
        at,
        json!({"ActivityCode": activity, "AvailabilityCode": availability, "ActivityName": name}),
    )
}

/// As the API shows it: named by the built-in catalog.
fn shown(a: &Agent) -> Agent {
    a.clone().named(&crate::event::Catalog::builtin())
}

fn run(events: &[Event]) -> Option<Agent> {
    fold(
        None,
        events.iter().enumerate().map(|(i, e)| (i as i64 + 1, e)),
    )
}

#[test]
fn a_shift_from_sign_in_to_sign_out() {
    let day = [
        ev(code::SIGNED_IN, "20261123080000", json!({})),
        status("20261123080100", 16, 1, ""),
        ev(
            code::RECEIVING_WORK_ITEM,
            "20261123080200",
            json!({"WorkItemId": "W-1", "WorkItemType": "Voice"}),
        ),
    ];
    let a = run(&day).unwrap();
    assert!(a.signed_in);
    assert_eq!(a.session_id.as_deref(), Some("S-1"));
    assert_eq!(a.activity_code, Some(16));
    assert_eq!(shown(&a).activity_name.as_deref(), Some("Available"));
    assert_eq!(a.since, Some(ts("20261123080100")));
    let w = a.work_item.clone().unwrap();
    assert_eq!(
        (w.id.as_deref(), w.kind.as_deref(), w.state.as_str()),
        (Some("W-1"), Some("Voice"), "receiving")
    );
    assert_eq!(a.last_sequence, 3);
    assert_eq!(a.signed_in_at, Some(ts("20261123080000")));

    let accepted = ev(
        code::ACCEPTED_WORK_ITEM,
        "20261123080210",
        json!({"WorkItemId": "W-1"}),
    );
    let a = apply(Some(&a), &accepted, 4).unwrap();
    assert_eq!(a.work_item.as_ref().unwrap().state, "accepted");
    assert_eq!(a.work_item.as_ref().unwrap().kind, None);
    // Released: back to the activity held before.
    let released = ev(code::RELEASED_WORK_ITEM, "20261123080500", json!({}));
    let a = apply(Some(&a), &released, 5).unwrap();
    assert_eq!(a.work_item, None);
    assert_eq!(shown(&a).activity_name.as_deref(), Some("Available"));

    let busy = status("20261123081000", 36, 0, "Coaching");
    let a = apply(Some(&a), &busy, 6).unwrap();
    assert_eq!(shown(&a).activity_name.as_deref(), Some("Coaching"));
    let out = ev(code::SIGNED_OUT, "20261123170000", json!({"ExitCode": 3}));
    let a = apply(Some(&a), &out, 7).unwrap();
    assert!(!a.signed_in);
    assert_eq!(a.signed_out_at, Some(ts("20261123170000")));
    assert_eq!(a.exit_code, Some(3));
    assert_eq!(a.signed_in_at, Some(ts("20261123080000")));

    // A new sign-in starts a new session: the old one's activity is gone.
    let again = ev(
        code::SIGNED_IN,
        "20261124080000",
        json!({"SessionId": "S-2"}),
    );
    let a = apply(Some(&a), &again, 8).unwrap();
    assert!(a.signed_in);
    assert_eq!(a.session_id.as_deref(), Some("S-2"));
    assert_eq!(
        (a.activity_code, a.signed_out_at, a.exit_code),
        (None, None, None)
    );
}

#[test]
fn older_events_change_nothing_and_ties_go_by_sequence() {
    let a = run(&[status("20261123080100", 16, 1, "")]).unwrap();
    assert_eq!(
        apply(Some(&a), &status("20261123080059", 0, 0, ""), 2),
        None
    );
    // Same second, later sequence: applies.
    let b = apply(Some(&a), &status("20261123080100", 34, 0, ""), 2).unwrap();
    assert_eq!(shown(&b).activity_name.as_deref(), Some("On Break"));
    // A sequence already folded (a replayed backfill) changes nothing.
    assert_eq!(
        apply(Some(&b), &status("20261123090000", 0, 0, ""), 2),
        None
    );
}

#[test]
fn unknown_activities_and_first_seen_mid_shift() {
    let a = run(&[status("20261123080100", 99, 0, "")]).unwrap();
    assert!(a.signed_in, "an agent seen mid-shift is signed in");
    assert_eq!(a.signed_in_at, Some(ts("20261123080100")));
    assert_eq!(shown(&a).activity_name.as_deref(), Some("activity 99"));
    assert_eq!(a.activity_name, None, "named when shown, not stored");
}

#[test]
fn not_an_agent_event_or_no_username() {
    let mut e = ev(code::SIGNED_IN, "20261123080000", json!({}));
    e.fields.remove("Username");
    assert_eq!(apply(None, &e, 1), None);
    let mut e = ev(code::SIGNED_IN, "20261123080000", json!({}));
    e.category = 2;
    assert_eq!(apply(None, &e, 1), None);
    // An erased Username (DESIGN §19) names no agent: no "[erased]" agent is made of it.
    let e = ev(
        code::SIGNED_IN,
        "20261123080000",
        json!({"Username": "[erased]"}),
    );
    assert_eq!(apply(None, &e, 1), None);
}

#[test]
fn declined_clears_the_work_item() {
    let a = run(&[
        ev(
            code::RECEIVING_WORK_ITEM,
            "20261123080000",
            json!({"WorkItemId": "W"}),
        ),
        ev(
            code::DECLINED_WORK_ITEM,
            "20261123080001",
            json!({"Reason": "busy"}),
        ),
    ])
    .unwrap();
    assert_eq!(a.work_item, None);
}

#[test]
fn the_agent_object_has_the_designed_shape() {
    let a = run(&[
        ev(code::SIGNED_IN, "20261123184500", json!({})),
        status("20261123184603", 16, 1, ""),
    ])
    .unwrap();
    let v = serde_json::to_value(shown(&a)).unwrap();
    assert_eq!(
        v,
        json!({"username": "jdoe", "signed_in": true, "session_id": "S-1", "session_type": "CCA",
               "phone_no": "+15550001", "activity_code": 16, "availability_code": 1,
               "activity_name": "Available", "since": "20261123184603", "work_item": null,
               "signed_in_at": "20261123184500", "signed_out_at": null, "exit_code": null,
               "last_sequence": 2, "last_event_at": "20261123184603"})
    );
    let back: Agent = serde_json::from_value(v).unwrap();
    assert_eq!(back, shown(&a));
}

#[test]
fn timeline_intervals_in_a_window() {
    let events = [
        ev(code::SIGNED_IN, "20261123080000", json!({})),
        status("20261123080100", 16, 1, ""),
        ev(
            code::RECEIVING_WORK_ITEM,
            "20261123080200",
            json!({"WorkItemId": "W"}),
        ),
        ev(code::RELEASED_WORK_ITEM, "20261123080500", json!({})),
        // Changed and changed back within one second: no empty interval.
        status("20261123080600", 34, 0, ""),
        status("20261123080600", 16, 1, ""),
        status("20261123090000", 34, 0, ""),
    ];
    let numbered: Vec<(i64, &Event)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (i as i64 + 1, e))
        .collect();
    let start = fold(None, numbered[..2].iter().copied());
    let t = timeline(
        start,
        numbered[2..].iter().copied(),
        ts("20261123080130"),
        None,
    );
    let shown: Vec<_> = t
        .iter()
        .map(|i| {
            (
                i.from.to_string(),
                i.to.map(|t| t.to_string()),
                i.activity_code,
                i.work_item.is_some(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        vec![
            (
                "20261123080130".into(),
                Some("20261123080200".into()),
                Some(16),
                false
            ),
            (
                "20261123080200".into(),
                Some("20261123080500".into()),
                Some(16),
                true
            ),
            (
                "20261123080500".into(),
                Some("20261123090000".into()),
                Some(16),
                false
            ),
            ("20261123090000".into(), None, Some(34), false),
        ]
    );
    // With an end: events after it are left out and the last interval ends there.
    let until = ts("20261123083000");
    let start = fold(None, numbered[..2].iter().copied());
    let t = timeline(
        start,
        numbered[2..].iter().copied(),
        ts("20261123080130"),
        Some(until),
    );
    assert_eq!(t.len(), 3);
    assert_eq!(t[2].to, Some(until));
}

/// Properties of [`step`] over arbitrary event sequences: days of one agent's events with codes
/// 1 to 8 (and a few of other categories), times that go back and forth, fields present or not.
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// An event of one agent: (category, code, seconds into the day, activity, work item).
    fn event() -> impl Strategy<Value = Event> {
        (
            prop_oneof![9 => Just(AGENT), 1 => Just(2u8)],
            1u32..=8,
            0i64..600,
            prop::option::of(0i64..40),
            prop::option::of(0u8..4),
            any::<bool>(),
        )
            .prop_map(|(category, code, secs, activity, item, named)| {
                let mut extra = json!({});
                if let Some(a) = activity {
                    extra["ActivityCode"] = json!(a);
                    extra["AvailabilityCode"] = json!(a % 3);
                    extra["ActivityName"] = json!(if named { "Training" } else { "" });
                }
                if let Some(i) = item {
                    extra["WorkItemId"] = json!(format!("w{i}"));
                }
                let at = format!(
                    "20261123{:02}{:02}{:02}",
                    10 + secs / 3600,
                    secs / 60 % 60,
                    secs % 60
                );
                let mut e = ev(code, &at, extra);
                e.category = category;
                e
            })
    }

    fn invariants(a: &Agent) {
        assert_eq!(a.username, "jdoe");
        if !a.signed_in {
            assert!(a.work_item.is_none(), "{a:?}");
        }
        if a.signed_in {
            assert!(
                a.signed_in_at.is_some() && a.signed_out_at.is_none(),
                "{a:?}"
            );
        }
        if let Some(name) = &a.activity_name {
            assert!(!name.is_empty(), "an empty ActivityName is no name");
        }
    }

    proptest! {
        /// Never a roll-back: `last_event_at` and `last_sequence` only grow; an event older
        /// than the state, or of another category, changes nothing; `step` says true exactly
        /// when the state changed its position.
        #[test]
        fn the_state_only_moves_forward(events in prop::collection::vec(event(), 0..60)) {
            let mut state: Option<Agent> = None;
            for (i, e) in events.iter().enumerate() {
                let sequence = i as i64 + 1;
                let before = state.clone();
                let moved = step(&mut state, e, sequence);
                let older = before.as_ref().is_some_and(|b| e.creation < b.last_event_at);
                prop_assert_eq!(moved, e.category == AGENT && !older);
                if !moved {
                    prop_assert_eq!(&state, &before);
                    continue;
                }
                let a = state.as_ref().unwrap();
                prop_assert_eq!((a.last_sequence, a.last_event_at), (sequence, e.creation));
                if let Some(b) = &before {
                    prop_assert!(a.last_event_at >= b.last_event_at);
                }
                invariants(a);
                prop_assert_eq!(a.signed_in, e.code != code::SIGNED_OUT);
            }
        }

        /// Folding in two parts (a retained base, then the rest of the log) gives the state of
        /// folding everything at once: what `as_of`, the timeline and retention rely on.
        #[test]
        fn folding_resumes_from_any_point(
            events in prop::collection::vec(event(), 0..60),
            cut in 0usize..60,
        ) {
            let numbered: Vec<(i64, &Event)> =
                events.iter().enumerate().map(|(i, e)| (i as i64 + 1, e)).collect();
            let cut = cut.min(numbered.len());
            let whole = fold(None, numbered.iter().copied());
            let base = fold(None, numbered[..cut].iter().copied());
            prop_assert_eq!(fold(base, numbered[cut..].iter().copied()), whole);
        }

        /// Replaying an event already folded (a sequence not after the state's) changes
        /// nothing: a consumer resuming from the log may see it again.
        #[test]
        fn an_event_folded_twice_counts_once(events in prop::collection::vec(event(), 1..40)) {
            let numbered: Vec<(i64, &Event)> =
                events.iter().enumerate().map(|(i, e)| (i as i64 + 1, e)).collect();
            let mut state = fold(None, numbered.iter().copied());
            let before = state.clone();
            for (sequence, e) in &numbered {
                prop_assert!(!step(&mut state, e, *sequence));
            }
            prop_assert_eq!(state, before);
        }
    }
}
