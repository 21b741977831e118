//! The kernel's DNS table: UDP queries are paired with their answers here, so userspace does
//! not see every DNS packet.
//!
//! An entry is keyed by the client side of the query (address, port, DNS id), which kube-proxy's
//! DNAT of the kube-dns ClusterIP does not change. It lives in one of two homes:
//!
//! * its **slot** in the direct-mapped table `DNS_SLOTS` (an array indexed by a hash of the
//!   key): no hash-table insert or delete per query, which is where most of a healthy query's
//!   kernel time went. A new query takes its slot when the slot is free, holds the same key, or
//!   holds an answer summarised and delivered more than [`DNS_SLOT_LINGER_NS`] ago; the slot's
//!   tag changes by compare-and-swap, so two CPUs cannot take the same slot and the daemon's
//!   sweeper cannot free a slot that changed hands since it read it;
//! * the hash table `DNS_TABLE` when its slot is taken by another live query. Each slot counts
//!   the keys of its own that are in the hash table (`spilled`): a packet whose key is not in
//!   its slot searches the hash table only when that count is not zero.
//!
//! An entry opens at the query's first sighting and
//! collects every later one (interface, hook, time; at most [`DNS_MAX_HOPS`]), the address the
//! query was DNATed to, the answer's rcode and flags. Then, in order of likelihood:
//!
//! * **Healthy answer** (delivered to the client: at its pod veth's egress, at the uplink's
//!   egress for a client on another node, at any ingress for a host-network client): counted in
//!   the answer summaries (`SUMMARY`, count and latency histogram per client, replica, qtype and
//!   rcode) and marked delivered. Nothing goes to userspace. The entry stays (in its slot for
//!   at least [`DNS_SLOT_LINGER_NS`]; in the hash table until a per-CPU ring of
//!   [`LINGER_SLOTS`] comes round) so that a drop inside the client pod right after delivery
//!   still finds it.
//! * **Anything else** — a drop, an ICMP error, a resend, a truncated or slow answer, a query
//!   that may be a retry, `--answered flows` — the entry is handed over whole (one
//!   [`DnsRecord`]) and, unless it was delivered, switches to streaming: every later packet of the
//!   query is reported one by one, as before this table existed.
//! * **No answer**: the entry stays open; the daemon's sweeper reads it once its window is over.
//!   The kernel never touches an open entry older than `window + grace / 2` and the sweeper
//!   never takes one younger than `window + grace`, so the two never race.
//!
//! A record that cannot be emitted (ring buffer full) leaves its entry flagged
//! [`dns_flags::UNSENT`] for the sweeper: a full ring delays a verdict, it does not lose it.
//! What is truly lost (a query the full table could not take, a new query on a key still held by
//! an expired entry) is noted in the loss history at once ([`note_loss`]).
//!
//! A program that found its query in a slot writes to it within its own run (microseconds,
//! not preemptible). A slot changes hands only once its answer was delivered and quiet for
//! [`DNS_SLOT_LINGER_NS`], so such a write can land in another query's entry only if a program
//! were stalled that long between two instructions.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_EXIST, BPF_NOEXIST},
    helpers::generated::bpf_skb_load_bytes,
    programs::TcContext,
};
use tracer_common::{
    Config, DNS_MAX_HOPS, DNS_QUESTION_LEN, DNS_SLOT_LINGER_NS, DnsEntry, DnsHop, DnsKey,
    DnsRecord, DnsSlot, EventHeader, LINGER_SLOTS, SummaryKey, counter, dns_flags, dns_key_fp,
    dns_slot_index, dns_state, dns_why, hook, hop_form, kind, latency_bucket, origin,
};

use crate::{
    maps::{
        CONTROL, COUNTERS, DNS_SLOTS, DNS_TABLE, EVENTS, LEDGER, LINGER, SCRATCH_ENTRY,
        SCRATCH_SUMMARY, SLOW_CLIENTS, SUMMARY, config, count, note_loss, now_ns, submit_flags,
    },
    parse::{PacketReader, Parsed, be16},
};

/// Role of the interface a tc program is attached to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The host side of a pod's veth.
    Pod,
    /// An uplink, trunk or branch ENI: the way to other machines.
    Uplink,
    /// Anything else (loopback excluded).
    Other,
}

/// What the caller does with a packet after the table has seen it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The table has it: nothing more to report.
    Done,
    /// Report the packet as its own record (streaming query, untracked message).
    Report,
}

/// The header facts of a DNS message and the key of its query.
pub struct Msg {
    pub key: DnsKey,
    pub response: bool,
    rcode: u8,
    truncated: bool,
    ancount: u16,
}

/// Reads the 12-byte DNS header of UDP packet `p`: `None` for opcodes other than QUERY.
#[inline(always)]
pub fn msg<R: PacketReader>(r: &R, p: &Parsed) -> Option<Msg> {
    let hdr: [u8; 12] = r.read(p.payload_off)?;
    let flags = be16([hdr[2], hdr[3]]);
    if (flags >> 11) & 0xf != 0 {
        return None;
    }
    let response = flags & 0x8000 != 0;
    let (client, port) = if response {
        (p.daddr, p.dport)
    } else {
        (p.saddr, p.sport)
    };
    Some(Msg {
        key: DnsKey {
            client,
            port,
            id: be16([hdr[0], hdr[1]]),
            ip_version: p.ip_version,
            _pad: [0; 3],
        },
        response,
        rcode: (flags & 0xf) as u8,
        truncated: flags & 0x0200 != 0,
        ancount: be16([hdr[6], hdr[7]]),
    })
}

/// 16-byte address equality without a `bcmp` call (BPF has none).
#[inline(always)]
fn eq16(a: &[u8; 16], b: &[u8; 16]) -> bool {
    // SAFETY: both are 16-byte arrays; unaligned reads of two u64 each.
    unsafe {
        let (a, b) = (a.as_ptr().cast::<u64>(), b.as_ptr().cast::<u64>());
        a.read_unaligned() == b.read_unaligned()
            && a.add(1).read_unaligned() == b.add(1).read_unaligned()
    }
}

/// Key equality without a `bcmp` call.
#[inline(always)]
fn key_eq(a: &DnsKey, b: &DnsKey) -> bool {
    eq16(&a.client, &b.client) && a.port == b.port && a.id == b.id && a.ip_version == b.ip_version
}

/// The slot `key` maps to in the direct-mapped table, whatever it holds.
#[inline(always)]
fn slot_for(key: &DnsKey, cfg: &Config) -> Option<*mut DnsSlot> {
    DNS_SLOTS.get_ptr_mut(dns_slot_index(key, cfg.slot_mask))
}

/// The entry of `key`: its slot when the slot holds it, else the hash table. `true` with it
/// when it lives in a slot.
#[inline(always)]
fn find(key: &DnsKey, cfg: &Config) -> Option<(&'static mut DnsEntry, bool)> {
    if let Some(s) = slot_for(key, cfg) {
        // SAFETY: an array map value: valid memory for the program's run (never freed). The
        // tag is read once, volatile (another CPU may change it); see `claim` for reuse.
        unsafe {
            if core::ptr::read_volatile(&raw const (*s).tag) != 0 && key_eq(&(*s).key, key) {
                return Some((&mut (*s).entry, true));
            }
            if core::ptr::read_volatile(&raw const (*s).spilled) == 0 {
                return None;
            }
        }
    }
    let e = DNS_TABLE.get_ptr_mut(key)?;
    // SAFETY: a value of a no-prealloc hash map stays valid for the program's run.
    Some((unsafe { &mut *e }, false))
}

/// The slot's count of keys in the hash table.
#[inline(always)]
fn spill_count(s: *mut DnsSlot) -> *mut u32 {
    // SAFETY: a field of an array map value (valid, never freed).
    unsafe { &raw mut (*s).spilled }
}

/// Removes `key` from the hash table, giving its slot's spill count back.
#[inline(always)]
fn table_remove(key: &DnsKey, cfg: &Config) {
    if DNS_TABLE.remove(key).is_ok()
        && let Some(s) = slot_for(key, cfg)
    {
        // SAFETY: a field of an array map value, changed only atomically.
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(spill_count(s), u32::MAX) };
    }
}

/// Takes slot `s` for a new query of `key`: when it is free, holds `key` already (the caller
/// replaces that query, as an insert would), or holds an answer summarised and delivered more
/// than [`DNS_SLOT_LINGER_NS`] ago. The tag changes by compare-and-swap, so two CPUs cannot
/// take the same slot, and the daemon's sweeper, which frees slots the same way, cannot free
/// one that changed hands since it read it.
#[inline(always)]
fn claim(s: *mut DnsSlot, key: &DnsKey, now: u64) -> bool {
    // SAFETY: an array map value (valid, never freed); the tag is only changed atomically.
    unsafe {
        let tag = core::ptr::read_volatile(&raw const (*s).tag);
        if tag != 0 && !key_eq(&(*s).key, key) {
            let e = &(*s).entry;
            let quiet = e.state == dns_state::DELIVERED
                && e.flags & dns_flags::UNSENT == 0
                && now.saturating_sub(e.done_ns) > DNS_SLOT_LINGER_NS;
            if !quiet {
                return false;
            }
        }
        let mut new = now | 1;
        if new == tag {
            new = new.wrapping_add(2);
        }
        let (_, ok) = atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut (*s).tag,
            tag,
            new,
        );
        if ok {
            (*s).key = *key;
        }
        ok
    }
}

/// The hop form of a packet of the query: whether its server side is the translated address
/// (after DNAT), recording that address the first time it is seen.
#[inline(always)]
fn server_form(e: &mut DnsEntry, addr: &[u8; 16], port: u16) -> u8 {
    if eq16(addr, &e.service) && port == e.service_port {
        return 0;
    }
    if eq16(&e.server, &e.service) && e.server_port == e.service_port {
        e.server = *addr;
        e.server_port = port;
    }
    hop_form::TRANSLATED
}

/// Appends a sighting (counting it when the entry is full).
#[inline(always)]
fn add_hop(e: &mut DnsEntry, hop: DnsHop) {
    let n = e.nhops as usize;
    match e.hops.get_mut(n) {
        Some(h) if n < DNS_MAX_HOPS => {
            *h = hop;
            e.nhops += 1;
        }
        _ => {
            e.omitted = e.omitted.saturating_add(1);
            e.flags |= dns_flags::HOPS_FULL;
        }
    }
    e.last_ns = hop.ts_ns;
}

/// True when the query was already seen at this point (a resend).
#[inline(always)]
fn seen_request_at(e: &DnsEntry, ifindex: u32, at: u8) -> bool {
    let n = e.nhops as usize;
    for i in 0..DNS_MAX_HOPS {
        if i >= n {
            break;
        }
        if let Some(h) = e.hops.get(i)
            && h.ifindex == ifindex
            && h.hook == at
            && h.form & (hop_form::RESPONSE | hop_form::DROP | hop_form::ICMP) == 0
        {
            return true;
        }
    }
    false
}

/// Whether a response seen here has reached its client.
#[inline(always)]
fn is_delivery(from: u8, role: Role, at: u8) -> bool {
    match from {
        origin::POD => role == Role::Pod && at == hook::TC_EGRESS,
        origin::REMOTE => role == Role::Uplink && at == hook::TC_EGRESS,
        _ => at == hook::TC_INGRESS,
    }
}

/// Hands the entry over as one record. `false` when the ring buffer was full.
#[inline(always)]
fn emit(e: &DnsEntry, key: &DnsKey, why: u8, now: u64) -> bool {
    let Some(mut rec) = EVENTS.reserve::<DnsRecord>(0) else {
        count(counter::DNS_RINGBUF_FULL);
        return false;
    };
    let r = rec.as_mut_ptr();
    // SAFETY: `r` points at a reserved, writable DnsRecord; every field is written.
    unsafe {
        (*r).header = EventHeader {
            kind: kind::DNS,
            hook: 0,
            _pad: [0; 2],
            ifindex: 0,
            ts_ns: now,
        };
        (*r).key = *key;
        (*r).why = why;
        (*r)._pad = [0; 7];
        (*r).entry = *e;
    }
    rec.submit(submit_flags());
    count(counter::DNS_RECORDS);
    true
}

/// Hands the entry over and switches it to streaming (later packets are reported one by one).
/// When the ring is full the entry keeps everything and is flagged for the sweeper.
#[inline(always)]
fn catch_up(e: &mut DnsEntry, key: &DnsKey, why: u8, now: u64) {
    if !emit(e, key, why, now) {
        e.flags |= dns_flags::UNSENT;
    }
    e.state = dns_state::STREAMING;
}

/// Counts a healthy answer in the summary of the current epoch. `false` when the summary
/// table is full (the caller hands the entry over instead).
#[inline(always)]
fn summarize(e: &mut DnsEntry, key: &DnsKey, latency: u64) -> bool {
    let epoch = CONTROL.get(0).map_or(0, |c| c.epoch as u8);
    let sk = SummaryKey {
        client: key.client,
        server: e.server,
        qtype: e.qtype,
        rcode: e.rcode,
        ip_version: key.ip_version,
        epoch,
        origin: e.origin,
        _pad: [0; 2],
    };
    let b = latency_bucket(latency);
    e.epoch = epoch;
    if add_to(&sk, latency, b) {
        return true;
    }
    let Some(z) = SCRATCH_SUMMARY.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch value; all-zero between uses, restored below.
    let inserted = unsafe {
        (*z).count = 1;
        (*z).sum_ns = latency;
        if let Some(c) = (*z).buckets.get_mut(b) {
            *c = 1;
        }
        let r = SUMMARY.insert(&sk, &*z, u64::from(BPF_NOEXIST));
        (*z).count = 0;
        (*z).sum_ns = 0;
        if let Some(c) = (*z).buckets.get_mut(b) {
            *c = 0;
        }
        r.is_ok()
    };
    // Another CPU may have inserted the key first.
    inserted || add_to(&sk, latency, b) || {
        count(counter::SUMMARY_FULL);
        false
    }
}

/// Adds one answer to an existing summary. `false` when the key is absent.
#[inline(always)]
fn add_to(sk: &SummaryKey, latency: u64, b: usize) -> bool {
    let Some(v) = SUMMARY.get_ptr_mut(sk) else {
        return false;
    };
    // SAFETY: a map value (no-prealloc hash map: valid for the program's run); updated with
    // atomic adds (BPF_ATOMIC_ADD) because every CPU adds to the same key. core's atomic types
    // have no read-modify-write operations on the BPF target, hence the intrinsic.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*v).count, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*v).sum_ns, latency);
        if let Some(c) = (*v).buckets.get_mut(b) {
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(c, 1);
        }
    }
    true
}

/// Puts a delivered entry in this CPU's linger ring and frees the one it replaces (unless its
/// key now belongs to a newer query).
#[inline(always)]
fn linger(key: &DnsKey, done_ns: u64) {
    let Some(r) = LINGER.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's ring; no other writer while the program runs.
    let r = unsafe { &mut *r };
    let h = (r.head as usize) & (LINGER_SLOTS - 1);
    if let Some(slot) = r.slots.get_mut(h) {
        if slot.done_ns != 0
            && let Some(old) = DNS_TABLE.get_ptr(&slot.key)
        {
            // SAFETY: map value valid for the program's run (no-prealloc hash map).
            let (state, done) = unsafe { ((*old).state, (*old).done_ns) };
            if state == dns_state::DELIVERED && done == slot.done_ns {
                table_remove(&slot.key, &config());
                count(counter::DNS_LINGER_FREED);
            }
        }
        slot.key = *key;
        slot.done_ns = done_ns;
    }
    r.head = r.head.wrapping_add(1);
}

/// The answer reached its client: summarize it, or hand it over when it is interesting.
#[inline(always)]
fn deliver(e: &mut DnsEntry, key: &DnsKey, now: u64, cfg: &Config, in_slot: bool) {
    e.done_ns = now;
    e.state = dns_state::DELIVERED;
    let latency = now.saturating_sub(e.first_ns);
    let whole = cfg.answered_flows != 0
        || e.flags & (dns_flags::TRUNCATED | dns_flags::RETRY_SUSPECT) != 0
        || latency > cfg.slow_ns;
    if !whole && summarize(e, key, latency) {
        e.flags |= dns_flags::SUMMARIZED;
        count(counter::DNS_SUMMARIZED);
    } else if !emit(e, key, dns_why::DELIVERED, now) {
        // The sweeper hands it over and frees it.
        e.flags |= dns_flags::UNSENT;
        return;
    }
    // A slot is taken over by a later query once quiet; a table entry is freed by the ring.
    if !in_slot {
        linger(key, now);
    }
}

/// Length in 1..=DNS_QUESTION_LEN in a form the verifier can bound (LLVM would otherwise
/// merge the checks and the verifier would see 0..=DNS_QUESTION_LEN).
#[inline(always)]
fn question_len(n: u32) -> u32 {
    ((core::hint::black_box(n).wrapping_sub(1)) & (DNS_QUESTION_LEN as u32 - 1)) + 1
}

/// Copies the question of the query at `off` (ending at `end`) into `e` and reads its type.
#[inline(always)]
fn copy_question(ctx: &TcContext, e: &mut DnsEntry, off: u32, end: u32) {
    e.qlen = 0;
    e.qtype = 0;
    let avail = end.saturating_sub(off);
    let n = if avail > DNS_QUESTION_LEN as u32 {
        DNS_QUESTION_LEN as u32
    } else {
        avail
    };
    if n == 0 {
        e.flags |= dns_flags::QUESTION_CUT;
        return;
    }
    // SAFETY: the destination is the entry's question array (DNS_QUESTION_LEN bytes), the
    // length is bounded to it; the helper checks the packet side.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr() as *const _,
            off,
            e.question.as_mut_ptr() as *mut _,
            question_len(n),
        )
    };
    if ret != 0 {
        e.flags |= dns_flags::QUESTION_CUT;
        return;
    }
    e.qlen = n as u8;
    let qlen = n as usize;
    // Walk the labels to the root label; the type follows it.
    let mut i = 0usize;
    for _ in 0..64 {
        if i >= qlen {
            break;
        }
        let l = e.question[i & (DNS_QUESTION_LEN - 1)];
        if l == 0 {
            if i + 2 < qlen {
                e.qtype = be16([
                    e.question[(i + 1) & (DNS_QUESTION_LEN - 1)],
                    e.question[(i + 2) & (DNS_QUESTION_LEN - 1)],
                ]);
            }
            return;
        }
        if l & 0xc0 != 0 {
            break;
        }
        i += usize::from(l) + 1;
    }
    e.flags |= dns_flags::QUESTION_CUT;
}

/// True when the client has an older query open for longer than `slow_ns`: this one may be
/// its retry.
#[inline(always)]
fn slow_client(client: &[u8; 16], now: u64) -> bool {
    if CONTROL.get(0).is_none_or(|c| c.slow_any == 0) {
        return false;
    }
    // SAFETY: read-only look at a map value.
    unsafe { SLOW_CLIENTS.get(client) }.is_some_and(|until| now < *until)
}

/// Where and how a packet was seen.
#[derive(Clone, Copy)]
pub struct At {
    pub ifindex: u32,
    pub hook: u8,
    pub role: Role,
    pub vlan: u16,
}

/// A new query is about to replace entry `e` of the same key: if `e`'s record is still
/// waiting for the sweeper (the ring was full), it is lost now, and noted as such.
#[inline(always)]
fn replace(e: &DnsEntry, now: u64) {
    if e.flags & dns_flags::UNSENT != 0 {
        count(counter::DNS_KEY_BUSY);
        note_loss(now);
    }
}

/// Opens an entry for query `m` seen in packet `p` (replacing whatever the key held).
#[inline(always)]
fn open(ctx: &TcContext, p: &Parsed, m: &Msg, at: At, end: u32, now: u64) {
    let cfg = config();
    let slot = slot_for(&m.key, &cfg).filter(|s| claim(*s, &m.key, now));
    if slot.is_none() {
        count(counter::DNS_SLOT_TAKEN);
    }
    let s = match slot {
        // SAFETY: the slot was just claimed for this query (see `claim`).
        Some(s) => unsafe { &mut (*s).entry },
        None => {
            let Some(s) = SCRATCH_ENTRY.get_ptr_mut(0) else {
                return;
            };
            // SAFETY: this CPU's scratch entry; no other user while the program runs.
            unsafe { &mut *s }
        }
    };
    s.first_ns = now;
    s.last_ns = now;
    s.done_ns = 0;
    s.state = dns_state::OPEN;
    s.origin = match (at.role, at.hook) {
        (Role::Pod, hook::TC_INGRESS) => origin::POD,
        (Role::Uplink, hook::TC_INGRESS) => origin::REMOTE,
        _ => origin::HOST,
    };
    s.nhops = 1;
    s.omitted = 0;
    s.flags = 0;
    s.rcode = 0;
    s.epoch = 0;
    s.icmp_proto = 0;
    s.ancount = 0;
    s.icmp = 0;
    s.service = p.daddr;
    s.server = p.daddr;
    s.service_port = p.dport;
    s.server_port = p.dport;
    s.drop_reason = 0;
    s.drop_netns = 0;
    s._pad = 0;
    s.drop_location = 0;
    s.hops[0] = DnsHop {
        ts_ns: now,
        ifindex: at.ifindex,
        hook: at.hook,
        form: 0,
        vlan: at.vlan,
    };
    copy_question(ctx, s, p.payload_off + 12, end);
    if slow_client(&m.key.client, now) {
        s.flags |= dns_flags::RETRY_SUSPECT;
    }
    if slot.is_some() {
        count(counter::DNS_TRACKED);
        return;
    }
    // Counted as spilled before the insert (a lookup must never skip the table while it may
    // hold the key); an insert that replaced an entry of the same key gives the count back.
    let spill = slot_for(&m.key, &cfg).map(spill_count);
    if let Some(c) = spill {
        // SAFETY: a field of an array map value, changed only atomically.
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(c, 1) };
    }
    let inserted = DNS_TABLE.insert(&m.key, s, u64::from(BPF_NOEXIST)).is_ok() || {
        let replaced = DNS_TABLE.insert(&m.key, s, u64::from(BPF_EXIST)).is_ok();
        if let Some(c) = spill
            && replaced
        {
            // SAFETY: as above.
            unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(c, u32::MAX) };
        }
        replaced
    };
    if inserted {
        count(counter::DNS_TRACKED);
    } else {
        count(counter::DNS_TABLE_FULL);
        note_loss(now);
    }
}

/// A UDP DNS packet at a tc hook. `end` is the offset where the IP packet ends.
#[inline(always)]
pub fn on_tc<R: PacketReader>(ctx: &TcContext, r: &R, p: &Parsed, at: At, end: u32) -> Outcome {
    let Some(m) = msg(r, p) else {
        return Outcome::Report;
    };
    let now = now_ns();
    let cfg = config();
    let Some((e, in_slot)) = find(&m.key, &cfg) else {
        if m.response {
            count(counter::DNS_ORPHAN);
        } else {
            open(ctx, p, &m, at, end, now);
        }
        return Outcome::Done;
    };
    match e.state {
        dns_state::STREAMING => {
            e.last_ns = now;
            Outcome::Report
        }
        dns_state::DELIVERED => {
            if m.response {
                // The answer again after delivery (a copy at another point).
                count(counter::DNS_LATE);
            } else {
                replace(e, now);
                open(ctx, p, &m, at, end, now);
            }
            Outcome::Done
        }
        _ => on_open(ctx, r, p, &m, e, in_slot, at, end, now, &cfg),
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn on_open<R: PacketReader>(
    ctx: &TcContext,
    r: &R,
    p: &Parsed,
    m: &Msg,
    e: &mut DnsEntry,
    in_slot: bool,
    at: At,
    end: u32,
    now: u64,
    cfg: &Config,
) -> Outcome {
    let age = now.saturating_sub(e.first_ns);
    if age > cfg.window_ns + cfg.grace_ns / 2 {
        // The sweeper's now: a late answer is not matched; a new query on this key cannot be
        // tracked until the sweeper has taken the old one.
        if m.response {
            count(counter::DNS_LATE);
        } else {
            count(counter::DNS_KEY_BUSY);
            note_loss(now);
        }
        return Outcome::Done;
    }
    let mut hop = DnsHop {
        ts_ns: now,
        ifindex: at.ifindex,
        hook: at.hook,
        form: 0,
        vlan: at.vlan,
    };
    if !m.response {
        if seen_request_at(e, at.ifindex, at.hook) {
            // Sent again: the same question is a resend (the daemon links the attempts),
            // another question reuses the socket and id (the old query gets its own verdict).
            let first: Option<[u8; 8]> = r.read(p.payload_off + 12);
            let same = age <= cfg.window_ns
                && first.is_none_or(|q| {
                    let mine = [
                        e.question[0],
                        e.question[1],
                        e.question[2],
                        e.question[3],
                        e.question[4],
                        e.question[5],
                        e.question[6],
                        e.question[7],
                    ];
                    // SAFETY: 8-byte arrays read as u64 for one comparison.
                    unsafe {
                        q.as_ptr().cast::<u64>().read_unaligned()
                            == mine.as_ptr().cast::<u64>().read_unaligned()
                    }
                });
            if same {
                catch_up(e, &m.key, dns_why::RESEND, now);
                return Outcome::Report;
            }
            catch_up(e, &m.key, dns_why::SUPERSEDED, now);
            replace(e, now);
            open(ctx, p, m, at, end, now);
            return Outcome::Done;
        }
        hop.form = server_form(e, &p.daddr, p.dport);
        add_hop(e, hop);
        return Outcome::Done;
    }
    hop.form = hop_form::RESPONSE | server_form(e, &p.saddr, p.sport);
    add_hop(e, hop);
    e.flags |= dns_flags::ANSWER;
    if m.truncated {
        e.flags |= dns_flags::TRUNCATED;
    }
    e.rcode = m.rcode;
    e.ancount = m.ancount;
    if is_delivery(e.origin, at.role, at.hook) {
        if e.origin == origin::REMOTE && cfg.ledger_slots != 0 {
            ledger(e, &m.key, at.ifindex, now, cfg.ledger_slots);
        }
        deliver(e, &m.key, now, cfg, in_slot);
    }
    Outcome::Done
}

/// Notes in the delivery ledger that the answer to a query from another machine left through
/// `out_ifindex`: a peer tracer that never saw it come back asks about it. Each CPU writes its
/// own segment of `per_cpu` slots, round-robin, its count of writes being the head.
#[inline(always)]
fn ledger(e: &DnsEntry, key: &DnsKey, out_ifindex: u32, now: u64, per_cpu: u32) {
    let Some(written) = COUNTERS.get_ptr_mut(counter::LEDGER_WRITTEN) else {
        return;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
    let n = unsafe {
        let n = *written;
        *written = n + 1;
        n
    };
    // SAFETY: helper without preconditions.
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
    let idx = cpu
        .wrapping_mul(per_cpu)
        .wrapping_add((n % u64::from(per_cpu)) as u32);
    let Some(slot) = LEDGER.get_ptr_mut(idx) else {
        return;
    };
    // The query's first sighting is its arrival; its first later sighting leaving through
    // another interface is the way to the replica.
    let in_ifindex = e.hops[0].ifindex;
    let mut replica_ifindex = 0;
    let nhops = e.nhops as usize;
    for i in 1..DNS_MAX_HOPS {
        if i >= nhops {
            break;
        }
        if let Some(h) = e.hops.get(i)
            && h.hook == hook::TC_EGRESS
            && h.form & (hop_form::RESPONSE | hop_form::DROP | hop_form::ICMP) == 0
            && h.ifindex != in_ifindex
        {
            replica_ifindex = h.ifindex;
            break;
        }
    }
    let before = now.saturating_sub(e.first_ns) / 1000;
    // SAFETY: `slot` points at an element of the array map, written only by this CPU. `fp` is
    // cleared first and written last (the daemon reads it before and after the other fields,
    // see `LedgerSlot`).
    unsafe {
        core::ptr::write_volatile(&mut (*slot).fp, 0);
        (*slot).done_ns = now;
        (*slot).arrived_us_before = if before > u64::from(u32::MAX) {
            u32::MAX
        } else {
            before as u32
        };
        (*slot).in_ifindex = in_ifindex;
        (*slot).replica_ifindex = replica_ifindex;
        (*slot).out_ifindex = out_ifindex;
        core::ptr::write_volatile(&mut (*slot).fp, dns_key_fp(key));
    }
}

/// The entry of `key` when the kernel summarises its query (it is not streamed to userspace
/// packet by packet); `None` sends the event to userspace as a plain record.
#[inline(always)]
fn summarised(key: &DnsKey) -> Option<&'static mut DnsEntry> {
    let (e, _) = find(key, &config())?;
    (e.state != dns_state::STREAMING).then_some(e)
}

/// An ICMP error quoting UDP DNS query `q` (whose header `r` can read), seen at a tc hook.
/// `icmp` is type << 8 | code, `proto` the ICMP protocol.
#[inline(always)]
pub fn on_icmp<R: PacketReader>(r: &R, q: &Parsed, at: At, icmp: u16, proto: u8) -> Outcome {
    let Some(m) = msg(r, q) else {
        return Outcome::Report;
    };
    if m.response {
        return Outcome::Report;
    }
    let Some(e) = summarised(&m.key) else {
        return Outcome::Report;
    };
    let now = now_ns();
    let form = hop_form::ICMP | hop_form::RESPONSE | server_form(e, &q.daddr, q.dport);
    add_hop(
        e,
        DnsHop {
            ts_ns: now,
            ifindex: at.ifindex,
            hook: at.hook,
            form,
            vlan: at.vlan,
        },
    );
    e.icmp = icmp;
    e.icmp_proto = proto;
    e.flags |= dns_flags::ICMP;
    catch_up(e, &m.key, dns_why::ICMP, now);
    Outcome::Done
}

/// The kernel dropped UDP DNS packet `p` (header readable through `r`). `Done` when the drop
/// went into its query's entry.
#[inline(always)]
pub fn on_drop<R: PacketReader>(
    r: &R,
    p: &Parsed,
    ifindex: u32,
    netns: u32,
    reason: u32,
    location: u64,
) -> Outcome {
    let Some(m) = msg(r, p) else {
        return Outcome::Report;
    };
    let Some(e) = summarised(&m.key) else {
        return Outcome::Report;
    };
    let now = now_ns();
    let form = if m.response {
        hop_form::DROP | hop_form::RESPONSE | server_form(e, &p.saddr, p.sport)
    } else {
        hop_form::DROP | server_form(e, &p.daddr, p.dport)
    };
    add_hop(
        e,
        DnsHop {
            ts_ns: now,
            ifindex,
            hook: hook::KFREE_SKB,
            form,
            vlan: 0,
        },
    );
    e.drop_reason = reason;
    e.drop_netns = netns;
    e.drop_location = location;
    e.flags |= dns_flags::DROP;
    let why = if e.state == dns_state::DELIVERED && e.flags & dns_flags::SUMMARIZED != 0 {
        dns_why::DROPPED_AFTER_SUMMARY
    } else {
        dns_why::DROPPED
    };
    catch_up(e, &m.key, why, now);
    Outcome::Done
}
