//! Attach manager: discovers interfaces over netlink at start and as they come and go, classifies
//! them, attaches the right tc programs to each, and detaches everything on exit.
//!
//! It also keeps the node honest about what it changed: at start it removes clsact filters of
//! ours that a killed predecessor left behind; every [`RECONCILE_INTERVAL`] (and after a lost
//! link notification) it lists the links again, re-attaches what another tool removed (Cilium
//! and Calico delete legacy filters when they attach their own), and refreshes which other
//! programs run at each hook (to name the one that dropped a packet).

use std::collections::{HashMap, HashSet};

use aya::programs::tc::SchedClassifierLinkId;
use futures::TryStreamExt as _;
use netlink_packet_core::NetlinkMessage;
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkInfo, LinkMessage},
};

use crate::capture::{
    Capture, TcProgram,
    hooks::{self, HookTable, NETLINK_TIMEOUT},
    iface::{Classifier, Decision, Iface, IfaceKind, IfaceTable, branch_vlan},
};

/// How often attachments are checked against the kernel (at most 30 s, per the design).
pub const RECONCILE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

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
    /// Attachments found missing (another tool removed them) and attached again.
    pub reattaches: u64,
    /// Filters of ours left by a killed predecessor, removed at start.
    pub leftovers_removed: u64,
    /// Netlink requests that failed or timed out.
    pub netlink_errors: u64,
}

/// Keeps the programs attached to the right interfaces.
pub struct AttachManager {
    classifier: Classifier,
    attached: HashMap<u32, Attached>,
    table: IfaceTable,
    /// Pod veth ifindex → netns id of its peer (the pod's namespace), from IFLA_LINK_NETNSID.
    pod_peer_nsid: HashMap<u32, i32>,
    stats: AttachStats,
    /// Other tools' programs at each hook.
    hooks: HookTable,
    /// Interfaces whose hooks were not listed since their programs were attached.
    hooks_pending: HashSet<u32>,
    /// Attach the empty program at every hook instead (benchmark baseline).
    empty: bool,
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
            hooks: HookTable::default(),
            hooks_pending: HashSet::new(),
            empty: false,
        }
    }

    /// Attaches the empty program at every hook instead of the tracer's: the benchmark's
    /// baseline, the cost of the hooks themselves with the daemon running.
    #[cfg(feature = "devtools")]
    pub fn with_empty_programs(mut self) -> Self {
        self.empty = true;
        self
    }

    /// Lists the namespace's links and attaches to each one that qualifies. On the first call,
    /// clsact filters of ours left by a killed predecessor are removed first.
    pub async fn discover(
        &mut self,
        handle: &rtnetlink::Handle,
        capture: &mut Capture,
    ) -> Result<(), rtnetlink::Error> {
        let links = self.list_links(handle).await?;
        for msg in &links {
            self.remove_leftovers(handle, msg.header.index).await;
            self.on_new_link(msg, capture);
        }
        Ok(())
    }

    async fn list_links(
        &mut self,
        handle: &rtnetlink::Handle,
    ) -> Result<Vec<LinkMessage>, rtnetlink::Error> {
        let fetch = handle.link().get().execute().try_collect::<Vec<_>>();
        match tokio::time::timeout(NETLINK_TIMEOUT, fetch).await {
            Ok(r) => r,
            Err(_) => {
                self.stats.netlink_errors += 1;
                Err(rtnetlink::Error::RequestFailed)
            }
        }
    }

    /// Removes clsact filters whose program is one of ours (this version's or an earlier
    /// one's): nobody but a killed predecessor can have put them there.
    async fn remove_leftovers(&mut self, handle: &rtnetlink::Handle, ifindex: u32) {
        if self.attached.contains_key(&ifindex) {
            return;
        }
        for ingress in [true, false] {
            let names: HashSet<String> = hooks::clsact_filters(handle, ifindex, ingress)
                .await
                .into_iter()
                .map(|(_, p)| p.name)
                .filter(|n| tracer_common::programs::TC.contains(&n.as_str()))
                .collect();
            let parent = if ingress {
                aya::programs::TcAttachType::Ingress
            } else {
                aya::programs::TcAttachType::Egress
            };
            for name in names {
                match aya::programs::tc::qdisc_detach_program(ifindex, parent.into(), &name) {
                    Ok(()) => {
                        self.stats.leftovers_removed += 1;
                        tracing::info!(ifindex, program = %name, "removed a filter left by an earlier tracer");
                    }
                    Err(err) => {
                        self.stats.netlink_errors += 1;
                        tracing::warn!(ifindex, program = %name, %err, "could not remove a leftover filter");
                    }
                }
            }
        }
    }

    /// Checks the node against what the manager believes: lists the links again (a lost
    /// notification is caught here), re-attaches programs another tool removed, and refreshes
    /// the other programs at every hook.
    pub async fn reconcile(&mut self, handle: &rtnetlink::Handle, capture: &mut Capture) {
        let links = match self.list_links(handle).await {
            Ok(l) => l,
            Err(err) => {
                self.stats.netlink_errors += 1;
                tracing::warn!(%err, "listing interfaces to reconcile");
                return;
            }
        };
        let present: HashSet<u32> = links.iter().map(|m| m.header.index).collect();
        for gone in self
            .attached
            .keys()
            .filter(|i| !present.contains(i))
            .copied()
            .collect::<Vec<_>>()
        {
            self.on_del_link(gone, capture);
        }
        for msg in &links {
            self.on_new_link(msg, capture);
        }
        let ids = capture.program_ids();
        let netlink = capture.netlink_mode();
        let ifindexes: Vec<u32> = self.attached.keys().copied().collect();
        for ifindex in ifindexes {
            let mut missing = false;
            for ingress in [true, false] {
                let Some(prog) = self.attached.get(&ifindex).and_then(|a| {
                    a.links
                        .iter()
                        .map(|(p, _)| *p)
                        .find(|p| p.is_ingress() == ingress)
                }) else {
                    missing = true;
                    continue;
                };
                let Some(&id) = ids.get(&prog) else {
                    continue;
                };
                let there = if netlink {
                    hooks::clsact_filters(handle, ifindex, ingress)
                        .await
                        .iter()
                        .any(|(_, p)| p.id == id)
                } else {
                    let t = if ingress {
                        aya::programs::TcAttachType::Ingress
                    } else {
                        aya::programs::TcAttachType::Egress
                    };
                    aya::programs::SchedClassifier::query_tcx(ifindex, t)
                        .map(|(_, progs)| progs.iter().any(|p| p.id() == id))
                        .unwrap_or(true)
                };
                missing |= !there;
            }
            if missing {
                let name = self.table.lookup(ifindex).name;
                tracing::warn!(iface = %name, ifindex, "our programs were removed from the interface (by another tool?): attaching again");
                self.detach(ifindex, capture);
                self.attach(ifindex, capture);
                self.stats.reattaches += 1;
            }
            self.hooks_pending.insert(ifindex);
        }
        self.refresh_hooks(handle).await;
    }

    /// Lists the other programs at the hooks of `ifindexes` again (a drop by a tc program was
    /// just seen there: its program may be new).
    pub async fn refresh_hooks_of(
        &mut self,
        handle: &rtnetlink::Handle,
        ifindexes: impl IntoIterator<Item = u32>,
    ) {
        self.hooks_pending.extend(ifindexes);
        self.refresh_hooks(handle).await;
    }

    /// Lists the other programs at the hooks of interfaces attached since the last call.
    pub async fn refresh_hooks(&mut self, handle: &rtnetlink::Handle) {
        let pending: Vec<u32> = self.hooks_pending.drain().collect();
        for ifindex in pending {
            if !self.attached.contains_key(&ifindex) {
                continue;
            }
            for ingress in [true, false] {
                let others =
                    hooks::programs_at(handle, ifindex, ingress, &tracer_common::programs::TC)
                        .await;
                self.hooks.set(ifindex, ingress, others);
            }
        }
    }

    /// Other tools' programs at the hooks of each interface.
    pub fn hooks(&self) -> &HookTable {
        &self.hooks
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
        self.attach(facts.index, capture);
    }

    /// Attaches the programs of the interface's kind.
    fn attach(&mut self, ifindex: u32, capture: &mut Capture) {
        let iface = self.table.lookup(ifindex);
        let (ingress, egress) = if self.empty {
            (TcProgram::Empty, TcProgram::Empty)
        } else {
            programs_for(iface.kind)
        };
        let mut links = Vec::with_capacity(2);
        for (prog, is_ingress) in [(ingress, true), (egress, false)] {
            match capture.attach_tc(prog, ifindex, is_ingress) {
                Ok(id) => {
                    links.push((prog, id));
                    self.stats.attaches += 1;
                }
                Err(err) => {
                    self.stats.failures += 1;
                    tracing::warn!(iface = %iface.name, %err, "attach failed");
                }
            }
        }
        tracing::info!(iface = %iface.name, ifindex, kind = ?iface.kind, "attached");
        self.attached.insert(ifindex, Attached { links });
        self.hooks_pending.insert(ifindex);
        self.stats.attached = self.attached.len();
    }

    /// Detaches the interface's programs (quietly when it is gone).
    fn detach(&mut self, ifindex: u32, capture: &mut Capture) {
        if let Some(a) = self.attached.remove(&ifindex) {
            for (prog, id) in a.links {
                capture.detach_tc(prog, id);
                self.stats.detaches += 1;
            }
        }
        self.stats.attached = self.attached.len();
    }

    fn on_del_link(&mut self, index: u32, capture: &mut Capture) {
        self.pod_peer_nsid.remove(&index);
        self.hooks.remove(index);
        let was = self.attached.contains_key(&index);
        let removed = self.table.remove(index);
        self.detach(index, capture);
        if was && let Some(iface) = removed {
            tracing::info!(iface = %iface.name, ifindex = index, "detached (interface gone)");
        }
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

    /// Pod veths (host side, by name) with the netns id of their peer.
    pub fn pod_peers(&self) -> impl Iterator<Item = (String, i32)> + '_ {
        self.pod_peer_nsid
            .iter()
            .map(|(ifindex, nsid)| (self.table.lookup(*ifindex).name, *nsid))
    }

    /// Attach counters.
    pub fn stats(&self) -> AttachStats {
        self.stats
    }
}
