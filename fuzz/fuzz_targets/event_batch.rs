//! The body of `POST /v1/tenants/{t}/events`, as the server parses it: whatever the bytes, the
//! parser answers (never panics); what it accepts is 1 to 1000 events that store and read back
//! unchanged and are identical re-posts of themselves; what it refuses names every field.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use switchboard::event::{self, Catalog, Event, ParseError, Timestamp};

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(Catalog::builtin)
}

fuzz_target!(|data: &[u8]| {
    match event::parse_batch(data, catalog()) {
        Ok(events) => {
            assert!((1..=1000).contains(&events.len()));
            for new in events {
                let stored = new.complete(Timestamp::from_unix_ms(1_764_000_000_000));
                let text = stored.to_canonical_json();
                let back = Event::from_canonical_json(&text).expect("a stored event reads back");
                assert_eq!(back, stored, "{text}");
                assert!(
                    new.same_as(&back),
                    "an event is a duplicate of itself: {text}"
                );
                // What is delivered is a valid event too.
                let again = event::parse_batch(text.as_bytes(), catalog())
                    .expect("a stored event is valid when posted again");
                assert!(again[0].same_as(&stored), "{text}");
            }
        }
        Err(ParseError::Invalid(errors)) => {
            assert!(!errors.is_empty());
            assert!(
                errors
                    .iter()
                    .all(|e| !e.field.is_empty() && !e.message.is_empty())
            );
        }
        Err(ParseError::Malformed(_)) => {}
    }
});
