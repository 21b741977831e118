//! From a closed flow's sightings to its [`Verdict`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::decode::event::{Hook, IfaceKind};

use super::flow::{Attempt, AttemptKind, Detail, Flow, Sighting};
use super::model::{
    Client, ClientSide, DnsOut, DropOut, EgressInterface, EgressOut, Evidence, FlowKind, HintFacts,
    PathEntry, PodMeta, RejectBy, Rejection, SCHEMA, Server, Stage, Transport, Verdict,
    VerdictKind,
};
use crate::decode::event::TcpFlags;

/// How a flow is being closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closing {
    /// Completed, or its window (plus hold) ended.
    Normal,
    /// Evicted because the table was full.
    Evicted,
    /// The tracer is stopping before the window ended.
    Stopped,
}

/// Key of the recent-outcome memory: the same server reached the same way. The interface
/// matters: UDP answered through eth0 says nothing about UDP through a pod's branch ENI.
pub type RecentKey = (IpAddr, Transport, String);

/// A remembered outcome toward a (server, transport, interface).
#[derive(Clone, Copy, Debug)]
pub struct Recent {
    /// When (flow end).
    pub ts: u64,
    /// Answered (true) or lost beyond the node (false).
    pub ok: bool,
}

/// What the decision needs besides the flow.
pub struct Ctx<'a> {
    /// Node name.
    pub node: &'a str,
    /// Window, ns.
    pub window_ns: u64,
    /// Table limit (for the eviction note).
    pub max_flows: usize,
    /// Recent outcomes per (server, transport, interface the request left by; "" on-node).
    pub recent: &'a HashMap<RecentKey, Recent>,
    /// How long a recent outcome counts, ns.
    pub recent_horizon_ns: u64,
}

/// What became of one attempt.
struct Outcome<'a> {
    kind: VerdictKind,
    /// The sighting that decides it (where the flow ended).
    at: Option<&'a Sighting>,
    /// For `unknown`: why.
    note: Option<String>,
    /// The reply was seen at the node but its delivery could not be observed.
    unobserved: bool,
    /// The answer delivered was a truncated UDP answer.
    truncated: bool,
}

impl<'a> Outcome<'a> {
    fn new(kind: VerdictKind, at: Option<&'a Sighting>) -> Self {
        Outcome {
            kind,
            at,
            note: None,
            unobserved: false,
            truncated: false,
        }
    }
}

fn sorted(a: &Attempt) -> Vec<&Sighting> {
    let mut v: Vec<&Sighting> = a.sightings.iter().collect();
    v.sort_by_key(|s| (s.ts, s.order));
    v
}

fn iface_label(s: &Sighting) -> String {
    s.iface_name().unwrap_or_else(|| "no device".into())
}

fn hook_name(h: Hook) -> &'static str {
    match h {
        Hook::Ingress => "ingress",
        Hook::Egress => "egress",
        Hook::Drop => "drop",
    }
}

/// The kernel sends its own ICMP error before it frees the packet it drops (`ip_error`:
/// `icmp_send`, then `kfree_skb`), so the error can be seen up to this long before the drop.
const OWN_ICMP_SLACK_NS: u64 = 2_000_000;

fn attempt_outcome<'a>(flow: &Flow, a: &'a Attempt) -> Outcome<'a> {
    if let Some((kind, _)) = &a.folded {
        return Outcome::new(*kind, None);
    }
    let ss = sorted(a);
    let positive = match flow.kind {
        FlowKind::Dns => VerdictKind::Answered,
        FlowKind::Egress => VerdictKind::Established,
    };
    // A rejection this node generated itself after dropping the request (no route: Linux
    // drops and answers ICMP unreachable; iptables REJECT) is reported as the drop, which
    // names the reason. A rejection that came in through an interface is the server's.
    let own_drop_before = |r: &Sighting| -> Option<&'a Sighting> {
        if ss
            .iter()
            .any(|x| x.is_rejection() && x.hook == Hook::Ingress)
        {
            return None;
        }
        ss.iter()
            .rev()
            .find(|d| {
                d.hook == Hook::Drop
                    && d.dir == super::model::Direction::Request
                    && d.ts <= r.ts.saturating_add(OWN_ICMP_SLACK_NS)
            })
            .copied()
    };
    // A rejection, unless this node sent it after dropping the request itself.
    let rejected = |r: &'a Sighting| match own_drop_before(r) {
        Some(d) => Outcome::new(VerdictKind::Dropped, Some(d)),
        None => Outcome::new(VerdictKind::Rejected, Some(r)),
    };
    // A truncated UDP answer: the client retries over TCP.
    let truncated_udp = |s: &Sighting| {
        a.proto == Transport::Udp
            && matches!(
                s.detail,
                Detail::Answer {
                    truncated: true,
                    ..
                }
            )
    };
    if let Some(s) = ss
        .iter()
        .rev()
        .find(|s| flow.is_delivery(s) && (flow.is_reply(s) || s.is_rejection()))
    {
        if s.is_rejection() {
            return rejected(s);
        }
        // Delivered to the client's veth is not delivered to its socket: a drop of the UDP reply
        // inside the client afterwards means the client never got it. (TCP retransmits; and a
        // socket closed with data still queued frees it as QUEUE_PURGE after the client read
        // what it needed.)
        if let Some(d) = ss.iter().find(|d| {
            a.proto == Transport::Udp
                && d.hook == Hook::Drop
                && d.dir == super::model::Direction::Response
                && (d.ts, d.order) >= (s.ts, s.order)
                && !matches!(&d.detail, Detail::Drop(x) if x.reason.contains("QUEUE_PURGE"))
        }) {
            return Outcome::new(VerdictKind::Dropped, Some(d));
        }
        let mut o = Outcome::new(positive, Some(s));
        o.truncated = truncated_udp(s);
        return o;
    }
    if let Some(s) = ss.iter().rev().find(|s| s.is_rejection()) {
        return rejected(s);
    }
    if let Some(s) = ss.iter().rev().find(|s| s.hook == Hook::Drop) {
        return Outcome::new(VerdictKind::Dropped, Some(s));
    }
    if let Some(s) = ss.iter().rev().find(|s| flow.is_reply(s)) {
        if flow.kind == FlowKind::Egress || flow.side() == ClientSide::Host {
            let mut o = Outcome::new(positive, Some(s));
            o.unobserved = true;
            o.truncated = truncated_udp(s);
            return o;
        }
        let mut o = Outcome::new(VerdictKind::Unknown, Some(s));
        o.note = Some(format!(
            "the reply reached the node at {} ({}) but was never seen delivered to the client, and no drop was recorded",
            iface_label(s),
            hook_name(s.hook)
        ));
        return o;
    }
    if let Some(s) = ss.iter().rev().find(|s| s.is_request_packet()) {
        return match (s.hook, s.iface.kind) {
            (Hook::Egress, k) if super::flow::is_exit(k) => {
                Outcome::new(VerdictKind::LostBeyondNode, Some(s))
            }
            (Hook::Egress, IfaceKind::PodVeth) => Outcome::new(VerdictKind::Unanswered, Some(s)),
            _ => {
                let mut o = Outcome::new(VerdictKind::Unknown, Some(s));
                o.note = Some(format!(
                    "the request was last seen at {} ({}); it was neither seen leaving through a traced interface nor dropped",
                    iface_label(s),
                    hook_name(s.hook)
                ));
                o
            }
        };
    }
    let mut o = Outcome::new(VerdictKind::Unknown, ss.last().copied());
    o.note = Some("no sighting of the request".into());
    o
}

/// The attempt the verdict is about and its outcome: the latest attempt that got a final
/// reply, else the latest attempt.
fn primary(flow: &Flow) -> Option<(usize, Outcome<'_>)> {
    let outs: Vec<(usize, Outcome<'_>)> = flow
        .attempts
        .iter()
        .enumerate()
        .map(|(i, a)| (i, attempt_outcome(flow, a)))
        .collect();
    let start = |i: usize| flow.attempts.get(i).map_or(0, |a| a.start_ts);
    let mut best: Option<(usize, Outcome<'_>)> = None;
    let mut latest: Option<(usize, Outcome<'_>)> = None;
    for (i, o) in outs {
        let final_reply =
            matches!(o.kind, VerdictKind::Answered | VerdictKind::Established) && !o.truncated;
        if final_reply
            && best
                .as_ref()
                .is_none_or(|(j, _)| (start(i), i) > (start(*j), *j))
        {
            best = Some((i, o));
        } else if latest
            .as_ref()
            .is_none_or(|(j, _)| (start(i), i) > (start(*j), *j))
        {
            latest = Some((i, o));
        }
    }
    best.or(latest)
}

/// The verdict the flow would get now, before loss/closing overlays.
pub fn provisional(flow: &Flow) -> VerdictKind {
    primary(flow).map_or(VerdictKind::Unknown, |(_, o)| o.kind)
}

fn short_outcome(o: &Outcome<'_>) -> String {
    let at = o.at.map(iface_label).unwrap_or_default();
    match o.kind {
        VerdictKind::Dropped => match o.at.map(|s| &s.detail) {
            Some(Detail::Drop(d)) => format!("dropped ({} at {at})", d.reason),
            _ => "dropped".into(),
        },
        VerdictKind::LostBeyondNode => format!("lost beyond the node via {at}"),
        VerdictKind::Rejected => match o.at.map(|s| &s.detail) {
            Some(Detail::Icmp(k)) => format!("rejected (ICMP {k})"),
            _ => "rejected (TCP RST)".into(),
        },
        VerdictKind::Unanswered => format!("unanswered at {at}"),
        VerdictKind::Answered => match o.at.map(|s| &s.detail) {
            Some(Detail::Answer {
                rcode: Some(r),
                truncated,
                ..
            }) => {
                format!(
                    "answered {r}{}",
                    if *truncated { " (truncated)" } else { "" }
                )
            }
            _ => "answered".into(),
        },
        VerdictKind::Established => "established".into(),
        VerdictKind::Unknown => "fate unknown".into(),
    }
}

/// True when attempt `j`'s outcome cannot change any more: it was answered, dropped or
/// rejected (a waiting attempt may still get its answer).
pub fn attempt_is_final(flow: &Flow, j: usize) -> bool {
    flow.attempts.get(j).is_some_and(|a| {
        a.folded.is_some()
            || matches!(
                attempt_outcome(flow, a).kind,
                VerdictKind::Answered
                    | VerdictKind::Established
                    | VerdictKind::Dropped
                    | VerdictKind::Rejected
            )
    })
}

/// Outcome and one-line summary of attempt `j` (used when its sightings are folded away).
pub fn attempt_summary(flow: &Flow, j: usize) -> (VerdictKind, String) {
    match flow.attempts.get(j) {
        Some(a) => {
            if let Some(f) = &a.folded {
                return f.clone();
            }
            let o = attempt_outcome(flow, a);
            (o.kind, short_outcome(&o))
        }
        None => (VerdictKind::Unknown, "fate unknown".into()),
    }
}

fn stage_of(s: &Sighting) -> Stage {
    if s.hook == Hook::Drop {
        let (reason, loc) = match &s.detail {
            Detail::Drop(d) => (d.reason.to_ascii_uppercase(), d.location.as_str()),
            _ => (String::new(), ""),
        };
        let request = s.dir == super::model::Direction::Request;
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
        } else if s.iface.name.starts_with("netns") {
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
                super::model::Direction::Request => s.hook == Hook::Ingress,
                super::model::Direction::Response => s.hook == Hook::Egress,
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
fn endpoints(a: &Attempt) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let ss = sorted(a);
    let orig = ss
        .iter()
        .find(|s| s.dir == super::model::Direction::Request && !s.quoted)
        .or_else(|| ss.iter().find(|s| s.quoted))
        .map(|s| s.dst);
    let post = ss
        .iter()
        .rev()
        .find(|s| s.dir == super::model::Direction::Request && !s.quoted && Some(s.dst) != orig)
        .map(|s| s.dst)
        .or_else(|| {
            ss.iter()
                .find(|s| {
                    s.dir == super::model::Direction::Response && !s.quoted && Some(s.src) != orig
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

fn flow_key(
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

fn addr_change(a: SocketAddr, b: SocketAddr) -> String {
    if a.port() == b.port() {
        format!("{}→{}", a.ip(), b.ip())
    } else {
        format!("{a}→{b}")
    }
}

fn ms(ns: u64) -> f64 {
    // Rounded to µs: enough for humans, stable in JSON.
    (ns as f64 / 1_000.0).round() / 1_000.0
}

fn path(flow: &Flow, start: u64) -> Vec<PathEntry> {
    use super::model::Direction::{Request, Response};
    let all = flow.sorted_sightings();
    let mut out = Vec::with_capacity(all.len());
    for (k, (ai, s)) in all.iter().enumerate() {
        let before = all.get(..k).unwrap_or_default();
        let mut parts: Vec<String> = Vec::new();
        if *ai > 0 && !before.iter().any(|(j, _)| j == ai) {
            match flow.attempts.get(*ai).map(|a| a.kind) {
                Some(AttemptKind::Fallback) => parts.push("tcp fallback".into()),
                _ => parts.push(format!("retry #{ai}")),
            }
        }
        // Address translations since the previous sighting of the same attempt and orientation.
        let group = |x: &Sighting| (x.quoted, x.dir);
        if let Some((_, p)) = before
            .iter()
            .rev()
            .find(|(j, x)| j == ai && group(x) == group(s))
        {
            match (s.quoted, s.dir) {
                (false, Request) => {
                    if p.dst != s.dst {
                        parts.push(format!("dnat {}", addr_change(p.dst, s.dst)));
                    }
                    if p.src != s.src {
                        parts.push(format!("snat {}", addr_change(p.src, s.src)));
                    }
                }
                (false, Response) => {
                    if p.src != s.src {
                        parts.push(format!("un-dnat {}", addr_change(p.src, s.src)));
                    }
                    if p.dst != s.dst {
                        parts.push(format!("un-snat {}", addr_change(p.dst, s.dst)));
                    }
                }
                (true, _) => {
                    if p.dst != s.dst {
                        parts.push(format!("quoted dst un-dnat {}", addr_change(p.dst, s.dst)));
                    }
                    if p.src != s.src {
                        parts.push(format!("quoted src un-snat {}", addr_change(p.src, s.src)));
                    }
                }
            }
        }
        if s.flags.0 & (TcpFlags::SYN | TcpFlags::RST | TcpFlags::FIN) != 0 {
            parts.push(s.flags.to_string());
        }
        match &s.detail {
            Detail::None => {}
            Detail::Answer {
                rcode,
                answers,
                truncated,
            } => {
                let r = rcode.map_or("answer".to_owned(), |r| r.to_string());
                let plural = if *answers == 1 { "" } else { "s" };
                parts.push(format!("{r}, {answers} answer{plural}"));
                if *truncated {
                    parts.push("truncated (TC)".into());
                }
            }
            Detail::Icmp(k) => parts.push(format!("icmp {k}")),
            Detail::Drop(d) => parts.push(format!("drop {} at {}", d.reason, d.location)),
        }
        if let Some(v) = s.vlan {
            parts.push(format!("vlan {v}"));
        }
        out.push(PathEntry {
            t_ms: ms(s.ts.saturating_sub(start)),
            hook: s.hook,
            interface: s.iface_name(),
            interface_kind: s.iface_kind(),
            direction: s.dir,
            src: s.src.to_string(),
            dst: s.dst.to_string(),
            attempt: u32::try_from(*ai).unwrap_or(u32::MAX),
            note: (!parts.is_empty()).then(|| parts.join("; ")),
        });
    }
    out
}

fn egress_sighting(a: &Attempt) -> Option<&Sighting> {
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

/// Builds the verdict of a closed flow.
pub fn build(flow: &Flow, closing: Closing, ctx: &Ctx<'_>) -> Verdict {
    let (pi, out) = primary(flow).unwrap_or((0, Outcome::new(VerdictKind::Unknown, None)));
    let empty = Attempt::new(AttemptKind::First, Transport::Udp, 0, None, flow.first_ts);
    let pa = flow.attempts.get(pi).unwrap_or(&empty);
    let start = flow.first_ts;

    // Evidence and the loss overlay.
    let mut notes: Vec<String> = Vec::new();
    let mut kind = out.kind;
    if kind == VerdictKind::Unknown
        && let Some(n) = &out.note
    {
        notes.push(n.clone());
    }
    if let Some(l) = &flow.loss {
        notes.push(l.clone());
    }
    match closing {
        Closing::Normal => {}
        Closing::Evicted => notes.push(format!(
            "flow table full ({} flows): closed before its window ended",
            ctx.max_flows
        )),
        Closing::Stopped => notes.push("the tracer stopped before the flow's window ended".into()),
    }
    let mut downgraded_from = None;
    if kind.is_negative() && !notes.is_empty() {
        downgraded_from = Some(kind);
        kind = VerdictKind::Unknown;
    }
    if kind == VerdictKind::Unknown && notes.is_empty() {
        notes.push("no conclusive evidence".into());
    }
    let evidence = if notes.is_empty() {
        Evidence::Complete
    } else {
        Evidence::Incomplete
    };

    // Where.
    let at = out
        .at
        .or_else(|| sorted(pa).last().copied())
        .or_else(|| flow.sorted_sightings().last().map(|(_, s)| *s));
    // A drop without a device (e.g. in OUTPUT) happened after the last interface the packet
    // was seen at: name that one (`drop.interface` stays null).
    let place = at.filter(|s| s.iface_name().is_some()).or_else(|| {
        let s = at?;
        sorted(pa)
            .into_iter()
            .rev()
            .find(|x| x.ts <= s.ts && x.hook != Hook::Drop && x.iface_name().is_some())
    });
    let where_ = super::model::Where {
        stage: at.map_or(Stage::Other, stage_of),
        interface: place.and_then(Sighting::iface_name),
        interface_kind: place.and_then(Sighting::iface_kind),
        direction: at.map_or(super::model::Direction::Request, |s| s.dir),
        node: ctx.node.to_string(),
    };

    // Endpoints and key.
    let (orig, post) = endpoints(pa);
    let fallback_dst = flow.dsts.first().copied().unwrap_or(flow.client_ip);
    let default_port = if flow.kind == FlowKind::Dns { 53 } else { 0 };
    let server_addr = post.unwrap_or(SocketAddr::new(fallback_dst, default_port));
    let service_ip = match (orig, post) {
        (Some(o), Some(p)) if o != p => Some(o.ip()),
        _ => None,
    };
    let client_addr = SocketAddr::new(flow.client_ip, pa.port);
    let key = flow_key(flow.kind, pa.proto, client_addr, server_addr, pa.id);
    let mut related_keys: Vec<String> = Vec::new();
    for (i, a) in flow.attempts.iter().enumerate() {
        if i == pi || a.folded.is_some() {
            continue;
        }
        let (_, p) = endpoints(a);
        if let Some(p) = p {
            let k = flow_key(
                flow.kind,
                a.proto,
                SocketAddr::new(flow.client_ip, a.port),
                p,
                a.id,
            );
            if k != key && !related_keys.contains(&k) {
                related_keys.push(k);
            }
        }
    }

    // Kind-specific facts.
    let answered = kind == VerdictKind::Answered || kind == VerdictKind::Established;
    let latency = if answered {
        out.at.map(|s| ms(s.ts.saturating_sub(start)))
    } else {
        None
    };
    let retries = u32::try_from(
        flow.attempts
            .iter()
            .filter(|a| a.kind == AttemptKind::Retry)
            .count(),
    )
    .unwrap_or(u32::MAX)
    .saturating_add(flow.extra_retries);
    let dns = (flow.kind == FlowKind::Dns).then(|| {
        let answer = out
            .at
            .filter(|s| matches!(s.detail, Detail::Answer { .. }))
            .or_else(|| {
                sorted(pa)
                    .into_iter()
                    .rev()
                    .find(|s| matches!(s.detail, Detail::Answer { .. }))
            });
        let (rcode, answers, truncated) = match answer.map(|s| &s.detail) {
            Some(Detail::Answer {
                rcode,
                answers,
                truncated,
            }) => (*rcode, Some(*answers), *truncated),
            _ => (None, None, false),
        };
        DnsOut {
            id: pa.id,
            qname: flow.qname.as_deref().map(String::from),
            qtype: flow.qtype,
            rcode,
            answers,
            truncated,
            latency_ms: latency,
            transport: pa.proto,
            retries,
            tcp_fallback: flow
                .attempts
                .iter()
                .any(|a| a.kind == AttemptKind::Fallback),
        }
    });
    let egress = (flow.kind == FlowKind::Egress).then(|| {
        let snat = egress_sighting(pa)
            .map(|s| s.src)
            .filter(|s| *s != client_addr);
        EgressOut {
            retries,
            latency_ms: latency,
            snat_ip: snat.map(|s| s.ip()),
            snat_port: snat.map(|s| s.port()),
        }
    });
    let egress_interface = egress_sighting(pa)
        .or_else(|| flow.attempts.iter().rev().find_map(egress_sighting))
        .map(|s| EgressInterface {
            name: s.iface.name.clone(),
            kind: s.iface.kind,
            vlan: s.iface.vlan.or(s.vlan),
            eni_id: None,
        });
    let drop = match (kind, out.at) {
        (VerdictKind::Dropped, Some(s)) => match &s.detail {
            Detail::Drop(d) => Some(DropOut {
                reason: d.reason.clone(),
                reason_code: d.reason_code,
                location: d.location.clone(),
                interface: s.iface_name(),
                interface_kind: s.iface_kind(),
                netns: d.netns,
                direction: s.dir,
                programs: None,
                ifindex: s.iface.ifindex,
            }),
            _ => None,
        },
        _ => None,
    };
    let rejection = match (kind, out.at) {
        (VerdictKind::Rejected, Some(s)) => Some(match &s.detail {
            Detail::Icmp(k) => Rejection {
                by: RejectBy::Icmp,
                icmp: Some(*k),
            },
            _ => Rejection {
                by: RejectBy::TcpRst,
                icmp: None,
            },
        }),
        _ => None,
    };

    // Facts for the hint.
    let via = egress_interface
        .as_ref()
        .map(|e| e.name.clone())
        .unwrap_or_default();
    let recent_ok = |t: Transport| {
        ctx.recent
            .get(&(server_addr.ip(), t, via.clone()))
            .is_some_and(|r| r.ok && r.ts.abs_diff(flow.last_ts) <= ctx.recent_horizon_ns)
    };
    let lost = downgraded_from.unwrap_or(kind) == VerdictKind::LostBeyondNode;
    let earlier: Vec<String> = flow
        .attempts
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != pi)
        .map(|(i, _)| (i, attempt_summary(flow, i)))
        // Only what the verdict does not already say.
        .filter(|(_, (k, _))| *k != VerdictKind::Unknown && *k != out.kind)
        .map(|(i, (_, s))| format!("attempt #{i} {s}"))
        .collect();
    // A dropped reply from an address the client did not send to was not reverse-NATed.
    let reply_from = match (kind, out.at) {
        (VerdictKind::Dropped, Some(d)) if d.dir == super::model::Direction::Response => {
            orig.filter(|o| o.ip() != d.src.ip()).map(|o| (d.src, o))
        }
        _ => None,
    };
    let reply_after_ms = match (kind, out.at) {
        (VerdictKind::Dropped, Some(d)) if d.dir == super::model::Direction::Response => {
            Some(ms(d.ts.saturating_sub(start)))
        }
        _ => None,
    };
    let facts = HintFacts {
        window_s: ctx.window_ns as f64 / 1e9,
        other_transport_ok: flow.kind == FlowKind::Dns && lost && recent_ok(pa.proto.other()),
        same_transport_ok: flow.kind == FlowKind::Dns && lost && recent_ok(pa.proto),
        earlier: (!earlier.is_empty()).then(|| earlier.join(", ")),
        client_side: flow.side(),
        first_iface: flow.first_req.as_ref().map(|(_, _, _, i)| i.name.clone()),
        truncated_no_fallback: out.truncated && kind == VerdictKind::Answered,
        after_truncation: pa.kind == AttemptKind::Fallback,
        downgraded_from,
        delivery_unobserved: out.unobserved,
        reply_from,
        reply_after_ms,
    };

    Verdict {
        schema: SCHEMA,
        time: None,
        start_ns: start,
        end_ns: flow.last_ts,
        node: ctx.node.to_string(),
        key,
        related_keys,
        kind: flow.kind,
        transport: pa.proto,
        verdict: kind,
        evidence,
        evidence_note: (!notes.is_empty()).then(|| notes.join("; ")),
        where_,
        path: path(flow, start),
        path_omitted: flow
            .attempts
            .iter()
            .map(|a| a.omitted)
            .fold(0u32, u32::saturating_add),
        drop,
        rejection,
        dns,
        egress,
        client: Client {
            ip: flow.client_ip,
            port: pa.port,
            meta: PodMeta::default(),
            veth_pod: None,
        },
        server: Server {
            ip: server_addr.ip(),
            port: server_addr.port(),
            service_ip,
            service: None,
            meta: PodMeta::default(),
        },
        egress_interface,
        enrichment: None,
        peer: None,
        hint: String::new(),
        facts,
    }
}
