//! The kernel's direct-mapped DNS table (`DNS_SLOTS`), memory-mapped: the sweeper reads the
//! slots in place and frees one by compare-and-swap on its tag, the same way the kernel
//! claims it, so a slot that changed hands since it was read is never freed by mistake.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering, fence},
};

use aya::maps::{Array, IterableMap as _, MapData};
use tracer_common::{DnsEntry, DnsKey, DnsSlot, dns_flags, dns_slot_index, dns_state};

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
    /// Keeps the map's file descriptor (and so the mapping's backing) alive.
    _map: Array<MapData, DnsSlot>,
    base: NonNull<DnsSlot>,
    count: u32,
    len: usize,
}

// SAFETY: shared memory accessed with volatile reads and atomic operations only; moving the
// owner to another thread changes nothing about that.
unsafe impl Send for Slots {}

impl Slots {
    /// Maps `map`, an array created with `BPF_F_MMAPABLE` of `count` slots (a power of two).
    pub fn new(map: Array<MapData, DnsSlot>, count: u32) -> std::io::Result<Self> {
        if count == 0 || !count.is_power_of_two() {
            return Err(std::io::Error::other(
                "the slot count is not a power of two",
            ));
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = (count as usize).saturating_mul(std::mem::size_of::<DnsSlot>());
        let len = bytes.div_ceil(page).saturating_mul(page);
        let fd = map.map().fd().as_fd().as_raw_fd();
        // SAFETY: a shared read-write mapping of the map's value area, `len` bytes (the kernel
        // rounds the area up to pages), at offset 0 as mmapable arrays require.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<DnsSlot>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(Self {
            _map: map,
            base,
            count,
            len,
        })
    }

    fn ptr(&self, index: u32) -> Option<*mut DnsSlot> {
        // SAFETY: `index` < count: inside the mapping.
        (index < self.count).then(|| unsafe { self.base.as_ptr().add(index as usize) })
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

impl Drop for Slots {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
