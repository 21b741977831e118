//! Builds the lab: namespaces, links, addresses, neighbours, routes, rules, iptables, daemons.

use std::fs;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result};

use super::cmd::{ip, iptables_restore, run, sysctl};
use super::daemon::{Replica, inet_daemons, state_path, unbound_conf};
use super::failure::{Pin, pin_rules};
use super::topology::{
    ALL_NAMESPACES, BRANCH_ENI_IFNAME, BRANCH_ROUTE_TABLE, BRANCH_RULE_PREF, CLIENT_IP,
    COREDNS_A_IP, COREDNS_B_IP, INET_IFNAME, INET_LINK, INET_LINK_IP, INET_LINK_PREFIX,
    INET_SERVER_IP, INTERNET_CIDR, KUBE_DNS_IP, KUBE_SEP_DNS_TCP_A, KUBE_SEP_DNS_TCP_B,
    KUBE_SEP_DNS_UDP_A, KUBE_SEP_DNS_UDP_B, KUBE_SVC_DNS_TCP, KUBE_SVC_DNS_UDP, LAB_CIDR,
    NETPOL_CHAIN, NETPOL_REPLY_CHAIN, NODE_A_IP, NODE_A_SECONDARY_IP, NODE_B_IP, NS_INET,
    NS_NODE_A, NS_NODE_B, NS_VPC, POD_GATEWAY_IP, POD_SPECS, RAW_CHAIN, ROUTER_A_IP, ROUTER_B_IP,
    ROUTER_INET_IP, SG_POD_IP, SNAT_CHAIN, STATE_DIR, UPLINKS, VPC_CIDR, VPC_NACL_CHAIN,
    VPC_NODE_SG_CHAIN, VPC_POD_SG_CHAIN, lab_mac, uplink,
};
use super::topology::{netns_etc_dir, pod_resolv_conf};

/// Namespaces that forward packets (routers).
const ROUTERS: [&str; 3] = [NS_VPC, NS_NODE_A, NS_NODE_B];

/// Builds everything. Assumes no lab namespace exists.
pub(crate) fn build() -> Result<()> {
    fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
    namespaces().context("creating namespaces")?;
    resolv_confs().context("writing pod resolv.conf files")?;
    links().context("creating links")?;
    addresses().context("adding addresses")?;
    neighbours().context("adding static neighbours")?;
    routes().context("adding routes and rules")?;
    iptables_restore(NS_NODE_A, &node_a_iptables(), false)
        .context("loading node A iptables (kube-proxy, VPC CNI SNAT, NetworkPolicy chain)")?;
    iptables_restore(NS_VPC, &vpc_iptables(), false)
        .context("loading VPC iptables (SG and NACL chains)")?;
    daemons().context("starting DNS and internet servers")?;
    Ok(())
}

fn namespaces() -> Result<()> {
    for ns in ALL_NAMESPACES {
        run(&["ip", "netns", "add", ns])?;
    }
    for ns in ALL_NAMESPACES {
        // Set before any link exists: new links copy `default`. Namespaces inherit the host's
        // IPv4 settings, so nothing is left to chance. IPv6 off: no RS/DAD/MLD noise.
        let forward = if ROUTERS.contains(&ns) { "1" } else { "0" };
        let mut s: Vec<String> = [
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.default.send_redirects=0",
            "net.ipv4.conf.all.accept_redirects=0",
            "net.ipv4.conf.default.accept_redirects=0",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        s.push(format!("net.ipv4.ip_forward={forward}"));
        sysctl(ns, &s)?;
        ip(ns, &["link", "set", "lo", "up"])?;
    }
    Ok(())
}

/// ClusterFirst pods resolve through kube-dns, like kubelet sets them up: `ip netns exec` bind-mounts
/// /etc/netns/<ns>/resolv.conf over /etc/resolv.conf. CoreDNS pods and nodes get none.
fn resolv_confs() -> Result<()> {
    for p in POD_SPECS.iter().filter(|p| p.replica.is_none()) {
        let dir = netns_etc_dir(p.netns);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = dir.join("resolv.conf");
        fs::write(&file, pod_resolv_conf(p.namespace))
            .with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}

fn veth(ns: &str, name: &str, mac: &str, peer_ns: &str, peer: &str, peer_mac: &str) -> Result<()> {
    // Created directly inside the two lab namespaces: nothing ever appears in the root namespace.
    ip(
        ns,
        &[
            "link", "add", name, "address", mac, "type", "veth", "peer", "name", peer, "address",
            peer_mac, "netns", peer_ns,
        ],
    )
    .map(drop)
}

fn links() -> Result<()> {
    for u in &UPLINKS {
        veth(
            u.node_netns,
            u.node_if,
            &u.node_mac(),
            NS_VPC,
            u.vpc_if,
            &u.vpc_mac(),
        )?;
    }
    veth(
        NS_VPC,
        INET_IFNAME,
        &lab_mac(INET_LINK, 1),
        NS_INET,
        INET_IFNAME,
        &lab_mac(INET_LINK, 0),
    )?;
    for p in &POD_SPECS {
        veth(
            p.node_netns,
            &p.host_veth(),
            &p.host_mac(),
            p.netns,
            "eth0",
            &p.pod_mac(),
        )?;
    }
    Ok(())
}

fn addr(ns: &str, cidr: &str, dev: &str) -> Result<()> {
    ip(ns, &["addr", "add", cidr, "dev", dev]).map(drop)
}

fn up(ns: &str, dev: &str) -> Result<()> {
    ip(ns, &["link", "set", dev, "up"]).map(drop)
}

fn addresses() -> Result<()> {
    for u in &UPLINKS {
        addr(NS_VPC, &format!("{}/32", u.router_ip), u.vpc_if)?;
        up(NS_VPC, u.vpc_if)?;
        if let Some(a) = u.ip {
            addr(u.node_netns, &format!("{a}/32"), u.node_if)?;
        }
        up(u.node_netns, u.node_if)?;
    }
    addr(
        NS_VPC,
        &format!("{ROUTER_INET_IP}/{INET_LINK_PREFIX}"),
        INET_IFNAME,
    )?;
    up(NS_VPC, INET_IFNAME)?;
    addr(
        NS_INET,
        &format!("{INET_LINK_IP}/{INET_LINK_PREFIX}"),
        INET_IFNAME,
    )?;
    up(NS_INET, INET_IFNAME)?;
    addr(NS_INET, &format!("{INET_SERVER_IP}/32"), "lo")?;
    for p in &POD_SPECS {
        up(p.node_netns, &p.host_veth())?;
        addr(p.netns, &format!("{}/32", p.ip), "eth0")?;
        up(p.netns, "eth0")?;
    }
    // Loose reverse-path filtering on the ENIs, as VPC CNI sets it.
    sysctl(
        NS_NODE_A,
        &[
            "net.ipv4.conf.eth0.rp_filter=2".to_owned(),
            "net.ipv4.conf.eth1.rp_filter=2".to_owned(),
        ],
    )?;
    sysctl(NS_NODE_B, &["net.ipv4.conf.eth0.rp_filter=2".to_owned()])?;
    Ok(())
}

fn neigh(ns: &str, ip_addr: Ipv4Addr, mac: &str, dev: &str) -> Result<()> {
    let a = ip_addr.to_string();
    ip(
        ns,
        &[
            "neigh",
            "replace",
            &a,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ],
    )
    .map(drop)
}

/// Which addresses the VPC delivers over each of its node-facing links (it knows every ENI's IPs).
/// The client's and coredns-a's IPs are also known on a-eth1 so the rp-filter failures
/// (`rp-filter`, `rp-filter-request`) only have to move the route.
pub(crate) fn vpc_delivery() -> [(&'static str, Vec<Ipv4Addr>); 4] {
    [
        ("a-eth0", vec![NODE_A_IP, CLIENT_IP, COREDNS_A_IP]),
        ("a-eth1", vec![NODE_A_SECONDARY_IP, CLIENT_IP, COREDNS_A_IP]),
        ("a-trunk1", vec![SG_POD_IP]),
        ("b-eth0", vec![NODE_B_IP, COREDNS_B_IP]),
    ]
}

fn neighbours() -> Result<()> {
    // The VPC fabric maps IPs to ENI MACs itself; no ARP between nodes and the VPC router.
    for (vpc_if, ips) in vpc_delivery() {
        let Some(u) = uplink(vpc_if) else {
            continue;
        };
        for a in ips {
            neigh(NS_VPC, a, &u.node_mac(), vpc_if)?;
        }
        neigh(u.node_netns, u.router_ip, &u.vpc_mac(), u.node_if)?;
    }
    neigh(NS_VPC, INET_LINK_IP, &lab_mac(INET_LINK, 0), INET_IFNAME)?;
    neigh(NS_INET, ROUTER_INET_IP, &lab_mac(INET_LINK, 1), INET_IFNAME)?;
    // VPC CNI: the pod's gateway 169.254.1.1 is a permanent entry to the host veth's MAC.
    for p in &POD_SPECS {
        neigh(p.netns, POD_GATEWAY_IP, &p.host_mac(), "eth0")?;
    }
    Ok(())
}

fn routes() -> Result<()> {
    // VPC: one /32 per known address toward its ENI; internet and default to trl-inet; anything
    // else in the lab range (unknown IPs, un-DNATed ClusterIPs) is dropped like the VPC would.
    for (vpc_if, ips) in vpc_delivery() {
        for a in ips {
            if vpc_if == "a-eth1" && (a == CLIENT_IP || a == COREDNS_A_IP) {
                continue; // only with the rp-filter failures
            }
            let dst = format!("{a}/32");
            ip(
                NS_VPC,
                &["route", "add", &dst, "dev", vpc_if, "scope", "link"],
            )?;
        }
    }
    let inet = INET_LINK_IP.to_string();
    for dst in [INTERNET_CIDR, "default"] {
        ip(
            NS_VPC,
            &["route", "add", dst, "via", &inet, "dev", INET_IFNAME],
        )?;
    }
    ip(NS_VPC, &["route", "add", "blackhole", LAB_CIDR])?;

    // Nodes: gateway on the primary ENI, onlink.
    for (ns, gw) in [(NS_NODE_A, ROUTER_A_IP), (NS_NODE_B, ROUTER_B_IP)] {
        let gw = gw.to_string();
        ip(ns, &["route", "add", &gw, "dev", "eth0", "scope", "link"])?;
        ip(
            ns,
            &[
                "route", "add", "default", "via", &gw, "dev", "eth0", "onlink",
            ],
        )?;
    }

    // Pods: VPC CNI routes; strict-mode branch-ENI pod only through its VLAN table.
    let table = BRANCH_ROUTE_TABLE.to_string();
    let pref = BRANCH_RULE_PREF.to_string();
    for p in &POD_SPECS {
        let veth = p.host_veth();
        let dst = format!("{}/32", p.ip);
        if p.main_route {
            ip(
                p.node_netns,
                &["route", "add", &dst, "dev", &veth, "scope", "link"],
            )?;
        } else {
            let gw = ROUTER_A_IP.to_string();
            ip(
                p.node_netns,
                &[
                    "route",
                    "add",
                    "default",
                    "via",
                    &gw,
                    "dev",
                    BRANCH_ENI_IFNAME,
                    "onlink",
                    "table",
                    &table,
                ],
            )?;
            ip(
                p.node_netns,
                &[
                    "route", "add", &dst, "dev", &veth, "scope", "link", "table", &table,
                ],
            )?;
            for iif in [veth.as_str(), BRANCH_ENI_IFNAME] {
                ip(
                    p.node_netns,
                    &["rule", "add", "pref", &pref, "iif", iif, "lookup", &table],
                )?;
            }
        }
        let gw = POD_GATEWAY_IP.to_string();
        ip(
            p.netns,
            &["route", "add", &gw, "dev", "eth0", "scope", "link"],
        )?;
        ip(
            p.netns,
            &["route", "add", "default", "via", &gw, "dev", "eth0"],
        )?;
    }

    // Internet: only the way back to the lab.
    let via = ROUTER_INET_IP.to_string();
    ip(
        NS_INET,
        &["route", "add", LAB_CIDR, "via", &via, "dev", INET_IFNAME],
    )?;
    Ok(())
}

/// Node A's nat and filter tables: kube-proxy's kube-dns chains, VPC CNI's SNAT chain and the
/// (empty) NetworkPolicy chain.
pub(crate) fn node_a_iptables() -> String {
    let mut s = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n",
    );
    let seps = [
        (KUBE_SEP_DNS_UDP_A, "dns", "udp", COREDNS_A_IP),
        (KUBE_SEP_DNS_UDP_B, "dns", "udp", COREDNS_B_IP),
        (KUBE_SEP_DNS_TCP_A, "dns-tcp", "tcp", COREDNS_A_IP),
        (KUBE_SEP_DNS_TCP_B, "dns-tcp", "tcp", COREDNS_B_IP),
    ];
    let mut chains = vec![
        "KUBE-SERVICES",
        "KUBE-MARK-MASQ",
        "KUBE-POSTROUTING",
        KUBE_SVC_DNS_UDP,
        KUBE_SVC_DNS_TCP,
        SNAT_CHAIN,
    ];
    chains.extend(seps.iter().map(|s| s.0));
    for c in &chains {
        s.push_str(&format!(":{c} - [0:0]\n"));
    }
    s.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A POSTROUTING -m comment --comment \"AWS SNAT CHAIN\" -j AWS-SNAT-CHAIN-0\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    s.push_str(&format!(
        "-A KUBE-SERVICES -d {KUBE_DNS_IP}/32 -p udp -m comment --comment \"kube-system/kube-dns:dns cluster IP\" -m udp --dport 53 -j {KUBE_SVC_DNS_UDP}\n\
         -A KUBE-SERVICES -d {KUBE_DNS_IP}/32 -p tcp -m comment --comment \"kube-system/kube-dns:dns-tcp cluster IP\" -m tcp --dport 53 -j {KUBE_SVC_DNS_TCP}\n"
    ));
    for (sep, port, proto, ep) in seps {
        let c = format!("kube-system/kube-dns:{port}");
        s.push_str(&format!(
            "-A {sep} -s {ep}/32 -m comment --comment \"{c}\" -j KUBE-MARK-MASQ\n\
             -A {sep} -p {proto} -m comment --comment \"{c}\" -m {proto} -j DNAT --to-destination {ep}:53\n"
        ));
    }
    s.push_str(&format!("-A {SNAT_CHAIN} {}\n", snat_rule(true)));
    // The KUBE-SVC chains' rules come from the pin (default: both replicas).
    let pin = pin_rules(Pin::Both);
    for line in pin.lines() {
        if line.starts_with("-A ") {
            s.push_str(line);
            s.push('\n');
        }
    }
    s.push_str("COMMIT\n");
    s.push_str(&format!(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:{NETPOL_CHAIN} - [0:0]\n:{NETPOL_REPLY_CHAIN} - [0:0]\n\
         -A FORWARD -m comment --comment \"tracer lab: NetworkPolicy stand-in\" -j {NETPOL_CHAIN}\n\
         -A FORWARD -m comment --comment \"tracer lab: firewall on the way back to pods\" -j {NETPOL_REPLY_CHAIN}\n\
         COMMIT\n"
    ));
    s.push_str(&format!(
        "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:{RAW_CHAIN} - [0:0]\n\
         -A PREROUTING -m comment --comment \"tracer lab: NOTRACK rules\" -j {RAW_CHAIN}\n\
         COMMIT\n"
    ));
    s
}

/// VPC CNI's SNAT rule (what follows `-A AWS-SNAT-CHAIN-0`): to the primary IP for traffic
/// leaving the VPC, except branch-ENI pods; `--random-fully` unless
/// `AWS_VPC_K8S_CNI_RANDOMIZESNAT=none` (the lab's `snat-plain` switch).
pub(crate) fn snat_rule(random_fully: bool) -> String {
    format!(
        "! -d {VPC_CIDR} -m comment --comment \"AWS, SNAT\" ! -o vlan+ -m addrtype ! --dst-type LOCAL -j SNAT --to-source {NODE_A_IP}{}",
        if random_fully { " --random-fully" } else { "" }
    )
}

/// The VPC's filter table: one chain per failure family, jumped to from FORWARD, empty when healthy.
pub(crate) fn vpc_iptables() -> String {
    let mut s =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    let chains = [
        (VPC_NODE_SG_CHAIN, "security group of node A's ENIs"),
        (VPC_POD_SG_CHAIN, "security group of branch ENI"),
        (VPC_NACL_CHAIN, "network ACL of node A's subnet"),
    ];
    for (c, _) in chains {
        s.push_str(&format!(":{c} - [0:0]\n"));
    }
    for (c, comment) in chains {
        s.push_str(&format!(
            "-A FORWARD -m comment --comment \"{comment}\" -j {c}\n"
        ));
    }
    s.push_str("COMMIT\n");
    s
}

fn daemons() -> Result<()> {
    for r in Replica::ALL {
        let conf = state_path(&format!("{}.unbound.conf", r.name()));
        fs::write(&conf, unbound_conf(r)).with_context(|| format!("writing {}", conf.display()))?;
    }
    let mut all: Vec<_> = Replica::ALL.iter().map(|r| r.daemon()).collect();
    all.extend(inet_daemons());
    for d in &all {
        d.start()?;
    }
    for d in &all {
        d.wait_ready(Duration::from_secs(5))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_a_iptables_shape() {
        let s = node_a_iptables();
        assert!(s.contains("-A KUBE-SERVICES -d 198.19.0.10/32 -p udp"));
        assert!(s.contains("-j KUBE-SVC-TCOU7JCQXEZGVUNU"));
        assert!(s.contains("-j KUBE-SVC-ERIFXISQEP7F7OF4"));
        assert!(s.contains("-j DNAT --to-destination 198.18.2.30:53"));
        assert!(s.contains("-A AWS-SNAT-CHAIN-0 ! -d 198.18.0.0/16"));
        assert!(s.contains("-j SNAT --to-source 198.18.1.10"));
        assert!(s.contains("--probability 0.50000000000"));
        assert_eq!(s.matches("COMMIT").count(), 3);
        assert!(s.contains("-j SNAT --to-source 198.18.1.10 --random-fully\n"));
        assert!(s.contains(
            "-A PREROUTING -m comment --comment \"tracer lab: NOTRACK rules\" -j TRACER-LAB-RAW"
        ));
        assert!(!snat_rule(false).contains("random"));
        assert!(
            POD_SPECS
                .iter()
                .any(|p| p.name == "sg-client" && !p.main_route)
        );
    }

    #[test]
    fn vpc_knows_every_pod() {
        let known: Vec<Ipv4Addr> = vpc_delivery()
            .iter()
            .flat_map(|(_, ips)| ips.clone())
            .collect();
        for p in &POD_SPECS {
            assert!(known.contains(&p.ip), "{}", p.name);
        }
        assert!(vpc_iptables().contains(":TRL-VPC-NACL - [0:0]"));
    }
}
