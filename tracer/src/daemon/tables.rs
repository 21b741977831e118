//! The daemon's side of the kernel's tables: the sweeper of the DNS table, the loss history,
//! the answer summaries and the slow-client list.
//!
//! Order per tick (the daemon's loop guarantees it): drain the ring buffer, read the loss
//! history, sweep, then let the correlator decide. A negative verdict is thus only decided
//! against a ring drained past the flow's deadline and a loss history read after that drain,
//! and the loss times are the kernel's own (taken where the loss happened), so a daemon that was
//! stopped or starved of CPU decides as if it had never stalled.

use std::collections::{BTreeSet, HashMap, HashSet};

use tracer_common::{
    Config, Control, DnsEntry, DnsKey, FlowKey, FlowStats, LOSS_SLOT_NS, LOSS_SLOTS, dns_flags,
    dns_state,
};

use crate::capture::load::{Tables, read_all, take_entry};
use crate::decode::record::{Origin, Why};
use crate::verdict::summary::{Group, Summaries};

/// An entry taken from (or read in) the DNS table, for the pipeline to decode.
pub struct Swept {
    /// Why (always [`Why::Swept`] here; kept for the decoder).
    pub why: Why,
    /// Its key.
    pub key: DnsKey,
    /// The entry.
    pub entry: DnsEntry,
}

/// Where an entry read by the sweeper lives.
enum Home {
    /// A slot of the direct-mapped table, and its tag when read.
    Slot { index: u32, tag: u64 },
    /// The hash table.
    Table,
}

/// Counters of the sweeper.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct SweepStats {
    /// Open entries whose window ended, taken from the table.
    pub expired: u64,
    /// Entries whose record could not be emitted, handed over by the sweeper.
    pub unsent: u64,
    /// Snapshots of slow open entries handed over early (for linking retries).
    pub snapshots: u64,
    /// Idle streaming entries freed.
    pub streaming_freed: u64,
    /// A key reused by a new query between the table read and the take (the new query was
    /// put back; a loss when that failed).
    pub races: u64,
    /// Table reads that failed.
    pub read_errors: u64,
    /// Summary entries read.
    pub summaries_read: u64,
}

/// Most snapshots remembered (keys of slow open entries already handed over).
const MAX_SNAPSHOTS: usize = 65_536;
/// Most entries read from the DNS table per sweep.
const MAX_SWEEP: usize = 1 << 20;
/// Sweep interval while the table holds nothing open and nothing new was opened, ns.
pub const IDLE_SWEEP_NS: u64 = 2_000_000_000;

/// The kernel tables and what the daemon remembers about them.
pub struct KernelTables {
    t: Tables,
    cfg: Config,
    /// Sweep period, ns: slow entries are handed over once older than `slow_ns` + this.
    period_ns: u64,
    control: Control,
    /// Summary interval start (ns) and the epoch flipped away from, waiting to be read.
    pending_read: Option<(u32, u64, u64)>,
    interval_start: u64,
    /// Loss epochs already noted.
    losses_seen: BTreeSet<u64>,
    last_loss_read: Option<u64>,
    snapshots: HashSet<(DnsKey, u64)>,
    slow: HashMap<[u8; 16], u64>,
    /// The kernel's count of opened entries at the last full sweep, and whether that sweep
    /// left anything to come back for; when neither changed, sweeps are spaced out.
    last_sweep: Option<(u64, bool, u64)>,
    /// Counters.
    pub stats: SweepStats,
}

impl KernelTables {
    /// Wraps the tables; `cfg` is what the programs were loaded with.
    pub fn new(t: Tables, cfg: Config, period_ns: u64, now: u64) -> Self {
        Self {
            t,
            cfg,
            period_ns,
            control: Control::default(),
            pending_read: None,
            interval_start: now,
            losses_seen: BTreeSet::new(),
            last_loss_read: None,
            snapshots: HashSet::new(),
            slow: HashMap::new(),
            last_sweep: None,
            stats: SweepStats::default(),
        }
    }

    /// The entry of `key` in the kernel's DNS table now, if any (one system call).
    pub fn dns_entry(&self, key: &DnsKey) -> Option<DnsEntry> {
        self.t
            .slots
            .find(key)
            .or_else(|| self.t.dns.get(key, 0).ok())
    }

    /// The entry of `key` in the kernel's flow table now, if any (one system call).
    pub fn flow(&self, key: &FlowKey) -> Option<FlowStats> {
        self.t.flows.get(key, 0).ok()
    }

    /// The kernel's delivery ledger, when loaded with one.
    pub fn ledger(&self) -> Option<&crate::capture::ledger::Ledger> {
        self.t.ledger.as_ref()
    }

    /// The node's namespace map (kept in sync by [`super::scope::Scope`]).
    pub fn scope_map(&mut self) -> &mut aya::maps::HashMap<aya::maps::MapData, u32, u8> {
        &mut self.t.scope
    }

    /// Reads the kernel's loss history and reports each loss not reported yet as a time span
    /// `(from, to, what)`.
    pub fn read_losses(&mut self, now: u64, mut note: impl FnMut(u64, u64, &str)) {
        let history = LOSS_SLOT_NS.saturating_mul(LOSS_SLOTS as u64);
        if let Some(last) = self.last_loss_read
            && now.saturating_sub(last) + 4 * LOSS_SLOT_NS > history
        {
            // Slots may have been overwritten before this read: every flow alive meanwhile
            // may have lost records.
            note(
                last,
                now,
                "the daemon did not read the kernel's loss history in time",
            );
        }
        self.last_loss_read = Some(now);
        let values = match self.t.loss.get(&0, 0) {
            Ok(v) => v,
            Err(err) => {
                self.stats.read_errors += 1;
                tracing::warn!(%err, "reading the kernel's loss history");
                note(
                    now.saturating_sub(history),
                    now,
                    "the kernel's loss history could not be read",
                );
                return;
            }
        };
        for cpu in values.iter() {
            for &v in cpu.iter() {
                if v == 0 {
                    continue;
                }
                let epoch = v - 1;
                if self.losses_seen.insert(epoch) {
                    let from = epoch.saturating_mul(LOSS_SLOT_NS);
                    note(
                        from,
                        from.saturating_add(LOSS_SLOT_NS),
                        "kernel records were lost (ring buffer or DNS table full)",
                    );
                }
            }
        }
        let oldest = (now / LOSS_SLOT_NS).saturating_sub(2 * LOSS_SLOTS as u64);
        self.losses_seen = self.losses_seen.split_off(&oldest);
    }

    /// Sweeps the DNS table: hands over entries whose window is over, entries whose record
    /// could not be emitted, and (once) slow open entries; frees idle streaming entries; keeps
    /// the slow-client list. `loss` is called for what could not be kept.
    ///
    /// Reading the table costs time in proportion to its capacity (the kernel walks every
    /// bucket), so when no entry was opened since the last sweep (`opened`, the kernel's
    /// count) and that sweep found nothing open, the next one waits [`IDLE_SWEEP_NS`].
    pub fn sweep(&mut self, now: u64, opened: u64, mut loss: impl FnMut(u64, &str)) -> Vec<Swept> {
        if let Some((before, pending, at)) = self.last_sweep
            && before == opened
            && !pending
            && now.saturating_sub(at) < IDLE_SWEEP_NS
        {
            return Vec::new();
        }
        let in_slots = self.t.slots.occupied(MAX_SWEEP, false);
        let in_table = match read_all(&self.t.dns, MAX_SWEEP) {
            Ok(e) => e,
            Err(err) => {
                self.stats.read_errors += 1;
                tracing::warn!(%err, "reading the DNS table");
                loss(now, "the kernel's DNS table could not be read");
                return Vec::new();
            }
        };
        let expire_after = self.cfg.window_ns.saturating_add(self.cfg.grace_ns);
        let slow_after = self.cfg.slow_ns.saturating_add(self.period_ns);
        let mut out = Vec::new();
        let entries: Vec<(DnsKey, DnsEntry, Home)> = in_slots
            .into_iter()
            .map(|s| {
                let home = Home::Slot {
                    index: s.index,
                    tag: s.tag,
                };
                (s.key, s.entry, home)
            })
            .chain(in_table.into_iter().map(|(k, e)| (k, e, Home::Table)))
            .collect();
        let mut present = HashSet::with_capacity(entries.len());
        // Anything that is not a quietly lingering delivered entry brings the next sweep back.
        let pending = entries
            .iter()
            .any(|(_, e, _)| e.state != dns_state::DELIVERED || e.flags & dns_flags::UNSENT != 0);
        self.last_sweep = Some((opened, pending, now));
        for (key, e, home) in entries {
            present.insert((key, e.first_ns));
            let age = now.saturating_sub(e.first_ns);
            let unsent = e.flags & dns_flags::UNSENT != 0;
            match e.state {
                dns_state::OPEN if age > expire_after => {
                    if let Some(taken) = self.take(&key, &e, &home, now, &mut loss) {
                        self.stats.expired += 1;
                        out.push(swept(key, taken));
                    }
                }
                dns_state::OPEN if age > slow_after => {
                    self.mark_slow(&key, &e);
                    if self.snapshot(&key, &e) {
                        out.push(swept(key, e));
                    }
                }
                dns_state::DELIVERED if unsent => {
                    if let Some(taken) = self.take(&key, &e, &home, now, &mut loss) {
                        self.stats.unsent += 1;
                        out.push(swept(key, taken));
                    }
                }
                dns_state::STREAMING => {
                    if unsent && self.snapshot(&key, &e) {
                        self.stats.unsent += 1;
                        out.push(swept(key, e));
                    }
                    if now.saturating_sub(e.last_ns) > expire_after && self.free(&key, &home) {
                        self.stats.streaming_freed += 1;
                    }
                }
                _ => {}
            }
        }
        self.snapshots.retain(|k| present.contains(k));
        self.expire_slow(now);
        out
    }

    /// Frees an idle entry (nothing to hand over): true when it was freed.
    fn free(&mut self, key: &DnsKey, home: &Home) -> bool {
        match home {
            Home::Slot { index, tag } => self.t.slots.free(*index, *tag),
            Home::Table => {
                let taken = take_entry(&self.t.dns, key).is_ok_and(|t| t.is_some());
                if taken {
                    self.t.slots.spill(key, -1);
                }
                taken
            }
        }
    }

    /// Takes `key` out of the table if it still holds the entry read; a newer query found
    /// there instead is put back. A slot is freed only if it did not change hands since it
    /// was read (then what was read is what it held: the kernel leaves expired open entries
    /// and undelivered records alone).
    fn take(
        &mut self,
        key: &DnsKey,
        read: &DnsEntry,
        home: &Home,
        now: u64,
        loss: &mut impl FnMut(u64, &str),
    ) -> Option<DnsEntry> {
        if let Home::Slot { index, tag } = home {
            if self.t.slots.free(*index, *tag) {
                return Some(*read);
            }
            self.stats.races += 1;
            return None;
        }
        match take_entry(&self.t.dns, key) {
            Ok(Some(taken)) if taken.first_ns == read.first_ns => {
                self.t.slots.spill(key, -1);
                Some(taken)
            }
            Ok(Some(newer)) => {
                self.stats.races += 1;
                // The key stays counted as in the table while it is put back.
                if self.t.dns.insert(key, &newer, 1 /* BPF_NOEXIST */).is_err() {
                    self.t.slots.spill(key, -1);
                    loss(now, "a DNS table entry changed while the sweeper took it");
                }
                None
            }
            // Removed by the kernel meanwhile (which gave the count back).
            Ok(None) => None,
            Err(err) => {
                self.stats.read_errors += 1;
                tracing::debug!(%err, "taking a DNS table entry");
                None
            }
        }
    }

    /// True the first time an entry is handed over as a snapshot.
    fn snapshot(&mut self, key: &DnsKey, e: &DnsEntry) -> bool {
        if self.snapshots.len() >= MAX_SNAPSHOTS || !self.snapshots.insert((*key, e.first_ns)) {
            return false;
        }
        self.stats.snapshots += 1;
        true
    }

    /// The client has a slow query open: its next queries may be retries of it.
    fn mark_slow(&mut self, key: &DnsKey, e: &DnsEntry) {
        let until = e
            .first_ns
            .saturating_add(self.cfg.window_ns.saturating_mul(4));
        if self.slow.get(&key.client).is_some_and(|u| *u >= until) {
            return;
        }
        if self.slow.len() >= 1024 && !self.slow.contains_key(&key.client) {
            return;
        }
        if let Err(err) = self.t.slow_clients.insert(&key.client, &until, 0) {
            tracing::debug!(%err, "slow client map insert");
            return;
        }
        self.slow.insert(key.client, until);
        if self.control.slow_any == 0 {
            self.control.slow_any = 1;
            self.write_control();
        }
    }

    fn expire_slow(&mut self, now: u64) {
        let gone: Vec<[u8; 16]> = self
            .slow
            .iter()
            .filter(|(_, until)| **until < now)
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            let _ = self.t.slow_clients.remove(&k);
            self.slow.remove(&k);
        }
        if self.slow.is_empty() && self.control.slow_any != 0 {
            self.control.slow_any = 0;
            self.write_control();
        }
    }

    fn write_control(&mut self) {
        if let Err(err) = self.t.control.set(0, &self.control, 0) {
            tracing::warn!(%err, "writing the kernel's control settings");
        }
    }

    /// Flips the summary epoch when `interval_ns` has passed since the interval started (or
    /// at once with `force`). The old epoch is read by the next [`KernelTables::collect`],
    /// once every program that saw it has finished.
    pub fn maybe_flip(&mut self, now: u64, interval_ns: u64, force: bool) {
        if self.pending_read.is_some() {
            return;
        }
        if !force && now.saturating_sub(self.interval_start) < interval_ns {
            return;
        }
        let old = self.control.epoch;
        self.control.epoch = old.wrapping_add(1);
        self.write_control();
        self.pending_read = Some((old, self.interval_start, now));
        self.interval_start = now;
    }

    /// Reads and removes the summaries of the epoch flipped away from, into `sum`. Returns the
    /// interval they cover.
    pub fn collect(&mut self, sum: &mut Summaries) -> Option<(u64, u64)> {
        let (old, start, end) = self.pending_read.take()?;
        let current = self.control.epoch as u8;
        let entries = match read_all(&self.t.summary, usize::MAX) {
            Ok(e) => e,
            Err(err) => {
                self.stats.read_errors += 1;
                tracing::warn!(%err, "reading the answer summaries");
                return Some((start, end));
            }
        };
        for (k, _) in entries {
            // The old epoch, and any older one left by a failed read.
            if k.epoch == current {
                continue;
            }
            if k.epoch != old as u8 {
                tracing::debug!(epoch = k.epoch, "summary of an older epoch");
            }
            let Ok(Some(v)) = take_entry(&self.t.summary, &k) else {
                continue;
            };
            self.stats.summaries_read += 1;
            let (Ok(client), Ok(server)) = (
                crate::decode::addr(k.ip_version, k.client),
                crate::decode::addr(k.ip_version, k.server),
            ) else {
                continue;
            };
            sum.add(
                Group {
                    client,
                    server,
                    qtype: k.qtype,
                    rcode: k.rcode,
                    origin: Origin::from_raw(k.origin),
                },
                v.count,
                v.sum_ns,
                &v.buckets,
            );
        }
        Some((start, end))
    }
}

fn swept(key: DnsKey, entry: DnsEntry) -> Swept {
    Swept {
        why: Why::Swept,
        key,
        entry,
    }
}
