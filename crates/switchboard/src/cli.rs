//! Tools in the same binary besides `serve`.

pub mod backlog;
pub mod bench;
pub mod listen;
pub mod simulate;
