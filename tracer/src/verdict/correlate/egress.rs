//! Pod egress: a SYN or first UDP packet opens a flow at the pod veth; the SNATed copy at the
//! uplink and the replies (before or after SNAT) join it.

use crate::decode::event::{Hook, IfaceKind, PacketEvent, Proto, TcpFlags};

use super::super::decide::Closing;
use super::super::flow::{Attempt, AttemptKind, Flow, Key, is_exit};
use super::super::model::{Direction, FlowKind, Transport};
use super::{Assign, Correlator, Mode, NatMatch, Routed, assign, transport};

impl Correlator {
    pub(super) fn route_egress(&mut self, ev: &PacketEvent, mode: Mode) -> Routed {
        let Some(t) = transport(ev.proto) else {
            return Routed::Done;
        };
        let flags = ev.tcp_flags.unwrap_or_default();
        let fwd = Key::egress(t, ev, false);
        let rev = Key::egress(t, ev, true);
        let late = |c: &Self| {
            c.is_late(&fwd, ev.ts_ns, Direction::Request)
                || c.is_late(&rev, ev.ts_ns, Direction::Response)
        };
        let mut reopened = false;
        if let Some((fid, dir)) = self.find_egress(t, ev, flags) {
            let syn = t == Transport::Tcp && flags.is_syn() && !flags.is_synack();
            let flow = self.flows.get(&fid);
            if syn
                && dir == Direction::Request
                && ev.hook != Hook::Drop
                && flow.is_some_and(|f| f.complete_at.is_some_and(|c| ev.ts_ns > c))
            {
                // A SYN after the flow's handshake was over is a new connection on its tuple:
                // the pod reused the port at once (a reset leaves no TIME_WAIT), or SNAT gave
                // the port out again. The old flow's verdict goes out now; this one opens its
                // own flow below.
                self.close_now(fid);
                reopened = true;
            } else if !syn && flow.is_some_and(|f| ev.ts_ns < f.first_ts) && late(self) {
                // Older than the flow it found, and the tuple's previous flow (closed when
                // this one opened) claims it: that flow's late packet.
                self.stats.late_events += 1;
                return Routed::Done;
            } else {
                return self.egress_into(fid, ev, dir, false);
            }
        }
        if !reopened && late(self) {
            self.stats.late_events += 1;
            return Routed::Done;
        }
        if ev.hook == Hook::Drop {
            return Routed::Unmatched;
        }
        let opener = match t {
            Transport::Tcp => flags.is_syn(),
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

    /// Closes flow `fid` now; its verdict goes out at the next poll.
    fn close_now(&mut self, fid: u64) {
        if let Some(flow) = self.flows.remove(&fid)
            && let Some(v) = self.finish(fid, flow, Closing::Normal)
        {
            self.ready.push(v);
        }
    }

    pub(super) fn find_egress(
        &self,
        t: Transport,
        ev: &PacketEvent,
        flags: TcpFlags,
    ) -> Option<(u64, Direction)> {
        let fwd_full = Key::egress(t, ev, false);
        let fwd_snat = Key::egress_snat(t, ev, false);
        let rev_full = Key::egress(t, ev, true);
        let rev_snat = Key::egress_snat(t, ev, true);
        let syn = t == Transport::Tcp && flags.is_syn();
        let synack = t == Transport::Tcp && flags.is_synack();
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
            // At a pod veth the whole pre-SNAT tuple is visible: an attributed flow of that
            // tuple is found by its full key, so a match on the port alone is another flow's
            // (another pod's with the same port, or a flow whose SNAT port happens to be this
            // pod's source port: `--random-fully` picks any). Only a flow not attributed yet
            // (seen at the uplink first) is looked up this way.
            if snat && at_pod && !f.provisional {
                return None;
            }
            Some((fid, dir))
        })
    }

    /// Indexes the tuple `ev` (a request of `fid` leaving through an exit) carries outside the
    /// node. When SNAT remapped the port, the guess made at the pod veth (port preserved) is
    /// withdrawn: that port now belongs, outside the node, to whichever flow SNAT gives it
    /// next (`--random-fully` picks any port, including another pod's source port). A flow
    /// holding the key only as such a guess yields it; one seen leaving with it keeps it.
    fn index_exit_key(&mut self, fid: u64, t: Transport, ev: &PacketEvent) {
        let key = Key::egress_snat(t, ev, false);
        if let Some(f) = self.flows.get(&fid)
            && !f.provisional
            && let Some(pod_port) = f.attempts.first().map(|a| a.port)
            && pod_port != ev.sport
        {
            let guess = Key::EgressSnat {
                t,
                cport: pod_port,
                server: ev.dst,
                sport: ev.dport,
            };
            if self.index.get(&guess) == Some(&fid) {
                self.index.remove(&guess);
            }
        }
        if let Some(&other) = self.index.get(&key)
            && other != fid
            && !self
                .flows
                .get(&other)
                .is_some_and(|o| left_with(o, ev.sport))
        {
            self.index.remove(&key);
        }
        self.index_insert(fid, key);
    }

    pub(super) fn open_egress(&mut self, ev: &PacketEvent, t: Transport, provisional: bool) {
        let s = self.sighting(ev, Direction::Request, false);
        let fid = self.open(FlowKind::Egress, ev.src, None, None, s.ts, provisional);
        if let Some(flow) = self.flows.get_mut(&fid) {
            flow.attempts
                .push(Attempt::new(AttemptKind::First, t, ev.sport, None, s.ts));
        }
        if !provisional {
            self.index_insert(fid, Key::egress(t, ev, false));
        }
        self.index_insert(fid, Key::egress_snat(t, ev, false));
        if let Some(m) = self.by_dst.get_mut(usize::from(provisional)) {
            m.entry((t, ev.dst, ev.dport)).or_default().push(fid);
        }
        if let Some(f) = self.flows.get_mut(&fid) {
            f.egress_dst = Some((t, ev.dst, ev.dport));
        }
        self.add_sighting(fid, 0, s);
        self.replay_pending_for(fid);
    }

    pub(super) fn egress_into(
        &mut self,
        fid: u64,
        ev: &PacketEvent,
        dir: Direction,
        quoted: bool,
    ) -> Routed {
        let s = self.sighting(ev, dir, quoted);
        let Some(flow) = self.flows.get_mut(&fid) else {
            return Routed::Unmatched;
        };
        if !quoted && ev.hook != Hook::Drop {
            // Only the handshake and the first packet per point matter; the rest of a
            // connection (if the capture reports it) is ignored.
            let uninteresting = match ev.proto {
                Proto::Tcp => !s.flags.is_control(),
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
            attributed = Some(Key::egress(t, ev, false));
        }
        let may_create = dir == Direction::Request
            && !quoted
            && ev.hook != Hook::Drop
            && t == Transport::Tcp
            && s.flags.is_syn();
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
            self.index_exit_key(fid, t, ev);
            if !self.flows.get(&fid).is_some_and(|f| f.provisional) {
                let key = self.flows.get(&fid).and_then(|f| f.egress_dst);
                self.unlist_nat(fid, key);
            }
            self.replay_pending_for(fid);
        }
        if let Some(k) = attributed {
            // Attributed now: no longer a provisional NAT candidate.
            let key = self.flows.get(&fid).and_then(|f| f.egress_dst);
            self.unlist_nat(fid, key);
            self.index_insert(fid, k);
            self.replay_pending_for(fid);
        }
        Routed::Done
    }
}

/// `f`'s request was seen leaving through an exit with source port `port`.
fn left_with(f: &Flow, port: u16) -> bool {
    f.attempts.iter().any(|a| {
        a.sightings.iter().any(|s| {
            s.is_request_packet()
                && s.hook == Hook::Egress
                && is_exit(s.iface.kind)
                && s.src.port() == port
        })
    })
}
