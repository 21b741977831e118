//! Verdicts, one test per row of the failure catalogue (README, "Reading a verdict" and "The lab"): the lab is broken in a
//! known way, a pod queries kube-dns (or connects out), and the tracer in node A must print the
//! stated verdict JSON — verdict, where, drop reason, egress interface.

use std::time::{Duration, Instant};

use serde_json::Value;
use tracer_tests::{TracerProcess, dig, lab, lab_with_tracer, privileged};

/// Verdict window used by these tests (short, so tests are quick).
const WINDOW: &str = "2s";
/// How long to wait for a verdict line: the window plus slack.
const VERDICT_WAIT: Duration = Duration::from_secs(8);

/// Fields drop in order: the tracer stops before the lab is torn down.
struct Case {
    tracer: TracerProcess,
    topo: lab::Topology,
    _guard: lab::LabGuard,
}

fn setup(pin: lab::Pin, failures: &[lab::Failure]) -> Case {
    let (guard, tracer) = lab_with_tracer(
        pin,
        failures,
        &[&["--window", WINDOW][..], &tracer_tests::PER_FLOW].concat(),
    );
    let topo = guard.topology().clone();
    Case {
        _guard: guard,
        tracer,
        topo,
    }
}

impl Case {
    fn pod(&self, ns: &str, name: &str) -> lab::Pod {
        self.topo.pod(ns, name).expect("pod in topology").clone()
    }

    /// The verdict for the DNS query of `qname` from `client_ip`.
    fn dns_verdict(&self, client_ip: &str, qname: &str) -> Value {
        self.tracer
            .wait_for(VERDICT_WAIT, |v| {
                v["schema"] == "tracer.flow/v1"
                    && v["client"]["ip"] == client_ip
                    && v["dns"]["qname"] == qname
            })
            .unwrap_or_else(|| {
                panic!(
                    "no verdict for {qname} from {client_ip}; stdout: {:#?}\nstderr: {}",
                    self.tracer.lines(),
                    self.tracer.stderr()
                )
            })
    }
}

const NAME: &str = "kubernetes.default.svc.cluster.local";

#[test]
fn row01_healthy_local_and_remote_replica() {
    if !privileged() {
        return;
    }
    let c = setup(lab::Pin::A, &[]);
    let client = c.pod("default", "client");
    assert!(dig(&client.netns, &["@198.19.0.10", NAME]).contains("198.19.0.1"));
    let v = c.dns_verdict(&client.ip.to_string(), NAME);
    assert_eq!(v["verdict"], "answered", "{v:#}");
    assert_eq!(v["dns"]["rcode"], "NOERROR");
    assert_eq!(
        v["server"]["ip"],
        lab::COREDNS_A_IP.to_string(),
        "replica after DNAT: {v:#}"
    );
    assert_eq!(v["server"]["service_ip"], "198.19.0.10");
    assert!(
        v["dns"]["latency_ms"]
            .as_f64()
            .is_some_and(|l| (0.0..1000.0).contains(&l)),
        "{v:#}"
    );

    lab::pin(lab::Pin::B).expect("pin b");
    let name = "web.shop.svc.cluster.local";
    assert!(dig(&client.netns, &["@198.19.0.10", name]).contains("198.19.0.80"));
    let v = c.dns_verdict(&client.ip.to_string(), name);
    assert_eq!(v["verdict"], "answered", "{v:#}");
    assert_eq!(v["server"]["ip"], lab::COREDNS_B_IP.to_string());
    assert_eq!(v["egress_interface"]["name"], "eth0", "{v:#}");
}

/// Default output: healthy answers are summarised — one line per client, replica, qtype and
/// rcode per interval, with the number of answers and their latency — while a failed query in
/// the same run still gets its own line.
#[test]
fn row01_healthy_answers_are_summarised_by_default() {
    if !privileged() {
        return;
    }
    let (guard, tracer) = lab_with_tracer(
        lab::Pin::A,
        &[],
        &["--window", WINDOW, "--summary-interval", "1s"],
    );
    let client = guard
        .topology()
        .pod("default", "client")
        .expect("client")
        .clone();
    for _ in 0..5 {
        assert!(dig(&client.netns, &["@198.19.0.10", NAME]).contains("198.19.0.1"));
    }
    assert!(
        dig(
            &client.netns,
            &["@198.19.0.10", "nosuch.default.svc.cluster.local"]
        )
        .contains("NXDOMAIN")
    );
    let noerror = |v: &Value| {
        v["record"] == "summary" && v["dns"]["rcode"] == "NOERROR" && v["dns"]["qtype"] == "A"
    };
    let first = tracer
        .wait_for(VERDICT_WAIT, noerror)
        .unwrap_or_else(|| panic!("no summary line: {:#?}", tracer.lines()));
    // Give the interval that may still hold some of the answers time to end.
    std::thread::sleep(Duration::from_millis(1500));
    let lines = tracer.lines();
    let count: u64 = lines
        .iter()
        .filter(|v| noerror(v))
        .filter_map(|v| v["count"].as_u64())
        .sum();
    assert_eq!(count, 5, "five answers in the summaries: {lines:#?}");
    assert_eq!(first["verdict"], "answered");
    assert_eq!(first["evidence"], "complete");
    assert_eq!(first["client"]["ip"], client.ip.to_string());
    assert_eq!(
        first["server"]["ip"],
        lab::COREDNS_A_IP.to_string(),
        "the replica: {first:#}"
    );
    assert!(
        first["latency_ms"]["p50"].as_f64().is_some_and(|l| l > 0.0),
        "{first:#}"
    );
    assert!(
        !lines
            .iter()
            .any(|v| v["record"] != "summary" && v["verdict"] == "answered"),
        "no per-query answered lines by default: {lines:#?}"
    );
    let nx = lines
        .iter()
        .find(|v| v["record"] == "summary" && v["dns"]["rcode"] == "NXDOMAIN")
        .unwrap_or_else(|| panic!("NXDOMAIN summarised too: {lines:#?}"));
    assert_eq!(nx["count"], 1);
}

#[test]
fn row02_node_sg_allows_only_tcp() {
    if !privileged() {
        return;
    }
    let c = setup(lab::Pin::B, &[lab::Failure::NodeSgTcpOnly]);
    let client = c.pod("default", "client");
    // TCP 53 to the same replica works...
    assert!(
        dig(
            &client.netns,
            &["+tcp", "@198.19.0.10", "web.shop.svc.cluster.local"]
        )
        .contains("198.19.0.80")
    );
    // ...UDP 53 does not.
    let sent = Instant::now();
    assert!(dig(&client.netns, &["@198.19.0.10", NAME]).contains("timed out"));
    let v = c.dns_verdict(&client.ip.to_string(), NAME);
    let took = sent.elapsed();
    assert_eq!(v["verdict"], "lost_beyond_node", "{v:#}");
    assert_eq!(v["evidence"], "complete");
    assert_eq!(v["where"]["interface"], "eth0", "{v:#}");
    assert_eq!(v["egress_interface"]["name"], "eth0");
    assert_eq!(v["egress_interface"]["kind"], "uplink");
    assert_eq!(v["server"]["ip"], lab::COREDNS_B_IP.to_string());
    let hint = v["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("TCP"),
        "hint must say TCP to the same server works: {hint}"
    );
    assert!(hint.contains("eth0") && hint.contains("UDP"), "{hint}");
    assert!(
        took < Duration::from_millis(3_000 + 500),
        "verdict within window + 1 s of the query: {took:?}"
    );
}

#[test]
fn row03_pod_security_group_on_branch_eni() {
    if !privileged() {
        return;
    }
    let c = setup(lab::Pin::A, &[lab::Failure::PodSgNoDns]);
    let sg = c.pod("default", "sg-client");
    assert!(dig(&sg.netns, &["@198.19.0.10", NAME]).contains("timed out"));
    let v = c.dns_verdict(&sg.ip.to_string(), NAME);
    assert_eq!(v["verdict"], "lost_beyond_node", "{v:#}");
    assert_eq!(v["where"]["interface"], lab::BRANCH_ENI_IFNAME);
    assert_eq!(v["egress_interface"]["name"], lab::BRANCH_ENI_IFNAME);
    assert_eq!(v["egress_interface"]["kind"], "branch_eni");
    assert_eq!(v["egress_interface"]["vlan"], lab::BRANCH_VLAN_ID);
    // The other pod on the node is unaffected.
    let client = c.pod("default", "client");
    assert!(dig(&client.netns, &["@198.19.0.10", NAME]).contains("198.19.0.1"));
    assert_eq!(
        c.dns_verdict(&client.ip.to_string(), NAME)["verdict"],
        "answered"
    );
}

#[test]
fn row04_nacl_blocks_return_path() {
    if !privileged() {
        return;
    }
    let c = setup(lab::Pin::B, &[lab::Failure::NaclReturn]);
    let client = c.pod("default", "client");
    assert!(dig(&client.netns, &["@198.19.0.10", NAME]).contains("timed out"));
    let v = c.dns_verdict(&client.ip.to_string(), NAME);
    assert_eq!(v["verdict"], "lost_beyond_node", "{v:#}");
    assert_eq!(v["where"]["interface"], "eth0");
    let hint = v["hint"].as_str().unwrap_or_default().to_lowercase();
    assert!(hint.contains("nacl") || hint.contains("return"), "{hint}");
}

#[test]
fn row05_iptables_drop_on_node() {
    if !privileged() {
        return;
    }
    let c = setup(lab::Pin::Both, &[lab::Failure::NetpolDropDns]);
    let client = c.pod("default", "client");
    assert!(dig(&client.netns, &["@198.19.0.10", NAME]).contains("timed out"));
    let v = c.dns_verdict(&client.ip.to_string(), NAME);
    assert_eq!(v["verdict"], "dropped", "{v:#}");
    assert_eq!(v["drop"]["reason"], "NETFILTER_DROP");
    assert!(
        v["drop"]["location"]
            .as_str()
            .is_some_and(|l| l.starts_with("nft_do_chain")),
        "{v:#}"
    );
    assert_eq!(v["drop"]["direction"], "request");
    assert_eq!(v["where"]["interface"], client.host_veth.as_str());
}

#[test]
fn row06_replica_port_closed() {
    if !privileged() {
        return;
    }
    let c = setup(lab::Pin::A, &[lab::Failure::ReplicaDownA]);
    let client = c.pod("default", "client");
    dig(&client.netns, &["@198.19.0.10", NAME]);
    let v = c.dns_verdict(&client.ip.to_string(), NAME);
    assert_eq!(v["verdict"], "rejected", "{v:#}");
    assert_eq!(v["server"]["ip"], lab::COREDNS_A_IP.to_string());
    let hint = v["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("unreachable") || hint.contains("NO_SOCKET"),
        "{hint}"
    );
}

#[test]
fn row07_replica_silent() {
    if !privileged() {
        return;
    }
    let c = setup(lab::Pin::A, &[lab::Failure::ReplicaSilentA]);
    let client = c.pod("default", "client");
    let coredns_a = c.pod("kube-system", "coredns-a");
    assert!(dig(&client.netns, &["@198.19.0.10", NAME]).contains("timed out"));
    let v = c.dns_verdict(&client.ip.to_string(), NAME);
    assert_eq!(v["verdict"], "unanswered", "{v:#}");
    assert_eq!(v["where"]["interface"], coredns_a.host_veth.as_str());
}

fn connect_out(ns: &str) -> String {
    let out = lab::exec_in(
        ns,
        &["socat", "-T2", "-", "TCP:203.0.113.80:80,connect-timeout=2"],
    )
    .expect("socat runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn egress_verdict(c: &Case, client_ip: &str) -> Value {
    c.tracer
        .wait_for(VERDICT_WAIT, |v| {
            v["kind"] == "egress"
                && v["client"]["ip"] == client_ip
                && v["server"]["ip"] == "203.0.113.80"
        })
        .unwrap_or_else(|| panic!("no egress verdict; stdout: {:#?}", c.tracer.lines()))
}

#[test]
fn row08_egress_no_nat_and_no_route() {
    if !privileged() {
        return;
    }
    let c = setup(lab::Pin::Both, &[]);
    let client = c.pod("default", "client");
    assert!(
        connect_out(&client.netns).contains("hello"),
        "healthy egress first"
    );
    assert_eq!(
        egress_verdict(&c, &client.ip.to_string())["verdict"],
        "established"
    );

    lab::set_failure(lab::Failure::EgressNoNat, true).expect("no nat");
    let _ = connect_out(&client.netns);
    let lost = c
        .tracer
        .wait_for(VERDICT_WAIT, |v| {
            v["kind"] == "egress" && v["verdict"] == "lost_beyond_node"
        })
        .unwrap_or_else(|| panic!("no lost egress verdict: {:#?}", c.tracer.lines()));
    assert_eq!(lost["egress_interface"]["name"], "eth0", "{lost:#}");
    lab::set_failure(lab::Failure::EgressNoNat, false).expect("nat back");

    lab::set_failure(lab::Failure::EgressNoRoute, true).expect("no route");
    let _ = connect_out(&client.netns);
    let dropped = c
        .tracer
        .wait_for(VERDICT_WAIT, |v| {
            v["kind"] == "egress" && v["verdict"] == "dropped"
        })
        .unwrap_or_else(|| panic!("no dropped egress verdict: {:#?}", c.tracer.lines()));
    assert!(
        dropped["drop"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("NOROUTE")),
        "{dropped:#}"
    );
}

#[test]
fn row09_rp_filter_drops_reply() {
    if !privileged() {
        return;
    }
    let c = setup(lab::Pin::B, &[lab::Failure::RpFilter]);
    let client = c.pod("default", "client");
    assert!(dig(&client.netns, &["@198.19.0.10", NAME]).contains("timed out"));
    let v = c.dns_verdict(&client.ip.to_string(), NAME);
    assert_eq!(v["verdict"], "dropped", "{v:#}");
    assert_eq!(v["drop"]["reason"], "IP_RPFILTER");
    assert_eq!(v["drop"]["direction"], "response");
    assert_eq!(v["where"]["interface"], "eth1");
}

#[test]
fn row10_nxdomain_is_an_answer() {
    if !privileged() {
        return;
    }
    let c = setup(lab::Pin::Both, &[]);
    let client = c.pod("default", "client");
    let name = "nosuch.default.svc.cluster.local";
    assert!(dig(&client.netns, &["@198.19.0.10", name]).contains("NXDOMAIN"));
    let v = c.dns_verdict(&client.ip.to_string(), name);
    assert_eq!(v["verdict"], "answered", "{v:#}");
    assert_eq!(v["dns"]["rcode"], "NXDOMAIN");
}

/// A healthy connection from an address that is not its pod's (a misconfigured pod: an extra
/// address on its interface, routed back to its veth, so the handshake completes) is not
/// counted into the default summary of established connections: it gets a line of its own with
/// `client.veth_pod` and no pod name, like any flow whose source is not its veth's pod.
#[test]
fn a_healthy_connection_from_an_address_not_its_pods_keeps_its_own_line() {
    if !privileged() {
        return;
    }
    let topology = lab::topology_path().to_string_lossy().into_owned();
    let (guard, tracer) = lab_with_tracer(
        lab::Pin::A,
        &[],
        &[
            "--window",
            WINDOW,
            "--summary-interval",
            "2s",
            "--lab-metadata",
            &topology,
        ],
    );
    let topo = guard.topology().clone();
    let client = topo.pod("default", "client").expect("client").clone();
    let [a, b, c, _] = client.ip.octets();
    let extra = std::net::Ipv4Addr::new(a, b, c, 250);
    assert!(
        topo.pods.iter().all(|p| p.ip != extra),
        "{extra} must belong to no pod"
    );
    let extra = extra.to_string();
    lab::exec_in(
        &client.netns,
        &["ip", "addr", "add", &format!("{extra}/32"), "dev", "eth0"],
    )
    .expect("address added");
    lab::exec_in(
        lab::NS_NODE_A,
        &[
            "ip",
            "route",
            "add",
            &format!("{extra}/32"),
            "dev",
            &client.host_veth,
        ],
    )
    .expect("route back to the veth");
    let port = 8083u16;
    let mut listener = xtask::egress_load::listen(None, port).expect("listener");
    let connect = format!(
        "import socket; s = socket.socket(); s.bind(('{extra}', 0)); \
         s.connect(('203.0.113.80', {port})); s.close()"
    );
    let out = lab::exec_in(&client.netns, &["python3", "-c", &connect]).expect("python runs");
    let _ = listener.kill();
    let _ = listener.wait();
    assert!(
        out.status.success(),
        "the connection must succeed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = tracer
        .wait_for(VERDICT_WAIT, |v| {
            v["kind"] == "egress" && v["server"]["port"] == port && v["client"]["ip"] == extra
        })
        .unwrap_or_else(|| panic!("no line of its own: {:#?}", tracer.lines()));
    assert!(v["record"].is_null(), "not a summary line: {v:#}");
    assert_eq!(v["verdict"], "established", "{v:#}");
    assert_eq!(v["client"]["veth_pod"], "default/client", "{v:#}");
    assert!(v["client"]["pod"].is_null(), "{v:#}");
    assert!(
        v["hint"]
            .as_str()
            .is_some_and(|h| h.contains("not attributed")),
        "{v:#}"
    );
    drop(tracer);
    drop(guard);
}

/// A query that enters the client pod's veth with a source address that is not the client's
/// (here the branch-ENI pod's address, added to the client's interface) is not attributed to
/// the pod that owns the address: `client.pod` stays empty, `client.veth_pod` names the pod
/// whose veth it came through, the hint says so and /metrics counts it.
#[test]
fn spoofed_source_is_not_attributed_to_the_address_owner() {
    if !privileged() {
        return;
    }
    let metrics = "127.0.0.1:9469";
    let (guard, tracer) = lab_with_tracer(
        lab::Pin::A,
        &[],
        &[
            "--window",
            WINDOW,
            "--answered",
            "flows",
            "--lab-metadata",
            "/run/tracer-lab/topology.json",
            "--metrics-addr",
            metrics,
        ],
    );
    let topo = guard.topology().clone();
    let client = topo.pod("default", "client").expect("client").clone();
    let sg = topo.pod("default", "sg-client").expect("sg-client").clone();
    let spoofed = sg.ip.to_string();
    lab::exec_in(
        &client.netns,
        &["ip", "addr", "add", &format!("{spoofed}/32"), "dev", "eth0"],
    )
    .expect("address added");
    dig(
        &client.netns,
        &["-b", &spoofed, "@198.19.0.10", "spoof.lab.tracer"],
    );
    let v = tracer
        .wait_for(VERDICT_WAIT, |v| {
            v["schema"] == "tracer.flow/v1" && v["dns"]["qname"] == "spoof.lab.tracer"
        })
        .unwrap_or_else(|| panic!("no verdict: {}", tracer.stderr()));
    assert_eq!(v["client"]["ip"], spoofed.as_str(), "{v:#}");
    assert_eq!(v["client"]["veth_pod"], "default/client", "{v:#}");
    assert!(v["client"]["pod"].is_null(), "not sg-client's: {v:#}");
    let hint = v["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("is not pod default/client's") && hint.contains("not attributed"),
        "{hint}"
    );
    let out = lab::exec_in(
        lab::NS_NODE_A,
        &[
            "curl",
            "-s",
            "--max-time",
            "3",
            &format!("http://{metrics}/metrics"),
        ],
    )
    .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("tracer_source_mismatch_total ") && !l.ends_with(" 0")),
        "counted:\n{text}"
    );
    drop(tracer);
    drop(guard);
}
