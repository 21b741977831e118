//! When the node's loss counters grew, so a verdict can say what they said while its flow was
//! open: the ENA allowance counters of the ENIs (the hypervisor dropped packets: over 1024 pps
//! to the VPC resolver, over the instance's packet rate) for a flow lost beyond the node, and
//! the conntrack statistics (the insert race behind 5 s DNS timeouts, a full table) for a drop
//! by netfilter. The counters are sampled about once a second; a growth is remembered with the
//! interval between the two samples, so it is tied to a flow by time, never to a packet.

use std::collections::{HashMap, VecDeque};

use crate::capture::signals::Reading;
use crate::verdict::{NodeSignal, Stage, Verdict, VerdictKind};

/// Growths remembered at most (a bound for a node whose counters grow at every sample).
pub const MAX_GROWTHS: usize = 4096;

/// Growths older than this are forgotten (a verdict is made within a window plus seconds).
const HORIZON_NS: u64 = 600_000_000_000;

/// A growth seen across a longer gap between samples (a stalled daemon) is no one's: when it
/// happened is not known. Samples are taken every second.
const MAX_GAP_NS: u64 = 5_000_000_000;

/// Conntrack counters that mean a packet was dropped (not `clashres`, a race resolved).
const CONNTRACK_LOSS: [&str; 2] = ["insert_failed", "drop"];

type CounterKey = (&'static str, Option<String>, String);

/// One counter's growth between two samples.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Growth {
    /// Monotonic ns of the sample before and of the sample that saw the growth.
    from_ns: u64,
    to_ns: u64,
    signal: &'static str,
    interface: Option<String>,
    counter: String,
    delta: u64,
}

/// The recent growths of the node's loss counters.
#[derive(Debug, Default)]
pub struct SignalLog {
    last: HashMap<CounterKey, u64>,
    last_ns: Option<u64>,
    growths: VecDeque<Growth>,
}

impl SignalLog {
    /// Notes a sample taken at `now_ns` (monotonic): every loss counter that grew since the
    /// previous sample is remembered. The first sample is a baseline; a counter that went down
    /// (driver or module reloaded) starts over without growth.
    pub fn observe(&mut self, readings: &[Reading], now_ns: u64) {
        let from = self.last_ns.unwrap_or(now_ns);
        for r in readings {
            let loss = match r.signal {
                "conntrack" => CONNTRACK_LOSS.contains(&r.counter.as_str()),
                // Every ENA counter the collector reads is an `*_allowance_exceeded`.
                "ena" => true,
                _ => false,
            };
            if !loss {
                continue;
            }
            let key = (r.signal, r.interface.clone(), r.counter.clone());
            match self.last.get(&key) {
                Some(before) if r.value > *before => {
                    if self.growths.len() >= MAX_GROWTHS {
                        self.growths.pop_front();
                    }
                    self.growths.push_back(Growth {
                        from_ns: from,
                        to_ns: now_ns,
                        signal: r.signal,
                        interface: r.interface.clone(),
                        counter: r.counter.clone(),
                        delta: r.value - before,
                    });
                }
                _ => {}
            }
            if self.last.len() < MAX_GROWTHS || self.last.contains_key(&key) {
                self.last.insert(key, r.value);
            }
        }
        self.last_ns = Some(now_ns);
        while self
            .growths
            .front()
            .is_some_and(|g| now_ns.saturating_sub(g.to_ns) > HORIZON_NS)
        {
            self.growths.pop_front();
        }
    }

    /// The growths that bear on `v`, whose flow was open until its last sighting plus
    /// `window_ns`: ENA counters for `lost_beyond_node` (the hypervisor drops what no kernel
    /// event shows), conntrack counters for a drop by netfilter (the insert race and a full
    /// table drop there, like a rule). Summed per counter.
    pub fn bearing_on(&self, v: &Verdict, window_ns: u64) -> Vec<NodeSignal> {
        let wanted = match v.verdict {
            VerdictKind::LostBeyondNode => "ena",
            VerdictKind::Dropped if v.where_.stage == Stage::Netfilter => "conntrack",
            _ => return Vec::new(),
        };
        let until = v.end_ns.saturating_add(window_ns);
        let mut out: Vec<NodeSignal> = Vec::new();
        for g in self.growths.iter().filter(|g| {
            g.signal == wanted
                && g.to_ns.saturating_sub(g.from_ns) <= MAX_GAP_NS
                && g.to_ns >= v.start_ns
                && g.from_ns <= until
        }) {
            match out
                .iter_mut()
                .find(|s| s.interface == g.interface && s.counter == g.counter)
            {
                Some(s) => s.delta = s.delta.saturating_add(g.delta),
                None => out.push(NodeSignal {
                    signal: g.signal,
                    interface: g.interface.clone(),
                    counter: g.counter.clone(),
                    delta: g.delta,
                }),
            }
        }
        out
    }
}
