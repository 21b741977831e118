//! tc classifiers, one entry point per interface role and direction so the role costs nothing
//! per packet: pod veths (`tc_pod_in`: from the pod, `tc_pod_out`: toward it), uplinks, trunk
//! and branch ENIs (`tc_uplink_in`, `tc_uplink_out`) and other interfaces (`tc_other_in`,
//! `tc_other_out`).
//!
//! * UDP DNS goes through the kernel's DNS table (`dns.rs`): healthy queries never reach
//!   userspace one packet at a time.
//! * DNS over TCP, TCP control segments (SYN, SYN-ACK, RST), ICMP errors that no tracked query
//!   claims, and the first UDP packet of each pod egress tuple (from a pod, leaving through an
//!   uplink) and its first reply (into the node through an uplink, toward the pod) are reported
//!   one by one; later packets of a tracked tuple are aggregated in `FLOWS`.
//!
//! Every program returns `TC_ACT_UNSPEC` (`TCX_NEXT` under tcx): the tracer observes and never
//! decides a packet's fate, so the programs and filters after it (network-policy agents, Cilium,
//! Calico) still run. `TC_ACT_OK` would be `TCX_PASS` and end tc processing, switching their
//! policy off.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, TC_ACT_UNSPEC},
    helpers::generated::bpf_skb_load_bytes,
    macros::classifier,
    programs::TcContext,
};
use tracer_common::{
    DNS_CAPTURE_LEN, EventHeader, FlowStats, PacketEvent, counter, flags, flow_flags, hook, kind,
};

use crate::{
    dns::{self, At, Outcome, Role},
    maps::{EVENTS, Extra, FLOWS, count, count_seen, fill, note_loss, now_ns, submit_flags},
    parse::{
        ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, PacketReader, Parsed, TCP_ACK,
        TCP_RST, TCP_SYN, be16, is_icmp_unreachable, parse_ip,
    },
};

const ETH_HLEN: u32 = 14;

/// An empty program: the baseline the benchmarks compare against.
#[classifier]
pub fn tc_empty(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// Pod veth ingress: packets from the pod.
#[classifier]
pub fn tc_pod_in(ctx: TcContext) -> i32 {
    observe(&ctx, hook::TC_INGRESS, Role::Pod);
    TC_ACT_UNSPEC
}

/// Pod veth egress: packets toward the pod.
#[classifier]
pub fn tc_pod_out(ctx: TcContext) -> i32 {
    observe(&ctx, hook::TC_EGRESS, Role::Pod);
    TC_ACT_UNSPEC
}

/// Uplink, trunk or branch ENI ingress: packets from other machines.
#[classifier]
pub fn tc_uplink_in(ctx: TcContext) -> i32 {
    observe(&ctx, hook::TC_INGRESS, Role::Uplink);
    TC_ACT_UNSPEC
}

/// Uplink, trunk or branch ENI egress: packets leaving the node.
#[classifier]
pub fn tc_uplink_out(ctx: TcContext) -> i32 {
    observe(&ctx, hook::TC_EGRESS, Role::Uplink);
    TC_ACT_UNSPEC
}

/// Ingress of any other interface.
#[classifier]
pub fn tc_other_in(ctx: TcContext) -> i32 {
    observe(&ctx, hook::TC_INGRESS, Role::Other);
    TC_ACT_UNSPEC
}

/// Egress of any other interface.
#[classifier]
pub fn tc_other_out(ctx: TcContext) -> i32 {
    observe(&ctx, hook::TC_EGRESS, Role::Other);
    TC_ACT_UNSPEC
}

/// The program's `__sk_buff`.
#[inline(always)]
fn raw(ctx: &TcContext) -> *mut __sk_buff {
    ctx.as_ptr() as *mut __sk_buff
}

struct Skb<'a>(&'a TcContext);

impl PacketReader for Skb<'_> {
    /// Direct packet access when the bytes are in the linear area (headers nearly always are),
    /// `bpf_skb_load_bytes` otherwise.
    #[inline(always)]
    fn read<T: Copy>(&self, off: u32) -> Option<T> {
        let start = self.0.data();
        let end = self.0.data_end();
        let at = start + off as usize;
        if at + core::mem::size_of::<T>() <= end {
            // SAFETY: bounds checked against data_end just above; T is a byte array or a
            // repr(C) struct of byte arrays (alignment 1).
            return Some(unsafe { (at as *const T).read_unaligned() });
        }
        self.0.load::<T>(off as usize).ok()
    }
}

#[inline(always)]
fn observe(ctx: &TcContext, at_hook: u8, role: Role) {
    count_seen();
    let skb = Skb(ctx);
    // SAFETY: the context pointer is valid for the duration of the program.
    let sk: &__sk_buff = unsafe { &*raw(ctx) };
    let mut vlan: u16 = 0;
    let mut ev_flags: u8 = 0;
    if sk.vlan_present != 0 {
        vlan = (sk.vlan_tci & 0x0fff) as u16;
        ev_flags |= flags::VLAN;
    }
    let Some(ethertype) = skb.read::<[u8; 2]>(12) else {
        count(counter::TC_PARSE_ERROR);
        return;
    };
    let mut ethertype = be16(ethertype);
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q {
        // Tag still in the frame (no VLAN offload): the trunk ENI case.
        let Some(tag) = skb.read::<[u8; 4]>(14) else {
            count(counter::TC_PARSE_ERROR);
            return;
        };
        vlan = be16([tag[0], tag[1]]) & 0x0fff;
        ev_flags |= flags::VLAN;
        ethertype = be16([tag[2], tag[3]]);
        l3 += 4;
    }
    let Some(p) = parse_ip(&skb, l3, ethertype) else {
        return;
    };
    let at = At {
        ifindex: sk.ifindex,
        hook: at_hook,
        role,
        vlan,
    };

    if p.is_dns() {
        ev_flags |= flags::DNS;
        if p.l4_proto == IPPROTO_UDP {
            if dns::on_tc(ctx, &skb, &p, at, l3 + p.ip_len) == Outcome::Done {
                return;
            }
        } else {
            // DNS over TCP: report segments with payload and control segments, not bare ACKs.
            let has_payload = l3 + p.ip_len > p.payload_off;
            if !has_payload && p.tcp_flags & (TCP_SYN | TCP_RST) == 0 {
                return;
            }
        }
    } else if is_icmp_unreachable(&p) {
        ev_flags |= flags::ICMP_ERROR;
        emit_icmp(ctx, &skb, at, &p, vlan, ev_flags);
        return;
    } else if p.l4_proto == IPPROTO_TCP {
        let f = p.tcp_flags;
        let syn_only = f & (TCP_SYN | TCP_ACK) == TCP_SYN;
        let syn_ack = f & (TCP_SYN | TCP_ACK) == (TCP_SYN | TCP_ACK);
        if !(syn_only || syn_ack || f & TCP_RST != 0) {
            return;
        }
        ev_flags |= flags::FLOW;
    } else if p.l4_proto == IPPROTO_UDP {
        if !udp_first(&p, at) {
            return;
        }
        ev_flags |= flags::FLOW;
    } else {
        return;
    }
    emit(ctx, at, &p, l3, vlan, ev_flags);
}

/// Pod egress UDP: true for the packets worth a record — the first packet of a tuple from a pod
/// (pod veth ingress) or leaving the node (uplink egress), and the first reply of a tracked tuple
/// toward the pod (pod veth egress) or into the node (uplink ingress). The rest is aggregated.
#[inline(always)]
fn udp_first(p: &Parsed, at: At) -> bool {
    let request = match (at.role, at.hook) {
        (Role::Pod, hook::TC_INGRESS) | (Role::Uplink, hook::TC_EGRESS) => true,
        (Role::Pod, hook::TC_EGRESS) | (Role::Uplink, hook::TC_INGRESS) => false,
        _ => return false,
    };
    let now = now_ns();
    if request {
        let key = p.flow_key();
        let seen_here = if at.role == Role::Pod {
            flow_flags::REQUEST_AT_POD
        } else {
            flow_flags::REQUEST_AT_UPLINK
        };
        if let Some(stats) = FLOWS.get_ptr_mut(&key) {
            // SAFETY: map value pointer valid during the program; racing updates only lose
            // counts (or report a first packet at this hook twice, a duplicate the daemon
            // counts).
            unsafe {
                (*stats).last_ns = now;
                // Without SNAT the packet leaves the node with the key it had at the pod veth:
                // its first passage through the uplink is still news.
                if (*stats).flags & seen_here == 0 {
                    (*stats).flags |= seen_here;
                    return true;
                }
                (*stats).packets += 1;
                (*stats).bytes += u64::from(p.ip_len);
            }
            count(counter::FLOW_AGGREGATED);
            return false;
        }
        let stats = FlowStats {
            packets: 0,
            bytes: 0,
            last_ns: now,
            first_ns: now,
            flags: seen_here,
            _pad: 0,
        };
        if FLOWS.insert(&key, &stats, 0).is_err() {
            count(counter::FLOW_TABLE_FULL);
            note_loss(now);
        }
        return true;
    }
    let Some(stats) = FLOWS.get_ptr_mut(&p.reverse_flow_key()) else {
        return false;
    };
    let bit = if at.role == Role::Pod {
        flow_flags::REPLY_AT_POD
    } else {
        flow_flags::REPLY_AT_UPLINK
    };
    // SAFETY: map value pointer valid during the program; a racing reply may be reported twice,
    // which the daemon counts as a duplicate.
    unsafe {
        (*stats).last_ns = now;
        if (*stats).flags & bit != 0 {
            count(counter::FLOW_AGGREGATED);
            return false;
        }
        (*stats).flags |= bit;
    }
    true
}

/// The record header. `at` carries the interface index read at the program's start: the
/// context may not be read again through a pointer the compiler computed earlier (the verifier
/// refuses a modified context pointer).
#[inline(always)]
fn header(at: At) -> EventHeader {
    EventHeader {
        kind: kind::PACKET,
        hook: at.hook,
        _pad: [0; 2],
        ifindex: at.ifindex,
        ts_ns: now_ns(),
    }
}

/// Returns `n` (known to be in 1..=256) in a form the verifier can prove non-zero and bounded:
/// LLVM otherwise merges the range checks and the verifier sees 0..=255.
#[inline(always)]
pub fn verifier_len(n: u32) -> u32 {
    // black_box hides n's known range from LLVM so the mask and add survive to the verifier.
    ((core::hint::black_box(n).wrapping_sub(1)) & 0xff) + 1
}

/// Where the DNS message of a reported packet starts and how many bytes of it the packet holds.
#[derive(Clone, Copy)]
struct DnsSpan {
    off: u32,
    avail: u32,
}

impl DnsSpan {
    const NONE: Self = Self { off: 0, avail: 0 };

    #[inline(always)]
    fn of(p: &Parsed, end: u32) -> Self {
        let mut off = p.payload_off;
        if p.l4_proto == IPPROTO_TCP {
            off += 2; // length prefix of DNS over TCP
        }
        let avail = end.saturating_sub(off);
        Self { off, avail }
    }
}

#[inline(always)]
fn emit(ctx: &TcContext, at: At, p: &Parsed, l3: u32, vlan: u16, ev_flags: u8) {
    let dns = if ev_flags & flags::DNS != 0 {
        DnsSpan::of(p, l3 + p.ip_len)
    } else {
        DnsSpan::NONE
    };
    write_event(ctx, at, p, p.ip_len, vlan, ev_flags, dns, 0);
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn write_event(
    ctx: &TcContext,
    at: At,
    p: &Parsed,
    pkt_len: u32,
    vlan: u16,
    mut ev_flags: u8,
    dns: DnsSpan,
    icmp_inner: u16,
) {
    let Some(mut entry) = EVENTS.reserve::<PacketEvent>(0) else {
        count(counter::TC_RINGBUF_FULL);
        note_loss(now_ns());
        return;
    };
    let ev = entry.as_mut_ptr();
    let mut dns_len = dns.avail;
    if dns_len > DNS_CAPTURE_LEN as u32 {
        dns_len = DNS_CAPTURE_LEN as u32;
        ev_flags |= flags::DNS_TRUNCATED;
    }
    if dns_len > 0 && dns_len <= DNS_CAPTURE_LEN as u32 {
        // SAFETY: `ev` points at a reserved PacketEvent; dns_len is within 1..=256 bytes of
        // its `dns` array, which the verifier checks against the reservation.
        let ret = unsafe {
            bpf_skb_load_bytes(
                raw(ctx) as *const _,
                dns.off,
                (*ev).dns.as_mut_ptr() as *mut _,
                verifier_len(dns_len),
            )
        };
        if ret != 0 {
            dns_len = 0;
            ev_flags |= flags::DNS_TRUNCATED;
        }
    }
    let extra = Extra {
        header: header(at),
        netns: 0,
        drop_reason: 0,
        location: 0,
        pkt_len,
        flags: ev_flags,
        vlan,
        dns_len,
        icmp_inner,
    };
    // SAFETY: `ev` points at a reserved, writable PacketEvent; the tail of `dns` past
    // `dns_len` is left as is (userspace does not read it).
    unsafe { fill(ev, p, &extra) };
    entry.submit(submit_flags());
    count(counter::TC_EMITTED);
}

/// Reports an ICMP destination-unreachable with the quoted packet's tuple (and the quoted DNS
/// header when there is one), so a "port unreachable" for a DNS query joins that query's flow.
/// An error quoting a query the DNS table tracks goes into its entry instead.
#[inline(always)]
fn emit_icmp(ctx: &TcContext, skb: &Skb<'_>, at: At, outer: &Parsed, vlan: u16, mut ev_flags: u8) {
    let inner_ethertype = if outer.ip_version == 4 {
        ETH_P_IP
    } else {
        ETH_P_IPV6
    };
    let Some(mut quoted) = parse_ip(skb, outer.payload_off, inner_ethertype) else {
        return;
    };
    // ICMP type in the outer tcp_flags slot, code in its sport slot (see parse_ip).
    let icmp = (u16::from(outer.tcp_flags) << 8) | (outer.sport & 0xff);
    if quoted.is_dns()
        && quoted.l4_proto == IPPROTO_UDP
        && quoted.dport == crate::parse::DNS_PORT
        && dns::on_icmp(skb, &quoted, at, icmp, outer.l4_proto) == Outcome::Done
    {
        return;
    }
    let mut dns = DnsSpan::NONE;
    if quoted.is_dns() {
        ev_flags |= flags::DNS;
        dns = DnsSpan::of(&quoted, ctx.len());
    }
    // Low byte: ICMP code; high byte: the ICMP protocol (1 or 58). The type goes in tcp_flags.
    let icmp_inner = (outer.sport & 0xff) | (u16::from(outer.l4_proto) << 8);
    quoted.tcp_flags = outer.tcp_flags;
    write_event(
        ctx,
        at,
        &quoted,
        outer.ip_len,
        vlan,
        ev_flags,
        dns,
        icmp_inner,
    );
}
