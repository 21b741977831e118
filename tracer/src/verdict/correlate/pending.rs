//! Events that match no flow yet wait here briefly (slightly out-of-order sightings), then
//! are retried, opened or counted.

use std::net::IpAddr;

use crate::decode::event::{Hook, PacketEvent};

use super::{Correlator, MAX_PENDING, Mode, Routed, is_dns};

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
