//! OCSF-shaped output for SIEMs, and query-name redaction.
//!
//! [`to_ocsf`] maps one `tracer.flow/v1` verdict onto OCSF 1.2 ([`OCSF_VERSION`]):
//!
//! - `kind: dns` → **DNS Activity** (`class_uid` 4003, category 4 Network Activity). A verdict is
//!   one record per query *and* its outcome, so:
//!   - `answered` → `activity_id` 6 **Traffic** ("bidirectional DNS request and response
//!     traffic"): the query and its response were both seen, and one record carries both.
//!   - every other verdict → `activity_id` 1 **Query**: only the request was seen (no response
//!     reached the client), which is the point of the record.
//!
//!   `Response` (2) is not used: tracer never reports a response without its query.
//! - `kind: egress` → **Network Activity** (`class_uid` 4001): `established` → 1 Open,
//!   `rejected` → 5 Refuse (TCP RST or ICMP unreachable came back), `dropped` /
//!   `lost_beyond_node` / `unanswered` → 4 Fail, anything else → 0 Unknown.
//! - Anything else (no or another `kind`) → Network Activity with `activity_id` 0 Unknown.
//!
//! Common to both: `status_id` 1 Success for `answered`/`established`, 2 Failure for
//! `dropped`/`lost_beyond_node`/`unanswered`/`rejected`, 0 Unknown otherwise; `status_code` is
//! the verdict, `status_detail` the kernel drop reason (with location) or the hint, `message`
//! the hint; `severity_id` 1 Informational on success, 3 Medium on failure (a workload could
//! not reach something), 0 Unknown otherwise. `time` is epoch milliseconds of the verdict's
//! `time` (omitted when absent or unparsable), `duration` the DNS latency in whole ms. A
//! summary line (`record: summary`) also gets the base event's `count` and its interval as
//! `start_time`/`end_time`.
//! Endpoints carry `ip`, `port`, `name` (`namespace/pod`) and, for the server, `svc_name`
//! (`namespace/service`); `device` is the node that reported. `unmapped` carries the original
//! verdict, whole, so nothing is lost in translation.
//!
//! [`redact_qname`] pseudonymizes or removes query names before a record leaves the node; apply
//! it before [`to_ocsf`] (which copies the record into `unmapped`).

use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use super::json::{field, str_at};

/// OCSF schema version the mapping follows.
pub const OCSF_VERSION: &str = "1.2.0";

/// OCSF DNS Activity class.
pub const CLASS_DNS_ACTIVITY: u64 = 4003;
/// OCSF Network Activity class.
pub const CLASS_NETWORK_ACTIVITY: u64 = 4001;
/// OCSF Network Activity category.
pub const CATEGORY_NETWORK: u64 = 4;

/// Hex digits of the SHA-256 kept by [`RedactMode::Hash`] (64 bits: enough to join records).
pub const HASH_HEX_LEN: usize = 16;

/// How [`redact_qname`] treats query names.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum RedactMode {
    /// Replace the name with `sha256:<first 16 hex digits>` of its normalized form (lower case,
    /// no trailing dot): records about one name still group together. This is
    /// pseudonymization, not anonymization: common names can be found by hashing guesses.
    Hash,
    /// Remove the name.
    Drop,
}

/// `sha256:<16 hex>` of a query name, case and trailing dot normalized.
pub fn hash_qname(qname: &str) -> String {
    let norm = qname
        .strip_suffix('.')
        .unwrap_or(qname)
        .to_ascii_lowercase();
    let digest = Sha256::digest(norm.as_bytes());
    let mut out = String::from("sha256:");
    for b in digest.iter().take(HASH_HEX_LEN / 2) {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Redacts `dns.qname` in a verdict or packet event in place, and the name wherever the `hint`
/// quotes it. Records without a query name are left alone.
pub fn redact_qname(v: &mut Value, mode: RedactMode) {
    let Some(dns) = v.get_mut("dns").and_then(Value::as_object_mut) else {
        return;
    };
    let Some(qname) = dns.get("qname").and_then(Value::as_str).map(str::to_owned) else {
        return;
    };
    let replacement = match mode {
        RedactMode::Hash => {
            let h = hash_qname(&qname);
            dns.insert("qname".to_owned(), Value::String(h.clone()));
            h
        }
        RedactMode::Drop => {
            // Kept as null: the schema requires the key.
            dns.insert("qname".into(), Value::Null);
            "<redacted>".to_owned()
        }
    };
    if qname.is_empty() {
        return;
    }
    if let Some(Value::String(hint)) = v.get_mut("hint") {
        let trimmed = qname.strip_suffix('.').unwrap_or(&qname);
        if !trimmed.is_empty() {
            *hint = replace_ascii_case_insensitive(hint, trimmed, &replacement);
        }
    }
}

/// Replaces every ASCII-case-insensitive occurrence of `needle` (DNS names compare that way).
fn replace_ascii_case_insensitive(hay: &str, needle: &str, with: &str) -> String {
    let lower_hay = hay.to_ascii_lowercase();
    let lower_needle = needle.to_ascii_lowercase();
    let mut out = String::with_capacity(hay.len());
    let mut last = 0usize;
    // Matches do not overlap, and ASCII lowering keeps byte offsets, so every index is a char
    // boundary of `hay` at or after `last`.
    for (i, _) in lower_hay.match_indices(&lower_needle) {
        out.push_str(hay.get(last..i).unwrap_or_default());
        out.push_str(with);
        last = i + needle.len();
    }
    out.push_str(hay.get(last..).unwrap_or_default());
    out
}

/// Epoch milliseconds of an RFC 3339 timestamp.
pub fn epoch_ms(rfc3339: &str) -> Option<i64> {
    rfc3339
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

fn status(verdict: Option<&str>) -> (u64, &'static str, u64, &'static str) {
    match verdict {
        Some("answered" | "established") => (1, "Success", 1, "Informational"),
        Some("dropped" | "lost_beyond_node" | "unanswered" | "rejected") => {
            (2, "Failure", 3, "Medium")
        }
        _ => (0, "Unknown", 0, "Unknown"),
    }
}

/// OCSF DNS Activity `rcode_id` for an RCODE name.
fn rcode_id(rcode: &str) -> u64 {
    match rcode.to_ascii_uppercase().as_str() {
        "NOERROR" => 0,
        "FORMERR" => 1,
        "SERVFAIL" => 2,
        "NXDOMAIN" => 3,
        "NOTIMP" => 4,
        "REFUSED" => 5,
        "YXDOMAIN" => 6,
        "YXRRSET" => 7,
        "NXRRSET" => 8,
        "NOTAUTH" => 9,
        "NOTZONE" => 10,
        _ => 99,
    }
}

/// OCSF caption of a `rcode_id`.
fn rcode_caption(id: u64) -> &'static str {
    match id {
        0 => "NoError",
        1 => "FormError",
        2 => "ServError",
        3 => "NXDomain",
        4 => "NotImp",
        5 => "Refused",
        6 => "YXDomain",
        7 => "YXRRSet",
        8 => "NXRRSet",
        9 => "NotAuth",
        10 => "NotZone",
        _ => "Other",
    }
}

/// Network Endpoint object of one side (`client` or `server`); `None` when nothing is known.
fn endpoint(v: &Value, side: &str) -> Option<Value> {
    let mut ep = Map::new();
    if let Some(ip) = str_at(v, &format!("{side}.ip")) {
        ep.insert("ip".into(), json!(ip));
    }
    if let Some(port) = field(v, &format!("{side}.port")).and_then(Value::as_u64) {
        ep.insert("port".into(), json!(port));
    }
    let ns = str_at(v, &format!("{side}.namespace"));
    match (ns, str_at(v, &format!("{side}.pod"))) {
        (Some(ns), Some(pod)) if !pod.contains('/') => {
            ep.insert("name".into(), json!(format!("{ns}/{pod}")));
        }
        (_, Some(pod)) => {
            ep.insert("name".into(), json!(pod));
        }
        (Some(ns), None) => {
            ep.insert("name".into(), json!(ns));
        }
        (None, None) => {}
    }
    if let Some(svc) = str_at(v, &format!("{side}.service")) {
        ep.insert("svc_name".into(), json!(svc));
    }
    if let Some(node) = str_at(v, &format!("{side}.node")) {
        ep.insert("hostname".into(), json!(node));
    }
    (!ep.is_empty()).then_some(Value::Object(ep))
}

/// Maps one verdict to an OCSF event (see the module documentation for the choices).
pub fn to_ocsf(v: &Value) -> Value {
    let verdict = str_at(v, "verdict");
    let kind = str_at(v, "kind");
    let (class_uid, class_name, activity_id, activity_name) = match (kind, verdict) {
        (Some("dns"), Some("answered")) => (CLASS_DNS_ACTIVITY, "DNS Activity", 6, "Traffic"),
        (Some("dns"), _) => (CLASS_DNS_ACTIVITY, "DNS Activity", 1, "Query"),
        (Some("egress"), Some("established")) => {
            (CLASS_NETWORK_ACTIVITY, "Network Activity", 1, "Open")
        }
        (Some("egress"), Some("rejected")) => {
            (CLASS_NETWORK_ACTIVITY, "Network Activity", 5, "Refuse")
        }
        (Some("egress"), Some("dropped" | "lost_beyond_node" | "unanswered")) => {
            (CLASS_NETWORK_ACTIVITY, "Network Activity", 4, "Fail")
        }
        _ => (CLASS_NETWORK_ACTIVITY, "Network Activity", 0, "Unknown"),
    };
    let (status_id, status_name, severity_id, severity) = status(verdict);

    let mut o = Map::new();
    o.insert("category_uid".into(), json!(CATEGORY_NETWORK));
    o.insert("category_name".into(), json!("Network Activity"));
    o.insert("class_uid".into(), json!(class_uid));
    o.insert("class_name".into(), json!(class_name));
    o.insert("activity_id".into(), json!(activity_id));
    o.insert("activity_name".into(), json!(activity_name));
    o.insert("type_uid".into(), json!(class_uid * 100 + activity_id));
    o.insert(
        "type_name".into(),
        json!(format!("{class_name}: {activity_name}")),
    );
    o.insert("severity_id".into(), json!(severity_id));
    o.insert("severity".into(), json!(severity));
    o.insert("status_id".into(), json!(status_id));
    o.insert("status".into(), json!(status_name));
    if let Some(verdict) = verdict {
        o.insert("status_code".into(), json!(verdict));
    }
    let hint = str_at(v, "hint");
    let drop_detail = str_at(v, "drop.reason").map(|r| match str_at(v, "drop.location") {
        Some(loc) => format!("{r} at {loc}"),
        None => r.to_owned(),
    });
    if let Some(detail) = drop_detail.or_else(|| hint.map(str::to_owned)) {
        o.insert("status_detail".into(), json!(detail));
    }
    if let Some(hint) = hint {
        o.insert("message".into(), json!(hint));
    }
    if let Some(ms) = str_at(v, "time").and_then(epoch_ms) {
        o.insert("time".into(), json!(ms));
    }
    // A summary line stands for `count` flows over its interval: the base event's `count`,
    // `start_time` and `end_time`.
    if str_at(v, "record") == Some("summary") {
        if let Some(n) = field(v, "count").and_then(Value::as_u64) {
            o.insert("count".into(), json!(n));
        }
        for (from, to) in [("time", "start_time"), ("end_time", "end_time")] {
            if let Some(ms) = str_at(v, from).and_then(epoch_ms) {
                o.insert(to.into(), json!(ms));
            }
        }
    }

    let mut product = Map::new();
    product.insert("name".into(), json!("tracer"));
    product.insert("vendor_name".into(), json!("tracer"));
    product.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
    let mut metadata = Map::new();
    metadata.insert("version".into(), json!(OCSF_VERSION));
    metadata.insert("product".into(), Value::Object(product));
    if let Some(schema) = str_at(v, "schema") {
        metadata.insert("log_name".into(), json!(schema));
    }
    if let Some(key) = str_at(v, "key") {
        metadata.insert("correlation_uid".into(), json!(key));
    }
    o.insert("metadata".into(), Value::Object(metadata));

    if let Some(node) = str_at(v, "node") {
        o.insert(
            "device".into(),
            json!({"hostname": node, "name": node, "type_id": 1, "type": "Server"}),
        );
    }
    if let Some(ep) = endpoint(v, "client") {
        o.insert("src_endpoint".into(), ep);
    }
    if let Some(ep) = endpoint(v, "server") {
        o.insert("dst_endpoint".into(), ep);
    }

    let proto = str_at(v, "dns.transport")
        .or_else(|| str_at(v, "proto"))
        .or_else(|| str_at(v, "transport"))
        .map(str::to_ascii_lowercase)
        .or_else(|| (kind == Some("dns")).then(|| "udp".to_owned()));
    let mut conn = Map::new();
    conn.insert("direction_id".into(), json!(2));
    conn.insert("direction".into(), json!("Outbound"));
    if let Some(p) = proto {
        let num = match p.as_str() {
            "tcp" => Some(6),
            "udp" => Some(17),
            "icmp" => Some(1),
            _ => None,
        };
        if let Some(num) = num {
            conn.insert("protocol_num".into(), json!(num));
        }
        conn.insert("protocol_name".into(), json!(p));
    }
    o.insert("connection_info".into(), Value::Object(conn));

    if class_uid == CLASS_DNS_ACTIVITY {
        let mut query = Map::new();
        if let Some(q) = str_at(v, "dns.qname") {
            query.insert("hostname".into(), json!(q));
        }
        if let Some(t) = str_at(v, "dns.qtype") {
            query.insert("type".into(), json!(t));
        }
        if let Some(id) = field(v, "dns.id").and_then(Value::as_u64) {
            query.insert("packet_uid".into(), json!(id));
        }
        if !query.is_empty() {
            o.insert("query".into(), Value::Object(query));
        }
        if let Some(rcode) = str_at(v, "dns.rcode") {
            let id = rcode_id(rcode);
            o.insert("rcode_id".into(), json!(id));
            o.insert(
                "rcode".into(),
                json!(if id == 99 { rcode } else { rcode_caption(id) }),
            );
        }
        if let Some(ms) = field(v, "dns.latency_ms").and_then(Value::as_f64)
            && ms.is_finite()
            && ms >= 0.0
        {
            // Whole milliseconds as OCSF wants; the exact value stays in `unmapped`.
            o.insert("duration".into(), json!(ms.round() as u64));
        }
    }
    o.insert("unmapped".into(), v.clone());
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(verdict: &str) -> Value {
        json!({
            "schema": "tracer.flow/v1", "kind": "dns", "verdict": verdict, "key": "k1",
            "time": "2026-11-24T01:49:12.345Z", "node": "ip-10-0-1-12",
            "client": {"namespace": "shop", "pod": "web-1", "ip": "10.0.1.34", "port": 40000},
            "server": {"ip": "10.0.2.7", "port": 53, "service": "kube-system/kube-dns",
                       "namespace": "kube-system", "pod": "coredns-b", "node": "ip-10-0-2-7"},
            "dns": {"id": 4242, "qname": "api.example.com", "qtype": "A", "rcode": "NXDOMAIN",
                    "latency_ms": 1.6, "transport": "udp"},
            "hint": "api.example.com does not exist (NXDOMAIN)",
        })
    }

    #[test]
    fn dns_answered_is_traffic() {
        let o = to_ocsf(&dns("answered"));
        assert_eq!(o["class_uid"], 4003);
        assert_eq!(o["category_uid"], 4);
        assert_eq!(o["activity_id"], 6);
        assert_eq!(o["type_uid"], 400306);
        assert_eq!(o["status_id"], 1);
        assert_eq!(o["status"], "Success");
        assert_eq!(o["severity_id"], 1);
        assert_eq!(o["status_code"], "answered");
        assert_eq!(o["time"], 1_795_484_952_345_i64);
        assert_eq!(o["duration"], 2);
        assert_eq!(o["rcode_id"], 3);
        assert_eq!(o["rcode"], "NXDomain");
        assert_eq!(
            o["query"],
            json!({"hostname": "api.example.com", "type": "A", "packet_uid": 4242})
        );
        assert_eq!(
            o["src_endpoint"],
            json!({"ip": "10.0.1.34", "port": 40000, "name": "shop/web-1"})
        );
        assert_eq!(
            o["dst_endpoint"],
            json!({"ip": "10.0.2.7", "port": 53, "name": "kube-system/coredns-b",
                   "svc_name": "kube-system/kube-dns", "hostname": "ip-10-0-2-7"})
        );
        assert_eq!(o["connection_info"]["protocol_num"], 17);
        assert_eq!(o["metadata"]["product"]["name"], "tracer");
        assert_eq!(o["metadata"]["version"], OCSF_VERSION);
        assert_eq!(o["metadata"]["correlation_uid"], "k1");
        assert_eq!(o["device"]["hostname"], "ip-10-0-1-12");
        assert_eq!(o["unmapped"], dns("answered"));
    }

    /// Summary lines (both kinds, the docs examples) map to their class with the base event's
    /// `count` and the interval as `start_time`/`end_time`.
    #[test]
    fn summaries_carry_their_count_and_interval() {
        for (text, class, activity) in [
            (
                include_str!("../../../docs/examples/answered-summary.json"),
                4003,
                6,
            ),
            (
                include_str!("../../../docs/examples/established-summary.json"),
                4001,
                1,
            ),
        ] {
            let v: Value = serde_json::from_str(text).expect("json");
            let o = to_ocsf(&v);
            assert_eq!(
                (o["class_uid"].clone(), o["activity_id"].clone()),
                (json!(class), json!(activity))
            );
            assert_eq!(o["count"], v["count"]);
            assert_eq!(o["start_time"], o["time"]);
            assert_eq!(
                o["end_time"]
                    .as_i64()
                    .zip(o["start_time"].as_i64())
                    .map(|(e, s)| e - s),
                Some(10_000)
            );
            assert_eq!(o["status"], "Success");
        }
        assert!(
            to_ocsf(&dns("answered")).get("count").is_none(),
            "a flow line has none"
        );
    }

    #[test]
    fn dns_failures_are_queries() {
        let mut v = dns("dropped");
        v["drop"] = json!({"reason": "NETFILTER_DROP", "location": "nft_do_chain+0x4e4"});
        let o = to_ocsf(&v);
        assert_eq!(
            (o["activity_id"].clone(), o["type_uid"].clone()),
            (json!(1), json!(400301))
        );
        assert_eq!(o["status_id"], 2);
        assert_eq!(o["severity_id"], 3);
        assert_eq!(o["status_detail"], "NETFILTER_DROP at nft_do_chain+0x4e4");
        for verdict in ["lost_beyond_node", "unanswered", "rejected"] {
            let o = to_ocsf(&dns(verdict));
            assert_eq!(o["activity_id"], 1, "{verdict}");
            assert_eq!(o["status"], "Failure", "{verdict}");
            assert_eq!(o["status_detail"], o["message"], "{verdict}: the hint");
        }
    }

    #[test]
    fn egress_activities() {
        for (verdict, activity, status) in [
            ("established", 1, 1),
            ("rejected", 5, 2),
            ("dropped", 4, 2),
            ("lost_beyond_node", 4, 2),
            ("unanswered", 4, 2),
            ("unknown", 0, 0),
        ] {
            let v = json!({"kind": "egress", "verdict": verdict, "proto": "TCP",
                           "client": {"ip": "10.0.1.50"}, "server": {"ip": "203.0.113.80", "port": 443}});
            let o = to_ocsf(&v);
            assert_eq!(o["class_uid"], 4001, "{verdict}");
            assert_eq!(o["activity_id"], activity, "{verdict}");
            assert_eq!(o["type_uid"], 400100 + activity, "{verdict}");
            assert_eq!(o["status_id"], status, "{verdict}");
            assert_eq!(o["connection_info"]["protocol_name"], "tcp");
            assert_eq!(o["connection_info"]["protocol_num"], 6);
            assert!(o.get("query").is_none() && o.get("rcode").is_none());
        }
    }

    #[test]
    fn missing_and_odd_fields_never_panic() {
        for v in [
            json!({}),
            json!(null),
            json!([]),
            json!("x"),
            json!({"kind": "dns", "time": "not a time", "dns": {"latency_ms": -1, "rcode": "WEIRD"}}),
            json!({"kind": 5, "verdict": null, "client": "x", "server": {"port": "53"}}),
        ] {
            let o = to_ocsf(&v);
            assert!(o["class_uid"].is_u64(), "{v}");
            assert!(o.get("time").is_none(), "{v}");
            assert_eq!(o["unmapped"], v);
        }
        let o = to_ocsf(&json!({"kind": "dns", "dns": {"rcode": "WEIRD", "latency_ms": -1}}));
        assert_eq!(
            (o["rcode_id"].clone(), o["rcode"].clone()),
            (json!(99), json!("WEIRD"))
        );
        assert!(o.get("duration").is_none());
        assert_eq!(o["status_id"], 0);
    }

    #[test]
    fn redaction() {
        let mut v = dns("answered");
        redact_qname(&mut v, RedactMode::Hash);
        let h = hash_qname("api.example.com");
        assert_eq!(v["dns"]["qname"], h);
        assert_eq!(h.len(), "sha256:".len() + HASH_HEX_LEN);
        // sha256("api.example.com"), first 8 bytes.
        assert_eq!(h, "sha256:d0c43d3885064d9a");
        assert_eq!(
            hash_qname("API.Example.com."),
            h,
            "case and trailing dot normalized"
        );
        assert_eq!(v["hint"], format!("{h} does not exist (NXDOMAIN)"));
        assert_eq!(to_ocsf(&v)["query"]["hostname"], h);
        assert_eq!(to_ocsf(&v)["unmapped"]["dns"]["qname"], h);

        let mut v = dns("answered");
        v["hint"] = json!("API.EXAMPLE.COM. failed; api.example.com again");
        redact_qname(&mut v, RedactMode::Drop);
        assert!(
            v["dns"]["qname"].is_null(),
            "kept as null: the schema requires the key"
        );
        assert_eq!(v["dns"]["qtype"], "A");
        assert_eq!(v["hint"], "<redacted>. failed; <redacted> again");

        for mut v in [
            json!({}),
            json!({"dns": null}),
            json!({"dns": {"qname": 3}}),
            json!([]),
        ] {
            let before = v.clone();
            redact_qname(&mut v, RedactMode::Hash);
            assert_eq!(v, before);
        }
        let mut v = json!({"dns": {"qname": ""}, "hint": "x"});
        redact_qname(&mut v, RedactMode::Hash);
        assert_eq!(v["hint"], "x");
    }
}
