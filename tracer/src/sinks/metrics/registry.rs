//! The metric families of [`Metrics`]: their label sets, the shared [`Inner`] state and
//! their registration ([`Metrics::new`]).

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use super::{KERNEL_COUNTERS, Metrics, USER_COUNTERS};
use crate::sinks::stream::{ObserveStats, filter};

pub(super) const VERDICTS: [&str; 7] = filter::VERDICTS;
pub(super) const KINDS: [&str; 2] = ["dns", "egress"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct VerdictLabels {
    pub(super) verdict: String,
    pub(super) kind: String,
    pub(super) reason: String,
    pub(super) interface_kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RcodeLabels {
    pub(super) server: String,
    pub(super) rcode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ServerLabels {
    pub(super) server: String,
}

/// Labels of the egress handshake histogram: transport and the kind of exit interface
/// (`uplink`, `branch_eni`, `trunk`; empty when the flow did not leave through one).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ExitLabels {
    pub(super) transport: String,
    pub(super) exit_kind: String,
}

/// Counters of the peer service (`tracer_peer_service_total{counter}`).
pub(super) const PEER_SERVICE_COUNTERS: [&str; 5] =
    ["requests", "asks", "refused", "bad_requests", "busy"];

/// `namespace/pod` of a replica, else its address.
pub(super) fn replica_label(m: &crate::verdict::PodMeta, ip: std::net::IpAddr) -> String {
    match (&m.namespace, &m.pod) {
        (Some(ns), Some(p)) => format!("{ns}/{p}"),
        _ => ip.to_string(),
    }
}

/// Upper bounds of the DNS latency and egress handshake histograms, seconds (0.25 ms … 8 s).
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.000_25, 2.0, 16)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct CounterLabels {
    pub(super) counter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ResultLabels {
    pub(super) result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct IfaceCounterLabels {
    pub(super) interface: String,
    pub(super) counter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StateLabels {
    pub(super) state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct PeerLabels {
    pub(super) finding: String,
    pub(super) reason: String,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) registry: Registry,
    pub(super) verdicts: Family<VerdictLabels, Counter>,
    pub(super) kernel: Family<CounterLabels, Counter>,
    pub(super) user: Family<CounterLabels, Counter>,
    pub(super) conntrack: Family<CounterLabels, Counter>,
    pub(super) ena: Family<IfaceCounterLabels, Counter>,
    pub(super) attached: Gauge,
    pub(super) attach: Family<ResultLabels, Counter>,
    pub(super) observe_clients: Gauge,
    pub(super) observe_skipped: Counter,
    pub(super) cache_state: Family<StateLabels, Gauge>,
    pub(super) cache_current: Mutex<Option<String>>,
    pub(super) flows_open: Gauge,
    pub(super) flows_evicted: Counter,
    pub(super) dns_answers: Family<RcodeLabels, Counter>,
    pub(super) dns_latency: Family<ServerLabels, Histogram, fn() -> Histogram>,
    pub(super) egress_handshake: Family<ExitLabels, Histogram, fn() -> Histogram>,
    pub(super) ready: AtomicBool,
    /// When the daemon's main loop last went round (`CLOCK_MONOTONIC` s; 0 before the first).
    pub(super) heartbeat: AtomicU64,
    pub(super) observe_stats: Mutex<Option<ObserveStats>>,
    pub(super) peer_findings: Family<PeerLabels, Counter>,
    pub(super) peer_server: Family<CounterLabels, Counter>,
    pub(super) peer_stats: Mutex<Option<Arc<crate::peer::server::ServerStats>>>,
    pub(super) source_mismatch: Counter,
}

impl Metrics {
    /// Registers every metric (names prefixed `tracer_`). Kernel and userspace counters start
    /// at zero for each known name, so dashboards see the series before the first event.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tracer");
        let verdicts = Family::<VerdictLabels, Counter>::default();
        registry.register(
            "verdicts",
            "Verdicts emitted, by verdict, kind, drop reason and interface kind of the last observation point",
            verdicts.clone(),
        );
        let kernel = Family::<CounterLabels, Counter>::default();
        registry.register(
            "kernel_events",
            "Kernel-side counters of the eBPF programs (summed over CPUs)",
            kernel.clone(),
        );
        let user = Family::<CounterLabels, Counter>::default();
        registry.register(
            "userspace_events",
            "Userspace counters: records decoded, decode errors, drops outside this node, write errors",
            user.clone(),
        );
        let conntrack = Family::<CounterLabels, Counter>::default();
        registry.register(
            "conntrack",
            "The node's conntrack statistics (/proc/net/stat/nf_conntrack, summed over CPUs): insert_failed and drop reveal the DNS A/AAAA insert race behind 5 s timeouts",
            conntrack.clone(),
        );
        let ena = Family::<IfaceCounterLabels, Counter>::default();
        registry.register(
            "ena_allowance_exceeded",
            "ENA packets dropped by the hypervisor over an ENI allowance (ethtool -S *_allowance_exceeded), by interface",
            ena.clone(),
        );
        let attached = Gauge::default();
        registry.register(
            "attached_interfaces",
            "Interfaces with the tc programs attached now",
            attached.clone(),
        );
        let attach = Family::<ResultLabels, Counter>::default();
        registry.register("attach", "Attach attempts, by result", attach.clone());
        let observe_clients = Gauge::default();
        registry.register(
            "observe_clients",
            "tracer observe clients connected now",
            observe_clients.clone(),
        );
        let observe_skipped = Counter::default();
        registry.register(
            "observe_skipped",
            "Lines skipped for tracer observe clients that fell behind",
            observe_skipped.clone(),
        );
        let cache_state = Family::<StateLabels, Gauge>::default();
        registry.register(
            "k8s_cache_state",
            "Kubernetes metadata cache state (1 for the current state)",
            cache_state.clone(),
        );
        let flows_open = Gauge::default();
        registry.register(
            "flows_open",
            "Flows open in the correlation table",
            flows_open.clone(),
        );
        let flows_evicted = Counter::default();
        registry.register(
            "flows_evicted",
            "Flows evicted from the full correlation table before their window closed",
            flows_evicted.clone(),
        );
        let dns_answers = Family::<RcodeLabels, Counter>::default();
        registry.register(
            "dns_answers",
            "DNS answers delivered to clients, per server (replica) and response code",
            dns_answers.clone(),
        );
        let dns_latency: Family<ServerLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(latency_buckets()));
        registry.register_with_unit(
            "dns_latency",
            "Latency of delivered DNS answers (query seen to answer delivered), per server",
            prometheus_client::registry::Unit::Seconds,
            dns_latency.clone(),
        );
        let egress_handshake: Family<ExitLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(latency_buckets()));
        registry.register_with_unit(
            "egress_handshake",
            "Handshake latency of established egress connections (SYN or first UDP packet seen to the first reply delivered to the pod), per transport and kind of exit interface",
            prometheus_client::registry::Unit::Seconds,
            egress_handshake.clone(),
        );
        let peer_findings = Family::<PeerLabels, Counter>::default();
        registry.register(
            "peer_findings",
            "Verdicts lost beyond this node that went out with a peer's finding (cross-node verdicts), by finding and, for unknown, the reason",
            peer_findings.clone(),
        );
        let source_mismatch = Counter::default();
        registry.register(
            "source_mismatch",
            "Flows whose request entered a pod's veth with a source address that is not that pod's (spoofed or misconfigured): attributed to no pod",
            source_mismatch.clone(),
        );
        let peer_server = Family::<CounterLabels, Counter>::default();
        registry.register(
            "peer_service",
            "The peer service's counts: requests and asks answered, handshakes refused, bad requests, asks answered busy",
            peer_server.clone(),
        );
        for name in KERNEL_COUNTERS {
            let _ = kernel.get_or_create(&CounterLabels {
                counter: name.to_owned(),
            });
        }
        for name in USER_COUNTERS {
            let _ = user.get_or_create(&CounterLabels {
                counter: name.to_owned(),
            });
        }
        for result in ["ok", "error"] {
            let _ = attach.get_or_create(&ResultLabels {
                result: result.to_owned(),
            });
        }
        Self {
            inner: Arc::new(Inner {
                registry,
                verdicts,
                kernel,
                user,
                conntrack,
                ena,
                attached,
                attach,
                observe_clients,
                observe_skipped,
                cache_state,
                cache_current: Mutex::new(None),
                flows_open,
                flows_evicted,
                dns_answers,
                dns_latency,
                egress_handshake,
                ready: AtomicBool::new(false),
                heartbeat: AtomicU64::new(0),
                observe_stats: Mutex::new(None),
                peer_findings,
                peer_server,
                peer_stats: Mutex::new(None),
                source_mismatch,
            }),
        }
    }
}
