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
