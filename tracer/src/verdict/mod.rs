//! Pipeline stages 4–5: correlation and verdicts.
//!
//! A [`Correlator`] follows each DNS query and each pod egress attempt across the observation
//! points of one node (pod veth → netfilter DNAT → uplink / branch ENI / local server veth →
//! back) and emits one [`Verdict`] per flow (`"schema": "tracer.flow/v1"`, documented in
//! `docs/schema/flow-v1.json` with examples in `docs/examples/`). Pure logic: no I/O, no
//! kernel, no wall clock — the caller feeds events and a monotonic `now`.
//!
//! # Usage
//! ```text
//! let mut c = Correlator::new(Config::new("ip-10-0-1-12"));
//! for ev in events { c.observe(&ev); }        // arrival order
//! c.note_loss(now, "ring buffer full");        // whenever the loss counters move
//! for v in c.poll(now) { sink(v); }            // e.g. every 100 ms
//! for v in c.flush() { sink(v); }              // at shutdown
//! ```
//!
//! # Correlation
//! * **DNS** flows are keyed by the client socket and message id (client ip, port, DNS id,
//!   transport), which survive the kube-proxy DNAT of the ClusterIP (the destination changes,
//!   the client side does not). A sighting at an observation point the attempt already
//!   passed, later in time, is a new attempt (a resend with the same id). A query with the
//!   same qname+qtype from the same client toward the same destination (Service IP or a DNAT
//!   target already seen) while the flow is still open is a **retry** of it (any id/port);
//!   a TCP query (or SYN to port 53) after a truncated UDP answer was delivered is its
//!   **TCP fallback**. ICMP errors are matched by the quoted tuple; drops by tuple and id.
//! * **Egress** flows open on a TCP SYN (or the first UDP packet of a tuple) at a pod veth
//!   ingress; the SNATed packet at the uplink joins by (proto, src port, dst, dst port); the
//!   reply by the reverse tuple (pre- or post-SNAT). A SYN seen first at an uplink opens a
//!   provisional flow which is silently discarded (counted in
//!   [`Stats::unattributed_egress`]) if no pod veth sighting joins it: node-originated
//!   connections are not pod egress. DNS (port 53) is never egress.
//! * Replies, drops and ICMP errors that match no flow wait (at most 256 of them, for
//!   [`Config::reorder`]) for their flow to open, so slightly reordered events still join.
//!   Then a DNS response is counted as an orphan ([`Stats::orphan_responses`]: the tracer
//!   started mid-flow), anything else as [`Stats::unmatched_events`]. A drop of a DNS query
//!   with no flow opens one when it expires from that queue (a host-network client whose
//!   query died in OUTPUT has no earlier sighting).
//!
//! # Windows
//! A flow is decided at the first of:
//! * its final reply/rejection reached the client (DNS answer or ICMP error at the client's pod
//!   veth egress; SYN-ACK/RST/UDP reply at the pod veth egress; for a client on another node,
//!   the reply leaving through the uplink): emitted at the first poll at least
//!   [`Config::reorder`] later (late sightings still land in the path);
//! * a reply whose delivery cannot be observed (host-network client; egress reply at the
//!   uplink) or a rejection not yet delivered was seen: [`Config::settle`] later, so a drop
//!   right after it is still seen;
//! * `first sighting + window`. Each retry extends it to `retry + window` (never beyond 4
//!   windows from the first sighting); a truncated UDP answer extends it to `answer + window`
//!   (waiting for the TCP fallback).
//!
//! Negative verdicts (`lost_beyond_node`, `unanswered`) are held [`Config::loss_margin`]
//! longer, because loss notices come late (the daemon reads the loss counters
//! periodically). A flow that overlapped a noted loss, was evicted, or was still open at
//! [`Correlator::flush`] never gets a negative verdict: it becomes `unknown` with
//! `evidence: incomplete` and an `evidence_note`. Positive evidence (`answered`, `dropped`,
//! `rejected`, ...) keeps its verdict, with `evidence: incomplete` when loss overlapped.
//!
//! # Bounds
//! At most [`Config::max_flows`] open flows; when full the oldest is **evicted and reported**
//! (its verdict computed as at flush time, so `unknown`/incomplete "flow table full" unless
//! it already had positive evidence) and counted in [`Stats::evicted`]. Per-flow memory is
//! documented in `flow.rs`: ~1.3 KiB typical (~85 MiB for a full default table), ≤ ~8.6 KiB
//! worst case. Closed flows leave a tombstone per key for one window so late events are
//! counted ([`Stats::late_events`]) instead of opening bogus flows or counting as orphans.
//!
//! Every table has a named limit and an eviction rule:
//!
//! | table | limit | eviction |
//! |---|---|---|
//! | open flows | [`Config::max_flows`] | oldest first, reported `unknown` ("flow table full") |
//! | attempts per flow | [`MAX_ATTEMPTS`] ([`MAX_DETAILED_ATTEMPTS`] keep sightings) | later retries only counted; older attempts folded to a summary |
//! | sightings per attempt | [`MAX_SIGHTINGS_PER_ATTEMPT`] (+4 for replies, drops, ICMP, SYN/RST) | later ones counted in `path_omitted` |
//! | index keys, per-port and NAT lists | owned by open flows | removed with their flow |
//! | tombstones | `max_flows` | FIFO, and after one window |
//! | unmatched events | 256 | FIFO, and after [`Config::reorder`] |
//! | recent (server, transport) outcomes | 4096 | oldest first; ignored after 5 min |
//! | interned interfaces | 4096 | cleared when full |
//! | decision heap | 4 × open flows + 1024 | rebuilt from the open flows |

mod correlate;
mod decide;
mod flow;
pub mod hint;
mod model;
pub mod summary;

#[cfg(test)]
mod tests;

use std::time::Duration;

use serde::Serialize;

pub use correlate::Correlator;
#[allow(
    unused_imports,
    reason = "the module's public API; which parts the binary uses grows as stages are wired"
)]
pub use flow::{MAX_ATTEMPTS, MAX_DETAILED_ATTEMPTS, MAX_SIGHTINGS_PER_ATTEMPT};
#[allow(
    unused_imports,
    reason = "the module's public API; which parts the binary uses grows as stages are wired"
)]
pub use model::{
    Client, Direction, DnsOut, DropOut, EgressInterface, EgressOut, Evidence, FlowKind, NodeSignal,
    PathEntry, PeerDrop, PeerFinding, PeerOut, PeerReason, PeerSighting, PodMeta, RejectBy,
    Rejection, SCHEMA, Server, Stage, Transport, Verdict, VerdictKind, Where,
};

pub(crate) use decide::NO_REPLY_DUE;
pub(crate) use flow::is_exit;
pub(crate) use model::ClientSide;

/// Default [`Config::max_flows`].
pub const DEFAULT_MAX_FLOWS: usize = 65_536;

/// Correlator settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How long to wait for a reply after the (last) request. Default 5 s (the resolver's
    /// default timeout).
    pub window: Duration,
    /// Open flows at most (the named limit of the flow table). Default [`DEFAULT_MAX_FLOWS`].
    pub max_flows: usize,
    /// This node's name, copied into every verdict.
    pub node: String,
    /// Completed flows are emitted this long after completion, so slightly out-of-order
    /// sightings still join them; also how long unmatched replies/drops wait for their flow.
    /// Default 100 ms.
    pub reorder: Duration,
    /// After a reply whose delivery cannot be observed, wait this long for a drop before
    /// deciding. Default 250 ms.
    pub settle: Duration,
    /// Losses are reported within this delay of happening: negative verdicts wait this long
    /// after the window, and a loss noted at `t` covers `[t - loss_margin, t]`. Default 1 s.
    pub loss_margin: Duration,
}

impl Config {
    /// Defaults for node `node`.
    pub fn new(node: impl Into<String>) -> Self {
        Config {
            window: Duration::from_secs(5),
            max_flows: DEFAULT_MAX_FLOWS,
            node: node.into(),
            reorder: Duration::from_millis(100),
            settle: Duration::from_millis(250),
            loss_margin: Duration::from_secs(1),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::new("")
    }
}

/// Verdicts emitted, per kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerdictCounts {
    /// `answered`.
    pub answered: u64,
    /// `established`.
    pub established: u64,
    /// `dropped`.
    pub dropped: u64,
    /// `lost_beyond_node`.
    pub lost_beyond_node: u64,
    /// `unanswered`.
    pub unanswered: u64,
    /// `rejected`.
    pub rejected: u64,
    /// `unknown`.
    pub unknown: u64,
}

impl VerdictCounts {
    fn slot(&mut self, k: VerdictKind) -> &mut u64 {
        match k {
            VerdictKind::Answered => &mut self.answered,
            VerdictKind::Established => &mut self.established,
            VerdictKind::Dropped => &mut self.dropped,
            VerdictKind::LostBeyondNode => &mut self.lost_beyond_node,
            VerdictKind::Unanswered => &mut self.unanswered,
            VerdictKind::Rejected => &mut self.rejected,
            VerdictKind::Unknown => &mut self.unknown,
        }
    }

    fn add(&mut self, k: VerdictKind) {
        let c = self.slot(k);
        *c = c.saturating_add(1);
    }

    /// A verdict counted as `was` went out as `now`.
    fn moved(&mut self, was: VerdictKind, now: VerdictKind) {
        let c = self.slot(was);
        *c = c.saturating_sub(1);
        self.add(now);
    }

    /// Count of kind `k`.
    #[allow(
        dead_code,
        reason = "for the metrics stage (one counter per verdict label)"
    )]
    pub fn get(&self, k: VerdictKind) -> u64 {
        match k {
            VerdictKind::Answered => self.answered,
            VerdictKind::Established => self.established,
            VerdictKind::Dropped => self.dropped,
            VerdictKind::LostBeyondNode => self.lost_beyond_node,
            VerdictKind::Unanswered => self.unanswered,
            VerdictKind::Rejected => self.rejected,
            VerdictKind::Unknown => self.unknown,
        }
    }
}

/// Correlator counters (for metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Flows open now.
    pub open_flows: usize,
    /// Unmatched events waiting for their flow now.
    pub pending_events: usize,
    /// Flows evicted because the table was full (each still got a verdict).
    pub evicted: u64,
    /// DNS responses that matched no query (tracer started mid-flow, or the query was lost).
    pub orphan_responses: u64,
    /// Drops, ICMP errors and egress replies that matched no flow.
    pub unmatched_events: u64,
    /// Events that arrived after their flow's verdict.
    pub late_events: u64,
    /// Events seen twice (same time, point and tuple).
    pub duplicates: u64,
    /// Drops/ICMP errors without DNS id on a client port shared by several open queries.
    pub ambiguous_events: u64,
    /// Events of no interest (undecodable DNS, TCP segments that open nothing, ...).
    pub ignored: u64,
    /// Calls to [`Correlator::note_loss`].
    pub losses_noted: u64,
    /// Egress flows seen only at an uplink (not a pod's), discarded without verdict.
    pub unattributed_egress: u64,
    /// Verdicts emitted.
    pub verdicts: VerdictCounts,
}
