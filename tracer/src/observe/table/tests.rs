//! Rendering tests: golden tables at 80, 120 and 200 columns and piped, with EKS-length names
//! (`tracer/testdata/observe/*.txt`; `TRACER_UPDATE_GOLDEN=1` rewrites them), and the rules
//! every rendering keeps: lines fit, identities whole, nothing cut, nothing a pod sends reaches
//! the terminal raw.

use super::*;
use serde_json::json;

const NODE: &str = "ip-192-168-101-23.eu-west-1.compute.internal";
const OTHER_NODE: &str = "ip-192-168-101-187.eu-west-1.compute.internal";
const LONG_QNAME: &str =
    "a-very-long-service-name-that-someone-generated.with-a-namespace-label.svc.cluster.local";

fn lines() -> Vec<Value> {
    vec![
        json!({
            "decided_at": "2026-11-24T02:10:00.201Z",
            "schema": "tracer.flow/v1", "time": "2026-11-24T02:10:00.123456Z", "node": NODE,
            "kind": "dns", "transport": "udp", "verdict": "dropped", "evidence": "complete",
            "where": {"stage": "routing", "interface": "eth1", "interface_kind": "uplink",
                      "direction": "response", "node": NODE},
            "drop": {"reason": "IP_RPFILTER", "reason_code": 6, "location": "ip_rcv_finish_core+0x2d8"},
            "dns": {"id": 4243, "qname": "payments-db.payments.svc.cluster.local", "qtype": "A",
                    "rcode": null, "latency_ms": null, "retries": 1, "tcp_fallback": false},
            "client": {"ip": "192.168.101.57", "port": 40011, "pod": "payments-gateway-6c9f8d7b5-q2w4e",
                       "namespace": "payments", "workload": "Deployment/payments-gateway", "node": NODE},
            "server": {"ip": "192.168.101.200", "port": 53, "service_ip": "10.100.0.10",
                       "service": "kube-system/kube-dns", "pod": "coredns-5d78c9869d-r7t6y",
                       "namespace": "kube-system", "workload": "Deployment/coredns", "node": OTHER_NODE},
            "hint": "Reverse-path filter on eth1 dropped the reply from CoreDNS replica kube-system/coredns-5d78c9869d-r7t6y on ip-192-168-101-187 (192.168.101.200): asymmetric routing (reply arrived on a different ENI than the route back); set rp_filter=2 (loose) on eth1.",
        }),
        json!({
            "decided_at": "2026-11-24T02:10:05.140Z",
            "time": "2026-11-24T02:10:00.138000Z", "node": NODE, "kind": "dns", "verdict": "lost_beyond_node",
            "evidence": "complete",
            "where": {"stage": "uplink", "interface": "eth0", "interface_kind": "uplink"},
            "dns": {"qname": "elasticloadbalancing.eu-west-1.amazonaws.com", "qtype": "AAAA", "retries": 0},
            "client": {"ip": "192.168.101.61", "pod": "aws-load-balancer-controller-7b9c8d6f5-kq8zt",
                       "namespace": "kube-system", "node": NODE},
            "server": {"ip": "192.168.101.200", "pod": "coredns-5d78c9869d-r7t6y", "namespace": "kube-system",
                       "service": "kube-system/kube-dns", "node": OTHER_NODE},
            "hint": "UDP 53 from pod kube-system/aws-load-balancer-controller-7b9c8d6f5-kq8zt (192.168.101.61) left node ip-192-168-101-23 via eth0 toward CoreDNS replica kube-system/coredns-5d78c9869d-r7t6y on ip-192-168-101-187 (192.168.101.200) and no reply came back within 5 s: check that the node security group allows UDP 53 to 192.168.101.200, and the network ACLs.",
        }),
        json!({
            "decided_at": "2026-11-24T02:10:05.311Z",
            "time": "2026-11-24T02:10:05.310550Z", "node": NODE, "kind": "dns", "verdict": "answered",
            "evidence": "complete",
            "where": {"stage": "client_veth", "interface": "eni1a2b3c4d5e6", "interface_kind": "pod_veth"},
            "dns": {"qname": "web.default.svc.cluster.local.eu-west-1.compute.internal", "qtype": "A",
                    "rcode": "NXDOMAIN", "latency_ms": 0.45},
            "client": {"ip": "192.168.101.21", "pod": "checkout-6c9f8d7b5-q2w4e", "namespace": "shop", "node": NODE},
            "server": {"ip": "192.168.101.30", "pod": "coredns-5d78c9869d-8xk2p", "namespace": "kube-system", "node": NODE},
            "hint": "CoreDNS replica kube-system/coredns-5d78c9869d-8xk2p answered NXDOMAIN in 0.45 ms: not a network failure.",
        }),
        json!({
            "decided_at": "2026-11-24T02:10:10.000Z",
            "schema": "tracer.flow/v1", "time": "2026-11-24T02:10:00.000000Z", "node": NODE,
            "kind": "dns", "verdict": "answered", "count": 412,
            "latency_ms": {"p50": 0.41, "p90": 0.9, "p99": 2.3, "max": 8.7},
            "client": {"ip": "192.168.101.33", "pod": "frontend-5f7b9c8d6-abcde", "namespace": "shop",
                       "workload": "Deployment/frontend", "node": NODE},
            "server": {"ip": "192.168.101.30", "service_ip": "10.100.0.10", "service": "kube-system/kube-dns",
                       "pod": "coredns-5d78c9869d-8xk2p", "namespace": "kube-system", "node": NODE},
            "enrichment": "ready",
        }),
        json!({
            "decided_at": "2026-11-24T02:10:10.420Z",
            "time": "2026-11-24T02:10:10.417000Z", "node": NODE, "kind": "egress", "transport": "tcp",
            "verdict": "established", "evidence": "complete",
            "where": {"stage": "client_veth", "interface": "eni7f3a9c2b1d0", "interface_kind": "pod_veth"},
            "egress": {"retries": 0, "latency_ms": 3.05, "snat_ip": "192.168.101.23", "snat_port": 61001},
            "client": {"ip": "192.168.101.90", "pod": "batch-reporter-28459320-8xk2p", "namespace": "analytics", "node": NODE},
            "server": {"ip": "203.0.113.80", "port": 443},
            "hint": "Connection established in 3.05 ms.",
        }),
        json!({
            "decided_at": "2026-11-24T02:10:11.002Z",
            "time": "2026-11-24T02:10:11.001000Z", "node": NODE, "kind": "dns", "verdict": "rejected",
            "evidence": "complete",
            "where": {"stage": "client_veth", "interface": "eni1a2b3c4d5e6", "interface_kind": "pod_veth"},
            "rejection": {"by": "icmp", "icmp": "port_unreachable"},
            "dns": {"qname": "kubernetes.default.svc.cluster.local", "qtype": "A"},
            "client": {"ip": "192.168.101.21", "pod": "checkout-6c9f8d7b5-q2w4e", "namespace": "shop", "node": NODE},
            "server": {"ip": "192.168.101.30", "pod": "coredns-5d78c9869d-8xk2p", "namespace": "kube-system", "node": NODE},
            "hint": "ICMP port_unreachable came back from CoreDNS replica kube-system/coredns-5d78c9869d-8xk2p: nothing listens on UDP 53 there (CoreDNS down or restarting?).",
        }),
        json!({
            "decided_at": "2026-11-24T02:10:16.500Z",
            "time": "2026-11-24T02:10:11.480000Z", "node": NODE, "kind": "dns", "verdict": "unknown",
            "evidence": "incomplete", "evidence_note": "ring buffer full: 12 events",
            "where": {"stage": "uplink", "interface": "eth0", "interface_kind": "uplink"},
            "dns": {"qname": LONG_QNAME, "qtype": "SRV"},
            "client": {"ip": "192.168.101.44", "pod": "ingest-worker-0", "namespace": "data-pipeline-staging", "node": NODE},
            "server": {"ip": "192.168.101.200", "pod": "coredns-5d78c9869d-r7t6y", "namespace": "kube-system", "node": OTHER_NODE},
            "hint": "No verdict: events may have been lost while the flow was open (ring buffer full: 12 events); check the tracer's loss counters and look again.",
        }),
    ]
}

/// Names an operator reads to tell flows apart: each must appear whole on one line.
const IDENTITIES: &[&str] = &[
    "payments-gateway-6c9f8d7b5-q2w4e",
    "aws-load-balancer-controller-7b9c8d6f5-kq8zt",
    "checkout-6c9f8d7b5-q2w4e",
    "frontend-5f7b9c8d6-abcde",
    "batch-reporter-28459320-8xk2p",
    "ingest-worker-0",
    "data-pipeline-staging",
    "kube-system",
    "payments",
    "analytics",
    "payments-db.payments.svc.cluster.local A",
    "elasticloadbalancing.eu-west-1.amazonaws.com AAAA",
    "web.default.svc.cluster.local.eu-west-1.compute.internal A",
    "kubernetes.default.svc.cluster.local A",
    "203.0.113.80:443/tcp",
];

/// Identities only the layouts with SERVER show.
const SERVER_IDENTITIES: &[&str] = &[
    "coredns-5d78c9869d-r7t6y@ip-192-168-101-187",
    "coredns-5d78c9869d-8xk2p",
];

fn render(layout: &Layout) -> String {
    let mut out = layout.header();
    for v in lines() {
        out.push('\n');
        out.push_str(&layout.row(&v));
    }
    out.push('\n');
    out
}

fn golden(name: &str, got: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/observe")
        .join(name);
    if std::env::var_os("TRACER_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with TRACER_UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(
        got,
        want,
        "{} differs (TRACER_UPDATE_GOLDEN=1 rewrites it); got:\n{got}",
        path.display()
    );
}

fn check_rules(text: &str, width: Option<usize>, server: bool) {
    for line in text.lines() {
        if let Some(w) = width {
            assert!(line.chars().count() <= w, "wider than {w}: {line:?}");
        }
        assert!(!line.contains('…'), "nothing is cut: {line:?}");
        assert_eq!(line, line.trim_end(), "no trailing blanks");
    }
    let mut ids: Vec<&str> = IDENTITIES.to_vec();
    if server {
        ids.extend_from_slice(SERVER_IDENTITIES);
    }
    for id in ids {
        assert!(
            text.lines().any(|l| l.contains(id)),
            "{id:?} is not whole on any line (width {width:?}):\n{text}"
        );
    }
    // The long query is wrapped on a narrow terminal, never shortened: all of it is there.
    let joined: String = text.split_whitespace().collect();
    assert!(joined.contains(LONG_QNAME), "long query whole:\n{text}");
}

#[test]
fn golden_tables_fit_and_keep_identities() {
    for (name, width) in [
        ("table-80.txt", 80),
        ("table-120.txt", 120),
        ("table-200.txt", 200),
    ] {
        let text = render(&Layout::table(Some(width), false));
        check_rules(&text, Some(width), width >= ONE_LINE_FROM);
        golden(name, &text);
    }
    let piped = render(&Layout::table(None, false));
    check_rules(&piped, None, true);
    assert_eq!(
        piped.lines().count(),
        1 + lines().len(),
        "one line per record when piped"
    );
    golden("table-piped.txt", &piped);
    let wide = render(&Layout::wide(false));
    check_rules(&wide, None, true);
    assert_eq!(wide.lines().count(), 1 + lines().len());
    assert!(wide.contains(NODE.split('.').next().unwrap_or_default()));
    golden("wide.txt", &wide);
    let custom = render(&Layout::custom(
        parse_columns("time,pod,verdict,query,count,latency").expect("columns"),
        Some(80),
        false,
    ));
    golden("columns-80.txt", &custom);
}

#[test]
fn rows_show_problems_with_their_hint_and_summaries_with_their_count() {
    let layout = Layout::table(Some(120), false);
    let all = lines();
    let dropped = layout.row(&all[0]);
    assert!(
        dropped.contains("IP_RPFILTER at ip_rcv_finish_core+0x2d8"),
        "{dropped}"
    );
    assert!(
        dropped.contains("Reverse-path filter on eth1"),
        "hint on its own lines: {dropped}"
    );
    assert!(dropped.lines().count() >= 2);
    let mut answered = all[2].clone();
    answered["dns"]["qname"] = json!("web.shop.svc.cluster.local");
    let answered = Layout::table(Some(200), false).row(&answered);
    assert_eq!(
        answered.lines().count(),
        1,
        "no hint line for an answer: {answered}"
    );
    assert!(answered.contains("NXDOMAIN 0.45ms"), "{answered}");
    let summary = layout.row(&all[3]);
    assert!(summary.contains("×412"), "{summary}");
    assert!(
        summary.contains("p50 0.41ms") && summary.contains("max 8.70ms"),
        "{summary}"
    );
    // DECIDED is the stream's order; STARTED (wide) the flow's first sighting.
    let lost = Layout::wide(false).row(&all[1]);
    assert!(lost.starts_with("02:10:05.140  02:10:00.138"), "{lost}");
    // Cross-node verdicts: the peer's finding is in the reason.
    let mut with_peer = all[1].clone();
    with_peer["peer"] = json!({"node": OTHER_NODE, "finding": "reply_lost", "reason": null});
    let row = Layout::wide(false).row(&with_peer);
    assert!(row.contains("peer ip-192-168-101-187: reply_lost"), "{row}");
    with_peer["peer"] = json!({"node": OTHER_NODE, "finding": "unknown", "reason": "timeout"});
    let row = Layout::wide(false).row(&with_peer);
    assert!(row.contains("unknown (timeout)"), "{row}");
    // A replica on this very node: this node's own account; a reply that left and never came
    // back in is not "no reply".
    with_peer["node"] = json!(NODE);
    with_peer["peer"] = json!({"node": NODE, "finding": "reply_lost", "reason": null});
    with_peer["where"]["direction"] = json!("response");
    with_peer["hint"] = json!("The answer left via eth0 toward the client and never came back in.");
    let row = Layout::wide(false).row(&with_peer);
    assert!(row.contains("this node: reply_lost"), "{row}");
    // Node counters that grew meanwhile are in the reason; odd values do not break the row.
    with_peer["node_signals"] = json!([
        {"signal": "ena", "interface": "eth0", "counter": "linklocal_allowance_exceeded", "delta": 37},
        {"signal": "conntrack", "interface": null, "counter": "insert_failed", "delta": 4},
        {"signal": 7, "counter": null},
    ]);
    let row = Layout::wide(false).row(&with_peer);
    assert!(
        row.contains("eth0 linklocal_allowance_exceeded +37")
            && row.contains("conntrack insert_failed +4")
            && !row.contains("+0"),
        "{row}"
    );
    assert!(row.contains("reply left, never back"), "{row}");
    assert!(!row.contains("no reply"), "{row}");
    // UDP egress with no reply where none was due (statsd): said so, not "[evidence incomplete]".
    let one_way = json!({
        "decided_at": "2026-11-24T02:10:07.000Z", "node": NODE, "kind": "egress", "transport": "udp",
        "verdict": "unknown", "evidence": "incomplete",
        "evidence_note": "UDP needs no reply: the datagram left through eth0 and nothing came back within 5 s, but none was due",
        "where": {"stage": "uplink", "interface": "eth0", "interface_kind": "uplink"},
        "client": {"ip": "192.168.101.21", "pod": "checkout-6c9f8d7b5-q2w4e", "namespace": "shop"},
        "server": {"ip": "203.0.113.9", "port": 8125},
        "hint": "No verdict for the UDP packet from pod shop/checkout-6c9f8d7b5-q2w4e: UDP needs no reply.",
    });
    let row = layout.row(&one_way);
    assert!(row.contains("no reply, none due (UDP)"), "{row}");
    assert!(!row.contains("[evidence incomplete]"), "{row}");
    let mut lost_data = one_way.clone();
    lost_data["evidence_note"] = json!("events may have been lost while the flow was open");
    let row = layout.row(&lost_data);
    assert!(row.contains("[evidence incomplete]"), "{row}");
}

/// The daemon's egress summary line (the docs example): one row naming the destination
/// `ip:port/transport` (not `*` as for a DNS summary), the count and the handshake percentiles,
/// no hint (healthy).
#[test]
fn an_egress_summary_row_names_its_destination_count_and_percentiles() {
    let text = include_str!("../../../../docs/examples/established-summary.json");
    let v: Value = serde_json::from_str(text).expect("json");
    let row = Layout::table(Some(200), false).row(&v);
    assert!(
        !row.contains('↳'),
        "no hint line for healthy connections: {row}"
    );
    assert!(row.contains("203.0.113.80:80/tcp"), "{row}");
    assert!(row.contains("×1200"), "{row}");
    assert!(
        row.contains("p50 3.67ms") && row.contains("p99 7.34ms"),
        "{row}"
    );
    assert!(row.contains("established"), "{row}");
    assert!(!row.contains("* via"), "{row}");
}

#[test]
fn summary_line_is_tolerated_everywhere() {
    // A hand-written healthy-DNS summary line: no ports, no path, no key, percentiles.
    let line = r#"{"schema":"tracer.flow/v1","time":"2026-11-24T02:10:00Z","node":"ip-10-0-1-12.ec2.internal","kind":"dns","verdict":"answered","count":12034,"latency_ms":{"p50":0.31,"p90":0.8,"p99":4.1,"max":212.5},"client":{"ip":"10.0.1.34","pod":"web-7d9f8c6b5-abcde","namespace":"shop","workload":"Deployment/web","node":"ip-10-0-1-12.ec2.internal"},"server":{"ip":"10.0.1.53","service_ip":"172.20.0.10","service":"kube-system/kube-dns","pod":"coredns-5d78c9869d-xk2p9","namespace":"kube-system","workload":"Deployment/coredns","node":"ip-10-0-1-12.ec2.internal"},"enrichment":"ready","hint":null}"#;
    let v: Value = serde_json::from_str(line).expect("json");
    let cols = parse_columns("decided,node,namespace,pod,verdict,dest,server,latency,count,reason")
        .expect("columns");
    let row = Layout::custom(cols, None, false).row(&v);
    assert_eq!(
        row,
        "02:10:00.000  ip-10-0-1-12        shop         web-7d9f8c6b5-abcde               answered          \
         * via kube-system/kube-dns                coredns-5d78c9869d-xk2p9  p50 0.31ms p99 4.10ms  \
         12034  ×12034 p50 0.31ms p90 0.80ms p99 4.10ms max 212ms"
    );
    for layout in [
        Layout::table(Some(80), true),
        Layout::table(None, false),
        Layout::wide(true),
    ] {
        let r = layout.row(&v);
        assert!(r.contains("×12034"), "{r}");
        assert_eq!(
            r.lines().count(),
            if layout.width == Some(80) { 3 } else { 1 },
            "{r}"
        );
    }
}

#[test]
fn colour_only_on_the_verdict_and_header() {
    let v = json!({"verdict": "dropped", "node": "n"});
    let layout = Layout::table(Some(200), true);
    let r = layout.row(&v);
    assert!(r.contains("\u{1b}[1m\u{1b}[31mdropped\u{1b}[0m"), "{r:?}");
    assert_eq!(r.matches('\u{1b}').count(), 3, "{r:?}");
    assert!(layout.header().starts_with("\u{1b}[1m"));
    assert!(!Layout::table(Some(200), false).row(&v).contains('\u{1b}'));
}

#[test]
fn hostile_and_missing_fields() {
    let layouts = [
        Layout::table(Some(80), true),
        Layout::table(Some(40), false),
        Layout::table(Some(1), false),
        Layout::table(None, false),
        Layout::wide(false),
    ];
    for v in [
        json!({}),
        json!(null),
        json!([]),
        json!("x"),
        json!({"verdict": 7, "client": [], "server": "x", "dns": {"latency_ms": "fast"}, "where": 1,
               "count": "many", "latency_ms": {"p50": "x"}}),
        json!({"time": "yesterday", "decided_at": 5}),
        json!({"type": "packet", "src": [], "iface": 3}),
    ] {
        for layout in &layouts {
            let r = layout.row(&v);
            assert!(r.starts_with('-') || r.starts_with("yesterday"), "{v}: {r}");
            if let Some(w) = layout.width {
                assert!(r.lines().all(|l| l.chars().count() <= w), "{v}: {r}");
            }
        }
    }
    let evil = json!({"verdict": "dropped", "dns": {"qname": "a\u{1b}[2Jb\n.example\u{202e}moc"},
                      "client": {"pod": "p\u{7}"}, "hint": "x\u{7}y\r\n"});
    for layout in &layouts {
        let r = layout.row(&evil);
        assert!(
            !r.contains("\u{1b}[2J")
                && !r.contains('\u{7}')
                && !r.contains('\r')
                && !r.contains('\u{202e}'),
            "{r:?}"
        );
        assert!(r.contains("a?[2Jb?.example?moc"), "{r:?}");
    }
}

#[test]
fn packet_rows() {
    let p = json!({"type": "packet", "hook": "egress", "iface": {"name": "eth0", "kind": "uplink"},
                   "proto": "udp", "src": "10.0.1.10", "sport": 40000, "dst": "10.0.2.7", "dport": 53,
                   "dns": {"qname": "a.example", "rcode": "NOERROR"}});
    assert_eq!(
        Layout::table(None, false).row(&p),
        "-             -            -                                 packet            a.example                                 -                         eth0 egress     10.0.1.10:40000 > 10.0.2.7:53 udp NOERROR  -"
    );
}

#[test]
fn wrapping() {
    assert_eq!(wrap("a bb ccc", 4), ["a bb", "ccc"]);
    assert_eq!(wrap("abcdefghij", 4), ["abcd", "efgh", "ij"]);
    assert_eq!(wrap("", 4), [""]);
    assert_eq!(wrap("x  y", 10), ["x y"]);
    assert_eq!(wrap("ü".repeat(5).as_str(), 2), ["üü", "üü", "ü"]);
    assert_eq!(wrap("a", 0), ["a"]);
}

#[test]
fn columns_option() {
    assert_eq!(
        parse_columns("time, POD,query,ns").expect("ok"),
        [
            Column::Decided,
            Column::Pod,
            Column::Dest,
            Column::Namespace
        ]
    );
    let e = parse_columns("pod,colour").expect_err("unknown");
    assert!(
        e.contains("unknown column \"colour\"") && e.contains("decided,started"),
        "{e}"
    );
    assert!(parse_columns("").is_err());
}
