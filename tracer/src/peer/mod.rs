//! Cross-node verdicts: before a query is called `lost_beyond_node` toward a CoreDNS replica on
//! another node, that node's tracer is asked what it saw — nothing ([`PeerFinding::RequestLost`]:
//! the way there), the query stopping on its node ([`PeerFinding::NotDelivered`]), the replica
//! silent ([`PeerFinding::NoReply`]) or the reply leaving ([`PeerFinding::ReplyLost`]: the way
//! back) — so the verdict names the direction and the rules to change.
//!
//! * [`proto`]: the wire (JSON lines).
//! * [`tls`]: mutual TLS material, reloaded when the mounted Secret changes.
//! * [`certs`]: `tracer certs`.
//! * [`server`] and [`answer`]: the answering side (the daemon's loop gathers the evidence:
//!   [`ledger`] for queries the kernel handed over, the kernel's DNS table and its delivery
//!   ledger).
//! * [`client`] and [`Parking`]: the asking side (verdicts wait, bounded, for their answer).

pub mod answer;
pub mod certs;
pub mod client;
pub mod ledger;
pub mod proto;
pub mod server;
pub mod tls;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use crate::decode::event::{Hook, IfaceKind};
use crate::verdict::{
    Direction, FlowKind, PathEntry, PeerFinding, PeerOut, PeerReason, PeerSighting, Transport,
    Verdict, VerdictKind,
};

use self::{
    client::{Asker, Outcome, Queued},
    proto::{Answer, Ask, Seen},
};

/// Longest a verdict waits for its peer's answer.
pub const MAX_WAIT: Duration = Duration::from_secs(1);
/// Verdicts waiting at once; beyond, a verdict goes out at once with `unknown` (busy).
pub const MAX_PARKED: usize = 4096;

/// Counts of the asking side (the findings themselves are counted by the metrics sink).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct AskStats {
    /// Asks sent to a peer (or queued for one).
    pub asked: u64,
    /// Verdicts waiting for an answer now.
    pub waiting: u64,
}

struct Parked {
    verdict: Verdict,
    node: String,
    deadline: Instant,
}

/// Verdicts waiting for their peer's answer.
pub struct Parking {
    asker: Asker,
    parked: HashMap<u64, Parked>,
    next: u64,
    port: u16,
    wait: Duration,
    own_node: String,
    stats: AskStats,
}

/// Wall-clock ns → RFC 3339.
fn rfc3339(unix_ns: i64) -> Option<String> {
    jiff::Timestamp::from_nanosecond(i128::from(unix_ns))
        .ok()
        .map(|t| t.to_string())
}

fn sighting(s: Option<Seen>) -> Option<PeerSighting> {
    s.map(|s| PeerSighting {
        interface: s.interface,
        time: s.unix_ns.and_then(rfc3339),
    })
}

/// The `peer` object of a verdict from an answer.
pub fn peer_out(node: &str, a: Answer) -> PeerOut {
    PeerOut {
        node: node.to_owned(),
        finding: a.finding,
        reason: if a.finding == PeerFinding::Unknown {
            a.reason.or(Some(PeerReason::Refused))
        } else {
            None
        },
        arrived: sighting(a.arrived),
        to_replica: sighting(a.to_replica),
        reply_left: sighting(a.reply_left),
        drop_: a.drop,
    }
}

/// The `peer` object when there is no answer.
pub fn peer_unknown(node: &str, reason: PeerReason) -> PeerOut {
    peer_out(node, Answer::unknown(0, reason))
}

/// This node's own account of a DNS query lost beyond it toward a server on this very node.
/// A pod with its own security group (a branch ENI) reaches even a replica on its own node
/// through the VPC; this tracer watches the replica's side too, so it says which way the query
/// died without asking anyone: it never came back in ([`PeerFinding::RequestLost`]), or it came
/// back, was answered and the answer left again toward the pod ([`PeerFinding::ReplyLost`]).
/// `None` for any other verdict; `wall` turns a monotonic time into RFC 3339.
pub fn own_node_finding(v: &Verdict, wall: &dyn Fn(u64) -> Option<String>) -> Option<PeerOut> {
    if v.verdict != VerdictKind::LostBeyondNode
        || v.kind != FlowKind::Dns
        || v.server.meta.node.as_deref() != Some(v.node.as_str())
    {
        return None;
    }
    let seen = |h: &PathEntry| {
        h.interface.clone().map(|interface| PeerSighting {
            interface,
            // Saturating: t_ms is never negative or NaN, and an odd value only loses the time.
            time: wall(v.start_ns.saturating_add((h.t_ms * 1e6) as u64)),
        })
    };
    let exit = |h: &&PathEntry| h.interface_kind.is_some_and(crate::verdict::is_exit);
    let request_lost = v.where_.direction == Direction::Request;
    let (arrived, to_replica, reply_left) = if request_lost {
        (None, None, None)
    } else {
        (
            v.request_entered_by_exit().and_then(seen),
            v.path
                .iter()
                .find(|h| {
                    h.direction == Direction::Request
                        && h.hook == Hook::Egress
                        && h.interface_kind == Some(IfaceKind::PodVeth)
                })
                .and_then(seen),
            v.path
                .iter()
                .filter(exit)
                .rfind(|h| h.direction == Direction::Response && h.hook == Hook::Egress)
                .and_then(seen),
        )
    };
    Some(PeerOut {
        node: v.node.clone(),
        finding: if request_lost {
            PeerFinding::RequestLost
        } else {
            PeerFinding::ReplyLost
        },
        reason: None,
        arrived,
        to_replica,
        reply_left,
        drop_: None,
    })
}

impl Parking {
    /// Asks peers at `port` (every tracer listens on the same one), each verdict waiting at
    /// most `wait` (capped at [`MAX_WAIT`]).
    pub fn new(asker: Asker, port: u16, wait: Duration, own_node: impl Into<String>) -> Self {
        Self {
            asker,
            parked: HashMap::new(),
            next: 1,
            port,
            wait: wait.min(MAX_WAIT),
            own_node: own_node.into(),
            stats: AskStats::default(),
        }
    }

    /// The server's node, when `v` is a UDP DNS query lost beyond this node toward a server
    /// the cache places on another node (the only verdicts a peer can say more about).
    pub fn peer_node<'v>(&self, v: &'v Verdict) -> Option<&'v str> {
        if v.verdict != VerdictKind::LostBeyondNode
            || v.kind != FlowKind::Dns
            || v.transport != Transport::Udp
        {
            return None;
        }
        v.server
            .meta
            .node
            .as_deref()
            .filter(|n| *n != self.own_node)
    }

    /// Asks `node`'s tracer (at `addr`, `None` when no tracer is known there) about `v`, sent
    /// at `sent_unix_ns`. `Err(v)`: the verdict cannot wait; it carries the reason in `peer`.
    pub fn park(
        &mut self,
        mut v: Verdict,
        node: &str,
        addr: Option<IpAddr>,
        sent_unix_ns: i64,
        window: Duration,
    ) -> Result<(), Box<Verdict>> {
        let Some(ip) = addr else {
            v.peer = Some(peer_unknown(node, PeerReason::NoTracer));
            return Err(Box::new(v));
        };
        if self.parked.len() >= MAX_PARKED {
            v.peer = Some(peer_unknown(node, PeerReason::Busy));
            return Err(Box::new(v));
        }
        let Some(id) = v.dns.as_ref().and_then(|d| d.id) else {
            return Err(Box::new(v));
        };
        let n = self.next;
        self.next = self.next.wrapping_add(1);
        let deadline = Instant::now() + self.wait;
        let ask = Ask {
            n,
            client: v.client.ip,
            port: v.client.port,
            id,
            server: v.server.ip,
            sent_unix_ns,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
        };
        let addr = SocketAddr::new(ip, self.port);
        if let Err(reason) = self.asker.ask(node, addr, Queued { ask, deadline }) {
            v.peer = Some(peer_unknown(node, reason));
            return Err(Box::new(v));
        }
        self.stats.asked += 1;
        self.parked.insert(
            n,
            Parked {
                verdict: v,
                node: node.to_owned(),
                deadline,
            },
        );
        Ok(())
    }

    /// The verdict an outcome completes (`None` when it already went out on its deadline).
    pub fn settle(&mut self, o: Outcome) -> Option<Verdict> {
        let p = self.parked.remove(&o.n)?;
        let mut v = p.verdict;
        v.peer = Some(match o.answer {
            Ok(a) => peer_out(&p.node, a),
            Err(reason) => peer_unknown(&p.node, reason),
        });
        Some(v)
    }

    /// Counts.
    pub fn stats(&self) -> AskStats {
        AskStats {
            waiting: u64::try_from(self.parked.len()).unwrap_or(u64::MAX),
            ..self.stats
        }
    }

    /// Verdicts whose answer is overdue (a worker stuck past its own deadline): out with
    /// `timeout`. All of them when `all` (shutdown).
    pub fn expire(&mut self, now: Instant, all: bool) -> Vec<Verdict> {
        // Workers honour the deadline themselves; this is the backstop.
        let late: Vec<u64> = self
            .parked
            .iter()
            .filter(|(_, p)| all || p.deadline + Duration::from_millis(200) <= now)
            .map(|(n, _)| *n)
            .collect();
        let mut out = Vec::with_capacity(late.len());
        for n in late {
            if let Some(p) = self.parked.remove(&n) {
                let mut v = p.verdict;
                v.peer = Some(peer_unknown(&p.node, PeerReason::Timeout));
                out.push(v);
            }
        }
        out
    }
}
