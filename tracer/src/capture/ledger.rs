//! The kernel's delivery ledger (`LEDGER`): [`LedgerSlot`]s, one per query from another machine
//! whose answer left this node, in one round-robin segment per CPU, memory-mapped read-only so
//! the daemon searches it in place when a peer asks (no system call, no copy, nothing kept in
//! userspace).

use std::collections::HashMap;

use aya::maps::{Array, MapData};
use tracer_common::LedgerSlot;

use super::mapped::Mapped;

/// The mapped ring.
pub struct Ledger {
    /// The mapped slots (read-only, read with volatile loads only).
    mem: Mapped<LedgerSlot>,
    per_cpu: usize,
    slots: usize,
}

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
        let mem = Mapped::new(map, slots, false)?;
        Ok(Self {
            mem,
            per_cpu,
            slots,
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
            let p = self.mem.base().add(i);
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
