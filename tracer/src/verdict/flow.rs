//! State kept per flow while it is open.
//!
//! Memory, measured on x86_64 (`state_sizes_match_the_documented_estimates` keeps it honest):
//! a [`Sighting`] is 120 bytes (two `SocketAddr`s, an interned `Arc<Iface>`, plus a small boxed
//! detail for answers/drops/ICMP), an [`Attempt`] 96 bytes plus its sightings, a [`Flow`] 280
//! bytes plus its attempts, qname and index keys (48 bytes each, held twice: in the flow and,
//! with hash-map overhead, ~70 bytes in the correlator's index).
//!
//! * Typical DNS flow (one attempt, 4 sightings, ~30-byte qname, 3 keys): **~1.3 KiB**;
//!   typical egress flow (4 sightings, 3 keys): ~1.2 KiB. The default table of 65,536 flows
//!   is then ~85 MiB when full.
//! * Worst case (a client retrying as fast as the lifetime cap allows): [`MAX_ATTEMPTS`] × 96 +
//!   [`MAX_DETAILED_ATTEMPTS`] × ([`MAX_SIGHTINGS_PER_ATTEMPT`] + [`DECISIVE_EXTRA`]) × 120 +
//!   ~20 keys × 120 + 280 ≈ **8.6 KiB** per flow, ~560 MiB for a full default table.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::decode::event::{
    DropInfo, Hook, IcmpKind, Iface, IfaceKind, PacketEvent, QType, Rcode, TcpFlags,
};

use super::model::{ClientSide, Direction, FlowKind, Transport, VerdictKind};

/// Attempts (first query + retries + TCP fallback) tracked per flow; later retries are only
/// counted (their packets are not matched).
pub const MAX_ATTEMPTS: usize = 8;
/// Attempts that keep their sightings; older ones (except the first) whose outcome is final
/// are folded into a one-line summary when a newer one arrives (attempts still waiting keep
/// theirs, so at most [`MAX_ATTEMPTS`] do).
pub const MAX_DETAILED_ATTEMPTS: usize = 4;
/// Sightings kept per attempt; more are counted in `path_omitted`.
pub const MAX_SIGHTINGS_PER_ATTEMPT: usize = 8;
/// Extra slots per attempt for decisive sightings (reply, drop, ICMP error, SYN/RST).
pub const DECISIVE_EXTRA: usize = 4;

/// Interfaces through which a packet leaves the node toward the VPC: uplink, branch ENI, trunk.
pub fn is_exit(kind: IfaceKind) -> bool {
    matches!(
        kind,
        IfaceKind::Uplink | IfaceKind::BranchEni | IfaceKind::Trunk
    )
}

/// The same packet seen twice at one point within this many ns is a duplicate (e.g. a program
/// attached twice), not a retry: resolvers and TCP retransmit after hundreds of ms at least.
pub const DUPLICATE_SLACK_NS: u64 = 1_000_000;

/// What a sighting carried besides its tuple.
#[derive(Clone, Debug, PartialEq)]
pub enum Detail {
    /// Nothing more (a query, a SYN, a UDP packet).
    None,
    /// A DNS response.
    Answer {
        /// Response code.
        rcode: Option<Rcode>,
        /// Answer records.
        answers: u16,
        /// TC bit.
        truncated: bool,
    },
    /// An ICMP error quoting the request (the tuple is the quoted packet's).
    Icmp(IcmpKind),
    /// A kernel drop.
    Drop(Box<DropInfo>),
}

/// One observation of a packet of the flow.
#[derive(Clone, Debug)]
pub struct Sighting {
    /// Monotonic ns.
    pub ts: u64,
    /// Arrival order (tie-break for equal timestamps).
    pub order: u64,
    /// Hook.
    pub hook: Hook,
    /// Interface (interned).
    pub iface: Arc<Iface>,
    /// Direction of travel: for drops, of the dropped packet; for ICMP errors, `Response`.
    pub dir: Direction,
    /// `src`/`dst` are those of a quoted packet (ICMP error), oriented like the request.
    pub quoted: bool,
    /// Source as seen there.
    pub src: SocketAddr,
    /// Destination as seen there.
    pub dst: SocketAddr,
    /// TCP flags (none for UDP).
    pub flags: TcpFlags,
    /// 802.1Q tag of the frame.
    pub vlan: Option<u16>,
    /// Extra facts.
    pub detail: Detail,
}

impl Sighting {
    /// The tuple is oriented client → server.
    pub fn request_oriented(&self) -> bool {
        self.quoted || self.dir == Direction::Request
    }

    /// A packet sighting (not a drop) travelling client → server.
    pub fn is_request_packet(&self) -> bool {
        self.hook != Hook::Drop && self.dir == Direction::Request
    }

    /// Same observation point and direction (for telling retransmissions from later hops).
    pub fn same_hop(&self, other: &Sighting) -> bool {
        self.hook == other.hook
            && self.iface.ifindex == other.iface.ifindex
            && self.dir == other.dir
            && self.quoted == other.quoted
            // A TCP connection's SYN and its data segments pass the same point.
            && self.flags.has(TcpFlags::SYN) == other.flags.has(TcpFlags::SYN)
    }

    /// The same event delivered twice (or the same packet reported twice at one point).
    pub fn duplicate_of(&self, other: &Sighting) -> bool {
        self.ts.abs_diff(other.ts) <= DUPLICATE_SLACK_NS
            && self.same_hop(other)
            && self.src == other.src
            && self.dst == other.dst
            && self.flags == other.flags
            && std::mem::discriminant(&self.detail) == std::mem::discriminant(&other.detail)
    }

    /// The interface name, or `None` when the event had no device.
    pub fn iface_name(&self) -> Option<String> {
        if self.iface.ifindex == 0 || self.iface.name.is_empty() || self.iface.name == "-" {
            None
        } else {
            Some(self.iface.name.clone())
        }
    }

    /// Its kind, or `None` when the event had no device.
    pub fn iface_kind(&self) -> Option<IfaceKind> {
        self.iface_name().map(|_| self.iface.kind)
    }

    /// An ICMP error that rejects the request, or a TCP RST coming back.
    pub fn is_rejection(&self) -> bool {
        match &self.detail {
            Detail::Icmp(k) => k.rejects(),
            Detail::Drop(_) => false,
            _ => self.dir == Direction::Response && self.flags.has(TcpFlags::RST),
        }
    }
}

/// Keys under which a flow can be found.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// A DNS message of a client socket.
    DnsId {
        t: Transport,
        client: IpAddr,
        port: u16,
        id: u16,
    },
    /// A question of a client toward a destination (retry linking).
    DnsRetry {
        client: IpAddr,
        service: IpAddr,
        q: u64,
    },
    /// A client that got a truncated answer from a destination (TCP fallback linking).
    DnsFallback { client: IpAddr, service: IpAddr },
    /// An egress 5-tuple, pre-SNAT.
    Egress {
        t: Transport,
        client: IpAddr,
        cport: u16,
        server: IpAddr,
        sport: u16,
    },
    /// An egress tuple without the client address (survives SNAT with preserved port).
    EgressSnat {
        t: Transport,
        cport: u16,
        server: IpAddr,
        sport: u16,
    },
}

impl Key {
    /// The egress tuple of `ev` as the client sent it ([`Key::Egress`]); `reply` reads `ev` as
    /// a packet of the server (addresses and ports swapped).
    pub fn egress(t: Transport, ev: &PacketEvent, reply: bool) -> Self {
        let ((client, cport), (server, sport)) = ends(ev, reply);
        Key::Egress {
            t,
            client,
            cport,
            server,
            sport,
        }
    }

    /// The egress tuple of `ev` without the client address ([`Key::EgressSnat`]); `reply` as in
    /// [`Key::egress`].
    pub fn egress_snat(t: Transport, ev: &PacketEvent, reply: bool) -> Self {
        let ((_, cport), (server, sport)) = ends(ev, reply);
        Key::EgressSnat {
            t,
            cport,
            server,
            sport,
        }
    }
}

/// (client, server) ends of `ev`: source first unless `ev` is a reply.
fn ends(ev: &PacketEvent, reply: bool) -> ((IpAddr, u16), (IpAddr, u16)) {
    let (src, dst) = ((ev.src, ev.sport), (ev.dst, ev.dport));
    if reply { (dst, src) } else { (src, dst) }
}

/// Why an attempt exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptKind {
    /// The first query / SYN.
    First,
    /// A client retry (same question, same or new id/port) or SYN retransmission.
    Retry,
    /// A TCP query after a truncated UDP answer.
    Fallback,
}

/// One packet the client sent for the flow (and what became of it).
#[derive(Clone, Debug)]
pub struct Attempt {
    /// Transport.
    pub proto: Transport,
    /// Client port (pre-SNAT).
    pub port: u16,
    /// DNS id (None: egress, or a TCP DNS connection before its first message).
    pub id: Option<u16>,
    /// Earliest sighting.
    pub start_ts: u64,
    /// Why it exists.
    pub kind: AttemptKind,
    /// Its sightings (arrival order).
    pub sightings: Vec<Sighting>,
    /// Sightings not kept.
    pub omitted: u32,
    /// Set when the sightings were discarded: outcome and a short description.
    pub folded: Option<(VerdictKind, String)>,
    /// Final reply/rejection delivered to the client at this ts.
    pub delivered: Option<u64>,
    /// A truncated UDP answer was delivered.
    pub truncated_delivered: bool,
}

impl Attempt {
    /// A new attempt starting with `s` (not yet pushed).
    pub fn new(kind: AttemptKind, proto: Transport, port: u16, id: Option<u16>, ts: u64) -> Self {
        Attempt {
            proto,
            port,
            id,
            start_ts: ts,
            kind,
            sightings: Vec::new(),
            omitted: 0,
            folded: None,
            delivered: None,
            truncated_delivered: false,
        }
    }

    /// Keeps `s` (bounded).
    pub fn push(&mut self, s: Sighting) {
        if s.is_request_packet() || s.hook == Hook::Drop && s.dir == Direction::Request {
            self.start_ts = self.start_ts.min(s.ts);
        }
        // Decisive sightings (a reply, a drop, an ICMP error, SYN/RST) get a few extra slots so
        // the outcome is never lost to the cap.
        let decisive = s.hook == Hook::Drop || s.detail != Detail::None || s.flags.is_control();
        let cap = if decisive {
            MAX_SIGHTINGS_PER_ATTEMPT + DECISIVE_EXTRA
        } else {
            MAX_SIGHTINGS_PER_ATTEMPT
        };
        if self.folded.is_some() || self.sightings.len() >= cap {
            self.omitted = self.omitted.saturating_add(1);
        } else {
            self.sightings.push(s);
        }
    }

    /// Whether it already has a sighting at `s`'s hop (folded attempts claim every hop).
    pub fn has_hop(&self, s: &Sighting) -> bool {
        self.folded.is_some() || self.sightings.iter().any(|x| x.same_hop(s))
    }
}

/// An open flow.
#[derive(Clone, Debug)]
pub struct Flow {
    /// DNS or egress.
    pub kind: FlowKind,
    /// Client address (pre-SNAT).
    pub client_ip: IpAddr,
    /// Question name (DNS).
    pub qname: Option<Box<str>>,
    /// Question type (DNS).
    pub qtype: Option<QType>,
    /// Attempts, in arrival order.
    pub attempts: Vec<Attempt>,
    /// Retries beyond [`MAX_ATTEMPTS`].
    pub extra_retries: u32,
    /// Earliest sighting.
    pub first_ts: u64,
    /// Latest sighting.
    pub last_ts: u64,
    /// End of the window (first sighting + window, extended by retries).
    pub deadline: u64,
    /// A reply whose delivery cannot be observed (or a rejection not yet delivered) was seen:
    /// decide at this ts unless something else happens.
    pub settle_at: Option<u64>,
    /// The flow got its final reply (delivered) at this ts.
    pub complete_at: Option<u64>,
    /// A negative verdict is being held until this ts (loss notices may still come).
    pub hold_until: Option<u64>,
    /// When the flow is next due for a decision.
    pub due: u64,
    /// A truncated UDP answer was delivered: waiting for the TCP retry.
    pub awaiting_fallback: bool,
    /// Why the evidence is incomplete (loss overlapped the flow).
    pub loss: Option<String>,
    /// Egress flow seen only at an uplink so far (not attributed to a pod).
    pub provisional: bool,
    /// Request destinations seen (the Service IP and the DNAT targets).
    pub dsts: Vec<IpAddr>,
    /// Earliest request sighting: ts, hook and interface kind (tells where the client is).
    pub first_req: Option<(u64, Hook, IfaceKind, Arc<Iface>)>,
    /// Index keys pointing at this flow (removed when it closes).
    pub keys: Vec<Key>,
    /// Egress: (transport, destination, port) it is indexed under for NAT-tolerant joins.
    pub egress_dst: Option<(Transport, IpAddr, u16)>,
}

impl Flow {
    /// Where the client is, from the first request sighting.
    pub fn side(&self) -> ClientSide {
        if self.kind == FlowKind::Egress && !self.provisional {
            return ClientSide::Pod;
        }
        match &self.first_req {
            Some((_, Hook::Ingress, IfaceKind::PodVeth, _)) => ClientSide::Pod,
            Some((
                _,
                Hook::Ingress,
                IfaceKind::Uplink | IfaceKind::BranchEni | IfaceKind::Trunk,
                _,
            )) => ClientSide::Remote,
            Some(_) => ClientSide::Host,
            // Never seen passing (another tool's tc program ran first and dropped it): a drop
            // at an interface's ingress hook still says where the request came in.
            None => self
                .attempts
                .iter()
                .flat_map(|a| &a.sightings)
                .filter(|s| s.hook == Hook::Drop && s.dir == Direction::Request)
                .min_by_key(|s| (s.ts, s.order))
                .and_then(|s| match (&s.detail, s.iface.kind) {
                    (Detail::Drop(d), IfaceKind::PodVeth) if d.reason == "TC_INGRESS" => {
                        Some(ClientSide::Pod)
                    }
                    (
                        Detail::Drop(d),
                        IfaceKind::Uplink | IfaceKind::BranchEni | IfaceKind::Trunk,
                    ) if d.reason == "TC_INGRESS" => Some(ClientSide::Remote),
                    _ => None,
                })
                .unwrap_or(ClientSide::Host),
        }
    }

    /// Whether `s` is a reply/rejection reaching the client (its last point on this node).
    pub fn is_delivery(&self, s: &Sighting) -> bool {
        if s.dir != Direction::Response || s.hook != Hook::Egress {
            return false;
        }
        match s.iface.kind {
            IfaceKind::PodVeth => self.side() != ClientSide::Remote,
            IfaceKind::Uplink | IfaceKind::BranchEni | IfaceKind::Trunk => {
                self.side() == ClientSide::Remote
            }
            _ => false,
        }
    }

    /// Whether `s` is the final reply of `proto` for this kind of flow (not a SYN-ACK of a DNS
    /// TCP connection, not a truncated UDP answer).
    pub fn is_reply(&self, s: &Sighting) -> bool {
        if s.dir != Direction::Response || s.hook == Hook::Drop || s.quoted {
            return false;
        }
        match self.kind {
            FlowKind::Dns => matches!(s.detail, Detail::Answer { .. }),
            FlowKind::Egress => s.flags.0 == 0 || s.flags.is_synack(),
        }
    }

    /// All sightings, sorted by time.
    pub fn sorted_sightings(&self) -> Vec<(usize, &Sighting)> {
        let mut all: Vec<(usize, &Sighting)> = self
            .attempts
            .iter()
            .enumerate()
            .flat_map(|(i, a)| a.sightings.iter().map(move |s| (i, s)))
            .collect();
        all.sort_by_key(|(_, s)| (s.ts, s.order));
        all
    }

    /// Index of the attempt with the latest start.
    pub fn latest_attempt(&self) -> Option<usize> {
        self.attempts
            .iter()
            .enumerate()
            .max_by_key(|(i, a)| (a.start_ts, *i))
            .map(|(i, _)| i)
    }
}
