//! The lab's fixed shape: names, addresses, MACs and the Kubernetes-side description.
//!
//! Everything here is pure data (no system access), so tests and the tracer's demo can use it
//! without root and without the lab being up.
//!
//! Here: the names, addresses and the serialized description's types. The static pod and
//! uplink specs the builder works from are in [`specs`], the description itself
//! ([`topology()`], [`dns_records`]) in [`describe`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

mod describe;
mod specs;

pub use describe::{dns_records, topology};
pub(crate) use specs::{INET_IFNAME, INET_LINK, POD_SPECS, UPLINKS, uplink};
pub use specs::{client_veth, coredns_a_veth, netns_etc_dir, pod_resolv_conf, sg_pod_veth};

/// Directory holding the lab's runtime state (unbound configs, pid files, logs, topology.json).
pub const STATE_DIR: &str = "/run/tracer-lab";
/// File flocked by [`super::LabLock`] so separate processes using the lab serialize.
pub const LOCK_FILE: &str = "/run/tracer-lab.lock";
/// Name of the topology file written at `up` inside [`STATE_DIR`].
pub const TOPOLOGY_FILE: &str = "topology.json";

/// Every namespace the lab creates starts with this prefix; `down` deletes all of them.
pub const NS_PREFIX: &str = "trl-";
/// The VPC router namespace (security groups, NACLs and VPC routing live here).
pub const NS_VPC: &str = "trl-vpc";
/// Node A's host namespace: the tracer runs here.
pub const NS_NODE_A: &str = "trl-node-a";
/// Node B's host namespace.
pub const NS_NODE_B: &str = "trl-node-b";
/// The "internet" namespace (egress target).
pub const NS_INET: &str = "trl-inet";
/// Namespace of pod default/client on node A.
pub const NS_A_CLIENT: &str = "trl-a-client";
/// Namespace of pod kube-system/coredns-a on node A.
pub const NS_A_COREDNS: &str = "trl-a-coredns";
/// Namespace of pod default/sg-client (security groups for pods, strict mode) on node A.
pub const NS_A_SGPOD: &str = "trl-a-sgpod";
/// Namespace of pod kube-system/coredns-b on node B.
pub const NS_B_COREDNS: &str = "trl-b-coredns";
/// All lab namespaces in creation order.
pub const ALL_NAMESPACES: [&str; 8] = [
    NS_VPC,
    NS_NODE_A,
    NS_NODE_B,
    NS_INET,
    NS_A_CLIENT,
    NS_A_COREDNS,
    NS_A_SGPOD,
    NS_B_COREDNS,
];

/// The VPC CIDR (what VPC CNI excludes from SNAT).
pub const VPC_CIDR: &str = "198.18.0.0/16";
/// Node A's subnet.
pub const SUBNET_A_CIDR: &str = "198.18.1.0/24";
/// Node B's subnet.
pub const SUBNET_B_CIDR: &str = "198.18.2.0/24";
/// Kubernetes Service CIDR (ClusterIPs).
pub const SERVICE_CIDR: &str = "198.19.0.0/16";
/// Everything the lab routes internally (RFC 2544 test range); the internet routes it back to the VPC.
pub const LAB_CIDR: &str = "198.18.0.0/15";
/// The "internet" prefix (TEST-NET-3).
pub const INTERNET_CIDR: &str = "203.0.113.0/24";

/// VPC router address on the links facing node A (a-eth0, a-eth1, a-trunk1).
pub const ROUTER_A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// VPC router address on the link facing node B (b-eth0).
pub const ROUTER_B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
/// VPC router address on the /30 toward the internet namespace.
pub const ROUTER_INET_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 1);
/// The internet namespace's address on the /30 toward the VPC.
pub const INET_LINK_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 2);
/// Prefix length of the VPC ↔ internet link.
pub const INET_LINK_PREFIX: u8 = 30;

/// Node A primary ENI (eth0) address.
pub const NODE_A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
/// Node A secondary ENI (eth1) address.
pub const NODE_A_SECONDARY_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
/// Node B primary ENI (eth0) address.
pub const NODE_B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 10);
/// Pod default/client.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 21);
/// Pod kube-system/coredns-a (CoreDNS replica on node A).
pub const COREDNS_A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 30);
/// Pod default/sg-client (branch ENI, strict mode).
pub const SG_POD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 40);
/// Pod kube-system/coredns-b (CoreDNS replica on node B).
pub const COREDNS_B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 30);
/// The kube-dns Service ClusterIP (DNATed on node A).
pub const KUBE_DNS_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// DNS port.
pub const DNS_PORT: u16 = 53;
/// VPC CNI's in-pod gateway (static ARP entry to the host veth).
pub const POD_GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The internet server address (on trl-inet's loopback).
pub const INET_SERVER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 80);
/// TCP port where the internet server answers `hello`.
pub const INET_HTTP_PORT: u16 = 80;
/// UDP echo port on the internet server.
pub const INET_UDP_ECHO_PORT: u16 = 7;

/// Branch ENI of pod default/sg-client.
pub const BRANCH_ENI_ID: &str = "eni-0b4a7c9e1d2f30001";
/// VLAN id of the branch ENI.
pub const BRANCH_VLAN_ID: u16 = 1;
/// Node A interface standing in for the branch ENI's VLAN device.
pub const BRANCH_ENI_IFNAME: &str = "vlan.eth.1";
/// Route table of the branch ENI (VPC CNI: vlanId + 100).
pub const BRANCH_ROUTE_TABLE: u32 = 101;
/// `ip rule` preference VPC CNI uses for strict-mode branch ENI rules.
pub const BRANCH_RULE_PREF: u32 = 10;

/// kube-proxy's chain for kube-system/kube-dns:dns (UDP). kube-proxy names it
/// `KUBE-SVC-` + base32(sha256("kube-system/kube-dns:dns" + "udp"))[..16]; this is the name seen on
/// every real cluster.
pub const KUBE_SVC_DNS_UDP: &str = "KUBE-SVC-TCOU7JCQXEZGVUNU";
/// kube-proxy's chain for kube-system/kube-dns:dns-tcp (TCP).
pub const KUBE_SVC_DNS_TCP: &str = "KUBE-SVC-ERIFXISQEP7F7OF4";
/// Endpoint chain: dns (UDP) → coredns-a. `KUBE-SEP-` + base32(sha256(port name + proto + endpoint))[..16].
pub const KUBE_SEP_DNS_UDP_A: &str = "KUBE-SEP-MYTBDIO3MWUD2YVJ";
/// Endpoint chain: dns (UDP) → coredns-b.
pub const KUBE_SEP_DNS_UDP_B: &str = "KUBE-SEP-KEI2GHL4ZUWPBHCI";
/// Endpoint chain: dns-tcp (TCP) → coredns-a.
pub const KUBE_SEP_DNS_TCP_A: &str = "KUBE-SEP-IYCBFYB2V4VHYS5Q";
/// Endpoint chain: dns-tcp (TCP) → coredns-b.
pub const KUBE_SEP_DNS_TCP_B: &str = "KUBE-SEP-QDXJUIPCSVVJCHKI";
/// VPC CNI's SNAT chain on node A.
pub const SNAT_CHAIN: &str = "AWS-SNAT-CHAIN-0";
/// Node A chain (jumped to from FORWARD) standing in for a NetworkPolicy engine.
pub const NETPOL_CHAIN: &str = "TRACER-LAB-NETPOL";
/// Node A chain (jumped to from FORWARD) standing in for a firewall on the way back to pods
/// (failure `netpol-drop-dns-reply`).
pub const NETPOL_REPLY_CHAIN: &str = "TRACER-LAB-NETPOL-REPLY";
/// Node A raw-table chain (jumped to from PREROUTING) for NOTRACK rules (failure
/// `reply-notrack-a`).
pub const RAW_CHAIN: &str = "TRACER-LAB-RAW";
/// VPC chain: security group of node A's ENIs toward node B (failure 2).
pub const VPC_NODE_SG_CHAIN: &str = "TRL-VPC-NODE-SG";
/// VPC chain: security group of the branch ENI (failure 3).
pub const VPC_POD_SG_CHAIN: &str = "TRL-VPC-POD-SG";
/// VPC chain: network ACL on node A's subnet (failure 4).
pub const VPC_NACL_CHAIN: &str = "TRL-VPC-NACL";

pub use tracer_common::naming::{VETH_PREFIX_ENI, VETH_PREFIX_VLAN, host_veth_name};

/// A locally administered MAC the lab assigns (02:74:72 = "tr"), deterministic per link and side.
pub(crate) fn lab_mac(link: u8, side: u8) -> String {
    format!("02:74:72:00:{link:02x}:{side:02x}")
}

/// What an interface is, from the point of view of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterfaceKind {
    /// The instance's primary ENI (eth0).
    PrimaryEni,
    /// A secondary ENI (eth1, ...).
    SecondaryEni,
    /// A branch ENI (`vlan.eth.N`) on the trunk.
    BranchEni,
    /// A pod's host-side veth.
    PodVeth,
}

/// One interface in a node's host namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInterface {
    /// Interface name inside the node namespace.
    pub name: String,
    /// Classification.
    pub kind: InterfaceKind,
    /// MAC address.
    pub mac: String,
    /// IPv4 address on the interface (/32), if any.
    pub ip: Option<Ipv4Addr>,
    /// ENI id, for ENIs.
    pub eni_id: Option<String>,
    /// VLAN id, for branch ENIs.
    pub vlan_id: Option<u16>,
    /// Name of the peer interface in the VPC namespace (for ENIs) or `eth0` in the pod (veths).
    pub peer: String,
    /// Namespace holding the peer.
    pub peer_netns: String,
    /// MAC of the peer.
    pub peer_mac: String,
}

/// A Kubernetes node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    /// Node name as Kubernetes shows it (EC2 private DNS name shape).
    pub name: String,
    /// Network namespace standing in for the instance.
    pub netns: String,
    /// Primary private IP (InternalIP).
    pub primary_ip: Ipv4Addr,
    /// Subnet of the node.
    pub subnet_cidr: String,
    /// ENIs and pod veths of the node.
    pub interfaces: Vec<NodeInterface>,
}

/// The owner of a pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workload {
    /// e.g. `Deployment`.
    pub kind: String,
    /// e.g. `coredns`.
    pub name: String,
}

/// One entry of the `vpc.amazonaws.com/pod-eni` annotation (same JSON field names).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BranchEni {
    /// ENI id.
    pub eni_id: String,
    /// MAC address of the branch ENI.
    pub if_address: String,
    /// Pod IP on the branch ENI.
    pub private_ip: Ipv4Addr,
    /// VLAN id on the trunk.
    pub vlan_id: u16,
    /// Subnet of the ENI.
    pub subnet_cidr: String,
}

/// A pod of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pod {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Name of the node it runs on.
    pub node: String,
    /// Network namespace of the node it runs on.
    pub node_netns: String,
    /// The pod's own network namespace.
    pub netns: String,
    /// Host-side veth name (VPC CNI rule).
    pub host_veth: String,
    /// Prefix used for the host veth name (`eni` or `vlan`).
    pub veth_prefix: String,
    /// MAC of the host-side veth (the pod's static neighbour for 169.254.1.1).
    pub host_veth_mac: String,
    /// MAC of the pod's eth0.
    pub pod_mac: String,
    /// Owning workload.
    pub workload: Workload,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Pod annotations (`vpc.amazonaws.com/pod-eni` for the branch-ENI pod).
    pub annotations: BTreeMap<String, String>,
    /// Branch ENI, for security-groups-for-pods pods.
    pub branch_eni: Option<BranchEni>,
    /// For CoreDNS pods: the TXT of `whoami.lab.tracer.` this replica answers.
    pub dns_replica: Option<String>,
    /// Kubernetes dnsPolicy: `ClusterFirst` pods get [`pod_resolv_conf`] as /etc/resolv.conf
    /// under `ip netns exec`; `Default` (CoreDNS) pods keep the host's.
    pub dns_policy: String,
}

/// One port of a Service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServicePort {
    /// Port name.
    pub name: String,
    /// `UDP` or `TCP`.
    pub protocol: String,
    /// Service port.
    pub port: u16,
    /// Target port on the endpoints.
    pub target_port: u16,
    /// kube-proxy KUBE-SVC chain on node A.
    pub iptables_chain: String,
}

/// One endpoint of a Service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    /// Endpoint IP.
    pub ip: Ipv4Addr,
    /// `namespace/name` of the pod.
    pub pod: String,
    /// Node name.
    pub node: String,
    /// Which pin selects it alone (`a` or `b`).
    pub pin: String,
}

/// A Kubernetes Service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Service {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Selector.
    pub selector: BTreeMap<String, String>,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// One link of the VPC router.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VpcLink {
    /// Interface name in the VPC namespace.
    pub name: String,
    /// MAC of the VPC side.
    pub mac: String,
    /// Router address on this link.
    pub router_ip: Ipv4Addr,
    /// Namespace at the other end.
    pub peer_netns: String,
    /// Interface name at the other end.
    pub peer: String,
}

/// The VPC router.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vpc {
    /// Namespace.
    pub netns: String,
    /// VPC CIDR.
    pub cidr: String,
    /// Service CIDR (not routed; DNATed on nodes).
    pub service_cidr: String,
    /// Router links.
    pub links: Vec<VpcLink>,
}

/// The internet namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Internet {
    /// Namespace.
    pub netns: String,
    /// Address on the link to the VPC.
    pub link_ip: Ipv4Addr,
    /// Server address.
    pub server_ip: Ipv4Addr,
    /// TCP port answering `hello`.
    pub http_port: u16,
    /// UDP echo port.
    pub udp_echo_port: u16,
}

/// One record the lab's DNS servers answer (both replicas; `whoami` differs per replica).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DnsRecord {
    /// Owner name (absolute).
    pub name: String,
    /// Record type, or the rcode for names configured to fail.
    pub rtype: String,
    /// Record data (or rcode).
    pub data: String,
}

/// Everything a test, the demo or Kubernetes enrichment needs to know about the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Topology {
    /// Runtime state directory.
    pub state_dir: String,
    /// The VPC router.
    pub vpc: Vpc,
    /// Kubernetes nodes.
    pub nodes: Vec<Node>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// Services.
    pub services: Vec<Service>,
    /// The internet.
    pub internet: Internet,
    /// DNS data shared by both replicas (besides `whoami.lab.tracer.`).
    pub dns_records: Vec<DnsRecord>,
}

impl Topology {
    /// The node with this Kubernetes name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The pod `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    /// The pod whose network namespace is `netns`.
    pub fn pod_by_netns(&self, netns: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.netns == netns)
    }
}

/// Name of node A in Kubernetes.
pub const NODE_A_NAME: &str = "ip-198-18-1-10.lab.internal";
/// Name of node B in Kubernetes.
pub const NODE_B_NAME: &str = "ip-198-18-2-10.lab.internal";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_veth_names_fit_linux() {
        // Linux interface names are at most 15 bytes.
        for p in &POD_SPECS {
            assert!(p.host_veth().len() <= 15, "{}", p.host_veth());
        }
    }

    #[test]
    fn macs_are_unique_and_local() {
        let mut macs: Vec<String> = Vec::new();
        for u in &UPLINKS {
            macs.push(u.node_mac());
            macs.push(u.vpc_mac());
        }
        for p in &POD_SPECS {
            macs.push(p.host_mac());
            macs.push(p.pod_mac());
        }
        macs.push(lab_mac(INET_LINK, 0));
        macs.push(lab_mac(INET_LINK, 1));
        let n = macs.len();
        macs.sort();
        macs.dedup();
        assert_eq!(macs.len(), n, "duplicate MAC");
        assert!(macs.iter().all(|m| m.starts_with("02:")));
    }

    #[test]
    fn topology_json_has_enrichment_shape() {
        let t = topology();
        let v = serde_json::to_value(&t).expect("topology serializes");
        let pods = v["pods"].as_array().expect("pods is a list");
        assert_eq!(pods.len(), 4);
        let sg = t.pod("default", "sg-client").expect("sg-client pod");
        let ann = sg
            .annotations
            .get("vpc.amazonaws.com/pod-eni")
            .expect("pod-eni annotation");
        let parsed: serde_json::Value = serde_json::from_str(ann).expect("annotation is JSON");
        assert_eq!(parsed[0]["eniId"], "eni-0b4a7c9e1d2f30001");
        assert_eq!(parsed[0]["vlanId"], 1);
        assert_eq!(parsed[0]["privateIp"], "198.18.1.40");
        assert_eq!(parsed[0]["subnetCidr"], "198.18.1.0/24");
        assert_eq!(parsed[0]["ifAddress"], "02:74:72:00:03:00");
        let dns = t.pod("kube-system", "coredns-b");
        assert_eq!(
            dns.and_then(|p| p.labels.get("k8s-app"))
                .map(String::as_str),
            Some("kube-dns")
        );
        assert_eq!(v["services"][0]["cluster_ip"], "198.19.0.10");
        assert_eq!(v["nodes"][0]["name"], "ip-198-18-1-10.lab.internal");
        assert_eq!(v["pods"][0]["workload"]["kind"], "Deployment");
        assert_eq!(t.node(NODE_A_NAME).map(|n| n.interfaces.len()), Some(3 + 3));
    }
}
