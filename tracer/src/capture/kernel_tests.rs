//! The kernel programs tested in the kernel: hand-built packets are run through the real tc
//! programs with BPF_PROG_TEST_RUN, and what they leave behind — ring-buffer records, DNS table
//! entries, answer summaries, counters — is read and decoded as the daemon does. Needs root;
//! under CI a non-root run fails instead of skipping.

use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use tracer_common::{dns_flags, dns_state};

use crate::{
    capture::{
        Capture, TcProgram,
        iface::IfaceTable,
        load::{LoadConfig, Tables, read_all},
    },
    decode::{
        self, NoSymbols, Record,
        event::{Hook, IcmpKind, PacketEvent, Proto, Rcode, TcpFlags},
        record::{DnsFlowRecord, Why},
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

/// Loaded programs, their ring buffer and tables.
struct Kernel {
    capture: Capture,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    tables: Tables,
}

/// Runs `prog` once on `frame` and returns the records it emitted.
fn run(k: &mut Kernel, prog: TcProgram, frame: &[u8]) -> Vec<Record> {
    try_run(k, prog, frame).expect("test run")
}

/// Like [`run`], but `None` when the kernel refuses the frame itself (BPF_PROG_TEST_RUN
/// validates some headers before the program runs).
fn try_run(k: &mut Kernel, prog: TcProgram, frame: &[u8]) -> Option<Vec<Record>> {
    let r = test_run(k, prog, frame)?;
    // TC_ACT_UNSPEC (-1, TCX_NEXT): the next program or filter decides, never the tracer.
    assert_eq!(
        r.return_value,
        u32::MAX,
        "programs never decide a packet's fate: they return TC_ACT_UNSPEC"
    );
    let mut out = Vec::new();
    while let Some(item) = k.ring.next() {
        out.push(
            decode::decode_record(&item, &IfaceTable::default(), 1, &NoSymbols).expect("decodes"),
        );
    }
    Some(out)
}

/// One BPF_PROG_TEST_RUN of `prog` on `frame` (`None` when the kernel refuses the frame).
fn test_run(k: &mut Kernel, prog: TcProgram, frame: &[u8]) -> Option<aya::programs::TestRunResult> {
    let p: &SchedClassifier = k
        .capture
        .ebpf_mut()
        .program(prog.name())
        .expect("program present")
        .try_into()
        .expect("classifier");
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    p.test_run(opts).ok()
}

fn kernel_with(cfg: LoadConfig) -> Kernel {
    let mut capture = Capture::load(&cfg).expect("programs load (root?)");
    let ring = capture.take_ring().expect("ring buffer");
    let tables = capture.take_tables().expect("tables");
    Kernel {
        capture,
        ring,
        tables,
    }
}

fn kernel() -> Kernel {
    kernel_with(LoadConfig::default())
}

fn packets(recs: &[Record]) -> Vec<&PacketEvent> {
    recs.iter()
        .filter_map(|r| match r {
            Record::Packet(p) => Some(p),
            Record::Dns(_) => None,
        })
        .collect()
}

fn dns_records(recs: &[Record]) -> Vec<&DnsFlowRecord> {
    recs.iter()
        .filter_map(|r| match r {
            Record::Dns(d) => Some(d),
            Record::Packet(_) => None,
        })
        .collect()
}

fn query() -> Vec<u8> {
    eth_ipv4(17, &udp(40000, 53, &dns_message(false)))
}

fn answer() -> Vec<u8> {
    reply_ipv4(eth_ipv4(17, &udp(53, 40000, &dns_message(true))))
}

#[test]
fn healthy_answer_is_summarized_in_the_kernel() {
    if !privileged() {
        return;
    }
    let mut k = kernel();
    assert!(run(&mut k, TcProgram::PodIn, &query()).is_empty());
    let open = k.tables.dns_entries(16).expect("table");
    let [(key, e)] = open.as_slice() else {
        panic!("one entry expected, got {open:?}")
    };
    assert_eq!((key.port, key.id), (40000, 0x1234));
    assert_eq!(e.state, dns_state::OPEN);
    assert_eq!(e.qtype, 1);
    // The answer delivered to the pod: no record, one summary.
    assert!(run(&mut k, TcProgram::PodOut, &answer()).is_empty());
    let sums = read_all(&k.tables.summary, 16).expect("summaries");
    let [(sk, sv)] = sums.as_slice() else {
        panic!("one summary expected, got {sums:?}")
    };
    assert_eq!((sk.qtype, sk.rcode, sv.count), (1, 0, 1));
    let c = k.capture.counters().expect("counters");
    assert_eq!((c.dns_tracked, c.dns_summarized, c.dns_records), (1, 1, 0));
    // The entry lingers, delivered, for a drop inside the client right after.
    let after = k.tables.dns_entries(16).expect("table");
    assert_eq!(
        after.first().map(|(_, e)| e.state),
        Some(dns_state::DELIVERED)
    );
}

#[test]
fn answered_flows_hand_every_query_over_whole() {
    if !privileged() {
        return;
    }
    let mut cfg = LoadConfig::default();
    cfg.dns.answered_flows = 1;
    let mut k = kernel_with(cfg);
    assert!(run(&mut k, TcProgram::PodIn, &query()).is_empty());
    let recs = run(&mut k, TcProgram::PodOut, &answer());
    let [r] = dns_records(&recs)[..] else {
        panic!("one record expected, got {recs:?}")
    };
    assert_eq!(r.why, Why::Delivered);
    let [q, a] = r.events.as_slice() else {
        panic!("two sightings expected: {:?}", r.events)
    };
    assert_eq!((q.hook, a.hook), (Hook::Ingress, Hook::Egress));
    assert_eq!(
        (q.src.to_string(), q.sport, q.dst.to_string(), q.dport),
        ("198.18.1.21".into(), 40000, "198.19.0.10".into(), 53)
    );
    let d = a.dns.as_ref().expect("dns");
    assert!(d.response);
    assert_eq!(d.rcode, Some(Rcode::NOERROR));
    assert_eq!(d.answers, 1);
    assert_eq!(
        d.qname.as_deref(),
        Some("kubernetes.default.svc.cluster.local")
    );
}

#[test]
fn resend_hands_over_and_streams() {
    if !privileged() {
        return;
    }
    let mut k = kernel();
    assert!(run(&mut k, TcProgram::PodIn, &query()).is_empty());
    // The same query at the same point again: a resend.
    let recs = run(&mut k, TcProgram::PodIn, &query());
    let [r] = dns_records(&recs)[..] else {
        panic!("a record expected, got {recs:?}")
    };
    assert_eq!(r.why, Why::Resend);
    assert_eq!(packets(&recs).len(), 1, "the resend itself is reported");
    // From now on every packet of the query is reported as it is.
    let recs = run(&mut k, TcProgram::PodOut, &answer());
    let [p] = packets(&recs)[..] else {
        panic!("the answer reported, got {recs:?}")
    };
    assert!(p.dns.as_ref().is_some_and(|d| d.response));
}

#[test]
fn ipv6_dns_behind_extension_header() {
    if !privileged() {
        return;
    }
    let mut cfg = LoadConfig::default();
    cfg.dns.answered_flows = 1;
    let mut k = kernel_with(cfg);
    let q = eth_ipv6(17, &udp(40000, 53, &dns_message(false)), true);
    assert!(run(&mut k, TcProgram::PodIn, &q).is_empty());
    let open = k.tables.dns_entries(16).expect("table");
    assert_eq!(open.first().map(|(key, _)| key.ip_version), Some(6));
    // An orphan answer (no such query): counted, not reported.
    let a = eth_ipv6(17, &udp(53, 40001, &dns_message(true)), true);
    assert!(run(&mut k, TcProgram::PodOut, &a).is_empty());
    assert_eq!(k.capture.counters().expect("counters").dns_orphan, 1);
}

#[test]
fn vlan_tagged_frame_from_trunk() {
    if !privileged() {
        return;
    }
    let mut k = kernel();
    let frame = with_vlan(query(), 7);
    assert!(run(&mut k, TcProgram::UplinkIn, &frame).is_empty());
    let open = k.tables.dns_entries(16).expect("table");
    let [(_, e)] = open.as_slice() else {
        panic!("one entry expected, got {open:?}")
    };
    assert_eq!(e.hops[0].vlan, 7);
    assert_eq!(e.origin, tracer_common::origin::REMOTE);
}

#[test]
fn dns_over_tcp_is_reported_per_segment() {
    if !privileged() {
        return;
    }
    let mut k = kernel();
    let msg = dns_message(false);
    let mut payload = (msg.len() as u16).to_be_bytes().to_vec();
    payload.extend_from_slice(&msg);
    let recs = run(
        &mut k,
        TcProgram::PodIn,
        &eth_ipv4(6, &tcp(40000, 53, 0x18, &payload)),
    );
    let [ev] = packets(&recs)[..] else {
        panic!("one event expected, got {recs:?}")
    };
    assert_eq!(ev.proto, Proto::Tcp);
    assert_eq!(ev.dns.as_ref().map(|d| d.id), Some(0x1234));
    // A bare ACK of a DNS-over-TCP connection is not reported.
    assert!(
        run(
            &mut k,
            TcProgram::PodIn,
            &eth_ipv4(6, &tcp(40000, 53, 0x10, &[]))
        )
        .is_empty()
    );
}

#[test]
fn icmp_port_unreachable_goes_into_the_tracked_query() {
    if !privileged() {
        return;
    }
    let mut k = kernel();
    assert!(run(&mut k, TcProgram::PodIn, &query()).is_empty());
    let q = query();
    let recs = run(&mut k, TcProgram::PodOut, &icmp_port_unreachable(&q[14..]));
    let [r] = dns_records(&recs)[..] else {
        panic!("a record expected, got {recs:?}")
    };
    assert_eq!(r.why, Why::Icmp);
    let icmp = r.events.last().expect("sightings");
    assert_eq!(icmp.proto, Proto::Icmp);
    assert_eq!(icmp.icmp, Some(IcmpKind::PortUnreachable));
    assert_eq!(
        (icmp.src.to_string(), icmp.sport, icmp.dport),
        ("198.18.1.21".into(), 40000, 53)
    );
    // An ICMP error quoting an untracked query is reported as a packet, with the quoted tuple.
    let other = eth_ipv4(17, &udp(40002, 53, &dns_message(false)));
    let recs = run(
        &mut k,
        TcProgram::PodOut,
        &icmp_port_unreachable(&other[14..]),
    );
    let [ev] = packets(&recs)[..] else {
        panic!("one event expected, got {recs:?}")
    };
    assert_eq!(ev.sport, 40002);
    assert_eq!(ev.dns.as_ref().map(|d| d.id), Some(0x1234));
}

#[test]
fn egress_first_packets_and_first_replies_only() {
    if !privileged() {
        return;
    }
    let mut k = kernel();
    assert!(
        run(
            &mut k,
            TcProgram::PodIn,
            &eth_ipv4(6, &tcp(40000, 443, 0x18, &[1; 32]))
        )
        .is_empty()
    );
    let syn = run(
        &mut k,
        TcProgram::PodIn,
        &eth_ipv4(6, &tcp(40000, 443, 0x02, &[])),
    );
    assert_eq!(
        packets(&syn).first().and_then(|e| e.tcp_flags),
        Some(TcpFlags(TcpFlags::SYN))
    );
    let out = eth_ipv4(17, &udp(41000, 8125, &[7; 20]));
    let back = reply_ipv4(eth_ipv4(17, &udp(8125, 41000, &[8; 20])));
    let first = run(&mut k, TcProgram::PodIn, &out);
    assert_eq!(first.len(), 1, "first UDP packet");
    assert!(
        run(&mut k, TcProgram::PodIn, &out).is_empty(),
        "later ones aggregated"
    );
    // The flow's entry says when it was made (the daemon checks that a flow it would call
    // lost kept its entry from its first packet on), and counts the packets after the first.
    let ev = *packets(&first).first().expect("a packet event");
    let wire = crate::decode::wire_addr;
    let key = tracer_common::FlowKey::new((wire(ev.src), ev.sport), (wire(ev.dst), ev.dport), 17);
    let entry = k.tables.flows.get(&key, 0).expect("the flow's entry");
    assert!(
        entry.first_ns > 0 && entry.first_ns <= ev.ts_ns,
        "made at the first packet: {entry:?} vs {}",
        ev.ts_ns
    );
    assert_eq!(entry.packets, 1, "{entry:?}");
    assert!(entry.last_ns >= entry.first_ns, "{entry:?}");
    // Without SNAT (a branch ENI pod, a VPC destination, external SNAT) the packet leaves
    // through the uplink with the key it had at the pod veth: reported there once too.
    let other = eth_ipv4(17, &udp(41001, 8125, &[7; 20]));
    assert_eq!(
        run(&mut k, TcProgram::PodIn, &other).len(),
        1,
        "at the pod veth"
    );
    assert_eq!(
        run(&mut k, TcProgram::UplinkOut, &other).len(),
        1,
        "leaving the node"
    );
    assert!(
        run(&mut k, TcProgram::PodIn, &other).is_empty()
            && run(&mut k, TcProgram::UplinkOut, &other).is_empty(),
        "later packets aggregated at both hooks"
    );
    assert_eq!(
        run(&mut k, TcProgram::PodOut, &back).len(),
        1,
        "first reply"
    );
    assert!(
        run(&mut k, TcProgram::PodOut, &back).is_empty(),
        "later replies aggregated"
    );
    assert!(
        run(&mut k, TcProgram::OtherIn, &out).is_empty(),
        "other interfaces ignore UDP"
    );
    let c = k.capture.counters().expect("counters");
    assert_eq!(c.flow_aggregated, 4);
    assert_eq!(c.tc_seen, 11, "every packet counted as seen: {c:?}");
}

#[test]
fn long_name_is_cut_not_lost_and_garbage_is_ignored() {
    if !privileged() {
        return;
    }
    let mut k = kernel();
    let long = ["a123456789b123456789c123456789d123456789e123456789f12345678"; 5].join(".");
    let q = eth_ipv4(17, &udp(40000, 53, &dns_query_for(&long)));
    assert!(run(&mut k, TcProgram::PodIn, &q).is_empty());
    let open = k.tables.dns_entries(16).expect("table");
    let [(key, e)] = open.as_slice() else {
        panic!("one entry expected, got {open:?}")
    };
    assert_eq!(key.id, 0x1234);
    assert_ne!(
        e.flags & dns_flags::QUESTION_CUT,
        0,
        "a 300-byte name does not fit the 128-byte copy"
    );
    // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
    for len in [15usize, 20, 33, 34, 41, 42, 60] {
        let junk: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(151)).collect();
        assert!(
            try_run(&mut k, TcProgram::PodIn, &junk)
                .unwrap_or_default()
                .is_empty()
        );
        let mut truncated = eth_ipv4(17, &udp(40001, 53, &dns_message(false)));
        truncated.truncate(len);
        // Cut before the DNS header: nothing; cut inside it: reported without DNS facts.
        for r in try_run(&mut k, TcProgram::PodIn, &truncated).unwrap_or_default() {
            let Record::Packet(ev) = r else {
                panic!("no table record from a cut header: {r:?}")
            };
            assert!(ev.dns.is_none(), "no DNS facts from a cut header: {ev:?}");
        }
    }
}

#[test]
fn answers_to_other_machines_are_noted_in_the_ledger() {
    if !privileged() {
        return;
    }
    // Every test run on one CPU, so its segment comes round.
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
    let mut cfg = LoadConfig::default();
    cfg.dns.ledger_slots = 4;
    let mut k = kernel_with(cfg);
    // A query from another node arrives at the uplink, goes to the replica's veth; the answer
    // comes back from the replica and leaves through the uplink.
    assert!(run(&mut k, TcProgram::UplinkIn, &query()).is_empty());
    let open = k.tables.dns_entries(16).expect("table");
    let [(key, _)] = open.as_slice() else {
        panic!("one entry expected, got {open:?}")
    };
    let key = *key;
    assert!(run(&mut k, TcProgram::PodOut, &query()).is_empty());
    assert!(run(&mut k, TcProgram::PodIn, &answer()).is_empty());
    assert!(run(&mut k, TcProgram::UplinkOut, &answer()).is_empty());
    let written = k
        .capture
        .counter_per_cpu(tracer_common::counter::LEDGER_WRITTEN)
        .expect("counter");
    assert_eq!(written.iter().sum::<u64>(), 1, "{written:?}");
    let ledger = k.tables.ledger.take().expect("ledger mapped");
    let fp = tracer_common::dns_key_fp(&key);
    let scan = ledger.scan(&[fp].into_iter().collect(), &written);
    let slot = scan.found.get(&fp).expect("the delivery is in the ledger");
    assert!(slot.done_ns > 0 && slot.out_ifindex > 0, "{slot:?}");
    assert_eq!(scan.oldest_done_ns, None, "nothing overwritten yet");
    // Five more deliveries on a 4-slot segment: the first is overwritten, and the scan says
    // from when on it remembers.
    for id in 1..=5u16 {
        let mut q = dns_message(false);
        q[1] = q[1].wrapping_add(id as u8);
        let mut a = dns_message(true);
        a[1] = a[1].wrapping_add(id as u8);
        run(
            &mut k,
            TcProgram::UplinkIn,
            &eth_ipv4(17, &udp(40000, 53, &q)),
        );
        run(
            &mut k,
            TcProgram::UplinkOut,
            &reply_ipv4(eth_ipv4(17, &udp(53, 40000, &a))),
        );
    }
    let written = k
        .capture
        .counter_per_cpu(tracer_common::counter::LEDGER_WRITTEN)
        .expect("counter");
    let scan = ledger.scan(&[fp].into_iter().collect(), &written);
    assert!(scan.found.is_empty(), "overwritten: {scan:?}");
    assert!(
        scan.oldest_done_ns.is_some_and(|t| t > slot.done_ns),
        "{scan:?}"
    );
    // Queries from this node's pods are not noted.
    let before: u64 = written.iter().sum();
    let mut q = dns_message(false);
    q[1] = 0x77;
    let mut a = dns_message(true);
    a[1] = 0x77;
    run(&mut k, TcProgram::PodIn, &eth_ipv4(17, &udp(40000, 53, &q)));
    run(
        &mut k,
        TcProgram::PodOut,
        &reply_ipv4(eth_ipv4(17, &udp(53, 40000, &a))),
    );
    let after: u64 = k
        .capture
        .counter_per_cpu(tracer_common::counter::LEDGER_WRITTEN)
        .expect("counter")
        .iter()
        .sum();
    assert_eq!(after, before);
}

/// A query and its answer on client port `port`.
fn query_from(port: u16) -> Vec<u8> {
    eth_ipv4(17, &udp(port, 53, &dns_message(false)))
}

fn answer_to(port: u16) -> Vec<u8> {
    reply_ipv4(eth_ipv4(17, &udp(53, port, &dns_message(true))))
}

/// The key of [`query_from`]`(port)`.
fn key_of(port: u16) -> tracer_common::DnsKey {
    tracer_common::DnsKey {
        client: [198, 18, 1, 21, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        port,
        id: 0x1234,
        ip_version: 4,
        _pad: [0; 3],
    }
}

#[test]
fn queries_sharing_a_slot_are_both_tracked_and_the_slot_is_reused_once_quiet() {
    if !privileged() {
        return;
    }
    let mut k = kernel_with(LoadConfig {
        dns_slots: 4,
        ..LoadConfig::default()
    });
    let slot = |port| tracer_common::dns_slot_index(&key_of(port), 3);
    let mut same = (40_001..).filter(|p| slot(*p) == slot(40_000));
    let (p2, p3, p4) = (
        same.next().expect("a port"),
        same.next().expect("a port"),
        same.next().expect("a port"),
    );

    // The first query takes the slot; the second, whose slot is taken by a live query, goes
    // to the hash table.
    assert!(run(&mut k, TcProgram::PodIn, &query_from(40_000)).is_empty());
    assert!(run(&mut k, TcProgram::PodIn, &query_from(p2)).is_empty());
    assert!(k.tables.slots.find(&key_of(40_000)).is_some());
    assert!(k.tables.slots.find(&key_of(p2)).is_none());
    assert!(k.tables.dns.get(&key_of(p2), 0).is_ok());
    assert_eq!(k.capture.counters().expect("counters").dns_slot_taken, 1);

    // Both answers find their queries (the second in the hash table): two summarised answers,
    // no orphan, nothing handed over.
    assert!(run(&mut k, TcProgram::PodOut, &answer_to(p2)).is_empty());
    assert!(run(&mut k, TcProgram::PodOut, &answer_to(40_000)).is_empty());
    let sums = read_all(&k.tables.summary, 16).expect("summaries");
    assert_eq!(sums.iter().map(|(_, v)| v.count).sum::<u64>(), 2);
    let c = k.capture.counters().expect("counters");
    assert_eq!((c.dns_orphan, c.dns_records), (0, 0));

    // Right after delivery the slot still holds the answered query (a drop in the client
    // would find it): a third query goes to the hash table.
    assert!(run(&mut k, TcProgram::PodIn, &query_from(p3)).is_empty());
    assert_eq!(k.capture.counters().expect("counters").dns_slot_taken, 2);
    // Once quiet for the linger time, the next query takes the slot over.
    std::thread::sleep(std::time::Duration::from_nanos(
        tracer_common::DNS_SLOT_LINGER_NS * 2,
    ));
    assert!(run(&mut k, TcProgram::PodIn, &query_from(p4)).is_empty());
    assert_eq!(k.capture.counters().expect("counters").dns_slot_taken, 2);
    assert!(k.tables.slots.find(&key_of(p4)).is_some());
    assert!(k.tables.slots.find(&key_of(40_000)).is_none());
    // The query in the hash table still gets its answer.
    assert!(run(&mut k, TcProgram::PodOut, &answer_to(p3)).is_empty());
    let sums = read_all(&k.tables.summary, 16).expect("summaries");
    assert_eq!(sums.iter().map(|(_, v)| v.count).sum::<u64>(), 3);
}

/// Runs `prog` once on `frame` without draining the ring buffer.
fn run_keep(k: &mut Kernel, prog: TcProgram, frame: &[u8]) {
    test_run(k, prog, frame).expect("test run");
}

#[test]
fn a_new_query_replacing_an_unsent_record_notes_the_loss() {
    if !privileged() {
        return;
    }
    let mut cfg = LoadConfig {
        ring_bytes: Some(4096),
        ..LoadConfig::default()
    };
    cfg.dns.answered_flows = 1;
    let mut k = kernel_with(cfg);
    run_keep(&mut k, TcProgram::PodIn, &query());
    // Fill the one-page ring with SYN records, then deliver the answer: its record does not
    // fit and waits in the entry for the sweeper.
    let syn = eth_ipv4(6, &tcp(40_000, 443, 0x02, &[]));
    for _ in 0..32 {
        run_keep(&mut k, TcProgram::PodIn, &syn);
    }
    run_keep(&mut k, TcProgram::PodOut, &answer());
    let c = k.capture.counters().expect("counters");
    assert_eq!(c.dns_ringbuf_full, 1);
    let (_, e) = k.tables.dns_entries(16).expect("table")[0];
    assert_ne!(e.flags & dns_flags::UNSENT, 0);
    assert_eq!(c.dns_key_busy, 0);
    // (The SYNs that did not fit were noted as lost; a later loss lands in a later slot of the
    // loss history.)
    let loss = |k: &Kernel| -> Vec<u64> {
        let per_cpu = k.tables.loss.get(&0, 0).expect("loss");
        per_cpu.iter().flat_map(|cpu| cpu.iter().copied()).collect()
    };
    std::thread::sleep(std::time::Duration::from_nanos(
        2 * tracer_common::LOSS_SLOT_NS,
    ));
    let before = loss(&k);
    // The client's next query reuses the key before the sweeper came: that record is lost,
    // and the loss is on record for the daemon.
    run_keep(&mut k, TcProgram::PodIn, &query());
    assert_eq!(k.capture.counters().expect("counters").dns_key_busy, 1);
    assert_ne!(
        loss(&k),
        before,
        "the loss is noted in the kernel's loss history"
    );
}
