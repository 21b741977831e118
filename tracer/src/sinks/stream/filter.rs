//! Hubble-`observe`-like filters over verdict (and packet event) lines.
//!
//! Each flag is repeatable: values of one flag are OR-ed, flags are AND-ed. An empty filter
//! matches everything. The same [`Filter`] is the `tracer observe` command line (clap) and the
//! `filter` object of the socket request (serde), so the client sends what the user typed and the
//! server does the matching. Negated flags (`--not --namespace kube-system`) travel as further
//! [`Filter`]s in the request's `not` list: a line matching any of them is left out.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::selector::{Selector, SelectorError};
use crate::sinks::json::{self, field, str_at};

/// Most values one flag may carry (a bound on the work per line and client).
pub const MAX_VALUES_PER_FLAG: usize = 64;
/// Longest accepted filter value, in bytes.
pub const MAX_VALUE_LEN: usize = 256;

/// Verdict names of schema `tracer.flow/v1` (accepted by `--verdict`).
pub const VERDICTS: [&str; 7] = [
    "answered",
    "established",
    "dropped",
    "lost_beyond_node",
    "unanswered",
    "rejected",
    "unknown",
];

/// Which flows to show. Flags are AND-ed; values of one flag are OR-ed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    /// Only flows whose client or server is in namespace NS. Repeatable.
    #[arg(long, short = 'n', value_name = "NS", help_heading = "Filters")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespace: Vec<String>,

    /// Only flows whose client or server pod is [NS/]NAME; NAME may be a prefix (e.g. a
    /// Deployment's name). Repeatable.
    #[arg(long, value_name = "[NS/]NAME", help_heading = "Filters")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pod: Vec<String>,

    /// Only flows whose client is in namespace NS. Repeatable.
    #[arg(long, value_name = "NS", help_heading = "Filters")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from_namespace: Vec<String>,

    /// Only flows whose server (or the Service it was reached through) is in namespace NS.
    /// Repeatable.
    #[arg(long, value_name = "NS", help_heading = "Filters")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to_namespace: Vec<String>,

    /// Only flows whose client pod is [NS/]NAME (NAME may be a prefix). Repeatable.
    #[arg(long, value_name = "[NS/]NAME", help_heading = "Filters")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from_pod: Vec<String>,

    /// Only flows whose server pod is [NS/]NAME (NAME may be a prefix), e.g.
    /// kube-system/coredns. Repeatable.
    #[arg(long, value_name = "[NS/]NAME", help_heading = "Filters")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to_pod: Vec<String>,

    /// Only flows whose client or server pod has these labels (kubectl syntax: app=web,
    /// 'tier in (a,b)', tier!=db, '!canary'; comma = AND). Labels are known for pods of this
    /// node and the CoreDNS replicas. Repeatable (OR).
    #[arg(
        long,
        short = 'l',
        value_name = "SELECTOR",
        visible_alias = "label",
        value_parser = parse_selector,
        help_heading = "Filters"
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub selector: Vec<String>,

    /// Only DNS queries for names matching PATTERN: `*` matches any characters, case and a
    /// trailing dot do not matter (e.g. '*.svc.cluster.local'). Repeatable.
    #[arg(long, value_name = "PATTERN", help_heading = "Filters")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub qname: Vec<String>,

    /// Only these verdicts (comma-separated or repeated).
    #[arg(long, value_name = "VERDICT", value_delimiter = ',', value_parser = VERDICTS,
          help_heading = "Filters")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verdict: Vec<String>,

    /// Only flows that reached the server through Service NS/NAME (or NAME in any namespace),
    /// e.g. kube-system/kube-dns. Repeatable.
    #[arg(
        long,
        value_name = "NS/NAME",
        visible_alias = "to-service",
        help_heading = "Filters"
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service: Vec<String>,

    /// Only flows reported by, or whose client or server runs on, node NAME: the full name or
    /// the short one the table shows (ip-10-0-1-12 for ip-10-0-1-12.ec2.internal). Repeatable.
    #[arg(long, value_name = "NAME", help_heading = "Filters")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node: Vec<String>,

    /// Only DNS queries or only egress connections.
    #[arg(long, value_name = "KIND", value_parser = ["dns", "egress"], help_heading = "Filters")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kind: Vec<String>,

    /// Only flows (and packets) from or to this IP address (client, server, or the Service IP
    /// the client used). Repeatable.
    #[arg(long, value_name = "IP", value_parser = parse_ip, help_heading = "Filters")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip: Vec<String>,

    /// Only answers and connections that took at least DURATION (e.g. 100ms, 1.5s): DNS and
    /// egress latency, or the slowest query of a summary line. Lost and unanswered flows have
    /// no latency and do not match.
    #[arg(long, value_name = "DURATION", value_parser = parse_latency, help_heading = "Filters")]
    #[serde(rename = "min_latency_us", skip_serializing_if = "Option::is_none")]
    pub min_latency: Option<u64>,
}

/// Checks an `--ip` value on the command line (the server checks again).
fn parse_ip(s: &str) -> Result<String, String> {
    s.trim()
        .parse::<IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| format!("{s:?} is not an IP address"))
}

/// Checks a `-l` selector on the command line (the server checks again).
fn parse_selector(s: &str) -> Result<String, String> {
    Selector::parse(s)
        .map(|_| s.trim().to_owned())
        .map_err(|e| e.to_string())
}

/// `--min-latency`: `250us`, `100ms`, `1.5s` or a bare number of milliseconds, in µs.
pub fn parse_latency(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => t.split_at(i),
        None => (t, "ms"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad latency {s:?}: expected e.g. 100ms, 1.5s or 250us"))?;
    let us = match unit.trim() {
        "us" | "µs" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        _ => return Err(format!("bad latency unit in {s:?}: use us, ms or s")),
    };
    if !us.is_finite() || us < 0.0 || us > 3.6e9 {
        return Err(format!("latency {s:?} out of range [0, 1h]"));
    }
    Ok(us.round() as u64)
}

/// A filter the server cannot apply.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    /// More values than [`MAX_VALUES_PER_FLAG`] for one flag.
    #[error("too many values for --{flag} (at most {MAX_VALUES_PER_FLAG})")]
    TooMany {
        /// The flag.
        flag: &'static str,
    },
    /// An empty value or one longer than [`MAX_VALUE_LEN`].
    #[error("bad value for --{flag}: {reason}")]
    BadValue {
        /// The flag.
        flag: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `--ip` that is not an IP address.
    #[error("--ip {value:?} is not an IP address")]
    BadIp {
        /// The offending value.
        value: String,
    },
    /// `-l` that does not parse.
    #[error(transparent)]
    BadSelector(#[from] SelectorError),
    /// A negated filter with no flag in it (it would hide everything).
    #[error("--not must be followed by a filter flag (e.g. --not --namespace kube-system)")]
    EmptyNot,
    /// Too many negated filters.
    #[error("too many --not filters (at most {MAX_VALUES_PER_FLAG})")]
    TooManyNot,
}

/// `[NS/]NAME` of `--pod`, `--from-pod`, `--to-pod`.
type PodPattern = (Option<String>, String);

impl Filter {
    /// True when no flag is set (matches everything).
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Validates the filter and prepares it for matching many lines.
    pub fn compile(&self) -> Result<Matcher, FilterError> {
        let check = |flag: &'static str, values: &[String]| -> Result<Vec<String>, FilterError> {
            if values.len() > MAX_VALUES_PER_FLAG {
                return Err(FilterError::TooMany { flag });
            }
            values
                .iter()
                .map(|v| {
                    let v = v.trim();
                    if v.is_empty() {
                        Err(FilterError::BadValue {
                            flag,
                            reason: "empty",
                        })
                    } else if v.len() > MAX_VALUE_LEN {
                        Err(FilterError::BadValue {
                            flag,
                            reason: "too long",
                        })
                    } else {
                        Ok(v.to_owned())
                    }
                })
                .collect()
        };
        let pods =
            |flag: &'static str, values: &[String]| -> Result<Vec<PodPattern>, FilterError> {
                Ok(check(flag, values)?
                    .into_iter()
                    .map(|p| split_pod(&p))
                    .collect())
            };
        let ip = check("ip", &self.ip)?
            .into_iter()
            .map(|v| {
                v.parse::<IpAddr>()
                    .map_err(|_| FilterError::BadIp { value: v })
            })
            .collect::<Result<_, _>>()?;
        let selector = check("selector", &self.selector)?
            .iter()
            .map(|s| Selector::parse(s))
            .collect::<Result<_, _>>()?;
        Ok(Matcher {
            namespace: check("namespace", &self.namespace)?,
            pod: pods("pod", &self.pod)?,
            from_namespace: check("from-namespace", &self.from_namespace)?,
            to_namespace: check("to-namespace", &self.to_namespace)?,
            from_pod: pods("from-pod", &self.from_pod)?,
            to_pod: pods("to-pod", &self.to_pod)?,
            selector,
            qname: check("qname", &self.qname)?
                .iter()
                .map(|p| normalize_name(p))
                .collect(),
            verdict: check("verdict", &self.verdict)?,
            service: check("service", &self.service)?,
            node: check("node", &self.node)?,
            kind: check("kind", &self.kind)?,
            ip,
            min_latency_ms: self.min_latency.map(|us| us as f64 / 1000.0),
        })
    }
}

/// `ns/name` or `name`.
pub fn split_pod(p: &str) -> PodPattern {
    match p.split_once('/') {
        Some((ns, name)) => (Some(ns.to_owned()), name.to_owned()),
        None => (None, p.to_owned()),
    }
}

/// A validated [`Filter`], ready to test lines.
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    namespace: Vec<String>,
    pod: Vec<PodPattern>,
    from_namespace: Vec<String>,
    to_namespace: Vec<String>,
    from_pod: Vec<PodPattern>,
    to_pod: Vec<PodPattern>,
    selector: Vec<Selector>,
    qname: Vec<String>,
    verdict: Vec<String>,
    service: Vec<String>,
    node: Vec<String>,
    kind: Vec<String>,
    ip: Vec<IpAddr>,
    min_latency_ms: Option<f64>,
}

/// One side of a flow as the filters see it: namespace and pod name, either of which may be
/// unknown. `server.pod` may be given as `ns/name`.
pub fn side<'a>(v: &'a Value, prefix: &str) -> (Option<&'a str>, Option<&'a str>) {
    let ns = str_at(v, &format!("{prefix}.namespace"));
    match str_at(v, &format!("{prefix}.pod")) {
        Some(pod) => match pod.split_once('/') {
            Some((pns, name)) => (Some(pns), Some(name)),
            None => (ns, Some(pod)),
        },
        None => (ns, None),
    }
}

/// Whether a side `(ns, pod)` matches `[NS/]NAME-prefix`.
fn pod_matches((want_ns, want_name): &PodPattern, (ns, pod): (Option<&str>, Option<&str>)) -> bool {
    pod.is_some_and(|p| p.starts_with(want_name.as_str()))
        && want_ns.as_ref().is_none_or(|w| ns == Some(w.as_str()))
}

/// A node name up to its first dot (`ip-10-0-1-12.ec2.internal` → `ip-10-0-1-12`), unless it is
/// an IP address: what the table shows and what `--node` also accepts.
pub fn short_node(name: &str) -> &str {
    if name.parse::<IpAddr>().is_ok() {
        return name;
    }
    name.split('.')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(name)
}

/// `--node` matching: the full name or its short form, case-insensitively (DNS names).
pub fn node_matches(want: &str, name: &str) -> bool {
    name.eq_ignore_ascii_case(want) || short_node(name).eq_ignore_ascii_case(want)
}

/// The latency of a line in ms: `dns.latency_ms` or `egress.latency_ms` of a verdict, the
/// `max` of a summary line's `latency_ms` object.
pub fn latency_ms(v: &Value) -> Option<f64> {
    field(v, "dns.latency_ms")
        .and_then(Value::as_f64)
        .or_else(|| field(v, "egress.latency_ms").and_then(Value::as_f64))
        .or_else(|| field(v, "latency_ms.max").and_then(Value::as_f64))
        .or_else(|| field(v, "latency_ms").and_then(Value::as_f64))
}

/// The parts of a line that filters, and the "never seen" warnings, read: kept for each line
/// of the history instead of the whole line parsed (a verdict parsed takes several times its
/// text's memory, and the history keeps thousands).
pub fn facets(v: &Value) -> Value {
    let Some(obj) = v.as_object() else {
        return Value::Null;
    };
    let pick = |from: &serde_json::Map<String, Value>, keys: &[&str]| -> Value {
        Value::Object(
            keys.iter()
                .filter_map(|k| from.get(*k).map(|x| ((*k).to_owned(), x.clone())))
                .collect(),
        )
    };
    let mut out = serde_json::Map::new();
    for key in [
        "type",
        "verdict",
        "kind",
        "node",
        "src",
        "dst",
        "latency_ms",
    ] {
        if let Some(x) = obj.get(key) {
            out.insert(key.to_owned(), x.clone());
        }
    }
    const SIDE: &[&str] = &[
        "namespace",
        "pod",
        "node",
        "ip",
        "labels",
        "service",
        "service_ip",
    ];
    let sides: [(&str, &[&str]); 4] = [
        ("client", SIDE),
        ("server", SIDE),
        ("dns", &["qname", "latency_ms"]),
        ("egress", &["latency_ms"]),
    ];
    for (key, fields) in sides {
        match obj.get(key) {
            Some(Value::Object(m)) => {
                out.insert(key.to_owned(), pick(m, fields));
            }
            Some(other) => {
                out.insert(key.to_owned(), other.clone());
            }
            None => {}
        }
    }
    Value::Object(out)
}

/// A healthy verdict line: `answered` or `established` (per flow or a summary).
pub fn is_healthy(v: &Value) -> bool {
    matches!(str_at(v, "verdict"), Some("answered" | "established"))
}

impl Matcher {
    /// True when the line passes every flag that is set.
    pub fn matches(&self, v: &Value) -> bool {
        let client = || side(v, "client");
        let server = || side(v, "server");
        any_or_unset(&self.verdict, |want| {
            str_at(v, "verdict") == Some(want.as_str())
        }) && any_or_unset(&self.kind, |want| kind_of(v) == Some(want.as_str()))
            && any_or_unset(&self.namespace, |want| namespaces(v).any(|ns| ns == want))
            && any_or_unset(&self.from_namespace, |want| {
                client().0 == Some(want.as_str())
            })
            && any_or_unset(&self.to_namespace, |want| {
                server().0 == Some(want.as_str()) || service_ns(v) == Some(want.as_str())
            })
            && any_or_unset(&self.pod, |want| {
                pod_matches(want, client()) || pod_matches(want, server())
            })
            && any_or_unset(&self.from_pod, |want| pod_matches(want, client()))
            && any_or_unset(&self.to_pod, |want| pod_matches(want, server()))
            && any_or_unset(&self.selector, |sel| {
                sel.matches(field(v, "client.labels")) || sel.matches(field(v, "server.labels"))
            })
            && any_or_unset(&self.qname, |pattern| {
                str_at(v, "dns.qname").is_some_and(|q| glob_match(pattern, &normalize_name(q)))
            })
            && any_or_unset(&self.service, |want| {
                str_at(v, "server.service").is_some_and(|svc| {
                    svc == want
                        || (!want.contains('/')
                            && svc.split_once('/').is_some_and(|(_, name)| name == want))
                })
            })
            && any_or_unset(&self.node, |want| {
                ["node", "client.node", "server.node"]
                    .iter()
                    .filter_map(|p| str_at(v, p))
                    .any(|n| node_matches(want, n))
            })
            && any_or_unset(&self.ip, |want| {
                ["client.ip", "server.ip", "server.service_ip", "src", "dst"]
                    .iter()
                    .filter_map(|p| str_at(v, p))
                    .any(|s| s.parse::<IpAddr>().is_ok_and(|ip| ip == *want))
            })
            && self
                .min_latency_ms
                .is_none_or(|min| latency_ms(v).is_some_and(|ms| ms >= min))
    }
}

/// What a request selects: lines matching `include` and none of `exclude`.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    include: Matcher,
    exclude: Vec<Matcher>,
}

impl Selection {
    /// Compiles a filter and its negations (`--not`); an empty negation is refused.
    pub fn compile(filter: &Filter, not: &[Filter]) -> Result<Self, FilterError> {
        if not.len() > MAX_VALUES_PER_FLAG {
            return Err(FilterError::TooManyNot);
        }
        let exclude = not
            .iter()
            .map(|f| {
                if f.is_empty() {
                    Err(FilterError::EmptyNot)
                } else {
                    f.compile()
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            include: filter.compile()?,
            exclude,
        })
    }

    /// True when the line matches the filter and none of the negations.
    pub fn matches(&self, v: &Value) -> bool {
        self.include.matches(v) && !self.exclude.iter().any(|m| m.matches(v))
    }
}

fn any_or_unset<T>(wanted: &[T], pred: impl FnMut(&T) -> bool) -> bool {
    wanted.is_empty() || wanted.iter().any(pred)
}

/// `kind` of a verdict; for a packet event, `dns` when it carries DNS facts.
fn kind_of(v: &Value) -> Option<&str> {
    str_at(v, "kind")
        .or_else(|| (json::is_packet_event(v) && json::field(v, "dns").is_some()).then_some("dns"))
}

/// Namespace of the Service the server was reached through.
fn service_ns(v: &Value) -> Option<&str> {
    str_at(v, "server.service").and_then(|s| s.split_once('/').map(|(ns, _)| ns))
}

/// Every namespace a line names: client, server, and the Service's.
fn namespaces(v: &Value) -> impl Iterator<Item = &str> {
    let client = side(v, "client").0;
    let server = side(v, "server").0;
    [client, server, service_ns(v)].into_iter().flatten()
}

/// Lower case (DNS names compare case-insensitively, RFC 4343) without one trailing dot.
fn normalize_name(s: &str) -> String {
    s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase()
}

/// Glob match where `*` matches any run of characters (dots included) and everything else
/// matches itself. Linear-time greedy matching with one backtrack point.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match (p.get(pi), t.get(ti)) {
            (Some('*'), _) => {
                star = Some((pi, ti));
                pi += 1;
            }
            (Some(pc), Some(tc)) if pc == tc => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dns_verdict() -> Value {
        json!({
            "schema": "tracer.flow/v1",
            "kind": "dns",
            "verdict": "lost_beyond_node",
            "node": "ip-10-0-1-12",
            "client": {"namespace": "shop", "pod": "web-7d9f-abcde", "ip": "10.0.1.34", "node": "ip-10-0-1-12"},
            "server": {"ip": "10.0.2.7", "service": "kube-system/kube-dns", "service_ip": "172.20.0.10",
                       "namespace": "kube-system", "pod": "coredns-5d78-xk2p", "node": "ip-10-0-2-7"},
            "dns": {"qname": "Api.Example.COM.", "qtype": "A"},
        })
    }

    fn egress_verdict() -> Value {
        json!({
            "kind": "egress",
            "verdict": "established",
            "node": "ip-10-0-1-12",
            "client": {"namespace": "batch", "pod": "job-1", "ip": "10.0.1.50"},
            "server": {"ip": "203.0.113.80", "service": null},
        })
    }

    fn f(build: impl FnOnce(&mut Filter)) -> Filter {
        let mut filter = Filter::default();
        build(&mut filter);
        filter
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn table() {
        let dns = dns_verdict();
        let egress = egress_verdict();
        let packet = json!({"type": "packet", "src": "10.0.1.34", "dst": "172.20.0.10",
                            "dns": {"qname": "api.example.com"}});
        let empty = json!({});
        let junk = json!({"verdict": 3, "client": "x", "server": [1], "dns": {"qname": null}});
        // (what, filter, dns, egress, packet, empty)
        let cases: Vec<(&str, Filter, bool, bool, bool, bool)> = vec![
            ("empty filter", Filter::default(), true, true, true, true),
            (
                "namespace client",
                f(|f| f.namespace = s(&["shop"])),
                true,
                false,
                false,
                false,
            ),
            (
                "namespace server",
                f(|f| f.namespace = s(&["kube-system"])),
                true,
                false,
                false,
                false,
            ),
            (
                "namespace OR",
                f(|f| f.namespace = s(&["nope", "batch"])),
                false,
                true,
                false,
                false,
            ),
            (
                "pod exact",
                f(|f| f.pod = s(&["web-7d9f-abcde"])),
                true,
                false,
                false,
                false,
            ),
            (
                "pod prefix",
                f(|f| f.pod = s(&["web"])),
                true,
                false,
                false,
                false,
            ),
            (
                "pod ns/name",
                f(|f| f.pod = s(&["shop/web"])),
                true,
                false,
                false,
                false,
            ),
            (
                "pod wrong ns",
                f(|f| f.pod = s(&["batch/web"])),
                false,
                false,
                false,
                false,
            ),
            (
                "pod server side",
                f(|f| f.pod = s(&["kube-system/coredns"])),
                true,
                false,
                false,
                false,
            ),
            (
                "pod no prefix match mid",
                f(|f| f.pod = s(&["7d9f"])),
                false,
                false,
                false,
                false,
            ),
            (
                "qname exact, case, dot",
                f(|f| f.qname = s(&["api.example.com"])),
                true,
                false,
                true,
                false,
            ),
            (
                "qname glob",
                f(|f| f.qname = s(&["*.EXAMPLE.com."])),
                true,
                false,
                true,
                false,
            ),
            (
                "qname glob mid",
                f(|f| f.qname = s(&["api.*.com"])),
                true,
                false,
                true,
                false,
            ),
            (
                "qname no match",
                f(|f| f.qname = s(&["*.svc.cluster.local"])),
                false,
                false,
                false,
                false,
            ),
            (
                "verdict",
                f(|f| f.verdict = s(&["lost_beyond_node"])),
                true,
                false,
                false,
                false,
            ),
            (
                "verdict OR",
                f(|f| f.verdict = s(&["dropped", "established"])),
                false,
                true,
                false,
                false,
            ),
            (
                "service full",
                f(|f| f.service = s(&["kube-system/kube-dns"])),
                true,
                false,
                false,
                false,
            ),
            (
                "service name",
                f(|f| f.service = s(&["kube-dns"])),
                true,
                false,
                false,
                false,
            ),
            (
                "service other ns",
                f(|f| f.service = s(&["default/kube-dns"])),
                false,
                false,
                false,
                false,
            ),
            (
                "node verdict's",
                f(|f| f.node = s(&["ip-10-0-1-12"])),
                true,
                true,
                false,
                false,
            ),
            (
                "node server's",
                f(|f| f.node = s(&["ip-10-0-2-7"])),
                true,
                false,
                false,
                false,
            ),
            (
                "kind dns",
                f(|f| f.kind = s(&["dns"])),
                true,
                false,
                true,
                false,
            ),
            (
                "kind egress",
                f(|f| f.kind = s(&["egress"])),
                false,
                true,
                false,
                false,
            ),
            (
                "ip client",
                f(|f| f.ip = s(&["10.0.1.34"])),
                true,
                false,
                true,
                false,
            ),
            (
                "ip service",
                f(|f| f.ip = s(&["172.20.0.10"])),
                true,
                false,
                true,
                false,
            ),
            (
                "ip server",
                f(|f| f.ip = s(&["203.0.113.80"])),
                false,
                true,
                false,
                false,
            ),
            (
                "AND across flags",
                f(|f| {
                    f.namespace = s(&["shop"]);
                    f.verdict = s(&["answered"]);
                }),
                false,
                false,
                false,
                false,
            ),
            (
                "AND both true",
                f(|f| {
                    f.namespace = s(&["shop"]);
                    f.kind = s(&["dns"]);
                    f.qname = s(&["*example*"]);
                }),
                true,
                false,
                false,
                false,
            ),
        ];
        for (what, filter, want_dns, want_egress, want_packet, want_empty) in cases {
            let m = filter.compile().expect(what);
            assert_eq!(m.matches(&dns), want_dns, "{what}: dns");
            assert_eq!(m.matches(&egress), want_egress, "{what}: egress");
            assert_eq!(m.matches(&packet), want_packet, "{what}: packet");
            assert_eq!(m.matches(&empty), want_empty, "{what}: empty");
            // Wrong types never panic and match only the empty filter.
            assert_eq!(
                m.matches(&junk),
                filter == Filter::default(),
                "{what}: junk"
            );
            // The history keeps only a line's facets: every filter decides the same on them.
            for (name, v) in [
                ("dns", &dns),
                ("egress", &egress),
                ("packet", &packet),
                ("junk", &junk),
            ] {
                assert_eq!(
                    m.matches(&facets(v)),
                    m.matches(v),
                    "{what}: facets of {name}"
                );
            }
        }
    }

    /// Every example verdict of docs/examples, under every single-flag filter built from its
    /// own values (and a miss): the facets the history keeps decide like the whole line, and
    /// are smaller than it.
    #[test]
    fn facets_decide_like_the_whole_line() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples");
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(dir).expect("docs/examples") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("example");
            if path.extension().is_some_and(|e| e == "jsonl") {
                lines.extend(
                    text.lines()
                        .map(|l| serde_json::from_str::<Value>(l).expect("jsonl")),
                );
            } else {
                lines.push(serde_json::from_str::<Value>(&text).expect("json"));
            }
        }
        lines.push(summary_line());
        assert!(lines.len() > 10);
        for v in &lines {
            let kept = facets(v);
            assert!(kept.to_string().len() < v.to_string().len(), "{v}");
            let text = |path: &str| str_at(v, path).map(str::to_owned);
            let mut filters: Vec<Filter> = vec![Filter::default()];
            for value in [text("verdict"), Some("nope".into())].into_iter().flatten() {
                filters.push(f(|f| f.verdict = vec![value.clone()]));
            }
            for value in [
                text("client.namespace"),
                text("server.namespace"),
                Some("nope".into()),
            ]
            .into_iter()
            .flatten()
            {
                filters.push(f(|f| f.namespace = vec![value.clone()]));
                filters.push(f(|f| f.from_namespace = vec![value.clone()]));
                filters.push(f(|f| f.to_namespace = vec![value.clone()]));
            }
            for value in [text("client.pod"), text("server.pod")]
                .into_iter()
                .flatten()
            {
                filters.push(f(|f| f.pod = vec![value.clone()]));
                filters.push(f(|f| f.to_pod = vec![value.clone()]));
            }
            for value in [text("dns.qname"), text("server.service")]
                .into_iter()
                .flatten()
            {
                filters.push(f(|f| f.qname = vec![value.clone()]));
                filters.push(f(|f| f.service = vec![value.clone()]));
            }
            for value in [text("node"), text("server.node")].into_iter().flatten() {
                filters.push(f(|f| f.node = vec![value.clone()]));
            }
            for value in [
                text("client.ip"),
                text("server.ip"),
                text("server.service_ip"),
            ]
            .into_iter()
            .flatten()
            {
                filters.push(f(|f| f.ip = vec![value.clone()]));
            }
            filters.push(f(|f| f.kind = s(&["egress"])));
            filters.push(f(|f| f.min_latency = Some(100)));
            filters.push(f(|f| {
                f.selector = vec![parse_selector("app").expect("selector")]
            }));
            for filter in filters {
                let m = filter.compile().expect("filter");
                assert_eq!(m.matches(&kept), m.matches(v), "{filter:?} on {v}");
            }
        }
    }

    /// A healthy-DNS summary line: `count` and latency percentiles, no ports, path or key.
    fn summary_line() -> Value {
        serde_json::from_str(
            r#"{"schema":"tracer.flow/v1","time":"2026-11-24T02:10:00Z","node":"ip-10-0-1-12.ec2.internal",
                "kind":"dns","verdict":"answered","count":412,
                "latency_ms":{"p50":0.41,"p90":0.9,"p99":2.3,"max":8.7},
                "client":{"ip":"10.0.1.34","pod":"web-7d9f-abcde","namespace":"shop","workload":"Deployment/web",
                          "node":"ip-10-0-1-12.ec2.internal","labels":{"app":"web"}},
                "server":{"ip":"10.0.1.53","service_ip":"172.20.0.10","service":"kube-system/kube-dns",
                          "pod":"coredns-5d78-xk2p","namespace":"kube-system","workload":"Deployment/coredns",
                          "node":"ip-10-0-1-12.ec2.internal","labels":{"k8s-app":"kube-dns"}},
                "enrichment":"ready","hint":null}"#,
        )
        .expect("json")
    }

    #[test]
    fn directions_labels_nodes_latency() {
        let mut dns = dns_verdict();
        dns["client"]["labels"] = json!({"app": "web", "tier": "front"});
        dns["server"]["labels"] = json!({"k8s-app": "kube-dns"});
        dns["dns"]["latency_ms"] = json!(12.5);
        dns["node"] = json!("ip-10-0-1-12.eu-west-1.compute.internal");
        let egress = egress_verdict();
        let summary = summary_line();
        let junk = json!({"client": {"labels": "x"}, "latency_ms": "slow", "node": 5});
        // (what, filter, dns, egress, summary)
        let cases: Vec<(&str, Filter, bool, bool, bool)> = vec![
            (
                "from-pod client",
                f(|f| f.from_pod = s(&["shop/web"])),
                true,
                false,
                true,
            ),
            (
                "from-pod is not the server",
                f(|f| f.from_pod = s(&["coredns"])),
                false,
                false,
                false,
            ),
            (
                "to-pod server",
                f(|f| f.to_pod = s(&["kube-system/coredns"])),
                true,
                false,
                true,
            ),
            (
                "to-pod is not the client",
                f(|f| f.to_pod = s(&["web"])),
                false,
                false,
                false,
            ),
            (
                "from-namespace",
                f(|f| f.from_namespace = s(&["batch"])),
                false,
                true,
                false,
            ),
            (
                "to-namespace server",
                f(|f| f.to_namespace = s(&["kube-system"])),
                true,
                false,
                true,
            ),
            (
                "to-namespace not client",
                f(|f| f.to_namespace = s(&["shop"])),
                false,
                false,
                false,
            ),
            (
                "selector client",
                f(|f| f.selector = s(&["app=web"])),
                true,
                false,
                true,
            ),
            (
                "selector server",
                f(|f| f.selector = s(&["k8s-app=kube-dns"])),
                true,
                false,
                true,
            ),
            (
                "selector AND on one side",
                f(|f| f.selector = s(&["app=web,k8s-app=kube-dns"])),
                false,
                false,
                false,
            ),
            (
                "selector OR",
                f(|f| f.selector = s(&["nope", "tier=front"])),
                true,
                false,
                false,
            ),
            (
                "selector, labels unknown",
                f(|f| f.selector = s(&["!canary"])),
                true,
                false,
                true,
            ),
            (
                "node short name",
                f(|f| f.node = s(&["ip-10-0-1-12"])),
                true,
                true,
                true,
            ),
            (
                "node full name",
                f(|f| f.node = s(&["ip-10-0-1-12.eu-west-1.compute.internal"])),
                true,
                false,
                false,
            ),
            (
                "node case",
                f(|f| f.node = s(&["IP-10-0-2-7"])),
                true,
                false,
                false,
            ),
            (
                "node not a prefix",
                f(|f| f.node = s(&["ip-10-0-1"])),
                false,
                false,
                false,
            ),
            (
                "min latency",
                f(|f| f.min_latency = Some(10_000)),
                true,
                false,
                false,
            ),
            (
                "min latency, summary max",
                f(|f| f.min_latency = Some(8_000)),
                true,
                false,
                true,
            ),
            (
                "min latency too high",
                f(|f| f.min_latency = Some(20_000)),
                false,
                false,
                false,
            ),
            (
                "summary verdict and kind",
                f(|f| {
                    f.verdict = s(&["answered"]);
                    f.kind = s(&["dns"]);
                }),
                false,
                false,
                true,
            ),
        ];
        for (what, filter, want_dns, want_egress, want_summary) in cases {
            let m = filter.compile().expect(what);
            assert_eq!(m.matches(&dns), want_dns, "{what}: dns");
            assert_eq!(m.matches(&egress), want_egress, "{what}: egress");
            assert_eq!(m.matches(&summary), want_summary, "{what}: summary");
            assert!(!m.matches(&junk), "{what}: junk");
        }
    }

    #[test]
    fn selector_on_a_real_verdict_line() {
        // docs/examples are serialized from the verdict types, enriched like the daemon does.
        let v: Value = serde_json::from_str(include_str!(
            "../../../../docs/examples/lost_beyond_node.json"
        ))
        .expect("example");
        let m = |sel: &str| {
            f(|f| f.selector = s(&[sel]))
                .compile()
                .expect(sel)
                .matches(&v)
        };
        assert!(m("app=checkout"), "client labels");
        assert!(m("app=coredns"), "server labels");
        assert!(!m("app=payments"));
    }

    #[test]
    fn negations() {
        let dns = dns_verdict();
        let egress = egress_verdict();
        let sel =
            |filter: Filter, not: Vec<Filter>| Selection::compile(&filter, &not).expect("compiles");
        let not_ks = sel(
            Filter::default(),
            vec![f(|f| f.namespace = s(&["kube-system"]))],
        );
        assert!(!not_ks.matches(&dns) && not_ks.matches(&egress));
        // Each --not hides on its own: a line matching any of them is left out.
        let two = sel(
            Filter::default(),
            vec![
                f(|f| f.verdict = s(&["established"])),
                f(|f| f.namespace = s(&["shop"])),
            ],
        );
        assert!(!two.matches(&dns) && !two.matches(&egress));
        assert!(two.matches(&json!({})));
        let with_pos = sel(
            f(|f| f.node = s(&["ip-10-0-1-12"])),
            vec![f(|f| f.kind = s(&["egress"]))],
        );
        assert!(with_pos.matches(&dns) && !with_pos.matches(&egress));
        assert_eq!(
            Selection::compile(&Filter::default(), &[Filter::default()]).err(),
            Some(FilterError::EmptyNot)
        );
        assert_eq!(
            Selection::compile(
                &Filter::default(),
                &vec![f(|f| f.kind = s(&["dns"])); MAX_VALUES_PER_FLAG + 1]
            )
            .err(),
            Some(FilterError::TooManyNot)
        );
    }

    #[test]
    fn latencies() {
        assert_eq!(parse_latency("100ms"), Ok(100_000));
        assert_eq!(parse_latency("1.5s"), Ok(1_500_000));
        assert_eq!(parse_latency("250us"), Ok(250));
        assert_eq!(parse_latency("2"), Ok(2_000));
        assert!(parse_latency("fast").is_err());
        assert!(parse_latency("5h").is_err());
        assert!(parse_latency("-1ms").is_err());
    }

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("*", "", true),
            ("*", "a.b", true),
            ("", "", true),
            ("", "a", false),
            ("a*", "a", true),
            ("*a", "ba", true),
            ("*a", "ab", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("**", "x", true),
            ("*.local", "a.svc.cluster.local", true),
            ("*.*.*", "a.b", false),
            ("ünï*", "ünïcode", true),
        ] {
            assert_eq!(glob_match(p, t), want, "{p:?} vs {t:?}");
        }
    }

    #[test]
    fn validation() {
        assert_eq!(
            f(|f| f.ip = s(&["nope"])).compile().err(),
            Some(FilterError::BadIp {
                value: "nope".into()
            })
        );
        assert!(matches!(
            f(|f| f.pod = s(&[" "])).compile(),
            Err(FilterError::BadValue { flag: "pod", .. })
        ));
        assert!(matches!(
            f(|f| f.qname = vec!["x".repeat(MAX_VALUE_LEN + 1)]).compile(),
            Err(FilterError::BadValue { flag: "qname", .. })
        ));
        assert!(matches!(
            f(|f| f.node = vec!["n".into(); MAX_VALUES_PER_FLAG + 1]).compile(),
            Err(FilterError::TooMany { flag: "node" })
        ));
        let e = f(|f| f.selector = s(&["app in (x"]))
            .compile()
            .expect_err("bad selector");
        assert!(e.to_string().contains("bad label selector"), "{e}");
    }

    #[test]
    fn serde_round_trip() {
        let filter = f(|f| {
            f.namespace = s(&["a"]);
            f.verdict = s(&["dropped", "rejected"]);
        });
        let text = serde_json::to_string(&filter).expect("serialize");
        assert_eq!(
            text,
            r#"{"namespace":["a"],"verdict":["dropped","rejected"]}"#
        );
        assert_eq!(
            serde_json::from_str::<Filter>(&text).expect("parse"),
            filter
        );
        assert_eq!(
            serde_json::from_str::<Filter>("{}").expect("empty"),
            Filter::default()
        );
        assert!(
            serde_json::from_str::<Filter>(r#"{"podd":["x"]}"#).is_err(),
            "unknown flag refused"
        );
        assert!(
            serde_json::from_str::<Filter>(r#"{"pod":"x"}"#).is_err(),
            "wrong type refused"
        );
        let lat = f(|f| f.min_latency = Some(1500));
        assert_eq!(
            serde_json::to_string(&lat).expect("serialize"),
            r#"{"min_latency_us":1500}"#
        );
    }
}
