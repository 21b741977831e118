//! Cross-node verdicts, end to end: a tracer in node A and one in node B, both watching the
//! real kube-apiserver of the lab (which knows where each tracer runs), talking mutual TLS
//! with material from `tracer certs`. A DNS query from node A to the CoreDNS replica on node B
//! that dies in the VPC gets node B's account: the request never arrived (node security group,
//! catalogue row 2; the branch ENI's pod security group, row 3) or the replica's answer left
//! node B and never came back (NACL on the return path, row 4). With node B's tracer stopped,
//! the verdict says node B could not be asked. A client without the cluster's certificate is
//! refused and learns nothing.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tracer_tests::{TracerProcess, apiserver_available, dig, lab, privileged};
use xtask::apiserver::{self, ApiServer};

const PEER_PORT: u16 = 9966;
const NS: &str = "tracer-system";
const METRICS: &str = "127.0.0.1:9990";

/// `tracer certs --out dir`: a CA, the shared leaf and its key.
fn make_certs(dir: &Path) {
    let out = Command::new(xtask::tracer::tracer_bin())
        .args(["certs", "--out"])
        .arg(dir)
        .output()
        .expect("tracer certs runs");
    assert!(
        out.status.success(),
        "tracer certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn start_tracer(netns: &str, node: &str, ip: &str, kubeconfig: &str, tls: &str) -> TracerProcess {
    let listen = format!("{ip}:{PEER_PORT}");
    let socket = format!("/run/tracer-peer-test-{node}.sock");
    TracerProcess::start(
        netns,
        &[
            "--window",
            "2s",
            "--answered",
            "flows",
            "--kubeconfig",
            kubeconfig,
            "--node-name",
            node,
            "--peer-listen",
            &listen,
            "--peer-tls",
            tls,
            "--peer-namespace",
            NS,
            "--socket",
            &socket,
            "--metrics-addr",
            METRICS,
        ],
    )
    .unwrap_or_else(|e| panic!("tracer in {node}: {e:#}"))
}

/// Sends a query from `netns` and returns node A's verdict for it.
fn query(tracer: &TracerProcess, netns: &str, client_ip: &str, qname: &str) -> Value {
    let from = tracer.line_count();
    dig(netns, &["@198.19.0.10", qname]);
    tracer
        .wait_for_from(from, Duration::from_secs(10), |v| {
            v["schema"] == "tracer.flow/v1"
                && v["client"]["ip"] == client_ip
                && v["dns"]["qname"] == qname
        })
        .unwrap_or_else(|| {
            panic!(
                "no verdict for {qname}: {:#?}\n{}",
                tracer.lines(),
                tracer.stderr()
            )
        })
}

/// Waits until node A's tracer knows the replica's node (names in verdicts).
fn until_named(tracer: &TracerProcess, netns: &str, client_ip: &str) {
    for n in 0..60 {
        let v = query(tracer, netns, client_ip, &format!("probe{n}.lab.tracer"));
        if v["enrichment"] == "ready" && v["server"]["node"] == lab::NODE_B_NAME {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("node A's tracer never named node B:\n{}", tracer.stderr());
}

fn assert_peer(v: &Value, finding: &str) {
    assert_eq!(v["verdict"], "lost_beyond_node", "{v:#}");
    assert_eq!(v["peer"]["node"], lab::NODE_B_NAME, "{v:#}");
    assert_eq!(v["peer"]["finding"], finding, "{v:#}");
}

#[test]
fn node_b_says_which_way_the_query_died() {
    if !privileged() || !apiserver_available() {
        return;
    }
    let guard = lab::LabGuard::up().expect("lab up");
    let topo = guard.topology().clone();
    let api = ApiServer::start_with(apiserver::lab_vpc_options()).expect("API server");
    api.seed_lab(&topo).expect("seeding the lab");
    api.seed_tracer_pods(
        NS,
        &[
            (lab::NODE_A_NAME, lab::NODE_A_IP),
            (lab::NODE_B_NAME, lab::NODE_B_IP),
        ],
    )
    .expect("seeding the tracer pods");
    let kubeconfig = api.tracer_kubeconfig().to_string_lossy().into_owned();
    let tls_dir = std::env::temp_dir().join(format!("tracer-peer-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tls_dir);
    make_certs(&tls_dir);
    let tls = tls_dir.to_string_lossy().into_owned();

    let mut b = start_tracer(
        lab::NS_NODE_B,
        lab::NODE_B_NAME,
        &lab::NODE_B_IP.to_string(),
        &kubeconfig,
        &tls,
    );
    let a = start_tracer(
        lab::NS_NODE_A,
        lab::NODE_A_NAME,
        &lab::NODE_A_IP.to_string(),
        &kubeconfig,
        &tls,
    );
    let client = topo.pod("default", "client").expect("client").clone();
    let sg = topo.pod("default", "sg-client").expect("sg-client").clone();
    let ip = client.ip.to_string();
    lab::pin(lab::Pin::B).expect("pin b");
    until_named(&a, &client.netns, &ip);

    // Row 2: UDP 53 between the nodes is dropped by the node security group.
    lab::set_failure(lab::Failure::NodeSgTcpOnly, true).expect("failure on");
    let v = query(&a, &client.netns, &ip, "row2.lab.tracer");
    assert_peer(&v, "request_lost");
    assert!(v["peer"]["arrived"].is_null(), "{v:#}");
    let hint = v["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("never arrived") && hint.contains("security group"),
        "the hint says the request was lost and what to check: {hint}"
    );
    lab::set_failure(lab::Failure::NodeSgTcpOnly, false).expect("failure off");

    // Row 3: the branch ENI's pod security group blocks DNS.
    lab::set_failure(lab::Failure::PodSgNoDns, true).expect("failure on");
    let v = query(&a, &sg.netns, &sg.ip.to_string(), "row3.lab.tracer");
    assert_peer(&v, "request_lost");
    lab::set_failure(lab::Failure::PodSgNoDns, false).expect("failure off");

    // Row 4: the replica answered; the NACL drops the answer on the way back.
    lab::set_failure(lab::Failure::NaclReturn, true).expect("failure on");
    let v = query(&a, &client.netns, &ip, "row4.lab.tracer");
    assert_peer(&v, "reply_lost");
    let row4 = v.clone();
    assert_eq!(v["peer"]["arrived"]["interface"], "eth0", "{v:#}");
    assert!(v["peer"]["reply_left"]["time"].is_string(), "{v:#}");
    let hint = v["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("reply") && hint.contains("NACL"),
        "the hint points at the return path: {hint}"
    );
    lab::set_failure(lab::Failure::NaclReturn, false).expect("failure off");

    // Node B's own stream says nothing false about these queries: its side was delivered
    // and answered (row 4), or it never saw them.
    for v in b.lines() {
        if v["dns"]["qname"] == "row4.lab.tracer" {
            assert_ne!(v["verdict"], "lost_beyond_node", "{v:#}");
        }
    }

    // A client without the cluster's certificate is refused and gets nothing.
    let leaked = plain_client(lab::NS_NODE_A, &lab::NODE_B_IP.to_string());
    assert!(
        !leaked.contains("answers") && !leaked.contains("198.18."),
        "a client without a certificate got: {leaked}"
    );
    let metrics = b_metrics();
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tracer_peer_service_total{counter=\"refused\"} "))
        .and_then(|n| n.trim().parse::<f64>().ok());
    assert!(
        refused.is_some_and(|n| n >= 1.0),
        "node B counts the refused client:\n{metrics}"
    );
    let asks = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tracer_peer_service_total{counter=\"asks\"} "))
        .and_then(|n| n.trim().parse::<f64>().ok());
    assert!(
        asks.is_some_and(|n| n >= 3.0),
        "node B counts the questions it answered:\n{metrics}"
    );
    eprintln!("row 4 verdict as node A printed it:\n{row4:#}");

    // Node B's tracer is gone: node A says it could not ask, and why.
    b.stop().expect("stop node B's tracer");
    lab::set_failure(lab::Failure::NodeSgTcpOnly, true).expect("failure on");
    let v = query(&a, &client.netns, &ip, "gone.lab.tracer");
    assert_peer(&v, "unknown");
    assert_eq!(v["peer"]["reason"], "unreachable", "{v:#}");
    lab::set_failure(lab::Failure::NodeSgTcpOnly, false).expect("failure off");
    let hint = v["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("could not say"),
        "the hint says node B could not be asked: {hint}"
    );
    drop(a);
    drop(b);

    // Without the TLS material (the Secret was never made) the tracer still runs, says that
    // cross-node verdicts are off and how to turn them on.
    let empty = tls_dir.join("missing");
    let mut c = start_tracer(
        lab::NS_NODE_B,
        lab::NODE_B_NAME,
        &lab::NODE_B_IP.to_string(),
        &kubeconfig,
        &empty.to_string_lossy(),
    );
    let err = c.stderr();
    assert!(
        err.contains("cross-node verdicts are off") && err.contains("tracer certs"),
        "{err}"
    );
    c.stop().expect("stop");
    drop(api);
    let _ = std::fs::remove_dir_all(&tls_dir);
}

/// Connects to the peer port from `netns` without TLS and sends a request line; returns
/// whatever came back.
fn plain_client(netns: &str, ip: &str) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/{ip}/{PEER_PORT}; \
         printf '%s\\n' '{{\"v\":1,\"asks\":[]}}' >&3; timeout 3 cat <&3 | head -c 4096; true"
    );
    let out = lab::exec_in(netns, &["bash", "-c", &script]).expect("bash in netns");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Node B's metrics (the default listener, inside node B's namespace).
fn b_metrics() -> String {
    let out = lab::exec_in(
        lab::NS_NODE_B,
        &[
            "curl",
            "-s",
            "--max-time",
            "3",
            &format!("http://{METRICS}/metrics"),
        ],
    )
    .expect("curl in node B");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
