//! The lab itself: up answers through each CoreDNS replica via the kube-dns ClusterIP, and down
//! leaves the machine's namespaces, processes and state directory as they were.

use std::process::Command;

use tracer_tests::{dig, lab, privileged};

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn up_answers_from_each_replica_and_down_leaves_nothing() {
    if !privileged() {
        return;
    }
    let lock = lab::LabLock::acquire().expect("lab lock");
    lab::down().expect("clean start");
    let before = netns_list();
    let topo = lab::up().expect("lab up");
    let client = topo.pod("default", "client").expect("client").clone();
    for (pin, replica) in [(lab::Pin::A, "coredns-a"), (lab::Pin::B, "coredns-b")] {
        lab::pin(pin).expect("pin");
        let out = dig(
            &client.netns,
            &["+short", "@198.19.0.10", "whoami.lab.tracer", "TXT"],
        );
        assert!(out.contains(replica), "pinned to {replica}: {out}");
    }
    assert!(netns_list().contains(lab::NS_NODE_A));
    lab::down().expect("lab down");
    assert_eq!(netns_list(), before, "ip netns list as before");
    assert!(
        !std::path::Path::new(lab::STATE_DIR).exists(),
        "state directory removed"
    );
    let ps = Command::new("pgrep")
        .args(["-f", "/run/tracer-lab/"])
        .output()
        .expect("pgrep");
    assert!(
        ps.stdout.is_empty(),
        "lab processes left: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
    drop(lock);
}
