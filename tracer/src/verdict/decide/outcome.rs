//! What became of one attempt of a flow ([`Outcome`]), which attempt a verdict is about
//! ([`primary`]), and the per-attempt summaries the correlator asks for.

use crate::decode::event::{Hook, IfaceKind};

use super::super::flow::{Attempt, Detail, Flow, Sighting};
use super::super::model::{ClientSide, FlowKind, Transport, VerdictKind};
use super::path::is_teardown;

/// What became of one attempt.
pub(super) struct Outcome<'a> {
    pub(super) kind: VerdictKind,
    /// The sighting that decides it (where the flow ended).
    pub(super) at: Option<&'a Sighting>,
    /// For `unknown`: why.
    pub(super) note: Option<String>,
    /// The reply was seen at the node but its delivery could not be observed.
    pub(super) unobserved: bool,
    /// The answer delivered was a truncated UDP answer.
    pub(super) truncated: bool,
}

impl<'a> Outcome<'a> {
    /// An outcome of `kind` decided at `at`, with no note.
    pub(super) fn new(kind: VerdictKind, at: Option<&'a Sighting>) -> Self {
        Outcome {
            kind,
            at,
            note: None,
            unobserved: false,
            truncated: false,
        }
    }
}

/// The attempt's sightings in time order.
pub(super) fn sorted(a: &Attempt) -> Vec<&Sighting> {
    let mut v: Vec<&Sighting> = a.sightings.iter().collect();
    v.sort_by_key(|s| (s.ts, s.order));
    v
}

/// The sighting's interface name, or "no device".
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

/// The outcome of attempt `a` of `flow`, from its sightings.
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
                    && d.dir == super::super::model::Direction::Request
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
    let decisive = |s: &&&Sighting| flow.is_delivery(s) && (flow.is_reply(s) || s.is_rejection());
    // An egress connection is what its handshake got: a reset after the SYN-ACK reached the
    // client ends a connection that was established. A DNS query is what its client got last.
    let delivered = match flow.kind {
        FlowKind::Egress => ss.iter().find(decisive),
        FlowKind::Dns => ss.iter().rev().find(decisive),
    };
    if let Some(s) = delivered {
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
                && d.dir == super::super::model::Direction::Response
                && (d.ts, d.order) >= (s.ts, s.order)
                && !matches!(&d.detail, Detail::Drop(x) if is_teardown(&x.reason))
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
        // A reply leaving through an exit toward a pod of this node goes the way through the
        // VPC (security groups for pods send traffic to a server on the same node out of the
        // branch ENI and back in): it left, and never came back in to the client.
        if flow.side() == ClientSide::Pod
            && s.hook == Hook::Egress
            && super::super::flow::is_exit(s.iface.kind)
        {
            return Outcome::new(VerdictKind::LostBeyondNode, Some(s));
        }
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
            (Hook::Egress, k) if super::super::flow::is_exit(k) => {
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
pub(super) fn primary(flow: &Flow) -> Option<(usize, Outcome<'_>)> {
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

/// One-line summary of an outcome ("dropped (… at eth0)", "answered NOERROR", …).
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
