//! Seeding the API server with what a real cluster would hold: the lab's objects
//! ([`ApiServer::seed_lab`]), tracer pods ([`ApiServer::seed_tracer_pods`]) and synthetic
//! pods and nodes for scale measurements ([`ApiServer::seed_synthetic`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};
use sha1::{Digest as _, Sha1};

use super::ApiServer;
use crate::lab::Topology;

impl ApiServer {
    /// Writes what a real cluster would hold for the lab: Namespaces; Nodes with InternalIP;
    /// one ReplicaSet per workload (so pods carry the ownerReferences and `pod-template-hash`
    /// label a Deployment leaves); Pods bound to their nodes, with labels, the
    /// `vpc.amazonaws.com/pod-eni` annotation, and status (phase Running, podIP, hostIP) patched
    /// through the status subresource; the Services (kube-dns with ClusterIP 198.19.0.10 and
    /// selector k8s-app=kube-dns); one EndpointSlice per Service (discovery.k8s.io/v1beta1 on
    /// 1.20, v1 where served). Idempotent (`kubectl apply`).
    pub fn seed_lab(&self, topology: &Topology) -> Result<()> {
        let node_ip: BTreeMap<&str, Ipv4Addr> = topology
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.primary_ip))
            .collect();

        // Namespaces.
        let namespaces: BTreeSet<&str> = topology
            .pods
            .iter()
            .map(|p| p.namespace.as_str())
            .chain(topology.services.iter().map(|s| s.namespace.as_str()))
            .collect();
        let items: Vec<Value> = namespaces
            .iter()
            .map(
                |ns| json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns } }),
            )
            .collect();
        self.kubectl_apply(&json!({ "apiVersion": "v1", "kind": "List", "items": items }))
            .context("seeding namespaces")?;

        // Nodes, then their addresses (status).
        let items: Vec<Value> = topology
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": { "name": n.name, "labels": {
                        "kubernetes.io/hostname": n.name,
                        "kubernetes.io/os": "linux",
                        "tracer.lab/netns": n.netns,
                    } },
                    "spec": { "providerID": format!("aws:///lab-1a/i-{}", short_hash(&n.name, 17)) },
                })
            })
            .collect();
        self.kubectl_apply(&json!({ "apiVersion": "v1", "kind": "List", "items": items }))
            .context("seeding nodes")?;
        for n in &topology.nodes {
            self.patch_status(
                "node",
                None,
                &n.name,
                &json!({
                    "addresses": [
                        { "type": "InternalIP", "address": n.primary_ip.to_string() },
                        { "type": "Hostname", "address": n.name },
                    ],
                    "conditions": [{ "type": "Ready", "status": "True", "reason": "KubeletReady",
                                     "message": "tracer lab" }],
                }),
            )
            .with_context(|| format!("patching status of node {}", n.name))?;
        }

        // One ReplicaSet per workload, as a Deployment would have left it.
        let mut workloads: BTreeMap<(&str, &str), Vec<&crate::lab::Pod>> = BTreeMap::new();
        for p in &topology.pods {
            workloads
                .entry((p.namespace.as_str(), p.workload.name.as_str()))
                .or_default()
                .push(p);
        }
        let mut rs_items = Vec::new();
        for ((ns, workload), pods) in &workloads {
            let hash = pod_template_hash(ns, workload);
            let mut labels = pods.first().map(|p| p.labels.clone()).unwrap_or_default();
            labels.insert("pod-template-hash".to_owned(), hash.clone());
            rs_items.push(json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": { "name": format!("{workload}-{hash}"), "namespace": ns,
                              "labels": labels },
                "spec": {
                    "replicas": pods.len(),
                    "selector": { "matchLabels": labels },
                    "template": {
                        "metadata": { "labels": labels },
                        "spec": { "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.2" }] },
                    },
                },
            }));
        }
        self.kubectl_apply(&json!({ "apiVersion": "v1", "kind": "List", "items": rs_items }))
            .context("seeding replica sets")?;

        // Pods, owned by their ReplicaSet; then status.
        let mut pod_items = Vec::new();
        for ((ns, workload), pods) in &workloads {
            let hash = pod_template_hash(ns, workload);
            let rs = format!("{workload}-{hash}");
            let uid = self
                .kubectl_ok(&[
                    "get",
                    "replicaset",
                    &rs,
                    "-n",
                    ns,
                    "-o",
                    "jsonpath={.metadata.uid}",
                ])?
                .trim()
                .to_owned();
            ensure!(!uid.is_empty(), "replica set {ns}/{rs} has no uid");
            for p in pods {
                let mut labels = p.labels.clone();
                labels.insert("pod-template-hash".to_owned(), hash.clone());
                pod_items.push(json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {
                        "name": p.name, "namespace": p.namespace,
                        "labels": labels, "annotations": p.annotations,
                        "ownerReferences": [{
                            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": uid,
                            "controller": true, "blockOwnerDeletion": true,
                        }],
                    },
                    "spec": {
                        "nodeName": p.node,
                        "dnsPolicy": p.dns_policy,
                        "automountServiceAccountToken": false,
                        "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.2" }],
                    },
                }));
            }
        }
        self.kubectl_apply(&json!({ "apiVersion": "v1", "kind": "List", "items": pod_items }))
            .context("seeding pods")?;
        for p in &topology.pods {
            let host_ip = node_ip.get(p.node.as_str()).map(ToString::to_string);
            self.patch_status(
                "pod",
                Some(&p.namespace),
                &p.name,
                &json!({
                    "phase": "Running",
                    "podIP": p.ip.to_string(),
                    "podIPs": [{ "ip": p.ip.to_string() }],
                    "hostIP": host_ip,
                    "conditions": [{ "type": "Ready", "status": "True" }],
                }),
            )
            .with_context(|| format!("patching status of pod {}/{}", p.namespace, p.name))?;
        }

        // Services and their EndpointSlices.
        let slice_version = if self.serves("discovery.k8s.io/v1")? {
            "v1"
        } else {
            "v1beta1"
        };
        let mut items = Vec::new();
        for s in &topology.services {
            let ports: Vec<Value> = s
                .ports
                .iter()
                .map(|p| {
                    json!({ "name": p.name, "protocol": p.protocol, "port": p.port,
                                 "targetPort": p.target_port })
                })
                .collect();
            items.push(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": { "name": s.name, "namespace": s.namespace,
                              "labels": { "k8s-app": s.name } },
                "spec": { "type": "ClusterIP", "clusterIP": s.cluster_ip.to_string(),
                          "selector": s.selector, "ports": ports },
            }));
            let endpoints: Vec<Value> = s
                .endpoints
                .iter()
                .map(|e| {
                    let (pod_ns, pod_name) = e.pod.split_once('/').unwrap_or(("", e.pod.as_str()));
                    let target = json!({ "kind": "Pod", "namespace": pod_ns, "name": pod_name });
                    if slice_version == "v1" {
                        json!({ "addresses": [e.ip.to_string()], "conditions": { "ready": true },
                                "targetRef": target, "nodeName": e.node })
                    } else {
                        json!({ "addresses": [e.ip.to_string()], "conditions": { "ready": true },
                                "targetRef": target,
                                "topology": { "kubernetes.io/hostname": e.node } })
                    }
                })
                .collect();
            let slice_ports: Vec<Value> = s
                .ports
                .iter()
                .map(|p| json!({ "name": p.name, "protocol": p.protocol, "port": p.target_port }))
                .collect();
            items.push(json!({
                "apiVersion": format!("discovery.k8s.io/{slice_version}"),
                "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{}-lab", s.name), "namespace": s.namespace,
                    "labels": { "kubernetes.io/service-name": s.name,
                                "endpointslice.kubernetes.io/managed-by": "tracer-lab" },
                },
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": slice_ports,
            }));
        }
        self.kubectl_apply(&json!({ "apiVersion": "v1", "kind": "List", "items": items }))
            .context("seeding services and endpoint slices")?;
        Ok(())
    }

    /// Adds one tracer pod per `(node, node IP)` in `namespace`, labelled as deploy/'s
    /// DaemonSet labels them and Running with host networking (pod IP = node IP): what a
    /// tracer looks up to find its peers for cross-node verdicts.
    pub fn seed_tracer_pods(&self, namespace: &str, nodes: &[(&str, Ipv4Addr)]) -> Result<()> {
        self.kubectl_apply(&json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": namespace },
        }))
        .context("seeding the tracer's namespace")?;
        for (node, ip) in nodes {
            let name = format!("tracer-{}", short_hash(node, 5));
            self.kubectl_apply(&json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": name, "namespace": namespace,
                              "labels": { "app.kubernetes.io/name": "tracer" } },
                "spec": {
                    "nodeName": node,
                    "hostNetwork": true,
                    "automountServiceAccountToken": false,
                    "containers": [{ "name": "tracer", "image": "registry.k8s.io/pause:3.2" }],
                },
            }))
            .with_context(|| format!("seeding tracer pod {namespace}/{name}"))?;
            self.patch_status(
                "pod",
                Some(namespace),
                &name,
                &json!({
                    "phase": "Running",
                    "podIP": ip.to_string(),
                    "podIPs": [{ "ip": ip.to_string() }],
                    "hostIP": ip.to_string(),
                    "conditions": [{ "type": "Ready", "status": "True" }],
                }),
            )
            .with_context(|| format!("patching status of tracer pod {namespace}/{name}"))?;
        }
        Ok(())
    }

    /// Adds `pods` pods spread over `nodes` extra nodes, all Running with IPs from
    /// 198.18.128.0/17 (for memory and scale measurements). Pod `i` runs on node
    /// `bench-node-<i % nodes>`; nodes get InternalIPs from 198.18.100.0/24. Namespace `bench`.
    pub fn seed_synthetic(&self, pods: usize, nodes: usize) -> Result<()> {
        ensure!(nodes > 0 && nodes < 250, "nodes must be in 1..250");
        ensure!(pods < 32_000, "pods must be below 32000");
        self.kubectl_apply(&json!({ "apiVersion": "v1", "kind": "Namespace",
                                    "metadata": { "name": "bench" } }))?;
        let node_name = |i: usize| format!("bench-node-{i}");
        let items: Vec<Value> = (0..nodes)
            .map(|i| json!({ "apiVersion": "v1", "kind": "Node", "metadata": { "name": node_name(i) } }))
            .collect();
        self.kubectl_apply(&json!({ "apiVersion": "v1", "kind": "List", "items": items }))?;
        for i in 0..nodes {
            self.patch_status(
                "node",
                None,
                &node_name(i),
                &json!({ "addresses": [{ "type": "InternalIP",
                                         "address": format!("198.18.100.{}", i + 1) }] }),
            )?;
        }
        let items: Vec<Value> = (0..pods)
            .map(|i| {
                json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": { "name": format!("bench-{i}"), "namespace": "bench",
                                  "labels": { "app": format!("bench-{}", i % 20) } },
                    "spec": { "nodeName": node_name(i % nodes),
                              "automountServiceAccountToken": false,
                              "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.2" }] },
                })
            })
            .collect();
        self.kubectl_apply(&json!({ "apiVersion": "v1", "kind": "List", "items": items }))?;
        for i in 0..pods {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 128, 0)) + 1 + i as u32);
            self.patch_status(
                "pod",
                Some("bench"),
                &format!("bench-{i}"),
                &json!({ "phase": "Running", "podIP": ip.to_string(),
                         "podIPs": [{ "ip": ip.to_string() }] }),
            )?;
        }
        Ok(())
    }
}

/// The first `n` hex characters of sha1(`s`).
fn short_hash(s: &str, n: usize) -> String {
    Sha1::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .chars()
        .take(n)
        .collect()
}

/// A deterministic 10-character `pod-template-hash` in the alphabet Kubernetes uses for it
/// (`SafeEncodeString`: no vowels, no 0/1/3 to avoid words and look-alikes).
pub fn pod_template_hash(namespace: &str, workload: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    Sha1::digest(format!("{namespace}/{workload}").as_bytes())
        .iter()
        .take(10)
        .map(|b| {
            let i = usize::from(*b) % ALPHABET.len();
            ALPHABET.get(i).map_or('b', |c| char::from(*c))
        })
        .collect()
}
