//! `cargo xtask demo`, the first thing a user runs: the whole failure catalogue in the lab, with
//! names from the lab's real kube-apiserver and a second tracer in node B. Each scenario must
//! show the verdict the catalogue promises, and the rows whose fault lies in the VPC must say
//! which way the query died (node B's account, or node A's own for a replica on node A).

use serde_json::Value;
use tracer_tests::{apiserver_available, privileged};

fn verdicts<'a>(shown: &'a [xtask::demo::Shown], title: &str) -> &'a [Value] {
    let s = shown
        .iter()
        .find(|s| s.title == title)
        .unwrap_or_else(|| panic!("no scenario {title:?}"));
    &s.verdicts
}

/// The verdict kinds a scenario showed, in order.
fn kinds(vs: &[Value]) -> Vec<&str> {
    vs.iter()
        .map(|v| v["verdict"].as_str().unwrap_or("?"))
        .collect()
}

#[test]
fn demo_shows_every_row_and_which_way_the_vpc_rows_died() {
    if !privileged() || !apiserver_available() {
        return;
    }
    let shown = xtask::demo::run_shown().expect("the demo runs");
    let want: &[(&str, &[&str])] = &[
        ("Healthy: local CoreDNS replica", &["answered"]),
        ("Healthy: replica on node B", &["answered"]),
        (
            "Node security group allows only TCP between nodes",
            &["answered", "lost_beyond_node"],
        ),
        (
            "Pod security group (branch ENI) blocks DNS",
            &["lost_beyond_node"],
        ),
        ("NACL drops the return path", &["lost_beyond_node"]),
        ("NetworkPolicy / iptables drops DNS on node A", &["dropped"]),
        ("CoreDNS replica down (port closed)", &["rejected"]),
        ("CoreDNS replica alive but silent", &["unanswered"]),
        ("Pod egress with no NAT", &["lost_beyond_node"]),
        ("Pod egress with no route", &["dropped"]),
        (
            "rp_filter drops the reply (asymmetric routing)",
            &["dropped"],
        ),
        (
            "NXDOMAIN is an answer, not a network failure",
            &["answered"],
        ),
    ];
    for (title, kinds_wanted) in want {
        let vs = verdicts(&shown, title);
        assert_eq!(kinds(vs), *kinds_wanted, "{title}: {vs:#?}");
        for v in vs {
            assert_eq!(v["enrichment"], "ready", "names from the API server: {v:#}");
            assert!(v["client"]["pod"].is_string(), "{v:#}");
        }
    }
    // Every scenario is in the table above.
    assert_eq!(shown.len(), want.len(), "{shown:#?}");

    let finding = |title: &str| {
        let vs = verdicts(&shown, title);
        let lost = vs
            .iter()
            .find(|v| v["verdict"] == "lost_beyond_node")
            .unwrap_or_else(|| panic!("{title}: {vs:#?}"));
        (
            lost["peer"]["node"].as_str().unwrap_or("-").to_owned(),
            lost["peer"]["finding"].as_str().unwrap_or("-").to_owned(),
        )
    };
    let node_a = xtask::lab::NODE_A_NAME.to_owned();
    let node_b = xtask::lab::NODE_B_NAME.to_owned();
    assert_eq!(
        finding("Node security group allows only TCP between nodes"),
        (node_b.clone(), "request_lost".to_owned())
    );
    assert_eq!(
        finding("Pod security group (branch ENI) blocks DNS"),
        (node_a, "request_lost".to_owned()),
        "the replica runs on node A: node A's own account"
    );
    assert_eq!(
        finding("NACL drops the return path"),
        (node_b, "reply_lost".to_owned())
    );
}
