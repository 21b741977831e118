//! Enrichment of verdicts with Kubernetes names: client pod, server pod (the CoreDNS replica),
//! the Service it was reached through, nodes, and the branch ENI of pods with security groups.
//! Every verdict says how current the names are (`enrichment`: ready, static, syncing, stale,
//! disabled), so a SIEM can tell "no name" from "names unknown because the API was down".

use crate::{
    decode::event::IfaceKind,
    enrich::{MetaCache, PodMeta as KubePod},
    verdict::{PodMeta, Verdict},
};

fn names(p: &KubePod) -> PodMeta {
    PodMeta {
        pod: Some(p.name.clone()),
        namespace: Some(p.namespace.clone()),
        workload: p
            .workload
            .as_ref()
            .map(|w| format!("{}/{}", w.kind, w.name)),
        node: p.node.clone(),
        labels: Some(p.labels.clone()),
    }
}

/// Fills the Kubernetes fields of `v` from the cache; leaves them empty where unknown.
pub fn annotate(v: &mut Verdict, meta: &MetaCache) {
    let state = meta.state();
    v.enrichment = Some(state.as_str().to_owned());
    if !matches!(state, crate::enrich::CacheState::Disabled) {
        let client = meta.pod_by_ip(v.client.ip);
        if let Some(p) = &client {
            v.client.meta = names(p);
        } else if let Some(node) = meta.node_by_ip(v.client.ip) {
            v.client.meta.node = Some(node);
        }
        if let Some(p) = meta
            .pod_by_ip(v.server.ip)
            .or_else(|| meta.dns_replica_by_ip(v.server.ip))
        {
            v.server.meta = names(&p);
        } else if let Some(node) = meta.node_by_ip(v.server.ip) {
            v.server.meta.node = Some(node);
        }
        if let Some(ip) = v.server.service_ip
            && let Some(s) = meta.service_by_cluster_ip(ip)
        {
            v.server.service = Some(format!("{}/{}", s.namespace, s.name));
        }
        if let Some(e) = v.egress_interface.as_mut()
            && e.kind == IfaceKind::BranchEni
            && let Some(p) = &client
            && let Some(b) = meta.branch_eni(p)
        {
            e.eni_id = Some(b.eni_id);
            e.vlan = e.vlan.or(Some(b.vlan_id));
        }
    }
    v.refresh_hint();
}
