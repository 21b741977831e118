//! Which network namespaces are this node's: the tracer's own and its pods' (the peers of its
//! pod veths). The kernel's drop program reads the set from its `SCOPE` map and only counts
//! drops elsewhere (on a shared kernel, other "machines" of the lab).

use std::collections::{HashMap, HashSet};

use aya::maps::{HashMap as BpfHashMap, MapData};

use crate::capture::{attach::AttachManager, netns};

/// Most namespaces in the set (the kernel map's size).
pub const MAX_NAMESPACES: usize = 4096;

/// This node's namespaces, mirrored into the kernel.
pub struct Scope {
    own: u32,
    pods: HashSet<u32>,
    /// Pod-veth peer netns id → namespace inode, as resolved so far.
    resolved: HashMap<i32, u32>,
    /// What the kernel map holds.
    in_kernel: HashSet<u32>,
    /// Pod namespace inode → the host side of its veth (to name a drop inside the pod).
    veth_of: HashMap<u32, String>,
}

impl Scope {
    /// The scope of a tracer in namespace `own` (inode).
    pub fn new(own: u32) -> Self {
        Self {
            own,
            pods: HashSet::new(),
            resolved: HashMap::new(),
            in_kernel: HashSet::new(),
            veth_of: HashMap::new(),
        }
    }

    /// The name of device `ifindex` in pod namespace `netns` as `ip link` shows a veth's end:
    /// `if<ifindex>@<host side of the pod's veth>`. `None` for a namespace that is no pod's.
    pub fn pod_iface_name(&self, netns: u32, ifindex: u32) -> Option<String> {
        self.veth_of
            .get(&netns)
            .map(|veth| crate::decode::pod_device_name(ifindex, veth))
    }

    /// True for a namespace of this node (0: unknown, counted as this node's).
    pub fn contains(&self, netns: u32) -> bool {
        netns == 0 || netns == self.own || self.pods.contains(&netns)
    }

    /// Resolves the namespaces of pod veth peers not resolved yet, recomputes the set and
    /// writes the changes to the kernel's map.
    pub async fn refresh(
        &mut self,
        handle: &mut rtnetlink::Handle,
        mgr: &AttachManager,
        map: &mut BpfHashMap<MapData, u32, u8>,
    ) {
        let wanted: HashSet<i32> = mgr.pod_peer_nsids().collect();
        let missing: HashSet<i32> = wanted
            .iter()
            .filter(|id| !self.resolved.contains_key(id))
            .copied()
            .collect();
        if !missing.is_empty() {
            self.resolved
                .extend(netns::resolve_nsids(handle, &missing).await);
        }
        self.resolved.retain(|id, _| wanted.contains(id));
        self.pods = self.resolved.values().copied().collect();
        self.veth_of = mgr
            .pod_peers()
            .filter_map(|(veth, nsid)| self.resolved.get(&nsid).map(|ino| (*ino, veth)))
            .collect();
        self.sync(map);
        tracing::debug!(
            pods = self.pods.len(),
            unresolved = wanted.len() - self.resolved.len(),
            "node netns scope"
        );
    }

    /// Makes the kernel's map equal to the set.
    fn sync(&mut self, map: &mut BpfHashMap<MapData, u32, u8>) {
        let want: HashSet<u32> = std::iter::once(self.own)
            .chain(self.pods.iter().copied())
            .take(MAX_NAMESPACES)
            .collect();
        for gone in self
            .in_kernel
            .difference(&want)
            .copied()
            .collect::<Vec<_>>()
        {
            if let Err(err) = map.remove(&gone) {
                tracing::debug!(%err, netns = gone, "scope map remove");
            }
            self.in_kernel.remove(&gone);
        }
        for new in want
            .difference(&self.in_kernel)
            .copied()
            .collect::<Vec<_>>()
        {
            match map.insert(&new, &1, 0) {
                Ok(()) => {
                    self.in_kernel.insert(new);
                }
                Err(err) => tracing::warn!(%err, netns = new, "scope map insert"),
            }
        }
    }
}
