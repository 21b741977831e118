//! The static specs of the lab's pods ([`POD_SPECS`]) and node ↔ VPC links ([`UPLINKS`]),
//! the input of both [`topology()`](super::topology()) and the builder, and the names and
//! files derived from them.

use std::net::Ipv4Addr;

use super::{
    BRANCH_ENI_ID, BRANCH_ENI_IFNAME, BRANCH_VLAN_ID, CLIENT_IP, COREDNS_A_IP, COREDNS_B_IP,
    InterfaceKind, KUBE_DNS_IP, NODE_A_IP, NODE_A_NAME, NODE_A_SECONDARY_IP, NODE_B_IP,
    NODE_B_NAME, NS_A_CLIENT, NS_A_COREDNS, NS_A_SGPOD, NS_B_COREDNS, NS_NODE_A, NS_NODE_B,
    ROUTER_A_IP, ROUTER_B_IP, SG_POD_IP, VETH_PREFIX_ENI, VETH_PREFIX_VLAN, host_veth_name,
    lab_mac,
};

/// Static description of one pod (the input to both the topology and the builder).
pub(crate) struct PodSpec {
    pub namespace: &'static str,
    pub name: &'static str,
    pub ip: Ipv4Addr,
    pub netns: &'static str,
    pub node_netns: &'static str,
    pub node_name: &'static str,
    pub prefix: &'static str,
    pub workload: &'static str,
    pub app_label: (&'static str, &'static str),
    /// Link number for [`lab_mac`].
    pub link: u8,
    /// Whether node A's main table routes the pod IP to its veth (false for the strict-mode pod).
    pub main_route: bool,
    /// Replica id for CoreDNS pods.
    pub replica: Option<&'static str>,
}

pub(crate) const POD_SPECS: [PodSpec; 4] = [
    PodSpec {
        namespace: "default",
        name: "client",
        ip: CLIENT_IP,
        netns: NS_A_CLIENT,
        node_netns: NS_NODE_A,
        node_name: NODE_A_NAME,
        prefix: VETH_PREFIX_ENI,
        workload: "client",
        app_label: ("app", "client"),
        link: 0x10,
        main_route: true,
        replica: None,
    },
    PodSpec {
        namespace: "kube-system",
        name: "coredns-a",
        ip: COREDNS_A_IP,
        netns: NS_A_COREDNS,
        node_netns: NS_NODE_A,
        node_name: NODE_A_NAME,
        prefix: VETH_PREFIX_ENI,
        workload: "coredns",
        app_label: ("k8s-app", "kube-dns"),
        link: 0x11,
        main_route: true,
        replica: Some("coredns-a"),
    },
    PodSpec {
        namespace: "default",
        name: "sg-client",
        ip: SG_POD_IP,
        netns: NS_A_SGPOD,
        node_netns: NS_NODE_A,
        node_name: NODE_A_NAME,
        prefix: VETH_PREFIX_VLAN,
        workload: "sg-client",
        app_label: ("app", "sg-client"),
        link: 0x12,
        main_route: false,
        replica: None,
    },
    PodSpec {
        namespace: "kube-system",
        name: "coredns-b",
        ip: COREDNS_B_IP,
        netns: NS_B_COREDNS,
        node_netns: NS_NODE_B,
        node_name: NODE_B_NAME,
        prefix: VETH_PREFIX_ENI,
        workload: "coredns",
        app_label: ("k8s-app", "kube-dns"),
        link: 0x20,
        main_route: true,
        replica: Some("coredns-b"),
    },
];

impl PodSpec {
    pub fn host_veth(&self) -> String {
        host_veth_name(self.prefix, self.namespace, self.name)
    }
    pub fn host_mac(&self) -> String {
        lab_mac(self.link, 0)
    }
    pub fn pod_mac(&self) -> String {
        lab_mac(self.link, 1)
    }
}

/// Static description of one node ↔ VPC link.
pub(crate) struct UplinkSpec {
    pub node_netns: &'static str,
    pub node_if: &'static str,
    pub kind: InterfaceKind,
    pub ip: Option<Ipv4Addr>,
    pub eni_id: &'static str,
    pub vlan_id: Option<u16>,
    pub vpc_if: &'static str,
    pub router_ip: Ipv4Addr,
    pub link: u8,
}

impl UplinkSpec {
    pub fn node_mac(&self) -> String {
        lab_mac(self.link, 0)
    }
    pub fn vpc_mac(&self) -> String {
        lab_mac(self.link, 1)
    }
}

pub(crate) const UPLINKS: [UplinkSpec; 4] = [
    UplinkSpec {
        node_netns: NS_NODE_A,
        node_if: "eth0",
        kind: InterfaceKind::PrimaryEni,
        ip: Some(NODE_A_IP),
        eni_id: "eni-0a4a7c9e1d2f30010",
        vlan_id: None,
        vpc_if: "a-eth0",
        router_ip: ROUTER_A_IP,
        link: 0x01,
    },
    UplinkSpec {
        node_netns: NS_NODE_A,
        node_if: "eth1",
        kind: InterfaceKind::SecondaryEni,
        ip: Some(NODE_A_SECONDARY_IP),
        eni_id: "eni-0a4a7c9e1d2f30011",
        vlan_id: None,
        vpc_if: "a-eth1",
        router_ip: ROUTER_A_IP,
        link: 0x02,
    },
    UplinkSpec {
        node_netns: NS_NODE_A,
        node_if: BRANCH_ENI_IFNAME,
        kind: InterfaceKind::BranchEni,
        ip: None,
        eni_id: BRANCH_ENI_ID,
        vlan_id: Some(BRANCH_VLAN_ID),
        vpc_if: "a-trunk1",
        router_ip: ROUTER_A_IP,
        link: 0x03,
    },
    UplinkSpec {
        node_netns: NS_NODE_B,
        node_if: "eth0",
        kind: InterfaceKind::PrimaryEni,
        ip: Some(NODE_B_IP),
        eni_id: "eni-0b5b8d0f2e3a40010",
        vlan_id: None,
        vpc_if: "b-eth0",
        router_ip: ROUTER_B_IP,
        link: 0x04,
    },
];

/// Link number of the VPC ↔ internet link.
pub(crate) const INET_LINK: u8 = 0x05;
/// Interface name of the VPC ↔ internet link (same name on both sides).
pub(crate) const INET_IFNAME: &str = "inet0";

/// The uplink spec by VPC-side interface name.
pub(crate) fn uplink(vpc_if: &str) -> Option<&'static UplinkSpec> {
    UPLINKS.iter().find(|u| u.vpc_if == vpc_if)
}

/// The resolv.conf kubelet writes for a `ClusterFirst` pod in `namespace`.
pub fn pod_resolv_conf(namespace: &str) -> String {
    format!(
        "search {namespace}.svc.cluster.local svc.cluster.local cluster.local\n\
         nameserver {KUBE_DNS_IP}\n\
         options ndots:5\n"
    )
}

/// Where `ip netns exec` finds a namespace's own resolv.conf (bind-mounted over /etc/resolv.conf).
pub fn netns_etc_dir(netns: &str) -> std::path::PathBuf {
    std::path::Path::new("/etc/netns").join(netns)
}

/// The host veth name of pod default/client.
pub fn client_veth() -> String {
    host_veth_name(VETH_PREFIX_ENI, "default", "client")
}

/// The host veth name of pod kube-system/coredns-a.
pub fn coredns_a_veth() -> String {
    host_veth_name(VETH_PREFIX_ENI, "kube-system", "coredns-a")
}

/// The host veth name of pod default/sg-client.
pub fn sg_pod_veth() -> String {
    host_veth_name(VETH_PREFIX_VLAN, "default", "sg-client")
}
