//! The dispatcher driven by hand: a store on fresh data, a dispatcher whose clock the test moves,
//! and a sender allowed to reach loopback. Tests of time-dependent behaviour (retry delays,
//! `Retry-After`, rate limits, leases) step it and move the clock instead of waiting.

use std::time::Duration;

use serde_json::Value;
use switchboard::clock::{Clock, now_millis};
use switchboard::delivery::guard::Guard;
use switchboard::delivery::{Dispatcher, Sender};
use switchboard::event::{Catalog, parse_batch};
use switchboard::store::{Accepted, DeliveryRecord, Options, Store, SubscriptionRecord};
use switchboard::subscription::SubscriptionSpec;

use crate::support::db::{OldDb, TestData};

/// Leases as `serve` computes them for the default 10 s timeout.
pub const LEASE: Duration = Duration::from_secs(25);

pub struct Stepper {
    pub store: Store,
    pub dispatcher: Dispatcher,
    /// The store's and the dispatcher's.
    pub clock: Clock,
    options: Options,
    data: TestData,
}

/// A store on `data` with `options`, and a dispatcher on the same clock.
async fn open(data: &TestData, options: &Options) -> (Store, Dispatcher) {
    let path = data.dir.path().join("switchboard.db");
    let store = Store::open_with(&data.database_url(), &path, options.clone())
        .await
        .expect("store opens");
    let guard = Guard {
        allow_loopback: true,
        allow_networks: Vec::new(),
    };
    let sender = Sender::new(guard, Duration::from_secs(10))
        .expect("client")
        .with_clock(options.clock.clone());
    let dispatcher = Dispatcher::new(store.clone(), sender, LEASE);
    (store, dispatcher)
}

impl Stepper {
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// A stepper whose store is opened with `adjust`ed options.
    pub async fn with(adjust: impl FnOnce(&mut Options)) -> Self {
        let data = TestData::new().await;
        let clock = Clock::manual(now_millis());
        let mut options = Options {
            clock: clock.clone(),
            ..Options::default()
        };
        adjust(&mut options);
        let (store, dispatcher) = open(&data, &options).await;
        Stepper {
            store,
            dispatcher,
            clock,
            options,
            data,
        }
    }

    /// The test's database (for raw statements through `OldDb`).
    pub fn data(&self) -> &TestData {
        &self.data
    }

    /// Closes the store and opens it again on the same data, with a new dispatcher: a restart.
    pub async fn restart(&mut self) {
        self.store.close().await;
        (self.store, self.dispatcher) = open(&self.data, &self.options).await;
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
        self.store
            .create_subscription(&rec, u32::MAX)
            .await
            .expect("created");
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

    pub async fn subscription(&self, sub: &SubscriptionRecord) -> SubscriptionRecord {
        self.store
            .get_subscription("default", &sub.id)
            .await
            .unwrap()
            .expect("the subscription")
            .expect("a subscription that decodes")
    }

    /// A connection of the test's own to the store's database.
    pub async fn db(&self) -> OldDb {
        OldDb::latest(&self.data).await
    }

    pub async fn deliveries(&self, sub: &SubscriptionRecord) -> Vec<DeliveryRecord> {
        self.store
            .list_deliveries("default", &sub.id, None, 0, 1000)
            .await
            .unwrap()
    }
}
