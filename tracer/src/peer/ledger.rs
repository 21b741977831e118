//! The facts of queries from other machines that the kernel handed over (drops, queries left
//! unanswered, slow or resent ones), kept so a peer can ask about them after this node's own
//! verdict is out. Healthy deliveries are not here: the kernel's delivery ledger holds them.
//!
//! Bounded twice: entries older than the keep time are let go, and at most `cap` entries are
//! held (the oldest go first). Letting go of one before its keep time moves the horizon: a
//! question about a query from before it gets `beyond_horizon`, never a wrong "never arrived".

use std::collections::{HashMap, VecDeque};

use crate::decode::event::PacketEvent;

use super::answer::{LocalFacts, QueryKey};

/// Bytes one entry takes, about (key, facts with three interface names, index slot).
pub const ENTRY_BYTES: usize = 320;

/// The handed-over facts.
#[derive(Debug)]
pub struct FactsLedger {
    map: HashMap<QueryKey, LocalFacts>,
    order: VecDeque<(u64, QueryKey)>,
    cap: usize,
    keep_ns: u64,
    forgotten_until: Option<u64>,
    /// Entries let go before their keep time (the cap was reached).
    pub evicted: u64,
}

impl FactsLedger {
    /// At most `cap` entries, each kept `keep_ns` after its first sighting.
    pub fn new(cap: usize, keep_ns: u64) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
            keep_ns,
            forgotten_until: None,
            evicted: 0,
        }
    }

    /// Notes the sightings of a query the kernel handed over (ignored unless it came from
    /// another machine).
    pub fn note(&mut self, events: &[PacketEvent], now: u64) {
        let Some((key, facts)) = LocalFacts::from_events(events) else {
            return;
        };
        self.expire(now);
        let first = facts.first_ns;
        match self.map.get_mut(&key) {
            // A later record of the same query (e.g. handed over again when swept).
            Some(old) if old.first_ns == first => {
                for ev in events {
                    old.observe(ev);
                }
                return;
            }
            Some(old) => *old = facts,
            None => {
                if self.map.len() >= self.cap {
                    self.evict_oldest();
                }
                self.map.insert(key, facts);
            }
        }
        self.order.push_back((first, key));
    }

    /// A single packet of a query handed over earlier (the kernel streams those): added to
    /// its facts if it is one of them.
    pub fn observe(&mut self, ev: &PacketEvent) {
        let Some(dns) = ev.dns.as_ref() else { return };
        let key = if dns.response || ev.icmp.is_some() {
            QueryKey {
                client: ev.dst,
                port: ev.dport,
                id: dns.id,
            }
        } else {
            QueryKey {
                client: ev.src,
                port: ev.sport,
                id: dns.id,
            }
        };
        if let Some(f) = self.map.get_mut(&key) {
            f.observe(ev);
        }
    }

    /// The facts of `key`, if held.
    pub fn get(&self, key: &QueryKey) -> Option<&LocalFacts> {
        self.map.get(key)
    }

    /// Queries that arrived before this may have been let go early (`None`: none was).
    pub fn forgotten_until(&self) -> Option<u64> {
        self.forgotten_until
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    fn evict_oldest(&mut self) {
        while let Some((t, key)) = self.order.pop_front() {
            // Stale order entries (replaced facts) are skipped.
            if self.map.get(&key).is_some_and(|f| f.first_ns == t) {
                self.map.remove(&key);
                self.evicted += 1;
                self.forgotten_until = Some(self.forgotten_until.map_or(t, |f| f.max(t)));
                return;
            }
        }
    }

    /// Lets go of entries past their keep time.
    pub fn expire(&mut self, now: u64) {
        let cutoff = now.saturating_sub(self.keep_ns);
        while let Some(&(t, key)) = self.order.front() {
            if t > cutoff {
                break;
            }
            self.order.pop_front();
            if self.map.get(&key).is_some_and(|f| f.first_ns == t) {
                self.map.remove(&key);
            }
        }
        // The order queue may hold stale entries of replaced facts: keep it bounded too.
        if self.order.len() > self.cap.saturating_mul(2) {
            let map = &self.map;
            self.order
                .retain(|(t, k)| map.get(k).is_some_and(|f| f.first_ns == *t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        capture::iface::{Iface, IfaceKind},
        decode::event::{DnsInfo, Hook, Proto},
    };

    const S: u64 = 1_000_000_000;

    fn arrival(t: u64, port: u16) -> PacketEvent {
        PacketEvent {
            ts_ns: t,
            hook: Hook::Ingress,
            iface: Iface {
                ifindex: 2,
                name: "eth0".into(),
                kind: IfaceKind::Uplink,
                vlan: None,
            },
            proto: Proto::Udp,
            src: "198.18.1.21".parse().expect("ip"),
            sport: port,
            dst: "198.18.2.30".parse().expect("ip"),
            dport: 53,
            tcp_flags: None,
            icmp: None,
            vlan: None,
            len: 0,
            dns: Some(DnsInfo {
                id: 9,
                response: false,
                rcode: None,
                truncated: false,
                qname: None,
                qtype: None,
                answers: 0,
            }),
            drop: None,
        }
    }

    fn key(port: u16) -> QueryKey {
        QueryKey {
            client: "198.18.1.21".parse().expect("ip"),
            port,
            id: 9,
        }
    }

    #[test]
    fn bounded_by_count_and_age_and_says_what_it_forgot() {
        let mut l = FactsLedger::new(2, 10 * S);
        l.note(&[arrival(S, 1)], S);
        l.note(&[arrival(2 * S, 2)], 2 * S);
        assert_eq!(l.forgotten_until(), None);
        l.note(&[arrival(3 * S, 3)], 3 * S);
        assert_eq!(l.len(), 2);
        assert!(l.get(&key(1)).is_none());
        assert_eq!(
            l.forgotten_until(),
            Some(S),
            "the evicted entry moves the horizon"
        );
        assert_eq!(l.evicted, 1);
        // Past the keep time: gone without moving the horizon.
        l.expire(12 * S + 1);
        assert!(l.get(&key(2)).is_none());
        assert!(l.get(&key(3)).is_some());
        assert_eq!(l.forgotten_until(), Some(S));
    }

    #[test]
    fn later_packets_of_a_held_query_are_added() {
        let mut l = FactsLedger::new(8, 10 * S);
        l.note(&[arrival(S, 1)], S);
        let mut out = arrival(S + 5, 1);
        out.hook = Hook::Egress;
        out.iface = Iface {
            ifindex: 5,
            name: "eni0123456789a".into(),
            kind: IfaceKind::PodVeth,
            vlan: None,
        };
        l.observe(&out);
        let f = l.get(&key(1)).expect("held");
        assert_eq!(
            f.to_replica.as_ref().map(|s| s.interface.as_str()),
            Some("eni0123456789a")
        );
        // A packet of a query not held changes nothing.
        l.observe(&arrival(S, 77));
        assert_eq!(l.len(), 1);
    }
}
