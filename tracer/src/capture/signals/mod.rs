//! Node-level signals that no packet event shows: conntrack statistics ([`conntrack`]) and the
//! ENA allowance counters of the uplinks ([`ena`]).

pub mod conntrack;
pub mod ena;
