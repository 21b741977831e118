//! From a closed flow's sightings to its [`Verdict`]: the closing context and [`build`].
//! What became of each attempt is worked out in [`outcome`], the path and addresses the
//! verdict reports in [`path`](mod@path).

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::decode::event::Hook;

mod outcome;
mod path;

pub use outcome::{attempt_is_final, attempt_summary, provisional};

use super::flow::{Attempt, AttemptKind, Detail, Flow, Sighting};
use super::model::{
    Client, Direction, DnsOut, DropOut, EgressInterface, EgressOut, Evidence, FlowKind, HintFacts,
    PodMeta, RejectBy, Rejection, SCHEMA, Server, Stage, Transport, Verdict, VerdictKind,
};
use outcome::{Outcome, primary, sorted};
use path::{egress_sighting, endpoints, flow_key, ms, path, stage_of};

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

/// Key of the recent-outcome memory: the same server (address and port) reached the same way.
/// The interface matters: UDP answered through eth0 says nothing about UDP through a pod's
/// branch ENI.
pub type RecentKey = (SocketAddr, Transport, String);

/// UDP ports of request/response protocols whose reply comes from the port asked (so the
/// kernel pairs it with the request): a datagram to one of them expects a reply (DNS, Kerberos,
/// NTP, SNMP, CLDAP, QUIC/HTTP3, IKE, RADIUS, STUN). Not TFTP: its server answers from a new
/// port, which no tracer can pair without reading the protocol.
const UDP_REPLY_PORTS: [u16; 11] = [53, 88, 123, 161, 389, 443, 500, 1812, 1813, 3478, 4500];

/// How the `evidence_note` of a UDP egress flow that got no reply where none was due begins
/// (`tracer observe` shows such a flow as one-way, not as missing evidence).
pub const NO_REPLY_DUE: &str = "UDP needs no reply";

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

impl Ctx<'_> {
    /// Whether `server` answered over `t` through interface `via` within the horizon of `at`.
    fn answered_lately(&self, server: SocketAddr, t: Transport, via: &str, at: u64) -> bool {
        self.recent
            .get(&(server, t, via.to_owned()))
            .is_some_and(|r| r.ok && r.ts.abs_diff(at) <= self.recent_horizon_ns)
    }
}

/// Builds the verdict of a closed flow.
pub fn build(flow: &Flow, closing: Closing, ctx: &Ctx<'_>) -> Verdict {
    let (pi, out) = primary(flow).unwrap_or((0, Outcome::new(VerdictKind::Unknown, None)));
    let empty = Attempt::new(AttemptKind::First, Transport::Udp, 0, None, flow.first_ts);
    let pa = flow.attempts.get(pi).unwrap_or(&empty);
    let start = flow.first_ts;

    // Endpoints and key.
    let (orig, post) = endpoints(pa);
    let fallback_dst = flow.dsts.first().copied().unwrap_or(flow.client_ip);
    let default_port = if flow.kind == FlowKind::Dns { 53 } else { 0 };
    let server_addr = post.unwrap_or(SocketAddr::new(fallback_dst, default_port));
    let service_ip = match (orig, post) {
        (Some(o), Some(p)) if o != p => Some(o.ip()),
        _ => None,
    };
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
    // UDP needs no reply: silence after a datagram left the node is a loss only where a reply
    // was due (a request/response port, or this server answered UDP through the same interface
    // lately). Otherwise statsd, syslog or GELF traffic would be reported lost, one flow each.
    let via_now = egress_sighting(pa)
        .map(|s| s.iface.name.clone())
        .unwrap_or_default();
    if flow.kind == FlowKind::Egress
        && pa.proto == Transport::Udp
        && kind == VerdictKind::LostBeyondNode
        && out.at.is_none_or(|s| s.dir == Direction::Request)
        && !UDP_REPLY_PORTS.contains(&server_addr.port())
        && !ctx.answered_lately(server_addr, Transport::Udp, &via_now, flow.last_ts)
    {
        kind = VerdictKind::Unknown;
        notes.push(format!(
            "{NO_REPLY_DUE}: the datagram left through {via_now} and nothing came back within {} s, but none was due ({} is not a request/response port and has not answered UDP through {via_now} lately); one-way protocols such as statsd or syslog look like this when healthy; if this one expects a reply, the datagram or its reply was lost outside this node (route table, NAT gateway, security groups, network ACLs)",
            ctx.window_ns as f64 / 1e9,
            server_addr
        ));
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
    let recent_ok = |t: Transport| ctx.answered_lately(server_addr, t, &via, flow.last_ts);
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
        // Known only with names (finalize).
        client_pod_unseen: false,
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
        node_signals: Vec::new(),
        hint: String::new(),
        facts,
    }
}
