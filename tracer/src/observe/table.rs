//! The `-o table` rendering of `tracer observe`: one fixed-width row per line, Kubernetes names
//! first and the reason last, so rows line up while they stream (a table crate that measures
//! the whole table first cannot work on an endless stream).
//!
//! Node names are shown up to their first dot (`ip-10-0-1-12.ec2.internal` → `ip-10-0-1-12`);
//! `-o json` has them whole. A cut cell keeps its tail where the tail tells things apart (pod
//! hash suffixes, the query type, the server's node).
//!
//! Every cell is sanitized: control characters (a query name is attacker-chosen) are replaced so
//! nothing a pod sends can drive the operator's terminal.

use anstyle::{AnsiColor, Style};
use serde_json::Value;

use crate::sinks::json::{field, is_packet_event, str_at};

/// How rows are rendered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStyle {
    /// Colour the verdict and the header (ANSI SGR).
    pub color: bool,
    /// Terminal width: the last column (REASON) is cut to fit when known.
    pub width: Option<usize>,
}

/// Fewest characters REASON is cut to on a narrow terminal.
pub const MIN_REASON_WIDTH: usize = 20;

/// Column separator.
const SEP: &str = "  ";

/// How a too-long cell is shortened.
#[derive(Clone, Copy)]
enum Cut {
    /// Keep the start (`ip-10-0-1-12.ec2.i…`).
    End,
    /// Keep both ends (`coredns-5d…-xk2p`): names whose suffix matters.
    Middle,
}

/// Fixed columns: (header, width, how to cut). REASON follows, unbounded.
const COLUMNS: [(&str, usize, Cut); 8] = [
    ("TIME", 12, Cut::End),
    ("NODE", 15, Cut::End),
    ("NAMESPACE", 12, Cut::End),
    ("POD", 22, Cut::Middle),
    ("VERDICT", 16, Cut::End),
    ("QUERY/DEST", 30, Cut::Middle),
    ("SERVER", 22, Cut::Middle),
    ("WHERE", 25, Cut::Middle),
];

/// The header row.
pub fn header(style: &TableStyle) -> String {
    let cells: Vec<Cell> = COLUMNS.iter().map(|(h, _, _)| Cell::new(*h)).collect();
    let line = assemble(&cells, "REASON", None, style);
    if style.color {
        let bold = Style::new().bold();
        format!("{}{line}{}", bold.render(), bold.render_reset())
    } else {
        line
    }
}

/// One row for a verdict or packet event line.
pub fn row(v: &Value, style: &TableStyle) -> String {
    let (cells, verdict, reason) = if is_packet_event(v) {
        packet_cells(v)
    } else {
        verdict_cells(v)
    };
    assemble(&cells, &reason, Some(&verdict), style)
}

/// A cell: the main text, cut to fit, and a suffix kept whole (` AAAA`, `@node`).
#[derive(Clone, Debug, Default)]
struct Cell {
    main: String,
    suffix: String,
}

impl Cell {
    fn new(main: impl Into<String>) -> Self {
        Self {
            main: main.into(),
            suffix: String::new(),
        }
    }

    fn with_suffix(main: impl Into<String>, suffix: impl Into<String>) -> Self {
        Self {
            main: main.into(),
            suffix: suffix.into(),
        }
    }

    fn render(&self, width: usize, cut: Cut) -> String {
        let suffix = sanitize(&self.suffix);
        let slen = suffix.chars().count();
        if self.main.chars().count() + slen <= width || slen + 4 > width {
            return fit(&format!("{}{suffix}", self.main), width, cut);
        }
        format!("{}{suffix}", fit(&self.main, width - slen, cut))
    }
}

fn assemble(cells: &[Cell], reason: &str, verdict: Option<&str>, style: &TableStyle) -> String {
    let mut out = String::new();
    let mut used = 0usize;
    for (i, ((_, width, cut), cell)) in COLUMNS.iter().zip(cells).enumerate() {
        let text = cell.render(*width, *cut);
        let pad = width.saturating_sub(text.chars().count());
        // VERDICT is the only coloured cell.
        match (i, verdict, style.color) {
            (4, Some(v), true) => {
                let st = verdict_style(v);
                out.push_str(&format!("{}{text}{}", st.render(), st.render_reset()));
            }
            _ => out.push_str(&text),
        }
        out.push_str(&" ".repeat(pad));
        out.push_str(SEP);
        used += width + SEP.len();
    }
    let reason = sanitize(reason);
    let reason = match style.width {
        Some(w) => fit(
            &reason,
            w.saturating_sub(used).max(MIN_REASON_WIDTH),
            Cut::End,
        ),
        None => reason,
    };
    out.push_str(&reason);
    out.truncate(out.trim_end().len());
    out
}

fn verdict_style(verdict: &str) -> Style {
    let color = match verdict {
        "answered" | "established" => Some(AnsiColor::Green),
        "dropped" | "rejected" => Some(AnsiColor::Red),
        "lost_beyond_node" | "unanswered" => Some(AnsiColor::Yellow),
        _ => None,
    };
    match color {
        Some(c) => Style::new().fg_color(Some(c.into())).bold(),
        None => Style::new().dimmed(),
    }
}

/// Replaces control characters (ESC, newlines, ...) so a cell cannot move the cursor.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Shortens `s` to `width` characters with an ellipsis.
fn fit(s: &str, width: usize, cut: Cut) -> String {
    let s = sanitize(s);
    let n = s.chars().count();
    if n <= width {
        return s;
    }
    if width == 0 {
        return String::new();
    }
    let keep = width - 1;
    match cut {
        Cut::End => s.chars().take(keep).chain(['…']).collect(),
        Cut::Middle => {
            let tail = keep / 2;
            let head = keep - tail;
            let mut out: String = s.chars().take(head).collect();
            out.push('…');
            out.extend(s.chars().skip(n - tail));
            out
        }
    }
}

/// `HH:MM:SS.mmm` (UTC) of an RFC 3339 `time`; the raw text when it does not parse.
pub fn short_time(v: &Value) -> String {
    match str_at(v, "time") {
        Some(t) => match t.parse::<jiff::Timestamp>() {
            Ok(ts) => ts.strftime("%H:%M:%S%.3f").to_string(),
            Err(_) => t.to_owned(),
        },
        None => "-".to_owned(),
    }
}

fn text(v: &Value, path: &str) -> Option<String> {
    match field(v, path)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn or_dash(s: Option<String>) -> String {
    s.unwrap_or_else(|| "-".to_owned())
}

/// A node name up to its first dot, unless it is an IP address.
fn short_node(name: &str) -> &str {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return name;
    }
    name.split('.')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(name)
}

/// `ip:port`, bracketing IPv6.
fn host_port(ip: Option<String>, port: Option<String>) -> Option<String> {
    let ip = ip?;
    Some(match port {
        Some(p) if ip.contains(':') => format!("[{ip}]:{p}"),
        Some(p) => format!("{ip}:{p}"),
        None => ip,
    })
}

/// The pod name (without namespace) or else the address of a side.
fn who(v: &Value, prefix: &str) -> Option<String> {
    match str_at(v, &format!("{prefix}.pod")) {
        Some(p) => Some(p.rsplit('/').next().unwrap_or(p).to_owned()),
        None => text(v, &format!("{prefix}.ip")),
    }
}

fn verdict_cells(v: &Value) -> (Vec<Cell>, String, String) {
    let verdict = or_dash(text(v, "verdict"));
    let kind = str_at(v, "kind");
    let client_ns = str_at(v, "client.namespace");
    let pod = who(v, "client");

    let dest = match (kind, str_at(v, "dns.qname")) {
        (Some("dns"), Some(q)) | (None, Some(q)) => match str_at(v, "dns.qtype") {
            Some(t) => Cell::with_suffix(q, format!(" {t}")),
            None => Cell::new(q),
        },
        _ => {
            let dest = or_dash(host_port(text(v, "server.ip"), text(v, "server.port")));
            match text(v, "proto").or_else(|| text(v, "transport")) {
                Some(p) => Cell::with_suffix(dest, format!("/{}", p.to_ascii_lowercase())),
                None => Cell::new(dest),
            }
        }
    };

    let server = or_dash(
        who(v, "server")
            .or_else(|| text(v, "server.service"))
            .or_else(|| text(v, "server.ip")),
    );
    let server = match str_at(v, "server.node") {
        Some(snode) if Some(snode) != str_at(v, "node") => {
            Cell::with_suffix(server, format!("@{}", short_node(snode)))
        }
        _ => Cell::new(server),
    };

    let place = match (
        text(v, "where.interface"),
        str_at(v, "where.interface_kind"),
    ) {
        (Some(i), Some(k)) => Some(format!("{i} ({k})")),
        (i, _) => i,
    };

    let mut reason = Vec::new();
    if str_at(v, "evidence") == Some("incomplete") {
        reason.push("[evidence incomplete]".to_owned());
    }
    match verdict.as_str() {
        "answered" => {
            if let Some(rcode) = text(v, "dns.rcode") {
                reason.push(rcode);
            }
            if let Some(ms) = field(v, "dns.latency_ms").and_then(Value::as_f64) {
                reason.push(format!("{ms:.1}ms"));
            }
        }
        _ => {
            if let Some(r) = text(v, "drop.reason") {
                match text(v, "drop.location") {
                    Some(loc) => reason.push(format!("{r} at {loc}")),
                    None => reason.push(r),
                }
            }
        }
    }
    let mut reason = reason.join(" ");
    if let Some(hint) = text(v, "hint") {
        if !reason.is_empty() {
            reason.push_str(": ");
        }
        reason.push_str(&hint);
    }

    let cells = vec![
        Cell::new(short_time(v)),
        Cell::new(or_dash(str_at(v, "node").map(|n| short_node(n).to_owned()))),
        Cell::new(or_dash(client_ns.map(str::to_owned))),
        Cell::new(or_dash(pod)),
        Cell::new(verdict.clone()),
        dest,
        server,
        Cell::new(or_dash(place)),
    ];
    (cells, verdict, reason)
}

fn packet_cells(v: &Value) -> (Vec<Cell>, String, String) {
    let src = host_port(text(v, "src"), text(v, "sport"));
    let dst = host_port(text(v, "dst"), text(v, "dport"));
    let flow = match (src, dst) {
        (Some(s), Some(d)) => format!("{s} > {d}"),
        (s, d) => or_dash(s.or(d)),
    };
    let dest = match str_at(v, "dns.qname") {
        Some(q) => q.to_owned(),
        None => flow.clone(),
    };
    let place = match (text(v, "iface.name"), str_at(v, "hook")) {
        (Some(i), Some(h)) => Some(format!("{i} {h}")),
        (i, h) => i.or(h.map(str::to_owned)),
    };
    let mut reason = vec![flow];
    if let Some(p) = text(v, "proto") {
        reason.push(p);
    }
    for path in [
        "tcp_flags",
        "icmp",
        "dns.rcode",
        "drop.reason",
        "drop.location",
    ] {
        if let Some(t) = text(v, path) {
            reason.push(t);
        }
    }
    let cells = vec![
        Cell::new(short_time(v)),
        Cell::new(or_dash(str_at(v, "node").map(|n| short_node(n).to_owned()))),
        Cell::new("-"),
        Cell::new("-"),
        Cell::new("packet"),
        Cell::new(dest),
        Cell::new("-"),
        Cell::new(or_dash(place)),
    ];
    (cells, "packet".to_owned(), reason.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PLAIN: TableStyle = TableStyle {
        color: false,
        width: None,
    };

    #[test]
    fn golden_rows() {
        let dropped = json!({
            "schema": "tracer.flow/v1", "kind": "dns", "verdict": "dropped",
            "time": "2026-11-24T01:49:12.345678Z", "node": "ip-10-0-1-12.ec2.internal",
            "client": {"namespace": "shop", "pod": "web-7d9f8c6b5-abcde", "ip": "10.0.1.34"},
            "server": {"ip": "10.0.1.53", "service": "kube-system/kube-dns", "namespace": "kube-system",
                       "pod": "coredns-5d78c9869d-xk2p9", "node": "ip-10-0-1-12.ec2.internal"},
            "dns": {"qname": "api.example.com", "qtype": "A"},
            "where": {"interface": "eni1a2b3c4d5e6", "interface_kind": "pod_veth"},
            "drop": {"reason": "NETFILTER_DROP", "location": "nft_do_chain+0x4e4"},
            "hint": "a netfilter rule on this node dropped the query: check NetworkPolicies",
            "evidence": "complete",
        });
        let answered = json!({
            "kind": "dns", "verdict": "answered", "time": "2026-11-24T01:49:13+00:00",
            "node": "ip-10-0-1-12",
            "client": {"namespace": "default", "pod": "client", "ip": "10.0.1.10"},
            "server": {"ip": "10.0.2.7", "pod": "coredns-b", "namespace": "kube-system", "node": "ip-10-0-2-7"},
            "dns": {"qname": "kubernetes.default.svc.cluster.local", "qtype": "AAAA", "rcode": "NXDOMAIN",
                    "latency_ms": 1.25},
            "where": {"interface": "eth0", "interface_kind": "uplink"},
        });
        let lost = json!({
            "kind": "egress", "verdict": "lost_beyond_node", "node": "ip-10-0-1-12", "time": null,
            "client": {"ip": "10.0.1.99"},
            "server": {"ip": "2001:db8::1", "port": 443, "service": null},
            "proto": "TCP", "evidence": "incomplete",
            "where": {"interface": "vlan.eth.7"},
            "hint": "SYN left via vlan.eth.7 and nothing came back",
        });
        let header = header(&PLAIN);
        let rows = [
            row(&dropped, &PLAIN),
            row(&answered, &PLAIN),
            row(&lost, &PLAIN),
        ];
        let golden = [
            "TIME          NODE             NAMESPACE     POD                     VERDICT           QUERY/DEST                      SERVER                  WHERE                      REASON",
            "01:49:12.345  ip-10-0-1-12     shop          web-7d9f8c6b5-abcde     dropped           api.example.com A               coredns-5d7…869d-xk2p9  eni1a2b3c4d5e6 (pod_veth)  NETFILTER_DROP at nft_do_chain+0x4e4: a netfilter rule on this node dropped the query: check NetworkPolicies",
            "01:49:13.000  ip-10-0-1-12     default       client                  answered          kubernetes.d…luster.local AAAA  coredns-b@ip-10-0-2-7   eth0 (uplink)              NXDOMAIN 1.2ms",
            "-             ip-10-0-1-12     -             10.0.1.99               lost_beyond_node  [2001:db8::1]:443/tcp           2001:db8::1             vlan.eth.7                 [evidence incomplete]: SYN left via vlan.eth.7 and nothing came back",
        ];
        let got: Vec<&str> = std::iter::once(header.as_str())
            .chain(rows.iter().map(String::as_str))
            .collect();
        assert_eq!(got, golden, "\n{}", got.join("\n"));
    }

    #[test]
    fn narrow_terminal_cuts_reason_only() {
        let v = json!({"verdict": "unanswered", "hint": "x".repeat(300)});
        let r = row(
            &v,
            &TableStyle {
                color: false,
                width: Some(200),
            },
        );
        assert_eq!(r.chars().count(), 200);
        assert!(r.ends_with("xx…"));
        let r = row(
            &v,
            &TableStyle {
                color: false,
                width: Some(40),
            },
        );
        assert!(
            r.ends_with(&format!("{}…", "x".repeat(MIN_REASON_WIDTH - 1))),
            "{r}"
        );
    }

    #[test]
    fn colour_only_on_the_verdict() {
        let v = json!({"verdict": "dropped", "node": "n"});
        let style = TableStyle {
            color: true,
            width: None,
        };
        let r = row(&v, &style);
        assert!(r.contains("\u{1b}[1m\u{1b}[31mdropped\u{1b}[0m"), "{r:?}");
        assert_eq!(r.matches('\u{1b}').count(), 3, "{r:?}");
        assert!(header(&style).starts_with("\u{1b}[1m"));
        assert!(!row(&v, &PLAIN).contains('\u{1b}'));
    }

    #[test]
    fn hostile_and_missing_fields() {
        for v in [
            json!({}),
            json!(null),
            json!([]),
            json!("x"),
            json!({"verdict": 7, "client": [], "server": "x", "dns": {"latency_ms": "fast"}, "where": 1}),
            json!({"time": "yesterday"}),
        ] {
            let r = row(&v, &PLAIN);
            assert!(r.starts_with('-') || r.starts_with("yesterday"), "{v}: {r}");
        }
        let evil = json!({"verdict": "answered", "dns": {"qname": "a\u{1b}[2Jb\n.example"},
                          "hint": "x\u{7}y"});
        let r = row(
            &evil,
            &TableStyle {
                color: true,
                width: None,
            },
        );
        assert!(
            !r.contains("\u{1b}[2J") && !r.contains('\n') && !r.contains('\u{7}'),
            "{r:?}"
        );
        assert!(r.contains("a?[2Jb?.example"));
    }

    #[test]
    fn packet_rows() {
        let p = json!({"type": "packet", "hook": "egress", "iface": {"name": "eth0", "kind": "uplink"},
                       "proto": "udp", "src": "10.0.1.10", "sport": 40000, "dst": "10.0.2.7", "dport": 53,
                       "dns": {"qname": "a.example", "rcode": "NOERROR"}});
        assert_eq!(
            row(&p, &PLAIN),
            "-             -                -             -                       packet            a.example                       -                       eth0 egress                10.0.1.10:40000 > 10.0.2.7:53 udp NOERROR"
        );
    }

    #[test]
    fn fitting() {
        assert_eq!(fit("abcdef", 6, Cut::End), "abcdef");
        assert_eq!(fit("abcdefg", 6, Cut::End), "abcde…");
        assert_eq!(fit("abcdefg", 6, Cut::Middle), "abc…fg");
        assert_eq!(fit("abc", 0, Cut::Middle), "");
        assert_eq!(fit("ü".repeat(8).as_str(), 4, Cut::Middle), "üü…ü");
    }
}
