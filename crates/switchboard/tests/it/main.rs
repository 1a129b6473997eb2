//! Integration tests: the real server on port 0 with a fresh data dir, spoken to over HTTP.

mod agents;
mod auth;
mod bench;
mod catalog;
mod client;
mod cluster;
mod crash;
mod delivery;
mod filters;
mod ingest;
mod limits;
mod listen;
mod log;
mod metrics;
mod openapi;
mod pg_faults;
mod readiness;
mod restart;
mod retention;
mod semantics;
mod simulate;
mod stepped;
mod streams;
mod support;
mod system_events;
mod upgrades;
