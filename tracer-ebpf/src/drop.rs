//! skb:kfree_skb (tp_btf): drops of packets of interest (DNS, tracked flows, TCP control) in
//! this node's network namespaces (`SCOPE`: the node's own and its pods'; drops elsewhere, i.e.
//! on other machines sharing the kernel, are only counted). A drop of a UDP DNS packet whose
//! query the DNS table tracks goes into that entry, which is then handed over whole; other drops
//! are reported as packet records.
//!
//! Struct offsets come from the running kernel's BTF through the `OFFSETS` global, filled by the
//! loader; with `OFFSETS.valid == 0` the program reports nothing.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_buf},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use tracer_common::{
    DNS_CAPTURE_LEN, EventHeader, KernelOffsets, PacketEvent, counter, flags, hook, kind,
};

use crate::{
    dns::{self, Outcome},
    maps::{EVENTS, Extra, FLOWS, SCOPE, count, fill, note_loss, now_ns, submit_flags},
    parse::{
        ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, PacketReader, TCP_ACK, TCP_RST, TCP_SYN,
        parse_ip,
    },
};

/// Offsets into kernel structs; written by userspace before load (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
    skb_head: 0,
    skb_network_header: 0,
    skb_len: 0,
    skb_dev: 0,
    skb_protocol: 0,
    skb_sk: 0,
    dev_ifindex: 0,
    dev_nd_net: 0,
    sk_net: 0,
    net_inum: 0,
    valid: 0,
    _pad: 0,
};

/// Reads packet bytes from kernel memory starting at the network header.
struct Kmem(*const u8);

impl PacketReader for Kmem {
    #[inline(always)]
    fn read<T: Copy>(&self, off: u32) -> Option<T> {
        // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly on a bad one.
        unsafe { bpf_probe_read_kernel(self.0.add(off as usize) as *const T).ok() }
    }
}

#[inline(always)]
fn field<T: Copy>(base: *const u8, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly on a bad one.
    unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const T).ok() }
}

/// skb:kfree_skb(skb, location, reason, ...).
#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb(ctx: BtfTracePointContext) -> i32 {
    count(counter::DROP_SEEN);
    if try_kfree_skb(&ctx).is_none() {
        count(counter::DROP_READ_ERROR);
    }
    0
}

#[inline(always)]
fn try_kfree_skb(ctx: &BtfTracePointContext) -> Option<()> {
    // SAFETY: a global written once at load time; read-only afterwards.
    let o: KernelOffsets = unsafe { core::ptr::read_volatile(&OFFSETS) };
    if o.valid == 0 {
        return Some(());
    }
    let skb: *const u8 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let reason: u32 = ctx.arg(2);

    let protocol: [u8; 2] = field(skb, o.skb_protocol)?;
    let ethertype = u16::from_be_bytes(protocol);
    if ethertype != ETH_P_IP && ethertype != ETH_P_IPV6 {
        return Some(());
    }
    let head: *const u8 = field(skb, o.skb_head)?;
    let nh: u16 = field(skb, o.skb_network_header)?;
    let l3 = Kmem(head.wrapping_add(usize::from(nh)));
    let Some(p) = parse_ip(&l3, 0, ethertype) else {
        return Some(());
    };

    let mut ev_flags = 0u8;
    if p.is_dns() {
        ev_flags |= flags::DNS;
    } else {
        let f = p.tcp_flags;
        let control = p.l4_proto == IPPROTO_TCP
            && (f & (TCP_SYN | TCP_ACK) != 0 && f & TCP_SYN != 0 || f & TCP_RST != 0);
        // SAFETY: map lookups return pointers valid for the program's run; only tested for presence.
        let tracked = unsafe {
            FLOWS.get(&p.flow_key()).is_some() || FLOWS.get(&p.reverse_flow_key()).is_some()
        };
        if !(control || tracked) {
            return Some(());
        }
        ev_flags |= flags::FLOW;
    }

    let dev: *const u8 = field(skb, o.skb_dev)?;
    let mut ifindex = 0u32;
    let mut net: *const u8 = core::ptr::null();
    if !dev.is_null() {
        ifindex = field(dev, o.dev_ifindex)?;
        net = field(dev, o.dev_nd_net)?;
    } else {
        let sk: *const u8 = field(skb, o.skb_sk)?;
        if !sk.is_null() {
            net = field(sk, o.sk_net)?;
        }
    }
    let netns: u32 = if net.is_null() {
        0
    } else {
        field(net, o.net_inum)?
    };
    // SAFETY: read-only presence test on a map value.
    if netns != 0 && unsafe { SCOPE.get(&netns) }.is_none() {
        count(counter::DROP_OTHER_NODE);
        return Some(());
    }
    if p.l4_proto == IPPROTO_UDP
        && ev_flags & flags::DNS != 0
        && dns::on_drop(&l3, &p, ifindex, netns, reason, location) == Outcome::Done
    {
        return Some(());
    }

    let Some(mut entry) = EVENTS.reserve::<PacketEvent>(0) else {
        count(counter::DROP_RINGBUF_FULL);
        note_loss(now_ns());
        return Some(());
    };
    let ev = entry.as_mut_ptr();
    let mut dns_len = 0u32;
    if ev_flags & flags::DNS != 0 {
        let mut off = p.payload_off;
        if p.l4_proto == IPPROTO_TCP {
            off += 2;
        }
        if p.ip_len > off {
            dns_len = p.ip_len - off;
        }
        if dns_len > DNS_CAPTURE_LEN as u32 {
            dns_len = DNS_CAPTURE_LEN as u32;
            ev_flags |= flags::DNS_TRUNCATED;
        }
        if dns_len > 0 && dns_len <= DNS_CAPTURE_LEN as u32 {
            // SAFETY: destination is the reserved event's `dns` array, dns_len ≤ its length;
            // the source read is checked by the helper.
            let dst = unsafe { &mut (&mut (*ev).dns)[..crate::tc::verifier_len(dns_len) as usize] };
            // SAFETY: as above.
            if unsafe { bpf_probe_read_kernel_buf(l3.0.wrapping_add(off as usize), dst) }.is_err() {
                dns_len = 0;
                ev_flags |= flags::DNS_TRUNCATED;
            }
        }
    }
    let extra = Extra {
        header: EventHeader {
            kind: kind::DROP,
            hook: hook::KFREE_SKB,
            _pad: [0; 2],
            ifindex,
            ts_ns: now_ns(),
        },
        netns,
        drop_reason: reason,
        location,
        pkt_len: p.ip_len,
        flags: ev_flags,
        vlan: 0,
        dns_len,
        icmp_inner: 0,
    };
    // SAFETY: `ev` points at a reserved, writable PacketEvent.
    unsafe { fill(ev, &p, &extra) };
    entry.submit(submit_flags());
    count(counter::DROP_EMITTED);
    Some(())
}
