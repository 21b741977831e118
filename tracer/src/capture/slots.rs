//! The kernel's direct-mapped DNS table (`DNS_SLOTS`), memory-mapped: the sweeper reads the
//! slots in place and frees one by compare-and-swap on its tag, the same way the kernel
//! claims it, so a slot that changed hands since it was read is never freed by mistake.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use aya::maps::{Array, MapData};
use tracer_common::{DnsEntry, DnsKey, DnsSlot, dns_flags, dns_slot_index, dns_state};

use super::mapped::Mapped;

/// One occupied slot as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotRead {
    /// Slot index.
    pub index: u32,
    /// Its tag when read (freeing needs it unchanged).
    pub tag: u64,
    /// The query's key.
    pub key: DnsKey,
    /// The query.
    pub entry: DnsEntry,
}

/// The mapped slots.
pub struct Slots {
    /// The mapped slots (read-write, accessed with volatile reads and atomics only).
    mem: Mapped<DnsSlot>,
    count: u32,
}

impl Slots {
    /// Maps `map`, an array created with `BPF_F_MMAPABLE` of `count` slots (a power of two).
    pub fn new(map: Array<MapData, DnsSlot>, count: u32) -> std::io::Result<Self> {
        if count == 0 || !count.is_power_of_two() {
            return Err(std::io::Error::other(
                "the slot count is not a power of two",
            ));
        }
        let mem = Mapped::new(map, count as usize, true)?;
        Ok(Self { mem, count })
    }

    fn ptr(&self, index: u32) -> Option<*mut DnsSlot> {
        // SAFETY: `index` < count: inside the mapping.
        (index < self.count).then(|| unsafe { self.mem.base().add(index as usize) })
    }

    fn tag(&self, p: *mut DnsSlot) -> &AtomicU64 {
        // SAFETY: the tag is an 8-aligned u64 inside the mapping (slots are 8-aligned from a
        // page-aligned base), shared with the kernel, which changes it only atomically.
        unsafe { AtomicU64::from_ptr(&raw mut (*p).tag) }
    }

    /// Slot `index` if occupied and not changing hands while read.
    pub fn read(&self, index: u32) -> Option<SlotRead> {
        let p = self.ptr(index)?;
        let tag = self.tag(p).load(Ordering::Acquire);
        if tag == 0 {
            return None;
        }
        // SAFETY: volatile reads of plain integers inside the mapping (any bits are a valid
        // DnsSlot); no reference into memory the kernel writes is made.
        let s = unsafe { std::ptr::read_volatile(p) };
        fence(Ordering::Acquire);
        (self.tag(p).load(Ordering::Acquire) == tag).then_some(SlotRead {
            index,
            tag,
            key: s.key,
            entry: s.entry,
        })
    }

    /// Every occupied slot (at most `limit`); with `quiet` false, not those holding an
    /// answer delivered and handed over (summarised or sent), which only wait to be taken
    /// over by a later query: they are skipped after reading two fields.
    pub fn occupied(&self, limit: usize, quiet: bool) -> Vec<SlotRead> {
        (0..self.count)
            .filter(|&i| quiet || !self.is_quiet(i))
            .filter_map(|i| self.read(i))
            .take(limit)
            .collect()
    }

    /// True for a delivered, handed-over entry (a snapshot of two fields).
    fn is_quiet(&self, index: u32) -> bool {
        self.ptr(index).is_some_and(|p| {
            // SAFETY: volatile reads of two integers inside the mapping.
            let (state, flags) = unsafe {
                (
                    std::ptr::read_volatile(&raw const (*p).entry.state),
                    std::ptr::read_volatile(&raw const (*p).entry.flags),
                )
            };
            state == dns_state::DELIVERED && flags & dns_flags::UNSENT == 0
        })
    }

    /// The entry of `key` if its slot holds it.
    pub fn find(&self, key: &DnsKey) -> Option<DnsEntry> {
        self.read(dns_slot_index(key, self.count - 1))
            .filter(|s| s.key == *key)
            .map(|s| s.entry)
    }

    /// Frees slot `index` if it still holds what was read (its tag still `tag`): true when
    /// freed.
    pub fn free(&self, index: u32, tag: u64) -> bool {
        self.ptr(index).is_some_and(|p| {
            self.tag(p)
                .compare_exchange(tag, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
    }

    /// Adds `delta` (wrapping) to the count of `key`'s slot of keys held in the hash table.
    /// Raise it before putting a key in the table, lower it after taking one out.
    pub fn spill(&self, key: &DnsKey, delta: i32) {
        if let Some(p) = self.ptr(dns_slot_index(key, self.count - 1)) {
            // SAFETY: a 4-aligned u32 inside the mapping, changed only atomically.
            let c = unsafe { AtomicU32::from_ptr(&raw mut (*p).spilled) };
            c.fetch_add(delta as u32, Ordering::AcqRel);
        }
    }
}
