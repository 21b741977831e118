//! Hubble-`observe`-like filters over verdict (and packet event) lines.
//!
//! Each flag is repeatable: values of one flag are OR-ed, flags are AND-ed. An empty filter
//! matches everything. The same [`Filter`] is the `tracer observe` command line (clap) and the
//! `filter` object of the socket request (serde), so the client sends what the user typed and the
//! server does the matching.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sinks::json::{self, str_at};

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
    #[arg(long, short = 'n', value_name = "NS")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespace: Vec<String>,

    /// Only flows whose client or server pod is [NS/]NAME; NAME may be a prefix (e.g. a
    /// Deployment's name). Repeatable.
    #[arg(long, value_name = "[NS/]NAME")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pod: Vec<String>,

    /// Only DNS queries for names matching PATTERN: `*` matches any characters, case and a
    /// trailing dot do not matter (e.g. '*.svc.cluster.local'). Repeatable.
    #[arg(long, value_name = "PATTERN")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub qname: Vec<String>,

    /// Only these verdicts (comma-separated or repeated).
    #[arg(long, value_name = "VERDICT", value_delimiter = ',', value_parser = VERDICTS)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verdict: Vec<String>,

    /// Only flows that reached the server through Service NS/NAME (or NAME in any namespace),
    /// e.g. kube-system/kube-dns. Repeatable.
    #[arg(long, value_name = "NS/NAME", visible_alias = "to-service")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service: Vec<String>,

    /// Only flows reported by, or whose client or server runs on, node NAME. Repeatable.
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node: Vec<String>,

    /// Only DNS queries or only egress connections.
    #[arg(long, value_name = "KIND", value_parser = ["dns", "egress"])]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kind: Vec<String>,

    /// Only flows (and packets) from or to this IP address (client, server, or the Service IP
    /// the client used). Repeatable.
    #[arg(long, value_name = "IP", value_parser = parse_ip)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip: Vec<String>,
}

/// Checks an `--ip` value on the command line (the server checks again).
fn parse_ip(s: &str) -> Result<String, String> {
    s.trim()
        .parse::<IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| format!("{s:?} is not an IP address"))
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
}

impl Filter {
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
        let ip = check("ip", &self.ip)?
            .into_iter()
            .map(|v| {
                v.parse::<IpAddr>()
                    .map_err(|_| FilterError::BadIp { value: v })
            })
            .collect::<Result<_, _>>()?;
        Ok(Matcher {
            namespace: check("namespace", &self.namespace)?,
            pod: check("pod", &self.pod)?
                .into_iter()
                .map(|p| match p.split_once('/') {
                    Some((ns, name)) => (Some(ns.to_owned()), name.to_owned()),
                    None => (None, p),
                })
                .collect(),
            qname: check("qname", &self.qname)?
                .iter()
                .map(|p| normalize_name(p))
                .collect(),
            verdict: check("verdict", &self.verdict)?,
            service: check("service", &self.service)?,
            node: check("node", &self.node)?,
            kind: check("kind", &self.kind)?,
            ip,
        })
    }
}

/// A validated [`Filter`], ready to test lines.
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    namespace: Vec<String>,
    pod: Vec<(Option<String>, String)>,
    qname: Vec<String>,
    verdict: Vec<String>,
    service: Vec<String>,
    node: Vec<String>,
    kind: Vec<String>,
    ip: Vec<IpAddr>,
}

/// One side of a flow as the filters see it: namespace and pod name, either of which may be
/// unknown. `server.pod` may be given as `ns/name`.
fn side<'a>(v: &'a Value, prefix: &str) -> (Option<&'a str>, Option<&'a str>) {
    let ns = str_at(v, &format!("{prefix}.namespace"));
    match str_at(v, &format!("{prefix}.pod")) {
        Some(pod) => match pod.split_once('/') {
            Some((pns, name)) => (Some(pns), Some(name)),
            None => (ns, Some(pod)),
        },
        None => (ns, None),
    }
}

impl Matcher {
    /// True when the line passes every flag that is set.
    pub fn matches(&self, v: &Value) -> bool {
        any_or_unset(&self.verdict, |want| {
            str_at(v, "verdict") == Some(want.as_str())
        }) && any_or_unset(&self.kind, |want| kind_of(v) == Some(want.as_str()))
            && any_or_unset(&self.namespace, |want| namespaces(v).any(|ns| ns == want))
            && any_or_unset(&self.pod, |(want_ns, want_name)| {
                [side(v, "client"), side(v, "server")]
                    .into_iter()
                    .any(|(ns, pod)| {
                        pod.is_some_and(|p| p.starts_with(want_name.as_str()))
                            && want_ns.as_ref().is_none_or(|w| ns == Some(w.as_str()))
                    })
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
                    .any(|p| str_at(v, p) == Some(want.as_str()))
            })
            && any_or_unset(&self.ip, |want| {
                ["client.ip", "server.ip", "server.service_ip", "src", "dst"]
                    .iter()
                    .filter_map(|p| str_at(v, p))
                    .any(|s| s.parse::<IpAddr>().is_ok_and(|ip| ip == *want))
            })
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

/// Every namespace a line names: client, server, and the Service's.
fn namespaces(v: &Value) -> impl Iterator<Item = &str> {
    let client = side(v, "client").0;
    let server = side(v, "server").0;
    let service = str_at(v, "server.service").and_then(|s| s.split_once('/').map(|(ns, _)| ns));
    [client, server, service].into_iter().flatten()
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
        }
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
    }
}
