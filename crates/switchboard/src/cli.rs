//! Tools in the same binary besides `serve`.

pub mod listen;
