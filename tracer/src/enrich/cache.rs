//! [`MetaCache`]: the handle the rest of the tracer queries, and its state.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use serde::Serialize;
use serde_json::{Value, json};

use super::{
    index::{Index, Table, TableId},
    model::{BranchEni, DataWarnings, EndpointMeta, ObjKey, PodMeta, ServiceMeta},
};

/// How far the cache can be trusted right now. Events flow in every state; verdicts carry the
/// state so a reader knows whether a missing name means "not a pod" or "not known yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheState {
    /// No Kubernetes API configured: verdicts carry IPs only.
    Disabled,
    /// Loaded once from the lab's topology file; never changes.
    Static,
    /// Watches started, the first full list of some required resource is not in yet.
    Syncing,
    /// Every required watch has listed and none is failing.
    Ready,
    /// A watch is failing (API down, 5xx, network): the data is what was known at `since`.
    Stale {
        /// When the first of the current failures started.
        since: SystemTime,
    },
}

impl CacheState {
    /// `disabled`, `static`, `syncing`, `ready` or `stale`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CacheState::Disabled => "disabled",
            CacheState::Static => "static",
            CacheState::Syncing => "syncing",
            CacheState::Ready => "ready",
            CacheState::Stale { .. } => "stale",
        }
    }

    /// Whether lookups reflect the cluster (Ready or Static).
    pub fn is_current(&self) -> bool {
        matches!(self, CacheState::Ready | CacheState::Static)
    }
}

impl Serialize for CacheState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CacheState::Stale { since } => {
                let secs = since
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                json!({ "state": "stale", "since_unix": secs }).serialize(s)
            }
            other => json!({ "state": other.as_str() }).serialize(s),
        }
    }
}

/// Where the cache's data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Disabled,
    Static,
    Live,
}

/// One watch's health.
#[derive(Debug, Clone, Default)]
struct WatchHealth {
    /// Whether Ready waits for it.
    required: bool,
    /// Whether a full list has completed at least once.
    synced: bool,
    /// Since when it has been failing, if it is.
    failing_since: Option<SystemTime>,
    /// The last error, for diagnostics.
    last_error: Option<String>,
    /// The failure lost events (410 Gone, failed list): only a completed relist ends it, not
    /// a probe.
    needs_relist: bool,
}

/// Counters (monotonic) describing the cache's life, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// Errors any watch reported (each retry that fails counts).
    pub watch_errors: u64,
    /// Full lists started (1 per watch at start, +1 per 410 Gone or restart).
    pub relists: u64,
    /// Times a watch went from healthy to failing.
    pub stale_episodes: u64,
    /// Times a failing watch recovered.
    pub recoveries: u64,
    /// Objects applied or deleted by watch events.
    pub events: u64,
    /// Malformed or odd API data tolerated (bad annotations, addresses, undecodable objects).
    pub data_warnings: u64,
}

#[derive(Debug, Default)]
struct Counters {
    watch_errors: AtomicU64,
    relists: AtomicU64,
    stale_episodes: AtomicU64,
    recoveries: AtomicU64,
    events: AtomicU64,
}

pub(crate) struct Shared {
    mode: Mode,
    index: RwLock<Index>,
    health: Mutex<HashMap<TableId, WatchHealth>>,
    counters: Counters,
    pub(crate) warnings: DataWarnings,
    pub(crate) veth_prefix: String,
    pub(crate) node_name: Option<String>,
    pub(crate) dns_service: ObjKey,
    changed: tokio::sync::watch::Sender<u64>,
    /// URL of the API server, named in watch failures.
    api_server: std::sync::OnceLock<String>,
}

/// The Kubernetes metadata cache: a cheaply cloneable handle (an `Arc`) shared by the watch
/// tasks that fill it and the pipeline that queries it. Lookups take a read lock, use HashMap
/// indexes and never wait for the network.
#[derive(Clone)]
pub struct MetaCache {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for MetaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaCache")
            .field("state", &self.state())
            .field("node_name", &self.shared.node_name)
            .finish_non_exhaustive()
    }
}

fn read(l: &RwLock<Index>) -> RwLockReadGuard<'_, Index> {
    // A panic while writing leaves tables that are each consistent (every mutation is a single
    // HashMap operation sequence on owned data); keep serving them.
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write(l: &RwLock<Index>) -> RwLockWriteGuard<'_, Index> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MetaCache {
    pub(crate) fn new(
        mode: Mode,
        node_name: Option<String>,
        veth_prefix: String,
        dns_service: ObjKey,
    ) -> Self {
        let (changed, _) = tokio::sync::watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                mode,
                index: RwLock::new(Index::default()),
                health: Mutex::new(HashMap::new()),
                counters: Counters::default(),
                warnings: DataWarnings::default(),
                veth_prefix,
                node_name,
                dns_service,
                changed,
                api_server: std::sync::OnceLock::new(),
            }),
        }
    }

    /// A cache with no data in state [`CacheState::Disabled`].
    pub fn disabled() -> Self {
        Self::new(
            Mode::Disabled,
            None,
            super::model::DEFAULT_VETH_PREFIX.to_owned(),
            ObjKey::new("kube-system", "kube-dns"),
        )
    }

    // ----- lookups -----

    /// The pod with this IP: a pod of this node, else a CoreDNS pod anywhere.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<Arc<PodMeta>> {
        let idx = read(&self.shared.index);
        idx.pods.by_ip(&ip).or_else(|| idx.dns_pods.by_ip(&ip))
    }

    /// The pod of this node whose host-side veth is `ifname` (VPC CNI naming rule).
    pub fn pod_by_host_veth(&self, ifname: &str) -> Option<Arc<PodMeta>> {
        let idx = read(&self.shared.index);
        idx.pods
            .by_name(ifname)
            .or_else(|| idx.dns_pods.by_name(ifname))
    }

    /// The Service whose ClusterIP is `ip`.
    pub fn service_by_cluster_ip(&self, ip: IpAddr) -> Option<Arc<ServiceMeta>> {
        read(&self.shared.index).services.by_ip(&ip)
    }

    /// The CoreDNS replica (a pod selected by the kube-dns Service) with this IP, on any node.
    pub fn dns_replica_by_ip(&self, ip: IpAddr) -> Option<Arc<PodMeta>> {
        read(&self.shared.index).dns_pods.by_ip(&ip)
    }

    /// The name of the node with this InternalIP.
    pub fn node_by_ip(&self, ip: IpAddr) -> Option<String> {
        read(&self.shared.index)
            .nodes
            .by_ip(&ip)
            .map(|n| n.name.clone())
    }

    /// The branch ENI of a pod (security groups for pods), from its `vpc.amazonaws.com/pod-eni`
    /// annotation.
    pub fn branch_eni(&self, pod: &PodMeta) -> Option<BranchEni> {
        pod.branch_eni().cloned()
    }

    /// The address of the tracer on `node` (its pod's IP, the node's with host networking), if
    /// a running tracer pod with an address is known there.
    pub fn peer_addr(&self, node: &str) -> Option<IpAddr> {
        read(&self.shared.index)
            .peers
            .values()
            .filter(|p| p.node.as_deref() == Some(node))
            .find_map(|p| p.ips.first().copied())
    }

    /// The kube-dns Service this cache follows (`kube-system/kube-dns` by default).
    pub fn dns_service(&self) -> Option<Arc<ServiceMeta>> {
        read(&self.shared.index)
            .services
            .get(&self.shared.dns_service)
    }

    /// `namespace/name` of the kube-dns Service this cache follows.
    pub fn dns_service_name(&self) -> Option<String> {
        Some(self.shared.dns_service.to_string())
    }

    /// The CoreDNS replicas (pods selected by the kube-dns Service), sorted by namespace/name.
    pub fn dns_replicas(&self) -> Vec<Arc<PodMeta>> {
        read(&self.shared.index).dns_pods.sorted()
    }

    /// Endpoints of a Service from its EndpointSlices (empty when slices are not watched).
    pub fn service_endpoints(&self, service: &ObjKey) -> Vec<EndpointMeta> {
        let idx = read(&self.shared.index);
        let mut out = self.endpoints_locked(&idx, service);
        out.dedup_by(|a, b| a.ip == b.ip);
        out
    }

    /// Number of EndpointSlices held.
    pub(crate) fn slice_count(&self) -> usize {
        read(&self.shared.index).slices.len()
    }

    /// Node name the cache scopes pods to.
    pub fn node_name(&self) -> Option<&str> {
        self.shared.node_name.as_deref()
    }

    // ----- state -----

    /// The cache's state (see [`CacheState`]).
    pub fn state(&self) -> CacheState {
        match self.shared.mode {
            Mode::Disabled => return CacheState::Disabled,
            Mode::Static => return CacheState::Static,
            Mode::Live => {}
        }
        let health = self
            .shared
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let required = health.values().filter(|h| h.required);
        let mut since: Option<SystemTime> = None;
        let mut all_synced = true;
        for h in required {
            all_synced &= h.synced;
            if let Some(t) = h.failing_since {
                since = Some(since.map_or(t, |s| s.min(t)));
            }
        }
        match (all_synced, since) {
            (false, _) => CacheState::Syncing,
            (true, Some(since)) => CacheState::Stale { since },
            (true, None) => CacheState::Ready,
        }
    }

    /// The most recent watch error, if a watch is failing now.
    pub fn last_error(&self) -> Option<String> {
        let health = self
            .shared
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        health
            .iter()
            .filter(|(_, h)| h.failing_since.is_some())
            .filter_map(|(id, h)| h.last_error.as_ref().map(|e| format!("{}: {e}", id.name())))
            .next()
    }

    /// Counters since start.
    pub fn stats(&self) -> CacheStats {
        let c = &self.shared.counters;
        CacheStats {
            watch_errors: c.watch_errors.load(Ordering::Relaxed),
            relists: c.relists.load(Ordering::Relaxed),
            stale_episodes: c.stale_episodes.load(Ordering::Relaxed),
            recoveries: c.recoveries.load(Ordering::Relaxed),
            events: c.events.load(Ordering::Relaxed),
            data_warnings: self.shared.warnings.total(),
        }
    }

    /// Waits until the state is Ready or Static (true), or `timeout` passes (false). Returns
    /// false at once for a disabled cache.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.changed.subscribe();
        let wait = async {
            loop {
                match self.state() {
                    CacheState::Ready | CacheState::Static => return true,
                    CacheState::Disabled => return false,
                    _ => {}
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }

    /// Everything the cache holds, as JSON (for `tracer meta-dump` and tests).
    pub fn snapshot(&self) -> Value {
        let idx = read(&self.shared.index);
        let services: Vec<Value> = idx
            .services
            .sorted()
            .iter()
            .map(|s| {
                let eps = self.endpoints_locked(&idx, &s.key());
                with_field(
                    serde_json::to_value(s.as_ref()).unwrap_or(Value::Null),
                    "endpoints",
                    serde_json::to_value(eps).unwrap_or(Value::Null),
                )
            })
            .collect();
        let pods: Vec<Value> = idx.pods.sorted().iter().map(pod_json).collect();
        let dns: Vec<Value> = idx.dns_pods.sorted().iter().map(pod_json).collect();
        json!({
            "state": self.state(),
            "node_name": self.shared.node_name,
            "veth_prefix": self.shared.veth_prefix,
            "dns_service": self.shared.dns_service.to_string(),
            "pods": pods,
            "dns_replicas": dns,
            "services": services,
            "nodes": idx.nodes.sorted().iter().map(|n| json!({ "name": n.name, "ips": n.ips })).collect::<Vec<_>>(),
            "endpoint_slices": idx.slices.len(),
            "index_sizes": {
                "pod_ips": idx.pods.ip_count(),
                "pod_veths": idx.pods.name_count(),
                "dns_pod_ips": idx.dns_pods.ip_count(),
                "service_ips": idx.services.ip_count(),
                "node_ips": idx.nodes.ip_count(),
            },
            "stats": self.stats(),
            "last_error": self.last_error(),
        })
    }

    fn endpoints_locked(&self, idx: &Index, service: &ObjKey) -> Vec<EndpointMeta> {
        let mut out: Vec<EndpointMeta> = idx
            .slices
            .values()
            .filter(|s| s.service.as_ref() == Some(service))
            .flat_map(|s| s.endpoints.iter().cloned())
            .collect();
        out.sort_by_key(|e| e.ip);
        out
    }

    // ----- updates (watch tasks and loaders) -----

    /// Runs `f` on the index under the write lock.
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut Index) -> R) -> R {
        let r = f(&mut write(&self.shared.index));
        self.notify();
        r
    }

    /// The table a watcher feeds.
    pub(crate) fn table<V>(idx: &mut Index, id: TableId) -> &mut Table<V>
    where
        Index: TableOf<V>,
    {
        <Index as TableOf<V>>::table_of(idx, id)
    }

    fn notify(&self) {
        self.shared.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn with_health(&self, id: TableId, f: impl FnOnce(&mut WatchHealth)) {
        {
            let mut h = self
                .shared
                .health
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(h.entry(id).or_default());
        }
        self.notify();
    }

    /// Declares a watch; Ready waits for `required` ones.
    pub(crate) fn register(&self, id: TableId, required: bool) {
        self.with_health(id, |h| h.required = required);
    }

    /// A full list started.
    pub(crate) fn relist_started(&self, _id: TableId) {
        self.shared.counters.relists.fetch_add(1, Ordering::Relaxed);
    }

    /// A full list completed: the watch is synced and healthy.
    pub(crate) fn synced(&self, id: TableId) {
        self.with_health(id, |h| {
            h.synced = true;
            h.needs_relist = false;
        });
        self.healthy(id);
    }

    /// A probe of the watched resource succeeded: ends a failure episode unless the watch
    /// must relist first (then the relist's completion ends it).
    pub(crate) fn probe_ok(&self, id: TableId) {
        let needs_relist = self
            .shared
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .is_some_and(|h| h.needs_relist);
        if !needs_relist {
            self.healthy(id);
        }
    }

    /// An event arrived (the watch works).
    pub(crate) fn event(&self, id: TableId) {
        self.shared.counters.events.fetch_add(1, Ordering::Relaxed);
        self.healthy(id);
    }

    /// The watch (or a probe) succeeded: ends a failure episode.
    pub(crate) fn healthy(&self, id: TableId) {
        let mut recovered = None;
        self.with_health(id, |h| {
            if let Some(since) = h.failing_since.take() {
                recovered = Some((since, h.required));
            }
            h.last_error = None;
        });
        if let Some((since, required)) = recovered {
            self.shared
                .counters
                .recoveries
                .fetch_add(1, Ordering::Relaxed);
            let outage = SystemTime::now().duration_since(since).unwrap_or_default();
            if required {
                tracing::info!(
                    "Kubernetes watch of {} recovered after {:.1} s",
                    id.name(),
                    outage.as_secs_f64()
                );
            }
        }
    }

    /// Records the API server URL the watches talk to (once), for failure messages.
    pub(crate) fn set_api_server(&self, url: String) {
        let _ = self.shared.api_server.set(url);
    }

    /// The watch failed; `lost_events` when it must relist before its data is whole again.
    /// Returns true when this starts a failure episode.
    pub(crate) fn failed(&self, id: TableId, error: String, lost_events: bool) -> bool {
        let error = match self.shared.api_server.get() {
            Some(url) if !error.contains(url.as_str()) => format!("API server {url}: {error}"),
            _ => error,
        };
        self.shared
            .counters
            .watch_errors
            .fetch_add(1, Ordering::Relaxed);
        let mut started = false;
        let mut required = false;
        let msg = error.clone();
        self.with_health(id, |h| {
            if h.failing_since.is_none() {
                h.failing_since = Some(SystemTime::now());
                started = true;
            }
            required = h.required;
            h.needs_relist |= lost_events;
            h.last_error = Some(error);
        });
        if started {
            self.shared
                .counters
                .stale_episodes
                .fetch_add(1, Ordering::Relaxed);
            if required {
                tracing::warn!(
                    "Kubernetes watch of {} failing ({msg}); names may be stale until it recovers",
                    id.name()
                );
            } else {
                tracing::debug!("Kubernetes watch of {} failing: {msg}", id.name());
            }
        } else {
            tracing::debug!("Kubernetes watch of {} still failing: {msg}", id.name());
        }
        started
    }

    /// Whether the watch is failing now.
    pub(crate) fn is_failing(&self, id: TableId) -> bool {
        self.shared
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .is_some_and(|h| h.failing_since.is_some())
    }
}

fn pod_json(p: &Arc<PodMeta>) -> Value {
    with_field(
        serde_json::to_value(p.as_ref()).unwrap_or(Value::Null),
        "branch_eni",
        serde_json::to_value(p.branch_eni()).unwrap_or(Value::Null),
    )
}

/// `v` with `key` set to `x` (when `v` is an object).
pub(crate) fn with_field(mut v: Value, key: &str, x: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.insert(key.to_owned(), x);
    }
    v
}

/// Maps a value type to its table (pods and CoreDNS pods share a type).
pub(crate) trait TableOf<V> {
    fn table_of(&mut self, id: TableId) -> &mut Table<V>;
}

impl TableOf<PodMeta> for Index {
    fn table_of(&mut self, id: TableId) -> &mut Table<PodMeta> {
        match id {
            TableId::DnsPods => &mut self.dns_pods,
            TableId::Peers => &mut self.peers,
            _ => &mut self.pods,
        }
    }
}

impl TableOf<ServiceMeta> for Index {
    fn table_of(&mut self, _: TableId) -> &mut Table<ServiceMeta> {
        &mut self.services
    }
}

impl TableOf<super::model::NodeMeta> for Index {
    fn table_of(&mut self, _: TableId) -> &mut Table<super::model::NodeMeta> {
        &mut self.nodes
    }
}

impl TableOf<super::model::SliceMeta> for Index {
    fn table_of(&mut self, _: TableId) -> &mut Table<super::model::SliceMeta> {
        &mut self.slices
    }
}
