//! The kernel's delivery ledger (`LEDGER`): [`LedgerSlot`]s, one per query from another machine
//! whose answer left this node, in one round-robin segment per CPU, memory-mapped read-only so
//! the daemon searches it in place when a peer asks (no system call, no copy, nothing kept in
//! userspace).

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use aya::maps::{Array, IterableMap as _, MapData};
use tracer_common::LedgerSlot;

/// The mapped ring.
pub struct Ledger {
    /// Keeps the map's file descriptor (and so the mapping's backing) alive.
    _map: Array<MapData, LedgerSlot>,
    base: NonNull<LedgerSlot>,
    per_cpu: usize,
    slots: usize,
    len: usize,
}

// SAFETY: the mapping is read-only shared memory, read with volatile loads only; moving the
// owner to another thread changes nothing about that.
unsafe impl Send for Ledger {}

/// What a search of the ring found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerScan {
    /// The slots whose fingerprint was asked for (the latest when a key was delivered twice).
    pub found: HashMap<u64, LedgerSlot>,
    /// `None` while no CPU's segment has come round (the ledger remembers everything since
    /// start); else the latest of the wrapped segments' oldest answer times: an answer that
    /// left before it may have been forgotten.
    pub oldest_done_ns: Option<u64>,
}

impl Ledger {
    /// Maps `map`, an array created with `BPF_F_MMAPABLE` holding `cpus` segments of
    /// `per_cpu` slots.
    pub fn new(
        map: Array<MapData, LedgerSlot>,
        per_cpu: u32,
        cpus: usize,
    ) -> std::io::Result<Self> {
        let per_cpu = usize::try_from(per_cpu).unwrap_or(0);
        let slots = per_cpu.saturating_mul(cpus);
        if slots == 0 || u32::try_from(slots).is_err() {
            return Err(std::io::Error::other("the ledger has no slots"));
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = slots.saturating_mul(std::mem::size_of::<LedgerSlot>());
        let len = bytes.div_ceil(page).saturating_mul(page);
        let fd = map.map().fd().as_fd().as_raw_fd();
        // SAFETY: a read-only shared mapping of the map's value area, `len` bytes (the kernel
        // rounds the area up to pages), at offset 0 as mmapable arrays require.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<LedgerSlot>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(Self {
            _map: map,
            base,
            per_cpu,
            slots,
            len,
        })
    }

    /// Reads slot `i` unless it is empty or being written (`fp` changed while it was read).
    fn slot(&self, i: usize) -> Option<LedgerSlot> {
        if i >= self.slots {
            return None;
        }
        // SAFETY: `i` < slots, all inside the mapping; volatile reads of plain integers
        // (any bits are a valid LedgerSlot), never references into memory the kernel writes.
        unsafe {
            let p = self.base.as_ptr().add(i);
            let fp = std::ptr::read_volatile(&raw const (*p).fp);
            if fp == 0 {
                return None;
            }
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            let s = std::ptr::read_volatile(p);
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            let again = std::ptr::read_volatile(&raw const (*p).fp);
            (s.fp == fp && again == fp).then_some(s)
        }
    }

    /// Searches every slot for the fingerprints in `fps`. `written` holds, per CPU, how many
    /// slots it has written since load (counter `LEDGER_WRITTEN`).
    pub fn scan(&self, fps: &std::collections::HashSet<u64>, written: &[u64]) -> LedgerScan {
        let mut out = LedgerScan::default();
        for (cpu, seg) in (0..self.slots).step_by(self.per_cpu.max(1)).enumerate() {
            let mut oldest = u64::MAX;
            for i in seg..seg.saturating_add(self.per_cpu).min(self.slots) {
                // Empty, or being overwritten (then skipped: the next oldest bounds the
                // horizon, which is later, so more careful).
                let Some(s) = self.slot(i) else { continue };
                oldest = oldest.min(s.done_ns);
                if fps.contains(&s.fp) {
                    out.found
                        .entry(s.fp)
                        .and_modify(|e: &mut LedgerSlot| {
                            if s.done_ns > e.done_ns {
                                *e = s;
                            }
                        })
                        .or_insert(s);
                }
            }
            let wrapped = written
                .get(cpu)
                .is_some_and(|&w| w >= u64::try_from(self.per_cpu).unwrap_or(u64::MAX));
            if wrapped {
                out.oldest_done_ns = Some(out.oldest_done_ns.map_or(oldest, |o| o.max(oldest)));
            }
        }
        out
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
