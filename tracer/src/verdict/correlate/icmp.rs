//! ICMP errors: matched to the flow of the packet they quote.

use crate::decode::event::PacketEvent;

use super::super::flow::Key;
use super::super::model::{Direction, Transport};
use super::{Correlator, Found, Mode, Routed, is_dns};

impl Correlator {
    pub(super) fn route_icmp(&mut self, ev: &PacketEvent, _mode: Mode) -> Routed {
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
            let full = Key::egress(t, ev, false);
            let snat = Key::egress_snat(t, ev, false);
            if let Some(&fid) = self.index.get(&full).or_else(|| self.index.get(&snat)) {
                return self.egress_into(fid, ev, Direction::Response, true);
            }
        }
        Routed::Unmatched
    }
}
