//! Kubernetes enrichment against a real API server: kube-apiserver v1.20.2 (built offline by
//! `scripts/build-kube-apiserver.sh`) on Debian's etcd, seeded with the lab's objects the way a
//! cluster would hold them, read by `tracer meta-dump` (the tracer's metadata cache: watches,
//! indexes, readiness) with the tracer's least-privilege RBAC.
//!
//! The API server does not need root; the test that runs the tracer inside the lab's node A
//! namespace does. Without the kube-apiserver binary a test skips with a message, or fails under
//! `CI=true`.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use serde_json::Value;
use tracer_tests::{apiserver_available, lab, privileged};
use xtask::apiserver::{self, ApiServer};

fn kubectl_json(api: &ApiServer, args: &[&str]) -> Value {
    let mut argv = args.to_vec();
    argv.extend(["-o", "json"]);
    let out = api
        .kubectl_ok(&argv)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", api.apiserver_log()));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}: {out}"))
}

/// Runs `tracer meta-dump` (inside `netns` when given) and parses its JSON.
fn meta_dump(netns: Option<&str>, kubeconfig: &Path, node: Option<&str>) -> Value {
    let bin = xtask::tracer::tracer_bin();
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build -p tracer)",
        bin.display()
    );
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    cmd.arg("meta-dump")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--timeout", "30s"])
        .env_remove("KUBECONFIG")
        .env_remove("NODE_NAME")
        .stdin(Stdio::null());
    if let Some(n) = node {
        cmd.args(["--node-name", n]);
    }
    let out = cmd.output().expect("running tracer meta-dump");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tracer meta-dump failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("meta-dump output is not JSON ({e}):\n{stdout}\n{stderr}"))
}

fn find<'a>(list: &'a Value, namespace: &str, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|l| {
            l.iter()
                .find(|v| v["namespace"] == namespace && v["name"] == name)
        })
        .unwrap_or_else(|| panic!("{namespace}/{name} not in {list:#}"))
}

/// What `meta-dump --node-name <node A>` must show for the lab.
fn assert_lab_dump(dump: &Value, topology: &lab::Topology) {
    assert_eq!(dump["state"]["state"], "ready", "{dump:#}");
    assert_eq!(dump["node_name"], lab::NODE_A_NAME);
    let pods = &dump["pods"];
    let names: Vec<&str> = pods
        .as_array()
        .map(|l| l.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        names,
        ["client", "sg-client", "coredns-a"],
        "only node A's pods, sorted by namespace/name: {pods:#}"
    );

    let client = topology
        .pod("default", "client")
        .expect("client in topology");
    let c = find(pods, "default", "client");
    assert_eq!(c["ips"][0], client.ip.to_string());
    assert_eq!(c["node"], lab::NODE_A_NAME);
    assert_eq!(c["host_veths"][0], client.host_veth);
    assert_eq!(c["workload"]["kind"], "Deployment");
    assert_eq!(c["workload"]["name"], "client");

    let sg = topology
        .pod("default", "sg-client")
        .expect("sg-client in topology");
    let s = find(pods, "default", "sg-client");
    assert_eq!(s["host_veths"][0], sg.host_veth, "strict mode: vlan prefix");
    assert_eq!(s["branch_eni"]["eni_id"], lab::BRANCH_ENI_ID);
    assert_eq!(s["branch_eni"]["vlan_id"], lab::BRANCH_VLAN_ID);
    assert_eq!(s["branch_eni"]["private_ip"], lab::SG_POD_IP.to_string());
    assert_eq!(s["branch_eni"]["subnet_cidr"], lab::SUBNET_A_CIDR);

    let dns = &dump["dns_replicas"];
    for (name, ip, node) in [
        ("coredns-a", lab::COREDNS_A_IP, lab::NODE_A_NAME),
        ("coredns-b", lab::COREDNS_B_IP, lab::NODE_B_NAME),
    ] {
        let r = find(dns, "kube-system", name);
        assert_eq!(r["ips"][0], ip.to_string());
        assert_eq!(r["node"], node);
        assert_eq!(r["workload"]["kind"], "Deployment");
        assert_eq!(r["workload"]["name"], "coredns");
    }
    assert_eq!(dns.as_array().map(Vec::len), Some(2), "{dns:#}");

    let svc = find(&dump["services"], "kube-system", "kube-dns");
    assert_eq!(svc["cluster_ips"][0], lab::KUBE_DNS_IP.to_string());
    assert_eq!(svc["selector"]["k8s-app"], "kube-dns");
    let eps = svc["endpoints"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        eps.len(),
        2,
        "EndpointSlice (v1beta1 on 1.20) decoded: {svc:#}"
    );
    assert!(
        eps.iter()
            .any(|e| e["ip"] == lab::COREDNS_B_IP.to_string() && e["node"] == lab::NODE_B_NAME),
        "{eps:#?}"
    );
    let k8s = find(&dump["services"], "default", "kubernetes");
    assert_eq!(k8s["cluster_ips"][0], "198.19.0.1");

    let nodes = dump["nodes"].as_array().cloned().unwrap_or_default();
    for (name, ip) in [
        (lab::NODE_A_NAME, lab::NODE_A_IP),
        (lab::NODE_B_NAME, lab::NODE_B_IP),
    ] {
        assert!(
            nodes
                .iter()
                .any(|n| n["name"] == name && n["ips"][0] == ip.to_string()),
            "{name} {ip} not in {nodes:#?}"
        );
    }
    assert_eq!(dump["stats"]["data_warnings"], 0, "{dump:#}");
}

#[test]
fn seeded_objects_look_like_the_lab() {
    if !apiserver_available() {
        return;
    }
    let topology = lab::topology();
    let api = ApiServer::start().expect("API server starts");
    api.seed_lab(&topology).expect("seeding the lab");
    // Idempotent.
    api.seed_lab(&topology).expect("seeding the lab twice");

    let pods = kubectl_json(&api, &["get", "pods", "-A"]);
    for p in &topology.pods {
        let item = pods["items"]
            .as_array()
            .and_then(|l| {
                l.iter().find(|i| {
                    i["metadata"]["namespace"] == p.namespace && i["metadata"]["name"] == p.name
                })
            })
            .unwrap_or_else(|| panic!("pod {}/{} missing", p.namespace, p.name));
        assert_eq!(item["status"]["podIP"], p.ip.to_string());
        assert_eq!(item["status"]["phase"], "Running");
        assert_eq!(item["spec"]["nodeName"], p.node);
        assert_eq!(item["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        for (k, v) in &p.annotations {
            assert_eq!(&item["metadata"]["annotations"][k], v);
        }
    }
    let nodes = kubectl_json(&api, &["get", "nodes"]);
    assert_eq!(nodes["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        nodes["items"][0]["status"]["addresses"][0]["type"],
        "InternalIP"
    );
    let svc = kubectl_json(&api, &["get", "service", "kube-dns", "-n", "kube-system"]);
    assert_eq!(svc["spec"]["clusterIP"], lab::KUBE_DNS_IP.to_string());
    assert_eq!(svc["spec"]["selector"]["k8s-app"], "kube-dns");
    // 1.20 serves EndpointSlices as v1beta1 only.
    assert!(!api.serves("discovery.k8s.io/v1").expect("api-versions"));
    let slices = kubectl_json(
        &api,
        &[
            "get",
            "endpointslices.v1beta1.discovery.k8s.io",
            "-n",
            "kube-system",
        ],
    );
    let eps = &slices["items"][0]["endpoints"];
    assert_eq!(eps.as_array().map(Vec::len), Some(2), "{slices:#}");
    assert_eq!(eps[0]["targetRef"]["kind"], "Pod");

    // The tracer's RBAC: read-only.
    for (verb, resource, allowed) in [
        ("list", "pods", "yes"),
        ("watch", "nodes", "yes"),
        ("watch", "endpointslices.discovery.k8s.io", "yes"),
        ("create", "pods", "no"),
        ("get", "secrets", "no"),
    ] {
        let out = api
            .kubectl(&[
                "auth",
                "can-i",
                verb,
                resource,
                "--all-namespaces",
                "--as",
                apiserver::TRACER_USER,
            ])
            .expect("kubectl auth can-i");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            allowed,
            "{verb} {resource}"
        );
    }
    // TODO(lead): run `tracer run --kubeconfig` in node A against this server (see
    // ApiServerOptions / lab_vpc_options) and assert names in verdicts, and that killing
    // kube-apiserver mid-run (`kill_apiserver` / `start_apiserver`) marks them stale and back.
}

#[test]
fn meta_dump_names_the_lab() {
    if !apiserver_available() {
        return;
    }
    let topology = lab::topology();
    let api = ApiServer::start().expect("API server starts");
    api.seed_lab(&topology).expect("seeding the lab");
    let dump = meta_dump(None, api.tracer_kubeconfig(), Some(lab::NODE_A_NAME));
    eprintln!("{dump:#}");
    assert_lab_dump(&dump, &topology);
}

/// The daemon's view: the tracer runs in node A's namespace and reaches an API server that
/// listens in the VPC namespace on the router's address, over the lab's routes.
#[test]
fn meta_dump_from_node_a_namespace() {
    if !privileged() || !apiserver_available() {
        return;
    }
    let guard = lab::LabGuard::up().expect("lab up");
    let api = ApiServer::start_with(apiserver::lab_vpc_options()).expect("API server in VPC ns");
    api.seed_lab(guard.topology()).expect("seeding the lab");
    let dump = meta_dump(
        Some(lab::NS_NODE_A),
        api.tracer_kubeconfig(),
        Some(lab::NODE_A_NAME),
    );
    assert_lab_dump(&dump, guard.topology());
    drop(api);
}

/// Memory of the metadata cache with 500 pods on one node and 50 nodes, against the real API
/// server (`tracer meta-dump` without a node name watches every pod). Slow (status patches one
/// by one): `cargo test -p tracer-tests --test enrich_apiserver -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: about a minute"]
fn meta_cache_memory_500_pods_50_nodes() {
    if !apiserver_available() {
        return;
    }
    let api = ApiServer::start().expect("API server starts");
    api.seed_synthetic(500, 50)
        .expect("seeding 500 pods, 50 nodes");
    let dump = meta_dump(None, api.tracer_kubeconfig(), None);
    assert_eq!(dump["pods"].as_array().map(Vec::len), Some(500));
    assert_eq!(dump["nodes"].as_array().map(Vec::len), Some(50));
    eprintln!(
        "meta-dump with 500 pods, 50 nodes: process {} (ready after {} ms)",
        dump["process"], dump["ready_after_ms"]
    );
}
