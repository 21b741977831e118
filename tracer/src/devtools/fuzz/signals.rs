//! Node signals from the kernel: the conntrack statistics table ([`parse_conntrack`], checked
//! against its documented rules on generated and random tables) and the growth detection fed
//! with it ([`ConntrackWatch`]: differences never underflow, counter resets are no growth).

use proptest::{collection::vec, prelude::*};

use super::{any_text, target};
use crate::capture::signals::conntrack::{CONNTRACK_COUNTERS, ConntrackWatch, parse_conntrack};

/// The rules of [`parse_conntrack`]: header of column names; per following line with as many
/// fields as the header, the hex value of each wanted column is added (saturating); a counter
/// is reported when at least one line had it.
fn model(text: &str) -> Vec<(&'static str, u64)> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let cols: Vec<&str> = header.split_whitespace().collect();
    let mut out = Vec::new();
    let rows: Vec<Vec<&str>> = lines
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|v| v.len() == cols.len())
        .collect();
    for name in CONNTRACK_COUNTERS {
        let Some(col) = cols.iter().position(|c| *c == name) else {
            continue;
        };
        let values: Vec<u64> = rows
            .iter()
            .filter_map(|r| u64::from_str_radix(r[col], 16).ok())
            .collect();
        if !values.is_empty() {
            out.push((name, values.iter().fold(0u64, |a, v| a.saturating_add(*v))));
        }
    }
    out
}

fn table() -> impl Strategy<Value = String> {
    let col = prop_oneof![
        prop::sample::select(CONNTRACK_COUNTERS.to_vec()).prop_map(str::to_owned),
        prop::sample::select(vec!["entries", "found", "new", "ignore", "delete"])
            .prop_map(str::to_owned),
        "[a-z_]{1,8}",
    ];
    let cell = prop_oneof![
        any::<u32>().prop_map(|v| format!("{v:08x}")),
        any::<u64>().prop_map(|v| format!("{v:x}")),
        Just("ffffffffffffffff".to_owned()),
        "[0-9a-gx+-]{0,17}",
    ];
    (vec(col, 0..8), vec(vec(cell, 0..9), 0..6), any::<bool>()).prop_map(|(cols, rows, tabs)| {
        let sep = if tabs { "\t" } else { "  " };
        let mut t = cols.join(sep);
        for r in rows {
            t.push('\n');
            t.push_str(&r.join(sep));
        }
        t
    })
}

target!(
    /// Generated and random tables agree with the rules.
    fuzz_conntrack_tables,
    prop_oneof![3 => table(), 1 => any_text(120)],
    |text: String| {
        prop_assert_eq!(parse_conntrack(&text), model(&text));
        Ok(())
    }
);

target!(
    /// Any sequence of readings (counters going up, down, missing): growth is reported exactly
    /// when a loss counter went up, by how much it went up, never a wrapped difference.
    fuzz_conntrack_growth,
    vec(
        (
            prop::option::of(prop_oneof![0u64..10, any::<u64>()]),
            prop::option::of(prop_oneof![0u64..10, any::<u64>()]),
        ),
        1..20
    ),
    |readings: Vec<(Option<u64>, Option<u64>)>| {
        let mut w = ConntrackWatch::default();
        let mut last: Option<(u64, u64)> = None;
        for (insert_failed, drop) in readings {
            let mut counters = Vec::new();
            if let Some(v) = insert_failed {
                counters.push(("insert_failed", v));
            }
            if let Some(v) = drop {
                counters.push(("drop", v));
            }
            let now = (insert_failed.unwrap_or(0), drop.unwrap_or(0));
            let want = last
                .filter(|b| now.0 > b.0 || now.1 > b.1)
                .map(|b| (now.0.saturating_sub(b.0), now.1.saturating_sub(b.1)));
            prop_assert_eq!(w.observe(&counters), want);
            last = Some(now);
        }
        Ok(())
    }
);
