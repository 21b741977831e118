//! The cache's tables: compact entries keyed by `namespace/name`, with HashMap indexes by IP and
//! by host-veth name (kube-rs reflector stores only offer linear scans).
//!
//! Size: one entry per object the watches return (pods of this node, CoreDNS pods, Services,
//! Nodes, EndpointSlices); no other limit is imposed, since the API server's answer already
//! bounds them and dropping entries would turn names back into bare IPs at random. Entries hold
//! derived fields only, never the API objects.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use super::model::{NodeMeta, ObjKey, PodMeta, ServiceMeta, SliceMeta};

/// What a table indexes an entry by, besides its key.
pub(crate) trait Lookups {
    /// Addresses that should find this entry.
    fn ips(&self) -> &[IpAddr] {
        &[]
    }
    /// Names that should find this entry (host veths).
    fn names(&self) -> &[String] {
        &[]
    }
}

impl Lookups for PodMeta {
    fn ips(&self) -> &[IpAddr] {
        // A host-network pod's IP is its node's: indexing it would name the node's traffic
        // after whichever host-network pod came last.
        if self.host_network { &[] } else { &self.ips }
    }
    fn names(&self) -> &[String] {
        &self.host_veths
    }
}

impl Lookups for ServiceMeta {
    fn ips(&self) -> &[IpAddr] {
        &self.cluster_ips
    }
}

impl Lookups for NodeMeta {
    fn ips(&self) -> &[IpAddr] {
        &self.ips
    }
}

impl Lookups for SliceMeta {}

/// Entries by key, plus IP and name indexes pointing at keys. When two entries claim the same
/// IP (a reused pod IP seen before the old pod's deletion), the last applied wins, and removing
/// it hands the IP back to the other holder.
#[derive(Debug)]
pub(crate) struct Table<V> {
    entries: HashMap<ObjKey, Arc<V>>,
    by_ip: HashMap<IpAddr, ObjKey>,
    by_name: HashMap<String, ObjKey>,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            by_ip: HashMap::new(),
            by_name: HashMap::new(),
        }
    }
}

impl<V: Lookups> Table<V> {
    /// Inserts or replaces the entry at `key`.
    pub fn upsert(&mut self, key: ObjKey, value: V) {
        let value = Arc::new(value);
        if let Some(old) = self.entries.insert(key.clone(), Arc::clone(&value)) {
            self.unindex(&key, &old);
        }
        for ip in value.ips() {
            self.by_ip.insert(*ip, key.clone());
        }
        for name in value.names() {
            self.by_name.insert(name.clone(), key.clone());
        }
    }

    /// Removes the entry at `key`, if any.
    pub fn remove(&mut self, key: &ObjKey) {
        if let Some(old) = self.entries.remove(key) {
            self.unindex(key, &old);
        }
    }

    /// Replaces everything (after a full list).
    pub fn replace(&mut self, items: impl IntoIterator<Item = (ObjKey, V)>) {
        *self = Self::default();
        for (k, v) in items {
            self.upsert(k, v);
        }
    }

    fn unindex(&mut self, key: &ObjKey, old: &V) {
        for ip in old.ips() {
            if self.by_ip.get(ip) == Some(key) {
                self.by_ip.remove(ip);
                let heir = self
                    .entries
                    .iter()
                    .find(|(k, v)| *k != key && v.ips().contains(ip))
                    .map(|(k, _)| k.clone());
                if let Some(heir) = heir {
                    self.by_ip.insert(*ip, heir);
                }
            }
        }
        for name in old.names() {
            if self.by_name.get(name) == Some(key) {
                self.by_name.remove(name);
                let heir = self
                    .entries
                    .iter()
                    .find(|(k, v)| *k != key && v.names().contains(name))
                    .map(|(k, _)| k.clone());
                if let Some(heir) = heir {
                    self.by_name.insert(name.clone(), heir);
                }
            }
        }
    }

    /// The entry at `key`.
    pub fn get(&self, key: &ObjKey) -> Option<Arc<V>> {
        self.entries.get(key).cloned()
    }

    /// The entry an IP belongs to.
    pub fn by_ip(&self, ip: &IpAddr) -> Option<Arc<V>> {
        self.by_ip.get(ip).and_then(|k| self.get(k))
    }

    /// The entry a name belongs to.
    pub fn by_name(&self, name: &str) -> Option<Arc<V>> {
        self.by_name.get(name).and_then(|k| self.get(k))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// All entries, sorted by key.
    pub fn sorted(&self) -> Vec<Arc<V>> {
        let mut keys: Vec<&ObjKey> = self.entries.keys().collect();
        keys.sort();
        keys.into_iter()
            .filter_map(|k| self.entries.get(k).cloned())
            .collect()
    }

    /// All entries, unsorted.
    pub fn values(&self) -> impl Iterator<Item = &Arc<V>> {
        self.entries.values()
    }

    /// Number of IP index entries (for stats).
    pub fn ip_count(&self) -> usize {
        self.by_ip.len()
    }

    /// Number of name index entries (for stats).
    pub fn name_count(&self) -> usize {
        self.by_name.len()
    }
}

/// Every table of the cache.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Pods of this node (all pods when no node name is known).
    pub pods: Table<PodMeta>,
    /// CoreDNS pods cluster-wide (selected by the kube-dns Service's selector).
    pub dns_pods: Table<PodMeta>,
    /// Services.
    pub services: Table<ServiceMeta>,
    /// Nodes.
    pub nodes: Table<NodeMeta>,
    /// EndpointSlices.
    pub slices: Table<SliceMeta>,
    /// The tracer DaemonSet's own pods (peers for cross-node verdicts), by key.
    pub peers: Table<PodMeta>,
}

/// Which table a watcher feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum TableId {
    Pods,
    DnsPods,
    Services,
    Nodes,
    Slices,
    Peers,
}

impl TableId {
    /// Name in logs and stats.
    pub fn name(self) -> &'static str {
        match self {
            TableId::Pods => "pods",
            TableId::DnsPods => "dns-pods",
            TableId::Services => "services",
            TableId::Nodes => "nodes",
            TableId::Slices => "endpointslices",
            TableId::Peers => "tracer-peers",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, ips: &[&str]) -> PodMeta {
        PodMeta {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            workload: None,
            node: Some("n".to_owned()),
            ips: ips.iter().map(|s| s.parse().expect("ip")).collect(),
            host_network: false,
            host_veths: vec![super::super::model::host_veth_name("eni", ns, name)],
            branch_enis: Vec::new(),
            labels: Default::default(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn name_at(t: &Table<PodMeta>, s: &str) -> Option<String> {
        t.by_ip(&ip(s)).map(|p| p.name.clone())
    }

    #[test]
    fn apply_update_delete() {
        let mut t = Table::default();
        let a = pod("default", "a", &["10.0.0.1"]);
        let veth = a.host_veths.first().cloned().expect("a veth");
        t.upsert(a.key(), a);
        assert_eq!(name_at(&t, "10.0.0.1").as_deref(), Some("a"));
        assert_eq!(
            t.by_name(&veth).map(|p| p.name.clone()).as_deref(),
            Some("a")
        );
        // The pod's IP changes (e.g. recreated with the same name): the old IP is forgotten.
        t.upsert(
            ObjKey::new("default", "a"),
            pod("default", "a", &["10.0.0.2"]),
        );
        assert_eq!(name_at(&t, "10.0.0.1"), None);
        assert_eq!(name_at(&t, "10.0.0.2").as_deref(), Some("a"));
        t.remove(&ObjKey::new("default", "a"));
        assert_eq!(name_at(&t, "10.0.0.2"), None);
        assert!(t.by_name(&veth).is_none());
        assert_eq!((t.len(), t.ip_count(), t.name_count()), (0, 0, 0));
    }

    #[test]
    fn reused_ip_goes_back_to_the_remaining_holder() {
        let mut t = Table::default();
        t.upsert(ObjKey::new("d", "old"), pod("d", "old", &["10.0.0.9"]));
        t.upsert(ObjKey::new("d", "new"), pod("d", "new", &["10.0.0.9"]));
        assert_eq!(
            name_at(&t, "10.0.0.9").as_deref(),
            Some("new"),
            "last applied wins"
        );
        t.remove(&ObjKey::new("d", "new"));
        assert_eq!(name_at(&t, "10.0.0.9").as_deref(), Some("old"));
        // Removing a non-holder leaves the index alone.
        t.upsert(ObjKey::new("d", "new"), pod("d", "new", &["10.0.0.9"]));
        t.remove(&ObjKey::new("d", "old"));
        assert_eq!(name_at(&t, "10.0.0.9").as_deref(), Some("new"));
        t.remove(&ObjKey::new("d", "missing"));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn replace_drops_what_the_relist_lacks() {
        let mut t = Table::default();
        t.upsert(ObjKey::new("d", "a"), pod("d", "a", &["10.0.0.1"]));
        t.upsert(ObjKey::new("d", "b"), pod("d", "b", &["10.0.0.2"]));
        t.replace([(ObjKey::new("d", "c"), pod("d", "c", &["10.0.0.3"]))]);
        assert_eq!(name_at(&t, "10.0.0.1"), None);
        assert_eq!(name_at(&t, "10.0.0.2"), None);
        assert_eq!(name_at(&t, "10.0.0.3").as_deref(), Some("c"));
        assert_eq!(t.sorted().len(), 1);
    }

    #[test]
    fn host_network_pods_are_not_indexed_by_ip() {
        let mut t = Table::default();
        let mut h = pod("kube-system", "aws-node-x", &["10.0.0.10"]);
        h.host_network = true;
        h.host_veths.clear();
        t.upsert(h.key(), h);
        assert_eq!(name_at(&t, "10.0.0.10"), None);
        assert_eq!(t.len(), 1);
    }
}
