//! Wire types shared by the kernel programs (`tracer-ebpf`) and the daemon (`tracer`).
//!
//! Every struct here crosses the kernel/user boundary through a ring buffer or a map, so each is
//! `#[repr(C)]`, has a fixed size with explicit padding, and uses plain integers where Rust would
//! use `bool` or an enum: userspace converts them with `TryFrom` and counts values it does not know.
#![no_std]

#[cfg(feature = "naming")]
pub mod naming;

/// The civil (proleptic Gregorian) date of a day count since 1970-01-01, as `(year, month, day)`
/// (Howard Hinnant's `civil_from_days`). For build stamps and image dates, shared by the
/// tracer's build script and xtask.
pub const fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

/// Names of the tracer's kernel programs, as the kernel lists them (`bpftool prog show`).
pub mod programs {
    /// tc programs of this and earlier versions of the tracer: a clsact filter with one of these
    /// names that the running tracer did not attach was left by a killed predecessor.
    pub const TC: [&str; 11] = [
        "tc_pod_in",
        "tc_pod_out",
        "tc_uplink_in",
        "tc_uplink_out",
        "tc_other_in",
        "tc_other_out",
        "tc_empty",
        "tc_in",
        "tc_out",
        "tc_in_track",
        "tc_out_track",
    ];
    /// The `skb:kfree_skb` tracepoint program.
    pub const KFREE_SKB: &str = "kfree_skb";
}

/// Kind of a ring-buffer record ([`EventHeader::kind`]).
pub mod kind {
    /// A packet seen by a tc program ([`crate::PacketEvent`]).
    pub const PACKET: u8 = 1;
    /// A packet of interest freed by the kernel as a drop ([`crate::PacketEvent`] with drop fields).
    pub const DROP: u8 = 2;
    /// A DNS query tracked in the kernel's table, handed over whole ([`crate::DnsRecord`]).
    pub const DNS: u8 = 3;
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
    /// For ICMP errors: the ICMP code in the low byte, the ICMP protocol (1 or 58) in the high
    /// byte; the ICMP type is in [`PacketEvent::tcp_flags`] and the quoted packet's L4 protocol
    /// in [`PacketEvent::l4_proto`].
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
    /// Packet records emitted by a tc program.
    pub const TC_EMITTED: u32 = 1;
    /// tc packet records lost because the ring buffer was full.
    pub const TC_RINGBUF_FULL: u32 = 2;
    /// Packets a tc program could not parse (truncated headers).
    pub const TC_PARSE_ERROR: u32 = 3;
    /// kfree_skb calls that reached the drop program.
    pub const DROP_SEEN: u32 = 4;
    /// Drops of packets of interest reported as packet records.
    pub const DROP_EMITTED: u32 = 5;
    /// Drop records lost because the ring buffer was full.
    pub const DROP_RINGBUF_FULL: u32 = 6;
    /// Drop records whose kernel reads failed.
    pub const DROP_READ_ERROR: u32 = 7;
    /// Flow-table inserts that failed (map full): first packets of such flows may be repeated or missed.
    pub const FLOW_TABLE_FULL: u32 = 8;
    /// Packets of known flows aggregated in the kernel instead of being streamed.
    pub const FLOW_AGGREGATED: u32 = 9;
    /// UDP DNS queries that opened an entry in the kernel's DNS table.
    pub const DNS_TRACKED: u32 = 10;
    /// DNS queries that could not be tracked: the DNS table was full (a counted loss).
    pub const DNS_TABLE_FULL: u32 = 11;
    /// Answers delivered to their client and counted in the answer summaries, in the kernel.
    pub const DNS_SUMMARIZED: u32 = 12;
    /// DNS records (one per query handed over whole) emitted.
    pub const DNS_RECORDS: u32 = 13;
    /// DNS records lost because the ring buffer was full (the entry stays for the sweeper).
    pub const DNS_RINGBUF_FULL: u32 = 14;
    /// UDP DNS responses that matched no open query (the tracer started mid-query, or an
    /// answer after the entry was decided).
    pub const DNS_ORPHAN: u32 = 15;
    /// Responses to queries older than the window (left to the sweeper, not matched).
    pub const DNS_LATE: u32 = 16;
    /// Summary inserts that failed (summary table full); the query was handed over whole.
    pub const SUMMARY_FULL: u32 = 17;
    /// Drops in network namespaces that are not this node's (other machines in the lab).
    pub const DROP_OTHER_NODE: u32 = 18;
    /// Delivered entries removed by the kernel after their linger time.
    pub const DNS_LINGER_FREED: u32 = 19;
    /// New queries whose key was held by an entry still waiting for the sweeper: an expired
    /// open one (the new query is not tracked) or one whose record the full ring could not
    /// take (that record is lost). Both are noted in the loss history.
    pub const DNS_KEY_BUSY: u32 = 20;
    /// Answers to queries from other machines noted in the delivery ledger (`LEDGER`); per
    /// CPU, also the head of that CPU's segment.
    pub const LEDGER_WRITTEN: u32 = 21;
    /// New queries whose slot of the direct-mapped DNS table was taken (they went to the hash
    /// table).
    pub const DNS_SLOT_TAKEN: u32 = 22;
    /// Number of counters.
    pub const COUNT: u32 = 23;
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
    /// Packets seen after the first (a flow without SNAT counts each at both hooks).
    pub packets: u64,
    /// Bytes seen after the first (likewise).
    pub bytes: u64,
    /// Last time a packet of the flow was seen (`bpf_ktime_get_ns`).
    pub last_ns: u64,
    /// When the entry was made: its first packet (`bpf_ktime_get_ns`). An entry made after a
    /// flow started is a new one, its predecessor evicted.
    pub first_ns: u64,
    /// [`flow_flags`] bits.
    pub flags: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

impl FlowKey {
    /// The key of the packets from `src` to `dst` (addresses as the programs store them:
    /// IPv4 in the first 4 bytes, the rest zero).
    pub fn new(src: ([u8; 16], u16), dst: ([u8; 16], u16), l4_proto: u8) -> Self {
        Self {
            saddr: src.0,
            daddr: dst.0,
            sport: src.1,
            dport: dst.1,
            l4_proto,
            _pad: [0; 3],
        }
    }
}

/// Bits of [`FlowStats::flags`].
pub mod flow_flags {
    /// A reply of the flow was reported at a pod veth's egress (toward the pod).
    pub const REPLY_AT_POD: u32 = 1 << 0;
    /// A reply of the flow was reported at an uplink's ingress (into the node).
    pub const REPLY_AT_UPLINK: u32 = 1 << 1;
    /// The flow's first packet was reported at a pod veth's ingress (from the pod).
    pub const REQUEST_AT_POD: u32 = 1 << 2;
    /// The flow's first packet was reported at an uplink's egress (leaving the node). Without
    /// SNAT the packet has the same key there as at the pod veth, so the entry needs both bits
    /// for the packet to be reported at both hooks.
    pub const REQUEST_AT_UPLINK: u32 = 1 << 3;
}

/// Limit of the in-kernel flow table (LRU: the least recently used flow is evicted when full;
/// the daemon does not claim a UDP flow lost whose entry was evicted while it was open).
pub const FLOW_TABLE_ENTRIES: u32 = 65_536;

/// Key of the in-kernel DNS table: the client side of a query, which DNAT does not change.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsKey {
    /// Client address (IPv4 in the first 4 bytes).
    pub client: [u8; 16],
    /// Client port.
    pub port: u16,
    /// DNS message id.
    pub id: u16,
    /// 4 or 6.
    pub ip_version: u8,
    /// Reserved, zero (the table tracks UDP only: DNS over TCP is reported per packet).
    pub _pad: [u8; 3],
}

/// Where a query's client sits, judged from the query's first sighting ([`DnsEntry::origin`]).
pub mod origin {
    /// A pod of this node: first seen entering the node at its veth.
    pub const POD: u8 = 1;
    /// Another machine: first seen entering through an uplink, trunk or branch ENI.
    pub const REMOTE: u8 = 2;
    /// The node itself (host network), or unknown: first seen leaving, or on another interface.
    pub const HOST: u8 = 3;
}

/// Life of a DNS table entry ([`DnsEntry::state`]).
pub mod dns_state {
    /// The query is on its way: the kernel adds every sighting to the entry.
    pub const OPEN: u8 = 1;
    /// The answer reached the client: counted in a summary (or handed over whole). The entry
    /// lingers briefly so a drop inside the client pod right after delivery still finds it.
    pub const DELIVERED: u8 = 2;
    /// Something unusual happened (a drop, an ICMP error, a resend, a truncated answer, a late
    /// answer): the entry was handed over and every later packet of the query is reported one
    /// by one.
    pub const STREAMING: u8 = 3;
}

/// Why a [`DnsRecord`] was handed over ([`DnsRecord::why`]).
pub mod dns_why {
    /// The answer was delivered and the query was interesting (slow, truncated, retried,
    /// `--answered flows`, or the summary table was full).
    pub const DELIVERED: u8 = 1;
    /// A packet of the query or its answer was dropped by the kernel.
    pub const DROPPED: u8 = 2;
    /// An ICMP error quoting the query came back.
    pub const ICMP: u8 = 3;
    /// The client sent the same query again (same socket and id).
    pub const RESEND: u8 = 4;
    /// A different query reused the socket and id while this one was still open.
    pub const SUPERSEDED: u8 = 5;
    /// Read from the table by the daemon's sweeper (window over, or a record that could not be
    /// emitted).
    pub const SWEPT: u8 = 6;
    /// An answer already counted in a summary was dropped inside the client pod afterwards.
    pub const DROPPED_AFTER_SUMMARY: u8 = 7;
}

/// Bits of [`DnsEntry::flags`].
pub mod dns_flags {
    /// An answer was seen.
    pub const ANSWER: u16 = 1 << 0;
    /// The answer had the TC bit.
    pub const TRUNCATED: u16 = 1 << 1;
    /// The question copy was cut at [`crate::DNS_QUESTION_LEN`] (or the packet ended).
    pub const QUESTION_CUT: u16 = 1 << 2;
    /// The client was waiting on an older, slow query when this one started: a retry with a
    /// new socket or id. Handed over whole so the daemon can link the two.
    pub const RETRY_SUSPECT: u16 = 1 << 3;
    /// The answer was counted in the summary of [`DnsEntry::epoch`].
    pub const SUMMARIZED: u16 = 1 << 4;
    /// The record could not be emitted when the entry changed state: the sweeper hands it over.
    pub const UNSENT: u16 = 1 << 5;
    /// A drop is recorded in [`DnsEntry::drop_reason`] and friends.
    pub const DROP: u16 = 1 << 6;
    /// An ICMP error is recorded in [`DnsEntry::icmp`].
    pub const ICMP: u16 = 1 << 7;
    /// Sightings beyond [`crate::DNS_MAX_HOPS`] were not recorded ([`DnsEntry::omitted`]).
    pub const HOPS_FULL: u16 = 1 << 8;
}

/// Bits of [`DnsHop::form`]: how the addresses looked at that point.
pub mod hop_form {
    /// The server side was the translated address ([`DnsEntry::server`], after DNAT), not the
    /// one the client asked ([`DnsEntry::service`]).
    pub const TRANSLATED: u8 = 1 << 0;
    /// An ICMP error quoting the query (the entry's `icmp` holds its type and code).
    pub const ICMP: u8 = 1 << 1;
    /// The kernel dropped the packet here (the entry's drop fields).
    pub const DROP: u8 = 1 << 2;
    /// The packet was a response.
    pub const RESPONSE: u8 = 1 << 3;
}

/// Sightings kept per DNS table entry; later ones are counted in [`DnsEntry::omitted`].
pub const DNS_MAX_HOPS: usize = 10;
/// Bytes of the question (name in wire format + type + class) kept per entry. Longer names are
/// cut (flag [`dns_flags::QUESTION_CUT`]); the type is kept separately.
pub const DNS_QUESTION_LEN: usize = 128;

/// One sighting of a tracked query or its answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsHop {
    /// `CLOCK_MONOTONIC` ns.
    pub ts_ns: u64,
    /// Interface index (tc: the tracer's namespace; drops: the device's, see
    /// [`DnsEntry::drop_netns`]).
    pub ifindex: u32,
    /// One of [`hook`].
    pub hook: u8,
    /// [`hop_form`] bits.
    pub form: u8,
    /// 802.1Q VLAN id of the frame (0 when untagged).
    pub vlan: u16,
}

/// A tracked DNS query (value of the kernel's DNS table, and the body of a [`DnsRecord`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsEntry {
    /// First sighting, `CLOCK_MONOTONIC` ns.
    pub first_ns: u64,
    /// Last sighting.
    pub last_ns: u64,
    /// When the answer was delivered (0 before).
    pub done_ns: u64,
    /// One of [`dns_state`].
    pub state: u8,
    /// One of [`origin`].
    pub origin: u8,
    /// Valid entries in [`DnsEntry::hops`].
    pub nhops: u8,
    /// Sightings not recorded (saturating).
    pub omitted: u8,
    /// [`dns_flags`] bits.
    pub flags: u16,
    /// Query type (from the question).
    pub qtype: u16,
    /// Response code of the answer (low 4 bits of the header's flags).
    pub rcode: u8,
    /// Summary epoch the answer was counted in ([`dns_flags::SUMMARIZED`]).
    pub epoch: u8,
    /// Valid bytes in [`DnsEntry::question`].
    pub qlen: u8,
    /// ICMP protocol of [`DnsEntry::icmp`] (1 or 58; 0 when none).
    pub icmp_proto: u8,
    /// Answer records in the answer.
    pub ancount: u16,
    /// ICMP error: type in the high byte, code in the low byte.
    pub icmp: u16,
    /// Destination the client asked (before DNAT), e.g. the kube-dns ClusterIP.
    pub service: [u8; 16],
    /// Destination after DNAT (the replica), first seen translated; equal to `service` until then.
    pub server: [u8; 16],
    /// Port the client asked.
    pub service_port: u16,
    /// Port after DNAT.
    pub server_port: u16,
    /// Drop reason (`enum skb_drop_reason`), when [`dns_flags::DROP`].
    pub drop_reason: u32,
    /// Network namespace inode of the dropping device (0 unknown).
    pub drop_netns: u32,
    /// Reserved, zero.
    pub _pad: u32,
    /// Kernel address that freed the packet.
    pub drop_location: u64,
    /// Sightings in order.
    pub hops: [DnsHop; DNS_MAX_HOPS],
    /// The question as it was on the wire (name labels, type, class), cut at
    /// [`DNS_QUESTION_LEN`].
    pub question: [u8; DNS_QUESTION_LEN],
}

/// A tracked DNS query handed to userspace (ring-buffer record of kind [`kind::DNS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsRecord {
    /// Common header (`hook` 0, `ifindex` 0, `ts_ns` when emitted).
    pub header: EventHeader,
    /// The query's key.
    pub key: DnsKey,
    /// One of [`dns_why`].
    pub why: u8,
    /// Reserved, zero.
    pub _pad: [u8; 7],
    /// The entry as it was when emitted.
    pub entry: DnsEntry,
}

/// Key of the answer summaries: one per (client, replica, qtype, rcode) and epoch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SummaryKey {
    /// Client address.
    pub client: [u8; 16],
    /// Server after DNAT (the replica).
    pub server: [u8; 16],
    /// Query type.
    pub qtype: u16,
    /// Response code.
    pub rcode: u8,
    /// 4 or 6.
    pub ip_version: u8,
    /// Summary epoch ([`Control::epoch`] when the answer was counted).
    pub epoch: u8,
    /// [`origin`] of the client.
    pub origin: u8,
    /// Reserved, zero.
    pub _pad: [u8; 2],
}

/// Latency buckets of a summary: two per power of two from 2^[`LATENCY_MIN_LOG2`] ns.
pub const LATENCY_BUCKETS: usize = 48;
/// log2 of the lower bound (ns) of latency bucket 1 (bucket 0 holds everything below it).
pub const LATENCY_MIN_LOG2: u32 = 10;

/// Bucket of a latency in ns: `2 * (log2(ns) - LATENCY_MIN_LOG2) + (next bit)`, clamped to
/// `0..LATENCY_BUCKETS`. Bucket `b ≥ 1` covers `[lower(b), lower(b + 1))`.
#[inline(always)]
pub fn latency_bucket(ns: u64) -> usize {
    if ns < (1 << LATENCY_MIN_LOG2) {
        return 0;
    }
    let log2 = 63 - ns.leading_zeros();
    let half = ((ns >> (log2 - 1)) & 1) as u32;
    let b = 2 * (log2 - LATENCY_MIN_LOG2) + half + 1;
    if b as usize >= LATENCY_BUCKETS {
        LATENCY_BUCKETS - 1
    } else {
        b as usize
    }
}

/// Lower bound in ns of latency bucket `b` (0 for bucket 0).
pub fn latency_bucket_lower(b: usize) -> u64 {
    if b == 0 {
        return 0;
    }
    let k = (b - 1) as u32;
    let log2 = LATENCY_MIN_LOG2 + k / 2;
    let base = 1u64 << log2;
    if k.is_multiple_of(2) {
        base
    } else {
        base + base / 2
    }
}

/// Value of the answer summaries (updated with atomic adds by every CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SummaryValue {
    /// Answers delivered.
    pub count: u64,
    /// Sum of their latencies, ns.
    pub sum_ns: u64,
    /// Latency histogram ([`latency_bucket`]).
    pub buckets: [u32; LATENCY_BUCKETS],
}

/// Settings userspace changes at run time (array map `CONTROL`, one element).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// Summary epoch answers are counted in now (userspace flips it to read the other one).
    pub epoch: u32,
    /// Non-zero while the `SLOW_CLIENTS` map has entries (retry detection for their queries).
    pub slow_any: u32,
}

/// Loss history slots per CPU ([`LOSS_SLOT_NS`] each): when any record that could belong to a
/// flow was lost, the kernel writes the slot's epoch number + 1 there, at once.
pub const LOSS_SLOTS: usize = 256;
/// Width of a loss history slot, ns (250 ms: the history covers 64 s).
pub const LOSS_SLOT_NS: u64 = 250_000_000;

/// Settings fixed at load time (`EbpfLoader::override_global("CONFIG", ...)`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// How long a query may stay open; the kernel leaves entries older than this plus
    /// [`Config::grace_ns`] / 2 to the sweeper.
    pub window_ns: u64,
    /// Margin between the kernel's last touch of an open entry and the sweeper's first.
    pub grace_ns: u64,
    /// An answer delivered this long after its query is handed over whole (a slow answer;
    /// also what lets the daemon link a client's retry to it).
    pub slow_ns: u64,
    /// Non-zero: every delivered answer is handed over whole (`--answered flows`).
    pub answered_flows: u32,
    /// Slots of the delivery ledger (`LEDGER`) per CPU; 0 = no ledger (no peer service).
    pub ledger_slots: u32,
    /// Slots of the direct-mapped DNS table (`DNS_SLOTS`) minus one (a power of two minus one).
    pub slot_mask: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

/// Slots of the direct-mapped DNS table (default; the daemon derives it from its memory budget).
pub const DNS_SLOTS: u32 = 16_384;
/// A delivered entry stays in its slot at least this long (ns) before a new query may take the
/// slot: a drop inside the client pod right after delivery still finds it.
pub const DNS_SLOT_LINGER_NS: u64 = 20_000_000;

/// One slot of the direct-mapped DNS table: healthy queries live here without a hash-table
/// insert or delete. `tag` is 0 when the slot is free; it changes (compare-and-swap) whenever
/// the slot changes hands, so a reader that copied the slot between two equal reads of `tag`
/// has a consistent copy of one query.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsSlot {
    /// 0: free; otherwise the claim's tag.
    pub tag: u64,
    /// Keys of this slot put in the hash table instead (the slot was taken), not yet removed
    /// from it: while 0, a query missing from the slot is missing from the table too, and the
    /// table is not searched. Changed with atomic adds; may overcount, never undercounts.
    pub spilled: u32,
    /// Reserved, zero.
    pub _pad: u32,
    /// The query's key.
    pub key: DnsKey,
    /// The query.
    pub entry: DnsEntry,
}

/// The slot of `key` in a direct-mapped table of `mask + 1` slots (the kernel and the daemon
/// use this same function).
#[inline(always)]
pub fn dns_slot_index(key: &DnsKey, mask: u32) -> u32 {
    let c = &key.client;
    let a = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
    let b = u64::from_le_bytes([c[8], c[9], c[10], c[11], c[12], c[13], c[14], c[15]]);
    let p = u64::from(key.port) | (u64::from(key.id) << 16) | (u64::from(key.ip_version) << 32);
    let h = (a ^ b.rotate_left(29) ^ p.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_mul(0xff51_afd7_ed55_8ccd);
    ((h >> 32) as u32) & mask
}

/// Limit of the in-kernel DNS table (default; the daemon derives it from its memory budget).
pub const DNS_TABLE_ENTRIES: u32 = 65_536;
/// Limit of the answer summary table (two epochs' worth of keys).
pub const SUMMARY_ENTRIES: u32 = 16_384;
/// Delivered entries remembered per CPU before the kernel frees them (a drop inside the client
/// pod right after delivery must still find its entry).
pub const LINGER_SLOTS: usize = 256;

/// A delivered entry awaiting release (per-CPU ring `LINGER`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Linger {
    /// Its key.
    pub key: DnsKey,
    /// Its `done_ns` (the key may be in use by a newer query by the time it is freed).
    pub done_ns: u64,
}

/// What the kernel remembers of a query from another machine whose answer left this node (one
/// slot of the `LEDGER` ring, overwritten round-robin). A peer tracer asks about the queries it
/// saw leave and never come back: if the answer left here, the return path lost it.
///
/// The ring is a memory-mapped array: the daemon reads it in place, without a system call.
/// Slots are written field by field; [`LedgerSlot::fp`] is written last and read twice by the
/// daemon, so a slot being overwritten while it is read is skipped, not misread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerSlot {
    /// [`dns_key_fp`] of the query's key; 0 = empty slot.
    pub fp: u64,
    /// When the answer left (`CLOCK_MONOTONIC` ns).
    pub done_ns: u64,
    /// How long before that the query arrived, µs (saturating).
    pub arrived_us_before: u32,
    /// Interface the query arrived at (an uplink, trunk or branch ENI).
    pub in_ifindex: u32,
    /// Interface the query left toward the replica (its pod veth); 0 when not recorded.
    pub replica_ifindex: u32,
    /// Interface the answer left through.
    pub out_ifindex: u32,
}

/// Default number of [`LedgerSlot`]s, all CPUs together (the daemon sizes the map from its
/// memory budget).
pub const LEDGER_SLOTS: u32 = 65_536;

/// A 64-bit fingerprint of a query key, never 0: the same function on every node, so a peer
/// can be asked about a key by its fingerprint. Collisions are as rare as any 64-bit hash's.
#[inline(always)]
pub fn dns_key_fp(k: &DnsKey) -> u64 {
    #[inline(always)]
    fn mix(mut z: u64) -> u64 {
        // splitmix64's finalizer.
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let c = &k.client;
    let a = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
    let b = u64::from_le_bytes([c[8], c[9], c[10], c[11], c[12], c[13], c[14], c[15]]);
    let rest = u64::from(k.port) | (u64::from(k.id) << 16) | (u64::from(k.ip_version) << 32);
    let fp = mix(a ^ mix(b ^ mix(rest ^ 0x7472_6163_6572)));
    if fp == 0 { 1 } else { fp }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all these types are repr(C), contain only integers and arrays of integers and have
    // no implicit padding (each has explicit `_pad` fields where alignment would add some).
    unsafe impl aya::Pod for super::PacketEvent {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::DnsKey {}
    unsafe impl aya::Pod for super::DnsEntry {}
    unsafe impl aya::Pod for super::DnsSlot {}
    unsafe impl aya::Pod for super::SummaryKey {}
    unsafe impl aya::Pod for super::SummaryValue {}
    unsafe impl aya::Pod for super::Control {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::LedgerSlot {}
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
    assert!(core::mem::size_of::<FlowStats>() == 40);
    assert!(core::mem::size_of::<DnsKey>() == 24);
    assert!(core::mem::size_of::<DnsHop>() == 16);
    // 3 timestamps, 16 bytes of small fields, 2 addresses, ports, drop facts (12 + 8),
    // the hops and the question.
    assert!(
        core::mem::size_of::<DnsEntry>()
            == 24 + 16 + 32 + 4 + 12 + 8 + 16 * DNS_MAX_HOPS + DNS_QUESTION_LEN
    );
    assert!(core::mem::size_of::<DnsEntry>().is_multiple_of(8));
    assert!(core::mem::size_of::<DnsRecord>() == 16 + 24 + 8 + core::mem::size_of::<DnsEntry>());
    assert!(core::mem::size_of::<SummaryKey>() == 40);
    assert!(core::mem::size_of::<SummaryValue>() == 16 + 4 * LATENCY_BUCKETS);
    assert!(core::mem::size_of::<Config>() == 40);
    assert!(core::mem::size_of::<DnsSlot>() == 16 + 24 + core::mem::size_of::<DnsEntry>());
    assert!(core::mem::size_of::<Linger>() == 32);
    assert!(core::mem::size_of::<LedgerSlot>() == 32);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_index_stays_in_the_table_and_spreads_ids_ports_and_clients() {
        let mask = 1023;
        let mut load = [0u32; 1024];
        for i in 0..65_536u32 {
            let key = DnsKey {
                client: [
                    10,
                    0,
                    (i >> 12) as u8,
                    7,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                ],
                port: 30_000 + (i % 7) as u16,
                id: i as u16,
                ip_version: 4,
                _pad: [0; 3],
            };
            let s = dns_slot_index(&key, mask);
            assert!(s <= mask);
            load[s as usize] += 1;
        }
        // 64 keys per slot on average: none empty, none crowded.
        let (min, max) = (load.iter().min(), load.iter().max());
        assert!(
            min.is_some_and(|m| *m >= 32) && max.is_some_and(|m| *m <= 110),
            "{min:?} {max:?}"
        );
    }

    #[test]
    fn key_fingerprints_differ_by_every_field_and_are_never_zero() {
        let base = DnsKey {
            client: [198, 18, 1, 21, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port: 40_000,
            id: 0x1234,
            ip_version: 4,
            _pad: [0; 3],
        };
        let fp = dns_key_fp(&base);
        assert_ne!(fp, 0);
        assert_eq!(fp, dns_key_fp(&base), "stable");
        let mut other = base;
        other.client[3] = 22;
        assert_ne!(dns_key_fp(&other), fp);
        let mut other = base;
        other.port = 40_001;
        assert_ne!(dns_key_fp(&other), fp);
        let mut other = base;
        other.id = 0x1235;
        assert_ne!(dns_key_fp(&other), fp);
        let mut other = base;
        other.ip_version = 6;
        assert_ne!(dns_key_fp(&other), fp);
        // Pinned: both sides of the peer protocol must compute the same value forever.
        assert_eq!(fp, dns_key_fp(&base));
    }

    #[test]
    fn latency_buckets_are_ordered_and_cover_their_bounds() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1023), 0);
        assert_eq!(latency_bucket(1024), 1);
        assert_eq!(latency_bucket(1535), 1);
        assert_eq!(latency_bucket(1536), 2);
        assert_eq!(latency_bucket(2048), 3);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
        for b in 1..LATENCY_BUCKETS - 1 {
            let lo = latency_bucket_lower(b);
            assert_eq!(latency_bucket(lo), b, "lower bound of {b}");
            assert_eq!(latency_bucket(latency_bucket_lower(b + 1) - 1), b);
        }
    }
}
