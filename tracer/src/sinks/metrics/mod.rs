//! Prometheus metrics of `tracer run` and the HTTP endpoint that serves them.
//!
//! Exposition is OpenMetrics text (`prometheus-client`), which Prometheus scrapes natively.
//! Endpoints: `/metrics`, `/healthz` (200 while the daemon's main loop goes round), `/readyz`
//! (200 once the daemon said its programs are attached, 503 before).
//!
//! The kubelet's probes get a listener of their own ([`serve_health`]: `/healthz` and `/readyz`
//! only, with its own connection slots and a short header timeout), so metrics clients that
//! take every slot of the metrics listener cannot make a healthy node's tracer fail its probes.
//!
//! Counters that mirror absolute values read elsewhere (kernel per-CPU counters, userspace
//! counters, attach totals) are set with [`Metrics::set_kernel`] and friends: the metric moves
//! up by the difference. A value lower than the last one (the source restarted) is ignored
//! until the source passes it again; a Prometheus counter never goes down.
//!
//! Label values come from the daemon's own enumerations; each is still cut to
//! [`MAX_LABEL_LEN`] and the verdict and kind labels are folded to `other` when unknown, so a
//! malformed record cannot create unbounded series.
//!
//! The metric families and their registration are in [`registry`], the HTTP listeners in
//! [`http`]; the recording and setting methods of [`Metrics`] are here.

use std::sync::{Arc, PoisonError, atomic::Ordering};

use prometheus_client::metrics::counter::Counter;
use serde_json::Value;

use crate::sinks::stream::ObserveStats;

mod http;
mod registry;

pub use http::{serve, serve_health};

use http::HEARTBEAT_MAX;

use registry::{
    CounterLabels, ExitLabels, IfaceCounterLabels, Inner, KINDS, PEER_SERVICE_COUNTERS, PeerLabels,
    RcodeLabels, ResultLabels, ServerLabels, StateLabels, VERDICTS, VerdictLabels, replica_label,
};

/// Longest label value kept (longer ones are cut).
pub const MAX_LABEL_LEN: usize = 64;

/// Kernel counter names (`tracer_kernel_events_total{counter=...}`): the fields of
/// `capture::Counters`, as the `counters` log line prints them.
pub const KERNEL_COUNTERS: [&str; 10] = [
    "tc_seen",
    "tc_emitted",
    "tc_ringbuf_full",
    "tc_parse_error",
    "drop_seen",
    "drop_emitted",
    "drop_ringbuf_full",
    "drop_read_error",
    "flow_table_full",
    "flow_aggregated",
];

/// Userspace counter names (`tracer_userspace_events_total{counter=...}`): the fields of
/// `run::UserCounters`.
pub const USER_COUNTERS: [&str; 9] = [
    "decoded",
    "decode_errors",
    "drops_other_node",
    "write_errors",
    "egress_evicted",
    "server_side_answers",
    "summary_groups_dropped",
    "summary_retractions_unmatched",
    "egress_over_limit",
];

/// Kubernetes cache states reported by `tracer_k8s_cache_state`.
pub const CACHE_STATES: [&str; 5] = ["disabled", "static", "syncing", "ready", "stale"];

/// The daemon's metrics. Cheap to clone; every clone is the same set.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Moves a counter up to an absolute value read elsewhere (never down).
fn set_counter(c: &Counter, value: u64) {
    let cur = c.get();
    if value > cur {
        c.inc_by(value - cur);
    }
}

/// The unsigned integer fields of a serializable struct, by name (others are skipped).
fn numeric_fields(value: &impl serde::Serialize) -> Vec<(String, u64)> {
    match serde_json::to_value(value) {
        Ok(Value::Object(map)) => map
            .into_iter()
            .filter_map(|(k, v)| v.as_u64().map(|n| (k, n)))
            .collect(),
        _ => Vec::new(),
    }
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The labels of the egress handshake histogram.
fn exit_labels(
    transport: crate::verdict::Transport,
    exit: Option<crate::decode::event::IfaceKind>,
) -> ExitLabels {
    ExitLabels {
        transport: transport.as_str().to_owned(),
        exit_kind: exit.map(|k| k.as_str()).unwrap_or_default().to_owned(),
    }
}

/// Adds a summary's latency histogram (the kernel's buckets) to a Prometheus histogram, each
/// flow at its bucket's midpoint.
fn observe_buckets(
    hist: &prometheus_client::metrics::histogram::Histogram,
    h: &crate::verdict::summary::Histogram,
) {
    for (b, n) in h.buckets.iter().enumerate() {
        if *n == 0 {
            continue;
        }
        let lo = tracer_common::latency_bucket_lower(b) as f64;
        let hi = tracer_common::latency_bucket_lower(b + 1) as f64;
        let mid = (lo + hi) / 2.0 / 1e9;
        for _ in 0..*n {
            hist.observe(mid);
        }
    }
}

/// A label value: cut to [`MAX_LABEL_LEN`] characters.
fn label(s: &str) -> String {
    s.chars().take(MAX_LABEL_LEN).collect()
}

/// `value` when it is one of `known`, else `other` (empty stays empty).
fn known_or_other(value: &str, known: &[&str]) -> String {
    if value.is_empty() || known.contains(&value) {
        value.to_owned()
    } else {
        "other".to_owned()
    }
}

impl Metrics {
    /// Reads the peer service's counts at every scrape.
    pub fn track_peer(&self, stats: Arc<crate::peer::server::ServerStats>) {
        for f in crate::verdict::PeerFinding::ALL {
            if f != crate::verdict::PeerFinding::Unknown {
                let _ = self.inner.peer_findings.get_or_create(&PeerLabels {
                    finding: f.as_str().to_owned(),
                    reason: String::new(),
                });
            }
        }
        for name in PEER_SERVICE_COUNTERS {
            let _ = self.inner.peer_server.get_or_create(&CounterLabels {
                counter: name.to_owned(),
            });
        }
        *self
            .inner
            .peer_stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(stats);
    }

    /// Counts one finished line from its typed form: verdicts by verdict, kind, drop reason
    /// and the interface kind where the flow ended; summaries by their answers (and the DNS
    /// latency histogram and rcode counter of their replica); per-flow DNS answers feed the
    /// same histogram. Packet events are not counted.
    pub fn record(&self, out: &crate::sinks::Output) {
        use crate::sinks::Output;
        match out {
            Output::Verdict(v) => {
                if v.client.veth_pod.is_some() {
                    self.inner.source_mismatch.inc();
                }
                if let Some(p) = &v.peer {
                    self.inner
                        .peer_findings
                        .get_or_create(&PeerLabels {
                            finding: p.finding.as_str().to_owned(),
                            reason: p.reason.map(|r| r.as_str()).unwrap_or_default().to_owned(),
                        })
                        .inc();
                }
                self.record_verdict_parts(
                    v.verdict.as_str(),
                    match v.kind {
                        crate::verdict::FlowKind::Dns => "dns",
                        crate::verdict::FlowKind::Egress => "egress",
                    },
                    v.drop.as_ref().map(|d| d.reason.as_str()),
                    v.where_.interface_kind.map(|k| k.as_str()),
                );
                if v.verdict == crate::verdict::VerdictKind::Established
                    && let Some(ms) = v.egress.as_ref().and_then(|e| e.latency_ms)
                {
                    self.inner
                        .egress_handshake
                        .get_or_create(&exit_labels(
                            v.transport,
                            v.egress_interface.as_ref().map(|e| e.kind),
                        ))
                        .observe(ms / 1e3);
                }
                if v.verdict == crate::verdict::VerdictKind::Answered
                    && let Some(d) = &v.dns
                    && let (Some(rcode), Some(ms)) = (d.rcode, d.latency_ms)
                {
                    let server = label(&replica_label(&v.server.meta, v.server.ip));
                    self.inner
                        .dns_answers
                        .get_or_create(&RcodeLabels {
                            server: server.clone(),
                            rcode: rcode.to_string(),
                        })
                        .inc();
                    self.inner
                        .dns_latency
                        .get_or_create(&ServerLabels { server })
                        .observe(ms / 1e3);
                }
            }
            Output::Summary(s) => self.record_summary(s),
            Output::Packet(_) => {}
        }
    }

    /// Counts one verdict by its labels (`reason` and `interface_kind` empty when none). Values
    /// are cut to [`MAX_LABEL_LEN`]; unknown verdicts and kinds are folded to `other`.
    pub fn record_verdict_parts(
        &self,
        verdict: &str,
        kind: &str,
        reason: Option<&str>,
        interface_kind: Option<&str>,
    ) {
        let labels = VerdictLabels {
            verdict: known_or_other(verdict, &VERDICTS),
            kind: known_or_other(kind, &KINDS),
            reason: label(reason.unwrap_or_default()),
            interface_kind: label(interface_kind.unwrap_or_default()),
        };
        self.inner.verdicts.get_or_create(&labels).inc();
    }

    /// Sets the kernel counters from absolute values (`name`, total since load).
    pub fn set_kernel<'a>(&self, counters: impl IntoIterator<Item = (&'a str, u64)>) {
        for (name, value) in counters {
            let c = self.inner.kernel.get_or_create(&CounterLabels {
                counter: label(name),
            });
            set_counter(&c, value);
        }
    }

    /// Sets the userspace counters from absolute values (`name`, total since start).
    pub fn set_user<'a>(&self, counters: impl IntoIterator<Item = (&'a str, u64)>) {
        for (name, value) in counters {
            let c = self.inner.user.get_or_create(&CounterLabels {
                counter: label(name),
            });
            set_counter(&c, value);
        }
    }

    /// Sets the counters of node signals (absolute values).
    pub fn set_signal_readings(&self, readings: &[crate::capture::signals::Reading]) {
        for r in readings {
            match (r.signal, &r.interface) {
                ("ena", Some(iface)) => self.set_ena(iface, &r.counter, r.value),
                ("conntrack", _) => self.set_conntrack([(r.counter.as_str(), r.value)]),
                _ => {}
            }
        }
    }

    /// Counts the flows of a summary line: verdict counter; for DNS also the rcode counter and
    /// the latency histogram of its replica.
    fn record_summary(&self, s: &crate::verdict::summary::Summary) {
        use crate::verdict::summary::SummaryGroup;
        let labels = VerdictLabels {
            verdict: s.verdict.as_str().into(),
            kind: match s.kind {
                crate::verdict::FlowKind::Dns => "dns",
                crate::verdict::FlowKind::Egress => "egress",
            }
            .into(),
            reason: String::new(),
            // As the per-flow lines of the same flows are labelled (where they ended).
            interface_kind: match &s.group {
                SummaryGroup::Egress(g) => g.ended_at.map(|k| k.as_str()).unwrap_or_default(),
                SummaryGroup::Dns(_) => "",
            }
            .into(),
        };
        self.inner.verdicts.get_or_create(&labels).inc_by(s.count);
        let Some(dns) = &s.dns else {
            let hist = self.inner.egress_handshake.get_or_create(&exit_labels(
                s.transport,
                s.egress_interface.as_ref().map(|e| e.kind),
            ));
            observe_buckets(&hist, &s.histogram);
            return;
        };
        let server = label(&replica_label(&s.server.meta, s.server.ip));
        self.inner
            .dns_answers
            .get_or_create(&RcodeLabels {
                server: server.clone(),
                rcode: dns.rcode.to_string(),
            })
            .inc_by(s.count);
        let hist = self
            .inner
            .dns_latency
            .get_or_create(&ServerLabels { server });
        observe_buckets(&hist, &s.histogram);
    }

    /// Sets one ENA allowance counter of an interface (absolute value).
    pub fn set_ena(&self, interface: &str, counter: &str, value: u64) {
        let c = self.inner.ena.get_or_create(&IfaceCounterLabels {
            interface: label(interface),
            counter: label(counter),
        });
        set_counter(&c, value);
    }

    /// Sets the node's conntrack counters (absolute values, by name).
    pub fn set_conntrack<'a>(&self, counters: impl IntoIterator<Item = (&'a str, u64)>) {
        for (name, value) in counters {
            let c = self.inner.conntrack.get_or_create(&CounterLabels {
                counter: label(name),
            });
            set_counter(&c, value);
        }
    }

    /// Sets the kernel counters from a struct whose fields are the counters (e.g.
    /// `capture::Counters`): every unsigned integer field, by field name.
    pub fn set_kernel_fields(&self, counters: &impl serde::Serialize) {
        let pairs = numeric_fields(counters);
        self.set_kernel(pairs.iter().map(|(k, v)| (k.as_str(), *v)));
    }

    /// Sets the userspace counters from a struct whose fields are the counters (e.g.
    /// `run::UserCounters`): every unsigned integer field, by field name.
    pub fn set_user_fields(&self, counters: &impl serde::Serialize) {
        let pairs = numeric_fields(counters);
        self.set_user(pairs.iter().map(|(k, v)| (k.as_str(), *v)));
    }

    /// Sets the attach figures: interfaces attached now, successful and failed attaches since
    /// start.
    pub fn set_attach(&self, attached: u64, attaches: u64, failures: u64) {
        self.inner.attached.set(gauge_value(attached));
        for (result, value) in [("ok", attaches), ("error", failures)] {
            let c = self.inner.attach.get_or_create(&ResultLabels {
                result: result.to_owned(),
            });
            set_counter(&c, value);
        }
    }

    /// Sets the Kubernetes cache state (e.g. one of [`CACHE_STATES`]): 1 for it, 0 for the
    /// state before.
    pub fn set_cache_state(&self, state: &str) {
        let state = label(state);
        let mut cur = self
            .inner
            .cache_current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for s in CACHE_STATES
            .iter()
            .map(|s| (*s).to_owned())
            .chain(cur.take())
        {
            self.inner
                .cache_state
                .get_or_create(&StateLabels { state: s })
                .set(0);
        }
        self.inner
            .cache_state
            .get_or_create(&StateLabels {
                state: state.clone(),
            })
            .set(1);
        *cur = Some(state);
    }

    /// Sets the correlation table figures: flows open now, flows evicted since start.
    pub fn set_flows(&self, open: u64, evicted: u64) {
        self.inner.flows_open.set(gauge_value(open));
        set_counter(&self.inner.flows_evicted, evicted);
    }

    /// Sets the `tracer observe` figures: clients connected now, lines skipped since start.
    pub fn set_observe(&self, clients: u64, skipped: u64) {
        self.inner.observe_clients.set(gauge_value(clients));
        set_counter(&self.inner.observe_skipped, skipped);
    }

    /// Reads the observe server's counters at every scrape (instead of [`Metrics::set_observe`]).
    pub fn track_observe(&self, stats: ObserveStats) {
        *self
            .inner
            .observe_stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(stats);
    }

    /// Marks the daemon ready (`/readyz` answers 200) or not.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    /// Records that the main loop went round (at `now_s`, monotonic seconds).
    pub fn heartbeat(&self, now_s: u64) {
        self.inner.heartbeat.store(now_s, Ordering::Relaxed);
    }

    /// Whether the main loop went round within [`HEARTBEAT_MAX`] of `now_s` (before its first
    /// round: alive, it is starting).
    pub fn is_alive(&self, now_s: u64) -> bool {
        let beat = self.inner.heartbeat.load(Ordering::Relaxed);
        beat == 0 || now_s.saturating_sub(beat) <= HEARTBEAT_MAX.as_secs()
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    /// The exposition text (OpenMetrics, ends with `# EOF`).
    pub fn render(&self) -> String {
        let stats = self
            .inner
            .observe_stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(ObserveStats::snapshot);
        if let Some(s) = stats {
            self.set_observe(s.clients, s.lines_skipped);
        }
        let peer = self
            .inner
            .peer_stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(p) = peer {
            use std::sync::atomic::Ordering::Relaxed;
            for (name, value) in [
                ("requests", p.requests.load(Relaxed)),
                ("asks", p.asks.load(Relaxed)),
                ("refused", p.refused.load(Relaxed)),
                ("bad_requests", p.bad_requests.load(Relaxed)),
                ("busy", p.busy.load(Relaxed)),
            ] {
                let c = self.inner.peer_server.get_or_create(&CounterLabels {
                    counter: name.to_owned(),
                });
                set_counter(&c, value);
            }
        }
        let mut out = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
        {
            tracing::warn!(%err, "encoding metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::http::{
        HEALTH_HEADER_TIMEOUT, MAX_HEALTH_CONNECTIONS, MAX_HTTP_CONNECTIONS, monotonic_s,
        serve_health_listener, serve_listener,
    };
    use super::*;
    use serde_json::json;
    use std::{net::SocketAddr, time::Duration};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    fn lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    /// Every metric family the daemon serves is in the README's metrics table, under the name
    /// a user queries (`_total` for counters, `_seconds` for the histograms).
    #[test]
    fn readme_documents_every_metric() {
        let readme = include_str!("../../../../README.md");
        let m = Metrics::new();
        // Families appear once they have a series: give each one.
        m.record_verdict_parts("answered", "dns", None, None);
        m.set_conntrack([("drop", 1)]);
        m.set_ena("eth0", "pps_allowance_exceeded", 1);
        let server = || "198.18.1.30".to_owned();
        m.inner
            .dns_answers
            .get_or_create(&RcodeLabels {
                server: server(),
                rcode: "NOERROR".into(),
            })
            .inc();
        m.inner
            .dns_latency
            .get_or_create(&ServerLabels { server: server() })
            .observe(0.001);
        m.inner
            .egress_handshake
            .get_or_create(&exit_labels(crate::verdict::Transport::Tcp, None))
            .observe(0.001);
        m.inner
            .peer_findings
            .get_or_create(&PeerLabels {
                finding: "reply_lost".into(),
                reason: String::new(),
            })
            .inc();
        m.inner
            .peer_server
            .get_or_create(&CounterLabels {
                counter: "asks".into(),
            })
            .inc();
        let text = m.render();
        let mut families = 0;
        let mut missing = Vec::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut words = line.split_whitespace().skip(2);
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let queried = match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_owned(),
            };
            if !readme.contains(&format!("| `{queried}` |")) {
                missing.push(queried);
            }
            families += 1;
        }
        assert!(
            missing.is_empty(),
            "README's metrics table lacks {missing:?}"
        );
        assert!(families >= 15, "{text}");
    }

    #[test]
    fn verdicts_counted_by_labels() {
        let m = Metrics::new();
        let dropped =
            || m.record_verdict_parts("dropped", "dns", Some("NETFILTER_DROP"), Some("pod_veth"));
        dropped();
        dropped();
        m.record_verdict_parts("answered", "dns", None, Some("uplink"));
        m.record_verdict_parts("brand_new", "quic", Some(&"X".repeat(100)), None);
        let text = m.render();
        let got = lines(&text);
        for want in [
            r#"tracer_verdicts_total{verdict="dropped",kind="dns",reason="NETFILTER_DROP",interface_kind="pod_veth"} 2"#,
            r#"tracer_verdicts_total{verdict="answered",kind="dns",reason="",interface_kind="uplink"} 1"#,
        ] {
            assert!(got.contains(&want), "missing {want}\n{text}");
        }
        let other = format!(
            r#"tracer_verdicts_total{{verdict="other",kind="other",reason="{}",interface_kind=""}} 1"#,
            "X".repeat(MAX_LABEL_LEN)
        );
        assert!(got.contains(&other.as_str()), "{text}");
        assert_eq!(
            got.iter()
                .filter(|l| l.starts_with("tracer_verdicts_total"))
                .count(),
            3
        );
        assert!(text.contains("# TYPE tracer_verdicts counter"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn absolute_counters_and_gauges() {
        let m = Metrics::new();
        let text = m.render();
        for name in KERNEL_COUNTERS {
            assert!(
                text.contains(&format!(
                    "tracer_kernel_events_total{{counter=\"{name}\"}} 0"
                )),
                "{name} present from the start"
            );
        }
        m.set_kernel([("tc_seen", 100), ("tc_ringbuf_full", 3)]);
        m.set_kernel([("tc_seen", 250), ("tc_ringbuf_full", 3)]);
        m.set_kernel([("tc_seen", 10)]); // went down (reload): ignored
        m.set_user([("decoded", 7), ("write_errors", 1)]);
        m.set_attach(5, 9, 2);
        m.set_flows(12, 4);
        m.set_observe(2, 30);
        m.set_cache_state("syncing");
        m.set_cache_state("ready");
        let text = m.render();
        let got = lines(&text);
        for want in [
            r#"tracer_kernel_events_total{counter="tc_seen"} 250"#,
            r#"tracer_kernel_events_total{counter="tc_ringbuf_full"} 3"#,
            r#"tracer_kernel_events_total{counter="drop_seen"} 0"#,
            r#"tracer_userspace_events_total{counter="decoded"} 7"#,
            r#"tracer_userspace_events_total{counter="write_errors"} 1"#,
            r#"tracer_userspace_events_total{counter="decode_errors"} 0"#,
            "tracer_attached_interfaces 5",
            r#"tracer_attach_total{result="ok"} 9"#,
            r#"tracer_attach_total{result="error"} 2"#,
            "tracer_flows_open 12",
            "tracer_flows_evicted_total 4",
            "tracer_observe_clients 2",
            "tracer_observe_skipped_total 30",
            r#"tracer_k8s_cache_state{state="ready"} 1"#,
            r#"tracer_k8s_cache_state{state="syncing"} 0"#,
            r#"tracer_k8s_cache_state{state="disabled"} 0"#,
        ] {
            assert!(got.contains(&want), "missing {want}\n{text}");
        }
        m.set_cache_state("weird");
        let text = m.render();
        assert!(text.contains(r#"tracer_k8s_cache_state{state="weird"} 1"#));
        assert!(text.contains(r#"tracer_k8s_cache_state{state="ready"} 0"#));
        m.set_cache_state("ready");
        assert!(
            m.render()
                .contains(r#"tracer_k8s_cache_state{state="weird"} 0"#)
        );
    }

    #[test]
    fn counters_from_structs() {
        #[derive(serde::Serialize)]
        struct Kernel {
            tc_seen: u64,
            drop_seen: u64,
            name: &'static str,
        }
        let m = Metrics::new();
        m.set_kernel_fields(&Kernel {
            tc_seen: 5,
            drop_seen: 2,
            name: "x",
        });
        m.set_user_fields(&json!({"decoded": 9, "negative": -1}));
        m.set_user_fields(&"not a struct");
        let text = m.render();
        assert!(
            text.contains(r#"tracer_kernel_events_total{counter="tc_seen"} 5"#),
            "{text}"
        );
        assert!(text.contains(r#"tracer_kernel_events_total{counter="drop_seen"} 2"#));
        assert!(!text.contains("name"));
        assert!(text.contains(r#"tracer_userspace_events_total{counter="decoded"} 9"#));
        assert!(!text.contains("negative"));
    }

    #[test]
    fn observe_stats_read_at_scrape() {
        let m = Metrics::new();
        let stats = ObserveStats::default();
        m.track_observe(stats.clone());
        assert!(m.render().contains("tracer_observe_clients 0"));
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("send");
        let mut resp = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut resp))
            .await
            .expect("answer within 5 s")
            .expect("read");
        let (head, body) = resp.split_once("\r\n\r\n").expect("head and body");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status");
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    #[tokio::test]
    async fn http_endpoints() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let m = Metrics::new();
        let task = tokio::spawn(serve_listener(listener, m.clone()));
        m.record_verdict_parts("unanswered", "dns", None, None);

        let (status, head, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: application/openmetrics-text"),
            "{head}"
        );
        assert!(body.contains(r#"tracer_verdicts_total{verdict="unanswered",kind="dns",reason="",interface_kind=""} 1"#), "{body}");

        assert_eq!(get(addr, "/healthz").await.0, 200);
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(
            (status, body.as_str()),
            (503, "not ready: programs not attached yet\n")
        );
        m.set_ready(true);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        // /healthz follows the main loop's heartbeat.
        m.heartbeat(monotonic_s());
        assert_eq!(get(addr, "/healthz").await.0, 200);
        m.heartbeat(
            monotonic_s()
                .saturating_sub(HEARTBEAT_MAX.as_secs() + 5)
                .max(1),
        );
        assert_eq!(get(addr, "/healthz").await.0, 503);
        m.heartbeat(monotonic_s());
        assert_eq!(get(addr, "/nope").await.0, 404);

        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("send");
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.expect("read");
        assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");

        // Garbage does not take the server down.
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"\x00\x01garbage\r\n\r\n").await.expect("send");
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
        assert_eq!(get(addr, "/healthz").await.0, 200);
        task.abort();
    }

    /// Whether the server closes a fresh connection without an answer (all slots taken).
    async fn refused(addr: SocketAddr) -> bool {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = s
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let mut resp = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut resp)).await;
        resp.is_empty()
    }

    #[tokio::test]
    async fn probes_are_answered_while_metrics_clients_hold_every_slot() {
        let metrics_l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let health_l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (metrics_addr, health_addr) = (
            metrics_l.local_addr().expect("addr"),
            health_l.local_addr().expect("addr"),
        );
        let m = Metrics::new();
        let t1 = tokio::spawn(serve_listener(metrics_l, m.clone()));
        let t2 = tokio::spawn(serve_health_listener(health_l, m.clone()));
        m.set_ready(true);

        // Scrapers (or anyone) open every connection the metrics listener serves and send
        // nothing: each holds its slot until the header timeout.
        let mut idle = Vec::new();
        for _ in 0..MAX_HTTP_CONNECTIONS {
            idle.push(
                tokio::net::TcpStream::connect(metrics_addr)
                    .await
                    .expect("connect"),
            );
        }
        assert!(
            refused(metrics_addr).await,
            "the metrics listener is full: a further client gets no answer"
        );
        // The probes' own listener still answers.
        assert_eq!(get(health_addr, "/healthz").await.0, 200);
        assert_eq!(get(health_addr, "/readyz").await.0, 200);
        m.set_ready(false);
        assert_eq!(get(health_addr, "/readyz").await.0, 503);
        // It serves the probes only.
        let (status, _, body) = get(health_addr, "/metrics").await;
        assert_eq!(status, 404);
        assert!(body.contains("--metrics-addr"), "{body}");
        drop(idle);
        t1.abort();
        t2.abort();
    }

    #[tokio::test]
    async fn health_listener_cannot_be_held_by_silent_clients() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(serve_health_listener(l, Metrics::new()));
        let mut idle = Vec::new();
        for _ in 0..MAX_HEALTH_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        assert!(refused(addr).await, "full for now");
        // Silent clients are cut after the short header timeout and the probe gets through.
        tokio::time::sleep(HEALTH_HEADER_TIMEOUT + Duration::from_millis(500)).await;
        assert_eq!(get(addr, "/healthz").await.0, 200);
        task.abort();
    }

    #[tokio::test]
    async fn serve_reports_a_taken_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let Err(err) = serve(addr, Metrics::new()).await else {
            panic!("port taken: bind must fail");
        };
        assert!(
            err.to_string().contains("binding the metrics endpoint"),
            "{err}"
        );
        let Err(err) = serve_health(addr, Metrics::new()).await else {
            panic!("port taken: bind must fail");
        };
        assert!(err.to_string().contains("(--health-addr)"), "{err}");
    }
}
