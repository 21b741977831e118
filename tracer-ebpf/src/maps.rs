//! Maps, counters and record helpers shared by the tc and drop programs.
//!
//! Every map has a named limit. The DNS table and the summaries are hash maps without
//! preallocation (`BPF_F_NO_PREALLOC`): elements are freed through RCU, so a pointer a program
//! holds stays valid while another CPU removes the element, and memory is used only for what is
//! in them. Their sizes are set by the daemon at load time from its memory budget.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    Control, DNS_TABLE_ENTRIES, DnsEntry, DnsKey, FLOW_TABLE_ENTRIES, FlowKey, FlowStats,
    LEDGER_SLOTS, LINGER_SLOTS, LOSS_SLOT_NS, LOSS_SLOTS, LedgerSlot, Linger, RING_BUF_BYTES,
    SUMMARY_ENTRIES, SummaryKey, SummaryValue, counter,
};

/// All records for userspace.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUF_BYTES, 0);

/// Per-CPU counters, indexed by [`tracer_common::counter`].
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Flows whose first packet was reported; later packets are aggregated here (LRU eviction).
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowStats> =
    LruHashMap::with_max_entries(FLOW_TABLE_ENTRIES, 0);

/// Open and recently answered UDP DNS queries, by client socket and id (see `dns.rs`).
#[map]
pub static DNS_TABLE: HashMap<DnsKey, DnsEntry> =
    HashMap::with_max_entries(DNS_TABLE_ENTRIES, BPF_F_NO_PREALLOC);

/// The direct-mapped DNS table: a query whose slot is free lives here (no hash-table insert or
/// delete on the healthy path); one whose slot is taken goes to `DNS_TABLE`. Memory-mapped by
/// the daemon's sweeper; sized by it at load time.
#[map]
pub static DNS_SLOTS: Array<tracer_common::DnsSlot> =
    Array::with_max_entries(tracer_common::DNS_SLOTS, BPF_F_MMAPABLE);

/// Answer summaries: count and latency histogram per (client, replica, qtype, rcode, epoch).
#[map]
pub static SUMMARY: HashMap<SummaryKey, SummaryValue> =
    HashMap::with_max_entries(SUMMARY_ENTRIES, BPF_F_NO_PREALLOC);

/// Per-CPU scratch space: a DNS entry is built here before it is inserted (it does not fit
/// the 512-byte BPF stack).
#[map]
pub static SCRATCH_ENTRY: PerCpuArray<DnsEntry> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch summary value, kept all-zero between uses.
#[map]
pub static SCRATCH_SUMMARY: PerCpuArray<SummaryValue> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU ring of delivered entries, freed once the ring comes round (see `dns::linger`).
#[repr(C)]
pub struct LingerRing {
    pub head: u64,
    pub slots: [Linger; LINGER_SLOTS],
}

/// The delivered entries of each CPU awaiting release.
#[map]
pub static LINGER: PerCpuArray<LingerRing> = PerCpuArray::with_max_entries(1, 0);

/// Loss history per CPU: slot `(t / LOSS_SLOT_NS) % LOSS_SLOTS` holds `t / LOSS_SLOT_NS + 1`
/// when a record that could belong to a flow was lost at `t`.
#[map]
pub static LOSS: PerCpuArray<[u64; LOSS_SLOTS]> = PerCpuArray::with_max_entries(1, 0);

/// Settings userspace changes at run time (summary epoch, slow clients present).
#[map]
pub static CONTROL: Array<Control> = Array::with_max_entries(1, 0);

/// Clients with a query open for longer than `CONFIG.slow_ns`, until when (ns): their next
/// queries may be retries of it. Written by the daemon's sweeper.
#[map]
pub static SLOW_CLIENTS: HashMap<[u8; 16], u64> = HashMap::with_max_entries(1024, 0);

/// Network namespaces (inode numbers) that belong to this node: its own and its pods'. Drops
/// elsewhere (other machines on a shared kernel) are only counted.
#[map]
pub static SCOPE: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Queries from other machines whose answers left this node (see `dns::ledger`): one segment
/// of `CONFIG.ledger_slots` per CPU, each written round-robin by its CPU. Memory-mapped by the
/// daemon; sized by it at load time.
#[map]
pub static LEDGER: Array<LedgerSlot> = Array::with_max_entries(LEDGER_SLOTS, BPF_F_MMAPABLE);

/// Settings fixed at load time by the daemon (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static CONFIG: tracer_common::Config = tracer_common::Config {
    window_ns: 5_000_000_000,
    grace_ns: 1_000_000_000,
    slow_ns: 500_000_000,
    answered_flows: 0,
    ledger_slots: 0,
    slot_mask: tracer_common::DNS_SLOTS - 1,
    _pad: 0,
};

/// The load-time settings.
#[inline(always)]
pub fn config() -> tracer_common::Config {
    // SAFETY: a global written once at load time; read-only afterwards.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

/// Notes, where it happens, that a record that could belong to a flow was lost now: the
/// daemon gives no verdict that rests on the absence of an event to a flow open at that time.
#[inline(always)]
pub fn note_loss(now: u64) {
    if let Some(p) = LOSS.get_ptr_mut(0) {
        let epoch = now / LOSS_SLOT_NS;
        let slot = (epoch as usize) & (LOSS_SLOTS - 1);
        // SAFETY: per-CPU slot array; `slot` is masked into bounds.
        unsafe {
            if let Some(s) = (*p).get_mut(slot) {
                *s = epoch + 1;
            }
        }
    }
}

/// `bpf_ktime_get_ns`.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// "Seen" counters of the tc programs, one cache line per CPU, in .bss: counting every packet
/// through a per-CPU map costs a helper call (~20 ns measured); a global indexed by the CPU
/// number costs about 1 ns. Userspace reads the `.bss` map and sums the slots.
#[unsafe(no_mangle)]
static mut TC_SEEN_PER_CPU: [u64; tracer_common::SEEN_SLOTS] = [0; tracer_common::SEEN_SLOTS];

/// Counts one packet entering a tc program.
#[inline(always)]
pub fn count_seen() {
    // SAFETY: helper without preconditions.
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() } as usize;
    let slot = cpu * tracer_common::SEEN_STRIDE;
    if slot < tracer_common::SEEN_SLOTS {
        // SAFETY: in bounds (checked); only this CPU writes its slot, and the program is not
        // preempted mid-run on this CPU.
        unsafe {
            let p = core::ptr::addr_of_mut!(TC_SEEN_PER_CPU)
                .cast::<u64>()
                .add(slot);
            *p += 1;
        }
    } else {
        count(counter::TC_SEEN);
    }
}

/// Unread bytes in the ring buffer above which a submit wakes the reader. Below it records
/// are submitted without a wakeup and the reader drains on its own timer: one wakeup per batch
/// instead of one per record.
pub const WAKEUP_BYTES: u64 = 32 * 1024;

/// Submit flags for a record (already reserved, so counted in the unread data): wake the reader
/// only once a batch has accumulated.
#[inline(always)]
pub fn submit_flags() -> u64 {
    use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
    // Wake only when this record takes the unread data across the threshold: one wakeup per
    // batch. A reader that is behind is not woken again and again (each wakeup costs µs);
    // it drains on its timer.
    let avail = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    let rec = core::mem::size_of::<tracer_common::DnsRecord>() as u64 + 8;
    if avail >= WAKEUP_BYTES && avail < WAKEUP_BYTES + rec {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Adds one to counter `idx` on this CPU.
#[inline(always)]
pub fn count(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *p += 1 };
    }
}

/// Fields of a record besides the packet's own (the tc or drop context adds them).
pub struct Extra {
    pub header: tracer_common::EventHeader,
    pub netns: u32,
    pub drop_reason: u32,
    pub location: u64,
    pub pkt_len: u32,
    pub flags: u8,
    pub vlan: u16,
    pub dns_len: u32,
    pub icmp_inner: u16,
}

/// Writes every field of a reserved record except the `dns` bytes (copied by the caller).
///
/// # Safety
/// `ev` must point at a reserved, writable `PacketEvent`.
#[inline(always)]
pub unsafe fn fill(ev: *mut tracer_common::PacketEvent, p: &crate::parse::Parsed, x: &Extra) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        (*ev).header = x.header;
        (*ev).netns = x.netns;
        (*ev).drop_reason = x.drop_reason;
        (*ev).location = x.location;
        (*ev).saddr = p.saddr;
        (*ev).daddr = p.daddr;
        (*ev).pkt_len = x.pkt_len;
        (*ev).sport = p.sport;
        (*ev).dport = p.dport;
        (*ev).ip_version = p.ip_version;
        (*ev).l4_proto = p.l4_proto;
        (*ev).tcp_flags = p.tcp_flags;
        (*ev).flags = x.flags;
        (*ev).vlan = x.vlan;
        (*ev).dns_len = x.dns_len as u16;
        (*ev).icmp_inner = x.icmp_inner;
        (*ev)._pad = [0; 6];
    }
}
