//! Wire types shared by the kernel programs (`tracer-ebpf`) and the daemon (`tracer`).
//!
//! Every struct here crosses the kernel/user boundary through a ring buffer or a map, so each is
//! `#[repr(C)]`, has a fixed size with explicit padding, and uses plain integers where Rust would
//! use `bool` or an enum: userspace converts them with `TryFrom` and counts values it does not know.
#![no_std]

/// Kind of a ring-buffer record ([`EventHeader::kind`]).
pub mod kind {
    /// A packet seen by a tc program ([`crate::PacketEvent`]).
    pub const PACKET: u8 = 1;
    /// A packet of interest freed by the kernel as a drop ([`crate::PacketEvent`] with drop fields).
    pub const DROP: u8 = 2;
}

/// Observation point of a [`crate::PacketEvent`] ([`EventHeader::hook`]).
pub mod hook {
    /// tc ingress: the packet arrived on the interface.
    pub const TC_INGRESS: u8 = 1;
    /// tc egress: the packet is leaving through the interface.
    pub const TC_EGRESS: u8 = 2;
    /// skb:kfree_skb: the kernel freed the packet as a drop.
    pub const KFREE_SKB: u8 = 3;
}

/// Why the packet was reported ([`PacketEvent::flags`] bits).
pub mod flags {
    /// UDP or TCP with port 53 on either side.
    pub const DNS: u8 = 1 << 0;
    /// First packet of a pod egress flow (TCP SYN/SYN-ACK/RST or first UDP packet of a tuple).
    pub const FLOW: u8 = 1 << 1;
    /// ICMP error (destination/port unreachable) quoting a packet of interest.
    pub const ICMP_ERROR: u8 = 1 << 2;
    /// The DNS copy was cut at [`crate::DNS_CAPTURE_LEN`] or at the end of the packet.
    pub const DNS_TRUNCATED: u8 = 1 << 3;
    /// The frame carried an 802.1Q tag ([`crate::PacketEvent::vlan`] holds its id).
    pub const VLAN: u8 = 1 << 4;
}

/// Bytes of the DNS message (header + question) copied per event. A question name is at most
/// 255 bytes; 12 header bytes + 4 bytes of type/class leave room for names up to 240 bytes.
pub const DNS_CAPTURE_LEN: usize = 256;

/// Size of the ring buffer shared by all programs, in bytes (a power of two, page aligned).
pub const RING_BUF_BYTES: u32 = 1 << 22;

/// Common header of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// Record kind, one of [`kind`].
    pub kind: u8,
    /// Observation point, one of [`hook`].
    pub hook: u8,
    /// Reserved, zero.
    pub _pad: [u8; 2],
    /// Interface index in the namespace of the program (tc) or of the device (drops); 0 if unknown.
    pub ifindex: u32,
    /// `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
}

/// A packet of interest, seen at a tc hook or freed as a drop.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketEvent {
    /// Common header.
    pub header: EventHeader,
    /// Network namespace inode of the device (drops only; 0 when unknown).
    pub netns: u32,
    /// `enum skb_drop_reason` value (drops only).
    pub drop_reason: u32,
    /// Kernel address that freed the packet (drops only).
    pub location: u64,
    /// Source address: IPv4 in the first 4 bytes, or IPv6.
    pub saddr: [u8; 16],
    /// Destination address: IPv4 in the first 4 bytes, or IPv6.
    pub daddr: [u8; 16],
    /// Length of the packet from the network header on, as the kernel saw it.
    pub pkt_len: u32,
    /// Source port (host order); for ICMP errors the quoted packet's source port.
    pub sport: u16,
    /// Destination port (host order); for ICMP errors the quoted packet's destination port.
    pub dport: u16,
    /// 4 or 6.
    pub ip_version: u8,
    /// IP protocol number of the L4 header (6 TCP, 17 UDP, 1/58 ICMP).
    pub l4_proto: u8,
    /// TCP flags byte (FIN=0x01 SYN=0x02 RST=0x04 ACK=0x10), or ICMP type for ICMP errors.
    pub tcp_flags: u8,
    /// Reasons for reporting, bits of [`flags`].
    pub flags: u8,
    /// 802.1Q VLAN id when [`flags::VLAN`] is set.
    pub vlan: u16,
    /// Number of valid bytes in [`PacketEvent::dns`].
    pub dns_len: u16,
    /// For ICMP errors: the quoted packet's L4 protocol; ICMP code in the high byte.
    pub icmp_inner: u16,
    /// Reserved, zero.
    pub _pad: [u8; 6],
    /// First bytes of the DNS message (after the 2-byte length prefix for TCP).
    pub dns: [u8; DNS_CAPTURE_LEN],
}

/// CPUs whose tc "seen" count lives in the cheap `.bss` slots (others use [`counter::TC_SEEN`]).
pub const SEEN_MAX_CPUS: usize = 512;
/// u64 slots per CPU in the `.bss` seen counters (one 64-byte cache line, no false sharing).
pub const SEEN_STRIDE: usize = 8;
/// Length of the `.bss` seen-counter array.
pub const SEEN_SLOTS: usize = SEEN_MAX_CPUS * SEEN_STRIDE;

/// Indexes of the per-CPU counters in the `COUNTERS` map. Userspace sums over CPUs.
pub mod counter {
    /// Packets that entered a tc program on CPUs beyond [`crate::SEEN_MAX_CPUS`] (the others
    /// are counted in the `.bss` array `TC_SEEN_PER_CPU`).
    pub const TC_SEEN: u32 = 0;
    /// Packets reported by a tc program.
    pub const TC_EMITTED: u32 = 1;
    /// tc records lost because the ring buffer was full.
    pub const TC_RINGBUF_FULL: u32 = 2;
    /// Packets a tc program could not parse (truncated headers).
    pub const TC_PARSE_ERROR: u32 = 3;
    /// kfree_skb calls that reached the drop program.
    pub const DROP_SEEN: u32 = 4;
    /// Drops of packets of interest reported.
    pub const DROP_EMITTED: u32 = 5;
    /// Drop records lost because the ring buffer was full.
    pub const DROP_RINGBUF_FULL: u32 = 6;
    /// Drop records whose kernel reads failed.
    pub const DROP_READ_ERROR: u32 = 7;
    /// Flow-table inserts that failed (map full): first packets of such flows may be repeated or missed.
    pub const FLOW_TABLE_FULL: u32 = 8;
    /// Packets of known flows aggregated in the kernel instead of being streamed.
    pub const FLOW_AGGREGATED: u32 = 9;
    /// Number of counters.
    pub const COUNT: u32 = 10;
}

/// Kernel struct offsets the drop program needs, read from the running kernel's BTF at start-up
/// and handed to the program as a global (there is no CO-RE relocation in Rust eBPF).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `sk_buff.head`.
    pub skb_head: u32,
    /// `sk_buff.network_header` (u16).
    pub skb_network_header: u32,
    /// `sk_buff.len`.
    pub skb_len: u32,
    /// `sk_buff.dev` (net_device pointer; in a union with `dev_scratch`).
    pub skb_dev: u32,
    /// `sk_buff.protocol` (be16).
    pub skb_protocol: u32,
    /// `sk_buff.sk`.
    pub skb_sk: u32,
    /// `net_device.ifindex`.
    pub dev_ifindex: u32,
    /// `net_device.nd_net` (possible_net_t, one pointer).
    pub dev_nd_net: u32,
    /// `sock_common.skc_net` (at the start of `struct sock`).
    pub sk_net: u32,
    /// `net.ns` + `ns_common.inum`.
    pub net_inum: u32,
    /// Non-zero once userspace filled the offsets in; the program emits nothing before that.
    pub valid: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

/// Key of the in-kernel flow table that aggregates pod egress flows after their first packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address (IPv4 in the first 4 bytes).
    pub saddr: [u8; 16],
    /// Destination address (IPv4 in the first 4 bytes).
    pub daddr: [u8; 16],
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol.
    pub l4_proto: u8,
    /// Reserved, zero.
    pub _pad: [u8; 3],
}

/// Value of the in-kernel flow table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Packets seen after the first.
    pub packets: u64,
    /// Bytes seen after the first.
    pub bytes: u64,
    /// Last time a packet of the flow was seen (`bpf_ktime_get_ns`).
    pub last_ns: u64,
}

/// Limit of the in-kernel flow table (LRU: the least recently used flow is evicted when full).
pub const FLOW_TABLE_ENTRIES: u32 = 65_536;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all these types are repr(C), contain only integers and arrays of integers and have
    // no implicit padding (each has explicit `_pad` fields where alignment would add some).
    unsafe impl aya::Pod for super::PacketEvent {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowStats {}
}

const _: () = {
    assert!(core::mem::size_of::<EventHeader>() == 16);
    assert!(
        core::mem::size_of::<PacketEvent>()
            == 16 + 16 + 32 + 4 + 4 + 4 + 2 + 2 + 2 + 6 + DNS_CAPTURE_LEN
    );
    assert!(core::mem::size_of::<PacketEvent>().is_multiple_of(8));
    assert!(core::mem::size_of::<KernelOffsets>() == 48);
    assert!(core::mem::size_of::<FlowKey>() == 40);
};
