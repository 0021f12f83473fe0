//! The parts of `sotto bench` (tools/src/cmd_bench.rs drives them).

// Tests assert by unwrapping; the code itself may not.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod backends;
pub mod constrained;
pub mod llama_cpp;
pub mod machine;
pub mod report;
pub mod runner;
pub mod speculative;
pub mod stats;
pub mod sweep;
