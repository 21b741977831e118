//! Typed events decoded from kernel records: what every later stage (correlation, verdicts,
//! output) consumes. Nothing here touches kernel memory.

use std::net::IpAddr;

use serde::Serialize;

pub use super::values::{IcmpKind, QType, Rcode, TcpFlags};
pub use crate::capture::iface::{Iface, IfaceKind};

/// Where a packet was observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// tc ingress of an interface (the packet arrived on it).
    Ingress,
    /// tc egress of an interface (the packet left through it).
    Egress,
    /// The kernel freed the packet as a drop (skb:kfree_skb).
    Drop,
}

/// Transport of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP or ICMPv6 (for ICMP errors, the tuple is the quoted packet's).
    Icmp,
}

/// The DNS facts of one packet (header and first question).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DnsInfo {
    /// Message id.
    pub id: u16,
    /// True for a response (QR bit).
    pub response: bool,
    /// Response code, for responses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rcode: Option<Rcode>,
    /// TC bit: the UDP answer was truncated, the client should retry over TCP.
    pub truncated: bool,
    /// First question's name (lower case, without the trailing dot), when it could be decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qname: Option<String>,
    /// First question's type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qtype: Option<QType>,
    /// Number of answer records (responses).
    pub answers: u16,
}

/// A kernel drop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DropInfo {
    /// Drop reason name from the running kernel's BTF, or `UNKNOWN(n)`.
    pub reason: String,
    /// Raw reason value.
    pub reason_code: u32,
    /// Kernel location that freed the packet (`symbol+0xoff`), or its address in hex.
    pub location: String,
    /// Network namespace inode of the dropping device/socket (0 when unknown).
    pub netns: u32,
}

/// One packet of interest seen by the kernel programs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PacketEvent {
    /// Monotonic nanoseconds (CLOCK_MONOTONIC, as `bpf_ktime_get_ns`).
    pub ts_ns: u64,
    /// Observation point.
    pub hook: Hook,
    /// Interface (for drops: the device the packet was on, if any).
    pub iface: Iface,
    /// Transport.
    pub proto: Proto,
    /// Source address.
    pub src: IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port.
    pub dport: u16,
    /// TCP flags (for TCP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<TcpFlags>,
    /// ICMP error that quoted this tuple.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpKind>,
    /// 802.1Q VLAN id of the frame, if tagged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// IP length of the packet.
    pub len: u32,
    /// DNS facts when the packet is DNS and the header could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsInfo>,
    /// Drop facts when `hook` is `Drop`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop: Option<DropInfo>,
}
