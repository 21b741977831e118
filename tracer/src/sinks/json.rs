//! Dotted-path access to output lines (`"client.namespace"`): what the stream filter, the
//! OCSF shaper and the observe table read. Every field may be missing or null; nothing here
//! panics on any input.

use serde_json::Value;

/// The value at a dotted path (`"client.namespace"`), or `None` when any step is missing or the
/// value is null.
pub fn field<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for key in path.split('.') {
        cur = cur.as_object()?.get(key)?;
    }
    (!cur.is_null()).then_some(cur)
}

/// The string at a dotted path; `None` when missing, null, not a string, or empty.
pub fn str_at<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    field(v, path)?.as_str().filter(|s| !s.is_empty())
}

/// True for a packet event line (`"type":"packet"`), false for verdicts and anything else.
pub fn is_packet_event(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("packet")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_paths() {
        let v = json!({"a": {"b": {"c": "x"}, "n": null, "e": ""}, "s": 3});
        assert_eq!(str_at(&v, "a.b.c"), Some("x"));
        assert_eq!(field(&v, "a.n"), None);
        assert_eq!(str_at(&v, "a.e"), None);
        assert_eq!(str_at(&v, "a.b"), None);
        assert_eq!(str_at(&v, "s.x"), None);
        assert_eq!(str_at(&v, "missing.deep.path"), None);
        assert_eq!(str_at(&json!(null), "a"), None);
        assert_eq!(str_at(&json!([1, 2]), "0"), None);
        assert!(is_packet_event(&json!({"type": "packet"})));
        assert!(!is_packet_event(&json!({"type": 1})));
    }
}
