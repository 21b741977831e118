//! DNS queries: finding a query's flow by client socket and id (which DNAT does not change),
//! linking retries and the TCP fallback, opening new queries.

use std::net::IpAddr;

use crate::decode::event::{DnsInfo, Hook, PacketEvent, TcpFlags};

use super::super::flow::{Attempt, AttemptKind, Flow, Key, MAX_ATTEMPTS};
use super::super::model::{Direction, FlowKind, Transport};
use super::{Assign, Correlator, Found, MIN_RETRY_GAP_NS, Mode, Routed, assign, qhash, transport};

impl Correlator {
    pub(super) fn route_dns(&mut self, ev: &PacketEvent, mode: Mode) -> Routed {
        let Some(t) = transport(ev.proto) else {
            return Routed::Done;
        };
        let flags = ev.tcp_flags.unwrap_or_default();
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
            ev.dns.is_some() || (t == Transport::Tcp && flags.is_syn()) || ev.hook == Hook::Drop;
        if !opens {
            self.stats.ignored += 1;
            return Routed::Done;
        }
        self.open_dns(ev, t, cport, id);
        Routed::Done
    }

    /// Finds the DNS flow of a client socket: by id when known (or, for TCP, the connection
    /// whose first message is not seen yet), by port alone otherwise.
    pub(super) fn find_dns(
        &self,
        t: Transport,
        client: IpAddr,
        port: u16,
        id: Option<u16>,
    ) -> Found {
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
    pub(super) fn ambiguous(&mut self, fids: &[u64], ev: &PacketEvent, port: u16) {
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

    pub(super) fn find_retry(
        &self,
        t: Transport,
        client: IpAddr,
        dst: IpAddr,
        dns: Option<&DnsInfo>,
        flags: TcpFlags,
        ts: u64,
    ) -> Option<(u64, AttemptKind)> {
        let qname = dns.and_then(|d| d.qname.as_deref());
        let qtype = dns.and_then(|d| d.qtype);
        // Only while the flow's window is still open (a retry after it is a new query).
        let same_question = |f: &Flow| {
            ts <= f.deadline
                && match qname {
                    Some(q) => f.qname.as_deref() == Some(q) && f.qtype == qtype,
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
            if t == Transport::Tcp && f.awaiting_fallback {
                return Some((fid, AttemptKind::Fallback));
            }
            // A retry follows a timeout: the same question asked again right away, or by a
            // flow that already holds every attempt it can follow, is another query (several
            // threads of an application resolving one name at once), not a retry; linking it
            // would hide its own answer.
            let latest = f
                .attempts
                .iter()
                .map(|a| a.start_ts)
                .max()
                .unwrap_or(f.first_ts);
            if ts >= latest.saturating_add(MIN_RETRY_GAP_NS) && f.attempts.len() < MAX_ATTEMPTS {
                return Some((fid, AttemptKind::Retry));
            }
        }
        if t == Transport::Tcp
            && (dns.is_some() || flags.is_syn())
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

    pub(super) fn dns_into(
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
            && !ev.tcp_flags.unwrap_or_default().is_control()
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
                Transport::Tcp => s.flags.is_syn(),
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
                        flow.qtype = d.qtype;
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

    pub(super) fn open_dns(&mut self, ev: &PacketEvent, t: Transport, port: u16, id: Option<u16>) {
        let s = self.sighting(ev, Direction::Request, false);
        let client = ev.src;
        let (qname, qtype) = match &ev.dns {
            Some(d) if !d.response => (d.qname.as_deref().map(Into::into), d.qtype),
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
}
