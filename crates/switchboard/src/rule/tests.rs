use serde_json::json;

use super::*;
use crate::agent::{self, GroupFields};
use crate::event::Event;

fn fields() -> Vec<String> {
    vec!["Team".to_string()]
}

fn spec(v: Value) -> Result<RuleSpec, Vec<String>> {
    RuleSpec::from_value(v, &fields()).map_err(|e| e.into_iter().map(|e| e.field).collect())
}

#[test]
fn a_valid_agent_rule_and_a_valid_group_rule() {
    let r = spec(
        json!({"name": "wrap-up", "kind": "agent_state", "activity_codes": [36],
                        "for_secs": 60}),
    )
    .unwrap();
    assert_eq!(r.kind, Kind::AgentState);
    assert!(r.enabled);
    let g = spec(
        json!({"name": "sales", "kind": "group_count", "by": "Team", "value": "Sales",
                        "availability_codes": [16], "op": "lt", "threshold": 2, "for_secs": 30,
                        "enabled": false}),
    )
    .unwrap();
    assert_eq!(g.op, Some(Op::Lt));
    assert!(!g.enabled);
    // Stored and read back alike.
    let back: RuleSpec = serde_json::from_value(g.to_value()).unwrap();
    assert_eq!(back, g);
}

#[test]
fn bad_rules_name_their_fields() {
    let cases = [
        (json!({"name": "x", "kind": "queue", "for_secs": 5}), "kind"),
        (
            json!({"name": "x", "kind": "agent_state", "for_secs": 0}),
            "for_secs",
        ),
        (
            json!({"name": "x", "kind": "agent_state", "for_secs": 86_401}),
            "for_secs",
        ),
        (json!({"name": "x", "kind": "agent_state"}), "for_secs"),
        (json!({"kind": "agent_state", "for_secs": 5}), "name"),
        (
            json!({"name": "x", "kind": "agent_state", "for_secs": 5, "colour": 1}),
            "colour",
        ),
        (
            json!({"name": "x", "kind": "agent_state", "for_secs": 5, "activity_codes": []}),
            "activity_codes",
        ),
        (
            json!({"name": "x", "kind": "agent_state", "for_secs": 5, "work_item_state": "done"}),
            "work_item_state",
        ),
        (
            json!({"name": "x", "kind": "agent_state", "for_secs": 5, "by": "Team"}),
            "by",
        ),
        (
            json!({"name": "x", "kind": "group_count", "for_secs": 5, "by": "Queue", "op": "lt", "threshold": 1}),
            "by",
        ),
        (
            json!({"name": "x", "kind": "group_count", "for_secs": 5, "op": "lt", "threshold": 1}),
            "by",
        ),
        (
            json!({"name": "x", "kind": "group_count", "for_secs": 5, "by": "Team", "op": "le", "threshold": 1}),
            "op",
        ),
        (
            json!({"name": "x", "kind": "group_count", "for_secs": 5, "by": "Team", "op": "lt"}),
            "threshold",
        ),
        (
            json!({"name": "x", "kind": "group_count", "for_secs": 5, "by": "Team", "op": "gt", "threshold": 1, "work_item_state": "accepted"}),
            "work_item_state",
        ),
    ];
    for (body, field) in cases {
        let errors = spec(body.clone()).expect_err(&body.to_string());
        assert!(errors.contains(&field.to_string()), "{body}: {errors:?}");
    }
}

fn event(code: u32, at: &str, fields: Value) -> Event {
    let mut f = fields.as_object().cloned().unwrap_or_default();
    f.insert("Username".into(), json!("ann"));
    Event {
        id: Uuid::new_v4(),
        creation: Timestamp::parse(at).unwrap(),
        category: crate::event::catalog::AGENT,
        code,
        fields: f,
    }
}

fn fold(events: &[Event]) -> Agent {
    let mut state = None;
    let groups = GroupFields::new(fields());
    for (i, e) in events.iter().enumerate() {
        agent::step_grouped(&mut state, e, i as i64 + 1, &groups);
    }
    state.unwrap()
}

#[test]
fn an_agent_matches_since_the_latest_of_its_criteria() {
    let rule = spec(
        json!({"name": "x", "kind": "agent_state", "activity_codes": [36],
                           "work_item_state": "accepted", "for_secs": 60}),
    )
    .unwrap();
    let status = |at, code| {
        event(
            3,
            at,
            json!({"ActivityCode": code, "AvailabilityCode": 1, "ActivityName": "x"}),
        )
    };
    let signed_in = event(1, "20261205100000", json!({"Team": "Sales"}));
    let busy = status("20261205100100", 36);
    let accepted = event(5, "20261205100200", json!({}));
    assert_eq!(
        rule.agent_since(&fold(&[signed_in.clone(), busy.clone()])),
        None
    );
    let a = fold(&[signed_in.clone(), busy.clone(), accepted.clone()]);
    assert_eq!(
        rule.agent_since(&a),
        Some(Timestamp::parse("20261205100200").unwrap().to_unix_ms())
    );
    let other = status("20261205100300", 16);
    assert_eq!(
        rule.agent_since(&fold(&[signed_in, busy, accepted, other])),
        None
    );
    let out = event(2, "20261205100400", json!({"ExitCode": 0}));
    assert_eq!(rule.agent_since(&fold(&[out])), None);
}

#[test]
fn a_group_tally_moves_agents_between_groups() {
    let rule = spec(json!({"name": "x", "kind": "group_count", "by": "Team",
                           "availability_codes": [16], "op": "lt", "threshold": 2, "for_secs": 30}))
    .unwrap();
    let available = json!({"ActivityCode": 16, "AvailabilityCode": 16, "ActivityName": "A"});
    let mut in_sales = fold(&[
        event(1, "20261205100000", json!({"Team": "Sales"})),
        event(3, "20261205100100", available.clone()),
    ]);
    let mut tally = GroupTally::new(&rule, [&in_sales]);
    assert_eq!(tally.count("Sales"), 1);
    assert!(rule.holds(tally.count("Sales")));
    // To Support: out of Sales, into Support.
    in_sales.groups.insert("Team".into(), "Support".into());
    let changed = tally.update(&rule, &in_sales);
    assert_eq!(
        changed.into_iter().collect::<Vec<_>>(),
        ["Sales", "Support"]
    );
    assert_eq!((tally.count("Sales"), tally.count("Support")), (0, 1));
    // Signed out: counts nowhere; the group stays seen.
    in_sales.signed_in = false;
    tally.update(&rule, &in_sales);
    assert_eq!(tally.groups().collect::<Vec<_>>().len(), 2);
    assert_eq!(tally.count("Support"), 0);
}

#[test]
fn derived_ids_differ_by_code_and_episode_and_repeat() {
    let a = derived_id("rule_1", 1, "ann", 7, code::RULE_FIRED);
    assert_eq!(a, derived_id("rule_1", 1, "ann", 7, code::RULE_FIRED));
    assert_ne!(a, derived_id("rule_1", 1, "ann", 7, code::RULE_CLEARED));
    assert_ne!(a, derived_id("rule_1", 1, "ann", 8, code::RULE_FIRED));
    assert_ne!(a, derived_id("rule_1", 2, "ann", 7, code::RULE_FIRED));
    assert_eq!(a.get_version_num(), 5);
}
