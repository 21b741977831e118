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

/// Every collector this build has.
pub fn all() -> Vec<Box<dyn Signal + Send>> {
    vec![
        Box::new(conntrack::ConntrackWatch::default()),
        Box::new(ena::EnaWatch::default()),
    ]
}
