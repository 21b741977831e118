//! The answering side's judgement: what this node saw of a query another node asks about, from
//! three sources — the facts of queries the kernel handed over ([`super::ledger`]), the entry
//! still open in the kernel's DNS table, and the kernel's delivery ledger (answers that left) —
//! and when nothing was seen, whether "never arrived" is sure: the tracer ran, lost nothing
//! and still remembers that time. Otherwise `unknown`, with the reason. Pure: the daemon
//! gathers the sources, this decides.

use std::net::IpAddr;

use crate::{
    capture::iface::IfaceKind,
    decode::event::{Hook, PacketEvent},
    verdict::{Direction, PeerDrop, PeerFinding, PeerReason},
};

use super::proto::{Answer, Ask, Seen};

/// Clock difference between nodes tolerated when matching times (EC2 nodes keep time to a
/// millisecond with the Amazon Time Sync Service; a second leaves room).
pub const SKEW_NS: u64 = 1_000_000_000;

/// The key of a query as every node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QueryKey {
    /// Client address.
    pub client: IpAddr,
    /// Client port.
    pub port: u16,
    /// DNS id.
    pub id: u16,
}

impl QueryKey {
    /// The kernel's form of the key.
    pub fn to_dns_key(self) -> tracer_common::DnsKey {
        let ip_version = if self.client.is_ipv4() { 4 } else { 6 };
        tracer_common::DnsKey {
            client: crate::decode::wire_addr(self.client),
            port: self.port,
            id: self.id,
            ip_version,
            _pad: [0; 3],
        }
    }
}

impl From<&Ask> for QueryKey {
    fn from(a: &Ask) -> Self {
        Self {
            client: a.client,
            port: a.port,
            id: a.id,
        }
    }
}

/// A sighting on this node: interface name and monotonic time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    /// Interface name.
    pub interface: String,
    /// `CLOCK_MONOTONIC` ns.
    pub mono_ns: u64,
}

/// What this node saw of a query from another machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalFacts {
    /// First sighting (its arrival).
    pub first_ns: u64,
    /// Arrival at an uplink, trunk or branch ENI.
    pub arrived: Option<Sighting>,
    /// Leaving toward the replica (a pod veth's egress).
    pub to_replica: Option<Sighting>,
    /// The reply leaving through an uplink, trunk or branch ENI.
    pub reply_left: Option<Sighting>,
    /// A drop of the query or the reply.
    pub drop: Option<PeerDrop>,
}

fn is_way_out(kind: IfaceKind) -> bool {
    matches!(
        kind,
        IfaceKind::Uplink | IfaceKind::BranchEni | IfaceKind::Trunk
    )
}

impl LocalFacts {
    /// The key and facts of a query from the sightings of one DNS table entry, when it came
    /// from another machine (its first sighting is an arrival at an uplink, trunk or branch
    /// ENI); `None` otherwise.
    pub fn from_events(events: &[PacketEvent]) -> Option<(QueryKey, LocalFacts)> {
        let first = events.first()?;
        let dns = first.dns.as_ref()?;
        if first.hook != Hook::Ingress || dns.response || !is_way_out(first.iface.kind) {
            return None;
        }
        let key = QueryKey {
            client: first.src,
            port: first.sport,
            id: dns.id,
        };
        let mut facts = LocalFacts {
            first_ns: first.ts_ns,
            arrived: None,
            to_replica: None,
            reply_left: None,
            drop: None,
        };
        for ev in events {
            facts.observe(ev);
        }
        Some((key, facts))
    }

    /// Adds one sighting of the query or its reply.
    pub fn observe(&mut self, ev: &PacketEvent) {
        let response = ev.dns.as_ref().is_some_and(|d| d.response) || ev.icmp.is_some();
        let seen = || Sighting {
            interface: ev.iface.name.clone(),
            mono_ns: ev.ts_ns,
        };
        match ev.hook {
            Hook::Ingress if !response && is_way_out(ev.iface.kind) => {
                self.arrived.get_or_insert_with(seen);
            }
            Hook::Egress if !response && ev.iface.kind == IfaceKind::PodVeth => {
                self.to_replica.get_or_insert_with(seen);
            }
            Hook::Egress if response && ev.icmp.is_none() && is_way_out(ev.iface.kind) => {
                self.reply_left.get_or_insert_with(seen);
            }
            Hook::Drop => {
                if let Some(d) = &ev.drop {
                    self.drop.get_or_insert_with(|| PeerDrop {
                        reason: d.reason.clone(),
                        interface: (ev.iface.ifindex != 0).then(|| ev.iface.name.clone()),
                        direction: if response {
                            Direction::Response
                        } else {
                            Direction::Request
                        },
                    });
                }
            }
            _ => {}
        }
    }

    /// The finding these facts support (never `unknown`).
    pub fn finding(&self) -> PeerFinding {
        if self.reply_left.is_some() {
            PeerFinding::ReplyLost
        } else if self.to_replica.is_some()
            || self
                .drop
                .as_ref()
                .is_some_and(|d| d.direction == Direction::Response)
        {
            PeerFinding::NoReply
        } else {
            PeerFinding::NotDelivered
        }
    }
}

/// A delivery the kernel's ledger holds: interfaces by name, times monotonic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// Arrival of the query.
    pub arrived: Sighting,
    /// The interface toward the replica (its veth), when recorded (the ledger keeps no time
    /// for it).
    pub to_replica: Option<String>,
    /// The reply leaving.
    pub reply_left: Sighting,
}

/// Everything the daemon gathered to answer one ask.
pub struct Evidence<'a> {
    /// Facts of queries handed over by the kernel (and their later packets).
    pub handed_over: Option<&'a LocalFacts>,
    /// The entry still in the kernel's DNS table, if any.
    pub open: Option<&'a LocalFacts>,
    /// The kernel ledger's record of the delivery, if any.
    pub delivered: Option<&'a Delivered>,
}

/// This node's state for every ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Horizon {
    /// When the tracer started watching (monotonic ns).
    pub started_ns: u64,
    /// Deliveries that left before this may have been forgotten (ledger come round); `None`:
    /// nothing forgotten. Also `Some(u64::MAX)` when there is no ledger at all.
    pub delivered_from_ns: Option<u64>,
    /// Handed-over facts of queries that arrived before this may have been forgotten.
    pub handed_over_from_ns: Option<u64>,
    /// Wall clock minus monotonic, ns.
    pub wall_offset_ns: i128,
}

impl Horizon {
    /// A monotonic time as Unix ns.
    pub fn unix(&self, mono: u64) -> i64 {
        i64::try_from(i128::from(mono) + self.wall_offset_ns).unwrap_or(i64::MAX)
    }

    /// A Unix time as monotonic ns (0 when before boot).
    pub fn mono(&self, unix_ns: i64) -> u64 {
        u64::try_from(i128::from(unix_ns) - self.wall_offset_ns).unwrap_or(0)
    }
}

fn seen(s: &Sighting, h: &Horizon) -> Seen {
    Seen {
        interface: s.interface.clone(),
        unix_ns: Some(h.unix(s.mono_ns)),
    }
}

/// Decides the answer to `ask`. `loss_after(t)` says whether this node may have lost events
/// at or after monotonic `t`.
pub fn decide(
    ask: &Ask,
    ev: &Evidence<'_>,
    h: &Horizon,
    loss_after: &dyn Fn(u64) -> Option<String>,
) -> Answer {
    let sent = h.mono(ask.sent_unix_ns);
    let from = sent.saturating_sub(SKEW_NS);
    let until = sent
        .saturating_add(ask.window_ms.saturating_mul(1_000_000))
        .saturating_add(SKEW_NS);
    let in_time = |t: u64| (from..=until).contains(&t);
    // What was seen, most complete first: a handed-over entry may have later packets added.
    let facts = [ev.handed_over, ev.open]
        .into_iter()
        .flatten()
        .find(|f| in_time(f.first_ns));
    if let Some(f) = facts {
        return Answer {
            n: ask.n,
            finding: f.finding(),
            reason: None,
            arrived: f.arrived.as_ref().map(|s| seen(s, h)),
            to_replica: f.to_replica.as_ref().map(|s| seen(s, h)),
            reply_left: f.reply_left.as_ref().map(|s| seen(s, h)),
            drop: f.drop.clone(),
        };
    }
    if let Some(d) = ev.delivered.filter(|d| in_time(d.arrived.mono_ns)) {
        return Answer {
            n: ask.n,
            finding: PeerFinding::ReplyLost,
            reason: None,
            arrived: Some(seen(&d.arrived, h)),
            to_replica: d.to_replica.as_ref().map(|i| Seen {
                interface: i.clone(),
                unix_ns: None,
            }),
            reply_left: Some(seen(&d.reply_left, h)),
            drop: None,
        };
    }
    // Nothing seen: sure only if this node watched, lost nothing and forgot nothing since.
    if from < h.started_ns {
        return Answer::unknown(ask.n, PeerReason::PeerNotRunning);
    }
    let forgot = |horizon: Option<u64>| horizon.is_some_and(|t| t > from);
    if forgot(h.delivered_from_ns) || forgot(h.handed_over_from_ns) {
        return Answer::unknown(ask.n, PeerReason::BeyondHorizon);
    }
    if loss_after(from).is_some() {
        return Answer::unknown(ask.n, PeerReason::PeerLoss);
    }
    Answer {
        n: ask.n,
        finding: PeerFinding::RequestLost,
        reason: None,
        arrived: None,
        to_replica: None,
        reply_left: None,
        drop: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        capture::iface::Iface,
        decode::event::{DnsInfo, DropInfo, Proto},
    };

    const S: u64 = 1_000_000_000;

    fn ask(sent_s: u64) -> Ask {
        Ask {
            n: 1,
            client: "198.18.1.21".parse().expect("ip"),
            port: 40_000,
            id: 7,
            server: "198.18.2.30".parse().expect("ip"),
            sent_unix_ns: i64::try_from(sent_s * S).expect("fits"),
            window_ms: 2000,
        }
    }

    fn horizon() -> Horizon {
        Horizon {
            started_ns: 10 * S,
            delivered_from_ns: None,
            handed_over_from_ns: None,
            wall_offset_ns: 0,
        }
    }

    fn ev(t: u64, hook: Hook, iface: (&str, IfaceKind), response: bool) -> PacketEvent {
        let (c, s): (IpAddr, IpAddr) = (
            "198.18.1.21".parse().expect("ip"),
            "198.18.2.30".parse().expect("ip"),
        );
        let (src, sport, dst, dport) = if response {
            (s, 53, c, 40_000)
        } else {
            (c, 40_000, s, 53)
        };
        PacketEvent {
            ts_ns: t,
            hook,
            iface: Iface {
                ifindex: 3,
                name: iface.0.into(),
                kind: iface.1,
                vlan: None,
            },
            proto: Proto::Udp,
            src,
            sport,
            dst,
            dport,
            tcp_flags: None,
            icmp: None,
            vlan: None,
            len: 0,
            dns: Some(DnsInfo {
                id: 7,
                response,
                rcode: None,
                truncated: false,
                qname: None,
                qtype: None,
                answers: 0,
            }),
            drop: None,
        }
    }

    const ETH0: (&str, IfaceKind) = ("eth0", IfaceKind::Uplink);
    const VETH: (&str, IfaceKind) = ("eni0123456789a", IfaceKind::PodVeth);

    fn no_loss(_: u64) -> Option<String> {
        None
    }

    #[test]
    fn nothing_seen_is_request_lost_only_when_sure() {
        let none = Evidence {
            handed_over: None,
            open: None,
            delivered: None,
        };
        let a = decide(&ask(100), &none, &horizon(), &no_loss);
        assert_eq!((a.finding, a.reason), (PeerFinding::RequestLost, None));
        // Loss on this node after the query was sent: cannot say.
        let a = decide(&ask(100), &none, &horizon(), &|t| {
            (t <= 100 * S).then(|| "ring buffer full".to_owned())
        });
        assert_eq!(a.reason, Some(PeerReason::PeerLoss));
        // The tracer started after the query.
        let mut h = horizon();
        h.started_ns = 100 * S;
        assert_eq!(
            decide(&ask(100), &none, &h, &no_loss).reason,
            Some(PeerReason::PeerNotRunning)
        );
        // The ledger came round past the query's time.
        let mut h = horizon();
        h.delivered_from_ns = Some(100 * S);
        assert_eq!(
            decide(&ask(100), &none, &h, &no_loss).reason,
            Some(PeerReason::BeyondHorizon)
        );
        let mut h = horizon();
        h.handed_over_from_ns = Some(100 * S);
        assert_eq!(
            decide(&ask(100), &none, &h, &no_loss).reason,
            Some(PeerReason::BeyondHorizon)
        );
        // Remembered from long before: sure.
        let mut h = horizon();
        h.delivered_from_ns = Some(50 * S);
        assert_eq!(
            decide(&ask(100), &none, &h, &no_loss).finding,
            PeerFinding::RequestLost
        );
    }

    #[test]
    fn facts_give_the_finding_of_the_hop_where_the_query_ended() {
        let t = 100 * S;
        let arrived = vec![ev(t, Hook::Ingress, ETH0, false)];
        let (key, f) = LocalFacts::from_events(&arrived).expect("remote");
        assert_eq!((key.port, key.id), (40_000, 7));
        assert_eq!(f.finding(), PeerFinding::NotDelivered);

        let mut dropped = arrived.clone();
        let mut d = ev(t + 10, Hook::Drop, ("eth0", IfaceKind::Uplink), false);
        d.drop = Some(DropInfo {
            reason: "NETFILTER_DROP".into(),
            reason_code: 6,
            location: "nf_hook_slow+0x1".into(),
            netns: 1,
        });
        dropped.push(d);
        let (_, f) = LocalFacts::from_events(&dropped).expect("remote");
        assert_eq!(f.finding(), PeerFinding::NotDelivered);
        assert_eq!(
            f.drop.as_ref().map(|d| (d.reason.as_str(), d.direction)),
            Some(("NETFILTER_DROP", Direction::Request))
        );

        let mut silent = arrived.clone();
        silent.push(ev(t + 20, Hook::Egress, VETH, false));
        let (_, f) = LocalFacts::from_events(&silent).expect("remote");
        assert_eq!(f.finding(), PeerFinding::NoReply);

        let mut replied = silent.clone();
        replied.push(ev(t + 900, Hook::Ingress, VETH, true));
        replied.push(ev(t + 950, Hook::Egress, ETH0, true));
        let (_, f) = LocalFacts::from_events(&replied).expect("remote");
        assert_eq!(f.finding(), PeerFinding::ReplyLost);
        let ev = Evidence {
            handed_over: Some(&f),
            open: None,
            delivered: None,
        };
        let a = decide(&ask(100), &ev, &horizon(), &no_loss);
        assert_eq!(a.finding, PeerFinding::ReplyLost);
        assert_eq!(
            a.reply_left.map(|s| (s.interface, s.unix_ns)),
            Some((
                "eth0".to_owned(),
                Some(i64::try_from(t + 950).expect("fits"))
            ))
        );
        assert_eq!(a.to_replica.map(|s| s.interface).as_deref(), Some(VETH.0));
    }

    #[test]
    fn queries_of_this_nodes_pods_are_not_facts_for_peers() {
        let local = vec![ev(5, Hook::Ingress, VETH, false)];
        assert!(LocalFacts::from_events(&local).is_none());
        assert!(LocalFacts::from_events(&[]).is_none());
    }

    #[test]
    fn facts_from_another_time_are_another_query() {
        // The same socket and id, a minute earlier: not this query; nothing else seen.
        let old = vec![ev(40 * S, Hook::Ingress, ETH0, false)];
        let (_, f) = LocalFacts::from_events(&old).expect("remote");
        let e = Evidence {
            handed_over: Some(&f),
            open: None,
            delivered: None,
        };
        assert_eq!(
            decide(&ask(100), &e, &horizon(), &no_loss).finding,
            PeerFinding::RequestLost
        );
    }

    #[test]
    fn a_delivery_in_the_kernel_ledger_is_reply_lost() {
        let d = Delivered {
            arrived: Sighting {
                interface: "eth0".into(),
                mono_ns: 100 * S + 1_000,
            },
            to_replica: None,
            reply_left: Sighting {
                interface: "eth0".into(),
                mono_ns: 100 * S + 900_000,
            },
        };
        let e = Evidence {
            handed_over: None,
            open: None,
            delivered: Some(&d),
        };
        let a = decide(&ask(100), &e, &horizon(), &no_loss);
        assert_eq!(a.finding, PeerFinding::ReplyLost);
        assert!(a.arrived.is_some() && a.reply_left.is_some());
    }
}
