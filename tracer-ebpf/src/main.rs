//! tracer's kernel programs.
//!
//! * tc classifiers (`tc_*`), one per attachment role, ingress and egress: a fast path that
//!   returns at once for packets of no interest; DNS (UDP/TCP 53) packets are reported with a
//!   bounded copy of the message header and question; for flows, only the first packets
//!   (TCP SYN/SYN-ACK/RST, first UDP packet of a tuple, ICMP errors) are reported and the rest is
//!   aggregated in `FLOWS`.
//! * `kfree_skb`: a tp_btf program on skb:kfree_skb that reports drops of packets of interest.
//!
//! Every program counts what it saw, emitted and lost in `COUNTERS`.
#![no_std]
#![no_main]

mod drop;
mod parse;
mod tc;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: eBPF programs cannot panic; the verifier rejects any path that would reach here.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
