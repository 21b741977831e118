//! Developer tools shipped only with the `devtools` feature (`cargo xtask bench` builds it):
//! the per-packet benchmark of the kernel programs ([`bench`]) and the hand-built packets it
//! and the in-kernel parser tests use ([`packets`]).

#[cfg(feature = "devtools")]
pub mod bench;
pub mod packets;
#[cfg(feature = "devtools")]
pub mod stub;
