//! The kernel programs' parser, tested in the kernel: hand-built packets are run through the
//! real tc programs with BPF_PROG_TEST_RUN and the ring-buffer records decoded as the daemon
//! does. Needs root; under CI a non-root run fails instead of skipping.

use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};

use crate::{
    capture::{Capture, TcProgram, iface::IfaceTable},
    decode::{
        self, NoSymbols,
        event::{Hook, PacketEvent, Proto},
    },
    devtools::packets::*,
};

fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v.is_empty() || v == "false"),
        "kernel tests need root and CI=true requires them to run"
    );
    eprintln!("SKIPPED: kernel tests need root");
    false
}

/// Loaded programs and their ring buffer.
struct Kernel {
    capture: Capture,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
}

impl Kernel {
    fn counters(&self) -> Result<crate::capture::Counters, crate::capture::load::CaptureError> {
        self.capture.counters()
    }
}

/// Runs `prog` once on `frame` and returns the events it emitted.
fn run(k: &mut Kernel, prog: TcProgram, frame: &[u8]) -> Vec<PacketEvent> {
    try_run(k, prog, frame).expect("test run")
}

/// Like [`run`], but `None` when the kernel refuses the frame itself (BPF_PROG_TEST_RUN
/// validates some headers before the program runs).
fn try_run(k: &mut Kernel, prog: TcProgram, frame: &[u8]) -> Option<Vec<PacketEvent>> {
    let Kernel { capture, ring } = k;
    let p: &SchedClassifier = capture
        .ebpf_mut()
        .program(prog.name())
        .expect("program present")
        .try_into()
        .expect("classifier");
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    let r = p.test_run(opts).ok()?;
    // TC_ACT_UNSPEC (-1, TCX_NEXT): the next program or filter decides, never the tracer.
    assert_eq!(
        r.return_value,
        u32::MAX,
        "programs never decide a packet's fate: they return TC_ACT_UNSPEC"
    );
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        let raw = decode::read_record(&item).expect("full record");
        out.push(decode::decode(&raw, &IfaceTable::default(), 1, &NoSymbols).expect("decodes"));
    }
    Some(out)
}

fn capture() -> Kernel {
    let mut capture = Capture::load(None).expect("programs load (root?)");
    let ring = capture.take_ring().expect("ring buffer");
    Kernel { capture, ring }
}

#[test]
fn ipv4_udp_dns_query() {
    if !privileged() {
        return;
    }
    let mut c = capture();
    let ev = run(
        &mut c,
        TcProgram::In,
        &eth_ipv4(17, &udp(40000, 53, &dns_message(false))),
    );
    let [ev] = ev.as_slice() else {
        panic!("one event expected, got {ev:?}")
    };
    assert_eq!(ev.hook, Hook::Ingress);
    assert_eq!(
        (ev.src.to_string(), ev.sport),
        ("198.18.1.21".into(), 40000)
    );
    assert_eq!((ev.dst.to_string(), ev.dport), ("198.19.0.10".into(), 53));
    let dns = ev.dns.as_ref().expect("dns");
    assert_eq!(dns.id, 0x1234);
    assert_eq!(
        dns.qname.as_deref(),
        Some("kubernetes.default.svc.cluster.local")
    );
}

#[test]
fn ipv6_dns_behind_extension_header_and_response() {
    if !privileged() {
        return;
    }
    let mut c = capture();
    let ev = run(
        &mut c,
        TcProgram::Out,
        &eth_ipv6(17, &udp(53, 40000, &dns_message(true)), true),
    );
    let [ev] = ev.as_slice() else {
        panic!("one event expected, got {ev:?}")
    };
    assert_eq!((ev.src.to_string(), ev.sport), ("fd00::21".into(), 53));
    assert_eq!((ev.dst.to_string(), ev.dport), ("fd00::a".into(), 40000));
    let dns = ev.dns.as_ref().expect("dns");
    assert!(dns.response);
    assert_eq!(dns.rcode.as_deref(), Some("NOERROR"));
    assert_eq!(dns.answers, 1);
}

#[test]
fn vlan_tagged_frame_from_trunk() {
    if !privileged() {
        return;
    }
    let mut c = capture();
    let frame = with_vlan(eth_ipv4(17, &udp(40000, 53, &dns_message(false))), 7);
    let ev = run(&mut c, TcProgram::In, &frame);
    let [ev] = ev.as_slice() else {
        panic!("one event expected, got {ev:?}")
    };
    assert_eq!(ev.vlan, Some(7));
    assert_eq!(
        ev.dns.as_ref().and_then(|d| d.qname.as_deref()),
        Some("kubernetes.default.svc.cluster.local")
    );
}

#[test]
fn dns_over_tcp_first_segment() {
    if !privileged() {
        return;
    }
    let mut c = capture();
    let msg = dns_message(false);
    let mut payload = (msg.len() as u16).to_be_bytes().to_vec();
    payload.extend_from_slice(&msg);
    let ev = run(
        &mut c,
        TcProgram::In,
        &eth_ipv4(6, &tcp(40000, 53, 0x18, &payload)),
    );
    let [ev] = ev.as_slice() else {
        panic!("one event expected, got {ev:?}")
    };
    assert_eq!(ev.proto, Proto::Tcp);
    assert_eq!(ev.dns.as_ref().map(|d| d.id), Some(0x1234));
    // A bare ACK of a DNS-over-TCP connection is not reported.
    assert!(
        run(
            &mut c,
            TcProgram::In,
            &eth_ipv4(6, &tcp(40000, 53, 0x10, &[]))
        )
        .is_empty()
    );
}

#[test]
fn icmp_port_unreachable_carries_quoted_dns_tuple() {
    if !privileged() {
        return;
    }
    let mut c = capture();
    let query = eth_ipv4(17, &udp(40000, 53, &dns_message(false)));
    let ev = run(&mut c, TcProgram::Out, &icmp_port_unreachable(&query[14..]));
    let [ev] = ev.as_slice() else {
        panic!("one event expected, got {ev:?}")
    };
    assert_eq!(ev.proto, Proto::Icmp);
    assert_eq!(ev.icmp.as_deref(), Some("port_unreachable"));
    assert_eq!(
        (ev.src.to_string(), ev.sport, ev.dport),
        ("198.18.1.21".into(), 40000, 53)
    );
    assert_eq!(
        ev.dns.as_ref().map(|d| d.id),
        Some(0x1234),
        "quoted DNS header decoded"
    );
}

#[test]
fn flows_first_packets_only() {
    if !privileged() {
        return;
    }
    let mut c = capture();
    assert!(
        run(
            &mut c,
            TcProgram::In,
            &eth_ipv4(6, &tcp(40000, 443, 0x18, &[1; 32]))
        )
        .is_empty()
    );
    let syn = run(
        &mut c,
        TcProgram::In,
        &eth_ipv4(6, &tcp(40000, 443, 0x02, &[])),
    );
    assert_eq!(
        syn.first().and_then(|e| e.tcp_flags.as_deref()),
        Some("SYN")
    );
    let udp_pkt = eth_ipv4(17, &udp(41000, 8125, &[7; 20]));
    assert_eq!(
        run(&mut c, TcProgram::InTrack, &udp_pkt).len(),
        1,
        "first UDP packet reported"
    );
    assert!(
        run(&mut c, TcProgram::InTrack, &udp_pkt).is_empty(),
        "later ones aggregated"
    );
    assert!(
        run(&mut c, TcProgram::In, &udp_pkt).is_empty(),
        "untracked role ignores UDP"
    );
    let counters = c.counters().expect("counters");
    assert_eq!(counters.flow_aggregated, 1);
    assert_eq!(
        counters.tc_seen, 5,
        "every packet counted as seen: {counters:?}"
    );
}

#[test]
fn long_name_is_truncated_not_lost_and_garbage_is_ignored() {
    if !privileged() {
        return;
    }
    let mut c = capture();
    let long = ["a123456789b123456789c123456789d123456789e123456789f12345678"; 5].join(".");
    let ev = run(
        &mut c,
        TcProgram::In,
        &eth_ipv4(17, &udp(40000, 53, &dns_query_for(&long))),
    );
    let [ev] = ev.as_slice() else {
        panic!("one event expected, got {ev:?}")
    };
    let dns = ev
        .dns
        .as_ref()
        .expect("header decoded from the bounded copy");
    assert_eq!(dns.id, 0x1234);
    assert_eq!(
        dns.qname, None,
        "a 300-byte name does not fit the 256-byte copy"
    );
    // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
    for len in [15usize, 20, 33, 34, 41, 42, 60] {
        let junk: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(151)).collect();
        assert!(
            try_run(&mut c, TcProgram::In, &junk)
                .unwrap_or_default()
                .is_empty()
        );
        let mut truncated = eth_ipv4(17, &udp(40000, 53, &dns_message(false)));
        truncated.truncate(len);
        // Cut before the DNS header: nothing reported; cut inside it: reported without DNS facts.
        for ev in try_run(&mut c, TcProgram::In, &truncated).unwrap_or_default() {
            assert!(ev.dns.is_none(), "no DNS facts from a cut header: {ev:?}");
        }
    }
}
