//! The memory budget: every table's size is derived from one figure, the container's memory
//! limit (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`) or `--memory-budget`, so the
//! daemon fits the limit it runs under, also in the incident it exists for.
//!
//! Kernel maps are charged to the same cgroup as the daemon's own memory (Linux ≥ 5.11), so
//! both count. Sizes per entry are measured on x86_64 (see `tracer-common` for the wire types
//! and `verdict/flow.rs` for the correlator's flows).

/// Default budget when no limit is found.
pub const DEFAULT_BUDGET: u64 = 256 << 20;

/// Kernel memory per DNS table entry: key + value + hash element overhead.
const DNS_ENTRY_BYTES: u64 = 24 + 384 + 64;
/// Kernel memory per slot of the direct-mapped DNS table (an array element, preallocated).
const DNS_SLOT_BYTES: u64 = core::mem::size_of::<tracer_common::DnsSlot>() as u64;
/// Kernel memory per summary entry.
const SUMMARY_ENTRY_BYTES: u64 = 40 + 208 + 64;
/// Kernel memory per delivery ledger slot (an array element, no overhead).
const LEDGER_SLOT_BYTES: u64 = 32;
/// Userspace memory per group of the egress summaries: its key (addresses, port, exit
/// interface) and a 48-bucket latency histogram in a hash map.
const EGRESS_GROUP_BYTES: u64 = 640;
/// Userspace memory per open flow, typical (a flow with retries may take up to ~8.6 KiB; the
/// table holds few of those).
const FLOW_BYTES: u64 = 2048;

/// Table sizes derived from a budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The budget, bytes.
    pub bytes: u64,
    /// Entries of the kernel's DNS table (≈ 5 % of the budget: reading it costs time in
    /// proportion to its size).
    pub dns_entries: u32,
    /// Slots of the kernel's direct-mapped DNS table (≈ 4 %, rounded down to a power of two
    /// at load: preallocated, and swept by reading all of it).
    pub dns_slots: u32,
    /// Entries of the kernel's answer summaries (≈ 2 %).
    pub summary_entries: u32,
    /// Open flows in the correlator (≈ 15 %).
    pub max_flows: usize,
    /// Slots of the kernel's delivery ledger, all CPUs together (≈ 10 %; used only with the
    /// peer service).
    pub ledger_slots: u32,
    /// Facts of handed-over queries from other nodes kept for peers (≈ 5 %; peer service
    /// only).
    pub peer_facts: usize,
    /// Destinations (client, server ip:port, transport, exit) the egress summaries count per
    /// interval (≈ 2 %); connections to more get lines of their own.
    pub egress_groups: usize,
}

impl Budget {
    /// Sizes for `bytes`, each clamped to a sane range.
    pub fn new(bytes: u64) -> Self {
        let share = |pct: u64, per: u64, lo: u64, hi: u64| (bytes / 100 * pct / per).clamp(lo, hi);
        Self {
            bytes,
            dns_entries: share(5, DNS_ENTRY_BYTES, 4096, 1 << 20) as u32,
            dns_slots: share(4, DNS_SLOT_BYTES, 1024, 1 << 18) as u32,
            summary_entries: share(2, SUMMARY_ENTRY_BYTES, 1024, 1 << 16) as u32,
            max_flows: share(15, FLOW_BYTES, 1024, 1 << 18) as usize,
            ledger_slots: share(10, LEDGER_SLOT_BYTES, 4096, 1 << 22) as u32,
            peer_facts: share(5, crate::peer::ledger::ENTRY_BYTES as u64, 1024, 1 << 18) as usize,
            egress_groups: share(2, EGRESS_GROUP_BYTES, 1024, 1 << 16) as usize,
        }
    }

    /// The budget: `flag` when given, else the cgroup's memory limit, else [`DEFAULT_BUDGET`].
    pub fn detect(flag: Option<u64>) -> Self {
        Self::new(flag.or_else(cgroup_limit).unwrap_or(DEFAULT_BUDGET))
    }
}

/// The memory limit of this process's cgroup, if any.
pub fn cgroup_limit() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroup.lines() {
        // v2: "0::/path"; v1: "N:memory:/path".
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else {
            continue;
        };
        if let Some(v) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| parse_limit(&t))
        {
            return Some(v);
        }
    }
    None
}

/// `max` or an absurd v1 value (no limit) → `None`.
fn parse_limit(text: &str) -> Option<u64> {
    let v: u64 = text.trim().parse().ok()?;
    (v < (1 << 50)).then_some(v)
}

/// Parses a memory budget: `256Mi`, `1Gi`, `512M`, `100000000`; at least 32Mi.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let v = parse_bytes(s)?;
    if v < (32 << 20) {
        return Err(format!("memory budget {s:?} below the 32Mi minimum"));
    }
    Ok(v)
}

/// Parses a size in bytes: `4Ki`, `256Mi`, `1Gi`, `512M`, `4096`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?}: expected e.g. 256Mi or 1Gi"))?;
    let mult: u64 = match unit {
        "" => 1,
        "Ki" | "K" | "k" => 1 << 10,
        "Mi" | "M" => 1 << 20,
        "Gi" | "G" => 1 << 30,
        _ => return Err(format!("bad size unit in {s:?}: use Ki, Mi or Gi")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_scale_with_the_budget_and_stay_in_range() {
        let b = Budget::new(256 << 20);
        assert_eq!(b.dns_entries, 28_435);
        assert_eq!(b.dns_slots, 25_324);
        assert!(b.summary_entries >= 1024);
        assert_eq!(b.max_flows, 19_660);
        assert_eq!(b.ledger_slots, 838_860);
        assert_eq!(b.peer_facts, 41_943);
        assert_eq!(b.egress_groups, 8_388);
        let small = Budget::new(32 << 20);
        assert!(small.dns_entries >= 4096 && small.max_flows >= 1024);
        let huge = Budget::new(1 << 40);
        assert_eq!(huge.dns_entries, 1 << 20);
    }

    #[test]
    fn sizes_and_limits_parse() {
        assert_eq!(parse_size("256Mi"), Ok(256 << 20));
        assert_eq!(parse_size("1Gi"), Ok(1 << 30));
        assert!(parse_size("12Mi").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5Ti").is_err());
        assert!(parse_size("99999999999999999999Gi").is_err());
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("268435456\n"), Some(268435456));
        assert_eq!(parse_limit("9223372036854771712"), None);
    }
}
