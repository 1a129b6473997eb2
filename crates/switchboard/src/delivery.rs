//! Delivery, in three rooms: the [`Dispatcher`] (which due deliveries to attempt, and when),
//! the [`attempt`] (one attempt through a subscription's [`Destination`], and the outcome
//! policy), and the [`Sender`] (the one guarded HTTP client and the HTTP destination). Beside
//! them: the address guard, the retry schedule and the signatures.
//!
//! A destination is one implementation of [`Destination`]: it carries a signed message and
//! says what became of it. Every caller that attempts a delivery — the dispatcher, the API's
//! Test action — goes through [`attempt()`], so each attempt is logged and counted alike.

pub mod amqp;
pub mod attempt;
mod broker;
pub mod dispatcher;
pub mod guard;
pub mod nats;
pub mod oauth;
pub mod retry;
pub mod sender;
pub mod signing;

pub use attempt::{AttemptResult, Destination, Target, attempt, attempt_batch, decide, expired};
pub use dispatcher::{Dispatcher, heartbeat};
pub use sender::{Sender, USER_AGENT_VALUE};
