//! The `tracer observe` socket: request lines ([`parse_request`]), the filters they carry
//! ([`Selection::compile`], [`Matcher::matches`](crate::sinks::stream::filter::Matcher)), the
//! label selector language ([`Selector`]) and qname globs ([`glob_match`]), over random bytes,
//! random JSON, and random lines to match.

use std::collections::BTreeMap;

use proptest::{collection::vec, prelude::*, test_runner::TestCaseError};
use serde_json::{Map, Value, json};

use super::{any_text, check, target};
use crate::sinks::stream::{
    client::parse_request,
    filter::{Filter, MAX_VALUE_LEN, MAX_VALUES_PER_FLAG, Selection, glob_match, side},
    selector::Selector,
};

/// Short strings from an alphabet that hits the parsers' special characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9./*=!,() -]{0,24}",
        any_text(16),
        Just(String::new()),
        Just("kube-system".to_owned()),
        Just("10.0.1.34".to_owned()),
        Just("*".repeat(40)),
    ]
}

/// A JSON scalar, mostly a string.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(|f| json!(f)),
        6 => text().prop_map(Value::String),
    ]
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((text(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// The request's and filters' own keys, and others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "filter",
            "not",
            "last",
            "since",
            "follow",
            "events",
            "stamp",
            "namespace",
            "pod",
            "from_namespace",
            "to_pod",
            "selector",
            "qname",
            "verdict",
            "service",
            "node",
            "kind",
            "ip",
            "min_latency_us",
        ])
        .prop_map(str::to_owned),
        text(),
    ]
}

/// A JSON object shaped like a request: known keys with random values, filters inside.
fn request_json() -> impl Strategy<Value = Value> {
    let filter = || {
        vec(
            (
                key(),
                prop_oneof![
                    vec(text().prop_map(Value::String), 0..4).prop_map(Value::Array),
                    json_value()
                ],
            ),
            0..5,
        )
        .prop_map(|kv| Value::Object(kv.into_iter().collect()))
    };
    (
        vec((key(), json_value()), 0..4),
        prop::option::of(filter()),
        prop::option::of(vec(filter(), 0..3)),
        prop::option::of(prop_oneof![Just("2026-11-24T02:10:00Z".to_owned()), text()]),
    )
        .prop_map(|(kv, filter, not, since)| {
            let mut m: Map<String, Value> = kv.into_iter().collect();
            if let Some(f) = filter {
                m.insert("filter".into(), f);
            }
            if let Some(n) = not {
                m.insert("not".into(), Value::Array(n));
            }
            if let Some(s) = since {
                m.insert("since".into(), Value::String(s));
            }
            Value::Object(m)
        })
}

/// Lines to match: verdict-shaped objects with random values where the filters look.
fn line() -> impl Strategy<Value = Value> {
    let side = || {
        (
            prop::option::of(scalar()),
            prop::option::of(scalar()),
            prop::option::of(scalar()),
            prop::option::of(scalar()),
            prop::option::of(vec((text(), text()), 0..4)),
        )
            .prop_map(|(ns, pod, ip, node, labels)| {
                let mut m = Map::new();
                for (k, v) in [("namespace", ns), ("pod", pod), ("ip", ip), ("node", node)] {
                    if let Some(v) = v {
                        m.insert(k.into(), v);
                    }
                }
                if let Some(l) = labels {
                    let l: Map<String, Value> =
                        l.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
                    m.insert("labels".into(), Value::Object(l));
                }
                Value::Object(m)
            })
    };
    (
        vec((key(), json_value()), 0..3),
        prop::option::of(side()),
        prop::option::of(side()),
        prop::option::of(scalar()),
        prop::option::of(scalar()),
    )
        .prop_map(|(kv, client, server, qname, latency)| {
            let mut m: Map<String, Value> = kv.into_iter().collect();
            if let Some(c) = client {
                m.insert("client".into(), c);
            }
            if let Some(s) = server {
                m.insert("server".into(), s);
            }
            m.insert("dns".into(), json!({"qname": qname, "latency_ms": latency}));
            Value::Object(m)
        })
}

/// Parses a request line and, when it parses, compiles and applies it the way the server does.
fn serve_request(bytes: &[u8], lines: &[Value]) -> Result<(), TestCaseError> {
    let req = match parse_request(bytes) {
        Ok(r) => r,
        Err(msg) => return check(!msg.is_empty(), || "an empty error".into()),
    };
    // What parsed serializes and parses back to the same request.
    let again = serde_json::to_vec(&req).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let reparsed = parse_request(&again);
    prop_assert_eq!(reparsed.as_ref(), Ok(&req));
    if let Some(s) = &req.since {
        let _ = s.parse::<jiff::Timestamp>();
    }
    match Selection::compile(&req.filter, &req.not) {
        Ok(sel) => {
            for l in lines {
                let _ = sel.matches(l);
            }
        }
        Err(e) => check(!e.to_string().is_empty(), || "an empty error".into())?,
    }
    Ok(())
}

target!(
    /// Random bytes as a request line.
    fuzz_observe_request_bytes,
    (vec(any::<u8>(), 0..300), vec(line(), 0..3)),
    |(bytes, lines): (Vec<u8>, Vec<Value>)| serve_request(&bytes, &lines)
);

target!(
    /// Request-shaped JSON with random keys and values, sometimes with one byte changed.
    fuzz_observe_request_json,
    (request_json(), any::<prop::sample::Index>(), any::<u8>(), any::<bool>(), vec(line(), 0..4)),
    |(req, at, byte, mutate, lines): (Value, prop::sample::Index, u8, bool, Vec<Value>)| {
        let mut bytes = req.to_string().into_bytes();
        if mutate && !bytes.is_empty() {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        serve_request(&bytes, &lines)
    }
);

/// A filter with random values in every flag.
fn filter() -> impl Strategy<Value = Filter> {
    // Mostly unset flags, as users write them; sometimes more values than allowed.
    let values = || {
        prop_oneof![
            6 => Just(Vec::new()),
            3 => vec(text(), 1..3),
            1 => vec(text(), 60..70),
        ]
    };
    (
        (values(), values(), values(), values(), values(), values()),
        (values(), values(), values(), values(), values(), values()),
        (values(), prop::option::of(any::<u64>())),
    )
        .prop_map(
            |(
                (namespace, pod, from_namespace, to_namespace, from_pod, to_pod),
                (selector, qname, verdict, service, node, kind),
                (ip, min_latency),
            )| Filter {
                namespace,
                pod,
                from_namespace,
                to_namespace,
                from_pod,
                to_pod,
                selector,
                qname,
                verdict,
                service,
                node,
                kind,
                ip,
                min_latency,
            },
        )
}

target!(
    /// Random filters compile or say why; compiled ones match random lines, and a line always
    /// matches a filter made of its own client namespace.
    fuzz_observe_filters,
    (filter(), vec(line(), 1..4)),
    |(f, lines): (Filter, Vec<Value>)| {
        match Selection::compile(&f, &[]) {
            Ok(sel) => {
                for l in &lines {
                    let _ = sel.matches(l);
                }
            }
            Err(e) => check(!e.to_string().is_empty(), || "an empty error".into())?,
        }
        // Refused exactly when a flag has too many values, an empty or overlong value, an IP
        // that is none, or a selector that does not parse.
        let all = [
            &f.namespace, &f.pod, &f.from_namespace, &f.to_namespace, &f.from_pod, &f.to_pod,
            &f.selector, &f.qname, &f.verdict, &f.service, &f.node, &f.kind, &f.ip,
        ];
        let bad = all.iter().any(|v| {
            v.len() > MAX_VALUES_PER_FLAG
                || v.iter().any(|s| s.trim().is_empty() || s.trim().len() > MAX_VALUE_LEN)
        }) || f.ip.iter().any(|v| v.trim().parse::<std::net::IpAddr>().is_err())
            || f.selector.iter().any(|s| Selector::parse(s.trim()).is_err());
        prop_assert_eq!(Selection::compile(&f, &[]).is_err(), bad, "{:?}", f);
        for l in &lines {
            let Some(ns) = side(l, "client").0 else {
                continue;
            };
            if ns.is_empty() || ns.trim() != ns || ns.len() > MAX_VALUE_LEN {
                continue;
            }
            let own = Filter {
                from_namespace: vec![ns.to_owned()],
                ..Filter::default()
            };
            let sel = Selection::compile(&own, &[]).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(sel.matches(l), "{ns:?} does not match {l}");
            // And its negation leaves it out.
            let not = Selection::compile(&Filter::default(), &[own])
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(!not.matches(l));
        }
        Ok(())
    }
);

target!(
    /// Globs: a text matches itself, `*`, and any pattern made by replacing parts of it with
    /// `*`; random patterns answer (in bounded time) without panicking.
    fuzz_qname_globs,
    (
        "[a-z0-9.*-]{0,253}",
        vec(any::<prop::sample::Index>(), 0..6),
        "[a-z0-9.*]{0,64}",
    ),
    |(t, cuts, random): (String, Vec<prop::sample::Index>, String)| {
        prop_assert!(glob_match(&t, &t) || t.contains('*'));
        prop_assert!(glob_match("*", &t));
        let chars: Vec<char> = t.chars().collect();
        let mut idx: Vec<usize> = cuts.iter().map(|c| c.index(chars.len() + 1)).collect();
        idx.sort_unstable();
        // Spans between pairs of cut points become one `*` each.
        let mut pattern = String::new();
        let mut i = 0;
        for pair in idx.chunks(2) {
            let (a, b) = (pair[0], pair.get(1).copied().unwrap_or(chars.len()));
            pattern.extend(&chars[i..a]);
            pattern.push('*');
            i = b;
        }
        pattern.extend(&chars[i..]);
        prop_assert!(glob_match(&pattern, &t), "{pattern:?} vs {t:?}");
        let _ = glob_match(&random, &t);
        Ok(())
    }
);

/// One requirement of a selector and how it is written.
#[derive(Clone, Debug)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

fn label_key() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z]{1,3}", "app", "tier", "k8s\\.io/[a-z]{1,4}"]
}

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9]{0,3}", "web", "db"]
}

fn req() -> impl Strategy<Value = Req> {
    prop_oneof![
        (label_key(), label_value()).prop_map(|(k, v)| Req::Eq(k, v)),
        (label_key(), label_value()).prop_map(|(k, v)| Req::Ne(k, v)),
        label_key().prop_map(Req::Exists),
        label_key().prop_map(Req::NotExists),
        (label_key(), vec(label_value(), 1..4)).prop_map(|(k, v)| Req::In(k, v)),
        (label_key(), vec(label_value(), 1..4)).prop_map(|(k, v)| Req::NotIn(k, v)),
    ]
}

fn write(r: &Req) -> String {
    match r {
        Req::Eq(k, v) => format!("{k}={v}"),
        Req::Ne(k, v) => format!("{k} != {v}"),
        Req::Exists(k) => k.clone(),
        Req::NotExists(k) => format!("!{k}"),
        Req::In(k, vs) => format!("{k} in ({})", vs.join(", ")),
        Req::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
    }
}

/// What Kubernetes says a requirement means.
fn holds(r: &Req, labels: &BTreeMap<String, String>) -> bool {
    match r {
        Req::Eq(k, v) => labels.get(k) == Some(v),
        Req::Ne(k, v) => labels.get(k) != Some(v),
        Req::Exists(k) => labels.contains_key(k),
        Req::NotExists(k) => !labels.contains_key(k),
        Req::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
        Req::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
    }
}

target!(
    /// Selectors written from random requirements parse and mean what Kubernetes says on random
    /// label sets; random text parses or is refused with a reason, never a panic.
    fuzz_label_selectors,
    (
        vec(req(), 1..5),
        vec((label_key(), label_value()), 0..5),
        "[a-z0-9=!,() .\t/-]{0,40}",
        json_value(),
    ),
    |(reqs, labels, random, odd): (Vec<Req>, Vec<(String, String)>, String, Value)| {
        let labels: BTreeMap<String, String> = labels.into_iter().collect();
        let text = reqs.iter().map(write).collect::<Vec<_>>().join(",");
        let sel = Selector::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let obj = json!(labels);
        prop_assert_eq!(
            sel.matches(Some(&obj)),
            reqs.iter().all(|r| holds(r, &labels)),
            "{} on {:?}",
            text,
            labels
        );
        prop_assert!(!sel.matches(None));
        let _ = sel.matches(Some(&odd));
        match Selector::parse(&random) {
            Ok(s) => {
                let _ = s.matches(Some(&obj));
                let _ = s.matches(Some(&odd));
            }
            Err(e) => prop_assert!(e.to_string().contains("bad label selector")),
        }
        Ok(())
    }
);
