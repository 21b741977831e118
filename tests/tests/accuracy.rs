//! Accuracy (issue 12): a verdict is what the client got, and a hint says only what the
//! evidence supports.
//!
//! * Replies that reach the client pod's veth and die inside the pod are `dropped`, direction
//!   `response`, with the kernel's reason, and the hint names the cause the facts show: the
//!   client had already closed its socket (a server slower than the client's timeout), the
//!   reply was not reverse-NATed (a path that bypassed the node's conntrack), the socket's
//!   receive buffer was full.
//! * UDP pod egress is `established` when the reply comes back, with and without SNAT port
//!   remapping (`--random-fully`).
//! * Catalogue rows whose fault can sit in either direction, with the fault on the other side:
//!   different evidence gives a different hint, the same evidence the same hint.
//!
//! Every test brings the lab up, breaks it in a known way, makes a pod talk and asserts the
//! verdict JSON the tracer in node A prints.

use std::time::Duration;

use serde_json::Value;
use tracer_tests::{TracerProcess, dig, lab, lab_with_tracer, privileged};

/// Verdict window (short, so the tests are quick).
const WINDOW: &str = "2s";
/// How long to wait for a verdict line: the window, the hold for late loss notices, slack.
const VERDICT_WAIT: Duration = Duration::from_secs(8);

const NAME: &str = "kubernetes.default.svc.cluster.local";
const KUBE_DNS: &str = "198.19.0.10";

/// A small DNS client for what `dig` cannot do: a connected UDP socket, or many queries on one
/// socket with a tiny receive buffer that is never read.
///
/// `connected SERVER NAME WAIT`: connect() to SERVER:53, send one A query, wait up to WAIT s.
/// `flood SERVER N RCVBUF HOLD`: one unconnected socket with SO_RCVBUF=RCVBUF, N queries for
/// q<i>.lab.tracer, nothing read, closed after HOLD s.
/// Prints `port <client port>` first, then `answer <rcode>` / `timeout` / `rcvbuf <bytes>`.
const PY_CLIENT: &str = r#"
import socket, struct, sys, time

def query(qid, name):
    q = b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split("."))
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + b"\0" + struct.pack(">HH", 1, 1)

mode, server = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if mode == "connected":
    name, wait = sys.argv[3], float(sys.argv[4])
    s.connect((server, 53))
    print("port", s.getsockname()[1], flush=True)
    s.send(query(0x1234, name))
    s.settimeout(wait)
    try:
        data = s.recv(4096)
        print("answer", data[3] & 0xF, flush=True)
    except (socket.timeout, OSError) as e:
        print("timeout", e, flush=True)
elif mode == "flood":
    n, rcvbuf, hold = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind(("0.0.0.0", 0))
    print("port", s.getsockname()[1], flush=True)
    print("rcvbuf", s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), flush=True)
    for i in range(n):
        s.sendto(query(0x2000 + i, "q%d.lab.tracer" % i), (server, 53))
    time.sleep(hold)
s.close()
"#;

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
        self.topo
            .pod(ns, name)
            .unwrap_or_else(|| panic!("pod {ns}/{name} in the lab topology"))
            .clone()
    }

    /// The first verdict from line `from` on matching `pred`; panics with everything printed.
    fn verdict_from(&self, from: usize, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let v = self
            .tracer
            .wait_for_from(from, VERDICT_WAIT, |v| {
                v["schema"] == "tracer.flow/v1" && v["record"] != "summary" && pred(v)
            })
            .unwrap_or_else(|| {
                panic!(
                    "no verdict for {what}; stdout: {:#?}\nstderr: {}",
                    self.tracer.lines(),
                    self.tracer.stderr()
                )
            });
        // Shown with --nocapture: what the user sees.
        eprintln!("{what}: {v:#}");
        v
    }

    /// The verdict for the DNS query of `qname` from `client_ip`, from line `from` on.
    fn dns_verdict(&self, from: usize, client_ip: &str, qname: &str) -> Value {
        self.verdict_from(from, &format!("{qname} from {client_ip}"), |v| {
            v["client"]["ip"] == client_ip && v["dns"]["qname"] == qname
        })
    }

    /// Runs the Python client in pod namespace `ns`; returns its stdout.
    fn py(&self, ns: &str, args: &[&str]) -> String {
        let mut argv = vec!["python3", "-c", PY_CLIENT];
        argv.extend_from_slice(args);
        let out = lab::exec_in(ns, &argv).unwrap_or_else(|e| panic!("python3 in {ns}: {e:#}"));
        assert!(
            out.status.success(),
            "python3 client {args:?} in {ns} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn hint(v: &Value) -> &str {
    v["hint"].as_str().unwrap_or_default()
}

/// The client port the Python client printed (`port N`).
fn printed_port(out: &str) -> u16 {
    out.lines()
        .find_map(|l| l.strip_prefix("port "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `port N` line in the client's output: {out}"))
}

/// The hint with the parts that name one query (client port) removed, so two hints can be
/// compared for what they claim.
fn claim(v: &Value) -> String {
    hint(v).replace(&v["client"]["port"].to_string(), "<port>")
}

// ----- 1. replies lost inside the client pod -----

/// A server slower than the client's timeout: dig gives up after 1 s and closes its socket,
/// then the (paused) replica answers the query still queued at its socket. The answer reaches
/// the client's veth and dies in the client pod with NO_SOCKET: `dropped`, not `answered`.
#[test]
fn slow_server_answer_after_the_client_gave_up_is_dropped() {
    if !privileged() {
        return;
    }
    let c = setup(lab::Pin::A, &[lab::Failure::ReplicaSilentA]);
    let client = c.pod("default", "client");
    // dig +time=1 +tries=1: gives up after 1 s and exits (its socket is closed).
    assert!(dig(&client.netns, &["@198.19.0.10", NAME]).contains("timed out"));
    // Within the 2 s window: the replica wakes up and answers the queued query.
    lab::set_failure(lab::Failure::ReplicaSilentA, false).expect("SIGCONT coredns-a");
    let v = c.dns_verdict(0, &client.ip.to_string(), NAME);
    assert_eq!(v["verdict"], "dropped", "the client never got it: {v:#}");
    assert_eq!(v["evidence"], "complete", "{v:#}");
    assert_eq!(v["drop"]["reason"], "NO_SOCKET", "{v:#}");
    assert_eq!(v["drop"]["direction"], "response", "{v:#}");
    assert_eq!(v["where"]["stage"], "client_socket", "{v:#}");
    assert_eq!(v["where"]["direction"], "response", "{v:#}");
    assert_eq!(v["server"]["ip"], lab::COREDNS_A_IP.to_string(), "{v:#}");
    assert_eq!(
        v["dns"]["rcode"], "NOERROR",
        "the answer is in the path: {v:#}"
    );
    assert!(
        v["path"]
            .as_array()
            .is_some_and(|p| p.iter().any(|e| e["hook"] == "egress"
                && e["interface"] == client.host_veth.as_str()
                && e["direction"] == "response")),
        "the answer reached the client's veth: {v:#}"
    );
    let h = hint(&v);
    assert!(
        h.contains("after the client had closed its socket")
            && h.contains("ms after the query")
            && h.contains("slower than the client's timeout"),
        "{h}"
    );
    assert!(!h.contains("reverse-NAT"), "same address: {h}");
}

/// A path that bypasses node A's conntrack (NOTRACK on the replica's replies): the answer is
/// not reverse-NATed and reaches the client from the replica's own address, not the ClusterIP
/// it asked. A connected UDP socket does not accept it: `dropped` NO_SOCKET in the client pod,
/// and the hint names the address mismatch.
#[test]
fn reply_not_reverse_natted_is_dropped_in_the_client() {
    if !privileged() {
        return;
    }
    let c = setup(lab::Pin::A, &[lab::Failure::ReplyNotrackA]);
    let client = c.pod("default", "client");
    let out = c.py(&client.netns, &["connected", KUBE_DNS, NAME, "1"]);
    assert!(out.contains("timeout"), "the client got nothing: {out}");
    let port = printed_port(&out);
    let v = c.verdict_from(0, "the connected client's query", |v| {
        v["client"]["port"] == port && v["dns"]["qname"] == NAME
    });
    assert_eq!(v["verdict"], "dropped", "{v:#}");
    assert_eq!(v["drop"]["reason"], "NO_SOCKET", "{v:#}");
    assert_eq!(v["drop"]["direction"], "response", "{v:#}");
    assert_eq!(v["where"]["stage"], "client_socket", "{v:#}");
    assert_eq!(v["server"]["service_ip"], KUBE_DNS, "{v:#}");
    let h = hint(&v);
    let replica = format!("{}:53", lab::COREDNS_A_IP);
    assert!(
        h.contains("not reverse-NATed")
            && h.contains(&format!("from {replica}"))
            && h.contains(&format!("had sent to {KUBE_DNS}:53")),
        "{h}"
    );
    assert!(h.contains("conntrack"), "{h}");
    assert!(!h.contains("closed its socket"), "the socket was open: {h}");
}

/// Many queries on one socket with a tiny receive buffer that is never read: the first answers
/// are queued, the rest are dropped at the socket (SOCKET_RCVBUFF) and the hint says so.
#[test]
fn full_receive_buffer_drops_answers() {
    if !privileged() {
        return;
    }
    let c = setup(lab::Pin::A, &[]);
    let client = c.pod("default", "client");
    let out = c.py(&client.netns, &["flood", KUBE_DNS, "20", "1", "3"]);
    let port = printed_port(&out);
    let v = c.verdict_from(0, "a reply dropped at the full socket", |v| {
        v["client"]["port"] == port && v["verdict"] == "dropped"
    });
    assert!(
        v["drop"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("RCVBUF")),
        "{v:#}"
    );
    assert_eq!(v["drop"]["direction"], "response", "{v:#}");
    assert_eq!(v["where"]["stage"], "client_socket", "{v:#}");
    let h = hint(&v);
    assert!(h.contains("receive buffer was full"), "{h}");
    assert!(
        !h.contains("reverse-NAT") && !h.contains("closed its socket"),
        "{h}"
    );
    // The answers that fit were delivered to the socket: answered (reading them is the
    // application's business), and none of them is reported dropped for being unread at close.
    let answered = c.verdict_from(0, "an answer queued at the socket", |v| {
        v["client"]["port"] == port && v["verdict"] == "answered"
    });
    assert_eq!(answered["dns"]["rcode"], "NXDOMAIN", "{answered:#}");
    std::thread::sleep(Duration::from_secs(4));
    let lines = c.tracer.lines();
    let mine: Vec<&Value> = lines
        .iter()
        .filter(|v| v["client"]["port"] == port && v["record"] != "summary")
        .collect();
    assert!(
        mine.iter()
            .filter(|v| v["verdict"] == "dropped")
            .all(|v| v["drop"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("RCVBUF"))),
        "only the buffer drops are drops: {mine:#?}"
    );
    assert_eq!(mine.len(), 20, "one verdict per query: {mine:#?}");
}

// ----- 2. UDP egress -----

/// One datagram to the internet's UDP echo server and its reply, through socat.
fn udp_echo(ns: &str) -> String {
    let out = lab::exec_in(
        ns,
        &[
            "sh",
            "-c",
            "echo accuracy | socat -T1 - UDP4:203.0.113.80:7",
        ],
    )
    .unwrap_or_else(|e| panic!("socat in {ns}: {e:#}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A UDP exchange with the internet is `established`, whether VPC CNI's SNAT remaps the source
/// port (`--random-fully`, the default) or keeps it (`AWS_VPC_K8S_CNI_RANDOMIZESNAT=none`).
#[test]
fn udp_egress_is_established_with_and_without_port_remapping() {
    if !privileged() {
        return;
    }
    let c = setup(lab::Pin::Both, &[]);
    let client = c.pod("default", "client");
    for plain in [false, true] {
        lab::set_failure(lab::Failure::SnatPlain, plain).expect("SNAT variant");
        let from = c.tracer.line_count();
        assert!(
            udp_echo(&client.netns).contains("accuracy"),
            "the echo came back (plain SNAT: {plain})"
        );
        let v = c.verdict_from(from, "the UDP echo", |v| {
            v["kind"] == "egress" && v["transport"] == "udp" && v["server"]["port"] == 7
        });
        assert_eq!(v["verdict"], "established", "plain SNAT {plain}: {v:#}");
        assert_eq!(v["evidence"], "complete", "{v:#}");
        assert_eq!(v["client"]["ip"], client.ip.to_string(), "{v:#}");
        assert_eq!(v["server"]["ip"], lab::INET_SERVER_IP.to_string(), "{v:#}");
        assert_eq!(v["egress"]["snat_ip"], lab::NODE_A_IP.to_string(), "{v:#}");
        assert_eq!(v["egress_interface"]["name"], "eth0", "{v:#}");
        if plain {
            assert_eq!(
                v["egress"]["snat_port"], v["client"]["port"],
                "plain SNAT keeps a free port: {v:#}"
            );
        }
        assert!(hint(&v).contains("established"), "{}", hint(&v));
    }
    // A pod with its own security group leaves through its branch ENI without SNAT: the
    // datagram has the same addresses there as at its veth and is seen at both.
    let sg = c.pod("default", "sg-client");
    let from = c.tracer.line_count();
    assert!(
        udp_echo(&sg.netns).contains("accuracy"),
        "echo via the branch ENI"
    );
    let v = c.verdict_from(from, "the UDP echo via the branch ENI", |v| {
        v["kind"] == "egress" && v["transport"] == "udp" && v["client"]["ip"] == sg.ip.to_string()
    });
    assert_eq!(v["verdict"], "established", "{v:#}");
    assert_eq!(v["egress_interface"]["name"], "vlan.eth.1", "{v:#}");
    assert_eq!(v["egress_interface"]["kind"], "branch_eni", "{v:#}");
    assert_eq!(v["egress"]["snat_ip"], Value::Null, "{v:#}");
    assert!(hint(&v).contains("via vlan.eth.1"), "{}", hint(&v));
}

/// UDP needs no reply. A datagram to a server that takes it and sends nothing back (a statsd
/// collector: socat receiving on 8125 in the lab's internet) is not called lost: the verdict is
/// `unknown` and says why. Silence from a server that answered UDP through the same interface
/// lately (the echo server, once the VPC stops carrying traffic to the internet) is
/// `lost_beyond_node`.
#[test]
fn udp_egress_without_reply_is_lost_only_where_a_reply_was_due() {
    if !privileged() {
        return;
    }
    let c = setup(lab::Pin::Both, &[]);
    let client = c.pod("default", "client");
    let bind = format!("UDP4-RECV:8125,bind={}", lab::INET_SERVER_IP);
    let mut sink = lab::spawn_in(lab::NS_INET, &["socat", "-u", &bind, "STDOUT"]).expect("sink");
    lab::wait_udp_listening(lab::NS_INET, 8125, Duration::from_secs(3))
        .expect("the statsd stand-in listens");

    let from = c.tracer.line_count();
    let sent = lab::exec_in(
        &client.netns,
        &[
            "sh",
            "-c",
            "echo 'requests:1|c' | socat -u - UDP4:203.0.113.80:8125",
        ],
    )
    .expect("send the datagram");
    assert!(sent.status.success(), "{sent:?}");
    let v = c.verdict_from(from, "the statsd datagram", |v| {
        v["kind"] == "egress" && v["server"]["port"] == 8125
    });
    let _ = sink.kill();
    let got = sink.wait_with_output().expect("sink output");
    assert!(
        String::from_utf8_lossy(&got.stdout).contains("requests:1|c"),
        "the collector got the datagram: {got:?}"
    );
    assert_eq!(v["verdict"], "unknown", "{v:#}");
    assert_eq!(v["evidence"], "incomplete", "{v:#}");
    let note = v["evidence_note"].as_str().unwrap_or_default();
    assert!(note.contains("UDP needs no reply"), "{note}");
    assert!(hint(&v).contains("statsd or syslog"), "{}", hint(&v));

    // The echo server answers UDP through eth0 ...
    assert!(udp_echo(&client.netns).contains("accuracy"), "echo first");
    c.verdict_from(from, "the healthy echo", |v| {
        v["kind"] == "egress" && v["server"]["port"] == 7 && v["verdict"] == "established"
    });
    // ... so when the VPC drops what goes to the internet, its silence is a loss.
    lab::set_failure(lab::Failure::EgressNoNat, true).expect("no NAT");
    let from = c.tracer.line_count();
    let _ = udp_echo(&client.netns);
    let lost = c.verdict_from(from, "the echo without NAT", |v| {
        v["kind"] == "egress" && v["server"]["port"] == 7
    });
    lab::set_failure(lab::Failure::EgressNoNat, false).expect("NAT back");
    assert_eq!(lost["verdict"], "lost_beyond_node", "{lost:#}");
    assert_eq!(lost["evidence"], "complete", "{lost:#}");
    assert_eq!(lost["egress_interface"]["name"], "eth0", "{lost:#}");
}

// ----- 4. the fault on the other side -----

/// Row 5 and its reply side: an iptables DROP of the query (request) and of the answer on its
/// way back to the pod (response) are different evidence, so different hints.
#[test]
fn row05_drop_of_the_reply_is_not_a_drop_of_the_query() {
    if !privileged() {
        return;
    }
    let c = setup(lab::Pin::A, &[lab::Failure::NetpolDropDns]);
    let client = c.pod("default", "client");
    let ip = client.ip.to_string();
    assert!(dig(&client.netns, &["@198.19.0.10", NAME]).contains("timed out"));
    let req = c.dns_verdict(0, &ip, NAME);

    lab::set_failure(lab::Failure::NetpolDropDns, false).expect("off");
    lab::set_failure(lab::Failure::NetpolDropDnsReply, true).expect("on");
    let from = c.tracer.line_count();
    let name = "web.shop.svc.cluster.local";
    assert!(dig(&client.netns, &["@198.19.0.10", name]).contains("timed out"));
    let resp = c.dns_verdict(from, &ip, name);

    for (v, dir) in [(&req, "request"), (&resp, "response")] {
        assert_eq!(v["verdict"], "dropped", "{v:#}");
        assert_eq!(v["drop"]["reason"], "NETFILTER_DROP", "{v:#}");
        assert_eq!(v["drop"]["direction"], dir, "{v:#}");
        assert_eq!(v["where"]["stage"], "netfilter", "{v:#}");
        assert_eq!(v["where"]["direction"], dir, "{v:#}");
    }
    assert_eq!(
        resp["dns"]["rcode"], "NOERROR",
        "the replica answered: {resp:#}"
    );
    let (hq, hr) = (hint(&req), hint(&resp));
    assert!(hq.contains("dropped the DNS query"), "{hq}");
    assert!(hr.contains("dropped the reply"), "{hr}");
    assert_ne!(
        claim(&req),
        claim(&resp),
        "different evidence, different hints"
    );
}

/// Row 9 and its request side: strict rp_filter on eth1 dropping the reply to the client pod
/// after the VPC delivered it to eth1 (row 9), and dropping a query from node B to coredns-a
/// that the VPC delivered to eth1 while node A routes node B back via eth0. Different evidence
/// (which packet, which direction), so different hints.
#[test]
fn row09_rp_filter_on_the_request_path_is_not_the_reply_path() {
    if !privileged() {
        return;
    }
    let c = setup(lab::Pin::B, &[lab::Failure::RpFilter]);
    let client = c.pod("default", "client");
    assert!(dig(&client.netns, &["@198.19.0.10", NAME]).contains("timed out"));
    let resp = c.dns_verdict(0, &client.ip.to_string(), NAME);

    lab::set_failure(lab::Failure::RpFilter, false).expect("off");
    lab::set_failure(lab::Failure::RpFilterRequest, true).expect("on");
    let from = c.tracer.line_count();
    let replica = format!("@{}", lab::COREDNS_A_IP);
    assert!(dig(lab::NS_NODE_B, &[&replica, NAME]).contains("timed out"));
    let req = c.dns_verdict(from, &lab::NODE_B_IP.to_string(), NAME);

    for (v, dir) in [(&resp, "response"), (&req, "request")] {
        assert_eq!(v["verdict"], "dropped", "{v:#}");
        assert_eq!(v["drop"]["reason"], "IP_RPFILTER", "{v:#}");
        assert_eq!(v["drop"]["direction"], dir, "{v:#}");
        assert_eq!(v["where"]["stage"], "routing", "{v:#}");
        assert_eq!(v["where"]["interface"], "eth1", "{v:#}");
    }
    assert_eq!(
        req["server"]["ip"],
        lab::COREDNS_A_IP.to_string(),
        "{req:#}"
    );
    let (hr, hq) = (hint(&resp), hint(&req));
    assert!(
        hr.contains("dropped the reply") && hr.contains("asymmetric routing"),
        "{hr}"
    );
    assert!(
        hq.contains("dropped the DNS query") && hq.contains("not routed back via eth1"),
        "{hq}"
    );
    assert!(!hq.contains("dropped the reply"), "{hq}");
    assert_ne!(claim(&req), claim(&resp));
}

/// One UDP query that times out, and its verdict (which must be `lost_beyond_node` via
/// `via`).
fn lost_udp(c: &Case, pod: &lab::Pod, via: &str) -> Value {
    let from = c.tracer.line_count();
    assert!(dig(&pod.netns, &["@198.19.0.10", NAME]).contains("timed out"));
    let v = c.dns_verdict(from, &pod.ip.to_string(), NAME);
    assert_eq!(v["verdict"], "lost_beyond_node", "{v:#}");
    assert_eq!(v["evidence"], "complete", "{v:#}");
    assert_eq!(v["where"]["interface"], via, "{v:#}");
    assert_eq!(v["where"]["direction"], "request", "{v:#}");
    v
}

fn switch(off: lab::Failure, on: lab::Failure) {
    lab::set_failure(off, false).expect("failure off");
    lab::set_failure(on, true).expect("failure on");
}

/// Rows 2 and 4: UDP 53 to node B dropped on the way out (node SG) and its answers dropped on
/// the way back (NACL). From node A alone both read "the query left via eth0 and nothing came
/// back": the same evidence, so the same hint, naming both directions' controls. Only after a
/// TCP exchange with the same server succeeded does the hint say so, and it still does not
/// pick a direction.
#[test]
fn row02_row04_query_lost_and_reply_lost_look_the_same_from_node_a() {
    if !privileged() {
        return;
    }
    let c = setup(lab::Pin::B, &[lab::Failure::NodeSgTcpOnly]);
    let client = c.pod("default", "client");

    // No TCP exchange yet: nothing but "left, nothing came back".
    let out_lost = lost_udp(&c, &client, "eth0");
    switch(lab::Failure::NodeSgTcpOnly, lab::Failure::NaclReturn);
    let back_lost = lost_udp(&c, &client, "eth0");
    assert_eq!(
        claim(&out_lost),
        claim(&back_lost),
        "same evidence, same hint"
    );
    let h = hint(&back_lost);
    assert!(!h.contains("TCP"), "no TCP exchange happened: {h}");
    assert!(
        h.contains("the query or its reply was lost outside this node")
            && h.contains("for the query")
            && h.contains("for the reply")
            && h.contains("network ACLs"),
        "both directions' controls: {h}"
    );

    // TCP 53 to the same replica works under both faults (both only hit UDP).
    let tcp = |from: usize| {
        assert!(
            dig(
                &client.netns,
                &["+tcp", "@198.19.0.10", "web.shop.svc.cluster.local"]
            )
            .contains("198.19.0.80")
        );
        let v = c.verdict_from(from, "the TCP query", |v| {
            v["transport"] == "tcp" && v["dns"]["qname"] == "web.shop.svc.cluster.local"
        });
        assert_eq!(v["verdict"], "answered", "{v:#}");
    };
    tcp(c.tracer.line_count());
    let back_lost_tcp_ok = lost_udp(&c, &client, "eth0");
    switch(lab::Failure::NaclReturn, lab::Failure::NodeSgTcpOnly);
    tcp(c.tracer.line_count());
    let out_lost_tcp_ok = lost_udp(&c, &client, "eth0");
    assert_eq!(
        claim(&out_lost_tcp_ok),
        claim(&back_lost_tcp_ok),
        "same evidence, same hint"
    );
    let h = hint(&out_lost_tcp_ok);
    assert!(
        h.contains("TCP 53 with the same server was answered recently")
            && h.contains("in either direction")
            && h.contains("for the reply"),
        "{h}"
    );
    assert_ne!(
        claim(&out_lost),
        claim(&out_lost_tcp_ok),
        "the TCP success is new evidence"
    );
}

/// Row 3 and its reply side, for the branch-ENI pod with kube-dns on node B: the pod's
/// security group dropping the query and the NACL dropping the answers on their way back to
/// the branch ENI are the same evidence from node A ("left via vlan.eth.1, nothing came
/// back"), so the same hint.
#[test]
fn row03_branch_eni_query_lost_and_reply_lost_look_the_same_from_node_a() {
    if !privileged() {
        return;
    }
    let c = setup(lab::Pin::B, &[lab::Failure::PodSgNoDns]);
    let sg = c.pod("default", "sg-client");
    let out_lost = lost_udp(&c, &sg, lab::BRANCH_ENI_IFNAME);
    switch(lab::Failure::PodSgNoDns, lab::Failure::NaclReturn);
    let back_lost = lost_udp(&c, &sg, lab::BRANCH_ENI_IFNAME);
    assert_eq!(
        claim(&out_lost),
        claim(&back_lost),
        "same evidence, same hint"
    );
    let h = hint(&back_lost);
    assert!(
        h.contains("branch ENI") && h.contains("for the reply") && h.contains("network ACLs"),
        "{h}"
    );
}

/// Row 3 with the replica on the client's own node: a pod with its own security group (branch
/// ENI) reaches even a replica on its node through the VPC, out of the branch ENI and back in
/// through eth0. This node watches the replica's side too, so with the lab's names (which say
/// the replica runs here) the verdict says which way the query died, without a peer:
/// * the pod security group drops the query: it never came back in (`peer.finding`
///   `request_lost`, `peer.node` this node);
/// * a rule in the VPC (this test's own, standing for the NACL of a separate pod subnet) drops
///   the answers on their way to the branch ENI: the query came back in at eth0, the answer
///   left via eth0 and never came back in (`lost_beyond_node`, direction `response`,
///   `reply_lost`) — before, this was `unknown`, "the reply reached the node but was never seen
///   delivered".
#[test]
fn row03_replica_on_the_same_node_says_which_way() {
    if !privileged() {
        return;
    }
    let topology = lab::topology_path().to_string_lossy().into_owned();
    let (guard, tracer) = lab_with_tracer(
        lab::Pin::A,
        &[lab::Failure::PodSgNoDns],
        &[
            "--window",
            WINDOW,
            "--answered",
            "flows",
            "--node-name",
            lab::NODE_A_NAME,
            "--lab-metadata",
            &topology,
        ],
    );
    let c = Case {
        topo: guard.topology().clone(),
        _guard: guard,
        tracer,
    };
    let sg = c.pod("default", "sg-client");
    let v = lost_udp(&c, &sg, lab::BRANCH_ENI_IFNAME);
    assert_eq!(v["server"]["node"], lab::NODE_A_NAME, "{v:#}");
    assert_eq!(v["peer"]["node"], lab::NODE_A_NAME, "{v:#}");
    assert_eq!(v["peer"]["finding"], "request_lost", "{v:#}");
    let h = hint(&v);
    assert!(
        h.contains("runs on this same node, and never came back in")
            && h.contains("lost in the VPC on the way")
            && h.contains("pod security group (on the branch ENI)"),
        "{h}"
    );

    lab::set_failure(lab::Failure::PodSgNoDns, false).expect("failure off");
    const RULE: &str = "FORWARD -i a-eth0 -o a-trunk1 -p udp --sport 53 -j DROP";
    let rule = |op: &str| {
        let mut argv = vec!["iptables", "-w", op];
        argv.extend(RULE.split_whitespace());
        let out = lab::exec_in(lab::NS_VPC, &argv).expect("iptables runs");
        assert!(out.status.success(), "iptables {op}: {out:?}");
    };
    rule("-I");
    let from = c.tracer.line_count();
    let out = dig(&sg.netns, &["@198.19.0.10", NAME]);
    rule("-D");
    assert!(out.contains("timed out"), "{out}");
    let ip = sg.ip.to_string();
    // The pod's own flow: first seen entering at its veth.
    let v = c.verdict_from(from, "the pod's query", |v| {
        v["client"]["ip"] == ip.as_str()
            && v["dns"]["qname"] == NAME
            && v["path"][0]["interface"] == sg.host_veth.as_str()
    });
    assert_eq!(v["verdict"], "lost_beyond_node", "{v:#}");
    assert_eq!(v["evidence"], "complete", "{v:#}");
    assert_eq!(v["where"]["interface"], "eth0", "{v:#}");
    assert_eq!(v["where"]["direction"], "response", "{v:#}");
    assert_eq!(
        v["egress_interface"]["name"],
        lab::BRANCH_ENI_IFNAME,
        "{v:#}"
    );
    assert_eq!(v["peer"]["finding"], "reply_lost", "{v:#}");
    assert_eq!(v["peer"]["arrived"]["interface"], "eth0", "{v:#}");
    assert_eq!(v["peer"]["reply_left"]["interface"], "eth0", "{v:#}");
    let h = hint(&v);
    assert!(
        h.contains("came back in at eth0")
            && h.contains("never came back in")
            && h.contains("network ACLs"),
        "{h}"
    );
    // Conntrack gave the query coming back in a new source port: the replica's side is a flow
    // of its own, answered, and says it is only that side (not "delivered to a host-network
    // client").
    let leg = c.verdict_from(from, "the replica's side", |v| {
        v["client"]["ip"] == ip.as_str()
            && v["dns"]["qname"] == NAME
            && v["path"][0]["interface"] != sg.host_veth.as_str()
    });
    assert_eq!(leg["verdict"], "answered", "{leg:#}");
    assert_ne!(leg["client"]["port"], v["client"]["port"], "{leg:#}");
    let h = hint(&leg);
    assert!(
        h.contains("only the server's side of this query was seen")
            && !h.contains("host-network client"),
        "{h}"
    );
}

/// The healthy side of the same path: a branch-ENI pod's answers from the replica on its own
/// node are summarised once each. Conntrack gives the query coming back in through eth0 a new
/// source port, so the kernel summarises every answer twice (the pod's side, and the replica's
/// side first seen at its veth); with names, the replica's side is left out of the summaries.
#[test]
fn answers_to_a_branch_eni_pod_from_its_own_node_are_summarised_once() {
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
            "1s",
            "--node-name",
            lab::NODE_A_NAME,
            "--lab-metadata",
            &topology,
        ],
    );
    let sg = guard
        .topology()
        .pod("default", "sg-client")
        .expect("sg-client")
        .clone();
    for _ in 0..5 {
        assert!(dig(&sg.netns, &["@198.19.0.10", NAME]).contains("198.19.0.1"));
    }
    let ip = sg.ip.to_string();
    let mine = |v: &Value| v["record"] == "summary" && v["client"]["ip"] == ip.as_str();
    tracer
        .wait_for(VERDICT_WAIT, mine)
        .unwrap_or_else(|| panic!("no summary line: {:#?}", tracer.lines()));
    // Give the interval that may still hold some of the answers time to end.
    std::thread::sleep(Duration::from_millis(1500));
    let lines = tracer.lines();
    let count: u64 = lines
        .iter()
        .filter(|v| mine(v))
        .filter_map(|v| v["count"].as_u64())
        .sum();
    assert_eq!(count, 5, "five answers, each summarised once: {lines:#?}");
    drop(tracer);
    drop(guard);
}
