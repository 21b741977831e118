//! Static metadata from the lab's topology file (`/run/tracer-lab/topology.json`, written by
//! `cargo xtask lab up`), so the demo shows names without an API server. Read as plain JSON to
//! keep the tracer independent of xtask; the shape is `xtask::lab::Topology`.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use serde_json::Value;

use super::{
    EnrichError,
    cache::{MetaCache, Mode},
    model::{
        BRANCH_VETH_PREFIX, DataWarnings, EndpointMeta, NodeMeta, ObjKey, POD_ENI_ANNOTATION,
        PodMeta, ServiceMeta, ServicePortMeta, SliceMeta, Workload, host_veth_name, parse_pod_eni,
    },
};

/// Default location of the lab's topology file.
pub const LAB_TOPOLOGY_PATH: &str = "/run/tracer-lab/topology.json";

fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn ip(v: &Value, k: &str) -> Option<IpAddr> {
    s(v, k).and_then(|x| x.parse().ok())
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn pod_meta(p: &Value, veth_prefix: &str, warnings: &DataWarnings) -> Option<PodMeta> {
    let namespace = s(p, "namespace")?.to_owned();
    let name = s(p, "name")?.to_owned();
    let annotations = string_map(p.get("annotations"));
    let branch_enis = match annotations
        .get(POD_ENI_ANNOTATION)
        .map(|a| parse_pod_eni(a))
    {
        Some(Ok((enis, errors))) => {
            if !errors.is_empty() {
                warnings
                    .annotation
                    .fetch_add(errors.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            enis
        }
        Some(Err(_)) => {
            warnings
                .annotation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Vec::new()
        }
        None => Vec::new(),
    };
    let prefix = s(p, "veth_prefix").unwrap_or(if branch_enis.is_empty() {
        veth_prefix
    } else {
        BRANCH_VETH_PREFIX
    });
    let host_veth = s(p, "host_veth")
        .map(str::to_owned)
        .unwrap_or_else(|| host_veth_name(prefix, &namespace, &name));
    let workload = p.get("workload").and_then(|w| {
        Some(Workload {
            kind: s(w, "kind")?.to_owned(),
            name: s(w, "name")?.to_owned(),
        })
    });
    Some(PodMeta {
        workload,
        node: s(p, "node").map(str::to_owned),
        ips: ip(p, "ip").into_iter().collect(),
        host_network: false,
        host_veths: vec![host_veth],
        branch_enis,
        labels: super::model::kept_labels(&string_map(p.get("labels"))),
        namespace,
        name,
    })
}

impl MetaCache {
    /// Loads the lab's topology file (see [`LAB_TOPOLOGY_PATH`]) into a cache in state
    /// [`super::CacheState::Static`]: every lab pod (both nodes), the CoreDNS pods selected by
    /// the kube-dns Service's selector, the Services with their endpoints, the nodes.
    pub fn from_lab_topology(path: &Path) -> Result<MetaCache, EnrichError> {
        let text = std::fs::read_to_string(path).map_err(|source| EnrichError::Topology {
            path: path.to_owned(),
            source,
        })?;
        let v: Value = serde_json::from_str(&text).map_err(|source| EnrichError::TopologyJson {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::from_lab_value(&v, None))
    }

    /// Like [`MetaCache::from_lab_topology`], from the parsed JSON; `node_name` is reported as
    /// the cache's node.
    pub(crate) fn from_lab_value(v: &Value, node_name: Option<String>) -> MetaCache {
        let dns_service = ObjKey::new("kube-system", "kube-dns");
        let cache = MetaCache::new(
            Mode::Static,
            node_name,
            super::model::DEFAULT_VETH_PREFIX.to_owned(),
            dns_service.clone(),
        );
        let list = |k: &str| {
            v.get(k)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let warnings = &cache.shared.warnings;
        let pods: Vec<(PodMeta, BTreeMap<String, String>)> = list("pods")
            .iter()
            .filter_map(|p| {
                Some((
                    pod_meta(p, &cache.shared.veth_prefix, warnings)?,
                    string_map(p.get("labels")),
                ))
            })
            .collect();
        let services: Vec<ServiceMeta> = list("services")
            .iter()
            .filter_map(|svc| {
                Some(ServiceMeta {
                    namespace: s(svc, "namespace")?.to_owned(),
                    name: s(svc, "name")?.to_owned(),
                    cluster_ips: ip(svc, "cluster_ip").into_iter().collect(),
                    selector: string_map(svc.get("selector")),
                    ports: svc
                        .get("ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|p| {
                            Some(ServicePortMeta {
                                name: s(p, "name").map(str::to_owned),
                                protocol: s(p, "protocol").unwrap_or("TCP").to_owned(),
                                port: i32::try_from(p.get("port")?.as_u64()?).ok()?,
                            })
                        })
                        .collect(),
                })
            })
            .collect();
        let slices: Vec<(ObjKey, SliceMeta)> = list("services")
            .iter()
            .filter_map(|svc| {
                let key = ObjKey::new(s(svc, "namespace")?, s(svc, "name")?);
                let endpoints = svc
                    .get("endpoints")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| {
                        let pod = s(e, "pod")
                            .and_then(|p| p.split_once('/'))
                            .map(|(ns, n)| ObjKey::new(ns, n));
                        Some(EndpointMeta {
                            ip: ip(e, "ip")?,
                            pod,
                            node: s(e, "node").map(str::to_owned),
                            ready: Some(true),
                        })
                    })
                    .collect();
                Some((
                    ObjKey::new(&key.namespace, format!("{}-lab", key.name)),
                    SliceMeta {
                        service: Some(key),
                        endpoints,
                    },
                ))
            })
            .collect();
        let dns_selector = services
            .iter()
            .find(|svc| svc.key() == dns_service)
            .map(|svc| svc.selector.clone())
            .filter(|sel| !sel.is_empty())
            .unwrap_or_else(|| [("k8s-app".to_owned(), "kube-dns".to_owned())].into());
        let nodes: Vec<NodeMeta> = list("nodes")
            .iter()
            .filter_map(|n| {
                Some(NodeMeta {
                    name: s(n, "name")?.to_owned(),
                    ips: ip(n, "primary_ip").into_iter().collect(),
                })
            })
            .collect();
        cache.update(|idx| {
            idx.pods
                .replace(pods.iter().map(|(p, _)| (p.key(), p.clone())));
            idx.dns_pods.replace(
                pods.iter()
                    .filter(|(_, labels)| {
                        dns_selector.iter().all(|(k, v)| labels.get(k) == Some(v))
                    })
                    .map(|(p, _)| (p.key(), p.clone())),
            );
            idx.services
                .replace(services.into_iter().map(|svc| (svc.key(), svc)));
            idx.nodes
                .replace(nodes.into_iter().map(|n| (ObjKey::new("", &n.name), n)));
            idx.slices.replace(slices);
        });
        cache
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::CacheState;

    /// The shape `xtask::lab::Topology` serializes to (trimmed to what the loader reads).
    fn topology() -> Value {
        serde_json::json!({
            "nodes": [
                { "name": "ip-198-18-1-10.lab.internal", "primary_ip": "198.18.1.10" },
                { "name": "ip-198-18-2-10.lab.internal", "primary_ip": "198.18.2.10" },
            ],
            "pods": [
                { "namespace": "default", "name": "client", "ip": "198.18.1.21",
                  "node": "ip-198-18-1-10.lab.internal", "host_veth": "enia7a3e029a7b",
                  "veth_prefix": "eni", "workload": { "kind": "Deployment", "name": "client" },
                  "labels": { "app": "client" }, "annotations": {} },
                { "namespace": "kube-system", "name": "coredns-b", "ip": "198.18.2.30",
                  "node": "ip-198-18-2-10.lab.internal", "host_veth": "eni11edfe6a182",
                  "veth_prefix": "eni", "workload": { "kind": "Deployment", "name": "coredns" },
                  "labels": { "k8s-app": "kube-dns" }, "annotations": {} },
                { "namespace": "default", "name": "sg-client", "ip": "198.18.1.40",
                  "node": "ip-198-18-1-10.lab.internal", "host_veth": "vland65337fa1ab",
                  "veth_prefix": "vlan", "workload": { "kind": "Deployment", "name": "sg-client" },
                  "labels": { "app": "sg-client" },
                  "annotations": { "vpc.amazonaws.com/pod-eni":
                    "[{\"eniId\":\"eni-0b4a7c9e1d2f30001\",\"ifAddress\":\"02:74:72:00:03:00\",\"privateIp\":\"198.18.1.40\",\"vlanId\":1,\"subnetCidr\":\"198.18.1.0/24\"}]" } },
            ],
            "services": [
                { "namespace": "kube-system", "name": "kube-dns", "cluster_ip": "198.19.0.10",
                  "selector": { "k8s-app": "kube-dns" },
                  "ports": [{ "name": "dns", "protocol": "UDP", "port": 53 }],
                  "endpoints": [{ "ip": "198.18.2.30", "pod": "kube-system/coredns-b",
                                  "node": "ip-198-18-2-10.lab.internal" }] },
            ],
        })
    }

    #[test]
    fn loads_the_lab_shape() {
        let dir = std::env::temp_dir().join(format!("enrich-lab-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("topology.json");
        std::fs::write(&path, topology().to_string()).expect("write");
        let c = MetaCache::from_lab_topology(&path).expect("loads");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(c.state(), CacheState::Static);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let client = c.pod_by_ip(ip("198.18.1.21")).expect("client by ip");
        assert_eq!(
            client.workload.as_ref().map(|w| w.name.as_str()),
            Some("client")
        );
        assert_eq!(
            client.labels.get("app").map(String::as_str),
            Some("client"),
            "labels kept for `tracer observe -l`"
        );
        assert_eq!(
            c.pod_by_host_veth("enia7a3e029a7b")
                .map(|p| p.name.clone())
                .as_deref(),
            Some("client")
        );
        let sg = c
            .pod_by_host_veth("vland65337fa1ab")
            .expect("sg-client by veth");
        let eni = c.branch_eni(&sg).expect("branch ENI");
        assert_eq!(
            (eni.eni_id.as_str(), eni.vlan_id),
            ("eni-0b4a7c9e1d2f30001", 1)
        );
        assert_eq!(
            c.service_by_cluster_ip(ip("198.19.0.10"))
                .map(|s| s.name.clone())
                .as_deref(),
            Some("kube-dns")
        );
        let dns = c.dns_replica_by_ip(ip("198.18.2.30")).expect("replica");
        assert_eq!(dns.node.as_deref(), Some("ip-198-18-2-10.lab.internal"));
        assert!(
            c.dns_replica_by_ip(ip("198.18.1.21")).is_none(),
            "client is not a replica"
        );
        assert_eq!(
            c.node_by_ip(ip("198.18.2.10")).as_deref(),
            Some("ip-198-18-2-10.lab.internal")
        );
        assert_eq!(
            c.service_endpoints(&ObjKey::new("kube-system", "kube-dns"))
                .len(),
            1
        );
    }

    #[test]
    fn missing_or_bad_file_is_an_error() {
        let err = MetaCache::from_lab_topology(Path::new("/nonexistent/topology.json"));
        assert!(matches!(err, Err(EnrichError::Topology { .. })));
        let dir = std::env::temp_dir().join(format!("enrich-lab-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("topology.json");
        std::fs::write(&path, "{ not json").expect("write");
        let err = MetaCache::from_lab_topology(&path);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(err, Err(EnrichError::TopologyJson { .. })));
    }
}
