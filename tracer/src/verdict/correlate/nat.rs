//! SNAT with remapped ports (`--random-fully`): pairing a pod's packet with its SNATed copy
//! at the uplink by destination and time, never guessing between candidates.

use std::net::IpAddr;

use crate::decode::event::{Hook, PacketEvent};

use super::super::flow::is_exit;
use super::super::model::{Direction, Transport};
use super::{Correlator, MAX_NAT_DELAY_NS, NatMatch};

/// Flows toward one destination that may wait for their SNATed copy before a match is
/// declared ambiguous without looking.
const MAX_NAT_CANDIDATES: usize = 64;

impl Correlator {
    /// The egress flow toward `ev`'s destination that `ev` is the other half of, across a
    /// SNAT that remapped the port: for a packet leaving through an uplink, a pod flow whose
    /// request has not left yet (nor was dropped); for a packet at a pod veth, a flow seen so
    /// far only at an uplink. Within [`MAX_NAT_DELAY_NS`], in causal order.
    ///
    /// A list holds the flows toward one destination in the order they were opened. Entries
    /// that can no longer match anything are pruned from its old end; the search runs from
    /// the new end and stops at the second candidate, since two already make the match
    /// ambiguous. So a busy destination costs a few steps per packet, also while records are
    /// being lost and the flows whose exit went unseen pile up until they age out.
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
        let stale = fids
            .iter()
            .take_while(|&&fid| self.nat_fit(fid, ts, provisional) == Fit::Never)
            .count();
        fids.drain(..stale);
        let mut found = NatMatch::None;
        if fids.len() > MAX_NAT_CANDIDATES {
            // Flows leave the list as their SNATed copy is seen, microseconds after they
            // open: this many waiting means those copies were lost (a full ring). Any match
            // would be a guess.
            found = NatMatch::Ambiguous;
        } else {
            for &fid in fids.iter().rev() {
                if self.nat_fit(fid, ts, provisional) != Fit::Now {
                    continue;
                }
                if let NatMatch::One(_) = found {
                    found = NatMatch::Ambiguous;
                    break;
                }
                found = NatMatch::One(fid);
            }
        }
        if !fids.is_empty()
            && let Some(m) = self.by_dst.get_mut(list)
        {
            m.insert(key, fids);
        }
        found
    }

    /// Whether listed flow `fid` can be the other half of a packet at `ts`.
    fn nat_fit(&self, fid: u64, ts: u64, provisional: bool) -> Fit {
        let Some(f) = self.flows.get(&fid) else {
            return Fit::Never;
        };
        let Some(a) = f.latest_attempt().and_then(|i| f.attempts.get(i)) else {
            return Fit::Never;
        };
        if f.provisional != provisional {
            return Fit::Never;
        }
        let (pod_ts, exit_ts) = if provisional {
            (ts, a.start_ts)
        } else {
            (a.start_ts, ts)
        };
        let exit_too_late = exit_ts > pod_ts.saturating_add(MAX_NAT_DELAY_NS);
        // One packet crosses the pod veth and then the exit on one CPU, and both programs read
        // the same monotonic clock: an exit stamped before the pod sighting is another
        // packet's, whatever order the records arrive in (when the pod sighting of that other
        // packet was lost, joining them would credit its answer to the wrong connection).
        let exit_too_early = exit_ts < pod_ts;
        // The listed flow's own time is fixed and the packets' grows: a mismatch in the
        // direction time moves is final.
        if (!provisional && exit_too_late) || (provisional && exit_too_early) {
            return Fit::Never;
        }
        if exit_too_late || exit_too_early {
            return Fit::NotNow;
        }
        if !provisional
            && a.sightings.iter().any(|s| {
                (s.is_request_packet() && s.hook == Hook::Egress && is_exit(s.iface.kind))
                    || (s.hook == Hook::Drop && s.dir == Direction::Request)
            })
        {
            return Fit::Never;
        }
        Fit::Now
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

/// How a listed flow fits a packet's time.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fit {
    /// A candidate.
    Now,
    /// Not for this packet; maybe for a later one.
    NotNow,
    /// Not for this packet nor any later one: the entry can go.
    Never,
}
