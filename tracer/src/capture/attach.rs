//! Attach manager: discovers interfaces over netlink at start and as they come and go, classifies
//! them, attaches the right tc programs to each, and detaches everything on exit.

use std::collections::HashMap;

use aya::programs::tc::SchedClassifierLinkId;
use futures::TryStreamExt as _;
use netlink_packet_core::NetlinkMessage;
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkInfo, LinkMessage},
};

use crate::capture::{
    Capture, TcProgram,
    iface::{Classifier, Decision, Iface, IfaceKind, IfaceTable, branch_vlan},
};

/// An interface with its attachments.
#[derive(Debug)]
struct Attached {
    links: Vec<(TcProgram, SchedClassifierLinkId)>,
}

/// Counts of attach activity, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct AttachStats {
    /// Interfaces currently attached.
    pub attached: usize,
    /// Attach operations that succeeded since start.
    pub attaches: u64,
    /// Detaches since start (interface gone or exit).
    pub detaches: u64,
    /// Attach failures since start.
    pub failures: u64,
}

/// Keeps the programs attached to the right interfaces.
pub struct AttachManager {
    classifier: Classifier,
    attached: HashMap<u32, Attached>,
    table: IfaceTable,
    /// Pod veth ifindex → netns id of its peer (the pod's namespace), from IFLA_LINK_NETNSID.
    pod_peer_nsid: HashMap<u32, i32>,
    stats: AttachStats,
}

/// The programs for each role: (ingress, egress).
fn programs_for(kind: IfaceKind) -> (TcProgram, TcProgram) {
    match kind {
        IfaceKind::PodVeth => (TcProgram::PodIn, TcProgram::PodOut),
        IfaceKind::Uplink | IfaceKind::Trunk | IfaceKind::BranchEni => {
            (TcProgram::UplinkIn, TcProgram::UplinkOut)
        }
        IfaceKind::Loopback | IfaceKind::Other => (TcProgram::OtherIn, TcProgram::OtherOut),
    }
}

struct LinkFacts {
    index: u32,
    name: String,
    kind: Option<String>,
    peer_nsid: Option<i32>,
}

fn link_facts(msg: &LinkMessage) -> Option<LinkFacts> {
    let mut name = None;
    let mut kind = None;
    let mut peer_nsid = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        kind = Some(k.to_string());
                    }
                }
            }
            LinkAttribute::LinkNetNsId(id) => peer_nsid = Some(*id),
            _ => {}
        }
    }
    Some(LinkFacts {
        index: msg.header.index,
        name: name?,
        kind,
        peer_nsid,
    })
}

impl AttachManager {
    /// A manager with no interfaces yet.
    pub fn new(classifier: Classifier) -> Self {
        Self {
            classifier,
            attached: HashMap::new(),
            table: IfaceTable::default(),
            pod_peer_nsid: HashMap::new(),
            stats: AttachStats::default(),
        }
    }

    /// Lists the namespace's links and attaches to each one that qualifies.
    pub async fn discover(
        &mut self,
        handle: &rtnetlink::Handle,
        capture: &mut Capture,
    ) -> Result<(), rtnetlink::Error> {
        let mut links = handle.link().get().execute();
        while let Some(msg) = links.try_next().await? {
            self.on_new_link(&msg, capture);
        }
        Ok(())
    }

    /// Handles one netlink notification (RTM_NEWLINK / RTM_DELLINK); others are ignored.
    pub fn on_message(&mut self, msg: &NetlinkMessage<RouteNetlinkMessage>, capture: &mut Capture) {
        use netlink_packet_core::NetlinkPayload;
        match &msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                self.on_new_link(link, capture);
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                self.on_del_link(link.header.index, capture);
            }
            _ => {}
        }
    }

    fn on_new_link(&mut self, msg: &LinkMessage, capture: &mut Capture) {
        let Some(facts) = link_facts(msg) else {
            tracing::debug!(index = msg.header.index, "link without a name ignored");
            return;
        };
        let decision = self.classifier.decide(&facts.name, facts.kind.as_deref());
        let kind = match decision {
            Decision::Attach(kind) => kind,
            Decision::Ignore => IfaceKind::Loopback,
        };
        let iface = Iface {
            ifindex: facts.index,
            name: facts.name.clone(),
            kind,
            vlan: branch_vlan(&facts.name),
        };
        // Renamed or reclassified: start over.
        if self.table.lookup(facts.index) != iface && self.attached.contains_key(&facts.index) {
            self.on_del_link(facts.index, capture);
        }
        if kind == IfaceKind::PodVeth
            && let Some(nsid) = facts.peer_nsid
        {
            self.pod_peer_nsid.insert(facts.index, nsid);
        }
        self.table.insert(iface);
        if decision == Decision::Ignore || self.attached.contains_key(&facts.index) {
            return;
        }
        let (ingress, egress) = programs_for(kind);
        let mut links = Vec::with_capacity(2);
        for (prog, is_ingress) in [(ingress, true), (egress, false)] {
            match capture.attach_tc(prog, facts.index, is_ingress) {
                Ok(id) => {
                    links.push((prog, id));
                    self.stats.attaches += 1;
                }
                Err(err) => {
                    self.stats.failures += 1;
                    tracing::warn!(iface = %facts.name, %err, "attach failed");
                }
            }
        }
        tracing::info!(iface = %facts.name, ifindex = facts.index, ?kind, "attached");
        self.attached.insert(facts.index, Attached { links });
        self.stats.attached = self.attached.len();
    }

    fn on_del_link(&mut self, index: u32, capture: &mut Capture) {
        self.pod_peer_nsid.remove(&index);
        let removed = self.table.remove(index);
        if let Some(a) = self.attached.remove(&index) {
            for (prog, id) in a.links {
                capture.detach_tc(prog, id);
                self.stats.detaches += 1;
            }
            if let Some(iface) = removed {
                tracing::info!(iface = %iface.name, ifindex = index, "detached (interface gone)");
            }
        }
        self.stats.attached = self.attached.len();
    }

    /// Detaches every program (exit path).
    pub fn detach_all(&mut self, capture: &mut Capture) {
        for (_, a) in self.attached.drain() {
            for (prog, id) in a.links {
                capture.detach_tc(prog, id);
                self.stats.detaches += 1;
            }
        }
        self.stats.attached = 0;
    }

    /// Interfaces by index.
    pub fn table(&self) -> &IfaceTable {
        &self.table
    }

    /// Netns ids (as seen from this namespace) of the peers of pod veths.
    pub fn pod_peer_nsids(&self) -> impl Iterator<Item = i32> + '_ {
        self.pod_peer_nsid.values().copied()
    }

    /// Attach counters.
    pub fn stats(&self) -> AttachStats {
        self.stats
    }
}
