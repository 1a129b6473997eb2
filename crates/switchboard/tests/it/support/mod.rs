//! Shared test harness.

pub mod app;

pub use app::TestApp;
