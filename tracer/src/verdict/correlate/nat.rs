//! SNAT with remapped ports (`--random-fully`): pairing a pod's packet with its SNATed copy
//! at the uplink by destination and time, never guessing between candidates.

use std::net::IpAddr;

use crate::decode::event::{Hook, PacketEvent};

use super::super::flow::is_exit;
use super::super::model::{Direction, Transport};
use super::{Correlator, MAX_NAT_DELAY_NS, NatMatch};

impl Correlator {
    /// The egress flow toward `ev`'s destination that `ev` is the other half of, across a
    /// SNAT that remapped the port: for a packet leaving through an uplink, a pod flow whose
    /// request has not left yet (nor was dropped); for a packet at a pod veth, a flow seen so
    /// far only at an uplink. Within [`MAX_NAT_DELAY_NS`], in causal order. Prunes entries
    /// that can no longer match.
    pub(super) fn nat_candidate(
        &mut self,
        t: Transport,
        ev: &PacketEvent,
        provisional: bool,
    ) -> NatMatch {
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
    pub(super) fn unlist_nat(&mut self, fid: u64, key: Option<(Transport, IpAddr, u16)>) {
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
}
