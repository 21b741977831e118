//! Library target of the eBPF crate: empty. It exists so `tracer`'s build script can depend on
//! the package and be rebuilt when it changes; the programs are in the `tracer` binary target.
#![no_std]
