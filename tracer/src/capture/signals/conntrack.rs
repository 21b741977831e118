//! Node-level signals no packet event shows: the conntrack statistics of the tracer's network
//! namespace (the node's). `insert_failed` and `drop` grow when parallel A/AAAA queries from one
//! socket race in conntrack, the cause of the classic 5-second DNS timeouts.

/// Counters read from `/proc/net/stat/nf_conntrack`, summed over CPUs.
pub const CONNTRACK_COUNTERS: [&str; 6] = [
    "insert_failed",
    "drop",
    "early_drop",
    "clashres",
    "invalid",
    "search_restart",
];

/// Where the kernel publishes them (per network namespace).
pub const CONNTRACK_STAT: &str = "/proc/net/stat/nf_conntrack";

/// Parses the table: a header line of column names, then one line of hex values per CPU.
/// Unknown or malformed lines are skipped; absent columns are left out.
pub fn parse_conntrack(text: &str) -> Vec<(&'static str, u64)> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let columns: Vec<&str> = header.split_whitespace().collect();
    let mut sums = [0u64; CONNTRACK_COUNTERS.len()];
    let mut present = [false; CONNTRACK_COUNTERS.len()];
    let wanted: Vec<(usize, usize)> = CONNTRACK_COUNTERS
        .iter()
        .enumerate()
        .filter_map(|(i, name)| columns.iter().position(|c| c == name).map(|col| (i, col)))
        .collect();
    for line in lines {
        let values: Vec<&str> = line.split_whitespace().collect();
        if values.len() != columns.len() {
            continue;
        }
        for &(i, col) in &wanted {
            if let (Some(v), Some(sum), Some(p)) = (
                values
                    .get(col)
                    .and_then(|v| u64::from_str_radix(v, 16).ok()),
                sums.get_mut(i),
                present.get_mut(i),
            ) {
                *sum = sum.saturating_add(v);
                *p = true;
            }
        }
    }
    CONNTRACK_COUNTERS
        .iter()
        .zip(sums.iter().zip(present.iter()))
        .filter(|(_, (_, p))| **p)
        .map(|(name, (sum, _))| (*name, *sum))
        .collect()
}

/// Reads the node's conntrack counters; empty when conntrack is not loaded.
pub fn read_conntrack() -> Vec<(&'static str, u64)> {
    std::fs::read_to_string(CONNTRACK_STAT)
        .map(|t| parse_conntrack(&t))
        .unwrap_or_default()
}

/// Follows `insert_failed`/`drop` and says when they grow: the DNS A/AAAA insert race drops a
/// query inside conntrack (5 s client timeouts).
#[derive(Default)]
pub struct ConntrackWatch {
    last: Option<(u64, u64)>,
    unwarned: (super::Unwarned, super::Unwarned),
}

impl ConntrackWatch {
    /// Feeds one reading of the counters; warns when the loss counters grew.
    pub fn observe(&mut self, counters: &[(&'static str, u64)]) -> Option<(u64, u64)> {
        let get = |n: &str| {
            counters
                .iter()
                .find(|(k, _)| *k == n)
                .map_or(0, |(_, v)| *v)
        };
        let now = (get("insert_failed"), get("drop"));
        let grew = match self.last {
            Some(before) if now.0 > before.0 || now.1 > before.1 => Some((
                now.0.saturating_sub(before.0),
                now.1.saturating_sub(before.1),
            )),
            _ => None,
        };
        let now_t = std::time::Instant::now();
        let told =
            grew.map(|(i, d)| (self.unwarned.0.add(i, now_t), self.unwarned.1.add(d, now_t)));
        if let Some((i, d)) = told
            && (i.is_some() || d.is_some())
        {
            tracing::warn!(
                insert_failed = i.unwrap_or(0),
                drop = d.unwrap_or(0),
                "conntrack insert failures on this node: parallel A/AAAA queries from one socket \
                 race in conntrack and one is dropped (5 s DNS timeouts); `single-request-reopen` \
                 or NodeLocal DNSCache avoid it"
            );
        }
        self.last = Some(now);
        grew
    }
}

impl super::Signal for ConntrackWatch {
    fn sample(&mut self, _ifaces: &crate::capture::iface::IfaceTable) -> Vec<super::Reading> {
        let counters = read_conntrack();
        if counters.is_empty() {
            return Vec::new();
        }
        self.observe(&counters);
        counters
            .into_iter()
            .map(|(counter, value)| super::Reading {
                signal: "conntrack",
                interface: None,
                counter: counter.to_owned(),
                value,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
00000010  00000001 00000000 00000000 00000002 00000000 00000000 00000000 00000000 00000003 00000004 00000000 00000000  00000000 00000000 00000000 0000000a\n\
00000010  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000010 00000001 00000000 00000000  00000000 00000000 00000000 00000000\n";

    #[test]
    fn sums_over_cpus() {
        let got = parse_conntrack(SAMPLE);
        assert!(got.contains(&("insert_failed", 0x13)));
        assert!(got.contains(&("drop", 5)));
        assert!(got.contains(&("clashres", 1)));
        assert!(got.contains(&("search_restart", 10)));
        assert_eq!(got.len(), 6);
    }

    #[test]
    fn growth_is_reported_and_a_reset_never_underflows() {
        let mut w = ConntrackWatch::default();
        assert_eq!(w.observe(&[("insert_failed", 5), ("drop", 1)]), None);
        assert_eq!(
            w.observe(&[("insert_failed", 7), ("drop", 1)]),
            Some((2, 0))
        );
        // Counters reset (module reloaded): lower values are no growth and no underflow.
        assert_eq!(w.observe(&[("insert_failed", 0), ("drop", 0)]), None);
        assert_eq!(
            w.observe(&[("insert_failed", 1), ("drop", 0)]),
            Some((1, 0))
        );
    }

    #[test]
    fn odd_input() {
        assert!(parse_conntrack("").is_empty());
        assert!(parse_conntrack("entries insert_failed\nzz 1\n").contains(&("insert_failed", 1)));
        // Lines whose width differs from the header's are skipped.
        assert!(parse_conntrack("entries insert_failed\n1\n1 2 3\n").is_empty());
        assert!(parse_conntrack("no such columns\n1 2 3\n").is_empty());
    }
}
