//! `tracer bench`: cost per packet of each tc program, measured in the kernel with
//! BPF_PROG_TEST_RUN, against the empty program measured in the same run.
//!
//! The ring buffer is drained between batches so DNS cases measure the real emit path (a full
//! ring buffer would make emitting look cheap). Figures vary between runs and machines; the
//! ratios to the empty program are the comparable numbers.

use std::time::Duration;

use anyhow::Context as _;
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};

use crate::capture::{Capture, TcProgram};

/// Packets per BPF_PROG_TEST_RUN call (below what fills the ring buffer).
const BATCH: u32 = 4_000;

/// One benchmark case.
struct Case {
    name: &'static str,
    prog: TcProgram,
    packet: Vec<u8>,
}

fn eth_ipv4(proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    let total = 20 + l4.len();
    p.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        proto,
        0,
        0,
    ]);
    p.extend_from_slice(&[198, 18, 1, 21, 198, 19, 0, 10]);
    p.extend_from_slice(l4);
    p
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = Vec::with_capacity(len);
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

fn dns_message(response: bool) -> Vec<u8> {
    let mut m = vec![
        0x12,
        0x34,
        if response { 0x81 } else { 0x01 },
        if response { 0x80 } else { 0 },
    ];
    m.extend_from_slice(&[0, 1, 0, u8::from(response), 0, 0, 0, 0]);
    for label in ["kubernetes", "default", "svc", "cluster", "local"] {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    if response {
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 198, 19, 0, 1]);
    }
    m
}

fn cases() -> Vec<Case> {
    let payload = [0x5a; 64];
    vec![
        Case {
            name: "empty program",
            prog: TcProgram::Empty,
            packet: eth_ipv4(6, &tcp(40000, 443, 0x18, &payload)),
        },
        Case {
            name: "non-DNS TCP (data)",
            prog: TcProgram::In,
            packet: eth_ipv4(6, &tcp(40000, 443, 0x18, &payload)),
        },
        Case {
            name: "non-DNS UDP",
            prog: TcProgram::In,
            packet: eth_ipv4(17, &udp(40000, 443, &payload)),
        },
        Case {
            name: "non-DNS UDP, tracked flow",
            prog: TcProgram::InTrack,
            packet: eth_ipv4(17, &udp(40001, 443, &payload)),
        },
        Case {
            name: "DNS query (UDP)",
            prog: TcProgram::In,
            packet: eth_ipv4(17, &udp(40000, 53, &dns_message(false))),
        },
        Case {
            name: "DNS response (UDP)",
            prog: TcProgram::Out,
            packet: eth_ipv4(17, &udp(53, 40000, &dns_message(true))),
        },
        Case {
            name: "garbage",
            prog: TcProgram::In,
            packet: (0..60u8).map(|i| i.wrapping_mul(97)).collect(),
        },
    ]
}

/// Runs every case for `packets` packets each; prints a table.
pub fn main(packets: u32) -> anyhow::Result<()> {
    let mut capture = Capture::load(None).context("loading the kernel programs (are you root?)")?;
    let mut ring = capture.take_ring()?;
    let mut rows = Vec::new();
    for case in cases() {
        let prog: &SchedClassifier = capture
            .ebpf_mut()
            .program(case.prog.name())
            .context("program missing")?
            .try_into()
            .context("not a classifier")?;
        let mut total = Duration::ZERO;
        let mut done = 0u32;
        while done < packets {
            let n = BATCH.min(packets - done);
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(&case.packet);
            opts.repeat = n;
            let r = prog
                .test_run(opts)
                .with_context(|| format!("test run of {}", case.name))?;
            // The kernel reports the mean duration per repetition.
            total += r.duration * n;
            done += n;
            while ring.next().is_some() {}
        }
        let ns = total.as_nanos() as f64 / f64::from(packets);
        rows.push((case.name, case.prog.name(), ns));
    }
    let counters = capture.counters()?;
    let empty = rows.first().map(|r| r.2).unwrap_or(1.0).max(0.001);
    println!("BPF_PROG_TEST_RUN, {packets} packets per case (ring buffer drained every {BATCH})");
    println!(
        "{:<28} {:<14} {:>10} {:>12} {:>10}",
        "case", "program", "ns/packet", "vs empty", "delta ns"
    );
    for (name, prog, ns) in &rows {
        println!(
            "{name:<28} {prog:<14} {ns:>10.1} {:>11.2}x {:>+10.1}",
            ns / empty,
            ns - empty
        );
    }
    println!(
        "kernel counters: emitted {} ring-buffer full {} parse errors {} aggregated {}",
        counters.tc_emitted,
        counters.tc_ringbuf_full,
        counters.tc_parse_error,
        counters.flow_aggregated
    );
    Ok(())
}
