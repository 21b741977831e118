//! Header parsing shared by the tc and drop programs: IPv4/IPv6 (with extension headers),
//! UDP, TCP and ICMP, over any [`PacketReader`] (the skb, or kernel memory for drops). Every read
//! is bounds-checked by the reader; anything unexpected ends parsing with `None`.

use tracer_common::FlowKey;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const DNS_PORT: u16 = 53;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// IPv6 extension headers skipped before giving up.
pub const MAX_IPV6_EXT: usize = 4;

/// Addresses, ports and offsets of one parsed packet.
#[derive(Clone, Copy)]
pub struct Parsed {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub ip_version: u8,
    pub l4_proto: u8,
    pub tcp_flags: u8,
    /// Offset of the L4 payload from the start of the buffer being parsed.
    pub payload_off: u32,
    /// Length of the IP packet (from the IP header's length fields).
    pub ip_len: u32,
}

impl Parsed {
    #[inline(always)]
    pub fn is_dns(&self) -> bool {
        (self.l4_proto == IPPROTO_UDP || self.l4_proto == IPPROTO_TCP)
            && (self.sport == DNS_PORT || self.dport == DNS_PORT)
    }

    #[inline(always)]
    pub fn flow_key(&self) -> FlowKey {
        FlowKey {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            l4_proto: self.l4_proto,
            _pad: [0; 3],
        }
    }

    #[inline(always)]
    pub fn reverse_flow_key(&self) -> FlowKey {
        FlowKey {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            l4_proto: self.l4_proto,
            _pad: [0; 3],
        }
    }
}

/// The first 20 bytes of an IPv4 header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub csum: [u8; 2],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

/// An IPv6 fixed header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    pub vtc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub nexthdr: u8,
    pub hop_limit: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// The first 14 bytes of a TCP header (ports, seq, ack, data offset, flags).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpHead {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    pub doff: u8,
    pub flags: u8,
}

#[inline(always)]
pub fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Something that can copy bytes of a packet into a local value: the tc context
/// (`bpf_skb_load_bytes`) or a kernel pointer (`bpf_probe_read_kernel`).
pub trait PacketReader {
    /// Reads a `T` at `off` bytes from the start of the packet view.
    fn read<T: Copy>(&self, off: u32) -> Option<T>;
}

/// An IPv4 address in the 16-byte slot, written as one literal (no memset/memcpy calls).
#[inline(always)]
fn v4(a: [u8; 4]) -> [u8; 16] {
    [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// L3 facts before the L4 header is read.
struct L3 {
    saddr: [u8; 16],
    daddr: [u8; 16],
    ip_version: u8,
    l4_proto: u8,
    ip_len: u32,
    l4: u32,
}

#[inline(always)]
fn parse_l3<R: PacketReader>(r: &R, l3: u32, ethertype: u16) -> Option<L3> {
    if ethertype == ETH_P_IP {
        let ip: Ipv4Hdr = r.read(l3)?;
        if ip.ver_ihl >> 4 != 4 {
            return None;
        }
        // Later fragments carry no L4 header.
        if be16(ip.frag) & 0x1fff != 0 {
            return None;
        }
        let ihl = u32::from(ip.ver_ihl & 0x0f) * 4;
        if ihl < 20 {
            return None;
        }
        return Some(L3 {
            saddr: v4(ip.saddr),
            daddr: v4(ip.daddr),
            ip_version: 4,
            l4_proto: ip.proto,
            ip_len: u32::from(be16(ip.tot_len)),
            l4: l3 + ihl,
        });
    }
    if ethertype != ETH_P_IPV6 {
        return None;
    }
    let ip: Ipv6Hdr = r.read(l3)?;
    let mut next = ip.nexthdr;
    let mut off = l3 + 40;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                let ext: [u8; 2] = r.read(off)?;
                next = ext[0];
                off += (u32::from(ext[1]) + 1) * 8;
            }
            // Fragment header: 8 bytes; only the first fragment has the L4 header.
            44 => {
                let frag: [u8; 4] = r.read(off)?;
                if be16([frag[2], frag[3]]) & 0xfff8 != 0 {
                    return None;
                }
                next = frag[0];
                off += 8;
            }
            _ => break,
        }
    }
    Some(L3 {
        saddr: ip.saddr,
        daddr: ip.daddr,
        ip_version: 6,
        l4_proto: next,
        ip_len: u32::from(be16(ip.payload_len)) + 40,
        l4: off,
    })
}

/// Parses an IP packet starting at `l3` as either version; fills L4 ports and TCP flags.
/// Returns `None` for anything that is not a first fragment of IPv4/IPv6 TCP/UDP/ICMP.
#[inline(always)]
pub fn parse_ip<R: PacketReader>(r: &R, l3: u32, ethertype: u16) -> Option<Parsed> {
    let h = parse_l3(r, l3, ethertype)?;
    let (sport, dport, tcp_flags, payload_off) = match h.l4_proto {
        IPPROTO_UDP => {
            let ports: [u8; 4] = r.read(h.l4)?;
            (
                be16([ports[0], ports[1]]),
                be16([ports[2], ports[3]]),
                0,
                h.l4 + 8,
            )
        }
        IPPROTO_TCP => {
            let tcp: TcpHead = r.read(h.l4)?;
            // A data offset below 5 words is not a TCP header (the stack drops it); taken as
            // is, the header itself would be read as payload (found by the fuzz tests).
            let words = u32::from(tcp.doff >> 4);
            if words < 5 {
                return None;
            }
            (
                be16(tcp.sport),
                be16(tcp.dport),
                tcp.flags,
                h.l4 + words * 4,
            )
        }
        // ICMP: type in tcp_flags, code in sport.
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let icmp: [u8; 2] = r.read(h.l4)?;
            (u16::from(icmp[1]), 0, icmp[0], h.l4 + 8)
        }
        _ => return None,
    };
    Some(Parsed {
        saddr: h.saddr,
        daddr: h.daddr,
        sport,
        dport,
        ip_version: h.ip_version,
        l4_proto: h.l4_proto,
        tcp_flags,
        payload_off,
        ip_len: h.ip_len,
    })
}

/// True for ICMP "destination unreachable" (v4 type 3, v6 type 1).
#[inline(always)]
pub fn is_icmp_unreachable(p: &Parsed) -> bool {
    (p.l4_proto == IPPROTO_ICMP && p.tcp_flags == 3)
        || (p.l4_proto == IPPROTO_ICMPV6 && p.tcp_flags == 1)
}
