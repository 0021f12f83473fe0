//! The parts of `sotto bench` (tools/src/cmd_bench.rs drives them).

pub mod backends;
pub mod llama_cpp;
pub mod machine;
pub mod report;
pub mod runner;
pub mod stats;
pub mod sweep;
