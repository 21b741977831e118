//! The bounded flow table: follows each DNS query and pod egress attempt across observation
//! points and decides when a flow is over.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::decode::event::{DnsInfo, Hook, Iface, IfaceKind, PacketEvent, Proto};

use super::decide::{self, Closing, Ctx, Recent, RecentKey};
use super::flow::{
    Attempt, AttemptKind, Detail, Flow, Key, MAX_ATTEMPTS, MAX_DETAILED_ATTEMPTS, Sighting,
    is_exit, is_syn, parse_flags, tcp,
};
use super::model::{Direction, FlowKind, Transport, Verdict, VerdictKind};
use super::{Config, Stats};

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

fn qhash(qname: &str, qtype: Option<&str>) -> u64 {
    let mut h = DefaultHasher::new();
    qname.hash(&mut h);
    qtype.hash(&mut h);
    h.finish()
}

fn detail_of(ev: &PacketEvent) -> Detail {
    if let Some(d) = &ev.drop {
        Detail::Drop(Box::new(d.clone()))
    } else if let Some(k) = &ev.icmp {
        Detail::Icmp(k.as_str().into())
    } else if let Some(d) = ev.dns.as_ref().filter(|d| d.response) {
        Detail::Answer {
            rcode: d.rcode.as_deref().map(Into::into),
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

    /// The loss that overlaps a flow starting at `first_ts` (whose life so far is up to the
    /// newest event), if any.
    fn loss_since(&self, first_ts: u64) -> Option<String> {
        let lo = first_ts.saturating_sub(self.margin_ns);
        self.losses
            .iter()
            .rev()
            .find(|(_, to, _)| *to >= lo)
            .map(|(_, _, what)| format!("events may have been lost while the flow was open ({what})"))
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
            flags: parse_flags(ev.tcp_flags.as_deref()),
            vlan: ev.vlan,
            detail: detail_of(ev),
        }
    }

    fn route_dns(&mut self, ev: &PacketEvent, mode: Mode) -> Routed {
        let Some(t) = transport(ev.proto) else {
            return Routed::Done;
        };
        let flags = parse_flags(ev.tcp_flags.as_deref());
        let dir = match &ev.dns {
            Some(d) if d.response => Direction::Response,
            Some(_) => Direction::Request,
            None if ev.dport == 53 && ev.sport != 53 => Direction::Request,
            None if ev.sport == 53 && ev.dport != 53 => Direction::Response,
            None => {
                self.stats.ignored += 1;
                return Routed::Done;
            }
        };
        let (client, cport) = match dir {
            Direction::Request => (ev.src, ev.sport),
            Direction::Response => (ev.dst, ev.dport),
        };
        let id = ev.dns.as_ref().map(|d| d.id);
        match self.find_dns(t, client, cport, id) {
            Found::One(fid) => {
                return self.dns_into(fid, ev, t, dir, false);
            }
            Found::Many(fids) => {
                self.ambiguous(&fids, ev, cport);
                return Routed::Done;
            }
            Found::None => {}
        }
        let key = id.map(|id| Key::DnsId {
            t,
            client,
            port: cport,
            id,
        });
        if let Some(k) = &key
            && self.is_late(k, ev.ts_ns, dir)
        {
            self.stats.late_events += 1;
            return Routed::Done;
        }
        if dir == Direction::Response {
            return Routed::Unmatched;
        }
        if ev.hook == Hook::Drop && mode != Mode::Expire {
            // Its first sighting may still be on its way; if not, it opens the flow on expiry.
            return Routed::Unmatched;
        }
        if let Some((fid, kind)) =
            self.find_retry(t, client, ev.dst, ev.dns.as_ref(), flags, ev.ts_ns)
        {
            let s = self.sighting(ev, dir, false);
            self.add_attempt(fid, kind, t, cport, id, s);
            return Routed::Done;
        }
        let opens =
            ev.dns.is_some() || (t == Transport::Tcp && is_syn(flags)) || ev.hook == Hook::Drop;
        if !opens {
            self.stats.ignored += 1;
            return Routed::Done;
        }
        self.open_dns(ev, t, cport, id);
        Routed::Done
    }

    /// Finds the DNS flow of a client socket: by id when known (or, for TCP, the connection
    /// whose first message is not seen yet), by port alone otherwise.
    fn find_dns(&self, t: Transport, client: IpAddr, port: u16, id: Option<u16>) -> Found {
        if let Some(id) = id {
            if let Some(&fid) = self.index.get(&Key::DnsId {
                t,
                client,
                port,
                id,
            }) {
                return Found::One(fid);
            }
            if t == Transport::Tcp {
                let conn = self.by_port.get(&(t, client, port)).and_then(|fids| {
                    fids.iter().rev().copied().find(|fid| {
                        self.flows.get(fid).is_some_and(|f| {
                            f.attempts
                                .iter()
                                .any(|a| a.proto == t && a.port == port && a.id.is_none())
                        })
                    })
                });
                if let Some(fid) = conn {
                    return Found::One(fid);
                }
            }
            return Found::None;
        }
        match self.by_port.get(&(t, client, port)).map(Vec::as_slice) {
            None | Some([]) => Found::None,
            Some([fid]) => Found::One(*fid),
            // One TCP connection carries one query at a time: take the latest.
            Some(fids) if t == Transport::Tcp => {
                fids.last().map_or(Found::None, |f| Found::One(*f))
            }
            Some(fids) => Found::Many(fids.to_vec()),
        }
    }

    /// A drop or ICMP error without DNS id on a client port shared by several open queries
    /// (parallel A/AAAA): it cannot be attributed, so none of them has complete evidence.
    fn ambiguous(&mut self, fids: &[u64], ev: &PacketEvent, port: u16) {
        self.stats.ambiguous_events += 1;
        if ev.hook == Hook::Drop || ev.icmp.is_some() {
            let what = if ev.hook == Hook::Drop {
                "a drop"
            } else {
                "an ICMP error"
            };
            for fid in fids {
                if let Some(f) = self.flows.get_mut(fid)
                    && f.loss.is_none()
                {
                    f.loss = Some(format!(
                        "{what} without DNS id on client port {port}, shared by several open queries, could not be attributed"
                    ));
                }
            }
        }
    }

    fn find_retry(
        &self,
        t: Transport,
        client: IpAddr,
        dst: IpAddr,
        dns: Option<&DnsInfo>,
        flags: u8,
        ts: u64,
    ) -> Option<(u64, AttemptKind)> {
        let qname = dns.and_then(|d| d.qname.as_deref());
        let qtype = dns.and_then(|d| d.qtype.as_deref());
        // Only while the flow's window is still open (a retry after it is a new query).
        let same_question = |f: &Flow| {
            ts <= f.deadline
                && match qname {
                    Some(q) => f.qname.as_deref() == Some(q) && f.qtype.as_deref() == qtype,
                    None => true,
                }
        };
        if let Some(q) = qname
            && let Some(&fid) = self.index.get(&Key::DnsRetry {
                client,
                service: dst,
                q: qhash(q, qtype),
            })
            && let Some(f) = self.flows.get(&fid)
            && f.complete_at.is_none()
            && same_question(f)
        {
            let kind = if t == Transport::Tcp && f.awaiting_fallback {
                AttemptKind::Fallback
            } else {
                AttemptKind::Retry
            };
            return Some((fid, kind));
        }
        if t == Transport::Tcp
            && (dns.is_some() || is_syn(flags))
            && let Some(&fid) = self.index.get(&Key::DnsFallback {
                client,
                service: dst,
            })
            && let Some(f) = self.flows.get(&fid)
            && f.complete_at.is_none()
            && f.awaiting_fallback
            && same_question(f)
        {
            return Some((fid, AttemptKind::Fallback));
        }
        None
    }

    fn dns_into(
        &mut self,
        fid: u64,
        ev: &PacketEvent,
        t: Transport,
        dir: Direction,
        quoted: bool,
    ) -> Routed {
        if t == Transport::Tcp
            && !quoted
            && ev.hook != Hook::Drop
            && ev.dns.is_none()
            && parse_flags(ev.tcp_flags.as_deref()) & (tcp::SYN | tcp::RST) == 0
        {
            // A bare ACK/FIN of a DNS-over-TCP connection: nothing to learn from it.
            self.stats.ignored += 1;
            return Routed::Done;
        }
        let s = self.sighting(ev, dir, quoted);
        let id = ev
            .dns
            .as_ref()
            .filter(|d| !quoted || !d.response)
            .map(|d| d.id);
        let port = if s.request_oriented() {
            s.src.port()
        } else {
            s.dst.port()
        };
        let may_create = dir == Direction::Request
            && !quoted
            && ev.hook != Hook::Drop
            && match t {
                // Over TCP a new attempt is a new connection; data segments join it.
                Transport::Tcp => is_syn(s.flags),
                Transport::Udp => id.is_some(),
            };
        let Some(flow) = self.flows.get(&fid) else {
            return Routed::Unmatched;
        };
        let matches = |a: &Attempt| {
            a.proto == t && a.port == port && (id.is_none() || a.id.is_none() || a.id == id)
        };
        match assign(flow, matches, &s, may_create) {
            Assign::Duplicate => {
                self.stats.duplicates += 1;
                Routed::Done
            }
            Assign::New if flow.complete_at.is_some() || s.ts > flow.deadline => {
                // The client asks again after its answer (or after the window): a new query
                // reusing the socket and id.
                self.open_dns(ev, t, port, id);
                Routed::Done
            }
            Assign::New => {
                self.add_attempt(fid, AttemptKind::Retry, t, port, id, s);
                Routed::Done
            }
            Assign::Join(i) => {
                let client = flow.client_ip;
                let mut new_keys = Vec::new();
                if let Some(flow) = self.flows.get_mut(&fid) {
                    if let Some(a) = flow.attempts.get_mut(i)
                        && a.id.is_none()
                        && let Some(id) = id
                    {
                        a.id = Some(id);
                        new_keys.push(Key::DnsId {
                            t,
                            client,
                            port,
                            id,
                        });
                    }
                    if dir == Direction::Request
                        && flow.qname.is_none()
                        && let Some(d) = &ev.dns
                        && let Some(q) = &d.qname
                    {
                        flow.qname = Some(q.as_str().into());
                        flow.qtype = d.qtype.as_deref().map(Into::into);
                    }
                }
                for k in new_keys {
                    self.index_insert(fid, k);
                }
                self.add_sighting(fid, i, s);
                Routed::Done
            }
        }
    }

    fn open_dns(&mut self, ev: &PacketEvent, t: Transport, port: u16, id: Option<u16>) {
        let s = self.sighting(ev, Direction::Request, false);
        let client = ev.src;
        let (qname, qtype) = match &ev.dns {
            Some(d) if !d.response => (
                d.qname.as_deref().map(Into::into),
                d.qtype.as_deref().map(Into::into),
            ),
            _ => (None, None),
        };
        let fid = self.open(FlowKind::Dns, client, qname, qtype, s.ts, false);
        if let Some(flow) = self.flows.get_mut(&fid) {
            flow.attempts
                .push(Attempt::new(AttemptKind::First, t, port, id, s.ts));
        }
        self.register_attempt(fid, t, client, port, id);
        self.add_sighting(fid, 0, s);
        self.replay_pending(client);
    }

    /// Creates an empty flow (evicting the oldest if the table is full).
    fn open(
        &mut self,
        kind: FlowKind,
        client: IpAddr,
        qname: Option<Box<str>>,
        qtype: Option<Box<str>>,
        ts: u64,
        provisional: bool,
    ) -> u64 {
        while self.flows.len() >= self.cfg.max_flows.max(1) {
            let Some((old, flow)) = self.flows.pop_first() else {
                break;
            };
            self.stats.evicted += 1;
            if let Some(v) = self.finish(old, flow, Closing::Evicted) {
                self.ready.push(v);
            }
        }
        let fid = self.next_seq;
        self.next_seq += 1;
        let loss = self.loss_since(ts);
        let deadline = ts.saturating_add(self.window_ns);
        self.flows.insert(
            fid,
            Flow {
                kind,
                client_ip: client,
                qname,
                qtype,
                attempts: Vec::new(),
                extra_retries: 0,
                first_ts: ts,
                last_ts: ts,
                deadline,
                settle_at: None,
                complete_at: None,
                hold_until: None,
                due: 0,
                awaiting_fallback: false,
                loss,
                provisional,
                dsts: Vec::new(),
                first_req: None,
                keys: Vec::new(),
                egress_dst: None,
            },
        );
        self.reschedule(fid);
        fid
    }

    fn register_attempt(
        &mut self,
        fid: u64,
        t: Transport,
        client: IpAddr,
        port: u16,
        id: Option<u16>,
    ) {
        let Some(flow) = self.flows.get(&fid) else {
            return;
        };
        if flow.kind != FlowKind::Dns {
            return;
        }
        if let Some(id) = id {
            self.index_insert(
                fid,
                Key::DnsId {
                    t,
                    client,
                    port,
                    id,
                },
            );
        }
        let v = self.by_port.entry((t, client, port)).or_default();
        if !v.contains(&fid) {
            v.push(fid);
        }
    }

    fn add_attempt(
        &mut self,
        fid: u64,
        kind: AttemptKind,
        t: Transport,
        port: u16,
        id: Option<u16>,
        s: Sighting,
    ) {
        let window = self.window_ns;
        let Some(flow) = self.flows.get_mut(&fid) else {
            return;
        };
        if kind == AttemptKind::Retry || kind == AttemptKind::Fallback {
            let cap = flow
                .first_ts
                .saturating_add(window.saturating_mul(MAX_LIFETIME_WINDOWS));
            flow.deadline = flow.deadline.max(s.ts.saturating_add(window).min(cap));
        }
        if flow.attempts.len() >= MAX_ATTEMPTS {
            flow.extra_retries = flow.extra_retries.saturating_add(1);
            self.reschedule(fid);
            return;
        }
        flow.attempts.push(Attempt::new(kind, t, port, id, s.ts));
        let i = flow.attempts.len() - 1;
        // Fold the oldest detailed attempt after the first one.
        let detailed = flow.attempts.iter().filter(|a| a.folded.is_none()).count();
        if detailed > MAX_DETAILED_ATTEMPTS
            && let Some(j) = flow
                .attempts
                .iter()
                .skip(1)
                .position(|a| a.folded.is_none())
                .map(|p| p + 1)
            && j != i
        {
            let summary = decide::attempt_summary(flow, j);
            if let Some(a) = flow.attempts.get_mut(j) {
                a.omitted = a
                    .omitted
                    .saturating_add(u32::try_from(a.sightings.len()).unwrap_or(u32::MAX));
                a.sightings = Vec::new();
                a.folded = Some(summary);
            }
        }
        let client = flow.client_ip;
        self.register_attempt(fid, t, client, port, id);
        self.add_sighting(fid, i, s);
        self.replay_pending(client);
    }

    /// Adds a sighting to attempt `i` and updates the flow's state and schedule.
    fn add_sighting(&mut self, fid: u64, i: usize, s: Sighting) {
        let (window, settle) = (self.window_ns, self.settle_ns);
        let mut keys = Vec::new();
        let Some(flow) = self.flows.get_mut(&fid) else {
            return;
        };
        flow.first_ts = flow.first_ts.min(s.ts);
        flow.last_ts = flow.last_ts.max(s.ts);
        if s.is_request_packet() {
            if flow.first_req.as_ref().is_none_or(|(ts, ..)| s.ts < *ts) {
                flow.first_req = Some((s.ts, s.hook, s.iface.kind, Arc::clone(&s.iface)));
            }
            let d = s.dst.ip();
            if !flow.dsts.contains(&d) && flow.dsts.len() < 4 {
                flow.dsts.push(d);
            }
        }
        if flow.kind == FlowKind::Dns
            && let Some(q) = flow.qname.as_deref()
        {
            let q = qhash(q, flow.qtype.as_deref());
            for &service in &flow.dsts {
                keys.push(Key::DnsRetry {
                    client: flow.client_ip,
                    service,
                    q,
                });
            }
        }
        let delivery = flow.is_delivery(&s);
        let reply = flow.is_reply(&s);
        let rejection = s.is_rejection();
        let side = flow.side();
        let kind = flow.kind;
        let Some(a) = flow.attempts.get_mut(i) else {
            return;
        };
        let proto = a.proto;
        if delivery && (reply || rejection) {
            let truncated = matches!(
                s.detail,
                Detail::Answer {
                    truncated: true,
                    ..
                }
            );
            if kind == FlowKind::Dns && truncated && proto == Transport::Udp && !rejection {
                a.truncated_delivered = true;
                flow.awaiting_fallback = true;
                flow.deadline = flow.deadline.max(s.ts.saturating_add(window));
                for &service in &flow.dsts {
                    keys.push(Key::DnsFallback {
                        client: flow.client_ip,
                        service,
                    });
                }
            } else {
                a.delivered = Some(a.delivered.map_or(s.ts, |d| d.min(s.ts)));
                flow.complete_at = Some(flow.complete_at.map_or(s.ts, |c| c.min(s.ts)));
            }
        } else if s.dir == Direction::Response && s.hook != Hook::Drop {
            let unobservable = kind == FlowKind::Egress || side == super::model::ClientSide::Host;
            if rejection || (reply && unobservable) {
                let at = s.ts.saturating_add(settle);
                flow.settle_at = Some(flow.settle_at.map_or(at, |x| x.min(at)));
            }
        }
        a.push(s);
        for k in keys {
            self.index_insert(fid, k);
        }
        self.reschedule(fid);
    }

    fn route_egress(&mut self, ev: &PacketEvent, mode: Mode) -> Routed {
        let Some(t) = transport(ev.proto) else {
            return Routed::Done;
        };
        let flags = parse_flags(ev.tcp_flags.as_deref());
        if let Some((fid, dir)) = self.find_egress(t, ev, flags) {
            return self.egress_into(fid, ev, dir, false);
        }
        let fwd = Key::Egress {
            t,
            client: ev.src,
            cport: ev.sport,
            server: ev.dst,
            sport: ev.dport,
        };
        let rev = Key::Egress {
            t,
            client: ev.dst,
            cport: ev.dport,
            server: ev.src,
            sport: ev.sport,
        };
        if self.is_late(&fwd, ev.ts_ns, Direction::Request)
            || self.is_late(&rev, ev.ts_ns, Direction::Response)
        {
            self.stats.late_events += 1;
            return Routed::Done;
        }
        if ev.hook == Hook::Drop {
            return Routed::Unmatched;
        }
        let opener = match t {
            Transport::Tcp => is_syn(flags),
            Transport::Udp => true,
        };
        let exit = ev.hook == Hook::Egress && is_exit(ev.iface.kind);
        if opener && ev.hook == Hook::Ingress && ev.iface.kind == IfaceKind::PodVeth {
            // Its SNATed copy (port remapped: --random-fully) may have arrived first.
            if let NatMatch::One(fid) = self.nat_candidate(t, ev, true) {
                return self.egress_into(fid, ev, Direction::Request, false);
            }
            self.open_egress(ev, t, false);
            return Routed::Done;
        }
        if opener && exit {
            // SNAT with a remapped port: the one pod flow toward the same destination that
            // has not left yet. When several could be it, wait for the others to be seen
            // leaving; never guess (a wrong join would credit a reply to the wrong pod).
            match self.nat_candidate(t, ev, false) {
                NatMatch::One(fid) => return self.egress_into(fid, ev, Direction::Request, false),
                NatMatch::Ambiguous if mode != Mode::Expire => return Routed::Unmatched,
                NatMatch::Ambiguous => self.stats.ambiguous_events += 1,
                NatMatch::None => {}
            }
            // Maybe its pod veth sighting is still on its way; dropped silently if not.
            self.open_egress(ev, t, true);
            return Routed::Done;
        }
        Routed::Unmatched
    }

    fn find_egress(&self, t: Transport, ev: &PacketEvent, flags: u8) -> Option<(u64, Direction)> {
        let fwd_full = Key::Egress {
            t,
            client: ev.src,
            cport: ev.sport,
            server: ev.dst,
            sport: ev.dport,
        };
        let fwd_snat = Key::EgressSnat {
            t,
            cport: ev.sport,
            server: ev.dst,
            sport: ev.dport,
        };
        let rev_full = Key::Egress {
            t,
            client: ev.dst,
            cport: ev.dport,
            server: ev.src,
            sport: ev.sport,
        };
        let rev_snat = Key::EgressSnat {
            t,
            cport: ev.dport,
            server: ev.src,
            sport: ev.sport,
        };
        let syn = t == Transport::Tcp && is_syn(flags);
        let synack = t == Transport::Tcp && super::flow::is_synack(flags);
        let at_pod = ev.iface.kind == IfaceKind::PodVeth && ev.hook != Hook::Drop;
        let mut tries: Vec<(Key, Direction)> = Vec::with_capacity(4);
        if !synack {
            tries.push((fwd_full, Direction::Request));
        }
        if !syn {
            tries.push((rev_full, Direction::Response));
        }
        if !synack {
            tries.push((fwd_snat, Direction::Request));
        }
        if !syn {
            tries.push((rev_snat, Direction::Response));
        }
        tries.into_iter().find_map(|(k, dir)| {
            let snat = matches!(k, Key::EgressSnat { .. });
            let fid = *self.index.get(&k)?;
            let f = self.flows.get(&fid)?;
            // At a pod veth the pod's own address is visible: a port collision with another
            // pod's flow is not a match (unless that flow is not attributed yet).
            if snat && at_pod && !f.provisional {
                let pod_addr = if dir == Direction::Request {
                    ev.src
                } else {
                    ev.dst
                };
                if pod_addr != f.client_ip {
                    return None;
                }
            }
            Some((fid, dir))
        })
    }

    /// The egress flow toward `ev`'s destination that `ev` is the other half of, across a
    /// SNAT that remapped the port: for a packet leaving through an uplink, a pod flow whose
    /// request has not left yet (nor was dropped); for a packet at a pod veth, a flow seen so
    /// far only at an uplink. Within [`MAX_NAT_DELAY_NS`], in causal order. Prunes entries
    /// that can no longer match.
    fn nat_candidate(&mut self, t: Transport, ev: &PacketEvent, provisional: bool) -> NatMatch {
        let key = (t, ev.dst, ev.dport);
        let list = usize::from(provisional);
        let Some(mut fids) = self.by_dst.get_mut(list).and_then(|m| m.remove(&key)) else {
            return NatMatch::None;
        };
        let ts = ev.ts_ns;
        let mut found = NatMatch::None;
        fids.retain(|&fid| {
            let Some(f) = self.flows.get(&fid) else {
                return false;
            };
            let Some(a) = f.latest_attempt().and_then(|i| f.attempts.get(i)) else {
                return false;
            };
            if f.provisional != provisional {
                return false;
            }
            let (pod_ts, exit_ts) = if provisional {
                (ts, a.start_ts)
            } else {
                (a.start_ts, ts)
            };
            let exit_too_late = exit_ts > pod_ts.saturating_add(MAX_NAT_DELAY_NS);
            let exit_too_early = exit_ts.saturating_add(self.reorder_ns) < pod_ts;
            // The listed flow's own time is fixed and `ev`'s grows with later events: a
            // mismatch in the direction time moves is final, so the entry goes.
            if (!provisional && exit_too_late) || (provisional && exit_too_early) {
                return false;
            }
            if exit_too_late || exit_too_early {
                return true;
            }
            if !provisional
                && a.sightings.iter().any(|s| {
                    (s.is_request_packet() && s.hook == Hook::Egress && is_exit(s.iface.kind))
                        || (s.hook == Hook::Drop && s.dir == Direction::Request)
                })
            {
                return false;
            }
            found = match found {
                NatMatch::None => NatMatch::One(fid),
                _ => NatMatch::Ambiguous,
            };
            true
        });
        if !fids.is_empty()
            && let Some(m) = self.by_dst.get_mut(list)
        {
            m.insert(key, fids);
        }
        found
    }

    /// Removes `fid` from the NAT candidate lists.
    fn unlist_nat(&mut self, fid: u64, key: Option<(Transport, IpAddr, u16)>) {
        let Some(key) = key else {
            return;
        };
        for m in &mut self.by_dst {
            if let Some(v) = m.get_mut(&key) {
                v.retain(|f| *f != fid);
                if v.is_empty() {
                    m.remove(&key);
                }
            }
        }
    }

    fn open_egress(&mut self, ev: &PacketEvent, t: Transport, provisional: bool) {
        let s = self.sighting(ev, Direction::Request, false);
        let fid = self.open(FlowKind::Egress, ev.src, None, None, s.ts, provisional);
        if let Some(flow) = self.flows.get_mut(&fid) {
            flow.attempts
                .push(Attempt::new(AttemptKind::First, t, ev.sport, None, s.ts));
        }
        if !provisional {
            self.index_insert(
                fid,
                Key::Egress {
                    t,
                    client: ev.src,
                    cport: ev.sport,
                    server: ev.dst,
                    sport: ev.dport,
                },
            );
        }
        self.index_insert(
            fid,
            Key::EgressSnat {
                t,
                cport: ev.sport,
                server: ev.dst,
                sport: ev.dport,
            },
        );
        if let Some(m) = self.by_dst.get_mut(usize::from(provisional)) {
            m.entry((t, ev.dst, ev.dport)).or_default().push(fid);
        }
        if let Some(f) = self.flows.get_mut(&fid) {
            f.egress_dst = Some((t, ev.dst, ev.dport));
        }
        self.add_sighting(fid, 0, s);
        self.replay_pending(ev.src);
        self.replay_pending(ev.dst);
    }

    fn egress_into(&mut self, fid: u64, ev: &PacketEvent, dir: Direction, quoted: bool) -> Routed {
        let s = self.sighting(ev, dir, quoted);
        let Some(flow) = self.flows.get_mut(&fid) else {
            return Routed::Unmatched;
        };
        if !quoted && ev.hook != Hook::Drop {
            // Only the handshake and the first packet per point matter; the rest of a
            // connection (if the capture reports it) is ignored.
            let uninteresting = match ev.proto {
                Proto::Tcp => s.flags & (tcp::SYN | tcp::RST) == 0,
                _ => flow.attempts.iter().any(|a| {
                    a.sightings
                        .iter()
                        .any(|x| x.same_hop(&s) && !x.duplicate_of(&s))
                }),
            };
            if uninteresting {
                self.stats.ignored += 1;
                return Routed::Done;
            }
        }
        let t = flow.attempts.first().map_or(Transport::Tcp, |a| a.proto);
        let mut attributed = None;
        if flow.provisional
            && dir == Direction::Request
            && !quoted
            && ev.hook == Hook::Ingress
            && ev.iface.kind == IfaceKind::PodVeth
        {
            flow.provisional = false;
            flow.client_ip = ev.src;
            if let Some(a) = flow.attempts.first_mut() {
                a.port = ev.sport;
            }
            attributed = Some(Key::Egress {
                t,
                client: ev.src,
                cport: ev.sport,
                server: ev.dst,
                sport: ev.dport,
            });
        }
        let may_create = dir == Direction::Request
            && !quoted
            && ev.hook != Hook::Drop
            && t == Transport::Tcp
            && is_syn(s.flags);
        match assign(flow, |_| true, &s, may_create) {
            Assign::Duplicate => {
                self.stats.duplicates += 1;
            }
            Assign::New if flow.complete_at.is_some() => {
                // A new connection reusing the tuple after the first one completed.
                self.stats.ignored += 1;
            }
            Assign::New => {
                let port = flow.attempts.first().map_or(0, |a| a.port);
                self.add_attempt(fid, AttemptKind::Retry, t, port, None, s);
            }
            Assign::Join(i) => {
                self.add_sighting(fid, i, s);
            }
        }
        if dir == Direction::Request && !quoted && ev.hook == Hook::Egress && is_exit(ev.iface.kind)
        {
            // The tuple after SNAT, so the reply to the SNAT port finds the flow; and a SNATed
            // packet of another flow that was ambiguous until now may be resolved.
            self.index_insert(
                fid,
                Key::EgressSnat {
                    t,
                    cport: ev.sport,
                    server: ev.dst,
                    sport: ev.dport,
                },
            );
            if !self.flows.get(&fid).is_some_and(|f| f.provisional) {
                let key = self.flows.get(&fid).and_then(|f| f.egress_dst);
                self.unlist_nat(fid, key);
            }
            self.replay_pending(ev.src);
            self.replay_pending(ev.dst);
        }
        if let Some(k) = attributed {
            // Attributed now: no longer a provisional NAT candidate.
            let key = self.flows.get(&fid).and_then(|f| f.egress_dst);
            self.unlist_nat(fid, key);
            self.index_insert(fid, k);
            self.replay_pending(ev.src);
        }
        Routed::Done
    }

    fn route_icmp(&mut self, ev: &PacketEvent, _mode: Mode) -> Routed {
        if ev.icmp.is_none() {
            self.stats.ignored += 1;
            return Routed::Done;
        }
        if ev.dport == 53 && ev.sport != 53 {
            // The quoted packet is a query: the ICMP error answers it.
            let id = ev.dns.as_ref().filter(|d| !d.response).map(|d| d.id);
            for t in [Transport::Udp, Transport::Tcp] {
                match self.find_dns(t, ev.src, ev.sport, id) {
                    Found::One(fid) => {
                        return self.dns_into(fid, ev, t, Direction::Response, true);
                    }
                    Found::Many(fids) => {
                        self.ambiguous(&fids, ev, ev.sport);
                        return Routed::Done;
                    }
                    Found::None => {}
                }
            }
            if let Some(id) = id {
                for t in [Transport::Udp, Transport::Tcp] {
                    if self.is_late(
                        &Key::DnsId {
                            t,
                            client: ev.src,
                            port: ev.sport,
                            id,
                        },
                        ev.ts_ns,
                        Direction::Response,
                    ) {
                        self.stats.late_events += 1;
                        return Routed::Done;
                    }
                }
            }
            return Routed::Unmatched;
        }
        if is_dns(ev) {
            // An ICMP error about a DNS response (the client's socket is gone): the answer came
            // too late; the flow already has its verdict or will get it from other events.
            self.stats.ignored += 1;
            return Routed::Done;
        }
        for t in [Transport::Tcp, Transport::Udp] {
            let full = Key::Egress {
                t,
                client: ev.src,
                cport: ev.sport,
                server: ev.dst,
                sport: ev.dport,
            };
            let snat = Key::EgressSnat {
                t,
                cport: ev.sport,
                server: ev.dst,
                sport: ev.dport,
            };
            if let Some(&fid) = self.index.get(&full).or_else(|| self.index.get(&snat)) {
                return self.egress_into(fid, ev, Direction::Response, true);
            }
        }
        Routed::Unmatched
    }

    // ----- bookkeeping -----

    fn index_insert(&mut self, fid: u64, key: Key) {
        if matches!(key, Key::EgressSnat { .. })
            && let Some(other) = self.index.get(&key)
            && *other != fid
            && self.flows.contains_key(other)
        {
            return;
        }
        if let Some(f) = self.flows.get_mut(&fid)
            && !f.keys.contains(&key)
        {
            f.keys.push(key.clone());
        }
        self.index.insert(key, fid);
    }

    fn reschedule(&mut self, fid: u64) {
        let reorder = self.reorder_ns;
        let Some(flow) = self.flows.get_mut(&fid) else {
            return;
        };
        let due = match flow.complete_at {
            Some(c) => c.saturating_add(reorder),
            None => {
                let d = base_due(flow);
                match flow.hold_until {
                    Some(h) => d.max(h),
                    None => d,
                }
            }
        };
        if due != flow.due {
            flow.due = due;
            self.heap.push(Reverse((due, fid)));
        }
    }

    fn is_late(&self, key: &Key, ts: u64, dir: Direction) -> bool {
        self.tombs.get(key).is_some_and(|t| match dir {
            Direction::Request => ts <= t.until,
            Direction::Response => ts <= t.expires,
        })
    }

    /// Removes a closed flow's keys, leaves tombstones, builds its verdict.
    fn finish(&mut self, fid: u64, flow: Flow, closing: Closing) -> Option<Verdict> {
        let until = if closing == Closing::Evicted {
            flow.last_ts
        } else {
            flow.due.max(flow.last_ts)
        };
        let expires = until.saturating_add(self.window_ns);
        for a in &flow.attempts {
            if flow.kind == FlowKind::Dns
                && let Some(v) = self.by_port.get_mut(&(a.proto, flow.client_ip, a.port))
            {
                v.retain(|f| *f != fid);
                if v.is_empty() {
                    self.by_port.remove(&(a.proto, flow.client_ip, a.port));
                }
            }
        }
        self.unlist_nat(fid, flow.egress_dst);
        let mut keys: Vec<Key> = Vec::new();
        for k in &flow.keys {
            if self.index.get(k) == Some(&fid) {
                self.index.remove(k);
            }
            if matches!(k, Key::DnsId { .. } | Key::Egress { .. }) {
                keys.push(k.clone());
            }
        }
        for k in keys {
            self.tombs.insert(k.clone(), Tomb { until, expires });
            self.tomb_order.push_back((expires, k));
        }
        while self.tombs.len() > self.cfg.max_flows.max(1) {
            let Some((_, k)) = self.tomb_order.pop_front() else {
                break;
            };
            self.tombs.remove(&k);
        }
        if flow.provisional {
            self.stats.unattributed_egress += 1;
            return None;
        }
        let ctx = Ctx {
            node: &self.cfg.node,
            window_ns: self.window_ns,
            max_flows: self.cfg.max_flows,
            recent: &self.recent,
            recent_horizon_ns: RECENT_HORIZON_NS,
        };
        let v = decide::build(&flow, closing, &ctx);
        if v.kind == FlowKind::Dns {
            let ok = match v.facts.downgraded_from.unwrap_or(v.verdict) {
                VerdictKind::Answered => Some(true),
                VerdictKind::LostBeyondNode if v.verdict == VerdictKind::LostBeyondNode => {
                    Some(false)
                }
                _ => None,
            };
            if let (Some(ok), Some(d)) = (ok, &v.dns) {
                let via = v
                    .egress_interface
                    .as_ref()
                    .map(|e| e.name.clone())
                    .unwrap_or_default();
                self.remember((v.server.ip, d.transport, via), v.end_ns, ok);
            }
        }
        self.stats.verdicts.add(v.verdict);
        Some(v)
    }

    fn remember(&mut self, key: RecentKey, ts: u64, ok: bool) {
        if self.recent.len() >= MAX_RECENT
            && !self.recent.contains_key(&key)
            && let Some(oldest) = self
                .recent
                .iter()
                .min_by_key(|(_, r)| r.ts)
                .map(|(k, _)| k.clone())
        {
            self.recent.remove(&oldest);
        }
        self.recent.insert(key, Recent { ts, ok });
    }

    fn push_pending(&mut self, ev: &PacketEvent) {
        if self.pending.len() >= MAX_PENDING
            && let Some(old) = self.pending.pop_front()
        {
            self.expire_one(&old);
        }
        self.pending.push_back(ev.clone());
    }

    /// Retries the pending events that involve `ip`, now that a flow of it opened.
    fn replay_pending(&mut self, ip: IpAddr) {
        if !self.pending.iter().any(|e| e.src == ip || e.dst == ip) {
            return;
        }
        let (mine, rest): (Vec<PacketEvent>, Vec<PacketEvent>) = self
            .pending
            .drain(..)
            .partition(|e| e.src == ip || e.dst == ip);
        self.pending = rest.into();
        for ev in mine {
            if self.route(&ev, Mode::Replay) == Routed::Unmatched {
                self.pending.push_back(ev);
            }
        }
    }

    /// Gives up on pending events older than `reorder` (all of them when `now` is None).
    fn expire_pending(&mut self, now: Option<u64>) {
        let reorder = self.reorder_ns;
        let (old, keep): (Vec<PacketEvent>, Vec<PacketEvent>) = self
            .pending
            .drain(..)
            .partition(|e| now.is_none_or(|n| e.ts_ns.saturating_add(reorder) <= n));
        self.pending = keep.into();
        for ev in old {
            self.expire_one(&ev);
        }
    }

    fn expire_one(&mut self, ev: &PacketEvent) {
        if self.route(ev, Mode::Expire) == Routed::Unmatched {
            let response = ev.dns.as_ref().is_some_and(|d| d.response)
                || (is_dns(ev) && ev.sport == 53 && ev.hook != Hook::Drop && ev.icmp.is_none());
            if response {
                self.stats.orphan_responses += 1;
            } else {
                self.stats.unmatched_events += 1;
            }
        }
    }

    fn prune(&mut self, now: u64) {
        // A flow lives at most MAX_LIFETIME_WINDOWS windows plus its hold: older losses can no
        // longer overlap anything that is still to be decided.
        let horizon = self
            .window_ns
            .saturating_mul(MAX_LIFETIME_WINDOWS + 1)
            .saturating_add(self.margin_ns.saturating_mul(2));
        while let Some((_, to, _)) = self.losses.front() {
            if to.saturating_add(horizon) >= now {
                break;
            }
            self.losses.pop_front();
        }
        while let Some((exp, _)) = self.tomb_order.front() {
            if *exp >= now {
                break;
            }
            if let Some((exp, k)) = self.tomb_order.pop_front()
                && self.tombs.get(&k).is_some_and(|t| t.expires == exp)
            {
                self.tombs.remove(&k);
            }
        }
        if self.heap.len() > 4 * self.flows.len() + 1024 {
            self.heap = self
                .flows
                .iter()
                .map(|(fid, f)| Reverse((f.due, *fid)))
                .collect();
        }
    }
}

/// When an incomplete flow is next to be decided, before any hold: the end of its window, or
/// earlier when a reply/rejection needs only a short settle.
fn base_due(flow: &Flow) -> u64 {
    match flow.settle_at {
        Some(s) => flow.deadline.min(s),
        None => flow.deadline,
    }
}

/// Chooses the attempt a sighting belongs to.
fn assign(
    flow: &Flow,
    matches: impl Fn(&Attempt) -> bool,
    s: &Sighting,
    may_create: bool,
) -> Assign {
    if flow
        .attempts
        .iter()
        .any(|a| a.sightings.iter().any(|x| x.duplicate_of(s)))
    {
        return Assign::Duplicate;
    }
    let cands: Vec<usize> = flow
        .attempts
        .iter()
        .enumerate()
        .filter(|(_, a)| matches(a))
        .map(|(i, _)| i)
        .collect();
    let start = |i: &usize| flow.attempts.get(*i).map_or(0, |a| a.start_ts);
    // The attempt that started last before `ts`, else the earliest one.
    let pick = |list: &[usize]| -> Option<usize> {
        list.iter()
            .copied()
            .filter(|i| start(i) <= s.ts)
            .max_by_key(|i| (start(i), *i))
            .or_else(|| list.iter().copied().min_by_key(|i| (start(i), *i)))
    };
    if s.is_request_packet() && !s.quoted {
        let lacking: Vec<usize> = cands
            .iter()
            .copied()
            .filter(|i| flow.attempts.get(*i).is_some_and(|a| !a.has_hop(s)))
            .collect();
        if let Some(i) = pick(&lacking) {
            // A resend seen at the first hop later than everything of the lacking attempt is
            // a new attempt, not a late sighting.
            return Assign::Join(i);
        }
        if may_create {
            return Assign::New;
        }
    }
    match pick(&cands) {
        Some(i) => Assign::Join(i),
        None if may_create => Assign::New,
        None => flow
            .latest_attempt()
            .map_or(Assign::Duplicate, Assign::Join),
    }
}
