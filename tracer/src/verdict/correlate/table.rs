//! The flow table itself: opening flows and attempts, adding sightings, scheduling decisions,
//! indexes and tombstones, and closing a flow into its verdict.

use std::cmp::Reverse;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::decode::event::{Hook, QType};

use super::super::decide;
use super::super::decide::{Closing, Ctx, Recent, RecentKey};
use super::super::flow::{
    Attempt, AttemptKind, Detail, Flow, Key, MAX_ATTEMPTS, MAX_DETAILED_ATTEMPTS, Sighting,
};
use super::super::model::{Direction, FlowKind, Transport, Verdict, VerdictKind};
use super::{Assign, Correlator, MAX_LIFETIME_WINDOWS, MAX_RECENT, RECENT_HORIZON_NS, Tomb, qhash};

impl Correlator {
    /// Creates an empty flow (evicting the oldest if the table is full).
    pub(super) fn open(
        &mut self,
        kind: FlowKind,
        client: IpAddr,
        qname: Option<Box<str>>,
        qtype: Option<QType>,
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

    pub(super) fn register_attempt(
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

    pub(super) fn add_attempt(
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
        // Fold the oldest detailed attempt after the first one whose outcome can no longer
        // change (answered, dropped, rejected). An attempt still waiting keeps its sightings:
        // its answer may yet come (folding it would throw that answer away).
        let detailed = flow.attempts.iter().filter(|a| a.folded.is_none()).count();
        if detailed > MAX_DETAILED_ATTEMPTS
            && let Some(j) = (1..flow.attempts.len()).find(|&j| {
                j != i
                    && flow.attempts.get(j).is_some_and(|a| a.folded.is_none())
                    && decide::attempt_is_final(flow, j)
            })
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
    pub(super) fn add_sighting(&mut self, fid: u64, i: usize, s: Sighting) {
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
            let q = qhash(q, flow.qtype);
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
            let unobservable =
                kind == FlowKind::Egress || side == super::super::model::ClientSide::Host;
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

    pub(super) fn index_insert(&mut self, fid: u64, key: Key) {
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

    pub(super) fn reschedule(&mut self, fid: u64) {
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

    pub(super) fn is_late(&self, key: &Key, ts: u64, dir: Direction) -> bool {
        self.tombs.get(key).is_some_and(|t| match dir {
            Direction::Request => ts <= t.until,
            Direction::Response => ts <= t.expires,
        })
    }

    /// Removes a closed flow's keys, leaves tombstones, builds its verdict.
    pub(super) fn finish(&mut self, fid: u64, flow: Flow, closing: Closing) -> Option<Verdict> {
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
        // What this outcome says about the server, reached this way, for later verdicts: DNS
        // answered or lost (the TCP/UDP 53 remark of a hint), UDP egress answered (later
        // silence from that server is a loss, not a one-way protocol).
        let outcome = match (v.kind, v.facts.downgraded_from.unwrap_or(v.verdict)) {
            (FlowKind::Dns, VerdictKind::Answered) => Some(true),
            (FlowKind::Dns, VerdictKind::LostBeyondNode)
                if v.verdict == VerdictKind::LostBeyondNode =>
            {
                Some(false)
            }
            (FlowKind::Egress, VerdictKind::Established) if v.transport == Transport::Udp => {
                Some(true)
            }
            _ => None,
        };
        if let Some(ok) = outcome {
            let via = v
                .egress_interface
                .as_ref()
                .map(|e| e.name.clone())
                .unwrap_or_default();
            let server = SocketAddr::new(v.server.ip, v.server.port);
            self.remember((server, v.transport, via), v.end_ns, ok);
        }
        self.stats.verdicts.add(v.verdict);
        Some(v)
    }

    pub(super) fn remember(&mut self, key: RecentKey, ts: u64, ok: bool) {
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

    pub(super) fn prune(&mut self, now: u64) {
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
pub(super) fn base_due(flow: &Flow) -> u64 {
    match flow.settle_at {
        Some(s) => flow.deadline.min(s),
        None => flow.deadline,
    }
}

/// Chooses the attempt a sighting belongs to.
pub(super) fn assign(
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
