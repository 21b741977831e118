//! Pipeline stage 2, decode: ring-buffer records → typed [`PacketEvent`]s. Every record is length-checked before it is
//! read; a short or unknown record is an error the caller counts and logs, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub mod dns;
pub mod event;
pub mod record;
pub mod values;

use tracer_common::{PacketEvent as RawEvent, flags, hook, kind};

#[cfg(test)]
pub use crate::capture::kernel::NoSymbols;
pub use crate::capture::kernel::Symbols;

use crate::{
    capture::iface::IfaceTable,
    decode::event::{DropInfo, Hook, IcmpKind, Iface, IfaceKind, PacketEvent, Proto, TcpFlags},
};

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is shorter than the wire struct.
    #[error("record of {got} bytes, expected {want}")]
    Short {
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        want: usize,
    },
    /// Unknown record kind or hook.
    #[error("unknown record kind {kind} / hook {hook}")]
    Kind {
        /// The kind byte.
        kind: u8,
        /// The hook byte.
        hook: u8,
    },
    /// IP version other than 4 or 6.
    #[error("bad IP version {0}")]
    IpVersion(u8),
    /// Unsupported L4 protocol.
    #[error("unsupported L4 protocol {0}")]
    Proto(u8),
    /// A DNS table record with an unknown reason code.
    #[error("unknown DNS record reason {0}")]
    DnsWhy(u8),
}

/// One ring-buffer record, decoded.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// A packet seen at a tc hook or freed as a drop.
    Packet(PacketEvent),
    /// A DNS query handed over whole by the kernel's DNS table.
    Dns(record::DnsFlowRecord),
}

/// Decodes one ring-buffer record of any kind.
pub fn decode_record(
    bytes: &[u8],
    ifaces: &IfaceTable,
    own_netns: u32,
    symbols: &dyn Symbols,
) -> Result<Record, DecodeError> {
    let Some(&k) = bytes.first() else {
        return Err(DecodeError::Short {
            got: 0,
            want: std::mem::size_of::<tracer_common::EventHeader>(),
        });
    };
    if k == kind::DNS {
        let raw = record::read_dns_record(bytes)?;
        return record::decode_dns(&raw, ifaces, own_netns, symbols).map(Record::Dns);
    }
    let raw = read_record(bytes)?;
    decode(&raw, ifaces, own_netns, symbols).map(Record::Packet)
}

/// Copies a record out of ring-buffer bytes, checking its length.
pub fn read_record(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let want = std::mem::size_of::<RawEvent>();
    if bytes.len() < want {
        return Err(DecodeError::Short {
            got: bytes.len(),
            want,
        });
    }
    // SAFETY: the length was checked; RawEvent is repr(C) plain integers (any bit pattern is
    // valid) and read_unaligned copes with the ring buffer's 8-byte alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawEvent>()) })
}

/// An address from its 16-byte wire slot (IPv4 in the first 4 bytes).
pub fn addr(version: u8, raw: [u8; 16]) -> Result<IpAddr, DecodeError> {
    match version {
        4 => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        6 => Ok(IpAddr::V6(Ipv6Addr::from(raw))),
        v => Err(DecodeError::IpVersion(v)),
    }
}

/// An address in the kernel programs' form, the inverse of [`addr`]: IPv4 in the first 4
/// bytes, the rest zero.
pub fn wire_addr(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => {
            let [a0, a1, a2, a3] = a.octets();
            [a0, a1, a2, a3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        }
        IpAddr::V6(a) => a.octets(),
    }
}

/// Name of device `ifindex` inside a pod's namespace, as `ip link` names a veth's end: after
/// the host side of the pod's veth (`if2@eni54dcd3d4f3b`).
pub fn pod_device_name(ifindex: u32, host_veth: &str) -> String {
    format!("if{ifindex}@{host_veth}")
}

/// Whether a device name is one of another namespace's devices: `netns<inode>:if<n>` (see
/// [`decode`]) or a pod's ([`pod_device_name`]).
pub fn is_other_netns_device(name: &str) -> bool {
    name.starts_with("netns")
        || name
            .strip_prefix("if")
            .and_then(|rest| rest.split_once('@'))
            .is_some_and(|(n, veth)| {
                !n.is_empty() && !veth.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
            })
}

/// The interface of a sighting: a device of another namespace (a pod's, seen by the drop
/// program) is named by namespace and index, since its index means nothing here.
fn iface_of(ifaces: &IfaceTable, ifindex: u32, drop_netns: Option<u32>, own_netns: u32) -> Iface {
    match drop_netns {
        Some(ns) if ns != 0 && ns != own_netns => Iface {
            ifindex,
            name: format!("netns{ns}:if{ifindex}"),
            kind: IfaceKind::Other,
            vlan: None,
        },
        _ if ifindex == 0 => Iface {
            ifindex: 0,
            name: "-".into(),
            kind: IfaceKind::Other,
            vlan: None,
        },
        _ => ifaces.lookup(ifindex),
    }
}

/// Turns a raw record into a typed event.
pub fn decode(
    raw: &RawEvent,
    ifaces: &IfaceTable,
    own_netns: u32,
    symbols: &dyn Symbols,
) -> Result<PacketEvent, DecodeError> {
    let h = raw.header;
    let ev_hook = match (h.kind, h.hook) {
        (kind::PACKET, hook::TC_INGRESS) => Hook::Ingress,
        (kind::PACKET, hook::TC_EGRESS) => Hook::Egress,
        (kind::DROP, hook::KFREE_SKB) => Hook::Drop,
        (kind, hook) => return Err(DecodeError::Kind { kind, hook }),
    };
    let icmp_error = raw.flags & flags::ICMP_ERROR != 0;
    let proto = if icmp_error {
        Proto::Icmp
    } else {
        match raw.l4_proto {
            6 => Proto::Tcp,
            17 => Proto::Udp,
            p => return Err(DecodeError::Proto(p)),
        }
    };
    let iface = iface_of(
        ifaces,
        h.ifindex,
        (ev_hook == Hook::Drop).then_some(raw.netns),
        own_netns,
    );
    let dns = if raw.flags & flags::DNS != 0 {
        let len = usize::from(raw.dns_len).min(raw.dns.len());
        raw.dns.get(..len).and_then(|b| dns::parse(b).ok())
    } else {
        None
    };
    let drop = (ev_hook == Hook::Drop).then(|| DropInfo {
        reason: symbols.reason(raw.drop_reason),
        reason_code: raw.drop_reason,
        location: symbols.location(raw.location),
        netns: raw.netns,
    });
    let [code, icmp_proto] = raw.icmp_inner.to_le_bytes();
    Ok(PacketEvent {
        ts_ns: h.ts_ns,
        hook: ev_hook,
        iface,
        proto,
        src: addr(raw.ip_version, raw.saddr)?,
        sport: raw.sport,
        dst: addr(raw.ip_version, raw.daddr)?,
        dport: raw.dport,
        tcp_flags: (raw.l4_proto == 6 && !icmp_error).then_some(TcpFlags(raw.tcp_flags)),
        icmp: icmp_error.then(|| IcmpKind::from_code(icmp_proto == 58, code)),
        vlan: (raw.flags & flags::VLAN != 0).then_some(raw.vlan),
        len: raw.pkt_len,
        dns,
        drop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::EventHeader;

    fn raw() -> RawEvent {
        let mut dns = [0u8; tracer_common::DNS_CAPTURE_LEN];
        let q = [
            0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'f', b'o', b'o', 0, 0, 1, 0, 1,
        ];
        dns[..q.len()].copy_from_slice(&q);
        let mut saddr = [0; 16];
        saddr[..4].copy_from_slice(&[198, 18, 1, 21]);
        let mut daddr = [0; 16];
        daddr[..4].copy_from_slice(&[198, 19, 0, 10]);
        RawEvent {
            header: EventHeader {
                kind: kind::PACKET,
                hook: hook::TC_INGRESS,
                _pad: [0; 2],
                ifindex: 7,
                ts_ns: 5,
            },
            netns: 0,
            drop_reason: 0,
            location: 0,
            saddr,
            daddr,
            pkt_len: 49,
            sport: 40000,
            dport: 53,
            ip_version: 4,
            l4_proto: 17,
            tcp_flags: 0,
            flags: flags::DNS,
            vlan: 0,
            dns_len: q.len() as u16,
            icmp_inner: 0,
            _pad: [0; 6],
            dns,
        }
    }

    fn bytes_of(r: &RawEvent) -> Vec<u8> {
        let p = (r as *const RawEvent).cast::<u8>();
        // SAFETY: test-only view of a repr(C) value as bytes.
        unsafe { std::slice::from_raw_parts(p, std::mem::size_of::<RawEvent>()) }.to_vec()
    }

    #[test]
    fn wire_addr_is_the_inverse_of_addr() {
        for ip in ["198.18.1.21", "fd00::21", "0.0.0.0", "255.255.255.255"] {
            let ip: IpAddr = ip.parse().unwrap();
            let version = if ip.is_ipv4() { 4 } else { 6 };
            assert_eq!(addr(version, wire_addr(ip)).unwrap(), ip);
        }
        assert_eq!(&wire_addr("1.2.3.4".parse().unwrap())[4..], &[0u8; 12]);
    }

    #[test]
    fn dns_query_record() {
        let r = read_record(&bytes_of(&raw())).expect("full record");
        let ev = decode(&r, &IfaceTable::default(), 1, &NoSymbols).expect("valid");
        assert_eq!(ev.hook, Hook::Ingress);
        assert_eq!(ev.iface.name, "if7");
        assert_eq!(ev.src.to_string(), "198.18.1.21");
        assert_eq!(ev.dport, 53);
        let dns = ev.dns.expect("dns decoded");
        assert_eq!(dns.id, 0xabcd);
        assert_eq!(dns.qname.as_deref(), Some("foo"));
    }

    #[test]
    fn truncated_and_garbage_records() {
        let b = bytes_of(&raw());
        for len in [0, 1, 15, 100, b.len() - 1] {
            assert!(matches!(
                read_record(&b[..len]),
                Err(DecodeError::Short { .. })
            ));
        }
        let mut r = raw();
        r.header.kind = 9;
        assert!(matches!(
            decode(&r, &IfaceTable::default(), 1, &NoSymbols),
            Err(DecodeError::Kind { .. })
        ));
        let mut r = raw();
        r.ip_version = 5;
        assert_eq!(
            decode(&r, &IfaceTable::default(), 1, &NoSymbols),
            Err(DecodeError::IpVersion(5))
        );
        let mut r = raw();
        r.l4_proto = 132;
        assert_eq!(
            decode(&r, &IfaceTable::default(), 1, &NoSymbols),
            Err(DecodeError::Proto(132))
        );
        // dns_len larger than the array is clamped, garbage DNS bytes give no dns facts.
        let mut r = raw();
        r.dns_len = 9999;
        r.dns = [0xff; tracer_common::DNS_CAPTURE_LEN];
        let ev = decode(&r, &IfaceTable::default(), 1, &NoSymbols).expect("decodes");
        assert!(ev.dns.is_some_and(|d| d.qname.is_none()));
    }

    #[test]
    fn drop_in_foreign_netns_and_unknown_reason() {
        let mut r = raw();
        r.header.kind = kind::DROP;
        r.header.hook = hook::KFREE_SKB;
        r.netns = 4026532999;
        r.drop_reason = 77777;
        r.location = 0xffff_ffff_8100_0000;
        let ev = decode(&r, &IfaceTable::default(), 1, &NoSymbols).expect("decodes");
        assert_eq!(ev.iface.name, "netns4026532999:if7");
        assert!(is_other_netns_device(&ev.iface.name));
        let pod = pod_device_name(2, "eni54dcd3d4f3b");
        assert_eq!(pod, "if2@eni54dcd3d4f3b");
        assert!(is_other_netns_device(&pod));
        for host in ["eth0", "eni54dcd3d4f3b", "ifb0", "if@x", "ifx@eth0", "if2@"] {
            assert!(!is_other_netns_device(host), "{host}");
        }
        let d = ev.drop.expect("drop facts");
        assert_eq!(d.reason, "UNKNOWN(77777)");
        assert_eq!(d.location, "0xffffffff81000000");
    }

    #[test]
    fn icmp_port_unreachable() {
        let mut r = raw();
        r.flags |= flags::ICMP_ERROR;
        r.l4_proto = 17;
        r.icmp_inner = 3 | (1 << 8);
        let ev = decode(&r, &IfaceTable::default(), 1, &NoSymbols).expect("decodes");
        assert_eq!(ev.proto, Proto::Icmp);
        assert_eq!(ev.icmp, Some(IcmpKind::PortUnreachable));
    }
}
