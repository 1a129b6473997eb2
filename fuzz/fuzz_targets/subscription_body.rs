//! A subscription body, as `POST …/subscriptions` reads it and as `PATCH` lays it over a stored
//! one: whatever the JSON, the server answers (never panics); what it accepts stores and reads
//! back the same; what it refuses names every field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use switchboard::subscription::{SubscriptionSpec, merge_patch};

fn check(value: Value) {
    match SubscriptionSpec::from_value(value) {
        Ok(spec) => {
            let stored = serde_json::to_value(&spec).expect("a subscription serializes");
            let back = SubscriptionSpec::from_value(stored.clone())
                .unwrap_or_else(|e| panic!("a stored subscription reads back: {e:?} {stored}"));
            assert_eq!(back, spec);
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            assert!(
                errors
                    .iter()
                    .all(|e| !e.field.is_empty() && !e.message.is_empty())
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    // As a new subscription…
    check(value.clone());
    // …and as a patch over a valid one.
    let mut current = json!({
        "url": "https://crm.example.com/hooks", "filter": {"events": [{"category": 1}]},
        "secret": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD", "ordering": "per_agent"
    });
    merge_patch(&mut current, value);
    check(current);
});
