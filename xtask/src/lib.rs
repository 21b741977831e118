//! Library side of `cargo xtask`: the lab used by the demo, the integration tests and benchmarks.

pub mod lab;
pub mod tracer;
