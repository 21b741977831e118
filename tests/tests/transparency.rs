//! The tracer is transparent to the node: another tool's tc program (here a stand-in for the
//! VPC CNI network-policy agent, `tracer stub-policy`: `handle_ingress`, dropping DNS) keeps
//! deciding whether the tracer attached before or after it, in tcx and in netlink mode, and the
//! verdict names that program. A filter another tool deletes is attached again, and a killed
//! tracer's leftovers are removed by the next one.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;
use tracer_tests::{TracerProcess, clsact_filters, dig, lab, our_programs, privileged};

const NAME: &str = "kubernetes.default.svc.cluster.local";
const VERDICT_WAIT: Duration = Duration::from_secs(10);

/// A `tracer stub-policy` process holding its program on an interface of node A.
struct Stub {
    child: Child,
    ready: PathBuf,
}

impl Stub {
    fn start(iface: &str, mode: &str) -> Stub {
        let ready = std::env::temp_dir().join(format!("tracer-stub-{}-{mode}", std::process::id()));
        let _ = std::fs::remove_file(&ready);
        let child = Command::new("ip")
            .args(["netns", "exec", lab::NS_NODE_A])
            .arg(xtask::tracer::tracer_bin())
            .args([
                "stub-policy",
                "--iface",
                iface,
                "--mode",
                mode,
                "--ready-file",
            ])
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("stub starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.exists() {
            assert!(
                Instant::now() < deadline,
                "stub-policy not attached in time"
            );
            sleep(Duration::from_millis(50));
        }
        Stub { child, ready }
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.ready);
    }
}

/// The lab, pinned to replica A, and its client pod.
fn lab_with_client() -> (lab::LabGuard, lab::Pod) {
    let guard = lab::LabGuard::up().expect("lab up");
    lab::pin(lab::Pin::A).expect("pin a");
    let client = guard
        .topology()
        .pod("default", "client")
        .expect("client")
        .clone();
    (guard, client)
}

fn dropped_verdict(tracer: &TracerProcess, client_ip: &str) -> Value {
    tracer
        .wait_for(VERDICT_WAIT, |v| {
            v["schema"] == "tracer.flow/v1"
                && v["client"]["ip"] == client_ip
                && v["dns"]["qname"] == NAME
        })
        .unwrap_or_else(|| {
            panic!(
                "no verdict; stdout {:#?}\nstderr {}",
                tracer.lines(),
                tracer.stderr()
            )
        })
}

/// One case: the stub on the client pod's veth (ingress), attached `before` or after the
/// tracer, tracer in `mode`.
fn other_program_keeps_deciding(mode: &str, stub_mode: &str, before: bool) {
    if !privileged() {
        return;
    }
    let (guard, client) = lab_with_client();
    let args = ["--window", "2s", "--answered", "flows", "--tc-attach", mode];
    let (stub, tracer) = if before {
        let stub = Stub::start(&client.host_veth, stub_mode);
        (
            stub,
            TracerProcess::start(lab::NS_NODE_A, &args).expect("tracer"),
        )
    } else {
        let tracer = TracerProcess::start(lab::NS_NODE_A, &args).expect("tracer");
        (Stub::start(&client.host_veth, stub_mode), tracer)
    };
    // The other tool still decides: DNS from the pod is dropped...
    let out = dig(&client.netns, &["@198.19.0.10", NAME]);
    assert!(
        out.contains("timed out"),
        "{mode}/{stub_mode}: the policy must still drop DNS:\n{out}"
    );
    let v = dropped_verdict(&tracer, &client.ip.to_string());
    assert_eq!(v["verdict"], "dropped", "{v:#}");
    assert_eq!(v["drop"]["reason"], "TC_INGRESS", "{v:#}");
    assert_eq!(v["drop"]["direction"], "request");
    let progs = v["drop"]["programs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        progs
            .iter()
            .any(|p| p["name"] == "handle_ingress" && p["tool"] == "VPC CNI network-policy agent"),
        "the verdict names the program that dropped it: {v:#}"
    );
    let hint = v["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("Another datapath program dropped") && hint.contains("VPC CNI"),
        "{hint}"
    );
    // ...and what it lets through (TC_ACT_OK ends tc processing) still works.
    let http = lab::exec_in(
        &client.netns,
        &["socat", "-T2", "-", "TCP4:203.0.113.80:80"],
    )
    .expect("socat");
    assert!(
        String::from_utf8_lossy(&http.stdout).contains("hello"),
        "non-DNS traffic passes the policy"
    );
    drop(stub);
    drop(tracer);
    drop(guard);
}

#[test]
fn tcx_tracer_policy_filter_attached_before() {
    other_program_keeps_deciding("tcx", "netlink", true);
}

#[test]
fn tcx_tracer_policy_filter_attached_after() {
    other_program_keeps_deciding("tcx", "netlink", false);
}

#[test]
fn tcx_tracer_policy_tcx_link_attached_after() {
    other_program_keeps_deciding("tcx", "tcx", false);
}

#[test]
fn netlink_tracer_policy_filter_attached_before() {
    other_program_keeps_deciding("netlink", "netlink", true);
}

#[test]
fn netlink_tracer_policy_filter_attached_after() {
    other_program_keeps_deciding("netlink", "netlink", false);
}

/// Another tool deletes the tracer's filter (Cilium and Calico remove legacy filters when they
/// attach): the tracer notices on its next reconcile and attaches again.
#[test]
fn a_deleted_filter_is_attached_again() {
    if !privileged() {
        return;
    }
    let (guard, client) = lab_with_client();
    let tracer = TracerProcess::start(
        lab::NS_NODE_A,
        &[
            "--tc-attach",
            "netlink",
            "--reconcile-interval",
            "1s",
            "--answered",
            "flows",
            "--window",
            "2s",
        ],
    )
    .expect("tracer");
    assert!(clsact_filters(&client.host_veth).contains("tc_pod_in"));
    // Delete every filter under the veth's ingress hook, as another tool would.
    let out = lab::exec_in(
        lab::NS_NODE_A,
        &["tc", "filter", "del", "dev", &client.host_veth, "ingress"],
    )
    .expect("tc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!clsact_filters(&client.host_veth).contains("tc_pod_in"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !clsact_filters(&client.host_veth).contains("tc_pod_in") {
        assert!(
            Instant::now() < deadline,
            "not attached again:\n{}",
            tracer.stderr()
        );
        sleep(Duration::from_millis(200));
    }
    assert!(
        tracer.stderr().contains("attaching again"),
        "{}",
        tracer.stderr()
    );
    // And it works: a query from the pod is seen from its first hop again.
    let from = tracer.line_count();
    assert!(dig(&client.netns, &["@198.19.0.10", NAME]).contains("198.19.0.1"));
    let v = tracer
        .wait_for_from(from, VERDICT_WAIT, |v| {
            v["client"]["ip"] == client.ip.to_string().as_str()
        })
        .expect("verdict");
    assert_eq!(v["verdict"], "answered", "{v:#}");
    assert_eq!(
        v["path"][0]["interface"],
        client.host_veth.as_str(),
        "{v:#}"
    );
    drop(tracer);
    drop(guard);
}

/// The benchmark's baseline (`--empty-programs`, devtools build) attaches the empty program at
/// the hooks instead of the tracer's, and it only observes: queries are answered and the tracer
/// reports nothing of them. Without this, "empty programs / off" could measure the wrong thing.
#[test]
fn the_benchmark_baseline_attaches_only_the_empty_program() {
    if !privileged() {
        return;
    }
    let (guard, client) = lab_with_client();
    let tracer = TracerProcess::start(
        lab::NS_NODE_A,
        &[
            "--tc-attach",
            "netlink",
            "--empty-programs",
            "--answered",
            "flows",
            "--window",
            "1s",
        ],
    )
    .expect("tracer");
    let filters = clsact_filters(&client.host_veth);
    assert!(filters.contains("tc_empty"), "{filters}");
    assert!(!filters.contains("tc_pod_in"), "{filters}");
    assert!(!filters.contains("tc_pod_out"), "{filters}");
    let from = tracer.line_count();
    assert!(dig(&client.netns, &["@198.19.0.10", NAME]).contains("198.19.0.1"));
    let verdict = tracer.wait_for_from(from, Duration::from_secs(4), |v| {
        v["client"]["ip"] == client.ip.to_string().as_str()
    });
    assert!(verdict.is_none(), "{verdict:#?}");
    drop(tracer);
    drop(guard);
}

/// A tracer killed with SIGKILL in netlink mode leaves its filters; the next one removes them at
/// start, and when it stops nothing of either is left.
#[test]
fn a_killed_tracers_filters_are_removed_by_the_next() {
    if !privileged() {
        return;
    }
    let guard = lab::LabGuard::up().expect("lab up");
    let client = guard
        .topology()
        .pod("default", "client")
        .expect("client")
        .clone();
    let before: Vec<Value> = our_programs().iter().map(|p| p["id"].clone()).collect();
    let mut first =
        TracerProcess::start(lab::NS_NODE_A, &["--tc-attach", "netlink"]).expect("tracer");
    first.kill().expect("SIGKILL");
    assert!(
        clsact_filters(&client.host_veth).contains("tc_pod_in"),
        "a killed tracer leaves its filters (that is what is being tested)"
    );
    let mut second =
        TracerProcess::start(lab::NS_NODE_A, &["--tc-attach", "netlink"]).expect("tracer");
    assert!(
        second
            .stderr()
            .contains("removed a filter left by an earlier tracer"),
        "{}",
        second.stderr()
    );
    // Exactly one filter of ours per hook now (the second tracer's).
    let filters = clsact_filters(&client.host_veth);
    assert_eq!(filters.matches("name tc_pod_in").count(), 1, "{filters}");
    let status = second.stop().expect("stops");
    assert!(status.success(), "{}", second.stderr());
    for dev in [
        client.host_veth.as_str(),
        "eth0",
        "eth1",
        lab::BRANCH_ENI_IFNAME,
    ] {
        let f = clsact_filters(dev);
        assert!(!f.contains("tc_"), "filter left on {dev}:\n{f}");
    }
    let leaked: Vec<Value> = our_programs()
        .into_iter()
        .filter(|p| !before.contains(&p["id"]) && p.get("pids").is_none())
        .collect();
    assert!(leaked.is_empty(), "programs left loaded: {leaked:#?}");
    drop(guard);
}
