//! The output contract: one [`Verdict`] per flow, serialized as one JSON object
//! (`"schema": "tracer.flow/v1"`, JSON Schema in `docs/schema/flow-v1.json`).
//!
//! Every key is always present (`null` when it does not apply or is not known yet), so SIEM
//! mappings see one shape. The enrichment stage fills the `Option` metadata fields
//! ([`PodMeta`], [`Server::service`], [`EgressInterface::eni_id`], [`Verdict::time`],
//! [`Verdict::enrichment`]) and then renders the hint (`hint::render`) so it names pods
//! and nodes instead of bare addresses.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::capture::hooks::HookProgram;
use crate::decode::event::{Hook, IcmpKind, IfaceKind, QType, Rcode, TcpFlags};

/// Value of [`Verdict::schema`].
pub const SCHEMA: &str = "tracer.flow/v1";

/// What kind of flow a verdict is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowKind {
    /// One DNS query of a client (with its retries and TCP fallback).
    Dns,
    /// A pod's connection attempt (TCP SYN) or first UDP packet of a tuple, DNS excluded.
    Egress,
}

/// The outcome of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    /// A DNS response was delivered to the client (any rcode).
    Answered,
    /// The egress handshake completed (SYN-ACK, or any UDP reply).
    Established,
    /// The kernel of this node dropped the request or the response.
    Dropped,
    /// The request left this node through an uplink or branch ENI and nothing came back.
    LostBeyondNode,
    /// The request reached a server on this node, which never replied.
    Unanswered,
    /// An ICMP error or a TCP RST came back.
    Rejected,
    /// The evidence does not support any other verdict (events lost, flow table full, the
    /// request vanished without a recorded drop, ...). `evidence` is then `incomplete`.
    Unknown,
}

impl VerdictKind {
    /// All kinds, in schema order.
    #[allow(
        dead_code,
        reason = "for the metrics stage (one counter per verdict label)"
    )]
    pub const ALL: [VerdictKind; 7] = [
        VerdictKind::Answered,
        VerdictKind::Established,
        VerdictKind::Dropped,
        VerdictKind::LostBeyondNode,
        VerdictKind::Unanswered,
        VerdictKind::Rejected,
        VerdictKind::Unknown,
    ];

    /// Name as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Answered => "answered",
            VerdictKind::Established => "established",
            VerdictKind::Dropped => "dropped",
            VerdictKind::LostBeyondNode => "lost_beyond_node",
            VerdictKind::Unanswered => "unanswered",
            VerdictKind::Rejected => "rejected",
            VerdictKind::Unknown => "unknown",
        }
    }

    /// Verdicts that rest on the absence of an event: they are never claimed on incomplete
    /// evidence (they become `unknown`).
    pub fn is_negative(self) -> bool {
        matches!(self, VerdictKind::LostBeyondNode | VerdictKind::Unanswered)
    }
}

/// Whether every event of the flow may be assumed seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    /// No event loss overlapped the flow and it ran its full course.
    Complete,
    /// Events may be missing; `evidence_note` says why.
    Incomplete,
}

/// Direction of a packet relative to the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Client to server (query, SYN, first UDP packet).
    Request,
    /// Server to client (answer, SYN-ACK, RST, ICMP error, UDP reply).
    Response,
}

/// Transport of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

impl Transport {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
    /// Upper-case name, for sentences.
    pub fn upper(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }
    /// The other transport.
    pub fn other(self) -> Transport {
        match self {
            Transport::Udp => Transport::Tcp,
            Transport::Tcp => Transport::Udp,
        }
    }
}

/// Observation point category of [`Where::stage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The client pod's host-side veth.
    ClientVeth,
    /// The host-side veth of a server pod on this node (e.g. a local CoreDNS replica).
    ServerVeth,
    /// A node uplink (primary or secondary ENI).
    Uplink,
    /// A branch ENI (security groups for pods).
    BranchEni,
    /// The trunk ENI.
    Trunk,
    /// Loopback.
    Loopback,
    /// An interface of another kind (bridge, tunnel, dummy).
    Other,
    /// Dropped by netfilter (iptables/nftables) on the node.
    Netfilter,
    /// Dropped by routing (no route, reverse-path filter, martian source).
    Routing,
    /// Dropped at the server's socket layer (no socket listening, buffer full).
    ServerSocket,
    /// Dropped at the client's socket layer (the client no longer listens).
    ClientSocket,
    /// Dropped inside the server pod's network namespace (other reasons).
    ServerPod,
    /// Dropped inside the client pod's network namespace (other reasons).
    ClientPod,
    /// Dropped elsewhere in the node's stack.
    Stack,
}

/// The last observation point of the flow, i.e. where it ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Where {
    /// Category of the point.
    pub stage: Stage,
    /// Interface name (null for drops without a device, e.g. in the OUTPUT path).
    pub interface: Option<String>,
    /// Interface kind (null when no interface).
    pub interface_kind: Option<IfaceKind>,
    /// Direction of the packet seen there.
    pub direction: Direction,
    /// Node name (the tracer's `--node`).
    pub node: String,
}

/// One observation of the flow.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PathEntry {
    /// Milliseconds since the flow's first sighting.
    pub t_ms: f64,
    /// Hook.
    pub hook: Hook,
    /// Interface name (null for drops without a device).
    pub interface: Option<String>,
    /// Interface kind (null when no interface).
    pub interface_kind: Option<IfaceKind>,
    /// Direction of the packet.
    pub direction: Direction,
    /// Source `ip:port` as seen there (for ICMP errors: of the quoted packet). Kept as an
    /// address and written out as text only when the line is: most healthy flows end in a
    /// summary and never are.
    pub src: SocketAddr,
    /// Destination `ip:port` as seen there (for ICMP errors: of the quoted packet).
    pub dst: SocketAddr,
    /// Attempt number: 0 for the first query/SYN, 1.. for client retries and TCP fallback.
    pub attempt: u32,
    /// What happened there: translations, flags, rcode, drop reason, ICMP type.
    pub note: Option<PathNote>,
}

/// What happened at a hop of the path, in parts joined by `; ` (`snat 10.0.0.5:40000→…`,
/// `SYN`, `NOERROR, 1 answer`). Kept as facts and written out as text only when the line is:
/// most healthy flows end in a summary and never are.
#[derive(Clone, Debug, PartialEq)]
pub struct PathNote(pub Vec<NotePart>);

/// One part of a [`PathNote`].
#[derive(Clone, Debug, PartialEq)]
pub enum NotePart {
    /// The first sighting of a client retry (`retry #n`).
    Retry(usize),
    /// The first sighting of the TCP fallback.
    TcpFallback,
    /// An address translation since the previous sighting: what (`dnat`, `un-snat`, …), from,
    /// to (ports left out when they are the same).
    Nat(&'static str, SocketAddr, SocketAddr),
    /// TCP flags of a control segment.
    Flags(TcpFlags),
    /// A DNS response.
    Answer {
        /// Response code (null: not readable).
        rcode: Option<Rcode>,
        /// Answer records.
        answers: u16,
        /// TC bit.
        truncated: bool,
    },
    /// An ICMP error.
    Icmp(IcmpKind),
    /// Anything else, already text (drops: rare, and their reason is text already).
    Text(String),
    /// The VLAN tag the packet carried.
    Vlan(u16),
}

impl std::fmt::Display for NotePart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Retry(n) => write!(f, "retry #{n}"),
            Self::TcpFallback => f.write_str("tcp fallback"),
            Self::Nat(what, a, b) if a.port() == b.port() => {
                write!(f, "{what} {}→{}", a.ip(), b.ip())
            }
            Self::Nat(what, a, b) => write!(f, "{what} {a}→{b}"),
            Self::Flags(fl) => write!(f, "{fl}"),
            Self::Answer {
                rcode,
                answers,
                truncated,
            } => {
                match rcode {
                    Some(r) => write!(f, "{r}")?,
                    None => f.write_str("answer")?,
                }
                let plural = if *answers == 1 { "" } else { "s" };
                write!(f, ", {answers} answer{plural}")?;
                if *truncated {
                    f.write_str("; truncated (TC)")?;
                }
                Ok(())
            }
            Self::Icmp(k) => write!(f, "icmp {k}"),
            Self::Text(t) => f.write_str(t),
            Self::Vlan(v) => write!(f, "vlan {v}"),
        }
    }
}

impl std::fmt::Display for PathNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, part) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{part}")?;
        }
        Ok(())
    }
}

impl Serialize for PathNote {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A kernel drop (present iff `verdict` is `dropped`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DropOut {
    /// Drop reason name from the kernel's BTF (`NETFILTER_DROP`, `IP_RPFILTER`, ...).
    pub reason: String,
    /// Raw reason value.
    pub reason_code: u32,
    /// Kernel location (`symbol+0xoff`).
    pub location: String,
    /// Device the packet was on (null when none).
    pub interface: Option<String>,
    /// Kind of that device (null when none).
    pub interface_kind: Option<IfaceKind>,
    /// Network namespace inode (0 when unknown).
    pub netns: u32,
    /// Whether the request or the response was dropped.
    pub direction: Direction,
    /// For a drop by a tc program (`TC_INGRESS` / `TC_EGRESS`): the other tools' programs
    /// attached at that hook, as the kernel lists them, in the order they run; null otherwise.
    pub programs: Option<Vec<HookProgram>>,
    /// Index of the device (not serialized; finalize looks the hook up by it).
    #[serde(skip)]
    pub ifindex: u32,
}

impl DropOut {
    /// The tc hook that dropped the packet (`Some(true)` ingress), for `TC_INGRESS` /
    /// `TC_EGRESS` drops.
    pub fn tc_hook(&self) -> Option<bool> {
        match self.reason.as_str() {
            "TC_INGRESS" => Some(true),
            "TC_EGRESS" => Some(false),
            _ => None,
        }
    }
}

/// How the request was rejected (present iff `verdict` is `rejected`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rejection {
    /// `icmp` or `tcp_rst`.
    pub by: RejectBy,
    /// ICMP error name (e.g. `port_unreachable`), for `icmp`.
    pub icmp: Option<IcmpKind>,
}

/// Kind of rejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectBy {
    /// An ICMP error quoting the request.
    Icmp,
    /// A TCP RST answering the SYN.
    TcpRst,
}

/// DNS facts (present iff `kind` is `dns`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DnsOut {
    /// Message id of the attempt the verdict is about (null if no DNS header was seen, e.g. a
    /// TCP connection whose SYN never got an answer).
    pub id: Option<u16>,
    /// Question name.
    pub qname: Option<String>,
    /// Question type.
    pub qtype: Option<QType>,
    /// Response code of the answer (null when none was seen).
    pub rcode: Option<Rcode>,
    /// Number of answer records (null when no answer was seen).
    pub answers: Option<u16>,
    /// The answer had the TC bit (truncated).
    pub truncated: bool,
    /// Answer delivered minus first query sighting, in ms (null when not answered).
    pub latency_ms: Option<f64>,
    /// Transport of the attempt the verdict is about.
    pub transport: Transport,
    /// Client retries linked into this flow.
    pub retries: u32,
    /// The client retried over TCP after a truncated UDP answer.
    pub tcp_fallback: bool,
}

/// Egress facts (present iff `kind` is `egress`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EgressOut {
    /// SYN retransmissions seen.
    pub retries: u32,
    /// First request sighting to reply sighting, in ms (null when no reply).
    pub latency_ms: Option<f64>,
    /// Source address after SNAT on the uplink (null when not SNATed or not seen leaving).
    pub snat_ip: Option<IpAddr>,
    /// Source port after SNAT.
    pub snat_port: Option<u16>,
}

/// Kubernetes identity of an endpoint, filled by the enrichment stage (all null until then).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodMeta {
    /// Pod name.
    pub pod: Option<String>,
    /// Pod namespace.
    pub namespace: Option<String>,
    /// Owning workload (`Deployment/coredns`, ...).
    pub workload: Option<String>,
    /// Node name.
    pub node: Option<String>,
    /// The pod's labels, when enrichment knows the pod (this node's pods, CoreDNS replicas).
    pub labels: Option<std::collections::BTreeMap<String, String>>,
}

/// The client side of a flow (pre-SNAT: the pod's own address).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Client {
    /// Address.
    pub ip: IpAddr,
    /// Port.
    pub port: u16,
    /// Kubernetes identity.
    #[serde(flatten)]
    pub meta: PodMeta,
    /// The pod (`namespace/name`) whose veth the request entered through, when the source
    /// address is not one of that pod's (spoofed, or a misconfigured pod): the flow is then not
    /// attributed to whoever owns the address. Filled by enrichment.
    pub veth_pod: Option<String>,
}

/// The server side of a flow (post-DNAT: the pod actually reached).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Server {
    /// Address after DNAT.
    pub ip: IpAddr,
    /// Port after DNAT.
    pub port: u16,
    /// The Service address the client used, when a DNAT was seen (e.g. the kube-dns ClusterIP).
    pub service_ip: Option<IpAddr>,
    /// The Service (`kube-system/kube-dns`), filled by enrichment.
    pub service: Option<String>,
    /// Kubernetes identity of the server pod.
    #[serde(flatten)]
    pub meta: PodMeta,
}

/// The interface through which the request left the node.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EgressInterface {
    /// Name (`eth0`, `vlan.eth.1`).
    pub name: String,
    /// Kind (`uplink`, `branch_eni`, `trunk`).
    pub kind: IfaceKind,
    /// VLAN id, for a branch ENI.
    pub vlan: Option<u16>,
    /// ENI id (`eni-...`), filled by enrichment from the pod's `vpc.amazonaws.com/pod-eni`.
    pub eni_id: Option<String>,
}

/// What the tracer on the server's node found about a query this node saw leave and never come
/// back ([`Verdict::peer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerFinding {
    /// The query never arrived at the peer's node: lost on the way there.
    RequestLost,
    /// The query arrived at the peer's node but never reached the replica's veth.
    NotDelivered,
    /// The query reached the replica, and no reply left the peer's node.
    NoReply,
    /// The replica replied and the reply left the peer's node: lost on the way back.
    ReplyLost,
    /// The peer could not answer; [`PeerOut::reason`] says why.
    Unknown,
}

impl PeerFinding {
    /// Every finding, in schema order.
    pub const ALL: [PeerFinding; 5] = [
        PeerFinding::RequestLost,
        PeerFinding::NotDelivered,
        PeerFinding::NoReply,
        PeerFinding::ReplyLost,
        PeerFinding::Unknown,
    ];

    /// Name as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerFinding::RequestLost => "request_lost",
            PeerFinding::NotDelivered => "not_delivered",
            PeerFinding::NoReply => "no_reply",
            PeerFinding::ReplyLost => "reply_lost",
            PeerFinding::Unknown => "unknown",
        }
    }
}

/// Why a peer could not answer ([`PeerFinding::Unknown`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerReason {
    /// No tracer pod is known on that node (or it has no address yet).
    NoTracer,
    /// The peer's address could not be reached (connection refused or failed).
    Unreachable,
    /// No answer within the deadline.
    Timeout,
    /// The peer refused the question or the TLS handshake failed (certificates from another
    /// CA, protocol mismatch).
    Refused,
    /// The peer may have missed events of that time (records lost on its side).
    PeerLoss,
    /// The peer's tracer was not running yet when the query was sent.
    PeerNotRunning,
    /// The query is older than what the peer still remembers (its ledger came round).
    BeyondHorizon,
    /// Too many questions were waiting: this one was not asked.
    Busy,
    /// The server's node is not known (no Kubernetes names for the server).
    NodeUnknown,
}

impl PeerReason {
    /// Name as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerReason::NoTracer => "no_tracer",
            PeerReason::Unreachable => "unreachable",
            PeerReason::Timeout => "timeout",
            PeerReason::Refused => "refused",
            PeerReason::PeerLoss => "peer_loss",
            PeerReason::PeerNotRunning => "peer_not_running",
            PeerReason::BeyondHorizon => "beyond_horizon",
            PeerReason::Busy => "busy",
            PeerReason::NodeUnknown => "node_unknown",
        }
    }
}

/// A sighting on the peer's node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerSighting {
    /// Interface on the peer's node (`eth0`, the replica's veth).
    pub interface: String,
    /// Wall-clock time on the peer's node (RFC 3339).
    pub time: Option<String>,
}

/// A drop on the peer's node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PeerDrop {
    /// Drop reason name (`NETFILTER_DROP`, ...).
    pub reason: String,
    /// Interface the packet was on (null when none).
    pub interface: Option<String>,
    /// Whether the query or the reply was dropped.
    pub direction: Direction,
}

/// The peer's side of a query lost beyond this node ([`Verdict::peer`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerOut {
    /// The node asked (the server's).
    pub node: String,
    /// What it found.
    pub finding: PeerFinding,
    /// Why it could not answer (iff `finding` is `unknown`).
    pub reason: Option<PeerReason>,
    /// Where and when the query arrived at the peer's node.
    pub arrived: Option<PeerSighting>,
    /// Where and when it left toward the replica (its pod veth).
    pub to_replica: Option<PeerSighting>,
    /// Where and when the reply left the peer's node.
    pub reply_left: Option<PeerSighting>,
    /// A drop of the query or reply on the peer's node.
    #[serde(rename = "drop")]
    pub drop_: Option<PeerDrop>,
}

/// A node counter that grew while a flow was open ([`Verdict::node_signals`]): sampled about
/// once a second, so it says "at that time", not "this packet".
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeSignal {
    /// `ena` (an ENI's allowance counters, as `ethtool -S` shows them) or `conntrack` (the
    /// node's conntrack statistics, as `conntrack -S` shows them).
    pub signal: &'static str,
    /// The ENI's interface (`ena`); null for node-wide counters.
    pub interface: Option<String>,
    /// The counter as the driver or kernel names it (`linklocal_allowance_exceeded`,
    /// `insert_failed`, ...).
    pub counter: String,
    /// How much it grew in the samples that overlap the flow.
    pub delta: u64,
}

/// One flow's verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// Always [`SCHEMA`].
    pub schema: &'static str,
    /// Wall-clock time (RFC 3339) of the first sighting, filled by the daemon.
    pub time: Option<String>,
    /// First sighting, CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    /// Last sighting, CLOCK_MONOTONIC ns.
    pub end_ns: u64,
    /// Node name.
    pub node: String,
    /// Join key, identical on every node for the same query/connection attempt:
    /// `dns:<transport>:<client ip:port>><server ip:port after DNAT>#<dns id>` or
    /// `<transport>:<pod ip:port before SNAT>><server ip:port>`.
    pub key: String,
    /// Keys of the flow's other attempts (client retries, TCP fallback), for joins.
    pub related_keys: Vec<String>,
    /// DNS or egress.
    pub kind: FlowKind,
    /// Transport of the attempt the verdict is about (for DNS, also `dns.transport`).
    pub transport: Transport,
    /// Outcome.
    pub verdict: VerdictKind,
    /// Whether all events may be assumed seen.
    pub evidence: Evidence,
    /// Why the evidence is incomplete (null when complete).
    pub evidence_note: Option<String>,
    /// Where the flow ended.
    #[serde(rename = "where")]
    pub where_: Where,
    /// Every sighting, in time order.
    pub path: Vec<PathEntry>,
    /// Sightings left out of `path` to bound memory.
    pub path_omitted: u32,
    /// The drop (iff `dropped`).
    pub drop: Option<DropOut>,
    /// The rejection (iff `rejected`).
    pub rejection: Option<Rejection>,
    /// DNS facts (iff `kind` is `dns`).
    pub dns: Option<DnsOut>,
    /// Egress facts (iff `kind` is `egress`).
    pub egress: Option<EgressOut>,
    /// Client.
    pub client: Client,
    /// Server.
    pub server: Server,
    /// Interface through which the request left the node (null if it did not leave through
    /// an uplink, branch ENI or trunk).
    pub egress_interface: Option<EgressInterface>,
    /// State of Kubernetes metadata, set by enrichment (e.g. `complete`, `partial`); null when
    /// enrichment did not run.
    pub enrichment: Option<String>,
    /// For `lost_beyond_node` toward a server on another node: what that node's tracer found
    /// (null when not asked).
    pub peer: Option<PeerOut>,
    /// Node counters that mean packets were lost and that grew while the flow was open (the
    /// ENA allowance counters of the node's ENIs for `lost_beyond_node`, the conntrack
    /// statistics for drops by netfilter). Empty when none did.
    pub node_signals: Vec<NodeSignal>,
    /// One sentence: the likely cause and where to look.
    pub hint: String,
    /// Facts behind the hint that are not in the JSON.
    #[serde(skip)]
    pub(crate) facts: HintFacts,
}

impl Verdict {
    /// The first sighting of the request entering this node through an exit (uplink, trunk,
    /// branch ENI): where a query that left through the VPC came back in.
    pub fn request_entered_by_exit(&self) -> Option<&PathEntry> {
        self.path.iter().find(|h| {
            h.direction == Direction::Request
                && h.hook == Hook::Ingress
                && h.interface_kind.is_some_and(super::flow::is_exit)
        })
    }
}

/// Where the client sits relative to this node, judged from the first request sighting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum ClientSide {
    /// A pod of this node (first seen entering at its veth).
    #[default]
    Pod,
    /// Another machine (first seen entering at an uplink/branch ENI/trunk).
    Remote,
    /// This node's own stack (host network), or unknown: first seen leaving or dropped.
    Host,
}

/// Context for the hint that is not part of the JSON.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct HintFacts {
    /// Flow window in seconds.
    pub window_s: f64,
    /// The other transport to the same server was answered recently (DNS lost verdicts).
    pub other_transport_ok: bool,
    /// This transport to the same server was answered recently while this flow was lost.
    pub same_transport_ok: bool,
    /// Summary of the earlier attempts' outcomes, e.g. "attempt 0 dropped (NETFILTER_DROP)".
    pub earlier: Option<String>,
    /// Where the client is.
    pub client_side: ClientSide,
    /// Interface of the first request sighting.
    pub first_iface: Option<String>,
    /// A truncated UDP answer was delivered and the client did not fall back to TCP.
    pub truncated_no_fallback: bool,
    /// A truncated UDP answer preceded the attempt the verdict is about (TCP fallback).
    pub after_truncation: bool,
    /// The verdict was downgraded to `unknown` from this one.
    pub downgraded_from: Option<VerdictKind>,
    /// The SYN-ACK/answer was seen at the node but its delivery to the client was not observable.
    pub delivery_unobserved: bool,
    /// A dropped reply came from this address, not from the one the client sent to (second).
    pub reply_from: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
    /// A dropped reply reached the client's side this long after the request, ms.
    pub reply_after_ms: Option<f64>,
    /// The client is a pod of this node (not host network), yet the request was first seen
    /// leaving toward the server, not entering at the pod's veth: the pod's veth is not traced,
    /// or this is the server's side of a query that went out through the VPC and came back with
    /// a new source port (a pod with its own security group asking a server on its own node).
    /// Set by finalize, from the names.
    pub client_pod_unseen: bool,
}
