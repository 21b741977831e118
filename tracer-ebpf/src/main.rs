//! tracer's kernel programs.
//!
//! * tc classifiers (`tc_*`, `tc.rs`), one per interface role and direction: a fast path that
//!   returns at once for packets of no interest; UDP DNS goes through the kernel's DNS table
//!   (`dns.rs`), which pairs queries with answers and summarizes healthy ones; everything else
//!   of interest (DNS over TCP, TCP control segments, ICMP errors, first UDP packets of egress
//!   tuples and their first replies) is reported packet by packet.
//! * `kfree_skb` (`drop.rs`): a tp_btf program on skb:kfree_skb that reports drops of packets of
//!   interest in this node's namespaces.
//!
//! Every program counts what it saw, emitted and lost in `COUNTERS`, and notes the time of any
//! loss in `LOSS` (`maps.rs`).
#![no_std]
#![no_main]
// Atomic adds on map values: the BPF target has no atomic read-modify-write in core::sync.
// The crate is built with RUSTC_BOOTSTRAP=1 (see tracer/build.rs) for -Z build-std anyway.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod dns;
mod drop;
mod maps;
mod parse;
mod tc;

tracer_ebpf::program_runtime!();
