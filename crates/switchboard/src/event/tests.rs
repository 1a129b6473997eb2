//! Table-driven tests of every ingest rule in DESIGN §2 and EVENTS.md.

use serde_json::{Value, json};

use super::*;

fn agent(code: u32, extra: Value) -> Value {
    let mut fields = json!({
        "SessionId": "S-1", "SessionType": "CCA", "Username": "jdoe", "PhoneNo": "+15551230001"
    });
    for (k, v) in extra.as_object().unwrap() {
        fields[k] = v.clone();
    }
    json!({"Id": "0f8fad5b-d9cb-469f-a165-70867728950e", "CreationDateUtc": "20261123184603",
           "Category": 1, "Code": code, "AdditionalFields": fields})
}

/// Validates `event` and compares the (field, message) pairs, or success.
fn check(event: Value, expect: &[(&str, &str)]) {
    let got = match validate(event.clone(), &Catalog::builtin(), Some(0)) {
        Ok(_) => vec![],
        Err(errors) => errors.into_iter().map(|e| (e.field, e.message)).collect(),
    };
    let want: Vec<(String, String)> = expect
        .iter()
        .map(|(f, m)| (f.to_string(), m.to_string()))
        .collect();
    assert_eq!(got, want, "event {event}");
}

fn with(mut event: Value, key: &str, value: Value) -> Value {
    event[key] = value;
    event
}

fn without(mut event: Value, key: &str) -> Value {
    event.as_object_mut().unwrap().remove(key);
    event
}

fn without_field(mut event: Value, key: &str) -> Value {
    event["AdditionalFields"]
        .as_object_mut()
        .unwrap()
        .remove(key);
    event
}

#[test]
fn valid_agent_events() {
    check(agent(1, json!({})), &[]);
    check(agent(2, json!({"ExitCode": 0})), &[]);
    check(
        agent(
            3,
            json!({"ActivityCode": 16, "AvailabilityCode": 1, "ActivityName": ""}),
        ),
        &[],
    );
    for code in [4, 5, 6, 8] {
        check(agent(code, json!({"WorkItemId": "W-1"})), &[]);
    }
}

#[test]
fn id_rules() {
    let e = agent(1, json!({}));
    check(without(e.clone(), "Id"), &[]);
    check(
        with(
            e.clone(),
            "Id",
            json!("0F8FAD5B-D9CB-469F-A165-70867728950E"),
        ),
        &[],
    );
    let bad = "must be a GUID, 8-4-4-4-12 hexadecimal digits";
    for id in [
        "0f8fad5bd9cb469fa16570867728950e",
        "{0f8fad5b-d9cb-469f-a165-70867728950e}",
        "urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e",
        "0f8fad5b-d9cb-469f-a165-70867728950",
        "0f8fad5b-d9cb-469f-a165-70867728950g",
        "0f8fad5b+d9cb-469f-a165-70867728950e",
        "",
    ] {
        check(with(e.clone(), "Id", json!(id)), &[("Id", bad)]);
    }
    check(
        with(e.clone(), "Id", json!(42)),
        &[("Id", "must be a string holding a GUID")],
    );
    check(
        with(e, "Id", Value::Null),
        &[("Id", "must be a string holding a GUID")],
    );
}

#[test]
fn id_is_stored_lower_case() {
    let e = with(
        agent(1, json!({})),
        "Id",
        json!("0F8FAD5B-D9CB-469F-A165-70867728950E"),
    );
    let ev = validate(e, &Catalog::builtin(), None).unwrap();
    assert_eq!(ev.id.to_string(), "0f8fad5b-d9cb-469f-a165-70867728950e");
    assert!(ev.id_given);
    let generated = validate(
        without(agent(1, json!({})), "Id"),
        &Catalog::builtin(),
        None,
    );
    let generated = generated.unwrap();
    assert!(!generated.id_given);
    assert_eq!(generated.id.get_version_num(), 4);
}

#[test]
fn creation_date_rules() {
    let e = agent(1, json!({}));
    check(without(e.clone(), "CreationDateUtc"), &[]);
    let f = "CreationDateUtc";
    check(
        with(e.clone(), f, json!("20261301000000")),
        &[(f, "month must be 01 to 12")],
    );
    check(
        with(e.clone(), f, json!("20260230000000")),
        &[(f, "day does not exist in that month")],
    );
    check(
        with(e.clone(), f, json!("2026-11-23")),
        &[(f, "must be exactly 14 digits, yyyyMMddHHmmss")],
    );
    check(
        with(e, f, json!(20261123184603u64)),
        &[(f, "must be a string of 14 digits, yyyyMMddHHmmss")],
    );
}

#[test]
fn category_rules() {
    let e = agent(1, json!({}));
    let known = "known: 1 Agent, 2 IVR, 3 Email, 4 Chat";
    check(
        with(e.clone(), "Category", json!(0)),
        &[(
            "Category",
            "category 0 is reserved for Switchboard's System events",
        )],
    );
    check(
        with(e.clone(), "Category", json!(5)),
        &[(
            "Category",
            "category 5 is reserved for Switchboard's derived events (rules)",
        )],
    );
    for n in [255, 256, -1] {
        let msg = format!("unknown category {n}; {known}");
        check(with(e.clone(), "Category", json!(n)), &[("Category", &msg)]);
    }
    check(
        with(e.clone(), "Category", json!("1")),
        &[("Category", "must be an integer, got a string")],
    );
    check(
        with(e.clone(), "Category", json!(1.5)),
        &[("Category", "must be an integer, got 1.5")],
    );
    check(without(e, "Category"), &[("Category", "is required")]);
}

#[test]
fn code_rules() {
    let known = "known: 1 SignedIn, 2 SignedOut, 3 StatusChanged, 4 ReceivingWorkItem, \
                 5 AcceptedWorkItem, 6 DeclinedWorkItem, 8 ReleasedWorkItem";
    for code in [0, 7, 9, 100] {
        let msg = format!("unknown Agent code {code}; {known}");
        check(agent(code, json!({})), &[("Code", &msg)]);
    }
    let e = agent(1, json!({}));
    check(
        with(e.clone(), "Code", json!("1")),
        &[("Code", "must be an integer, got a string")],
    );
    check(
        with(e.clone(), "Code", json!(-1)),
        &[("Code", "must be a non-negative integer up to 4294967295")],
    );
    check(without(e, "Code"), &[("Code", "is required")]);
}

#[test]
fn open_categories_take_any_code_and_fields() {
    for category in [2, 3, 4] {
        for code in [0, 1, 7, 99_999] {
            let e =
                json!({"Category": category, "Code": code, "AdditionalFields": {"Anything": [1]}});
            check(e, &[]);
        }
        check(json!({"Category": category, "Code": 1}), &[]);
        check(
            json!({"Category": category, "Code": -3}),
            &[("Code", "must be a non-negative integer up to 4294967295")],
        );
    }
}

#[test]
fn agent_common_fields() {
    for f in ["SessionId", "SessionType", "Username", "PhoneNo"] {
        let name = format!("AdditionalFields.{f}");
        let e = agent(1, json!({}));
        check(without_field(e.clone(), f), &[(&name, "is required")]);
        check(agent(1, json!({f: ""})), &[(&name, "must not be empty")]);
        check(
            agent(1, json!({f: 5})),
            &[(&name, "must be a non-empty string")],
        );
        check(
            agent(1, json!({f: null})),
            &[(&name, "must be a non-empty string")],
        );
    }
    let all_missing: Vec<_> = ["SessionId", "SessionType", "Username", "PhoneNo"]
        .iter()
        .map(|f| format!("AdditionalFields.{f}"))
        .collect();
    let expect: Vec<(&str, &str)> = all_missing
        .iter()
        .map(|f| (f.as_str(), "is required"))
        .collect();
    check(json!({"Category": 1, "Code": 1}), &expect);
}

#[test]
fn signed_out_and_status_changed_fields() {
    let f = "AdditionalFields.ExitCode";
    check(agent(2, json!({})), &[(f, "is required")]);
    check(
        agent(2, json!({"ExitCode": "3"})),
        &[(f, "must be an integer")],
    );
    check(
        agent(2, json!({"ExitCode": 3.5})),
        &[(f, "must be an integer")],
    );
    let ok = json!({"ActivityCode": 36, "AvailabilityCode": 0, "ActivityName": "Training"});
    check(agent(3, ok.clone()), &[]);
    for (key, bad, msg) in [
        ("ActivityCode", json!("16"), "must be an integer"),
        ("AvailabilityCode", json!(true), "must be an integer"),
        ("ActivityName", json!(3), "must be a string"),
        ("ActivityName", Value::Null, "must be a string"),
    ] {
        let mut extra = ok.clone();
        extra[key] = bad;
        check(
            agent(3, extra),
            &[(&format!("AdditionalFields.{key}"), msg)],
        );
    }
    let e = without_field(agent(3, ok), "ActivityName");
    check(e, &[("AdditionalFields.ActivityName", "is required")]);
}

#[test]
fn unknown_fields() {
    let e = agent(1, json!({"Custom": {"deep": [1, 2]}}));
    check(e, &[]);
    let typo = with(
        without(agent(1, json!({})), "Category"),
        "Catgory",
        json!(1),
    );
    let msg = "unknown field `Catgory`; expected Id, CreationDateUtc, Category, Code, \
               AdditionalFields";
    check(typo, &[("Catgory", msg), ("Category", "is required")]);
    let case = with(agent(1, json!({})), "code", json!(1));
    let msg = "unknown field `code` (did you mean Code?); expected Id, CreationDateUtc, \
               Category, Code, AdditionalFields";
    check(case, &[("code", msg)]);
    // A field with an empty name (found by fuzzing: it was named "").
    let msg = "unknown field ``; expected Id, CreationDateUtc, Category, Code, AdditionalFields";
    check(with(agent(1, json!({})), "", json!(1)), &[("event", msg)]);
    check(
        with(agent(1, json!({})), "AdditionalFields", json!([])),
        &[("AdditionalFields", "must be a JSON object")],
    );
}

#[test]
fn batch_shapes() {
    let cat = Catalog::builtin();
    let one = agent(1, json!({})).to_string();
    assert_eq!(parse_batch(one.as_bytes(), &cat).unwrap().len(), 1);
    let many = Value::Array(vec![without(agent(1, json!({})), "Id"); 1000]).to_string();
    assert_eq!(parse_batch(many.as_bytes(), &cat).unwrap().len(), 1000);
    let too_many = Value::Array(vec![agent(1, json!({})); 1001]).to_string();
    let invalid = |body: &str| match parse_batch(body.as_bytes(), &cat) {
        Err(ParseError::Invalid(e)) => e,
        other => panic!("expected invalid, got {other:?}"),
    };
    assert_eq!(
        invalid(&too_many)[0].message,
        "holds 1001 events; at most 1000 per request"
    );
    assert_eq!(invalid("[]")[0].message, "must hold at least one event");
    assert_eq!(invalid("\"x\"")[0].field, "body");
    assert!(matches!(
        parse_batch(b"{", &cat),
        Err(ParseError::Malformed(_))
    ));
    // Errors carry the array index; a single object has none.
    let bad = json!([agent(1, json!({})), {"Category": 9, "Code": 1}]).to_string();
    assert_eq!(
        invalid(&bad),
        vec![FieldError::new(
            Some(1),
            "Category",
            "unknown category 9; known: 1 Agent, 2 IVR, 3 Email, 4 Chat"
        )]
    );
    assert_eq!(invalid(r#"{"Category": 9, "Code": 1}"#)[0].index, None);
}

#[test]
fn canonical_json_order_and_round_trip() {
    let input = json!({"AdditionalFields": {"Username": "jdoe", "SessionId": "S", "PhoneNo": "1",
        "SessionType": "CCA", "Zeta": 1, "Alpha": 2}, "Code": 1, "Category": 1,
        "CreationDateUtc": "20261123184603", "Id": "0F8FAD5B-D9CB-469F-A165-70867728950E"});
    let ev = validate(input, &Catalog::builtin(), None).unwrap();
    let stored = ev.complete(Timestamp::now());
    let json = stored.to_canonical_json();
    assert_eq!(
        json,
        r#"{"Id":"0f8fad5b-d9cb-469f-a165-70867728950e","CreationDateUtc":"20261123184603","Category":1,"Code":1,"AdditionalFields":{"Username":"jdoe","SessionId":"S","PhoneNo":"1","SessionType":"CCA","Zeta":1,"Alpha":2}}"#
    );
    assert_eq!(Event::from_canonical_json(&json).unwrap(), stored);
    assert_eq!(stored.username(), Some("jdoe"));
}

#[test]
fn identical_repost() {
    let cat = Catalog::builtin();
    let original = validate(agent(1, json!({})), &cat, None).unwrap();
    let stored = original.complete(Timestamp::now());
    assert!(original.same_as(&stored));
    let undated = validate(without(agent(1, json!({})), "CreationDateUtc"), &cat, None).unwrap();
    assert!(
        undated.same_as(&stored),
        "absent date is taken from the stored event"
    );
    let redated = with(
        agent(1, json!({})),
        "CreationDateUtc",
        json!("20261123184604"),
    );
    assert!(!validate(redated, &cat, None).unwrap().same_as(&stored));
    let other_field = validate(agent(1, json!({"Extra": 1})), &cat, None).unwrap();
    assert!(!other_field.same_as(&stored));
}

#[test]
fn a_repost_of_an_erased_event_is_the_same_event() {
    let cat = Catalog::builtin();
    let original = validate(agent(1, json!({})), &cat, None).unwrap();
    let mut stored = original.complete(Timestamp::now());
    stored.fields.insert("PhoneNo".into(), json!("[erased]"));
    assert!(
        original.same_as(&stored),
        "an erased field matches the value"
    );
    let changed = validate(agent(1, json!({"Extra": 1})), &cat, None).unwrap();
    assert!(!changed.same_as(&stored), "another field still differs");
    let mut other = original.clone();
    other.fields.insert("SessionType".into(), json!("TelAgent"));
    assert!(!other.same_as(&stored), "a field not erased still counts");
    other.fields.remove("PhoneNo");
    other.fields.insert("SessionType".into(), json!("CCA"));
    assert!(
        !other.same_as(&stored),
        "an erased field must still be there"
    );
}
