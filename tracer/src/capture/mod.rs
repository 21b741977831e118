//! Pipeline stage 1, capture: everything that touches the kernel's side of the node.
//!
//! * [`load`]: loads the eBPF object (tc classifiers, the skb:kfree_skb drop program), attaches
//!   programs, reads the ring buffer and the per-CPU counters.
//! * [`attach`]: the attach manager — discovers interfaces over netlink, classifies them
//!   ([`iface`]) and keeps the right programs attached as pods come and go.
//! * [`ledger`]: the kernel's delivery ledger, memory-mapped (what a peer tracer asks about).
//! * [`netns`]: which network namespaces are this node's (its own and its pods').
//! * [`kernel`]: facts read from the running kernel (BTF drop reasons and struct offsets,
//!   kallsyms).
//! * [`signals`]: node-level counters no packet event shows (conntrack, ENA allowances).

pub mod attach;
pub mod hooks;
pub mod iface;
pub mod kernel;
pub mod ledger;
pub mod load;
pub mod mapped;
pub mod netns;
pub mod signals;
pub mod slots;

#[cfg(test)]
mod kernel_tests;

pub use load::{Capture, Counters, TcMode, TcProgram};
