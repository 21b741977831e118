//! The `hint`: one sentence naming the likely cause and where to look, rendered from the
//! verdict's own fields (so enrichment can re-render it with pod and node names).

use crate::decode::event::{IcmpKind, IfaceKind, Rcode};

use super::model::{
    ClientSide, Direction, FlowKind, PeerFinding, PeerOut, PeerReason, PodMeta, RejectBy, Stage,
    Transport, Verdict, VerdictKind,
};

fn pod_name(m: &PodMeta) -> Option<String> {
    match (&m.namespace, &m.pod) {
        (Some(ns), Some(p)) => Some(format!("{ns}/{p}")),
        (None, Some(p)) => Some(p.clone()),
        _ => None,
    }
}

fn client(v: &Verdict) -> String {
    let ip = v.client.ip;
    match pod_name(&v.client.meta) {
        Some(p) => format!("pod {p} ({ip})"),
        None => match v.facts.client_side {
            ClientSide::Pod => format!("pod {ip}"),
            ClientSide::Remote => format!("{ip}"),
            ClientSide::Host => format!("{ip} (host network)"),
        },
    }
}

fn is_coredns(v: &Verdict) -> bool {
    let m = &v.server.meta;
    let named = |s: &Option<String>| {
        s.as_deref()
            .is_some_and(|s| s.contains("coredns") || s.contains("kube-dns"))
    };
    named(&m.pod)
        || named(&m.workload)
        || named(&v.server.service)
        || (v.server.service_ip.is_some() && v.server.port == 53)
}

/// "CoreDNS replica kube-system/coredns-x on node-b (198.18.2.30)", "DNS server 10.0.0.2",
/// "203.0.113.80:80".
fn server(v: &Verdict) -> String {
    let ip = v.server.ip;
    let node = v
        .server
        .meta
        .node
        .as_deref()
        .map(|n| format!(" on {n}"))
        .unwrap_or_default();
    match v.kind {
        FlowKind::Dns => {
            let what = if is_coredns(v) {
                "CoreDNS replica"
            } else {
                "DNS server"
            };
            match pod_name(&v.server.meta) {
                Some(p) => format!("{what} {p}{node} ({ip})"),
                None => format!("{what} {ip}{node}"),
            }
        }
        FlowKind::Egress => match pod_name(&v.server.meta) {
            Some(p) => format!("pod {p}{node} ({ip}:{})", v.server.port),
            None => format!("{ip}:{}{node}", v.server.port),
        },
    }
}

fn proto(v: &Verdict) -> Transport {
    v.transport
}

/// "the DNS query for example.com (A)", "the SYN", "the UDP packet".
fn request(v: &Verdict) -> String {
    match (&v.dns, v.kind) {
        (Some(d), _) => match (&d.qname, &d.qtype) {
            (Some(q), Some(t)) => format!("the DNS query for {q} ({t})"),
            (Some(q), None) => format!("the DNS query for {q}"),
            _ if d.transport == Transport::Tcp => "the DNS-over-TCP connection".into(),
            _ => "the DNS query".into(),
        },
        (None, _) if proto(v) == Transport::Tcp => "the SYN".into(),
        _ => "the UDP packet".into(),
    }
}

fn at_iface(v: &Verdict) -> String {
    match (&v.drop, &v.where_.interface) {
        (Some(d), Some(i)) if d.interface.is_none() => format!("after {i} (no device on the drop)"),
        (_, Some(i)) => format!("at {i}"),
        (_, None) => "in the node's own output path (no device)".into(),
    }
}

fn iface(v: &Verdict) -> String {
    v.where_
        .interface
        .clone()
        .unwrap_or_else(|| "the node".into())
}

fn retries_suffix(v: &Verdict) -> String {
    let n = v
        .dns
        .as_ref()
        .map(|d| d.retries)
        .or(v.egress.as_ref().map(|e| e.retries))
        .unwrap_or(0);
    let mut s = match (n, v.kind) {
        (0, _) => String::new(),
        (1, FlowKind::Dns) => " (after 1 client retry)".into(),
        (n, FlowKind::Dns) => format!(" (after {n} client retries)"),
        (1, FlowKind::Egress) => " (after 1 SYN retransmission)".into(),
        (n, FlowKind::Egress) => format!(" (after {n} SYN retransmissions)"),
    };
    if let Some(e) = &v.facts.earlier {
        s.push_str(&format!("; {e}"));
    }
    s
}

fn window(v: &Verdict) -> String {
    let w = v.facts.window_s;
    if (w - w.round()).abs() < 1e-9 {
        format!("{w:.0} s")
    } else {
        format!("{w} s")
    }
}

fn rcode_text(rcode: Rcode) -> &'static str {
    match rcode {
        Rcode::NXDOMAIN => {
            "the name does not exist (check the name, the pod's search domains and ndots)"
        }
        Rcode::SERVFAIL => {
            "the server could not resolve it (check the CoreDNS logs and its upstream/forward servers)"
        }
        Rcode::REFUSED => "the server refused the query (check the Corefile zones and ACLs)",
        Rcode::NOTIMP => "the server does not implement this query type",
        Rcode::FORMERR => "the server could not parse the query",
        _ => "the server answered with an error code",
    }
}

fn answered(v: &Verdict) -> String {
    let Some(d) = &v.dns else {
        return String::new();
    };
    let rcode = d.rcode.map_or("an answer".to_owned(), |r| r.to_string());
    let lat = d
        .latency_ms
        .map(|l| format!(" in {l} ms"))
        .unwrap_or_default();
    let q = d.qname.as_deref().unwrap_or("the query");
    if v.facts.client_side == ClientSide::Remote {
        let side = match v.client.meta.node.as_deref() {
            Some(n) if is_fargate_node(n) => {
                "the network ACLs of the Fargate pod's subnet and its security group: the cluster security group, or the one its Fargate profile's SecurityGroupPolicy gives it"
            }
            _ => "the network ACLs and security groups on the client's side",
        };
        return format!(
            "{} on this node answered {rcode} to {} and the reply left {} via {}{lat}; if the client did not get it, it was lost outside this node (check {side})",
            server(v),
            client(v),
            v.node,
            iface(v)
        );
    }
    // Not what the pod got: only the server's side was seen.
    let unseen = if v.facts.client_pod_unseen {
        format!(
            "; only the server's side of this query was seen: it was first seen at {}, not at the pod's veth (an untraced veth, or the way through the VPC of a pod with its own security group, where conntrack gives the query coming back in a new source port), so whether the answer reached the pod is not known from this line",
            v.facts
                .first_iface
                .as_deref()
                .unwrap_or("the server's veth")
        )
    } else {
        String::new()
    };
    if let Some(code) = d.rcode.filter(|r| *r != Rcode::NOERROR) {
        return format!(
            "{} answered {rcode} for {q}{lat}: not a network failure, {}{}{unseen}",
            server(v),
            rcode_text(code),
            retries_suffix(v)
        );
    }
    let mut s = format!(
        "{} answered {q} with {rcode} ({} answer{}){lat}",
        server(v),
        d.answers.unwrap_or(0),
        if d.answers == Some(1) { "" } else { "s" }
    );
    if d.tcp_fallback {
        s.push_str(" over TCP after a truncated UDP answer");
    }
    s.push_str(&retries_suffix(v));
    if v.facts.truncated_no_fallback {
        s.push_str("; the answer was truncated (TC) and the client did not retry over TCP: large answers need TCP 53 or EDNS0");
    }
    if v.facts.client_pod_unseen {
        s.push_str(&unseen);
    } else if v.facts.delivery_unobserved {
        s.push_str("; delivery to the host-network client inferred (no drop followed)");
    }
    s
}

fn established(v: &Verdict) -> String {
    let lat = v
        .egress
        .as_ref()
        .and_then(|e| e.latency_ms)
        .map(|l| format!(" in {l} ms"))
        .unwrap_or_default();
    let via = v
        .egress_interface
        .as_ref()
        .map(|e| format!(" via {}", e.name))
        .unwrap_or_default();
    let snat = v
        .egress
        .as_ref()
        .and_then(|e| e.snat_ip)
        .map(|ip| format!(" (SNAT to {ip})"))
        .unwrap_or_default();
    let what = if proto(v) == Transport::Tcp {
        "connection"
    } else {
        "UDP flow"
    };
    format!(
        "{what} from {} to {} established{lat}{via}{snat}{}",
        client(v),
        server(v),
        retries_suffix(v)
    )
}

fn dropped(v: &Verdict) -> String {
    let Some(d) = &v.drop else {
        return format!("the kernel on {} dropped {}", v.node, request(v));
    };
    let reason = d.reason.to_ascii_uppercase();
    let req = d.direction == Direction::Request;
    let p = proto(v).upper();
    let port = v.server.port;
    let node = &v.node;
    let suffix = retries_suffix(v);
    if let Some(ingress) = d.tc_hook() {
        return tc_program_drop(v, d, ingress);
    }
    if matches!(v.where_.stage, Stage::ClientSocket | Stage::ClientPod)
        && let Some((from, asked)) = v.facts.reply_from
    {
        return format!(
            "the reply reached {} from {from}, but the client had sent to {asked}: it was not reverse-NATed, so the client's socket did not accept it ({}); the reply took a path that bypassed this node's conntrack (asymmetric routing, a NOTRACK rule, or a server answering from another address){suffix}",
            client(v),
            d.reason
        );
    }
    match v.where_.stage {
        Stage::Netfilter if req => format!(
            "an iptables/nftables rule (NetworkPolicy?) on node {node} dropped {} from {} to {} {}; look at `iptables-save` (and `nft list ruleset`) for a DROP rule matching {p} {port}{suffix}",
            request(v),
            client(v),
            server(v),
            at_iface(v)
        ),
        Stage::Netfilter => format!(
            "an iptables/nftables rule on node {node} dropped the reply from {} to {} {}; look at `iptables-save` for a DROP rule and at conntrack (`conntrack -S`: insert_failed, invalid){suffix}",
            server(v),
            client(v),
            at_iface(v)
        ),
        Stage::Routing if reason.contains("RPFILTER") && !req => format!(
            "reverse-path filter on {} dropped the reply from {}: asymmetric routing (reply arrived on a different ENI than the route back); set rp_filter=2 (loose) on {}{suffix}",
            iface(v),
            server(v),
            iface(v)
        ),
        Stage::Routing if reason.contains("RPFILTER") => format!(
            "reverse-path filter on {} dropped {} from {}: its source is not routed back via {}; check the policy routing (`ip rule`, the ENI route tables) or set rp_filter=2 (loose) on {}{suffix}",
            iface(v),
            request(v),
            client(v),
            iface(v),
            iface(v)
        ),
        Stage::Routing => {
            let (src, dst) = if req {
                (v.client.ip, v.server.ip)
            } else {
                (v.server.ip, v.client.ip)
            };
            let iif = v
                .where_
                .interface
                .as_deref()
                .map(|i| format!(" iif {i}"))
                .unwrap_or_default();
            format!(
                "node {node} has no usable route for {} from {} to {} ({} at {}): check `ip route get {dst} from {src}{iif}`, the pod's ENI route table (`ip rule`) and the default route / NAT gateway{suffix}",
                if req { request(v) } else { "the reply".into() },
                client(v),
                server(v),
                d.reason,
                d.location
            )
        }
        Stage::ServerSocket if reason.contains("NO_SOCKET") => format!(
            "nothing listens on {p} {port} at {}: {} from {} reached it but no socket was bound (CoreDNS down or restarting?){suffix}",
            server(v),
            request(v),
            client(v)
        ),
        Stage::ClientSocket if reason.contains("NO_SOCKET") => format!(
            "the reply from {} reached {}{} after the client had closed its socket (port {}): the client gave up before the answer came, so the server is slower than the client's timeout; check the server's latency and load, and the client's timeout{suffix}",
            server(v),
            client(v),
            v.facts
                .reply_after_ms
                .map(|ms| format!(" {ms} ms after the query"))
                .unwrap_or_default(),
            v.client.port
        ),
        Stage::ClientSocket if reason.contains("RCVBUFF") || reason.contains("RCVBUF") => format!(
            "the reply from {} reached {} but its socket's receive buffer was full ({}): the client does not read its answers fast enough (too many queries in flight on one socket, or a starved process){suffix}",
            server(v),
            client(v),
            d.reason
        ),
        Stage::ServerSocket | Stage::ClientSocket => format!(
            "the {} socket dropped {} ({} at {}): receive buffer full? the process is not reading fast enough (overloaded){suffix}",
            if req { "server's" } else { "client's" },
            if req { request(v) } else { "the reply".into() },
            d.reason,
            d.location
        ),
        _ => format!(
            "the kernel on node {node} dropped {} {} ({} at {}){suffix}",
            if req {
                format!("{} from {}", request(v), client(v))
            } else {
                format!("the reply from {} to {}", server(v), client(v))
            },
            at_iface(v),
            d.reason,
            d.location
        ),
    }
}

/// A drop decided by a tc program (reason TC_INGRESS / TC_EGRESS): another datapath program,
/// not the kernel's own stack, dropped it.
fn tc_program_drop(v: &Verdict, d: &super::model::DropOut, ingress: bool) -> String {
    let hook = if ingress { "ingress" } else { "egress" };
    let at = d.interface.as_deref().unwrap_or("an interface");
    let what = if d.direction == Direction::Request {
        format!("{} from {}", request(v), client(v))
    } else {
        format!("the reply from {} to {}", server(v), client(v))
    };
    let progs = d.programs.as_deref().unwrap_or_default();
    let named: Vec<String> = progs
        .iter()
        .map(|p| match p.tool {
            Some(t) => format!("{t} ({}, program id {})", p.name, p.id),
            None => format!("{} (program id {})", p.name, p.id),
        })
        .collect();
    let who = match named.as_slice() {
        [] => "another tc program (it was gone when the verdict was made)".to_owned(),
        [one] => one.clone(),
        many => format!("one of {}", many.join(", ")),
    };
    let look = match progs.iter().find_map(|p| p.tool) {
        Some("VPC CNI network-policy agent") => {
            ": check the NetworkPolicies that select this pod (the agent enforces them)"
        }
        Some("Cilium") => {
            ": check the CiliumNetworkPolicies / NetworkPolicies (`cilium monitor --type drop`)"
        }
        Some("Calico") => ": check the Calico and Kubernetes network policies for this pod",
        _ => {
            ": check which tool attached it (`bpftool net show`, `tc filter show dev <iface> ingress`)"
        }
    };
    format!(
        "another datapath program dropped {what} at {at} ({hook}), not the kernel's own stack: {who}{look}{}",
        retries_suffix(v)
    )
}

fn rejected(v: &Verdict) -> String {
    let p = proto(v).upper();
    let port = v.server.port;
    match &v.rejection {
        Some(r) if r.by == RejectBy::TcpRst => format!(
            "{} answered {} from {} with a TCP RST: nothing listens on port {port} there, or a firewall rejects it (REJECT --reject-with tcp-reset){}",
            server(v),
            request(v),
            client(v),
            retries_suffix(v)
        ),
        Some(r) => {
            let icmp = r.icmp.map_or("error".to_owned(), |k| k.to_string());
            let why = match r.icmp {
                Some(IcmpKind::PortUnreachable) if v.kind == FlowKind::Dns => {
                    format!("nothing listens on {p} {port} there (CoreDNS down or restarting?)")
                }
                Some(IcmpKind::PortUnreachable) => format!("nothing listens on {p} {port} there"),
                Some(IcmpKind::HostUnreachable | IcmpKind::NetUnreachable) => {
                    "a router or the host says it is unreachable (check the routes, that the pod still exists, ARP/neighbour entries)".into()
                }
                Some(IcmpKind::AdminProhibited) => {
                    "a firewall rejects it (iptables REJECT with icmp-admin-prohibited, NetworkPolicy)".into()
                }
                _ => "the path or the host refuses the packet".into(),
            };
            format!(
                "ICMP {icmp} came back for {} from {} to {}: {why}{}",
                request(v),
                client(v),
                server(v),
                retries_suffix(v)
            )
        }
        None => format!("{} was rejected", request(v)),
    }
}

fn lost(v: &Verdict) -> String {
    let p = proto(v).upper();
    let w = window(v);
    let (via, vlan, branch) = match &v.egress_interface {
        Some(e) => (e.name.clone(), e.vlan, e.kind == IfaceKind::BranchEni),
        None => (iface(v), None, false),
    };
    let vlan_txt = vlan.map(|n| format!(", VLAN {n}")).unwrap_or_default();
    let eni = v
        .egress_interface
        .as_ref()
        .and_then(|e| e.eni_id.as_deref())
        .map(|e| format!(" {e}"))
        .unwrap_or_default();
    let via_txt = if branch {
        format!("{via} (branch ENI{eni}{vlan_txt})")
    } else {
        via.clone()
    };
    let first = match (&v.facts.first_iface, v.facts.client_side) {
        (Some(i), ClientSide::Host) => {
            format!(" (first seen at {i}: host-network client or untraced pod veth)")
        }
        _ => String::new(),
    };
    let suffix = retries_suffix(v);
    if v.where_.direction == Direction::Response {
        return format!("{}{suffix}", reply_left(v, &via_txt, branch));
    }
    if v.kind == FlowKind::Egress {
        let what = if p == "TCP" { "SYN" } else { "UDP" };
        let back = if p == "TCP" { "SYN-ACK" } else { "reply" };
        let request_side = if branch {
            format!(
                "the pod security group egress rules of the branch ENI, route table {} and the NAT gateway",
                vlan.map_or("vlanId+100".into(), |n| (u32::from(n) + 100).to_string())
            )
        } else {
            "the route table, the NAT gateway and the security group egress rules".into()
        };
        return format!(
            "{what} from {} left via {via_txt} toward {} and no {back} came back within {w}: the request or its {back} was lost outside this node; check, on the way out, {request_side}, and on the way back the network ACLs (both directions) and the security group ingress rules{suffix}",
            client(v),
            server(v)
        );
    }
    let sg = if branch {
        "pod security group (on the branch ENI)".to_string()
    } else {
        "node security group".into()
    };
    if let Some(peer) = &v.peer
        && peer.finding != PeerFinding::Unknown
    {
        return format!("{}{suffix}", peer_lost(v, peer, &via_txt, &sg, branch));
    }
    let lead = if v.facts.after_truncation {
        format!(
            "after a truncated UDP answer, the TCP 53 fallback from {} left",
            client(v)
        )
    } else {
        format!("{p} 53 from {} left", client(v))
    };
    // A replica on AWS Fargate: no tracer can run there, and its security group is the cluster
    // security group (or its Fargate profile's pod security group), not a node's.
    let fargate = v.server.meta.node.as_deref().filter(|n| is_fargate_node(n));
    let unknown = match fargate {
        Some(_) => {
            " (the replica runs on AWS Fargate, where no tracer can run to say which)".to_owned()
        }
        None => v
            .peer
            .as_ref()
            .and_then(|p| p.reason.map(|r| (p.node.as_str(), r)))
            .map(|(node, r)| {
                format!(
                    " (node {node}'s tracer could not say which: {})",
                    peer_reason(r)
                )
            })
            .unwrap_or_default(),
    };
    let server_sg = if fargate.is_some() {
        "the Fargate pod's security group (the cluster security group, or the one its Fargate profile's SecurityGroupPolicy gives it)"
    } else {
        "the server's security group"
    };
    let base = format!(
        "{lead} node {} via {via_txt} toward {} and no reply came back within {w}{first}: the query or its reply was lost outside this node{unknown}",
        v.node,
        server(v)
    );
    // Only what the evidence supports: from this node a lost query and a lost reply look the
    // same, so both directions' controls are named.
    let controls = format!(
        "check, for the query, that the {sg} allows {p} 53 out to {ip} and {server_sg} allows it in; for the reply, that the server side may send it back and that the network ACLs (NACLs) of both subnets allow {p} 53 one way and the ephemeral ports (1024-65535) on the return path",
        ip = v.server.ip
    );
    if v.facts.other_transport_ok {
        let other = proto(v).other().upper();
        return format!(
            "{base}; {other} 53 with the same server was answered recently, so something filters {p} 53 specifically (a rule that allows only {other}, in either direction): {controls}{suffix}"
        );
    }
    if v.facts.same_transport_ok {
        return format!(
            "{base}; {p} 53 to the same server was answered recently, so either the loss is intermittent (check the ENA allowance counters, `ethtool -S {via}`: pps/conntrack/linklocal_allowance_exceeded, and the server's load) or a rule changed since (a security group or NACL edit): {controls}{suffix}"
        );
    }
    format!(
        "{base}: {controls}, and the route to {}{suffix}",
        v.server.ip
    )
}

/// Whether a node is an AWS Fargate node (EKS names them `fargate-ip-…`): one pod each, and no
/// DaemonSet runs there.
pub fn is_fargate_node(name: &str) -> bool {
    name.starts_with("fargate-")
}

/// Why a peer could not say, as a clause.
fn peer_reason(r: PeerReason) -> &'static str {
    match r {
        PeerReason::NoTracer => "no tracer runs there",
        PeerReason::Unreachable => "it could not be reached on the peer port",
        PeerReason::Timeout => "it did not answer in time",
        PeerReason::Refused => "it refused the question (TLS material from another CA?)",
        PeerReason::PeerLoss => "it may have missed events at that time",
        PeerReason::PeerNotRunning => "its tracer was not running yet",
        PeerReason::BeyondHorizon => "it no longer remembers that far back",
        PeerReason::Busy => "too many questions were waiting",
        PeerReason::NodeUnknown => "the server's node is not known",
    }
}

/// The lost hint when the request came back into this node, reached the server and its reply
/// left through an exit toward the client (a pod with its own security group talking to a
/// server on its own node goes through the VPC both ways), and never came back in.
fn reply_left(v: &Verdict, via: &str, branch: bool) -> String {
    let p = proto(v).upper();
    let w = window(v);
    let (what, back) = match v.kind {
        FlowKind::Dns => (format!("{p} 53"), "the answer".to_owned()),
        FlowKind::Egress if p == "TCP" => ("The SYN".to_owned(), "the SYN-ACK".to_owned()),
        FlowKind::Egress => ("The UDP datagram".to_owned(), "the reply".to_owned()),
    };
    let entered = v
        .request_entered_by_exit()
        .and_then(|h| h.interface.as_deref());
    let out = iface(v);
    let Some(entered) = entered else {
        // The request never came back in: the reply came from elsewhere and this node sent it
        // out again instead of delivering it.
        return format!(
            "{what} from {} left node {} via {via} toward {}, which answered; {back} came to this node and left it again via {out} instead of reaching the client, and never came back within {w}: check the route to {ip} on this node (`ip route get {ip}`) and the policy routing (`ip rule`, the ENI route tables)",
            client(v),
            v.node,
            server(v),
            ip = v.client.ip
        );
    };
    let pod_sg = if branch {
        "; the pod's security group is stateful and lets its own replies in, so look at what is stateless or routed"
    } else {
        ""
    };
    format!(
        "{what} from {} left node {} via {via} and came back in at {entered} to {}, which answered; {back} left via {out} toward the client and never came back in within {w}: it was lost outside this node on the way back{pod_sg}; check the network ACLs of both subnets ({p} from port {port} to ports 1024-65535: NACLs are stateless), the route back to {ip} and the security group rules of the server's side",
        client(v),
        v.node,
        server(v),
        port = v.server.port,
        ip = v.client.ip
    )
}

/// The lost hint when the server node's tracer said where the query ended (for a server on
/// this very node, this tracer's own account).
fn peer_lost(v: &Verdict, peer: &PeerOut, via: &str, sg: &str, branch: bool) -> String {
    let p = proto(v).upper();
    let b = &peer.node;
    let at = |s: &Option<super::model::PeerSighting>| {
        s.as_ref()
            .map(|s| format!(" at {}", s.interface))
            .unwrap_or_default()
    };
    let drop = peer
        .drop_
        .as_ref()
        .map(|d| {
            let on = d
                .interface
                .as_deref()
                .map(|i| format!(" on {i}"))
                .unwrap_or_default();
            format!(" (dropped there: {}{on})", d.reason)
        })
        .unwrap_or_default();
    let lead = format!(
        "{p} 53 from {} left node {} via {via} toward {}",
        client(v),
        v.node,
        server(v)
    );
    if peer.node == v.node && peer.finding == PeerFinding::RequestLost {
        let why = if branch {
            " (a pod with its own security group reaches even a replica on its own node through the VPC)"
        } else {
            ""
        };
        return format!(
            "{lead}, which runs on this same node, and never came back in (this tracer sees the replica's side too, and nothing arrived): the query was lost in the VPC on the way{why}; check that the {sg} allows {p} 53 out to {ip}, that the node security group allows {p} 53 in from it, the network ACLs for {p} 53, and the route to {ip}",
            ip = v.server.ip
        );
    }
    match peer.finding {
        PeerFinding::RequestLost => format!(
            "{lead} and never arrived at node {b} (its tracer saw nothing come in): the query was lost on the way there; check that the {sg} allows {p} 53 out to {ip}, that node {b}'s security group allows {p} 53 in from it, the network ACLs of both subnets for {p} 53, and the route between them",
            ip = v.server.ip
        ),
        PeerFinding::NotDelivered => format!(
            "{lead}, arrived at node {b}{} and never reached the replica's veth{drop}: it stopped on node {b}; check node {b}'s iptables/nftables and NetworkPolicy rules for {p} 53 (node {b}'s tracer has its own verdict for this key)",
            at(&peer.arrived)
        ),
        PeerFinding::NoReply => format!(
            "{lead}, reached the replica on node {b}{} and no reply left node {b}{drop}: the replica did not answer or its reply was dropped on node {b}; check the replica's logs, CPU throttling and node {b}'s verdict for this key",
            at(&peer.to_replica)
        ),
        PeerFinding::ReplyLost => format!(
            "{lead}; the replica answered and the reply left node {b}{} but never arrived here: the reply was lost on the way back; check the network ACLs on the return path ({p} from port 53 to ports 1024-65535, both subnets: NACLs are stateless), node {b}'s outbound security group rules and this node's inbound rules",
            at(&peer.reply_left)
        ),
        PeerFinding::Unknown => lead,
    }
}

fn unanswered(v: &Verdict) -> String {
    let w = window(v);
    match v.kind {
        FlowKind::Dns => format!(
            "{} received {} at {} and never replied within {w} (overloaded or hung): check its logs, CPU throttling and readiness{}",
            server(v),
            request(v),
            iface(v),
            retries_suffix(v)
        ),
        FlowKind::Egress => format!(
            "{} received {} from {} at {} and never replied within {w}: the process is not accepting (backlog full?) or the pod is hung{}",
            server(v),
            request(v),
            client(v),
            iface(v),
            retries_suffix(v)
        ),
    }
}

fn unknown(v: &Verdict) -> String {
    let note = v
        .evidence_note
        .as_deref()
        .unwrap_or("the evidence is incomplete");
    let dir = match v.where_.direction {
        Direction::Request => "request",
        Direction::Response => "response",
    };
    let last = if note.contains("last seen") || note.contains("reached the node") {
        String::new()
    } else {
        match &v.where_.interface {
            Some(i) => format!("; the {dir} was last seen at {i}"),
            None => format!("; the {dir} was last seen in the node's stack"),
        }
    };
    let claim = match v.facts.downgraded_from {
        Some(k) => {
            let advice = if note.contains("could not be attributed") {
                ": parallel A/AAAA queries from one socket lose one to the conntrack insert race (`conntrack -S`: insert_failed); `options single-request-reopen` in the pod's resolv.conf avoids it"
            } else if note.contains("flow table full") {
                ": raise the flow table limit"
            } else if note.contains("evicted this flow's entry") {
                ": this node opens UDP flows faster than the kernel's flow table keeps them (counter `egress_evicted`)"
            } else if note.contains("tracer stopped") {
                ""
            } else {
                ": check the tracer's loss counters and look again"
            };
            format!(
                "; with complete evidence this would read `{}`, which is not claimed on incomplete evidence{advice}",
                k.as_str()
            )
        }
        None => String::new(),
    };
    let nodelocal = if v.server.ip.to_string() == "169.254.20.10" {
        "; 169.254.20.10 is NodeLocal DNSCache on this node: check the node-local-dns pod"
    } else {
        ""
    };
    format!(
        "no verdict for {} from {}: {note}{last}{claim}{nodelocal}",
        request(v),
        client(v)
    )
}

/// What the node's loss counters said while the flow was open, as a clause ("" when none).
fn node_signals(v: &Verdict) -> String {
    let parts: Vec<String> = v
        .node_signals
        .iter()
        .map(|s| {
            let n = s.delta;
            let eni = format!("the ENA of {}", s.interface.as_deref().unwrap_or("an ENI"));
            match (s.signal, s.counter.as_str()) {
                ("ena", "linklocal_allowance_exceeded") => format!(
                    "{eni} dropped {n} packets over its link-local allowance (1024 pps per ENI to the VPC resolver, instance metadata and the time service): beyond that rate the hypervisor drops DNS to the VPC resolver whatever the security groups and NACLs say; cache on the node (NodeLocal DNSCache) or spread the queries over more nodes"
                ),
                ("ena", "pps_allowance_exceeded") => format!(
                    "{eni} dropped {n} packets over the instance's packets-per-second allowance (a limit of the instance type)"
                ),
                ("ena", "conntrack_allowance_exceeded") => format!(
                    "{eni} dropped {n} packets over its connection-tracking allowance (the hypervisor's flow table, not Linux conntrack: too many tracked flows for the instance type)"
                ),
                ("ena", c) if c.starts_with("bw_") => {
                    format!("{eni} dropped {n} packets over the instance's bandwidth allowance ({c})")
                }
                ("ena", c) => format!("{eni} counted {n} more {c}"),
                ("conntrack", "insert_failed") => format!(
                    "conntrack counted {n} failed inserts: parallel A and AAAA queries from one socket can lose the conntrack insert race and the loser is dropped (the 5 s DNS timeout); `options single-request-reopen` in the pod's resolv.conf, or NodeLocal DNSCache, avoids it"
                ),
                ("conntrack", "drop") => format!(
                    "conntrack dropped {n} packets for want of room (`conntrack -S`; raise nf_conntrack_max)"
                ),
                (sig, c) => format!("{sig} counted {n} more {c}"),
            }
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("; at that time {}", parts.join("; and "))
    }
}

/// Renders the hint of `v`.
pub fn render(v: &Verdict) -> String {
    let s = match v.verdict {
        VerdictKind::Answered => answered(v),
        VerdictKind::Established => established(v),
        VerdictKind::Dropped => dropped(v),
        VerdictKind::Rejected => rejected(v),
        VerdictKind::LostBeyondNode => lost(v),
        VerdictKind::Unanswered => unanswered(v),
        VerdictKind::Unknown => unknown(v),
    };
    let mut out = s;
    let signals = node_signals(v);
    if !signals.is_empty() {
        out = format!("{}{signals}", out.trim_end_matches('.'));
    }
    if let Some(pod) = &v.client.veth_pod {
        out = format!(
            "{}; the source address {} is not pod {pod}'s, whose veth it entered through (a spoofed source or a misconfigured pod): not attributed to any pod",
            out.trim_end_matches('.'),
            v.client.ip
        );
    }
    if let Some(first) = out.get(..1)
        && first != "`"
    {
        out = first.to_uppercase() + out.get(1..).unwrap_or_default();
    }
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

/// The hint of a summary line: who asked (or connected to) whom, how many flows, how fast.
pub fn summary(s: &super::summary::Summary) -> String {
    let who = |e: &super::summary::SummaryEndpoint| match pod_name(&e.meta) {
        Some(p) => format!("pod {p} ({})", e.ip),
        None => e.ip.to_string(),
    };
    let lat = match (s.latency_ms.p50, s.latency_ms.p99) {
        (Some(p50), Some(p99)) => format!(", p50 {p50} ms, p99 {p99} ms"),
        _ => String::new(),
    };
    let Some(dns) = &s.dns else {
        return egress_summary(s, &who(&s.client), &lat);
    };
    let server = match (&s.server.service, pod_name(&s.server.meta)) {
        (Some(_), Some(p)) => format!("CoreDNS replica {p} ({})", s.server.ip),
        (_, Some(p)) => format!("pod {p} ({})", s.server.ip),
        _ => format!("DNS server {}", s.server.ip),
    };
    let qtype = dns.qtype.map_or("DNS".to_owned(), |q| q.to_string());
    let what = if dns.rcode == Rcode::NOERROR {
        "healthy answers".to_owned()
    } else {
        format!("answers with {} (not a network failure)", dns.rcode)
    };
    format!(
        "{} {what} to {qtype} queries from {} by {server}{lat}.",
        s.count,
        who(&s.client)
    )
}

/// `12 connections from pod shop/checkout (198.18.1.21) to 203.0.113.80:443 established via
/// eth0, p50 1.2 ms, p99 3.1 ms.`
fn egress_summary(s: &super::summary::Summary, client: &str, lat: &str) -> String {
    let what = match (s.transport, s.count) {
        (Transport::Tcp, 1) => "connection",
        (Transport::Tcp, _) => "connections",
        (_, 1) => "UDP flow",
        _ => "UDP flows",
    };
    let dest = std::net::SocketAddr::new(s.server.ip, s.server.port.unwrap_or(0));
    let server = match pod_name(&s.server.meta) {
        Some(p) => format!("pod {p} ({dest})"),
        None => dest.to_string(),
    };
    let via = s
        .egress_interface
        .as_ref()
        .map(|e| format!(" via {}", e.name))
        .unwrap_or_default();
    format!(
        "{} {what} from {client} to {server} established{via}{lat}.",
        s.count
    )
}
