//! Attach manager: pods come and go while the tracer runs. A pod veth created after start-up is
//! attached without a restart (traffic on it is captured), a deleted and re-created one is
//! attached again, and after the tracer exits nothing of it is left in the kernel.

use std::{
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;
use tracer_tests::{TracerProcess, WAIT, dig, lab, our_programs, privileged};

const CHURN_NS: &str = "trl-a-churn";
const CHURN_IP: &str = "198.18.1.50";

fn sh(ns: &str, cmd: &str) {
    let out = lab::exec_in(ns, &["sh", "-c", cmd]).expect("runs");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Adds a VPC-CNI-shaped pod `default/<name>` with IP 198.18.1.50 to node A; returns its veth.
fn add_pod(name: &str) -> String {
    let veth = lab::host_veth_name("eni", "default", name);
    if !std::path::Path::new("/run/netns").join(CHURN_NS).exists() {
        let _ = std::process::Command::new("ip")
            .args(["netns", "add", CHURN_NS])
            .status();
    }
    sh(
        lab::NS_NODE_A,
        &format!("ip link add {veth} type veth peer name eth0 netns {CHURN_NS}"),
    );
    sh(
        lab::NS_NODE_A,
        &format!("ip link set {veth} up && ip route add {CHURN_IP}/32 dev {veth} scope link"),
    );
    let mac_out = lab::exec_in(
        lab::NS_NODE_A,
        &["cat", &format!("/sys/class/net/{veth}/address")],
    )
    .expect("mac");
    let mac = String::from_utf8_lossy(&mac_out.stdout).trim().to_owned();
    sh(
        CHURN_NS,
        &format!(
            "ip link set lo up && ip addr add {CHURN_IP}/32 dev eth0 && ip link set eth0 up && \
             ip route add 169.254.1.1 dev eth0 scope link && ip route add default via 169.254.1.1 dev eth0 && \
             ip neigh add 169.254.1.1 lladdr {mac} dev eth0 nud permanent"
        ),
    );
    veth
}

fn del_pod(veth: &str) {
    sh(lab::NS_NODE_A, &format!("ip link del {veth}"));
}

fn wait_attached(tracer: &TracerProcess, veth: &str, nth: usize) {
    let deadline = Instant::now() + WAIT;
    let needle = format!("iface={veth}");
    let attached = |s: String| {
        s.lines()
            .filter(|l| l.contains(&needle) && l.contains(" attached"))
            .count()
    };
    while attached(tracer.stderr()) < nth {
        assert!(
            Instant::now() < deadline,
            "{veth} not attached:\n{}",
            tracer.stderr()
        );
        sleep(Duration::from_millis(50));
    }
}

#[test]
fn new_and_recreated_pod_veths_are_captured_and_nothing_is_left_tcx() {
    churn("tcx");
}

/// The same with netlink clsact filters (what kernels before 6.6 get): filters are removed one
/// by one on exit, so none may be left under the clsact qdiscs.
#[test]
fn new_and_recreated_pod_veths_are_captured_and_nothing_is_left_netlink() {
    churn("netlink");
}

fn churn(mode: &str) {
    if !privileged() {
        return;
    }
    let _guard = lab::LabGuard::up().expect("lab up");
    lab::pin(lab::Pin::A).expect("pin a");
    let before: Vec<Value> = our_programs()
        .into_iter()
        .map(|p| p["id"].clone())
        .collect();
    let mut tracer =
        TracerProcess::start(lab::NS_NODE_A, &["--events", "--tc-attach", mode]).expect("tracer");

    for round in 1..=2 {
        let veth = add_pod("churn");
        wait_attached(&tracer, &veth, round);
        // Only this round's lines count (the veth name is the same in both rounds).
        let from = tracer.line_count();
        let out = dig(
            CHURN_NS,
            &["@198.19.0.10", "kubernetes.default.svc.cluster.local"],
        );
        assert!(
            out.contains("198.19.0.1"),
            "round {round}: no answer:\n{out}"
        );
        let seen = tracer.wait_for_from(from, WAIT, |v| {
            v["iface"]["name"] == veth.as_str()
                && v["hook"] == "egress"
                && v["dns"]["response"] == true
        });
        let count = tracer
            .lines()
            .iter()
            .skip(from)
            .filter(|v| v["iface"]["name"] == veth.as_str())
            .count();
        assert!(
            seen.is_some(),
            "round {round}: answer on new veth not captured: {:#?}",
            tracer.lines()
        );
        assert!(
            count >= 2,
            "round {round}: query and answer on {veth}: {count}"
        );
        del_pod(&veth);
    }
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", CHURN_NS])
        .status();

    let status = tracer.stop().expect("tracer stops on SIGINT");
    assert!(
        status.success(),
        "clean exit: {status}\n{}",
        tracer.stderr()
    );
    // Nothing left: no program of ours that no process holds (a leaked tc filter or link would
    // keep one alive), and no tc/tcx attachment in node A.
    let leaked: Vec<Value> = our_programs()
        .into_iter()
        .filter(|p| !before.contains(&p["id"]) && p.get("pids").is_none())
        .collect();
    assert!(leaked.is_empty(), "programs left loaded: {leaked:#?}");
    let net = lab::exec_in(lab::NS_NODE_A, &["bpftool", "net", "show"]).expect("bpftool net");
    let net = String::from_utf8_lossy(&net.stdout);
    assert!(!net.contains("tc_"), "attachments left in node A:\n{net}");
    for dev in ["eth0", "eth1", lab::BRANCH_ENI_IFNAME] {
        for dir in ["ingress", "egress"] {
            let out = lab::exec_in(lab::NS_NODE_A, &["tc", "filter", "show", "dev", dev, dir])
                .expect("tc");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                !text.contains("bpf"),
                "{mode}: filter left on {dev} {dir}:\n{text}"
            );
        }
    }
}
