//! Kubernetes names in verdicts, end to end: the lab's objects live in a real kube-apiserver
//! (with etcd) that listens inside the lab's VPC namespace; `tracer run` in node A watches it
//! with the tracer's least-privilege RBAC. Catalogue rows 1, 2 and 3 carry the client pod, the
//! kube-dns Service, the CoreDNS replica and its node, and (row 3) the branch ENI. Killing the
//! API server mid-run: verdicts keep coming, marked stale, names kept; restarting it: ready again.

use std::time::{Duration, Instant};

use serde_json::Value;
use tracer_tests::{TracerProcess, apiserver_available, dig, lab, privileged};
use xtask::apiserver::{self, ApiServer};

const NAME: &str = "kubernetes.default.svc.cluster.local";

/// Sends a query from `netns` and returns its verdict (a unique name per call via `qname`).
fn query(tracer: &TracerProcess, netns: &str, client_ip: &str, qname: &str) -> Value {
    let from = tracer.line_count();
    dig(netns, &["@198.19.0.10", qname]);
    tracer
        .wait_for_from(from, Duration::from_secs(8), |v| {
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

/// Waits until the tracer's metadata cache reports `state` in its verdicts.
fn until_enrichment(
    tracer: &TracerProcess,
    netns: &str,
    client_ip: &str,
    state: &str,
    within: Duration,
) -> Value {
    let deadline = Instant::now() + within;
    let mut n = 0;
    loop {
        n += 1;
        let v = query(tracer, netns, client_ip, &format!("probe{n}.lab.tracer"));
        if v["enrichment"] == state {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "enrichment never became {state}: last {v:#}\n{}",
            tracer.stderr()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The tracer in node A, watching `api` (window 2 s, every answer on its own line).
fn start_tracer(api: &ApiServer) -> TracerProcess {
    let kubeconfig = api.tracer_kubeconfig().to_string_lossy().into_owned();
    TracerProcess::start(
        lab::NS_NODE_A,
        &[
            "--window",
            "2s",
            "--answered",
            "flows",
            "--kubeconfig",
            &kubeconfig,
            "--node-name",
            lab::NODE_A_NAME,
        ],
    )
    .expect("tracer")
}

#[test]
fn verdicts_carry_names_and_survive_an_api_outage() {
    if !privileged() || !apiserver_available() {
        return;
    }
    let guard = lab::LabGuard::up().expect("lab up");
    let topo = guard.topology().clone();
    let mut api = ApiServer::start_with(apiserver::lab_vpc_options())
        .expect("API server in the VPC namespace");
    api.seed_lab(&topo).expect("seeding the lab's objects");
    let tracer = start_tracer(&api);
    let client = topo.pod("default", "client").expect("client").clone();
    let sg = topo.pod("default", "sg-client").expect("sg-client").clone();
    let ip = client.ip.to_string();
    until_enrichment(
        &tracer,
        &client.netns,
        &ip,
        "ready",
        Duration::from_secs(20),
    );

    // Row 1: healthy, local replica.
    lab::pin(lab::Pin::A).expect("pin a");
    let v = query(&tracer, &client.netns, &ip, NAME);
    assert_eq!(v["verdict"], "answered", "{v:#}");
    assert_eq!(v["client"]["pod"], "client");
    assert_eq!(v["client"]["namespace"], "default");
    assert_eq!(v["client"]["node"], lab::NODE_A_NAME);
    assert_eq!(v["client"]["workload"], "Deployment/client", "{v:#}");
    assert_eq!(v["server"]["service"], "kube-system/kube-dns");
    assert_eq!(v["server"]["pod"], "coredns-a");
    assert_eq!(v["server"]["namespace"], "kube-system");
    assert_eq!(v["server"]["node"], lab::NODE_A_NAME);
    assert_eq!(v["node"], lab::NODE_A_NAME);

    // Row 2: UDP to the replica on node B dies in the VPC.
    lab::pin(lab::Pin::B).expect("pin b");
    lab::set_failure(lab::Failure::NodeSgTcpOnly, true).expect("failure on");
    let v = query(&tracer, &client.netns, &ip, NAME);
    assert_eq!(v["verdict"], "lost_beyond_node", "{v:#}");
    assert_eq!(v["server"]["pod"], "coredns-b");
    assert_eq!(v["server"]["node"], lab::NODE_B_NAME);
    assert_eq!(v["server"]["service"], "kube-system/kube-dns");
    assert_eq!(v["client"]["pod"], "client");
    let hint = v["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("coredns-b") && hint.contains(lab::NODE_B_NAME),
        "hint names the replica and its node: {hint}"
    );
    lab::set_failure(lab::Failure::NodeSgTcpOnly, false).expect("failure off");

    // Row 3: the branch-ENI pod's security group blocks DNS.
    lab::pin(lab::Pin::A).expect("pin a");
    lab::set_failure(lab::Failure::PodSgNoDns, true).expect("failure on");
    let v = query(&tracer, &sg.netns, &sg.ip.to_string(), NAME);
    assert_eq!(v["verdict"], "lost_beyond_node", "{v:#}");
    assert_eq!(v["client"]["pod"], "sg-client");
    assert_eq!(v["egress_interface"]["eni_id"], lab::BRANCH_ENI_ID);
    assert_eq!(v["egress_interface"]["vlan"], lab::BRANCH_VLAN_ID);
    lab::set_failure(lab::Failure::PodSgNoDns, false).expect("failure off");

    // The API server goes away: verdicts keep flowing, marked stale, with the names known.
    api.kill_apiserver();
    let v = until_enrichment(
        &tracer,
        &client.netns,
        &ip,
        "stale",
        Duration::from_secs(20),
    );
    assert_eq!(v["verdict"], "answered");
    assert_eq!(
        v["client"]["pod"], "client",
        "names from before the outage are kept: {v:#}"
    );
    // It comes back: enrichment recovers without restarting the tracer.
    api.start_apiserver().expect("API server restarts");
    let v = until_enrichment(
        &tracer,
        &client.netns,
        &ip,
        "ready",
        Duration::from_secs(30),
    );
    assert_eq!(v["client"]["pod"], "client");
    drop(tracer);
    drop(api);
}

/// The field report "Fargate pods behind a security group": the CoreDNS replica on node B is
/// seeded in the real API server as an AWS Fargate pod (its own node `fargate-ip-…`, as EKS
/// names them; the lab's packets still go to node B's namespace). No tracer runs on Fargate,
/// so a query lost toward it says so and names the Fargate pod's security group, not "its
/// tracer could not say".
#[test]
fn lost_toward_a_replica_on_fargate_names_its_security_group() {
    if !privileged() || !apiserver_available() {
        return;
    }
    const FARGATE_NODE: &str = "fargate-ip-198-18-2-30.lab.internal";
    let guard = lab::LabGuard::up().expect("lab up");
    let mut topo = guard.topology().clone();
    let replica = topo
        .pods
        .iter_mut()
        .find(|p| p.name == "coredns-b")
        .expect("coredns-b in the topology");
    replica.node = FARGATE_NODE.to_owned();
    let replica_ip = replica.ip;
    let mut node = topo
        .nodes
        .iter()
        .find(|n| n.name == lab::NODE_B_NAME)
        .expect("node B")
        .clone();
    node.name = FARGATE_NODE.to_owned();
    node.primary_ip = replica_ip;
    node.interfaces.clear();
    topo.nodes.push(node);
    let api = ApiServer::start_with(apiserver::lab_vpc_options()).expect("API server");
    api.seed_lab(&topo)
        .expect("seeding the lab with a Fargate replica");
    let tracer = start_tracer(&api);
    let client = topo.pod("default", "client").expect("client").clone();
    let ip = client.ip.to_string();
    // Names ready (probing the replica on node A: an answer from the Fargate replica would make
    // the loss below read as intermittent).
    lab::pin(lab::Pin::A).expect("pin a");
    until_enrichment(
        &tracer,
        &client.netns,
        &ip,
        "ready",
        Duration::from_secs(20),
    );

    lab::pin(lab::Pin::B).expect("pin b");
    lab::set_failure(lab::Failure::NodeSgTcpOnly, true).expect("failure on");
    let v = query(&tracer, &client.netns, &ip, NAME);
    lab::set_failure(lab::Failure::NodeSgTcpOnly, false).expect("failure off");
    assert_eq!(v["verdict"], "lost_beyond_node", "{v:#}");
    assert_eq!(v["server"]["pod"], "coredns-b", "{v:#}");
    assert_eq!(v["server"]["node"], FARGATE_NODE, "{v:#}");
    let hint = v["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("the replica runs on AWS Fargate, where no tracer can run")
            && hint.contains("the Fargate pod's security group (the cluster security group"),
        "{hint}"
    );
    drop(tracer);
    drop(api);
}
