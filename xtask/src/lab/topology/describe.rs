//! The lab's Kubernetes-side description: [`topology()`] (nodes, pods, Services, the VPC and
//! the internet side) and the DNS data the replicas serve ([`dns_records`]).

use std::collections::BTreeMap;

use super::specs::{INET_IFNAME, INET_LINK, POD_SPECS, UPLINKS, UplinkSpec, uplink};
use super::{
    BRANCH_ENI_ID, BRANCH_VLAN_ID, BranchEni, COREDNS_A_IP, COREDNS_B_IP, DNS_PORT, DnsRecord,
    Endpoint, INET_HTTP_PORT, INET_LINK_IP, INET_SERVER_IP, INET_UDP_ECHO_PORT, InterfaceKind,
    Internet, KUBE_DNS_IP, KUBE_SVC_DNS_TCP, KUBE_SVC_DNS_UDP, NODE_A_IP, NODE_A_NAME, NODE_B_IP,
    NODE_B_NAME, NS_INET, NS_NODE_A, NS_NODE_B, NS_VPC, Node, NodeInterface, Pod, ROUTER_INET_IP,
    SERVICE_CIDR, SG_POD_IP, STATE_DIR, SUBNET_A_CIDR, SUBNET_B_CIDR, Service, ServicePort,
    Topology, VETH_PREFIX_VLAN, VPC_CIDR, Vpc, VpcLink, Workload, lab_mac,
};

/// A label or annotation map from `(key, value)` pairs.
fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The branch ENI of the security-group pod (on node A's trunk).
fn branch_eni() -> BranchEni {
    let mac = uplink("a-trunk1")
        .map(UplinkSpec::node_mac)
        .unwrap_or_default();
    BranchEni {
        eni_id: BRANCH_ENI_ID.to_owned(),
        if_address: mac,
        private_ip: SG_POD_IP,
        vlan_id: BRANCH_VLAN_ID,
        subnet_cidr: SUBNET_A_CIDR.to_owned(),
    }
}

/// DNS data both replicas serve. `whoami.lab.tracer.` is per replica and not listed here.
pub fn dns_records() -> Vec<DnsRecord> {
    let rec = |name: &str, rtype: &str, data: &str| DnsRecord {
        name: name.to_owned(),
        rtype: rtype.to_owned(),
        data: data.to_owned(),
    };
    vec![
        rec("kubernetes.default.svc.cluster.local.", "A", "198.19.0.1"),
        rec(
            "kube-dns.kube-system.svc.cluster.local.",
            "A",
            "198.19.0.10",
        ),
        rec("web.shop.svc.cluster.local.", "A", "198.19.0.80"),
        rec("example.lab.tracer.", "A", "203.0.113.80"),
        rec("whoami.lab.tracer.", "TXT", "<replica name>"),
        rec("refused.lab.tracer.", "RCODE", "REFUSED"),
        rec(".", "RCODE", "NXDOMAIN (anything else)"),
    ]
}

/// The lab's topology (pure; does not look at the system).
pub fn topology() -> Topology {
    let mut node_a = Node {
        name: NODE_A_NAME.to_owned(),
        netns: NS_NODE_A.to_owned(),
        primary_ip: NODE_A_IP,
        subnet_cidr: SUBNET_A_CIDR.to_owned(),
        interfaces: Vec::new(),
    };
    let mut node_b = Node {
        name: NODE_B_NAME.to_owned(),
        netns: NS_NODE_B.to_owned(),
        primary_ip: NODE_B_IP,
        subnet_cidr: SUBNET_B_CIDR.to_owned(),
        interfaces: Vec::new(),
    };
    let mut links = Vec::new();
    for u in &UPLINKS {
        let iface = NodeInterface {
            name: u.node_if.to_owned(),
            kind: u.kind,
            mac: u.node_mac(),
            ip: u.ip,
            eni_id: Some(u.eni_id.to_owned()),
            vlan_id: u.vlan_id,
            peer: u.vpc_if.to_owned(),
            peer_netns: NS_VPC.to_owned(),
            peer_mac: u.vpc_mac(),
        };
        if u.node_netns == NS_NODE_A {
            node_a.interfaces.push(iface);
        } else {
            node_b.interfaces.push(iface);
        }
        links.push(VpcLink {
            name: u.vpc_if.to_owned(),
            mac: u.vpc_mac(),
            router_ip: u.router_ip,
            peer_netns: u.node_netns.to_owned(),
            peer: u.node_if.to_owned(),
        });
    }
    links.push(VpcLink {
        name: INET_IFNAME.to_owned(),
        mac: lab_mac(INET_LINK, 1),
        router_ip: ROUTER_INET_IP,
        peer_netns: NS_INET.to_owned(),
        peer: INET_IFNAME.to_owned(),
    });

    let mut pods = Vec::new();
    for p in &POD_SPECS {
        let iface = NodeInterface {
            name: p.host_veth(),
            kind: InterfaceKind::PodVeth,
            mac: p.host_mac(),
            ip: None,
            eni_id: None,
            vlan_id: None,
            peer: "eth0".to_owned(),
            peer_netns: p.netns.to_owned(),
            peer_mac: p.pod_mac(),
        };
        if p.node_netns == NS_NODE_A {
            node_a.interfaces.push(iface);
        } else {
            node_b.interfaces.push(iface);
        }
        let is_sg = p.prefix == VETH_PREFIX_VLAN;
        let eni = is_sg.then(branch_eni);
        let mut annotations = BTreeMap::new();
        if let Some(eni) = &eni {
            // The annotation value is a JSON list; serializing a plain struct cannot fail.
            let value = serde_json::to_string(&[eni]).unwrap_or_default();
            annotations.insert("vpc.amazonaws.com/pod-eni".to_owned(), value);
        }
        pods.push(Pod {
            namespace: p.namespace.to_owned(),
            name: p.name.to_owned(),
            ip: p.ip,
            node: p.node_name.to_owned(),
            node_netns: p.node_netns.to_owned(),
            netns: p.netns.to_owned(),
            host_veth: p.host_veth(),
            veth_prefix: p.prefix.to_owned(),
            host_veth_mac: p.host_mac(),
            pod_mac: p.pod_mac(),
            workload: Workload {
                kind: "Deployment".to_owned(),
                name: p.workload.to_owned(),
            },
            labels: map(&[p.app_label]),
            annotations,
            branch_eni: eni,
            dns_replica: p.replica.map(str::to_owned),
            dns_policy: if p.replica.is_some() {
                "Default"
            } else {
                "ClusterFirst"
            }
            .to_owned(),
        });
    }

    let kube_dns = Service {
        namespace: "kube-system".to_owned(),
        name: "kube-dns".to_owned(),
        cluster_ip: KUBE_DNS_IP,
        ports: vec![
            ServicePort {
                name: "dns".to_owned(),
                protocol: "UDP".to_owned(),
                port: DNS_PORT,
                target_port: DNS_PORT,
                iptables_chain: KUBE_SVC_DNS_UDP.to_owned(),
            },
            ServicePort {
                name: "dns-tcp".to_owned(),
                protocol: "TCP".to_owned(),
                port: DNS_PORT,
                target_port: DNS_PORT,
                iptables_chain: KUBE_SVC_DNS_TCP.to_owned(),
            },
        ],
        selector: map(&[("k8s-app", "kube-dns")]),
        endpoints: vec![
            Endpoint {
                ip: COREDNS_A_IP,
                pod: "kube-system/coredns-a".to_owned(),
                node: NODE_A_NAME.to_owned(),
                pin: "a".to_owned(),
            },
            Endpoint {
                ip: COREDNS_B_IP,
                pod: "kube-system/coredns-b".to_owned(),
                node: NODE_B_NAME.to_owned(),
                pin: "b".to_owned(),
            },
        ],
    };

    Topology {
        state_dir: STATE_DIR.to_owned(),
        vpc: Vpc {
            netns: NS_VPC.to_owned(),
            cidr: VPC_CIDR.to_owned(),
            service_cidr: SERVICE_CIDR.to_owned(),
            links,
        },
        nodes: vec![node_a, node_b],
        pods,
        services: vec![kube_dns],
        internet: Internet {
            netns: NS_INET.to_owned(),
            link_ip: INET_LINK_IP,
            server_ip: INET_SERVER_IP,
            http_port: INET_HTTP_PORT,
            udp_echo_port: INET_UDP_ECHO_PORT,
        },
        dns_records: dns_records(),
    }
}
