//! Node-level signals that no packet event shows, one collector per capability (as Retis has
//! a collector per probe type): conntrack statistics ([`conntrack`]: the A/AAAA insert race
//! behind 5-second DNS timeouts) and the ENA allowance counters of the uplinks ([`ena`]: packets
//! the hypervisor dropped). Each collector reads absolute counters, says when they grew, and
//! hands the values to the metrics; a collector whose source is missing returns nothing.

pub mod conntrack;
pub mod ena;

use super::iface::IfaceTable;

/// One counter reading of a signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    /// Collector name (`conntrack`, `ena`).
    pub signal: &'static str,
    /// Interface the counter belongs to (ENA), or `None` for node-wide counters.
    pub interface: Option<String>,
    /// Counter name as the kernel calls it.
    pub counter: String,
    /// Absolute value.
    pub value: u64,
}

/// A periodically sampled node-level signal.
pub trait Signal {
    /// Reads the counters now; warns (once per growth) when a counter that means packets were
    /// lost grew since the last sample. Empty when the source does not exist on this node.
    fn sample(&mut self, ifaces: &IfaceTable) -> Vec<Reading>;
}

/// Least time between two warnings about one counter: sampled every second, a counter that
/// grows for minutes would otherwise warn every second. Growth in between is added up and told
/// with the next warning.
pub const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Growth of one counter not told yet, and when it was last told.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unwarned {
    grown: u64,
    warned_at: Option<std::time::Instant>,
}

impl Unwarned {
    /// Adds `grown`; returns the growth to warn about now (at most once per [`WARN_EVERY`]).
    pub fn add(&mut self, grown: u64, now: std::time::Instant) -> Option<u64> {
        self.grown = self.grown.saturating_add(grown);
        if self.grown == 0
            || self
                .warned_at
                .is_some_and(|t| now.saturating_duration_since(t) < WARN_EVERY)
        {
            return None;
        }
        self.warned_at = Some(now);
        Some(std::mem::take(&mut self.grown))
    }
}

/// Every collector this build has.
pub fn all() -> Vec<Box<dyn Signal + Send>> {
    vec![
        Box::new(conntrack::ConntrackWatch::default()),
        Box::new(ena::EnaWatch::default()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_spaced_and_add_up_what_they_skipped() {
        let t0 = std::time::Instant::now();
        let mut u = Unwarned::default();
        assert_eq!(u.add(0, t0), None, "no growth, no warning");
        assert_eq!(u.add(3, t0), Some(3));
        assert_eq!(u.add(2, t0 + std::time::Duration::from_secs(1)), None);
        assert_eq!(u.add(4, t0 + std::time::Duration::from_secs(10)), None);
        assert_eq!(u.add(1, t0 + WARN_EVERY), Some(7));
        assert_eq!(u.add(0, t0 + WARN_EVERY * 3), None);
    }
}
