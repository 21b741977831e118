//! The failure catalogue's switches (README, "The lab") and the kube-dns pin.
//!
//! Every switch is idempotent and its state is read back from the system itself (iptables chains,
//! routes, sysctls, process states), so `status` tells the truth even after a crash.

use serde::Serialize;

use anyhow::{Context, Result, bail};

use super::builder::snat_rule;
use super::cmd::{ip, iptables_restore, netns_exec, sysctl};
use super::daemon::{ProcState, Replica};
use super::topology::{
    CLIENT_IP, COREDNS_A_IP, COREDNS_B_IP, INET_LINK_IP, INTERNET_CIDR, KUBE_SEP_DNS_TCP_A,
    KUBE_SEP_DNS_TCP_B, KUBE_SEP_DNS_UDP_A, KUBE_SEP_DNS_UDP_B, KUBE_SVC_DNS_TCP, KUBE_SVC_DNS_UDP,
    NETPOL_CHAIN, NETPOL_REPLY_CHAIN, NS_NODE_A, NS_VPC, RAW_CHAIN, SNAT_CHAIN, VPC_NACL_CHAIN,
    VPC_NODE_SG_CHAIN, VPC_POD_SG_CHAIN, client_veth, coredns_a_veth,
};

/// A failure of the catalogue that can be switched on and off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Failure {
    /// #2: the VPC drops UDP 53 from node A's ENIs to node B (TCP 53 passes): node SG allows TCP only.
    NodeSgTcpOnly,
    /// #3: the VPC drops UDP and TCP 53 from the branch ENI (a-trunk1): the pod's security group.
    PodSgNoDns,
    /// #4: the VPC drops UDP from port 53 to ports 1024-65535 from node B toward node A (NACL).
    NaclReturn,
    /// #5: node A drops UDP/TCP 53 from the client pod's veth in FORWARD (NetworkPolicy).
    NetpolDropDns,
    /// #6: unbound of coredns-a is stopped (port closed → ICMP port unreachable).
    ReplicaDownA,
    /// #6: unbound of coredns-b is stopped.
    ReplicaDownB,
    /// #7: unbound of coredns-a is SIGSTOPped (alive, never answers).
    ReplicaSilentA,
    /// #7: unbound of coredns-b is SIGSTOPped.
    ReplicaSilentB,
    /// #8: the VPC blackholes the internet (SYN leaves node A, nothing comes back).
    EgressNoNat,
    /// #8: node A has no route to 203.0.113.0/24 (a `throw` route: lookup fails with ENETUNREACH).
    EgressNoRoute,
    /// #9: the VPC routes the client's IP via node A's eth1 and eth1 gets strict rp_filter, so
    /// replies from node B's CoreDNS are dropped by the reverse-path filter on node A.
    RpFilter,
    /// #5, the reply side: node A drops DNS replies (UDP/TCP from port 53) on their way out to
    /// the client pod's veth in FORWARD (a firewall rule on the return path).
    NetpolDropDnsReply,
    /// #9, the request side: the VPC delivers traffic for coredns-a (198.18.1.30) through node
    /// A's eth1 and eth1 gets strict rp_filter, so queries from node B (routed back via eth0)
    /// are dropped by the reverse-path filter on node A on their way in.
    RpFilterRequest,
    /// A path that bypasses node A's conntrack: node A's raw table NOTRACKs UDP replies from
    /// coredns-a, so they are not reverse-NATed and reach the client from 198.18.1.30 instead of
    /// the kube-dns ClusterIP (a connected UDP socket refuses them).
    ReplyNotrackA,
    /// Not a failure, a variant of the healthy lab (#1): VPC CNI's SNAT rule without
    /// `--random-fully` (`AWS_VPC_K8S_CNI_RANDOMIZESNAT=none`), so pod egress keeps its source
    /// port when it is free.
    SnatPlain,
}

impl Failure {
    /// Every switchable failure, in catalogue order.
    pub const ALL: [Failure; 15] = [
        Failure::NodeSgTcpOnly,
        Failure::PodSgNoDns,
        Failure::NaclReturn,
        Failure::NetpolDropDns,
        Failure::ReplicaDownA,
        Failure::ReplicaDownB,
        Failure::ReplicaSilentA,
        Failure::ReplicaSilentB,
        Failure::EgressNoNat,
        Failure::EgressNoRoute,
        Failure::RpFilter,
        Failure::NetpolDropDnsReply,
        Failure::RpFilterRequest,
        Failure::ReplyNotrackA,
        Failure::SnatPlain,
    ];

    /// The number in the failure catalogue (README, "The lab") (for a variant, the row it varies; 1 for a
    /// variant of the healthy lab).
    pub fn catalogue_number(self) -> u8 {
        match self {
            Failure::SnatPlain => 1,
            Failure::NodeSgTcpOnly => 2,
            Failure::PodSgNoDns => 3,
            Failure::NaclReturn => 4,
            Failure::NetpolDropDns | Failure::NetpolDropDnsReply => 5,
            Failure::ReplicaDownA | Failure::ReplicaDownB => 6,
            Failure::ReplicaSilentA | Failure::ReplicaSilentB => 7,
            Failure::EgressNoNat | Failure::EgressNoRoute => 8,
            Failure::RpFilter | Failure::RpFilterRequest | Failure::ReplyNotrackA => 9,
        }
    }

    /// The CLI name (`node-sg-tcp-only`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Failure::NodeSgTcpOnly => "node-sg-tcp-only",
            Failure::PodSgNoDns => "pod-sg-no-dns",
            Failure::NaclReturn => "nacl-return",
            Failure::NetpolDropDns => "netpol-drop-dns",
            Failure::ReplicaDownA => "replica-down-a",
            Failure::ReplicaDownB => "replica-down-b",
            Failure::ReplicaSilentA => "replica-silent-a",
            Failure::ReplicaSilentB => "replica-silent-b",
            Failure::EgressNoNat => "egress-no-nat",
            Failure::EgressNoRoute => "egress-no-route",
            Failure::RpFilter => "rp-filter",
            Failure::NetpolDropDnsReply => "netpol-drop-dns-reply",
            Failure::RpFilterRequest => "rp-filter-request",
            Failure::ReplyNotrackA => "reply-notrack-a",
            Failure::SnatPlain => "snat-plain",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which CoreDNS endpoints kube-dns DNATs to on node A.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pin {
    /// Only coredns-a (198.18.1.30, same node).
    A,
    /// Only coredns-b (198.18.2.30, node B).
    B,
    /// Both, 50/50 like kube-proxy (the default after `up`).
    Both,
}

impl std::fmt::Display for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pin::A => "a",
            Pin::B => "b",
            Pin::Both => "both",
        })
    }
}

/// The KUBE-SVC chains' rules for a pin (iptables-restore lines, nat table, chains flushed first).
pub(crate) fn pin_rules(pin: Pin) -> String {
    let mut s = String::from("*nat\n");
    let ports = [
        (
            KUBE_SVC_DNS_UDP,
            "dns",
            KUBE_SEP_DNS_UDP_A,
            KUBE_SEP_DNS_UDP_B,
        ),
        (
            KUBE_SVC_DNS_TCP,
            "dns-tcp",
            KUBE_SEP_DNS_TCP_A,
            KUBE_SEP_DNS_TCP_B,
        ),
    ];
    for (svc, port, sep_a, sep_b) in ports {
        let c = format!("kube-system/kube-dns:{port}");
        s.push_str(&format!("-F {svc}\n"));
        let ep_a = format!("-m comment --comment \"{c} -> {COREDNS_A_IP}:53\"");
        let ep_b = format!("-m comment --comment \"{c} -> {COREDNS_B_IP}:53\"");
        match pin {
            Pin::A => s.push_str(&format!("-A {svc} {ep_a} -j {sep_a}\n")),
            Pin::B => s.push_str(&format!("-A {svc} {ep_b} -j {sep_b}\n")),
            Pin::Both => {
                s.push_str(&format!(
                    "-A {svc} {ep_a} -m statistic --mode random --probability 0.50000000000 -j {sep_a}\n"
                ));
                s.push_str(&format!("-A {svc} {ep_b} -j {sep_b}\n"));
            }
        }
    }
    s.push_str("COMMIT\n");
    s
}

/// Points kube-dns on node A at one replica or both (atomic iptables-restore of the KUBE-SVC chains).
///
/// Existing conntrack entries keep their endpoint; new flows (new source ports) follow the pin.
pub fn pin(pin: Pin) -> Result<()> {
    iptables_restore(NS_NODE_A, &pin_rules(pin), true).with_context(|| format!("pinning to {pin}"))
}

/// The current pin, read back from node A's KUBE-SVC chain (None if it matches no known shape).
pub fn current_pin() -> Result<Option<Pin>> {
    let rules = netns_exec(
        NS_NODE_A,
        &["iptables", "-w", "-t", "nat", "-S", KUBE_SVC_DNS_UDP],
    )?;
    let a = rules.contains(KUBE_SEP_DNS_UDP_A);
    let b = rules.contains(KUBE_SEP_DNS_UDP_B);
    Ok(match (a, b) {
        (true, true) => Some(Pin::Both),
        (true, false) => Some(Pin::A),
        (false, true) => Some(Pin::B),
        (false, false) => None,
    })
}

/// The rules a chain-based failure puts in its own (otherwise empty) chain when on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ChainRules {
    /// Namespace.
    pub ns: &'static str,
    /// iptables table (`filter`, `raw`).
    pub table: &'static str,
    /// The chain, owned by this failure alone.
    pub chain: &'static str,
    /// Rule specifications (what follows `-A <chain>`).
    pub rules: Vec<String>,
}

/// Rules (iptables-restore) a chain-based failure puts in its chain when on.
pub(crate) fn chain_rules(failure: Failure) -> Option<ChainRules> {
    let filter = |ns, chain, rules| ChainRules {
        ns,
        table: "filter",
        chain,
        rules,
    };
    let rules = match failure {
        Failure::NodeSgTcpOnly => filter(
            NS_VPC,
            VPC_NODE_SG_CHAIN,
            ["a-eth0", "a-eth1"]
                .iter()
                .map(|i| {
                    format!(
                        "-i {i} -o b-eth0 -p udp -m udp --dport 53 -m comment --comment \"node SG: TCP only between nodes\" -j DROP"
                    )
                })
                .collect(),
        ),
        Failure::PodSgNoDns => filter(
            NS_VPC,
            VPC_POD_SG_CHAIN,
            ["udp", "tcp"]
                .iter()
                .map(|p| {
                    format!(
                        "-i a-trunk1 -p {p} -m {p} --dport 53 -m comment --comment \"pod SG of the branch ENI: no DNS\" -j DROP"
                    )
                })
                .collect(),
        ),
        Failure::NaclReturn => filter(
            NS_VPC,
            VPC_NACL_CHAIN,
            ["a-eth0", "a-eth1", "a-trunk1"]
                .iter()
                .map(|o| {
                    format!(
                        "-i b-eth0 -o {o} -p udp -m udp --sport 53 --dport 1024:65535 -m comment --comment \"NACL: ephemeral return ports denied\" -j DROP"
                    )
                })
                .collect(),
        ),
        Failure::NetpolDropDns => {
            let veth = client_veth();
            filter(
                NS_NODE_A,
                NETPOL_CHAIN,
                ["udp", "tcp"]
                    .iter()
                    .map(|p| {
                        format!(
                            "-i {veth} -p {p} -m {p} --dport 53 -m comment --comment \"NetworkPolicy default/client: deny DNS\" -j DROP"
                        )
                    })
                    .collect(),
            )
        }
        Failure::NetpolDropDnsReply => {
            let veth = client_veth();
            filter(
                NS_NODE_A,
                NETPOL_REPLY_CHAIN,
                ["udp", "tcp"]
                    .iter()
                    .map(|p| {
                        format!(
                            "-o {veth} -p {p} -m {p} --sport 53 -m comment --comment \"firewall: DNS replies to default/client denied\" -j DROP"
                        )
                    })
                    .collect(),
            )
        }
        Failure::ReplyNotrackA => ChainRules {
            ns: NS_NODE_A,
            table: "raw",
            chain: RAW_CHAIN,
            rules: vec![format!(
                "-i {} -p udp -m udp --sport 53 -m comment --comment \"replies of coredns-a bypass conntrack\" -j NOTRACK",
                coredns_a_veth()
            )],
        },
        _ => return None,
    };
    Some(rules)
}

fn set_chain(c: &ChainRules, on: bool) -> Result<()> {
    let mut s = format!("*{}\n-F {}\n", c.table, c.chain);
    if on {
        for r in &c.rules {
            s.push_str(&format!("-A {} {r}\n", c.chain));
        }
    }
    s.push_str("COMMIT\n");
    iptables_restore(c.ns, &s, true)
}

fn chain_has_rules(c: &ChainRules) -> Result<bool> {
    let out = netns_exec(c.ns, &["iptables", "-w", "-t", c.table, "-S", c.chain])?;
    Ok(out.lines().any(|l| l.starts_with("-A ")))
}

/// Strict rp_filter on node A's eth1 while either rp-filter failure routes traffic into it,
/// loose (as VPC CNI sets it) otherwise.
fn eth1_rp_filter() -> Result<()> {
    let strict = is_on(Failure::RpFilter)? || is_on(Failure::RpFilterRequest)?;
    let mode = if strict { "1" } else { "2" };
    sysctl(NS_NODE_A, &[format!("net.ipv4.conf.eth1.rp_filter={mode}")])
}

/// VPC CNI's SNAT chain on node A with or without `--random-fully`.
fn set_snat(random_fully: bool) -> Result<()> {
    let s = format!(
        "*nat\n-F {SNAT_CHAIN}\n-A {SNAT_CHAIN} {}\nCOMMIT\n",
        snat_rule(random_fully)
    );
    iptables_restore(NS_NODE_A, &s, true)
}

/// VPC routes toward the internet (203.0.113.0/24 and default): via the internet ns, or blackholed.
fn set_vpc_internet_routes(blackhole: bool) -> Result<()> {
    for dst in [INTERNET_CIDR, "default"] {
        if blackhole {
            ip(NS_VPC, &["route", "replace", "blackhole", dst])?;
        } else {
            let via = INET_LINK_IP.to_string();
            ip(
                NS_VPC,
                &["route", "replace", dst, "via", &via, "dev", "inet0"],
            )?;
        }
    }
    Ok(())
}

fn replica_of(failure: Failure) -> Option<Replica> {
    match failure {
        Failure::ReplicaDownA | Failure::ReplicaSilentA => Some(Replica::A),
        Failure::ReplicaDownB | Failure::ReplicaSilentB => Some(Replica::B),
        _ => None,
    }
}

/// Switches `failure` on or off. Idempotent; the lab must be up.
pub fn set_failure(failure: Failure, on: bool) -> Result<()> {
    set_failure_inner(failure, on)
        .with_context(|| format!("switching {failure} {}", if on { "on" } else { "off" }))
}

fn set_failure_inner(failure: Failure, on: bool) -> Result<()> {
    if let Some(c) = chain_rules(failure) {
        return set_chain(&c, on);
    }
    match failure {
        Failure::ReplicaDownA | Failure::ReplicaDownB => {
            let Some(replica) = replica_of(failure) else {
                bail!("no replica for {failure}");
            };
            let d = replica.daemon();
            if on {
                d.stop()
            } else if d.state() == ProcState::Gone {
                d.start()?;
                d.wait_ready(std::time::Duration::from_secs(5))
            } else {
                Ok(())
            }
        }
        Failure::ReplicaSilentA | Failure::ReplicaSilentB => {
            let Some(replica) = replica_of(failure) else {
                bail!("no replica for {failure}");
            };
            let d = replica.daemon();
            match d.state() {
                ProcState::Gone if on => bail!(
                    "{} is down; switch replica-down-{} off first",
                    replica.name(),
                    if replica == Replica::A { "a" } else { "b" }
                ),
                ProcState::Gone => Ok(()),
                _ => d.pause(on),
            }
        }
        Failure::EgressNoNat => set_vpc_internet_routes(on),
        Failure::EgressNoRoute => {
            if on {
                ip(NS_NODE_A, &["route", "replace", "throw", INTERNET_CIDR]).map(drop)
            } else if is_on(Failure::EgressNoRoute)? {
                ip(NS_NODE_A, &["route", "del", "throw", INTERNET_CIDR]).map(drop)
            } else {
                Ok(())
            }
        }
        Failure::RpFilter => {
            let client = format!("{CLIENT_IP}/32");
            let dev = if on { "a-eth1" } else { "a-eth0" };
            ip(
                NS_VPC,
                &["route", "replace", &client, "dev", dev, "scope", "link"],
            )?;
            eth1_rp_filter()
        }
        Failure::RpFilterRequest => {
            let replica = format!("{COREDNS_A_IP}/32");
            let dev = if on { "a-eth1" } else { "a-eth0" };
            ip(
                NS_VPC,
                &["route", "replace", &replica, "dev", dev, "scope", "link"],
            )?;
            eth1_rp_filter()
        }
        Failure::SnatPlain => set_snat(!on),
        Failure::NodeSgTcpOnly
        | Failure::PodSgNoDns
        | Failure::NaclReturn
        | Failure::NetpolDropDns
        | Failure::NetpolDropDnsReply
        | Failure::ReplyNotrackA => bail!("{failure} has no chain rules"),
    }
}

/// Whether `failure` is on, read from the system.
pub fn is_on(failure: Failure) -> Result<bool> {
    if let Some(c) = chain_rules(failure) {
        return chain_has_rules(&c);
    }
    Ok(match failure {
        Failure::ReplicaDownA | Failure::ReplicaDownB => {
            replica_of(failure).is_some_and(|r| r.daemon().state() == ProcState::Gone)
        }
        Failure::ReplicaSilentA | Failure::ReplicaSilentB => {
            replica_of(failure).is_some_and(|r| matches!(r.daemon().state(), ProcState::Stopped(_)))
        }
        Failure::EgressNoNat => {
            ip(NS_VPC, &["route", "show", INTERNET_CIDR])?.contains("blackhole")
        }
        Failure::EgressNoRoute => !ip(
            NS_NODE_A,
            &["route", "show", "type", "throw", INTERNET_CIDR],
        )?
        .trim()
        .is_empty(),
        Failure::RpFilter => {
            ip(NS_VPC, &["route", "show", &format!("{CLIENT_IP}/32")])?.contains("a-eth1")
        }
        Failure::RpFilterRequest => {
            ip(NS_VPC, &["route", "show", &format!("{COREDNS_A_IP}/32")])?.contains("a-eth1")
        }
        Failure::SnatPlain => {
            let rules = netns_exec(
                NS_NODE_A,
                &["iptables", "-w", "-t", "nat", "-S", SNAT_CHAIN],
            )?;
            rules.contains("-j SNAT") && !rules.contains("--random-fully")
        }
        Failure::NodeSgTcpOnly
        | Failure::PodSgNoDns
        | Failure::NaclReturn
        | Failure::NetpolDropDns
        | Failure::NetpolDropDnsReply
        | Failure::ReplyNotrackA => false,
    })
}

/// All failures currently on.
pub fn failures_on() -> Result<Vec<Failure>> {
    let mut on = Vec::new();
    for f in Failure::ALL {
        if is_on(f)? {
            on.push(f);
        }
    }
    Ok(on)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn failure_names_match_cli() {
        for f in Failure::ALL {
            let pv = f.to_possible_value();
            assert_eq!(pv.as_ref().map(|p| p.get_name()), Some(f.name()));
            assert_eq!(
                serde_json::to_value(f).ok(),
                Some(serde_json::Value::String(f.name().to_owned()))
            );
        }
    }

    #[test]
    fn pin_rules_shape() {
        let both = pin_rules(Pin::Both);
        assert!(both.contains("--probability 0.50000000000 -j KUBE-SEP-MYTBDIO3MWUD2YVJ"));
        assert!(both.contains("-j KUBE-SEP-QDXJUIPCSVVJCHKI"));
        let a = pin_rules(Pin::A);
        assert!(!a.contains(KUBE_SEP_DNS_UDP_B) && !a.contains(KUBE_SEP_DNS_TCP_B));
        assert!(a.contains(KUBE_SEP_DNS_UDP_A) && a.contains(KUBE_SEP_DNS_TCP_A));
        assert!(a.starts_with("*nat\n") && a.ends_with("COMMIT\n"));
    }

    #[test]
    fn netpol_targets_client_veth() {
        let c = chain_rules(Failure::NetpolDropDns).unwrap_or_default();
        assert_eq!(
            (c.ns, c.table, c.chain),
            (NS_NODE_A, "filter", NETPOL_CHAIN)
        );
        assert!(c.rules.iter().all(|r| r.starts_with("-i enia7a3e029a7b ")));
        assert_eq!(c.rules.len(), 2);
        let reply = chain_rules(Failure::NetpolDropDnsReply).unwrap_or_default();
        assert_eq!(reply.chain, NETPOL_REPLY_CHAIN);
        assert!(
            reply
                .rules
                .iter()
                .all(|r| r.starts_with("-o enia7a3e029a7b ") && r.contains("--sport 53"))
        );
    }

    #[test]
    fn every_chain_failure_owns_its_chain() {
        let mut chains: Vec<(&str, &str, &str)> = Failure::ALL
            .iter()
            .filter_map(|f| chain_rules(*f))
            .map(|c| (c.ns, c.table, c.chain))
            .collect();
        let n = chains.len();
        chains.sort_unstable();
        chains.dedup();
        assert_eq!(chains.len(), n, "two failures share a chain: {chains:?}");
        let raw = chain_rules(Failure::ReplyNotrackA).unwrap_or_default();
        assert_eq!((raw.table, raw.chain), ("raw", RAW_CHAIN));
        assert!(
            raw.rules
                .iter()
                .all(|r| r.starts_with("-i eni54dcd3d4f3b ") && r.ends_with("-j NOTRACK"))
        );
    }
}
