//! The dispatcher driven by hand: a store on fresh data, a dispatcher whose clock the test moves,
//! and a sender allowed to reach loopback. Tests of time-dependent behaviour (retry delays,
//! `Retry-After`, rate limits, leases) step it and move the clock instead of waiting.

use std::time::Duration;

use serde_json::Value;
use switchboard::clock::Clock;
use switchboard::delivery::guard::Guard;
use switchboard::delivery::{Dispatcher, Sender};
use switchboard::event::{Catalog, parse_batch};
use switchboard::store::{Accepted, DeliveryRecord, Store, SubscriptionRecord, now_millis};
use switchboard::subscription::SubscriptionSpec;

use crate::support::db::TestData;

/// Leases as `serve` computes them for the default 10 s timeout.
pub const LEASE: Duration = Duration::from_secs(25);

pub struct Stepper {
    pub store: Store,
    pub dispatcher: Dispatcher,
    pub clock: Clock,
    /// Kept so the data lives as long as the stepper.
    _data: TestData,
}

impl Stepper {
    pub async fn new() -> Self {
        let data = TestData::new().await;
        let path = data.dir.path().join("switchboard.db");
        let store = Store::open(&data.database_url(), &path)
            .await
            .expect("store opens");
        // An hour ahead of the system clock, which stamps new deliveries due: they are due at
        // once, and only the retries this clock schedules wait for it to move.
        let clock = Clock::manual(now_millis() + 3_600_000);
        let guard = Guard {
            allow_loopback: true,
            allow_networks: Vec::new(),
        };
        let sender = Sender::new(guard, Duration::from_secs(10))
            .expect("client")
            .with_clock(clock.clone());
        let dispatcher = Dispatcher::new(store.clone(), sender, LEASE);
        Stepper {
            store,
            dispatcher,
            clock,
            _data: data,
        }
    }

    /// Creates a subscription of tenant `default` from a body as the API takes it.
    pub async fn subscribe(&self, body: Value) -> SubscriptionRecord {
        let mut spec: SubscriptionSpec = serde_json::from_value(body).expect("a valid body");
        spec.validate().expect("a valid subscription");
        spec.secret
            .get_or_insert_with(switchboard::delivery::signing::Secret::generate);
        let now = now_millis();
        let rec = SubscriptionRecord {
            id: format!("sub_{}", uuid::Uuid::new_v4().simple()),
            tenant_id: "default".into(),
            spec,
            disabled_reason: None,
            old_secret: None,
            old_secret_expires_at: None,
            created_at: now,
            updated_at: now,
        };
        self.store.create_subscription(&rec).await.expect("created");
        rec
    }

    /// Ingests events (one JSON event or an array) for tenant `default`.
    pub async fn publish(&self, events: &Value) -> Vec<Accepted> {
        let body = serde_json::to_vec(events).unwrap();
        let events = parse_batch(&body, &Catalog::builtin()).expect("valid events");
        self.store
            .ingest("default", events)
            .await
            .expect("accepted")
    }

    /// One dispatcher step, its attempts awaited and recorded; how many were made.
    pub async fn step(&mut self) -> usize {
        self.dispatcher.run_once().await.expect("a dispatcher step")
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    pub async fn deliveries(&self, sub: &SubscriptionRecord) -> Vec<DeliveryRecord> {
        self.store
            .list_deliveries("default", &sub.id, None, 0, 1000)
            .await
            .unwrap()
    }
}
