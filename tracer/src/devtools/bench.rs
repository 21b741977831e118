//! `tracer bench`: cost per packet of each tc program, measured in the kernel with
//! BPF_PROG_TEST_RUN, against the empty program measured in the same run.
//!
//! The ring buffer is drained between batches so DNS cases measure the real emit path (a full
//! ring buffer would make emitting look cheap). Figures vary between runs and machines; the
//! ratios to the empty program are the comparable numbers.

use std::time::Duration;

use anyhow::Context as _;
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};

use crate::{
    capture::{Capture, TcProgram},
    devtools::packets::{dns_message, eth_ipv4, reply_ipv4, tcp, udp},
};

/// Packets per BPF_PROG_TEST_RUN call (below what fills the ring buffer).
const BATCH: u32 = 4_000;

/// One benchmark case.
struct Case {
    name: &'static str,
    prog: TcProgram,
    /// The same packet repeated, or a new one per run (`i` → packet).
    packets: Packets,
}

enum Packets {
    Same(Vec<u8>),
    /// The same packet, one run per system call (the baseline for the pairs below, whose runs
    /// cannot be repeated in the kernel).
    Single(Vec<u8>),
    /// Query `i` then its answer, each run once: new DNS table entries summarized at once.
    /// The case measures the answer; the query before it is measured as its own case.
    Pairs {
        answer: bool,
    },
}

/// A DNS message with id and client port derived from `i` (a new query each time).
fn dns_for(i: u32, response: bool) -> Vec<u8> {
    let mut m = dns_message(response);
    if let Some(id) = m.get_mut(0..2) {
        id.copy_from_slice(&(i as u16).to_be_bytes());
    }
    let port = 10_000 + (i >> 16) as u16;
    if response {
        reply_ipv4(eth_ipv4(17, &udp(53, port, &m)))
    } else {
        eth_ipv4(17, &udp(port, 53, &m))
    }
}

fn cases() -> Vec<Case> {
    let payload = [0x5a; 64];
    vec![
        Case {
            name: "empty program",
            prog: TcProgram::Empty,
            packets: Packets::Same(eth_ipv4(6, &tcp(40000, 443, 0x18, &payload))),
        },
        Case {
            name: "non-DNS TCP (data)",
            prog: TcProgram::PodIn,
            packets: Packets::Same(eth_ipv4(6, &tcp(40000, 443, 0x18, &payload))),
        },
        Case {
            name: "non-DNS UDP, other iface",
            prog: TcProgram::OtherIn,
            packets: Packets::Same(eth_ipv4(17, &udp(40000, 443, &payload))),
        },
        Case {
            name: "non-DNS UDP, tracked flow",
            prog: TcProgram::PodIn,
            packets: Packets::Same(eth_ipv4(17, &udp(40001, 443, &payload))),
        },
        Case {
            name: "empty program, single runs",
            prog: TcProgram::Empty,
            packets: Packets::Single(eth_ipv4(6, &tcp(40000, 443, 0x18, &payload))),
        },
        Case {
            name: "DNS query: new entry",
            prog: TcProgram::PodIn,
            packets: Packets::Pairs { answer: false },
        },
        Case {
            name: "DNS answer: summarized",
            prog: TcProgram::PodOut,
            packets: Packets::Pairs { answer: true },
        },
        Case {
            name: "garbage",
            prog: TcProgram::PodIn,
            packets: Packets::Same((0..60u8).map(|i| i.wrapping_mul(97)).collect()),
        },
    ]
}

/// Runs `prog` on `packet` `repeat` times; the kernel's mean duration per run.
fn run_once(
    capture: &mut Capture,
    prog: TcProgram,
    packet: &[u8],
    repeat: u32,
) -> anyhow::Result<Duration> {
    let p: &SchedClassifier = capture
        .ebpf_mut()
        .program(prog.name())
        .context("program missing")?
        .try_into()
        .context("not a classifier")?;
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(packet);
    opts.repeat = repeat;
    Ok(p.test_run(opts)
        .with_context(|| format!("test run of {}", prog.name()))?
        .duration)
}

/// Runs every case for `packets` packets each; prints a table.
pub fn main(packets: u32) -> anyhow::Result<()> {
    let mut capture = Capture::load(&crate::capture::load::LoadConfig::default())
        .context("loading the kernel programs (are you root?)")?;
    let mut ring = capture.take_ring()?;
    let mut rows = Vec::new();
    for case in cases() {
        let mut total = Duration::ZERO;
        let mut done = 0u32;
        match &case.packets {
            Packets::Same(packet) => {
                while done < packets {
                    let n = BATCH.min(packets - done);
                    total += run_once(&mut capture, case.prog, packet, n)? * n;
                    done += n;
                    while ring.next().is_some() {}
                }
            }
            Packets::Single(packet) => {
                let n = packets.min(100_000);
                for _ in 0..n {
                    total += run_once(&mut capture, case.prog, packet, 1)?;
                }
                done = n;
            }
            Packets::Pairs { answer } => {
                // One run per packet (each a system call, and the query must precede its
                // answer): fewer of them.
                let n = packets.min(100_000);
                for i in 0..n {
                    let rq = run_once(&mut capture, TcProgram::PodIn, &dns_for(i, false), 1)?;
                    let ra = run_once(&mut capture, TcProgram::PodOut, &dns_for(i, true), 1)?;
                    total += if *answer { ra } else { rq };
                    if i % BATCH == 0 {
                        while ring.next().is_some() {}
                    }
                }
                done = n;
            }
        }
        let ns = total.as_nanos() as f64 / f64::from(done.max(1));
        rows.push((case.name, case.prog.name(), ns));
    }
    let counters = capture.counters()?;
    let empty = rows.first().map(|r| r.2).unwrap_or(1.0).max(0.001);
    // Single-run cases compare with the single-run baseline.
    let single = rows
        .iter()
        .find(|r| r.0 == "empty program, single runs")
        .map(|r| r.2)
        .unwrap_or(empty)
        .max(0.001);
    println!(
        "BPF_PROG_TEST_RUN, up to {packets} packets per case (ring buffer drained every {BATCH})"
    );
    println!(
        "{:<28} {:<14} {:>10} {:>12} {:>10}",
        "case", "program", "ns/packet", "vs empty", "delta ns"
    );
    for (name, prog, ns) in &rows {
        let base = if name.starts_with("DNS") || name.contains("single") {
            single
        } else {
            empty
        };
        println!(
            "{name:<28} {prog:<14} {ns:>10.1} {:>11.2}x {:>+10.1}",
            ns / base,
            ns - base
        );
    }
    println!("(DNS cases run one packet per call and compare with the single-run baseline)");
    println!(
        "kernel counters: emitted {} ring-buffer full {} parse errors {} aggregated {} \
         DNS tracked {} summarized {} records {}",
        counters.tc_emitted,
        counters.tc_ringbuf_full,
        counters.tc_parse_error,
        counters.flow_aggregated,
        counters.dns_tracked,
        counters.dns_summarized,
        counters.dns_records
    );
    Ok(())
}
