//! The parts of a verdict read off the sightings: the stage a sighting stands for, the
//! endpoints before and after DNAT, the flow key, and the annotated [`PathEntry`] list.

use std::net::SocketAddr;

use crate::decode::event::{Hook, IfaceKind, TcpFlags};

use super::super::flow::{Attempt, AttemptKind, Detail, Flow, Sighting};
use super::super::model::{FlowKind, NotePart, PathEntry, PathNote, Stage, Transport};
use super::outcome::sorted;

/// The stage of the path a sighting stands for (drops: from the reason and location).
pub(super) fn stage_of(s: &Sighting) -> Stage {
    if s.hook == Hook::Drop {
        let (reason, loc) = match &s.detail {
            Detail::Drop(d) => (d.reason.to_ascii_uppercase(), d.location.as_str()),
            _ => (String::new(), ""),
        };
        let request = s.dir == super::super::model::Direction::Request;
        return if reason.contains("NETFILTER")
            || ["nft_", "ipt_", "ip6t_", "nf_", "ebt_"]
                .iter()
                .any(|p| loc.starts_with(p))
        {
            Stage::Netfilter
        } else if [
            "RPFILTER",
            "NOROUTE",
            "INADDRERRORS",
            "ADDRERRORS",
            "MARTIAN",
        ]
        .iter()
        .any(|p| reason.contains(p))
        {
            Stage::Routing
        } else if reason.contains("SOCKET") || reason.contains("RCVBUFF") {
            if request {
                Stage::ServerSocket
            } else {
                Stage::ClientSocket
            }
        } else if crate::decode::is_other_netns_device(&s.iface.name) {
            if request {
                Stage::ServerPod
            } else {
                Stage::ClientPod
            }
        } else {
            Stage::Stack
        };
    }
    match s.iface.kind {
        IfaceKind::PodVeth => {
            let client_side = match s.dir {
                super::super::model::Direction::Request => s.hook == Hook::Ingress,
                super::super::model::Direction::Response => s.hook == Hook::Egress,
            };
            if client_side {
                Stage::ClientVeth
            } else {
                Stage::ServerVeth
            }
        }
        IfaceKind::Uplink => Stage::Uplink,
        IfaceKind::BranchEni => Stage::BranchEni,
        IfaceKind::Trunk => Stage::Trunk,
        IfaceKind::Loopback => Stage::Loopback,
        IfaceKind::Other => Stage::Other,
    }
}

/// Original destination (as the client addressed it) and post-DNAT destination of an attempt.
pub(super) fn endpoints(a: &Attempt) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let ss = sorted(a);
    let orig = ss
        .iter()
        .find(|s| s.dir == super::super::model::Direction::Request && !s.quoted)
        .or_else(|| ss.iter().find(|s| s.quoted))
        .map(|s| s.dst);
    let post = ss
        .iter()
        .rev()
        .find(|s| {
            s.dir == super::super::model::Direction::Request && !s.quoted && Some(s.dst) != orig
        })
        .map(|s| s.dst)
        .or_else(|| {
            ss.iter()
                .find(|s| {
                    s.dir == super::super::model::Direction::Response
                        && !s.quoted
                        && Some(s.src) != orig
                })
                .map(|s| s.src)
        })
        .or_else(|| {
            ss.iter()
                .find(|s| s.quoted && Some(s.dst) != orig)
                .map(|s| s.dst)
        })
        .or(orig);
    (orig, post)
}

/// The flow's key as reported (`dns:udp:client>server#id`, `tcp:client>server`).
pub(super) fn flow_key(
    kind: FlowKind,
    t: Transport,
    client: SocketAddr,
    server: SocketAddr,
    id: Option<u16>,
) -> String {
    match (kind, id) {
        (FlowKind::Dns, Some(id)) => format!("dns:{}:{client}>{server}#{id}", t.as_str()),
        (FlowKind::Dns, None) => format!("dns:{}:{client}>{server}", t.as_str()),
        (FlowKind::Egress, _) => format!("{}:{client}>{server}", t.as_str()),
    }
}

/// The drop reason the kernel gives packets it frees in bulk because their socket is being
/// torn down (`QUEUE_PURGE`: a closed TCP socket's queues), not because the network lost them.
pub(super) fn is_teardown(reason: &str) -> bool {
    reason.contains("QUEUE_PURGE")
}

/// Nanoseconds as milliseconds, rounded to the microsecond.
pub(super) fn ms(ns: u64) -> f64 {
    // Rounded to µs: enough for humans, stable in JSON.
    (ns as f64 / 1_000.0).round() / 1_000.0
}

/// The flow's sightings in time order, each with the translations, flags and details it shows.
pub(super) fn path(flow: &Flow, start: u64) -> Vec<PathEntry> {
    use super::super::model::Direction::{Request, Response};
    let all = flow.sorted_sightings();
    let mut out = Vec::with_capacity(all.len());
    for (k, (ai, s)) in all.iter().enumerate() {
        let before = all.get(..k).unwrap_or_default();
        let mut parts: Vec<NotePart> = Vec::new();
        if *ai > 0 && !before.iter().any(|(j, _)| j == ai) {
            match flow.attempts.get(*ai).map(|a| a.kind) {
                Some(AttemptKind::Fallback) => parts.push(NotePart::TcpFallback),
                _ => parts.push(NotePart::Retry(*ai)),
            }
        }
        // Address translations since the previous sighting of the same attempt and orientation.
        // Not at an ingress: that is where a packet enters the node, so the sighting before it
        // is of an earlier packet (a TCP handshake's SYN before the query, a retransmission
        // after the first SYN left), and its addresses say nothing about this packet's NAT.
        let group = |x: &Sighting| (x.quoted, x.dir);
        if let Some((_, p)) = before
            .iter()
            .rev()
            .find(|(j, x)| j == ai && group(x) == group(s))
            .filter(|_| s.hook != Hook::Ingress)
        {
            let (dst, src) = match (s.quoted, s.dir) {
                (false, Request) => ("dnat", "snat"),
                (false, Response) => ("un-snat", "un-dnat"),
                (true, _) => ("quoted dst un-dnat", "quoted src un-snat"),
            };
            let dst_change = (p.dst != s.dst).then_some(NotePart::Nat(dst, p.dst, s.dst));
            let src_change = (p.src != s.src).then_some(NotePart::Nat(src, p.src, s.src));
            // A response names its source change (the replica's address back to the Service's)
            // first.
            if (s.quoted, s.dir) == (false, Response) {
                parts.extend(src_change.into_iter().chain(dst_change));
            } else {
                parts.extend(dst_change.into_iter().chain(src_change));
            }
        }
        if s.flags.0 & (TcpFlags::SYN | TcpFlags::RST | TcpFlags::FIN) != 0 {
            parts.push(NotePart::Flags(s.flags));
        }
        match &s.detail {
            Detail::None => {}
            Detail::Answer {
                rcode,
                answers,
                truncated,
            } => parts.push(NotePart::Answer {
                rcode: *rcode,
                answers: *answers,
                truncated: *truncated,
            }),
            Detail::Icmp(k) => parts.push(NotePart::Icmp(*k)),
            // A socket's queues freed as it closes (a TCP connection's FIN after the client
            // read its answer) are not where traffic died: said so, not called a drop.
            Detail::Drop(d) if is_teardown(&d.reason) => parts.push(NotePart::Text(format!(
                "freed as the socket closed ({} at {}), not a network drop",
                d.reason, d.location
            ))),
            Detail::Drop(d) => parts.push(NotePart::Text(format!(
                "drop {} at {}",
                d.reason, d.location
            ))),
        }
        if let Some(v) = s.vlan {
            parts.push(NotePart::Vlan(v));
        }
        out.push(PathEntry {
            t_ms: ms(s.ts.saturating_sub(start)),
            hook: s.hook,
            interface: s.iface_name(),
            interface_kind: s.iface_kind(),
            direction: s.dir,
            src: s.src,
            dst: s.dst,
            attempt: u32::try_from(*ai).unwrap_or(u32::MAX),
            note: (!parts.is_empty()).then_some(PathNote(parts)),
        });
    }
    out
}

/// The attempt's last request leaving the node (branch ENI first, else uplink or trunk).
pub(super) fn egress_sighting(a: &Attempt) -> Option<&Sighting> {
    let out = |k: &[IfaceKind]| {
        a.sightings
            .iter()
            .filter(|s| {
                s.is_request_packet() && s.hook == Hook::Egress && k.contains(&s.iface.kind)
            })
            .max_by_key(|s| (s.ts, s.order))
    };
    out(&[IfaceKind::BranchEni]).or_else(|| out(&[IfaceKind::Uplink, IfaceKind::Trunk]))
}
