//! The names published verdicts carried since start (namespaces, pods, nodes, Services),
//! bounded, and the "never seen" warnings a client's filters get from them.

use std::{
    collections::{BTreeSet, HashSet},
    time::Duration,
};

use serde_json::Value;

use super::filter::{Filter, node_matches, side, split_pod};
use super::{MAX_SEEN_NAMES, SEEN_LISTED};

/// Distinct names of one kind, bounded by [`MAX_SEEN_NAMES`].
#[derive(Debug, Default)]
pub(super) struct NameSet {
    pub(super) names: HashSet<String>,
    /// A name was not remembered: absence no longer proves anything.
    pub(super) full: bool,
}

impl NameSet {
    pub(super) fn note(&mut self, name: &str) {
        if self.names.contains(name) {
            return;
        }
        if self.names.len() >= MAX_SEEN_NAMES {
            self.full = true;
            return;
        }
        self.names.insert(name.to_owned());
    }

    /// Whether any remembered name satisfies `pred`; `true` when the set overflowed (unknown).
    pub(super) fn any(&self, pred: impl FnMut(&String) -> bool) -> bool {
        self.full || self.names.iter().any(pred)
    }

    /// Up to [`SEEN_LISTED`] names, sorted, and how many more there are.
    pub(super) fn listing(&self) -> String {
        let sorted: BTreeSet<&String> = self.names.iter().collect();
        let mut out = sorted
            .iter()
            .take(SEEN_LISTED)
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        if sorted.len() > SEEN_LISTED {
            out.push_str(&format!(" and {} more", sorted.len() - SEEN_LISTED));
        }
        if out.is_empty() {
            out.push_str("none");
        }
        out
    }
}

/// Names the published verdicts carried since start: what a filter can be checked against.
#[derive(Debug, Default)]
pub(super) struct Seen {
    verdicts: u64,
    namespaces: NameSet,
    /// `ns/name`, or `name` when the namespace is not known.
    pods: NameSet,
    nodes: NameSet,
    services: NameSet,
}

impl Seen {
    pub(super) fn note(&mut self, v: &Value) {
        self.verdicts += 1;
        for prefix in ["client", "server"] {
            let (ns, pod) = side(v, prefix);
            if let Some(ns) = ns {
                self.namespaces.note(ns);
            }
            match (ns, pod) {
                (Some(ns), Some(pod)) => self.pods.note(&format!("{ns}/{pod}")),
                (None, Some(pod)) => self.pods.note(pod),
                _ => {}
            }
            if let Some(node) = crate::sinks::json::str_at(v, &format!("{prefix}.node")) {
                self.nodes.note(node);
            }
        }
        if let Some(node) = crate::sinks::json::str_at(v, "node") {
            self.nodes.note(node);
        }
        if let Some(svc) = crate::sinks::json::str_at(v, "server.service") {
            if let Some((ns, _)) = svc.split_once('/') {
                self.namespaces.note(ns);
            }
            self.services.note(svc);
        }
    }

    /// One warning per filter value no verdict has named so far (nothing when no verdict was
    /// published yet: there is nothing to compare with).
    pub(super) fn warnings(&self, filters: &[(&Filter, bool)], uptime: Duration) -> Vec<String> {
        if self.verdicts == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        let since = format!(
            "no verdict since tracer run started ({} ago)",
            short_duration(uptime)
        );
        for (f, negated) in filters {
            let flag = |name: &str| {
                if *negated {
                    format!("--not --{name}")
                } else {
                    format!("--{name}")
                }
            };
            for (name, values) in [
                ("namespace", &f.namespace),
                ("from-namespace", &f.from_namespace),
                ("to-namespace", &f.to_namespace),
            ] {
                for want in values {
                    let want = want.trim();
                    if !self.namespaces.any(|n| n == want) {
                        out.push(format!(
                            "{} {want:?}: {since} names this namespace; namespaces seen: {}",
                            flag(name),
                            self.namespaces.listing()
                        ));
                    }
                }
            }
            for (name, values) in [
                ("pod", &f.pod),
                ("from-pod", &f.from_pod),
                ("to-pod", &f.to_pod),
            ] {
                for want in values {
                    let (want_ns, want_name) = split_pod(want.trim());
                    let known = self.pods.any(|p| {
                        let (ns, name) = split_pod(p);
                        name.starts_with(&want_name)
                            && want_ns.as_ref().is_none_or(|w| ns.as_ref() == Some(w))
                    });
                    if !known {
                        out.push(format!(
                            "{} {:?}: {since} names a pod starting with this; pods seen: {}",
                            flag(name),
                            want.trim(),
                            self.pods.listing()
                        ));
                    }
                }
            }
            for want in &f.node {
                let want = want.trim();
                if !self.nodes.any(|n| node_matches(want, n)) {
                    out.push(format!(
                        "{} {want:?}: {since} names this node (full or short name); nodes \
                         seen: {}",
                        flag("node"),
                        self.nodes.listing()
                    ));
                }
            }
            for want in &f.service {
                let want = want.trim();
                let known = self.services.any(|s| {
                    s == want
                        || (!want.contains('/')
                            && s.split_once('/').is_some_and(|(_, n)| n == want))
                });
                if !known {
                    out.push(format!(
                        "{} {want:?}: {since} went through this Service; Services seen: {}",
                        flag("service"),
                        self.services.listing()
                    ));
                }
            }
        }
        out
    }
}

/// `45s`, `12m`, `3h20m`, `2d4h`.
pub(super) fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}
