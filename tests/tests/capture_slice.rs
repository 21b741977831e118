//! Foundation slice: the tracer in node A sees a pod's DNS query to the kube-dns ClusterIP on
//! the pod's veth, and the answer coming back on the same veth.

use serde_json::Value;
use tracer_tests::{WAIT, dig, lab, lab_with_tracer, privileged};

fn is(v: &Value, hook: &str, iface: &str, response: bool, qname: &str) -> bool {
    v["type"] == "packet"
        && v["hook"] == hook
        && v["iface"]["name"] == iface
        && v["dns"]["response"] == response
        && v["dns"]["qname"] == qname
}

#[test]
fn query_and_answer_seen_on_pod_veth() {
    if !privileged() {
        return;
    }
    let (guard, tracer) = lab_with_tracer(lab::Pin::Both, &[], &["--events"]);
    let client = guard
        .topology()
        .pod("default", "client")
        .expect("client pod")
        .clone();

    let out = dig(
        &client.netns,
        &["@198.19.0.10", "kubernetes.default.svc.cluster.local", "A"],
    );
    assert!(out.contains("198.19.0.1"), "dig got no answer:\n{out}");

    let query = tracer
        .wait_for(WAIT, |v| {
            is(
                v,
                "ingress",
                &client.host_veth,
                false,
                "kubernetes.default.svc.cluster.local",
            )
        })
        .unwrap_or_else(|| {
            panic!(
                "query not seen on {}; lines: {:#?}",
                client.host_veth,
                tracer.lines()
            )
        });
    assert_eq!(query["src"], client.ip.to_string());
    assert_eq!(
        query["dst"], "198.19.0.10",
        "pod veth ingress sees the ClusterIP (pre-DNAT)"
    );
    assert_eq!(query["iface"]["kind"], "pod_veth");
    let id = query["dns"]["id"].clone();

    let answer = tracer
        .wait_for(WAIT, |v| {
            is(
                v,
                "egress",
                &client.host_veth,
                true,
                "kubernetes.default.svc.cluster.local",
            ) && v["dns"]["id"] == id
        })
        .unwrap_or_else(|| panic!("answer not seen; lines: {:#?}", tracer.lines()));
    assert_eq!(answer["src"], "198.19.0.10", "un-DNATed on the way back");
    assert_eq!(answer["dns"]["rcode"], "NOERROR");
    assert_eq!(answer["dst"], client.ip.to_string());
}
