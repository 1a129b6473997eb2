//! Tools in the same binary besides `serve`.

pub mod bench;
pub mod listen;
