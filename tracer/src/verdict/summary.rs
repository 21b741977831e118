//! Summaries of healthy flows, one line per group and interval instead of one line per flow:
//!
//! - DNS answers are counted in the kernel (count and latency histogram per client, replica,
//!   query type and response code); the daemon reads the kernel's table and feeds it here.
//! - Established egress connections are decided per flow in userspace, as every egress flow
//!   is; those that needed nothing worth a line of their own (complete evidence, no SYN
//!   retransmission, nothing odd about their source) are counted here per client pod,
//!   destination `ip:port`, transport and exit interface, with a histogram of their handshake
//!   latency.
//!
//! A summary line is a `tracer.flow/v1` object with `"record": "summary"`, `"verdict":
//! "answered"` (DNS) or `"established"` (egress), the number of flows it stands for in `count`
//! and latency quantiles in `latency_ms` (see `docs/schema/flow-v1.json`).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::Serialize;
use tracer_common::{LATENCY_BUCKETS, latency_bucket, latency_bucket_lower};

use super::model::{
    EgressInterface, Evidence, FlowKind, PodMeta, SCHEMA, Transport, Verdict, VerdictKind,
};
use crate::{
    capture::iface::IfaceKind,
    decode::{
        event::{QType, Rcode},
        record::{Origin, Summarized},
    },
};

/// Latency histogram of a group of answers (the kernel's buckets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    /// Answers.
    pub count: u64,
    /// Sum of their latencies, ns.
    pub sum_ns: u64,
    /// Answers per bucket ([`tracer_common::latency_bucket`]).
    pub buckets: [u64; LATENCY_BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            count: 0,
            sum_ns: 0,
            buckets: [0; LATENCY_BUCKETS],
        }
    }
}

/// Midpoint of bucket `b`, ns (bucket 0: half its upper bound).
fn bucket_mid(b: usize) -> f64 {
    let lo = latency_bucket_lower(b) as f64;
    let hi = latency_bucket_lower(b + 1) as f64;
    if b == 0 { hi / 2.0 } else { (lo + hi) / 2.0 }
}

fn ms(ns: f64) -> f64 {
    (ns / 1e4).round() / 100.0
}

impl Histogram {
    /// Adds a kernel summary value.
    pub fn add_counts(&mut self, count: u64, sum_ns: u64, buckets: &[u32]) {
        self.count = self.count.saturating_add(count);
        self.sum_ns = self.sum_ns.saturating_add(sum_ns);
        for (b, n) in self.buckets.iter_mut().zip(buckets) {
            *b = b.saturating_add(u64::from(*n));
        }
    }

    /// Adds one flow.
    pub fn add(&mut self, latency_ns: u64) {
        self.count = self.count.saturating_add(1);
        self.sum_ns = self.sum_ns.saturating_add(latency_ns);
        if let Some(b) = self.buckets.get_mut(latency_bucket(latency_ns)) {
            *b = b.saturating_add(1);
        }
    }

    /// Takes one answer back out (it turned out not to be delivered). `false` when there was
    /// nothing to take out of its bucket.
    pub fn remove(&mut self, latency_ns: u64) -> bool {
        let Some(b) = self.buckets.get_mut(latency_bucket(latency_ns)) else {
            return false;
        };
        if *b == 0 || self.count == 0 {
            return false;
        }
        *b -= 1;
        self.count -= 1;
        self.sum_ns = self.sum_ns.saturating_sub(latency_ns);
        true
    }

    /// The latency below which a fraction `q` of the answers fall (bucket midpoint), ms.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let want = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (b, n) in self.buckets.iter().enumerate() {
            seen = seen.saturating_add(*n);
            if seen >= want {
                return Some(ms(bucket_mid(b)));
            }
        }
        None
    }

    /// Upper bound of the highest non-empty bucket, ms.
    pub fn max_ms(&self) -> Option<f64> {
        let b = self.buckets.iter().rposition(|n| *n > 0)?;
        Some(ms(latency_bucket_lower(b + 1) as f64))
    }

    /// Latency figures of the summary line.
    pub fn latency(&self) -> LatencyOut {
        LatencyOut {
            mean: (self.count > 0).then(|| ms(self.sum_ns as f64 / self.count as f64)),
            p50: self.quantile_ms(0.50),
            p90: self.quantile_ms(0.90),
            p99: self.quantile_ms(0.99),
            max: self.max_ms(),
        }
    }
}

/// Latency figures of a summary, ms. Quantiles are bucket midpoints (two buckets per power of
/// two: within ±17 %); `max` is the upper bound of the highest non-empty bucket; `mean` is exact.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyOut {
    /// Mean latency.
    pub mean: Option<f64>,
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Upper bound of the slowest answer.
    pub max: Option<f64>,
}

/// Group of a DNS summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Group {
    /// Client address.
    pub client: IpAddr,
    /// Server after DNAT (the replica).
    pub server: IpAddr,
    /// Query type.
    pub qtype: u16,
    /// Response code.
    pub rcode: u8,
    /// Where the client sits.
    pub origin: Origin,
}

impl Group {
    fn of(s: &Summarized) -> Self {
        Self {
            client: s.client,
            server: s.server,
            qtype: s.qtype,
            rcode: s.rcode,
            origin: s.origin,
        }
    }
}

/// Group of an egress summary: connections of one client to one destination through one exit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EgressGroup {
    /// Client address (the pod's own, before SNAT).
    pub client: IpAddr,
    /// Server address (after DNAT, when a Service was in between).
    pub server: IpAddr,
    /// Server port.
    pub port: u16,
    /// Transport.
    pub transport: Transport,
    /// Exit interface: name, kind, VLAN (None: not seen leaving through an exit).
    pub exit: Option<(String, IfaceKind, Option<u16>)>,
    /// Kind of interface where the flows ended (the client's veth, as the per-flow lines'
    /// `where.interface_kind` says; metrics label their verdict counts with it).
    pub ended_at: Option<IfaceKind>,
}

impl EgressGroup {
    /// The group of a per-flow egress verdict.
    fn of(v: &Verdict) -> Self {
        Self {
            client: v.client.ip,
            server: v.server.ip,
            port: v.server.port,
            transport: v.transport,
            exit: v
                .egress_interface
                .as_ref()
                .map(|e| (e.name.clone(), e.kind, e.vlan)),
            ended_at: v.where_.interface_kind,
        }
    }
}

/// What a summary line counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SummaryGroup {
    /// Healthy DNS answers.
    Dns(Group),
    /// Established egress connections.
    Egress(EgressGroup),
}

/// DNS facts of a summary line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SummaryDns {
    /// Query type (null when the question could not be read).
    pub qtype: Option<QType>,
    /// Response code.
    pub rcode: Rcode,
    /// Transport (always UDP: DNS over TCP is reported per query).
    pub transport: Transport,
}

/// One side of a summary line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SummaryEndpoint {
    /// Address.
    pub ip: IpAddr,
    /// Port (the server of an egress summary only: DNS summaries and clients span many).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The Service the server was reached through, when enrichment knows it (server only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Kubernetes identity.
    #[serde(flatten)]
    pub meta: PodMeta,
}

/// One summary line: the healthy flows of one group over one interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Always [`SCHEMA`].
    pub schema: &'static str,
    /// Always `summary` (per-flow verdicts say `flow`).
    pub record: &'static str,
    /// Start of the interval (RFC 3339), filled by the daemon.
    pub time: Option<String>,
    /// End of the interval (RFC 3339), filled by the daemon.
    pub end_time: Option<String>,
    /// Interval start, CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    /// Interval end, CLOCK_MONOTONIC ns.
    pub end_ns: u64,
    /// Node name.
    pub node: String,
    /// `dns` or `egress`.
    pub kind: FlowKind,
    /// `udp` for DNS (DNS over TCP is reported per query); `tcp` or `udp` for egress.
    pub transport: Transport,
    /// `answered` (DNS) or `established` (egress).
    pub verdict: VerdictKind,
    /// Always `complete`: every answer counted was seen delivered, every connection's
    /// handshake seen complete.
    pub evidence: Evidence,
    /// Flows this line stands for.
    pub count: u64,
    /// Their latencies (DNS: query to answer delivered; egress: first packet to the first
    /// reply delivered to the pod).
    pub latency_ms: LatencyOut,
    /// Query type and response code (null for egress).
    pub dns: Option<SummaryDns>,
    /// The interface the connections left through (null for DNS).
    pub egress_interface: Option<EgressInterface>,
    /// The client.
    pub client: SummaryEndpoint,
    /// The server (DNS: the replica after DNAT; egress: the destination, with its port).
    pub server: SummaryEndpoint,
    /// State of Kubernetes metadata (see verdicts).
    pub enrichment: Option<String>,
    /// One sentence.
    pub hint: String,
    /// The group (not serialized).
    #[serde(skip)]
    pub group: SummaryGroup,
    /// The histogram (not serialized; metrics read it).
    #[serde(skip)]
    pub histogram: Histogram,
}

/// Bound on groups per interval (the kernel's table is bounded too; this only guards memory).
pub const MAX_GROUPS: usize = 65_536;

/// Healthy flows of the current interval, by group, and DNS answers to take back out.
#[derive(Debug, Default)]
pub struct Summaries {
    current: BTreeMap<Group, Histogram>,
    /// Established egress connections of the current interval.
    egress: HashMap<EgressGroup, Histogram>,
    /// Answers counted by the kernel and found undelivered afterwards, not yet subtracted.
    retract: BTreeMap<Group, Vec<u64>>,
    /// Retractions that found nothing to subtract from (counted).
    pub unmatched_retractions: u64,
    /// Groups dropped because [`MAX_GROUPS`] was reached (counted).
    pub dropped_groups: u64,
    /// Egress groups per interval at most (0: [`MAX_GROUPS`]); the daemon sets it from its
    /// memory budget.
    pub egress_limit: usize,
    /// Established connections left to lines of their own because the egress groups of the
    /// interval were at their limit (counted).
    pub egress_over_limit: u64,
}

/// Whether an egress verdict says nothing a summary would not: established with complete
/// evidence, at the first SYN (a retransmitted SYN means a packet was lost somewhere: worth a
/// line), its latency known, its source the pod's own, no node counter or peer bearing on it.
pub fn summarizable(v: &Verdict) -> bool {
    v.kind == FlowKind::Egress
        && v.verdict == VerdictKind::Established
        && v.evidence == Evidence::Complete
        && v.evidence_note.is_none()
        && v.related_keys.is_empty()
        && v.client.veth_pod.is_none()
        && v.node_signals.is_empty()
        && v.peer.is_none()
        && v.egress
            .as_ref()
            .is_some_and(|e| e.retries == 0 && e.latency_ms.is_some_and(|ms| ms >= 0.0))
}

impl Summaries {
    /// Adds a kernel summary entry to the current interval.
    pub fn add(&mut self, group: Group, count: u64, sum_ns: u64, buckets: &[u32]) {
        if !self.current.contains_key(&group) && self.current.len() >= MAX_GROUPS {
            self.dropped_groups = self.dropped_groups.saturating_add(count);
            return;
        }
        self.current
            .entry(group)
            .or_default()
            .add_counts(count, sum_ns, buckets);
    }

    /// Counts an established egress connection into the current interval when
    /// [`summarizable`]. `false`: it was not counted (not summarizable, or the interval has as
    /// many destinations as [`Summaries::egress_limit`] already) and needs a line of its own.
    pub fn add_established(&mut self, v: &Verdict) -> bool {
        let Some(ms) = v
            .egress
            .as_ref()
            .and_then(|e| e.latency_ms)
            .filter(|_| summarizable(v))
        else {
            return false;
        };
        let group = EgressGroup::of(v);
        let limit = match self.egress_limit {
            0 => MAX_GROUPS,
            n => n.min(MAX_GROUPS),
        };
        if !self.egress.contains_key(&group) && self.egress.len() >= limit {
            self.egress_over_limit = self.egress_over_limit.saturating_add(1);
            return false;
        }
        self.egress
            .entry(group)
            .or_default()
            .add((ms * 1e6).round() as u64);
        true
    }

    /// An answer counted in a summary was not delivered after all: take it out of the interval
    /// it is (or will be) in.
    pub fn retract(&mut self, s: &Summarized) {
        let list = self.retract.entry(Group::of(s)).or_default();
        if list.len() < 4096 {
            list.push(s.latency_ns);
        } else {
            self.unmatched_retractions = self.unmatched_retractions.saturating_add(1);
        }
    }

    /// Ends the interval `[start_ns, end_ns)`: one line per group with flows (DNS first,
    /// then egress ordered by client, server and port).
    pub fn take(&mut self, node: &str, start_ns: u64, end_ns: u64) -> Vec<Summary> {
        let groups = std::mem::take(&mut self.current);
        let mut out = Vec::with_capacity(groups.len() + self.egress.len());
        for (group, mut h) in groups {
            if let Some(list) = self.retract.get_mut(&group) {
                list.retain(|lat| !h.remove(*lat));
                if list.is_empty() {
                    self.retract.remove(&group);
                }
            }
            if h.count == 0 {
                continue;
            }
            out.push(line(node, SummaryGroup::Dns(group), h, start_ns, end_ns));
        }
        // A retraction whose answer is in no interval any more is only counted.
        let stale: u64 = self.retract.values().map(|v| v.len() as u64).sum();
        self.unmatched_retractions = self.unmatched_retractions.saturating_add(stale);
        self.retract.clear();

        let mut egress: Vec<(EgressGroup, Histogram)> = std::mem::take(&mut self.egress)
            .into_iter()
            .filter(|(_, h)| h.count > 0)
            .collect();
        egress.sort_by(|(a, _), (b, _)| {
            (a.client, a.server, a.port, a.transport, &a.exit).cmp(&(
                b.client,
                b.server,
                b.port,
                b.transport,
                &b.exit,
            ))
        });
        out.extend(
            egress
                .into_iter()
                .map(|(group, h)| line(node, SummaryGroup::Egress(group), h, start_ns, end_ns)),
        );
        out
    }
}

fn endpoint(ip: IpAddr, port: Option<u16>) -> SummaryEndpoint {
    SummaryEndpoint {
        ip,
        port,
        service: None,
        meta: PodMeta::default(),
    }
}

/// The line of one group's flows over `[start_ns, end_ns)` (names and hint come later).
fn line(node: &str, group: SummaryGroup, h: Histogram, start_ns: u64, end_ns: u64) -> Summary {
    let (kind, transport, verdict, dns, egress_interface, client, server) = match &group {
        SummaryGroup::Dns(g) => (
            FlowKind::Dns,
            Transport::Udp,
            VerdictKind::Answered,
            Some(SummaryDns {
                qtype: (g.qtype != 0).then_some(QType(g.qtype)),
                rcode: Rcode(g.rcode),
                transport: Transport::Udp,
            }),
            None,
            endpoint(g.client, None),
            endpoint(g.server, None),
        ),
        SummaryGroup::Egress(g) => (
            FlowKind::Egress,
            g.transport,
            VerdictKind::Established,
            None,
            g.exit.clone().map(|(name, kind, vlan)| EgressInterface {
                name,
                kind,
                vlan,
                eni_id: None,
            }),
            endpoint(g.client, None),
            endpoint(g.server, Some(g.port)),
        ),
    };
    Summary {
        schema: SCHEMA,
        record: "summary",
        time: None,
        end_time: None,
        start_ns,
        end_ns,
        node: node.to_owned(),
        kind,
        transport,
        verdict,
        evidence: Evidence::Complete,
        count: h.count,
        latency_ms: h.latency(),
        dns,
        egress_interface,
        client,
        server,
        enrichment: None,
        hint: String::new(),
        group,
        histogram: h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> Group {
        Group {
            client: "198.18.1.21".parse().expect("ip"),
            server: "198.18.1.30".parse().expect("ip"),
            qtype: 1,
            rcode: 0,
            origin: Origin::Pod,
        }
    }

    #[test]
    fn quantiles_from_buckets() {
        let mut h = Histogram::default();
        for _ in 0..90 {
            h.add(1_000_000); // 1 ms
        }
        for _ in 0..10 {
            h.add(100_000_000); // 100 ms
        }
        let l = h.latency();
        let p50 = l.p50.expect("p50");
        assert!((0.8..1.3).contains(&p50), "{p50}");
        let p99 = l.p99.expect("p99");
        assert!((80.0..130.0).contains(&p99), "{p99}");
        assert!(l.max.expect("max") >= 100.0);
        assert_eq!(l.mean, Some(10.9));
        assert_eq!(Histogram::default().latency().p50, None);
    }

    #[test]
    fn kernel_counts_and_retractions_add_up() {
        let mut s = Summaries::default();
        let mut buckets = [0u32; LATENCY_BUCKETS];
        buckets[latency_bucket(2_000_000)] = 3;
        s.add(group(), 3, 6_000_000, &buckets);
        s.retract(&Summarized {
            epoch: 0,
            client: group().client,
            server: group().server,
            qtype: 1,
            rcode: 0,
            origin: Origin::Pod,
            latency_ns: 2_000_000,
        });
        let out = s.take("node-a", 0, 10);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].count, 2);
        let dns = out[0].dns.as_ref().expect("dns facts");
        assert_eq!(dns.qtype, Some(QType::A));
        assert_eq!(dns.rcode, Rcode::NOERROR);
        let v = serde_json::to_value(&out[0]).expect("json");
        assert_eq!(v["record"], "summary");
        assert_eq!(v["verdict"], "answered");
        assert_eq!(v["count"], 2);
        // Nothing left for the next interval.
        assert!(s.take("node-a", 10, 20).is_empty());
        assert_eq!(s.unmatched_retractions, 0);
    }
}
