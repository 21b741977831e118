//! The `vpc.amazonaws.com/pod-eni` annotation ([`parse_pod_eni`]): random text, random JSON,
//! and lists of entries with random fields, whose usable entries must come back.

use std::net::IpAddr;

use proptest::{collection::vec, prelude::*, test_runner::TestCaseError};
use serde_json::{Map, Value, json};

use super::{any_text, target};
use crate::enrich::{AnnotationError, parse_pod_eni};

target!(
    /// Random text: an error, or entries that are all usable.
    fuzz_pod_eni_random_text,
    prop_oneof![any_text(80), "[\\[\\]{}\":,0-9a-z. -]{0,80}"],
    |text: String| {
        match parse_pod_eni(&text) {
            Ok((enis, errors)) => {
                for e in &enis {
                    prop_assert!(!e.eni_id.is_empty() && (1..=4094).contains(&e.vlan_id));
                }
                for e in &errors {
                    prop_assert!(matches!(e, AnnotationError::BadEntry { .. }), "{e:?}");
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        Ok(())
    }
);

/// One entry: each field present or not, well-formed or not.
fn entry() -> impl Strategy<Value = (Value, bool)> {
    let eni = prop_oneof![
        "eni-[0-9a-f]{8,17}".prop_map(Value::String),
        Just(Value::String(String::new())),
        any::<i64>().prop_map(Value::from),
    ];
    let vlan = prop_oneof![
        (0u64..5000).prop_map(Value::from),
        (0u64..5000).prop_map(|v| Value::String(format!(" {v} "))),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        any_text(6).prop_map(Value::String),
    ];
    let ip = prop_oneof![
        any::<[u8; 4]>().prop_map(|a| Value::String(IpAddr::from(a).to_string())),
        any::<[u8; 16]>().prop_map(|a| Value::String(IpAddr::from(a).to_string())),
        "[0-9.:a-f]{0,20}".prop_map(Value::String),
        Just(Value::Null),
    ];
    (
        prop::option::of(eni),
        prop::option::of(vlan),
        prop::option::of(ip),
        prop::option::of(any_text(20)),
        vec(("[a-zA-Z]{1,10}", any::<u32>()), 0..3),
    )
        .prop_map(|(eni, vlan, ip, subnet, extra)| {
            let eni_ok = eni
                .as_ref()
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty());
            let vlan_ok = match &vlan {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
                _ => None,
            }
            .is_some_and(|v| (1..=4094).contains(&v));
            let ip_ok = ip
                .as_ref()
                .and_then(Value::as_str)
                .is_some_and(|s| s.trim().parse::<IpAddr>().is_ok());
            let mut m = Map::new();
            for (k, v) in extra {
                m.insert(k, Value::from(v));
            }
            for (k, v) in [("eniId", eni), ("vlanId", vlan), ("privateIp", ip)] {
                if let Some(v) = v {
                    m.insert(k.to_owned(), v);
                }
            }
            if let Some(s) = subnet {
                m.insert("subnetCidr".to_owned(), Value::String(s));
            }
            (Value::Object(m), eni_ok && vlan_ok && ip_ok)
        })
}

target!(
    /// A list of entries: exactly the usable ones come back (in order, with their fields), one
    /// error per other entry naming its index.
    fuzz_pod_eni_entries,
    (vec(entry(), 0..6), vec(any::<u8>(), 0..3)),
    |(entries, junk): (Vec<(Value, bool)>, Vec<u8>)| {
        let list = Value::Array(
            entries
                .iter()
                .map(|(v, _)| v.clone())
                .chain(junk.iter().map(|b| Value::from(*b)))
                .collect(),
        );
        let (enis, errors) = parse_pod_eni(&list.to_string())
            .map_err(|e| TestCaseError::fail(format!("a JSON list refused: {e}")))?;
        let usable: Vec<&Value> = entries.iter().filter(|(_, ok)| *ok).map(|(v, _)| v).collect();
        prop_assert_eq!(enis.len(), usable.len());
        prop_assert_eq!(enis.len() + errors.len(), entries.len() + junk.len());
        for (eni, v) in enis.iter().zip(usable) {
            prop_assert_eq!(Some(eni.eni_id.as_str()), v["eniId"].as_str());
            let ip = v["privateIp"].as_str().map(|s| s.trim().parse::<IpAddr>());
            prop_assert_eq!(ip, Some(Ok(eni.private_ip)));
        }
        let bad_indexes: Vec<usize> = entries
            .iter()
            .map(|(_, ok)| *ok)
            .chain(junk.iter().map(|_| false))
            .enumerate()
            .filter(|(_, ok)| !ok)
            .map(|(i, _)| i)
            .collect();
        let got: Vec<usize> = errors
            .iter()
            .map(|e| match e {
                AnnotationError::BadEntry { index, .. } => *index,
                _ => usize::MAX,
            })
            .collect();
        prop_assert_eq!(got, bad_indexes);
        Ok(())
    }
);
