//! Interface classification: which role an interface plays on an EKS node.
//!
//! Rules match the VPC CNI (`eni*` / `vlan*` pod veths, `vlan.eth.<id>` branch ENIs, `eth*`
//! ENIs) and, cheaply, other common CNIs (`cali*`, `lxc*`, `veth*`, `gke*`). Overrides given on
//! the command line (`--iface NAME=KIND`) win over the rules.

use std::collections::HashMap;

use serde::Serialize;

/// What an interface is, as far as the path of a flow is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IfaceKind {
    /// Host side of a pod's veth (VPC CNI `eni*`/`vlan*`, Calico `cali*`, Cilium `lxc*`, `veth*`).
    PodVeth,
    /// A node uplink: primary or secondary ENI (`eth*`, `ens*`, `enp*`).
    Uplink,
    /// The trunk ENI carrying branch-ENI VLANs.
    Trunk,
    /// A branch ENI (`vlan.eth.<vlan id>`): security groups for pods.
    BranchEni,
    /// Loopback.
    Loopback,
    /// Anything else (bridges, tunnels, dummies such as nodelocaldns).
    #[default]
    Other,
}

impl IfaceKind {
    /// Name as serialized (`pod_veth`, `uplink`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            IfaceKind::PodVeth => "pod_veth",
            IfaceKind::Uplink => "uplink",
            IfaceKind::Trunk => "trunk",
            IfaceKind::BranchEni => "branch_eni",
            IfaceKind::Loopback => "loopback",
            IfaceKind::Other => "other",
        }
    }
}

/// An interface at the time of the event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Iface {
    /// Interface index in the tracer's namespace (0 when the kernel did not say).
    pub ifindex: u32,
    /// Name, or `if<index>` when unknown.
    pub name: String,
    /// Classification.
    pub kind: IfaceKind,
    /// For a branch ENI: its VLAN id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
}

/// Classification rules plus user overrides.
#[derive(Clone, Debug, Default)]
pub struct Classifier {
    overrides: HashMap<String, IfaceKind>,
    /// VPC CNI host veth prefix when it is not one of the built-in ones
    /// (`AWS_VPC_K8S_CNI_VETHPREFIX`).
    pod_prefix: Option<String>,
}

/// A bad `--iface NAME=KIND` override.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "bad interface override {0:?}: expected NAME=KIND with KIND one of pod_veth, uplink, trunk, branch_eni, other, ignore"
)]
pub struct OverrideError(pub String);

/// What to do with an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Attach the programs for this kind.
    Attach(IfaceKind),
    /// Leave the interface alone.
    Ignore,
}

impl Classifier {
    /// Builds a classifier from `NAME=KIND` overrides; `KIND` may also be `ignore`.
    pub fn new(overrides: &[String]) -> Result<Self, OverrideError> {
        let mut map = HashMap::new();
        for o in overrides {
            let (name, kind) = o.split_once('=').ok_or_else(|| OverrideError(o.clone()))?;
            let kind = match kind {
                "pod_veth" => IfaceKind::PodVeth,
                "uplink" => IfaceKind::Uplink,
                "trunk" => IfaceKind::Trunk,
                "branch_eni" => IfaceKind::BranchEni,
                "other" => IfaceKind::Other,
                "ignore" => IfaceKind::Loopback,
                _ => return Err(OverrideError(o.clone())),
            };
            if name.is_empty() {
                return Err(OverrideError(o.clone()));
            }
            map.insert(name.to_owned(), kind);
        }
        Ok(Self {
            overrides: map,
            pod_prefix: None,
        })
    }

    /// Also treats interfaces named `<prefix>…` as pod veths (the VPC CNI's
    /// `AWS_VPC_K8S_CNI_VETHPREFIX`, at most 4 characters; empty or `eth` is ignored, as the
    /// VPC CNI refuses those too).
    pub fn with_pod_prefix(mut self, prefix: &str) -> Self {
        if !prefix.is_empty() && prefix != "eth" && prefix.len() <= 4 {
            self.pod_prefix = Some(prefix.to_owned());
        }
        self
    }

    /// Classifies an interface by name and link kind (`veth`, `vlan`, `loopback`, ...).
    pub fn classify(&self, name: &str, link_kind: Option<&str>) -> IfaceKind {
        if let Some(kind) = self.overrides.get(name) {
            return *kind;
        }
        if name == "lo" || link_kind == Some("loopback") {
            return IfaceKind::Loopback;
        }
        if branch_vlan(name).is_some() {
            return IfaceKind::BranchEni;
        }
        const POD_PREFIXES: [&str; 6] = ["eni", "vlan", "cali", "lxc", "veth", "gke"];
        let custom = self
            .pod_prefix
            .as_deref()
            .is_some_and(|p| name.starts_with(p));
        if (custom || POD_PREFIXES.iter().any(|p| name.starts_with(p))) && link_kind != Some("vlan")
        {
            return IfaceKind::PodVeth;
        }
        const UPLINK_PREFIXES: [&str; 4] = ["eth", "ens", "enp", "eno"];
        if UPLINK_PREFIXES.iter().any(|p| name.starts_with(p)) {
            return IfaceKind::Uplink;
        }
        IfaceKind::Other
    }

    /// Whether and how to attach to an interface.
    pub fn decide(&self, name: &str, link_kind: Option<&str>) -> Decision {
        match self.classify(name, link_kind) {
            IfaceKind::Loopback => Decision::Ignore,
            kind => Decision::Attach(kind),
        }
    }
}

/// VLAN id of a VPC CNI branch-ENI interface name (`vlan.eth.<id>`).
pub fn branch_vlan(name: &str) -> Option<u16> {
    name.strip_prefix("vlan.eth.")?.parse().ok()
}

/// How many removed interfaces are remembered for naming events still in flight.
pub const REMOVED_MEMORY: usize = 1024;

/// Interfaces of the tracer's namespace by index, plus recently removed ones.
#[derive(Debug, Default)]
pub struct IfaceTable {
    live: HashMap<u32, Iface>,
    removed: std::collections::VecDeque<Iface>,
}

impl IfaceTable {
    /// Records a present interface.
    pub fn insert(&mut self, iface: Iface) {
        self.live.insert(iface.ifindex, iface);
    }

    /// Moves an interface to the bounded list of removed ones.
    pub fn remove(&mut self, ifindex: u32) -> Option<Iface> {
        let iface = self.live.remove(&ifindex)?;
        if self.removed.len() >= REMOVED_MEMORY {
            self.removed.pop_front();
        }
        self.removed.push_back(iface.clone());
        Some(iface)
    }

    /// Live interfaces.
    pub fn live(&self) -> impl Iterator<Item = &Iface> {
        self.live.values()
    }

    /// The interface with this index, live or recently removed; `if<n>` of kind Other otherwise.
    pub fn lookup(&self, ifindex: u32) -> Iface {
        if let Some(i) = self.live.get(&ifindex) {
            return i.clone();
        }
        if let Some(i) = self.removed.iter().rev().find(|i| i.ifindex == ifindex) {
            return i.clone();
        }
        Iface {
            ifindex,
            name: format!("if{ifindex}"),
            kind: IfaceKind::Other,
            vlan: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vpc_cni_names() {
        let c = Classifier::default();
        assert_eq!(
            c.classify("eni1a2b3c4d5e6", Some("veth")),
            IfaceKind::PodVeth
        );
        assert_eq!(
            c.classify("vlan1a2b3c4d5e6", Some("veth")),
            IfaceKind::PodVeth
        );
        assert_eq!(c.classify("vlan.eth.1", Some("vlan")), IfaceKind::BranchEni);
        assert_eq!(c.classify("vlan.eth.1", Some("veth")), IfaceKind::BranchEni);
        assert_eq!(c.classify("eth0", None), IfaceKind::Uplink);
        assert_eq!(c.classify("ens5", None), IfaceKind::Uplink);
        assert_eq!(c.classify("lo", None), IfaceKind::Loopback);
        assert_eq!(c.classify("nodelocaldns", Some("dummy")), IfaceKind::Other);
        assert_eq!(c.classify("cali12345", Some("veth")), IfaceKind::PodVeth);
        assert_eq!(c.classify("lxc12345", Some("veth")), IfaceKind::PodVeth);
        assert_eq!(branch_vlan("vlan.eth.17"), Some(17));
        assert_eq!(branch_vlan("vlan.eth.x"), None);
    }

    #[test]
    fn overrides() {
        let c = Classifier::new(&[
            "eth1=trunk".into(),
            "br0=uplink".into(),
            "eth9=ignore".into(),
        ])
        .expect("valid overrides");
        assert_eq!(c.classify("eth1", None), IfaceKind::Trunk);
        assert_eq!(c.classify("br0", Some("bridge")), IfaceKind::Uplink);
        assert_eq!(c.decide("eth9", None), Decision::Ignore);
        assert!(Classifier::new(&["eth0".into()]).is_err());
        let c = Classifier::default().with_pod_prefix("pod");
        assert_eq!(
            c.classify("pod1a2b3c4d5e6", Some("veth")),
            IfaceKind::PodVeth
        );
        assert_eq!(
            c.classify("eni1a2b3c4d5e6", Some("veth")),
            IfaceKind::PodVeth
        );
        let c = Classifier::default().with_pod_prefix("eth");
        assert_eq!(c.classify("eth0", None), IfaceKind::Uplink);
        assert!(Classifier::new(&["eth0=router".into()]).is_err());
        assert!(Classifier::new(&["=uplink".into()]).is_err());
    }
}
