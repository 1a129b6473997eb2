//! Shared test harness.

pub mod app;
pub mod db;
pub mod process;
pub mod receiver;
pub mod sse;
pub mod stepper;

pub use app::TestApp;
pub use receiver::TestReceiver;
