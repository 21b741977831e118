//! Records of the kernel's DNS table ([`tracer_common::DnsRecord`]): one UDP query with every
//! sighting the kernel recorded for it, turned back into the typed [`PacketEvent`]s those
//! sightings were, so the correlator treats a query handed over whole exactly like one reported
//! packet by packet.

use std::net::IpAddr;

use tracer_common::{
    DnsEntry, DnsKey, DnsRecord as RawDnsRecord, dns_flags, dns_state, dns_why, hook, hop_form,
    kind, origin,
};

use super::{
    DecodeError, Symbols, addr,
    event::{DnsInfo, DropInfo, Hook, IcmpKind, PacketEvent, Proto, QType, Rcode},
};
use crate::capture::iface::IfaceTable;

/// Why the kernel handed a query over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Answered, and interesting (slow, truncated, a possible retry, `--answered flows`).
    Delivered,
    /// A packet of it was dropped.
    Dropped,
    /// An ICMP error came back.
    Icmp,
    /// The client sent it again.
    Resend,
    /// Another query reused its socket and id.
    Superseded,
    /// Read from the table by the sweeper.
    Swept,
    /// Its answer, already counted in a summary, was dropped inside the client afterwards.
    DroppedAfterSummary,
}

impl Why {
    fn from_raw(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            dns_why::DELIVERED => Self::Delivered,
            dns_why::DROPPED => Self::Dropped,
            dns_why::ICMP => Self::Icmp,
            dns_why::RESEND => Self::Resend,
            dns_why::SUPERSEDED => Self::Superseded,
            dns_why::SWEPT => Self::Swept,
            dns_why::DROPPED_AFTER_SUMMARY => Self::DroppedAfterSummary,
            other => return Err(DecodeError::DnsWhy(other)),
        })
    }
}

/// Where the client of a tracked query sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// A pod of this node.
    Pod,
    /// Another machine.
    Remote,
    /// This node's own stack (host network), or unknown.
    Host,
}

impl Origin {
    /// From the wire value (unknown values count as host).
    pub fn from_raw(v: u8) -> Self {
        match v {
            origin::POD => Self::Pod,
            origin::REMOTE => Self::Remote,
            _ => Self::Host,
        }
    }
}

/// The summary an answer was counted in, for taking it back out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summarized {
    /// Summary epoch.
    pub epoch: u8,
    /// Client address.
    pub client: IpAddr,
    /// Server after DNAT.
    pub server: IpAddr,
    /// Query type.
    pub qtype: u16,
    /// Response code.
    pub rcode: u8,
    /// Where the client sits.
    pub origin: Origin,
    /// Latency counted, ns.
    pub latency_ns: u64,
}

/// A decoded DNS table record.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsFlowRecord {
    /// Why it was handed over.
    pub why: Why,
    /// First sighting, ns.
    pub first_ns: u64,
    /// The entry was still open (no answer, no drop) when read.
    pub open: bool,
    /// Set when the answer had been counted in a summary.
    pub summarized: Option<Summarized>,
    /// Sightings not recorded (the entry was full).
    pub omitted: u8,
    /// The sightings, as packet events, in the order the kernel recorded them.
    pub events: Vec<PacketEvent>,
}

/// The question's name and type from the entry's wire copy (None where it was cut).
fn question(e: &DnsEntry) -> (Option<String>, Option<QType>) {
    let len = usize::from(e.qlen).min(e.question.len());
    let mut msg = Vec::with_capacity(12 + len);
    // A header with one question, so the message parser can read the name.
    msg.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    msg.extend_from_slice(e.question.get(..len).unwrap_or_default());
    let parsed = super::dns::parse(&msg).ok();
    let qname = parsed.as_ref().and_then(|p| p.qname.clone());
    let qtype = parsed
        .and_then(|p| p.qtype)
        .or((e.qtype != 0).then_some(QType(e.qtype)));
    (qname, qtype)
}

/// Copies a DNS record out of ring-buffer bytes, checking its length.
pub fn read_dns_record(bytes: &[u8]) -> Result<RawDnsRecord, DecodeError> {
    let want = std::mem::size_of::<RawDnsRecord>();
    if bytes.len() < want {
        return Err(DecodeError::Short {
            got: bytes.len(),
            want,
        });
    }
    // SAFETY: the length was checked; the record is repr(C) plain integers (any bit pattern is
    // valid) and read_unaligned copes with the ring buffer's 8-byte alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawDnsRecord>()) })
}

/// Turns a DNS table record into its sightings.
pub fn decode_dns(
    raw: &RawDnsRecord,
    ifaces: &IfaceTable,
    own_netns: u32,
    symbols: &dyn Symbols,
) -> Result<DnsFlowRecord, DecodeError> {
    if raw.header.kind != kind::DNS {
        return Err(DecodeError::Kind {
            kind: raw.header.kind,
            hook: raw.header.hook,
        });
    }
    decode_entry(
        Why::from_raw(raw.why)?,
        &raw.key,
        &raw.entry,
        ifaces,
        own_netns,
        symbols,
    )
}

/// Turns a DNS table entry (from a record, or read from the table by the sweeper) into its
/// sightings.
pub fn decode_entry(
    why: Why,
    key: &DnsKey,
    e: &DnsEntry,
    ifaces: &IfaceTable,
    own_netns: u32,
    symbols: &dyn Symbols,
) -> Result<DnsFlowRecord, DecodeError> {
    let client = addr(key.ip_version, key.client)?;
    let service = addr(key.ip_version, e.service)?;
    let server = addr(key.ip_version, e.server)?;
    let (qname, qtype) = question(e);
    let n = usize::from(e.nhops).min(e.hops.len());
    let mut events = Vec::with_capacity(n);
    for hop in e.hops.get(..n).unwrap_or_default() {
        let ev_hook = match hop.hook {
            hook::TC_INGRESS => Hook::Ingress,
            hook::TC_EGRESS => Hook::Egress,
            hook::KFREE_SKB => Hook::Drop,
            other => {
                return Err(DecodeError::Kind {
                    kind: kind::DNS,
                    hook: other,
                });
            }
        };
        let response = hop.form & hop_form::RESPONSE != 0;
        let is_icmp = hop.form & hop_form::ICMP != 0;
        let (far, far_port) = if hop.form & hop_form::TRANSLATED != 0 {
            (server, e.server_port)
        } else {
            (service, e.service_port)
        };
        // ICMP errors carry the quoted query's tuple, oriented like the request.
        let (src, sport, dst, dport) = if response && !is_icmp {
            (far, far_port, client, key.port)
        } else {
            (client, key.port, far, far_port)
        };
        let iface = super::iface_of(
            ifaces,
            hop.ifindex,
            (ev_hook == Hook::Drop).then_some(e.drop_netns),
            own_netns,
        );
        let answer = response && !is_icmp;
        let dns = DnsInfo {
            id: key.id,
            response: answer,
            rcode: answer.then_some(Rcode(e.rcode)),
            truncated: answer && e.flags & dns_flags::TRUNCATED != 0,
            qname: qname.clone(),
            qtype,
            answers: if answer { e.ancount } else { 0 },
        };
        let drop = (ev_hook == Hook::Drop).then(|| DropInfo {
            reason: symbols.reason(e.drop_reason),
            reason_code: e.drop_reason,
            location: symbols.location(e.drop_location),
            netns: e.drop_netns,
        });
        // Only destination-unreachable errors are tracked: the type is implied.
        let icmp =
            is_icmp.then(|| IcmpKind::from_code(e.icmp_proto == 58, e.icmp.to_be_bytes()[1]));
        events.push(PacketEvent {
            ts_ns: hop.ts_ns,
            hook: ev_hook,
            iface,
            proto: if is_icmp { Proto::Icmp } else { Proto::Udp },
            src,
            sport,
            dst,
            dport,
            tcp_flags: None,
            icmp,
            vlan: (hop.vlan != 0).then_some(hop.vlan),
            len: 0,
            dns: Some(dns),
            drop,
        });
    }
    let summarized = (e.flags & dns_flags::SUMMARIZED != 0).then_some(Summarized {
        epoch: e.epoch,
        client,
        server,
        qtype: e.qtype,
        rcode: e.rcode,
        origin: Origin::from_raw(e.origin),
        latency_ns: e.done_ns.saturating_sub(e.first_ns),
    });
    Ok(DnsFlowRecord {
        why,
        first_ns: e.first_ns,
        open: e.state == dns_state::OPEN,
        summarized,
        omitted: e.omitted,
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::NoSymbols;
    use tracer_common::{DNS_MAX_HOPS, DNS_QUESTION_LEN, DnsHop, EventHeader};

    fn question_bytes(name: &str, qtype: u16) -> [u8; DNS_QUESTION_LEN] {
        let mut q = [0u8; DNS_QUESTION_LEN];
        let mut i = 0;
        for label in name.split('.') {
            q[i] = label.len() as u8;
            q[i + 1..i + 1 + label.len()].copy_from_slice(label.as_bytes());
            i += 1 + label.len();
        }
        q[i + 1..i + 3].copy_from_slice(&qtype.to_be_bytes());
        q[i + 3..i + 5].copy_from_slice(&1u16.to_be_bytes());
        q
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut r = [0; 16];
        r[..4].copy_from_slice(&a);
        r
    }

    /// Client 198.18.1.21:40000 → kube-dns 198.19.0.10:53, DNATed to 198.18.1.30:53, answered.
    fn record() -> RawDnsRecord {
        let hop = |ts, ifindex, h, form| DnsHop {
            ts_ns: ts,
            ifindex,
            hook: h,
            form,
            vlan: 0,
        };
        let mut hops = [DnsHop::default(); DNS_MAX_HOPS];
        hops[0] = hop(100, 7, hook::TC_INGRESS, 0);
        hops[1] = hop(150, 9, hook::TC_EGRESS, hop_form::TRANSLATED);
        hops[2] = hop(
            900,
            9,
            hook::TC_INGRESS,
            hop_form::TRANSLATED | hop_form::RESPONSE,
        );
        hops[3] = hop(1000, 7, hook::TC_EGRESS, hop_form::RESPONSE);
        RawDnsRecord {
            header: EventHeader {
                kind: kind::DNS,
                hook: 0,
                _pad: [0; 2],
                ifindex: 0,
                ts_ns: 1000,
            },
            key: DnsKey {
                client: v4([198, 18, 1, 21]),
                port: 40000,
                id: 0xabcd,
                ip_version: 4,
                _pad: [0; 3],
            },
            why: dns_why::DELIVERED,
            _pad: [0; 7],
            entry: DnsEntry {
                first_ns: 100,
                last_ns: 1000,
                done_ns: 1000,
                state: dns_state::DELIVERED,
                origin: origin::POD,
                nhops: 4,
                omitted: 0,
                flags: dns_flags::ANSWER,
                qtype: 1,
                rcode: 3,
                epoch: 0,
                qlen: 40,
                icmp_proto: 0,
                ancount: 0,
                icmp: 0,
                service: v4([198, 19, 0, 10]),
                server: v4([198, 18, 1, 30]),
                service_port: 53,
                server_port: 53,
                drop_reason: 0,
                drop_netns: 0,
                _pad: 0,
                drop_location: 0,
                hops,
                question: question_bytes("nosuch.default.svc.cluster.local", 1),
            },
        }
    }

    #[test]
    fn hops_become_the_packets_they_were() {
        let r = decode_dns(&record(), &IfaceTable::default(), 1, &NoSymbols).expect("decodes");
        assert_eq!(r.why, Why::Delivered);
        assert!(!r.open);
        let ev = &r.events;
        assert_eq!(ev.len(), 4);
        // Before DNAT: the ClusterIP; after: the replica; answers reversed.
        assert_eq!(
            (ev[0].src.to_string(), ev[0].dst.to_string(), ev[0].hook),
            ("198.18.1.21".into(), "198.19.0.10".into(), Hook::Ingress)
        );
        assert_eq!(ev[1].dst.to_string(), "198.18.1.30");
        assert_eq!(ev[2].src.to_string(), "198.18.1.30");
        assert_eq!(ev[3].src.to_string(), "198.19.0.10");
        assert_eq!(ev[3].dport, 40000);
        let d = ev[3].dns.as_ref().expect("dns facts");
        assert!(d.response);
        assert_eq!(d.rcode, Some(Rcode::NXDOMAIN));
        assert_eq!(d.qname.as_deref(), Some("nosuch.default.svc.cluster.local"));
        assert_eq!(d.qtype, Some(QType::A));
        assert!(!ev[0].dns.as_ref().expect("dns").response);
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        let mut r = record();
        r.key.ip_version = 7;
        assert_eq!(
            decode_dns(&r, &IfaceTable::default(), 1, &NoSymbols),
            Err(DecodeError::IpVersion(7))
        );
        let mut r = record();
        r.why = 99;
        assert_eq!(
            decode_dns(&r, &IfaceTable::default(), 1, &NoSymbols),
            Err(DecodeError::DnsWhy(99))
        );
        let mut r = record();
        r.entry.hops[1].hook = 42;
        assert!(decode_dns(&r, &IfaceTable::default(), 1, &NoSymbols).is_err());
        // Counts beyond the arrays are clamped.
        let mut r = record();
        r.entry.nhops = 200;
        r.entry.qlen = 255;
        r.entry.hops = [DnsHop {
            ts_ns: 1,
            ifindex: 1,
            hook: hook::TC_INGRESS,
            form: 0,
            vlan: 0,
        }; DNS_MAX_HOPS];
        let d = decode_dns(&r, &IfaceTable::default(), 1, &NoSymbols).expect("decodes");
        assert_eq!(d.events.len(), DNS_MAX_HOPS);
        let bytes = [0u8; 10];
        assert!(matches!(
            read_dns_record(&bytes),
            Err(DecodeError::Short { .. })
        ));
    }
}
