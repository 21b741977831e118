//! Events that match no flow yet wait here briefly (slightly out-of-order sightings), then
//! are retried, opened or counted.

use std::net::IpAddr;

use crate::decode::event::{Hook, PacketEvent};

use super::super::flow::{Key, is_exit};
use super::{Correlator, MAX_PENDING, Mode, Routed, is_dns, transport};

impl Correlator {
    pub(super) fn push_pending(&mut self, ev: &PacketEvent) {
        if self.pending.len() >= MAX_PENDING
            && let Some(old) = self.pending.pop_front()
        {
            self.expire_one(&old);
        }
        self.pending.push_back(ev.clone());
    }

    /// Retries the pending events that involve `ip`, now that a flow of it opened.
    pub(super) fn replay_pending(&mut self, ip: IpAddr) {
        self.replay_where(|e| e.src == ip || e.dst == ip);
    }

    /// Retries the pending events `concerns` picks; those still unmatched wait on.
    fn replay_where(&mut self, concerns: impl Fn(&PacketEvent) -> bool) {
        if !self.pending.iter().any(&concerns) {
            return;
        }
        let (mine, rest): (Vec<PacketEvent>, Vec<PacketEvent>) =
            self.pending.drain(..).partition(&concerns);
        self.pending = rest.into();
        for ev in mine {
            if self.route(&ev, Mode::Replay) == Routed::Unmatched {
                self.pending.push_back(ev);
            }
        }
    }

    /// Retries the pending events that egress flow `fid` (just opened, or just seen leaving)
    /// may now take: those of its tuples, before or after SNAT, either way; and SNATed
    /// requests toward its destination, which it may have made ambiguous or, having left,
    /// unambiguous. Not every event of its pod or its server: at thousands of connections a
    /// second to one server, that replayed the whole queue at every packet.
    pub(super) fn replay_pending_for(&mut self, fid: u64) {
        let Some(f) = self.flows.get(&fid) else {
            return;
        };
        let Some((t, server, server_port)) = f.egress_dst else {
            return;
        };
        // The flow's client ports, before and after SNAT. An event it can take has its server
        // at one end and one of these ports at the other (a superset of its tuples: replaying
        // a few more is harmless, and integers compare faster than tuples hash).
        let ports: Vec<u16> = f
            .keys
            .iter()
            .filter_map(|k| match k {
                Key::Egress { cport, .. } | Key::EgressSnat { cport, .. } => Some(*cport),
                _ => None,
            })
            .collect();
        let concerns = |e: &PacketEvent| {
            if transport(e.proto) != Some(t) || is_dns(e) {
                return false;
            }
            let (port, toward) = if e.dst == server && e.dport == server_port {
                (e.sport, true)
            } else if e.src == server && e.sport == server_port {
                (e.dport, false)
            } else {
                return false;
            };
            let snat_opener = toward
                && e.hook == Hook::Egress
                && is_exit(e.iface.kind)
                && e.icmp.is_none()
                && (t == super::Transport::Udp || e.tcp_flags.is_some_and(|f| f.is_syn()));
            snat_opener || ports.contains(&port)
        };
        self.replay_where(concerns);
    }

    /// Gives up on pending events older than `reorder` (all of them when `now` is None).
    pub(super) fn expire_pending(&mut self, now: Option<u64>) {
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

    pub(super) fn expire_one(&mut self, ev: &PacketEvent) {
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
}
