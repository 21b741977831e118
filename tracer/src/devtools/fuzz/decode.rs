//! Ring-buffer records: random bytes of random lengths through [`decode_record`] (and
//! [`read_record`] / [`read_dns_record`]), and well-formed packet and DNS-table records with
//! random field values, which must decode to exactly what they carry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::{collection::vec, prelude::*, test_runner::TestCaseError};
use tracer_common::{
    DNS_CAPTURE_LEN, DNS_MAX_HOPS, DNS_QUESTION_LEN, DnsEntry, DnsHop, DnsKey,
    DnsRecord as RawDnsRecord, EventHeader, PacketEvent as RawEvent, dns_flags, dns_state, flags,
    hook, kind,
};

use super::{check, target};
use crate::{
    capture::iface::{Iface, IfaceKind, IfaceTable},
    decode::{
        DecodeError, NoSymbols, Record, decode, decode_record,
        event::{Hook, PacketEvent, Proto},
        read_record,
        record::{decode_dns, decode_entry, read_dns_record},
    },
};

/// The daemon's own network namespace in these tests.
const OWN_NETNS: u32 = 4026531840;

const EVENT_LEN: usize = std::mem::size_of::<RawEvent>();
const DNS_LEN: usize = std::mem::size_of::<RawDnsRecord>();

fn ifaces() -> IfaceTable {
    let mut t = IfaceTable::default();
    for (ifindex, name, kind) in [
        (1, "lo", IfaceKind::Loopback),
        (2, "eth0", IfaceKind::Uplink),
        (7, "eni1a2b3c4d5e6", IfaceKind::PodVeth),
    ] {
        t.insert(Iface {
            ifindex,
            name: name.to_owned(),
            kind,
            vlan: None,
        });
    }
    t
}

/// The bytes of a wire struct.
fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: only called with tracer-common's wire structs: repr(C), plain integers and byte
    // arrays with explicit padding fields (no implicit padding), so every byte is initialized.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
        .to_vec()
}

/// Checks what any decoded packet event must satisfy, whatever the input.
fn sane_event(ev: &PacketEvent) -> Result<(), TestCaseError> {
    check(ev.src.is_ipv4() == ev.dst.is_ipv4(), || {
        format!("mixed address families: {ev:?}")
    })?;
    check((ev.proto == Proto::Tcp) == ev.tcp_flags.is_some(), || {
        format!("TCP flags on a non-TCP event: {ev:?}")
    })?;
    check((ev.proto == Proto::Icmp) == ev.icmp.is_some(), || {
        format!("ICMP kind without ICMP: {ev:?}")
    })?;
    check((ev.hook == Hook::Drop) == ev.drop.is_some(), || {
        format!("drop facts without a drop: {ev:?}")
    })?;
    check(!ev.iface.name.is_empty(), || {
        format!("no interface name: {ev:?}")
    })?;
    if let Some(q) = ev.dns.as_ref().and_then(|d| d.qname.as_deref()) {
        sane_qname(q)?;
    }
    Ok(())
}

/// A decoded question name: non-empty, lower case, no trailing dot (but the root, `.`), at most
/// 255 wire bytes (each shown as at most 4 characters: `\DDD`).
pub fn sane_qname(q: &str) -> Result<(), TestCaseError> {
    check(
        !q.is_empty()
            && q.len() <= 4 * 255
            && (q == "." || !q.ends_with('.') || q.ends_with("\\."))
            && !q.bytes().any(|b| b.is_ascii_uppercase()),
        || format!("odd qname {q:?}"),
    )
}

/// Random bytes, lengths biased around the two record sizes, first byte biased to the kinds.
fn record_bytes() -> impl Strategy<Value = Vec<u8>> {
    let max = EVENT_LEN.max(DNS_LEN) * 2;
    let len = prop_oneof![
        0..=64usize,
        EVENT_LEN - 4..=EVENT_LEN + 4,
        DNS_LEN - 4..=DNS_LEN + 4,
        0..=max,
    ];
    let first = prop_oneof![
        Just(kind::PACKET),
        Just(kind::DROP),
        Just(kind::DNS),
        any::<u8>()
    ];
    (len, first).prop_flat_map(|(len, first)| {
        vec(any::<u8>(), len).prop_map(move |mut b| {
            if let Some(k) = b.first_mut() {
                *k = first;
            }
            b
        })
    })
}

target!(
    /// Random bytes: an error, or an event that passes [`sane_event`]; the two entry points
    /// agree.
    fuzz_decode_random_records,
    record_bytes(),
    |bytes: Vec<u8>| {
        let t = ifaces();
        let got = decode_record(&bytes, &t, OWN_NETNS, &NoSymbols);
        let is_dns = bytes.first() == Some(&kind::DNS);
        let need = if is_dns { DNS_LEN } else { EVENT_LEN };
        match &got {
            Err(DecodeError::Short { got: n, want }) => {
                check(*n == bytes.len() && *want >= bytes.len(), || {
                    format!("short of {n}/{want} for {} bytes", bytes.len())
                })?;
            }
            _ => check(bytes.len() >= need, || {
                format!("{} bytes decoded as {got:?}", bytes.len())
            })?,
        }
        match &got {
            Ok(Record::Packet(ev)) => sane_event(ev)?,
            Ok(Record::Dns(r)) => {
                check(r.events.len() <= DNS_MAX_HOPS, || format!("{r:?}"))?;
                for ev in &r.events {
                    sane_event(ev)?;
                    check(ev.dns.is_some(), || format!("no DNS facts: {ev:?}"))?;
                }
            }
            Err(_) => {}
        }
        // The kind-specific readers give the same answer.
        if bytes.len() >= need {
            if is_dns {
                let raw = read_dns_record(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let again = decode_dns(&raw, &t, OWN_NETNS, &NoSymbols).map(Record::Dns);
                prop_assert_eq!(&again, &got);
            } else {
                let raw = read_record(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let again = decode(&raw, &t, OWN_NETNS, &NoSymbols).map(Record::Packet);
                prop_assert_eq!(&again, &got);
            }
        }
        prop_assert_eq!(read_record(&bytes).is_err(), bytes.len() < EVENT_LEN);
        prop_assert_eq!(read_dns_record(&bytes).is_err(), bytes.len() < DNS_LEN);
        Ok(())
    }
);

/// A DNS question (name labels, type, class) for `labels`, and the name as decoded.
fn question(labels: &[String], qtype: u16) -> (Vec<u8>, String) {
    let mut q = Vec::new();
    for l in labels {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    let name = if labels.is_empty() {
        ".".to_owned()
    } else {
        labels.join(".").to_ascii_lowercase()
    };
    (q, name)
}

/// Labels of a valid host name, at most `max_wire` bytes on the wire.
pub fn labels(max_wire: usize) -> impl Strategy<Value = Vec<String>> {
    vec("[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?", 0..8).prop_map(move |mut ls| {
        while ls.iter().map(|l| l.len() + 1).sum::<usize>() + 1 > max_wire {
            ls.pop();
        }
        ls
    })
}

fn addr16() -> impl Strategy<Value = [u8; 16]> {
    any::<[u8; 16]>()
}

fn ip(version: u8, raw: [u8; 16]) -> IpAddr {
    if version == 4 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(raw))
    }
}

/// A packet event record as the tc or drop program writes it, with random field values.
#[derive(Clone, Debug)]
struct PacketCase {
    raw: RawEvent,
    /// The DNS name carried, when the copy holds a well-formed query.
    qname: Option<String>,
}

fn packet_case() -> impl Strategy<Value = PacketCase> {
    let header = (
        prop_oneof![
            Just((kind::PACKET, hook::TC_INGRESS)),
            Just((kind::PACKET, hook::TC_EGRESS)),
            Just((kind::DROP, hook::KFREE_SKB)),
        ],
        prop_oneof![Just(0u32), 1..8u32, any::<u32>()],
        any::<u64>(),
    );
    let l3 = (
        prop_oneof![Just(4u8), Just(6u8)],
        addr16(),
        addr16(),
        any::<u16>(),
        any::<u16>(),
        prop_oneof![Just(6u8), Just(17u8)],
        any::<u8>(),
        any::<u8>(),
    );
    let extra = (
        prop_oneof![Just(0u32), Just(OWN_NETNS), any::<u32>()],
        any::<u32>(),
        any::<u64>(),
        any::<u32>(),
        any::<u16>(),
        any::<u16>(),
    );
    let dns = prop_oneof![
        (any::<u16>(), any::<u16>(), labels(200), any::<u16>()).prop_map(|(id, fl, ls, qtype)| {
            let mut m = id.to_be_bytes().to_vec();
            m.extend_from_slice(&fl.to_be_bytes());
            m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
            let (q, name) = question(&ls, qtype);
            m.extend_from_slice(&q);
            (m, Some(name))
        }),
        vec(any::<u8>(), 0..=DNS_CAPTURE_LEN).prop_map(|b| (b, None)),
    ];
    (header, l3, extra, dns, any::<u16>()).prop_map(
        |(
            ((kind, hook), ifindex, ts_ns),
            (ip_version, saddr, daddr, sport, dport, l4_proto, tcp_flags, flags),
            (netns, drop_reason, location, pkt_len, vlan, icmp_inner),
            (dns_bytes, qname),
            dns_len_noise,
        )| {
            let mut dns = [0u8; DNS_CAPTURE_LEN];
            for (d, s) in dns.iter_mut().zip(&dns_bytes) {
                *d = *s;
            }
            // Most records say how much was copied; some claim more than the array.
            let dns_len = if dns_len_noise % 8 == 0 {
                dns_len_noise
            } else {
                dns_bytes.len() as u16
            };
            PacketCase {
                raw: RawEvent {
                    header: EventHeader {
                        kind,
                        hook,
                        _pad: [0; 2],
                        ifindex,
                        ts_ns,
                    },
                    netns,
                    drop_reason,
                    location,
                    saddr,
                    daddr,
                    pkt_len,
                    sport,
                    dport,
                    ip_version,
                    l4_proto,
                    tcp_flags,
                    flags,
                    vlan,
                    dns_len,
                    icmp_inner,
                    _pad: [0; 6],
                    dns,
                },
                qname: qname.filter(|_| usize::from(dns_len) >= dns_bytes.len()),
            }
        },
    )
}

target!(
    /// Well-formed packet records decode to exactly their fields.
    fuzz_decode_packet_fields,
    packet_case(),
    |case: PacketCase| {
        let r = case.raw;
        let t = ifaces();
        let ev = match decode_record(&bytes_of(&r), &t, OWN_NETNS, &NoSymbols) {
            Ok(Record::Packet(ev)) => ev,
            other => return Err(TestCaseError::fail(format!("{other:?} for {r:?}"))),
        };
        sane_event(&ev)?;
        prop_assert_eq!(ev.ts_ns, r.header.ts_ns);
        prop_assert_eq!(
            ev.hook,
            match r.header.hook {
                hook::TC_INGRESS => Hook::Ingress,
                hook::TC_EGRESS => Hook::Egress,
                _ => Hook::Drop,
            }
        );
        prop_assert_eq!(ev.src, ip(r.ip_version, r.saddr));
        prop_assert_eq!(ev.dst, ip(r.ip_version, r.daddr));
        prop_assert_eq!((ev.sport, ev.dport, ev.len), (r.sport, r.dport, r.pkt_len));
        let icmp = r.flags & flags::ICMP_ERROR != 0;
        let proto = match (icmp, r.l4_proto) {
            (true, _) => Proto::Icmp,
            (false, 6) => Proto::Tcp,
            _ => Proto::Udp,
        };
        prop_assert_eq!(ev.proto, proto);
        prop_assert_eq!(ev.tcp_flags.map(|f| f.0), (proto == Proto::Tcp).then_some(r.tcp_flags));
        prop_assert_eq!(ev.vlan, (r.flags & flags::VLAN != 0).then_some(r.vlan));
        let foreign = ev.hook == Hook::Drop && r.netns != 0 && r.netns != OWN_NETNS;
        let want_iface = if foreign {
            format!("netns{}:if{}", r.netns, r.header.ifindex)
        } else if r.header.ifindex == 0 {
            "-".to_owned()
        } else {
            t.lookup(r.header.ifindex).name
        };
        prop_assert_eq!(&ev.iface.name, &want_iface);
        if let Some(d) = &ev.drop {
            prop_assert_eq!(d.reason_code, r.drop_reason);
            prop_assert_eq!(d.netns, r.netns);
        }
        match (&ev.dns, r.flags & flags::DNS != 0, &case.qname) {
            (None, false, _) => {}
            (Some(d), true, Some(name)) => {
                prop_assert_eq!(d.id, u16::from_be_bytes([r.dns[0], r.dns[1]]));
                prop_assert_eq!(d.qname.as_deref(), Some(name.as_str()));
            }
            // Random bytes: DNS facts exactly when the copy holds at least a header.
            (d, true, None) => prop_assert_eq!(
                d.is_some(),
                usize::from(r.dns_len).min(DNS_CAPTURE_LEN) >= 12
            ),
            (d, has_flag, _) => {
                return Err(TestCaseError::fail(format!(
                    "dns {d:?} with flag {has_flag} for {r:?}"
                )));
            }
        }
        Ok(())
    }
);

/// A DNS table record with random field values: the why, the hops (valid hooks), the
/// addresses, and a question built from random labels.
#[derive(Clone, Debug)]
struct DnsCase {
    raw: RawDnsRecord,
    qname: Option<String>,
}

fn hop() -> impl Strategy<Value = DnsHop> {
    (
        any::<u64>(),
        prop_oneof![Just(0u32), 1..8u32, any::<u32>()],
        prop_oneof![
            Just(hook::TC_INGRESS),
            Just(hook::TC_EGRESS),
            Just(hook::KFREE_SKB)
        ],
        any::<u8>(),
        any::<u16>(),
    )
        .prop_map(|(ts_ns, ifindex, hook, form, vlan)| DnsHop {
            ts_ns,
            ifindex,
            hook,
            form,
            vlan,
        })
}

fn dns_case() -> impl Strategy<Value = DnsCase> {
    let key = (
        prop_oneof![Just(4u8), Just(6u8)],
        addr16(),
        any::<u16>(),
        any::<u16>(),
    );
    let entry = (
        (any::<u64>(), any::<u64>(), any::<u64>()),
        (1u8..=3, any::<u8>(), any::<u8>(), any::<u8>(), any::<u16>()),
        (
            any::<u8>(),
            any::<u8>(),
            any::<u8>(),
            any::<u16>(),
            any::<u16>(),
        ),
        (addr16(), addr16(), any::<u16>(), any::<u16>()),
        (
            any::<u32>(),
            prop_oneof![Just(0u32), Just(OWN_NETNS), any::<u32>()],
            any::<u64>(),
        ),
        proptest::array::uniform10(hop()),
        (labels(DNS_QUESTION_LEN - 4), any::<u16>(), any::<u8>()),
    );
    (1u8..=7, key, entry).prop_map(
        |(
            why,
            (ip_version, client, port, id),
            (
                (first_ns, last_ns, done_ns),
                (state, origin, nhops, omitted, flags),
                (rcode, epoch, icmp_proto, ancount, icmp),
                (service, server, service_port, server_port),
                (drop_reason, drop_netns, drop_location),
                hops,
                (ls, qtype, qlen_noise),
            ),
        )| {
            let (q, name) = question(&ls, qtype);
            let mut question = [0u8; DNS_QUESTION_LEN];
            for (d, s) in question.iter_mut().zip(&q) {
                *d = *s;
            }
            // Usually the length of the question; sometimes cut, sometimes past the array.
            let qlen = match qlen_noise % 4 {
                0 => qlen_noise,
                _ => q.len() as u8,
            };
            let whole = usize::from(qlen) >= q.len();
            DnsCase {
                raw: RawDnsRecord {
                    header: EventHeader {
                        kind: kind::DNS,
                        hook: 0,
                        _pad: [0; 2],
                        ifindex: 0,
                        ts_ns: last_ns,
                    },
                    key: DnsKey {
                        client,
                        port,
                        id,
                        ip_version,
                        _pad: [0; 3],
                    },
                    why,
                    _pad: [0; 7],
                    entry: DnsEntry {
                        first_ns,
                        last_ns,
                        done_ns,
                        state,
                        origin,
                        nhops,
                        omitted,
                        flags,
                        qtype,
                        rcode,
                        epoch,
                        qlen,
                        icmp_proto,
                        ancount,
                        icmp,
                        service,
                        server,
                        service_port,
                        server_port,
                        drop_reason,
                        drop_netns,
                        _pad: 0,
                        drop_location,
                        hops,
                        question,
                    },
                },
                qname: whole.then_some(name),
            }
        },
    )
}

target!(
    /// Well-formed DNS-table records decode to their sightings: one event per recorded hop,
    /// addresses and ports from the key and the entry, the question's name.
    fuzz_decode_dns_record_fields,
    dns_case(),
    |case: DnsCase| {
        let r = case.raw;
        let e = &r.entry;
        let t = ifaces();
        let got = match decode_record(&bytes_of(&r), &t, OWN_NETNS, &NoSymbols) {
            Ok(Record::Dns(got)) => got,
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        // The sweeper's entry point agrees.
        let why = got.why;
        let swept = decode_entry(why, &r.key, e, &t, OWN_NETNS, &NoSymbols);
        prop_assert_eq!(swept.as_ref(), Ok(&got));
        prop_assert_eq!(got.events.len(), usize::from(e.nhops).min(DNS_MAX_HOPS));
        prop_assert_eq!(got.open, e.state == dns_state::OPEN);
        prop_assert_eq!(got.first_ns, e.first_ns);
        prop_assert_eq!(got.summarized.is_some(), e.flags & dns_flags::SUMMARIZED != 0);
        if let Some(s) = got.summarized {
            prop_assert_eq!(s.latency_ns, e.done_ns.saturating_sub(e.first_ns));
        }
        let client = ip(r.key.ip_version, r.key.client);
        let far = [
            (ip(r.key.ip_version, e.service), e.service_port),
            (ip(r.key.ip_version, e.server), e.server_port),
        ];
        for (ev, h) in got.events.iter().zip(&e.hops) {
            sane_event(ev)?;
            prop_assert_eq!(ev.ts_ns, h.ts_ns);
            let ends = [(ev.src, ev.sport), (ev.dst, ev.dport)];
            prop_assert!(
                ends.contains(&(client, r.key.port))
                    && (far.contains(&ends[0]) || far.contains(&ends[1])),
                "{ev:?}"
            );
            let d = ev.dns.as_ref().ok_or_else(|| TestCaseError::fail("no dns"))?;
            prop_assert_eq!(d.id, r.key.id);
            // The name when the question was copied whole, none when it was cut.
            prop_assert_eq!(&d.qname, &case.qname);
        }
        // An unknown reason or hook is an error, not a guess.
        let mut bad = r;
        bad.why = 0;
        prop_assert_eq!(
            decode_dns(&bad, &t, OWN_NETNS, &NoSymbols),
            Err(DecodeError::DnsWhy(0))
        );
        if e.nhops > 0 {
            let mut bad = r;
            bad.entry.hops[0].hook = 0;
            let refused = matches!(
                decode_dns(&bad, &t, OWN_NETNS, &NoSymbols),
                Err(DecodeError::Kind { .. })
            );
            prop_assert!(refused, "a hop with hook 0 was decoded");
        }
        Ok(())
    }
);
