//! Library side of `cargo xtask`: the lab used by the demo, the integration tests and benchmarks.

pub mod apiserver;
pub mod bench;
pub mod demo;
pub mod lab;
pub mod tracer;
