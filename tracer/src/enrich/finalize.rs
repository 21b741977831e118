//! The one place a verdict (or summary) is finished before the sinks: wall-clock time,
//! Kubernetes names (client pod, server pod — the CoreDNS replica —, the Service it was reached
//! through, nodes, the branch ENI of pods with security groups) and, last, the hint, rendered
//! once from the final fields ([`hint`], only for a verdict that gets a line of its own: a
//! healthy connection counted into a summary needs none). Every line says how current the
//! names are (`enrichment`: ready, static, syncing, stale, disabled), so a SIEM can tell "no
//! name" from "names unknown because the API was down". Nothing edits a line after this.

use std::sync::Arc;

use crate::{
    capture::hooks::HookTable,
    decode::event::IfaceKind,
    enrich::{MetaCache, PodMeta as KubePod},
    verdict::{
        ClientSide, PodMeta, Verdict,
        summary::{Summary, SummaryEndpoint},
    },
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

/// What finalize adds to a verdict besides its own fields.
pub struct Facts<'a> {
    /// Kubernetes names.
    pub meta: &'a MetaCache,
    /// Other tools' programs at each tc hook.
    pub hooks: &'a HookTable,
    /// Monotonic ns → RFC 3339.
    pub wall: &'a dyn Fn(u64) -> Option<String>,
}

/// Finishes `v` but for its hint: its wall-clock time, Kubernetes names from the cache (empty
/// where unknown), the programs at the hook of a drop by a tc program, and the finding about
/// its own node. [`hint`] comes last, once the verdict is known to get a line of its own.
pub fn finalize(v: &mut Verdict, f: &Facts<'_>) {
    v.time = (f.wall)(v.start_ns);
    annotate(v, f.meta);
    if let Some(d) = v.drop.as_mut()
        && let Some(ingress) = d.tc_hook()
    {
        d.programs = Some(f.hooks.get(d.ifindex, ingress).to_vec());
    }
    if let Some(own) = crate::peer::own_node_finding(v, f.wall) {
        v.peer = Some(own);
    }
}

/// Renders `v`'s hint from its final fields.
pub fn hint(v: &mut Verdict) {
    v.hint = crate::verdict::hint::render(v);
}

/// The pod whose veth a request entered through with a source address that is not that pod's
/// (named in `client.veth_pod`): such a request belongs to no one we can name, never to the
/// address's owner. The one name a healthy connection needs before it is known whether it is
/// counted into a summary (see [`crate::verdict::summary::summarizable`]): the rest of
/// [`finalize`] is spent only on lines that go out.
pub fn source_not_its_pod(v: &mut Verdict, meta: &MetaCache) -> Option<Arc<KubePod>> {
    if matches!(meta.state(), crate::enrich::CacheState::Disabled) {
        return None;
    }
    let entered = (v.facts.client_side == ClientSide::Pod)
        .then_some(v.facts.first_iface.as_deref())
        .flatten()
        .and_then(|ifname| meta.pod_by_host_veth(ifname))
        .filter(|p| !p.host_network && !p.ips.is_empty() && !p.ips.contains(&v.client.ip))?;
    v.client.veth_pod = Some(format!("{}/{}", entered.namespace, entered.name));
    Some(entered)
}

/// Fills the Kubernetes fields of `v` from the cache; leaves them empty where unknown.
fn annotate(v: &mut Verdict, meta: &MetaCache) {
    let state = meta.state();
    v.enrichment = Some(state.as_str().to_owned());
    if !matches!(state, crate::enrich::CacheState::Disabled) {
        let entered = source_not_its_pod(v, meta);
        let client = match &entered {
            Some(p) => {
                v.client.meta.node = p.node.clone();
                None
            }
            None => meta.pod_by_ip(v.client.ip),
        };
        if let Some(p) = &client {
            v.facts.client_pod_unseen =
                v.facts.client_side == ClientSide::Host && p.is_pod_network_on(&v.node);
            v.client.meta = names(p);
        } else if entered.is_none()
            && let Some(node) = meta.node_by_ip(v.client.ip)
        {
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
}

fn endpoint(e: &mut SummaryEndpoint, meta: &MetaCache, server: bool) {
    if let Some(p) = meta
        .pod_by_ip(e.ip)
        .or_else(|| server.then(|| meta.dns_replica_by_ip(e.ip)).flatten())
    {
        e.meta = names(&p);
        if server && meta.dns_replica_by_ip(e.ip).is_some() {
            e.service = meta.dns_service_name();
        }
    } else if let Some(node) = meta.node_by_ip(e.ip) {
        e.meta.node = Some(node);
    }
}

/// Finishes a summary line: interval times, names, hint.
pub fn finalize_summary(s: &mut Summary, meta: &MetaCache, wall: &dyn Fn(u64) -> Option<String>) {
    s.time = wall(s.start_ns);
    s.end_time = wall(s.end_ns);
    let state = meta.state();
    s.enrichment = Some(state.as_str().to_owned());
    if !matches!(state, crate::enrich::CacheState::Disabled) {
        endpoint(&mut s.client, meta, false);
        endpoint(&mut s.server, meta, true);
        if let Some(e) = s.egress_interface.as_mut()
            && e.kind == IfaceKind::BranchEni
            && let Some(p) = meta.pod_by_ip(s.client.ip)
            && let Some(b) = meta.branch_eni(&p)
        {
            e.eni_id = Some(b.eni_id);
            e.vlan = e.vlan.or(Some(b.vlan_id));
        }
    }
    s.hint = crate::verdict::hint::summary(s);
}
