//! Kubernetes enrichment (pipeline stage 6): names for the IPs and interfaces in verdicts.
//!
//! [`start`] connects to the API server (in-cluster config by default, a kubeconfig when given)
//! and watches — never polls — five resources with `kube::runtime::watcher` and its default
//! exponential backoff:
//!
//! | watch | scope | gives |
//! |---|---|---|
//! | Pods | this node (`spec.nodeName=<node>`) | [`MetaCache::pod_by_ip`], [`MetaCache::pod_by_host_veth`], [`MetaCache::branch_eni`] |
//! | Pods | cluster-wide, kube-dns Service's selector (else `k8s-app=kube-dns`) | [`MetaCache::dns_replica_by_ip`] |
//! | Services | cluster-wide | [`MetaCache::service_by_cluster_ip`], the CoreDNS selector |
//! | Nodes | cluster-wide | [`MetaCache::node_by_ip`] (InternalIP) |
//! | EndpointSlices | cluster-wide, v1 (v1beta1 on ≤ 1.20) | [`MetaCache::service_endpoints`] (optional) |
//!
//! The cache keeps derived entries (names, IPs, veth names, parsed annotations), not API
//! objects, in HashMap indexes; its size is one entry per object those watches return, bounded
//! by the API server's answer (the node's pods, not the cluster's, except for CoreDNS).
//!
//! Events never wait for the cache: until it is [`CacheState::Ready`], or while the API is down
//! ([`CacheState::Stale`]), lookups answer from what is known and the caller marks verdicts
//! with [`MetaCache::state`]. A dropped watch resumes from its resourceVersion, a 410 Gone
//! relists; neither needs a restart. Without any cluster configuration the cache is
//! [`CacheState::Disabled`] after one warning line.
//!
//! RBAC: list and watch on pods, services, nodes (core) and endpointslices (discovery.k8s.io),
//! nothing else (`deploy/clusterrole.yaml`; `rbac_tests` checks it against the requests made).

// This module is the stage's whole API; in the binary, parts of it stay unused until the
// verdict stage calls them.
#![allow(dead_code, reason = "lookups are API for the verdict and sink stages")]

mod cache;
mod file;
pub mod finalize;
mod index;
#[cfg(test)]
mod mock_tests;
mod model;
#[cfg(test)]
mod rbac_tests;
mod watch;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};

#[allow(unused_imports, reason = "re-exported API of the stage")]
pub use cache::{CacheState, CacheStats, MetaCache};
#[allow(unused_imports, reason = "re-exported API of the stage")]
pub use file::LAB_TOPOLOGY_PATH;
#[allow(unused_imports, reason = "re-exported API of the stage")]
pub use model::{
    AnnotationError, BRANCH_VETH_PREFIX, BranchEni, DEFAULT_VETH_PREFIX, EndpointMeta, NodeMeta,
    ObjKey, POD_ENI_ANNOTATION, PodMeta, ServiceMeta, ServicePortMeta, Workload, host_veth_name,
    parse_pod_eni, workload_of,
};

/// Environment variable VPC CNI reads its host veth prefix from.
pub const VETH_PREFIX_ENV: &str = "AWS_VPC_K8S_CNI_VETHPREFIX";

/// The one line logged when no cluster is configured.
pub const DISABLED_WARNING: &str = "no Kubernetes API configured: verdicts carry IPs only";

/// How to reach the cluster and what to scope to.
#[derive(Debug, Clone)]
pub struct EnrichConfig {
    /// Kubeconfig to use; `None` = in-cluster config (service account), then `$KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (pods are watched for this node only); `None` = all pods.
    pub node_name: Option<String>,
    /// VPC CNI host veth prefix (`AWS_VPC_K8S_CNI_VETHPREFIX`, default `eni`).
    pub veth_prefix: String,
    /// The cluster DNS Service, `namespace/name` (default `kube-system/kube-dns`).
    pub dns_service: String,
    /// Namespace of the tracer's own pods, watched to find peers (cross-node verdicts);
    /// `None`: not watched.
    pub peer_namespace: Option<String>,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            node_name: None,
            veth_prefix: std::env::var(VETH_PREFIX_ENV)
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_VETH_PREFIX.to_owned()),
            dns_service: "kube-system/kube-dns".to_owned(),
            peer_namespace: None,
        }
    }
}

/// Errors at the enrichment boundary.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    /// The kubeconfig given could not be read or used.
    #[error("kubeconfig {} (--kubeconfig): {reason}", path.display())]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why, in one clause (`file not found`, kube's parse error, ...).
        reason: String,
    },
    /// `$KUBECONFIG` is set but unusable.
    #[error("$KUBECONFIG={value}: {reason}")]
    KubeconfigEnv {
        /// The variable's value.
        value: String,
        /// Why, in one clause.
        reason: String,
    },
    /// A client could not be built from a configuration that was found.
    #[error("building the Kubernetes client")]
    Client(#[source] kube::Error),
    /// The lab topology file could not be read.
    #[error("reading {path}")]
    Topology {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The lab topology file is not JSON.
    #[error("parsing {path}")]
    TopologyJson {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Why a kubeconfig could not be used, in one clause: `file not found`, `permission denied`,
/// or kube's own message (each cause once, paths without Debug quotes).
fn kubeconfig_reason(e: &kube::config::KubeconfigError) -> String {
    use kube::config::KubeconfigError as K;
    match e {
        K::ReadConfig(io, _) => match io.kind() {
            std::io::ErrorKind::NotFound => "file not found".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => io.to_string(),
        },
        other => error_chain(other).replace("'\"", "'").replace("\"'", "'"),
    }
}

/// A client and the API server URL it talks to (named in connection errors).
type ClientAndUrl = (kube::Client, String);

fn client_from(config: kube::Config) -> Result<ClientAndUrl, EnrichError> {
    let url = config.cluster_url.to_string();
    kube::Client::try_from(config)
        .map(|c| (c, url))
        .map_err(EnrichError::Client)
}

/// Builds a client: the kubeconfig given, else in-cluster, else `$KUBECONFIG`. `Ok(None)` when
/// no configuration exists at all.
async fn client_for(cfg: &EnrichConfig) -> Result<Option<ClientAndUrl>, EnrichError> {
    let opts = KubeConfigOptions::default();
    if let Some(path) = &cfg.kubeconfig {
        let wrap = |e: &kube::config::KubeconfigError| EnrichError::Kubeconfig {
            path: path.clone(),
            reason: kubeconfig_reason(e),
        };
        let kc = Kubeconfig::read_from(path).map_err(|e| wrap(&e))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &opts)
            .await
            .map_err(|e| wrap(&e))?;
        return client_from(config).map(Some);
    }
    match kube::Config::incluster() {
        Ok(config) => return client_from(config).map(Some),
        Err(e) => tracing::debug!("no in-cluster Kubernetes config: {e}"),
    }
    let env = |e: &kube::config::KubeconfigError| EnrichError::KubeconfigEnv {
        value: std::env::var("KUBECONFIG").unwrap_or_default(),
        reason: kubeconfig_reason(e),
    };
    match Kubeconfig::from_env() {
        Ok(Some(kc)) => {
            let config = kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| env(&e))?;
            client_from(config).map(Some)
        }
        Ok(None) => Ok(None),
        Err(e) => Err(env(&e)),
    }
}

fn dns_service_key(s: &str) -> ObjKey {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => ObjKey::new(ns, name),
        _ => ObjKey::new("kube-system", s),
    }
}

/// Starts the watches (call inside a Tokio runtime; they run as tasks until every handle of
/// the returned cache is dropped). Errors only when a configuration was found or given but is
/// unusable; no configuration at all gives a [`CacheState::Disabled`] cache and one warning.
pub async fn try_start(cfg: EnrichConfig) -> Result<MetaCache, EnrichError> {
    if cfg.veth_prefix.len() > 4 {
        tracing::warn!(
            "veth prefix {:?} is longer than VPC CNI allows (4): pod veths will not match",
            cfg.veth_prefix
        );
    }
    let Some((client, url)) = client_for(&cfg).await? else {
        tracing::warn!("{DISABLED_WARNING}");
        return Ok(MetaCache::disabled());
    };
    tracing::info!("Kubernetes names from the API server at {url}");
    let cache = watch::start_with_client(
        client,
        cfg.node_name,
        cfg.veth_prefix,
        dns_service_key(&cfg.dns_service),
        cfg.peer_namespace.as_deref(),
        watch::Tuning::default(),
    );
    // Before any await: the watch tasks have not run yet, so every failure names the URL.
    cache.set_api_server(url);
    Ok(cache)
}

/// Like [`try_start`], but a configuration that cannot be used also gives a Disabled cache
/// (with one warning line naming the problem) instead of an error: enrichment never stops the
/// tracer.
pub async fn start(cfg: EnrichConfig) -> MetaCache {
    match try_start(cfg).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("{DISABLED_WARNING} ({})", error_chain(&e));
            MetaCache::disabled()
        }
    }
}

/// `error: cause: cause…` on one line, each message once (a cause whose text is already in
/// the line, because its parent printed it, is skipped).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Memory of this process from /proc/self/status (kB): VmRSS and VmHWM.
pub fn process_memory() -> Value {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    json!({ "vm_rss_kib": field("VmRSS:"), "vm_hwm_kib": field("VmHWM:") })
}

/// `tracer meta-dump`: starts the cache, waits up to `timeout` for Ready, returns everything it
/// holds as JSON (plus `process` memory and `ready_after_ms`).
pub async fn dump(cfg: EnrichConfig, timeout: Duration) -> anyhow::Result<Value> {
    let started = Instant::now();
    let cache = try_start(cfg).await?;
    if cache.state() == CacheState::Disabled {
        bail!("{DISABLED_WARNING} (in-cluster config, --kubeconfig or $KUBECONFIG)");
    }
    if !cache.wait_ready(timeout).await {
        bail!(
            "Kubernetes metadata not ready after {timeout:?} (state {}; last error: {})",
            cache.state().as_str(),
            cache.last_error().unwrap_or_else(|| "none".to_owned())
        );
    }
    let ready_ms = started.elapsed().as_millis();
    // EndpointSlices are optional for Ready; give them a moment to land for the dump.
    let slices_deadline = Instant::now() + Duration::from_secs(2);
    while cache.slice_count() == 0 && Instant::now() < slices_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v = cache::with_field(cache.snapshot(), "ready_after_ms", json!(ready_ms));
    Ok(cache::with_field(v, "process", process_memory()))
}

/// `tracer meta-bench`: fills a cache with `pods` synthetic pods of this node (realistic
/// labels, annotations, owner references and status, decoded from JSON the way watch events
/// are), `nodes` nodes and `pods / 5` services, and reports this process's memory before and
/// after. No API server involved.
pub fn bench(pods: usize, nodes: usize) -> anyhow::Result<Value> {
    use k8s_openapi::api::core::v1::{Node, Pod, Service};
    use model::{ConvertCtx, Indexed as _};

    let before = process_memory();
    let cache = MetaCache::new(
        cache::Mode::Static,
        Some("bench-node-0".to_owned()),
        DEFAULT_VETH_PREFIX.to_owned(),
        ObjKey::new("kube-system", "kube-dns"),
    );
    let started = Instant::now();
    let ctx = ConvertCtx {
        veth_prefix: DEFAULT_VETH_PREFIX,
        warnings: &cache.shared.warnings,
    };
    for i in 0..nodes {
        let text = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": format!("ip-10-0-{}-{}.ec2.internal", i / 250, i % 250 + 1),
                          "labels": { "kubernetes.io/os": "linux",
                                      "node.kubernetes.io/instance-type": "m5.large",
                                      "topology.kubernetes.io/zone": "eu-west-1a" } },
            "status": { "addresses": [
                { "type": "InternalIP", "address": format!("10.0.{}.{}", i / 250, i % 250 + 1) },
                { "type": "Hostname", "address": format!("ip-10-0-{}-{}.ec2.internal", i / 250, i % 250 + 1) } ] },
        })
        .to_string();
        let node: Node = serde_json::from_str(&text).context("synthetic node")?;
        if let (Some(k), Some(m)) = (node.obj_key(), node.to_meta(&ctx)) {
            cache.update(|idx| idx.nodes.upsert(k, m));
        }
    }
    for i in 0..pods {
        let ip = format!("10.1.{}.{}", i / 250, i % 250 + 1);
        let ann = if i % 10 == 0 {
            format!(
                r#"[{{"eniId":"eni-{i:017x}","ifAddress":"02:00:00:00:00:01","privateIp":"{ip}","vlanId":{},"subnetCidr":"10.1.0.0/16"}}]"#,
                i % 4000 + 1
            )
        } else {
            String::new()
        };
        let text = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": format!("app-{}-5d78c9869d-{i:05}", i % 50), "namespace": format!("team-{}", i % 20),
                "labels": { "app": format!("app-{}", i % 50), "pod-template-hash": "5d78c9869d" },
                "annotations": { "vpc.amazonaws.com/pod-eni": ann },
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": format!("app-{}-5d78c9869d", i % 50), "uid": "x", "controller": true }],
            },
            "spec": { "nodeName": "bench-node-0", "containers": [{ "name": "c", "image": "nginx" }] },
            "status": { "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }], "hostIP": "10.0.0.1" },
        })
        .to_string();
        let pod: Pod = serde_json::from_str(&text).context("synthetic pod")?;
        if let (Some(k), Some(m)) = (pod.obj_key(), pod.to_meta(&ctx)) {
            cache.update(|idx| idx.pods.upsert(k, m));
        }
    }
    for i in 0..pods / 5 {
        let text = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": format!("svc-{i}"), "namespace": format!("team-{}", i % 20) },
            "spec": { "clusterIP": format!("172.20.{}.{}", i / 250, i % 250 + 1),
                      "selector": { "app": format!("app-{}", i % 50) },
                      "ports": [{ "name": "http", "protocol": "TCP", "port": 80 }] },
        })
        .to_string();
        let svc: Service = serde_json::from_str(&text).context("synthetic service")?;
        if let (Some(k), Some(m)) = (svc.obj_key(), svc.to_meta(&ctx)) {
            cache.update(|idx| idx.services.upsert(k, m));
        }
    }
    let fill_ms = started.elapsed().as_secs_f64() * 1000.0;
    let lookups = 100_000u32;
    let t = Instant::now();
    let mut hits = 0u32;
    for n in 0..lookups {
        let i = n as usize % pods.max(1);
        let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::new(
            10,
            1,
            (i / 250) as u8,
            (i % 250 + 1) as u8,
        ));
        hits += u32::from(cache.pod_by_ip(ip).is_some());
    }
    let lookup_ns = t.elapsed().as_nanos() as f64 / f64::from(lookups);
    let after = process_memory();
    let snap = cache.snapshot();
    Ok(json!({
        "pods": pods, "nodes": nodes, "services": pods / 5,
        "before": before, "after": after,
        "fill_ms": fill_ms,
        "pod_by_ip_ns": lookup_ns, "lookup_hits": hits,
        "index_sizes": snap.get("index_sizes").cloned(),
    }))
}

/// Entry point of the hidden `tracer meta-dump` subcommand: runs [`dump`] on a fresh runtime and
/// prints the JSON on stdout.
pub fn dump_main(cfg: EnrichConfig, timeout: Duration) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let v = rt.block_on(dump(cfg, timeout))?;
    println!("{v}");
    Ok(())
}

/// Entry point of the hidden `tracer meta-bench` subcommand: runs [`bench`] and prints the JSON
/// on stdout.
pub fn bench_main(pods: usize, nodes: usize) -> anyhow::Result<()> {
    println!("{}", bench(pods, nodes)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_cluster_configuration_disables() {
        if std::env::var_os("KUBECONFIG").is_some()
            || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        {
            eprintln!("SKIPPED: a cluster is configured in this environment");
            return;
        }
        let cache = try_start(EnrichConfig::default()).await.expect("no error");
        assert_eq!(cache.state(), CacheState::Disabled);
        assert!(!cache.wait_ready(Duration::from_millis(10)).await);
        assert!(cache.pod_by_ip("10.0.0.1".parse().expect("ip")).is_none());
        let err = dump(EnrichConfig::default(), Duration::from_secs(1)).await;
        assert!(err.is_err_and(|e| e.to_string().contains("no Kubernetes API configured")));
    }

    #[tokio::test]
    async fn unusable_kubeconfig_is_an_error_for_try_start_only() {
        let cfg = EnrichConfig {
            kubeconfig: Some(PathBuf::from("/nonexistent/kubeconfig")),
            ..EnrichConfig::default()
        };
        let err = try_start(cfg.clone())
            .await
            .map(|_| ())
            .expect_err("missing file");
        assert!(matches!(err, EnrichError::Kubeconfig { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/kubeconfig"));
        assert_eq!(start(cfg).await.state(), CacheState::Disabled);
    }

    #[test]
    fn dns_service_names() {
        assert_eq!(
            dns_service_key("kube-system/kube-dns"),
            ObjKey::new("kube-system", "kube-dns")
        );
        assert_eq!(
            dns_service_key("coredns"),
            ObjKey::new("kube-system", "coredns")
        );
        assert_eq!(dns_service_key("/x"), ObjKey::new("kube-system", "/x"));
    }

    #[test]
    fn bench_fills_the_indexes() {
        let v = bench(50, 5).expect("bench runs");
        assert_eq!(v["index_sizes"]["pod_ips"], 50);
        assert_eq!(v["index_sizes"]["node_ips"], 5);
        assert_eq!(v["lookup_hits"], 100_000);
    }
}
