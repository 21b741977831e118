//! Kubernetes label selectors (`-l app=web,tier!=db`), matched against the `labels` object of a
//! verdict's `client` or `server`.
//!
//! The syntax is kubectl's: requirements separated by commas, all of which must hold:
//! `key`, `!key`, `key=value` (or `==`), `key!=value`, `key in (a,b)`, `key notin (a,b)`. As in
//! Kubernetes, `!=` and `notin` also hold when the key is absent. A side whose labels are not
//! known (`labels` null or missing: not a pod of this node, or enrichment off) matches nothing.

use serde_json::Value;

/// Longest key or value accepted (Kubernetes allows 253 + 63 for a prefixed key).
const MAX_PART: usize = 317;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed selector: every requirement must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// Why a selector does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad label selector {selector:?}: {reason} (e.g. app=web, 'tier in (a,b)', '!canary')")]
pub struct SelectorError {
    /// The selector as given.
    pub selector: String,
    /// What is wrong.
    pub reason: String,
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_PART
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= MAX_PART
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Splits at commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s.get(start..i).unwrap_or_default());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s.get(start..).unwrap_or_default());
    out
}

impl Selector {
    /// Parses kubectl's selector syntax.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let err = |reason: String| SelectorError {
            selector: text.to_owned(),
            reason,
        };
        let mut requirements = Vec::new();
        for part in split_top(text) {
            let part = part.trim();
            if part.is_empty() {
                return Err(err("empty requirement".to_owned()));
            }
            let req = Self::requirement(part).map_err(err)?;
            requirements.push(req);
        }
        Ok(Self { requirements })
    }

    fn requirement(part: &str) -> Result<Requirement, String> {
        let key = |k: &str| -> Result<String, String> {
            let k = k.trim();
            if valid_key(k) {
                Ok(k.to_owned())
            } else {
                Err(format!("bad key {k:?}"))
            }
        };
        let value = |v: &str| -> Result<String, String> {
            let v = v.trim();
            if valid_value(v) {
                Ok(v.to_owned())
            } else {
                Err(format!("bad value {v:?}"))
            }
        };
        if let Some(rest) = part.strip_prefix('!') {
            return Ok(Requirement::NotExists(key(rest)?));
        }
        if let Some(open) = part.find('(') {
            let inner = part
                .get(open + 1..)
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("unclosed set in {part:?}"))?;
            let head = part.get(..open).unwrap_or_default().trim_end();
            let values = inner.split(',').map(value).collect::<Result<Vec<_>, _>>()?;
            if let Some(k) = head.strip_suffix(" notin") {
                return Ok(Requirement::NotIn(key(k)?, values));
            }
            if let Some(k) = head.strip_suffix(" in") {
                return Ok(Requirement::In(key(k)?, values));
            }
            return Err(format!(
                "expected `in` or `notin` before the set in {part:?}"
            ));
        }
        if let Some((k, v)) = part.split_once("!=") {
            return Ok(Requirement::NotIn(key(k)?, vec![value(v)?]));
        }
        if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            return Ok(Requirement::In(key(k)?, vec![value(v)?]));
        }
        Ok(Requirement::Exists(key(part)?))
    }

    /// Whether a `labels` object satisfies every requirement; `None` (labels unknown) never does.
    pub fn matches(&self, labels: Option<&Value>) -> bool {
        let Some(labels) = labels.and_then(Value::as_object) else {
            return false;
        };
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.requirements.iter().all(|r| match r {
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
            Requirement::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|w| w == v)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|v| vs.iter().all(|w| w != v)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn syntax_and_matching() {
        let labels = json!({"app": "web", "tier": "front", "pod-template-hash": "5d78c9869d"});
        let l = Some(&labels);
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app = web", true),
            ("app=db", false),
            ("app!=db", true),
            ("app!=web", false),
            ("missing!=x", true),
            ("app", true),
            ("missing", false),
            ("!missing", true),
            ("!app", false),
            ("tier in (front, back)", true),
            ("tier in (back)", false),
            ("tier notin (back)", true),
            ("missing notin (x)", true),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
            ("app=web,tier in (back,front),!canary", true),
            ("app=", false),
        ] {
            let s = Selector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(l), want, "{sel}");
            assert!(!s.matches(None), "{sel}: unknown labels never match");
            assert!(!s.matches(Some(&json!("x"))), "{sel}: not an object");
        }
        assert!(
            Selector::parse("app=")
                .expect("empty value")
                .matches(Some(&json!({"app": ""})))
        );
    }

    #[test]
    fn refused() {
        for bad in [
            "",
            ",",
            "app=web,",
            "a b=c",
            "app=we b",
            "tier in (a",
            "tier (a)",
            "!",
            "app=\u{1b}[2J",
        ] {
            let e = Selector::parse(bad).expect_err(bad);
            assert!(e.to_string().contains("bad label selector"), "{e}");
        }
    }
}
