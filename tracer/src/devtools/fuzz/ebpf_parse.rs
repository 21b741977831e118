//! The eBPF programs' packet parser (`tracer-ebpf/src/parse.rs`, `parse_ip`), compiled for the
//! host and run over a byte-slice [`PacketReader`]. The file is included as it is: the kernel
//! build is untouched. Properties: no panic (overflow checks on), every read the parser makes
//! is answered from within the slice or refused, the L4 header it reports lies within the
//! packet, and well-formed IPv4/IPv6 (with extension headers) UDP/TCP/ICMP packets built here
//! parse back to their fields, also when cut anywhere after their L4 header's first bytes.

use std::cell::Cell;

use proptest::{collection::vec, prelude::*, test_runner::TestCaseError};

use super::{check, target};

#[allow(
    dead_code,
    unreachable_pub,
    reason = "the eBPF parser as it is: items the programs use beyond parse_ip"
)]
#[path = "../../../../tracer-ebpf/src/parse.rs"]
mod ebpf;

use ebpf::{
    ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, MAX_IPV6_EXT,
    PacketReader, Parsed, parse_ip,
};

/// Reads from a byte slice like `bpf_skb_load_bytes`: the whole value or nothing.
struct SliceReader<'a> {
    bytes: &'a [u8],
    reads: Cell<u32>,
    /// One past the last byte any successful read returned.
    furthest: Cell<usize>,
}

impl<'a> SliceReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            reads: Cell::new(0),
            furthest: Cell::new(0),
        }
    }
}

impl PacketReader for SliceReader<'_> {
    fn read<T: Copy>(&self, off: u32) -> Option<T> {
        self.reads.set(self.reads.get() + 1);
        // parse.rs reads byte arrays and repr(C) structs of byte arrays only.
        assert_eq!(std::mem::align_of::<T>(), 1, "a read of a non-byte type");
        let start = usize::try_from(off).ok()?;
        let end = start.checked_add(std::mem::size_of::<T>())?;
        let src = self.bytes.get(start..end)?;
        self.furthest.set(self.furthest.get().max(end));
        // SAFETY: `src` holds size_of::<T>() bytes; T has alignment 1 (checked above) and is made
        // of u8 (parse.rs's header types), for which every bit pattern is valid.
        Some(unsafe { std::ptr::read_unaligned(src.as_ptr().cast::<T>()) })
    }
}

/// Reads one parse makes at most: L3 header, the IPv6 extension headers, the L4 header.
const MAX_READS: u32 = 2 + MAX_IPV6_EXT as u32;

/// Parses and checks what holds for any input; `l3` is where the IP header starts.
fn parse_checked(bytes: &[u8], l3: u32, ethertype: u16) -> Result<Option<Parsed>, TestCaseError> {
    let r = SliceReader::new(bytes);
    let p = parse_ip(&r, l3, ethertype);
    check(r.reads.get() <= MAX_READS, || {
        format!("{} reads", r.reads.get())
    })?;
    check(r.furthest.get() <= bytes.len(), || {
        "read past the slice".into()
    })?;
    let Some(p) = p else { return Ok(None) };
    check(
        matches!((p.ip_version, ethertype), (4, ETH_P_IP) | (6, ETH_P_IPV6)),
        || format!("version {} for ethertype {ethertype:#x}", p.ip_version),
    )?;
    check(
        matches!(
            p.l4_proto,
            IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP | IPPROTO_ICMPV6
        ),
        || format!("L4 protocol {}", p.l4_proto),
    )?;
    // The L4 header starts after the IP header and its first bytes (ports, type) were in the
    // packet; the payload offset is at most the longest L4 header past them.
    let min_ip = if p.ip_version == 4 { 20 } else { 40 };
    let furthest = u32::try_from(r.furthest.get()).unwrap_or(u32::MAX);
    check(
        furthest >= l3 + min_ip + 2
            && p.payload_off > l3 + min_ip
            && p.payload_off <= furthest + 60,
        || {
            format!(
                "payload offset {} (l3 {l3}, read up to {furthest}, len {})",
                p.payload_off,
                bytes.len()
            )
        },
    )?;
    Ok(Some(p))
}

target!(
    /// Random bytes at a random L3 offset with a random (mostly IP) ethertype.
    fuzz_ebpf_parse_random_packets,
    (
        vec(any::<u8>(), 0..200),
        0u32..80,
        prop_oneof![Just(ETH_P_IP), Just(ETH_P_IPV6), any::<u16>()],
        any::<u8>(),
    ),
    |(mut bytes, l3, ethertype, version): (Vec<u8>, u32, u16, u8)| {
        // Half the time, a version nibble that matches the ethertype.
        if version % 2 == 0
            && let Some(b) = bytes.get_mut(l3 as usize)
        {
            let v = if ethertype == ETH_P_IPV6 { 6 } else { 4 };
            *b = (v << 4) | (*b & 0x0f);
        }
        parse_checked(&bytes, l3, ethertype).map(|_| ())
    }
);

/// A packet built here and the fields it must parse to.
#[derive(Clone, Debug)]
struct Packet {
    bytes: Vec<u8>,
    l3: u32,
    ethertype: u16,
    want: Want,
    /// Bytes needed for a parse: the end of the L4 header's part the parser reads.
    needed: usize,
    /// A later fragment (no L4 header): must not parse.
    later_fragment: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Want {
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
    ip_version: u8,
    l4_proto: u8,
    tcp_flags: u8,
    payload_off: u32,
    ip_len: u32,
}

fn got(p: &Parsed) -> Want {
    Want {
        saddr: p.saddr,
        daddr: p.daddr,
        sport: p.sport,
        dport: p.dport,
        ip_version: p.ip_version,
        l4_proto: p.l4_proto,
        tcp_flags: p.tcp_flags,
        payload_off: p.payload_off,
        ip_len: p.ip_len,
    }
}

/// The L4 part: protocol (before v4/v6 ICMP is chosen), header bytes, fields, bytes the parser
/// reads.
#[derive(Clone, Debug)]
enum L4 {
    Udp {
        sport: u16,
        dport: u16,
    },
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        opt_words: u8,
    },
    Icmp {
        ty: u8,
        code: u8,
    },
}

fn l4() -> impl Strategy<Value = L4> {
    prop_oneof![
        (any::<u16>(), any::<u16>()).prop_map(|(sport, dport)| L4::Udp { sport, dport }),
        (any::<u16>(), any::<u16>(), any::<u8>(), 0u8..=10).prop_map(
            |(sport, dport, flags, opt_words)| L4::Tcp {
                sport,
                dport,
                flags,
                opt_words
            }
        ),
        (any::<u8>(), any::<u8>()).prop_map(|(ty, code)| L4::Icmp { ty, code }),
    ]
}

/// The L4 header bytes, (proto, sport, dport, flags) as parse_ip reports them, and how many
/// of its bytes the parser reads.
fn l4_bytes(l4: &L4, v6: bool) -> (Vec<u8>, (u8, u16, u16, u8), usize) {
    match *l4 {
        L4::Udp { sport, dport } => {
            let mut h = sport.to_be_bytes().to_vec();
            h.extend_from_slice(&dport.to_be_bytes());
            h.extend_from_slice(&[0, 8, 0, 0]);
            (h, (IPPROTO_UDP, sport, dport, 0), 4)
        }
        L4::Tcp {
            sport,
            dport,
            flags,
            opt_words,
        } => {
            let mut h = sport.to_be_bytes().to_vec();
            h.extend_from_slice(&dport.to_be_bytes());
            h.extend_from_slice(&[0; 8]);
            h.push((5 + opt_words) << 4);
            h.push(flags);
            h.extend_from_slice(&[0; 6]);
            h.extend(std::iter::repeat_n(1u8, usize::from(opt_words) * 4));
            (h, (IPPROTO_TCP, sport, dport, flags), 14)
        }
        L4::Icmp { ty, code } => {
            let proto = if v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP };
            (
                vec![ty, code, 0, 0, 0, 0, 0, 0],
                (proto, u16::from(code), 0, ty),
                2,
            )
        }
    }
}

fn packet() -> impl Strategy<Value = Packet> {
    let v4 = (
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
        0u8..=10,
        any::<bool>(),
        0u16..4,
    );
    let v6 = (
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        vec(
            (prop_oneof![Just(0u8), Just(43), Just(60), Just(44)], 0u8..3),
            0..=MAX_IPV6_EXT,
        ),
        0u16..4,
    );
    (
        prop_oneof![Just(0usize), Just(14), Just(18), 0usize..40],
        any::<bool>(),
        v4,
        v6,
        l4(),
        vec(any::<u8>(), 0..64),
    )
        .prop_map(|(l3, is_v6, v4, v6, l4, payload)| {
            let mut bytes = vec![0xeeu8; l3];
            let (l4h, (proto, sport, dport, flags), l4_read) = l4_bytes(&l4, is_v6);
            let l4_len = l4h.len();
            let mut later_fragment = false;
            let (ip_version, saddr, daddr, ip_hdr_len, ip_len, ethertype) = if !is_v6 {
                let (s, d, opt_words, df, frag_kind) = v4;
                let ihl = 5 + opt_words;
                let hdr_len = usize::from(ihl) * 4;
                let tot = (hdr_len + l4_len + payload.len()) as u16;
                // Fragment offset non-zero one time in four: a later fragment.
                let frag_off: u16 = if frag_kind == 0 { 185 } else { 0 };
                later_fragment = frag_off != 0;
                let frag = frag_off | if df { 0x4000 } else { 0 };
                bytes.push(0x40 | ihl);
                bytes.push(0);
                bytes.extend_from_slice(&tot.to_be_bytes());
                bytes.extend_from_slice(&[0x12, 0x34]);
                bytes.extend_from_slice(&frag.to_be_bytes());
                bytes.push(64);
                bytes.push(proto);
                bytes.extend_from_slice(&[0, 0]);
                bytes.extend_from_slice(&s);
                bytes.extend_from_slice(&d);
                bytes.extend(std::iter::repeat_n(1u8, usize::from(opt_words) * 4));
                let mut sa = [0u8; 16];
                sa[..4].copy_from_slice(&s);
                let mut da = [0u8; 16];
                da[..4].copy_from_slice(&d);
                (4u8, sa, da, hdr_len, u32::from(tot), ETH_P_IP)
            } else {
                let (s, d, exts, frag_kind) = v6;
                let mut ext_bytes = Vec::new();
                // Built back to front: each header names the one after it.
                let mut next = proto;
                for (ty, len) in exts.iter().rev() {
                    let mut h = if *ty == 44 {
                        // Fragment header: offset non-zero one time in four.
                        let off: u16 = if frag_kind == 0 { 0x0008 } else { 0 };
                        later_fragment |= off != 0;
                        let mut f = vec![next, 0];
                        f.extend_from_slice(&off.to_be_bytes());
                        f.extend_from_slice(&[0, 0, 0, 1]);
                        f
                    } else {
                        let mut o = vec![next, *len];
                        o.extend(std::iter::repeat_n(0u8, usize::from(*len) * 8 + 6));
                        o
                    };
                    h.append(&mut ext_bytes);
                    ext_bytes = h;
                    next = *ty;
                }
                let first_next = next;
                let payload_len = (ext_bytes.len() + l4_len + payload.len()) as u16;
                bytes.extend_from_slice(&[0x60, 0, 0, 0]);
                bytes.extend_from_slice(&payload_len.to_be_bytes());
                bytes.push(first_next);
                bytes.push(64);
                bytes.extend_from_slice(&s);
                bytes.extend_from_slice(&d);
                let hdr_len = 40 + ext_bytes.len();
                bytes.extend_from_slice(&ext_bytes);
                (6u8, s, d, hdr_len, u32::from(payload_len) + 40, ETH_P_IPV6)
            };
            let l4_off = l3 + ip_hdr_len;
            bytes.extend_from_slice(&l4h);
            bytes.extend_from_slice(&payload);
            Packet {
                bytes,
                l3: l3 as u32,
                ethertype,
                want: Want {
                    saddr,
                    daddr,
                    sport,
                    dport,
                    ip_version,
                    l4_proto: proto,
                    tcp_flags: flags,
                    payload_off: (l4_off + l4_len) as u32,
                    ip_len,
                },
                needed: l4_off + l4_read,
                later_fragment,
            }
        })
}

target!(
    /// Built packets parse to their fields (later fragments not at all), and every cut of
    /// them either does not parse or parses to the same fields.
    fuzz_ebpf_parse_built_packets,
    (packet(), any::<prop::sample::Index>()),
    |(p, cut): (Packet, prop::sample::Index)| {
        let parsed = parse_checked(&p.bytes, p.l3, p.ethertype)?;
        if p.later_fragment {
            prop_assert!(parsed.is_none(), "a later fragment parsed");
            return Ok(());
        }
        let parsed = parsed.ok_or_else(|| TestCaseError::fail("well-formed packet refused"))?;
        prop_assert_eq!(&got(&parsed), &p.want);
        prop_assert!(parsed.payload_off as usize <= p.bytes.len());
        let cut = cut.index(p.bytes.len() + 1);
        let part = p.bytes.get(..cut).unwrap_or_default();
        match parse_checked(part, p.l3, p.ethertype)? {
            Some(q) => {
                prop_assert!(cut >= p.needed, "parsed from {} of {} bytes", cut, p.needed);
                prop_assert_eq!(&got(&q), &p.want);
            }
            None => prop_assert!(cut < p.needed, "cut at {} of {} refused", cut, p.needed),
        }
        Ok(())
    }
);
