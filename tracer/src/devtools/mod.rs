//! Developer tools shipped only with the `devtools` feature (`cargo xtask bench` builds it):
//! the per-packet benchmark of the kernel programs ([`bench`]) and the hand-built packets it
//! and the in-kernel parser tests use ([`packets`]); under `cfg(test)`, the property and fuzz
//! tests of every parser of kernel, network and API data (`fuzz`, run by `cargo xtask fuzz`).

#[cfg(feature = "devtools")]
pub mod bench;
#[cfg(test)]
pub mod fuzz;
pub mod packets;
#[cfg(feature = "devtools")]
pub mod stub;
