//! Library side of `cargo xtask`: the lab used by the demo, the integration tests and benchmarks,
//! and the container image (built by `cargo xtask image`, run by the image test).

pub mod apiserver;
pub mod bench;
pub mod demo;
pub mod egress_load;
pub mod image;
pub mod lab;
pub mod pod;
pub mod privilege;
pub mod profile;
pub mod tracer;
