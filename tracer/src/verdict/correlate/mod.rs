//! The bounded flow table: follows each DNS query and pod egress attempt across observation
//! points and decides when a flow is over.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::decode::event::{Iface, PacketEvent, Proto, QType};

use super::decide::{self, Closing, Recent, RecentKey};
use super::flow::{Detail, Flow, Key, Sighting};
use super::model::{Direction, Transport, Verdict, VerdictKind};
use super::{Config, Stats};

mod dns;
mod egress;
mod icmp;
mod nat;
mod pending;
mod table;

use table::{assign, base_due};

/// Unmatched replies, drops and ICMP errors wait this many events at most for their flow to
/// open (events slightly out of order).
const MAX_PENDING: usize = 256;
/// Interfaces interned at most (cleared when exceeded).
const MAX_IFACES: usize = 4096;
/// (server, transport) outcomes remembered for hints.
const MAX_RECENT: usize = 4096;
/// How long a remembered outcome is relevant, ns (5 min).
const RECENT_HORIZON_NS: u64 = 300_000_000_000;
/// Retries extend the window, but a flow never stays open longer than this many windows.
const MAX_LIFETIME_WINDOWS: u64 = 4;
/// A pod's packet and its SNATed copy at the uplink are this close in time at most, ns.
const MAX_NAT_DELAY_NS: u64 = 1_000_000_000;
/// A client's retry comes after a timeout: the same question asked again sooner than this is
/// another query, ns (resolvers time out after a second or more; 250 ms leaves room for the
/// fastest).
const MIN_RETRY_GAP_NS: u64 = 250_000_000;
/// Losses remembered (oldest forgotten first; also pruned by age in `prune`).
const MAX_LOSSES: usize = 4096;

/// A closed flow's key, remembered so late events are not mistaken for new flows or orphans.
#[derive(Clone, Copy, Debug)]
struct Tomb {
    /// Requests up to this ts belong to the closed flow.
    until: u64,
    /// Replies up to this ts belong to the closed flow.
    expires: u64,
}

/// What routing an event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Routed {
    /// Used (or deliberately ignored and counted).
    Done,
    /// No flow yet: keep it briefly, its flow may open.
    Unmatched,
}

/// Why an event is routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Arrived now.
    Live,
    /// Retried from the pending queue after a flow opened.
    Replay,
    /// Leaving the pending queue: last chance (a request drop may open its flow now).
    Expire,
}

/// Attempt choice for a sighting.
enum Assign {
    Join(usize),
    Duplicate,
    New,
}

/// Result of a NAT-tolerant egress lookup.
enum NatMatch {
    None,
    One(u64),
    Ambiguous,
}

/// Result of a DNS lookup without an exact id.
enum Found {
    None,
    One(u64),
    Many(Vec<u64>),
}

/// Follows flows and emits one [`Verdict`] per flow. Pure logic: feed it events and a clock.
pub struct Correlator {
    cfg: Config,
    window_ns: u64,
    reorder_ns: u64,
    settle_ns: u64,
    margin_ns: u64,
    flows: BTreeMap<u64, Flow>,
    index: HashMap<Key, u64>,
    by_port: HashMap<(Transport, IpAddr, u16), Vec<u64>>,
    /// Egress flows that can still be one half of a SNAT with a remapped port, by
    /// destination: `[0]` pod flows not yet seen leaving, `[1]` provisional flows (seen only
    /// leaving). Entries go as soon as they cannot match any more, so lists stay short.
    by_dst: [HashMap<(Transport, IpAddr, u16), Vec<u64>>; 2],
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    tombs: HashMap<Key, Tomb>,
    tomb_order: VecDeque<(u64, Key)>,
    pending: VecDeque<PacketEvent>,
    ifaces: HashMap<u32, Arc<Iface>>,
    recent: HashMap<RecentKey, Recent>,
    /// Losses noted, oldest first: `(from, to, what)` in ns (bounded by [`MAX_LOSSES`], pruned
    /// past the longest a flow can live).
    losses: VecDeque<(u64, u64, String)>,
    next_seq: u64,
    order: u64,
    max_ts: u64,
    ready: Vec<Verdict>,
    stats: Stats,
}

fn ns(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn transport(p: Proto) -> Option<Transport> {
    match p {
        Proto::Tcp => Some(Transport::Tcp),
        Proto::Udp => Some(Transport::Udp),
        Proto::Icmp => None,
    }
}

/// DNS: port 53 on either side (never an egress flow).
fn is_dns(ev: &PacketEvent) -> bool {
    ev.sport == 53 || ev.dport == 53
}

fn qhash(qname: &str, qtype: Option<QType>) -> u64 {
    let mut h = DefaultHasher::new();
    qname.hash(&mut h);
    qtype.hash(&mut h);
    h.finish()
}

fn detail_of(ev: &PacketEvent) -> Detail {
    if let Some(d) = &ev.drop {
        Detail::Drop(Box::new(d.clone()))
    } else if let Some(k) = &ev.icmp {
        Detail::Icmp(*k)
    } else if let Some(d) = ev.dns.as_ref().filter(|d| d.response) {
        Detail::Answer {
            rcode: d.rcode,
            answers: d.answers,
            truncated: d.truncated,
        }
    } else {
        Detail::None
    }
}

impl Correlator {
    /// A correlator with `cfg`.
    pub fn new(cfg: Config) -> Self {
        Correlator {
            window_ns: ns(cfg.window).max(1),
            reorder_ns: ns(cfg.reorder),
            settle_ns: ns(cfg.settle),
            margin_ns: ns(cfg.loss_margin),
            cfg,
            flows: BTreeMap::new(),
            index: HashMap::new(),
            by_port: HashMap::new(),
            by_dst: [HashMap::new(), HashMap::new()],
            heap: BinaryHeap::new(),
            tombs: HashMap::new(),
            tomb_order: VecDeque::new(),
            pending: VecDeque::new(),
            ifaces: HashMap::new(),
            recent: HashMap::new(),
            losses: VecDeque::new(),
            next_seq: 1,
            order: 0,
            max_ts: 0,
            ready: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// Feeds one event (arrival order; timestamps may be slightly out of order).
    pub fn observe(&mut self, ev: &PacketEvent) {
        self.max_ts = self.max_ts.max(ev.ts_ns);
        if self.route(ev, Mode::Live) == Routed::Unmatched {
            self.push_pending(ev);
        }
    }

    /// Events may have been lost up to `ts_ns` (and back to `ts_ns - loss_margin`): every flow
    /// open in that interval gets `evidence: incomplete` and no negative verdict. Call it as
    /// soon as the loss is known (before the next [`Correlator::poll`]).
    pub fn note_loss(&mut self, ts_ns: u64, what: &str) {
        self.note_loss_span(ts_ns.saturating_sub(self.margin_ns), ts_ns, what);
    }

    /// Events may have been lost at some time in `[from_ns, to_ns]` (the kernel's loss history
    /// says when, to its slot width). Every flow alive then — open now, or opened later from
    /// records that arrive late — gets `evidence: incomplete` and no negative verdict. Cost: one
    /// pass over the open flows.
    pub fn note_loss_span(&mut self, from_ns: u64, to_ns: u64, what: &str) {
        self.stats.losses_noted = self.stats.losses_noted.saturating_add(1);
        let note = format!("events may have been lost while the flow was open ({what})");
        for flow in self.flows.values_mut() {
            if flow.loss.is_none()
                && flow.first_ts <= to_ns
                && flow.deadline.max(flow.last_ts) >= from_ns
            {
                flow.loss = Some(note.clone());
            }
        }
        if self.losses.len() >= MAX_LOSSES {
            self.losses.pop_front();
        }
        self.losses.push_back((from_ns, to_ns, what.to_string()));
    }

    /// What was lost at or after `from_ns`, if anything (for a peer's question: may this node
    /// have missed events of a query sent then?). Losses older than the history's bound count
    /// as possible: an answer of "nothing lost" must be sure.
    pub fn loss_after(&self, from_ns: u64) -> Option<String> {
        if let Some((_, _, what)) = self.losses.iter().rev().find(|(_, to, _)| *to >= from_ns) {
            return Some(what.clone());
        }
        // Full: older entries were let go; they may have reached `from_ns`.
        let forgotten = self.losses.len() >= MAX_LOSSES
            && self
                .losses
                .front()
                .is_some_and(|(from, _, _)| *from > from_ns);
        forgotten.then(|| "the loss history was full".to_owned())
    }

    /// The loss that overlaps a flow starting at `first_ts` (whose life so far is up to the
    /// newest event), if any.
    fn loss_since(&self, first_ts: u64) -> Option<String> {
        let lo = first_ts.saturating_sub(self.margin_ns);
        self.losses
            .iter()
            .rev()
            .find(|(_, to, _)| *to >= lo)
            .map(|(_, _, what)| {
                format!("events may have been lost while the flow was open ({what})")
            })
    }

    /// Verdicts of flows that completed or whose window closed by `now_ns` (same clock as the
    /// events' `ts_ns`).
    pub fn poll(&mut self, now_ns: u64) -> Vec<Verdict> {
        self.expire_pending(Some(now_ns));
        let mut out = std::mem::take(&mut self.ready);
        while let Some(&Reverse((due, fid))) = self.heap.peek() {
            if due > now_ns {
                break;
            }
            self.heap.pop();
            let Some(flow) = self.flows.get_mut(&fid) else {
                continue;
            };
            if flow.due != due {
                continue;
            }
            // Negative verdicts wait `loss_margin` past the (current) end of the window: a loss
            // notice may still be on its way.
            let held = base_due(flow).saturating_add(self.margin_ns);
            if flow.complete_at.is_none()
                && flow.hold_until.is_none_or(|h| h < held)
                && flow.loss.is_none()
                && self.margin_ns > 0
                && decide::provisional(flow).is_negative()
            {
                flow.hold_until = Some(held);
                self.reschedule(fid);
                continue;
            }
            if let Some(flow) = self.flows.remove(&fid)
                && let Some(v) = self.finish(fid, flow, Closing::Normal)
            {
                out.push(v);
            }
        }
        self.prune(now_ns);
        out
    }

    /// Closes every flow (at shutdown). Flows whose window had not ended yet cannot get a
    /// negative verdict: they are reported `unknown` with incomplete evidence.
    pub fn flush(&mut self) -> Vec<Verdict> {
        self.expire_pending(None);
        let mut out = std::mem::take(&mut self.ready);
        let flows = std::mem::take(&mut self.flows);
        for (fid, flow) in flows {
            let closing = if flow.complete_at.is_some() || self.max_ts >= flow.due {
                Closing::Normal
            } else {
                Closing::Stopped
            };
            if let Some(v) = self.finish(fid, flow, closing) {
                out.push(v);
            }
        }
        self.heap.clear();
        out
    }

    /// A verdict this correlator counted as `was` was changed to `now` before it went out
    /// (the daemon found evidence missing that only the kernel's tables show).
    pub fn recount(&mut self, was: VerdictKind, now: VerdictKind) {
        self.stats.verdicts.moved(was, now);
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.open_flows = self.flows.len();
        s.pending_events = self.pending.len();
        s
    }

    /// Sizes of the internal maps (tests: nothing may leak once every flow is closed).
    #[cfg(test)]
    pub(crate) fn internal_sizes(&self) -> [usize; 5] {
        [
            self.flows.len(),
            self.index.len(),
            self.by_port.len(),
            self.by_dst[0].len() + self.by_dst[1].len(),
            self.pending.len(),
        ]
    }

    #[cfg(test)]
    pub(crate) fn nat_list_lens(&self) -> [usize; 2] {
        [
            self.by_dst[0].values().map(Vec::len).sum(),
            self.by_dst[1].values().map(Vec::len).sum(),
        ]
    }

    // ----- routing -----

    fn route(&mut self, ev: &PacketEvent, mode: Mode) -> Routed {
        match ev.proto {
            Proto::Icmp => self.route_icmp(ev, mode),
            Proto::Tcp | Proto::Udp if is_dns(ev) => self.route_dns(ev, mode),
            Proto::Tcp | Proto::Udp => self.route_egress(ev, mode),
        }
    }

    fn intern(&mut self, iface: &Iface) -> Arc<Iface> {
        if let Some(a) = self.ifaces.get(&iface.ifindex)
            && **a == *iface
        {
            return Arc::clone(a);
        }
        if self.ifaces.len() >= MAX_IFACES {
            self.ifaces.clear();
        }
        let a = Arc::new(iface.clone());
        self.ifaces.insert(iface.ifindex, Arc::clone(&a));
        a
    }

    fn sighting(&mut self, ev: &PacketEvent, dir: Direction, quoted: bool) -> Sighting {
        self.order += 1;
        Sighting {
            ts: ev.ts_ns,
            order: self.order,
            hook: ev.hook,
            iface: self.intern(&ev.iface),
            dir,
            quoted,
            src: SocketAddr::new(ev.src, ev.sport),
            dst: SocketAddr::new(ev.dst, ev.dport),
            flags: ev.tcp_flags.unwrap_or_default(),
            vlan: ev.vlan,
            detail: detail_of(ev),
        }
    }

    // ----- bookkeeping -----
}
