//! Tools in the same binary besides `serve`.

pub mod backlog;
pub mod bench;
pub mod client;
pub mod commands;
pub mod listen;
pub mod simulate;
